//! Legacy x86 devices: the I/O APIC (emulated here under KVM's split irqchip), the 16550
//! console, the i8042 (for its reset line), the ACPI power-management registers and the
//! test guest's debug-exit port.

pub mod acpi_pm;
pub mod debug_exit;
pub mod i8042;
pub mod ioapic;
pub mod serial;

pub use acpi_pm::AcpiPmDevice;
pub use debug_exit::DebugExitDevice;
pub use i8042::I8042;
pub use ioapic::{Ioapic, IoapicLine};
pub use serial::SerialDevice;

/// Fills a read buffer the way an unclaimed ISA read floats: all ones.
pub(crate) fn float_bus(data: &mut [u8]) {
    data.fill(0xff);
}
