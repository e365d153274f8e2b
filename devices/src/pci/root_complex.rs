//! The root complex: the host bridge and root ports on bus 0, each port's slot on its own
//! bus, and the decoding of configuration cycles from ECAM (MMIO) and from the legacy
//! 0xCF8/0xCFC port pair, which stay coherent because both land in the same models.

use super::{HostBridge, PciDevice, RootPort};
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
            bus: (offset >> 20) as u8,
            devfn: (offset >> 12) as u8,
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
            bus: (cf8 >> 16) as u8,
            devfn: (cf8 >> 8) as u8,
            reg: (cf8 & 0xfc) as usize + usize::from(data_offset & 3),
        })
    }
}

/// Why a device cannot be plugged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlugError {
    /// No root port with this index.
    #[error("there is no root port {0}")]
    NoSuchPort(usize),
    /// The slot holds a device already.
    #[error("the slot of root port {0} is occupied")]
    Occupied(usize),
    /// The device's BARs do not fit the port's windows.
    #[error("the device's BARs do not fit the windows of root port {0}")]
    WindowFull(usize),
    /// I/O BARs are not supported behind root ports (they have no I/O window).
    #[error("devices with I/O BARs are not supported")]
    IoBar,
}

/// Programs every memory BAR of `device` at the address `alloc` gives it, then turns memory
/// decoding on, as firmware does. `Err(None)` when `alloc` finds no room; I/O BARs are
/// refused (root ports have no I/O window).
fn assign_bars(
    device: &mut dyn PciDevice,
    mut alloc: impl FnMut(super::Bar) -> Option<u64>,
) -> Result<(), Option<PlugError>> {
    for i in 0..6 {
        let Some(bar) = device.config().bar(i) else {
            continue;
        };
        if bar.kind == super::BarKind::Io {
            return Err(Some(PlugError::IoBar));
        }
        let base = alloc(bar).ok_or(None)?;
        let reg = super::regs::BAR0 + 4 * i;
        device.config_write(reg, &(base as u32).to_le_bytes());
        if bar.kind == super::BarKind::Memory64 {
            device.config_write(reg + 4, &((base >> 32) as u32).to_le_bytes());
        }
    }
    let cmd = device.config().read_u16(super::regs::COMMAND) | super::regs::CMD_MEMORY;
    device.config_write(super::regs::COMMAND, &cmd.to_le_bytes());
    Ok(())
}

/// The memory BAR of `cfg` that decodes `[addr, end)`, and the offset in it, if decoding is
/// on.
fn decode_bar(cfg: &super::ConfigSpace, addr: u64, end: u64) -> Option<(usize, u64)> {
    if !cfg.memory_enabled() {
        return None;
    }
    (0..6).find_map(|i| {
        let bar = cfg.bar(i)?;
        let base = cfg.bar_address(i)?;
        let inside = bar.kind != super::BarKind::Io
            && base != 0
            && addr >= base
            && end <= base.checked_add(bar.size)?;
        inside.then(|| (i, addr - base))
    })
}

/// The root complex.
#[derive(Debug)]
pub struct RootComplex {
    host_bridge: HostBridge,
    ports: Vec<RootPort>,
    /// Root-complex integrated endpoints on bus 0 (the virtio-iommu), by device number.
    root_devices: Vec<(u8, Box<dyn PciDevice>)>,
    /// Where their BARs go, and the next free address.
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

