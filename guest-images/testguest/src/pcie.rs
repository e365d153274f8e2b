//! PCI configuration access: ECAM (window from the MCFG) and the legacy 0xCF8/0xCFC pair
//! ([`legacy`]), 8, 16 and 32 bits each way; a walker that finds every function reachable
//! from the first bus the way Linux's PCI core scans (drivers find their devices in its
//! [`Topology`]); capability-list walkers with loop guards; BAR decoding; and the register
//! names ([`regs`]).

use core::fmt;

use crate::acpi::{self, AcpiError, Root};
use crate::{mmio, phys};

pub mod regs;

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

impl Bdf {
    /// Bus, device, function.
    pub const fn new(bus: u8, dev: u8, func: u8) -> Self {
        Self { bus, dev, func }
    }

    /// The requester ID: bus in bits 15:8, device 7:3, function 2:0.
    pub const fn rid(&self) -> u16 {
        (self.bus as u16) << 8 | (self.dev as u16 & 31) << 3 | (self.func as u16 & 7)
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.dev, self.func)
    }
}

/// An ID dword that means "no function here", as Linux's
/// `pci_bus_generic_read_dev_vendor_id` decides.
pub fn absent(id: u32) -> bool {
    matches!(id, 0xffff_ffff | 0 | 0x0000_ffff | 0xffff_0000)
}

/// Why the MCFG gives no usable ECAM window.
#[derive(Debug, Clone, Copy)]
pub enum EcamError {
    /// The ACPI tables could not be read, or there is no MCFG.
    Acpi(AcpiError),
    /// The MCFG is malformed.
    Mcfg(&'static str),
}

impl From<AcpiError> for EcamError {
    fn from(e: AcpiError) -> Self {
        Self::Acpi(e)
    }
}

impl fmt::Display for EcamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Acpi(e) => write!(f, "{e}"),
            Self::Mcfg(why) => write!(f, "MCFG: {why}"),
        }
    }
}

/// The ECAM window the MCFG describes for segment 0.
#[derive(Debug, Clone, Copy)]
pub struct Ecam {
    /// Address of bus 0 (the MCFG base, even when the first bus is not 0).
    pub base: u64,
    /// First bus.
    pub start_bus: u8,
    /// Last bus.
    pub end_bus: u8,
}

/// Offset of the first MCFG allocation entry (header, then 8 reserved bytes).
const MCFG_ENTRIES: usize = 44;
/// Size of an MCFG allocation entry.
const MCFG_ENTRY_LEN: usize = 16;

/// Why a function's BARs could not be placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarError {
    /// BAR n is an I/O BAR (root ports here have no I/O window).
    Io(u8),
    /// BAR n (of this size) does not fit its window.
    NoRoom(u8, u64),
}

impl core::fmt::Display for BarError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BarError::Io(i) => write!(f, "BAR {i} is an I/O BAR"),
            BarError::NoRoom(i, size) => {
                write!(
                    f,
                    "BAR {i} ({size:#x} bytes) does not fit the bridge's window"
                )
            }
        }
    }
}

impl Ecam {
    /// Reads the MCFG entry of segment 0.
    pub fn from_acpi() -> Result<Self, EcamError> {
        let rsdp = acpi::rsdp_at(acpi::scan_rsdp().ok_or(AcpiError::NoRsdp)?)?;
        let root = Root::from_rsdp(&rsdp)?;
        let mcfg = root.find(b"MCFG")?.ok_or(AcpiError::Missing {
            sig: acpi::Sig(*b"MCFG"),
        })?;
        let body = mcfg
            .bytes
            .get(MCFG_ENTRIES..)
            .filter(|b| !b.is_empty() && b.len() % MCFG_ENTRY_LEN == 0)
            .ok_or(EcamError::Mcfg("length is not 44 + 16 * n with n >= 1"))?;
        let entry = body
            .chunks_exact(MCFG_ENTRY_LEN)
            .find(|e| u16::from_le_bytes([e[8], e[9]]) == 0)
            .ok_or(EcamError::Mcfg("no entry for segment 0"))?;
        let ecam = Self {
            base: phys::le_u64(entry, 0),
            start_bus: entry[10],
            end_bus: entry[11],
        };
        if ecam.start_bus > ecam.end_bus {
            return Err(EcamError::Mcfg("start bus above end bus"));
        }
        if ecam.base == 0 || ecam.base & 0xf_ffff != 0 {
            return Err(EcamError::Mcfg("base is 0 or not 1 MiB aligned"));
        }
        let (start, size) = ecam.window();
        if !phys::is_mapped(start, size) {
            return Err(EcamError::Mcfg("window beyond the identity map"));
        }
        Ok(ecam)
    }

