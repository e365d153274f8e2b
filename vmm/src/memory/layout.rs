//! The guest-physical address map of an x86_64 microVM.
//!
//! ```text
//! 0x0000_0500  boot GDT            0x0000_7000  zero page (boot_params)
//! 0x0000_8ff0  boot stack top      0x0000_9000  boot page tables (PML4, PDPT, 4 PDs)
//! 0x0002_0000  kernel command line 0x0009_fc00  EBDA (reserved) .. 1 MiB
//! 0x000e_0000  RSDP and ACPI tables (reserved)
//! 0x0010_0000  kernel (ELF segments at their p_paddr), then initrd at the top of low RAM
//! 3 GiB..4 GiB the 32-bit MMIO hole: PCI windows, ECAM, IOAPIC, LAPIC, KVM's TSS
//! 4 GiB..      RAM beyond what fits below the hole
//! ```

use devices::bits::{hi32, lo32};

/// One MiB, GiB.
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// The boot GDT (Linux 64-bit boot protocol: __BOOT_CS 0x10, __BOOT_DS 0x18).
pub const BOOT_GDT_START: u64 = 0x500;
/// An empty boot IDT right after the GDT.
pub const BOOT_IDT_START: u64 = 0x520;
/// The zero page, `boot_params`.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// The boot PML4; the PDPT and four page directories follow it page by page.
pub const PML4_START: u64 = 0x9000;
/// The boot PDPT.
pub const PDPTE_START: u64 = 0xa000;
/// The first of four boot page directories (2 MiB pages over the first 4 GiB).
pub const PDE_START: u64 = 0xb000;
/// The kernel command line.
pub const CMDLINE_START: u64 = 0x2_0000;
/// Start of the extended BIOS data area: RAM below it is usable.
pub const EBDA_START: u64 = 0x9_fc00;
/// The RSDP; the other ACPI tables follow it below [`ACPI_END`].
pub const RSDP_START: u64 = 0xe_0000;
/// End of the ACPI area (exclusive).
pub const ACPI_END: u64 = 0x10_0000;
/// Start of RAM for the kernel: 1 MiB.
pub const HIMEM_START: u64 = 0x10_0000;

/// Start of the 32-bit MMIO hole.
pub const MMIO_HOLE_START: u64 = 3 * GIB;
/// End of the 32-bit MMIO hole (exclusive) and start of high RAM.
pub const MMIO_HOLE_END: u64 = 4 * GIB;
/// The 32-bit PCI MMIO window (BARs and root-port windows), 512 MiB.
pub const PCI_MMIO32_START: u64 = MMIO_HOLE_START;
/// End of the 32-bit PCI MMIO window (exclusive).
pub const PCI_MMIO32_END: u64 = 0xe000_0000;
/// The ECAM window: 1 MiB per bus, buses 0..=255.
pub const ECAM_START: u64 = 0xe000_0000;
/// Last bus ECAM decodes.
pub const ECAM_LAST_BUS: u8 = 255;
/// Size of the ECAM window.
pub const ECAM_SIZE: u64 = (ECAM_LAST_BUS as u64 + 1) << 20;
/// The 64-bit PCI MMIO window, above any RAM: 512 GiB, 64 GiB long.
pub const PCI_MMIO64_START: u64 = 512 * GIB;
/// End of the 64-bit PCI MMIO window (exclusive).
pub const PCI_MMIO64_END: u64 = PCI_MMIO64_START + 64 * GIB;
/// The IOAPIC.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// The local APIC.
pub const LAPIC_START: u64 = 0xfee0_0000;
/// Three pages KVM needs for the real-mode TSS on Intel (in the hole, never RAM).
pub const KVM_TSS_START: u64 = 0xfffb_d000;
/// One page KVM needs for the EPT identity map on Intel, right below the TSS.
pub const KVM_IDENTITY_MAP_START: u64 = 0xfffb_c000;

/// Smallest guest memory: room for the boot structures and a small kernel.
pub const MIN_MEMORY: u64 = 16 * MIB;
/// Largest guest memory: high RAM must stay below the 64-bit PCI window.
pub const MAX_MEMORY: u64 = 256 * GIB;

/// Largest initrd address for an ELF kernel without a setup header (Linux's default
/// initrd_addr_max).
pub const INITRD_ADDR_MAX: u64 = 0x7fff_ffff;

// The boot structures below 1 MiB must not overlap (checked at compile time).
const _: () = {
    assert!(BOOT_IDT_START + 8 <= ZERO_PAGE_START);
    assert!(ZERO_PAGE_START + 0x1000 <= BOOT_STACK_POINTER);
    assert!(BOOT_STACK_POINTER < PML4_START);
    assert!(PML4_START + 0x1000 == PDPTE_START && PDPTE_START + 0x1000 == PDE_START);
    assert!(PDE_START + 4 * 0x1000 <= CMDLINE_START);
    assert!(CMDLINE_START + 2048 <= EBDA_START);
    assert!(EBDA_START <= RSDP_START && ACPI_END <= HIMEM_START);
    assert!(KVM_IDENTITY_MAP_START + 0x1000 == KVM_TSS_START);
    assert!(LAPIC_START < KVM_IDENTITY_MAP_START && IOAPIC_START < LAPIC_START);
    assert!(MMIO_HOLE_START < IOAPIC_START);
    assert!(PCI_MMIO32_END <= ECAM_START && ECAM_START + ECAM_SIZE <= IOAPIC_START);
    assert!(MMIO_HOLE_END + (MAX_MEMORY - MMIO_HOLE_START) <= PCI_MMIO64_START);
};

