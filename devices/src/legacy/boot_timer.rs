//! Boot timer: the guest's init writes [`BOOT_TIMER_MAGIC`] to
//! [`BOOT_TIMER_PORT`] as its first act, so the VMM can time boot-to-init
//! without parsing console output. The port and value are a contract with
//! the guest, defined in `skiff_guest_abi::boot_timer` and re-exported
//! here for the VMM that places the device.

use super::Notify;
use crate::BusDevice;

pub use skiff_guest_abi::boot_timer::{BOOT_TIMER_MAGIC, BOOT_TIMER_PORT};

/// Reports the first magic write to the VMM.
pub struct BootTimer {
    on_mark: Notify,
    marked: bool,
}

impl BootTimer {
    pub fn new(on_mark: Notify) -> Self {
        Self {
            on_mark,
            marked: false,
        }
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 && data.first() == Some(&BOOT_TIMER_MAGIC) && !self.marked {
            self.marked = true;
            (self.on_mark)();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn reports_the_first_magic_write_only() {
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let mut timer = BootTimer::new(Box::new(move || {
            h.fetch_add(1, Ordering::SeqCst);
        }));
        timer.write(0, &[0x00]);
        timer.write(1, &[BOOT_TIMER_MAGIC]);
        timer.write(0, &[]);
        assert_eq!(hits.load(Ordering::SeqCst), 0);
        timer.write(0, &[BOOT_TIMER_MAGIC]);
        timer.write(0, &[BOOT_TIMER_MAGIC, 0, 0, 0]);
        assert_eq!(hits.load(Ordering::SeqCst), 1);
    }
}
