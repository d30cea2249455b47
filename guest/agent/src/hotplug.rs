//! Device hotplug, the guest's half: the VMM declares empty virtio-mmio
//! slots at boot (platform devices `virtio-mmio.<slot>` that Linux probed
//! and left unbound). Once the VMM has put a device in a slot, `add` binds
//! the slot to the virtio-mmio driver, which probes it again and finds the
//! device; before the VMM takes one out, `remove` unbinds it, and the
//! driver lets go of the device and resets it. The slot's name is the
//! contract `skiff_guest_abi::hotplug` shares with the VMM.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use skiff_agent_protocol::agent::GuestDevice;
use skiff_guest_abi::hotplug::{slot_device, MMIO_PLATFORM_DEVICE};

/// Virtio device types the agent names (virtio 1.2, 5).
const TYPE_NET: u32 = 1;
const TYPE_BLOCK: u32 = 2;

/// How long a bound device may take to show its block or net child. The
/// drivers probe synchronously, so this is only a safety margin.
const APPEAR_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum HotplugError {
    #[error("this VM has no virtio-mmio slot {0}")]
    NoSuchSlot(u32),
    #[error("virtio-mmio slot {0} is already bound to a driver")]
    AlreadyBound(u32),
    #[error("virtio-mmio slot {0} has no bound device")]
    NotBound(u32),
    #[error("binding virtio-mmio slot {slot}: {err} (is there a device in the slot?)")]
    Bind { slot: u32, err: std::io::Error },
    #[error("unbinding virtio-mmio slot {slot}: {err}")]
    Unbind { slot: u32, err: std::io::Error },
    #[error("{device} is still mounted at {mount_point}")]
    Mounted { device: String, mount_point: String },
    #[error("virtio-mmio slot {slot}: no {what} appeared within {APPEAR_TIMEOUT:?}")]
    Timeout { slot: u32, what: &'static str },
    #[error("reading {path}: {err}")]
    Read { path: PathBuf, err: std::io::Error },
}

/// Binds and unbinds slots through the sysfs below `root` (`/` in a VM).
pub struct Hotplug {
    root: PathBuf,
    /// One change at a time: each checks the state it then changes.
    lock: Mutex<()>,
}

impl Hotplug {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            lock: Mutex::new(()),
        }
    }

    fn slot_dir(&self, slot: u32) -> PathBuf {
        self.root
            .join("sys/bus/platform/devices")
            .join(slot_device(slot))
    }

    fn driver_file(&self, name: &str) -> PathBuf {
        self.root
            .join("sys/bus/platform/drivers")
            .join(MMIO_PLATFORM_DEVICE)
            .join(name)
    }

    /// Binds `slot` and says what the guest made of its device.
    pub fn add(&self, slot: u32) -> Result<GuestDevice, HotplugError> {
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let dir = self.slot_dir(slot);
        if !dir.exists() {
            return Err(HotplugError::NoSuchSlot(slot));
        }
        if dir.join("driver").exists() {
            return Err(HotplugError::AlreadyBound(slot));
        }
        std::fs::write(self.driver_file("bind"), slot_device(slot))
            .map_err(|err| HotplugError::Bind { slot, err })?;
        let deadline = Instant::now() + APPEAR_TIMEOUT;
        loop {
            match describe(&dir)? {
                Some(device) => {
                    tracing::info!(slot, virtio_type = device.virtio_type, name = %device.name,
                        "device added");
                    return Ok(device);
                }
                None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                None => {
                    return Err(HotplugError::Timeout {
                        slot,
                        what: "block or network device",
                    })
                }
            }
        }
    }

    /// Unbinds `slot`, refusing while its disk is mounted.
    pub fn remove(&self, slot: u32) -> Result<(), HotplugError> {
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let dir = self.slot_dir(slot);
        if !dir.exists() {
            return Err(HotplugError::NoSuchSlot(slot));
        }
        if !dir.join("driver").exists() {
            return Err(HotplugError::NotBound(slot));
        }
        if let Some(device) = describe(&dir)?.filter(|d| d.virtio_type == TYPE_BLOCK) {
            let mounts_path = self.root.join("proc/self/mounts");
            let mounts = read(&mounts_path)?;
            if let Some(mount_point) = mount_point_of(&mounts, &device.name) {
                return Err(HotplugError::Mounted {
                    device: device.name,
                    mount_point: mount_point.to_string(),
                });
            }
        }
        std::fs::write(self.driver_file("unbind"), slot_device(slot))
            .map_err(|err| HotplugError::Unbind { slot, err })?;
        tracing::info!(slot, "device removed");
        Ok(())
    }
}

