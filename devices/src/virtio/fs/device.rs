//! The virtio-fs device: identity, config space and activation.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::worker::FsWorker;
use super::{FsError, FsShare, FuseServer};
use crate::virtio::worker::Worker;
use crate::virtio::{
    read_config_bytes, ActivateError, Activation, VirtioDevice, F_RING_EVENT_IDX, F_VERSION_1,
    TYPE_FS,
};

/// Length of the tag field of the config space.
pub const TAG_SIZE: usize = 36;
/// tag[36] + num_request_queues (le32).
pub const CONFIG_SPACE_SIZE: usize = TAG_SIZE + 4;
/// One high-priority queue and one request queue.
pub const NUM_QUEUES: usize = 2;
pub const QUEUE_SIZE: u16 = 256;
const REQUEST_QUEUES: u32 = NUM_QUEUES as u32 - 1;

/// A virtio-fs device sharing one host directory.
pub struct Fs {
    share: FsShare,
    config: [u8; CONFIG_SPACE_SIZE],
    worker: Option<Worker>,
    /// Set by the worker once the driver sends a request (FUSE_INIT comes
    /// first): from then on the passthrough holds the guest's inodes and
    /// handles, which a snapshot does not save, so it refuses the device.
    session_started: Arc<AtomicBool>,
}

impl Fs {
    /// Checks the tag and the directory; the file system itself is built
    /// when the driver starts the device, so each mount begins afresh.
    pub fn new(mut share: FsShare) -> Result<Self, FsError> {
        let tag = share.tag.as_bytes();
        if tag.is_empty() || tag.len() > TAG_SIZE || tag.contains(&0) {
            return Err(FsError::BadTag(share.tag));
        }
        share.path = canonical_dir(&share.path)?;
        // Fail now, naming the flag, rather than when the guest mounts.
        FuseServer::new(&share)?;

        let mut config = [0u8; CONFIG_SPACE_SIZE];
        config[..tag.len()].copy_from_slice(tag);
        config[TAG_SIZE..].copy_from_slice(&REQUEST_QUEUES.to_le_bytes());
        Ok(Self {
            share,
            config,
            worker: None,
            session_started: Arc::default(),
        })
    }

    pub fn share(&self) -> &FsShare {
        &self.share
    }
}

