//! virtio-fs: FUSE requests through `FuseServer` over a real share.
//!
//! The scratch directory holds `share/` (what the guest gets: a file, a
//! directory with a file, a relative symlink and an absolute one pointing
//! into `outside/`, a symlink to `outside/` itself) and `outside/` (files
//! holding a per-process random secret). Each input starts from a fresh
//! share and a new server.
//!
//! Input: queue setup ([`Guest::new`]), one byte of share options (bit 0
//! read-only, bit 1 small inode/handle limits, bits 2-3 cache mode), then
//! actions: the generic ones, and
//! - `PROCESS`: the worker serves queue 0 (high priority) or 1 (requests);
//! - `REQUEST`: a FUSE request: opcode (from a table or any number), node
//!   and handle ids picked from those earlier replies returned, open flags
//!   and modes from tables of the interesting ones (O_PATH, O_TMPFILE,
//!   setuid, devices...), names (`..`, `/`, the symlinks...) and the raw
//!   rest; the request split over descriptors any way, the reply buffers
//!   of any size, direct or indirect;
//! - `RESET`: the device is reset (a new server, as a remount gets).
//!
//! After each `PROCESS` the harness opens a host file outside the share
//! and keeps it open, as another part of the VMM would: a handle whose fd
//! the server closed by mistake then reads that file. Checked: the
//! used-ring invariants, each reply header's length against the used
//! length, no secret byte string in guest memory after the input, the
//! scratch directory holding exactly `share/` and an unchanged
//! `outside/`, and the fd count once the server is dropped.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use skiff_devices::virtio::fs::{CacheMode, FsLimits, FsShare, FuseServer, QUEUE_SIZE};
use skiff_devices::virtio::test_utils::{read_bytes, Buf};
use skiff_devices::virtio::Interrupt;
use vmm_sys_util::eventfd::EventFd;

use crate::guest::{tag, Guest, MAX_ACTIONS};
use crate::input::{Input, Seed};
use crate::FdCheck;

pub const PROCESS: u8 = tag::COMMON;
pub const REQUEST: u8 = tag::COMMON + 1;
pub const RESET: u8 = tag::COMMON + 2;
const TAGS: u8 = tag::COMMON + 3;

const IN_HEADER: usize = 40;
const OUT_HEADER: usize = 16;
const ENTRY_OUT: usize = 128;
/// Host file offsets and sizes a request may reach: the share lives on a
/// small tmpfs when fuzzing and in /tmp in the replay test.
const MAX_FILE_OFFSET: u64 = 64 << 20;
const MAX_ALLOC_LEN: u64 = 1 << 20;

struct Env {
    root: PathBuf,
    share: PathBuf,
    outside: PathBuf,
    secret: Vec<u8>,
    snapshot: Snapshot,
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let root = crate::scratch("virtio_fs");
        let share = root.join("share");
        let outside = root.join("outside");
        let _ = std::fs::remove_dir_all(&outside);
        std::fs::create_dir_all(outside.join("sub")).expect("outside dir");
        let mut random = [0u8; 16];
        if let Ok(f) = File::open("/dev/urandom") {
            let _ = std::io::Read::read_exact(&mut &f, &mut random);
        }
        let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let secret = format!("SKIFF-SECRET-{hex}").into_bytes();
        let mut content = Vec::new();
        for _ in 0..64 {
            content.extend_from_slice(&secret);
            content.push(b'\n');
        }
        std::fs::write(outside.join("secret"), &content).expect("secret");
        std::fs::write(outside.join("sub/nested"), &content).expect("secret");
        std::fs::set_permissions(outside.join("secret"), PermissionsExt::from_mode(0o644))
            .expect("mode");
        let snapshot = Snapshot::take(&root, &outside);
        Env {
            root,
            share,
            outside,
            secret,
            snapshot,
        }
    })
}

/// The share as each input finds it.
fn fresh_share(env: &Env) {
    let _ = std::fs::remove_dir_all(&env.share);
    std::fs::create_dir_all(env.share.join("dir")).expect("share");
    std::fs::write(
        env.share.join("file"),
        b"hello from the share\n".repeat(200),
    )
    .expect("file");
    std::fs::write(env.share.join("dir/inner"), b"inner\n").expect("inner");
    std::os::unix::fs::symlink("../outside/secret", env.share.join("link")).expect("link");
    std::os::unix::fs::symlink(env.outside.join("secret"), env.share.join("abs")).expect("abs");
    std::os::unix::fs::symlink("../outside", env.share.join("dirlink")).expect("dirlink");
}

/// What must not change outside the share: the scratch directory's
/// entries, and every entry under `outside/` (type, mode, owner, size,
/// times, content hash, link target).
#[derive(PartialEq, Eq, Debug)]
struct Snapshot {
    root_entries: Vec<String>,
    outside: BTreeMap<PathBuf, String>,
}

