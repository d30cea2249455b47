//! The VM's virtio-mmio slots, and adding and removing devices while it
//! runs.
//!
//! Slot `i` is a 4 KiB window at `VIRTIO_MMIO_START + i * 4 KiB` with its
//! own interrupt line, declared to the guest on the kernel command line as
//! platform device `virtio-mmio.<i>`. Devices configured before boot fill
//! the first slots; `hotplug_slots` more are declared empty: they answer
//! as a device with ID 0 ([`EmptySlot`]), which Linux probes and ignores
//! without a word. Hot-adding puts a device in a free slot while the vCPUs
//! run; the guest then binds the slot's platform device (the agent's
//! `AddDevice` writes it to the virtio-mmio driver's `bind` file). Removal
//! is the reverse: the guest unbinds (its driver resets the device), then
//! the VMM takes the device out. This is the cooperative scheme Dragonball
//! builds with its upcall channel and a guest kernel patch; here the
//! kernel's own sysfs does it, so the guest kernel stays unpatched for it.

use std::sync::{Arc, Mutex};

use kvm_ioctls::IoEventAddress;
use serde::Serialize;
use skiff_confine::Confinement;
use skiff_devices::virtio::block::{Block, DiskFile};
use skiff_devices::virtio::fs::{CacheMode, Fs, FsShare};
use skiff_devices::virtio::net::{format_mac, Net};
use skiff_devices::virtio::vsock::{Vsock, VsockConnector};
use skiff_devices::virtio::{
    EmptySlot, MmioTransport, StateError, TransportState, VirtioDevice, MMIO_NOTIFY_OFFSET,
    MMIO_REGION_SIZE, TYPE_VSOCK,
};
use skiff_devices::{Bus, BusError};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::layout;
use crate::config::{DeviceConfig, FsCache, FsConfig};
use crate::vstate::vm::{Vm, VmError};

/// How many slots a VM can have: one per interrupt line set aside for
/// virtio.
pub const MAX_SLOTS: usize = (layout::VIRTIO_IRQ_LAST - layout::VIRTIO_IRQ_FIRST + 1) as usize;

/// Errors attaching, adding or removing devices.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("too many virtio devices: {wanted} slots asked, at most {MAX_SLOTS}")]
    TooManySlots { wanted: usize },
    #[error("no free virtio-mmio slot: all {0} are in use (configure more hotplug slots)")]
    NoFreeSlot(usize),
    #[error("virtio-mmio slot {0} does not exist")]
    NoSuchSlot(u32),
    #[error("virtio-mmio slot {0} holds no device")]
    SlotEmpty(u32),
    #[error("vsock cannot be hot-plugged: the VM's one vsock device is configured at boot")]
    VsockNotHotpluggable,
    #[error("{device}: {source}")]
    Create {
        device: String,
        source: std::io::Error,
    },
    #[error("creating an eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("{what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error("registering a device: {0}")]
    Bus(#[from] BusError),
    #[error("creating the device: {0}")]
    Launcher(#[from] skiff_confine::ConfineError),
    #[error("virtio-mmio slot {slot}: {source}")]
    Restore { slot: u32, source: StateError },
    #[error("the snapshot has {saved} virtio-mmio slots, this VM has {actual}")]
    SlotCount { saved: usize, actual: usize },
    #[error(
        "slot {slot} holds a hot-added device; a snapshot takes only devices configured at boot"
    )]
    HotAddedDevice { slot: u32 },
    #[error("a snapshot cannot take the device in slot {slot}: {why}")]
    NotSnapshotable { slot: u32, why: &'static str },
}

/// Where a slot is, for the guest and for whoever asked for a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct MmioSlot {
    pub index: u32,
    pub base: u64,
    pub irq: u32,
}

impl MmioSlot {
    fn new(index: usize) -> Self {
        Self {
            index: index as u32,
            base: layout::VIRTIO_MMIO_START + index as u64 * MMIO_REGION_SIZE,
            irq: layout::VIRTIO_IRQ_FIRST + index as u32,
        }
    }

    /// The kernel parameter that declares the slot, with its platform
    /// device id pinned to the slot index, so the guest's name for it is
    /// [`Self::guest_device`] (the contract in `skiff_guest_abi::hotplug`).
    pub fn kernel_param(&self) -> String {
        skiff_guest_abi::hotplug::slot_kernel_param(
            MMIO_REGION_SIZE / 1024,
            self.base,
            self.irq,
            self.index,
        )
    }

