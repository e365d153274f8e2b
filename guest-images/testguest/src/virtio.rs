//! A ring-3 virtio 1.x driver over the modern PCI transport: finds the device behind the
//! root ports, negotiates features, sets split queues up in a scratch area of guest RAM,
//! programs MSI-X, and moves buffers. Enough for the virtio-net and MSI-X scenarios.

use core::sync::atomic::{Ordering, compiler_fence};

use crate::mmio;
use crate::pcie::{Bdf, Ecam};
use crate::phys;

/// Device status bits.
const ACKNOWLEDGE: u8 = 1;
const DRIVER: u8 = 2;
const DRIVER_OK: u8 = 4;
const FEATURES_OK: u8 = 8;
/// Descriptor flags.
const DESC_F_WRITE: u16 = 2;
/// Feature bit: VERSION_1.
pub const F_VERSION_1: u64 = 1 << 32;

/// Why the driver gave up.
#[derive(Debug, Clone, Copy)]
pub enum VirtioError {
    /// No such device behind any root port.
    NotFound(u16),
    /// A capability the transport must have.
    MissingCap(&'static str),
    /// The device refused the features.
    Features(u64),
    /// A queue the device does not have or cannot size.
    Queue(u16),
    /// The scratch area is not RAM.
    Scratch(u64),
}

impl core::fmt::Display for VirtioError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            VirtioError::NotFound(id) => write!(f, "no virtio device {id:#06x} behind a root port"),
            VirtioError::MissingCap(c) => write!(f, "virtio {c} capability missing"),
            VirtioError::Features(x) => write!(f, "device refused features {x:#x}"),
            VirtioError::Queue(q) => write!(f, "queue {q} unusable"),
            VirtioError::Scratch(a) => write!(f, "scratch area {a:#x} is not RAM"),
        }
    }
}

/// A split virtqueue the driver owns.
#[derive(Debug)]
pub struct Vq {
    /// Index.
    pub index: u16,
    /// Entries.
    pub size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    notify: u64,
    avail_idx: u16,
    used_seen: u16,
    /// Added to guest-physical addresses handed to the device (IOVA = GPA + offset when
    /// the device sits behind an IOMMU with such a mapping).
    dma_offset: u64,
}

impl Vq {
    /// Writes descriptor `i` for the buffer at guest-physical `addr`.
    pub fn set_desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = self.desc + 16 * u64::from(i);
        phys::write_u64(d, addr.wrapping_add(self.dma_offset));
        phys::write_u64(
            d + 8,
            u64::from(len) | (u64::from(flags) << 32) | (u64::from(next) << 48),
        );
    }

    /// Offers descriptor chain `head` to the device (without notifying it).
    pub fn push(&mut self, head: u16) {
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % self.size);
        write16(slot, head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        // The ring entry is visible before the index moves (x86 keeps stores in order).
        compiler_fence(Ordering::SeqCst);
        write16(self.avail + 2, self.avail_idx);
    }

    /// Tells the device about new buffers.
    pub fn notify(&self) {
        compiler_fence(Ordering::SeqCst);
        mmio::write16(self.notify, self.index);
    }

    /// The next used element (descriptor id, length), if any.
    pub fn pop_used(&mut self) -> Option<(u32, u32)> {
        compiler_fence(Ordering::SeqCst);
        let idx = read16(self.used + 2);
        if idx == self.used_seen {
            return None;
        }
        let e = self.used + 4 + 8 * u64::from(self.used_seen % self.size);
        let v = phys::read_u64(e);
        self.used_seen = self.used_seen.wrapping_add(1);
        Some((v as u32, (v >> 32) as u32))
    }

    /// Chains offered and not yet used.
    pub fn in_flight(&self) -> u16 {
        self.avail_idx.wrapping_sub(self.used_seen)
    }
}

fn write16(addr: u64, v: u16) {
    // Two bytes within one quadword: read-modify-write of the enclosing quadword would race
    // the device, so store exactly 16 bits.
    mmio::write16(addr, v);
}

fn read16(addr: u64) -> u16 {
    mmio::read16(addr)
}

/// A virtio PCI function.
#[derive(Debug)]
pub struct VirtioPci {
    /// Where it is.
    pub bdf: Bdf,
    common: u64,
    device_cfg: u64,
    notify_base: u64,
    notify_mul: u32,
    msix_table: u64,
    msix_cap: u16,
    ecam: Ecam,
    /// Added to every address the device is given (see [`Vq`]).
    pub dma_offset: u64,
}

/// A bump allocator over a scratch area of RAM for rings and buffers.
#[derive(Debug)]
pub struct Scratch {
    next: u64,
    end: u64,
}

