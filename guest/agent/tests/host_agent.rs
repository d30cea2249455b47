//! Runs skiff-agent on the host, as root, in private mount/PID/UTS/IPC/net
//! namespaces (`unshare`), listening on a Unix socket, and drives every
//! RPC through the real ttrpc client. Container rootfs: a directory with
//! Debian's busybox-static. cgroups: a fresh directory in the host's
//! cgroup v2 hierarchy; checks that need a controller the host does not
//! offer in v2 (memory, pids) say so and check the error path instead.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use skiff_agent_protocol::agent::*;
use skiff_agent_protocol::agent_ttrpc::AgentServiceClient;
use ttrpc::context;

const BUSYBOX: &str = "/bin/busybox";

fn ctx() -> context::Context {
    context::with_timeout(Duration::from_secs(30).as_nanos() as i64)
}

/// Why this host cannot run the tests, if it cannot.
fn unsupported() -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("not root".into());
    }
    let out = Command::new("readelf").args(["-l", BUSYBOX]).output();
    if !Path::new(BUSYBOX).exists()
        || matches!(&out, Ok(o) if String::from_utf8_lossy(&o.stdout).contains("INTERP"))
    {
        return Some(format!(
            "{BUSYBOX} is missing or not static: apt-get install busybox-static"
        ));
    }
    None
}

fn cgroup2_mount() -> PathBuf {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for l in mi.lines() {
        let (pre, post) = l.split_once(" - ").unwrap();
        if post.starts_with("cgroup2 ") {
            return PathBuf::from(pre.split_whitespace().nth(4).unwrap());
        }
    }
    panic!("no cgroup2 mount on this host");
}

struct Agent {
    child: Child,
    client: AgentServiceClient,
    dir: PathBuf,
    cgroup: PathBuf,
    rootfs: PathBuf,
    log: PathBuf,
}

impl Agent {
    fn launch(name: &str) -> Agent {
        let dir = PathBuf::from(format!(
            "/tmp/skiff-agent-test-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let rootfs = dir.join("rootfs");
        for d in ["bin", "etc", "proc", "sys", "dev", "tmp", "root"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        std::fs::copy(BUSYBOX, rootfs.join("bin/busybox")).unwrap();
        for applet in [
            "sh", "cat", "echo", "sleep", "id", "hostname", "stty", "head", "tr", "mkdir", "ls",
            "true",
        ] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        std::fs::write(
            rootfs.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(rootfs.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
        let cgroup =
            cgroup2_mount().join(format!("skiff-agent-test-{}-{name}", std::process::id()));
        let _ = std::fs::create_dir(&cgroup);
        let sock = dir.join("agent.sock");
        let log = dir.join("agent.log");
        let child = Command::new("unshare")
            .args([
                "--mount",
                "--uts",
                "--ipc",
                "--net",
                "--pid",
                "--fork",
                "--kill-child",
                "--mount-proc",
                "--propagation",
                "private",
            ])
            .arg(env!("CARGO_BIN_EXE_skiff-agent"))
            .arg("--listen")
            .arg(format!("unix:{}", sock.display()))
            .arg("--cgroup-root")
            .arg(&cgroup)
            .arg("--log-level")
            .arg("debug")
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = loop {
            if sock.exists() {
                if let Ok(c) = ttrpc::Client::connect(&format!("unix://{}", sock.display())) {
                    break AgentServiceClient::new(c);
                }
            }
            assert!(
                Instant::now() < deadline,
                "agent did not listen: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        Agent {
            child,
            client,
            dir,
            cgroup,
            rootfs,
            log,
        }
    }

    /// The agent's pid on the host (unshare's only child).
    fn agent_pid(&self) -> i32 {
        self.try_agent_pid().expect("agent process")
    }

    fn try_agent_pid(&self) -> Option<i32> {
        let p = self.child.id();
        let c = std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")).ok()?;
        c.split_whitespace().next()?.parse().ok()
    }

    fn agent_mounts(&self) -> String {
        std::fs::read_to_string(format!("/proc/{}/mountinfo", self.agent_pid())).unwrap()
    }

    fn agent_children(&self) -> Vec<String> {
        let pid = self.agent_pid();
        let mut out = Vec::new();
        for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
            let t = t.unwrap().path();
            out.extend(
                std::fs::read_to_string(t.join("children"))
                    .unwrap_or_default()
                    .split_whitespace()
                    .map(str::to_string),
            );
        }
        out
    }

    fn cgroup_children(&self) -> Vec<String> {
        let mut out = Vec::new();
        for e in walk(&self.cgroup) {
            out.push(e.display().to_string());
        }
        out
    }

    /// A spec for `args` in the test rootfs, reached through a bind storage.
    fn spec(&self, id: &str, args: &[&str]) -> (Value, Vec<Storage>) {
        let mount_point = self.dir.join("storage").join(id);
        let mut st = Storage::new();
        st.driver = StorageDriver::STORAGE_DRIVER_BIND.into();
        st.source = self.rootfs.display().to_string();
        st.mount_point = mount_point.display().to_string();
        let caps = json!([
            "CAP_CHOWN",
            "CAP_DAC_OVERRIDE",
            "CAP_FOWNER",
            "CAP_KILL",
            "CAP_SETGID",
            "CAP_SETUID",
            "CAP_NET_BIND_SERVICE",
            "CAP_SYS_CHROOT"
        ]);
        let spec = json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": {"uid": 0, "gid": 0},
                "args": args,
                "env": ["PATH=/bin", "HOME=/root"],
                "cwd": "/",
                "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
                "noNewPrivileges": true
            },
            "root": {"path": mount_point},
            "hostname": id,
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
                {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]}
            ],
            "linux": {
                "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
                "maskedPaths": ["/proc/kcore"],
                "readonlyPaths": ["/proc/sys"],
                "seccomp": {
                    "defaultAction": "SCMP_ACT_ALLOW",
                    "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]
                }
            }
        });
        (spec, vec![st])
    }

