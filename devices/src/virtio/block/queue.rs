//! Executes virtio-blk requests from one virtqueue and completes them.

use std::sync::Arc;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestMemory, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::disk::{DiskFile, DIRECT_ALIGN};
use super::request::{gather, scatter, to_iovecs, Buffers, Header, RequestError, HEADER_LEN, S_OK};
use super::{ID_BYTES, MAX_DISCARD_SECTORS, MAX_DISCARD_SEG, SECTOR_SIZE};
use crate::virtio::{queue, Interrupt};

/// Size of `struct virtio_blk_discard_write_zeroes`.
const RANGE_LEN: usize = 16;
/// Bytes moved per bounce of a `direct` disk's unaligned request.
const BOUNCE_LEN: usize = 128 << 10;

/// A buffer aligned for O_DIRECT.
#[repr(C, align(4096))]
struct Bounce([u8; BOUNCE_LEN]);

/// One virtqueue of a disk: pops requests, executes them against the
/// image, writes their status and puts them on the used ring.
pub struct RequestQueue {
    queue: Queue,
    /// The guest memory the queue lives in (the executor holds its own
    /// handle to it, so both can be borrowed at once).
    mem: GuestMemoryMmap,
    /// Fails the device when the driver breaks the queue.
    interrupt: Arc<Interrupt>,
    /// The queue's notify eventfd, written when a drain stops at its budget.
    kick: Option<EventFd>,
    exec: Executor,
}

/// Executes one request at a time; apart from the queue so that it can
/// run while the queue is borrowed for popping.
struct Executor {
    mem: GuestMemoryMmap,
    disk: Arc<DiskFile>,
    /// Feature bits the driver accepted.
    features: u64,
    buffers: Buffers,
    iovecs: IoVecs,
    bounce: Option<Box<Bounce>>,
}

/// Reused iovec storage for one request's guest buffers.
struct IoVecs(Vec<libc::iovec>);

// SAFETY: the pointers point into guest memory, which every thread may
// access; they are only used while the request they were built for runs,
// and cleared after it.
unsafe impl Send for IoVecs {}

impl RequestQueue {
    /// `features` are the negotiated ones (they gate discard and
    /// write-zeroes).
    pub fn new(
        queue: Queue,
        mem: GuestMemoryMmap,
        disk: Arc<DiskFile>,
        features: u64,
        interrupt: Arc<Interrupt>,
    ) -> Self {
        Self {
            queue,
            interrupt,
            kick: None,
            mem: mem.clone(),
            exec: Executor {
                mem,
                disk,
                features,
                buffers: Buffers::default(),
                iovecs: IoVecs(Vec::with_capacity(super::MAX_CHAIN_BUFFERS)),
                bounce: None,
            },
        }
    }

    /// Has [`process`](Self::process) write `kick` (the queue's notify
    /// eventfd) when it stops at its budget with requests left.
    pub fn with_kick(mut self, kick: EventFd) -> Self {
        self.kick = Some(kick);
        self
    }

    /// The interrupt through which the queue fails the device.
    pub fn interrupt(&self) -> &Interrupt {
        &self.interrupt
    }

    /// Serves every request the driver has made available. Returns whether
    /// the driver wants an interrupt for the completions.
    pub fn process(&mut self) -> bool {
        let exec = &mut self.exec;
        let kick = self.kick.as_ref();
        queue::drain(&mut self.queue, &self.mem, &self.interrupt, kick, |chain| {
            let head = chain.head_index();
            match exec.buffers.load(&exec.mem, chain) {
                Some(status) => exec.complete(status),
                None => {
                    tracing::debug!("virtio-blk: chain {head} has no status byte, dropped");
                    0
                }
            }
        })
    }
}

