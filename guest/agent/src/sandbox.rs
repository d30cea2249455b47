//! The pod: its containers, the sandbox-wide storages and PID namespace,
//! and guest-wide settings (hostname, DNS, clock).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use skiff_agent_protocol::agent::{CreateSandboxRequest, Storage};

use crate::cgroup::CgroupRoot;
use crate::container::{Container, ContainerError, CreateContext};
use crate::mounts::{self, MountError};
use crate::oom::OomWatcher;
use crate::reaper::Reaper;
use crate::spec;

/// Errors of sandbox-wide operations.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("the sandbox was already created")]
    AlreadyCreated,
    #[error("sethostname {name:?}: {err}")]
    Hostname { name: String, err: nix::Error },
    #[error("write {path}: {err}")]
    Write { path: PathBuf, err: std::io::Error },
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error("create the sandbox PID namespace: {0}")]
    PidNs(String),
    #[error("set the clock: {0}")]
    Clock(nix::Error),
    #[error(transparent)]
    Container(#[from] ContainerError),
}

/// Default grace period for RemoveContainer.
const DEFAULT_REMOVE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Sandbox {
    pub reaper: Arc<Reaper>,
    pub oom: Arc<OomWatcher>,
    pub cgroups: CgroupRoot,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    /// Ids being created, so two requests cannot race for one id.
    creating: Mutex<Vec<String>>,
    created: Mutex<bool>,
    storages: Mutex<Vec<PathBuf>>,
    pidns_holder: Mutex<Option<i32>>,
    pub resolv_conf: PathBuf,
}

impl Sandbox {
    pub fn new(
        reaper: Arc<Reaper>,
        oom: Arc<OomWatcher>,
        cgroups: CgroupRoot,
        resolv_conf: PathBuf,
    ) -> Sandbox {
        Sandbox {
            reaper,
            oom,
            cgroups,
            containers: Mutex::default(),
            creating: Mutex::default(),
            created: Mutex::new(false),
            storages: Mutex::default(),
            pidns_holder: Mutex::new(None),
            resolv_conf,
        }
    }

    pub fn create(&self, req: &CreateSandboxRequest) -> Result<(), SandboxError> {
        let mut created = self.created.lock().unwrap_or_else(|e| e.into_inner());
        if *created {
            return Err(SandboxError::AlreadyCreated);
        }
        if !req.hostname.is_empty() {
            nix::unistd::sethostname(&req.hostname).map_err(|err| SandboxError::Hostname {
                name: req.hostname.clone(),
                err,
            })?;
        }
        if !req.dns.is_empty() {
            let text = req.dns.join("\n") + "\n";
            if let Some(dir) = self.resolv_conf.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            std::fs::write(&self.resolv_conf, text).map_err(|err| SandboxError::Write {
                path: self.resolv_conf.clone(),
                err,
            })?;
        }
        let mut mounted = Vec::new();
        for s in &req.storages {
            match mounts::mount_storage(s) {
                Ok(p) => mounted.push(p),
                Err(e) => {
                    mounted.iter().rev().for_each(|p| mounts::unmount(p));
                    return Err(e.into());
                }
            }
        }
        if req.sandbox_pidns {
            match spawn_pidns_holder() {
                Ok(pid) => {
                    self.reaper.watch(pid);
                    *self.pidns_holder.lock().unwrap_or_else(|e| e.into_inner()) = Some(pid);
                }
                Err(e) => {
                    mounted.iter().rev().for_each(|p| mounts::unmount(p));
                    return Err(e);
                }
            }
        }
        *self.storages.lock().unwrap_or_else(|e| e.into_inner()) = mounted;
        *created = true;
        tracing::info!(sandbox = %req.sandbox_id, "sandbox created");
        Ok(())
    }

