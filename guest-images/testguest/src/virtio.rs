//! A ring-3 virtio 1.x transport over the modern PCI interface: finds a device in the PCI
//! topology, negotiates features, sets split queues up in a scratch area of guest RAM,
//! programs MSI-X, and moves buffers. The device drivers (`virtio_net`, `virtio_iommu`)
//! sit on it.

use core::sync::atomic::{Ordering, compiler_fence};

use crate::lapic;
use crate::mmio;
use crate::pcie::{Bdf, Ecam, Topology, regs};
use crate::phys;

/// PCI vendor ID of every virtio function.
pub const VENDOR_ID: u16 = 0x1af4;
/// Device status bits.
const ACKNOWLEDGE: u8 = 1;
const DRIVER: u8 = 2;
const DRIVER_OK: u8 = 4;
const FEATURES_OK: u8 = 8;
const DEVICE_NEEDS_RESET: u8 = 0x40;
/// Feature bit: VERSION_1.
pub const F_VERSION_1: u64 = 1 << 32;
/// Feature bit: ACCESS_PLATFORM (the device's DMA goes through the platform's IOMMU).
pub const F_ACCESS_PLATFORM: u64 = 1 << 33;
/// A queue's MSI-X vector: none (the driver polls).
pub const NO_VECTOR: u16 = 0xffff;

/// The virtio PCI capability (a vendor-specific one): fields, from the capability.
mod cap {
    /// Which structure it locates (8 bits): one of the `*_CFG` values.
    pub const CFG_TYPE: u16 = 3;
    /// The BAR holding it (8 bits).
    pub const BAR: u16 = 4;
    /// Its offset in the BAR (32 bits).
    pub const OFFSET: u16 = 8;
    /// Notification structure: the queue notify offset multiplier (32 bits).
    pub const NOTIFY_OFF_MULTIPLIER: u16 = 16;
    /// Common configuration.
    pub const COMMON_CFG: u8 = 1;
    /// Notifications.
    pub const NOTIFY_CFG: u8 = 2;
    /// Device-specific configuration.
    pub const DEVICE_CFG: u8 = 4;
}

/// Why the driver gave up.
#[derive(Debug, Clone, Copy)]
pub enum VirtioError {
    /// No such device in the PCI topology: device ID, and which one was wanted.
    NotFound(u16, usize),
    /// A capability the transport must have.
    MissingCap(&'static str),
    /// The device refused the features.
    Features(u64),
    /// The device does not offer features the driver needs.
    NotOffered(u64),
    /// The device status after DRIVER_OK: not running, or it needs a reset.
    Status(u8),
    /// A queue the device does not have or cannot size.
    Queue(u16),
    /// The scratch area is not RAM.
    Scratch(u64),
}

impl core::fmt::Display for VirtioError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            VirtioError::NotFound(id, 0) => write!(f, "no virtio device {id:#06x}"),
            VirtioError::NotFound(id, n) => write!(f, "no virtio device {id:#06x} number {n}"),
            VirtioError::MissingCap(c) => write!(f, "virtio {c} capability missing"),
            VirtioError::Features(x) => write!(f, "device refused features {x:#x}"),
            VirtioError::NotOffered(x) => write!(f, "the device does not offer {x:#x}"),
            VirtioError::Status(s) => write!(f, "device status {s:#x} after DRIVER_OK"),
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
    msix_pba: u64,
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

/// The `nth` (from 0) virtio function with device ID `device_id` (e.g. 0x1041) in the
/// topology, depth first: on bus 0 and behind root ports alike.
pub fn find(topo: &Topology, device_id: u16, nth: usize) -> Result<Bdf, VirtioError> {
    topo.with_id(VENDOR_ID, device_id)
        .nth(nth)
        .map(|f| f.bdf)
        .ok_or(VirtioError::NotFound(device_id, nth))
}

impl VirtioPci {
    /// Reads 64 bits of device-specific configuration.
    pub fn config64(&self, off: u64) -> u64 {
        u64::from(mmio::read32(self.device_cfg + off))
            | (u64::from(mmio::read32(self.device_cfg + off + 4)) << 32)
    }

