//! The virtio-iommu request protocol (virtio 1.2, 5.13): decoding the device-readable part
//! of a request, applying it to an [`IommuTable`], and encoding PROBE properties and fault
//! events. Transport-free: the device model in `devices` moves the bytes.

use std::ops::RangeInclusive;
use std::sync::Arc;

use crate::domain::Perm;
use crate::notify::ChangeQueue;
use crate::rid::RequesterId;
use crate::table::{IommuTable, SharedTable, TableError};
use crate::translate::{Fault, FaultReason};

/// Request types.
pub const T_ATTACH: u8 = 1;
/// DETACH.
pub const T_DETACH: u8 = 2;
/// MAP.
pub const T_MAP: u8 = 3;
/// UNMAP.
pub const T_UNMAP: u8 = 4;
/// PROBE.
pub const T_PROBE: u8 = 5;

/// ATTACH flag: bypass.
pub const ATTACH_F_BYPASS: u32 = 1;
/// MAP flags.
pub const MAP_F_READ: u32 = 1;
/// Write permission.
pub const MAP_F_WRITE: u32 = 2;
/// MMIO mapping (not supported).
pub const MAP_F_MMIO: u32 = 4;

/// Feature bits of the device.
pub mod features {
    /// input_range is valid.
    pub const INPUT_RANGE: u64 = 1 << 0;
    /// domain_range is valid.
    pub const DOMAIN_RANGE: u64 = 1 << 1;
    /// MAP and UNMAP are supported.
    pub const MAP_UNMAP: u64 = 1 << 2;
    /// Detached endpoints bypass unless the bypass config says otherwise.
    pub const BYPASS: u64 = 1 << 3;
    /// PROBE is supported.
    pub const PROBE: u64 = 1 << 4;
    /// The bypass field of config is valid and ATTACH may bypass.
    pub const BYPASS_CONFIG: u64 = 1 << 6;
}

/// The x86 MSI window, reported as a reserved region so the driver leaves it unmapped.
pub const MSI_RANGE: (u64, u64) = (0xfee0_0000, 0xfeef_ffff);
/// Bytes of properties PROBE answers with.
pub const PROBE_SIZE: u32 = 64;

/// Request status codes (the tail).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    /// Success.
    Ok = 0,
    /// I/O error.
    IoErr = 1,
    /// Unsupported request.
    Unsupp = 2,
    /// Device error.
    DevErr = 3,
    /// Invalid parameters.
    Inval = 4,
    /// Out of range.
    Range = 5,
    /// No such endpoint or domain.
    NoEnt = 6,
    /// Bad address.
    Fault = 7,
    /// Out of memory.
    NoMem = 8,
}

/// A decoded request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// ATTACH an endpoint to a domain.
    Attach {
        /// Domain.
        domain: u32,
        /// Endpoint ID (= PCI requester ID).
        endpoint: u32,
        /// Flags.
        flags: u32,
    },
    /// DETACH an endpoint.
    Detach {
        /// Domain.
        domain: u32,
        /// Endpoint.
        endpoint: u32,
    },
    /// MAP a range.
    Map {
        /// Domain.
        domain: u32,
        /// First IOVA.
        virt_start: u64,
        /// Last IOVA (inclusive).
        virt_end: u64,
        /// Guest-physical start.
        phys_start: u64,
        /// Flags.
        flags: u32,
    },
    /// UNMAP a range.
    Unmap {
        /// Domain.
        domain: u32,
        /// First IOVA.
        virt_start: u64,
        /// Last IOVA (inclusive).
        virt_end: u64,
    },
    /// PROBE an endpoint.
    Probe {
        /// Endpoint.
        endpoint: u32,
    },
}

fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}

impl Request {
    /// Bytes the device reads for a request of `kind` (head and body; the writable tail and,
    /// for PROBE, the properties follow).
    pub fn readable_len(kind: u8) -> Option<usize> {
        match kind {
            T_ATTACH | T_DETACH => Some(20),
            T_MAP => Some(36),
            T_UNMAP => Some(28),
            T_PROBE => Some(72),
            _ => None,
        }
    }