/// `addr`, an address of this map below 4 GiB, as the 32-bit fields of the boot protocol,
/// the ACPI tables and KVM hold it. Call it in a const context (`const { addr32(..) }`),
/// where an address at or above 4 GiB fails the build.
pub const fn addr32(addr: u64) -> u32 {
    assert!(hi32(addr) == 0, "not a 32-bit address");
    lo32(addr)
}

/// E820 entry types.
pub const E820_RAM: u32 = 1;
/// Reserved memory.
pub const E820_RESERVED: u32 = 2;

/// A range of guest RAM: start and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamRange {
    /// Guest-physical start.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
}

impl RamRange {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// The RAM ranges of a guest with `size` bytes: below the MMIO hole, then above 4 GiB.
pub fn ram_ranges(size: u64) -> Vec<RamRange> {
    let low = size.min(MMIO_HOLE_START);
    let mut ranges = vec![RamRange { start: 0, len: low }];
    if size > low {
        ranges.push(RamRange {
            start: MMIO_HOLE_END,
            len: size - low,
        });
    }
    ranges
}

/// End of RAM below the MMIO hole (exclusive).
pub fn low_ram_end(size: u64) -> u64 {
    size.min(MMIO_HOLE_START)
}

/// One entry of the E820 map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// Start.
    pub addr: u64,
    /// Length.
    pub size: u64,
    /// [`E820_RAM`] or [`E820_RESERVED`].
    pub kind: u32,
}

/// The E820 map of a guest with `size` bytes of RAM: usable RAM below the EBDA, the EBDA
/// and BIOS area (ACPI tables live there) reserved, RAM from 1 MiB to the hole, the ECAM
/// window reserved (Linux checks MCFG against E820), RAM above 4 GiB.
pub fn e820_map(size: u64) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        E820Entry {
            addr: EBDA_START,
            size: HIMEM_START - EBDA_START,
            kind: E820_RESERVED,
        },
    ];
    for r in ram_ranges(size) {
        let start = r.start.max(HIMEM_START);
        if r.end() > start {
            map.push(E820Entry {
                addr: start,
                size: r.end() - start,
                kind: E820_RAM,
            });
        }
    }
    map.push(E820Entry {
        addr: ECAM_START,
        size: ECAM_SIZE,
        kind: E820_RESERVED,
    });
    map.sort_by_key(|e| e.addr);
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_has_no_high_ram() {
        assert_eq!(
            ram_ranges(256 * MIB),
            vec![RamRange {
                start: 0,
                len: 256 * MIB
            }]
        );
        let map = e820_map(256 * MIB);
        assert_eq!(map.len(), 4);
        assert_eq!(
            map[3],
            E820Entry {
                addr: ECAM_START,
                size: ECAM_SIZE,
                kind: E820_RESERVED
            }
        );
        assert_eq!(
            map[0],
            E820Entry {
                addr: 0,
                size: EBDA_START,
                kind: E820_RAM
            }
        );
        assert_eq!(map[1].kind, E820_RESERVED);
        assert_eq!(
            map[2],
            E820Entry {
                addr: MIB,
                size: 255 * MIB,
                kind: E820_RAM
            }
        );
    }

    #[test]
    fn large_guest_skips_the_hole() {
        let size = 5 * GIB;
        let ranges = ram_ranges(size);
        assert_eq!(ranges[0].end(), MMIO_HOLE_START);
        assert_eq!(
            ranges[1],
            RamRange {
                start: 4 * GIB,
                len: 2 * GIB
            }
        );
        assert_eq!(ranges.iter().map(|r| r.len).sum::<u64>(), size);
        let map = e820_map(size);
        assert_eq!(map.last().unwrap().addr, 4 * GIB);
        for e in &map {
            let overlaps_hole = e.addr < MMIO_HOLE_END && e.addr + e.size > MMIO_HOLE_START;
            assert!(!overlaps_hole || e.kind == E820_RESERVED, "{e:?}");
        }
    }

    #[test]
    fn e820_is_sorted_and_disjoint() {
        for size in [MIN_MEMORY, 3 * GIB, 3 * GIB + 4096, 64 * GIB, MAX_MEMORY] {
            let map = e820_map(size);
            for w in map.windows(2) {
                assert!(w[0].addr + w[0].size <= w[1].addr, "{size}: {w:?}");
            }
            let ram: u64 = map
                .iter()
                .filter(|e| e.kind == E820_RAM)
                .map(|e| e.size)
                .sum();
            assert_eq!(ram, size - (HIMEM_START - EBDA_START));
        }
    }
}
