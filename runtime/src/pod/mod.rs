//! The container manager: the whole pod as the shim sees it. It finds or
//! boots the pod's sandbox on the first container, creates, starts, signals,
//! pauses, updates and deletes containers and their exec'd processes
//! through the sandbox's agent, follows each started process to its exit,
//! and reports exits and OOM kills on one events channel.
//!
//! It knows nothing of containerd's wire types: the shim translates the
//! task API into these calls and [`PodEvent`]s back into task events. It
//! reaches the sandbox only through [`PodSandbox`] and [`SandboxFactory`],
//! whose real implementations boot a VM (`crate::sandbox`), so its unit
//! tests run against a fake sandbox and a fake agent in milliseconds.

mod exec;
mod process;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use oci_spec::runtime::Spec;

pub use process::{Exit, Process, ProcessStatus, Signal};

use crate::agent::{Agent, AgentError, Code};
use crate::config::RuntimeConfig;
use crate::cri;
use crate::sandbox::SandboxError;
use crate::stdio::{Relays, StdioError, StdioPaths};

/// How long an exit waits for the process's output to drain before it is
/// reported anyway (a background child may keep the streams open).
const OUTPUT_DRAIN: Duration = Duration::from_secs(5);
/// The exit status reported for a process whose wait failed (the VM
/// ended, the agent lost it).
const LOST_STATUS: u32 = 255;
/// The exit status of a process that ended with its VM when the pod tore
/// the VM down: 128 + SIGKILL, what runc reports for a process killed
/// with its PID namespace.
const KILLED_STATUS: u32 = 128 + 9;
/// SIGKILL, as the task API sends it.
const SIGKILL: u32 = 9;

/// How a sandbox's VM is ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Teardown {
    /// The guest is asked to power off and given a short, bounded time;
    /// then the VM is stopped whatever the guest did.
    PowerOff,
    /// The VM is stopped at once, without a word to the guest: the pod's
    /// init was sent SIGKILL, which no guest may delay.
    Kill,
}

/// What the pod needs of its sandbox. The real one (`crate::sandbox::Sandbox`)
/// is a VM; the unit tests' one has a fake agent.
pub trait PodSandbox: Send + Sync {
    fn id(&self) -> &str;
    /// The agent of the sandbox's guest.
    fn agent(&self) -> Arc<dyn Agent>;
    /// The boot steps and their times, for the log.
    fn timeline(&self) -> String;
    /// Shares the container's root filesystem (`rootfs`, already mounted on
    /// the host) and the host paths its spec binds, hot-adds its block
    /// devices, and creates it in the guest; on error all of it is undone.
    fn add_container(
        &self,
        container_id: &str,
        bundle: &Path,
        rootfs: &Path,
        spec: Spec,
    ) -> Result<(), SandboxError>;
    /// Removes the container from the guest and what was made for it on
    /// the host.
    fn remove_container(&self, container_id: &str) -> Result<(), SandboxError>;
    /// Stops the VM, within a bound whatever the guest does, and removes
    /// every trace of the sandbox on the host.
    fn shutdown(&self, how: Teardown) -> Result<(), SandboxError>;
}

/// What a sandbox is booted from.
pub struct BootRequest<'a> {
    pub sandbox_id: &'a str,
    /// The spec of the container that asked for it (its network namespace,
    /// cgroup and hostname are the pod's).
    pub spec: &'a Spec,
    pub config: &'a RuntimeConfig,
    /// When the request that asked for it arrived: the timeline's zero.
    pub origin: Instant,
}

/// Boots sandboxes.
pub trait SandboxFactory: Send + Sync {
    fn boot(&self, req: BootRequest<'_>) -> Result<Arc<dyn PodSandbox>, SandboxError>;
}

/// What happened to the pod that nobody asked about.
#[derive(Clone, Debug, PartialEq)]
pub enum PodEvent {
    /// A started process ended (and its output drained, or the drain cap
    /// passed).
    Exited {
        container_id: String,
        exec_id: String,
        exit: Exit,
    },
    /// The guest's OOM killer killed a process of this container.
    OomKilled { container_id: String },
    /// The sandbox's VM was torn down. Containers still listed are dead
    /// and wait only for their Delete; no container can be created any
    /// more.
    SandboxEnded,
}

/// The broad class of an error, for the shim's status codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    Unimplemented,
    Unavailable,
    DeadlineExceeded,
    Internal,
    Unknown,
}

