//! The virtio-fs thread's jail: a mount namespace of its own whose root is
//! the share, so that no path the passthrough resolves, whatever a guest
//! or a bug makes of it, names anything outside the share.
//!
//! Mount namespaces and the root directory are per thread once the fs
//! context is unshared, so the jail costs no process: on the worker thread,
//! as root,
//!
//! 1. `unshare(CLONE_FS | CLONE_NEWNS)`: a copy of the host's mounts, for
//!    this thread only;
//! 2. every mount made a slave: nothing done here reaches the host, and
//!    what the host mounts under the share later (container rootfs binds,
//!    made by the runtime once the share is `MS_SHARED`) still arrives;
//! 3. `/proc/thread-self/mountinfo` opened, and the process's fd directory
//!    bound over `/proc` and opened: the passthrough reopens its O_PATH
//!    fds through it. Once the old root is detached that bind is a mount
//!    of its own, so `..` from it goes nowhere (an fd on the host's
//!    `/proc/<pid>/fd` would climb to `/proc/1/root`);
//! 4. the share bound onto itself (pivot_root wants a mount point), made
//!    the root with `pivot_root(".", ".")`, and the old root detached.
//!
//! virtiofsd does the same for its whole process; this is the per-thread
//! form of it.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// What the jailed passthrough needs from outside its root.
#[derive(Debug)]
pub struct JailFds {
    /// The process's fd directory (what `/proc/self/fd` is), detached.
    pub proc_self_fd: File,
    /// This thread's mount table.
    pub mount_info: File,
}

fn cstr(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path with a NUL byte"))
}

fn step(what: &str, r: libc::c_int) -> io::Result<()> {
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    Err(io::Error::new(
        e.kind(),
        format!("virtio-fs jail: {what}: {e}"),
    ))
}

fn open(path: &CString, flags: libc::c_int, what: &str) -> io::Result<File> {
    // SAFETY: open with a valid C string; the fd is owned by the File.
    let fd = unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        step(what, -1)?;
    }
    // SAFETY: a fresh fd owned from here on.
    Ok(unsafe { File::from_raw_fd(fd) })
}

fn mount(
    src: Option<&CString>,
    target: &CString,
    flags: libc::c_ulong,
    what: &str,
) -> io::Result<()> {
    // SAFETY: mount with valid C strings or nulls.
    let r = unsafe {
        libc::mount(
            src.map_or(std::ptr::null(), |s| s.as_ptr()),
            target.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    };
    step(what, r)
}

/// Puts the calling thread in the jail rooted at `share` (a directory);
/// see the module doc. On error the thread may be half-way: end it.
pub fn enter(share: &Path) -> io::Result<JailFds> {
    let share = cstr(share)?;
    let root = c"/".to_owned();
    // SAFETY: unshare of this thread's fs context and mount namespace.
    step("unshare(CLONE_NEWNS)", unsafe {
        libc::unshare(libc::CLONE_FS | libc::CLONE_NEWNS)
    })?;
    mount(None, &root, libc::MS_SLAVE | libc::MS_REC, "make / a slave")?;
    let mount_info = open(
        &c"/proc/thread-self/mountinfo".to_owned(),
        libc::O_RDONLY,
        "open /proc/thread-self/mountinfo",
    )?;
    let proc = c"/proc".to_owned();
    mount(
        Some(&c"/proc/self/fd".to_owned()),
        &proc,
        libc::MS_BIND,
        "bind /proc/self/fd over /proc",
    )?;
    let proc_self_fd = open(
        &proc,
        libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        "open the fd directory",
    )?;
    mount(
        Some(&share),
        &share,
        libc::MS_BIND | libc::MS_REC,
        "bind the share onto itself",
    )?;
    let new_root = open(&share, libc::O_PATH | libc::O_DIRECTORY, "open the share")?;
    let old_root = open(&root, libc::O_PATH | libc::O_DIRECTORY, "open /")?;
    // SAFETY: fchdir/pivot_root/umount2 on this thread's fs context; both
    // fds are open directories.
    unsafe {
        step("chdir to the share", libc::fchdir(new_root.as_raw_fd()))?;
        let dot = c".".as_ptr();
        step(
            "pivot_root",
            libc::syscall(libc::SYS_pivot_root, dot, dot) as libc::c_int,
        )?;
        step("chdir to the old root", libc::fchdir(old_root.as_raw_fd()))?;
        mount(
            None,
            &c".".to_owned(),
            libc::MS_SLAVE | libc::MS_REC,
            "make the old root a slave",
        )?;
        step("detach the old root", libc::umount2(dot, libc::MNT_DETACH))?;
        step("chdir to the new root", libc::chdir(c"/".as_ptr()))?;
    }
    Ok(JailFds {
        proc_self_fd,
        mount_info,
    })
}

#[cfg(test)]
mod tests;
