//! The IOMMU's state: domains, the endpoints attached to them, translation keyed by
//! requester ID with fault records, and notification of every map and unmap, so a VMM can
//! forward them to a device that does its DMA elsewhere (nicd). [`SharedTable`] shares the
//! tables between the engine, which changes them, and the DMA of devices, which
//! translates through them.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::domain::{Domain, MapError, Mapping, Perm};
use crate::notify::{Change, ChangeQueue, ChangeSubscriber, EndpointView};
use crate::rid::RequesterId;
use crate::translate::{Fault, FaultReason, Segment, Translate};

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
    /// Where changes wait for their subscribers.
    changes: Arc<ChangeQueue>,
    /// Bumped whenever a translation may have been withdrawn (unmap, attach, detach,
    /// bypass change): caches of translations compare it and flush. Shared, so that a
    /// [`SharedTable`] reads it without taking the lock.
    generation: Arc<AtomicU64>,
}

impl fmt::Debug for IommuTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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
            changes: Arc::default(),
            generation: Arc::new(AtomicU64::new(0)),
        }
    }

    fn bump(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Adds a subscriber to changes. Changes are queued, not delivered, while the table
    /// changes: see [`IommuTable::changes`].
    pub fn subscribe(&mut self, s: Arc<dyn ChangeSubscriber>) {
        self.changes.subscribe(s);
    }

    /// The queue the table's changes wait in: whoever changes the table delivers them
    /// ([`ChangeQueue::deliver`]) once it no longer holds the table's lock.
    pub fn changes(&self) -> Arc<ChangeQueue> {
        self.changes.clone()
    }

    /// Sets whether detached endpoints bypass.
    pub fn set_bypass(&mut self, bypass: bool) {
        if self.bypass_detached != bypass {
            self.notify(Change::DetachedBypass(bypass));
        }
        self.bypass_detached = bypass;
        self.bump();
    }

    /// Whether endpoints attached nowhere bypass translation.
    pub fn detached_bypass(&self) -> bool {
        self.bypass_detached
    }

    /// What `ep`'s DMA reaches now.
    pub fn view(&self, ep: RequesterId) -> EndpointView {
        match self.endpoint(ep) {
            EndpointState::Bypass => EndpointView::Bypass,
            EndpointState::Detached if self.bypass_detached => EndpointView::Bypass,
            EndpointState::Detached => EndpointView::Blocked,
            EndpointState::Domain(d) => EndpointView::Domain {
                domain: d,
                mappings: self
                    .domains
                    .get(&d)
                    .map(|dom| dom.mappings().copied().collect())
                    .unwrap_or_default(),
            },
        }
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
        if old != new {
            self.notify(Change::Endpoint {
                endpoint: ep,
                view: self.view(ep),
                attached: true,
            });
        }
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
        self.notify(Change::Endpoint {
            endpoint: ep,
            view: self.view(ep),
            attached: false,
        });
        self.reap(domain);
        Ok(())
    }

    /// Destroys `domain` if no endpoint is left in it.
    fn reap(&mut self, domain: DomainId) {
        if self.endpoints_of(domain).is_empty()
            && let Some(mut d) = self.domains.remove(&domain)
        {
            for mapping in d.clear() {
                self.notify(Change::Unmap {
                    domain,
                    mapping,
                    endpoints: Vec::new(),
                });
            }
        }
    }

    fn notify(&self, change: Change) {
        self.changes.push(change);
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
        self.notify(Change::Map {
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
            self.notify(Change::Unmap {
                domain,
                mapping,
                endpoints: endpoints.clone(),
            });
        }
        Ok(())
    }
}

impl Translate for IommuTable {
    fn lookup(&self, ep: RequesterId, iova: u64, access: Perm) -> Result<Option<Mapping>, Fault> {
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
                .ok_or_else(|| fault(FaultReason::Domain))?
                .lookup(iova)
                .filter(|m| m.perm.allows(access))
                .copied()
                .map(Some)
                .ok_or_else(|| fault(FaultReason::Mapping)),
        }
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }
}

/// The tables shared by the engine, which changes them under the write lock, and by the
/// DMA of devices, which translates through them under the read lock. The generation is
/// read without a lock, so an IOTLB checks it on every access for the price of a load.
pub struct SharedTable {
    table: RwLock<IommuTable>,
    generation: Arc<AtomicU64>,
    changes: Arc<ChangeQueue>,
}

impl fmt::Debug for SharedTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedTable")
            .field("generation", &self.generation.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

impl SharedTable {
    /// Shares `table`.
    pub fn new(table: IommuTable) -> Self {
        Self {
            generation: table.generation.clone(),
            changes: table.changes.clone(),
            table: RwLock::new(table),
        }
    }

    /// The tables, for reading.
    pub fn read(&self) -> RwLockReadGuard<'_, IommuTable> {
        self.table.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The tables, for changing. The changes are queued: deliver them
    /// ([`SharedTable::changes`]) after dropping the guard.
    pub fn write(&self) -> RwLockWriteGuard<'_, IommuTable> {
        self.table.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// The queue the table's changes wait in.
    pub fn changes(&self) -> &Arc<ChangeQueue> {
        &self.changes
    }
}

impl Translate for SharedTable {
    fn lookup(&self, ep: RequesterId, iova: u64, access: Perm) -> Result<Option<Mapping>, Fault> {
        self.read().lookup(ep, iova, access)
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Under one read lock, so the segments come from one state of the tables.
    fn translate(
        &self,
        ep: RequesterId,
        iova: u64,
        len: u64,
        access: Perm,
    ) -> Result<Vec<Segment>, Fault> {
        self.read().translate(ep, iova, len, access)
    }
}

#[cfg(test)]
mod tests;
