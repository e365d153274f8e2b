//! 82576 VF scenarios, on the ring-3 igbvf driver in `igbvf.rs` (a VF that nicd serves and
//! the VMM presents behind a root port):
//! - `vf-net`: brings VF 0 up, sends `testguest.vf_frames` frames (default 32, 60 to 1514
//!   bytes, EtherType 0x88B5, a sequence number and a pattern) to `testguest.vf_peer`
//!   (default 02:00:00:00:00:fe), a few in flight, and expects each back in order with
//!   source and destination swapped and otherwise byte-identical (the test's reflector on
//!   the uplink, or another guest running `vf-reflect`); then checks that the RX and TX
//!   MSI-X vectors interrupted and that the VF's statistics registers counted the frames.
//! - `vf-reflect`: brings VF 0 up, prints `ready mac <mac>` once RX is armed and the link
//!   is up, then sends back every 0x88B5 frame with source and destination swapped until
//!   `testguest.vf_frames` were reflected.
//! - `vf-config`: the mailbox requests later scenarios build on (SET_MAC with the VF's
//!   own MAC, SET_VLAN add and remove, SET_LPE for MTU 9000 and back), each of which the
//!   PF must grant; then the interrupt paths: a mailbox reply interrupts on the other
//!   vector once it is re-armed, an EICS write forces an RX interrupt as igbvf's watchdog
//!   does, and with MSI-X entry 2 masked a reply pends until the entry is unmasked.
//! - `vf-bench`: sends `testguest.net_frames` frames of `testguest.net_size` bytes to
//!   `testguest.vf_peer` as fast as the ring allows, and prints the time as `net-bench`
//!   does (`sent N frames of S bytes in C TSC cycles`), for a benchmark on the host.

use super::virtio_net::{fill_frame, param};
use super::{Ctx, Fail, ensure, fail, info};
use crate::cmdline;
use crate::igbvf::{
    self, Igbvf, IgbvfError, MAX_FRAME, Mac, OTHER_MSIX, OTHER_VECTOR, RX_MSIX, RX_VECTOR,
    TX_VECTOR, Verdict,
};
use crate::pcie::Ecam;
use crate::ring0::{self, BSP_CPU};
use crate::time::{self, Deadline};

/// Rings and buffers live in RAM at 48-60 MiB: above the virtio-net scenarios' 32-48 MiB
/// (a guest may run both, for failover), below 64 MiB (the scale benchmark's guests have
/// 64 MiB).
const SCRATCH: (u64, u64) = (48 << 20, 12 << 20);
/// Descriptors per ring.
const RING: u16 = 256;
/// The test frames' EtherType (IEEE 802 local experimental 1).
const ETHERTYPE: [u8; 2] = [0x88, 0xb5];
/// Frames `vf-net` keeps in flight.
const IN_FLIGHT: u32 = 8;
/// Where `vf-net` and `vf-bench` send by default: a locally administered unicast MAC
/// that nothing in the adapter owns, so the switch sends it to the uplink.
const DEFAULT_PEER: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];

/// `testguest.vf_peer`, or the default.
fn peer(ctx: &Ctx) -> Result<[u8; 6], Fail> {
    const KEY: &str = "testguest.vf_peer";
    match ctx.cmdline.values(KEY).last() {
        None => Ok(DEFAULT_PEER),
        Some(v) => cmdline::parse_mac(v).ok_or_else(|| fail!("bad {KEY}={v}")),
    }
}

/// `testguest.vf_frames` (default 32).
fn frames(ctx: &Ctx) -> Result<u32, Fail> {
    let n = param(ctx, "testguest.vf_frames", 32)?;
    u32::try_from(n).map_err(|_| fail!("testguest.vf_frames={n} is too many"))
}

/// Interrupts counted so far on the RX, TX and other vectors.
fn irq_counts() -> [u64; 3] {
    [RX_VECTOR, TX_VECTOR, OTHER_VECTOR].map(|v| ring0::irq_count(BSP_CPU, v))
}

