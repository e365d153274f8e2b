//! The virtio-net data path: one thread moving frames between the queues and the backend.

use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::Bytes;

use crate::virtio::dma::DmaMemory;
use crate::virtio::pause::PauseGate;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::offload::{self, NET_HDR_LEN};
use super::{F_GUEST_CSUM, MAX_FRAME, NetBackend, RX_QUEUE, TX_QUEUE};
use crate::virtio::{ActivateContext, VirtioInterrupt, desc_take};
use crate::{debug_ratelimited, warn_ratelimited};

const EV_TX: u64 = 0;
const EV_RX: u64 = 1;
const EV_BACKEND: u64 = 2;
const EV_STOP: u64 = 3;
const EV_PAUSE: u64 = 4;
const EV_BACKEND_WAKE: u64 = 5;

/// Frames and errors counted by the worker.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetCounters {
    /// Frames sent to the backend.
    pub tx_frames: u64,
    /// Frames given to the guest.
    pub rx_frames: u64,
    /// TX chains dropped (malformed, too large, backend error).
    pub tx_dropped: u64,
    /// Backend frames dropped (too large, truncated).
    pub rx_dropped: u64,
}

pub(super) struct Worker {
    mem: DmaMemory,
    rx: Queue,
    tx: Queue,
    interrupt: Arc<dyn VirtioInterrupt>,
    backend: Arc<dyn NetBackend>,
    kicks: [Arc<EventFd>; 2],
    stop: Arc<EventFd>,
    pause: Arc<PauseGate>,
    /// Header room plus the frame being received: reused for every frame, so the receive
    /// path allocates nothing.
    rx_buf: Vec<u8>,
    /// Length of a frame in `rx_buf` that did not fit the buffers available yet.
    pending: Option<usize>,
    /// The frame being sent, reused likewise.
    tx_buf: Vec<u8>,
    /// What the backend fd is registered for (empty: not registered).
    backend_interest: EventSet,
    /// Wants backend readability (the guest posted receive buffers).
    want_rx: bool,
    /// The backend refused a frame: TX waits for it to become writable.
    tx_blocked: bool,
    /// The driver takes partial checksums on received frames (VIRTIO_NET_F_GUEST_CSUM).
    guest_csum: bool,
    /// Frames to and from the backend carry the virtio-net header.
    backend_hdr: bool,
    counters: NetCounters,
}

impl Worker {
    pub(super) fn new(
        mut ctx: ActivateContext,
        backend: Arc<dyn NetBackend>,
        kicks: [Arc<EventFd>; 2],
        stop: Arc<EventFd>,
        pause: Arc<PauseGate>,
    ) -> Self {
        let tx = ctx.queues.remove(usize::from(TX_QUEUE));
        let rx = ctx.queues.remove(usize::from(RX_QUEUE));
        let backend_hdr = backend.has_vnet_hdr();
        Self {
            mem: ctx.mem,
            rx,
            tx,
            interrupt: ctx.interrupt,
            backend,
            kicks,
            stop,
            pause,
            rx_buf: vec![0u8; NET_HDR_LEN + MAX_FRAME],
            pending: None,
            tx_buf: Vec::with_capacity(NET_HDR_LEN + MAX_FRAME),
            backend_interest: EventSet::empty(),
            want_rx: false,
            tx_blocked: false,
            guest_csum: ctx.features & F_GUEST_CSUM != 0,
            backend_hdr,
            counters: NetCounters::default(),
        }
    }

