//! x86_64 machine setup: guest memory layout, boot protocols, CPU state.

pub mod boot;
pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod mptable;
pub mod regs;
