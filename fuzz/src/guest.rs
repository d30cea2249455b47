//! What every queue target shares: guest memory, the driver side of the
//! device's queues (skiff-devices' `test_utils`), the decoding of generic
//! driver actions, and the used-ring invariants checked after every call
//! into a device.

use std::collections::HashMap;

use skiff_devices::virtio::test_utils::{
    guest_memory, memory_end, write_bytes, Buf, Desc, GuestHeap, RingLayout, SplitQueueDriver,
    Used, F_INDIRECT, F_NEXT, F_WRITE,
};
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use crate::input::{Input, Seed};

/// Guest memory of every queue target.
pub const MEM_SIZE: usize = 2 << 20;
/// Each queue's rings live in their own 16 KiB below the heap.
const RING_SPAN: u64 = 0x4000;
pub const HEAP_START: u64 = 0x1_0000;
pub const HEAP_END: u64 = MEM_SIZE as u64;
/// Most actions one input runs, so every input finishes quickly.
pub const MAX_ACTIONS: usize = 96;
/// Buffers remembered for [`AddrSel`] `Recent`.
const RECENT: usize = 16;

/// Generic action tags; a target's own tags come after these.
pub mod tag {
    /// A chain of arbitrary buffers (optionally indirect), offered or not.
    pub const RAW_CHAIN: u8 = 0;
    /// One descriptor written at any table slot.
    pub const RAW_DESC: u8 = 1;
    /// Any head number put on the avail ring.
    pub const OFFER: u8 = 2;
    /// Any avail index published (nonsense included).
    pub const AVAIL_IDX: u8 = 3;
    /// Bytes written anywhere in guest memory (rings included).
    pub const POKE: u8 = 4;
    /// `used_event` or `avail.flags`.
    pub const EVENT: u8 = 5;
    /// Count of generic tags.
    pub const COMMON: u8 = 6;
}

/// How a buffer address is chosen (first byte, mod 6):
/// 0 fresh heap buffer, 1 a ring of a queue plus an offset, 2 any u64,
/// 3 just below the end of memory, 4 a recent buffer, 5 address 0.
pub mod addr {
    pub const HEAP: u8 = 0;
    pub const RING: u8 = 1;
    pub const RAW: u8 = 2;
    pub const NEAR_END: u8 = 3;
    pub const RECENT: u8 = 4;
    pub const ZERO: u8 = 5;
}

/// The guest side of one device.
pub struct Guest {
    pub mem: GuestMemoryMmap,
    pub heap: GuestHeap,
    pub queues: Vec<SplitQueueDriver>,
    recent: Vec<(u64, u32)>,
    /// The harness itself wrote over a used ring since the queue's last
    /// reset: what the driver reads there proves nothing about the device.
    tainted: Vec<bool>,
}

/// The chains on a queue's avail ring as they were before the device
/// ran (it may rewrite descriptors it was given as writable buffers), with
/// their writable bytes, whether any of them lets the device write over a
/// ring (a guest that does so corrupts its own used ring; the used-ring
/// checks are then skipped), and whether two of them share writable bytes
/// (then what one reply holds may be another's).
pub struct Bounds {
    chains: HashMap<u16, (Vec<Desc>, u64)>,
    hostile: bool,
    pub shared: bool,
}

impl Bounds {
    /// For a device call that serves several queues: a chain on any of
    /// them that writes over a ring or another's buffers makes all suspect.
    pub fn share_hostility(all: &mut [Bounds]) {
        let hostile = all.iter().any(|b| b.hostile);
        let shared = all.iter().any(|b| b.shared);
        for b in all {
            b.hostile = hostile;
            b.shared = shared;
        }
    }

    /// The chain at `head` as the device found it.
    pub fn chain(&self, head: u16) -> Option<&[Desc]> {
        self.chains.get(&head).map(|(c, _)| &c[..])
    }
}

