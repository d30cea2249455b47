//! KVM objects: the VM with its memory and irqchip, and the vCPUs.

pub mod vcpu;
pub mod vcpu_state;
pub mod vm;
