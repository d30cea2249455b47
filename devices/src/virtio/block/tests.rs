//! virtio-blk against hand-built virtqueues in test guest memory: the
//! requests a Linux driver sends, and the malformed ones a hostile one
//! could. After each bad request the device must still serve a good one.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_bindings::virtio_blk::*;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::tempfile::TempFile;

use super::disk::DiskOpenError;
use super::*;
use crate::virtio::test_utils::{
    guest_memory, Buf, Desc, RingLayout, SplitQueueDriver, F_NEXT, F_WRITE,
};
use crate::virtio::{Activation, ActiveQueue, Interrupt, VirtioDevice, F_VERSION_1};

const MEM_SIZE: usize = 0x10_0000;
const QSIZE: u16 = 256;
const HDR: u64 = 0x1_0000;
const DATA: u64 = 0x2_0000;
const DATA2: u64 = 0x6_0000;
const STATUS: u64 = 0xf_0000;
/// Past the end of guest memory.
const OUTSIDE: u64 = 0x1000_0000;
const DISK_SECTORS: u64 = 2048; // 1 MiB

fn r(addr: u64, len: u32) -> Buf {
    Buf::readable(addr, len)
}
fn w(addr: u64, len: u32) -> Buf {
    Buf::writable(addr, len)
}

/// A disk image whose every byte is a function of its offset.
fn pattern(offset: u64) -> u8 {
    (offset.wrapping_mul(7) ^ (offset >> 9)) as u8
}

fn image() -> TempFile {
    let file = TempFile::new().unwrap();
    let data: Vec<u8> = (0..DISK_SECTORS * 512).map(pattern).collect();
    file.as_file().write_all_at(&data, 0).unwrap();
    file
}

fn all_features() -> u64 {
    F_VERSION_1 | (1 << VIRTIO_BLK_F_DISCARD) | (1 << VIRTIO_BLK_F_WRITE_ZEROES)
}

/// Drives a [`RequestQueue`] as a guest driver would, on a queue laid out
/// as `MockSplitQueue` lays it out (with the used ring where the spec puts
/// it: see [`RingLayout::packed`]).
struct Driver {
    mem: GuestMemoryMmap,
    ring: SplitQueueDriver,
    queue: RequestQueue,
    /// Chains never wrap around the end of the table: a chain that would
    /// starts over at slot 0.
    next_desc: u16,
}

impl Driver {
    fn new(mem: &GuestMemoryMmap, path: &Path, read_only: bool, direct: bool) -> Self {
        Self::with_features(mem, path, read_only, direct, all_features())
    }

    fn with_features(
        mem: &GuestMemoryMmap,
        path: &Path,
        read_only: bool,
        direct: bool,
        features: u64,
    ) -> Self {
        let disk = DiskFile::open(path, read_only, direct).unwrap();
        let ring = SplitQueueDriver::new(mem, RingLayout::packed(0, QSIZE));
        Self {
            mem: mem.clone(),
            queue: RequestQueue::new(
                ring.queue(),
                mem.clone(),
                Arc::new(disk),
                features,
                Arc::new(crate::virtio::Interrupt::new(
                    vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap(),
                )),
            ),
            ring,
            next_desc: 0,
        }
    }

    /// Lays `descs` out as one chain in the descriptor table; returns its head.
    fn build(&mut self, descs: &[Buf]) -> u16 {
        let n = descs.len() as u16;
        if self.next_desc + n > QSIZE {
            self.next_desc = 0;
        }
        let head = self.ring.add_chain_at(self.next_desc, descs);
        self.next_desc += n;
        head
    }

    /// Makes chain `head` available, lets the device run, and returns the
    /// used length it reported.
    fn run(&mut self, head: u16) -> u32 {
        self.ring.offer(head);
        self.queue.process();
        let used = self.ring.take_used();
        assert_eq!(used.len(), 1, "one chain completed");
        assert_eq!(used[0].id, u32::from(head));
        used[0].len
    }

    fn submit(&mut self, descs: &[Buf]) -> u32 {
        let head = self.build(descs);
        self.run(head)
    }

    fn header(&self, kind: u32, sector: u64) {
        let mut raw = [0u8; 16];
        raw[0..4].copy_from_slice(&kind.to_le_bytes());
        raw[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&raw, GuestAddress(HDR)).unwrap();
        self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    }

    fn status(&self) -> u8 {
        self.mem.read_obj(GuestAddress(STATUS)).unwrap()
    }

