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
use std::time::Duration;

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
        // The end guard or the handler wakes this; the timeout covers a
        // thread that ended without reaching its end guard.
        slot.wait_not_running(Duration::from_millis(200));
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
