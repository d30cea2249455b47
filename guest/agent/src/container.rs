//! One container: its init process and exec'd processes, its cgroup and
//! the storages mounted for it. Creation undoes everything it did when a
//! step fails; removal kills, waits and undoes the rest.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oci_spec::runtime::Spec;
use skiff_agent_protocol::agent::Storage;

use crate::cgroup::{Cgroup, CgroupError, CgroupRoot};
use crate::mounts::{self, MountError};
use crate::reaper::Reaper;
use crate::spawn::{self, SpawnError, SpawnPlan};
use crate::spec::{self, SpecError};
use crate::stdio::{self, ProcessIo, StdioError};

/// Errors of container operations.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("container {0:?} not found")]
    NotFound(String),
    #[error("container {0:?} already exists")]
    AlreadyExists(String),
    #[error("invalid container id {0:?}: up to 76 letters and digits, single `.`, `_` or `-` between them")]
    BadId(String),
    #[error("process {exec_id:?} not found in container {container:?}")]
    ProcessNotFound { container: String, exec_id: String },
    #[error("exec id {0:?} is already in use")]
    ExecExists(String),
    #[error("container {id:?} is {state}, cannot {op}")]
    BadState {
        id: String,
        state: &'static str,
        op: &'static str,
    },
    #[error("process {0} has already exited")]
    Exited(i32),
    #[error("signal {0} is not a valid signal")]
    BadSignal(u32),
    #[error("signal: {0}")]
    Kill(nix::Error),
    #[error("invalid OCI linux resources JSON: {0}")]
    BadResources(String),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error("start process: {0}")]
    Spawn(#[from] SpawnError),
    #[error(transparent)]
    Stdio(#[from] StdioError),
    #[error("create start gate: {0}")]
    Gate(nix::Error),
}

type Result<T> = std::result::Result<T, ContainerError>;

/// A process the agent started, with its I/O.
pub struct Process {
    pub pid: i32,
    pub io: ProcessIo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Paused,
    Stopped,
}

impl Status {
    fn name(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        }
    }
}

/// What StartContainer needs: the gate's write end and the init's report
/// pipe.
struct StartGate {
    gate: File,
    sync: File,
}

pub struct Container {
    pub id: String,
    rootfs: PathBuf,
    cgroup: Cgroup,
    /// The spec's seccomp filters, for exec'd processes too (as runc does).
    seccomp: Vec<seccompiler::BpfProgram>,
    init: Arc<Process>,
    execs: Mutex<HashMap<String, Arc<Process>>>,
    status: Mutex<Status>,
    start: Mutex<Option<StartGate>>,
    storages: Vec<PathBuf>,
}

/// Checks a container id: it names a cgroup directory, so it must not be
/// able to name another path.
pub fn check_id(id: &str) -> Result<()> {
    if skiff_agent_protocol::is_valid_id(id) {
        Ok(())
    } else {
        Err(ContainerError::BadId(id.to_string()))
    }
}

/// Undo list for a creation in progress.
#[derive(Default)]
struct Rollback {
    storages: Vec<PathBuf>,
    cgroup: Option<Cgroup>,
}

impl Rollback {
    fn undo(self) {
        if let Some(cg) = self.cgroup {
            let _ = cg.destroy(Duration::from_secs(5));
        }
        for s in self.storages.iter().rev() {
            mounts::unmount(s);
        }
    }
}

/// What the sandbox lends a container being created.
pub struct CreateContext<'a> {
    pub cgroups: &'a CgroupRoot,
    pub reaper: &'a Reaper,
    /// Namespaces (by `/proc/PID/ns` name) the spec's path-less entries
    /// of that type join instead of being made new: the pod's shared ones.
    pub joined: Vec<(String, PathBuf)>,
}

impl Container {
    /// Mounts the storages, builds the cgroup and starts the init process
    /// up to the point where it waits for StartContainer.
    pub fn create(
        id: &str,
        spec_json: &[u8],
        storages: &[Storage],
        ctx: &CreateContext,
    ) -> Result<Container> {
        check_id(id)?;
        let spec = spec::parse_spec(spec_json)?;
        let mut rb = Rollback::default();
        match Self::create_steps(id, &spec, storages, ctx, &mut rb) {
            Ok(c) => Ok(c),
            Err(e) => {
                rb.undo();
                Err(e)
            }
        }
    }

