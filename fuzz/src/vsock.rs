//! virtio-vsock: the worker and muxer between the guest's RX/TX queues and
//! real Unix sockets on the host side.
//!
//! Each input gets a new device listening on `v.sock` in the scratch
//! directory, with a host service listening on `v.sock_1234` (port 1234),
//! and its in-process connector.
//!
//! Input: queue setup ([`Guest::new`], queues RX, TX, event), then
//! actions: the generic ones, and
//! - `TX_PKT`: a guest packet: CIDs, ports (the service, a closed port,
//!   the host's ephemeral ports, any), op, type, flags, credit fields,
//!   payload; laid out as header + data, one buffer, or split;
//! - `RX_BUFS`: RX chains (header buffer, data buffer of any size);
//! - `TX`, `RX`, `HOST`: the worker handles TX, fills RX, handles host-side
//!   readiness;
//! - `CONNECT`: the connector asks for guest port P; `HYBRID`: a client
//!   connects to `v.sock` and sends `CONNECT P\n` (or anything);
//!   `ACCEPT`: the service accepts a connection the guest made;
//! - `WRITE`, `READ`, `CLOSE`: on one of the host streams;
//! - `RESET`: the device is reset.
//!
//! Checked: the used-ring invariants; TX chains come back with length 0;
//! every packet the device puts on RX is from the host CID to the guest's,
//! a stream packet with a known op and a length that matches the used
//! length; the fd count once the device and every host stream are gone.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use skiff_devices::virtio::test_utils::{activation, read_bytes, Buf};
use skiff_devices::virtio::vsock::{Vsock, VsockWorker, HOST_CID};
use skiff_devices::virtio::{Interrupt, VirtioDevice};

use crate::guest::{tag, Guest, MAX_ACTIONS};
use crate::input::{Input, Seed};
use crate::FdCheck;

pub const TX_PKT: u8 = tag::COMMON;
pub const RX_BUFS: u8 = tag::COMMON + 1;
pub const TX: u8 = tag::COMMON + 2;
pub const RX: u8 = tag::COMMON + 3;
pub const HOST: u8 = tag::COMMON + 4;
pub const CONNECT: u8 = tag::COMMON + 5;
pub const HYBRID: u8 = tag::COMMON + 6;
pub const ACCEPT: u8 = tag::COMMON + 7;
pub const WRITE: u8 = tag::COMMON + 8;
pub const READ: u8 = tag::COMMON + 9;
pub const CLOSE: u8 = tag::COMMON + 10;
pub const RESET: u8 = tag::COMMON + 11;
const TAGS: u8 = tag::COMMON + 12;

pub const GUEST_CID: u64 = 3;
/// The port the host service listens on.
pub const SERVICE_PORT: u32 = 1234;
/// The guest port the seeds' guest listens on.
pub const GUEST_PORT: u32 = 5000;
const EPHEMERAL_START: u32 = 1 << 30;
const HEADER: usize = 44;
const QUEUE_SIZE: u16 = 256;
const MAX_STREAMS: usize = 16;
const RXQ: usize = 0;
const TXQ: usize = 1;

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| crate::scratch("vsock"))
}

struct Host {
    device: Vsock,
    service: UnixListener,
    streams: Vec<UnixStream>,
}

fn data_path(guest: &Guest, device: &Vsock) -> (VsockWorker, Arc<Interrupt>) {
    let queues = (0..3).map(|q| guest.queues[q].active_queue(true)).collect();
    let activation = activation(&guest.mem, device.features(), queues);
    let interrupt = activation.interrupt.clone();
    let worker = device.data_path(activation).expect("vsock data path");
    (worker, interrupt)
}

