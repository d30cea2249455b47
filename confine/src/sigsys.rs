//! What a forbidden syscall does in `enforce` mode.
//!
//! The filter answers it with SECCOMP_RET_TRAP: the kernel sends SIGSYS to
//! the thread that made it, with the syscall number in the siginfo. The
//! handler records it in the thread's [`Slot`], writes one line naming the
//! thread and the call, wakes whoever watches the slot, and parks the
//! thread for good. It cannot return: the kernel skipped the call, and
//! returning would make it look as if it had returned its own number. It
//! must not end the process either: the process is the shim, which has to
//! report the sandbox's end to containerd.
//!
//! Everything the handler does is async-signal-safe: atomics, a stack
//! buffer, write(2) and futex(2) (which every filter allows, see
//! `filter::handler_floor`).

use std::cell::Cell;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU32, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

/// `si_code` of a SIGSYS sent by seccomp.
const SYS_SECCOMP: i32 = 1;
/// Offset of `_sigsys._syscall` in `siginfo_t` (Linux, 64-bit).
const SIGINFO_SYSCALL_OFFSET: usize = 24;
/// futex(2) operations on a word private to this process.
const FUTEX_WAIT_PRIVATE: libc::c_int = libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG;
const FUTEX_WAKE_PRIVATE: libc::c_int = libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG;

/// A confined thread's record, read by the thread that watches it.
#[derive(Debug)]
pub struct Slot {
    name: [u8; 16],
    name_len: usize,
    /// Where the handler writes its line (-1: nowhere).
    log_fd: AtomicI32,
    /// An eventfd the handler writes 1 to (-1: none).
    notify_fd: AtomicI32,
    syscall: AtomicI64,
    /// [`RUNNING`], [`PARKED`] (the futex word a parked thread sleeps on)
    /// or [`ENDED`].
    state: AtomicU32,
}

const RUNNING: u32 = 0;
const PARKED: u32 = 1;
const ENDED: u32 = 2;

/// A violation, as the watcher reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub thread: String,
    pub syscall: i64,
}

impl Slot {
    /// A slot for the thread called `name` (cut to 15 bytes, as the kernel
    /// cuts thread names); the handler logs to stderr and notifies no one
    /// until told otherwise.
    pub fn new(name: &str) -> Self {
        let mut buf = [0u8; 16];
        let n = name.len().min(15);
        buf[..n].copy_from_slice(&name.as_bytes()[..n]);
        Self {
            name: buf,
            name_len: n,
            log_fd: AtomicI32::new(libc::STDERR_FILENO),
            notify_fd: AtomicI32::new(-1),
            syscall: AtomicI64::new(-1),
            state: AtomicU32::new(RUNNING),
        }
    }

    /// True once the thread is parked.
    pub fn is_parked(&self) -> bool {
        self.state.load(Ordering::Acquire) == PARKED
    }

    /// True once the thread left its confined section normally.
    pub fn has_ended(&self) -> bool {
        self.state.load(Ordering::Acquire) == ENDED
    }

    /// A guard the thread holds for its whole life: dropping it (the
    /// thread returning or unwinding) disarms the slot and marks it ended,
    /// which wakes [`join_unless_parked`](crate::join_unless_parked).
    pub fn end_guard(self: &std::sync::Arc<Self>) -> EndGuard {
        EndGuard(self.clone())
    }

