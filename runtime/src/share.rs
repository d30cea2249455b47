//! The sandbox's shared directory: served to the guest over virtio-fs,
//! one subdirectory per container holding bind mounts of its rootfs and
//! of the host files its spec binds in. Every mount made here is listed in
//! persist.json and undone by [`unmount_tree`].
//!
//! The guest writes the share: as root in its own kernel it can create,
//! rename, delete and symlink anything below the share root, at any
//! moment. So the runtime never touches a path below it by name the way
//! the host's ordinary calls do (they follow symlinks and re-resolve the
//! whole path on every call, which lets the guest point them at host
//! paths):
//! - bind targets are made and opened one component at a time from the
//!   share root's fd with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//!   RESOLVE_NO_XDEV)` ([`resolve`]), and the bind is made onto that fd
//!   with the new mount API (`open_tree`, `mount_setattr`, `move_mount`);
//! - teardown unmounts through fds resolved the same way and deletes with
//!   a walker that neither follows a symlink nor enters another mount
//!   ([`remove`]).
//!
//! The share itself is a tmpfs of its own ([`mount_tmpfs`]), bounded in
//! size and inodes, so what the guest writes there cannot fill the host's
//! `/run`. Every mount here is `nosuid,nodev` on the host: the guest can
//! make setuid files and device nodes in what it writes, and the host must
//! never honour them (the guest's own view over virtio-fs is unaffected:
//! it runs them in its own kernel).

mod remove;
mod resolve;

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags, CWD};
use rustix::io::Errno;
use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags, OpenTreeFlags};

pub use remove::{
    remove_tree, remove_tree_with, unmount_at, unmount_tree, Limits, Removal, RemoveError,
};
pub use resolve::{make_dir, make_file, open_dir, HostDir, ResolveError};

#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("bind source {0} does not exist")]
    MissingSource(PathBuf),
    #[error("open bind source {path}: {err}")]
    Source { path: PathBuf, err: std::io::Error },
    #[error("prepare bind target: {0}")]
    Target(#[from] ResolveError),
    #[error("bind {source_path} on {target}: {err}")]
    Bind {
        source_path: PathBuf,
        target: PathBuf,
        err: std::io::Error,
    },
    #[error(transparent)]
    Remove(#[from] RemoveError),
    #[error("mount the share's tmpfs on {path}: {step}: {err}")]
    Tmpfs {
        path: PathBuf,
        step: &'static str,
        err: std::io::Error,
    },
    #[error("make the mounts on {path} nosuid,nodev: {err}")]
    Harden { path: PathBuf, err: std::io::Error },
}

/// How a bind's copy in the share treats the mounts of its source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BindMode {
    pub read_only: ReadOnly,
    /// The copy is a slave of the source's mounts (`rslave`, `rshared`:
    /// CRI's HostToContainer and Bidirectional), so a mount the host makes
    /// below the source later appears in the share and the guest sees its
    /// files. Nothing travels the other way: the guest's own mounts are
    /// its kernel's. Otherwise the copy is private.
    pub from_host: bool,
}

impl BindMode {
    /// Writable and private: a container's rootfs.
    pub const READ_WRITE: BindMode = BindMode {
        read_only: ReadOnly::No,
        from_host: false,
    };
    /// Read-only all through, and private.
    pub const READ_ONLY: BindMode = BindMode {
        read_only: ReadOnly::Tree,
        from_host: false,
    };
}

/// Which mounts of a bind's copy are read-only.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReadOnly {
    #[default]
    No,
    /// Only the copy's top mount (OCI `ro`, as runc does it): a mount
    /// below the source (a tmpfs in a volume) keeps its own flags.
    Top,
    /// The copy and every mount below it (OCI `rro`).
    Tree,
}

/// Bind-mounts `source` (a host directory or file, recursively) on
/// `share/rel`, making the target and its parents as needed, never
/// following a symlink or crossing a mount below `share`. The bind is
/// `nosuid,nodev` all through, private or a slave of the source, and
/// read-only as `mode` says, all before it appears in the share.
pub fn bind(share: &HostDir, rel: &Path, source: &Path, mode: BindMode) -> Result<(), ShareError> {
    let target = share.path().join(rel);
    let bind_err = |err: Errno| ShareError::Bind {
        source_path: source.into(),
        target: target.clone(),
        err: err.into(),
    };
    // A detached copy of the source's mounts: nothing is visible until
    // move_mount below, and closing the fd on an error drops it. The copy
    // starts in the source's peer group if the source is shared; the
    // propagation set below takes it out (private) or makes it a slave.
    let flags = OpenTreeFlags::OPEN_TREE_CLONE
        | OpenTreeFlags::OPEN_TREE_CLOEXEC
        | OpenTreeFlags::AT_RECURSIVE;
    let tree = rustix::mount::open_tree(CWD, source, flags).map_err(|errno| match errno {
        Errno::NOENT => ShareError::MissingSource(source.into()),
        errno => ShareError::Source {
            path: source.into(),
            err: errno.into(),
        },
    })?;
    let st = rustix::fs::fstat(&tree).map_err(|errno| ShareError::Source {
        path: source.into(),
        err: errno.into(),
    })?;
    let target_fd = if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
        resolve::make_dir(share, rel)?
    } else {
        resolve::make_file(share, rel)?
    };
    let mut attrs = libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV;
    if mode.read_only == ReadOnly::Tree {
        attrs |= libc::MOUNT_ATTR_RDONLY;
    }
    let propagation = if mode.from_host { MS_SLAVE } else { MS_PRIVATE };
    mount_setattr(tree.as_fd(), attrs, propagation, Depth::Tree).map_err(bind_err)?;
    if mode.read_only == ReadOnly::Top {
        mount_setattr(tree.as_fd(), libc::MOUNT_ATTR_RDONLY, 0, Depth::Top).map_err(bind_err)?;
    }
    let empty = MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH;
    rustix::mount::move_mount(&tree, "", &target_fd, "", empty).map_err(bind_err)?;
    Ok(())
}

