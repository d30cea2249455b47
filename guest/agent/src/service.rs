//! The ttrpc service: decodes requests, calls the sandbox, and turns
//! every error into a ttrpc status whose message names the problem.
//! Handlers never panic on input; blocking calls (wait, reads, OOM
//! long-poll) hold no lock while they block.

use std::sync::Arc;
use std::time::Duration;

use skiff_agent_protocol::agent::*;
use skiff_agent_protocol::agent_ttrpc::AgentService;
use skiff_agent_protocol::PROTOCOL_VERSION;
use ttrpc::{Code, TtrpcContext};

use crate::container::ContainerError;
use crate::hotplug::{Hotplug, HotplugError};
use crate::network::NetworkError;
use crate::sandbox::{Sandbox, SandboxError};

pub struct Service {
    pub sandbox: Arc<Sandbox>,
    /// Host mode: DestroySandbox exits the agent instead of powering off,
    /// and device hotplug is refused (the host's devices are not ours).
    pub host_mode: bool,
    pub hotplug: Hotplug,
}

fn status(code: Code, msg: impl std::fmt::Display) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg.to_string()))
}

fn container_code(e: &ContainerError) -> Code {
    use crate::spec::SpecError;
    match e {
        // A signal to a process that has exited is NOT_FOUND, as runc's
        // "process already finished": containerd's stop paths ignore it (a
        // process may exit just before its kill, before its exit reached
        // the host).
        ContainerError::NotFound(_)
        | ContainerError::ProcessNotFound { .. }
        | ContainerError::Exited(_) => Code::NOT_FOUND,
        ContainerError::AlreadyExists(_) | ContainerError::ExecExists(_) => Code::ALREADY_EXISTS,
        ContainerError::BadState { .. } => Code::FAILED_PRECONDITION,
        ContainerError::BadId(_)
        | ContainerError::BadSignal(_)
        | ContainerError::BadResources(_)
        | ContainerError::Spec(_)
        | ContainerError::Spawn(_) => Code::INVALID_ARGUMENT,
        ContainerError::Cgroup(crate::cgroup::CgroupError::ControllerUnavailable { .. }) => {
            Code::FAILED_PRECONDITION
        }
        ContainerError::Mount(_) => Code::INVALID_ARGUMENT,
        _ if matches!(e, ContainerError::Spec(SpecError::NoRoot)) => Code::INVALID_ARGUMENT,
        _ => Code::INTERNAL,
    }
}

fn cerr(e: ContainerError) -> ttrpc::Error {
    tracing::warn!("request failed: {e}");
    status(container_code(&e), e)
}

fn serr(e: SandboxError) -> ttrpc::Error {
    tracing::warn!("request failed: {e}");
    let code = match &e {
        SandboxError::AlreadyCreated => Code::ALREADY_EXISTS,
        SandboxError::Container(c) => container_code(c),
        SandboxError::Mount(_) | SandboxError::Hostname { .. } => Code::INVALID_ARGUMENT,
        _ => Code::INTERNAL,
    };
    status(code, e)
}

fn nerr(e: NetworkError) -> ttrpc::Error {
    use nix::errno::Errno;
    tracing::warn!("request failed: {e}");
    let code = match &e {
        NetworkError::Invalid(_) => Code::INVALID_ARGUMENT,
        NetworkError::NotFound(_) => Code::NOT_FOUND,
        NetworkError::Kernel { .. } => match e.errno() {
            // A bad MTU, an unreachable gateway, an address the device
            // cannot take.
            Some(
                Errno::EINVAL
                | Errno::ERANGE
                | Errno::ENETUNREACH
                | Errno::EADDRNOTAVAIL
                | Errno::EAFNOSUPPORT,
            ) => Code::INVALID_ARGUMENT,
            Some(Errno::ENODEV) => Code::NOT_FOUND,
            Some(Errno::EEXIST) => Code::ALREADY_EXISTS,
            // A route on a device that is down.
            Some(Errno::ENETDOWN) => Code::FAILED_PRECONDITION,
            _ => Code::INTERNAL,
        },
    };
    status(code, e)
}

