//! The runtime's view of the guest agent: every call the runtime makes, as
//! one trait, so the container manager ([`crate::pod`]) and the stdio
//! relays can be unit-tested against a fake agent without a VM.
//!
//! The trait speaks the agent's protocol messages where they carry more
//! than an id (a network interface, a container's stats) and plain
//! arguments elsewhere. Deadlines are the implementation's business:
//! calls that wait for a process (its exit, its output, an OOM kill) have
//! none, every other call has the configured request timeout.

mod client;
#[cfg(test)]
pub mod fake;

use std::time::Duration;

pub use client::{connect, AgentClient, ConnectError};
use skiff_agent_protocol::agent::{
    CreateContainerRequest, CreateSandboxRequest, GuestDevice, Interface, Routes,
    StatsContainerResponse,
};
use skiff_agent_protocol::ttrpc;
pub use skiff_agent_protocol::ttrpc::Code;

/// Which output stream of a process to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// What went wrong with an agent call.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The agent answered with an error status; its message names the
    /// problem (a missing container, a bad spec, ...).
    #[error("agent {call}: {message}")]
    Status {
        call: &'static str,
        code: Code,
        message: String,
    },
    /// No answer: the connection is gone (the VM ended) or the deadline
    /// passed.
    #[error("agent {call}: agent unreachable: {why}")]
    Unreachable { call: &'static str, why: String },
}

impl AgentError {
    /// Sorts a ttrpc error from the call `call`.
    pub fn from_ttrpc(call: &'static str, err: ttrpc::Error) -> Self {
        match err {
            ttrpc::Error::RpcStatus(status) => AgentError::Status {
                call,
                code: status.code.enum_value_or(Code::UNKNOWN),
                message: status.message,
            },
            other => AgentError::Unreachable {
                call,
                why: other.to_string(),
            },
        }
    }

    /// The status code the agent answered with; UNAVAILABLE when it did
    /// not answer.
    pub fn code(&self) -> Code {
        match self {
            AgentError::Status { code, .. } => *code,
            AgentError::Unreachable { .. } => Code::UNAVAILABLE,
        }
    }
}

pub type AgentResult<T> = Result<T, AgentError>;

/// The guest agent's API as the runtime uses it. Processes are named by
/// container id and exec id (empty for the container's init process), as
/// containerd names them.
pub trait Agent: Send + Sync {
    // The sandbox.
    fn create_sandbox(&self, req: CreateSandboxRequest) -> AgentResult<()>;
    /// Asks the guest to power off; waits at most `timeout` for the answer.
    fn destroy_sandbox(&self, timeout: Duration) -> AgentResult<()>;
    fn set_guest_date_time(&self, seconds: i64, microseconds: i64) -> AgentResult<()>;
    /// Mixes `data` (fresh host entropy) into the guest's RNG and reseeds
    /// its CRNG from it.
    fn reseed_random_dev(&self, data: Vec<u8>) -> AgentResult<()>;
    /// Configures the guest interface `iface` names (by MAC, or `lo`);
    /// returns it as the guest named it.
    fn update_interface(&self, iface: Interface) -> AgentResult<Interface>;
    fn update_routes(&self, routes: Routes) -> AgentResult<()>;
    /// Binds the device hot-added in MMIO slot `slot`.
    fn add_device(&self, slot: u32) -> AgentResult<GuestDevice>;
    fn remove_device(&self, slot: u32) -> AgentResult<()>;

    // Containers and processes.
    fn create_container(&self, req: CreateContainerRequest) -> AgentResult<()>;
    fn start_container(&self, container_id: &str) -> AgentResult<()>;
    fn remove_container(&self, container_id: &str) -> AgentResult<()>;
    fn exec_process(
        &self,
        container_id: &str,
        exec_id: &str,
        oci_process_json: Vec<u8>,
    ) -> AgentResult<()>;
    fn signal_process(
        &self,
        container_id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> AgentResult<()>;
    /// Blocks until the process exits; returns its exit status.
    fn wait_process(&self, container_id: &str, exec_id: &str) -> AgentResult<i32>;
    fn pause_container(&self, container_id: &str) -> AgentResult<()>;
    fn resume_container(&self, container_id: &str) -> AgentResult<()>;
    fn stats_container(&self, container_id: &str) -> AgentResult<StatsContainerResponse>;
    /// `resources_json`: OCI `LinuxResources` as JSON.
    fn update_container(&self, container_id: &str, resources_json: Vec<u8>) -> AgentResult<()>;
    /// Blocks until a container is OOM-killed; returns its id.
    fn oom_event(&self) -> AgentResult<String>;

    // Process I/O.
    /// Blocks until the process wrote something; empty at end of stream.
    fn read_output(
        &self,
        container_id: &str,
        exec_id: &str,
        stream: OutputStream,
        max_bytes: u32,
    ) -> AgentResult<Vec<u8>>;
    /// Returns how many bytes of `data` the process's stdin took.
    fn write_stdin(&self, container_id: &str, exec_id: &str, data: &[u8]) -> AgentResult<u32>;
    fn close_stdin(&self, container_id: &str, exec_id: &str) -> AgentResult<()>;
    fn tty_win_resize(
        &self,
        container_id: &str,
        exec_id: &str,
        rows: u32,
        columns: u32,
    ) -> AgentResult<()>;
}
