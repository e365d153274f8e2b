//! The SR-IOV extended capability (ID 0x0010, version 1, 0x40 bytes) of a Physical
//! Function, in the PF's [`ConfigSpace`].
//!
//! Registers (offsets from the capability header, Linux uapi `PCI_SRIOV_*`):
//!
//! | off | field | here |
//! |---|---|---|
//! | 0x04 | Capabilities | 0: no VF Migration |
//! | 0x08 | Control | VF Enable, VF MSE, ARI Capable Hierarchy writable; VF Migration bits RO 0 |
//! | 0x0a | Status | RO 0 (VF Migration Status needs VF Migration) |
//! | 0x0c / 0x0e | InitialVFs / TotalVFs | both TotalVFs (Linux refuses InitialVFs != TotalVFs without VF Migration) |
//! | 0x10 | NumVFs | writable while VF Enable is clear, frozen while it is set |
//! | 0x12 | Function Dependency Link | the PF's own function number (no dependency) |
//! | 0x14 / 0x16 | First VF Offset / VF Stride | from [`vf_layout`]: depend on ARI Capable Hierarchy only |
//! | 0x1a | VF Device ID | from [`SriovConfig`] |
//! | 0x1c / 0x20 | Supported / System Page Size | 0x553 by default / RW, default 1 (4 KiB) |
//! | 0x24..0x3c | VF BAR0-5 | per-VF sizes, sized with the usual all-ones write |
//! | 0x3c | VF Migration State Array Offset | RO 0 |
//!
//! Writes follow QEMU's `hw/pci/pcie_sriov.c` (after the CVE-2025-54566/54567 fix): NumVFs
//! accepts any 16-bit value while VF Enable is clear, but VF Enable cannot be set while
//! NumVFs exceeds TotalVFs (the write leaves it clear), so no more than TotalVFs functions
//! ever exist. While VF Enable is set, NumVFs, ARI Capable Hierarchy and System Page Size
//! are read-only (the spec leaves changing them then undefined).
//!
//! The VF BAR window Linux reserves for BAR n is size x TotalVFs (`sriov_init`), VF k's
//! BAR n is base + k x size (`pci_iov_add_virtfn`, `pci_iov_resource_size`), and the
//! device decodes size x NumVFs of it while VF Enable and VF MSE are both set.

use super::bar::{Bar, BarKind};
use super::config_space::{ConfigError, ConfigSpace};
use super::regs::EXT_CAP_ID_SRIOV;
use crate::warn_ratelimited;

/// Capabilities register.
pub const SRIOV_CAP: usize = 0x04;
/// Control register.
pub const SRIOV_CTRL: usize = 0x08;
/// Status register.
pub const SRIOV_STATUS: usize = 0x0a;
/// InitialVFs.
pub const SRIOV_INITIAL_VF: usize = 0x0c;
/// TotalVFs.
pub const SRIOV_TOTAL_VF: usize = 0x0e;
/// NumVFs.
pub const SRIOV_NUM_VF: usize = 0x10;
/// Function Dependency Link.
pub const SRIOV_FUNC_LINK: usize = 0x12;
/// First VF Offset.
pub const SRIOV_VF_OFFSET: usize = 0x14;
/// VF Stride.
pub const SRIOV_VF_STRIDE: usize = 0x16;
/// VF Device ID.
pub const SRIOV_VF_DID: usize = 0x1a;
/// Supported Page Sizes.
pub const SRIOV_SUP_PGSIZE: usize = 0x1c;
/// System Page Size.
pub const SRIOV_SYS_PGSIZE: usize = 0x20;
/// VF BAR0 (BARn at `SRIOV_BAR + 4 * n`).
pub const SRIOV_BAR: usize = 0x24;
/// VF Migration State Array Offset.
pub const SRIOV_VFM: usize = 0x3c;
/// Size of the capability, header included.
pub const SRIOV_SIZEOF: usize = 0x40;