    fn bytes(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    /// Reads `len` bytes at `sector` into DATA; returns (status, used).
    fn read(&mut self, sector: u64, len: u32) -> (u8, u32) {
        self.header(VIRTIO_BLK_T_IN, sector);
        let used = self.submit(&[r(HDR, 16), w(DATA, len), w(STATUS, 1)]);
        (self.status(), used)
    }

    fn write(&mut self, sector: u64, data: &[u8]) -> (u8, u32) {
        self.header(VIRTIO_BLK_T_OUT, sector);
        self.mem.write_slice(data, GuestAddress(DATA)).unwrap();
        let used = self.submit(&[r(HDR, 16), r(DATA, data.len() as u32), w(STATUS, 1)]);
        (self.status(), used)
    }

    /// The device still serves a plain read correctly.
    fn still_serves(&mut self, file: &TempFile) {
        let (status, used) = self.read(3, 1024);
        assert_eq!((status, used), (S_OK, 1025));
        let mut want = vec![0u8; 1024];
        file.as_file().read_exact_at(&mut want, 3 * 512).unwrap();
        assert_eq!(self.bytes(DATA, 1024), want);
    }
}

const S_OK: u8 = VIRTIO_BLK_S_OK as u8;
const S_IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const S_UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

fn memory() -> GuestMemoryMmap {
    guest_memory(MEM_SIZE)
}

fn file_bytes(file: &TempFile, offset: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    file.as_file().read_exact_at(&mut v, offset).unwrap();
    v
}

#[test]
fn read_write_flush_get_id_round_trip() {
    let (mem, file) = (memory(), image());
    let mut d = Driver::new(&mem, file.as_path(), false, false);

    let (status, used) = d.read(8, 4096);
    assert_eq!((status, used), (S_OK, 4097));
    let want: Vec<u8> = (8 * 512..8 * 512 + 4096).map(pattern).collect();
    assert_eq!(d.bytes(DATA, 4096), want);

    let data: Vec<u8> = (0..8192u32).map(|i| (i * 13 + 5) as u8).collect();
    assert_eq!(d.write(100, &data), (S_OK, 1));
    assert_eq!(file_bytes(&file, 100 * 512, 8192), data);
    // The sectors around it are untouched.
    assert_eq!(
        file_bytes(&file, 99 * 512, 512),
        (99 * 512..100 * 512).map(pattern).collect::<Vec<_>>()
    );
    mem.write_slice(&[0u8; 8192], GuestAddress(DATA)).unwrap();
    assert_eq!(d.read(100, 8192), (S_OK, 8193));
    assert_eq!(d.bytes(DATA, 8192), data);

    // Scattered over several buffers, as Linux sends bios.
    d.header(VIRTIO_BLK_T_IN, 100);
    let used = d.submit(&[
        r(HDR, 16),
        w(DATA2, 512),
        w(DATA2 + 0x3000, 3584),
        w(STATUS, 1),
    ]);
    assert_eq!((d.status(), used), (S_OK, 4097));
    assert_eq!(d.bytes(DATA2, 512), data[..512]);
    assert_eq!(d.bytes(DATA2 + 0x3000, 3584), data[512..4096]);

    d.header(VIRTIO_BLK_T_FLUSH, 0);
    assert_eq!(
        (d.submit(&[r(HDR, 16), w(STATUS, 1)]), d.status()),
        (1, S_OK)
    );

    d.header(VIRTIO_BLK_T_GET_ID, 0);
    let used = d.submit(&[r(HDR, 16), w(DATA, 20), w(STATUS, 1)]);
    assert_eq!((used, d.status()), (21, S_OK));
    let id = d.bytes(DATA, 20);
    assert!(id.starts_with(b"skiff-"), "{id:?}");
    // A shorter buffer gets a prefix.
    d.header(VIRTIO_BLK_T_GET_ID, 0);
    let used = d.submit(&[r(HDR, 16), w(DATA2, 4), w(STATUS, 1)]);
    assert_eq!((used, d.status()), (5, S_OK));
    assert_eq!(d.bytes(DATA2, 4), id[..4]);
}

#[test]
fn header_and_status_may_share_or_split_descriptors() {
    let (mem, file) = (memory(), image());
    let mut d = Driver::new(&mem, file.as_path(), false, false);
    // Header split 10 + 6, data and status in one writable buffer.
    d.header(VIRTIO_BLK_T_IN, 2);
    let status = DATA + 512;
    mem.write_obj(0xffu8, GuestAddress(status)).unwrap();
    let used = d.submit(&[r(HDR, 10), r(HDR + 10, 6), w(DATA, 513)]);
    assert_eq!(used, 513);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(status)).unwrap(), S_OK);
    assert_eq!(
        d.bytes(DATA, 512),
        (1024..1536).map(pattern).collect::<Vec<_>>()
    );
    // Header and write data in one readable buffer.
    mem.write_obj(VIRTIO_BLK_T_OUT, GuestAddress(DATA2))
        .unwrap();
    mem.write_obj(5u64, GuestAddress(DATA2 + 8)).unwrap();
    mem.write_slice(&[0xab; 512], GuestAddress(DATA2 + 16))
        .unwrap();
    assert_eq!(d.submit(&[r(DATA2, 528), w(STATUS, 1)]), 1);
    assert_eq!(d.status(), S_OK);
    assert_eq!(file_bytes(&file, 5 * 512, 512), vec![0xab; 512]);
}

