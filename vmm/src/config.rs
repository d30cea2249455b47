//! What a VM is made of, and the guest command line this project's kernel
//! needs.

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

/// virtio-blk over a raw image file: `path=FILE[,ro][,direct]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockConfig {
    pub path: PathBuf,
    pub read_only: bool,
    /// Open with O_DIRECT, bypassing the host page cache.
    pub direct: bool,
}

/// Shown as the flag value it came from, for error messages.
impl std::fmt::Display for BlockConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "path={}", self.path.display())?;
        if self.read_only {
            f.write_str(",ro")?;
        }
        if self.direct {
            f.write_str(",direct")?;
        }
        Ok(())
    }
}

/// virtio-net over a tap device: `tap=NAME[,mac=MAC]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    pub tap: String,
    pub mac: Option<[u8; 6]>,
}

/// virtio-vsock: `cid=N,socket=PATH` (Firecracker's hybrid Unix socket).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsockConfig {
    pub guest_cid: u32,
    pub socket: PathBuf,
}

/// virtio-fs share of a host directory: `tag=TAG,path=DIR[,ro][,cache=never|auto|always]`.
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

/// Splits `key=value,flag,...` into pairs; a bare word has no value.
fn options(spec: &str) -> Result<Vec<(&str, Option<&str>)>, String> {
    spec.split(',')
        .map(|part| match part.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k, Some(v))),
            None if !part.is_empty() => Ok((part, None)),
            _ => Err(format!("`{part}` is not key=value")),
        })
        .collect()
}

fn unknown(key: &str, allowed: &str) -> String {
    format!("unknown option `{key}` (expected {allowed})")
}

fn required<T>(value: Option<T>, key: &str) -> Result<T, String> {
    value.ok_or_else(|| format!("`{key}=` is required"))
}

fn value<'a>(key: &str, v: Option<&'a str>) -> Result<&'a str, String> {
    match v {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(format!("`{key}` needs a value")),
    }
}

fn flag(key: &str, v: Option<&str>) -> Result<bool, String> {
    match v {
        None => Ok(true),
        Some(v) => Err(format!("`{key}` takes no value (got `{v}`)")),
    }
}

