//! Device memory beyond ring 0's identity map. Ring 0 maps 0..[`phys::MAPPED_END`] at boot
//! with tables the assembler built (src/ring0.s); a 64-bit BAR the VMM put higher (the
//! root ports' prefetchable windows start at 512 GiB, where the VF BARs go) is mapped here,
//! from ring 3, when a driver asks: identity, uncached (PWT | PCD), user, writable, 2 MiB
//! pages, in page-table pages from a small pool in .bss.
//!
//! Only entries that were not present are written: a present bit going from 0 to 1 needs
//! no TLB or paging-structure-cache invalidation (SDM vol. 3, 4.10.4.3), so ring 3 can do
//! it without `invlpg`. Each new table is cleared before the entry above it points at it,
//! so a CPU walking the tables meanwhile sees either no branch or a valid one. Every CPU
//! runs on the same tables (one CR3); only the BSP maps.

use core::cell::UnsafeCell;
use core::fmt;
use core::sync::atomic::{AtomicUsize, Ordering};

use crate::{phys, ring0};

/// Page-table pages available for new branches (a PDPT per 512 GiB, a page directory per
/// GiB touched): enough for a few devices.
const POOL_PAGES: usize = 16;
/// A table entry pointing at the next level: present, writable, user, accessed (as
/// ring0.s writes them).
const TABLE: u64 = 0x27;
/// A 2 MiB leaf: present, writable, user, PWT, PCD, accessed, dirty, page size.
const LEAF_UNCACHED: u64 = 0xff;
/// Present bit.
const PRESENT: u64 = 1;
/// Page size bit (a leaf above the page-table level).
const PAGE_SIZE: u64 = 1 << 7;
/// Address bits of an entry.
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
/// Bytes one leaf maps.
const LARGE_PAGE: u64 = 2 << 20;
/// The lower canonical half: what an identity map can cover.
const CANONICAL_END: u64 = 1 << 47;

#[repr(C, align(4096))]
struct Pool(UnsafeCell<[[u64; 512]; POOL_PAGES]>);

// SAFETY: the pool is only written through `phys` stores by `map_uncached` on the BSP,
// one page handed out at a time (NEXT_PAGE); Rust never reads or references its contents.
unsafe impl Sync for Pool {}

/// Zero-filled (.bss): fresh pages are empty tables.
static POOL: Pool = Pool(UnsafeCell::new([[0; 512]; POOL_PAGES]));
static NEXT_PAGE: AtomicUsize = AtomicUsize::new(0);

/// Why a range could not be mapped.
#[derive(Debug, Clone, Copy)]
pub struct MapError {
    /// Start of the range asked for.
    pub addr: u64,
    /// What stood in the way.
    pub why: &'static str,
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot map device memory at {:#x}: {}",
            self.addr, self.why
        )
    }
}

/// Makes `[addr, addr + len)` accessible to ring 3 at the same virtual address. Within
/// the boot identity map this does nothing (the 32-bit MMIO hole is already uncached);
/// above it the range is mapped uncached, in 2 MiB pages.
pub fn map_uncached(addr: u64, len: u64) -> Result<(), MapError> {
    if phys::is_mapped(addr, len) {
        return Ok(());
    }
    let err = |why| MapError { addr, why };
    let end = addr
        .checked_add(len)
        .filter(|&e| e <= CANONICAL_END)
        .ok_or(err("beyond the lower canonical half"))?;
    if addr < phys::MAPPED_END {
        return Err(err("straddles the end of the boot identity map"));
    }
    let mut page = addr & !(LARGE_PAGE - 1);
    while page < end {
        map_large(page).map_err(err)?;
        page += LARGE_PAGE;
    }
    Ok(())
}

/// Maps the 2 MiB page at `page` (aligned), uncached.
fn map_large(page: u64) -> Result<(), &'static str> {
    let pml4e = ring0::pml4_addr() + 8 * ((page >> 39) & 511);
    let pdpt = next_level(pml4e)?;
    let pdpte = pdpt + 8 * ((page >> 30) & 511);
    let pd = next_level(pdpte)?;
    let pde = pd + 8 * ((page >> 21) & 511);
    let want = page | LEAF_UNCACHED;
    match phys::read_u64(pde) {
        0 => {
            phys::write_u64(pde, want);
            Ok(())
        }
        e if e == want => Ok(()),
        _ => Err("a different mapping is there already"),
    }
}

/// The table the entry at `entry` points at, after pointing it at a fresh one if it was
/// empty.
fn next_level(entry: u64) -> Result<u64, &'static str> {
    let e = phys::read_u64(entry);
    if e & PRESENT != 0 {
        if e & PAGE_SIZE != 0 {
            return Err("a large page covers it already");
        }
        let table = e & ADDR_MASK;
        if !phys::is_mapped(table, 4096) {
            return Err("its page table lies outside the identity map");
        }
        return Ok(table);
    }
    if e != 0 {
        return Err("a non-present entry with bits set is in the way");
    }
    let i = NEXT_PAGE.fetch_add(1, Ordering::Relaxed);
    if i >= POOL_PAGES {
        NEXT_PAGE.store(POOL_PAGES, Ordering::Relaxed);
        return Err("no page-table page left in the pool");
    }
    let table = POOL.0.get() as u64 + 4096 * i as u64;
    // Fresh from .bss, but a table must be empty before anything points at it.
    for q in (table..table + 4096).step_by(8) {
        phys::write_u64(q, 0);
    }
    phys::write_u64(entry, table | TABLE);
    Ok(table)
}
