//! containerd-shim-skiff-v2 under a private, real containerd, driven with
//! `ctr`: each `ctr run` boots a sandbox VM in the shim process. Few VMs,
//! many checks in each; prints each step's time. The same checks run on
//! Debian's containerd 1.6 and on a 2.x release when one is unpacked.

use std::process::Command;
use std::time::{Duration, Instant};

use skiff_tests::containerd::{
    image_archive, leftovers, one_at_a_time, Containerd, Ctr, Release, TestNetns, BUSYBOX,
    NAMESPACE, RUNTIME,
};
use skiff_tests::{Scratch, Steps};

/// Nothing of container `id` is left: no state, mount, tap or shim, and
/// no shim socket in containerd's socket directory.
fn assert_clean(ctrd: &Containerd, id: &str) {
    // containerd cleans up asynchronously after a task ends.
    let deadline = Instant::now() + Duration::from_secs(30);
    let socket = ctrd.shim_socket(NAMESPACE, id);
    loop {
        let mut left = leftovers(id);
        if socket.exists() {
            left.push(format!("shim socket {}", socket.display()));
        }
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{id} left behind: {left:#?}\ncontainerd log:\n{}",
            ctrd.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn expect(out: &Ctr, code: i32, what: &str, ctrd: &Containerd) {
    assert_eq!(
        out.code,
        Some(code),
        "{what}: {out:#?}\ncontainerd log:\n{}",
        ctrd.log()
    );
}

fn task_status(ctrd: &Containerd, id: &str) -> Option<String> {
    let out = ctrd.ctr(&["task", "ls"]);
    out.stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .and_then(|l| l.split_whitespace().nth(2))
        .map(str::to_string)
}

fn wait_status(ctrd: &Containerd, id: &str, status: &str) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while task_status(ctrd, id).as_deref() != Some(status) {
        assert!(
            Instant::now() < deadline,
            "task {id} never became {status}\n{}",
            ctrd.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A probe the container runs: opens its argument with O_PATH through the
/// virtio-fs share (the container's rootfs is one), then tries to read it.
const OPATH_PROBE: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>
int main(int argc, char **argv) {
    char buf[64];
    int fd = open(argv[1], O_PATH);
    if (fd < 0) { printf("open-failed %d\n", errno); return 0; }
    ssize_t n = read(fd, buf, sizeof buf);
    printf("read %zd errno %d\n", n, n < 0 ? errno : 0);
    n = pread(fd, buf, sizeof buf, 0);
    printf("pread %zd errno %d\n", n, n < 0 ? errno : 0);
    return 0;
}
"#;

/// What a guest (root in its container) tries against the host through the
/// share, and what the host must show for it: the O_PATH read fails, a
/// setuid-root binary and a FIFO it makes are on a nosuid,nodev mount the
/// host never runs setuid or opens as a device, and no host user can reach
/// the sandbox's state directory.
fn hostile_guest(ctrd: &Containerd, scratch: &std::path::Path) {
    let src = scratch.join("opath-probe.c");
    std::fs::write(&src, OPATH_PROBE).unwrap();
    let state = std::path::Path::new("/run/skiff/sbs/long");
    let rootfs = state.join("shared/long/rootfs");
    let probe = rootfs.join("opath-probe");
    let cc = Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(&probe)
        .arg(&src)
        .output()
        .expect("run cc");
    assert!(
        cc.status.success(),
        "cc: {}",
        String::from_utf8_lossy(&cc.stderr)
    );
    let out = ctrd.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "h1",
        "long",
        "/opath-probe",
        "/etc/passwd",
    ]);
    expect(&out, 0, "O_PATH probe", ctrd);
    let ebadf = format!("errno {}", libc::EBADF);
    assert!(
        out.stdout.lines().filter(|l| l.ends_with(&ebadf)).count() == 2,
        "an O_PATH fd read something: {}",
        out.stdout
    );

    let out = ctrd.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "h2",
        "long",
        "sh",
        "-c",
        "cp /bin/busybox /suid && chmod 4755 /suid && mknod /fifo p && echo planted",
    ]);
    expect(&out, 0, "plant setuid file and FIFO", ctrd);
    assert_eq!(out.stdout, "planted\n");
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    let suid = rootfs.join("suid");
    assert_eq!(std::fs::metadata(&suid).unwrap().mode() & 0o7777, 0o4755);
    assert!(std::fs::metadata(rootfs.join("fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    // The host's view of everything the guest writes is nosuid,nodev.
    for path in [&suid, &rootfs.join("fifo"), &state.join("shared")] {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: statvfs fills the struct we pass.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(
            unsafe { libc::statvfs(c.as_ptr(), &mut st) },
            0,
            "{}",
            path.display()
        );
        let want = libc::ST_NOSUID | libc::ST_NODEV;
        assert_eq!(
            st.f_flag & want,
            want,
            "{} is not on a nosuid,nodev mount",
            path.display()
        );
    }
    let mode = std::fs::metadata(state).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode,
        0o700,
        "state directory {} is {mode:o}",
        state.display()
    );
    std::fs::remove_file(&probe).unwrap();
}

/// Bad input fails the `ctr run` with a message naming the problem and
/// leaves nothing behind. None of these boots a VM.
fn bad_input(ctrd: &Containerd, scratch: &std::path::Path) {
    let config = |name: &str, text: &str| {
        let path = scratch.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    };
    let missing_kernel = config(
        "missing-kernel.toml",
        "[hypervisor]\nkernel = \"/nonexistent/vmlinux\"\n",
    );
    let unknown_option = config("unknown-option.toml", "[hypervisor]\nmemory = 128\n");
    let bad_spec = config(
        "config.json",
        r#"{"ociVersion": "1.0.2",
            "process": {"args": ["true"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "root": {"path": "rootfs"},
            "linux": {"namespaces": [{"type": "pid"}, {"type": "bogus"}]}}"#,
    );
    let missing_disk = config(
        "missing-disk.json",
        r#"{"ociVersion": "1.0.2",
            "process": {"args": ["true"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "root": {"path": "rootfs"},
            "linux": {"devices": [{"path": "/dev/nope", "type": "b", "major": 4095, "minor": 4095}]}}"#,
    );
    let cases: [(&str, Vec<&str>, &str); 5] = [
        (
            "bad-kernel",
            vec![
                "--runtime-config-path",
                &missing_kernel,
                BUSYBOX,
                "bad-kernel",
                "true",
            ],
            "configured kernel /nonexistent/vmlinux does not exist",
        ),
        (
            "bad-option",
            vec![
                "--runtime-config-path",
                &unknown_option,
                BUSYBOX,
                "bad-option",
                "true",
            ],
            "unknown field `memory`",
        ),
        (
            "bad-rootfs",
            vec!["--rootfs", "/nonexistent/rootfs", "bad-rootfs", "true"],
            "rootfs /nonexistent/rootfs does not exist",
        ),
        (
            "bad-spec",
            vec!["--config", &bad_spec, "bad-spec"],
            "unknown variant `bogus`",
        ),
        (
            "bad-device",
            vec!["--config", &missing_disk, "bad-device"],
            "block device /dev/nope (4095:4095): not on this host",
        ),
    ];
    for (id, args, message) in cases {
        let mut full = vec!["run", "--rm", "--runtime", RUNTIME];
        full.extend(args);
        let out = ctrd.ctr(&full);
        assert_ne!(out.code, Some(0), "{id} succeeded: {out:?}");
        assert!(
            out.stderr.contains(message),
            "{id}: error does not say {message:?}: {}",
            out.stderr
        );
        assert_clean(ctrd, id);
        // `--rm` does not remove a container whose task never started.
        ctrd.ctr(&["containers", "rm", id]);
    }
}

#[test]
fn on_containerd_1_6() {
    let _turn = one_at_a_time();
    containers_run_through_real_containerd(&Release::system(), "shim-1.6");
}

#[test]
fn on_containerd_2() {
    let Some(release) = Release::containerd_2_or_skip() else {
        return;
    };
    let _turn = one_at_a_time();
    containers_run_through_real_containerd(&release, "shim-2");
}

fn containers_run_through_real_containerd(release: &Release, name: &str) {
    let scratch = Scratch::new(name);
    let mut steps = Steps::start();
    let ctrd = Containerd::start(&scratch.0.join("ctrd"), release);
    ctrd.import(NAMESPACE, &image_archive(BUSYBOX, &[]));
    steps.mark("containerd started, busybox imported");

    bad_input(&ctrd, &scratch.0);
    steps.mark("bad input: 5 clear errors, nothing left");

    let run = |args: &[&str]| {
        let mut full = vec!["run", "--rm", "--runtime", RUNTIME, BUSYBOX];
        full.extend(args);
        ctrd.ctr(&full)
    };
    let out = run(&["hello", "echo", "hello"]);
    expect(&out, 0, "echo hello", &ctrd);
    assert_eq!(out.stdout, "hello\n");
    assert_clean(&ctrd, "hello");
    steps.mark("ctr run --rm echo hello (boot + run + delete)");

    // A terminal, and the exit code of the container's process.
    let out = ctrd.ctr_tty(&[
        "run",
        "-t",
        "--rm",
        "--runtime",
        RUNTIME,
        BUSYBOX,
        "tty",
        "sh",
        "-c",
        "tty; exit 3",
    ]);
    expect(&out, 3, "run -t sh -c 'tty; exit 3'", &ctrd);
    assert!(out.stdout.contains("/dev/pts/"), "no terminal: {out:?}");
    assert_clean(&ctrd, "tty");
    steps.mark("ctr run -t --rm: TTY output, exit 3");

    // A long-running container in a network namespace made like a CNI
    // plugin would (veth with an address), with a host block device passed
    // in (hot-added to the running VM): exec into it, reach the host over
    // the pod network, use the disk, pause, resume, kill.
    let long_net = TestNetns::new(1);
    let disk = LoopDevice::new(&scratch.0.join("disk.img"));
    let with_ns = format!("network:{}", long_net.path.display());
    let mut long_cmd = ctrd.ctr_command(NAMESPACE);
    long_cmd
        .args(["run", "--rm", "--runtime", RUNTIME])
        .args([
            "--with-ns",
            &with_ns,
            "--memory-limit",
            "67108864",
            "--cpus",
            "0.5",
            "--device",
            &disk.path,
        ])
        .arg(BUSYBOX)
        .args(["long", "sleep", "1000"]);
    let long_run =
        std::thread::spawn(move || -> Ctr { long_cmd.output().expect("run ctr").into() });
    wait_status(&ctrd, "long", "RUNNING");
    steps.mark("ctr run long (boot + start)");

    let out = ctrd.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "long",
        "sh",
        "-c",
        "echo exec-out; exit 4",
    ]);
    expect(&out, 4, "exec exit 4", &ctrd);
    assert_eq!(out.stdout, "exec-out\n");
    let out = ctrd.ctr_tty(&[
        "task",
        "exec",
        "-t",
        "--exec-id",
        "e2",
        "long",
        "sh",
        "-c",
        "tty",
    ]);
    expect(&out, 0, "exec -t tty", &ctrd);
    assert!(
        out.stdout.contains("/dev/pts/"),
        "exec without terminal: {out:?}"
    );
    steps.mark("ctr task exec: output, exit 4, TTY");

    let out = ctrd.ctr(&["task", "exec", "--exec-id", "e3", "long", "ip", "addr"]);
    expect(&out, 0, "ip addr", &ctrd);
    assert!(
        out.stdout.contains(&format!("inet {}/24", long_net.pod_ip)),
        "the pod's address is not in the guest: {}",
        out.stdout
    );
    let ping = ["ping", "-c", "1", "-W", "20", long_net.host_ip.as_str()];
    let mut exec = vec!["task", "exec", "--exec-id", "e4", "long"];
    exec.extend(ping);
    expect(
        &ctrd.ctr(&exec),
        0,
        "ping the host from the container",
        &ctrd,
    );
    let host_ping = Command::new("ping")
        .args(["-c", "1", "-W", "20", &long_net.pod_ip])
        .output()
        .unwrap();
    assert!(
        host_ping.status.success(),
        "host cannot ping the pod: {host_ping:?}"
    );
    assert!(long_net.ip(&["link"]).contains("skiff-tap0"));
    steps.mark("pod network: address in the guest, ping both ways");

    // The host's disk, hot-added when the container was created, is in
    // the container under its host name: the guest reads what the host
    // wrote and the host reads what the guest writes.
    let script = format!(
        "md5sum {dev} | cut -d' ' -f1; echo written-by-the-guest | dd of={dev} conv=notrunc,fsync 2>/dev/null && echo ok",
        dev = disk.path
    );
    let out = ctrd.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e6",
        "long",
        "sh",
        "-c",
        &script,
    ]);
    expect(&out, 0, "use the hot-added disk", &ctrd);
    assert_eq!(out.stdout, format!("{}\nok\n", disk.initial_md5));
    assert_eq!(disk.head(20), b"written-by-the-guest");
    steps.mark("--device: a host disk hot-added into the running VM, read and written");

    // The spec's limits are the guest cgroup's, and come back in metrics.
    let out = ctrd.ctr(&["task", "metrics", "long"]);
    expect(&out, 0, "metrics", &ctrd);
    let metric = |name: &str| -> Option<String> {
        out.stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .map(str::to_string)
    };
    assert_eq!(
        metric("memory.usage_limit").as_deref(),
        Some("67108864"),
        "{}",
        out.stdout
    );
    assert!(
        metric("pids.current").is_some_and(|n| n != "0"),
        "{}",
        out.stdout
    );
    // The guest clock was set from the host's at boot (SetGuestDateTime).
    let out = ctrd.ctr(&["task", "exec", "--exec-id", "e5", "long", "date", "+%s"]);
    expect(&out, 0, "date", &ctrd);
    let guest_now: i64 = out.stdout.trim().parse().unwrap();
    let host_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (guest_now - host_now).abs() < 120,
        "guest clock {guest_now}, host {host_now}"
    );
    hostile_guest(&ctrd, &scratch.0);
    steps.mark("hostile guest: O_PATH read refused, setuid file and FIFO inert on the host");

    expect(&ctrd.ctr(&["task", "pause", "long"]), 0, "pause", &ctrd);
    assert_eq!(task_status(&ctrd, "long").as_deref(), Some("PAUSED"));
    expect(&ctrd.ctr(&["task", "resume", "long"]), 0, "resume", &ctrd);
    assert_eq!(task_status(&ctrd, "long").as_deref(), Some("RUNNING"));
    steps.mark("metrics, guest clock, pause, resume");

    expect(
        &ctrd.ctr(&["task", "kill", "-s", "SIGKILL", "long"]),
        0,
        "kill",
        &ctrd,
    );
    let out = long_run.join().unwrap();
    expect(&out, 128 + 9, "ctr run long after SIGKILL", &ctrd);
    assert_clean(&ctrd, "long");
    assert_eq!(long_net.skiff_leftovers(), Vec::<String>::new());
    steps.mark("ctr task kill -s SIGKILL: run reports 137, no tap or qdisc left");

    // The shim dies with the VM inside it; containerd's `shim delete`
    // and the task/container removal leave nothing behind.
    let crash_net = TestNetns::new(2);
    let with_ns = format!("network:{}", crash_net.path.display());
    let out = ctrd.ctr(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--with-ns",
        &with_ns,
        BUSYBOX,
        "crash",
        "sleep",
        "1000",
    ]);
    expect(&out, 0, "run -d crash", &ctrd);
    wait_status(&ctrd, "crash", "RUNNING");
    assert!(
        !crash_net.skiff_leftovers().is_empty(),
        "no tap or qdisc was made"
    );
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read("/run/skiff/sbs/crash/persist.json").unwrap())
            .unwrap();
    assert_eq!(state["containers"][0]["id"], "crash");
    let shim_pid = state["shim_pid"].as_i64().unwrap() as i32;
    // Its open-file limit is the pod's size (a share's 20481 fds, 1024
    // vsock streams, the runtime's), soft and hard, not the host's
    // maximum; where the hard limit is lower and cannot be raised (no
    // CAP_SYS_RESOURCE), it is kept, and the log says so.
    let limits = std::fs::read_to_string(format!("/proc/{shim_pid}/limits")).unwrap();
    let open_files: Vec<u64> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let log = ctrd.log();
    let sized = log
        .lines()
        .rfind(|l| l.contains("open-file limit sized for the pod"))
        .expect("the shim logs its open-file limit");
    let field = |name: &str| -> u64 {
        let at = sized.find(&format!("{name}=")).unwrap() + name.len() + 1;
        sized[at..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let (limit, wanted) = (field("limit"), field("wanted"));
    assert!((25_000..65_536).contains(&wanted), "{sized}");
    assert_eq!(open_files, vec![limit, limit], "{limits}");
    assert!(
        limit == wanted || log.contains(&format!("open-file limit: {wanted} wanted for the pod")),
        "{sized}"
    );
    // Each VMM thread of this pod (blk is not in it) confined itself.
    for thread in [
        "skiff-vmm",
        "skiff-vcpu0",
        "skiff-vsock",
        "virtio-fs",
        "virtio-net",
    ] {
        assert!(
            log.lines().any(|l| l.contains("seccomp filter installed")
                && l.contains(&format!("thread={thread} "))
                && l.contains("mode=enforce")),
            "no filter installed on {thread} in the shim's log"
        );
    }
    assert!(
        !log.contains("forbidden syscall"),
        "a VMM thread was stopped"
    );
    // The shim, and its VM, joined the sandbox container's cgroup
    // (ctr's cgroupfs path /<namespace>/<id>), which it made.
    let cgroup_dirs: Vec<std::path::PathBuf> = state["cgroup_dirs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().into())
        .collect();
    assert!(!cgroup_dirs.is_empty(), "{state}");
    let membership = std::fs::read_to_string(format!("/proc/{shim_pid}/cgroup")).unwrap();
    for dir in &cgroup_dirs {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap();
        assert!(
            procs.lines().any(|p| p == shim_pid.to_string()),
            "{} holds {procs}; the shim is in {membership}",
            dir.display()
        );
    }
    assert_eq!(unsafe { libc::kill(shim_pid, libc::SIGKILL) }, 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    while task_status(&ctrd, "crash").as_deref() == Some("RUNNING") {
        assert!(
            Instant::now() < deadline,
            "containerd never saw the shim die"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    ctrd.ctr(&["task", "rm", "-f", "crash"]);
    expect(
        &ctrd.ctr(&["containers", "rm", "crash"]),
        0,
        "c rm crash",
        &ctrd,
    );
    assert_clean(&ctrd, "crash");
    assert_eq!(crash_net.skiff_leftovers(), Vec::<String>::new());
    for dir in &cgroup_dirs {
        assert!(!dir.exists(), "{} outlived the dead shim", dir.display());
    }
    steps.mark("shim SIGKILL + task rm -f + c rm: nothing left");

    // containerd 2.x runs the shim's -info before every task Create.
    assert!(
        !ctrd.log().contains("failed to load runtime info"),
        "containerd could not run the shim's -info"
    );
}

/// A loop device over a 1 MiB image of a known pattern; detached on drop.
struct LoopDevice {
    path: String,
    initial_md5: String,
}

impl LoopDevice {
    fn new(image: &std::path::Path) -> Self {
        let pattern: Vec<u8> = (0..1u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(image, &pattern).unwrap();
        let md5 = Command::new("md5sum").arg(image).output().unwrap();
        let initial_md5 = String::from_utf8_lossy(&md5.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_string();
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(image)
            .output()
            .expect("losetup (util-linux)");
        assert!(out.status.success(), "losetup: {out:?}");
        let path = String::from_utf8(out.stdout).unwrap().trim().to_string();
        Self { path, initial_md5 }
    }

    /// The device's first `n` bytes, as the host sees them now.
    fn head(&self, n: usize) -> Vec<u8> {
        use std::io::Read;
        let mut buf = vec![0; n];
        std::fs::File::open(&self.path)
            .unwrap()
            .read_exact(&mut buf)
            .unwrap();
        buf
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.path]).status();
    }
}
