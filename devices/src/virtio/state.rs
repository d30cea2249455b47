//! A virtio-mmio transport's state at a snapshot, in a form that is
//! written to disk and read back by another process.
//!
//! The state is taken at a quiescent point: the device's worker has been
//! stopped, and every device completes each chain it pops before its
//! worker waits again, so each queue's next available index equals the
//! used index the device last published in guest memory. A restored
//! device continues from there as if its driver had just set DRIVER_OK.

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState};

/// Why a saved transport state cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("setting up the device's transport: {0}")]
    Setup(std::io::Error),
    #[error("device type {device_type} did not start again: {why}")]
    Start { device_type: u32, why: String },
    #[error("the snapshot has a device of type {saved} where this VM has type {actual}")]
    DeviceType { saved: u32, actual: u32 },
    #[error(
        "the snapshot's device type {device_type} has {saved} queues, the device has {actual}"
    )]
    QueueCount {
        device_type: u32,
        saved: usize,
        actual: usize,
    },
    #[error("queue {index} of device type {device_type} in the snapshot is invalid: {why}")]
    Queue {
        device_type: u32,
        index: usize,
        why: String,
    },
}

/// One queue as the driver configured it and where the device stood.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    pub max_size: u16,
    pub size: u16,
    pub ready: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
    /// Chains the device has consumed (= used entries it published).
    pub next_avail: u16,
    pub next_used: u16,
}

impl QueueSnapshot {
    pub(crate) fn of(queue: &Queue, position: u16) -> Self {
        let s = queue.state();
        Self {
            max_size: s.max_size,
            size: s.size,
            ready: s.ready,
            desc_table: s.desc_table,
            avail_ring: s.avail_ring,
            used_ring: s.used_ring,
            next_avail: position,
            next_used: position,
        }
    }

    /// The queue, checked the way a driver's writes are (size a power of
    /// two within the maximum, the device's own maximum unchanged).
    pub(crate) fn to_queue(
        self,
        device_type: u32,
        index: usize,
        max_size: u16,
    ) -> Result<Queue, StateError> {
        let invalid = |why: String| StateError::Queue {
            device_type,
            index,
            why,
        };
        if self.max_size != max_size {
            return Err(invalid(format!(
                "maximum size {} where the device has {max_size}",
                self.max_size
            )));
        }
        Queue::try_from(self.queue_state()).map_err(|e| invalid(format!("{e:?}")))
    }

    /// virtio-queue's view; event-index use is set again at activation,
    /// from the features the driver agreed to.
    pub(crate) fn queue_state(&self) -> QueueState {
        QueueState {
            max_size: self.max_size,
            next_avail: self.next_avail,
            next_used: self.next_used,
            event_idx_enabled: false,
            size: self.size,
            ready: self.ready,
            desc_table: self.desc_table,
            avail_ring: self.avail_ring,
            used_ring: self.used_ring,
        }
    }
}

/// The registers of a virtio-mmio window and its queues.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportState {
    pub device_type: u32,
    pub status: u8,
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub driver_features: u64,
    pub queue_sel: u32,
    pub config_generation: u32,
    /// Interrupt causes the driver has not acknowledged yet.
    pub interrupt_status: u32,
    /// The device had failed and waits for the driver to reset it.
    pub needs_reset: bool,
    /// The device ran: a restore starts it again from `queues`.
    pub active: bool,
    pub queues: Vec<QueueSnapshot>,
}