fn read(path: &Path) -> Result<String, HotplugError> {
    std::fs::read_to_string(path).map_err(|err| HotplugError::Read {
        path: path.to_path_buf(),
        err,
    })
}

/// The bound device under a slot's sysfs directory: `virtioN/device` holds
/// its type, `virtioN/block/vdX` or `virtioN/net/ethX` its name. `None`
/// while a disk or network device has not shown its name yet.
fn describe(slot_dir: &Path) -> Result<Option<GuestDevice>, HotplugError> {
    let Some(virtio) = first_entry(slot_dir, |name| {
        name.strip_prefix("virtio")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    }) else {
        return Ok(None);
    };
    let type_path = virtio.join("device");
    let raw = read(&type_path)?;
    let virtio_type =
        u32::from_str_radix(raw.trim().trim_start_matches("0x"), 16).map_err(|e| {
            HotplugError::Read {
                path: type_path,
                err: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            }
        })?;
    let mut device = GuestDevice::new();
    let name = match virtio_type {
        TYPE_BLOCK => match first_entry(&virtio.join("block"), |_| true) {
            Some(disk) => {
                let dev_path = disk.join("dev");
                let numbers = match std::fs::read_to_string(&dev_path) {
                    Ok(numbers) => numbers,
                    // The disk's directory shows up before its attributes.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                    Err(err) => {
                        return Err(HotplugError::Read {
                            path: dev_path,
                            err,
                        })
                    }
                };
                (device.major, device.minor) =
                    parse_dev_numbers(&numbers).ok_or_else(|| HotplugError::Read {
                        path: dev_path,
                        err: std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            format!("not MAJOR:MINOR: {numbers:?}"),
                        ),
                    })?;
                format!("/dev/{}", file_name(&disk))
            }
            None => return Ok(None),
        },
        TYPE_NET => match first_entry(&virtio.join("net"), |_| true) {
            Some(link) => file_name(&link),
            None => return Ok(None),
        },
        _ => String::new(),
    };
    device.virtio_type = virtio_type;
    device.name = name;
    Ok(Some(device))
}

/// "254:16\n" (a sysfs `dev` file) into (254, 16).
fn parse_dev_numbers(s: &str) -> Option<(u32, u32)> {
    let (major, minor) = s.trim().split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// The first entry of `dir` (in name order) whose name passes `wanted`.
fn first_entry(dir: &Path, wanted: impl Fn(&str) -> bool) -> Option<PathBuf> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| wanted(n))
        .collect();
    names.sort();
    names.first().map(|n| dir.join(n))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Where `device` is mounted, from a mounts table (`/proc/self/mounts`).