impl From<Code> for ErrorKind {
    fn from(code: Code) -> Self {
        match code {
            Code::INVALID_ARGUMENT | Code::OUT_OF_RANGE => ErrorKind::InvalidArgument,
            Code::NOT_FOUND => ErrorKind::NotFound,
            Code::ALREADY_EXISTS => ErrorKind::AlreadyExists,
            Code::FAILED_PRECONDITION => ErrorKind::FailedPrecondition,
            Code::UNIMPLEMENTED => ErrorKind::Unimplemented,
            Code::UNAVAILABLE => ErrorKind::Unavailable,
            Code::DEADLINE_EXCEEDED => ErrorKind::DeadlineExceeded,
            Code::INTERNAL => ErrorKind::Internal,
            _ => ErrorKind::Unknown,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// Booting the sandbox, or sharing a container into it, failed.
    #[error("{what}: {err}")]
    Sandbox { what: String, err: SandboxError },
    /// The agent refused a call or did not answer.
    #[error("{what}: {}", agent_message(.err))]
    Agent { what: String, err: AgentError },
    #[error("process I/O: {0}")]
    Stdio(#[from] StdioError),
}

fn agent_message(err: &AgentError) -> String {
    match err {
        AgentError::Status { message, .. } => message.clone(),
        AgentError::Unreachable { why, .. } => format!("agent unreachable: {why}"),
    }
}

impl PodError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            PodError::InvalidArgument(_) => ErrorKind::InvalidArgument,
            PodError::NotFound(_) => ErrorKind::NotFound,
            PodError::AlreadyExists(_) => ErrorKind::AlreadyExists,
            PodError::FailedPrecondition(_) => ErrorKind::FailedPrecondition,
            PodError::Sandbox { .. } => ErrorKind::Unknown,
            PodError::Agent { err, .. } => err.code().into(),
            PodError::Stdio(_) => ErrorKind::Internal,
        }
    }
}

fn agent(what: impl Into<String>) -> impl FnOnce(AgentError) -> PodError {
    let what = what.into();
    move |err| PodError::Agent { what, err }
}

/// A container to create.
pub struct NewContainer<'a> {
    pub id: &'a str,
    pub bundle: &'a Path,
    /// Its root filesystem, mounted on the host.
    pub rootfs: &'a Path,
    pub spec: Spec,
    pub config: &'a RuntimeConfig,
    pub stdio: StdioPaths,
}

/// What [`Pod::create`] did.
#[derive(Debug, PartialEq, Eq)]
pub struct Created {
    pub sandbox_id: String,
    /// The sandbox was booted for this container.
    pub booted: bool,
}

/// What [`Pod::state`] reports of a process.
#[derive(Debug)]
pub struct ProcessState {
    pub bundle: PathBuf,
    pub status: ProcessStatus,
    pub stdio: StdioPaths,
    pub exit: Option<Exit>,
}

/// A container's resource use, from its cgroup in the guest.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ContainerStats {
    pub cpu_usage_usec: u64,
    pub cpu_user_usec: u64,
    pub cpu_system_usec: u64,
    pub cpu_nr_throttled: u64,
    pub cpu_throttled_usec: u64,
    pub memory_usage_bytes: u64,
    /// 0: unlimited.
    pub memory_limit_bytes: u64,
    pub memory_anon_bytes: u64,
    pub memory_file_bytes: u64,
    pub oom_kills: u64,
    pub pids_current: u64,
    /// 0: unlimited.
    pub pids_limit: u64,
}

struct Container {
    bundle: PathBuf,
    init: Arc<Process>,
    execs: HashMap<String, Arc<Process>>,
}

struct Inner {
    factory: Arc<dyn SandboxFactory>,
    /// The pod's VM: booted by the first create, torn down when the
    /// sandbox's own container is deleted or its init is sent SIGKILL.
    /// The lock is held across the teardown, so no call reaches a VM
    /// that is going.
    sandbox: Mutex<Option<Arc<dyn PodSandbox>>>,
    /// The VM was torn down (it is never booted again in this pod): a
    /// process whose wait then fails was killed with it.
    ended: AtomicBool,
    containers: Mutex<HashMap<String, Container>>,
    events: Sender<PodEvent>,
}

