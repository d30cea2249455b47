//! The confinement of real VMs' threads (docs/seccomp.md): a forbidden
//! syscall on a vCPU or on the VMM thread stops that thread, the VM ends
//! with the reason naming the thread and the call, nothing waits on the
//! stopped thread, and another VM of the same process boots and runs on
//! untouched. (Each device worker's class is covered the same way, without
//! a guest, in `skiff_devices::virtio::seccomp`.)

use std::time::{Duration, Instant};

use skiff_tests::debug_vm_config;
use skiff_vmm::api::TestThread;
use skiff_vmm::{ExitReason, SeccompMode, VmConfig, VmmAction, VmmError, VmmHandle};

fn started_vm(console: &std::path::Path, args: &[&str]) -> VmmHandle {
    let vmm = VmmHandle::spawn(Instant::now()).unwrap();
    vmm.configure(VmConfig {
        seccomp: SeccompMode::Enforce,
        ..debug_vm_config(console, args)
    })
    .unwrap();
    vmm.start().unwrap();
    vmm
}

fn violation(thread: &str) -> ExitReason {
    ExitReason::SeccompViolation {
        thread: thread.into(),
        syscall: libc::SYS_uname,
    }
}

#[test]
fn a_forbidden_call_on_a_vcpu_or_the_vmm_thread_ends_only_its_vm() {
    let dir = std::env::temp_dir().join(format!("skiff-seccomp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A bystander VM that boots and runs a command to its end meanwhile.
    let bystander = started_vm(&dir.join("bystander.log"), &["echo", "bystander done"]);

    // A vCPU.
    let vm = started_vm(&dir.join("vcpu.log"), &["sleep", "600"]);
    vm.request(VmmAction::ForbiddenSyscall(TestThread::Vcpu(0)))
        .unwrap();
    let exit = vm
        .wait_exit(Some(Duration::from_secs(30)))
        .expect("the VM ends");
    assert_eq!(exit.reason, violation("skiff-vcpu0"));
    assert!(
        exit.reason
            .to_string()
            .contains("skiff-vcpu0 made forbidden syscall 63 (uname)"),
        "{}",
        exit.reason
    );
    let started = Instant::now();
    drop(vm);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "teardown waited"
    );

    // The VMM thread: it never answers that request, and says so.
    let vm = started_vm(&dir.join("vmm.log"), &["sleep", "600"]);
    let started = Instant::now();
    let answer = vm.request(VmmAction::ForbiddenSyscall(TestThread::Vmm));
    assert!(matches!(answer, Err(VmmError::VmmGone)), "{answer:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let exit = vm
        .wait_exit(Some(Duration::from_secs(30)))
        .expect("the VM ends");
    assert_eq!(exit.reason, violation("skiff-vmm"));
    assert!(vm.pause().is_err(), "a stopped VMM thread takes no request");
    let started = Instant::now();
    drop(vm);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "teardown waited"
    );

    // Nothing else in the process was harmed.
    let exit = bystander
        .wait_exit(Some(Duration::from_secs(400)))
        .expect("the bystander guest exits");
    let output = std::fs::read_to_string(dir.join("bystander.log")).unwrap();
    assert_eq!(exit.reason, ExitReason::GuestShutdown, "console:\n{output}");
    assert!(output.contains("bystander done"), "console:\n{output}");
    drop(bystander);
    let _ = std::fs::remove_dir_all(&dir);
}
