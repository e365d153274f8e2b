//! Counters: the eight `ifla_vf_stats` counters every port keeps, the reasons behind its
//! drops, and per-MAC counts of frames lost while a guest's filters were in flight.

use std::collections::BTreeMap;

use super::MacAddr;

/// The eight counters of Linux's `ifla_vf_stats`, from the port's side: `rx` is what the
/// switch delivered to the port, `tx` what the port sent into the switch. `broadcast` and
/// `multicast` count received frames, as `ip -s link` prints them under RX.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct VfStats {
    /// Frames delivered to the port.
    pub rx_packets: u64,
    /// Frames the port sent that the switch accepted.
    pub tx_packets: u64,
    /// Bytes delivered to the port.
    pub rx_bytes: u64,
    /// Bytes the port sent that the switch accepted.
    pub tx_bytes: u64,
    /// Broadcast frames delivered.
    pub broadcast: u64,
    /// Multicast frames delivered (broadcast not included).
    pub multicast: u64,
    /// Frames for the port that were dropped.
    pub rx_dropped: u64,
    /// Frames from the port that were dropped.
    pub tx_dropped: u64,
}

/// Why a frame was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DropReason {
    /// Spoof check: the source MAC (or VLAN) is not the VF's.
    Spoofed,
    /// VLAN rule: a VF-tagged frame while a port VLAN is set, or a VLAN the VF is not in.
    Vlan,
    /// The port's link (or the uplink's, on the way out) is down.
    LinkDown,
    /// Larger than the port's maximum frame size.
    Mtu,
    /// The receiver had no buffer (no free RX descriptor, a full queue).
    NoBuffer,
    /// From the uplink, for a MAC no VPort claims.
    NoOwner,
    /// For a guest's MAC whose filters were in flight between VPorts.
    InFlight,
    /// Over a rate where backpressure is impossible (the uplink's queue).
    Rate,
    /// Too short to hold an Ethernet header.
    Malformed,
}

/// Drop counts by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct DropCounters {
    /// [`DropReason::Spoofed`].
    pub spoofed: u64,
    /// [`DropReason::Vlan`].
    pub vlan: u64,
    /// [`DropReason::LinkDown`].
    pub link_down: u64,
    /// [`DropReason::Mtu`].
    pub mtu: u64,
    /// [`DropReason::NoBuffer`].
    pub no_buffer: u64,
    /// [`DropReason::NoOwner`].
    pub no_owner: u64,
    /// [`DropReason::InFlight`].
    pub in_flight: u64,
    /// [`DropReason::Rate`].
    pub rate: u64,
    /// [`DropReason::Malformed`].
    pub malformed: u64,
}

impl DropCounters {
    /// The count for one reason.
    pub fn get(&self, reason: DropReason) -> u64 {
        match reason {
            DropReason::Spoofed => self.spoofed,
            DropReason::Vlan => self.vlan,
            DropReason::LinkDown => self.link_down,
            DropReason::Mtu => self.mtu,
            DropReason::NoBuffer => self.no_buffer,
            DropReason::NoOwner => self.no_owner,
            DropReason::InFlight => self.in_flight,
            DropReason::Rate => self.rate,
            DropReason::Malformed => self.malformed,
        }
    }

    fn bump(&mut self, reason: DropReason) {
        let c = match reason {
            DropReason::Spoofed => &mut self.spoofed,
            DropReason::Vlan => &mut self.vlan,
            DropReason::LinkDown => &mut self.link_down,
            DropReason::Mtu => &mut self.mtu,
            DropReason::NoBuffer => &mut self.no_buffer,
            DropReason::NoOwner => &mut self.no_owner,
            DropReason::InFlight => &mut self.in_flight,
            DropReason::Rate => &mut self.rate,
            DropReason::Malformed => &mut self.malformed,
        };
        *c = c.wrapping_add(1);
    }
}

