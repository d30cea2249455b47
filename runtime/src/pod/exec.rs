//! Starting an exec'd process: the Start answers within a short bound
//! whatever the guest does, so an exec's timeout runs from when it was
//! asked for.
//!
//! containerd's ExecSync (CRI exec probes, `crictl exec --timeout`) starts
//! its timer only once Start has answered, then kills the process and waits
//! for its exit. A Start that waited for a slow guest's spawn (seconds on
//! an emulated or overloaded node) would stretch every timeout by as much.
//! So the spawn runs on its own thread and Start waits for it at most
//! [`SPAWN_WAIT`]: on hardware the guest answers well inside it, and a
//! spawn that fails is Start's error, as under runc. Past the bound, Start
//! answers and the process counts as running while the guest spawns it.
//! Signals sent meanwhile are queued for the guest, and a SIGKILL is also
//! reported as the exit at once, with the output FIFOs closed (ExecSync
//! waits for their end too): the timeout ends on time, and the guest's
//! process is killed when it arrives. A spawn that fails after the bound is
//! reported as an exit with [`SPAWN_FAILED_STATUS`].

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::process::{Process, ProcessStatus, Signal};
use super::{agent, lock, report_exit, Pod, PodError, KILLED_STATUS, LOST_STATUS, SIGKILL};
use crate::agent::{Agent, AgentError};
use crate::stdio::{self, Relays, StdioPaths};

/// How long an exec's Start waits for the guest to spawn the process.
const SPAWN_WAIT: Duration = Duration::from_millis(250);
/// The exit status of an exec whose spawn failed after its Start answered:
/// what a shell reports for a command it cannot run.
const SPAWN_FAILED_STATUS: u32 = 127;

/// The guest's answer to the spawn, handed from the spawning thread to
/// Start, or kept by the thread once Start stopped waiting.
#[derive(Default)]
struct Handoff {
    state: Mutex<Answer>,
    changed: Condvar,
}

#[derive(Default)]
enum Answer {
    #[default]
    Pending,
    Given(Result<(), AgentError>),
    /// Start answered without it: the spawning thread finishes the start.
    Abandoned,
}

impl Handoff {
    /// Hands `answer` to Start; returns it back if Start no longer waits.
    fn give(&self, answer: Result<(), AgentError>) -> Option<Result<(), AgentError>> {
        let mut state = lock(&self.state);
        if matches!(*state, Answer::Abandoned) {
            return Some(answer);
        }
        *state = Answer::Given(answer);
        self.changed.notify_all();
        None
    }

    /// The answer if it comes within `bound`; otherwise the thread keeps
    /// it (`None`).
    fn take(&self, bound: Duration) -> Option<Result<(), AgentError>> {
        let state = lock(&self.state);
        let (mut state, _) = self
            .changed
            .wait_timeout_while(state, bound, |s| matches!(s, Answer::Pending))
            .unwrap_or_else(|e| e.into_inner());
        match std::mem::replace(&mut *state, Answer::Abandoned) {
            Answer::Given(answer) => Some(answer),
            Answer::Pending | Answer::Abandoned => None,
        }
    }
}

impl Pod {
    /// Starts exec `process` (see the module doc).
    pub(super) fn start_exec(
        &self,
        agent: Arc<dyn Agent>,
        process: Arc<Process>,
    ) -> Result<(), PodError> {
        let handoff = Arc::new(Handoff::default());
        process.spawning();
        let spawner = {
            let (pod, agent, process, handoff) = (
                self.clone(),
                agent.clone(),
                process.clone(),
                handoff.clone(),
            );
            move || {
                let answer = agent.exec_process(
                    &process.container_id,
                    &process.exec_id,
                    process.spec_json.clone(),
                );
                if let Some(answer) = handoff.give(answer) {
                    pod.spawned_late(agent, process, answer);
                }
            }
        };
        let thread = std::thread::Builder::new()
            .name(format!("exec-{}", process.container_id))
            .spawn(spawner);
        let answer = match thread {
            Ok(_) => handoff.take(SPAWN_WAIT),
            Err(e) => {
                tracing::warn!("no thread for an exec's spawn ({e}): waiting for the guest");
                Some(agent.exec_process(
                    &process.container_id,
                    &process.exec_id,
                    process.spec_json.clone(),
                ))
            }
        };
        match answer {
            Some(Ok(())) => self.spawned(agent, &process),
            Some(Err(e)) => {
                process.spawned();
                Err(self::agent(format!("exec in {}", process.container_id))(e))
            }
            None => {
                tracing::info!(
                    "exec {}/{}: the guest is still spawning it; Start answers now",
                    process.container_id,
                    process.exec_id
                );
                process.set_status(ProcessStatus::Running);
                Ok(())
            }
        }
    }

    /// Signals an exec the guest is still spawning; returns whether it was
    /// (otherwise the signal is for the agent). A SIGKILL is its exit now.
    pub(super) fn signal_spawning(&self, process: &Process, signal: Signal) -> bool {
        if !process.queue_signal(signal) {
            return false;
        }
        if signal.number == SIGKILL {
            report_exit(&self.0.events, process, KILLED_STATUS);
            // containerd's ExecSync waits for the output's end after the
            // exit; the guest's process will never write it.
            stdio::close_outputs(&process.stdio);
        }
        true
    }

    /// The guest has the process: relays its I/O, delivers the signals
    /// queued while it spawned and follows it to its exit.
    fn spawned(&self, agent: Arc<dyn Agent>, process: &Arc<Process>) -> Result<(), PodError> {
        process.set_status(ProcessStatus::Running);
        let spawned = process.spawned();
        // Killed while spawning: its exit was reported, and containerd may
        // already be closing its FIFOs, so its output is only drained.
        let stdio = match spawned.reported {
            true => StdioPaths {
                terminal: process.stdio.terminal,
                ..StdioPaths::default()
            },
            false => process.stdio.clone(),
        };
        let (id, exec_id) = (&process.container_id, &process.exec_id);
        let relays = Relays::start(&agent, id, exec_id, &stdio)?;
        for signal in spawned.queued {
            if let Err(e) = agent.signal_process(id, exec_id, signal.number, signal.all) {
                tracing::warn!("signal {} to {id}/{exec_id}: {e}", signal.number);
            }
        }
        self.watch_exit(agent, process.clone(), relays);
        Ok(())
    }

    /// Finishes a start that Start stopped waiting for.
    fn spawned_late(
        &self,
        agent: Arc<dyn Agent>,
        process: Arc<Process>,
        answer: Result<(), AgentError>,
    ) {
        let (id, exec_id) = (&process.container_id, &process.exec_id);
        let failed = match answer {
            Ok(()) => match self.spawned(agent.clone(), &process) {
                Ok(()) => return,
                Err(e) => {
                    // Running in the guest with nothing to relay it.
                    let _ = agent.signal_process(id, exec_id, SIGKILL, false);
                    tracing::warn!("exec {id}/{exec_id}: {e}");
                    LOST_STATUS
                }
            },
            Err(e) => {
                process.spawned();
                tracing::warn!("exec {id}/{exec_id} failed in the guest after its Start: {e}");
                SPAWN_FAILED_STATUS
            }
        };
        report_exit(&self.0.events, &process, failed);
    }
}
