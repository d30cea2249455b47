//! A fake agent for the runtime's unit tests: it keeps the containers and
//! processes a real agent would, records every call, fails or holds the
//! calls a test names, and lets a test end processes and report OOM kills.

use std::collections::{HashMap, HashSet};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use skiff_agent_protocol::agent::{
    CreateContainerRequest, CreateSandboxRequest, GuestDevice, Interface, Routes,
    StatsContainerResponse,
};

use super::{Agent, AgentError, AgentResult, Code, OutputStream};

#[derive(Default)]
struct State {
    calls: Vec<String>,
    /// Calls (by name) that answer with an error status.
    failing: HashSet<&'static str>,
    /// Calls (by name) that wait until released, as a slow guest's do.
    held: HashSet<&'static str>,
    containers: HashSet<String>,
    /// (container, exec) -> exit status once it exited.
    processes: HashMap<(String, String), Option<i32>>,
    ooms: Vec<String>,
    /// The connection is gone: blocked calls return, new ones fail.
    closed: bool,
}

#[derive(Default)]
pub struct FakeAgent {
    state: Mutex<State>,
    changed: Condvar,
}

impl FakeAgent {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes every later `call` answer INTERNAL.
    pub fn fail(&self, call: &'static str) {
        self.lock().failing.insert(call);
    }

    /// Makes every later `call` wait (once recorded) until [`Self::release`].
    pub fn hold(&self, call: &'static str) {
        self.lock().held.insert(call);
    }

    pub fn release(&self, call: &'static str) {
        self.lock().held.remove(call);
        self.changed.notify_all();
    }

    /// The calls made so far, as `Name(args)`.
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    pub fn containers(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.lock().containers.iter().cloned().collect();
        ids.sort();
        ids
    }

    /// Ends a started process with `status`, as if it exited in the guest.
    pub fn exit(&self, container_id: &str, exec_id: &str, status: i32) {
        let key = (container_id.to_string(), exec_id.to_string());
        if let Some(exit) = self.lock().processes.get_mut(&key) {
            *exit = Some(status);
        }
        self.changed.notify_all();
    }

    pub fn report_oom(&self, container_id: &str) {
        self.lock().ooms.push(container_id.into());
        self.changed.notify_all();
    }