    /// The window's first byte (that of `start_bus`) and its size.
    pub fn window(&self) -> (u64, u64) {
        let start = self.base + (u64::from(self.start_bus) << 20);
        let size = (u64::from(self.end_bus) + 1 - u64::from(self.start_bus)) << 20;
        (start, size)
    }

    /// Whether the window decodes `bus`.
    pub fn has_bus(&self, bus: u8) -> bool {
        (self.start_bus..=self.end_bus).contains(&bus)
    }

    /// The address of `reg` of `f`, if the window decodes its bus.
    fn addr(&self, f: Bdf, reg: u16) -> Option<u64> {
        self.has_bus(f.bus).then(|| {
            self.base
                + (u64::from(f.bus) << 20)
                + (u64::from(f.dev & 31) << 15)
                + (u64::from(f.func & 7) << 12)
                + u64::from(reg & 0xfff)
        })
    }

    /// 8-bit config read (all ones outside the window, as a master abort).
    pub fn read8(&self, f: Bdf, reg: u16) -> u8 {
        self.addr(f, reg).map_or(0xff, mmio::read8)
    }

    /// 16-bit config read.
    pub fn read16(&self, f: Bdf, reg: u16) -> u16 {
        self.addr(f, reg).map_or(0xffff, mmio::read16)
    }

    /// 32-bit config read.
    pub fn read32(&self, f: Bdf, reg: u16) -> u32 {
        self.addr(f, reg).map_or(0xffff_ffff, mmio::read32)
    }

    /// Config read of `size` bytes (1, 2 or 4).
    pub fn read(&self, f: Bdf, reg: u16, size: u8) -> u32 {
        match size {
            1 => self.read8(f, reg).into(),
            2 => self.read16(f, reg).into(),
            _ => self.read32(f, reg),
        }
    }

    /// 8-bit config write (dropped outside the window).
    pub fn write8(&self, f: Bdf, reg: u16, v: u8) {
        if let Some(a) = self.addr(f, reg) {
            mmio::write8(a, v)
        }
    }

    /// 16-bit config write.
    pub fn write16(&self, f: Bdf, reg: u16, v: u16) {
        if let Some(a) = self.addr(f, reg) {
            mmio::write16(a, v)
        }
    }

    /// 32-bit config write.
    pub fn write32(&self, f: Bdf, reg: u16, v: u32) {
        if let Some(a) = self.addr(f, reg) {
            mmio::write32(a, v)
        }
    }

    /// BAR `i` (0-5) of `f`, decoded. A 64-bit memory BAR takes the next one as its upper
    /// half (but BAR 5 has none).
    pub fn bar(&self, f: Bdf, i: u8) -> Bar {
        let reg = regs::BAR0 + 4 * u16::from(i);
        let lo = self.read32(f, reg);
        if lo & regs::BAR_SPACE_IO != 0 {
            return Bar {
                addr: u64::from(lo & regs::BAR_IO_MASK),
                io: true,
                is64: false,
            };
        }
        let is64 = lo & regs::BAR_MEM_TYPE_MASK == regs::BAR_MEM_TYPE_64;
        let mut addr = u64::from(lo & regs::BAR_MEM_MASK);
        if is64 && i < 5 {
            addr |= u64::from(self.read32(f, reg + 4)) << 32;
        }
        Bar {
            addr,
            io: false,
            is64,
        }
    }

