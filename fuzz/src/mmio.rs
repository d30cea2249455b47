//! virtio-mmio: register accesses on an `MmioTransport`, over a stub
//! device that checks what the transport hands it, or over a real device
//! (virtio-blk, virtio-fs, virtio-net, vsock) whose worker thread then runs
//! on whatever queues the guest set up, while the guest keeps writing
//! memory and registers.
//!
//! Input: one byte choosing the device (and the stub's queues), then
//! actions:
//! - `WRITE`: a register write (offset from the register table or any,
//!   width, value: status bits, small, any, 0, 1, a guest address);
//! - `READ`: a register read;
//! - `MEM`: bytes written into guest memory (rings included);
//! - `NOTIFY`: a QUEUE_NOTIFY write, then a wait (20 ms at most) for the
//!   worker to take the notification;
//! - `BRING_UP`: the Linux driver's sequence: status, features, each
//!   queue's size and addresses (a sane layout, none at all, or any),
//!   QUEUE_READY, DRIVER_OK;
//! - `CONFIG`: a config-space access.
//!
//! Checked: MAGIC, VERSION and DEVICE_ID always read right; a reset
//! (STATUS 0) returns and leaves STATUS 0; the stub is only activated with
//! ready, valid, non-overlapping queues of a size it allows and features it
//! offered, never twice without a reset in between; dropping the transport
//! returns (a worker that spins makes the reset hang: libFuzzer's timeout);
//! the fd count once the transport is dropped.

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use skiff_devices::virtio::block::{Block, DiskFile};
use skiff_devices::virtio::fs::{CacheMode, Fs, FsLimits, FsShare};
use skiff_devices::virtio::net::Net;
use skiff_devices::virtio::queue::rings_overlap;
use skiff_devices::virtio::test_utils::{guest_memory, write_bytes, RingLayout};
use skiff_devices::virtio::vsock::Vsock;
use skiff_devices::virtio::{ActivateError, Activation, MmioTransport, VirtioDevice, F_VERSION_1};
use skiff_devices::BusDevice;
use virtio_queue::QueueT;
use vmm_sys_util::eventfd::EventFd;

use crate::guest::MEM_SIZE;
use crate::input::{Input, Seed};
use crate::FdCheck;

pub const WRITE: u8 = 0;
pub const READ: u8 = 1;
pub const MEM: u8 = 2;
pub const NOTIFY: u8 = 3;
pub const BRING_UP: u8 = 4;
pub const CONFIG: u8 = 5;
const TAGS: u8 = 6;
const MAX_ACTIONS: usize = 128;

pub use skiff_devices::virtio::mmio_reg as reg;

const REGS: [u64; 24] = [
    reg::MAGIC,
    reg::VERSION,
    reg::DEVICE_ID,
    0x0c,
    reg::DEVICE_FEATURES,
    reg::DEVICE_FEATURES_SEL,
    reg::DRIVER_FEATURES,
    reg::DRIVER_FEATURES_SEL,
    reg::QUEUE_SEL,
    reg::QUEUE_NUM_MAX,
    reg::QUEUE_NUM,
    reg::QUEUE_READY,
    reg::QUEUE_NOTIFY,
    reg::INTERRUPT_STATUS,
    reg::INTERRUPT_ACK,
    reg::STATUS,
    reg::QUEUE_DESC_LOW,
    reg::QUEUE_DESC_HIGH,
    reg::QUEUE_AVAIL_LOW,
    reg::QUEUE_AVAIL_HIGH,
    reg::QUEUE_USED_LOW,
    reg::QUEUE_USED_HIGH,
    reg::CONFIG_GENERATION,
    reg::CONFIG,
];

const STATUS_VALUES: [u32; 11] = [0, 1, 3, 0xb, 0xf, 0x7, 0x4, 0x8, 0x40, 0x80, 0xff];
const WIDTHS: [usize; 8] = [4, 4, 4, 1, 2, 8, 3, 0];

/// What the stub saw.
#[derive(Default)]
struct Log {
    active: bool,
    activations: usize,
}

/// A device that checks every activation the transport makes.
struct Stub {
    sizes: Vec<u16>,
    log: Arc<Mutex<Log>>,
}

const STUB_FEATURES: u64 = F_VERSION_1 | (1 << 3) | (1 << 29);