impl Guest {
    /// Reads the queue setup: one byte of log2 queue size (clamped to each
    /// queue's `max`) and one of layout mode (0-1 a page per ring part,
    /// 2 packed, 3 queue 0's avail ring at guest address 0).
    pub fn new(inp: &mut Input, max_sizes: &[u16]) -> Self {
        let order = inp.below(16);
        let mut mode = inp.below(4);
        if mode == 3 && crate::skip("avail-at-0") {
            mode = 0;
        }
        let mem = guest_memory(MEM_SIZE);
        let queues: Vec<_> = max_sizes
            .iter()
            .enumerate()
            .map(|(i, &max)| {
                let size = (1u16 << order.min(15)).min(max.max(1));
                let base = RING_SPAN * i as u64;
                let layout = match mode {
                    2 => RingLayout::packed(base, size),
                    3 if i == 0 => RingLayout {
                        size,
                        avail: 0,
                        desc: 0x1000,
                        used: 0x2000,
                    },
                    _ => RingLayout::paged(base, size),
                };
                debug_assert!(layout.end() <= base + RING_SPAN || mode == 3);
                SplitQueueDriver::new(&mem, layout)
            })
            .collect();
        let tainted = vec![false; queues.len()];
        Self {
            mem,
            heap: GuestHeap::new(HEAP_START, HEAP_END),
            queues,
            recent: Vec::new(),
            tainted,
        }
    }

    /// The device's side of queue `q`.
    pub fn device_queue(&self, q: usize, max: u16, event_idx: bool) -> Queue {
        self.queues[q].queue_with_max(max, event_idx)
    }

    /// Zeroes queue `q`'s rings and forgets what the driver offered (a
    /// device reset).
    pub fn reset_queue(&mut self, q: usize) {
        let layout = self.queues[q].layout();
        self.queues[q] = SplitQueueDriver::new(&self.mem, layout);
        self.tainted[q] = false;
    }

    /// Writes guest bytes for the driver, noting any used ring they hit.
    fn write(&mut self, addr: u64, bytes: &[u8]) {
        if write_bytes(&self.mem, addr, bytes) {
            self.note_write(addr, bytes.len() as u64);
        }
    }

    fn note_write(&mut self, addr: u64, len: u64) {
        for (q, d) in self.queues.iter().enumerate() {
            let l = d.layout();
            if addr < l.used.saturating_add(l.used_len()) && l.used < addr.saturating_add(len) {
                self.tainted[q] = true;
            }
        }
    }

    /// Whether a device write to `[addr, addr + len)` would land in a ring.
    fn hits_a_ring(&self, addr: u64, len: u64) -> bool {
        self.queues.iter().any(|d| d.layout().touches(addr, len))
    }

    /// Picks a queue from one byte.
    pub fn pick_queue(&self, inp: &mut Input) -> usize {
        usize::from(inp.u8()) % self.queues.len().max(1)
    }

    /// A heap buffer of `len` bytes (reusing the heap from the bottom when
    /// full); one too big for the heap starts at its bottom and runs off
    /// the end of memory.
    pub fn alloc(&mut self, len: u64) -> u64 {
        // A buffer of half the heap or more would make every other buffer
        // start over: it overlaps them instead.
        let addr = if len > (HEAP_END - HEAP_START) / 2 {
            HEAP_START
        } else {
            self.heap.alloc_wrapping(len).unwrap_or(HEAP_START)
        };
        self.recent
            .push((addr, len.min(u64::from(u32::MAX)) as u32));
        if self.recent.len() > RECENT {
            self.recent.remove(0);
        }
        addr
    }

    /// Decodes an address for a buffer of `len` bytes (see [`addr`]).
    pub fn addr(&mut self, inp: &mut Input, len: u64) -> u64 {
        match inp.below(6) {
            addr::HEAP => self.alloc(len),
            addr::RING => {
                let q = self.pick_queue(inp);
                let part = inp.below(3);
                let off = u64::from(inp.u16() % 0x1000);
                let l = self.queues[q].layout();
                [l.desc, l.avail, l.used][usize::from(part)].wrapping_add(off)
            }
            addr::RAW => inp.u64(),
            addr::NEAR_END => memory_end(&self.mem).wrapping_sub(u64::from(inp.u16())),
            addr::RECENT => {
                let i = usize::from(inp.u8());
                match self.recent.len() {
                    0 => self.alloc(len),
                    n => self.recent[n - 1 - i % n].0,
                }
            }
            _ => 0,
        }
    }

