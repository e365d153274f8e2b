//! The i8042 keyboard controller, present for its reset line: the guest writes 0xFE to
//! the command port to reset the machine, which this VMM turns into a clean VM exit.

use std::sync::Arc;

use vm_device::MutDevicePio;
use vm_device::bus::{PioAddress, PioAddressOffset};
use vm_superio::{I8042Device, Trigger};

use crate::power::{PowerEvent, PowerEventSink};
use crate::{debug_ratelimited, warn_ratelimited};

/// The data port.
pub const I8042_DATA_PORT: u16 = 0x60;
/// The command/status port.
pub const I8042_COMMAND_PORT: u16 = 0x64;

/// Turns the controller's reset line into a [`PowerEvent::Reset`].
#[derive(Clone)]
pub struct ResetLine(Arc<dyn PowerEventSink>);

impl std::fmt::Debug for ResetLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResetLine")
    }
}

impl Trigger for ResetLine {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.power_event(PowerEvent::Reset);
        Ok(())
    }
}

/// The i8042, registered at both 0x60 and 0x64.
pub struct I8042 {
    dev: I8042Device<ResetLine>,
}

impl std::fmt::Debug for I8042 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("I8042").finish_non_exhaustive()
    }
}

impl I8042 {
    /// A controller whose reset command reaches `sink`.
    pub fn new(sink: Arc<dyn PowerEventSink>) -> Self {
        Self {
            dev: I8042Device::new(ResetLine(sink)),
        }
    }

    /// vm-superio wants the offset from 0x60 (0 = data, 4 = command).
    fn offset(base: PioAddress, offset: PioAddressOffset) -> Option<u8> {
        let port = base.0.checked_add(offset)?;
        match port {
            I8042_DATA_PORT => Some(0),
            I8042_COMMAND_PORT => Some(4),
            _ => None,
        }
    }
}

impl MutDevicePio for I8042 {
    fn pio_read(&mut self, base: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
        match (Self::offset(base, offset), data.len()) {
            (Some(off), 1) => data[0] = self.dev.read(off),
            _ => {
                debug_ratelimited!("i8042: {}-byte read at {:#x}+{offset}", data.len(), base.0);
                super::float_bus(data);
            }
        }
    }

    fn pio_write(&mut self, base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        match (Self::offset(base, offset), data) {
            (Some(off), [value]) => {
                if let Err(e) = self.dev.write(off, *value) {
                    warn_ratelimited!("i8042: write failed: {e}");
                }
            }
            _ => debug_ratelimited!("i8042: {}-byte write at {:#x}+{offset}", data.len(), base.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::power::test_utils::RecordingSink;

    #[test]
    fn reset_command_resets() {
        let events = Arc::new(RecordingSink::default());
        let mut dev = I8042::new(events.clone());
        dev.pio_write(PioAddress(I8042_COMMAND_PORT), 0, &[0xfe]);
        assert_eq!(events.events(), vec![PowerEvent::Reset]);
    }

    #[test]
    fn status_reads_and_bad_sizes() {
        let events = Arc::new(RecordingSink::default());
        let mut dev = I8042::new(events.clone());
        let mut b = [0u8];
        dev.pio_read(PioAddress(I8042_COMMAND_PORT), 0, &mut b);
        let mut w = [0u8; 4];
        dev.pio_read(PioAddress(I8042_COMMAND_PORT), 0, &mut w);
        assert_eq!(w, [0xff; 4]);
        dev.pio_write(PioAddress(I8042_COMMAND_PORT), 0, &[0xfe, 0]);
        assert!(events.events().is_empty());
    }
}
