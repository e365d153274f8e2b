//! virtio-net scenarios, on the ring-3 driver in `virtio.rs`:
//! - `virtio-net`: frames out through the TX queue, echoed back by the peer the test runs
//!   on the socket backend, checked byte for byte on the RX queue; MSI-X interrupts counted.
//! - `msix`: vector and function masking with the TX-completion vector: a masked vector
//!   sets its pending bit instead of interrupting, and fires when unmasked.
//! - `net-bench`: sends `testguest.net_frames` frames of `testguest.net_size` bytes as fast
//!   as the ring allows (for `vmm-bench net`).

use super::{Ctx, Fail, ensure, fail, info};
use crate::lapic;
use crate::pcie::Ecam;
use crate::phys;
use crate::ring0::{self, BSP_CPU, SPURIOUS_VECTOR};
use crate::time;
use crate::virtio::{Scratch, VirtioPci, Vq, flags};

const VIRTIO_NET: u16 = 0x1041;
const F_MAC: u64 = 1 << 5;
const HDR: u64 = 12;
const RX_VECTOR: u8 = 0x50;
const TX_VECTOR: u8 = 0x51;
const CONFIG_VECTOR: u8 = 0x52;
/// Rings and buffers live in RAM at 32 MiB (the tests give the VM 256 MiB).
pub(super) const SCRATCH: (u64, u64) = (32 << 20, 16 << 20);
/// VIRTIO_F_ACCESS_PLATFORM.
pub(super) const F_ACCESS_PLATFORM: u64 = 1 << 33;
const BUF: u64 = 2048;

pub(super) struct Net {
    dev: VirtioPci,
    rx: Vq,
    pub(super) tx: Vq,
    pub(super) rx_bufs: u64,
    pub(super) tx_bufs: u64,
    rx_posted: bool,
    mac: [u8; 6],
}

fn bring_up(ctx: &Ctx, queue_size: u16, tx_masked: bool) -> Result<Net, Fail> {
    bring_up_with(ctx, queue_size, tx_masked, 0, 0)
}

/// Brings the device up accepting `extra` features, handing it addresses offset by
/// `dma_offset` from guest-physical (IOVAs behind the IOMMU).
pub(super) fn bring_up_with(
    ctx: &Ctx,
    queue_size: u16,
    tx_masked: bool,
    extra: u64,
    dma_offset: u64,
) -> Result<Net, Fail> {
    let ecam = Ecam::from_acpi()?;
    let dev = VirtioPci::find(&ecam, VIRTIO_NET)?;
    bring_up_dev(ctx, dev, SCRATCH, queue_size, tx_masked, extra, dma_offset)
}

/// Brings up the virtio-net device at function 0 of `bus`, its rings and buffers in
/// `scratch` (base, length).
pub(super) fn bring_up_on_bus(
    ctx: &Ctx,
    bus: u8,
    scratch: (u64, u64),
    extra: u64,
    dma_offset: u64,
) -> Result<Net, Fail> {
    let ecam = Ecam::from_acpi()?;
    let dev = VirtioPci::find_on_bus(&ecam, bus, VIRTIO_NET)?;
    bring_up_dev(ctx, dev, scratch, 64, false, extra, dma_offset)
}

fn bring_up_dev(
    ctx: &Ctx,
    mut dev: VirtioPci,
    scratch_area: (u64, u64),
    queue_size: u16,
    tx_masked: bool,
    extra: u64,
    dma_offset: u64,
) -> Result<Net, Fail> {
    dev.dma_offset = dma_offset;
    let offered = dev.init(F_MAC | extra)?;
    ensure!(
        offered & extra == extra,
        "the device does not offer {extra:#x}"
    );
    ensure!(
        offered & F_MAC != 0,
        "the device does not offer VIRTIO_NET_F_MAC"
    );
    let mut mac = [0u8; 6];
    for (i, b) in mac.iter_mut().enumerate() {
        *b = dev.config8(i as u64);
    }
    let mut scratch = Scratch::new(&ctx.boot_params, scratch_area.0, scratch_area.1)?;
    lapic::enable(SPURIOUS_VECTOR);
    let apic = lapic::id();
    dev.msix_vector(0, apic, RX_VECTOR, false);
    dev.msix_vector(1, apic, TX_VECTOR, tx_masked);
    dev.msix_vector(2, apic, CONFIG_VECTOR, false);
    dev.msix_enable();
    let rx = dev.setup_queue(&mut scratch, 0, queue_size, 0)?;
    let tx = dev.setup_queue(&mut scratch, 1, queue_size, 1)?;
    dev.driver_ok();
    let status = dev.status();
    ensure!(
        status & 4 != 0 && status & 0x40 == 0,
        "device status {status:#x} after DRIVER_OK"
    );
    let n = u64::from(queue_size);
    let rx_bufs = scratch.alloc(n * BUF, 4096)?;
    let tx_bufs = scratch.alloc(n * BUF, 4096)?;
    info!(
        ctx,
        "virtio-net at {} mac {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}, queues of {queue_size}",
        dev.bdf,
        mac[0],
        mac[1],
        mac[2],
        mac[3],
        mac[4],
        mac[5]
    );
    Ok(Net {
        dev,
        rx,
        tx,
        rx_bufs,
        tx_bufs,
        rx_posted: false,
        mac,
    })
}

impl Net {
    /// Queues one frame with sequence number `seq` and notifies.
    pub(super) fn send_one(&mut self, seq: u32, len: usize) {
        let slot = (seq % u32::from(self.tx.size)) as u16;
        self.queue_tx(slot, seq, len);
        self.tx.notify();
    }