impl Executor {
    /// Executes the loaded request and writes its status; returns the
    /// bytes written to the chain (data plus status), 0 if even the status
    /// could not be written.
    fn complete(&mut self, status_addr: vm_memory::GuestAddress) -> u32 {
        let (status, written) = match self.execute() {
            Ok(written) => (S_OK, written),
            Err(e) => {
                tracing::debug!("virtio-blk: request failed: {e}");
                (e.status(), 0)
            }
        };
        self.iovecs.0.clear();
        // A one-byte slice is cheaper than the multi-region `write_obj`.
        match self.mem.get_slice(status_addr, 1) {
            Ok(slice) if slice.write_obj(status, 0).is_ok() => written.saturating_add(1),
            _ => 0,
        }
    }

    /// Returns the data bytes written into the chain.
    fn execute(&mut self) -> Result<u32, RequestError> {
        let Header { kind, sector } = self.buffers.header(&self.mem)?;
        match kind {
            VIRTIO_BLK_T_IN => self.read(sector),
            VIRTIO_BLK_T_OUT => self.write(sector).map(|()| 0),
            VIRTIO_BLK_T_FLUSH => self.disk.flush().map(|()| 0).map_err(Into::into),
            VIRTIO_BLK_T_GET_ID => self.get_id(),
            VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
                self.discard_or_zero(kind).map(|()| 0)
            }
            other => Err(RequestError::Unsupported(other)),
        }
    }

    /// The byte offset of `len` bytes at `sector`, if all of it is on the disk.
    fn byte_range(&self, sector: u64, len: u64) -> Result<u64, RequestError> {
        if !len.is_multiple_of(SECTOR_SIZE) {
            return Err(RequestError::PartialSector(len));
        }
        sector
            .checked_mul(SECTOR_SIZE)
            .filter(|offset| {
                offset
                    .checked_add(len)
                    .is_some_and(|end| end <= self.disk.size())
            })
            .ok_or(RequestError::OutOfRange { sector, len })
    }

    fn read(&mut self, sector: u64) -> Result<u32, RequestError> {
        if self.buffers.readable_data_len() != 0 {
            return Err(RequestError::WrongDirection);
        }
        let len = self.buffers.writable_data_len();
        let offset = self.byte_range(sector, len)?;
        to_iovecs(&self.mem, &self.buffers.writable, 0, &mut self.iovecs.0)?;
        if self.needs_bounce(offset, len) {
            self.bounce_read(offset, len)?;
        } else {
            self.disk.read_vectored_exact(offset, &mut self.iovecs.0)?;
        }
        // The chain's bytes fit a u32 (virtio-queue stops longer chains).
        Ok(u32::try_from(len).unwrap_or(u32::MAX))
    }

    fn write(&mut self, sector: u64) -> Result<(), RequestError> {
        if self.disk.read_only() {
            return Err(RequestError::ReadOnly);
        }
        if self.buffers.writable_data_len() != 0 {
            return Err(RequestError::WrongDirection);
        }
        let len = self.buffers.readable_data_len();
        let offset = self.byte_range(sector, len)?;
        to_iovecs(
            &self.mem,
            &self.buffers.readable,
            HEADER_LEN,
            &mut self.iovecs.0,
        )?;
        if self.needs_bounce(offset, len) {
            self.bounce_write(offset, len)
        } else {
            Ok(self.disk.write_vectored_exact(offset, &mut self.iovecs.0)?)
        }
    }

    fn get_id(&mut self) -> Result<u32, RequestError> {
        if self.buffers.readable_data_len() != 0 {
            return Err(RequestError::WrongDirection);
        }
        let n = usize::try_from(self.buffers.writable_data_len())
            .unwrap_or(usize::MAX)
            .min(ID_BYTES);
        let id = self.disk.id().get(..n).unwrap_or_default();
        scatter(&self.mem, &self.buffers.writable, 0, id)?;
        Ok(n as u32)
    }

    /// DISCARD punches holes; WRITE_ZEROES zeroes (or punches, with UNMAP).
    fn discard_or_zero(&mut self, kind: u32) -> Result<(), RequestError> {
        if self.disk.read_only() {
            return Err(RequestError::ReadOnly);
        }
        let discard = kind == VIRTIO_BLK_T_DISCARD;
        let feature = if discard {
            VIRTIO_BLK_F_DISCARD
        } else {
            VIRTIO_BLK_F_WRITE_ZEROES
        };
        if self.features & (1 << feature) == 0 {
            return Err(RequestError::Unsupported(kind));
        }
        if self.buffers.writable_data_len() != 0 {
            return Err(RequestError::WrongDirection);
        }
        let len = self.buffers.readable_data_len();
        if len == 0 || !len.is_multiple_of(RANGE_LEN as u64) {
            return Err(RequestError::BadRanges("not a whole number of ranges"));
        }
        if len > u64::from(MAX_DISCARD_SEG) * RANGE_LEN as u64 {
            return Err(RequestError::BadRanges("more ranges than max_*_seg"));
        }
        let mut raw = [0u8; MAX_DISCARD_SEG as usize * RANGE_LEN];
        let raw = raw.get_mut(..len as usize).unwrap_or_default();
        gather(&self.mem, &self.buffers.readable, HEADER_LEN, raw)?;
        for range in raw.chunks_exact(RANGE_LEN) {
            let mut sector = [0u8; 8];
            let mut word = [0u8; 4];
            sector.copy_from_slice(range.get(..8).unwrap_or_default());
            word.copy_from_slice(range.get(8..12).unwrap_or_default());
            let sectors = u32::from_le_bytes(word);
            word.copy_from_slice(range.get(12..16).unwrap_or_default());
            let flags = u32::from_le_bytes(word);
            let allowed = if discard {
                0
            } else {
                VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
            };
            if flags & !allowed != 0 {
                return Err(RequestError::UnsupportedFlags(flags));
            }
            if sectors > MAX_DISCARD_SECTORS {
                return Err(RequestError::BadRanges("range longer than max_*_sectors"));
            }
            let bytes = u64::from(sectors) * SECTOR_SIZE;
            let offset = self.byte_range(u64::from_le_bytes(sector), bytes)?;
            if discard || flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0 {
                self.disk.punch_hole(offset, bytes)?;
            } else {
                self.disk.zero_range(offset, bytes)?;
            }
        }
        Ok(())
    }

    /// O_DIRECT needs aligned buffers; guest buffers usually are (Linux
    /// sends page-sized bios), and those that are not take the bounce path.
    fn needs_bounce(&self, offset: u64, len: u64) -> bool {
        let align = DIRECT_ALIGN as usize;
        self.disk.direct()
            && (!offset.is_multiple_of(DIRECT_ALIGN)
                || !len.is_multiple_of(DIRECT_ALIGN)
                || self.iovecs.0.iter().any(|iov| {
                    !(iov.iov_base as usize).is_multiple_of(align)
                        || !iov.iov_len.is_multiple_of(align)
                }))
    }

    fn bounce_buffer(bounce: &mut Option<Box<Bounce>>) -> &mut [u8; BOUNCE_LEN] {
        &mut bounce
            .get_or_insert_with(|| Box::new(Bounce([0; BOUNCE_LEN])))
            .0
    }

    fn bounce_read(&mut self, offset: u64, len: u64) -> Result<(), RequestError> {
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(BOUNCE_LEN as u64) as usize;
            let buf = Self::bounce_buffer(&mut self.bounce)
                .get_mut(..n)
                .unwrap_or_default();
            self.disk.read_exact_at(buf, offset + done)?;
            scatter(&self.mem, &self.buffers.writable, done, buf)?;
            done += n as u64;
        }
        Ok(())
    }

    fn bounce_write(&mut self, offset: u64, len: u64) -> Result<(), RequestError> {
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(BOUNCE_LEN as u64) as usize;
            let buf = Self::bounce_buffer(&mut self.bounce)
                .get_mut(..n)
                .unwrap_or_default();
            gather(&self.mem, &self.buffers.readable, HEADER_LEN + done, buf)?;
            self.disk.write_all_at(buf, offset + done)?;
            done += n as u64;
        }
        Ok(())
    }
}
