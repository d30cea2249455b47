//! The boot timer's port and value: the guest's init writes
//! [`BOOT_TIMER_MAGIC`] to I/O port [`BOOT_TIMER_PORT`] as its first act,
//! and the VMM's boot-timer device (skiff-devices, `legacy::BootTimer`)
//! records the moment as "guest init reached", without parsing console
//! output.
//!
//! Users: `devices/src/legacy/boot_timer.rs` (host), `guest/agent/src/init.rs`
//! (the agent as PID 1) and `guest/image/init.c` (the C debug init, which
//! cannot import this crate: a test below checks its `#define`s).

/// The I/O port the guest writes to. Nothing else lives at 0x440 on a PC.
pub const BOOT_TIMER_PORT: u16 = 0x440;

/// The byte that marks "init is running".
pub const BOOT_TIMER_MAGIC: u8 = 0x7b;

#[cfg(test)]
mod tests {
    use super::*;

    /// The C debug init keeps its own copy of the contract; it must match.
    #[test]
    fn the_c_debug_init_writes_the_same_port_and_value() {
        let init_c = include_str!("../../image/init.c");
        assert!(
            init_c.contains(&format!("#define BOOT_TIMER_PORT {BOOT_TIMER_PORT:#x}")),
            "guest/image/init.c's BOOT_TIMER_PORT differs"
        );
        assert!(
            init_c.contains(&format!("#define BOOT_TIMER_MAGIC {BOOT_TIMER_MAGIC:#x}")),
            "guest/image/init.c's BOOT_TIMER_MAGIC differs"
        );
    }
}
