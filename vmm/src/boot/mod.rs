//! Booting a guest directly in 64-bit long mode: kernel and initrd loading, the zero page,
//! the boot CPU's registers, and CPUID.

pub mod cpuid;
pub mod loader;
pub mod params;
pub mod regs;

pub use loader::{BootError, LoadedKernel, load_initrd, load_kernel};
