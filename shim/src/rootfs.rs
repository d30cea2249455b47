//! A container's root filesystem on the host: containerd's rootfs mounts
//! (the snapshotter's overlay) mounted on the spec's root in the bundle,
//! hardened because the guest writes that tree through the share, and
//! unmounted when the container goes. The runtime shares what is there.

use std::path::{Path, PathBuf};

use containerd_shim::protos::types::mount::Mount;
use oci_spec::runtime::Spec;

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("the OCI spec has no root")]
    NoRoot,
    #[error("rootfs {0} does not exist")]
    Missing(PathBuf),
    #[error("mount rootfs on {path}: {err}")]
    Mount {
        path: PathBuf,
        err: containerd_shim::Error,
    },
    #[error(transparent)]
    Harden(#[from] skiff_runtime::share::ShareError),
}

impl RootfsError {
    /// The request was wrong (not the host): containerd's caller should
    /// fix it.
    pub fn is_invalid_argument(&self) -> bool {
        matches!(self, RootfsError::NoRoot | RootfsError::Missing(_))
    }
}

/// A container's root filesystem, mounted by us or (no rootfs mounts in
/// the request) already in the bundle.
#[derive(Debug)]
pub struct Rootfs {
    pub path: PathBuf,
    mounted: bool,
}

impl Rootfs {
    /// Mounts `mounts` on the spec's root in `bundle`; nothing is left
    /// mounted on error.
    pub fn mount(bundle: &Path, spec: &Spec, mounts: &[Mount]) -> Result<Self, RootfsError> {
        let path = spec
            .root()
            .as_ref()
            .map(|r| bundle.join(r.path()))
            .ok_or(RootfsError::NoRoot)?;
        let rootfs = Rootfs {
            path,
            mounted: !mounts.is_empty(),
        };
        let result = rootfs.mount_all(mounts);
        if result.is_err() {
            rootfs.unmount();
        }
        result.map(|()| rootfs)
    }

    fn mount_all(&self, mounts: &[Mount]) -> Result<(), RootfsError> {
        let path = &self.path;
        for m in mounts {
            containerd_shim::mount::mount_rootfs(Some(&m.type_), Some(&m.source), &m.options, path)
                .map_err(|err| RootfsError::Mount {
                    path: path.clone(),
                    err,
                })?;
        }
        // The guest writes this tree through the share: the host must
        // never honour a setuid file or device node it made there.
        if self.mounted {
            skiff_runtime::share::harden_mount(path)?;
        }
        if !path.is_dir() {
            return Err(RootfsError::Missing(path.clone()));
        }
        Ok(())
    }

    /// Unmounts what [`Rootfs::mount`] mounted; logs what it cannot.
    pub fn unmount(&self) {
        if !self.mounted {
            return;
        }
        if let Err(e) =
            containerd_shim::mount::umount_recursive(self.path.to_str(), libc::MNT_DETACH)
        {
            tracing::warn!("unmount {}: {e}", self.path.display());
        }
    }
}
