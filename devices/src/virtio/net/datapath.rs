//! Moves frames between the guest's queues and the backend, on the
//! device's worker thread.
//!
//! Both directions copy through one host buffer per direction:
//! - RX must know a frame's length before it can pick a guest chain for it
//!   (and count it as too large), and a tap hands over frames whole.
//! - TX copies the guest's frame before the host kernel parses it, so the
//!   guest cannot change it under the kernel, and sends our own all-zero
//!   header instead of the guest's, so no offload the guest did not
//!   negotiate reaches the host stack.
//!
//! A 1500-byte copy costs far less than the tap syscall it goes with.
//! When no RX chain is posted, the frame read last waits in the buffer, the
//! tap leaves the epoll set (the kernel queues, then drops and counts what
//! follows) and the guest's next RX notification resumes delivery.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;

use super::chain::{self, Buffer, ChainError};
use super::{NetBackend, NetStats, MAX_FRAME_LEN, NET_HDR_LEN};
use crate::virtio::worker::{Poller, WorkerLoop};
use crate::virtio::{queue, ActiveQueue, Interrupt};

const TOKEN_RX_QUEUE: u64 = 0;
const TOKEN_TX_QUEUE: u64 = 1;
const TOKEN_BACKEND: u64 = 2;

/// Frames read from the backend per wake-up, so TX is never starved.
const RX_BATCH: usize = 64;

/// The header the device puts before every received frame: no checksum
/// or GSO information (none negotiated), num_buffers = 1 (no mergeable
/// buffers).
const RX_HDR: [u8; NET_HDR_LEN] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0];

/// What became of the frame waiting in the RX buffer.
enum Delivery {
    Delivered,
    /// No chain could hold it: dropped and counted.
    Dropped,
    /// No chain is posted: keep it and wait for the guest.
    NoBuffers,
}

/// The data path of one virtio-net device.
pub struct NetWorker {
    mem: GuestMemoryMmap,
    rx: ActiveQueue,
    tx: ActiveQueue,
    backend: Arc<dyn NetBackend>,
    interrupt: Arc<Interrupt>,
    stats: Arc<NetStats>,
    /// Header slot followed by the frame, so a frame goes to the guest in
    /// one contiguous copy.
    rx_buf: Box<[u8]>,
    /// Length of the frame held in `rx_buf`, waiting for an RX chain.
    rx_pending: Option<usize>,
    /// No RX chain was posted; waiting for the guest's notification.
    rx_stalled: bool,
    /// The backend failed for good; RX has stopped.
    backend_broken: bool,
    /// Whether the backend's fd is in the epoll set.
    backend_watched: bool,
    tx_buf: Box<[u8]>,
    bufs: Vec<Buffer>,
}

impl NetWorker {
    pub fn new(
        mem: GuestMemoryMmap,
        rx: ActiveQueue,
        tx: ActiveQueue,
        backend: Arc<dyn NetBackend>,
        interrupt: Arc<Interrupt>,
        stats: Arc<NetStats>,
    ) -> Self {
        let mut worker = Self {
            mem,
            rx,
            tx,
            backend,
            interrupt,
            stats,
            rx_buf: vec![0; NET_HDR_LEN + MAX_FRAME_LEN].into_boxed_slice(),
            rx_pending: None,
            rx_stalled: false,
            backend_broken: false,
            backend_watched: false,
            tx_buf: vec![0; NET_HDR_LEN + MAX_FRAME_LEN].into_boxed_slice(),
            bufs: Vec::with_capacity(usize::from(super::QUEUE_SIZE)),
        };
        // RX runs on backend readiness; the guest's RX notifications only
        // matter while we wait for buffers.
        let _ = worker.rx.queue.disable_notification(&worker.mem);
        worker
    }

    /// Sends every frame the guest posted on TX, then interrupts it if it
    /// asked to be.
    pub fn process_tx(&mut self) {
        let max = (NET_HDR_LEN + MAX_FRAME_LEN) as u64;
        let mut tx = Tx {
            mem: &self.mem,
            stats: &self.stats,
            backend: &*self.backend,
            bufs: &mut self.bufs,
            buf: &mut self.tx_buf,
        };
        let kick = Some(&self.tx.notify);
        let notify = queue::drain(
            &mut self.tx.queue,
            &self.mem,
            &self.interrupt,
            kick,
            |chain| {
                let head = chain.head_index();
                match chain::collect(tx.mem, chain, false, max, tx.bufs) {
                    Ok(len) if len < NET_HDR_LEN as u64 => {
                        tx.bad_chain(head, ChainError::TooShort(len))
                    }
                    Ok(len) => tx.send_frame(head, len as usize),
                    Err(e) => tx.bad_chain(head, e),
                }
                0
            },
        );
        if notify {
            self.interrupt.signal_used();
        }
    }
}

