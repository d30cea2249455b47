//! Turns the OCI spec (and exec'd OCI processes) into spawn plans, with
//! every check that can fail done here, before fork, so a bad request
//! gets a clear error and nothing is created.
//!
//! The plans are [`crate::plan`]'s types, which [`crate::spawn`] carries
//! out; this module never calls into `spawn`, so the two do not depend on
//! each other.

use std::ffi::CString;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use nix::sys::stat::SFlag;
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, LinuxNamespaceType, Process, Spec};

use crate::mounts::{secure_join, MountError, MountOptions};
use crate::plan::{DevicePlan, MountPlan, ProcessSetup, RootfsPlan};
use crate::security::{rlimits_from_spec, CapSets, SecurityError};
use crate::user::UserError;

/// Problems with a spec or process the runtime sent.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("invalid OCI {what} JSON: {err}")]
    Json { what: &'static str, err: String },
    #[error("the spec has no process")]
    NoProcess,
    #[error("the spec has no root (root.path): where is the container's rootfs?")]
    NoRoot,
    #[error("rootfs {0:?} must be an absolute guest path")]
    RootNotAbsolute(PathBuf),
    #[error("rootfs {0} does not exist or is not a directory")]
    RootMissing(PathBuf),
    #[error("process.args is empty")]
    NoArgs,
    #[error("{0:?} contains a NUL byte")]
    Nul(String),
    #[error("mount destination {0:?} must be absolute")]
    RelativeDestination(String),
    #[error("mount source {source_path} for {destination} does not exist")]
    MissingMountSource {
        source_path: String,
        destination: String,
    },
    #[error("{0} namespaces are not supported")]
    UnsupportedNamespace(String),
    #[error("device {0:?}: devices go below /dev, and the spec must mount a tmpfs there")]
    DeviceOutsideDev(String),
    #[error("device {path:?}: type {typ:?} cannot be created")]
    DeviceType { path: String, typ: String },
    #[error("device {path:?}: number {major}:{minor} is out of range")]
    DeviceNumber {
        path: String,
        major: i64,
        minor: i64,
    },
    #[error("sysctl {0:?}: not a sysctl name (dot- or slash-separated words)")]
    SysctlName(String),
    #[error("open namespace {path}: {err}")]
    Namespace { path: PathBuf, err: std::io::Error },
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error(transparent)]
    User(#[from] UserError),
    #[error(transparent)]
    Security(#[from] SecurityError),
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
}

pub fn parse_spec(json: &[u8]) -> Result<Spec, SpecError> {
    serde_json::from_slice(json).map_err(|e| SpecError::Json {
        what: "runtime spec",
        err: e.to_string(),
    })
}

pub fn parse_process(json: &[u8]) -> Result<Process, SpecError> {
    serde_json::from_slice(json).map_err(|e| SpecError::Json {
        what: "process",
        err: e.to_string(),
    })
}

/// The rootfs directory named by the spec, checked.
pub fn rootfs_path(spec: &Spec) -> Result<PathBuf, SpecError> {
    let root = spec.root().as_ref().ok_or(SpecError::NoRoot)?;
    let path = root.path().clone();
    if path.as_os_str().is_empty() {
        return Err(SpecError::NoRoot);
    }
    if !path.is_absolute() {
        return Err(SpecError::RootNotAbsolute(path));
    }
    if !path.is_dir() {
        return Err(SpecError::RootMissing(path));
    }
    Ok(path)
}

fn cstring(s: &str) -> Result<CString, SpecError> {
    CString::new(s).map_err(|_| SpecError::Nul(s.to_string()))
}

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where execve will look for `arg0`, in the container's view: PATH from
/// the process's own environment, as a shell would.
pub fn exec_candidates(arg0: &str, env: &[String]) -> Vec<String> {
    if arg0.contains('/') {
        return vec![arg0.to_string()];
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| format!("{}/{arg0}", d.trim_end_matches('/')))
        .collect()
}

/// Adds the `GLIBC_TUNABLES` the guest was booted with (the VMM sets it
/// only where the guest kernel cannot switch AVX state between processes:
/// see `skiff_guest_abi::cmdline::SOFTWARE_KVM_CMDLINE`) to a container process's
/// environment, unless the spec sets its own.
fn with_boot_tunables(mut env: Vec<String>, boot: Option<String>) -> Vec<String> {
    if let Some(tunables) = boot {
        if !env.iter().any(|e| e.starts_with("GLIBC_TUNABLES=")) {
            env.push(format!("GLIBC_TUNABLES={tunables}"));
        }
    }
    env
}

pub fn process_setup(p: &Process, rootfs: &Path) -> Result<ProcessSetup, SpecError> {
    let args = p.args().clone().unwrap_or_default();
    let arg0 = args.first().ok_or(SpecError::NoArgs)?;
    let env = with_boot_tunables(
        p.env().clone().unwrap_or_default(),
        std::env::var("GLIBC_TUNABLES").ok(),
    );
    Ok(ProcessSetup {
        exec_candidates: exec_candidates(arg0, &env)
            .iter()
            .map(|c| cstring(c))
            .collect::<Result<_, _>>()?,
        args: args.iter().map(|a| cstring(a)).collect::<Result<_, _>>()?,
        env: env.iter().map(|e| cstring(e)).collect::<Result<_, _>>()?,
        cwd: p.cwd().clone(),
        user: crate::user::resolve(p.user(), rootfs)?,
        caps: p
            .capabilities()
            .as_ref()
            .map(CapSets::from_spec)
            .transpose()?,
        rlimits: rlimits_from_spec(p.rlimits().as_deref().unwrap_or_default())?,
        no_new_privileges: p.no_new_privileges().unwrap_or(false),
        oom_score_adj: p.oom_score_adj(),
        terminal: p.terminal().unwrap_or(false),
    })
}

/// Mounts, masked and read-only paths of the init process.
pub fn rootfs_plan(spec: &Spec, rootfs: &Path) -> Result<RootfsPlan, SpecError> {
    let mut mounts = Vec::new();
    for m in spec.mounts().iter().flatten() {
        let destination = m.destination().display().to_string();
        if !m.destination().is_absolute() {
            return Err(SpecError::RelativeDestination(destination));
        }
        let options = MountOptions::parse(m.options().as_deref().unwrap_or_default());
        let bind = options.bind || m.typ().as_deref() == Some("bind");
        let mut file = false;
        if bind {
            let src = m.source().clone().unwrap_or_default();
            match std::fs::metadata(&src) {
                Ok(meta) => file = !meta.is_dir(),
                Err(_) => {
                    return Err(SpecError::MissingMountSource {
                        source_path: src.display().to_string(),
                        destination,
                    })
                }
            }
        }
        let fstype = m.typ().clone().filter(|t| t != "bind" && !bind);
        mounts.push(MountPlan {
            target: secure_join(rootfs, m.destination())?,
            source: m.source().clone(),
            populate_dev: destination == "/dev" && fstype.as_deref() == Some("tmpfs"),
            destination,
            fstype,
            options: MountOptions { bind, ..options },
            file,
        });
    }
    let linux = spec.linux().as_ref();
    let dev_is_tmpfs = mounts.iter().any(|m| m.populate_dev);
    let devices = linux
        .and_then(|l| l.devices().as_ref())
        .into_iter()
        .flatten()
        .map(|d| device_plan(d, rootfs, dev_is_tmpfs))
        .collect::<Result<Vec<_>, _>>()?;
    let (propagation, root_propagation) =
        match linux.and_then(|l| l.rootfs_propagation().as_deref()) {
            Some("shared") | Some("rshared") => (
                MsFlags::MS_SLAVE | MsFlags::MS_REC,
                Some(MsFlags::MS_SHARED | MsFlags::MS_REC),
            ),
            Some("slave") | Some("rslave") => (MsFlags::MS_SLAVE | MsFlags::MS_REC, None),
            _ => (MsFlags::MS_PRIVATE | MsFlags::MS_REC, None),
        };
    Ok(RootfsPlan {
        rootfs: rootfs.to_path_buf(),
        readonly: spec
            .root()
            .as_ref()
            .and_then(|r| r.readonly())
            .unwrap_or(false),
        propagation,
        root_propagation,
        mounts,
        devices,
        masked_paths: linux
            .and_then(|l| l.masked_paths().clone())
            .unwrap_or_default()
            .into_iter()
            .map(PathBuf::from)
            .collect(),
        readonly_paths: linux
            .and_then(|l| l.readonly_paths().clone())
            .unwrap_or_default()
            .into_iter()
            .map(PathBuf::from)
            .collect(),
        sysctl: linux
            .and_then(|l| l.sysctl().as_ref())
            .into_iter()
            .flatten()
            .map(|(k, v)| Ok((sysctl_path(k)?, v.clone())))
            .collect::<Result<Vec<_>, SpecError>>()?,
    })
}

/// `/proc/sys/...` for a sysctl name: `net.ipv4.ping_group_range`, or with
/// slashes where a word holds a dot (`net/ipv4/conf/eth0.1/rp_filter`), as
/// runc accepts. No word may be empty, `.` or `..`, so the path stays
/// below /proc/sys.
fn sysctl_path(name: &str) -> Result<PathBuf, SpecError> {
    let words: Vec<&str> = if name.contains('/') {
        name.split('/').collect()
    } else {
        name.split('.').collect()
    };
    let word_ok = |w: &&str| {
        !w.is_empty()
            && *w != "."
            && *w != ".."
            && w.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    };
    if !words.iter().all(word_ok) {
        return Err(SpecError::SysctlName(name.to_string()));
    }
    Ok(words
        .iter()
        .fold(PathBuf::from("/proc/sys"), |p, w| p.join(w)))
}

/// A device node of `linux.devices`, made in the container's own /dev
/// tmpfs: never in the rootfs, which is the host's directory shared over
/// virtio-fs.
fn device_plan(
    d: &LinuxDevice,
    rootfs: &Path,
    dev_is_tmpfs: bool,
) -> Result<DevicePlan, SpecError> {
    let path = d.path().display().to_string();
    let below_dev = d.path().is_absolute()
        && d.path().starts_with("/dev")
        && d.path() != Path::new("/dev")
        && !d.path().components().any(|c| c == Component::ParentDir);
    if !below_dev || !dev_is_tmpfs {
        return Err(SpecError::DeviceOutsideDev(path));
    }
    let kind = match d.typ() {
        LinuxDeviceType::B => SFlag::S_IFBLK,
        LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
        LinuxDeviceType::P => SFlag::S_IFIFO,
        LinuxDeviceType::A => {
            return Err(SpecError::DeviceType {
                path,
                typ: "a".into(),
            })
        }
    };
    let (major, minor) = (d.major(), d.minor());
    let number = match (u32::try_from(major), u32::try_from(minor)) {
        (Ok(ma), Ok(mi)) if ma < 1 << 12 && mi < 1 << 20 => {
            nix::sys::stat::makedev(ma.into(), mi.into())
        }
        _ => return Err(SpecError::DeviceNumber { path, major, minor }),
    };
    Ok(DevicePlan {
        target: secure_join(rootfs, d.path())?,
        kind,
        number,
        mode: d.file_mode().unwrap_or(0o666) & 0o7777,
        uid: d.uid().unwrap_or(0),
        gid: d.gid().unwrap_or(0),
    })
}

fn ns_flag(t: LinuxNamespaceType) -> Result<CloneFlags, SpecError> {
    Ok(match t {
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        other => return Err(SpecError::UnsupportedNamespace(format!("{other:?}"))),
    })
}

fn open_ns(path: &Path) -> Result<File, SpecError> {
    File::open(path).map_err(|err| SpecError::Namespace {
        path: path.to_path_buf(),
        err,
    })
}

/// Namespaces of a container's init process.
pub struct Namespaces {
    pub join: Vec<(File, CloneFlags)>,
    pub unshare: CloneFlags,
    pub pid_ns_change: bool,
}

/// The namespaces a container may join from another container's init by
/// name (`/proc/PID/ns/NAME`): a CRI pod's shared ones.
pub fn shareable_namespace(name: &str) -> Result<&'static str, SpecError> {
    match name {
        "pid" => Ok("pid"),
        "ipc" => Ok("ipc"),
        "uts" => Ok("uts"),
        other => Err(SpecError::UnsupportedNamespace(format!(
            "{other:?} (to join from the pod)"
        ))),
    }
}

