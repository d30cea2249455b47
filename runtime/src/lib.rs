//! Skiff's sandbox runtime: the whole pod below containerd's task API.
//! [`pod::Pod`], the container manager, finds or boots the pod's sandbox
//! and runs its containers and processes through the guest agent;
//! [`sandbox`] boots the VM with the VMM in this process, reaches the agent
//! through the VMM's in-process vsock connector, shares container root
//! filesystems over virtio-fs, and keeps what it made on the host in
//! `/run/skiff/sbs/<sandbox>/persist.json` so a crashed shim can be
//! cleaned up after.
//!
//! The containerd shim (`shim/`) only translates the task API to and from
//! [`pod::Pod`]. See `docs/ARCHITECTURE.md` for the layers and threads.

pub mod agent;
pub mod cgroup;
pub mod config;
pub mod cri;
pub mod features;
pub mod limits;
pub mod persist;
pub mod pod;
pub mod pod_net;
pub mod port_forward;
pub mod sandbox;
pub mod share;
pub mod sk_lookup;
pub mod spec;
pub mod stdio;

pub use config::RuntimeConfig;
pub use pod::{Pod, PodError, PodEvent};
pub use sandbox::{Sandbox, SandboxError, VmSandboxes};
