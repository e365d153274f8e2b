//! VM life-cycle scenarios for the VMM's own tests: they end (or never end) the VM rather
//! than pass.
//!
//! - `idle`: prints `TESTGUEST INFO idle: ...` and halts the BSP for good, so the VM runs
//!   until the VMM is told to stop it (API, signals).
//! - `reset`: resets the machine through the FADT's reset register, or the i8042 when the
//!   FADT offers none; `reset-i8042` always uses the i8042.
//! - `poweroff`: enters S5 through the FADT's sleep control register (hardware-reduced
//!   ACPI) or PM1a control block, with SLP_TYP from the DSDT's `\_S5_`.
//!
//! `reset` and `poweroff` print no PASS line when they work: the VM is gone. If it is still
//! there after a while, they FAIL.

use super::{Ctx, Fail, fail, info};
use crate::acpi::{self, AcpiError, Fadt, GAS_SYSTEM_IO, Gas, Root, Sig};
use crate::{port, ring0, time};

/// i8042 command port, and its "pulse the reset line" command.
const I8042_COMMAND: u16 = 0x64;
const I8042_RESET: u8 = 0xfe;
/// SLP_EN in the hardware-reduced sleep control register, and in PM1_CNT.
const SLEEP_CONTROL_SLP_EN: u8 = 1 << 5;
const PM1_CNT_SLP_EN: u16 = 1 << 13;

/// `idle`: see the module documentation.
pub fn idle(ctx: &Ctx) -> Result<(), Fail> {
    info!(
        ctx,
        "the BSP halts for good; the VM runs until the VMM stops it"
    );
    ring0::park()
}

/// `reset`: see the module documentation.
pub fn reset(ctx: &Ctx) -> Result<(), Fail> {
    match fadt().map(|f| f.reset_reg()) {
        Ok(Some((gas, value))) => {
            info!(ctx, "writing {value:#x} to the FADT reset register, {gas}");
            write_gas(gas, u32::from(value))?;
        }
        other => {
            if let Err(e) = other {
                info!(ctx, "no FADT ({e})");
            }
            info!(ctx, "no FADT reset register: i8042 reset command");
            port::outb(I8042_COMMAND, I8042_RESET);
        }
    }
    still_alive("reset")
}

/// `reset-i8042`: the keyboard controller's reset command, whatever the FADT offers.
pub fn reset_i8042(ctx: &Ctx) -> Result<(), Fail> {
    info!(ctx, "i8042 reset command");
    port::outb(I8042_COMMAND, I8042_RESET);
    still_alive("i8042 reset")
}

/// `poweroff`: see the module documentation.
pub fn poweroff(ctx: &Ctx) -> Result<(), Fail> {
    let fadt = fadt()?;
    let dsdt = acpi::sdt_at(
        acpi::fadt_dsdt_addr(&fadt.0),
        Some(b"DSDT"),
        "FADT X_DSDT/DSDT",
    )?;
    let slp_typ = acpi::s5_slp_typ(&dsdt).ok_or_else(|| fail!("the DSDT has no usable \\_S5_"))?;
    if fadt.hw_reduced() {
        let gas = fadt
            .sleep_control_reg()
            .ok_or_else(|| fail!("hardware-reduced FADT without SLEEP_CONTROL_REG"))?;
        let value = (slp_typ & 7) << 2 | SLEEP_CONTROL_SLP_EN;
        info!(
            ctx,
            "S5: writing {value:#x} to the sleep control register, {gas}"
        );
        write_gas(gas, u32::from(value))?;
    } else {
        let port = fadt.pm1a_cnt_blk();
        let value = u16::from(slp_typ & 7) << 10 | PM1_CNT_SLP_EN;
        if port == 0 || port > 0xffff {
            return Err(fail!(
                "the FADT has neither SLEEP_CONTROL_REG nor PM1a_CNT_BLK"
            ));
        }
        info!(
            ctx,
            "S5: writing {value:#x} to PM1a_CNT_BLK, port {port:#x}"
        );
        port::outw(port as u16, value);
    }
    still_alive("power off")
}

fn fadt() -> Result<Fadt, AcpiError> {
    let rsdp = acpi::rsdp_at(acpi::scan_rsdp().ok_or(AcpiError::NoRsdp)?)?;
    let root = Root::from_rsdp(&rsdp)?;
    let sdt = root
        .find(b"FACP")?
        .ok_or(AcpiError::Missing { sig: Sig(*b"FACP") })?;
    Ok(Fadt(sdt))
}

/// Writes an 8-, 16- or 32-bit register in I/O space (where x86 machines put them).
fn write_gas(gas: Gas, value: u32) -> Result<(), Fail> {
    let port = u16::try_from(gas.addr)
        .ok()
        .filter(|_| gas.space == GAS_SYSTEM_IO);
    match (port, gas.bit_width) {
        (Some(port), 8) => port::outb(port, value as u8),
        (Some(port), 16) => port::outw(port, value as u16),
        (Some(port), 32) => port::outl(port, value),
        _ => return Err(fail!("cannot write the register at {gas}")),
    }
    Ok(())
}

/// The VM should be gone by now: fail after a generous wait.
fn still_alive(what: &str) -> Result<(), Fail> {
    time::delay_us(2_000_000);
    Err(fail!(
        "the VM is still running 2 s after the {what} request"
    ))
}
