//! virtio-fs (virtio 1.2, 5.11): a host directory shared with the guest,
//! served in-process by fuse-backend-rs.
//!
//! The guest's FUSE requests arrive on one high-priority queue (FORGET,
//! INTERRUPT) and one request queue. The device's worker thread hands each
//! descriptor chain to fuse-backend-rs's `Server` over a `PassthroughFs`
//! rooted at the shared directory, wrapped in [`ShareFs`], which refuses
//! every modifying operation on read-only shares and keeps lookups inside
//! the share. No external virtiofsd process is involved.
//!
//! - `device.rs`: the [`VirtioDevice`](super::VirtioDevice) and its config space;
//! - `server.rs`: serving descriptor chains, with guards on what the guest wrote;
//! - `share.rs`: the file system the guest sees (passthrough + guards);
//! - `worker.rs`: the worker-thread loop.

mod device;
pub mod jail;
mod server;
mod share;
#[cfg(test)]
mod testing;
mod worker;

use std::io;
use std::path::PathBuf;

pub use device::{Fs, CONFIG_SPACE_SIZE, NUM_QUEUES, QUEUE_SIZE, TAG_SIZE};
pub use server::FuseServer;
pub use share::ShareFs;

/// How long the guest may cache file data, attributes and names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CacheMode {
    /// No caching: every read and stat goes to the host. For directories
    /// the host changes under the guest.
    Never,
    /// Close-to-open consistency with short attribute and entry timeouts.
    #[default]
    Auto,
    /// Cache everything for a long time: only when the guest is the sole
    /// writer of the directory.
    Always,
}

/// One shared directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsShare {
    /// The mount tag the guest names (`mount -t virtiofs TAG DIR`).
    pub tag: String,
    /// The host directory.
    pub path: PathBuf,
    /// Refuse every modification with EROFS.
    pub read_only: bool,
    pub cache: CacheMode,
    pub limits: FsLimits,
}

/// How many host resources one share's guest may hold at once. Each inode
/// the guest has looked up pins an `O_PATH` fd and each open handle an fd,
/// so without a bound a guest exhausts the process's fds and breaks every
/// other device and the shim's own sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FsLimits {
    /// Inodes the guest may have looked up and not forgotten.
    pub max_inodes: usize,
    /// Files and directories the guest may hold open.
    pub max_handles: usize,
}

impl FsLimits {
    /// The most fds a share with these limits holds (the root included).
    pub fn max_fds(&self) -> usize {
        self.max_inodes + self.max_handles + 1
    }
}

impl Default for FsLimits {
    /// Enough for a container that walks a large rootfs (the guest kernel
    /// forgets inodes under memory pressure) while staying far below the
    /// fd limit the shim raises itself to.
    fn default() -> Self {
        Self {
            max_inodes: 16_384,
            max_handles: 4_096,
        }
    }
}

/// Errors creating a virtio-fs device or its file system.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("tag `{0}` must be 1 to {TAG_SIZE} bytes")]
    BadTag(String),
    #[error("shared directory {path}: {source}")]
    Path { path: PathBuf, source: io::Error },
    #[error("shared directory {0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("shared directory {0} is not valid UTF-8")]
    PathEncoding(PathBuf),
    #[error("starting the passthrough file system: {0}")]
    Passthrough(io::Error),
}

impl From<FsError> for io::Error {
    fn from(e: FsError) -> Self {
        let kind = match &e {
            FsError::Path { source, .. } | FsError::Passthrough(source) => source.kind(),
            _ => io::ErrorKind::InvalidInput,
        };
        io::Error::new(kind, e.to_string())
    }
}