/// The `/proc/PID/ns` name of a namespace flag.
fn ns_name(flag: CloneFlags) -> &'static str {
    match flag {
        CloneFlags::CLONE_NEWNS => "mnt",
        CloneFlags::CLONE_NEWUTS => "uts",
        CloneFlags::CLONE_NEWIPC => "ipc",
        CloneFlags::CLONE_NEWPID => "pid",
        CloneFlags::CLONE_NEWNET => "net",
        CloneFlags::CLONE_NEWCGROUP => "cgroup",
        _ => "",
    }
}

/// From the spec's `linux.namespaces`; an entry without a path joins the
/// namespace `joined` names for its type (the pod's shared ones), or is
/// made new. A new mount namespace is always made: the rootfs is set up
/// in it.
pub fn init_namespaces(spec: &Spec, joined: &[(String, PathBuf)]) -> Result<Namespaces, SpecError> {
    let mut ns = Namespaces {
        join: Vec::new(),
        unshare: CloneFlags::CLONE_NEWNS,
        pid_ns_change: false,
    };
    let list = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    for n in list {
        let flag = ns_flag(n.typ())?;
        let path = n.path().clone().or_else(|| {
            joined
                .iter()
                .find(|(name, _)| name == ns_name(flag))
                .map(|(_, path)| path.clone())
        });
        if flag == CloneFlags::CLONE_NEWPID {
            ns.pid_ns_change = true;
        }
        match path {
            Some(p) => ns.join.push((open_ns(&p)?, flag)),
            None => ns.unshare |= flag,
        }
    }
    // Joining a mount namespace would replace the one made for the rootfs.
    if ns.join.iter().any(|(_, f)| *f == CloneFlags::CLONE_NEWNS) {
        ns.unshare -= CloneFlags::CLONE_NEWNS;
    }
    Ok(ns)
}

