//! The syscalls every confined thread makes whatever its job: the Rust
//! and glibc runtime under it (locks, allocation, thread exit, clocks,
//! panics). Measured with strace on every VMM thread class (see
//! docs/seccomp.md); each thread's own table adds to this.

use crate::filter::{Allowed, Check};

/// The common set. `tgkill` and `rt_sigaction` only for SIGABRT: a panic
/// (`panic = "abort"`) must still abort the process as it does unconfined,
/// rather than be taken for a violation.
pub fn common() -> Vec<Allowed> {
    let abort = || vec![vec![Check::Eq(2, libc::SIGABRT as u32)]];
    vec![
        // Reads and writes of eventfds (interrupts, kicks, wake-ups) and
        // log lines; the fd numbers are dynamic, so unfiltered.
        Allowed::always(libc::SYS_read, "read"),
        Allowed::always(libc::SYS_close, "close"),
        // Memory: glibc arenas (mmap PROT_NONE then mprotect), free and
        // trim (madvise, munmap), large reallocs (mremap), the main arena.
        Allowed::always(libc::SYS_mmap, "mmap"),
        Allowed::always(libc::SYS_mprotect, "mprotect"),
        Allowed::always(libc::SYS_munmap, "munmap"),
        Allowed::always(libc::SYS_madvise, "madvise"),
        Allowed::always(libc::SYS_mremap, "mremap"),
        Allowed::always(libc::SYS_brk, "brk"),
        // glibc sizes a new arena by the CPUs it may run on.
        Allowed::always(libc::SYS_sched_getaffinity, "sched_getaffinity"),
        // std's channel back-off.
        Allowed::always(libc::SYS_sched_yield, "sched_yield"),
        // Signal masks (glibc, thread exit) and the alternate signal stack
        // std removes when a thread ends.
        Allowed::always(libc::SYS_rt_sigprocmask, "rt_sigprocmask"),
        Allowed::always(libc::SYS_sigaltstack, "sigaltstack"),
        Allowed::always(libc::SYS_restart_syscall, "restart_syscall"),
        // Clocks: Instant::now falls back to the syscall without a vDSO
        // clock source; per-thread and process CPU clocks (the boot
        // timeline) are never answered by the vDSO.
        Allowed::always(libc::SYS_clock_gettime, "clock_gettime"),
        Allowed::always(libc::SYS_clock_nanosleep, "clock_nanosleep"),
        Allowed::always(libc::SYS_nanosleep, "nanosleep"),
        // HashMap keys on a thread's first RandomState.
        Allowed::always(libc::SYS_getrandom, "getrandom"),
        Allowed::always(libc::SYS_exit, "exit"),
        // std checks an fd is open before closing it (debug builds), and
        // dups eventfds with F_DUPFD_CLOEXEC (`try_clone`).
        Allowed::when(
            libc::SYS_fcntl,
            "fcntl",
            vec![
                vec![Check::Eq(1, libc::F_GETFD as u32)],
                vec![Check::Eq(1, libc::F_DUPFD_CLOEXEC as u32)],
            ],
        ),
        Allowed::always(libc::SYS_getpid, "getpid"),
        Allowed::always(libc::SYS_gettid, "gettid"),
        Allowed::when(libc::SYS_tgkill, "tgkill", abort()),
        Allowed::when(libc::SYS_rt_sigaction, "rt_sigaction", {
            vec![vec![Check::Eq(0, libc::SIGABRT as u32)]]
        }),
    ]
}

/// glibc's malloc reads `/proc/sys/vm/overcommit_memory` the first time
/// it shrinks a thread arena's heap, on whatever thread frees: an
/// `openat(AT_FDCWD, ..., O_RDONLY|O_CLOEXEC)` no table wants to allow.
/// Threads whose table does not allow `openat` outright get this call
/// answered EACCES by a second filter (glibc then assumes "no"); the
/// openat is not opened, and no other openat gets past the main filter.
pub fn overcommit_probe() -> Vec<Check> {
    vec![
        Check::Eq(0, libc::AT_FDCWD as u32),
        Check::Eq(2, (libc::O_RDONLY | libc::O_CLOEXEC) as u32),
    ]
}

/// `common()` plus `own`, the thread's own table; an entry of `own`
/// replaces a common one with the same number (a wider `tgkill`, say).
pub fn with_common(own: Vec<Allowed>) -> Vec<Allowed> {
    let mut all: Vec<Allowed> = common()
        .into_iter()
        .filter(|c| !own.iter().any(|o| o.nr == c.nr))
        .collect();
    all.extend(own);
    all
}