impl VirtioDevice for Stub {
    fn device_type(&self) -> u32 {
        42
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }
    fn features(&self) -> u64 {
        STUB_FEATURES
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        skiff_devices::virtio::read_config_bytes(&[1, 2, 3, 4, 5, 6, 7, 8], offset, data);
    }
    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        assert!(
            !log.active,
            "mmio: the stub was activated twice without a reset"
        );
        assert_eq!(
            a.queues.len(),
            self.sizes.len(),
            "mmio: activation with the wrong queue count"
        );
        assert_eq!(
            a.features & !STUB_FEATURES,
            0,
            "mmio: activation with features the device never offered: {:#x}",
            a.features
        );
        for (q, (active, &max)) in a.queues.iter().zip(&self.sizes).enumerate() {
            let queue = &active.queue;
            let size = queue.size();
            assert!(
                queue.ready() && queue.is_valid(&a.mem),
                "mmio: queue {q} handed over not ready or invalid"
            );
            assert!(
                size.is_power_of_two() && size <= max,
                "mmio: queue {q} handed over with size {size} (max {max})"
            );
            assert!(
                !rings_overlap(queue),
                "mmio: queue {q} handed over with overlapping rings"
            );
        }
        log.active = true;
        log.activations += 1;
        Ok(())
    }
    fn reset(&mut self) {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        assert!(log.active, "mmio: the stub was reset while not active");
        log.active = false;
    }
}

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| crate::scratch("mmio"))
}

/// The device for the first input byte; its type ID and queue count.
fn make_device(kind: u8, log: &Arc<Mutex<Log>>) -> Box<dyn VirtioDevice> {
    let dir = dir();
    match kind % 8 {
        1 => {
            let path = dir.join("disk.img");
            let f = std::fs::File::create(&path).expect("image");
            f.set_len(1 << 20).expect("image size");
            drop(f);
            Box::new(Block::new(
                DiskFile::open(&path, false, false).expect("image opens"),
            ))
        }
        2 => {
            let share = dir.join("share");
            let _ = std::fs::remove_dir_all(&share);
            std::fs::create_dir_all(share.join("dir")).expect("share");
            std::fs::write(share.join("file"), b"hello\n").expect("file");
            Box::new(
                Fs::new(FsShare {
                    tag: "fuzz".into(),
                    path: share,
                    read_only: false,
                    cache: CacheMode::Auto,
                    limits: FsLimits::default(),
                })
                .expect("fs device"),
            )
        }
        3 => Box::new(Net::with_backend(
            Arc::new(crate::net::FakeBackend::new()),
            [2, 0, 0, 0, 0, 1],
        )),
        4 => Box::new(Vsock::new(3, &dir.join("v.sock")).expect("vsock device")),
        k => {
            let sizes = match k {
                0 => vec![16, 16],
                5 => vec![256],
                6 => vec![1, 2, 4],
                _ => vec![1024],
            };
            Box::new(Stub {
                sizes,
                log: log.clone(),
            })
        }
    }
}

struct Bus {
    t: MmioTransport,
    device_id: u32,
    queues: usize,
    /// The avail ring address the driver gave each queue (for
    /// `SKIFF_FUZZ_SKIP=avail-at-0`), and the selected queue.
    avail: Vec<u64>,
    sel: u32,
}

impl Bus {
    fn read(&mut self, offset: u64, width: usize) -> u64 {
        let mut data = [0u8; 8];
        let w = width.min(8);
        self.t.read(offset, &mut data[..w]);
        u64::from_le_bytes(data)
    }

    fn write(&mut self, offset: u64, width: usize, value: u64) {
        if width == 4 && crate::skip("avail-at-0") {
            let v = value as u32;
            match offset {
                reg::QUEUE_SEL => self.sel = v,
                reg::QUEUE_AVAIL_LOW | reg::QUEUE_AVAIL_HIGH => {
                    let shift = if offset == reg::QUEUE_AVAIL_LOW {
                        0
                    } else {
                        32
                    };
                    if let Some(a) = self.avail.get_mut(self.sel as usize) {
                        *a = (*a & !(0xffff_ffffu64 << shift)) | (u64::from(v) << shift);
                    }
                }
                reg::STATUS if v == 0 => self.avail.iter_mut().for_each(|a| *a = 0),
                // The known finding: do not start a device with such a queue.
                reg::STATUS if v & 4 != 0 && self.avail.contains(&0) => return,
                _ => {}
            }
        }
        let bytes = value.to_le_bytes();
        self.t.write(offset, &bytes[..width.min(8)]);
    }

