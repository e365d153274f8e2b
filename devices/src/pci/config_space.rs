//! A function's 4 KiB configuration space: the registers, which bits the guest may write,
//! which are write-1-to-clear, and the standard and extended capability chains.
//!
//! Every access the guest makes goes through [`ConfigSpace::read`] and
//! [`ConfigSpace::write`], which apply the masks byte by byte, so read-only fields stay put
//! and RW1C status bits clear only when written with 1, whatever the access size. BAR
//! sizing falls out of the same rule: a BAR's writable mask holds only its address bits
//! above the size, so writing all ones reads back `!(size - 1)` plus the flag bits.

use super::bar::{Bar, BarKind};
use super::regs::*;
use crate::bits::{hi32, lo32};

/// Size of PCIe configuration space.
pub const CONFIG_SPACE_SIZE: usize = 4096;
/// Size of the legacy (PCI) part, reachable through 0xCF8/0xCFC.
pub const LEGACY_CONFIG_SIZE: usize = 256;
/// First offset of the standard capability area.
const FIRST_CAP_OFFSET: usize = 0x40;
/// First offset of the extended capability area.
const FIRST_EXT_CAP_OFFSET: usize = 0x100;

/// Errors building a configuration space (all programming errors of the device model,
/// never guest input).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// No room left for a capability.
    #[error("no room for a {len}-byte capability {id:#x} at offset {offset:#x}")]
    NoRoom {
        /// Capability ID.
        id: u16,
        /// Its length.
        len: usize,
        /// Where it would have gone.
        offset: usize,
    },
    /// A BAR slot that does not exist or is taken.
    #[error("BAR {0} is invalid or already in use")]
    BarSlot(usize),
    /// A BAR size that is not a power of two of at least the minimum.
    #[error("BAR size {0:#x} is not a power of two of at least 16 bytes (4 for I/O)")]
    BarSize(u64),
}

/// The header layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderType {
    /// Type 0: an endpoint.
    Endpoint,
    /// Type 1: a PCI-to-PCI bridge (root ports).
    Bridge,
}

/// A configuration space.
#[derive(Clone)]
pub struct ConfigSpace {
    regs: Box<[u8; CONFIG_SPACE_SIZE]>,
    writable: Box<[u8; CONFIG_SPACE_SIZE]>,
    w1c: Box<[u8; CONFIG_SPACE_SIZE]>,
    header: HeaderType,
    next_cap: usize,
    last_cap: Option<usize>,
    next_ext_cap: usize,
    last_ext_cap: Option<usize>,
    bars: [Option<Bar>; 6],
    /// Slots holding the upper half of a 64-bit BAR.
    bar_upper: [bool; 6],
}

impl std::fmt::Debug for ConfigSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigSpace")
            .field("vendor", &format_args!("{:#06x}", self.read_u16(VENDOR_ID)))
            .field("device", &format_args!("{:#06x}", self.read_u16(DEVICE_ID)))
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

/// Identity of a function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciId {
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Class code: base class, subclass, programming interface.
    pub class: [u8; 3],
    /// Revision ID.
    pub revision: u8,
    /// Subsystem vendor ID (type 0 only).
    pub subsystem_vendor: u16,
    /// Subsystem ID (type 0 only).
    pub subsystem: u16,
}

