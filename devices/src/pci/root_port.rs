//! A PCIe root port: a type-1 header whose bus numbers and windows the VMM pre-programs
//! (large enough for what a slot will hold, SR-IOV functions included), a PCIe capability
//! with a native-hotplug slot, MSI for hotplug events, ARI forwarding and ACS.
//!
//! Slot behaviour follows what Linux's pciehp expects (see the reference, section 6):
//! - every Slot Control write completes at once and sets Command Completed (NCCS is 0);
//! - an MSI is sent when HPIE is set and the OR over the event bits of (status & enable)
//!   goes from 0 to 1, whether an event arrived or the guest changed the enables;
//! - hot-add sets Presence Detect State and Data Link Layer Link Active, then PDC+DLLSC;
//! - orderly removal presses the attention button; when the guest then powers the slot off
//!   (PCC=1), the device is detached, presence and link drop, and PDC+DLLSC are raised;
//! - surprise removal drops presence and link at once and raises PDC+DLLSC.
//!
//! The port lives inside the root complex and runs under its lock, which covers routing
//! only: the MSIs it raises and the cards it lets go are queued ([`RootPort::take_deferred`])
//! and delivered or dropped by the caller once the lock is released.

use std::sync::Arc;

use super::capability::{self, SlotConfig};
use super::card::SharedCard;
use super::regs::*;
use super::{ConfigSpace, HeaderType, PciDevice, PciId, VENDOR_REDHAT};
use crate::interrupt::MsiSink;
use vmm_sys_util::eventfd::EventFd;

/// QEMU's pcie-root-port device ID, under Red Hat's vendor ID.
pub const ROOT_PORT_DEVICE_ID: u16 = 0x000c;

/// How the VMM sets a root port up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RootPortConfig {
    /// Port number (link capabilities) and physical slot number.
    pub port_number: u8,
    /// The bus behind it (secondary = subordinate).
    pub bus: u8,
    /// Its 32-bit memory window (1 MiB aligned, inclusive end).
    pub mem_window: (u32, u32),
    /// Its 64-bit prefetchable window (1 MiB aligned, inclusive end).
    pub pref_window: (u64, u64),
}

/// What happened in a slot, for the VMM to act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HotplugEvent {
    /// The guest powered the slot off after an attention-button press: the device is
    /// detached.
    Ejected,
}

/// What a port leaves for its caller to do once the root complex's lock is released.
#[derive(Default)]
pub struct Deferred {
    /// MSIs to send: sink, address, data.
    pub msis: Vec<(Arc<dyn MsiSink>, u64, u32)>,
    /// Cards that left their slots (dropping a card may stop threads and close backends).
    pub removed: Vec<SharedCard>,
}

impl std::fmt::Debug for Deferred {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deferred")
            .field("msis", &self.msis.len())
            .field("removed", &self.removed.len())
            .finish()
    }
}

impl Deferred {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.msis.is_empty() && self.removed.is_empty()
    }

    /// Moves `other`'s work into this one.
    pub fn append(&mut self, mut other: Deferred) {
        self.msis.append(&mut other.msis);
        self.removed.append(&mut other.removed);
    }

    /// Sends the MSIs, in order, and drops the cards.
    pub fn run(self) {
        for (sink, address, data) in self.msis {
            if let Err(e) = sink.send_msi(address, data) {
                crate::warn_ratelimited!("root port: MSI failed: {e}");
            }
        }
        drop(self.removed);
    }
}

/// A root port.
pub struct RootPort {
    config: ConfigSpace,
    cfg: RootPortConfig,
    exp: usize,
    msi: usize,
    msi_sink: Arc<dyn MsiSink>,
    /// Whether the hotplug interrupt is asserted (the OR of enabled events).
    asserted: bool,
    device: Option<SharedCard>,
    /// Work for the caller, outside the root complex's lock.
    deferred: Deferred,
    /// Attention button pressed and not yet answered by a power-off.
    eject_requested: bool,
    events: Vec<HotplugEvent>,
    notifier: Option<Arc<EventFd>>,
}

