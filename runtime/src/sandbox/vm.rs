//! The sandbox's VM as the VMM API sees it: its configuration (the guest
//! kernel's command line and the boot device list, built once here and
//! checked against the VMM's slots before anything is made for the pod;
//! the same VM without the pod's interfaces when it is restored from a
//! template), the VMM thread started in the pod's network namespace, and
//! the watcher that reacts when the VM ends on its own.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use skiff_guest_abi::cmdline::default_cmdline;
use skiff_vmm::config::{host_has_hardware_virt, DeviceConfig, FsConfig, VsockConfig};
use skiff_vmm::device_manager::MAX_SLOTS;
use skiff_vmm::timeline::Milestone;
use skiff_vmm::{ConsoleConfig, ExitReason, VmConfig, VmmHandle};

use crate::config::{RuntimeConfig, BOOT_DEVICES};
use crate::pod_net::{NetworkError, PodNetwork};

use super::{BootTimeline, SandboxError};

/// virtio-fs tag of the sandbox's shared directory.
pub const SHARE_TAG: &str = "skiffshared";
/// The guest's vsock context id; the host is 2.
const GUEST_CID: u32 = 3;
/// The guest console's log in the state directory.
pub(super) const CONSOLE_LOG: &str = "console.log";
/// The vsock device's host socket in the state directory.
const VSOCK_SOCKET: &str = "vsock.sock";
/// Console lines quoted in an error when the guest never answered.
const CONSOLE_TAIL_LINES: usize = 20;

/// The VM of a sandbox whose state directory is `dir` and whose shared
/// directory is `share`: the kernel and sizes from `config`, the vsock and
/// virtio-fs devices, one virtio-net device per pod interface, and the
/// configured empty hotplug slots. Fails, naming the counts, when they do
/// not fit the VMM's slots: `config` alone cannot know how many
/// interfaces a pod has.
pub(super) fn config(
    config: &RuntimeConfig,
    dir: &Path,
    share: &Path,
    net: Option<&PodNetwork>,
) -> Result<VmConfig, SandboxError> {
    let hv = &config.hypervisor;
    let mut cmdline = default_cmdline(host_has_hardware_virt());
    if hv.debug_console {
        cmdline = cmdline.replace(" quiet", "");
    }
    if !hv.kernel_params.is_empty() {
        cmdline = format!("{cmdline} {}", hv.kernel_params);
    }
    let mut devices = vec![
        DeviceConfig::Vsock(VsockConfig {
            guest_cid: GUEST_CID,
            socket: dir.join(VSOCK_SOCKET),
        }),
        DeviceConfig::Fs(FsConfig {
            tag: SHARE_TAG.into(),
            path: share.to_path_buf(),
            read_only: false,
            cache: config.shared_fs.cache_policy()?,
        }),
    ];
    debug_assert_eq!(devices.len(), BOOT_DEVICES);
    if let Some(net) = net {
        devices.extend(net.vm_devices()?);
    }
    let slots = devices.len() + usize::from(hv.hotplug_slots);
    if slots > MAX_SLOTS {
        return Err(SandboxError::TooManyDevices {
            interfaces: devices.len() - BOOT_DEVICES,
            hotplug_slots: hv.hotplug_slots,
            slots,
            max: MAX_SLOTS,
        });
    }
    Ok(VmConfig {
        kernel: hv.kernel.clone(),
        initrd: Some(hv.initrd.clone()),
        cmdline,
        vcpus: hv.vcpus,
        memory_mib: hv.memory_mib,
        console: ConsoleConfig::File(dir.join(CONSOLE_LOG)),
        devices,
        hotplug_slots: hv.hotplug_slots,
        seccomp: hv.seccomp,
    })
}

/// The VM of a sandbox restored from a template, and the pod's interfaces
/// to hot-add once it runs: the boot devices alone and every other slot
/// free for hotplug (the interfaces first, then containers' disks), so
/// nothing in it names the pod and one template serves every pod of a VM
/// shape. Fails like [`config`] when the interfaces and the configured
/// hotplug slots do not fit, so both modes take the same pods.
pub(super) fn restored_config(
    config: &RuntimeConfig,
    dir: &Path,
    share: &Path,
    net: Option<&PodNetwork>,
) -> Result<(VmConfig, Vec<DeviceConfig>), SandboxError> {
    let mut vm = self::config(config, dir, share, net)?;
    let interfaces = vm.devices.split_off(BOOT_DEVICES);
    vm.hotplug_slots = (MAX_SLOTS - BOOT_DEVICES) as u8;
    Ok((vm, interfaces))
}

/// Starts the VMM in the pod's network namespace, named to the VMM API, so
/// the taps it opens (and every thread it starts) live there; in this
/// process's own namespace when the pod has none.
pub(super) fn spawn(net: Option<&PodNetwork>, origin: Instant) -> Result<VmmHandle, SandboxError> {
    let Some(net) = net else {
        return Ok(VmmHandle::spawn(origin)?);
    };
    let ns = std::fs::File::open(&net.netns).map_err(|err| NetworkError::OpenNetns {
        path: net.netns.clone(),
        err,
    })?;
    Ok(VmmHandle::spawn_in_netns(origin, &ns)?)
}

/// The VMM's boot milestones, then the agent's answer, in wall-clock
/// milliseconds since `origin`.
pub(super) fn timeline(vmm: &VmmHandle, origin: Instant) -> BootTimeline {
    let report = vmm.timeline();
    let mut timeline = BootTimeline::default();
    for milestone in [
        Milestone::VmCreated,
        Milestone::KernelLoaded,
        Milestone::Restored,
        Milestone::FirstKvmRun,
        Milestone::GuestInit,
    ] {
        let label = match milestone {
            Milestone::Restored => "restored from template",
            other => other.label(),
        };
        if let Some(mark) = report.get(milestone) {
            timeline.steps.push((label, mark.wall_ms));
        }
    }
    timeline
        .steps
        .push(("agent ready", origin.elapsed().as_secs_f64() * 1e3));
    timeline
}

