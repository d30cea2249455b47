//! Builds a machine from a [`VmConfig`]: VM and memory, kernel, initrd and
//! boot structures, legacy devices, configured vCPUs; or, from a snapshot,
//! the same machine with its memory mapped from the snapshot and every
//! piece of state written back ([`Machine::restore`]). Takes snapshots of a
//! paused machine ([`Machine::snapshot`]).
//!
//! Nothing here starts guest code; [`Machine::start`] does. Every resource
//! is owned by the returned value, so an error part-way drops what was
//! built and leaves nothing behind.

use std::io::Write;
use std::sync::{Arc, Mutex};

use std::path::Path;

use kvm_bindings::{kvm_cpuid_entry2, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::Kvm;
use skiff_confine::Confinement;
use skiff_devices::legacy::{
    BootTimer, ConsoleOutput, EventFdTrigger, PanicWatcher, SerialConsole, BOOT_TIMER_PORT,
    COM1_IRQ, COM1_PORT, I8042, I8042_PORT_BASE, I8042_PORT_LEN, SERIAL_PORT_LEN,
};
use skiff_devices::virtio::vsock::VsockConnector;
use skiff_devices::{Bus, BusError};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::{boot, cpuid, layout, mptable, regs};
use crate::config::{ConfigError, ConsoleConfig, DeviceConfig, VmConfig};
use crate::console_log::ConsoleLog;
use crate::device_manager::{DeviceError, DeviceManager, MmioSlot};
use crate::exit::{ExitReason, ExitSender};
use crate::loader::{self, LoadError};
use crate::snapshot::{self, GuestView, SnapshotError, VmSnapshot};
use crate::timeline::{Milestone, Timeline};
use crate::vstate::vcpu::{Vcpu, VcpuError, VcpuHandle, VcpuStopper};
use crate::vstate::vm::{Vm, VmError};

/// Errors building or starting a machine.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot open /dev/kvm: {0}")]
    Kvm(kvm_ioctls::Error),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error(transparent)]
    MpTable(#[from] mptable::MpTableError),
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error("registering a device: {0}")]
    Bus(#[from] BusError),
    #[error("cannot open console file {path}: {source}")]
    ConsoleFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("writing the kernel command line: {0}")]
    Cmdline(vm_memory::GuestMemoryError),
    #[error("{what}: {source}")]
    Kvmcall {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("creating an eventfd: {0}")]
    EventFd(std::io::Error),
    #[error(transparent)]
    Devices(#[from] DeviceError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
}

