//! The shim logs through `tracing` into the `log` FIFO containerd opens in
//! the bundle directory; containerd copies each line into its own log.
//! Records of the `log` crate (containerd-shim's own) are forwarded.

use std::fs::OpenOptions;
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;

/// Sets up logging for the serving shim. `level` is a tracing filter;
/// `debug` (containerd's `-debug`) raises it to debug.
pub fn init(level: &str, debug: bool) {
    let filter = if debug { "debug" } else { level };
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_target(false);
    // containerd made the FIFO and holds its read end open.
    let installed = match OpenOptions::new().write(true).open("log") {
        Ok(fifo) => builder.with_writer(Mutex::new(fifo)).try_init(),
        Err(_) => builder.with_writer(std::io::stderr).try_init(),
    };
    if installed.is_ok() {
        let _ = tracing_log::LogTracer::init();
    }
}
