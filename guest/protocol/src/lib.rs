//! The ttrpc API between the Skiff runtime (host) and `skiff-agent` (PID 1
//! of every sandbox VM). The messages and the synchronous client/server
//! stubs are generated at build time from `proto/agent.proto`.
//!
//! - [`agent`]: the messages (`CreateContainerRequest`, ...).
//! - [`agent_ttrpc`]: `AgentServiceClient`, the `AgentService` server trait
//!   and `create_agent_service` to register an implementation.
//! - [`support`]: what the agent implements of the OCI runtime spec.
//! - [`forward`]: the port-forward stream beside the API (CRI PortForward).

#![allow(clippy::all, unused_qualifications, missing_docs)]

include!(concat!(env!("OUT_DIR"), "/mod.rs"));

#[warn(clippy::all)]
pub mod forward;
pub mod support;

/// Version of the wire protocol, returned by `Version`; bumped on
/// incompatible changes so the runtime can refuse a mismatched guest image.
pub const PROTOCOL_VERSION: u32 = 1;

/// The vsock port the agent listens on unless the kernel command line says
/// otherwise (`skiff.agent_port=`).
pub const DEFAULT_VSOCK_PORT: u32 = 1024;

/// The longest id containerd accepts.
pub const MAX_ID_LEN: usize = 76;

/// Whether `id` is a valid sandbox, container or exec id: containerd's own
/// rule (alphanumeric runs joined by single `.`, `_` or `-`, at most
/// [`MAX_ID_LEN`] bytes). Both ends check it, since an id names a
/// directory on the host (state, share) and in the guest (cgroup), and
/// such an id can never be `..` or hold a `/`.
pub fn is_valid_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    let separator = |b: &u8| b".-_".contains(b);
    !bytes.is_empty()
        && bytes.len() <= MAX_ID_LEN
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || separator(b))
        && !bytes.first().is_some_and(separator)
        && !bytes.last().is_some_and(separator)
        && !bytes.windows(2).any(|w| w.iter().all(separator))
}

pub use protobuf;
pub use ttrpc;

#[cfg(test)]
mod tests {
    use super::agent::{CreateContainerRequest, Storage, StorageDriver};
    use super::{is_valid_id, MAX_ID_LEN};
    use protobuf::Message;

    #[test]
    fn ids_follow_containerds_rule() {
        let longest = "a".repeat(MAX_ID_LEN);
        for good in ["c1", "0123abc", "a.b_c-d", "pod-a_b.1", &longest] {
            assert!(is_valid_id(good), "{good:?}");
        }
        let too_long = "a".repeat(MAX_ID_LEN + 1);
        for bad in [
            "", ".", "..", "a/b", "../x", "a b", "x\0", ".hidden", "a..b", "a-", "-a", "é",
            &too_long,
        ] {
            assert!(!is_valid_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn create_container_request_round_trips() {
        let mut req = CreateContainerRequest::new();
        req.container_id = "c1".into();
        req.oci_spec_json = br#"{"ociVersion":"1.0.2"}"#.to_vec();
        let mut st = Storage::new();
        st.driver = StorageDriver::STORAGE_DRIVER_VIRTIO_FS.into();
        st.source = "sharefs".into();
        st.mount_point = "/run/skiff/shared".into();
        req.storages.push(st);
        let bytes = req.write_to_bytes().unwrap();
        let back = CreateContainerRequest::parse_from_bytes(&bytes).unwrap();
        assert_eq!(back, req);
        assert_eq!(
            back.storages[0].driver.enum_value(),
            Ok(StorageDriver::STORAGE_DRIVER_VIRTIO_FS)
        );
    }
}