impl std::str::FromStr for BlockConfig {
    type Err = String;
    fn from_str(spec: &str) -> Result<Self, String> {
        let (mut path, mut read_only, mut direct) = (None, false, false);
        for (k, v) in options(spec)? {
            match k {
                "path" => path = Some(PathBuf::from(value(k, v)?)),
                "ro" => read_only = flag(k, v)?,
                "direct" => direct = flag(k, v)?,
                _ => return Err(unknown(k, "path=, ro, direct")),
            }
        }
        Ok(Self {
            path: required(path, "path")?,
            read_only,
            direct,
        })
    }
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let bad = || format!("`{text}` is not a MAC address like 02:00:00:00:00:01");
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

impl std::str::FromStr for NetConfig {
    type Err = String;
    fn from_str(spec: &str) -> Result<Self, String> {
        let (mut tap, mut mac) = (None, None);
        for (k, v) in options(spec)? {
            match k {
                "tap" => {
                    let name = value(k, v)?;
                    if name.len() >= libc::IFNAMSIZ {
                        return Err(format!(
                            "tap name `{name}` is longer than {} bytes",
                            libc::IFNAMSIZ - 1
                        ));
                    }
                    tap = Some(name.to_string());
                }
                "mac" => mac = Some(parse_mac(value(k, v)?)?),
                _ => return Err(unknown(k, "tap=, mac=")),
            }
        }
        Ok(Self {
            tap: required(tap, "tap")?,
            mac,
        })
    }
}

impl std::str::FromStr for VsockConfig {
    type Err = String;
    fn from_str(spec: &str) -> Result<Self, String> {
        let (mut cid, mut socket) = (None, None);
        for (k, v) in options(spec)? {
            match k {
                "cid" => {
                    let text = value(k, v)?;
                    let n: u32 = text
                        .parse()
                        .map_err(|_| format!("cid `{text}` is not a number"))?;
                    // 0-2 are reserved (hypervisor, local, host).
                    if n < 3 {
                        return Err(format!("cid {n} is reserved; use 3 or more"));
                    }
                    cid = Some(n);
                }
                "socket" => socket = Some(PathBuf::from(value(k, v)?)),
                _ => return Err(unknown(k, "cid=, socket=")),
            }
        }
        Ok(Self {
            guest_cid: required(cid, "cid")?,
            socket: required(socket, "socket")?,
        })
    }
}

impl std::str::FromStr for FsConfig {
    type Err = String;
    fn from_str(spec: &str) -> Result<Self, String> {
        let (mut tag, mut path, mut read_only, mut cache) = (None, None, false, FsCache::Auto);
        for (k, v) in options(spec)? {
            match k {
                "tag" => {
                    let t = value(k, v)?;
                    // The tag field of the config space is 36 bytes.
                    if t.len() > 36 {
                        return Err(format!("tag `{t}` is longer than 36 bytes"));
                    }
                    tag = Some(t.to_string());
                }
                "path" => path = Some(PathBuf::from(value(k, v)?)),
                "ro" => read_only = flag(k, v)?,
                "cache" => {
                    cache = match value(k, v)? {
                        "never" => FsCache::Never,
                        "auto" => FsCache::Auto,
                        "always" => FsCache::Always,
                        other => {
                            return Err(format!("cache `{other}` is not never, auto or always"))
                        }
                    }
                }
                _ => return Err(unknown(k, "tag=, path=, ro, cache=")),
            }
        }
        Ok(Self {
            tag: required(tag, "tag")?,
            path: required(path, "path")?,
            read_only,
            cache,
        })
    }
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
/// reaches only processes that inherit /init's environment.
pub const SOFTWARE_KVM_CMDLINE: &str = "skiff.swkvm \
clearcpuid=popcnt,cx16,xsave,rdrand,rdseed,fsgsbase,pcid,invpcid,smap,erms,fsrm,rep_good \
noreplace-smp percpu_alloc=page rodata=off rcupdate.rcu_cpu_stall_suppress=1 \
GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX,-AVX2,-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,\
-AVX512CD,-AVX_Fast_Unaligned_Load,-FMA,-FMA4";

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
            cmdline: BASE_CMDLINE.into(),
            vcpus: 1,
            memory_mib: 128,
            console: ConsoleConfig::Off,
            devices: Vec::new(),
            hotplug_slots: 0,
            seccomp: SeccompMode::Enforce,
        }
    }

    #[test]
    fn parses_device_flags() {
        let blk: BlockConfig = "path=/img,ro".parse().unwrap();
        assert_eq!(
            (blk.path.to_str(), blk.read_only, blk.direct),
            (Some("/img"), true, false)
        );
        assert!("ro".parse::<BlockConfig>().unwrap_err().contains("path="));
        assert!("path=/img,rw"
            .parse::<BlockConfig>()
            .unwrap_err()
            .contains("unknown option `rw`"));
        assert!("path=/img,ro=1".parse::<BlockConfig>().is_err());
        assert!("path=".parse::<BlockConfig>().is_err());
        let spec = "path=/i,ro,direct";
        assert_eq!(spec.parse::<BlockConfig>().unwrap().to_string(), spec);

        let net: NetConfig = "tap=tap0,mac=02:00:00:00:00:0a".parse().unwrap();
        assert_eq!(net.mac, Some([2, 0, 0, 0, 0, 0x0a]));
        assert!("tap=tap0,mac=02:00".parse::<NetConfig>().is_err());
        assert!("tap=a-very-long-tap-name".parse::<NetConfig>().is_err());

        let vsock: VsockConfig = "cid=3,socket=/tmp/v.sock".parse().unwrap();
        assert_eq!(vsock.guest_cid, 3);
        assert!("cid=2,socket=/x"
            .parse::<VsockConfig>()
            .unwrap_err()
            .contains("reserved"));
        assert!("cid=x,socket=/x".parse::<VsockConfig>().is_err());

        let fs: FsConfig = "tag=share,path=/srv,ro,cache=never".parse().unwrap();
        assert_eq!((fs.read_only, fs.cache), (true, FsCache::Never));
        assert!("tag=share"
            .parse::<FsConfig>()
            .unwrap_err()
            .contains("path="));
        assert!("tag=s,path=/p,cache=sometimes".parse::<FsConfig>().is_err());
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
