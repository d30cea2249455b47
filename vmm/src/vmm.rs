//! The VMM thread and the handle the rest of Skiff holds on it.
//!
//! One thread owns the VM: it answers API requests and reacts to exits
//! reported by vCPUs and devices, in an event-manager loop. vCPUs run on
//! their own threads and handle port/MMIO exits in place; they reach this
//! thread only when the VM must end.
//!
//! Beside it runs the VM's launcher (`skiff_confine::launcher`), created
//! here so that it shares the VMM thread's namespaces (the network
//! namespace [`VmmHandle::spawn_in_netns`] was given): once the VM runs, the VMM thread and the vCPUs are confined, and
//! device activation, hot-added device creation and teardown run there. A
//! thread stopped for a seccomp violation ends the VM with
//! [`ExitReason::SeccompViolation`]; a stopped VMM thread answers no more
//! requests, and the handle says the VMM is gone instead of waiting.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use skiff_confine::{join_unless_parked, Confinement, Report, SeccompMode, Slot};
use skiff_devices::virtio::vsock;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::api::{VmState, VmmAction, VmmData, VmmError};
use crate::builder::Machine;
use crate::config::{ConsoleConfig, DeviceConfig, VmConfig};
use crate::device_manager::MmioSlot;
use crate::exit::{ExitReason, ExitSender};
use crate::timeline::{Milestone, Timeline, TimelineReport};
use crate::vstate::vcpu::VcpuStopper;

/// How a VM ended.
#[derive(Clone, Debug)]
pub struct ExitInfo {
    pub reason: ExitReason,
    pub timeline: TimelineReport,
}

#[derive(Default)]
struct ExitSlot {
    info: Mutex<Option<ExitInfo>>,
    ready: Condvar,
}

impl ExitSlot {
    /// Publishes why the VM ended, once; later calls change nothing.
    fn publish(&self, timeline: &Timeline, reason: ExitReason) {
        let mut info = self.info.lock().unwrap_or_else(|e| e.into_inner());
        if info.is_some() {
            return;
        }
        timeline.mark(Milestone::Exited);
        if reason.is_clean() || reason == ExitReason::Stopped {
            tracing::info!(%reason, "VM exited");
        } else {
            tracing::error!(%reason, "VM exited");
        }
        *info = Some(ExitInfo {
            reason,
            timeline: timeline.report(),
        });
        self.ready.notify_all();
    }
}

/// The VMM thread's name, as violation reports give it.
const VMM_THREAD: &str = "skiff-vmm";

/// How long a request waits between checks that the VMM thread was not
/// stopped for a violation.
const PARKED_CHECK: Duration = Duration::from_millis(100);

struct Request {
    /// `None` ends the VMM thread.
    action: Option<VmmAction>,
    reply: Sender<Result<VmmData, VmmError>>,
}

/// The owner's side of a VMM thread. Dropping it stops the VM and joins
/// the thread.
pub struct VmmHandle {
    requests: Sender<Request>,
    wake: Arc<EventFd>,
    exit: Arc<ExitSlot>,
    timeline: Arc<Timeline>,
    confinement: Confinement,
    /// The VMM thread's, for bounded waits.
    slot: Arc<Slot>,
    thread: Option<JoinHandle<()>>,
}

impl VmmHandle {
    /// Starts a VMM thread with no VM yet. `origin` is when the process
    /// (or the request that asked for this VM) started, for the timeline.
    pub fn spawn(origin: Instant) -> Result<Self, VmmError> {
        let wake = Arc::new(EventFd::new(libc::EFD_NONBLOCK).map_err(VmmError::Spawn)?);
        let exit_evt = Arc::new(EventFd::new(libc::EFD_NONBLOCK).map_err(VmmError::Spawn)?);
        let (requests, request_rx) = channel();
        let (exit_tx, exit_rx) = channel();
        let timeline = Arc::new(Timeline::new(origin));
        let exit = Arc::new(ExitSlot::default());
        let exits = ExitSender::new(exit_tx, exit_evt.clone());
        let confinement = Confinement::start("skiff-launcher", SeccompMode::default())
            .map_err(|e| VmmError::Spawn(std::io::Error::other(e)))?;
        let vcpus = Arc::new(Mutex::new(Vec::new()));
        confinement.on_violation(on_violation(
            exits.clone(),
            exit.clone(),
            timeline.clone(),
            vcpus.clone(),
        ));
        let slot = confinement.slot(VMM_THREAD);
        let controller = Controller {
            state: VmState::Unconfigured,
            config: None,
            machine: None,
            requests: request_rx,
            api_evt: wake.clone(),
            exit_evt: exit_evt.clone(),
            exit_rx,
            exits,
            timeline: timeline.clone(),
            exit_slot: exit.clone(),
            confinement: confinement.clone(),
            slot: slot.clone(),
            vcpus,
            quit: false,
        };
        let thread_slot = slot.clone();
        let thread = std::thread::Builder::new()
            .name(VMM_THREAD.into())
            .spawn(move || {
                let _end = thread_slot.end_guard();
                run_event_loop(controller)
            })
            .map_err(VmmError::Spawn)?;
        Ok(Self {
            requests,
            wake,
            exit,
            timeline,
            confinement,
            slot,
            thread: Some(thread),
        })
    }