/// The pod of one shim: its sandbox and its containers.
#[derive(Clone)]
pub struct Pod(Arc<Inner>);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Pod {
    /// A pod with no sandbox yet, and the receiving end of its events.
    pub fn new(factory: Arc<dyn SandboxFactory>) -> (Self, Receiver<PodEvent>) {
        let (events, receiver) = channel();
        let inner = Inner {
            factory,
            sandbox: Mutex::new(None),
            ended: AtomicBool::new(false),
            containers: Mutex::new(HashMap::new()),
            events,
        };
        (Self(Arc::new(inner)), receiver)
    }

    fn sandbox(&self) -> Result<Arc<dyn PodSandbox>, PodError> {
        lock(&self.0.sandbox)
            .clone()
            .ok_or_else(|| PodError::FailedPrecondition("the sandbox VM is not running".into()))
    }

    fn process(&self, id: &str, exec_id: &str) -> Result<Arc<Process>, PodError> {
        let containers = lock(&self.0.containers);
        let c = containers
            .get(id)
            .ok_or_else(|| PodError::NotFound(format!("container {id}")))?;
        if exec_id.is_empty() {
            return Ok(c.init.clone());
        }
        c.execs
            .get(exec_id)
            .cloned()
            .ok_or_else(|| PodError::NotFound(format!("exec {exec_id} in container {id}")))
    }

    /// Whether the pod has container `id`.
    pub fn contains(&self, id: &str) -> bool {
        lock(&self.0.containers).contains_key(id)
    }

    /// Whether the pod has no container left.
    pub fn is_empty(&self) -> bool {
        lock(&self.0.containers).is_empty()
    }

    /// The pod's sandbox, booted now if this is its first container.
    fn ensure_sandbox(
        &self,
        sandbox_id: &str,
        spec: &Spec,
        config: &RuntimeConfig,
        origin: Instant,
    ) -> Result<(Arc<dyn PodSandbox>, bool), PodError> {
        let mut slot = lock(&self.0.sandbox);
        if let Some(sandbox) = slot.as_ref() {
            if sandbox.id() != sandbox_id {
                return Err(PodError::FailedPrecondition(format!(
                    "this shim runs sandbox {}, not {sandbox_id}",
                    sandbox.id()
                )));
            }
            return Ok((sandbox.clone(), false));
        }
        if self.0.ended.load(Ordering::SeqCst) {
            return Err(PodError::FailedPrecondition(format!(
                "the VM of this shim's pod has ended: sandbox {sandbox_id} cannot start here"
            )));
        }
        let sandbox = self
            .0
            .factory
            .boot(BootRequest {
                sandbox_id,
                spec,
                config,
                origin,
            })
            .map_err(|err| PodError::Sandbox {
                what: format!("boot sandbox {sandbox_id}"),
                err,
            })?;
        tracing::info!("sandbox {sandbox_id} boot timeline: {}", sandbox.timeline());
        *slot = Some(sandbox.clone());
        self.watch_oom(sandbox.agent());
        Ok((sandbox, true))
    }

    /// Tears the VM down (`how`), then reports every process that had not
    /// exited as killed with it (an exec that never started just ends),
    /// at once: the exit watchers' waits end with the VM's connections,
    /// but containerd should not wait on their output drain. Containers
    /// stay listed until containerd deletes them.
    fn end_sandbox(&self, how: Teardown) {
        let mut slot = lock(&self.0.sandbox);
        let Some(sandbox) = slot.take() else {
            return;
        };
        self.0.ended.store(true, Ordering::SeqCst);
        let started = Instant::now();
        if let Err(e) = sandbox.shutdown(how) {
            tracing::error!("shut down sandbox {}: {e}", sandbox.id());
        }
        tracing::info!(
            "sandbox {} ended ({how:?}, {:.1} ms)",
            sandbox.id(),
            started.elapsed().as_secs_f64() * 1e3
        );
        drop(slot);
        let processes: Vec<Arc<Process>> = lock(&self.0.containers)
            .values()
            .flat_map(|c| std::iter::once(&c.init).chain(c.execs.values()))
            .cloned()
            .collect();
        for process in processes {
            let never_started_exec =
                !process.exec_id.is_empty() && process.status() == ProcessStatus::Created;
            match never_started_exec {
                true => {
                    process.set_exited(Exit {
                        status: KILLED_STATUS,
                        at: SystemTime::now(),
                    });
                }
                false => report_exit(&self.0.events, &process, KILLED_STATUS),
            }
        }
        let _ = self.0.events.send(PodEvent::SandboxEnded);
    }

