//! Skiff under containerd's CRI plugin, driven the way a kubelet drives it:
//! a small CRI client (k8s-cri over containerd's unix socket) runs one pod
//! with runtime handler `skiff` (one VM) on a CNI bridge network (Debian's
//! containernetworking-plugins: bridge + host-local), two busybox
//! containers in it, ExecSync in each, checks that both share the pod's one
//! shim and VM, its PID namespace (the sandbox's process as init) and the
//! node's hostname, that their output streams to the CRI logs, that pod
//! stats come from the pod's cgroup, that the pod's IP is the guest's and
//! TCP works both ways between the pod and the host, stops both containers
//! by SIGTERM, creates a third it never starts, freezes the guest (its
//! vCPU threads stopped by ptrace, so it answers nothing), then stops and
//! removes the pod and checks that nothing is left on the host. Prints each step's time. It runs on
//! Debian's containerd 1.6 and on a 2.x release when one is unpacked, each
//! with its default CRI configuration (on 2.x every pod spec then carries
//! the unprivileged port and ICMP sysctls). The pod is restored from a
//! sandbox template (`[factory] template = true`, built by the pod itself,
//! through the handler's ConfigPath): the cold boot is shim.rs's.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use serde_json::Value;
use skiff_tests::containerd::{
    image_archive, leftovers, live_processes, one_at_a_time, Containerd, Release, BUSYBOX,
    CRI_NAMESPACE, PAUSE, SHIM,
};
use skiff_tests::freeze::FrozenVcpus;
use skiff_tests::{Scratch, Steps};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// The runtime handler scripts/containerd-private.sh configures.
const HANDLER: &str = "skiff";
/// Every CRI call may wait for a sandbox boot (tens of seconds on hosts
/// whose KVM emulates the guest kernel).
const CALL_TIMEOUT: Duration = Duration::from_secs(600);
const CONTAINERS: [&str; 2] = ["c1", "c2"];
/// A pod-level sysctl (`securityContext.sysctls`), read back in a container.
const POD_SYSCTL: (&str, &str) = ("net.ipv4.tcp_keepalive_time", "600");

/// On a failure, prints the end of containerd's log (which carries the
/// shim's) and of the pod's guest console, before containerd is stopped
/// and its directory removed.
struct Diagnostics {
    containerd_log: PathBuf,
    container_logs: PathBuf,
    pod: Option<String>,
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| format!("({e})"));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Drop for Diagnostics {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        // containerd's directory goes with it: keep the whole log.
        let kept =
            std::env::temp_dir().join(format!("skiff-cri-{}-containerd.log", std::process::id()));
        let _ = std::fs::copy(&self.containerd_log, &kept);
        eprintln!(
            "--- {} (last 80 lines; all of it in {}) ---\n{}",
            self.containerd_log.display(),
            kept.display(),
            tail(&self.containerd_log, 80)
        );
        for entry in std::fs::read_dir(&self.container_logs)
            .into_iter()
            .flatten()
            .flatten()
        {
            eprintln!(
                "--- {} ---\n{}",
                entry.path().display(),
                tail(&entry.path(), 20)
            );
        }
        if let Some(pod) = &self.pod {
            let console = Path::new("/run/skiff/sbs").join(pod).join("console.log");
            eprintln!(
                "--- {} (last 40 lines) ---\n{}",
                console.display(),
                tail(&console, 40)
            );
        }
    }
}

/// A CRI request with a deadline containerd sees (grpc-timeout).
fn req<T>(message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.set_timeout(CALL_TIMEOUT);
    r
}

async fn connect(socket: &Path) -> RuntimeServiceClient<Channel> {
    let socket = socket.to_path_buf();
    // The URI is ignored: every connection goes to the unix socket.
    let channel = Endpoint::try_from("http://[::]:0")
        .unwrap()
        .timeout(CALL_TIMEOUT)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?)) }
        }))
        .await
        .expect("connect to containerd's CRI socket");
    RuntimeServiceClient::new(channel)
}

