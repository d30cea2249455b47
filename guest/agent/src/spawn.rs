//! Starting a process inside a container: the agent prepares everything
//! (paths, ids, BPF, argv) before fork so that errors are plain messages,
//! then the child enters the namespaces and cgroup, sets up the rootfs
//! (init process only), drops privileges and execs.
//!
//! The child reports back on a CLOEXEC pipe: `P` + pid when a second fork
//! was needed (entering a PID namespace only affects children), `R` when
//! the init process is set up and waits for StartContainer, `E` + message
//! on failure; EOF means execve succeeded. glibc's fork makes malloc safe
//! in the child of a threaded program, so the child may format messages;
//! it never touches the agent's locks or logging.
//!
//! The plans it carries out are in [`crate::plan`]; this module does not
//! know the OCI spec they were made from ([`crate::spec`]).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::stat::{fchmodat, mknod, FchmodatFlags, Mode};
use nix::unistd::{ForkResult, Gid, Uid};

use crate::plan::{DevicePlan, MountPlan, ProcessSetup, RootfsPlan};
use crate::security;
use crate::stdio::ChildStdio;
use crate::user::ResolvedUser;

/// Errors starting a process.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("create sync pipe: {0}")]
    Pipe(nix::Error),
    #[error("fork: {0}")]
    Fork(nix::Error),
    #[error("{0}")]
    Child(String),
    #[error("read from child: {0}")]
    Sync(std::io::Error),
    #[error("the child exited before it was set up")]
    ChildVanished,
}

/// Everything the child needs, computed before fork.
pub struct SpawnPlan {
    /// What the OCI process asks for (args, env, user, capabilities, ...).
    pub process: ProcessSetup,
    pub seccomp: Vec<seccompiler::BpfProgram>,
    /// Existing namespaces to join (the mount namespace last).
    pub join: Vec<(File, CloneFlags)>,
    /// New namespaces.
    pub unshare: CloneFlags,
    /// The PID namespace changes (new or joined): fork once more.
    pub pid_ns_change: bool,
    /// cgroup.procs of the container's cgroup, opened for writing.
    pub cgroup_procs: Option<File>,
    pub rootfs: Option<RootfsPlan>,
    pub hostname: Option<String>,
    pub stdio: ChildStdio,
    /// Init only: read end that releases the process at StartContainer.
    pub start_gate: Option<File>,
}

/// A child that was set up.
pub struct Spawned {
    pub pid: i32,
    /// Init only: still open until exec; StartContainer reads the outcome.
    pub sync: Option<File>,
}

enum Msg {
    Pid(i32),
    Ready,
    Error(String),
    Eof,
}

fn read_msg(r: &mut File) -> Result<Msg, SpawnError> {
    let mut tag = [0u8; 1];
    match r.read(&mut tag) {
        Ok(0) => return Ok(Msg::Eof),
        Ok(_) => {}
        Err(e) => return Err(SpawnError::Sync(e)),
    }
    match tag[0] {
        b'P' => {
            let mut b = [0u8; 4];
            r.read_exact(&mut b).map_err(SpawnError::Sync)?;
            Ok(Msg::Pid(i32::from_le_bytes(b)))
        }
        b'R' => Ok(Msg::Ready),
        _ => {
            let mut s = String::new();
            r.read_to_string(&mut s).map_err(SpawnError::Sync)?;
            Ok(Msg::Error(s))
        }
    }
}

/// Reads the rest of an init process's report after it was released:
/// EOF = exec succeeded.
pub fn exec_outcome(sync: &mut File) -> Result<(), SpawnError> {
    loop {
        match read_msg(sync)? {
            Msg::Eof => return Ok(()),
            Msg::Error(e) => return Err(SpawnError::Child(e)),
            Msg::Pid(_) | Msg::Ready => {}
        }
    }
}

