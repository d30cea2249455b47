//! containerd's task API v2 on top of a Skiff sandbox: each call maps to
//! the runtime (VM, shares) and the guest agent.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use containerd_shim::api::{self, Status};
use containerd_shim::event::Event;
use containerd_shim::protos::cgroups_v2::metrics::{
    CPUStat, MemoryEvents, MemoryStat, Metrics, PidsStat,
};
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{Message, MessageField};
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::{self, Code};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{ExitSignal, TtrpcContext, TtrpcResult};
use skiff_agent_protocol::agent::{
    ContainerRequest, Empty, ExecProcessRequest, ProcessRequest, SignalProcessRequest,
    TtyWinResizeRequest, UpdateContainerRequest,
};
use skiff_runtime::network;
use skiff_runtime::sandbox::{annotations, check_host_devices, sandbox_id_of};
use skiff_runtime::stdio::{Relays, StdioPaths};
use skiff_runtime::{spec, RuntimeConfig, Sandbox};

use crate::options;
use crate::process::{Exit, Process};

/// How long an exit waits for the process's output to drain before it is
/// reported anyway (a background child may keep the streams open).
const OUTPUT_DRAIN: Duration = Duration::from_secs(5);

fn status(code: Code, msg: impl ToString) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg))
}

fn internal(e: impl std::fmt::Display) -> ttrpc::Error {
    status(Code::INTERNAL, e.to_string())
}

/// An agent call's error, passed on with its status code and message.
fn from_agent(what: &str, e: ttrpc::Error) -> ttrpc::Error {
    match e {
        ttrpc::Error::RpcStatus(s) => status(
            s.code.enum_value_or(Code::UNKNOWN),
            format!("{what}: {}", s.message),
        ),
        other => status(
            Code::UNAVAILABLE,
            format!("{what}: agent unreachable: {other}"),
        ),
    }
}

fn not_found(what: &str) -> ttrpc::Error {
    status(Code::NOT_FOUND, format!("{what} not found"))
}

struct Container {
    bundle: PathBuf,
    init: Arc<Process>,
    execs: HashMap<String, Arc<Process>>,
    /// We mounted containerd's rootfs mounts on `bundle/rootfs`.
    mounted_rootfs: bool,
}

struct Inner {
    namespace: String,
    publisher: RemotePublisher,
    exit: Arc<ExitSignal>,
    /// The pod's VM: booted by the first Create, shut down when the
    /// sandbox's own container is deleted.
    sandbox: Mutex<Option<Arc<Sandbox>>>,
    containers: Mutex<HashMap<String, Container>>,
}

#[derive(Clone)]
pub struct TaskService(Arc<Inner>);

impl TaskService {
    pub fn new(namespace: String, publisher: RemotePublisher, exit: Arc<ExitSignal>) -> Self {
        Self(Arc::new(Inner {
            namespace,
            publisher,
            exit,
            sandbox: Mutex::new(None),
            containers: Mutex::new(HashMap::new()),
        }))
    }
}

impl Inner {
    fn publish(&self, topic: &str, event: Box<dyn Event>) {
        let ctx = ttrpc::context::with_timeout(Duration::from_secs(5).as_nanos() as i64);
        if let Err(e) = self.publisher.publish(ctx, topic, &self.namespace, event) {
            tracing::warn!("publish {topic}: {e}");
        }
    }

