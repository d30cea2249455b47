//! What each virtio worker thread may do once confined: its syscalls (on
//! top of `skiff_confine::common`), its capabilities and its signals.
//! docs/seccomp.md lists the same tables with the reason for each entry;
//! a test there keeps the two in step.
//!
//! Everything a worker opens (disk, tap, sockets, eventfds, epoll) is
//! opened before its loop, on the launcher, so no table allows opening
//! files or creating threads, but virtio-fs, whose job is files.

use skiff_confine::{with_common, Allowed, Capability, Check, ThreadPolicy};

/// Waiting in the worker's epoll; writes are in every filter (eventfds,
/// irqfds, log lines).
fn worker_loop() -> Vec<Allowed> {
    vec![
        Allowed::always(libc::SYS_epoll_wait, "epoll_wait"),
        Allowed::always(libc::SYS_epoll_pwait, "epoll_pwait"),
    ]
}

fn policy(own: Vec<Allowed>, keep_caps: Vec<Capability>) -> ThreadPolicy {
    let mut allowed = worker_loop();
    allowed.extend(own);
    ThreadPolicy {
        allowed: with_common(allowed),
        keep_caps,
        keep_signals: Vec::new(),
    }
}

/// `virtio-blk`: I/O on the disk fd it was given.
pub fn block() -> ThreadPolicy {
    // vmm-sys-util's fallocate with keep_size: PUNCH_HOLE|KEEP_SIZE for
    // discard, ZERO_RANGE|KEEP_SIZE for write-zeroes.
    let modes = vec![
        vec![Check::Eq(
            1,
            (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE) as u32,
        )],
        vec![Check::Eq(
            1,
            (libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE) as u32,
        )],
    ];
    policy(
        vec![
            Allowed::always(libc::SYS_preadv, "preadv"),
            Allowed::always(libc::SYS_pwritev, "pwritev"),
            // The O_DIRECT bounce path.
            Allowed::always(libc::SYS_pread64, "pread64"),
            Allowed::always(libc::SYS_pwrite64, "pwrite64"),
            Allowed::always(libc::SYS_fdatasync, "fdatasync"),
            Allowed::when(libc::SYS_fallocate, "fallocate", modes),
        ],
        Vec::new(),
    )
}

/// `virtio-net`: frames to and from the tap it was given.
pub fn net() -> ThreadPolicy {
    policy(
        vec![
            // The tap's watch comes and goes with rx buffers.
            Allowed::always(libc::SYS_epoll_ctl, "epoll_ctl"),
            Allowed::always(libc::SYS_readv, "readv"),
            Allowed::always(libc::SYS_writev, "writev"),
        ],
        Vec::new(),
    )
}

/// `skiff-vsock`: host Unix sockets, accepted or connected.
pub fn vsock() -> ThreadPolicy {
    let unix = || vec![vec![Check::Eq(0, libc::AF_UNIX as u32)]];
    policy(
        vec![
            Allowed::always(libc::SYS_epoll_ctl, "epoll_ctl"),
            Allowed::always(libc::SYS_accept4, "accept4"),
            // std's set_nonblocking on an accepted stream.
            Allowed::when(
                libc::SYS_ioctl,
                "ioctl",
                vec![vec![Check::Eq(1, libc::FIONBIO as u32)]],
            ),
            // Guest-initiated connections to host services.
            Allowed::when(libc::SYS_socket, "socket", unix()),
            Allowed::always(libc::SYS_connect, "connect"),
            Allowed::always(libc::SYS_shutdown, "shutdown"),
            // std reads and writes sockets with recv/send.
            Allowed::always(libc::SYS_recvfrom, "recvfrom"),
            Allowed::always(libc::SYS_sendto, "sendto"),
        ],
        Vec::new(),
    )
}

