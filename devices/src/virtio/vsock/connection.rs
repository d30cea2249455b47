//! One vsock stream between a guest port and a host Unix stream: its state
//! machine, credit accounting both ways and bounded host-bound buffer.
//!
//! Flow control is the virtio one: each side advertises `buf_alloc` (its
//! receive buffer) and `fwd_cnt` (bytes it has consumed), and a sender
//! keeps `sent - peer_fwd_cnt <= peer_buf_alloc`. Towards the guest we read
//! from the host stream only as much as the guest's credit allows, so data
//! waits in the host socket (and the host writer blocks) instead of here.
//! Towards the host we write straight to the stream; what the stream
//! cannot take waits in [`TxBuf`], which the credit we advertise bounds to
//! [`BUF_ALLOC`]: a guest that sends more is reset.

use std::io::{self, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;

use vm_memory::bitmap::BitmapSlice;
use vm_memory::{ReadVolatile, VolatileMemoryError, VolatileSlice, WriteVolatile};

use super::packet::{op, Header, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};
use super::HOST_CID;

/// Our receive buffer per connection, as advertised to the guest.
pub(crate) const BUF_ALLOC: u32 = 256 * 1024;
/// Tell the guest about freed space once this much is unannounced, so its
/// view of our buffer never drops below `BUF_ALLOC - CREDIT_THRESHOLD`
/// while the host keeps up.
const CREDIT_THRESHOLD: u32 = BUF_ALLOC / 4;

/// Control packets waiting to go to the guest (bit set).
mod pending {
    pub const REQUEST: u8 = 1;
    pub const RESPONSE: u8 = 2;
    pub const RST: u8 = 4;
    pub const SHUTDOWN: u8 = 8;
    pub const CREDIT_UPDATE: u8 = 16;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    /// The host asked for the connection; waiting for the guest's RESPONSE.
    LocalInit,
    Established,
    /// Being torn down: the host stream is shut, an RST is due to the guest.
    Reset,
}

/// What the muxer must do after a packet or host event.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Keep,
    /// Forget the connection now, sending nothing.
    Drop,
}

/// Bytes from the guest the host stream has not taken yet. The credit we
/// advertise bounds what is buffered to [`BUF_ALLOC`]; the storage is
/// bounded too: consumed bytes are dropped from the front before more are
/// appended, so a connection that keeps a little buffered while streaming
/// forever never grows its `Vec` past about twice the credit.
#[derive(Default)]
struct TxBuf {
    data: Vec<u8>,
    start: usize,
}

impl TxBuf {
    fn len(&self) -> usize {
        self.data.len() - self.start
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn push<B: BitmapSlice>(&mut self, src: &VolatileSlice<'_, B>) {
        if self.start > 0 {
            // Compact: at most BUF_ALLOC bytes move, once per push after a
            // partial write, far less than the host write that follows.
            self.data.drain(..self.start);
            self.start = 0;
        }
        let at = self.data.len();
        self.data.resize(at + src.len(), 0);
        src.copy_to(&mut self.data[at..]);
    }

    fn front(&self) -> &[u8] {
        &self.data[self.start..]
    }

    fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.data.len());
        if self.is_empty() {
            // Give the memory back: a slow host should not pin 256 KiB per
            // idle connection.
            self.data = Vec::new();
            self.start = 0;
        }
    }

    /// Bytes of storage held, for the bound's test.
    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.data.capacity()
    }
}

pub(crate) struct Connection {
    stream: UnixStream,
    pub token: u64,
    pub local_port: u32,
    pub peer_port: u32,
    /// The local port was allocated for this connection (host-initiated).
    pub ephemeral: bool,
    pub state: State,
    /// In the muxer's RX schedule.
    pub queued: bool,
    pending: u8,
    /// The host stream may have data (edge-triggered: true until EAGAIN).
    readable: bool,
    host_eof: bool,
    guest_shut_send: bool,
    guest_shut_recv: bool,
    write_shut: bool,
    // Towards the guest.
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    rx_cnt: u32,
    // Towards the host.
    fwd_cnt: u32,
    last_fwd_cnt_sent: u32,
    tx_buf: TxBuf,
}

fn volatile_io(e: VolatileMemoryError) -> io::Error {
    match e {
        VolatileMemoryError::IOError(e) => e,
        other => io::Error::other(other),
    }
}

impl Connection {
    fn new(stream: UnixStream, token: u64, local_port: u32, peer_port: u32, state: State) -> Self {
        Self {
            stream,
            token,
            local_port,
            peer_port,
            ephemeral: false,
            state,
            queued: false,
            pending: 0,
            readable: true,
            host_eof: false,
            guest_shut_send: false,
            guest_shut_recv: false,
            write_shut: false,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            rx_cnt: 0,
            fwd_cnt: 0,
            last_fwd_cnt_sent: 0,
            tx_buf: TxBuf::default(),
        }
    }

