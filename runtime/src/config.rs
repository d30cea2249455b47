//! The runtime's configuration: `/etc/skiff/configuration.toml`, or the
//! file `SKIFF_CONFIG` names, or a per-container file passed by containerd
//! as runtime options. Every key is optional; unknown keys are errors, so
//! a typo never silently falls back to a default.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use skiff_vmm::config::{FsCache, SeccompMode, MIN_MEMORY_MIB};

/// Where the runtime looks when `SKIFF_CONFIG` is not set.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/skiff/configuration.toml";
/// Environment variable naming another configuration file.
pub const CONFIG_ENV: &str = "SKIFF_CONFIG";

/// Where the guest kernel and initramfs are by default: the `build/guest`
/// directory of the source tree this runtime was built from, so a shim
/// built with `make` works right after `make guest`. Packagers set the
/// paths in the configuration file instead.
pub const DEFAULT_GUEST_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../build/guest");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("read configuration {path}: {err}")]
    Read { path: PathBuf, err: std::io::Error },
    #[error("configuration {path}: {err}")]
    Parse {
        path: PathBuf,
        err: Box<toml::de::Error>,
    },
    #[error("configured {what} {path} does not exist")]
    MissingFile { what: &'static str, path: PathBuf },
    #[error("configuration: {0}")]
    Invalid(String),
}

/// The virtio devices every sandbox VM boots with: vsock and the shared
/// directory (`sandbox::vm::config` builds them). Its pod interfaces come
/// on top; only the boot, which knows them, can check the full count.
pub const BOOT_DEVICES: usize = 2;
/// The VM's virtio-mmio slots less those every sandbox boots with.
const MAX_HOTPLUG_SLOTS: u8 = (skiff_vmm::device_manager::MAX_SLOTS - BOOT_DEVICES) as u8;

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    pub hypervisor: HypervisorConfig,
    pub shared_fs: SharedFsConfig,
    pub agent: AgentConfig,
    pub factory: FactoryConfig,
    pub log: LogConfig,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HypervisorConfig {
    /// Guest kernel: an uncompressed ELF vmlinux (PVH) or a bzImage.
    pub kernel: PathBuf,
    /// Guest initramfs with skiff-agent as /init.
    pub initrd: PathBuf,
    pub vcpus: u8,
    pub memory_mib: u64,
    /// Appended to the kernel command line Skiff builds.
    pub kernel_params: String,
    /// Keep the guest kernel's messages (no `quiet`) in the sandbox's
    /// `console.log` and copy them into the shim log.
    pub debug_console: bool,
    /// virtio-mmio slots kept free for devices added while the sandbox
    /// runs: block devices a container's spec passes in (`linux.devices`,
    /// `ctr run --device`, Kubernetes `volumeDevices`).
    pub hotplug_slots: u8,
    /// Confinement of the VMM's threads inside the shim (docs/seccomp.md):
    /// "enforce", "log" or "off".
    pub seccomp: SeccompMode,
    /// The shim (the VM's threads and memory) joins the sandbox
    /// container's cgroup (`linux.cgroupsPath`, cgroupfs form).
    pub sandbox_cgroup: bool,
}