/// Control: VF Enable.
pub const CTRL_VFE: u16 = 1 << 0;
/// Control: VF Migration Enable (not offered: RO 0).
pub const CTRL_VFM: u16 = 1 << 1;
/// Control: VF Migration Interrupt Enable (not offered: RO 0).
pub const CTRL_INTR: u16 = 1 << 2;
/// Control: VF Memory Space Enable.
pub const CTRL_MSE: u16 = 1 << 3;
/// Control: ARI Capable Hierarchy.
pub const CTRL_ARI: u16 = 1 << 4;

/// The page sizes every SR-IOV device must support (4K, 8K, 64K, 256K, 1M, 4M).
pub const SUPPORTED_PAGE_SIZES_MIN: u32 = 0x553;
/// The most VFs one PF can have while every VF stays on the PF's bus (ARI, PF at devfn 0).
pub const MAX_VFS: u16 = 255;
/// Smallest VF BAR: one 4 KiB page (Linux refuses VF BARs that are not page multiples).
const MIN_VF_BAR: u64 = 4096;

/// Why an SR-IOV capability cannot be built (device-model errors, never guest input).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SriovError {
    /// TotalVFs of 0 or above [`MAX_VFS`].
    #[error("TotalVFs {0} is outside 1..=255")]
    TotalVfs(u16),
    /// No First VF Offset and VF Stride keep all VFs on the PF's bus.
    #[error("{total_vfs} VFs of a PF at devfn {pf_devfn:#04x} do not fit on its bus")]
    NoLayout {
        /// The PF's devfn.
        pf_devfn: u8,
        /// TotalVFs.
        total_vfs: u16,
    },
    /// A VF BAR index that does not exist or overlaps another VF BAR.
    #[error("VF BAR {0} is invalid or already in use")]
    BarSlot(usize),
    /// A VF BAR that is not memory, or whose size is not a power of two of at least 4 KiB.
    #[error("VF BAR size {0:#x} is not a power-of-two memory size of at least 4 KiB")]
    BarSize(u64),
    /// The PF's configuration space has no room for the capability.
    #[error("cannot add the SR-IOV capability")]
    Capability(#[source] ConfigError),
}

/// How the capability is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SriovConfig {
    /// The PF's devfn (8-bit function number under ARI).
    pub pf_devfn: u8,
    /// TotalVFs (and InitialVFs), 1..=255.
    pub total_vfs: u16,
    /// VF Device ID.
    pub vf_device_id: u16,
    /// Supported Page Sizes (bit n: 2^(n+12) bytes); must include bit 0 (4 KiB).
    pub supported_page_sizes: u32,
    /// Per-VF BARs by index (a 64-bit BAR takes its slot and the next).
    pub vf_bars: Vec<(usize, Bar)>,
}

impl SriovConfig {
    /// `total_vfs` VFs with device ID `vf_device_id`, PF at devfn 0, the mandatory page
    /// sizes, no VF BARs yet.
    pub fn new(total_vfs: u16, vf_device_id: u16) -> Self {
        Self {
            pf_devfn: 0,
            total_vfs,
            vf_device_id,
            supported_page_sizes: SUPPORTED_PAGE_SIZES_MIN,
            vf_bars: Vec::new(),
        }
    }

    /// Declares per-VF BAR `index`.
    pub fn with_vf_bar(mut self, index: usize, bar: Bar) -> Self {
        self.vf_bars.push((index, bar));
        self
    }
}

/// First VF Offset and VF Stride.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VfLayout {
    /// First VF Offset (routing-ID distance from the PF to VF 0).
    pub first_vf_offset: u16,
    /// VF Stride (routing-ID distance between consecutive VFs).
    pub vf_stride: u16,
}

impl VfLayout {
    /// The devfn of 0-based VF `index` of a PF at `pf_devfn`, if it is on the PF's bus.
    pub fn devfn(&self, pf_devfn: u8, index: u16) -> Option<u8> {
        let rid = u32::from(pf_devfn)
            + u32::from(self.first_vf_offset)
            + u32::from(index) * u32::from(self.vf_stride);
        u8::try_from(rid).ok()
    }
}

