//! The root complex: the host bridge and root ports on bus 0, each port's slot (a card, on
//! its own bus), integrated endpoints on bus 0, and the decoding of configuration cycles
//! from ECAM (MMIO) and from the legacy 0xCF8/0xCFC port pair, which stay coherent because
//! both land in the same models.
//!
//! [`RootComplex`] is the routing state; [`PciRoot`] is how vCPUs and the VMM reach it. Its
//! lock covers routing only: a config cycle or a memory access is routed under the lock
//! (the host bridge and the root ports, which live in the root complex, are accessed
//! there), and a card is locked and called only after the root complex's lock is released.
//! MSIs that root ports raise and cards that leave their slots are handled after release
//! too ([`Deferred`]).

use crate::sync::lock;
use std::sync::{Arc, Mutex, MutexGuard};

use super::card::{BarError, SharedCard};
use super::root_port::Deferred;
use super::{Bar, BarKind, HostBridge, PciDevice, RootPort, RootPortConfig};
use crate::debug_ratelimited;

/// The ECAM window: base address and the buses it decodes (bus 0 at `base`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EcamLayout {
    /// Guest-physical base (of bus 0).
    pub base: u64,
    /// Last bus decoded (the window is (last_bus + 1) MiB).
    pub last_bus: u8,
}

impl EcamLayout {
    /// Size of the window in bytes.
    pub const fn size(&self) -> u64 {
        (self.last_bus as u64 + 1) << 20
    }
}

/// Legacy configuration address port.
pub const CONFIG_ADDRESS_PORT: u16 = 0xcf8;
/// Legacy configuration data port (4 bytes).
pub const CONFIG_DATA_PORT: u16 = 0xcfc;

/// A config-space address: bus, devfn, register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigAddress {
    /// Bus number.
    pub bus: u8,
    /// Device << 3 | function.
    pub devfn: u8,
    /// Register offset (0..4096).
    pub reg: usize,
}

impl ConfigAddress {
    /// Decodes an offset into the ECAM window.
    pub fn from_ecam(offset: u64) -> Self {
        Self {
            bus: ((offset >> 20) & 0xff) as u8,
            devfn: ((offset >> 12) & 0xff) as u8,
            reg: (offset & 0xfff) as usize,
        }
    }

    /// Decodes a 0xCF8 value plus the byte offset into 0xCFC; None if the enable bit is
    /// clear.
    pub fn from_cf8(cf8: u32, data_offset: u8) -> Option<Self> {
        if cf8 & 0x8000_0000 == 0 {
            return None;
        }
        Some(Self {
            bus: ((cf8 >> 16) & 0xff) as u8,
            devfn: ((cf8 >> 8) & 0xff) as u8,
            reg: (cf8 & 0xfc) as usize + usize::from(data_offset & 3),
        })
    }
}

/// Why a card cannot be plugged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlugError {
    /// No root port with this index.
    #[error("there is no root port {0}")]
    NoSuchPort(usize),
    /// The slot holds a card already.
    #[error("the slot of root port {0} is occupied")]
    Occupied(usize),
    /// The card's BARs do not fit the windows.
    #[error("the BARs do not fit the windows of {0}")]
    Bars(String, #[source] BarError),
}

/// Hands out addresses from a window for BARs, each aligned to its size.
struct BumpWindow {
    next: u64,
    /// Inclusive end.
    end: u64,
}

impl BumpWindow {
    fn take(&mut self, size: u64) -> Option<u64> {
        let base = self.next.checked_next_multiple_of(size)?;
        let last = base.checked_add(size - 1)?;
        (last <= self.end).then(|| {
            self.next = last + 1;
            base
        })
    }
}

/// Where a config cycle lands.
enum Target<'a> {
    /// A function of the root complex itself (host bridge, root port).
    Local(&'a mut dyn PciDevice),
    /// A function of a card: the card and the devfn it answers to.
    Card(SharedCard, u8),
    /// Nothing.
    Absent,
}