/// Brings the `nth` VF up, waits for its link and says where it is.
fn bring_up(ctx: &Ctx, nth: usize) -> Result<Igbvf, Fail> {
    let ecam = Ecam::from_acpi()?;
    let bdf = igbvf::find(&ecam.walk()?, nth)?;
    let mut vf = Igbvf::open(&ecam, bdf, &ctx.boot_params, SCRATCH, RING)?;
    ensure!(
        vf.wait_link(time::BUDGET)?,
        "the link of the VF at {bdf} (mac {}) did not come up (STATUS {:#x})",
        Mac(vf.mac),
        vf.read(igbvf::reg::STATUS)
    );
    info!(
        ctx,
        "VF at {bdf} mac {} link up, rings of {RING}",
        Mac(vf.mac)
    );
    Ok(vf)
}

/// Length of test frame `seq`: both extremes, and spread in between.
fn frame_len(seq: u32) -> usize {
    match seq % 4 {
        0 => 60,
        1 => 1514,
        _ => 60 + (seq.wrapping_mul(7919) % 1455) as usize,
    }
}

/// Swaps a frame's destination and source MACs.
fn swap_macs(f: &mut [u8]) {
    for i in 0..6 {
        f.swap(i, i + 6);
    }
}

/// `vf-net`: see the module documentation.
pub fn net(ctx: &Ctx) -> Result<(), Fail> {
    let frames = frames(ctx)?;
    let peer = peer(ctx)?;
    let mut vf = bring_up(ctx, 0)?;
    exchange(ctx, &mut vf, frames, peer)
}

/// Sends `frames` test frames to `peer` and checks each comes back (see `vf-net`).
fn exchange(ctx: &Ctx, vf: &mut Igbvf, frames: u32, peer: [u8; 6]) -> Result<(), Fail> {
    // A vector EIAM masked when it fired may not have been re-armed yet (its interrupt
    // can arrive after the last re-arm looked): arm the RX and TX vectors explicitly.
    vf.rearm();
    vf.write(igbvf::reg::EIMS, (1 << RX_MSIX) | (1 << igbvf::TX_MSIX));
    let irqs = irq_counts();
    let stats = vf.stats();
    let (mut sent, mut received, mut ignored, mut bytes) = (0u32, 0u32, 0u32, 0u64);
    let mut frame = [0u8; MAX_FRAME];
    let mut got = [0u8; MAX_FRAME];
    let mut want = [0u8; MAX_FRAME];
    let deadline = Deadline::after(time::BUDGET);
    while received < frames {
        ensure!(
            !deadline.expired(),
            "{received} of {frames} frames came back ({sent} sent)"
        );
        // Keep a few frames in flight, queued behind one TDT write.
        let mut queued = false;
        while sent < frames && sent < received + IN_FLIGHT {
            let len = frame_len(sent);
            fill_frame(&mut frame[..len], peer, vf.mac, sent);
            if !vf.queue_tx(&frame[..len])? {
                break;
            }
            sent += 1;
            bytes += len as u64;
            queued = true;
        }
        if queued {
            vf.kick_tx();
        }
        vf.reclaim_tx();
        while let Some(len) = vf.recv(&mut got)? {
            if got[12..14] != ETHERTYPE {
                // Not a test frame (the uplink's own traffic): not ours to check.
                ignored += 1;
                continue;
            }
            ensure!(
                received < sent,
                "frame {received} came back before it was sent ({sent} sent)"
            );
            let want_len = frame_len(received);
            if len >= 18 {
                let seq = u32::from_be_bytes([got[14], got[15], got[16], got[17]]);
                ensure!(
                    seq == received,
                    "frame {seq} came back when frame {received} was due ({len} bytes)"
                );
            }
            ensure!(
                len == want_len,
                "frame {received} came back with {len} bytes, sent {want_len}"
            );
            fill_frame(&mut want[..want_len], vf.mac, peer, received);
            if got[..len] != want[..len] {
                let at = (0..len).find(|&i| got[i] != want[i]).unwrap_or(0);
                return Err(fail!(
                    "frame {received} differs at byte {at}: {:#04x}, expected {:#04x}",
                    got[at],
                    want[at]
                ));
            }
            received += 1;
        }
        vf.rearm();
        core::hint::spin_loop();
    }
    vf.wait_tx_done(time::BUDGET)?;
    vf.flush_rx();
    let now = irq_counts();
    let [rx_n, tx_n, other_n] = [0, 1, 2].map(|i| now[i] - irqs[i]);
    let s = vf.stats().since(&stats);
    info!(
        ctx,
        "{frames} frames ({bytes} bytes) sent and back intact; MSI-X interrupts: rx {rx_n}, tx {tx_n}, other {other_n}; counters: tx {} frames {} bytes, rx {} frames {} bytes; {ignored} other frames ignored",
        s.gptc,
        s.gotc,
        s.gprc,
        s.gorc
    );
    ensure!(
        rx_n > 0 && tx_n > 0,
        "no MSI-X interrupts (rx {rx_n}, tx {tx_n})"
    );
    ensure!(
        s.gptc >= frames && u64::from(s.gotc) >= bytes,
        "VFGPTC/VFGOTC counted {} frames, {} bytes; {frames} frames, {bytes} bytes were sent",
        s.gptc,
        s.gotc
    );
    ensure!(
        s.gprc >= frames && u64::from(s.gorc) >= bytes,
        "VFGPRC/VFGORC counted {} frames, {} bytes; {frames} frames, {bytes} bytes came back",
        s.gprc,
        s.gorc
    );
    Ok(())
}

