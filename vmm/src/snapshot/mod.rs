//! Snapshots of a paused VM, and the checks that let only a matching VM
//! be restored from one.
//!
//! A snapshot is a directory (0700) of two files (0600): `memory`, the
//! guest RAM ([`memory`]), and `state.json`, everything else: the vCPUs,
//! the in-kernel devices, the serial console and each virtio-mmio slot's
//! transport. `state.json` is written last, under a temporary name then
//! renamed, so a directory without it is an unfinished snapshot.
//!
//! The state starts with a header that names the format and the Skiff
//! version that wrote it; a restore refuses any other before reading the
//! rest. It then compares what the guest saw of its machine ([`GuestView`]:
//! kernel and initrd files, command line, vCPUs, memory, devices) and the
//! CPU features the vCPUs were given with the VM it is asked to build, and
//! names the first difference. What the host side of a device is (a disk's
//! path, the vsock socket) comes from the restoring VM's configuration.

pub mod memory;

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use kvm_bindings::kvm_cpuid_entry2;
use serde::{Deserialize, Serialize};
use skiff_devices::legacy::SerialSnapshot;
use skiff_devices::virtio::TransportState;

use crate::config::{DeviceConfig, VmConfig};
use crate::vstate::vcpu_state::VcpuState;
use crate::vstate::vm::VmKvmState;
pub use memory::MemoryLayout;

/// Bumped whenever the state's shape or meaning changes.
pub const FORMAT_VERSION: u32 = 1;
/// The version of Skiff that writes and reads snapshots.
pub const SKIFF_VERSION: &str = env!("CARGO_PKG_VERSION");

pub const STATE_FILE: &str = "state.json";
pub const MEMORY_FILE: &str = "memory";

/// Errors taking or restoring a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("snapshot {path} is unreadable: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("snapshot {path} was written by Skiff {skiff} (format {format}); this is Skiff {SKIFF_VERSION} (format {FORMAT_VERSION})")]
    Version {
        path: PathBuf,
        skiff: String,
        format: u32,
    },
    #[error(
        "the snapshot does not match this VM: {what}: the snapshot has {saved}, this VM has {here}"
    )]
    Mismatch {
        what: String,
        saved: String,
        here: String,
    },
    #[error("this host's CPU features differ from the snapshot's (CPUID leaf {leaf:#x}, subleaf {subleaf})")]
    Cpuid { leaf: u32, subleaf: u32 },
    #[error("memory file {path} is {len} bytes, the snapshot needs {expected}")]
    MemoryFileSize {
        path: PathBuf,
        len: u64,
        expected: u64,
    },
    #[error("guest memory: {0}")]
    Memory(String),
    #[error(transparent)]
    Vcpu(#[from] crate::vstate::vcpu::VcpuError),
    #[error(transparent)]
    VcpuState(#[from] crate::vstate::vcpu_state::VcpuStateError),
    #[error(transparent)]
    Vm(#[from] crate::vstate::vm::VmError),
    #[error(transparent)]
    Devices(#[from] crate::device_manager::DeviceError),
}

/// What identifies a file the guest booted from: a rebuilt kernel differs
/// in size or modification time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileId {
    pub path: PathBuf,
    pub len: u64,
    pub modified_ns: i128,
}

impl FileId {
    /// `what` names the file in an error ("read kernel"), as the loader
    /// would: a missing kernel is reported the same whether or not the VM
    /// is restored.
    pub fn of(path: &Path, what: &'static str) -> Result<Self, SnapshotError> {
        let meta = std::fs::metadata(path).map_err(|source| SnapshotError::Io {
            what,
            path: path.to_owned(),
            source,
        })?;
        let modified_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as i128);
        Ok(Self {
            path: path.to_owned(),
            len: meta.len(),
            modified_ns,
        })
    }

    fn describe(&self) -> String {
        format!(
            "{} ({} bytes, modified {} ns after the epoch)",
            self.path.display(),
            self.len,
            self.modified_ns
        )
    }

    /// Same file contents as far as size and time tell (the path may differ).
    fn same_as(&self, other: &FileId) -> bool {
        self.len == other.len && self.modified_ns == other.modified_ns
    }
}

/// What the guest saw of its machine: a restore must give it the same.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestView {
    pub kernel: FileId,
    pub initrd: Option<FileId>,
    pub cmdline: String,
    pub vcpus: u8,
    pub memory_mib: u64,
    pub hotplug_slots: u8,
    /// One line per boot device, with what its driver read of it.
    pub devices: Vec<String>,
}

impl GuestView {
    pub fn of(config: &VmConfig) -> Result<Self, SnapshotError> {
        Ok(Self {
            kernel: FileId::of(&config.kernel, "read kernel")?,
            initrd: (config.initrd.as_deref())
                .map(|p| FileId::of(p, "read initrd"))
                .transpose()?,
            cmdline: config.cmdline.clone(),
            vcpus: config.vcpus,
            memory_mib: config.memory_mib,
            hotplug_slots: config.hotplug_slots,
            devices: config.devices.iter().map(guest_visible).collect(),
        })
    }