    /// A bridge's windows: memory, prefetchable (inclusive ends; base > limit when closed).
    pub fn bridge_windows(&self, f: Bdf) -> ((u64, u64), (u64, u64)) {
        // Base and limit registers hold bits 31:20 (the limit's lower bits are all ones).
        let range = |reg: u16| {
            let v = self.read32(f, reg);
            let bits = |half: u32| u64::from(half as u16 & regs::MEMORY_RANGE_MASK) << 16;
            (bits(v), bits(v >> 16) | 0xf_ffff)
        };
        let upper = |reg: u16| u64::from(self.read32(f, reg)) << 32;
        let (mem_base, mem_limit) = range(regs::MEMORY_BASE);
        let (pref_base, pref_limit) = range(regs::PREF_BASE);
        let pref_base = pref_base | upper(regs::PREF_BASE_UPPER);
        let pref_limit = pref_limit | upper(regs::PREF_LIMIT_UPPER);
        ((mem_base, mem_limit), (pref_base, pref_limit))
    }

    /// Sizes and places the memory BARs of endpoint `f` behind `bridge`, as Linux's
    /// resource assignment does for a hot-added function (nothing else assigns them):
    /// 64-bit prefetchable BARs in the bridge's prefetchable window, the others in its
    /// memory window, each naturally aligned, decoding off meanwhile. Returns the number
    /// of BARs placed.
    pub fn assign_bars(&self, bridge: Bdf, f: Bdf) -> Result<u8, BarError> {
        let (mem, pref) = self.bridge_windows(bridge);
        let mut next = [mem.0, pref.0];
        let cmd = self.read16(f, regs::COMMAND);
        self.write16(f, regs::COMMAND, cmd & !regs::COMMAND_MEMORY);
        let mut placed = 0;
        let mut i = 0u8;
        while i < 6 {
            let reg = regs::BAR0 + 4 * u16::from(i);
            let old = self.read32(f, reg);
            if old & regs::BAR_SPACE_IO != 0 {
                return Err(BarError::Io(i));
            }
            let is64 = old & regs::BAR_MEM_TYPE_MASK == regs::BAR_MEM_TYPE_64;
            self.write32(f, reg, u32::MAX);
            let mut mask = u64::from(self.read32(f, reg) & regs::BAR_MEM_MASK);
            if is64 {
                self.write32(f, reg + 4, u32::MAX);
                mask |= u64::from(self.read32(f, reg + 4)) << 32;
            } else {
                mask |= 0xffff_ffff_0000_0000;
            }
            let step = if is64 { 2 } else { 1 };
            if mask == 0xffff_ffff_0000_0000 || mask == 0 {
                // Not implemented.
                self.write32(f, reg, old);
                i += step;
                continue;
            }
            let size = (!mask).wrapping_add(1);
            let prefetchable = old & (1 << 3) != 0;
            let w = usize::from(is64 && prefetchable);
            let window = if w == 1 { pref } else { mem };
            let base = next[w].next_multiple_of(size);
            if base.checked_add(size - 1).is_none_or(|end| end > window.1) {
                return Err(BarError::NoRoom(i, size));
            }
            self.write32(f, reg, base as u32);
            if is64 {
                self.write32(f, reg + 4, (base >> 32) as u32);
            }
            next[w] = base + size;
            placed += 1;
            i += step;
        }
        self.write16(f, regs::COMMAND, cmd | regs::COMMAND_MEMORY);
        Ok(placed)
    }

    /// Standard capabilities (id, offset), following the list with a loop guard (48
    /// entries, as Linux's `PCI_FIND_CAP_TTL`).
    pub fn capabilities(&self, f: Bdf) -> CapList<u8> {
        let mut list = CapList::default();
        if self.read16(f, regs::STATUS) & regs::STATUS_CAP_LIST == 0 {
            return list;
        }
        let past_header = |off: u8| u16::from(off) >= regs::STD_HEADER_SIZE;
        let mut off = self.read8(f, regs::CAP_PTR) & 0xfc;
        while past_header(off) && list.len < list.caps.len() {
            let id = self.read8(f, u16::from(off));
            if id == 0xff {
                // Linux stops at an ID of 0xff (a device that went away).
                break;
            }
            list.caps[list.len] = (id, u16::from(off));
            list.len += 1;
            off = self.read8(f, u16::from(off) + regs::CAP_LIST_NEXT) & 0xfc;
        }
        list.looped = past_header(off) && list.len == list.caps.len();
        list
    }