fn kvm_call(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> BuildError {
    move |source| BuildError::Kvmcall { what, source }
}

/// A built VM whose vCPUs have not started, or are running.
pub struct Machine {
    // Field order is drop order: threads stop before the VM goes away.
    vcpu_handles: Vec<VcpuHandle>,
    vcpus: Vec<Vcpu>,
    serial: Arc<Mutex<SerialConsole>>,
    io_bus: Arc<Bus>,
    mmio_bus: Arc<Bus>,
    devices: DeviceManager,
    /// What a snapshot of this machine records for its restore checks: as
    /// the machine was booted, or as its own snapshot said.
    guest: GuestView,
    cpuid: Vec<kvm_cpuid_entry2>,
    vm: Vm,
}

/// The most vCPUs this host can give one VM.
pub fn max_vcpus(kvm: &Kvm) -> u64 {
    (kvm.get_max_vcpus() as u64).min(u64::from(mptable::MAX_CPUS))
}

impl Machine {
    /// Creates everything `config` describes.
    /// `confinement` is the VM's: its devices start their workers on its
    /// launcher and its vCPUs confine themselves with it.
    pub fn build(
        config: &VmConfig,
        timeline: &Arc<Timeline>,
        exits: &ExitSender,
        confinement: &Confinement,
    ) -> Result<Machine, BuildError> {
        Self::create(config, None, timeline, exits, confinement)
    }

    /// Creates the machine the snapshot in `dir` was taken of, its guest
    /// where it was, after checking that `config` describes the same
    /// machine; the host side of each device comes from `config`.
    pub fn restore(
        config: &VmConfig,
        dir: &Path,
        timeline: &Arc<Timeline>,
        exits: &ExitSender,
        confinement: &Confinement,
    ) -> Result<Machine, BuildError> {
        Self::create(config, Some(dir), timeline, exits, confinement)
    }

    fn create(
        config: &VmConfig,
        snapshot_dir: Option<&Path>,
        timeline: &Arc<Timeline>,
        exits: &ExitSender,
        confinement: &Confinement,
    ) -> Result<Machine, BuildError> {
        let kvm = Kvm::new().map_err(BuildError::Kvm)?;
        config.validate(max_vcpus(&kvm))?;
        let ram_size = config.memory_mib << 20;
        let here = GuestView::of(config)?;
        let saved = snapshot_dir.map(snapshot::read_state).transpose()?;
        let vm = match (&saved, snapshot_dir) {
            (Some(saved), Some(dir)) => {
                saved.guest.check(&here)?;
                let memory =
                    snapshot::memory::map(&dir.join(snapshot::MEMORY_FILE), &saved.memory)?;
                let vm = Vm::with_memory(&kvm, memory, ram_size)?;
                vm.restore_state(&saved.vm)?;
                vm
            }
            _ => Vm::new(&kvm, ram_size)?,
        };
        timeline.mark(Milestone::VmCreated);

        let mmio_bus = Arc::new(Bus::new());
        let mut devices = DeviceManager::new(
            &vm,
            mmio_bus.clone(),
            &config.devices,
            config.hotplug_slots,
            confinement,
            saved.as_ref().map(|s| s.slots.as_slice()),
        )?;
        let boot = match &saved {
            None => Some(load_guest(&vm, config, &devices.kernel_params())?),
            Some(_) => None,
        };
        if boot.is_some() {
            timeline.mark(Milestone::KernelLoaded);
        }

        let io_bus = Arc::new(Bus::new());
        let serial_state = saved.as_ref().map(|s| &s.serial);
        let serial = attach_legacy_devices(&vm, &io_bus, config, serial_state, timeline, exits)?;

        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_call("KVM_GET_SUPPORTED_CPUID"))?;
        let msr_indices: Arc<[u32]> = kvm
            .get_msr_index_list()
            .map_err(kvm_call("KVM_GET_MSR_INDEX_LIST"))?
            .as_slice()
            .into();
        let mut vcpus = Vec::with_capacity(config.vcpus.into());
        let mut cpuid0 = Vec::new();
        for index in 0..config.vcpus {
            let fd = vm
                .fd()
                .create_vcpu(index.into())
                .map_err(kvm_call("KVM_CREATE_VCPU"))?;
            let mut cpuid = supported.clone();
            cpuid::configure(&mut cpuid, index, config.vcpus);
            if index == 0 {
                cpuid0 = cpuid.as_slice().to_vec();
                if let Some(saved) = &saved {
                    saved.check_cpuid(&cpuid0)?;
                }
            }
            fd.set_cpuid2(&cpuid).map_err(kvm_call("KVM_SET_CPUID2"))?;
            match (&saved, boot) {
                (Some(saved), _) => {
                    let state = saved.vcpus.get(usize::from(index)).ok_or_else(|| {
                        SnapshotError::Mismatch {
                            what: "vCPU states".into(),
                            saved: saved.vcpus.len().to_string(),
                            here: config.vcpus.to_string(),
                        }
                    })?;
                    state.restore(&fd, index).map_err(SnapshotError::from)?;
                }
                (None, Some(boot)) => {
                    regs::setup_msrs(&fd)?;
                    regs::setup_fpu(&fd)?;
                    regs::setup_lapic(&fd)?;
                    if index == 0 {
                        regs::setup_regs(&fd, boot)?;
                        regs::setup_sregs(vm.memory(), &fd, boot)?;
                    }
                }
                (None, None) => unreachable!("a machine is booted or restored"),
            }
            vcpus.push(Vcpu {
                fd,
                index,
                io_bus: io_bus.clone(),
                mmio_bus: mmio_bus.clone(),
                exits: exits.clone(),
                timeline: timeline.clone(),
                confinement: confinement.clone(),
                msr_indices: msr_indices.clone(),
            });
        }
        let (guest, cpuid) = match saved {
            Some(saved) => {
                // Restored devices start only now that every vCPU is: see
                // `MmioTransport::restore`.
                devices.resume();
                timeline.mark(Milestone::Restored);
                (saved.guest, saved.cpuid)
            }
            None => (here, cpuid0),
        };
        Ok(Machine {
            vcpu_handles: Vec::new(),
            vcpus,
            serial,
            io_bus,
            mmio_bus,
            devices,
            guest,
            cpuid,
            vm,
        })
    }

    /// Writes a snapshot of the paused machine into `dir`, which must not
    /// exist. The devices are stopped while memory is written and started
    /// again afterwards, so the machine can run on; a vsock device's
    /// connections do not survive that (the guest is told, as after a
    /// restore). On error nothing is left in `dir`.
    pub fn snapshot(&mut self, dir: &Path) -> Result<(), SnapshotError> {
        snapshot::create_dir(dir)?;
        let result = self.write_snapshot(dir);
        if result.is_err() {
            for file in [
                snapshot::MEMORY_FILE,
                snapshot::STATE_FILE,
                "state.json.tmp",
            ] {
                let _ = std::fs::remove_file(dir.join(file));
            }
            let _ = std::fs::remove_dir(dir);
        }
        result
    }

    fn write_snapshot(&mut self, dir: &Path) -> Result<(), SnapshotError> {
        let vcpus = self
            .vcpu_handles
            .iter()
            .map(VcpuHandle::save)
            .collect::<Result<Vec<_>, _>>()?;
        let vm = self.vm.save_state()?;
        let serial = self.serial.lock().unwrap_or_else(|e| e.into_inner()).save();
        let slots = self.devices.save()?;
        let memory = snapshot::memory::save(self.vm.memory(), &dir.join(snapshot::MEMORY_FILE));
        // Running again whether or not memory could be written.
        self.devices.resume();
        let state = VmSnapshot {
            format: snapshot::FORMAT_VERSION,
            skiff: snapshot::SKIFF_VERSION.to_string(),
            guest: self.guest.clone(),
            cpuid: self.cpuid.clone(),
            memory: memory?,
            vm,
            vcpus,
            serial,
            slots,
        };
        snapshot::write_state(dir, &state)
    }

    /// Starts every vCPU thread. On error, threads already started are
    /// stopped when the machine is dropped.
    pub fn start(&mut self) -> Result<(), BuildError> {
        for vcpu in self.vcpus.drain(..) {
            self.vcpu_handles.push(vcpu.start()?);
        }
        Ok(())
    }

    pub fn pause(&self) -> Result<(), VcpuError> {
        self.vcpu_handles.iter().try_for_each(VcpuHandle::pause)
    }

    pub fn resume(&self) -> Result<(), VcpuError> {
        self.vcpu_handles.iter().try_for_each(VcpuHandle::resume)
    }

    /// What stops the vCPUs without the machine (see [`VcpuStopper`]).
    pub fn vcpu_stoppers(&self) -> Vec<VcpuStopper> {
        self.vcpu_handles
            .iter()
            .filter_map(VcpuHandle::stopper)
            .collect()
    }

    /// The running vCPU `index` (tests of the confinement).
    #[cfg(feature = "test-hooks")]
    pub fn vcpu(&self, index: u8) -> Option<&VcpuHandle> {
        self.vcpu_handles.get(usize::from(index))
    }

    /// Stops and joins every vCPU thread.
    pub fn stop(&mut self) {
        self.vcpu_handles.clear();
    }

    /// Gives host input to the guest console; returns how much fit.
    pub fn console_input(&self, bytes: &[u8]) -> usize {
        self.serial
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .enqueue_input(bytes)
    }

    pub fn io_bus(&self) -> &Arc<Bus> {
        &self.io_bus
    }

    pub fn mmio_bus(&self) -> &Arc<Bus> {
        &self.mmio_bus
    }

    pub fn vm(&self) -> &Vm {
        &self.vm
    }

    /// The vsock connector, when the VM has a vsock device.
    pub fn vsock_connector(&self) -> Option<&VsockConnector> {
        self.devices.vsock_connector()
    }

    /// Adds a device while the VM runs; see [`DeviceManager::add`].
    pub fn add_device(&mut self, config: &DeviceConfig) -> Result<MmioSlot, DeviceError> {
        self.devices.add(&self.vm, config)
    }

    /// Removes a device while the VM runs; see [`DeviceManager::remove`].
    pub fn remove_device(&mut self, slot: u32) -> Result<(), DeviceError> {
        self.devices.remove(&self.vm, slot)
    }
}

