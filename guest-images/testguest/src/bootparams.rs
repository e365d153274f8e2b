//! The Linux zero page (`struct boot_params`) the VMM passes in RSI, and its E820 map.

use crate::phys::{self, le_u32, le_u64};

const ACPI_RSDP_ADDR: usize = 0x070;
const E820_ENTRIES: usize = 0x1e8;
const CMD_LINE_PTR: usize = 0x228;
const CMDLINE_SIZE: usize = 0x238;
const E820_TABLE: usize = 0x2d0;
/// Entries the zero page has room for.
pub const E820_MAX: usize = 128;
const E820_ENTRY_SIZE: usize = 20;

/// E820 type: usable RAM.
pub const E820_RAM: u32 = 1;

/// The zero page.
#[derive(Debug, Clone, Copy)]
pub struct BootParams {
    addr: u64,
    page: &'static [u8],
}

/// One E820 entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// 1 RAM, 2 reserved, 3 ACPI, ...
    pub kind: u32,
}

impl E820Entry {
    /// One past the last byte (saturating: a corrupt entry must not wrap).
    pub fn end(&self) -> u64 {
        self.addr.saturating_add(self.size)
    }

    /// Whether `[addr, addr + len)` lies inside this entry.
    pub fn contains(&self, addr: u64, len: u64) -> bool {
        addr >= self.addr && addr.saturating_add(len) <= self.end()
    }
}

impl BootParams {
    /// The zero page at `addr`, or `None` if that is not a usable address.
    pub fn at(addr: u64) -> Option<Self> {
        // The guest never writes the zero page.
        let page = phys::bytes(addr, 4096)?;
        Some(BootParams { addr, page })
    }

    /// Its guest-physical address.
    pub fn addr(&self) -> u64 {
        self.addr
    }

    /// `acpi_rsdp_addr` (0: not given).
    pub fn acpi_rsdp_addr(&self) -> u64 {
        le_u64(self.page, ACPI_RSDP_ADDR)
    }

    /// `hdr.cmd_line_ptr`.
    pub fn cmd_line_ptr(&self) -> u64 {
        u64::from(le_u32(self.page, CMD_LINE_PTR))
    }

    /// `hdr.cmdline_size`.
    pub fn cmdline_size(&self) -> u32 {
        le_u32(self.page, CMDLINE_SIZE)
    }

    /// `e820_entries`, as the VMM wrote it (may exceed [`E820_MAX`] if the VMM is broken).
    pub fn e820_count(&self) -> usize {
        usize::from(self.page[E820_ENTRIES])
    }

    /// The E820 entries (at most [`E820_MAX`]).
    pub fn e820(&self) -> impl Iterator<Item = E820Entry> + Clone + '_ {
        (0..self.e820_count().min(E820_MAX)).map(move |i| {
            let off = E820_TABLE + i * E820_ENTRY_SIZE;
            E820Entry {
                addr: le_u64(self.page, off),
                size: le_u64(self.page, off + 8),
                kind: le_u32(self.page, off + 16),
            }
        })
    }

    /// The E820 entry holding all of `[addr, addr + len)`, if any.
    pub fn e820_entry_containing(&self, addr: u64, len: u64) -> Option<E820Entry> {
        self.e820().find(|e| e.contains(addr, len))
    }
}
