//! Teardown of what the runtime made below a guest-writable directory:
//! its mounts unmounted and its files deleted, without the guest steering
//! either onto host data.
//!
//! The guest can rename, replace and symlink entries while this runs.
//! Unmounting by path (`umount2(path)`) follows whatever the guest put in
//! the path, so a component swapped for a symlink detaches a host mount
//! elsewhere; here each mount point is resolved to an fd first (no
//! symlinks, no `..`, see [`super::resolve`]) and unmounted through
//! `/proc/self/fd/N`, which names exactly the mount that fd is on.
//! Deleting by path (`remove_dir_all`) descends into whatever directory
//! is at a name when it gets there, including one holding another
//! container's read-write bind that the guest renamed into place after
//! the unmount; the walker here descends only through fds opened with
//! `RESOLVE_NO_XDEV | RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH`, so it never
//! leaves the filesystem it started on and never follows a link: a mount
//! point it meets is skipped (and reported), a symlink is unlinked as an
//! entry. The guest can make a tree as deep and as wide as its share
//! allows, so the walk uses an explicit stack, holds at most
//! [`Limits::max_depth`] directory fds and stops after
//! [`Limits::max_entries`] entries, logging either.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Dir, FileType, OFlags};
use rustix::io::Errno;
use rustix::mount::UnmountFlags;

use super::resolve::{self, HostDir, ResolveError};

/// How far [`remove_tree`] goes before it gives up on what is left.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Directory levels below the top (each holds one open fd).
    pub max_depth: usize,
    /// Entries looked at in all.
    pub max_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_depth: 256,
            max_entries: 1 << 20,
        }
    }
}

/// Rounds of mountinfo scans [`unmount_tree`] makes before it gives up
/// (each round that unmounts nothing ends it earlier).
const MAX_UNMOUNT_ROUNDS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error("read /proc/self/mountinfo: {0}")]
    MountInfo(std::io::Error),
    #[error("unmount {path}: {err}")]
    Unmount { path: PathBuf, err: std::io::Error },
    #[error("could not unmount {left}: {why}")]
    Stuck { left: String, why: String },
    #[error("open {path} to remove it: {err}")]
    OpenTop { path: PathBuf, err: std::io::Error },
}

/// Detaches every mount at or below `root/rel`, deepest first, each
/// through an fd resolved from `root` without following symlinks. A mount
/// the guest moved out of `rel` meanwhile is left (for the teardown of
/// the whole share); one whose path the guest made unresolvable is an
/// error once nothing else can be unmounted.
pub fn unmount_tree(root: &HostDir, rel: &Path) -> Result<(), RemoveError> {
    resolve::components(rel)?;
    let top = root.path().join(rel);
    for _ in 0..MAX_UNMOUNT_ROUNDS {
        let points = super::mounts_under(&top).map_err(RemoveError::MountInfo)?;
        if points.is_empty() {
            return Ok(());
        }
        let mut unmounted = false;
        let mut last_error = None;
        for point in &points {
            let Ok(below) = point.strip_prefix(root.path()) else {
                continue;
            };
            match unmount_at(root, below) {
                Ok(true) => unmounted = true,
                Ok(false) => {}
                Err(e) => last_error = Some(e.to_string()),
            }
        }
        if !unmounted {
            return Err(RemoveError::Stuck {
                left: show(&points),
                why: last_error.unwrap_or_else(|| "the paths no longer name them".into()),
            });
        }
    }
    Err(RemoveError::Stuck {
        left: show(&super::mounts_under(&top).map_err(RemoveError::MountInfo)?),
        why: format!("still mounted after {MAX_UNMOUNT_ROUNDS} rounds"),
    })
}

fn show(paths: &[PathBuf]) -> String {
    let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    shown.join(", ")
}

