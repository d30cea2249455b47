//! The sandbox's cgroup. The shim, and with it the pod's VM (vCPU and
//! device threads, guest memory, disk I/O), joins the cgroup containerd
//! names for the sandbox container (`linux.cgroupsPath`), so the VM is
//! accounted and limited where the orchestrator accounts and limits the
//! pod, as Kata's `sandbox_cgroup_only` does. It leaves (and removes what
//! it created) when the sandbox ends; after a crash, `shim delete` removes
//! it from the sandbox's state.
//!
//! The cgroupfs form of the path only (`/kubepods/.../pod<uid>/<id>`,
//! ctr's `/<namespace>/<id>`), on cgroup v2 or on v1's memory, cpu, pids
//! and blkio hierarchies. The systemd form (`slice:prefix:name`) is left
//! alone: its scopes belong to systemd, created over D-Bus, which Skiff
//! does not speak; the shim then stays where containerd started it.

use std::path::{Component, Path, PathBuf};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The v1 hierarchies the VM's resources are charged in (cpuacct is where
/// containerd's pod stats read CPU time; cpuset needs its cpus and mems
/// filled in before a process may join; devices and freezer are for
/// containers).
const V1_CONTROLLERS: [&str; 5] = ["memory", "cpu", "cpuacct", "pids", "blkio"];

/// Errors joining or leaving the sandbox's cgroup.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("linux.cgroupsPath {0:?}: not an absolute cgroup path without `..`")]
    BadPath(String),
    #[error("cgroup {path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |err| CgroupError::Io {
        path: path.to_path_buf(),
        err,
    }
}

/// One hierarchy's part: the directory joined and the one left.
#[derive(Debug)]
struct Joined {
    dir: PathBuf,
    previous: PathBuf,
    created: bool,
}

/// The sandbox's cgroup, joined; dropping it leaves it (see
/// [`leave`](Self::leave)).
#[derive(Debug)]
pub struct SandboxCgroup {
    pid: u32,
    joined: Vec<Joined>,
}

/// The hierarchies of this host: (root, the path `pid` is in there).
fn hierarchies(pid: u32, root: &Path) -> Result<Vec<(PathBuf, PathBuf)>, CgroupError> {
    let proc = PathBuf::from(format!("/proc/{pid}/cgroup"));
    let membership = std::fs::read_to_string(&proc).map_err(io_err(&proc))?;
    let mut found = Vec::new();
    if root.join("cgroup.controllers").exists() {
        if let Some(path) = membership.lines().find_map(|l| l.strip_prefix("0::")) {
            found.push((root.to_path_buf(), PathBuf::from(path)));
        }
        return Ok(found);
    }
    for controller in V1_CONTROLLERS {
        let Ok(dir) = std::fs::canonicalize(root.join(controller)) else {
            continue;
        };
        let path = membership.lines().find_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            controllers
                .split(',')
                .any(|c| c == controller)
                .then(|| PathBuf::from(path))
        });
        if let Some(path) = path {
            if !found.iter().any(|(d, _)| *d == dir) {
                found.push((dir, path));
            }
        }
    }
    Ok(found)
}

/// `cgroups_path` below `root`, refused if it could leave it.
fn below(root: &Path, cgroups_path: &str) -> Result<PathBuf, CgroupError> {
    let path = Path::new(cgroups_path);
    let bad = || CgroupError::BadPath(cgroups_path.to_string());
    if !path.is_absolute() {
        return Err(bad());
    }
    let mut dir = root.to_path_buf();
    for component in path.components() {
        match component {
            Component::RootDir => {}
            Component::Normal(name) => dir.push(name),
            _ => return Err(bad()),
        }
    }
    if dir == root {
        return Err(bad());
    }
    Ok(dir)
}

fn move_to(dir: &Path, pid: u32) -> Result<(), CgroupError> {
    let procs = dir.join("cgroup.procs");
    std::fs::write(&procs, pid.to_string()).map_err(io_err(&procs))
}

