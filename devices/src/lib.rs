//! Device models for the VMM. Nothing here touches KVM: interrupts, doorbells and VM-level
//! events go through small traits the VMM implements, so every model runs in unit tests.

pub mod interrupt;
pub mod legacy;
pub mod pci;
pub mod power;
pub mod ratelimit;
pub mod virtio;
