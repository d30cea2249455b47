//! virtio-blk: `RequestQueue` over a temporary raw image.
//!
//! Input: queue setup ([`Guest::new`]), one byte of disk options (bit 0
//! read-only, bit 1 O_DIRECT where the file system has it, bit 2 DISCARD
//! and bit 3 WRITE_ZEROES negotiated), then actions: the generic ones, and
//! - `PROCESS`: the worker runs the queue;
//! - `REQUEST`: a virtio-blk request: type, sector, header split, data
//!   segments (length, direction, address), discard ranges, status buffer;
//! - `RESET`: the device is reset and set up again.
//!
//! Checked: the used-ring invariants after each run, the image's size
//! after the input, and the fd count once the queue and disk are dropped.

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use skiff_devices::virtio::block::{DiskFile, RequestQueue, QUEUE_SIZE};
use skiff_devices::virtio::test_utils::{write_bytes, Buf};
use skiff_devices::virtio::{Interrupt, F_VERSION_1};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
};
use vmm_sys_util::eventfd::EventFd;

use crate::guest::{tag, Guest, MAX_ACTIONS};
use crate::input::{Input, Seed};
use crate::FdCheck;

pub const PROCESS: u8 = tag::COMMON;
pub const REQUEST: u8 = tag::COMMON + 1;
pub const RESET: u8 = tag::COMMON + 2;
const TAGS: u8 = tag::COMMON + 3;

/// 1 MiB: 2048 sectors.
pub const DISK_SIZE: u64 = 1 << 20;

fn image() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| crate::scratch("virtio_blk").join("disk.img"))
}

/// A fresh image: a pattern in the first 64 KiB, holes after.
fn fresh_image() {
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(image())
        .expect("image");
    let pattern: Vec<u8> = (0..64 * 1024u32)
        .map(|i| ((i * 7) ^ (i >> 9)) as u8)
        .collect();
    std::os::unix::fs::FileExt::write_all_at(&file, &pattern, 0).expect("image data");
    file.set_len(DISK_SIZE).expect("image size");
}

struct Device {
    queue: RequestQueue,
    interrupt: Arc<Interrupt>,
}

fn device(guest: &Guest, disk: &Arc<DiskFile>, features: u64) -> Device {
    let interrupt = Arc::new(Interrupt::new(
        EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"),
    ));
    let queue = RequestQueue::new(
        guest.device_queue(0, QUEUE_SIZE, true),
        guest.mem.clone(),
        disk.clone(),
        features,
        interrupt.clone(),
    );
    Device { queue, interrupt }
}

pub fn run(data: &[u8]) {
    let fds = FdCheck::start("virtio_blk");
    fresh_image();
    {
        let mut inp = Input::new(data);
        let mut guest = Guest::new(&mut inp, &[QUEUE_SIZE]);
        let opts = inp.u8();
        let read_only = opts & 1 != 0;
        let disk = match DiskFile::open(image(), read_only, opts & 2 != 0) {
            Ok(d) => d,
            // No O_DIRECT on this file system: the same disk without it.
            Err(_) => DiskFile::open(image(), read_only, false).expect("image opens"),
        };
        let disk = Arc::new(disk);
        let mut features = F_VERSION_1;
        if opts & 4 != 0 {
            features |= 1 << VIRTIO_BLK_F_DISCARD;
        }
        if opts & 8 != 0 {
            features |= 1 << VIRTIO_BLK_F_WRITE_ZEROES;
        }
        let mut dev = device(&guest, &disk, features);
        let mut actions = 0;
        while !inp.is_empty() && actions < MAX_ACTIONS {
            actions += 1;
            match inp.below(TAGS) {
                PROCESS => {
                    let before = guest.bounds(0);
                    dev.queue.process();
                    for u in guest.check_used(0, &before, "virtio_blk") {
                        crate::trace!("virtio_blk: head {} used {}", u.id, u.len);
                    }
                    crate::trace!("virtio_blk: needs reset {}", dev.interrupt.needs_reset());
                }
                REQUEST => request(&mut guest, &mut inp),
                RESET => {
                    drop(dev);
                    guest.reset_queue(0);
                    dev = device(&guest, &disk, features);
                }
                t if t < tag::COMMON => guest.common(t, &mut inp),
                _ => unreachable!(),
            }
        }
        // The guest's last word: whatever is still queued gets served.
        if !dev.interrupt.needs_reset() {
            let before = guest.bounds(0);
            dev.queue.process();
            guest.check_used(0, &before, "virtio_blk");
        }
        let size = std::fs::metadata(image()).map(|m| m.len()).unwrap_or(0);
        assert_eq!(
            size, DISK_SIZE,
            "virtio_blk: the guest changed the image's size"
        );
    }
    fds.finish();
}