/// The pod's own network namespace (set up by the CNI bridge plugin), and
/// one PID namespace for the whole pod, whose init is the sandbox's
/// process (`shareProcessNamespace: true`).
fn pod_namespaces() -> cri::NamespaceOption {
    cri::NamespaceOption {
        network: cri::NamespaceMode::Pod as i32,
        pid: cri::NamespaceMode::Pod as i32,
        ipc: cri::NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// The pod's cgroup parent (cgroupfs form, as a kubelet with the cgroupfs
/// driver passes it): pod stats are read there.
fn cgroup_parent() -> String {
    format!("/skiff-cri-{}", std::process::id())
}

/// Removes the pod's cgroup parent in every hierarchy when dropped (the
/// kubelet's job; the sandbox removes only its own cgroup).
struct RemoveCgroupParent(String);

impl Drop for RemoveCgroupParent {
    fn drop(&mut self) {
        let root = Path::new("/sys/fs/cgroup");
        let unified = root.join("cgroup.controllers").exists();
        let hierarchies: Vec<PathBuf> = match unified {
            true => vec![root.to_path_buf()],
            false => std::fs::read_dir(root)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .collect(),
        };
        for h in hierarchies {
            let _ = std::fs::remove_dir(h.join(self.0.trim_start_matches('/')));
        }
    }
}

/// The CNI bridge this test configures: pods get 10.213.0.0/24 addresses
/// behind the bridge, whose host side (the gateway) is 10.213.0.1.
const BRIDGE: &str = "skiffbr0";
const GATEWAY: &str = "10.213.0.1";
/// Bytes sent each way over TCP between the pod and the host.
const TRANSFER_BYTES: usize = 2 << 20;

fn write_cni_config(containerd: &Containerd) {
    let conf = serde_json::json!({
        "cniVersion": "0.4.0",
        "name": "skiff-test",
        "plugins": [{
            "type": "bridge",
            "bridge": BRIDGE,
            "isGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": "10.213.0.0/24", "gateway": GATEWAY}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": containerd.dir.join("cni/ipam")
            }
        }]
    });
    std::fs::write(
        containerd.dir.join("cni/conf/10-skiff-test.conflist"),
        serde_json::to_vec_pretty(&conf).unwrap(),
    )
    .unwrap();
}

/// Deletes a host network link when dropped.
struct RemoveLink(&'static str);

impl Drop for RemoveLink {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", self.0])
            .output();
    }
}

/// md5 of `bytes`, by the host's md5sum (the guest side uses busybox's).
fn md5(bytes: &[u8], scratch: &Path) -> String {
    let file = scratch.join("received");
    std::fs::write(&file, bytes).unwrap();
    let out = std::process::Command::new("md5sum")
        .arg(&file)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

fn pod_config(log_directory: &Path) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: "skiff-cri-pod".into(),
            uid: format!("skiff-cri-{}", std::process::id()),
            namespace: "default".into(),
            attempt: 0,
        }),
        log_directory: log_directory.to_str().unwrap().into(),
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(pod_namespaces()),
                ..Default::default()
            }),
            sysctls: [(POD_SYSCTL.0.to_string(), POD_SYSCTL.1.to_string())].into(),
            cgroup_parent: cgroup_parent(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn container_config(name: &str, command: &[&str], args: &[&str]) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: BUSYBOX.into(),
            ..Default::default()
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        args: args.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        linux: Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(pod_namespaces()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The pod's shim processes under this containerd (not the short-lived
/// `start`/`delete` invocations).
fn shims_of(containerd: &Containerd, pod_id: &str) -> Vec<String> {
    live_processes(&format!("-id {pod_id} "))
        .into_iter()
        .filter(|p| p.contains(SHIM) && p.contains(containerd.socket.to_str().unwrap()))
        .filter(|p| !p.ends_with(" start ") && !p.ends_with(" delete "))
        .collect()
}

/// All shims serving this containerd.
fn all_shims(containerd: &Containerd) -> Vec<String> {
    live_processes(containerd.socket.to_str().unwrap())
        .into_iter()
        .filter(|p| p.contains(SHIM))
        .filter(|p| !p.ends_with(" start ") && !p.ends_with(" delete "))
        .collect()
}

/// The CRI log at `path` once it holds `line`; panics at `deadline`.
async fn wait_for_log(path: &Path, line: &str, deadline: Instant) -> String {
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(line) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{} lacks {line:?}: {text:?}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The pod's network namespace on the host, from its `persist.json`.
fn pod_netns(pod_id: &str) -> PathBuf {
    let persist = Path::new("/run/skiff/sbs")
        .join(pod_id)
        .join("persist.json");
    let state: Value = serde_json::from_str(&std::fs::read_to_string(&persist).unwrap()).unwrap();
    PathBuf::from(
        state["network"]["netns"]
            .as_str()
            .unwrap_or_else(|| panic!("no netns in {state}")),
    )
}

/// What a connection to 127.0.0.1:`port` made inside `netns` reads until
/// it is closed (containerd's PortForward dials the same way).
fn read_in_netns(netns: &Path, port: u16) -> Vec<u8> {
    let ns = std::fs::File::open(netns).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on this thread only, with an open namespace fd.
            let entered = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(
                entered,
                0,
                "setns {}: {}",
                netns.display(),
                std::io::Error::last_os_error()
            );
            let mut conn = std::net::TcpStream::connect(("127.0.0.1", port))
                .unwrap_or_else(|e| panic!("connect 127.0.0.1:{port} in {}: {e}", netns.display()));
            let mut got = Vec::new();
            let _ = std::io::Read::read_to_end(&mut conn, &mut got);
            got
        })
        .join()
        .unwrap()
    })
}

