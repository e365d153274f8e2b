//! The legacy devices and where they sit: the IOAPIC (MMIO at 0xfec00000), COM1 on its pin
//! 4, the i8042 (for its reset line), the ACPI PM registers and the debug-exit port.

use std::sync::{Arc, Mutex};

use devices::interrupt::{LineTrigger, MsiRoutes};
use devices::legacy::ioapic::IOAPIC_WINDOW;
use devices::legacy::{
    AcpiPmDevice, DebugExitDevice, I8042, Ioapic, IoapicLine, SerialDevice, acpi_pm, debug_exit,
    i8042, serial,
};
use devices::power::PowerEventSink;
use vm_device::bus::{MmioAddress, MmioRange, PioAddress, PioRange};
use vm_device::device_manager::{IoManager, MmioManager, PioManager};

use super::DeviceError;
use crate::memory::layout;

/// The IOAPIC's ID (the MADT's).
pub const IOAPIC_ID: u8 = 0;

/// The legacy devices the VMM keeps handles to.
#[derive(Debug)]
pub struct Legacy {
    /// The console, which the VMM feeds with host input.
    pub serial: Arc<Mutex<SerialDevice>>,
    /// The IOAPIC, which takes the LAPICs' EOIs.
    pub ioapic: Arc<Mutex<Ioapic>>,
}

pub(super) fn pio_range(base: u16, len: u16) -> Result<PioRange, DeviceError> {
    PioRange::new(PioAddress(base), len).map_err(DeviceError::Bus)
}

impl Legacy {
    /// Creates the devices on `io`: the IOAPIC raising its pins through `pins`, COM1
    /// writing to `console`, power events to `power`.
    pub fn new(
        io: &mut IoManager,
        pins: Arc<dyn MsiRoutes>,
        console: serial::SerialOut,
        power: Arc<dyn PowerEventSink>,
    ) -> Result<Self, DeviceError> {
        let ioapic = Arc::new(Mutex::new(Ioapic::new(IOAPIC_ID, pins)));
        io.register_mmio(
            MmioRange::new(MmioAddress(layout::IOAPIC_START), IOAPIC_WINDOW)
                .map_err(DeviceError::Bus)?,
            ioapic.clone(),
        )
        .map_err(DeviceError::Bus)?;
        let line = LineTrigger(Arc::new(IoapicLine::new(
            ioapic.clone(),
            serial::COM1_IRQ as usize,
        )));
        let serial = Arc::new(Mutex::new(SerialDevice::new(line, console)));
        io.register_pio(
            pio_range(serial::COM1_BASE, serial::SERIAL_PORTS)?,
            serial.clone(),
        )
        .map_err(DeviceError::Bus)?;
        let i8042 = Arc::new(Mutex::new(I8042::new(power.clone())));
        for port in [i8042::I8042_DATA_PORT, i8042::I8042_COMMAND_PORT] {
            io.register_pio(pio_range(port, 1)?, i8042.clone())
                .map_err(DeviceError::Bus)?;
        }
        io.register_pio(
            pio_range(acpi_pm::PM_IO_BASE, acpi_pm::PM_IO_PORTS)?,
            Arc::new(AcpiPmDevice::new(power.clone())),
        )
        .map_err(DeviceError::Bus)?;
        io.register_pio(
            pio_range(debug_exit::DEBUG_EXIT_PORT, debug_exit::DEBUG_EXIT_PORTS)?,
            Arc::new(DebugExitDevice::new(power)),
        )
        .map_err(DeviceError::Bus)?;
        Ok(Self { serial, ioapic })
    }
}
