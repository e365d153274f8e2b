//! `failover`: what Linux's net_failover does, in ring 3. The guest has a virtio-net
//! standby (the synthetic path, found at start) and an igbvf primary that comes and goes
//! in slot `testguest.hotplug_port` (the test drives `vmctl failover attach` and
//! `detach`). A stream of test frames to `testguest.vf_peer` (the test's reflector beyond
//! nicd's uplink) runs throughout, one frame at a time: out through the VF while it is
//! present, else through the standby; reflections are taken from both, as net_failover
//! takes frames from both devices. For `testguest.failover_cycles` cycles (default 2):
//! `testguest.failover_frames` frames (default 100) on the standby, and more until the
//! VF is hot-added and brought up; as many on the VF; the attention button: the VF is reset and its slot
//! powered off; then the standby again. A VF that goes by surprise instead (nicd went
//! away with it) ends its cycle early: the standby carries on, and the next cycle waits
//! for the VF the vmm gives back. Each phase prints what came back and what was lost; a
//! frame that does not come back within 50 ms counts as lost.

use super::hotplug::{PRESENCE_AND_LINK, card_in, card_out, ready_slot, release};
use super::virtio_net::{self as net, fill_frame, param};
use super::{Ctx, Fail, ensure, fail, info};
use crate::igbvf::{self, Igbvf, MAX_FRAME};
use crate::pcie::Bdf;
use crate::pcie::regs::{EXP_SLTCTL_PWR_IND_ON, EXP_SLTSTA_ABP};
use crate::ring0::{self, BSP_CPU};
use crate::time::{self, Deadline};
use crate::virtio_net::{HDR_LEN, Setup, VirtioNet};

/// How long a frame may take to come back before it counts as lost (TSC cycles, about
/// 20-50 ms).
const ROUND_TRIP: u64 = time::BUDGET / 400;
/// The VF's rings (above the standby's at 32-48 MiB).
const VF_SCRATCH: (u64, u64) = (48 << 20, 12 << 20);

/// The two paths and the stream's counters.
struct Paths {
    standby: VirtioNet,
    vf: Option<Igbvf>,
    peer: [u8; 6],
    seq: u32,
    tx_slot: u16,
    /// Frames taken from the standby that were not the one awaited (late, or not ours).
    stray: u32,
}

/// What one phase of the stream saw.
#[derive(Default, Clone, Copy)]
struct Phase {
    sent: u32,
    back: u32,
    via_vf: u32,
    via_standby: u32,
}

impl Phase {
    fn add(&mut self, p: Phase) {
        self.sent += p.sent;
        self.back += p.back;
        self.via_vf += p.via_vf;
        self.via_standby += p.via_standby;
    }
}

impl Paths {
    /// Sends frame `seq` on the VF if there is one, else on the standby.
    fn send(&mut self, seq: u32) -> Result<(), Fail> {
        let mut frame = [0u8; 128];
        fill_frame(&mut frame, self.peer, self.standby.mac, seq);
        match &mut self.vf {
            Some(vf) => {
                vf.reclaim_tx();
                ensure!(vf.queue_tx(&frame)?, "the VF's TX ring is full");
                vf.kick_tx();
            }
            None => {
                while self.standby.tx.pop_used().is_some() {}
                let slot = self.tx_slot;
                self.tx_slot = (slot + 1) % self.standby.tx.size;
                self.standby.queue_tx(slot, &frame);
                self.standby.tx.notify();
            }
        }
        Ok(())
    }

    /// Takes received frames from both devices until frame `seq` is among them or the
    /// round trip is over; returns where it came from (`None`: lost).
    fn receive(&mut self, seq: u32) -> Result<Option<bool>, Fail> {
        let deadline = Deadline::after(ROUND_TRIP);
        let mut buf = [0u8; MAX_FRAME];
        loop {
            if let Some(vf) = &mut self.vf {
                while let Some(len) = vf.recv(&mut buf)? {
                    if len >= 18 && frame_seq(&buf) == seq {
                        vf.rearm();
                        return Ok(Some(true));
                    }
                }
                vf.rearm();
            }
            while let Some((id, len)) = self.standby.rx.pop_used() {
                let n = (len as usize)
                    .saturating_sub(HDR_LEN as usize)
                    .min(MAX_FRAME);
                self.standby.read_rx(id as u16, &mut buf[..n]);
                self.standby.post_rx(id as u16);
                self.standby.rx.notify();
                if n >= 18 && frame_seq(&buf) == seq {
                    return Ok(Some(false));
                }
                self.stray += 1;
            }
            if deadline.expired() {
                return Ok(None);
            }
            core::hint::spin_loop();
        }
    }

    /// Streams `frames` frames, one at a time.
    fn stream(&mut self, frames: u32) -> Result<Phase, Fail> {
        let mut p = Phase::default();
        for _ in 0..frames {
            let seq = self.seq;
            self.seq += 1;
            self.send(seq)?;
            p.sent += 1;
            match self.receive(seq)? {
                Some(true) => {
                    p.back += 1;
                    p.via_vf += 1;
                }
                Some(false) => {
                    p.back += 1;
                    p.via_standby += 1;
                }
                None => {}
            }
        }
        Ok(p)
    }
}

/// The sequence number of a test frame.
fn frame_seq(f: &[u8]) -> u32 {
    u32::from_be_bytes([f[14], f[15], f[16], f[17]])
}

