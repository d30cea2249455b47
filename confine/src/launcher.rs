//! One VM's confinement: its mode, the registry of its confined threads,
//! and the launcher, one unfiltered thread that does for them what they
//! no longer may.
//!
//! A seccomp filter is inherited by every thread created after it is
//! installed, and a virtio device starts its worker when the guest writes
//! DRIVER_OK, which is an MMIO exit handled on a (filtered) vCPU thread.
//! So device activation, device creation on hot-add and the VM's teardown
//! run as jobs on the launcher: workers are children of an unfiltered
//! thread and install their own filter, and no filter has to allow what
//! only setup needs (opening files, creating threads, epoll instances).
//!
//! The launcher also watches for violations: the SIGSYS handler of a
//! confined thread writes an eventfd the launcher polls, and the launcher
//! hands the parked thread's report to the VMM's callback.

use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use vmm_sys_util::eventfd::EventFd;

use crate::caps::{keep_only, CapsError};
use crate::common;
use crate::filter::{self, Allowed, FilterError};
use crate::sigsys::{self, Report, Slot};
use crate::SeccompMode;

type Job = Box<dyn FnOnce() + Send>;
type OnViolation = Box<dyn Fn(Report) + Send>;

/// Errors confining a thread or reaching the launcher.
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    #[error(transparent)]
    Filter(#[from] FilterError),
    #[error(transparent)]
    Caps(#[from] CapsError),
    #[error("block signals on this thread: {0}")]
    Signals(std::io::Error),
    #[error("the VM's launcher thread has stopped")]
    LauncherGone,
    #[error("start the VM's launcher thread: {0}")]
    Spawn(std::io::Error),
}

/// What one thread class may do once confined.
#[derive(Debug, Clone, Default)]
pub struct ThreadPolicy {
    /// The syscalls it may make (the common set included by the caller,
    /// see [`crate::common::with_common`]).
    pub allowed: Vec<Allowed>,
    /// The capabilities it keeps; every other one is dropped for good.
    pub keep_caps: Vec<caps::Capability>,
    /// Signals it must still take (the vCPU kick); all others but SIGSYS
    /// and the faults are blocked.
    pub keep_signals: Vec<libc::c_int>,
}

struct Inner {
    mode: AtomicU8,
    /// False for [`Confinement::inline`]: jobs run in place.
    threaded: bool,
    jobs: Mutex<VecDeque<Job>>,
    wake: EventFd,
    violation: EventFd,
    slots: Mutex<Vec<(Arc<Slot>, bool)>>,
    on_violation: Mutex<Option<OnViolation>>,
    stop: AtomicBool,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// A VM's confinement; clones share it. See the module doc.
#[derive(Clone)]
pub struct Confinement {
    inner: Arc<Inner>,
}

thread_local! {
    static ON_LAUNCHER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn mode_to_u8(mode: SeccompMode) -> u8 {
    match mode {
        SeccompMode::Enforce => 0,
        SeccompMode::Log => 1,
        SeccompMode::Off => 2,
    }
}

fn mode_from_u8(v: u8) -> SeccompMode {
    match v {
        0 => SeccompMode::Enforce,
        1 => SeccompMode::Log,
        _ => SeccompMode::Off,
    }
}

impl Confinement {
    /// Starts the launcher thread, called `name`, in `mode` (which
    /// [`set_mode`](Self::set_mode) may change before any thread is
    /// confined). It lives in the caller's namespaces, and so do the
    /// workers it starts: call this where the VMM thread is created.
    pub fn start(name: &str, mode: SeccompMode) -> Result<Self, ConfineError> {
        let this = Self::new(mode, true).map_err(ConfineError::Spawn)?;
        let inner = this.inner.clone();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || launcher_loop(&inner))
            .map_err(ConfineError::Spawn)?;
        *this.inner.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(thread);
        Ok(this)
    }

    /// No launcher and no confinement: jobs run on the calling thread and
    /// threads stay unfiltered (unit tests, fuzzing, benches).
    pub fn inline() -> Self {
        Self::new(SeccompMode::Off, false).expect("eventfd for an inline confinement")
    }

    fn new(mode: SeccompMode, threaded: bool) -> std::io::Result<Self> {
        Ok(Self {
            inner: Arc::new(Inner {
                mode: AtomicU8::new(mode_to_u8(mode)),
                threaded,
                jobs: Mutex::default(),
                wake: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
                violation: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
                slots: Mutex::default(),
                on_violation: Mutex::default(),
                stop: AtomicBool::new(false),
                thread: Mutex::default(),
            }),
        })
    }

    pub fn mode(&self) -> SeccompMode {
        if !self.inner.threaded {
            return SeccompMode::Off;
        }
        mode_from_u8(self.inner.mode.load(Ordering::Relaxed))
    }

    pub fn set_mode(&self, mode: SeccompMode) {
        self.inner.mode.store(mode_to_u8(mode), Ordering::Relaxed);
    }

    /// What to do with a parked thread's report (called on the launcher).
    pub fn on_violation(&self, f: impl Fn(Report) + Send + 'static) {
        *self
            .inner
            .on_violation
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Box::new(f));
    }

    /// Runs `job` on the launcher and waits for its result (in place on an
    /// inline confinement, or when called from the launcher itself).
    pub fn run<R: Send + 'static>(
        &self,
        job: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, ConfineError> {
        if !self.inner.threaded || ON_LAUNCHER.with(|l| l.get()) {
            return Ok(job());
        }
        if self.inner.stop.load(Ordering::Acquire) {
            return Err(ConfineError::LauncherGone);
        }
        let (tx, rx) = sync_channel(1);
        self.inner
            .jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(Box::new(move || {
                let _ = tx.send(job());
            }));
        self.inner
            .wake
            .write(1)
            .map_err(|_| ConfineError::LauncherGone)?;
        rx.recv().map_err(|_| ConfineError::LauncherGone)
    }

    /// A slot for a thread about to be created, called `name`: the thread
    /// arms it when it confines itself, its joiner waits on it
    /// ([`crate::join_unless_parked`]), and the launcher reads it on a
    /// violation. Slots of threads that ended are dropped here, so a guest
    /// that resets a device over and over does not grow the registry.
    pub fn slot(&self, name: &str) -> Arc<Slot> {
        let slot = Arc::new(Slot::new(name));
        slot.set_notify_fd(self.inner.violation.as_raw_fd());
        let mut slots = self.inner.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.retain(|(s, _)| !s.has_ended());
        slots.push((slot.clone(), false));
        slot
    }

    /// Confines the calling thread to `policy`, reporting into `slot`
    /// (from [`slot`](Self::slot)): capabilities, signal mask, filter, in
    /// that order. Nothing in mode `off`.
    pub fn confine_current_thread(
        &self,
        slot: &Arc<Slot>,
        policy: &ThreadPolicy,
    ) -> Result<(), ConfineError> {
        let mode = self.mode();
        if mode == SeccompMode::Off {
            return Ok(());
        }
        let (allowed, probe) = with_overcommit_probe(&policy.allowed);
        let program = filter::build(&allowed, mode)?;
        let deny = probe
            .map(|p| filter::build_deny(&[p], libc::EACCES as u32))
            .transpose()?;
        keep_only(&policy.keep_caps)?;
        sigsys::install_handler().map_err(FilterError::Handler)?;
        sigsys::block_signals(&policy.keep_signals).map_err(ConfineError::Signals)?;
        // SAFETY: the slot lives in the registry until the thread's end
        // guard marks it ended, and for good if the thread parks.
        unsafe { sigsys::arm(Arc::as_ptr(slot)) };
        if let Some(deny) = &deny {
            seccompiler::apply_filter(deny).map_err(|e| FilterError::Install(e.to_string()))?;
        }
        seccompiler::apply_filter(&program).map_err(|e| FilterError::Install(e.to_string()))?;
        tracing::info!(
            thread = %slot.thread_name(),
            %mode,
            syscalls = policy.allowed.len(),
            capabilities = policy.keep_caps.len(),
            "seccomp filter installed"
        );
        Ok(())
    }

    /// Stops the launcher thread once its queued jobs are done; later
    /// [`run`](Self::run) calls fail.
    pub fn shutdown(&self) {
        self.inner.stop.store(true, Ordering::Release);
        let _ = self.inner.wake.write(1);
        let thread = self
            .inner
            .thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(thread) = thread {
            if ON_LAUNCHER.with(|l| l.get()) {
                return;
            }
            let _ = thread.join();
        }
    }

    /// Reports of threads parked so far (tests and teardown).
    pub fn violations(&self) -> Vec<Report> {
        self.inner
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(|(s, _)| s.report())
            .collect()
    }
}

/// `allowed` with glibc's overcommit probe let through the main filter,
/// and the entry the deny filter answers EACCES, unless `allowed` lets
/// every `openat` through anyway (see [`common::overcommit_probe`]).
fn with_overcommit_probe(allowed: &[Allowed]) -> (Vec<Allowed>, Option<Allowed>) {
    let mut allowed = allowed.to_vec();
    let probe = common::overcommit_probe();
    match allowed.iter_mut().find(|a| a.nr == libc::SYS_openat) {
        Some(a) if a.any_of.is_empty() => return (allowed, None),
        Some(a) => a.any_of.push(probe.clone()),
        None => allowed.push(Allowed::when(
            libc::SYS_openat,
            "openat",
            vec![probe.clone()],
        )),
    }
    let deny = Allowed::when(libc::SYS_openat, "openat", vec![probe]);
    (allowed, Some(deny))
}

fn launcher_loop(inner: &Inner) {
    ON_LAUNCHER.with(|l| l.set(true));
    let mut fds = [
        libc::pollfd {
            fd: inner.wake.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: inner.violation.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: poll on two fds this loop's `inner` keeps open.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            tracing::error!("launcher poll failed: {}", std::io::Error::last_os_error());
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        if fds[1].revents != 0 {
            let _ = inner.violation.read();
            report_violations(inner);
        }
        if fds[0].revents != 0 {
            let _ = inner.wake.read();
            loop {
                let job = inner
                    .jobs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .pop_front();
                match job {
                    Some(job) => job(),
                    None => break,
                }
            }
            if inner.stop.load(Ordering::Acquire) {
                return;
            }
        }
    }
}

fn report_violations(inner: &Inner) {
    let fresh: Vec<Report> = {
        let mut slots = inner.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .iter_mut()
            .filter(|(_, reported)| !*reported)
            .filter_map(|(slot, reported)| {
                let report = slot.report()?;
                *reported = true;
                Some(report)
            })
            .collect()
    };
    for report in fresh {
        tracing::error!(
            thread = %report.thread,
            syscall = report.syscall,
            name = crate::syscall_name(report.syscall),
            "seccomp: forbidden syscall, thread stopped"
        );
        if let Some(f) = inner
            .on_violation
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            f(report);
        }
    }
}
