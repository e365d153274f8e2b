//! Base address registers: kind, size, the flag bits a guest reads back.

/// What a BAR decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    /// I/O space.
    Io,
    /// 32-bit memory space.
    Memory32,
    /// 64-bit memory space (takes two BAR slots).
    Memory64,
}

impl BarKind {
    /// The bits of the low BAR register that hold the address.
    pub const fn address_bits(self) -> u32 {
        match self {
            BarKind::Io => !0x3,
            BarKind::Memory32 | BarKind::Memory64 => !0xf,
        }
    }
}

/// One BAR: what it decodes, how large, whether prefetchable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bar {
    /// Kind.
    pub kind: BarKind,
    /// Size in bytes (a power of two).
    pub size: u64,
    /// Prefetchable (memory BARs).
    pub prefetchable: bool,
}

impl Bar {
    /// A 32-bit non-prefetchable memory BAR.
    pub const fn mem32(size: u64) -> Self {
        Self {
            kind: BarKind::Memory32,
            size,
            prefetchable: false,
        }
    }

    /// A 64-bit memory BAR.
    pub const fn mem64(size: u64, prefetchable: bool) -> Self {
        Self {
            kind: BarKind::Memory64,
            size,
            prefetchable,
        }
    }

    /// An I/O BAR.
    pub const fn io(size: u64) -> Self {
        Self {
            kind: BarKind::Io,
            size,
            prefetchable: false,
        }
    }

    /// The read-only flag bits of the low register.
    pub const fn flags(&self) -> u32 {
        match self.kind {
            BarKind::Io => 0x1,
            BarKind::Memory32 => (self.prefetchable as u32) << 3,
            BarKind::Memory64 => 0x4 | ((self.prefetchable as u32) << 3),
        }
    }
}
