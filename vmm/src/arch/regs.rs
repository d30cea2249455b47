//! Initial vCPU state: general and segment registers for the chosen boot
//! protocol, FPU, boot MSRs and local APIC wiring.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::boot::BootProtocol;
use super::gdt;
use super::layout::*;

/// Errors setting up vCPU registers.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("{what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("KVM set only {0} of the boot MSRs")]
    PartialMsrs(usize),
    #[error("writing the boot GDT: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
}

type Result<T> = std::result::Result<T, RegsError>;

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> RegsError {
    move |source| RegsError::Kvm { what, source }
}

const X86_CR0_PE: u64 = 1;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const RFLAGS_RESERVED: u64 = 0x2;

/// Sets the boot vCPU's general-purpose registers.
pub fn setup_regs(vcpu: &VcpuFd, boot: BootProtocol) -> Result<()> {
    let regs = match boot {
        BootProtocol::Linux64 { entry } => kvm_regs {
            rflags: RFLAGS_RESERVED,
            rip: entry,
            rsp: BOOT_STACK_POINTER,
            rbp: BOOT_STACK_POINTER,
            rsi: ZERO_PAGE_START,
            ..Default::default()
        },
        BootProtocol::Pvh { entry } => kvm_regs {
            rflags: RFLAGS_RESERVED,
            rip: entry,
            rbx: PVH_INFO_START,
            ..Default::default()
        },
    };
    vcpu.set_regs(&regs).map_err(kvm("KVM_SET_REGS"))
}

/// Writes the boot GDT and IDT and loads segment and control registers:
/// flat 32-bit protected mode for PVH, long mode with identity paging for
/// the 64-bit protocol.
pub fn setup_sregs(mem: &GuestMemoryMmap, vcpu: &VcpuFd, boot: BootProtocol) -> Result<()> {
    let table = match boot {
        BootProtocol::Linux64 { .. } => gdt::LONG_MODE_GDT,
        BootProtocol::Pvh { .. } => gdt::PROTECTED_MODE_GDT,
    };
    for (i, entry) in table.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_START + i as u64 * 8))?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))?;

    let mut sregs = vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
    let code = gdt::segment(table[1], 1);
    let data = gdt::segment(table[2], 2);
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (table.len() * 8 - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = gdt::segment(table[3], 3);
    match boot {
        BootProtocol::Linux64 { .. } => {
            sregs.cr0 |= X86_CR0_PE | X86_CR0_PG;
            sregs.cr3 = PML4_START;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
        BootProtocol::Pvh { .. } => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
        }
    }
    vcpu.set_sregs(&sregs).map_err(kvm("KVM_SET_SREGS"))
}

/// x87 control word and SSE control as after FNINIT / reset.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<()> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm("KVM_SET_FPU"))
}

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MISC_ENABLE_FAST_STRING: u64 = 1;
const MTRR_ENABLE: u64 = 1 << 11;
const MTRR_TYPE_WRITEBACK: u64 = 6;

/// The MSR values a firmware would leave: syscall MSRs cleared, fast
/// strings on, and write-back as the default memory type (without it Linux
/// maps all RAM uncached and runs many times slower).
pub fn boot_msrs() -> Vec<(u32, u64)> {
    vec![
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_TYPE_WRITEBACK),
    ]
}

/// Loads [`boot_msrs`].
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<()> {
    let entries: Vec<kvm_msr_entry> = boot_msrs()
        .into_iter()
        .map(|(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&entries).map_err(|_| RegsError::PartialMsrs(0))?;
    let set = vcpu.set_msrs(&msrs).map_err(kvm("KVM_SET_MSRS"))?;
    if set != entries.len() {
        return Err(RegsError::PartialMsrs(set));
    }
    Ok(())
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// Wires LINT0 to the legacy PIC (ExtINT) and LINT1 to NMI, as the MP
/// table says.
pub fn setup_lapic(vcpu: &VcpuFd) -> Result<()> {
    let mut lapic = vcpu.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?;
    let set = |regs: &mut [std::os::raw::c_char; 1024], offset: usize, mode: u32| {
        let mut value = [0u8; 4];
        for (b, r) in value.iter_mut().zip(&regs[offset..offset + 4]) {
            *b = *r as u8;
        }
        let lvt = (u32::from_le_bytes(value) & !0x700) | (mode << 8);
        for (r, b) in regs[offset..offset + 4].iter_mut().zip(lvt.to_le_bytes()) {
            *r = b as std::os::raw::c_char;
        }
    };
    set(&mut lapic.regs, APIC_LVT0, APIC_MODE_EXTINT);
    set(&mut lapic.regs, APIC_LVT1, APIC_MODE_NMI);
    vcpu.set_lapic(&lapic).map_err(kvm("KVM_SET_LAPIC"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_msrs_enable_writeback_mtrrs_once_each() {
        let msrs = boot_msrs();
        assert!(msrs.contains(&(MSR_MTRR_DEF_TYPE, (1 << 11) | 6)));
        let mut indexes: Vec<u32> = msrs.iter().map(|m| m.0).collect();
        indexes.sort();
        indexes.dedup();
        assert_eq!(indexes.len(), msrs.len());
    }
}