impl Snapshot {
    fn take(root: &Path, outside: &Path) -> Self {
        let mut root_entries: Vec<String> = std::fs::read_dir(root)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n != "share")
                    .collect()
            })
            .unwrap_or_default();
        root_entries.sort();
        let mut map = BTreeMap::new();
        walk(outside, &mut map);
        Self {
            root_entries,
            outside: map,
        }
    }
}

fn walk(path: &Path, out: &mut BTreeMap<PathBuf, String>) {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        out.insert(path.into(), "missing".into());
        return;
    };
    let mut desc = format!(
        "{:o} {}:{} {} {}.{} {}.{}",
        meta.mode(),
        meta.uid(),
        meta.gid(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec()
    );
    let ft = meta.file_type();
    if ft.is_symlink() {
        desc += &format!(" -> {:?}", std::fs::read_link(path).ok());
    } else if ft.is_file() {
        // A hash, not the bytes: the comparison must not hand the secret
        // to the fuzzer's comparison tracing.
        let data = std::fs::read(path).unwrap_or_default();
        desc += &format!(" #{:016x}", fnv(&data));
    } else if ft.is_dir() {
        if let Ok(d) = std::fs::read_dir(path) {
            for e in d.flatten() {
                walk(&e.path(), out);
            }
        }
    }
    out.insert(path.into(), desc);
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    if needle.is_empty() || hay.len() < needle.len() {
        return false;
    }
    // SAFETY: both pointers and lengths describe live slices; memmem only
    // reads them.
    !unsafe {
        libc::memmem(
            hay.as_ptr().cast(),
            hay.len(),
            needle.as_ptr().cast(),
            needle.len(),
        )
    }
    .is_null()
}

/// A request the harness offered, to read its reply once used.
struct Pending {
    q: usize,
    head: u16,
    opcode: u32,
    unique: u64,
    reply: Vec<Buf>,
}

struct State {
    nodes: Vec<u64>,
    handles: Vec<u64>,
    unique: u64,
    pending: Vec<Pending>,
}

impl State {
    fn remember(list: &mut Vec<u64>, v: u64) {
        if !list.contains(&v) {
            list.push(v);
            if list.len() > 32 {
                list.remove(1);
            }
        }
    }
}

struct Device {
    server: FuseServer,
    queues: Vec<virtio_queue::Queue>,
    interrupt: Arc<Interrupt>,
}

fn device(guest: &Guest, share: &FsShare) -> Device {
    Device {
        server: FuseServer::new(share).expect("server over the share"),
        queues: (0..2)
            .map(|q| guest.device_queue(q, QUEUE_SIZE, true))
            .collect(),
        interrupt: Arc::new(Interrupt::new(
            EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"),
        )),
    }
}

pub fn run(data: &[u8]) {
    let env = env();
    let fds = FdCheck::start("virtio_fs");
    fresh_share(env);
    let secret_in_input = contains(data, &env.secret);
    {
        let mut inp = Input::new(data);
        let mut guest = Guest::new(&mut inp, &[QUEUE_SIZE, QUEUE_SIZE]);
        let opts = inp.u8();
        let share = FsShare {
            tag: "fuzz".into(),
            path: env.share.clone(),
            read_only: opts & 1 != 0,
            cache: match (opts >> 2) & 3 {
                0 => CacheMode::Auto,
                1 => CacheMode::Never,
                _ => CacheMode::Always,
            },
            limits: if opts & 2 != 0 {
                FsLimits {
                    max_inodes: 8,
                    max_handles: 4,
                }
            } else {
                FsLimits::default()
            },
        };
        let mut dev = device(&guest, &share);
        let mut st = State {
            nodes: vec![1],
            handles: Vec::new(),
            unique: 0,
            pending: Vec::new(),
        };
        let mut held: Vec<File> = Vec::new();
        let mut actions = 0;
        while !inp.is_empty() && actions < MAX_ACTIONS {
            actions += 1;
            let t = inp.below(TAGS);
            crate::trace!("virtio_fs: action {t}");
            match t {
                PROCESS => {
                    let q = usize::from(inp.u8() & 1);
                    process(&mut guest, &mut dev, &mut st, q);
                    // Another part of the VMM opens a file now.
                    if held.len() < 4 {
                        if let Ok(f) = File::open(env.outside.join("secret")) {
                            held.push(f);
                        }
                    }
                }
                REQUEST => request(&mut guest, &mut st, &mut inp),
                RESET => {
                    drop(dev);
                    guest.reset_queue(0);
                    guest.reset_queue(1);
                    st.pending.clear();
                    dev = device(&guest, &share);
                }
                t if t < tag::COMMON => guest.common(t, &mut inp),
                _ => unreachable!(),
            }
        }
        for q in 0..2 {
            process(&mut guest, &mut dev, &mut st, q);
        }
        drop(dev);
        drop(held);
        if !secret_in_input {
            let mem = read_bytes(&guest.mem, 0, crate::guest::MEM_SIZE);
            assert!(
                !contains(&mem, &env.secret),
                "virtio_fs: content of a host file outside the share reached guest memory"
            );
        }
    }
    let now = Snapshot::take(&env.root, &env.outside);
    if now != env.snapshot {
        panic!(
            "virtio_fs: the guest changed the host outside the share:\nbefore {:#?}\nafter {:#?}",
            env.snapshot, now
        );
    }
    fds.finish();
}