#[test]
fn indirect_chains_are_served() {
    let (mem, file) = (memory(), image());
    let mut d = Driver::new(&mem, file.as_path(), false, false);
    d.header(VIRTIO_BLK_T_IN, 1);
    let table = 0x5_0000u64;
    let head = d
        .ring
        .add_indirect_chain_at(0, table, &[r(HDR, 16), w(DATA, 512), w(STATUS, 1)]);
    d.next_desc = 1;
    assert_eq!(d.run(head), 513);
    assert_eq!(d.status(), S_OK);
    assert_eq!(
        d.bytes(DATA, 512),
        (512..1024).map(pattern).collect::<Vec<_>>()
    );
}

#[test]
fn read_only_disks_refuse_every_write() {
    let (mem, file) = (memory(), image());
    let before = std::fs::read(file.as_path()).unwrap();
    let mut d = Driver::new(&mem, file.as_path(), true, false);
    assert_eq!(d.write(0, &[0u8; 512]), (S_IOERR, 1));
    for kind in [VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES] {
        d.header(kind, 0);
        mem.write_obj(0u64, GuestAddress(DATA)).unwrap();
        mem.write_obj(8u32, GuestAddress(DATA + 8)).unwrap();
        mem.write_obj(0u32, GuestAddress(DATA + 12)).unwrap();
        assert_eq!(d.submit(&[r(HDR, 16), r(DATA, 16), w(STATUS, 1)]), 1);
        assert_eq!(d.status(), S_IOERR);
    }
    // Flush of a read-only disk is harmless.
    d.header(VIRTIO_BLK_T_FLUSH, 0);
    d.submit(&[r(HDR, 16), w(STATUS, 1)]);
    assert_eq!(d.status(), S_OK);
    assert_eq!(std::fs::read(file.as_path()).unwrap(), before);
    d.still_serves(&file);

    let ro = Block::new(DiskFile::open(file.as_path(), true, false).unwrap());
    assert_ne!(ro.features() & (1 << VIRTIO_BLK_F_RO), 0);
    assert_eq!(ro.features() & (1 << VIRTIO_BLK_F_DISCARD), 0);
}

#[test]
fn requests_past_the_end_fail() {
    let (mem, file) = (memory(), image());
    let mut d = Driver::new(&mem, file.as_path(), false, false);
    assert_eq!(d.read(DISK_SECTORS - 1, 512), (S_OK, 513));
    assert_eq!(d.read(DISK_SECTORS, 512), (S_IOERR, 1));
    assert_eq!(d.read(DISK_SECTORS - 1, 1024), (S_IOERR, 1));
    assert_eq!(d.write(DISK_SECTORS, &[1; 512]), (S_IOERR, 1));
    // Zero bytes at the very end is in range.
    d.header(VIRTIO_BLK_T_IN, DISK_SECTORS);
    assert_eq!(d.submit(&[r(HDR, 16), w(STATUS, 1)]), 1);
    assert_eq!(d.status(), S_OK);
    d.still_serves(&file);
}

#[test]
fn sector_arithmetic_overflow_fails() {
    let (mem, file) = (memory(), image());
    let mut d = Driver::new(&mem, file.as_path(), false, false);
    // sector * 512 overflows.
    assert_eq!(d.read(u64::MAX, 512), (S_IOERR, 1));
    assert_eq!(d.read(u64::MAX / 512 + 1, 512), (S_IOERR, 1));
    // sector * 512 fits, + length overflows.
    assert_eq!(d.read(u64::MAX / 512, 4096), (S_IOERR, 1));
    assert_eq!(d.write(u64::MAX / 512, &[0; 4096]), (S_IOERR, 1));
    d.still_serves(&file);
}

