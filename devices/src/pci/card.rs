//! What a slot holds: a card, with one or more PCI functions.
//!
//! A card answers configuration cycles for every function number (devfn) it implements on
//! its bus and decodes its own BAR windows. A plain device is a card with function 0 only
//! ([`FunctionCard::single`]); a multi-function device lists its functions; an SR-IOV
//! physical function exposes its virtual functions at the devfns its SR-IOV capability
//! computes (beyond 7 with ARI); a function served by another process (vfio-user) is a card
//! whose accesses cross a socket.
//!
//! Each card sits behind its own lock ([`SharedCard`]). The root complex's lock covers
//! routing only: it finds the card for a config cycle or an address, the lock is released,
//! and only then is the card locked and called. So a card that waits (a socket round trip to
//! another process) stalls the vCPU that touched it, not every vCPU's PCI access.

use std::sync::{Arc, Mutex};

use super::{Bar, BarKind, PciDevice, regs};
use crate::bits::{hi32, lo32};

/// A card in a slot, or an integrated endpoint on bus 0.
pub trait PciCard: Send + std::fmt::Debug {
    /// Whether the card implements function `devfn` of its bus (an 8-bit function number
    /// when the port above forwards ARI, else device << 3 | function).
    fn has_function(&self, devfn: u8) -> bool;

    /// A config read of 1, 2 or 4 bytes at `offset` (0..4096) of function `devfn`; absent
    /// functions read all ones.
    fn config_read(&mut self, devfn: u8, offset: usize, data: &mut [u8]);

    /// A config write of function `devfn`; absent functions ignore it.
    fn config_write(&mut self, devfn: u8, offset: usize, data: &[u8]);

    /// A memory read at guest-physical `addr`: true if a BAR of one of the card's functions
    /// (with memory decoding on) claims `[addr, addr + data.len())`.
    fn mmio_read(&mut self, addr: u64, data: &mut [u8]) -> bool;

    /// A memory write at guest-physical `addr`: true if a BAR claims it.
    fn mmio_write(&mut self, addr: u64, data: &[u8]) -> bool;

    /// Programs every memory BAR of every function at the address `alloc` gives it and turns
    /// memory decoding on, as firmware does at power-on.
    fn assign_bars(&mut self, alloc: &mut dyn FnMut(Bar) -> Option<u64>) -> Result<(), BarError>;

    /// The VM is pausing: the card's threads (or the process serving it) stop touching
    /// guest memory. Returns at once; see [`PciCard::is_paused`].
    fn pause(&mut self);

    /// The VM runs again.
    fn resume(&mut self);

    /// Whether the card holds still after [`PciCard::pause`].
    fn is_paused(&self) -> bool;
}

/// A card behind its own lock.
pub type SharedCard = Arc<Mutex<dyn PciCard>>;

/// Why a card's BARs cannot be assigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BarError {
    /// The BARs do not fit the window.
    #[error("the BARs do not fit the window")]
    WindowFull,
    /// I/O BARs are not supported (root ports have no I/O window).
    #[error("devices with I/O BARs are not supported")]
    IoBar,
    /// A 32-bit BAR was given an address at or above 4 GiB, which it cannot hold.
    #[error("a 32-bit BAR cannot be placed at {0:#x}")]
    Above4G(u64),
}

/// Programs every memory BAR of `device` at the address `alloc` gives it, then turns memory
/// decoding on. I/O BARs are refused, and so is an address above 4 GiB for a 32-bit BAR
/// (it would be programmed truncated).
pub fn assign_function_bars(
    device: &mut dyn PciDevice,
    alloc: &mut dyn FnMut(Bar) -> Option<u64>,
) -> Result<(), BarError> {
    for i in 0..6 {
        let Some(bar) = device.config().bar(i) else {
            continue;
        };
        if bar.kind == BarKind::Io {
            return Err(BarError::IoBar);
        }
        let base = alloc(bar).ok_or(BarError::WindowFull)?;
        if bar.kind != BarKind::Memory64 && hi32(base) != 0 {
            return Err(BarError::Above4G(base));
        }
        let reg = regs::BAR0 + 4 * i;
        device.config_write(reg, &lo32(base).to_le_bytes());
        if bar.kind == BarKind::Memory64 {
            device.config_write(reg + 4, &hi32(base).to_le_bytes());
        }
    }
    let cmd = device.config().read_u16(regs::COMMAND) | regs::CMD_MEMORY;
    device.config_write(regs::COMMAND, &cmd.to_le_bytes());
    Ok(())
}

