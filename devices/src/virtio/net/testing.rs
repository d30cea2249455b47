//! Test doubles: a backend that keeps frames in memory and a driver-side
//! view of a queue in test guest memory.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Mutex;

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor, split::VirtqUsedElem, RawDescriptor};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::NetBackend;
use crate::virtio::ActiveQueue;

pub const NEXT: u16 = VRING_DESC_F_NEXT as u16;
pub const WRITE: u16 = VRING_DESC_F_WRITE as u16;

/// Frames to hand the device, frames it sent; `ready` is readable while
/// frames wait, as a tap's fd would be.
pub struct FakeBackend {
    pub inbox: Mutex<VecDeque<Vec<u8>>>,
    pub sent: Mutex<Vec<Vec<u8>>>,
    pub ready: EventFd,
    pub refuse_sends: std::sync::atomic::AtomicBool,
}

impl FakeBackend {
    pub fn new() -> Self {
        Self {
            inbox: Mutex::new(VecDeque::new()),
            sent: Mutex::new(Vec::new()),
            ready: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            refuse_sends: Default::default(),
        }
    }

    pub fn push(&self, frame: Vec<u8>) {
        self.inbox.lock().unwrap().push_back(frame);
        self.ready.write(1).unwrap();
    }

    pub fn sent(&self) -> Vec<Vec<u8>> {
        self.sent.lock().unwrap().clone()
    }
}

impl AsRawFd for FakeBackend {
    fn as_raw_fd(&self) -> RawFd {
        self.ready.as_raw_fd()
    }
}

impl NetBackend for FakeBackend {
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        let mut inbox = self.inbox.lock().unwrap();
        let Some(frame) = inbox.pop_front() else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        if inbox.is_empty() {
            let _ = self.ready.read();
        }
        if frame.len() > buf.len() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "too long"));
        }
        buf[..frame.len()].copy_from_slice(&frame);
        Ok(frame.len())
    }

    fn send(&self, frame: &[u8]) -> io::Result<()> {
        if self.refuse_sends.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(io::ErrorKind::Other.into());
        }
        self.sent.lock().unwrap().push(frame.to_vec());
        Ok(())
    }
}

/// 4 MiB of test guest memory.
pub fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap()
}

/// The driver's side of one queue: posts chains, reads the used ring.
///
/// Not `virtio_queue::mock::MockSplitQueue`: its used ring overlaps the
/// avail ring's `used_event` (it measures the avail ring in elements, not
/// bytes), so event-index tests would read back device writes.
pub struct Driver<'a> {
    mem: &'a GuestMemoryMmap,
    desc: u64,
    avail: u64,
    used: u64,
    len: u16,
    next_desc: u16,
    avail_idx: u16,
}

impl<'a> Driver<'a> {
    /// A queue of `len` (at most 64) entries in the 4 KiB page at `at`.
    pub fn new(mem: &'a GuestMemoryMmap, at: u64, len: u16) -> Self {
        assert!(len <= 64 && at & 0xfff == 0);
        mem.write_slice(&[0u8; 0x1000], GuestAddress(at)).unwrap();
        Self {
            mem,
            desc: at,
            avail: at + 0x400,
            used: at + 0x800,
            len,
            next_desc: 0,
            avail_idx: 0,
        }
    }

    /// The device's side, with event index on.
    pub fn active_queue(&self) -> ActiveQueue {
        let mut queue = Queue::new(self.len).unwrap();
        queue.set_size(self.len);
        queue.set_desc_table_address(Some(self.desc as u32), Some(0));
        queue.set_avail_ring_address(Some(self.avail as u32), Some(0));
        queue.set_used_ring_address(Some(self.used as u32), Some(0));
        queue.set_ready(true);
        queue.set_event_idx(true);
        assert!(queue.is_valid(self.mem));
        ActiveQueue {
            queue,
            notify: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        }
    }

    /// Writes `descs` (addr, len, flags) as one chain, linking them with
    /// NEXT, and makes it available; returns the head index.
    pub fn post(&mut self, descs: &[(u64, u32, u16)]) -> u16 {
        let base = self.next_desc;
        let n = descs.len() as u16;
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let i = i as u16;
            let index = (base + i) % self.len;
            let (flags, next) = if i + 1 < n {
                (flags | NEXT, (index + 1) % self.len)
            } else {
                (flags & !NEXT, 0)
            };
            self.store(index, addr, len, flags, next);
        }
        self.next_desc = (base + n) % self.len;
        self.publish(base)
    }

    /// Writes one raw descriptor.
    pub fn store(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let desc = RawDescriptor::from(Descriptor::new(addr, len, flags, next));
        let at = self.desc + 16 * u64::from(index);
        self.mem.write_obj(desc, GuestAddress(at)).unwrap();
    }

    /// Makes the chain at `head` available.
    pub fn publish(&mut self, head: u16) -> u16 {
        let slot = u64::from(self.avail_idx % self.len);
        self.mem
            .write_obj(head, GuestAddress(self.avail + 4 + 2 * slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .unwrap();
        head
    }

    /// Descriptor indexes reserved for hand-made chains.
    pub fn reserve(&mut self, n: u16) -> u16 {
        let base = self.next_desc;
        self.next_desc = (base + n) % self.len;
        base
    }

    /// (head, length) of every used entry so far.
    pub fn used(&self) -> Vec<(u32, u32)> {
        let idx: u16 = self.mem.read_obj(GuestAddress(self.used + 2)).unwrap();
        (0..idx)
            .map(|i| {
                let at = self.used + 4 + 8 * u64::from(i % self.len);
                let e: VirtqUsedElem = self.mem.read_obj(GuestAddress(at)).unwrap();
                (e.id(), e.len())
            })
            .collect()
    }

    /// Sets used_event, the used index after which the driver wants an
    /// interrupt.
    pub fn set_used_event(&self, value: u16) {
        let at = self.avail + 4 + 2 * u64::from(self.len);
        self.mem.write_obj(value, GuestAddress(at)).unwrap();
    }

    /// avail_event, where the device wants the next notification.
    pub fn avail_event(&self) -> u16 {
        let at = self.used + 4 + 8 * u64::from(self.len);
        self.mem.read_obj(GuestAddress(at)).unwrap()
    }
}