/// `vf-reflect`: see the module documentation. The budget starts again with every frame
/// reflected, so a slow peer is waited for as long as it makes progress.
pub fn reflect(ctx: &Ctx) -> Result<(), Fail> {
    let frames = frames(ctx)?;
    let mut vf = bring_up(ctx, 0)?;
    info!(ctx, "ready mac {}", Mac(vf.mac));
    let (mut reflected, mut ignored) = (0u32, 0u32);
    let mut buf = [0u8; MAX_FRAME];
    let mut deadline = Deadline::after(time::BUDGET);
    while reflected < frames {
        ensure!(
            !deadline.expired(),
            "{reflected} of {frames} frames reflected ({ignored} other frames ignored)"
        );
        let mut queued = false;
        // Leave a frame in the RX ring while the TX ring is full: the next round reclaims.
        while vf.tx_in_flight() + 2 < vf.ring_size() && reflected < frames {
            let Some(len) = vf.recv(&mut buf)? else { break };
            if buf[12..14] != ETHERTYPE {
                ignored += 1;
                continue;
            }
            swap_macs(&mut buf[..len]);
            ensure!(
                vf.queue_tx(&buf[..len])?,
                "TX ring full with {} in flight",
                vf.tx_in_flight()
            );
            reflected += 1;
            queued = true;
        }
        if queued {
            vf.kick_tx();
            deadline = Deadline::after(time::BUDGET);
        }
        vf.reclaim_tx();
        vf.rearm();
        core::hint::spin_loop();
    }
    vf.wait_tx_done(time::BUDGET)?;
    vf.flush_rx();
    let s = vf.stats();
    info!(
        ctx,
        "{frames} frames reflected ({ignored} other frames ignored); counters: rx {} frames, tx {} frames",
        s.gprc,
        s.gptc
    );
    Ok(())
}