/// What sending one TX frame needs, borrowed apart from the TX queue.
struct Tx<'a> {
    mem: &'a GuestMemoryMmap,
    stats: &'a NetStats,
    backend: &'a dyn NetBackend,
    bufs: &'a mut Vec<Buffer>,
    buf: &'a mut [u8],
}

impl Tx<'_> {
    /// Sends the frame in the checked chain `self.bufs`, `len` bytes with
    /// its header, at least the header's length and at most the buffer's.
    fn send_frame(&mut self, head: u16, len: usize) {
        let Some(dst) = self.buf.get_mut(..len) else {
            return self.bad_chain(head, ChainError::TooLong(len as u64));
        };
        if let Err(e) = chain::gather(self.mem, self.bufs, dst) {
            tracing::debug!("virtio-net: TX chain {head} unreadable: {e}");
            NetStats::add(&self.stats.tx_bad_chains, 1);
            return;
        }
        let frame = self.buf.get(NET_HDR_LEN..len).unwrap_or_default();
        match self.backend.send(frame) {
            Ok(()) => {
                NetStats::add(&self.stats.tx_frames, 1);
                NetStats::add(&self.stats.tx_bytes, frame.len() as u64);
            }
            Err(e) => {
                tracing::debug!("virtio-net: backend dropped a TX frame: {e}");
                NetStats::add(&self.stats.tx_errors, 1);
            }
        }
    }

    fn bad_chain(&self, head: u16, e: ChainError) {
        tracing::debug!("virtio-net: TX chain {head} refused: {e}");
        NetStats::add(&self.stats.tx_bad_chains, 1);
    }
}

impl NetWorker {
    /// Delivers frames from the backend until it has none, RX chains run
    /// out, or a batch is done.
    pub fn process_rx(&mut self) {
        let mut used_any = false;
        for _ in 0..RX_BATCH {
            let len = match self.rx_pending {
                Some(len) => len,
                None => match self.read_frame() {
                    Some(len) => len,
                    None => break,
                },
            };
            self.rx_pending = Some(len);
            match self.deliver(len, &mut used_any) {
                Delivery::Delivered | Delivery::Dropped => self.rx_pending = None,
                Delivery::NoBuffers => {
                    self.rx_stalled = true;
                    break;
                }
            }
        }
        if used_any && self.rx.queue.needs_notification(&self.mem).unwrap_or(true) {
            self.interrupt.signal_used();
        }
    }