fn console_sink(config: &ConsoleConfig) -> Result<Option<Box<dyn Write + Send>>, BuildError> {
    Ok(match config {
        ConsoleConfig::Stdio => Some(Box::new(std::io::stdout())),
        ConsoleConfig::File(path) => Some(Box::new(ConsoleLog::open(path).map_err(|source| {
            BuildError::ConsoleFile {
                path: path.clone(),
                source,
            }
        })?)),
        ConsoleConfig::Off => None,
    })
}

/// Loads the kernel and initrd and writes the command line (with the
/// virtio-mmio slots' `virtio_params`) and the boot structures; returns
/// how vCPU 0 enters the kernel.
fn load_guest(
    vm: &Vm,
    config: &VmConfig,
    virtio_params: &str,
) -> Result<boot::BootProtocol, BuildError> {
    let mem = vm.memory();
    let ram_size = vm.ram_size();
    let kernel = loader::load_kernel(mem, ram_size, &config.kernel)?;
    let initrd = config
        .initrd
        .as_deref()
        .map(|path| loader::load_initrd(mem, ram_size, &kernel, path))
        .transpose()?;
    let mut cmdline = with_virtio_devices(&config.cmdline, virtio_params).into_bytes();
    let max = layout::CMDLINE_MAX_SIZE - 1;
    if cmdline.len() > max {
        return Err(ConfigError::CmdlineTooLong {
            len: cmdline.len(),
            max,
        }
        .into());
    }
    cmdline.push(0);
    mem.write_slice(&cmdline, GuestAddress(layout::CMDLINE_START))
        .map_err(BuildError::Cmdline)?;
    match kernel.boot {
        boot::BootProtocol::Pvh { .. } => boot::write_pvh_start_info(mem, ram_size, initrd)?,
        boot::BootProtocol::Linux64 { .. } => {
            boot::write_identity_page_tables(mem)?;
            boot::write_boot_params(mem, ram_size, kernel.setup_header, cmdline.len(), initrd)?;
        }
    }
    mptable::write(mem, config.vcpus)?;
    Ok(kernel.boot)
}

