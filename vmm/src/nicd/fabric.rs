//! The data path every VF shares: the NIC switch, the uplink, and the frames on their way
//! to VFs. It sits behind one lock that each VF's [`SwitchTx`] takes from inside the VF
//! model's TX walk, so a frame goes through the switch the moment the model reads it from
//! the ring; the event loop takes the same lock for uplink frames and management. Nothing
//! that holds this lock calls into a VF model (that would re-enter it): frames for VFs
//! wait in the outbox until the loop hands them to the VF models, right after the event
//! that made them.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::nic_switch::{Delivery, FrameSink, PortId, Switch, SyntheticId, TxRings, TxVerdict};
use devices::sriov::igbvf::TxSink;
use devices::sync::lock;
use devices::virtio::net::{NET_HDR_LEN, NetBackend};

/// Frames waiting for VF models at most; beyond, deliveries count as no-buffer drops.
pub const MAX_OUTBOX: usize = 4096;
/// Largest frame read from the uplink (room for a 64 KiB frame and its virtio-net header;
/// nicd asks the TAP for no offloads, and the VFs take at most 9728-byte frames, so
/// larger ones are dropped by the switch or the VF).
pub const MAX_UPLINK_FRAME: usize = 65536 + NET_HDR_LEN;

/// Frames for the uplink wait here, in order, until the end of the event that made them
/// (then they go in batches) or, when its socket is full (its peer reads slower than the
/// VFs send), until it takes them again; beyond, frames are dropped.
pub const UPLINK_BACKLOG: usize = 1024;
/// With this many frames waiting, VFs stop handing over frames (their rings hold them,
/// as a NIC's TX queues hold frames the wire cannot take yet) ...
const BACKLOG_HIGH: usize = UPLINK_BACKLOG * 3 / 4;
/// ... until the backlog is down to this many.
const BACKLOG_LOW: usize = UPLINK_BACKLOG / 4;

/// The physical port: a TAP (frames carry a zeroed virtio-net header) or a seqpacket socket.
#[derive(Debug)]
pub struct Uplink {
    backend: Box<dyn NetBackend>,
    buf: Vec<u8>,
    /// Frames the socket refused for now (oldest first), with their headers.
    backlog: VecDeque<Vec<u8>>,
    /// Frames dropped because the TAP's interface was down.
    down_dropped: u64,
}

/// A TAP whose interface is down refuses frames with EIO (the kernel's tun driver): the
/// port's link is down, which loses frames and is no failure of the port (the host may
/// bring the interface up any time; a test does just after nicd made the TAP).
fn link_down(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EIO)
}

impl Uplink {
    /// Wraps an opened backend.
    pub fn new(backend: Box<dyn NetBackend>) -> Self {
        Self {
            backend,
            buf: vec![0u8; MAX_UPLINK_FRAME],
            backlog: VecDeque::new(),
            down_dropped: 0,
        }
    }

    /// The descriptor to poll.
    pub fn fd(&self) -> i32 {
        self.backend.fd()
    }

    /// Queues `frame` for [`Uplink::flush`] (frames a TX walk or an arbiter round sends go
    /// out together, one system call per batch); an error when the backlog is full.
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        let wire = if self.backend.has_vnet_hdr() {
            // No offload request: the switch hands over complete frames.
            let mut with_hdr = vec![0u8; NET_HDR_LEN + frame.len()];
            with_hdr[NET_HDR_LEN..].copy_from_slice(frame);
            with_hdr
        } else {
            frame.to_vec()
        };
        if self.backlog.len() >= UPLINK_BACKLOG {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.backlog.push_back(wire);
        Ok(())
    }

    /// Sends what waits in the backlog, in batches, while the socket takes it.
    fn flush(&mut self) -> io::Result<()> {
        const BATCH: usize = 64;
        while !self.backlog.is_empty() {
            let batch: Vec<&[u8]> = self.backlog.iter().take(BATCH).map(Vec::as_slice).collect();
            let sent = match self.backend.send_batch(&batch) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if link_down(&e) => {
                    // As a NIC whose link is down: what waits is lost, the port stays.
                    self.down_dropped += self.backlog.len() as u64;
                    self.backlog.clear();
                    devices::warn_ratelimited!(
                        "nicd: the uplink's link is down: frames dropped ({} so far)",
                        self.down_dropped
                    );
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            let full = sent < batch.len();
            self.backlog.drain(..sent);
            if full || sent == 0 {
                return Ok(());
            }
        }
        Ok(())
    }

    /// One frame from the wire; `Ok(None)` when none is waiting; errors end the uplink.
    fn recv(&mut self) -> io::Result<Option<Vec<u8>>> {
        let n = match self.backend.recv(&mut self.buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock || link_down(&e) => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => return Ok(Some(Vec::new())),
            Err(e) => return Err(e),
        };
        if n == 0 && !self.backend.has_vnet_hdr() {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "peer closed",
            ));
        }
        let start = if self.backend.has_vnet_hdr() {
            NET_HDR_LEN
        } else {
            0
        };
        Ok(Some(self.buf.get(start..n).unwrap_or_default().to_vec()))
    }
}

