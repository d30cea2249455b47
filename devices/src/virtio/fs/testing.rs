//! A minimal driver side for the tests: a split queue in test guest
//! memory, FUSE requests written into it, replies read back.

use std::path::Path;

use fuse_backend_rs::abi::fuse_abi::{GetattrIn, InHeader, InitIn, InitOut, Opcode, OutHeader};
use fuse_backend_rs::api::filesystem::ROOT_ID;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use super::{CacheMode, FsShare};

pub const QSIZE: u16 = 16;
pub const MEM_SIZE: u64 = 0x40_0000;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

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
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
}

/// One descriptor as the test lays it out.
#[derive(Clone, Copy)]
pub struct Buf {
    pub addr: u64,
    pub len: u32,
    pub write: bool,
}

/// The driver's view of one split queue at `base`.
pub struct Driver {
    pub mem: GuestMemoryMmap,
    base: u64,
    avail_idx: u16,
    used_seen: u16,
    next_desc: u16,
    heap: u64,
    unique: u64,
}

impl Driver {
    /// A queue whose rings live at `base`; buffers come from `heap`.
    pub fn new(mem: &GuestMemoryMmap, base: u64, heap: u64) -> Self {
        Self {
            mem: mem.clone(),
            base,
            avail_idx: 0,
            used_seen: 0,
            next_desc: 0,
            heap,
            unique: 0,
        }
    }

    fn desc_table(&self) -> u64 {
        self.base
    }
    fn avail(&self) -> u64 {
        self.base + 0x1000
    }
    fn used(&self) -> u64 {
        self.base + 0x2000
    }

    /// The device's side of the queue, as the transport would hand it over.
    pub fn queue(&self) -> Queue {
        let mut q = Queue::new(QSIZE).unwrap();
        q.set_size(QSIZE);
        q.set_desc_table_address(Some(self.desc_table() as u32), Some(0));
        q.set_avail_ring_address(Some(self.avail() as u32), Some(0));
        q.set_used_ring_address(Some(self.used() as u32), Some(0));
        q.set_ready(true);
        q
    }

    pub fn alloc(&mut self, len: usize) -> u64 {
        let addr = self.heap;
        self.heap += (len as u64 + 7) & !7;
        assert!(self.heap < MEM_SIZE, "test heap exhausted");
        addr
    }

    pub fn put(&mut self, bytes: &[u8]) -> u64 {
        let addr = self.alloc(bytes.len());
        self.mem.write_slice(bytes, GuestAddress(addr)).unwrap();
        addr
    }

    /// Writes a descriptor at table slot `index`.
    pub fn write_desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = Descriptor::new(addr, len, flags, next);
        let at = self.desc_table() + u64::from(index) * 16;
        self.mem.write_obj(d, GuestAddress(at)).unwrap();
    }

    /// Offers the chain whose head is table slot `head`.
    pub fn offer(&mut self, head: u16) {
        let slot = self.avail() + 4 + u64::from(self.avail_idx % QSIZE) * 2;
        self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx, GuestAddress(self.avail() + 2))
            .unwrap();
    }

    /// Lays `bufs` out as one chain and offers it; returns the head.
    pub fn push(&mut self, bufs: &[Buf]) -> u16 {
        let head = self.next_desc;
        for (i, b) in bufs.iter().enumerate() {
            let index = (head + i as u16) % QSIZE;
            let last = i + 1 == bufs.len();
            let flags = if b.write { F_WRITE } else { 0 } | if last { 0 } else { F_NEXT };
            self.write_desc(index, b.addr, b.len, flags, (index + 1) % QSIZE);
        }
        self.next_desc = (head + bufs.len() as u16) % QSIZE;
        self.offer(head);
        head
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
            Buf {
                addr: req,
                len: bytes.len() as u32,
                write: false,
            },
            Buf {
                addr: reply,
                len: reply_len,
                write: true,
            },
        ]);
        reply
    }

    /// The used entries the device returned since the last call.
    pub fn take_used(&mut self) -> Vec<(u32, u32)> {
        let idx: u16 = self.mem.read_obj(GuestAddress(self.used() + 2)).unwrap();
        let mut out = Vec::new();
        while self.used_seen != idx {
            let at = self.used() + 4 + u64::from(self.used_seen % QSIZE) * 8;
            let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
            let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
            out.push((id, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
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