    /// The slot's platform device in the guest, which the agent binds.
    pub fn guest_device(&self) -> String {
        skiff_guest_abi::hotplug::slot_device(self.index)
    }
}

/// What the VMM keeps of its devices to reach them from the host side.
#[derive(Default)]
pub struct DeviceHandles {
    /// Opens connections to guest vsock ports (when the VM has vsock).
    pub vsock: Option<VsockConnector>,
}

/// Every virtio-mmio slot of one VM and the device in it, if any.
pub struct DeviceManager {
    mmio_bus: Arc<Bus>,
    /// Devices activate, and hot-added ones are created, on its launcher.
    confinement: Confinement,
    slots: Vec<Option<Arc<Mutex<MmioTransport>>>>,
    /// How many of the first slots hold the devices configured at boot.
    boot_devices: usize,
    handles: DeviceHandles,
}

impl DeviceManager {
    /// Attaches `devices` in the first slots and leaves `hotplug_slots`
    /// empty ones after them. With `saved` (a snapshot's slots, as
    /// [`save`](Self::save) returned them), each device continues from
    /// its saved transport state instead of waiting for its driver.
    pub fn new(
        vm: &Vm,
        mmio_bus: Arc<Bus>,
        devices: &[DeviceConfig],
        hotplug_slots: u8,
        confinement: &Confinement,
        saved: Option<&[Option<TransportState>]>,
    ) -> Result<Self, DeviceError> {
        let wanted = devices.len() + usize::from(hotplug_slots);
        if wanted > MAX_SLOTS {
            return Err(DeviceError::TooManySlots { wanted });
        }
        if let Some(saved) = saved {
            if saved.len() != wanted {
                return Err(DeviceError::SlotCount {
                    saved: saved.len(),
                    actual: wanted,
                });
            }
            // The snapshot took no hot-added device (`save` refuses them).
            if let Some(slot) = saved[devices.len()..].iter().position(Option::is_some) {
                let slot = (devices.len() + slot) as u32;
                return Err(DeviceError::HotAddedDevice { slot });
            }
        }
        let mut manager = Self {
            mmio_bus,
            confinement: confinement.clone(),
            slots: Vec::with_capacity(wanted),
            boot_devices: devices.len(),
            handles: DeviceHandles::default(),
        };
        for (index, config) in devices.iter().enumerate() {
            let slot = MmioSlot::new(manager.slots.len());
            let device = create_device(config, &mut manager.handles)?;
            let state = saved.and_then(|saved| saved[index].as_ref());
            let transport = manager.wire(vm, slot, device, state)?;
            manager.slots.push(Some(transport));
        }
        for _ in 0..hotplug_slots {
            let slot = MmioSlot::new(manager.slots.len());
            manager.mmio_bus.insert(
                Arc::new(Mutex::new(EmptySlot)),
                slot.base,
                MMIO_REGION_SIZE,
            )?;
            manager.slots.push(None);
        }
        Ok(manager)
    }

    /// The kernel parameters that declare every slot, in order.
    pub fn kernel_params(&self) -> String {
        (0..self.slots.len())
            .map(|i| MmioSlot::new(i).kernel_param())
            .collect::<Vec<_>>()
            .join(" ")
    }

    pub fn vsock_connector(&self) -> Option<&VsockConnector> {
        self.handles.vsock.as_ref()
    }

    /// Puts a new device in the first free slot while the VM runs.
    pub fn add(&mut self, vm: &Vm, config: &DeviceConfig) -> Result<MmioSlot, DeviceError> {
        if matches!(config, DeviceConfig::Vsock(_)) {
            return Err(DeviceError::VsockNotHotpluggable);
        }
        let index = self
            .slots
            .iter()
            .position(Option::is_none)
            .ok_or(DeviceError::NoFreeSlot(self.slots.len()))?;
        let slot = MmioSlot::new(index);
        // Opening a disk or a tap is not for the (confined) VMM thread.
        let owned = config.clone();
        let device = self
            .confinement
            .run(move || create_device(&owned, &mut DeviceHandles::default()))??;
        // The transport is wired before the placeholder goes, so the guest
        // never finds the window unmapped.
        let transport = self.wire(vm, slot, device, None)?;
        self.slots[index] = Some(transport);
        Ok(slot)
    }