fn herr(e: HotplugError) -> ttrpc::Error {
    tracing::warn!("request failed: {e}");
    let code = match e {
        HotplugError::NoSuchSlot(_) => Code::NOT_FOUND,
        HotplugError::AlreadyBound(_) => Code::ALREADY_EXISTS,
        HotplugError::NotBound(_) | HotplugError::Mounted { .. } | HotplugError::Bind { .. } => {
            Code::FAILED_PRECONDITION
        }
        HotplugError::Unbind { .. } | HotplugError::Timeout { .. } | HotplugError::Read { .. } => {
            Code::INTERNAL
        }
    };
    status(code, e)
}

type R<T> = ttrpc::Result<T>;

impl Service {
    fn hotplug(&self) -> R<&Hotplug> {
        if self.host_mode {
            return Err(status(
                Code::FAILED_PRECONDITION,
                "device hotplug is served only in a VM",
            ));
        }
        Ok(&self.hotplug)
    }

    fn process(&self, container_id: &str, exec_id: &str) -> R<Arc<crate::container::Process>> {
        self.sandbox
            .container(container_id)
            .and_then(|c| c.process(exec_id))
            .map_err(cerr)
    }
}

impl AgentService for Service {
    fn create_sandbox(&self, _: &TtrpcContext, req: CreateSandboxRequest) -> R<Empty> {
        self.sandbox.create(&req).map_err(serr)?;
        Ok(Empty::new())
    }

