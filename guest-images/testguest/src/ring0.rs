//! The ring-0 part of the guest (src/ring0.s) and what ring 3 may see of it.
//!
//! Ring 0 only sets up the CPU and handles interrupts; the constants here are the single
//! source of the layout it shares with ring 3, passed into the assembly as `{NAME}`.
//!
//! Memory layout (all inside the image, which link.ld places at 1 MiB):
//! - `.data`: page tables (PML4, PDPT, 64 page directories: 0..64 GiB in 2 MiB pages),
//!   GDT (5 segment descriptors + one TSS descriptor per CPU), IDT (256 gates), one TSS
//!   per CPU.
//! - `.bss`: the BSP's user stack, the APs' user stacks, then one [`PerCpu`] per CPU
//!   (kernel stack followed by the interrupt counters).
//! - The AP trampoline is assembled into `.rodata` and copied by ring 3 to
//!   [`TRAMPOLINE_ADDR`] before the BSP starts the APs.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

use crate::{phys, port, serial};

/// Most CPUs the guest supports (GDT, TSS, stacks and counters are sized for it).
pub const MAX_CPUS: usize = 64;
/// CPU index of the BSP (APs are 1.. in the order they reach ring 0).
pub const BSP_CPU: usize = 0;
/// Vector of the DPL-3 gate a ring-3 CPU uses to halt for good.
pub const PARK_VECTOR: u8 = 0x81;
/// Port I/O gates, DPL 3: `int` with the port in dx and the value in al, ax or eax.
pub const INB_VECTOR: u8 = 0x82;
/// See [`INB_VECTOR`].
pub const INW_VECTOR: u8 = 0x83;
/// See [`INB_VECTOR`].
pub const INL_VECTOR: u8 = 0x84;
/// See [`INB_VECTOR`].
pub const OUTB_VECTOR: u8 = 0x85;
/// See [`INB_VECTOR`].
pub const OUTW_VECTOR: u8 = 0x86;
/// See [`INB_VECTOR`]; the last I/O gate.
pub const OUTL_VECTOR: u8 = 0x87;
// ring0.s treats PARK_VECTOR..=OUTL_VECTOR as the DPL-3 gates (IDT and #UD forwarding).
const _: () = assert!(INB_VECTOR == PARK_VECTOR + 1 && OUTL_VECTOR == PARK_VECTOR + 6);
/// Vector the local APIC uses for spurious interrupts (counted, never EOI'd).
pub const SPURIOUS_VECTOR: u8 = 0xff;
/// Guest-physical address the AP trampoline runs from (SIPI vector 0x08).
pub const TRAMPOLINE_ADDR: u64 = 0x8000;

/// Per-CPU kernel stack, for interrupts and exceptions taken from ring 3.
const KSTACK_SIZE: usize = 4096;
/// The BSP's user stack: all scenarios run on it, and debug builds are stack-hungry.
const BSP_STACK_SIZE: usize = 512 * 1024;
/// Each AP's user stack.
const AP_STACK_SIZE: usize = 64 * 1024;
/// Distance between two TSSes (a TSS is 104 bytes).
const TSS_STRIDE: usize = 128;

const KERNEL_CS: u16 = 0x08;
const KERNEL_DS: u16 = 0x10;
const USER_DS: u16 = 0x18 | 3;
const USER_CS: u16 = 0x20 | 3;
/// Selector of CPU 0's TSS; CPU n's is 16 * n above.
const TSS0_SEL: u16 = 0x28;
/// RFLAGS in ring 3: IOPL 3 (port I/O and cli/sti on hardware KVM; PVM drops it), IF, and
/// the always-one bit 1.
const USER_RFLAGS: u64 = 0x3202;
/// PG | NE | ET | MP | PE: EM and TS clear, so SSE works in ring 3.
const CR0: u32 = 0x8000_0033;
/// OSXMMEXCPT | OSFXSR | PAE.
const CR4: u32 = 0x620;
const MSR_EFER: u32 = 0xc000_0080;
const EFER_LME: u32 = 0x100;
/// The local APIC's EOI register (xAPIC MMIO).
const LAPIC_EOI: u32 = 0xfee0_00b0;

/// What ring 0 keeps per CPU. `irq_count` starts at the CPU's TSS RSP0, so the interrupt
/// stubs find it at a fixed offset from the stack pointer.
#[repr(C)]
pub struct PerCpu {
    /// Only ring 0 of this CPU touches it.
    kstack: UnsafeCell<[u8; KSTACK_SIZE]>,
    /// Interrupts taken per vector (>= 32). Ring 0 of this CPU increments them.
    irq_count: [AtomicU64; 256],
}

// RSP0 must be 16-byte aligned: the CPU aligns the stack to 16 before it pushes an
// interrupt frame, and the stubs count on the frame ending exactly at RSP0.
const _: () = assert!(KSTACK_SIZE & 15 == 0 && size_of::<PerCpu>() & 15 == 0);

/// Number of the next AP to reach 64-bit mode (the BSP is CPU 0); ring 0 takes it with
/// `lock xadd`.
static NEXT_CPU: AtomicU32 = AtomicU32::new(1);

