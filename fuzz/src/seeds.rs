//! The seed corpus, written with each target's seed writers so it follows
//! the decoders: valid requests of every device's protocol and the hostile
//! shapes of issue 10. `cargo test -p skiff-fuzz -- --ignored
//! write_seed_corpus` writes them to `fuzz/corpus/<target>/`.

use crate::fs::{self, seed as f};
use crate::guest::{addr, seed as g, tag};
use crate::input::Seed;
use crate::{blk::seed as b, mmio::seed as m, net::seed as n, vsock::seed as v};

/// (target, seed name, input)
pub fn all() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, s) in fs_seeds() {
        out.push(("virtio_fs", name.to_string(), s.finish()));
    }
    for (name, s) in blk_seeds() {
        out.push(("virtio_blk", name.to_string(), s.finish()));
    }
    for (name, s) in net_seeds() {
        out.push(("virtio_net", name.to_string(), s.finish()));
    }
    for (name, s) in vsock_seeds() {
        out.push(("vsock", name.to_string(), s.finish()));
    }
    for (name, s) in mmio_seeds() {
        out.push(("mmio", name.to_string(), s.finish()));
    }
    out
}

fn fs_start(read_only: bool) -> Seed {
    let mut s = Seed::new();
    f::header(&mut s, read_only);
    f::init(&mut s);
    s
}

