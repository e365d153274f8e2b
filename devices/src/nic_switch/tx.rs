//! Transmit from VFs: the VF's checks (link, MTU, port VLAN, spoof check), max_tx_rate
//! with backpressure, and the uplink arbiter for min_tx_rate.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::time::Duration;

use super::forward::Route;
use super::frame::{ETH_FCS_LEN, VLAN_HLEN, VlanTag};
use super::{DropReason, EthHeader, FrameSink, Outcome, PortId, Switch, insert_tag, ns};

/// What became of a VF's frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxVerdict {
    /// Taken and forwarded; `copies` ports accepted it.
    Sent {
        /// Ports that took a copy.
        copies: usize,
    },
    /// Taken and dropped (counted on the VF).
    Dropped(DropReason),
    /// Not taken: leave it in the ring and offer it again at `retry_at` (max_tx_rate's
    /// bucket is in debt, or the uplink's wire is busy).
    Wait {
        /// When to retry (switch time).
        retry_at: Duration,
    },
}

/// The VFs' transmit rings as the arbiter sees them: the frame at the head of each, taken
/// only once it went (or was dropped).
pub trait TxRings {
    /// The frame at the head of VF `vf`'s ring, if any, left in place.
    fn head(&mut self, vf: u16) -> Option<&[u8]>;
    /// Removes the head of VF `vf`'s ring (it was sent or dropped).
    fn pop(&mut self, vf: u16);
}

/// A [`TxRings`] of plain queues, for tests, benchmarks and simple glue.
#[derive(Debug, Default, Clone)]
pub struct VecTxRings {
    rings: Vec<VecDeque<Vec<u8>>>,
}

impl VecTxRings {
    /// Empty rings for `n` VFs.
    pub fn new(n: u16) -> Self {
        Self {
            rings: vec![VecDeque::new(); usize::from(n)],
        }
    }

    /// Queues `frame` on VF `vf`'s ring (ignored for a VF out of range).
    pub fn push(&mut self, vf: u16, frame: Vec<u8>) {
        if let Some(r) = self.rings.get_mut(usize::from(vf)) {
            r.push_back(frame);
        }
    }

    /// Frames waiting on VF `vf`'s ring.
    pub fn len(&self, vf: u16) -> usize {
        self.rings.get(usize::from(vf)).map_or(0, VecDeque::len)
    }

    /// Whether every ring is empty.
    pub fn is_empty(&self) -> bool {
        self.rings.iter().all(VecDeque::is_empty)
    }
}

impl TxRings for VecTxRings {
    fn head(&mut self, vf: u16) -> Option<&[u8]> {
        self.rings
            .get(usize::from(vf))
            .and_then(|r| r.front())
            .map(Vec::as_slice)
    }

    fn pop(&mut self, vf: u16) {
        if let Some(r) = self.rings.get_mut(usize::from(vf)) {
            r.pop_front();
        }
    }
}

/// What one [`Switch::transmit`] call did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TxReport {
    /// Frames taken and forwarded.
    pub sent: usize,
    /// Frames taken and dropped.
    pub dropped: usize,
    /// When to call again for frames left waiting (rate or wire); `None` if nothing
    /// waits for time (the rings are empty, or `more` is set).
    pub next_wake: Option<Duration>,
    /// The budget ran out with frames still ready: call again at once.
    pub more: bool,
}

/// A VF frame's fate, decided before anything is taken.
enum Plan<'a> {
    Drop(DropReason),
    Wait(u64),
    Go {
        frame: Cow<'a, [u8]>,
        hdr: EthHeader,
        uplink: bool,
    },
}

impl Switch {
    /// How long ahead (ns) the arbiter fills the uplink's wire: frames may start while the
    /// wire is busy for at most this much more, so one call sends a few frames.
    const WIRE_FIFO_NS: u64 = 100_000;