    /// [`VmmHandle::spawn`] inside the network namespace `netns` (an open
    /// `/run/netns/<name>` or `/proc/<pid>/ns/net`): every thread of the VM
    /// (launcher, VMM thread, vCPUs, device workers) starts there, so the
    /// taps its [`crate::config::NetConfig`]s name are made or found there,
    /// and no VMM thread can reach the caller's network, its abstract Unix
    /// sockets included. The calling thread stays where it is: the
    /// namespace is entered by a short-lived thread of its own.
    pub fn spawn_in_netns(origin: Instant, netns: &std::fs::File) -> Result<Self, VmmError> {
        std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name("vmm-netns".into())
                .spawn_scoped(scope, || {
                    // SAFETY: setns on a borrowed fd; it moves only this
                    // thread, which ends after starting the VMM's.
                    if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        return Err(VmmError::EnterNetns(std::io::Error::last_os_error()));
                    }
                    Self::spawn(origin)
                })
                .map_err(VmmError::Spawn)?
                .join()
                .unwrap_or_else(|_| {
                    Err(VmmError::Spawn(std::io::Error::other(
                        "the thread entering the network namespace panicked",
                    )))
                })
        })
    }

    /// Sends `action` and waits for the answer.
    pub fn request(&self, action: VmmAction) -> Result<VmmData, VmmError> {
        self.send(Some(action))
    }

    fn send(&self, action: Option<VmmAction>) -> Result<VmmData, VmmError> {
        let (reply, answer) = channel();
        self.requests
            .send(Request { action, reply })
            .map_err(|_| VmmError::VmmGone)?;
        self.wake.write(1).map_err(|_| VmmError::VmmGone)?;
        loop {
            match answer.recv_timeout(PARKED_CHECK) {
                Ok(result) => return result,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) if !self.slot.is_parked() => {}
                Err(_) => return Err(VmmError::VmmGone),
            }
        }
    }

    pub fn configure(&self, config: VmConfig) -> Result<(), VmmError> {
        self.request(VmmAction::Configure(config)).map(drop)
    }

    pub fn start(&self) -> Result<(), VmmError> {
        self.request(VmmAction::Start).map(drop)
    }

    /// Builds the configured VM from the snapshot in `dir` and runs it.
    pub fn restore(&self, dir: impl Into<std::path::PathBuf>) -> Result<(), VmmError> {
        self.request(VmmAction::Restore { dir: dir.into() })
            .map(drop)
    }

    /// Writes a snapshot of the paused VM into `dir` (which must not exist).
    pub fn snapshot(&self, dir: impl Into<std::path::PathBuf>) -> Result<(), VmmError> {
        self.request(VmmAction::Snapshot { dir: dir.into() })
            .map(drop)
    }

    pub fn pause(&self) -> Result<(), VmmError> {
        self.request(VmmAction::Pause).map(drop)
    }

    pub fn resume(&self) -> Result<(), VmmError> {
        self.request(VmmAction::Resume).map(drop)
    }

    pub fn stop(&self) -> Result<(), VmmError> {
        self.request(VmmAction::Stop).map(drop)
    }

    pub fn state(&self) -> Result<VmState, VmmError> {
        match self.request(VmmAction::GetState)? {
            VmmData::State(state) => Ok(state),
            _ => Err(VmmError::VmmGone),
        }
    }

    /// A connected stream to guest vsock `port`, once the guest accepted;
    /// fails (refused, or timed out after
    /// [`DEFAULT_CONNECT_TIMEOUT`](skiff_devices::virtio::vsock::DEFAULT_CONNECT_TIMEOUT))
    /// rather than hang when nothing listens in the guest.
    pub fn vsock_connect(&self, port: u32) -> Result<UnixStream, VmmError> {
        self.vsock_connect_timeout(port, vsock::DEFAULT_CONNECT_TIMEOUT)
    }

    pub fn vsock_connect_timeout(
        &self,
        port: u32,
        timeout: Duration,
    ) -> Result<UnixStream, VmmError> {
        let VmmData::VsockStream(stream) = self.request(VmmAction::ConnectVsock { port })? else {
            return Err(VmmError::VmmGone);
        };
        vsock::await_established(&stream, timeout)
            .map_err(|source| VmmError::VsockConnect { port, source })?;
        Ok(stream)
    }

    /// Puts `device` in a free hotplug slot of the running VM. The guest
    /// sees it once it binds the slot's platform device
    /// ([`MmioSlot::guest_device`]; the agent's `AddDevice` does that).
    pub fn add_device(&self, device: DeviceConfig) -> Result<MmioSlot, VmmError> {
        match self.request(VmmAction::AddDevice(device))? {
            VmmData::DeviceSlot(slot) => Ok(slot),
            _ => Err(VmmError::VmmGone),
        }
    }

    /// Takes the device out of `slot`; unbind it in the guest first.
    pub fn remove_device(&self, slot: u32) -> Result<(), VmmError> {
        self.request(VmmAction::RemoveDevice { slot }).map(drop)
    }

    /// Waits until the VM has ended, or `timeout` passes (`None`).
    pub fn wait_exit(&self, timeout: Option<Duration>) -> Option<ExitInfo> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut info = self.exit.info.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(exit) = info.as_ref() {
                return Some(exit.clone());
            }
            info = match deadline {
                None => self
                    .exit
                    .ready
                    .wait(info)
                    .unwrap_or_else(|e| e.into_inner()),
                Some(deadline) => {
                    let left = deadline.checked_duration_since(Instant::now())?;
                    self.exit
                        .ready
                        .wait_timeout(info, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
    }

    /// The boot timeline so far.
    pub fn timeline(&self) -> TimelineReport {
        self.timeline.report()
    }
}

impl Drop for VmmHandle {
    fn drop(&mut self) {
        let _ = self.send(None);
        if let Some(thread) = self.thread.take() {
            join_unless_parked(thread, &self.slot);
        }
        self.confinement.shutdown();
    }
}

/// What the launcher does with a violation report: a stopped vCPU or
/// device thread ends the VM through the VMM thread, as any exit does; a
/// stopped VMM thread cannot, so the vCPUs are stopped and the exit is
/// published here. (The devices and guest memory stay until the process
/// ends: the parked thread holds the machine.)
fn on_violation(
    exits: ExitSender,
    exit_slot: Arc<ExitSlot>,
    timeline: Arc<Timeline>,
    vcpus: Arc<Mutex<Vec<VcpuStopper>>>,
) -> impl Fn(Report) + Send + 'static {
    move |report: Report| {
        let reason = ExitReason::SeccompViolation {
            thread: report.thread.clone(),
            syscall: report.syscall,
        };
        if report.thread == VMM_THREAD {
            for vcpu in vcpus.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                vcpu.stop();
            }
            exit_slot.publish(&timeline, reason);
        } else {
            exits.send(reason);
        }
    }
}