    /// Pops a used receive chain of length 0 (a frame that could not be written) and posts
    /// the buffer again; false if none is there.
    pub(super) fn rx_used_empty(&mut self) -> bool {
        while self.tx.pop_used().is_some() {}
        match self.rx.pop_used() {
            Some((id, 0)) => {
                self.post_rx(id as u16);
                self.rx.notify();
                true
            }
            _ => false,
        }
    }

    fn post_rx(&mut self, slot: u16) {
        self.rx.set_desc(
            slot,
            self.rx_bufs + u64::from(slot) * BUF,
            BUF as u32,
            flags::WRITE,
            0,
        );
        self.rx.push(slot);
    }

    /// Writes frame `seq` of `len` bytes into TX slot `slot` and offers it.
    fn queue_tx(&mut self, slot: u16, seq: u32, len: usize) {
        let buf = self.tx_bufs + u64::from(slot) * BUF;
        let mut frame = [0u8; 1536];
        fill_frame(&mut frame[..len], self.mac, seq);
        // Header (zeros), then the frame, written a quadword at a time.
        let mut bytes = [0u8; 1536 + 16];
        bytes[HDR as usize..HDR as usize + len].copy_from_slice(&frame[..len]);
        let total = HDR as usize + len;
        for q in (0..total.next_multiple_of(8)).step_by(8) {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[q..q + 8]);
            phys::write_u64(buf + q as u64, u64::from_le_bytes(w));
        }
        self.tx.set_desc(slot, buf, total as u32, 0, 0);
        self.tx.push(slot);
    }
}

/// An Ethernet frame: broadcast destination, our source, EtherType 0x88B5 (local
/// experimental), the sequence number and a pattern derived from it.
fn fill_frame(f: &mut [u8], mac: [u8; 6], seq: u32) {
    f[..6].fill(0xff);
    f[6..12].copy_from_slice(&mac);
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

fn read_bytes(addr: u64, out: &mut [u8]) {
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        let w = phys::read_u64(addr + 8 * i as u64).to_le_bytes();
        chunk.copy_from_slice(&w[..chunk.len()]);
    }
}

fn param(ctx: &Ctx, key: &'static str, default: u64) -> Result<u64, Fail> {
    match ctx.cmdline.values(key).last() {
        None => Ok(default),
        Some(v) => crate::cmdline::parse_size(v).ok_or_else(|| fail!("bad {key}={v}")),
    }
}

/// `virtio-net`: see the module documentation.
pub fn run(ctx: &Ctx) -> Result<(), Fail> {
    let frames = param(ctx, "testguest.net_frames", 32)? as u32;
    let mut net = bring_up(ctx, 64, false)?;
    echo(ctx, &mut net, frames)
}

/// Sends `frames` frames and checks each comes back intact (the peer echoes them).
pub(super) fn echo(ctx: &Ctx, net: &mut Net, frames: u32) -> Result<(), Fail> {
    let (rx_irqs, tx_irqs) = (
        ring0::irq_count(BSP_CPU, RX_VECTOR),
        ring0::irq_count(BSP_CPU, TX_VECTOR),
    );
    // Post the receive buffers once; later calls find them posted (and re-posted as used).
    if !net.rx_posted {
        for slot in 0..net.rx.size {
            net.post_rx(slot);
        }
        net.rx_posted = true;
    }
    net.rx.notify();
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
            let slot = (sent % u32::from(net.tx.size)) as u16;
            net.queue_tx(slot, sent, frame_len(sent));
            sent += 1;
            net.tx.notify();
        }
        while net.tx.pop_used().is_some() {}
        while let Some((id, len)) = net.rx.pop_used() {
            let want_len = frame_len(received);
            ensure!(
                len as usize == HDR as usize + want_len,
                "frame {received}: {len} bytes used, expected {}",
                HDR as usize + want_len
            );
            let mut got = [0u8; 1536];
            read_bytes(
                net.rx_bufs + u64::from(id) * BUF + HDR,
                &mut got[..want_len],
            );
            let mut want = [0u8; 1536];
            fill_frame(&mut want[..want_len], net.mac, received);
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
    let mut net = bring_up(ctx, 16, true)?;
    let count = || ring0::irq_count(BSP_CPU, TX_VECTOR);
    let before = count();
    // Vector 1 masked: the completion sets the pending bit only.
    net.queue_tx(0, 0, 60);
    net.tx.notify();
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
    net.queue_tx(1, 1, 60);
    net.tx.notify();
    let (fired, _) = time::wait_until(|| count() > now);
    ensure!(fired, "an unmasked vector did not interrupt");
    info!(
        ctx,
        "masked vector pended, unmasking delivered it; {} interrupts on vector {TX_VECTOR:#x}",
        count() - before
    );
    Ok(())
}

/// `net-bench`: see the module documentation.
pub fn bench(ctx: &Ctx) -> Result<(), Fail> {
    let frames = param(ctx, "testguest.net_frames", 100_000)?;
    let size = param(ctx, "testguest.net_size", 64)? as usize;
    ensure!(
        (60..=1514).contains(&size),
        "testguest.net_size must be 60..1514"
    );
    // testguest.net_iommu=1: behind the virtio-iommu, with translated DMA.
    let mut net = if param(ctx, "testguest.net_iommu", 0)? != 0 {
        let offset = super::iommu::map_net_scratch(ctx)?;
        bring_up_with(ctx, 256, false, F_ACCESS_PLATFORM, offset)?
    } else {
        bring_up(ctx, 256, false)?
    };
    // Every slot holds the same frame; only the descriptors cycle.
    for slot in 0..net.tx.size {
        net.queue_tx(slot, 0, size);
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