    /// Creates a container in its pod's sandbox, booting the sandbox first
    /// if it is the pod's first container. On error nothing made for the
    /// container is left, nor the sandbox if it was booted for it.
    pub fn create(&self, req: NewContainer<'_>) -> Result<Created, PodError> {
        let origin = Instant::now();
        if self.contains(req.id) {
            return Err(PodError::AlreadyExists(format!("container {}", req.id)));
        }
        crate::sandbox::check_host_devices(&req.spec)
            .map_err(|e| PodError::InvalidArgument(e.to_string()))?;
        let sandbox_id = cri::sandbox_id_of(&req.spec, req.id);
        let (sandbox, booted) = self.ensure_sandbox(&sandbox_id, &req.spec, req.config, origin)?;
        if booted && cri::is_pod_member(&req.spec) {
            tracing::warn!(
                "container {} arrived before its pod's sandbox {sandbox_id}",
                req.id
            );
        }
        if let Err(err) = sandbox.add_container(req.id, req.bundle, req.rootfs, req.spec) {
            if booted {
                self.end_sandbox(Teardown::PowerOff);
            }
            return Err(PodError::Sandbox {
                what: format!("create container {}", req.id),
                err,
            });
        }
        let init = Arc::new(Process::new(req.id, "", req.stdio, Vec::new()));
        lock(&self.0.containers).insert(
            req.id.into(),
            Container {
                bundle: req.bundle.into(),
                init,
                execs: HashMap::new(),
            },
        );
        tracing::info!(
            "container {} created in sandbox {sandbox_id} ({:.1} ms)",
            req.id,
            origin.elapsed().as_secs_f64() * 1e3
        );
        Ok(Created { sandbox_id, booted })
    }

    /// Adds an exec'd process to a container, to be started by [`Pod::start`].
    pub fn add_exec(
        &self,
        id: &str,
        exec_id: &str,
        stdio: StdioPaths,
        spec_json: Vec<u8>,
    ) -> Result<(), PodError> {
        if spec_json.is_empty() {
            return Err(PodError::InvalidArgument(
                "exec without a process spec".into(),
            ));
        }
        let mut containers = lock(&self.0.containers);
        let c = containers
            .get_mut(id)
            .ok_or_else(|| PodError::NotFound(format!("container {id}")))?;
        if c.execs.contains_key(exec_id) {
            return Err(PodError::AlreadyExists(format!("exec {exec_id}")));
        }
        let process = Process::new(id, exec_id, stdio, spec_json);
        c.execs.insert(exec_id.into(), Arc::new(process));
        Ok(())
    }

    /// Starts a container's init process (empty `exec_id`) or an exec'd
    /// one (whose Start does not wait out a slow guest: `exec.rs`), relays
    /// its I/O and follows it to its exit.
    pub fn start(&self, id: &str, exec_id: &str) -> Result<(), PodError> {
        let origin = Instant::now();
        let process = self.process(id, exec_id)?;
        if process.status() != ProcessStatus::Created {
            return Err(PodError::FailedPrecondition(format!(
                "process {id}/{exec_id} was already started"
            )));
        }
        let agent = self.sandbox()?.agent();
        if !exec_id.is_empty() {
            return self.start_exec(agent, process);
        }
        agent
            .start_container(id)
            .map_err(self::agent(format!("start container {id}")))?;
        process.set_status(ProcessStatus::Running);
        let relays = Relays::start(&agent, id, exec_id, &process.stdio)?;
        self.watch_exit(agent, process, relays);
        tracing::info!(
            "container {id} started ({:.1} ms)",
            origin.elapsed().as_secs_f64() * 1e3
        );
        Ok(())
    }