/// COM1 (as a snapshot left it, with `serial_state`), the i8042 reset
/// line and the boot timer, on the port bus.
fn attach_legacy_devices(
    vm: &Vm,
    io_bus: &Bus,
    config: &VmConfig,
    serial_state: Option<&skiff_devices::legacy::SerialSnapshot>,
    timeline: &Arc<Timeline>,
    exits: &ExitSender,
) -> Result<Arc<Mutex<SerialConsole>>, BuildError> {
    let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(BuildError::EventFd)?;
    vm.register_irqfd(&irq, COM1_IRQ)?;
    let panic_exits = exits.clone();
    let watcher = PanicWatcher::new(Box::new(move |message| {
        panic_exits.send(ExitReason::KernelPanic(message))
    }));
    let (trigger, output) = (
        EventFdTrigger::new(irq),
        ConsoleOutput::new(console_sink(&config.console)?, watcher),
    );
    let console = match serial_state {
        None => SerialConsole::new(trigger, output),
        Some(state) => {
            SerialConsole::restore(state, trigger, output).map_err(|e| SnapshotError::Corrupt {
                path: "state.json".into(),
                reason: e,
            })?
        }
    };
    let serial = Arc::new(Mutex::new(console));
    io_bus.insert(serial.clone(), COM1_PORT.into(), SERIAL_PORT_LEN.into())?;

    let reset_exits = exits.clone();
    let i8042 = I8042::new(Box::new(move || {
        reset_exits.send(ExitReason::GuestShutdown)
    }));
    io_bus.insert(
        Arc::new(Mutex::new(i8042)),
        I8042_PORT_BASE.into(),
        I8042_PORT_LEN.into(),
    )?;

    let init_timeline = timeline.clone();
    let timer = BootTimer::new(Box::new(move || init_timeline.mark(Milestone::GuestInit)));
    io_bus.insert(Arc::new(Mutex::new(timer)), BOOT_TIMER_PORT.into(), 1)?;
    Ok(serial)
}

/// Kernel parameters declaring virtio-mmio devices go before any `--`,
/// which ends the kernel's own parameters.
fn with_virtio_devices(cmdline: &str, devices: &str) -> String {
    if devices.is_empty() {
        return cmdline.to_string();
    }
    match cmdline.find(" -- ") {
        Some(at) => format!("{} {devices}{}", &cmdline[..at], &cmdline[at..]),
        None if cmdline.starts_with("-- ") => format!("{devices} {cmdline}"),
        None => format!("{cmdline} {devices}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtio_parameters_stay_before_init_arguments() {
        let dev = "virtio_mmio.device=4K@0xc0000000:5";
        assert_eq!(with_virtio_devices("quiet", ""), "quiet");
        assert_eq!(with_virtio_devices("quiet", dev), format!("quiet {dev}"));
        assert_eq!(
            with_virtio_devices("quiet -- echo a -- b", dev),
            format!("quiet {dev} -- echo a -- b")
        );
        assert_eq!(with_virtio_devices("-- sh", dev), format!("{dev} -- sh"));
    }
}
