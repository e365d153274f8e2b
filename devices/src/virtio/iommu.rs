//! virtio-iommu (device type 23): the request queue applies ATTACH, DETACH, MAP, UNMAP and
//! PROBE to the shared [`Engine`]; the event queue carries fault reports. Requests are
//! control traffic, processed on the notifying vCPU: each request's changes are delivered
//! to the tables' subscribers after the engine is released and before the request
//! completes.

use crate::sync::lock;
use std::sync::{Arc, Mutex, MutexGuard};

use iommu::virtio::{Engine, PROBE_SIZE, Request, Status, encode_fault, features};
use iommu::{ChangeQueue, Fault};
use virtio_queue::{Queue, QueueT};
use vm_memory::Bytes;

use super::dma::{DmaMemory, FaultSink};
use super::{
    ActivateContext, ActivateError, VirtioDevice, VirtioInterrupt, desc_take, read_config_bytes,
};
use crate::{debug_ratelimited, warn_ratelimited};

/// virtio device type of IOMMUs.
pub const VIRTIO_ID_IOMMU: u16 = 23;
const REQUEST_QUEUE: u16 = 0;
const EVENT_QUEUE: u16 = 1;
const QUEUE_SIZE: u16 = 64;
/// Longest device-readable part of a request.
const MAX_REQUEST: usize = 72;
/// Fault events kept while the driver has posted no event buffers.
const MAX_PENDING_FAULTS: usize = 64;
/// Bytes of a fault event (what [`encode_fault`] returns).
const FAULT_EVENT_LEN: u32 = 24;

/// The engine shared with whatever translates DMA.
pub type SharedEngine = Arc<Mutex<Engine>>;

/// A running queue of the device.
struct Running {
    mem: DmaMemory,
    queue: Queue,
    interrupt: Arc<dyn VirtioInterrupt>,
}

/// The event queue and the faults waiting for its buffers, shared with the [`FaultSink`]
/// that devices' DMA reports to (from their worker threads). Requests are not behind this
/// lock: a request whose changes take long to deliver does not hold up a fault report.
#[derive(Default)]
struct Events {
    running: Option<Running>,
    pending_faults: Vec<Fault>,
}

/// The virtio-iommu device.
pub struct VirtioIommu {
    engine: SharedEngine,
    /// Where the engine's changes wait for delivery.
    changes: Arc<ChangeQueue>,
    input_range: (u64, u64),
    domain_range: (u32, u32),
    requests: Option<Running>,
    events: Arc<Mutex<Events>>,
}

/// Reports DMA faults to a virtio-iommu's event queue.
#[derive(Clone)]
pub struct IommuFaults(Arc<Mutex<Events>>);

impl std::fmt::Debug for IommuFaults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IommuFaults")
    }
}

impl FaultSink for IommuFaults {
    fn fault(&self, fault: Fault) {
        let mut q = lock(&self.0);
        q.report_fault(fault);
    }
}

impl std::fmt::Debug for VirtioIommu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioIommu").finish_non_exhaustive()
    }
}

impl VirtioIommu {
    /// A device over `engine` with these ranges (they are advertised in config).
    pub fn new(engine: SharedEngine, input_range: (u64, u64), domain_range: (u32, u32)) -> Self {
        let changes = lock(&engine).changes();
        Self {
            engine,
            changes,
            input_range,
            domain_range,
            requests: None,
            events: Arc::new(Mutex::new(Events::default())),
        }
    }

    /// Where devices behind this IOMMU report DMA faults.
    pub fn fault_sink(&self) -> IommuFaults {
        IommuFaults(self.events.clone())
    }

    fn events(&self) -> MutexGuard<'_, Events> {
        lock(&self.events)
    }

    fn config_bytes(&self) -> [u8; 0x28] {
        let mut c = [0u8; 0x28];
        // Every page size from 4 KiB up.
        c[0..8].copy_from_slice(&(!0xfffu64).to_le_bytes());
        c[8..16].copy_from_slice(&self.input_range.0.to_le_bytes());
        c[16..24].copy_from_slice(&self.input_range.1.to_le_bytes());
        c[24..28].copy_from_slice(&self.domain_range.0.to_le_bytes());
        c[28..32].copy_from_slice(&self.domain_range.1.to_le_bytes());
        c[32..36].copy_from_slice(&PROBE_SIZE.to_le_bytes());
        c
    }

    /// Reports a DMA fault on the event queue.
    pub fn report_fault(&mut self, fault: Fault) {
        self.events().report_fault(fault);
    }
}