/// State owned by the VMM thread.
struct Controller {
    state: VmState,
    config: Option<VmConfig>,
    machine: Option<Machine>,
    requests: Receiver<Request>,
    api_evt: Arc<EventFd>,
    exit_evt: Arc<EventFd>,
    exit_rx: Receiver<ExitReason>,
    exits: ExitSender,
    timeline: Arc<Timeline>,
    exit_slot: Arc<ExitSlot>,
    confinement: Confinement,
    slot: Arc<Slot>,
    /// For the launcher, should this thread be stopped (`on_violation`).
    vcpus: Arc<Mutex<Vec<VcpuStopper>>>,
    quit: bool,
}

fn run_event_loop(controller: Controller) {
    let controller = Arc::new(Mutex::new(controller));
    let mut events = match EventManager::<Arc<Mutex<Controller>>>::new() {
        Ok(events) => events,
        Err(e) => {
            tracing::error!("cannot create the VMM event loop: {e}");
            return;
        }
    };
    events.add_subscriber(controller.clone());
    loop {
        if let Err(e) = events.run() {
            tracing::error!("VMM event loop: {e}");
            break;
        }
        if controller.lock().unwrap_or_else(|e| e.into_inner()).quit {
            break;
        }
    }
    let mut controller = controller.lock().unwrap_or_else(|e| e.into_inner());
    controller.finish(ExitReason::Stopped);
}

