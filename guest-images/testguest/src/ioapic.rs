//! The I/O APIC at 0xFEC00000, by MMIO from ring 3: IOREGSEL at +0x00, IOWIN at +0x10.

use crate::mmio;

/// Guest-physical (= virtual) base of the IOAPIC registers.
pub const BASE: u64 = 0xfec0_0000;
const IOREGSEL: u64 = BASE;
const IOWIN: u64 = BASE + 0x10;

/// Register indices.
pub mod reg {
    /// IOAPIC ID.
    pub const ID: u32 = 0x00;
    /// Version and highest redirection entry.
    pub const VERSION: u32 = 0x01;
    /// The low half of pin 0's redirection entry.
    pub const REDIR_BASE: u32 = 0x10;
}

/// Redirection entry bits.
pub mod entry {
    /// Remote IRR (read-only): a level interrupt is in service.
    pub const REMOTE_IRR: u64 = 1 << 14;
    /// Level-triggered.
    pub const LEVEL: u64 = 1 << 15;
    /// Masked.
    pub const MASKED: u64 = 1 << 16;
    /// Destination APIC ID shift.
    pub const DEST_SHIFT: u32 = 56;
}

/// Reads register `index`.
pub fn read(index: u32) -> u32 {
    mmio::write32(IOREGSEL, index);
    mmio::read32(IOWIN)
}

/// Writes register `index`.
pub fn write(index: u32, value: u32) {
    mmio::write32(IOREGSEL, index);
    mmio::write32(IOWIN, value);
}

/// The redirection entry of `pin`.
pub fn entry(pin: u32) -> u64 {
    let lo = read(reg::REDIR_BASE + 2 * pin);
    let hi = read(reg::REDIR_BASE + 2 * pin + 1);
    u64::from(lo) | (u64::from(hi) << 32)
}

/// Programs `pin` as Linux does: the high half (destination) first, then the low half.
pub fn set_entry(pin: u32, value: u64) {
    write(reg::REDIR_BASE + 2 * pin + 1, (value >> 32) as u32);
    write(reg::REDIR_BASE + 2 * pin, value as u32);
}

/// A fixed-delivery entry for `vector` to physical APIC `dest`.
pub fn fixed(vector: u8, dest: u32) -> u64 {
    u64::from(vector) | (u64::from(dest & 0xff) << entry::DEST_SHIFT)
}
