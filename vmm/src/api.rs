//! The VMM's API: actions sent to the VMM thread and their answers.
//!
//! The runtime embeds the VMM in its own process; it drives it by sending
//! [`VmmAction`]s through a [`VmmHandle`](crate::VmmHandle), each answered
//! by the VMM thread, as Dragonball's `VmmAction` does. Which action is
//! allowed when is decided by [`VmState::after`], a pure function.

use serde::Serialize;

use crate::builder::BuildError;
use crate::config::{DeviceConfig, VmConfig};
use crate::device_manager::{DeviceError, MmioSlot};
use crate::vstate::vcpu::VcpuError;

/// Where a VM is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    /// No configuration yet.
    Unconfigured,
    /// Configured, not started.
    Configured,
    Running,
    Paused,
    /// Ended, by the guest or by `Stop`. Final.
    Exited,
}

/// A request to the VMM thread.
#[derive(Debug)]
pub enum VmmAction {
    /// Sets (or replaces) the VM's configuration before it starts.
    Configure(VmConfig),
    /// Builds the VM and runs its vCPUs.
    Start,
    /// Builds the VM from the snapshot in `dir` instead of booting it,
    /// and runs its vCPUs from where the snapshot left them. The
    /// configuration must describe the snapshot's machine
    /// ([`GuestView`](crate::snapshot::GuestView)); the host side of its
    /// devices (disk paths, the vsock socket) is the configuration's.
    Restore {
        dir: std::path::PathBuf,
    },
    /// Writes a snapshot of the paused VM into `dir`, which must not
    /// exist ([`crate::snapshot`]); the VM stays paused.
    Snapshot {
        dir: std::path::PathBuf,
    },
    Pause,
    Resume,
    /// Ends the VM; [`ExitReason::Stopped`](crate::ExitReason::Stopped).
    Stop,
    GetState,
    /// Opens a connection to a guest vsock port (answered at once with
    /// the stream; [`VmmHandle::vsock_connect`](crate::VmmHandle::vsock_connect)
    /// then waits for the guest to accept, off the VMM thread).
    ConnectVsock {
        port: u32,
    },
    /// Puts a device in a free hotplug slot of the running VM; answered
    /// with the slot. The guest sees it once it binds the slot.
    AddDevice(DeviceConfig),
    /// Takes the device out of a slot; the guest should unbind it first.
    RemoveDevice {
        slot: u32,
    },
    /// Has a VMM thread make a syscall no VMM thread may (tests of the
    /// confinement); never answered when it is the VMM thread itself.
    #[cfg(feature = "test-hooks")]
    ForbiddenSyscall(TestThread),
}

/// A thread [`VmmAction::ForbiddenSyscall`] can target.
#[cfg(feature = "test-hooks")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestThread {
    Vmm,
    Vcpu(u8),
}

impl VmmAction {
    fn name(&self) -> &'static str {
        match self {
            VmmAction::Configure(_) => "configure",
            VmmAction::Start => "start",
            VmmAction::Restore { .. } => "restore",
            VmmAction::Snapshot { .. } => "snapshot",
            VmmAction::Pause => "pause",
            VmmAction::Resume => "resume",
            VmmAction::Stop => "stop",
            VmmAction::GetState => "get state",
            VmmAction::ConnectVsock { .. } => "connect to vsock in",
            VmmAction::AddDevice(_) => "add a device to",
            VmmAction::RemoveDevice { .. } => "remove a device from",
            #[cfg(feature = "test-hooks")]
            VmmAction::ForbiddenSyscall(_) => "misbehave in",
        }
    }
}

/// A successful answer. (Not comparable: it can carry a stream.)
#[derive(Debug)]
pub enum VmmData {
    Empty,
    State(VmState),
    /// A stream to a guest vsock port, before the guest has accepted.
    VsockStream(std::os::unix::net::UnixStream),
    /// Where a hot-added device went.
    DeviceSlot(MmioSlot),
}

