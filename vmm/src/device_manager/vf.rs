//! Virtual Functions assigned from nicd: the vfio-user card in a root-port slot, and the
//! guest memory its DMA may reach.
//!
//! DMA follows the virtual IOMMU when the VM has one: [`VfDma`] subscribes to the IOMMU's
//! changes and forwards those of the VF's requester ID as DMA_MAP/DMA_UNMAP at the IOVA,
//! in order; a change is acknowledged (and the guest's request completes) only once nicd
//! has answered, so no DMA reaches a page after the guest's UNMAP completed. Without an
//! IOMMU, all of RAM is mapped at its guest-physical address once, at attach.
//!
//! Guest RAM is a memfd; a DMA_MAP hands nicd the memfd with the offset of the range, so
//! nicd maps the same pages. A range of the guest-physical space that is not RAM (the
//! MMIO windows) is never mapped: DMA there faults in nicd.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};

use devices::GuestMemory;
use devices::sync::lock;
use devices::vfio_user::card::{CardError, VfioUserCard};
use devices::vfio_user::{Client, ClientError};
use iommu::{Change, ChangeSubscriber, EndpointView, Mapping, RequesterId};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use devices::virtio::dma::IommuContext;

/// Why a VF cannot be assigned.
#[derive(Debug, thiserror::Error)]
pub enum VfError {
    /// Nothing serves the socket, or it refused us (a VF already in use answers EBUSY).
    #[error("cannot attach the VF at {path}")]
    Connect {
        /// The socket.
        path: String,
        /// Why.
        #[source]
        source: ClientError,
    },
    /// The server is not a usable PCI function.
    #[error("the VF at {path} cannot be set up")]
    Card {
        /// The socket.
        path: String,
        /// Why.
        #[source]
        source: CardError,
    },
    /// Guest memory cannot be shared with the server.
    #[error("cannot map guest memory for the VF's DMA")]
    Dma(#[source] DmaError),
}

/// Why a DMA mapping could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DmaError {
    /// A RAM region is not backed by a file (guest memory must be a memfd).
    #[error("guest RAM at {0:#x} has no file behind it")]
    NotShared(u64),
    /// Duplicating the memfd failed.
    #[error("cannot duplicate the guest memory file")]
    Dup(#[source] std::io::Error),
    /// nicd refused or failed.
    #[error("DMA_MAP of {len:#x} bytes at IOVA {iova:#x}")]
    Map {
        /// IOVA.
        iova: u64,
        /// Length.
        len: u64,
        /// Why.
        #[source]
        source: ClientError,
    },
}

/// A RAM region as DMA sees it: where it is, and which bytes of which file back it.
#[derive(Debug)]
struct RamPiece {
    gpa: u64,
    len: u64,
    file: File,
    offset: u64,
}

#[derive(Debug, Default)]
struct DmaState {
    /// What nicd has mapped for us: IOVA to length.
    mapped: BTreeMap<u64, u64>,
    /// Whether the endpoint is attached (else a change of the IOMMU's bypass mode for
    /// detached endpoints changes what it reaches).
    attached: bool,
}

/// The DMA view of one VF, kept in nicd.
#[derive(Debug)]
pub struct VfDma {
    card: Weak<Mutex<VfioUserCard>>,
    rid: RequesterId,
    ram: Vec<RamPiece>,
    state: Mutex<DmaState>,
}

impl VfDma {
    /// The DMA of `card` (requester ID `rid`) over the RAM of `mem`.
    pub fn new(
        card: Weak<Mutex<VfioUserCard>>,
        rid: RequesterId,
        mem: &GuestMemory,
    ) -> Result<Self, DmaError> {
        let ram = mem
            .iter()
            .map(|r| {
                let gpa = r.start_addr().0;
                let fo = r.file_offset().ok_or(DmaError::NotShared(gpa))?;
                Ok(RamPiece {
                    gpa,
                    len: r.len(),
                    file: fo.file().try_clone().map_err(DmaError::Dup)?,
                    offset: fo.start(),
                })
            })
            .collect::<Result<Vec<_>, DmaError>>()?;
        Ok(Self {
            card,
            rid,
            ram,
            state: Mutex::new(DmaState::default()),
        })
    }

    /// Maps all of RAM at its guest-physical address (no IOMMU).
    pub fn map_identity(&self) -> Result<(), DmaError> {
        let mut st = lock(&self.state);
        self.apply(&mut st, &EndpointView::Bypass)
    }

    /// Follows the IOMMU of `ctx`: its current view of the VF is mapped now, and every
    /// later change is forwarded. Returns the subscription (to end it on removal).
    pub fn follow(
        self: &Arc<Self>,
        ctx: &IommuContext,
    ) -> Result<Arc<dyn ChangeSubscriber>, DmaError> {
        let table = lock(&ctx.engine).table().clone();
        // Held across the snapshot and the first maps: a change delivered meanwhile (on a
        // vCPU thread) waits for them.
        let mut st = lock(&self.state);
        let sub: Arc<dyn ChangeSubscriber> = self.clone();
        let view = {
            // Under the tables' lock, changes cannot be made: the view and the start of
            // the subscription are one cut.
            let t = table.write();
            table.changes().subscribe(sub.clone());
            st.attached = t.endpoint(self.rid) != iommu::EndpointState::Detached;
            t.view(self.rid)
        };
        self.apply(&mut st, &view)?;
        Ok(sub)
    }

