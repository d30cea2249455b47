//! Address-range dispatch from vCPU exits to device models.
//!
//! One [`Bus`] serves port I/O and another MMIO. Ranges never overlap; the
//! table can grow while the VM runs so devices can be hot-added later.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

/// A device reachable through a [`Bus`].
///
/// `offset` is relative to the start of the range the device was inserted
/// at. `data` is what the guest read or wrote: its length is the access
/// width chosen by the guest, so implementations must accept any length.
pub trait BusDevice: Send {
    /// The guest reads `data.len()` bytes at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// The guest writes `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors of [`Bus`] management.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// A range of zero length or one that wraps around the address space.
    #[error("invalid bus range {base:#x}+{len:#x}")]
    InvalidRange { base: u64, len: u64 },
    /// The new range overlaps a device that is already there.
    #[error("bus range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap { base: u64, len: u64 },
}

/// A shared handle on a device inserted in a bus.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

#[derive(Clone)]
struct Entry {
    len: u64,
    device: SharedDevice,
}

/// A map from non-overlapping address ranges to devices.
#[derive(Default)]
pub struct Bus {
    ranges: RwLock<BTreeMap<u64, Entry>>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `device` at `[base, base + len)`.
    pub fn insert(&self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = base.checked_add(len).filter(|_| len > 0);
        let Some(end) = end else {
            return Err(BusError::InvalidRange { base, len });
        };
        let mut ranges = self.ranges.write().unwrap_or_else(|e| e.into_inner());
        let overlaps_before = ranges
            .range(..end)
            .next_back()
            .is_some_and(|(&b, e)| b + e.len > base);
        if overlaps_before {
            return Err(BusError::Overlap { base, len });
        }
        ranges.insert(base, Entry { len, device });
        Ok(())
    }

    /// Removes the device whose range starts at `base`, if any.
    pub fn remove(&self, base: u64) -> Option<SharedDevice> {
        let mut ranges = self.ranges.write().unwrap_or_else(|e| e.into_inner());
        ranges.remove(&base).map(|e| e.device)
    }

    /// The device covering `addr` and the offset of `addr` inside its range.
    fn resolve(&self, addr: u64) -> Option<(SharedDevice, u64)> {
        let ranges = self.ranges.read().unwrap_or_else(|e| e.into_inner());
        let (&base, entry) = ranges.range(..=addr).next_back()?;
        let offset = addr - base;
        (offset < entry.len).then(|| (entry.device.clone(), offset))
    }

    /// Dispatches a guest read. Returns false when nothing is mapped at
    /// `addr`; `data` is then left as the caller filled it.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr) {
            Some((device, offset)) => {
                lock(&device).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a guest write. Returns false when nothing is mapped.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr) {
            Some((device, offset)) => {
                lock(&device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device, recovering from a poisoned lock: a device that panicked
/// once must not take every later vCPU exit down with it.
fn lock(device: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    device.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        last_write: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last_write = Some((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_by_range_with_relative_offset() {
        let bus = Bus::new();
        let dev = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(dev.clone(), 0x3f8, 8).unwrap();
        let mut data = [0u8; 1];
        assert!(bus.read(0x3fb, &mut data));
        assert_eq!(data, [3]);
        assert!(bus.write(0x3f8, &[7, 8]));
        assert_eq!(dev.lock().unwrap().last_write, Some((0, vec![7, 8])));
        assert!(!bus.read(0x400, &mut data));
        assert!(!bus.read(0x3f7, &mut data));
    }

    #[test]
    fn rejects_overlaps_and_bad_ranges() {
        let bus = Bus::new();
        let dev = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(dev.clone(), 0x60, 5).unwrap();
        assert_eq!(
            bus.insert(dev.clone(), 0x64, 1),
            Err(BusError::Overlap { base: 0x64, len: 1 })
        );
        assert_eq!(
            bus.insert(dev.clone(), 0x50, 0x11),
            Err(BusError::Overlap {
                base: 0x50,
                len: 0x11
            })
        );
        assert!(bus.insert(dev.clone(), 0x65, 1).is_ok());
        assert!(bus.insert(dev.clone(), 0x50, 0x10).is_ok());
        assert!(matches!(
            bus.insert(dev.clone(), u64::MAX, 2),
            Err(BusError::InvalidRange { .. })
        ));
        assert!(matches!(
            bus.insert(dev, 0x1000, 0),
            Err(BusError::InvalidRange { .. })
        ));
    }

    #[test]
    fn remove_unmaps() {
        let bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Recorder::default())), 0x10, 4)
            .unwrap();
        assert!(bus.remove(0x10).is_some());
        assert!(!bus.write(0x10, &[1]));
    }
}
