//! Taking descriptor chains from a split queue the guest controls.
//!
//! virtio-queue's `pop_descriptor_chain` answers `None` both when the ring
//! is empty and when the driver's avail index is more than a queue ahead of
//! the device (nonsense), while `enable_notification` keeps answering "more
//! to do": a worker that loops on the two spins forever and never sees its
//! kill eventfd. [`pop`] tells that case from an empty queue; every device
//! answers a [`QueueError`] the same way: it stops serving that queue and
//! marks itself DEVICE_NEEDS_RESET ([`Interrupt::fail`](super::Interrupt::fail))
//! until the driver resets it.
//!
//! A reply buffer that overlaps the avail ring lets the device's own writes
//! change what is available. Mostly that makes the index nonsense (caught
//! above); a crafted one could keep the device busy on its own writes. So
//! [`drain`] serves at most one queue's worth of chains per call and then
//! kicks the queue's eventfd instead of looping: the worker goes back to
//! epoll between rounds and always sees its kill eventfd. Checking every
//! writable buffer against the rings would re-read each descriptor (about
//! 1000 instructions on a 3-descriptor block request, +30%); the budget
//! costs nothing.
//!
//! The transport refuses at activation a queue whose rings overlap each
//! other ([`rings_overlap`]), which covers a driver that sets QUEUE_READY
//! without giving any address (all three rings at guest address 0).

use std::sync::atomic::Ordering;

use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::GuestMemory;

use vmm_sys_util::eventfd::EventFd;

use super::Interrupt;

/// Why a queue can no longer be served.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QueueError {
    #[error("the driver's avail index {avail} is more than the queue size {size} ahead of the device's {next}")]
    AvailIndex { avail: u16, next: u16, size: u16 },
    #[error("the avail ring cannot be read")]
    AvailRing,
}

/// The guest-physical ranges `[start, end)` of a queue's three rings,
/// named. The avail and used rings include their event-index words.
fn rings(queue: &Queue) -> [(&'static str, u64, u64); 3] {
    let size = u64::from(queue.size());
    let area = |start: u64, len: u64| (start, start.saturating_add(len));
    let (d0, d1) = area(queue.desc_table(), 16 * size);
    let (a0, a1) = area(queue.avail_ring(), 6 + 2 * size);
    let (u0, u1) = area(queue.used_ring(), 6 + 8 * size);
    [
        ("descriptor table", d0, d1),
        ("avail ring", a0, a1),
        ("used ring", u0, u1),
    ]
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

/// Whether two of the queue's rings share bytes; such a queue is refused.
pub fn rings_overlap(queue: &Queue) -> bool {
    let [d, a, u] = rings(queue);
    let r = |x: (&str, u64, u64)| (x.1, x.2);
    overlaps(r(d), r(a)) || overlaps(r(d), r(u)) || overlaps(r(a), r(u))
}

/// The used index the device last published for `queue` in guest memory:
/// where a stopped device continues (`virtio::state`). 0 when the ring
/// cannot be read; an unreadable ring refuses activation anyway.
pub fn used_index<M: GuestMemory>(queue: &Queue, mem: &M) -> u16 {
    if !queue.ready() {
        return 0;
    }
    queue
        .used_idx(mem, Ordering::Acquire)
        .map(|index| index.0)
        .unwrap_or(0)
}

/// Checks that the driver's avail index is at most a queue ahead of the
/// device's; past that virtio-queue pops nothing while reporting work.
pub fn check_avail<M: GuestMemory>(queue: &Queue, mem: &M) -> Result<(), QueueError> {
    let avail = queue
        .avail_idx(mem, Ordering::Acquire)
        .map_err(|_| QueueError::AvailRing)?
        .0;
    let next = queue.next_avail();
    let size = queue.size();
    if avail.wrapping_sub(next) > size {
        return Err(QueueError::AvailIndex { avail, next, size });
    }
    Ok(())
}

/// Takes the next chain the driver made available: `Ok(None)` when there
/// is none, an error when the queue is broken (see the module doc).
pub fn pop<'m, M: GuestMemory>(
    queue: &mut Queue,
    mem: &'m M,
) -> Result<Option<DescriptorChain<&'m M>>, QueueError> {
    check_avail(queue, mem)?;
    Ok(queue.pop_descriptor_chain(mem))
}