/// The root complex.
#[derive(Debug)]
pub struct RootComplex {
    host_bridge: HostBridge,
    ports: Vec<RootPort>,
    /// Root-complex integrated endpoints on bus 0 (the virtio-iommu), by device number.
    root_devices: Vec<(u8, SharedCard)>,
    /// Where their BARs go (inclusive end), and the next free address.
    root_window: (u64, u64),
    root_next: u64,
    ecam: EcamLayout,
    config_address: u32,
}

impl RootComplex {
    /// A root complex with `ports` at 00:01.0, 00:02.0, ... (at most 31); devices on bus 0
    /// get BARs in `root_window` (inclusive end).
    pub fn new(ecam: EcamLayout, ports: Vec<RootPort>, root_window: (u64, u64)) -> Self {
        Self {
            host_bridge: HostBridge::new(),
            ports: ports.into_iter().take(31).collect(),
            root_devices: Vec::new(),
            root_window,
            root_next: root_window.0,
            ecam,
            config_address: 0,
        }
    }

    /// The ECAM window.
    pub fn ecam(&self) -> EcamLayout {
        self.ecam
    }

    /// The root ports, by index (port i is device i + 1 on bus 0).
    pub fn ports_mut(&mut self) -> &mut [RootPort] {
        &mut self.ports
    }

    /// The root ports.
    pub fn ports(&self) -> &[RootPort] {
        &self.ports
    }

    /// The first root port with an empty slot.
    pub fn free_port(&self) -> Option<usize> {
        self.ports.iter().position(|p| !p.occupied())
    }

    /// MSIs and dropped cards the root ports queued.
    fn take_deferred(&mut self) -> Deferred {
        let mut all = Deferred::default();
        for p in &mut self.ports {
            all.append(p.take_deferred());
        }
        all
    }

    /// The function a config cycle reaches.
    fn target(&mut self, bus: u8, devfn: u8) -> Target<'_> {
        if bus == 0 {
            let dev = devfn >> 3;
            if dev == 0 {
                return if devfn == 0 {
                    Target::Local(&mut self.host_bridge)
                } else {
                    Target::Absent
                };
            }
            if let Some(p) = self.ports.get_mut(usize::from(dev) - 1) {
                return if devfn & 7 == 0 {
                    Target::Local(p)
                } else {
                    Target::Absent
                };
            }
            return self
                .root_devices
                .iter()
                .find(|(d, _)| *d == dev)
                .map_or(Target::Absent, |(_, c)| Target::Card(c.clone(), devfn & 7));
        }
        let Some(port) = self.ports.iter().find(|p| {
            let (sec, sub) = p.bus_range();
            sec != 0 && sec <= bus && bus <= sub
        }) else {
            return Target::Absent;
        };
        let (sec, _) = port.bus_range();
        // Only the secondary bus holds a card; a PCIe link has device 0 only, unless ARI
        // forwarding lets devfn carry an 8-bit function number.
        if bus != sec || (devfn >> 3 != 0 && !port.ari_forwarding()) {
            return Target::Absent;
        }
        port.card()
            .map_or(Target::Absent, |c| Target::Card(c.clone(), devfn))
    }

    /// The cards that may decode `addr`: the integrated endpoints when it is in the root
    /// window, else the card of the first occupied port that forwards it (the VMM gives
    /// each port windows of its own).
    fn mmio_candidates(&self, addr: u64) -> Vec<SharedCard> {
        if (self.root_window.0..=self.root_window.1).contains(&addr) {
            return self.root_devices.iter().map(|(_, c)| c.clone()).collect();
        }
        self.ports
            .iter()
            .filter(|p| p.config().memory_enabled() && p.forwards(addr))
            .find_map(|p| p.card().cloned())
            .into_iter()
            .collect()
    }
}