    fn containers(&self) -> std::sync::MutexGuard<'_, HashMap<String, Container>> {
        self.containers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sandbox(&self) -> TtrpcResult<Arc<Sandbox>> {
        self.sandbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| status(Code::FAILED_PRECONDITION, "the sandbox VM is not running"))
    }

    fn process(&self, id: &str, exec_id: &str) -> TtrpcResult<Arc<Process>> {
        let containers = self.containers();
        let c = containers
            .get(id)
            .ok_or_else(|| not_found(&format!("container {id}")))?;
        if exec_id.is_empty() {
            return Ok(c.init.clone());
        }
        c.execs
            .get(exec_id)
            .cloned()
            .ok_or_else(|| not_found(&format!("exec {exec_id} in container {id}")))
    }

    /// Follows a started process until the agent reports its exit, lets
    /// its output drain, then records and publishes the exit.
    fn watch_exit(
        self: &Arc<Self>,
        sandbox: Arc<Sandbox>,
        process: Arc<Process>,
        mut relays: Relays,
    ) {
        let inner = self.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("wait-{}", process.container_id))
            .spawn(move || {
                let mut req = ProcessRequest::new();
                req.container_id = process.container_id.clone();
                req.exec_id = process.exec_id.clone();
                // Blocks in the agent until the process exits: no deadline.
                let code = match sandbox
                    .agent()
                    .wait_process(ttrpc::context::Context::default(), &req)
                {
                    Ok(r) => r.exit_status as u32,
                    Err(e) => {
                        tracing::warn!(
                            "wait for {}/{}: {e}",
                            process.container_id,
                            process.exec_id
                        );
                        255
                    }
                };
                if !relays.wait_output(OUTPUT_DRAIN) {
                    tracing::info!("{}: output still open after exit", process.container_id);
                }
                let at = Timestamp::now();
                process.set_exited(Exit {
                    status: code,
                    at: at.clone(),
                });
                let id = if process.exec_id.is_empty() {
                    process.container_id.clone()
                } else {
                    process.exec_id.clone()
                };
                inner.publish(
                    topics::TASK_EXIT_EVENT_TOPIC,
                    Box::new(TaskExit {
                        container_id: process.container_id.clone(),
                        id,
                        pid: std::process::id(),
                        exit_status: code,
                        exited_at: MessageField::some(at),
                        ..Default::default()
                    }),
                );
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start exit watcher: {e}");
        }
    }

    /// Forwards the guest's OOM kills as TaskOOM events while the VM lives.
    fn watch_oom(self: &Arc<Self>, sandbox: Arc<Sandbox>) {
        let inner = self.clone();
        let _ = std::thread::Builder::new()
            .name("oom-events".into())
            .spawn(move || {
                while let Ok(event) = sandbox
                    .agent()
                    .get_oom_event(ttrpc::context::Context::default(), &Empty::new())
                {
                    tracing::info!("container {} was OOM-killed", event.container_id);
                    inner.publish(
                        topics::TASK_OOM_EVENT_TOPIC,
                        Box::new(TaskOOM {
                            container_id: event.container_id,
                            ..Default::default()
                        }),
                    );
                }
            });
    }

    /// The pod's sandbox, booted now if this is its first container.
    fn ensure_sandbox(
        self: &Arc<Self>,
        sandbox_id: &str,
        spec: &oci_spec::runtime::Spec,
        config: &RuntimeConfig,
        origin: Instant,
    ) -> TtrpcResult<(Arc<Sandbox>, bool)> {
        let mut slot = self.sandbox.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sandbox) = slot.as_ref() {
            if sandbox.id() != sandbox_id {
                return Err(status(
                    Code::FAILED_PRECONDITION,
                    format!("this shim runs sandbox {}, not {sandbox_id}", sandbox.id()),
                ));
            }
            return Ok((sandbox.clone(), false));
        }
        let hostname = spec
            .hostname()
            .clone()
            .unwrap_or_else(|| sandbox_id.to_string());
        let pod_network = match network::netns_of(spec) {
            Some(netns) => Some(network::inspect(&netns).map_err(|e| {
                status(
                    Code::UNKNOWN,
                    format!("sandbox {sandbox_id}: pod network: {e}"),
                )
            })?),
            None => {
                tracing::info!(
                    "sandbox {sandbox_id} has no network namespace: the VM gets no network interface"
                );
                None
            }
        };
        let cgroups_path = spec.linux().as_ref().and_then(|l| l.cgroups_path().clone());
        let cgroups_path = cgroups_path.as_deref().and_then(|p| p.to_str());
        let sandbox = Sandbox::boot(
            sandbox_id,
            &hostname,
            config,
            pod_network,
            cgroups_path,
            origin,
        )
        .map(Arc::new)
        .map_err(|e| status(Code::UNKNOWN, format!("boot sandbox {sandbox_id}: {e}")))?;
        tracing::info!("sandbox {sandbox_id} boot timeline: {}", sandbox.timeline());
        *slot = Some(sandbox.clone());
        self.watch_oom(sandbox.clone());
        Ok((sandbox, true))
    }

    fn shutdown_sandbox(&self) {
        let sandbox = self
            .sandbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(sandbox) = sandbox {
            if let Err(e) = sandbox.shutdown() {
                tracing::error!("shut down sandbox {}: {e}", sandbox.id());
            }
        }
    }

    fn create(self: &Arc<Self>, req: &api::CreateTaskRequest) -> TtrpcResult<u32> {
        let origin = Instant::now();
        if !req.checkpoint.is_empty() {
            return Err(status(
                Code::UNIMPLEMENTED,
                "restoring from a checkpoint is not supported by Skiff",
            ));
        }
        if self.containers().contains_key(&req.id) {
            return Err(status(
                Code::ALREADY_EXISTS,
                format!("container {} already exists", req.id),
            ));
        }
        let invalid = |e: &dyn std::fmt::Display| status(Code::INVALID_ARGUMENT, e.to_string());
        let config_path = options::config_path(req.options.as_ref()).map_err(|e| invalid(&e))?;
        let config = RuntimeConfig::load(config_path.as_deref()).map_err(|e| invalid(&e))?;
        let bundle = PathBuf::from(&req.bundle);
        let spec = spec::load(&bundle).map_err(|e| invalid(&e))?;
        check_host_devices(&spec).map_err(|e| invalid(&e))?;
        let sandbox_id = sandbox_id_of(&spec, &req.id);
        let root = spec
            .root()
            .as_ref()
            .map(|r| bundle.join(r.path()))
            .ok_or_else(|| invalid(&"the OCI spec has no root"))?;

        let mounted_rootfs = !req.rootfs.is_empty();
        let undo_rootfs = || {
            if mounted_rootfs {
                let _ = containerd_shim::mount::umount_recursive(root.to_str(), libc::MNT_DETACH);
            }
        };
        let mounted = req.rootfs.iter().try_for_each(|m| {
            containerd_shim::mount::mount_rootfs(Some(&m.type_), Some(&m.source), &m.options, &root)
                .map_err(|e| internal(format!("mount rootfs on {}: {e}", root.display())))
        });
        // The guest writes this tree through the share: the host must
        // never honour a setuid file or device node it made there.
        let mounted = mounted.and_then(|()| match mounted_rootfs {
            true => skiff_runtime::share::harden_mount(&root).map_err(|e| internal(e.to_string())),
            false => Ok(()),
        });
        if let Err(e) = mounted {
            undo_rootfs();
            return Err(e);
        }
        if !root.is_dir() {
            undo_rootfs();
            return Err(invalid(&format!(
                "rootfs {} does not exist",
                root.display()
            )));
        }
        let is_pod_member = spec
            .annotations()
            .as_ref()
            .and_then(|a| a.get(annotations::CONTAINER_TYPE))
            .is_some_and(|t| t == annotations::TYPE_CONTAINER);
        let (sandbox, booted) = match self.ensure_sandbox(&sandbox_id, &spec, &config, origin) {
            Ok(s) => s,
            Err(e) => {
                undo_rootfs();
                return Err(e);
            }
        };
        if booted && is_pod_member {
            tracing::warn!(
                "container {} arrived before its pod's sandbox {sandbox_id}",
                req.id
            );
        }
        if let Err(e) = sandbox.create_container(&req.id, &bundle, &root, spec) {
            undo_rootfs();
            if booted {
                self.shutdown_sandbox();
            }
            return Err(status(
                Code::UNKNOWN,
                format!("create container {}: {e}", req.id),
            ));
        }
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let init = Arc::new(Process::new(&req.id, "", stdio, Vec::new()));
        self.containers().insert(
            req.id.clone(),
            Container {
                bundle: bundle.clone(),
                init,
                execs: HashMap::new(),
                mounted_rootfs,
            },
        );
        tracing::info!(
            "container {} created in sandbox {sandbox_id} ({:.1} ms)",
            req.id,
            origin.elapsed().as_secs_f64() * 1e3
        );
        self.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            Box::new(TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: MessageField::some(TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    ..Default::default()
                }),
                pid: std::process::id(),
                ..Default::default()
            }),
        );
        Ok(std::process::id())
    }

    fn start(self: &Arc<Self>, id: &str, exec_id: &str) -> TtrpcResult<()> {
        let origin = Instant::now();
        let process = self.process(id, exec_id)?;
        if process.status() != Status::CREATED {
            return Err(status(
                Code::FAILED_PRECONDITION,
                format!("process {id}/{exec_id} was already started"),
            ));
        }
        let sandbox = self.sandbox()?;
        if exec_id.is_empty() {
            sandbox.start_container(id).map_err(internal)?;
        } else {
            let mut req = ExecProcessRequest::new();
            req.container_id = id.into();
            req.exec_id = exec_id.into();
            req.oci_process_json = process.spec_json.clone();
            sandbox
                .agent()
                .exec_process(sandbox.ctx(), &req)
                .map_err(|e| from_agent(&format!("exec in {id}"), e))?;
        }
        process.set_status(Status::RUNNING);
        let relays =
            Relays::start(sandbox.agent(), id, exec_id, &process.stdio).map_err(internal)?;
        self.watch_exit(sandbox, process, relays);
        let pid = std::process::id();
        if exec_id.is_empty() {
            tracing::info!(
                "container {id} started ({:.1} ms)",
                origin.elapsed().as_secs_f64() * 1e3
            );
            self.publish(
                topics::TASK_START_EVENT_TOPIC,
                Box::new(TaskStart {
                    container_id: id.into(),
                    pid,
                    ..Default::default()
                }),
            );
        } else {
            self.publish(
                topics::TASK_EXEC_STARTED_EVENT_TOPIC,
                Box::new(TaskExecStarted {
                    container_id: id.into(),
                    exec_id: exec_id.into(),
                    pid,
                    ..Default::default()
                }),
            );
        }
        Ok(())
    }

    fn delete(&self, id: &str, exec_id: &str) -> TtrpcResult<api::DeleteResponse> {
        let process = self.process(id, exec_id)?;
        if process.status() == Status::RUNNING || process.status() == Status::PAUSED {
            return Err(status(
                Code::FAILED_PRECONDITION,
                format!("process {id}/{exec_id} is still running: kill it first"),
            ));
        }
        let exit = process.exit().unwrap_or(Exit {
            status: 0,
            at: Timestamp::now(),
        });
        let response = api::DeleteResponse {
            pid: std::process::id(),
            exit_status: exit.status,
            exited_at: MessageField::some(exit.at.clone()),
            ..Default::default()
        };
        if !exec_id.is_empty() {
            if let Some(c) = self.containers().get_mut(id) {
                c.execs.remove(exec_id);
            }
            return Ok(response);
        }
        let sandbox = self.sandbox()?;
        let removed = sandbox.remove_container(id);
        let container = self.containers().remove(id);
        if let Some(c) = &container {
            if c.mounted_rootfs {
                let rootfs = c.bundle.join("rootfs");
                if let Err(e) =
                    containerd_shim::mount::umount_recursive(rootfs.to_str(), libc::MNT_DETACH)
                {
                    tracing::warn!("unmount {}: {e}", rootfs.display());
                }
            }
        }
        // The VM lives as long as the pod's own container.
        if id == sandbox.id() {
            self.shutdown_sandbox();
        }
        if let Err(e) = removed {
            tracing::warn!("remove container {id}: {e}");
        }
        self.publish(
            topics::TASK_DELETE_EVENT_TOPIC,
            Box::new(TaskDelete {
                container_id: id.into(),
                pid: response.pid,
                exit_status: response.exit_status,
                exited_at: response.exited_at.clone(),
                id: id.into(),
                ..Default::default()
            }),
        );
        Ok(response)
    }
}

