//! The OCI runtime features document of a Skiff sandbox (runtime-spec
//! `features.md`): what a container spec may ask for and get. containerd
//! 2.x reads it through the shim's `-info` and gates spec features on it
//! (recursive read-only mounts, user namespaces, ...). The guest agent's
//! side of the contract is `skiff_agent_protocol::support`, whose names the
//! agent's unit tests check against its own code.

use oci_spec::runtime::Features;
use serde_json::json;
use skiff_agent_protocol::support;

/// The oldest and newest runtime-spec versions a spec may declare.
pub const OCI_VERSION_MIN: &str = "1.0.0";
pub const OCI_VERSION_MAX: &str = "1.2.1";

/// What a container in a Skiff sandbox supports.
///
/// - No hooks: they would run on the host, and the runtime drops them from
///   the spec it hands the guest.
/// - Namespaces: the guest's; user and time namespaces are refused.
/// - Capabilities: every one the guest kernel (6.1) knows.
/// - Cgroup v2 only (the guest mounts cgroup2; a v1 spec is translated).
/// - Seccomp, compiled in the guest without libseccomp: no flags, x86_64.
/// - No AppArmor, SELinux, Intel RDT, idmapped mounts or net devices.
pub fn oci_features() -> Features {
    let mut capabilities: Vec<caps::Capability> = caps::all().into_iter().collect();
    capabilities.sort_by_key(|c| c.index());
    let document = json!({
        "ociVersionMin": OCI_VERSION_MIN,
        "ociVersionMax": OCI_VERSION_MAX,
        "hooks": [],
        "mountOptions": support::MOUNT_OPTIONS,
        "linux": {
            "namespaces": support::NAMESPACES,
            "capabilities": capabilities.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "cgroup": {"v1": false, "v2": true, "systemd": false, "systemdUser": false, "rdma": false},
            "seccomp": {
                "enabled": true,
                "actions": support::SECCOMP_ACTIONS,
                "operators": support::SECCOMP_OPERATORS,
                "archs": ["SCMP_ARCH_X86_64"],
                "knownFlags": [],
                "supportedFlags": []
            },
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false},
            "intelRdt": {"enabled": false},
            "mountExtensions": {"idmap": {"enabled": false}},
            "netDevices": {"enabled": false}
        }
    });
    // Built from constants: a failure here is caught by the unit test.
    serde_json::from_value(document).expect("the features document matches oci-spec's schema")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_is_valid_and_names_what_the_guest_does() {
        let f = oci_features();
        assert_eq!(f.oci_version_min(), OCI_VERSION_MIN);
        let linux = f.linux().as_ref().unwrap();
        let caps = linux.capabilities().as_ref().unwrap();
        assert_eq!(caps.first().map(String::as_str), Some("CAP_CHOWN"));
        assert!(caps.iter().any(|c| c == "CAP_SYS_ADMIN"));
        let ns = serde_json::to_value(linux.namespaces()).unwrap();
        assert!(!ns.as_array().unwrap().contains(&json!("user")));
        assert_eq!(f.hooks().as_deref(), Some(&[][..]));
        let json = serde_json::to_value(&f).unwrap();
        assert_eq!(json["linux"]["seccomp"]["actions"][0], "SCMP_ACT_ALLOW");
        assert_eq!(json["linux"]["mountExtensions"]["idmap"]["enabled"], false);
    }
}
