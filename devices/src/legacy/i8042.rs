//! The part of the i8042 keyboard controller a microVM needs: the reset
//! line. A guest booted with `reboot=k` writes 0xFE to the command port to
//! restart; the VMM turns that into a clean VM exit, which is how a guest
//! without ACPI shuts down (Firecracker does the same).

use super::Notify;
use crate::BusDevice;

/// First port of the controller (data port 0x60; command/status at 0x64).
pub const I8042_PORT_BASE: u16 = 0x60;
/// Ports 0x60..=0x64.
pub const I8042_PORT_LEN: u16 = 5;

const COMMAND_OFFSET: u64 = 4;
const CMD_PULSE_RESET: u8 = 0xfe;

/// A controller with no keyboard behind it: status reads say "nothing
/// pending, ready for a command" so the kernel's reset path never waits.
pub struct I8042 {
    on_reset: Notify,
}

impl I8042 {
    pub fn new(on_reset: Notify) -> Self {
        Self { on_reset }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == COMMAND_OFFSET && data.first() == Some(&CMD_PULSE_RESET) {
            (self.on_reset)();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[test]
    fn reset_command_notifies_and_status_is_idle() {
        let reset = Arc::new(AtomicBool::new(false));
        let r = reset.clone();
        let mut dev = I8042::new(Box::new(move || r.store(true, Ordering::SeqCst)));
        let mut status = [0xffu8];
        dev.read(COMMAND_OFFSET, &mut status);
        assert_eq!(status, [0]);
        dev.write(0, &[CMD_PULSE_RESET]);
        dev.write(COMMAND_OFFSET, &[0xd1]);
        assert!(!reset.load(Ordering::SeqCst));
        dev.write(COMMAND_OFFSET, &[CMD_PULSE_RESET]);
        assert!(reset.load(Ordering::SeqCst));
    }
}