#[test]
fn chains_without_a_usable_status_byte_are_dropped() {
    let (mem, file) = (memory(), image());
    let mut d = Driver::new(&mem, file.as_path(), false, false);
    d.header(VIRTIO_BLK_T_IN, 0);
    // Last descriptor device-readable.
    assert_eq!(d.submit(&[r(HDR, 16), w(DATA, 512), r(STATUS, 1)]), 0);
    assert_eq!(d.status(), 0xff);
    // Last descriptor empty.
    assert_eq!(d.submit(&[r(HDR, 16), w(DATA, 512), w(STATUS, 0)]), 0);
    // Status byte outside guest memory.
    assert_eq!(d.submit(&[r(HDR, 16), w(DATA, 512), w(OUTSIDE, 1)]), 0);
    // Status length wraps the address space.
    assert_eq!(d.submit(&[r(HDR, 16), w(u64::MAX - 1, 8)]), 0);
    // Header only.
    assert_eq!(d.submit(&[r(HDR, 16)]), 0);
    assert_eq!(d.status(), 0xff);
    d.still_serves(&file);
}

#[test]
fn short_or_missing_headers_fail() {
    let (mem, file) = (memory(), image());
    let mut d = Driver::new(&mem, file.as_path(), false, false);
    d.header(VIRTIO_BLK_T_IN, 0);
    assert_eq!(d.submit(&[r(HDR, 15), w(DATA, 512), w(STATUS, 1)]), 1);
    assert_eq!(d.status(), S_IOERR);
    d.header(VIRTIO_BLK_T_IN, 0);
    assert_eq!(d.submit(&[w(STATUS, 1)]), 1);
    assert_eq!(d.status(), S_IOERR);
    // Header outside guest memory.
    d.header(VIRTIO_BLK_T_IN, 0);
    assert_eq!(d.submit(&[r(OUTSIDE, 16), w(DATA, 512), w(STATUS, 1)]), 1);
    assert_eq!(d.status(), S_IOERR);
    d.still_serves(&file);
}

#[test]
fn zero_length_buffers_are_skipped() {
    let (mem, file) = (memory(), image());
    let mut d = Driver::new(&mem, file.as_path(), false, false);
    // No data at all: nothing to do, fine.
    d.header(VIRTIO_BLK_T_IN, 4);
    assert_eq!(d.submit(&[r(HDR, 16), w(DATA, 0), w(STATUS, 1)]), 1);
    assert_eq!(d.status(), S_OK);
    d.header(VIRTIO_BLK_T_OUT, 4);
    assert_eq!(d.submit(&[r(HDR, 16), r(OUTSIDE, 0), w(STATUS, 1)]), 1);
    assert_eq!(d.status(), S_OK);
    // Empty buffers between real ones, even at bogus addresses.
    d.header(VIRTIO_BLK_T_IN, 4);
    let used = d.submit(&[
        r(HDR, 16),
        r(OUTSIDE, 0),
        w(DATA, 512),
        w(OUTSIDE, 0),
        w(STATUS, 1),
    ]);
    assert_eq!((used, d.status()), (513, S_OK));
    assert_eq!(
        d.bytes(DATA, 512),
        (2048..2560).map(pattern).collect::<Vec<_>>()
    );
    d.still_serves(&file);
}

#[test]
fn data_outside_guest_memory_fails() {
    let (mem, file) = (memory(), image());
    let before = std::fs::read(file.as_path()).unwrap();
    let mut d = Driver::new(&mem, file.as_path(), false, false);
    d.header(VIRTIO_BLK_T_IN, 0);
    assert_eq!(d.submit(&[r(HDR, 16), w(OUTSIDE, 512), w(STATUS, 1)]), 1);
    assert_eq!(d.status(), S_IOERR);
    // Straddling the end of memory.
    d.header(VIRTIO_BLK_T_IN, 0);
    let end = MEM_SIZE as u64 - 512;
    assert_eq!(d.submit(&[r(HDR, 16), w(end, 1024), w(STATUS, 1)]), 1);
    assert_eq!(d.status(), S_IOERR);
    d.header(VIRTIO_BLK_T_OUT, 0);
    assert_eq!(d.submit(&[r(HDR, 16), r(OUTSIDE, 512), w(STATUS, 1)]), 1);
    assert_eq!(d.status(), S_IOERR);
    d.header(VIRTIO_BLK_T_GET_ID, 0);
    assert_eq!(d.submit(&[r(HDR, 16), w(OUTSIDE, 20), w(STATUS, 1)]), 1);
    assert_eq!(d.status(), S_IOERR);
    assert_eq!(std::fs::read(file.as_path()).unwrap(), before);
    d.still_serves(&file);
}