/// The offset and stride this model uses for `total_vfs` VFs of a PF at `pf_devfn`, with
/// ARI Capable Hierarchy `ari`; every VF routing ID stays on the PF's bus
/// (`pf_devfn + offset + (total_vfs - 1) * stride <= 255`), as Linux reserves no bus
/// numbers for VFs after boot. `None` when no layout fits.
///
/// - ARI set: offset 0x80, stride 2 (QEMU's igb, so VFs sit at devfn 0x80, 0x82, ...,
///   shown as 10.0, 10.2, ...) while that fits, i.e. up to 64 VFs from devfn 0; beyond,
///   offset 1, stride 1 (VF 254 of 255 at devfn 0xff).
/// - ARI clear: offset 1, stride 1 when the VFs fit in functions 1..=7 of the PF's device
///   (reachable without ARI forwarding; the 82576 with 7 VFs sits at 00.1-00.7); with more
///   VFs, the ARI layout (those VFs need ARI forwarding to be reached; hardware would move
///   them to the next bus, which this model never does).
///
/// For 82576-like settings with the PF at devfn 0: TotalVFs 7 gives 0x80/2 with ARI (VFs
/// at 0x80..=0x8c) and 1/1 without; TotalVFs 8 gives 0x80/2 either way (0x80..=0x8e).
pub fn vf_layout(pf_devfn: u8, total_vfs: u16, ari: bool) -> Option<VfLayout> {
    if total_vfs == 0 {
        return None;
    }
    let fits = |layout: VfLayout| layout.devfn(pf_devfn, total_vfs - 1).is_some();
    let dense = VfLayout {
        first_vf_offset: 1,
        vf_stride: 1,
    };
    if !ari && u16::from(pf_devfn & 7) + total_vfs <= 7 {
        return Some(dense);
    }
    let igb = VfLayout {
        first_vf_offset: 0x80,
        vf_stride: 2,
    };
    [igb, dense].into_iter().find(|l| fits(*l))
}

/// What a write to the capability did to the VFs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SriovEvent {
    /// VF Enable went 0 -> 1: VFs `0..num_vfs` now exist.
    Enabled {
        /// NumVFs at that moment.
        num_vfs: u16,
    },
    /// VF Enable went 1 -> 0: the VFs are gone.
    Disabled,
}

/// A decoded access to a VF BAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VfAccess {
    /// 0-based VF index.
    pub vf: u16,
    /// BAR index (as the VF numbers its BARs).
    pub bar: usize,
    /// Offset in that VF's BAR.
    pub offset: u64,
}

/// The SR-IOV capability of a PF: where it lives and what was declared. The registers
/// themselves live in the PF's [`ConfigSpace`], which every method takes.
#[derive(Debug, Clone)]
pub struct SriovCapability {
    offset: usize,
    pf_devfn: u8,
    total_vfs: u16,
    supported_page_sizes: u32,
    vf_bars: [Option<Bar>; 6],
    /// VF Enable as of the last write.
    enabled: bool,
}

impl SriovCapability {
    /// Appends the capability described by `cfg` to `cs`.
    pub fn add(cs: &mut ConfigSpace, cfg: &SriovConfig) -> Result<Self, SriovError> {
        if cfg.total_vfs == 0 || cfg.total_vfs > MAX_VFS {
            return Err(SriovError::TotalVfs(cfg.total_vfs));
        }
        let layout = vf_layout(cfg.pf_devfn, cfg.total_vfs, false).ok_or(SriovError::NoLayout {
            pf_devfn: cfg.pf_devfn,
            total_vfs: cfg.total_vfs,
        })?;
        let vf_bars = validate_bars(&cfg.vf_bars)?;
        let body = [0u8; SRIOV_SIZEOF - 4];
        let offset = cs
            .add_ext_capability(EXT_CAP_ID_SRIOV, 1, &body, &[])
            .map_err(SriovError::Capability)?;
        cs.set_u16(offset + SRIOV_INITIAL_VF, cfg.total_vfs);
        cs.set_u16(offset + SRIOV_TOTAL_VF, cfg.total_vfs);
        cs.set_u8(offset + SRIOV_FUNC_LINK, cfg.pf_devfn);
        cs.set_u16(offset + SRIOV_VF_OFFSET, layout.first_vf_offset);
        cs.set_u16(offset + SRIOV_VF_STRIDE, layout.vf_stride);
        cs.set_u16(offset + SRIOV_VF_DID, cfg.vf_device_id);
        // Bit 0 (4 KiB) is always supported: System Page Size resets to it.
        let supported = cfg.supported_page_sizes | 1;
        cs.set_u32(offset + SRIOV_SUP_PGSIZE, supported);
        cs.set_u32(offset + SRIOV_SYS_PGSIZE, 1);
        for (i, bar) in vf_bars.iter().enumerate() {
            if let Some(bar) = bar {
                cs.set_u32(offset + SRIOV_BAR + 4 * i, bar.flags());
            }
        }
        let cap = Self {
            offset,
            pf_devfn: cfg.pf_devfn,
            total_vfs: cfg.total_vfs,
            supported_page_sizes: supported,
            vf_bars,
            enabled: false,
        };
        cap.update_vf_bars(cs);
        cap.update_masks(cs);
        Ok(cap)
    }