/// `vf-config`: see the module documentation.
pub fn config(ctx: &Ctx) -> Result<(), Fail> {
    let mut vf = bring_up(ctx, 0)?;
    let mac = vf.mac;
    let v = vf.set_mac(mac)?;
    ensure!(
        v == Verdict::Ack,
        "SET_MAC {} (its own MAC): {v:?}",
        Mac(mac)
    );
    let v = vf.set_vlan(100, true)?;
    ensure!(v == Verdict::Ack, "SET_VLAN add 100: {v:?}");
    let v = vf.set_vlan(100, false)?;
    ensure!(v == Verdict::Ack, "SET_VLAN remove 100: {v:?}");
    ensure!(
        matches!(vf.set_vlan(4096, true), Err(IgbvfError::BadVlan(4096))),
        "SET_VLAN 4096 was not refused by the driver"
    );
    for mtu in [9000, igbvf::DEFAULT_MTU] {
        let v = vf.set_mtu(mtu)?;
        ensure!(v != Verdict::Nack, "SET_LPE for MTU {mtu}: NACK");
    }
    info!(
        ctx,
        "SET_MAC, SET_VLAN add/remove 100 and SET_LPE 9022/1522 granted"
    );

    let count = |v| ring0::irq_count(BSP_CPU, v);
    // A reply interrupts on the other vector. The replies above auto-masked it (EIAM) when
    // the device sent them, which may be before their interrupts arrive here: re-arm the
    // vector under test explicitly rather than by the interrupts counted so far.
    vf.rearm();
    vf.write(igbvf::reg::EIMS, 1 << OTHER_MSIX);
    let before = count(OTHER_VECTOR);
    vf.set_mtu(igbvf::DEFAULT_MTU)?;
    let (fired, _) = time::wait_until(|| count(OTHER_VECTOR) > before);
    ensure!(
        fired,
        "a mailbox reply did not interrupt on vector {OTHER_VECTOR:#x}"
    );
    // EICS forces a cause: RX, as igbvf's watchdog does.
    vf.rearm();
    vf.write(igbvf::reg::EIMS, 1 << RX_MSIX);
    let before = count(RX_VECTOR);
    vf.write(igbvf::reg::EICS, 1 << RX_MSIX);
    let (fired, _) = time::wait_until(|| count(RX_VECTOR) > before);
    ensure!(fired, "EICS did not interrupt on vector {RX_VECTOR:#x}");
    // A masked entry pends, and fires when unmasked.
    vf.rearm();
    vf.write(igbvf::reg::EIMS, 1 << OTHER_MSIX);
    vf.msix_mask(OTHER_MSIX, true);
    let before = count(OTHER_VECTOR);
    vf.set_mtu(igbvf::DEFAULT_MTU)?;
    time::delay_us(10_000);
    ensure!(
        count(OTHER_VECTOR) == before,
        "masked MSI-X entry {OTHER_MSIX} interrupted"
    );
    let pending = vf.msix_pending();
    ensure!(
        pending & (1 << OTHER_MSIX) != 0,
        "masked MSI-X entry {OTHER_MSIX} raised, but its PBA bit is clear (PBA {pending:#x})"
    );
    vf.msix_mask(OTHER_MSIX, false);
    let (fired, _) = time::wait_until(|| count(OTHER_VECTOR) > before);
    ensure!(
        fired,
        "unmasking MSI-X entry {OTHER_MSIX} did not deliver its pending message (PBA {pending:#x})"
    );
    info!(
        ctx,
        "mailbox, EICS and masked-then-unmasked interrupts delivered (PBA while masked {pending:#x})"
    );
    Ok(())
}

/// `vf-bench`: see the module documentation.
pub fn bench(ctx: &Ctx) -> Result<(), Fail> {
    let (frames, size) = super::virtio_net::bench_params(ctx)?;
    let peer = peer(ctx)?;
    let mut vf = bring_up(ctx, 0)?;
    let mut frame = [0u8; MAX_FRAME];
    fill_frame(&mut frame[..size], peer, vf.mac, 0);
    let (mut offered, mut completed) = (0u64, 0u64);
    let start = time::rdtsc();
    let deadline = Deadline::after(time::BUDGET * 10);
    while completed < frames {
        ensure!(
            !deadline.expired(),
            "{completed} of {frames} frames completed"
        );
        completed += u64::from(vf.reclaim_tx());
        let mut queued = false;
        while offered < frames && vf.queue_tx(&frame[..size])? {
            offered += 1;
            queued = true;
        }
        if queued {
            vf.kick_tx();
        }
        core::hint::spin_loop();
    }
    let cycles = time::rdtsc().wrapping_sub(start);
    info!(
        ctx,
        "sent {frames} frames of {size} bytes in {cycles} TSC cycles"
    );
    Ok(())
}