    fn w32(&mut self, offset: u64, value: u32) {
        self.write(offset, 4, u64::from(value));
    }
}

fn value(inp: &mut Input) -> u32 {
    match inp.below(6) {
        0 => STATUS_VALUES[usize::from(inp.below(STATUS_VALUES.len() as u8))],
        1 => u32::from(inp.u8()),
        2 => inp.u32(),
        3 => 0,
        4 => 1,
        _ => u32::from(inp.u16()) * 16,
    }
}

fn offset(inp: &mut Input) -> u64 {
    let b = inp.u8();
    if b < 0x80 {
        REGS[usize::from(b) % REGS.len()]
    } else {
        u64::from(inp.u16() % 0x200)
    }
}

pub fn run(data: &[u8]) {
    let fds = FdCheck::start("mmio");
    {
        let mut inp = Input::new(data);
        let log = Arc::new(Mutex::new(Log::default()));
        let device = make_device(inp.u8(), &log);
        let device_id = device.device_type();
        let queues = device.queue_max_sizes().len();
        let mem = guest_memory(MEM_SIZE);
        let t = MmioTransport::new(
            device,
            mem.clone(),
            EventFd::new(libc::EFD_NONBLOCK).expect("irqfd"),
            skiff_confine::Confinement::inline(),
        )
        .expect("transport");
        let mut bus = Bus {
            t,
            device_id,
            queues,
            avail: vec![0; queues],
            sel: 0,
        };
        let mut actions = 0;
        while !inp.is_empty() && actions < MAX_ACTIONS {
            actions += 1;
            match inp.below(TAGS) {
                WRITE => {
                    let off = offset(&mut inp);
                    let width = WIDTHS[usize::from(inp.below(8))];
                    let v = value(&mut inp);
                    bus.write(off, width, u64::from(v));
                    if off == reg::STATUS && width == 4 && v == 0 {
                        let s = bus.read(reg::STATUS, 4);
                        assert_eq!(s, 0, "mmio: STATUS reads {s:#x} after a reset");
                    }
                }
                READ => {
                    let off = offset(&mut inp);
                    let width = WIDTHS[usize::from(inp.below(8))];
                    let v = bus.read(off, width);
                    if width == 4 {
                        let want = match off {
                            reg::MAGIC => Some(0x7472_6976),
                            reg::VERSION => Some(2),
                            reg::DEVICE_ID => Some(u64::from(bus.device_id)),
                            _ => None,
                        };
                        if let Some(want) = want {
                            assert_eq!(v, want, "mmio: register {off:#x} reads {v:#x}");
                        }
                    }
                }
                MEM => {
                    let bytes = inp.blob(64);
                    let addr = u64::from(inp.u32()) % MEM_SIZE as u64;
                    let _ = write_bytes(&mem, addr, bytes);
                }
                NOTIFY => {
                    let q = u32::from(inp.u8()) % (bus.queues as u32 + 1);
                    bus.w32(reg::QUEUE_NOTIFY, q);
                    // Only a running device has a worker to take it.
                    let running = bus.read(reg::STATUS, 4) & 0x44 == 0x04;
                    if let Some(evt) = bus.t.queue_events().get(q as usize).filter(|_| running) {
                        wait_consumed(evt, Duration::from_millis(20));
                    }
                }
                BRING_UP => bring_up(&mut bus, &mut inp),
                CONFIG => {
                    let off = reg::CONFIG + u64::from(inp.u8());
                    let width = WIDTHS[usize::from(inp.below(8))];
                    if inp.bool() {
                        let v = inp.u64();
                        bus.write(off, width, v);
                    } else {
                        bus.read(off, width);
                    }
                }
                _ => unreachable!(),
            }
        }
        crate::trace!(
            "mmio: device {device_id} status {:#x} interrupt {:#x}",
            bus.read(reg::STATUS, 4),
            bus.read(reg::INTERRUPT_STATUS, 4)
        );
        // A guest reset, then the device goes away (hot-unplug, VM exit).
        bus.w32(reg::STATUS, 0);
        let s = bus.read(reg::STATUS, 4);
        assert_eq!(s, 0, "mmio: STATUS reads {s:#x} after a reset");
        drop(bus);
        let log = log.lock().unwrap_or_else(|e| e.into_inner());
        crate::trace!("mmio: stub activations {}", log.activations);
        assert!(!log.active, "mmio: the stub is still active after a reset");
    }
    fds.finish();
}

