//! A confined thread that makes a forbidden syscall is stopped with a
//! report naming it, the launcher hands the report on, and the rest of the
//! process carries on; in `log` mode the call goes through. Each case runs
//! on a thread of its own (never on the test harness's), which is left
//! parked.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::mpsc::channel;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use skiff_confine::{
    join_unless_parked, with_common, Allowed, Check, Confinement, SeccompMode, Slot, ThreadPolicy,
};

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

/// Runs `body` on a new thread called `name`, confined to `allowed` (and
/// the common set) by `confinement`.
fn on_confined_thread(
    confinement: &Confinement,
    name: &str,
    allowed: Vec<Allowed>,
    body: impl FnOnce() -> i64 + Send + 'static,
) -> (Arc<Slot>, JoinHandle<i64>) {
    let slot = confinement.slot(name);
    let policy = ThreadPolicy {
        allowed: with_common(allowed),
        ..ThreadPolicy::default()
    };
    let (c, s) = (confinement.clone(), slot.clone());
    let thread = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let _end = s.end_guard();
            c.confine_current_thread(&s, &policy).unwrap();
            body()
        })
        .unwrap();
    (slot, thread)
}

#[test]
fn a_forbidden_call_stops_the_thread_and_is_reported() {
    let confinement = Confinement::start("test-launcher", SeccompMode::Enforce).unwrap();
    let (reports, reported) = channel();
    confinement.on_violation(move |r| {
        let _ = reports.send(r);
    });
    let (mut log_r, log_w) = pipe();
    let (slot, thread) = on_confined_thread(
        &confinement,
        "confined-1",
        vec![Allowed::always(libc::SYS_getppid, "getppid")],
        // SAFETY: plain syscalls.
        || unsafe {
            assert!(libc::getppid() > 0, "allowed call works");
            libc::uname(std::ptr::null_mut()) as i64
        },
    );
    slot.set_log_fd(log_w.as_raw_fd());
    let report = reported
        .recv_timeout(Duration::from_secs(10))
        .expect("the launcher reports the violation");
    assert_eq!(report.thread, "confined-1");
    assert_eq!(report.syscall, libc::SYS_uname);
    assert_eq!(skiff_confine::syscall_name(report.syscall), "uname");
    let started = Instant::now();
    assert!(join_unless_parked(thread, &slot).is_none());
    assert!(started.elapsed() < Duration::from_secs(1), "no join hangs");
    assert_eq!(confinement.violations(), vec![report]);
    // This thread (unconfined) still makes that call.
    // SAFETY: uname into a local struct.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::uname(&mut u) }, 0);
    drop(log_w);
    let mut line = String::new();
    // Set after the thread started, so the line may have gone to stderr;
    // if it came here, it is the one line.
    log_r.read_to_string(&mut line).unwrap();
    assert!(line.is_empty() || line.contains("thread confined-1 made forbidden syscall"));
    confinement.shutdown();
}

#[test]
fn the_handler_line_names_thread_and_call() {
    let (mut log_r, log_w) = pipe();
    let confinement = Confinement::start("test-launcher", SeccompMode::Enforce).unwrap();
    let slot = confinement.slot("confined-5");
    slot.set_log_fd(log_w.as_raw_fd());
    let (c, s) = (confinement.clone(), slot.clone());
    let _thread = std::thread::spawn(move || {
        let _end = s.end_guard();
        c.confine_current_thread(&s, &ThreadPolicy::default())
            .unwrap();
        // SAFETY: plain syscall.
        unsafe { libc::getppid() }
    });
    assert!(slot.wait_parked(Duration::from_secs(10)).is_some());
    drop(log_w);
    let mut line = String::new();
    log_r.read_to_string(&mut line).unwrap();
    assert_eq!(
        line,
        format!(
            "skiff: seccomp: thread confined-5 made forbidden syscall {}; thread stopped\n",
            libc::SYS_getppid
        )
    );
}

#[test]
fn argument_checks_allow_only_the_listed_values() {
    let confinement = Confinement::start("test-launcher", SeccompMode::Enforce).unwrap();
    let fd = std::fs::File::open("/dev/null").unwrap();
    let raw = fd.as_raw_fd();
    let (slot, _thread) = on_confined_thread(
        &confinement,
        "confined-2",
        vec![Allowed::when(
            libc::SYS_fcntl,
            "fcntl",
            vec![vec![Check::Eq(1, libc::F_GETFD as u32)]],
        )],
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
fn a_thread_that_ends_is_joined_and_its_slot_forgotten() {
    let confinement = Confinement::start("test-launcher", SeccompMode::Enforce).unwrap();
    let (slot, thread) = on_confined_thread(&confinement, "confined-6", vec![], || 7);
    assert_eq!(join_unless_parked(thread, &slot), Some(7));
    assert!(slot.has_ended());
    drop(slot);
    // The registry drops ended slots when the next one is made.
    let next = confinement.slot("next");
    assert_eq!(Arc::strong_count(&next), 2);
    confinement.shutdown();
}

#[test]
fn jobs_run_on_the_launcher() {
    let confinement = Confinement::start("test-launcher", SeccompMode::Enforce).unwrap();
    let name = confinement
        .run(|| std::thread::current().name().map(str::to_string))
        .unwrap();
    assert_eq!(name.as_deref(), Some("test-launcher"));
    confinement.shutdown();
    assert!(
        confinement.run(|| ()).is_err(),
        "a stopped launcher says so"
    );
}

#[test]
fn log_mode_lets_the_call_through() {
    let confinement = Confinement::start("test-launcher", SeccompMode::Log).unwrap();
    let (slot, thread) = on_confined_thread(
        &confinement,
        "confined-3",
        vec![],
        // SAFETY: plain syscall.
        || unsafe { libc::getppid() as i64 },
    );
    // SAFETY: plain syscall.
    assert_eq!(thread.join().unwrap(), unsafe { libc::getppid() } as i64);
    assert!(slot.report().is_none());
}

#[test]
fn off_installs_nothing() {
    let confinement = Confinement::start("test-launcher", SeccompMode::Off).unwrap();
    let (slot, thread) = on_confined_thread(
        &confinement,
        "confined-4",
        vec![],
        // SAFETY: plain syscall.
        || unsafe { libc::getppid() as i64 },
    );
    assert!(thread.join().unwrap() > 0);
    assert!(slot.report().is_none());
}

#[test]
fn glibc_overcommit_probe_fails_quietly_and_other_opens_trap() {
    let confinement = Confinement::start("test-launcher", SeccompMode::Enforce).unwrap();
    let (slot, thread) = on_confined_thread(&confinement, "confined-7", vec![], || {
        // SAFETY: openat with a valid path; closed if it opened.
        unsafe {
            let fd = libc::openat(
                libc::AT_FDCWD,
                c"/proc/sys/vm/overcommit_memory".as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC,
            );
            assert_eq!(fd, -1, "the probe must not open");
            assert_eq!(*libc::__errno_location(), libc::EACCES);
            libc::openat(libc::AT_FDCWD, c"/etc/passwd".as_ptr(), libc::O_RDWR) as i64
        }
    });
    let report = slot
        .wait_parked(Duration::from_secs(10))
        .expect("any other openat traps");
    assert_eq!(report.syscall, libc::SYS_openat);
    drop(thread);
}
