//! Boots the debug guest with a vsock device and checks it end to end:
//! the guest (`vsock-test`) listens on several ports and connects out;
//! the host connects through the hybrid Unix socket (`CONNECT`) and the
//! in-process connector (`VmmHandle::vsock_connect`), several streams at
//! once with checksums, and checks refused connects fail cleanly.
//!
//! ```sh
//! cargo run --release -p skiff-vmm --example vsock_check -- \
//!     build/guest/vmlinux build/guest/initramfs-debug.cpio [MiB per stream]
//! ```

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use skiff_guest_abi::cmdline::{append_init_args, default_cmdline};
use skiff_vmm::config::{host_has_hardware_virt, DeviceConfig, VsockConfig};
use skiff_vmm::{ConsoleConfig, VmConfig, VmmHandle};

const FNV_INIT: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv(mut h: u64, data: &[u8]) -> u64 {
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

fn pattern(i: u64) -> u8 {
    ((i as u32).wrapping_mul(2_654_435_761) >> 24) as u8
}

fn pattern_fnv(len: u64) -> u64 {
    let data: Vec<u8> = (0..len).map(pattern).collect();
    fnv(FNV_INIT, &data)
}

/// Sends `len` pattern bytes and reads the echo; returns (bytes, fnv) read.
fn echo_round(stream: UnixStream, len: u64) -> Result<(u64, u64), String> {
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let sender = thread::spawn(move || -> std::io::Result<()> {
        let mut off = 0;
        while off < len {
            let n = (len - off).min(65536);
            let chunk: Vec<u8> = (off..off + n).map(pattern).collect();
            writer.write_all(&chunk)?;
            off += n;
        }
        writer.shutdown(Shutdown::Write)
    });
    let mut reader = stream;
    reader
        .set_read_timeout(Some(Duration::from_secs(300)))
        .map_err(|e| e.to_string())?;
    let (mut total, mut h) = (0u64, FNV_INIT);
    let mut buf = vec![0u8; 65536];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                h = fnv(h, &buf[..n]);
                total += n as u64;
            }
            Err(e) => return Err(format!("read after {total} bytes: {e}")),
        }
    }
    sender
        .join()
        .map_err(|_| "sender panicked".to_string())?
        .map_err(|e| format!("send: {e}"))?;
    Ok((total, h))
}