    /// Offset of the capability header in the PF's config space.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// TotalVFs.
    pub fn total_vfs(&self) -> u16 {
        self.total_vfs
    }

    /// The PF's devfn.
    pub fn pf_devfn(&self) -> u8 {
        self.pf_devfn
    }

    /// Applies the side effects of a guest write of `data` at `offset` of the PF's config
    /// space, after [`ConfigSpace::write`] stored it: offset and stride follow ARI Capable
    /// Hierarchy, VF BAR sizes follow System Page Size, the write masks follow VF Enable and
    /// NumVFs. Returns what happened to the VFs.
    pub fn after_write(
        &mut self,
        cs: &mut ConfigSpace,
        offset: usize,
        data: &[u8],
    ) -> Option<SriovEvent> {
        let end = offset.saturating_add(data.len());
        if end <= self.offset || offset >= self.offset + SRIOV_SIZEOF {
            return None;
        }
        let vfe = self.vf_enabled(cs);
        let ctrl_at = self.offset + SRIOV_CTRL;
        if !vfe && (offset..end).contains(&ctrl_at) && data[ctrl_at - offset] & 1 != 0 {
            warn_ratelimited!(
                "sriov: VF Enable refused: NumVFs {} exceeds TotalVFs {}",
                self.num_vfs(cs),
                self.total_vfs
            );
        }
        self.update_layout(cs);
        self.update_vf_bars(cs);
        let event = match (self.enabled, vfe) {
            (false, true) => Some(SriovEvent::Enabled {
                num_vfs: self.num_vfs(cs),
            }),
            (true, false) => Some(SriovEvent::Disabled),
            _ => None,
        };
        self.enabled = vfe;
        self.update_masks(cs);
        event
    }

    /// First VF Offset and VF Stride follow ARI Capable Hierarchy.
    fn update_layout(&self, cs: &mut ConfigSpace) {
        // `add` checked the layout exists; with ARI it exists whenever it does without.
        if let Some(l) = vf_layout(self.pf_devfn, self.total_vfs, self.ari_capable(cs)) {
            cs.set_u16(self.offset + SRIOV_VF_OFFSET, l.first_vf_offset);
            cs.set_u16(self.offset + SRIOV_VF_STRIDE, l.vf_stride);
        }
    }

    /// The VF BARs' sizes (and so their writable address bits) follow System Page Size.
    fn update_vf_bars(&self, cs: &mut ConfigSpace) {
        for i in 0..6 {
            let Some(bar) = self.vf_bar(cs, i) else {
                continue;
            };
            let reg = self.offset + SRIOV_BAR + 4 * i;
            let mask = !(bar.size - 1);
            let low_mask = ((mask & 0xffff_ffff) as u32) & bar.kind.address_bits();
            cs.writable_u32(reg, low_mask);
            cs.set_u32(reg, (cs.read_u32(reg) & low_mask) | bar.flags());
            if bar.kind == BarKind::Memory64 {
                let high_mask = (mask >> 32) as u32;
                cs.writable_u32(reg + 4, high_mask);
                cs.set_u32(reg + 4, cs.read_u32(reg + 4) & high_mask);
            }
        }
    }

