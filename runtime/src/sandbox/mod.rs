//! A pod's sandbox: its VM, booted by the VMM in this process, the guest
//! agent reached through the VMM's in-process vsock connector, and the
//! shared directory that carries container root filesystems into the
//! guest. This module holds the boot and the teardown and the
//! [`PodSandbox`] the container manager drives; each step has a module:
//!
//! - [`state_dir`]: `/run/skiff/sbs/<id>/`, its claim, its share's tmpfs
//!   and its removal (also after a dead shim);
//! - [`vm`]: the VM's configuration, the VMM thread, the VM exit watcher;
//! - [`template`]: the templates a sandbox is restored from instead of
//!   booted (`[factory] template = true`);
//! - [`containers`]: sharing a container in and out;
//! - [`devices`]: the host block devices hot-added for containers;
//! - [`crate::pod_net`]: the pod network, from discovery to teardown;
//! - [`crate::port_forward`]: CRI port forwarding into the VM;
//! - [`crate::agent`]: the agent connection and its calls.

mod containers;
mod devices;
mod state_dir;
mod template;
mod vm;

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use oci_spec::runtime::Spec;
use skiff_agent_protocol::agent::{CreateSandboxRequest, Storage, StorageDriver};
use skiff_agent_protocol::forward::FORWARD_VSOCK_PORT;
use skiff_vmm::{VmmError, VmmHandle};

pub use devices::check_host_devices;
pub use state_dir::{cleanup_dead_sandbox, Cleanup};
pub use template::{Template, TemplateError, TemplateInfo, TemplateStore};
pub use vm::SHARE_TAG;

use crate::agent::{self, Agent, AgentClient, AgentError};
use crate::cgroup::{CgroupError, SandboxCgroup};
use crate::config::{ConfigError, RuntimeConfig};
use crate::persist::{PersistError, SandboxState};
use crate::pod::{BootRequest, PodSandbox, SandboxFactory, Teardown};
use crate::pod_net::{self, NetworkError, PodNetwork};
use crate::port_forward::PortForwarder;
use crate::share::{HostDir, ShareError};
use crate::spec::SpecError;

/// Where the guest mounts the shared directory.
pub const GUEST_SHARE_DIR: &str = "/run/skiff/shared";
/// Bytes of host entropy a restored guest's RNG is reseeded with (512
/// bits: twice the CRNG's key).
const RESEED_BYTES: usize = 64;
/// How long a powering-off guest has to answer, then to end. Together
/// well under containerd's deadline for a task Delete (10 s): a guest that
/// is slow or does not answer is stopped rather than waited for. On
/// hardware a guest powers off in milliseconds.
const POWER_OFF_ANSWER: Duration = Duration::from_secs(2);
const POWER_OFF_EXIT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Persist(#[from] PersistError),
    #[error("sandbox cgroup: {0}")]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Share(#[from] ShareError),
    #[error("pod network: {0}")]
    Network(#[from] NetworkError),
    #[error("sandbox {id} is already running in shim process {pid}")]
    AlreadyRunning { id: String, pid: u32 },
    #[error("prepare {path}: {err}")]
    Prepare { path: PathBuf, err: std::io::Error },
    #[error("remove {path}: {why}")]
    Leftover { path: PathBuf, why: String },
    #[error(
        "the pod has {interfaces} network interfaces and hypervisor.hotplug_slots = \
         {hotplug_slots}: with vsock and the shared directory that is {slots} virtio slots, \
         at most {max}"
    )]
    TooManyDevices {
        interfaces: usize,
        hotplug_slots: u8,
        slots: usize,
        max: usize,
    },
    #[error("VMM: {0}")]
    Vmm(#[from] VmmError),
    #[error("sandbox template: {0}")]
    Template(#[from] TemplateError),
    #[error("read host entropy from /dev/urandom: {0}")]
    Entropy(std::io::Error),
    #[error(
        "the guest agent did not answer within {secs} s (VM {state}); guest console:\n{console}"
    )]
    AgentTimeout {
        secs: u64,
        state: String,
        console: String,
    },
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error("block device {path} ({major}:{minor}): {why}")]
    HostDevice {
        path: PathBuf,
        major: i64,
        minor: i64,
        why: String,
    },
}