async fn container_status(
    client: &mut RuntimeServiceClient<Channel>,
    container_id: &str,
) -> cri::ContainerStatus {
    client
        .container_status(req(cri::ContainerStatusRequest {
            container_id: container_id.into(),
            verbose: false,
        }))
        .await
        .expect("ContainerStatus")
        .into_inner()
        .status
        .expect("container status")
}

async fn exec_sync(
    client: &mut RuntimeServiceClient<Channel>,
    container_id: &str,
    cmd: &[&str],
) -> cri::ExecSyncResponse {
    let result = client
        .exec_sync(req(cri::ExecSyncRequest {
            container_id: container_id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: CALL_TIMEOUT.as_secs() as i64,
        }))
        .await;
    match result {
        Ok(response) => response.into_inner(),
        Err(e) => {
            let status = client
                .container_status(req(cri::ContainerStatusRequest {
                    container_id: container_id.into(),
                    verbose: false,
                }))
                .await
                .map(|r| format!("{:?}", r.into_inner().status));
            panic!("ExecSync {cmd:?} in {container_id}: {e}\ncontainer status: {status:?}")
        }
    }
}

#[test]
fn on_containerd_1_6() {
    let _turn = one_at_a_time();
    cri_pod_with_two_containers_in_one_vm(&Release::system(), "cri-1.6");
}

#[test]
fn on_containerd_2() {
    let Some(release) = Release::containerd_2_or_skip() else {
        return;
    };
    let _turn = one_at_a_time();
    cri_pod_with_two_containers_in_one_vm(&release, "cri-2");
}

