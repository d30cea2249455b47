//! What the VMM's own threads may do once confined: the vCPU threads and
//! the VMM thread (device workers are in `skiff_devices::virtio::seccomp`).
//! docs/seccomp.md lists the same tables with the reason for each entry.
//!
//! Both confine themselves once the VM is built and started: everything
//! they open is open, and what they would otherwise need later (device
//! activation, creating a hot-added device, tearing the VM down) runs on
//! the VM's launcher (`skiff_confine::launcher`).

use std::os::fd::RawFd;

use kvm_bindings::{
    kvm_debugregs, kvm_ioeventfd, kvm_irqfd, kvm_lapic_state, kvm_mp_state, kvm_msrs, kvm_regs,
    kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, KVMIO,
};
use skiff_confine::{with_common, Allowed, Check, ThreadPolicy};
use vmm_sys_util::signal::SIGRTMIN;
use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr, ioctl_iowr_nr};

ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
// What a snapshot reads of a paused vCPU (`vstate::vcpu_state`).
ioctl_iowr_nr!(KVM_GET_MSRS, KVMIO, 0x88, kvm_msrs);
ioctl_ior_nr!(KVM_GET_LAPIC, KVMIO, 0x8e, kvm_lapic_state);
ioctl_ior_nr!(KVM_GET_MP_STATE, KVMIO, 0x98, kvm_mp_state);
ioctl_ior_nr!(KVM_GET_VCPU_EVENTS, KVMIO, 0x9f, kvm_vcpu_events);
ioctl_ior_nr!(KVM_GET_DEBUGREGS, KVMIO, 0xa1, kvm_debugregs);
ioctl_ior_nr!(KVM_GET_XSAVE, KVMIO, 0xa4, kvm_xsave);
ioctl_ior_nr!(KVM_GET_XCRS, KVMIO, 0xa6, kvm_xcrs);
ioctl_iow_nr!(KVM_IRQFD, KVMIO, 0x76, kvm_irqfd);
ioctl_iow_nr!(KVM_IOEVENTFD, KVMIO, 0x79, kvm_ioeventfd);

fn ioctl(checks: Vec<Vec<Check>>) -> Allowed {
    Allowed::when(libc::SYS_ioctl, "ioctl", checks)
}

fn request(nr: libc::c_ulong) -> Check {
    Check::Eq(1, nr as u32)
}

/// A vCPU thread, whose vCPU fd is `vcpu_fd`: KVM_RUN and the exit
/// handlers it runs in place (serial, i8042, boot timer, virtio-mmio
/// registers, which hand device activation to the launcher).
pub fn vcpu(vcpu_fd: RawFd) -> ThreadPolicy {
    let on_fd = |nr| vec![Check::Eq(0, vcpu_fd as u32), request(nr)];
    ThreadPolicy {
        allowed: with_common(vec![
            // KVM_RUN on its own vCPU only; the registers to describe a
            // triple fault or an internal error, and with the rest of the
            // KVM_GET_* calls, to save the paused vCPU for a snapshot. The
            // KVM_SET_* calls of a restore run before the filter.
            ioctl(vec![
                on_fd(KVM_RUN()),
                on_fd(KVM_GET_REGS()),
                on_fd(KVM_GET_SREGS()),
                on_fd(KVM_GET_MSRS()),
                on_fd(KVM_GET_LAPIC()),
                on_fd(KVM_GET_MP_STATE()),
                on_fd(KVM_GET_VCPU_EVENTS()),
                on_fd(KVM_GET_DEBUGREGS()),
                on_fd(KVM_GET_XSAVE()),
                on_fd(KVM_GET_XCRS()),
            ]),
            // The console log's rotation (`console_log`): rename, then the
            // same append-only open as at build time.
            Allowed::always(libc::SYS_rename, "rename"),
            Allowed::when(
                libc::SYS_openat,
                "openat",
                vec![vec![
                    Check::Eq(0, libc::AT_FDCWD as u32),
                    Check::Eq(
                        2,
                        (libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT | libc::O_CLOEXEC) as u32,
                    ),
                ]],
            ),
        ]),
        keep_caps: Vec::new(),
        // The kick that takes the thread out of KVM_RUN.
        keep_signals: vec![SIGRTMIN()],
    }
}

/// The VMM thread, once the VM runs: its event loop, vsock connects,
/// pause and resume (kicking vCPUs), wiring and unwiring hot-plugged
/// devices (created on the launcher).
pub fn vmm() -> ThreadPolicy {
    let kick_or_abort = vec![
        vec![Check::Eq(2, SIGRTMIN() as u32)],
        vec![Check::Eq(2, libc::SIGABRT as u32)],
    ];
    ThreadPolicy {
        allowed: with_common(vec![
            Allowed::always(libc::SYS_epoll_wait, "epoll_wait"),
            Allowed::always(libc::SYS_epoll_pwait, "epoll_pwait"),
            Allowed::always(libc::SYS_epoll_ctl, "epoll_ctl"),
            Allowed::when(libc::SYS_tgkill, "tgkill", kick_or_abort),
            // The host end of a vsock connect, made non-blocking.
            Allowed::when(
                libc::SYS_socketpair,
                "socketpair",
                vec![vec![Check::Eq(0, libc::AF_UNIX as u32)]],
            ),
            // Hot-plug: a transport's eventfds and their routes.
            Allowed::always(libc::SYS_eventfd2, "eventfd2"),
            ioctl(vec![
                vec![request(libc::FIONBIO as libc::c_ulong)],
                vec![request(KVM_IRQFD())],
                vec![request(KVM_IOEVENTFD())],
            ]),
        ]),
        keep_caps: Vec::new(),
        keep_signals: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_confine::{filter, SeccompMode};

    #[test]
    fn ioctl_numbers_are_the_kernels() {
        assert_eq!(KVM_RUN(), 0xAE80);
        assert_eq!(KVM_GET_REGS(), 0x8090_AE81);
        assert_eq!(KVM_GET_SREGS(), 0x8138_AE83);
        assert_eq!(KVM_GET_MSRS(), 0xC008_AE88);
        assert_eq!(KVM_GET_LAPIC(), 0x8400_AE8E);
        assert_eq!(KVM_GET_MP_STATE(), 0x8004_AE98);
        assert_eq!(KVM_GET_VCPU_EVENTS(), 0x8040_AE9F);
        assert_eq!(KVM_GET_DEBUGREGS(), 0x8080_AEA1);
        assert_eq!(KVM_GET_XSAVE(), 0x9000_AEA4);
        assert_eq!(KVM_GET_XCRS(), 0x8188_AEA6);
        assert_eq!(KVM_IRQFD(), 0x4020_AE76);
        assert_eq!(KVM_IOEVENTFD(), 0x4040_AE79);
    }

    #[test]
    fn docs_seccomp_md_lists_exactly_these_tables() {
        use skiff_confine::docs::{allowed_by, documented_thread};
        const DOC: &str = include_str!("../../docs/seccomp.md");
        for (table, p) in [("vcpu", vcpu(3)), ("vmm", vmm())] {
            let doc = documented_thread(DOC, table);
            assert_eq!(allowed_by(&p), doc, "docs/seccomp.md, table {table}");
        }
    }

    #[test]
    fn the_vmm_filters_build() {
        for p in [vcpu(3), vmm()] {
            let program = filter::build(&p.allowed, SeccompMode::Enforce).unwrap();
            assert!(program.len() < 4096);
        }
    }
}