    fn create_steps(
        id: &str,
        spec: &Spec,
        storages: &[Storage],
        ctx: &CreateContext,
        rb: &mut Rollback,
    ) -> Result<Container> {
        // Cheap checks first: a bad spec must not mount anything.
        spec.process().as_ref().ok_or(SpecError::NoProcess)?;
        spec.root().as_ref().ok_or(SpecError::NoRoot)?;
        for s in storages {
            rb.storages.push(mounts::mount_storage(s)?);
        }
        let rootfs = spec::rootfs_path(spec)?;
        let process = spec.process().as_ref().ok_or(SpecError::NoProcess)?;
        let setup = spec::process_setup(process, &rootfs)?;
        let rootfs_plan = spec::rootfs_plan(spec, &rootfs)?;
        let ns = spec::init_namespaces(spec, &ctx.joined)?;
        let linux = spec.linux().as_ref();
        let seccomp = match linux.and_then(|l| l.seccomp().as_ref()) {
            Some(p) => crate::seccomp::compile(p).map_err(SpecError::from)?,
            None => Vec::new(),
        };
        let cgroup_path = linux
            .and_then(|l| l.cgroups_path().as_ref())
            .map(|p| p.display().to_string())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| format!("skiff/{id}"));
        let cgroup = ctx.cgroups.create(&cgroup_path)?;
        rb.cgroup = Some(cgroup.clone());
        if let Some(res) = linux.and_then(|l| l.resources().as_ref()) {
            cgroup.apply(res)?;
        }
        let hostname = spec
            .hostname()
            .clone()
            .filter(|_| ns.unshare.contains(nix::sched::CloneFlags::CLONE_NEWUTS));
        let (io, child_stdio) = stdio::create(setup.terminal)?;
        let (gate_r, gate_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(ContainerError::Gate)?;
        let procs = std::fs::OpenOptions::new()
            .write(true)
            .open(cgroup.procs_file())
            .map_err(|source| CgroupError::Io {
                path: cgroup.procs_file(),
                source,
            })?;
        let plan = SpawnPlan {
            process: setup,
            seccomp: seccomp.clone(),
            join: ns.join,
            unshare: ns.unshare,
            pid_ns_change: ns.pid_ns_change,
            cgroup_procs: Some(procs),
            rootfs: Some(rootfs_plan),
            hostname,
            stdio: child_stdio,
            start_gate: Some(File::from(gate_r)),
        };
        let spawned = spawn::spawn(plan)?;
        ctx.reaper.watch(spawned.pid);
        let sync = spawned.sync.ok_or(SpawnError::ChildVanished)?;
        tracing::info!(container = id, pid = spawned.pid, "created");
        Ok(Container {
            id: id.to_string(),
            rootfs,
            cgroup,
            seccomp,
            init: Arc::new(Process {
                pid: spawned.pid,
                io,
            }),
            execs: Mutex::default(),
            status: Mutex::new(Status::Created),
            start: Mutex::new(Some(StartGate {
                gate: File::from(gate_w),
                sync,
            })),
            storages: std::mem::take(&mut rb.storages),
        })
    }

    pub fn cgroup(&self) -> &Cgroup {
        &self.cgroup
    }

    /// The current status; a dead init process means stopped.
    pub fn status(&self, reaper: &Reaper) -> Status {
        let st = *self.status.lock().unwrap_or_else(|e| e.into_inner());
        if st != Status::Created && reaper.try_status(self.init.pid).is_some() {
            return Status::Stopped;
        }
        st
    }

    /// The init process's pid while it lives, for joining its
    /// namespaces; `op` names what was asked, for the error.
    pub fn running_init_pid(&self, reaper: &Reaper, op: &'static str) -> Result<i32> {
        match self.status(reaper) {
            Status::Stopped => Err(self.bad_state(Status::Stopped, op)),
            _ => Ok(self.init.pid),
        }
    }

    fn set_status(&self, s: Status) {
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = s;
    }

    fn bad_state(&self, state: Status, op: &'static str) -> ContainerError {
        ContainerError::BadState {
            id: self.id.clone(),
            state: state.name(),
            op,
        }
    }