/// A port's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PortCounters {
    /// The eight `ifla_vf_stats` counters.
    pub stats: VfStats,
    /// Drops by reason; `stats.rx_dropped + stats.tx_dropped` is their sum.
    pub drops: DropCounters,
}

/// Which way a frame crossed a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dir {
    /// Towards the port (delivered to it).
    Rx,
    /// From the port (sent by it).
    Tx,
}

impl PortCounters {
    pub(crate) fn count_rx(&mut self, len: usize, dst: MacAddr) {
        let s = &mut self.stats;
        s.rx_packets = s.rx_packets.wrapping_add(1);
        s.rx_bytes = s.rx_bytes.wrapping_add(len as u64);
        if dst.is_broadcast() {
            s.broadcast = s.broadcast.wrapping_add(1);
        } else if dst.is_multicast() {
            s.multicast = s.multicast.wrapping_add(1);
        }
    }

    /// A frame counted as delivered to this port that its receiver then refused: it
    /// becomes an RX drop for `reason` instead.
    pub(crate) fn refused_rx(&mut self, len: usize, dst: MacAddr, reason: DropReason) {
        let s = &mut self.stats;
        s.rx_packets = s.rx_packets.saturating_sub(1);
        s.rx_bytes = s.rx_bytes.saturating_sub(len as u64);
        if dst.is_broadcast() {
            s.broadcast = s.broadcast.saturating_sub(1);
        } else if dst.is_multicast() {
            s.multicast = s.multicast.saturating_sub(1);
        }
        self.count_drop(Dir::Rx, reason);
    }

    pub(crate) fn count_tx(&mut self, len: usize) {
        let s = &mut self.stats;
        s.tx_packets = s.tx_packets.wrapping_add(1);
        s.tx_bytes = s.tx_bytes.wrapping_add(len as u64);
    }

    pub(crate) fn count_drop(&mut self, dir: Dir, reason: DropReason) {
        let s = &mut self.stats;
        match dir {
            Dir::Rx => s.rx_dropped = s.rx_dropped.wrapping_add(1),
            Dir::Tx => s.tx_dropped = s.tx_dropped.wrapping_add(1),
        }
        self.drops.bump(reason);
    }
}

/// Destination MACs tracked individually for "no owner" drops; beyond this, frames for
/// further MACs only add to [`LostFrames::no_owner_untracked`] (the uplink is untrusted:
/// random destinations must not grow the map).
pub const MAX_TRACKED_MACS: usize = 256;

/// Frames from the uplink that reached no port, per destination MAC: the failover
/// accounting ("how many frames did guest X lose during the switch?").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LostFrames {
    /// For a guest's MAC whose filters were in flight (released, not yet claimed).
    pub in_flight: BTreeMap<MacAddr, u64>,
    /// For a MAC no filter names at all (the first [`MAX_TRACKED_MACS`] distinct MACs).
    pub no_owner: BTreeMap<MacAddr, u64>,
    /// "No owner" frames for MACs beyond the tracked ones.
    pub no_owner_untracked: u64,
}

impl LostFrames {
    pub(crate) fn count(&mut self, reason: DropReason, mac: MacAddr) {
        let map = match reason {
            DropReason::InFlight => &mut self.in_flight,
            _ => &mut self.no_owner,
        };
        if let Some(c) = map.get_mut(&mac) {
            *c = c.wrapping_add(1);
        } else if map.len() < MAX_TRACKED_MACS {
            map.insert(mac, 1);
        } else {
            self.no_owner_untracked = self.no_owner_untracked.wrapping_add(1);
        }
    }

    /// Frames lost for `mac` while its filters were in flight.
    pub fn in_flight_for(&self, mac: MacAddr) -> u64 {
        self.in_flight.get(&mac).copied().unwrap_or(0)
    }

    /// Frames dropped for `mac` because no VPort claimed it.
    pub fn no_owner_for(&self, mac: MacAddr) -> u64 {
        self.no_owner.get(&mac).copied().unwrap_or(0)
    }
}
