//! The I/O APIC, emulated in the VMM (KVM's split irqchip: the local APICs stay in the
//! kernel, the IOAPIC and the PICs do not, and this machine has no PIC).
//!
//! A model of the 82093AA as KVM's own in-kernel IOAPIC presents it: version 0x11, 24 pins,
//! IOREGSEL at offset 0x00 and IOWIN at 0x10 of a 4 KiB MMIO window. Each pin's
//! redirection entry is turned into an MSI (address and data in the format the local APICs
//! take) and handed to an [`MsiRoutes`] by pin number; the VMM backs it with one irqfd per
//! pin on GSIs 0-23, whose routes KVM also scans to learn which vectors are level-triggered
//! and so need an EOI exit. Raising a pin is then one eventfd write, from any thread.
//!
//! Semantics, as KVM's in-kernel IOAPIC has them:
//! - edge-triggered pins deliver on a rising edge while unmasked; an edge that arrives while
//!   the pin is masked is lost;
//! - level-triggered pins deliver while asserted, unmasked and with Remote IRR clear, and
//!   set Remote IRR; the EOI of the vector (a KVM_EXIT_IOAPIC_EOI) clears it and delivers
//!   again if the line is still asserted; unmasking an asserted level pin delivers;
//! - switching a pin to edge-triggered clears its Remote IRR (how Linux clears a stuck
//!   Remote IRR on IOAPICs without an EOI register);
//! - the polarity bit is stored and read back; lines are modelled as logically asserted or
//!   not, so it does not change delivery.
//!
//! The state is plain data ([`IoapicState`]), for snapshots.

use crate::sync::lock;
use std::sync::Arc;

use vm_device::MutDeviceMmio;
use vm_device::bus::{MmioAddress, MmioAddressOffset};

use crate::bits::{hi32, lo32};
use crate::interrupt::{InterruptLine, MsiRoutes};
use crate::{debug_ratelimited, warn_ratelimited};

/// Pins (redirection entries); pin n is GSI n.
pub const IOAPIC_NUM_PINS: u32 = 24;
/// [`IOAPIC_NUM_PINS`] as an array length and bound of pin indices.
pub const IOAPIC_PINS: usize = IOAPIC_NUM_PINS as usize;
/// Size of the MMIO window.
pub const IOAPIC_WINDOW: u64 = 0x1000;
/// Offset of the register select register.
pub const IOREGSEL: u64 = 0x00;
/// Offset of the data window.
pub const IOWIN: u64 = 0x10;

/// Indirect register indices.
pub mod reg {
    /// IOAPIC ID (bits 24-27).
    pub const ID: u32 = 0x00;
    /// Version (bits 0-7) and highest redirection entry (bits 16-23).
    pub const VERSION: u32 = 0x01;
    /// Arbitration ID.
    pub const ARBITRATION: u32 = 0x02;
    /// The low half of pin 0's redirection entry; pin n's is at `REDIR_BASE + 2n`, its
    /// high half one above.
    pub const REDIR_BASE: u32 = 0x10;
}

/// The version register: version 0x11, highest entry 23.
pub const VERSION_VALUE: u32 = 0x11 | ((IOAPIC_NUM_PINS - 1) << 16);

