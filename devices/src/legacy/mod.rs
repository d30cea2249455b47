//! Legacy x86 devices: the 16550 console, the i8042 reset line and the
//! boot timer port.

mod boot_timer;
mod i8042;
mod panic_watch;
mod serial;

pub use boot_timer::{BootTimer, BOOT_TIMER_MAGIC, BOOT_TIMER_PORT};
pub use i8042::{I8042, I8042_PORT_BASE, I8042_PORT_LEN};
pub use panic_watch::PanicWatcher;
pub use serial::{
    ConsoleOutput, EventFdTrigger, SerialConsole, SerialSnapshot, COM1_IRQ, COM1_PORT,
    SERIAL_PORT_LEN,
};

/// A notification a device sends to the VMM. Devices run on vCPU threads;
/// the callback must only signal (write an eventfd, send on a channel).
pub type Notify = Box<dyn Fn() + Send>;
