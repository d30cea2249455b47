//! One real guest with every kind of virtio device at once: disks, shares,
//! a network interface and vsock, each checked from inside the guest and
//! from the host, during the boot and after the guest has powered off.
//!
//! The VMM runs in this process through its library API, as the shim will
//! run it; its thread starts inside a network namespace made by the test,
//! where the tap lives.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::Command;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use skiff_guest_abi::cmdline::{append_init_args, default_cmdline};
use skiff_tests::{debug_initramfs, hybrid_connect, kernel, make_ext4, Scratch};
use skiff_vmm::config::{
    host_has_hardware_virt, BlockConfig, DeviceConfig, FsCache, FsConfig, NetConfig, VsockConfig,
};
use skiff_vmm::{ConsoleConfig, ExitReason, VmConfig, VmState, VmmHandle};

const HOST_IP: &str = "10.213.7.1";
const GUEST_IP: &str = "10.213.7.2";
const TAP: &str = "sktest0";
const NET_BYTES: usize = 2 << 20;

/// A network namespace with a persistent, configured tap; deleted on drop
/// (which also removes the tap).
struct NetNs(String);

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("ip runs");
    assert!(status.success(), "ip {args:?} failed");
}

impl NetNs {
    fn new() -> Self {
        let name = format!("skiff-devtest-{}", std::process::id());
        ip(&["netns", "add", &name]);
        let ns = Self(name);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns.exec(&["ip", "tuntap", "add", TAP, "mode", "tap"]);
        ns.exec(&["ip", "addr", "add", &format!("{HOST_IP}/24"), "dev", TAP]);
        ns.exec(&["ip", "link", "set", TAP, "up"]);
        ns
    }

