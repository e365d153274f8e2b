//! A ring-3 virtio-iommu driver on the transport in `virtio.rs`: negotiates the features,
//! sets up the request queue and the event queue (with buffers for fault reports), sends
//! requests one at a time and waits for their status, and reads fault reports. The
//! request builders ([`attach`], [`map`], ...) give the bytes a request puts on the queue,
//! so callers can also send malformed or refused ones.

use core::fmt;

use crate::bootparams::BootParams;
use crate::pcie::{Ecam, Topology};
use crate::phys;
use crate::time;
use crate::virtio::{self, NO_VECTOR, Scratch, VirtioError, VirtioPci, Vq, flags};

/// PCI device ID of a (modern) virtio-iommu function.
pub const DEVICE_ID: u16 = 0x1057;
/// Feature bit: the device reports the IOVA range it translates.
pub const F_INPUT_RANGE: u64 = 1 << 0;
/// Feature bit: the device reports the domain IDs it takes.
pub const F_DOMAIN_RANGE: u64 = 1 << 1;
/// Feature bit: MAP and UNMAP requests.
pub const F_MAP_UNMAP: u64 = 1 << 2;
/// Feature bit: PROBE requests.
pub const F_PROBE: u64 = 1 << 4;
/// Request types.
const T_ATTACH: u8 = 1;
const T_DETACH: u8 = 2;
const T_MAP: u8 = 3;
const T_UNMAP: u8 = 4;
const T_PROBE: u8 = 5;
/// MAP flags: the device may read and write.
const MAP_F_READ_WRITE: u32 = 3;
/// Bytes of properties a PROBE asks for (the device's probe_size).
pub const PROBE_SIZE: usize = 64;
/// Request status: done.
pub const S_OK: u8 = 0;
/// Request status: invalid (overlapping map, detach of what is not attached, ...).
pub const S_INVAL: u8 = 4;
/// Request status: out of range (an unmap that would split a mapping).
pub const S_RANGE: u8 = 5;
/// Request status: no such endpoint or domain.
pub const S_NOENT: u8 = 6;
/// Fault reason: the address is not mapped.
pub const FAULT_R_MAPPING: u8 = 2;
/// Fault flags: the access was a write.
pub const FAULT_F_WRITE: u32 = 1 << 1;
/// Fault flags: the address field is valid.
pub const FAULT_F_ADDRESS: u32 = 1 << 8;
/// Event buffers posted; each holds one 24-byte fault report, 32 bytes apart.
const EVENT_BUFS: u16 = 8;
const EVENT_LEN: u32 = 24;
const EVENT_STRIDE: u64 = 32;
/// Longest request body, and longest reply.
const REQ_MAX: usize = 80;
const REPLY_MAX: usize = 96;
/// Entries of each queue.
const QUEUE_SIZE: u16 = 16;

/// Why a request failed (its status is the caller's business).
#[derive(Debug, Clone, Copy)]
pub enum IommuError {
    /// The transport failed.
    Virtio(VirtioError),
    /// A request of this type was not completed in time.
    NoReply(u8),
}

impl From<VirtioError> for IommuError {
    fn from(e: VirtioError) -> Self {
        Self::Virtio(e)
    }
}

impl fmt::Display for IommuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Virtio(e) => write!(f, "{e}"),
            Self::NoReply(t) => write!(f, "request type {t} never completed"),
        }
    }
}

/// A fault report from the event queue.
#[derive(Debug, Clone, Copy)]
pub struct Fault {
    /// Why (e.g. [`FAULT_R_MAPPING`]).
    pub reason: u8,
    /// `FAULT_F_*` bits.
    pub flags: u32,
    /// The endpoint (requester ID) that faulted.
    pub endpoint: u32,
    /// The IOVA, when [`FAULT_F_ADDRESS`] is set.
    pub address: u64,
}

/// A running virtio-iommu.
#[derive(Debug)]
pub struct VirtioIommu {
    /// The transport.
    pub dev: VirtioPci,
    /// The features the device offered.
    pub offered: u64,
    requests: Vq,
    events: Vq,
    event_bufs: u64,
    req: u64,
    reply: u64,
}

impl VirtioIommu {
    /// Opens the first virtio-iommu in the topology, its queues in the RAM at `scratch`
    /// (base, length; 1 MiB is plenty), with fault-report buffers posted.
    pub fn open(
        ecam: &Ecam,
        topo: &Topology,
        boot: &BootParams,
        scratch: (u64, u64),
    ) -> Result<Self, VirtioError> {
        let dev = VirtioPci::open(ecam, virtio::find(topo, DEVICE_ID, 0)?)?;
        let offered = dev.init(F_INPUT_RANGE | F_DOMAIN_RANGE | F_MAP_UNMAP | F_PROBE)?;
        let mut scratch = Scratch::new(boot, scratch.0, scratch.1)?;
        let requests = dev.setup_queue(&mut scratch, 0, QUEUE_SIZE, NO_VECTOR)?;
        let mut events = dev.setup_queue(&mut scratch, 1, QUEUE_SIZE, NO_VECTOR)?;
        dev.driver_ok()?;
        let event_bufs = scratch.alloc(u64::from(EVENT_BUFS) * EVENT_STRIDE, 64)?;
        for i in 0..EVENT_BUFS {
            let buf = event_bufs + EVENT_STRIDE * u64::from(i);
            events.set_desc(i, buf, EVENT_LEN, flags::WRITE, 0);
            events.push(i);
        }
        events.notify();
        Ok(Self {
            dev,
            offered,
            requests,
            events,
            event_bufs,
            req: scratch.alloc(128, 64)?,
            reply: scratch.alloc(128, 64)?,
        })
    }

