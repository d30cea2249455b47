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
//!
//! `--snapshot-after WHEN DIR` pauses the VM, writes a snapshot and stops
//! (exit status 0 once the snapshot is written); `--restore DIR` builds
//! the VM from one instead of booting it.

mod flags;

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use skiff_guest_abi::cmdline::{append_init_args, default_cmdline};
use skiff_vmm::arch::boot::BootError;
use skiff_vmm::builder::BuildError;
use skiff_vmm::config::{host_has_hardware_virt, DeviceConfig};
use skiff_vmm::loader::LoadError;
use skiff_vmm::timeline::{Milestone, TimelineReport};
use skiff_vmm::{ConsoleConfig, DeviceError, ExitReason, VmConfig, VmmError, VmmHandle};

use flags::{Args, SnapshotWhen};

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
    #[error("--snapshot-after: {0}")]
    SnapshotWhen(flags::FlagError),
    #[error("--snapshot-after console:TEXT needs --console file:PATH to watch")]
    SnapshotNeedsConsoleFile,
    #[error("--snapshot-after: {0} already exists; a snapshot goes into a new directory")]
    SnapshotDirExists(PathBuf),
    #[error("the guest ended before the snapshot was taken: {0}")]
    EndedBeforeSnapshot(ExitReason),
    #[error("--snapshot-after: cannot read the console file {path}: {source}")]
    ConsoleRead {
        path: PathBuf,
        source: std::io::Error,
    },
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
    let snapshot = snapshot_plan(&args.snapshot_after, &config.console)?;
    let console = config.console.clone();

    let vmm = VmmHandle::spawn(origin)?;
    vmm.configure(config)?;
    match &args.restore {
        Some(dir) => vmm.restore(dir)?,
        None => vmm.start()?,
    }

    let mut snapshot_ms = None;
    let ended = match &snapshot {
        Some((when, dir)) => {
            wait_for(&vmm, when, &console, timeout)?;
            snapshot_ms = Some(take_snapshot(&vmm, dir)?);
            let _ = vmm.stop();
            None
        }
        None => vmm.wait_exit(timeout),
    };
    let (reason, timeline, timed_out) = match ended {
        Some(exit) => (exit.reason, exit.timeline, false),
        None => {
            let _ = vmm.stop();
            let exit = vmm.wait_exit(Some(Duration::from_secs(30)));
            let timeline = exit.map(|e| e.timeline).unwrap_or_else(|| vmm.timeline());
            (ExitReason::Stopped, timeline, snapshot.is_none())
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
            "snapshot_ms": snapshot_ms,
        });
        eprintln!("{json}");
    }
    if timed_out {
        let secs = timeout.map(|t| t.as_secs_f64()).unwrap_or_default();
        return Err(RunError::TimedOut(secs));
    }
    if reason.is_clean() || snapshot_ms.is_some() {
        Ok(())
    } else {
        Err(RunError::Guest(reason))
    }
}

/// `--snapshot-after WHEN DIR`, checked before anything boots.
fn snapshot_plan(
    values: &[String],
    console: &ConsoleConfig,
) -> Result<Option<(SnapshotWhen, PathBuf)>, RunError> {
    // clap takes exactly two values or none.
    let [when, dir] = values else {
        return Ok(None);
    };
    let when = flags::parse_snapshot_when(when).map_err(RunError::SnapshotWhen)?;
    if matches!(when, SnapshotWhen::Console(_)) && !matches!(console, ConsoleConfig::File(_)) {
        return Err(RunError::SnapshotNeedsConsoleFile);
    }
    let dir = PathBuf::from(dir);
    if dir.symlink_metadata().is_ok() {
        return Err(RunError::SnapshotDirExists(dir));
    }
    Ok(Some((when, dir)))
}

/// How often a wait for the snapshot's moment looks again.
const SNAPSHOT_POLL: Duration = Duration::from_millis(20);