const KINDS: [u32; 6] = [
    VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID,
    VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_WRITE_ZEROES,
];

/// Decodes and offers one request.
fn request(guest: &mut Guest, inp: &mut Input) {
    let k = inp.below(8);
    let kind = match k {
        6 => inp.u32(),
        7 => VIRTIO_BLK_T_IN,
        k => KINDS[usize::from(k)],
    };
    let sector = match inp.below(4) {
        0 => u64::from(inp.u8()),
        1 => u64::from(inp.u16()),
        2 => inp.u64(),
        _ => (DISK_SIZE / 512).wrapping_sub(u64::from(inp.u8())),
    };
    let mut header = [0u8; 16];
    header[..4].copy_from_slice(&kind.to_le_bytes());
    header[8..].copy_from_slice(&sector.to_le_bytes());
    let hdr = guest.put(&header);
    let mut bufs = Vec::new();
    match inp.below(4) {
        // Split in two, as the spec allows.
        1 => bufs.extend([Buf::readable(hdr, 8), Buf::readable(hdr + 8, 8)]),
        // Short.
        2 => bufs.push(Buf::readable(hdr, u32::from(inp.below(16)))),
        _ => bufs.push(Buf::readable(hdr, 16)),
    }
    let writes = kind == VIRTIO_BLK_T_IN || kind == VIRTIO_BLK_T_GET_ID;
    let segments = inp.below(5);
    for _ in 0..segments {
        let len = match inp.below(4) {
            0 => 512 * u32::from(inp.below(9)),
            1 => 4096,
            2 => u32::from(inp.u16()),
            _ => Guest::len(inp),
        };
        let flip = inp.below(8) == 0;
        let addr = guest.addr(inp, u64::from(len));
        bufs.push(Buf {
            addr,
            len,
            write: writes != flip,
        });
    }
    if kind == VIRTIO_BLK_T_DISCARD || kind == VIRTIO_BLK_T_WRITE_ZEROES {
        let n = 1 + usize::from(inp.below(4));
        let mut ranges = Vec::with_capacity(16 * n);
        for _ in 0..n {
            let sector = u64::from(inp.u16() % 4096);
            let sectors = match inp.below(3) {
                0 => u32::from(inp.u8()),
                1 => u32::from(inp.u16()),
                _ => inp.u32(),
            };
            let flags = u32::from(inp.below(3));
            ranges.extend_from_slice(&sector.to_le_bytes());
            ranges.extend_from_slice(&sectors.to_le_bytes());
            ranges.extend_from_slice(&flags.to_le_bytes());
        }
        let addr = guest.put(&ranges);
        bufs.push(Buf::readable(addr, ranges.len() as u32));
    }
    match inp.below(4) {
        1 => {} // no status byte
        2 => {
            let len = u32::from(inp.u8());
            let addr = guest.alloc(u64::from(len));
            bufs.push(Buf::writable(addr, len));
        }
        3 => {
            let addr = guest.alloc(1);
            bufs.push(Buf::readable(addr, 1));
        }
        _ => {
            let addr = guest.alloc(1);
            let _ = write_bytes(&guest.mem, addr, &[0xff]);
            bufs.push(Buf::writable(addr, 1));
        }
    }
    let indirect = inp.below(4) == 0;
    guest.push(0, &bufs, indirect);
}

/// Seed writers mirroring the decoder.
pub mod seed {
    use super::*;
    use crate::guest::addr;

    pub fn header(s: &mut Seed, read_only: bool, discard: bool) {
        crate::guest::seed::setup(s, 4, 0);
        s.u8(u8::from(read_only) | if discard { 4 | 8 } else { 0 });
    }

    /// A request of KINDS[`kind`] at a small `sector`, with `segments`
    /// sector-sized data buffers, one status byte, not indirect.
    pub fn request(s: &mut Seed, kind: u8, sector: u8, segments: &[u8]) {
        s.u8(REQUEST).u8(kind).u8(0).u8(sector).u8(0);
        s.u8(segments.len() as u8);
        for &sectors in segments {
            s.u8(0).u8(sectors).u8(1).u8(addr::HEAP);
        }
        if KINDS.get(usize::from(kind)) == Some(&VIRTIO_BLK_T_DISCARD)
            || KINDS.get(usize::from(kind)) == Some(&VIRTIO_BLK_T_WRITE_ZEROES)
        {
            // One range of 8 sectors at sector 8.
            s.u8(0).u16(8).u8(0).u8(8).u8(0);
        }
        s.u8(0).u8(1);
    }

    pub fn process(s: &mut Seed) {
        s.u8(PROCESS);
    }
}
