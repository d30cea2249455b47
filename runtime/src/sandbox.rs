//! A pod's sandbox: its VM, booted by the VMM in this process, the agent
//! connection to the guest reached through the VMM's in-process vsock
//! connector, and the shared directory that carries container root
//! filesystems into the guest.

use std::collections::HashMap;
use std::os::fd::IntoRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use oci_spec::runtime::{LinuxDeviceType, Spec};
use skiff_agent_protocol::agent::{
    CheckRequest, ContainerRequest, CreateContainerRequest, CreateSandboxRequest, DeviceRequest,
    Empty, Interface, IpAddress, RemoveContainerRequest, Route, Routes, SetGuestDateTimeRequest,
    Storage, StorageDriver,
};
use skiff_agent_protocol::agent_ttrpc::AgentServiceClient;
use skiff_agent_protocol::ttrpc;
use skiff_agent_protocol::DEFAULT_VSOCK_PORT;
use skiff_vmm::config::{
    default_cmdline, host_has_hardware_virt, parse_mac, BlockConfig, DeviceConfig, FsConfig,
    NetConfig, VsockConfig,
};
use skiff_vmm::timeline::Milestone;
use skiff_vmm::{ConsoleConfig, ExitReason, VmConfig, VmState, VmmError, VmmHandle};

use crate::cgroup::{self, CgroupError, SandboxCgroup};
use crate::config::{ConfigError, RuntimeConfig, SharedFsConfig, SHARED_FS_TMPFS_INODES};
use crate::network::{self, NetworkError, PodNetwork};
use crate::persist::{self, ContainerState, PersistError, SandboxState};
use crate::share::{self, HostDir, ShareError};
use crate::spec::{self, BlockDevice, GuestSpec, SpecError, ROOTFS_DIR};

/// virtio-fs tag of the sandbox's shared directory.
pub const SHARE_TAG: &str = "skiffshared";
/// Where the guest mounts the shared directory.
pub const GUEST_SHARE_DIR: &str = "/run/skiff/shared";
const GUEST_CID: u32 = 3;
/// The shared directory's name in the sandbox's state directory.
const SHARE_DIR: &str = "shared";
const CONSOLE_LOG: &str = "console.log";
/// Console lines quoted in an error when the guest never answered.
const CONSOLE_TAIL_LINES: usize = 20;

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
    #[error("pod network: interface {name} has a bad MAC {mac:?}")]
    BadMac { name: String, mac: String },
    #[error("sandbox {id} is already running in shim process {pid}")]
    AlreadyRunning { id: String, pid: u32 },
    #[error("prepare {path}: {err}")]
    Prepare { path: PathBuf, err: std::io::Error },
    #[error("remove {path}: {why}")]
    Leftover { path: PathBuf, why: String },
    #[error("VMM: {0}")]
    Vmm(#[from] VmmError),
    #[error(
        "the guest agent did not answer within {secs} s (VM {state}); guest console:\n{console}"
    )]
    AgentTimeout {
        secs: u64,
        state: String,
        console: String,
    },
    #[error("agent {call}: {}", describe(err))]
    Agent {
        call: &'static str,
        err: ttrpc::Error,
    },
    #[error("container {0} is not in this sandbox")]
    NoSuchContainer(String),
    #[error("block device {path} ({major}:{minor}): {why}")]
    HostDevice {
        path: PathBuf,
        major: i64,
        minor: i64,
        why: String,
    },
}

/// An agent error as a person reads it: a status's message, not its
/// protobuf dump.
pub fn describe(err: &ttrpc::Error) -> String {
    match err {
        ttrpc::Error::RpcStatus(status) => status.message.clone(),
        other => other.to_string(),
    }
}

fn agent_err(call: &'static str) -> impl FnOnce(ttrpc::Error) -> SandboxError {
    move |err| SandboxError::Agent { call, err }
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

/// A running sandbox VM.
pub struct Sandbox {
    id: String,
    dir: PathBuf,
    /// The shared directory's tmpfs root: every path below it is the
    /// guest's to change and is only reached through this fd.
    share: HostDir,
    request_timeout: Duration,
    vmm: Arc<VmmHandle>,
    agent: AgentServiceClient,
    state: Mutex<SandboxState>,
    timeline: BootTimeline,
    /// The VMM slots of the block devices hot-added for each container.
    block_devices: Mutex<HashMap<String, Vec<u32>>>,
    /// Left when the sandbox shuts down (`cgroup`).
    cgroup: Mutex<Option<SandboxCgroup>>,
}

/// Undoes a half-made sandbox unless disarmed.
struct Undo<'a>(Option<&'a Path>);

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        if let Some(dir) = self.0 {
            if let Err(e) = remove_sandbox_dir(dir) {
                tracing::error!("clean up {}: {e}", dir.display());
            }
        }
    }
}