impl ConfigSpace {
    /// A configuration space with the standard header of `header` type and `id`. COMMAND
    /// has I/O, memory, bus master, SERR#, parity and INTx-disable writable; STATUS has
    /// the capability-list bit (set once a capability is added) and its error bits RW1C.
    pub fn new(header: HeaderType, id: PciId) -> Self {
        let mut c = Self {
            regs: Box::new([0; CONFIG_SPACE_SIZE]),
            writable: Box::new([0; CONFIG_SPACE_SIZE]),
            w1c: Box::new([0; CONFIG_SPACE_SIZE]),
            header,
            next_cap: FIRST_CAP_OFFSET,
            last_cap: None,
            next_ext_cap: FIRST_EXT_CAP_OFFSET,
            last_ext_cap: None,
            bars: [None; 6],
            bar_upper: [false; 6],
        };
        c.set_u16(VENDOR_ID, id.vendor);
        c.set_u16(DEVICE_ID, id.device);
        c.regs[REVISION_ID] = id.revision;
        c.regs[CLASS_PROG] = id.class[2];
        c.regs[CLASS_DEVICE] = id.class[1];
        c.regs[CLASS_DEVICE + 1] = id.class[0];
        c.writable_u16(
            COMMAND,
            CMD_IO | CMD_MEMORY | CMD_MASTER | CMD_PARITY | CMD_SERR | CMD_INTX_DISABLE,
        );
        c.w1c_u16(STATUS, STATUS_ERROR_BITS);
        c.regs[CACHE_LINE_SIZE] = 0;
        c.writable[CACHE_LINE_SIZE] = 0xff;
        // PCIe: the latency timers do not apply and read 0 (LATENCY_TIMER stays read-only).
        c.writable[INTERRUPT_LINE] = 0xff;
        match header {
            HeaderType::Endpoint => {
                c.regs[HEADER_TYPE] = 0;
                c.set_u16(SUBSYSTEM_VENDOR_ID, id.subsystem_vendor);
                c.set_u16(SUBSYSTEM_ID, id.subsystem);
            }
            HeaderType::Bridge => {
                c.regs[HEADER_TYPE] = 1;
                for off in [PRIMARY_BUS, SECONDARY_BUS, SUBORDINATE_BUS] {
                    c.writable[off] = 0xff;
                }
                // I/O base/limit: 16-bit decode (low nibble 0), upper 4 bits of each RW.
                c.writable[IO_BASE] = 0xf0;
                c.writable[IO_LIMIT] = 0xf0;
                c.w1c_u16(SEC_STATUS, STATUS_ERROR_BITS);
                c.writable_u16(MEMORY_BASE, 0xfff0);
                c.writable_u16(MEMORY_LIMIT, 0xfff0);
                // Prefetchable window: 64-bit decode (low nibble 1).
                c.set_u16(PREF_MEMORY_BASE, 0x1);
                c.set_u16(PREF_MEMORY_LIMIT, 0x1);
                c.writable_u16(PREF_MEMORY_BASE, 0xfff0);
                c.writable_u16(PREF_MEMORY_LIMIT, 0xfff0);
                c.writable_u32(PREF_BASE_UPPER32, 0xffff_ffff);
                c.writable_u32(PREF_LIMIT_UPPER32, 0xffff_ffff);
                c.writable_u16(IO_BASE_UPPER16, 0xffff);
                c.writable_u16(IO_LIMIT_UPPER16, 0xffff);
                // Bridge control, PCIe: parity error response, SERR#, ISA, VGA, VGA 16-bit
                // decode and secondary bus reset; bit 5 and 7..11 read 0.
                c.writable_u16(BRIDGE_CONTROL, 0x005f);
            }
        }
        c
    }

    /// The header type.
    pub fn header_type(&self) -> HeaderType {
        self.header
    }

    /// Sets or clears the multi-function bit of the header type.
    pub fn set_multifunction(&mut self, on: bool) {
        if on {
            self.regs[HEADER_TYPE] |= 0x80;
        } else {
            self.regs[HEADER_TYPE] &= 0x7f;
        }
    }

