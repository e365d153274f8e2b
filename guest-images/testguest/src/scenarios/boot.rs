//! `boot`: ring 3 reached, the E820 map is sane and its RAM is there, the RAM total
//! matches `testguest.mem`, the command line is readable.

use super::{Ctx, Fail, ensure, fail, info};
use crate::bootparams::{E820_MAX, E820_RAM, E820Entry};
use crate::cmdline::{self, Cmdline, SCENARIO_KEY};
use crate::ring0::{self, TRAMPOLINE_ADDR};
use crate::{cpu, phys};

/// The 32-bit MMIO hole, where no RAM may be.
const MMIO_HOLE: (u64, u64) = (3 << 30, 4 << 30);
/// Bytes touched at each end of each RAM range.
const WINDOW: u64 = 4096;
const MIB: u64 = 1 << 20;

/// See the module documentation.
pub fn run(ctx: &Ctx) -> Result<(), Fail> {
    let cs = cpu::cs();
    ensure!(cs & 3 == 3, "CS is {cs:#x}: not ring 3");
    let flags = cpu::rflags();
    ensure!(
        flags & (1 << 9) != 0,
        "RFLAGS {flags:#x}: interrupts are off"
    );
    // PVM shows ring 3 the host's user CS (0x33) and no IOPL; port I/O uses gates anyway.
    info!(
        ctx,
        "ring 3: CS {cs:#x}, RFLAGS {flags:#x} (IOPL {})",
        (flags >> 12) & 3
    );
    check_e820(ctx)?;
    touch_ram(ctx)?;
    check_ram_total(ctx)?;
    check_cmdline(ctx)
}

fn check_e820(ctx: &Ctx) -> Result<(), Fail> {
    let bp = &ctx.boot_params;
    let n = bp.e820_count();
    ensure!(n > 0, "the E820 map is empty");
    ensure!(
        n <= E820_MAX,
        "e820_entries is {n}, the zero page holds {E820_MAX}"
    );
    let mut prev: Option<E820Entry> = None;
    for (i, e) in bp.e820().enumerate() {
        info!(
            ctx,
            "e820[{i}] {:#014x}..{:#014x} type {}",
            e.addr,
            e.end(),
            e.kind
        );
        ensure!(e.size > 0, "E820 entry {i} at {:#x} is empty", e.addr);
        ensure!(
            e.addr.checked_add(e.size).is_some(),
            "E820 entry {i} wraps around"
        );
        if let Some(p) = prev {
            ensure!(
                e.addr >= p.end(),
                "E820 entries {} and {i} are unsorted or overlap: {:#x}..{:#x}, then {:#x}..{:#x}",
                i - 1,
                p.addr,
                p.end(),
                e.addr,
                e.end()
            );
        }
        if e.kind == E820_RAM {
            ensure!(
                e.end() <= MMIO_HOLE.0 || e.addr >= MMIO_HOLE.1,
                "E820 RAM {:#x}..{:#x} reaches into the MMIO hole (3..4 GiB)",
                e.addr,
                e.end()
            );
        }
        prev = Some(e);
    }
    let (start, end) = ring0::image_range();
    ensure!(
        bp.e820()
            .any(|e| e.kind == E820_RAM && e.contains(start, end - start)),
        "the guest image {start:#x}..{end:#x} is not inside one E820 RAM range"
    );
    Ok(())
}

/// A stretch of RAM the test may overwrite (and restores): `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window {
    start: u64,
    end: u64,
}

