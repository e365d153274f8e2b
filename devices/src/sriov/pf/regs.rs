//! The PF's own BAR registers: the seam for a later 82576 PF model that a guest's Linux
//! `igb` driver can drive (reference igb-82576.md section 6: NVM, PHY over MDIC,
//! self-clearing CTRL.RST, the virtualization registers, the PF side of the mailboxes).
//!
//! For now it is minimal: every register reads 0 and writes are dropped (counted). nicd
//! plays the PF driver itself through [`super::SriovPf::set_num_vfs`], so nothing needs
//! more yet. The card calls only [`PfRegisters::read`], [`PfRegisters::write`] and
//! [`PfRegisters::reset`], so the full model can replace this struct without touching the
//! card.

use crate::debug_ratelimited;

/// PF BAR0: the 82576's 128 KiB register space.
pub const PF_BAR_REGS: usize = 0;
/// PF BAR3: the PF's MSI-X table and PBA (16 KiB).
pub const PF_BAR_MSIX: u8 = 3;

/// The PF's BAR registers.
#[derive(Debug, Default)]
pub struct PfRegisters {
    dropped_writes: u64,
}

impl PfRegisters {
    /// Registers after reset.
    pub fn new() -> Self {
        Self::default()
    }

    /// A read of `data.len()` bytes at `offset` in PF BAR `bar`: 0 for now.
    pub fn read(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    /// A write at `offset` in PF BAR `bar`: dropped for now.
    pub fn write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        self.dropped_writes = self.dropped_writes.saturating_add(1);
        debug_ratelimited!(
            "sriov pf: write of {} bytes to BAR{bar} + {offset:#x} dropped (no PF register model)",
            data.len()
        );
    }

    /// Function Level Reset or power-on: back to reset values.
    pub fn reset(&mut self) {
        self.dropped_writes = 0;
    }

    /// Writes dropped since the last reset.
    pub fn dropped_writes(&self) -> u64 {
        self.dropped_writes
    }
}
