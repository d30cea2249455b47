//! The sandbox's state directory on the host (`/run/skiff/sbs/<id>/`):
//! made private, holding the share's bounded tmpfs, the console log, the
//! vsock socket and `persist.json`; and its removal, which unwires the pod
//! network it records and unmounts everything below it, both when the
//! sandbox shuts down and when `shim delete` cleans up after a dead shim.

use std::path::{Path, PathBuf};

use crate::cgroup;
use crate::config::{SharedFsConfig, SHARED_FS_TMPFS_INODES};
use crate::persist::{self, SandboxState};
use crate::pod_net;
use crate::share::{self, HostDir, ShareError};

use super::SandboxError;

/// The shared directory's name in the sandbox's state directory.
pub(super) const SHARE_DIR: &str = "shared";

/// Undoes a half-made sandbox unless disarmed.
pub(super) struct Undo<'a>(pub Option<&'a Path>);

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        if let Some(dir) = self.0 {
            if let Err(e) = remove(dir) {
                tracing::error!("clean up {}: {e}", dir.display());
            }
        }
    }
}

/// Unwires the pod network recorded in the state directory (if any),
/// unmounts everything below it (container binds first, then the share's
/// tmpfs, which takes what the guest wrote there with it) and removes it,
/// never following a symlink nor entering a mount that is left.
pub(super) fn remove(dir: &Path) -> Result<(), SandboxError> {
    if let Ok(SandboxState {
        network: Some(net), ..
    }) = SandboxState::load(dir)
    {
        pod_net::disconnect(&net)?;
    }
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
        return Err(SandboxError::Leftover {
            path: dir.into(),
            why: "not a directory below a state root".into(),
        });
    };
    let parent = match HostDir::open(parent) {
        Ok(parent) => parent,
        Err(_) if !parent.exists() => return Ok(()),
        Err(e) => return Err(ShareError::from(e).into()),
    };
    let name = Path::new(name);
    share::unmount_tree(&parent, name).map_err(ShareError::from)?;
    let removal = share::remove_tree(&parent, name).map_err(ShareError::from)?;
    if removal.complete {
        return Ok(());
    }
    Err(SandboxError::Leftover {
        path: dir.into(),
        why: leftover(&removal),
    })
}

/// What a removal left, as a person reads it.
pub(super) fn leftover(removal: &share::Removal) -> String {
    let mut why = Vec::new();
    if !removal.skipped_mounts.is_empty() {
        let points: Vec<String> = removal
            .skipped_mounts
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        why.push(format!("still mounted: {}", points.join(", ")));
    }
    for (path, err) in &removal.failed {
        why.push(format!("{}: {err}", path.display()));
    }
    if removal.limit_hit {
        why.push("the tree is too deep or too large to remove".into());
    }
    if why.is_empty() {
        why.push("not empty".into());
    }
    why.join("; ")
}

/// Makes the sandbox's state directory, mode 0700 (its parents 0711):
/// only root on the host reaches the share, console log and sockets.
pub(super) fn make(dir: &Path) -> Result<(), SandboxError> {
    use std::os::unix::fs::DirBuilderExt;
    let prepare = |path: &Path| {
        let path = path.to_path_buf();
        move |err| SandboxError::Prepare { path, err }
    };
    if let Some(parent) = dir.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(parent)
            .map_err(prepare(parent))?;
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(prepare(dir))
}

/// Mounts the share's own bounded tmpfs in the state directory `dir`.
pub(super) fn mount_share(dir: &Path, config: &SharedFsConfig) -> Result<HostDir, SandboxError> {
    let state = HostDir::open(dir).map_err(ShareError::from)?;
    Ok(share::mount_tmpfs(
        &state,
        SHARE_DIR,
        config.tmpfs_size_mib,
        SHARED_FS_TMPFS_INODES,
    )?)
}

/// The state directory of sandbox `id`, made for this shim: a stale one
/// (its shim is gone) is removed first; a live one's refuses.
pub(super) fn claim(id: &str) -> Result<PathBuf, SandboxError> {
    let dir = persist::sandbox_dir(Path::new(persist::STATE_ROOT), id)?;
    if dir.exists() {
        match SandboxState::load(&dir) {
            Ok(old) if old.shim_pid != std::process::id() && persist::shim_alive(old.shim_pid) => {
                return Err(SandboxError::AlreadyRunning {
                    id: id.into(),
                    pid: old.shim_pid,
                })
            }
            _ => {
                tracing::warn!("removing stale state of sandbox {id}");
                remove(&dir)?;
            }
        }
    }
    make(&dir)?;
    Ok(dir)
}

/// What `shim delete` found and removed for a sandbox whose shim is gone.
#[derive(Debug, Default)]
pub struct Cleanup {
    pub removed_state: bool,
}

/// Cleans up after the shim that ran sandbox `id` died: its VM died with
/// it, so every mount, tap device and the state directory go. Does
/// nothing when the shim is alive (it cleans up itself) or when there is
/// no state.
pub fn cleanup_dead_sandbox(id: &str) -> Result<Cleanup, SandboxError> {
    let dir = persist::sandbox_dir(Path::new(persist::STATE_ROOT), id)?;
    if !dir.exists() {
        return Ok(Cleanup::default());
    }
    if let Ok(state) = SandboxState::load(&dir) {
        if state.shim_pid != std::process::id() && persist::shim_alive(state.shim_pid) {
            return Ok(Cleanup::default());
        }
        cgroup::remove_dead(&state.cgroup_dirs);
    }
    remove(&dir)?;
    Ok(Cleanup {
        removed_state: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A guard that detaches whatever a test left mounted below `root`.
    struct Unmount(PathBuf);

    impl Drop for Unmount {
        fn drop(&mut self) {
            for point in share::mounts_under(&self.0).unwrap_or_default() {
                let _ = nix::mount::umount2(&point, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }

    #[test]
    fn the_state_dir_is_private_and_its_bounded_share_goes_with_it() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::Builder::new()
            .prefix("skiff-state-test")
            .tempdir_in("/tmp")
            .unwrap();
        let root = std::fs::canonicalize(tmp.path()).unwrap();
        let _guard = Unmount(root.clone());
        let dir = root.join("sbs/p1");
        make(&dir).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&root.join("sbs")), 0o711);
        let config = SharedFsConfig {
            tmpfs_size_mib: 2,
            ..Default::default()
        };
        let share = mount_share(&dir, &config).unwrap();
        assert_eq!(share.path(), dir.join(SHARE_DIR));
        assert_eq!(mode(share.path()), 0o700);
        let source = root.join("rootfs");
        std::fs::create_dir(&source).unwrap();
        std::fs::write(source.join("keep"), "image data").unwrap();
        share::bind(
            &share,
            Path::new("c1/rootfs"),
            &source,
            share::BindMode::READ_WRITE,
        )
        .unwrap();
        std::fs::write(dir.join("shared/guest-file"), "guest data").unwrap();
        let mounts = share::mounts_under(&dir).unwrap();
        assert_eq!(
            mounts,
            vec![dir.join("shared/c1/rootfs"), dir.join(SHARE_DIR)]
        );

        remove(&dir).unwrap();
        assert!(share::mounts_under(&root).unwrap().is_empty());
        assert!(!dir.exists());
        assert_eq!(
            std::fs::read_to_string(source.join("keep")).unwrap(),
            "image data"
        );
        // Nothing there is fine too.
        remove(&dir).unwrap();
    }
}