    /// Decodes the device-readable part; `Unsupp` for unknown types, `Inval` when short.
    pub fn parse(b: &[u8]) -> Result<Request, Status> {
        let kind = *b.first().ok_or(Status::Inval)?;
        let need = Self::readable_len(kind).ok_or(Status::Unsupp)?;
        if b.len() < need {
            return Err(Status::Inval);
        }
        let r = |o| u32_at(b, o).ok_or(Status::Inval);
        let q = |o| u64_at(b, o).ok_or(Status::Inval);
        Ok(match kind {
            T_ATTACH => Request::Attach {
                domain: r(4)?,
                endpoint: r(8)?,
                flags: r(12)?,
            },
            T_DETACH => Request::Detach {
                domain: r(4)?,
                endpoint: r(8)?,
            },
            T_MAP => Request::Map {
                domain: r(4)?,
                virt_start: q(8)?,
                virt_end: q(16)?,
                phys_start: q(24)?,
                flags: r(32)?,
            },
            T_UNMAP => Request::Unmap {
                domain: r(4)?,
                virt_start: q(8)?,
                virt_end: q(16)?,
            },
            _ => Request::Probe { endpoint: r(4)? },
        })
    }
}

impl From<TableError> for Status {
    fn from(e: TableError) -> Status {
        match e {
            TableError::Map(crate::domain::MapError::Split { .. }) => Status::Range,
            TableError::Map(_) => Status::Inval,
            TableError::NoDomain(_) => Status::NoEnt,
            TableError::NotAttached(..) => Status::Inval,
            TableError::DomainRange(_) => Status::Range,
        }
    }
}

/// The request engine: the tables, the endpoint IDs the IOMMU translates for (the
/// requester-ID ranges the VIOT describes, hotplug slots and VFs included), and the
/// features the driver accepted.
///
/// The tables are shared ([`Engine::table`]) with the DMA of the devices behind the IOMMU,
/// which never needs the engine. Requests queue their changes in [`Engine::changes`]; the
/// caller delivers them once it has released the engine, before it completes the request.
#[derive(Debug)]
pub struct Engine {
    table: Arc<SharedTable>,
    covered: Vec<RangeInclusive<u16>>,
    features: u64,
    input_range: (u64, u64),
}

impl Engine {
    /// An engine over `table` for endpoints in `covered` (routing IDs, segment 0), IOVAs in
    /// `input_range`.
    pub fn new(
        table: IommuTable,
        covered: Vec<RangeInclusive<u16>>,
        input_range: (u64, u64),
    ) -> Self {
        Self {
            table: Arc::new(SharedTable::new(table)),
            covered,
            features: 0,
            input_range,
        }
    }

    /// The tables, shared with whatever translates DMA through them.
    pub fn table(&self) -> &Arc<SharedTable> {
        &self.table
    }

    /// Where the changes requests make wait for delivery.
    pub fn changes(&self) -> Arc<ChangeQueue> {
        self.table.changes().clone()
    }

    /// Records the features the driver accepted.
    pub fn set_features(&mut self, f: u64) {
        self.features = f;
    }

    fn endpoint(&self, id: u32) -> Result<RequesterId, Status> {
        let rid = u16::try_from(id).map_err(|_| Status::NoEnt)?;
        if !self.covered.iter().any(|r| r.contains(&rid)) {
            return Err(Status::NoEnt);
        }
        Ok(RequesterId::from_routing_id(0, rid))
    }

    /// Applies `req`; for PROBE also returns the properties (PROBE_SIZE bytes). The changes
    /// it made wait in [`Engine::changes`].
    pub fn handle(&mut self, req: Request) -> (Status, Vec<u8>) {
        match self.apply(req) {
            Ok(props) => (Status::Ok, props),
            Err(s) => (s, Vec::new()),
        }
    }

