//! Turns the OCI spec containerd wrote for the host into the one the guest
//! agent runs: paths as the guest sees them, and nothing that only makes
//! sense on the host (hooks, host namespace paths, host cgroup paths).

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxDeviceType, LinuxNamespaceType, Mount, Spec};

use crate::share::{self, BindMode, ReadOnly};

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("read OCI spec {path}: {err}")]
    Read { path: PathBuf, err: std::io::Error },
    #[error("invalid OCI spec {path}: {err}")]
    Parse {
        path: PathBuf,
        err: serde_json::Error,
    },
    #[error("the OCI spec has no {0}")]
    Missing(&'static str),
    #[error("mount source {source_path} for {destination} does not exist on the host")]
    MissingMountSource {
        source_path: PathBuf,
        destination: PathBuf,
    },
    #[error("user namespaces are not supported in a Skiff sandbox")]
    UserNamespace,
}

/// A host block device the spec passes in (`linux.devices[index]`): the
/// runtime hot-adds it to the VM and gives the entry the guest's numbers.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockDevice {
    pub index: usize,
    /// Where the container sees it.
    pub path: PathBuf,
    pub major: i64,
    pub minor: i64,
}

/// A host file or directory the guest needs: bind-mounted into the
/// container's share directory at `share_path` (relative to it).
#[derive(Clone, Debug, PartialEq)]
pub struct HostBind {
    pub source: PathBuf,
    pub share_path: PathBuf,
    pub mode: BindMode,
}

/// The guest's spec, the host paths it needs shared and the host block
/// devices it needs hot-added.
#[derive(Debug)]
pub struct GuestSpec {
    pub spec: Spec,
    pub binds: Vec<HostBind>,
    pub block_devices: Vec<BlockDevice>,
    /// The namespaces (`pid`, `ipc`, `uts`) the spec joins by a host
    /// path: in a CRI pod, the pod's shared ones (the sandbox's; PID only
    /// with `NamespaceMode POD`), which in the guest are the sandbox's
    /// init's.
    pub joined_namespaces: Vec<&'static str>,
}

impl GuestSpec {
    /// Points `linux.devices[index]` at the guest's device number.
    pub fn set_guest_device_number(&mut self, index: usize, major: u32, minor: u32) {
        let Some(linux) = self.spec.linux_mut().as_mut() else {
            return;
        };
        if let Some(device) = linux.devices_mut().as_mut().and_then(|d| d.get_mut(index)) {
            device.set_major(major.into());
            device.set_minor(minor.into());
        }
    }
}

/// Where a container's rootfs is in its share directory.
pub const ROOTFS_DIR: &str = "rootfs";
const MOUNTS_DIR: &str = "mounts";
/// The guest's terminal devices, where the agent opens process terminals.
const GUEST_DEVPTS: &str = "/dev/pts";

/// Reads `bundle/config.json`. Parsed here rather than with `Spec::load`,
/// whose error drops serde's line, column and field name.
pub fn load(bundle: &Path) -> Result<Spec, SpecError> {
    let path = bundle.join("config.json");
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(err) => return Err(SpecError::Read { path, err }),
    };
    serde_json::from_slice(&bytes).map_err(|err| SpecError::Parse { path, err })
}

/// How a bind's host copy is made from its OCI options: `rro` is
/// read-only all through, `ro` at the top only; a slave or shared bind
/// (CRI's HostToContainer and Bidirectional) receives the host's later
/// mounts below the source.
fn bind_mode(mount: &Mount) -> BindMode {
    let has = |name: &str| mount.options().iter().flatten().any(|o| o == name);
    let read_only = if has("rro") {
        ReadOnly::Tree
    } else if has("ro") {
        ReadOnly::Top
    } else {
        ReadOnly::No
    };
    let from_host = ["rslave", "slave", "rshared", "shared"]
        .iter()
        .any(|o| has(o));
    BindMode {
        read_only,
        from_host,
    }
}