impl Events {
    /// Queues a fault (kept, up to a bound, until the driver posts event buffers).
    fn report_fault(&mut self, fault: Fault) {
        if self.pending_faults.len() < MAX_PENDING_FAULTS {
            self.pending_faults.push(fault);
        } else {
            warn_ratelimited!("virtio-iommu: fault event dropped, the event queue is full");
        }
        self.deliver_faults();
    }

    fn deliver_faults(&mut self) {
        let Some(r) = &mut self.running else { return };
        let mut delivered = false;
        while let Some(fault) = self.pending_faults.first().copied() {
            let Some(chain) = r.queue.pop_descriptor_chain(&r.mem) else {
                break;
            };
            let head = chain.head_index();
            let ev: [u8; FAULT_EVENT_LEN as usize] = encode_fault(&fault);
            let written = chain
                .filter(|d| d.is_write_only() && d.len() >= FAULT_EVENT_LEN)
                .take(1)
                .find_map(|d| {
                    r.mem
                        .write_slice(&ev, d.addr())
                        .ok()
                        .map(|()| FAULT_EVENT_LEN)
                })
                .unwrap_or(0);
            if r.queue.add_used(&r.mem, head, written).is_err() {
                warn_ratelimited!("virtio-iommu: cannot return event buffer {head}");
            }
            self.pending_faults.remove(0);
            delivered = true;
        }
        if delivered {
            r.interrupt.signal_queue(EVENT_QUEUE);
        }
    }
}

impl Running {
    /// Applies the queued requests. Each request's changes reach the subscribers after the
    /// engine is released and before the request is returned to the driver, so an UNMAP
    /// completes only once whatever the mapping was forwarded to has acknowledged it.
    fn process_requests(&mut self, engine: &SharedEngine, changes: &ChangeQueue) {
        let mut used = false;
        while let Some(chain) = self.queue.pop_descriptor_chain(&self.mem) {
            let head = chain.head_index();
            // Gather the device-readable part, then the writable buffers.
            let mut readable = Vec::with_capacity(MAX_REQUEST);
            let mut writable = Vec::new();
            let mut broken = false;
            for d in chain {
                if d.is_write_only() {
                    writable.push(d);
                } else if !writable.is_empty() {
                    broken = true;
                } else if readable.len() < MAX_REQUEST {
                    let take = (d.len() as usize).min(MAX_REQUEST - readable.len());
                    let start = readable.len();
                    readable.resize(start + take, 0);
                    if self
                        .mem
                        .read_slice(&mut readable[start..], d.addr())
                        .is_err()
                    {
                        broken = true;
                    }
                }
            }
            let (status, props) = if broken {
                (Status::DevErr, Vec::new())
            } else {
                match Request::parse(&readable) {
                    // The engine is locked for this statement only.
                    Ok(req) => lock(engine).handle(req),
                    Err(s) => (s, Vec::new()),
                }
            };
            changes.deliver();
            // The reply: PROBE properties (zero-filled on failure), then the 4-byte tail.
            let mut reply = Vec::new();
            if readable.first() == Some(&iommu::virtio::T_PROBE) {
                let mut p = props;
                p.resize(PROBE_SIZE as usize, 0);
                reply.extend_from_slice(&p);
            }
            reply.extend_from_slice(&[status as u8, 0, 0, 0]);
            // Bytes of the reply written, as the used ring counts them.
            let mut written = 0u32;
            for d in writable {
                let done = written as usize;
                if done == reply.len() {
                    break;
                }
                let take = desc_take(d.len(), reply.len() - done);
                if self
                    .mem
                    .write_slice(&reply[done..done + take as usize], d.addr())
                    .is_err()
                {
                    break;
                }
                written += take;
            }
            if (written as usize) < reply.len() {
                debug_ratelimited!("virtio-iommu: request {head} has no room for its reply");
            }
            if self.queue.add_used(&self.mem, head, written).is_err() {
                warn_ratelimited!("virtio-iommu: cannot return request {head}");
            }
            used = true;
        }
        if used {
            self.interrupt.signal_queue(REQUEST_QUEUE);
        }
    }
}

