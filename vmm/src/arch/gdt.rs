//! Segment descriptors for the boot GDT and their KVM register form.

use kvm_bindings::kvm_segment;

/// Encodes a descriptor from its access/flags word (`0xF0FF` bits used:
/// flags in the high nibble, access byte low), base and 20-bit limit, in the
/// layout of the Intel SDM vol. 3, 3.4.5.
pub const fn descriptor(flags: u16, base: u32, limit: u32) -> u64 {
    let base = base as u64;
    let limit = limit as u64;
    let flags = flags as u64 & 0xf0ff;
    (limit & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | (flags << 40)
        | (((limit >> 16) & 0xf) << 48)
        | (((base >> 24) & 0xff) << 56)
}

/// 64-bit code, flat data and TSS, for the Linux 64-bit boot protocol.
pub const LONG_MODE_GDT: [u64; 4] = [
    0,
    descriptor(0xa09b, 0, 0xfffff),
    descriptor(0xc093, 0, 0xfffff),
    descriptor(0x808b, 0, 0xfffff),
];

/// 32-bit flat code and data and a TSS, for the PVH entry (protected mode).
pub const PROTECTED_MODE_GDT: [u64; 4] = [
    0,
    descriptor(0xc09b, 0, 0xfffff),
    descriptor(0xc093, 0, 0xfffff),
    descriptor(0x008b, 0, 0x67),
];

/// The KVM segment register value for descriptor `entry` at GDT `index`.
pub fn segment(entry: u64, index: u8) -> kvm_segment {
    let bit = |n: u32| ((entry >> n) & 1) as u8;
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let granular = bit(55) == 1;
    let present = bit(47);
    kvm_segment {
        base: ((entry >> 16) & 0xff_ffff) | (((entry >> 56) & 0xff) << 24),
        limit: if granular {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g: bit(55),
        avl: bit(52),
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_the_standard_flat_descriptors() {
        assert_eq!(LONG_MODE_GDT[1], 0x00af_9b00_0000_ffff);
        assert_eq!(LONG_MODE_GDT[2], 0x00cf_9300_0000_ffff);
        assert_eq!(PROTECTED_MODE_GDT[1], 0x00cf_9b00_0000_ffff);
    }

    #[test]
    fn decodes_long_mode_code_segment() {
        let cs = segment(LONG_MODE_GDT[1], 1);
        assert_eq!(cs.selector, 0x8);
        assert_eq!((cs.l, cs.db, cs.g, cs.present, cs.s), (1, 0, 1, 1, 1));
        assert_eq!(cs.type_, 0xb);
        assert_eq!(cs.limit, 0xffff_ffff);
        assert_eq!(cs.base, 0);
        assert_eq!(cs.unusable, 0);
    }

    #[test]
    fn round_trips_base_and_byte_granular_limit() {
        let entry = descriptor(0x008b, 0x1234_5678, 0x67);
        let tss = segment(entry, 3);
        assert_eq!(tss.base, 0x1234_5678);
        assert_eq!(tss.limit, 0x67);
        assert_eq!(tss.selector, 0x18);
        assert_eq!(tss.g, 0);
        assert_eq!(segment(0, 0).unusable, 1);
    }
}
