//! Virtio devices over the virtio-mmio transport (virtio 1.x).
//!
//! [`MmioTransport`] speaks the register protocol with the guest driver
//! (features, queues, status, config space) and hands the device its
//! queues when the driver sets DRIVER_OK. Each device implements
//! [`VirtioDevice`] once; its data path runs on its own worker thread,
//! woken by the queues' ioeventfds, and interrupts the guest through an
//! irqfd, so the vCPUs only exit for configuration.

pub mod block;
pub mod fs;
mod mmio;
pub mod net;
pub mod queue;
pub mod seccomp;
pub mod state;
#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils;
pub mod vsock;
pub mod worker;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

pub use mmio::{reg as mmio_reg, EmptySlot, MmioTransport, MMIO_NOTIFY_OFFSET, MMIO_REGION_SIZE};
pub use state::{StateError, TransportState};

/// Device type IDs (virtio 1.2, 5).
pub const TYPE_NET: u32 = 1;
pub const TYPE_BLOCK: u32 = 2;
pub const TYPE_VSOCK: u32 = 19;
pub const TYPE_FS: u32 = 26;

/// Feature bits every device offers.
pub const F_VERSION_1: u64 = 1 << 32;
pub const F_RING_EVENT_IDX: u64 = 1 << 29;

/// Device status bits (virtio 1.2, 2.1).
pub mod status {
    pub const ACKNOWLEDGE: u8 = 1;
    pub const DRIVER: u8 = 2;
    pub const DRIVER_OK: u8 = 4;
    pub const FEATURES_OK: u8 = 8;
    pub const DEVICE_NEEDS_RESET: u8 = 64;
    pub const FAILED: u8 = 128;
}

/// Interrupt status bits of virtio-mmio.
pub const INT_USED_RING: u32 = 1;
pub const INT_CONFIG: u32 = 2;

/// Raises the device's interrupt: sets the cause in the status register
/// the driver reads, then writes the irqfd. Shared by the transport and the
/// device's worker, it also carries the worker's "I am broken" to the
/// transport's status register.
pub struct Interrupt {
    status: AtomicU32,
    irqfd: EventFd,
    needs_reset: AtomicBool,
}

impl Interrupt {
    pub fn new(irqfd: EventFd) -> Self {
        Self {
            status: AtomicU32::new(0),
            irqfd,
            needs_reset: AtomicBool::new(false),
        }
    }

    /// Marks the device DEVICE_NEEDS_RESET and tells the driver (a config
    /// change interrupt, virtio 1.2, 2.1.2). Devices call this, with the
    /// reason logged once, when the driver broke a queue; the flag stays
    /// until the driver resets the device.
    pub fn fail(&self, reason: &dyn std::fmt::Display) {
        if !self.needs_reset.swap(true, Ordering::SeqCst) {
            tracing::warn!("virtio device needs a reset: {reason}");
            self.signal_config();
        }
    }

    /// Whether [`fail`](Self::fail) was called since the last reset.
    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    /// The eventfd to register as an irqfd with KVM.
    pub fn irqfd(&self) -> &EventFd {
        &self.irqfd
    }

    /// Tells the driver that used rings have new entries.
    pub fn signal_used(&self) {
        self.signal(INT_USED_RING);
    }

    /// Tells the driver that the config space changed.
    pub fn signal_config(&self) {
        self.signal(INT_CONFIG);
    }

    fn signal(&self, cause: u32) {
        self.status.fetch_or(cause, Ordering::SeqCst);
        if let Err(e) = self.irqfd.write(1) {
            tracing::warn!("virtio interrupt lost: {e}");
        }
    }

    pub(crate) fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    pub(crate) fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Sets what [`MmioTransport::restore`] read from a snapshot.
    pub(crate) fn restore(&self, status: u32, needs_reset: bool) {
        self.status.store(status, Ordering::SeqCst);
        self.needs_reset.store(needs_reset, Ordering::SeqCst);
    }

    pub(crate) fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
        self.needs_reset.store(false, Ordering::SeqCst);
    }
}

/// One queue given to a device at activation, with the eventfd the guest's
/// notifications arrive on.
pub struct ActiveQueue {
    pub queue: Queue,
    pub notify: EventFd,
}

/// What a device gets when the driver is ready.
pub struct Activation {
    pub mem: GuestMemoryMmap,
    /// The features both sides agreed on.
    pub features: u64,
    pub queues: Vec<ActiveQueue>,
    pub interrupt: std::sync::Arc<Interrupt>,
    /// The VM's confinement: the device's worker confines itself with it.
    pub confinement: skiff_confine::Confinement,
    /// The queues continue from a snapshot rather than from a driver that
    /// just set DRIVER_OK: whatever the device kept on the host side (vsock
    /// connections) is gone, and a device with such state tells the driver.
    pub resumed: bool,
}

/// Why a device refused to start.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("the driver set up {got} queues, the device needs {want}")]
    QueueCount { got: usize, want: usize },
    #[error("device backend: {0}")]
    Backend(#[from] std::io::Error),
    #[error("confine the device's worker: {0}")]
    Confine(#[from] skiff_confine::ConfineError),
}

/// A virtio device model. One implementation per device type.
pub trait VirtioDevice: Send {
    /// Virtio device type ID.
    fn device_type(&self) -> u32;
    /// Largest size of each queue; the count is the device's queue count.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits offered to the driver, [`F_VERSION_1`] included.
    fn features(&self) -> u64;
    /// Reads the device-specific config space; bytes past its end read 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the config space; most devices ignore this.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Starts the data path with the driver's queues.
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError>;
    /// Stops the data path and returns once its worker has ended; the
    /// device can be activated again afterwards.
    fn reset(&mut self);
    /// Why a snapshot cannot take this device now, if it cannot: the
    /// transport state and the queues are all a snapshot saves of a
    /// device, so a device that holds more (a FUSE session) says so.
    fn snapshot_blocker(&self) -> Option<&'static str> {
        None
    }
}

/// Stands in a transport for its device while the launcher activates it
/// (see `MmioTransport::activate`); never seen by the guest, whose vCPU
/// holds the transport's lock meanwhile.
struct Detached;

impl VirtioDevice for Detached {
    fn device_type(&self) -> u32 {
        0
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[]
    }
    fn features(&self) -> u64 {
        0
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0)
    }
    fn activate(&mut self, _activation: Activation) -> Result<(), ActivateError> {
        Err(ActivateError::Backend(std::io::Error::other(
            "the device is being started",
        )))
    }
    fn reset(&mut self) {}
}

/// Copies `config[offset..]` into `data`, zero-filling what lies beyond:
/// the guest picks offset and width, so neither is trusted.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = config.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_are_bounded() {
        let config = [1u8, 2, 3, 4];
        let mut data = [0xffu8; 4];
        read_config_bytes(&config, 2, &mut data);
        assert_eq!(data, [3, 4, 0, 0]);
        read_config_bytes(&config, 100, &mut data);
        assert_eq!(data, [0; 4]);
        read_config_bytes(&config, u64::MAX, &mut data);
        assert_eq!(data, [0; 4]);
    }

    #[test]
    fn interrupt_sets_and_acks_causes() {
        let irq = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        irq.signal_used();
        irq.signal_config();
        assert_eq!(irq.status(), INT_USED_RING | INT_CONFIG);
        assert_eq!(irq.irqfd().read().unwrap(), 2);
        irq.ack(INT_USED_RING);
        assert_eq!(irq.status(), INT_CONFIG);
    }
}
