//! The boot vCPU's state for a direct 64-bit entry: GDT, identity page tables, segment,
//! control and general registers, FPU, MSRs, and the local APIC's LINT pins.

use devices::GuestMemory;
use devices::bits::lo32;
use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress};

use super::loader::BootError;
use crate::memory::layout;

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_NE: u64 = 1 << 5;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Page-table entry flags: present, writable, and (in a PDE) a 2 MiB page.
const PTE_PRESENT: u64 = 1 << 0;
const PTE_WRITABLE: u64 = 1 << 1;
const PDE_PAGE_SIZE: u64 = 1 << 7;

/// GDT indices of the Linux 64-bit boot protocol: CS = 0x10, DS = 0x18, plus a TSS.
const GDT_CODE: usize = 2;
const GDT_DATA: usize = 3;
const GDT_TSS: usize = 4;
/// Entries of the boot GDT: null, unused, code, data, TSS.
const GDT_ENTRIES: u16 = 5;

/// A GDT descriptor from flags (type, S, DPL, P in bits 0-7; AVL, L, D/B, G in 12-15),
/// base and limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let flags = flags as u64;
    let base = base as u64;
    let limit = limit as u64;
    ((base & 0xff00_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
        | ((limit & 0x000f_0000) << 32)
        | ((flags & 0xf0ff) << 40)
}

/// The boot GDT.
pub fn boot_gdt() -> [u64; GDT_ENTRIES as usize] {
    let mut gdt = [0u64; GDT_ENTRIES as usize];
    gdt[GDT_CODE] = gdt_entry(0xa09b, 0, 0xfffff); // 64-bit code, present, DPL 0
    gdt[GDT_DATA] = gdt_entry(0xc093, 0, 0xfffff); // data, read/write
    gdt[GDT_TSS] = gdt_entry(0x808b, 0, 0xfffff); // busy 64-bit TSS
    gdt
}

/// The `kvm_segment` a GDT entry at `index` describes.
pub fn segment_from_gdt(entry: u64, index: usize) -> kvm_segment {
    // Bits shift..shift + width (width at most 8).
    let bits = |shift: u64, width: u64| ((entry >> shift) & ((1 << width) - 1) & 0xff) as u8;
    kvm_segment {
        base: (((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000)),
        limit: lo32((entry & 0xffff) | ((entry >> 32) & 0xf_0000)),
        // The index above TI (0: the GDT) and RPL 0; past the 8192 entries a GDT can have,
        // the null selector.
        selector: u16::try_from(index * 8).unwrap_or(0),
        type_: bits(40, 4),
        present: bits(47, 1),
        dpl: bits(45, 2),
        db: bits(54, 1),
        s: bits(44, 1),
        l: bits(53, 1),
        g: bits(55, 1),
        avl: bits(52, 1),
        unusable: u8::from(bits(47, 1) == 0),
        padding: 0,
    }
}

/// Writes the boot GDT, an empty IDT and page tables identity-mapping the first 4 GiB with
/// 2 MiB pages (enough for any kernel entry point and the boot structures; the kernel
/// builds its own tables right away).
pub fn write_boot_tables(mem: &GuestMemory) -> Result<(), BootError> {
    let w = |what, r: Result<(), vm_memory::GuestMemoryError>| {
        r.map_err(|e| BootError::GuestWrite(what, e))
    };
    for (i, entry) in boot_gdt().iter().enumerate() {
        let addr = GuestAddress(layout::BOOT_GDT_START + 8 * i as u64);
        w("the boot GDT", mem.write_obj(*entry, addr))?;
    }
    w(
        "the boot IDT",
        mem.write_obj(0u64, GuestAddress(layout::BOOT_IDT_START)),
    )?;
    let table = PTE_PRESENT | PTE_WRITABLE;
    w(
        "the boot PML4",
        mem.write_obj(
            layout::PDPTE_START | table,
            GuestAddress(layout::PML4_START),
        ),
    )?;
    for gib in 0..4u64 {
        let pd = layout::PDE_START + gib * 0x1000;
        w(
            "the boot PDPT",
            mem.write_obj(pd | table, GuestAddress(layout::PDPTE_START + gib * 8)),
        )?;
        for i in 0..512u64 {
            let phys = (gib << 30) | (i << 21);
            w(
                "the boot page directory",
                mem.write_obj(phys | table | PDE_PAGE_SIZE, GuestAddress(pd + i * 8)),
            )?;
        }
    }
    Ok(())
}

/// Special registers for 64-bit entry, starting from the vCPU's reset state `sregs`.
pub fn boot_sregs(mut sregs: kvm_sregs) -> kvm_sregs {
    let gdt = boot_gdt();
    let code = segment_from_gdt(gdt[GDT_CODE], GDT_CODE);
    let data = segment_from_gdt(gdt[GDT_DATA], GDT_DATA);
    let tss = segment_from_gdt(gdt[GDT_TSS], GDT_TSS);
    sregs.gdt.base = layout::BOOT_GDT_START;
    sregs.gdt.limit = GDT_ENTRIES * 8 - 1;
    sregs.idt.base = layout::BOOT_IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    // Caches on (CD and NW cleared), protected mode with paging, native FPU errors.
    sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_NE | X86_CR0_PG;
    sregs.cr3 = layout::PML4_START;
    sregs.cr4 = X86_CR4_PAE;
    sregs.efer |= EFER_LME | EFER_LMA;
    sregs
}

/// General registers: RIP at the entry, RSI at the zero page (Linux 64-bit boot protocol).
pub fn boot_regs(entry: GuestAddress) -> kvm_regs {
    kvm_regs {
        rflags: 0x2,
        rip: entry.0,
        rsp: layout::BOOT_STACK_POINTER,
        rbp: layout::BOOT_STACK_POINTER,
        rsi: layout::ZERO_PAGE_START,
        ..Default::default()
    }
}

/// The FPU at reset values (x87 control word, MXCSR).
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MISC_ENABLE_FAST_STRING: u64 = 1;

/// MSRs every vCPU starts with.
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    let msr = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        msr(MSR_IA32_SYSENTER_CS, 0),
        msr(MSR_IA32_SYSENTER_ESP, 0),
        msr(MSR_IA32_SYSENTER_EIP, 0),
        msr(MSR_STAR, 0),
        msr(MSR_CSTAR, 0),
        msr(MSR_KERNEL_GS_BASE, 0),
        msr(MSR_SYSCALL_MASK, 0),
        msr(MSR_LSTAR, 0),
        msr(MSR_IA32_TSC, 0),
        msr(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
    ]
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn lapic_reg(state: &kvm_lapic_state, offset: usize) -> u32 {
    let b = &state.regs[offset..offset + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

fn set_lapic_reg(state: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, b) in value.to_le_bytes().iter().enumerate() {
        state.regs[offset + i] = *b as _;
    }
}

/// Wires LINT0 as ExtINT (the 8259 path) and LINT1 as NMI, as firmware does.
pub fn set_lint_pins(state: &mut kvm_lapic_state) {
    let mode = |reg: u32, m: u32| (reg & !0x700) | (m << 8);
    let lvt0 = lapic_reg(state, APIC_LVT0);
    set_lapic_reg(state, APIC_LVT0, mode(lvt0, APIC_MODE_EXTINT));
    let lvt1 = lapic_reg(state, APIC_LVT1);
    set_lapic_reg(state, APIC_LVT1, mode(lvt1, APIC_MODE_NMI));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_decode() {
        let gdt = boot_gdt();
        assert_eq!(gdt[GDT_CODE], 0x00af_9b00_0000_ffff);
        assert_eq!(gdt[GDT_DATA], 0x00cf_9300_0000_ffff);
        let cs = segment_from_gdt(gdt[GDT_CODE], GDT_CODE);
        assert_eq!(
            (cs.selector, cs.l, cs.db, cs.dpl, cs.present),
            (0x10, 1, 0, 0, 1)
        );
        assert_eq!((cs.type_, cs.s, cs.g, cs.limit), (0xb, 1, 1, 0xfffff));
        let ds = segment_from_gdt(gdt[GDT_DATA], GDT_DATA);
        assert_eq!((ds.selector, ds.l, ds.db, ds.type_), (0x18, 0, 1, 0x3));
        let null = segment_from_gdt(0, 0);
        assert_eq!(null.unusable, 1);
        let based = segment_from_gdt(gdt_entry(0x808b, 0x1234_5678, 0x67), 4);
        assert_eq!((based.base, based.limit), (0x1234_5678, 0x67));
    }

    #[test]
    fn long_mode_sregs() {
        let s = boot_sregs(kvm_sregs::default());
        assert_eq!(s.cr0 & (X86_CR0_PE | X86_CR0_PG), X86_CR0_PE | X86_CR0_PG);
        assert_eq!(s.cr0 & (3 << 29), 0, "caches enabled");
        assert_eq!(s.cr4 & X86_CR4_PAE, X86_CR4_PAE);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(
            (s.cs.selector, s.ds.selector, s.tr.selector),
            (0x10, 0x18, 0x20)
        );
        assert_eq!(s.cr3, layout::PML4_START);
    }

    #[test]
    fn page_tables_identity_map_4gib() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_boot_tables(&mem).unwrap();
        let read = |a: u64| mem.read_obj::<u64>(GuestAddress(a)).unwrap();
        // Walk the tables for a few addresses.
        for va in [0u64, 0x100_0000, 0xfee0_0000, 0xffff_ffff] {
            let pml4e = read(layout::PML4_START + ((va >> 39) & 511) * 8);
            let pdpte = read((pml4e & !0xfff) + ((va >> 30) & 511) * 8);
            let pde = read((pdpte & !0xfff) + ((va >> 21) & 511) * 8);
            assert_eq!(pde & 0x83, 0x83, "{va:#x}");
            assert_eq!((pde & !0x1f_ffff) | (va & 0x1f_ffff), va);
        }
    }

    #[test]
    fn lint_pins() {
        let mut s = kvm_lapic_state::default();
        set_lapic_reg(&mut s, APIC_LVT0, 0x1_0000);
        set_lint_pins(&mut s);
        assert_eq!(lapic_reg(&s, APIC_LVT0), 0x1_0700);
        assert_eq!(lapic_reg(&s, APIC_LVT1), 0x400);
    }

    #[test]
    fn regs_follow_the_boot_protocol() {
        let r = boot_regs(GuestAddress(0x100_0000));
        assert_eq!(
            (r.rip, r.rsi, r.rflags),
            (0x100_0000, layout::ZERO_PAGE_START, 2)
        );
        assert_eq!(boot_msrs().len(), 10);
        assert_eq!(boot_fpu().mxcsr, 0x1f80);
    }
}
