//! The data path: frames pushed in from the uplink, the PF and synthetic ports, and the
//! forwarding and delivery every frame goes through (VF frames too, from `tx`).

use std::borrow::Cow;
use std::time::Duration;

use super::frame::{ETH_FCS_LEN, VLAN_HLEN, VlanTag};
use super::stats::Dir;
use super::{
    Delivery, DropReason, EthHeader, FilterKey, FrameSink, NicSwitchError, Outcome, PortId, Switch,
    SyntheticId, VPortId, insert_tag, ns, strip_tag,
};

/// Where a unicast frame goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// To this port inside the adapter.
    Local(PortId),
    /// Out of the uplink.
    Uplink,
    /// Nowhere: the destination's filters are in flight.
    InFlight,
    /// Nowhere: an uplink frame no VPort claims.
    NoOwner,
}

impl Switch {
    /// Where a unicast frame from `src` goes.
    pub(crate) fn route_unicast(&self, src: PortId, hdr: &EthHeader) -> Route {
        let key = FilterKey::new(hdr.dst, hdr.vlan());
        match self.filters.get(&key) {
            Some(e) => match e.owner {
                Some(owner) => {
                    let target = match owner {
                        VPortId::Vf(n) => PortId::Vf(n),
                        VPortId::Default => e.guest.map_or(PortId::Default, PortId::Synthetic),
                    };
                    if target == src {
                        // Addressed to its own sender: no hairpin, out it goes.
                        Route::Uplink
                    } else {
                        Route::Local(target)
                    }
                }
                None => Route::InFlight,
            },
            None if src == PortId::Uplink => Route::NoOwner,
            None => Route::Uplink,
        }
    }

    /// A frame from the wire.
    pub fn from_uplink(
        &mut self,
        now: Duration,
        frame: &[u8],
        sink: &mut dyn FrameSink,
    ) -> Outcome {
        let Some(hdr) = EthHeader::parse(frame) else {
            return self.ingress_drop(PortId::Uplink, DropReason::Malformed, None);
        };
        if !self.uplink_up {
            return self.ingress_drop(PortId::Uplink, DropReason::LinkDown, None);
        }
        self.uplink_counters.count_rx(frame.len(), hdr.dst);
        self.capture(PortId::Uplink, now, frame);
        self.forward(now, PortId::Uplink, frame, &hdr, sink)
    }

    /// A frame the PF (the management OS) sends through the default VPort.
    pub fn from_pf(&mut self, now: Duration, frame: &[u8], sink: &mut dyn FrameSink) -> Outcome {
        let Some(hdr) = EthHeader::parse(frame) else {
            return self.ingress_drop(PortId::Default, DropReason::Malformed, None);
        };
        self.default_counters.count_tx(frame.len());
        self.capture(PortId::Default, now, frame);
        self.forward(now, PortId::Default, frame, &hdr, sink)
    }

    /// A frame a guest sends on its synthetic path: it enters as if from the default
    /// VPort, after the synthetic port's own checks (source MAC is the guest's; no tag of
    /// its own on an access port, whose VLAN is inserted).
    pub fn from_synthetic(
        &mut self,
        now: Duration,
        id: SyntheticId,
        frame: &[u8],
        sink: &mut dyn FrameSink,
    ) -> Result<Outcome, NicSwitchError> {
        let (mac, vlan) = self
            .synthetic(id)
            .ok_or(NicSwitchError::NoSuchSynthetic(id.0))?;
        let port = PortId::Synthetic(id);
        let Some(hdr) = EthHeader::parse(frame) else {
            return Ok(self.ingress_drop(port, DropReason::Malformed, None));
        };
        if hdr.src != mac {
            return Ok(self.ingress_drop(port, DropReason::Spoofed, None));
        }
        let (out, hdr) = if vlan != 0 {
            if hdr.any_tag {
                return Ok(self.ingress_drop(port, DropReason::Vlan, None));
            }
            let tag = VlanTag {
                vid: vlan,
                pcp: 0,
                dei: false,
            };
            let hdr = EthHeader {
                tag: Some(tag),
                any_tag: true,
                ..hdr
            };
            (Cow::Owned(insert_tag(frame, tag)), hdr)
        } else {
            (Cow::Borrowed(frame), hdr)
        };
        if let Some(s) = self.synthetics.get_mut(&id) {
            s.counters.count_tx(frame.len());
        }
        self.capture(port, now, frame);
        self.capture(PortId::Default, now, &out);
        Ok(self.forward(now, port, &out, &hdr, sink))
    }

    /// Counts a frame dropped where it entered, and returns the outcome.
    pub(crate) fn ingress_drop(
        &mut self,
        src: PortId,
        reason: DropReason,
        dst: Option<super::MacAddr>,
    ) -> Outcome {
        // The uplink counts like a NIC (rx: from the wire); other ports from their side.
        let dir = if src == PortId::Uplink {
            Dir::Rx
        } else {
            Dir::Tx
        };
        if let Some(c) = self.counters_mut(src) {
            c.count_drop(dir, reason);
        }
        if let (Some(mac), DropReason::InFlight | DropReason::NoOwner) = (dst, reason) {
            self.lost.count(reason, mac);
        }
        Outcome::Dropped(reason)
    }

    fn counters_mut(&mut self, port: PortId) -> Option<&mut super::PortCounters> {
        match port {
            PortId::Uplink => Some(&mut self.uplink_counters),
            PortId::Default => Some(&mut self.default_counters),
            PortId::Vf(n) => self.vfs.get_mut(usize::from(n)).map(|v| &mut v.counters),
            PortId::Synthetic(id) => self.synthetics.get_mut(&id).map(|s| &mut s.counters),
        }
    }