impl SandboxCgroup {
    /// Moves process `pid` (the shim: every thread of it) into
    /// `cgroups_path`, creating it; `None` for the systemd form, which is
    /// left to systemd. On error nothing is left joined or created.
    pub fn join(cgroups_path: &str, pid: u32) -> Result<Option<Self>, CgroupError> {
        Self::join_in(Path::new(CGROUP_ROOT), cgroups_path, pid)
    }

    fn join_in(root: &Path, cgroups_path: &str, pid: u32) -> Result<Option<Self>, CgroupError> {
        if !cgroups_path.starts_with('/') && cgroups_path.contains(':') {
            tracing::info!(
                "linux.cgroupsPath {cgroups_path:?} is systemd's: the shim stays in its cgroup"
            );
            return Ok(None);
        }
        let mut this = Self {
            pid,
            joined: Vec::new(),
        };
        for (hierarchy, current) in hierarchies(pid, root)? {
            let dir = below(&hierarchy, cgroups_path)?;
            let previous =
                below(&hierarchy, &current.to_string_lossy()).unwrap_or_else(|_| hierarchy.clone());
            let created = !dir.exists();
            std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
            let joined = Joined {
                dir,
                previous,
                created,
            };
            let moved = move_to(&joined.dir, pid);
            // Pushed first, so a failure undoes this hierarchy too.
            this.joined.push(joined);
            moved?;
        }
        Ok(Some(this))
    }

    /// The directories created, which a crash cleanup removes.
    pub fn created_dirs(&self) -> Vec<PathBuf> {
        self.joined
            .iter()
            .filter(|j| j.created)
            .map(|j| j.dir.clone())
            .collect()
    }

    /// Moves the process back where it was and removes what was created.
    /// Errors are logged: the sandbox is ending.
    pub fn leave(&mut self) {
        for joined in self.joined.drain(..).rev() {
            if let Err(e) = move_to(&joined.previous, self.pid) {
                tracing::warn!("leaving the sandbox cgroup: {e}");
            }
            if joined.created {
                if let Err(e) = std::fs::remove_dir(&joined.dir) {
                    tracing::warn!("remove cgroup {}: {e}", joined.dir.display());
                }
            }
        }
    }
}

impl Drop for SandboxCgroup {
    fn drop(&mut self) {
        self.leave();
    }
}

/// Removes cgroup directories a dead shim created (empty once it is gone).
pub fn remove_dead(dirs: &[PathBuf]) {
    for dir in dirs {
        match std::fs::remove_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("remove cgroup {}: {e}", dir.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_below_the_hierarchy() {
        let root = Path::new("/sys/fs/cgroup/memory");
        assert_eq!(
            below(root, "/kubepods/pod1/abc").unwrap(),
            root.join("kubepods/pod1/abc")
        );
        for bad in ["relative/x", "/a/../../etc", "/", ""] {
            assert!(below(root, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_systemd_form_is_left_alone() {
        let got = SandboxCgroup::join("kubepods.slice:cri-containerd:abc", 1).unwrap();
        assert!(got.is_none());
    }

    /// Root only: a child process joins a fresh cgroup and leaves it, and
    /// the cgroup is gone.
    #[test]
    fn a_process_joins_and_leaves() {
        // SAFETY: geteuid has no arguments.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: joining a cgroup needs root");
            return;
        }
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        let path = format!("/skiff-test-{}/sandbox", std::process::id());
        let before = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        let mut cgroup = SandboxCgroup::join(&path, pid)
            .unwrap()
            .expect("cgroupfs form");
        let inside = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        assert!(inside.contains(&path), "{inside}");
        let created = cgroup.created_dirs();
        assert!(!created.is_empty());
        cgroup.leave();
        let after = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        assert_eq!(after, before);
        assert!(created.iter().all(|d| !d.exists()), "{created:?}");
        let _ = child.kill();
        let _ = child.wait();
        // The parent this test made.
        for dir in created {
            let _ = std::fs::remove_dir(dir.parent().unwrap());
        }
    }
}