/// Wall-clock milliseconds of the boot steps, for the shim's log.
#[derive(Clone, Debug, Default)]
pub struct BootTimeline {
    pub steps: Vec<(&'static str, f64)>,
}

impl std::fmt::Display for BootTimeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (step, ms)) in self.steps.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{step} {ms:.1} ms")?;
        }
        Ok(())
    }
}

/// What a sandbox is booted with.
pub struct SandboxSpec<'a> {
    pub id: &'a str,
    pub hostname: &'a str,
    pub config: &'a RuntimeConfig,
    /// The pod's network, discovered in its namespace; none: the host's.
    pub network: Option<PodNetwork>,
    /// The pod's cgroup, which the shim and the VM join.
    pub cgroups_path: Option<&'a str>,
    /// When the request that asked for it arrived (the timeline's zero).
    pub origin: Instant,
}

/// A running sandbox VM.
pub struct Sandbox {
    id: String,
    dir: PathBuf,
    /// The shared directory's tmpfs root: every path below it is the
    /// guest's to change and is only reached through this fd.
    share: HostDir,
    vmm: Arc<VmmHandle>,
    agent: Arc<dyn Agent>,
    state: Mutex<SandboxState>,
    timeline: BootTimeline,
    block_devices: devices::BlockDevices,
    /// Left when the sandbox shuts down (`cgroup`).
    cgroup: Mutex<Option<SandboxCgroup>>,
    /// Ended first when the sandbox shuts down.
    port_forward: Mutex<Option<PortForwarder>>,
}

impl Sandbox {
    /// Boots the sandbox (or restores it from its template) and waits for
    /// its agent. On error nothing is left: no VM, tap, mount or state
    /// directory.
    pub fn boot(req: SandboxSpec<'_>) -> Result<Self, SandboxError> {
        let SandboxSpec {
            id,
            hostname,
            config,
            network,
            cgroups_path,
            origin,
        } = req;
        config.validate()?;
        // Found or built before the pod's cgroup is joined: a template is
        // no one pod's (template.rs).
        let template = if config.factory.template {
            let store = TemplateStore::new(&config.factory);
            Some((store.get_or_build(config)?, store))
        } else {
            None
        };
        let dir = state_dir::claim(id)?;
        let mut undo = state_dir::Undo(Some(&dir));
        // Before the VM exists, so all of it is charged there.
        let cgroup = match cgroups_path.filter(|_| config.hypervisor.sandbox_cgroup) {
            Some(path) => SandboxCgroup::join(path, std::process::id())?,
            None => None,
        };
        let share = state_dir::mount_share(&dir, &config.shared_fs)?;
        let (vm_config, interfaces) = match template {
            Some(_) => vm::restored_config(config, &dir, share.path(), network.as_ref())?,
            None => (
                vm::config(config, &dir, share.path(), network.as_ref())?,
                Vec::new(),
            ),
        };
        let state = SandboxState {
            sandbox_id: id.into(),
            shim_pid: std::process::id(),
            share_dir: share.path().to_path_buf(),
            containers: Vec::new(),
            network: network.clone(),
            cgroup_dirs: cgroup
                .as_ref()
                .map(SandboxCgroup::created_dirs)
                .unwrap_or_default(),
        };
        state.save(&dir)?;

        let wanted = crate::limits::pod_fd_limit(&vm_config);
        match crate::limits::set_fd_limit(wanted) {
            Ok(limit) => tracing::info!(limit, wanted, "open-file limit sized for the pod"),
            Err(e) => tracing::warn!("open-file limit unchanged: {e}"),
        }
        let vmm = vm::spawn(network.as_ref(), origin)?;
        vmm.configure(vm_config)?;
        let mut interface_slots = Vec::new();
        match &template {
            None => vmm.start()?,
            Some((template, store)) => {
                restore(&vmm, store, template, config, id)?;
                for interface in interfaces {
                    interface_slots.push(vmm.add_device(interface)?.index);
                }
            }
        }
        // The VMM made the taps when the VM started or took them in.
        if let Some(net) = &network {
            pod_net::connect(net)?;
        }
        let (agent, agent_stream) = connect_agent(&vmm, config, &dir)?;
        let timeline = vm::timeline(&vmm, origin);
        let sandbox = Self {
            id: id.into(),
            dir: dir.clone(),
            share,
            vmm: Arc::new(vmm),
            agent: Arc::new(agent),
            state: Mutex::new(state),
            timeline,
            block_devices: devices::BlockDevices::default(),
            cgroup: Mutex::new(cgroup),
            port_forward: Mutex::new(None),
        };
        if template.is_some() {
            // First: until now the guest's RNG is the template's, which
            // every sandbox restored from it shares.
            sandbox.agent.reseed_random_dev(host_entropy()?)?;
            for slot in interface_slots {
                sandbox.agent.add_device(slot)?;
            }
        }
        sandbox.set_guest_clock()?;
        let mut storage = Storage::new();
        storage.driver = StorageDriver::STORAGE_DRIVER_VIRTIO_FS.into();
        storage.source = SHARE_TAG.into();
        storage.mount_point = GUEST_SHARE_DIR.into();
        let mut req = CreateSandboxRequest::new();
        req.sandbox_id = id.into();
        req.hostname = hostname.into();
        req.storages.push(storage);
        sandbox.agent.create_sandbox(req)?;
        pod_net::configure_guest(&*sandbox.agent, id, network.as_ref())?;
        if let Some(net) = &network {
            *sandbox
                .port_forward
                .lock()
                .unwrap_or_else(|e| e.into_inner()) =
                start_port_forward(id, &net.netns, &sandbox.vmm);
        }
        vm::watch_exit(id, sandbox.vmm.clone(), agent_stream);
        undo.0 = None;
        Ok(sandbox)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn timeline(&self) -> &BootTimeline {
        &self.timeline
    }

    /// The guest has no battery-backed clock: give it the host's time.
    fn set_guest_clock(&self) -> Result<(), SandboxError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.agent
            .set_guest_date_time(now.as_secs() as i64, now.subsec_micros() as i64)?;
        Ok(())
    }

