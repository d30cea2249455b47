//! Device-level tests: hand-built virtqueues in test memory, real Unix
//! sockets on the host side.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::connection::BUF_ALLOC;
use super::packet::{op, Header, HEADER_SIZE, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};
use super::{await_established, Vsock, VsockWorker, HOST_CID};
use crate::virtio::test_utils::{
    activation, guest_memory, Buf, Desc, RingLayout, SplitQueueDriver, Used, F_NEXT,
};
use crate::virtio::{ActiveQueue, VirtioDevice, TYPE_VSOCK};

const GUEST_CID: u64 = 3;
const QSIZE: u16 = 256;
const RXQ: u64 = 0x0;
const TXQ: u64 = 0x4000;
const EVQ: u64 = 0x8000;
const TX_BUFS: u64 = 0x10_0000;
const TX_SLOT: u64 = 0x2_0000;
const RX_BUFS: u64 = 0xa0_0000;
const RX_SLOT: u64 = 0x2000;
const RX_DATA: u32 = 4096;
const SLOTS: u16 = 64;
const MEM_SIZE: usize = 0x100_0000;

fn decode(b: &[u8]) -> Header {
    let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
    let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
    let u16_at = |i: usize| u16::from_le_bytes(b[i..i + 2].try_into().unwrap());
    Header {
        src_cid: u64_at(0),
        dst_cid: u64_at(8),
        src_port: u32_at(16),
        dst_port: u32_at(20),
        len: u32_at(24),
        type_: u16_at(28),
        op: u16_at(30),
        flags: u32_at(32),
        buf_alloc: u32_at(36),
        fwd_cnt: u32_at(40),
    }
}

/// A guest packet from `src_port` to host `dst_port`.
fn guest_hdr(op: u16, src_port: u32, dst_port: u32) -> Header {
    Header {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        type_: TYPE_STREAM,
        op,
        buf_alloc: 64 * 1024,
        ..Header::default()
    }
}

