//! `ioapic`: the IOAPIC the VMM emulates (KVM's split irqchip) delivers COM1's interrupt
//! through pin 4 to the BSP's LAPIC, edge- and level-triggered: identification and reset
//! state, one interrupt per edge, nothing while masked (and the masked edge stays lost),
//! and a level-triggered entry whose Remote IRR the LAPIC's EOI clears (the VMM sees it as
//! a KVM_EXIT_IOAPIC_EOI), so the next interrupt arrives.
//!
//! The UART runs in loopback mode with only the received-data interrupt enabled: each byte
//! written comes back as input and raises IRQ 4, and nothing reaches the console. Nothing
//! is printed until the UART is back to normal.

use super::{Ctx, Fail, ensure, info};
use crate::ioapic::{self, entry, reg};
use crate::lapic;
use crate::port::{inb, outb};
use crate::ring0::{self, BSP_CPU, SPURIOUS_VECTOR};
use crate::time::{delay_us, wait_until};

const COM1: u16 = 0x3f8;
const IER: u16 = COM1 + 1;
const IIR: u16 = COM1 + 2;
const MCR: u16 = COM1 + 4;
const LSR: u16 = COM1 + 5;
/// IER: received data available.
const IER_RDA: u8 = 1;
/// MCR: DTR, RTS and loopback.
const MCR_LOOP: u8 = 0x13;
/// MCR as serial::init leaves it: DTR and RTS.
const MCR_NORMAL: u8 = 0x03;
/// COM1's ISA IRQ, identity-mapped to IOAPIC pin 4 (the MADT has no override).
const PIN: u32 = 4;
const EDGE_VECTOR: u8 = 0x41;
const LEVEL_VECTOR: u8 = 0x42;
/// How long "nothing arrives" is watched, in microseconds.
const QUIET_US: u64 = 20_000;

/// What the checks saw, printed once the console works again.
#[derive(Default)]
struct Seen {
    edges: u64,
    masked: u64,
    after_unmask: u64,
    level: u64,
    remote_irr_after_eoi: bool,
}

fn count(vector: u8) -> u64 {
    ring0::irq_count(BSP_CPU, vector)
}

/// Sends one byte through the loop and takes it back; returns whether it came back.
fn loop_byte(b: u8) -> bool {
    outb(COM1, b);
    let (ok, _) = wait_until(|| inb(LSR) & 1 != 0);
    let back = inb(COM1);
    // Reading IIR acknowledges whatever the UART still holds pending.
    let _ = inb(IIR);
    ok && back == b
}

/// Loops one byte and waits for `want` interrupts on `vector` (counted from `before`).
fn expect_irqs(vector: u8, before: u64, want: u64) -> u64 {
    let _ = wait_until(|| count(vector) - before >= want);
    count(vector) - before
}

fn checks(dest: u32) -> Result<Seen, Fail> {
    let mut seen = Seen::default();
    // Edge-triggered: one interrupt per byte.
    ioapic::set_entry(PIN, ioapic::fixed(EDGE_VECTOR, dest));
    let before = count(EDGE_VECTOR);
    for (i, b) in b"abc".iter().enumerate() {
        ensure!(loop_byte(*b), "loopback byte {i} did not come back");
        seen.edges = expect_irqs(EDGE_VECTOR, before, i as u64 + 1);
    }
    // Masked: nothing arrives, and the edge is not delivered by unmasking.
    ioapic::set_entry(PIN, ioapic::fixed(EDGE_VECTOR, dest) | entry::MASKED);
    let before = count(EDGE_VECTOR);
    ensure!(
        loop_byte(b'm'),
        "loopback byte while masked did not come back"
    );
    delay_us(QUIET_US);
    seen.masked = count(EDGE_VECTOR) - before;
    ioapic::set_entry(PIN, ioapic::fixed(EDGE_VECTOR, dest));
    delay_us(QUIET_US);
    seen.after_unmask = count(EDGE_VECTOR) - before;
    // Level-triggered: the handler's EOI must clear Remote IRR, or the second byte's
    // interrupt never comes.
    ioapic::set_entry(PIN, ioapic::fixed(LEVEL_VECTOR, dest) | entry::LEVEL);
    let before = count(LEVEL_VECTOR);
    for (i, b) in b"LV".iter().enumerate() {
        ensure!(loop_byte(*b), "loopback byte {i} (level) did not come back");
        seen.level = expect_irqs(LEVEL_VECTOR, before, i as u64 + 1);
    }
    seen.remote_irr_after_eoi = ioapic::entry(PIN) & entry::REMOTE_IRR != 0;
    Ok(seen)
}

/// See the module documentation.
pub fn run(ctx: &Ctx) -> Result<(), Fail> {
    lapic::enable(SPURIOUS_VECTOR);
    let version = ioapic::read(reg::VERSION);
    let id = ioapic::read(reg::ID) >> 24;
    ensure!(
        version & 0xff == 0x11 && (version >> 16) & 0xff == 23,
        "IOAPIC version register {version:#x}, expected version 0x11 with 24 entries"
    );
    ensure!(id == 0, "IOAPIC ID {id}, the MADT says 0");
    for pin in 0..24 {
        let e = ioapic::entry(pin);
        ensure!(
            e & entry::MASKED != 0,
            "pin {pin} is not masked at reset: {e:#x}"
        );
    }

    let dest = lapic::id();
    outb(IER, 0);
    outb(MCR, MCR_LOOP);
    outb(IER, IER_RDA);
    let result = checks(dest);
    outb(IER, 0);
    outb(MCR, MCR_NORMAL);
    ioapic::set_entry(PIN, ioapic::fixed(EDGE_VECTOR, dest) | entry::MASKED);
    let seen = result?;

    info!(
        ctx,
        "edge: {} interrupts for 3 bytes; masked: {}, after unmasking: {}; level: {} for 2 bytes",
        seen.edges,
        seen.masked,
        seen.after_unmask,
        seen.level
    );
    ensure!(
        seen.edges == 3,
        "{} edge interrupts on vector {EDGE_VECTOR:#x} for 3 bytes",
        seen.edges
    );
    ensure!(
        seen.masked == 0 && seen.after_unmask == 0,
        "a masked pin delivered ({} while masked, {} after unmasking)",
        seen.masked,
        seen.after_unmask
    );
    ensure!(
        seen.level == 2,
        "{} level-triggered interrupts on vector {LEVEL_VECTOR:#x} for 2 bytes \
         (Remote IRR not cleared by the EOI?)",
        seen.level
    );
    ensure!(
        !seen.remote_irr_after_eoi,
        "Remote IRR still set after the handler's EOI"
    );
    Ok(())
}
