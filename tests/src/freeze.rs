//! Freezing a running VM from outside, for the tests of a guest that
//! answers nothing: every vCPU thread of a process is stopped with ptrace
//! (`PTRACE_SEIZE` + `PTRACE_INTERRUPT`), so the guest stops exactly as a
//! paused or wedged VM does while the rest of the process (the shim, the
//! VMM thread, the device workers) runs on. Nothing about the VM is faked.
//!
//! ptrace ties a tracee to the tracing *thread*: freeze and drop on the
//! same thread.

use std::time::{Duration, Instant};

/// The vCPU threads' name prefix (`vmm/src/vstate/vcpu.rs`).
const VCPU_THREAD: &str = "skiff-vcpu";

/// The frozen vCPU threads of one process; dropping it lets them go (or
/// reaps them, if their process has ended meanwhile).
pub struct FrozenVcpus {
    tids: Vec<i32>,
}

fn vcpu_threads(pid: u32) -> Vec<i32> {
    let tasks = format!("/proc/{pid}/task");
    std::fs::read_dir(&tasks)
        .unwrap_or_else(|e| panic!("{tasks}: {e}"))
        .flatten()
        .filter_map(|t| {
            let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
            let tid = t.file_name().to_str()?.parse().ok()?;
            comm.starts_with(VCPU_THREAD).then_some(tid)
        })
        .collect()
}

impl FrozenVcpus {
    /// Stops every vCPU thread of process `pid` and waits until each is
    /// stopped. Panics if the process has none.
    pub fn freeze(pid: u32) -> Self {
        let tids = vcpu_threads(pid);
        assert!(
            !tids.is_empty(),
            "process {pid} has no {VCPU_THREAD}* thread"
        );
        let frozen = Self { tids };
        for &tid in &frozen.tids {
            // SAFETY: plain ptrace requests on a thread id; no memory is
            // passed.
            let seized = unsafe { libc::ptrace(libc::PTRACE_SEIZE, tid, 0, 0) };
            assert_eq!(
                seized,
                0,
                "PTRACE_SEIZE {tid}: {}",
                std::io::Error::last_os_error()
            );
            // SAFETY: as above.
            let interrupted = unsafe { libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0) };
            assert_eq!(
                interrupted,
                0,
                "PTRACE_INTERRUPT {tid}: {}",
                std::io::Error::last_os_error()
            );
            let mut status = 0;
            // SAFETY: waitpid writes one int to `status`.
            let waited = unsafe { libc::waitpid(tid, &mut status, libc::__WALL) };
            assert_eq!(
                waited,
                tid,
                "waitpid {tid}: {}",
                std::io::Error::last_os_error()
            );
            assert!(libc::WIFSTOPPED(status), "thread {tid}: status {status:#x}");
        }
        frozen
    }
}

impl Drop for FrozenVcpus {
    fn drop(&mut self) {
        for &tid in &self.tids {
            // SAFETY: as in `freeze`. A thread that has ended (its process
            // exited) fails with ESRCH, and is reaped below.
            unsafe { libc::ptrace(libc::PTRACE_DETACH, tid, 0, 0) };
        }
        // A traced thread that ended waits for its tracer: reap what ended.
        let deadline = Instant::now() + Duration::from_secs(5);
        for &tid in &self.tids {
            loop {
                let mut status = 0;
                // SAFETY: waitpid writes one int to `status`.
                let r = unsafe { libc::waitpid(tid, &mut status, libc::__WALL | libc::WNOHANG) };
                if r != 0 || Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}
