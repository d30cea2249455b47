//! virtio-net: the data path (`NetWorker`) between the guest's RX/TX
//! queues and an in-memory backend.
//!
//! Input: queue setup ([`Guest::new`], queue 0 RX, queue 1 TX), then
//! actions: the generic ones, and
//! - `TX_FRAME`: a frame on TX: header and frame split over 1-3 buffers,
//!   of any length, sometimes device-writable, direct or indirect;
//! - `RX_BUFS`: an RX chain of 1-3 buffers of any length;
//! - `HOST_FRAME`: the backend receives a frame (up to past the largest
//!   the device takes);
//! - `TX`, `RX_KICK`, `RX`: the worker handles a TX notification, an RX
//!   notification, backend readiness;
//! - `BACKEND`: the backend starts or stops refusing sends, or fails its
//!   next receive for good;
//! - `RESET`: the device is reset (a new worker, the same counters).
//!
//! Checked: the used-ring invariants; TX chains come back with length 0
//! and RX chains with 0 or a header plus a frame; no sent frame exceeds
//! `MAX_FRAME_LEN`; every frame the backend received is delivered, dropped
//! and counted, or still waiting; every chain the device returned is
//! counted; the fd count once the worker is dropped.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use skiff_devices::virtio::net::datapath::NetWorker;
use skiff_devices::virtio::net::{
    NetBackend, NetStats, MAX_FRAME_LEN, NET_HDR_LEN, QUEUE_SIZE, RX_QUEUE, TX_QUEUE,
};
use skiff_devices::virtio::test_utils::Buf;
use skiff_devices::virtio::Interrupt;
use vmm_sys_util::eventfd::EventFd;

use crate::guest::{tag, Guest, MAX_ACTIONS};
use crate::input::{Input, Seed};
use crate::FdCheck;

pub const TX_FRAME: u8 = tag::COMMON;
pub const RX_BUFS: u8 = tag::COMMON + 1;
pub const HOST_FRAME: u8 = tag::COMMON + 2;
pub const TX: u8 = tag::COMMON + 3;
pub const RX_KICK: u8 = tag::COMMON + 4;
pub const RX: u8 = tag::COMMON + 5;
pub const BACKEND: u8 = tag::COMMON + 6;
pub const RESET: u8 = tag::COMMON + 7;
const TAGS: u8 = tag::COMMON + 8;

/// Frames to hand the device and what it sent; `ready` is readable while
/// frames wait, as a tap's fd would be.
pub(crate) struct FakeBackend {
    inbox: Mutex<VecDeque<Vec<u8>>>,
    ready: EventFd,
    refuse_sends: AtomicBool,
    fail_recv: AtomicBool,
    /// Frames refused as longer than the device's buffer.
    too_long: AtomicU64,
    sent: Mutex<Vec<usize>>,
}

impl FakeBackend {
    pub fn new() -> Self {
        Self {
            inbox: Mutex::new(VecDeque::new()),
            ready: EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"),
            refuse_sends: AtomicBool::new(false),
            fail_recv: AtomicBool::new(false),
            too_long: AtomicU64::new(0),
            sent: Mutex::new(Vec::new()),
        }
    }

    pub fn push(&self, frame: Vec<u8>) {
        self.inbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(frame);
        let _ = self.ready.write(1);
    }