    /// Reads the backend's next frame into `rx_buf`.
    fn read_frame(&mut self) -> Option<usize> {
        if self.backend_broken {
            return None;
        }
        loop {
            match self.backend.recv(&mut self.rx_buf[NET_HDR_LEN..]) {
                Ok(len) => return Some(len),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    // One bad frame (too long for any buffer); go on.
                    tracing::debug!("virtio-net: RX frame dropped: {e}");
                    NetStats::add(&self.stats.rx_errors, 1);
                }
                Err(e) => {
                    tracing::error!("virtio-net: backend read failed, RX stops: {e}");
                    NetStats::add(&self.stats.rx_errors, 1);
                    self.backend_broken = true;
                    return None;
                }
            }
        }
    }

    /// Puts the `len`-byte frame in `rx_buf` into the next RX chain.
    fn deliver(&mut self, len: usize, used_any: &mut bool) -> Delivery {
        let mem = &self.mem;
        let total = NET_HDR_LEN + len;
        let mut rechecked = false;
        loop {
            if self.interrupt.needs_reset() {
                return Delivery::NoBuffers;
            }
            let popped = match queue::pop(&mut self.rx.queue, mem) {
                Ok(popped) => popped,
                Err(e) => {
                    self.interrupt.fail(&e);
                    return Delivery::NoBuffers;
                }
            };
            let Some(chain) = popped else {
                // Ask for a notification, then look once more in case the
                // guest posted buffers before it could see the request.
                if !rechecked && matches!(self.rx.queue.enable_notification(mem), Ok(true)) {
                    rechecked = true;
                    continue;
                }
                return Delivery::NoBuffers;
            };
            let head = chain.head_index();
            let checked = chain::collect(mem, chain, true, u64::MAX, &mut self.bufs);
            let fault = match checked {
                Ok(cap) if cap < NET_HDR_LEN as u64 => Some(ChainError::TooShort(cap)),
                Ok(cap) if cap < total as u64 => {
                    // The chain is fine, the frame too big for it: drop
                    // the frame and keep the chain for the next one.
                    tracing::debug!("virtio-net: {len}-byte RX frame exceeds a {cap}-byte chain");
                    NetStats::add(&self.stats.rx_dropped_too_large, 1);
                    self.rx.queue.go_to_previous_position();
                    return Delivery::Dropped;
                }
                Ok(_) => {
                    self.rx_buf[..NET_HDR_LEN].copy_from_slice(&RX_HDR);
                    chain::scatter(mem, &self.bufs, &self.rx_buf[..total])
                        .err()
                        .map(|_| ChainError::Memory)
                }
                Err(e) => Some(e),
            };
            *used_any = true;
            if let Some(e) = fault {
                tracing::debug!("virtio-net: RX chain {head} refused: {e}");
                NetStats::add(&self.stats.rx_bad_chains, 1);
                if let Err(e) = self.rx.queue.add_used(mem, head, 0) {
                    tracing::warn!("virtio-net: RX used ring: {e}");
                }
                continue;
            }
            if let Err(e) = self.rx.queue.add_used(mem, head, total as u32) {
                tracing::warn!("virtio-net: RX used ring: {e}");
            }
            NetStats::add(&self.stats.rx_frames, 1);
            NetStats::add(&self.stats.rx_bytes, len as u64);
            if rechecked {
                let _ = self.rx.queue.disable_notification(mem);
            }
            return Delivery::Delivered;
        }
    }

    /// The guest posted RX buffers (or notified for no reason).
    pub fn rx_refilled(&mut self) {
        if self.rx_stalled {
            self.rx_stalled = false;
            let _ = self.rx.queue.disable_notification(&self.mem);
        }
        self.process_rx();
    }

    /// Whether RX is waiting for the guest to post buffers.
    pub fn rx_stalled(&self) -> bool {
        self.rx_stalled
    }

    /// Watches the backend exactly while RX can take frames.
    fn sync_backend_watch(&mut self, poller: &Poller) {
        let want = !self.rx_stalled && !self.backend_broken;
        if want == self.backend_watched {
            return;
        }
        let fd = self.backend.as_raw_fd();
        let done = if want {
            poller.add(fd, TOKEN_BACKEND, EventSet::IN)
        } else {
            poller.remove(fd)
        };
        match done {
            Ok(()) => self.backend_watched = want,
            Err(e) => tracing::error!("virtio-net: cannot change the backend's epoll watch: {e}"),
        }
    }
}

impl WorkerLoop for NetWorker {
    fn policy(&self) -> skiff_confine::ThreadPolicy {
        crate::virtio::seccomp::net()
    }

    fn register(&mut self, poller: &Poller) -> io::Result<()> {
        poller.add(self.rx.notify.as_raw_fd(), TOKEN_RX_QUEUE, EventSet::IN)?;
        poller.add(self.tx.notify.as_raw_fd(), TOKEN_TX_QUEUE, EventSet::IN)?;
        poller.add(self.backend.as_raw_fd(), TOKEN_BACKEND, EventSet::IN)?;
        self.backend_watched = true;
        Ok(())
    }

    fn handle(&mut self, poller: &Poller, token: u64, _events: EventSet) {
        match token {
            TOKEN_RX_QUEUE => {
                let _ = self.rx.notify.read();
                self.rx_refilled();
            }
            TOKEN_TX_QUEUE => {
                let _ = self.tx.notify.read();
                self.process_tx();
            }
            TOKEN_BACKEND => self.process_rx(),
            _ => {}
        }
        self.sync_backend_watch(poller);
    }
}

