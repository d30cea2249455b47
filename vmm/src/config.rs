//! What a VM is made of, and the guest command line this project's kernel
//! needs.

use std::path::PathBuf;

/// Where the serial console goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConsoleConfig {
    /// The VMM's stdout (and stdin, when it is readable).
    Stdio,
    /// Appended to a file.
    File(PathBuf),
    /// Discarded (still watched for kernel panics).
    Off,
}

/// A VM to boot.
#[derive(Clone, Debug)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// The whole kernel command line.
    pub cmdline: String,
    pub vcpus: u8,
    pub memory_mib: u64,
    pub console: ConsoleConfig,
}

/// Errors in a [`VmConfig`] found before anything is created.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("a VM needs at least one vCPU")]
    NoVcpus,
    #[error("{requested} vCPUs requested, but {limit} is the most {why}")]
    TooManyVcpus {
        requested: u64,
        limit: u64,
        why: &'static str,
    },
    #[error("guest memory must be at least {min} MiB (got {got} MiB)")]
    MemoryTooSmall { min: u64, got: u64 },
    #[error("guest memory of {got} MiB is more than the {max} MiB a VM may have")]
    MemoryTooLarge { got: u64, max: u64 },
    #[error("the kernel command line is {len} bytes; the limit is {max}")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("a guest init argument cannot contain a double quote or newline: {0:?}")]
    BadInitArg(String),
}

/// Smallest memory we accept: the kernel alone takes more than this.
pub const MIN_MEMORY_MIB: u64 = 16;

/// Options every host needs: serial console, restart through the i8042
/// (the VMM turns it into a clean exit), reboot at once on panic, skip
/// timer checks and port 0x80 delays that only cost VM exits.
pub const BASE_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 quiet tsc=reliable \
no_timer_check io_delay=none 8250.nr_uarts=1 rcupdate.rcu_expedited=1";

/// Options only hosts whose KVM has no VMX/SVM need (see
/// resources/kernel/patches): enable the guest kernel's workarounds, hide
/// CPU features the instruction emulator cannot execute, and silence RCU
/// stall warnings that emulated vCPUs trip.
pub const SOFTWARE_KVM_CMDLINE: &str = "skiff.swkvm \
clearcpuid=popcnt,cx16,xsave,rdrand,rdseed,fsgsbase,pcid,invpcid,smap \
rcupdate.rcu_cpu_stall_suppress=1";

/// The default command line for this host.
pub fn default_cmdline(host_has_hardware_virt: bool) -> String {
    if host_has_hardware_virt {
        BASE_CMDLINE.to_string()
    } else {
        format!("{BASE_CMDLINE} {SOFTWARE_KVM_CMDLINE}")
    }
}

/// Whether this host's CPU has VMX or SVM, i.e. KVM runs guests in
/// hardware rather than emulating the guest kernel.
pub fn host_has_hardware_virt() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|info| cpuinfo_has_hardware_virt(&info))
        .unwrap_or(true)
}

fn cpuinfo_has_hardware_virt(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

/// Appends init arguments after `--`, quoting those with spaces the way
/// the kernel's parser understands.
pub fn append_init_args(cmdline: &str, args: &[String]) -> Result<String, ConfigError> {
    if args.is_empty() {
        return Ok(cmdline.to_string());
    }
    let mut out = format!("{cmdline} --");
    for arg in args {
        if arg.contains('"') || arg.contains('\n') {
            return Err(ConfigError::BadInitArg(arg.clone()));
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

impl VmConfig {
    /// Checks what can be checked without touching KVM; `max_vcpus` is the
    /// lower of KVM's and the MP table's limits.
    pub fn validate(&self, max_vcpus: u64) -> Result<(), ConfigError> {
        if self.vcpus == 0 {
            return Err(ConfigError::NoVcpus);
        }
        if u64::from(self.vcpus) > max_vcpus {
            return Err(ConfigError::TooManyVcpus {
                requested: self.vcpus.into(),
                limit: max_vcpus,
                why: "this host's KVM and the MP table allow",
            });
        }
        if self.memory_mib < MIN_MEMORY_MIB {
            return Err(ConfigError::MemoryTooSmall {
                min: MIN_MEMORY_MIB,
                got: self.memory_mib,
            });
        }
        let max = crate::arch::layout::MAX_MEMORY_MIB;
        if self.memory_mib > max {
            return Err(ConfigError::MemoryTooLarge {
                got: self.memory_mib,
                max,
            });
        }
        let max_len = crate::arch::layout::CMDLINE_MAX_SIZE - 1;
        if self.cmdline.len() > max_len {
            return Err(ConfigError::CmdlineTooLong {
                len: self.cmdline.len(),
                max: max_len,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> VmConfig {
        VmConfig {
            kernel: "vmlinux".into(),
            initrd: None,
            cmdline: BASE_CMDLINE.into(),
            vcpus: 1,
            memory_mib: 128,
            console: ConsoleConfig::Off,
        }
    }

    #[test]
    fn software_kvm_hosts_get_the_workarounds() {
        assert!(!default_cmdline(true).contains("skiff.swkvm"));
        let soft = default_cmdline(false);
        assert!(soft.starts_with(BASE_CMDLINE));
        assert!(soft.contains("skiff.swkvm") && soft.contains("clearcpuid="));
    }

    #[test]
    fn detects_vmx_and_svm_flags_only() {
        assert!(cpuinfo_has_hardware_virt("flags\t\t: fpu vme vmx sse\n"));
        assert!(cpuinfo_has_hardware_virt("flags\t: fpu svm\n"));
        assert!(!cpuinfo_has_hardware_virt("flags\t: fpu vmxx hypervisor\n"));
        assert!(!cpuinfo_has_hardware_virt("model name : vmx\n"));
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
            Err(ConfigError::BadInitArg(_))
        ));
    }

    #[test]
    fn validation_names_the_problem() {
        assert!(config().validate(8).is_ok());
        let mut c = config();
        c.vcpus = 0;
        assert_eq!(c.validate(8), Err(ConfigError::NoVcpus));
        c.vcpus = 9;
        assert!(matches!(
            c.validate(8),
            Err(ConfigError::TooManyVcpus {
                requested: 9,
                limit: 8,
                ..
            })
        ));
        let mut c = config();
        c.memory_mib = 8;
        assert!(matches!(
            c.validate(8),
            Err(ConfigError::MemoryTooSmall { .. })
        ));
        let mut c = config();
        c.cmdline = "x".repeat(4096);
        assert!(matches!(
            c.validate(8),
            Err(ConfigError::CmdlineTooLong { .. })
        ));
    }
}
