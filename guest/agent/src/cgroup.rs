//! cgroup v2 for containers: one directory per container below the agent's
//! cgroup root, limits from the spec's `linux.resources`, stats, the
//! freezer (pause/resume) and teardown. Only the unified hierarchy: the
//! guest kernel mounts nothing else, and v2 alone keeps this small.

use std::fs;
use std::io::{ErrorKind, Write};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use oci_spec::runtime::LinuxResources;

/// Errors creating, configuring or removing a container's cgroup.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroup path {0:?} must be relative and must not contain ..")]
    BadPath(String),
    #[error("cgroup {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cgroup v2 controller {controller:?} is not available in {cgroup} (needed for {file})"
    )]
    ControllerUnavailable {
        controller: String,
        cgroup: PathBuf,
        file: &'static str,
    },
    #[error("write {value:?} to {path}: {source}")]
    Write {
        path: PathBuf,
        value: String,
        source: std::io::Error,
    },
    #[error("cgroup {0} did not reach the requested freezer state in time")]
    FreezeTimeout(PathBuf),
    #[error("cgroup {0} still has processes after they were killed")]
    Busy(PathBuf),
}

type Result<T> = std::result::Result<T, CgroupError>;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_file(path: &Path, value: &str) -> std::result::Result<(), std::io::Error> {
    // One write(2) per value: cgroup files parse each write as a whole.
    fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .write_all(value.as_bytes())
}

/// Reads `key value` lines (cpu.stat, memory.stat, memory.events, ...).
pub fn parse_flat_keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next() == Some(key)).then(|| it.next()?.parse().ok())?
    })
}

/// The directory under which the agent creates containers' cgroups.
#[derive(Debug, Clone)]
pub struct CgroupRoot {
    path: PathBuf,
}

impl CgroupRoot {
    /// Opens the root and delegates every controller it has to its
    /// children (best effort: a controller that cannot be enabled is simply
    /// not offered, and limits that need it fail with a clear error).
    pub fn open(path: &Path) -> Result<CgroupRoot> {
        let root = CgroupRoot {
            path: path.to_path_buf(),
        };
        fs::metadata(path).map_err(io_err(path))?;
        root.enable_controllers(path);
        Ok(root)
    }

    /// Controllers available to containers' cgroups.
    pub fn controllers(&self) -> Vec<String> {
        fs::read_to_string(self.path.join("cgroup.subtree_control"))
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect()
    }

    fn enable_controllers(&self, dir: &Path) {
        let available = fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
        for c in available.split_whitespace() {
            if let Err(e) = write_file(&dir.join("cgroup.subtree_control"), &format!("+{c}")) {
                tracing::debug!(
                    "cannot enable cgroup controller {c} in {}: {e}",
                    dir.display()
                );
            }
        }
    }

    /// Creates the cgroup `relative` (e.g. "skiff/c1"); intermediate
    /// directories get the controllers delegated too.
    pub fn create(&self, relative: &str) -> Result<Cgroup> {
        let rel = Path::new(relative.trim_start_matches('/'));
        if relative.is_empty() || rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(CgroupError::BadPath(relative.to_string()));
        }
        let mut dir = self.path.clone();
        let count = rel.components().count();
        for (i, c) in rel.components().enumerate() {
            dir.push(c);
            match fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::AlreadyExists && i + 1 < count => {}
                Err(e) => {
                    return Err(CgroupError::Io {
                        path: dir,
                        source: e,
                    })
                }
            }
            if i + 1 < count {
                self.enable_controllers(&dir);
            }
        }
        Ok(Cgroup {
            path: dir,
            root: self.path.clone(),
        })
    }
}

/// Exists only when the kernel accounts swap.
const SWAP_MAX: &str = "memory.swap.max";

/// One container's cgroup.
#[derive(Debug, Clone)]
pub struct Cgroup {
    path: PathBuf,
    /// The agent's cgroup root: empty directories up to it are removed
    /// with the container's.
    root: PathBuf,
}

/// Usage figures from a cgroup; missing controllers leave zeros.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CgroupStats {
    pub cpu_usage_usec: u64,
    pub cpu_user_usec: u64,
    pub cpu_system_usec: u64,
    pub cpu_nr_throttled: u64,
    pub cpu_throttled_usec: u64,
    pub memory_available: bool,
    pub memory_usage: u64,
    pub memory_limit: u64,
    pub memory_anon: u64,
    pub memory_file: u64,
    pub memory_oom_kills: u64,
    pub pids_current: u64,
    pub pids_limit: u64,
}

