//! Confinement of the VMM's threads inside the shim process.
//!
//! The VMM runs in the containerd shim, as root, beside the shim's own
//! threads. Each VMM thread (vCPU, device worker, VMM loop) confines itself
//! right before its loop, once everything it needs is open:
//!
//! - [`mode`]: what the configuration asks for (`enforce`, `log`, `off`);
//! - [`filter`]: a seccomp filter built from a table of allowed syscalls,
//!   with argument conditions where they matter; [`common`]: what every
//!   thread's runtime needs;
//! - [`caps`]: the capabilities a thread keeps (capabilities are per
//!   thread, so the shim's other threads keep theirs);
//! - [`sigsys`]: what happens on a forbidden call in `enforce` mode. The
//!   call traps (SECCOMP_RET_TRAP), the handler records and reports it, and
//!   the thread is stopped (parked) rather than the process: the process is
//!   the shim, which must live to report the sandbox's end;
//! - [`launcher`]: the per-VM [`Confinement`], with the one unfiltered
//!   thread that starts workers and watches for violations.
//!
//! A filter confines only the thread that installs it and the threads it
//! creates afterwards; the shim's threads stay unfiltered. This guards
//! against a device model being talked into a syscall it never needs; it
//! is not a boundary against arbitrary code execution, which could write
//! the memory of unfiltered threads (see docs/seccomp.md).

pub mod caps;
pub mod common;
pub mod docs;
pub mod filter;
pub mod launcher;
pub mod mode;
mod names;
pub mod sigsys;

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use ::caps::Capability;
pub use common::with_common;
pub use filter::{Allowed, Check, FilterError};
pub use launcher::{ConfineError, Confinement, ThreadPolicy};
pub use mode::SeccompMode;
pub use names::syscall_name;
pub use sigsys::{Report, Slot};

/// Joins `thread`, whose slot is `slot`, unless it is parked after a
/// violation: a parked thread never ends, so it is left behind (with what
/// it holds) and `None` is returned at once. Waking is by the slot's futex
/// word, so a normal join costs no polling delay.
pub fn join_unless_parked<T>(thread: JoinHandle<T>, slot: &Slot) -> Option<T> {
    join(thread, slot, None)
}

/// [`join_unless_parked`], giving up after `timeout`: a thread that was
/// told to end and has not (stopped by a debugger or by ptrace from
/// outside, stuck in the kernel) is left behind to end with the process,
/// with a warning, so whoever ends it answers in bounded time. What the
/// thread holds stays alive with it.
pub fn join_within<T>(thread: JoinHandle<T>, slot: &Slot, timeout: Duration) -> Option<T> {
    join(thread, slot, Some(Instant::now() + timeout))
}

fn join<T>(thread: JoinHandle<T>, slot: &Slot, deadline: Option<Instant>) -> Option<T> {
    loop {
        if slot.is_parked() {
            tracing::warn!(
                thread = %slot.thread_name(),
                "thread parked after a seccomp violation is left behind"
            );
            return None;
        }
        if slot.has_ended() || thread.is_finished() {
            return thread.join().ok();
        }
        let mut wait = Duration::from_millis(200);
        if let Some(deadline) = deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(
                    thread = %slot.thread_name(),
                    "thread did not end when told to: left behind to end with the process"
                );
                return None;
            }
            wait = wait.min(left);
        }
        // The end guard or the handler wakes this; the timeout covers a
        // thread that ended without reaching its end guard.
        slot.wait_not_running(wait);
    }
}

/// Installs `policy` on the calling thread in `log` mode: what the filter
/// costs, without stopping anything else the caller does (benchmarks run
/// their timed loop under a device's filter this way).
pub fn install_for_measurement(policy: &ThreadPolicy) -> Result<(), ConfineError> {
    let confinement = Confinement::start("measure-launcher", SeccompMode::Log)?;
    let slot = confinement.slot("measured");
    confinement.confine_current_thread(&slot, policy)?;
    confinement.shutdown();
    // The thread never ends its confined section: keep its slot.
    std::mem::forget(slot);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_that_does_not_end_is_left_behind_after_the_bound() {
        let slot = Slot::new("stuck");
        let (release, stuck) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || stuck.recv().is_ok());
        let started = Instant::now();
        assert_eq!(join_within(thread, &slot, Duration::from_millis(50)), None);
        assert!(started.elapsed() >= Duration::from_millis(50));
        release.send(()).unwrap();

        let done = std::thread::spawn(|| 7);
        assert_eq!(
            join_within(done, &Slot::new("done"), Duration::from_secs(60)),
            Some(7)
        );
    }
}