/// `vf-iommu`: VF 0 behind the virtio-iommu (run the vmm with `--iommu`). Its endpoint is
/// attached to a domain that maps only the VF's scratch area, at 256 GiB above its
/// guest-physical address; the driver gives the device those IOVAs. Frames go to the
/// reflector and come back through translated DMA (as `vf-net`). Then the page of the RX
/// buffer the device fills next is unmapped and filled with a canary, and one frame is
/// sent: its reflection must not land (no descriptor done, the canary intact; nicd drops
/// and counts it). With the page mapped again, frames flow on.
pub fn iommu(ctx: &Ctx) -> Result<(), Fail> {
    use crate::virtio_iommu::{S_OK, VirtioIommu, attach, map, unmap};
    const OFFSET: u64 = 0x40_0000_0000;
    const DOMAIN: u32 = 7;
    /// The IOMMU driver's queues, away from the VF's scratch area.
    const IOMMU_SCRATCH: (u64, u64) = (100 << 20, 1 << 20);
    const PAGE: u64 = 4096;
    let frames = frames(ctx)?;
    let peer = peer(ctx)?;
    let ecam = Ecam::from_acpi()?;
    let topo = ecam.walk()?;
    let mut d = VirtioIommu::open(&ecam, &topo, &ctx.boot_params, IOMMU_SCRATCH)?;
    let bdf = igbvf::find(&topo, 0)?;
    let ep = u32::from(bdf.rid());
    ensure!(
        d.status(&attach(DOMAIN, ep))? == S_OK,
        "attach of the VF {bdf} (endpoint {ep:#x}) failed"
    );
    // The rings and TX buffers in one mapping, each RX buffer page in one of its own (an
    // UNMAP takes whole mappings).
    let (base, len) = SCRATCH;
    let (rx, rx_len) = igbvf::rx_buffer_area(base, RING);
    let mut ranges = [(base, rx - base), (rx + rx_len, base + len - rx - rx_len)]
        .into_iter()
        .chain((rx..rx + rx_len).step_by(PAGE as usize).map(|p| (p, PAGE)));
    ensure!(
        ranges.all(|(at, n)| {
            n == 0
                || matches!(
                    d.status(&map(DOMAIN, at + OFFSET, at + OFFSET + n - 1, at)),
                    Ok(S_OK)
                )
        }),
        "map of the VF's scratch area failed"
    );
    let mut vf = Igbvf::open_translated(&ecam, bdf, &ctx.boot_params, SCRATCH, RING, OFFSET)?;
    ensure!(
        vf.wait_link(time::BUDGET)?,
        "the link of the VF at {bdf} did not come up"
    );
    info!(
        ctx,
        "VF at {bdf} mac {} behind the IOMMU: rings and buffers at IOVA = GPA + {OFFSET:#x}",
        Mac(vf.mac)
    );
    exchange(ctx, &mut vf, frames, peer)?;

    // Take the next RX buffer's page back from the device.
    let page = vf.rx_buf(vf.rx_next()) & !(PAGE - 1);
    ensure!(
        d.status(&unmap(DOMAIN, page + OFFSET, page + OFFSET + PAGE - 1))? == S_OK,
        "unmap of {page:#x}'s IOVA failed"
    );
    let canary = [0xa5u8; PAGE as usize];
    crate::phys::write_bytes(page, &canary);
    let mut frame = [0u8; MAX_FRAME];
    fill_frame(&mut frame[..128], peer, vf.mac, 0xdead);
    ensure!(vf.queue_tx(&frame[..128])?, "no room to send");
    vf.kick_tx();
    vf.wait_tx_done(time::BUDGET)?;
    // Its reflection would be back within this (the round trip takes microseconds).
    time::delay_us(300_000);
    // The device either leaves the descriptor alone or writes it back with RXE (the
    // 82576 model does: the frame is dropped, the descriptor consumed); never a frame.
    let mut got = [0u8; MAX_FRAME];
    let outcome = match vf.recv(&mut got) {
        Ok(None) => "its descriptor left alone",
        Err(IgbvfError::RxDescriptor { status, .. }) if status & igbvf::RXD_ERR_RXE != 0 => {
            "its descriptor written back with RXE"
        }
        Ok(Some(n)) => {
            return Err(fail!(
                "a {n}-byte frame landed in a buffer whose page the guest unmapped"
            ));
        }
        Err(e) => return Err(e.into()),
    };
    let mut now = [0u8; PAGE as usize];
    crate::phys::read_bytes(page, &mut now);
    ensure!(
        now == canary,
        "the unmapped page at {page:#x} was written (first change at byte {})",
        (0..now.len()).find(|&i| now[i] != canary[i]).unwrap_or(0)
    );
    info!(
        ctx,
        "the reflected frame did not land: page {page:#x} unmapped, its canary intact, {outcome}"
    );
    ensure!(
        d.status(&map(DOMAIN, page + OFFSET, page + OFFSET + PAGE - 1, page))? == S_OK,
        "re-map of {page:#x} failed"
    );
    exchange(ctx, &mut vf, 8, peer)?;
    info!(ctx, "mapped again: frames flow on");
    Ok(())
}

