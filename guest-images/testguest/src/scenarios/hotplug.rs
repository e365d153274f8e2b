//! `hotplug`: the guest side of PCIe native hotplug (what Linux's pciehp does, with the
//! driver in `pciehp.rs`), on the slot numbered `testguest.hotplug_port` (default 1: the
//! slot of root port 00:01.0), driven by a test through the VMM's API:
//! 1. the guest enables the slot's events and the port's MSI, and says it is ready;
//! 2. a device is hot-added: presence and link come up with an interrupt, the function
//!    answers config cycles;
//! 3. an orderly removal: the attention button interrupts; the guest blinks the power
//!    indicator and powers the slot off, as pciehp does; the device goes;
//! 4. another hot-add, then a surprise removal: presence and link drop with an interrupt.

use super::{Ctx, Fail, ensure, fail, info};
use crate::pcie::Ecam;
use crate::pcie::regs::{
    EXP_SLTCTL_PWR_IND_BLINK, EXP_SLTCTL_PWR_IND_ON, EXP_SLTSTA_ABP, EXP_SLTSTA_DLLSC,
    EXP_SLTSTA_PDC,
};
use crate::pciehp::{Slot, VECTOR};
use crate::ring0::{self, BSP_CPU};
use crate::time;
use crate::{virtio, virtio_net};

/// The ID dword of the card the test plugs in: a virtio-net.
const CARD_ID: u32 = (virtio_net::DEVICE_ID as u32) << 16 | virtio::VENDOR_ID as u32;
/// What an empty slot's function 0 reads.
pub(super) const NO_CARD: u32 = 0xffff_ffff;
/// Presence and link changes, acknowledged together.
pub(super) const PRESENCE_AND_LINK: u16 = EXP_SLTSTA_PDC | EXP_SLTSTA_DLLSC;

/// Waits for an interrupt beyond `seen` and for `cond`; returns the new count.
pub(super) fn wait(
    slot: &Slot,
    seen: u64,
    what: &str,
    cond: impl Fn(&Slot) -> bool,
) -> Result<u64, Fail> {
    let count = || ring0::irq_count(BSP_CPU, VECTOR);
    let (ok, _) = time::wait_until(|| count() > seen && cond(slot));
    ensure!(
        ok,
        "{what}: no interrupt or state (irqs {}, slot status {:#x})",
        count() - seen,
        slot.status()
    );
    Ok(count())
}

pub(super) fn card_in(s: &Slot) -> bool {
    s.present() && s.link_up()
}

pub(super) fn card_out(s: &Slot) -> bool {
    !s.present() && !s.link_up()
}

/// The slot numbered `testguest.hotplug_port` (default 1), empty, with its events enabled
/// and reported ready; the ECAM, the slot, and the hotplug interrupts counted so far.
pub(super) fn ready_slot(ctx: &Ctx) -> Result<(Ecam, Slot, u64), Fail> {
    let number: u32 = match ctx.cmdline.values("testguest.hotplug_port").last() {
        Some(v) => v
            .parse()
            .map_err(|_| fail!("bad testguest.hotplug_port={v}"))?,
        None => 1,
    };
    let ecam = Ecam::from_acpi()?;
    let slot = Slot::find(&ecam, &ecam.walk()?, number)?;
    slot.enable_events()?;
    ensure!(!slot.present(), "slot {number} is not empty to begin with");
    let seen = ring0::irq_count(BSP_CPU, VECTOR);
    info!(ctx, "ready: slot {number} empty, events enabled");
    Ok((ecam, slot, seen))
}

/// pciehp's answer to the attention button (already seen, `seen` the interrupts counted
/// so far): the button acknowledged, the power indicator blinking, `stop` quiescing the
/// device, the slot powered off, presence and link gone and acknowledged, the function
/// absent. Returns the interrupts counted then. The slot stays off.
pub(super) fn release(slot: &Slot, seen: u64, stop: impl FnOnce()) -> Result<u64, Fail> {
    slot.ack(EXP_SLTSTA_ABP);
    slot.set_power_indicator(EXP_SLTCTL_PWR_IND_BLINK)?;
    stop();
    slot.power_off()?;
    let seen = wait(slot, seen, "power-off", card_out)?;
    slot.ack(PRESENCE_AND_LINK);
    ensure!(
        slot.function_id() == NO_CARD,
        "the removed function still answers"
    );
    Ok(seen)
}

pub fn run(ctx: &Ctx) -> Result<(), Fail> {
    let (_, slot, mut seen) = ready_slot(ctx)?;

    // 1. Hot-add.
    seen = wait(&slot, seen, "hot-add", card_in)?;
    slot.ack(PRESENCE_AND_LINK);
    let id = slot.function_id();
    ensure!(id == CARD_ID, "the hot-added function reads {id:#010x}");
    slot.set_power_indicator(EXP_SLTCTL_PWR_IND_ON)?;
    info!(
        ctx,
        "added: {:02x}:00.0 [1af4:1041], link up, power indicator on", slot.bus
    );

    // 2. Orderly removal: button, blink, power off.
    info!(ctx, "waiting for the attention button");
    seen = wait(&slot, seen, "attention button", |s| {
        s.status() & EXP_SLTSTA_ABP != 0
    })?;
    seen = release(&slot, seen, || {})?;
    // Power back on for the next card, as pciehp does when presence returns.
    slot.power_on()?;
    info!(ctx, "removed (orderly): slot powered off, function gone");

    // 3. Hot-add again, then a surprise removal.
    seen = wait(&slot, seen, "second hot-add", card_in)?;
    slot.ack(PRESENCE_AND_LINK);
    ensure!(
        slot.function_id() == CARD_ID,
        "the second card does not answer"
    );
    info!(ctx, "added again; waiting for a surprise removal");
    wait(&slot, seen, "surprise removal", card_out)?;
    slot.ack(PRESENCE_AND_LINK);
    ensure!(
        slot.function_id() == NO_CARD,
        "the yanked function still answers"
    );
    info!(
        ctx,
        "removed (surprise): presence and link dropped with an interrupt"
    );
    Ok(())
}