    fn exec(&self, args: &[&str]) {
        let mut all = vec!["netns", "exec", &self.0];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// Runs `f` on a thread inside the namespace.
    fn spawn<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
        let ns = std::fs::File::open(format!("/run/netns/{}", self.0)).unwrap();
        std::thread::spawn(move || {
            // SAFETY: setns on a valid namespace fd only changes this thread.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[1] ^ seed)
        .collect()
}

fn md5(data: &[u8]) -> String {
    let mut child = Command::new("md5sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..32].to_string()
}

/// Host side of the TCP checks: takes `expect` bytes from the guest on
/// 5001 (returning their count and md5) and sends `payload` on 5002.
/// busybox `nc` keeps its socket open after sending, so the host closes
/// once it has all the bytes.
fn tcp_servers(netns: &NetNs, expect: usize, payload: Vec<u8>) -> JoinHandle<String> {
    let listeners = netns.spawn(|| {
        (
            TcpListener::bind((HOST_IP, 5001)).unwrap(),
            TcpListener::bind((HOST_IP, 5002)).unwrap(),
        )
    });
    let (from_guest, to_guest) = listeners.join().unwrap();
    std::thread::spawn(move || {
        let sender = std::thread::spawn(move || {
            if let Some(mut stream) = accept_within(&to_guest, NET_DEADLINE) {
                let _ = stream.write_all(&payload);
            }
        });
        let Some(mut stream) = accept_within(&from_guest, NET_DEADLINE) else {
            return "no connection from the guest".to_string();
        };
        stream.set_read_timeout(Some(NET_DEADLINE)).unwrap();
        let mut received = Vec::new();
        let _ = (&mut stream).take(expect as u64).read_to_end(&mut received);
        drop(stream);
        let _ = sender.join();
        format!("{} {}", received.len(), md5(&received))
    })
}

const NET_DEADLINE: Duration = Duration::from_secs(900);

/// Accepts one connection, giving up after `limit` so a guest that never
/// connects fails the test instead of hanging it.
fn accept_within(listener: &TcpListener, limit: Duration) -> Option<TcpStream> {
    listener.set_nonblocking(true).ok()?;
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).ok()?;
                return Some(stream);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(_) => return None,
        }
    }
    None
}

const VSOCK_ECHO_PORT: u32 = 1024;
const VSOCK_HOST_PORT: u32 = 5000;
const VSOCK_BYTES: usize = 1 << 20;

/// Sends `data` on `stream` and returns what the guest echoes back.
fn echo(stream: UnixStream, data: &[u8]) -> Vec<u8> {
    let mut writer = stream.try_clone().unwrap();
    let payload = data.to_vec();
    let sender = std::thread::spawn(move || {
        writer.write_all(&payload).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let mut reader = stream;
    reader
        .set_read_timeout(Some(Duration::from_secs(300)))
        .unwrap();
    let mut back = Vec::new();
    let _ = reader.read_to_end(&mut back);
    sender.join().unwrap();
    back
}

/// Retries `connect` until the guest listens (refusals are quick), while
/// the VM runs and for at most `limit`.
fn connect_when_listening<T>(
    vmm: &VmmHandle,
    limit: Duration,
    mut connect: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let deadline = Instant::now() + limit;
    loop {
        match connect() {
            Ok(stream) => return Ok(stream),
            Err(e) if Instant::now() > deadline || vmm.state().ok() != Some(VmState::Running) => {
                return Err(e)
            }
            Err(_) => std::thread::sleep(Duration::from_secs(1)),
        }
    }
}

#[test]
fn guest_uses_disks_shares_network_and_vsock() {
    let scratch = Scratch::new("devices");
    // Disks: a read-only pattern, a writable blank one, an ext4 image.
    let disk_a = pattern(2 << 20, 0x5a);
    std::fs::write(scratch.path("a.img"), &disk_a).unwrap();
    std::fs::write(scratch.path("b.img"), vec![0u8; 1 << 20]).unwrap();
    std::fs::create_dir(scratch.path("ext4-root")).unwrap();
    std::fs::write(scratch.path("ext4-root/hello.txt"), "hello from ext4\n").unwrap();
    make_ext4(&scratch.path("e.img"), &scratch.path("ext4-root"));
    // Shares: rw with files to read, rename and delete; ro with one file.
    let rw = scratch.path("rw");
    let ro = scratch.path("ro");
    std::fs::create_dir_all(&rw).unwrap();
    std::fs::create_dir_all(&ro).unwrap();
    std::fs::write(rw.join("from-host.txt"), "hello from the host\n").unwrap();
    std::fs::write(rw.join("rename-me"), "renamed\n").unwrap();
    std::fs::write(rw.join("delete-me"), "bye\n").unwrap();
    std::fs::write(scratch.path("host-secret"), "HOST-SECRET\n").unwrap();
    std::os::unix::fs::symlink(scratch.path("host-secret"), rw.join("escape")).unwrap();
    std::fs::write(ro.join("readme"), "read only\n").unwrap();

    let netns = NetNs::new();
    let to_guest = pattern(NET_BYTES, 0x33);
    let server = tcp_servers(&netns, disk_a.len(), to_guest.clone());
    // vsock: the guest connects out to host port 5000.
    let vsock_socket = scratch.path("v.sock");
    let host_listener =
        UnixListener::bind(format!("{}_{VSOCK_HOST_PORT}", vsock_socket.display())).unwrap();
    let from_guest_vsock = std::thread::spawn(move || {
        let (mut stream, _) = host_listener.accept().unwrap();
        let mut data = Vec::new();
        stream.read_to_end(&mut data).unwrap();
        data
    });

    let guest_script = [
        // virtio-blk
        "echo blk-a $(md5sum < /dev/vda)",
        "dd if=/dev/zero of=/dev/vda bs=512 count=1 conv=fsync 2>/dev/null; echo blk-ro-write rc=$?",
        "echo SKIFF-BLOCK-PATTERN | dd of=/dev/vdb bs=512 seek=1 conv=fsync 2>/dev/null; echo blk-rw-write rc=$?",
        "mkdir -p /mnt/e /mnt/rw /mnt/ro; mount -o ro -t ext4 /dev/vdc /mnt/e && cat /mnt/e/hello.txt",
        // virtio-fs
        "mount -t virtiofs rw /mnt/rw; mount -t virtiofs ro /mnt/ro; cat /mnt/rw/from-host.txt",
        "echo written by the guest > /mnt/rw/new.txt; mv /mnt/rw/rename-me /mnt/rw/renamed; rm /mnt/rw/delete-me",
        "echo fs-escape $(cat /mnt/rw/escape 2>&1 | head -c 40); echo fs-parent $(ls /mnt/rw/..)",
        "echo x > /mnt/ro/new 2>/dev/null; echo fs-ro-write rc=$?; cat /mnt/ro/readme",
        // virtio-net
        &format!("ip link set eth0 up; ip addr add {GUEST_IP}/24 dev eth0"),
        &format!("ping -c 2 -W 30 {HOST_IP} >/dev/null; echo net-ping rc=$?"),
        &format!("nc {HOST_IP} 5001 < /dev/vda; echo net-send rc=$?"),
        &format!("nc {HOST_IP} 5002 > /tmp/in; echo net-recv $(wc -c < /tmp/in) $(md5sum < /tmp/in)"),
        "umount /mnt/rw /mnt/ro /mnt/e",
        // virtio-vsock: serve two echo connections, send to the host, and
        // connect where nobody listens.
        &format!(
            "vsock-test -l {VSOCK_ECHO_PORT}:2 -s 2:{VSOCK_HOST_PORT}:{VSOCK_BYTES} -r 2:5001; echo vsock rc=$?"
        ),
    ]
    .join("; ");

    let block = |name: &str, read_only: bool| {
        DeviceConfig::Block(BlockConfig {
            path: scratch.path(name),
            read_only,
            direct: false,
        })
    };
    let share = |tag: &str, path: &Path, read_only: bool| {
        DeviceConfig::Fs(FsConfig {
            tag: tag.into(),
            path: path.into(),
            read_only,
            cache: FsCache::Auto,
        })
    };
    let console_path = scratch.path("console.log");
    let config = VmConfig {
        kernel: kernel(),
        initrd: Some(debug_initramfs()),
        cmdline: append_init_args(
            &default_cmdline(host_has_hardware_virt()),
            &["sh".into(), "-c".into(), guest_script],
        )
        .unwrap(),
        vcpus: 1,
        memory_mib: 256,
        console: ConsoleConfig::File(console_path.clone()),
        devices: vec![
            block("a.img", true),
            block("b.img", false),
            block("e.img", true),
            share("rw", &rw, false),
            share("ro", &ro, true),
            DeviceConfig::Net(NetConfig {
                tap: TAP.into(),
                mac: Some([2, 0, 0x0a, 0xd5, 7, 2]),
            }),
            DeviceConfig::Vsock(VsockConfig {
                guest_cid: 3,
                socket: vsock_socket.clone(),
            }),
        ],
        hotplug_slots: 0,
        seccomp: skiff_tests::seccomp_mode(),
    };
    // The VMM thread, and so the tap it opens, lives in the namespace.
    let vmm = netns
        .spawn(move || {
            let vmm = VmmHandle::spawn(Instant::now()).unwrap();
            vmm.configure(config).unwrap();
            vmm.start().unwrap();
            vmm
        })
        .join()
        .unwrap();

    // vsock from the host: the in-process connector and the hybrid socket,
    // at the same time, once the guest listens.
    let echo_data = pattern(VSOCK_BYTES, 0x77);
    let vmm = std::sync::Arc::new(vmm);
    let via_connector = {
        let (vmm, data) = (vmm.clone(), echo_data.clone());
        std::thread::spawn(move || {
            let stream = connect_when_listening(&vmm, Duration::from_secs(900), || {
                vmm.vsock_connect(VSOCK_ECHO_PORT)
                    .map_err(|e| e.to_string())
            })?;
            Ok::<_, String>(echo(stream, &data))
        })
    };
    let via_hybrid = {
        let (vmm, socket, data) = (vmm.clone(), vsock_socket.clone(), echo_data.clone());
        std::thread::spawn(move || {
            let stream = connect_when_listening(&vmm, Duration::from_secs(900), || {
                hybrid_connect(&socket, VSOCK_ECHO_PORT).map_err(|e| e.to_string())
            })?;
            Ok::<_, String>(echo(stream, &data))
        })
    };
    let connector_echo = via_connector.join().unwrap();
    let hybrid_echo = via_hybrid.join().unwrap();
    // Nobody listens on this port: a clean refusal, not a hang.
    let refused = vmm.vsock_connect_timeout(4000, Duration::from_secs(60));

    let exit = vmm.wait_exit(Some(Duration::from_secs(900)));
    let console = std::fs::read_to_string(&console_path).unwrap_or_default();
    let exit = exit.unwrap_or_else(|| panic!("guest still running; console:\n{console}"));
    assert_eq!(
        exit.reason,
        ExitReason::GuestShutdown,
        "console:\n{console}"
    );
    assert!(
        console.contains("SKIFF-GUEST-EXIT 0"),
        "console:\n{console}"
    );
    let has = |needle: &str| {
        assert!(
            console.contains(needle),
            "missing {needle:?} in console:\n{console}"
        );
    };

    // virtio-blk: read-only disk reads right and refuses writes.
    has(&format!("blk-a {}", md5(&disk_a)));
    has("blk-ro-write rc=1");
    has("blk-rw-write rc=0");
    has("hello from ext4");
    assert_eq!(std::fs::read(scratch.path("a.img")).unwrap(), disk_a);
    let b = std::fs::read(scratch.path("b.img")).unwrap();
    assert_eq!(&b[512..512 + 20], b"SKIFF-BLOCK-PATTERN\n");
    assert!(b[..512].iter().all(|&x| x == 0));

    // virtio-fs: reads, writes the host sees, no escape, ro refuses.
    has("hello from the host");
    has("read only");
    has("fs-ro-write rc=1");
    assert!(
        !console.contains("HOST-SECRET"),
        "symlink escaped the share:\n{console}"
    );
    assert!(console.contains("fs-parent ") && !console.contains("fs-parent from-host"));
    assert_eq!(
        std::fs::read_to_string(rw.join("new.txt")).unwrap(),
        "written by the guest\n"
    );
    assert_eq!(
        std::fs::read_to_string(rw.join("renamed")).unwrap(),
        "renamed\n"
    );
    assert!(!rw.join("rename-me").exists() && !rw.join("delete-me").exists());
    assert!(!ro.join("new").exists());

    // virtio-net: ping and a few MB each way, intact.
    has("net-ping rc=0");
    has("net-send rc=0");
    has(&format!("net-recv {NET_BYTES} {}", md5(&to_guest)));
    let from_guest = server.join().unwrap();
    assert_eq!(from_guest, format!("{} {}", disk_a.len(), md5(&disk_a)));

    // virtio-vsock: both host ends echoed intact, the guest reached the
    // host listener, refusals were clean both ways.
    assert_eq!(connector_echo.map(|e| md5(&e)), Ok(md5(&echo_data)));
    assert_eq!(hybrid_echo.map(|e| md5(&e)), Ok(md5(&echo_data)));
    let sent = from_guest_vsock.join().unwrap();
    assert_eq!(sent.len(), VSOCK_BYTES);
    has(&format!("sent port={VSOCK_HOST_PORT} bytes={VSOCK_BYTES}"));
    has("refused port=5001");
    has("vsock rc=0");
    let refusal = refused
        .expect_err("connect to an unused port succeeded")
        .to_string();
    assert!(refusal.contains("refused"), "{refusal}");
    // The device removes its socket file when the VM is gone.
    drop(vmm);
    assert!(!vsock_socket.exists());
}