/// Writes a pattern over the first and the last 4 KiB of every RAM range, reads it back
/// and restores the old contents; then writes one tag per window and reads them all back,
/// so two ranges backed by the same host memory show up. Windows move off memory the
/// guest itself uses (its image, the zero page, the command line, the AP trampoline).
fn touch_ram(ctx: &Ctx) -> Result<(), Fail> {
    let (image_start, image_end) = ring0::image_range();
    let bp = &ctx.boot_params;
    let cmdline_len = ctx.cmdline.as_str().len() as u64 + 1;
    let in_use = [
        (image_start, image_end),
        (bp.addr(), bp.addr() + 4096),
        (bp.cmd_line_ptr(), bp.cmd_line_ptr() + cmdline_len),
        (TRAMPOLINE_ADDR, TRAMPOLINE_ADDR + 4096),
    ];
    let mut windows = [Window { start: 0, end: 0 }; 2 * E820_MAX];
    let mut count = 0;
    for e in bp.e820().filter(|e| e.kind == E820_RAM) {
        if e.addr >= phys::MAPPED_END {
            info!(
                ctx,
                "RAM {:#x}..{:#x} is beyond the identity map: not touched",
                e.addr,
                e.end()
            );
            continue;
        }
        // Qword-aligned, and clipped to the identity map.
        let start = e.addr.next_multiple_of(8);
        let end = e.end().min(phys::MAPPED_END) & !7;
        for w in [
            first_window(start, end, &in_use),
            last_window(start, end, &in_use),
        ] {
            match w {
                Some(w) if !windows[..count].contains(&w) => {
                    windows[count] = w;
                    count += 1;
                }
                Some(_) => {}
                None => info!(
                    ctx,
                    "RAM {:#x}..{:#x}: no free window to touch",
                    e.addr,
                    e.end()
                ),
            }
        }
    }
    let windows = &windows[..count];
    for w in windows {
        pattern_test(*w)?;
    }
    alias_test(windows)?;
    info!(
        ctx,
        "touched {count} windows of up to {WINDOW} bytes at the ends of the RAM ranges"
    );
    Ok(())
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

/// The lowest window of `[start, end)` clear of `in_use`.
fn first_window(mut start: u64, end: u64, in_use: &[(u64, u64)]) -> Option<Window> {
    loop {
        let w_end = start.checked_add(WINDOW)?.min(end);
        if start >= w_end {
            return None;
        }
        match in_use.iter().find(|&&r| overlaps(r, (start, w_end))) {
            Some(r) => start = r.1.next_multiple_of(8),
            None => return Some(Window { start, end: w_end }),
        }
    }
}

/// The highest window of `[start, end)` clear of `in_use`.
fn last_window(start: u64, mut end: u64, in_use: &[(u64, u64)]) -> Option<Window> {
    loop {
        let w_start = end.saturating_sub(WINDOW).max(start);
        if w_start >= end {
            return None;
        }
        match in_use.iter().find(|&&r| overlaps(r, (w_start, end))) {
            Some(r) => end = r.0 & !7,
            None => {
                return Some(Window {
                    start: w_start,
                    end,
                });
            }
        }
    }
}

/// A value that differs for every address, so a misrouted write shows.
fn pattern(addr: u64) -> u64 {
    addr.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0xa5a5_5a5a_0f0f_f0f0
}

fn pattern_test(w: Window) -> Result<(), Fail> {
    let mut saved = [0u64; (WINDOW / 8) as usize];
    let n = ((w.end - w.start) / 8) as usize;
    let addr = |i: usize| w.start + 8 * i as u64;
    for (i, slot) in saved[..n].iter_mut().enumerate() {
        *slot = phys::read_u64(addr(i));
        phys::write_u64(addr(i), pattern(addr(i)));
    }
    let bad = (0..n).find(|&i| phys::read_u64(addr(i)) != pattern(addr(i)));
    let got = bad.map(|i| phys::read_u64(addr(i)));
    for (i, &old) in saved[..n].iter().enumerate() {
        phys::write_u64(addr(i), old);
    }
    match (bad, got) {
        (Some(i), Some(got)) => Err(fail!(
            "RAM at {:#x} read back {got:#x} after writing {:#x}",
            addr(i),
            pattern(addr(i))
        )),
        _ => Ok(()),
    }
}

fn alias_test(windows: &[Window]) -> Result<(), Fail> {
    let tag = |i: usize| 0x7e57_0000_0000_0000 | i as u64;
    let mut saved = [0u64; 2 * E820_MAX];
    for (i, w) in windows.iter().enumerate() {
        saved[i] = phys::read_u64(w.start);
        phys::write_u64(w.start, tag(i));
    }
    let bad = windows
        .iter()
        .enumerate()
        .find(|&(i, w)| phys::read_u64(w.start) != tag(i));
    let got = bad.map(|(_, w)| phys::read_u64(w.start));
    for (i, w) in windows.iter().enumerate().rev() {
        phys::write_u64(w.start, saved[i]);
    }
    match (bad, got) {
        (Some((i, w)), Some(got)) => Err(fail!(
            "RAM at {:#x} holds {got:#x}, not its tag {:#x}: another range aliases it",
            w.start,
            tag(i)
        )),
        _ => Ok(()),
    }
}

fn check_ram_total(ctx: &Ctx) -> Result<(), Fail> {
    let ram = ctx.boot_params.e820().filter(|e| e.kind == E820_RAM);
    let total = ram.clone().fold(0u64, |sum, e| sum.saturating_add(e.size));
    let mib = total.div_ceil(MIB);
    info!(
        ctx,
        "RAM: {total:#x} bytes in {} E820 RAM ranges, {mib} MiB rounded up",
        ram.count()
    );
    match ctx.cmdline.mem() {
        None => info!(
            ctx,
            "no {}= on the command line: RAM size not checked",
            cmdline::MEM_KEY
        ),
        Some(text) => {
            let want = cmdline::parse_size(text)
                .ok_or_else(|| fail!("{}={text} is not a size", cmdline::MEM_KEY))?;
            ensure!(
                mib == want.div_ceil(MIB),
                "E820 RAM is {mib} MiB, but {}={text}",
                cmdline::MEM_KEY
            );
        }
    }
    Ok(())
}

fn check_cmdline(ctx: &Ctx) -> Result<(), Fail> {
    let cmdline = Cmdline::from_boot_params(&ctx.boot_params)?;
    info!(
        ctx,
        "command line at {:#x}: {}",
        ctx.boot_params.cmd_line_ptr(),
        cmdline.as_str()
    );
    ensure!(
        cmdline.values(SCENARIO_KEY).next().is_some(),
        "the command line has no {SCENARIO_KEY}="
    );
    Ok(())
}
