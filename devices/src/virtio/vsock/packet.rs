//! Vsock packet headers (virtio 1.2, 5.10.6).
//!
//! Descriptor-chain parsing is the `virtio-vsock` crate's
//! ([`VsockPacket`]); this module adds what it leaves to the device: the
//! header as plain values, its encoding for RX, and the check that a TX
//! packet's `len` matches the space its chain really has.

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use virtio_vsock::packet::{VsockPacket, PKT_HEADER_SIZE};
use vm_memory::GuestMemoryMmap;

pub(crate) use virtio_vsock::packet::PKT_HEADER_SIZE as HEADER_SIZE;

/// The only socket type offered (no VIRTIO_VSOCK_F_SEQPACKET).
pub(crate) const TYPE_STREAM: u16 = 1;

/// Packet operations.
pub(crate) mod op {
    pub const REQUEST: u16 = 1;
    pub const RESPONSE: u16 = 2;
    pub const RST: u16 = 3;
    pub const SHUTDOWN: u16 = 4;
    pub const RW: u16 = 5;
    pub const CREDIT_UPDATE: u16 = 6;
    pub const CREDIT_REQUEST: u16 = 7;
}

/// SHUTDOWN flags: the sender will receive / send no more.
pub(crate) const SHUTDOWN_RCV: u32 = 1;
pub(crate) const SHUTDOWN_SEND: u32 = 2;

/// Largest payload of one packet, both ways: bounds what one TX packet can
/// make the device copy, and matches Linux's VIRTIO_VSOCK_MAX_PKT_BUF_SIZE.
pub(crate) const MAX_PKT_DATA: u32 = 64 * 1024;

/// A packet header as plain values, read once from guest memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl Header {
    pub fn of(pkt: &VsockPacket<'_, ()>) -> Self {
        Self {
            src_cid: pkt.src_cid(),
            dst_cid: pkt.dst_cid(),
            src_port: pkt.src_port(),
            dst_port: pkt.dst_port(),
            len: pkt.len(),
            type_: pkt.type_(),
            op: pkt.op(),
            flags: pkt.flags(),
            buf_alloc: pkt.buf_alloc(),
            fwd_cnt: pkt.fwd_cnt(),
        }
    }

    /// The little-endian wire form.
    pub fn encode(&self) -> [u8; PKT_HEADER_SIZE] {
        let mut b = [0u8; PKT_HEADER_SIZE];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// The RST that answers `self` (addresses swapped).
    pub fn rst_reply(&self) -> Self {
        Self {
            src_cid: self.dst_cid,
            dst_cid: self.src_cid,
            src_port: self.dst_port,
            dst_port: self.src_port,
            type_: TYPE_STREAM,
            op: op::RST,
            ..Self::default()
        }
    }
}

/// Why a TX chain was dropped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PacketError {
    #[error("{0}")]
    Chain(#[from] virtio_vsock::packet::Error),
    #[error("header len {len} does not match the chain's {space} bytes")]
    LengthMismatch { len: u32, space: u64 },
}

/// Parses a TX chain: header, then `len` bytes of payload. The chain must
/// hold exactly header + `len` bytes, as every Linux driver sends them; a
/// guest that says otherwise is confused or hostile.
pub(crate) fn parse_tx<'a, M>(
    mem: &'a GuestMemoryMmap,
    chain: &mut DescriptorChain<M>,
) -> Result<VsockPacket<'a, ()>, PacketError>
where
    M: Deref<Target = GuestMemoryMmap> + Clone,
{
    // The iterator stops at loops (it visits at most queue-size entries).
    let space: u64 = chain.clone().map(|d| u64::from(d.len())).sum();
    let pkt = VsockPacket::from_tx_virtq_chain(mem, chain, MAX_PKT_DATA)?;
    let want = PKT_HEADER_SIZE as u64 + u64::from(pkt.len());
    if space != want {
        return Err(PacketError::LengthMismatch {
            len: pkt.len(),
            space,
        });
    }
    Ok(pkt)
}
