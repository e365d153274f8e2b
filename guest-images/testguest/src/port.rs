//! Port I/O from ring 3, and the VMM's debug-exit port.
//!
//! Ring 3 runs with IOPL 3, which on hardware KVM would let it execute `in` and `out`
//! itself. PVM (the nested KVM of the development machines) runs guest ring 3 as host
//! user code and grants it no IOPL: `out` raises #GP. So every port access goes through
//! a DPL-3 gate whose ring-0 handler is just the `in` or `out` and `iretq`. (PVM does not
//! deliver `int n` from ring 3 either: it raises #UD, and ring 0's #UD handler forwards
//! `int n` of a DPL-3 gate to that gate: 16 emulated instructions per access in all.)

use core::arch::asm;

use crate::ring0::{INB_VECTOR, INL_VECTOR, INW_VECTOR, OUTB_VECTOR, OUTL_VECTOR, OUTW_VECTOR};

/// The debug-exit port: a write ends the VM with the written status.
pub const EXIT_PORT: u16 = 0xf4;
/// Status: every scenario passed.
pub const STATUS_PASS: u32 = 0;
/// Status: at least one scenario failed.
pub const STATUS_FAIL: u32 = 1;
/// Status: a Rust panic in ring 3.
pub const STATUS_PANIC: u32 = 0xfe;
/// Status: a CPU exception (written by ring 0).
pub const STATUS_FAULT: u32 = 0xff;

// SAFETY (for every gate call below): the gate's ring-0 handler executes one `in` or
// `out` with dx and al/ax/eax, changes no other register and no memory Rust knows of, and
// returns with iretq, which restores RFLAGS; it runs on the kernel stack (TSS RSP0), so
// the user stack and its red zone are untouched.

/// Reads a byte from `port`.
pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: see above.
    unsafe {
        asm!("int {v}", v = const INB_VECTOR, in("dx") port, out("al") value, options(nomem, nostack, preserves_flags))
    };
    value
}

/// Reads a word from `port`.
#[allow(dead_code)] // For device drivers to come (e.g. legacy virtio I/O BARs).
pub fn inw(port: u16) -> u16 {
    let value: u16;
    // SAFETY: see above.
    unsafe {
        asm!("int {v}", v = const INW_VECTOR, in("dx") port, out("ax") value, options(nomem, nostack, preserves_flags))
    };
    value
}

/// Reads a doubleword from `port`.
#[allow(dead_code)] // For device drivers to come (e.g. PCI configuration mechanism #1).
pub fn inl(port: u16) -> u32 {
    let value: u32;
    // SAFETY: see above.
    unsafe {
        asm!("int {v}", v = const INL_VECTOR, in("dx") port, out("eax") value, options(nomem, nostack, preserves_flags))
    };
    value
}

/// Writes a byte to `port`.
pub fn outb(port: u16, value: u8) {
    // SAFETY: see above; the devices behind our ports do not write guest memory.
    unsafe {
        asm!("int {v}", v = const OUTB_VECTOR, in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    };
}

/// Writes a word to `port`.
pub fn outw(port: u16, value: u16) {
    // SAFETY: as for outb.
    unsafe {
        asm!("int {v}", v = const OUTW_VECTOR, in("dx") port, in("ax") value, options(nomem, nostack, preserves_flags))
    };
}

/// Writes a doubleword to `port`.
pub fn outl(port: u16, value: u32) {
    // SAFETY: as for outb.
    unsafe {
        asm!("int {v}", v = const OUTL_VECTOR, in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
    };
}

/// Ends the VM with `status` (0: all passed). Should the VMM not stop, the CPU halts.
pub fn exit(status: u32) -> ! {
    outl(EXIT_PORT, status);
    crate::ring0::park()
}
