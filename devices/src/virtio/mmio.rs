//! The virtio-mmio transport, version 2 (virtio 1.2, 4.2.2).

use std::sync::Arc;

use skiff_confine::Confinement;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::state::{QueueSnapshot, StateError, TransportState};
use super::{status, Activation, ActiveQueue, Interrupt, VirtioDevice, F_VERSION_1};
use crate::BusDevice;

/// Each device gets one 4 KiB page of MMIO space.
pub const MMIO_REGION_SIZE: u64 = 0x1000;
/// Where the driver writes a queue index to notify the device; KVM turns
/// those writes into ioeventfd signals.
pub const MMIO_NOTIFY_OFFSET: u64 = 0x50;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x5346_4b53; // "SKFS"
const CONFIG_SPACE: u64 = reg::CONFIG;

/// Register offsets of the virtio-mmio window (virtio 1.2, 4.2.2), for
/// drivers written against the transport (tests, the fuzz targets).
pub mod reg {
    pub const MAGIC: u64 = 0x00;
    pub const VERSION: u64 = 0x04;
    pub const DEVICE_ID: u64 = 0x08;
    pub const VENDOR_ID: u64 = 0x0c;
    pub const DEVICE_FEATURES: u64 = 0x10;
    pub const DEVICE_FEATURES_SEL: u64 = 0x14;
    pub const DRIVER_FEATURES: u64 = 0x20;
    pub const DRIVER_FEATURES_SEL: u64 = 0x24;
    pub const QUEUE_SEL: u64 = 0x30;
    pub const QUEUE_NUM_MAX: u64 = 0x34;
    pub const QUEUE_NUM: u64 = 0x38;
    pub const QUEUE_READY: u64 = 0x44;
    pub const QUEUE_NOTIFY: u64 = 0x50;
    pub const INTERRUPT_STATUS: u64 = 0x60;
    pub const INTERRUPT_ACK: u64 = 0x64;
    pub const STATUS: u64 = 0x70;
    pub const QUEUE_DESC_LOW: u64 = 0x80;
    pub const QUEUE_DESC_HIGH: u64 = 0x84;
    pub const QUEUE_AVAIL_LOW: u64 = 0x90;
    pub const QUEUE_AVAIL_HIGH: u64 = 0x94;
    pub const QUEUE_USED_LOW: u64 = 0xa0;
    pub const QUEUE_USED_HIGH: u64 = 0xa4;
    pub const CONFIG_GENERATION: u64 = 0xfc;
    /// Where the device's config space starts.
    pub const CONFIG: u64 = 0x100;
}

/// A virtio device behind an MMIO register window.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    confinement: Confinement,
    queues: Vec<Queue>,
    queue_evts: Vec<EventFd>,
    interrupt: Arc<Interrupt>,
    status: u8,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    config_generation: u32,
    active: bool,
    /// Where the queues stood when [`save`](MmioTransport::save) stopped
    /// the device, until [`resume`](MmioTransport::resume) starts it again.
    saved_queues: Option<Vec<QueueSnapshot>>,
}

