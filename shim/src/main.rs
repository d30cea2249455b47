//! containerd-shim-skiff-v2: containerd's runtime v2 shim for Skiff
//! (runtime type `io.containerd.skiff.v2`, task API v2). One shim process
//! per pod; the pod's VM runs inside it, booted by Skiff's VMM.

mod bootstrap;
mod info;
mod logging;
mod options;
mod process;
mod service;
mod stdin;
mod task;

use std::io::Write;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if info::requested(&args) {
        let answer = info::answer(&stdin::read());
        let mut out = std::io::stdout().lock();
        if let Err(e) = out.write_all(&answer).and_then(|_| out.flush()) {
            eprintln!("{}: write -info answer: {e}", service::RUNTIME_ID);
            std::process::exit(1);
        }
        return;
    }
    if containerd_shim::parse(&args).is_ok_and(|f| f.action == "start") {
        let _ = service::START_REQUEST.set(bootstrap::parse(&stdin::read()));
    }
    raise_fd_limit();
    let config = containerd_shim::Config {
        // Logs go through `tracing` (logging.rs) to containerd's log pipe.
        no_setup_logger: true,
        ..Default::default()
    };
    containerd_shim::run::<service::Service>(service::RUNTIME_ID, Some(config));
}

/// Raises the soft fd limit to the hard one, as virtiofsd does: each
/// virtio-fs share may hold up to `FsLimits::max_fds` fds for its guest
/// (bounded per share), and the pod's vsock, disks and ttrpc need theirs.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
