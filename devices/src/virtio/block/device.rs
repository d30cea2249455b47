//! The virtio-blk [`VirtioDevice`]: features, config space, and the worker
//! thread that serves the request queue while the driver runs.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::disk::{DiskFile, DIRECT_ALIGN};
use super::queue::RequestQueue;
use super::{MAX_DISCARD_SECTORS, MAX_DISCARD_SEG, QUEUE_SIZE, SECTOR_SIZE, SEG_MAX};
use crate::virtio::worker::{Poller, Worker, WorkerLoop};
use crate::virtio::{
    ActivateError, Activation, Interrupt, VirtioDevice, F_RING_EVENT_IDX, F_VERSION_1, TYPE_BLOCK,
};

/// `struct virtio_blk_config` up to `write_zeroes_may_unmap` and padding
/// (virtio 1.2, 5.2.4); later fields (secure erase) read as 0.
const CONFIG_LEN: usize = 60;

/// A virtio-blk device over a [`DiskFile`].
pub struct Block {
    disk: Arc<DiskFile>,
    features: u64,
    config: [u8; CONFIG_LEN],
    worker: Option<Worker>,
}

impl Block {
    pub fn new(disk: DiskFile) -> Self {
        let features = offered_features(&disk);
        let config = config_space(&disk);
        Self {
            disk: Arc::new(disk),
            features,
            config,
            worker: None,
        }
    }
}

/// VERSION_1, EVENT_IDX and indirect descriptors (so a request costs one
/// ring slot), FLUSH (the guest treats the host page cache as a volatile
/// write cache and flushes it), SEG_MAX, BLK_SIZE, then RO for read-only
/// disks or DISCARD and WRITE_ZEROES (fallocate) for writable ones.
fn offered_features(disk: &DiskFile) -> u64 {
    let bit = |b: u32| 1u64 << b;
    let mut features = F_VERSION_1
        | F_RING_EVENT_IDX
        | bit(VIRTIO_RING_F_INDIRECT_DESC)
        | bit(VIRTIO_BLK_F_FLUSH)
        | bit(VIRTIO_BLK_F_SEG_MAX)
        | bit(VIRTIO_BLK_F_BLK_SIZE);
    if disk.read_only() {
        features |= bit(VIRTIO_BLK_F_RO);
    } else {
        features |= bit(VIRTIO_BLK_F_DISCARD) | bit(VIRTIO_BLK_F_WRITE_ZEROES);
    }
    features
}

/// The config space, little-endian at the offsets of `virtio_blk_config`.
fn config_space(disk: &DiskFile) -> [u8; CONFIG_LEN] {
    // A direct disk asks the guest for 4 KiB blocks, so its I/O is aligned
    // for O_DIRECT on any host disk and skips the bounce buffer.
    let blk_size = if disk.direct() {
        DIRECT_ALIGN as u32
    } else {
        SECTOR_SIZE as u32
    };
    let mut c = [0u8; CONFIG_LEN];
    c[0..8].copy_from_slice(&(disk.size() / SECTOR_SIZE).to_le_bytes()); // capacity
    c[12..16].copy_from_slice(&SEG_MAX.to_le_bytes()); // seg_max
    c[20..24].copy_from_slice(&blk_size.to_le_bytes()); // blk_size
    c[36..40].copy_from_slice(&MAX_DISCARD_SECTORS.to_le_bytes()); // max_discard_sectors
    c[40..44].copy_from_slice(&MAX_DISCARD_SEG.to_le_bytes()); // max_discard_seg
    c[44..48].copy_from_slice(&(DIRECT_ALIGN as u32 / 512).to_le_bytes()); // discard_sector_alignment
    c[48..52].copy_from_slice(&MAX_DISCARD_SECTORS.to_le_bytes()); // max_write_zeroes_sectors
    c[52..56].copy_from_slice(&MAX_DISCARD_SEG.to_le_bytes()); // max_write_zeroes_seg
    c[56] = 1; // write_zeroes_may_unmap
    c
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::virtio::read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let Activation {
            mem,
            features,
            mut queues,
            interrupt,
            confinement,
            // Every request completed before a snapshot: nothing to tell.
            resumed: _,
        } = activation;
        let got = queues.len();
        let (Some(active), 1) = (queues.pop(), got) else {
            return Err(ActivateError::QueueCount { got, want: 1 });
        };
        let requests = RequestQueue::new(
            active.queue,
            mem,
            self.disk.clone(),
            features,
            interrupt.clone(),
        )
        .with_kick(active.notify.try_clone()?);
        let work = BlockWorker {
            requests,
            notify: active.notify,
            interrupt,
        };
        self.worker = Some(Worker::spawn("virtio-blk", work, &confinement)?);
        Ok(())
    }

    fn reset(&mut self) {
        // Dropping the worker stops and joins its thread.
        self.worker = None;
    }
}

const QUEUE_TOKEN: u64 = 0;

/// The worker thread's loop: a queue notification serves the queue.
struct BlockWorker {
    requests: RequestQueue,
    notify: EventFd,
    interrupt: Arc<Interrupt>,
}

impl WorkerLoop for BlockWorker {
    fn policy(&self) -> skiff_confine::ThreadPolicy {
        crate::virtio::seccomp::block()
    }

    fn register(&mut self, poller: &Poller) -> io::Result<()> {
        poller.add(self.notify.as_raw_fd(), QUEUE_TOKEN, EventSet::IN)
    }

    fn handle(&mut self, _poller: &Poller, token: u64, _events: EventSet) {
        if token != QUEUE_TOKEN {
            return;
        }
        // Drain the counter first so a notification during processing
        // wakes us again.
        let _ = self.notify.read();
        if self.requests.process() {
            self.interrupt.signal_used();
        }
    }
}
