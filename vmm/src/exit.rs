//! Why a VM stopped.

use std::fmt;

/// The reason a VM is no longer running.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest shut itself down or restarted (i8042 reset, KVM system
    /// event). A microVM treats a restart as the end of its life.
    GuestShutdown,
    /// The guest kernel panicked; the text after "not syncing:".
    KernelPanic(String),
    /// The guest triple-faulted (KVM_EXIT_SHUTDOWN).
    TripleFault { vcpu: u8, regs: String },
    /// KVM could not emulate or continue the guest (KVM_EXIT_INTERNAL_ERROR).
    KvmInternalError {
        vcpu: u8,
        suberror: u32,
        regs: String,
    },
    /// VM entry failed (KVM_EXIT_FAIL_ENTRY).
    FailEntry { vcpu: u8, reason: u64 },
    /// KVM_RUN failed or returned an exit the VMM cannot handle.
    VcpuError { vcpu: u8, error: String },
    /// Stopped through the VMM API.
    Stopped,
    /// A confined VMM thread made a syscall its filter forbids; it was
    /// stopped and the VM with it (docs/seccomp.md).
    SeccompViolation { thread: String, syscall: i64 },
}

impl ExitReason {
    /// True when the guest ended on its own terms.
    pub fn is_clean(&self) -> bool {
        matches!(self, ExitReason::GuestShutdown)
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::GuestShutdown => write!(f, "guest shut down"),
            ExitReason::KernelPanic(msg) => write!(f, "guest kernel panic: {msg}"),
            ExitReason::TripleFault { vcpu, regs } => {
                write!(f, "guest triple fault on vCPU {vcpu}: {regs}")
            }
            ExitReason::KvmInternalError {
                vcpu,
                suberror,
                regs,
            } => write!(
                f,
                "KVM internal error (suberror {suberror}) on vCPU {vcpu}: {regs}"
            ),
            ExitReason::FailEntry { vcpu, reason } => {
                write!(
                    f,
                    "KVM entry failure on vCPU {vcpu} (hardware reason {reason:#x})"
                )
            }
            ExitReason::VcpuError { vcpu, error } => write!(f, "vCPU {vcpu} failed: {error}"),
            ExitReason::Stopped => write!(f, "stopped by the VMM"),
            ExitReason::SeccompViolation { thread, syscall } => write!(
                f,
                "seccomp: VMM thread {thread} made forbidden syscall {syscall} ({}); \
                 the thread and the VM were stopped",
                skiff_confine::syscall_name(*syscall)
            ),
        }
    }
}

/// How vCPUs and devices tell the VMM thread that the VM must end: a
/// message on a channel plus an eventfd that wakes the VMM's event loop.
#[derive(Clone)]
pub struct ExitSender {
    reasons: std::sync::mpsc::Sender<ExitReason>,
    wake: std::sync::Arc<vmm_sys_util::eventfd::EventFd>,
}

impl ExitSender {
    pub fn new(
        reasons: std::sync::mpsc::Sender<ExitReason>,
        wake: std::sync::Arc<vmm_sys_util::eventfd::EventFd>,
    ) -> Self {
        Self { reasons, wake }
    }

    pub fn send(&self, reason: ExitReason) {
        // The VMM may be gone already during teardown; nothing to tell then.
        if self.reasons.send(reason).is_ok() {
            let _ = self.wake.write(1);
        }
    }
}
