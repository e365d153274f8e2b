//! DMA for virtio devices: guest memory as the device sees it. Without an IOMMU (or when
//! the driver did not accept VIRTIO_F_ACCESS_PLATFORM) addresses are guest-physical; behind
//! an IOMMU they are IOVAs, translated by vm-memory's `IommuMemory` through an IOTLB filled
//! from a [`Translate`] for the device's requester ID and flushed when its generation
//! moves. A failed translation fails that access (the device drops the request) and is
//! reported as a fault event. [`EndpointIommu`] knows the IOMMU only as a [`Translate`]
//! (the VMM's is the virtio-iommu engine's tables; nicd's will be its table of vfio-user
//! DMA mappings) and a [`FaultSink`].

use crate::GuestMemory;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use iommu::virtio::Engine;
use iommu::{Fault, FaultReason, Perm, RequesterId, Translate};
use vm_memory::iommu::{Error as IommuError, Iommu, IotlbIterator, IovaRange};
use vm_memory::{GuestAddress, IommuMemory, Iotlb, Permissions};

/// Guest memory as a device's DMA sees it.
pub type DmaMemory = IommuMemory<GuestMemory, EndpointIommu>;

/// How often a translation is tried while the tables keep changing under it.
const ATTEMPTS: usize = 4;

/// Receives DMA faults (the virtio-iommu's event queue).
pub trait FaultSink: Send + Sync {
    /// A device access that could not be translated.
    fn fault(&self, fault: Fault);
}

/// The virtio-iommu a VMM puts devices behind: its engine, and where faults go. Devices
/// use only the engine's tables, through [`IommuContext::translation`].
#[derive(Clone)]
pub struct IommuContext {
    /// The engine.
    pub engine: Arc<Mutex<Engine>>,
    /// Where faults go.
    pub faults: Arc<dyn FaultSink>,
}

impl fmt::Debug for IommuContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IommuContext")
    }
}

impl IommuContext {
    /// The tables devices translate through (shared with the engine, not locking it).
    pub fn translation(&self) -> Arc<dyn Translate> {
        self.engine
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .table()
            .clone()
    }
}

/// What translates an endpoint's DMA, and where its faults go.
struct Translator {
    tables: Arc<dyn Translate>,
    faults: Arc<dyn FaultSink>,
}

/// One endpoint's view of an IOMMU, with its IOTLB.
pub struct EndpointIommu {
    translator: Option<Translator>,
    rid: RequesterId,
    iotlb: RwLock<Iotlb>,
    /// The tables' generation the IOTLB's entries were looked up at (or after); written
    /// only under the IOTLB's write lock. Entries are stale once the tables' generation
    /// is not this.
    filled_at: AtomicU64,
}

impl fmt::Debug for EndpointIommu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointIommu")
            .field("rid", &self.rid)
            .field("translating", &self.translator.is_some())
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

fn cannot_resolve(iova: GuestAddress, length: usize, reason: String) -> IommuError {
    IommuError::CannotResolve {
        iova_range: IovaRange { base: iova, length },
        reason,
    }
}

impl EndpointIommu {
    /// No IOMMU: never used for translation (the memory is in pass-through).
    pub fn none() -> Self {
        Self {
            translator: None,
            rid: RequesterId::from_routing_id(0, 0),
            iotlb: RwLock::new(Iotlb::new()),
            filled_at: AtomicU64::new(0),
        }
    }

    /// Endpoint `rid`, its DMA translated by `tables`, its faults reported to `faults`.
    pub fn new(tables: Arc<dyn Translate>, faults: Arc<dyn FaultSink>, rid: RequesterId) -> Self {
        Self {
            filled_at: AtomicU64::new(tables.generation()),
            translator: Some(Translator { tables, faults }),
            rid,
            iotlb: RwLock::new(Iotlb::new()),
        }
    }

    fn iotlb_mut(&self) -> RwLockWriteGuard<'_, Iotlb> {
        self.iotlb.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Empties the IOTLB if the tables moved on since it was filled.
    fn flush_if_stale(&self, tables: &dyn Translate) {
        let now = tables.generation();
        if self.filled_at.load(Ordering::SeqCst) != now {
            let mut tlb = self.iotlb_mut();
            tlb.invalidate_all();
            self.filled_at.store(now, Ordering::SeqCst);
        }
    }

