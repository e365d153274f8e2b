//! DMA for virtio devices: guest memory as the device sees it. Without an IOMMU (or when
//! the driver did not accept VIRTIO_F_ACCESS_PLATFORM) addresses are guest-physical; behind
//! the virtio-iommu they are IOVAs, translated by vm-memory's `IommuMemory` through an IOTLB
//! filled from the IOMMU tables for the device's requester ID. A failed translation fails
//! that access (the device drops the request) and is reported as a fault event.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

use iommu::table::Fault;
use iommu::virtio::Engine;
use iommu::{Perm, RequesterId};
use vm_memory::iommu::{Error as IommuError, Iommu, IotlbIterator};
use vm_memory::{GuestAddress, GuestMemoryMmap, IommuMemory, Iotlb, Permissions};

/// Guest memory as a device's DMA sees it.
pub type DmaMemory = IommuMemory<GuestMemoryMmap, EndpointIommu>;

/// Receives DMA faults (the virtio-iommu's event queue).
pub trait FaultSink: Send + Sync {
    /// A device access that could not be translated.
    fn fault(&self, fault: Fault);
}

/// The IOMMU a device sits behind: the tables, their change counter, and where faults go.
#[derive(Clone)]
pub struct IommuContext {
    /// The tables.
    pub engine: Arc<Mutex<Engine>>,
    /// Where faults go.
    pub faults: Arc<dyn FaultSink>,
}

impl fmt::Debug for IommuContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IommuContext")
    }
}

/// One endpoint's view of the IOMMU, with its IOTLB.
pub struct EndpointIommu {
    ctx: Option<IommuContext>,
    rid: RequesterId,
    iotlb: RwLock<Iotlb>,
    generation: Option<Arc<AtomicU64>>,
    seen: AtomicU64,
}

impl fmt::Debug for EndpointIommu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointIommu")
            .field("rid", &self.rid)
            .field("translating", &self.ctx.is_some())
            .finish_non_exhaustive()
    }
}

fn perm_of(p: Permissions) -> Perm {
    Perm {
        read: matches!(p, Permissions::Read | Permissions::ReadWrite),
        write: matches!(p, Permissions::Write | Permissions::ReadWrite),
    }
}

fn permissions(p: Perm) -> Permissions {
    match (p.read, p.write) {
        (true, true) => Permissions::ReadWrite,
        (true, false) => Permissions::Read,
        (false, true) => Permissions::Write,
        (false, false) => Permissions::No,
    }
}

impl EndpointIommu {
    /// No IOMMU: never used for translation (the memory is in pass-through).
    pub fn none() -> Self {
        Self {
            ctx: None,
            rid: RequesterId::from_routing_id(0, 0),
            iotlb: RwLock::new(Iotlb::new()),
            generation: None,
            seen: AtomicU64::new(0),
        }
    }

    /// Endpoint `rid` behind the IOMMU of `ctx`.
    pub fn new(ctx: IommuContext, rid: RequesterId) -> Self {
        let generation = ctx
            .engine
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .table
            .generation();
        Self {
            ctx: Some(ctx),
            rid,
            iotlb: RwLock::new(Iotlb::new()),
            seen: AtomicU64::new(generation.load(Ordering::SeqCst)),
            generation: Some(generation),
        }
    }

    /// Fills the IOTLB for `[iova, iova + len)` from the tables; the fault if it cannot.
    fn fill(
        &self,
        ctx: &IommuContext,
        iova: u64,
        len: usize,
        access: Permissions,
    ) -> Result<(), Fault> {
        let engine = ctx.engine.lock().unwrap_or_else(|e| e.into_inner());
        let want = perm_of(access);
        let last = iova.saturating_add(len as u64 - 1);
        let mut at = iova;
        let mut tlb = self.iotlb.write().unwrap_or_else(|e| e.into_inner());
        loop {
            let (start, end, phys, perm) = match engine.table.lookup(self.rid, at, want)? {
                Some(m) => (m.start, m.end, m.phys, m.perm),
                // Bypass: identity for the rest of the access.
                None => (at, last, at, Perm::RW),
            };
            let length = usize::try_from(end - start).unwrap_or(usize::MAX - 1) + 1;
            let _ = tlb.set_mapping(
                GuestAddress(start),
                GuestAddress(phys),
                length,
                permissions(perm),
            );
            if end >= last {
                return Ok(());
            }
            at = end + 1;
        }
    }
}

