//! The real agent: ttrpc over the VMM's in-process vsock connector, with
//! the configured deadline on every call that does not wait for a process.

use std::os::fd::IntoRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use skiff_agent_protocol::agent::{
    CheckRequest, ContainerRequest, CreateContainerRequest, CreateSandboxRequest, DeviceRequest,
    Empty, ExecProcessRequest, GuestDevice, Interface, ProcessRequest, ReadStreamRequest,
    RemoveContainerRequest, ReseedRandomDevRequest, Routes, SetGuestDateTimeRequest,
    SignalProcessRequest, StatsContainerResponse, TtyWinResizeRequest, UpdateContainerRequest,
    WriteStreamRequest,
};
use skiff_agent_protocol::agent_ttrpc::AgentServiceClient;
use skiff_agent_protocol::ttrpc::{self, context::Context};
use skiff_agent_protocol::DEFAULT_VSOCK_PORT;
use skiff_vmm::{VmState, VmmError, VmmHandle};

use super::{Agent, AgentError, AgentResult, OutputStream};

/// How long one health check may take while the guest comes up.
const CHECK_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between connection attempts while the guest boots.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// The agent of one sandbox VM; cheap to share between threads.
pub struct AgentClient {
    client: AgentServiceClient,
    request_timeout: Duration,
}

