//! Turns a descriptor chain into a virtio-blk request: where the header,
//! the data and the status byte are, checked against guest memory.
//!
//! The chain is read as the spec defines it (virtio 1.2, 5.2.6), not as
//! Linux happens to lay it out: the header is the first 16 device-readable
//! bytes (it may span descriptors), the status is the last byte of the
//! last descriptor, which must be device-writable, and data is what lies
//! between. Nothing here trusts the guest: every length is summed with
//! checked arithmetic and every address is checked before use.
//!
//! It also defines what a request ends in, the status byte ([`S_OK`] and
//! the errors [`RequestError::status`] maps to), so that [`super::queue`]
//! depends on this module and never the other way round.

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap};

use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP};

use super::MAX_CHAIN_BUFFERS;

/// Status byte: the request succeeded.
pub(crate) const S_OK: u8 = VIRTIO_BLK_S_OK as u8;
/// Status byte: the request failed (bad buffers, range, I/O error...).
pub(crate) const S_IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
/// Status byte: the request type or its flags are not supported.
pub(crate) const S_UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

/// Size of `struct virtio_blk_outhdr`: le32 type, le32 reserved, le64 sector.
pub(crate) const HEADER_LEN: u64 = 16;

/// Why a request gets an error status.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RequestError {
    #[error("request type {0} is not supported")]
    Unsupported(u32),
    #[error("chain has more than {MAX_CHAIN_BUFFERS} buffers")]
    TooManyBuffers,
    #[error("device-readable buffer after a device-writable one")]
    Misordered,
    #[error("header is {0} bytes, not 16")]
    ShortHeader(u64),
    #[error("buffer at {0:#x} is not in guest memory")]
    BadMemory(u64),
    #[error("buffers point the wrong way for this request type")]
    WrongDirection,
    #[error("data length {0} is not a whole number of sectors")]
    PartialSector(u64),
    #[error("sector {sector} + {len} bytes is past the end of the disk")]
    OutOfRange { sector: u64, len: u64 },
    #[error("the disk is read-only")]
    ReadOnly,
    #[error("discard/write-zeroes: {0}")]
    BadRanges(&'static str),
    #[error("discard/write-zeroes flags {0:#x} are not supported")]
    UnsupportedFlags(u32),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl RequestError {
    /// The status byte the driver gets.
    pub(crate) fn status(&self) -> u8 {
        match self {
            Self::Unsupported(_) | Self::UnsupportedFlags(_) => S_UNSUPP,
            _ => S_IOERR,
        }
    }
}

/// A guest buffer, not empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
}

/// The request header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub kind: u32,
    pub sector: u64,
}

/// The buffers of one chain, reused from request to request so the data
/// path does not allocate.
#[derive(Default)]
pub(crate) struct Buffers {
    /// Device-readable buffers, header included.
    pub readable: Vec<Segment>,
    /// Device-writable buffers, the status byte excluded.
    pub writable: Vec<Segment>,
    too_many: bool,
    misordered: bool,
}

impl Buffers {
    /// Walks `chain` and returns the address of its status byte, or `None`
    /// when there is no place to answer: an empty chain, one cut short (a
    /// loop, a bad `next`, a bad indirect table), or one whose last byte is
    /// missing, device-readable or outside guest memory. Such chains are
    /// returned to the driver with 0 bytes written.
    pub fn load<M>(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<M>,
    ) -> Option<GuestAddress>
    where
        M: Deref<Target = GuestMemoryMmap>,
    {
        self.readable.clear();
        self.writable.clear();
        self.too_many = false;
        self.misordered = false;
        let mut last = None;
        for desc in chain {
            last = Some(desc);
            if desc.len() == 0 {
                continue;
            }
            if self.readable.len() + self.writable.len() >= MAX_CHAIN_BUFFERS {
                // Keep walking (bounded by the ring) to find the status byte.
                self.too_many = true;
                continue;
            }
            let segment = Segment {
                addr: desc.addr(),
                len: desc.len(),
            };
            if desc.is_write_only() {
                self.writable.push(segment);
            } else {
                self.misordered |= !self.writable.is_empty();
                self.readable.push(segment);
            }
        }
        let last = last?;
        // The iterator stops early without clearing NEXT on the last one it
        // gave: a loop, an index past the table, an unreadable descriptor.
        if last.has_next() || !last.is_write_only() || last.len() == 0 {
            return None;
        }
        let status = last.addr().checked_add(u64::from(last.len()) - 1)?;
        if !mem.address_in_range(status) {
            return None;
        }
        if !self.too_many {
            // The last writable buffer is `last`: give its final byte to the status.
            if let Some(tail) = self.writable.last_mut() {
                tail.len -= 1;
                if tail.len == 0 {
                    self.writable.pop();
                }
            }
        }
        Some(status)
    }

