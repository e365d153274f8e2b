//! A 16550A UART (vm-superio's model) on the PIO bus, raising its IRQ through an
//! [`InterruptLine`](crate::interrupt::InterruptLine).

use std::io::Write;

use vm_device::MutDevicePio;
use vm_device::bus::{PioAddress, PioAddressOffset};
use vm_superio::Serial;
use vm_superio::serial::NoEvents;

use crate::interrupt::LineTrigger;
use crate::{debug_ratelimited, warn_ratelimited};

/// The I/O base of COM1.
pub const COM1_BASE: u16 = 0x3f8;
/// The ISA IRQ of COM1.
pub const COM1_IRQ: u32 = 4;
/// The number of I/O ports a 16550 decodes.
pub const SERIAL_PORTS: u16 = 8;

/// Output sink of the console.
pub type SerialOut = Box<dyn Write + Send>;

/// A 16550A UART.
pub struct SerialDevice {
    uart: Serial<LineTrigger, NoEvents, SerialOut>,
}

impl std::fmt::Debug for SerialDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialDevice").finish_non_exhaustive()
    }
}

impl SerialDevice {
    /// A UART that writes guest output to `out` and raises `irq`.
    pub fn new(irq: LineTrigger, out: SerialOut) -> Self {
        Self {
            uart: Serial::new(irq, out),
        }
    }

    /// How many input bytes the receive FIFO can take now.
    pub fn input_capacity(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// Queues host input for the guest; returns how many bytes were taken (the rest did
    /// not fit in the FIFO).
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let room = self.uart.fifo_capacity().min(bytes.len());
        if room == 0 {
            return 0;
        }
        match self.uart.enqueue_raw_bytes(&bytes[..room]) {
            Ok(n) => n,
            Err(e) => {
                warn_ratelimited!("serial: cannot queue input: {e}");
                0
            }
        }
    }

    /// Flushes guest output to the sink.
    pub fn flush(&mut self) {
        // Console output is best effort: a closed stdout must not stop the guest.
        let _ = self.uart.writer_mut().flush();
    }
}

impl MutDevicePio for SerialDevice {
    fn pio_read(&mut self, _base: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
        match (u8::try_from(offset), data.len()) {
            (Ok(offset), 1) if u16::from(offset) < SERIAL_PORTS => data[0] = self.uart.read(offset),
            _ => {
                debug_ratelimited!("serial: {}-byte read at offset {offset}", data.len());
                super::float_bus(data);
            }
        }
    }

    fn pio_write(&mut self, _base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        match (u8::try_from(offset), data) {
            (Ok(offset), [value]) if u16::from(offset) < SERIAL_PORTS => {
                if let Err(e) = self.uart.write(offset, *value) {
                    warn_ratelimited!("serial: write failed: {e}");
                }
            }
            _ => debug_ratelimited!("serial: {}-byte write at offset {offset}", data.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interrupt::test_utils::CountingLine;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct SharedBuf(Arc<Mutex<Vec<u8>>>);

    impl Write for SharedBuf {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn serial() -> (SerialDevice, SharedBuf, Arc<CountingLine>) {
        let out = SharedBuf::default();
        let line = Arc::new(CountingLine::default());
        let dev = SerialDevice::new(LineTrigger(line.clone()), Box::new(out.clone()));
        (dev, out, line)
    }

    const BASE: PioAddress = PioAddress(COM1_BASE);

    #[test]
    fn output_reaches_sink() {
        let (mut dev, out, _) = serial();
        for b in b"hi\n" {
            dev.pio_write(BASE, 0, &[*b]);
        }
        assert_eq!(out.0.lock().unwrap().as_slice(), b"hi\n");
    }

    #[test]
    fn input_raises_irq_when_enabled() {
        let (mut dev, _, line) = serial();
        // IER: received-data-available interrupt.
        dev.pio_write(BASE, 1, &[0x01]);
        assert_eq!(dev.enqueue_input(b"ab"), 2);
        assert!(line.count() >= 1);
        let mut lsr = [0u8];
        dev.pio_read(BASE, 5, &mut lsr);
        assert_eq!(lsr[0] & 1, 1, "data ready");
        let mut rbr = [0u8];
        dev.pio_read(BASE, 0, &mut rbr);
        assert_eq!(rbr[0], b'a');
    }

    #[test]
    fn input_beyond_fifo_is_refused_not_lost_silently() {
        let (mut dev, _, _) = serial();
        let cap = dev.input_capacity();
        let big = vec![b'x'; cap + 10];
        assert_eq!(dev.enqueue_input(&big), cap);
        assert_eq!(dev.enqueue_input(b"y"), 0);
    }

    #[test]
    fn odd_sizes_float() {
        let (mut dev, out, _) = serial();
        let mut word = [0u8; 2];
        dev.pio_read(BASE, 0, &mut word);
        assert_eq!(word, [0xff, 0xff]);
        dev.pio_write(BASE, 0, &[1, 2]);
        assert!(out.0.lock().unwrap().is_empty());
    }
}