fn cri_pod_with_two_containers_in_one_vm(release: &Release, name: &str) {
    let v2 = release.version().is_some_and(|v| v.0 >= 2);
    let scratch_dir = Scratch::new(name);
    let scratch = scratch_dir.0.clone();
    let logs = scratch.join("logs");
    std::fs::create_dir_all(&logs).unwrap();

    let mut steps = Steps::start();
    let busybox = image_archive(BUSYBOX, &[]);
    let pause = image_archive(PAUSE, &["sleep", "inf"]);
    steps.mark("image archives");
    // The bridge plugin leaves its bridge when the last pod goes; this
    // removes it (after containerd, which is dropped first).
    let _bridge = RemoveLink(BRIDGE);
    let _cgroup_parent = RemoveCgroupParent(cgroup_parent());
    let runtime_config = scratch.join("skiff.toml");
    std::fs::write(
        &runtime_config,
        format!(
            "[factory]\ntemplate = true\ntemplate_dir = \"{}\"\n",
            scratch.join("templates").display()
        ),
    )
    .unwrap();
    let containerd =
        Containerd::start_with_config(&scratch.join("containerd"), release, Some(&runtime_config));
    let mut diag = Diagnostics {
        containerd_log: containerd.dir.join("containerd.log"),
        container_logs: logs.clone(),
        pod: None,
    };
    write_cni_config(&containerd);
    steps.mark("containerd started");
    containerd.import(CRI_NAMESPACE, &busybox);
    containerd.import(CRI_NAMESPACE, &pause);
    steps.mark("images imported (k8s.io)");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut client = connect(&containerd.socket).await;

        let version = client
            .version(req(cri::VersionRequest {
                version: "v1".into(),
            }))
            .await
            .expect("Version")
            .into_inner();
        assert_eq!(version.runtime_name, "containerd", "{version:?}");
        assert_eq!(version.runtime_api_version, "v1", "{version:?}");
        steps.mark("Version");

        // containerd picks up the CNI configuration written after it started.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let status = client
                .status(req(cri::StatusRequest { verbose: false }))
                .await
                .expect("Status")
                .into_inner();
            let ready = status.status.iter().flat_map(|s| &s.conditions).any(|c| {
                c.r#type == "NetworkReady" && c.status
            });
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "CNI never became ready: {status:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        steps.mark("CNI network ready");

        // containerd 2.x learns a handler's features from the shim's -info
        // (the OCI features document): Skiff does recursive read-only
        // mounts, not user namespaces. 1.6 reports no handlers.
        if v2 {
            let status = client
                .status(req(cri::StatusRequest { verbose: false }))
                .await
                .expect("Status")
                .into_inner();
            let skiff = status
                .runtime_handlers
                .iter()
                .find(|h| h.name == HANDLER)
                .unwrap_or_else(|| panic!("no {HANDLER} handler: {status:?}"));
            let features = skiff.features.as_ref().expect("handler features");
            assert!(features.recursive_read_only_mounts, "{skiff:?}");
            assert!(!features.user_namespaces, "{skiff:?}");
            steps.mark("Status: the skiff handler's features from -info");
        }

        let pod_config = pod_config(&logs);
        let pod_id = client
            .run_pod_sandbox(req(cri::RunPodSandboxRequest {
                config: Some(pod_config.clone()),
                runtime_handler: HANDLER.into(),
            }))
            .await
            .expect("RunPodSandbox")
            .into_inner()
            .pod_sandbox_id;
        diag.pod = Some(pod_id.clone());
        let log = std::fs::read_to_string(&diag.containerd_log).unwrap_or_default();
        assert!(
            log.contains("sandbox template built") && log.contains("restored from template"),
            "the pod was not restored from a template"
        );
        steps.mark("RunPodSandbox (template build + restore)");
        let status = client
            .pod_sandbox_status(req(cri::PodSandboxStatusRequest {
                pod_sandbox_id: pod_id.clone(),
                verbose: false,
            }))
            .await
            .expect("PodSandboxStatus")
            .into_inner()
            .status
            .expect("pod status");
        assert_eq!(
            status.state,
            cri::PodSandboxState::SandboxReady as i32,
            "{status:?}"
        );
        assert_eq!(status.runtime_handler, HANDLER, "{status:?}");
        let pod_ip = status
            .network
            .as_ref()
            .map(|n| n.ip.clone())
            .unwrap_or_default();
        assert!(pod_ip.starts_with("10.213.0."), "pod IP {pod_ip:?}: {status:?}");
        let shims = shims_of(&containerd, &pod_id);
        assert_eq!(shims.len(), 1, "one shim for pod {pod_id}: {shims:?}");

        let mut ids = Vec::new();
        for name in CONTAINERS {
            // The second line comes at least 5 s after the first: the first
            // must reach the log before it (output streams, it is not
            // held until the process ends).
            let (command, args): (&[&str], Vec<String>) = (
                &["sh", "-c"],
                vec![format!(
                    "echo log-from-{name}; sleep 5; echo later-from-{name}; exec sleep 1000"
                )],
            );
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let id = client
                .create_container(req(cri::CreateContainerRequest {
                    pod_sandbox_id: pod_id.clone(),
                    config: Some(container_config(name, command, &args)),
                    sandbox_config: Some(pod_config.clone()),
                }))
                .await
                .unwrap_or_else(|e| panic!("CreateContainer {name}: {e}"))
                .into_inner()
                .container_id;
            steps.mark(&format!("CreateContainer {name}"));
            client
                .start_container(req(cri::StartContainerRequest {
                    container_id: id.clone(),
                }))
                .await
                .unwrap_or_else(|e| panic!("StartContainer {name}: {e}"));
            steps.mark(&format!("StartContainer {name}"));
            ids.push(id);
            // What it wrote reached the CRI log file ("TIMESTAMP stdout F
            // LINE"): sh is running, its `exec sleep` follows.
            let path = logs.join(format!("{name}.log"));
            let want = format!(" stdout F log-from-{name}\n");
            let later = format!(" stdout F later-from-{name}\n");
            let deadline = Instant::now() + Duration::from_secs(120);
            let text = wait_for_log(&path, &want, deadline).await;
            assert!(
                !text.contains(&later),
                "{name}'s first line reached its log only with the second: {text:?}"
            );
            steps.mark(&format!("{name} output in its CRI log"));
            // Then its second line, and its `exec sleep`.
            wait_for_log(&path, &later, deadline).await;
            steps.mark(&format!("{name}'s second line, 5 s later"));
        }

        for (name, id) in CONTAINERS.iter().zip(&ids) {
            let out = exec_sync(&mut client, id, &["echo", &format!("hello-from-{name}")]).await;
            assert_eq!(out.exit_code, 0, "{out:?}");
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                format!("hello-from-{name}\n")
            );
            assert!(out.stderr.is_empty(), "{out:?}");
            steps.mark(&format!("ExecSync echo in {name}"));
        }
        // One PID namespace for the pod: its init is the sandbox's process
        // (the pause image's `sleep inf`), and each container sees the
        // other's processes.
        let out = exec_sync(
            &mut client,
            &ids[0],
            &["sh", "-c", "tr '\\0' ' ' < /proc/1/cmdline; echo; ps -o args"],
        )
        .await;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(text.lines().next(), Some("sleep inf "), "{out:?}");
        assert!(
            text.lines().filter(|l| l.trim() == "sleep 1000").count() >= 2,
            "c1 does not see c2's process: {out:?}"
        );
        steps.mark("shared PID namespace: the sandbox's process is PID 1");

        // A pod without a hostname has the node's, as under runc.
        let node = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        let out = exec_sync(&mut client, &ids[1], &["hostname"]).await;
        assert_eq!(String::from_utf8_lossy(&out.stdout), node, "{out:?}");
        steps.mark("hostname: the node's");

        // An exec's timeout runs from the request, not from whenever a
        // slow guest has spawned the process (containerd starts its timer
        // when the shim's Start answers): a 2 s `sleep 600` is killed and
        // reported as timed out within a bound that a Start waiting out
        // this host's emulated spawn (seconds) and the guest's reap overran.
        let asked = Instant::now();
        let timed_out = client
            .exec_sync(req(cri::ExecSyncRequest {
                container_id: ids[1].clone(),
                cmd: vec!["sleep".into(), "600".into()],
                timeout: 2,
            }))
            .await;
        let waited = asked.elapsed();
        let err = timed_out.expect_err("a 2 s exec of sleep 600 must time out");
        assert!(err.message().contains("timeout"), "{err}");
        assert!(
            waited < Duration::from_secs(10),
            "a 2 s exec timeout took {waited:?}"
        );
        steps.mark("ExecSync timeout 2 s: timed out on time");

        // Pod stats, from the pod's cgroup on the host (the VM's threads
        // and memory are charged there).
        let stats = client
            .list_pod_sandbox_stats(req(cri::ListPodSandboxStatsRequest {
                filter: Some(cri::PodSandboxStatsFilter {
                    id: pod_id.clone(),
                    ..Default::default()
                }),
            }))
            .await
            .expect("ListPodSandboxStats")
            .into_inner()
            .stats;
        assert_eq!(stats.len(), 1, "{stats:?}");
        let linux = stats[0].linux.as_ref().expect("linux pod stats");
        let cpu = linux
            .cpu
            .as_ref()
            .and_then(|c| c.usage_core_nano_seconds.as_ref())
            .map_or(0, |v| v.value);
        let memory = linux
            .memory
            .as_ref()
            .and_then(|m| m.working_set_bytes.as_ref())
            .map_or(0, |v| v.value);
        assert!(cpu > 0 && memory > 0, "{stats:?}");
        steps.mark(&format!(
            "ListPodSandboxStats: {:.1} s CPU, {} MiB",
            cpu as f64 / 1e9,
            memory >> 20
        ));

        // The pod's sysctl, and on 2.x the two its default configuration
        // adds, are written in the guest despite the read-only /proc/sys.
        let read = format!(
            "cat /proc/sys/{} /proc/sys/net/ipv4/ip_unprivileged_port_start /proc/sys/net/ipv4/ping_group_range",
            POD_SYSCTL.0.replace('.', "/")
        );
        let out = exec_sync(&mut client, &ids[0], &["sh", "-c", &read]).await;
        let values: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        assert_eq!(values.first().map(String::as_str), Some(POD_SYSCTL.1), "{out:?}");
        if v2 {
            assert_eq!(&values[1..], ["0", "0 2147483647"], "{out:?}");
        }
        steps.mark("pod sysctls in the guest");

        let out = exec_sync(
            &mut client,
            &ids[1],
            &["sh", "-c", "echo failing >&2; exit 3"],
        )
        .await;
        assert_eq!(out.exit_code, 3, "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stderr), "failing\n");
        assert!(out.stdout.is_empty(), "{out:?}");
        steps.mark("ExecSync exit 3 in c2");

        // UpdateContainerResources reaches the guest's cgroup v2 (through
        // the task API's Update), seen in the task's metrics.
        client
            .update_container_resources(req(cri::UpdateContainerResourcesRequest {
                container_id: ids[0].clone(),
                linux: Some(cri::LinuxContainerResources {
                    memory_limit_in_bytes: 64 << 20,
                    cpu_period: 100_000,
                    cpu_quota: 50_000,
                    ..Default::default()
                }),
                ..Default::default()
            }))
            .await
            .expect("UpdateContainerResources");
        let metrics = containerd.ctr_in(CRI_NAMESPACE, &["task", "metrics", &ids[0]]);
        assert!(
            metrics
                .stdout
                .lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["memory.usage_limit", "67108864"]),
            "{metrics:?}"
        );
        steps.mark("UpdateContainerResources: memory limit in the guest");

        // The pod's network, carried into the VM: its address is the
        // guest's, and TCP works both ways through the bridge, intact.
        let out = exec_sync(&mut client, &ids[0], &["ip", "-4", "addr"]).await;
        let addrs = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(addrs.contains(&format!("inet {pod_ip}/24")), "{addrs}");
        steps.mark("pod IP in the container (ip addr)");

        // The pod network (CNI bridge, tap, virtio-net) does not depend on
        // containerd's version, and these two transfers are the longest
        // steps on an emulated guest (dd from /dev/urandom: ~5 min each
        // here), so they run on the system's containerd only, which every
        // machine has.
        if release.dir.is_none() {
        let listener = std::net::TcpListener::bind((GATEWAY, 0)).expect("listen on the bridge");
        let port = listener.local_addr().unwrap().port();
        let receiver = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut data = vec![0u8; TRANSFER_BYTES];
            std::io::Read::read_exact(&mut conn, &mut data).unwrap();
            data
        });
        let send = format!(
            "dd if=/dev/urandom of=/tmp/up bs=64k count={} 2>/dev/null && md5sum /tmp/up && nc {GATEWAY} {port} < /tmp/up",
            TRANSFER_BYTES / 65536
        );
        let started = Instant::now();
        let out = exec_sync(&mut client, &ids[0], &["sh", "-c", &send]).await;
        let received = receiver.join().unwrap();
        let secs = started.elapsed().as_secs_f64();
        let guest_sum = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            guest_sum.starts_with(&md5(&received, &scratch)),
            "pod->host data differs: guest {guest_sum:?} {out:?}"
        );
        steps.mark(&format!("pod -> host TCP {} MiB intact ({secs:.1} s with dd)", TRANSFER_BYTES >> 20));

        let serve = format!(
            "dd if=/dev/urandom of=/tmp/down bs=64k count={} 2>/dev/null && md5sum /tmp/down > /tmp/down.md5 && nc -l -p 8080 < /tmp/down",
            TRANSFER_BYTES / 65536
        );
        let addr = format!("{pod_ip}:8080");
        let fetcher = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(300);
            let mut conn = loop {
                match std::net::TcpStream::connect(&addr) {
                    Ok(c) => break c,
                    Err(e) => {
                        assert!(Instant::now() < deadline, "connect {addr}: {e}");
                        std::thread::sleep(Duration::from_millis(500));
                    }
                }
            };
            let mut data = vec![0u8; TRANSFER_BYTES];
            std::io::Read::read_exact(&mut conn, &mut data).unwrap();
            data
        });
        let out = exec_sync(&mut client, &ids[1], &["sh", "-c", &serve]).await;
        let fetched = fetcher.join().unwrap();
        let out2 = exec_sync(&mut client, &ids[1], &["cat", "/tmp/down.md5"]).await;
        assert!(
            String::from_utf8_lossy(&out2.stdout).starts_with(&md5(&fetched, &scratch)),
            "host<-pod data differs: {out:?} {out2:?}"
        );
        steps.mark(&format!("host -> server in the pod: TCP {} MiB intact", TRANSFER_BYTES >> 20));

        // CRI port forwarding as containerd serves it: a dial of
        // localhost:PORT inside the pod's network namespace on the host
        // reaches PORT on the guest's localhost. Until nc listens, the
        // guest refuses and the dial is closed without a byte.
        let netns = pod_netns(&pod_id);
        let refused = read_in_netns(&netns, 1);
        assert!(refused.is_empty(), "port 1 has no listener: {} bytes", refused.len());
        let fetcher = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(300);
            loop {
                let got = read_in_netns(&netns, 8081);
                if !got.is_empty() || Instant::now() > deadline {
                    break got;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        let out = exec_sync(&mut client, &ids[1], &["sh", "-c", "nc -l -p 8081 < /tmp/down"]).await;
        let forwarded = fetcher.join().unwrap();
        assert_eq!(forwarded.len(), TRANSFER_BYTES, "{out:?}");
        assert!(
            String::from_utf8_lossy(&out2.stdout).starts_with(&md5(&forwarded, &scratch)),
            "port-forwarded data differs: {out:?}"
        );
        steps.mark(&format!("port forward: pod netns localhost:8081 -> the guest's, {} MiB intact", TRANSFER_BYTES >> 20));
        }

        for (name, id) in CONTAINERS.iter().zip(&ids) {
            let status = container_status(&mut client, id).await;
            assert_eq!(
                status.state,
                cri::ContainerState::ContainerRunning as i32,
                "{name}: {status:?}"
            );
            assert_eq!(
                status.metadata.as_ref().map(|m| m.name.as_str()),
                Some(*name)
            );
        }
        steps.mark("ContainerStatus RUNNING x2");

        // One pod, one shim process, one VM: the sandbox's state lists the
        // pod's own container and both of ours, held by that one shim.
        let shims = all_shims(&containerd);
        assert_eq!(shims.len(), 1, "one shim under this containerd: {shims:?}");
        let shim_pid: u32 = shims[0].split(':').next().unwrap().parse().unwrap();
        let persist = Path::new("/run/skiff/sbs")
            .join(&pod_id)
            .join("persist.json");
        let state: Value = serde_json::from_str(
            &std::fs::read_to_string(&persist)
                .unwrap_or_else(|e| panic!("read {}: {e}", persist.display())),
        )
        .unwrap();
        assert_eq!(state["sandbox_id"], pod_id.as_str(), "{state}");
        assert_eq!(state["shim_pid"], shim_pid, "{state}");
        let mut listed: Vec<&str> = state["containers"]
            .as_array()
            .unwrap_or_else(|| panic!("no containers in {state}"))
            .iter()
            .map(|c| c["id"].as_str().unwrap())
            .collect();
        listed.sort_unstable();
        let mut want: Vec<&str> = ids
            .iter()
            .map(String::as_str)
            .chain([pod_id.as_str()])
            .collect();
        want.sort_unstable();
        assert_eq!(listed, want, "{state}");
        steps.mark("one shim, one VM");

        // Each container's `sleep` is not its namespace's init: SIGTERM
        // ends it (143), long before the grace period's SIGKILL (137).
        for (name, id) in CONTAINERS.iter().zip(&ids).rev() {
            client
                .stop_container(req(cri::StopContainerRequest {
                    container_id: id.clone(),
                    timeout: 120,
                }))
                .await
                .unwrap_or_else(|e| panic!("StopContainer {name}: {e}"));
            let status = container_status(&mut client, id).await;
            assert_eq!(
                (status.state, status.exit_code),
                (cri::ContainerState::ContainerExited as i32, 128 + 15),
                "{name}: {status:?}"
            );
            steps.mark(&format!("StopContainer {name}: SIGTERM ends it"));
        }

        // A container created but never started when the pod is stopped
        // (containerd keeps no task for it).
        client
            .create_container(req(cri::CreateContainerRequest {
                pod_sandbox_id: pod_id.clone(),
                config: Some(container_config("c3", &["sleep"], &["1000"])),
                sandbox_config: Some(pod_config.clone()),
            }))
            .await
            .expect("CreateContainer c3");
        steps.mark("CreateContainer c3 (never started)");

        // A guest that answers nothing any more: its vCPUs are stopped
        // from outside. Stopping and removing the pod must not wait on it
        // (containerd gives a sandbox task's Delete 10 s, and sends no
        // Shutdown after a Delete it gave up on).
        let frozen = FrozenVcpus::freeze(shim_pid);
        steps.mark("the pod's vCPUs frozen (ptrace)");

        client
            .stop_pod_sandbox(req(cri::StopPodSandboxRequest {
                pod_sandbox_id: pod_id.clone(),
            }))
            .await
            .expect("StopPodSandbox");
        steps.mark("StopPodSandbox");
        client
            .remove_pod_sandbox(req(cri::RemovePodSandboxRequest {
                pod_sandbox_id: pod_id.clone(),
            }))
            .await
            .expect("RemovePodSandbox");
        steps.mark("RemovePodSandbox");

        let listed = client
            .list_pod_sandbox(req(cri::ListPodSandboxRequest { filter: None }))
            .await
            .expect("ListPodSandbox")
            .into_inner()
            .items;
        assert!(listed.iter().all(|p| p.id != pod_id), "{listed:?}");
        let listed = client
            .list_containers(req(cri::ListContainersRequest { filter: None }))
            .await
            .expect("ListContainers")
            .into_inner()
            .containers;
        assert!(listed.is_empty(), "{listed:?}");

        // The shim exits once containerd has deleted the pod's last task,
        // and removes its socket.
        let socket = containerd.shim_socket(CRI_NAMESPACE, &pod_id);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut left = leftovers(&pod_id);
            if socket.exists() {
                left.push(format!("shim socket {}", socket.display()));
            }
            let shims = all_shims(&containerd);
            if left.is_empty() && shims.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "left after RemovePodSandbox: {left:?}, shims {shims:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        steps.mark("nothing left on the host");
        drop(frozen);
        let log = containerd.log();
        assert!(
            !log.contains("failed to load runtime info"),
            "containerd could not run the shim's -info"
        );
    });
    drop(diag);
    drop(containerd);
}
