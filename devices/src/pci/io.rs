//! The root complex on the VMM's I/O buses: the ECAM window on the MMIO bus and the
//! 0xCF8..0xCFF ports on the PIO bus, both reaching the same [`PciRoot`].

use vm_device::bus::{MmioAddress, MmioAddressOffset, PioAddress, PioAddressOffset};
use vm_device::{DeviceMmio, DevicePio};

use super::PciRoot;

/// The ECAM window, registered on the MMIO bus at the window's base.
#[derive(Debug, Clone)]
pub struct EcamWindow(pub PciRoot);

impl DeviceMmio for EcamWindow {
    fn mmio_read(&self, _base: MmioAddress, offset: MmioAddressOffset, data: &mut [u8]) {
        self.0.ecam_read(offset, data);
    }

    fn mmio_write(&self, _base: MmioAddress, offset: MmioAddressOffset, data: &[u8]) {
        self.0.ecam_write(offset, data);
    }
}

/// The legacy configuration ports, registered on the PIO bus at 0xCF8 for 8 ports.
#[derive(Debug, Clone)]
pub struct ConfigPorts(pub PciRoot);

impl DevicePio for ConfigPorts {
    fn pio_read(&self, _base: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
        self.0.pio_read(offset, data);
    }

    fn pio_write(&self, _base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        self.0.pio_write(offset, data);
    }
}

/// The PCI memory windows (32- and 64-bit), registered on the MMIO bus: accesses reach the
/// BAR that decodes them.
#[derive(Debug, Clone)]
pub struct MemoryWindow(pub PciRoot);

impl DeviceMmio for MemoryWindow {
    fn mmio_read(&self, base: MmioAddress, offset: MmioAddressOffset, data: &mut [u8]) {
        let addr = base.0.wrapping_add(offset);
        if !self.0.mmio_read(addr, data) {
            crate::debug_ratelimited!("pci: unclaimed read at {addr:#x}");
            data.fill(0xff);
        }
    }

    fn mmio_write(&self, base: MmioAddress, offset: MmioAddressOffset, data: &[u8]) {
        let addr = base.0.wrapping_add(offset);
        if !self.0.mmio_write(addr, data) {
            crate::debug_ratelimited!("pci: unclaimed write at {addr:#x}");
        }
    }
}
