//! Host-only benchmark of virtio-net TX: 1500-byte frames posted on a TX
//! queue in test guest memory, sent by the device's data path into a
//! backend that only counts them. No guest, no tap.
//!
//! `cargo bench -p skiff-devices --bench net_queue -- [FRAMES]` (default
//! 1,000,000). For instructions per frame, run the built binary under
//! `valgrind --tool=callgrind` with two frame counts and divide the
//! difference in Ir by the difference in frames.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use skiff_devices::virtio::net::datapath::NetWorker;
use skiff_devices::virtio::net::{NetBackend, NetStats, NET_HDR_LEN};
use skiff_devices::virtio::test_utils::{guest_memory, Buf, RingLayout, SplitQueueDriver};
use skiff_devices::virtio::Interrupt;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

const QUEUE: u16 = 256;
const BUFS: u64 = 0x1_0000;
const FRAME: usize = 1500;

/// Counts what it is given; never has anything to receive.
struct CountingBackend {
    fd: EventFd,
    bytes: AtomicU64,
}

impl AsRawFd for CountingBackend {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl NetBackend for CountingBackend {
    fn recv(&self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }
    fn send(&self, frame: &[u8]) -> io::Result<()> {
        self.bytes.fetch_add(frame.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

fn main() {
    let frames: u64 = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let mem = guest_memory(0x100_0000);
    let mut tx = SplitQueueDriver::new(&mem, RingLayout::paged(0, QUEUE));
    // The RX queue is never used; it only has to exist.
    let rx = SplitQueueDriver::new(&mem, RingLayout::paged(0x8000, QUEUE));

    // One single-buffer chain per descriptor, header and frame together,
    // as Linux posts a linear skb; the table never changes.
    let len = (NET_HDR_LEN + FRAME) as u32;
    let payload = vec![0x5au8; FRAME];
    for i in 0..QUEUE {
        let buf = BUFS + u64::from(i) * 0x800;
        tx.add_chain_at(i, &[Buf::readable(buf, len)]);
        mem.write_slice(&[0u8; NET_HDR_LEN], GuestAddress(buf))
            .unwrap();
        mem.write_slice(&payload, GuestAddress(buf + NET_HDR_LEN as u64))
            .unwrap();
    }

    let backend = Arc::new(CountingBackend {
        fd: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        bytes: AtomicU64::new(0),
    });
    let stats = Arc::new(NetStats::default());
    let irq = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
    let mut worker = NetWorker::new(
        mem.clone(),
        rx.active_queue(false),
        tx.active_queue(true),
        backend.clone(),
        irq,
        stats.clone(),
    );

    // The driver: make up to a ring's worth of chains available, kick.
    // `--seccomp`: the timed loop runs under the net worker's filter (log
    // mode: its cost, without stopping the bench's own calls).
    if std::env::args().any(|a| a == "--seccomp") {
        skiff_confine::install_for_measurement(&skiff_devices::virtio::seccomp::net()).unwrap();
    }
    let start = Instant::now();
    let mut avail_idx: u16 = 0;
    let mut left = frames;
    while left > 0 {
        let batch = left.min(u64::from(QUEUE)) as u16;
        for _ in 0..batch {
            tx.write_avail_slot(avail_idx, avail_idx % QUEUE);
            avail_idx = avail_idx.wrapping_add(1);
        }
        tx.set_avail_idx(avail_idx);
        worker.process_tx();
        left -= u64::from(batch);
    }
    let secs = start.elapsed().as_secs_f64();

    let sent = NetStats::get(&stats.tx_frames);
    assert_eq!(sent, frames, "every frame reaches the backend");
    assert_eq!(backend.bytes.load(Ordering::Relaxed), frames * FRAME as u64);
    println!(
        "net_queue: {frames} TX frames of {FRAME} bytes in {secs:.3} s: {:.0} frames/s",
        frames as f64 / secs.max(1e-9)
    );
}
