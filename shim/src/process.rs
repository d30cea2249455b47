//! What the shim knows about each process containerd asked for: its
//! status, where its I/O goes, and its exit once the agent reported it.

use std::sync::{Condvar, Mutex};

use containerd_shim::api::Status;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use skiff_runtime::stdio::StdioPaths;

#[derive(Clone, Debug, PartialEq)]
pub struct Exit {
    pub status: u32,
    pub at: Timestamp,
}

#[derive(Debug)]
struct State {
    status: Status,
    exit: Option<Exit>,
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
                status: Status::CREATED,
                exit: None,
            }),
            exited: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn status(&self) -> Status {
        self.lock().status
    }

    /// Moves to `status` unless the process already stopped.
    pub fn set_status(&self, status: Status) {
        let mut state = self.lock();
        if state.status != Status::STOPPED {
            state.status = status;
        }
    }

    pub fn exit(&self) -> Option<Exit> {
        self.lock().exit.clone()
    }

    /// Records the exit (the first one wins) and wakes every waiter.
    pub fn set_exited(&self, exit: Exit) {
        let mut state = self.lock();
        if state.exit.is_none() {
            state.status = Status::STOPPED;
            state.exit = Some(exit);
        }
        self.exited.notify_all();
    }

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
        assert_eq!(p.status(), Status::CREATED);
        p.set_status(Status::RUNNING);
        let waiter = {
            let p = p.clone();
            std::thread::spawn(move || p.wait().status)
        };
        p.set_exited(Exit {
            status: 3,
            at: Timestamp::now(),
        });
        p.set_exited(Exit {
            status: 9,
            at: Timestamp::now(),
        });
        assert_eq!(waiter.join().unwrap(), 3);
        p.set_status(Status::RUNNING);
        assert_eq!(p.status(), Status::STOPPED);
        assert_eq!(p.exit().unwrap().status, 3);
    }
}