    /// Decodes a generic buffer length: small, u16, u32, whole sectors or
    /// whole pages (first byte mod 5).
    pub fn len(inp: &mut Input) -> u32 {
        match inp.below(5) {
            0 => u32::from(inp.u8()),
            1 => u32::from(inp.u16()),
            2 => inp.u32(),
            3 => 512 * u32::from(inp.u8()),
            _ => 4096 * u32::from(inp.below(17)),
        }
    }

    /// Writes `bytes` into a fresh heap buffer; returns its address.
    pub fn put(&mut self, bytes: &[u8]) -> u64 {
        let addr = self.alloc(bytes.len() as u64);
        self.write(addr, bytes);
        addr
    }

    /// Lays `bufs` out as a chain on queue `q` (indirect: one ring slot
    /// pointing at a heap table) and offers it; returns the head.
    pub fn push(&mut self, q: usize, bufs: &[Buf], indirect: bool) -> u16 {
        let head = if indirect {
            let table = self.alloc(16 * bufs.len() as u64);
            self.queues[q].add_indirect_chain(table, bufs)
        } else {
            self.queues[q].add_chain(bufs)
        };
        self.queues[q].offer(head);
        head
    }

    /// Whether the used ring of `q` can no longer be trusted (the driver
    /// wrote over it).
    pub fn tainted(&self, q: usize) -> bool {
        self.tainted[q]
    }

    /// Runs generic action `t` (< [`tag::COMMON`]).
    pub fn common(&mut self, t: u8, inp: &mut Input) {
        match t {
            tag::RAW_CHAIN => {
                let q = self.pick_queue(inp);
                let n = 1 + usize::from(inp.below(8));
                let indirect = inp.bool();
                let mut bufs = Vec::with_capacity(n);
                for _ in 0..n {
                    let write = inp.bool();
                    let len = Self::len(inp);
                    let addr = self.addr(inp, u64::from(len));
                    bufs.push(Buf { addr, len, write });
                }
                let fill = inp.blob(64);
                if let Some(b) = bufs.first().filter(|b| !b.write) {
                    let addr = b.addr;
                    self.write(addr, fill);
                }
                match inp.below(3) {
                    0 => {
                        self.push(q, &bufs, indirect);
                    }
                    1 => {
                        self.queues[q].add_chain(&bufs);
                    }
                    _ => {
                        let head = self.push(q, &bufs, indirect);
                        self.queues[q].offer(head);
                    }
                }
            }
            tag::RAW_DESC => {
                let q = self.pick_queue(inp);
                let index = inp.u16();
                let len = inp.u32();
                let addr = self.addr(inp, u64::from(len));
                let flags = inp.u16();
                let next = inp.u16();
                self.queues[q].write_desc(index, Desc::new(addr, len, flags, next));
            }
            tag::OFFER => {
                let q = self.pick_queue(inp);
                let head = inp.u16();
                self.queues[q].offer(head);
            }
            tag::AVAIL_IDX => {
                let q = self.pick_queue(inp);
                let idx = inp.u16();
                self.queues[q].set_avail_idx(idx);
            }
            tag::POKE => {
                let bytes = inp.blob(64);
                let addr = self.addr(inp, bytes.len() as u64);
                self.write(addr, bytes);
            }
            _ => {
                let q = self.pick_queue(inp);
                let which = inp.bool();
                let v = inp.u16();
                if which {
                    self.queues[q].set_used_event(v);
                } else {
                    self.queues[q].set_avail_flags(v);
                }
            }
        }
    }

