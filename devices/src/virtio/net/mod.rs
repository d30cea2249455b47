//! virtio-net over a host tap device (virtio 1.2, 5.1).
//!
//! One RX/TX queue pair, a configurable MAC, link status, event-index
//! notifications. No checksum or segmentation offloads and no mergeable
//! RX buffers: every frame is a plain Ethernet frame of at most the tap's
//! MTU, which the Linux driver's default RX buffers (1518 bytes + header)
//! hold whole.
//!
//! - [`device`]: the [`VirtioDevice`](super::VirtioDevice) side: features,
//!   config space, activation.
//! - [`datapath`]: the worker that moves frames between the queues and the
//!   backend.
//! - [`chain`]: checks a guest's descriptor chain before it is used.
//! - [`backend`] and [`tap`]: where frames go on the host.

pub mod backend;
mod chain;
pub mod datapath;
mod device;
pub mod tap;
#[cfg(test)]
mod testing;

use std::sync::atomic::{AtomicU64, Ordering};

pub use backend::NetBackend;
pub use device::{default_mac, format_mac, Net};
pub use tap::Tap;

/// Size of `struct virtio_net_hdr_v1`, the header in front of every frame
/// on both queues once VERSION_1 is negotiated (num_buffers included).
pub const NET_HDR_LEN: usize = 12;
/// Largest frame (without header) accepted from the guest or the tap:
/// 64 KiB, above any MTU a tap can have plus its Ethernet header.
pub const MAX_FRAME_LEN: usize = 64 * 1024;

/// Queue indexes (virtio 1.2, 5.1.2).
pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
/// Ring size of each queue: 256 frames in flight each way.
pub const QUEUE_SIZE: u16 = 256;

/// Why the device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("tap name `{0}` is empty, too long or contains a NUL byte")]
    TapName(String),
    #[error("cannot open /dev/net/tun: {0}")]
    OpenTun(std::io::Error),
    #[error("cannot attach to or create tap `{name}`: {source}")]
    CreateTap {
        name: String,
        source: std::io::Error,
    },
    #[error("cannot configure tap `{name}` ({what}): {source}")]
    ConfigureTap {
        name: String,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("MAC address {0} is not a unicast address (its first byte must be even) or is zero")]
    BadMac(String),
}

/// Counters of what the data path did, readable while it runs. Nothing
/// is dropped without one of these counting it.
#[derive(Debug, Default)]
pub struct NetStats {
    pub rx_frames: AtomicU64,
    pub rx_bytes: AtomicU64,
    /// Frames from the tap that no RX chain could hold.
    pub rx_dropped_too_large: AtomicU64,
    /// A frame held for want of RX buffers when the device was reset.
    pub rx_dropped_reset: AtomicU64,
    /// RX chains returned unused: malformed or unwritable.
    pub rx_bad_chains: AtomicU64,
    /// Failed reads from the backend.
    pub rx_errors: AtomicU64,
    pub tx_frames: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// TX chains returned unused: malformed, unreadable or oversized.
    pub tx_bad_chains: AtomicU64,
    /// Frames the backend refused (dropped).
    pub tx_errors: AtomicU64,
}

impl NetStats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
