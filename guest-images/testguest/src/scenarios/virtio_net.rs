//! virtio-net scenarios, on the ring-3 driver in `virtio_net.rs`:
//! - `virtio-net`: frames out through the TX queue, echoed back by the peer the test runs
//!   on the socket backend, checked byte for byte on the RX queue; MSI-X interrupts counted.
//! - `msix`: vector and function masking with the TX-completion vector: a masked vector
//!   sets its pending bit instead of interrupting, and fires when unmasked.
//! - `net-bench`: sends `testguest.net_frames` frames of `testguest.net_size` bytes as fast
//!   as the ring allows (for `vmm-bench net`).

use super::{Ctx, Fail, ensure, fail, info};
use crate::pcie::{Bdf, Ecam};
use crate::ring0::{self, BSP_CPU};
use crate::time;
use crate::virtio::{self, VirtioPci};
use crate::virtio_net::{self, HDR_LEN, MAX_FRAME, RX_VECTOR, Setup, TX_VECTOR, VirtioNet};

/// Rings and buffers live in RAM at 32 MiB (the tests give the VM 256 MiB).
pub(super) const SCRATCH: (u64, u64) = (32 << 20, 16 << 20);

/// The `nth` virtio-net function in the PCI topology, depth first (the VMM puts the n-th
/// `--net` in the n-th free root port).
pub(super) fn find(nth: usize) -> Result<(Ecam, Bdf), Fail> {
    let ecam = Ecam::from_acpi()?;
    let bdf = virtio::find(&ecam.walk()?, virtio_net::DEVICE_ID, nth)?;
    Ok((ecam, bdf))
}

/// Brings the `nth` virtio-net device up as `setup` says, and says where it is.
pub(super) fn bring_up(ctx: &Ctx, nth: usize, setup: Setup) -> Result<VirtioNet, Fail> {
    let (ecam, bdf) = find(nth)?;
    let net = VirtioNet::open(VirtioPci::open(&ecam, bdf)?, &ctx.boot_params, setup)?;
    let m = net.mac;
    info!(
        ctx,
        "virtio-net at {bdf} mac {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}, queues of {}",
        m[0],
        m[1],
        m[2],
        m[3],
        m[4],
        m[5],
        setup.queue_size
    );
    Ok(net)
}

/// The broadcast address: where test frames go unless a peer is named.
const BROADCAST: [u8; 6] = [0xff; 6];

/// Queues test frame `seq` of `len` bytes to `dst` in transmit slot `slot` (without
/// notifying).
fn queue_frame(net: &mut VirtioNet, slot: u16, seq: u32, len: usize, dst: [u8; 6]) {
    let mut frame = [0u8; MAX_FRAME];
    fill_frame(&mut frame[..len], dst, net.mac, seq);
    net.queue_tx(slot, &frame[..len]);
}

/// Queues broadcast test frame `seq` of `len` bytes in the slot its number picks, and
/// notifies.
pub(super) fn send_one(net: &mut VirtioNet, seq: u32, len: usize) {
    send_one_to(net, seq, len, BROADCAST);
}

/// [`send_one`] to `dst`.
fn send_one_to(net: &mut VirtioNet, seq: u32, len: usize, dst: [u8; 6]) {
    let slot = (seq % u32::from(net.tx.size)) as u16;
    queue_frame(net, slot, seq, len, dst);
    net.tx.notify();
}

/// An Ethernet frame: to `dst` from `src`, EtherType 0x88B5 (local experimental), the
/// sequence number and a pattern derived from it.
pub(super) fn fill_frame(f: &mut [u8], dst: [u8; 6], src: [u8; 6], seq: u32) {
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&[0x88, 0xb5]);
    f[14..18].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in f.iter_mut().enumerate().skip(18) {
        *b = (seq as usize).wrapping_mul(31).wrapping_add(i) as u8;
    }
}

fn frame_len(seq: u32) -> usize {
    const SIZES: [usize; 6] = [60, 1514, 128, 999, 64, 1500];
    SIZES[seq as usize % SIZES.len()]
}

pub(super) fn param(ctx: &Ctx, key: &'static str, default: u64) -> Result<u64, Fail> {
    match ctx.cmdline.values(key).last() {
        None => Ok(default),
        Some(v) => crate::cmdline::parse_size(v).ok_or_else(|| fail!("bad {key}={v}")),
    }
}

/// `virtio-net`: see the module documentation.
pub fn run(ctx: &Ctx) -> Result<(), Fail> {
    let frames = param(ctx, "testguest.net_frames", 32)? as u32;
    let mut net = bring_up(ctx, 0, Setup::new(SCRATCH, 64))?;
    echo(ctx, &mut net, frames)
}