pub fn run(data: &[u8]) {
    let sock = dir().join("v.sock");
    let service_path = dir().join(format!("v.sock_{SERVICE_PORT}"));
    let fds = FdCheck::start("vsock");
    {
        let _ = std::fs::remove_file(&service_path);
        let service = UnixListener::bind(&service_path).expect("service listener");
        service.set_nonblocking(true).expect("nonblocking");
        let mut host = Host {
            device: Vsock::new(GUEST_CID, &sock).expect("vsock device"),
            service,
            streams: Vec::new(),
        };
        let mut inp = Input::new(data);
        let mut guest = Guest::new(&mut inp, &[QUEUE_SIZE; 3]);
        let (mut w, mut interrupt) = data_path(&guest, &host.device);
        let mut actions = 0;
        while !inp.is_empty() && actions < MAX_ACTIONS {
            actions += 1;
            match inp.below(TAGS) {
                TX_PKT => tx_pkt(&mut guest, &mut inp),
                RX_BUFS => rx_bufs(&mut guest, &mut inp),
                t @ (TX | RX | HOST) => {
                    let before = [guest.bounds(RXQ), guest.bounds(TXQ)];
                    match t {
                        TX => w.process_tx(),
                        RX => w.process_rx(),
                        _ => {
                            w.process_host();
                            w.process_rx();
                        }
                    }
                    check(&mut guest, before);
                }
                CONNECT => {
                    let port = port(&mut inp);
                    if host.streams.len() < MAX_STREAMS {
                        if let Ok(s) = host.device.connector().request(port) {
                            let _ = s.set_nonblocking(true);
                            host.streams.push(s);
                        }
                    }
                }
                HYBRID => {
                    let line = if inp.bool() {
                        format!("CONNECT {}\n", port(&mut inp)).into_bytes()
                    } else {
                        inp.blob(40).to_vec()
                    };
                    if host.streams.len() < MAX_STREAMS {
                        if let Ok(mut s) = UnixStream::connect(&sock) {
                            let _ = s.set_nonblocking(true);
                            let _ = s.write(&line);
                            host.streams.push(s);
                        }
                    }
                }
                ACCEPT => {
                    if host.streams.len() < MAX_STREAMS {
                        if let Ok((s, _)) = host.service.accept() {
                            let _ = s.set_nonblocking(true);
                            host.streams.push(s);
                        }
                    }
                }
                WRITE => {
                    let i = usize::from(inp.u8());
                    let chunk = inp.blob(255).to_vec();
                    let times = 1 + usize::from(inp.u8());
                    if let Some(s) = pick(&mut host.streams, i) {
                        for _ in 0..times {
                            match s.write(&chunk) {
                                Ok(_) => {}
                                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                                Err(_) => break,
                            }
                        }
                    }
                }
                READ => {
                    let i = usize::from(inp.u8());
                    if let Some(s) = pick(&mut host.streams, i) {
                        let mut buf = [0u8; 16 * 1024];
                        for _ in 0..16 {
                            match s.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(_) => {}
                            }
                        }
                    }
                }
                CLOSE => {
                    let i = usize::from(inp.u8());
                    let how = inp.below(3);
                    if !host.streams.is_empty() {
                        let i = i % host.streams.len();
                        match how {
                            0 => drop(host.streams.remove(i)),
                            1 => {
                                let _ = host.streams[i].shutdown(std::net::Shutdown::Write);
                            }
                            _ => {
                                let _ = host.streams[i].shutdown(std::net::Shutdown::Read);
                            }
                        }
                    }
                }
                RESET => {
                    drop(w);
                    for q in 0..3 {
                        guest.reset_queue(q);
                    }
                    (w, interrupt) = data_path(&guest, &host.device);
                }
                t if t < tag::COMMON => guest.common(t, &mut inp),
                _ => unreachable!(),
            }
        }
        if !interrupt.needs_reset() {
            let before = [guest.bounds(RXQ), guest.bounds(TXQ)];
            w.process_tx();
            w.process_host();
            w.process_rx();
            check(&mut guest, before);
        }
        drop(w);
        drop(host);
        let _ = std::fs::remove_file(&service_path);
    }
    fds.finish();
}

fn pick(streams: &mut [UnixStream], i: usize) -> Option<&mut UnixStream> {
    let n = streams.len();
    if n == 0 {
        None
    } else {
        streams.get_mut(i % n)
    }
}

