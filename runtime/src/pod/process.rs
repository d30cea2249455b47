//! One process of the pod as the runtime tracks it (a container's init
//! process or an exec'd one): its status, where its I/O goes, and its exit
//! once the agent reported it, with a wait for that exit; and the signals
//! sent to an exec while the guest is still spawning it.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::SystemTime;

use crate::stdio::StdioPaths;

/// Where a process is in its life, as containerd's task API names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessStatus {
    Created,
    Running,
    Paused,
    Stopped,
}

/// How and when a process ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Exit {
    pub status: u32,
    pub at: SystemTime,
}

#[derive(Debug)]
struct State {
    status: ProcessStatus,
    exit: Option<Exit>,
    /// `Some` while the guest spawns the process after its Start answered:
    /// the signals sent meanwhile, for the guest once it has the process.
    spawning: Option<Vec<Signal>>,
}

/// A signal as the task API sends it: the number, and whether it goes to
/// every process of the container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Signal {
    pub number: u32,
    pub all: bool,
}

/// What [`Process::spawned`] hands over once the guest has the process.
#[derive(Debug, PartialEq, Eq)]
pub struct Spawned {
    /// Signals sent while it was spawning, in order.
    pub queued: Vec<Signal>,
    /// Its exit was already reported (it was killed while spawning).
    pub reported: bool,
}

/// A container's init process (empty `exec_id`) or an exec'd one.
#[derive(Debug)]
pub struct Process {
    pub container_id: String,
    pub exec_id: String,
    pub stdio: StdioPaths,
    /// An exec's OCI `process` as JSON (empty for init).
    pub spec_json: Vec<u8>,
    state: Mutex<State>,
    exited: Condvar,
}

impl Process {
    pub fn new(container_id: &str, exec_id: &str, stdio: StdioPaths, spec_json: Vec<u8>) -> Self {
        Self {
            container_id: container_id.into(),
            exec_id: exec_id.into(),
            stdio,
            spec_json,
            state: Mutex::new(State {
                status: ProcessStatus::Created,
                exit: None,
                spawning: None,
            }),
            exited: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn status(&self) -> ProcessStatus {
        self.lock().status
    }

    /// Moves to `status` unless the process already stopped.
    pub fn set_status(&self, status: ProcessStatus) {
        let mut state = self.lock();
        if state.status != ProcessStatus::Stopped {
            state.status = status;
        }
    }

    pub fn exit(&self) -> Option<Exit> {
        self.lock().exit.clone()
    }

    /// Records the exit (the first one wins) and wakes every waiter;
    /// returns whether this one was recorded.
    pub fn set_exited(&self, exit: Exit) -> bool {
        let mut state = self.lock();
        let first = state.exit.is_none();
        if first {
            state.status = ProcessStatus::Stopped;
            state.exit = Some(exit);
        }
        self.exited.notify_all();
        first
    }

    /// Marks the guest as still spawning the process: signals are queued
    /// from now until [`Self::spawned`].
    pub fn spawning(&self) {
        self.lock().spawning = Some(Vec::new());
    }

    /// Queues `signal` if the guest is still spawning the process; returns
    /// whether it did (otherwise the signal is for the agent now).
    pub fn queue_signal(&self, signal: Signal) -> bool {
        match &mut self.lock().spawning {
            Some(queued) => {
                queued.push(signal);
                true
            }
            None => false,
        }
    }

    /// Ends the spawning phase (the guest has the process, or failed to
    /// spawn it): later signals go to the agent. One lock decides both
    /// what was queued and whether the exit was reported meanwhile.
    pub fn spawned(&self) -> Spawned {
        let mut state = self.lock();
        Spawned {
            queued: state.spawning.take().unwrap_or_default(),
            reported: state.exit.is_some(),
        }
    }

    /// Blocks until the process exited.
    pub fn wait(&self) -> Exit {
        let mut state = self.lock();
        loop {
            if let Some(exit) = &state.exit {
                return exit.clone();
            }
            state = self.exited.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn waiters_see_the_first_exit_and_status_stays_stopped() {
        let p = Arc::new(Process::new("c", "", StdioPaths::default(), Vec::new()));
        assert_eq!(p.status(), ProcessStatus::Created);
        p.set_status(ProcessStatus::Running);
        let waiter = {
            let p = p.clone();
            std::thread::spawn(move || p.wait().status)
        };
        assert!(p.set_exited(Exit {
            status: 3,
            at: SystemTime::now(),
        }));
        assert!(!p.set_exited(Exit {
            status: 9,
            at: SystemTime::now(),
        }));
        assert_eq!(waiter.join().unwrap(), 3);
        p.set_status(ProcessStatus::Running);
        assert_eq!(p.status(), ProcessStatus::Stopped);
        assert_eq!(p.exit().unwrap().status, 3);
    }

    #[test]
    fn signals_are_queued_only_while_the_guest_spawns() {
        let p = Process::new("c", "e", StdioPaths::default(), Vec::new());
        let term = Signal {
            number: 15,
            all: false,
        };
        assert!(!p.queue_signal(term), "not spawning: for the agent");
        p.spawning();
        assert!(p.queue_signal(term));
        assert_eq!(
            p.spawned(),
            Spawned {
                queued: vec![term],
                reported: false
            }
        );
        assert!(!p.queue_signal(term), "spawned: for the agent");

        p.spawning();
        p.set_exited(Exit {
            status: 137,
            at: SystemTime::now(),
        });
        assert!(p.spawned().reported);
    }
}
