//! The KVM VM: guest memory, in-kernel irqchip and PIT, and their state
//! at a snapshot.

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_config, kvm_pit_state2, kvm_userspace_memory_region,
    KVM_CLOCK_TSC_STABLE, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
    KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{Address, GuestAddress, GuestMemory, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use serde::{Deserialize, Serialize};

use crate::arch::layout::{ram_regions, KVM_TSS_ADDRESS};

/// Errors creating or configuring the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot allocate {mib} MiB of guest memory: {source}")]
    Memory {
        mib: u64,
        source: vm_memory::mmap::FromRangesError,
    },
    #[error("{what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// The in-kernel devices' state: the PIT, the KVM clock and the two PICs
/// and the IOAPIC of the irqchip.
#[derive(Clone, Serialize, Deserialize)]
pub struct VmKvmState {
    pub pit: kvm_pit_state2,
    pub clock: kvm_clock_data,
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
}

/// A VM with its memory registered and its interrupt controllers created.
pub struct Vm {
    fd: VmFd,
    memory: GuestMemoryMmap,
    ram_size: u64,
}

impl Vm {
    /// Creates the VM and `ram_size` bytes of anonymous guest memory.
    pub fn new(hypervisor: &Kvm, ram_size: u64) -> Result<Self, VmError> {
        let ranges: Vec<(GuestAddress, usize)> = ram_regions(ram_size)
            .into_iter()
            .map(|(start, len)| (GuestAddress(start), len as usize))
            .collect();
        let memory = GuestMemoryMmap::from_ranges(&ranges).map_err(|source| VmError::Memory {
            mib: ram_size >> 20,
            source,
        })?;
        Self::with_memory(hypervisor, memory, ram_size)
    }

    /// Creates the VM over `memory` (a snapshot's, mapped from its file),
    /// laid out as [`ram_regions`] lays out `ram_size` bytes.
    pub fn with_memory(
        hypervisor: &Kvm,
        memory: GuestMemoryMmap,
        ram_size: u64,
    ) -> Result<Self, VmError> {
        let fd = hypervisor.create_vm().map_err(kvm("KVM_CREATE_VM"))?;
        fd.set_tss_address(KVM_TSS_ADDRESS as usize)
            .map_err(kvm("KVM_SET_TSS_ADDR"))?;
        fd.create_irq_chip().map_err(kvm("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(kvm("KVM_CREATE_PIT2"))?;

        for (slot, region) in memory.iter().enumerate() {
            let host = memory
                .get_host_address(region.start_addr())
                .map_err(|_| VmError::Kvm {
                    what: "guest memory region without host mapping",
                    source: kvm_ioctls::Error::new(libc::EINVAL),
                })?;
            let region = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the mapping belongs to `memory`, which lives as long
            // as the VM fd (both are fields of `Vm`, dropped together).
            unsafe { fd.set_user_memory_region(region) }
                .map_err(kvm("KVM_SET_USER_MEMORY_REGION"))?;
        }
        Ok(Self {
            fd,
            memory,
            ram_size,
        })
    }

    /// Reads the in-kernel devices' state (vCPUs paused).
    pub fn save_state(&self) -> Result<VmKvmState, VmError> {
        let chip = |id| -> Result<kvm_irqchip, VmError> {
            let mut chip = kvm_irqchip {
                chip_id: id,
                ..Default::default()
            };
            self.fd
                .get_irqchip(&mut chip)
                .map_err(kvm("KVM_GET_IRQCHIP"))?;
            Ok(chip)
        };
        Ok(VmKvmState {
            pit: self.fd.get_pit2().map_err(kvm("KVM_GET_PIT2"))?,
            clock: self.fd.get_clock().map_err(kvm("KVM_GET_CLOCK"))?,
            pic_master: chip(KVM_IRQCHIP_PIC_MASTER)?,
            pic_slave: chip(KVM_IRQCHIP_PIC_SLAVE)?,
            ioapic: chip(KVM_IRQCHIP_IOAPIC)?,
        })
    }

    /// Writes a snapshot's in-kernel device state, before any vCPU runs.
    pub fn restore_state(&self, state: &VmKvmState) -> Result<(), VmError> {
        self.fd.set_pit2(&state.pit).map_err(kvm("KVM_SET_PIT2"))?;
        // The clock continues from the snapshot; whether the TSC is
        // stable is for this host's KVM to say (KVM_SET_CLOCK refuses it).
        let clock = kvm_clock_data {
            flags: state.clock.flags & !KVM_CLOCK_TSC_STABLE,
            ..state.clock
        };
        self.fd.set_clock(&clock).map_err(kvm("KVM_SET_CLOCK"))?;
        for chip in [&state.pic_master, &state.pic_slave, &state.ioapic] {
            self.fd.set_irqchip(chip).map_err(kvm("KVM_SET_IRQCHIP"))?;
        }
        Ok(())
    }

    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    pub fn ram_size(&self) -> u64 {
        self.ram_size
    }

    /// Routes writes to `evt` to interrupt line `gsi`.
    pub fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), VmError> {
        self.fd.register_irqfd(evt, gsi).map_err(kvm("KVM_IRQFD"))
    }

    pub fn unregister_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), VmError> {
        self.fd
            .unregister_irqfd(evt, gsi)
            .map_err(kvm("KVM_IRQFD deassign"))
    }
}
