//! Where things live in guest physical memory.
//!
//! The low megabyte holds the boot structures the VMM writes (GDT, page
//! tables, zero page or PVH start info, command line, MP table); the kernel
//! loads at or above [`HIMEM_START`]; devices live in the 32-bit hole below
//! 4 GiB, so RAM above [`MMIO_GAP_START`] moves up to [`MMIO_GAP_END`].

/// Boot GDT and (empty) IDT.
pub const BOOT_GDT_START: u64 = 0x500;
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info`, its module list and memory map.
pub const PVH_INFO_START: u64 = 0x6000;
pub const PVH_MODLIST_START: u64 = 0x6040;
pub const PVH_MEMMAP_START: u64 = 0x6080;
/// Linux boot protocol zero page (`struct boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack for the 64-bit boot protocol.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity page tables for the 64-bit boot protocol (first GiB).
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Linux's x86 COMMAND_LINE_SIZE.
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the extended BIOS data area; RAM below it is usable.
pub const EBDA_START: u64 = 0x9fc00;
/// The MP table goes in the BIOS area, which Linux scans and never treats
/// as RAM, so it stays intact and has room for hundreds of vCPUs.
pub const MPTABLE_START: u64 = 0xf0000;
pub const MPTABLE_MAX_SIZE: u64 = 0x10000;
/// First byte above the legacy hole: RAM for the kernel.
pub const HIMEM_START: u64 = 0x10_0000;
/// The 32-bit device hole.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// virtio-mmio windows, one 4 KiB page per device, from the start of
/// the device hole.
pub const VIRTIO_MMIO_START: u64 = MMIO_GAP_START;
/// Interrupt lines for virtio devices: I/O APIC pins 5..=23 (0-4 are the
/// PIT, keyboard, cascade and COM ports).
pub const VIRTIO_IRQ_FIRST: u32 = 5;
pub const VIRTIO_IRQ_LAST: u32 = 23;
/// Local and I/O APIC addresses.
pub const APIC_START: u64 = 0xfee0_0000;
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// KVM's TSS and identity-map pages (Intel needs them; placed in the hole).
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// Largest guest memory we map (1 TiB); larger asks are refused up front.
pub const MAX_MEMORY_MIB: u64 = 1 << 20;
/// Highest initrd address for kernels that do not say otherwise.
pub const DEFAULT_INITRD_ADDR_MAX: u64 = 0x7fff_ffff;

/// Guest RAM regions for `mem_size` bytes: below the device hole, then
/// above 4 GiB for what does not fit.
pub fn ram_regions(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_GAP_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (MMIO_GAP_END, mem_size - MMIO_GAP_START),
        ]
    }
}

/// One past the last byte of RAM below 4 GiB.
pub fn low_ram_end(mem_size: u64) -> u64 {
    mem_size.min(MMIO_GAP_START)
}

// The boot stack sits between the zero page and the page tables, and the
// MP table and command line stay inside the legacy low megabyte.
const _: () =
    assert!(BOOT_STACK_POINTER < PML4_START && BOOT_STACK_POINTER > ZERO_PAGE_START + 0x1000);
const _: () = assert!(MPTABLE_START + MPTABLE_MAX_SIZE <= HIMEM_START);
const _: () = assert!(CMDLINE_START + (CMDLINE_MAX_SIZE as u64) < EBDA_START);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_memory_is_one_region() {
        assert_eq!(ram_regions(128 << 20), vec![(0, 128 << 20)]);
        assert_eq!(low_ram_end(128 << 20), 128 << 20);
    }

    #[test]
    fn large_memory_skips_the_device_hole() {
        let regions = ram_regions(4 << 30);
        assert_eq!(regions, vec![(0, 3 << 30), (4 << 30, 1 << 30)]);
        assert_eq!(regions.iter().map(|r| r.1).sum::<u64>(), 4 << 30);
        assert_eq!(low_ram_end(4 << 30), MMIO_GAP_START);
    }

    #[test]
    fn boot_structures_do_not_overlap() {
        let mut areas = [
            (BOOT_GDT_START, 0x20),
            (BOOT_IDT_START, 8),
            (PVH_INFO_START, 0x40),
            (PVH_MODLIST_START, 0x40),
            (PVH_MEMMAP_START, 0x400),
            (ZERO_PAGE_START, 0x1000),
            (PML4_START, 0x1000),
            (PDPTE_START, 0x1000),
            (PDE_START, 0x1000),
            (CMDLINE_START, CMDLINE_MAX_SIZE as u64),
            (MPTABLE_START, MPTABLE_MAX_SIZE),
        ];
        areas.sort();
        for pair in areas.windows(2) {
            assert!(pair[0].0 + pair[0].1 <= pair[1].0, "{pair:x?}");
        }
    }
}