impl Drop for NetWorker {
    fn drop(&mut self) {
        if self.rx_pending.is_some() {
            NetStats::add(&self.stats.rx_dropped_reset, 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::net::testing::{memory, queue_in_page, FakeBackend};
    use crate::virtio::test_utils::{Buf, Desc, SplitQueueDriver, Used, F_NEXT, F_WRITE};
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::EventFd;

    const RX_AT: u64 = 0x0;
    const TX_AT: u64 = 0x1000;
    const BUF: u64 = 0x1_0000;
    const HDR: u32 = NET_HDR_LEN as u32;

    struct Setup {
        mem: GuestMemoryMmap,
        backend: Arc<FakeBackend>,
        stats: Arc<NetStats>,
        irq: Arc<Interrupt>,
    }

    impl Setup {
        fn new() -> Self {
            Self {
                mem: memory(),
                backend: Arc::new(FakeBackend::new()),
                stats: Arc::new(NetStats::default()),
                irq: Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap())),
            }
        }

        fn worker(&self, rx: &SplitQueueDriver, tx: &SplitQueueDriver) -> NetWorker {
            let (rx, tx) = (rx.active_queue(true), tx.active_queue(true));
            assert!(rx.queue.is_valid(&self.mem) && tx.queue.is_valid(&self.mem));
            NetWorker::new(
                self.mem.clone(),
                rx,
                tx,
                self.backend.clone(),
                self.irq.clone(),
                self.stats.clone(),
            )
        }

        fn interrupts(&self) -> u64 {
            self.irq.irqfd().read().unwrap_or(0)
        }

        fn stat(&self, pick: impl Fn(&NetStats) -> &std::sync::atomic::AtomicU64) -> u64 {
            NetStats::get(pick(&self.stats))
        }
    }

    /// The test's memory and backend, an RX and a TX queue of 16 entries
    /// in their own pages, and the worker serving them.
    fn setup() -> (Setup, SplitQueueDriver, SplitQueueDriver, NetWorker) {
        let s = Setup::new();
        let rx = queue_in_page(&s.mem, RX_AT, 16);
        let tx = queue_in_page(&s.mem, TX_AT, 16);
        let w = s.worker(&rx, &tx);
        (s, rx, tx, w)
    }

    fn frame(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(7) ^ seed).collect()
    }

    #[test]
    fn tx_sends_the_frame_without_its_header() {
        let (s, _rx, mut tx, mut w) = setup();
        let f = frame(1500, 1);
        // Header with junk flags (ignored), frame split over two buffers.
        s.mem.write_slice(&[0xff; 12], GuestAddress(BUF)).unwrap();
        s.mem
            .write_slice(&f[..1000], GuestAddress(BUF + 0x100))
            .unwrap();
        s.mem
            .write_slice(&f[1000..], GuestAddress(BUF + 0x1000))
            .unwrap();
        tx.push(&[
            Buf::readable(BUF, HDR),
            Buf::readable(BUF + 0x100, 1000),
            Buf::readable(BUF + 0x1000, 500),
        ]);
        // Header and frame in one buffer, as Linux posts small frames.
        let g = frame(60, 2);
        s.mem
            .write_slice(&[0; 12], GuestAddress(BUF + 0x2000))
            .unwrap();
        s.mem
            .write_slice(&g, GuestAddress(BUF + 0x2000 + 12))
            .unwrap();
        tx.push(&[Buf::readable(BUF + 0x2000, 72)]);
        w.process_tx();
        assert_eq!(s.backend.sent(), vec![f, g]);
        assert_eq!(tx.used_all(), vec![(0, 0), (3, 0)]);
        assert_eq!(s.stat(|s| &s.tx_frames), 2);
        assert_eq!(s.stat(|s| &s.tx_bytes), 1560);
        assert_eq!(s.interrupts(), 1);
        // The device asked to be notified of the next TX frame.
        assert_eq!(tx.avail_event(), 2);
    }