/// Why [`connect`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("VMM: {0}")]
    Vmm(#[from] VmmError),
    #[error("the guest agent did not answer within {secs} s (VM {state:?})")]
    Timeout { secs: u64, state: VmState },
    #[error(transparent)]
    Agent(#[from] AgentError),
}

/// Connects to the agent's vsock port until it answers a health check, the
/// VM ends, or `boot_timeout` passes. Returns the client and a handle on
/// its stream: shutting that down fails every call waiting in the agent at
/// once (see `sandbox::vm::watch_exit`).
pub fn connect(
    vmm: &VmmHandle,
    boot_timeout: Duration,
    request_timeout: Duration,
) -> Result<(AgentClient, UnixStream), ConnectError> {
    let deadline = Instant::now() + boot_timeout;
    let unreachable = |e: &dyn std::fmt::Display| AgentError::Unreachable {
        call: "connect",
        why: e.to_string(),
    };
    loop {
        let state = vmm.state()?;
        if state == VmState::Running {
            if let Ok(stream) = vmm.vsock_connect(DEFAULT_VSOCK_PORT) {
                let handle = stream.try_clone().map_err(|e| unreachable(&e))?;
                let client = ttrpc::Client::new(stream.into_raw_fd())
                    .map(AgentServiceClient::new)
                    .map_err(|e| unreachable(&e))?;
                if client
                    .check(deadline_in(CHECK_TIMEOUT), &CheckRequest::new())
                    .is_ok()
                {
                    let client = AgentClient {
                        client,
                        request_timeout,
                    };
                    return Ok((client, handle));
                }
            }
        }
        if state != VmState::Running || Instant::now() >= deadline {
            return Err(ConnectError::Timeout {
                secs: boot_timeout.as_secs(),
                state,
            });
        }
        std::thread::sleep(RETRY_PAUSE);
    }
}

fn deadline_in(timeout: Duration) -> Context {
    ttrpc::context::with_timeout(timeout.as_nanos() as i64)
}

fn process_request(container_id: &str, exec_id: &str) -> ProcessRequest {
    let mut req = ProcessRequest::new();
    req.container_id = container_id.into();
    req.exec_id = exec_id.into();
    req
}

fn container_request(container_id: &str) -> ContainerRequest {
    let mut req = ContainerRequest::new();
    req.container_id = container_id.into();
    req
}

impl AgentClient {
    /// A context with the configured deadline.
    fn ctx(&self) -> Context {
        deadline_in(self.request_timeout)
    }
}

/// Maps a call's result, naming the call in its error.
fn named<T, U>(
    call: &'static str,
    result: ttrpc::Result<T>,
    map: impl FnOnce(T) -> U,
) -> AgentResult<U> {
    result.map(map).map_err(|e| AgentError::from_ttrpc(call, e))
}

impl Agent for AgentClient {
    fn create_sandbox(&self, req: CreateSandboxRequest) -> AgentResult<()> {
        named(
            "CreateSandbox",
            self.client.create_sandbox(self.ctx(), &req),
            drop,
        )
    }

    fn destroy_sandbox(&self, timeout: Duration) -> AgentResult<()> {
        named(
            "DestroySandbox",
            self.client
                .destroy_sandbox(deadline_in(timeout), &Empty::new()),
            drop,
        )
    }

    fn set_guest_date_time(&self, seconds: i64, microseconds: i64) -> AgentResult<()> {
        let mut req = SetGuestDateTimeRequest::new();
        req.seconds = seconds;
        req.microseconds = microseconds;
        named(
            "SetGuestDateTime",
            self.client.set_guest_date_time(self.ctx(), &req),
            drop,
        )
    }

    fn reseed_random_dev(&self, data: Vec<u8>) -> AgentResult<()> {
        let mut req = ReseedRandomDevRequest::new();
        req.data = data;
        named(
            "ReseedRandomDev",
            self.client.reseed_random_dev(self.ctx(), &req),
            drop,
        )
    }

    fn update_interface(&self, iface: Interface) -> AgentResult<Interface> {
        named(
            "UpdateInterface",
            self.client.update_interface(self.ctx(), &iface),
            |i| i,
        )
    }

    fn update_routes(&self, routes: Routes) -> AgentResult<()> {
        named(
            "UpdateRoutes",
            self.client.update_routes(self.ctx(), &routes),
            drop,
        )
    }

    fn add_device(&self, slot: u32) -> AgentResult<GuestDevice> {
        let mut req = DeviceRequest::new();
        req.mmio_slot = slot;
        named("AddDevice", self.client.add_device(self.ctx(), &req), |d| d)
    }

    fn remove_device(&self, slot: u32) -> AgentResult<()> {
        let mut req = DeviceRequest::new();
        req.mmio_slot = slot;
        named(
            "RemoveDevice",
            self.client.remove_device(self.ctx(), &req),
            drop,
        )
    }

    fn create_container(&self, req: CreateContainerRequest) -> AgentResult<()> {
        named(
            "CreateContainer",
            self.client.create_container(self.ctx(), &req),
            drop,
        )
    }

    fn start_container(&self, container_id: &str) -> AgentResult<()> {
        named(
            "StartContainer",
            self.client
                .start_container(self.ctx(), &container_request(container_id)),
            drop,
        )
    }

    fn remove_container(&self, container_id: &str) -> AgentResult<()> {
        let mut req = RemoveContainerRequest::new();
        req.container_id = container_id.into();
        named(
            "RemoveContainer",
            self.client.remove_container(self.ctx(), &req),
            drop,
        )
    }

    fn exec_process(
        &self,
        container_id: &str,
        exec_id: &str,
        oci_process_json: Vec<u8>,
    ) -> AgentResult<()> {
        let mut req = ExecProcessRequest::new();
        req.container_id = container_id.into();
        req.exec_id = exec_id.into();
        req.oci_process_json = oci_process_json;
        named(
            "ExecProcess",
            self.client.exec_process(self.ctx(), &req),
            drop,
        )
    }

    fn signal_process(
        &self,
        container_id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> AgentResult<()> {
        let mut req = SignalProcessRequest::new();
        req.container_id = container_id.into();
        req.exec_id = exec_id.into();
        req.signal = signal;
        req.all = all;
        named(
            "SignalProcess",
            self.client.signal_process(self.ctx(), &req),
            drop,
        )
    }

    fn wait_process(&self, container_id: &str, exec_id: &str) -> AgentResult<i32> {
        // Blocks in the agent until the process exits: no deadline.
        named(
            "WaitProcess",
            self.client
                .wait_process(Context::default(), &process_request(container_id, exec_id)),
            |r| r.exit_status,
        )
    }

    fn pause_container(&self, container_id: &str) -> AgentResult<()> {
        named(
            "PauseContainer",
            self.client
                .pause_container(self.ctx(), &container_request(container_id)),
            drop,
        )
    }

    fn resume_container(&self, container_id: &str) -> AgentResult<()> {
        named(
            "ResumeContainer",
            self.client
                .resume_container(self.ctx(), &container_request(container_id)),
            drop,
        )
    }

    fn stats_container(&self, container_id: &str) -> AgentResult<StatsContainerResponse> {
        named(
            "StatsContainer",
            self.client
                .stats_container(self.ctx(), &container_request(container_id)),
            |s| s,
        )
    }

    fn update_container(&self, container_id: &str, resources_json: Vec<u8>) -> AgentResult<()> {
        let mut req = UpdateContainerRequest::new();
        req.container_id = container_id.into();
        req.oci_resources_json = resources_json;
        named(
            "UpdateContainer",
            self.client.update_container(self.ctx(), &req),
            drop,
        )
    }

    fn oom_event(&self) -> AgentResult<String> {
        // Blocks until a container is OOM-killed: no deadline.
        named(
            "GetOomEvent",
            self.client.get_oom_event(Context::default(), &Empty::new()),
            |e| e.container_id,
        )
    }

    fn read_output(
        &self,
        container_id: &str,
        exec_id: &str,
        stream: OutputStream,
        max_bytes: u32,
    ) -> AgentResult<Vec<u8>> {
        let mut req = ReadStreamRequest::new();
        req.container_id = container_id.into();
        req.exec_id = exec_id.into();
        req.max_bytes = max_bytes;
        // Blocks until there is output or its end: no deadline.
        match stream {
            OutputStream::Stdout => named(
                "ReadStdout",
                self.client.read_stdout(Context::default(), &req),
                |r| r.data,
            ),
            OutputStream::Stderr => named(
                "ReadStderr",
                self.client.read_stderr(Context::default(), &req),
                |r| r.data,
            ),
        }
    }

    fn write_stdin(&self, container_id: &str, exec_id: &str, data: &[u8]) -> AgentResult<u32> {
        let mut req = WriteStreamRequest::new();
        req.container_id = container_id.into();
        req.exec_id = exec_id.into();
        req.data = data.to_vec();
        // May wait for the process to read: no deadline.
        named(
            "WriteStdin",
            self.client.write_stdin(Context::default(), &req),
            |r| r.written,
        )
    }

    fn close_stdin(&self, container_id: &str, exec_id: &str) -> AgentResult<()> {
        named(
            "CloseStdin",
            self.client
                .close_stdin(self.ctx(), &process_request(container_id, exec_id)),
            drop,
        )
    }

    fn tty_win_resize(
        &self,
        container_id: &str,
        exec_id: &str,
        rows: u32,
        columns: u32,
    ) -> AgentResult<()> {
        let mut req = TtyWinResizeRequest::new();
        req.container_id = container_id.into();
        req.exec_id = exec_id.into();
        req.rows = rows;
        req.columns = columns;
        named(
            "TtyWinResize",
            self.client.tty_win_resize(self.ctx(), &req),
            drop,
        )
    }
}
