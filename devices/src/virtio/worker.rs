//! The data-path thread of a virtio device.
//!
//! Each active device runs one worker thread that waits in epoll on the
//! queues' ioeventfds and its backend's fds (tap, sockets) and processes
//! them. A blocked backend then stalls only its own device, never a vCPU or
//! the VMM thread. Resetting the device stops the worker through a kill
//! eventfd and joins it, so no thread or fd outlives the device.
//!
//! A worker confines itself before its loop: first what only it may hold
//! ([`WorkerLoop::on_start`]: the virtio-fs jail), then its device's
//! [`ThreadPolicy`] (capabilities, signals, seccomp filter). Activation
//! waits for that, so a worker that cannot confine itself fails the
//! device's start instead of running unconfined.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::thread::JoinHandle;

use skiff_confine::{join_unless_parked, Confinement, Slot, ThreadPolicy};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

/// Token reserved for the kill eventfd.
const KILL_TOKEN: u64 = u64::MAX;
const MAX_EVENTS: usize = 32;

/// Registers and unregisters fds while the worker runs.
pub struct Poller {
    epoll: Epoll,
}

impl Poller {
    pub fn add(&self, fd: RawFd, token: u64, events: EventSet) -> io::Result<()> {
        self.epoll
            .ctl(ControlOperation::Add, fd, EpollEvent::new(events, token))
    }

    pub fn modify(&self, fd: RawFd, token: u64, events: EventSet) -> io::Result<()> {
        self.epoll
            .ctl(ControlOperation::Modify, fd, EpollEvent::new(events, token))
    }

    pub fn remove(&self, fd: RawFd) -> io::Result<()> {
        self.epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default())
    }
}

/// What a device does on its worker thread.
pub trait WorkerLoop: Send + 'static {
    /// Runs first on the worker thread, before it is confined.
    fn on_start(&mut self, _confinement: &Confinement) -> io::Result<()> {
        Ok(())
    }
    /// What the thread may do once confined (see `virtio::seccomp`).
    fn policy(&self) -> ThreadPolicy;
    /// Registers the fds to watch before the loop starts.
    fn register(&mut self, poller: &Poller) -> io::Result<()>;
    /// Handles readiness of the fd registered with `token`.
    fn handle(&mut self, poller: &Poller, token: u64, events: EventSet);
}

/// A running worker thread; dropping it stops and joins the thread.
pub struct Worker {
    kill: EventFd,
    slot: Arc<Slot>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts `work` on a thread called `name`, confined by `confinement`;
    /// returns once the thread is confined and about to wait.
    pub fn spawn(
        name: &str,
        mut work: impl WorkerLoop,
        confinement: &Confinement,
    ) -> io::Result<Self> {
        let kill = EventFd::new(libc::EFD_NONBLOCK)?;
        let poller = Poller {
            epoll: Epoll::new()?,
        };
        poller.add(kill.as_raw_fd(), KILL_TOKEN, EventSet::IN)?;
        work.register(&poller)?;
        let slot = confinement.slot(name);
        let (ready, started) = sync_channel(1);
        let (c, s) = (confinement.clone(), slot.clone());
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                let _end = s.end_guard();
                let confined = work.on_start(&c).and_then(|()| {
                    c.confine_current_thread(&s, &work.policy())
                        .map_err(io::Error::other)
                });
                let go = confined.is_ok();
                let _ = ready.send(confined);
                if go {
                    run(poller, work);
                }
            })?;
        let mut worker = Self {
            kill,
            slot,
            thread: Some(thread),
        };
        match started.recv() {
            Ok(Ok(())) => Ok(worker),
            Ok(Err(e)) => {
                worker.stop();
                Err(e)
            }
            Err(_) => {
                worker.stop();
                Err(io::Error::other(format!("{name} ended before it started")))
            }
        }
    }

    /// Stops the thread and waits for it, unless it is parked after a
    /// seccomp violation (then it is left behind; see `skiff_confine`).
    pub fn stop(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = self.kill.write(1);
            join_unless_parked(thread, &self.slot);
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(poller: Poller, mut work: impl WorkerLoop) {
    let mut events = vec![EpollEvent::default(); MAX_EVENTS];
    loop {
        let n = match poller.epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!("virtio worker epoll failed: {e}");
                return;
            }
        };
        for event in &events[..n] {
            if event.data() == KILL_TOKEN {
                return;
            }
            work.handle(&poller, event.data(), event.event_set());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::{channel, Sender};
    use std::time::Duration;

    struct Echo {
        evt: EventFd,
        seen: Sender<u64>,
    }

    impl WorkerLoop for Echo {
        fn policy(&self) -> ThreadPolicy {
            ThreadPolicy::default()
        }
        fn register(&mut self, poller: &Poller) -> io::Result<()> {
            poller.add(self.evt.as_raw_fd(), 7, EventSet::IN)
        }
        fn handle(&mut self, _: &Poller, token: u64, _: EventSet) {
            let _ = self.evt.read();
            let _ = self.seen.send(token);
        }
    }

    #[test]
    fn dispatches_events_and_stops_on_drop() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let (seen, rx) = channel();
        let worker = Worker::spawn(
            "test-worker",
            Echo {
                evt: evt.try_clone().unwrap(),
                seen,
            },
            &Confinement::inline(),
        )
        .unwrap();
        evt.write(1).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), 7);
        drop(worker);
        // The loop (and its sender) is gone once drop returns.
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
    }
}