/// Forks and sets up the process. On error the child has exited (the
/// reaper collects it) and nothing it made outlives its namespaces.
pub fn spawn(plan: SpawnPlan) -> Result<Spawned, SpawnError> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(SpawnError::Pipe)?;
    let mut r = File::from(r);
    let w = File::from(w);
    // SAFETY: the child only runs `child_main` and then execs or _exits;
    // glibc's fork keeps malloc usable and the child takes no agent lock.
    match unsafe { nix::unistd::fork() }.map_err(SpawnError::Fork)? {
        ForkResult::Child => {
            drop(r);
            let mut w = w;
            let err = child_main(&plan, &mut w);
            let mut msg = vec![b'E'];
            msg.extend_from_slice(err.as_bytes());
            let _ = w.write_all(&msg);
            // SAFETY: _exit skips atexit handlers and destructors that
            // belong to the agent.
            unsafe { libc::_exit(127) }
        }
        ForkResult::Parent { child } => {
            drop(w);
            let expect_ready = plan.start_gate.is_some();
            let expect_pid = plan.pid_ns_change;
            drop(plan);
            let mut pid = child.as_raw();
            let mut got_pid = false;
            let mut ready = false;
            loop {
                match read_msg(&mut r)? {
                    Msg::Pid(p) => {
                        pid = p;
                        got_pid = true;
                    }
                    Msg::Ready => ready = true,
                    Msg::Error(e) => return Err(SpawnError::Child(e)),
                    Msg::Eof if expect_ready => return Err(SpawnError::ChildVanished),
                    Msg::Eof => return Ok(Spawned { pid, sync: None }),
                }
                // The pid comes from the first child, `R` from the second:
                // either may arrive first.
                if ready && (got_pid || !expect_pid) {
                    return Ok(Spawned { pid, sync: Some(r) });
                }
            }
        }
    }
}

fn sys<T>(what: impl FnOnce() -> String, r: nix::Result<T>) -> Result<T, String> {
    r.map_err(|e| format!("{}: {}", what(), e.desc()))
}

/// The child's work; returns only on failure, with the message.
fn child_main(plan: &SpawnPlan, sync: &mut File) -> String {
    match child_setup(plan, sync) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

fn child_setup(plan: &SpawnPlan, sync: &mut File) -> Result<std::convert::Infallible, String> {
    for (fd, kind) in &plan.join {
        sys(
            || format!("join {kind:?} namespace"),
            nix::sched::setns(fd, *kind),
        )?;
    }
    sys(
        || "create namespaces".into(),
        nix::sched::unshare(plan.unshare),
    )?;
    if let Some(procs) = &plan.cgroup_procs {
        (&*procs)
            .write_all(b"0")
            .map_err(|e| format!("join cgroup: {e}"))?;
    }
    if plan.pid_ns_change {
        // SAFETY: this child is single-threaded.
        match unsafe { nix::unistd::fork() } {
            Err(e) => return Err(format!("fork into PID namespace: {}", e.desc())),
            Ok(ForkResult::Parent { child }) => {
                let mut msg = vec![b'P'];
                msg.extend_from_slice(&child.as_raw().to_le_bytes());
                let _ = sync.write_all(&msg);
                // SAFETY: see spawn.
                unsafe { libc::_exit(0) }
            }
            Ok(ForkResult::Child) => {}
        }
    }
    if let Some(rootfs) = &plan.rootfs {
        setup_rootfs(rootfs)?;
    }
    if let Some(h) = &plan.hostname {
        sys(|| format!("sethostname {h}"), nix::unistd::sethostname(h))?;
    }
    setup_stdio(&plan.stdio)?;
    if let Some(adj) = plan.process.oom_score_adj {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string())
            .map_err(|e| format!("oom_score_adj: {e}"))?;
    }
    security::apply_rlimits(&plan.process.rlimits).map_err(|e| e.to_string())?;
    if let Some(caps) = &plan.process.caps {
        caps.apply_bounding().map_err(|e| e.to_string())?;
    }
    if !plan.process.no_new_privileges {
        // Without no_new_privs the filter needs CAP_SYS_ADMIN: install it
        // while the process still has it.
        crate::seccomp::install(&plan.seccomp).map_err(|e| e.to_string())?;
    }
    switch_user(&plan.process.user)?;
    if let Some(caps) = &plan.process.caps {
        caps.apply().map_err(|e| e.to_string())?;
    }
    sys(
        || format!("cwd {}", plan.process.cwd.display()),
        nix::unistd::chdir(&plan.process.cwd),
    )?;
    if plan.process.no_new_privileges {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(format!("no_new_privs: {}", std::io::Error::last_os_error()));
        }
    }
    // Every fd of the agent closes at exec; 0-2 are the process's own.
    // SAFETY: close_range only changes fd flags.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    restore_signals();
    if let Some(gate) = &plan.start_gate {
        let _ = sync.write_all(b"R");
        let mut b = [0u8; 1];
        match (&*gate).read(&mut b) {
            Ok(1) => {}
            // The container was removed before it was started.
            // SAFETY: see spawn.
            _ => unsafe { libc::_exit(0) },
        }
    }
    if plan.process.no_new_privileges {
        crate::seccomp::install(&plan.seccomp).map_err(|e| e.to_string())?;
    }
    let mut last = nix::Error::ENOENT;
    for path in &plan.process.exec_candidates {
        let e = nix::unistd::execve(path, &plan.process.args, &plan.process.env).unwrap_err();
        match e {
            nix::Error::ENOENT | nix::Error::ENOTDIR => {}
            nix::Error::EACCES => last = e,
            other => {
                last = other;
                break;
            }
        }
    }
    Err(format!(
        "exec {:?}: {}",
        plan.process
            .args
            .first()
            .map(|a| a.to_string_lossy().into_owned())
            .unwrap_or_default(),
        last.desc()
    ))
}