impl VirtioDevice for VirtioIommu {
    fn device_type(&self) -> u16 {
        VIRTIO_ID_IOMMU
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        features::INPUT_RANGE | features::DOMAIN_RANGE | features::MAP_UNMAP | features::PROBE
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_bytes(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        debug_ratelimited!(
            "virtio-iommu: ignored config write at {offset:#x}/{}",
            data.len()
        );
    }

    fn activate(&mut self, mut ctx: ActivateContext) -> Result<(), ActivateError> {
        for q in [REQUEST_QUEUE, EVENT_QUEUE] {
            if !ctx.queues.get(usize::from(q)).is_some_and(|q| q.ready()) {
                return Err(ActivateError::Queue(q));
            }
        }
        lock(&self.engine).set_features(ctx.features);
        let events = ctx.queues.remove(usize::from(EVENT_QUEUE));
        let requests = ctx.queues.remove(usize::from(REQUEST_QUEUE));
        self.requests = Some(Running {
            mem: ctx.mem.clone(),
            queue: requests,
            interrupt: ctx.interrupt.clone(),
        });
        self.events().running = Some(Running {
            mem: ctx.mem,
            queue: events,
            interrupt: ctx.interrupt,
        });
        Ok(())
    }

    fn queue_notify(&mut self, queue: u16) {
        match queue {
            REQUEST_QUEUE => {
                if let Some(r) = &mut self.requests {
                    r.process_requests(&self.engine, &self.changes);
                }
            }
            EVENT_QUEUE => self.events().deliver_faults(),
            _ => {}
        }
    }

    fn reset(&mut self) {
        self.requests = None;
        let mut e = self.events();
        e.running = None;
        e.pending_faults.clear();
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // test data
mod tests {
    use super::*;
    use crate::GuestMemory;
    use crate::virtio::test_utils::TestRing;
    use iommu::virtio::{T_ATTACH, T_DETACH, T_MAP, T_PROBE, T_UNMAP};
    use iommu::{IommuTable, Translate};
    use vm_memory::GuestAddress;

    #[derive(Debug, Default)]
    struct Irqs(Mutex<Vec<u16>>);
    impl VirtioInterrupt for Irqs {
        fn signal_queue(&self, q: u16) {
            self.0.lock().unwrap().push(q);
        }
        fn signal_config(&self) {}
    }

    fn setup() -> (VirtioIommu, GuestMemory, TestRing, TestRing, SharedEngine) {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let engine = Arc::new(Mutex::new(Engine::new(
            IommuTable::default(),
            vec![0x100..=0x1ff],
            (0, u64::MAX),
        )));
        let mut dev = VirtioIommu::new(engine.clone(), (0, u64::MAX), (0, u32::MAX));
        let req = TestRing::new(&mem, 0x1000, 16);
        let ev = TestRing::new(&mem, 0x2000, 16);
        dev.activate(ActivateContext {
            mem: crate::virtio::dma::plain(mem.clone()),
            queues: vec![req.queue(), ev.queue()],
            interrupt: Arc::new(Irqs::default()),
            features: features::MAP_UNMAP | features::PROBE,
        })
        .unwrap();
        (dev, mem, req, ev, engine)
    }

    fn request(
        dev: &mut VirtioIommu,
        mem: &GuestMemory,
        ring: &mut TestRing,
        body: &[u8],
        reply_len: u32,
    ) -> Vec<u8> {
        mem.write_slice(body, GuestAddress(0x8000)).unwrap();
        ring.add_chain(&[
            (0x8000, body.len() as u32, false),
            (0x9000, reply_len, true),
        ]);
        dev.queue_notify(REQUEST_QUEUE);
        let mut reply = vec![0u8; reply_len as usize];
        mem.read_slice(&mut reply, GuestAddress(0x9000)).unwrap();
        reply
    }

    #[test]
    fn attach_map_probe() {
        let (mut dev, mem, mut req, _ev, engine) = setup();
        let mut attach = vec![0u8; 20];
        attach[0] = T_ATTACH;
        attach[4..8].copy_from_slice(&3u32.to_le_bytes());
        attach[8..12].copy_from_slice(&0x100u32.to_le_bytes());
        assert_eq!(
            request(&mut dev, &mem, &mut req, &attach, 4)[0],
            Status::Ok as u8
        );
        let mut map = vec![0u8; 36];
        map[0] = T_MAP;
        map[4..8].copy_from_slice(&3u32.to_le_bytes());
        map[16..24].copy_from_slice(&0xfffu64.to_le_bytes());
        map[24..32].copy_from_slice(&0x4000u64.to_le_bytes());
        map[32..36].copy_from_slice(&3u32.to_le_bytes());
        assert_eq!(
            request(&mut dev, &mem, &mut req, &map, 4)[0],
            Status::Ok as u8
        );
        assert_eq!(
            request(&mut dev, &mem, &mut req, &map, 4)[0],
            Status::Inval as u8
        );
        let rid = iommu::RequesterId::from_routing_id(0, 0x100);
        let segs = lock(&engine)
            .table()
            .translate(rid, 0x10, 4, iommu::Perm::W)
            .unwrap();
        assert_eq!(segs[0].phys, 0x4010);
        let mut probe = vec![0u8; 72];
        probe[0] = T_PROBE;
        probe[4..8].copy_from_slice(&0x100u32.to_le_bytes());
        let reply = request(&mut dev, &mem, &mut req, &probe, PROBE_SIZE + 4);
        assert_eq!(reply[0..2], [1, 0], "RESV_MEM property");
        assert_eq!(reply[PROBE_SIZE as usize], Status::Ok as u8);
        assert_eq!(req.used_idx(), 4);
    }

    #[test]
    fn malformed_requests_get_a_status() {
        let (mut dev, mem, mut req, _ev, _) = setup();
        assert_eq!(
            request(&mut dev, &mem, &mut req, &[0x99, 0, 0, 0], 4)[0],
            Status::Unsupp as u8
        );
        assert_eq!(
            request(&mut dev, &mem, &mut req, &[T_MAP, 0, 0, 0], 4)[0],
            Status::Inval as u8
        );
        // No room for the tail: the request is still returned, nothing panics.
        request(&mut dev, &mem, &mut req, &[T_ATTACH; 20], 0);
        // A readable buffer after a writable one.
        req.add_chain(&[(0x9000, 4, true), (0x8000, 20, false)]);
        dev.queue_notify(REQUEST_QUEUE);
        assert_eq!(req.used_idx(), 4);
    }

    #[test]
    fn faults_wait_for_event_buffers() {
        let (mut dev, mem, _req, mut ev, _) = setup();
        let fault = Fault {
            reason: iommu::FaultReason::Mapping,
            address: 0xabc000,
            access: iommu::Perm::W,
            endpoint: iommu::RequesterId::from_routing_id(0, 0x100),
        };
        dev.report_fault(fault);
        assert_eq!(ev.used_idx(), 0);
        ev.add_chain(&[(0xa000, 24, true)]);
        dev.queue_notify(EVENT_QUEUE);
        assert_eq!(ev.used_idx(), 1);
        let mut e = [0u8; 24];
        mem.read_slice(&mut e, GuestAddress(0xa000)).unwrap();
        assert_eq!(e[0], 2);
        assert_eq!(u64::from_le_bytes(e[16..24].try_into().unwrap()), 0xabc000);
    }

    /// A request of `kind`, `len` bytes, with little-endian 32- and 64-bit fields at their
    /// offsets.
    fn req(kind: u8, len: usize, u32s: &[(usize, u32)], u64s: &[(usize, u64)]) -> Vec<u8> {
        let mut b = vec![0u8; len];
        b[0] = kind;
        for &(at, v) in u32s {
            b[at..at + 4].copy_from_slice(&v.to_le_bytes());
        }
        for &(at, v) in u64s {
            b[at..at + 8].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    /// What a subscriber saw of one change, and of the device around it.
    #[derive(Debug, PartialEq)]
    struct Seen {
        unmap: bool,
        start: u64,
        /// Requests completed when the change arrived.
        completed: u16,
        /// Whether the changed IOVA translated, through the tables, while it arrived.
        translates: bool,
    }

    /// Forwards changes the way a VMM forwards them to a vfio-user device, and checks
    /// what it may do meanwhile: lock the engine, translate, report a fault.
    struct Forwarder {
        engine: SharedEngine,
        faults: IommuFaults,
        mem: GuestMemory,
        used: u64,
        seen: Mutex<Vec<Seen>>,
    }

    impl iommu::ChangeSubscriber for Forwarder {
        fn changed(&self, change: &iommu::Change) {
            let (unmap, mapping) = match change {
                iommu::Change::Map { mapping, .. } => (false, mapping),
                iommu::Change::Unmap { mapping, .. } => (true, mapping),
                _ => return,
            };
            let engine = self
                .engine
                .try_lock()
                .expect("changes are delivered with the engine locked");
            let rid = iommu::RequesterId::from_routing_id(0, 0x100);
            let translates = engine
                .table()
                .translate(rid, mapping.start, 1, iommu::Perm::R)
                .is_ok();
            drop(engine);
            // A device's DMA faulting meanwhile reports without waiting for this.
            let (done, reported) = std::sync::mpsc::channel();
            let faults = self.faults.clone();
            std::thread::spawn(move || {
                faults.fault(Fault {
                    reason: iommu::FaultReason::Mapping,
                    address: 0,
                    access: iommu::Perm::R,
                    endpoint: rid,
                });
                done.send(()).unwrap();
            });
            reported
                .recv_timeout(std::time::Duration::from_secs(5))
                .expect("a fault report waited for change delivery");
            let completed = self.mem.read_obj(GuestAddress(self.used + 2)).unwrap();
            self.seen.lock().unwrap().push(Seen {
                unmap,
                start: mapping.start,
                completed,
                translates,
            });
        }
    }

    #[test]
    fn changes_arrive_in_order_unlocked_before_their_request_completes() {
        let (mut dev, mem, mut ring, _ev, engine) = setup();
        let forwarder = Arc::new(Forwarder {
            engine: engine.clone(),
            faults: dev.fault_sink(),
            mem: mem.clone(),
            used: ring.used,
            seen: Mutex::new(Vec::new()),
        });
        lock(&engine).changes().subscribe(forwarder.clone());
        let map = |start: u64, phys: u64| {
            let range = [(8, start), (16, start + 0xfff), (24, phys)];
            req(T_MAP, 36, &[(4, 3), (32, 3)], &range)
        };
        let requests = [
            req(T_ATTACH, 20, &[(4, 3), (8, 0x100)], &[]),
            map(0, 0x4000),
            map(0x1000, 0x5000),
            req(T_UNMAP, 28, &[(4, 3)], &[(8, 0), (16, 0x1fff)]),
            map(0x2000, 0x6000),
            // The last endpoint leaves: the domain goes, its mapping reported unmapped.
            req(T_DETACH, 20, &[(4, 3), (8, 0x100)], &[]),
        ];
        for r in &requests {
            assert_eq!(
                request(&mut dev, &mem, &mut ring, r, 4)[0],
                Status::Ok as u8
            );
        }
        let seen = |unmap, start, completed, translates| Seen {
            unmap,
            start,
            completed,
            translates,
        };
        assert_eq!(
            *forwarder.seen.lock().unwrap(),
            [
                seen(false, 0, 1, true),
                seen(false, 0x1000, 2, true),
                seen(true, 0, 3, false),
                seen(true, 0x1000, 3, false),
                seen(false, 0x2000, 4, true),
                seen(true, 0x2000, 5, false),
            ]
        );
        assert_eq!(lock(&engine).changes().pending(), 0);
    }
}
