//! `pci-enum`: walks the PCIe hierarchy the way Linux's PCI core does and checks what the
//! VMM builds: MCFG and its E820 reservation; the 0xCF8 address register as Linux probes
//! it; every function reachable from bus 0 (bus 0, then the secondary bus of each bridge),
//! printed as a tree; the host bridge; the root ports (type 1 header, bus numbers, windows,
//! no BARs, PCIe capability with a hotplug slot, MSI, ACS, slot and link state, RW1C and
//! read-only semantics); absent functions and unreachable buses; and ECAM agreeing with
//! 0xCF8/0xCFC at every access size, reads and writes.

use core::fmt;

use super::{Ctx, Fail, ensure, fail, info};
use crate::pcie::regs::*;
use crate::pcie::{Bdf, Ecam, Function, Topology, legacy};
use crate::port;

const E820_RESERVED: u32 = 2;
/// Vendor and device IDs as the dword at 0: Red Hat's QEMU host bridge and root port.
const HOST_BRIDGE_ID: u32 = 0x0008_1b36;
const ROOT_PORT_ID: u32 = 0x000c_1b36;
const HOST_BRIDGE: Bdf = Bdf::new(0, 0, 0);

pub fn run(ctx: &Ctx) -> Result<(), Fail> {
    let ecam = Ecam::from_acpi()?;
    let (start, size) = ecam.window();
    info!(
        ctx,
        "MCFG: ECAM {:#x}..{:#x} buses {:02x}-{:02x}",
        start,
        start + size,
        ecam.start_bus,
        ecam.end_bus
    );
    ensure!(
        ecam.start_bus == 0,
        "the MCFG starts at bus {:02x}; the host bridge must be on bus 00",
        ecam.start_bus
    );
    let e820 = ctx
        .boot_params
        .e820_entry_containing(start, size)
        .ok_or_else(|| fail!("ECAM {start:#x}+{size:#x} is not inside one E820 entry"))?;
    ensure!(
        e820.kind == E820_RESERVED,
        "ECAM lies in E820 type {}, not reserved",
        e820.kind
    );
    check_config_address(&ecam)?;

    let topo = ecam.walk()?;
    info!(
        ctx,
        "walked {} functions on {} buses",
        topo.as_slice().len(),
        topo.bus_count()
    );
    ensure!(
        topo.as_slice().first().map(|f| f.bdf) == Some(HOST_BRIDGE),
        "no function at 00:00.0"
    );
    let mut ports = 0u8;
    let mut slot_numbers = [0u64; 128];
    let mut endpoints_seen = false;
    for f in topo.as_slice() {
        check_access_paths(&ecam, f.bdf)?;
        if let Some(parent) = f.parent {
            check_child(ctx, &ecam, f, parent)?;
        } else if f.bdf == HOST_BRIDGE {
            check_host_bridge(ctx, &ecam, f)?;
        } else if f.header_type() == 1 {
            ensure!(
                !endpoints_seen,
                "{}: a root port after an integrated endpoint",
                f.bdf
            );
            ports += 1;
            ensure!(
                f.bdf == Bdf::new(0, ports, 0),
                "{}: root ports are not 00:01.0, 00:02.0, ... in a row",
                f.bdf
            );
            check_root_port(ctx, &ecam, &topo, f, &mut slot_numbers)?;
        } else {
            endpoints_seen = true;
            check_integrated_endpoint(ctx, &ecam, f)?;
        }
    }
    check_absent(ctx, &ecam, &topo)?;
    if let Some(want) = ctx.cmdline.values("testguest.pcie_root_ports").last() {
        let want: u8 = want
            .parse()
            .map_err(|_| fail!("bad testguest.pcie_root_ports={want}"))?;
        ensure!(ports == want, "{ports} root ports, expected {want}");
    }
    info!(ctx, "{ports} root ports");
    Ok(())
}

