//! nicd as the PF driver: setting NumVFs through its API, with the sequence and the errors
//! of Linux's `sriov_numvfs` (drivers/pci/pci-sysfs.c `sriov_numvfs_store`, iov.c
//! `sriov_enable` / `sriov_disable`).
//!
//! Enabling writes NumVFs, then VF Enable | VF MSE in one Control write (keeping ARI
//! Capable Hierarchy as it is); disabling clears VF Enable and VF MSE, then writes NumVFs
//! 0. Both go through the PF's config-write path, exactly as a guest's PF driver's writes
//! would, so the capability's registers always tell the truth whoever drives it.

use crate::pci::PciCard;
use crate::pci::sriov::{CTRL_MSE, CTRL_VFE, SRIOV_CTRL, SRIOV_NUM_VF};

use super::{PF_DEVFN, SriovPf};

/// Why NumVFs cannot be set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NumVfsError {
    /// More than TotalVFs (Linux: ERANGE).
    #[error("{requested} VFs requested but the PF has only {total}")]
    OutOfRange {
        /// The request.
        requested: u16,
        /// TotalVFs.
        total: u16,
    },
    /// VFs are enabled already and the request is another non-zero count; set 0 first
    /// (Linux: EBUSY).
    #[error("{enabled} VFs are enabled; disable them before enabling {requested}")]
    Busy {
        /// VFs enabled now.
        enabled: u16,
        /// The request.
        requested: u16,
    },
    /// The capability did not take VF Enable (Linux: EIO).
    #[error("the PF did not enable {requested} VFs")]
    NotEnabled {
        /// The request.
        requested: u16,
    },
}

impl NumVfsError {
    /// The errno Linux's `sriov_numvfs` returns for this case, for the API to report.
    pub fn errno(&self) -> i32 {
        match self {
            Self::OutOfRange { .. } => libc::ERANGE,
            Self::Busy { .. } => libc::EBUSY,
            Self::NotEnabled { .. } => libc::EIO,
        }
    }
}

impl SriovPf {
    /// Sets the number of enabled VFs to `n`, as writing `sriov_numvfs` does: the same
    /// count again is a no-op; 0 disables; a non-zero count needs the VFs disabled first.
    pub fn set_num_vfs(&mut self, n: u16) -> Result<(), NumVfsError> {
        let total = self.sriov().total_vfs();
        if n > total {
            return Err(NumVfsError::OutOfRange {
                requested: n,
                total,
            });
        }
        let cap = self.sriov().offset();
        let ctrl = self.sriov().control(self.pf_config());
        if n == 0 {
            // Also clears a VF Enable a guest set with NumVFs 0.
            self.write16(cap + SRIOV_CTRL, ctrl & !(CTRL_VFE | CTRL_MSE));
            self.write16(cap + SRIOV_NUM_VF, 0);
            return Ok(());
        }
        let enabled = self.num_vfs();
        if n == enabled {
            return Ok(());
        }
        if enabled != 0 || ctrl & CTRL_VFE != 0 {
            return Err(NumVfsError::Busy {
                enabled,
                requested: n,
            });
        }
        self.write16(cap + SRIOV_NUM_VF, n);
        self.write16(cap + SRIOV_CTRL, ctrl | CTRL_VFE | CTRL_MSE);
        if self.num_vfs() != n {
            return Err(NumVfsError::NotEnabled { requested: n });
        }
        Ok(())
    }

    fn write16(&mut self, offset: usize, value: u16) {
        self.config_write(PF_DEVFN, offset, &value.to_le_bytes());
    }
}