    /// Follows a started process until the agent reports its exit, lets
    /// its output drain, then records and reports the exit.
    fn watch_exit(&self, agent: Arc<dyn Agent>, process: Arc<Process>, mut relays: Relays) {
        let pod = self.0.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("wait-{}", process.container_id))
            .spawn(move || {
                let status = match agent.wait_process(&process.container_id, &process.exec_id) {
                    Ok(status) => status as u32,
                    Err(_) if pod.ended.load(Ordering::SeqCst) => KILLED_STATUS,
                    Err(e) => {
                        tracing::warn!(
                            "wait for {}/{}: {e}",
                            process.container_id,
                            process.exec_id
                        );
                        LOST_STATUS
                    }
                };
                if !relays.wait_output(OUTPUT_DRAIN) {
                    tracing::info!("{}: output still open after exit", process.container_id);
                }
                report_exit(&pod.events, &process, status);
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start exit watcher: {e}");
        }
    }

    /// Reports the guest's OOM kills while the VM lives.
    fn watch_oom(&self, agent: Arc<dyn Agent>) {
        let events = self.0.events.clone();
        let _ = std::thread::Builder::new()
            .name("oom-events".into())
            .spawn(move || {
                while let Ok(container_id) = agent.oom_event() {
                    tracing::info!("container {container_id} was OOM-killed");
                    if events.send(PodEvent::OomKilled { container_id }).is_err() {
                        break;
                    }
                }
            });
    }

    /// What is known of a process.
    pub fn state(&self, id: &str, exec_id: &str) -> Result<ProcessState, PodError> {
        let process = self.process(id, exec_id)?;
        let bundle = lock(&self.0.containers)
            .get(id)
            .map(|c| c.bundle.clone())
            .unwrap_or_default();
        Ok(ProcessState {
            bundle,
            status: process.status(),
            stdio: process.stdio.clone(),
            exit: process.exit(),
        })
    }