/// The 0xCF8 register as Linux's `pci_check_type1` probes it (a byte write to 0xCFB, then
/// 0x80000000 must read back), reserved bits reading 0, and no configuration cycle while
/// the enable bit is clear.
fn check_config_address(ecam: &Ecam) -> Result<(), Fail> {
    let saved = legacy::read_address();
    port::outb(legacy::DATA_PORT - 1, 0x01);
    port::outl(legacy::ADDRESS_PORT, legacy::ENABLE);
    let got = legacy::read_address();
    ensure!(
        got == legacy::ENABLE,
        "0xCF8 reads {got:#010x} after 0x80000000 was written (Linux then gives up type 1 access)"
    );
    port::outl(legacy::ADDRESS_PORT, 0xffff_ffff);
    let got = legacy::read_address();
    ensure!(
        got == 0x80ff_fffc,
        "0xCF8 reads {got:#010x} after all ones: bits 30:24 and 1:0 are reserved, read as 0"
    );
    // Enable bit clear: reads float, writes go nowhere.
    let disabled = legacy::address(HOST_BRIDGE, INTERRUPT_LINE as u8) & !legacy::ENABLE;
    let line = ecam.read8(HOST_BRIDGE, INTERRUPT_LINE);
    port::outl(legacy::ADDRESS_PORT, disabled);
    let got = port::inl(legacy::DATA_PORT);
    port::outb(legacy::DATA_PORT, !line);
    port::outl(legacy::ADDRESS_PORT, saved);
    ensure!(
        got == 0xffff_ffff,
        "0xCFC reads {got:#010x} with the enable bit of 0xCF8 clear, expected all ones"
    );
    let now = ecam.read8(HOST_BRIDGE, INTERRUPT_LINE);
    ensure!(
        now == line,
        "a 0xCFC write with the enable bit clear reached 00:00.0 (interrupt line {line:#x} -> {now:#x})"
    );
    Ok(())
}

/// The first 64 bytes read the same through ECAM at 8, 16 and 32 bits and through
/// 0xCF8/0xCFC at 32 bits (and 8 and 16 bits for the first 16 bytes): Linux reads
/// registers below 0x100 through the ports and the rest through ECAM.
fn check_access_paths(ecam: &Ecam, f: Bdf) -> Result<(), Fail> {
    for reg in (0..64u8).step_by(4) {
        let d = ecam.read32(f, u16::from(reg));
        let l = legacy::read32(f, reg);
        ensure!(
            d == l,
            "{f} reg {reg:#x}: ECAM {d:#010x} but 0xCFC {l:#010x}"
        );
        // Bytes, then words: each part of the dword, through ECAM and (below 16) 0xCFC.
        for (size, name) in [(1u8, "byte"), (2, "word")] {
            let mask = u32::MAX >> (32 - 8 * u32::from(size));
            let digits = 2 + 2 * usize::from(size);
            for at in (reg..reg + 4).step_by(usize::from(size)) {
                let want = (d >> (8 * (at - reg))) & mask;
                let got = ecam.read(f, u16::from(at), size);
                ensure!(
                    got == want,
                    "{f} reg {at:#x}: ECAM {name} read {got:#0digits$x}, dword says {want:#0digits$x}"
                );
                if reg < 16 {
                    let got = legacy::read(f, at, size);
                    ensure!(
                        got == want,
                        "{f} reg {at:#x}: 0xCFC {name} read {got:#0digits$x}, ECAM says {want:#0digits$x}"
                    );
                }
            }
        }
    }
    Ok(())
}

/// A byte written through one path reads back through the other (interrupt line: a
/// read-write register with no effect).
fn check_write_paths(ecam: &Ecam, f: Bdf) -> Result<(), Fail> {
    let old = ecam.read8(f, INTERRUPT_LINE);
    legacy::write8(f, INTERRUPT_LINE as u8, 0x5a);
    let via_ecam = ecam.read8(f, INTERRUPT_LINE);
    ecam.write8(f, INTERRUPT_LINE, 0xa5);
    let via_ports = legacy::read8(f, INTERRUPT_LINE as u8);
    ecam.write8(f, INTERRUPT_LINE, old);
    ensure!(
        via_ecam == 0x5a,
        "{f}: interrupt line written 0x5a through 0xCFC reads {via_ecam:#04x} through ECAM"
    );
    ensure!(
        via_ports == 0xa5,
        "{f}: interrupt line written 0xa5 through ECAM reads {via_ports:#04x} through 0xCFC"
    );
    Ok(())
}