fn report(ctx: &Ctx, cycle: u64, what: &str, p: Phase) {
    info!(
        ctx,
        "cycle {cycle}, {what}: {} of {} frames back ({} on the VF, {} on the standby), {} lost",
        p.back,
        p.sent,
        p.via_vf,
        p.via_standby,
        p.sent - p.back
    );
}

pub fn run(ctx: &Ctx) -> Result<(), Fail> {
    let frames = u32::try_from(param(ctx, "testguest.failover_frames", 100)?)
        .map_err(|_| fail!("testguest.failover_frames is too large"))?;
    let cycles = param(ctx, "testguest.failover_cycles", 2)?;
    let peer = match ctx.cmdline.values("testguest.vf_peer").last() {
        None => [0x02, 0, 0, 0, 0, 0xfe],
        Some(v) => {
            crate::cmdline::parse_mac(v).ok_or_else(|| fail!("bad testguest.vf_peer={v}"))?
        }
    };
    let mut standby = net::bring_up(ctx, 0, Setup::new(net::SCRATCH, 64))?;
    standby.fill_rx();
    let (ecam, slot, mut seen) = ready_slot(ctx)?;
    let mut paths = Paths {
        standby,
        vf: None,
        peer,
        seq: 0,
        tx_slot: 0,
        stray: 0,
    };
    let vf_bdf = Bdf::new(slot.bus, 0, 0);
    for c in 0..cycles {
        let p = paths.stream(frames)?;
        report(ctx, c, "standby", p);

        ensure!(p.back > 0, "nothing came back on the standby");
        info!(ctx, "cycle {c}: waiting for a VF");
        // The stream goes on on the standby until the VF is there.
        let mut before = Phase::default();
        let deadline = Deadline::after(time::BUDGET * 3);
        while !(ring0::irq_count(BSP_CPU, crate::pciehp::VECTOR) > seen && card_in(&slot)) {
            ensure!(
                !deadline.expired(),
                "hot-add: no interrupt or state (slot status {:#x})",
                slot.status()
            );
            before.add(paths.stream(1)?);
        }
        report(ctx, c, "until the VF", before);
        slot.ack(PRESENCE_AND_LINK);
        // As pciehp: the slot stays off after a removal until a card is present.
        slot.power_on()?;
        slot.set_power_indicator(EXP_SLTCTL_PWR_IND_ON)?;
        ecam.assign_bars(slot.port, vf_bdf)
            .map_err(|e| fail!("{vf_bdf}: {e}"))?;
        let mut vf = Igbvf::open(&ecam, vf_bdf, &ctx.boot_params, VF_SCRATCH, 256)?;
        ensure!(
            vf.mac == paths.standby.mac,
            "the VF's permanent MAC is not the standby's: the pair would not form"
        );
        ensure!(
            vf.wait_link(time::BUDGET)?,
            "the hot-added VF's link did not come up"
        );
        paths.vf = Some(vf);
        info!(ctx, "cycle {c}: VF at {vf_bdf} up, the primary");
        let p = paths.stream(frames)?;
        report(ctx, c, "VF", p);
        ensure!(p.via_vf > 0, "nothing came back on the VF");
        info!(ctx, "cycle {c}: waiting for the attention button");
        // The stream goes on while the button is not pressed, and the VF is there: it
        // may go by surprise (nicd went away with it).
        let mut during = Phase::default();
        let deadline = Deadline::after(time::BUDGET * 3);
        let mut surprise = false;
        loop {
            if slot.status() & EXP_SLTSTA_ABP != 0 {
                break;
            }
            if !slot.present() {
                surprise = true;
                break;
            }
            ensure!(!deadline.expired(), "no attention button");
            let p = match paths.stream(1) {
                Ok(p) => p,
                // The VF went while the frame was on its way.
                Err(_) if !slot.present() => {
                    surprise = true;
                    break;
                }
                Err(e) => return Err(e),
            };
            during.add(p);
        }
        report(ctx, c, "until the detach", during);
        if surprise {
            // net_failover: the primary is gone, the standby carries on. pciehp would
            // power the slot off too; this guest leaves it on, so that the vmm, which lets
            // a slot the guest powered off rest, gives the next VF this slot, the one it
            // watches.
            paths.vf = None;
            let (gone, _) = time::wait_until(|| card_out(&slot));
            ensure!(gone, "the slot of the surprise-removed VF still has a link");
            slot.ack(PRESENCE_AND_LINK);
            seen = ring0::irq_count(BSP_CPU, crate::pciehp::VECTOR);
            info!(ctx, "cycle {c}: VF gone by surprise");
            continue;
        }
        seen = ring0::irq_count(BSP_CPU, crate::pciehp::VECTOR);
        // net_failover: the primary goes, the standby carries on.
        let vf = paths.vf.take();
        seen = release(&slot, seen, || {
            if let Some(vf) = vf {
                vf.write(igbvf::reg::CTRL, igbvf::CTRL_RST);
            }
        })?;
        info!(ctx, "cycle {c}: VF released");
    }
    let p = paths.stream(frames)?;
    report(ctx, cycles, "after the last detach, standby", p);
    info!(
        ctx,
        "{} frames came back late or were not the stream's", paths.stray
    );
    ensure!(p.back > 0, "nothing came back on the standby at the end");
    Ok(())
}