fn fs_seeds() -> Vec<(&'static str, Seed)> {
    let mut v = Vec::new();
    v.push(("init", fs_start(false)));

    // Node selector 1 is the first node a reply named, handle 0 the first.
    let mut s = fs_start(false);
    f::lookup(&mut s, 0, b"file");
    f::open(&mut s, 1, libc::O_RDONLY, false);
    f::read(&mut s, 1, 0, 4096, false);
    v.push(("lookup-open-read", s));

    let mut s = fs_start(false);
    f::lookup(&mut s, 0, b"dir");
    f::open(&mut s, 1, libc::O_RDONLY, true);
    f::read(&mut s, 1, 0, 4096, true);
    v.push(("opendir-readdir", s));

    let mut s = fs_start(false);
    f::lookup(&mut s, 0, b"link");
    f::simple(&mut s, fs::READLINK, 1, &[]);
    f::open(&mut s, 1, libc::O_RDONLY, false);
    f::read(&mut s, 1, 0, 4096, false);
    v.push(("symlink-outside", s));

    let mut s = fs_start(false);
    f::lookup(&mut s, 0, b"abs");
    f::open(&mut s, 1, libc::O_RDONLY, false);
    f::read(&mut s, 1, 0, 4096, false);
    v.push(("absolute-symlink", s));

    let mut s = fs_start(false);
    f::lookup(&mut s, 0, b"dirlink");
    f::lookup(&mut s, 1, b"secret");
    f::lookup(&mut s, 0, b"..");
    f::lookup(&mut s, 0, b"../outside");
    v.push(("lookup-escapes", s));

    // Finding 1: O_PATH open, then READ and WRITE on the handle.
    let mut s = fs_start(false);
    f::lookup(&mut s, 0, b"file");
    f::open(&mut s, 1, libc::O_PATH, false);
    f::read(&mut s, 1, 0, 4096, false);
    f::write(&mut s, 1, 0, b"overwrite");
    f::read(&mut s, 1, 0, 4096, false);
    v.push(("o-path-read", s));

    let mut s = fs_start(false);
    f::lookup(&mut s, 0, b"dir");
    f::open(&mut s, 1, libc::O_PATH, true);
    f::read(&mut s, 1, 0, 4096, true);
    v.push(("o-path-opendir", s));

    let mut s = fs_start(false);
    f::create(&mut s, 0, b"new", libc::O_RDWR, libc::S_IFREG | 0o644);
    f::write(&mut s, 1, 0, b"written by the guest\n");
    f::read(&mut s, 1, 0, 4096, false);
    f::simple(&mut s, fs::UNLINK, 0, &[b"new"]);
    v.push(("create-write-read-unlink", s));

    let mut s = fs_start(false);
    f::create(&mut s, 0, b"new", libc::O_TMPFILE | libc::O_RDWR, 0o644);
    f::create(&mut s, 0, b"new2", libc::O_DIRECT | libc::O_RDWR, 0o644);
    f::open(&mut s, 0, libc::O_ACCMODE, true);
    v.push(("odd-open-flags", s));

    // Finding 5: setuid files and device nodes.
    let mut s = fs_start(false);
    f::create(&mut s, 0, b"new", libc::O_RDWR, libc::S_IFREG | 0o4755);
    f::lookup(&mut s, 0, b"file");
    f::setattr(&mut s, 1, 1, libc::S_IFREG | 0o4755, 0);
    f::request(&mut s, fs::MKNOD, 0);
    s.u8(3).u8(0).u32(0).u32(0);
    f::name(&mut s, b"fifo");
    f::end(&mut s);
    f::process(&mut s);
    v.push(("setuid-and-mknod", s));

    let mut s = fs_start(false);
    f::mkdir(&mut s, 0, b"sub");
    f::create(&mut s, 1, b"x", libc::O_RDWR, libc::S_IFREG | 0o600);
    f::lookup(&mut s, 0, b"file");
    f::request(&mut s, fs::RENAME, 0);
    s.u8(1);
    f::name(&mut s, b"file");
    f::name(&mut s, b"moved");
    f::end(&mut s);
    f::process(&mut s);
    f::simple(&mut s, fs::RMDIR, 0, &[b"sub"]);
    v.push(("mkdir-create-rename", s));

    let mut s = fs_start(false);
    f::simple(&mut s, fs::STATFS, 0, &[]);
    f::lookup(&mut s, 0, b"file");
    f::request(&mut s, fs::GETXATTR, 1);
    s.u8(1);
    f::name(&mut s, b"user.x");
    f::end(&mut s);
    f::process(&mut s);
    f::request(&mut s, fs::LISTXATTR, 1);
    s.u8(1);
    f::end(&mut s);
    f::process(&mut s);
    f::open(&mut s, 0, libc::O_RDONLY, true);
    f::request(&mut s, fs::READDIRPLUS, 0);
    s.u8(0).u8(0).u8(1);
    f::end(&mut s);
    f::process(&mut s);
    v.push(("statfs-xattr-readdirplus", s));

    let mut s = fs_start(false);
    f::lookup(&mut s, 0, b"file");
    f::open(&mut s, 1, libc::O_RDWR, false);
    f::request(&mut s, fs::FALLOCATE, 1);
    s.u8(0).u8(0).u8(2).u16(4096).u32(0);
    f::end(&mut s);
    f::process(&mut s);
    f::request(&mut s, fs::LSEEK, 1);
    s.u8(0).u8(1).u8(10).u32(3);
    f::end(&mut s);
    f::process(&mut s);
    f::request(&mut s, fs::COPY_FILE_RANGE, 1);
    s.u8(0)
        .u8(0)
        .u8(1)
        .u8(0)
        .u8(2)
        .u16(4096)
        .u8(2)
        .u16(100)
        .u32(0);
    f::end(&mut s);
    f::process(&mut s);
    v.push(("fallocate-lseek-copy", s));

    let mut s = fs_start(true);
    f::create(&mut s, 0, b"new", libc::O_RDWR, libc::S_IFREG | 0o644);
    f::lookup(&mut s, 0, b"file");
    f::open(&mut s, 1, libc::O_RDWR | libc::O_TRUNC, false);
    f::simple(&mut s, fs::UNLINK, 0, &[b"file"]);
    v.push(("read-only-share", s));

    // Finding 2: a nonsense avail index on the request queue.
    let mut s = fs_start(false);
    f::lookup(&mut s, 0, b"file");
    g::avail_idx(&mut s, 1, 1000);
    f::process(&mut s);
    v.push(("nonsense-avail-idx", s));

    // Finding 2: a reply buffer over the request queue's avail ring.
    let mut s = Seed::new();
    f::header(&mut s, false);
    let mut getattr = Vec::new();
    getattr.extend_from_slice(&56u32.to_le_bytes());
    getattr.extend_from_slice(&fs::GETATTR.to_le_bytes());
    getattr.extend_from_slice(&1u64.to_le_bytes());
    getattr.extend_from_slice(&1u64.to_le_bytes());
    getattr.extend_from_slice(&[0u8; 16]);
    getattr.extend_from_slice(&[0u8; 16]);
    s.u8(tag::RAW_CHAIN).u8(1).u8(1).u8(0);
    s.u8(0).u8(2).u32(56).u8(addr::HEAP);
    s.u8(1).u8(2).u32(120).u8(addr::RING).u8(1).u8(1).u16(0);
    s.blob(&getattr).u8(0);
    f::process(&mut s);
    v.push(("reply-over-avail-ring", s));

    // Finding 6: more handles than the small limits allow.
    let mut s = Seed::new();
    crate::guest::seed::setup(&mut s, 4, 0);
    s.u8(2);
    f::init(&mut s);
    f::lookup(&mut s, 0, b"file");
    for _ in 0..8 {
        f::open(&mut s, 1, libc::O_RDONLY, false);
    }
    for name in [
        b"dir" as &[u8],
        b"link",
        b"abs",
        b"dirlink",
        b"dir",
        b"file",
    ] {
        f::lookup(&mut s, 0, name);
    }
    v.push(("limits", s));

    let mut s = fs_start(false);
    f::lookup(&mut s, 0, b"file");
    f::request(&mut s, fs::FORGET, 1);
    s.u8(0).u8(1);
    f::end(&mut s);
    f::request(&mut s, fs::BATCH_FORGET, 0);
    s.u8(0).u8(0).u8(2).u8(1).u8(1).u8(0).u8(5);
    f::end(&mut s);
    f::process(&mut s);
    f::simple(&mut s, fs::DESTROY, 0, &[]);
    v.push(("forget-destroy", s));

    let mut s = fs_start(false);
    f::lookup(&mut s, 0, b"file");
    f::open(&mut s, 1, libc::O_RDWR, false);
    f::request(&mut s, fs::WRITE, 1);
    s.u8(0).u8(3).u64(u64::MAX - 10).u32(0);
    f::flags(&mut s, libc::O_RDWR);
    s.blob(b"far away");
    f::end(&mut s);
    f::process(&mut s);
    f::setattr(&mut s, 1, 8, 0, 1 << 40);
    v.push(("huge-offsets", s));

    // Unknown opcodes (finding 7) and a header that lies about its length.
    let mut s = fs_start(false);
    for code in [0u32, 7, 19, 50, 4096] {
        s.u8(fs::REQUEST)
            .u8(1)
            .u8(0xff)
            .u32(code)
            .u8(0)
            .u8(0)
            .u8(0)
            .u8(0);
        f::end(&mut s);
    }
    s.u8(fs::REQUEST)
        .u8(1)
        .u8(fs::op_index(fs::LOOKUP))
        .u8(2)
        .u8(0)
        .u8(0);
    f::name(&mut s, b"file");
    s.u32(100_000);
    f::end(&mut s);
    f::process(&mut s);
    v.push(("unknown-opcodes", s));
    v
}

