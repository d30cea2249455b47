//! skiff-agent: PID 1 of a Skiff sandbox VM. It sets up the guest, then
//! serves the runtime's ttrpc API on vsock and runs the pod's containers.
//! With `--listen unix:PATH` it runs on a host instead, for tests.

mod cgroup;
mod config;
mod container;
mod entropy;
mod files;
mod forward;
mod hotplug;
mod init;
mod mounts;
mod netlink;
mod network;
mod oom;
mod plan;
mod reaper;
mod sandbox;
mod seccomp;
mod security;
mod service;
mod spawn;
mod spec;
mod stdio;
mod user;

use std::path::PathBuf;
use std::sync::Arc;

use config::{Config, Listen};

/// Worker threads for requests: blocking calls (WaitProcess, stream reads,
/// GetOomEvent) each hold one, so allow plenty; idle ones cost nothing.
const MAX_REQUEST_THREADS: usize = 256;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The guest's init: PID 1 and not told to listen elsewhere (a test
    // runs the agent as PID 1 of a PID namespace, with --listen).
    let guest_init = std::process::id() == 1 && !args.iter().any(|a| a == "--listen");
    if guest_init {
        // First thing, so the VMM's boot timer measures boot-to-agent.
        init::signal_boot_timer();
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    // The kernel hands PID 1 whatever command-line words it did not use.
    let cfg = match Config::parse(if guest_init { &[] } else { &args }, &cmdline) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("skiff-agent: {e}");
            std::process::exit(2);
        }
    };
    tracing_subscriber::fmt()
        .with_max_level(cfg.log_level)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .init();
    if let Err(e) = run(cfg, guest_init) {
        tracing::error!("{e}");
        if guest_init {
            init::power_off();
        }
        std::process::exit(1);
    }
}

fn run(cfg: Config, guest_init: bool) -> Result<(), String> {
    if guest_init {
        init::mount_system().map_err(|e| e.to_string())?;
    }
    reaper::block_sigchld().map_err(|e| format!("block SIGCHLD: {e}"))?;
    if std::process::id() != 1 {
        // Orphans of containers come back to the agent, as they would to
        // PID 1 in the guest.
        // SAFETY: prctl with integer arguments only.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    }
    let reaper = Arc::new(reaper::Reaper::default());
    let r = reaper.clone();
    std::thread::spawn(move || r.run());
    let oom = Arc::new(oom::OomWatcher::new().map_err(|e| e.to_string())?);
    let o = oom.clone();
    std::thread::spawn(move || o.run());
    let cgroups = cgroup::CgroupRoot::open(&cfg.cgroup_root).map_err(|e| e.to_string())?;
    let resolv_conf = if cfg.host_mode {
        // Never the host's own file.
        PathBuf::from(files::COPY_ROOT).join("resolv.conf")
    } else {
        PathBuf::from("/etc/resolv.conf")
    };
    let sandbox = Arc::new(sandbox::Sandbox::new(reaper, oom, cgroups, resolv_conf));
    let service = Arc::new(service::Service {
        sandbox,
        host_mode: cfg.host_mode,
        hotplug: hotplug::Hotplug::new("/"),
    });
    if let Listen::Unix(path) = &cfg.listen {
        let _ = std::fs::remove_file(path);
    }
    let address = cfg.listen.ttrpc_address();
    let mut server = ttrpc::Server::new()
        .bind(&address)
        .map_err(|e| format!("listen on {address}: {e}"))?
        .register_service(skiff_agent_protocol::agent_ttrpc::create_agent_service(
            service,
        ))
        .set_thread_count_max(MAX_REQUEST_THREADS);
    server
        .start()
        .map_err(|e| format!("start ttrpc server: {e}"))?;
    tracing::info!(
        "skiff-agent {} listening on {address}",
        env!("CARGO_PKG_VERSION")
    );
    // CRI port forwarding reaches the guest's localhost through vsock; a
    // host-mode agent (tests) has no vsock.
    if let Listen::Vsock(_) = cfg.listen {
        if let Err(e) = forward::serve_vsock() {
            tracing::error!("{e}: port forwarding into this sandbox will fail");
        }
    }
    loop {
        std::thread::park();
    }
}
