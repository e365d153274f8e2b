//! `pci-enum`: walks the PCIe hierarchy the way Linux's PCI core does and checks what the
//! VMM builds: MCFG and its E820 reservation, the host bridge, the root ports (type 1
//! header, bus numbers, windows, PCIe capability with a hotplug slot, MSI, ACS), empty
//! slots, read-only and RW1C semantics, and 0xCF8/0xCFC agreeing with ECAM.

use super::{Ctx, Fail, ensure, fail, info};
use crate::pcie::{Bdf, Ecam, legacy_read32};

const CAP_EXP: u8 = 0x10;
const CAP_MSI: u8 = 0x05;
const EXT_ACS: u8 = 0x0d;
const E820_RESERVED: u32 = 2;

/// A root port found on bus 0.
struct Port {
    bdf: Bdf,
    secondary: u8,
}

pub fn run(ctx: &Ctx) -> Result<(), Fail> {
    let ecam = Ecam::from_acpi()?;
    let size = (u64::from(ecam.end_bus) + 1 - u64::from(ecam.start_bus)) << 20;
    let start = ecam.base + (u64::from(ecam.start_bus) << 20);
    info!(
        ctx,
        "MCFG: ECAM {:#x}..{:#x} buses {:02x}-{:02x}",
        start,
        start + size,
        ecam.start_bus,
        ecam.end_bus
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

    let host = Bdf {
        bus: 0,
        dev: 0,
        func: 0,
    };
    let id = ecam.read32(host, 0);
    ensure!(
        id == 0x0008_1b36,
        "00:00.0 is {id:#010x}, not the host bridge 1b36:0008"
    );
    ensure!(
        ecam.read32(host, 8) >> 8 == 0x06_0000,
        "00:00.0 class is not 0600"
    );
    // Read-only identity.
    ecam.write32(host, 0, 0);
    ensure!(
        ecam.read32(host, 0) == id,
        "the vendor/device ID of 00:00.0 took a write"
    );
    info!(ctx, "00:00.0 [1b36:0008] class 0600 host bridge");

    let mut ports: [Option<Port>; 32] = [const { None }; 32];
    let mut count = 0;
    for dev in 0..32u8 {
        for func in 0..8u8 {
            let f = Bdf { bus: 0, dev, func };
            let vendor = ecam.read16(f, 0);
            if vendor == 0xffff {
                if func == 0 {
                    break;
                }
                continue;
            }
            check_legacy_matches(&ecam, f)?;
            let header = ecam.read8(f, 0x0e);
            if dev > 0 && header & 0x7f == 0 {
                // A root-complex integrated endpoint (the virtio-iommu), after the ports.
                let id = ecam.read32(f, 0);
                let class = ecam.read32(f, 8) >> 8;
                info!(
                    ctx,
                    "{f} [{:04x}:{:04x}] class {class:06x} integrated endpoint",
                    id & 0xffff,
                    id >> 16
                );
            } else if dev > 0 {
                ensure!(
                    header & 0x7f == 1,
                    "{f}: header type {header:#x}, expected a bridge"
                );
                ensure!(
                    usize::from(dev) == count + 1,
                    "{f}: root ports are not contiguous"
                );
                let port = check_root_port(ctx, &ecam, f, count as u8 + 1)?;
                ports[count] = Some(port);
                count += 1;
            }
            if func == 0 && header & 0x80 == 0 {
                break;
            }
        }
    }
    // Nothing answers right after the ports (the IOMMU, if any, is device 31).
    let absent = Bdf {
        bus: 0,
        dev: count as u8 + 1,
        func: 0,
    };
    if count < 30 {
        ensure!(
            ecam.read32(absent, 0) == 0xffff_ffff,
            "{absent} answers but no device is there"
        );
    }
    if let Some(want) = ctx.cmdline.values("testguest.pcie_root_ports").last() {
        let want: usize = want
            .parse()
            .map_err(|_| fail!("bad testguest.pcie_root_ports={want}"))?;
        ensure!(count == want, "{count} root ports, expected {want}");
    }
    // Slots: empty ones read all ones; occupied ones (a --net device) show what is there.
    for p in ports.iter().flatten() {
        let child = Bdf {
            bus: p.secondary,
            dev: 0,
            func: 0,
        };
        let id = ecam.read32(child, 0);
        if id == 0xffff_ffff {
            info!(ctx, "{} -> bus {:02x}: empty slot", p.bdf, p.secondary);
            let other = Bdf {
                bus: p.secondary,
                dev: 1,
                func: 0,
            };
            ensure!(
                ecam.read32(other, 0) == 0xffff_ffff,
                "{other} answers on a link"
            );
        } else {
            check_legacy_matches(&ecam, child)?;
            info!(
                ctx,
                "{} -> {child} [{:04x}:{:04x}] class {:06x}",
                p.bdf,
                id & 0xffff,
                id >> 16,
                ecam.read32(child, 8) >> 8
            );
        }
    }
    info!(ctx, "{count} root ports");
    Ok(())
}

/// The first 64 bytes through 0xCF8/0xCFC equal those through ECAM.
fn check_legacy_matches(ecam: &Ecam, f: Bdf) -> Result<(), Fail> {
    for reg in (0..64u8).step_by(4) {
        let (a, b) = (ecam.read32(f, u16::from(reg)), legacy_read32(f, reg));
        ensure!(
            a == b,
            "{f} reg {reg:#x}: ECAM {a:#010x} but 0xCFC {b:#010x}"
        );
    }
    Ok(())
}

fn check_root_port(ctx: &Ctx, ecam: &Ecam, f: Bdf, number: u8) -> Result<Port, Fail> {
    let id = ecam.read32(f, 0);
    ensure!(
        id == 0x000c_1b36,
        "{f} is {id:#010x}, not a root port 1b36:000c"
    );
    ensure!(ecam.read32(f, 8) >> 8 == 0x06_0400, "{f} class is not 0604");
    let buses = ecam.read32(f, 0x18);
    let (primary, secondary, subordinate) = (buses as u8, (buses >> 8) as u8, (buses >> 16) as u8);
    ensure!(
        primary == 0 && secondary == number && subordinate == number,
        "{f}: buses {primary}/{secondary}/{subordinate}, expected 0/{number}/{number}"
    );
    let mem = ecam.read32(f, 0x20);
    let (mem_base, mem_limit) = (
        (u64::from(mem & 0xfff0)) << 16,
        (u64::from(mem >> 16 & 0xfff0) << 16) | 0xf_ffff,
    );
    let want_base = 0xc000_0000 + (u64::from(number) - 1) * (16 << 20);
    ensure!(
        mem_base == want_base && mem_limit == want_base + (16 << 20) - 1,
        "{f}: memory window {mem_base:#x}-{mem_limit:#x}, expected {want_base:#x} + 16 MiB"
    );
    let pref = ecam.read32(f, 0x24);
    ensure!(
        pref & 0xf == 1 && (pref >> 16) & 0xf == 1,
        "{f}: prefetchable window is not 64-bit ({pref:#x})"
    );
    let pref_base = (u64::from(pref & 0xfff0) << 16) | (u64::from(ecam.read32(f, 0x28)) << 32);
    let pref_limit =
        (u64::from(pref >> 16 & 0xfff0) << 16) | (u64::from(ecam.read32(f, 0x2c)) << 32) | 0xf_ffff;
    let want_pref = 0x80_0000_0000 + (u64::from(number) - 1) * (2 << 30);
    ensure!(
        pref_base == want_pref && pref_limit == want_pref + (2 << 30) - 1,
        "{f}: prefetchable window {pref_base:#x}-{pref_limit:#x}, expected {want_pref:#x} + 2 GiB"
    );
    // Bridges have two BARs; ours implement none: they size to 0.
    for bar in [0x10u16, 0x14] {
        let old = ecam.read32(f, bar);
        ecam.write32(f, bar, 0xffff_ffff);
        let size = ecam.read32(f, bar);
        ecam.write32(f, bar, old);
        ensure!(
            size == 0,
            "{f}: BAR at {bar:#x} sizes to {size:#x}, expected no BAR"
        );
    }

    let caps = ecam.capabilities(f);
    ensure!(!caps.looped, "{f}: the capability list loops");
    let exp = caps
        .find(CAP_EXP)
        .ok_or_else(|| fail!("{f}: no PCI Express capability"))?;
    ensure!(
        caps.find(CAP_MSI).is_some(),
        "{f}: no MSI capability (pciehp needs an interrupt)"
    );
    let flags = ecam.read16(f, exp + 2);
    ensure!(
        (flags >> 4) & 0xf == 4,
        "{f}: PCIe port type {}, expected 4 (root port)",
        (flags >> 4) & 0xf
    );
    ensure!(flags & (1 << 8) != 0, "{f}: Slot Implemented is clear");
    let sltcap = ecam.read32(f, exp + 0x14);
    ensure!(sltcap & (1 << 6) != 0, "{f}: slot is not hotplug capable");
    ensure!(sltcap & 1 != 0, "{f}: no attention button");
    ensure!(
        sltcap >> 19 == u32::from(number),
        "{f}: physical slot {} (expected {number})",
        sltcap >> 19
    );
    ensure!(
        ecam.read32(f, exp + 0x0c) & (1 << 20) != 0,
        "{f}: DLLLARC clear in Link Capabilities"
    );
    ensure!(
        ecam.read32(f, exp + 0x24) & (1 << 5) != 0,
        "{f}: no ARI forwarding in DevCap2"
    );
    let ext = ecam.ext_capabilities(f);
    ensure!(!ext.looped, "{f}: the extended capability list loops");
    ensure!(
        ext.find(EXT_ACS).is_some(),
        "{f}: no ACS extended capability"
    );

    // Slot Control writes complete at once: Command Completed (RW1C) sets, then clears on 1.
    let sltsta = exp + 0x1a;
    ecam.write16(f, sltsta, 0x1f);
    let ctl = ecam.read16(f, exp + 0x18);
    ecam.write16(f, exp + 0x18, ctl);
    ensure!(
        ecam.read16(f, sltsta) & 0x10 != 0,
        "{f}: no Command Completed after a Slot Control write"
    );
    ecam.write16(f, sltsta, 0);
    ensure!(
        ecam.read16(f, sltsta) & 0x10 != 0,
        "{f}: writing 0 cleared Command Completed"
    );
    ecam.write16(f, sltsta, 0x10);
    ensure!(
        ecam.read16(f, sltsta) & 0x10 == 0,
        "{f}: writing 1 did not clear Command Completed"
    );
    // Read-only fields stay put.
    ecam.write32(f, exp + 0x14, 0);
    ensure!(
        ecam.read32(f, exp + 0x14) == sltcap,
        "{f}: Slot Capabilities took a write"
    );

    let present = ecam.read16(f, sltsta) & (1 << 6) != 0;
    let link = ecam.read16(f, exp + 0x12) & (1 << 13) != 0;
    ensure!(
        present == link,
        "{f}: presence {present} but link active {link}"
    );
    info!(
        ctx,
        "{f} [1b36:000c] class 0604 type 1 bus 00->{secondary:02x}..{subordinate:02x} mem {mem_base:x}-{mem_limit:x} pref {pref_base:x}-{pref_limit:x} slot {number} caps exp@{exp:#x} msi acs{}",
        if present { " occupied" } else { "" }
    );
    Ok(Port { bdf: f, secondary })
}
