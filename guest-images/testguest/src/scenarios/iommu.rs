//! `iommu-requests`: a ring-3 virtio-iommu driver talks to the VMM's virtio-iommu at
//! 00:1f.0 (run the VMM with --iommu): config, the VIOT, PROBE reporting the x86 MSI window,
//! ATTACH, MAP, UNMAP, DETACH, and the statuses of requests the device must refuse.

use super::{Ctx, Fail, ensure, info};
use crate::acpi::{self, Root};
use crate::pcie::Ecam;
use crate::phys;
use crate::time;
use crate::virtio::{Scratch, VirtioPci, Vq, flags};

const VIRTIO_IOMMU: u16 = 0x1057;
const F_INPUT_RANGE: u64 = 1 << 0;
const F_DOMAIN_RANGE: u64 = 1 << 1;
const F_MAP_UNMAP: u64 = 1 << 2;
const F_PROBE: u64 = 1 << 4;
const SCRATCH: (u64, u64) = (48 << 20, 1 << 20);
const OK: u8 = 0;
const INVAL: u8 = 4;
const RANGE: u8 = 5;
const NOENT: u8 = 6;
const ENDPOINT: u32 = 0x0100; // 01:00.0, behind root port 1

struct Driver {
    q: Vq,
    events: Vq,
    event_bufs: u64,
    req: u64,
    reply: u64,
}

impl Driver {
    /// Sends `body` and returns the reply (`reply_len` bytes; the status is the first byte
    /// of the last four).
    fn send(&mut self, body: &[u8], reply_len: usize) -> Result<[u8; 96], Fail> {
        let mut padded = [0u8; 80];
        padded[..body.len()].copy_from_slice(body);
        for (i, w) in padded.chunks(8).enumerate() {
            phys::write_u64(
                self.req + 8 * i as u64,
                u64::from_le_bytes(w.try_into().unwrap_or([0; 8])),
            );
        }
        for i in 0..12u64 {
            phys::write_u64(self.reply + 8 * i, 0xffff_ffff_ffff_ffff);
        }
        self.q.set_desc(0, self.req, body.len() as u32, 1, 1);
        self.q
            .set_desc(1, self.reply, reply_len as u32, flags::WRITE, 0);
        self.q.push(0);
        self.q.notify();
        let (done, _) = time::wait_until(|| self.q.pop_used().is_some());
        ensure!(done, "request type {} never completed", body[0]);
        let mut out = [0u8; 96];
        for (i, chunk) in out.chunks_mut(8).enumerate() {
            chunk.copy_from_slice(&phys::read_u64(self.reply + 8 * i as u64).to_le_bytes());
        }
        Ok(out)
    }

    fn status(&mut self, body: &[u8]) -> Result<u8, Fail> {
        Ok(self.send(body, 4)?[0])
    }
}

fn attach(kind: u8, domain: u32, endpoint: u32) -> [u8; 20] {
    let mut b = [0u8; 20];
    b[0] = kind;
    b[4..8].copy_from_slice(&domain.to_le_bytes());
    b[8..12].copy_from_slice(&endpoint.to_le_bytes());
    b
}

fn map(domain: u32, start: u64, end: u64, phys: u64) -> [u8; 36] {
    let mut b = [0u8; 36];
    b[0] = 3;
    b[4..8].copy_from_slice(&domain.to_le_bytes());
    b[8..16].copy_from_slice(&start.to_le_bytes());
    b[16..24].copy_from_slice(&end.to_le_bytes());
    b[24..32].copy_from_slice(&phys.to_le_bytes());
    b[32..36].copy_from_slice(&3u32.to_le_bytes());
    b
}

fn unmap(domain: u32, start: u64, end: u64) -> [u8; 28] {
    let mut b = [0u8; 28];
    b[0] = 4;
    b[4..8].copy_from_slice(&domain.to_le_bytes());
    b[8..16].copy_from_slice(&start.to_le_bytes());
    b[16..24].copy_from_slice(&end.to_le_bytes());
    b
}

/// Opens the virtio-iommu and its request queue.
fn open(ctx: &Ctx) -> Result<Driver, Fail> {
    let ecam = Ecam::from_acpi()?;
    let dev = VirtioPci::find_on_root_bus(&ecam, VIRTIO_IOMMU)?;
    dev.init(F_INPUT_RANGE | F_DOMAIN_RANGE | F_MAP_UNMAP | F_PROBE)?;
    let mut scratch = Scratch::new(&ctx.boot_params, SCRATCH.0, SCRATCH.1)?;
    let q = dev.setup_queue(&mut scratch, 0, 16, 0xffff)?;
    let mut events = dev.setup_queue(&mut scratch, 1, 16, 0xffff)?;
    dev.driver_ok();
    // Eight 24-byte event buffers for fault reports.
    let event_bufs = scratch.alloc(8 * 32, 64)?;
    for i in 0..8u16 {
        events.set_desc(i, event_bufs + 32 * u64::from(i), 24, flags::WRITE, 0);
        events.push(i);
    }
    events.notify();
    Ok(Driver {
        q,
        events,
        event_bufs,
        req: scratch.alloc(128, 64)?,
        reply: scratch.alloc(128, 64)?,
    })
}