    fn card(&self) -> Option<Arc<Mutex<VfioUserCard>>> {
        self.card.upgrade()
    }

    /// Replaces whatever is mapped by `view`.
    fn apply(&self, st: &mut DmaState, view: &EndpointView) -> Result<(), DmaError> {
        self.unmap_all(st);
        match view {
            EndpointView::Blocked => Ok(()),
            EndpointView::Bypass => {
                let ranges: Vec<(u64, u64)> = self.ram.iter().map(|r| (r.gpa, r.len)).collect();
                ranges
                    .into_iter()
                    .try_for_each(|(gpa, len)| self.map(st, gpa, gpa, len))
            }
            EndpointView::Domain { mappings, .. } => {
                mappings.iter().try_for_each(|m| self.map_mapping(st, m))
            }
        }
    }

    fn map_mapping(&self, st: &mut DmaState, m: &Mapping) -> Result<(), DmaError> {
        // `end` is inclusive; a mapping of the whole space has no representable length.
        let len = (m.end - m.start).saturating_add(1);
        self.map(st, m.start, m.phys, len)
    }

    /// Maps `[phys, phys + len)` at `iova`: one DMA_MAP per RAM region it touches; what
    /// is not RAM is skipped.
    fn map(&self, st: &mut DmaState, iova: u64, phys: u64, len: u64) -> Result<(), DmaError> {
        let Some(card) = self.card() else {
            return Ok(());
        };
        let end = phys.saturating_add(len);
        for r in &self.ram {
            let lo = phys.max(r.gpa);
            let hi = end.min(r.gpa + r.len);
            if lo >= hi {
                continue;
            }
            let at = iova + (lo - phys);
            let size = hi - lo;
            lock(&card)
                .dma_map(&r.file, r.offset + (lo - r.gpa), at, size)
                .map_err(|source| DmaError::Map {
                    iova: at,
                    len: size,
                    source,
                })?;
            st.mapped.insert(at, size);
        }
        Ok(())
    }

    /// Unmaps what was mapped inside `[start, end]` (inclusive).
    fn unmap(&self, st: &mut DmaState, start: u64, end: u64) {
        let gone: Vec<(u64, u64)> = st
            .mapped
            .range(start..=end)
            .map(|(a, l)| (*a, *l))
            .collect();
        let card = self.card();
        for (iova, len) in gone {
            st.mapped.remove(&iova);
            if let Some(card) = &card
                && let Err(e) = lock(card).dma_unmap(iova, len)
            {
                devices::warn_ratelimited!(
                    "VF {}: DMA_UNMAP at {iova:#x}: {}",
                    self.rid,
                    crate::error_chain(&e)
                );
            }
        }
    }

    fn unmap_all(&self, st: &mut DmaState) {
        self.unmap(st, 0, u64::MAX);
    }

    fn report(&self, r: Result<(), DmaError>) {
        if let Err(e) = r {
            // The guest's DMA there faults in nicd (counted as drops); the card notices
            // a dead connection itself.
            devices::warn_ratelimited!("VF {}: {}", self.rid, crate::error_chain(&e));
        }
    }
}

impl ChangeSubscriber for VfDma {
    fn changed(&self, change: &Change) {
        let mut st = lock(&self.state);
        match change {
            Change::Map {
                mapping, endpoints, ..
            } if endpoints.contains(&self.rid) => {
                let r = self.map_mapping(&mut st, mapping);
                self.report(r);
            }
            Change::Unmap {
                mapping, endpoints, ..
            } if endpoints.contains(&self.rid) => {
                self.unmap(&mut st, mapping.start, mapping.end);
            }
            Change::Endpoint {
                endpoint,
                view,
                attached,
            } if *endpoint == self.rid => {
                st.attached = *attached;
                let r = self.apply(&mut st, view);
                self.report(r);
            }
            Change::DetachedBypass(bypass) if !st.attached => {
                let view = if *bypass {
                    EndpointView::Bypass
                } else {
                    EndpointView::Blocked
                };
                let r = self.apply(&mut st, &view);
                self.report(r);
            }
            _ => {}
        }
    }
}

/// Connects to the VF served at `path` and sets it up as a card named `id`.
pub fn connect(
    id: &str,
    path: &Path,
    routes: &dyn devices::interrupt::MsiRouteFactory,
) -> Result<VfioUserCard, VfError> {
    let shown = path.display().to_string();
    let client = Client::connect(path).map_err(|source| VfError::Connect {
        path: shown.clone(),
        source,
    })?;
    VfioUserCard::new(id, client, routes).map_err(|source| match source {
        // The first request of a connection to a VF in use is refused (EBUSY).
        CardError::Client(source) => VfError::Connect {
            path: shown,
            source,
        },
        source => VfError::Card {
            path: shown,
            source,
        },
    })
}

#[cfg(test)]
mod tests;
