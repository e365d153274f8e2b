//! A Virtual Function as the PF card holds it: its configuration space (what a raw VF
//! answers to config cycles) and the model behind its BARs, plugged in through
//! [`VfFunction`].
//!
//! The VF's config space follows PCIe's rules for VFs and what Linux expects of them
//! (reference pcie-sriov-iommu-failover.md section 1, igb-82576.md section 1): vendor and
//! device ID read 0xFFFF (Linux takes the PF's vendor ID and the VF Device ID instead);
//! class 0x020000 and revision 1 (Linux reads them once, from VF 0); header type 0; BARs,
//! ROM and Interrupt Pin read 0; in COMMAND only Bus Master is writable (Linux still writes
//! Memory Space, which is dropped); a PCIe endpoint capability offering FLR; MSI-X with 3
//! vectors, table at BAR3 + 0 and PBA at BAR3 + 0x2000; an ARI capability, as on the
//! 82576.

use crate::pci::capability::{self, MsixLocation};
use crate::pci::regs::*;
use crate::pci::{ConfigSpace, HeaderType, PciId};

use super::{CLASS_ETHERNET, INTEL_SUBSYSTEM_ID, REVISION, VENDOR_INTEL};

/// MSI-X vectors of a VF (igbvf asks for exactly 3).
pub const VF_MSIX_VECTORS: u16 = 3;
/// The VF BAR holding the MSI-X table and PBA.
pub const VF_MSIX_BAR: u8 = 3;
/// Offset of the PBA in [`VF_MSIX_BAR`].
pub const VF_MSIX_PBA_OFFSET: u32 = 0x2000;
/// Device Capabilities: Function Level Reset Capability.
pub const DEVCAP_FLR: u32 = 1 << 28;
/// Device Control: Initiate Function Level Reset (bit 15; always reads 0).
pub const DEVCTL_BCR_FLR: u16 = 1 << 15;

/// The controls in a VF's config space that its model acts on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VfControl {
    /// COMMAND.Bus Master: the VF may DMA.
    pub bus_master: bool,
    /// MSI-X Enable.
    pub msix_enabled: bool,
    /// MSI-X Function Mask.
    pub msix_masked: bool,
}

/// The model of one VF behind its BARs (the 82576 VF, or a test fake). The PF card owns
/// it while the VF exists and routes to it every access to the VF's BARs (the MSI-X BAR
/// included), the VF's FLRs and changes to its controls.
pub trait VfFunction: Send + std::fmt::Debug {
    /// A read of 1, 2, 4 or 8 bytes at `offset` in the VF's BAR `bar`.
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]);

    /// A write at `offset` in the VF's BAR `bar`.
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]);

    /// Function Level Reset: back to the state after VF Enable (queues stopped, interrupts
    /// masked, mailbox reset). The VF's config space is reset by the card.
    fn flr(&mut self);

    /// Bus Master or the MSI-X controls changed.
    fn control_changed(&mut self, _control: VfControl) {}
}

/// Makes the VF models when the PF's VF Enable is set. Dropping a model is how the card
/// tells it its VF is gone (VF Enable cleared, PF FLR).
pub trait VfFactory: Send + std::fmt::Debug {
    /// The model for 0-based VF `index`.
    fn create(&mut self, index: u16) -> Box<dyn VfFunction>;
}

/// One existing VF: config space plus model.
#[derive(Debug)]
pub(super) struct Vf {
    config: ConfigSpace,
    exp: usize,
    msix: usize,
    pub(super) function: Box<dyn VfFunction>,
}

impl Vf {
    pub(super) fn new(function: Box<dyn VfFunction>) -> Self {
        let (config, exp, msix) = vf_config_space();
        Self {
            config,
            exp,
            msix,
            function,
        }
    }

    pub(super) fn config(&self) -> &ConfigSpace {
        &self.config
    }

    pub(super) fn config_read(&self, offset: usize, data: &mut [u8]) {
        self.config.read(offset, data);
    }

    /// A config write: an FLR resets config space and model; a change of the controls is
    /// passed on.
    pub(super) fn config_write(&mut self, offset: usize, data: &[u8]) {
        if flr_requested(self.exp, offset, data) {
            self.config = vf_config_space().0;
            self.function.flr();
            return;
        }
        let before = self.control();
        self.config.write(offset, data);
        let after = self.control();
        if after != before {
            self.function.control_changed(after);
        }
    }

    /// The controls as the config space holds them.
    pub(super) fn control(&self) -> VfControl {
        let msix = self.config.read_u16(self.msix + MSIX_FLAGS);
        VfControl {
            bus_master: self.config.bus_master(),
            msix_enabled: msix & MSIX_FLAGS_ENABLE != 0,
            msix_masked: msix & MSIX_FLAGS_MASKALL != 0,
        }
    }
}

/// Whether a config write of `data` at `offset` sets Initiate FLR in the Device Control
/// register of the PCIe capability at `exp`.
pub(super) fn flr_requested(exp: usize, offset: usize, data: &[u8]) -> bool {
    let flr_byte = exp + EXP_DEVCTL + 1;
    flr_byte
        .checked_sub(offset)
        .and_then(|i| data.get(i))
        .is_some_and(|b| b & (DEVCTL_BCR_FLR >> 8) as u8 != 0)
}

/// Adds a PCIe endpoint capability offering FLR; returns its offset.
pub(super) fn add_pcie_with_flr(cs: &mut ConfigSpace) -> Option<usize> {
    let pcie = capability::pcie(EXP_TYPE_ENDPOINT, 0, None);
    let exp = cs.add_capability(&pcie.body, &pcie.writable).ok()?;
    let devcap = cs.read_u32(exp + EXP_DEVCAP);
    cs.set_u32(exp + EXP_DEVCAP, devcap | DEVCAP_FLR);
    Some(exp)
}

/// A fresh VF config space, with the offsets of its PCIe and MSI-X capabilities.
fn vf_config_space() -> (ConfigSpace, usize, usize) {
    let mut cs = ConfigSpace::new(
        HeaderType::Endpoint,
        PciId {
            vendor: 0xffff,
            device: 0xffff,
            class: CLASS_ETHERNET,
            revision: REVISION,
            subsystem_vendor: VENDOR_INTEL,
            subsystem: INTEL_SUBSYSTEM_ID,
        },
    );
    // Memory Space, I/O Space, Parity, SERR# and INTx Disable are RO 0 in a VF.
    cs.writable_u16(COMMAND, CMD_MASTER);
    // Fixed sizes on a fresh header: these cannot run out of room.
    let exp = add_pcie_with_flr(&mut cs).unwrap_or_default();
    let msix = capability::msix(
        VF_MSIX_VECTORS,
        MsixLocation {
            bar: VF_MSIX_BAR,
            offset: 0,
        },
        MsixLocation {
            bar: VF_MSIX_BAR,
            offset: VF_MSIX_PBA_OFFSET,
        },
    );
    let msix = cs
        .add_capability(&msix.body, &msix.writable)
        .unwrap_or_default();
    let ari = capability::ari(0);
    let _ = cs.add_ext_capability(EXT_CAP_ID_ARI, 1, &ari.body, &ari.writable);
    (cs, exp, msix)
}
