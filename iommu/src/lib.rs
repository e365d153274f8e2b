//! Pure IOMMU logic for the VMM: PCI requester IDs (and the SR-IOV routing-ID arithmetic
//! that gives every Virtual Function its own), domains of IOVA mappings, endpoint
//! attachment, translation keyed by requester ID with fault records, and notification of
//! every change. No KVM, no threads: everything here runs in unit tests.

pub mod domain;
pub mod rid;
pub mod table;
pub mod virtio;

pub use domain::{Domain, MapError, Mapping, Perm};
pub use rid::{RequesterId, RidError};
pub use table::{
    Change, ChangeSubscriber, DomainId, EndpointState, Fault, FaultReason, IommuTable, Segment,
    TableError,
};