const STDIN_FD: i32 = 0;

impl MutEventSubscriber for Controller {
    fn init(&mut self, ops: &mut EventOps) {
        for fd in [self.api_evt.as_raw_fd(), self.exit_evt.as_raw_fd()] {
            if let Err(e) = ops.add(Events::empty_raw(fd).with_set(EventSet::IN)) {
                tracing::error!("VMM event loop cannot watch fd {fd}: {e}");
                self.quit = true;
            }
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.api_evt.as_raw_fd() {
            let _ = self.api_evt.read();
            while let Ok(request) = self.requests.try_recv() {
                let answer = match request.action {
                    Some(action) => self.handle(action, ops),
                    None => {
                        self.quit = true;
                        Ok(VmmData::Empty)
                    }
                };
                let _ = request.reply.send(answer);
            }
        } else if fd == self.exit_evt.as_raw_fd() {
            let _ = self.exit_evt.read();
            if let Ok(reason) = self.exit_rx.try_recv() {
                self.finish(reason);
            }
        } else if fd == STDIN_FD {
            self.forward_stdin(events, ops);
        }
    }
}

/// Helper so `Events` can be built with a set from a raw fd.
trait WithSet {
    fn with_set(self, set: EventSet) -> Events;
}

impl WithSet for Events {
    fn with_set(self, set: EventSet) -> Events {
        Events::with_data_raw(self.fd(), self.data(), set)
    }
}

impl Controller {
    fn handle(&mut self, action: VmmAction, ops: &mut EventOps) -> Result<VmmData, VmmError> {
        let next = self.state.after(&action)?;
        match action {
            VmmAction::GetState => return Ok(VmmData::State(self.state)),
            VmmAction::Configure(config) => self.config = Some(config),
            VmmAction::Start => self.start(ops, None)?,
            VmmAction::Restore { dir } => self.start(ops, Some(dir))?,
            VmmAction::Snapshot { dir } => self.snapshot(dir)?,
            VmmAction::Pause => self.machine()?.pause()?,
            VmmAction::Resume => self.machine()?.resume()?,
            VmmAction::Stop => self.finish(ExitReason::Stopped),
            VmmAction::ConnectVsock { port } => {
                let connector = self.machine()?.vsock_connector().ok_or(VmmError::NoVsock)?;
                let stream = connector
                    .request(port)
                    .map_err(|source| VmmError::VsockConnect { port, source })?;
                return Ok(VmmData::VsockStream(stream));
            }
            VmmAction::AddDevice(config) => {
                let slot = self.machine_mut()?.add_device(&config)?;
                tracing::info!(slot = slot.index, device = ?config, "virtio device added");
                return Ok(VmmData::DeviceSlot(slot));
            }
            VmmAction::RemoveDevice { slot } => self.machine_mut()?.remove_device(slot)?,
            #[cfg(feature = "test-hooks")]
            VmmAction::ForbiddenSyscall(thread) => match thread {
                crate::api::TestThread::Vmm => crate::vstate::vcpu::forbidden_syscall(),
                crate::api::TestThread::Vcpu(i) => self
                    .machine()?
                    .vcpu(i)
                    .ok_or(VmmError::VmmGone)?
                    .make_forbidden_syscall(),
            },
        }
        self.state = next;
        Ok(VmmData::Empty)
    }

    fn machine(&self) -> Result<&Machine, VmmError> {
        self.machine.as_ref().ok_or(VmmError::InvalidState {
            action: "control",
            state: self.state,
        })
    }

    fn machine_mut(&mut self) -> Result<&mut Machine, VmmError> {
        let state = self.state;
        self.machine.as_mut().ok_or(VmmError::InvalidState {
            action: "control",
            state,
        })
    }