/// `vf-admin`: what nicd's per-VF policy does as the guest sees it, driven by the test
/// through nicd's API: frames to the reflector and back (`exchange begins` first, so the
/// test can time a max_tx_rate and check a port VLAN on the wire), then three frames
/// from a MAC that is not the VF's (the spoof check must drop them), then the link: the
/// guest waits for STATUS.LU to drop (the test sets `state disable`) and to return
/// (`state auto`).
pub fn admin(ctx: &Ctx) -> Result<(), Fail> {
    /// A source MAC the VF does not own.
    const SPOOFED: [u8; 6] = [0x02, 0x5b, 0x00, 0x00, 0x00, 0x01];
    let frames = frames(ctx)?;
    let peer = peer(ctx)?;
    let mut vf = bring_up(ctx, 0)?;
    info!(ctx, "exchange begins");
    exchange(ctx, &mut vf, frames, peer)?;
    let mut frame = [0u8; MAX_FRAME];
    for seq in 0..3 {
        fill_frame(&mut frame[..100], peer, SPOOFED, 0x5000 + seq);
        ensure!(vf.queue_tx(&frame[..100])?, "no room to send");
    }
    vf.kick_tx();
    vf.wait_tx_done(time::BUDGET)?;
    info!(ctx, "sent 3 frames from {}", Mac(SPOOFED));
    info!(ctx, "waiting for the link to go down");
    let deadline = Deadline::after(time::BUDGET * 3);
    while vf.link_up()? {
        ensure!(!deadline.expired(), "the link stayed up");
        time::delay_us(1000);
    }
    info!(ctx, "link down (STATUS {:#x})", vf.read(igbvf::reg::STATUS));
    ensure!(
        vf.wait_link(time::BUDGET * 3)?,
        "the link did not come back"
    );
    info!(ctx, "link up again");
    Ok(())
}

/// `vf-sink`: brings VF 0 up, says `ready mac <mac>`, then takes every frame it receives
/// and gives the buffers back, until `testguest.net_frames` frames came or none came for
/// a thirtieth of the budget (a few hundred ms) after the first; prints how many (for
/// `vmm-bench vf`, VF to VF).
pub fn sink(ctx: &Ctx) -> Result<(), Fail> {
    let frames = param(ctx, "testguest.net_frames", 100_000)?;
    let mut vf = bring_up(ctx, 0)?;
    info!(ctx, "ready mac {}", Mac(vf.mac));
    let mut buf = [0u8; MAX_FRAME];
    let mut got = 0u64;
    let mut deadline = Deadline::after(time::BUDGET * 10);
    while got < frames && !deadline.expired() {
        let before = got;
        while let Some(_len) = vf.recv(&mut buf)? {
            got += 1;
        }
        if got > before {
            deadline = Deadline::after(time::BUDGET / 30);
        }
        core::hint::spin_loop();
    }
    ensure!(got > 0, "no frame came");
    info!(ctx, "received {got} frames");
    Ok(())
}

