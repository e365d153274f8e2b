//! The SR-IOV Physical Function of the emulated 82576, as a PCI card: the PF at devfn 0
//! (8086:10C9, class 0x020000, PCIe endpoint with FLR, MSI-X, ARI and the SR-IOV
//! capability) and, while VF Enable is set with NumVFs N, VFs 0..N at the devfns the
//! capability's First VF Offset and VF Stride give (see [`crate::pci::sriov::vf_layout`]).
//!
//! Either side can drive the capability: a guest's PF driver (Linux `sriov_numvfs`) with
//! config writes through [`PciCard::config_write`], or nicd, which is the PF driver of its
//! own adapter, through [`SriovPf::set_num_vfs`]; both take the same path.
//!
//! - VF models plug in through [`VfFunction`], made by a [`VfFactory`] when VF Enable is
//!   set and dropped when it is cleared.
//! - Memory accesses to the VF BAR windows (VF k's BAR n at VF BAR n base + k x size)
//!   reach VF k's model as (BAR, offset) while VF Enable and VF MSE are set; nicd's
//!   vfio-user server, which presents each VF with BARs of its own, calls
//!   [`SriovPf::vf_bar_read`] / [`SriovPf::vf_bar_write`] directly.
//! - The PF's own BARs go to [`PfRegisters`], a minimal model for now.

mod control;
mod function;
mod regs;
mod vf;

pub use control::NumVfsError;
pub use function::{PF_MSIX_SIZE, PF_MSIX_VECTORS, PF_REGS_SIZE, VF_BAR_SIZE, VF_REGS_BAR};
pub use regs::{PF_BAR_MSIX, PF_BAR_REGS, PfRegisters};
pub use vf::{
    DEVCAP_FLR, DEVCTL_BCR_FLR, VF_MSIX_BAR, VF_MSIX_PBA_OFFSET, VF_MSIX_VECTORS, VfControl,
    VfFactory, VfFunction,
};

use std::sync::{Arc, Mutex};

use crate::pci::card::{BarError, assign_function_bars, decode_bar};
use crate::pci::sriov::{SriovCapability, SriovError, SriovEvent};
use crate::pci::{Bar, ConfigError, ConfigSpace, PciCard, PciDevice, SharedCard};
use function::{PfEvent, PfFunction};
use vf::Vf;

/// Intel's PCI vendor ID.
pub const VENDOR_INTEL: u16 = 0x8086;
/// 82576 PF device ID (copper; the one QEMU's igb uses).
pub const PF_DEVICE_ID: u16 = 0x10c9;
/// 82576 VF device ID, in the SR-IOV capability's VF Device ID field.
pub const VF_DEVICE_ID: u16 = 0x10ca;
/// Class code of PF and VFs: Ethernet controller.
pub const CLASS_ETHERNET: [u8; 3] = [0x02, 0x00, 0x00];
/// Revision ID of PF and VFs.
pub const REVISION: u8 = 0x01;
/// Subsystem ID of PF and VFs (subsystem vendor Intel).
pub const INTEL_SUBSYSTEM_ID: u16 = 0x0000;
/// The PF's devfn on its bus.
pub const PF_DEVFN: u8 = 0;

/// How the PF is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PfConfig {
    /// TotalVFs (and InitialVFs): 1..=255. The 82576 has 8; Linux `igb` uses at most 7;
    /// nicd, its own PF driver, may offer up to 255 (which needs ARI).
    pub total_vfs: u16,
    /// Whether the 64-bit VF BARs are prefetchable (QEMU's igb: yes, so 255 VFs' windows
    /// fit a port's 64-bit window; the 82576: no).
    pub vf_bars_prefetchable: bool,
}

impl Default for PfConfig {
    /// The 82576: 8 VFs, VF BARs prefetchable as QEMU has them.
    fn default() -> Self {
        Self {
            total_vfs: 8,
            vf_bars_prefetchable: true,
        }
    }
}

