//! Runtime options containerd passes with a task: the only kind Skiff
//! takes is `runtimeoptions.v1.Options` (what `ctr run --runtime-config-path`
//! and the CRI plugin's `ConfigPath` send), naming a configuration file.
//! There is no Rust binding of that message in containerd-shim-protos, and
//! it has two string fields, so it is decoded here.

use std::path::PathBuf;

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::CodedInputStream;

pub const RUNTIME_OPTIONS_TYPE: &str = "runtimeoptions.v1.Options";

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum OptionsError {
    #[error(
        "unknown runtime options type {0:?}: Skiff takes {RUNTIME_OPTIONS_TYPE} (a config_path)"
    )]
    UnknownType(String),
    #[error("malformed {RUNTIME_OPTIONS_TYPE}: {0}")]
    Malformed(String),
}

/// The configuration file the options name, if any.
pub fn config_path(options: Option<&Any>) -> Result<Option<PathBuf>, OptionsError> {
    let Some(any) = options.filter(|a| !a.type_url.is_empty() || !a.value.is_empty()) else {
        return Ok(None);
    };
    let type_name = any.type_url.rsplit('/').next().unwrap_or_default();
    if type_name != RUNTIME_OPTIONS_TYPE {
        return Err(OptionsError::UnknownType(any.type_url.clone()));
    }
    let malformed =
        |e: containerd_shim::protos::protobuf::Error| OptionsError::Malformed(e.to_string());
    let mut input = CodedInputStream::from_bytes(&any.value);
    let mut path = String::new();
    while let Some(tag) = input.read_raw_tag_or_eof().map_err(malformed)? {
        match tag {
            // field 1: type_url (ignored), field 2: config_path; both strings.
            0x0a => {
                input.read_string().map_err(malformed)?;
            }
            0x12 => path = input.read_string().map_err(malformed)?,
            other => {
                return Err(OptionsError::Malformed(format!(
                    "unexpected field tag {other:#x}"
                )))
            }
        }
    }
    Ok((!path.is_empty()).then(|| PathBuf::from(path)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(type_url: &str, value: Vec<u8>) -> Any {
        Any {
            type_url: type_url.into(),
            value,
            ..Default::default()
        }
    }

    #[test]
    fn config_path_is_read_from_runtime_options() {
        let mut value = vec![0x0a, 3];
        value.extend(b"abc");
        value.extend([0x12, 9]);
        value.extend(b"/etc/x.tl");
        let opts = any("runtimeoptions.v1.Options", value);
        assert_eq!(config_path(Some(&opts)).unwrap(), Some("/etc/x.tl".into()));
        assert_eq!(config_path(None).unwrap(), None);
        assert_eq!(config_path(Some(&Any::default())).unwrap(), None);
    }

    #[test]
    fn other_option_types_and_garbage_are_refused() {
        let runc = any("containerd.runc.v1.Options", vec![]);
        assert!(config_path(Some(&runc))
            .unwrap_err()
            .to_string()
            .contains("containerd.runc.v1.Options"));
        let truncated = any("runtimeoptions.v1.Options", vec![0x12, 9, b'/']);
        assert!(matches!(
            config_path(Some(&truncated)),
            Err(OptionsError::Malformed(_))
        ));
        let unknown_field = any("runtimeoptions.v1.Options", vec![0x18, 1]);
        assert!(matches!(
            config_path(Some(&unknown_field)),
            Err(OptionsError::Malformed(_))
        ));
    }
}
