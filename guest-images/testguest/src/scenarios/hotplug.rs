//! `hotplug`: the guest side of PCIe native hotplug (what Linux's pciehp does), on root
//! port `testguest.hotplug_port` (default 1), driven by a test through the VMM's API:
//! 1. the guest enables the slot's events and the port's MSI, and says it is ready;
//! 2. a device is hot-added: presence and link come up with an interrupt, the function
//!    answers config cycles;
//! 3. an orderly removal: the attention button interrupts; the guest blinks the power
//!    indicator and powers the slot off, as pciehp does; the device goes;
//! 4. another hot-add, then a surprise removal: presence and link drop with an interrupt.

use super::{Ctx, Fail, ensure, fail, info};
use crate::lapic;
use crate::pcie::{Bdf, Ecam};
use crate::ring0::{self, BSP_CPU, SPURIOUS_VECTOR};
use crate::time;

const VECTOR: u8 = 0x60;
const CAP_EXP: u8 = 0x10;
const CAP_MSI: u8 = 0x05;
// Slot control bits.
const ABPE: u16 = 1 << 0;
const CCIE: u16 = 1 << 4;
const HPIE: u16 = 1 << 5;
const PIC_MASK: u16 = 3 << 8;
const PIC_ON: u16 = 1 << 8;
const PIC_BLINK: u16 = 2 << 8;
const PIC_OFF: u16 = 3 << 8;
const PCC: u16 = 1 << 10;
const DLLSCE: u16 = 1 << 12;
// Slot status bits.
const ABP: u16 = 1 << 0;
const PDC: u16 = 1 << 3;
const CC: u16 = 1 << 4;
const PDS: u16 = 1 << 6;
const DLLSC: u16 = 1 << 8;
const EVENTS: u16 = 0x11f;

struct Slot {
    ecam: Ecam,
    port: Bdf,
    exp: u16,
    bus: u8,
}

impl Slot {
    fn status(&self) -> u16 {
        self.ecam.read16(self.port, self.exp + 0x1a)
    }
    fn control(&self) -> u16 {
        self.ecam.read16(self.port, self.exp + 0x18)
    }
    fn ack(&self, bits: u16) {
        self.ecam.write16(self.port, self.exp + 0x1a, bits);
    }
    /// A Slot Control write, waiting for its command completion and acknowledging it.
    fn command(&self, value: u16) -> Result<(), Fail> {
        self.ecam.write16(self.port, self.exp + 0x18, value);
        let (done, _) = time::wait_until(|| self.status() & CC != 0);
        ensure!(done, "no Command Completed for Slot Control {value:#x}");
        self.ack(CC);
        Ok(())
    }
    fn link_up(&self) -> bool {
        self.ecam.read16(self.port, self.exp + 0x12) & (1 << 13) != 0
    }
    fn device_id(&self) -> u32 {
        self.ecam.read32(
            Bdf {
                bus: self.bus,
                dev: 0,
                func: 0,
            },
            0,
        )
    }
    /// Waits for an interrupt beyond `seen` and for `cond`; returns the new count.
    fn wait(&self, seen: u64, what: &str, cond: impl Fn(&Slot) -> bool) -> Result<u64, Fail> {
        let count = || ring0::irq_count(BSP_CPU, VECTOR);
        let (ok, _) = time::wait_until(|| count() > seen && cond(self));
        ensure!(
            ok,
            "{what}: no interrupt or state (irqs {}, slot status {:#x})",
            count() - seen,
            self.status()
        );
        Ok(count())
    }
}

pub fn run(ctx: &Ctx) -> Result<(), Fail> {
    let port_no: u8 = match ctx.cmdline.values("testguest.hotplug_port").last() {
        Some(v) => v
            .parse()
            .map_err(|_| fail!("bad testguest.hotplug_port={v}"))?,
        None => 1,
    };
    let ecam = Ecam::from_acpi()?;
    let port = Bdf {
        bus: 0,
        dev: port_no,
        func: 0,
    };
    ensure!(
        ecam.read32(port, 0) == 0x000c_1b36,
        "no root port at {port}"
    );
    let caps = ecam.capabilities(port);
    let exp = caps
        .find(CAP_EXP)
        .ok_or_else(|| fail!("{port}: no PCIe capability"))?;
    let msi = caps
        .find(CAP_MSI)
        .ok_or_else(|| fail!("{port}: no MSI capability"))?;
    let slot = Slot {
        ecam,
        port,
        exp,
        bus: ecam.read8(port, 0x19),
    };
    // MSI to this CPU, then the slot events pciehp enables with an attention button.
    lapic::enable(SPURIOUS_VECTOR);
    ecam.write32(port, msi + 4, 0xfee0_0000 | (lapic::id() << 12));
    ecam.write32(port, msi + 8, 0);
    ecam.write16(port, msi + 12, u16::from(VECTOR));
    ecam.write16(port, msi + 2, 1);
    slot.ack(EVENTS);
    let ctl = (slot.control() & !(PIC_MASK | PCC)) | ABPE | CCIE | HPIE | DLLSCE | PIC_OFF;
    slot.command(ctl)?;
    ensure!(
        slot.status() & PDS == 0,
        "slot {port_no} is not empty to begin with"
    );
    let mut seen = ring0::irq_count(BSP_CPU, VECTOR);
    info!(ctx, "ready: slot {port_no} empty, events enabled");

    // 1. Hot-add.
    seen = slot.wait(seen, "hot-add", |s| s.status() & PDS != 0 && s.link_up())?;
    slot.ack(PDC | DLLSC);
    let id = slot.device_id();
    ensure!(id == 0x1041_1af4, "the hot-added function reads {id:#010x}");
    slot.command((slot.control() & !PIC_MASK) | PIC_ON)?;
    info!(
        ctx,
        "added: {:02x}:00.0 [1af4:1041], link up, power indicator on", slot.bus
    );

    // 2. Orderly removal: button, blink, power off.
    info!(ctx, "waiting for the attention button");
    seen = slot.wait(seen, "attention button", |s| s.status() & ABP != 0)?;
    slot.ack(ABP);
    slot.command((slot.control() & !PIC_MASK) | PIC_BLINK)?;
    slot.command((slot.control() & !PIC_MASK) | PIC_OFF | PCC)?;
    seen = slot.wait(seen, "power-off", |s| s.status() & PDS == 0 && !s.link_up())?;
    slot.ack(PDC | DLLSC);
    ensure!(
        slot.device_id() == 0xffff_ffff,
        "the removed function still answers"
    );
    // Power back on for the next card, as pciehp does when presence returns.
    slot.command(slot.control() & !PCC)?;
    info!(ctx, "removed (orderly): slot powered off, function gone");

    // 3. Hot-add again, then a surprise removal.
    seen = slot.wait(seen, "second hot-add", |s| {
        s.status() & PDS != 0 && s.link_up()
    })?;
    slot.ack(PDC | DLLSC);
    ensure!(
        slot.device_id() == 0x1041_1af4,
        "the second card does not answer"
    );
    info!(ctx, "added again; waiting for a surprise removal");
    slot.wait(seen, "surprise removal", |s| {
        s.status() & PDS == 0 && !s.link_up()
    })?;
    slot.ack(PDC | DLLSC);
    ensure!(
        slot.device_id() == 0xffff_ffff,
        "the yanked function still answers"
    );
    info!(
        ctx,
        "removed (surprise): presence and link dropped with an interrupt"
    );
    Ok(())
}
