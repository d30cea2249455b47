//! The virtio-fs worker thread: waits on the queues' notify eventfds and
//! serves requests. One thread serves both queues; the passthrough does
//! its syscalls on it (FUSE requests from a small guest do not need a
//! pool, and one thread keeps the VMM's footprint small).

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;

use skiff_confine::{Confinement, SeccompMode};

use super::{jail, FsShare, FuseServer};
use crate::virtio::worker::{Poller, WorkerLoop};
use crate::virtio::{ActiveQueue, Interrupt};

pub(super) struct FsWorker {
    pub mem: GuestMemoryMmap,
    /// Queue `i` is registered with token `i`.
    pub queues: Vec<ActiveQueue>,
    pub interrupt: Arc<Interrupt>,
    share: FsShare,
    /// Built on the worker thread, in its jail ([`WorkerLoop::on_start`]).
    server: Option<FuseServer>,
    /// The device's: set at the driver's first notification.
    session_started: Arc<AtomicBool>,
}

impl FsWorker {
    pub fn new(
        mem: GuestMemoryMmap,
        queues: Vec<ActiveQueue>,
        interrupt: Arc<Interrupt>,
        share: FsShare,
        session_started: Arc<AtomicBool>,
    ) -> Self {
        Self {
            mem,
            queues,
            interrupt,
            share,
            server: None,
            session_started,
        }
    }
}

impl WorkerLoop for FsWorker {
    fn policy(&self) -> skiff_confine::ThreadPolicy {
        crate::virtio::seccomp::fs()
    }

    fn register(&mut self, poller: &Poller) -> io::Result<()> {
        for (token, queue) in self.queues.iter().enumerate() {
            poller.add(queue.notify.as_raw_fd(), token as u64, EventSet::IN)?;
        }
        Ok(())
    }

    /// Confined: jails the thread in the share (which also gives it its
    /// own umask: the passthrough clears it at FUSE_INIT) and builds the
    /// passthrough there. Unconfined (`off`): only the thread's own fs
    /// context, and the passthrough over the share's host path.
    fn on_start(&mut self, confinement: &Confinement) -> io::Result<()> {
        let server = if confinement.mode() == SeccompMode::Off {
            // SAFETY: unshare only changes this thread's fs context.
            if unsafe { libc::unshare(libc::CLONE_FS) } != 0 {
                return Err(io::Error::last_os_error());
            }
            FuseServer::new(&self.share)?
        } else {
            let fds = jail::enter(&self.share.path)?;
            FuseServer::jailed(&self.share, fds)
        };
        self.server = Some(server);
        Ok(())
    }

    fn handle(&mut self, _poller: &Poller, token: u64, _events: EventSet) {
        let Some(server) = self.server.as_ref() else {
            return;
        };
        let Some(active) = usize::try_from(token)
            .ok()
            .and_then(|i| self.queues.get_mut(i))
        else {
            return;
        };
        let _ = active.notify.read();
        self.session_started.store(true, Ordering::Release);
        if server.process_queue(
            &self.mem,
            &mut active.queue,
            &self.interrupt,
            Some(&active.notify),
        ) {
            self.interrupt.signal_used();
        }
    }
}