    #[test]
    fn malformed_tx_chains_are_returned_unused_and_the_next_is_sent() {
        let (s, _rx, mut tx, mut w) = setup();
        let big = (NET_HDR_LEN + MAX_FRAME_LEN) as u32;
        let bad: Vec<Vec<Buf>> = vec![
            vec![Buf::readable(BUF, HDR), Buf::readable(BUF + 0x100, 0)], // zero length
            vec![Buf::readable(BUF, HDR), Buf::readable(0x40_0000 - 10, 100)], // outside memory
            vec![Buf::readable(u64::MAX - 4, 100)],                       // address wraps
            vec![Buf::readable(BUF, HDR), Buf::writable(BUF + 0x100, 100)], // wrong direction
            vec![Buf::readable(BUF, big), Buf::readable(BUF + 0x2_0000, 1)], // oversized
            vec![Buf::readable(BUF, 8)],                                  // shorter than the header
        ];
        for chain in &bad {
            tx.push(chain);
        }
        // A loop: 2 -> 3 -> 2.
        let at = tx.reserve(2);
        tx.write_desc(at, Desc::new(BUF, 100, F_NEXT, at + 1));
        tx.write_desc(at + 1, Desc::new(BUF + 0x100, 100, F_NEXT, at));
        tx.offer(at);
        // A next index beyond the table.
        let at = tx.reserve(1);
        tx.write_desc(at, Desc::new(BUF, 100, F_NEXT, 999));
        tx.offer(at);
        let good = frame(100, 3);
        s.mem
            .write_slice(&good, GuestAddress(BUF + 0x3000 + 12))
            .unwrap();
        tx.push(&[Buf::readable(BUF + 0x3000, 112)]);
        w.process_tx();
        assert_eq!(s.backend.sent(), vec![good]);
        let used = tx.used_all();
        assert_eq!(used.len(), bad.len() + 3);
        assert!(used.iter().all(|u| u.len == 0));
        assert_eq!(s.stat(|s| &s.tx_bad_chains), bad.len() as u64 + 2);
        assert_eq!(s.stat(|s| &s.tx_frames), 1);
    }

    #[test]
    fn tx_backend_errors_are_counted_and_the_chain_returned() {
        let (s, _rx, mut tx, mut w) = setup();
        s.backend
            .refuse_sends
            .store(true, std::sync::atomic::Ordering::Relaxed);
        tx.push(&[Buf::readable(BUF, 100)]);
        w.process_tx();
        assert_eq!(tx.used_all(), vec![(0, 0)]);
        assert_eq!(s.stat(|s| &s.tx_errors), 1);
    }

    #[test]
    fn rx_writes_header_and_frame_across_buffers() {
        let (s, mut rx, _tx, mut w) = setup();
        rx.push(&[Buf::writable(BUF, 100), Buf::writable(BUF + 0x1000, 1600)]);
        rx.push(&[Buf::writable(BUF + 0x2000, 1526)]);
        let (f, g) = (frame(1000, 4), frame(1514, 5));
        s.backend.push(f.clone());
        s.backend.push(g.clone());
        w.process_rx();
        assert_eq!(rx.used_all(), vec![(0, 1012), (2, 1526)]);
        let mut got = vec![0u8; 1012];
        s.mem
            .read_slice(&mut got[..100], GuestAddress(BUF))
            .unwrap();
        s.mem
            .read_slice(&mut got[100..], GuestAddress(BUF + 0x1000))
            .unwrap();
        assert_eq!(got[..12], RX_HDR);
        assert_eq!(got[12..], f[..]);
        let mut got = vec![0u8; 1526];
        s.mem
            .read_slice(&mut got, GuestAddress(BUF + 0x2000))
            .unwrap();
        assert_eq!(got[12..], g[..]);
        assert_eq!(s.stat(|s| &s.rx_frames), 2);
        assert_eq!(s.stat(|s| &s.rx_bytes), 2514);
        assert_eq!(s.interrupts(), 1);
    }

