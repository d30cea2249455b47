//! Reaps every child of the agent (and, as PID 1, every orphan of the
//! guest) on one thread, and hands exit statuses to whoever waits for a
//! pid. One reaper avoids the race of several threads calling waitpid: a
//! status is collected exactly once and kept until the process is
//! forgotten, so WaitProcess can be called any number of times.

use std::collections::{HashMap, HashSet};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// Statuses of processes nobody watches (orphans reaped as PID 1) are kept
/// only up to this many, so a long-lived guest does not grow without bound.
const MAX_UNWATCHED: usize = 1024;

#[derive(Default)]
struct State {
    exits: HashMap<i32, i32>,
    watched: HashSet<i32>,
}

/// The exit registry the reaper thread fills.
#[derive(Default)]
pub struct Reaper {
    state: Mutex<State>,
    exited: Condvar,
}

/// The status a shell would report: the exit code, or 128 + signal.
pub fn exit_status(status: WaitStatus) -> Option<i32> {
    match status {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, sig, _) => Some(128 + sig as i32),
        _ => None,
    }
}

/// Blocks SIGCHLD in the calling thread; call before any other thread
/// starts so every thread inherits the mask and only the reaper's
/// sigwait sees it.
pub fn block_sigchld() -> nix::Result<()> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    set.thread_block()
}

impl Reaper {
    /// Marks `pid` as one whose status must be kept until [`Reaper::forget`].
    pub fn watch(&self, pid: i32) {
        self.lock().watched.insert(pid);
    }

    /// Drops what is known about `pid`.
    pub fn forget(&self, pid: i32) {
        let mut st = self.lock();
        st.watched.remove(&pid);
        st.exits.remove(&pid);
    }

    /// The exit status of `pid` if it has exited.
    pub fn try_status(&self, pid: i32) -> Option<i32> {
        self.lock().exits.get(&pid).copied()
    }

    /// Waits for `pid` to exit; `None` after `timeout` (if any).
    pub fn wait(&self, pid: i32, timeout: Option<Duration>) -> Option<i32> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut st = self.lock();
        loop {
            if let Some(s) = st.exits.get(&pid) {
                return Some(*s);
            }
            st = match deadline {
                None => self.exited.wait(st).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let left = d.checked_duration_since(Instant::now())?;
                    self.exited
                        .wait_timeout(st, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records one reaped child.
    fn record(&self, pid: i32, status: i32) {
        let mut st = self.lock();
        if st.exits.len() >= MAX_UNWATCHED {
            let State { exits, watched } = &mut *st;
            exits.retain(|p, _| watched.contains(p));
        }
        st.exits.insert(pid, status);
        drop(st);
        self.exited.notify_all();
    }

    /// Collects every child that has exited, without blocking.
    pub fn reap_all(&self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(status) => {
                    if let (Some(pid), Some(code)) = (status.pid(), exit_status(status)) {
                        tracing::debug!(pid = pid.as_raw(), code, "reaped");
                        self.record(pid.as_raw(), code);
                    }
                }
            }
        }
    }

    /// The reaper thread's body: waits for SIGCHLD (blocked everywhere by
    /// [`block_sigchld`]) and reaps.
    pub fn run(&self) -> ! {
        let mut set = SigSet::empty();
        set.add(Signal::SIGCHLD);
        loop {
            self.reap_all();
            if let Err(e) = set.wait() {
                tracing::error!("sigwait: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_is_kept_for_many_waiters_until_forgotten() {
        let r = Reaper::default();
        r.watch(42);
        r.record(42, 3);
        assert_eq!(r.wait(42, None), Some(3));
        assert_eq!(r.wait(42, Some(Duration::ZERO)), Some(3));
        r.forget(42);
        assert_eq!(r.try_status(42), None);
        assert_eq!(r.wait(42, Some(Duration::from_millis(10))), None);
    }

    #[test]
    fn unwatched_statuses_are_bounded() {
        let r = Reaper::default();
        r.watch(1);
        r.record(1, 0);
        for pid in 2..(MAX_UNWATCHED as i32 + 10) {
            r.record(pid, 0);
        }
        assert!(r.lock().exits.len() <= MAX_UNWATCHED);
        assert_eq!(r.try_status(1), Some(0));
    }

    #[test]
    fn signal_deaths_map_to_128_plus_signal() {
        let pid = Pid::from_raw(7);
        assert_eq!(exit_status(WaitStatus::Exited(pid, 5)), Some(5));
        assert_eq!(
            exit_status(WaitStatus::Signaled(pid, Signal::SIGKILL, false)),
            Some(137)
        );
    }
}
