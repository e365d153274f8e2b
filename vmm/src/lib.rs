//! A KVM microVM monitor for x86_64 Linux hosts: direct 64-bit boot of ELF vmlinux or
//! bzImage kernels, KVM's split irqchip with an emulated IOAPIC, legacy console and power
//! devices, ACPI tables, a PCIe root complex with hotplug root ports, MSI-X, virtio-net and
//! a virtio-iommu; the VM as a [`machine::Vmm`] with a lifecycle, and a JSON API.
//! docs/architecture.md draws the modules and the data paths.
//!
//! Only this crate talks to KVM. Device models live in `devices`, IOMMU logic in `iommu`.

pub mod acpi;
pub mod api;
pub mod boot;
pub mod config;
pub mod console;
pub mod device_manager;
pub mod kvm;
pub mod logger;
pub mod machine;
pub mod memory;
pub mod nicd;
pub mod pci_resources;
pub mod stats;

pub use devices::error_chain;
