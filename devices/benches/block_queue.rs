//! Host-only benchmark of virtio-blk request processing: N 4 KiB reads from
//! a temp file through `RequestQueue::process`, driven by the test driver
//! (`virtio::test_utils`) in test guest memory (no guest, no worker thread).
//!
//! `cargo bench -p skiff-devices --bench block_queue -- [N] [BATCH]`
//! (defaults 100000 and 1: one request per notification, as an emulated
//! guest at queue depth 1 sends them). For instructions per request, run
//! the built binary under `valgrind --tool=callgrind` with N and with 0,
//! and divide the difference by N. `--seccomp` runs the timed loop under
//! the device worker's seccomp filter.

use std::sync::Arc;
use std::time::Instant;

use skiff_devices::virtio::block::{DiskFile, RequestQueue};
use skiff_devices::virtio::test_utils::{guest_memory, Buf, RingLayout, SplitQueueDriver};
use skiff_devices::virtio::Interrupt;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::tempfile::TempFile;

const MEM_SIZE: usize = 4 << 20;
const QSIZE: u16 = 256;
const HEADERS: u64 = 0x1_0000;
const STATUS: u64 = 0x2_0000;
const DATA: u64 = 0x10_0000;
const READ_LEN: u32 = 4096;
/// The reads cycle over this much of the (sparse, page-cached) image.
const DISK_SIZE: u64 = 16 << 20;
const F_VERSION_1: u64 = 1 << 32;

fn arg(index: usize, default: u64) -> u64 {
    std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .nth(index)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let n = arg(0, 100_000);
    let batch = arg(1, 1).clamp(1, u64::from(QSIZE / 3)) as u16;

    let image = TempFile::new().unwrap();
    image.as_file().set_len(DISK_SIZE).unwrap();
    let disk = DiskFile::open(image.as_path(), false, false).unwrap();
    let mem = guest_memory(MEM_SIZE);
    let mut ring = SplitQueueDriver::new(&mem, RingLayout::packed(0, QSIZE));
    // One fixed chain per batch slot: header, 4 KiB data, status.
    for k in 0..batch {
        let head = 3 * k;
        let k = u64::from(k);
        let data = DATA + u64::from(READ_LEN) * k;
        ring.add_chain_at(
            head,
            &[
                Buf::readable(HEADERS + 16 * k, 16),
                Buf::writable(data, READ_LEN),
                Buf::writable(STATUS + k, 1),
            ],
        );
    }
    let interrupt =
        Interrupt::new(vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap());
    let mut requests = RequestQueue::new(
        ring.queue(),
        mem.clone(),
        Arc::new(disk),
        F_VERSION_1,
        Arc::new(interrupt),
    );

    let sectors = DISK_SIZE / 512;
    let (mut avail_idx, mut done, mut sector) = (0u16, 0u64, 0u64);
    // `--seccomp`: the timed loop runs under the block worker's filter (log
    // mode: its cost, without stopping the bench's own calls).
    if std::env::args().any(|a| a == "--seccomp") {
        skiff_confine::install_for_measurement(&skiff_devices::virtio::seccomp::block()).unwrap();
    }
    let start = Instant::now();
    while done < n {
        let this = u64::from(batch).min(n - done) as u16;
        for k in 0..this {
            let header = HEADERS + 16 * u64::from(k);
            mem.write_obj(0u32, GuestAddress(header)).unwrap(); // VIRTIO_BLK_T_IN
            mem.write_obj(sector, GuestAddress(header + 8)).unwrap();
            sector = (sector + 8) % sectors;
            ring.write_avail_slot(avail_idx, 3 * k);
            avail_idx = avail_idx.wrapping_add(1);
        }
        ring.set_avail_idx(avail_idx);
        std::hint::black_box(requests.process());
        done += u64::from(this);
    }
    let elapsed = start.elapsed();
    assert_eq!(ring.used_idx(), avail_idx, "every request completed");
    let status: u8 = mem.read_obj(GuestAddress(STATUS)).unwrap();
    assert!(n == 0 || status == 0, "status {status}");
    let rate = n as f64 / elapsed.as_secs_f64().max(1e-9);
    println!(
        "block_queue: {n} x {READ_LEN}-byte reads, batch {batch}: {:.3} s, {rate:.0} requests/s",
        elapsed.as_secs_f64()
    );
}