    /// Checks the chain's shape and reads its header.
    pub fn header(&self, mem: &GuestMemoryMmap) -> Result<Header, RequestError> {
        if self.too_many {
            return Err(RequestError::TooManyBuffers);
        }
        if self.misordered {
            return Err(RequestError::Misordered);
        }
        let available = total_len(&self.readable);
        if available < HEADER_LEN {
            return Err(RequestError::ShortHeader(available));
        }
        let mut raw = [0u8; HEADER_LEN as usize];
        // Linux gives the header a buffer of its own: one slice, no gather.
        let first = self
            .readable
            .first()
            .filter(|s| u64::from(s.len) >= HEADER_LEN);
        match first.and_then(|s| mem.get_slice(s.addr, raw.len()).ok()) {
            Some(slice) if slice.copy_to(&mut raw[..]) == raw.len() => {}
            _ => gather(mem, &self.readable, 0, &mut raw)?,
        }
        let [t0, t1, t2, t3, _, _, _, _, s @ ..] = raw;
        Ok(Header {
            kind: u32::from_le_bytes([t0, t1, t2, t3]),
            sector: u64::from_le_bytes(s),
        })
    }

    /// Bytes of device-readable data after the header.
    pub fn readable_data_len(&self) -> u64 {
        total_len(&self.readable).saturating_sub(HEADER_LEN)
    }

    /// Bytes of device-writable data before the status byte.
    pub fn writable_data_len(&self) -> u64 {
        total_len(&self.writable)
    }
}

/// Sum of the lengths; at most [`MAX_CHAIN_BUFFERS`] u32s, so no overflow.
pub(crate) fn total_len(segments: &[Segment]) -> u64 {
    segments.iter().map(|s| u64::from(s.len)).sum()
}

/// Calls `f(address, range of the flat buffer)` for each piece of the
/// byte range `[skip, skip + len)` of `segments` seen as one buffer.
fn for_each_piece(
    segments: &[Segment],
    mut skip: u64,
    len: usize,
    mut f: impl FnMut(GuestAddress, std::ops::Range<usize>) -> Result<(), RequestError>,
) -> Result<(), RequestError> {
    let mut done = 0usize;
    for seg in segments {
        if done == len {
            break;
        }
        let seg_len = u64::from(seg.len);
        if skip >= seg_len {
            skip -= seg_len;
            continue;
        }
        let addr = seg
            .addr
            .checked_add(skip)
            .ok_or(RequestError::BadMemory(seg.addr.raw_value()))?;
        // seg_len - skip fits in u32, so in usize.
        let n = ((seg_len - skip) as usize).min(len - done);
        f(addr, done..done + n)?;
        done += n;
        skip = 0;
    }
    if done < len {
        return Err(RequestError::BadRanges("buffers shorter than the data"));
    }
    Ok(())
}

/// Copies bytes `[skip, skip + out.len())` of `segments` into `out`.
pub(crate) fn gather(
    mem: &GuestMemoryMmap,
    segments: &[Segment],
    skip: u64,
    out: &mut [u8],
) -> Result<(), RequestError> {
    let len = out.len();
    for_each_piece(segments, skip, len, |addr, range| {
        let dst = out.get_mut(range).unwrap_or_default();
        mem.read_slice(dst, addr)
            .map_err(|_| RequestError::BadMemory(addr.raw_value()))
    })
}

/// Copies `data` into bytes `[skip, skip + data.len())` of `segments`.
pub(crate) fn scatter(
    mem: &GuestMemoryMmap,
    segments: &[Segment],
    skip: u64,
    data: &[u8],
) -> Result<(), RequestError> {
    for_each_piece(segments, skip, data.len(), |addr, range| {
        let src = data.get(range).unwrap_or_default();
        mem.write_slice(src, addr)
            .map_err(|_| RequestError::BadMemory(addr.raw_value()))
    })
}

/// Appends one iovec per host-contiguous piece of bytes `[skip, ..)` of
/// `segments`, checking each lies in guest memory.
pub(crate) fn to_iovecs(
    mem: &GuestMemoryMmap,
    segments: &[Segment],
    skip: u64,
    iovecs: &mut Vec<libc::iovec>,
) -> Result<(), RequestError> {
    let len = usize::try_from(total_len(segments).saturating_sub(skip))
        .map_err(|_| RequestError::BadRanges("too long"))?;
    let mut push = |slice: vm_memory::VolatileSlice<()>| {
        iovecs.push(libc::iovec {
            iov_base: slice.ptr_guard_mut().as_ptr().cast(),
            iov_len: slice.len(),
        })
    };
    for_each_piece(segments, skip, len, |addr, range| {
        // Most buffers lie in one region: skip the splitting iterator.
        if let Ok(slice) = mem.get_slice(addr, range.len()) {
            push(slice);
            return Ok(());
        }
        for slice in mem.get_slices(addr, range.len()) {
            push(slice.map_err(|_| RequestError::BadMemory(addr.raw_value()))?);
        }
        Ok(())
    })
}