/// Resolves symlinks in the configured path once, at startup: the
/// passthrough opens its root with O_NOFOLLOW.
fn canonical_dir(path: &Path) -> Result<std::path::PathBuf, FsError> {
    let err = |source| FsError::Path {
        path: path.to_path_buf(),
        source,
    };
    let canonical = std::fs::canonicalize(path).map_err(err)?;
    if !std::fs::metadata(&canonical).map_err(err)?.is_dir() {
        return Err(FsError::NotADirectory(path.to_path_buf()));
    }
    Ok(canonical)
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        TYPE_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; NUM_QUEUES]
    }

    fn features(&self) -> u64 {
        F_VERSION_1 | F_RING_EVENT_IDX
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data)
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        if activation.queues.len() != NUM_QUEUES {
            return Err(ActivateError::QueueCount {
                got: activation.queues.len(),
                want: NUM_QUEUES,
            });
        }
        let work = FsWorker::new(
            activation.mem,
            activation.queues,
            activation.interrupt,
            self.share.clone(),
            self.session_started.clone(),
        );
        self.worker = Some(Worker::spawn("virtio-fs", work, &activation.confinement)?);
        Ok(())
    }

    fn reset(&mut self) {
        // Dropping the worker joins its thread and closes every fd the
        // passthrough opened for the guest.
        self.worker = None;
    }

    fn snapshot_blocker(&self) -> Option<&'static str> {
        self.session_started
            .load(Ordering::Acquire)
            .then_some("its FUSE session has started (the guest has mounted the share)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::fs::testing::{memory, share, Driver};
    use crate::virtio::{ActiveQueue, Interrupt};
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    use vmm_sys_util::eventfd::EventFd;
    use vmm_sys_util::tempdir::TempDir;

    fn config_of(fs: &Fs) -> Vec<u8> {
        let mut data = vec![0u8; CONFIG_SPACE_SIZE];
        fs.read_config(0, &mut data);
        data
    }

    #[test]
    fn config_space_holds_the_tag_and_one_request_queue() {
        let dir = TempDir::new().unwrap();
        let mut s = share(dir.as_path(), true);
        s.tag = "x".repeat(TAG_SIZE);
        let fs = Fs::new(s).unwrap();
        let config = config_of(&fs);
        assert_eq!(&config[..TAG_SIZE], "x".repeat(TAG_SIZE).as_bytes());
        assert_eq!(&config[TAG_SIZE..], &1u32.to_le_bytes());

        let fs = Fs::new(share(dir.as_path(), false)).unwrap();
        let config = config_of(&fs);
        assert_eq!(&config[..5], b"test\0");
        assert!(config[4..TAG_SIZE].iter().all(|&b| b == 0));
        assert_eq!(fs.device_type(), TYPE_FS);
        assert_eq!(fs.queue_max_sizes().len(), NUM_QUEUES);
        assert_ne!(fs.features() & F_RING_EVENT_IDX, 0);
    }

    #[test]
    fn bad_tags_and_directories_are_refused() {
        let dir = TempDir::new().unwrap();
        for tag in [String::new(), "x".repeat(TAG_SIZE + 1), "a\0b".into()] {
            let mut s = share(dir.as_path(), false);
            s.tag = tag;
            assert!(matches!(Fs::new(s), Err(FsError::BadTag(_))));
        }
        let missing = dir.as_path().join("missing");
        let err = Fs::new(share(&missing, false)).err().unwrap();
        assert!(matches!(err, FsError::Path { .. }));
        assert!(err.to_string().contains("missing"));
        let file = dir.as_path().join("file");
        std::fs::write(&file, b"").unwrap();
        assert!(matches!(
            Fs::new(share(&file, false)),
            Err(FsError::NotADirectory(_))
        ));
        // A symlink to a directory is resolved once, at startup.
        std::os::unix::fs::symlink(dir.as_path(), dir.as_path().join("alias")).unwrap();
        let fs = Fs::new(share(&dir.as_path().join("alias"), false)).unwrap();
        assert_eq!(
            fs.share().path,
            std::fs::canonicalize(dir.as_path()).unwrap()
        );
    }

    fn activation(
        mem: &vm_memory::GuestMemoryMmap,
        drivers: &[&Driver],
    ) -> (Activation, Vec<EventFd>) {
        let mut queues = Vec::new();
        let mut notifies = Vec::new();
        for d in drivers {
            let notify = EventFd::new(libc::EFD_NONBLOCK).unwrap();
            notifies.push(notify.try_clone().unwrap());
            queues.push(ActiveQueue {
                queue: d.queue(),
                notify,
            });
        }
        let interrupt = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        let activation = Activation {
            mem: mem.clone(),
            features: F_VERSION_1,
            queues,
            interrupt,
            confinement: skiff_confine::Confinement::inline(),
            resumed: false,
        };
        (activation, notifies)
    }

    #[test]
    fn the_worker_serves_requests_until_reset() {
        let dir = TempDir::new().unwrap();
        let mut fs = Fs::new(share(dir.as_path(), false)).unwrap();
        let mem = memory();
        for round in 0..2 {
            let hiprio = Driver::new(&mem, 0, 0x10_0000);
            let mut request = Driver::new(&mem, 0x4000, 0x20_0000);
            let (activation, notifies) = activation(&mem, &[&hiprio, &request]);
            let interrupt = activation.interrupt.clone();
            fs.activate(activation).unwrap();
            // An activated share without a request can be snapshotted
            // (a template's, never mounted); one mounted, never again.
            assert_eq!(fs.snapshot_blocker().is_some(), round > 0);

            let reply = request.init_request();
            notifies[1].write(1).unwrap();
            // The worker interrupts once the reply is in the used ring.
            let start = Instant::now();
            while interrupt.irqfd().read().is_err() {
                assert!(start.elapsed() < Duration::from_secs(5), "no interrupt");
                std::thread::sleep(Duration::from_millis(5));
            }
            assert_eq!(request.take_used().len(), 1);
            assert_eq!(request.out_header(reply).error, 0);
            assert!(fs.snapshot_blocker().is_some());
            // Reset joins the worker; the next round activates afresh.
            fs.reset();
        }

        let hiprio = Driver::new(&mem, 0, 0x10_0000);
        let (activation, _) = activation(&mem, &[&hiprio]);
        assert!(matches!(
            fs.activate(activation),
            Err(ActivateError::QueueCount { got: 1, want: 2 })
        ));
    }
}