    /// Which fields the guest may write, given VF Enable and NumVFs.
    fn update_masks(&self, cs: &mut ConfigSpace) {
        let o = self.offset;
        if self.enabled {
            cs.writable_u16(o + SRIOV_CTRL, CTRL_VFE | CTRL_MSE);
            cs.writable_u16(o + SRIOV_NUM_VF, 0);
            cs.writable_u32(o + SRIOV_SYS_PGSIZE, 0);
        } else {
            let vfe = if self.num_vfs(cs) <= self.total_vfs {
                CTRL_VFE
            } else {
                0
            };
            cs.writable_u16(o + SRIOV_CTRL, vfe | CTRL_MSE | CTRL_ARI);
            cs.writable_u16(o + SRIOV_NUM_VF, 0xffff);
            cs.writable_u32(o + SRIOV_SYS_PGSIZE, self.supported_page_sizes);
        }
    }

    /// The Control register.
    pub fn control(&self, cs: &ConfigSpace) -> u16 {
        cs.read_u16(self.offset + SRIOV_CTRL)
    }

    /// VF Enable.
    pub fn vf_enabled(&self, cs: &ConfigSpace) -> bool {
        self.control(cs) & CTRL_VFE != 0
    }

    /// VF Enable and VF MSE: the VFs decode their BARs.
    pub fn vf_memory_enabled(&self, cs: &ConfigSpace) -> bool {
        self.control(cs) & (CTRL_VFE | CTRL_MSE) == CTRL_VFE | CTRL_MSE
    }

    /// ARI Capable Hierarchy.
    pub fn ari_capable(&self, cs: &ConfigSpace) -> bool {
        self.control(cs) & CTRL_ARI != 0
    }

    /// NumVFs as written (may exceed TotalVFs while VF Enable is clear).
    pub fn num_vfs(&self, cs: &ConfigSpace) -> u16 {
        cs.read_u16(self.offset + SRIOV_NUM_VF)
    }

    /// The VFs that exist: NumVFs while VF Enable is set, else 0.
    pub fn active_vfs(&self, cs: &ConfigSpace) -> u16 {
        if self.vf_enabled(cs) {
            self.num_vfs(cs).min(self.total_vfs)
        } else {
            0
        }
    }

    /// First VF Offset and VF Stride as the registers read now.
    pub fn layout(&self, cs: &ConfigSpace) -> VfLayout {
        VfLayout {
            first_vf_offset: cs.read_u16(self.offset + SRIOV_VF_OFFSET),
            vf_stride: cs.read_u16(self.offset + SRIOV_VF_STRIDE),
        }
    }

    /// The devfn of 0-based VF `index` under the current layout.
    pub fn vf_devfn(&self, cs: &ConfigSpace, index: u16) -> Option<u8> {
        self.layout(cs).devfn(self.pf_devfn, index)
    }

    /// The index of the existing VF at `devfn`, if any.
    pub fn vf_index(&self, cs: &ConfigSpace, devfn: u8) -> Option<u16> {
        let active = self.active_vfs(cs);
        let layout = self.layout(cs);
        let first = u16::from(self.pf_devfn).checked_add(layout.first_vf_offset)?;
        let distance = u16::from(devfn).checked_sub(first)?;
        let index = match layout.vf_stride {
            0 => (distance == 0).then_some(0)?,
            s if distance % s == 0 => distance / s,
            _ => return None,
        };
        (index < active).then_some(index)
    }

    /// Per-VF BAR `index` at the current System Page Size (a VF BAR is never smaller than
    /// a page).
    pub fn vf_bar(&self, cs: &ConfigSpace, index: usize) -> Option<Bar> {
        let mut bar = (*self.vf_bars.get(index)?)?;
        bar.size = bar.size.max(self.page_size(cs));
        Some(bar)
    }