/// `virtio-fs`: the passthrough file system, inside its jail (see
/// `fs::jail`): every path it can name is under the share.
pub fn fs() -> ThreadPolicy {
    // setresuid/setresgid only as fuse-backend-rs's scoped credentials
    // call them: (-1, id, -1), the effective id alone.
    let euid_only = || vec![vec![Check::Eq(0, u32::MAX), Check::Eq(2, u32::MAX)]];
    policy(
        vec![
            Allowed::always(libc::SYS_openat, "openat"),
            Allowed::always(libc::SYS_newfstatat, "newfstatat"),
            Allowed::always(libc::SYS_fstat, "fstat"),
            Allowed::always(libc::SYS_statx, "statx"),
            Allowed::always(libc::SYS_getdents64, "getdents64"),
            Allowed::always(libc::SYS_lseek, "lseek"),
            Allowed::always(libc::SYS_readlinkat, "readlinkat"),
            Allowed::always(libc::SYS_mkdirat, "mkdirat"),
            Allowed::always(libc::SYS_mknodat, "mknodat"),
            Allowed::always(libc::SYS_symlinkat, "symlinkat"),
            Allowed::always(libc::SYS_linkat, "linkat"),
            Allowed::always(libc::SYS_unlinkat, "unlinkat"),
            Allowed::always(libc::SYS_renameat2, "renameat2"),
            Allowed::always(libc::SYS_fchownat, "fchownat"),
            Allowed::always(libc::SYS_fchmodat, "fchmodat"),
            Allowed::always(libc::SYS_fchmod, "fchmod"),
            Allowed::always(libc::SYS_fchown, "fchown"),
            Allowed::always(libc::SYS_ftruncate, "ftruncate"),
            Allowed::always(libc::SYS_utimensat, "utimensat"),
            Allowed::always(libc::SYS_fstatfs, "fstatfs"),
            Allowed::always(libc::SYS_fsync, "fsync"),
            Allowed::always(libc::SYS_fdatasync, "fdatasync"),
            // The guest picks the mode; the file is its own.
            Allowed::always(libc::SYS_fallocate, "fallocate"),
            Allowed::always(libc::SYS_pread64, "pread64"),
            Allowed::always(libc::SYS_pwrite64, "pwrite64"),
            Allowed::always(libc::SYS_preadv, "preadv"),
            Allowed::always(libc::SYS_pwritev, "pwritev"),
            // FLUSH closes a dup of the handle.
            Allowed::always(libc::SYS_dup, "dup"),
            Allowed::always(libc::SYS_fcntl, "fcntl"),
            // The passthrough clears its (thread's own) umask at FUSE_INIT.
            Allowed::always(libc::SYS_umask, "umask"),
            Allowed::when(libc::SYS_setresuid, "setresuid", euid_only()),
            Allowed::when(libc::SYS_setresgid, "setresgid", euid_only()),
        ],
        fs_capabilities(),
    )
}

