//! Guest memory: the physical address layout and the memfd-backed RAM behind it.

pub mod layout;
pub mod ram;

pub use ram::{GuestRam, MemoryError};