    /// The first way `here` differs from this (the snapshot's) view.
    pub fn check(&self, here: &GuestView) -> Result<(), SnapshotError> {
        let differs = |what: &str, saved: String, here: String| {
            Err(SnapshotError::Mismatch {
                what: what.to_string(),
                saved,
                here,
            })
        };
        if !self.kernel.same_as(&here.kernel) {
            return differs("kernel", self.kernel.describe(), here.kernel.describe());
        }
        let initrd = |i: &Option<FileId>| i.as_ref().map_or("none".into(), FileId::describe);
        let same_initrd = match (&self.initrd, &here.initrd) {
            (Some(a), Some(b)) => a.same_as(b),
            (None, None) => true,
            _ => false,
        };
        if !same_initrd {
            return differs("initrd", initrd(&self.initrd), initrd(&here.initrd));
        }
        if self.cmdline != here.cmdline {
            return differs(
                "kernel command line",
                format!("`{}`", self.cmdline),
                format!("`{}`", here.cmdline),
            );
        }
        if self.vcpus != here.vcpus {
            return differs("vCPUs", self.vcpus.to_string(), here.vcpus.to_string());
        }
        if self.memory_mib != here.memory_mib {
            return differs(
                "memory",
                format!("{} MiB", self.memory_mib),
                format!("{} MiB", here.memory_mib),
            );
        }
        if self.hotplug_slots != here.hotplug_slots {
            return differs(
                "hotplug slots",
                self.hotplug_slots.to_string(),
                here.hotplug_slots.to_string(),
            );
        }
        let count = self.devices.len().max(here.devices.len());
        for i in 0..count {
            let (a, b) = (self.devices.get(i), here.devices.get(i));
            if a != b {
                let show = |d: Option<&String>| d.map_or("no device".into(), |d| format!("`{d}`"));
                return differs(&format!("device {i}"), show(a), show(b));
            }
        }
        Ok(())
    }
}

/// A device as its guest driver sees it; where its host side is (paths,
/// the tap) may differ at a restore.
fn guest_visible(device: &DeviceConfig) -> String {
    match device {
        DeviceConfig::Block(b) => {
            let size = std::fs::metadata(&b.path).map_or(0, |m| m.len());
            format!("block read_only={} size={size}", b.read_only)
        }
        DeviceConfig::Net(n) => match n.mac {
            Some(mac) => format!("net mac={}", skiff_devices::virtio::net::format_mac(&mac)),
            None => "net".into(),
        },
        // The guest reads its CID again after the transport reset.
        DeviceConfig::Vsock(_) => "vsock".into(),
        DeviceConfig::Fs(f) => format!("fs tag={} read_only={}", f.tag, f.read_only),
    }
}

/// Read first, alone, so a snapshot of another format is refused before
/// its body is parsed.
#[derive(Deserialize)]
struct Header {
    format: u32,
    skiff: String,
}

/// Everything of a snapshot except guest memory.
#[derive(Serialize, Deserialize)]
pub struct VmSnapshot {
    pub format: u32,
    pub skiff: String,
    pub guest: GuestView,
    /// vCPU 0's CPUID as the VMM set it (the others differ only in their
    /// APIC ids, which follow from the count).
    pub cpuid: Vec<kvm_cpuid_entry2>,
    pub memory: MemoryLayout,
    pub vm: VmKvmState,
    pub vcpus: Vec<VcpuState>,
    pub serial: SerialSnapshot,
    /// Each virtio-mmio slot, in order; `None` for an empty one.
    pub slots: Vec<Option<TransportState>>,
}

impl VmSnapshot {
    /// Checks this host's CPUID for vCPU 0 against the snapshot's.
    pub fn check_cpuid(&self, here: &[kvm_cpuid_entry2]) -> Result<(), SnapshotError> {
        let key = |e: &kvm_cpuid_entry2| (e.function, e.index);
        let mismatch = |e: &kvm_cpuid_entry2| SnapshotError::Cpuid {
            leaf: e.function,
            subleaf: e.index,
        };
        for saved in &self.cpuid {
            match here.iter().find(|h| key(h) == key(saved)) {
                Some(h)
                    if (h.eax, h.ebx, h.ecx, h.edx)
                        == (saved.eax, saved.ebx, saved.ecx, saved.edx) => {}
                _ => return Err(mismatch(saved)),
            }
        }
        match here
            .iter()
            .find(|h| !self.cpuid.iter().any(|s| key(s) == key(h)))
        {
            Some(extra) => Err(mismatch(extra)),
            None => Ok(()),
        }
    }
}

/// Creates the snapshot directory: it must not exist (a snapshot is never
/// written over another), its parent must.
pub fn create_dir(dir: &Path) -> Result<(), SnapshotError> {
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(|source| SnapshotError::Io {
            what: "create the snapshot directory",
            path: dir.to_owned(),
            source,
        })
}

/// Writes `state.json` into `dir`, atomically.
pub fn write_state(dir: &Path, state: &VmSnapshot) -> Result<(), SnapshotError> {
    let path = dir.join(STATE_FILE);
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    let io = |source| SnapshotError::Io {
        what: "write",
        path: path.clone(),
        source,
    };
    let json = serde_json::to_vec(state).map_err(|e| io(std::io::Error::other(e)))?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    file.write_all(&json).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)
}

/// Reads `dir`'s state, refusing another format or Skiff version.
pub fn read_state(dir: &Path) -> Result<VmSnapshot, SnapshotError> {
    let path = dir.join(STATE_FILE);
    let bytes = std::fs::read(&path).map_err(|source| SnapshotError::Io {
        what: "read",
        path: path.clone(),
        source,
    })?;
    let corrupt = |e: serde_json::Error| SnapshotError::Corrupt {
        path: path.clone(),
        reason: e.to_string(),
    };
    let header: Header = serde_json::from_slice(&bytes).map_err(corrupt)?;
    if header.format != FORMAT_VERSION || header.skiff != SKIFF_VERSION {
        return Err(SnapshotError::Version {
            path,
            skiff: header.skiff,
            format: header.format,
        });
    }
    serde_json::from_slice(&bytes).map_err(corrupt)
}
