//! The FUSE side of the tests' driver: requests written into test guest
//! memory and offered on a split queue ([`crate::virtio::test_utils`]),
//! replies read back.

use std::path::Path;

use fuse_backend_rs::abi::fuse_abi::{GetattrIn, InHeader, InitIn, InitOut, Opcode, OutHeader};
use fuse_backend_rs::api::filesystem::ROOT_ID;
use virtio_queue::Queue;
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use super::{CacheMode, FsShare};
pub use crate::virtio::test_utils::Buf;
use crate::virtio::test_utils::{
    guest_memory, Desc, GuestHeap, RingLayout, SplitQueueDriver, Used,
};

pub const QSIZE: u16 = 16;
pub const MEM_SIZE: u64 = 0x40_0000;

pub fn share(dir: &Path, read_only: bool) -> FsShare {
    FsShare {
        tag: "test".into(),
        path: dir.to_path_buf(),
        read_only,
        cache: CacheMode::Auto,
        limits: Default::default(),
    }
}

pub fn memory() -> GuestMemoryMmap {
    guest_memory(MEM_SIZE as usize)
}

/// The driver's view of one split queue at `base` (descriptors, avail and
/// used ring a page apart), its buffers from a heap, and the FUSE requests
/// it sends; the queue itself is driven by [`SplitQueueDriver`].
pub struct Driver {
    pub mem: GuestMemoryMmap,
    ring: SplitQueueDriver,
    heap: GuestHeap,
    unique: u64,
}

impl Driver {
    /// A queue whose rings live at `base`; buffers come from `heap`.
    pub fn new(mem: &GuestMemoryMmap, base: u64, heap: u64) -> Self {
        Self {
            mem: mem.clone(),
            ring: SplitQueueDriver::new(mem, RingLayout::paged(base, QSIZE)),
            heap: GuestHeap::new(heap, MEM_SIZE),
            unique: 0,
        }
    }

    /// The device's side of the queue, as the transport would hand it over.
    pub fn queue(&self) -> Queue {
        self.ring.queue()
    }

    pub fn alloc(&mut self, len: usize) -> u64 {
        self.heap.alloc(len as u64)
    }

    pub fn put(&mut self, bytes: &[u8]) -> u64 {
        self.heap.put(&self.mem, bytes)
    }

    /// Writes a descriptor at table slot `index`.
    pub fn write_desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        self.ring
            .write_desc(index, Desc::new(addr, len, flags, next));
    }

    /// Offers the chain whose head is table slot `head`.
    pub fn offer(&mut self, head: u16) {
        self.ring.offer(head);
    }

    /// Lays `bufs` out as one chain and offers it; returns the head.
    pub fn push(&mut self, bufs: &[Buf]) -> u16 {
        self.ring.push(bufs)
    }

    pub fn header(&mut self, opcode: u32, nodeid: u64, body_len: usize) -> InHeader {
        self.unique += 1;
        InHeader {
            len: (std::mem::size_of::<InHeader>() + body_len) as u32,
            opcode,
            unique: self.unique,
            nodeid,
            uid: unsafe { libc::geteuid() },
            gid: unsafe { libc::getegid() },
            pid: 1,
            padding: 0,
        }
    }

    /// A whole GETATTR request for the root.
    pub fn getattr_root_bytes(&mut self) -> Vec<u8> {
        let body = GetattrIn::default();
        let header = self.header(Opcode::Getattr as u32, ROOT_ID, body.as_slice().len());
        let mut bytes = header.as_slice().to_vec();
        bytes.extend_from_slice(body.as_slice());
        bytes
    }

    /// Offers a request (header + body in one readable buffer) with a
    /// `reply_len` writable buffer; returns the reply's address.
    pub fn request(&mut self, opcode: u32, nodeid: u64, body: &[u8], reply_len: u32) -> u64 {
        let header = self.header(opcode, nodeid, body.len());
        let mut bytes = header.as_slice().to_vec();
        bytes.extend_from_slice(body);
        let req = self.put(&bytes);
        let reply = self.alloc(reply_len as usize);
        self.push(&[
            Buf::readable(req, bytes.len() as u32),
            Buf::writable(reply, reply_len),
        ]);
        reply
    }

    /// The used entries the device returned since the last call.
    pub fn take_used(&mut self) -> Vec<Used> {
        self.ring.take_used()
    }

    pub fn out_header(&self, reply: u64) -> OutHeader {
        self.mem.read_obj(GuestAddress(reply)).unwrap()
    }

    pub fn reply_body<T: ByteValued>(&self, reply: u64) -> T {
        let at = reply + std::mem::size_of::<OutHeader>() as u64;
        self.mem.read_obj(GuestAddress(at)).unwrap()
    }

    /// The request FUSE_INIT the Linux driver sends first.
    pub fn init_request(&mut self) -> u64 {
        let init = InitIn {
            major: 7,
            minor: 31,
            max_readahead: 0x2_0000,
            flags: 0,
        };
        let len = (std::mem::size_of::<OutHeader>() + std::mem::size_of::<InitOut>()) as u32;
        self.request(Opcode::Init as u32, 0, init.as_slice(), len)
    }
}
