//! Test doubles: a backend that keeps frames in memory, and where the
//! tests put their queues (driven through [`crate::virtio::test_utils`]).

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Mutex;

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::NetBackend;
use crate::virtio::test_utils::{guest_memory, RingLayout, SplitQueueDriver};

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
    guest_memory(0x40_0000)
}

/// The driver's side of a queue of `len` (at most 64) entries in the 4 KiB
/// page at `at`: descriptors, then the avail and used rings 1 KiB apart.
pub fn queue_in_page(mem: &GuestMemoryMmap, at: u64, len: u16) -> SplitQueueDriver {
    assert!(len <= 64 && at & 0xfff == 0);
    let layout = RingLayout {
        size: len,
        desc: at,
        avail: at + 0x400,
        used: at + 0x800,
    };
    SplitQueueDriver::new(mem, layout)
}