    /// Removes every container and the sandbox's own mounts.
    pub fn destroy(&self) {
        let ids: Vec<String> = self
            .containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        for id in ids {
            if let Err(e) = self.remove_container(&id, 0) {
                tracing::warn!("destroy: remove {id}: {e}");
            }
        }
        if let Some(pid) = self
            .pidns_holder
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            self.reaper.wait(pid, Some(Duration::from_secs(5)));
            self.reaper.forget(pid);
        }
        for p in self
            .storages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .rev()
        {
            mounts::unmount(&p);
        }
    }

    pub fn container(&self, id: &str) -> Result<Arc<Container>, ContainerError> {
        self.containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| ContainerError::NotFound(id.to_string()))
    }

    pub fn create_container(
        &self,
        id: &str,
        spec_json: &[u8],
        storages: &[Storage],
        namespaces_of: &str,
        join_namespaces: &[String],
    ) -> Result<(), ContainerError> {
        let mut joined = Vec::new();
        if let Some(pid) = *self.pidns_holder.lock().unwrap_or_else(|e| e.into_inner()) {
            joined.push((
                "pid".to_string(),
                PathBuf::from(format!("/proc/{pid}/ns/pid")),
            ));
        }
        if !join_namespaces.is_empty() {
            // A missing or stopped owner is this request's error.
            let owner = self.container(namespaces_of)?;
            let pid = owner.running_init_pid(&self.reaper, "share its namespaces")?;
            for kind in join_namespaces {
                let kind = spec::shareable_namespace(kind)?;
                joined.retain(|(k, _)| k.as_str() != kind);
                joined.push((
                    kind.to_string(),
                    PathBuf::from(format!("/proc/{pid}/ns/{kind}")),
                ));
            }
        }
        {
            let containers = self.containers.lock().unwrap_or_else(|e| e.into_inner());
            let mut creating = self.creating.lock().unwrap_or_else(|e| e.into_inner());
            if containers.contains_key(id) || creating.iter().any(|c| c == id) {
                return Err(ContainerError::AlreadyExists(id.to_string()));
            }
            creating.push(id.to_string());
        }
        let ctx = CreateContext {
            cgroups: &self.cgroups,
            reaper: &self.reaper,
            joined,
        };
        let result = Container::create(id, spec_json, storages, &ctx);
        self.creating
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|c| c != id);
        let c = result?;
        let events = c.cgroup().memory_events_file();
        if events.exists() {
            if let Err(e) = self.oom.watch(id, events) {
                tracing::warn!("no OOM events for {id}: {e}");
            }
        }
        self.containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string(), Arc::new(c));
        Ok(())
    }

    pub fn remove_container(&self, id: &str, timeout_seconds: u32) -> Result<(), ContainerError> {
        let c = self.container(id)?;
        let timeout = if timeout_seconds == 0 {
            DEFAULT_REMOVE_TIMEOUT
        } else {
            Duration::from_secs(timeout_seconds.into())
        };
        self.oom.unwatch(id);
        let result = c.destroy(timeout, &self.reaper);
        self.containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        result
    }
}

/// Sets the guest's wall clock (the VM starts with whatever the RTC or
/// the snapshot says).
pub fn set_time(seconds: i64, microseconds: i64) -> Result<(), SandboxError> {
    let ts = nix::sys::time::TimeSpec::new(seconds, microseconds.saturating_mul(1000));
    nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts).map_err(SandboxError::Clock)
}

/// Forks a process that is PID 1 of a new PID namespace and only reaps:
/// the pod's containers join its namespace (shareProcessNamespace).
fn spawn_pidns_holder() -> Result<i32, SandboxError> {
    use nix::unistd::ForkResult;
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| SandboxError::PidNs(e.to_string()))?;
    // SAFETY: the child only calls async-signal-safe functions and _exits.
    match unsafe { nix::unistd::fork() }.map_err(|e| SandboxError::PidNs(e.to_string()))? {
        ForkResult::Child => {
            drop(r);
            let mut w = std::fs::File::from(w);
            if nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID).is_err() {
                // SAFETY: see above.
                unsafe { libc::_exit(1) }
            }
            // SAFETY: single-threaded child.
            match unsafe { nix::unistd::fork() } {
                Ok(ForkResult::Parent { child }) => {
                    let _ = w.write_all(&child.as_raw().to_le_bytes());
                    // SAFETY: see above.
                    unsafe { libc::_exit(0) }
                }
                Ok(ForkResult::Child) => {
                    drop(w);
                    let mut set = nix::sys::signal::SigSet::empty();
                    set.add(nix::sys::signal::Signal::SIGCHLD);
                    loop {
                        while let Ok(s) = nix::sys::wait::waitpid(
                            None,
                            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
                        ) {
                            if s == nix::sys::wait::WaitStatus::StillAlive {
                                break;
                            }
                        }
                        let _ = set.wait();
                    }
                }
                // SAFETY: see above.
                Err(_) => unsafe { libc::_exit(1) },
            }
        }
        ForkResult::Parent { .. } => {
            drop(w);
            let mut b = [0u8; 4];
            std::fs::File::from(r)
                .read_exact(&mut b)
                .map_err(|e| SandboxError::PidNs(e.to_string()))?;
            Ok(i32::from_le_bytes(b))
        }
    }
}