    /// The container's directory in the share, on the host.
    fn host_dir(&self, container_id: &str) -> PathBuf {
        self.share.path().join(container_id)
    }

    /// Changes the sandbox's state and writes it to `persist.json`.
    fn save_state(&self, update: impl FnOnce(&mut SandboxState)) -> Result<(), SandboxError> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        update(&mut state);
        state.save(&self.dir)?;
        Ok(())
    }

    /// Ends the VM (`how`: asking the guest to power off first, for a
    /// bounded time, or not), then removes every trace of the sandbox on
    /// the host.
    pub fn shutdown(&self, how: Teardown) -> Result<(), SandboxError> {
        drop(
            self.port_forward
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
        if how == Teardown::PowerOff && self.agent.destroy_sandbox(POWER_OFF_ANSWER).is_ok() {
            self.vmm.wait_exit(Some(POWER_OFF_EXIT));
        }
        // Already stopped is fine; the VMM thread ends when this is dropped.
        let _ = self.vmm.stop();
        if let Some(mut cgroup) = self.cgroup.lock().unwrap_or_else(|e| e.into_inner()).take() {
            cgroup.leave();
        }
        state_dir::remove(&self.dir)
    }
}

/// CRI port forwarding for the pod's network namespace, through the VMM's
/// vsock to the agent. A pod runs without it where the host cannot steer
/// its loopback connections (no sk_lookup: Linux before 5.9, no CAP_BPF):
/// the warning names why, and a PortForward to it finds nothing listening.
fn start_port_forward(id: &str, netns: &Path, vmm: &Arc<VmmHandle>) -> Option<PortForwarder> {
    // Weak: a connection left open must not keep the VM's VMM alive.
    let vmm = Arc::downgrade(vmm);
    let dial = Arc::new(move || {
        let vmm = vmm
            .upgrade()
            .ok_or_else(|| std::io::Error::other("the VM has ended"))?;
        vmm.vsock_connect(FORWARD_VSOCK_PORT)
            .map_err(std::io::Error::other)
    });
    let started = std::fs::File::open(netns)
        .map_err(|e| format!("open {}: {e}", netns.display()))
        .and_then(|ns| PortForwarder::start(&ns, dial).map_err(|e| e.to_string()));
    match started {
        Ok(forwarder) => Some(forwarder),
        Err(e) => {
            tracing::warn!("sandbox {id}: no port forwarding: {e}");
            None
        }
    }
}

