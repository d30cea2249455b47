//! Recognises a Linux kernel panic in the console stream.
//!
//! Without ACPI or PCI there is no pvpanic device, and a kernel booted with
//! `panic=-1` restarts through the same i8042 reset as a clean reboot. The
//! panic banner on the console is the one signal that tells them apart, so
//! the serial output is watched for it (bounded memory, byte at a time).

/// What the kernel prints first when it panics.
const PANIC_PREFIX: &[u8] = b"Kernel panic - not syncing: ";
/// Longest line kept; the rest of a longer line is dropped.
const MAX_LINE: usize = 512;

/// Receives the panic message (the text after the prefix).
pub type OnPanic = Box<dyn Fn(String) + Send>;

/// Scans console bytes line by line.
pub struct PanicWatcher {
    line: Vec<u8>,
    on_panic: OnPanic,
}

impl PanicWatcher {
    pub fn new(on_panic: OnPanic) -> Self {
        Self {
            line: Vec::with_capacity(MAX_LINE),
            on_panic,
        }
    }

    /// Feeds console output.
    pub fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                self.end_line();
            } else if self.line.len() < MAX_LINE {
                self.line.push(b);
            }
        }
    }

    fn end_line(&mut self) {
        if let Some(pos) = find(&self.line, PANIC_PREFIX) {
            let message = String::from_utf8_lossy(&self.line[pos + PANIC_PREFIX.len()..]);
            (self.on_panic)(message.trim().to_string());
        }
        self.line.clear();
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn watcher() -> (PanicWatcher, Arc<Mutex<Vec<String>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let w = PanicWatcher::new(Box::new(move |m| s.lock().unwrap().push(m)));
        (w, seen)
    }

    #[test]
    fn reports_the_panic_message_split_across_writes() {
        let (mut w, seen) = watcher();
        w.feed(b"[    1.0] ok\r\n[    2.0] Kernel pan");
        w.feed(b"ic - not syncing: VFS: Unable to mount root fs\r");
        assert!(seen.lock().unwrap().is_empty());
        w.feed(b"\n");
        assert_eq!(
            *seen.lock().unwrap(),
            vec!["VFS: Unable to mount root fs".to_string()]
        );
    }

    #[test]
    fn ignores_ordinary_lines_and_bounds_memory() {
        let (mut w, seen) = watcher();
        w.feed(&vec![b'x'; 10 * MAX_LINE]);
        assert!(w.line.len() <= MAX_LINE);
        w.feed(b"\nKernel panic - not syncing\n");
        assert!(seen.lock().unwrap().is_empty());
    }
}