/// Unwires the pod network recorded in the state directory (if any),
/// unmounts everything below it (container binds first, then the share's
/// tmpfs, which takes what the guest wrote there with it) and removes it,
/// never following a symlink nor entering a mount that is left.
fn remove_sandbox_dir(dir: &Path) -> Result<(), SandboxError> {
    if let Ok(SandboxState {
        network: Some(net), ..
    }) = SandboxState::load(dir)
    {
        network::disconnect(&net)?;
    }
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
        return Err(SandboxError::Leftover {
            path: dir.into(),
            why: "not a directory below a state root".into(),
        });
    };
    let parent = match HostDir::open(parent) {
        Ok(parent) => parent,
        Err(_) if !parent.exists() => return Ok(()),
        Err(e) => return Err(ShareError::from(e).into()),
    };
    let name = Path::new(name);
    share::unmount_tree(&parent, name).map_err(ShareError::from)?;
    let removal = share::remove_tree(&parent, name).map_err(ShareError::from)?;
    if removal.complete {
        return Ok(());
    }
    Err(SandboxError::Leftover {
        path: dir.into(),
        why: leftover(&removal),
    })
}

fn leftover(removal: &share::Removal) -> String {
    let mut why = Vec::new();
    if !removal.skipped_mounts.is_empty() {
        let points: Vec<String> = removal
            .skipped_mounts
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        why.push(format!("still mounted: {}", points.join(", ")));
    }
    for (path, err) in &removal.failed {
        why.push(format!("{}: {err}", path.display()));
    }
    if removal.limit_hit {
        why.push("the tree is too deep or too large to remove".into());
    }
    if why.is_empty() {
        why.push("not empty".into());
    }
    why.join("; ")
}

/// Makes the sandbox's state directory, mode 0700 (its parents 0711):
/// only root on the host reaches the share, console log and sockets.
fn make_state_dir(dir: &Path) -> Result<(), SandboxError> {
    use std::os::unix::fs::DirBuilderExt;
    let prepare = |path: &Path| {
        let path = path.to_path_buf();
        move |err| SandboxError::Prepare { path, err }
    };
    if let Some(parent) = dir.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(parent)
            .map_err(prepare(parent))?;
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(prepare(dir))
}

/// Mounts the share's own bounded tmpfs in the state directory `dir`.
fn mount_share(dir: &Path, config: &SharedFsConfig) -> Result<HostDir, SandboxError> {
    let state = HostDir::open(dir).map_err(ShareError::from)?;
    Ok(share::mount_tmpfs(
        &state,
        SHARE_DIR,
        config.tmpfs_size_mib,
        SHARED_FS_TMPFS_INODES,
    )?)
}

