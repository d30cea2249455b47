//! A private, real containerd for the shim's integration tests, started by
//! `scripts/containerd-private.sh` in a directory of its own with
//! `containerd-shim-skiff-v2` from this build on its PATH, and stopped
//! (every task, shim and mount gone) when dropped.
//!
//! Which containerd is a [`Release`]: Debian's own (1.6.20), or one of the
//! releases `make test` unpacks from `../shared/containerd`
//! (`scripts/containerd-releases.sh`) and names in `SKIFF_CONTAINERD_DIRS`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};

use sha2::{Digest, Sha256};

use crate::{repo_root, workspace_binary};

pub const SHIM: &str = "containerd-shim-skiff-v2";
pub const RUNTIME: &str = "io.containerd.skiff.v2";
pub const BUSYBOX: &str = "skiff.local/busybox:latest";
pub const PAUSE: &str = "skiff.local/pause:latest";
/// The namespace `ctr` tests use; CRI uses `k8s.io`.
pub const NAMESPACE: &str = "skiff";
pub const CRI_NAMESPACE: &str = "k8s.io";

/// A containerd to run: the system's, or the `containerd` and `ctr` in a
/// directory.
#[derive(Clone, Debug)]
pub struct Release {
    pub dir: Option<PathBuf>,
}

impl Release {
    /// The system's containerd (the script installs Debian's if missing).
    pub fn system() -> Self {
        Self { dir: None }
    }

    /// The first release in `SKIFF_CONTAINERD_DIRS` (colon-separated) whose
    /// major version is `major`.
    pub fn unpacked(major: u32) -> Option<Self> {
        let dirs = std::env::var("SKIFF_CONTAINERD_DIRS").unwrap_or_default();
        dirs.split(':')
            .filter(|d| !d.is_empty())
            .map(|d| Self {
                dir: Some(PathBuf::from(d)),
            })
            .find(|r| r.version().is_some_and(|v| v.0 == major))
    }

    /// The unpacked 2.x release, or None after saying (one line) that the
    /// test it was asked for is skipped.
    pub fn containerd_2_or_skip() -> Option<Self> {
        let found = Self::unpacked(2);
        if found.is_none() {
            eprintln!("SKIPPED: no containerd 2.x in SKIFF_CONTAINERD_DIRS (make test unpacks it)");
        }
        found
    }

    fn binary(&self, name: &str) -> PathBuf {
        match &self.dir {
            Some(d) => d.join(name),
            None => PathBuf::from(name),
        }
    }

    pub fn ctr(&self) -> PathBuf {
        self.binary("ctr")
    }

    /// (major, minor, patch) from `containerd --version`.
    pub fn version(&self) -> Option<(u32, u32, u32)> {
        let out = Command::new(self.binary("containerd"))
            .arg("--version")
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.split_whitespace().find_map(|w| {
            let mut n = w.trim_start_matches('v').split('.').map(|p| p.parse().ok());
            Some((n.next()??, n.next()??, n.next()??))
        })
    }
}

/// Tests that each start a containerd and boot VMs take this in turn:
/// they share subnets and would only slow each other down on a small host.
pub fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct Containerd {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub release: Release,
}

/// What a `ctr` command did.
#[derive(Debug)]
pub struct Ctr {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Ctr {
    fn from(out: Output) -> Self {
        Self {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

fn script(name: &str) -> PathBuf {
    repo_root().join("scripts").join(name)
}

/// Builds (cached under $SKIFF_CACHE or ~/.cache/skiff) the busybox OCI
/// image archive with `entrypoint`, named `name`.
pub fn image_archive(name: &str, entrypoint: &[&str]) -> PathBuf {
    let cache = std::env::var_os("SKIFF_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/skiff")
        })
        .join("images");
    std::fs::create_dir_all(&cache).unwrap();
    let file = name.replace(['/', ':'], "_") + ".tar";
    let out = cache.join(file);
    let status = Command::new(script("build-oci-image.sh"))
        .arg(&out)
        .arg(name)
        .args(entrypoint)
        .status()
        .expect("run build-oci-image.sh");
    assert!(status.success(), "building image {name} failed");
    out
}

impl Containerd {
    /// Starts `release` in `dir` (which must not hold a running one).
    pub fn start(dir: &Path, release: &Release) -> Self {
        Self::start_with_config(dir, release, None)
    }

