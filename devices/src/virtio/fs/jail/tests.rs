//! The jail holds when asked directly, bypassing the FUSE layer: host
//! paths, absolute symlinks and `..` from the fd directory all stay inside
//! the share, and mounts the host makes under a shared share still come
//! in. Needs root (skipped otherwise, saying so).

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::enter;

fn is_root() -> bool {
    // SAFETY: geteuid has no arguments.
    unsafe { libc::geteuid() == 0 }
}

struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let c = CString::new(self.0.join("share").as_os_str().as_bytes()).unwrap();
        // SAFETY: detach whatever the test mounted there.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn mount(src: &str, target: &Path, fstype: &str, flags: libc::c_ulong) {
    let (src, fstype) = (CString::new(src).unwrap(), CString::new(fstype).unwrap());
    let target = cpath(target);
    // SAFETY: mount with valid C strings.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            std::ptr::null(),
        )
    };
    assert_eq!(
        r,
        0,
        "mount {target:?}: {}",
        std::io::Error::last_os_error()
    );
}

fn errno_of(r: std::io::Result<impl Sized>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

#[test]
fn the_jailed_thread_sees_only_the_share() {
    if !is_root() {
        eprintln!("skipped: the virtio-fs jail needs root");
        return;
    }
    let dir = std::env::temp_dir().join(format!("skiff-jail-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("share")).unwrap();
    let scratch = Scratch(dir.clone());
    let share = dir.join("share");
    // A tmpfs in a peer group of its own, as the runtime makes the share.
    mount("skiff-test", &share, "tmpfs", 0);
    mount("none", &share, "", libc::MS_PRIVATE);
    mount("none", &share, "", libc::MS_SHARED);
    std::fs::write(share.join("inside"), b"in").unwrap();
    std::fs::write(dir.join("secret"), b"host").unwrap();
    std::os::unix::fs::symlink(dir.join("secret"), share.join("escape")).unwrap();
    std::fs::create_dir(share.join("later")).unwrap();

    let secret = dir.join("secret");
    let (to_jail, in_jail) = std::sync::mpsc::channel::<()>();
    let (to_host, on_host) = std::sync::mpsc::channel::<()>();
    let share_for_thread = share.clone();
    let jailed = std::thread::spawn(move || {
        let fds = enter(&share_for_thread).expect("enter the jail");
        assert_eq!(std::fs::read("/inside").unwrap(), b"in");
        // Host paths, directly and through an absolute symlink.
        assert_eq!(errno_of(std::fs::read(&secret)), Some(libc::ENOENT));
        assert_eq!(errno_of(std::fs::read("/escape")), Some(libc::ENOENT));
        assert_eq!(errno_of(std::fs::read("/etc/passwd")), Some(libc::ENOENT));
        assert_eq!(
            errno_of(std::fs::read("/proc/self/root/etc/passwd")),
            Some(libc::ENOENT)
        );
        assert_eq!(
            errno_of(std::fs::read("/../../etc/passwd")),
            Some(libc::ENOENT)
        );
        // `..` from the fd directory stays in it.
        let proc_fd = fds.proc_self_fd.as_raw_fd();
        let stat_at = |name: &std::ffi::CStr| {
            // SAFETY: fstatat into a local struct.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            let r = unsafe { libc::fstatat(proc_fd, name.as_ptr(), &mut st, libc::AT_EMPTY_PATH) };
            (r, st.st_dev, st.st_ino)
        };
        let (r0, dev, ino) = stat_at(c"");
        assert_eq!(r0, 0);
        let (r1, dev_up, ino_up) = stat_at(c"..");
        assert_eq!(
            (r1, dev_up, ino_up),
            (0, dev, ino),
            "`..` climbs out of the fd directory"
        );
        // SAFETY: openat of a relative path under the fd directory.
        let climbed = unsafe {
            libc::openat(
                proc_fd,
                c"../../1/root/etc/passwd".as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC,
            )
        };
        assert!(
            climbed < 0,
            "reached the host root through the fd directory"
        );
        // The fd directory still works as the passthrough uses it.
        let own = std::fs::File::open("/inside").unwrap();
        let name = CString::new(own.as_raw_fd().to_string()).unwrap();
        // SAFETY: reopen through the fd directory, as the passthrough does.
        let reopened =
            unsafe { libc::openat(proc_fd, name.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        assert!(reopened >= 0, "reopen through the fd directory");
        // SAFETY: our fd.
        unsafe { libc::close(reopened) };
        // A mount the host makes under the share after the jail comes in.
        to_host.send(()).unwrap();
        in_jail.recv().unwrap();
        assert_eq!(std::fs::read("/later/file").unwrap(), b"mounted later");
    });
    on_host.recv().unwrap();
    mount("skiff-later", &share.join("later"), "tmpfs", 0);
    std::fs::write(share.join("later/file"), b"mounted later").unwrap();
    to_jail.send(()).unwrap();
    let result = jailed.join();
    // SAFETY: unmount the test's inner mount.
    unsafe { libc::umount2(cpath(&share.join("later")).as_ptr(), libc::MNT_DETACH) };
    drop(scratch);
    result.expect("jailed checks");
    // This thread still sees the host.
    assert!(Path::new("/etc/passwd").exists());
}
