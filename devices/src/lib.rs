//! Device models of the Skiff VMM.
//!
//! Devices are plain state machines driven by the vCPU threads through a
//! [`Bus`]: a vCPU that exits on a port or MMIO access looks the address up
//! and calls the device in place, as Firecracker and Cloud Hypervisor do. A
//! device never blocks a vCPU for long and never trusts what the guest wrote.

pub mod bus;
pub mod legacy;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError};