    #[test]
    fn malformed_rx_chains_are_returned_unused_and_the_frame_goes_to_the_next() {
        let (s, mut rx, _tx, mut w) = setup();
        let bad: Vec<Vec<Buf>> = vec![
            vec![Buf::readable(BUF, 100)], // device-readable
            vec![Buf::writable(BUF, 12), Buf::writable(BUF + 0x100, 0)], // zero length
            vec![Buf::writable(0x40_0000 - 10, 2000)], // outside memory
            vec![Buf::writable(BUF, 8)],   // no room for the header
        ];
        for chain in &bad {
            rx.push(chain);
        }
        let at = rx.reserve(2);
        rx.write_desc(at, Desc::new(BUF, 1000, F_WRITE | F_NEXT, at + 1));
        rx.write_desc(at + 1, Desc::new(BUF + 0x1000, 1000, F_WRITE | F_NEXT, at));
        rx.offer(at);
        let head = rx.push(&[Buf::writable(BUF + 0x2000, 2048)]);
        let f = frame(64, 6);
        s.backend.push(f.clone());
        w.process_rx();
        let used = rx.used_all();
        assert_eq!(used.len(), bad.len() + 2);
        assert!(used[..bad.len() + 1].iter().all(|u| u.len == 0));
        assert_eq!(
            used.last(),
            Some(&Used {
                id: u32::from(head),
                len: 76
            })
        );
        let mut got = vec![0u8; 64];
        s.mem
            .read_slice(&mut got, GuestAddress(BUF + 0x2000 + 12))
            .unwrap();
        assert_eq!(got, f);
        assert_eq!(s.stat(|s| &s.rx_bad_chains), bad.len() as u64 + 1);
        assert_eq!(s.stat(|s| &s.rx_frames), 1);
    }

    #[test]
    fn rx_frames_larger_than_the_chain_are_dropped_and_the_chain_kept() {
        let (s, mut rx, _tx, mut w) = setup();
        rx.push(&[Buf::writable(BUF, 12 + 100)]);
        s.backend.push(frame(101, 7));
        s.backend.push(frame(100, 8));
        w.process_rx();
        assert_eq!(rx.used_all(), vec![(0, 112)]);
        assert_eq!(s.stat(|s| &s.rx_dropped_too_large), 1);
        assert_eq!(s.stat(|s| &s.rx_frames), 1);
        // A frame too long even for the host buffer is an error, counted.
        s.backend.push(frame(MAX_FRAME_LEN + 1, 9));
        w.process_rx();
        assert_eq!(s.stat(|s| &s.rx_errors), 1);
    }

    #[test]
    fn rx_without_buffers_waits_for_the_guest_then_resumes() {
        let (s, mut rx, _tx, mut w) = setup();
        let (f, g) = (frame(200, 10), frame(300, 11));
        s.backend.push(f.clone());
        s.backend.push(g.clone());
        w.process_rx();
        assert!(w.rx_stalled());
        assert!(rx.used_all().is_empty());
        // The device asked for a notification at the next buffer, and
        // holds the frame it read.
        assert_eq!(rx.avail_event(), 0);
        assert_eq!(s.backend.inbox.lock().unwrap().len(), 1);
        assert_eq!(s.interrupts(), 0);
        rx.push(&[Buf::writable(BUF, 2048)]);
        w.rx_refilled();
        // One buffer: the first frame lands, the second waits.
        assert!(w.rx_stalled());
        assert_eq!(rx.used_all(), vec![(0, 212)]);
        assert_eq!(rx.avail_event(), 1);
        rx.push(&[Buf::writable(BUF + 0x1000, 2048)]);
        rx.push(&[Buf::writable(BUF + 0x2000, 2048)]);
        w.rx_refilled();
        assert!(!w.rx_stalled());
        assert_eq!(rx.used_all(), vec![(0, 212), (1, 312)]);
        let mut got = vec![0u8; 300];
        s.mem
            .read_slice(&mut got, GuestAddress(BUF + 0x1000 + 12))
            .unwrap();
        assert_eq!(got, g);
        assert_eq!(s.stat(|s| &s.rx_frames), 2);
    }

    #[test]
    fn interrupts_follow_used_event() {
        let (s, _rx, mut tx, mut w) = setup();
        // The driver wants an interrupt only after the third used entry.
        tx.set_used_event(2);
        tx.push(&[Buf::readable(BUF, 100)]);
        w.process_tx();
        assert_eq!(s.interrupts(), 0);
        tx.push(&[Buf::readable(BUF, 100)]);
        tx.push(&[Buf::readable(BUF, 100)]);
        w.process_tx();
        assert_eq!(s.interrupts(), 1);
    }

    #[test]
    fn a_frame_held_at_reset_is_counted() {
        let (s, _rx, _tx, mut w) = setup();
        s.backend.push(frame(60, 12));
        w.process_rx();
        drop(w);
        assert_eq!(s.stat(|s| &s.rx_dropped_reset), 1);
    }
}
