//! Skiff's sandbox runtime: boots a pod's VM with the VMM in this process,
//! reaches the guest agent through the VMM's in-process vsock connector,
//! shares container root filesystems over virtio-fs, and keeps what it
//! made on the host in `/run/skiff/sbs/<sandbox>/persist.json` so a crashed
//! shim can be cleaned up after.
//!
//! The containerd shim (`shim/`) maps the task API onto this crate.

pub mod cgroup;
pub mod config;
pub mod features;
pub mod limits;
pub mod network;
pub mod persist;
pub mod sandbox;
pub mod share;
pub mod spec;
pub mod stdio;

pub use config::RuntimeConfig;
pub use sandbox::{Sandbox, SandboxError};