impl Sandbox {
    /// Boots the sandbox `id` and waits for its agent. `origin` is when
    /// the request that asked for it arrived (the timeline's zero).
    /// On error nothing is left: no VM, mount or state directory.
    pub fn boot(
        id: &str,
        hostname: &str,
        config: &RuntimeConfig,
        pod_network: Option<PodNetwork>,
        cgroups_path: Option<&str>,
        origin: Instant,
    ) -> Result<Self, SandboxError> {
        config.validate()?;
        let dir = persist::sandbox_dir(Path::new(persist::STATE_ROOT), id)?;
        if dir.exists() {
            match SandboxState::load(&dir) {
                Ok(old)
                    if old.shim_pid != std::process::id() && persist::shim_alive(old.shim_pid) =>
                {
                    return Err(SandboxError::AlreadyRunning {
                        id: id.into(),
                        pid: old.shim_pid,
                    })
                }
                _ => {
                    tracing::warn!("removing stale state of sandbox {id}");
                    remove_sandbox_dir(&dir)?;
                }
            }
        }
        make_state_dir(&dir)?;
        let mut undo = Undo(Some(&dir));
        // Before the VM exists, so all of it is charged there.
        let cgroup = match cgroups_path.filter(|_| config.hypervisor.sandbox_cgroup) {
            Some(path) => SandboxCgroup::join(path, std::process::id())?,
            None => None,
        };
        let share_root = mount_share(&dir, &config.shared_fs)?;
        let share = share_root.path().to_path_buf();
        let state = SandboxState {
            sandbox_id: id.into(),
            shim_pid: std::process::id(),
            share_dir: share.clone(),
            containers: Vec::new(),
            network: pod_network.clone(),
            cgroup_dirs: cgroup
                .as_ref()
                .map(SandboxCgroup::created_dirs)
                .unwrap_or_default(),
        };
        state.save(&dir)?;

        let hv = &config.hypervisor;
        let mut cmdline = default_cmdline(host_has_hardware_virt());
        if hv.debug_console {
            cmdline = cmdline.replace(" quiet", "");
        }
        if !hv.kernel_params.is_empty() {
            cmdline = format!("{cmdline} {}", hv.kernel_params);
        }
        let console = dir.join(CONSOLE_LOG);
        let mut devices = vec![
            DeviceConfig::Vsock(VsockConfig {
                guest_cid: GUEST_CID,
                socket: dir.join("vsock.sock"),
            }),
            DeviceConfig::Fs(FsConfig {
                tag: SHARE_TAG.into(),
                path: share.clone(),
                read_only: false,
                cache: config.shared_fs.cache_policy()?,
            }),
        ];
        for iface in pod_network.iter().flat_map(|n| &n.interfaces) {
            let mac = parse_mac(&iface.mac).map_err(|_| SandboxError::BadMac {
                name: iface.name.clone(),
                mac: iface.mac.clone(),
            })?;
            devices.push(DeviceConfig::Net(NetConfig {
                tap: iface.tap.clone(),
                mac: Some(mac),
            }));
        }
        let vm_config = VmConfig {
            kernel: hv.kernel.clone(),
            initrd: Some(hv.initrd.clone()),
            cmdline,
            vcpus: hv.vcpus,
            memory_mib: hv.memory_mib,
            console: ConsoleConfig::File(console.clone()),
            devices,
            hotplug_slots: hv.hotplug_slots,
            seccomp: hv.seccomp,
        };
        let wanted = crate::limits::pod_fd_limit(&vm_config);
        match crate::limits::set_fd_limit(wanted) {
            Ok(limit) => tracing::info!(limit, wanted, "open-file limit sized for the pod"),
            Err(e) => tracing::warn!("open-file limit unchanged: {e}"),
        }
        let vmm = spawn_vmm(pod_network.as_ref(), origin)?;
        vmm.configure(vm_config)?;
        vmm.start()?;
        // The VMM made the taps when the VM started.
        if let Some(net) = &pod_network {
            network::connect(net)?;
        }
        let (agent, agent_stream) = connect_agent(&vmm, config.agent.boot_timeout_secs, &console)?;
        let vmm = Arc::new(vmm);
        let mut timeline = BootTimeline::default();
        let report = vmm.timeline();
        for milestone in [
            Milestone::VmCreated,
            Milestone::KernelLoaded,
            Milestone::FirstKvmRun,
            Milestone::GuestInit,
        ] {
            if let Some(mark) = report.get(milestone) {
                timeline.steps.push((milestone.label(), mark.wall_ms));
            }
        }
        timeline.steps.push(("agent ready", ms_since(origin)));

        let request_timeout = Duration::from_secs(config.agent.request_timeout_secs);
        let sandbox = Self {
            id: id.into(),
            dir: dir.clone(),
            share: share_root,
            request_timeout,
            vmm,
            agent,
            state: Mutex::new(state),
            timeline,
            block_devices: Mutex::default(),
            cgroup: Mutex::new(cgroup),
        };
        sandbox.set_guest_clock()?;
        let mut storage = Storage::new();
        storage.driver = StorageDriver::STORAGE_DRIVER_VIRTIO_FS.into();
        storage.source = SHARE_TAG.into();
        storage.mount_point = GUEST_SHARE_DIR.into();
        let mut req = CreateSandboxRequest::new();
        req.sandbox_id = id.into();
        req.hostname = hostname.into();
        req.storages.push(storage);
        sandbox
            .agent
            .create_sandbox(sandbox.ctx(), &req)
            .map_err(agent_err("CreateSandbox"))?;
        sandbox.configure_guest_network(pod_network.as_ref())?;
        watch_vm_exit(id, sandbox.vmm.clone(), agent_stream);
        undo.0 = None;
        Ok(sandbox)
    }