#[test]
fn descriptor_loops_are_dropped() {
    let (mem, file) = (memory(), image());
    let mut d = Driver::new(&mem, file.as_path(), false, false);
    d.header(VIRTIO_BLK_T_IN, 0);
    // 0 -> 1 -> 0 -> ...
    d.ring.write_desc(0, Desc::new(HDR, 16, F_NEXT, 1));
    d.ring
        .write_desc(1, Desc::new(DATA, 512, F_NEXT | F_WRITE, 0));
    d.next_desc = 2;
    assert_eq!(d.run(0), 0);
    // A self-loop on the status descriptor.
    d.ring.write_desc(2, Desc::new(HDR, 16, F_NEXT, 3));
    d.ring
        .write_desc(3, Desc::new(STATUS, 1, F_NEXT | F_WRITE, 3));
    d.next_desc = 4;
    assert_eq!(d.run(2), 0);
    // `next` past the table.
    d.ring.write_desc(4, Desc::new(HDR, 16, F_NEXT, QSIZE + 5));
    d.next_desc = 5;
    assert_eq!(d.run(4), 0);
    assert_eq!(d.status(), 0xff);
    d.still_serves(&file);
}

#[test]
fn buffers_pointing_the_wrong_way_fail() {
    let (mem, file) = (memory(), image());
    let before = std::fs::read(file.as_path()).unwrap();
    let mut d = Driver::new(&mem, file.as_path(), false, false);
    // A read whose data buffer is device-readable.
    d.header(VIRTIO_BLK_T_IN, 0);
    mem.write_slice(&[0x5a; 512], GuestAddress(DATA)).unwrap();
    assert_eq!(d.submit(&[r(HDR, 16), r(DATA, 512), w(STATUS, 1)]), 1);
    assert_eq!(d.status(), S_IOERR);
    assert_eq!(d.bytes(DATA, 512), vec![0x5a; 512]);
    // A write whose data buffer is device-writable.
    d.header(VIRTIO_BLK_T_OUT, 0);
    assert_eq!(d.submit(&[r(HDR, 16), w(DATA, 512), w(STATUS, 1)]), 1);
    assert_eq!(d.status(), S_IOERR);
    // A readable buffer after a writable one.
    d.header(VIRTIO_BLK_T_OUT, 0);
    assert_eq!(
        d.submit(&[r(HDR, 16), w(DATA2, 512), r(DATA, 512), w(STATUS, 1)]),
        1
    );
    assert_eq!(d.status(), S_IOERR);
    // The header itself device-writable.
    d.header(VIRTIO_BLK_T_IN, 0);
    assert_eq!(d.submit(&[w(HDR, 16), w(DATA, 512), w(STATUS, 1)]), 1);
    assert_eq!(d.status(), S_IOERR);
    assert_eq!(std::fs::read(file.as_path()).unwrap(), before);
    d.still_serves(&file);
}

#[test]
fn partial_sectors_and_oversized_chains_fail() {
    let (mem, file) = (memory(), image());
    let mut d = Driver::new(&mem, file.as_path(), false, false);
    assert_eq!(d.read(0, 100), (S_IOERR, 1));
    assert_eq!(d.write(0, &[0; 700]), (S_IOERR, 1));
    // More buffers than seg_max allows.
    d.header(VIRTIO_BLK_T_IN, 0);
    let mut descs = vec![r(HDR, 16)];
    descs.extend((0..SEG_MAX as u64 + 1).map(|i| w(DATA + 512 * i, 512)));
    descs.push(w(STATUS, 1));
    assert_eq!(d.submit(&descs), 1);
    assert_eq!(d.status(), S_IOERR);
    // Exactly seg_max is fine.
    descs.remove(1);
    assert_eq!(d.submit(&descs), 512 * SEG_MAX + 1);
    assert_eq!(d.status(), S_OK);
    d.still_serves(&file);
}

#[test]
fn unknown_request_types_are_unsupported() {
    let (mem, file) = (memory(), image());
    let mut d = Driver::new(&mem, file.as_path(), false, false);
    for kind in [2, 10, 14, 0xffff_ffff] {
        d.header(kind, 0);
        assert_eq!(d.submit(&[r(HDR, 16), w(DATA, 512), w(STATUS, 1)]), 1);
        assert_eq!(d.status(), S_UNSUPP, "type {kind}");
    }
    d.still_serves(&file);
}