    fn create(&self, id: &str, spec: &Value, storages: Vec<Storage>) -> ttrpc::Result<Empty> {
        let mut req = CreateContainerRequest::new();
        req.container_id = id.into();
        req.oci_spec_json = serde_json::to_vec(spec).unwrap();
        req.storages = storages;
        self.client.create_container(ctx(), &req)
    }

    fn run(&self, id: &str, args: &[&str]) {
        let (spec, st) = self.spec(id, args);
        self.create(id, &spec, st).unwrap();
        self.start(id);
    }

    fn start(&self, id: &str) {
        let mut req = ContainerRequest::new();
        req.container_id = id.into();
        self.client.start_container(ctx(), &req).unwrap();
    }

    fn exec(&self, id: &str, exec_id: &str, process: Value) -> ttrpc::Result<Empty> {
        let mut req = ExecProcessRequest::new();
        req.container_id = id.into();
        req.exec_id = exec_id.into();
        req.oci_process_json = serde_json::to_vec(&process).unwrap();
        self.client.exec_process(ctx(), &req)
    }

    fn wait(&self, id: &str, exec_id: &str) -> i32 {
        let mut req = ProcessRequest::new();
        req.container_id = id.into();
        req.exec_id = exec_id.into();
        self.client.wait_process(ctx(), &req).unwrap().exit_status
    }

    fn read_all(&self, id: &str, exec_id: &str, stderr: bool) -> String {
        let mut out = Vec::new();
        loop {
            let mut req = ReadStreamRequest::new();
            req.container_id = id.into();
            req.exec_id = exec_id.into();
            req.max_bytes = 4096;
            let r = if stderr {
                self.client.read_stderr(ctx(), &req)
            } else {
                self.client.read_stdout(ctx(), &req)
            }
            .unwrap();
            if r.data.is_empty() {
                return String::from_utf8_lossy(&out).into_owned();
            }
            out.extend(r.data);
        }
    }

    fn write(&self, id: &str, exec_id: &str, data: &[u8]) {
        let mut req = WriteStreamRequest::new();
        req.container_id = id.into();
        req.exec_id = exec_id.into();
        req.data = data.to_vec();
        assert_eq!(
            self.client.write_stdin(ctx(), &req).unwrap().written as usize,
            data.len()
        );
    }

    fn signal(&self, id: &str, exec_id: &str, sig: u32) -> ttrpc::Result<Empty> {
        let mut req = SignalProcessRequest::new();
        req.container_id = id.into();
        req.exec_id = exec_id.into();
        req.signal = sig;
        self.client.signal_process(ctx(), &req)
    }

    fn remove(&self, id: &str) {
        let mut req = RemoveContainerRequest::new();
        req.container_id = id.into();
        self.client.remove_container(ctx(), &req).unwrap();
    }

    fn req(id: &str) -> ContainerRequest {
        let mut r = ContainerRequest::new();
        r.container_id = id.into();
        r
    }

