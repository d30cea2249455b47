//! Routes packets between the guest and host streams.
//!
//! The muxer owns every connection and its own epoll set (listener,
//! connector wake-up, host streams), whose fd the worker watches as one
//! source, as Firecracker's muxer does. Host streams are edge-triggered:
//! a connection remembers it is readable until a read says EAGAIN, so a
//! stream the guest cannot take data from (no credit, no RX buffers) is
//! simply left unread and never spins the loop.
//!
//! Packets for the guest come from two places: connectionless RSTs
//! (bounded; dropped when the guest does not drain them) and connections,
//! each scheduled at most once in a round-robin list and keeping its own
//! pending control packets as flags, so nothing here grows without bound.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;

use vm_memory::bitmap::BitmapSlice;
use vm_memory::VolatileSlice;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::connection::{Connection, Verdict};
use super::host::{connect_guest_service, ConnectorShared, HybridListener, LineRead, PendingHost};
use super::packet::{op, Header, TYPE_STREAM};
use super::HOST_CID;

/// Connections (and hybrid clients still sending CONNECT) at once.
pub const MAX_CONNECTIONS: usize = 1024;
/// Connectionless RSTs waiting for RX buffers.
const MAX_CONTROL: usize = 256;
/// Host ports allocated to host-initiated connections start here.
const EPHEMERAL_START: u32 = 1 << 30;

const TOKEN_LISTENER: u64 = 1;
const TOKEN_CONNECTOR: u64 = 2;
const FIRST_STREAM_TOKEN: u64 = 16;
const MAX_EVENTS: usize = 64;

/// (host port, guest port)
type Key = (u32, u32);

pub(crate) struct Muxer {
    guest_cid: u64,
    epoll: Epoll,
    listener: Option<Arc<HybridListener>>,
    /// Base path of the host services guests connect to (`<base>_<port>`).
    service_base: Option<PathBuf>,
    connector: Arc<ConnectorShared>,
    pending: HashMap<u64, PendingHost>,
    conns: HashMap<Key, Connection>,
    tokens: HashMap<u64, Key>,
    local_ports: HashSet<u32>,
    next_local_port: u32,
    next_token: u64,
    control: VecDeque<Header>,
    rx_ready: VecDeque<Key>,
}

impl Muxer {
    pub fn new(
        guest_cid: u64,
        listener: Option<Arc<HybridListener>>,
        connector: Arc<ConnectorShared>,
    ) -> io::Result<Self> {
        let epoll = Epoll::new()?;
        if let Some(listener) = &listener {
            epoll.ctl(
                ControlOperation::Add,
                listener.as_raw_fd(),
                EpollEvent::new(EventSet::IN, TOKEN_LISTENER),
            )?;
        }
        epoll.ctl(
            ControlOperation::Add,
            connector.wake.as_raw_fd(),
            EpollEvent::new(EventSet::IN, TOKEN_CONNECTOR),
        )?;
        let service_base = listener.as_ref().map(|l| l.path().to_path_buf());
        let mut muxer = Self {
            guest_cid,
            epoll,
            listener,
            service_base,
            connector,
            pending: HashMap::new(),
            conns: HashMap::new(),
            tokens: HashMap::new(),
            local_ports: HashSet::new(),
            next_local_port: EPHEMERAL_START,
            next_token: FIRST_STREAM_TOKEN,
            control: VecDeque::new(),
            rx_ready: VecDeque::new(),
        };
        // Requests made before the driver was ready.
        muxer.take_connector_requests();
        Ok(muxer)
    }