fn range(d: &Driver, at: u64, sector: u64, sectors: u32, flags: u32) {
    d.mem.write_obj(sector, GuestAddress(at)).unwrap();
    d.mem.write_obj(sectors, GuestAddress(at + 8)).unwrap();
    d.mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
}

#[test]
fn discard_and_write_zeroes_clear_ranges() {
    let (mem, file) = (memory(), image());
    let mut d = Driver::new(&mem, file.as_path(), false, false);
    d.header(VIRTIO_BLK_T_WRITE_ZEROES, 16);
    range(&d, DATA, 16, 8, 0);
    range(&d, DATA + 16, 40, 1, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP);
    assert_eq!(d.submit(&[r(HDR, 16), r(DATA, 32), w(STATUS, 1)]), 1);
    assert_eq!(d.status(), S_OK);
    assert_eq!(file_bytes(&file, 16 * 512, 4096), vec![0; 4096]);
    assert_eq!(file_bytes(&file, 40 * 512, 512), vec![0; 512]);
    assert_eq!(file_bytes(&file, 41 * 512, 1), vec![pattern(41 * 512)]);

    d.header(VIRTIO_BLK_T_DISCARD, 0);
    range(&d, DATA, 64, 8, 0);
    assert_eq!(d.submit(&[r(HDR, 16), r(DATA, 16), w(STATUS, 1)]), 1);
    assert_eq!(d.status(), S_OK);
    assert_eq!(file_bytes(&file, 64 * 512, 4096), vec![0; 4096]);

    // Discard takes no flags.
    range(&d, DATA, 64, 8, 1);
    d.submit(&[r(HDR, 16), r(DATA, 16), w(STATUS, 1)]);
    assert_eq!(d.status(), S_UNSUPP);
    // Past the end, overflowing, too long, ragged, too many ranges.
    for (sector, sectors) in [
        (DISK_SECTORS, 1),
        (u64::MAX, 1),
        (0, MAX_DISCARD_SECTORS + 1),
    ] {
        range(&d, DATA, sector, sectors, 0);
        d.header(VIRTIO_BLK_T_WRITE_ZEROES, 0);
        d.submit(&[r(HDR, 16), r(DATA, 16), w(STATUS, 1)]);
        assert_eq!(d.status(), S_IOERR, "{sector} {sectors}");
    }
    d.submit(&[r(HDR, 16), r(DATA, 15), w(STATUS, 1)]);
    assert_eq!(d.status(), S_IOERR);
    for i in 0..=u64::from(MAX_DISCARD_SEG) {
        range(&d, DATA + 16 * i, 0, 1, 0);
    }
    let too_many = 16 * (MAX_DISCARD_SEG + 1);
    d.submit(&[r(HDR, 16), r(DATA, too_many), w(STATUS, 1)]);
    assert_eq!(d.status(), S_IOERR);
    d.still_serves(&file);
}

#[test]
fn discard_needs_the_feature() {
    let (mem, file) = (memory(), image());
    let mut d = Driver::with_features(&mem, file.as_path(), false, false, F_VERSION_1);
    d.header(VIRTIO_BLK_T_DISCARD, 0);
    range(&d, DATA, 0, 1, 0);
    d.submit(&[r(HDR, 16), r(DATA, 16), w(STATUS, 1)]);
    assert_eq!(d.status(), S_UNSUPP);
}

#[test]
fn direct_disks_bounce_unaligned_buffers() {
    let (mem, file) = (memory(), image());
    let disk = match DiskFile::open(file.as_path(), false, true) {
        Err(DiskOpenError::DirectUnsupported { .. }) => {
            eprintln!("skipped: no O_DIRECT on this file system");
            return;
        }
        other => other.unwrap(),
    };
    drop(disk);
    let mut d = Driver::new(&mem, file.as_path(), false, true);
    // Aligned: straight into guest memory.
    assert_eq!(d.read(8, 8192), (S_OK, 8193));
    assert_eq!(
        d.bytes(DATA, 8192),
        (4096..12288).map(pattern).collect::<Vec<_>>()
    );
    // Unaligned buffers, offset and length: bounced.
    d.header(VIRTIO_BLK_T_IN, 3);
    let used = d.submit(&[
        r(HDR, 16),
        w(DATA + 512, 1024),
        w(DATA2 + 7, 512),
        w(STATUS, 1),
    ]);
    assert_eq!((used, d.status()), (1537, S_OK));
    let want: Vec<u8> = (1536..3072).map(pattern).collect();
    assert_eq!(d.bytes(DATA + 512, 1024), want[..1024]);
    assert_eq!(d.bytes(DATA2 + 7, 512), want[1024..]);
    // Writes, both ways; larger than the bounce buffer too.
    let big: Vec<u8> = (0..(256u32 << 10)).map(|i| (i % 251) as u8).collect();
    mem.write_slice(&big, GuestAddress(DATA + 1)).unwrap();
    d.header(VIRTIO_BLK_T_OUT, 1);
    let used = d.submit(&[r(HDR, 16), r(DATA + 1, big.len() as u32), w(STATUS, 1)]);
    assert_eq!((used, d.status()), (1, S_OK));
    assert_eq!(file_bytes(&file, 512, big.len()), big);
    assert_eq!(d.write(16, &[0x77; 4096]), (S_OK, 1));
    assert_eq!(file_bytes(&file, 16 * 512, 4096), vec![0x77; 4096]);
    d.still_serves(&file);
}