/// Writes of zeros to the identity registers change nothing.
fn check_read_only_header(ecam: &Ecam, f: Bdf) -> Result<(), Fail> {
    for (reg, what) in [
        (VENDOR_ID, "vendor/device ID"),
        (CLASS_REV, "class/revision"),
    ] {
        let old = ecam.read32(f, reg);
        ecam.write32(f, reg, 0);
        let now = ecam.read32(f, reg);
        ensure!(
            now == old,
            "{f}: {what} took a write of 0 ({old:#010x} -> {now:#010x})"
        );
    }
    for (reg, what) in [
        (HEADER_TYPE, "header type"),
        (CAP_PTR, "capabilities pointer"),
    ] {
        let old = ecam.read8(f, reg);
        ecam.write8(f, reg, !old);
        let now = ecam.read8(f, reg);
        ensure!(
            now == old,
            "{f}: {what} took a write ({old:#04x} -> {now:#04x})"
        );
    }
    Ok(())
}

/// BARs `0..count` read 0 and size to 0 (implement nothing); each is restored.
fn check_no_bars(ecam: &Ecam, f: Bdf, count: u16) -> Result<(), Fail> {
    for bar in (0..count).map(|i| BAR0 + 4 * i) {
        let old = ecam.read32(f, bar);
        ecam.write32(f, bar, 0xffff_ffff);
        let size = ecam.read32(f, bar);
        ecam.write32(f, bar, old);
        ensure!(
            old == 0 && size == 0,
            "{f}: BAR at {bar:#x} reads {old:#x} and sizes to {size:#x}, expected no BAR"
        );
    }
    Ok(())
}

fn check_host_bridge(ctx: &Ctx, ecam: &Ecam, f: &Function) -> Result<(), Fail> {
    let b = f.bdf;
    let id = ecam.read32(b, VENDOR_ID);
    ensure!(
        id == HOST_BRIDGE_ID,
        "{b} is {id:#010x}, not the host bridge 1b36:0008"
    );
    ensure!(
        f.class == 0x06_0000,
        "{b} class {:06x}, expected 060000 (Linux's pci_sanity_check looks for it)",
        f.class
    );
    ensure!(
        f.header == 0,
        "{b}: header type {:#04x}, expected 0 (single function)",
        f.header
    );
    check_read_only_header(ecam, b)?;
    check_no_bars(ecam, b, 6)?;
    check_write_paths(ecam, b)?;
    info!(ctx, "{b} [1b36:0008] class 0600 host bridge");
    Ok(())
}

