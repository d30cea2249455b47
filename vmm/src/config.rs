//! What a VM is made of, checked before anything is created.
//!
//! The VMM boots whatever command line it is given: the profile this
//! project's guest kernel needs is `skiff_guest_abi::cmdline`, chosen by
//! the runtime or vm-run (with [`host_has_hardware_virt`]). Flag syntax
//! (`--disk path=...`) belongs to vm-run, which parses it into these types.

pub use skiff_confine::SeccompMode;
use std::path::PathBuf;

/// Where the serial console goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConsoleConfig {
    /// The VMM's stdout (and stdin, when it is readable).
    Stdio,
    /// Appended to a file, which is rotated to `<file>.1` past
    /// [`CONSOLE_LOG_LIMIT`](crate::console_log::CONSOLE_LOG_LIMIT) so a
    /// guest cannot fill the host's disk.
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
    /// Virtio devices, in the order the guest will number them.
    pub devices: Vec<DeviceConfig>,
    /// Empty virtio-mmio slots declared after `devices`, where devices can
    /// be added while the VM runs ([`crate::device_manager`]).
    pub hotplug_slots: u8,
    /// How the VM's threads are confined (docs/seccomp.md): each installs
    /// its seccomp filter and drops its capabilities, and the virtio-fs
    /// thread is jailed in its share; `Off` does none of it.
    pub seccomp: SeccompMode,
}

/// A virtio device to attach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceConfig {
    Block(BlockConfig),
    Net(NetConfig),
    Vsock(VsockConfig),
    Fs(FsConfig),
}

/// virtio-blk over a raw image file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockConfig {
    pub path: PathBuf,
    pub read_only: bool,
    /// Open with O_DIRECT, bypassing the host page cache.
    pub direct: bool,
}

/// virtio-net over a tap device (its name is at most `IFNAMSIZ - 1` bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    pub tap: String,
    pub mac: Option<[u8; 6]>,
}

/// virtio-vsock over Firecracker's hybrid Unix socket; the guest CID is
/// 3 or more (0-2 are reserved).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsockConfig {
    pub guest_cid: u32,
    pub socket: PathBuf,
}

/// virtio-fs share of a host directory; the tag is at most 36 bytes (the
/// size of the config space's tag field).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsConfig {
    pub tag: String,
    pub path: PathBuf,
    pub read_only: bool,
    pub cache: FsCache,
}

/// How long the guest may cache file data and attributes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FsCache {
    Never,
    #[default]
    Auto,
    Always,
}

/// Parses `aa:bb:cc:dd:ee:ff`, the way the runtime gets MACs from CNI and
/// vm-run from its `--net` flag.
pub fn parse_mac(text: &str) -> Result<[u8; 6], ConfigError> {
    let bad = || ConfigError::BadMac(text.to_string());
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next().filter(|p| p.len() == 2).ok_or_else(bad)?;
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(mac)
}

/// Errors in a [`VmConfig`] found before anything is created, or in a MAC
/// address given for one.
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
    #[error("`{0}` is not a MAC address like 02:00:00:00:00:01")]
    BadMac(String),
}

/// Smallest memory we accept: the kernel alone takes more than this.
pub const MIN_MEMORY_MIB: u64 = 16;

/// Whether this host's CPU has VMX or SVM, i.e. KVM runs guests in
/// hardware rather than emulating the guest kernel: what decides whether
/// a guest needs `skiff_guest_abi::cmdline::SOFTWARE_KVM_CMDLINE`.
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

/// Fds each virtio device holds whatever the guest does: its backend, the
/// transport's irqfd and queue eventfds, the worker's epoll and kill
/// eventfd, with room to spare.
const FDS_PER_DEVICE: u64 = 16;
/// Fds of the VM itself: /dev/kvm, the VM, each vCPU with room, the
/// legacy devices' eventfds, the console log, the launcher's eventfds.
const FDS_PER_VM: u64 = 64;

impl VmConfig {
    /// The most fds this VM holds at once, whatever its guest does: each
    /// virtio-fs share holds at most `FsLimits::max_fds` for the guest,
    /// a vsock device at most one host stream per connection, and every
    /// hotplug slot may get a disk. What the owner sizes `RLIMIT_NOFILE`
    /// by.
    pub fn max_fds(&self) -> u64 {
        let guest_grown = |d: &DeviceConfig| -> u64 {
            match d {
                DeviceConfig::Fs(_) => {
                    skiff_devices::virtio::fs::FsLimits::default().max_fds() as u64
                }
                DeviceConfig::Vsock(_) => skiff_devices::virtio::vsock::MAX_CONNECTIONS as u64,
                DeviceConfig::Block(_) | DeviceConfig::Net(_) => 0,
            }
        };
        let devices = self.devices.len() as u64 + u64::from(self.hotplug_slots);
        FDS_PER_VM
            + u64::from(self.vcpus) * 2
            + devices * FDS_PER_DEVICE
            + self.devices.iter().map(guest_grown).sum::<u64>()
    }

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
            cmdline: "console=ttyS0".into(),
            vcpus: 1,
            memory_mib: 128,
            console: ConsoleConfig::Off,
            devices: Vec::new(),
            hotplug_slots: 0,
            seccomp: SeccompMode::Enforce,
        }
    }

    #[test]
    fn parses_macs() {
        assert_eq!(parse_mac("02:00:00:00:00:0a"), Ok([2, 0, 0, 0, 0, 0x0a]));
        assert_eq!(parse_mac("02:00"), Err(ConfigError::BadMac("02:00".into())));
        assert!(parse_mac("02:00:00:00:00:0a:0b").is_err());
        assert!(parse_mac("02:00:00:00:00:0g").is_err());
        assert!(parse_mac("2:00:00:00:00:0a").is_err());
    }

    #[test]
    fn detects_vmx_and_svm_flags_only() {
        assert!(cpuinfo_has_hardware_virt("flags\t\t: fpu vme vmx sse\n"));
        assert!(cpuinfo_has_hardware_virt("flags\t: fpu svm\n"));
        assert!(!cpuinfo_has_hardware_virt("flags\t: fpu vmxx hypervisor\n"));
        assert!(!cpuinfo_has_hardware_virt("model name : vmx\n"));
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