#[test]
fn config_space_and_features() {
    let file = image();
    let dev = Block::new(DiskFile::open(file.as_path(), false, false).unwrap());
    let mut cap = [0u8; 8];
    dev.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), DISK_SECTORS);
    let mut word = [0u8; 4];
    dev.read_config(12, &mut word);
    assert_eq!(u32::from_le_bytes(word), SEG_MAX);
    dev.read_config(20, &mut word);
    assert_eq!(u32::from_le_bytes(word), 512);
    dev.read_config(40, &mut word);
    assert_eq!(u32::from_le_bytes(word), MAX_DISCARD_SEG);
    dev.read_config(1000, &mut word);
    assert_eq!(word, [0; 4]);
    let f = dev.features();
    for bit in [
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_DISCARD,
        29,
        32,
    ] {
        assert_ne!(f & (1 << bit), 0, "bit {bit}");
    }
    assert_eq!(f & (1 << VIRTIO_BLK_F_RO), 0);
    assert_eq!(dev.device_type(), crate::virtio::TYPE_BLOCK);
}

#[test]
fn bad_images_are_refused_with_reasons() {
    let missing = DiskFile::open(Path::new("/nonexistent/disk.img"), true, false);
    assert!(matches!(missing, Err(DiskOpenError::Open { .. })));
    let odd = TempFile::new().unwrap();
    odd.as_file().set_len(1000).unwrap();
    let err = DiskFile::open(odd.as_path(), true, false).unwrap_err();
    assert!(err.to_string().contains("1000 bytes"), "{err}");
    let dir = DiskFile::open(Path::new("/tmp"), true, false).unwrap_err();
    assert!(matches!(dir, DiskOpenError::NotADisk { .. }), "{dir}");
    // One writer, or many readers.
    let file = image();
    let a = DiskFile::open(file.as_path(), true, false).unwrap();
    let b = DiskFile::open(file.as_path(), true, false).unwrap();
    let err = DiskFile::open(file.as_path(), false, false).unwrap_err();
    assert!(matches!(err, DiskOpenError::Locked { .. }), "{err}");
    drop((a, b));
    let rw = DiskFile::open(file.as_path(), false, false).unwrap();
    assert!(DiskFile::open(file.as_path(), true, false).is_err());
    drop(rw);
    let io: std::io::Error = DiskFile::open(Path::new("/nonexistent"), false, false)
        .unwrap_err()
        .into();
    assert!(io.to_string().contains("/nonexistent"));
}

fn wait_for(evt: &EventFd) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if evt.read().is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

#[test]
fn worker_serves_notifications_and_stops_on_reset() {
    let (mem, file) = (memory(), image());
    let mut dev = Block::new(DiskFile::open(file.as_path(), false, false).unwrap());
    let irq = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
    for round in 0..2u64 {
        // A fresh queue each time, as after a driver reset.
        let base = 0x8_0000 + round * 0x1_0000;
        let mut ring = SplitQueueDriver::new(&mem, RingLayout::packed(base, 16));
        let notify = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        dev.activate(Activation {
            mem: mem.clone(),
            features: dev.features(),
            queues: vec![ActiveQueue {
                queue: ring.queue(),
                notify: notify.try_clone().unwrap(),
            }],
            interrupt: irq.clone(),
            confinement: skiff_confine::Confinement::inline(),
            resumed: false,
        })
        .unwrap();
        let mut raw = [0u8; 16];
        raw[8..].copy_from_slice(&(round + 1).to_le_bytes());
        mem.write_slice(&raw, GuestAddress(HDR)).unwrap();
        mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        ring.push(&[r(HDR, 16), w(DATA, 512), w(STATUS, 1)]);
        notify.write(1).unwrap();
        assert!(wait_for(irq.irqfd()), "no interrupt in round {round}");
        assert_eq!(mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), S_OK);
        let want: Vec<u8> = ((round + 1) * 512..(round + 2) * 512)
            .map(pattern)
            .collect();
        let mut got = vec![0u8; 512];
        mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
        assert_eq!(got, want);
        dev.reset();
        // The worker is gone: notifications go unanswered.
        ring.set_avail_idx(2);
        notify.write(1).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!(irq.irqfd().read().is_err());
    }
    // The wrong number of queues is refused.
    let err = dev.activate(Activation {
        mem: mem.clone(),
        features: 0,
        queues: Vec::new(),
        interrupt: irq,
        confinement: skiff_confine::Confinement::inline(),
        resumed: false,
    });
    assert!(err.is_err());
}

