//! vCPU threads: each runs KVM_RUN in a loop, dispatches port and MMIO
//! exits to the buses in place, and obeys pause/resume/stop commands.
//!
//! A command is delivered on a channel and the thread is kicked out of
//! KVM_RUN with a real-time signal whose handler sets `immediate_exit` in
//! the thread's `kvm_run`, so a kick that lands just before KVM_RUN is not
//! lost: KVM returns EINTR at once and the thread reads its channel.
//!
//! Each thread confines itself before its first KVM_RUN
//! ([`crate::seccomp::vcpu`]): KVM_RUN on its own fd and what its exit
//! handlers call, the kick signal and no capabilities.

use std::cell::Cell;
use std::os::fd::AsRawFd;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Once};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_bindings::{kvm_run, KVM_SYSTEM_EVENT_CRASH};
use kvm_ioctls::{VcpuExit, VcpuFd};
use skiff_confine::{join_within, Confinement, Slot};
use skiff_devices::Bus;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use super::vcpu_state::{VcpuState, VcpuStateError};
use crate::exit::ExitReason;
use crate::timeline::{Milestone, Timeline};
use crate::ExitSender;

/// How long a vCPU may take to acknowledge a pause.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stopped vCPU's thread may take to end before it is left
/// behind (a kicked vCPU takes microseconds on hardware; this allows for a
/// loaded host).
const STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// Errors controlling vCPU threads.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("cannot start vCPU thread {index}: {source}")]
    Spawn { index: u8, source: std::io::Error },
    #[error("cannot install the vCPU kick signal handler: {0}")]
    Signal(vmm_sys_util::errno::Error),
    #[error("vCPU {0} did not acknowledge {1} in time")]
    NoAck(u8, &'static str),
    #[error("vCPU {0} thread has ended")]
    Gone(u8),
    #[error(transparent)]
    State(#[from] VcpuStateError),
}

/// A vCPU before its thread starts.
pub struct Vcpu {
    pub fd: VcpuFd,
    pub index: u8,
    pub io_bus: Arc<Bus>,
    pub mmio_bus: Arc<Bus>,
    pub exits: ExitSender,
    pub timeline: Arc<Timeline>,
    pub confinement: Confinement,
    /// The MSRs a snapshot saves (KVM's list, read once per VM).
    pub msr_indices: Arc<[u32]>,
}

type SaveReply = Sender<Result<VcpuState, VcpuStateError>>;

enum Command {
    Pause,
    Resume,
    Stop,
    /// Reads the (paused) vCPU's state for a snapshot: on its own thread,
    /// the one KVM wants vCPU ioctls from.
    Save(SaveReply),
    /// Makes a syscall no vCPU may (tests of the confinement).
    #[cfg(feature = "test-hooks")]
    ForbiddenSyscall,
}

/// The VMM's side of a running vCPU thread.
pub struct VcpuHandle {
    index: u8,
    commands: Sender<Command>,
    acks: Receiver<()>,
    slot: Arc<Slot>,
    thread: Option<JoinHandle<()>>,
}

thread_local! {
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let run = KVM_RUN.with(|r| r.get());
    if !run.is_null() {
        // SAFETY: the pointer is this thread's mapped `kvm_run`, set while
        // the vCPU fd is alive and cleared before it is dropped. A volatile
        // byte store is async-signal-safe.
        unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
    }
}

fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

fn install_kick_handler() -> Result<(), VcpuError> {
    static INSTALL: Once = Once::new();
    let mut result = Ok(());
    INSTALL.call_once(|| result = register_signal_handler(kick_signal(), kick_handler));
    result.map_err(VcpuError::Signal)
}

impl Vcpu {
    /// Starts the vCPU thread; the guest runs at once.
    pub fn start(self) -> Result<VcpuHandle, VcpuError> {
        install_kick_handler()?;
        let index = self.index;
        let (commands, command_rx) = channel();
        let (ack_tx, acks) = channel();
        let name = format!("skiff-vcpu{index}");
        let slot = self.confinement.slot(&name);
        let thread_slot = slot.clone();
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || self.run(command_rx, ack_tx, thread_slot))
            .map_err(|source| VcpuError::Spawn { index, source })?;
        Ok(VcpuHandle {
            index,
            commands,
            acks,
            slot,
            thread: Some(thread),
        })
    }

    fn run(mut self, commands: Receiver<Command>, acks: Sender<()>, slot: Arc<Slot>) {
        let _end = slot.end_guard();
        KVM_RUN.with(|r| r.set(self.fd.get_kvm_run() as *mut kvm_run));
        let policy = crate::seccomp::vcpu(self.fd.as_raw_fd());
        if let Err(e) = self.confinement.confine_current_thread(&slot, &policy) {
            KVM_RUN.with(|r| r.set(std::ptr::null_mut()));
            self.exits.send(ExitReason::VcpuError {
                vcpu: self.index,
                error: format!("cannot confine the vCPU thread: {e}"),
            });
            return;
        }
        self.run_loop(&commands, &acks);
        KVM_RUN.with(|r| r.set(std::ptr::null_mut()));
        self.timeline.add_vcpu_thread_cpu();
    }

    fn run_loop(&mut self, commands: &Receiver<Command>, acks: &Sender<()>) {
        loop {
            match commands.try_recv() {
                Ok(Command::Pause) => {
                    let _ = acks.send(());
                    if !self.wait_for_resume(commands, acks) {
                        return;
                    }
                }
                Ok(Command::Resume) => {
                    let _ = acks.send(());
                }
                // Only a paused vCPU is saved; the reply dropped says no.
                Ok(Command::Save(_)) => {}
                Ok(Command::Stop) | Err(TryRecvError::Disconnected) => return,
                #[cfg(feature = "test-hooks")]
                Ok(Command::ForbiddenSyscall) => forbidden_syscall(),
                Err(TryRecvError::Empty) => {}
            }
            if self.index == 0 {
                self.timeline.mark(Milestone::FirstKvmRun);
            }
            if let Some(reason) = self.run_once() {
                tracing::debug!(vcpu = self.index, %reason, "vCPU stops");
                self.exits.send(reason);
                // The VM is over; wait to be told to stop.
                while let Ok(command) = commands.recv() {
                    match command {
                        Command::Stop => return,
                        Command::Pause | Command::Resume => {
                            let _ = acks.send(());
                        }
                        Command::Save(_) => {}
                        #[cfg(feature = "test-hooks")]
                        Command::ForbiddenSyscall => forbidden_syscall(),
                    }
                }
                return;
            }
        }
    }

    /// Runs the guest until the next exit; `Some` when the VM must end.
    fn run_once(&mut self) -> Option<ExitReason> {
        let index = self.index;
        match self.fd.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                if !self.io_bus.read(u64::from(port), data) {
                    data.fill(0xff);
                }
                None
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                self.io_bus.write(u64::from(port), data);
                None
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                if !self.mmio_bus.read(addr, data) {
                    data.fill(0);
                }
                None
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                self.mmio_bus.write(addr, data);
                None
            }
            Ok(VcpuExit::Hlt) => Some(ExitReason::GuestShutdown),
            Ok(VcpuExit::Shutdown) => Some(ExitReason::TripleFault {
                vcpu: index,
                regs: self.describe_registers(),
            }),
            Ok(VcpuExit::SystemEvent(kind, _)) => Some(if kind == KVM_SYSTEM_EVENT_CRASH {
                ExitReason::KernelPanic("KVM system event: crash".into())
            } else {
                ExitReason::GuestShutdown
            }),
            Ok(VcpuExit::FailEntry(reason, _)) => Some(ExitReason::FailEntry {
                vcpu: index,
                reason,
            }),
            Ok(VcpuExit::InternalError) => {
                // SAFETY: the `internal` union member is the one KVM fills
                // for KVM_EXIT_INTERNAL_ERROR.
                let suberror = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal.suberror };
                Some(ExitReason::KvmInternalError {
                    vcpu: index,
                    suberror,
                    regs: self.describe_registers(),
                })
            }
            Ok(VcpuExit::Intr | VcpuExit::IrqWindowOpen) => None,
            Ok(other) => Some(ExitReason::VcpuError {
                vcpu: index,
                error: format!("unhandled KVM exit {other:?}"),
            }),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                self.fd.set_kvm_immediate_exit(0);
                None
            }
            Err(e) => Some(ExitReason::VcpuError {
                vcpu: index,
                error: format!("KVM_RUN: {e}"),
            }),
        }
    }

    /// One line with the registers that explain a crash.
    fn describe_registers(&self) -> String {
        let regs = self.fd.get_regs();
        let sregs = self.fd.get_sregs();
        match (regs, sregs) {
            (Ok(r), Ok(s)) => {
                format!(
                "rip={:#x} rsp={:#x} rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} rsi={:#x} rdi={:#x} \
                 rflags={:#x} cs={:#x} cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x}",
                r.rip, r.rsp, r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rflags, s.cs.selector,
                s.cr0, s.cr2, s.cr3, s.cr4, s.efer
            )
            }
            (Err(e), _) | (_, Err(e)) => format!("registers unavailable: {e}"),
        }
    }
}

