//! The debug-exit port: a guest writes a status (1, 2 or 4 bytes, little endian) and the VM
//! ends with it. The test guest uses it to report its result; 0 means success.

use std::sync::Arc;

use vm_device::DevicePio;
use vm_device::bus::{PioAddress, PioAddressOffset};

use crate::debug_ratelimited;
use crate::power::{PowerEvent, PowerEventSink};

/// The port (the same as QEMU's isa-debug-exit default).
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
/// Ports decoded from [`DEBUG_EXIT_PORT`] (a 32-bit `out` covers four).
pub const DEBUG_EXIT_PORTS: u16 = 4;

/// The debug-exit device.
pub struct DebugExitDevice {
    sink: Arc<dyn PowerEventSink>,
}

impl std::fmt::Debug for DebugExitDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DebugExitDevice").finish_non_exhaustive()
    }
}

impl DebugExitDevice {
    /// A device that reports statuses to `sink`.
    pub fn new(sink: Arc<dyn PowerEventSink>) -> Self {
        Self { sink }
    }
}

impl DevicePio for DebugExitDevice {
    fn pio_read(&self, _base: PioAddress, _offset: PioAddressOffset, data: &mut [u8]) {
        data.fill(0);
    }

    fn pio_write(&self, _base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        if offset != 0 || !matches!(data.len(), 1 | 2 | 4) {
            debug_ratelimited!("debug-exit: {}-byte write at offset {offset}", data.len());
            return;
        }
        let mut status = [0u8; 4];
        status[..data.len()].copy_from_slice(data);
        self.sink
            .power_event(PowerEvent::DebugExit(u32::from_le_bytes(status)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::power::test_utils::RecordingSink;

    #[test]
    fn statuses() {
        let events = Arc::new(RecordingSink::default());
        let dev = DebugExitDevice::new(events.clone());
        let base = PioAddress(DEBUG_EXIT_PORT);
        dev.pio_write(base, 0, &[0]);
        dev.pio_write(base, 0, &0x1234_5678u32.to_le_bytes());
        dev.pio_write(base, 0, &[1, 2, 3]);
        dev.pio_write(base, 1, &[1]);
        assert_eq!(
            events.events(),
            vec![PowerEvent::DebugExit(0), PowerEvent::DebugExit(0x1234_5678)]
        );
    }
}