fn check_root_port(
    ctx: &Ctx,
    ecam: &Ecam,
    topo: &Topology,
    f: &Function,
    slot_numbers: &mut [u64; 128],
) -> Result<(), Fail> {
    let b = f.bdf;
    let number = b.dev;
    let id = ecam.read32(b, VENDOR_ID);
    ensure!(
        id == ROOT_PORT_ID,
        "{b} is {id:#010x}, not a root port 1b36:000c"
    );
    ensure!(
        f.class == 0x06_0400,
        "{b} class {:06x}, expected 060400",
        f.class
    );
    ensure!(
        f.header == 1,
        "{b}: header type {:#04x}, expected 1 (bridge, single function)",
        f.header
    );
    let buses = f.buses.ok_or_else(|| fail!("{b}: no bus numbers"))?;
    ensure!(
        buses.primary == 0 && buses.secondary == number && buses.subordinate == number,
        "{b}: buses {buses}, expected 00->{number:02x}..{number:02x}"
    );
    let ((mem_base, mem_limit), (pref_base, pref_limit)) = ecam.bridge_windows(b);
    let want_mem = 0xc000_0000 + (u64::from(number) - 1) * (16 << 20);
    ensure!(
        mem_base == want_mem && mem_limit == want_mem + (16 << 20) - 1,
        "{b}: memory window {mem_base:#x}-{mem_limit:#x}, expected {want_mem:#x} + 16 MiB"
    );
    let pref = ecam.read32(b, PREF_BASE);
    let is64 = |half: u32| half as u16 & PREF_RANGE_TYPE_MASK == PREF_RANGE_TYPE_64;
    ensure!(
        is64(pref) && is64(pref >> 16),
        "{b}: prefetchable window is not 64-bit ({pref:#x})"
    );
    let want_pref = 0x80_0000_0000 + (u64::from(number) - 1) * (2 << 30);
    ensure!(
        pref_base == want_pref && pref_limit == want_pref + (2 << 30) - 1,
        "{b}: prefetchable window {pref_base:#x}-{pref_limit:#x}, expected {want_pref:#x} + 2 GiB"
    );
    // No I/O window: I/O base/limit (and their upper halves) are read-only 0, which is how
    // a bridge says it implements none (Linux probes it by writing 0xe0f0).
    for (reg, probe) in [
        (IO_BASE, 0xe0f0u16),
        (IO_BASE_UPPER16, 0xffff),
        (IO_LIMIT_UPPER16, 0xffff),
    ] {
        let old = ecam.read16(b, reg);
        ecam.write16(b, reg, probe);
        let now = ecam.read16(b, reg);
        ecam.write16(b, reg, old);
        ensure!(
            old == 0 && now == 0,
            "{b}: I/O window register {reg:#x} reads {old:#06x}, {now:#06x} after writing {probe:#06x}: expected no I/O window"
        );
    }
    // PCIe: the latency timers read 0 and ignore writes; bridge control bits 5 and 7..11
    // read 0.
    for reg in [LATENCY_TIMER, SEC_LATENCY_TIMER] {
        ecam.write8(b, reg, 0xff);
        let now = ecam.read8(b, reg);
        ensure!(
            now == 0,
            "{b}: latency timer {reg:#x} reads {now:#04x} after writing 0xff"
        );
    }
    let bctl = ecam.read16(b, BRIDGE_CONTROL);
    ecam.write16(b, BRIDGE_CONTROL, bctl | BRIDGE_CTL_NOT_PCIE);
    let now = ecam.read16(b, BRIDGE_CONTROL);
    ecam.write16(b, BRIDGE_CONTROL, bctl);
    ensure!(
        now & BRIDGE_CTL_NOT_PCIE == 0,
        "{b}: bridge control reads {now:#06x} after setting bits 5 and 7..11 (PCIe: read 0)"
    );
    check_read_only_header(ecam, b)?;
    check_no_bars(ecam, b, 2)?;
    check_write_paths(ecam, b)?;

    // Capabilities: PCI Express, MSI; ACS in the extended list.
    let caps = ecam.capabilities(b);
    ensure!(!caps.looped, "{b}: the capability list loops");
    let exp = caps
        .find(CAP_EXP)
        .ok_or_else(|| fail!("{b}: no PCI Express capability"))?;
    ensure!(
        exp + EXP_SIZEOF_V2 <= CFG_SPACE_SIZE,
        "{b}: PCIe capability at {exp:#x} runs past 0x100"
    );
    let msi = caps
        .find(CAP_MSI)
        .ok_or_else(|| fail!("{b}: no MSI capability (pciehp needs an interrupt)"))?;
    let flags = ecam.read16(b, exp + EXP_FLAGS);
    ensure!(
        flags & EXP_FLAGS_VERS == 2,
        "{b}: PCIe capability version {}, expected 2",
        flags & EXP_FLAGS_VERS
    );
    ensure!(
        exp_type(flags) == EXP_TYPE_ROOT_PORT,
        "{b}: PCIe port type {}, expected 4 (root port)",
        exp_type(flags)
    );
    ensure!(
        flags & EXP_FLAGS_SLOT != 0,
        "{b}: Slot Implemented is clear"
    );
    ensure!(
        flags & EXP_FLAGS_IRQ == 0,
        "{b}: interrupt message number {} with a single MSI vector",
        (flags & EXP_FLAGS_IRQ) >> 9
    );
    let sltcap = ecam.read32(b, exp + EXP_SLTCAP);
    let need = EXP_SLTCAP_ABP | EXP_SLTCAP_PCP | EXP_SLTCAP_AIP | EXP_SLTCAP_PIP | EXP_SLTCAP_HPC;
    ensure!(
        sltcap & need == need,
        "{b}: Slot Capabilities {sltcap:#010x} lack ABP, PCP, AIP, PIP or HPC"
    );
    ensure!(
        sltcap & EXP_SLTCAP_NCCS == 0,
        "{b}: NCCS set (expected Command Completed on every Slot Control write)"
    );
    let psn = sltcap >> EXP_SLTCAP_PSN_SHIFT;
    ensure!(
        psn == u32::from(number),
        "{b}: physical slot {psn} (expected {number})"
    );
    let (word, bit) = ((psn >> 6) as usize, psn & 63);
    ensure!(
        slot_numbers[word] & (1 << bit) == 0,
        "{b}: physical slot {psn} is not unique"
    );
    slot_numbers[word] |= 1 << bit;
    let lnkcap = ecam.read32(b, exp + EXP_LNKCAP);
    ensure!(
        lnkcap & EXP_LNKCAP_DLLLARC != 0,
        "{b}: DLLLARC clear in Link Capabilities (every hot-add would wait 1 s)"
    );
    // Retrain Link (Link Control bit 5) always reads 0, so read-modify-writes of Link
    // Control (ASPM code) do not retrain again and again.
    let lnkctl = ecam.read16(b, exp + EXP_LNKCTL);
    ecam.write16(b, exp + EXP_LNKCTL, lnkctl | EXP_LNKCTL_RL);
    let now = ecam.read16(b, exp + EXP_LNKCTL);
    ecam.write16(b, exp + EXP_LNKCTL, lnkctl);
    ensure!(
        now & EXP_LNKCTL_RL == 0,
        "{b}: Retrain Link reads 1 after being written ({now:#06x})"
    );
    ensure!(
        ecam.read32(b, exp + EXP_DEVCAP2) & EXP_DEVCAP2_ARI != 0,
        "{b}: no ARI forwarding in DevCap2"
    );
    let msi_ctl = ecam.read16(b, msi + MSI_FLAGS);
    let want = MSI_FLAGS_64BIT | MSI_FLAGS_MASKBIT;
    ensure!(
        msi_ctl & want == want && msi_ctl & MSI_FLAGS_QMASK == 0,
        "{b}: MSI control {msi_ctl:#06x}, expected one vector, 64-bit, per-vector mask"
    );
    let ext = ecam.ext_capabilities(b);
    ensure!(!ext.looped, "{b}: the extended capability list loops");
    let acs = ext
        .find(EXT_ACS)
        .ok_or_else(|| fail!("{b}: no ACS extended capability"))?;

    // Read-only: Slot Capabilities.
    ecam.write32(b, exp + EXP_SLTCAP, 0);
    ensure!(
        ecam.read32(b, exp + EXP_SLTCAP) == sltcap,
        "{b}: Slot Capabilities took a write"
    );
    check_slot_control(ecam, b, exp)?;

    // Slot and link state against what the walk found behind the port.
    let occupied = topo.children(b).next().is_some();
    let sltsta = ecam.read16(b, exp + EXP_SLTSTA);
    let lnksta = ecam.read16(b, exp + EXP_LNKSTA);
    let present = sltsta & EXP_SLTSTA_PDS != 0;
    let active = lnksta & EXP_LNKSTA_DLLLA != 0;
    ensure!(
        present == occupied && active == occupied,
        "{b}: slot {} but Presence Detect State {present}, Data Link Layer Link Active {active}",
        if occupied { "occupied" } else { "empty" }
    );
    if occupied {
        // What pciehp_check_link_status wants before it scans the slot.
        ensure!(
            lnksta & EXP_LNKSTA_LT == 0 && lnksta & EXP_LNKSTA_NLW != 0,
            "{b}: link status {lnksta:#06x}: training, or no negotiated width"
        );
    }

    info!(
        ctx,
        "{b} [1b36:000c] class 0604 type 1 bus {buses} mem {mem_base:x}-{mem_limit:x} pref {pref_base:x}-{pref_limit:x} io none slot {psn} port {} caps exp@{exp:#x} msi@{msi:#x} acs@{acs:#x}{}",
        lnkcap >> EXP_LNKCAP_PN_SHIFT,
        if occupied { " occupied" } else { "" }
    );
    if !occupied {
        info!(ctx, "{b} -> bus {:02x}: empty slot", buses.secondary);
    }
    Ok(())
}

