//! How a hotplug slot is named on both sides: the VMM declares slot `i`
//! on the kernel command line as virtio-mmio platform device id `i`, so
//! the guest kernel calls it [`slot_device`]`(i)` (`virtio-mmio.<i>`), and
//! the agent binds and unbinds exactly that name when the runtime asks it
//! to add or remove the device in slot `i`.
//!
//! Users: `vmm/src/device_manager.rs` (the command-line declaration) and
//! `guest/agent/src/hotplug.rs` (sysfs bind/unbind).

/// The name of the guest's virtio-mmio platform devices (and driver).
pub const MMIO_PLATFORM_DEVICE: &str = "virtio-mmio";

/// The guest's platform device for hotplug slot `slot`: `virtio-mmio.<slot>`.
pub fn slot_device(slot: u32) -> String {
    format!("{MMIO_PLATFORM_DEVICE}.{slot}")
}

/// The kernel parameter that declares a virtio-mmio window of `size_kib`
/// KiB at `base` with interrupt `irq` as slot `slot`: the trailing id pins
/// the platform device's number, so the guest names it
/// [`slot_device`]`(slot)` whatever order it probes in.
pub fn slot_kernel_param(size_kib: u64, base: u64, irq: u32, slot: u32) -> String {
    format!("virtio_mmio.device={size_kib}K@{base:#x}:{irq}:{slot}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_declared_id_is_the_guest_device_number() {
        assert_eq!(slot_device(3), "virtio-mmio.3");
        assert_eq!(
            slot_kernel_param(4, 0xd000_0000, 5, 3),
            "virtio_mmio.device=4K@0xd0000000:5:3"
        );
    }
}
