//! The test guest: a freestanding x86_64 program the VMM boots like a Linux kernel (ELF,
//! 64-bit boot protocol). Ring 0 (src/ring0.s) sets up the CPU in a few dozen
//! instructions and drops to ring 3, where everything else runs at native speed even
//! under an emulated ring 0 (see docs/testing.md).
//!
//! Serial output, one line each:
//! - `TESTGUEST START scenarios=<list>`
//! - per scenario: `TESTGUEST PASS <name>` or `TESTGUEST FAIL <name>: <reason>`, plus
//!   optional `TESTGUEST INFO <name>: ...`
//! - `TESTGUEST DONE passed=<p> failed=<f>`, then the VM ends with status 0 (all passed)
//!   or 1 on the debug-exit port.
//!
//! A problem outside any scenario (no usable boot_params or command line, a BSP stack
//! overflow) is reported as a failure of the pseudo-scenario `testguest`. A panic prints
//! `TESTGUEST PANIC <message>` and ends with status 0xFE; a CPU exception prints
//! `TESTGUEST FAULT vector=...` from ring 0 and ends with status 0xFF.

#![no_std]
#![no_main]
// There is no heap: a failure reason (scenarios::Fail) is a fixed buffer of a few hundred
// bytes, returned by value, and only on the way to a FAIL line.
#![allow(clippy::result_large_err)]
// Register-level code: addresses are split into 32-bit halves for MMIO registers, fields
// are cut out of config words and descriptors everywhere; each such `as` is the meaning,
// not an accident. (The VMM and the device models, which take guest input, keep the lint.)
#![allow(clippy::cast_possible_truncation)]

mod acpi;
mod bootparams;
mod cmdline;
mod cpu;
mod igbvf;
mod ioapic;
mod lapic;
mod mem;
mod mmio;
mod paging;
mod pcie;
mod pciehp;
mod phys;
mod port;
mod ring0;
mod scenarios;
mod serial;
mod smp;
mod time;
mod virtio;
mod virtio_iommu;
mod virtio_net;

use core::panic::PanicInfo;
use core::sync::atomic::{AtomicBool, Ordering};

use bootparams::BootParams;
use cmdline::Cmdline;
use scenarios::Join;

/// The bottom of the BSP stack holds this pattern until the stack grows that deep.
const STACK_PAINT: u64 = 0x57ac_57ac_57ac_57ac;
/// Bytes of the BSP stack painted.
const STACK_PAINT_LEN: u64 = 4096;

/// Ring-3 entry of the BSP (from ring0.s), with the zero page's address.
extern "C" fn bsp_main(boot_params: u64) -> ! {
    serial::init();
    paint_stack_bottom();
    let (boot_params, cmdline) = match setup(boot_params) {
        Ok(found) => found,
        Err(reason) => {
            println!("TESTGUEST START scenarios=");
            println!("TESTGUEST FAIL testguest: {}", reason.reason());
            finish(0, 1)
        }
    };
    println!(
        "TESTGUEST START scenarios={}",
        Join(cmdline.scenarios(), ",")
    );
    let (mut passed, mut failed) = (0, 0);
    for name in cmdline.scenarios() {
        if scenarios::run(name, boot_params, cmdline) {
            passed += 1;
        } else {
            failed += 1;
        }
    }
    if cmdline.scenarios().next().is_none() {
        println!(
            "TESTGUEST FAIL testguest: no {}= on the command line",
            cmdline::SCENARIO_KEY
        );
        failed += 1;
    }
    if !stack_bottom_intact() {
        println!(
            "TESTGUEST FAIL testguest: the BSP stack grew into its last {STACK_PAINT_LEN} bytes"
        );
        failed += 1;
    }
    finish(passed, failed)
}

/// The zero page and the command line, or why they cannot be used.
fn setup(addr: u64) -> Result<(BootParams, Cmdline), scenarios::Fail> {
    let bp = BootParams::at(addr)
        .ok_or_else(|| scenarios::fail!("boot_params address (RSI) {addr:#x} is not usable"))?;
    Ok((bp, Cmdline::from_boot_params(&bp)?))
}

fn finish(passed: u32, failed: u32) -> ! {
    println!("TESTGUEST DONE passed={passed} failed={failed}");
    port::exit(if failed == 0 {
        port::STATUS_PASS
    } else {
        port::STATUS_FAIL
    })
}

/// Paints the lowest bytes of the BSP stack, far below where it is now.
fn paint_stack_bottom() {
    let bottom = ring0::bsp_stack_bottom();
    for addr in (bottom..bottom + STACK_PAINT_LEN).step_by(8) {
        phys::write_u64(addr, STACK_PAINT);
    }
}

fn stack_bottom_intact() -> bool {
    let bottom = ring0::bsp_stack_bottom();
    (bottom..bottom + STACK_PAINT_LEN)
        .step_by(8)
        .all(|addr| phys::read_u64(addr) == STACK_PAINT)
}

/// The personality routine that core's unwind tables name. Never called: panics abort
/// (the workspace profile sets panic = "abort"), nothing unwinds.
#[unsafe(no_mangle)]
extern "C" fn rust_eh_personality() {}

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    // A panic while printing the panic must not recurse.
    static PANICKING: AtomicBool = AtomicBool::new(false);
    if !PANICKING.swap(true, Ordering::SeqCst) {
        match info.location() {
            Some(at) => println!(
                "TESTGUEST PANIC {} at {}:{}",
                info.message(),
                at.file(),
                at.line()
            ),
            None => println!("TESTGUEST PANIC {}", info.message()),
        }
    }
    port::exit(port::STATUS_PANIC)
}