    fn apply(&mut self, req: Request) -> Result<Vec<u8>, Status> {
        match req {
            Request::Attach {
                domain,
                endpoint,
                flags,
            } => {
                let ep = self.endpoint(endpoint)?;
                let bypass = flags & ATTACH_F_BYPASS != 0;
                if flags & !ATTACH_F_BYPASS != 0
                    || (bypass && self.features & features::BYPASS_CONFIG == 0)
                {
                    return Err(Status::Inval);
                }
                self.table.write().attach(ep, domain, bypass)?;
            }
            Request::Detach { domain, endpoint } => {
                let ep = self.endpoint(endpoint)?;
                self.table.write().detach(ep, domain)?;
            }
            Request::Map {
                domain,
                virt_start,
                virt_end,
                phys_start,
                flags,
            } => {
                if flags & MAP_F_MMIO != 0 {
                    return Err(Status::Unsupp);
                }
                if flags & !(MAP_F_READ | MAP_F_WRITE) != 0 {
                    return Err(Status::Inval);
                }
                if virt_start < self.input_range.0 || virt_end > self.input_range.1 {
                    return Err(Status::Range);
                }
                let perm = Perm {
                    read: flags & MAP_F_READ != 0,
                    write: flags & MAP_F_WRITE != 0,
                };
                self.table
                    .write()
                    .map(domain, virt_start, virt_end, phys_start, perm)?;
            }
            Request::Unmap {
                domain,
                virt_start,
                virt_end,
            } => self.table.write().unmap(domain, virt_start, virt_end)?,
            Request::Probe { endpoint } => {
                self.endpoint(endpoint)?;
                return Ok(probe_properties());
            }
        }
        Ok(Vec::new())
    }
}

/// PROBE properties: the MSI window as a reserved region, then zeros (the end marker).
pub fn probe_properties() -> Vec<u8> {
    let mut p = vec![0u8; PROBE_SIZE as usize];
    p[0..2].copy_from_slice(&1u16.to_le_bytes()); // RESV_MEM
    p[2..4].copy_from_slice(&20u16.to_le_bytes());
    p[4] = 1; // subtype MSI
    p[8..16].copy_from_slice(&MSI_RANGE.0.to_le_bytes());
    p[16..24].copy_from_slice(&MSI_RANGE.1.to_le_bytes());
    p
}