    /// Starts `release` in `dir` with its CRI handler `skiff` passing the
    /// Skiff configuration file `runtime_config` to its shims.
    pub fn start_with_config(dir: &Path, release: &Release, runtime_config: Option<&Path>) -> Self {
        let shim = workspace_binary(SHIM);
        let bin_dir = shim.parent().unwrap().to_path_buf();
        let mut cmd = Command::new(script("containerd-private.sh"));
        cmd.arg("start").arg(dir).arg(&bin_dir);
        match &release.dir {
            Some(d) => cmd.env("SKIFF_CONTAINERD_DIR", d),
            None => cmd.env_remove("SKIFF_CONTAINERD_DIR"),
        };
        match runtime_config {
            Some(path) => cmd.env("SKIFF_RUNTIME_CONFIG", path),
            None => cmd.env_remove("SKIFF_RUNTIME_CONFIG"),
        };
        let out = cmd
            .stderr(Stdio::inherit())
            .output()
            .expect("run containerd-private.sh");
        let me = Self {
            dir: dir.to_path_buf(),
            socket: dir.join("containerd.sock"),
            release: release.clone(),
        };
        assert!(out.status.success(), "containerd did not start");
        me
    }

    /// `ctr -a SOCKET -n NAMESPACE` of this containerd's release, stdin
    /// from /dev/null; the caller adds the arguments.
    pub fn ctr_command(&self, namespace: &str) -> Command {
        let mut cmd = Command::new(self.release.ctr());
        cmd.arg("-a")
            .arg(&self.socket)
            .args(["-n", namespace])
            .stdin(Stdio::null());
        cmd
    }

    /// `ctr -a SOCKET -n NAMESPACE ARGS...`.
    pub fn ctr_in(&self, namespace: &str, args: &[&str]) -> Ctr {
        self.ctr_command(namespace)
            .args(args)
            .output()
            .expect("run ctr")
            .into()
    }

    /// The socket file containerd-shim serves a task group on: named after
    /// containerd's address, the namespace and the group (the pod's
    /// sandbox id, or the container id).
    pub fn shim_socket(&self, namespace: &str, group: &str) -> PathBuf {
        let name = format!("{}/{namespace}/{group}", self.socket.display());
        let hash = Sha256::digest(name.as_bytes());
        let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
        Path::new("/run/containerd/s").join(hex)
    }

    pub fn ctr(&self, args: &[&str]) -> Ctr {
        self.ctr_in(NAMESPACE, args)
    }

    /// The same `ctr` command under a pseudo terminal (util-linux
    /// `script`), for `-t`.
    pub fn ctr_tty(&self, args: &[&str]) -> Ctr {
        let mut line = format!(
            "{} -a {} -n {NAMESPACE}",
            self.release.ctr().display(),
            self.socket.display()
        );
        for a in args {
            line.push_str(&format!(" '{}'", a.replace('\'', "'\\''")));
        }
        Command::new("script")
            .args(["-qec", &line, "/dev/null"])
            .stdin(Stdio::null())
            .output()
            .expect("run script")
            .into()
    }

    /// Imports the image archive into `namespace`.
    pub fn import(&self, namespace: &str, archive: &Path) {
        let out = self.ctr_in(namespace, &["images", "import", archive.to_str().unwrap()]);
        assert_eq!(out.code, Some(0), "import {}: {out:?}", archive.display());
    }

