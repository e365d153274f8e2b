//! Translation of a device's DMA, as the device side sees it: the narrow trait device
//! models and their IOTLBs depend on. The IOMMU's tables implement it ([`IommuTable`],
//! [`SharedTable`]); a process that serves a device elsewhere (nicd, over the table of
//! DMA mappings its vfio-user client sent) implements it too.
//!
//! [`IommuTable`]: crate::IommuTable
//! [`SharedTable`]: crate::SharedTable

use crate::domain::{Mapping, Perm};
use crate::rid::RequesterId;

/// Why a DMA access failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultReason {
    /// The endpoint is in no domain and the IOMMU does not bypass.
    Domain,
    /// No mapping covers the address, or its rights do not allow the access.
    Mapping,
}

/// A failed DMA access, as the virtio-iommu event queue reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// Why.
    pub reason: FaultReason,
    /// The first address that could not be translated.
    pub address: u64,
    /// The access.
    pub access: Perm,
    /// The device.
    pub endpoint: RequesterId,
}

/// A guest-physical piece of a translated access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Guest-physical address.
    pub phys: u64,
    /// Length in bytes.
    pub len: u64,
}

/// Looks up the translations of devices' DMA, by requester ID and IOVA.
///
/// Callers may cache what [`Translate::lookup`] returns (an IOTLB) for as long as
/// [`Translate::generation`] stays where it was when they looked up.
pub trait Translate: Send + Sync {
    /// The mapping through which `rid` reaches `iova` with `access`: `Ok(None)` when `rid`
    /// bypasses translation (the IOVA is the guest-physical address), or the fault.
    fn lookup(&self, rid: RequesterId, iova: u64, access: Perm) -> Result<Option<Mapping>, Fault>;

    /// A counter that moves whenever a translation may have been withdrawn or changed
    /// (unmap, detach, attach elsewhere, bypass change); new mappings need not move it.
    /// Read before looking up: a cache filled at generation `g` is stale once it is not
    /// `g`.
    fn generation(&self) -> u64;

    /// Translates an access of `len` bytes at `iova` by `rid` into guest-physical
    /// segments (one per mapping it crosses, merged when contiguous), or the fault at the
    /// first byte that cannot go.
    fn translate(
        &self,
        rid: RequesterId,
        iova: u64,
        len: u64,
        access: Perm,
    ) -> Result<Vec<Segment>, Fault> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let last = iova.checked_add(len - 1).ok_or(Fault {
            reason: FaultReason::Mapping,
            address: iova,
            access,
            endpoint: rid,
        })?;
        let mut segs: Vec<Segment> = Vec::new();
        let mut at = iova;
        loop {
            let (seg_last, phys) = match self.lookup(rid, at, access)? {
                Some(m) => (m.end.min(last), m.translate(at)),
                // Bypass: the rest of the access is identity-mapped.
                None => (last, at),
            };
            let seg_len = seg_last - at + 1;
            match segs.last_mut() {
                Some(prev) if prev.phys.wrapping_add(prev.len) == phys => prev.len += seg_len,
                _ => segs.push(Segment { phys, len: seg_len }),
            }
            if seg_last == last {
                return Ok(segs);
            }
            at = seg_last + 1;
        }
    }
}