    /// The fd the worker polls for host-side events.
    pub fn epoll_fd(&self) -> i32 {
        self.epoll.as_raw_fd()
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    fn at_capacity(&self) -> bool {
        self.conns.len() + self.pending.len() >= MAX_CONNECTIONS
    }

    fn register(&mut self, stream: &UnixStream) -> Option<u64> {
        let token = self.next_token;
        self.next_token += 1;
        let events =
            EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED;
        self.epoll
            .ctl(
                ControlOperation::Add,
                stream.as_raw_fd(),
                EpollEvent::new(events, token),
            )
            .map_err(|e| tracing::warn!("vsock: cannot watch a host stream: {e}"))
            .ok()?;
        Some(token)
    }

    fn schedule(&mut self, key: Key) {
        if let Some(conn) = self.conns.get_mut(&key) {
            if !conn.queued && conn.wants_rx() {
                conn.queued = true;
                self.rx_ready.push_back(key);
            }
        }
    }

    fn remove(&mut self, key: Key) {
        if let Some(conn) = self.conns.remove(&key) {
            self.tokens.remove(&conn.token);
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                conn.stream().as_raw_fd(),
                EpollEvent::default(),
            );
            if conn.ephemeral {
                self.local_ports.remove(&conn.local_port);
            }
        }
    }

    fn send_rst(&mut self, to: &Header) {
        if self.control.len() < MAX_CONTROL {
            self.control.push_back(to.rst_reply());
        } else {
            tracing::debug!("vsock: guest is not draining RX, RST dropped");
        }
    }

    fn apply(&mut self, key: Key, verdict: Verdict) {
        match verdict {
            Verdict::Drop => self.remove(key),
            Verdict::Keep => self.schedule(key),
        }
    }

    // ---- Guest side -------------------------------------------------

    /// Handles one packet the guest sent (TX queue).
    pub fn guest_packet<B: BitmapSlice>(
        &mut self,
        hdr: &Header,
        data: Option<&VolatileSlice<'_, B>>,
    ) {
        if hdr.src_cid != self.guest_cid || hdr.dst_cid != HOST_CID {
            // Not from this guest or not for us: an RST would be misrouted.
            tracing::debug!(
                src = hdr.src_cid,
                dst = hdr.dst_cid,
                "vsock: packet with wrong CIDs dropped"
            );
            return;
        }
        let key = (hdr.dst_port, hdr.src_port);
        let known_op = (op::REQUEST..=op::CREDIT_REQUEST).contains(&hdr.op);
        if hdr.type_ != TYPE_STREAM || !known_op {
            if let Some(conn) = self.conns.get_mut(&key) {
                conn.reset();
                self.schedule(key);
            } else if hdr.op != op::RST {
                self.send_rst(hdr);
            }
            return;
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            match hdr.op {
                op::REQUEST => self.guest_connect(hdr),
                op::RST => {}
                _ => self.send_rst(hdr),
            }
            return;
        };
        if hdr.op == op::REQUEST {
            // A second REQUEST on a live connection: both sides reset.
            conn.reset();
            self.schedule(key);
            return;
        }
        let verdict = conn.guest_packet(hdr, data);
        self.apply(key, verdict);
    }

    /// A guest connects to host port `dst_port`: connects to the Unix
    /// listener for it, then answers RESPONSE, or RST if nobody listens.
    fn guest_connect(&mut self, hdr: &Header) {
        let Some(base) = self.service_base.as_ref() else {
            return self.send_rst(hdr);
        };
        if self.at_capacity() {
            tracing::debug!("vsock: connection limit reached, REQUEST refused");
            return self.send_rst(hdr);
        }
        let stream = match connect_guest_service(base, hdr.dst_port) {
            Ok(stream) => stream,
            Err(e) => {
                tracing::debug!(port = hdr.dst_port, "vsock: no host service: {e}");
                return self.send_rst(hdr);
            }
        };
        let Some(token) = self.register(&stream) else {
            return self.send_rst(hdr);
        };
        let key = (hdr.dst_port, hdr.src_port);
        self.tokens.insert(token, key);
        self.conns
            .insert(key, Connection::peer_init(stream, token, hdr));
        self.schedule(key);
    }

    /// Whether there may be packets for the guest.
    pub fn has_rx(&self) -> bool {
        !self.control.is_empty() || !self.rx_ready.is_empty()
    }

