//! What a vCPU is at a snapshot, read from KVM and written back.
//!
//! The order follows KVM's own constraints (as Firecracker and Cloud
//! Hypervisor restore): CPUID before anything that depends on it (set at
//! build, as for a boot), then MP state, registers, system registers,
//! extended FPU state, XCRs, debug registers, the local APIC, MSRs (after
//! the APIC, whose base MSR they include) and last the pending events.

use kvm_bindings::{
    kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave, Msrs,
};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

/// Errors reading or writing a vCPU's state.
#[derive(Debug, thiserror::Error)]
pub enum VcpuStateError {
    #[error("vCPU {vcpu}: {what}: {source}")]
    Kvm {
        vcpu: u8,
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {vcpu}: KVM would not {what} MSR {index:#x}")]
    Msr {
        vcpu: u8,
        what: &'static str,
        index: u32,
    },
    #[error("vCPU {vcpu}: {count} MSRs do not fit one KVM request")]
    TooManyMsrs { vcpu: u8, count: usize },
}

/// One vCPU's architectural state.
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    pub mp_state: kvm_mp_state,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    pub debug_regs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    /// `(index, value)`, every MSR KVM could read of those it lists.
    pub msrs: Vec<(u32, u64)>,
    pub vcpu_events: kvm_vcpu_events,
}

impl std::fmt::Debug for VcpuState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "VcpuState {{ rip: {:#x}, msrs: {} }}",
            self.regs.rip,
            self.msrs.len()
        )
    }
}

impl VcpuState {
    /// Reads vCPU `vcpu`'s state; `msr_indices` is KVM's list of MSRs
    /// to save (`KVM_GET_MSR_INDEX_LIST`), of which those KVM refuses to
    /// read on this host are left out.
    pub fn save(fd: &VcpuFd, vcpu: u8, msr_indices: &[u32]) -> Result<Self, VcpuStateError> {
        let kvm = |what| move |source| VcpuStateError::Kvm { vcpu, what, source };
        Ok(Self {
            mp_state: fd.get_mp_state().map_err(kvm("KVM_GET_MP_STATE"))?,
            regs: fd.get_regs().map_err(kvm("KVM_GET_REGS"))?,
            sregs: fd.get_sregs().map_err(kvm("KVM_GET_SREGS"))?,
            xsave: fd.get_xsave().map_err(kvm("KVM_GET_XSAVE"))?,
            xcrs: fd.get_xcrs().map_err(kvm("KVM_GET_XCRS"))?,
            debug_regs: fd.get_debug_regs().map_err(kvm("KVM_GET_DEBUGREGS"))?,
            lapic: fd.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?,
            msrs: read_msrs(fd, vcpu, msr_indices)?,
            vcpu_events: fd.get_vcpu_events().map_err(kvm("KVM_GET_VCPU_EVENTS"))?,
        })
    }

    /// Writes the state into a vCPU whose CPUID is already set.
    pub fn restore(&self, fd: &VcpuFd, vcpu: u8) -> Result<(), VcpuStateError> {
        let kvm = |what| move |source| VcpuStateError::Kvm { vcpu, what, source };
        fd.set_mp_state(self.mp_state)
            .map_err(kvm("KVM_SET_MP_STATE"))?;
        fd.set_regs(&self.regs).map_err(kvm("KVM_SET_REGS"))?;
        fd.set_sregs(&self.sregs).map_err(kvm("KVM_SET_SREGS"))?;
        // SAFETY: the buffer is a `kvm_xsave` KVM filled on the same kind
        // of vCPU (the snapshot's CPUID matched this host's).
        unsafe { fd.set_xsave(&self.xsave) }.map_err(kvm("KVM_SET_XSAVE"))?;
        fd.set_xcrs(&self.xcrs).map_err(kvm("KVM_SET_XCRS"))?;
        fd.set_debug_regs(&self.debug_regs)
            .map_err(kvm("KVM_SET_DEBUGREGS"))?;
        fd.set_lapic(&self.lapic).map_err(kvm("KVM_SET_LAPIC"))?;
        let entries = to_entries(&self.msrs);
        let msrs = Msrs::from_entries(&entries).map_err(|_| VcpuStateError::TooManyMsrs {
            vcpu,
            count: entries.len(),
        })?;
        let set = fd.set_msrs(&msrs).map_err(kvm("KVM_SET_MSRS"))?;
        if let Some(&(index, _)) = self.msrs.get(set) {
            return Err(VcpuStateError::Msr {
                vcpu,
                what: "set",
                index,
            });
        }
        fd.set_vcpu_events(&self.vcpu_events)
            .map_err(kvm("KVM_SET_VCPU_EVENTS"))?;
        Ok(())
    }
}

fn to_entries(msrs: &[(u32, u64)]) -> Vec<kvm_msr_entry> {
    msrs.iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect()
}

/// KVM_GET_MSRS stops at the first MSR it cannot read and says how many
/// it read: that one is dropped and the rest asked again, so one MSR a
/// host lists but cannot save does not fail the snapshot.
fn read_msrs(fd: &VcpuFd, vcpu: u8, indices: &[u32]) -> Result<Vec<(u32, u64)>, VcpuStateError> {
    let mut pending: Vec<(u32, u64)> = indices.iter().map(|&i| (i, 0)).collect();
    let mut read = Vec::with_capacity(pending.len());
    while !pending.is_empty() {
        let mut msrs =
            Msrs::from_entries(&to_entries(&pending)).map_err(|_| VcpuStateError::TooManyMsrs {
                vcpu,
                count: pending.len(),
            })?;
        let n = fd
            .get_msrs(&mut msrs)
            .map_err(|source| VcpuStateError::Kvm {
                vcpu,
                what: "KVM_GET_MSRS",
                source,
            })?;
        read.extend(msrs.as_slice()[..n].iter().map(|e| (e.index, e.data)));
        if n < pending.len() {
            tracing::debug!(
                vcpu,
                msr = pending[n].0,
                "MSR not saved: KVM cannot read it"
            );
            pending.drain(..=n);
        } else {
            pending.clear();
        }
    }
    Ok(read)
}
