//! `vm-run`: boots any kernel and initrd on Skiff's VMM, for debugging and
//! boot-latency benchmarks.
//!
//! Exit status: 0 when the guest shuts itself down, 2 on any error (bad
//! arguments, unusable kernel or initrd, guest panic, triple fault, KVM
//! error, timeout), each with one line on stderr saying why.
//!
//! This crate is the VMM's command-line front end, kept apart from the
//! VMM library as Firecracker keeps `src/firecracker` apart from
//! `src/vmm`: the flags ([`flags`]), logging set-up and reporting are
//! here; the library only takes a [`VmConfig`]. The guest command line
//! defaults to this project's profile (`skiff_guest_abi::cmdline`).

mod flags;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use skiff_guest_abi::cmdline::{append_init_args, default_cmdline};
use skiff_vmm::arch::boot::BootError;
use skiff_vmm::builder::BuildError;
use skiff_vmm::config::{host_has_hardware_virt, DeviceConfig};
use skiff_vmm::loader::LoadError;
use skiff_vmm::timeline::{Milestone, TimelineReport};
use skiff_vmm::{DeviceError, ExitReason, VmConfig, VmmError, VmmHandle};

use flags::Args;

const EXIT_FAILURE: u8 = 2;

/// Why a run failed: each is the one line vm-run prints.
#[derive(Debug, thiserror::Error)]
enum RunError {
    #[error("--timeout {0}: not a usable number of seconds")]
    BadTimeout(f64),
    #[error(transparent)]
    Cmdline(#[from] skiff_guest_abi::cmdline::CmdlineError),
    /// The VMM refused or failed; `flag` names the vm-run flag to change
    /// where one would fix it, since the VMM's messages do not.
    #[error("{error}{}", flag.map(|f| format!(" (check {f})")).unwrap_or_default())]
    Vmm {
        error: VmmError,
        flag: Option<&'static str>,
    },
    #[error("timeout: the guest was still running after {0} s")]
    TimedOut(f64),
    /// The guest ended some other way than shutting down.
    #[error("{0}")]
    Guest(ExitReason),
}

impl From<VmmError> for RunError {
    fn from(error: VmmError) -> Self {
        let flag = flag_hint(&error);
        RunError::Vmm { error, flag }
    }
}

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

fn run(args: Args, origin: Instant) -> Result<(), RunError> {
    let timeout = args
        .timeout
        .map(|s| Duration::try_from_secs_f64(s).map_err(|_| RunError::BadTimeout(s)))
        .transpose()?;
    let base = args
        .cmdline
        .unwrap_or_else(|| default_cmdline(host_has_hardware_virt()));
    let cmdline = append_init_args(&base, &args.init_args)?;
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

    let vmm = VmmHandle::spawn(origin)?;
    vmm.configure(config)?;
    vmm.start()?;

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
        return Err(RunError::TimedOut(secs));
    }
    if reason.is_clean() {
        Ok(())
    } else {
        Err(RunError::Guest(reason))
    }
}

/// The flag to change where one would fix `error` (the VMM speaks of
/// memory and devices, not of vm-run's flags).
fn flag_hint(error: &VmmError) -> Option<&'static str> {
    match error {
        VmmError::Build(
            BuildError::Load(
                LoadError::MemoryTooSmall { .. }
                | LoadError::InitrdPlacement {
                    source: BootError::InitrdTooLarge { .. },
                    ..
                },
            )
            | BuildError::Boot(BootError::InitrdTooLarge { .. }),
        ) => Some("--memory"),
        VmmError::Build(BuildError::Devices(DeviceError::Create { device, .. })) => {
            device_flag(device)
        }
        _ => None,
    }
}

/// The flag that configured a device the VMM could not create, from the
/// way the VMM names it.
fn device_flag(device: &str) -> Option<&'static str> {
    [
        ("disk image ", "--disk"),
        ("network device ", "--net"),
        ("vsock device ", "--vsock"),
        ("virtio-fs share ", "--fs"),
    ]
    .into_iter()
    .find(|(prefix, _)| device.starts_with(prefix))
    .map(|(_, flag)| flag)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The VMM's message stays as it is; vm-run adds the flag to change.
    #[test]
    fn names_the_flag_behind_a_vmm_error() {
        let small = VmmError::Build(BuildError::Load(LoadError::MemoryTooSmall {
            path: "vmlinux".into(),
            mem_mib: 20,
            needed_mib: 40,
        }));
        let vmm_says = small.to_string();
        let line = RunError::from(small).to_string();
        assert_eq!(line, format!("{vmm_says} (check --memory)"));
        assert!(!vmm_says.contains("--"), "{vmm_says}");

        assert_eq!(device_flag("disk image /x (read-only)"), Some("--disk"));
        assert_eq!(device_flag("network device on tap t0"), Some("--net"));
        assert_eq!(
            device_flag("vsock device (guest CID 3, socket /s)"),
            Some("--vsock")
        );
        assert_eq!(device_flag("virtio-fs share `s` of /p"), Some("--fs"));
        assert_eq!(device_flag("something else"), None);
        assert_eq!(
            RunError::from(VmmError::NoVsock).to_string(),
            "the VM has no vsock device"
        );
    }
}