    /// System Page Size in bytes: its lowest set bit (4 KiB if none is set).
    pub fn page_size(&self, cs: &ConfigSpace) -> u64 {
        let sys = cs.read_u32(self.offset + SRIOV_SYS_PGSIZE);
        let shift = if sys == 0 { 0 } else { sys.trailing_zeros() };
        MIN_VF_BAR << shift
    }

    /// The base address programmed in VF BAR `index` (VF 0's BAR).
    pub fn vf_bar_base(&self, cs: &ConfigSpace, index: usize) -> Option<u64> {
        let bar = self.vf_bar(cs, index)?;
        let reg = self.offset + SRIOV_BAR + 4 * index;
        let low = u64::from(cs.read_u32(reg) & bar.kind.address_bits());
        let high = if bar.kind == BarKind::Memory64 {
            u64::from(cs.read_u32(reg + 4)) << 32
        } else {
            0
        };
        Some(high | low)
    }

    /// VF `vf`'s BAR `index`: base + vf x size.
    pub fn vf_bar_address(&self, cs: &ConfigSpace, vf: u16, index: usize) -> Option<u64> {
        let size = self.vf_bar(cs, index)?.size;
        self.vf_bar_base(cs, index)?
            .checked_add(u64::from(vf).checked_mul(size)?)
    }

    /// The VF BAR that decodes `[addr, addr + len)`, if VF Enable and VF MSE are set and
    /// the range lies inside one existing VF's BAR.
    pub fn decode(&self, cs: &ConfigSpace, addr: u64, len: usize) -> Option<VfAccess> {
        if !self.vf_memory_enabled(cs) {
            return None;
        }
        let active = u64::from(self.active_vfs(cs));
        let end = addr.checked_add(u64::try_from(len).ok()?)?;
        (0..6).find_map(|bar| {
            let size = self.vf_bar(cs, bar)?.size;
            let base = self.vf_bar_base(cs, bar)?;
            let window_end = base.checked_add(size.checked_mul(active)?)?;
            if base == 0 || addr < base || end > window_end {
                return None;
            }
            let vf = u16::try_from((addr - base) / size).ok()?;
            let offset = (addr - base) % size;
            (offset + (end - addr) <= size).then_some(VfAccess { vf, bar, offset })
        })
    }

    /// Places every VF BAR window (size x TotalVFs, as Linux reserves it, rounded up to a
    /// power of two) where `alloc` says, as firmware does. VF Enable stays clear.
    pub fn assign_vf_bars(
        &self,
        cs: &mut ConfigSpace,
        alloc: &mut dyn FnMut(Bar) -> Option<u64>,
    ) -> Option<()> {
        for i in 0..6 {
            let Some(bar) = self.vf_bar(cs, i) else {
                continue;
            };
            let window = bar
                .size
                .checked_mul(u64::from(self.total_vfs))?
                .checked_next_power_of_two()?;
            let base = alloc(Bar {
                size: window,
                ..bar
            })?;
            let reg = self.offset + SRIOV_BAR + 4 * i;
            cs.set_u32(
                reg,
                ((base & 0xffff_ffff) as u32 & bar.kind.address_bits()) | bar.flags(),
            );
            if bar.kind == BarKind::Memory64 {
                cs.set_u32(reg + 4, (base >> 32) as u32);
            }
        }
        Some(())
    }
}

/// Checks the declared VF BARs (memory, power-of-two sizes of at least a page, no two
/// sharing a slot) and lays them out by slot.
fn validate_bars(bars: &[(usize, Bar)]) -> Result<[Option<Bar>; 6], SriovError> {
    let mut out = [None; 6];
    let mut taken = [false; 6];
    for &(i, bar) in bars {
        if bar.kind == BarKind::Io || !bar.size.is_power_of_two() || bar.size < MIN_VF_BAR {
            return Err(SriovError::BarSize(bar.size));
        }
        let slots = if bar.kind == BarKind::Memory64 { 2 } else { 1 };
        if i.saturating_add(slots) > 6 || taken[i..i + slots].iter().any(|t| *t) {
            return Err(SriovError::BarSlot(i));
        }
        taken[i..i + slots].fill(true);
        out[i] = Some(bar);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