/// `vf-hotplug`: a VF hot-added into slot `testguest.hotplug_port` (default 1) while the
/// guest runs, as Linux's pciehp and igbvf see it:
/// 1. the guest enables the slot's events and says it is ready;
/// 2. a VF is hot-added: presence and link come up with an interrupt; the guest places its
///    BARs in the port's windows, brings igbvf up and exchanges `testguest.vf_frames`
///    frames with the test's reflector;
/// 3. orderly removal: the attention button; the guest stops the VF (CTRL.RST, as igbvf's
///    remove does), blinks the indicator and powers the slot off; the function is gone;
/// 4. a VF is hot-added again and brought up; then it is lost by surprise (the test kills
///    nicd): presence and link drop with an interrupt, and the function reads all ones.
pub fn hotplug(ctx: &Ctx) -> Result<(), Fail> {
    use super::hotplug::{
        NO_CARD, PRESENCE_AND_LINK, card_in, card_out, ready_slot, release, wait,
    };
    use crate::pcie::regs::{EXP_SLTCTL_PWR_IND_ON, EXP_SLTSTA_ABP};
    const VF_ID: u32 = (igbvf::DEVICE_ID as u32) << 16 | igbvf::VENDOR_ID as u32;

    let frames = frames(ctx)?;
    let peer = peer(ctx)?;
    let (ecam, slot, mut seen) = ready_slot(ctx)?;

    let vf_bdf = crate::pcie::Bdf::new(slot.bus, 0, 0);
    let added = |ctx: &Ctx, seen: u64, what: &str| -> Result<(u64, Igbvf), Fail> {
        let seen = wait(&slot, seen, what, card_in)?;
        slot.ack(PRESENCE_AND_LINK);
        let id = slot.function_id();
        ensure!(id == VF_ID, "the hot-added function reads {id:#010x}");
        slot.set_power_indicator(EXP_SLTCTL_PWR_IND_ON)?;
        let placed = ecam
            .assign_bars(slot.port, vf_bdf)
            .map_err(|e| fail!("{vf_bdf}: {e}"))?;
        let mut vf = Igbvf::open(&ecam, vf_bdf, &ctx.boot_params, SCRATCH, RING)?;
        ensure!(
            vf.wait_link(time::BUDGET)?,
            "the hot-added VF's link did not come up"
        );
        info!(
            ctx,
            "added: VF at {vf_bdf} ({placed} BARs placed) mac {} link up",
            Mac(vf.mac)
        );
        Ok((seen, vf))
    };

    // 2. Hot-add, traffic.
    let (s, mut vf) = added(ctx, seen, "hot-add")?;
    seen = s;
    exchange(ctx, &mut vf, frames, peer)?;

    // 3. Orderly removal.
    info!(ctx, "waiting for the attention button");
    seen = wait(&slot, seen, "attention button", |s| {
        s.status() & EXP_SLTSTA_ABP != 0
    })?;
    seen = release(&slot, seen, || vf.write(igbvf::reg::CTRL, igbvf::CTRL_RST))?;
    slot.power_on()?;
    info!(
        ctx,
        "removed (orderly): VF reset, slot powered off, function gone"
    );

    // 4. Again, then lost by surprise.
    let (s, mut vf) = added(ctx, seen, "second hot-add")?;
    seen = s;
    exchange(ctx, &mut vf, frames.min(8), peer)?;
    info!(ctx, "added again; waiting for the VF to be lost");
    wait(&slot, seen, "surprise loss", card_out)?;
    slot.ack(PRESENCE_AND_LINK);
    ensure!(
        slot.function_id() == NO_CARD,
        "the lost function still answers"
    );
    ensure!(
        vf.read(igbvf::reg::STATUS) == u32::MAX,
        "the lost VF's registers do not read all ones"
    );
    info!(
        ctx,
        "lost (surprise): presence and link dropped, registers read all ones"
    );
    Ok(())
}