/// Detaches the mount whose root is at `root/rel`, resolved without
/// following symlinks (and `..`). `Ok(false)`: nothing is mounted there
/// (any more).
pub fn unmount_at(root: &HostDir, rel: &Path) -> Result<bool, RemoveError> {
    let names = resolve::components(rel)?;
    let Some((name, parents)) = names.split_last() else {
        return Err(ResolveError::NotRelative { path: rel.into() }.into());
    };
    let parent: PathBuf = parents.iter().collect();
    let shown = root.path().join(rel);
    let dir = match open_dir_crossing_mounts(root, &parent) {
        Ok(dir) => dir,
        Err(ResolveError::Io { err, .. }) if err.kind() == std::io::ErrorKind::NotFound => {
            return Ok(false)
        }
        Err(e) => return Err(e.into()),
    };
    // Crossing into the mount is the point here: no RESOLVE_NO_XDEV.
    let resolve_flags = rustix::fs::ResolveFlags::BENEATH
        | rustix::fs::ResolveFlags::NO_SYMLINKS
        | rustix::fs::ResolveFlags::NO_MAGICLINKS;
    let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = match rustix::fs::openat2(&dir, *name, flags, rustix::fs::Mode::empty(), resolve_flags)
    {
        Ok(fd) => fd,
        Err(Errno::NOENT) | Err(Errno::AGAIN) => return Ok(false),
        Err(Errno::LOOP) => return Err(ResolveError::Symlink { path: shown }.into()),
        Err(errno) => {
            return Err(RemoveError::Unmount {
                path: shown,
                err: errno.into(),
            })
        }
    };
    let st = rustix::fs::fstat(&fd).map_err(|errno| RemoveError::Unmount {
        path: shown.clone(),
        err: errno.into(),
    })?;
    if FileType::from_raw_mode(st.st_mode) == FileType::Symlink {
        return Err(ResolveError::Symlink { path: shown }.into());
    }
    // The magic link names the fd's own mount and dentry: umount2 acts
    // on exactly what was resolved above, whatever the name is by now.
    let by_fd = format!("/proc/self/fd/{}", fd.as_raw_fd());
    match rustix::mount::unmount(by_fd.as_str(), UnmountFlags::DETACH) {
        Ok(()) => Ok(true),
        // Not the root of a mount: the guest moved things meanwhile.
        Err(Errno::INVAL) => Ok(false),
        Err(errno) => Err(RemoveError::Unmount {
            path: shown,
            err: errno.into(),
        }),
    }
}

/// [`resolve::open_dir`] without the one-mount rule: a mount point below
/// another one (a spec's bind with submounts) is reached through it.
fn open_dir_crossing_mounts(root: &HostDir, rel: &Path) -> Result<OwnedFd, ResolveError> {
    let mut dir = root
        .fd()
        .try_clone_to_owned()
        .map_err(|err| ResolveError::Io {
            op: "duplicate the fd of",
            path: root.path().into(),
            err,
        })?;
    let mut shown = root.path().to_path_buf();
    let resolve_flags = rustix::fs::ResolveFlags::BENEATH
        | rustix::fs::ResolveFlags::NO_SYMLINKS
        | rustix::fs::ResolveFlags::NO_MAGICLINKS;
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    for name in resolve::components(rel)? {
        shown.push(name);
        dir = rustix::fs::openat2(&dir, name, flags, rustix::fs::Mode::empty(), resolve_flags)
            .map_err(|errno| resolve::entry_error(dir.as_fd(), name, errno, flags, &shown))?;
    }
    Ok(dir)
}

/// What [`remove_tree`] did and what it left.
#[derive(Debug, Default)]
pub struct Removal {
    /// Entries unlinked (directories included).
    pub removed: usize,
    /// Mount points met and left alone (with what is below them).
    pub skipped_mounts: Vec<PathBuf>,
    /// Entries that could not be removed, with why.
    pub failed: Vec<(PathBuf, String)>,
    /// The depth or entry limit was hit: part of the tree is left.
    pub limit_hit: bool,
    /// The top directory is gone (or was never there).
    pub complete: bool,
}

struct Frame {
    dir: Dir,
    /// The directory's name in the frame below (unused for the top).
    name: OsString,
    path: PathBuf,
}

/// Removes the directory `root/rel` and everything in it that is on the
/// same mount, never following a symlink and never entering another
/// mount (which is left and reported). A `rel` that is not a directory
/// (a symlink the guest planted in its place, a file) is unlinked.
pub fn remove_tree(root: &HostDir, rel: &Path) -> Result<Removal, RemoveError> {
    remove_tree_with(root, rel, Limits::default())
}