/// A failed answer.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("cannot {action} a VM that is {state:?}")]
    InvalidState {
        action: &'static str,
        state: VmState,
    },
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error("the VMM thread has ended")]
    VmmGone,
    #[error("cannot start the VMM thread: {0}")]
    Spawn(std::io::Error),
    #[error("cannot enter the VM's network namespace: {0}")]
    EnterNetns(std::io::Error),
    #[error("the VM has no vsock device")]
    NoVsock,
    #[error("vsock connect to guest port {port}: {source}")]
    VsockConnect { port: u32, source: std::io::Error },
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error("cannot confine the VMM thread: {0}")]
    Confine(#[from] skiff_confine::ConfineError),
    #[error("snapshot: {0}")]
    Snapshot(#[from] crate::snapshot::SnapshotError),
}

impl VmState {
    /// The state after `action` succeeds in this state, or the error that
    /// refuses it.
    pub fn after(self, action: &VmmAction) -> Result<VmState, VmmError> {
        use VmState::*;
        let next = match (self, action) {
            (_, VmmAction::GetState) => Some(self),
            #[cfg(feature = "test-hooks")]
            (Running | Paused, VmmAction::ForbiddenSyscall(_)) => Some(self),
            (
                Running | Paused,
                VmmAction::ConnectVsock { .. }
                | VmmAction::AddDevice(_)
                | VmmAction::RemoveDevice { .. },
            ) => Some(self),
            (Unconfigured | Configured, VmmAction::Configure(_)) => Some(Configured),
            (Configured, VmmAction::Start | VmmAction::Restore { .. }) => Some(Running),
            (Paused, VmmAction::Snapshot { .. }) => Some(Paused),
            (Running, VmmAction::Pause) => Some(Paused),
            (Paused, VmmAction::Resume) => Some(Running),
            (Running | Paused, VmmAction::Stop) => Some(Exited),
            _ => None,
        };
        next.ok_or(VmmError::InvalidState {
            action: action.name(),
            state: self,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConsoleConfig;
    use VmState::*;

    fn configure() -> VmmAction {
        VmmAction::Configure(VmConfig {
            kernel: "k".into(),
            initrd: None,
            cmdline: String::new(),
            vcpus: 1,
            memory_mib: 128,
            console: ConsoleConfig::Off,
            devices: Vec::new(),
            hotplug_slots: 0,
            seccomp: crate::config::SeccompMode::Enforce,
        })
    }

    fn all_actions() -> Vec<VmmAction> {
        vec![
            configure(),
            VmmAction::Start,
            VmmAction::Pause,
            VmmAction::Resume,
            VmmAction::Stop,
            VmmAction::GetState,
            VmmAction::Restore { dir: "s".into() },
            VmmAction::Snapshot { dir: "s".into() },
            VmmAction::ConnectVsock { port: 1 },
            VmmAction::RemoveDevice { slot: 0 },
        ]
    }

    #[test]
    fn lifecycle_happy_path() {
        let mut state = Unconfigured;
        for (action, expected) in [
            (configure(), Configured),
            (configure(), Configured),
            (VmmAction::Start, Running),
            (VmmAction::Pause, Paused),
            (VmmAction::Pause, Paused),
            (VmmAction::Resume, Running),
            (VmmAction::Stop, Exited),
        ] {
            match state.after(&action) {
                Ok(next) => state = next,
                Err(_) if matches!(action, VmmAction::Pause) && state == Paused => {}
                Err(e) => panic!("{e}"),
            }
            assert_eq!(state, expected);
        }
    }

    #[test]
    fn refuses_out_of_order_actions_with_a_clear_error() {
        let err = Unconfigured.after(&VmmAction::Start).unwrap_err();
        assert_eq!(err.to_string(), "cannot start a VM that is Unconfigured");
        assert!(Running.after(&configure()).is_err());
        assert!(Running.after(&VmmAction::Resume).is_err());
        assert!(Paused.after(&VmmAction::Pause).is_err());
        assert!(Configured.after(&VmmAction::Stop).is_err());
    }

    #[test]
    fn exited_is_final_except_for_queries() {
        for action in all_actions() {
            let result = Exited.after(&action);
            if matches!(action, VmmAction::GetState) {
                assert_eq!(result.unwrap(), Exited);
            } else {
                assert!(result.is_err(), "{action:?} allowed after exit");
            }
        }
    }

    #[test]
    fn vsock_connects_and_hotplug_only_while_the_vm_runs() {
        let disk = DeviceConfig::Block(crate::config::BlockConfig {
            path: "disk.img".into(),
            read_only: true,
            direct: false,
        });
        for action in [
            VmmAction::ConnectVsock { port: 52 },
            VmmAction::AddDevice(disk),
            VmmAction::RemoveDevice { slot: 1 },
        ] {
            assert_eq!(Running.after(&action).unwrap(), Running);
            assert_eq!(Paused.after(&action).unwrap(), Paused);
            for state in [Unconfigured, Configured, Exited] {
                assert!(state.after(&action).is_err(), "{action:?} in {state:?}");
            }
        }
    }

    #[test]
    fn snapshots_only_of_a_paused_vm_and_restores_instead_of_a_start() {
        let snapshot = VmmAction::Snapshot { dir: "s".into() };
        assert_eq!(Paused.after(&snapshot).unwrap(), Paused);
        for state in [Unconfigured, Configured, Running, Exited] {
            assert!(state.after(&snapshot).is_err(), "snapshot in {state:?}");
        }
        let err = Running.after(&snapshot).unwrap_err().to_string();
        assert_eq!(err, "cannot snapshot a VM that is Running");
        let restore = VmmAction::Restore { dir: "s".into() };
        assert_eq!(Configured.after(&restore).unwrap(), Running);
        for state in [Unconfigured, Running, Paused, Exited] {
            assert!(state.after(&restore).is_err(), "restore in {state:?}");
        }
    }

    #[test]
    fn every_state_answers_get_state_unchanged() {
        for state in [Unconfigured, Configured, Running, Paused, Exited] {
            assert_eq!(state.after(&VmmAction::GetState).unwrap(), state);
        }
    }
}