impl MmioTransport {
    /// Wraps `device`; `irqfd` is the eventfd the VMM routes to the
    /// device's interrupt line.
    /// `confinement` is the VM's: activation runs on its launcher.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        irqfd: EventFd,
        confinement: Confinement,
    ) -> std::io::Result<Self> {
        let mut queues = Vec::new();
        let mut queue_evts = Vec::new();
        for &max in device.queue_max_sizes() {
            let queue = Queue::new(max).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("queue size {max}: {e:?}"),
                )
            })?;
            queues.push(queue);
            queue_evts.push(EventFd::new(libc::EFD_NONBLOCK)?);
        }
        Ok(Self {
            device,
            mem,
            confinement,
            queues,
            queue_evts,
            interrupt: Arc::new(Interrupt::new(irqfd)),
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            config_generation: 0,
            active: false,
            saved_queues: None,
        })
    }

    /// A transport for `device` as `state` left it: the registers, the
    /// pending interrupt causes and, when the device ran, its queues where
    /// they stood, checked; [`resume`](Self::resume) starts the device on
    /// them, told that it continues a snapshot ([`Activation::resumed`]).
    pub fn restore(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        irqfd: EventFd,
        confinement: Confinement,
        state: &TransportState,
    ) -> Result<Self, StateError> {
        let mut t = Self::new(device, mem, irqfd, confinement).map_err(StateError::Setup)?;
        let device_type = t.device.device_type();
        if state.device_type != device_type {
            return Err(StateError::DeviceType {
                saved: state.device_type,
                actual: device_type,
            });
        }
        if state.queues.len() != t.queues.len() {
            return Err(StateError::QueueCount {
                device_type,
                saved: state.queues.len(),
                actual: t.queues.len(),
            });
        }
        for (index, (queue, saved)) in t.queues.iter_mut().zip(&state.queues).enumerate() {
            *queue = saved.to_queue(device_type, index, queue.max_size())?;
        }
        t.status = state.status;
        t.device_features_sel = state.device_features_sel;
        t.driver_features_sel = state.driver_features_sel;
        t.driver_features = state.driver_features & t.offered_features();
        t.queue_sel = state.queue_sel;
        t.config_generation = state.config_generation;
        t.interrupt
            .restore(state.interrupt_status, state.needs_reset);
        if state.active {
            // Checked now, started by `resume` once the whole machine is
            // restored: a worker started earlier could interrupt a vCPU
            // whose LAPIC is not restored yet, and the interrupt (a vsock
            // TRANSPORT_RESET) would be lost until the next one.
            for (index, queue) in t.queues.iter().enumerate() {
                if !t.usable(queue) {
                    return Err(StateError::Start {
                        device_type,
                        why: format!("queue {index} unusable"),
                    });
                }
            }
            t.saved_queues = Some(state.queues.clone());
        }
        Ok(t)
    }

    /// Stops the device's data path and returns the transport's state,
    /// each queue at the position the device reached (`virtio::state`).
    /// The device stays stopped, so nothing writes guest memory while it
    /// is saved, until [`resume`](Self::resume).
    pub fn save(&mut self) -> TransportState {
        let was_active = self.active || self.saved_queues.is_some();
        if self.active {
            self.device.reset();
            self.active = false;
            let positions: Vec<QueueSnapshot> = self
                .queues
                .iter()
                .map(|q| QueueSnapshot::of(q, super::queue::used_index(q, &self.mem)))
                .collect();
            self.saved_queues = Some(positions);
        }
        let queues = match &self.saved_queues {
            Some(saved) => saved.clone(),
            None => self
                .queues
                .iter()
                .map(|q| QueueSnapshot::of(q, 0))
                .collect(),
        };
        TransportState {
            device_type: self.device.device_type(),
            status: self.status,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            queue_sel: self.queue_sel,
            config_generation: self.config_generation,
            interrupt_status: self.interrupt.status(),
            needs_reset: self.interrupt.needs_reset(),
            active: was_active,
            queues,
        }
    }

    /// Starts the device [`save`](Self::save) stopped again, from where
    /// its queues stood, as a restore would.
    pub fn resume(&mut self) {
        let Some(saved) = self.saved_queues.take() else {
            return;
        };
        let device_type = self.device.device_type();
        let queues = saved
            .iter()
            .map(|s| Queue::try_from(s.queue_state()))
            .collect();
        if let Err(why) = self.start_device(queues, true) {
            tracing::warn!("virtio device type {device_type} did not resume: {why}");
            self.fail();
        }
    }

    /// The eventfds to register as ioeventfds at [`MMIO_NOTIFY_OFFSET`],
    /// with the queue index as datamatch.
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// The interrupt, whose irqfd the VMM routes to this device's line.
    pub fn interrupt(&self) -> &Arc<Interrupt> {
        &self.interrupt
    }

    pub fn device_type(&self) -> u32 {
        self.device.device_type()
    }

    /// Why a snapshot cannot take the device now ([`VirtioDevice::snapshot_blocker`]).
    pub fn snapshot_blocker(&self) -> Option<&'static str> {
        self.device.snapshot_blocker()
    }

    fn offered_features(&self) -> u64 {
        self.device.features() | F_VERSION_1
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        if self.active {
            return None; // queues are the device's while it runs
        }
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn read_register(&self, offset: u64) -> u32 {
        let queue = self.queues.get(self.queue_sel as usize);
        match offset {
            reg::MAGIC => MAGIC,
            reg::VERSION => VERSION,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.offered_features() as u32,
                1 => (self.offered_features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => queue.map_or(0, |q| u32::from(q.max_size())),
            reg::QUEUE_READY => queue.map_or(0, |q| u32::from(q.ready())),
            reg::INTERRUPT_STATUS => self.interrupt.status(),
            reg::STATUS => {
                let broken = if self.interrupt.needs_reset() {
                    status::DEVICE_NEEDS_RESET
                } else {
                    0
                };
                u32::from(self.status | broken)
            }
            reg::CONFIG_GENERATION => self.config_generation,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        let may_configure_queues =
            self.status & status::FEATURES_OK != 0 && self.status & status::DRIVER_OK == 0;
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = value,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            reg::DRIVER_FEATURES => {
                if self.status & status::FEATURES_OK == 0 {
                    let shift = match self.driver_features_sel {
                        0 => 0,
                        1 => 32,
                        _ => return,
                    };
                    let mask = 0xffff_ffffu64 << shift;
                    let offered = self.offered_features();
                    self.driver_features =
                        (self.driver_features & !mask) | ((u64::from(value) << shift) & offered);
                }
            }
            reg::QUEUE_SEL => self.queue_sel = value,
            reg::QUEUE_NUM if may_configure_queues => {
                if let Some(q) = self.selected_queue() {
                    q.set_size(value as u16);
                }
            }
            reg::QUEUE_READY if may_configure_queues => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(value == 1);
                }
            }
            reg::QUEUE_DESC_LOW
            | reg::QUEUE_DESC_HIGH
            | reg::QUEUE_AVAIL_LOW
            | reg::QUEUE_AVAIL_HIGH
            | reg::QUEUE_USED_LOW
            | reg::QUEUE_USED_HIGH
                if may_configure_queues =>
            {
                if let Some(q) = self.selected_queue() {
                    let (low, high) = if offset & 4 == 0 {
                        (Some(value), None)
                    } else {
                        (None, Some(value))
                    };
                    match offset & !4 {
                        reg::QUEUE_DESC_LOW => q.set_desc_table_address(low, high),
                        reg::QUEUE_AVAIL_LOW => q.set_avail_ring_address(low, high),
                        _ => q.set_used_ring_address(low, high),
                    }
                }
            }
            reg::QUEUE_NOTIFY => {
                // Only reached when no ioeventfd caught the write.
                if let Some(evt) = self.queue_evts.get(value as usize) {
                    let _ = evt.write(1);
                }
            }
            reg::INTERRUPT_ACK => self.interrupt.ack(value),
            reg::STATUS => self.set_status(value as u8),
            _ => tracing::debug!("virtio-mmio: ignored write of {value:#x} at {offset:#x}"),
        }
    }

    fn set_status(&mut self, value: u8) {
        if value == 0 {
            self.reset();
            return;
        }
        // The driver only adds bits (virtio 1.2, 3.1.1); refuse to clear any.
        if value & self.status != self.status {
            tracing::debug!(
                "virtio-mmio: status {:#x} -> {value:#x} refused",
                self.status
            );
            return;
        }
        self.status = value;
        if value & status::DRIVER_OK != 0 && value & status::FEATURES_OK != 0 && !self.active {
            self.activate();
        }
    }

    fn activate(&mut self) {
        let queues = self
            .queues
            .iter()
            .map(|q| Queue::try_from(q.state()))
            .collect();
        if let Err(why) = self.start_device(queues, false) {
            tracing::warn!(
                "virtio device type {} not started: {why}",
                self.device.device_type()
            );
            self.fail();
        }
    }

    /// Hands `queues` (the driver's, or a snapshot's) to the device, once
    /// each is found usable in guest memory.
    /// Whether the driver set `queue` up so that a device can use it.
    fn usable(&self, queue: &Queue) -> bool {
        queue.ready() && queue.is_valid(&self.mem) && !super::queue::rings_overlap(queue)
    }

    fn start_device(
        &mut self,
        queues: Vec<Result<Queue, virtio_queue::Error>>,
        resumed: bool,
    ) -> Result<(), String> {
        let mut active = Vec::with_capacity(queues.len());
        for (index, (queue, evt)) in queues.into_iter().zip(&self.queue_evts).enumerate() {
            let usable = queue.ok().filter(|q| self.usable(q));
            let Some(mut queue) = usable else {
                return Err(format!("queue {index} unusable"));
            };
            let notify = evt.try_clone().map_err(|e| e.to_string())?;
            queue.set_event_idx(self.driver_features & super::F_RING_EVENT_IDX != 0);
            active.push(ActiveQueue { queue, notify });
        }
        let activation = Activation {
            mem: self.mem.clone(),
            features: self.driver_features,
            queues: active,
            interrupt: self.interrupt.clone(),
            confinement: self.confinement.clone(),
            resumed,
        };
        // The device starts its worker on the launcher, never on this
        // (vCPU, filtered) thread: a worker would inherit its filter. The
        // device moves there and back; the vCPU holds this transport's
        // lock meanwhile, so nothing sees the stand-in.
        let mut device = std::mem::replace(&mut self.device, Box::new(super::Detached));
        let started = self.confinement.run(move || {
            let result = device.activate(activation);
            (device, result)
        });
        let result = match started {
            Ok((device, result)) => {
                self.device = device;
                result
            }
            Err(e) => Err(e.into()),
        };
        result.map_err(|e| e.to_string())?;
        self.active = true;
        Ok(())
    }

    /// Tells the driver the device is broken until it resets it.
    fn fail(&mut self) {
        self.interrupt.fail(&format_args!(
            "device type {} could not start",
            self.device.device_type()
        ));
    }

    fn reset(&mut self) {
        if self.active {
            self.device.reset();
            self.active = false;
        }
        self.saved_queues = None;
        for queue in &mut self.queues {
            queue.reset();
        }
        for evt in &self.queue_evts {
            let _ = evt.read();
        }
        self.interrupt.clear();
        self.status = 0;
        self.driver_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            self.device.read_config(offset - CONFIG_SPACE, data);
            return;
        }
        data.fill(0);
        // Registers are 32 bits wide and naturally aligned (4.2.2.2).
        if data.len() == 4 && offset.is_multiple_of(4) {
            data.copy_from_slice(&self.read_register(offset).to_le_bytes());
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            self.device.write_config(offset - CONFIG_SPACE, data);
            self.config_generation = self.config_generation.wrapping_add(1);
            return;
        }
        if let (Ok(bytes), 0) = (<[u8; 4]>::try_from(data), offset % 4) {
            self.write_register(offset, u32::from_le_bytes(bytes));
        }
    }
}