    fn destroy_sandbox(&self, _: &TtrpcContext, _: Empty) -> R<Empty> {
        self.sandbox.destroy();
        let host_mode = self.host_mode;
        // Power off once the reply is on its way.
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            if host_mode {
                tracing::info!("sandbox destroyed, exiting");
                std::process::exit(0);
            }
            crate::init::power_off();
        });
        Ok(Empty::new())
    }

    fn get_guest_details(&self, _: &TtrpcContext, _: Empty) -> R<GuestDetailsResponse> {
        let mut r = GuestDetailsResponse::new();
        r.agent_version = env!("CARGO_PKG_VERSION").into();
        r.kernel_release = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        r.online_cpus = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        r.memory_total_bytes = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| crate::cgroup::parse_flat_keyed(&m.replace(':', ""), "MemTotal"))
            .unwrap_or(0)
            * 1024;
        r.cgroup_controllers = self.sandbox.cgroups.controllers();
        Ok(r)
    }

    fn set_guest_date_time(&self, _: &TtrpcContext, req: SetGuestDateTimeRequest) -> R<Empty> {
        crate::sandbox::set_time(req.seconds, req.microseconds).map_err(serr)?;
        Ok(Empty::new())
    }

    fn reseed_random_dev(&self, _: &TtrpcContext, req: ReseedRandomDevRequest) -> R<Empty> {
        crate::entropy::reseed(&req.data).map_err(|e| {
            tracing::warn!("request failed: {e}");
            let code = match e {
                crate::entropy::EntropyError::Size { .. } => Code::INVALID_ARGUMENT,
                _ => Code::INTERNAL,
            };
            status(code, e)
        })?;
        Ok(Empty::new())
    }

    fn check(&self, _: &TtrpcContext, _: CheckRequest) -> R<HealthCheckResponse> {
        let mut r = HealthCheckResponse::new();
        r.status = health_check_response::ServingStatus::SERVING.into();
        Ok(r)
    }

    fn version(&self, _: &TtrpcContext, _: CheckRequest) -> R<VersionCheckResponse> {
        let mut r = VersionCheckResponse::new();
        r.protocol_version = PROTOCOL_VERSION;
        r.agent_version = env!("CARGO_PKG_VERSION").into();
        Ok(r)
    }

    fn create_container(&self, _: &TtrpcContext, req: CreateContainerRequest) -> R<Empty> {
        self.sandbox
            .create_container(
                &req.container_id,
                &req.oci_spec_json,
                &req.storages,
                &req.namespaces_of,
                &req.join_namespaces,
            )
            .map_err(cerr)?;
        Ok(Empty::new())
    }

    fn start_container(&self, _: &TtrpcContext, req: ContainerRequest) -> R<Empty> {
        let c = self.sandbox.container(&req.container_id).map_err(cerr)?;
        c.start(&self.sandbox.reaper).map_err(cerr)?;
        Ok(Empty::new())
    }

    fn remove_container(&self, _: &TtrpcContext, req: RemoveContainerRequest) -> R<Empty> {
        self.sandbox
            .remove_container(&req.container_id, req.timeout_seconds)
            .map_err(cerr)?;
        Ok(Empty::new())
    }

    fn exec_process(&self, _: &TtrpcContext, req: ExecProcessRequest) -> R<Empty> {
        let c = self.sandbox.container(&req.container_id).map_err(cerr)?;
        c.exec(&req.exec_id, &req.oci_process_json, &self.sandbox.reaper)
            .map_err(cerr)?;
        Ok(Empty::new())
    }

    fn signal_process(&self, _: &TtrpcContext, req: SignalProcessRequest) -> R<Empty> {
        let c = self.sandbox.container(&req.container_id).map_err(cerr)?;
        c.signal(&req.exec_id, req.signal, req.all, &self.sandbox.reaper)
            .map_err(cerr)?;
        Ok(Empty::new())
    }

    fn wait_process(&self, _: &TtrpcContext, req: ProcessRequest) -> R<WaitProcessResponse> {
        let p = self.process(&req.container_id, &req.exec_id)?;
        let mut r = WaitProcessResponse::new();
        r.exit_status = self.sandbox.reaper.wait(p.pid, None).unwrap_or(255);
        Ok(r)
    }

    fn update_container(&self, _: &TtrpcContext, req: UpdateContainerRequest) -> R<Empty> {
        let c = self.sandbox.container(&req.container_id).map_err(cerr)?;
        c.update(&req.oci_resources_json).map_err(cerr)?;
        Ok(Empty::new())
    }

    fn stats_container(
        &self,
        _: &TtrpcContext,
        req: ContainerRequest,
    ) -> R<StatsContainerResponse> {
        let c = self.sandbox.container(&req.container_id).map_err(cerr)?;
        let s = c.cgroup().stats();
        let mut r = StatsContainerResponse::new();
        let cpu = r.cpu.mut_or_insert_default();
        cpu.usage_usec = s.cpu_usage_usec;
        cpu.user_usec = s.cpu_user_usec;
        cpu.system_usec = s.cpu_system_usec;
        cpu.nr_throttled = s.cpu_nr_throttled;
        cpu.throttled_usec = s.cpu_throttled_usec;
        let mem = r.memory.mut_or_insert_default();
        mem.available = s.memory_available;
        mem.usage_bytes = s.memory_usage;
        mem.limit_bytes = s.memory_limit;
        mem.anon_bytes = s.memory_anon;
        mem.file_bytes = s.memory_file;
        mem.oom_kills = s.memory_oom_kills;
        let pids = r.pids.mut_or_insert_default();
        pids.current = s.pids_current;
        pids.limit = s.pids_limit;
        Ok(r)
    }

    fn pause_container(&self, _: &TtrpcContext, req: ContainerRequest) -> R<Empty> {
        let c = self.sandbox.container(&req.container_id).map_err(cerr)?;
        c.pause(&self.sandbox.reaper).map_err(cerr)?;
        Ok(Empty::new())
    }

    fn resume_container(&self, _: &TtrpcContext, req: ContainerRequest) -> R<Empty> {
        let c = self.sandbox.container(&req.container_id).map_err(cerr)?;
        c.resume(&self.sandbox.reaper).map_err(cerr)?;
        Ok(Empty::new())
    }

    fn write_stdin(&self, _: &TtrpcContext, req: WriteStreamRequest) -> R<WriteStreamResponse> {
        let p = self.process(&req.container_id, &req.exec_id)?;
        let n = p.io.write_stdin(&req.data).map_err(|e| cerr(e.into()))?;
        let mut r = WriteStreamResponse::new();
        r.written = n as u32;
        Ok(r)
    }

    fn read_stdout(&self, _: &TtrpcContext, req: ReadStreamRequest) -> R<ReadStreamResponse> {
        let p = self.process(&req.container_id, &req.exec_id)?;
        let mut r = ReadStreamResponse::new();
        r.data =
            p.io.read_stdout(req.max_bytes as usize)
                .map_err(|e| cerr(e.into()))?;
        Ok(r)
    }

    fn read_stderr(&self, _: &TtrpcContext, req: ReadStreamRequest) -> R<ReadStreamResponse> {
        let p = self.process(&req.container_id, &req.exec_id)?;
        let mut r = ReadStreamResponse::new();
        r.data =
            p.io.read_stderr(req.max_bytes as usize)
                .map_err(|e| cerr(e.into()))?;
        Ok(r)
    }

    fn close_stdin(&self, _: &TtrpcContext, req: ProcessRequest) -> R<Empty> {
        self.process(&req.container_id, &req.exec_id)?
            .io
            .close_stdin();
        Ok(Empty::new())
    }

    fn tty_win_resize(&self, _: &TtrpcContext, req: TtyWinResizeRequest) -> R<Empty> {
        let p = self.process(&req.container_id, &req.exec_id)?;
        let rows =
            u16::try_from(req.rows).map_err(|_| status(Code::INVALID_ARGUMENT, "rows > 65535"))?;
        let cols = u16::try_from(req.columns)
            .map_err(|_| status(Code::INVALID_ARGUMENT, "columns > 65535"))?;
        p.io.resize(rows, cols).map_err(|e| cerr(e.into()))?;
        Ok(Empty::new())
    }

    fn get_oom_event(&self, _: &TtrpcContext, _: Empty) -> R<OomEvent> {
        let mut r = OomEvent::new();
        r.container_id = self.sandbox.oom.next_event();
        Ok(r)
    }

    fn update_interface(&self, _: &TtrpcContext, req: Interface) -> R<Interface> {
        crate::network::update_interface(&req).map_err(nerr)
    }

    fn update_routes(&self, _: &TtrpcContext, req: Routes) -> R<Routes> {
        let mut r = Routes::new();
        r.routes = crate::network::update_routes(&req.routes).map_err(nerr)?;
        Ok(r)
    }

    fn list_interfaces(&self, _: &TtrpcContext, _: Empty) -> R<Interfaces> {
        let mut r = Interfaces::new();
        r.interfaces = crate::network::list_interfaces().map_err(nerr)?;
        Ok(r)
    }

    fn list_routes(&self, _: &TtrpcContext, _: Empty) -> R<Routes> {
        let mut r = Routes::new();
        r.routes = crate::network::list_routes().map_err(nerr)?;
        Ok(r)
    }

    fn copy_file(&self, _: &TtrpcContext, req: CopyFileRequest) -> R<Empty> {
        crate::files::copy_file(&req).map_err(|e| {
            let code = match e {
                crate::files::FileError::Io { .. } => Code::INTERNAL,
                _ => Code::INVALID_ARGUMENT,
            };
            status(code, e)
        })?;
        Ok(Empty::new())
    }

    fn add_device(&self, _: &TtrpcContext, req: DeviceRequest) -> R<GuestDevice> {
        self.hotplug()?.add(req.mmio_slot).map_err(herr)
    }

    fn remove_device(&self, _: &TtrpcContext, req: DeviceRequest) -> R<Empty> {
        self.hotplug()?.remove(req.mmio_slot).map_err(herr)?;
        Ok(Empty::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_to_an_exited_process_is_not_found_as_under_runc() {
        assert_eq!(container_code(&ContainerError::Exited(40)), Code::NOT_FOUND);
        let paused = ContainerError::BadState {
            id: "c".into(),
            state: "paused",
            op: "start",
        };
        assert_eq!(container_code(&paused), Code::FAILED_PRECONDITION);
    }
}