fn blk_seeds() -> Vec<(&'static str, Seed)> {
    let mut v = Vec::new();
    let one = |read_only: bool, discard: bool, req: &dyn Fn(&mut Seed)| {
        let mut s = Seed::new();
        b::header(&mut s, read_only, discard);
        req(&mut s);
        b::process(&mut s);
        s
    };
    v.push(("read", one(false, false, &|s| b::request(s, 0, 0, &[8]))));
    v.push((
        "write-read",
        one(false, false, &|s| {
            b::request(s, 1, 4, &[1, 2]);
            b::request(s, 0, 4, &[3]);
        }),
    ));
    v.push((
        "flush-getid",
        one(false, false, &|s| {
            b::request(s, 2, 0, &[]);
            b::request(s, 3, 0, &[1]);
        }),
    ));
    v.push(("discard", one(false, true, &|s| b::request(s, 4, 0, &[]))));
    v.push((
        "write-zeroes",
        one(false, true, &|s| b::request(s, 5, 0, &[])),
    ));
    v.push((
        "discard-unnegotiated",
        one(false, false, &|s| b::request(s, 4, 0, &[])),
    ));
    v.push((
        "read-only-write",
        one(true, false, &|s| b::request(s, 1, 0, &[1])),
    ));
    v.push((
        "read-past-end",
        one(false, false, &|s| {
            let mut r = Seed::new();
            r.u8(crate::blk::REQUEST).u8(0).u8(3).u8(1).u8(0).u8(1);
            r.u8(0).u8(8).u8(1).u8(addr::HEAP).u8(0).u8(1);
            s.bytes(&r.0);
        }),
    ));
    v.push((
        "many-segments",
        one(false, false, &|s| b::request(s, 0, 0, &[1, 1, 1, 1])),
    ));
    // Finding 2: a nonsense avail index, then a valid request.
    v.push((
        "nonsense-avail-idx",
        one(false, false, &|s| {
            b::request(s, 0, 0, &[1]);
            g::avail_idx(s, 0, 0x8000);
            b::process(s);
            b::request(s, 0, 0, &[1]);
        }),
    ));
    // A data buffer over the used ring.
    v.push((
        "data-over-used-ring",
        one(false, false, &|s| {
            let mut r = Seed::new();
            r.u8(crate::blk::REQUEST).u8(0).u8(0).u8(0).u8(0).u8(1);
            r.u8(0).u8(1).u8(1).u8(addr::RING).u8(0).u8(2).u16(0);
            r.u8(0).u8(1);
            s.bytes(&r.0);
        }),
    ));
    v.push((
        "raw-chain",
        one(false, false, &|s| {
            g::raw_chain(s, 0, &[(false, 16), (true, 512), (true, 1)], false);
        }),
    ));
    v.push((
        "descriptor-loop",
        one(false, false, &|s| {
            g::raw_desc(s, 0, 0, 0x2_0000, 16, g::NEXT, 1);
            g::raw_desc(s, 0, 1, 0x2_1000, 512, g::NEXT | g::WRITE, 0);
            g::offer(s, 0, 0);
        }),
    ));
    v.push((
        "indirect-in-indirect",
        one(false, false, &|s| {
            g::raw_desc(s, 0, 0, 0x3_0000, 32, g::INDIRECT, 0);
            g::offer(s, 0, 0);
            let mut t = Seed::new();
            t.u64(0x3_0000).u32(32).u16(g::INDIRECT).u16(0);
            s.u8(tag::POKE).blob(&t.0).u8(addr::RAW).u64(0x3_0000);
        }),
    ));
    v
}

