//! Skiff's virtual machine monitor: KVM, guest memory, x86_64 boot, vCPU
//! threads and legacy devices, driven through a small action API from the
//! process that embeds it (the containerd shim through skiff-runtime, or
//! the `vm-run` tool, each its own crate). It takes a whole kernel command
//! line; the one this project's guest kernel needs is
//! `skiff_guest_abi::cmdline`.
//!
//! ```no_run
//! # use std::time::Instant;
//! # use skiff_vmm::{VmmHandle, VmConfig, ConsoleConfig};
//! let vmm = VmmHandle::spawn(Instant::now())?;
//! vmm.configure(VmConfig {
//!     kernel: "build/guest/vmlinux".into(),
//!     initrd: Some("build/guest/initramfs-debug.cpio".into()),
//!     cmdline: "console=ttyS0 reboot=k panic=-1".into(),
//!     vcpus: 1,
//!     memory_mib: 128,
//!     console: ConsoleConfig::Stdio,
//!     devices: Vec::new(),
//!     hotplug_slots: 0,
//!     seccomp: skiff_vmm::SeccompMode::Enforce,
//! })?;
//! vmm.start()?;
//! let exit = vmm.wait_exit(None).expect("no timeout");
//! println!("{}", exit.reason);
//! # Ok::<(), skiff_vmm::VmmError>(())
//! ```

pub mod api;
pub mod arch;
pub mod builder;
pub mod config;
pub mod console_log;
pub mod device_manager;
pub mod exit;
pub mod loader;
pub mod seccomp;
pub mod snapshot;
pub mod timeline;
mod vmm;
pub mod vstate;

pub use api::{VmState, VmmAction, VmmData, VmmError};
pub use config::{ConsoleConfig, SeccompMode, VmConfig};
pub use device_manager::{DeviceError, MmioSlot};
pub use exit::{ExitReason, ExitSender};
pub use vmm::{ExitInfo, VmmHandle};
