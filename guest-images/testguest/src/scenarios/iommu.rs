//! virtio-iommu scenarios, on the ring-3 driver in `virtio_iommu.rs` (run the VMM with
//! --iommu; the device is found in the PCI topology, at 00:1f.0):
//! - `iommu-requests`: config, the VIOT, PROBE reporting the x86 MSI window, ATTACH, MAP,
//!   UNMAP, DETACH, and the statuses of requests the device must refuse.
//! - `iommu-map`, `iommu-fault`, `iommu-isolation`: virtio-net devices behind the IOMMU
//!   (see each).

use super::virtio_net::{self as net, SCRATCH as NET_SCRATCH, bring_up, echo};
use super::{Ctx, Fail, ensure, fail, info};
use crate::acpi::{self, Root};
use crate::pcie::{Bdf, Ecam};
use crate::phys;
use crate::time;
use crate::virtio_iommu::{
    F_MAP_UNMAP, F_PROBE, FAULT_F_ADDRESS, FAULT_F_WRITE, FAULT_R_MAPPING, PROBE_SIZE, S_INVAL,
    S_NOENT, S_OK, S_RANGE, VirtioIommu, attach, detach, map, unmap,
};
use crate::virtio_net::Setup;

/// The driver's queues and buffers.
const SCRATCH: (u64, u64) = (48 << 20, 1 << 20);

/// Opens the virtio-iommu.
fn open(ctx: &Ctx) -> Result<VirtioIommu, Fail> {
    let ecam = Ecam::from_acpi()?;
    Ok(VirtioIommu::open(
        &ecam,
        &ecam.walk()?,
        &ctx.boot_params,
        SCRATCH,
    )?)
}

/// The `nth` virtio-net function and its endpoint ID (requester ID).
fn net_endpoint(nth: usize) -> Result<(Bdf, u32), Fail> {
    let (_, bdf) = net::find(nth)?;
    Ok((bdf, u32::from(bdf.rid())))
}

/// `iommu-isolation`: the first two virtio-net functions (01:00.0 and 02:00.0) in domains
/// 1 and 2, both with their rings and buffers at the same IOVAs but mapped to different
/// memory: each works through its own domain; a buffer IOVA mapped only in domain 1 faults
/// for the second and is not sent.
pub fn isolation_scenario(ctx: &Ctx) -> Result<(), Fail> {
    const A: (u64, u64) = (32 << 20, 16 << 20);
    const B: (u64, u64) = (64 << 20, 16 << 20);
    const SECRET_IOVA: u64 = 0x50_0000_0000;
    let mut d = open(ctx)?;
    let nets = [net_endpoint(0)?, net_endpoint(1)?];
    let (b_bdf, b_ep) = nets[1];
    for ((bdf, ep), dom, area) in [(nets[0], 1, A), (nets[1], 2, B)] {
        ensure!(
            d.status(&attach(dom, ep))? == S_OK,
            "attach {bdf} to {dom} failed"
        );
        let m = map(dom, IOVA_BASE, IOVA_BASE + area.1 - 1, area.0);
        ensure!(d.status(&m)? == S_OK, "map for domain {dom} failed");
    }
    // Something only domain 1 can see: A's receive buffers again, at another IOVA.
    ensure!(
        d.status(&map(1, SECRET_IOVA, SECRET_IOVA + 0xfff, A.0 + 0x1000))? == S_OK,
        "map secret"
    );
    let mut a = bring_up(ctx, 0, Setup::new(A, 64).translated(IOVA_BASE - A.0))?;
    let mut b = bring_up(ctx, 1, Setup::new(B, 64).translated(IOVA_BASE - B.0))?;
    echo(ctx, &mut a, 8)?;
    echo(ctx, &mut b, 8)?;
    info!(
        ctx,
        "same IOVAs, two domains: both devices echo through their own memory"
    );
    // The second device is pointed at the IOVA only domain 1 maps: its DMA read faults.
    b.tx.set_desc(5, SECRET_IOVA - (IOVA_BASE - B.0), 64, 0, 0);
    b.tx.push(5);
    b.tx.notify();
    let fault = d
        .wait_fault()
        .ok_or_else(|| fail!("no fault for {b_bdf} reading domain 1's IOVA"))?;
    ensure!(
        fault.reason == FAULT_R_MAPPING && fault.endpoint == b_ep && fault.address == SECRET_IOVA,
        "fault reason {} endpoint {:#x} address {:#x}",
        fault.reason,
        fault.endpoint,
        fault.address
    );
    info!(
        ctx,
        "{b_bdf} faulted reading IOVA {SECRET_IOVA:#x}, which only domain 1 maps"
    );
    Ok(())
}

