//! containerd-shim-skiff-v2: containerd's runtime v2 shim for Skiff
//! (runtime type `io.containerd.skiff.v2`, task API v2). One shim process
//! per pod; the pod's VM runs inside it, booted by Skiff's VMM. Run as
//! `containerd-shim-skiff-v2 factory ...` it manages sandbox templates
//! instead (factory.rs).

mod bootstrap;
mod factory;
mod info;
mod logging;
mod options;
mod rootfs;
mod service;
mod stdin;
mod task;

use std::io::Write;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if factory::requested(&args) {
        std::process::exit(factory::run(&args));
    }
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
    let config = containerd_shim::Config {
        // Logs go through `tracing` (logging.rs) to containerd's log pipe.
        no_setup_logger: true,
        ..Default::default()
    };
    containerd_shim::run::<service::Service>(service::RUNTIME_ID, Some(config));
}
