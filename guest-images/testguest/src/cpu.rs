//! The running CPU, seen from ring 3.

use core::arch::x86_64::{__cpuid_count, CpuidResult};
use core::fmt;

/// CPUID leaf `leaf`, subleaf `sub`.
pub fn cpuid(leaf: u32, sub: u32) -> CpuidResult {
    __cpuid_count(leaf, sub)
}

/// The CS selector: its low two bits are the current privilege level.
pub fn cs() -> u16 {
    let cs: u16;
    // SAFETY: reading a segment register has no side effects.
    unsafe {
        core::arch::asm!("mov {0:x}, cs", out(reg) cs, options(nomem, nostack, preserves_flags))
    };
    cs
}

/// RFLAGS.
pub fn rflags() -> u64 {
    let flags: u64;
    // SAFETY: pushfq/pop only uses the stack below rsp, which is ours.
    unsafe {
        core::arch::asm!("pushfq", "pop {0}", out(reg) flags, options(nomem, preserves_flags))
    };
    flags
}

/// How CPUID counts the vCPUs.
#[derive(Debug, Clone, Copy)]
pub struct CpuCount {
    /// Leaf 0xB subleaf 1, EBX[15:0]: logical processors in the package, when the leaf
    /// exists and reports a non-zero count.
    pub leaf_b: Option<u32>,
    /// Leaf 1, EBX[23:16] when EDX.HTT is set, else 1.
    pub leaf_1: u32,
}

impl CpuCount {
    /// The count to trust: leaf 0xB when present, else leaf 1.
    pub fn best(&self) -> u32 {
        self.leaf_b.unwrap_or(self.leaf_1)
    }
}

impl fmt::Display for CpuCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.leaf_b {
            Some(n) => write!(f, "leaf 0xB {n}, ")?,
            None => write!(f, "leaf 0xB absent, ")?,
        }
        write!(f, "leaf 1 {}", self.leaf_1)
    }
}

/// The vCPU count CPUID reports.
pub fn cpu_count() -> CpuCount {
    let max_leaf = cpuid(0, 0).eax;
    let leaf1 = cpuid(1, 0);
    let htt = leaf1.edx & (1 << 28) != 0;
    let leaf_1 = if htt { (leaf1.ebx >> 16) & 0xff } else { 1 };
    let leaf_b = if max_leaf >= 0xb {
        let sub1 = cpuid(0xb, 1);
        Some(sub1.ebx & 0xffff).filter(|&n| n != 0)
    } else {
        None
    };
    CpuCount { leaf_b, leaf_1 }
}