#[test]
fn ring_indices_wrap() {
    let (mem, file) = (memory(), image());
    let mut d = Driver::new(&mem, file.as_path(), false, false);
    for i in 0..3 * u64::from(QSIZE) {
        let sector = (i * 7) % DISK_SECTORS;
        assert_eq!(d.read(sector, 512), (S_OK, 513), "request {i}");
        let want: Vec<u8> = (sector * 512..sector * 512 + 512).map(pattern).collect();
        assert_eq!(d.bytes(DATA, 512), want);
    }
}

#[test]
fn batches_complete_with_one_interrupt() {
    let (mem, file) = (memory(), image());
    let mut d = Driver::new(&mem, file.as_path(), false, false);
    let mut heads = Vec::new();
    for k in 0..8u64 {
        let header = HDR + 16 * k;
        mem.write_obj(VIRTIO_BLK_T_IN, GuestAddress(header))
            .unwrap();
        mem.write_obj(k, GuestAddress(header + 8)).unwrap();
        let head = d.build(&[r(header, 16), w(DATA + 512 * k, 512), w(STATUS + k, 1)]);
        d.ring.write_avail_slot(k as u16, head);
        heads.push(head);
    }
    d.ring.set_avail_idx(8);
    assert!(d.queue.process(), "the driver wants an interrupt");
    assert_eq!(d.ring.used_idx(), 8);
    for k in 0..8u64 {
        assert_eq!(mem.read_obj::<u8>(GuestAddress(STATUS + k)).unwrap(), S_OK);
    }
    assert_eq!(
        d.bytes(DATA, 4096),
        (0..4096).map(pattern).collect::<Vec<_>>()
    );
    // Nothing new: no interrupt.
    assert!(!d.queue.process());
}

#[test]
fn buffers_may_cross_memory_regions() {
    let half = MEM_SIZE / 2;
    let mem =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), half), (GuestAddress(half as u64), half)])
            .unwrap();
    let file = image();
    let mut d = Driver::new(&mem, file.as_path(), false, false);
    let across = half as u64 - 512;
    d.header(VIRTIO_BLK_T_IN, 10);
    let used = d.submit(&[r(HDR, 16), w(across, 1024), w(STATUS, 1)]);
    assert_eq!((used, d.status()), (1025, S_OK));
    let want: Vec<u8> = (5120..6144).map(pattern).collect();
    assert_eq!(d.bytes(across, 1024), want);
    mem.write_slice(&[0x42; 1024], GuestAddress(across))
        .unwrap();
    d.header(VIRTIO_BLK_T_OUT, 10);
    assert_eq!(d.submit(&[r(HDR, 16), r(across, 1024), w(STATUS, 1)]), 1);
    assert_eq!(d.status(), S_OK);
    assert_eq!(file_bytes(&file, 5120, 1024), vec![0x42; 1024]);
    d.still_serves(&file);
}

#[test]
fn a_broken_avail_index_fails_the_device_instead_of_spinning() {
    let file = image();
    let mem = memory();
    let mut d = Driver::new(&mem, file.as_path(), false, false);
    // virtio-queue pops nothing for this index while enable_notification
    // keeps saying "more": the old loop never returned.
    d.ring.set_avail_idx(QSIZE + 1);
    let (tx, rx) = std::sync::mpsc::channel();
    let mut queue = d.queue;
    std::thread::spawn(move || {
        let notify = queue.process();
        let _ = tx.send((notify, queue.interrupt().needs_reset()));
    });
    let (notify, needs_reset) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the queue was served in a loop that never ends");
    assert!(!notify);
    assert!(needs_reset);
}
