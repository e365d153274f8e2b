//! The 16550 UART at I/O port 0x3F8: output only, polled.

use core::fmt;

use crate::port::{inb, outb};
use crate::time::Deadline;

const BASE: u16 = 0x3f8;
/// Transmit holding register.
pub const THR: u16 = BASE;
const IER: u16 = BASE + 1;
const FCR: u16 = BASE + 2;
const LCR: u16 = BASE + 3;
const MCR: u16 = BASE + 4;
/// Line status register.
pub const LSR: u16 = BASE + 5;
/// LSR: the transmit FIFO is empty.
const LSR_THR_EMPTY: u8 = 0x20;
/// Bytes the transmit FIFO takes once it is empty.
const FIFO_SIZE: usize = 16;
/// How long to wait for the FIFO to drain before writing anyway, in TSC cycles.
const DRAIN_BUDGET: u64 = 100_000_000;

/// No interrupts, 8N1, FIFOs on and cleared, DTR and RTS set.
pub fn init() {
    outb(IER, 0);
    outb(LCR, 0x03);
    outb(FCR, 0x07);
    outb(MCR, 0x03);
}

/// The serial console as a `fmt::Write`. Not locked: only the BSP prints (and a CPU that
/// panics or faults, on its way out).
#[derive(Debug)]
pub struct Serial;

impl fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // One LSR read per FIFO load rather than per byte: each port access is a VM exit.
        for chunk in s.as_bytes().chunks(FIFO_SIZE) {
            let deadline = Deadline::after(DRAIN_BUDGET);
            while inb(LSR) & LSR_THR_EMPTY == 0 && !deadline.expired() {
                core::hint::spin_loop();
            }
            for &b in chunk {
                outb(THR, b);
            }
        }
        Ok(())
    }
}

#[doc(hidden)]
pub fn _print(args: fmt::Arguments) {
    // Serial::write_str cannot fail.
    let _ = fmt::Write::write_fmt(&mut Serial, args);
}

/// Prints to the serial console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::serial::_print(format_args!($($arg)*)) };
}

/// Prints a line to the serial console.
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => { $crate::serial::_print(format_args!("{}\n", format_args!($($arg)*))) };
}