    /// Runs until stopped; gives the backend back.
    pub(super) fn run(mut self) -> Arc<dyn NetBackend> {
        let epoll = match Epoll::new() {
            Ok(e) => e,
            Err(e) => {
                warn_ratelimited!("virtio-net: epoll: {e}");
                return self.backend;
            }
        };
        let add = |fd: i32, data: u64| {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, data),
            )
        };
        let registered = add(self.kicks[0].as_raw_fd(), EV_RX)
            .and_then(|()| add(self.kicks[1].as_raw_fd(), EV_TX))
            .and_then(|()| add(self.stop.as_raw_fd(), EV_STOP))
            .and_then(|()| add(self.pause.fd().as_raw_fd(), EV_PAUSE));
        let registered = match self.backend.wake_fd() {
            Some(fd) => registered.and_then(|()| add(fd, EV_BACKEND_WAKE)),
            None => registered,
        };
        if let Err(e) = registered {
            warn_ratelimited!("virtio-net: epoll setup: {e}");
            return self.backend;
        }
        // Whatever the driver queued before the first notification.
        self.process_tx(&epoll);
        self.process_rx(&epoll);
        let mut events = vec![EpollEvent::default(); 8];
        loop {
            let n = match epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn_ratelimited!("virtio-net: epoll wait: {e}");
                    break;
                }
            };
            for ev in &events[..n] {
                match ev.data() {
                    EV_STOP => return self.backend,
                    // Other events of this batch are handled once resumed.
                    EV_PAUSE => self.pause.park_if_requested(),
                    EV_TX => {
                        let _ = self.kicks[1].read();
                        self.process_tx(&epoll);
                    }
                    EV_RX => {
                        let _ = self.kicks[0].read();
                        self.process_rx(&epoll);
                    }
                    EV_BACKEND_WAKE => {
                        self.backend.ack_wake();
                        self.backend_replaced(&epoll);
                    }
                    EV_BACKEND => {
                        let set = ev.event_set();
                        if set.contains(EventSet::OUT) && self.tx_blocked {
                            self.tx_blocked = false;
                            self.process_tx(&epoll);
                        }
                        if set.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR) {
                            self.process_rx(&epoll);
                        }
                    }
                    _ => {}
                }
            }
        }
        self.backend
    }

    /// Sends every frame the guest queued; stops (keeping the frame in the ring) while the
    /// backend cannot take more, and resumes when it becomes writable.
    fn process_tx(&mut self, epoll: &Epoll) {
        if self.tx_blocked {
            return;
        }
        let mem = self.mem.clone();
        let mut used = false;
        let mut frame = std::mem::take(&mut self.tx_buf);
        while let Some(chain) = self.tx.pop_descriptor_chain(&mem) {
            let head = chain.head_index();
            frame.clear();
            let mut ok = true;
            let mut cut_short = false;
            for desc in chain {
                // The chain iterator stops after a queue's worth of descriptors: a last one
                // that still points onwards means a loop or an overlong chain.
                cut_short = desc.has_next();
                if desc.is_write_only()
                    || frame.len() + desc.len() as usize > NET_HDR_LEN + MAX_FRAME
                {
                    ok = false;
                    break;
                }
                let start = frame.len();
                frame.resize(start + desc.len() as usize, 0);
                if mem.read_slice(&mut frame[start..], desc.addr()).is_err() {
                    ok = false;
                    break;
                }
            }
            let ok = ok
                && !cut_short
                && frame.len() > NET_HDR_LEN
                && match offload::prepare_tx(&mut frame, self.backend_hdr) {
                    Ok(()) => true,
                    Err(e) => {
                        warn_ratelimited!("virtio-net: TX chain {head}: {e}");
                        false
                    }
                };
            if ok {
                let out = if self.backend_hdr {
                    &frame[..]
                } else {
                    &frame[NET_HDR_LEN..]
                };
                match self.backend.send(out) {
                    Ok(()) => self.counters.tx_frames += 1,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        // Full: give the chain back and wait for room.
                        self.tx.go_to_previous_position();
                        self.tx_blocked = true;
                        break;
                    }
                    Err(e) => {
                        self.counters.tx_dropped += 1;
                        debug_ratelimited!("virtio-net: backend send: {e}");
                    }
                }
            } else {
                self.counters.tx_dropped += 1;
                warn_ratelimited!("virtio-net: malformed TX chain {head} dropped");
            }
            if self.tx.add_used(&mem, head, 0).is_err() {
                warn_ratelimited!("virtio-net: cannot return TX chain {head}");
            }
            used = true;
        }
        self.tx_buf = frame;
        if used {
            self.interrupt.signal_queue(TX_QUEUE);
        }
        self.update_backend_watch(epoll);
    }

    /// Moves frames from the backend into receive buffers while both exist; watches the
    /// backend only while buffers are available.
    fn process_rx(&mut self, epoll: &Epoll) {
        let mem = self.mem.clone();
        let mut delivered = false;
        loop {
            let len = match self.pending.take() {
                Some(n) => n,
                None => match self.receive() {
                    Ok(Some(n)) => n,
                    Ok(None) => {
                        self.counters.rx_dropped += 1;
                        continue;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::InvalidData => {
                        self.counters.rx_dropped += 1;
                        continue;
                    }
                    Err(e) => {
                        warn_ratelimited!("virtio-net: backend receive: {e}");
                        self.want_rx = false;
                        self.update_backend_watch(epoll);
                        return;
                    }
                },
            };
            match self.deliver(&mem, len) {
                Ok(()) => {
                    delivered = true;
                    self.counters.rx_frames += 1;
                }
                Err(NoBuffers) => {
                    self.pending = Some(len);
                    break;
                }
            }
        }
        if delivered {
            self.interrupt.signal_queue(RX_QUEUE);
        }
        // Watch the backend while the guest has buffers; otherwise wait for a kick.
        self.want_rx = self.pending.is_none() && self.rx_available(&mem);
        self.update_backend_watch(epoll);
    }

    /// Receives one frame into `rx_buf` behind its header and readies the header for the
    /// guest: `Ok(Some(len))` with the frame's length, `Ok(None)` for a frame that was
    /// dropped (short, or a header this device cannot honour).
    fn receive(&mut self) -> std::io::Result<Option<usize>> {
        let len = if self.backend_hdr {
            let n = self.backend.recv(&mut self.rx_buf)?;
            if n < NET_HDR_LEN {
                debug_ratelimited!("virtio-net: {n}-byte frame from the backend dropped");
                return Ok(None);
            }
            n - NET_HDR_LEN
        } else {
            let n = self.backend.recv(&mut self.rx_buf[NET_HDR_LEN..])?;
            self.rx_buf[..NET_HDR_LEN].fill(0);
            n
        };
        match offload::prepare_rx(&mut self.rx_buf[..NET_HDR_LEN + len], self.guest_csum) {
            Ok(()) => Ok(Some(len)),
            Err(e) => {
                debug_ratelimited!("virtio-net: frame from the backend dropped: {e}");
                Ok(None)
            }
        }
    }

    fn rx_available(&mut self, mem: &DmaMemory) -> bool {
        match (
            self.rx.avail_idx(mem, std::sync::atomic::Ordering::Acquire),
            self.rx.next_avail(),
        ) {
            (Ok(avail), next) => avail.0 != next,
            (Err(_), _) => false,
        }
    }

    /// The backend's connection was replaced under the same descriptor: its old
    /// registration went with the old connection (or names a dead one), so it is made
    /// afresh, and what the broken connection stopped runs again.
    fn backend_replaced(&mut self, epoll: &Epoll) {
        if !self.backend_interest.is_empty() {
            // Gone already if the old connection was closed; nothing to undo then.
            let _ = epoll.ctl(
                ControlOperation::Delete,
                self.backend.fd(),
                EpollEvent::default(),
            );
            self.backend_interest = EventSet::empty();
        }
        self.tx_blocked = false;
        self.process_tx(epoll);
        self.process_rx(epoll);
    }

    /// Registers the backend for what the worker waits on: readability while the guest has
    /// receive buffers, writability while TX is blocked.
    fn update_backend_watch(&mut self, epoll: &Epoll) {
        let mut want = EventSet::empty();
        if self.want_rx {
            want |= EventSet::IN;
        }
        if self.tx_blocked {
            want |= EventSet::OUT;
        }
        if want == self.backend_interest {
            return;
        }
        let op = if self.backend_interest.is_empty() {
            ControlOperation::Add
        } else if want.is_empty() {
            ControlOperation::Delete
        } else {
            ControlOperation::Modify
        };
        match epoll.ctl(op, self.backend.fd(), EpollEvent::new(want, EV_BACKEND)) {
            Ok(()) => self.backend_interest = want,
            Err(e) => warn_ratelimited!("virtio-net: watch backend: {e}"),
        }
    }

    /// Writes header + the `len`-byte frame in `rx_buf` into as many receive chains as it
    /// takes (mergeable buffers).
    fn deliver(&mut self, mem: &DmaMemory, len: usize) -> Result<(), NoBuffers> {
        // num_buffers, fixed up below once the count is known.
        self.rx_buf[10..NET_HDR_LEN].copy_from_slice(&1u16.to_le_bytes());
        let stream = &self.rx_buf[..NET_HDR_LEN + len];
        let mut used: Vec<(u16, u32)> = Vec::new();
        let mut written = 0usize;
        // Where num_buffers (stream bytes 10 and 11) landed, to fix it up at the end.
        let mut num_buffers_at = Vec::with_capacity(2);
        while written < stream.len() {
            let Some(chain) = self.rx.pop_descriptor_chain(mem) else {
                // Not enough buffers: give back what was taken and keep the frame.
                for _ in &used {
                    self.rx.go_to_previous_position();
                }
                return Err(NoBuffers);
            };
            let head = chain.head_index();
            let mut chain_len = 0u32;
            for desc in chain {
                if !desc.is_write_only() {
                    break;
                }
                let take = desc_take(desc.len(), stream.len() - written);
                let end = written + take as usize;
                if mem.write_slice(&stream[written..end], desc.addr()).is_err() {
                    warn_ratelimited!(
                        "virtio-net: RX buffer not writable (outside RAM or an IOMMU fault)"
                    );
                    break;
                }
                for off in [10usize, 11] {
                    if (written..end).contains(&off) {
                        num_buffers_at.push((desc.addr().0 + (off - written) as u64, off));
                    }
                }
                written = end;
                chain_len += take;
                if written == stream.len() {
                    break;
                }
            }
            used.push((head, chain_len));
            if chain_len == 0 {
                // A chain that takes nothing (read-only or bad): the frame is dropped.
                debug_ratelimited!("virtio-net: unusable RX chain {head}");
                self.counters.rx_dropped += 1;
                break;
            }
        }
        // num_buffers is 16 bits. Every chain took at least one byte of the frame, so only a
        // driver that posts tens of thousands of 1-byte buffers gets more: it reads 0xffff.
        let count = u16::try_from(used.len()).unwrap_or(u16::MAX).to_le_bytes();
        for (addr, off) in num_buffers_at {
            let _ = mem.write_slice(&count[off - 10..off - 9], vm_memory::GuestAddress(addr));
        }
        for (head, len) in used {
            if self.rx.add_used(mem, head, len).is_err() {
                warn_ratelimited!("virtio-net: cannot return RX chain {head}");
            }
        }
        Ok(())
    }
}

/// The guest has not posted enough receive buffers.
#[derive(Debug)]
struct NoBuffers;
