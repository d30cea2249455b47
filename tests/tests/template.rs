//! Sandbox templates through a private, real containerd: the shim's
//! `factory init` boots a template VM once and snapshots it; two pods
//! started with `[factory] template = true` are restored from it, each
//! with its own boot id, random bytes, MAC and address, and the node's
//! hostname (the template's guest has none; CreateSandbox sets it); a
//! template with a truncated memory file is rebuilt, not used; `factory
//! destroy` leaves the store empty. Two template boots in all; the cold
//! mode is covered by shim.rs and cri.rs.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use skiff_tests::containerd::{
    image_archive, leftovers, one_at_a_time, Containerd, Release, TestNetns, BUSYBOX, NAMESPACE,
    RUNTIME, SHIM,
};
use skiff_tests::{workspace_binary, Scratch, Steps};

/// What each pod prints: its identity, one line each.
const IDENTITY: &str = "cat /proc/sys/kernel/random/boot_id; \
                        head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; \
                        hostname; cat /sys/class/net/eth0/address; \
                        ip -4 -o addr show eth0 | awk '{print $4}'";

/// `containerd-shim-skiff-v2 factory ARGS --config CONFIG`.
fn factory(config: &Path, args: &[&str]) -> std::process::Output {
    Command::new(workspace_binary(SHIM))
        .arg("factory")
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .expect("run the shim's factory command")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A pod's identity as it printed it.
#[derive(Debug)]
struct Identity {
    boot_id: String,
    random: String,
    hostname: String,
    mac: String,
    address: String,
}

fn run_pod(ctrd: &Containerd, config: &Path, id: &str, netns: &TestNetns) -> Identity {
    let with_ns = format!("network:{}", netns.path.display());
    let out = ctrd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--runtime-config-path",
        config.to_str().unwrap(),
        "--with-ns",
        &with_ns,
        BUSYBOX,
        id,
        "sh",
        "-c",
        IDENTITY,
    ]);
    assert_eq!(
        out.code,
        Some(0),
        "{id}: {out:#?}\ncontainerd log:\n{}",
        ctrd.log()
    );
    let lines: Vec<String> = out.stdout.lines().map(str::to_string).collect();
    let [boot_id, random, hostname, mac, address] = lines.as_slice() else {
        panic!("{id} printed {lines:?}");
    };
    assert!(left_clean(id), "{id} left {:?}", leftovers(id));
    Identity {
        boot_id: boot_id.clone(),
        random: random.clone(),
        hostname: hostname.clone(),
        mac: mac.clone(),
        address: address.clone(),
    }
}

/// Nothing of sandbox `id` left, once containerd has cleaned up.
fn left_clean(id: &str) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !leftovers(id).is_empty() {
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    true
}

/// The MAC of the pod interface the CNI-like setup made in `netns`.
fn pod_mac(netns: &TestNetns) -> String {
    let link = netns.ip(&["-o", "link", "show", "eth0"]);
    link.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC in {link}"))
        .to_string()
}

#[test]
fn pods_restored_from_one_template_are_each_their_own() {
    let _turn = one_at_a_time();
    let scratch = Scratch::new("template");
    let mut steps = Steps::start();
    let store = scratch.path("templates");
    let config = scratch.path("template.toml");
    std::fs::write(
        &config,
        format!(
            "[factory]\ntemplate = true\ntemplate_dir = \"{}\"\n",
            store.display()
        ),
    )
    .unwrap();

    // Built ahead of time, root's alone.
    let out = factory(&config, &["init"]);
    assert!(out.status.success(), "factory init: {}", text(&out.stderr));
    let template = std::path::PathBuf::from(text(&out.stdout).trim());
    assert_eq!(template.parent(), Some(store.as_path()));
    for (path, mode) in [
        (store.clone(), 0o700),
        (template.clone(), 0o700),
        (template.join("memory"), 0o600),
        (template.join("state.json"), 0o600),
    ] {
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(
            meta.permissions().mode() & 0o777,
            mode,
            "{}",
            path.display()
        );
    }
    let out = factory(&config, &["status"]);
    let status = text(&out.stdout);
    assert!(
        out.status.success() && status.contains("1 vCPU, 256 MiB"),
        "{status}"
    );
    steps.mark("factory init: template built (one boot), status");

    let ctrd = Containerd::start(&scratch.path("ctrd"), &Release::system());
    ctrd.import(NAMESPACE, &image_archive(BUSYBOX, &[]));
    steps.mark("containerd started, busybox imported");

    let (net_a, net_b) = (TestNetns::new(11), TestNetns::new(12));
    let a = run_pod(&ctrd, &config, "tmpl-a", &net_a);
    steps.mark("pod a: restored, identity printed, removed");
    let b = run_pod(&ctrd, &config, "tmpl-b", &net_b);
    steps.mark("pod b: restored, identity printed, removed");
    let log = ctrd.log();
    assert_eq!(
        log.matches("restored from template").count(),
        2,
        "both pods restored:\n{log}"
    );
    assert!(!log.contains("sandbox template built"), "no build in a pod");
    assert_ne!(a.boot_id, b.boot_id, "{a:?} {b:?}");
    assert_ne!(a.random, b.random, "{a:?} {b:?}");
    assert_eq!(a.random.len(), 32, "{a:?}");
    // Their specs name no hostname: CreateSandbox gives each restored
    // guest the node's, as runc gives a container of its own.
    let node = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(
        (a.hostname.as_str(), b.hostname.as_str()),
        (node.trim(), node.trim())
    );
    assert_eq!(a.mac, pod_mac(&net_a));
    assert_eq!(b.mac, pod_mac(&net_b));
    assert_ne!(a.mac, b.mac);
    assert_eq!(a.address, format!("{}/24", net_a.pod_ip));
    assert_eq!(b.address, format!("{}/24", net_b.pod_ip));
    assert!(net_a.skiff_leftovers().is_empty() && net_b.skiff_leftovers().is_empty());

    // A broken template is rebuilt by the pod that finds it, never used.
    let memory = template.join("memory");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&memory)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let c = run_pod(&ctrd, &config, "tmpl-c", &net_a);
    assert_eq!(c.address, format!("{}/24", net_a.pod_ip));
    let log = ctrd.log();
    assert!(
        log.contains("template ") && log.contains("refused") && log.contains("memory file"),
        "the refusal is not logged:\n{log}"
    );
    assert!(log.contains("sandbox template built"), "{log}");
    assert!(std::fs::metadata(&memory).unwrap().len() > 1 << 20);
    steps.mark("truncated memory file: refused, rebuilt, pod c restored");

    let out = factory(&config, &["destroy"]);
    assert!(
        out.status.success(),
        "factory destroy: {}",
        text(&out.stderr)
    );
    assert!(text(&out.stdout).contains("removed 1 template"), "{out:?}");
    let left: Vec<_> = std::fs::read_dir(&store)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n != ".lock")
        .collect();
    assert!(left.is_empty(), "{left:?}");
    steps.mark("factory destroy: store empty");
}