    /// The page sizes the device maps (bit n: 2^n bytes).
    pub fn page_size_mask(&self) -> u64 {
        self.dev.config64(0)
    }

    /// Sends request `body` (at most 80 bytes) with room for `reply_len` bytes of reply
    /// (at most 96), and returns the reply: the status is the first byte of its last four.
    pub fn send(&mut self, body: &[u8], reply_len: usize) -> Result<[u8; REPLY_MAX], IommuError> {
        let mut padded = [0u8; REQ_MAX];
        padded[..body.len()].copy_from_slice(body);
        phys::write_bytes(self.req, &padded);
        phys::write_bytes(self.reply, &[0xff; REPLY_MAX]);
        let q = &mut self.requests;
        q.set_desc(0, self.req, body.len() as u32, flags::NEXT, 1);
        q.set_desc(1, self.reply, reply_len as u32, flags::WRITE, 0);
        q.push(0);
        q.notify();
        let (done, _) = time::wait_until(|| q.pop_used().is_some());
        if !done {
            return Err(IommuError::NoReply(body[0]));
        }
        let mut out = [0u8; REPLY_MAX];
        phys::read_bytes(self.reply, &mut out);
        Ok(out)
    }

    /// Sends a request whose reply is just the status, and returns the status.
    pub fn status(&mut self, body: &[u8]) -> Result<u8, IommuError> {
        Ok(self.send(body, 4)?[0])
    }

    /// Sends a PROBE for `endpoint`; the reply holds [`PROBE_SIZE`] bytes of properties,
    /// then the status.
    pub fn probe(&mut self, endpoint: u32) -> Result<[u8; REPLY_MAX], IommuError> {
        let mut body = [0u8; 8 + PROBE_SIZE];
        body[0] = T_PROBE;
        body[4..8].copy_from_slice(&endpoint.to_le_bytes());
        self.send(&body, PROBE_SIZE + 4)
    }

    /// The next fault report, waiting for one up to `time::BUDGET`.
    pub fn wait_fault(&mut self) -> Option<Fault> {
        let mut fault = None;
        time::wait_until(|| {
            fault = self.next_fault();
            fault.is_some()
        });
        fault
    }

    /// The next fault report, if one came; its buffer is offered again.
    pub fn next_fault(&mut self) -> Option<Fault> {
        let (id, _) = self.events.pop_used()?;
        let mut ev = [0u8; EVENT_LEN as usize];
        phys::read_bytes(self.event_bufs + EVENT_STRIDE * u64::from(id), &mut ev);
        self.events.push(id as u16);
        self.events.notify();
        Some(Fault {
            reason: ev[0],
            flags: phys::le_u32(&ev, 4),
            endpoint: phys::le_u32(&ev, 8),
            address: phys::le_u64(&ev, 16),
        })
    }
}

/// An ATTACH request: `endpoint` (a requester ID) into `domain`.
pub fn attach(domain: u32, endpoint: u32) -> [u8; 20] {
    endpoint_request(T_ATTACH, domain, endpoint)
}

/// A DETACH request: `endpoint` out of `domain`.
pub fn detach(domain: u32, endpoint: u32) -> [u8; 20] {
    endpoint_request(T_DETACH, domain, endpoint)
}

fn endpoint_request(kind: u8, domain: u32, endpoint: u32) -> [u8; 20] {
    let mut b = [0u8; 20];
    b[0] = kind;
    b[4..8].copy_from_slice(&domain.to_le_bytes());
    b[8..12].copy_from_slice(&endpoint.to_le_bytes());
    b
}

/// A MAP request: IOVAs `start..=end` of `domain` to `phys`, read and write.
pub fn map(domain: u32, start: u64, end: u64, phys: u64) -> [u8; 36] {
    let mut b = [0u8; 36];
    b[..24].copy_from_slice(&unmap(domain, start, end)[..24]);
    b[0] = T_MAP;
    b[24..32].copy_from_slice(&phys.to_le_bytes());
    b[32..36].copy_from_slice(&MAP_F_READ_WRITE.to_le_bytes());
    b
}

/// An UNMAP request: IOVAs `start..=end` of `domain`.
pub fn unmap(domain: u32, start: u64, end: u64) -> [u8; 28] {
    let mut b = [0u8; 28];
    b[0] = T_UNMAP;
    b[4..8].copy_from_slice(&domain.to_le_bytes());
    b[8..16].copy_from_slice(&start.to_le_bytes());
    b[16..24].copy_from_slice(&end.to_le_bytes());
    b
}