/// Serves the chains the driver has made available: `serve` returns the
/// bytes it wrote into the chain, which goes on the used ring.
/// Notifications are re-enabled and the ring looked at again, so a chain
/// added meanwhile is not left waiting (virtio 1.2, 2.7.10). After a
/// queue's worth of chains `kick` (the queue's notify eventfd) is written
/// and the call returns, so the worker's loop runs again (see the module
/// doc). A broken queue fails the device and ends the loop; a device that
/// already needs a reset serves nothing. Returns whether the driver wants
/// an interrupt.
pub fn drain<M: GuestMemory>(
    queue: &mut Queue,
    mem: &M,
    interrupt: &Interrupt,
    kick: Option<&EventFd>,
    mut serve: impl FnMut(DescriptorChain<&M>) -> u32,
) -> bool {
    let mut used = 0u32;
    let budget = u32::from(queue.size());
    'rounds: while !interrupt.needs_reset() {
        if let Err(e) = queue.disable_notification(mem) {
            interrupt.fail(&format_args!("cannot disable notifications: {e}"));
            break;
        }
        if let Err(e) = check_avail(queue, mem) {
            interrupt.fail(&e);
            break;
        }
        let mut popped = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            popped = true;
            let head = chain.head_index();
            let len = serve(chain);
            if let Err(e) = queue.add_used(mem, head, len) {
                interrupt.fail(&format_args!("cannot return chain {head}: {e}"));
                break 'rounds;
            }
            used += 1;
            if used >= budget {
                // Come back through the worker's epoll loop.
                if let Some(kick) = kick {
                    let _ = kick.write(1);
                }
                break 'rounds;
            }
        }
        match queue.enable_notification(mem) {
            // The index was checked: "more" is real work, or a nonsense
            // index written meanwhile, which the next round catches.
            Ok(true) if popped => continue,
            // More reported, yet nothing could be popped (a ring entry
            // virtio-queue cannot read): broken, not busy.
            Ok(true) => {
                interrupt.fail(&"the driver reports chains the device cannot read");
                break;
            }
            Ok(false) => break,
            Err(e) => {
                interrupt.fail(&format_args!("cannot enable notifications: {e}"));
                break;
            }
        }
    }
    used > 0 && queue.needs_notification(mem).unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::split::Descriptor;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    const SIZE: u16 = 8;
    const DESC: u64 = 0x1000;
    const AVAIL: u64 = 0x2000;
    const USED: u64 = 0x3000;

    fn setup() -> (GuestMemoryMmap, Queue) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let mut q = Queue::new(SIZE).unwrap();
        q.set_desc_table_address(Some(DESC as u32), Some(0));
        q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
        q.set_used_ring_address(Some(USED as u32), Some(0));
        q.set_ready(true);
        (mem, q)
    }

    /// Offers one chain of one buffer at `addr` (device-writable if `write`).
    fn offer(mem: &GuestMemoryMmap, slot: u16, addr: u64, write: bool) {
        let flags = if write { 2 } else { 0 };
        let d = Descriptor::new(addr, 64, flags, 0);
        mem.write_obj(d, GuestAddress(DESC + 16 * u64::from(slot)))
            .unwrap();
        mem.write_obj(slot, GuestAddress(AVAIL + 4 + 2 * u64::from(slot)))
            .unwrap();
        mem.write_obj(slot + 1, GuestAddress(AVAIL + 2)).unwrap();
    }

    #[test]
    fn an_empty_queue_pops_nothing_and_a_chain_pops() {
        let (mem, mut q) = setup();
        assert!(pop(&mut q, &mem).unwrap().is_none());
        offer(&mem, 0, 0x8000, true);
        assert_eq!(pop(&mut q, &mem).unwrap().unwrap().head_index(), 0);
        assert!(pop(&mut q, &mem).unwrap().is_none());
    }

    #[test]
    fn an_avail_index_beyond_the_queue_size_is_an_error_not_an_empty_queue() {
        let (mem, mut q) = setup();
        // virtio-queue alone pops nothing here and enable_notification says
        // there is more: the loop that spun.
        mem.write_obj(SIZE + 1, GuestAddress(AVAIL + 2)).unwrap();
        assert!(q.pop_descriptor_chain(&mem).is_none());
        assert!(q.enable_notification(&mem).unwrap());
        assert_eq!(
            pop(&mut q, &mem).unwrap_err(),
            QueueError::AvailIndex {
                avail: SIZE + 1,
                next: 0,
                size: SIZE
            }
        );
        // Exactly one full ring ahead is legal.
        mem.write_obj(SIZE, GuestAddress(AVAIL + 2)).unwrap();
        assert!(pop(&mut q, &mem).is_ok());
    }

    #[test]
    fn a_drain_serves_one_queue_worth_then_kicks_its_eventfd() {
        let (mem, mut q) = setup();
        let interrupt = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        // The device's "reply" re-offers the chain forever, as a reply
        // buffer over the avail ring could.
        let mut served = 0;
        let mut idx = 1u16;
        offer(&mem, 0, 0x8000, true);
        let notify = drain(&mut q, &mem, &interrupt, Some(&kick), |_| {
            served += 1;
            let slot = idx % SIZE;
            mem.write_obj(slot, GuestAddress(AVAIL + 4 + 2 * u64::from(slot)))
                .unwrap();
            idx = idx.wrapping_add(1);
            mem.write_obj(idx, GuestAddress(AVAIL + 2)).unwrap();
            1
        });
        assert!(notify);
        assert_eq!(served, SIZE);
        assert_eq!(kick.read().unwrap(), 1);
        assert!(!interrupt.needs_reset());
    }

    #[test]
    fn a_queue_that_reports_chains_it_cannot_yield_fails_instead_of_spinning() {
        // An avail ring whose entries lie past the end of guest memory (a
        // queue the transport would refuse, handed over directly): the
        // index reads, the entries do not, virtio-queue pops nothing.
        let mem: GuestMemoryMmap =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let mut q = Queue::new(SIZE).unwrap();
        q.set_desc_table_address(Some(DESC as u32), Some(0));
        q.set_avail_ring_address(Some(0x10_0000 - 4), Some(0));
        q.set_used_ring_address(Some(USED as u32), Some(0));
        q.set_ready(true);
        mem.write_obj(1u16, GuestAddress(0x10_0000 - 2)).unwrap();
        let interrupt = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let notify = drain(&mut q, &mem, &interrupt, None, |_| 0);
            let _ = tx.send((notify, interrupt.needs_reset()));
        });
        let (notify, needs_reset) = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("drain spun");
        assert!(!notify && needs_reset);
    }

    #[test]
    fn rings_at_one_address_overlap() {
        let (_, q) = setup();
        assert!(!rings_overlap(&q));
        let mut q = Queue::new(SIZE).unwrap();
        q.set_ready(true);
        // No address given: every ring at 0.
        assert!(rings_overlap(&q));
        q.set_desc_table_address(Some(DESC as u32), Some(0));
        q.set_avail_ring_address(Some((DESC + 16 * 8 - 2) as u32), Some(0));
        q.set_used_ring_address(Some(USED as u32), Some(0));
        assert!(rings_overlap(&q));
    }
}