fn process(guest: &mut Guest, dev: &mut Device, st: &mut State, q: usize) {
    if dev.interrupt.needs_reset() {
        return;
    }
    let before = guest.bounds(q);
    dev.server
        .process_queue(&guest.mem, &mut dev.queues[q], &dev.interrupt, None);
    let used = guest.check_used(q, &before, "virtio_fs");
    // Unless two chains share buffers, no other reply landed on this one's.
    let alone = !before.shared;
    for u in used {
        let Some(i) = st
            .pending
            .iter()
            .position(|p| p.q == q && u32::from(p.head) == u.id)
        else {
            continue;
        };
        let p = st.pending.remove(i);
        reply(guest, st, &p, u.len, alone);
    }
    if st.pending.len() > 512 {
        st.pending.drain(..256);
    }
}

/// Reads the reply of `p`, checks its header and learns node ids and
/// handles from it.
fn reply(guest: &Guest, st: &mut State, p: &Pending, used: u32, alone: bool) {
    let mut bytes = Vec::new();
    for b in &p.reply {
        let want = 256usize.saturating_sub(bytes.len()).min(b.len as usize);
        bytes.extend(read_bytes(&guest.mem, b.addr, want));
    }
    if bytes.len() < OUT_HEADER || (used as usize) < OUT_HEADER {
        return;
    }
    let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap_or_default());
    let u64_at = |i: usize| {
        bytes
            .get(i..i + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
    };
    let (len, error, unique) = (u32_at(0), u32_at(4) as i32, u64_at(8).unwrap_or(0));
    crate::trace!(
        "virtio_fs: opcode {} unique {} -> used {used}, reply len {len} error {error}{} {:x?}",
        p.opcode,
        p.unique,
        if unique != p.unique {
            " (not its reply)"
        } else {
            ""
        },
        &bytes[..bytes.len().min(32)]
    );
    if unique != p.unique {
        return; // the buffers were reused or overwritten since
    }
    assert!(
        len == used || !alone,
        "virtio_fs: opcode {} reply says {len} bytes, the used ring {used}",
        p.opcode
    );
    if error != 0 {
        return;
    }
    match p.opcode {
        LOOKUP | MKNOD | MKDIR | SYMLINK | LINK => {
            if let Some(n) = u64_at(OUT_HEADER) {
                State::remember(&mut st.nodes, n);
            }
        }
        CREATE => {
            if let Some(n) = u64_at(OUT_HEADER) {
                State::remember(&mut st.nodes, n);
            }
            if let Some(fh) = u64_at(OUT_HEADER + ENTRY_OUT) {
                State::remember(&mut st.handles, fh);
            }
        }
        OPEN | OPENDIR => {
            if let Some(fh) = u64_at(OUT_HEADER) {
                State::remember(&mut st.handles, fh);
            }
        }
        _ => {}
    }
}

pub const LOOKUP: u32 = 1;
pub const FORGET: u32 = 2;
pub const GETATTR: u32 = 3;
pub const SETATTR: u32 = 4;
pub const READLINK: u32 = 5;
pub const SYMLINK: u32 = 6;
pub const MKNOD: u32 = 8;
pub const MKDIR: u32 = 9;
pub const UNLINK: u32 = 10;
pub const RMDIR: u32 = 11;
pub const RENAME: u32 = 12;
pub const LINK: u32 = 13;
pub const OPEN: u32 = 14;
pub const READ: u32 = 15;
pub const WRITE: u32 = 16;
pub const STATFS: u32 = 17;
pub const RELEASE: u32 = 18;
pub const FSYNC: u32 = 20;
pub const SETXATTR: u32 = 21;
pub const GETXATTR: u32 = 22;
pub const LISTXATTR: u32 = 23;
pub const REMOVEXATTR: u32 = 24;
pub const FLUSH: u32 = 25;
pub const INIT: u32 = 26;
pub const OPENDIR: u32 = 27;
pub const READDIR: u32 = 28;
pub const RELEASEDIR: u32 = 29;
pub const FSYNCDIR: u32 = 30;
pub const GETLK: u32 = 31;
pub const SETLK: u32 = 32;
pub const SETLKW: u32 = 33;
pub const ACCESS: u32 = 34;
pub const CREATE: u32 = 35;
pub const INTERRUPT: u32 = 36;
pub const BMAP: u32 = 37;
pub const DESTROY: u32 = 38;
pub const IOCTL: u32 = 39;
pub const POLL: u32 = 40;
pub const BATCH_FORGET: u32 = 42;
pub const FALLOCATE: u32 = 43;
pub const READDIRPLUS: u32 = 44;
pub const RENAME2: u32 = 45;
pub const LSEEK: u32 = 46;
pub const COPY_FILE_RANGE: u32 = 47;
pub const SETUPMAPPING: u32 = 48;
pub const REMOVEMAPPING: u32 = 49;