fn restore_signals() {
    let _ = nix::sys::signal::SigSet::all().thread_unblock();
    // SAFETY: resetting dispositions to the default is always sound.
    unsafe {
        let _ = nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigDfl,
        );
    }
}

fn setup_stdio(stdio: &ChildStdio) -> Result<(), String> {
    let _ = nix::unistd::setsid();
    let fds: [RawFd; 3] = match stdio {
        ChildStdio::Pipes(p) => [p[0].as_raw_fd(), p[1].as_raw_fd(), p[2].as_raw_fd()],
        ChildStdio::Tty(slave) => {
            // SAFETY: TIOCSCTTY takes an integer argument.
            if unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) } < 0 {
                return Err(format!(
                    "set controlling terminal: {}",
                    std::io::Error::last_os_error()
                ));
            }
            let s = slave.as_raw_fd();
            [s, s, s]
        }
    };
    for (target, fd) in fds.into_iter().enumerate() {
        // SAFETY: dup2 onto 0..2; both fds are valid here.
        if unsafe { libc::dup2(fd, target as RawFd) } < 0 {
            return Err(format!("dup2 stdio: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

fn switch_user(u: &ResolvedUser) -> Result<(), String> {
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) };
    let groups: Vec<Gid> = u.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    sys(|| "setgroups".into(), nix::unistd::setgroups(&groups))?;
    let gid = Gid::from_raw(u.gid);
    sys(
        || format!("setgid {}", u.gid),
        nix::unistd::setresgid(gid, gid, gid),
    )?;
    let uid = Uid::from_raw(u.uid);
    sys(
        || format!("setuid {}", u.uid),
        nix::unistd::setresuid(uid, uid, uid),
    )?;
    // SAFETY: as above.
    unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) };
    Ok(())
}

/// Standard devices bind-mounted from the agent's /dev into a container
/// whose /dev is a fresh tmpfs.
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

fn populate_dev(dev: &std::path::Path) -> Result<(), String> {
    for d in DEVICES {
        let target = dev.join(d);
        let _ = File::create(&target);
        sys(
            || format!("bind /dev/{d}"),
            mount(
                Some(&PathBuf::from("/dev").join(d)),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            ),
        )?;
    }
    for (link, to) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        let _ = std::os::unix::fs::symlink(to, dev.join(link));
    }
    Ok(())
}

fn make_device(d: &DevicePlan) -> Result<(), String> {
    let what = || format!("device {}", d.target.display());
    if let Some(parent) = d.target.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", what()))?;
    }
    // Replaces what populate_dev bound there, if the spec names it again.
    let _ = umount2(&d.target, MntFlags::MNT_DETACH);
    let _ = std::fs::remove_file(&d.target);
    sys(
        what,
        mknod(
            &d.target,
            d.kind,
            Mode::from_bits_truncate(d.mode),
            d.number,
        ),
    )?;
    // mknod's mode is cut by the umask; the spec's is the mode to have.
    sys(
        what,
        fchmodat(
            None,
            &d.target,
            Mode::from_bits_truncate(d.mode),
            FchmodatFlags::FollowSymlink,
        ),
    )?;
    sys(
        what,
        nix::unistd::chown(
            &d.target,
            Some(nix::unistd::Uid::from_raw(d.uid)),
            Some(nix::unistd::Gid::from_raw(d.gid)),
        ),
    )
}