fn net_seeds() -> Vec<(&'static str, Seed)> {
    let mut v = Vec::new();
    let start = || {
        let mut s = Seed::new();
        n::header(&mut s);
        s
    };
    let mut s = start();
    n::tx_frame(&mut s, 1);
    n::tx_frame(&mut s, 3);
    n::tx(&mut s);
    v.push(("tx", s));
    let mut s = start();
    n::rx_buf(&mut s);
    n::rx_buf(&mut s);
    n::host_frame(&mut s, 60, 0xaa);
    n::host_frame(&mut s, 1514, 0xbb);
    n::rx(&mut s);
    v.push(("rx", s));
    let mut s = start();
    n::host_frame(&mut s, 100, 1);
    n::rx(&mut s);
    n::rx_buf(&mut s);
    n::rx_kick(&mut s);
    v.push(("rx-stalled-then-refilled", s));
    let mut s = start();
    n::rx_buf(&mut s);
    n::host_frame(&mut s, 9000, 2);
    s.u8(crate::net::HOST_FRAME).u8(3).u8(1).u8(3);
    n::rx(&mut s);
    v.push(("rx-too-large", s));
    let mut s = start();
    g::raw_chain(&mut s, 1, &[(false, 4)], false);
    g::raw_chain(&mut s, 1, &[(true, 100)], false);
    n::tx(&mut s);
    v.push(("tx-bad-chains", s));
    let mut s = start();
    n::tx_frame(&mut s, 1);
    g::avail_idx(&mut s, 1, 0x4000);
    n::tx(&mut s);
    n::rx_buf(&mut s);
    g::avail_idx(&mut s, 0, 0x4000);
    n::host_frame(&mut s, 60, 3);
    n::rx(&mut s);
    v.push(("nonsense-avail-idx", s));
    let mut s = start();
    s.u8(crate::net::BACKEND).u8(0);
    n::tx_frame(&mut s, 1);
    n::tx(&mut s);
    s.u8(crate::net::BACKEND).u8(2);
    n::host_frame(&mut s, 60, 3);
    n::rx_buf(&mut s);
    n::rx(&mut s);
    s.u8(crate::net::RESET);
    n::rx_buf(&mut s);
    n::rx(&mut s);
    v.push(("backend-errors-reset", s));
    v
}

