//! The Intel MultiProcessor Specification 1.4 table.
//!
//! Without ACPI this is how Linux learns about the vCPUs, the I/O APIC and
//! how ISA interrupts are wired. The floating pointer and the table sit in
//! the BIOS area at [`MPTABLE_START`], which Linux scans for `_MP_`.

use std::mem::size_of;

use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{APIC_START, IOAPIC_START, MPTABLE_MAX_SIZE, MPTABLE_START};

/// I/O APIC inputs wired one to one to ISA/GSI numbers 0..24.
pub const IOAPIC_PINS: u8 = 24;
/// APIC IDs are 8 bits and the I/O APIC takes the ID after the last vCPU;
/// 0xff is the broadcast ID.
pub const MAX_CPUS: u8 = 254;

const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const SPEC_REV_1_4: u8 = 4;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTSTRAP: u8 = 2;
const CPU_STEPPING: u32 = 0x600;
const CPU_FEATURE_APIC: u32 = 1 << 9;
const CPU_FEATURE_FPU: u32 = 1;
const IOAPIC_USABLE: u8 = 1;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
const BUS_ISA: [u8; 6] = *b"ISA   ";
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;

/// Errors building the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MpTableError {
    #[error("{0} vCPUs do not fit in an MP table (at most {MAX_CPUS})")]
    TooManyCpus(u8),
    #[error("the MP table does not fit in the BIOS area")]
    TooLarge,
    #[error("writing the MP table to guest memory: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
}

#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct FloatingPointer {
    signature: [u8; 4],
    table_addr: u32,
    length_paragraphs: u8,
    spec_rev: u8,
    checksum: u8,
    features: [u8; 5],
}

#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct TableHeader {
    signature: [u8; 4],
    length: u16,
    spec_rev: u8,
    checksum: u8,
    oem_id: [u8; 8],
    product_id: [u8; 12],
    oem_table: u32,
    oem_table_size: u16,
    entry_count: u16,
    lapic_addr: u32,
    ext_length: u16,
    ext_checksum: u8,
    reserved: u8,
}

#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct Processor {
    kind: u8,
    apic_id: u8,
    apic_version: u8,
    flags: u8,
    signature: u32,
    features: u32,
    reserved: [u32; 2],
}

#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct BusEntry {
    kind: u8,
    bus_id: u8,
    bus_type: [u8; 6],
}

#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct IoApic {
    kind: u8,
    apic_id: u8,
    version: u8,
    flags: u8,
    addr: u32,
}

/// Both interrupt assignment entries (I/O and local) share this layout.
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct InterruptEntry {
    kind: u8,
    irq_type: u8,
    flags: u16,
    source_bus: u8,
    source_irq: u8,
    dest_apic: u8,
    dest_pin: u8,
}

// SAFETY: plain-old-data, packed, every bit pattern valid.
unsafe impl ByteValued for FloatingPointer {}
// SAFETY: as above.
unsafe impl ByteValued for TableHeader {}
// SAFETY: as above.
unsafe impl ByteValued for Processor {}
// SAFETY: as above.
unsafe impl ByteValued for BusEntry {}
// SAFETY: as above.
unsafe impl ByteValued for IoApic {}
// SAFETY: as above.
unsafe impl ByteValued for InterruptEntry {}

/// Bytes of the table and the entries, appended in order.
#[derive(Default)]
struct Builder {
    bytes: Vec<u8>,
    entries: u16,
}

impl Builder {
    fn push<T: ByteValued>(&mut self, entry: T) {
        self.bytes.extend_from_slice(entry.as_slice());
        self.entries += 1;
    }
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |s, b| s.wrapping_sub(*b))
}