    fn wake_waiters(&self) {
        // SAFETY: futex wake on a word of this live slot.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                self.state.as_ptr(),
                FUTEX_WAKE_PRIVATE,
                i32::MAX,
            )
        };
    }

    pub fn set_log_fd(&self, fd: RawFd) {
        self.log_fd.store(fd, Ordering::Relaxed);
    }

    /// The eventfd the handler writes to (the caller keeps it open).
    pub fn set_notify_fd(&self, fd: RawFd) {
        self.notify_fd.store(fd, Ordering::Relaxed);
    }

    pub fn thread_name(&self) -> String {
        String::from_utf8_lossy(&self.name[..self.name_len]).into_owned()
    }

    /// The violation, once the thread is parked.
    pub fn report(&self) -> Option<Report> {
        self.is_parked().then(|| Report {
            thread: self.thread_name(),
            syscall: self.syscall.load(Ordering::Relaxed),
        })
    }

    /// Waits up to `timeout` for the thread to be parked.
    pub fn wait_parked(&self, timeout: Duration) -> Option<Report> {
        self.wait_not_running(timeout);
        self.report()
    }

    /// Waits up to `timeout` while the thread is still running.
    pub fn wait_not_running(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.state.load(Ordering::Acquire) != RUNNING {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            let ts = libc::timespec {
                tv_sec: left.as_secs() as libc::time_t,
                tv_nsec: left.subsec_nanos() as libc::c_long,
            };
            // SAFETY: futex on a word of this live slot; spurious wake-ups
            // are handled by the loop.
            unsafe {
                libc::syscall(
                    libc::SYS_futex,
                    self.state.as_ptr(),
                    FUTEX_WAIT_PRIVATE,
                    RUNNING,
                    &ts as *const libc::timespec,
                )
            };
        }
    }
}

/// Where a filtered thread lands after its slot was disarmed (the few
/// calls a thread makes on its way out, should a filter miss one).
static UNARMED: Slot = Slot {
    name: *b"(ending thread)\0",
    name_len: 15,
    log_fd: AtomicI32::new(libc::STDERR_FILENO),
    notify_fd: AtomicI32::new(-1),
    syscall: AtomicI64::new(-1),
    state: AtomicU32::new(RUNNING),
};

/// See [`Slot::end_guard`].
#[derive(Debug)]
pub struct EndGuard(std::sync::Arc<Slot>);

impl Drop for EndGuard {
    fn drop(&mut self) {
        disarm();
        // A parked thread never gets here; ENDED never overwrites PARKED.
        let _ = self
            .0
            .state
            .compare_exchange(RUNNING, ENDED, Ordering::AcqRel, Ordering::Acquire);
        self.0.wake_waiters();
    }
}

thread_local! {
    /// The calling thread's slot; const-initialised and without a
    /// destructor, so the handler can read it.
    static ARMED: Cell<*const Slot> = const { Cell::new(std::ptr::null()) };
}

/// Makes `slot` the calling thread's: a SIGSYS on this thread lands there.
///
/// # Safety
/// `slot` must stay alive until [`disarm`] runs on this thread, or for
/// good if the thread may still trap (a parked thread never returns, so a
/// slot owned by its frame or by a registry stays alive).
pub unsafe fn arm(slot: *const Slot) {
    ARMED.with(|a| a.set(slot));
}

/// Forgets the calling thread's slot: a later trap parks the thread with
/// a line that names only the syscall.
pub fn disarm() {
    ARMED.with(|a| a.set(std::ptr::null()));
}

/// Installs the process-wide SIGSYS handler (once).
pub fn install_handler() -> std::io::Result<()> {
    static INSTALL: Once = Once::new();
    let mut result = Ok(());
    INSTALL.call_once(|| {
        result = vmm_sys_util::signal::register_signal_handler(libc::SIGSYS, handler)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()));
    });
    result
}

/// Blocks every signal on the calling thread except SIGSYS, the faults a
/// bug raises synchronously (SEGV, BUS, ILL, FPE, ABRT) and `keep`: a
/// process-wide handler (the shim's SIGCHLD/SIGTERM pipe writers, SIGPIPE)
/// must not run on a confined thread, where its syscalls would trap.
pub fn block_signals(keep: &[libc::c_int]) -> std::io::Result<()> {
    // SAFETY: sigset operations on a local set, then pthread_sigmask on
    // the calling thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        for sig in [
            libc::SIGSYS,
            libc::SIGSEGV,
            libc::SIGBUS,
            libc::SIGILL,
            libc::SIGFPE,
            libc::SIGABRT,
        ]
        .iter()
        .chain(keep)
        {
            libc::sigdelset(&mut set, *sig);
        }
        let r = libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        if r != 0 {
            return Err(std::io::Error::from_raw_os_error(r));
        }
    }
    Ok(())
}