/// A hybrid-socket client: `CONNECT port`, then `OK <host port>`.
fn hybrid_connect(socket: &PathBuf, port: u32) -> Result<UnixStream, String> {
    let mut stream = UnixStream::connect(socket).map_err(|e| e.to_string())?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => return Err(format!("port {port}: closed without OK (refused)")),
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => line.push(byte[0]),
            Err(e) => return Err(format!("port {port}: {e}")),
        }
    }
    let line = String::from_utf8_lossy(&line).to_string();
    if !line.starts_with("OK ") {
        return Err(format!("port {port}: answer {line:?}"));
    }
    stream.set_read_timeout(None).map_err(|e| e.to_string())?;
    println!("host: hybrid CONNECT {port} -> {line}");
    Ok(stream)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let kernel = args.get(1).cloned().unwrap_or("build/guest/vmlinux".into());
    let initrd = args
        .get(2)
        .cloned()
        .unwrap_or("build/guest/initramfs-debug.cpio".into());
    let mib: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(2);
    let len = mib << 20;
    let dir = std::env::temp_dir().join(format!("skiff-vsock-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("v.sock");

    // The guest sends 2*len bytes to host port 5000; nobody listens on 5001.
    let service = UnixListener::bind(format!("{}_5000", socket.display())).unwrap();
    let guest_send = thread::spawn(move || -> Result<(u64, u64), String> {
        let (stream, _) = service.accept().map_err(|e| e.to_string())?;
        let mut stream = stream;
        let (mut total, mut h) = (0u64, FNV_INIT);
        let mut buf = vec![0u8; 65536];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    h = fnv(h, &buf[..n]);
                    total += n as u64;
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok((total, h))
    });

    let guest_args: Vec<String> = format!(
        "vsock-test -l 1023:1 -l 1024:2 -l 1025:2 -s 2:5000:{} -r 2:5001",
        2 * len
    )
    .split(' ')
    .map(String::from)
    .collect();
    let cmdline =
        append_init_args(&default_cmdline(host_has_hardware_virt()), &guest_args).unwrap();
    let vmm = VmmHandle::spawn(Instant::now()).unwrap();
    vmm.configure(VmConfig {
        kernel: kernel.into(),
        initrd: Some(initrd.into()),
        cmdline,
        vcpus: 1,
        memory_mib: 256,
        console: ConsoleConfig::Stdio,
        devices: vec![DeviceConfig::Vsock(VsockConfig {
            guest_cid: 3,
            socket: socket.clone(),
        })],
        hotplug_slots: 0,
        seccomp: skiff_vmm::SeccompMode::Enforce,
    })
    .unwrap();
    let started = Instant::now();
    vmm.start().unwrap();
    let vmm = Arc::new(vmm);
    let mut failures = 0;

    // Wait for the guest's listeners: port 1023 refuses until vsock-test runs.
    let mut probe = None;
    while started.elapsed() < Duration::from_secs(300) {
        match vmm.vsock_connect_timeout(1023, Duration::from_secs(5)) {
            Ok(s) => {
                probe = Some(s);
                break;
            }
            Err(e) => {
                println!("host: probe: {e}");
                thread::sleep(Duration::from_secs(2));
            }
        }
    }
    let Some(probe) = probe else {
        println!("host: FAIL guest never listened");
        std::process::exit(1);
    };
    println!("host: guest listening after {:?}", started.elapsed());
    println!("host: probe echo {:?}", echo_round(probe, 0));

    // Refused connects fail cleanly, both ways.
    let t = Instant::now();
    match vmm.vsock_connect(4000) {
        Err(e) => println!(
            "host: connector to unused port 4000: {e} (after {:?})",
            t.elapsed()
        ),
        Ok(_) => {
            println!("host: FAIL connector to port 4000 succeeded");
            failures += 1;
        }
    }
    match hybrid_connect(&socket, 4000) {
        Err(e) => println!("host: hybrid to unused port 4000: {e}"),
        Ok(_) => {
            println!("host: FAIL hybrid to port 4000 succeeded");
            failures += 1;
        }
    }

    // Four streams at once: connector and hybrid socket to each of 1024, 1025.
    let t = Instant::now();
    let mut jobs = Vec::new();
    for port in [1024u32, 1025] {
        let v = vmm.clone();
        jobs.push((
            format!("connector:{port}"),
            thread::spawn(move || {
                let s = v.vsock_connect(port).map_err(|e| e.to_string())?;
                echo_round(s, len)
            }),
        ));
        let sock = socket.clone();
        jobs.push((
            format!("hybrid:{port}"),
            thread::spawn(move || echo_round(hybrid_connect(&sock, port)?, len)),
        ));
    }
    let want = pattern_fnv(len);
    for (name, job) in jobs {
        match job.join().unwrap() {
            Ok((n, h)) if n == len && h == want => {
                println!("host: {name} echoed {n} bytes, fnv {h:016x} ok")
            }
            other => {
                println!("host: FAIL {name}: {other:?} (want {len} bytes fnv {want:016x})");
                failures += 1;
            }
        }
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "host: 4 echo streams, {} MiB each way in {secs:.1} s ({:.2} MiB/s through the device)",
        4 * mib,
        (8 * mib) as f64 / secs
    );

    let want = pattern_fnv(2 * len);
    match guest_send.join().unwrap() {
        Ok((n, h)) if n == 2 * len && h == want => {
            println!("host: guest->host port 5000 got {n} bytes, fnv {h:016x} ok")
        }
        other => {
            println!("host: FAIL guest->host: {other:?}");
            failures += 1;
        }
    }

    let exit = vmm.wait_exit(Some(Duration::from_secs(120)));
    println!("host: guest exit: {:?}", exit.map(|e| e.reason.to_string()));
    drop(vmm);
    println!(
        "host: socket file left: {}, {}_5000 left: {}",
        socket.exists(),
        socket.display(),
        PathBuf::from(format!("{}_5000", socket.display())).exists()
    );
    let _ = std::fs::remove_dir_all(&dir);
    println!("host: failures={failures}");
    std::process::exit(if failures == 0 { 0 } else { 1 });
}