/// Waits until nobody has a pending count on `evt` (the worker read it).
fn wait_consumed(evt: &EventFd, limit: Duration) {
    let start = Instant::now();
    while start.elapsed() < limit {
        let mut p = libc::pollfd {
            fd: evt.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no timeout.
        let n = unsafe { libc::poll(&mut p, 1, 0) };
        if n <= 0 {
            return;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// The Linux driver's bring-up, with sizes and addresses from the input.
fn bring_up(bus: &mut Bus, inp: &mut Input) {
    let features = inp.u32();
    let addr_mode = inp.below(4);
    bus.w32(reg::STATUS, 0);
    bus.w32(reg::STATUS, 1);
    bus.w32(reg::STATUS, 3);
    bus.w32(reg::DRIVER_FEATURES_SEL, 0);
    bus.w32(reg::DRIVER_FEATURES, features);
    bus.w32(reg::DRIVER_FEATURES_SEL, 1);
    bus.w32(reg::DRIVER_FEATURES, 1);
    bus.w32(reg::STATUS, 0xb);
    for q in 0..bus.queues as u32 {
        bus.w32(reg::QUEUE_SEL, q);
        let max = bus.read(reg::QUEUE_NUM_MAX, 4) as u32;
        let size = match inp.below(4) {
            0 => max,
            1 => max.min(16),
            2 => u32::from(inp.u16()),
            _ => 1,
        };
        bus.w32(reg::QUEUE_NUM, size);
        let layout = RingLayout::paged(0x4000 * u64::from(q), size.clamp(1, 1024) as u16);
        let (d, a, u) = match addr_mode {
            0 | 1 => (layout.desc, layout.avail, layout.used),
            2 => (0, 0, 0),
            _ => (
                u64::from(inp.u32()),
                u64::from(inp.u32()),
                u64::from(inp.u32()),
            ),
        };
        if addr_mode != 2 {
            bus.w32(reg::QUEUE_DESC_LOW, d as u32);
            bus.w32(reg::QUEUE_DESC_HIGH, 0);
            bus.w32(reg::QUEUE_AVAIL_LOW, a as u32);
            bus.w32(reg::QUEUE_AVAIL_HIGH, 0);
            bus.w32(reg::QUEUE_USED_LOW, u as u32);
            bus.w32(reg::QUEUE_USED_HIGH, 0);
        }
        bus.w32(reg::QUEUE_READY, 1);
    }
    bus.w32(reg::STATUS, 0xf);
}

/// Seed writers mirroring the decoder.
pub mod seed {
    use super::*;

    /// Device: 0 stub (2 x 16), 1 blk, 2 fs, 3 net, 4 vsock, 5-7 stubs.
    pub fn header(s: &mut Seed, device: u8) {
        s.u8(device);
    }

    /// Bring-up with `features`, each queue at the device's maximum size
    /// (`small`: 16 at most) and sane addresses (`zero_addrs`: none given).
    pub fn bring_up(s: &mut Seed, queues: usize, features: u32, small: bool, zero_addrs: bool) {
        s.u8(BRING_UP)
            .u32(features)
            .u8(if zero_addrs { 2 } else { 0 });
        for _ in 0..queues {
            s.u8(u8::from(small));
        }
    }

    /// A register write of a raw 32-bit value.
    pub fn write(s: &mut Seed, offset: u64, value: u32) {
        let i = REGS.iter().position(|&r| r == offset).unwrap_or(0);
        s.u8(WRITE).u8(i as u8).u8(0).u8(2).u32(value);
    }

    pub fn read(s: &mut Seed, offset: u64) {
        let i = REGS.iter().position(|&r| r == offset).unwrap_or(0);
        s.u8(READ).u8(i as u8).u8(0);
    }

    pub fn mem(s: &mut Seed, addr: u32, bytes: &[u8]) {
        s.u8(MEM).blob(bytes).u32(addr);
    }

    pub fn notify(s: &mut Seed, q: u8) {
        s.u8(NOTIFY).u8(q);
    }
}
