//! The vsock data path: TX packets to the muxer, muxer packets into RX
//! buffers, host-side events. Runs on the device's worker thread; tests and
//! benches drive it directly.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use virtio_vsock::packet::VsockPacket;
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::muxer::Muxer;
use super::packet::{parse_tx, Header, HEADER_SIZE, MAX_PKT_DATA};
use crate::virtio::worker::{Poller, WorkerLoop};
use crate::virtio::{queue, ActivateError, Activation, Interrupt};

const TOKEN_RX: u64 = 0;
const TOKEN_TX: u64 = 1;
const TOKEN_EVENT: u64 = 2;
const TOKEN_HOST: u64 = 3;

/// `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET` (virtio 1.2, 5.10.6.7): the one
/// event of the event queue, a little-endian `u32` id.
const EVENT_TRANSPORT_RESET: u32 = 0;

/// The device's data path over its three queues (rx, tx, event).
pub struct VsockWorker {
    mem: GuestMemoryMmap,
    rx: Queue,
    tx: Queue,
    event: Queue,
    notify: [EventFd; 3],
    interrupt: Arc<Interrupt>,
    muxer: Muxer,
    /// A transport reset the driver must still be told of: the device
    /// continues a snapshot, whose connections did not survive it.
    reset_pending: bool,
}

impl VsockWorker {
    pub(crate) fn new(activation: Activation, muxer: Muxer) -> Result<Self, ActivateError> {
        let got = activation.queues.len();
        let mut queues = activation.queues.into_iter();
        let (Some(rx), Some(tx), Some(event), None) =
            (queues.next(), queues.next(), queues.next(), queues.next())
        else {
            return Err(ActivateError::QueueCount { got, want: 3 });
        };
        let mut worker = Self {
            mem: activation.mem,
            rx: rx.queue,
            tx: tx.queue,
            event: event.queue,
            notify: [rx.notify, tx.notify, event.notify],
            interrupt: activation.interrupt,
            muxer,
            reset_pending: activation.resumed,
        };
        worker.process_event();
        Ok(worker)
    }

    /// Tells the driver, once it has given an event buffer, that every
    /// connection is gone (after a restore): it resets its sockets and
    /// reads the guest CID again, and its listeners stay.
    pub fn process_event(&mut self) {
        if !self.reset_pending || self.interrupt.needs_reset() {
            return;
        }
        let mut chain = match queue::pop(&mut self.event, &self.mem) {
            Ok(Some(chain)) => chain,
            Ok(None) => return, // told when the driver adds a buffer
            Err(e) => return self.interrupt.fail(&e),
        };
        let head = chain.head_index();
        let event = EVENT_TRANSPORT_RESET.to_le_bytes();
        let written = match chain.find(|d| d.is_write_only() && d.len() as usize >= event.len()) {
            Some(d) => self
                .mem
                .write_slice(&event, d.addr())
                .map(|()| 4)
                .unwrap_or(0),
            None => 0,
        };
        if written == 0 {
            tracing::debug!("vsock: event buffer too small, transport reset not sent");
        }
        self.reset_pending = false;
        if let Err(e) = self.event.add_used(&self.mem, head, written) {
            tracing::warn!("vsock: event used ring: {e}");
        }
        self.interrupt.signal_used();
    }

    /// Open connections (for tests and diagnostics).
    pub fn connection_count(&self) -> usize {
        self.muxer.connection_count()
    }

    /// Handles every packet the guest has put on the TX queue.
    pub fn process_tx(&mut self) {
        let (mem, muxer) = (&self.mem, &mut self.muxer);
        let kick = Some(&self.notify[1]);
        let notify = queue::drain(&mut self.tx, mem, &self.interrupt, kick, |mut chain| {
            match parse_tx(mem, &mut chain) {
                Ok(pkt) => muxer.guest_packet(&Header::of(&pkt), pkt.data_slice()),
                Err(e) => tracing::debug!("vsock: TX packet dropped: {e}"),
            }
            0
        });
        if notify {
            self.interrupt.signal_used();
        }
    }

    /// Fills RX buffers with whatever the muxer has for the guest.
    pub fn process_rx(&mut self) {
        let mut used = false;
        let mut rechecked = false;
        while self.muxer.has_rx() && !self.interrupt.needs_reset() {
            let popped = match queue::pop(&mut self.rx, &self.mem) {
                Ok(popped) => popped,
                Err(e) => {
                    self.interrupt.fail(&e);
                    break;
                }
            };
            let Some(mut chain) = popped else {
                // Out of buffers: ask for a kick when the guest adds some.
                match self.rx.enable_notification(&self.mem) {
                    Ok(true) if !rechecked => {
                        rechecked = true;
                        continue;
                    }
                    _ => break,
                }
            };
            let head = chain.head_index();
            let len = match VsockPacket::from_rx_virtq_chain(&self.mem, &mut chain, MAX_PKT_DATA) {
                Ok(mut pkt) => {
                    // The crate always gives RX packets a data slice.
                    let data = pkt.data_slice().copied();
                    let Some(hdr) = data.and_then(|data| self.muxer.next_rx(&data)) else {
                        // Nothing after all: leave the buffer to the guest.
                        self.rx.go_to_previous_position();
                        break;
                    };
                    match pkt.set_header_from_raw(&hdr.encode()) {
                        Ok(()) => HEADER_SIZE as u32 + hdr.len,
                        Err(e) => {
                            tracing::debug!("vsock: RX header: {e}");
                            0
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!("vsock: RX buffer returned unused: {e}");
                    0
                }
            };
            if let Err(e) = self.rx.add_used(&self.mem, head, len) {
                tracing::warn!("vsock: RX used ring: {e}");
            }
            used = true;
        }
        if used && self.rx.needs_notification(&self.mem).unwrap_or(true) {
            self.interrupt.signal_used();
        }
    }

    /// Handles host-side readiness (listener, connector, streams).
    pub fn process_host(&mut self) {
        self.muxer.process_host_events();
    }
}

impl WorkerLoop for VsockWorker {
    fn policy(&self) -> skiff_confine::ThreadPolicy {
        crate::virtio::seccomp::vsock()
    }

    fn register(&mut self, poller: &Poller) -> io::Result<()> {
        for (token, evt) in [TOKEN_RX, TOKEN_TX, TOKEN_EVENT]
            .into_iter()
            .zip(&self.notify)
        {
            poller.add(evt.as_raw_fd(), token, EventSet::IN)?;
        }
        poller.add(self.muxer.epoll_fd(), TOKEN_HOST, EventSet::IN)
    }

    fn handle(&mut self, _poller: &Poller, token: u64, _events: EventSet) {
        match token {
            TOKEN_RX => {
                // New RX buffers are used below.
                let _ = self.notify[0].read();
            }
            TOKEN_EVENT => {
                let _ = self.notify[2].read();
                self.process_event();
            }
            TOKEN_TX => {
                let _ = self.notify[1].read();
                self.process_tx();
            }
            TOKEN_HOST => self.process_host(),
            _ => {}
        }
        self.process_rx();
    }
}