/// Sends `frames` frames and checks each comes back intact: broadcast, echoed as they are
/// by the test's peer, or, with `testguest.net_peer=MAC`, sent to that MAC and expected
/// back with source and destination swapped (a reflector beyond nicd's uplink).
pub(super) fn echo(ctx: &Ctx, net: &mut VirtioNet, frames: u32) -> Result<(), Fail> {
    let peer = match ctx.cmdline.values("testguest.net_peer").last() {
        None => None,
        Some(v) => {
            Some(crate::cmdline::parse_mac(v).ok_or_else(|| fail!("bad testguest.net_peer={v}"))?)
        }
    };
    let (dst, want_dst, want_src) = match peer {
        Some(p) => (p, net.mac, p),
        None => (BROADCAST, BROADCAST, net.mac),
    };
    let (rx_irqs, tx_irqs) = (
        ring0::irq_count(BSP_CPU, RX_VECTOR),
        ring0::irq_count(BSP_CPU, TX_VECTOR),
    );
    net.fill_rx();
    let mut sent = 0u32;
    let mut received = 0u32;
    let deadline = time::Deadline::after(time::BUDGET);
    while received < frames {
        ensure!(
            !deadline.expired(),
            "{received} of {frames} frames came back ({sent} sent)"
        );
        // Keep a few frames in flight.
        while sent < frames && net.tx.in_flight() < net.tx.size && sent < received + 16 {
            send_one_to(net, sent, frame_len(sent), dst);
            sent += 1;
        }
        while net.tx.pop_used().is_some() {}
        while let Some((id, len)) = net.rx.pop_used() {
            let want_len = frame_len(received);
            let want_used = HDR_LEN as usize + want_len;
            ensure!(
                len as usize == want_used,
                "frame {received}: {len} bytes used, expected {want_used}"
            );
            let mut got = [0u8; MAX_FRAME];
            net.read_rx(id as u16, &mut got[..want_len]);
            let mut want = [0u8; MAX_FRAME];
            fill_frame(&mut want[..want_len], want_dst, want_src, received);
            if got[..want_len] != want[..want_len] {
                let at = (0..want_len).find(|i| got[*i] != want[*i]).unwrap_or(0);
                return Err(fail!(
                    "frame {received} differs at byte {at}: {:#x} != {:#x}",
                    got[at],
                    want[at]
                ));
            }
            received += 1;
            net.post_rx(id as u16);
            net.rx.notify();
        }
        core::hint::spin_loop();
    }
    let (rx_n, tx_n) = (
        ring0::irq_count(BSP_CPU, RX_VECTOR) - rx_irqs,
        ring0::irq_count(BSP_CPU, TX_VECTOR) - tx_irqs,
    );
    info!(
        ctx,
        "{frames} frames sent and echoed back intact; MSI-X interrupts: rx {rx_n}, tx {tx_n}"
    );
    ensure!(
        rx_n > 0 && tx_n > 0,
        "no MSI-X interrupts (rx {rx_n}, tx {tx_n})"
    );
    Ok(())
}

/// `msix`: see the module documentation.
pub fn msix(ctx: &Ctx) -> Result<(), Fail> {
    let mut net = bring_up(ctx, 0, Setup::new(SCRATCH, 16).tx_masked())?;
    let count = || ring0::irq_count(BSP_CPU, TX_VECTOR);
    let before = count();
    // Vector 1 masked: the completion sets the pending bit only.
    send_one(&mut net, 0, 60);
    let (done, _) = time::wait_until(|| net.tx.pop_used().is_some());
    ensure!(done, "TX frame never completed");
    let (pending, _) = time::wait_until(|| net.dev.msix_pending() & 0b10 != 0);
    ensure!(
        pending,
        "masked vector 1 did not set its pending bit (PBA {:#x})",
        net.dev.msix_pending()
    );
    ensure!(count() == before, "a masked vector interrupted");
    // Unmasking delivers it and clears the pending bit.
    net.dev.msix_mask(1, false);
    let (fired, _) = time::wait_until(|| count() > before);
    ensure!(fired, "unmasking did not deliver the pending vector");
    ensure!(
        net.dev.msix_pending() & 0b10 == 0,
        "pending bit still set after delivery"
    );
    // A plain completion interrupts at once.
    let now = count();
    send_one(&mut net, 1, 60);
    let (fired, _) = time::wait_until(|| count() > now);
    ensure!(fired, "an unmasked vector did not interrupt");
    info!(
        ctx,
        "masked vector pended, unmasking delivered it; {} interrupts on vector {TX_VECTOR:#x}",
        count() - before
    );
    Ok(())
}

/// A benchmark's `testguest.net_frames` (default 100,000) and `testguest.net_size` (60 to
/// 1514, default 64).
pub(super) fn bench_params(ctx: &Ctx) -> Result<(u64, usize), Fail> {
    let frames = param(ctx, "testguest.net_frames", 100_000)?;
    let size = param(ctx, "testguest.net_size", 64)? as usize;
    ensure!(
        (60..=1514).contains(&size),
        "testguest.net_size must be 60..1514"
    );
    Ok((frames, size))
}

/// `net-bench`: see the module documentation.
pub fn bench(ctx: &Ctx) -> Result<(), Fail> {
    let (frames, size) = bench_params(ctx)?;
    // testguest.net_iommu=1: behind the virtio-iommu, with translated DMA.
    let mut setup = Setup::new(SCRATCH, 256);
    if param(ctx, "testguest.net_iommu", 0)? != 0 {
        setup = setup.translated(super::iommu::map_net_scratch(ctx)?);
    }
    let mut net = bring_up(ctx, 0, setup)?;
    // Every slot holds the same frame; only the descriptors cycle.
    for slot in 0..net.tx.size {
        queue_frame(&mut net, slot, 0, size, BROADCAST);
    }
    // The first pass offered every slot already.
    let mut offered = u64::from(net.tx.size);
    net.tx.notify();
    let mut completed = 0u64;
    let start = time::rdtsc();
    let deadline = time::Deadline::after(time::BUDGET * 10);
    while completed < frames {
        ensure!(
            !deadline.expired(),
            "{completed} of {frames} frames completed"
        );
        let mut reclaimed = 0;
        while let Some((id, _)) = net.tx.pop_used() {
            completed += 1;
            reclaimed += 1;
            if offered < frames {
                net.tx.push(id as u16);
                offered += 1;
            }
        }
        if reclaimed > 0 {
            net.tx.notify();
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