pub fn remove_tree_with(
    root: &HostDir,
    rel: &Path,
    limits: Limits,
) -> Result<Removal, RemoveError> {
    let names = resolve::components(rel)?;
    let Some((top_name, parents)) = names.split_last() else {
        return Err(ResolveError::NotRelative { path: rel.into() }.into());
    };
    let top_path = root.path().join(rel);
    let mut report = Removal::default();
    let parent = match resolve::open_dir(root, &parents.iter().collect::<PathBuf>()) {
        Ok(fd) => fd,
        Err(ResolveError::Io { err, .. }) if err.kind() == std::io::ErrorKind::NotFound => {
            report.complete = true;
            return Ok(report);
        }
        Err(e) => return Err(e.into()),
    };
    let top = match resolve::open_entry(
        parent.as_fd(),
        top_name,
        OFlags::RDONLY | OFlags::DIRECTORY,
        &top_path,
    ) {
        Ok(fd) => fd,
        Err(ResolveError::Io { err, .. }) if err.kind() == std::io::ErrorKind::NotFound => {
            report.complete = true;
            return Ok(report);
        }
        Err(ResolveError::Symlink { .. }) | Err(ResolveError::WrongType { .. }) => {
            unlink(parent.as_fd(), top_name, &top_path, &mut report);
            report.complete = !exists(parent.as_fd(), top_name);
            return Ok(report);
        }
        Err(ResolveError::OtherMount { .. }) => {
            skip_mount(top_path, &mut report);
            return Ok(report);
        }
        Err(e) => {
            return Err(RemoveError::OpenTop {
                path: top_path,
                err: std::io::Error::other(e.to_string()),
            })
        }
    };
    let dir = Dir::new(top).map_err(|errno| RemoveError::OpenTop {
        path: top_path.clone(),
        err: errno.into(),
    })?;
    let mut stack = vec![Frame {
        dir,
        name: top_name.to_os_string(),
        path: top_path.clone(),
    }];
    let mut entries = 0usize;
    'walk: loop {
        let depth = stack.len();
        let Some(frame) = stack.last_mut() else {
            break;
        };
        let entry = match frame.dir.read() {
            Some(Ok(entry)) => entry,
            Some(Err(errno)) => {
                let path = frame.path.clone();
                report
                    .failed
                    .push((path, format!("read directory: {errno}")));
                // A directory that cannot be read is left with what is in it.
                stack.pop();
                continue;
            }
            None => {
                let done = stack.pop().expect("the loop saw a frame");
                let parent_fd = match stack.last() {
                    Some(f) => f.dir.fd().expect("a Dir has an fd"),
                    None => parent.as_fd(),
                };
                rmdir(parent_fd, &done.name, &done.path, &mut report);
                continue;
            }
        };
        let name = OsStr::from_bytes(entry.file_name().to_bytes()).to_os_string();
        if name == "." || name == ".." {
            continue;
        }
        entries += 1;
        if entries > limits.max_entries {
            tracing::warn!(
                "removing {}: stopped after {} entries; the rest is left",
                top_path.display(),
                limits.max_entries
            );
            report.limit_hit = true;
            break 'walk;
        }
        let dir_fd = frame.dir.fd().expect("a Dir has an fd");
        let path = frame.path.join(&name);
        let file_type = match entry.file_type() {
            FileType::Unknown => match rustix::fs::statat(dir_fd, &name, AtFlags::SYMLINK_NOFOLLOW)
            {
                Ok(st) => FileType::from_raw_mode(st.st_mode),
                Err(_) => continue,
            },
            t => t,
        };
        if file_type != FileType::Directory {
            unlink(dir_fd, &name, &path, &mut report);
            continue;
        }
        if depth > limits.max_depth {
            tracing::warn!(
                "removing {}: {} is more than {} levels deep; left",
                top_path.display(),
                path.display(),
                limits.max_depth
            );
            report.limit_hit = true;
            continue;
        }
        match resolve::open_entry(dir_fd, &name, OFlags::RDONLY | OFlags::DIRECTORY, &path) {
            Ok(fd) => match Dir::new(fd) {
                Ok(dir) => stack.push(Frame { dir, name, path }),
                Err(errno) => report
                    .failed
                    .push((path, format!("read directory: {errno}"))),
            },
            Err(ResolveError::OtherMount { .. }) => skip_mount(path, &mut report),
            // Swapped for a symlink or a file since it was listed.
            Err(ResolveError::Symlink { .. }) | Err(ResolveError::WrongType { .. }) => {
                unlink(dir_fd, &name, &path, &mut report)
            }
            Err(ResolveError::Io { err, .. }) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => report.failed.push((path, e.to_string())),
        }
    }
    report.complete = !exists(parent.as_fd(), top_name);
    if !report.complete {
        tracing::warn!(
            "removing {}: left in place ({} mount points skipped, {} entries failed{})",
            top_path.display(),
            report.skipped_mounts.len(),
            report.failed.len(),
            if report.limit_hit { ", limit hit" } else { "" }
        );
    }
    Ok(report)
}

fn skip_mount(path: PathBuf, report: &mut Removal) {
    tracing::warn!(
        "not removing mount point {} (or what is below it)",
        path.display()
    );
    report.skipped_mounts.push(path);
}

fn exists(dir: BorrowedFd<'_>, name: &OsStr) -> bool {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).is_ok()
}

fn unlink(dir: BorrowedFd<'_>, name: &OsStr, path: &Path, report: &mut Removal) {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) => report.removed += 1,
        Err(Errno::NOENT) => {}
        // A file some mount is on (a spec's bind of a single file).
        Err(Errno::BUSY) => skip_mount(path.into(), report),
        Err(errno) => report
            .failed
            .push((path.into(), format!("unlink: {errno}"))),
    }
}

fn rmdir(dir: BorrowedFd<'_>, name: &OsStr, path: &Path, report: &mut Removal) {
    match rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
        Ok(()) => report.removed += 1,
        Err(Errno::NOENT) => {}
        Err(Errno::BUSY) => skip_mount(path.into(), report),
        // Something in it was left (and reported) or the guest added
        // an entry meanwhile.
        Err(Errno::NOTEMPTY) => {}
        Err(errno) => report.failed.push((path.into(), format!("rmdir: {errno}"))),
    }
}
