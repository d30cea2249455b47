//! Helpers for Skiff's integration tests: where the guest images and the
//! built binaries are, and how to run `vm-run` and read what it reports.
//!
//! These tests boot real guests on real KVM. On hosts whose KVM emulates
//! the guest kernel a boot takes tens of seconds, so each test boots once
//! and checks many things in that boot.

pub mod containerd;
pub mod freeze;

use std::io::{Read, Write};
use std::os::fd::IntoRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use skiff_agent_protocol::agent_ttrpc::AgentServiceClient;
use skiff_agent_protocol::{ttrpc, DEFAULT_VSOCK_PORT};
use skiff_guest_abi::cmdline::{append_init_args, default_cmdline};
use skiff_vmm::config::{host_has_hardware_virt, DeviceConfig};
use skiff_vmm::{ConsoleConfig, VmConfig, VmState, VmmHandle};

/// A test's scratch directory, `$TMPDIR/skiff-NAME-PID`: empty at the
/// start, removed however the test ends.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("skiff-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Prints the wall time of each step of a test since the previous one.
pub struct Steps(Instant);

impl Steps {
    pub fn start() -> Self {
        Self(Instant::now())
    }

    pub fn mark(&mut self, step: &str) {
        let ms = self.0.elapsed().as_secs_f64() * 1e3;
        eprintln!("step {step:<48} {ms:>10.1} ms");
        self.0 = Instant::now();
    }
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `build/guest/NAME`, which `make guest` produces. Panics with the fix
/// when it is missing: a test must not pass without its guest.
pub fn guest_artifact(name: &str) -> PathBuf {
    let path = repo_root().join("build/guest").join(name);
    assert!(
        path.exists(),
        "{} is missing: run `make guest` first",
        path.display()
    );
    path
}

pub fn kernel() -> PathBuf {
    guest_artifact("vmlinux")
}

pub fn debug_initramfs() -> PathBuf {
    guest_artifact("initramfs-debug.cpio")
}

/// A binary of this workspace built with the same profile as the tests
/// (`cargo build` must have run first; `make test` does).
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace` with the same profile first",
        path.display()
    );
    path
}

/// A finished `vm-run`.
pub struct VmRun {
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl VmRun {
    /// The JSON report `--json` prints as the last stderr line.
    pub fn report(&self) -> serde_json::Value {
        let line = self
            .stderr
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .unwrap_or_else(|| panic!("no JSON report in stderr:\n{}", self.stderr));
        serde_json::from_str(line).expect("valid JSON report")
    }

    /// Milliseconds since process start at `milestone`, if reached.
    pub fn milestone_ms(&self, milestone: &str) -> Option<f64> {
        self.report()["timeline"]["marks"]
            .as_array()?
            .iter()
            .find(|m| m["milestone"] == milestone)?["wall_ms"]
            .as_f64()
    }
}

/// Runs `vm-run` with `args` and collects its output.
pub fn vm_run(args: &[&str]) -> VmRun {
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(workspace_binary("vm-run"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("vm-run starts");
    VmRun {
        status: status.code(),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// A 4 MiB ext4 image at `image` holding the files of `content_dir`
/// (mkfs.ext4 from e2fsprogs).
pub fn make_ext4(image: &Path, content_dir: &Path) {
    let status = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(content_dir)
        .arg(image)
        .arg("4M")
        .status()
        .expect("mkfs.ext4: apt-get install e2fsprogs");
    assert!(status.success(), "mkfs.ext4 {}", image.display());
}

/// A VM that boots the debug initramfs (1 vCPU, 128 MiB, no devices) and
/// runs `init_args`, its console in `console`.
pub fn debug_vm_config(console: &Path, init_args: &[&str]) -> VmConfig {
    let args: Vec<String> = init_args.iter().map(|a| a.to_string()).collect();
    VmConfig {
        kernel: kernel(),
        initrd: Some(debug_initramfs()),
        cmdline: append_init_args(&default_cmdline(host_has_hardware_virt()), &args)
            .expect("init arguments fit the command line"),
        vcpus: 1,
        memory_mib: 128,
        console: ConsoleConfig::File(console.to_path_buf()),
        devices: Vec::new(),
        hotplug_slots: 0,
        seccomp: seccomp_mode(),
    }
}

/// A VM that boots the agent initramfs (1 vCPU, 256 MiB) with `devices`
/// and `hotplug_slots` free slots, its console in `console`.
pub fn agent_vm_config(console: &Path, devices: Vec<DeviceConfig>, hotplug_slots: u8) -> VmConfig {
    VmConfig {
        kernel: kernel(),
        initrd: Some(guest_artifact("initramfs.cpio")),
        cmdline: default_cmdline(host_has_hardware_virt()),
        vcpus: 1,
        memory_mib: 256,
        console: ConsoleConfig::File(console.to_path_buf()),
        devices,
        hotplug_slots,
        seccomp: seccomp_mode(),
    }
}

/// A client of the agent in `vmm`'s guest. The agent listens once the
/// guest has booted; until then connects are refused (RST) or time out.
/// Panics, with the guest console, if the VM ends or 15 minutes pass.
pub fn connect_agent(vmm: &VmmHandle, console: &Path) -> AgentServiceClient {
    let deadline = Instant::now() + Duration::from_secs(900);
    let stream = loop {
        match vmm.vsock_connect(DEFAULT_VSOCK_PORT) {
            Ok(stream) => break stream,
            Err(e) => {
                let console = std::fs::read_to_string(console).unwrap_or_default();
                assert!(
                    Instant::now() < deadline && vmm.state().ok() == Some(VmState::Running),
                    "agent never listened: {e}\nconsole:\n{console}"
                );
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    };
    AgentServiceClient::new(ttrpc::Client::new(stream.into_raw_fd()).unwrap())
}

/// The confinement the tests' VMs run in: enforced, unless
/// `SKIFF_TEST_SECCOMP` says `log` or `off` (for finding what a thread
/// needs, never for CI).
pub fn seccomp_mode() -> skiff_vmm::SeccompMode {
    std::env::var("SKIFF_TEST_SECCOMP")
        .ok()
        .map(|m| m.parse().expect("SKIFF_TEST_SECCOMP: enforce, log or off"))
        .unwrap_or_default()
}

/// Firecracker's hybrid-socket handshake: `CONNECT port` answered by `OK n`.
pub fn hybrid_connect(socket: &Path, port: u32) -> std::io::Result<UnixStream> {
    let mut stream = UnixStream::connect(socket)?;
    stream.write_all(format!("CONNECT {port}\n").as_bytes())?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut line = Vec::new();
    let mut byte = [0u8];
    while byte[0] != b'\n' {
        if stream.read(&mut byte)? == 0 {
            return Err(std::io::ErrorKind::ConnectionRefused.into());
        }
        line.push(byte[0]);
    }
    assert!(
        line.starts_with(b"OK "),
        "{}",
        String::from_utf8_lossy(&line)
    );
    stream.set_read_timeout(None)?;
    Ok(stream)
}
