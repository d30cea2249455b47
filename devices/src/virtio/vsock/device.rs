//! The virtio-vsock device: three queues (rx, tx, event), a config space
//! holding the guest CID, and the host ends that outlive resets.

use std::path::Path;
use std::sync::Arc;

use super::host::{HybridListener, VsockConnector};
use super::muxer::Muxer;
use super::worker::VsockWorker;
use super::Error;
use crate::virtio::worker::Worker;
use crate::virtio::{
    read_config_bytes, ActivateError, Activation, VirtioDevice, F_RING_EVENT_IDX, F_VERSION_1,
    TYPE_VSOCK,
};

const QUEUE_SIZES: [u16; 3] = [256; 3];

/// A virtio-vsock device whose host side is a hybrid Unix socket at a
/// path (plus `<path>_<port>` listeners for guest-initiated connections)
/// and an in-process [`VsockConnector`].
///
/// The listener lives as long as the device, so host clients can connect
/// before the guest driver is up (they wait in the backlog); a reset drops
/// every connection. Dropping the device removes the socket file.
pub struct Vsock {
    config: [u8; 8],
    guest_cid: u64,
    listener: Arc<HybridListener>,
    connector: VsockConnector,
    worker: Option<Worker>,
}

impl Vsock {
    /// A device for guest `cid` listening on `socket`.
    pub fn new(cid: u64, socket: &Path) -> Result<Self, Error> {
        let listener = Arc::new(HybridListener::bind(socket)?);
        let connector = VsockConnector::new().map_err(Error::Setup)?;
        Ok(Self {
            config: cid.to_le_bytes(),
            guest_cid: cid,
            listener,
            connector,
            worker: None,
        })
    }

    /// Opens connections to guest ports from this process.
    pub fn connector(&self) -> VsockConnector {
        self.connector.clone()
    }

    /// The data path for `activation`, without a thread: what
    /// [`VirtioDevice::activate`] runs; public so benches can drive it.
    pub fn data_path(&self, activation: Activation) -> Result<VsockWorker, ActivateError> {
        let muxer = Muxer::new(
            self.guest_cid,
            Some(self.listener.clone()),
            self.connector.shared(),
        )?;
        VsockWorker::new(activation, muxer)
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        F_VERSION_1 | F_RING_EVENT_IDX
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        self.worker = None;
        let confinement = activation.confinement.clone();
        let work = self.data_path(activation)?;
        self.worker = Some(Worker::spawn("skiff-vsock", work, &confinement)?);
        Ok(())
    }

    fn reset(&mut self) {
        // Joins the thread; the muxer and every host stream go with it.
        self.worker = None;
    }
}