    /// Guest read of 1, 2 or 4 bytes at `offset`; anything else (or out of range) reads
    /// all ones.
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        match offset.checked_add(data.len()) {
            Some(end) if end <= CONFIG_SPACE_SIZE && matches!(data.len(), 1 | 2 | 4) => {
                data.copy_from_slice(&self.regs[offset..end]);
            }
            _ => data.fill(0xff),
        }
    }

    /// Guest write of 1, 2 or 4 bytes at `offset`, through the masks. Returns false (and
    /// changes nothing) for a bad size or range.
    pub fn write(&mut self, offset: usize, data: &[u8]) -> bool {
        let Some(end) = offset.checked_add(data.len()) else {
            return false;
        };
        if end > CONFIG_SPACE_SIZE || !matches!(data.len(), 1 | 2 | 4) {
            return false;
        }
        for (i, value) in data.iter().enumerate() {
            let o = offset + i;
            let wm = self.writable[o];
            let mut byte = (self.regs[o] & !wm) | (value & wm);
            byte &= !(value & self.w1c[o]);
            self.regs[o] = byte;
        }
        true
    }

    /// A register as the device sees it.
    pub fn read_u8(&self, offset: usize) -> u8 {
        self.regs[offset]
    }

    /// A 16-bit register as the device sees it.
    pub fn read_u16(&self, offset: usize) -> u16 {
        u16::from_le_bytes([self.regs[offset], self.regs[offset + 1]])
    }

    /// A 32-bit register as the device sees it.
    pub fn read_u32(&self, offset: usize) -> u32 {
        u32::from_le_bytes(self.regs[offset..offset + 4].try_into().unwrap_or([0; 4]))
    }

    /// Sets a register from the device side (ignores the guest masks).
    pub fn set_u8(&mut self, offset: usize, value: u8) {
        self.regs[offset] = value;
    }

    /// Sets a 16-bit register from the device side.
    pub fn set_u16(&mut self, offset: usize, value: u16) {
        self.regs[offset..offset + 2].copy_from_slice(&value.to_le_bytes());
    }

    /// Sets a 32-bit register from the device side.
    pub fn set_u32(&mut self, offset: usize, value: u32) {
        self.regs[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
    }

    /// Makes `mask` of the 16-bit register at `offset` guest-writable.
    pub fn writable_u16(&mut self, offset: usize, mask: u16) {
        self.writable[offset..offset + 2].copy_from_slice(&mask.to_le_bytes());
    }

    /// Makes `mask` of the 32-bit register at `offset` guest-writable.
    pub fn writable_u32(&mut self, offset: usize, mask: u32) {
        self.writable[offset..offset + 4].copy_from_slice(&mask.to_le_bytes());
    }

    /// Makes `mask` of the 16-bit register at `offset` write-1-to-clear.
    pub fn w1c_u16(&mut self, offset: usize, mask: u16) {
        self.w1c[offset..offset + 2].copy_from_slice(&mask.to_le_bytes());
    }

    /// Makes `mask` of the 32-bit register at `offset` write-1-to-clear.
    pub fn w1c_u32(&mut self, offset: usize, mask: u32) {
        self.w1c[offset..offset + 4].copy_from_slice(&mask.to_le_bytes());
    }

    /// Appends a standard capability: `body` starts with the ID and a placeholder next
    /// pointer; `writable` (same length, may be shorter) gives guest-writable bits.
    /// Returns its offset.
    pub fn add_capability(&mut self, body: &[u8], writable: &[u8]) -> Result<usize, ConfigError> {
        let offset = self.next_cap.next_multiple_of(4);
        let end = offset + body.len();
        let no_room = || ConfigError::NoRoom {
            id: u16::from(body.first().copied().unwrap_or(0)),
            len: body.len(),
            offset,
        };
        // The chain's 8-bit next pointers hold the offset: past 255 there is no room.
        let pointer = u8::try_from(offset).map_err(|_| no_room())?;
        if body.len() < 2 || end > LEGACY_CONFIG_SIZE {
            return Err(no_room());
        }
        self.regs[offset..end].copy_from_slice(body);
        self.regs[offset + 1] = 0;
        for (i, m) in writable.iter().enumerate().take(body.len()) {
            self.writable[offset + i] = *m;
        }
        self.writable[offset] = 0;
        self.writable[offset + 1] = 0;
        match self.last_cap {
            Some(prev) => self.regs[prev + 1] = pointer,
            None => {
                self.regs[CAPABILITIES_POINTER] = pointer;
                let status = self.read_u16(STATUS) | STATUS_CAP_LIST;
                self.set_u16(STATUS, status);
            }
        }
        self.last_cap = Some(offset);
        self.next_cap = end;
        Ok(offset)
    }

    /// Appends an extended capability with `id` and `version`; `body` is what follows the
    /// 4-byte header. Returns the header's offset.
    pub fn add_ext_capability(
        &mut self,
        id: u16,
        version: u8,
        body: &[u8],
        writable: &[u8],
    ) -> Result<usize, ConfigError> {
        let offset = self.next_ext_cap.next_multiple_of(4);
        let end = offset + 4 + body.len();
        let no_room = || ConfigError::NoRoom {
            id,
            len: body.len() + 4,
            offset,
        };
        // The chain's 12-bit next offsets (bits 20-31) hold the offset, below
        // CONFIG_SPACE_SIZE (checked next).
        let pointer = u32::try_from(offset).map_err(|_| no_room())?;
        if end > CONFIG_SPACE_SIZE {
            return Err(no_room());
        }
        self.set_u32(offset, u32::from(id) | (u32::from(version & 0xf) << 16));
        self.regs[offset + 4..end].copy_from_slice(body);
        for (i, m) in writable.iter().enumerate().take(body.len()) {
            self.writable[offset + 4 + i] = *m;
        }
        if let Some(prev) = self.last_ext_cap {
            let header = self.read_u32(prev) & 0x000f_ffff;
            self.set_u32(prev, header | (pointer << 20));
        }
        self.last_ext_cap = Some(offset);
        self.next_ext_cap = end;
        Ok(offset)
    }

    /// Declares BAR `index` (a 64-bit BAR takes `index` and `index + 1`).
    pub fn add_bar(&mut self, index: usize, bar: Bar) -> Result<(), ConfigError> {
        let max = match self.header {
            HeaderType::Endpoint => 6,
            HeaderType::Bridge => 2,
        };
        let slots = if bar.kind == BarKind::Memory64 { 2 } else { 1 };
        let taken = |i: usize| self.bars[i].is_some() || self.bar_upper[i];
        if index + slots > max || (index..index + slots).any(taken) {
            return Err(ConfigError::BarSlot(index));
        }
        let min = if bar.kind == BarKind::Io { 4 } else { 16 };
        if !bar.size.is_power_of_two() || bar.size < min {
            return Err(ConfigError::BarSize(bar.size));
        }
        let reg = BAR0 + 4 * index;
        let addr_mask = !(bar.size - 1);
        self.set_u32(reg, bar.flags());
        self.writable_u32(reg, lo32(addr_mask) & bar.kind.address_bits());
        if bar.kind == BarKind::Memory64 {
            self.writable_u32(reg + 4, hi32(addr_mask));
            self.bar_upper[index + 1] = true;
        }
        self.bars[index] = Some(bar);
        Ok(())
    }

    /// The BAR declared at `index`.
    pub fn bar(&self, index: usize) -> Option<Bar> {
        self.bars.get(index).copied().flatten()
    }

    /// The address the guest programmed into BAR `index`, if it is declared.
    pub fn bar_address(&self, index: usize) -> Option<u64> {
        let bar = self.bar(index)?;
        let reg = BAR0 + 4 * index;
        let low = u64::from(self.read_u32(reg) & bar.kind.address_bits());
        let high = if bar.kind == BarKind::Memory64 {
            u64::from(self.read_u32(reg + 4)) << 32
        } else {
            0
        };
        Some(high | low)
    }

    /// Whether memory decoding is on (COMMAND.MEM).
    pub fn memory_enabled(&self) -> bool {
        self.read_u16(COMMAND) & CMD_MEMORY != 0
    }

    /// Whether the function may master the bus (COMMAND.MASTER).
    pub fn bus_master(&self) -> bool {
        self.read_u16(COMMAND) & CMD_MASTER != 0
    }

    /// Offsets of the standard capabilities, walked as a guest does (bounded).
    pub fn capabilities(&self) -> Vec<(u8, usize)> {
        let mut out = Vec::new();
        if self.read_u16(STATUS) & STATUS_CAP_LIST == 0 {
            return out;
        }
        let mut off = usize::from(self.regs[CAPABILITIES_POINTER] & !3);
        while off >= FIRST_CAP_OFFSET && out.len() < 48 {
            out.push((self.regs[off], off));
            off = usize::from(self.regs[off + 1] & !3);
        }
        out
    }

    /// Offsets of the extended capabilities, walked as a guest does (bounded).
    pub fn ext_capabilities(&self) -> Vec<(u16, usize)> {
        let mut out = Vec::new();
        let mut off = FIRST_EXT_CAP_OFFSET;
        while (FIRST_EXT_CAP_OFFSET..CONFIG_SPACE_SIZE).contains(&off) && out.len() < 960 {
            let header = self.read_u32(off);
            if header == 0 {
                break;
            }
            out.push(((header & 0xffff) as u16, off));
            off = (header >> 20) as usize & !3;
        }
        out
    }

    /// The offset of standard capability `id`.
    pub fn find_capability(&self, id: u8) -> Option<usize> {
        self.capabilities()
            .into_iter()
            .find(|(c, _)| *c == id)
            .map(|(_, o)| o)
    }

    /// The offset of extended capability `id`.
    pub fn find_ext_capability(&self, id: u16) -> Option<usize> {
        self.ext_capabilities()
            .into_iter()
            .find(|(c, _)| *c == id)
            .map(|(_, o)| o)
    }
}

#[cfg(test)]
mod tests;
