//! The halves of a 64-bit value, for the 32-bit registers and table fields that hold an
//! address or a mask in two parts (BARs, MSI addresses, IOAPIC entries, boot protocol
//! fields).

/// The low 32 bits of `x`.
pub const fn lo32(x: u64) -> u32 {
    (x & 0xffff_ffff) as u32
}

/// The high 32 bits of `x`.
pub const fn hi32(x: u64) -> u32 {
    (x >> 32) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves() {
        let x = 0x0123_4567_89ab_cdef;
        assert_eq!((lo32(x), hi32(x)), (0x89ab_cdef, 0x0123_4567));
        assert_eq!(u64::from(lo32(x)) | (u64::from(hi32(x)) << 32), x);
    }
}