/// What the passthrough needs to act as the guest's root on the share:
/// ownership and mode changes, bypassing permission checks, hard links by
/// fd (linkat AT_EMPTY_PATH needs DAC_READ_SEARCH), and switching its
/// effective ids. Not MKNOD (device nodes are refused anyway), SETFCAP or
/// SYS_ADMIN (no xattrs).
pub fn fs_capabilities() -> Vec<Capability> {
    vec![
        Capability::CAP_CHOWN,
        Capability::CAP_DAC_OVERRIDE,
        Capability::CAP_DAC_READ_SEARCH,
        Capability::CAP_FOWNER,
        Capability::CAP_FSETID,
        Capability::CAP_SETUID,
        Capability::CAP_SETGID,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::os::fd::AsRawFd;
    use std::sync::mpsc::{channel, Sender};
    use std::time::{Duration, Instant};

    use skiff_confine::{filter, Confinement, SeccompMode};
    use vmm_sys_util::epoll::EventSet;
    use vmm_sys_util::eventfd::EventFd;

    use crate::virtio::worker::{Poller, Worker, WorkerLoop};

    /// A worker with a device's policy that answers a ping on one eventfd
    /// and makes a syscall no device needs (uname) on the other.
    struct Misbehaving {
        ping: EventFd,
        bad: EventFd,
        policy: ThreadPolicy,
        pong: Sender<()>,
    }

    impl WorkerLoop for Misbehaving {
        fn policy(&self) -> ThreadPolicy {
            self.policy.clone()
        }
        fn register(&mut self, poller: &Poller) -> io::Result<()> {
            poller.add(self.ping.as_raw_fd(), 1, EventSet::IN)?;
            poller.add(self.bad.as_raw_fd(), 2, EventSet::IN)
        }
        fn handle(&mut self, _: &Poller, token: u64, _: EventSet) {
            if token == 1 {
                let _ = self.ping.read();
                let _ = self.pong.send(());
            } else {
                let _ = self.bad.read();
                // SAFETY: uname into a local struct.
                let mut u: libc::utsname = unsafe { std::mem::zeroed() };
                unsafe { libc::uname(&mut u) };
                let _ = self.pong.send(());
            }
        }
    }

    fn misbehaving(
        confinement: &Confinement,
        name: &str,
        policy: ThreadPolicy,
    ) -> (Worker, EventFd, EventFd, std::sync::mpsc::Receiver<()>) {
        let ping = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let bad = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let (pong, pongs) = channel();
        let work = Misbehaving {
            ping: ping.try_clone().unwrap(),
            bad: bad.try_clone().unwrap(),
            policy,
            pong,
        };
        let c = confinement.clone();
        let name = name.to_string();
        let worker = confinement
            .run(move || Worker::spawn(&name, work, &c))
            .unwrap()
            .unwrap();
        (worker, ping, bad, pongs)
    }

    /// For each device's worker: a forbidden call stops that worker with
    /// a report naming it and the call, its stop does not hang, and a
    /// worker of the same VM beside it carries on.
    #[test]
    fn a_worker_that_makes_a_forbidden_call_is_stopped_and_reported() {
        for (name, policy) in [
            ("virtio-blk", block()),
            ("virtio-net", net()),
            ("skiff-vsock", vsock()),
            ("virtio-fs", fs()),
        ] {
            let confinement = Confinement::start("test-launcher", SeccompMode::Enforce).unwrap();
            let (reports, reported) = channel();
            confinement.on_violation(move |r| {
                let _ = reports.send(r);
            });
            let (mut bad_worker, ping, bad, pongs) =
                misbehaving(&confinement, name, policy.clone());
            let (mut good_worker, good_ping, _, good_pongs) =
                misbehaving(&confinement, "bystander", policy);
            ping.write(1).unwrap();
            pongs
                .recv_timeout(Duration::from_secs(5))
                .unwrap_or_else(|_| panic!("{name}: the confined loop runs"));
            bad.write(1).unwrap();
            let report = reported
                .recv_timeout(Duration::from_secs(5))
                .unwrap_or_else(|_| panic!("{name}: no report"));
            assert_eq!(report.thread, name);
            assert_eq!(report.syscall, libc::SYS_uname);
            assert!(pongs.try_recv().is_err(), "{name}: the call never returned");
            let started = Instant::now();
            bad_worker.stop();
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "{name}: stop hung"
            );
            good_ping.write(1).unwrap();
            good_pongs
                .recv_timeout(Duration::from_secs(5))
                .unwrap_or_else(|_| panic!("{name}: the bystander stopped too"));
            good_worker.stop();
            assert!(
                reported.recv_timeout(Duration::from_millis(200)).is_err(),
                "{name}: a worker that only ends its loop is no violation"
            );
            confinement.shutdown();
        }
    }

    #[test]
    fn docs_seccomp_md_lists_exactly_these_tables() {
        use skiff_confine::docs::{allowed_by, documented_thread};
        const DOC: &str = include_str!("../../../docs/seccomp.md");
        for (table, p) in [
            ("blk", block()),
            ("net", net()),
            ("vsock", vsock()),
            ("fs", fs()),
        ] {
            let doc = documented_thread(DOC, table);
            assert_eq!(allowed_by(&p), doc, "docs/seccomp.md, table {table}");
        }
    }

    #[test]
    fn every_worker_filter_builds() {
        for (name, p) in [
            ("blk", block()),
            ("net", net()),
            ("vsock", vsock()),
            ("fs", fs()),
        ] {
            let program = filter::build(&p.allowed, SeccompMode::Enforce)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(
                program.len() < 4096,
                "{name}: {} instructions",
                program.len()
            );
        }
    }
}