    /// Brings the guest's loopback up, gives the guest's interfaces (found
    /// by MAC) the pod's IPv4 addresses and MTU, then the pod's IPv4
    /// routes. The guest kernel has no IPv6: the pod's IPv6 addresses and
    /// routes are left out (and logged).
    fn configure_guest_network(&self, net: Option<&PodNetwork>) -> Result<(), SandboxError> {
        let mut lo = Interface::new();
        lo.name = "lo".into();
        lo.up = true;
        let mut localhost = IpAddress::new();
        localhost.address = "127.0.0.1".into();
        localhost.prefix_length = 8;
        lo.addresses.push(localhost);
        self.agent
            .update_interface(self.ctx(), &lo)
            .map_err(agent_err("UpdateInterface lo"))?;
        let Some(net) = net else { return Ok(()) };
        let mut guest_names = std::collections::HashMap::new();
        for iface in &net.interfaces {
            let mut req = Interface::new();
            req.hardware_address = iface.mac.clone();
            req.mtu = iface.mtu;
            req.up = true;
            for cidr in &iface.addresses {
                let Some((address, prefix)) = cidr.split_once('/') else {
                    continue;
                };
                if address.contains(':') {
                    tracing::warn!("sandbox {}: IPv6 address {cidr} left out", self.id);
                    continue;
                }
                let mut ip = IpAddress::new();
                ip.address = address.into();
                ip.prefix_length = prefix.parse().unwrap_or(0);
                req.addresses.push(ip);
            }
            let guest = self
                .agent
                .update_interface(self.ctx(), &req)
                .map_err(agent_err("UpdateInterface"))?;
            guest_names.insert(iface.name.clone(), guest.name);
        }
        let mut routes = Routes::new();
        for r in &net.routes {
            let Some(device) = guest_names.get(&r.device) else {
                continue;
            };
            let v6 = |a: &str| a.contains(':');
            if v6(&r.destination) || r.gateway.as_deref().is_some_and(v6) {
                continue;
            }
            let mut route = Route::new();
            route.destination = r.destination.clone();
            route.gateway = r.gateway.clone().unwrap_or_default();
            route.device = device.clone();
            routes.routes.push(route);
        }
        if !routes.routes.is_empty() {
            self.agent
                .update_routes(self.ctx(), &routes)
                .map_err(agent_err("UpdateRoutes"))?;
        }
        tracing::info!(
            "sandbox {}: pod network in the guest: {:?}, {} routes",
            self.id,
            guest_names,
            routes.routes.len()
        );
        Ok(())
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn timeline(&self) -> &BootTimeline {
        &self.timeline
    }

    /// The agent client; cheap to clone, safe to use from many threads.
    pub fn agent(&self) -> &AgentServiceClient {
        &self.agent
    }

    /// A context with the configured deadline, for calls that do not wait
    /// for a process.
    pub fn ctx(&self) -> ttrpc::context::Context {
        ttrpc::context::with_timeout(self.request_timeout.as_nanos() as i64)
    }

    pub fn vmm(&self) -> &VmmHandle {
        &self.vmm
    }

    /// The guest has no battery-backed clock: give it the host's time.
    fn set_guest_clock(&self) -> Result<(), SandboxError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut req = SetGuestDateTimeRequest::new();
        req.seconds = now.as_secs() as i64;
        req.microseconds = now.subsec_micros() as i64;
        self.agent
            .set_guest_date_time(self.ctx(), &req)
            .map(drop)
            .map_err(agent_err("SetGuestDateTime"))
    }

    fn host_dir(&self, container_id: &str) -> PathBuf {
        self.share.path().join(container_id)
    }

