//! The IOMMU's state: domains, the endpoints attached to them, translation keyed by
//! requester ID with fault records, and notification of every map and unmap, so a VMM can
//! forward them to a device that does its DMA elsewhere (nicd).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::domain::{Domain, MapError, Mapping, Perm};
use crate::rid::RequesterId;

/// A domain's ID, chosen by the driver.
pub type DomainId = u32;

/// What a device's DMA goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointState {
    /// Not attached anywhere: DMA is blocked (or passes when the IOMMU is in bypass mode).
    Detached,
    /// Attached to a domain: DMA is translated.
    Domain(DomainId),
    /// Attached in bypass: DMA addresses are guest-physical.
    Bypass,
}

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

/// A change of a domain, for subscribers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `mapping` was added to `domain`, whose endpoints are listed.
    Map {
        /// Domain.
        domain: DomainId,
        /// The new mapping.
        mapping: Mapping,
        /// Endpoints attached to the domain.
        endpoints: Vec<RequesterId>,
    },
    /// `mapping` was removed.
    Unmap {
        /// Domain.
        domain: DomainId,
        /// The removed mapping.
        mapping: Mapping,
        /// Endpoints attached to the domain.
        endpoints: Vec<RequesterId>,
    },
}

/// Receives every change.
pub trait ChangeSubscriber: Send + Sync {
    /// Called after the change is applied.
    fn changed(&self, change: &Change);
}

/// Why a table operation failed (the virtio-iommu status it becomes in brackets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    /// A map or unmap refused by the domain.
    #[error(transparent)]
    Map(#[from] MapError),
    /// No such domain [NOENT].
    #[error("no domain {0}")]
    NoDomain(DomainId),
    /// The endpoint is not attached to that domain [INVAL].
    #[error("endpoint {0} is not attached to domain {1}")]
    NotAttached(RequesterId, DomainId),
    /// A domain ID outside the advertised range [RANGE].
    #[error("domain {0} is outside the domain range")]
    DomainRange(DomainId),
}

/// The IOMMU's tables.
pub struct IommuTable {
    domains: BTreeMap<DomainId, Domain>,
    endpoints: BTreeMap<RequesterId, EndpointState>,
    /// Whether detached endpoints bypass translation (virtio-iommu `bypass` config).
    bypass_detached: bool,
    domain_range: (DomainId, DomainId),
    subscribers: Vec<Arc<dyn ChangeSubscriber>>,
    /// Bumped whenever a translation may have been withdrawn (unmap, attach, detach,
    /// bypass change): caches of translations compare it and flush.
    generation: Arc<AtomicU64>,
}

impl std::fmt::Debug for IommuTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IommuTable")
            .field("domains", &self.domains.len())
            .field("endpoints", &self.endpoints)
            .field("bypass_detached", &self.bypass_detached)
            .finish_non_exhaustive()
    }
}

impl Default for IommuTable {
    fn default() -> Self {
        Self::new(false, (0, u32::MAX))
    }
}