    /// Fills the IOTLB for `[iova, last]` from the tables (whole mappings, so later
    /// accesses hit); the fault if it cannot. `last` is below u64::MAX, as is every
    /// entry's end, so no IOTLB range overflows.
    fn fill(
        &self,
        tables: &dyn Translate,
        iova: u64,
        last: u64,
        access: Perm,
    ) -> Result<(), Fault> {
        let mut tlb = self.iotlb_mut();
        // Read before looking up: a change that lands during the walk leaves the
        // entries tagged with a generation that is already past, so they are flushed.
        let generation = tables.generation();
        if self.filled_at.load(Ordering::SeqCst) != generation {
            tlb.invalidate_all();
            self.filled_at.store(generation, Ordering::SeqCst);
        }
        let mut at = iova;
        loop {
            let (start, end, phys, perm) = match tables.lookup(self.rid, at, access)? {
                Some(m) => (m.start, m.end.min(u64::MAX - 1), m.phys, m.perm),
                // Bypass: identity for the rest of the access.
                None => (at, last, at, Perm::RW),
            };
            // end < u64::MAX and start <= at <= end: the length fits and start + length
            // does not wrap.
            let length = usize::try_from(end - start + 1).unwrap_or(usize::MAX);
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
        let Some(Translator { tables, faults }) = &self.translator else {
            return Err(IommuError::IommuMisconfigured {
                reason: "no IOMMU behind this device".into(),
            });
        };
        let tables = tables.as_ref();
        let want = perm_of(access);
        // The IOTLB holds ranges up to u64::MAX exclusive: an access that reaches the
        // last byte of the IOVA space (or wraps) cannot be translated.
        let last = match (length as u64).checked_sub(1) {
            None => iova.0,
            Some(n) => match iova.0.checked_add(n).filter(|l| *l < u64::MAX) {
                Some(l) => l,
                None => {
                    let fault = Fault {
                        reason: FaultReason::Mapping,
                        address: iova.0,
                        access: want,
                        endpoint: self.rid,
                    };
                    faults.fault(fault);
                    return Err(cannot_resolve(iova, length, "beyond the IOVA space".into()));
                }
            },
        };
        for _ in 0..ATTEMPTS {
            self.flush_if_stale(tables);
            let guard = self.iotlb.read().unwrap_or_else(PoisonError::into_inner);
            if let Ok(it) = Iotlb::lookup(guard, iova, length, access) {
                return Ok(it);
            }
            if let Err(fault) = self.fill(tables, iova.0, last, want) {
                faults.fault(fault);
                return Err(cannot_resolve(
                    iova,
                    length,
                    format!("{:?} fault at {:#x}", fault.reason, fault.address),
                ));
            }
            // Filled: the lookup hits unless the tables moved on meanwhile.
        }
        Err(cannot_resolve(
            iova,
            length,
            "the tables kept changing".into(),
        ))
    }
}

/// The IOVA-space dirty log vm-memory keeps for writes made with translation on: never
/// started, so it ignores every write. Guest-physical dirty tracking is what migration
/// needs; with translation on, vm-memory does not mark the backend's log, so migration
/// marks the guest-physical pages devices write behind the IOMMU itself.
fn iova_bitmap() -> crate::dirty_log::DirtyLog {
    crate::dirty_log::DirtyLog::default()
}

/// Memory without an IOMMU in the way.
pub fn plain(mem: GuestMemory) -> DmaMemory {
    IommuMemory::new(mem, EndpointIommu::none(), false, iova_bitmap())
}

/// Memory for endpoint `rid`, translated by `tables` when `enabled`, faults reported to
/// `faults`.
pub fn behind(
    mem: GuestMemory,
    tables: Arc<dyn Translate>,
    faults: Arc<dyn FaultSink>,
    rid: RequesterId,
    enabled: bool,
) -> DmaMemory {
    IommuMemory::new(
        mem,
        EndpointIommu::new(tables, faults, rid),
        enabled,
        iova_bitmap(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use iommu::{IommuTable, Mapping, SharedTable};
    use std::sync::Mutex;
    use vm_memory::Bytes;

    #[derive(Default)]
    struct Faults(Mutex<Vec<Fault>>);
    impl FaultSink for Faults {
        fn fault(&self, f: Fault) {
            self.0.lock().unwrap().push(f);
        }
    }

    fn memory() -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    #[test]
    fn translates_and_faults() {
        let mmap = memory();
        let tables = Arc::new(SharedTable::new(IommuTable::default()));
        let faults = Arc::new(Faults::default());
        let rid = RequesterId::from_routing_id(0, 0x100);
        let dma = behind(mmap.clone(), tables.clone(), faults.clone(), rid, true);
        // Blocked before any attach.
        assert!(dma.write_obj(1u32, GuestAddress(0x10_0000_0000)).is_err());
        assert_eq!(faults.0.lock().unwrap().len(), 1);
        {
            let mut t = tables.write();
            t.attach(rid, 1, false).unwrap();
            t.map(1, 0x10_0000_0000, 0x10_0000_1fff, 0x4000, Perm::RW)
                .unwrap();
        }
        dma.write_obj(0xabcdu32, GuestAddress(0x10_0000_1ffc))
            .unwrap();
        assert_eq!(mmap.read_obj::<u32>(GuestAddress(0x5ffc)).unwrap(), 0xabcd);
        // Unmapped: the IOTLB is flushed and the access faults; memory is untouched.
        tables.write().unmap(1, 0, u64::MAX).unwrap();
        assert!(
            dma.write_obj(0x1111u32, GuestAddress(0x10_0000_1ffc))
                .is_err()
        );
        assert_eq!(mmap.read_obj::<u32>(GuestAddress(0x5ffc)).unwrap(), 0xabcd);
        assert_eq!(faults.0.lock().unwrap().len(), 2);
        // Mapped again, then detached: the generation moves, the IOTLB is flushed.
        tables
            .write()
            .map(1, 0x10_0000_0000, 0x10_0000_0fff, 0x4000, Perm::RW)
            .unwrap();
        dma.write_obj(2u8, GuestAddress(0x10_0000_0000)).unwrap();
        tables.write().detach(rid, 1).unwrap();
        assert!(dma.write_obj(3u8, GuestAddress(0x10_0000_0000)).is_err());
        assert_eq!(mmap.read_obj::<u8>(GuestAddress(0x4000)).unwrap(), 2);
        assert_eq!(
            faults.0.lock().unwrap().last().map(|f| f.reason),
            Some(FaultReason::Domain)
        );
        // Pass-through memory ignores the IOMMU.
        let p = plain(mmap.clone());
        p.write_obj(7u8, GuestAddress(0x10)).unwrap();
        assert_eq!(mmap.read_obj::<u8>(GuestAddress(0x10)).unwrap(), 7);
    }

    /// A table the test sets by hand, as nicd's vfio-user DMA map table will be: it
    /// counts lookups and moves its generation when told to, or, churning, at every
    /// lookup (a guest that unmaps without pause).
    #[derive(Default)]
    struct FakeTable {
        maps: Mutex<Vec<Mapping>>,
        bypass: Mutex<bool>,
        churn: bool,
        generation: AtomicU64,
        lookups: AtomicU64,
    }

    impl FakeTable {
        fn set(&self, maps: &[Mapping]) {
            *self.maps.lock().unwrap() = maps.to_vec();
            self.generation.fetch_add(1, Ordering::SeqCst);
        }
        fn lookups(&self) -> u64 {
            self.lookups.load(Ordering::SeqCst)
        }
    }

    impl Translate for FakeTable {
        fn lookup(
            &self,
            rid: RequesterId,
            iova: u64,
            access: Perm,
        ) -> Result<Option<Mapping>, Fault> {
            self.lookups.fetch_add(1, Ordering::SeqCst);
            if self.churn {
                self.generation.fetch_add(1, Ordering::SeqCst);
            }
            if *self.bypass.lock().unwrap() {
                return Ok(None);
            }
            self.maps
                .lock()
                .unwrap()
                .iter()
                .find(|m| m.start <= iova && iova <= m.end && m.perm.allows(access))
                .copied()
                .map(Some)
                .ok_or(Fault {
                    reason: FaultReason::Mapping,
                    address: iova,
                    access,
                    endpoint: rid,
                })
        }
        fn generation(&self) -> u64 {
            self.generation.load(Ordering::SeqCst)
        }
    }

    const RID: RequesterId = RequesterId::from_routing_id(0, 0x208);

    /// Memory whose DMA, as endpoint [`RID`], goes through `tables`.
    fn behind_table(tables: Arc<dyn Translate>) -> (GuestMemory, Arc<Faults>, DmaMemory) {
        let mmap = memory();
        let faults = Arc::new(Faults::default());
        let dma = behind(mmap.clone(), tables, faults.clone(), RID, true);
        (mmap, faults, dma)
    }

    fn mapping(start: u64, end: u64, phys: u64, perm: Perm) -> Mapping {
        Mapping {
            start,
            end,
            phys,
            perm,
        }
    }

    #[test]
    fn any_translate_drives_the_dma_path() {
        let fake = Arc::new(FakeTable::default());
        let (mmap, faults, dma) = behind_table(fake.clone());
        fake.set(&[
            mapping(0x1_0000, 0x1_0fff, 0x8000, Perm::RW),
            mapping(0x1_1000, 0x1_1fff, 0x2000, Perm::R),
        ]);
        // An access across both mappings lands in two places.
        dma.write_slice(&[1, 2, 3, 4], GuestAddress(0x1_0ffe))
            .map(|_| ())
            .unwrap_err();
        assert_eq!(faults.0.lock().unwrap()[0].address, 0x1_1000, "read-only");
        let mut buf = [0u8; 4];
        mmap.write_slice(&[9, 9], GuestAddress(0x2000)).unwrap();
        mmap.write_slice(&[7, 7], GuestAddress(0x8ffe)).unwrap();
        dma.read_slice(&mut buf, GuestAddress(0x1_0ffe)).unwrap();
        assert_eq!(buf, [7, 7, 9, 9]);
        // Whole mappings are cached: more accesses inside them cost no lookup.
        let after_fill = fake.lookups();
        dma.write_obj(0x55u8, GuestAddress(0x1_0010)).unwrap();
        dma.read_obj::<u32>(GuestAddress(0x1_1800)).unwrap();
        assert_eq!(fake.lookups(), after_fill, "IOTLB hits");
        assert_eq!(mmap.read_obj::<u8>(GuestAddress(0x8010)).unwrap(), 0x55);
        // The table changes and its generation moves: the IOTLB is flushed and the new
        // mapping is used.
        fake.set(&[mapping(0x1_0000, 0x1_0fff, 0x4000, Perm::W)]);
        dma.write_obj(0x66u8, GuestAddress(0x1_0010)).unwrap();
        assert_eq!(mmap.read_obj::<u8>(GuestAddress(0x4010)).unwrap(), 0x66);
        assert_eq!(mmap.read_obj::<u8>(GuestAddress(0x8010)).unwrap(), 0x55);
        assert!(
            dma.read_obj::<u8>(GuestAddress(0x1_0010)).is_err(),
            "write-only"
        );
        assert!(dma.read_obj::<u8>(GuestAddress(0x1_1800)).is_err(), "gone");
        assert_eq!(faults.0.lock().unwrap().len(), 3);
        assert!(faults.0.lock().unwrap().iter().all(|f| f.endpoint == RID));
        // Bypass: identity.
        *fake.bypass.lock().unwrap() = true;
        fake.set(&[]);
        dma.write_obj(0x77u8, GuestAddress(0x3000)).unwrap();
        assert_eq!(mmap.read_obj::<u8>(GuestAddress(0x3000)).unwrap(), 0x77);
    }

    #[test]
    fn the_top_of_the_iova_space_faults_without_panicking() {
        let fake = Arc::new(FakeTable::default());
        let (mmap, faults, dma) = behind_table(fake.clone());
        // The guest may map the last page of the 64-bit IOVA space.
        fake.set(&[mapping(u64::MAX - 0xfff, u64::MAX, 0x6000, Perm::RW)]);
        dma.write_obj(0x12u8, GuestAddress(u64::MAX - 1)).unwrap();
        assert_eq!(mmap.read_obj::<u8>(GuestAddress(0x6ffe)).unwrap(), 0x12);
        assert!(dma.write_obj(0x34u8, GuestAddress(u64::MAX)).is_err());
        assert!(dma.write_obj(0u32, GuestAddress(u64::MAX - 1)).is_err());
        assert_eq!(faults.0.lock().unwrap().len(), 2);
        *fake.bypass.lock().unwrap() = true;
        fake.set(&[]);
        assert!(dma.write_obj(0u16, GuestAddress(u64::MAX - 1)).is_err());
    }

    /// Translation gives up after a few attempts instead of spinning.
    #[test]
    fn a_table_that_never_settles_fails_the_access() {
        let fake = Arc::new(FakeTable {
            churn: true,
            ..FakeTable::default()
        });
        fake.set(&[mapping(0, 0xfff, 0x1000, Perm::RW)]);
        let (_, faults, dma) = behind_table(fake.clone());
        assert!(dma.write_obj(1u8, GuestAddress(0x10)).is_err());
        assert!(faults.0.lock().unwrap().is_empty(), "not a fault");
        assert_eq!(fake.lookups(), ATTEMPTS as u64);
    }
}