    fn save_state(&self, update: impl FnOnce(&mut SandboxState)) -> Result<(), SandboxError> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        update(&mut state);
        state.save(&self.dir)?;
        Ok(())
    }

    /// Shares the container's rootfs (`rootfs`, already mounted on the
    /// host) and the host paths its spec binds in, then creates it in the
    /// guest. On error everything made for it is undone.
    pub fn create_container(
        &self,
        container_id: &str,
        bundle: &Path,
        rootfs: &Path,
        spec: Spec,
    ) -> Result<(), SandboxError> {
        persist::check_id(container_id)?;
        let guest_dir = Path::new(GUEST_SHARE_DIR).join(container_id);
        let mut guest = spec::for_guest(spec, &guest_dir)?;
        let host_dir = self.host_dir(container_id);
        let mut mounts = vec![host_dir.join(ROOTFS_DIR)];
        mounts.extend(guest.binds.iter().map(|b| host_dir.join(&b.share_path)));
        // Recorded before mounting: a crash in between leaves a list that
        // cleanup walks harmlessly.
        self.save_state(|s| {
            s.containers.push(ContainerState {
                id: container_id.into(),
                bundle: bundle.into(),
                mounts,
            })
        })?;
        let in_share = Path::new(container_id);
        let result = (|| {
            share::bind(&self.share, &in_share.join(ROOTFS_DIR), rootfs, false)?;
            for bind in &guest.binds {
                share::bind(
                    &self.share,
                    &in_share.join(&bind.share_path),
                    &bind.source,
                    bind.read_only,
                )?;
            }
            self.attach_block_devices(container_id, &mut guest)?;
            let mut req = CreateContainerRequest::new();
            req.container_id = container_id.into();
            req.oci_spec_json = serde_json::to_vec(&guest.spec).expect("spec serialises");
            self.agent
                .create_container(self.ctx(), &req)
                .map_err(agent_err("CreateContainer"))?;
            Ok(())
        })();
        if result.is_err() {
            let _ = self.detach_block_devices(container_id);
            let _ = self.unshare(container_id);
        }
        result
    }

    /// Hot-adds the host block devices `guest` passes in and gives its
    /// `linux.devices` entries the guest's numbers for them.
    fn attach_block_devices(
        &self,
        container_id: &str,
        guest: &mut GuestSpec,
    ) -> Result<(), SandboxError> {
        for device in guest.block_devices.clone() {
            let host_path = host_block_device(&device)?;
            let slot = self.vmm.add_device(DeviceConfig::Block(BlockConfig {
                path: host_path.clone(),
                read_only: false,
                direct: false,
            }))?;
            self.block_devices
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(container_id.into())
                .or_default()
                .push(slot.index);
            let mut req = DeviceRequest::new();
            req.mmio_slot = slot.index;
            let added = self
                .agent
                .add_device(self.ctx(), &req)
                .map_err(agent_err("AddDevice"))?;
            guest.set_guest_device_number(device.index, added.major, added.minor);
            tracing::info!(
                "container {container_id}: {} is {} ({}:{}) in the guest, slot {}",
                host_path.display(),
                added.name,
                added.major,
                added.minor,
                slot.index
            );
        }
        Ok(())
    }

    /// Unbinds the container's hot-added devices in the guest and takes
    /// them out of the VM.
    fn detach_block_devices(&self, container_id: &str) -> Result<(), SandboxError> {
        let slots = self
            .block_devices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(container_id)
            .unwrap_or_default();
        let mut result = Ok(());
        for slot in slots.into_iter().rev() {
            let mut req = DeviceRequest::new();
            req.mmio_slot = slot;
            if let Err(e) = self.agent.remove_device(self.ctx(), &req) {
                // Taken out anyway: the container that used it is gone.
                tracing::warn!("container {container_id}: slot {slot}: {}", describe(&e));
            }
            if let Err(e) = self.vmm.remove_device(slot) {
                result = Err(e.into());
            }
        }
        result
    }

    pub fn start_container(&self, container_id: &str) -> Result<(), SandboxError> {
        let mut req = ContainerRequest::new();
        req.container_id = container_id.into();
        self.agent
            .start_container(self.ctx(), &req)
            .map(drop)
            .map_err(agent_err("StartContainer"))
    }

    /// Removes the container from the guest and its share from the host.
    pub fn remove_container(&self, container_id: &str) -> Result<(), SandboxError> {
        let mut req = RemoveContainerRequest::new();
        req.container_id = container_id.into();
        let removed = self
            .agent
            .remove_container(self.ctx(), &req)
            .map(drop)
            .map_err(agent_err("RemoveContainer"));
        let detached = self.detach_block_devices(container_id);
        self.unshare(container_id)?;
        removed.and(detached)
    }

    /// Unmounts and removes the container's directory in the share. What
    /// the guest made unremovable meanwhile (a mount renamed into it, a
    /// tree too large) is logged and left for the sandbox's teardown,
    /// which unmounts the whole share.
    fn unshare(&self, container_id: &str) -> Result<(), SandboxError> {
        let in_share = Path::new(container_id);
        share::unmount_tree(&self.share, in_share).map_err(ShareError::from)?;
        match share::remove_tree(&self.share, in_share) {
            Ok(removal) if !removal.complete => tracing::warn!(
                "container {container_id}: {} left: {}",
                self.host_dir(container_id).display(),
                leftover(&removal)
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!("container {container_id}: {e}"),
        }
        self.save_state(|s| s.containers.retain(|c| c.id != container_id))
    }

    /// Asks the guest to power off, waits a little, then stops the VM and
    /// removes every trace of the sandbox on the host.
    pub fn shutdown(&self) -> Result<(), SandboxError> {
        let ctx = ttrpc::context::with_timeout(Duration::from_secs(5).as_nanos() as i64);
        if self.agent.destroy_sandbox(ctx, &Empty::new()).is_ok() {
            self.vmm.wait_exit(Some(Duration::from_secs(10)));
        }
        // Already stopped is fine; the VMM thread ends when this is dropped.
        let _ = self.vmm.stop();
        if let Some(mut cgroup) = self.cgroup.lock().unwrap_or_else(|e| e.into_inner()).take() {
            cgroup.leave();
        }
        remove_sandbox_dir(&self.dir)
    }
}