    /// Extended capabilities (id, offset) from 0x100, with a loop guard.
    pub fn ext_capabilities(&self, f: Bdf) -> CapList<u16> {
        let mut list = CapList::default();
        let extended = regs::CFG_SPACE_SIZE..regs::CFG_SPACE_EXP_SIZE;
        let mut off = regs::CFG_SPACE_SIZE;
        while extended.contains(&off) && list.len < list.caps.len() {
            let h = self.read32(f, off);
            if h == 0 || h == 0xffff_ffff {
                break;
            }
            list.caps[list.len] = ((h & 0xffff) as u16, off);
            list.len += 1;
            off = ((h >> 20) & 0xffc) as u16;
        }
        list.looped = off >= regs::CFG_SPACE_SIZE && list.len == list.caps.len();
        list
    }

    /// Every function reachable from the first bus: each device's function 0, functions
    /// 1-7 when function 0 has the multi-function bit, and behind each bridge its
    /// secondary bus, depth first (a bridge, then what is below it). Bridges must have
    /// been given sane bus numbers (as firmware does); the walk does not renumber.
    pub fn walk(&self) -> Result<Topology, WalkError> {
        let mut topo = Topology::new();
        let mut stack = [Frame::default(); MAX_DEPTH];
        stack[0] = Frame {
            bus: self.start_bus,
            devfn: 0,
            depth: 0,
            parent: None,
            limit: self.end_bus,
        };
        let mut sp = 1;
        topo.mark(self.start_bus);
        while sp > 0 {
            let frame = stack[sp - 1];
            if frame.devfn > 0xff {
                sp -= 1;
                continue;
            }
            let (dev, func) = ((frame.devfn >> 3) as u8, (frame.devfn & 7) as u8);
            let f = Bdf::new(frame.bus, dev, func);
            let next_dev = (frame.devfn | 7) + 1;
            let id = self.read32(f, regs::VENDOR_ID);
            if absent(id) {
                // Without function 0 there is no device (Linux does not look further).
                stack[sp - 1].devfn = if func == 0 { next_dev } else { frame.devfn + 1 };
                continue;
            }
            let header = self.read8(f, regs::HEADER_TYPE);
            let single = func == 0 && header & regs::HEADER_TYPE_MFD == 0;
            stack[sp - 1].devfn = if single { next_dev } else { frame.devfn + 1 };
            let bridge = header & regs::HEADER_TYPE_MASK == regs::HEADER_TYPE_BRIDGE;
            let buses = bridge.then(|| Buses::from(self.read32(f, regs::BUSES)));
            topo.push(Function {
                bdf: f,
                vendor: id as u16,
                device: (id >> 16) as u16,
                class: self.read32(f, regs::CLASS_REV) >> 8,
                header,
                depth: frame.depth,
                parent: frame.parent,
                buses,
            })?;
            let Some(b) = buses else { continue };
            let bad = |why| WalkError::BadBridge {
                bridge: f,
                buses: b,
                why,
            };
            if b.primary != frame.bus {
                return Err(bad("primary bus is not the bus it sits on"));
            }
            if b.secondary <= frame.bus || b.secondary > b.subordinate {
                return Err(bad("secondary bus not in (bus, subordinate]"));
            }
            if b.subordinate > frame.limit || !self.has_bus(b.subordinate) {
                return Err(bad(
                    "subordinate bus beyond its parent's range or the MCFG's",
                ));
            }
            if topo.scanned(b.secondary) {
                return Err(bad("secondary bus already reached another way"));
            }
            if sp == MAX_DEPTH {
                return Err(bad("hierarchy deeper than the walker goes"));
            }
            topo.mark(b.secondary);
            stack[sp] = Frame {
                bus: b.secondary,
                devfn: 0,
                depth: frame.depth + 1,
                parent: Some(f),
                limit: b.subordinate,
            };
            sp += 1;
        }
        Ok(topo)
    }
}

/// A decoded BAR.
#[derive(Debug, Clone, Copy)]
pub struct Bar {
    /// Its address (0: not assigned), in I/O or memory space.
    pub addr: u64,
    /// An I/O BAR.
    pub io: bool,
    /// A 64-bit memory BAR (it takes two BAR registers).
    pub is64: bool,
}

/// Deepest bridge nesting [`Ecam::walk`] follows.
const MAX_DEPTH: usize = 16;
/// Most functions [`Topology`] holds.
pub const MAX_FUNCTIONS: usize = 512;

