//! Guest-physical memory, which ring 0 identity-maps for ring 3 up to [`MAPPED_END`].

use core::arch::asm;

/// End of the identity map (exclusive): 64 GiB.
pub const MAPPED_END: u64 = 64 << 30;

/// Whether `[addr, addr + len)` lies inside the identity map.
pub fn is_mapped(addr: u64, len: u64) -> bool {
    addr.checked_add(len).is_some_and(|end| end <= MAPPED_END)
}

/// Bytes of guest memory that nothing in the guest writes (firmware tables, boot data),
/// or `None` if the range is not mapped or starts at address 0.
pub fn bytes(addr: u64, len: u64) -> Option<&'static [u8]> {
    if addr == 0 || !is_mapped(addr, len) {
        return None;
    }
    // SAFETY: the range is identity-mapped, non-null and does not wrap; the caller only
    // asks for memory the guest does not write while the slice lives.
    Some(unsafe { core::slice::from_raw_parts(addr as *const u8, len as usize) })
}

/// Reads the quadword at `addr`, any mapped address, 0 included (inline assembly: the
/// access means "this guest-physical address", which no Rust pointer rule constrains).
pub fn read_u64(addr: u64) -> u64 {
    debug_assert!(is_mapped(addr, 8));
    let value: u64;
    // SAFETY: a load from the identity map; it changes no memory.
    unsafe {
        asm!("mov {v}, qword ptr [{a}]", a = in(reg) addr, v = out(reg) value, options(nostack, preserves_flags))
    };
    value
}

/// Writes the quadword at `addr`. The caller owns that memory: nothing else in the guest
/// uses it, or the caller puts the old value back before anything can look.
pub fn write_u64(addr: u64, value: u64) {
    debug_assert!(is_mapped(addr, 8));
    // SAFETY: the caller owns the memory (see above); the store is opaque to the compiler,
    // which assumes nothing about the contents of guest memory it does not own.
    unsafe {
        asm!("mov qword ptr [{a}], {v}", a = in(reg) addr, v = in(reg) value, options(nostack, preserves_flags))
    };
}

/// Copies guest memory at `addr` into `out`, a quadword at a time (the last one partly).
pub fn read_bytes(addr: u64, out: &mut [u8]) {
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        let w = read_u64(addr + 8 * i as u64).to_le_bytes();
        chunk.copy_from_slice(&w[..chunk.len()]);
    }
}

/// Writes `bytes`, a whole number of quadwords, to guest memory at `addr` (which the
/// caller owns, as for [`write_u64`]).
pub fn write_bytes(addr: u64, bytes: &[u8]) {
    debug_assert!(bytes.len().is_multiple_of(8));
    for (i, w) in bytes.chunks_exact(8).enumerate() {
        write_u64(addr + 8 * i as u64, le_u64(w, 0));
    }
}

/// Little-endian readers for byte slices of tables.
pub fn le_u32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// See [`le_u32`].
pub fn le_u64(b: &[u8], off: usize) -> u64 {
    u64::from(le_u32(b, off)) | u64::from(le_u32(b, off + 4)) << 32
}