impl Scratch {
    /// `len` bytes at `base`, checked against the E820 map.
    pub fn new(
        boot: &crate::bootparams::BootParams,
        base: u64,
        len: u64,
    ) -> Result<Self, VirtioError> {
        match boot.e820_entry_containing(base, len) {
            Some(e) if e.kind == crate::bootparams::E820_RAM => Ok(Self {
                next: base,
                end: base + len,
            }),
            _ => Err(VirtioError::Scratch(base)),
        }
    }

    /// `len` zeroed bytes aligned to `align`.
    pub fn alloc(&mut self, len: u64, align: u64) -> Result<u64, VirtioError> {
        let a = self.next.next_multiple_of(align);
        if a + len > self.end {
            return Err(VirtioError::Scratch(a));
        }
        for q in (a..a + len.next_multiple_of(8)).step_by(8) {
            phys::write_u64(q, 0);
        }
        self.next = a + len;
        Ok(a)
    }
}

impl VirtioPci {
    /// Finds virtio device `device_id` (e.g. 0x1041) on the secondary bus of a root port.
    pub fn find(ecam: &Ecam, device_id: u16) -> Result<Self, VirtioError> {
        for dev in 1..32u8 {
            let port = Bdf {
                bus: 0,
                dev,
                func: 0,
            };
            if ecam.read16(port, 0) == 0xffff {
                continue;
            }
            let bus = ecam.read8(port, 0x19);
            let f = Bdf {
                bus,
                dev: 0,
                func: 0,
            };
            if bus != 0 && ecam.read32(f, 0) == (u32::from(device_id) << 16) | 0x1af4 {
                return Self::open(ecam, f);
            }
        }
        Err(VirtioError::NotFound(device_id))
    }

    /// Opens virtio device `device_id` at function 0 of `bus`.
    pub fn find_on_bus(ecam: &Ecam, bus: u8, device_id: u16) -> Result<Self, VirtioError> {
        let f = Bdf {
            bus,
            dev: 0,
            func: 0,
        };
        if ecam.read32(f, 0) == (u32::from(device_id) << 16) | 0x1af4 {
            return Self::open(ecam, f);
        }
        Err(VirtioError::NotFound(device_id))
    }

    /// Finds virtio device `device_id` among the integrated endpoints on bus 0.
    pub fn find_on_root_bus(ecam: &Ecam, device_id: u16) -> Result<Self, VirtioError> {
        for dev in 1..32u8 {
            let f = Bdf {
                bus: 0,
                dev,
                func: 0,
            };
            if ecam.read32(f, 0) == (u32::from(device_id) << 16) | 0x1af4 {
                return Self::open(ecam, f);
            }
        }
        Err(VirtioError::NotFound(device_id))
    }

    /// Reads 64 bits of device-specific configuration.
    pub fn config64(&self, off: u64) -> u64 {
        u64::from(mmio::read32(self.device_cfg + off))
            | (u64::from(mmio::read32(self.device_cfg + off + 4)) << 32)
    }

    fn open(ecam: &Ecam, f: Bdf) -> Result<Self, VirtioError> {
        let bar = |i: u8| -> u64 {
            let off = 0x10 + 4 * u16::from(i);
            let lo = ecam.read32(f, off);
            let base = u64::from(lo & !0xf);
            if lo & 0x6 == 0x4 {
                base | (u64::from(ecam.read32(f, off + 4)) << 32)
            } else {
                base
            }
        };
        let caps = ecam.capabilities(f);
        let (mut common, mut device_cfg, mut notify, mut mul) = (None, None, None, 0);
        for &(id, off) in caps.as_slice() {
            if id != 0x09 {
                continue;
            }
            let kind = ecam.read8(f, off + 3);
            let addr = bar(ecam.read8(f, off + 4)) + u64::from(ecam.read32(f, off + 8));
            match kind {
                1 => common = Some(addr),
                2 => {
                    notify = Some(addr);
                    mul = ecam.read32(f, off + 16);
                }
                4 => device_cfg = Some(addr),
                _ => {}
            }
        }
        let msix_cap = caps.find(0x11).ok_or(VirtioError::MissingCap("MSI-X"))?;
        let table = ecam.read32(f, msix_cap + 4);
        // Bus master on, memory decoding on.
        let cmd = ecam.read16(f, 4);
        ecam.write16(f, 4, cmd | 0x6);
        Ok(Self {
            bdf: f,
            common: common.ok_or(VirtioError::MissingCap("common"))?,
            device_cfg: device_cfg.ok_or(VirtioError::MissingCap("device"))?,
            notify_base: notify.ok_or(VirtioError::MissingCap("notify"))?,
            notify_mul: mul,
            msix_table: bar((table & 7) as u8) + u64::from(table & !7),
            msix_cap,
            ecam: *ecam,
            dma_offset: 0,
        })
    }

