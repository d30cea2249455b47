//! A container's way into the sandbox: its root filesystem and the host
//! paths its spec binds, bind-mounted into the share (recorded in
//! `persist.json` first, so a crash leaves a list cleanup can walk), its
//! block devices hot-added, then its spec, rewritten for the guest, handed
//! to the agent; and the way back out on removal.

use std::path::Path;

use oci_spec::runtime::Spec;
use skiff_agent_protocol::agent::CreateContainerRequest;

use crate::persist::{self, ContainerState};
use crate::share::{self, BindMode, ShareError};
use crate::spec::{self, ROOTFS_DIR};

use super::{state_dir, Sandbox, SandboxError, GUEST_SHARE_DIR};

impl Sandbox {
    /// Shares the container's rootfs (`rootfs`, already mounted on the
    /// host) and the host paths its spec binds in, then creates it in the
    /// guest. On error everything made for it is undone.
    pub fn create_container(
        &self,
        container_id: &str,
        bundle: &Path,
        rootfs: &Path,
        spec: Spec,
    ) -> Result<(), SandboxError> {
        persist::check_id(container_id)?;
        let guest_dir = Path::new(GUEST_SHARE_DIR).join(container_id);
        let mut guest = spec::for_guest(spec, &guest_dir)?;
        let host_dir = self.host_dir(container_id);
        let mut mounts = vec![host_dir.join(ROOTFS_DIR)];
        mounts.extend(guest.binds.iter().map(|b| host_dir.join(&b.share_path)));
        // Recorded before mounting: a crash in between leaves a list that
        // cleanup walks harmlessly.
        self.save_state(|s| {
            s.containers.push(ContainerState {
                id: container_id.into(),
                bundle: bundle.into(),
                mounts,
            })
        })?;
        let in_share = Path::new(container_id);
        let result = (|| {
            share::bind(
                &self.share,
                &in_share.join(ROOTFS_DIR),
                rootfs,
                BindMode::READ_WRITE,
            )?;
            for bind in &guest.binds {
                share::bind(
                    &self.share,
                    &in_share.join(&bind.share_path),
                    &bind.source,
                    bind.mode,
                )?;
            }
            self.block_devices
                .attach(&self.vmm, &*self.agent, container_id, &mut guest)?;
            // The pod's shared namespaces are its sandbox's (the sandbox's
            // own spec makes them).
            let join_namespaces = match container_id == self.id {
                true => Vec::new(),
                false => guest
                    .joined_namespaces
                    .iter()
                    .map(|n| n.to_string())
                    .collect(),
            };
            self.agent.create_container(CreateContainerRequest {
                container_id: container_id.into(),
                oci_spec_json: serde_json::to_vec(&guest.spec).expect("spec serialises"),
                namespaces_of: self.id.clone(),
                join_namespaces,
                ..Default::default()
            })?;
            Ok(())
        })();
        if result.is_err() {
            let _ = self
                .block_devices
                .detach(&self.vmm, &*self.agent, container_id);
            let _ = self.unshare(container_id);
        }
        result
    }

    /// Removes the container from the guest and its share from the host.
    pub fn remove_container(&self, container_id: &str) -> Result<(), SandboxError> {
        let removed = self
            .agent
            .remove_container(container_id)
            .map_err(SandboxError::from);
        let detached = self
            .block_devices
            .detach(&self.vmm, &*self.agent, container_id);
        self.unshare(container_id)?;
        removed.and(detached)
    }

    /// Unmounts and removes the container's directory in the share. What
    /// the guest made unremovable meanwhile (a mount renamed into it, a
    /// tree too large) is logged and left for the sandbox's teardown,
    /// which unmounts the whole share.
    fn unshare(&self, container_id: &str) -> Result<(), SandboxError> {
        let in_share = Path::new(container_id);
        share::unmount_tree(&self.share, in_share).map_err(ShareError::from)?;
        match share::remove_tree(&self.share, in_share) {
            Ok(removal) if !removal.complete => tracing::warn!(
                "container {container_id}: {} left: {}",
                self.host_dir(container_id).display(),
                state_dir::leftover(&removal)
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!("container {container_id}: {e}"),
        }
        self.save_state(|s| s.containers.retain(|c| c.id != container_id))
    }
}