fn is_bind(mount: &Mount) -> bool {
    mount.typ().as_deref() == Some("bind")
        || mount
            .options()
            .iter()
            .flatten()
            .any(|o| o == "bind" || o == "rbind")
}

/// Adapts `spec` for a container whose share directory the guest sees at
/// `guest_dir` (its rootfs at `guest_dir/rootfs`).
pub fn for_guest(mut spec: Spec, guest_dir: &Path) -> Result<GuestSpec, SpecError> {
    if spec.process().is_none() {
        return Err(SpecError::Missing("process"));
    }
    let mut root = spec.root().clone().ok_or(SpecError::Missing("root"))?;
    root.set_path(guest_dir.join(ROOTFS_DIR));
    spec.set_root(Some(root));
    spec.set_hooks(None);

    let mut binds = Vec::new();
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    for (index, mount) in mounts.iter_mut().enumerate() {
        let destination = mount.destination().clone();
        if mount.typ().as_deref() == Some("cgroup") {
            // The guest has only the unified hierarchy.
            mount.set_typ(Some("cgroup2".into()));
            mount.set_source(Some("cgroup2".into()));
            continue;
        }
        if mount.typ().as_deref() == Some("devpts") {
            // The agent allocates terminals in the guest's /dev/pts; a new
            // devpts instance would hide them from the container (`tty`
            // says "not a tty"). The VM is the pod's isolation boundary.
            mount.set_typ(Some("bind".into()));
            mount.set_source(Some(GUEST_DEVPTS.into()));
            mount.set_options(Some(vec!["rbind".into(), "nosuid".into(), "noexec".into()]));
            continue;
        }
        if !is_bind(mount) {
            continue;
        }
        if destination == Path::new("/dev/shm") {
            // The host's shm would not be shared memory with the guest.
            mount.set_typ(Some("tmpfs".into()));
            mount.set_source(Some("shm".into()));
            mount.set_options(Some(vec!["nosuid".into(), "noexec".into(), "nodev".into()]));
            continue;
        }
        let source = mount.source().clone().unwrap_or_default();
        if !source.exists() {
            return Err(SpecError::MissingMountSource {
                source_path: source,
                destination,
            });
        }
        let share_path = Path::new(MOUNTS_DIR).join(index.to_string());
        let mode = bind_mode(mount);
        if mode.read_only == ReadOnly::Top {
            // Read-only only at the top, as runc makes an `ro` bind: the
            // mounts below the source stay writable if they are. The guest
            // sees them as plain directories of the share, so a read-only
            // bind there would cover them too; where there are any, the
            // host's copy is what refuses writes (EROFS), and the guest
            // binds the volume writable.
            match share::has_submounts(&source) {
                Ok(false) => {}
                Ok(true) => {
                    let options = mount.options().clone().unwrap_or_default();
                    mount.set_options(Some(options.into_iter().filter(|o| o != "ro").collect()));
                }
                // Kept read-only in the guest too: stricter, never looser.
                Err(e) => tracing::warn!(
                    "mounts below {}: {e}; the guest's bind stays read-only",
                    source.display()
                ),
            }
        }
        mount.set_source(Some(guest_dir.join(&share_path)));
        binds.push(HostBind {
            source,
            share_path,
            mode,
        });
    }
    spec.set_mounts(Some(mounts));

    let mut block_devices = Vec::new();
    let mut joined_namespaces = Vec::new();
    if let Some(mut linux) = spec.linux().clone() {
        // Character devices keep their numbers: the common ones (null,
        // zero, random, tty, fuse) are the same in the guest. Block
        // devices are the host's disks, which the guest only has once
        // hot-added.
        for (index, device) in linux.devices().iter().flatten().enumerate() {
            if device.typ() == LinuxDeviceType::B {
                block_devices.push(BlockDevice {
                    index,
                    path: device.path().clone(),
                    major: device.major(),
                    minor: device.minor(),
                });
            }
        }
        let mut namespaces = linux.namespaces().clone().unwrap_or_default();
        if namespaces
            .iter()
            .any(|n| n.typ() == LinuxNamespaceType::User)
        {
            return Err(SpecError::UserNamespace);
        }
        // The guest's network namespace is the pod's network; the host's
        // namespace paths mean nothing inside the VM.
        namespaces.retain(|n| n.typ() != LinuxNamespaceType::Network);
        joined_namespaces = namespaces
            .iter()
            .filter(|n| n.path().is_some())
            .filter_map(|n| match n.typ() {
                LinuxNamespaceType::Pid => Some("pid"),
                LinuxNamespaceType::Ipc => Some("ipc"),
                LinuxNamespaceType::Uts => Some("uts"),
                _ => None,
            })
            .collect();
        for ns in &mut namespaces {
            ns.set_path(None);
        }
        linux.set_namespaces(Some(namespaces));
        // The agent places the container in the guest's cgroup tree.
        linux.set_cgroups_path(None);
        spec.set_linux(Some(linux));
    }
    Ok(GuestSpec {
        spec,
        binds,
        block_devices,
        joined_namespaces,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(value: serde_json::Value) -> Spec {
        serde_json::from_value(value).unwrap()
    }

    fn base() -> serde_json::Value {
        json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "root": {"path": "rootfs", "readonly": true},
            "hooks": {"prestart": [{"path": "/usr/bin/hook"}]},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["newinstance"]},
                {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["ro"]},
                {"destination": "/dev/shm", "type": "bind", "source": "/run/containerd/shm", "options": ["rbind"]},
                {"destination": "/etc/hostname", "type": "bind", "source": "/etc/hostname", "options": ["rbind", "ro"]}
            ],
            "linux": {
                "cgroupsPath": "/default/c1",
                "namespaces": [
                    {"type": "pid"},
                    {"type": "network", "path": "/var/run/netns/cni-1"},
                    {"type": "ipc", "path": "/proc/42/ns/ipc"},
                    {"type": "mount"}
                ]
            }
        })
    }

    #[test]
    fn a_read_only_volume_with_mounts_below_is_writable_in_the_guest_and_read_only_at_the_hosts_top(
    ) {
        let dir = tempfile::tempdir_in("/tmp").unwrap();
        let volume = dir.path().join("volume");
        std::fs::create_dir_all(volume.join("tmpfs")).unwrap();
        let plain = dir.path().join("plain");
        std::fs::create_dir(&plain).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &volume.join("tmpfs"),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=1m"),
        )
        .unwrap();
        let mut value = base();
        value["mounts"] = json!([
            {"destination": "/v", "type": "bind", "source": volume, "options": ["rbind", "rslave", "ro"]},
            {"destination": "/p", "type": "bind", "source": plain, "options": ["rbind", "ro"]},
            {"destination": "/r", "type": "bind", "source": plain, "options": ["rbind", "rro"]}
        ]);
        let guest = for_guest(spec(value), Path::new("/g"));
        nix::mount::umount2(&volume.join("tmpfs"), nix::mount::MntFlags::MNT_DETACH).unwrap();
        let guest = guest.unwrap();
        let options: Vec<_> = guest
            .spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.options().clone().unwrap())
            .collect();
        assert_eq!(options[0], ["rbind", "rslave"]);
        assert_eq!(options[1], ["rbind", "ro"]);
        assert_eq!(options[2], ["rbind", "rro"]);
        let modes: Vec<_> = guest.binds.iter().map(|b| b.mode).collect();
        let mode = |read_only, from_host| BindMode {
            read_only,
            from_host,
        };
        assert_eq!(
            modes,
            [
                mode(ReadOnly::Top, true),
                mode(ReadOnly::Top, false),
                mode(ReadOnly::Tree, false)
            ]
        );
    }

    #[test]
    fn block_devices_are_listed_for_hotplug_and_renumbered() {
        let mut value = base();
        value["linux"]["devices"] = json!([
            {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229},
            {"path": "/dev/xvda", "type": "b", "major": 7, "minor": 3}
        ]);
        let mut guest = for_guest(spec(value), Path::new("/run/skiff/shared/c1")).unwrap();
        assert_eq!(
            guest.block_devices,
            vec![BlockDevice {
                index: 1,
                path: "/dev/xvda".into(),
                major: 7,
                minor: 3,
            }]
        );
        guest.set_guest_device_number(1, 254, 16);
        guest.set_guest_device_number(9, 1, 1); // no such entry: nothing
        let devices = guest
            .spec
            .linux()
            .as_ref()
            .unwrap()
            .devices()
            .clone()
            .unwrap();
        let numbers: Vec<_> = devices.iter().map(|d| (d.major(), d.minor())).collect();
        assert_eq!(numbers, [(10, 229), (254, 16)]);
    }

    #[test]
    fn paths_become_the_guests_and_host_only_parts_go() {
        let guest = for_guest(spec(base()), Path::new("/run/skiff/shared/c1")).unwrap();
        let s = &guest.spec;
        let root = s.root().as_ref().unwrap();
        assert_eq!(root.path(), Path::new("/run/skiff/shared/c1/rootfs"));
        assert_eq!(root.readonly(), Some(true));
        assert!(s.hooks().is_none());

        let mounts = s.mounts().as_ref().unwrap();
        assert_eq!(mounts[1].typ().as_deref(), Some("bind"));
        assert_eq!(mounts[1].source().as_deref(), Some(Path::new("/dev/pts")));
        assert_eq!(mounts[2].typ().as_deref(), Some("cgroup2"));
        assert_eq!(mounts[3].typ().as_deref(), Some("tmpfs"));
        assert_eq!(
            mounts[4].source().as_deref(),
            Some(Path::new("/run/skiff/shared/c1/mounts/4"))
        );
        assert_eq!(
            guest.binds,
            vec![HostBind {
                source: "/etc/hostname".into(),
                share_path: "mounts/4".into(),
                mode: BindMode {
                    read_only: ReadOnly::Top,
                    from_host: false,
                },
            }]
        );

        let linux = s.linux().as_ref().unwrap();
        assert!(linux.cgroups_path().is_none());
        let ns = linux.namespaces().as_ref().unwrap();
        let types: Vec<_> = ns.iter().map(|n| n.typ()).collect();
        assert_eq!(
            types,
            vec![
                LinuxNamespaceType::Pid,
                LinuxNamespaceType::Ipc,
                LinuxNamespaceType::Mount
            ]
        );
        assert!(ns.iter().all(|n| n.path().is_none()));
        // The host's IPC namespace path: in a pod, the sandbox's.
        assert_eq!(guest.joined_namespaces, ["ipc"]);
    }

    #[test]
    fn bad_specs_are_named() {
        let mut no_root = base();
        no_root.as_object_mut().unwrap().remove("root");
        let err = for_guest(spec(no_root), Path::new("/g")).unwrap_err();
        assert_eq!(err.to_string(), "the OCI spec has no root");

        let mut missing_src = base();
        missing_src["mounts"][4]["source"] = json!("/nonexistent/file");
        let err = for_guest(spec(missing_src), Path::new("/g")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/file"), "{err}");

        let mut userns = base();
        userns["linux"]["namespaces"] = json!([{"type": "user"}]);
        assert!(matches!(
            for_guest(spec(userns), Path::new("/g")),
            Err(SpecError::UserNamespace)
        ));
    }

    #[test]
    fn malformed_config_json_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), b"{\"ociVersion\": 1").unwrap();
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("config.json"), "{err}");
        let mut bad_ns = base();
        bad_ns["linux"]["namespaces"] = json!([{"type": "bogus"}]);
        std::fs::write(dir.path().join("config.json"), bad_ns.to_string()).unwrap();
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("unknown variant `bogus`"), "{err}");
    }
}