fn timestamp_field(exit: &Option<Exit>) -> MessageField<Timestamp> {
    exit.as_ref()
        .map(|e| MessageField::some(e.at.clone()))
        .unwrap_or_default()
}

fn container_request(id: &str) -> ContainerRequest {
    let mut req = ContainerRequest::new();
    req.container_id = id.into();
    req
}

impl containerd_shim::Task for TaskService {
    fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let p = self.0.process(&req.id, &req.exec_id)?;
        let bundle = self
            .0
            .containers()
            .get(&req.id)
            .map(|c| c.bundle.display().to_string())
            .unwrap_or_default();
        let exit = p.exit();
        Ok(api::StateResponse {
            id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            bundle,
            pid: std::process::id(),
            status: p.status().into(),
            stdin: p.stdio.stdin.clone(),
            stdout: p.stdio.stdout.clone(),
            stderr: p.stdio.stderr.clone(),
            terminal: p.stdio.terminal,
            exit_status: exit.as_ref().map_or(0, |e| e.status),
            exited_at: timestamp_field(&exit),
            ..Default::default()
        })
    }

    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        tracing::info!("create {} (bundle {})", req.id, req.bundle);
        let pid = self
            .0
            .create(&req)
            .inspect_err(|e| tracing::error!("create {}: {e:?}", req.id))?;
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        self.0.start(&req.id, &req.exec_id)?;
        Ok(api::StartResponse {
            pid: std::process::id(),
            ..Default::default()
        })
    }

    fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        self.0.delete(&req.id, &req.exec_id)
    }

    fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        self.0.process(&req.id, "")?;
        // Container processes live in the guest; the host-side process that
        // stands for them is the shim.
        Ok(api::PidsResponse {
            processes: vec![containerd_shim::protos::types::task::ProcessInfo {
                pid: std::process::id(),
                ..Default::default()
            }],
            ..Default::default()
        })
    }

    fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        let p = self.0.process(&req.id, "")?;
        let sandbox = self.0.sandbox()?;
        sandbox
            .agent()
            .pause_container(sandbox.ctx(), &container_request(&req.id))
            .map_err(|e| from_agent("pause container", e))?;
        p.set_status(Status::PAUSED);
        self.0.publish(
            topics::TASK_PAUSED_EVENT_TOPIC,
            Box::new(TaskPaused {
                container_id: req.id.clone(),
                ..Default::default()
            }),
        );
        Ok(api::Empty::new())
    }

    fn resume(&self, _ctx: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        let p = self.0.process(&req.id, "")?;
        let sandbox = self.0.sandbox()?;
        sandbox
            .agent()
            .resume_container(sandbox.ctx(), &container_request(&req.id))
            .map_err(|e| from_agent("resume container", e))?;
        p.set_status(Status::RUNNING);
        self.0.publish(
            topics::TASK_RESUMED_EVENT_TOPIC,
            Box::new(TaskResumed {
                container_id: req.id.clone(),
                ..Default::default()
            }),
        );
        Ok(api::Empty::new())
    }

    fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        _req: api::CheckpointTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        Err(status(
            Code::UNIMPLEMENTED,
            "checkpoint is not supported by Skiff: the container runs inside a VM",
        ))
    }

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        let p = self.0.process(&req.id, &req.exec_id)?;
        if p.exit().is_some() {
            return Err(not_found(&format!(
                "process {}/{} (already exited)",
                req.id, req.exec_id
            )));
        }
        let sandbox = self.0.sandbox()?;
        let mut signal = SignalProcessRequest::new();
        signal.container_id = req.id.clone();
        signal.exec_id = req.exec_id.clone();
        signal.signal = req.signal;
        signal.all = req.all;
        sandbox
            .agent()
            .signal_process(sandbox.ctx(), &signal)
            .map_err(|e| from_agent("signal process", e))?;
        Ok(api::Empty::new())
    }

    fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<api::Empty> {
        let spec_json = req
            .spec
            .as_ref()
            .map(|s| s.value.clone())
            .unwrap_or_default();
        if spec_json.is_empty() {
            return Err(status(
                Code::INVALID_ARGUMENT,
                "exec without a process spec",
            ));
        }
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        {
            let mut containers = self.0.containers();
            let c = containers
                .get_mut(&req.id)
                .ok_or_else(|| not_found(&format!("container {}", req.id)))?;
            if c.execs.contains_key(&req.exec_id) {
                return Err(status(
                    Code::ALREADY_EXISTS,
                    format!("exec {} already exists", req.exec_id),
                ));
            }
            let process = Process::new(&req.id, &req.exec_id, stdio, spec_json);
            c.execs.insert(req.exec_id.clone(), Arc::new(process));
        }
        self.0.publish(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            Box::new(TaskExecAdded {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            }),
        );
        Ok(api::Empty::new())
    }

    fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        self.0.process(&req.id, &req.exec_id)?;
        let sandbox = self.0.sandbox()?;
        let mut resize = TtyWinResizeRequest::new();
        resize.container_id = req.id.clone();
        resize.exec_id = req.exec_id.clone();
        resize.rows = req.height;
        resize.columns = req.width;
        sandbox
            .agent()
            .tty_win_resize(sandbox.ctx(), &resize)
            .map_err(|e| from_agent("tty win resize", e))?;
        Ok(api::Empty::new())
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        self.0.process(&req.id, &req.exec_id)?;
        if req.stdin {
            let sandbox = self.0.sandbox()?;
            let mut close = ProcessRequest::new();
            close.container_id = req.id.clone();
            close.exec_id = req.exec_id.clone();
            sandbox
                .agent()
                .close_stdin(sandbox.ctx(), &close)
                .map_err(|e| from_agent("close stdin", e))?;
        }
        Ok(api::Empty::new())
    }

    fn update(&self, _ctx: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<api::Empty> {
        self.0.process(&req.id, "")?;
        let sandbox = self.0.sandbox()?;
        let mut update = UpdateContainerRequest::new();
        update.container_id = req.id.clone();
        // containerd sends OCI LinuxResources as JSON in the Any.
        update.oci_resources_json = req
            .resources
            .as_ref()
            .map(|r| r.value.clone())
            .unwrap_or_default();
        sandbox
            .agent()
            .update_container(sandbox.ctx(), &update)
            .map_err(|e| from_agent(&format!("update {}", req.id), e))?;
        Ok(api::Empty::new())
    }

    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        let p = self.0.process(&req.id, &req.exec_id)?;
        let exit = p.wait();
        Ok(api::WaitResponse {
            exit_status: exit.status,
            exited_at: MessageField::some(exit.at),
            ..Default::default()
        })
    }

    fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        self.0.process(&req.id, "")?;
        let sandbox = self.0.sandbox()?;
        let s = sandbox
            .agent()
            .stats_container(sandbox.ctx(), &container_request(&req.id))
            .map_err(|e| from_agent("stats container", e))?;
        let metrics = Metrics {
            cpu: MessageField::some(CPUStat {
                usage_usec: s.cpu.usage_usec,
                user_usec: s.cpu.user_usec,
                system_usec: s.cpu.system_usec,
                nr_throttled: s.cpu.nr_throttled,
                throttled_usec: s.cpu.throttled_usec,
                ..Default::default()
            }),
            memory: MessageField::some(MemoryStat {
                usage: s.memory.usage_bytes,
                usage_limit: s.memory.limit_bytes,
                anon: s.memory.anon_bytes,
                file: s.memory.file_bytes,
                ..Default::default()
            }),
            memory_events: MessageField::some(MemoryEvents {
                oom_kill: s.memory.oom_kills,
                ..Default::default()
            }),
            pids: MessageField::some(PidsStat {
                current: s.pids.current,
                limit: s.pids.limit,
                ..Default::default()
            }),
            ..Default::default()
        };
        let any = Any {
            type_url: "io.containerd.cgroups.v2.Metrics".into(),
            value: metrics.write_to_bytes().map_err(internal)?,
            ..Default::default()
        };
        Ok(api::StatsResponse {
            stats: MessageField::some(any),
            ..Default::default()
        })
    }

    fn connect(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        if !self.0.containers().is_empty() {
            return Ok(api::Empty::new());
        }
        self.0.shutdown_sandbox();
        self.0.exit.signal();
        Ok(api::Empty::new())
    }
}
