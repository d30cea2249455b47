//! Snapshot and restore of a real guest through vm-run: one boot of the
//! debug guest, a snapshot of it once it has counted to 3, broken copies
//! of that snapshot refused with the reason named, then a restore that
//! goes on counting, writing its disk, mounting its virtio-fs share and
//! answering on vsock; a snapshot of a guest that has mounted its share is
//! refused.
//!
//! The guest counts on its console and writes each count to a disk with
//! `dd conv=fsync`; at count 6 (after the snapshot) it mounts the share
//! and prints the file `hello` in it; `vsock-test` listens for one echo
//! connection. Every restore uses the same kernel, initrd, command line,
//! memory and devices as the boot (a snapshot is only restored into the VM
//! it was taken of); the vsock socket, the console file and the shared
//! directory are the restoring run's own, the disk image is the same file
//! (the guest's page cache expects what it wrote).

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use skiff_tests::{debug_initramfs, hybrid_connect, kernel, vm_run, workspace_binary, Scratch};

const ECHO_PORT: u32 = 1024;
const MEMORY_MIB: &str = "256";
const GUEST: &str = "vsock-test -l 1024:1 & i=0; while [ $i -lt 100000 ]; do i=$((i+1)); \
                     echo count $i; echo count $i | dd of=/dev/vda conv=fsync 2>/dev/null; \
                     if [ $i = 6 ]; then mkdir -p /mnt/s; mount -t virtiofs snapfs /mnt/s; \
                     cat /mnt/s/hello; fi; sleep 1; done";

/// vm-run's flags for this guest, with the host ends of its devices in
/// `run` (a directory of the scratch space per run) and `kernel` as given.
fn flags(scratch: &Scratch, run: &str, kernel: &Path) -> Vec<String> {
    let dir = scratch.path(run);
    std::fs::create_dir_all(dir.join("share")).unwrap();
    std::fs::write(dir.join("share/hello"), format!("the share of {run}\n")).unwrap();
    let path = |name: &str| dir.join(name).display().to_string();
    [
        "--kernel".into(),
        kernel.display().to_string(),
        "--initrd".into(),
        debug_initramfs().display().to_string(),
        "--memory".into(),
        MEMORY_MIB.into(),
        "--disk".into(),
        format!("path={}", scratch.path("disk.img").display()),
        "--vsock".into(),
        format!("cid=3,socket={}", path("vsock.sock")),
        "--fs".into(),
        format!("tag=snapfs,path={}", path("share")),
        "--console".into(),
        format!("file:{}", path("console.log")),
        "--json".into(),
        "--timeout".into(),
        "600".into(),
    ]
    .into_iter()
    .collect()
}

