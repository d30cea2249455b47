//! PID 1 duties in the guest: signal boot-to-agent to the VMM, mount the
//! kernel filesystems containers and the agent rely on, and power the VM
//! off. Skipped in host mode (tests).

use std::path::Path;

use nix::mount::{mount, MsFlags};
use nix::sys::stat::Mode;
use nix::unistd::mkdir;
// The VMM's boot timer: a write of BOOT_TIMER_MAGIC to BOOT_TIMER_PORT is
// timed as "guest init reached".
use skiff_guest_abi::boot_timer::{BOOT_TIMER_MAGIC, BOOT_TIMER_PORT};

/// Errors setting up the guest system.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("mount {fstype} on {target}: {source}")]
    Mount {
        fstype: &'static str,
        target: &'static str,
        source: nix::Error,
    },
}

/// Tells the VMM the agent has started. Best effort: without the I/O
/// permission (not PID 1 as root) nothing is written.
pub fn signal_boot_timer() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: ioperm only changes this process's I/O bitmap; the outb is
    // done only if it was granted, and port 0x440 is the VMM's boot timer.
    unsafe {
        if libc::ioperm(BOOT_TIMER_PORT as libc::c_ulong, 1, 1) == 0 {
            std::arch::asm!("out dx, al", in("dx") BOOT_TIMER_PORT, in("al") BOOT_TIMER_MAGIC,
                options(nomem, nostack, preserves_flags));
            libc::ioperm(BOOT_TIMER_PORT as libc::c_ulong, 1, 0);
        }
    }
}

/// (fstype, source, target, flags, data) of the mounts PID 1 makes.
type MountEntry = (
    &'static str,
    &'static str,
    &'static str,
    MsFlags,
    Option<&'static str>,
);

fn system_mounts() -> [MountEntry; 7] {
    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    [
        ("proc", "proc", "/proc", nosuid_nodev_noexec, None),
        ("sysfs", "sysfs", "/sys", nosuid_nodev_noexec, None),
        (
            "devtmpfs",
            "dev",
            "/dev",
            MsFlags::MS_NOSUID,
            Some("mode=0755"),
        ),
        (
            "devpts",
            "devpts",
            "/dev/pts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=0620"),
        ),
        (
            "tmpfs",
            "shm",
            "/dev/shm",
            nosuid_nodev_noexec,
            Some("mode=1777"),
        ),
        (
            "cgroup2",
            "cgroup2",
            "/sys/fs/cgroup",
            nosuid_nodev_noexec,
            Some("nsdelegate"),
        ),
        (
            "tmpfs",
            "run",
            "/run",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755"),
        ),
    ]
}

/// Mounts proc, sys, dev (+pts, shm), cgroup2 and /run. An already
/// mounted target (EBUSY) is fine: a kernel with devtmpfs.mount=1 did it.
pub fn mount_system() -> Result<(), InitError> {
    for (fstype, source, target, flags, data) in system_mounts() {
        if !Path::new(target).exists() {
            let _ = mkdir(target, Mode::from_bits_truncate(0o755));
        }
        match mount(Some(source), target, Some(fstype), flags, data) {
            Ok(()) | Err(nix::Error::EBUSY) => {}
            Err(source) => {
                return Err(InitError::Mount {
                    fstype,
                    target,
                    source,
                })
            }
        }
    }
    Ok(())
}

/// Powers the VM off: the kernel is booted with `reboot=k`, so the reset
/// goes through the i8042, which the VMM turns into a clean exit.
pub fn power_off() -> ! {
    nix::unistd::sync();
    let err = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    tracing::error!("reboot failed: {err:?}");
    std::process::exit(1)
}