/// The MP structures for `num_cpus` vCPUs with APIC IDs 0..num_cpus, as
/// bytes to place at [`MPTABLE_START`].
fn build(num_cpus: u8) -> Result<Vec<u8>, MpTableError> {
    if num_cpus == 0 || num_cpus > MAX_CPUS {
        return Err(MpTableError::TooManyCpus(num_cpus));
    }
    let ioapic_id = num_cpus;
    let mut body = Builder::default();
    for cpu in 0..num_cpus {
        body.push(Processor {
            kind: ENTRY_PROCESSOR,
            apic_id: cpu,
            apic_version: APIC_VERSION,
            flags: CPU_ENABLED | if cpu == 0 { CPU_BOOTSTRAP } else { 0 },
            signature: CPU_STEPPING,
            features: CPU_FEATURE_APIC | CPU_FEATURE_FPU,
            reserved: [0; 2],
        });
    }
    body.push(BusEntry {
        kind: ENTRY_BUS,
        bus_id: 0,
        bus_type: BUS_ISA,
    });
    body.push(IoApic {
        kind: ENTRY_IOAPIC,
        apic_id: ioapic_id,
        version: IOAPIC_VERSION,
        flags: IOAPIC_USABLE,
        addr: IOAPIC_START as u32,
    });
    for irq in 0..IOAPIC_PINS {
        body.push(InterruptEntry {
            kind: ENTRY_IO_INTERRUPT,
            irq_type: INT_TYPE_INT,
            flags: 0,
            source_bus: 0,
            source_irq: irq,
            dest_apic: ioapic_id,
            dest_pin: irq,
        });
    }
    // LINT0 takes the legacy PIC (ExtINT), LINT1 NMIs, on every CPU (0xff).
    for (irq_type, pin) in [(INT_TYPE_EXTINT, 0), (INT_TYPE_NMI, 1)] {
        body.push(InterruptEntry {
            kind: ENTRY_LOCAL_INTERRUPT,
            irq_type,
            flags: 0,
            source_bus: 0,
            source_irq: 0,
            dest_apic: 0xff,
            dest_pin: pin,
        });
    }

    let fp_size = size_of::<FloatingPointer>();
    let table_len = size_of::<TableHeader>() + body.bytes.len();
    if (fp_size + table_len) as u64 > MPTABLE_MAX_SIZE {
        return Err(MpTableError::TooLarge);
    }
    let mut header = TableHeader {
        signature: *b"PCMP",
        length: table_len as u16,
        spec_rev: SPEC_REV_1_4,
        oem_id: *b"SKIFF   ",
        product_id: *b"MICROVM     ",
        entry_count: body.entries,
        lapic_addr: APIC_START as u32,
        ..Default::default()
    };
    let mut table = header.as_slice().to_vec();
    table.extend_from_slice(&body.bytes);
    header.checksum = checksum(&table);
    table[..size_of::<TableHeader>()].copy_from_slice(header.as_slice());

    let mut fp = FloatingPointer {
        signature: *b"_MP_",
        table_addr: (MPTABLE_START + fp_size as u64) as u32,
        length_paragraphs: 1,
        spec_rev: SPEC_REV_1_4,
        ..Default::default()
    };
    fp.checksum = checksum(fp.as_slice());

    let mut out = fp.as_slice().to_vec();
    out.extend_from_slice(&table);
    Ok(out)
}

/// Writes the MP table for `num_cpus` vCPUs into guest memory.
pub fn write(mem: &GuestMemoryMmap, num_cpus: u8) -> Result<(), MpTableError> {
    let bytes = build(num_cpus)?;
    mem.write_slice(&bytes, GuestAddress(MPTABLE_START))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    fn parse(bytes: &[u8]) -> (FloatingPointer, TableHeader, &[u8]) {
        let fp = FloatingPointer::from_slice(&bytes[..16]).copied().unwrap();
        let off = (fp.table_addr as u64 - MPTABLE_START) as usize;
        let hdr = TableHeader::from_slice(&bytes[off..off + 44])
            .copied()
            .unwrap();
        (fp, hdr, &bytes[off..off + { hdr.length } as usize])
    }

    #[test]
    fn struct_sizes_match_the_specification() {
        assert_eq!(size_of::<FloatingPointer>(), 16);
        assert_eq!(size_of::<TableHeader>(), 44);
        assert_eq!(size_of::<Processor>(), 20);
        assert_eq!(size_of::<BusEntry>(), 8);
        assert_eq!(size_of::<IoApic>(), 8);
        assert_eq!(size_of::<InterruptEntry>(), 8);
    }

    #[test]
    fn checksums_and_counts_are_valid() {
        for cpus in [1u8, 2, 8, MAX_CPUS] {
            let bytes = build(cpus).unwrap();
            let (fp, hdr, table) = parse(&bytes);
            assert_eq!(&fp.signature, b"_MP_");
            assert_eq!(sum(fp.as_slice()), 0);
            assert_eq!(&hdr.signature, b"PCMP");
            assert_eq!(sum(table), 0, "{cpus} cpus");
            let expected = cpus as u16 + 2 + IOAPIC_PINS as u16 + 2;
            assert_eq!({ hdr.entry_count }, expected);
            assert_eq!({ hdr.lapic_addr }, APIC_START as u32);
        }
    }

    #[test]
    fn lists_each_cpu_with_the_first_as_bootstrap() {
        let bytes = build(3).unwrap();
        let (_, _, table) = parse(&bytes);
        let cpus: Vec<Processor> = (0..3)
            .map(|i| *Processor::from_slice(&table[44 + i * 20..64 + i * 20]).unwrap())
            .collect();
        assert_eq!(
            cpus.iter().map(|c| c.apic_id).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        assert_eq!(cpus[0].flags, CPU_ENABLED | CPU_BOOTSTRAP);
        assert_eq!(cpus[2].flags, CPU_ENABLED);
        let ioapic = *IoApic::from_slice(&table[44 + 60 + 8..44 + 60 + 16]).unwrap();
        assert_eq!(ioapic.apic_id, 3);
        assert_eq!({ ioapic.addr }, IOAPIC_START as u32);
    }

    #[test]
    fn refuses_impossible_cpu_counts() {
        assert!(matches!(build(0), Err(MpTableError::TooManyCpus(0))));
        assert!(matches!(build(255), Err(MpTableError::TooManyCpus(255))));
    }

    #[test]
    fn writes_into_guest_memory() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        write(&mem, 2).unwrap();
        let sig: [u8; 4] = mem.read_obj(GuestAddress(MPTABLE_START)).unwrap();
        assert_eq!(&sig, b"_MP_");
    }
}