/// Whether mounts sit below `source` on the host (it, if a mount point
/// itself, does not count). A read-only bind of such a source is
/// read-only only at its top ([`ReadOnly::Top`]), which the guest cannot
/// tell: virtio-fs shows the mounts below as plain directories.
pub fn has_submounts(source: &Path) -> std::io::Result<bool> {
    let source = std::fs::canonicalize(source)?;
    Ok(mounts_under(&source)?.iter().any(|point| *point != source))
}

/// `MS_PRIVATE`, `MS_SLAVE` and `MS_SHARED` as `mount_attr.propagation`
/// takes them (`c_ulong` is narrower on 32-bit targets).
#[allow(clippy::unnecessary_cast)]
const MS_PRIVATE: u64 = libc::MS_PRIVATE as u64;
#[allow(clippy::unnecessary_cast)]
const MS_SLAVE: u64 = libc::MS_SLAVE as u64;
#[allow(clippy::unnecessary_cast)]
const MS_SHARED: u64 = libc::MS_SHARED as u64;

/// Which mounts a [`mount_setattr`] changes.
#[derive(Clone, Copy, PartialEq)]
enum Depth {
    /// The mount `fd` is the root of.
    Top,
    /// It and every mount below it.
    Tree,
}

/// `mount_setattr(fd, "", AT_EMPTY_PATH [| AT_RECURSIVE], ...)`: sets
/// `attr_set` on the mount `fd` is the root of (and, for
/// [`Depth::Tree`], every mount below it), and their propagation
/// (`MS_PRIVATE`, ...; 0 leaves it). rustix has no wrapper for it.
fn mount_setattr(
    fd: BorrowedFd<'_>,
    attr_set: u64,
    propagation: u64,
    depth: Depth,
) -> Result<(), Errno> {
    let attr = libc::mount_attr {
        attr_set,
        attr_clr: 0,
        propagation,
        userns_fd: 0,
    };
    let mut flags = libc::AT_EMPTY_PATH;
    if depth == Depth::Tree {
        flags |= libc::AT_RECURSIVE;
    }
    // SAFETY: the path is a NUL-terminated empty string, `attr` lives
    // across the call and its size is passed; the kernel only reads both.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if rc < 0 {
        let raw = std::io::Error::last_os_error().raw_os_error();
        Err(Errno::from_raw_os_error(raw.unwrap_or(libc::EIO)))
    } else {
        Ok(())
    }
}

/// Mounts a fresh tmpfs for the share on `state/name` (made, mode 0700):
/// at most `size_mib` MiB and `nr_inodes` inodes, `nosuid,nodev`, mode
/// 0700, private. Returns the share root: the tmpfs's own root, which the
/// guest cannot replace.
pub fn mount_tmpfs(
    state: &HostDir,
    name: &str,
    size_mib: u64,
    nr_inodes: u64,
) -> Result<HostDir, ShareError> {
    let path = state.path().join(name);
    let err = |step| {
        let path = path.clone();
        move |errno: Errno| ShareError::Tmpfs {
            path,
            step,
            err: errno.into(),
        }
    };
    let target = resolve::make_dir(state, Path::new(name))?;
    let fs = rustix::mount::fsopen("tmpfs", FsOpenFlags::FSOPEN_CLOEXEC).map_err(err("fsopen"))?;
    let size = format!("{size_mib}m");
    let inodes = nr_inodes.to_string();
    let options = [
        ("source", "skiff-shared"),
        ("size", size.as_str()),
        ("nr_inodes", inodes.as_str()),
        ("mode", "0700"),
    ];
    for (key, value) in options {
        rustix::mount::fsconfig_set_string(&fs, key, value).map_err(err("fsconfig"))?;
    }
    rustix::mount::fsconfig_create(&fs).map_err(err("create"))?;
    let attrs = MountAttrFlags::MOUNT_ATTR_NOSUID | MountAttrFlags::MOUNT_ATTR_NODEV;
    let mnt = rustix::mount::fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, attrs)
        .map_err(err("fsmount"))?;
    let empty = MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH;
    rustix::mount::move_mount(&mnt, "", &target, "", empty).map_err(err("move_mount"))?;
    // Attached under a shared /run it joined /run's peer group: leave it
    // (private), then make it shared again, which gives it a peer group
    // of its own. Binds made in it later then propagate nowhere on the
    // host, and into the jail of the VM's virtio-fs thread, whose copy of
    // the share is a slave of this group (docs/seccomp.md). (A failure
    // here leaves the mount for the caller's teardown, which unmounts
    // everything below the state directory.)
    mount_setattr(mnt.as_fd(), 0, MS_PRIVATE, Depth::Tree).map_err(err("make private"))?;
    mount_setattr(mnt.as_fd(), 0, MS_SHARED, Depth::Tree).map_err(err("make shared"))?;
    Ok(HostDir::from_fd(mnt, path))
}

/// Makes the mount at `path` (a mount point the host just made, such as
/// a bundle's rootfs) and every mount below it `nosuid,nodev`.
pub fn harden_mount(path: &Path) -> Result<(), ShareError> {
    let err = |errno: Errno| ShareError::Harden {
        path: path.into(),
        err: errno.into(),
    };
    let fd = rustix::fs::open(
        path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(err)?;
    mount_setattr(
        fd.as_fd(),
        libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV,
        0,
        Depth::Tree,
    )
    .map_err(err)
}

/// Mount points at or below `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
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

#[cfg(test)]
mod tests;
