//! Boots the project's guest kernel and debug initramfs to user space.
//!
//! Each test is one boot and checks as much as it can in it.

use std::time::{Duration, Instant};

use skiff_tests::{debug_initramfs, debug_vm_config, kernel, vm_run};
use skiff_vmm::{ExitReason, VmState, VmmHandle};

/// Generous: an emulated guest kernel boots in about 30-60 s here.
const BOOT_TIMEOUT: &str = "400";

/// One vCPU through the library API, as the shim will use it: the state
/// machine across a real boot, pause and resume of running vCPUs, the
/// guest command's output, the boot timer, and a clean exit.
#[test]
fn api_boots_pauses_resumes_and_runs_a_command() {
    let console = std::env::temp_dir().join(format!("skiff-api-boot-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&console);
    let vmm = VmmHandle::spawn(Instant::now()).unwrap();
    assert_eq!(vmm.state().unwrap(), VmState::Unconfigured);
    assert!(vmm.start().is_err(), "start before configure must fail");
    vmm.configure(debug_vm_config(&console, &["echo", "hello from the guest"]))
        .unwrap();
    assert_eq!(vmm.state().unwrap(), VmState::Configured);
    vmm.start().unwrap();
    assert_eq!(vmm.state().unwrap(), VmState::Running);

    std::thread::sleep(Duration::from_millis(500));
    vmm.pause().unwrap();
    assert_eq!(vmm.state().unwrap(), VmState::Paused);
    let console_len = std::fs::metadata(&console).map(|m| m.len()).unwrap_or(0);
    std::thread::sleep(Duration::from_secs(2));
    let still = std::fs::metadata(&console).map(|m| m.len()).unwrap_or(0);
    assert_eq!(console_len, still, "a paused guest wrote to its console");
    assert!(vmm.pause().is_err(), "pausing twice must fail");
    vmm.resume().unwrap();
    assert_eq!(vmm.state().unwrap(), VmState::Running);

    let exit = vmm
        .wait_exit(Some(Duration::from_secs(400)))
        .expect("guest exits within the timeout");
    let output = std::fs::read_to_string(&console).unwrap();
    let _ = std::fs::remove_file(&console);
    assert_eq!(exit.reason, ExitReason::GuestShutdown, "console:\n{output}");
    assert!(output.contains("SKIFF-GUEST-READY"), "console:\n{output}");
    assert!(
        output.contains("hello from the guest"),
        "console:\n{output}"
    );
    assert!(output.contains("SKIFF-GUEST-EXIT 0"), "console:\n{output}");
    assert_eq!(vmm.state().unwrap(), VmState::Exited);
    assert!(vmm.resume().is_err());

    let marks: Vec<_> = exit.timeline.marks.iter().map(|m| m.milestone).collect();
    use skiff_vmm::timeline::Milestone::*;
    assert_eq!(
        marks,
        vec![VmCreated, KernelLoaded, FirstKvmRun, GuestInit, Exited]
    );
    assert!(exit.timeline.vcpu_threads_cpu_ms > 0.0);
}

/// Two vCPUs through `vm-run`: the guest sees both CPUs and the command
/// after `--` runs.
#[test]
fn vm_run_boots_two_vcpus() {
    let kernel = kernel();
    let initrd = debug_initramfs();
    let run = vm_run(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--cpus",
        "2",
        "--json",
        "--timeout",
        BOOT_TIMEOUT,
        "--",
        "cat",
        "/proc/cpuinfo",
    ]);
    assert_eq!(
        run.status,
        Some(0),
        "stderr:\n{}\nstdout:\n{}",
        run.stderr,
        run.stdout
    );
    assert!(run.stdout.contains("SKIFF-GUEST-READY"), "{}", run.stdout);
    let processors = run
        .stdout
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    assert_eq!(processors, 2, "stdout:\n{}", run.stdout);
    assert!(run.stdout.contains("SKIFF-GUEST-EXIT 0"));
    let report = run.report();
    assert_eq!(report["clean"], true);
    assert!(run.milestone_ms("guest_init").unwrap() > run.milestone_ms("first_kvm_run").unwrap());
}

/// A kernel with nothing to run panics; vm-run says so and fails.
#[test]
fn guest_panic_is_reported_with_its_reason() {
    let kernel = kernel();
    let started = Instant::now();
    let run = vm_run(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--console",
        "off",
        "--timeout",
        BOOT_TIMEOUT,
    ]);
    assert_eq!(run.status, Some(2), "stderr:\n{}", run.stderr);
    let last = run.stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("vm-run: guest kernel panic: ") && last.contains("mount root fs"),
        "stderr:\n{}",
        run.stderr
    );
    assert!(run.stdout.is_empty(), "console off, yet: {}", run.stdout);
    assert!(started.elapsed() < Duration::from_secs(400));
}
