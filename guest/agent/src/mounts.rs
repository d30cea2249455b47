//! Mount helpers: mount(8)-style options to flags, paths inside a rootfs
//! that cannot escape it through symlinks, and the storages (virtio-fs
//! shares, block devices, bind mounts) the runtime asks for.

use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use skiff_agent_protocol::agent::{Storage, StorageDriver};

/// Errors preparing or making mounts.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("path {0:?} must be absolute")]
    NotAbsolute(String),
    #[error("path {0:?} resolves through too many symlinks")]
    SymlinkLoop(String),
    #[error("storage for {mount_point:?} has no driver")]
    NoDriver { mount_point: String },
    #[error("mount {source_name} on {target} ({fstype}): {err}")]
    Mount {
        source_name: String,
        target: String,
        fstype: String,
        err: nix::Error,
    },
    #[error("create mount point {path}: {err}")]
    MountPoint { path: PathBuf, err: std::io::Error },
}

/// Flags and fs data parsed from mount options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    pub flags: MsFlags,
    /// Flags to clear (e.g. "rw" after "ro").
    pub clear: MsFlags,
    /// MS_SHARED/MS_PRIVATE/... (with MS_REC for the r* forms), applied
    /// with a separate mount call as the kernel requires.
    pub propagation: MsFlags,
    pub bind: bool,
    pub recursive: bool,
    /// "rro": the mount and every mount below it read-only
    /// (mount_setattr with AT_RECURSIVE, Linux 5.12+), as runc does.
    pub recursive_readonly: bool,
    /// Options that are not flags, for the filesystem ("size=64m").
    pub data: Vec<String>,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            flags: MsFlags::empty(),
            clear: MsFlags::empty(),
            propagation: MsFlags::empty(),
            bind: false,
            recursive: false,
            recursive_readonly: false,
            data: Vec::new(),
        }
    }
}

impl MountOptions {
    pub fn parse<S: AsRef<str>>(options: &[S]) -> MountOptions {
        let mut o = MountOptions::default();
        for opt in options {
            let opt = opt.as_ref();
            let (set, clear) = match opt {
                "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
                "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
                "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
                "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
                "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
                "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
                "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
                "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
                "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
                "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
                "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
                "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
                "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
                "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
                "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
                "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
                "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
                "bind" => {
                    o.bind = true;
                    continue;
                }
                "rro" => {
                    o.recursive_readonly = true;
                    continue;
                }
                "rbind" => {
                    o.bind = true;
                    o.recursive = true;
                    continue;
                }
                "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave"
                | "unbindable" | "runbindable" => {
                    let base = match opt.trim_start_matches('r') {
                        "private" => MsFlags::MS_PRIVATE,
                        "shared" => MsFlags::MS_SHARED,
                        "slave" => MsFlags::MS_SLAVE,
                        _ => MsFlags::MS_UNBINDABLE,
                    };
                    o.propagation = if opt.starts_with('r') {
                        base | MsFlags::MS_REC
                    } else {
                        base
                    };
                    continue;
                }
                // Runtime hints with no mount(2) meaning.
                "defaults" | "tmpcopyup" | "nofail" => continue,
                data => {
                    o.data.push(data.to_string());
                    continue;
                }
            };
            o.flags = (o.flags | set) - clear;
            o.clear = (o.clear | clear) - set;
        }
        o
    }

    pub fn data_string(&self) -> Option<String> {
        (!self.data.is_empty()).then(|| self.data.join(","))
    }
}

/// `root` + `path` with every symlink resolved inside `root`, so a
/// container cannot point a mount destination at the agent's files.
pub fn secure_join(root: &Path, path: &Path) -> Result<PathBuf, MountError> {
    let mut pending: Vec<std::ffi::OsString> = path
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut resolved = PathBuf::new();
    let mut hops = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let candidate = root.join(&resolved).join(&part);
        match std::fs::symlink_metadata(&candidate) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > 40 {
                    return Err(MountError::SymlinkLoop(path.display().to_string()));
                }
                let target = std::fs::read_link(&candidate).unwrap_or_default();
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(n) => pending.push(n.to_os_string()),
                        Component::ParentDir => pending.push("..".into()),
                        _ => {}
                    }
                }
            }
            _ => resolved.push(&part),
        }
    }
    Ok(root.join(resolved))
}

fn driver_defaults(driver: StorageDriver) -> Option<(&'static str, bool)> {
    match driver {
        StorageDriver::STORAGE_DRIVER_BIND => Some(("bind", true)),
        StorageDriver::STORAGE_DRIVER_VIRTIO_FS => Some(("virtiofs", false)),
        StorageDriver::STORAGE_DRIVER_BLOCK => Some(("ext4", false)),
        StorageDriver::STORAGE_DRIVER_UNSPECIFIED => None,
    }
}