/// A field of a request body the decoder fills with a chosen value.
#[derive(Clone, Copy)]
enum F {
    Fh(usize),
    Node(usize),
    Flags(usize),
    Mode(usize),
    Size(usize),
    Off(usize),
    Len(usize),
    Word(usize),
}

/// Opcode, body size, chosen fields, names after the body, reply body size.
struct Op {
    code: u32,
    body: usize,
    fields: &'static [F],
    names: u8,
    reply: usize,
}

const fn op(code: u32, body: usize, fields: &'static [F], names: u8, reply: usize) -> Op {
    Op {
        code,
        body,
        fields,
        names,
        reply,
    }
}

/// The index of an opcode in [`OPS`] (for seeds).
pub fn op_index(code: u32) -> u8 {
    OPS.iter().position(|o| o.code == code).unwrap_or(0) as u8
}

static OPS: [Op; 45] = [
    op(INIT, 64, &[F::Word(0), F::Word(4), F::Word(12)], 0, 64),
    op(LOOKUP, 0, &[], 1, ENTRY_OUT),
    op(FORGET, 8, &[F::Size(0)], 0, 0),
    op(GETATTR, 16, &[F::Word(0), F::Fh(8)], 0, 104),
    op(
        SETATTR,
        88,
        &[
            F::Word(0),
            F::Fh(8),
            F::Off(16),
            F::Mode(68),
            F::Word(76),
            F::Word(80),
        ],
        0,
        104,
    ),
    op(READLINK, 0, &[], 0, 256),
    op(SYMLINK, 0, &[], 2, ENTRY_OUT),
    op(
        MKNOD,
        16,
        &[F::Mode(0), F::Word(4), F::Word(8)],
        1,
        ENTRY_OUT,
    ),
    op(MKDIR, 8, &[F::Mode(0), F::Word(4)], 1, ENTRY_OUT),
    op(UNLINK, 0, &[], 1, 0),
    op(RMDIR, 0, &[], 1, 0),
    op(RENAME, 8, &[F::Node(0)], 2, 0),
    op(LINK, 8, &[F::Node(0)], 1, ENTRY_OUT),
    op(OPEN, 8, &[F::Flags(0), F::Word(4)], 0, 16),
    op(
        READ,
        40,
        &[F::Fh(0), F::Off(8), F::Size(16), F::Word(20), F::Flags(32)],
        0,
        4096,
    ),
    op(
        WRITE,
        40,
        &[F::Fh(0), F::Off(8), F::Word(20), F::Flags(32)],
        0,
        8,
    ),
    op(STATFS, 0, &[], 0, 80),
    op(RELEASE, 24, &[F::Fh(0), F::Flags(8), F::Word(12)], 0, 0),
    op(FSYNC, 16, &[F::Fh(0), F::Word(8)], 0, 0),
    op(SETXATTR, 8, &[F::Size(0), F::Word(4)], 1, 0),
    op(GETXATTR, 8, &[F::Size(0)], 1, 256),
    op(LISTXATTR, 8, &[F::Size(0)], 0, 256),
    op(REMOVEXATTR, 0, &[], 1, 0),
    op(FLUSH, 24, &[F::Fh(0)], 0, 0),
    op(OPENDIR, 8, &[F::Flags(0)], 0, 16),
    op(READDIR, 40, &[F::Fh(0), F::Off(8), F::Size(16)], 0, 4096),
    op(RELEASEDIR, 24, &[F::Fh(0), F::Flags(8)], 0, 0),
    op(FSYNCDIR, 16, &[F::Fh(0), F::Word(8)], 0, 0),
    op(
        GETLK,
        48,
        &[F::Fh(0), F::Off(16), F::Off(24), F::Word(32), F::Word(40)],
        0,
        24,
    ),
    op(
        SETLK,
        48,
        &[F::Fh(0), F::Off(16), F::Off(24), F::Word(32), F::Word(40)],
        0,
        0,
    ),
    op(
        SETLKW,
        48,
        &[F::Fh(0), F::Off(16), F::Off(24), F::Word(32), F::Word(40)],
        0,
        0,
    ),
    op(ACCESS, 8, &[F::Word(0)], 0, 0),
    op(
        CREATE,
        16,
        &[F::Flags(0), F::Mode(4), F::Word(8)],
        1,
        ENTRY_OUT + 16,
    ),
    op(INTERRUPT, 8, &[F::Off(0)], 0, 0),
    op(BMAP, 16, &[F::Off(0), F::Size(8)], 0, 8),
    op(DESTROY, 0, &[], 0, 0),
    op(
        IOCTL,
        32,
        &[F::Fh(0), F::Word(8), F::Word(12), F::Size(24), F::Size(28)],
        0,
        32,
    ),
    op(POLL, 24, &[F::Fh(0), F::Word(16)], 0, 8),
    op(BATCH_FORGET, 8, &[F::Size(0)], 0, 0),
    op(
        FALLOCATE,
        32,
        &[F::Fh(0), F::Off(8), F::Len(16), F::Word(24)],
        0,
        0,
    ),
    op(
        READDIRPLUS,
        40,
        &[F::Fh(0), F::Off(8), F::Size(16)],
        0,
        4096,
    ),
    op(RENAME2, 16, &[F::Node(0), F::Word(8)], 2, 0),
    op(LSEEK, 24, &[F::Fh(0), F::Off(8), F::Word(16)], 0, 16),
    op(
        COPY_FILE_RANGE,
        56,
        &[
            F::Fh(0),
            F::Off(8),
            F::Node(16),
            F::Fh(24),
            F::Off(32),
            F::Len(40),
            F::Word(48),
        ],
        0,
        8,
    ),
    op(
        SETUPMAPPING,
        40,
        &[F::Fh(0), F::Off(8), F::Len(16), F::Word(24), F::Off(32)],
        0,
        0,
    ),
];

