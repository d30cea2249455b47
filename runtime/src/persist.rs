//! Sandbox state on the host, `/run/skiff/sbs/<sandbox id>/persist.json`:
//! what the runtime made outside its own process (mounts, tap devices
//! and tc filters, the state directory), so `shim delete` can undo it after the shim that
//! made it died. Written atomically: a crash leaves the old or the new
//! file, never half of one.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::pod_net::PodNetwork;

/// Parent of every sandbox's state directory.
pub const STATE_ROOT: &str = "/run/skiff/sbs";
const STATE_FILE: &str = "persist.json";

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("{0:?} is not a valid sandbox or container id")]
    InvalidId(String),
    #[error("{what} {path}: {err}")]
    Io {
        what: &'static str,
        path: PathBuf,
        err: std::io::Error,
    },
    #[error("parse {path}: {err}")]
    Parse {
        path: PathBuf,
        err: serde_json::Error,
    },
}

fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> PersistError + 'a {
    move |err| PersistError::Io {
        what,
        path: path.to_path_buf(),
        err,
    }
}

/// Refuses an id that containerd would refuse: anything else could walk
/// out of the state directory.
pub fn check_id(id: &str) -> Result<(), PersistError> {
    if skiff_agent_protocol::is_valid_id(id) {
        Ok(())
    } else {
        Err(PersistError::InvalidId(id.to_string()))
    }
}

/// The state directory of sandbox `id` below `root` ([`STATE_ROOT`]).
pub fn sandbox_dir(root: &Path, id: &str) -> Result<PathBuf, PersistError> {
    check_id(id)?;
    Ok(root.join(id))
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct SandboxState {
    pub sandbox_id: String,
    /// The shim process that holds the VM; when it is gone, so is the VM.
    pub shim_pid: u32,
    /// The directory served to the guest over virtio-fs.
    pub share_dir: PathBuf,
    pub containers: Vec<ContainerState>,
    /// The pod network wired into the VM (taps and tc filters in the pod's
    /// network namespace), if any.
    #[serde(default)]
    pub network: Option<PodNetwork>,
    /// cgroup directories made for the sandbox (`cgroup`), removed once
    /// the shim is gone.
    #[serde(default)]
    pub cgroup_dirs: Vec<PathBuf>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ContainerState {
    pub id: String,
    pub bundle: PathBuf,
    /// Mount points this runtime made for the container (its rootfs and
    /// bind mounts in the share), undone deepest first.
    pub mounts: Vec<PathBuf>,
}

impl SandboxState {
    pub fn load(dir: &Path) -> Result<Self, PersistError> {
        let path = dir.join(STATE_FILE);
        let bytes = std::fs::read(&path).map_err(io_err("read", &path))?;
        serde_json::from_slice(&bytes).map_err(|err| PersistError::Parse { path, err })
    }

    /// Writes `dir/persist.json` through a temporary file, fsync and
    /// rename, then syncs the directory.
    pub fn save(&self, dir: &Path) -> Result<(), PersistError> {
        let path = dir.join(STATE_FILE);
        let tmp = dir.join(format!(".{STATE_FILE}.tmp"));
        let json = serde_json::to_vec_pretty(self).expect("state serialises");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        file.write_all(&json).map_err(io_err("write", &tmp))?;
        file.sync_all().map_err(io_err("sync", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err("rename", &path))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("sync", dir))
    }

    pub fn container_mut(&mut self, id: &str) -> Option<&mut ContainerState> {
        self.containers.iter_mut().find(|c| c.id == id)
    }
}

/// Whether `pid` is a live process running the same executable as this
/// one (a recycled pid of an unrelated process does not count).
pub fn shim_alive(pid: u32) -> bool {
    let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) else {
        return false;
    };
    let Ok(me) = std::fs::read_link("/proc/self/exe") else {
        return false;
    };
    let name = |p: &Path| p.file_name().map(|n| n.to_owned());
    name(&exe) == name(&me)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_could_escape_are_refused() {
        for bad in ["", ".", "..", "a/b", "../x", "a b", "x\0", &"a".repeat(77)] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
        for good in ["c1", "0123abc", "a.b_c-d", &"a".repeat(76)] {
            check_id(good).unwrap();
        }
        assert_eq!(
            sandbox_dir(Path::new("/run/x"), "p1").unwrap(),
            Path::new("/run/x/p1")
        );
    }

    #[test]
    fn state_round_trips_and_replaces_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = SandboxState {
            sandbox_id: "p1".into(),
            shim_pid: 42,
            share_dir: dir.path().join("shared"),
            containers: vec![ContainerState {
                id: "c1".into(),
                bundle: "/b".into(),
                mounts: vec!["/m".into()],
            }],
            network: Some(PodNetwork {
                netns: "/var/run/netns/cni-1".into(),
                ..Default::default()
            }),
            cgroup_dirs: vec!["/sys/fs/cgroup/x".into()],
        };
        state.save(dir.path()).unwrap();
        assert_eq!(SandboxState::load(dir.path()).unwrap(), state);
        state.containers.clear();
        state.save(dir.path()).unwrap();
        assert_eq!(SandboxState::load(dir.path()).unwrap(), state);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(STATE_FILE)]);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(STATE_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_garbled_state_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STATE_FILE), b"{\"sandbox_id\": ").unwrap();
        let err = SandboxState::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("persist.json"), "{err}");
    }

    #[test]
    fn this_process_counts_as_a_live_shim_and_a_dead_pid_does_not() {
        assert!(shim_alive(std::process::id()));
        assert!(!shim_alive(u32::MAX - 1));
    }
}