    /// Drops the connection, as a VM that ended does.
    pub fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }

    /// Records `call` and answers whether it may go on.
    fn enter(&self, call: &'static str, args: String) -> AgentResult<MutexGuard<'_, State>> {
        let mut state = self.lock();
        state.calls.push(format!("{call}({args})"));
        while state.held.contains(call) && !state.closed {
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        if state.closed {
            return Err(AgentError::Unreachable {
                call,
                why: "connection closed".into(),
            });
        }
        if state.failing.contains(call) {
            return Err(AgentError::Status {
                call,
                code: Code::INTERNAL,
                message: format!("{call} failed (fake)"),
            });
        }
        Ok(state)
    }

    fn not_found(call: &'static str, what: String) -> AgentError {
        AgentError::Status {
            call,
            code: Code::NOT_FOUND,
            message: format!("{what} not found"),
        }
    }

    fn start(&self, call: &'static str, container_id: &str, exec_id: &str) -> AgentResult<()> {
        let mut state = self.enter(call, format!("{container_id},{exec_id}"))?;
        if !state.containers.contains(container_id) {
            return Err(Self::not_found(call, format!("container {container_id}")));
        }
        state
            .processes
            .insert((container_id.into(), exec_id.into()), None);
        Ok(())
    }
}

impl Agent for FakeAgent {
    fn create_sandbox(&self, req: CreateSandboxRequest) -> AgentResult<()> {
        self.enter("CreateSandbox", req.sandbox_id).map(drop)
    }

    fn destroy_sandbox(&self, _timeout: Duration) -> AgentResult<()> {
        let mut state = self.enter("DestroySandbox", String::new())?;
        state.closed = true;
        drop(state);
        self.changed.notify_all();
        Ok(())
    }

    fn set_guest_date_time(&self, _seconds: i64, _microseconds: i64) -> AgentResult<()> {
        self.enter("SetGuestDateTime", String::new()).map(drop)
    }

    fn reseed_random_dev(&self, _data: Vec<u8>) -> AgentResult<()> {
        self.enter("ReseedRandomDev", String::new()).map(drop)
    }

    fn update_interface(&self, iface: Interface) -> AgentResult<Interface> {
        drop(self.enter("UpdateInterface", iface.name.clone())?);
        Ok(iface)
    }

    fn update_routes(&self, routes: Routes) -> AgentResult<()> {
        self.enter("UpdateRoutes", routes.routes.len().to_string())
            .map(drop)
    }

    fn add_device(&self, slot: u32) -> AgentResult<GuestDevice> {
        drop(self.enter("AddDevice", slot.to_string())?);
        Ok(GuestDevice::new())
    }

    fn remove_device(&self, slot: u32) -> AgentResult<()> {
        self.enter("RemoveDevice", slot.to_string()).map(drop)
    }

    fn create_container(&self, req: CreateContainerRequest) -> AgentResult<()> {
        let container_id = req.container_id.as_str();
        let mut state = self.enter("CreateContainer", container_id.into())?;
        if !state.containers.insert(container_id.into()) {
            return Err(AgentError::Status {
                call: "CreateContainer",
                code: Code::ALREADY_EXISTS,
                message: format!("container {container_id} already exists"),
            });
        }
        Ok(())
    }

    fn start_container(&self, container_id: &str) -> AgentResult<()> {
        self.start("StartContainer", container_id, "")
    }

    fn remove_container(&self, container_id: &str) -> AgentResult<()> {
        let mut state = self.enter("RemoveContainer", container_id.into())?;
        state.containers.remove(container_id);
        state.processes.retain(|(c, _), _| c != container_id);
        Ok(())
    }

    fn exec_process(
        &self,
        container_id: &str,
        exec_id: &str,
        _oci_process_json: Vec<u8>,
    ) -> AgentResult<()> {
        self.start("ExecProcess", container_id, exec_id)
    }

    fn signal_process(
        &self,
        container_id: &str,
        exec_id: &str,
        signal: u32,
        _all: bool,
    ) -> AgentResult<()> {
        self.enter(
            "SignalProcess",
            format!("{container_id},{exec_id},{signal}"),
        )
        .map(drop)
    }

    fn wait_process(&self, container_id: &str, exec_id: &str) -> AgentResult<i32> {
        let key = (container_id.to_string(), exec_id.to_string());
        let mut state = self.enter("WaitProcess", format!("{container_id},{exec_id}"))?;
        loop {
            match state.processes.get(&key) {
                None => return Err(Self::not_found("WaitProcess", format!("process {key:?}"))),
                Some(Some(status)) => return Ok(*status),
                Some(None) if state.closed => {
                    return Err(AgentError::Unreachable {
                        call: "WaitProcess",
                        why: "connection closed".into(),
                    })
                }
                Some(None) => {}
            }
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn pause_container(&self, container_id: &str) -> AgentResult<()> {
        self.enter("PauseContainer", container_id.into()).map(drop)
    }

    fn resume_container(&self, container_id: &str) -> AgentResult<()> {
        self.enter("ResumeContainer", container_id.into()).map(drop)
    }

    fn stats_container(&self, container_id: &str) -> AgentResult<StatsContainerResponse> {
        drop(self.enter("StatsContainer", container_id.into())?);
        let mut stats = StatsContainerResponse::new();
        stats.cpu.mut_or_insert_default().usage_usec = 42;
        stats.memory.mut_or_insert_default().usage_bytes = 4096;
        stats.pids.mut_or_insert_default().current = 1;
        Ok(stats)
    }

    fn update_container(&self, container_id: &str, _resources_json: Vec<u8>) -> AgentResult<()> {
        self.enter("UpdateContainer", container_id.into()).map(drop)
    }

    fn oom_event(&self) -> AgentResult<String> {
        let mut state = self.lock();
        loop {
            if !state.ooms.is_empty() {
                return Ok(state.ooms.remove(0));
            }
            if state.closed {
                return Err(AgentError::Unreachable {
                    call: "GetOomEvent",
                    why: "connection closed".into(),
                });
            }
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn read_output(
        &self,
        _container_id: &str,
        _exec_id: &str,
        _stream: OutputStream,
        _max_bytes: u32,
    ) -> AgentResult<Vec<u8>> {
        // No process output: every stream is at its end at once.
        Ok(Vec::new())
    }

    fn write_stdin(&self, _container_id: &str, _exec_id: &str, data: &[u8]) -> AgentResult<u32> {
        Ok(data.len() as u32)
    }

    fn close_stdin(&self, container_id: &str, exec_id: &str) -> AgentResult<()> {
        self.enter("CloseStdin", format!("{container_id},{exec_id}"))
            .map(drop)
    }

    fn tty_win_resize(
        &self,
        container_id: &str,
        exec_id: &str,
        rows: u32,
        columns: u32,
    ) -> AgentResult<()> {
        self.enter(
            "TtyWinResize",
            format!("{container_id},{exec_id},{rows}x{columns}"),
        )
        .map(drop)
    }
}