impl std::fmt::Debug for RootPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootPort")
            .field("cfg", &self.cfg)
            .field("occupied", &self.device.is_some())
            .finish_non_exhaustive()
    }
}

impl RootPort {
    /// A root port with an empty slot; hotplug interrupts go to `msi_sink`.
    pub fn new(cfg: RootPortConfig, msi_sink: Arc<dyn MsiSink>) -> Self {
        let mut config = ConfigSpace::new(
            HeaderType::Bridge,
            PciId {
                vendor: VENDOR_REDHAT,
                device: ROOT_PORT_DEVICE_ID,
                class: [0x06, 0x04, 0x00],
                revision: 0,
                subsystem_vendor: 0,
                subsystem: 0,
            },
        );
        config.set_u8(PRIMARY_BUS, 0);
        config.set_u8(SECONDARY_BUS, cfg.bus);
        config.set_u8(SUBORDINATE_BUS, cfg.bus);
        config.set_u16(MEMORY_BASE, (cfg.mem_window.0 >> 16) as u16 & 0xfff0);
        config.set_u16(MEMORY_LIMIT, (cfg.mem_window.1 >> 16) as u16 & 0xfff0);
        config.set_u16(
            PREF_MEMORY_BASE,
            ((cfg.pref_window.0 >> 16) & 0xfff0) as u16 | 1,
        );
        config.set_u16(
            PREF_MEMORY_LIMIT,
            ((cfg.pref_window.1 >> 16) & 0xfff0) as u16 | 1,
        );
        config.set_u32(PREF_BASE_UPPER32, (cfg.pref_window.0 >> 32) as u32);
        config.set_u32(PREF_LIMIT_UPPER32, (cfg.pref_window.1 >> 32) as u32);
        // No I/O window (the VMM forwards no port I/O to slots): I/O base/limit and their
        // upper halves are read-only 0, which tells the guest the window is not
        // implemented (Linux then assigns no I/O range to the port).
        config.writable_u16(IO_BASE, 0);
        config.writable_u32(IO_BASE_UPPER16, 0);
        config.set_u16(COMMAND, CMD_MEMORY | CMD_MASTER);
        // Capabilities: these cannot fail on a fresh header (fixed sizes, empty chain).
        let pcie = capability::pcie(
            EXP_TYPE_ROOT_PORT,
            cfg.port_number,
            Some(SlotConfig {
                number: u16::from(cfg.port_number),
            }),
        );
        let exp = config
            .add_capability(&pcie.body, &pcie.writable)
            .unwrap_or_default();
        config.w1c_u16(exp + EXP_SLTSTA, SLTSTA_EVENTS);
        config.w1c_u32(exp + EXP_RTSTA, 1 << 16);
        let msi = capability::msi();
        let msi = config
            .add_capability(&msi.body, &msi.writable)
            .unwrap_or_default();
        let acs = capability::acs();
        let _ = config.add_ext_capability(EXT_CAP_ID_ACS, 1, &acs.body, &acs.writable);
        Self {
            config,
            cfg,
            exp,
            msi,
            msi_sink,
            asserted: false,
            device: None,
            deferred: Deferred::default(),
            eject_requested: false,
            events: Vec::new(),
            notifier: None,
        }
    }

    /// Written whenever an event is queued for [`RootPort::take_events`].
    pub fn set_notifier(&mut self, evt: Arc<EventFd>) {
        self.notifier = Some(evt);
    }

    /// The port's settings.
    pub fn port_config(&self) -> RootPortConfig {
        self.cfg
    }

    /// The bus range behind the port as the guest has programmed it.
    pub fn bus_range(&self) -> (u8, u8) {
        (
            self.config.read_u8(SECONDARY_BUS),
            self.config.read_u8(SUBORDINATE_BUS),
        )
    }