const _: () = assert!(REMOVEMAPPING == 49);

const OPEN_FLAGS: [i32; 16] = [
    libc::O_RDONLY,
    libc::O_WRONLY,
    libc::O_RDWR,
    libc::O_PATH,
    libc::O_PATH | libc::O_RDWR,
    libc::O_DIRECT | libc::O_RDWR,
    libc::O_APPEND | libc::O_WRONLY,
    libc::O_TRUNC | libc::O_RDWR,
    libc::O_CREAT | libc::O_EXCL | libc::O_RDWR,
    libc::O_NOFOLLOW,
    libc::O_DIRECTORY,
    libc::O_TMPFILE | libc::O_RDWR,
    libc::O_NONBLOCK | libc::O_RDWR,
    libc::O_SYNC | libc::O_WRONLY,
    libc::O_NOATIME,
    libc::O_ACCMODE,
];

const MODES: [u32; 8] = [
    libc::S_IFIFO | 0o644,
    libc::S_IFSOCK | 0o755,
    libc::S_IFCHR | 0o666,
    libc::S_IFBLK | 0o660,
    libc::S_IFREG | 0o4755,
    libc::S_IFREG | 0o2755,
    libc::S_IFDIR | 0o1777,
    libc::S_IFLNK | 0o777,
];

const NAMES: [&[u8]; 16] = [
    b"file",
    b"dir",
    b"link",
    b"abs",
    b"dirlink",
    b"new",
    b"new2",
    b".",
    b"..",
    b"",
    b"dir/inner",
    b"../outside",
    b"inner",
    b"/",
    b"/etc/passwd",
    b"../outside/secret",
];

impl State {
    fn pick(list: &[u64], inp: &mut Input) -> u64 {
        let b = inp.u8();
        match b {
            0xff => inp.u64(),
            0xf0..=0xfe => u64::from(b - 0xf0),
            _ if list.is_empty() => 0,
            _ => list[usize::from(b) % list.len()],
        }
    }
}

fn open_flags(inp: &mut Input) -> u32 {
    let pick = |inp: &mut Input| OPEN_FLAGS[usize::from(inp.below(16))];
    (match inp.below(4) {
        0 => pick(inp),
        1 => pick(inp) | pick(inp),
        2 => inp.u32() as i32,
        _ => libc::O_RDONLY,
    }) as u32
}

fn mode(inp: &mut Input) -> u32 {
    match inp.below(4) {
        0 => libc::S_IFREG | 0o644,
        1 => libc::S_IFDIR | 0o755,
        2 => inp.u32(),
        _ => MODES[usize::from(inp.below(8))],
    }
}

fn size(inp: &mut Input) -> u32 {
    match inp.below(4) {
        0 => u32::from(inp.u8()),
        1 => 4096,
        2 => u32::from(inp.u16()),
        _ => inp.u32(),
    }
}

