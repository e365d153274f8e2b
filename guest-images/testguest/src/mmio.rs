//! MMIO from ring 3: device registers in the identity-mapped, uncached PCI and ECAM
//! windows. Inline assembly, so each access is exactly one load or store of its size.

use core::arch::asm;

/// Reads a byte of device memory.
pub fn read8(addr: u64) -> u8 {
    let v: u8;
    // SAFETY: a load from the identity map (device memory); it changes no Rust-visible state.
    unsafe {
        asm!("mov {v}, byte ptr [{a}]", a = in(reg) addr, v = out(reg_byte) v, options(nostack, preserves_flags))
    };
    v
}

/// Reads 16 bits of device memory.
pub fn read16(addr: u64) -> u16 {
    let v: u16;
    // SAFETY: as in read8.
    unsafe {
        asm!("mov {v:x}, word ptr [{a}]", a = in(reg) addr, v = out(reg) v, options(nostack, preserves_flags))
    };
    v
}

/// Reads 32 bits of device memory.
pub fn read32(addr: u64) -> u32 {
    let v: u32;
    // SAFETY: as in read8.
    unsafe {
        asm!("mov {v:e}, dword ptr [{a}]", a = in(reg) addr, v = out(reg) v, options(nostack, preserves_flags))
    };
    v
}

/// Writes a byte of device memory.
pub fn write8(addr: u64, v: u8) {
    // SAFETY: a store to device memory in the identity map; no Rust object lives there.
    unsafe {
        asm!("mov byte ptr [{a}], {v}", a = in(reg) addr, v = in(reg_byte) v, options(nostack, preserves_flags))
    };
}

/// Writes 16 bits of device memory.
pub fn write16(addr: u64, v: u16) {
    // SAFETY: a store to device memory in the identity map; no Rust object lives there.
    unsafe {
        asm!("mov word ptr [{a}], {v:x}", a = in(reg) addr, v = in(reg) v, options(nostack, preserves_flags))
    };
}

/// Writes 32 bits of device memory.
pub fn write32(addr: u64, v: u32) {
    // SAFETY: as in write8.
    unsafe {
        asm!("mov dword ptr [{a}], {v:e}", a = in(reg) addr, v = in(reg) v, options(nostack, preserves_flags))
    };
}