/// `iommu-fault`: the device behind the IOMMU loses the mapping of its receive buffers
/// while a frame arrives: the write faults, the fault is reported on the event queue, the
/// guest memory behind the old mapping is untouched, and once the buffers are mapped again
/// the device works on.
pub fn fault_scenario(ctx: &Ctx) -> Result<(), Fail> {
    const RINGS: u64 = 0x1000;
    const RX_END: u64 = 0x21000;
    let mut d = open(ctx)?;
    let (_, ep) = net_endpoint(0)?;
    ensure!(d.status(&attach(1, ep))? == S_OK, "attach failed");
    // Three mappings: rings, receive buffers, the rest.
    let pieces = [(0, RINGS), (RINGS, RX_END), (RX_END, NET_SCRATCH.1)];
    for (lo, hi) in pieces {
        let m = map(1, IOVA_BASE + lo, IOVA_BASE + hi - 1, NET_SCRATCH.0 + lo);
        ensure!(d.status(&m)? == S_OK, "map {lo:#x}..{hi:#x} failed");
    }
    let offset = IOVA_BASE - NET_SCRATCH.0;
    let mut net = bring_up(ctx, 0, Setup::new(NET_SCRATCH, 64).translated(offset))?;
    ensure!(
        net.rx_bufs == NET_SCRATCH.0 + RINGS,
        "receive buffers at {:#x}, not where mapped",
        net.rx_bufs
    );
    echo(ctx, &mut net, 4)?;

    // Mark the receive buffers, then withdraw their mapping.
    let rx_bufs = NET_SCRATCH.0 + RINGS..NET_SCRATCH.0 + RX_END;
    for q in rx_bufs.clone().step_by(8) {
        phys::write_u64(q, 0x5a5a_5a5a_5a5a_5a5a);
    }
    let rx_iova = (IOVA_BASE + RINGS, IOVA_BASE + RX_END - 1);
    ensure!(
        d.status(&unmap(1, rx_iova.0, rx_iova.1))? == S_OK,
        "unmap failed"
    );
    net::send_one(&mut net, 0x77, 200);
    let fault = d.wait_fault().ok_or_else(|| fail!("no fault event"))?;
    let (flags, address) = (fault.flags, fault.address);
    ensure!(
        fault.reason == FAULT_R_MAPPING && fault.endpoint == ep,
        "fault reason {}, endpoint {:#x}",
        fault.reason,
        fault.endpoint
    );
    let write_at = FAULT_F_WRITE | FAULT_F_ADDRESS;
    ensure!(
        flags & write_at == write_at,
        "fault flags {flags:#x}: expected a write with an address"
    );
    ensure!(
        (rx_iova.0..=rx_iova.1).contains(&address),
        "fault at {address:#x}, outside the receive buffers"
    );
    // The frame went nowhere: the buffer it would have used is returned empty, memory intact.
    let (used, _) = time::wait_until(|| net.rx_used_empty());
    ensure!(used, "the receive chain did not come back");
    for q in rx_bufs.step_by(8) {
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
    let m = map(1, rx_iova.0, rx_iova.1, NET_SCRATCH.0 + RINGS);
    ensure!(d.status(&m)? == S_OK, "map again failed");
    echo(ctx, &mut net, 4)
}

/// Where the virtio-net rings and buffers appear to the device: far from their
/// guest-physical addresses, so an untranslated access could not land on them.
const IOVA_BASE: u64 = 0x40_0000_0000;

/// Puts the first virtio-net function in domain 1 with the virtio-net scratch area mapped
/// at [`IOVA_BASE`]; returns the offset the driver adds to guest-physical addresses.
pub(super) fn map_net_scratch(ctx: &Ctx) -> Result<u64, Fail> {
    let mut d = open(ctx)?;
    let (bdf, ep) = net_endpoint(0)?;
    ensure!(d.status(&attach(1, ep))? == S_OK, "attach {bdf} failed");
    let m = map(1, IOVA_BASE, IOVA_BASE + NET_SCRATCH.1 - 1, NET_SCRATCH.0);
    ensure!(d.status(&m)? == S_OK, "map failed");
    info!(
        ctx,
        "{bdf} in domain 1; IOVA {IOVA_BASE:#x}+{:#x} -> {:#x}", NET_SCRATCH.1, NET_SCRATCH.0
    );
    Ok(IOVA_BASE - NET_SCRATCH.0)
}

/// `iommu-map`: the virtio-net echo test with the device behind the IOMMU, its rings and
/// buffers at IOVAs different from their guest-physical addresses.
pub fn map_scenario(ctx: &Ctx) -> Result<(), Fail> {
    let offset = map_net_scratch(ctx)?;
    let mut net = bring_up(ctx, 0, Setup::new(NET_SCRATCH, 64).translated(offset))?;
    let frames = match ctx.cmdline.values("testguest.net_frames").last() {
        Some(v) => v.parse().unwrap_or(32),
        None => 32,
    };
    echo(ctx, &mut net, frames)
}

/// `iommu-requests`: see the module documentation. The endpoint is function 0 on the
/// first root port's bus, whether or not a device is there.
pub fn run(ctx: &Ctx) -> Result<(), Fail> {
    let ecam = Ecam::from_acpi()?;
    let topo = ecam.walk()?;
    let host_bridge = topo
        .as_slice()
        .first()
        .ok_or_else(|| fail!("no host bridge"))?;
    let port_bus = topo
        .as_slice()
        .iter()
        .find_map(|f| f.buses.filter(|_| f.parent.is_none()))
        .ok_or_else(|| fail!("no root port"))?
        .secondary;
    let ep_bdf = Bdf::new(port_bus, 0, 0);
    let ep = u32::from(ep_bdf.rid());

    // The VIOT names the IOMMU and covers the endpoint.
    let rsdp = acpi::rsdp_at(acpi::scan_rsdp().ok_or(acpi::AcpiError::NoRsdp)?)?;
    let viot = Root::from_rsdp(&rsdp)?
        .find(b"VIOT")?
        .ok_or_else(|| fail!("no VIOT table"))?;
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
        (first..=last).contains(&ep_bdf.rid()),
        "VIOT range {first:#x}-{last:#x} misses {ep_bdf}"
    );

    let mut d = VirtioIommu::open(&ecam, &topo, &ctx.boot_params, SCRATCH)?;
    let offered = d.offered;
    ensure!(
        offered & F_MAP_UNMAP != 0 && offered & F_PROBE != 0,
        "features {offered:#x}"
    );
    let page_mask = d.page_size_mask();
    ensure!(
        page_mask & 0x1000 != 0,
        "page_size_mask {page_mask:#x} lacks 4 KiB"
    );
    info!(
        ctx,
        "virtio-iommu at {}, page_size_mask {page_mask:#x}, VIOT covers {first:#06x}-{last:#06x}",
        d.dev.bdf
    );

    // PROBE: the MSI window as a reserved region, then the end marker.
    let r = d.probe(ep)?;
    ensure!(r[PROBE_SIZE] == S_OK, "PROBE status {}", r[PROBE_SIZE]);
    let (kind, len, sub) = (
        u16::from_le_bytes([r[0], r[1]]),
        u16::from_le_bytes([r[2], r[3]]),
        r[4],
    );
    let start = phys::le_u64(&r, 8);
    let end = phys::le_u64(&r, 16);
    ensure!(
        (kind, len, sub, start, end) == (1, 20, 1, 0xfee0_0000, 0xfeef_ffff),
        "PROBE property {kind}/{len}/{sub} {start:#x}-{end:#x}"
    );

    let host = u32::from(host_bridge.bdf.rid());
    let checks: [(&str, &[u8], u8); 8] = [
        ("attach the endpoint to domain 1", &attach(1, ep), S_OK),
        ("map 0..4K", &map(1, 0, 0xfff, 0x40_0000), S_OK),
        ("map 4K..12K", &map(1, 0x1000, 0x2fff, 0x50_0000), S_OK),
        ("overlapping map", &map(1, 0x2000, 0x3fff, 0), S_INVAL),
        ("unmap that splits", &unmap(1, 0x1000, 0x1fff), S_RANGE),
        ("unmap two whole mappings", &unmap(1, 0, 0x2fff), S_OK),
        (
            "attach the host bridge (not covered)",
            &attach(1, host),
            S_NOENT,
        ),
        ("detach the endpoint", &detach(1, ep), S_OK),
    ];
    for (what, body, want) in checks {
        let got = d.status(body)?;
        ensure!(got == want, "{what}: status {got}, expected {want}");
    }
    ensure!(
        d.status(&detach(1, ep))? == S_INVAL,
        "detaching twice was accepted"
    );
    info!(
        ctx,
        "PROBE, ATTACH, MAP, UNMAP, DETACH answered as virtio-iommu specifies"
    );
    Ok(())
}