fn mount_point_of<'a>(mounts: &'a str, device: &str) -> Option<&'a str> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        (fields.next()? == device).then_some(())?;
        fields.next()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake sysfs with slot 1 empty and slot 2 bound to a disk `vdb`;
    /// `bind` and `unbind` are plain files that record what was written.
    fn fake_root() -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let devices = r.join("sys/bus/platform/devices");
        std::fs::create_dir_all(devices.join("virtio-mmio.1")).unwrap();
        let disk = devices.join("virtio-mmio.2/virtio3");
        std::fs::create_dir_all(disk.join("block/vdb")).unwrap();
        std::fs::write(disk.join("block/vdb/dev"), "254:16\n").unwrap();
        std::fs::write(disk.join("device"), "0x0002\n").unwrap();
        std::fs::create_dir_all(devices.join("virtio-mmio.2/driver")).unwrap();
        std::fs::create_dir_all(r.join("sys/bus/platform/drivers/virtio-mmio")).unwrap();
        std::fs::create_dir_all(r.join("proc/self")).unwrap();
        std::fs::write(r.join("proc/self/mounts"), "proc /proc proc rw 0 0\n").unwrap();
        root
    }

    fn written(root: &Path, file: &str) -> String {
        std::fs::read_to_string(root.join("sys/bus/platform/drivers/virtio-mmio").join(file))
            .unwrap_or_default()
    }

    #[test]
    fn describes_disks_and_network_devices() {
        let root = fake_root();
        let slot = root.path().join("sys/bus/platform/devices/virtio-mmio.2");
        let disk = describe(&slot).unwrap().unwrap();
        assert_eq!((disk.virtio_type, disk.name.as_str()), (2, "/dev/vdb"));
        assert_eq!((disk.major, disk.minor), (254, 16));

        let net = root.path().join("net-slot");
        std::fs::create_dir_all(net.join("virtio0/net/eth1")).unwrap();
        std::fs::write(net.join("virtio0/device"), "0x0001\n").unwrap();
        let nic = describe(&net).unwrap().unwrap();
        assert_eq!((nic.virtio_type, nic.name.as_str()), (1, "eth1"));

        let fs = root.path().join("fs-slot");
        std::fs::create_dir_all(fs.join("virtio4")).unwrap();
        std::fs::write(fs.join("virtio4/device"), "0x001a\n").unwrap();
        let share = describe(&fs).unwrap().unwrap();
        assert_eq!((share.virtio_type, share.name.as_str()), (26, ""));

        // Bound but the disk has no name yet; unbound.
        let pending = root.path().join("pending");
        std::fs::create_dir_all(pending.join("virtio5/block")).unwrap();
        std::fs::write(pending.join("virtio5/device"), "0x0002\n").unwrap();
        assert!(describe(&pending).unwrap().is_none());
        let empty = root.path().join("sys/bus/platform/devices/virtio-mmio.1");
        assert!(describe(&empty).unwrap().is_none());

        // A disk without its numbers yet is pending; garbage in them, or
        // in the type file, is an error, not a panic.
        std::fs::create_dir_all(pending.join("virtio5/block/vdc")).unwrap();
        assert!(describe(&pending).unwrap().is_none());
        std::fs::write(pending.join("virtio5/block/vdc/dev"), "254:x").unwrap();
        assert!(describe(&pending).is_err());
        std::fs::write(pending.join("virtio5/device"), "garbage").unwrap();
        assert!(describe(&pending).is_err());
    }

    #[test]
    fn refuses_missing_bound_unbound_and_mounted_slots() {
        let root = fake_root();
        let hotplug = Hotplug::new(root.path());
        assert!(matches!(hotplug.add(7), Err(HotplugError::NoSuchSlot(7))));
        assert!(matches!(
            hotplug.remove(7),
            Err(HotplugError::NoSuchSlot(7))
        ));
        assert!(matches!(hotplug.add(2), Err(HotplugError::AlreadyBound(2))));
        assert!(matches!(hotplug.remove(1), Err(HotplugError::NotBound(1))));

        std::fs::write(
            root.path().join("proc/self/mounts"),
            "/dev/vdb /run/skiff/vol ext4 rw 0 0\n",
        )
        .unwrap();
        let err = hotplug.remove(2).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/dev/vdb is still mounted at /run/skiff/vol"
        );
        assert_eq!(written(root.path(), "unbind"), "");

        std::fs::write(root.path().join("proc/self/mounts"), "").unwrap();
        hotplug.remove(2).unwrap();
        assert_eq!(written(root.path(), "unbind"), "virtio-mmio.2");
    }

    #[test]
    fn mount_points_match_whole_device_names() {
        let mounts = "/dev/vdb1 /a ext4 rw 0 0\n/dev/vdb /b ext4 rw 0 0\n";
        assert_eq!(mount_point_of(mounts, "/dev/vdb"), Some("/b"));
        assert_eq!(mount_point_of(mounts, "/dev/vdc"), None);
    }
}
