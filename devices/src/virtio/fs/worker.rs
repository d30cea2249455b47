//! The virtio-fs worker thread: waits on the queues' notify eventfds and
//! serves requests. One thread serves both queues; the passthrough does
//! its syscalls on it (FUSE requests from a small guest do not need a
//! pool, and one thread keeps the VMM's footprint small).

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;

use super::FuseServer;
use crate::virtio::worker::{Poller, WorkerLoop};
use crate::virtio::{ActiveQueue, Interrupt};

pub(super) struct FsWorker {
    pub mem: GuestMemoryMmap,
    /// Queue `i` is registered with token `i`.
    pub queues: Vec<ActiveQueue>,
    pub interrupt: Arc<Interrupt>,
    pub server: FuseServer,
    thread_isolated: bool,
}

impl FsWorker {
    pub fn new(
        mem: GuestMemoryMmap,
        queues: Vec<ActiveQueue>,
        interrupt: Arc<Interrupt>,
        server: FuseServer,
    ) -> Self {
        Self {
            mem,
            queues,
            interrupt,
            server,
            thread_isolated: false,
        }
    }

    /// Gives this thread its own umask and working directory: the
    /// passthrough clears the umask when the guest mounts, and that must
    /// not change the mode of files the rest of the VMM creates.
    fn isolate_thread(&mut self) {
        if self.thread_isolated {
            return;
        }
        self.thread_isolated = true;
        // SAFETY: unshare only changes this thread's fs context.
        if unsafe { libc::unshare(libc::CLONE_FS) } != 0 {
            tracing::warn!(
                "virtio-fs: unshare(CLONE_FS) failed, the umask is process-wide: {}",
                io::Error::last_os_error()
            );
        }
    }
}

impl WorkerLoop for FsWorker {
    fn register(&mut self, poller: &Poller) -> io::Result<()> {
        for (token, queue) in self.queues.iter().enumerate() {
            poller.add(queue.notify.as_raw_fd(), token as u64, EventSet::IN)?;
        }
        Ok(())
    }

    fn handle(&mut self, _poller: &Poller, token: u64, _events: EventSet) {
        self.isolate_thread();
        let Some(active) = usize::try_from(token)
            .ok()
            .and_then(|i| self.queues.get_mut(i))
        else {
            return;
        };
        let _ = active.notify.read();
        if self.server.process_queue(
            &self.mem,
            &mut active.queue,
            &self.interrupt,
            Some(&active.notify),
        ) {
            self.interrupt.signal_used();
        }
    }
}