impl Vcpu {
    /// Blocks while paused; false when told to stop.
    fn wait_for_resume(&self, commands: &Receiver<Command>, acks: &Sender<()>) -> bool {
        loop {
            match commands.recv() {
                Ok(Command::Resume) => {
                    let _ = acks.send(());
                    return true;
                }
                Ok(Command::Pause) => {
                    let _ = acks.send(());
                }
                Ok(Command::Save(reply)) => {
                    let _ = reply.send(VcpuState::save(&self.fd, self.index, &self.msr_indices));
                }
                #[cfg(feature = "test-hooks")]
                Ok(Command::ForbiddenSyscall) => forbidden_syscall(),
                Ok(Command::Stop) | Err(_) => return false,
            }
        }
    }
}

impl VcpuHandle {
    fn command(&self, command: Command, what: &'static str) -> Result<(), VcpuError> {
        self.commands
            .send(command)
            .map_err(|_| VcpuError::Gone(self.index))?;
        self.kick();
        match self.acks.recv_timeout(ACK_TIMEOUT) {
            Ok(()) => Ok(()),
            Err(RecvTimeoutError::Timeout) => Err(VcpuError::NoAck(self.index, what)),
            Err(RecvTimeoutError::Disconnected) => Err(VcpuError::Gone(self.index)),
        }
    }

