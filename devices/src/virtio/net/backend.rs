//! Where the device's frames go on the host.
//!
//! A trait rather than the tap itself, so the data path can be tested and
//! benchmarked without /dev/net/tun.

use std::io;
use std::os::fd::AsRawFd;

/// A host endpoint that exchanges whole Ethernet frames. Both calls must
/// not block: the fd is watched for input by the worker's epoll.
pub trait NetBackend: AsRawFd + Send + Sync {
    /// Reads one frame into `frame` and returns its length; `WouldBlock`
    /// when none is waiting. A frame longer than `frame` is an error.
    fn recv(&self, frame: &mut [u8]) -> io::Result<usize>;
    /// Sends one frame.
    fn send(&self, frame: &[u8]) -> io::Result<()>;
}