/// Redirection entry fields.
pub mod entry {
    /// Vector.
    pub const VECTOR: u64 = 0xff;
    /// Delivery mode (0 fixed, 1 lowest priority, 2 SMI, 4 NMI, 5 INIT, 7 ExtINT).
    pub const DELIVERY_MODE_SHIFT: u32 = 8;
    /// Delivery mode mask (after the shift).
    pub const DELIVERY_MODE_MASK: u64 = 0x7;
    /// Destination mode: logical when set.
    pub const DEST_LOGICAL: u64 = 1 << 11;
    /// Delivery status (read-only; delivery is immediate here, so always 0).
    pub const DELIVERY_STATUS: u64 = 1 << 12;
    /// Polarity: active low when set.
    pub const POLARITY_LOW: u64 = 1 << 13;
    /// Remote IRR (read-only).
    pub const REMOTE_IRR: u64 = 1 << 14;
    /// Trigger mode: level when set.
    pub const LEVEL: u64 = 1 << 15;
    /// Mask.
    pub const MASKED: u64 = 1 << 16;
    /// Destination APIC ID (physical) or logical destination.
    pub const DEST_SHIFT: u32 = 56;
    /// The bits a guest write can change.
    pub const WRITABLE: u64 = VECTOR
        | (DELIVERY_MODE_MASK << DELIVERY_MODE_SHIFT)
        | DEST_LOGICAL
        | POLARITY_LOW
        | LEVEL
        | MASKED
        | (0xff << DEST_SHIFT);
    /// An entry after reset: masked, everything else zero.
    pub const RESET: u64 = MASKED;
    /// Delivery mode: lowest priority.
    pub const LOWEST_PRIORITY: u64 = 1;
}

/// The MSI address of the local APICs.
const MSI_ADDRESS_BASE: u64 = 0xfee0_0000;

/// The MSI a redirection entry stands for (Intel SDM vol. 3, 11.11): the destination and
/// destination mode go into the address (with the redirection hint set for lowest-priority
/// delivery), vector, delivery mode and trigger mode into the data, level asserted.
pub fn entry_to_msi(e: u64) -> (u64, u32) {
    let dest = (e >> entry::DEST_SHIFT) & 0xff;
    let logical = e & entry::DEST_LOGICAL != 0;
    let mode = (e >> entry::DELIVERY_MODE_SHIFT) & entry::DELIVERY_MODE_MASK;
    let mut address = MSI_ADDRESS_BASE | (dest << 12);
    if logical {
        address |= 1 << 2;
    }
    if mode == entry::LOWEST_PRIORITY {
        address |= 1 << 3;
    }
    let mut data = (e & entry::VECTOR) as u32 | ((mode as u32) << 8) | (1 << 14);
    if e & entry::LEVEL != 0 {
        data |= 1 << 15;
    }
    (address, data)
}

/// The number the [`MsiRoutes`] know `pin` by. Callers hold a pin below [`IOAPIC_PINS`],
/// which fits; anything else maps to u16::MAX, a pin no routes have, which they refuse.
fn route_number(pin: usize) -> u16 {
    const _: () = assert!(IOAPIC_PINS <= u16::MAX as usize);
    u16::try_from(pin).unwrap_or(u16::MAX)
}

/// Everything the IOAPIC holds, as plain data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoapicState {
    /// The ID register (bits 24-27 meaningful).
    pub id: u32,
    /// The selected register.
    pub ioregsel: u32,
    /// Redirection entries, Remote IRR included.
    pub redirection: [u64; IOAPIC_PINS],
    /// Lines currently asserted (bit per pin).
    pub asserted: u32,
}

impl Default for IoapicState {
    fn default() -> Self {
        Self {
            id: 0,
            ioregsel: 0,
            redirection: [entry::RESET; IOAPIC_PINS],
            asserted: 0,
        }
    }
}

/// Counters for diagnostics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoapicStats {
    /// Interrupts delivered.
    pub delivered: u64,
    /// Edges that arrived while their pin was masked (lost, as on hardware).
    pub masked_edges: u64,
    /// Deliveries the routes refused (a KVM error).
    pub failed: u64,
}

/// The IOAPIC.
pub struct Ioapic {
    state: IoapicState,
    routes: Arc<dyn MsiRoutes>,
    /// The MSI last handed to the routes per pin, so only changes are committed.
    routed: [Option<(u64, u32)>; IOAPIC_PINS],
    stats: IoapicStats,
}