fn with_guest(mut flags: Vec<String>) -> Vec<String> {
    flags.extend(["--".into(), "sh".into(), "-c".into(), GUEST.into()]);
    flags
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The counts the console of `run` shows, in order.
fn counts(scratch: &Scratch, run: &str) -> Vec<u32> {
    let log = std::fs::read_to_string(scratch.path(run).join("console.log")).unwrap_or_default();
    log.lines()
        .filter_map(|l| l.trim().strip_prefix("count "))
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

/// A copy of the snapshot in `from`, with its memory file linked (restores
/// only read it) or replaced, and its state file edited by `state`.
fn broken_copy(
    from: &Path,
    to: &Path,
    state: impl Fn(String) -> String,
    memory_len: Option<u64>,
) -> PathBuf {
    std::fs::DirBuilder::new().mode(0o700).create(to).unwrap();
    let json = std::fs::read_to_string(from.join("state.json")).unwrap();
    std::fs::write(to.join("state.json"), state(json)).unwrap();
    match memory_len {
        None => std::fs::hard_link(from.join("memory"), to.join("memory")).unwrap(),
        Some(len) => std::fs::File::create(to.join("memory"))
            .unwrap()
            .set_len(len)
            .unwrap(),
    }
    to.to_path_buf()
}

/// Restores `snapshot` with `flags` and expects vm-run to refuse, quickly
/// and without running a guest, with a line that contains `says`.
fn refused(flags: Vec<String>, snapshot: &Path, says: &str) {
    let mut args = flags;
    args.extend(["--restore".into(), snapshot.display().to_string()]);
    let started = Instant::now();
    let run = vm_run(&strs(&with_guest(args)));
    assert_eq!(run.status, Some(2), "{}", run.stderr);
    let line = run
        .stderr
        .lines()
        .find(|l| l.starts_with("vm-run: "))
        .unwrap_or_default();
    assert!(line.contains(says), "expected `{says}` in: {}", run.stderr);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_restored_guest_goes_on_counting_with_its_disk_and_vsock() {
    let scratch = Scratch::new("snapshot");
    std::fs::write(scratch.path("disk.img"), vec![0u8; 1 << 20]).unwrap();
    let snapshot = scratch.path("snap");

    // Boot, count to 3, snapshot, stop.
    let mut boot = flags(&scratch, "boot", &kernel());
    boot.extend([
        "--snapshot-after".into(),
        "console:count 3".into(),
        snapshot.display().to_string(),
    ]);
    let run = vm_run(&strs(&with_guest(boot)));
    assert_eq!(run.status, Some(0), "{}", run.stderr);
    assert!(
        run.stderr.contains("vm-run: snapshot written to"),
        "{}",
        run.stderr
    );
    let snapshot_ms = run.report()["snapshot_ms"].as_f64().expect("snapshot_ms");
    let before = counts(&scratch, "boot");
    assert!(before.starts_with(&[1, 2, 3]), "{before:?}");
    let last_before = *before.last().unwrap();
    for (name, mode) in [("", 0o700), ("state.json", 0o600), ("memory", 0o600)] {
        let meta = std::fs::metadata(snapshot.join(name)).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(meta.permissions().mode() & 0o777, mode, "{name}");
    }
    eprintln!("snapshot: {snapshot_ms:.1} ms, counted to {last_before}");

    // Broken snapshots and another VM are refused, each with its reason.
    let truncated = broken_copy(&snapshot, &scratch.path("truncated"), |s| s, Some(1 << 20));
    refused(flags(&scratch, "r1", &kernel()), &truncated, "memory file");
    let version = broken_copy(
        &snapshot,
        &scratch.path("version"),
        |s| s.replacen("\"format\":1,", "\"format\":99,", 1),
        None,
    );
    refused(flags(&scratch, "r2", &kernel()), &version, "(format 99)");
    let garbage = broken_copy(
        &snapshot,
        &scratch.path("garbage"),
        |s| s[..s.len() / 2].into(),
        None,
    );
    refused(flags(&scratch, "r3", &kernel()), &garbage, "is unreadable");
    let other_kernel = scratch.path("vmlinux-rebuilt");
    std::fs::copy(kernel(), &other_kernel).unwrap();
    refused(flags(&scratch, "r4", &other_kernel), &snapshot, "kernel");
    let mut small = flags(&scratch, "r5", &kernel());
    let at = small.iter().position(|f| f == "--memory").unwrap();
    small[at + 1] = "128".into();
    refused(small, &snapshot, "does not match this VM");

    // The real restore: it goes on where it stopped.
    let mut restore = flags(&scratch, "restored", &kernel());
    restore.extend(["--restore".into(), snapshot.display().to_string()]);
    let mut child = Command::new(workspace_binary("vm-run"))
        .args(with_guest(restore))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    let after = loop {
        let after = counts(&scratch, "restored");
        if after.len() >= 3 {
            break after;
        }
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("the restored VM ended ({status}): {err}");
        }
        assert!(
            Instant::now() < deadline,
            "the restored guest does not count: {after:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // Where it stopped: the next count, or the one after it if the pause
    // came in the middle of printing a line.
    assert!(
        after[0] == last_before + 1 || after[0] == last_before + 2,
        "before {before:?}, after {after:?}"
    );
    assert!(after.windows(2).all(|w| w[1] == w[0] + 1), "{after:?}");

    // The disk holds a count written after the restore.
    let disk = std::fs::read(scratch.path("disk.img")).unwrap();
    let on_disk: u32 = String::from_utf8_lossy(&disk[..32])
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("count "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count on the disk: {:?}", &disk[..32]));
    assert!(
        on_disk > last_before,
        "disk has count {on_disk}, the snapshot {last_before}"
    );

    // A new vsock connection reaches the guest's listener.
    let socket = scratch.path("restored").join("vsock.sock");
    let mut stream = loop {
        match hybrid_connect(&socket, ECHO_PORT) {
            Ok(stream) => break stream,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "no vsock listener after restore: {e}"
                );
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    stream.write_all(b"hello after restore").unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let mut echoed = Vec::new();
    stream.read_to_end(&mut echoed).unwrap();
    assert_eq!(echoed, b"hello after restore");

    // The share restored unmounted is mounted from the restoring VM's
    // directory.
    let console = || {
        std::fs::read_to_string(scratch.path("restored").join("console.log")).unwrap_or_default()
    };
    while !console().contains("the share of restored") {
        assert!(
            Instant::now() < deadline,
            "the restored guest did not read its share:\n{}",
            console()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(!console().contains("the share of boot"));
    child.kill().unwrap();
    child.wait().unwrap();

    // A guest that has mounted its share cannot be snapshotted: its FUSE
    // session is not saved.
    let mut again = flags(&scratch, "again", &kernel());
    again.extend([
        "--restore".into(),
        snapshot.display().to_string(),
        "--snapshot-after".into(),
        "console:the share of again".into(),
        scratch.path("snap-mounted").display().to_string(),
    ]);
    let run = vm_run(&strs(&with_guest(again)));
    assert_ne!(run.status, Some(0), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("its FUSE session has started (the guest has mounted the share)"),
        "{}",
        run.stderr
    );
    assert!(
        !scratch.path("snap-mounted").exists(),
        "a refused snapshot leaves its directory"
    );
}
