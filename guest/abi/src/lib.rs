//! The contracts between Skiff's host side (VMM, devices, runtime, vm-run)
//! and what runs in the guest (the agent, the debug init, the guest
//! kernel), each defined once so the two sides cannot drift apart.
//!
//! - [`boot_timer`]: the I/O port and byte the guest's init writes so the
//!   VMM can time boot-to-init.
//! - [`hotplug`]: how a virtio-mmio slot is named in the guest, so the
//!   agent can bind the slot the host filled.
//! - [`cmdline`]: the guest kernel command line this project's kernel
//!   needs, and how init arguments are appended to it.
//!
//! The crate is linked into the static guest agent, so it has no
//! dependencies but `thiserror`.

pub mod boot_timer;
pub mod cmdline;
pub mod hotplug;
