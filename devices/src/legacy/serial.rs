//! The 16550 UART console (vm-superio's model) on the port bus.

use std::io::{self, Write};

use serde::{Deserialize, Serialize};
use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::PanicWatcher;
use crate::BusDevice;

/// COM1's legacy port and IRQ, where a Linux `console=ttyS0` looks.
pub const COM1_PORT: u16 = 0x3f8;
pub const COM1_IRQ: u32 = 4;
pub const SERIAL_PORT_LEN: u16 = 8;

/// Raises the UART interrupt by writing an eventfd registered as an irqfd.
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    pub fn new(evt: EventFd) -> Self {
        Self(evt)
    }
}

impl Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Where console bytes go: an optional sink (stdout, a file) and the panic
/// watcher, which sees every byte even when the console is off.
pub struct ConsoleOutput {
    sink: Option<Box<dyn Write + Send>>,
    watcher: PanicWatcher,
}

impl ConsoleOutput {
    pub fn new(sink: Option<Box<dyn Write + Send>>, watcher: PanicWatcher) -> Self {
        Self { sink, watcher }
    }
}

impl Write for ConsoleOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.watcher.feed(buf);
        if let Some(sink) = self.sink.as_mut() {
            // A closed stdout must not stop the guest: drop the sink.
            if sink.write_all(buf).is_err() {
                self.sink = None;
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if let Some(sink) = self.sink.as_mut() {
            if sink.flush().is_err() {
                self.sink = None;
            }
        }
        Ok(())
    }
}

/// The UART at a snapshot: its nine registers (in vm-superio's
/// `SerialState` order: DLL, DLM, IER, IIR, LCR, LSR, MCR, MSR, SCR) and the
/// input the guest has not read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialSnapshot {
    pub registers: [u8; 9],
    pub input: Vec<u8>,
}

/// The console UART as a bus device.
pub struct SerialConsole {
    serial: Serial<EventFdTrigger, NoEvents, ConsoleOutput>,
}

impl SerialConsole {
    pub fn new(interrupt: EventFdTrigger, output: ConsoleOutput) -> Self {
        Self {
            serial: Serial::new(interrupt, output),
        }
    }

    /// The UART's registers and unread input, for a snapshot.
    pub fn save(&self) -> SerialSnapshot {
        let s = self.serial.state();
        SerialSnapshot {
            registers: [
                s.baud_divisor_low,
                s.baud_divisor_high,
                s.interrupt_enable,
                s.interrupt_identification,
                s.line_control,
                s.line_status,
                s.modem_control,
                s.modem_status,
                s.scratch,
            ],
            input: s.in_buffer,
        }
    }

    /// The console as [`save`](Self::save) left it, on new host ends.
    pub fn restore(
        state: &SerialSnapshot,
        interrupt: EventFdTrigger,
        output: ConsoleOutput,
    ) -> Result<Self, String> {
        let [bdl, bdh, ier, iir, lcr, lsr, mcr, msr, scr] = state.registers;
        let state = SerialState {
            baud_divisor_low: bdl,
            baud_divisor_high: bdh,
            interrupt_enable: ier,
            interrupt_identification: iir,
            line_control: lcr,
            line_status: lsr,
            modem_control: mcr,
            modem_status: msr,
            scratch: scr,
            in_buffer: state.input.clone(),
        };
        let serial = Serial::from_state(&state, interrupt, NoEvents, output)
            .map_err(|e| format!("serial console: {e:?}"))?;
        Ok(Self { serial })
    }

    /// Queues host input for the guest; returns how many bytes fit.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        self.serial.enqueue_raw_bytes(bytes).unwrap_or(0)
    }
}

impl BusDevice for SerialConsole {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (Some(first), Ok(offset)) = (data.first_mut(), u8::try_from(offset)) {
            *first = self.serial.read(offset);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Some(&value), Ok(offset)) = (data.first(), u8::try_from(offset)) {
            if let Err(e) = self.serial.write(offset, value) {
                tracing::debug!("serial write failed: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn transmits_to_sink_and_watches_for_panics() {
        let out = Shared::default();
        let panics = Arc::new(Mutex::new(Vec::new()));
        let p = panics.clone();
        let watcher = PanicWatcher::new(Box::new(move |m| p.lock().unwrap().push(m)));
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut console = SerialConsole::new(
            EventFdTrigger::new(irq.try_clone().unwrap()),
            ConsoleOutput::new(Some(Box::new(out.clone())), watcher),
        );
        for b in b"Kernel panic - not syncing: boom\n" {
            console.write(0, &[*b]);
        }
        assert_eq!(
            out.0.lock().unwrap().as_slice(),
            b"Kernel panic - not syncing: boom\n"
        );
        assert_eq!(*panics.lock().unwrap(), vec!["boom".to_string()]);
        // Wide or out-of-range accesses are ignored, not fatal.
        console.write(0x1_0000, &[1, 2]);
        console.write(0, &[]);
        let mut wide = [0xffu8; 4];
        console.read(5, &mut wide);
        assert_eq!(&wide[1..], &[0, 0, 0]);
    }

    #[test]
    fn input_is_readable_by_the_guest() {
        let watcher = PanicWatcher::new(Box::new(|_| {}));
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut console = SerialConsole::new(
            EventFdTrigger::new(irq.try_clone().unwrap()),
            ConsoleOutput::new(None, watcher),
        );
        assert_eq!(console.enqueue_input(b"a"), 1);
        let mut data = [0u8];
        console.read(0, &mut data);
        assert_eq!(data, [b'a']);
    }
}
