//! Paths below a guest-writable directory, resolved without trusting any
//! name the guest can write.
//!
//! The guest is root in its own kernel and owns every entry below the
//! share root: it can create, rename, delete and symlink any of them at
//! any moment, also between two system calls of ours. A path-based call
//! (`create_dir_all`, `open`, `mount`, `umount2`) resolves the whole path
//! again each time and follows symlinks, so the guest can steer it to any
//! host path. Here a path is walked one component at a time from a
//! [`HostDir`], a directory fd the host made that the guest cannot
//! replace (the share's own tmpfs root, or a state directory the guest
//! does not see). Each step is an `openat2` relative to the fd of the step
//! before with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV`:
//! a symlink, a `..` or a crossing into another mount anywhere on the way
//! is refused, whatever the guest did before or does meanwhile. Callers
//! get an fd and act on it (mount onto it, unmount through it), never on
//! the name again.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// Mode of the directories and files the runtime makes below a state
/// directory: only root on the host reaches them.
pub(crate) const PRIVATE_DIR_MODE: u32 = 0o700;
const PRIVATE_FILE_MODE: u32 = 0o600;

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("{path} is a symlink planted in the guest-writable share; refusing to follow it")]
    Symlink { path: PathBuf },
    #[error("{path} is {found}, expected {wanted}")]
    WrongType {
        path: PathBuf,
        found: &'static str,
        wanted: &'static str,
    },
    #[error("{path} is on another mount than the share; refusing to cross into it")]
    OtherMount { path: PathBuf },
    #[error("{path} is not a plain relative path (no `..`, no leading `/`)")]
    NotRelative { path: PathBuf },
    #[error("{op} {path}: {err}")]
    Io {
        op: &'static str,
        path: PathBuf,
        err: std::io::Error,
    },
}

/// A directory the host made and the guest cannot replace, by fd, with
/// the path it had when it was opened (for mountinfo and messages).
#[derive(Debug)]
pub struct HostDir {
    fd: OwnedFd,
    path: PathBuf,
}

impl HostDir {
    /// Opens `path`, a directory only the host writes (its symlinks, if
    /// any, are the host's and are followed).
    pub fn open(path: &Path) -> Result<Self, ResolveError> {
        let io = |op| {
            move |err| ResolveError::Io {
                op,
                path: path.into(),
                err,
            }
        };
        let path = std::fs::canonicalize(path).map_err(io("resolve"))?;
        let fd = rustix::fs::open(
            &path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io("open")(e.into()))?;
        Ok(Self { fd, path })
    }

    /// `fd` is a directory at `path` (the root of a mount just made).
    pub(crate) fn from_fd(fd: OwnedFd, path: PathBuf) -> Self {
        Self { fd, path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

const BENEATH_ONE_MOUNT: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::NO_XDEV);

/// `rel`'s components, each a plain name: `.` is dropped, anything that
/// could leave the directory (`..`, a root) is refused.
pub(crate) fn components(rel: &Path) -> Result<Vec<&OsStr>, ResolveError> {
    let mut names = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(name) => names.push(name),
            Component::CurDir => {}
            _ => return Err(ResolveError::NotRelative { path: rel.into() }),
        }
    }
    Ok(names)
}

/// What the entry `name` in `dir` is, for a message; never follows it.
pub(crate) fn kind_at(dir: BorrowedFd<'_>, name: &OsStr) -> &'static str {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => kind_of(FileType::from_raw_mode(st.st_mode)),
        Err(_) => "gone",
    }
}

pub(crate) fn kind_of(t: FileType) -> &'static str {
    match t {
        FileType::RegularFile => "a regular file",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symlink",
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::CharacterDevice | FileType::BlockDevice => "a device node",
        FileType::Unknown => "of an unknown type",
    }
}

/// Opens the single entry `name` of `dir` with `flags`, refusing a
/// symlink and another mount. `shown` names it in errors.
pub(crate) fn open_entry(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    flags: OFlags,
    shown: &Path,
) -> Result<OwnedFd, ResolveError> {
    let flags = flags | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    rustix::fs::openat2(dir, name, flags, Mode::empty(), BENEATH_ONE_MOUNT)
        .map_err(|errno| entry_error(dir, name, errno, flags, shown))
}