    /// containerd's own log, for assertion messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let mut cmd = Command::new(script("containerd-private.sh"));
        if let Some(d) = &self.release.dir {
            cmd.env("SKIFF_CONTAINERD_DIR", d);
        }
        let _ = cmd.arg("stop").arg(&self.dir).status();
    }
}

/// Live (not zombie) processes whose command line contains `needle`.
pub fn live_processes(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == std::process::id().to_string() {
            continue;
        }
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let state = stat.rsplit(") ").next().and_then(|s| s.chars().next());
        if state == Some('Z') || state.is_none() {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push(format!("{pid}: {cmdline}"));
        }
    }
    found
}

/// Mount points whose path contains `needle`.
pub fn mounts_containing(needle: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.contains(needle))
        .map(str::to_string)
        .collect()
}

/// Everything a sandbox could leave on the host: its state directory,
/// mounts naming it, tap devices, and shim processes serving it.
pub fn leftovers(sandbox_id: &str) -> Vec<String> {
    let mut left = Vec::new();
    let state = Path::new("/run/skiff/sbs").join(sandbox_id);
    if state.exists() {
        left.push(format!("state directory {}", state.display()));
    }
    for m in mounts_containing(&format!("/{sandbox_id}/")) {
        left.push(format!("mount {m}"));
    }
    for p in live_processes(&format!("-id {sandbox_id} ")) {
        if p.contains(SHIM) {
            left.push(format!("process {p}"));
        }
    }
    left
}

/// A network namespace made by a test with one veth pair: `pod` inside
/// (as a CNI plugin would leave it, with an address and a default route)
/// and `host` outside. Removed on drop.
pub struct TestNetns {
    pub name: String,
    pub path: PathBuf,
    pub host_if: String,
    pub host_ip: String,
    pub pod_ip: String,
}

fn ip(args: &[&str]) -> std::process::Output {
    Command::new("ip").args(args).output().expect("run ip")
}

impl TestNetns {
    /// `index` picks the subnet 10.231.INDEX.0/24 and the names.
    pub fn new(index: u8) -> Self {
        let name = format!("skiff-test-{}-{index}", std::process::id());
        let host_if = format!("sk{}h{index}", std::process::id() % 100000);
        let me = Self {
            path: PathBuf::from("/var/run/netns").join(&name),
            name,
            host_if,
            host_ip: format!("10.231.{index}.1"),
            pod_ip: format!("10.231.{index}.2"),
        };
        let n = me.name.as_str();
        let host_cidr = format!("{}/24", me.host_ip);
        let pod_cidr = format!("{}/24", me.pod_ip);
        let steps: Vec<Vec<&str>> = vec![
            vec!["netns", "add", n],
            vec![
                "link",
                "add",
                &me.host_if,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                n,
            ],
            vec!["addr", "add", &host_cidr, "dev", &me.host_if],
            vec!["link", "set", &me.host_if, "up"],
            vec!["-n", n, "addr", "add", &pod_cidr, "dev", "eth0"],
            vec!["-n", n, "link", "set", "eth0", "up"],
            vec!["-n", n, "link", "set", "lo", "up"],
            vec!["-n", n, "route", "add", "default", "via", &me.host_ip],
        ];
        for step in steps {
            let out = ip(&step);
            assert!(
                out.status.success(),
                "ip {step:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        me
    }

    /// `ip -n NS ARGS` output.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend(args);
        String::from_utf8_lossy(&ip(&full).stdout).into_owned()
    }

    /// Taps and tc ingress qdiscs Skiff left in the namespace.
    pub fn skiff_leftovers(&self) -> Vec<String> {
        let mut left: Vec<String> = self
            .ip(&["-o", "link", "show"])
            .lines()
            .filter(|l| l.contains("skiff-tap"))
            .map(|l| format!("link {l}"))
            .collect();
        let out = Command::new("tc")
            .args(["-n", &self.name, "qdisc", "show", "dev", "eth0", "ingress"])
            .output()
            .expect("run tc");
        let qdiscs = String::from_utf8_lossy(&out.stdout).into_owned();
        if qdiscs.contains("ingress") {
            left.push(format!("qdisc on eth0: {qdiscs}"));
        }
        left
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        ip(&["link", "del", &self.host_if]);
        ip(&["netns", "del", &self.name]);
    }
}
