//! vm-run refuses bad input with one clear line and exit status 2, before
//! any guest runs (these tests boot nothing).

use std::io::Write;
use std::time::{Duration, Instant};

use skiff_tests::{debug_initramfs, kernel, repo_root, vm_run, VmRun};

fn assert_fails_with(run: &VmRun, needle: &str) {
    assert_eq!(run.status, Some(2), "stderr:\n{}", run.stderr);
    let lines: Vec<_> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line, got:\n{}", run.stderr);
    assert!(
        lines[0].contains(needle),
        "expected {needle:?} in: {}",
        lines[0]
    );
    assert!(run.stdout.is_empty(), "guest output: {}", run.stdout);
}

fn temp_file(name: &str, len: u64) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("skiff-{}-{name}", std::process::id()));
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(len).unwrap();
    path
}

#[test]
fn missing_kernel() {
    let run = vm_run(&["--kernel", "/nonexistent/vmlinux"]);
    assert_fails_with(&run, "cannot read kernel /nonexistent/vmlinux");
}

#[test]
fn unreadable_kernel_is_a_directory() {
    let run = vm_run(&["--kernel", "/tmp"]);
    assert_fails_with(&run, "cannot read kernel /tmp");
}

#[test]
fn file_that_is_not_a_kernel() {
    let not_kernel = repo_root().join("Cargo.toml");
    let run = vm_run(&["--kernel", not_kernel.to_str().unwrap()]);
    assert_fails_with(&run, "is not a kernel");
}

#[test]
fn truncated_kernels() {
    let header_only = temp_file("header-only-elf", 0);
    std::fs::File::create(&header_only)
        .unwrap()
        .write_all(b"\x7fELF")
        .unwrap();
    let run = vm_run(&["--kernel", header_only.to_str().unwrap()]);
    let _ = std::fs::remove_file(&header_only);
    assert_fails_with(&run, "is truncated");

    let cut = temp_file("cut-vmlinux", 0);
    let image = std::fs::read(kernel()).unwrap();
    std::fs::write(&cut, &image[..image.len() / 4]).unwrap();
    let run = vm_run(&["--kernel", cut.to_str().unwrap()]);
    let _ = std::fs::remove_file(&cut);
    assert_fails_with(&run, "is truncated");
}

#[test]
fn initrd_larger_than_guest_memory() {
    let kernel = kernel();
    let initrd = temp_file("huge-initrd", 200 << 20);
    let run = vm_run(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--memory",
        "64",
    ]);
    let _ = std::fs::remove_file(&initrd);
    assert_fails_with(&run, "does not fit in guest memory");
}

#[test]
fn memory_too_small_for_the_kernel() {
    let kernel = kernel();
    let run = vm_run(&["--kernel", kernel.to_str().unwrap(), "--memory", "20"]);
    assert_fails_with(&run, "too small for kernel");
}

#[test]
fn memory_below_the_minimum() {
    let kernel = kernel();
    let run = vm_run(&["--kernel", kernel.to_str().unwrap(), "--memory", "1"]);
    assert_fails_with(&run, "at least 16 MiB");
}

#[test]
fn more_vcpus_than_kvm_allows() {
    let kernel = kernel();
    let run = vm_run(&["--kernel", kernel.to_str().unwrap(), "--cpus", "255"]);
    assert_fails_with(&run, "255 vCPUs requested");
}

#[test]
fn bad_flag_values_name_the_flag() {
    let run = vm_run(&["--kernel", "k", "--console", "serial"]);
    assert_eq!(run.status, Some(2));
    assert!(run.stderr.contains("--console"), "{}", run.stderr);
    let run = vm_run(&["--kernel", "k", "--cpus", "0"]);
    assert_eq!(run.status, Some(2));
    assert!(run.stderr.contains("--cpus"), "{}", run.stderr);
}

/// A guest still running at the deadline is stopped: vm-run fails with a
/// timeout and returns promptly.
#[test]
fn timeout_stops_a_running_guest() {
    let kernel = kernel();
    let initrd = debug_initramfs();
    let started = Instant::now();
    let run = vm_run(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--console",
        "off",
        "--timeout",
        "2",
    ]);
    assert_fails_with(&run, "timeout: the guest was still running after 2 s");
    assert!(started.elapsed() < Duration::from_secs(30));
}