pub(crate) fn entry_error(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    errno: Errno,
    flags: OFlags,
    shown: &Path,
) -> ResolveError {
    let path = shown.to_path_buf();
    // O_NOFOLLOW with O_PATH resolves a final symlink to itself, which
    // O_DIRECTORY then refuses as "not a directory": name it for what it is.
    let found = kind_at(dir, name);
    match errno {
        Errno::LOOP | Errno::NOTDIR if found == "a symlink" => ResolveError::Symlink { path },
        Errno::LOOP => ResolveError::Symlink { path },
        Errno::XDEV => ResolveError::OtherMount { path },
        Errno::NOTDIR if flags.contains(OFlags::DIRECTORY) => ResolveError::WrongType {
            found,
            wanted: "a directory",
            path,
        },
        errno => ResolveError::Io {
            op: "open",
            path,
            err: errno.into(),
        },
    }
}

/// Opens the existing directory `rel` below `root` (`O_PATH`): the root
/// itself when `rel` is empty.
pub fn open_dir(root: &HostDir, rel: &Path) -> Result<OwnedFd, ResolveError> {
    let mut dir = clone_fd(root)?;
    let mut shown = root.path.clone();
    for name in components(rel)? {
        shown.push(name);
        dir = open_entry(dir.as_fd(), name, OFlags::PATH | OFlags::DIRECTORY, &shown)?;
    }
    Ok(dir)
}

fn clone_fd(root: &HostDir) -> Result<OwnedFd, ResolveError> {
    root.fd.try_clone().map_err(|err| ResolveError::Io {
        op: "duplicate the fd of",
        path: root.path.clone(),
        err,
    })
}

/// Makes the directory `rel` below `root` and its missing parents (mode
/// 0700), and opens it (`O_PATH`). An existing component must be a real
/// directory on the same mount.
pub fn make_dir(root: &HostDir, rel: &Path) -> Result<OwnedFd, ResolveError> {
    let mut dir = clone_fd(root)?;
    let mut shown = root.path.clone();
    for name in components(rel)? {
        shown.push(name);
        match rustix::fs::mkdirat(dir.as_fd(), name, Mode::from_raw_mode(PRIVATE_DIR_MODE)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(errno) => {
                return Err(ResolveError::Io {
                    op: "create directory",
                    path: shown,
                    err: errno.into(),
                })
            }
        }
        dir = open_entry(dir.as_fd(), name, OFlags::PATH | OFlags::DIRECTORY, &shown)?;
    }
    Ok(dir)
}

/// Makes the regular file `rel` below `root` (mode 0600, parents as with
/// [`make_dir`]) or opens it if it already is one (`O_PATH`). Never opens
/// a symlink, FIFO or device the guest put there.
pub fn make_file(root: &HostDir, rel: &Path) -> Result<OwnedFd, ResolveError> {
    let names = components(rel)?;
    let Some((name, parents)) = names.split_last() else {
        return Err(ResolveError::NotRelative { path: rel.into() });
    };
    let parent: PathBuf = parents.iter().collect();
    let dir = make_dir(root, &parent)?;
    let shown = root.path.join(rel);
    // O_EXCL never follows a final symlink: it fails with EEXIST instead.
    let create = OFlags::CREATE | OFlags::EXCL | OFlags::RDONLY | OFlags::CLOEXEC;
    let mode = Mode::from_raw_mode(PRIVATE_FILE_MODE);
    match rustix::fs::openat2(dir.as_fd(), *name, create, mode, BENEATH_ONE_MOUNT) {
        Ok(fd) => return Ok(fd),
        Err(Errno::EXIST) => {}
        Err(errno) => return Err(entry_error(dir.as_fd(), name, errno, create, &shown)),
    }
    // O_PATH with O_NOFOLLOW opens a symlink itself rather than failing:
    // the type check below names it.
    let fd = open_entry(dir.as_fd(), name, OFlags::PATH, &shown)?;
    let st = rustix::fs::fstat(&fd).map_err(|errno| ResolveError::Io {
        op: "stat",
        path: shown.clone(),
        err: errno.into(),
    })?;
    match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => Ok(fd),
        FileType::Symlink => Err(ResolveError::Symlink { path: shown }),
        other => Err(ResolveError::WrongType {
            path: shown,
            found: kind_of(other),
            wanted: "a regular file",
        }),
    }
}
