//! The hardware-reduced ACPI power-management registers the FADT points at: the sleep
//! control register (S5 = power off), the sleep status register and the reset register.

use std::sync::Arc;

use vm_device::DevicePio;
use vm_device::bus::{PioAddress, PioAddressOffset};

use crate::debug_ratelimited;
use crate::power::{PowerEvent, PowerEventSink};

/// I/O base of the registers.
pub const PM_IO_BASE: u16 = 0x600;
/// Ports decoded: sleep control (+0), sleep status (+1), reset (+2).
pub const PM_IO_PORTS: u16 = 3;
/// Offset of the sleep control register.
pub const SLEEP_CONTROL: u16 = 0;
/// Offset of the sleep status register.
pub const SLEEP_STATUS: u16 = 1;
/// Offset of the reset register.
pub const RESET_REG: u16 = 2;
/// The value the FADT tells the guest to write to the reset register.
pub const RESET_VALUE: u8 = 1;
/// SLP_TYP of S5, matching the DSDT's `\_S5_` package.
pub const S5_SLP_TYP: u8 = 5;
/// SLP_EN in the sleep control register.
const SLP_EN: u8 = 1 << 5;

/// The PM register block.
pub struct AcpiPmDevice {
    sink: Arc<dyn PowerEventSink>,
}

impl std::fmt::Debug for AcpiPmDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcpiPmDevice").finish_non_exhaustive()
    }
}

impl AcpiPmDevice {
    /// Registers whose power events reach `sink`.
    pub fn new(sink: Arc<dyn PowerEventSink>) -> Self {
        Self { sink }
    }
}

impl DevicePio for AcpiPmDevice {
    fn pio_read(&self, _base: PioAddress, _offset: PioAddressOffset, data: &mut [u8]) {
        // Nothing is ever pending: sleep status reads 0 (WAK_STS clear).
        data.fill(0);
    }

    fn pio_write(&self, _base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        let [value] = data else {
            debug_ratelimited!("acpi-pm: {}-byte write at offset {offset}", data.len());
            return;
        };
        match offset {
            SLEEP_CONTROL if value & SLP_EN != 0 && (value >> 2) & 7 == S5_SLP_TYP => {
                self.sink.power_event(PowerEvent::PowerOff)
            }
            RESET_REG if *value == RESET_VALUE => self.sink.power_event(PowerEvent::Reset),
            _ => debug_ratelimited!("acpi-pm: ignored write {value:#x} at offset {offset}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::power::test_utils::RecordingSink;

    #[test]
    fn s5_and_reset() {
        let events = Arc::new(RecordingSink::default());
        let dev = AcpiPmDevice::new(events.clone());
        let base = PioAddress(PM_IO_BASE);
        dev.pio_write(base, SLEEP_CONTROL, &[S5_SLP_TYP << 2]); // no SLP_EN
        dev.pio_write(base, SLEEP_CONTROL, &[(3 << 2) | SLP_EN]); // S3: not supported
        dev.pio_write(base, SLEEP_CONTROL, &[(S5_SLP_TYP << 2) | SLP_EN]);
        dev.pio_write(base, RESET_REG, &[0]);
        dev.pio_write(base, RESET_REG, &[RESET_VALUE]);
        dev.pio_write(base, RESET_REG, &[RESET_VALUE, 0]);
        assert_eq!(
            events.events(),
            vec![PowerEvent::PowerOff, PowerEvent::Reset]
        );
    }
}
