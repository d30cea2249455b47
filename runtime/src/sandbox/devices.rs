//! Host block devices passed into containers: each is checked to be on
//! this host, hot-added to the VM in a free MMIO slot, bound in the guest
//! by the agent, and given its guest device number in the container's
//! spec; on the container's removal each is unbound and taken out again.

use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use oci_spec::runtime::{LinuxDeviceType, Spec};
use skiff_vmm::config::{BlockConfig, DeviceConfig};
use skiff_vmm::VmmHandle;

use crate::agent::Agent;
use crate::spec::{BlockDevice, GuestSpec};

use super::SandboxError;

/// Checks that every block device `spec` passes in is on this host, so a
/// bad one fails the request before a VM is made for it.
pub fn check_host_devices(spec: &Spec) -> Result<(), SandboxError> {
    let devices = spec.linux().as_ref().and_then(|l| l.devices().as_ref());
    for (index, device) in devices.into_iter().flatten().enumerate() {
        if device.typ() == LinuxDeviceType::B {
            host_block_device(&BlockDevice {
                index,
                path: device.path().clone(),
                major: device.major(),
                minor: device.minor(),
            })?;
        }
    }
    Ok(())
}

/// The host's node for `device`'s number, found through sysfs (no udev
/// `/dev/block` links needed), checked to be that block device.
fn host_block_device(device: &BlockDevice) -> Result<PathBuf, SandboxError> {
    let (major, minor) = (device.major, device.minor);
    let err = |why: String| SandboxError::HostDevice {
        path: device.path.clone(),
        major,
        minor,
        why,
    };
    let uevent = format!("/sys/dev/block/{major}:{minor}/uevent");
    let text = std::fs::read_to_string(&uevent)
        .map_err(|e| err(format!("not on this host ({uevent}: {e})")))?;
    let name = text
        .lines()
        .find_map(|l| l.strip_prefix("DEVNAME="))
        .filter(|n| !n.is_empty() && !n.split('/').any(|part| part == ".."))
        .ok_or_else(|| err(format!("{uevent} names no device")))?;
    let node = Path::new("/dev").join(name);
    let meta = std::fs::metadata(&node).map_err(|e| err(format!("{}: {e}", node.display())))?;
    let number = libc::makedev(major as u32, minor as u32);
    if !meta.file_type().is_block_device() || meta.rdev() != number {
        return Err(err(format!("{} is another device", node.display())));
    }
    Ok(node)
}

/// The VMM slots of the block devices hot-added for each container.
#[derive(Default)]
pub(super) struct BlockDevices(Mutex<HashMap<String, Vec<u32>>>);

impl BlockDevices {
    /// Hot-adds the host block devices `guest` passes in and gives its
    /// `linux.devices` entries the guest's numbers for them.
    pub(super) fn attach(
        &self,
        vmm: &VmmHandle,
        agent: &dyn Agent,
        container_id: &str,
        guest: &mut GuestSpec,
    ) -> Result<(), SandboxError> {
        for device in guest.block_devices.clone() {
            let host_path = host_block_device(&device)?;
            let slot = vmm.add_device(DeviceConfig::Block(BlockConfig {
                path: host_path.clone(),
                read_only: false,
                direct: false,
            }))?;
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(container_id.into())
                .or_default()
                .push(slot.index);
            let added = agent.add_device(slot.index)?;
            guest.set_guest_device_number(device.index, added.major, added.minor);
            tracing::info!(
                "container {container_id}: {} is {} ({}:{}) in the guest, slot {}",
                host_path.display(),
                added.name,
                added.major,
                added.minor,
                slot.index
            );
        }
        Ok(())
    }

    /// Unbinds the container's hot-added devices in the guest and takes
    /// them out of the VM.
    pub(super) fn detach(
        &self,
        vmm: &VmmHandle,
        agent: &dyn Agent,
        container_id: &str,
    ) -> Result<(), SandboxError> {
        let slots = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(container_id)
            .unwrap_or_default();
        let mut result = Ok(());
        for slot in slots.into_iter().rev() {
            if let Err(e) = agent.remove_device(slot) {
                // Taken out anyway: the container that used it is gone.
                tracing::warn!("container {container_id}: slot {slot}: {e}");
            }
            if let Err(e) = vmm.remove_device(slot) {
                result = Err(e.into());
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_devices_must_be_on_this_host() {
        let spec: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "linux": {"devices": [
                {"path": "/dev/null", "type": "c", "major": 1, "minor": 3},
                {"path": "/dev/nope", "type": "b", "major": 4095, "minor": 4095}
            ]}
        }))
        .unwrap();
        let err = check_host_devices(&spec).unwrap_err().to_string();
        assert!(
            err.starts_with("block device /dev/nope (4095:4095): not on this host"),
            "{err}"
        );
        let negative = BlockDevice {
            index: 0,
            path: "/dev/x".into(),
            major: -1,
            minor: 0,
        };
        assert!(host_block_device(&negative).is_err());
    }
}