    /// Resets the device and negotiates `wanted` (plus VERSION_1); returns the features
    /// the device offered.
    pub fn init(&self, wanted: u64) -> Result<u64, VirtioError> {
        let c = self.common;
        mmio::write8(c + 0x14, 0);
        mmio::write8(c + 0x14, ACKNOWLEDGE | DRIVER);
        let mut offered = 0u64;
        for sel in 0..2u32 {
            mmio::write32(c, sel);
            offered |= u64::from(mmio::read32(c + 4)) << (32 * sel);
        }
        let accept = offered & (wanted | F_VERSION_1);
        if accept & F_VERSION_1 == 0 {
            return Err(VirtioError::Features(offered));
        }
        for sel in 0..2u32 {
            mmio::write32(c + 0x08, sel);
            mmio::write32(c + 0x0c, (accept >> (32 * sel)) as u32);
        }
        mmio::write8(c + 0x14, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        if mmio::read8(c + 0x14) & FEATURES_OK == 0 {
            return Err(VirtioError::Features(accept));
        }
        Ok(offered)
    }

    /// Sets queue `index` up with `size` entries in `scratch`, bound to MSI-X `vector`.
    pub fn setup_queue(
        &self,
        scratch: &mut Scratch,
        index: u16,
        size: u16,
        vector: u16,
    ) -> Result<Vq, VirtioError> {
        let c = self.common;
        mmio::write16(c + 0x16, index);
        let max = mmio::read16(c + 0x18);
        if max == 0 || size > max || !size.is_power_of_two() {
            return Err(VirtioError::Queue(index));
        }
        let n = u64::from(size);
        let desc = scratch.alloc(16 * n, 16)?;
        let avail = scratch.alloc(6 + 2 * n, 2)?;
        let used = scratch.alloc(6 + 8 * n, 4)?;
        mmio::write16(c + 0x18, size);
        for (off, gpa) in [(0x20u64, desc), (0x28, avail), (0x30, used)] {
            let addr = gpa.wrapping_add(self.dma_offset);
            mmio::write32(c + off, addr as u32);
            mmio::write32(c + off + 4, (addr >> 32) as u32);
        }
        mmio::write16(c + 0x1a, vector);
        if mmio::read16(c + 0x1a) != vector {
            return Err(VirtioError::Queue(index));
        }
        let notify_off = mmio::read16(c + 0x1e);
        mmio::write16(c + 0x1c, 1);
        Ok(Vq {
            index,
            size,
            desc,
            avail,
            used,
            notify: self.notify_base + u64::from(notify_off) * u64::from(self.notify_mul),
            avail_idx: 0,
            used_seen: 0,
            dma_offset: self.dma_offset,
        })
    }

    /// DRIVER_OK: the device may use the queues.
    pub fn driver_ok(&self) {
        mmio::write8(
            self.common + 0x14,
            ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
        );
    }

    /// The device status register.
    pub fn status(&self) -> u8 {
        mmio::read8(self.common + 0x14)
    }

    /// Reads a byte of device-specific configuration.
    pub fn config8(&self, off: u64) -> u8 {
        mmio::read8(self.device_cfg + off)
    }

    /// Programs MSI-X table entry `vector` to deliver `idt_vector` to the LAPIC `apic_id`,
    /// masked or not.
    pub fn msix_vector(&self, vector: u16, apic_id: u32, idt_vector: u8, masked: bool) {
        let e = self.msix_table + 16 * u64::from(vector);
        mmio::write32(e, 0xfee0_0000 | (apic_id << 12));
        mmio::write32(e + 4, 0);
        mmio::write32(e + 8, u32::from(idt_vector));
        mmio::write32(e + 12, u32::from(masked));
    }

    /// Masks or unmasks MSI-X vector `vector`.
    pub fn msix_mask(&self, vector: u16, masked: bool) {
        mmio::write32(
            self.msix_table + 16 * u64::from(vector) + 12,
            u32::from(masked),
        );
    }

    /// Enables MSI-X (function mask clear).
    pub fn msix_enable(&self) {
        let flags = self.ecam.read16(self.bdf, self.msix_cap + 2);
        self.ecam
            .write16(self.bdf, self.msix_cap + 2, (flags | 0x8000) & !0x4000);
    }

    /// The PBA's first quadword (pending bits of vectors 0..64).
    pub fn msix_pending(&self) -> u64 {
        let pba = self.ecam.read32(self.bdf, self.msix_cap + 8);
        let bar0 = u64::from(self.ecam.read32(self.bdf, 0x10) & !0xf);
        let addr = bar0 + u64::from(pba & !7);
        u64::from(mmio::read32(addr)) | (u64::from(mmio::read32(addr + 4)) << 32)
    }
}

/// Descriptor flags for scenario code.
pub mod flags {
    /// The device writes this buffer.
    pub const WRITE: u16 = super::DESC_F_WRITE;
}
