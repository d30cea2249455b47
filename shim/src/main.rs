//! containerd-shim-skiff-v2: containerd's runtime v2 shim for Skiff
//! (runtime type `io.containerd.skiff.v2`, task API v2). One shim process
//! per pod; the pod's VM runs inside it, booted by Skiff's VMM.

mod logging;
mod options;
mod process;
mod service;
mod task;

fn main() {
    let config = containerd_shim::Config {
        // Logs go through `tracing` (logging.rs) to containerd's log pipe.
        no_setup_logger: true,
        ..Default::default()
    };
    containerd_shim::run::<service::Service>(service::RUNTIME_ID, Some(config));
}
