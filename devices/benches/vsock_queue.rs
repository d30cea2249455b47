//! Host-only benchmark of the vsock TX path: N 4 KiB RW packets on an
//! established guest-initiated connection, through the device's own queue
//! processing (`VsockWorker::process_tx` + `process_rx`, as the worker
//! thread runs them after a TX kick), the host end drained between batches.
//!
//!   cargo bench -p skiff-devices --bench vsock_queue -- [N]
//!   valgrind --tool=callgrind target/release/deps/vsock_queue-* N
//! Instructions per packet = (Ir(N) - Ir(0)) / N.

use std::io::{ErrorKind, Read};
use std::os::unix::net::UnixListener;
use std::time::Instant;

use skiff_devices::virtio::test_utils::{
    activation, guest_memory, Buf, RingLayout, SplitQueueDriver,
};
use skiff_devices::virtio::vsock::Vsock;
use skiff_devices::virtio::VirtioDevice;
use vm_memory::{Bytes, GuestAddress};

const QSIZE: u16 = 256;
const RXQ: u64 = 0x0;
const TXQ: u64 = 0x4000;
const EVQ: u64 = 0x8000;
const BUFS: u64 = 0x10_0000;
const RX_BUFS: u64 = 0x80_0000;
const DATA: u32 = 4096;
const BATCH: u16 = 16;
const GUEST_CID: u64 = 3;

fn header(op: u16, len: u32) -> [u8; 44] {
    let mut h = [0u8; 44];
    h[0..8].copy_from_slice(&GUEST_CID.to_le_bytes());
    h[8..16].copy_from_slice(&2u64.to_le_bytes());
    h[16..20].copy_from_slice(&1u32.to_le_bytes()); // guest port
    h[20..24].copy_from_slice(&5000u32.to_le_bytes()); // host port
    h[24..28].copy_from_slice(&len.to_le_bytes());
    h[28..30].copy_from_slice(&1u16.to_le_bytes()); // stream
    h[30..32].copy_from_slice(&op.to_le_bytes());
    h[36..40].copy_from_slice(&(256u32 * 1024).to_le_bytes());
    h
}

fn main() {
    let n: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(100_000);
    let dir = std::env::temp_dir().join(format!("skiff-vsock-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("v.sock");
    let service = UnixListener::bind(format!("{}_5000", socket.display())).unwrap();
    let mem = guest_memory(0x100_0000);
    let device = Vsock::new(GUEST_CID, &socket).unwrap();
    // Each queue's rings from its base, a page apart.
    let [mut rx, mut tx, ev] =
        [RXQ, TXQ, EVQ].map(|base| SplitQueueDriver::new(&mem, RingLayout::paged(base, QSIZE)));
    let queues = [&rx, &tx, &ev]
        .into_iter()
        .map(|d| d.active_queue(false))
        .collect();
    let mut worker = device
        .data_path(activation(&mem, device.features(), queues))
        .unwrap();

    // RX buffers for RESPONSE and credit updates.
    let mut rx_posted = 0u16;
    let mut post_rx = |count: u16| {
        for _ in 0..count {
            let slot = (rx_posted % 64) * 2;
            let addr = RX_BUFS + u64::from(slot) * 0x1000;
            let bufs = [Buf::writable(addr, 44), Buf::writable(addr + 0x100, DATA)];
            let head = rx.add_chain_at(slot, &bufs);
            rx.offer(head);
            rx_posted = rx_posted.wrapping_add(1);
        }
    };
    post_rx(8);

    // Connect: REQUEST from guest port 1 to host port 5000.
    mem.write_slice(&header(1, 0), GuestAddress(BUFS)).unwrap();
    let head = tx.add_chain_at(0, &[Buf::readable(BUFS, 44)]);
    tx.offer(head);
    worker.process_tx();
    worker.process_rx();
    let (mut host, _) = service.accept().unwrap();
    host.set_nonblocking(true).unwrap();
    assert_eq!(worker.connection_count(), 1);

    // Every packet: header descriptor + 4 KiB data descriptor.
    let payload = vec![0x5au8; DATA as usize];
    for i in 0..BATCH {
        let addr = BUFS + u64::from(i) * 0x2000;
        mem.write_slice(&header(5, DATA), GuestAddress(addr))
            .unwrap();
        mem.write_slice(&payload, GuestAddress(addr + 0x100))
            .unwrap();
    }
    let mut sink = vec![0u8; 1 << 20];
    // `--seccomp`: the timed loop runs under the vsock worker's filter (log
    // mode: its cost, without stopping the bench's own calls).
    if std::env::args().any(|a| a == "--seccomp") {
        skiff_confine::install_for_measurement(&skiff_devices::virtio::seccomp::vsock()).unwrap();
    }
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < n {
        let batch = (n - sent).min(u64::from(BATCH)) as u16;
        for i in 0..batch {
            let addr = BUFS + u64::from(i) * 0x2000;
            let bufs = [Buf::readable(addr, 44), Buf::readable(addr + 0x100, DATA)];
            let head = tx.add_chain_at(2 * i, &bufs);
            tx.offer(head);
        }
        worker.process_tx();
        worker.process_rx();
        post_rx(1);
        sent += u64::from(batch);
        loop {
            match host.read(&mut sink) {
                Ok(0) => panic!("device closed the connection"),
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(worker.connection_count(), 1, "connection reset");
    println!(
        "vsock_queue: {n} TX packets of {DATA} B in {secs:.3} s: {:.0} packets/s, {:.0} MiB/s",
        n as f64 / secs,
        (n * u64::from(DATA)) as f64 / secs / (1 << 20) as f64
    );
    drop(worker);
    drop(device);
    let _ = std::fs::remove_dir_all(&dir);
}