/// Each test queue's rings: descriptors at base, then the avail and used
/// rings a page apart.
fn queue_at(mem: &GuestMemoryMmap, base: u64) -> SplitQueueDriver {
    SplitQueueDriver::new(mem, RingLayout::paged(base, QSIZE))
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("skiff-vsock-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

struct Harness {
    mem: GuestMemoryMmap,
    rx: SplitQueueDriver,
    tx: SplitQueueDriver,
    worker: VsockWorker,
    device: Vsock,
    dir: PathBuf,
    tx_posted: u16,
    rx_posted: u16,
}

impl Harness {
    fn new(name: &str) -> Self {
        let dir = temp_dir(name);
        let mem = guest_memory(MEM_SIZE);
        let device = Vsock::new(GUEST_CID, &dir.join("v.sock")).unwrap();
        let drivers = [RXQ, TXQ, EVQ].map(|base| queue_at(&mem, base));
        let queues = drivers.iter().map(|d| d.active_queue(false)).collect();
        let worker = device
            .data_path(activation(&mem, device.features(), queues))
            .unwrap();
        let [rx, tx, _] = drivers;
        Self {
            mem,
            rx,
            tx,
            worker,
            device,
            dir,
            tx_posted: 0,
            rx_posted: 0,
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("v.sock")
    }

    fn service(&self, port: u32) -> UnixListener {
        UnixListener::bind(format!("{}_{port}", self.socket().display())).unwrap()
    }

    /// Posts a raw TX chain and runs the device; returns the TX used len.
    fn send_descs(&mut self, descs: &[Buf]) {
        let first = (self.tx_posted % SLOTS) * 4;
        self.tx_posted = self.tx_posted.wrapping_add(1);
        let head = self.tx.add_chain_at(first, descs);
        self.tx.offer(head);
        self.pump();
        let used = self.tx.take_used();
        assert_eq!(used.len(), 1, "TX chain not returned");
    }

    fn tx_buf(&self) -> u64 {
        TX_BUFS + u64::from(self.tx_posted % SLOTS) * TX_SLOT
    }

    /// Sends a well-formed packet: header descriptor, then data.
    fn send(&mut self, mut hdr: Header, data: &[u8]) {
        hdr.len = data.len() as u32;
        let addr = self.tx_buf();
        self.mem
            .write_slice(&hdr.encode(), GuestAddress(addr))
            .unwrap();
        if data.is_empty() {
            self.send_descs(&[Buf::readable(addr, HEADER_SIZE as u32)]);
        } else {
            self.mem
                .write_slice(data, GuestAddress(addr + 0x100))
                .unwrap();
            self.send_descs(&[
                Buf::readable(addr, HEADER_SIZE as u32),
                Buf::readable(addr + 0x100, data.len() as u32),
            ]);
        }
    }

    /// Gives the device `n` RX buffers (header + 4 KiB data).
    fn give_rx(&mut self, n: u16) {
        for _ in 0..n {
            let slot = self.rx_posted % SLOTS;
            let addr = RX_BUFS + u64::from(slot) * RX_SLOT;
            let head = self.rx.add_chain_at(
                slot * 2,
                &[
                    Buf::writable(addr, HEADER_SIZE as u32),
                    Buf::writable(addr + 0x100, RX_DATA),
                ],
            );
            self.rx.offer(head);
            self.rx_posted = self.rx_posted.wrapping_add(1);
        }
        self.pump();
    }

    /// Runs the device as its thread would after any event.
    fn pump(&mut self) {
        self.worker.process_host();
        self.worker.process_tx();
        self.worker.process_rx();
    }

    /// Packets the device put in RX buffers since the last call.
    fn recv(&mut self) -> Vec<(Header, Vec<u8>)> {
        self.pump();
        self.rx
            .take_used()
            .into_iter()
            .filter(|u| u.len > 0)
            .map(|Used { id, len }| {
                let addr = RX_BUFS + u64::from(id / 2) * RX_SLOT;
                let mut raw = [0u8; HEADER_SIZE];
                self.mem.read_slice(&mut raw, GuestAddress(addr)).unwrap();
                let hdr = decode(&raw);
                assert_eq!(len, HEADER_SIZE as u32 + hdr.len);
                let mut data = vec![0u8; hdr.len as usize];
                self.mem
                    .read_slice(&mut data, GuestAddress(addr + 0x100))
                    .unwrap();
                (hdr, data)
            })
            .collect()
    }

    fn recv_one(&mut self) -> Header {
        let got = self.recv();
        assert_eq!(got.len(), 1, "want one packet, got {got:?}");
        got[0].0
    }

    /// A guest-initiated connection from guest port `gport` to host `port`.
    fn guest_connect(&mut self, gport: u32, port: u32) -> (UnixListener, UnixStream) {
        let listener = self.service(port);
        self.send(guest_hdr(op::REQUEST, gport, port), &[]);
        let resp = self.recv_one();
        assert_eq!(
            (
                resp.op,
                resp.src_port,
                resp.dst_port,
                resp.dst_cid,
                resp.src_cid
            ),
            (op::RESPONSE, port, gport, GUEST_CID, HOST_CID)
        );
        assert_eq!(resp.buf_alloc, BUF_ALLOC);
        let (stream, _) = listener.accept().unwrap();
        (listener, stream)
    }

    /// Reads everything the guest got for one connection as data.
    fn guest_data(&mut self) -> Vec<u8> {
        self.recv()
            .into_iter()
            .filter(|(h, _)| h.op == op::RW)
            .flat_map(|(_, d)| d)
            .collect()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn read_exact_timeout(stream: &mut UnixStream, n: usize) -> Vec<u8> {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = vec![0u8; n];
    stream.read_exact(&mut buf).unwrap();
    buf
}

#[test]
fn config_space_holds_the_cid() {
    let h = Harness::new("config");
    assert_eq!(h.device.device_type(), TYPE_VSOCK);
    assert_eq!(h.device.queue_max_sizes().len(), 3);
    let mut cid = [0u8; 8];
    h.device.read_config(0, &mut cid);
    assert_eq!(u64::from_le_bytes(cid), GUEST_CID);
    let mut past = [0xffu8; 4];
    h.device.read_config(8, &mut past);
    assert_eq!(past, [0; 4]);
}

#[test]
fn guest_connects_to_a_host_listener_and_data_flows_both_ways() {
    let mut h = Harness::new("guest-connect");
    h.give_rx(8);
    let (_l, mut host) = h.guest_connect(1234, 5000);

    h.send(guest_hdr(op::RW, 1234, 5000), b"hello host");
    assert_eq!(read_exact_timeout(&mut host, 10), b"hello host");

    host.write_all(b"hello guest").unwrap();
    let got = h.recv();
    assert_eq!(got.len(), 1);
    let (hdr, data) = &got[0];
    assert_eq!((hdr.op, hdr.src_port, hdr.dst_port), (op::RW, 5000, 1234));
    assert_eq!(data, b"hello guest");

    // The host closes: the guest hears SHUTDOWN(send); the guest closes
    // too, and the device answers RST and forgets the connection.
    drop(host);
    let hdr = h.recv_one();
    assert_eq!((hdr.op, hdr.flags), (op::SHUTDOWN, SHUTDOWN_SEND));
    let mut bye = guest_hdr(op::SHUTDOWN, 1234, 5000);
    bye.flags = SHUTDOWN_SEND | SHUTDOWN_RCV;
    h.send(bye, &[]);
    assert_eq!(h.recv_one().op, op::RST);
    assert_eq!(h.worker.connection_count(), 0);
}

#[test]
fn guest_close_flushes_then_resets() {
    let mut h = Harness::new("guest-close");
    h.give_rx(8);
    let (_l, mut host) = h.guest_connect(1, 6000);
    h.send(guest_hdr(op::RW, 1, 6000), b"last words");
    let mut bye = guest_hdr(op::SHUTDOWN, 1, 6000);
    bye.flags = SHUTDOWN_SEND | SHUTDOWN_RCV;
    h.send(bye, &[]);
    assert_eq!(h.recv_one().op, op::RST);
    let mut all = Vec::new();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    host.read_to_end(&mut all).unwrap();
    assert_eq!(all, b"last words");
    assert_eq!(h.worker.connection_count(), 0);
}

#[test]
fn host_connects_through_the_hybrid_socket() {
    let mut h = Harness::new("hybrid");
    h.give_rx(8);
    let mut host = UnixStream::connect(h.socket()).unwrap();
    // Data right after the line must reach the guest, not the parser.
    host.write_all(b"CONNECT 52\nearly").unwrap();
    let req = h.recv_one();
    assert_eq!(
        (req.op, req.dst_port, req.dst_cid),
        (op::REQUEST, 52, GUEST_CID)
    );
    assert!(req.src_port >= 1 << 30);
    let mut resp = guest_hdr(op::RESPONSE, 52, req.src_port);
    resp.buf_alloc = 1 << 20;
    h.send(resp, &[]);
    assert_eq!(
        await_established(&host, Duration::from_secs(5)).unwrap(),
        req.src_port
    );
    assert_eq!(h.guest_data(), b"early");
    h.send(guest_hdr(op::RW, 52, req.src_port), b"pong");
    assert_eq!(read_exact_timeout(&mut host, 4), b"pong");
}

#[test]
fn bad_connect_lines_are_closed() {
    let mut h = Harness::new("bad-line");
    let mut host = UnixStream::connect(h.socket()).unwrap();
    host.write_all(b"HELLO 52\n").unwrap();
    h.pump();
    let mut buf = [0u8; 8];
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(host.read(&mut buf).unwrap(), 0);
    assert_eq!(h.worker.connection_count(), 0);
}

#[test]
fn host_connects_through_the_in_process_connector() {
    let mut h = Harness::new("connector");
    h.give_rx(8);
    let connector = h.device.connector();

    // Accepted.
    let mut stream = connector.request(1024).unwrap();
    let req = h.recv_one();
    assert_eq!((req.op, req.dst_port), (op::REQUEST, 1024));
    h.send(guest_hdr(op::RESPONSE, 1024, req.src_port), &[]);
    assert_eq!(
        await_established(&stream, Duration::from_secs(5)).unwrap(),
        req.src_port
    );
    stream.write_all(b"ping").unwrap();
    assert_eq!(h.guest_data(), b"ping");
    h.send(guest_hdr(op::RW, 1024, req.src_port), b"pong");
    assert_eq!(read_exact_timeout(&mut stream, 4), b"pong");

    // Refused: the guest answers RST.
    let refused = connector.request(1025).unwrap();
    let req = h.recv_one();
    h.send(guest_hdr(op::RST, 1025, req.src_port), &[]);
    let err = await_established(&refused, Duration::from_secs(5)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);

    // No answer at all (a guest without a driver): a timeout, not a hang.
    let silent = connector.request(1026).unwrap();
    let err = await_established(&silent, Duration::from_millis(50)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TimedOut);
    // The caller gives up; the device drops the request (quietly if the
    // REQUEST had not gone out yet).
    drop(silent);
    for (hdr, _) in h.recv() {
        assert_eq!(hdr.dst_port, 1026);
    }
    h.pump();
    assert_eq!(h.worker.connection_count(), 1);
}

#[test]
fn caller_giving_up_after_request_sent_resets_the_guest() {
    let mut h = Harness::new("give-up");
    h.give_rx(8);
    let stream = h.device.connector().request(7).unwrap();
    assert_eq!(h.recv_one().op, op::REQUEST);
    drop(stream);
    let rst = h.recv_one();
    assert_eq!((rst.op, rst.dst_port), (op::RST, 7));
    assert_eq!(h.worker.connection_count(), 0);
}

#[test]
fn unknown_ports_and_connections_get_rst() {
    let mut h = Harness::new("unknown");
    h.give_rx(8);
    // Nobody listens on <socket>_7000.
    h.send(guest_hdr(op::REQUEST, 10, 7000), &[]);
    let rst = h.recv_one();
    assert_eq!(
        (rst.op, rst.src_port, rst.dst_port, rst.dst_cid),
        (op::RST, 7000, 10, GUEST_CID)
    );
    // Data, shutdown and credit packets for no connection.
    for o in [op::RW, op::SHUTDOWN, op::CREDIT_UPDATE, op::RESPONSE] {
        h.send(guest_hdr(o, 11, 7001), b"x");
        assert_eq!(h.recv_one().op, op::RST, "op {o}");
    }
    // An RST for no connection is not answered.
    h.send(guest_hdr(op::RST, 11, 7001), &[]);
    assert!(h.recv().is_empty());
}

#[test]
fn host_to_guest_data_respects_the_guest_credit() {
    let mut h = Harness::new("credit-rx");
    h.give_rx(1);
    let (_l, mut host) = h.guest_connect(1, 5001);
    // The guest offers only 8 KiB.
    let mut credit = guest_hdr(op::CREDIT_UPDATE, 1, 5001);
    credit.buf_alloc = 8192;
    h.send(credit, &[]);
    host.write_all(&[7u8; 20000]).unwrap();
    h.give_rx(16);
    assert_eq!(h.guest_data().len(), 8192);
    assert!(h.recv().is_empty(), "sent beyond credit");
    // The guest consumed 8 KiB: 8 KiB more may come.
    credit.fwd_cnt = 8192;
    h.send(credit, &[]);
    assert_eq!(h.guest_data().len(), 8192);
    // A guest claiming to have consumed more than it got gets nothing.
    credit.fwd_cnt = 1 << 30;
    h.send(credit, &[]);
    assert!(h.guest_data().is_empty());
    credit.fwd_cnt = 16384;
    h.send(credit, &[]);
    assert_eq!(h.guest_data().len(), 20000 - 16384);
}

#[test]
fn guest_to_host_data_is_bounded_by_our_credit() {
    let mut h = Harness::new("credit-tx");
    h.give_rx(32);
    let (_l, mut host) = h.guest_connect(1, 5002);
    // A well-behaved guest sends while it has credit; the host reads
    // nothing, so the device must buffer it, up to what it advertised.
    let mut peer_fwd = 0u32;
    let mut sent = 0u32;
    let chunk = [1u8; 16384];
    let mut rounds = 0;
    loop {
        let credit = BUF_ALLOC - (sent - peer_fwd);
        if credit == 0 {
            break;
        }
        let n = credit.min(chunk.len() as u32) as usize;
        h.send(guest_hdr(op::RW, 1, 5002), &chunk[..n]);
        sent += n as u32;
        for (hdr, _) in h.recv() {
            assert_ne!(hdr.op, op::RST, "reset within credit");
            peer_fwd = hdr.fwd_cnt;
        }
        h.give_rx(4);
        rounds += 1;
        assert!(rounds < 10_000, "credit never ran out");
    }
    assert_eq!(h.worker.connection_count(), 1);
    // A guest that ignores its credit: the device may still have room it
    // has not announced (under the update threshold), then resets.
    let mut extra = 0;
    while h.worker.connection_count() == 1 {
        h.send(guest_hdr(op::RW, 1, 5002), &chunk);
        extra += chunk.len() as u32;
        assert!(extra <= BUF_ALLOC / 4 + chunk.len() as u32, "no reset");
    }
    assert!(h.recv().iter().any(|(hdr, _)| hdr.op == op::RST));
    // The host still gets whatever was accepted before, then EOF.
    let mut all = Vec::new();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = host.read_to_end(&mut all);
    assert!(all.len() <= sent as usize);
}

#[test]
fn slow_host_gets_data_and_guest_gets_credit_back() {
    let mut h = Harness::new("slow-host");
    h.give_rx(32);
    let (_l, mut host) = h.guest_connect(1, 5003);
    let total = 600 * 1024;
    let mut sent = 0usize;
    let mut peer_fwd = 0u32;
    let mut received = Vec::new();
    host.set_nonblocking(true).unwrap();
    while received.len() < total {
        let credit = (BUF_ALLOC - (sent as u32 - peer_fwd)) as usize;
        let n = credit.min(total - sent).min(32768);
        if n > 0 {
            let data: Vec<u8> = (sent..sent + n).map(|i| i as u8).collect();
            h.send(guest_hdr(op::RW, 1, 5003), &data);
            sent += n;
        }
        // The host reads a little at a time.
        let mut buf = [0u8; 8192];
        if let Ok(k) = host.read(&mut buf) {
            received.extend_from_slice(&buf[..k]);
        }
        for (hdr, _) in h.recv() {
            assert_ne!(hdr.op, op::RST);
            peer_fwd = hdr.fwd_cnt;
        }
        h.give_rx(2);
    }
    assert!(received.iter().enumerate().all(|(i, &b)| b == i as u8));
}

/// Malformed TX chains: each is returned to the guest and dropped (or
/// answered with RST) and the device keeps serving.
#[test]
fn malformed_packets_never_break_the_device() {
    let mut h = Harness::new("malformed");
    h.give_rx(32);
    let (_l, mut host) = h.guest_connect(1, 5004);
    let good = guest_hdr(op::RW, 1, 5004);

    let write_hdr = |h: &Harness, hdr: Header| {
        let addr = h.tx_buf();
        h.mem
            .write_slice(&hdr.encode(), GuestAddress(addr))
            .unwrap();
        addr
    };
    let with_len = |len| Header { len, ..good };

    // Header descriptor shorter than a header.
    let a = write_hdr(&h, with_len(0));
    h.send_descs(&[Buf::readable(a, 10)]);
    // Header in a device-writable descriptor (wrong direction).
    let a = write_hdr(&h, with_len(0));
    h.send_descs(&[Buf::writable(a, HEADER_SIZE as u32)]);
    // Data in a device-writable descriptor.
    let a = write_hdr(&h, with_len(4));
    h.send_descs(&[
        Buf::readable(a, HEADER_SIZE as u32),
        Buf::writable(a + 0x100, 4),
    ]);
    // len beyond the data descriptor.
    let a = write_hdr(&h, with_len(100));
    h.send_descs(&[
        Buf::readable(a, HEADER_SIZE as u32),
        Buf::readable(a + 0x100, 50),
    ]);
    // len != the chain's space (more space than len).
    let a = write_hdr(&h, with_len(4));
    h.send_descs(&[
        Buf::readable(a, HEADER_SIZE as u32),
        Buf::readable(a + 0x100, 50),
    ]);
    // len beyond the largest packet.
    let a = write_hdr(&h, with_len(70_000));
    h.send_descs(&[
        Buf::readable(a, HEADER_SIZE as u32),
        Buf::readable(a + 0x100, 70_000),
    ]);
    // Header outside guest memory; data outside guest memory.
    h.send_descs(&[Buf::readable(MEM_SIZE as u64 + 0x1000, HEADER_SIZE as u32)]);
    let a = write_hdr(&h, with_len(4));
    h.send_descs(&[
        Buf::readable(a, HEADER_SIZE as u32),
        Buf::readable(u64::MAX - 2, 4),
    ]);
    // Data descriptor missing.
    let a = write_hdr(&h, with_len(4));
    h.send_descs(&[Buf::readable(a, HEADER_SIZE as u32)]);
    // Zero-length descriptors.
    h.send_descs(&[Buf::readable(a, 0)]);
    // A descriptor loop: the data descriptor points back at the header.
    let a = write_hdr(&h, with_len(4));
    let first = (h.tx_posted % SLOTS) * 4;
    h.tx_posted += 1;
    h.tx.write_desc(first, Desc::new(a, HEADER_SIZE as u32, F_NEXT, first + 1));
    h.tx.write_desc(first + 1, Desc::new(a + 0x100, 4, F_NEXT, first));
    h.tx.offer(first);
    h.pump();
    assert_eq!(h.tx.take_used().len(), 1);
    // Wrong source and destination CIDs: dropped silently.
    h.send(
        Header {
            src_cid: 99,
            ..good
        },
        b"nope",
    );
    h.send(Header { dst_cid: 7, ..good }, b"nope");
    assert!(h.recv().is_empty(), "something answered a malformed packet");
    assert_eq!(h.worker.connection_count(), 1);

    // Unknown op or type on an unknown port: RST.
    h.send(
        Header {
            op: 99,
            dst_port: 9,
            ..good
        },
        &[],
    );
    assert_eq!(h.recv_one().op, op::RST);
    h.send(
        Header {
            type_: 2,
            dst_port: 9,
            ..good
        },
        &[],
    );
    assert_eq!(h.recv_one().op, op::RST);

    // The connection still works.
    h.send(good, b"still here");
    assert_eq!(read_exact_timeout(&mut host, 10), b"still here");
    // Unknown op on the live connection resets it.
    h.send(Header { op: 42, ..good }, &[]);
    assert_eq!(h.recv_one().op, op::RST);
    assert_eq!(h.worker.connection_count(), 0);

    // And new connections work.
    let (_l2, mut host2) = h.guest_connect(2, 5005);
    h.send(guest_hdr(op::RW, 2, 5005), b"ok");
    assert_eq!(read_exact_timeout(&mut host2, 2), b"ok");
}

#[test]
fn malformed_rx_buffers_are_returned_unused() {
    let mut h = Harness::new("bad-rx");
    // Read-only RX buffers, then a short one, then a good one.
    let addr = RX_BUFS;
    let head = h.rx.add_chain_at(
        0,
        &[
            Buf::readable(addr, HEADER_SIZE as u32),
            Buf::readable(addr + 0x100, 64),
        ],
    );
    h.rx.offer(head);
    let head = h.rx.add_chain_at(2, &[Buf::writable(addr + RX_SLOT, 8)]);
    h.rx.offer(head);
    h.rx_posted = 2;
    h.send(guest_hdr(op::REQUEST, 10, 7777), &[]);
    let used = h.rx.take_used();
    assert_eq!(used, vec![(0, 0), (2, 0)]);
    h.give_rx(1);
    assert_eq!(h.recv_one().op, op::RST);
}

#[test]
fn duplicate_request_resets_the_connection() {
    let mut h = Harness::new("dup");
    h.give_rx(8);
    let (_l, mut host) = h.guest_connect(1, 5006);
    h.send(guest_hdr(op::REQUEST, 1, 5006), &[]);
    assert_eq!(h.recv_one().op, op::RST);
    let mut buf = [0u8; 1];
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(host.read(&mut buf).unwrap(), 0);
}

#[test]
fn reset_drops_connections_and_drop_removes_the_socket() {
    let dir = temp_dir("lifecycle");
    let path = dir.join("v.sock");
    let mem = guest_memory(MEM_SIZE);
    let mut drivers = [RXQ, TXQ, EVQ].map(|base| queue_at(&mem, base));
    let mut device = Vsock::new(GUEST_CID, &path).unwrap();
    assert!(Vsock::new(GUEST_CID, &path).is_err(), "socket in use");
    let service = UnixListener::bind(format!("{}_5000", path.display())).unwrap();
    // A REQUEST waiting on the TX queue.
    let hdr = guest_hdr(op::REQUEST, 1, 5000);
    mem.write_slice(&hdr.encode(), GuestAddress(TX_BUFS))
        .unwrap();
    let head = drivers[1].add_chain_at(0, &[Buf::readable(TX_BUFS, HEADER_SIZE as u32)]);
    drivers[1].offer(head);
    for round in 0..2 {
        let notify: Vec<EventFd> = (0..3)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
            .collect();
        let queues = [RXQ, TXQ, EVQ]
            .iter()
            .zip(&drivers)
            .zip(&notify)
            .map(|((&base, d), evt)| {
                let mut queue = d.queue();
                if round == 1 && base == TXQ {
                    queue.set_next_avail(1);
                }
                ActiveQueue {
                    queue,
                    notify: evt.try_clone().unwrap(),
                }
            })
            .collect();
        device
            .activate(activation(&mem, device.features(), queues))
            .unwrap();
        if round == 0 {
            notify[1].write(1).unwrap();
            let (mut host, _) = service.accept().unwrap();
            device.reset();
            let mut buf = [0u8; 1];
            host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            assert_eq!(host.read(&mut buf).unwrap(), 0, "connection survived reset");
        } else {
            // After a reset the device starts again, socket still there.
            let mut host = UnixStream::connect(&path).unwrap();
            host.write_all(b"CONNECT 1\n").unwrap();
        }
    }
    drop(device);
    assert!(!path.exists(), "socket file left behind");
    drop(service);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn paths_are_checked_before_anything_is_created() {
    let dir = temp_dir("paths");
    let file = dir.join("plain");
    std::fs::write(&file, b"").unwrap();
    let err = Vsock::new(GUEST_CID, &file).err().unwrap().to_string();
    assert!(err.contains("not a socket"), "{err}");
    let long = dir.join("x".repeat(120));
    assert!(Vsock::new(GUEST_CID, &long).is_err());
    let missing = dir.join("no/such/dir/v.sock");
    let err = Vsock::new(GUEST_CID, &missing).err().unwrap().to_string();
    assert!(err.contains("no/such/dir"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_resumed_device_tells_the_driver_its_connections_are_gone() {
    let dir = temp_dir("resumed");
    let mem = guest_memory(MEM_SIZE);
    let device = Vsock::new(GUEST_CID, &dir.join("v.sock")).unwrap();
    let mut drivers = [RXQ, TXQ, EVQ].map(|base| queue_at(&mem, base));
    // A driver gives event buffers at probe; one is enough.
    let event_buf = 0x30_0000;
    drivers[2].push(&[Buf::writable(event_buf, 8)]);
    crate::virtio::test_utils::write_bytes(&mem, event_buf, &[0xff; 8]);

    let fresh = drivers.iter().map(|d| d.active_queue(false)).collect();
    let worker = device
        .data_path(activation(&mem, device.features(), fresh))
        .unwrap();
    assert_eq!(drivers[2].used_idx(), 0, "a fresh device sends no event");
    drop(worker);

    let queues = drivers.iter().map(|d| d.active_queue(false)).collect();
    let resumed = crate::virtio::Activation {
        resumed: true,
        ..activation(&mem, device.features(), queues)
    };
    let _worker = device.data_path(resumed).unwrap();
    assert_eq!(drivers[2].used_entry(0), (0, 4));
    let event = crate::virtio::test_utils::read_bytes(&mem, event_buf, 8);
    assert_eq!(event[..4], 0u32.to_le_bytes(), "TRANSPORT_RESET is event 0");
    assert_eq!(event[4..], [0xff; 4], "nothing written past the event");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_resumed_device_waits_for_an_event_buffer() {
    let dir = temp_dir("resumed-wait");
    let mem = guest_memory(MEM_SIZE);
    let device = Vsock::new(GUEST_CID, &dir.join("v.sock")).unwrap();
    let mut drivers = [RXQ, TXQ, EVQ].map(|base| queue_at(&mem, base));
    let queues = drivers.iter().map(|d| d.active_queue(false)).collect();
    let resumed = crate::virtio::Activation {
        resumed: true,
        ..activation(&mem, device.features(), queues)
    };
    let mut worker = device.data_path(resumed).unwrap();
    assert_eq!(drivers[2].used_idx(), 0);
    drivers[2].push(&[Buf::writable(0x30_0000, 4)]);
    worker.process_event();
    assert_eq!(drivers[2].used_entry(0), (0, 4));
    // Once only.
    drivers[2].push(&[Buf::writable(0x30_1000, 4)]);
    worker.process_event();
    assert_eq!(drivers[2].used_idx(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}
