//! containerd's task API v2, translated to and from the runtime's
//! container manager ([`skiff_runtime::Pod`]): each request becomes one
//! `Pod` call, each answer and error a task API response with its status
//! code, and each state change a task event (the pod's own events, exits
//! and OOM kills, arrive on its channel). The shim's own job beside that
//! is the containers' root filesystems on the host ([`crate::rootfs`]).
//!
//! Container processes live in the guest; the host process that stands
//! for each of them is the shim, so every pid here is the shim's.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
use skiff_runtime::pod::{ContainerStats, ErrorKind, Exit, NewContainer, ProcessStatus};
use skiff_runtime::stdio::StdioPaths;
use skiff_runtime::{spec, Pod, PodError, PodEvent, RuntimeConfig, VmSandboxes};

use crate::options;
use crate::rootfs::Rootfs;

/// How long publishing one event may take before it is dropped (logged).
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a shim whose VM has ended waits for containerd's last Delete
/// and Shutdown before it exits on its own: no shim outlives its pod
/// because a call never came (containerd 1.6 sends no Shutdown when a
/// Delete it timed out on was done by the shim meanwhile, and cleans up
/// after a shim that is gone with `shim delete`).
const ORPHAN_EXIT: Duration = Duration::from_secs(30);

fn status(code: Code, msg: impl ToString) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg))
}

fn invalid(e: impl ToString) -> ttrpc::Error {
    status(Code::INVALID_ARGUMENT, e)
}

fn code_of(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::InvalidArgument => Code::INVALID_ARGUMENT,
        ErrorKind::NotFound => Code::NOT_FOUND,
        ErrorKind::AlreadyExists => Code::ALREADY_EXISTS,
        ErrorKind::FailedPrecondition => Code::FAILED_PRECONDITION,
        ErrorKind::Unimplemented => Code::UNIMPLEMENTED,
        ErrorKind::Unavailable => Code::UNAVAILABLE,
        ErrorKind::DeadlineExceeded => Code::DEADLINE_EXCEEDED,
        ErrorKind::Internal => Code::INTERNAL,
        ErrorKind::Unknown => Code::UNKNOWN,
    }
}

/// A pod error as a task API status: its code from its kind, its message
/// as the runtime wrote it.
fn from_pod(e: PodError) -> ttrpc::Error {
    status(code_of(e.kind()), e.to_string())
}

fn timestamp(at: SystemTime) -> Timestamp {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: since.as_secs() as i64,
        nanos: since.subsec_nanos() as i32,
        ..Default::default()
    }
}

fn task_status(status: ProcessStatus) -> Status {
    match status {
        ProcessStatus::Created => Status::CREATED,
        ProcessStatus::Running => Status::RUNNING,
        ProcessStatus::Paused => Status::PAUSED,
        ProcessStatus::Stopped => Status::STOPPED,
    }
}

fn stdio(stdin: &str, stdout: &str, stderr: &str, terminal: bool) -> StdioPaths {
    StdioPaths {
        stdin: stdin.into(),
        stdout: stdout.into(),
        stderr: stderr.into(),
        terminal,
    }
}

struct Inner {
    namespace: String,
    publisher: RemotePublisher,
    exit: Arc<ExitSignal>,
    pod: Pod,
    /// The root filesystems this shim mounted, by container.
    rootfs: Mutex<HashMap<String, Rootfs>>,
}

#[derive(Clone)]
pub struct TaskService(Arc<Inner>);

impl TaskService {
    pub fn new(namespace: String, publisher: RemotePublisher, exit: Arc<ExitSignal>) -> Self {
        let (pod, events) = Pod::new(Arc::new(VmSandboxes));
        let inner = Arc::new(Inner {
            namespace,
            publisher,
            exit,
            pod,
            rootfs: Mutex::new(HashMap::new()),
        });
        inner.clone().forward_events(events);
        Self(inner)
    }
}

impl Inner {
    fn publish(&self, topic: &str, event: Box<dyn Event>) {
        let ctx = ttrpc::context::with_timeout(PUBLISH_TIMEOUT.as_nanos() as i64);
        if let Err(e) = self.publisher.publish(ctx, topic, &self.namespace, event) {
            tracing::warn!("publish {topic}: {e}");
        }
    }