    /// Sends `signal` to a process (`all`: to every process of the
    /// container). A process that already exited is not found.
    ///
    /// SIGKILL to the sandbox's own init process ends the VM at once,
    /// without the guest: the pod's init dies and every process of the
    /// pod with it, as under runc, in a time no guest can stretch.
    pub fn signal(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<(), PodError> {
        let process = self.process(id, exec_id)?;
        if process.exit().is_some() {
            return Err(PodError::NotFound(format!(
                "process {id}/{exec_id} (already exited)"
            )));
        }
        let sandbox = self.sandbox()?;
        if exec_id.is_empty() && sandbox.id() == id && signal == SIGKILL {
            // As a signal is: delivered now, the exits reported after. A
            // Kill that waited for the teardown would race its own answer
            // against the TaskExit events, and containerd, handling the
            // sandbox's exit, closes the connection the answer was due on.
            let pod = self.clone();
            let spawned = std::thread::Builder::new()
                .name("sandbox-kill".into())
                .spawn(move || pod.end_sandbox(Teardown::Kill));
            if let Err(e) = spawned {
                tracing::warn!("no thread for the sandbox's teardown ({e}): ending it in the Kill");
                self.end_sandbox(Teardown::Kill);
            }
            return Ok(());
        }
        if self.signal_spawning(
            &process,
            Signal {
                number: signal,
                all,
            },
        ) {
            return Ok(());
        }
        sandbox
            .agent()
            .signal_process(id, exec_id, signal, all)
            .map_err(agent("signal process"))
    }

    /// Blocks until the process exited.
    pub fn wait(&self, id: &str, exec_id: &str) -> Result<Exit, PodError> {
        Ok(self.process(id, exec_id)?.wait())
    }

    pub fn pause(&self, id: &str) -> Result<(), PodError> {
        let process = self.process(id, "")?;
        self.sandbox()?
            .agent()
            .pause_container(id)
            .map_err(agent("pause container"))?;
        process.set_status(ProcessStatus::Paused);
        Ok(())
    }

    pub fn resume(&self, id: &str) -> Result<(), PodError> {
        let process = self.process(id, "")?;
        self.sandbox()?
            .agent()
            .resume_container(id)
            .map_err(agent("resume container"))?;
        process.set_status(ProcessStatus::Running);
        Ok(())
    }

    /// Applies new OCI `LinuxResources` (JSON) to a container.
    pub fn update(&self, id: &str, resources_json: Vec<u8>) -> Result<(), PodError> {
        self.process(id, "")?;
        self.sandbox()?
            .agent()
            .update_container(id, resources_json)
            .map_err(agent(format!("update {id}")))
    }

    pub fn stats(&self, id: &str) -> Result<ContainerStats, PodError> {
        self.process(id, "")?;
        let s = self
            .sandbox()?
            .agent()
            .stats_container(id)
            .map_err(agent("stats container"))?;
        Ok(ContainerStats {
            cpu_usage_usec: s.cpu.usage_usec,
            cpu_user_usec: s.cpu.user_usec,
            cpu_system_usec: s.cpu.system_usec,
            cpu_nr_throttled: s.cpu.nr_throttled,
            cpu_throttled_usec: s.cpu.throttled_usec,
            memory_usage_bytes: s.memory.usage_bytes,
            memory_limit_bytes: s.memory.limit_bytes,
            memory_anon_bytes: s.memory.anon_bytes,
            memory_file_bytes: s.memory.file_bytes,
            oom_kills: s.memory.oom_kills,
            pids_current: s.pids.current,
            pids_limit: s.pids.limit,
        })
    }

    pub fn resize_pty(
        &self,
        id: &str,
        exec_id: &str,
        rows: u32,
        columns: u32,
    ) -> Result<(), PodError> {
        self.process(id, exec_id)?;
        self.sandbox()?
            .agent()
            .tty_win_resize(id, exec_id, rows, columns)
            .map_err(agent("tty win resize"))
    }

    pub fn close_stdin(&self, id: &str, exec_id: &str) -> Result<(), PodError> {
        self.process(id, exec_id)?;
        self.sandbox()?
            .agent()
            .close_stdin(id, exec_id)
            .map_err(agent("close stdin"))
    }

    /// Deletes a process that is not running: an exec is forgotten; a
    /// container is removed from the guest and the host, and deleting the
    /// sandbox's own container shuts the VM down. Returns the exit (status
    /// 0 now for a process that never ran).
    pub fn delete(&self, id: &str, exec_id: &str) -> Result<Exit, PodError> {
        let process = self.process(id, exec_id)?;
        if matches!(
            process.status(),
            ProcessStatus::Running | ProcessStatus::Paused
        ) {
            return Err(PodError::FailedPrecondition(format!(
                "process {id}/{exec_id} is still running: kill it first"
            )));
        }
        let exit = process.exit().unwrap_or(Exit {
            status: 0,
            at: SystemTime::now(),
        });
        if !exec_id.is_empty() {
            if let Some(c) = lock(&self.0.containers).get_mut(id) {
                c.execs.remove(exec_id);
            }
            return Ok(exit);
        }
        let sandbox = lock(&self.0.sandbox).clone();
        // The VM lives as long as the pod's own container, and whatever of
        // the pod is in the guest goes with it; once the VM has ended, the
        // container's share went with it too.
        let is_pod = sandbox.as_ref().is_some_and(|s| s.id() == id);
        if let Some(sandbox) = sandbox.filter(|_| !is_pod) {
            if let Err(e) = sandbox.remove_container(id) {
                tracing::warn!("remove container {id}: {e}");
            }
        }
        lock(&self.0.containers).remove(id);
        if is_pod {
            self.end_sandbox(Teardown::PowerOff);
        }
        Ok(exit)
    }

    /// Tears the sandbox down if no container is left; returns whether the
    /// pod is done (the shim may then exit).
    pub fn shutdown(&self) -> bool {
        if !self.is_empty() {
            return false;
        }
        self.end_sandbox(Teardown::PowerOff);
        true
    }

    /// The ids of the containers still listed.
    pub fn container_ids(&self) -> Vec<String> {
        lock(&self.0.containers).keys().cloned().collect()
    }
}

/// Records a process's exit and reports it, unless an exit was recorded
/// already (each exit is reported once).
fn report_exit(events: &Sender<PodEvent>, process: &Process, status: u32) {
    let exit = Exit {
        status,
        at: SystemTime::now(),
    };
    if process.set_exited(exit.clone()) {
        let _ = events.send(PodEvent::Exited {
            container_id: process.container_id.clone(),
            exec_id: process.exec_id.clone(),
            exit,
        });
    }
}