/// Slot Control writes complete at once (Command Completed, RW1C, set) through either
/// path; DLLSCE is writable (pciehp relies on DLLSC for surprise removal when it leaves
/// PDCE off because of the attention button). Every value written is one the register
/// held, or adds DLLSCE while hotplug interrupts are off: harmless.
fn check_slot_control(ecam: &Ecam, b: Bdf, exp: u16) -> Result<(), Fail> {
    let (sltctl, sltsta) = (exp + EXP_SLTCTL, exp + EXP_SLTSTA);
    let ctl = ecam.read16(b, sltctl);
    ecam.write16(b, sltsta, EXP_SLTSTA_EVENTS);
    let sta = ecam.read16(b, sltsta);
    ensure!(
        sta & EXP_SLTSTA_EVENTS == 0,
        "{b}: Slot Status {sta:#06x} after writing 1 to every event bit"
    );
    ecam.write16(b, sltctl, ctl);
    ensure!(
        ecam.read16(b, sltsta) & EXP_SLTSTA_CC != 0,
        "{b}: no Command Completed after a Slot Control write"
    );
    ecam.write16(b, sltsta, 0);
    ensure!(
        ecam.read16(b, sltsta) & EXP_SLTSTA_CC != 0,
        "{b}: writing 0 cleared Command Completed"
    );
    ecam.write16(b, sltsta, EXP_SLTSTA_CC);
    ensure!(
        ecam.read16(b, sltsta) & EXP_SLTSTA_CC == 0,
        "{b}: writing 1 did not clear Command Completed"
    );
    // Through 0xCF8/0xCFC: the 16-bit registers sit at byte offsets 0 and 2 of the data
    // port.
    legacy::write16(b, sltctl as u8, ctl);
    ensure!(
        legacy::read16(b, sltsta as u8) & EXP_SLTSTA_CC != 0,
        "{b}: no Command Completed after a Slot Control write through 0xCFC"
    );
    legacy::write16(b, sltsta as u8, EXP_SLTSTA_CC);
    ensure!(
        ecam.read16(b, sltsta) & EXP_SLTSTA_CC == 0,
        "{b}: writing 1 through 0xCFC did not clear Command Completed"
    );
    if ctl & EXP_SLTCTL_HPIE == 0 {
        ecam.write16(b, sltctl, ctl | EXP_SLTCTL_DLLSCE);
        let with = ecam.read16(b, sltctl);
        ecam.write16(b, sltctl, ctl);
        let back = ecam.read16(b, sltctl);
        ecam.write16(b, sltsta, EXP_SLTSTA_CC);
        ensure!(
            with & EXP_SLTCTL_DLLSCE != 0,
            "{b}: DLLSCE is not writable in Slot Control"
        );
        ensure!(
            back == ctl,
            "{b}: Slot Control {back:#06x} after restoring {ctl:#06x}"
        );
    }
    Ok(())
}

