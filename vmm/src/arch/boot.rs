//! Boot information for the guest kernel: the e820 memory map, initrd
//! placement, and the two entry protocols we speak — the Linux 64-bit boot
//! protocol (`boot_params`, for bzImage and for ELF kernels without a PVH
//! note) and PVH (`hvm_start_info`, preferred for ELF `vmlinux`).

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::*;

/// How the boot vCPU enters the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootProtocol {
    /// 64-bit entry with `boot_params` in RSI, paging on.
    Linux64 { entry: u64 },
    /// 32-bit PVH entry with `hvm_start_info` in EBX, paging off.
    Pvh { entry: u64 },
}

/// Errors writing boot information.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("the initrd ({initrd_mib} MiB) does not fit in guest memory beside the kernel; give the VM more memory")]
    InitrdTooLarge { initrd_mib: u64 },
    #[error("too many e820 entries ({0})")]
    TooManyE820Entries(usize),
    #[error("writing {what} to guest memory: {source}")]
    GuestMemory {
        what: &'static str,
        source: vm_memory::GuestMemoryError,
    },
}

type Result<T> = std::result::Result<T, BootError>;

const E820_RAM: u32 = 1;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;
const PVH_START_MAGIC: u32 = 0x336e_c578;
const PAGE_SIZE: u64 = 4096;

/// A RAM range of the guest's memory map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
}

/// The RAM the guest may use: low memory below the EBDA, then everything
/// from 1 MiB up, less the device hole. The legacy area in between (EBDA,
/// VGA, BIOS, our MP table) is left out, so Linux treats it as reserved.
pub fn e820_map(mem_size: u64) -> Vec<E820Entry> {
    let mut map = vec![E820Entry {
        addr: 0,
        size: EBDA_START,
    }];
    for (start, len) in ram_regions(mem_size) {
        let start = start.max(HIMEM_START);
        let end = if start < MMIO_GAP_START {
            low_ram_end(mem_size)
        } else {
            start + len
        };
        if end > start {
            map.push(E820Entry {
                addr: start,
                size: end - start,
            });
        }
    }
    map
}

/// Where to put an initrd of `size` bytes: as high as allowed in low RAM,
/// page aligned, and above the kernel image.
pub fn initrd_address(mem_size: u64, size: u64, kernel_end: u64, addr_max: u64) -> Result<u64> {
    let too_large = || BootError::InitrdTooLarge {
        initrd_mib: size.div_ceil(1 << 20),
    };
    let top = low_ram_end(mem_size).min(addr_max.saturating_add(1));
    let start = top.checked_sub(size).ok_or_else(too_large)? & !(PAGE_SIZE - 1);
    if start < kernel_end {
        return Err(too_large());
    }
    Ok(start)
}

/// A loaded initrd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Initrd {
    pub addr: u64,
    pub size: u64,
}

fn write<T: vm_memory::ByteValued>(
    mem: &GuestMemoryMmap,
    value: T,
    addr: u64,
    what: &'static str,
) -> Result<()> {
    mem.write_obj(value, GuestAddress(addr))
        .map_err(|source| BootError::GuestMemory { what, source })
}

/// Writes the zero page for the Linux 64-bit boot protocol. `header` is the
/// bzImage's setup header, or `None` for an ELF kernel.
pub fn write_boot_params(
    mem: &GuestMemoryMmap,
    ram_size: u64,
    header: Option<setup_header>,
    cmdline_len: usize,
    initrd: Option<Initrd>,
) -> Result<()> {
    let mut params = boot_params {
        hdr: header.unwrap_or_default(),
        ..Default::default()
    };
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    if params.hdr.kernel_alignment == 0 {
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    }
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    if let Some(initrd) = initrd {
        params.hdr.ramdisk_image = initrd.addr as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
    }
    let map = e820_map(ram_size);
    if map.len() > params.e820_table.len() {
        return Err(BootError::TooManyE820Entries(map.len()));
    }
    for (slot, e) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            type_: E820_RAM,
        };
    }
    params.e820_entries = map.len() as u8;
    write(mem, params, ZERO_PAGE_START, "boot_params")
}