    /// Locates the transport structures of the virtio function at `f` and turns on its
    /// memory decoding and bus mastering.
    pub fn open(ecam: &Ecam, f: Bdf) -> Result<Self, VirtioError> {
        let caps = ecam.capabilities(f);
        let (mut common, mut device_cfg, mut notify, mut mul) = (None, None, None, 0);
        for &(id, off) in caps.as_slice() {
            if id != regs::CAP_VNDR {
                continue;
            }
            let bar = ecam.bar(f, ecam.read8(f, off + cap::BAR)).addr;
            let addr = bar + u64::from(ecam.read32(f, off + cap::OFFSET));
            match ecam.read8(f, off + cap::CFG_TYPE) {
                cap::COMMON_CFG => common = Some(addr),
                cap::NOTIFY_CFG => {
                    notify = Some(addr);
                    mul = ecam.read32(f, off + cap::NOTIFY_OFF_MULTIPLIER);
                }
                cap::DEVICE_CFG => device_cfg = Some(addr),
                _ => {}
            }
        }
        let msix_cap = caps
            .find(regs::CAP_MSIX)
            .ok_or(VirtioError::MissingCap("MSI-X"))?;
        // The table and the PBA: a BAR indicator and an offset into that BAR each.
        let locate = |reg: u16| {
            let v = ecam.read32(f, msix_cap + reg);
            ecam.bar(f, (v & regs::MSIX_BIR) as u8).addr + u64::from(v & !regs::MSIX_BIR)
        };
        let (msix_table, msix_pba) = (locate(regs::MSIX_TABLE), locate(regs::MSIX_PBA));
        let cmd = ecam.read16(f, regs::COMMAND);
        ecam.write16(
            f,
            regs::COMMAND,
            cmd | regs::COMMAND_MEMORY | regs::COMMAND_MASTER,
        );
        Ok(Self {
            bdf: f,
            common: common.ok_or(VirtioError::MissingCap("common"))?,
            device_cfg: device_cfg.ok_or(VirtioError::MissingCap("device"))?,
            notify_base: notify.ok_or(VirtioError::MissingCap("notify"))?,
            notify_mul: mul,
            msix_table,
            msix_pba,
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

    /// DRIVER_OK: the device may use the queues. Fails unless the device then says it
    /// runs (DRIVER_OK set, DEVICE_NEEDS_RESET clear).
    pub fn driver_ok(&self) -> Result<(), VirtioError> {
        mmio::write8(
            self.common + 0x14,
            ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
        );
        let status = self.status();
        if status & (DRIVER_OK | DEVICE_NEEDS_RESET) != DRIVER_OK {
            return Err(VirtioError::Status(status));
        }
        Ok(())
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
        let e = self.msix_entry(vector);
        mmio::write32(e + regs::MSIX_ENTRY_LOWER_ADDR, lapic::msi_address(apic_id));
        mmio::write32(e + regs::MSIX_ENTRY_UPPER_ADDR, 0);
        mmio::write32(e + regs::MSIX_ENTRY_DATA, u32::from(idt_vector));
        self.msix_mask(vector, masked);
    }

    /// Masks or unmasks MSI-X vector `vector`.
    pub fn msix_mask(&self, vector: u16, masked: bool) {
        mmio::write32(
            self.msix_entry(vector) + regs::MSIX_ENTRY_VECTOR_CTRL,
            u32::from(masked),
        );
    }

    fn msix_entry(&self, vector: u16) -> u64 {
        self.msix_table + regs::MSIX_ENTRY_SIZE * u64::from(vector)
    }

    /// Enables MSI-X (function mask clear).
    pub fn msix_enable(&self) {
        let reg = self.msix_cap + regs::MSIX_FLAGS;
        let flags = self.ecam.read16(self.bdf, reg);
        self.ecam.write16(
            self.bdf,
            reg,
            (flags | regs::MSIX_FLAGS_ENABLE) & !regs::MSIX_FLAGS_MASKALL,
        );
    }

    /// The PBA's first quadword (pending bits of vectors 0..64).
    pub fn msix_pending(&self) -> u64 {
        let addr = self.msix_pba;
        u64::from(mmio::read32(addr)) | (u64::from(mmio::read32(addr + 4)) << 32)
    }
}

/// Descriptor flags.
pub mod flags {
    /// The chain goes on at the descriptor in `next`.
    pub const NEXT: u16 = 1;
    /// The device writes this buffer.
    pub const WRITE: u16 = 2;
}