    /// Nothing of any container is left: no cgroup, no storage mount, no process.
    fn assert_clean(&self) {
        assert_eq!(
            self.cgroup_children(),
            Vec::<String>::new(),
            "cgroups left behind"
        );
        let storage = self.dir.join("storage").display().to_string();
        assert!(
            !self.agent_mounts().contains(&storage),
            "mount left behind:\n{}",
            self.agent_mounts()
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.agent_children().is_empty() {
            assert!(
                Instant::now() < deadline,
                "processes left behind: {:?}",
                self.agent_children()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            out.push(e.path());
            out.extend(walk(&e.path()));
        }
    }
    out
}

impl Drop for Agent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "agent log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        // Kill the agent itself (PID 1 of its namespace: everything in the
        // namespace dies with it) so that unshare reaps it, then unshare.
        if let Some(pid) = self.try_agent_pid() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.child.wait();
        // Remove what is left on the host; killed processes may take a
        // moment to leave their cgroups.
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.cgroup.exists() && Instant::now() < deadline {
            for d in walk(&self.cgroup).iter().rev() {
                let _ = std::fs::remove_dir(d);
            }
            let _ = std::fs::remove_dir(&self.cgroup);
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn process(args: &[&str], terminal: bool) -> Value {
    json!({"terminal": terminal, "user": {"uid": 0, "gid": 0}, "args": args, "env": ["PATH=/bin"], "cwd": "/"})
}

macro_rules! require_host {
    () => {
        if let Some(why) = unsupported() {
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
}

fn err_msg(r: ttrpc::Result<impl std::fmt::Debug>) -> (ttrpc::Code, String) {
    match r {
        Err(ttrpc::Error::RpcStatus(s)) => (s.code(), s.message().to_string()),
        other => panic!("expected an error status, got {other:?}"),
    }
}

#[test]
fn create_start_io_wait_and_remove() {
    require_host!();
    let a = Agent::launch("io");
    let (spec, st) = a.spec("c1", &["sh", "-c", "read line; echo got:$line; echo oops >&2; hostname; mkdir /tmp/x || echo denied; exit 3"]);
    a.create("c1", &spec, st).unwrap();
    // Created, not running: its cgroup exists and holds the waiting init.
    assert_eq!(a.cgroup_children().len(), 2, "skiff/ and skiff/c1");
    a.start("c1");
    a.write("c1", "", b"hello\n");
    let mut close = ProcessRequest::new();
    close.container_id = "c1".into();
    a.client.close_stdin(ctx(), &close).unwrap();
    let out = a.read_all("c1", "", false);
    assert_eq!(
        out, "got:hello\nc1\ndenied\n",
        "stdout (hostname from the spec, mkdir refused by seccomp)"
    );
    // errnoRet 13 from the spec's seccomp profile: EACCES, not EPERM.
    assert_eq!(
        a.read_all("c1", "", true),
        "oops\nmkdir: can't create directory '/tmp/x': Permission denied\n"
    );
    assert_eq!(a.wait("c1", ""), 3);
    // Wait can be asked again.
    assert_eq!(a.wait("c1", ""), 3);
    a.remove("c1");

    // linux.devices: nodes in the container's /dev tmpfs, with the spec's
    // mode and owner (here the null device under another name).
    let (mut spec, st) = a.spec(
        "dev",
        &[
            "sh",
            "-c",
            "ls -ln /dev/sub/mynull; echo x > /dev/sub/mynull && echo wrote",
        ],
    );
    spec["linux"]["devices"] = json!([
        {"path": "/dev/sub/mynull", "type": "c", "major": 1, "minor": 3, "fileMode": 0o640, "uid": 7, "gid": 0}
    ]);
    a.create("dev", &spec, st).unwrap();
    a.start("dev");
    let out = a.read_all("dev", "", false);
    let ls: Vec<&str> = out
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(ls.first(), Some(&"crw-r-----"), "{out}");
    assert_eq!(ls.get(2), Some(&"7"), "owner: {out}");
    assert!(out.ends_with("wrote\n"), "{out}");
    assert_eq!(a.wait("dev", ""), 0);
    a.remove("dev");

    // linux.sysctl with /proc/sys read-only (containerd 2.x's CRI sends
    // these two in every pod): written before the read-only paths, so they
    // take, and /proc/sys is read-only for the process afterwards. In a
    // network namespace of its own, so the host's values are not touched.
    let (mut spec, st) = a.spec(
        "sysctl",
        &[
            "sh",
            "-c",
            "cat /proc/sys/net/ipv4/ping_group_range /proc/sys/net/ipv4/ip_unprivileged_port_start; \
             echo 1 2>/dev/null >/proc/sys/net/ipv4/ip_unprivileged_port_start || echo read-only",
        ],
    );
    spec["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "network"}));
    spec["linux"]["sysctl"] = json!({
        "net.ipv4.ping_group_range": "0 2147483647",
        "net.ipv4.ip_unprivileged_port_start": "0"
    });
    assert_eq!(spec["linux"]["readonlyPaths"], json!(["/proc/sys"]));
    a.create("sysctl", &spec, st).unwrap();
    a.start("sysctl");
    let out = a.read_all("sysctl", "", false);
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["0", "2147483647", "0", "read-only"],
        "{out}"
    );
    assert_eq!(a.wait("sysctl", ""), 0);
    a.remove("sysctl");
    // A sysctl name that climbs out of /proc/sys is refused at create.
    let (mut spec, st) = a.spec("badsysctl", &["true"]);
    spec["linux"]["sysctl"] = json!({"net/../../../etc/hostname": "x"});
    let (code, msg) = err_msg(a.create("badsysctl", &spec, st));
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{msg}");
    assert!(msg.contains("not a sysctl name"), "{msg}");

    // "rro": the bind and the mount below it are both read-only (a plain
    // "ro" bind leaves submounts writable).
    let src = a.dir.join("rro-src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    // Mounted in the agent's mount namespace, where the container's
    // bind is made.
    let sub = src.join("sub");
    let out = Command::new("nsenter")
        .args([
            "-t",
            &a.agent_pid().to_string(),
            "-m",
            "mount",
            "-t",
            "tmpfs",
            "-o",
            "size=1m",
            "tmpfs",
        ])
        .arg(&sub)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let (mut spec, st) = a.spec(
        "rro",
        &[
            "sh",
            "-c",
            "for f in /mnt/top /mnt/sub/below; do touch $f 2>/dev/null && echo writable || echo read-only; done",
        ],
    );
    spec["mounts"].as_array_mut().unwrap().push(
        json!({"destination": "/mnt", "type": "bind", "source": src, "options": ["rbind", "rro"]}),
    );
    a.create("rro", &spec, st).unwrap();
    a.start("rro");
    assert_eq!(a.read_all("rro", "", false), "read-only\nread-only\n");
    assert_eq!(a.wait("rro", ""), 0);
    a.remove("rro");
    let out = Command::new("nsenter")
        .args(["-t", &a.agent_pid().to_string(), "-m", "umount"])
        .arg(&sub)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    a.assert_clean();
}

#[test]
fn exec_signal_and_namespaces() {
    require_host!();
    let a = Agent::launch("exec");
    a.run("c2", &["sleep", "1000"]);
    a.exec(
        "c2",
        "e1",
        process(
            &[
                "sh",
                "-c",
                "echo pid=$$; id -u; hostname; cat /proc/1/cmdline | tr '\\0' ' '",
            ],
            false,
        ),
    )
    .unwrap();
    let out = a.read_all("c2", "e1", false);
    assert_eq!(a.wait("c2", "e1"), 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_ne!(
        lines[0], "pid=1",
        "exec joins the container's PID namespace, not as its init"
    );
    assert_eq!(&lines[1..], ["0", "c2", "sleep 1000 "], "{out}");
    // A user from the rootfs' /etc/passwd.
    let mut p = process(&["id"], false);
    p["user"] = json!({"uid": 0, "gid": 0, "username": "nobody"});
    a.exec("c2", "e2", p).unwrap();
    assert_eq!(
        a.read_all("c2", "e2", false).trim(),
        "uid=65534(nobody) gid=65534(nogroup)"
    );
    assert_eq!(a.wait("c2", "e2"), 0);
    // Exec id reuse is refused.
    let (code, msg) = err_msg(a.exec("c2", "e1", process(&["true"], false)));
    assert_eq!(code, ttrpc::Code::ALREADY_EXISTS, "{msg}");
    // A long-running exec killed by a signal: 128 + 9.
    a.exec("c2", "e3", process(&["sleep", "1000"], false))
        .unwrap();
    a.signal("c2", "e3", 9).unwrap();
    assert_eq!(a.wait("c2", "e3"), 137);
    // Signalling a process that has exited is NOT_FOUND, as runc's "process
    // already finished" is to containerd: CRI then treats the stop as done.
    let (code, msg) = err_msg(a.signal("c2", "e3", 15));
    assert_eq!(code, ttrpc::Code::NOT_FOUND, "{msg}");
    assert!(msg.contains("has already exited"), "{msg}");
    a.signal("c2", "", 9).unwrap();
    assert_eq!(a.wait("c2", ""), 137);
    a.remove("c2");
    a.assert_clean();
}

#[test]
fn tty_and_resize() {
    require_host!();
    let a = Agent::launch("tty");
    let (mut spec, st) = a.spec("t1", &["sh", "-c", "stty size; read x; echo x=$x"]);
    spec["process"]["terminal"] = json!(true);
    a.create("t1", &spec, st).unwrap();
    let mut rs = TtyWinResizeRequest::new();
    rs.container_id = "t1".into();
    rs.rows = 33;
    rs.columns = 77;
    a.client.tty_win_resize(ctx(), &rs).unwrap();
    a.start("t1");
    a.write("t1", "", b"abc\n");
    let out = a.read_all("t1", "", false);
    assert!(out.contains("33 77"), "{out:?}");
    assert!(out.contains("x=abc"), "{out:?}");
    assert_eq!(a.wait("t1", ""), 0);
    // A pipe process has no terminal to resize.
    a.run("t2", &["sleep", "1000"]);
    a.exec("t2", "e", process(&["sleep", "1000"], false))
        .unwrap();
    rs.container_id = "t2".into();
    rs.exec_id = "e".into();
    let (_, msg) = err_msg(a.client.tty_win_resize(ctx(), &rs));
    assert!(msg.contains("no terminal"), "{msg}");
    a.remove("t1");
    a.remove("t2");
    a.assert_clean();
}

#[test]
fn pause_resume_stats_update() {
    require_host!();
    let a = Agent::launch("cg");
    a.run("p1", &["sh", "-c", "while true; do :; done"]);
    let cg = a.cgroup.join("skiff/p1");
    a.client.pause_container(ctx(), &Agent::req("p1")).unwrap();
    assert_eq!(
        std::fs::read_to_string(cg.join("cgroup.freeze"))
            .unwrap()
            .trim(),
        "1"
    );
    assert!(std::fs::read_to_string(cg.join("cgroup.events"))
        .unwrap()
        .contains("frozen 1"));
    let (code, _) = err_msg(a.client.pause_container(ctx(), &Agent::req("p1")));
    assert_eq!(code, ttrpc::Code::FAILED_PRECONDITION);
    a.client.resume_container(ctx(), &Agent::req("p1")).unwrap();
    assert!(std::fs::read_to_string(cg.join("cgroup.events"))
        .unwrap()
        .contains("frozen 0"));
    std::thread::sleep(Duration::from_millis(200));
    let stats = a.client.stats_container(ctx(), &Agent::req("p1")).unwrap();
    assert!(stats.cpu.usage_usec > 0, "{stats:?}");
    assert_eq!(stats.pids.current, 1, "{stats:?}");
    let controllers = std::fs::read_to_string(a.cgroup.join("cgroup.subtree_control")).unwrap();
    let mut up = UpdateContainerRequest::new();
    up.container_id = "p1".into();
    up.oci_resources_json = br#"{"pids":{"limit":50}}"#.to_vec();
    if controllers.contains("pids") {
        a.client.update_container(ctx(), &up).unwrap();
        assert_eq!(
            std::fs::read_to_string(cg.join("pids.max")).unwrap().trim(),
            "50"
        );
    } else {
        eprintln!("NOTE: this host's cgroup v2 has no pids controller ({controllers:?}): checking the error");
        let (code, msg) = err_msg(a.client.update_container(ctx(), &up));
        assert_eq!(code, ttrpc::Code::FAILED_PRECONDITION);
        assert!(
            msg.contains("controller \"pids\" is not available"),
            "{msg}"
        );
    }
    up.oci_resources_json = b"{not json".to_vec();
    let (code, _) = err_msg(a.client.update_container(ctx(), &up));
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT);
    a.remove("p1");
    a.assert_clean();
}

#[test]
fn oom_event() {
    require_host!();
    let a = Agent::launch("oom");
    let controllers = std::fs::read_to_string(a.cgroup.join("cgroup.subtree_control")).unwrap();
    if !controllers.contains("memory") {
        eprintln!("SKIPPED: this host's cgroup v2 has no memory controller ({controllers:?}); the OOM watcher has a unit test");
        return;
    }
    let (mut spec, st) = a.spec(
        "m1",
        &[
            "sh",
            "-c",
            "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived",
        ],
    );
    spec["linux"]["resources"] =
        json!({"memory": {"limit": 16 * 1024 * 1024, "swap": 16 * 1024 * 1024}});
    a.create("m1", &spec, st).unwrap();
    let client = a.client.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(client.get_oom_event(ctx(), &Empty::new()));
    });
    a.start("m1");
    let ev = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("no OOM event")
        .unwrap();
    assert_eq!(ev.container_id, "m1");
    a.wait("m1", "");
    a.remove("m1");
    a.assert_clean();
}

#[test]
fn bad_input_is_refused_and_leaves_nothing() {
    require_host!();
    let a = Agent::launch("bad");
    // No rootfs.
    let (mut spec, st) = a.spec("b1", &["true"]);
    spec.as_object_mut().unwrap().remove("root");
    let (code, msg) = err_msg(a.create("b1", &spec, st));
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT);
    assert!(msg.contains("no root"), "{msg}");
    a.assert_clean();
    // A bind mount of a missing source.
    let (mut spec, st) = a.spec("b2", &["true"]);
    spec["mounts"].as_array_mut().unwrap().push(json!({"destination": "/data", "type": "bind", "source": "/nonexistent/skiff", "options": ["rbind"]}));
    let (code, msg) = err_msg(a.create("b2", &spec, st));
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT);
    assert_eq!(
        msg,
        "mount source /nonexistent/skiff for /data does not exist"
    );
    a.assert_clean();
    // An unknown user.
    let (mut spec, st) = a.spec("b3", &["true"]);
    spec["process"]["user"] = json!({"uid": 0, "gid": 0, "username": "ghost"});
    let (_, msg) = err_msg(a.create("b3", &spec, st));
    assert_eq!(
        msg,
        "user \"ghost\" not found in the container's /etc/passwd"
    );
    a.assert_clean();
    // A binary that does not exist: the failure shows at start.
    let (spec, st) = a.spec("b4", &["/bin/nope"]);
    a.create("b4", &spec, st).unwrap();
    let (_, msg) = err_msg(a.client.start_container(ctx(), &Agent::req("b4")));
    assert_eq!(
        msg,
        "start process: exec \"/bin/nope\": No such file or directory"
    );
    a.remove("b4");
    a.assert_clean();
    // Exec into a container that does not exist.
    let (code, msg) = err_msg(a.exec("ghost", "e", process(&["true"], false)));
    assert_eq!(code, ttrpc::Code::NOT_FOUND);
    assert_eq!(msg, "container \"ghost\" not found");
    // Ids that would name other paths, duplicate ids, bad JSON.
    let (spec, st) = a.spec("../x", &["true"]);
    let (code, _) = err_msg(a.create("../x", &spec, st));
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT);
    let mut req = CreateContainerRequest::new();
    req.container_id = "j".into();
    req.oci_spec_json = b"{".to_vec();
    let (_, msg) = err_msg(a.client.create_container(ctx(), &req));
    assert!(msg.starts_with("invalid OCI runtime spec JSON"), "{msg}");
    a.run("dup", &["sleep", "1000"]);
    let (spec, st) = a.spec("dup", &["true"]);
    let (code, _) = err_msg(a.create("dup", &spec, st));
    assert_eq!(code, ttrpc::Code::ALREADY_EXISTS);
    a.remove("dup");
    a.assert_clean();
}

#[test]
fn sandbox_and_guest_calls() {
    require_host!();
    let mut a = Agent::launch("sandbox");
    let c = &a.client;
    assert_eq!(
        c.check(ctx(), &CheckRequest::new())
            .unwrap()
            .status
            .enum_value(),
        Ok(health_check_response::ServingStatus::SERVING)
    );
    assert_eq!(
        c.version(ctx(), &CheckRequest::new())
            .unwrap()
            .protocol_version,
        skiff_agent_protocol::PROTOCOL_VERSION
    );
    let d = c.get_guest_details(ctx(), &Empty::new()).unwrap();
    assert!(d.online_cpus >= 1 && d.memory_total_bytes > 0, "{d:?}");
    let mut sb = CreateSandboxRequest::new();
    sb.sandbox_id = "pod".into();
    sb.hostname = "skiff-pod".into();
    sb.dns = vec!["nameserver 10.0.0.2".into()];
    sb.sandbox_pidns = true;
    c.create_sandbox(ctx(), &sb).unwrap();
    let (code, _) = err_msg(c.create_sandbox(ctx(), &sb));
    assert_eq!(code, ttrpc::Code::ALREADY_EXISTS);
    assert_eq!(
        std::fs::read_to_string("/run/skiff/resolv.conf").unwrap(),
        "nameserver 10.0.0.2\n"
    );
    // Two containers share the sandbox PID namespace: each sees the other.
    a.run("s1", &["sleep", "1000"]);
    a.run("s2", &["sleep", "2000"]);
    a.exec(
        "s2",
        "ps",
        process(
            &["sh", "-c", "cat /proc/[0-9]*/cmdline | tr '\\0' ' '"],
            false,
        ),
    )
    .unwrap();
    let out = a.read_all("s2", "ps", false);
    assert!(
        out.contains("sleep 1000") && out.contains("sleep 2000"),
        "{out}"
    );
    let ifs = c.list_interfaces(ctx(), &Empty::new()).unwrap();
    assert!(ifs.interfaces.iter().any(|i| i.name == "lo"), "{ifs:?}");
    c.list_routes(ctx(), &Empty::new()).unwrap();
    // Naming no device, UpdateRoutes changes nothing (network_updates
    // changes things, on its own devices).
    c.update_routes(ctx(), &Routes::new()).unwrap();
    // Hotplug binds guest platform devices: never on a host.
    let mut slot = DeviceRequest::new();
    slot.mmio_slot = 2;
    for result in [
        c.add_device(ctx(), &slot).map(drop),
        c.remove_device(ctx(), &slot).map(drop),
    ] {
        let (code, msg) = err_msg(result);
        assert_eq!(code, ttrpc::Code::FAILED_PRECONDITION, "{msg}");
        assert_eq!(msg, "device hotplug is served only in a VM");
    }
    // CopyFile in two chunks.
    let path = format!("/run/skiff/test-{}/hosts", std::process::id());
    for (off, chunk) in [(0u64, &b"127.0.0.1 "[..]), (10, &b"localhost\n"[..])] {
        let mut cf = CopyFileRequest::new();
        cf.path = path.clone();
        cf.file_size = 20;
        cf.file_mode = 0o644;
        cf.offset = off;
        cf.data = chunk.to_vec();
        c.copy_file(ctx(), &cf).unwrap();
    }
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "127.0.0.1 localhost\n"
    );
    let _ = std::fs::remove_dir_all(Path::new(&path).parent().unwrap());
    let mut cf = CopyFileRequest::new();
    cf.path = "/etc/passwd".into();
    let (code, _) = err_msg(c.copy_file(ctx(), &cf));
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT);
    // DestroySandbox removes everything and ends the agent.
    c.destroy_sandbox(ctx(), &Empty::new()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = a.child.try_wait().unwrap() {
            assert!(status.success(), "{status:?}");
            break;
        }
        assert!(Instant::now() < deadline, "agent did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(a.cgroup_children(), Vec::<String>::new());
    let _ = std::fs::remove_file("/run/skiff/resolv.conf");
}

fn ip_address(a: &str, len: u32) -> IpAddress {
    let mut i = IpAddress::new();
    i.address = a.into();
    i.prefix_length = len;
    i
}

fn route(dst: &str, gw: &str, dev: &str) -> Route {
    let mut r = Route::new();
    r.destination = dst.into();
    r.gateway = gw.into();
    r.device = dev.into();
    r
}

/// The routes of `devs`, as "dst[ via gw] dev d" lines, sorted.
fn route_lines(routes: &[Route], devs: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = routes
        .iter()
        .filter(|r| devs.contains(&r.device.as_str()))
        .map(|r| {
            let via = if r.gateway.is_empty() {
                String::new()
            } else {
                format!(" via {}", r.gateway)
            };
            format!("{}{via} dev {}", r.destination, r.device)
        })
        .collect();
    v.sort();
    v
}

/// `i` without its IPv6 addresses.
fn ipv4_only(i: &Interface) -> Interface {
    let mut i = i.clone();
    i.addresses.retain(|a| !a.address.contains(':'));
    i
}

fn addr_lines(i: &Interface) -> Vec<String> {
    i.addresses
        .iter()
        .filter(|a| !a.address.contains(':'))
        .map(|a| format!("{}/{}", a.address, a.prefix_length))
        .collect()
}

#[test]
fn network_updates() {
    require_host!();
    if Command::new("ip").arg("-V").output().is_err() {
        eprintln!("SKIPPED: no ip command: apt-get install iproute2");
        return;
    }
    // The agent's private network namespace gets a veth pair: vguest
    // stands in for the guest's virtio-net device, vpeer for another one.
    let a = Agent::launch("net");
    let pid = a.agent_pid().to_string();
    let ip = |args: &str| {
        let out = Command::new("nsenter")
            .args(["-t", &pid, "-n", "ip"])
            .args(args.split_whitespace())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip {args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ip("link add vguest address 02:00:00:aa:bb:01 type veth peer name vpeer");
    ip("addr add 10.92.0.1/24 dev vpeer");
    ip("link set vpeer up");
    let c = &a.client;

    // Found by hardware address (any case) when the name is not there.
    let mut req = Interface::new();
    req.name = "eth0".into();
    req.hardware_address = "02:00:00:AA:BB:01".into();
    req.mtu = 1400;
    req.addresses = vec![ip_address("10.88.0.5", 16), ip_address("10.89.0.5/24", 0)];
    req.up = true;
    let got = c.update_interface(ctx(), &req).unwrap();
    assert_eq!(got.name, "vguest");
    assert_eq!(got.hardware_address, "02:00:00:aa:bb:01");
    assert_eq!((got.mtu, got.up), (1400, true));
    assert_eq!(addr_lines(&got), ["10.88.0.5/16", "10.89.0.5/24"]);
    // The kernel adds an IPv6 link-local address on its own once the
    // link has carrier, which may land between the two calls: compare
    // the IPv4 view.
    let listed = c.list_interfaces(ctx(), &Empty::new()).unwrap();
    assert_eq!(
        listed
            .interfaces
            .iter()
            .find(|i| i.name == "vguest")
            .map(ipv4_only),
        Some(ipv4_only(&got))
    );
    // By name; the addresses are replaced, a zero MTU leaves it.
    req.name = "vguest".into();
    req.hardware_address.clear();
    req.mtu = 0;
    req.addresses = vec![ip_address("10.88.0.5", 16), ip_address("10.90.0.5", 24)];
    let got = c.update_interface(ctx(), &req).unwrap();
    assert_eq!(got.mtu, 1400);
    assert_eq!(addr_lines(&got), ["10.88.0.5/16", "10.90.0.5/24"]);

    // Routes: a stale one goes, a link-local one and another device's stay.
    ip("route add 10.91.0.0/24 dev vguest");
    ip("route add 169.254.1.1 dev vguest");
    ip("route add 10.93.0.0/24 dev vpeer");
    let mut rr = Routes::new();
    rr.routes = vec![
        route("default", "10.94.0.1", "vguest"),
        route("10.95.0.0/16", "10.90.0.254", "vguest"),
        route("10.94.0.0/24", "", "vguest"),
    ];
    let expected = [
        "10.88.0.0/16 dev vguest",
        "10.90.0.0/24 dev vguest",
        "10.92.0.0/24 dev vpeer",
        "10.93.0.0/24 dev vpeer",
        "10.94.0.0/24 dev vguest",
        "10.95.0.0/16 via 10.90.0.254 dev vguest",
        "169.254.1.1/32 dev vguest",
        "default via 10.94.0.1 dev vguest",
    ];
    let got = c.update_routes(ctx(), &rr).unwrap();
    assert_eq!(route_lines(&got.routes, &["vguest", "vpeer"]), expected);
    let listed = c.list_routes(ctx(), &Empty::new()).unwrap();
    assert_eq!(listed, got);
    // Again: the same table.
    let again = c.update_routes(ctx(), &rr).unwrap();
    assert_eq!(route_lines(&again.routes, &["vguest", "vpeer"]), expected);

    // Bad input, each error naming what it is about.
    let bad_if = |f: &dyn Fn(&mut Interface)| {
        let mut r = req.clone();
        f(&mut r);
        err_msg(c.update_interface(ctx(), &r))
    };
    let (code, msg) = bad_if(&|r| r.name = "nope0".into());
    assert_eq!(code, ttrpc::Code::NOT_FOUND, "{msg}");
    assert_eq!(msg, "interface \"nope0\" not found");
    let (code, msg) = bad_if(&|r| {
        r.name.clear();
        r.hardware_address = "02:00:00:00:00:99".into();
    });
    assert_eq!(code, ttrpc::Code::NOT_FOUND, "{msg}");
    assert!(msg.contains("02:00:00:00:00:99"), "{msg}");
    let (code, msg) = bad_if(&|r| r.addresses.push(ip_address("10.0.0.300", 24)));
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{msg}");
    assert!(msg.contains("10.0.0.300"), "{msg}");
    let (code, msg) = bad_if(&|r| r.addresses.push(ip_address("fd00::5", 64)));
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{msg}");
    assert!(
        msg.contains("IPv6 addresses are not supported yet"),
        "{msg}"
    );
    let (code, msg) = bad_if(&|r| r.mtu = 70000);
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{msg}");
    assert!(
        msg.starts_with("set MTU 70000 on interface \"vguest\""),
        "{msg}"
    );
    let (code, msg) = bad_if(&|r| r.hardware_address = "02:00:00:00:00:99".into());
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{msg}");
    let bad_routes = |r: Route| {
        let mut rr2 = rr.clone();
        rr2.routes.push(r);
        err_msg(c.update_routes(ctx(), &rr2))
    };
    let (code, msg) = bad_routes(route("10.0.0.0/33", "", "vguest"));
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{msg}");
    assert!(msg.contains("10.0.0.0/33 dev vguest"), "{msg}");
    let (code, msg) = bad_routes(route("10.96.0.0/16", "", "nope0"));
    assert_eq!(code, ttrpc::Code::NOT_FOUND, "{msg}");
    assert!(msg.contains("nope0"), "{msg}");
    // A gateway no route reaches: refused, and the table is as it was,
    // the stale route it removed first put back.
    ip("route add 10.91.0.0/24 dev vguest");
    let (code, msg) = bad_routes(route("10.97.0.0/16", "192.168.77.1", "vguest"));
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{msg}");
    assert!(
        msg.starts_with("add route \"10.97.0.0/16 via 192.168.77.1 dev vguest\""),
        "{msg}"
    );
    let after = c.list_routes(ctx(), &Empty::new()).unwrap();
    let mut with_stale = expected.to_vec();
    with_stale.insert(2, "10.91.0.0/24 dev vguest");
    assert_eq!(route_lines(&after.routes, &["vguest", "vpeer"]), with_stale);

    // Down: shown down.
    req.up = false;
    let got = c.update_interface(ctx(), &req).unwrap();
    assert!(!got.up);
    // Routes need the device up.
    let (code, msg) = err_msg(c.update_routes(ctx(), &rr));
    assert_eq!(code, ttrpc::Code::FAILED_PRECONDITION, "{msg}");
    assert!(msg.contains("Network is down"), "{msg}");
}