/// A function on bus 0 that is neither host bridge nor root port: an integrated
/// endpoint (the virtio-iommu).
fn check_integrated_endpoint(ctx: &Ctx, ecam: &Ecam, f: &Function) -> Result<(), Fail> {
    let b = f.bdf;
    ensure!(
        f.header_type() == 0,
        "{b}: header type {:#04x} on bus 0, expected an endpoint",
        f.header
    );
    check_write_paths(ecam, b)?;
    // A PCIe function on the root complex's own bus has no link: PCIe calls it a
    // root-complex integrated endpoint (port type 9), with no link registers.
    let caps = ecam.capabilities(b);
    ensure!(!caps.looped, "{b}: the capability list loops");
    if let Some(exp) = caps.find(CAP_EXP) {
        let port_type = exp_type(ecam.read16(b, exp + EXP_FLAGS));
        ensure!(
            port_type == EXP_TYPE_RC_END,
            "{b}: PCIe device type {port_type} on bus 0, expected 9 (root-complex integrated endpoint)"
        );
        let lnkcap = ecam.read32(b, exp + EXP_LNKCAP);
        ensure!(
            lnkcap == 0,
            "{b}: an integrated endpoint has link capabilities {lnkcap:#x}"
        );
    }
    let note = "";
    info!(
        ctx,
        "{b} [{:04x}:{:04x}] class {:06x} integrated endpoint{note}", f.vendor, f.device, f.class
    );
    Ok(())
}