    /// Whether `addr` lies in one of the memory windows the guest programmed.
    pub fn forwards(&self, addr: u64) -> bool {
        let c = &self.config;
        let mem_base = u64::from(c.read_u16(MEMORY_BASE) & 0xfff0) << 16;
        let mem_limit = (u64::from(c.read_u16(MEMORY_LIMIT) & 0xfff0) << 16) | 0xf_ffff;
        let pref_base = (u64::from(c.read_u16(PREF_MEMORY_BASE) & 0xfff0) << 16)
            | (u64::from(c.read_u32(PREF_BASE_UPPER32)) << 32);
        let pref_limit = (u64::from(c.read_u16(PREF_MEMORY_LIMIT) & 0xfff0) << 16)
            | (u64::from(c.read_u32(PREF_LIMIT_UPPER32)) << 32)
            | 0xf_ffff;
        (mem_base <= mem_limit && (mem_base..=mem_limit).contains(&addr))
            || (pref_base <= pref_limit && (pref_base..=pref_limit).contains(&addr))
    }

    /// Whether ARI forwarding is enabled (then any devfn on the secondary bus reaches the
    /// device's functions).
    pub fn ari_forwarding(&self) -> bool {
        self.config.read_u16(self.exp + EXP_DEVCTL2) & DEVCTL2_ARI != 0
    }

    /// Whether a device is in the slot.
    pub fn occupied(&self) -> bool {
        self.device.is_some()
    }

    /// The card in the slot.
    pub fn card(&self) -> Option<&SharedCard> {
        self.device.as_ref()
    }

    /// MSIs to send and cards to drop, queued while the root complex's lock was held.
    pub fn take_deferred(&mut self) -> Deferred {
        std::mem::take(&mut self.deferred)
    }

    fn slot_status(&self) -> u16 {
        self.config.read_u16(self.exp + EXP_SLTSTA)
    }

    fn set_slot_status(&mut self, value: u16) {
        self.config.set_u16(self.exp + EXP_SLTSTA, value);
    }

    fn slot_control(&self) -> u16 {
        self.config.read_u16(self.exp + EXP_SLTCTL)
    }

    fn set_link_active(&mut self, up: bool) {
        let mut sta = self.config.read_u16(self.exp + EXP_LNKSTA);
        if up {
            sta |= LNKSTA_DLLLA;
        } else {
            sta &= !LNKSTA_DLLLA;
        }
        self.config.set_u16(self.exp + EXP_LNKSTA, sta);
    }

    /// Raises slot events and interrupts the guest per the pciehp rule.
    fn raise(&mut self, events: u16) {
        let sta = self.slot_status() | (events & SLTSTA_EVENTS);
        self.set_slot_status(sta);
        self.update_interrupt();
    }

    /// Which event bits the guest has enabled, in Slot Status bit positions.
    fn enabled_events(ctl: u16) -> u16 {
        let pairs = [
            (SLTCTL_ABPE, SLTSTA_ABP),
            (SLTCTL_PFDE, SLTSTA_PFD),
            (SLTCTL_MRLSCE, SLTSTA_MRLSC),
            (SLTCTL_PDCE, SLTSTA_PDC),
            (SLTCTL_CCIE, SLTSTA_CC),
            (SLTCTL_DLLSCE, SLTSTA_DLLSC),
        ];
        pairs
            .iter()
            .filter(|(c, _)| ctl & c != 0)
            .fold(0, |acc, (_, s)| acc | s)
    }

    fn update_interrupt(&mut self) {
        let ctl = self.slot_control();
        let pending = ctl & SLTCTL_HPIE != 0 && self.slot_status() & Self::enabled_events(ctl) != 0;
        if pending && !self.asserted {
            self.send_msi();
        }
        self.asserted = pending;
    }

    fn send_msi(&mut self) {
        let m = self.msi;
        let control = self.config.read_u16(m + 2);
        if control & 1 == 0 {
            // MSI disabled: pciehp would poll; nothing to send.
            return;
        }
        if self.config.read_u32(m + 16) & 1 != 0 {
            // Masked: remember it as pending.
            self.config.set_u32(m + 20, 1);
            return;
        }
        let address =
            u64::from(self.config.read_u32(m + 4)) | (u64::from(self.config.read_u32(m + 8)) << 32);
        let data = u32::from(self.config.read_u16(m + 12));
        self.deferred
            .msis
            .push((self.msi_sink.clone(), address, data));
    }

