//! The host bridge at 00:00.0: class 0x0600, nothing to configure. Linux's
//! `pci_sanity_check` for type-1 config access wants it on bus 0.

use super::{ConfigSpace, HeaderType, PciDevice, PciId, VENDOR_REDHAT};

/// QEMU's PCIe host bridge device ID, under Red Hat's vendor ID.
pub const HOST_BRIDGE_DEVICE_ID: u16 = 0x0008;

/// The host bridge.
#[derive(Debug)]
pub struct HostBridge {
    config: ConfigSpace,
}

impl HostBridge {
    /// A host bridge.
    pub fn new() -> Self {
        let mut config = ConfigSpace::new(
            HeaderType::Endpoint,
            PciId {
                vendor: VENDOR_REDHAT,
                device: HOST_BRIDGE_DEVICE_ID,
                class: [0x06, 0x00, 0x00],
                revision: 0,
                subsystem_vendor: VENDOR_REDHAT,
                subsystem: 0x1100,
            },
        );
        // Nothing to enable on a host bridge.
        config.writable_u16(super::regs::COMMAND, 0);
        Self { config }
    }
}

impl Default for HostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl PciDevice for HostBridge {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.config.write(offset, data);
    }
}
