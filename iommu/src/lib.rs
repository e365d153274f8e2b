//! Pure IOMMU logic for the VMM: PCI requester IDs (and the SR-IOV routing-ID arithmetic
//! that gives every Virtual Function its own), with domains, mappings and translation to
//! follow. No KVM, no threads: everything here runs in unit tests.

pub mod rid;

pub use rid::{RequesterId, RidError};