/// A function behind a bridge: printed as `parent -> child`; on a root port's link only
/// device 0 answers, its PCIe type must be one that sits at the end of a link, and its
/// memory BARs must lie inside the port's windows.
fn check_child(ctx: &Ctx, ecam: &Ecam, f: &Function, parent: Bdf) -> Result<(), Fail> {
    let b = f.bdf;
    // lspci -t style: one step in per bridge above the parent.
    let indent = 2 * usize::from(f.depth - 1);
    info!(
        ctx,
        "{:indent$}{parent} -> {b} [{:04x}:{:04x}] class {:06x} type {}{}",
        "",
        f.vendor,
        f.device,
        f.class,
        f.header_type(),
        Maybe(" bus ", f.buses)
    );
    ensure!(
        b.dev == 0,
        "{b} answers behind {parent}: a link has device 0 only (ARI is off)"
    );
    if let Some(exp) = ecam.capabilities(b).find(CAP_EXP) {
        let kind = exp_type(ecam.read16(b, exp + EXP_FLAGS));
        ensure!(
            matches!(
                kind,
                EXP_TYPE_ENDPOINT | EXP_TYPE_LEG_END | EXP_TYPE_UPSTREAM
            ),
            "{b}: PCIe type {kind} behind a root port (expected an endpoint or upstream port)"
        );
    }
    if f.header_type() != 0 {
        return Ok(());
    }
    let ((mem_base, mem_limit), (pref_base, pref_limit)) = ecam.bridge_windows(parent);
    let mut i = 0u8;
    while i < 6 {
        let bar = ecam.bar(b, i);
        let addr = bar.addr;
        if bar.io {
            ensure!(
                addr == 0,
                "{b}: I/O BAR {i} at {addr:#x} behind a port without an I/O window"
            );
        } else {
            let inside =
                (mem_base..=mem_limit).contains(&addr) || (pref_base..=pref_limit).contains(&addr);
            ensure!(
                addr == 0 || inside,
                "{b}: BAR {i} at {addr:#x} is outside the windows of {parent}"
            );
        }
        i += if bar.is64 { 2 } else { 1 };
    }
    Ok(())
}

/// Where nothing answers, everything reads all ones and writes are dropped: a device
/// number the walk found free on bus 0, function 1 of the single-function host bridge,
/// and the first bus in the MCFG range that no bridge forwards to.
fn check_absent(ctx: &Ctx, ecam: &Ecam, topo: &Topology) -> Result<(), Fail> {
    let free_dev = (1..32u8).find(|&d| topo.get(Bdf::new(0, d, 0)).is_none());
    let free_bus = (ecam.start_bus..=ecam.end_bus).find(|&bus| !topo.scanned(bus));
    let mut probes = [None; 3];
    probes[0] = Some(Bdf::new(0, 0, 1));
    probes[1] = free_dev.map(|d| Bdf::new(0, d, 0));
    probes[2] = free_bus.map(|bus| Bdf::new(bus, 0, 0));
    for f in probes.into_iter().flatten() {
        ecam.write32(f, INTERRUPT_LINE, 0);
        legacy::write32(f, INTERRUPT_LINE as u8, 0);
        for reg in [VENDOR_ID, CLASS_REV, INTERRUPT_LINE] {
            let (e, l) = (ecam.read32(f, reg), legacy::read32(f, reg as u8));
            ensure!(
                e == 0xffff_ffff && l == 0xffff_ffff,
                "absent {f} reg {reg:#x}: ECAM {e:#010x}, 0xCFC {l:#010x}, expected all ones"
            );
        }
        let e = ecam.read32(f, CFG_SPACE_SIZE);
        ensure!(
            e == 0xffff_ffff,
            "absent {f} reg 0x100: ECAM {e:#010x}, expected all ones"
        );
    }
    info!(
        ctx,
        "absent: 00:00.1{}{} read all ones",
        Maybe(", ", probes[1]),
        Maybe(", unreached bus ", probes[2]),
    );
    Ok(())
}

/// Displays a prefix and the value when there is one, nothing otherwise.
struct Maybe<T>(&'static str, Option<T>);

impl<T: fmt::Display> fmt::Display for Maybe<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.1 {
            Some(v) => write!(f, "{}{v}", self.0),
            None => Ok(()),
        }
    }
}