    /// Boots the configured VM, or restores it from the snapshot in `from`.
    fn start(
        &mut self,
        ops: &mut EventOps,
        from: Option<std::path::PathBuf>,
    ) -> Result<(), VmmError> {
        let Some(config) = self.config.as_ref() else {
            return Err(VmmError::InvalidState {
                action: "start",
                state: self.state,
            });
        };
        self.confinement.set_mode(config.seccomp);
        let (timeline, exits, confinement) = (&self.timeline, &self.exits, &self.confinement);
        let mut machine = match from {
            None => Machine::build(config, timeline, exits, confinement)?,
            Some(dir) => Machine::restore(config, &dir, timeline, exits, confinement)?,
        };
        machine.start()?;
        *self.vcpus.lock().unwrap_or_else(|e| e.into_inner()) = machine.vcpu_stoppers();
        if config.console == ConsoleConfig::Stdio {
            // Best effort: stdin may be a file or closed, then no input.
            let _ = ops.add(Events::empty_raw(STDIN_FD).with_set(EventSet::IN));
        }
        self.machine = Some(machine);
        // Everything this thread needs is open; what it may still be asked
        // to open or close for good runs on the launcher.
        let confined = self
            .confinement
            .confine_current_thread(&self.slot, &crate::seccomp::vmm());
        if let Err(e) = confined {
            self.finish(ExitReason::Stopped);
            return Err(e.into());
        }
        Ok(())
    }

    /// Snapshots the paused machine on the launcher: writing files and
    /// reading KVM's VM state are not for this confined thread. The
    /// machine goes there and back, as a device does to be activated.
    fn snapshot(&mut self, dir: std::path::PathBuf) -> Result<(), VmmError> {
        let mut machine = self.machine.take().ok_or(VmmError::InvalidState {
            action: "snapshot",
            state: self.state,
        })?;
        let started = std::time::Instant::now();
        let done = self.confinement.run(move || {
            let result = machine.snapshot(&dir);
            (machine, result)
        });
        match done {
            Ok((machine, result)) => {
                self.machine = Some(machine);
                result?;
                tracing::info!(
                    ms = started.elapsed().as_secs_f64() * 1e3,
                    "snapshot written"
                );
                Ok(())
            }
            // The launcher is gone and the machine with it: the VM is over.
            Err(e) => {
                self.finish(ExitReason::Stopped);
                Err(e.into())
            }
        }
    }

    fn forward_stdin(&mut self, events: Events, ops: &mut EventOps) {
        let mut buf = [0u8; 64];
        let n = match std::io::stdin().lock().read(&mut buf) {
            Ok(n) if n > 0 && events.event_set().contains(EventSet::IN) => n,
            _ => {
                let _ = ops.remove(events);
                return;
            }
        };
        if let Some(machine) = self.machine.as_ref() {
            machine.console_input(&buf[..n]);
        }
    }

    /// Ends the VM (if it ran) and publishes why, once.
    fn finish(&mut self, reason: ExitReason) {
        if self.state == VmState::Exited {
            return;
        }
        let had_machine = self.machine.is_some();
        if let Some(mut machine) = self.machine.take() {
            // The vCPUs first, here: one may be waiting on the launcher
            // to activate a device. The rest (unmapping memory, closing
            // and unlinking what the devices opened) is not for this
            // confined thread.
            machine.stop();
            if let Err(e) = self.confinement.run(move || drop(machine)) {
                tracing::warn!("VM teardown: {e}");
            }
        }
        self.state = VmState::Exited;
        if !had_machine {
            return;
        }
        self.exit_slot.publish(&self.timeline, reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_network_namespace_is_checked_and_entered_by_a_thread_of_its_own() {
        let not_a_namespace = std::fs::File::open("/dev/null").unwrap();
        let err = VmmHandle::spawn_in_netns(Instant::now(), &not_a_namespace)
            .err()
            .expect("/dev/null is no namespace");
        assert!(matches!(err, VmmError::EnterNetns(_)), "{err}");
        assert!(err
            .to_string()
            .starts_with("cannot enter the VM's network namespace"));

        let before = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
        let own = std::fs::File::open("/proc/self/ns/net").unwrap();
        let vmm = VmmHandle::spawn_in_netns(Instant::now(), &own).unwrap();
        assert_eq!(vmm.state().unwrap(), VmState::Unconfigured);
        assert_eq!(
            std::fs::read_link("/proc/thread-self/ns/net").unwrap(),
            before
        );
    }
}