    /// Puts an integrated endpoint on bus 0 at device `dev` (after the root ports), with its
    /// BARs assigned in the root window and memory decoding on.
    pub fn add_root_device(
        &mut self,
        dev: u8,
        mut device: Box<dyn PciDevice>,
    ) -> Result<(), PlugError> {
        let taken = dev == 0
            || usize::from(dev) <= self.ports.len()
            || self.root_devices.iter().any(|(d, _)| *d == dev);
        if dev > 31 || taken {
            return Err(PlugError::Occupied(usize::from(dev)));
        }
        let (next, end) = (&mut self.root_next, self.root_window.1);
        assign_bars(&mut *device, |bar| {
            let base = next.next_multiple_of(bar.size);
            (base + bar.size - 1 <= end).then(|| {
                *next = base + bar.size;
                base
            })
        })
        .map_err(|e| e.unwrap_or(PlugError::WindowFull(usize::from(dev))))?;
        self.root_devices.push((dev, device));
        Ok(())
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

    /// The function a config cycle reaches, if any.
    fn target(&mut self, bus: u8, devfn: u8) -> Option<&mut dyn PciDevice> {
        if bus == 0 {
            let (dev, func) = (devfn >> 3, devfn & 7);
            if func != 0 {
                return None;
            }
            if dev == 0 {
                return Some(&mut self.host_bridge);
            }
            if let Some(p) = self.ports.get_mut(usize::from(dev) - 1) {
                return Some(p);
            }
            return self
                .root_devices
                .iter_mut()
                .find(|(d, _)| *d == dev)
                .map(|(_, d)| &mut **d as &mut dyn PciDevice);
        }
        let port = self.ports.iter_mut().find(|p| {
            let (sec, sub) = p.bus_range();
            sec != 0 && sec <= bus && bus <= sub
        })?;
        let (sec, _) = port.bus_range();
        // Only the secondary bus holds a device; a PCIe link has device 0 only, unless
        // ARI forwarding lets devfn carry an 8-bit function number.
        if bus != sec || (devfn >> 3 != 0 && !port.ari_forwarding()) {
            return None;
        }
        // Multi-function devices come with SR-IOV; until then function 0 only.
        if devfn != 0 {
            return None;
        }
        port.device_mut().map(|d| &mut **d as &mut dyn PciDevice)
    }

    /// A config read; absent functions read all ones.
    pub fn config_read(&mut self, addr: ConfigAddress, data: &mut [u8]) {
        match self.target(addr.bus, addr.devfn) {
            Some(dev) => dev.config_read(addr.reg, data),
            None => data.fill(0xff),
        }
    }

    /// A config write; absent functions ignore it.
    pub fn config_write(&mut self, addr: ConfigAddress, data: &[u8]) {
        match self.target(addr.bus, addr.devfn) {
            Some(dev) => dev.config_write(addr.reg, data),
            None => debug_ratelimited!(
                "pci: config write to absent {:02x}:{:02x}.{}",
                addr.bus,
                addr.devfn >> 3,
                addr.devfn & 7
            ),
        }
    }

    /// The BAR of a device behind a root port that decodes `[addr, addr + len)`: the port
    /// must forward memory (COMMAND.MEM, address in one of its windows) and the device must
    /// decode it (COMMAND.MEM).
    fn bar_target(&mut self, addr: u64, len: usize) -> Option<(&mut dyn PciDevice, usize, u64)> {
        let end = addr.checked_add(len as u64)?;
        if (self.root_window.0..=self.root_window.1).contains(&addr) {
            for (_, dev) in &mut self.root_devices {
                if let Some((bar, off)) = decode_bar(dev.config(), addr, end) {
                    return Some((&mut **dev, bar, off));
                }
            }
            return None;
        }
        for port in &mut self.ports {
            if !port.config().memory_enabled() || !port.forwards(addr) {
                continue;
            }
            let Some(dev) = port.device_mut() else {
                continue;
            };
            let hit = decode_bar(dev.config(), addr, end);
            return hit.map(|(i, off)| (&mut **dev as &mut dyn PciDevice, i, off));
        }
        None
    }

    /// An access to the PCI memory windows: true if a BAR claimed it.
    pub fn mmio_read(&mut self, addr: u64, data: &mut [u8]) -> bool {
        match self.bar_target(addr, data.len()) {
            Some((dev, bar, off)) => {
                dev.bar_read(bar, off, data);
                true
            }
            None => false,
        }
    }

    /// An access to the PCI memory windows: true if a BAR claimed it.
    pub fn mmio_write(&mut self, addr: u64, data: &[u8]) -> bool {
        match self.bar_target(addr, data.len()) {
            Some((dev, bar, off)) => {
                dev.bar_write(bar, off, data);
                true
            }
            None => false,
        }
    }

    /// Puts `device` in the slot of root port `index` as firmware finds it at power-on:
    /// its BARs assigned inside the port's windows (64-bit prefetchable ones in the
    /// prefetchable window, the others in the 32-bit window) and memory decoding enabled.
    pub fn plug_cold(
        &mut self,
        index: usize,
        mut device: Box<dyn PciDevice>,
    ) -> Result<(), PlugError> {
        let port = self
            .ports
            .get_mut(index)
            .ok_or(PlugError::NoSuchPort(index))?;
        if port.occupied() {
            return Err(PlugError::Occupied(index));
        }
        let cfg = port.port_config();
        let mut next32 = u64::from(cfg.mem_window.0);
        let mut next64 = cfg.pref_window.0;
        assign_bars(&mut *device, |bar| {
            let (next, limit) = if bar.kind == super::BarKind::Memory64 && bar.prefetchable {
                (&mut next64, cfg.pref_window.1)
            } else {
                (&mut next32, u64::from(cfg.mem_window.1))
            };
            let base = next.next_multiple_of(bar.size);
            (base + bar.size - 1 <= limit).then(|| {
                *next = base + bar.size;
                base
            })
        })
        .map_err(|e| e.unwrap_or(PlugError::WindowFull(index)))?;
        port.plug_cold(device)
            .map_err(|_| PlugError::Occupied(index))
    }

    /// The first root port with an empty slot.
    pub fn free_port(&self) -> Option<usize> {
        self.ports.iter().position(|p| !p.occupied())
    }

    /// A read at `offset` in the ECAM window.
    pub fn ecam_read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= self.ecam.size() || !matches!(data.len(), 1 | 2 | 4) {
            data.fill(0xff);
            return;
        }
        self.config_read(ConfigAddress::from_ecam(offset), data);
    }

    /// A write at `offset` in the ECAM window.
    pub fn ecam_write(&mut self, offset: u64, data: &[u8]) {
        if offset >= self.ecam.size() || !matches!(data.len(), 1 | 2 | 4) {
            return;
        }
        self.config_write(ConfigAddress::from_ecam(offset), data);
    }

    /// A read of the 0xCF8..0xCFF ports (`offset` from 0xCF8).
    pub fn pio_read(&mut self, offset: u16, data: &mut [u8]) {
        match offset {
            0 if data.len() == 4 => data.copy_from_slice(&self.config_address.to_le_bytes()),
            4..=7 => match ConfigAddress::from_cf8(self.config_address, offset as u8 - 4) {
                Some(addr) if usize::from(offset - 4) + data.len() <= 4 => {
                    self.config_read(addr, data)
                }
                _ => data.fill(0xff),
            },
            _ => data.fill(0xff),
        }
    }

    /// A write of the 0xCF8..0xCFF ports (`offset` from 0xCF8).
    pub fn pio_write(&mut self, offset: u16, data: &[u8]) {
        match offset {
            0 if data.len() == 4 => {
                // Bits 1:0 are reserved (read as 0); bits 30:24 too.
                let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
                self.config_address = v & 0x80ff_fffc;
            }
            4..=7 => {
                if let Some(addr) = ConfigAddress::from_cf8(self.config_address, offset as u8 - 4)
                    && usize::from(offset - 4) + data.len() <= 4
                {
                    self.config_write(addr, data);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;
