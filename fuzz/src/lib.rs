//! Fuzz targets for everything a guest can feed Skiff's devices: one
//! function per target taking the raw input. The libFuzzer binaries in
//! `fuzz_targets/` call them (`scripts/fuzz.sh TARGET SECONDS`), and
//! `tests/replay.rs` runs the committed corpus and every past crash input
//! through them on a normal `cargo test`.
//!
//! Each input is decoded ([`input`]) into a sequence of driver actions:
//! descriptors with any address, length, flags and next, chains offered or
//! not, nonsense avail indexes, memory pokes into the rings, device calls,
//! and well-formed requests of the device's own protocol, so the fuzzer
//! reaches deep code and hostile shapes alike. After every device call and
//! every input, the invariants a hostile guest must not break are checked,
//! and a broken one panics (a libFuzzer crash):
//! - a used length never exceeds the chain's device-writable bytes, no head
//!   outside the ring is returned, no more entries than the ring holds;
//! - the process holds as many fds after the input (device dropped) as
//!   before it;
//! - virtio-fs: nothing outside the share changed, and no byte of a host
//!   file outside it reached guest memory;
//! - virtio-blk: the image keeps its size;
//! - virtio-net: every frame is accounted for in the device's counters;
//! - every call returns (libFuzzer's `-timeout` reports a spin).
//!
//! Targets serialize on one lock: the fd count is process-wide.

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

pub mod guest;
pub mod input;
pub mod seeds;

mod blk;
mod fs;
mod mmio;
mod net;
mod vsock;

/// The targets, by the names of their binaries and corpus directories.
pub const TARGETS: [&str; 5] = ["virtio_fs", "virtio_blk", "virtio_net", "vsock", "mmio"];

/// FUSE requests over a real temporary share (fuse-backend-rs passthrough
/// behind Skiff's `ShareFs`).
pub fn virtio_fs(data: &[u8]) {
    let _lock = lock();
    fs::run(data);
}

/// virtio-blk requests on a temporary raw image.
pub fn virtio_blk(data: &[u8]) {
    let _lock = lock();
    blk::run(data);
}

/// virtio-net TX and RX through the data path, with an in-memory backend.
pub fn virtio_net(data: &[u8]) {
    let _lock = lock();
    net::run(data);
}

/// virtio-vsock TX, RX and host-side events through the worker and muxer,
/// with real Unix sockets on the host side.
pub fn vsock(data: &[u8]) {
    let _lock = lock();
    vsock::run(data);
}

/// virtio-mmio register accesses on a transport over a stub device or a
/// real one (whose worker thread then runs on what the guest set up).
pub fn mmio(data: &[u8]) {
    let _lock = lock();
    mmio::run(data);
}

/// Runs `data` through the target named `name`; false for an unknown name.
pub fn run_target(name: &str, data: &[u8]) -> bool {
    match name {
        "virtio_fs" => virtio_fs(data),
        "virtio_blk" => virtio_blk(data),
        "virtio_net" => virtio_net(data),
        "vsock" => vsock(data),
        "mmio" => mmio(data),
        _ => return false,
    }
    true
}

/// What every libFuzzer binary does once before the first input: a peer
/// that closed its socket must give EPIPE, not kill the process (libFuzzer's
/// C++ `main` skips Rust's own SIGPIPE setup).
pub fn init() {
    // SAFETY: setting a signal's disposition to SIG_IGN has no other effect.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

static LOCK: Mutex<()> = Mutex::new(());

/// Whether `SKIFF_FUZZ_TRACE` is set: the targets then print what the
/// devices answered (to see what an input does; slow).
pub fn tracing() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("SKIFF_FUZZ_TRACE").is_some())
}

/// Whether `SKIFF_FUZZ_SKIP` (a comma-separated list) names `finding`: the
/// targets then steer around a known, not yet fixed finding, so a fuzzing
/// run can look for others instead of stopping at it again. Known names:
/// `avail-at-0` (a queue whose avail ring is at guest address 0).
pub fn skip(finding: &str) -> bool {
    static LIST: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    LIST.get_or_init(|| {
        std::env::var("SKIFF_FUZZ_SKIP")
            .unwrap_or_default()
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    })
    .iter()
    .any(|s| s == finding)
}

/// `eprintln!` when [`tracing`] is on.
#[macro_export]
macro_rules! trace {
    ($($arg:tt)*) => {
        if $crate::tracing() {
            eprintln!($($arg)*);
        }
    };
}

fn lock() -> MutexGuard<'static, ()> {
    init();
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Open fds of this process.
pub(crate) fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Checks that the fds of the process are back to where they were.
pub(crate) struct FdCheck(usize, &'static str);

impl FdCheck {
    pub fn start(what: &'static str) -> Self {
        Self(fd_count(), what)
    }

    /// Call once the device and everything the input opened is dropped.
    pub fn finish(self) {
        let now = fd_count();
        assert_eq!(
            now, self.0,
            "{}: the process had {} fds before the input and {now} after it (device dropped)",
            self.1, self.0
        );
    }
}

/// This process's scratch directory for `target` (under `TMPDIR`), made
/// on first use.
pub(crate) fn scratch(target: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("skiff-fuzz-{}", std::process::id()));
    let dir = dir.join(target);
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

/// Removes this process's scratch directories (the replay test calls it;
/// the fuzzer's scratch is a tmpfs that goes with its namespace).
pub fn cleanup() {
    let dir = std::env::temp_dir().join(format!("skiff-fuzz-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(dir);
}