    /// Stops running guest code until [`resume`](Self::resume).
    pub fn pause(&self) -> Result<(), VcpuError> {
        self.command(Command::Pause, "pause")
    }

    pub fn resume(&self) -> Result<(), VcpuError> {
        self.command(Command::Resume, "resume")
    }

    /// The state of the paused vCPU, read on its thread.
    pub fn save(&self) -> Result<VcpuState, VcpuError> {
        let (reply, state) = channel();
        self.commands
            .send(Command::Save(reply))
            .map_err(|_| VcpuError::Gone(self.index))?;
        match state.recv_timeout(ACK_TIMEOUT) {
            Ok(state) => Ok(state?),
            Err(RecvTimeoutError::Timeout) => Err(VcpuError::NoAck(self.index, "save")),
            Err(RecvTimeoutError::Disconnected) => Err(VcpuError::Gone(self.index)),
        }
    }

    /// Has the thread make a syscall no vCPU may (tests of the
    /// confinement; the thread is then stopped and the VM reports it).
    #[cfg(feature = "test-hooks")]
    pub fn make_forbidden_syscall(&self) {
        if self.commands.send(Command::ForbiddenSyscall).is_ok() {
            self.kick();
        }
    }

    fn kick(&self) {
        if let Some(thread) = &self.thread {
            // The thread may have ended already; nothing to interrupt then.
            let _ = thread.kill(kick_signal());
        }
    }
}

/// Dropping a handle stops the vCPU thread and waits for it, at most
/// [`STOP_TIMEOUT`]: a kicked vCPU leaves KVM_RUN at once, so one that does
/// not is stopped from outside (ptrace, a debugger) or stuck in the host
/// kernel, and is left to end with the process rather than hold the VM's
/// teardown (and whoever waits on it, as containerd does) forever.
impl Drop for VcpuHandle {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Stop);
        self.kick();
        if let Some(thread) = self.thread.take() {
            join_within(thread, &self.slot, STOP_TIMEOUT);
        }
    }
}

/// Stops a vCPU thread without its handle, for whoever cannot reach the
/// handle: the launcher, when the VMM thread that owns the handles was
/// stopped for a seccomp violation.
#[derive(Clone)]
pub struct VcpuStopper {
    commands: Sender<Command>,
    thread: libc::pthread_t,
}

impl VcpuStopper {
    pub fn stop(&self) {
        if self.commands.send(Command::Stop).is_ok() {
            // SAFETY: the thread is not joined while its handle (in the
            // machine) lives, so its pthread_t stays valid.
            unsafe { libc::pthread_kill(self.thread, kick_signal()) };
        }
    }
}

impl VcpuHandle {
    pub fn stopper(&self) -> Option<VcpuStopper> {
        use std::os::unix::thread::JoinHandleExt;
        let thread = self.thread.as_ref()?.as_pthread_t();
        Some(VcpuStopper {
            commands: self.commands.clone(),
            thread,
        })
    }
}

/// A syscall no VMM thread's filter allows.
#[cfg(feature = "test-hooks")]
pub(crate) fn forbidden_syscall() {
    // SAFETY: uname into a local struct.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    unsafe { libc::uname(&mut u) };
}