/// Logs why the VM ended when it ends on its own (the guest, a fault, a
/// VMM thread stopped by its seccomp filter), and closes the agent's
/// stream, so every call waiting in the agent (a process's wait, the OOM
/// events) fails at once and the containers are reported exited: the
/// device side of that stream may be held by a parked thread and never
/// close by itself.
pub(super) fn watch_exit(id: &str, vmm: Arc<VmmHandle>, agent_stream: UnixStream) {
    let id = id.to_string();
    let watcher = std::thread::Builder::new()
        .name("vm-exit".into())
        .spawn(move || {
            let Some(exit) = vmm.wait_exit(None) else {
                return;
            };
            if exit.reason != ExitReason::Stopped {
                tracing::error!("sandbox {id}: the VM ended: {}", exit.reason);
            }
            let _ = agent_stream.shutdown(std::net::Shutdown::Both);
        });
    if let Err(e) = watcher {
        tracing::warn!("sandbox: no VM exit watcher: {e}");
    }
}

/// The last lines of the guest's console, for an error that says why the
/// guest never answered.
pub(super) fn console_tail(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join(CONSOLE_LOG)).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(CONSOLE_TAIL_LINES)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod_net::PodInterface;

    fn pod_with(interfaces: usize) -> PodNetwork {
        PodNetwork {
            netns: "/run/netns/test".into(),
            interfaces: (0..interfaces)
                .map(|i| PodInterface {
                    name: format!("eth{i}"),
                    mac: format!("02:00:00:00:00:{i:02x}"),
                    mtu: 1500,
                    addresses: vec![],
                    tap: format!("skiff-tap{i}"),
                })
                .collect(),
            routes: vec![],
        }
    }

    #[test]
    fn the_boot_devices_are_counted_once_for_validation_and_boot() {
        let dir = Path::new("/run/skiff/sbs/x");
        let mut config = RuntimeConfig::default();
        let vm = super::config(&config, dir, &dir.join("shared"), None).unwrap();
        assert_eq!(vm.devices.len(), BOOT_DEVICES);
        assert!(matches!(vm.devices[0], DeviceConfig::Vsock(_)));
        assert!(matches!(vm.devices[1], DeviceConfig::Fs(_)));

        // The most hotplug slots the configuration allows fit a pod
        // without a network, and one interface fewer for each it has.
        config.hypervisor.hotplug_slots = (MAX_SLOTS - BOOT_DEVICES) as u8;
        super::config(&config, dir, dir, None).unwrap();
        config.hypervisor.hotplug_slots -= 2;
        let vm = super::config(&config, dir, dir, Some(&pod_with(2))).unwrap();
        assert_eq!(vm.devices.len(), BOOT_DEVICES + 2);
        assert!(matches!(vm.devices[3], DeviceConfig::Net(_)));
        let err = super::config(&config, dir, dir, Some(&pod_with(3))).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "the pod has 3 network interfaces and hypervisor.hotplug_slots = {}: \
                 with vsock and the shared directory that is {} virtio slots, at most {MAX_SLOTS}",
                MAX_SLOTS - BOOT_DEVICES - 2,
                MAX_SLOTS + 1
            )
        );
    }

    #[test]
    fn a_restored_vm_has_the_boot_devices_and_hot_adds_the_interfaces() {
        let dir = Path::new("/run/skiff/sbs/x");
        let mut config = RuntimeConfig::default();
        let (vm, interfaces) = restored_config(&config, dir, dir, Some(&pod_with(2))).unwrap();
        assert_eq!(vm.devices.len(), BOOT_DEVICES);
        assert_eq!(usize::from(vm.hotplug_slots), MAX_SLOTS - BOOT_DEVICES);
        assert_eq!(interfaces.len(), 2);
        assert!(interfaces.iter().all(|d| matches!(d, DeviceConfig::Net(_))));
        // Every pod of a VM shape restores the same machine.
        let (other, _) = restored_config(&config, dir, dir, None).unwrap();
        assert_eq!(
            (&vm.cmdline, vm.hotplug_slots),
            (&other.cmdline, other.hotplug_slots)
        );
        // And both modes take the same pods.
        config.hypervisor.hotplug_slots = (MAX_SLOTS - BOOT_DEVICES - 2) as u8;
        restored_config(&config, dir, dir, Some(&pod_with(2))).unwrap();
        assert!(matches!(
            restored_config(&config, dir, dir, Some(&pod_with(3))),
            Err(SandboxError::TooManyDevices { .. })
        ));
    }

    #[test]
    fn a_bad_interface_mac_is_named() {
        let mut net = pod_with(1);
        net.interfaces[0].mac = "zz".into();
        let dir = Path::new("/tmp");
        let err = super::config(&RuntimeConfig::default(), dir, dir, Some(&net)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "pod network: interface eth0 has a bad MAC \"zz\""
        );
    }

    #[test]
    fn the_console_tail_is_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let text: String = (0..30).map(|i| format!("line {i}\n")).collect();
        std::fs::write(dir.path().join(CONSOLE_LOG), text).unwrap();
        let tail = console_tail(dir.path());
        assert!(
            tail.starts_with("line 10\n") && tail.ends_with("line 29"),
            "{tail}"
        );
        assert_eq!(console_tail(Path::new("/nonexistent")), "");
    }
}