fn offset(inp: &mut Input) -> u64 {
    match inp.below(4) {
        0 => 0,
        1 => u64::from(inp.u8()),
        2 => u64::from(inp.u16()),
        _ => inp.u64(),
    }
}

fn name(inp: &mut Input, out: &mut Vec<u8>) {
    let b = inp.u8();
    match b {
        0xff => out.extend_from_slice(inp.blob(64)),
        0xfe => {
            out.extend_from_slice(inp.blob(64));
            out.push(0);
        }
        0xfd => {
            out.extend(std::iter::repeat_n(b'a', 256));
            out.push(0);
        }
        _ => {
            out.extend_from_slice(NAMES[usize::from(b) % NAMES.len()]);
            out.push(0);
        }
    }
}

fn put_u32(body: &mut [u8], at: usize, v: u32) {
    if let Some(s) = body.get_mut(at..at + 4) {
        s.copy_from_slice(&v.to_le_bytes());
    }
}

fn put_u64(body: &mut [u8], at: usize, v: u64) {
    if let Some(s) = body.get_mut(at..at + 8) {
        s.copy_from_slice(&v.to_le_bytes());
    }
}

fn get_u64(body: &[u8], at: usize) -> u64 {
    body.get(at..at + 8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
        .unwrap_or(0)
}

/// Keeps host file sizes the guest can cause within the scratch tmpfs.
fn bound_sizes(opcode: u32, body: &mut [u8]) {
    let cap = |body: &mut [u8], at: usize, max: u64| {
        let v = get_u64(body, at);
        if v > max {
            put_u64(body, at, v % max);
        }
    };
    match opcode {
        WRITE => cap(body, 8, MAX_FILE_OFFSET),
        SETATTR => cap(body, 16, MAX_FILE_OFFSET),
        FALLOCATE => {
            cap(body, 8, MAX_FILE_OFFSET);
            cap(body, 16, MAX_ALLOC_LEN);
        }
        COPY_FILE_RANGE => {
            cap(body, 32, MAX_FILE_OFFSET);
            cap(body, 40, MAX_ALLOC_LEN);
        }
        _ => {}
    }
}

/// Decodes and offers one FUSE request.
fn request(guest: &mut Guest, st: &mut State, inp: &mut Input) {
    let q = usize::from(inp.below(8) == 0); // mostly the request queue
    let q = 1 - q;
    let sel = inp.u8();
    let (opcode, spec) = if sel == 0xff {
        (inp.u32(), None)
    } else {
        let o = &OPS[usize::from(sel) % OPS.len()];
        (o.code, Some(o))
    };
    let shape = inp.u8();
    let nodeid = State::pick(&st.nodes, inp);
    let (uid, gid) = match inp.below(3) {
        0 => (0, 0),
        1 => (1000, 1000),
        _ => (inp.u32(), inp.u32()),
    };
    let body_len = match spec {
        Some(o) => o.body,
        None => usize::from(inp.u8()),
    };
    let mut body = vec![0u8; body_len];
    if shape & 1 != 0 {
        let raw = inp.bytes(body_len);
        body[..raw.len()].copy_from_slice(raw);
    }
    if let Some(o) = spec {
        for f in o.fields {
            match *f {
                F::Fh(at) => put_u64(&mut body, at, State::pick(&st.handles, inp)),
                F::Node(at) => put_u64(&mut body, at, State::pick(&st.nodes, inp)),
                F::Flags(at) => put_u32(&mut body, at, open_flags(inp)),
                F::Mode(at) => put_u32(&mut body, at, mode(inp)),
                F::Size(at) => put_u32(&mut body, at, size(inp)),
                F::Off(at) => put_u64(&mut body, at, offset(inp)),
                F::Len(at) => put_u64(&mut body, at, offset(inp)),
                F::Word(at) => put_u32(&mut body, at, inp.u32()),
            }
        }
        if opcode == INIT {
            // A driver that speaks FUSE 7.x, unless the word says otherwise.
            if shape & 1 == 0 {
                put_u32(&mut body, 0, 7);
                let minor = 31 + get_u64(&body, 4) as u32 % 8;
                put_u32(&mut body, 4, minor);
            }
        }
        for _ in 0..o.names {
            name(inp, &mut body);
        }
        match opcode {
            WRITE | SETXATTR => {
                let data = inp.blob(255);
                if opcode == WRITE {
                    put_u32(&mut body, 16, data.len() as u32);
                } else {
                    put_u32(&mut body, 0, data.len() as u32);
                }
                body.extend_from_slice(data);
            }
            BATCH_FORGET => {
                let n = inp.below(4);
                put_u32(&mut body, 0, u32::from(n));
                for _ in 0..n {
                    let node = State::pick(&st.nodes, inp);
                    body.extend_from_slice(&node.to_le_bytes());
                    body.extend_from_slice(&u64::from(inp.u8()).to_le_bytes());
                }
            }
            _ => {}
        }
    }
    bound_sizes(opcode, &mut body);
    st.unique += 1;
    let unique = st.unique;
    let total = IN_HEADER + body.len();
    let len = if shape & 2 != 0 {
        inp.u32()
    } else {
        total as u32
    };
    let mut msg = Vec::with_capacity(total);
    msg.extend_from_slice(&len.to_le_bytes());
    msg.extend_from_slice(&opcode.to_le_bytes());
    msg.extend_from_slice(&unique.to_le_bytes());
    msg.extend_from_slice(&nodeid.to_le_bytes());
    msg.extend_from_slice(&uid.to_le_bytes());
    msg.extend_from_slice(&gid.to_le_bytes());
    msg.extend_from_slice(&1u32.to_le_bytes()); // pid
    msg.extend_from_slice(&0u32.to_le_bytes());
    msg.extend_from_slice(&body);

    let req = guest.put(&msg);
    let mut bufs = Vec::new();
    let n = msg.len() as u32;
    match (shape >> 4) & 3 {
        1 if n > IN_HEADER as u32 => {
            bufs.push(Buf::readable(req, IN_HEADER as u32));
            bufs.push(Buf::readable(req + IN_HEADER as u64, n - IN_HEADER as u32));
        }
        2 if n > 1 => {
            let cut = 1 + u32::from(inp.u16()) % (n - 1);
            bufs.push(Buf::readable(req, cut));
            bufs.push(Buf::readable(req + u64::from(cut), n - cut));
        }
        3 => {
            let step = 1 + u32::from(inp.below(16));
            let mut at = 0;
            while at < n && bufs.len() < 15 {
                let l = step.min(n - at);
                bufs.push(Buf::readable(req + u64::from(at), l));
                at += l;
            }
            if at < n {
                bufs.push(Buf::readable(req + u64::from(at), n - at));
            }
        }
        _ => bufs.push(Buf::readable(req, n)),
    }
    let reply_body = spec.map_or(0, |o| o.reply);
    let reply_len = match (shape >> 2) & 3 {
        0 => (OUT_HEADER + reply_body) as u32,
        1 => 4096,
        2 => u32::from(inp.u8()),
        _ => size(inp),
    };
    let mut reply = Vec::new();
    if reply_len > 0 {
        let pieces = 1 + u32::from(inp.below(3));
        let each = reply_len.div_ceil(pieces);
        let mut left = reply_len;
        while left > 0 {
            let l = each.min(left);
            let addr = if u64::from(l) > MAX_ALLOC_LEN {
                guest.addr(inp, u64::from(l))
            } else {
                guest.alloc(u64::from(l))
            };
            reply.push(Buf::writable(addr, l));
            left -= l;
        }
    }
    bufs.extend_from_slice(&reply);
    if shape & 0x80 != 0 {
        // A readable buffer after the writable ones: misordered.
        bufs.push(Buf::readable(req, 8));
    }
    let head = guest.push(q, &bufs, shape & 0x40 != 0);
    crate::trace!(
        "virtio_fs: offer head {head} on {q}: opcode {opcode} unique {unique} len {len} bufs {bufs:x?}"
    );
    // A head names one outstanding chain: an older request on the same
    // head (never answered, or its used entry was not seen) is no longer
    // what the device will answer for it.
    st.pending.retain(|p| !(p.q == q && p.head == head));
    st.pending.push(Pending {
        q,
        head,
        opcode,
        unique,
        reply,
    });
}

/// Seed writers mirroring the decoder.
pub mod seed {
    use super::*;

    pub fn header(s: &mut Seed, read_only: bool) {
        crate::guest::seed::setup(s, 4, 0);
        s.u8(u8::from(read_only));
    }

    /// Starts a request of `code` on the request queue for node selector
    /// `node` (0 = the root, n = the n-th node learned), as uid 0, with
    /// chosen (not raw) body fields and an exact-size reply buffer in one
    /// piece. The caller then writes each field of the opcode's table
    /// entry, then its names.
    pub fn request(s: &mut Seed, code: u32, node: u8) {
        s.u8(REQUEST).u8(1).u8(op_index(code)).u8(0).u8(node).u8(0);
    }

    /// The reply size choice (one piece) that ends a request.
    pub fn end(s: &mut Seed) {
        s.u8(0);
    }

    pub fn name(s: &mut Seed, name: &[u8]) {
        match NAMES.iter().position(|n| *n == name) {
            Some(i) => s.u8(i as u8),
            None => s.u8(0xfe).blob(name),
        };
    }

    /// An open-flags field: one flag from the table.
    pub fn flags(s: &mut Seed, flags: i32) {
        let i = OPEN_FLAGS.iter().position(|&f| f == flags).unwrap_or(0);
        s.u8(0).u8(i as u8);
    }

    pub fn process(s: &mut Seed) {
        s.u8(PROCESS).u8(1);
    }

    pub fn init(s: &mut Seed) {
        request(s, INIT, 0);
        s.u32(7).u32(31).u32(0);
        end(s);
        process(s);
    }

    pub fn lookup(s: &mut Seed, parent: u8, n: &[u8]) {
        request(s, LOOKUP, parent);
        name(s, n);
        end(s);
        process(s);
    }

    /// OPEN (or OPENDIR) of node selector `node` with `flags`.
    pub fn open(s: &mut Seed, node: u8, flags: i32, dir: bool) {
        request(s, if dir { OPENDIR } else { OPEN }, node);
        self::flags(s, flags);
        if !dir {
            s.u32(0);
        }
        end(s);
        process(s);
    }

    /// READ (or READDIR) `size` bytes at 0 of handle selector `fh`.
    pub fn read(s: &mut Seed, node: u8, fh: u8, size: u16, dir: bool) {
        request(s, if dir { READDIR } else { READ }, node);
        s.u8(fh).u8(0).u8(2).u16(size);
        if !dir {
            s.u32(0);
            self::flags(s, libc::O_RDONLY);
        }
        end(s);
        process(s);
    }

    /// WRITE of `data` at 0 through handle selector `fh`.
    pub fn write(s: &mut Seed, node: u8, fh: u8, data: &[u8]) {
        request(s, WRITE, node);
        s.u8(fh).u8(0).u32(0);
        self::flags(s, libc::O_RDWR);
        s.blob(data);
        end(s);
        process(s);
    }

    /// CREATE `n` in node selector `parent` with `flags` and `mode`.
    pub fn create(s: &mut Seed, parent: u8, n: &[u8], flags: i32, mode: u32) {
        request(s, CREATE, parent);
        self::flags(s, flags);
        s.u8(2).u32(mode);
        s.u32(0);
        name(s, n);
        end(s);
        process(s);
    }

    /// MKDIR `n` in `parent`.
    pub fn mkdir(s: &mut Seed, parent: u8, n: &[u8]) {
        request(s, MKDIR, parent);
        s.u8(1).u32(0);
        name(s, n);
        end(s);
        process(s);
    }

    /// A request with no body fields (READLINK, STATFS, UNLINK, ...), with
    /// `names`.
    pub fn simple(s: &mut Seed, code: u32, node: u8, names: &[&[u8]]) {
        request(s, code, node);
        for n in names {
            name(s, n);
        }
        end(s);
        process(s);
    }

    /// SETATTR of `node`: `valid` bits, mode and size.
    pub fn setattr(s: &mut Seed, node: u8, valid: u32, mode: u32, size: u64) {
        request(s, SETATTR, node);
        s.u32(valid)
            .u8(0xf0)
            .u8(3)
            .u64(size)
            .u8(2)
            .u32(mode)
            .u32(0)
            .u32(0);
        end(s);
        process(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_snapshot_sees_every_change_outside() {
        let root = crate::scratch("virtio_fs-snapshot-test");
        let outside = root.join("outside");
        let _ = std::fs::remove_dir_all(&outside);
        std::fs::create_dir_all(outside.join("sub")).unwrap();
        std::fs::write(outside.join("f"), b"one").unwrap();
        let before = Snapshot::take(&root, &outside);
        assert_eq!(before, Snapshot::take(&root, &outside));

        std::fs::write(outside.join("f"), b"two").unwrap();
        assert_ne!(before, Snapshot::take(&root, &outside), "content");
        std::fs::write(outside.join("f"), b"one").unwrap();
        std::fs::set_permissions(outside.join("f"), PermissionsExt::from_mode(0o4755)).unwrap();
        assert_ne!(before, Snapshot::take(&root, &outside), "mode");
        std::fs::write(outside.join("sub/new"), b"").unwrap();
        let after = Snapshot::take(&root, &outside);
        std::fs::write(root.join("next-to-share"), b"").unwrap();
        assert_ne!(
            after,
            Snapshot::take(&root, &outside),
            "a new entry beside the share"
        );
        // Only this test uses the scratch directory in this binary.
        crate::cleanup();
    }

    #[test]
    fn secrets_are_found_anywhere_in_memory() {
        let mut hay = vec![0u8; 4096];
        assert!(!contains(&hay, b"SKIFF-SECRET"));
        hay[4090 - 12..4090].copy_from_slice(b"SKIFF-SECRET");
        assert!(contains(&hay, b"SKIFF-SECRET"));
        assert!(!contains(&hay, b""));
    }
}
