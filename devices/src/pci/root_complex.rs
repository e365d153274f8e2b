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

/// The root complex.
#[derive(Debug)]
pub struct RootComplex {
    host_bridge: HostBridge,
    ports: Vec<RootPort>,
    ecam: EcamLayout,
    config_address: u32,
}

impl RootComplex {
    /// A root complex with `ports` at 00:01.0, 00:02.0, ... (at most 31).
    pub fn new(ecam: EcamLayout, ports: Vec<RootPort>) -> Self {
        Self {
            host_bridge: HostBridge::new(),
            ports: ports.into_iter().take(31).collect(),
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

    /// The function a config cycle reaches, if any.
    fn target(&mut self, bus: u8, devfn: u8) -> Option<&mut dyn PciDevice> {
        if bus == 0 {
            let (dev, func) = (devfn >> 3, devfn & 7);
            if func != 0 {
                return None;
            }
            return match dev {
                0 => Some(&mut self.host_bridge),
                d => self
                    .ports
                    .get_mut(usize::from(d) - 1)
                    .map(|p| p as &mut dyn PciDevice),
            };
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