/// A frame the switch did not take yet (max_tx_rate, a busy uplink): the VF model's TX
/// walk stops behind it until it goes.
#[derive(Debug, Default)]
struct Held {
    frame: Option<Vec<u8>>,
    retry_at: Duration,
}

/// The held frames as the switch's arbiter sees the VFs' rings: a VF's head is its held
/// frame (the rest of its ring waits behind it in the guest's memory).
struct HeldRings<'a>(&'a mut [Held]);

impl TxRings for HeldRings<'_> {
    fn head(&mut self, vf: u16) -> Option<&[u8]> {
        self.0.get(usize::from(vf))?.frame.as_deref()
    }

    fn pop(&mut self, vf: u16) {
        if let Some(h) = self.0.get_mut(usize::from(vf)) {
            h.frame = None;
        }
    }
}

/// How long a held frame waits when the arbiter names no time (it always should).
const RETRY_FALLBACK: Duration = Duration::from_millis(1);

/// Counters of the glue itself (the switch and the VF models count the rest).
#[derive(Debug, Default, Clone, Copy)]
pub struct FabricStats {
    /// Frames for VFs dropped because the outbox was full.
    pub outbox_full: u64,
    /// Frames the uplink refused (full socket, TAP down).
    pub uplink_send_errors: u64,
    /// Frames read from the uplink.
    pub uplink_rx: u64,
}

/// The switch, the uplink, and what is in flight between them and the VFs.
#[derive(Debug)]
pub struct Fabric {
    /// The NIC switch.
    pub switch: Switch,
    start: Instant,
    /// Where the switch's frames go (a field of its own, so the switch and it can be
    /// borrowed together).
    out: Outputs,
    held: Vec<Held>,
    /// VFs stopped handing over frames because the uplink's backlog was high.
    stalled: bool,
}

/// Where the switch's frames go from here: the uplink (its backlog), VFs and synthetic
/// ports through their outboxes.
#[derive(Debug)]
struct Outputs {
    uplink: Option<Uplink>,
    outbox: VecDeque<(u16, Vec<u8>)>,
    /// Frames waiting for guests' synthetic ports.
    synthetic_out: VecDeque<(SyntheticId, Vec<u8>)>,
    stats: FabricStats,
}

impl FrameSink for Outputs {
    fn deliver(&mut self, port: PortId, frame: &[u8]) -> Delivery {
        match port {
            PortId::Uplink => match self.uplink.as_mut().map(|u| u.send(frame)) {
                Some(Ok(())) => Delivery::Accepted,
                _ => {
                    self.stats.uplink_send_errors += 1;
                    Delivery::NoBuffer
                }
            },
            PortId::Vf(n) if self.outbox.len() < MAX_OUTBOX => {
                self.outbox.push_back((n, frame.to_vec()));
                Delivery::Accepted
            }
            PortId::Vf(_) => {
                self.stats.outbox_full += 1;
                Delivery::NoBuffer
            }
            PortId::Synthetic(id) if self.synthetic_out.len() < MAX_OUTBOX => {
                self.synthetic_out.push_back((id, frame.to_vec()));
                Delivery::Accepted
            }
            PortId::Synthetic(_) => {
                self.stats.outbox_full += 1;
                Delivery::NoBuffer
            }
            // nicd's PF has no network interface.
            PortId::Default => Delivery::NoBuffer,
        }
    }
}

impl Fabric {
    /// A fabric around `switch` with `uplink`.
    pub fn new(switch: Switch, uplink: Option<Uplink>) -> Self {
        Self {
            switch,
            start: Instant::now(),
            out: Outputs {
                uplink,
                outbox: VecDeque::new(),
                synthetic_out: VecDeque::new(),
                stats: FabricStats::default(),
            },
            held: Vec::new(),
            stalled: false,
        }
    }