/// Checks that every block device `spec` passes in is on this host, so a
/// bad one fails the request before a VM is made for it.
pub fn check_host_devices(spec: &Spec) -> Result<(), SandboxError> {
    let devices = spec.linux().as_ref().and_then(|l| l.devices().as_ref());
    for (index, device) in devices.into_iter().flatten().enumerate() {
        if device.typ() == LinuxDeviceType::B {
            host_block_device(&BlockDevice {
                index,
                path: device.path().clone(),
                major: device.major(),
                minor: device.minor(),
            })?;
        }
    }
    Ok(())
}

/// The host's node for `device`'s number, found through sysfs (no udev
/// `/dev/block` links needed), checked to be that block device.
fn host_block_device(device: &BlockDevice) -> Result<PathBuf, SandboxError> {
    let (major, minor) = (device.major, device.minor);
    let err = |why: String| SandboxError::HostDevice {
        path: device.path.clone(),
        major,
        minor,
        why,
    };
    let uevent = format!("/sys/dev/block/{major}:{minor}/uevent");
    let text = std::fs::read_to_string(&uevent)
        .map_err(|e| err(format!("not on this host ({uevent}: {e})")))?;
    let name = text
        .lines()
        .find_map(|l| l.strip_prefix("DEVNAME="))
        .filter(|n| !n.is_empty() && !n.split('/').any(|part| part == ".."))
        .ok_or_else(|| err(format!("{uevent} names no device")))?;
    let node = Path::new("/dev").join(name);
    let meta = std::fs::metadata(&node).map_err(|e| err(format!("{}: {e}", node.display())))?;
    let number = libc::makedev(major as u32, minor as u32);
    if !meta.file_type().is_block_device() || meta.rdev() != number {
        return Err(err(format!("{} is another device", node.display())));
    }
    Ok(node)
}

/// Starts the VMM thread inside the pod's network namespace, so the taps
/// it opens (and every thread it starts) live there; in this process's own
/// namespace when the pod has none.
fn spawn_vmm(net: Option<&PodNetwork>, origin: Instant) -> Result<VmmHandle, SandboxError> {
    let Some(net) = net else {
        return Ok(VmmHandle::spawn(origin)?);
    };
    let ns = std::fs::File::open(&net.netns).map_err(|err| NetworkError::OpenNetns {
        path: net.netns.clone(),
        err,
    })?;
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("vmm-spawn".into())
            .spawn_scoped(scope, || {
                network::enter(&ns, &net.netns)?;
                Ok(VmmHandle::spawn(origin)?)
            })
            .map_err(|e| SandboxError::Network(NetworkError::Thread(e)))?
            .join()
            .unwrap_or_else(|_| Err(NetworkError::Thread(std::io::Error::other("panicked")).into()))
    })
}