    /// Forwards a frame (in switch form: its VLAN, if any, as a tag) from `src`.
    pub(crate) fn forward(
        &mut self,
        now: Duration,
        src: PortId,
        frame: &[u8],
        hdr: &EthHeader,
        sink: &mut dyn FrameSink,
    ) -> Outcome {
        if hdr.dst.is_multicast() {
            let copies = self.flood(now, src, frame, hdr, sink);
            return Outcome::Forwarded { copies };
        }
        let delivered = match self.route_unicast(src, hdr) {
            Route::Local(port) => self.deliver(now, port, frame, hdr, sink),
            Route::Uplink => self.send_uplink(now, src, frame, sink),
            Route::InFlight => return self.ingress_drop(src, DropReason::InFlight, Some(hdr.dst)),
            Route::NoOwner => return self.ingress_drop(src, DropReason::NoOwner, Some(hdr.dst)),
        };
        Outcome::Forwarded {
            copies: usize::from(delivered),
        }
    }

    /// Broadcast and multicast: within the frame's VLAN, to every subscribed endpoint
    /// and the uplink, never back to the source.
    fn flood(
        &mut self,
        now: Duration,
        src: PortId,
        frame: &[u8],
        hdr: &EthHeader,
        sink: &mut dyn FrameSink,
    ) -> usize {
        let vlan = hdr.vlan();
        let mut targets: Vec<PortId> = self
            .vfs
            .iter()
            .zip(0..self.num_vfs())
            .filter(|(v, _)| v.vport && v.in_vlan(vlan) && v.wants_multicast(hdr.dst))
            .map(|(_, i)| PortId::Vf(i))
            .collect();
        if vlan == 0 {
            targets.push(PortId::Default);
        }
        let synthetics: Vec<SyntheticId> = self
            .synthetics
            .iter()
            .filter(|(_, s)| s.vlan == vlan)
            .map(|(id, _)| *id)
            .collect();
        targets.extend(
            synthetics
                .into_iter()
                .filter(|id| self.synthetic_active(*id))
                .map(PortId::Synthetic),
        );
        targets.push(PortId::Uplink);
        let mut copies = 0;
        for port in targets.into_iter().filter(|p| *p != src) {
            let ok = match port {
                PortId::Uplink => self.send_uplink(now, src, frame, sink),
                _ => self.deliver(now, port, frame, hdr, sink),
            };
            copies += usize::from(ok);
        }
        copies
    }

    /// Hands a frame to a port inside the adapter, as that port sees it.
    fn deliver(
        &mut self,
        now: Duration,
        port: PortId,
        frame: &[u8],
        hdr: &EthHeader,
        sink: &mut dyn FrameSink,
    ) -> bool {
        let out: Cow<'_, [u8]> = match port {
            PortId::Uplink => return self.send_uplink(now, PortId::Default, frame, sink),
            PortId::Default => Cow::Borrowed(frame),
            PortId::Synthetic(id) => match self.synthetics.get(&id) {
                Some(s) if s.vlan != 0 => Cow::Owned(strip_tag(frame)),
                Some(_) => Cow::Borrowed(frame),
                None => return false,
            },
            PortId::Vf(n) => {
                let uplink_up = self.uplink_up;
                let Some(v) = self.vfs.get_mut(usize::from(n)) else {
                    return false;
                };
                if !v.link_up(uplink_up) {
                    v.counters.count_drop(Dir::Rx, DropReason::LinkDown);
                    return false;
                }
                let out = if v.policy.port_vlan.is_some() {
                    Cow::Owned(strip_tag(frame))
                } else {
                    Cow::Borrowed(frame)
                };
                // The max frame counts the FCS; a VLAN tag the VF sees comes on top.
                let tag = if v.policy.port_vlan.is_none() && hdr.tag.is_some() {
                    VLAN_HLEN
                } else {
                    0
                };
                if out.len() + ETH_FCS_LEN > v.max_frame as usize + tag {
                    v.counters.count_drop(Dir::Rx, DropReason::Mtu);
                    return false;
                }
                out
            }
        };
        if sink.deliver(port, &out) == Delivery::NoBuffer {
            if let Some(c) = self.counters_mut(port) {
                c.count_drop(Dir::Rx, DropReason::NoBuffer);
            }
            return false;
        }
        if let Some(c) = self.counters_mut(port) {
            c.count_rx(out.len(), hdr.dst);
        }
        self.capture(port, now, &out);
        if matches!(port, PortId::Synthetic(_)) {
            self.capture(PortId::Default, now, frame);
        }
        true
    }

    /// Puts a frame on the wire. Frames from VFs come here only when the wire is free or
    /// busy for less than the TX FIFO's worth (`WIRE_FIFO_NS`); pushed frames queue up to
    /// `uplink_queue_ns` and are dropped beyond.
    fn send_uplink(
        &mut self,
        now: Duration,
        src: PortId,
        frame: &[u8],
        sink: &mut dyn FrameSink,
    ) -> bool {
        if !self.uplink_up {
            self.uplink_counters
                .count_drop(Dir::Tx, DropReason::LinkDown);
            return false;
        }
        let now_ns = ns(now);
        if !matches!(src, PortId::Vf(_)) && self.wire.backlog_ns(now_ns) > self.cfg.uplink_queue_ns
        {
            self.uplink_counters.count_drop(Dir::Tx, DropReason::Rate);
            return false;
        }
        self.wire.occupy(now_ns, frame.len());
        if sink.deliver(PortId::Uplink, frame) == Delivery::NoBuffer {
            self.uplink_counters
                .count_drop(Dir::Tx, DropReason::NoBuffer);
            return false;
        }
        self.uplink_counters.count_tx(frame.len());
        self.capture(PortId::Uplink, now, frame);
        true
    }
}