    /// The switch's time.
    pub fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// The Unix time of the switch's time zero (for pcap time stamps).
    pub fn epoch_unix(&self) -> Duration {
        let since_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        since_unix.saturating_sub(self.now())
    }

    /// Counters.
    pub fn stats(&self) -> FabricStats {
        self.out.stats
    }

    /// The uplink's descriptor, if there is an uplink.
    pub fn uplink_fd(&self) -> Option<i32> {
        self.out.uplink.as_ref().map(Uplink::fd)
    }

    /// Drops the uplink (its peer went away).
    pub fn drop_uplink(&mut self) {
        self.out.uplink = None;
    }

    /// Makes room for `n` VFs' held frames (dropping any held beyond).
    pub fn resize(&mut self, n: u16) {
        self.held.resize_with(usize::from(n), Held::default);
        self.out.outbox.retain(|(vf, _)| *vf < n);
    }

    /// Forgets VF `vf`'s held frame and queued deliveries (its client left).
    pub fn clear_vf(&mut self, vf: u16) {
        if let Some(h) = self.held.get_mut(usize::from(vf)) {
            *h = Held::default();
        }
        self.out.outbox.retain(|(n, _)| *n != vf);
    }

    fn vf_send(&mut self, vf: u16, frame: &[u8]) -> TxVerdict {
        let now = self.now();
        self.switch.vf_send(now, vf, frame, &mut self.out)
    }

    /// A frame from VF `vf`'s ring: through the switch, or held if it must wait.
    fn vf_frame(&mut self, vf: u16, frame: &[u8]) {
        if let TxVerdict::Wait { retry_at } = self.vf_send(vf, frame)
            && let Some(h) = self.held.get_mut(usize::from(vf))
        {
            h.frame = Some(frame.to_vec());
            h.retry_at = retry_at;
        }
    }

    /// Whether VF `vf` may hand over its next frame: no frame is held, or the held one
    /// went now.
    fn vf_ready(&mut self, vf: u16) -> bool {
        if self.uplink_backlog() >= BACKLOG_HIGH {
            self.stalled = true;
            return false;
        }
        let now = self.now();
        let Some(h) = self.held.get_mut(usize::from(vf)) else {
            return true;
        };
        let Some(frame) = h.frame.take() else {
            return true;
        };
        if now < h.retry_at {
            h.frame = Some(frame);
            return false;
        }
        match self.vf_send(vf, &frame) {
            TxVerdict::Wait { retry_at } => {
                if let Some(h) = self.held.get_mut(usize::from(vf)) {
                    h.frame = Some(frame);
                    h.retry_at = retry_at;
                }
                false
            }
            TxVerdict::Sent { .. } | TxVerdict::Dropped(_) => true,
        }
    }

    /// Offers every held frame to the switch's arbiter at once, so VFs that contend for
    /// the uplink's wire share it by their min_tx_rate (one VF after the other would
    /// favour the lowest numbers). Returns the VFs whose held frame went (or was
    /// dropped): their rings may go on. The rest retry when the switch says.
    pub fn arbitrate(&mut self) -> Vec<u16> {
        let before: Vec<bool> = self.held.iter().map(|h| h.frame.is_some()).collect();
        let waiting = before.iter().filter(|&&b| b).count();
        if waiting == 0 {
            return Vec::new();
        }
        let now = self.now();
        let report =
            self.switch
                .transmit(now, &mut HeldRings(&mut self.held), &mut self.out, waiting);
        let retry = if report.more {
            now
        } else {
            report.next_wake.unwrap_or(now + RETRY_FALLBACK)
        };
        let mut went = Vec::new();
        for ((vf, h), was) in (0u16..).zip(self.held.iter_mut()).zip(before) {
            match (&h.frame, was) {
                (None, true) => went.push(vf),
                (Some(_), _) => h.retry_at = retry,
                (None, false) => {}
            }
        }
        went
    }

    /// The earliest time a held frame may go (switch time), if any is held.
    pub fn next_retry(&self) -> Option<Duration> {
        self.held
            .iter()
            .filter(|h| h.frame.is_some())
            .map(|h| h.retry_at)
            .min()
    }

