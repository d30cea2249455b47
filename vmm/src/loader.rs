//! Loading the kernel and initrd into guest memory.
//!
//! ELF `vmlinux` (PVH entry when it has the note, else the 64-bit entry)
//! and bzImage are accepted; anything else is refused with the file named.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{self, BzImage, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::arch::boot::{initrd_address, BootError, BootProtocol, Initrd};
use crate::arch::layout::{low_ram_end, DEFAULT_INITRD_ADDR_MAX, HIMEM_START};

/// Errors loading guest images.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read kernel {path}: {source}")]
    KernelUnreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a kernel: neither an ELF vmlinux nor a bzImage")]
    NotAKernel { path: PathBuf },
    #[error("kernel {path} is truncated: its headers promise more than the file holds")]
    Truncated { path: PathBuf },
    #[error("cannot load kernel {path}: {source}")]
    Kernel {
        path: PathBuf,
        source: loader::Error,
    },
    #[error("guest memory ({mem_mib} MiB) is too small for kernel {path}, which needs {needed_mib} MiB; give the VM more memory")]
    MemoryTooSmall {
        path: PathBuf,
        mem_mib: u64,
        needed_mib: u64,
    },
    #[error("cannot read initrd {path}: {source}")]
    InitrdUnreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("initrd {path}: {source}")]
    InitrdPlacement { path: PathBuf, source: BootError },
}

/// What the boot code needs to know about the loaded kernel.
#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    pub boot: BootProtocol,
    /// The bzImage setup header, for the zero page.
    pub setup_header: Option<setup_header>,
    /// One past the last byte the kernel occupies once running.
    pub end: u64,
}

const ELF_MAGIC: [u8; 4] = *b"\x7fELF";
const BZIMAGE_ENTRY_64: u64 = 0x200;

/// Loads the kernel at `path` into `mem` (`ram_size` bytes of RAM).
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    ram_size: u64,
    path: &Path,
) -> Result<LoadedKernel, LoadError> {
    let unreadable = |source| LoadError::KernelUnreadable {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(unreadable)?;
    if file.metadata().map_err(unreadable)?.is_dir() {
        return Err(unreadable(std::io::Error::from_raw_os_error(libc::EISDIR)));
    }
    let mut magic = [0u8; 4];
    let is_elf = file.read_exact(&mut magic).is_ok() && magic == ELF_MAGIC;
    let too_small = |needed: u64| LoadError::MemoryTooSmall {
        path: path.to_owned(),
        mem_mib: ram_size >> 20,
        needed_mib: needed.div_ceil(1 << 20),
    };
    let low_end = low_ram_end(ram_size);

    let loaded = if is_elf {
        let needed = elf_load_end(&mut file).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => LoadError::Truncated {
                path: path.to_owned(),
            },
            _ => unreadable(e),
        })?;
        if needed > low_end {
            return Err(too_small(needed));
        }
        Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START)))
    } else {
        BzImage::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START)))
    };
    let result = match loaded {
        Ok(result) => result,
        Err(loader::Error::Elf(linux_loader::loader::elf::Error::InvalidElfMagicNumber))
        | Err(loader::Error::Bzimage(linux_loader::loader::bzimage::Error::InvalidBzImage)) => {
            return Err(LoadError::NotAKernel {
                path: path.to_owned(),
            })
        }
        Err(loader::Error::Elf(linux_loader::loader::elf::Error::ReadKernelImage)) => {
            // Memory was checked above, so the file ended early.
            return Err(LoadError::Truncated {
                path: path.to_owned(),
            });
        }
        Err(loader::Error::Bzimage(
            linux_loader::loader::bzimage::Error::ReadBzImageCompressedKernel,
        )) => {
            let size = file.seek(SeekFrom::End(0)).map_err(unreadable)?;
            return Err(too_small(HIMEM_START + size));
        }
        Err(source) => {
            return Err(LoadError::Kernel {
                path: path.to_owned(),
                source,
            })
        }
    };

    let (boot, end) = match (result.setup_header, result.pvh_boot_cap) {
        (Some(header), _) => {
            // bzImage: it decompresses in place and needs `init_size`.
            let end = result.kernel_load.0 + u64::from(header.init_size).max(result.kernel_end);
            let boot = BootProtocol::Linux64 {
                entry: result.kernel_load.0 + BZIMAGE_ENTRY_64,
            };
            (boot, end)
        }
        (None, PvhBootCapability::PvhEntryPresent(entry)) => {
            (BootProtocol::Pvh { entry: entry.0 }, result.kernel_end)
        }
        (None, _) => (
            BootProtocol::Linux64 {
                entry: result.kernel_load.0,
            },
            result.kernel_end,
        ),
    };
    if end > low_end {
        return Err(too_small(end));
    }
    Ok(LoadedKernel {
        boot,
        setup_header: result.setup_header,
        end,
    })
}

/// The highest physical address an ELF kernel's loadable segments reach
/// (file headers only; nothing is trusted beyond their arithmetic).
fn elf_load_end(file: &mut File) -> std::io::Result<u64> {
    let mut ehdr = [0u8; 64];
    file.seek(SeekFrom::Start(0))?;
    file.read_exact(&mut ehdr)?;
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u64_at = |b: &[u8], o: usize| {
        let mut x = [0u8; 8];
        x.copy_from_slice(&b[o..o + 8]);
        u64::from_le_bytes(x)
    };
    let phoff = u64_at(&ehdr, 0x20);
    let phentsize = u64::from(u16_at(&ehdr, 0x36));
    let phnum = u64::from(u16_at(&ehdr, 0x38));
    let mut end = 0u64;
    for i in 0..phnum {
        let mut phdr = [0u8; 56];
        if phentsize < 56 {
            break;
        }
        file.seek(SeekFrom::Start(
            phoff.saturating_add(i.saturating_mul(phentsize)),
        ))?;
        file.read_exact(&mut phdr)?;
        const PT_LOAD: u32 = 1;
        if u32::from_le_bytes([phdr[0], phdr[1], phdr[2], phdr[3]]) == PT_LOAD {
            end = end.max(u64_at(&phdr, 0x18).saturating_add(u64_at(&phdr, 0x28)));
        }
    }
    file.seek(SeekFrom::Start(0))?;
    Ok(end)
}

/// Loads the initrd as high in low memory as the kernel allows.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    ram_size: u64,
    kernel: &LoadedKernel,
    path: &Path,
) -> Result<Initrd, LoadError> {
    let unreadable = |source| LoadError::InitrdUnreadable {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(unreadable)?;
    let meta = file.metadata().map_err(unreadable)?;
    if meta.is_dir() {
        return Err(unreadable(std::io::Error::from_raw_os_error(libc::EISDIR)));
    }
    let size = meta.len();
    let addr_max = kernel
        .setup_header
        .map(|h| u64::from(h.initrd_addr_max))
        .filter(|&m| m != 0)
        .unwrap_or(DEFAULT_INITRD_ADDR_MAX);
    let addr = initrd_address(ram_size, size, kernel.end, addr_max).map_err(|source| {
        LoadError::InitrdPlacement {
            path: path.to_owned(),
            source,
        }
    })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|e| unreadable(std::io::Error::other(e.to_string())))?;
    Ok(Initrd { addr, size })
}