fn ms_since(origin: Instant) -> f64 {
    origin.elapsed().as_secs_f64() * 1e3
}

/// Connects to the agent's vsock port until it answers a health check,
/// the VM ends, or the deadline passes.
/// The VM exit watcher holds the VMM too: stopping the VM here ends it,
/// and the VM with the last holder, should a sandbox go without
/// [`Sandbox::shutdown`].
impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = self.vmm.stop();
    }
}

/// Logs why the VM ended when it ends on its own (the guest, a fault, a
/// VMM thread stopped by its seccomp filter), and closes the agent's
/// stream, so every call waiting in the agent (a process's wait, the OOM
/// events) fails at once and the containers are reported exited: the
/// device side of that stream may be held by a parked thread and never
/// close by itself.
fn watch_vm_exit(id: &str, vmm: Arc<VmmHandle>, agent_stream: UnixStream) {
    let id = id.to_string();
    let watcher = std::thread::Builder::new()
        .name("vm-exit".into())
        .spawn(move || {
            let Some(exit) = vmm.wait_exit(None) else {
                return;
            };
            if exit.reason != ExitReason::Stopped {
                tracing::error!("sandbox {id}: the VM ended: {}", exit.reason);
            }
            let _ = agent_stream.shutdown(std::net::Shutdown::Both);
        });
    if let Err(e) = watcher {
        tracing::warn!("sandbox: no VM exit watcher: {e}");
    }
}