/// The (file, value) writes that apply `res` in cgroup v2 terms, in the
/// order they should be written.
pub fn resource_writes(res: &LinuxResources) -> Vec<(&'static str, String)> {
    let mut w = Vec::new();
    let max_or = |v: i64| {
        if v < 0 {
            "max".to_string()
        } else {
            v.to_string()
        }
    };
    if let Some(m) = res.memory() {
        if let Some(limit) = m.limit() {
            w.push(("memory.max", max_or(limit)));
            if let Some(swap) = m.swap() {
                // OCI's swap is memory+swap; v2's memory.swap.max is swap only.
                let v = if swap < 0 || limit < 0 {
                    "max".to_string()
                } else {
                    swap.saturating_sub(limit).max(0).to_string()
                };
                w.push(("memory.swap.max", v));
            }
        }
        if let Some(r) = m.reservation() {
            w.push(("memory.low", max_or(r)));
        }
    }
    if let Some(c) = res.cpu() {
        if let Some(shares) = c.shares() {
            if shares > 0 {
                // The conversion runc and crun use: [2, 262144] -> [1, 10000].
                let weight = 1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142;
                w.push(("cpu.weight", weight.to_string()));
            }
        }
        if c.quota().is_some() || c.period().is_some() {
            let quota = match c.quota() {
                Some(q) if q > 0 => q.to_string(),
                _ => "max".to_string(),
            };
            let period = c.period().filter(|p| *p > 0).unwrap_or(100_000);
            w.push(("cpu.max", format!("{quota} {period}")));
        }
        if let Some(cpus) = c.cpus() {
            w.push(("cpuset.cpus", cpus.clone()));
        }
        if let Some(mems) = c.mems() {
            w.push(("cpuset.mems", mems.clone()));
        }
    }
    if let Some(p) = res.pids() {
        w.push((
            "pids.max",
            if p.limit() > 0 {
                p.limit().to_string()
            } else {
                "max".to_string()
            },
        ));
    }
    if let Some(unified) = res.unified() {
        let mut keys: Vec<_> = unified.iter().collect();
        keys.sort();
        for (k, v) in keys {
            // Only known files: the key becomes a path, so nothing else
            // (e.g. "../x") may pass.
            if let Some(file) = KNOWN_UNIFIED.iter().find(|f| **f == k.as_str()) {
                w.push((file, v.clone()));
            }
        }
    }
    w
}

/// `linux.resources.unified` keys the agent passes through.
const KNOWN_UNIFIED: &[&str] = &[
    "memory.max",
    "memory.high",
    "memory.low",
    "memory.min",
    "memory.swap.max",
    "memory.oom.group",
    "cpu.max",
    "cpu.weight",
    "cpu.idle",
    "pids.max",
    "cpuset.cpus",
    "cpuset.mems",
];

impl Cgroup {
    /// The file a process writes "0" to in order to join.
    pub fn procs_file(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }

    /// The file whose `oom_kill` counter tells about OOM kills.
    pub fn memory_events_file(&self) -> PathBuf {
        self.path.join("memory.events")
    }

    /// Applies the spec's limits; a limit whose controller is missing is
    /// an error naming the controller.
    pub fn apply(&self, res: &LinuxResources) -> Result<()> {
        for (file, value) in resource_writes(res) {
            let path = self.path.join(file);
            if let Err(source) = write_file(&path, &value) {
                if source.kind() == ErrorKind::NotFound && file == SWAP_MAX {
                    // A kernel without swap (or swap accounting) cannot
                    // swap: there is nothing to limit.
                    tracing::debug!(
                        "{}: no swap in this kernel, {file} skipped",
                        self.path.display()
                    );
                    continue;
                }
                if source.kind() == ErrorKind::NotFound {
                    return Err(CgroupError::ControllerUnavailable {
                        controller: file.split('.').next().unwrap_or(file).to_string(),
                        cgroup: self.path.clone(),
                        file,
                    });
                }
                return Err(CgroupError::Write {
                    path,
                    value,
                    source,
                });
            }
        }
        Ok(())
    }