    /// Puts `device` in the slot and tells the guest (hot-add). Fails if occupied.
    pub fn plug(&mut self, device: SharedCard) -> Result<(), SharedCard> {
        if self.device.is_some() {
            return Err(device);
        }
        self.device = Some(device);
        self.eject_requested = false;
        let sta = self.slot_status() | SLTSTA_PDS;
        self.set_slot_status(sta);
        self.set_link_active(true);
        self.raise(SLTSTA_PDC | SLTSTA_DLLSC);
        Ok(())
    }

    /// Puts `device` in the slot as if it had been there at power-on (no events).
    pub fn plug_cold(&mut self, device: SharedCard) -> Result<(), SharedCard> {
        if self.device.is_some() {
            return Err(device);
        }
        self.device = Some(device);
        let sta = self.slot_status() | SLTSTA_PDS;
        self.set_slot_status(sta);
        self.set_link_active(true);
        Ok(())
    }

    /// Presses the attention button: the start of an orderly removal. The device goes when
    /// the guest powers the slot off ([`HotplugEvent::Ejected`]).
    pub fn request_eject(&mut self) -> bool {
        if self.device.is_none() {
            return false;
        }
        self.eject_requested = true;
        self.raise(SLTSTA_ABP);
        true
    }

    /// Removes the card at once, as if yanked: presence and link drop. The card is
    /// dropped with the deferred work.
    pub fn surprise_remove(&mut self) -> bool {
        let Some(card) = self.device.take() else {
            return false;
        };
        self.deferred.removed.push(card);
        self.eject_requested = false;
        self.unplugged();
        true
    }

    fn unplugged(&mut self) {
        let sta = self.slot_status() & !SLTSTA_PDS;
        self.set_slot_status(sta);
        self.set_link_active(false);
        self.raise(SLTSTA_PDC | SLTSTA_DLLSC);
    }

    /// Events since the last call.
    pub fn take_events(&mut self) -> Vec<HotplugEvent> {
        std::mem::take(&mut self.events)
    }

    fn slot_control_written(&mut self, old: u16) {
        let ctl = self.slot_control();
        // Power controller: PCC 0 -> 1 is a power-off of the slot.
        let powered_off = old & SLTCTL_PCC == 0 && ctl & SLTCTL_PCC != 0;
        if powered_off && let Some(card) = self.device.take() {
            self.deferred.removed.push(card);
            self.eject_requested = false;
            self.events.push(HotplugEvent::Ejected);
            if let Some(n) = &self.notifier {
                let _ = n.write(1);
            }
            self.unplugged();
        }
        // Every Slot Control write completes at once.
        self.raise(SLTSTA_CC);
    }
}

impl PciDevice for RootPort {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_write(&mut self, offset: usize, data: &[u8]) {
        let sltctl = self.exp + EXP_SLTCTL;
        let old_ctl = self.slot_control();
        if !self.config.write(offset, data) {
            return;
        }
        let end = offset + data.len();
        let touches = |reg: usize, len: usize| offset < reg + len && reg < end;
        if touches(sltctl, 2) {
            self.slot_control_written(old_ctl);
        } else if touches(self.exp + EXP_SLTSTA, 2) {
            // The guest acknowledged events: the interrupt may deassert.
            self.update_interrupt();
        }
        // A pending MSI is delivered when unmasked.
        if touches(self.msi + 16, 4)
            && self.config.read_u32(self.msi + 16) & 1 == 0
            && self.config.read_u32(self.msi + 20) & 1 != 0
        {
            self.config.set_u32(self.msi + 20, 0);
            self.send_msi();
        }
    }
}

#[cfg(test)]
mod tests;