/// Writes `hvm_start_info`, the memory map and the initrd module for PVH.
pub fn write_pvh_start_info(
    mem: &GuestMemoryMmap,
    ram_size: u64,
    initrd: Option<Initrd>,
) -> Result<()> {
    let map = e820_map(ram_size);
    let entry_size = std::mem::size_of::<hvm_memmap_table_entry>() as u64;
    for (i, e) in map.iter().enumerate() {
        let entry = hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: E820_RAM,
            reserved: 0,
        };
        write(
            mem,
            entry,
            PVH_MEMMAP_START + i as u64 * entry_size,
            "PVH memory map",
        )?;
    }
    let mut info = hvm_start_info {
        magic: PVH_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    if let Some(initrd) = initrd {
        let module = hvm_modlist_entry {
            paddr: initrd.addr,
            size: initrd.size,
            ..Default::default()
        };
        write(mem, module, PVH_MODLIST_START, "PVH module list")?;
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST_START;
    }
    write(mem, info, PVH_INFO_START, "hvm_start_info")
}

/// Identity-maps the first GiB with 2 MiB pages, enough for the kernel's
/// 64-bit entry to reach its own page tables.
pub fn write_identity_page_tables(mem: &GuestMemoryMmap) -> Result<()> {
    const PRESENT_RW: u64 = 0x3;
    const PAGE_SIZE_2M: u64 = 0x80;
    write(mem, PDPTE_START | PRESENT_RW, PML4_START, "PML4")?;
    write(mem, PDE_START | PRESENT_RW, PDPTE_START, "PDPTE")?;
    for i in 0..512u64 {
        write(
            mem,
            (i << 21) | PRESENT_RW | PAGE_SIZE_2M,
            PDE_START + i * 8,
            "PDE",
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory(size: u64) -> GuestMemoryMmap {
        let regions: Vec<_> = ram_regions(size)
            .into_iter()
            .map(|(a, l)| (GuestAddress(a), l as usize))
            .collect();
        GuestMemoryMmap::from_ranges(&regions).unwrap()
    }

    #[test]
    fn e820_leaves_out_the_legacy_hole() {
        let map = e820_map(128 << 20);
        assert_eq!(
            map,
            vec![
                E820Entry {
                    addr: 0,
                    size: EBDA_START
                },
                E820Entry {
                    addr: HIMEM_START,
                    size: (128 << 20) - HIMEM_START
                },
            ]
        );
    }

    #[test]
    fn e820_splits_around_the_device_hole() {
        let map = e820_map(4 << 30);
        assert_eq!(map.len(), 3);
        assert_eq!(map[1].addr + map[1].size, MMIO_GAP_START);
        assert_eq!(
            map[2],
            E820Entry {
                addr: MMIO_GAP_END,
                size: 1 << 30
            }
        );
        let ram: u64 = map.iter().map(|e| e.size).sum();
        assert_eq!(ram, (4 << 30) - (HIMEM_START - EBDA_START));
    }

    #[test]
    fn initrd_goes_high_and_never_over_the_kernel() {
        let mem = 128 << 20;
        let addr = initrd_address(mem, 3 << 20, 32 << 20, DEFAULT_INITRD_ADDR_MAX).unwrap();
        assert_eq!(addr, (125 << 20));
        assert_eq!(addr % PAGE_SIZE, 0);
        let odd = initrd_address(mem, 4097, 32 << 20, DEFAULT_INITRD_ADDR_MAX).unwrap();
        assert_eq!(odd, (128 << 20) - 2 * PAGE_SIZE);
        assert!(matches!(
            initrd_address(mem, 100 << 20, 32 << 20, DEFAULT_INITRD_ADDR_MAX),
            Err(BootError::InitrdTooLarge { initrd_mib: 100 })
        ));
        assert!(initrd_address(mem, 200 << 20, 0, DEFAULT_INITRD_ADDR_MAX).is_err());
        // A kernel that limits the initrd address is obeyed.
        let capped = initrd_address(8 << 30, 1 << 20, 32 << 20, (64 << 20) - 1).unwrap();
        assert_eq!(capped, 63 << 20);
    }

    #[test]
    fn boot_params_carry_cmdline_initrd_and_memory_map() {
        let mem = memory(256 << 20);
        let initrd = Initrd {
            addr: 200 << 20,
            size: 1234,
        };
        write_boot_params(&mem, 256 << 20, None, 42, Some(initrd)).unwrap();
        let p: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        let hdr = p.hdr;
        assert_eq!({ hdr.boot_flag }, KERNEL_BOOT_FLAG_MAGIC);
        assert_eq!({ hdr.header }, KERNEL_HDR_MAGIC);
        assert_eq!({ hdr.type_of_loader }, KERNEL_LOADER_OTHER);
        assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ hdr.cmdline_size }, 42);
        assert_eq!({ hdr.ramdisk_image }, 200 << 20);
        assert_eq!({ hdr.ramdisk_size }, 1234);
        assert_eq!(p.e820_entries, 2);
        let e = p.e820_table[1];
        assert_eq!(
            ({ e.addr }, { e.size }, { e.type_ }),
            (HIMEM_START, (256 << 20) - HIMEM_START, E820_RAM)
        );
    }

    #[test]
    fn boot_params_keep_the_bzimage_header() {
        let mem = memory(64 << 20);
        let header = setup_header {
            version: 0x20f,
            kernel_alignment: 0x20_0000,
            ..Default::default()
        };
        write_boot_params(&mem, 64 << 20, Some(header), 1, None).unwrap();
        let p: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        let hdr = p.hdr;
        assert_eq!(
            ({ hdr.version }, { hdr.kernel_alignment }),
            (0x20f, 0x20_0000)
        );
        assert_eq!(({ hdr.ramdisk_image }, { hdr.ramdisk_size }), (0, 0));
    }

    #[test]
    fn boot_params_map_memory_above_the_hole() {
        let mem = memory(4 << 30);
        write_boot_params(&mem, 4 << 30, None, 1, None).unwrap();
        let p: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        assert_eq!(p.e820_entries, 3);
        let e = p.e820_table[2];
        assert_eq!(({ e.addr }, { e.size }), (MMIO_GAP_END, 1 << 30));
    }

    #[test]
    fn pvh_start_info_points_at_cmdline_memmap_and_initrd() {
        let mem = memory(128 << 20);
        let initrd = Initrd {
            addr: 100 << 20,
            size: 4096,
        };
        write_pvh_start_info(&mem, 128 << 20, Some(initrd)).unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(info.magic, PVH_START_MAGIC);
        assert_eq!(info.version, 1);
        assert_eq!(info.cmdline_paddr, CMDLINE_START);
        assert_eq!(info.memmap_entries, 2);
        assert_eq!(info.nr_modules, 1);
        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
        assert_eq!((module.paddr, module.size), (100 << 20, 4096));
        let second: hvm_memmap_table_entry =
            mem.read_obj(GuestAddress(info.memmap_paddr + 24)).unwrap();
        assert_eq!((second.addr, second.type_), (HIMEM_START, E820_RAM));
    }

    #[test]
    fn page_tables_identity_map_the_first_gib() {
        let mem = memory(64 << 20);
        write_identity_page_tables(&mem).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4, PDPTE_START | 3);
        let last_pde: u64 = mem.read_obj(GuestAddress(PDE_START + 511 * 8)).unwrap();
        assert_eq!(last_pde, (511 << 21) | 0x83);
    }
}