/// Mounts one storage at its mount point (created if missing).
pub fn mount_storage(s: &Storage) -> Result<PathBuf, MountError> {
    let target = PathBuf::from(&s.mount_point);
    if !target.is_absolute() {
        return Err(MountError::NotAbsolute(s.mount_point.clone()));
    }
    let driver = s
        .driver
        .enum_value()
        .ok()
        .and_then(driver_defaults)
        .ok_or_else(|| MountError::NoDriver {
            mount_point: s.mount_point.clone(),
        })?;
    let (default_fstype, bind) = driver;
    let fstype = if s.fstype.is_empty() || bind {
        default_fstype.to_string()
    } else {
        s.fstype.clone()
    };
    let opts = MountOptions::parse(&s.options);
    let err = |err| MountError::Mount {
        source_name: s.source.clone(),
        target: s.mount_point.clone(),
        fstype: fstype.clone(),
        err,
    };
    if bind
        && std::fs::metadata(&s.source)
            .map(|m| !m.is_dir())
            .unwrap_or(false)
    {
        if !target.exists() {
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(|err| MountError::MountPoint {
                    path: parent.to_path_buf(),
                    err,
                })?;
            }
            std::fs::File::create(&target).map_err(|err| MountError::MountPoint {
                path: target.clone(),
                err,
            })?;
        }
    } else {
        std::fs::create_dir_all(&target).map_err(|err| MountError::MountPoint {
            path: target.clone(),
            err,
        })?;
    }
    let result = if bind {
        mount(
            Some(s.source.as_str()),
            &target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .and_then(|()| {
            if opts.flags.is_empty() {
                return Ok(());
            }
            mount(
                None::<&str>,
                &target,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | opts.flags,
                None::<&str>,
            )
        })
    } else {
        mount(
            Some(s.source.as_str()),
            &target,
            Some(fstype.as_str()),
            opts.flags,
            opts.data_string().as_deref(),
        )
    };
    if let Err(e) = result {
        // Leave nothing behind: a half-done bind (mounted, remount failed).
        let _ = umount2(&target, MntFlags::MNT_DETACH);
        return Err(err(e));
    }
    Ok(target)
}

/// Unmounts a storage (lazily: a container's leftover process must not
/// keep the agent from cleaning up).
pub fn unmount(target: &Path) {
    if let Err(e) = umount2(target, MntFlags::MNT_DETACH) {
        tracing::warn!("umount {}: {e}", target.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shim advertises these to containerd as supported.
    #[test]
    fn every_advertised_option_is_understood() {
        for o in skiff_agent_protocol::support::MOUNT_OPTIONS {
            let parsed = MountOptions::parse(&[o]);
            assert!(parsed.data.is_empty(), "{o} would be passed as data");
        }
    }

    #[test]
    fn options_split_into_flags_and_data() {
        let o = MountOptions::parse(&["nosuid", "ro", "size=64m", "rbind", "rslave", "mode=755"]);
        assert_eq!(o.flags, MsFlags::MS_NOSUID | MsFlags::MS_RDONLY);
        assert!(o.bind && o.recursive);
        assert_eq!(o.propagation, MsFlags::MS_SLAVE | MsFlags::MS_REC);
        assert_eq!(o.data_string().as_deref(), Some("size=64m,mode=755"));
        let o = MountOptions::parse(&["ro", "rw", "private"]);
        assert_eq!(o.flags, MsFlags::empty());
        assert_eq!(o.clear, MsFlags::MS_RDONLY);
        assert_eq!(o.propagation, MsFlags::MS_PRIVATE);
    }

    #[test]
    fn secure_join_keeps_symlinks_inside_the_root() {
        let root = std::env::temp_dir().join(format!("skiff-sj-test-{}", std::process::id()));
        std::fs::create_dir_all(root.join("a")).unwrap();
        let _ = std::os::unix::fs::symlink("/etc", root.join("evil"));
        let _ = std::os::unix::fs::symlink("../../..", root.join("a/up"));
        assert_eq!(
            secure_join(&root, Path::new("/evil/passwd")).unwrap(),
            root.join("etc/passwd")
        );
        assert_eq!(
            secure_join(&root, Path::new("/a/up/x")).unwrap(),
            root.join("x")
        );
        assert_eq!(
            secure_join(&root, Path::new("/../../x")).unwrap(),
            root.join("x")
        );
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn storage_without_driver_is_refused() {
        let mut s = Storage::new();
        s.mount_point = "/run/x".into();
        assert!(matches!(
            mount_storage(&s),
            Err(MountError::NoDriver { .. })
        ));
        s.mount_point = "rel".into();
        assert!(matches!(mount_storage(&s), Err(MountError::NotAbsolute(_))));
    }
}