fn vsock_seeds() -> Vec<(&'static str, Seed)> {
    use crate::vsock::{HOST, RX, TX};
    let mut v = Vec::new();
    let start = || {
        let mut s = Seed::new();
        v::header(&mut s);
        v::rx_bufs(&mut s, 4);
        s
    };
    // op: 1 REQUEST, 2 RESPONSE, 3 RST, 4 SHUTDOWN, 5 RW, 6 CREDIT_UPDATE,
    // 7 CREDIT_REQUEST. Ports: 0 service, 1 guest port, 2 closed.
    let mut s = start();
    v::tx_pkt(&mut s, 1, 1, 0, b"");
    v::step(&mut s, TX);
    v::step(&mut s, RX);
    v::accept(&mut s);
    v::tx_pkt(&mut s, 5, 1, 0, b"hello host");
    v::step(&mut s, TX);
    v::read(&mut s, 0);
    v::write(&mut s, 0, b"hello guest", 4);
    v::step(&mut s, HOST);
    v::tx_pkt(&mut s, 4, 1, 0, b"");
    v::step(&mut s, TX);
    v::step(&mut s, HOST);
    v.push(("guest-connects", s));

    let mut s = start();
    v::connect(&mut s, 1);
    v::step(&mut s, HOST);
    v::tx_pkt(&mut s, 2, 1, 3, b"");
    v::step(&mut s, TX);
    v::step(&mut s, HOST);
    v::write(&mut s, 0, &[0x55; 200], 20);
    v::step(&mut s, HOST);
    v::tx_pkt(&mut s, 7, 1, 3, b"");
    v::step(&mut s, TX);
    v::step(&mut s, RX);
    v::close(&mut s, 0);
    v::step(&mut s, HOST);
    v.push(("host-connects", s));

    let mut s = start();
    v::hybrid(&mut s, 1);
    v::step(&mut s, HOST);
    v::tx_pkt(&mut s, 2, 1, 3, b"");
    v::step(&mut s, TX);
    v::tx_pkt(&mut s, 5, 1, 3, b"data for the hybrid client");
    v::step(&mut s, TX);
    v::step(&mut s, HOST);
    v::read(&mut s, 0);
    v.push(("hybrid-connect", s));

    let mut s = start();
    v::tx_pkt(&mut s, 1, 1, 2, b"");
    v::tx_pkt(&mut s, 5, 1, 2, b"nobody listens");
    v::tx_pkt(&mut s, 3, 1, 2, b"");
    v::step(&mut s, TX);
    v::step(&mut s, RX);
    v.push(("closed-port", s));

    // A guest that keeps sending more than its credit allows.
    let mut s = start();
    v::tx_pkt(&mut s, 1, 1, 0, b"");
    v::step(&mut s, TX);
    v::accept(&mut s);
    for _ in 0..8 {
        s.u8(crate::vsock::TX_PKT)
            .u8(1)
            .u8(1)
            .u8(1)
            .u8(0)
            .u8(4)
            .u8(1)
            .u8(0)
            .u8(0)
            .u8(0);
        s.blob(&[0x77; 255]).u8(63).u8(1).u8(0).u8(1);
        v::step(&mut s, TX);
    }
    v::step(&mut s, HOST);
    v::step(&mut s, RX);
    v.push(("credit-overrun", s));

    let mut s = start();
    v::tx_pkt(&mut s, 5, 1, 0, b"x");
    g::avail_idx(&mut s, 1, 0x9000);
    v::step(&mut s, TX);
    g::avail_idx(&mut s, 0, 0x9000);
    v::connect(&mut s, 1);
    v::step(&mut s, HOST);
    v.push(("nonsense-avail-idx", s));
    v
}