/// `iommu-isolation`: 01:00.0 in domain 1 and 02:00.0 in domain 2, both with their rings
/// and buffers at the same IOVAs but mapped to different memory: each works through its own
/// domain; a buffer IOVA mapped only in domain 1 faults for 02:00.0 and is not sent.
pub fn isolation_scenario(ctx: &Ctx) -> Result<(), Fail> {
    use super::virtio_net::{F_ACCESS_PLATFORM, bring_up_on_bus, echo};
    const A: (u64, u64) = (32 << 20, 16 << 20);
    const B: (u64, u64) = (64 << 20, 16 << 20);
    const SECRET_IOVA: u64 = 0x50_0000_0000;
    const EP_B: u32 = 0x0200;
    let mut d = open(ctx)?;
    for (ep, dom, area) in [(ENDPOINT, 1, A), (EP_B, 2, B)] {
        ensure!(
            d.status(&attach(1, dom, ep))? == OK,
            "attach {ep:#x} to {dom} failed"
        );
        let m = map(dom, IOVA_BASE, IOVA_BASE + area.1 - 1, area.0);
        ensure!(d.status(&m)? == OK, "map for domain {dom} failed");
    }
    // Something only domain 1 can see: A's receive buffers again, at another IOVA.
    ensure!(
        d.status(&map(1, SECRET_IOVA, SECRET_IOVA + 0xfff, A.0 + 0x1000))? == OK,
        "map secret"
    );
    let mut a = bring_up_on_bus(ctx, 1, A, F_ACCESS_PLATFORM, IOVA_BASE - A.0)?;
    let mut b = bring_up_on_bus(ctx, 2, B, F_ACCESS_PLATFORM, IOVA_BASE - B.0)?;
    echo(ctx, &mut a, 8)?;
    echo(ctx, &mut b, 8)?;
    info!(
        ctx,
        "same IOVAs, two domains: both devices echo through their own memory"
    );
    // 02:00.0 is pointed at the IOVA only domain 1 maps: its DMA read faults.
    b.tx.set_desc(5, SECRET_IOVA - (IOVA_BASE - B.0), 64, 0, 0);
    b.tx.push(5);
    b.tx.notify();
    let mut event = None;
    let (faulted, _) = time::wait_until(|| {
        event = d.events.pop_used();
        event.is_some()
    });
    ensure!(faulted, "no fault for 02:00.0 reading domain 1's IOVA");
    let id = u64::from(event.map_or(0, |e| e.0));
    let mut ev = [0u8; 24];
    for (i, chunk) in ev.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&phys::read_u64(d.event_bufs + 32 * id + 8 * i as u64).to_le_bytes());
    }
    let endpoint = u32::from_le_bytes([ev[8], ev[9], ev[10], ev[11]]);
    let address = u64::from_le_bytes(ev[16..24].try_into().unwrap_or_default());
    ensure!(
        ev[0] == 2 && endpoint == EP_B && address == SECRET_IOVA,
        "fault reason {} endpoint {endpoint:#x} address {address:#x}",
        ev[0]
    );
    info!(
        ctx,
        "02:00.0 faulted reading IOVA {SECRET_IOVA:#x}, which only domain 1 maps"
    );
    Ok(())
}