/// A bus being scanned.
#[derive(Debug, Clone, Copy, Default)]
struct Frame {
    bus: u8,
    /// Next devfn to look at (256: done).
    devfn: u16,
    depth: u8,
    parent: Option<Bdf>,
    /// Highest bus number the parent bridge forwards.
    limit: u8,
}

/// A bridge's bus numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buses {
    /// The bus it sits on.
    pub primary: u8,
    /// The bus right below it.
    pub secondary: u8,
    /// The highest bus below it.
    pub subordinate: u8,
}

impl From<u32> for Buses {
    /// From the dword at 0x18 of a type 1 header.
    fn from(v: u32) -> Self {
        Self {
            primary: v as u8,
            secondary: (v >> 8) as u8,
            subordinate: (v >> 16) as u8,
        }
    }
}

impl fmt::Display for Buses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02x}->{:02x}..{:02x}",
            self.primary, self.secondary, self.subordinate
        )
    }
}

/// A function found by [`Ecam::walk`].
#[derive(Debug, Clone, Copy)]
pub struct Function {
    /// Its address.
    pub bdf: Bdf,
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Class code (base class, subclass, programming interface).
    pub class: u32,
    /// Header type byte, multi-function bit included.
    pub header: u8,
    /// Bridges above it (0 on the first bus).
    pub depth: u8,
    /// The bridge whose secondary bus it is on.
    pub parent: Option<Bdf>,
    /// Bus numbers, for bridges (type 1 headers).
    pub buses: Option<Buses>,
}

impl Function {
    const EMPTY: Self = Self {
        bdf: Bdf::new(0, 0, 0),
        vendor: 0,
        device: 0,
        class: 0,
        header: 0,
        depth: 0,
        parent: None,
        buses: None,
    };

    /// Header layout: 0 endpoint, 1 PCI-to-PCI bridge, 2 CardBus bridge.
    pub fn header_type(&self) -> u8 {
        self.header & regs::HEADER_TYPE_MASK
    }
}

/// What [`Ecam::walk`] found, depth first.
#[derive(Clone)]
pub struct Topology {
    funcs: [Function; MAX_FUNCTIONS],
    len: usize,
    /// Buses scanned, one bit each.
    buses: [u64; 4],
}

impl fmt::Debug for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

impl Topology {
    fn new() -> Self {
        Self {
            funcs: [Function::EMPTY; MAX_FUNCTIONS],
            len: 0,
            buses: [0; 4],
        }
    }

    fn push(&mut self, f: Function) -> Result<(), WalkError> {
        let slot = self.funcs.get_mut(self.len).ok_or(WalkError::TooMany)?;
        *slot = f;
        self.len += 1;
        Ok(())
    }

    fn mark(&mut self, bus: u8) {
        self.buses[usize::from(bus >> 6)] |= 1 << (bus & 63);
    }

    /// Whether the walk scanned `bus` (a bridge forwards to it).
    pub fn scanned(&self, bus: u8) -> bool {
        self.buses[usize::from(bus >> 6)] & (1 << (bus & 63)) != 0
    }

    /// How many buses the walk scanned.
    pub fn bus_count(&self) -> u32 {
        self.buses.iter().map(|w| w.count_ones()).sum()
    }

    /// The functions, depth first.
    pub fn as_slice(&self) -> &[Function] {
        &self.funcs[..self.len]
    }

    /// The function at `bdf`.
    pub fn get(&self, bdf: Bdf) -> Option<&Function> {
        self.as_slice().iter().find(|f| f.bdf == bdf)
    }

    /// The functions with vendor ID `vendor` and device ID `device`, depth first.
    pub fn with_id(&self, vendor: u16, device: u16) -> impl Iterator<Item = &Function> + '_ {
        self.as_slice()
            .iter()
            .filter(move |f| f.vendor == vendor && f.device == device)
    }

    /// The functions right below bridge `bridge`.
    pub fn children(&self, bridge: Bdf) -> impl Iterator<Item = &Function> + '_ {
        self.as_slice()
            .iter()
            .filter(move |f| f.parent == Some(bridge))
    }
}

/// Why [`Ecam::walk`] stopped.
#[derive(Debug, Clone, Copy)]
pub enum WalkError {
    /// A bridge's bus numbers cannot be followed.
    BadBridge {
        /// The bridge.
        bridge: Bdf,
        /// Its bus numbers.
        buses: Buses,
        /// What is wrong.
        why: &'static str,
    },
    /// More than [`MAX_FUNCTIONS`] functions.
    TooMany,
}

