//! The PF itself, function 0 of the card: config space with the SR-IOV capability, and its
//! BAR registers.

use crate::pci::capability::{self, MsixLocation};
use crate::pci::regs::*;
use crate::pci::sriov::{SriovCapability, SriovConfig, SriovEvent};
use crate::pci::{Bar, ConfigSpace, HeaderType, PciDevice, PciId};

use super::regs::{PF_BAR_MSIX, PF_BAR_REGS, PfRegisters};
use super::vf::{VF_MSIX_BAR, add_pcie_with_flr, flr_requested};
use super::{
    CLASS_ETHERNET, INTEL_SUBSYSTEM_ID, PF_DEVICE_ID, PfConfig, PfError, REVISION, VENDOR_INTEL,
    VF_DEVICE_ID,
};

/// Size of PF BAR0 (the 82576 register space).
pub const PF_REGS_SIZE: u64 = 128 * 1024;
/// Size of PF BAR3 (MSI-X table and PBA).
pub const PF_MSIX_SIZE: u64 = 16 * 1024;
/// MSI-X vectors of the PF (the 82576 has 10).
pub const PF_MSIX_VECTORS: u16 = 10;
/// Size of each VF BAR (VF BAR0 registers, VF BAR3 MSI-X), per VF.
pub const VF_BAR_SIZE: u64 = 16 * 1024;
/// The VF BAR holding the VF's registers.
pub const VF_REGS_BAR: usize = 0;

/// What a config write to the PF asks of the card.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PfEvent {
    /// VF Enable changed.
    Sriov(SriovEvent),
    /// Initiate Function Level Reset.
    Flr,
}

/// Function 0 of the card.
#[derive(Debug)]
pub(super) struct PfFunction {
    config: ConfigSpace,
    sriov: SriovCapability,
    exp: usize,
    pub(super) regs: PfRegisters,
    /// Config space and capability as at power-on, for FLR.
    pristine: Box<(ConfigSpace, SriovCapability)>,
    pending: Option<PfEvent>,
}

impl PfFunction {
    pub(super) fn new(cfg: &PfConfig) -> Result<Self, PfError> {
        let mut config = ConfigSpace::new(
            HeaderType::Endpoint,
            PciId {
                vendor: VENDOR_INTEL,
                device: PF_DEVICE_ID,
                class: CLASS_ETHERNET,
                revision: REVISION,
                subsystem_vendor: VENDOR_INTEL,
                subsystem: INTEL_SUBSYSTEM_ID,
            },
        );
        config.add_bar(PF_BAR_REGS, Bar::mem32(PF_REGS_SIZE))?;
        config.add_bar(usize::from(PF_BAR_MSIX), Bar::mem32(PF_MSIX_SIZE))?;
        // INTx pin A, as the 82576 PF has.
        config.set_u8(INTERRUPT_PIN, 1);
        let exp = add_pcie_with_flr(&mut config).ok_or(PfError::Capabilities)?;
        let msix = capability::msix(
            PF_MSIX_VECTORS,
            MsixLocation {
                bar: PF_BAR_MSIX,
                offset: 0,
            },
            MsixLocation {
                bar: PF_BAR_MSIX,
                offset: 0x2000,
            },
        );
        config.add_capability(&msix.body, &msix.writable)?;
        let ari = capability::ari(0);
        config.add_ext_capability(EXT_CAP_ID_ARI, 1, &ari.body, &ari.writable)?;
        let vf_bar = Bar::mem64(VF_BAR_SIZE, cfg.vf_bars_prefetchable);
        let sriov_cfg = SriovConfig::new(cfg.total_vfs, VF_DEVICE_ID)
            .with_vf_bar(VF_REGS_BAR, vf_bar)
            .with_vf_bar(usize::from(VF_MSIX_BAR), vf_bar);
        let sriov = SriovCapability::add(&mut config, &sriov_cfg)?;
        Ok(Self {
            pristine: Box::new((config.clone(), sriov.clone())),
            config,
            sriov,
            exp,
            regs: PfRegisters::new(),
            pending: None,
        })
    }

    /// The SR-IOV capability.
    pub(super) fn sriov(&self) -> &SriovCapability {
        &self.sriov
    }

    /// What the last config write asked of the card.
    pub(super) fn take_event(&mut self) -> Option<PfEvent> {
        self.pending.take()
    }

    /// Places the VF BAR windows where `alloc` says (firmware's job at power-on).
    pub(super) fn assign_vf_bars(
        &mut self,
        alloc: &mut dyn FnMut(Bar) -> Option<u64>,
    ) -> Option<()> {
        self.sriov.assign_vf_bars(&mut self.config, alloc)
    }

    /// Function Level Reset: config space (SR-IOV capability included, so VF Enable is
    /// clear) and registers back to power-on values.
    pub(super) fn reset(&mut self) {
        let (config, sriov) = &*self.pristine;
        self.config = config.clone();
        self.sriov = sriov.clone();
        self.regs.reset();
        self.pending = None;
    }
}

impl PciDevice for PfFunction {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_write(&mut self, offset: usize, data: &[u8]) {
        if flr_requested(self.exp, offset, data) {
            self.pending = Some(PfEvent::Flr);
            return;
        }
        self.config.write(offset, data);
        if let Some(event) = self.sriov.after_write(&mut self.config, offset, data) {
            self.pending = Some(PfEvent::Sriov(event));
        }
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        self.regs.read(bar, offset, data);
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        self.regs.write(bar, offset, data);
    }
}