fn mount_one(m: &MountPlan) -> Result<(), String> {
    let what = || {
        format!(
            "mount {} on {}",
            m.source
                .as_ref()
                .map(|s| s.display().to_string())
                .unwrap_or_else(|| "none".into()),
            m.destination
        )
    };
    if m.file {
        if let Some(parent) = m.target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", what()))?;
        }
        if !m.target.exists() {
            File::create(&m.target).map_err(|e| format!("{}: {e}", what()))?;
        }
    } else {
        std::fs::create_dir_all(&m.target).map_err(|e| format!("{}: {e}", what()))?;
    }
    let o = &m.options;
    if o.bind {
        let mut flags = MsFlags::MS_BIND;
        if o.recursive {
            flags |= MsFlags::MS_REC;
        }
        sys(
            what,
            mount(
                m.source.as_ref(),
                &m.target,
                None::<&str>,
                flags,
                None::<&str>,
            ),
        )?;
        if !o.flags.is_empty() {
            sys(
                what,
                mount(
                    None::<&str>,
                    &m.target,
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REMOUNT | o.flags,
                    None::<&str>,
                ),
            )?;
        }
    } else {
        sys(
            what,
            mount(
                m.source.as_ref(),
                &m.target,
                m.fstype.as_deref(),
                o.flags,
                o.data_string().as_deref(),
            ),
        )?;
    }
    if !o.propagation.is_empty() {
        sys(
            what,
            mount(
                None::<&str>,
                &m.target,
                None::<&str>,
                o.propagation,
                None::<&str>,
            ),
        )?;
    }
    if o.recursive_readonly {
        recursive_readonly(&m.target).map_err(|e| format!("{} (rro): {e}", what()))?;
    }
    if m.populate_dev {
        populate_dev(&m.target)?;
    }
    Ok(())
}

/// Makes the mount at `target` and all mounts below it read-only.
fn recursive_readonly(target: &std::path::Path) -> std::io::Result<()> {
    /// `struct mount_attr` of linux/mount.h.
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    const MOUNT_ATTR_RDONLY: u64 = 0x1;
    let path = std::ffi::CString::new(target.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: a valid path string and attr struct, both live for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::AT_RECURSIVE | libc::AT_SYMLINK_NOFOLLOW,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Makes the current directory the root. pivot_root(2) refuses when the
/// old root is the initramfs (rootfs can never be unmounted), which is what
/// the agent runs from in the guest; then the container root is moved over
/// `/` and chrooted into, as runc's `--no-pivot` does. The VM, not the
/// mount tree, is the isolation boundary between the pod and the host.
fn switch_root() -> Result<(), String> {
    match nix::unistd::pivot_root(".", ".") {
        Ok(()) => sys(
            || "detach old root".into(),
            umount2(".", MntFlags::MNT_DETACH),
        ),
        Err(nix::errno::Errno::EINVAL) => {
            sys(
                || "move rootfs over /".into(),
                mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>),
            )?;
            sys(|| "chroot".into(), nix::unistd::chroot("."))
        }
        Err(e) => Err(format!("pivot_root: {}", e.desc())),
    }
}

fn setup_rootfs(p: &RootfsPlan) -> Result<(), String> {
    sys(
        || "set the propagation of /".into(),
        mount(None::<&str>, "/", None::<&str>, p.propagation, None::<&str>),
    )?;
    sys(
        || format!("bind rootfs {}", p.rootfs.display()),
        mount(
            Some(&p.rootfs),
            &p.rootfs,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        ),
    )?;
    for m in &p.mounts {
        mount_one(m)?;
    }
    for d in &p.devices {
        make_device(d)?;
    }
    sys(|| "chdir rootfs".into(), nix::unistd::chdir(&p.rootfs))?;
    switch_root()?;
    sys(|| "chdir /".into(), nix::unistd::chdir("/"))?;
    if let Some(flags) = p.root_propagation {
        sys(
            || "make / shared".into(),
            mount(None::<&str>, "/", None::<&str>, flags, None::<&str>),
        )?;
    }
    for (path, value) in &p.sysctl {
        std::fs::write(path, value).map_err(|e| format!("sysctl {}: {e}", path.display()))?;
    }
    for path in &p.masked_paths {
        let r = if path.is_dir() {
            mount(
                Some("tmpfs"),
                path,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                None::<&str>,
            )
        } else if path.exists() {
            mount(
                Some("/dev/null"),
                path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
        } else {
            Ok(())
        };
        sys(|| format!("mask {}", path.display()), r)?;
    }
    for path in p.readonly_paths.iter().filter(|p| p.exists()) {
        let what = || format!("read-only {}", path.display());
        sys(
            what,
            mount(
                Some(path),
                path,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            ),
        )?;
        sys(
            what,
            mount(
                None::<&str>,
                path,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            ),
        )?;
    }
    if p.readonly {
        sys(
            || "remount / read-only".into(),
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            ),
        )?;
    }
    Ok(())
}
