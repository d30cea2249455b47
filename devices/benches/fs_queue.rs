//! Host-only benchmark of virtio-fs request processing: 4 KiB FUSE READs
//! of a host file, offered in batches on a split queue in test guest
//! memory and served by `FuseServer::process_queue` (no guest, no worker
//! thread). Prints requests/s.
//!
//! `cargo bench -p skiff-devices --bench fs_queue -- [N]` (default 100000).
//! Per-request cost: run under `valgrind --tool=callgrind` with N and with
//! 0, subtract, divide by N.

use std::mem::size_of;
use std::time::Instant;

use fuse_backend_rs::abi::fuse_abi::{
    EntryOut, InHeader, InitIn, InitOut, Opcode, OpenIn, OpenOut, OutHeader, ReadIn,
};
use skiff_devices::virtio::fs::{CacheMode, FsShare, FuseServer};
use skiff_devices::virtio::test_utils::{
    guest_memory, read_bytes, Buf, GuestHeap, RingLayout, SplitQueueDriver,
};
use skiff_devices::virtio::Interrupt;
use virtio_queue::Queue;
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::tempdir::TempDir;

const QSIZE: u16 = 256;
const HEAP: u64 = 0x1_0000;
const MEM: usize = 0x80_0000;
/// READs in flight per batch: three descriptors each.
const BATCH: u16 = 64;
const READ_SIZE: u32 = 4096;
const FILE_SIZE: usize = 1 << 20;
const OUT: usize = size_of::<OutHeader>();

/// The driver: its queue (rings from address 0, a page apart), the
/// device's side of it, and a heap for requests and replies.
struct Ring {
    mem: GuestMemoryMmap,
    driver: SplitQueueDriver,
    queue: Queue,
    heap: GuestHeap,
    unique: u64,
    interrupt: Interrupt,
}

impl Ring {
    fn new() -> Self {
        let mem = guest_memory(MEM);
        let driver = SplitQueueDriver::new(&mem, RingLayout::paged(0, QSIZE));
        Self {
            queue: driver.queue(),
            mem,
            driver,
            heap: GuestHeap::new(HEAP, MEM as u64),
            unique: 0,
            interrupt: Interrupt::new(
                vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            ),
        }
    }

    fn alloc(&mut self, len: usize) -> u64 {
        self.heap.alloc(len as u64)
    }

    /// Writes a request (header + body) and returns its address and length.
    fn put_request(&mut self, opcode: Opcode, nodeid: u64, body: &[u8]) -> (u64, u32) {
        self.unique += 1;
        let header = InHeader {
            len: (size_of::<InHeader>() + body.len()) as u32,
            opcode: opcode as u32,
            unique: self.unique,
            nodeid,
            ..Default::default()
        };
        let mut bytes = header.as_slice().to_vec();
        bytes.extend_from_slice(body);
        (self.heap.put(&self.mem, &bytes), bytes.len() as u32)
    }

    /// One request with a reply of `T`, served at once; returns the reply body.
    fn call<T: ByteValued>(
        &mut self,
        server: &FuseServer,
        op: Opcode,
        node: u64,
        body: &[u8],
    ) -> T {
        let (req, len) = self.put_request(op, node, body);
        let reply = self.alloc(OUT + size_of::<T>());
        self.driver.push(&[
            Buf::readable(req, len),
            Buf::writable(reply, (OUT + size_of::<T>()) as u32),
        ]);
        server.process_queue(&self.mem, &mut self.queue, &self.interrupt, None);
        let out: OutHeader = self.mem.read_obj(GuestAddress(reply)).unwrap();
        assert_eq!(out.error, 0, "{op:?} failed");
        self.mem.read_obj(GuestAddress(reply + OUT as u64)).unwrap()
    }
}

fn main() {
    let n: u64 = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map(|a| a.parse().expect("N must be a number"))
        .unwrap_or(100_000);

    let dir = TempDir::new().unwrap();
    let data: Vec<u8> = (0..FILE_SIZE).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(dir.as_path().join("data.bin"), &data).unwrap();
    let share = FsShare {
        tag: "bench".into(),
        path: dir.as_path().to_path_buf(),
        read_only: false,
        cache: CacheMode::Auto,
        limits: Default::default(),
    };
    let server = FuseServer::new(&share).unwrap();
    let mut ring = Ring::new();

    let init = InitIn {
        major: 7,
        minor: 31,
        max_readahead: 0x2_0000,
        flags: 0,
    };
    let _: InitOut = ring.call(&server, Opcode::Init, 0, init.as_slice());
    let entry: EntryOut = ring.call(&server, Opcode::Lookup, 1, b"data.bin\0");
    let open = OpenIn {
        flags: libc::O_RDONLY as u32,
        fuse_flags: 0,
    };
    let opened: OpenOut = ring.call(&server, Opcode::Open, entry.nodeid, open.as_slice());

    // BATCH READ chains, laid out once from slot 0 and offered again each
    // round, as a driver recycling its buffers would.
    let mut heads = Vec::new();
    let mut data_bufs = Vec::new();
    for i in 0..BATCH {
        let read = ReadIn {
            fh: opened.fh,
            offset: u64::from(i) * u64::from(READ_SIZE) % FILE_SIZE as u64,
            size: READ_SIZE,
            ..Default::default()
        };
        let (req, len) = ring.put_request(Opcode::Read, entry.nodeid, read.as_slice());
        let out = ring.alloc(OUT);
        let buf = ring.alloc(READ_SIZE as usize);
        heads.push(ring.driver.add_chain_at(
            3 * i,
            &[
                Buf::readable(req, len),
                Buf::writable(out, OUT as u32),
                Buf::writable(buf, READ_SIZE),
            ],
        ));
        data_bufs.push((buf, read.offset));
    }

    // `--seccomp`: the timed loop runs under the fs worker's filter (log
    // mode: its cost, without stopping the bench's own calls).
    if std::env::args().any(|a| a == "--seccomp") {
        skiff_confine::install_for_measurement(&skiff_devices::virtio::seccomp::fs()).unwrap();
    }
    let start = Instant::now();
    let mut done = 0u64;
    while done < n {
        let count = (n - done).min(u64::from(BATCH)) as usize;
        for &head in &heads[..count] {
            ring.driver.offer(head);
        }
        server.process_queue(&ring.mem, &mut ring.queue, &ring.interrupt, None);
        done += count as u64;
    }
    let elapsed = start.elapsed();

    let used = ring.driver.used_idx();
    assert_eq!(u64::from(used), (3 + n) % 65536, "every request answered");
    if n > 0 {
        let (buf, offset) = data_bufs[0];
        let got = read_bytes(&ring.mem, buf, READ_SIZE as usize);
        let offset = offset as usize;
        assert_eq!(got, data[offset..offset + READ_SIZE as usize]);
    }
    let rate = n as f64 / elapsed.as_secs_f64().max(1e-9);
    println!(
        "fs_queue: {n} READs of {READ_SIZE} B in {:.3} s: {rate:.0} requests/s",
        elapsed.as_secs_f64()
    );
}
