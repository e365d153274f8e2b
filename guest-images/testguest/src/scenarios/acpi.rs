//! `acpi`: the RSDP (scan and boot_params agree), checksums of the RSDP, the XSDT and
//! every table, FACP, APIC and DSDT present, and a MADT that matches CPUID.

use super::{Ctx, Fail, Join, ensure, fail, info};
use crate::acpi::{self, AcpiError, ApicIds, MadtEntry, Root, Sdt, Sig};
use crate::bootparams::E820_RAM;
use crate::{cpu, lapic};

/// See the module documentation.
pub fn run(ctx: &Ctx) -> Result<(), Fail> {
    let scanned = acpi::scan_rsdp().ok_or(AcpiError::NoRsdp)?;
    let given = ctx.boot_params.acpi_rsdp_addr();
    if given == 0 {
        info!(ctx, "boot_params.acpi_rsdp_addr is 0 (not given)");
    } else {
        ensure!(
            given == scanned,
            "boot_params.acpi_rsdp_addr is {given:#x}, the scan found the RSDP at {scanned:#x}"
        );
    }
    let rsdp = acpi::rsdp_at(scanned)?;
    ensure!(
        rsdp.revision >= 2 && rsdp.xsdt != 0,
        "the RSDP (revision {}) has no XSDT",
        rsdp.revision
    );
    check_reserved(ctx, Sig(*b"RSD "), rsdp.addr, 36)?;
    let root = Root::from_rsdp(&rsdp)?;
    check_reserved(ctx, root.sdt.sig(), root.sdt.addr, root.sdt.len())?;
    info!(
        ctx,
        "RSDP at {:#x} revision {}, XSDT at {:#x}", rsdp.addr, rsdp.revision, rsdp.xsdt
    );

    let (mut fadt, mut madt) = (None, None);
    for table in root.tables() {
        let table = table?;
        check_reserved(ctx, table.sig(), table.addr, table.len())?;
        info!(
            ctx,
            "{} at {:#x}, {} bytes",
            table.sig(),
            table.addr,
            table.len()
        );
        match &table.sig().0 {
            b"FACP" => fadt = fadt.or(Some(table)),
            b"APIC" => madt = madt.or(Some(table)),
            _ => {}
        }
    }
    let fadt = fadt.ok_or(AcpiError::Missing { sig: Sig(*b"FACP") })?;
    let madt = madt.ok_or(AcpiError::Missing { sig: Sig(*b"APIC") })?;
    let dsdt = acpi::sdt_at(
        acpi::fadt_dsdt_addr(&fadt),
        Some(b"DSDT"),
        "FADT X_DSDT/DSDT",
    )?;
    check_reserved(ctx, dsdt.sig(), dsdt.addr, dsdt.len())?;
    info!(ctx, "DSDT at {:#x}, {} bytes", dsdt.addr, dsdt.len());
    check_madt(ctx, &madt)
}

/// ACPI tables must lie in memory the E820 map keeps from the OS (reserved or ACPI).
fn check_reserved(ctx: &Ctx, sig: Sig, addr: u64, len: usize) -> Result<(), Fail> {
    let entry = ctx.boot_params.e820_entry_containing(addr, len as u64);
    ensure!(
        entry.is_some_and(|e| e.kind != E820_RAM),
        "{sig} at {addr:#x} (+{len:#x}) is not inside an E820 reserved or ACPI range"
    );
    Ok(())
}

fn check_madt(ctx: &Ctx, madt: &Sdt) -> Result<(), Fail> {
    let list = ApicIds::from_madt(madt)?;
    let ids = list.as_slice();
    let count = cpu::cpu_count();
    info!(
        ctx,
        "MADT: {} enabled local APICs (IDs {}); CPUID vCPU count: {count}",
        ids.len(),
        Join(ids.iter(), ", "),
    );
    ensure!(
        ids.len() == count.best() as usize,
        "the MADT lists {} enabled local APICs, CPUID reports {} vCPUs",
        ids.len(),
        count.best()
    );
    if let Some(id) = list.first_duplicate() {
        return Err(fail!("the MADT lists APIC ID {id} twice"));
    }
    let bsp = lapic::id();
    ensure!(
        ids.contains(&bsp),
        "the BSP's APIC ID {bsp} is not in the MADT"
    );
    let mut ioapics = 0;
    for entry in acpi::madt_entries(madt) {
        let entry = entry?;
        info!(ctx, "MADT entry: {entry}");
        ioapics += usize::from(matches!(entry, MadtEntry::IoApic { .. }));
    }
    ensure!(ioapics > 0, "the MADT lists no IOAPIC");
    Ok(())
}