    /// Stops every device and returns each slot's transport state (None
    /// for an empty slot), for a snapshot of the paused VM. The devices
    /// stay stopped until [`resume`](Self::resume), so none writes guest
    /// memory while it is saved.
    pub fn save(&mut self) -> Result<Vec<Option<TransportState>>, DeviceError> {
        // Checked before anything stops: a refused snapshot changes nothing.
        for (index, entry) in self.slots.iter().enumerate() {
            let Some(transport) = entry else { continue };
            if index >= self.boot_devices {
                return Err(DeviceError::HotAddedDevice { slot: index as u32 });
            }
            let blocker = transport
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .snapshot_blocker();
            if let Some(why) = blocker {
                return Err(DeviceError::NotSnapshotable {
                    slot: index as u32,
                    why,
                });
            }
        }
        Ok(self
            .slots
            .iter()
            .map(|entry| {
                entry
                    .as_ref()
                    .map(|t| t.lock().unwrap_or_else(|e| e.into_inner()).save())
            })
            .collect())
    }

    /// Starts the devices [`save`](Self::save) stopped again, or those
    /// restored from a snapshot.
    pub fn resume(&mut self) {
        for transport in self.slots.iter().flatten() {
            transport.lock().unwrap_or_else(|e| e.into_inner()).resume();
        }
    }

    /// Takes the device out of slot `index` and leaves the slot empty.
    /// The guest should have unbound it first; if it has not, its driver
    /// finds an empty slot and its requests never complete.
    pub fn remove(&mut self, vm: &Vm, index: u32) -> Result<(), DeviceError> {
        let entry = self
            .slots
            .get_mut(index as usize)
            .ok_or(DeviceError::NoSuchSlot(index))?;
        let is_vsock = entry.as_ref().is_some_and(|t| {
            t.lock().unwrap_or_else(|e| e.into_inner()).device_type() == TYPE_VSOCK
        });
        if is_vsock {
            return Err(DeviceError::VsockNotHotpluggable);
        }
        let transport = entry.take().ok_or(DeviceError::SlotEmpty(index))?;
        let slot = MmioSlot::new(index as usize);
        self.mmio_bus.remove(slot.base);
        self.mmio_bus
            .insert(Arc::new(Mutex::new(EmptySlot)), slot.base, MMIO_REGION_SIZE)?;
        let guard = transport.lock().unwrap_or_else(|e| e.into_inner());
        unwire(vm, slot, &guard, guard.queue_events().len());
        drop(guard);
        // Dropping the transport resets the device, which ends its worker
        // (unless a vCPU still holds it for an access in flight: then the
        // last reference does).
        drop(transport);
        tracing::info!(slot = index, "virtio device removed");
        Ok(())
    }

    /// Routes `device`'s interrupt and queue notifications and maps it at
    /// `slot`, replacing whatever was there; undoes it all on error. With
    /// `state`, the transport is restored from a snapshot.
    fn wire(
        &self,
        vm: &Vm,
        slot: MmioSlot,
        device: Box<dyn VirtioDevice>,
        state: Option<&TransportState>,
    ) -> Result<Arc<Mutex<MmioTransport>>, DeviceError> {
        let irqfd = EventFd::new(libc::EFD_NONBLOCK).map_err(DeviceError::EventFd)?;
        let (mem, confinement) = (vm.memory().clone(), self.confinement.clone());
        let transport =
            match state {
                None => MmioTransport::new(device, mem, irqfd, confinement)
                    .map_err(DeviceError::EventFd)?,
                Some(state) => MmioTransport::restore(device, mem, irqfd, confinement, state)
                    .map_err(|source| DeviceError::Restore {
                        slot: slot.index,
                        source,
                    })?,
            };
        vm.register_irqfd(transport.interrupt().irqfd(), slot.irq)?;
        for (queue, evt) in transport.queue_events().iter().enumerate() {
            let registered = vm.fd().register_ioevent(
                evt,
                &IoEventAddress::Mmio(slot.base + MMIO_NOTIFY_OFFSET),
                queue as u32,
            );
            if let Err(source) = registered {
                unwire(vm, slot, &transport, queue);
                return Err(DeviceError::Kvm {
                    what: "KVM_IOEVENTFD",
                    source,
                });
            }
        }
        let transport = Arc::new(Mutex::new(transport));
        let previous = self.mmio_bus.remove(slot.base);
        if let Err(e) = self
            .mmio_bus
            .insert(transport.clone(), slot.base, MMIO_REGION_SIZE)
        {
            if let Some(previous) = previous {
                let _ = self.mmio_bus.insert(previous, slot.base, MMIO_REGION_SIZE);
            }
            let guard = transport.lock().unwrap_or_else(|e| e.into_inner());
            unwire(vm, slot, &guard, guard.queue_events().len());
            return Err(e.into());
        }
        Ok(transport)
    }
}