/// Namespaces an exec'd process joins: those of the init process that
/// differ from the agent's (mount last, it changes the root).
pub fn exec_namespaces(init_pid: i32) -> Result<Namespaces, SpecError> {
    let mut ns = Namespaces {
        join: Vec::new(),
        unshare: CloneFlags::empty(),
        pid_ns_change: false,
    };
    for (name, flag) in [
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
        ("cgroup", CloneFlags::CLONE_NEWCGROUP),
        ("pid", CloneFlags::CLONE_NEWPID),
        ("mnt", CloneFlags::CLONE_NEWNS),
    ] {
        let theirs = PathBuf::from(format!("/proc/{init_pid}/ns/{name}"));
        let ours = PathBuf::from(format!("/proc/self/ns/{name}"));
        let ino = |p: &Path| std::fs::metadata(p).map(|m| m.ino()).ok();
        if ino(&theirs).is_some() && ino(&theirs) == ino(&ours) {
            continue;
        }
        ns.join.push((open_ns(&theirs)?, flag));
        if flag == CloneFlags::CLONE_NEWPID {
            ns.pid_ns_change = true;
        }
    }
    Ok(ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Spec {
        parse_spec(json.as_bytes()).unwrap()
    }

    #[test]
    fn boot_tunables_reach_processes_unless_the_spec_sets_its_own() {
        let env = vec!["PATH=/bin".to_string()];
        assert_eq!(with_boot_tunables(env.clone(), None), env);
        assert_eq!(
            with_boot_tunables(env.clone(), Some("glibc.cpu.hwcaps=-AVX2".into())),
            vec![
                "PATH=/bin".to_string(),
                "GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX2".into()
            ]
        );
        let own = vec!["GLIBC_TUNABLES=glibc.malloc.check=3".to_string()];
        assert_eq!(with_boot_tunables(own.clone(), Some("x".into())), own);
    }

    /// The shim advertises these to containerd as supported.
    #[test]
    fn every_advertised_namespace_is_made() {
        for name in skiff_agent_protocol::support::NAMESPACES {
            let t: LinuxNamespaceType = serde_json::from_value(serde_json::json!(name)).unwrap();
            assert!(ns_flag(t).is_ok(), "{name}");
        }
        for refused in ["user", "time"] {
            let t: LinuxNamespaceType = serde_json::from_value(serde_json::json!(refused)).unwrap();
            assert!(ns_flag(t).is_err(), "{refused}");
        }
    }

    #[test]
    fn sysctl_names_stay_below_proc_sys() {
        let ok = |n: &str| sysctl_path(n).unwrap().display().to_string();
        assert_eq!(
            ok("net.ipv4.ping_group_range"),
            "/proc/sys/net/ipv4/ping_group_range"
        );
        assert_eq!(
            ok("net/ipv4/conf/eth0.1/rp_filter"),
            "/proc/sys/net/ipv4/conf/eth0.1/rp_filter"
        );
        for bad in [
            "",
            "net..x",
            "net/../../etc/passwd",
            "/net/x",
            "net.ip v4",
            "a/./b",
        ] {
            assert!(
                matches!(sysctl_path(bad), Err(SpecError::SysctlName(_))),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn path_search_uses_the_process_env() {
        assert_eq!(exec_candidates("/bin/sh", &[]), vec!["/bin/sh"]);
        assert_eq!(
            exec_candidates("ls", &["PATH=/a:/b/".into()]),
            vec!["/a/ls", "/b/ls"]
        );
        assert_eq!(exec_candidates("ls", &[]).len(), 6);
    }

    #[test]
    fn spec_without_root_is_refused() {
        let s = spec(
            r#"{"ociVersion":"1.0.2","process":{"args":["sh"],"cwd":"/","user":{"uid":0,"gid":0}}}"#,
        );
        assert!(matches!(rootfs_path(&s), Err(SpecError::NoRoot)));
        let s = spec(r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"}}"#);
        assert!(matches!(
            rootfs_path(&s),
            Err(SpecError::RootNotAbsolute(_))
        ));
        let s = spec(r#"{"ociVersion":"1.0.2","root":{"path":"/nonexistent/rootfs"}}"#);
        let e = rootfs_path(&s).unwrap_err();
        assert_eq!(
            e.to_string(),
            "rootfs /nonexistent/rootfs does not exist or is not a directory"
        );
    }

    #[test]
    fn a_shared_root_is_built_slave_and_made_shared_once_in_place() {
        let plan = |propagation: &str| {
            let s = spec(&format!(
                r#"{{"ociVersion":"1.0.2","root":{{"path":"/"}},"linux":{{"rootfsPropagation":"{propagation}"}}}}"#
            ));
            let p = rootfs_plan(&s, Path::new("/tmp")).unwrap();
            (p.propagation, p.root_propagation)
        };
        let rec = MsFlags::MS_REC;
        assert_eq!(
            plan("rshared"),
            (MsFlags::MS_SLAVE | rec, Some(MsFlags::MS_SHARED | rec))
        );
        assert_eq!(plan("rslave"), (MsFlags::MS_SLAVE | rec, None));
        assert_eq!(plan("rprivate"), (MsFlags::MS_PRIVATE | rec, None));
    }

    #[test]
    fn bind_of_missing_source_is_refused() {
        let s = spec(
            r#"{"ociVersion":"1.0.2","root":{"path":"/"},"mounts":[
                {"destination":"/data","type":"bind","source":"/nonexistent/src","options":["rbind"]}]}"#,
        );
        let e = rootfs_plan(&s, Path::new("/tmp")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "mount source /nonexistent/src for /data does not exist"
        );
    }

    #[test]
    fn devices_are_made_only_in_a_dev_tmpfs() {
        let with = |mounts: &str, device: &str| {
            let json = format!(
                r#"{{"ociVersion":"1.0.2","root":{{"path":"/"}},"mounts":[{mounts}],
                    "linux":{{"devices":[{device}]}}}}"#
            );
            rootfs_plan(&spec(&json), Path::new("/tmp")).map(|p| p.devices)
        };
        let dev_tmpfs = r#"{"destination":"/dev","type":"tmpfs","source":"tmpfs"}"#;
        let disk =
            r#"{"path":"/dev/loop0","type":"b","major":254,"minor":16,"fileMode":8630,"uid":5}"#;
        let plan = with(dev_tmpfs, disk).unwrap();
        assert_eq!(plan.len(), 1);
        assert_eq!(plan[0].target, Path::new("/tmp/dev/loop0"));
        assert_eq!(plan[0].kind, SFlag::S_IFBLK);
        assert_eq!(plan[0].number, nix::sys::stat::makedev(254, 16));
        assert_eq!((plan[0].mode, plan[0].uid, plan[0].gid), (0o666, 5, 0));

        // No tmpfs at /dev: the node would land in the shared rootfs.
        let e = with("", disk).unwrap_err();
        assert!(matches!(e, SpecError::DeviceOutsideDev(_)), "{e}");
        for path in ["/etc/x", "/dev", "/dev/../etc/x", "dev/x"] {
            let d = format!(r#"{{"path":"{path}","type":"c","major":1,"minor":3}}"#);
            let e = with(dev_tmpfs, &d).unwrap_err();
            assert!(matches!(e, SpecError::DeviceOutsideDev(_)), "{path}: {e}");
        }
        let e = with(
            dev_tmpfs,
            r#"{"path":"/dev/x","type":"b","major":-1,"minor":0}"#,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"device "/dev/x": number -1:0 is out of range"#
        );
        let e = with(
            dev_tmpfs,
            r#"{"path":"/dev/x","type":"b","major":4096,"minor":0}"#,
        )
        .unwrap_err();
        assert!(matches!(e, SpecError::DeviceNumber { .. }), "{e}");
        let e = with(dev_tmpfs, r#"{"path":"/dev/x","type":"a"}"#).unwrap_err();
        assert!(matches!(e, SpecError::DeviceType { .. }), "{e}");
    }

    #[test]
    fn namespaces_split_into_new_and_joined() {
        let s = spec(
            r#"{"ociVersion":"1.0.2","linux":{"namespaces":[
                {"type":"pid"},{"type":"uts"},{"type":"ipc"},{"type":"mount"},
                {"type":"network","path":"/proc/self/ns/net"}]}}"#,
        );
        let ns = init_namespaces(&s, &[]).unwrap();
        assert!(ns.pid_ns_change);
        assert!(ns.unshare.contains(
            CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWNS
        ));
        assert_eq!(ns.join.len(), 1);
        // The pod's PID and UTS namespaces (here the test's own).
        let pod = [
            ("pid".to_string(), PathBuf::from("/proc/self/ns/pid")),
            ("uts".to_string(), PathBuf::from("/proc/self/ns/uts")),
        ];
        let shared = init_namespaces(&s, &pod).unwrap();
        assert!(
            shared.pid_ns_change,
            "joining a PID namespace forks once more"
        );
        assert!(!shared
            .unshare
            .intersects(CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWUTS));
        assert!(shared.unshare.contains(CloneFlags::CLONE_NEWIPC));
        assert_eq!(shared.join.len(), 3);
        let user = spec(r#"{"ociVersion":"1.0.2","linux":{"namespaces":[{"type":"user"}]}}"#);
        assert!(matches!(
            init_namespaces(&user, &[]),
            Err(SpecError::UnsupportedNamespace(_))
        ));
        assert_eq!(shareable_namespace("uts").unwrap(), "uts");
        assert!(shareable_namespace("mnt").is_err());
        assert!(shareable_namespace("../net").is_err());
    }
}