/// The memory BAR of `cfg` that decodes `[addr, end)`, and the offset in it, if decoding is
/// on.
pub fn decode_bar(cfg: &super::ConfigSpace, addr: u64, end: u64) -> Option<(usize, u64)> {
    if !cfg.memory_enabled() {
        return None;
    }
    (0..6).find_map(|i| {
        let bar = cfg.bar(i)?;
        let base = cfg.bar_address(i)?;
        let inside = bar.kind != BarKind::Io
            && base != 0
            && addr >= base
            && end <= base.checked_add(bar.size)?;
        inside.then(|| (i, addr - base))
    })
}

/// A card made of local functions, each a [`PciDevice`] at its devfn.
#[derive(Debug)]
pub struct FunctionCard {
    functions: Vec<(u8, Box<dyn PciDevice>)>,
}

impl FunctionCard {
    /// A single-function card: `device` is function 0.
    pub fn single(device: Box<dyn PciDevice>) -> Self {
        Self {
            functions: vec![(0, device)],
        }
    }

    /// A multi-function card. Function 0 must be among them (a device without function 0
    /// does not exist for enumeration); duplicate devfns keep the first.
    pub fn multi(mut functions: Vec<(u8, Box<dyn PciDevice>)>) -> Option<Self> {
        let mut seen = [false; 256];
        functions.retain(|(devfn, _)| !std::mem::replace(&mut seen[usize::from(*devfn)], true));
        seen[0].then_some(Self { functions })
    }

    /// This card behind its own lock.
    pub fn shared(self) -> SharedCard {
        Arc::new(Mutex::new(self))
    }

    fn function(&mut self, devfn: u8) -> Option<&mut Box<dyn PciDevice>> {
        self.functions
            .iter_mut()
            .find(|(d, _)| *d == devfn)
            .map(|(_, f)| f)
    }

    fn bar_at(&mut self, addr: u64, len: usize) -> Option<(&mut Box<dyn PciDevice>, usize, u64)> {
        let end = addr.checked_add(len as u64)?;
        self.functions.iter_mut().find_map(|(_, f)| {
            let (bar, off) = decode_bar(f.config(), addr, end)?;
            Some((f, bar, off))
        })
    }
}

impl PciCard for FunctionCard {
    fn has_function(&self, devfn: u8) -> bool {
        self.functions.iter().any(|(d, _)| *d == devfn)
    }

    fn config_read(&mut self, devfn: u8, offset: usize, data: &mut [u8]) {
        match self.function(devfn) {
            Some(f) => f.config_read(offset, data),
            None => data.fill(0xff),
        }
    }

    fn config_write(&mut self, devfn: u8, offset: usize, data: &[u8]) {
        if let Some(f) = self.function(devfn) {
            f.config_write(offset, data);
        }
    }

    fn mmio_read(&mut self, addr: u64, data: &mut [u8]) -> bool {
        match self.bar_at(addr, data.len()) {
            Some((f, bar, off)) => {
                f.bar_read(bar, off, data);
                true
            }
            None => false,
        }
    }

    fn mmio_write(&mut self, addr: u64, data: &[u8]) -> bool {
        match self.bar_at(addr, data.len()) {
            Some((f, bar, off)) => {
                f.bar_write(bar, off, data);
                true
            }
            None => false,
        }
    }

    fn assign_bars(&mut self, alloc: &mut dyn FnMut(Bar) -> Option<u64>) -> Result<(), BarError> {
        self.functions
            .iter_mut()
            .try_for_each(|(_, f)| assign_function_bars(&mut **f, alloc))
    }

    fn pause(&mut self) {
        self.functions.iter_mut().for_each(|(_, f)| f.pause());
    }

    fn resume(&mut self) {
        self.functions.iter_mut().for_each(|(_, f)| f.resume());
    }

    fn is_paused(&self) -> bool {
        self.functions.iter().all(|(_, f)| f.is_paused())
    }
}
