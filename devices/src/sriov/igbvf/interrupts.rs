//! MSI-X interrupt logic of the VF: causes mapped to vectors through IVAR, EICR/EIMS/EIAC/
//! EIAM and EITR throttling.
//!
//! A cause event (an RX frame written back, a TX descriptor done, a mailbox message, an
//! EICS write) sets the vector's EICR bit. If the vector is enabled in EIMS, an MSI-X
//! message is due: it is sent at once unless the vector's EITR interval since the last one
//! has not passed, in which case it is sent when the interval ends (if the vector is still
//! enabled and its cause still set). After a message: EICR bits in EIAC are cleared (auto
//! clear) and EIMS bits in EIAM are cleared (auto mask). A write to EIMS sends a message
//! for each newly enabled vector with a cause pending; an EICS write also sets EIMS for
//! the auto-masked (EIAM) bits it names.

use super::VfIrq;
use super::regs::{EITR_INTERVAL_MASK, IVAR_VALID, NUM_VECTORS, VECTOR_MASK};

/// What raises an interrupt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// RX queue 0 wrote back a descriptor.
    Rx,
    /// TX queue 0 wrote back a descriptor.
    Tx,
    /// The PF posted a mailbox message.
    Mailbox,
}

/// The interrupt registers and the throttling state of the three vectors.
#[derive(Debug, Default)]
pub(crate) struct Interrupts {
    pub eicr: u32,
    pub eims: u32,
    pub eiac: u32,
    pub eiam: u32,
    pub eitr: [u32; NUM_VECTORS],
    pub ivar0: u32,
    pub ivar_misc: u32,
    /// When each vector last sent a message (ns on the model's clock).
    last_sent: [Option<u64>; NUM_VECTORS],
    /// Vectors whose message waits for the end of their EITR interval.
    deferred: [bool; NUM_VECTORS],
    /// Messages sent per vector (for the glue's statistics and tests).
    pub sent: [u64; NUM_VECTORS],
}

/// A vector number from an IVAR entry, if valid and one of the VF's three.
fn ivar_vector(entry: u32) -> Option<usize> {
    if entry & IVAR_VALID == 0 {
        return None;
    }
    let v = (entry & 0x3) as usize;
    (v < NUM_VECTORS).then_some(v)
}

impl Interrupts {
    /// The vector a cause is mapped to.
    pub fn vector_of(&self, cause: Cause) -> Option<usize> {
        match cause {
            Cause::Rx => ivar_vector(self.ivar0 & 0xFF),
            Cause::Tx => ivar_vector((self.ivar0 >> 8) & 0xFF),
            Cause::Mailbox => ivar_vector(self.ivar_misc & 0xFF),
        }
    }

    /// Back to the power-on state (CTRL.RST, FLR).
    pub fn reset(&mut self) {
        let sent = self.sent;
        *self = Self::default();
        self.sent = sent;
    }

    fn interval_ns(&self, v: usize) -> u64 {
        u64::from((self.eitr[v] & EITR_INTERVAL_MASK) >> 2) * 1000
    }

    /// When the vector may send again, if it is still inside its interval at `now`.
    fn throttled_until(&self, v: usize, now: u64) -> Option<u64> {
        let last = self.last_sent[v]?;
        let until = last.saturating_add(self.interval_ns(v));
        (now < until).then_some(until)
    }

    /// A cause event: sets its vector's EICR bit and sends if enabled.
    pub fn raise(&mut self, cause: Cause, now: u64, irq: &dyn VfIrq) {
        if let Some(v) = self.vector_of(cause) {
            self.event(1 << v, now, irq);
        }
    }

    /// Cause events on the vectors in `bits`.
    fn event(&mut self, bits: u32, now: u64, irq: &dyn VfIrq) {
        let bits = bits & VECTOR_MASK;
        self.eicr |= bits;
        self.send_due(bits & self.eims, now, irq);
    }

    /// Sends (or defers, when throttled) a message for each vector in `bits`.
    fn send_due(&mut self, bits: u32, now: u64, irq: &dyn VfIrq) {
        for v in 0..NUM_VECTORS {
            if bits & (1 << v) == 0 {
                continue;
            }
            if self.throttled_until(v, now).is_some() {
                self.deferred[v] = true;
            } else {
                self.send(v, now, irq);
            }
        }
    }

    fn send(&mut self, v: usize, now: u64, irq: &dyn VfIrq) {
        let bit = 1u32 << v;
        self.deferred[v] = false;
        self.last_sent[v] = Some(now);
        self.sent[v] += 1;
        irq.raise(u16::try_from(v).unwrap_or(u16::MAX));
        self.eicr &= !(self.eiac & bit);
        self.eims &= !(self.eiam & bit);
    }

    /// Sends the deferred messages whose interval has ended.
    pub fn poll(&mut self, now: u64, irq: &dyn VfIrq) {
        for v in 0..NUM_VECTORS {
            if !self.deferred[v] || self.throttled_until(v, now).is_some() {
                continue;
            }
            self.deferred[v] = false;
            if self.eicr & self.eims & (1 << v) != 0 {
                self.send(v, now, irq);
            }
        }
    }

    /// The earliest time a deferred message becomes due.
    pub fn next_deadline(&self) -> Option<u64> {
        (0..NUM_VECTORS)
            .filter(|&v| self.deferred[v])
            .filter_map(|v| self.last_sent[v].map(|t| t.saturating_add(self.interval_ns(v))))
            .min()
    }

    /// EICS: cause events on the vectors written; auto-masked ones are unmasked first.
    pub fn write_eics(&mut self, val: u32, now: u64, irq: &dyn VfIrq) {
        let val = val & VECTOR_MASK;
        self.eims |= val & self.eiam;
        self.event(val, now, irq);
    }

    /// EIMS: enables vectors; a newly enabled vector with a cause pending sends.
    pub fn write_eims(&mut self, val: u32, now: u64, irq: &dyn VfIrq) {
        let newly = val & VECTOR_MASK & !self.eims;
        self.eims |= val & VECTOR_MASK;
        self.send_due(newly & self.eicr, now, irq);
    }

    /// EIMC: disables vectors.
    pub fn write_eimc(&mut self, val: u32) {
        self.eims &= !(val & VECTOR_MASK);
    }

    /// EICR write: write-1-to-clear (reads have no side effect: the VF is always in MSI-X
    /// mode, where EICR is not cleared on read).
    pub fn write_eicr(&mut self, val: u32) {
        self.eicr &= !(val & VECTOR_MASK);
    }
}