    /// The next packet for the guest: its header, with any payload already
    /// read into `data`. `None` when nothing is ready.
    pub fn next_rx<B: BitmapSlice>(&mut self, data: &VolatileSlice<'_, B>) -> Option<Header> {
        if let Some(hdr) = self.control.pop_front() {
            return Some(hdr);
        }
        while let Some(key) = self.rx_ready.pop_front() {
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            conn.queued = false;
            let Some(hdr) = conn.next_rx(self.guest_cid, data) else {
                continue;
            };
            if hdr.op == op::RST {
                self.remove(key);
            } else {
                self.schedule(key);
            }
            return Some(hdr);
        }
        None
    }

    // ---- Host side --------------------------------------------------

    /// Handles whatever is ready on the host side, without blocking.
    /// Streams registered meanwhile report their state at once, so a few
    /// rounds let a request whose caller already left end here.
    pub fn process_host_events(&mut self) {
        let mut events = [EpollEvent::default(); MAX_EVENTS];
        for _ in 0..8 {
            let n = match self.epoll.wait(0, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!("vsock: epoll: {e}");
                    return;
                }
            };
            for event in &events[..n] {
                match event.data() {
                    TOKEN_LISTENER => self.accept_hosts(),
                    TOKEN_CONNECTOR => {
                        let _ = self.connector.wake.read();
                        self.take_connector_requests();
                    }
                    token => self.stream_event(token, event.event_set()),
                }
            }
            if n == 0 {
                return;
            }
        }
    }

    fn accept_hosts(&mut self) {
        let Some(listener) = self.listener.clone() else {
            return;
        };
        loop {
            let stream = match listener.accept() {
                Ok(stream) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and the like: try again on the next event.
                    tracing::warn!("vsock: accept: {e}");
                    return;
                }
            };
            if self.at_capacity() {
                tracing::debug!("vsock: connection limit reached, host client closed");
                continue;
            }
            if let Some(token) = self.register(&stream) {
                let mut pending = PendingHost::new(stream);
                match pending.read_line() {
                    LineRead::More => {
                        self.pending.insert(token, pending);
                    }
                    LineRead::Connect(port) => self.host_connect(token, port, pending.stream),
                    LineRead::Bad => {}
                }
            }
        }
    }

    fn take_connector_requests(&mut self) {
        for (port, stream) in self.connector.take_requests() {
            if self.at_capacity() {
                tracing::debug!("vsock: connection limit reached, connect refused");
                continue;
            }
            if let Some(token) = self.register(&stream) {
                self.host_connect(token, port, stream);
            }
        }
    }

    /// Opens a host-initiated connection to guest `port` (REQUEST).
    fn host_connect(&mut self, token: u64, port: u32, stream: UnixStream) {
        let local = self.alloc_local_port(port);
        let key = (local, port);
        self.local_ports.insert(local);
        self.tokens.insert(token, key);
        self.conns
            .insert(key, Connection::local_init(stream, token, local, port));
        self.schedule(key);
    }

    /// A free host port for a connection to guest `peer`.
    fn alloc_local_port(&mut self, peer: u32) -> u32 {
        // At most MAX_CONNECTIONS ports are taken: this ends quickly.
        loop {
            let port = self.next_local_port;
            self.next_local_port = port.checked_add(1).unwrap_or(EPHEMERAL_START);
            // A guest-initiated connection could hold the same pair.
            if !self.local_ports.contains(&port) && !self.conns.contains_key(&(port, peer)) {
                return port;
            }
        }
    }

    fn stream_event(&mut self, token: u64, set: EventSet) {
        let readable = set.intersects(EventSet::IN | EventSet::READ_HANG_UP);
        let writable = set.contains(EventSet::OUT);
        let hangup = set.intersects(EventSet::HANG_UP | EventSet::ERROR);
        if let Some(pending) = self.pending.get_mut(&token) {
            match pending.read_line() {
                LineRead::More if !hangup => {}
                LineRead::Connect(port) => {
                    if let Some(p) = self.pending.remove(&token) {
                        self.host_connect(token, port, p.stream);
                    }
                }
                _ => {
                    self.pending.remove(&token);
                }
            }
            return;
        }
        let Some(&key) = self.tokens.get(&token) else {
            return;
        };
        if let Some(conn) = self.conns.get_mut(&key) {
            let verdict = conn.host_event(readable, writable, hangup);
            self.apply(key, verdict);
        }
    }
}
