//! Pure IOMMU logic for the VMM: PCI requester IDs (and the SR-IOV routing-ID arithmetic
//! that gives every Virtual Function its own), domains of IOVA mappings, endpoint
//! attachment, translation keyed by requester ID with fault records (behind the
//! [`Translate`] trait devices depend on), and notification of every change, queued and
//! delivered with no lock held. No KVM, no threads: everything here runs in unit tests.

pub mod domain;
pub mod notify;
pub mod rid;
pub mod table;
pub mod translate;
pub mod virtio;

pub use domain::{Domain, MapError, Mapping, Perm};
pub use notify::{Change, ChangeQueue, ChangeSubscriber, EndpointView};
pub use rid::{RequesterId, RidError};
pub use table::{DomainId, EndpointState, IommuTable, SharedTable, TableError};
pub use translate::{Fault, FaultReason, Segment, Translate};