impl std::fmt::Debug for Ioapic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ioapic")
            .field("state", &self.state)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Ioapic {
    /// An IOAPIC with ID `id` in its reset state, delivering through `routes` (vector =
    /// pin).
    pub fn new(id: u8, routes: Arc<dyn MsiRoutes>) -> Self {
        Self::from_state(
            IoapicState {
                id: u32::from(id & 0xf) << 24,
                ..IoapicState::default()
            },
            routes,
        )
    }

    /// An IOAPIC resumed from `state`; the routes of unmasked pins are set again at their
    /// first delivery.
    pub fn from_state(state: IoapicState, routes: Arc<dyn MsiRoutes>) -> Self {
        Self {
            state,
            routes,
            routed: [None; IOAPIC_PINS],
            stats: IoapicStats::default(),
        }
    }

    /// The state, for snapshots and tests.
    pub fn state(&self) -> IoapicState {
        self.state
    }

    /// Counters.
    pub fn stats(&self) -> IoapicStats {
        self.stats
    }

    /// A guest read of the MMIO window at `offset`.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            IOREGSEL => self.state.ioregsel,
            IOWIN => self.read_register(self.state.ioregsel),
            _ => {
                debug_ratelimited!("ioapic: read at unknown offset {offset:#x}");
                0
            }
        };
        let bytes = u64::from(value).to_le_bytes();
        for (d, s) in data
            .iter_mut()
            .zip(bytes.iter().chain(std::iter::repeat(&0)))
        {
            *d = *s;
        }
    }

    /// A guest write of the MMIO window at `offset`. Only 32-bit writes change anything
    /// (the 82093AA's registers are 32-bit; other widths are logged and dropped).
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            debug_ratelimited!(
                "ioapic: {}-byte write at offset {offset:#x} ignored",
                data.len()
            );
            return;
        };
        let value = u32::from_le_bytes(bytes);
        match offset {
            IOREGSEL => self.state.ioregsel = value & 0xff,
            IOWIN => self.write_register(self.state.ioregsel, value),
            _ => debug_ratelimited!("ioapic: write at unknown offset {offset:#x}"),
        }
    }

    /// The redirection entry of `index` (a register index) and whether it is the high half.
    fn entry_index(index: u32) -> Option<(usize, bool)> {
        let rel = index.checked_sub(reg::REDIR_BASE)? as usize;
        let pin = rel / 2;
        (pin < IOAPIC_PINS).then_some((pin, rel % 2 == 1))
    }

    fn read_register(&self, index: u32) -> u32 {
        match index {
            reg::ID | reg::ARBITRATION => self.state.id,
            reg::VERSION => VERSION_VALUE,
            _ => match Self::entry_index(index) {
                Some((pin, true)) => hi32(self.state.redirection[pin]),
                Some((pin, false)) => lo32(self.state.redirection[pin]),
                None => {
                    debug_ratelimited!("ioapic: read of unknown register {index:#x}");
                    0
                }
            },
        }
    }

    fn write_register(&mut self, index: u32, value: u32) {
        match index {
            reg::ID => self.state.id = value & (0xf << 24),
            reg::VERSION | reg::ARBITRATION => {}
            _ => match Self::entry_index(index) {
                Some((pin, high)) => self.write_entry(pin, high, value),
                None => debug_ratelimited!("ioapic: write of unknown register {index:#x}"),
            },
        }
    }

    fn write_entry(&mut self, pin: usize, high: bool, value: u32) {
        let old = self.state.redirection[pin];
        let written = if high {
            (old & 0xffff_ffff) | (u64::from(value) << 32)
        } else {
            (old & !0xffff_ffff) | u64::from(value)
        };
        let mut new = (written & entry::WRITABLE) | (old & entry::REMOTE_IRR);
        if new & entry::LEVEL == 0 {
            new &= !entry::REMOTE_IRR;
        }
        self.state.redirection[pin] = new;
        let was_masked = old & entry::MASKED != 0;
        if new & entry::MASKED == 0 {
            // Commit the route as soon as the pin is usable, so the first interrupt does
            // not pay for it (and KVM learns level-triggered vectors before they fire).
            self.update_route(pin);
            if was_masked || new & entry::LEVEL != old & entry::LEVEL {
                self.service_level(pin);
            }
        }
    }

    /// Hands the pin's MSI to the routes if it changed.
    fn update_route(&mut self, pin: usize) -> bool {
        let msi = entry_to_msi(self.state.redirection[pin]);
        if self.routed[pin] == Some(msi) {
            return true;
        }
        match self.routes.set_route(route_number(pin), msi.0, msi.1) {
            Ok(()) => {
                self.routed[pin] = Some(msi);
                true
            }
            Err(e) => {
                warn_ratelimited!("ioapic: cannot route pin {pin}: {e}");
                self.routed[pin] = None;
                false
            }
        }
    }

    fn deliver(&mut self, pin: usize) {
        if !self.update_route(pin) {
            self.stats.failed += 1;
            return;
        }
        match self.routes.trigger(route_number(pin)) {
            Ok(()) => self.stats.delivered += 1,
            Err(e) => {
                self.stats.failed += 1;
                warn_ratelimited!("ioapic: cannot raise pin {pin}: {e}");
            }
        }
    }

    /// Delivers a level-triggered pin if it is asserted, unmasked and not in service.
    fn service_level(&mut self, pin: usize) {
        let e = self.state.redirection[pin];
        let asserted = self.state.asserted & (1 << pin) != 0;
        if e & entry::LEVEL != 0 && e & entry::MASKED == 0 && e & entry::REMOTE_IRR == 0 && asserted
        {
            self.state.redirection[pin] |= entry::REMOTE_IRR;
            self.deliver(pin);
        }
    }

    /// Sets the logical level of `pin` (true: asserted). Out-of-range pins are ignored.
    pub fn set_level(&mut self, pin: usize, asserted: bool) {
        if pin >= IOAPIC_PINS {
            debug_ratelimited!("ioapic: no pin {pin}");
            return;
        }
        let bit = 1u32 << pin;
        let was = self.state.asserted & bit != 0;
        if asserted {
            self.state.asserted |= bit;
        } else {
            self.state.asserted &= !bit;
        }
        let e = self.state.redirection[pin];
        if e & entry::LEVEL != 0 {
            self.service_level(pin);
        } else if asserted && !was {
            if e & entry::MASKED != 0 {
                self.stats.masked_edges += 1;
            } else {
                self.deliver(pin);
            }
        }
    }

    /// An edge on `pin`: asserted, then released (an ISA device's interrupt).
    pub fn pulse(&mut self, pin: usize) {
        self.set_level(pin, true);
        self.set_level(pin, false);
    }

    /// The local APICs signalled the EOI of `vector`: Remote IRR of every level-triggered
    /// pin on that vector clears, and a pin still asserted is delivered again.
    pub fn end_of_interrupt(&mut self, vector: u8) {
        for pin in 0..IOAPIC_PINS {
            let e = self.state.redirection[pin];
            if e & entry::VECTOR == u64::from(vector) && e & entry::REMOTE_IRR != 0 {
                self.state.redirection[pin] &= !entry::REMOTE_IRR;
                self.service_level(pin);
            }
        }
    }
}

impl MutDeviceMmio for Ioapic {
    fn mmio_read(&mut self, _base: MmioAddress, offset: MmioAddressOffset, data: &mut [u8]) {
        self.read(offset, data);
    }

    fn mmio_write(&mut self, _base: MmioAddress, offset: MmioAddressOffset, data: &[u8]) {
        self.write(offset, data);
    }
}

/// One pin of a shared IOAPIC as an edge-triggered device line (an ISA IRQ).
pub struct IoapicLine {
    ioapic: Arc<std::sync::Mutex<Ioapic>>,
    pin: usize,
}

impl std::fmt::Debug for IoapicLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoapicLine")
            .field("pin", &self.pin)
            .finish_non_exhaustive()
    }
}

impl IoapicLine {
    /// Pin `pin` of `ioapic`.
    pub fn new(ioapic: Arc<std::sync::Mutex<Ioapic>>, pin: usize) -> Self {
        Self { ioapic, pin }
    }
}

impl InterruptLine for IoapicLine {
    fn trigger(&self) -> std::io::Result<()> {
        lock(&self.ioapic).pulse(self.pin);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
