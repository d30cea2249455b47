//! How CRI groups containers into pods: the annotations containerd's CRI
//! plugin puts on each container's spec, and the sandbox a container
//! belongs to.

use oci_spec::runtime::Spec;

/// The CRI annotations that group containers into pods.
pub mod annotations {
    pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
    pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
    pub const TYPE_SANDBOX: &str = "sandbox";
    pub const TYPE_CONTAINER: &str = "container";
}

fn container_type(spec: &Spec) -> Option<&str> {
    spec.annotations()
        .as_ref()
        .and_then(|a| a.get(annotations::CONTAINER_TYPE))
        .map(String::as_str)
}

/// Whether `spec` is an app container of a CRI pod (not its sandbox).
pub fn is_pod_member(spec: &Spec) -> bool {
    container_type(spec) == Some(annotations::TYPE_CONTAINER)
}

/// The sandbox a container belongs to: its CRI pod's, or (for a plain
/// `ctr run`, without CRI annotations) a sandbox of its own.
pub fn sandbox_id_of(spec: &Spec, container_id: &str) -> String {
    if !is_pod_member(spec) {
        return container_id.into();
    }
    spec.annotations()
        .as_ref()
        .and_then(|a| a.get(annotations::SANDBOX_ID))
        .cloned()
        .unwrap_or_else(|| container_id.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_containers_join_their_pod_and_others_stand_alone() {
        let with = |ann: serde_json::Value| -> Spec {
            serde_json::from_value(serde_json::json!({
                "ociVersion": "1.0.2",
                "root": {"path": "rootfs"},
                "annotations": ann
            }))
            .unwrap()
        };
        let app = with(serde_json::json!({
            annotations::CONTAINER_TYPE: "container",
            annotations::SANDBOX_ID: "pod1"
        }));
        assert_eq!(sandbox_id_of(&app, "c1"), "pod1");
        assert!(is_pod_member(&app));
        let pod = with(serde_json::json!({
            annotations::CONTAINER_TYPE: "sandbox",
            annotations::SANDBOX_ID: "pod1"
        }));
        assert_eq!(sandbox_id_of(&pod, "pod1"), "pod1");
        assert!(!is_pod_member(&pod));
        assert_eq!(sandbox_id_of(&with(serde_json::json!({})), "c9"), "c9");
    }
}