/// Waits until `when`, failing if the guest ends or `timeout` passes first.
fn wait_for(
    vmm: &VmmHandle,
    when: &SnapshotWhen,
    console: &ConsoleConfig,
    timeout: Option<Duration>,
) -> Result<(), RunError> {
    let started = Instant::now();
    let mut watch = match (when, console) {
        (SnapshotWhen::Console(text), ConsoleConfig::File(path)) => {
            Some(ConsoleWatch::new(path, text.as_str()))
        }
        _ => None,
    };
    loop {
        if let Some(exit) = vmm.wait_exit(Some(SNAPSHOT_POLL)) {
            return Err(RunError::EndedBeforeSnapshot(exit.reason));
        }
        let due = match (when, watch.as_mut()) {
            (SnapshotWhen::After(after), _) => started.elapsed() >= *after,
            (_, Some(watch)) => watch.seen()?,
            (SnapshotWhen::Console(_), None) => return Err(RunError::SnapshotNeedsConsoleFile),
        };
        if due {
            return Ok(());
        }
        if let Some(t) = timeout.filter(|t| started.elapsed() >= *t) {
            return Err(RunError::TimedOut(t.as_secs_f64()));
        }
    }
}

/// Pauses the VM and writes its snapshot; returns the ms the snapshot took.
fn take_snapshot(vmm: &VmmHandle, dir: &Path) -> Result<f64, RunError> {
    vmm.pause()?;
    let started = Instant::now();
    vmm.snapshot(dir)?;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    eprintln!(
        "vm-run: snapshot written to {} in {ms:.1} ms",
        dir.display()
    );
    Ok(ms)
}

/// Looks for a text in a console file as it grows, reading each byte once
/// (the file is rotated past its limit: then it starts again from 0).
struct ConsoleWatch {
    path: PathBuf,
    text: Vec<u8>,
    offset: u64,
    /// The end of what was read, as long as the text less one byte, so a
    /// text split between two reads is still found.
    tail: Vec<u8>,
}

impl ConsoleWatch {
    fn new(path: &Path, text: &str) -> Self {
        ConsoleWatch {
            path: path.to_path_buf(),
            text: text.as_bytes().to_vec(),
            offset: 0,
            tail: Vec::new(),
        }
    }

    fn seen(&mut self) -> Result<bool, RunError> {
        let read_error = |source| RunError::ConsoleRead {
            path: self.path.clone(),
            source,
        };
        let mut file = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            // Not written yet.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(read_error(e)),
        };
        let len = file.metadata().map_err(read_error)?.len();
        if len < self.offset {
            self.offset = 0;
            self.tail.clear();
        }
        file.seek(SeekFrom::Start(self.offset))
            .map_err(read_error)?;
        let mut window = std::mem::take(&mut self.tail);
        let read = (&mut file)
            .take(len - self.offset)
            .read_to_end(&mut window)
            .map_err(read_error)?;
        self.offset += read as u64;
        if window.windows(self.text.len()).any(|w| w == self.text) {
            return Ok(true);
        }
        let keep = window.len().saturating_sub(self.text.len() - 1);
        self.tail = window.split_off(keep);
        Ok(false)
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

    #[test]
    fn watches_a_console_file_for_a_text() {
        let dir = std::env::temp_dir().join(format!("vm-run-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("console");
        let mut watch = ConsoleWatch::new(&path, "count 3");
        assert!(!watch.seen().unwrap(), "no file yet");
        std::fs::write(&path, "count 1\ncou").unwrap();
        assert!(!watch.seen().unwrap());
        std::fs::write(&path, "count 1\ncount 2\ncount").unwrap();
        assert!(!watch.seen().unwrap());
        std::fs::write(&path, "count 1\ncount 2\ncount 3").unwrap();
        assert!(watch.seen().unwrap(), "found across two reads");
        // Rotated: a shorter file is read again from its start.
        let mut watch = ConsoleWatch::new(&path, "count 9");
        assert!(!watch.seen().unwrap());
        std::fs::write(&path, "count 9").unwrap();
        assert!(watch.seen().unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn checks_the_snapshot_flags_before_booting() {
        let file = ConsoleConfig::File("/tmp/c".into());
        let plan = |v: &[&str], c: &ConsoleConfig| {
            let v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
            snapshot_plan(&v, c).map_err(|e| e.to_string())
        };
        assert!(plan(&[], &file).unwrap().is_none());
        assert!(plan(&["2", "/nonexistent/s"], &ConsoleConfig::Off)
            .unwrap()
            .is_some());
        assert!(plan(&["console:x", "/nonexistent/s"], &ConsoleConfig::Off)
            .unwrap_err()
            .contains("--console file:"));
        assert!(plan(&["2", "/"], &file)
            .unwrap_err()
            .contains("already exists"));
        assert!(plan(&["later", "/nonexistent/s"], &file)
            .unwrap_err()
            .starts_with("--snapshot-after: `later`"));
    }

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
