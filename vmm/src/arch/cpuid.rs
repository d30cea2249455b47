//! The CPUID a vCPU sees: KVM's supported set, with the topology, APIC ID
//! and hypervisor leaves filled in for this vCPU.
//!
//! The topology we present is one socket of `cpu_count` single-threaded
//! cores, matching the MP table; Linux derives its CPU maps from leaves
//! 0x1, 0x4 and 0xB (0x1F where present).

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_V2_EXT_TOPOLOGY: u32 = 0x1f;
const LEAF_HYPERVISOR: u32 = 0x4000_0000;

const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;
/// "KVMKVMKVM\0\0\0": Linux enables kvmclock and other paravirt features
/// only behind this signature.
const KVM_SIGNATURE: [u32; 3] = [0x4b4d_564b, 0x564b_4d56, 0x0000_004d];

/// Patches `cpuid` (KVM's supported entries) for vCPU `cpu_index` of
/// `cpu_count`.
pub fn configure(cpuid: &mut CpuId, cpu_index: u8, cpu_count: u8) {
    let apic_id = u32::from(cpu_index);
    let count = u32::from(cpu_count.max(1));
    // Bits needed to number the cores of the package.
    let core_bits = u32::BITS - (count - 1).leading_zeros();
    let mut has_hypervisor_leaf = false;

    for entry in cpuid.as_mut_slice() {
        match entry.function {
            LEAF_FEATURES => {
                entry.ebx = (entry.ebx & 0x0000_ffff) | (apic_id << 24) | ((count & 0xff) << 16);
                entry.ecx |= ECX_HYPERVISOR;
                if count > 1 {
                    entry.edx |= EDX_HTT;
                } else {
                    entry.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE_PARAMS => {
                let level = (entry.eax >> 5) & 0x7;
                let sharing = if level >= 3 { count - 1 } else { 0 };
                entry.eax =
                    (entry.eax & 0x3ff) | ((sharing & 0xfff) << 14) | (((count - 1) & 0x3f) << 26);
            }
            LEAF_EXT_TOPOLOGY | LEAF_V2_EXT_TOPOLOGY => {
                entry.edx = apic_id;
                match entry.index {
                    0 => {
                        entry.eax = 0;
                        entry.ebx = 1;
                        entry.ecx = LEVEL_TYPE_SMT << 8;
                    }
                    1 => {
                        entry.eax = core_bits;
                        entry.ebx = count;
                        entry.ecx = (LEVEL_TYPE_CORE << 8) | 1;
                    }
                    index => {
                        entry.eax = 0;
                        entry.ebx = 0;
                        entry.ecx = index;
                    }
                }
            }
            LEAF_HYPERVISOR => {
                has_hypervisor_leaf = true;
                entry.ebx = KVM_SIGNATURE[0];
                entry.ecx = KVM_SIGNATURE[1];
                entry.edx = KVM_SIGNATURE[2];
            }
            _ => {}
        }
    }

    if !has_hypervisor_leaf {
        let leaf = kvm_cpuid_entry2 {
            function: LEAF_HYPERVISOR,
            eax: LEAF_HYPERVISOR + 1,
            ebx: KVM_SIGNATURE[0],
            ecx: KVM_SIGNATURE[1],
            edx: KVM_SIGNATURE[2],
            ..Default::default()
        };
        // A full table keeps KVM's entries; the leaf is a nicety then.
        let _ = cpuid.push(leaf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    fn find(cpuid: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap()
    }

    fn sample() -> CpuId {
        let mut l1 = leaf(LEAF_FEATURES, 0);
        l1.ebx = 0xff00_0800; // stale APIC ID, CLFLUSH size 8
        let mut l3 = leaf(LEAF_CACHE_PARAMS, 3);
        l3.eax = (3 << 5) | 0x3;
        let mut l1d = leaf(LEAF_CACHE_PARAMS, 0);
        l1d.eax = (1 << 5) | 0x1;
        CpuId::from_entries(&[
            l1,
            l1d,
            l3,
            leaf(LEAF_EXT_TOPOLOGY, 0),
            leaf(LEAF_EXT_TOPOLOGY, 1),
            leaf(LEAF_EXT_TOPOLOGY, 2),
        ])
        .unwrap()
    }

    #[test]
    fn sets_apic_id_count_and_hypervisor_bit() {
        let mut cpuid = sample();
        configure(&mut cpuid, 3, 4);
        let l1 = find(&cpuid, LEAF_FEATURES, 0);
        assert_eq!(l1.ebx >> 24, 3);
        assert_eq!((l1.ebx >> 16) & 0xff, 4);
        assert_eq!(l1.ebx & 0xffff, 0x0800);
        assert_ne!(l1.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(l1.edx & EDX_HTT, 0);
    }

    #[test]
    fn describes_one_socket_of_single_threaded_cores() {
        let mut cpuid = sample();
        configure(&mut cpuid, 5, 6);
        let smt = find(&cpuid, LEAF_EXT_TOPOLOGY, 0);
        assert_eq!(
            (smt.eax, smt.ebx, smt.ecx >> 8, smt.edx),
            (0, 1, LEVEL_TYPE_SMT, 5)
        );
        let core = find(&cpuid, LEAF_EXT_TOPOLOGY, 1);
        assert_eq!(
            (core.eax, core.ebx, core.ecx >> 8, core.edx),
            (3, 6, LEVEL_TYPE_CORE, 5)
        );
        let end = find(&cpuid, LEAF_EXT_TOPOLOGY, 2);
        assert_eq!((end.ebx, end.ecx >> 8), (0, 0));
        let l1d = find(&cpuid, LEAF_CACHE_PARAMS, 0);
        assert_eq!((l1d.eax >> 26, (l1d.eax >> 14) & 0xfff), (5, 0));
        let l3 = find(&cpuid, LEAF_CACHE_PARAMS, 3);
        assert_eq!((l3.eax >> 26, (l3.eax >> 14) & 0xfff), (5, 5));
    }

    #[test]
    fn single_cpu_has_no_htt_and_one_core_bit_count() {
        let mut cpuid = sample();
        configure(&mut cpuid, 0, 1);
        assert_eq!(find(&cpuid, LEAF_FEATURES, 0).edx & EDX_HTT, 0);
        assert_eq!(find(&cpuid, LEAF_EXT_TOPOLOGY, 1).eax, 0);
    }

    #[test]
    fn adds_the_kvm_signature_when_missing() {
        let mut cpuid = sample();
        configure(&mut cpuid, 0, 2);
        let hv = find(&cpuid, LEAF_HYPERVISOR, 0);
        let mut sig = Vec::new();
        for r in [hv.ebx, hv.ecx, hv.edx] {
            sig.extend_from_slice(&r.to_le_bytes());
        }
        assert_eq!(&sig, b"KVMKVMKVM\0\0\0");
        assert!(hv.eax > LEAF_HYPERVISOR);
    }
}