/// `iommu-fault`: the device behind the IOMMU loses the mapping of its receive buffers
/// while a frame arrives: the write faults, the fault is reported on the event queue, the
/// guest memory behind the old mapping is untouched, and once the buffers are mapped again
/// the device works on.
pub fn fault_scenario(ctx: &Ctx) -> Result<(), Fail> {
    use super::virtio_net::{F_ACCESS_PLATFORM, SCRATCH as NET, bring_up_with, echo};
    const RINGS: u64 = 0x1000;
    const RX_END: u64 = 0x21000;
    let mut d = open(ctx)?;
    ensure!(d.status(&attach(1, 1, ENDPOINT))? == OK, "attach failed");
    // Three mappings: rings, receive buffers, the rest.
    let pieces = [(0, RINGS), (RINGS, RX_END), (RX_END, NET.1)];
    for (lo, hi) in pieces {
        let m = map(1, IOVA_BASE + lo, IOVA_BASE + hi - 1, NET.0 + lo);
        ensure!(d.status(&m)? == OK, "map {lo:#x}..{hi:#x} failed");
    }
    let offset = IOVA_BASE - NET.0;
    let mut net = bring_up_with(ctx, 64, false, F_ACCESS_PLATFORM, offset)?;
    ensure!(
        net.rx_bufs == NET.0 + RINGS,
        "receive buffers at {:#x}, not where mapped",
        net.rx_bufs
    );
    echo(ctx, &mut net, 4)?;

    // Mark the receive buffers, then withdraw their mapping.
    for q in (NET.0 + RINGS..NET.0 + RX_END).step_by(8) {
        phys::write_u64(q, 0x5a5a_5a5a_5a5a_5a5a);
    }
    let rx_iova = (IOVA_BASE + RINGS, IOVA_BASE + RX_END - 1);
    ensure!(
        d.status(&unmap(1, rx_iova.0, rx_iova.1))? == OK,
        "unmap failed"
    );
    net.send_one(0x77, 200);
    let (got, _) = time::wait_until(|| d.events.pop_used().is_some());
    ensure!(got, "no fault event");
    let mut ev = [0u8; 24];
    for (i, chunk) in ev.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&phys::read_u64(d.event_bufs + 8 * i as u64).to_le_bytes());
    }
    let (reason, flags, endpoint) = (
        ev[0],
        u32::from_le_bytes([ev[4], ev[5], ev[6], ev[7]]),
        u32::from_le_bytes([ev[8], ev[9], ev[10], ev[11]]),
    );
    let address = u64::from_le_bytes(ev[16..24].try_into().unwrap_or_default());
    ensure!(
        reason == 2 && endpoint == ENDPOINT,
        "fault reason {reason}, endpoint {endpoint:#x}"
    );
    ensure!(
        flags & 0x102 == 0x102,
        "fault flags {flags:#x}: expected a write with an address"
    );
    ensure!(
        (rx_iova.0..=rx_iova.1).contains(&address),
        "fault at {address:#x}, outside the receive buffers"
    );
    // The frame went nowhere: the buffer it would have used is returned empty, memory intact.
    let (used, _) = time::wait_until(|| net.rx_used_empty());
    ensure!(used, "the receive chain did not come back");
    for q in (NET.0 + RINGS..NET.0 + RX_END).step_by(8) {
        ensure!(
            phys::read_u64(q) == 0x5a5a_5a5a_5a5a_5a5a,
            "guest memory at {q:#x} changed after the unmap"
        );
    }
    info!(
        ctx,
        "write fault at IOVA {address:#x} reported (flags {flags:#x}); memory behind it untouched"
    );
    // Map again: the device carries on.
    let m = map(1, rx_iova.0, rx_iova.1, NET.0 + RINGS);
    ensure!(d.status(&m)? == OK, "map again failed");
    echo(ctx, &mut net, 4)
}

/// Where the virtio-net rings and buffers appear to the device: far from their
/// guest-physical addresses, so an untranslated access could not land on them.
const IOVA_BASE: u64 = 0x40_0000_0000;

/// Puts 01:00.0 in domain 1 with the virtio-net scratch area mapped at [`IOVA_BASE`];
/// returns the offset the driver adds to guest-physical addresses.
pub(super) fn map_net_scratch(ctx: &Ctx) -> Result<u64, Fail> {
    use super::virtio_net::SCRATCH as NET_SCRATCH;
    let mut d = open(ctx)?;
    ensure!(
        d.status(&attach(1, 1, ENDPOINT))? == OK,
        "attach 01:00.0 failed"
    );
    let m = map(1, IOVA_BASE, IOVA_BASE + NET_SCRATCH.1 - 1, NET_SCRATCH.0);
    ensure!(d.status(&m)? == OK, "map failed");
    info!(
        ctx,
        "01:00.0 in domain 1; IOVA {IOVA_BASE:#x}+{:#x} -> {:#x}", NET_SCRATCH.1, NET_SCRATCH.0
    );
    Ok(IOVA_BASE - NET_SCRATCH.0)
}

/// `iommu-map`: the virtio-net echo test with the device behind the IOMMU, its rings and
/// buffers at IOVAs different from their guest-physical addresses.
pub fn map_scenario(ctx: &Ctx) -> Result<(), Fail> {
    use super::virtio_net::{F_ACCESS_PLATFORM, bring_up_with, echo};
    let offset = map_net_scratch(ctx)?;
    let mut net = bring_up_with(ctx, 64, false, F_ACCESS_PLATFORM, offset)?;
    let frames = match ctx.cmdline.values("testguest.net_frames").last() {
        Some(v) => v.parse().unwrap_or(32),
        None => 32,
    };
    echo(ctx, &mut net, frames)
}