fn check(guest: &mut Guest, before: [crate::guest::Bounds; 2]) {
    let mut before = before;
    crate::guest::Bounds::share_hostility(&mut before);
    let [rx_before, tx_before] = before;
    for u in guest.check_used(TXQ, &tx_before, "vsock TX") {
        assert_eq!(
            u.len, 0,
            "vsock: a TX chain came back with length {}",
            u.len
        );
    }
    let shared = rx_before.shared;
    for u in guest.check_used(RXQ, &rx_before, "vsock RX") {
        if u.len == 0 || shared {
            continue;
        }
        // The header, gathered from the chain's writable buffers as the
        // device found them.
        let now = guest.queues[RXQ].chain(u.id as u16);
        let chain = rx_before.chain(u.id as u16).unwrap_or(&now);
        let mut hdr = Vec::with_capacity(HEADER);
        for d in chain {
            if d.is_write() && hdr.len() < HEADER {
                let n = (HEADER - hdr.len()).min(d.len as usize);
                hdr.extend(read_bytes(&guest.mem, d.addr, n));
            }
        }
        assert!(
            hdr.len() == HEADER,
            "vsock: an RX chain with {} header bytes came back with length {}",
            hdr.len(),
            u.len
        );
        let u64_at = |i: usize| u64::from_le_bytes(hdr[i..i + 8].try_into().unwrap_or_default());
        let u32_at = |i: usize| u32::from_le_bytes(hdr[i..i + 4].try_into().unwrap_or_default());
        let u16_at = |i: usize| u16::from_le_bytes(hdr[i..i + 2].try_into().unwrap_or_default());
        let (src, dst, len, type_, op) = (u64_at(0), u64_at(8), u32_at(24), u16_at(28), u16_at(30));
        crate::trace!(
            "vsock: RX op {op} {}:{} -> {}:{} len {len}",
            src,
            u32_at(16),
            dst,
            u32_at(20)
        );
        assert!(
            src == HOST_CID && dst == GUEST_CID && type_ == 1 && (1..=7).contains(&op),
            "vsock: the device sent the guest a packet {src}->{dst} type {type_} op {op}"
        );
        assert_eq!(
            u.len as usize,
            HEADER + len as usize,
            "vsock: an RX packet of {len} data bytes came back with length {}",
            u.len
        );
    }
}

/// Ports: the service, the seeds' guest port, a closed one, an ephemeral
/// host port, any.
fn port(inp: &mut Input) -> u32 {
    match inp.below(5) {
        0 => SERVICE_PORT,
        1 => GUEST_PORT,
        2 => 4321,
        3 => EPHEMERAL_START + u32::from(inp.below(8)),
        _ => inp.u32(),
    }
}

fn tx_pkt(guest: &mut Guest, inp: &mut Input) {
    let src_cid = if inp.below(16) == 0 {
        inp.u64()
    } else {
        GUEST_CID
    };
    let dst_cid = if inp.below(16) == 0 {
        inp.u64()
    } else {
        HOST_CID
    };
    let src_port = port(inp);
    let dst_port = port(inp);
    let op = match inp.below(9) {
        7 => inp.u16(),
        8 => 5, // RW
        o => u16::from(o) + 1,
    };
    let type_ = if inp.below(16) == 0 { inp.u16() } else { 1 };
    let flags = match inp.below(4) {
        0 => 0,
        1 => 1,
        2 => 3,
        _ => inp.u32(),
    };
    let buf_alloc = match inp.below(4) {
        0 => 256 * 1024,
        1 => 0,
        2 => u32::from(inp.u16()),
        _ => inp.u32(),
    };
    let fwd_cnt = match inp.below(3) {
        0 => 0,
        1 => u32::from(inp.u16()),
        _ => inp.u32(),
    };
    let payload = inp.blob(255).to_vec();
    let repeat = 1 + usize::from(inp.u8() & 0x3f);
    let data = payload.repeat(if payload.is_empty() { 0 } else { repeat });
    let len = if inp.below(16) == 0 {
        inp.u32()
    } else {
        data.len() as u32
    };
    let mut hdr = Vec::with_capacity(HEADER);
    hdr.extend_from_slice(&src_cid.to_le_bytes());
    hdr.extend_from_slice(&dst_cid.to_le_bytes());
    hdr.extend_from_slice(&src_port.to_le_bytes());
    hdr.extend_from_slice(&dst_port.to_le_bytes());
    hdr.extend_from_slice(&len.to_le_bytes());
    hdr.extend_from_slice(&type_.to_le_bytes());
    hdr.extend_from_slice(&op.to_le_bytes());
    hdr.extend_from_slice(&flags.to_le_bytes());
    hdr.extend_from_slice(&buf_alloc.to_le_bytes());
    hdr.extend_from_slice(&fwd_cnt.to_le_bytes());
    let layout = inp.below(4);
    let indirect = inp.below(8) == 0;
    let bufs = match layout {
        // Header and data in one buffer.
        1 => {
            let mut all = hdr.clone();
            all.extend_from_slice(&data);
            let a = guest.put(&all);
            vec![Buf::readable(a, all.len() as u32)]
        }
        // The header split.
        2 => {
            let a = guest.put(&hdr[..20]);
            let b = guest.put(&hdr[20..]);
            let mut v = vec![Buf::readable(a, 20), Buf::readable(b, 24)];
            if !data.is_empty() {
                v.push(Buf::readable(guest.put(&data), data.len() as u32));
            }
            v
        }
        // Data in a buffer of another length than it says.
        3 => {
            let a = guest.put(&hdr);
            let l = Guest::len(inp);
            let b = guest.addr(inp, u64::from(l));
            vec![Buf::readable(a, HEADER as u32), Buf::readable(b, l)]
        }
        _ => {
            let a = guest.put(&hdr);
            let mut v = vec![Buf::readable(a, HEADER as u32)];
            if !data.is_empty() {
                v.push(Buf::readable(guest.put(&data), data.len() as u32));
            }
            v
        }
    };
    guest.push(TXQ, &bufs, indirect);
}