/// Restores the configured VM from `template`; a template the VMM refuses
/// (it names why) is rebuilt once and restored from again.
fn restore(
    vmm: &VmmHandle,
    store: &TemplateStore,
    template: &Template,
    config: &RuntimeConfig,
    id: &str,
) -> Result<(), SandboxError> {
    let Err(refused) = vmm.restore(&template.dir) else {
        return Ok(());
    };
    tracing::warn!(
        "sandbox {id}: template {} refused ({refused}); rebuilding it",
        template.key
    );
    let rebuilt = store.rebuild(config, template)?;
    Ok(vmm.restore(&rebuilt.dir)?)
}

/// Waits for the agent of the VM whose state directory is `dir`; an agent
/// that never answers is reported with the guest console's last lines.
fn connect_agent(
    vmm: &VmmHandle,
    config: &RuntimeConfig,
    dir: &Path,
) -> Result<(AgentClient, UnixStream), SandboxError> {
    let boot_timeout = Duration::from_secs(config.agent.boot_timeout_secs);
    let request_timeout = Duration::from_secs(config.agent.request_timeout_secs);
    agent::connect(vmm, boot_timeout, request_timeout).map_err(|e| match e {
        agent::ConnectError::Vmm(e) => SandboxError::Vmm(e),
        agent::ConnectError::Agent(e) => SandboxError::Agent(e),
        agent::ConnectError::Timeout { secs, state } => SandboxError::AgentTimeout {
            secs,
            state: format!("{state:?}"),
            console: vm::console_tail(dir),
        },
    })
}

/// Fresh bytes from the host's CRNG for a restored guest's.
fn host_entropy() -> Result<Vec<u8>, SandboxError> {
    let mut bytes = vec![0; RESEED_BYTES];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(SandboxError::Entropy)?;
    Ok(bytes)
}

/// The VM exit watcher holds the VMM too: stopping the VM here ends it,
/// and the VM with the last holder, should a sandbox go without
/// [`Sandbox::shutdown`].
impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = self.vmm.stop();
    }
}

impl PodSandbox for Sandbox {
    fn id(&self) -> &str {
        &self.id
    }

    fn agent(&self) -> Arc<dyn Agent> {
        self.agent.clone()
    }

    fn timeline(&self) -> String {
        self.timeline.to_string()
    }

    fn add_container(
        &self,
        container_id: &str,
        bundle: &Path,
        rootfs: &Path,
        spec: Spec,
    ) -> Result<(), SandboxError> {
        self.create_container(container_id, bundle, rootfs, spec)
    }

    fn remove_container(&self, container_id: &str) -> Result<(), SandboxError> {
        Sandbox::remove_container(self, container_id)
    }

    fn shutdown(&self, how: Teardown) -> Result<(), SandboxError> {
        Sandbox::shutdown(self, how)
    }
}

/// The real [`SandboxFactory`]: a VM per pod, with the pod's network
/// found in the namespace its spec names.
pub struct VmSandboxes;

impl SandboxFactory for VmSandboxes {
    fn boot(&self, req: BootRequest<'_>) -> Result<Arc<dyn PodSandbox>, SandboxError> {
        let spec = req.spec;
        let network = match pod_net::netns_of(spec) {
            Some(netns) => Some(pod_net::inspect(&netns)?),
            None => {
                tracing::info!(
                    "sandbox {} has no network namespace: the VM gets no network interface",
                    req.sandbox_id
                );
                None
            }
        };
        // A pod without a hostname gets the node's, as runc's new UTS
        // namespace does (a copy of the host's) and as containerd writes
        // it into the pod's /etc/hostname.
        let hostname = spec
            .hostname()
            .clone()
            .filter(|h| !h.is_empty())
            .or_else(|| nix::unistd::gethostname().ok()?.into_string().ok())
            .unwrap_or_else(|| req.sandbox_id.to_string());
        let cgroups_path = spec.linux().as_ref().and_then(|l| l.cgroups_path().clone());
        let sandbox = Sandbox::boot(SandboxSpec {
            id: req.sandbox_id,
            hostname: &hostname,
            config: req.config,
            network,
            cgroups_path: cgroups_path.as_deref().and_then(Path::to_str),
            origin: req.origin,
        })?;
        Ok(Arc::new(sandbox))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeline_reads_as_one_line() {
        let t = BootTimeline {
            steps: vec![("VM created", 1.25), ("agent ready", 20000.0)],
        };
        assert_eq!(t.to_string(), "VM created 1.2 ms, agent ready 20000.0 ms");
    }
}
