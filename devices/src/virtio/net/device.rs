//! The virtio-net device as the driver sees it: features, config space,
//! activation and reset.

use std::sync::Arc;

use virtio_bindings::virtio_net::{VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP};

use super::datapath::NetWorker;
use super::{NetBackend, NetError, NetStats, Tap, QUEUE_SIZE};
use crate::virtio::worker::Worker;
use crate::virtio::{
    read_config_bytes, ActivateError, Activation, VirtioDevice, F_RING_EVENT_IDX, F_VERSION_1,
    TYPE_NET,
};

const FEATURES: u64 =
    F_VERSION_1 | F_RING_EVENT_IDX | (1 << VIRTIO_NET_F_MAC) | (1 << VIRTIO_NET_F_STATUS);

/// Config space: `mac[6]`, then `status` (le16); nothing past it is offered.
const CONFIG_LEN: usize = 8;

/// A virtio-net device on a backend (a tap, or a fake in tests).
pub struct Net {
    backend: Arc<dyn NetBackend>,
    stats: Arc<NetStats>,
    config: [u8; CONFIG_LEN],
    worker: Option<Worker>,
}

/// A stable MAC for a tap: locally administered, unicast, the rest from
/// a hash of the tap name, so a guest keeps its address across restarts
/// and two taps on one host differ.
pub fn default_mac(tap: &str) -> [u8; 6] {
    // FNV-1a, 64 bits.
    let hash = tap.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let b = hash.to_le_bytes();
    [0x02, b[0], b[1], b[2], b[3], b[4]]
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl Net {
    /// A device on the tap `tap`, attached or created; `mac` defaults to
    /// [`default_mac`]. The MAC is checked before the tap is touched.
    pub fn new(tap: &str, mac: Option<[u8; 6]>) -> Result<Self, NetError> {
        let mac = mac.unwrap_or_else(|| default_mac(tap));
        if mac[0] & 1 != 0 || mac == [0; 6] {
            return Err(NetError::BadMac(format_mac(&mac)));
        }
        let tap = Tap::open(tap)?;
        Ok(Self::with_backend(Arc::new(tap), mac))
    }

    /// A device on any backend.
    pub fn with_backend(backend: Arc<dyn NetBackend>, mac: [u8; 6]) -> Self {
        let mut config = [0u8; CONFIG_LEN];
        config[..6].copy_from_slice(&mac);
        config[6..].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        Self {
            backend,
            stats: Arc::new(NetStats::default()),
            config,
            worker: None,
        }
    }

    /// The data path's counters.
    pub fn stats(&self) -> Arc<NetStats> {
        self.stats.clone()
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        FEATURES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let got = activation.queues.len();
        let mut queues = activation.queues.into_iter();
        let (Some(rx), Some(tx), None) = (queues.next(), queues.next(), queues.next()) else {
            return Err(ActivateError::QueueCount { got, want: 2 });
        };
        let confinement = activation.confinement;
        let work = NetWorker::new(
            activation.mem,
            rx,
            tx,
            self.backend.clone(),
            activation.interrupt,
            self.stats.clone(),
        );
        self.worker = Some(Worker::spawn("virtio-net", work, &confinement)?);
        Ok(())
    }

    fn reset(&mut self) {
        // Dropping the worker stops and joins its thread; the backend
        // stays open for the next activation.
        self.worker = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::net::testing::{memory, queue_in_page, FakeBackend};
    use crate::virtio::test_utils::Buf;
    use crate::virtio::Interrupt;
    use std::time::{Duration, Instant};
    use virtio_queue::QueueT;
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::EventFd;

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let start = Instant::now();
        while !done() {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "timed out: {what}"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn offers_mac_and_link_status() {
        let net = Net::with_backend(Arc::new(FakeBackend::new()), [2, 1, 2, 3, 4, 5]);
        assert_eq!(net.device_type(), TYPE_NET);
        assert_eq!(net.queue_max_sizes(), &[256, 256]);
        assert_ne!(net.features() & (1 << VIRTIO_NET_F_MAC), 0);
        assert_ne!(net.features() & F_RING_EVENT_IDX, 0);
        let mut cfg = [0u8; 10];
        net.read_config(0, &mut cfg);
        assert_eq!(cfg, [2, 1, 2, 3, 4, 5, 1, 0, 0, 0]);
    }

    #[test]
    fn default_macs_are_stable_local_unicast() {
        let mac = default_mac("tap0");
        assert_eq!(mac[0], 0x02);
        assert_eq!(mac, default_mac("tap0"));
        assert_ne!(mac, default_mac("tap1"));
    }

    #[test]
    fn bad_macs_are_refused_before_the_tap_is_opened() {
        let name = "sknet-badmac";
        assert!(matches!(
            Net::new(name, Some([1, 0, 0, 0, 0, 1])),
            Err(NetError::BadMac(_))
        ));
        assert!(matches!(
            Net::new(name, Some([0; 6])),
            Err(NetError::BadMac(_))
        ));
        let c = std::ffi::CString::new(name).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::if_nametoindex(c.as_ptr()) }, 0);
    }

    #[test]
    fn worker_serves_both_queues_and_stops_on_reset() {
        let mem = memory();
        let mut rx = queue_in_page(&mem, 0x0, 16);
        let mut tx = queue_in_page(&mem, 0x1000, 16);
        let backend = Arc::new(FakeBackend::new());
        let mut net = Net::with_backend(backend.clone(), default_mac("t"));
        let (rxq, txq) = (rx.active_queue(true), tx.active_queue(true));
        assert!(rxq.queue.is_valid(&mem) && txq.queue.is_valid(&mem));
        let (rx_kick, tx_kick) = (
            rxq.notify.try_clone().unwrap(),
            txq.notify.try_clone().unwrap(),
        );
        let irq = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        let short = Activation {
            mem: mem.clone(),
            features: FEATURES,
            queues: Vec::new(),
            interrupt: irq.clone(),
            confinement: skiff_confine::Confinement::inline(),
            resumed: false,
        };
        assert!(matches!(
            net.activate(short),
            Err(ActivateError::QueueCount { got: 0, want: 2 })
        ));
        net.activate(Activation {
            mem: mem.clone(),
            features: FEATURES,
            queues: vec![rxq, txq],
            interrupt: irq.clone(),
            confinement: skiff_confine::Confinement::inline(),
            resumed: false,
        })
        .unwrap();

        mem.write_slice(&[7u8; 72], GuestAddress(0x1_0000)).unwrap();
        tx.push(&[Buf::readable(0x1_0000, 72)]);
        tx_kick.write(1).unwrap();
        wait_for("TX frame", || backend.sent().len() == 1);
        assert_eq!(backend.sent()[0], vec![7u8; 60]);

        // A frame with no RX buffer waits for the guest's refill.
        backend.push(vec![9u8; 60]);
        wait_for("frame read", || backend.inbox.lock().unwrap().is_empty());
        rx.push(&[Buf::writable(0x2_0000, 1526)]);
        rx_kick.write(1).unwrap();
        wait_for("RX frame", || rx.used_all().len() == 1);
        assert_eq!(rx.used_all(), vec![(0, 72)]);
        let stats = net.stats();
        assert_eq!(NetStats::get(&stats.rx_frames), 1);
        assert!(irq.irqfd().read().unwrap() >= 1);

        net.reset();
        // The worker is gone: a frame now stays with the backend.
        backend.push(vec![1u8; 60]);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(backend.inbox.lock().unwrap().len(), 1);
    }
}