/// A config access on its way.
enum Access<'a> {
    Read(&'a mut [u8]),
    Write(&'a [u8]),
}

/// The root complex as vCPUs and the VMM reach it.
#[derive(Debug, Clone)]
pub struct PciRoot(Arc<Mutex<RootComplex>>);

impl PciRoot {
    /// Shares `rc`.
    pub fn new(rc: RootComplex) -> Self {
        Self(Arc::new(Mutex::new(rc)))
    }

    fn lock(&self) -> MutexGuard<'_, RootComplex> {
        // A poisoned lock means a panic elsewhere; the registers are still consistent.
        lock(&self.0)
    }

    /// Runs `f` on the root complex under its lock (topology: ports, slots, events), then
    /// sends the MSIs and drops the cards that queued up, outside it. `f` must not call
    /// into cards.
    pub fn with<R>(&self, f: impl FnOnce(&mut RootComplex) -> R) -> R {
        let (r, deferred) = {
            let mut rc = self.lock();
            let r = f(&mut rc);
            (r, rc.take_deferred())
        };
        deferred.run();
        r
    }

    fn config_access(&self, bus: u8, devfn: u8, reg: usize, mut access: Access<'_>) {
        let card = self.with(|rc| match rc.target(bus, devfn) {
            Target::Local(dev) => {
                match &mut access {
                    Access::Read(data) => dev.config_read(reg, data),
                    Access::Write(data) => dev.config_write(reg, data),
                }
                None
            }
            Target::Card(card, devfn) => Some((card, devfn)),
            Target::Absent => {
                match &mut access {
                    Access::Read(data) => data.fill(0xff),
                    Access::Write(_) => debug_ratelimited!(
                        "pci: config write to absent {bus:02x}:{:02x}.{}",
                        devfn >> 3,
                        devfn & 7
                    ),
                }
                None
            }
        });
        let Some((card, devfn)) = card else { return };
        let mut card = lock(&card);
        let present = card.has_function(devfn);
        match access {
            Access::Read(data) if present => card.config_read(devfn, reg, data),
            Access::Read(data) => data.fill(0xff),
            Access::Write(data) if present => card.config_write(devfn, reg, data),
            Access::Write(_) => {}
        }
    }

    /// A config read; absent functions read all ones.
    pub fn config_read(&self, addr: ConfigAddress, data: &mut [u8]) {
        self.config_access(addr.bus, addr.devfn, addr.reg, Access::Read(data));
    }

    /// A config write; absent functions ignore it.
    pub fn config_write(&self, addr: ConfigAddress, data: &[u8]) {
        self.config_access(addr.bus, addr.devfn, addr.reg, Access::Write(data));
    }

    /// A read at `offset` in the ECAM window.
    pub fn ecam_read(&self, offset: u64, data: &mut [u8]) {
        let size = self.lock().ecam.size();
        if offset >= size || !matches!(data.len(), 1 | 2 | 4) {
            data.fill(0xff);
            return;
        }
        self.config_read(ConfigAddress::from_ecam(offset), data);
    }

    /// A write at `offset` in the ECAM window.
    pub fn ecam_write(&self, offset: u64, data: &[u8]) {
        let size = self.lock().ecam.size();
        if offset >= size || !matches!(data.len(), 1 | 2 | 4) {
            return;
        }
        self.config_write(ConfigAddress::from_ecam(offset), data);
    }

    /// The config address 0xCFC + `data_offset` reaches, if enabled and in range.
    fn cf8_target(&self, offset: u16, len: usize) -> Option<ConfigAddress> {
        let data_offset = u8::try_from(offset.checked_sub(4)?).ok()?;
        if usize::from(data_offset) + len > 4 {
            return None;
        }
        ConfigAddress::from_cf8(self.lock().config_address, data_offset)
    }

    /// A read of the 0xCF8..0xCFF ports (`offset` from 0xCF8).
    pub fn pio_read(&self, offset: u16, data: &mut [u8]) {
        if offset == 0 && data.len() == 4 {
            data.copy_from_slice(&self.lock().config_address.to_le_bytes());
            return;
        }
        match self.cf8_target(offset, data.len()) {
            Some(addr) => self.config_read(addr, data),
            None => data.fill(0xff),
        }
    }

    /// A write of the 0xCF8..0xCFF ports (`offset` from 0xCF8).
    pub fn pio_write(&self, offset: u16, data: &[u8]) {
        if offset == 0 {
            if let Ok(bytes) = <[u8; 4]>::try_from(data) {
                // Bits 1:0 are reserved (read as 0); bits 30:24 too.
                self.lock().config_address = u32::from_le_bytes(bytes) & 0x80ff_fffc;
            }
            return;
        }
        if let Some(addr) = self.cf8_target(offset, data.len()) {
            self.config_write(addr, data);
        }
    }

    /// An access to the PCI memory windows: true if a BAR claimed it. The root port's
    /// window decides which card is asked; the card decodes its own BARs.
    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) -> bool {
        let cards = self.lock().mmio_candidates(addr);
        cards.iter().any(|c| lock(c).mmio_read(addr, data))
    }

    /// An access to the PCI memory windows: true if a BAR claimed it.
    pub fn mmio_write(&self, addr: u64, data: &[u8]) -> bool {
        let cards = self.lock().mmio_candidates(addr);
        cards.iter().any(|c| lock(c).mmio_write(addr, data))
    }

    /// Every card: the integrated endpoints and the cards in slots.
    pub fn cards(&self) -> Vec<SharedCard> {
        self.with(|rc| {
            rc.root_devices
                .iter()
                .map(|(_, c)| c.clone())
                .chain(rc.ports.iter().filter_map(|p| p.card().cloned()))
                .collect()
        })
    }

    /// Puts `card` in the slot of root port `index` as firmware finds it at power-on: the
    /// BARs of all its functions assigned inside the port's windows (64-bit prefetchable
    /// ones in the prefetchable window, the others in the 32-bit window) and memory
    /// decoding enabled.
    pub fn plug_cold(&self, index: usize, card: SharedCard) -> Result<(), PlugError> {
        let cfg: RootPortConfig = self.with(|rc| {
            let port = rc.ports.get(index).ok_or(PlugError::NoSuchPort(index))?;
            if port.occupied() {
                return Err(PlugError::Occupied(index));
            }
            Ok(port.port_config())
        })?;
        let mut mem32 = BumpWindow {
            next: u64::from(cfg.mem_window.0),
            end: u64::from(cfg.mem_window.1),
        };
        let mut pref = BumpWindow {
            next: cfg.pref_window.0,
            end: cfg.pref_window.1,
        };
        lock(&card)
            .assign_bars(&mut |bar: Bar| {
                if bar.kind == BarKind::Memory64 && bar.prefetchable {
                    pref.take(bar.size)
                } else {
                    mem32.take(bar.size)
                }
            })
            .map_err(|e| PlugError::Bars(format!("root port {}", index + 1), e))?;
        self.with(|rc| {
            rc.ports[index]
                .plug_cold(card)
                .map_err(|_| PlugError::Occupied(index))
        })
    }

    /// Puts an integrated endpoint on bus 0 at device `dev` (after the root ports), with its
    /// BARs assigned in the root window and memory decoding on.
    pub fn add_root_device(&self, dev: u8, card: SharedCard) -> Result<(), PlugError> {
        let (next, end) = self.with(|rc| {
            let taken = dev == 0
                || usize::from(dev) <= rc.ports.len()
                || rc.root_devices.iter().any(|(d, _)| *d == dev);
            if dev > 31 || taken {
                return Err(PlugError::Occupied(usize::from(dev)));
            }
            Ok((rc.root_next, rc.root_window.1))
        })?;
        let mut window = BumpWindow { next, end };
        lock(&card)
            .assign_bars(&mut |bar: Bar| window.take(bar.size))
            .map_err(|e| PlugError::Bars(format!("device {dev} on bus 0"), e))?;
        self.with(|rc| {
            if rc.root_devices.iter().any(|(d, _)| *d == dev) {
                return Err(PlugError::Occupied(usize::from(dev)));
            }
            rc.root_next = window.next;
            rc.root_devices.push((dev, card));
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests;