/// The agent's client and a handle on its stream (see [`watch_vm_exit`]).
fn connect_agent(
    vmm: &VmmHandle,
    timeout_secs: u64,
    console: &Path,
) -> Result<(AgentServiceClient, UnixStream), SandboxError> {
    let deadline = Instant::now() + Duration::from_secs(timeout_secs);
    loop {
        let state = vmm.state()?;
        if state == VmState::Running {
            if let Ok(stream) = vmm.vsock_connect(DEFAULT_VSOCK_PORT) {
                let handle = stream
                    .try_clone()
                    .map_err(|e| agent_err("connect")(ttrpc::Error::Others(e.to_string())))?;
                let client = ttrpc::Client::new(stream.into_raw_fd())
                    .map(AgentServiceClient::new)
                    .map_err(agent_err("connect"))?;
                let ctx = ttrpc::context::with_timeout(Duration::from_secs(30).as_nanos() as i64);
                if client.check(ctx, &CheckRequest::new()).is_ok() {
                    return Ok((client, handle));
                }
            }
        }
        if state != VmState::Running || Instant::now() >= deadline {
            return Err(SandboxError::AgentTimeout {
                secs: timeout_secs,
                state: format!("{state:?}"),
                console: console_tail(console),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn console_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(CONSOLE_TAIL_LINES)..].join("\n")
}

/// What `shim delete` found and removed for a sandbox whose shim is gone.
#[derive(Debug, Default)]
pub struct Cleanup {
    pub removed_state: bool,
}

/// Cleans up after the shim that ran sandbox `id` died: its VM died with
/// it, so every mount, tap device and the state directory go. Does
/// nothing when the shim is alive (it cleans up itself) or when there is
/// no state.
pub fn cleanup_dead_sandbox(id: &str) -> Result<Cleanup, SandboxError> {
    let dir = persist::sandbox_dir(Path::new(persist::STATE_ROOT), id)?;
    if !dir.exists() {
        return Ok(Cleanup::default());
    }
    if let Ok(state) = SandboxState::load(&dir) {
        if state.shim_pid != std::process::id() && persist::shim_alive(state.shim_pid) {
            return Ok(Cleanup::default());
        }
        cgroup::remove_dead(&state.cgroup_dirs);
    }
    remove_sandbox_dir(&dir)?;
    Ok(Cleanup {
        removed_state: true,
    })
}

/// The CRI annotations that group containers into pods.
pub mod annotations {
    pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
    pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
    pub const TYPE_SANDBOX: &str = "sandbox";
    pub const TYPE_CONTAINER: &str = "container";
}

/// The sandbox a container belongs to: its CRI pod's, or (for a plain
/// `ctr run`, without CRI annotations) a sandbox of its own.
pub fn sandbox_id_of(spec: &Spec, container_id: &str) -> String {
    let annotations = spec.annotations().clone().unwrap_or_default();
    match annotations
        .get(annotations::CONTAINER_TYPE)
        .map(String::as_str)
    {
        Some(annotations::TYPE_CONTAINER) => annotations
            .get(annotations::SANDBOX_ID)
            .cloned()
            .unwrap_or_else(|| container_id.into()),
        _ => container_id.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_devices_must_be_on_this_host() {
        let spec: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "linux": {"devices": [
                {"path": "/dev/null", "type": "c", "major": 1, "minor": 3},
                {"path": "/dev/nope", "type": "b", "major": 4095, "minor": 4095}
            ]}
        }))
        .unwrap();
        let err = check_host_devices(&spec).unwrap_err().to_string();
        assert!(
            err.starts_with("block device /dev/nope (4095:4095): not on this host"),
            "{err}"
        );
        let negative = BlockDevice {
            index: 0,
            path: "/dev/x".into(),
            major: -1,
            minor: 0,
        };
        assert!(host_block_device(&negative).is_err());
    }

    #[test]
    fn cri_containers_join_their_pod_and_others_stand_alone() {
        let with = |ann: serde_json::Value| -> Spec {
            serde_json::from_value(serde_json::json!({
                "ociVersion": "1.0.2",
                "root": {"path": "rootfs"},
                "annotations": ann
            }))
            .unwrap()
        };
        let app = with(serde_json::json!({
            annotations::CONTAINER_TYPE: "container",
            annotations::SANDBOX_ID: "pod1"
        }));
        assert_eq!(sandbox_id_of(&app, "c1"), "pod1");
        let pod = with(serde_json::json!({
            annotations::CONTAINER_TYPE: "sandbox",
            annotations::SANDBOX_ID: "pod1"
        }));
        assert_eq!(sandbox_id_of(&pod, "pod1"), "pod1");
        assert_eq!(sandbox_id_of(&with(serde_json::json!({})), "c9"), "c9");
    }

    /// A guard that detaches whatever a test left mounted below `root`.
    struct Unmount(PathBuf);

    impl Drop for Unmount {
        fn drop(&mut self) {
            for point in share::mounts_under(&self.0).unwrap_or_default() {
                let _ = nix::mount::umount2(&point, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }

    #[test]
    fn the_state_dir_is_private_and_its_bounded_share_goes_with_it() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::Builder::new()
            .prefix("skiff-state-test")
            .tempdir_in("/tmp")
            .unwrap();
        let root = std::fs::canonicalize(tmp.path()).unwrap();
        let _guard = Unmount(root.clone());
        let dir = root.join("sbs/p1");
        make_state_dir(&dir).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&root.join("sbs")), 0o711);
        let config = SharedFsConfig {
            tmpfs_size_mib: 2,
            ..Default::default()
        };
        let share = mount_share(&dir, &config).unwrap();
        assert_eq!(share.path(), dir.join(SHARE_DIR));
        assert_eq!(mode(share.path()), 0o700);
        let source = root.join("rootfs");
        std::fs::create_dir(&source).unwrap();
        std::fs::write(source.join("keep"), "image data").unwrap();
        share::bind(&share, Path::new("c1/rootfs"), &source, false).unwrap();
        std::fs::write(dir.join("shared/guest-file"), "guest data").unwrap();
        let mounts = share::mounts_under(&dir).unwrap();
        assert_eq!(
            mounts,
            vec![dir.join("shared/c1/rootfs"), dir.join(SHARE_DIR)]
        );

        remove_sandbox_dir(&dir).unwrap();
        assert!(share::mounts_under(&root).unwrap().is_empty());
        assert!(!dir.exists());
        assert_eq!(
            std::fs::read_to_string(source.join("keep")).unwrap(),
            "image data"
        );
        // Nothing there is fine too.
        remove_sandbox_dir(&dir).unwrap();
    }

    #[test]
    fn timeline_reads_as_one_line() {
        let t = BootTimeline {
            steps: vec![("VM created", 1.25), ("agent ready", 20000.0)],
        };
        assert_eq!(t.to_string(), "VM created 1.2 ms, agent ready 20000.0 ms");
    }
}