    /// Takes the writable-byte bounds of every chain on queue `q`'s avail
    /// ring; call right before the device runs.
    pub fn bounds(&self, q: usize) -> Bounds {
        let d = &self.queues[q];
        let size = d.size().max(1);
        // Every slot of the ring: the device's own position (its next
        // avail index) is not visible here and can differ from what the
        // driver has seen come back (an RX device pops ahead, a guest
        // rewrites its indexes), so a chain in any slot may be served.
        let start = d.used_seen();
        let window = size;
        let mut chains = HashMap::new();
        let mut hostile = false;
        let mut ranges = Vec::new();
        for i in 0..window {
            let head = d.avail_slot(start.wrapping_add(i) % size);
            let chain = chains.entry(head).or_insert_with(|| {
                let chain = d.chain(head);
                let writable = chain
                    .iter()
                    .filter(|b| b.is_write())
                    .map(|b| u64::from(b.len))
                    .sum();
                (chain, writable)
            });
            for b in chain.0.iter().filter(|b| b.is_write() && b.len > 0) {
                hostile |= self.hits_a_ring(b.addr, u64::from(b.len));
                ranges.push((b.addr, b.addr.saturating_add(u64::from(b.len))));
            }
        }
        ranges.sort_unstable();
        let shared = ranges.windows(2).any(|w| w[1].0 < w[0].1);
        Bounds {
            chains,
            hostile,
            shared,
        }
    }

    /// Checks what the device put on queue `q`'s used ring since the last
    /// check and returns it. Panics (a fuzzer finding) when the device
    /// returned a head outside the ring, more entries than the ring holds,
    /// or a used length above the chain's writable bytes.
    pub fn check_used(&mut self, q: usize, before: &Bounds, what: &str) -> Vec<Used> {
        // A device write through a buffer over a ring can land on any
        // queue's used index: from then on those indexes say nothing about
        // what the device published, until a reset.
        if before.hostile {
            self.tainted.iter_mut().for_each(|t| *t = true);
        }
        if self.tainted[q] {
            self.queues[q].take_used();
            return Vec::new();
        }
        let d = &mut self.queues[q];
        let size = d.size();
        let pending = d.used_pending();
        assert!(
            pending <= size,
            "{what}: the device published {pending} used entries at once on a queue of {size}"
        );
        let used = d.take_used();
        for u in &used {
            assert!(
                u.id < u32::from(size),
                "{what}: used entry for head {} on a queue of {size}",
                u.id
            );
            let head = u.id as u16;
            let bound = before
                .chains
                .get(&head)
                .map_or(0, |c| c.1)
                .max(d.writable_len(head));
            assert!(
                u64::from(u.len) <= bound,
                "{what}: used length {} for head {head} exceeds the chain's {bound} writable bytes",
                u.len
            );
        }
        used
    }
}

/// Seed writers for the generic part of every input.
pub mod seed {
    use super::*;

    /// Queue setup: `order` = log2 of the queue size, `mode` the layout.
    pub fn setup(s: &mut Seed, order: u8, mode: u8) {
        s.u8(order).u8(mode);
    }

    /// `tag::RAW_CHAIN` on queue `q`: (write, len, fresh heap buffer)
    /// each, offered once.
    pub fn raw_chain(s: &mut Seed, q: u8, bufs: &[(bool, u32)], indirect: bool) {
        s.u8(tag::RAW_CHAIN)
            .u8(q)
            .u8((bufs.len() - 1) as u8)
            .u8(indirect.into());
        for &(write, len) in bufs {
            s.u8(write.into()).u8(2).u32(len).u8(addr::HEAP);
        }
        s.blob(b"").u8(0);
    }

    pub fn avail_idx(s: &mut Seed, q: u8, idx: u16) {
        s.u8(tag::AVAIL_IDX).u8(q).u16(idx);
    }

    pub fn offer(s: &mut Seed, q: u8, head: u16) {
        s.u8(tag::OFFER).u8(q).u16(head);
    }

    /// One descriptor at `index`, its buffer at a raw address.
    pub fn raw_desc(s: &mut Seed, q: u8, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        s.u8(tag::RAW_DESC)
            .u8(q)
            .u16(index)
            .u32(len)
            .u8(super::addr::RAW)
            .u64(addr);
        s.u16(flags).u16(next);
    }

    /// Flags for [`raw_desc`].
    pub const NEXT: u16 = F_NEXT;
    pub const WRITE: u16 = F_WRITE;
    pub const INDIRECT: u16 = F_INDIRECT;
}