unsafe extern "C" {
    static tg_percpu: [PerCpu; MAX_CPUS];
    static mut tg_gdt: [u64; 5 + 2 * MAX_CPUS];
    static tg_trampoline_start: u8;
    static tg_trampoline_end: u8;
    static tg_bsp_stack: u8;
    static tg_pml4: u8;
    static __image_start: u8;
    static __image_end: u8;
}

core::arch::global_asm!(
    include_str!("ring0.s"),
    bsp_main = sym crate::bsp_main,
    ap_main = sym crate::smp::ap_main,
    next_cpu = sym NEXT_CPU,
    MAX_CPUS = const MAX_CPUS,
    PARK_VECTOR = const PARK_VECTOR,
    SPURIOUS_VECTOR = const SPURIOUS_VECTOR,
    INB_VECTOR = const INB_VECTOR,
    INW_VECTOR = const INW_VECTOR,
    INL_VECTOR = const INL_VECTOR,
    OUTB_VECTOR = const OUTB_VECTOR,
    OUTW_VECTOR = const OUTW_VECTOR,
    OUTL_VECTOR = const OUTL_VECTOR,
    TRAMPOLINE_ADDR = const TRAMPOLINE_ADDR,
    KSTACK_SIZE = const KSTACK_SIZE,
    PERCPU_SIZE = const size_of::<PerCpu>(),
    BSP_STACK_SIZE = const BSP_STACK_SIZE,
    AP_STACK_SIZE = const AP_STACK_SIZE,
    TSS_STRIDE = const TSS_STRIDE,
    KERNEL_CS = const KERNEL_CS,
    KERNEL_DS = const KERNEL_DS,
    USER_DS = const USER_DS,
    USER_CS = const USER_CS,
    TSS0_SEL = const TSS0_SEL,
    USER_RFLAGS = const USER_RFLAGS,
    CR0 = const CR0,
    CR4 = const CR4,
    MSR_EFER = const MSR_EFER,
    EFER_LME = const EFER_LME,
    LAPIC_EOI = const LAPIC_EOI,
    MAPPED_GIB = const phys::MAPPED_END >> 30,
    SERIAL_THR = const serial::THR,
    SERIAL_LSR = const serial::LSR,
    EXIT_PORT = const port::EXIT_PORT,
    FAULT_STATUS = const port::STATUS_FAULT,
);

/// Interrupts with `vector` that ring 0 has counted on CPU `cpu` since boot.
pub fn irq_count(cpu: usize, vector: u8) -> u64 {
    // SAFETY: tg_percpu is defined in ring0.s with the size of this declaration; the only
    // part Rust reads is the atomic counters, and ring 0 writes nothing else Rust sees.
    let percpu = unsafe { &tg_percpu };
    percpu[cpu].irq_count[usize::from(vector)].load(Ordering::Relaxed)
}

/// Halts this CPU for good, through the DPL-3 park gate (cli; hlt in ring 0).
pub fn park() -> ! {
    // SAFETY: the gate never returns and touches nothing of ring 3.
    unsafe { core::arch::asm!("int {v}", v = const PARK_VECTOR, options(noreturn)) }
}

/// The AP trampoline's machine code, to be copied to [`TRAMPOLINE_ADDR`].
pub fn trampoline() -> &'static [u8] {
    let start = &raw const tg_trampoline_start;
    let end = &raw const tg_trampoline_end;
    // SAFETY: both symbols delimit the trampoline in .rodata (ring0.s), start <= end, and
    // nothing writes .rodata.
    unsafe { core::slice::from_raw_parts(start, end as usize - start as usize) }
}

/// Makes a new round of AP start-up possible: CPU numbering restarts at 1, and the TSS
/// descriptors of the APs are available again (`ltr` marked them busy last time, and
/// `ltr` of a busy TSS faults). Only while no AP runs (they are parked or never started).
pub fn reset_ap_state() {
    NEXT_CPU.store(1, Ordering::SeqCst);
    let gdt = &raw mut tg_gdt;
    for cpu in 1..MAX_CPUS {
        // The low quadword of CPU n's TSS descriptor; bit 41 is the type's busy bit.
        let index = 5 + 2 * cpu;
        // SAFETY: the GDT lives in writable .data mapped to ring 3; index < 5 + 2 * 64;
        // no CPU uses this descriptor (APs are parked or not started, the BSP uses 0).
        unsafe { (*gdt)[index] &= !(1 << 41) };
    }
    // The APs' `ltr` must see these stores: they come after the IPIs that start them.
    fence(Ordering::SeqCst);
}

/// The PML4 every CPU runs on (CR3), for `paging` to extend the identity map.
pub fn pml4_addr() -> u64 {
    &raw const tg_pml4 as u64
}

/// The lowest address of the BSP's user stack.
pub fn bsp_stack_bottom() -> u64 {
    &raw const tg_bsp_stack as u64
}

/// The guest image in memory: `[start, end)`, including .bss and stacks.
pub fn image_range() -> (u64, u64) {
    (
        &raw const __image_start as u64,
        &raw const __image_end as u64,
    )
}