/// Appends `n` in decimal to `buf` at `at`; returns the new end.
fn put_number(buf: &mut [u8], mut at: usize, n: i64) -> usize {
    if n < 0 {
        at = put_bytes(buf, at, b"-");
    }
    let mut digits = [0u8; 20];
    let mut v = n.unsigned_abs();
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    put_bytes(buf, at, &digits[i..])
}

fn put_bytes(buf: &mut [u8], at: usize, bytes: &[u8]) -> usize {
    let n = bytes.len().min(buf.len().saturating_sub(at));
    buf[at..at + n].copy_from_slice(&bytes[..n]);
    at + n
}

/// The line the handler writes.
fn format_line(buf: &mut [u8; 160], thread: &[u8], syscall: i64) -> usize {
    let mut at = put_bytes(buf, 0, b"skiff: seccomp: thread ");
    at = put_bytes(buf, at, thread);
    at = put_bytes(buf, at, b" made forbidden syscall ");
    at = put_number(buf, at, syscall);
    put_bytes(buf, at, b"; thread stopped\n")
}

extern "C" fn handler(_num: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for an SA_SIGINFO handler;
    // the syscall number sits at a fixed offset for SIGSYS.
    let (code, syscall) = unsafe {
        let code = (*info).si_code;
        let nr =
            std::ptr::read_unaligned((info as *const u8).add(SIGINFO_SYSCALL_OFFSET) as *const i32);
        (code, nr as i64)
    };
    if code != SYS_SECCOMP {
        // Not one of ours: what the default action would have done.
        // SAFETY: abort never returns.
        unsafe { libc::abort() };
    }
    let slot = ARMED.with(|a| a.get());
    // SAFETY: an armed slot outlives the thread's arming (see `arm`);
    // a thread past its disarm parks on the process-wide fallback.
    let slot = if slot.is_null() {
        &UNARMED
    } else {
        unsafe { &*slot }
    };
    slot.syscall.store(syscall, Ordering::Relaxed);
    let mut line = [0u8; 160];
    let len = format_line(&mut line, &slot.name[..slot.name_len], syscall);
    let log_fd = slot.log_fd.load(Ordering::Relaxed);
    let notify_fd = slot.notify_fd.load(Ordering::Relaxed);
    // SAFETY: write and futex on memory of this frame and the slot.
    unsafe {
        if log_fd >= 0 {
            libc::write(log_fd, line.as_ptr().cast(), len);
        }
        slot.state.store(PARKED, Ordering::Release);
        libc::syscall(
            libc::SYS_futex,
            slot.state.as_ptr(),
            FUTEX_WAKE_PRIVATE,
            i32::MAX,
        );
        if notify_fd >= 0 {
            let one: u64 = 1;
            libc::write(notify_fd, (&one as *const u64).cast(), 8);
        }
        // Parked for good: the state stays PARKED, so this only sleeps.
        loop {
            libc::syscall(
                libc::SYS_futex,
                slot.state.as_ptr(),
                FUTEX_WAIT_PRIVATE,
                PARKED,
                std::ptr::null::<libc::timespec>(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_names_thread_and_call() {
        let mut buf = [0u8; 160];
        let n = format_line(&mut buf, b"skiff-vcpu0", 41);
        assert_eq!(
            std::str::from_utf8(&buf[..n]).unwrap(),
            "skiff: seccomp: thread skiff-vcpu0 made forbidden syscall 41; thread stopped\n"
        );
        let n = format_line(&mut buf, b"x", -7);
        assert!(std::str::from_utf8(&buf[..n])
            .unwrap()
            .contains("syscall -7;"));
    }

    #[test]
    fn names_are_cut_as_the_kernel_cuts_them() {
        assert_eq!(
            Slot::new("a-very-long-thread-name").thread_name(),
            "a-very-long-thr"
        );
    }
}
