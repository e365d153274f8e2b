//! A ring-3 driver for a PCIe native-hotplug slot, doing what Linux's pciehp does with
//! one: finds the slot's root port in the PCI topology by physical slot number, routes the
//! port's MSI to this CPU, enables the slot's events, issues Slot Control commands (each
//! waits for its Command Completed), and reads presence, link and the function in the slot.

use core::fmt;

use crate::lapic;
use crate::pcie::regs::{
    CAP_EXP, CAP_MSI, EXP_FLAGS, EXP_FLAGS_SLOT, EXP_LNKSTA, EXP_LNKSTA_DLLLA, EXP_SLTCAP,
    EXP_SLTCAP_HPC, EXP_SLTCAP_PSN_SHIFT, EXP_SLTCTL, EXP_SLTCTL_ABPE, EXP_SLTCTL_CCIE,
    EXP_SLTCTL_DLLSCE, EXP_SLTCTL_HPIE, EXP_SLTCTL_PCC, EXP_SLTCTL_PIC, EXP_SLTCTL_PWR_IND_OFF,
    EXP_SLTSTA, EXP_SLTSTA_CC, EXP_SLTSTA_EVENTS, EXP_SLTSTA_PDS, EXP_TYPE_ROOT_PORT,
    MSI_ADDRESS_HI, MSI_ADDRESS_LO, MSI_DATA_64, MSI_FLAGS, MSI_FLAGS_ENABLE, VENDOR_ID, exp_type,
};
use crate::pcie::{Bdf, Ecam, Topology};
use crate::ring0::SPURIOUS_VECTOR;
use crate::time;

/// The IDT vector the port's MSI delivers.
pub const VECTOR: u8 = 0x60;

/// Why the slot cannot be driven.
#[derive(Debug, Clone, Copy)]
pub enum SlotError {
    /// No root port has a hot-plug slot with this physical slot number.
    NotFound(u32),
    /// The slot's root port has no MSI capability.
    MsiMissing(Bdf),
    /// A Slot Control write (this value) was not completed in time.
    CommandTimeout(u16),
}

impl fmt::Display for SlotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotFound(n) => write!(f, "no root port with hot-plug slot {n}"),
            Self::MsiMissing(port) => write!(f, "{port}: no MSI capability"),
            Self::CommandTimeout(v) => {
                write!(f, "no Command Completed for Slot Control {v:#x}")
            }
        }
    }
}

/// A hot-plug slot below a root port.
#[derive(Debug)]
pub struct Slot {
    ecam: Ecam,
    /// The root port.
    pub port: Bdf,
    /// The port's secondary bus, where the card's functions appear.
    pub bus: u8,
    /// Offset of the port's PCI Express capability.
    exp: u16,
    /// Offset of the port's MSI capability.
    msi: u16,
}

impl Slot {
    /// The slot with physical slot number `number`: a root port in `topo` whose PCI
    /// Express capability says it implements a hot-plug capable slot of that number.
    pub fn find(ecam: &Ecam, topo: &Topology, number: u32) -> Result<Self, SlotError> {
        for f in topo.as_slice() {
            let Some(buses) = f.buses else { continue };
            let caps = ecam.capabilities(f.bdf);
            let Some(exp) = caps.find(CAP_EXP) else {
                continue;
            };
            let flags = ecam.read16(f.bdf, exp + EXP_FLAGS);
            let sltcap = ecam.read32(f.bdf, exp + EXP_SLTCAP);
            if exp_type(flags) != EXP_TYPE_ROOT_PORT
                || flags & EXP_FLAGS_SLOT == 0
                || sltcap & EXP_SLTCAP_HPC == 0
                || sltcap >> EXP_SLTCAP_PSN_SHIFT != number
            {
                continue;
            }
            return Ok(Self {
                ecam: *ecam,
                port: f.bdf,
                bus: buses.secondary,
                exp,
                msi: caps.find(CAP_MSI).ok_or(SlotError::MsiMissing(f.bdf))?,
            });
        }
        Err(SlotError::NotFound(number))
    }

    /// Routes the port's MSI to this CPU at [`VECTOR`] and enables the events pciehp
    /// enables on a slot with an attention button: button, command completion, presence
    /// and link changes; the power indicator is off and the slot powered.
    pub fn enable_events(&self) -> Result<(), SlotError> {
        let (port, msi) = (self.port, self.msi);
        lapic::enable(SPURIOUS_VECTOR);
        let address = lapic::msi_address(lapic::id());
        self.ecam.write32(port, msi + MSI_ADDRESS_LO, address);
        self.ecam.write32(port, msi + MSI_ADDRESS_HI, 0);
        self.ecam
            .write16(port, msi + MSI_DATA_64, u16::from(VECTOR));
        self.ecam.write16(port, msi + MSI_FLAGS, MSI_FLAGS_ENABLE);
        self.ack(EXP_SLTSTA_EVENTS);
        let enable = EXP_SLTCTL_ABPE | EXP_SLTCTL_CCIE | EXP_SLTCTL_HPIE | EXP_SLTCTL_DLLSCE;
        let keep = self.control() & !(EXP_SLTCTL_PIC | EXP_SLTCTL_PCC);
        self.command(keep | enable | EXP_SLTCTL_PWR_IND_OFF)
    }

    /// Slot Status.
    pub fn status(&self) -> u16 {
        self.ecam.read16(self.port, self.exp + EXP_SLTSTA)
    }

    /// Slot Control.
    pub fn control(&self) -> u16 {
        self.ecam.read16(self.port, self.exp + EXP_SLTCTL)
    }

    /// Clears the Slot Status event bits `bits` (RW1C).
    pub fn ack(&self, bits: u16) {
        self.ecam.write16(self.port, self.exp + EXP_SLTSTA, bits);
    }

    /// A Slot Control write, waiting for its command completion and acknowledging it.
    pub fn command(&self, value: u16) -> Result<(), SlotError> {
        self.ecam.write16(self.port, self.exp + EXP_SLTCTL, value);
        let (done, _) = time::wait_until(|| self.status() & EXP_SLTSTA_CC != 0);
        if !done {
            return Err(SlotError::CommandTimeout(value));
        }
        self.ack(EXP_SLTSTA_CC);
        Ok(())
    }

    /// Sets the power indicator to `state`, one of the `EXP_SLTCTL_PWR_IND_*` values.
    pub fn set_power_indicator(&self, state: u16) -> Result<(), SlotError> {
        self.command((self.control() & !EXP_SLTCTL_PIC) | state)
    }

    /// Turns the power indicator off and the slot's power off, in one command.
    pub fn power_off(&self) -> Result<(), SlotError> {
        let ctl = self.control() & !EXP_SLTCTL_PIC;
        self.command(ctl | EXP_SLTCTL_PWR_IND_OFF | EXP_SLTCTL_PCC)
    }

    /// Turns the slot's power on (the indicator stays as it is).
    pub fn power_on(&self) -> Result<(), SlotError> {
        self.command(self.control() & !EXP_SLTCTL_PCC)
    }

    /// Presence Detect State: a card is in the slot.
    pub fn present(&self) -> bool {
        self.status() & EXP_SLTSTA_PDS != 0
    }

    /// Data Link Layer Link Active: the link to the card is up.
    pub fn link_up(&self) -> bool {
        self.ecam.read16(self.port, self.exp + EXP_LNKSTA) & EXP_LNKSTA_DLLLA != 0
    }

    /// The vendor and device ID dword of function 0 in the slot (all ones: none).
    pub fn function_id(&self) -> u32 {
        self.ecam.read32(Bdf::new(self.bus, 0, 0), VENDOR_ID)
    }
}