    /// Reads up to `budget` frames from the uplink into the switch. Returns false when
    /// the uplink failed: drop it with [`Fabric::drop_uplink`].
    pub fn uplink_rx(&mut self, budget: usize) -> bool {
        for _ in 0..budget {
            let Some(uplink) = self.out.uplink.as_mut() else {
                return false;
            };
            let frame = match uplink.recv() {
                Ok(Some(f)) => f,
                Ok(None) => return true,
                Err(e) => {
                    // Dropped by the event loop, once it stopped watching its descriptor.
                    devices::warn_ratelimited!("nicd: the uplink failed: {e}");
                    return false;
                }
            };
            self.out.stats.uplink_rx += 1;
            let now = self.now();
            self.switch.from_uplink(now, &frame, &mut self.out);
        }
        true
    }

    /// Frames waiting for the uplink's socket.
    pub fn uplink_backlog(&self) -> usize {
        self.out.uplink.as_ref().map_or(0, |u| u.backlog.len())
    }

    /// The uplink's socket takes frames again: sends the backlog. Returns whether VFs that
    /// stopped for it may go on (the backlog is low again), and false for `alive` when
    /// the uplink failed.
    pub fn uplink_writable(&mut self) -> (bool, bool) {
        let Some(uplink) = self.out.uplink.as_mut() else {
            return (std::mem::take(&mut self.stalled), true);
        };
        if let Err(e) = uplink.flush() {
            devices::warn_ratelimited!("nicd: the uplink failed: {e}");
            return (std::mem::take(&mut self.stalled), false);
        }
        let resume = self.stalled && uplink.backlog.len() <= BACKLOG_LOW;
        if resume {
            self.stalled = false;
        }
        (resume, true)
    }

    /// A frame a guest sent on synthetic port `id`: through the switch as from the
    /// default VPort.
    pub fn synthetic_frame(&mut self, id: SyntheticId, frame: &[u8]) {
        let now = self.now();
        if let Err(e) = self.switch.from_synthetic(now, id, frame, &mut self.out) {
            devices::debug_ratelimited!("nicd: synthetic port {}: {e}", id.0);
        }
    }

    /// Frames waiting for synthetic ports, oldest first.
    pub fn take_synthetic_out(&mut self) -> VecDeque<(SyntheticId, Vec<u8>)> {
        std::mem::take(&mut self.out.synthetic_out)
    }

    /// Forgets the frames queued for synthetic port `id` (its guest left).
    pub fn clear_synthetic(&mut self, id: SyntheticId) {
        self.out.synthetic_out.retain(|(s, _)| *s != id);
    }

    /// Frames waiting for VF models, oldest first.
    pub fn take_outbox(&mut self) -> VecDeque<(u16, Vec<u8>)> {
        std::mem::take(&mut self.out.outbox)
    }
}

/// A VF model's [`TxSink`]: each frame goes through the switch at once.
#[derive(Debug)]
pub struct SwitchTx {
    vf: u16,
    fabric: Arc<Mutex<Fabric>>,
}

impl SwitchTx {
    /// The sink of VF `vf`.
    pub fn new(vf: u16, fabric: Arc<Mutex<Fabric>>) -> Self {
        Self { vf, fabric }
    }
}

impl TxSink for SwitchTx {
    fn ready(&mut self) -> bool {
        lock(&self.fabric).vf_ready(self.vf)
    }

    fn send(&mut self, frame: &[u8]) {
        lock(&self.fabric).vf_frame(self.vf, frame);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TAP whose interface is down: every write fails with EIO.
    #[derive(Debug)]
    struct DownTap;

    impl NetBackend for DownTap {
        fn send(&self, _frame: &[u8]) -> io::Result<()> {
            Err(io::Error::from_raw_os_error(libc::EIO))
        }
        fn recv(&self, _buf: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::from_raw_os_error(libc::EIO))
        }
        fn fd(&self) -> i32 {
            -1
        }
        fn has_vnet_hdr(&self) -> bool {
            true
        }
    }

    #[test]
    fn a_tap_that_is_down_drops_frames_and_stays() {
        let mut up = Uplink::new(Box::new(DownTap));
        up.send(&[0u8; 60]).unwrap();
        up.send(&[0u8; 60]).unwrap();
        assert!(up.flush().is_ok(), "a link that is down is no failure");
        assert_eq!((up.backlog.len(), up.down_dropped), (0, 2));
        assert!(matches!(up.recv(), Ok(None)));
    }
}