    /// A host-initiated connection to guest `peer_port`: sends REQUEST.
    pub fn local_init(stream: UnixStream, token: u64, local_port: u32, peer_port: u32) -> Self {
        let mut conn = Self::new(stream, token, local_port, peer_port, State::LocalInit);
        conn.ephemeral = true;
        conn.pending = pending::REQUEST;
        conn
    }

    /// A guest-initiated connection already connected on the host: sends
    /// RESPONSE.
    pub fn peer_init(stream: UnixStream, token: u64, request: &Header) -> Self {
        let mut conn = Self::new(
            stream,
            token,
            request.dst_port,
            request.src_port,
            State::Established,
        );
        conn.update_peer_credit(request);
        conn.pending = pending::RESPONSE;
        conn
    }

    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    fn update_peer_credit(&mut self, hdr: &Header) {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = hdr.fwd_cnt;
    }

    /// Bytes the guest can take now. A guest claiming to have consumed more
    /// than it got is given nothing.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = self.rx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    fn can_send_data(&self) -> bool {
        self.state == State::Established
            && self.readable
            && !self.host_eof
            && !self.guest_shut_recv
            && self.peer_credit() > 0
    }

    /// Has a packet for the guest.
    pub fn wants_rx(&self) -> bool {
        self.pending != 0 || self.can_send_data()
    }

    /// Starts the teardown: shuts the host stream, RST due to the guest.
    pub fn reset(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
        self.state = State::Reset;
        self.pending = pending::RST;
        self.tx_buf = TxBuf::default();
    }

    /// Handles a packet from the guest addressed to this connection.
    pub fn guest_packet<B: BitmapSlice>(
        &mut self,
        hdr: &Header,
        data: Option<&VolatileSlice<'_, B>>,
    ) -> Verdict {
        if self.state == State::Reset {
            return if hdr.op == op::RST {
                Verdict::Drop
            } else {
                Verdict::Keep
            };
        }
        self.update_peer_credit(hdr);
        match (self.state, hdr.op) {
            (_, op::RST) => return Verdict::Drop,
            (State::LocalInit, op::RESPONSE) => {
                let line = format!("OK {}\n", self.local_port);
                // A fresh stream always has room for one short line.
                match self.stream.write(line.as_bytes()) {
                    Ok(n) if n == line.len() => {
                        self.state = State::Established;
                        self.readable = true;
                    }
                    _ => self.reset(),
                }
            }
            (State::Established, op::RW) if !self.guest_shut_send => {
                if let Some(data) = data {
                    self.forward(data);
                }
            }
            (State::Established, op::SHUTDOWN) => {
                self.guest_shut_send |= hdr.flags & SHUTDOWN_SEND != 0;
                self.guest_shut_recv |= hdr.flags & SHUTDOWN_RCV != 0;
                self.after_host_write();
            }
            (State::Established, op::CREDIT_UPDATE) => {}
            (State::Established, op::CREDIT_REQUEST) => self.pending |= pending::CREDIT_UPDATE,
            // REQUEST/RESPONSE out of turn, RW after SHUTDOWN, unknown ops.
            _ => self.reset(),
        }
        Verdict::Keep
    }

    /// Sends guest data to the host stream, buffering what it cannot take.
    fn forward<B: BitmapSlice>(&mut self, data: &VolatileSlice<'_, B>) {
        let len = data.len();
        if self.tx_buf.len() + len > BUF_ALLOC as usize {
            tracing::debug!(
                port = self.local_port,
                "vsock: guest sent beyond its credit, resetting"
            );
            return self.reset();
        }
        let mut written = 0;
        if self.tx_buf.is_empty() {
            match (&self.stream).write_volatile(data) {
                Ok(n) => written = n,
                Err(e) => {
                    let e = volatile_io(e);
                    if e.kind() != io::ErrorKind::WouldBlock {
                        return self.reset();
                    }
                }
            }
        }
        if written < len {
            match data.offset(written) {
                Ok(rest) => self.tx_buf.push(&rest),
                Err(_) => return self.reset(),
            }
        }
        self.forwarded(written);
    }

    fn forwarded(&mut self, n: usize) {
        // n <= 64 KiB per call: the cast cannot truncate.
        self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
        if self.fwd_cnt.wrapping_sub(self.last_fwd_cnt_sent) >= CREDIT_THRESHOLD {
            self.pending |= pending::CREDIT_UPDATE;
        }
    }

    /// Writes buffered guest data to the host stream.
    fn flush(&mut self) {
        while !self.tx_buf.is_empty() {
            let chunk = self.tx_buf.front();
            let chunk = &chunk[..chunk.len().min(64 * 1024)];
            match self.stream.write(chunk) {
                Ok(0) => return self.reset(),
                Ok(n) => {
                    self.tx_buf.consume(n);
                    self.forwarded(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.reset(),
            }
        }
        self.after_host_write();
    }

    /// Applies the guest's shutdowns once its data has reached the host.
    fn after_host_write(&mut self) {
        if self.state != State::Established || !self.tx_buf.is_empty() {
            return;
        }
        if self.guest_shut_send && self.guest_shut_recv {
            // The guest closed: it waits for our RST.
            return self.reset();
        }
        if self.guest_shut_send && !self.write_shut {
            self.write_shut = true;
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        if self.guest_shut_send && self.host_eof {
            self.reset();
        }
    }

    /// Handles readiness of the host stream (edge-triggered).
    pub fn host_event(&mut self, readable: bool, writable: bool, hangup: bool) -> Verdict {
        match self.state {
            State::Reset => {}
            State::LocalInit => {
                if hangup {
                    // The host gave up before the guest answered.
                    if self.pending & pending::REQUEST != 0 {
                        return Verdict::Drop;
                    }
                    self.reset();
                }
            }
            State::Established => {
                if readable || hangup {
                    self.readable = true;
                }
                if writable || hangup {
                    self.flush();
                }
            }
        }
        Verdict::Keep
    }

    fn header(&mut self, guest_cid: u64, op: u16) -> Header {
        self.last_fwd_cnt_sent = self.fwd_cnt;
        self.pending &= !pending::CREDIT_UPDATE;
        Header {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: self.fwd_cnt,
        }
    }

    /// The next packet for the guest, with its payload read into `data`.
    /// `None` when there is nothing to send.
    pub fn next_rx<B: BitmapSlice>(
        &mut self,
        guest_cid: u64,
        data: &VolatileSlice<'_, B>,
    ) -> Option<Header> {
        for (bit, op) in [
            (pending::RST, op::RST),
            (pending::REQUEST, op::REQUEST),
            (pending::RESPONSE, op::RESPONSE),
        ] {
            if self.pending & bit != 0 {
                self.pending &= !bit;
                return Some(self.header(guest_cid, op));
            }
        }
        if self.can_send_data() && !data.is_empty() {
            if let Some(hdr) = self.read_host(guest_cid, data) {
                return Some(hdr);
            }
        }
        if self.pending & pending::SHUTDOWN != 0 {
            self.pending &= !pending::SHUTDOWN;
            let mut hdr = self.header(guest_cid, op::SHUTDOWN);
            hdr.flags = SHUTDOWN_SEND;
            return Some(hdr);
        }
        if self.pending & pending::CREDIT_UPDATE != 0 {
            return Some(self.header(guest_cid, op::CREDIT_UPDATE));
        }
        None
    }

    /// Reads host data into `data` (at most the guest's credit).
    fn read_host<B: BitmapSlice>(
        &mut self,
        guest_cid: u64,
        data: &VolatileSlice<'_, B>,
    ) -> Option<Header> {
        let want = data.len().min(self.peer_credit() as usize);
        let mut dst = data.subslice(0, want).ok()?;
        loop {
            match (&self.stream).read_volatile(&mut dst) {
                Ok(0) => {
                    self.host_eof = true;
                    self.readable = false;
                    if self.guest_shut_send && self.tx_buf.is_empty() {
                        self.reset();
                        self.pending = 0;
                        return Some(self.header(guest_cid, op::RST));
                    }
                    self.pending |= pending::SHUTDOWN;
                    return None;
                }
                Ok(n) => {
                    // n <= 64 KiB (the RX buffer bound).
                    self.rx_cnt = self.rx_cnt.wrapping_add(n as u32);
                    let mut hdr = self.header(guest_cid, op::RW);
                    hdr.len = n as u32;
                    return Some(hdr);
                }
                Err(e) => {
                    let e = volatile_io(e);
                    match e.kind() {
                        io::ErrorKind::Interrupted => continue,
                        io::ErrorKind::WouldBlock => self.readable = false,
                        _ => {
                            self.reset();
                            self.pending = 0;
                            return Some(self.header(guest_cid, op::RST));
                        }
                    }
                    return None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tx_buf_tests {
    use super::TxBuf;
    use vm_memory::VolatileSlice;

    #[test]
    fn a_stream_that_never_drains_keeps_its_storage_bounded() {
        // A guest that stays within its credit but keeps one byte buffered
        // after every host write grew the buffer by every byte it sent.
        let mut chunk = vec![7u8; 4096];
        let mut buf = TxBuf::default();
        for _ in 0..10_000 {
            buf.push(&VolatileSlice::from(&mut chunk[..]));
            let keep = buf.len() - 1;
            buf.consume(keep);
        }
        assert_eq!(buf.len(), 1);
        assert!(buf.capacity() <= 4 * 4096, "{} bytes held", buf.capacity());
        assert_eq!(buf.front(), &[7]);
        buf.consume(1);
        assert_eq!(buf.capacity(), 0);
    }
}