pub fn run(ctx: &Ctx) -> Result<(), Fail> {
    // The VIOT names the IOMMU and covers root-port bus 1.
    let rsdp = acpi::rsdp_at(acpi::scan_rsdp().ok_or(acpi::AcpiError::NoRsdp)?)?;
    let viot = Root::from_rsdp(&rsdp)?
        .find(b"VIOT")?
        .ok_or_else(|| super::fail!("no VIOT table"))?;
    let v = viot.bytes;
    ensure!(
        v.len() >= 88 && v[48] == 3 && v[64] == 1,
        "VIOT nodes are not IOMMU + PCI range"
    );
    let (first, last) = (
        u16::from_le_bytes([v[76], v[77]]),
        u16::from_le_bytes([v[78], v[79]]),
    );
    ensure!(
        first <= ENDPOINT as u16 && ENDPOINT as u16 <= last,
        "VIOT range {first:#x}-{last:#x} misses 01:00.0"
    );

    let ecam = Ecam::from_acpi()?;
    let dev = VirtioPci::find_on_root_bus(&ecam, VIRTIO_IOMMU)?;
    let offered = dev.init(F_INPUT_RANGE | F_DOMAIN_RANGE | F_MAP_UNMAP | F_PROBE)?;
    ensure!(
        offered & F_MAP_UNMAP != 0 && offered & F_PROBE != 0,
        "features {offered:#x}"
    );
    let page_mask = dev.config64(0);
    ensure!(
        page_mask & 0x1000 != 0,
        "page_size_mask {page_mask:#x} lacks 4 KiB"
    );
    let mut scratch = Scratch::new(&ctx.boot_params, SCRATCH.0, SCRATCH.1)?;
    let q = dev.setup_queue(&mut scratch, 0, 16, 0xffff)?;
    let events = dev.setup_queue(&mut scratch, 1, 16, 0xffff)?;
    dev.driver_ok();
    ensure!(
        dev.status() & 0x44 == 4,
        "status {:#x} after DRIVER_OK",
        dev.status()
    );
    let mut d = Driver {
        q,
        events,
        event_bufs: scratch.alloc(8 * 32, 64)?,
        req: scratch.alloc(128, 64)?,
        reply: scratch.alloc(128, 64)?,
    };
    info!(
        ctx,
        "virtio-iommu at {}, page_size_mask {page_mask:#x}, VIOT covers {first:#06x}-{last:#06x}",
        dev.bdf
    );

    // PROBE: the MSI window as a reserved region, then the end marker.
    let mut probe = [0u8; 72];
    probe[0] = 5;
    probe[4..8].copy_from_slice(&ENDPOINT.to_le_bytes());
    let r = d.send(&probe, 64 + 4)?;
    ensure!(r[64] == OK, "PROBE status {}", r[64]);
    let (kind, len, sub) = (
        u16::from_le_bytes([r[0], r[1]]),
        u16::from_le_bytes([r[2], r[3]]),
        r[4],
    );
    let start = u64::from_le_bytes(r[8..16].try_into().unwrap_or_default());
    let end = u64::from_le_bytes(r[16..24].try_into().unwrap_or_default());
    ensure!(
        (kind, len, sub, start, end) == (1, 20, 1, 0xfee0_0000, 0xfeef_ffff),
        "PROBE property {kind}/{len}/{sub} {start:#x}-{end:#x}"
    );

    let checks: [(&str, &[u8], u8); 8] = [
        ("attach 01:00.0 to domain 1", &attach(1, 1, ENDPOINT), OK),
        ("map 0..4K", &map(1, 0, 0xfff, 0x40_0000), OK),
        ("map 4K..12K", &map(1, 0x1000, 0x2fff, 0x50_0000), OK),
        ("overlapping map", &map(1, 0x2000, 0x3fff, 0), INVAL),
        ("unmap that splits", &unmap(1, 0x1000, 0x1fff), RANGE),
        ("unmap two whole mappings", &unmap(1, 0, 0x2fff), OK),
        (
            "attach the host bridge (not covered)",
            &attach(1, 1, 0),
            NOENT,
        ),
        ("detach 01:00.0", &attach(2, 1, ENDPOINT), OK),
    ];
    for (what, body, want) in checks {
        let got = d.status(body)?;
        ensure!(got == want, "{what}: status {got}, expected {want}");
    }
    ensure!(
        d.status(&attach(2, 1, ENDPOINT))? == INVAL,
        "detaching twice was accepted"
    );
    info!(
        ctx,
        "PROBE, ATTACH, MAP, UNMAP, DETACH answered as virtio-iommu specifies"
    );
    Ok(())
}