impl Default for HypervisorConfig {
    fn default() -> Self {
        let guest = Path::new(DEFAULT_GUEST_DIR);
        Self {
            kernel: guest.join("vmlinux"),
            initrd: guest.join("initramfs.cpio"),
            vcpus: 1,
            memory_mib: 256,
            kernel_params: String::new(),
            debug_console: false,
            hotplug_slots: 4,
            seccomp: SeccompMode::Enforce,
            sandbox_cgroup: true,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SharedFsConfig {
    /// virtio-fs cache policy for container root filesystems:
    /// "never", "auto" or "always".
    pub cache: String,
    /// Size of the tmpfs the shared directory is (host RAM the guest can
    /// fill by writing to the share outside its containers' binds; the
    /// binds themselves are on their own filesystems).
    pub tmpfs_size_mib: u64,
}

impl Default for SharedFsConfig {
    fn default() -> Self {
        Self {
            cache: "auto".into(),
            tmpfs_size_mib: 16,
        }
    }
}

/// Inodes of the shared directory's tmpfs: a few per container are used
/// by the runtime, the rest is what the guest may create there.
pub const SHARED_FS_TMPFS_INODES: u64 = 16384;
/// Bounds of `shared_fs.tmpfs_size_mib`.
const SHARED_FS_TMPFS_MIB: std::ops::RangeInclusive<u64> = 1..=4096;

impl SharedFsConfig {
    pub fn cache_policy(&self) -> Result<FsCache, ConfigError> {
        match self.cache.as_str() {
            "never" => Ok(FsCache::Never),
            "auto" => Ok(FsCache::Auto),
            "always" => Ok(FsCache::Always),
            other => Err(ConfigError::Invalid(format!(
                "shared_fs.cache = {other:?}: expected \"never\", \"auto\" or \"always\""
            ))),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// How long the guest may take from VM start until the agent answers.
    /// Milliseconds on real hardware; minutes where KVM emulates the guest
    /// kernel.
    pub boot_timeout_secs: u64,
    /// Deadline of each non-blocking agent request.
    pub request_timeout_secs: u64,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            boot_timeout_secs: 600,
            request_timeout_secs: 120,
        }
    }
}

/// Where templates are kept by default: on the host's tmpfs, so the memory
/// file of a template is page cache that every VM restored from it maps.
pub const DEFAULT_TEMPLATE_DIR: &str = "/run/skiff/templates";

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FactoryConfig {
    /// Start each sandbox by restoring a template VM (booted once until
    /// its agent answered, then snapshotted) instead of booting it
    /// (docs/ARCHITECTURE.md, "Sandbox templates"). Off until it has been
    /// proven on hardware.
    pub template: bool,
    /// Where the templates are kept: root-only, and never inside anything
    /// a guest can write.
    pub template_dir: PathBuf,
}

impl Default for FactoryConfig {
    fn default() -> Self {
        Self {
            template: false,
            template_dir: DEFAULT_TEMPLATE_DIR.into(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter: "info", "debug", "skiff_runtime=debug", ...
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
        }
    }
}

impl RuntimeConfig {
    /// The configuration in effect: `explicit` (from runtime options) if
    /// given, else `SKIFF_CONFIG`, else the default path if it exists,
    /// else the built-in defaults. Validated.
    pub fn load(explicit: Option<&Path>) -> Result<Self, ConfigError> {
        let from_env = std::env::var_os(CONFIG_ENV).map(PathBuf::from);
        let config = match explicit.map(Path::to_path_buf).or(from_env) {
            Some(path) => Self::from_file(&path)?,
            None if Path::new(DEFAULT_CONFIG_PATH).exists() => {
                Self::from_file(Path::new(DEFAULT_CONFIG_PATH))?
            }
            None => Self::default(),
        };
        config.validate()?;
        Ok(config)
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError::Read {
            path: path.to_path_buf(),
            err,
        })?;
        Self::parse(&text).map_err(|err| ConfigError::Parse {
            path: path.to_path_buf(),
            err: Box::new(err),
        })
    }

    pub fn parse(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// Checks what can be checked before a VM is made, so a bad setting
    /// fails the request without leaving anything behind.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let hv = &self.hypervisor;
        for (what, path) in [("kernel", &hv.kernel), ("initrd", &hv.initrd)] {
            if !path.is_file() {
                return Err(ConfigError::MissingFile {
                    what,
                    path: path.clone(),
                });
            }
        }
        if hv.vcpus == 0 {
            return Err(ConfigError::Invalid(
                "hypervisor.vcpus must be at least 1".into(),
            ));
        }
        if hv.memory_mib < MIN_MEMORY_MIB {
            return Err(ConfigError::Invalid(format!(
                "hypervisor.memory_mib = {} is below the minimum of {MIN_MEMORY_MIB}",
                hv.memory_mib
            )));
        }
        if hv.hotplug_slots > MAX_HOTPLUG_SLOTS {
            return Err(ConfigError::Invalid(format!(
                "hypervisor.hotplug_slots = {} is above the maximum of {MAX_HOTPLUG_SLOTS}",
                hv.hotplug_slots
            )));
        }
        if hv.kernel_params.contains('"') {
            return Err(ConfigError::Invalid(
                "hypervisor.kernel_params must not contain '\"'".into(),
            ));
        }
        if self.agent.boot_timeout_secs == 0 || self.agent.request_timeout_secs == 0 {
            return Err(ConfigError::Invalid(
                "agent timeouts must be at least 1 second".into(),
            ));
        }
        if !self.factory.template_dir.is_absolute() {
            return Err(ConfigError::Invalid(format!(
                "factory.template_dir = {:?} must be an absolute path",
                self.factory.template_dir
            )));
        }
        self.shared_fs.cache_policy()?;
        if !SHARED_FS_TMPFS_MIB.contains(&self.shared_fs.tmpfs_size_mib) {
            return Err(ConfigError::Invalid(format!(
                "shared_fs.tmpfs_size_mib = {} is outside {}..={}",
                self.shared_fs.tmpfs_size_mib,
                SHARED_FS_TMPFS_MIB.start(),
                SHARED_FS_TMPFS_MIB.end()
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_default_configuration_parses_to_the_defaults() {
        let text = include_str!("../../resources/configuration.toml");
        let parsed = RuntimeConfig::parse(text).unwrap();
        let defaults = RuntimeConfig::default();
        assert_eq!(parsed.hypervisor.vcpus, defaults.hypervisor.vcpus);
        assert_eq!(parsed.hypervisor.memory_mib, defaults.hypervisor.memory_mib);
        assert_eq!(parsed.hypervisor.seccomp, defaults.hypervisor.seccomp);
        assert_eq!(
            parsed.hypervisor.sandbox_cgroup,
            defaults.hypervisor.sandbox_cgroup
        );
        assert_eq!(parsed.shared_fs, defaults.shared_fs);
        assert_eq!(parsed.agent, defaults.agent);
        assert_eq!(parsed.factory, defaults.factory);
        assert_eq!(parsed.log, defaults.log);
    }

    #[test]
    fn seccomp_modes_parse_and_a_bad_one_is_named() {
        let config = RuntimeConfig::parse("[hypervisor]\nseccomp = \"log\"\n").unwrap();
        assert_eq!(config.hypervisor.seccomp, SeccompMode::Log);
        let err = RuntimeConfig::parse("[hypervisor]\nseccomp = \"strict\"\n").unwrap_err();
        let err = err.to_string();
        assert!(err.contains("seccomp") && err.contains("enforce"), "{err}");
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = RuntimeConfig::parse("[hypervisor]\nmemory = 128\n").unwrap_err();
        assert!(err.to_string().contains("memory"), "{err}");
        let err = RuntimeConfig::parse("[hypervisr]\n").unwrap_err();
        assert!(err.to_string().contains("hypervisr"), "{err}");
    }

    #[test]
    fn validation_names_the_bad_setting() {
        let mut config = RuntimeConfig::default();
        config.hypervisor.kernel = "/nonexistent/vmlinux".into();
        let err = config.validate().unwrap_err().to_string();
        assert!(
            err.contains("kernel /nonexistent/vmlinux does not exist"),
            "{err}"
        );

        let mut config = RuntimeConfig::default();
        let exists = std::env::current_exe().unwrap();
        config.hypervisor.kernel = exists.clone();
        config.hypervisor.initrd = exists;
        config.validate().unwrap();
        config.hypervisor.hotplug_slots = 18;
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "configuration: hypervisor.hotplug_slots = 18 is above the maximum of 17"
        );

        let mut config = RuntimeConfig::default();
        let exists = std::env::current_exe().unwrap();
        config.hypervisor.kernel = exists.clone();
        config.hypervisor.initrd = exists;
        for bad in [0, 4097] {
            config.shared_fs.tmpfs_size_mib = bad;
            assert_eq!(
                config.validate().unwrap_err().to_string(),
                format!("configuration: shared_fs.tmpfs_size_mib = {bad} is outside 1..=4096")
            );
        }
        config.shared_fs.tmpfs_size_mib = 64;
        config.validate().unwrap();
        config.factory.template_dir = "templates".into();
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "configuration: factory.template_dir = \"templates\" must be an absolute path"
        );

        let mut config = RuntimeConfig::default();
        config.shared_fs.cache = "sometimes".into();
        assert!(config
            .shared_fs
            .cache_policy()
            .unwrap_err()
            .to_string()
            .contains("sometimes"));
    }

    #[test]
    fn explicit_file_that_is_missing_is_an_error() {
        let err = RuntimeConfig::load(Some(Path::new("/nonexistent/skiff.toml"))).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/skiff.toml"), "{err}");
    }
}
