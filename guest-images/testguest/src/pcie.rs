//! PCI configuration access for scenarios: ECAM (base from the MCFG) and the legacy
//! 0xCF8/0xCFC pair, plus capability-list walkers with loop guards.

use crate::acpi::{self, AcpiError, Root};
use crate::{mmio, port};

/// A function's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bdf {
    /// Bus.
    pub bus: u8,
    /// Device (0-31).
    pub dev: u8,
    /// Function (0-7).
    pub func: u8,
}

impl core::fmt::Display for Bdf {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.dev, self.func)
    }
}

/// The ECAM window the MCFG describes.
#[derive(Debug, Clone, Copy)]
pub struct Ecam {
    /// Address of bus 0.
    pub base: u64,
    /// First bus.
    pub start_bus: u8,
    /// Last bus.
    pub end_bus: u8,
}

impl Ecam {
    /// Reads the MCFG (first entry, segment 0).
    pub fn from_acpi() -> Result<Self, AcpiError> {
        let rsdp = acpi::rsdp_at(acpi::scan_rsdp().ok_or(AcpiError::NoRsdp)?)?;
        let root = Root::from_rsdp(&rsdp)?;
        let mcfg = root.find(b"MCFG")?.ok_or(AcpiError::Missing {
            sig: acpi::Sig(*b"MCFG"),
        })?;
        let b = mcfg.bytes;
        if b.len() < 60 {
            return Err(AcpiError::Missing {
                sig: acpi::Sig(*b"MCFG"),
            });
        }
        Ok(Self {
            base: crate::phys::le_u64(b, 44),
            start_bus: b[54],
            end_bus: b[55],
        })
    }

    fn addr(&self, f: Bdf, reg: u16) -> u64 {
        self.base
            + (u64::from(f.bus) << 20)
            + (u64::from(f.dev & 31) << 15)
            + (u64::from(f.func & 7) << 12)
            + u64::from(reg & 0xfff)
    }

    /// 8-bit config read.
    pub fn read8(&self, f: Bdf, reg: u16) -> u8 {
        mmio::read8(self.addr(f, reg))
    }

    /// 16-bit config read.
    pub fn read16(&self, f: Bdf, reg: u16) -> u16 {
        mmio::read16(self.addr(f, reg))
    }

    /// 32-bit config read.
    pub fn read32(&self, f: Bdf, reg: u16) -> u32 {
        mmio::read32(self.addr(f, reg))
    }

    /// 16-bit config write.
    pub fn write16(&self, f: Bdf, reg: u16, v: u16) {
        mmio::write16(self.addr(f, reg), v)
    }

    /// 32-bit config write.
    pub fn write32(&self, f: Bdf, reg: u16, v: u32) {
        mmio::write32(self.addr(f, reg), v)
    }

    /// Standard capabilities (id, offset), following the list with a loop guard.
    pub fn capabilities(&self, f: Bdf) -> CapList {
        let mut list = CapList::default();
        if self.read16(f, 0x06) & 0x10 == 0 {
            return list;
        }
        let mut off = self.read8(f, 0x34) & 0xfc;
        while off >= 0x40 && list.len < list.caps.len() {
            list.caps[list.len] = (self.read8(f, u16::from(off)), u16::from(off));
            list.len += 1;
            off = self.read8(f, u16::from(off) + 1) & 0xfc;
        }
        list.looped = off >= 0x40;
        list
    }

    /// Extended capabilities (id, offset), with a loop guard.
    pub fn ext_capabilities(&self, f: Bdf) -> CapList {
        let mut list = CapList::default();
        let mut off = 0x100u16;
        while (0x100..0x1000).contains(&off) && list.len < list.caps.len() {
            let h = self.read32(f, off);
            if h == 0 || h == 0xffff_ffff {
                break;
            }
            list.caps[list.len] = ((h & 0xffff) as u8, off);
            list.len += 1;
            off = ((h >> 20) & 0xffc) as u16;
        }
        list.looped = list.len == list.caps.len();
        list
    }
}

/// Capability IDs and offsets found by a walk.
#[derive(Debug, Clone, Copy)]
pub struct CapList {
    caps: [(u8, u16); 48],
    len: usize,
    /// The walk hit its guard: the list loops or is absurdly long.
    pub looped: bool,
}

impl Default for CapList {
    fn default() -> Self {
        Self {
            caps: [(0, 0); 48],
            len: 0,
            looped: false,
        }
    }
}

impl CapList {
    /// The entries.
    pub fn as_slice(&self) -> &[(u8, u16)] {
        &self.caps[..self.len]
    }

    /// The offset of capability `id`.
    pub fn find(&self, id: u8) -> Option<u16> {
        self.as_slice()
            .iter()
            .find(|(c, _)| *c == id)
            .map(|(_, o)| *o)
    }
}

/// A 32-bit read through 0xCF8/0xCFC (registers below 0x100).
pub fn legacy_read32(f: Bdf, reg: u8) -> u32 {
    let addr = 0x8000_0000
        | (u32::from(f.bus) << 16)
        | (u32::from(f.dev & 31) << 11)
        | (u32::from(f.func & 7) << 8)
        | u32::from(reg & 0xfc);
    port::outl(0xcf8, addr);
    port::inl(0xcfc)
}