    fn rootfs(&self) -> MutexGuard<'_, HashMap<String, Rootfs>> {
        self.rootfs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes the pod's events as TaskExit and TaskOOM, on a thread of
    /// its own, for the life of the shim.
    fn forward_events(self: Arc<Self>, events: Receiver<PodEvent>) {
        let spawned = std::thread::Builder::new()
            .name("task-events".into())
            .spawn(move || {
                for event in events {
                    match event {
                        PodEvent::SandboxEnded => self.clone().exit_when_orphaned(),
                        event => self.publish_pod_event(event),
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start the task event publisher: {e}");
        }
    }

    /// Once the VM has ended, the containers still listed are dead and
    /// nothing can be created: [`ORPHAN_EXIT`] later the shim unmounts
    /// what containerd has not deleted and exits.
    fn exit_when_orphaned(self: Arc<Self>) {
        let spawned = std::thread::Builder::new()
            .name("orphan-exit".into())
            .spawn(move || {
                std::thread::sleep(ORPHAN_EXIT);
                tracing::warn!(
                    "the pod's VM ended {} s ago and containerd has not shut this shim down \
                     (containers still listed: {:?}): exiting",
                    ORPHAN_EXIT.as_secs(),
                    self.pod.container_ids()
                );
                for (_, rootfs) in self.rootfs().drain() {
                    rootfs.unmount();
                }
                self.exit.signal();
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start the orphan exit timer: {e}");
        }
    }

    fn publish_pod_event(&self, event: PodEvent) {
        match event {
            PodEvent::Exited {
                container_id,
                exec_id,
                exit,
            } => {
                // containerd names an init process by its container.
                let id = match exec_id.is_empty() {
                    true => container_id.clone(),
                    false => exec_id,
                };
                self.publish(
                    topics::TASK_EXIT_EVENT_TOPIC,
                    Box::new(TaskExit {
                        container_id,
                        id,
                        pid: std::process::id(),
                        exit_status: exit.status,
                        exited_at: MessageField::some(timestamp(exit.at)),
                        ..Default::default()
                    }),
                );
            }
            PodEvent::SandboxEnded => {}
            PodEvent::OomKilled { container_id } => self.publish(
                topics::TASK_OOM_EVENT_TOPIC,
                Box::new(TaskOOM {
                    container_id,
                    ..Default::default()
                }),
            ),
        }
    }

    fn create(&self, req: &api::CreateTaskRequest) -> TtrpcResult<()> {
        if !req.checkpoint.is_empty() {
            return Err(status(
                Code::UNIMPLEMENTED,
                "restoring from a checkpoint is not supported by Skiff",
            ));
        }
        // Before anything is mounted on its rootfs.
        if self.pod.contains(&req.id) {
            return Err(status(
                Code::ALREADY_EXISTS,
                format!("container {} already exists", req.id),
            ));
        }
        let config_path = options::config_path(req.options.as_ref()).map_err(invalid)?;
        let config = RuntimeConfig::load(config_path.as_deref()).map_err(invalid)?;
        let bundle = PathBuf::from(&req.bundle);
        let spec = spec::load(&bundle).map_err(invalid)?;
        let rootfs = Rootfs::mount(&bundle, &spec, &req.rootfs).map_err(|e| {
            let code = match e.is_invalid_argument() {
                true => Code::INVALID_ARGUMENT,
                false => Code::INTERNAL,
            };
            status(code, e)
        })?;
        let created = self.pod.create(NewContainer {
            id: &req.id,
            bundle: &bundle,
            rootfs: &rootfs.path,
            spec,
            config: &config,
            stdio: stdio(&req.stdin, &req.stdout, &req.stderr, req.terminal),
        });
        if let Err(e) = created {
            rootfs.unmount();
            return Err(from_pod(e));
        }
        self.rootfs().insert(req.id.clone(), rootfs);
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
        Ok(())
    }

    fn start(&self, id: &str, exec_id: &str) -> TtrpcResult<()> {
        self.pod.start(id, exec_id).map_err(from_pod)?;
        let pid = std::process::id();
        if exec_id.is_empty() {
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
        let exit = self.pod.delete(id, exec_id).map_err(from_pod)?;
        let response = api::DeleteResponse {
            pid: std::process::id(),
            exit_status: exit.status,
            exited_at: MessageField::some(timestamp(exit.at)),
            ..Default::default()
        };
        if !exec_id.is_empty() {
            return Ok(response);
        }
        if let Some(rootfs) = self.rootfs().remove(id) {
            rootfs.unmount();
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

fn exited_at(exit: &Option<Exit>) -> MessageField<Timestamp> {
    exit.as_ref()
        .map(|e| MessageField::some(timestamp(e.at)))
        .unwrap_or_default()
}

/// The stats of a container as containerd's cgroup v2 metrics.
fn metrics(s: &ContainerStats) -> Metrics {
    Metrics {
        cpu: MessageField::some(CPUStat {
            usage_usec: s.cpu_usage_usec,
            user_usec: s.cpu_user_usec,
            system_usec: s.cpu_system_usec,
            nr_throttled: s.cpu_nr_throttled,
            throttled_usec: s.cpu_throttled_usec,
            ..Default::default()
        }),
        memory: MessageField::some(MemoryStat {
            usage: s.memory_usage_bytes,
            usage_limit: s.memory_limit_bytes,
            anon: s.memory_anon_bytes,
            file: s.memory_file_bytes,
            ..Default::default()
        }),
        memory_events: MessageField::some(MemoryEvents {
            oom_kill: s.oom_kills,
            ..Default::default()
        }),
        pids: MessageField::some(PidsStat {
            current: s.pids_current,
            limit: s.pids_limit,
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl containerd_shim::Task for TaskService {
    fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let p = self.0.pod.state(&req.id, &req.exec_id).map_err(from_pod)?;
        Ok(api::StateResponse {
            id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            bundle: p.bundle.display().to_string(),
            pid: std::process::id(),
            status: task_status(p.status).into(),
            stdin: p.stdio.stdin.clone(),
            stdout: p.stdio.stdout.clone(),
            stderr: p.stdio.stderr.clone(),
            terminal: p.stdio.terminal,
            exit_status: p.exit.as_ref().map_or(0, |e| e.status),
            exited_at: exited_at(&p.exit),
            ..Default::default()
        })
    }

    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        tracing::info!("create {} (bundle {})", req.id, req.bundle);
        self.0
            .create(&req)
            .inspect_err(|e| tracing::error!("create {}: {e:?}", req.id))?;
        Ok(api::CreateTaskResponse {
            pid: std::process::id(),
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
        self.0.pod.state(&req.id, "").map_err(from_pod)?;
        Ok(api::PidsResponse {
            processes: vec![containerd_shim::protos::types::task::ProcessInfo {
                pid: std::process::id(),
                ..Default::default()
            }],
            ..Default::default()
        })
    }

    fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        self.0.pod.pause(&req.id).map_err(from_pod)?;
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
        self.0.pod.resume(&req.id).map_err(from_pod)?;
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
        self.0
            .pod
            .signal(&req.id, &req.exec_id, req.signal, req.all)
            .map_err(from_pod)?;
        Ok(api::Empty::new())
    }

    fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<api::Empty> {
        let spec_json = req
            .spec
            .as_ref()
            .map(|s| s.value.clone())
            .unwrap_or_default();
        let stdio = stdio(&req.stdin, &req.stdout, &req.stderr, req.terminal);
        self.0
            .pod
            .add_exec(&req.id, &req.exec_id, stdio, spec_json)
            .map_err(from_pod)?;
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
        self.0
            .pod
            .resize_pty(&req.id, &req.exec_id, req.height, req.width)
            .map_err(from_pod)?;
        Ok(api::Empty::new())
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        match req.stdin {
            true => self.0.pod.close_stdin(&req.id, &req.exec_id),
            false => self.0.pod.state(&req.id, &req.exec_id).map(drop),
        }
        .map_err(from_pod)?;
        Ok(api::Empty::new())
    }

    fn update(&self, _ctx: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<api::Empty> {
        // containerd sends OCI LinuxResources as JSON in the Any.
        let resources = req
            .resources
            .as_ref()
            .map(|r| r.value.clone())
            .unwrap_or_default();
        self.0.pod.update(&req.id, resources).map_err(from_pod)?;
        Ok(api::Empty::new())
    }

    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        let exit = self.0.pod.wait(&req.id, &req.exec_id).map_err(from_pod)?;
        Ok(api::WaitResponse {
            exit_status: exit.status,
            exited_at: MessageField::some(timestamp(exit.at)),
            ..Default::default()
        })
    }

    fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        let stats = self.0.pod.stats(&req.id).map_err(from_pod)?;
        let any = Any {
            type_url: "io.containerd.cgroups.v2.Metrics".into(),
            value: metrics(&stats)
                .write_to_bytes()
                .map_err(|e| status(Code::INTERNAL, e))?,
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
        if self.0.pod.shutdown() {
            self.0.exit.signal();
        }
        Ok(api::Empty::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_codes_translate() {
        let at = UNIX_EPOCH + Duration::new(1_700_000_000, 250);
        let t = timestamp(at);
        assert_eq!((t.seconds, t.nanos), (1_700_000_000, 250));
        assert_eq!(code_of(ErrorKind::NotFound), Code::NOT_FOUND);
        assert_eq!(code_of(ErrorKind::Unavailable), Code::UNAVAILABLE);
        let e = from_pod(PodError::InvalidArgument(
            "exec without a process spec".into(),
        ));
        match e {
            ttrpc::Error::RpcStatus(s) => {
                assert_eq!(s.code.enum_value_or(Code::OK), Code::INVALID_ARGUMENT);
                assert_eq!(s.message, "exec without a process spec");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(task_status(ProcessStatus::Paused), Status::PAUSED);
    }
}
