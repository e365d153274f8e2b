//! The local APIC in xAPIC mode, by MMIO at 0xFEE00000 from ring 3. Every CPU sees its
//! own LAPIC at that address.

use core::fmt;

use crate::time::Deadline;

/// Guest-physical (= virtual) base of the xAPIC registers.
pub const BASE: u64 = 0xfee0_0000;

/// Register offsets.
pub mod reg {
    /// Local APIC ID (bits 31:24).
    pub const ID: u32 = 0x20;
    /// Task priority.
    pub const TPR: u32 = 0x80;
    /// Spurious interrupt vector; bit 8 enables the APIC.
    pub const SVR: u32 = 0xf0;
    /// Interrupt command, low half (writing it sends the IPI).
    pub const ICR_LOW: u32 = 0x300;
    /// Interrupt command, high half (destination in bits 31:24).
    pub const ICR_HIGH: u32 = 0x310;
    /// LVT timer.
    pub const LVT_TIMER: u32 = 0x320;
    /// Timer initial count.
    pub const TIMER_INITIAL: u32 = 0x380;
    /// Timer current count.
    pub const TIMER_CURRENT: u32 = 0x390;
    /// Timer divide configuration.
    pub const TIMER_DIVIDE: u32 = 0x3e0;
}

/// SVR: APIC software enable.
const SVR_ENABLE: u32 = 1 << 8;
/// ICR: delivery mode INIT.
pub const ICR_INIT: u32 = 0b101 << 8;
/// ICR: delivery mode Start-up; the vector is the start page number.
pub const ICR_STARTUP: u32 = 0b110 << 8;
/// ICR: level assert (required for everything but INIT level de-assert).
pub const ICR_ASSERT: u32 = 1 << 14;
/// ICR: the previous IPI is still being delivered.
const ICR_PENDING: u32 = 1 << 12;
/// LVT: masked.
const LVT_MASKED: u32 = 1 << 16;
/// LVT timer: periodic mode.
const LVT_PERIODIC: u32 = 1 << 17;
/// Budget for an IPI to leave, in TSC cycles.
const IPI_BUDGET: u64 = 1_000_000_000;

/// Reads register `offset`.
pub fn read(offset: u32) -> u32 {
    let ptr = (BASE + u64::from(offset)) as *const u32;
    // SAFETY: the LAPIC page is identity-mapped, uncached, for ring 3; the register is
    // aligned; MMIO reads have no effect on Rust-visible memory.
    unsafe { ptr.read_volatile() }
}

/// Writes register `offset`.
pub fn write(offset: u32, value: u32) {
    let ptr = (BASE + u64::from(offset)) as *mut u32;
    // SAFETY: as for read; LAPIC registers are not Rust memory.
    unsafe { ptr.write_volatile(value) }
}

/// This CPU's APIC ID.
pub fn id() -> u32 {
    read(reg::ID) >> 24
}

/// The MSI address that delivers to the LAPIC with ID `apic_id` (physical destination,
/// fixed delivery: the message data is just the vector).
pub fn msi_address(apic_id: u32) -> u32 {
    BASE as u32 | (apic_id << 12)
}

/// Enables this CPU's APIC with `spurious` as its spurious vector, and accepts every
/// interrupt priority.
pub fn enable(spurious: u8) {
    write(reg::TPR, 0);
    write(reg::SVR, SVR_ENABLE | u32::from(spurious));
}

/// The previous IPI did not leave within its budget.
#[derive(Debug, Clone, Copy)]
pub struct IpiStuck {
    /// ICR low at the time.
    pub icr: u32,
}

impl fmt::Display for IpiStuck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ICR delivery status still pending (ICR low {:#x})",
            self.icr
        )
    }
}

/// Sends an IPI (`command`: ICR low bits) to the APIC with ID `dest`, and waits until it
/// has left.
pub fn send_ipi(dest: u32, command: u32) -> Result<(), IpiStuck> {
    write(reg::ICR_HIGH, dest << 24);
    write(reg::ICR_LOW, command);
    let deadline = Deadline::after(IPI_BUDGET);
    loop {
        let icr = read(reg::ICR_LOW);
        if icr & ICR_PENDING == 0 {
            return Ok(());
        }
        if deadline.expired() {
            return Err(IpiStuck { icr });
        }
        core::hint::spin_loop();
    }
}

/// Timer divide configuration values.
#[derive(Debug, Clone, Copy)]
#[repr(u32)]
pub enum Divide {
    /// Divide the bus clock by 16.
    By16 = 0b0011,
}

/// Starts the timer in periodic mode: `vector` every `initial` ticks of the divided clock.
pub fn timer_periodic(vector: u8, divide: Divide, initial: u32) {
    write(reg::TIMER_DIVIDE, divide as u32);
    write(reg::LVT_TIMER, LVT_PERIODIC | u32::from(vector));
    write(reg::TIMER_INITIAL, initial);
}

/// Masks and stops the timer.
pub fn timer_stop() {
    write(reg::LVT_TIMER, LVT_MASKED);
    write(reg::TIMER_INITIAL, 0);
}
