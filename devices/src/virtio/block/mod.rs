//! virtio-blk over a raw image file or block device (virtio 1.2, 5.2).
//!
//! The guest driver queues requests (a 16-byte header, data buffers, a
//! status byte) on one virtqueue. A worker thread per disk pops them,
//! checks every field the guest wrote, and does the I/O synchronously with
//! `preadv`/`pwritev` straight between the image and guest memory: no copy
//! in the VMM, one syscall per request, and a slow disk stalls only its own
//! worker, never a vCPU. That is the simplest model that keeps up with what
//! our guests can issue (an emulated guest kernel submits a few thousand
//! requests a second at queue depth 1; a sandbox has one disk); io_uring
//! would add a dependency, a second completion path and a syscall family
//! that container seccomp profiles often block, for gains that only show
//! at queue depths our guests never reach.
//!
//! - [`disk`]: the image file: open, lock, size, id, positioned I/O.
//! - [`request`]: turns a descriptor chain into checked guest buffers.
//! - [`queue`]: executes requests and completes them on the used ring.
//! - [`device`]: the [`VirtioDevice`](super::VirtioDevice) with its config
//!   space and worker.

mod device;
mod disk;
mod queue;
mod request;
#[cfg(test)]
mod tests;

pub use device::Block;
pub use disk::{DiskFile, DiskOpenError};
pub use queue::RequestQueue;

/// Bytes per virtio-blk sector, whatever the disk's block size.
pub const SECTOR_SIZE: u64 = 512;
/// Longest queue the driver may set up.
pub const QUEUE_SIZE: u16 = 256;
/// Most data buffers in one request (`seg_max`): one page each makes
/// 512 KiB requests, and header and status still fit a ring of
/// [`QUEUE_SIZE`] without indirect descriptors.
pub const SEG_MAX: u32 = 126;
/// Most descriptors one chain may use before it is refused.
pub(crate) const MAX_CHAIN_BUFFERS: usize = SEG_MAX as usize + 2;
/// Length of the device id string (`VIRTIO_BLK_ID_BYTES`).
pub const ID_BYTES: usize = 20;
/// Most ranges in one discard or write-zeroes request.
pub(crate) const MAX_DISCARD_SEG: u32 = 32;
/// Most sectors one discard or write-zeroes range may cover (2 GiB).
pub(crate) const MAX_DISCARD_SECTORS: u32 = 1 << 22;
