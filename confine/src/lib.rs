//! Confinement of the VMM's threads inside the shim process.
//!
//! The VMM runs in the containerd shim, as root, beside the shim's own
//! threads. Each VMM thread (vCPU, device worker, VMM loop) confines itself
//! right before its loop, once everything it needs is open:
//!
//! - [`mode`]: what the configuration asks for (`enforce`, `log`, `off`);
//! - [`filter`]: a seccomp filter built from a table of allowed syscalls,
//!   with argument conditions where they matter;
//! - [`sigsys`]: what happens on a forbidden call in `enforce` mode. The
//!   call traps (SECCOMP_RET_TRAP), the handler records and reports it, and
//!   the thread is stopped (parked) rather than the process: the process is
//!   the shim, which must live to report the sandbox's end.
//!
//! A filter confines only the thread that installs it and the threads it
//! creates afterwards; the shim's threads stay unfiltered. This guards
//! against a device model being talked into a syscall it never needs; it
//! is not a boundary against arbitrary code execution, which could write
//! the memory of unfiltered threads (see docs/seccomp.md).

pub mod filter;
pub mod mode;
pub mod sigsys;

pub use filter::{Allowed, FilterError};
pub use mode::SeccompMode;
pub use sigsys::{Report, Slot};

/// Confines the calling thread: blocks the signals it must not handle
/// (see [`sigsys::block_signals`]), arms `slot` for the SIGSYS handler and
/// installs the filter for `allowed` in `mode`. Off: nothing.
pub fn confine_current_thread(
    allowed: &[Allowed],
    mode: SeccompMode,
    slot: &'static Slot,
) -> Result<(), FilterError> {
    if mode == SeccompMode::Off {
        return Ok(());
    }
    let program = filter::build(allowed, mode)?;
    sigsys::install_handler().map_err(FilterError::Handler)?;
    sigsys::block_signals(&[]).map_err(FilterError::Handler)?;
    sigsys::arm(slot);
    seccompiler::apply_filter(&program).map_err(|e| FilterError::Install(e.to_string()))
}
