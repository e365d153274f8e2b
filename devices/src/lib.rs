//! Device models for the VMM. Nothing here touches KVM: interrupts, doorbells and VM-level
//! events go through small traits the VMM implements, so every model runs in unit tests.

pub mod bits;
pub mod dirty_log;
pub mod interrupt;
pub mod legacy;
pub mod nic_switch;
pub mod pci;
pub mod power;
pub mod ratelimit;
pub mod seqpacket;
pub mod sriov;
pub mod sync;
pub mod vfio_user;
pub mod virtio;

/// Guest memory as the VMM and every device model see it: vm-memory's mmap backend with a
/// dirty log per region, so that once a migration starts logging, writes made through it
/// (device DMA, the VMM's own writes) are tracked alongside KVM's dirty log.
pub type GuestMemory = vm_memory::GuestMemoryMmap<dirty_log::DirtyLog>;

/// An error and its causes on one line, `: `-separated (how errors reach users).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}