impl IommuTable {
    /// Tables where detached endpoints bypass or are blocked, domains in `domain_range`.
    pub fn new(bypass_detached: bool, domain_range: (DomainId, DomainId)) -> Self {
        Self {
            domains: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            bypass_detached,
            domain_range,
            subscribers: Vec::new(),
            generation: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The counter caches watch: when it moves, cached translations may be stale.
    pub fn generation(&self) -> Arc<AtomicU64> {
        self.generation.clone()
    }

    fn bump(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// The mapping that translates `iova` for `ep`: `Ok(None)` when `ep` bypasses (identity),
    /// or the fault.
    pub fn lookup(
        &self,
        ep: RequesterId,
        iova: u64,
        access: Perm,
    ) -> Result<Option<Mapping>, Fault> {
        let fault = |reason| Fault {
            reason,
            address: iova,
            access,
            endpoint: ep,
        };
        match self.endpoint(ep) {
            EndpointState::Bypass => Ok(None),
            EndpointState::Detached if self.bypass_detached => Ok(None),
            EndpointState::Detached => Err(fault(FaultReason::Domain)),
            EndpointState::Domain(d) => self
                .domains
                .get(&d)
                .and_then(|d| d.lookup(iova))
                .filter(|m| m.perm.allows(access))
                .copied()
                .map(Some)
                .ok_or_else(|| fault(FaultReason::Mapping)),
        }
    }

    /// Adds a subscriber to changes.
    pub fn subscribe(&mut self, s: Arc<dyn ChangeSubscriber>) {
        self.subscribers.push(s);
    }

    /// Sets whether detached endpoints bypass.
    pub fn set_bypass(&mut self, bypass: bool) {
        self.bypass_detached = bypass;
        self.bump();
    }

    /// The state of `ep`.
    pub fn endpoint(&self, ep: RequesterId) -> EndpointState {
        self.endpoints
            .get(&ep)
            .copied()
            .unwrap_or(EndpointState::Detached)
    }

    /// The endpoints attached to `domain`.
    pub fn endpoints_of(&self, domain: DomainId) -> Vec<RequesterId> {
        self.endpoints
            .iter()
            .filter(|(_, s)| **s == EndpointState::Domain(domain))
            .map(|(ep, _)| *ep)
            .collect()
    }

    /// A domain.
    pub fn domain(&self, id: DomainId) -> Option<&Domain> {
        self.domains.get(&id)
    }

    fn check_range(&self, domain: DomainId) -> Result<(), TableError> {
        if domain < self.domain_range.0 || domain > self.domain_range.1 {
            return Err(TableError::DomainRange(domain));
        }
        Ok(())
    }

    /// ATTACH: moves `ep` into `domain` (created if new) or into bypass. An endpoint is in
    /// at most one domain; a domain left without endpoints is destroyed with its mappings.
    pub fn attach(
        &mut self,
        ep: RequesterId,
        domain: DomainId,
        bypass: bool,
    ) -> Result<(), TableError> {
        self.check_range(domain)?;
        let old = self.endpoint(ep);
        let new = if bypass {
            EndpointState::Bypass
        } else {
            self.domains.entry(domain).or_default();
            EndpointState::Domain(domain)
        };
        self.endpoints.insert(ep, new);
        self.bump();
        if let EndpointState::Domain(d) = old
            && old != new
        {
            self.reap(d);
        }
        Ok(())
    }

    /// DETACH: takes `ep` out of `domain`.
    pub fn detach(&mut self, ep: RequesterId, domain: DomainId) -> Result<(), TableError> {
        if self.endpoint(ep) != EndpointState::Domain(domain) {
            return Err(TableError::NotAttached(ep, domain));
        }
        self.endpoints.remove(&ep);
        self.bump();
        self.reap(domain);
        Ok(())
    }

    /// Destroys `domain` if no endpoint is left in it.
    fn reap(&mut self, domain: DomainId) {
        if self.endpoints_of(domain).is_empty()
            && let Some(mut d) = self.domains.remove(&domain)
        {
            for mapping in d.clear() {
                self.notify(&Change::Unmap {
                    domain,
                    mapping,
                    endpoints: Vec::new(),
                });
            }
        }
    }

    fn notify(&self, change: &Change) {
        for s in &self.subscribers {
            s.changed(change);
        }
    }

    /// MAP in `domain`.
    pub fn map(
        &mut self,
        domain: DomainId,
        start: u64,
        end: u64,
        phys: u64,
        perm: Perm,
    ) -> Result<(), TableError> {
        self.check_range(domain)?;
        let d = self
            .domains
            .get_mut(&domain)
            .ok_or(TableError::NoDomain(domain))?;
        let mapping = d.map(start, end, phys, perm)?;
        let endpoints = self.endpoints_of(domain);
        self.notify(&Change::Map {
            domain,
            mapping,
            endpoints,
        });
        Ok(())
    }

    /// UNMAP in `domain`.
    pub fn unmap(&mut self, domain: DomainId, start: u64, end: u64) -> Result<(), TableError> {
        self.check_range(domain)?;
        let d = self
            .domains
            .get_mut(&domain)
            .ok_or(TableError::NoDomain(domain))?;
        let removed = d.unmap(start, end)?;
        self.bump();
        let endpoints = self.endpoints_of(domain);
        for mapping in removed {
            self.notify(&Change::Unmap {
                domain,
                mapping,
                endpoints: endpoints.clone(),
            });
        }
        Ok(())
    }

    /// Translates an access of `len` bytes at `iova` by `ep` into guest-physical segments
    /// (one per mapping it crosses), or the fault at the first byte that cannot go.
    pub fn translate(
        &self,
        ep: RequesterId,
        iova: u64,
        len: u64,
        access: Perm,
    ) -> Result<Vec<Segment>, Fault> {
        let fault = |reason, address| Fault {
            reason,
            address,
            access,
            endpoint: ep,
        };
        if len == 0 {
            return Ok(Vec::new());
        }
        let last = iova
            .checked_add(len - 1)
            .ok_or_else(|| fault(FaultReason::Mapping, iova))?;
        let domain = match self.endpoint(ep) {
            EndpointState::Bypass => return Ok(vec![Segment { phys: iova, len }]),
            EndpointState::Detached if self.bypass_detached => {
                return Ok(vec![Segment { phys: iova, len }]);
            }
            EndpointState::Detached => return Err(fault(FaultReason::Domain, iova)),
            EndpointState::Domain(d) => self
                .domains
                .get(&d)
                .ok_or_else(|| fault(FaultReason::Domain, iova))?,
        };
        let mut segs: Vec<Segment> = Vec::new();
        let mut at = iova;
        loop {
            let m = domain
                .lookup(at)
                .filter(|m| m.perm.allows(access))
                .ok_or_else(|| fault(FaultReason::Mapping, at))?;
            let seg_last = m.end.min(last);
            let phys = m.translate(at);
            let seg_len = seg_last - at + 1;
            // Merge with the previous piece when physically contiguous.
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

#[cfg(test)]
mod tests;