fn mmio_seeds() -> Vec<(&'static str, Seed)> {
    use crate::mmio::reg;
    let mut v = Vec::new();
    for (name, device, queues) in [
        ("stub", 0u8, 2usize),
        ("blk", 1, 1),
        ("fs", 2, 2),
        ("net", 3, 2),
        ("vsock", 4, 3),
    ] {
        let mut s = Seed::new();
        m::header(&mut s, device);
        m::bring_up(&mut s, queues, 1 << 29, true, false);
        m::read(&mut s, reg::STATUS);
        m::notify(&mut s, 0);
        m::write(&mut s, reg::STATUS, 0);
        v.push((name, s));
    }
    // Finding 2: queues ready with no address at all (every ring at 0),
    // then notifications and a reset.
    for (name, device, queues) in [
        ("blk-rings-at-zero", 1u8, 1usize),
        ("fs-rings-at-zero", 2, 2),
        ("stub-rings-at-zero", 0, 2),
    ] {
        let mut s = Seed::new();
        m::header(&mut s, device);
        m::bring_up(&mut s, queues, 0, true, true);
        m::mem(&mut s, 2, &[0xff, 0xff]);
        m::notify(&mut s, 0);
        m::notify(&mut s, 1);
        m::write(&mut s, reg::STATUS, 0);
        v.push((name, s));
    }
    // A nonsense avail index on a running virtio-blk, then a reset.
    let mut s = Seed::new();
    m::header(&mut s, 1);
    m::bring_up(&mut s, 1, 0, true, false);
    m::mem(&mut s, 0x1002, &0x4000u16.to_le_bytes());
    m::notify(&mut s, 0);
    m::write(&mut s, reg::STATUS, 0);
    v.push(("blk-nonsense-avail-idx", s));
    // Registers poked out of order.
    let mut s = Seed::new();
    m::header(&mut s, 0);
    m::write(&mut s, reg::STATUS, 0xf);
    m::write(&mut s, reg::QUEUE_SEL, 7);
    m::write(&mut s, reg::QUEUE_NUM, 3);
    m::write(&mut s, reg::QUEUE_READY, 1);
    m::write(&mut s, reg::STATUS, 0xb);
    m::write(&mut s, reg::QUEUE_NUM, 3);
    m::write(&mut s, reg::QUEUE_READY, 1);
    m::write(&mut s, reg::STATUS, 0xf);
    m::read(&mut s, reg::QUEUE_READY);
    m::write(&mut s, reg::STATUS, 0x4f);
    v.push(("out-of-order", s));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_are_distinct_and_small() {
        let seeds = all();
        for (i, (t, name, data)) in seeds.iter().enumerate() {
            assert!(data.len() <= 4096, "{t}/{name} is {} bytes", data.len());
            for (t2, name2, data2) in &seeds[i + 1..] {
                assert!(t != t2 || name != name2, "{t}/{name} twice");
                assert!(
                    t != t2 || data != data2,
                    "{t}/{name} and {name2} are the same"
                );
            }
        }
    }

    /// Writes the seeds to `fuzz/corpus/<target>/<name>`.
    #[test]
    #[ignore]
    fn write_seed_corpus() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
        for (target, name, data) in all() {
            let dir = root.join(target);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("seed-{name}")), data).unwrap();
        }
    }
}
