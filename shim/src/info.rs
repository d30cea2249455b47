//! `containerd-shim-skiff-v2 -info`: containerd 2.x runs it before each
//! task Create (and for its introspection API) to learn the runtime's name,
//! version and OCI features, and gates spec features on the answer. It
//! passes no namespace or id and may write the runtime options (a protobuf
//! Any) to stdin; the answer is a `containerd.types.RuntimeInfo` in
//! protobuf on stdout, with the features document as JSON in an Any, as
//! containerd's own runc shim answers.

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{Message, MessageField};
use containerd_shim::protos::types::introspection::{RuntimeInfo, RuntimeVersion};

use crate::service::RUNTIME_ID;

/// The type URL containerd's typeurl registry gives runtime-spec features.
pub const FEATURES_TYPE_URL: &str =
    "types.containerd.io/opencontainers/runtime-spec/1/features/Features";

/// The git revision the shim was built from (build.rs), or "unknown".
pub const REVISION: &str = env!("SKIFF_REVISION");

/// Whether the command line asks for `-info` (Go flag syntax: one or two
/// dashes). It is answered before containerd-shim's bootstrap, which
/// insists on a namespace that `-info` does not get.
pub fn requested(args: &[String]) -> bool {
    args.iter().any(|a| a == "-info" || a == "--info")
}

/// The RuntimeInfo for runtime options `options` (what was on stdin),
/// echoed back as the runc shim does when they decode as an Any.
pub fn runtime_info(options: &[u8]) -> RuntimeInfo {
    let features = serde_json::to_vec(&skiff_runtime::features::oci_features())
        .expect("the features document serializes");
    RuntimeInfo {
        name: RUNTIME_ID.to_string(),
        version: MessageField::some(RuntimeVersion {
            version: env!("CARGO_PKG_VERSION").to_string(),
            revision: REVISION.to_string(),
            ..Default::default()
        }),
        options: MessageField::from_option(
            Any::parse_from_bytes(options)
                .ok()
                .filter(|a| !a.type_url.is_empty()),
        ),
        features: MessageField::some(Any {
            type_url: FEATURES_TYPE_URL.to_string(),
            value: features,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The bytes `-info` writes to stdout.
pub fn answer(options: &[u8]) -> Vec<u8> {
    runtime_info(options)
        .write_to_bytes()
        .expect("a RuntimeInfo encodes")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decoded the way containerd decodes it: RuntimeInfo from protobuf,
    /// then the features Any by its type URL, as JSON into the OCI
    /// features struct.
    #[test]
    fn answer_decodes_as_containerd_decodes_it() {
        let info = RuntimeInfo::parse_from_bytes(&answer(b"")).unwrap();
        assert_eq!(info.name, "io.containerd.skiff.v2");
        assert_eq!(info.version.version, env!("CARGO_PKG_VERSION"));
        assert!(!info.version.revision.is_empty());
        assert!(info.options.is_none());
        assert_eq!(info.features.type_url, FEATURES_TYPE_URL);
        let features: oci_spec::runtime::Features =
            serde_json::from_slice(&info.features.value).unwrap();
        assert_eq!(features.oci_version_min(), "1.0.0");
        let linux = features.linux().as_ref().unwrap();
        assert_eq!(
            linux.cgroup().as_ref().and_then(|c| *c.v2()),
            Some(true),
            "cgroup v2"
        );
        assert!(features
            .mount_options()
            .as_ref()
            .unwrap()
            .contains(&"ro".to_string()));
    }

    #[test]
    fn options_are_echoed_and_garbage_is_ignored() {
        let options = Any {
            type_url: "runtimeoptions.v1.Options".into(),
            value: b"\x12\x03/x".to_vec(),
            ..Default::default()
        };
        let info =
            RuntimeInfo::parse_from_bytes(&answer(&options.write_to_bytes().unwrap())).unwrap();
        assert_eq!(info.options.type_url, "runtimeoptions.v1.Options");
        let info = RuntimeInfo::parse_from_bytes(&answer(b"\xff\xff\xff")).unwrap();
        assert!(info.options.is_none());
    }

    #[test]
    fn info_flag_in_go_syntax() {
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(requested(&args(&["-info"])));
        assert!(requested(&args(&["--info"])));
        assert!(!requested(&args(&["-id", "info", "start"])));
    }
}