impl Iommu for EndpointIommu {
    type IotlbGuard<'a> = RwLockReadGuard<'a, Iotlb>;

    fn translate(
        &self,
        iova: GuestAddress,
        length: usize,
        access: Permissions,
    ) -> Result<IotlbIterator<Self::IotlbGuard<'_>>, IommuError> {
        let Some(ctx) = &self.ctx else {
            return Err(IommuError::IommuMisconfigured {
                reason: "no IOMMU behind this device".into(),
            });
        };
        // Something was unmapped or moved since the IOTLB was filled: start afresh.
        if let Some(g) = &self.generation {
            let now = g.load(Ordering::SeqCst);
            if self.seen.swap(now, Ordering::SeqCst) != now {
                self.iotlb
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .invalidate_all();
            }
        }
        for _ in 0..2 {
            let guard = self.iotlb.read().unwrap_or_else(|e| e.into_inner());
            match Iotlb::lookup(guard, iova, length, access) {
                Ok(it) => return Ok(it),
                Err(_) if length > 0 => {
                    if let Err(fault) = self.fill(ctx, iova.0, length, access) {
                        ctx.faults.fault(fault);
                        return Err(IommuError::CannotResolve {
                            iova_range: vm_memory::iommu::IovaRange { base: iova, length },
                            reason: format!("{:?} fault at {:#x}", fault.reason, fault.address),
                        });
                    }
                }
                Err(_) => break,
            }
        }
        Err(IommuError::CannotResolve {
            iova_range: vm_memory::iommu::IovaRange { base: iova, length },
            reason: "translation did not settle".into(),
        })
    }
}

/// Memory without an IOMMU in the way.
pub fn plain(mem: GuestMemoryMmap) -> DmaMemory {
    IommuMemory::new(mem, EndpointIommu::none(), false, ())
}

/// Memory behind the IOMMU of `ctx` for endpoint `rid`, translating when `enabled`.
pub fn behind(
    mem: GuestMemoryMmap,
    ctx: IommuContext,
    rid: RequesterId,
    enabled: bool,
) -> DmaMemory {
    IommuMemory::new(mem, EndpointIommu::new(ctx, rid), enabled, ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use iommu::IommuTable;
    use vm_memory::Bytes;

    #[derive(Default)]
    struct Faults(Mutex<Vec<Fault>>);
    impl FaultSink for Faults {
        fn fault(&self, f: Fault) {
            self.0.lock().unwrap().push(f);
        }
    }

    #[test]
    fn translates_and_faults() {
        let mmap = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let engine = Arc::new(Mutex::new(Engine::new(
            IommuTable::default(),
            vec![0x100..=0x1ff],
            (0, u64::MAX),
        )));
        let faults = Arc::new(Faults::default());
        let ctx = IommuContext {
            engine: engine.clone(),
            faults: faults.clone(),
        };
        let rid = RequesterId::from_routing_id(0, 0x100);
        let dma = behind(mmap.clone(), ctx, rid, true);
        // Blocked before any attach.
        assert!(dma.write_obj(1u32, GuestAddress(0x10_0000_0000)).is_err());
        assert_eq!(faults.0.lock().unwrap().len(), 1);
        {
            let mut e = engine.lock().unwrap();
            e.table.attach(rid, 1, false).unwrap();
            e.table
                .map(1, 0x10_0000_0000, 0x10_0000_1fff, 0x4000, Perm::RW)
                .unwrap();
        }
        dma.write_obj(0xabcdu32, GuestAddress(0x10_0000_1ffc))
            .unwrap();
        assert_eq!(mmap.read_obj::<u32>(GuestAddress(0x5ffc)).unwrap(), 0xabcd);
        // Unmapped: the IOTLB is flushed and the access faults; memory is untouched.
        engine.lock().unwrap().table.unmap(1, 0, u64::MAX).unwrap();
        assert!(
            dma.write_obj(0x1111u32, GuestAddress(0x10_0000_1ffc))
                .is_err()
        );
        assert_eq!(mmap.read_obj::<u32>(GuestAddress(0x5ffc)).unwrap(), 0xabcd);
        assert_eq!(faults.0.lock().unwrap().len(), 2);
        // Pass-through memory ignores the IOMMU.
        let p = plain(mmap.clone());
        p.write_obj(7u8, GuestAddress(0x10)).unwrap();
        assert_eq!(mmap.read_obj::<u8>(GuestAddress(0x10)).unwrap(), 7);
    }
}
