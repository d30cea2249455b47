//! `vm-run`: boots any kernel and initrd on Skiff's VMM, for debugging and
//! boot-latency benchmarks.
//!
//! Exit status: 0 when the guest shuts itself down, 2 on any error (bad
//! arguments, unusable kernel or initrd, guest panic, triple fault, KVM
//! error, timeout), each with one line on stderr saying why.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use skiff_vmm::config::{
    append_init_args, default_cmdline, host_has_hardware_virt, BlockConfig, DeviceConfig, FsConfig,
    NetConfig, VsockConfig,
};
use skiff_vmm::timeline::{Milestone, TimelineReport};
use skiff_vmm::{ConsoleConfig, ExitReason, SeccompMode, VmConfig, VmmHandle};

#[derive(Parser, Debug)]
#[command(
    name = "vm-run",
    about = "Boot a kernel on Skiff's KVM VMM",
    after_help = "Arguments after `--` reach the guest's init as argv.\n\
                  Exit status: 0 when the guest shuts down, 2 on any error."
)]
struct Args {
    /// Guest kernel: an ELF vmlinux (PVH or 64-bit entry) or a bzImage.
    #[arg(long)]
    kernel: PathBuf,
    /// Initramfs (cpio) to load.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Replace the default kernel command line.
    #[arg(long)]
    cmdline: Option<String>,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..))]
    cpus: u8,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 128)]
    memory: u64,
    /// Serial console: stdio, file:PATH or off.
    #[arg(long, default_value = "stdio", value_parser = parse_console)]
    console: ConsoleConfig,
    /// Print the boot timeline to stderr when the VM exits.
    #[arg(long)]
    timeline: bool,
    /// Print the exit reason and timeline as one JSON object on stderr.
    #[arg(long)]
    json: bool,
    /// Attach a virtio-blk disk: path=FILE[,ro][,direct] (repeatable).
    #[arg(long = "disk", value_name = "path=FILE[,ro]")]
    disks: Vec<BlockConfig>,
    /// Attach a virtio-net device on a tap: tap=NAME[,mac=MAC] (repeatable).
    #[arg(long = "net", value_name = "tap=NAME[,mac=MAC]")]
    nets: Vec<NetConfig>,
    /// Attach virtio-vsock: cid=N,socket=PATH.
    #[arg(long, value_name = "cid=N,socket=PATH")]
    vsock: Option<VsockConfig>,
    /// Share a host directory over virtio-fs: tag=TAG,path=DIR[,ro][,cache=never|auto|always] (repeatable).
    #[arg(long = "fs", value_name = "tag=TAG,path=DIR[,ro]")]
    shares: Vec<FsConfig>,
    /// Confinement of the VMM's threads (docs/seccomp.md): enforce (a
    /// forbidden syscall stops the VM), log (the kernel logs it) or off
    /// (no filters, no capability drops, no virtio-fs jail).
    #[arg(long, default_value = "enforce", value_name = "enforce|log|off")]
    seccomp: SeccompMode,
    /// Stop the VM and fail after this many seconds.
    #[arg(long, value_name = "SECONDS")]
    timeout: Option<f64>,
    /// Guest init arguments.
    #[arg(last = true)]
    init_args: Vec<String>,
}

fn parse_console(value: &str) -> Result<ConsoleConfig, String> {
    match value {
        "stdio" => Ok(ConsoleConfig::Stdio),
        "off" => Ok(ConsoleConfig::Off),
        _ => match value.strip_prefix("file:") {
            Some(path) if !path.is_empty() => Ok(ConsoleConfig::File(path.into())),
            _ => Err(format!(
                "`{value}` is not a console: use stdio, off or file:PATH"
            )),
        },
    }
}

const EXIT_FAILURE: u8 = 2;

fn main() -> ExitCode {
    let origin = Instant::now();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SKIFF_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    match run(args, origin) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("vm-run: {message}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn run(args: Args, origin: Instant) -> Result<(), String> {
    let timeout = args
        .timeout
        .map(|s| {
            Duration::try_from_secs_f64(s)
                .map_err(|_| format!("--timeout {s}: not a usable number of seconds"))
        })
        .transpose()?;
    let base = args
        .cmdline
        .unwrap_or_else(|| default_cmdline(host_has_hardware_virt()));
    let cmdline = append_init_args(&base, &args.init_args).map_err(|e| e.to_string())?;
    let devices = (args.disks.into_iter().map(DeviceConfig::Block))
        .chain(args.nets.into_iter().map(DeviceConfig::Net))
        .chain(args.vsock.into_iter().map(DeviceConfig::Vsock))
        .chain(args.shares.into_iter().map(DeviceConfig::Fs))
        .collect();
    let config = VmConfig {
        kernel: args.kernel,
        initrd: args.initrd,
        cmdline: cmdline.clone(),
        vcpus: args.cpus,
        memory_mib: args.memory,
        console: args.console,
        devices,
        hotplug_slots: 0,
        seccomp: args.seccomp,
    };

    let vmm = VmmHandle::spawn(origin).map_err(|e| e.to_string())?;
    vmm.configure(config).map_err(|e| e.to_string())?;
    vmm.start().map_err(|e| e.to_string())?;

    let (reason, timeline, timed_out) = match vmm.wait_exit(timeout) {
        Some(exit) => (exit.reason, exit.timeline, false),
        None => {
            let _ = vmm.stop();
            let exit = vmm.wait_exit(Some(Duration::from_secs(30)));
            let timeline = exit.map(|e| e.timeline).unwrap_or_else(|| vmm.timeline());
            (ExitReason::Stopped, timeline, true)
        }
    };
    drop(vmm);

    if args.timeline {
        print_timeline(&timeline);
    }
    if args.json {
        let json = serde_json::json!({
            "exit": reason.to_string(),
            "cmdline": cmdline,
            "clean": reason.is_clean() && !timed_out,
            "timed_out": timed_out,
            "timeline": timeline,
            "vmm_cpu_ms": timeline.vmm_cpu_ms(),
            "peak_rss_kib": peak_rss_kib(),
        });
        eprintln!("{json}");
    }
    if timed_out {
        let secs = timeout.map(|t| t.as_secs_f64()).unwrap_or_default();
        return Err(format!(
            "timeout: the guest was still running after {secs} s"
        ));
    }
    if reason.is_clean() {
        Ok(())
    } else {
        Err(reason.to_string())
    }
}

fn print_timeline(report: &TimelineReport) {
    eprintln!("{:<26} {:>11} {:>11}", "milestone", "wall ms", "cpu ms");
    for milestone in Milestone::ALL {
        match report.get(milestone) {
            Some(m) => eprintln!(
                "{:<26} {:>11.1} {:>11.1}",
                milestone.label(),
                m.wall_ms,
                m.cpu_ms
            ),
            None => eprintln!("{:<26} {:>11} {:>11}", milestone.label(), "-", "-"),
        }
    }
    eprintln!(
        "host cpu: {:.1} ms total, {:.1} ms in vCPU threads, {:.1} ms VMM",
        report.process_cpu_ms,
        report.vcpu_threads_cpu_ms,
        report.vmm_cpu_ms()
    );
}

/// The process's peak resident set (VmHWM), in KiB.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