    fn waiting(&self) -> usize {
        self.inbox.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl AsRawFd for FakeBackend {
    fn as_raw_fd(&self) -> RawFd {
        self.ready.as_raw_fd()
    }
}

impl NetBackend for FakeBackend {
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        if self.fail_recv.swap(false, Ordering::Relaxed) {
            return Err(io::Error::other("backend gone"));
        }
        let mut inbox = self.inbox.lock().unwrap_or_else(|e| e.into_inner());
        let Some(frame) = inbox.pop_front() else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        if inbox.is_empty() {
            let _ = self.ready.read();
        }
        if frame.len() > buf.len() {
            self.too_long.fetch_add(1, Ordering::Relaxed);
            return Err(io::Error::new(io::ErrorKind::InvalidData, "too long"));
        }
        buf[..frame.len()].copy_from_slice(&frame);
        Ok(frame.len())
    }

    fn send(&self, frame: &[u8]) -> io::Result<()> {
        assert!(
            frame.len() <= MAX_FRAME_LEN,
            "virtio_net: the device sent a {}-byte frame",
            frame.len()
        );
        if self.refuse_sends.load(Ordering::Relaxed) {
            return Err(io::Error::other("refused"));
        }
        self.sent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(frame.len());
        Ok(())
    }
}

fn worker(
    guest: &Guest,
    backend: &Arc<FakeBackend>,
    stats: &Arc<NetStats>,
) -> (NetWorker, Arc<Interrupt>) {
    let interrupt = Arc::new(Interrupt::new(
        EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"),
    ));
    let w = NetWorker::new(
        guest.mem.clone(),
        guest.queues[RX_QUEUE].active_queue(true),
        guest.queues[TX_QUEUE].active_queue(true),
        backend.clone(),
        interrupt.clone(),
        stats.clone(),
    );
    (w, interrupt)
}

/// Counts of what the guest saw come back.
#[derive(Default)]
struct Seen {
    tx_used: u64,
    rx_used: u64,
}

fn check(guest: &mut Guest, seen: &mut Seen, before: [crate::guest::Bounds; 2]) {
    let mut before = before;
    crate::guest::Bounds::share_hostility(&mut before);
    let [rx_before, tx_before] = before;
    for u in guest.check_used(TX_QUEUE, &tx_before, "virtio_net TX") {
        assert_eq!(
            u.len, 0,
            "virtio_net: a TX chain came back with length {}",
            u.len
        );
        seen.tx_used += 1;
    }
    for u in guest.check_used(RX_QUEUE, &rx_before, "virtio_net RX") {
        assert!(
            u.len == 0
                || (u.len as usize >= NET_HDR_LEN && u.len as usize <= NET_HDR_LEN + MAX_FRAME_LEN),
            "virtio_net: an RX chain came back with length {}",
            u.len
        );
        seen.rx_used += 1;
    }
}

pub fn run(data: &[u8]) {
    let fds = FdCheck::start("virtio_net");
    {
        let mut inp = Input::new(data);
        let mut guest = Guest::new(&mut inp, &[QUEUE_SIZE, QUEUE_SIZE]);
        let backend = Arc::new(FakeBackend::new());
        let stats = Arc::new(NetStats::default());
        let (mut w, mut interrupt) = worker(&guest, &backend, &stats);
        let mut seen = Seen::default();
        let mut pushed = 0u64;
        let mut actions = 0;
        while !inp.is_empty() && actions < MAX_ACTIONS {
            actions += 1;
            match inp.below(TAGS) {
                TX_FRAME => tx_frame(&mut guest, &mut inp),
                RX_BUFS => rx_bufs(&mut guest, &mut inp),
                HOST_FRAME => {
                    let len = match inp.below(4) {
                        0 => usize::from(inp.u8()),
                        1 => 1514,
                        2 => usize::from(inp.u16()),
                        _ => MAX_FRAME_LEN + usize::from(inp.below(4)),
                    };
                    let fill = inp.u8();
                    backend.push(vec![fill; len]);
                    pushed += 1;
                }
                t @ (TX | RX_KICK | RX) => {
                    let before = [guest.bounds(RX_QUEUE), guest.bounds(TX_QUEUE)];
                    match t {
                        TX => w.process_tx(),
                        RX_KICK => w.rx_refilled(),
                        _ => w.process_rx(),
                    }
                    check(&mut guest, &mut seen, before);
                }
                BACKEND => match inp.below(3) {
                    0 => backend.refuse_sends.store(true, Ordering::Relaxed),
                    1 => backend.refuse_sends.store(false, Ordering::Relaxed),
                    _ => backend.fail_recv.store(true, Ordering::Relaxed),
                },
                RESET => {
                    drop(w);
                    guest.reset_queue(RX_QUEUE);
                    guest.reset_queue(TX_QUEUE);
                    (w, interrupt) = worker(&guest, &backend, &stats);
                }
                t if t < tag::COMMON => guest.common(t, &mut inp),
                _ => unreachable!(),
            }
        }
        if !interrupt.needs_reset() {
            let before = [guest.bounds(RX_QUEUE), guest.bounds(TX_QUEUE)];
            w.process_tx();
            w.process_rx();
            check(&mut guest, &mut seen, before);
        }
        drop(w);
        let get = |c: &AtomicU64| NetStats::get(c);
        crate::trace!(
            "virtio_net: used tx {} rx {}; {stats:?}; needs reset {}",
            seen.tx_used,
            seen.rx_used,
            interrupt.needs_reset()
        );
        let tx_counted = get(&stats.tx_frames) + get(&stats.tx_bad_chains) + get(&stats.tx_errors);
        assert!(
            seen.tx_used <= tx_counted,
            "virtio_net: {} TX chains came back, {tx_counted} were counted",
            seen.tx_used
        );
        let rx_counted = get(&stats.rx_frames) + get(&stats.rx_bad_chains);
        assert!(
            seen.rx_used <= rx_counted,
            "virtio_net: {} RX chains came back, {rx_counted} were counted",
            seen.rx_used
        );
        let sent = backend.sent.lock().unwrap_or_else(|e| e.into_inner());
        assert_eq!(
            get(&stats.tx_bytes),
            sent.iter().map(|&l| l as u64).sum::<u64>(),
            "virtio_net: tx_bytes disagrees with what the backend got"
        );
        let accounted = get(&stats.rx_frames)
            + get(&stats.rx_dropped_too_large)
            + backend.too_long.load(Ordering::Relaxed)
            + get(&stats.rx_dropped_reset)
            + backend.waiting() as u64;
        assert_eq!(
            pushed, accounted,
            "virtio_net: {pushed} frames reached the backend, {accounted} are delivered, \
             dropped or waiting"
        );
    }
    fds.finish();
}

fn tx_frame(guest: &mut Guest, inp: &mut Input) {
    let len = match inp.below(4) {
        0 => NET_HDR_LEN + usize::from(inp.u8()),
        1 => NET_HDR_LEN + 1514,
        2 => usize::from(inp.u16()),
        _ => Guest::len(inp) as usize,
    };
    let pieces = 1 + usize::from(inp.below(3));
    let flip = inp.below(8) == 0;
    let indirect = inp.below(4) == 0;
    let mut bufs = Vec::new();
    let each = len.div_ceil(pieces).max(1);
    let mut left = len;
    while bufs.len() < pieces {
        let l = each.min(left);
        let addr = if l > 1 << 20 {
            guest.addr(inp, l as u64)
        } else {
            guest.alloc(l as u64)
        };
        bufs.push(Buf {
            addr,
            len: l as u32,
            write: flip && bufs.len() + 1 == pieces,
        });
        left -= l;
    }
    guest.push(TX_QUEUE, &bufs, indirect);
}

fn rx_bufs(guest: &mut Guest, inp: &mut Input) {
    let pieces = 1 + usize::from(inp.below(3));
    let indirect = inp.below(4) == 0;
    let mut bufs = Vec::new();
    for _ in 0..pieces {
        let len = match inp.below(4) {
            0 => (NET_HDR_LEN + 1514) as u32,
            1 => u32::from(inp.u8()),
            2 => 65562,
            _ => Guest::len(inp),
        };
        let write = inp.below(8) != 0;
        let addr = if len > 1 << 20 {
            guest.addr(inp, u64::from(len))
        } else {
            guest.alloc(u64::from(len))
        };
        bufs.push(Buf { addr, len, write });
    }
    guest.push(RX_QUEUE, &bufs, indirect);
}

/// Seed writers mirroring the decoder.
pub mod seed {
    use super::*;

    pub fn header(s: &mut Seed) {
        crate::guest::seed::setup(s, 4, 0);
    }

    /// A 1514-byte frame in `pieces` buffers, readable, direct.
    pub fn tx_frame(s: &mut Seed, pieces: u8) {
        s.u8(TX_FRAME).u8(1).u8(pieces - 1).u8(1).u8(1);
    }

    /// One RX buffer of header + 1514 bytes, writable, direct.
    pub fn rx_buf(s: &mut Seed) {
        s.u8(RX_BUFS).u8(0).u8(1).u8(0).u8(1);
    }

    pub fn host_frame(s: &mut Seed, len: u16, fill: u8) {
        s.u8(HOST_FRAME).u8(2).u16(len).u8(fill);
    }

    pub fn tx(s: &mut Seed) {
        s.u8(TX);
    }

    pub fn rx(s: &mut Seed) {
        s.u8(RX);
    }

    pub fn rx_kick(s: &mut Seed) {
        s.u8(RX_KICK);
    }
}
