//! virtio-vsock in user space: guest sockets (AF_VSOCK) reach host Unix
//! sockets through this device, the way Firecracker's vsock does.
//!
//! - [`device`]: the [`VirtioDevice`](super::VirtioDevice) (three queues,
//!   config space with the guest CID).
//! - [`packet`]: header encoding and validation of guest packets, on top of
//!   the `virtio-vsock` crate's descriptor-chain parsing.
//! - [`connection`]: one stream's state machine, credit accounting and
//!   bounded buffer.
//! - [`muxer`]: routes packets between the guest and host streams.
//! - [`host`]: the host ends: the hybrid Unix socket (`CONNECT <port>\n`),
//!   guest-initiated connections to `<PATH>_<port>`, and the in-process
//!   [`VsockConnector`].
//! - [`worker`]: the data path on the device's worker thread.

mod connection;
mod device;
mod host;
mod muxer;
mod packet;
mod worker;

#[cfg(test)]
mod tests;

pub use device::Vsock;
pub use host::{await_established, VsockConnector, DEFAULT_CONNECT_TIMEOUT};
pub use muxer::MAX_CONNECTIONS;
pub use worker::VsockWorker;

/// The host's CID (virtio 1.2, 5.10.4).
pub const HOST_CID: u64 = 2;

/// Why the vsock device cannot be created.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}: exists and is not a socket; refusing to replace it")]
    NotASocket(std::path::PathBuf),
    #[error("{path}: {source}")]
    Socket {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{0}: socket path too long for a Unix socket (with the _<port> suffix)")]
    PathTooLong(std::path::PathBuf),
    #[error("creating an eventfd or epoll: {0}")]
    Setup(std::io::Error),
}