/// A fault as an event-queue buffer (24 bytes).
pub fn encode_fault(f: &Fault) -> [u8; 24] {
    let mut e = [0u8; 24];
    e[0] = match f.reason {
        FaultReason::Domain => 1,
        FaultReason::Mapping => 2,
    };
    let flags = u32::from(f.access.read) | (u32::from(f.access.write) << 1) | 0x100;
    e[4..8].copy_from_slice(&flags.to_le_bytes());
    e[8..12].copy_from_slice(&u32::from(f.endpoint.routing_id()).to_le_bytes());
    e[16..24].copy_from_slice(&f.address.to_le_bytes());
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::Translate;

    fn ep(dev: u8) -> RequesterId {
        RequesterId::new(0, 1, dev, 0).unwrap()
    }

    fn engine() -> Engine {
        // Bus 1, every function.
        let mut e = Engine::new(IommuTable::default(), vec![0x100..=0x1ff], (0, u64::MAX));
        e.set_features(features::MAP_UNMAP | features::PROBE);
        e
    }

    fn attach(domain: u32, endpoint: u32, flags: u32) -> Vec<u8> {
        let mut b = vec![0u8; 20];
        b[0] = T_ATTACH;
        b[4..8].copy_from_slice(&domain.to_le_bytes());
        b[8..12].copy_from_slice(&endpoint.to_le_bytes());
        b[12..16].copy_from_slice(&flags.to_le_bytes());
        b
    }

    fn map(domain: u32, s: u64, e: u64, p: u64, flags: u32) -> Vec<u8> {
        let mut b = vec![0u8; 36];
        b[0] = T_MAP;
        b[4..8].copy_from_slice(&domain.to_le_bytes());
        b[8..16].copy_from_slice(&s.to_le_bytes());
        b[16..24].copy_from_slice(&e.to_le_bytes());
        b[24..32].copy_from_slice(&p.to_le_bytes());
        b[32..36].copy_from_slice(&flags.to_le_bytes());
        b
    }

    fn run(e: &mut Engine, bytes: &[u8]) -> Status {
        match Request::parse(bytes) {
            Ok(r) => e.handle(r).0,
            Err(s) => s,
        }
    }

    #[test]
    fn requests_end_to_end() {
        let mut e = engine();
        let rid1 = u32::from(ep(1).routing_id());
        assert_eq!(run(&mut e, &attach(5, rid1, 0)), Status::Ok);
        assert_eq!(
            run(&mut e, &map(5, 0x1000, 0x1fff, 0x8000, MAP_F_READ)),
            Status::Ok
        );
        assert_eq!(
            run(&mut e, &map(5, 0x1800, 0x2fff, 0, MAP_F_READ)),
            Status::Inval,
            "overlap"
        );
        assert_eq!(
            run(&mut e, &map(5, 0x4000, 0x4fff, 0, MAP_F_MMIO)),
            Status::Unsupp
        );
        assert_eq!(run(&mut e, &map(5, 0x4000, 0x4fff, 0, 0x80)), Status::Inval);
        assert_eq!(
            run(&mut e, &map(9, 0x4000, 0x4fff, 0, 1)),
            Status::NoEnt,
            "no domain 9"
        );
        let seg = e.table().translate(ep(1), 0x1004, 4, Perm::R).unwrap();
        assert_eq!(seg[0].phys, 0x8004);
        let mut unmap = vec![0u8; 28];
        unmap[0] = T_UNMAP;
        unmap[4..8].copy_from_slice(&5u32.to_le_bytes());
        unmap[8..16].copy_from_slice(&0x1000u64.to_le_bytes());
        unmap[16..24].copy_from_slice(&0x17ffu64.to_le_bytes());
        assert_eq!(run(&mut e, &unmap), Status::Range, "would split");
        unmap[16..24].copy_from_slice(&0x1fffu64.to_le_bytes());
        assert_eq!(run(&mut e, &unmap), Status::Ok);
        // Unknown endpoint, bypass without BYPASS_CONFIG, unknown flags.
        assert_eq!(run(&mut e, &attach(5, 0x7777, 0)), Status::NoEnt);
        assert_eq!(
            run(&mut e, &attach(5, rid1, ATTACH_F_BYPASS)),
            Status::Inval
        );
        assert_eq!(run(&mut e, &attach(5, rid1, 2)), Status::Inval);
        let mut detach = attach(6, rid1, 0);
        detach[0] = T_DETACH;
        assert_eq!(run(&mut e, &detach), Status::Inval, "not in domain 6");
    }

    #[test]
    fn malformed_requests() {
        let mut e = engine();
        assert_eq!(run(&mut e, &[]), Status::Inval);
        assert_eq!(run(&mut e, &[0x42, 0, 0, 0]), Status::Unsupp);
        assert_eq!(run(&mut e, &[T_MAP, 0, 0, 0, 1]), Status::Inval, "short");
        assert_eq!(Request::readable_len(T_PROBE), Some(72));
    }

    #[test]
    fn probe_reports_the_msi_window() {
        let mut e = engine();
        let mut probe = vec![0u8; 72];
        probe[0] = T_PROBE;
        probe[4..8].copy_from_slice(&u32::from(ep(0).routing_id()).to_le_bytes());
        let (s, props) = e.handle(Request::parse(&probe).unwrap());
        assert_eq!(s, Status::Ok);
        assert_eq!(props.len(), PROBE_SIZE as usize);
        assert_eq!(u16::from_le_bytes([props[0], props[1]]), 1);
        assert_eq!(u16::from_le_bytes([props[2], props[3]]), 20);
        assert_eq!(props[4], 1);
        assert_eq!(
            u64::from_le_bytes(props[8..16].try_into().unwrap()),
            0xfee0_0000
        );
        assert_eq!(
            u64::from_le_bytes(props[16..24].try_into().unwrap()),
            0xfeef_ffff
        );
        assert_eq!(&props[24..28], &[0, 0, 0, 0], "end marker");
    }

    #[test]
    fn fault_events() {
        let f = Fault {
            reason: FaultReason::Mapping,
            address: 0xdead_b000,
            access: Perm::W,
            endpoint: ep(1),
        };
        let e = encode_fault(&f);
        assert_eq!(e[0], 2);
        assert_eq!(u32::from_le_bytes(e[4..8].try_into().unwrap()), 0x102);
        assert_eq!(u32::from_le_bytes(e[8..12].try_into().unwrap()), 0x108);
        assert_eq!(
            u64::from_le_bytes(e[16..24].try_into().unwrap()),
            0xdead_b000
        );
    }
}