/// Unregisters `transport`'s irqfd and its first `queues` ioeventfds.
/// Errors are logged: there is nothing more to undo.
fn unwire(vm: &Vm, slot: MmioSlot, transport: &MmioTransport, queues: usize) {
    for (queue, evt) in transport.queue_events().iter().take(queues).enumerate() {
        if let Err(e) = vm.fd().unregister_ioevent(
            evt,
            &IoEventAddress::Mmio(slot.base + MMIO_NOTIFY_OFFSET),
            queue as u32,
        ) {
            tracing::warn!(slot = slot.index, queue, "KVM_IOEVENTFD deassign: {e}");
        }
    }
    if let Err(e) = vm.unregister_irqfd(transport.interrupt().irqfd(), slot.irq) {
        tracing::warn!(slot = slot.index, "KVM_IRQFD deassign: {e}");
    }
}

/// Creates the device model for `config`; keeps in `handles` what the VMM
/// needs to reach it later.
fn create_device(
    config: &DeviceConfig,
    handles: &mut DeviceHandles,
) -> Result<Box<dyn VirtioDevice>, DeviceError> {
    match config {
        DeviceConfig::Block(disk) => DiskFile::open(&disk.path, disk.read_only, disk.direct)
            .map(|file| Box::new(Block::new(file)) as Box<dyn VirtioDevice>)
            .map_err(|e| DeviceError::Create {
                device: format!(
                    "disk image {}{}",
                    disk.path.display(),
                    match (disk.read_only, disk.direct) {
                        (false, false) => "",
                        (true, false) => " (read-only)",
                        (false, true) => " (O_DIRECT)",
                        (true, true) => " (read-only, O_DIRECT)",
                    }
                ),
                source: e.into(),
            }),
        DeviceConfig::Net(net) => Net::new(&net.tap, net.mac)
            .map(|dev| Box::new(dev) as Box<dyn VirtioDevice>)
            .map_err(|e| DeviceError::Create {
                device: match net.mac {
                    Some(mac) => format!(
                        "network device on tap {} (MAC {})",
                        net.tap,
                        format_mac(&mac)
                    ),
                    None => format!("network device on tap {}", net.tap),
                },
                source: std::io::Error::other(e),
            }),
        DeviceConfig::Vsock(vsock) => {
            let device = Vsock::new(vsock.guest_cid.into(), &vsock.socket).map_err(|e| {
                DeviceError::Create {
                    device: format!(
                        "vsock device (guest CID {}, socket {})",
                        vsock.guest_cid,
                        vsock.socket.display()
                    ),
                    source: std::io::Error::other(e),
                }
            })?;
            handles.vsock = Some(device.connector());
            Ok(Box::new(device))
        }
        DeviceConfig::Fs(fs) => create_fs(fs),
    }
}

fn create_fs(config: &FsConfig) -> Result<Box<dyn VirtioDevice>, DeviceError> {
    let share = FsShare {
        tag: config.tag.clone(),
        path: config.path.clone(),
        read_only: config.read_only,
        cache: match config.cache {
            FsCache::Never => CacheMode::Never,
            FsCache::Auto => CacheMode::Auto,
            FsCache::Always => CacheMode::Always,
        },
        limits: Default::default(),
    };
    let device = Fs::new(share).map_err(|e| DeviceError::Create {
        device: format!(
            "virtio-fs share `{}` of {}",
            config.tag,
            config.path.display()
        ),
        source: e.into(),
    })?;
    Ok(Box::new(device))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_pin_their_guest_device_id() {
        let first = MmioSlot::new(0);
        assert_eq!(
            first.kernel_param(),
            format!(
                "virtio_mmio.device=4K@{:#x}:{}:0",
                layout::VIRTIO_MMIO_START,
                layout::VIRTIO_IRQ_FIRST
            )
        );
        let third = MmioSlot::new(2);
        assert_eq!(third.base, layout::VIRTIO_MMIO_START + 2 * MMIO_REGION_SIZE);
        assert_eq!(third.irq, layout::VIRTIO_IRQ_FIRST + 2);
        assert_eq!(third.guest_device(), "virtio-mmio.2");
        assert_eq!(
            MmioSlot::new(MAX_SLOTS - 1).irq,
            layout::VIRTIO_IRQ_LAST,
            "the last slot has the last line"
        );
    }
}
