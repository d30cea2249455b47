//! A confined thread that makes a forbidden syscall is stopped with a
//! report naming it, while the rest of the process carries on; in `log`
//! mode the call goes through. Each case runs on a thread of its own
//! (never on the test harness's), which is left parked.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use skiff_confine::filter::Check;
use skiff_confine::{confine_current_thread, Allowed, SeccompMode, Slot};

fn pipe() -> (std::fs::File, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills both fds, owned here from now on.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: see above.
    unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            OwnedFd::from_raw_fd(fds[1]),
        )
    }
}

/// Runs `body` on a new thread confined to `allowed` in `mode`.
fn on_confined_thread(
    name: &str,
    allowed: Vec<Allowed>,
    mode: SeccompMode,
    slot: &'static Slot,
    body: impl FnOnce() -> i64 + Send + 'static,
) -> std::thread::JoinHandle<i64> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            confine_current_thread(&allowed, mode, slot).unwrap();
            body()
        })
        .unwrap()
}

#[test]
fn a_forbidden_call_stops_the_thread_with_a_report() {
    let (mut log_r, log_w) = pipe();
    let slot = Slot::leak("confined-1");
    slot.set_log_fd(log_w.as_raw_fd());
    // SAFETY: eventfd with flags only.
    let efd = unsafe { OwnedFd::from_raw_fd(libc::eventfd(0, libc::EFD_CLOEXEC)) };
    slot.set_notify_fd(efd.as_raw_fd());
    let _thread = on_confined_thread(
        "confined-1",
        vec![Allowed::always(libc::SYS_getpid, "getpid")],
        SeccompMode::Enforce,
        slot,
        // SAFETY: plain syscalls.
        || unsafe {
            assert!(libc::getpid() > 0, "allowed call works");
            libc::getppid() as i64
        },
    );
    let report = slot
        .wait_parked(Duration::from_secs(10))
        .expect("thread parked");
    assert_eq!(report.thread, "confined-1");
    assert_eq!(report.syscall, libc::SYS_getppid);
    let mut count = [0u8; 8];
    let mut efd_file = std::fs::File::from(efd);
    efd_file.read_exact(&mut count).unwrap();
    assert_eq!(u64::from_ne_bytes(count), 1, "the watcher was woken");
    drop(log_w);
    let mut line = String::new();
    // The parked thread still holds nothing of the pipe: EOF after the line.
    log_r.read_to_string(&mut line).unwrap();
    assert_eq!(
        line,
        format!(
            "skiff: seccomp: thread confined-1 made forbidden syscall {}; thread stopped\n",
            libc::SYS_getppid
        )
    );
    // This thread (unconfined) still makes that call.
    // SAFETY: plain syscall.
    assert!(unsafe { libc::getppid() } > 0);
}

#[test]
fn argument_checks_allow_only_the_listed_values() {
    let slot = Slot::leak("confined-2");
    slot.set_log_fd(-1);
    let fd = std::fs::File::open("/dev/null").unwrap();
    let raw = fd.as_raw_fd();
    let _thread = on_confined_thread(
        "confined-2",
        vec![Allowed::when(
            libc::SYS_fcntl,
            "fcntl",
            vec![vec![Check::Eq(1, libc::F_GETFD as u32)]],
        )],
        SeccompMode::Enforce,
        slot,
        // SAFETY: fcntl on an open fd.
        move || unsafe {
            assert!(libc::fcntl(raw, libc::F_GETFD) >= 0);
            libc::fcntl(raw, libc::F_GETFL) as i64
        },
    );
    let report = slot
        .wait_parked(Duration::from_secs(10))
        .expect("thread parked");
    assert_eq!(report.syscall, libc::SYS_fcntl);
    drop(fd);
}

#[test]
fn log_mode_lets_the_call_through() {
    let slot = Slot::leak("confined-3");
    let thread = on_confined_thread(
        "confined-3",
        vec![],
        SeccompMode::Log,
        slot,
        // SAFETY: plain syscall.
        || unsafe { libc::getppid() as i64 },
    );
    // SAFETY: plain syscall.
    assert_eq!(thread.join().unwrap(), unsafe { libc::getppid() } as i64);
    assert!(slot.report().is_none());
}

#[test]
fn off_installs_nothing() {
    let slot = Slot::leak("confined-4");
    let thread = on_confined_thread(
        "confined-4",
        vec![],
        SeccompMode::Off,
        slot,
        // SAFETY: plain syscall.
        || unsafe { libc::getppid() as i64 },
    );
    assert!(thread.join().unwrap() > 0);
    assert!(slot.report().is_none());
}
