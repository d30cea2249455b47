//! The guest kernel command line this project's kernel
//! (resources/kernel/) needs, and how init arguments are appended to it.
//!
//! This is a contract with the guest, not a VMM concern: the VMM boots
//! whatever command line it is given; the runtime and vm-run pick this
//! profile for the host they run on. `guest/image/qemu-boot.sh` keeps a
//! shell copy, which a test below checks.

/// Errors building a command line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CmdlineError {
    /// The kernel's parser has no escape for these, so the argument would
    /// reach init cut or merged with the next.
    #[error("a guest init argument cannot contain a double quote or newline: {0:?}")]
    BadInitArg(String),
}

/// Options every host needs: serial console, restart through the i8042
/// (the VMM turns it into a clean exit), reboot at once on panic, skip
/// timer checks and port 0x80 delays that only cost VM exits.
pub const BASE_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 quiet tsc=reliable \
no_timer_check io_delay=none 8250.nr_uarts=1 rcupdate.rcu_expedited=1";

/// The word that turns on the guest kernel's workarounds for KVM without
/// VMX/SVM (resources/kernel/patches/); the first of
/// [`SOFTWARE_KVM_CMDLINE`].
pub const SOFTWARE_KVM_FLAG: &str = "skiff.swkvm";

/// Options only hosts whose KVM has no VMX/SVM need (see
/// resources/kernel/README.md): enable the guest kernel's workarounds,
/// hide CPU features the instruction emulator cannot execute or runs
/// slowly (string copies), and skip boot work that costs seconds when
/// every guest kernel instruction is emulated. `rodata=off` gives up
/// write-protection of the guest kernel's text on these hosts only.
///
/// `GLIBC_TUNABLES=...` is not a kernel option: the kernel hands it to
/// /init as an environment variable.  Guest user mode runs natively there
/// and sees the host's AVX/AVX-512 (CPUID, XCR0), but the guest kernel can
/// only switch the FXSAVE state (the emulator has no XSAVE/XSETBV), so
/// YMM/ZMM upper halves leak between guest processes and glibc's AVX
/// string functions corrupt memory.  The tunable keeps glibc on SSE2; it
/// reaches only processes that inherit /init's environment (the agent
/// passes it on to container processes).
pub const SOFTWARE_KVM_CMDLINE: &str = "skiff.swkvm \
clearcpuid=popcnt,cx16,xsave,rdrand,rdseed,fsgsbase,pcid,invpcid,smap,erms,fsrm,rep_good \
noreplace-smp percpu_alloc=page rodata=off rcupdate.rcu_cpu_stall_suppress=1 \
GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX,-AVX2,-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,\
-AVX512CD,-AVX_Fast_Unaligned_Load,-FMA,-FMA4";

/// The default command line for a host with (`true`) or without VMX/SVM;
/// the host side finds out with `skiff_vmm::config::host_has_hardware_virt`.
pub fn default_cmdline(host_has_hardware_virt: bool) -> String {
    if host_has_hardware_virt {
        BASE_CMDLINE.to_string()
    } else {
        format!("{BASE_CMDLINE} {SOFTWARE_KVM_CMDLINE}")
    }
}

/// Appends init arguments after `--`, quoting those with spaces the way
/// the kernel's parser understands.
pub fn append_init_args(cmdline: &str, args: &[String]) -> Result<String, CmdlineError> {
    if args.is_empty() {
        return Ok(cmdline.to_string());
    }
    let mut out = format!("{cmdline} --");
    for arg in args {
        if arg.contains('"') || arg.contains('\n') {
            return Err(CmdlineError::BadInitArg(arg.clone()));
        }
        if arg.is_empty() || arg.contains(char::is_whitespace) {
            out.push_str(&format!(" \"{arg}\""));
        } else {
            out.push(' ');
            out.push_str(arg);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn software_kvm_hosts_get_the_workarounds() {
        assert!(!default_cmdline(true).contains(SOFTWARE_KVM_FLAG));
        let soft = default_cmdline(false);
        assert!(soft.starts_with(BASE_CMDLINE));
        assert!(soft.contains(SOFTWARE_KVM_FLAG) && soft.contains("clearcpuid="));
        assert!(SOFTWARE_KVM_CMDLINE.starts_with(SOFTWARE_KVM_FLAG));
    }

    #[test]
    fn init_args_follow_a_double_dash_and_keep_spaces() {
        let args = vec!["sh".into(), "-c".into(), "echo a b".into()];
        assert_eq!(
            append_init_args("quiet", &args).unwrap(),
            "quiet -- sh -c \"echo a b\""
        );
        assert_eq!(append_init_args("quiet", &[]).unwrap(), "quiet");
        assert!(matches!(
            append_init_args("quiet", &["a\"b".into()]),
            Err(CmdlineError::BadInitArg(_))
        ));
    }

    /// The QEMU comparison script keeps a shell copy of the profile.
    #[test]
    fn the_qemu_boot_script_uses_the_same_profile() {
        let script = include_str!("../../image/qemu-boot.sh");
        assert!(
            script.contains(&format!("base=\"{BASE_CMDLINE}\"")),
            "guest/image/qemu-boot.sh's base= differs"
        );
        assert!(
            script.contains(&format!("swkvm=\"{SOFTWARE_KVM_CMDLINE}\"")),
            "guest/image/qemu-boot.sh's swkvm= differs"
        );
    }
}