impl fmt::Display for WalkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadBridge { bridge, buses, why } => {
                write!(f, "bridge {bridge} (buses {buses}): {why}")
            }
            Self::TooMany => write!(f, "more than {MAX_FUNCTIONS} functions"),
        }
    }
}

/// Capability IDs (`u8` standard, `u16` extended) and offsets found by a walk.
#[derive(Debug, Clone, Copy)]
pub struct CapList<Id> {
    caps: [(Id, u16); 48],
    len: usize,
    /// The walk hit its guard: the list loops or is absurdly long.
    pub looped: bool,
}

impl<Id: Copy + Default> Default for CapList<Id> {
    fn default() -> Self {
        Self {
            caps: [(Id::default(), 0); 48],
            len: 0,
            looped: false,
        }
    }
}

impl<Id: Copy + PartialEq> CapList<Id> {
    /// The entries: (ID, offset).
    pub fn as_slice(&self) -> &[(Id, u16)] {
        &self.caps[..self.len]
    }

    /// The offset of the first capability with ID `id`.
    pub fn find(&self, id: Id) -> Option<u16> {
        self.as_slice()
            .iter()
            .find(|(c, _)| *c == id)
            .map(|(_, o)| *o)
    }
}

/// Configuration mechanism #1: the address at 0xCF8 (enable bit 31, bus 23:16, device
/// 15:11, function 10:8, register 7:2), the data at 0xCFC-0xCFF. Registers below 0x100
/// only. Two port accesses per config access, not atomic: for the BSP alone (Linux takes
/// `pci_config_lock` around the pair).
pub mod legacy {
    use super::Bdf;
    use crate::port;

    /// The address port.
    pub const ADDRESS_PORT: u16 = 0xcf8;
    /// The first data port.
    pub const DATA_PORT: u16 = 0xcfc;
    /// Enable bit of the address.
    pub const ENABLE: u32 = 1 << 31;

    /// The address register as it reads back.
    pub fn read_address() -> u32 {
        port::inl(ADDRESS_PORT)
    }

    /// The 0xCF8 value for `reg` of `f` (enable bit set, bits 1:0 clear).
    pub fn address(f: Bdf, reg: u8) -> u32 {
        ENABLE
            | (u32::from(f.bus) << 16)
            | (u32::from(f.dev & 31) << 11)
            | (u32::from(f.func & 7) << 8)
            | u32::from(reg & 0xfc)
    }

    fn select(f: Bdf, reg: u8) {
        port::outl(ADDRESS_PORT, address(f, reg));
    }

    /// The data port for a byte at `reg`.
    fn data(reg: u8) -> u16 {
        DATA_PORT + u16::from(reg & 3)
    }

    /// 8-bit config read.
    pub fn read8(f: Bdf, reg: u8) -> u8 {
        select(f, reg);
        port::inb(data(reg))
    }

    /// 16-bit config read (`reg` even).
    pub fn read16(f: Bdf, reg: u8) -> u16 {
        debug_assert!(reg & 1 == 0);
        select(f, reg);
        port::inw(data(reg & !1))
    }

    /// 32-bit config read (`reg` a multiple of 4).
    pub fn read32(f: Bdf, reg: u8) -> u32 {
        select(f, reg);
        port::inl(DATA_PORT)
    }

    /// Config read of `size` bytes (1, 2 or 4).
    pub fn read(f: Bdf, reg: u8, size: u8) -> u32 {
        match size {
            1 => read8(f, reg).into(),
            2 => read16(f, reg).into(),
            _ => read32(f, reg),
        }
    }

    /// 8-bit config write.
    pub fn write8(f: Bdf, reg: u8, v: u8) {
        select(f, reg);
        port::outb(data(reg), v);
    }

    /// 16-bit config write (`reg` even).
    pub fn write16(f: Bdf, reg: u8, v: u16) {
        debug_assert!(reg & 1 == 0);
        select(f, reg);
        port::outw(data(reg & !1), v);
    }

    /// 32-bit config write (`reg` a multiple of 4).
    pub fn write32(f: Bdf, reg: u8, v: u32) {
        select(f, reg);
        port::outl(DATA_PORT, v);
    }
}
