//! Checks a descriptor chain the guest posted before the device touches
//! the memory it names.
//!
//! virtio-queue's chain iterator stops quietly at a loop, a next index
//! outside the table or an unreadable descriptor; the last descriptor it
//! returned then still says "next", which is how a cut chain is told from
//! a complete one.

use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap};

/// One guest buffer of a checked chain, known to lie in guest memory.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Buffer {
    pub addr: GuestAddress,
    pub len: u32,
}

/// Why a chain cannot be used; the chain goes back with 0 bytes used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum ChainError {
    #[error("chain is cut short (a loop, a bad next index or an unreadable descriptor)")]
    Truncated,
    #[error("descriptor of zero length")]
    ZeroLength,
    #[error("a {0} descriptor where the device needs the other direction")]
    WrongDirection(&'static str),
    #[error("descriptor {addr:#x}+{len} lies outside guest memory")]
    OutsideMemory { addr: u64, len: u32 },
    #[error("guest memory access failed")]
    Memory,
    #[error("chain of {0} bytes is shorter than the virtio-net header")]
    TooShort(u64),
    #[error("chain holds more than {0} bytes")]
    TooLong(u64),
}

/// Fills `out` with the buffers of `chain`, which must all be
/// device-writable (`writable`) or all device-readable, and returns their
/// total length, at most `max_len`.
pub(crate) fn collect(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    writable: bool,
    max_len: u64,
    out: &mut Vec<Buffer>,
) -> Result<u64, ChainError> {
    out.clear();
    let mut total = 0u64;
    let mut cut = true; // an empty chain is cut too
    for desc in chain {
        cut = desc.has_next();
        if desc.is_write_only() != writable {
            return Err(ChainError::WrongDirection(if writable {
                "device-readable"
            } else {
                "device-writable"
            }));
        }
        if desc.len() == 0 {
            return Err(ChainError::ZeroLength);
        }
        if !mem.check_range(desc.addr(), desc.len() as usize) {
            return Err(ChainError::OutsideMemory {
                addr: desc.addr().0,
                len: desc.len(),
            });
        }
        total = total
            .checked_add(u64::from(desc.len()))
            .filter(|&t| t <= max_len)
            .ok_or(ChainError::TooLong(max_len))?;
        out.push(Buffer {
            addr: desc.addr(),
            len: desc.len(),
        });
    }
    if cut {
        return Err(ChainError::Truncated);
    }
    Ok(total)
}

/// Copies the start of the chain's buffers into `dst`, which is no longer
/// than their total.
pub(crate) fn gather(
    mem: &GuestMemoryMmap,
    bufs: &[Buffer],
    dst: &mut [u8],
) -> Result<(), vm_memory::GuestMemoryError> {
    let mut rest = dst;
    for buf in bufs {
        if rest.is_empty() {
            break;
        }
        let n = rest.len().min(buf.len as usize);
        let (head, tail) = rest.split_at_mut(n);
        mem.read_slice(head, buf.addr)?;
        rest = tail;
    }
    Ok(())
}

/// Copies `src` into the chain's buffers, which together hold at least
/// `src.len()` bytes.
pub(crate) fn scatter(
    mem: &GuestMemoryMmap,
    bufs: &[Buffer],
    src: &[u8],
) -> Result<(), vm_memory::GuestMemoryError> {
    let mut rest = src;
    for buf in bufs {
        if rest.is_empty() {
            break;
        }
        let n = rest.len().min(buf.len as usize);
        let (head, tail) = rest.split_at(n);
        mem.write_slice(head, buf.addr)?;
        rest = tail;
    }
    Ok(())
}