    /// Releases the init process into execve and reports whether it ran.
    pub fn start(&self, reaper: &Reaper) -> Result<()> {
        let gate = self
            .start
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| self.bad_state(self.status(reaper), "start"))?;
        let StartGate { mut gate, mut sync } = gate;
        let released = gate.write_all(b"S");
        drop(gate);
        if released.is_err() {
            self.set_status(Status::Stopped);
            return Err(SpawnError::ChildVanished.into());
        }
        if let Err(e) = spawn::exec_outcome(&mut sync) {
            self.set_status(Status::Stopped);
            return Err(e.into());
        }
        self.set_status(Status::Running);
        tracing::info!(container = %self.id, "started");
        Ok(())
    }

    /// The process named by `exec_id` ("" = init).
    pub fn process(&self, exec_id: &str) -> Result<Arc<Process>> {
        if exec_id.is_empty() {
            return Ok(self.init.clone());
        }
        self.execs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(exec_id)
            .cloned()
            .ok_or_else(|| ContainerError::ProcessNotFound {
                container: self.id.clone(),
                exec_id: exec_id.to_string(),
            })
    }

    /// Starts another process in the container's namespaces and cgroup.
    pub fn exec(&self, exec_id: &str, process_json: &[u8], reaper: &Reaper) -> Result<()> {
        let status = self.status(reaper);
        if status != Status::Running {
            return Err(self.bad_state(status, "exec a process"));
        }
        if exec_id.is_empty() || self.process(exec_id).is_ok() {
            return Err(ContainerError::ExecExists(exec_id.to_string()));
        }
        let p = spec::parse_process(process_json)?;
        let setup = spec::process_setup(&p, &self.rootfs)?;
        let ns = spec::exec_namespaces(self.init.pid)?;
        let (io, child_stdio) = stdio::create(setup.terminal)?;
        let procs = std::fs::OpenOptions::new()
            .write(true)
            .open(self.cgroup.procs_file())
            .map_err(|source| CgroupError::Io {
                path: self.cgroup.procs_file(),
                source,
            })?;
        let plan = SpawnPlan {
            process: setup,
            seccomp: self.seccomp.clone(),
            join: ns.join,
            unshare: ns.unshare,
            pid_ns_change: ns.pid_ns_change,
            cgroup_procs: Some(procs),
            rootfs: None,
            hostname: None,
            stdio: child_stdio,
            start_gate: None,
        };
        let spawned = spawn::spawn(plan)?;
        reaper.watch(spawned.pid);
        tracing::info!(container = %self.id, exec_id, pid = spawned.pid, "exec");
        self.execs.lock().unwrap_or_else(|e| e.into_inner()).insert(
            exec_id.to_string(),
            Arc::new(Process {
                pid: spawned.pid,
                io,
            }),
        );
        Ok(())
    }

    pub fn signal(&self, exec_id: &str, signal: u32, all: bool, reaper: &Reaper) -> Result<()> {
        let sig = nix::sys::signal::Signal::try_from(signal as i32)
            .map_err(|_| ContainerError::BadSignal(signal))?;
        if all {
            for pid in self.cgroup.pids() {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
            }
            return Ok(());
        }
        let p = self.process(exec_id)?;
        if reaper.try_status(p.pid).is_some() {
            return Err(ContainerError::Exited(p.pid));
        }
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid), sig).map_err(ContainerError::Kill)
    }

    pub fn update(&self, resources_json: &[u8]) -> Result<()> {
        let res: oci_spec::runtime::LinuxResources = serde_json::from_slice(resources_json)
            .map_err(|e| ContainerError::BadResources(e.to_string()))?;
        Ok(self.cgroup.apply(&res)?)
    }

    pub fn pause(&self, reaper: &Reaper) -> Result<()> {
        let st = self.status(reaper);
        if st != Status::Running {
            return Err(self.bad_state(st, "pause"));
        }
        self.cgroup.set_frozen(true)?;
        self.set_status(Status::Paused);
        Ok(())
    }

    pub fn resume(&self, reaper: &Reaper) -> Result<()> {
        let st = self.status(reaper);
        if st != Status::Paused {
            return Err(self.bad_state(st, "resume"));
        }
        self.cgroup.set_frozen(false)?;
        self.set_status(Status::Running);
        Ok(())
    }

    /// Kills everything, waits (up to `timeout`), removes the cgroup and
    /// unmounts the storages.
    pub fn destroy(&self, timeout: Duration, reaper: &Reaper) -> Result<()> {
        // A never-started init is blocked on its gate: closing it ends it.
        self.start.lock().unwrap_or_else(|e| e.into_inner()).take();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.init.pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        let result = self.cgroup.destroy(timeout);
        reaper.wait(self.init.pid, Some(timeout));
        reaper.forget(self.init.pid);
        for p in self
            .execs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            reaper.forget(p.pid);
        }
        for s in self.storages.iter().rev() {
            mounts::unmount(s);
        }
        tracing::info!(container = %self.id, "removed");
        Ok(result?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_could_name_other_paths_are_refused() {
        for ok in ["c1", "pod-a_b.1"] {
            assert!(check_id(ok).is_ok());
        }
        for bad in ["", "a/b", "..", ".hidden", &"x".repeat(77)] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
    }
}