    fn plan_vf_tx<'a>(&mut self, vf: u16, frame: &'a [u8], now_ns: u64) -> Plan<'a> {
        let uplink_up = self.uplink_up;
        let Some(v) = self.vfs.get(usize::from(vf)) else {
            return Plan::Drop(DropReason::LinkDown);
        };
        if !v.link_up(uplink_up) {
            return Plan::Drop(DropReason::LinkDown);
        }
        let Some(hdr) = EthHeader::parse(frame) else {
            return Plan::Drop(DropReason::Malformed);
        };
        let tag_allowance = if hdr.tag.is_some() { VLAN_HLEN } else { 0 };
        if frame.len() + ETH_FCS_LEN > v.max_frame as usize + tag_allowance {
            return Plan::Drop(DropReason::Mtu);
        }
        let (out, sw_hdr) = match v.policy.port_vlan {
            Some(pv) => {
                if hdr.any_tag {
                    return Plan::Drop(DropReason::Vlan);
                }
                let tag = VlanTag {
                    vid: pv.vid,
                    pcp: pv.qos,
                    dei: false,
                };
                let sw_hdr = EthHeader {
                    tag: Some(tag),
                    any_tag: true,
                    ..hdr
                };
                (Cow::Owned(insert_tag(frame, tag)), sw_hdr)
            }
            None => {
                let allowed = match hdr.tag {
                    None => !hdr.any_tag,
                    Some(t) => t.vid == 0 || v.vlans.contains(&t.vid),
                };
                if v.policy.spoofchk && !allowed {
                    return Plan::Drop(DropReason::Vlan);
                }
                (Cow::Borrowed(frame), hdr)
            }
        };
        if v.policy.spoofchk && hdr.src != v.mac() && !v.extra_macs.contains(&hdr.src) {
            return Plan::Drop(DropReason::Spoofed);
        }
        let uplink = if sw_hdr.dst.is_multicast() {
            true
        } else {
            match self.route_unicast(PortId::Vf(vf), &sw_hdr) {
                Route::Local(_) => false,
                Route::Uplink | Route::NoOwner => true,
                Route::InFlight => return Plan::Drop(DropReason::InFlight),
            }
        };
        if let Some(at) = self
            .vfs
            .get_mut(usize::from(vf))
            .and_then(|v| v.max_rate.as_mut())
            .and_then(|bucket| bucket.ready_at(now_ns))
        {
            return Plan::Wait(at);
        }
        Plan::Go {
            frame: out,
            hdr: sw_hdr,
            // With the uplink down the uplink's copy is dropped, so nothing waits for it.
            uplink: uplink && self.uplink_up,
        }
    }

    fn drop_vf_frame(&mut self, vf: u16, reason: DropReason, frame: &[u8]) {
        let dst = EthHeader::parse(frame).map(|h| h.dst);
        self.ingress_drop(PortId::Vf(vf), reason, dst);
    }

    fn commit_vf_tx(
        &mut self,
        now: Duration,
        vf: u16,
        orig: &[u8],
        out: &[u8],
        hdr: &EthHeader,
        sink: &mut dyn FrameSink,
    ) -> usize {
        let now_ns = ns(now);
        if let Some(v) = self.vfs.get_mut(usize::from(vf)) {
            if let Some(bucket) = v.max_rate.as_mut() {
                bucket.consume(now_ns, orig.len());
            }
            v.counters.count_tx(orig.len());
        }
        self.capture(PortId::Vf(vf), now, orig);
        match self.forward(now, PortId::Vf(vf), out, hdr, sink) {
            Outcome::Forwarded { copies } => copies,
            Outcome::Dropped(_) => 0,
        }
    }

    /// Offers one frame from VF `vf`'s ring. A frame that may not go yet is not taken
    /// ([`TxVerdict::Wait`]); the VF model keeps it at the head of its ring and offers it
    /// again at `retry_at`. This path does not arbitrate between VFs: with min_tx_rate
    /// in use, drive the rings through [`Self::transmit`].
    pub fn vf_send(
        &mut self,
        now: Duration,
        vf: u16,
        frame: &[u8],
        sink: &mut dyn FrameSink,
    ) -> TxVerdict {
        let now_ns = ns(now);
        match self.plan_vf_tx(vf, frame, now_ns) {
            Plan::Drop(reason) => {
                self.drop_vf_frame(vf, reason, frame);
                TxVerdict::Dropped(reason)
            }
            Plan::Wait(at) => TxVerdict::Wait {
                retry_at: Duration::from_nanos(at),
            },
            Plan::Go { uplink: true, .. }
                if !self.wire.is_free(now_ns.saturating_add(Self::WIRE_FIFO_NS)) =>
            {
                TxVerdict::Wait {
                    retry_at: Duration::from_nanos(self.wire_ready_at(now_ns)),
                }
            }
            Plan::Go {
                frame: out, hdr, ..
            } => TxVerdict::Sent {
                copies: self.commit_vf_tx(now, vf, frame, &out, &hdr, sink),
            },
        }
    }

    /// When frames that found the TX FIFO full should be offered again: once it has
    /// drained to half (not as soon as one frame's room is free), so a busy wire is
    /// refilled in bursts of up to half the FIFO per wakeup rather than one
    /// frame per wakeup (1500-byte frames at 1 Gbit/s cost nicd a timer wakeup each, 10 us
    /// of CPU per frame, before).
    fn wire_ready_at(&self, now_ns: u64) -> u64 {
        self.wire
            .free_at()
            .saturating_sub(Self::WIRE_FIFO_NS / 2)
            .max(now_ns.saturating_add(1))
    }

    /// Sends what the VFs' rings hold and may go now, up to `budget` frames: frames that
    /// stay inside the adapter go at once; frames for the uplink go one at a time while
    /// its wire is free, the arbiter choosing among the VFs (min_tx_rate, see `sched`).
    /// Frames that must wait stay in their rings; [`TxReport::next_wake`] says when to
    /// call again.
    pub fn transmit(
        &mut self,
        now: Duration,
        rings: &mut dyn TxRings,
        sink: &mut dyn FrameSink,
        budget: usize,
    ) -> TxReport {
        let now_ns = ns(now);
        let mut report = TxReport::default();
        let mut wake: Option<u64> = None;
        let mut wake_at = |t: u64| wake = Some(wake.map_or(t, |w| w.min(t)));
        let mut work = 0usize;
        'rounds: loop {
            let mut contenders: Vec<u16> = Vec::new();
            for vf in 0..self.num_vfs() {
                loop {
                    if work >= budget {
                        report.more = rings.head(vf).is_some() || !contenders.is_empty();
                        break 'rounds;
                    }
                    let Some(frame) = rings.head(vf) else {
                        break;
                    };
                    match self.plan_vf_tx(vf, frame, now_ns) {
                        Plan::Drop(reason) => {
                            self.drop_vf_frame(vf, reason, frame);
                            report.dropped += 1;
                        }
                        Plan::Wait(at) => {
                            wake_at(at);
                            break;
                        }
                        Plan::Go { uplink: true, .. } => {
                            contenders.push(vf);
                            break;
                        }
                        Plan::Go {
                            frame: out, hdr, ..
                        } => {
                            self.commit_vf_tx(now, vf, frame, &out, &hdr, sink);
                            report.sent += 1;
                        }
                    }
                    rings.pop(vf);
                    work += 1;
                }
            }
            if contenders.is_empty() {
                break;
            }
            if !self.wire.is_free(now_ns.saturating_add(Self::WIRE_FIFO_NS)) {
                wake_at(self.wire_ready_at(now_ns));
                break;
            }
            let Some((vf, tier)) = self.sched.pick(&contenders, now_ns) else {
                break;
            };
            let Some(frame) = rings.head(vf) else {
                break;
            };
            let Plan::Go {
                frame: out, hdr, ..
            } = self.plan_vf_tx(vf, frame, now_ns)
            else {
                // Nothing changed since the scan; a ring that changed its head is
                // simply scanned again next time.
                break;
            };
            let len = frame.len();
            self.commit_vf_tx(now, vf, frame, &out, &hdr, sink);
            self.sched.account(vf, len, tier, now_ns);
            rings.pop(vf);
            report.sent += 1;
            work += 1;
        }
        report.next_wake = if report.more {
            None
        } else {
            wake.map(Duration::from_nanos)
        };
        report
    }
}