fn rx_bufs(guest: &mut Guest, inp: &mut Input) {
    let n = 1 + inp.below(4);
    for _ in 0..n {
        let shape = inp.below(4);
        let indirect = inp.below(8) == 0;
        let bufs = match shape {
            // Header and data in one buffer.
            1 => {
                let a = guest.alloc(HEADER as u64 + 4096);
                vec![Buf::writable(a, HEADER as u32 + 4096)]
            }
            // Any shape.
            2 => {
                let l1 = u32::from(inp.u8());
                let l2 = Guest::len(inp);
                let w = inp.u8();
                let a = guest.alloc(u64::from(l1));
                let b = guest.addr(inp, u64::from(l2));
                vec![
                    Buf {
                        addr: a,
                        len: l1,
                        write: w & 1 != 0,
                    },
                    Buf {
                        addr: b,
                        len: l2,
                        write: w & 2 != 0,
                    },
                ]
            }
            // A small data buffer.
            3 => {
                let l = u32::from(inp.u8());
                let a = guest.alloc(HEADER as u64);
                let b = guest.alloc(u64::from(l));
                vec![Buf::writable(a, HEADER as u32), Buf::writable(b, l)]
            }
            _ => {
                let a = guest.alloc(HEADER as u64);
                let b = guest.alloc(4096);
                vec![Buf::writable(a, HEADER as u32), Buf::writable(b, 4096)]
            }
        };
        guest.push(RXQ, &bufs, indirect);
    }
}

/// Seed writers mirroring the decoder.
pub mod seed {
    use super::*;

    pub fn header(s: &mut Seed) {
        crate::guest::seed::setup(s, 6, 0);
    }

    /// Port selector: 0 service, 1 the guest port, 2 closed, 3 + k the
    /// k-th ephemeral host port.
    pub fn port(s: &mut Seed, which: u8) {
        if which >= 3 {
            s.u8(3).u8(which - 3);
        } else {
            s.u8(which);
        }
    }

    /// A stream packet from the guest: `op` (1..=7), ports by selector,
    /// `data` once, in the usual header + data layout.
    pub fn tx_pkt(s: &mut Seed, op: u8, src: u8, dst: u8, data: &[u8]) {
        s.u8(TX_PKT).u8(1).u8(1);
        port(s, src);
        port(s, dst);
        s.u8(op - 1).u8(1).u8(0).u8(0).u8(0);
        s.blob(data).u8(0).u8(1).u8(0).u8(1);
    }

    /// `n` RX chains of a header and 4 KiB.
    pub fn rx_bufs(s: &mut Seed, n: u8) {
        s.u8(RX_BUFS).u8(n - 1);
        for _ in 0..n {
            s.u8(0).u8(1);
        }
    }

    pub fn connect(s: &mut Seed, which: u8) {
        s.u8(CONNECT);
        port(s, which);
    }

    pub fn hybrid(s: &mut Seed, which: u8) {
        s.u8(HYBRID).u8(1);
        port(s, which);
    }

    pub fn accept(s: &mut Seed) {
        s.u8(ACCEPT);
    }

    pub fn write(s: &mut Seed, stream: u8, data: &[u8], times: u8) {
        s.u8(WRITE).u8(stream).blob(data).u8(times - 1);
    }

    pub fn read(s: &mut Seed, stream: u8) {
        s.u8(READ).u8(stream);
    }

    pub fn close(s: &mut Seed, stream: u8) {
        s.u8(CLOSE).u8(stream).u8(0);
    }

    pub fn step(s: &mut Seed, what: u8) {
        s.u8(what);
    }
}