/// Why a PF cannot be built (configuration errors, never guest input).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PfError {
    /// The SR-IOV capability cannot be built (TotalVFs out of range, ...).
    #[error("invalid SR-IOV configuration")]
    Sriov(#[from] SriovError),
    /// The PF's BARs or capabilities do not fit its config space.
    #[error("cannot lay out the PF's configuration space")]
    Config(#[from] ConfigError),
    /// The PCIe capability could not be added.
    #[error("cannot add the PF's PCIe capability")]
    Capabilities,
}

/// Where a memory access lands: (BAR, offset) of the PF, or (VF, BAR, offset).
enum MmioTarget {
    Pf(usize, u64),
    Vf(usize, usize, u64),
}

/// The PF card: PF at devfn 0 and its VFs.
#[derive(Debug)]
pub struct SriovPf {
    pf: PfFunction,
    /// VF k at index k; as many as VF Enable made exist.
    vfs: Vec<Vf>,
    factory: Box<dyn VfFactory>,
}

impl SriovPf {
    /// A PF with no VFs enabled; `factory` makes the VF models when VFs are enabled.
    pub fn new(cfg: PfConfig, factory: Box<dyn VfFactory>) -> Result<Self, PfError> {
        Ok(Self {
            pf: PfFunction::new(&cfg)?,
            vfs: Vec::new(),
            factory,
        })
    }

    /// This card behind its own lock.
    pub fn shared(self) -> SharedCard {
        Arc::new(Mutex::new(self))
    }

    /// The PF's config space.
    pub fn pf_config(&self) -> &ConfigSpace {
        self.pf.config()
    }

    /// The PF's SR-IOV capability (read its registers with [`SriovPf::pf_config`]).
    pub fn sriov(&self) -> &SriovCapability {
        self.pf.sriov()
    }

    /// The PF's BAR registers.
    pub fn registers_mut(&mut self) -> &mut PfRegisters {
        &mut self.pf.regs
    }

    /// How many VFs exist now.
    pub fn num_vfs(&self) -> u16 {
        // At most TotalVFs (<= 255) exist.
        u16::try_from(self.vfs.len()).unwrap_or(u16::MAX)
    }

    /// The devfn of existing VF `index` on the PF's bus.
    pub fn vf_devfn(&self, index: u16) -> Option<u8> {
        (index < self.num_vfs())
            .then(|| self.sriov().vf_devfn(self.pf_config(), index))
            .flatten()
    }

    /// Where existing VF `index`'s BAR `bar` sits in the PF's VF BAR window: VF BAR base +
    /// index x size. (A VF's own BAR registers read 0, as PCIe has it for VFs; Linux and
    /// this card compute the address from the PF instead.)
    pub fn vf_bar_address(&self, index: u16, bar: usize) -> Option<u64> {
        (index < self.num_vfs())
            .then(|| self.sriov().vf_bar_address(self.pf_config(), index, bar))
            .flatten()
    }

    /// The model of existing VF `index`.
    pub fn vf_function_mut(&mut self, index: u16) -> Option<&mut (dyn VfFunction + 'static)> {
        self.vfs
            .get_mut(usize::from(index))
            .map(|vf| &mut *vf.function)
    }

    /// The controls of existing VF `index` as its config space holds them.
    pub fn vf_control(&self, index: u16) -> Option<VfControl> {
        self.vfs.get(usize::from(index)).map(Vf::control)
    }

    /// The config space of existing VF `index`, as a raw VF presents it (vendor and
    /// device 0xFFFF; a vfio-user server substitutes 8086:10CA, as vfio-pci does).
    pub fn vf_config(&self, index: u16) -> Option<&ConfigSpace> {
        self.vfs.get(usize::from(index)).map(Vf::config)
    }

    /// A config read of existing VF `index`; false (and all ones) if it does not exist.
    pub fn vf_config_read(&self, index: u16, offset: usize, data: &mut [u8]) -> bool {
        match self.vfs.get(usize::from(index)) {
            Some(vf) => {
                vf.config_read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// A config write of existing VF `index` (FLR and control changes reach its model);
    /// false if it does not exist.
    pub fn vf_config_write(&mut self, index: u16, offset: usize, data: &[u8]) -> bool {
        self.vfs
            .get_mut(usize::from(index))
            .map(|vf| vf.config_write(offset, data))
            .is_some()
    }

    /// A read at `offset` in BAR `bar` of existing VF `index`, whatever the VF BAR windows
    /// hold; false (and all ones) if the VF or the BAR does not exist or the access does
    /// not fit in it.
    pub fn vf_bar_read(&mut self, index: u16, bar: usize, offset: u64, data: &mut [u8]) -> bool {
        match self.vf_bar_target(index, bar, offset, data.len()) {
            Some(vf) => {
                vf.function.bar_read(bar, offset, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// A write at `offset` in BAR `bar` of existing VF `index`; false if dropped.
    pub fn vf_bar_write(&mut self, index: u16, bar: usize, offset: u64, data: &[u8]) -> bool {
        match self.vf_bar_target(index, bar, offset, data.len()) {
            Some(vf) => {
                vf.function.bar_write(bar, offset, data);
                true
            }
            None => false,
        }
    }

    fn vf_bar_target(
        &mut self,
        index: u16,
        bar: usize,
        offset: u64,
        len: usize,
    ) -> Option<&mut Vf> {
        let size = self.sriov().vf_bar(self.pf_config(), bar)?.size;
        let end = offset.checked_add(u64::try_from(len).ok()?)?;
        if end > size {
            return None;
        }
        self.vfs.get_mut(usize::from(index))
    }

    /// The existing VF at `devfn`.
    fn vf_at(&self, devfn: u8) -> Option<usize> {
        let index = self.sriov().vf_index(self.pf_config(), devfn)?;
        let index = usize::from(index);
        (index < self.vfs.len()).then_some(index)
    }

    /// Which function's BAR decodes `[addr, addr + len)`: the PF's (with its memory
    /// decoding on) or an existing VF's (with VF Enable and VF MSE set).
    fn mmio_target(&self, addr: u64, len: usize) -> Option<MmioTarget> {
        let end = addr.checked_add(u64::try_from(len).ok()?)?;
        if let Some((bar, offset)) = decode_bar(self.pf.config(), addr, end) {
            return Some(MmioTarget::Pf(bar, offset));
        }
        let access = self.sriov().decode(self.pf_config(), addr, len)?;
        let vf = usize::from(access.vf);
        (vf < self.vfs.len()).then_some(MmioTarget::Vf(vf, access.bar, access.offset))
    }

    /// Acts on what the last PF config write asked for.
    fn apply_pf_event(&mut self) {
        match self.pf.take_event() {
            Some(PfEvent::Sriov(SriovEvent::Enabled { num_vfs })) => {
                // VF Enable is refused while NumVFs > TotalVFs, so this is bounded by
                // TotalVFs; the clamp keeps it so whatever the capability says.
                let n = num_vfs.min(self.sriov().total_vfs());
                self.vfs = (0..n).map(|i| Vf::new(self.factory.create(i))).collect();
            }
            Some(PfEvent::Sriov(SriovEvent::Disabled)) => self.vfs.clear(),
            Some(PfEvent::Flr) => {
                self.vfs.clear();
                self.pf.reset();
            }
            None => {}
        }
    }
}

impl PciCard for SriovPf {
    fn has_function(&self, devfn: u8) -> bool {
        devfn == PF_DEVFN || self.vf_at(devfn).is_some()
    }

    fn config_read(&mut self, devfn: u8, offset: usize, data: &mut [u8]) {
        if devfn == PF_DEVFN {
            self.pf.config_read(offset, data);
        } else if let Some(i) = self.vf_at(devfn) {
            self.vfs[i].config_read(offset, data);
        } else {
            data.fill(0xff);
        }
    }

    fn config_write(&mut self, devfn: u8, offset: usize, data: &[u8]) {
        if devfn == PF_DEVFN {
            self.pf.config_write(offset, data);
            self.apply_pf_event();
        } else if let Some(i) = self.vf_at(devfn) {
            self.vfs[i].config_write(offset, data);
        }
    }

    fn mmio_read(&mut self, addr: u64, data: &mut [u8]) -> bool {
        match self.mmio_target(addr, data.len()) {
            Some(MmioTarget::Pf(bar, offset)) => self.pf.bar_read(bar, offset, data),
            Some(MmioTarget::Vf(vf, bar, offset)) => {
                self.vfs[vf].function.bar_read(bar, offset, data);
            }
            None => return false,
        }
        true
    }

    fn mmio_write(&mut self, addr: u64, data: &[u8]) -> bool {
        match self.mmio_target(addr, data.len()) {
            Some(MmioTarget::Pf(bar, offset)) => self.pf.bar_write(bar, offset, data),
            Some(MmioTarget::Vf(vf, bar, offset)) => {
                self.vfs[vf].function.bar_write(bar, offset, data);
            }
            None => return false,
        }
        true
    }

    /// The PF's BARs, then the VF BAR windows (size x TotalVFs each, rounded up to a power
    /// of two); VF Enable stays clear.
    fn assign_bars(&mut self, alloc: &mut dyn FnMut(Bar) -> Option<u64>) -> Result<(), BarError> {
        assign_function_bars(&mut self.pf, alloc)?;
        self.pf.assign_vf_bars(alloc).ok_or(BarError::WindowFull)
    }

    fn pause(&mut self) {}

    fn resume(&mut self) {}

    fn is_paused(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests;