    /// Pids of the processes in the cgroup.
    pub fn pids(&self) -> Vec<i32> {
        fs::read_to_string(self.procs_file())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    fn read(&self, file: &str) -> Option<String> {
        fs::read_to_string(self.path.join(file)).ok()
    }

    pub fn stats(&self) -> CgroupStats {
        let mut s = CgroupStats::default();
        let cpu = self.read("cpu.stat").unwrap_or_default();
        let k = |t: &str, key| parse_flat_keyed(t, key).unwrap_or(0);
        s.cpu_usage_usec = k(&cpu, "usage_usec");
        s.cpu_user_usec = k(&cpu, "user_usec");
        s.cpu_system_usec = k(&cpu, "system_usec");
        s.cpu_nr_throttled = k(&cpu, "nr_throttled");
        s.cpu_throttled_usec = k(&cpu, "throttled_usec");
        if let Some(cur) = self.read("memory.current") {
            s.memory_available = true;
            s.memory_usage = cur.trim().parse().unwrap_or(0);
            s.memory_limit = self
                .read("memory.max")
                .and_then(|m| m.trim().parse().ok())
                .unwrap_or(0);
            let stat = self.read("memory.stat").unwrap_or_default();
            s.memory_anon = k(&stat, "anon");
            s.memory_file = k(&stat, "file");
            s.memory_oom_kills = k(&self.read("memory.events").unwrap_or_default(), "oom_kill");
        }
        s.pids_current = match self.read("pids.current") {
            Some(c) => c.trim().parse().unwrap_or(0),
            None => self.pids().len() as u64,
        };
        s.pids_limit = self
            .read("pids.max")
            .and_then(|m| m.trim().parse().ok())
            .unwrap_or(0);
        s
    }

    /// Freezes (pause) or thaws (resume) every process of the cgroup and
    /// waits until the kernel reports the new state.
    pub fn set_frozen(&self, frozen: bool) -> Result<()> {
        let path = self.path.join("cgroup.freeze");
        let value = if frozen { "1" } else { "0" };
        write_file(&path, value).map_err(|source| CgroupError::Write {
            path: path.clone(),
            value: value.into(),
            source,
        })?;
        let want = if frozen { 1 } else { 0 };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let events = self.read("cgroup.events").unwrap_or_default();
            if parse_flat_keyed(&events, "frozen") == Some(want) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(CgroupError::FreezeTimeout(self.path.clone()));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn populated(&self) -> bool {
        match self.read("cgroup.events") {
            Some(ev) => parse_flat_keyed(&ev, "populated") != Some(0),
            None => !self.pids().is_empty(),
        }
    }

    /// SIGKILLs every process (cgroup.kill where the kernel has it),
    /// waits for them to go, and removes the directory.
    pub fn destroy(&self, timeout: Duration) -> Result<()> {
        if !self.path.exists() {
            return Ok(());
        }
        if self.populated() && write_file(&self.path.join("cgroup.kill"), "1").is_err() {
            for pid in self.pids() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let deadline = Instant::now() + timeout;
        loop {
            match fs::remove_dir(&self.path) {
                Ok(()) => {
                    // Intermediate directories ("skiff/") other containers
                    // do not use any more; a busy one simply stays.
                    let mut dir = self.path.parent();
                    while let Some(d) = dir.filter(|d| d.starts_with(&self.root) && *d != self.root)
                    {
                        if fs::remove_dir(d).is_err() {
                            break;
                        }
                        dir = d.parent();
                    }
                    return Ok(());
                }
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    tracing::warn!("rmdir {}: {e}", self.path.display());
                    return Err(CgroupError::Busy(self.path.clone()));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(json: &str) -> LinuxResources {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn oci_resources_map_to_v2_files() {
        let r = res(
            r#"{"memory":{"limit":67108864,"swap":134217728,"reservation":1024},
                        "cpu":{"shares":1024,"quota":50000,"period":100000,"cpus":"0"},
                        "pids":{"limit":32}}"#,
        );
        let w = resource_writes(&r);
        let get = |f: &str| w.iter().find(|(k, _)| *k == f).map(|(_, v)| v.as_str());
        assert_eq!(get("memory.max"), Some("67108864"));
        assert_eq!(get("memory.swap.max"), Some("67108864"));
        assert_eq!(get("memory.low"), Some("1024"));
        assert_eq!(get("cpu.weight"), Some("39"));
        assert_eq!(get("cpu.max"), Some("50000 100000"));
        assert_eq!(get("cpuset.cpus"), Some("0"));
        assert_eq!(get("pids.max"), Some("32"));
    }

    #[test]
    fn unlimited_values_become_max() {
        let w = resource_writes(&res(
            r#"{"memory":{"limit":-1},"cpu":{"quota":-1},"pids":{"limit":0}}"#,
        ));
        assert!(w.contains(&("memory.max", "max".into())));
        assert!(w.contains(&("cpu.max", "max 100000".into())));
        assert!(w.contains(&("pids.max", "max".into())));
    }

    #[test]
    fn flat_keyed_files_parse() {
        let t = "low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n";
        assert_eq!(parse_flat_keyed(t, "oom_kill"), Some(2));
        assert_eq!(parse_flat_keyed(t, "oom"), Some(1));
        assert_eq!(parse_flat_keyed(t, "nope"), None);
    }

    #[test]
    fn create_rejects_escaping_paths() {
        let root = CgroupRoot {
            path: std::env::temp_dir(),
        };
        for bad in ["", "../x", "a/../../b"] {
            assert!(
                matches!(root.create(bad), Err(CgroupError::BadPath(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn missing_controller_is_named() {
        let dir = std::env::temp_dir().join(format!("skiff-cg-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let cg = Cgroup {
            path: dir.clone(),
            root: dir.clone(),
        };
        let err = cg.apply(&res(r#"{"pids":{"limit":5}}"#)).unwrap_err();
        assert!(err.to_string().contains("controller \"pids\""), "{err}");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_swap_limit_without_swap_accounting_is_skipped() {
        let dir = std::env::temp_dir().join(format!("skiff-cg-swap-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("memory.max"), "max").unwrap();
        let cg = Cgroup {
            path: dir.clone(),
            root: dir.clone(),
        };
        // containerd's CRI sets swap = limit; the guest kernel has no swap.
        cg.apply(&res(r#"{"memory":{"limit":67108864,"swap":67108864}}"#))
            .unwrap();
        assert_eq!(
            fs::read_to_string(dir.join("memory.max")).unwrap(),
            "67108864"
        );
        fs::remove_dir_all(dir).unwrap();
    }
}