/// A virtio-mmio window with no device behind it: a valid header with
/// device ID 0, which drivers must ignore (virtio 1.2, 4.2.3.1.1). The VMM
/// declares such slots to the guest at boot so devices can be hot-added
/// there later: Linux probes them silently, and probes again when asked to
/// bind the slot once a device is in it.
pub struct EmptySlot;

impl BusDevice for EmptySlot {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let value = match offset {
            reg::MAGIC => MAGIC,
            reg::VERSION => VERSION,
            reg::VENDOR_ID => VENDOR_ID,
            _ => return,
        };
        if data.len() == 4 {
            data.copy_from_slice(&value.to_le_bytes());
        }
    }

    fn write(&mut self, _offset: u64, _data: &[u8]) {}
}

impl Drop for MmioTransport {
    fn drop(&mut self) {
        if self.active {
            self.device.reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::ActivateError;
    use std::sync::Mutex;
    use vm_memory::{Bytes, GuestAddress};

    #[derive(Default)]
    struct Log {
        activations: Vec<(u64, usize)>,
        resets: usize,
        /// `(resumed, next_avail of each queue)` per activation.
        starts: Vec<(bool, Vec<u16>)>,
    }

    struct Dummy {
        log: Arc<Mutex<Log>>,
        fail: bool,
    }

    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 16]
        }
        fn features(&self) -> u64 {
            1 << 3
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            super::super::read_config_bytes(&[0xaa, 0xbb], offset, data)
        }
        fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
            if self.fail {
                return Err(ActivateError::QueueCount { got: 0, want: 1 });
            }
            self.log
                .lock()
                .unwrap()
                .activations
                .push((a.features, a.queues.len()));
            let positions = a.queues.iter().map(|q| q.queue.next_avail()).collect();
            self.log.lock().unwrap().starts.push((a.resumed, positions));
            Ok(())
        }
        fn reset(&mut self) {
            self.log.lock().unwrap().resets += 1;
        }
    }

    #[test]
    fn an_empty_slot_reads_as_device_id_zero() {
        let mut slot = EmptySlot;
        let read = |slot: &mut EmptySlot, offset: u64| {
            let mut data = [0xffu8; 4];
            slot.read(offset, &mut data);
            u32::from_le_bytes(data)
        };
        assert_eq!(read(&mut slot, reg::MAGIC), MAGIC);
        assert_eq!(read(&mut slot, reg::VERSION), VERSION);
        assert_eq!(read(&mut slot, reg::DEVICE_ID), 0);
        assert_eq!(read(&mut slot, reg::QUEUE_NUM_MAX), 0);
        slot.write(reg::STATUS, &[1, 0, 0, 0]);
        assert_eq!(read(&mut slot, reg::STATUS), 0);
        let mut odd = [0xffu8; 2];
        slot.read(reg::MAGIC, &mut odd);
        assert_eq!(odd, [0, 0]);
    }

    fn transport(fail: bool) -> (MmioTransport, Arc<Mutex<Log>>) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let log = Arc::new(Mutex::new(Log::default()));
        let dev = Dummy {
            log: log.clone(),
            fail,
        };
        let t = MmioTransport::new(
            Box::new(dev),
            mem,
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            Confinement::inline(),
        )
        .unwrap();
        (t, log)
    }

    fn r(t: &mut MmioTransport, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        t.read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    fn w(t: &mut MmioTransport, offset: u64, value: u32) {
        t.write(offset, &value.to_le_bytes());
    }

    /// The Linux driver's sequence, with queues at valid addresses.
    fn bring_up(t: &mut MmioTransport, features_low: u32) {
        w(t, reg::STATUS, u32::from(status::ACKNOWLEDGE));
        w(
            t,
            reg::STATUS,
            u32::from(status::ACKNOWLEDGE | status::DRIVER),
        );
        w(t, reg::DRIVER_FEATURES_SEL, 0);
        w(t, reg::DRIVER_FEATURES, features_low);
        w(t, reg::DRIVER_FEATURES_SEL, 1);
        w(t, reg::DRIVER_FEATURES, 1);
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        w(t, reg::STATUS, u32::from(s));
        for q in 0..2u32 {
            let base = 0x1000 * (q + 1);
            w(t, reg::QUEUE_SEL, q);
            w(t, reg::QUEUE_NUM, 16);
            w(t, reg::QUEUE_DESC_LOW, base);
            w(t, reg::QUEUE_AVAIL_LOW, base + 0x100);
            w(t, reg::QUEUE_USED_LOW, base + 0x200);
            w(t, reg::QUEUE_READY, 1);
        }
        w(t, reg::STATUS, u32::from(s | status::DRIVER_OK));
    }

    #[test]
    fn identifies_itself() {
        let (mut t, _) = transport(false);
        assert_eq!(r(&mut t, reg::MAGIC), MAGIC);
        assert_eq!(r(&mut t, reg::VERSION), 2);
        assert_eq!(r(&mut t, reg::DEVICE_ID), 42);
        assert_eq!(r(&mut t, reg::DEVICE_FEATURES), 1 << 3);
        w(&mut t, reg::DEVICE_FEATURES_SEL, 1);
        assert_eq!(r(&mut t, reg::DEVICE_FEATURES), 1);
        w(&mut t, reg::QUEUE_SEL, 1);
        assert_eq!(r(&mut t, reg::QUEUE_NUM_MAX), 16);
        w(&mut t, reg::QUEUE_SEL, 7);
        assert_eq!(r(&mut t, reg::QUEUE_NUM_MAX), 0);
        let mut cfg = [0u8; 4];
        t.read(CONFIG_SPACE + 1, &mut cfg);
        assert_eq!(cfg, [0xbb, 0, 0, 0]);
    }

    #[test]
    fn activates_with_negotiated_features_and_resets() {
        let (mut t, log) = transport(false);
        // The driver also asks for bit 5, which was never offered.
        bring_up(&mut t, (1 << 3) | (1 << 5));
        assert_eq!(
            log.lock().unwrap().activations,
            vec![((1 << 3) | F_VERSION_1, 2)]
        );
        // Queue registers are frozen while the device runs.
        w(&mut t, reg::QUEUE_SEL, 0);
        w(&mut t, reg::QUEUE_NUM, 2);
        w(&mut t, reg::STATUS, 0);
        assert_eq!(log.lock().unwrap().resets, 1);
        assert_eq!(r(&mut t, reg::STATUS), 0);
        assert_eq!(r(&mut t, reg::QUEUE_READY), 0);
        bring_up(&mut t, 1 << 3);
        assert_eq!(log.lock().unwrap().activations.len(), 2);
    }

    #[test]
    fn bad_queues_or_device_errors_need_reset() {
        let (mut t, log) = transport(false);
        // Never configures queue addresses: not ready.
        w(
            &mut t,
            reg::STATUS,
            u32::from(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK),
        );
        w(
            &mut t,
            reg::STATUS,
            u32::from(
                status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
            ),
        );
        assert!(log.lock().unwrap().activations.is_empty());
        assert_ne!(r(&mut t, reg::STATUS) as u8 & status::DEVICE_NEEDS_RESET, 0);
        assert_eq!(r(&mut t, reg::INTERRUPT_STATUS), super::super::INT_CONFIG);

        let (mut t, _) = transport(true);
        bring_up(&mut t, 0);
        assert_ne!(r(&mut t, reg::STATUS) as u8 & status::DEVICE_NEEDS_RESET, 0);
    }

    #[test]
    fn ready_queues_whose_rings_overlap_are_refused() {
        // QUEUE_READY with no address written: every ring at guest address
        // 0, where the device's replies would rewrite the avail ring.
        let (mut t, log) = transport(false);
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        w(&mut t, reg::STATUS, u32::from(s));
        for q in 0..2 {
            w(&mut t, reg::QUEUE_SEL, q);
            w(&mut t, reg::QUEUE_NUM, 16);
            w(&mut t, reg::QUEUE_READY, 1);
        }
        w(&mut t, reg::STATUS, u32::from(s | status::DRIVER_OK));
        assert!(log.lock().unwrap().activations.is_empty());
        assert_ne!(r(&mut t, reg::STATUS) as u8 & status::DEVICE_NEEDS_RESET, 0);
        // A reset clears it and a proper bring-up works.
        w(&mut t, reg::STATUS, 0);
        assert_eq!(r(&mut t, reg::STATUS), 0);
        bring_up(&mut t, 0);
        assert_eq!(log.lock().unwrap().activations.len(), 1);
    }

    #[test]
    fn a_worker_failure_shows_in_the_status_register_until_reset() {
        let (mut t, _) = transport(false);
        bring_up(&mut t, 0);
        assert_eq!(r(&mut t, reg::STATUS) as u8 & status::DEVICE_NEEDS_RESET, 0);
        t.interrupt().fail(&"test");
        assert_ne!(r(&mut t, reg::STATUS) as u8 & status::DEVICE_NEEDS_RESET, 0);
        assert_eq!(r(&mut t, reg::INTERRUPT_STATUS), super::super::INT_CONFIG);
        w(&mut t, reg::STATUS, 0);
        assert_eq!(r(&mut t, reg::STATUS), 0);
    }

    #[test]
    fn queue_addresses_outside_memory_are_refused() {
        let (mut t, log) = transport(false);
        w(
            &mut t,
            reg::STATUS,
            u32::from(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK),
        );
        for q in 0..2 {
            w(&mut t, reg::QUEUE_SEL, q);
            w(&mut t, reg::QUEUE_NUM, 16);
            w(&mut t, reg::QUEUE_DESC_LOW, 0xffff_f000);
            w(&mut t, reg::QUEUE_DESC_HIGH, 0xffff_ffff);
            w(&mut t, reg::QUEUE_READY, 1);
        }
        w(
            &mut t,
            reg::STATUS,
            u32::from(
                status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
            ),
        );
        assert!(log.lock().unwrap().activations.is_empty());
    }

    #[test]
    fn odd_accesses_are_ignored() {
        let (mut t, _) = transport(false);
        let mut two = [0xffu8; 2];
        t.read(reg::MAGIC, &mut two);
        assert_eq!(two, [0, 0]);
        t.write(reg::STATUS, &[1]);
        assert_eq!(r(&mut t, reg::STATUS), 0);
        t.write(reg::STATUS + 1, &1u32.to_le_bytes());
        assert_eq!(r(&mut t, reg::STATUS), 0);
        // Notify of a queue that does not exist.
        w(&mut t, reg::QUEUE_NOTIFY, 99);
        // Status that clears bits is refused.
        w(&mut t, reg::STATUS, 3);
        w(&mut t, reg::STATUS, 1);
        assert_eq!(r(&mut t, reg::STATUS), 3);
    }

    #[test]
    fn a_saved_transport_restores_and_resumes_its_device_where_it_stood() {
        let (mut t, log) = transport(false);
        bring_up(&mut t, 1 << 3);
        // The device published 5 used entries on queue 0, 2 on queue 1.
        t.mem.write_obj(5u16, GuestAddress(0x1000 + 0x202)).unwrap();
        t.mem.write_obj(2u16, GuestAddress(0x2000 + 0x202)).unwrap();
        t.interrupt().signal_used();
        let state = t.save();
        assert_eq!(log.lock().unwrap().resets, 1, "saving stops the device");
        assert!(state.active);
        assert_eq!(state.interrupt_status, super::super::INT_USED_RING);
        let positions: Vec<u16> = state.queues.iter().map(|q| q.next_avail).collect();
        assert_eq!(positions, [5, 2]);

        // Through the on-disk form, into a new transport and device.
        let json = serde_json::to_string(&state).unwrap();
        let state: TransportState = serde_json::from_str(&json).unwrap();
        let log2 = Arc::new(Mutex::new(Log::default()));
        let dev = Dummy {
            log: log2.clone(),
            fail: false,
        };
        let mut restored = MmioTransport::restore(
            Box::new(dev),
            t.mem.clone(),
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            Confinement::inline(),
            &state,
        )
        .unwrap();
        // Started only when the machine around it is restored too.
        assert!(log2.lock().unwrap().starts.is_empty());
        restored.resume();
        assert_eq!(log2.lock().unwrap().starts, vec![(true, vec![5, 2])]);
        assert_eq!(r(&mut restored, reg::STATUS), r(&mut t, reg::STATUS));
        assert_eq!(
            r(&mut restored, reg::INTERRUPT_STATUS),
            super::super::INT_USED_RING
        );
        // The driver can still reset it and start over.
        w(&mut restored, reg::STATUS, 0);
        assert_eq!(log2.lock().unwrap().resets, 1);

        // The original goes on after the snapshot, resumed the same way.
        t.resume();
        assert_eq!(log.lock().unwrap().starts[1], (true, vec![5, 2]));
    }

    #[test]
    fn a_snapshot_of_another_device_or_bad_queues_is_refused() {
        let (mut t, _) = transport(false);
        bring_up(&mut t, 0);
        let state = t.save();
        let restore = |state: &TransportState| {
            let dev = Dummy {
                log: Arc::default(),
                fail: false,
            };
            MmioTransport::restore(
                Box::new(dev),
                t.mem.clone(),
                EventFd::new(libc::EFD_NONBLOCK).unwrap(),
                Confinement::inline(),
                state,
            )
            .map(drop)
        };
        let other = TransportState {
            device_type: 2,
            ..state.clone()
        };
        assert_eq!(
            restore(&other).unwrap_err().to_string(),
            "the snapshot has a device of type 2 where this VM has type 42"
        );
        let mut fewer = state.clone();
        fewer.queues.pop();
        assert!(matches!(
            restore(&fewer),
            Err(StateError::QueueCount { saved: 1, .. })
        ));
        let mut odd = state.clone();
        odd.queues[1].size = 3;
        let err = restore(&odd).unwrap_err().to_string();
        assert!(err.starts_with("queue 1 of device type 42"), "{err}");
        let mut outside = state;
        outside.queues[0].used_ring = 0xffff_0000;
        assert!(matches!(restore(&outside), Err(StateError::Start { .. })));
    }

    #[test]
    fn notify_without_ioeventfd_signals_the_queue() {
        let (mut t, _) = transport(false);
        w(&mut t, reg::QUEUE_NOTIFY, 1);
        assert_eq!(t.queue_events()[1].read().unwrap(), 1);
    }
}
