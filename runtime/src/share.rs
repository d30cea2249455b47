//! The sandbox's shared directory: served to the guest over virtio-fs,
//! one subdirectory per container holding bind mounts of its rootfs and
//! of the host files its spec binds in. Every mount made here is listed in
//! persist.json and undone by [`unmount_tree`].

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("bind source {0} does not exist")]
    MissingSource(PathBuf),
    #[error("prepare bind target {path}: {err}")]
    Target { path: PathBuf, err: std::io::Error },
    #[error("bind {source_path} on {target}: {err}")]
    Bind {
        source_path: PathBuf,
        target: PathBuf,
        err: nix::Error,
    },
    #[error("unmount {path}: {err}")]
    Unmount { path: PathBuf, err: nix::Error },
    #[error("read /proc/self/mountinfo: {0}")]
    MountInfo(std::io::Error),
}

/// Bind-mounts `source` (a directory or a file) on `target`, making the
/// target and its parents as needed, read-only if asked.
pub fn bind(source: &Path, target: &Path, read_only: bool) -> Result<(), ShareError> {
    let meta = std::fs::metadata(source).map_err(|_| ShareError::MissingSource(source.into()))?;
    let prepare = || -> std::io::Result<()> {
        if meta.is_dir() {
            std::fs::create_dir_all(target)
        } else {
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(target)
                .map(drop)
        }
    };
    prepare().map_err(|err| ShareError::Target {
        path: target.into(),
        err,
    })?;
    let bind_err = |err| ShareError::Bind {
        source_path: source.into(),
        target: target.into(),
        err,
    };
    let flags = MsFlags::MS_BIND | MsFlags::MS_REC;
    mount(Some(source), target, None::<&str>, flags, None::<&str>).map_err(bind_err)?;
    // A mount event below the share must not travel back to the host's
    // copy of the source (or the other way round).
    let private = MsFlags::MS_PRIVATE | MsFlags::MS_REC;
    let remount_ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    let result = mount(None::<&str>, target, None::<&str>, private, None::<&str>).and_then(|_| {
        if read_only {
            mount(None::<&str>, target, None::<&str>, remount_ro, None::<&str>)
        } else {
            Ok(())
        }
    });
    if let Err(err) = result {
        let _ = umount2(target, MntFlags::MNT_DETACH);
        return Err(bind_err(err));
    }
    Ok(())
}

/// Mount points at or below `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Result<Vec<PathBuf>, ShareError> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").map_err(ShareError::MountInfo)?;
    Ok(mount_points_under(&info, dir))
}

fn mount_points_under(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_octal(field)))
        .filter(|point| point.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    points
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Detaches every mount at or below `dir`, deepest first. Stacked mounts
/// on one point are all removed.
pub fn unmount_tree(dir: &Path) -> Result<(), ShareError> {
    loop {
        let points = mounts_under(dir)?;
        if points.is_empty() {
            return Ok(());
        }
        for path in points {
            match umount2(&path, MntFlags::MNT_DETACH) {
                Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
                Err(err) => return Err(ShareError::Unmount { path, err }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:25 / /run rw shared:5 - tmpfs tmpfs rw
40 30 0:40 / /run/skiff/sbs/p1/shared/c1/rootfs rw - overlay overlay rw
41 40 8:1 /etc/hosts /run/skiff/sbs/p1/shared/c1/mounts/0 rw - ext4 /dev/sda1 rw
42 30 8:1 /x /run/skiff/sbs/p1/shared/with\\040space rw - ext4 /dev/sda1 rw
43 30 8:1 /x /run/skiff/sbs/p10/shared rw - ext4 /dev/sda1 rw
";

    #[test]
    fn mounts_below_a_directory_come_deepest_first_and_unescaped() {
        let points = mount_points_under(MOUNTINFO, Path::new("/run/skiff/sbs/p1"));
        assert_eq!(
            points,
            vec![
                PathBuf::from("/run/skiff/sbs/p1/shared/c1/mounts/0"),
                PathBuf::from("/run/skiff/sbs/p1/shared/c1/rootfs"),
                PathBuf::from("/run/skiff/sbs/p1/shared/with space"),
            ]
        );
    }

    #[test]
    fn octal_escapes_and_stray_backslashes() {
        assert_eq!(unescape_octal("a\\040b\\134c"), "a b\\c");
        assert_eq!(unescape_octal("tail\\04"), "tail\\04");
        assert_eq!(unescape_octal("x\\999"), "x\\999");
    }

    #[test]
    fn missing_bind_source_is_named() {
        let err = bind(Path::new("/nonexistent/src"), Path::new("/tmp/x"), false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "bind source /nonexistent/src does not exist"
        );
    }
}
