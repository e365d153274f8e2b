//! The NIC switch of the emulated SR-IOV adapter, as a pure model: frames in, frames out,
//! time passed in; no threads, no sockets.
//!
//! # Ports
//!
//! - the **uplink** (the physical port);
//! - the PF's **default VPort** (always there, never deleted), whose own endpoint is the
//!   management OS ([`PortId::Default`]);
//! - one **VPort per VF**, created and deleted by the adapter's management
//!   ([`Switch::create_vport`], [`Switch::delete_vport`]);
//! - **synthetic ports**: each guest's virtio-net path, hanging off the default VPort.
//!   A synthetic port is registered with the guest's MAC and VLAN
//!   ([`Switch::add_synthetic`]), which creates the guest's filter on the default VPort.
//!   Frames from it enter the switch as if from the default VPort; frames the default
//!   VPort receives go to the synthetic port whose guest filter they match, while the
//!   default VPort owns that filter. Once the filter moves to a VF's VPort
//!   ([`Switch::move_guest_filters`], the failover step), the same frames go to the VF and
//!   the synthetic port receives nothing (net_failover would drop it anyway).
//!
//! # Forwarding (VEB)
//!
//! A frame's VLAN is its 802.1Q VID (0 when untagged or priority-tagged); inside the
//! switch a frame carries its VLAN as a tag. Unicast is looked up by (destination MAC,
//! VLAN) in the filter table: a VPort's filter delivers there; a filter in flight (its
//! guest's filters released and not yet claimed) drops and counts the frame per MAC;
//! no filter sends a VPort's frame to the uplink and drops an uplink frame ("no owner",
//! per MAC). A frame addressed to its own sender leaves through the uplink (no hairpin).
//! Broadcast floods within its VLAN to every VPort endpoint and the uplink except the
//! source; multicast goes to VFs whose hash list (SET_MULTICAST) holds the group or that
//! are in all-multicast mode, to the default VPort's endpoints and to the uplink.
//!
//! # Transmit from VFs
//!
//! VF frames go through [`Switch::vf_send`] (one frame) or [`Switch::transmit`] (the
//! pending frames of every VF's ring, arbitrated at the uplink by min_tx_rate, see
//! `sched`). A frame that may not go yet (max_tx_rate's token bucket, or a busy uplink)
//! is not taken: the caller learns when to retry ([`TxVerdict::Wait`],
//! [`TxReport::next_wake`]) and the frame waits in the VF's ring; nothing is dropped for
//! rate. Traffic from the uplink, the PF and synthetic ports is pushed and never waits.
//!
//! # Management
//!
//! The `set_vf_*` methods take what `ip link set DEV vf N ...` takes and refuse with the
//! errors (and errnos) iproute2 users know. An admin MAC changed while the VF runs takes
//! effect in the switch at once (filter, spoof check); the VF driver learns it at its
//! next reset (the mailbox RESET reply), which is igb's behaviour.

mod capture;
mod error;
mod filters;
mod forward;
mod frame;
mod iplink;
mod mgmt;
mod pcap;
mod policy;
mod rate;
mod sched;
mod stats;
mod tx;
mod vf;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

pub use error::{NicSwitchError, TrustedAction};
pub use filters::{FilterEntry, FilterKey, MAX_FILTERS, VPortId};
pub use frame::{
    ETH_FCS_LEN, ETH_HLEN, EthHeader, MacAddr, ParseMacError, TPID_8021AD, TPID_8021Q, VLAN_HLEN,
    VlanTag, insert_tag, strip_tag,
};
pub use iplink::{
    VfInfo, VfInfoJson, VfRateJson, VfRxStatsJson, VfStatsJson, VfTxStatsJson, VfVlanJson, vf_json,
    vf_text,
};
pub use pcap::{LINKTYPE_ETHERNET, PCAP_MAGIC, PCAP_SNAPLEN, PCAP_VERSION, PcapWriter};
pub use policy::{
    DEFAULT_MAX_FRAME_SIZE, LinkState, MAX_EXTRA_UNICAST, MAX_FRAME_SIZE_MAX, MAX_FRAME_SIZE_MIN,
    MAX_MC_HASHES, MAX_VF_VLANS, PortVlan, VfPolicy, VfRequest, VlanProto, XcastMode, validate_mac,
    validate_port_vlan, validate_rates,
};
pub use rate::{BURST_NS, MAX_FRAME};
pub use stats::{DropCounters, DropReason, LostFrames, MAX_TRACKED_MACS, PortCounters, VfStats};
pub use tx::{TxReport, TxRings, TxVerdict, VecTxRings};

use capture::Capture;
use filters::FilterTable;
use rate::WireClock;
use sched::UplinkScheduler;
use vf::VfState;

/// Synthetic ports a switch holds at most.
pub const MAX_SYNTHETICS: usize = 1024;

/// A synthetic port (a guest's virtio-net path behind the default VPort).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SyntheticId(pub u16);

/// A port of the switch: where frames enter and leave, what counters and captures name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortId {
    /// The physical port.
    Uplink,
    /// The default VPort's own endpoint (the PF, the management OS). As a capture point
    /// it sees everything crossing the default VPort, synthetic ports' traffic included.
    Default,
    /// VF `n`'s VPort.
    Vf(u16),
    /// A synthetic port.
    Synthetic(SyntheticId),
}

impl fmt::Display for PortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Uplink => f.write_str("uplink"),
            Self::Default => f.write_str("default VPort"),
            Self::Vf(n) => write!(f, "vf {n}"),
            Self::Synthetic(s) => write!(f, "synthetic {}", s.0),
        }
    }
}

/// What a receiver did with a frame handed to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Taken.
    Accepted,
    /// No buffer for it (no free RX descriptor, a full socket): dropped and counted.
    NoBuffer,
}

/// Where frames leave the switch: the glue hands them to the uplink backend, the VF
/// model's receive ring, the PF or a guest's virtio-net queue.
pub trait FrameSink {
    /// Hands `frame` to `port`.
    fn deliver(&mut self, port: PortId, frame: &[u8]) -> Delivery;
}

/// What became of a pushed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Forwarded; `copies` ports took it (0 when every target dropped it, counted there).
    Forwarded {
        /// Ports that accepted a copy.
        copies: usize,
    },
    /// Dropped at ingress, for this reason.
    Dropped(DropReason),
}

/// A VF whose visible link state changed: the VF model sets STATUS.LU to `up` and pings
/// the VF driver through the mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkChange {
    /// The VF.
    pub vf: u16,
    /// Its link now.
    pub up: bool,
}

/// How a switch is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SwitchConfig {
    /// TotalVFs: the most VFs `set_num_vfs` accepts.
    pub total_vfs: u16,
    /// Uplink speed in Mbps (the 82576's 1000); 0 for unlimited (no wire contention, no
    /// min_tx_rate arbitration).
    pub uplink_mbps: u32,
    /// How far ahead (ns) frames pushed towards the uplink (from the PF, synthetic ports)
    /// may queue on its wire before further ones are dropped as [`DropReason::Rate`].
    pub uplink_queue_ns: u64,
}

impl Default for SwitchConfig {
    fn default() -> Self {
        Self {
            total_vfs: 7,
            uplink_mbps: 1000,
            uplink_queue_ns: 2_000_000,
        }
    }
}

#[derive(Debug, Clone)]
struct Synthetic {
    mac: MacAddr,
    vlan: u16,
    counters: PortCounters,
}

/// The NIC switch. See the module documentation.
#[derive(Debug)]
pub struct Switch {
    cfg: SwitchConfig,
    uplink_up: bool,
    vfs: Vec<VfState>,
    filters: FilterTable,
    synthetics: BTreeMap<SyntheticId, Synthetic>,
    next_synthetic: u16,
    default_counters: PortCounters,
    uplink_counters: PortCounters,
    lost: LostFrames,
    wire: WireClock,
    sched: UplinkScheduler,
    captures: BTreeMap<PortId, Capture>,
}

/// Nanoseconds of a switch time.
fn ns(t: Duration) -> u64 {
    u64::try_from(t.as_nanos()).unwrap_or(u64::MAX)
}

impl Switch {
    /// A switch with no VFs enabled and its uplink up.
    pub fn new(cfg: SwitchConfig) -> Self {
        Self {
            cfg,
            uplink_up: true,
            vfs: Vec::new(),
            filters: FilterTable::default(),
            synthetics: BTreeMap::new(),
            next_synthetic: 0,
            default_counters: PortCounters::default(),
            uplink_counters: PortCounters::default(),
            lost: LostFrames::default(),
            wire: WireClock::new(cfg.uplink_mbps),
            sched: UplinkScheduler::default(),
            captures: BTreeMap::new(),
        }
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &SwitchConfig {
        &self.cfg
    }

    /// How many VFs are enabled.
    pub fn num_vfs(&self) -> u16 {
        // `set_num_vfs` keeps it within a u16.
        u16::try_from(self.vfs.len()).unwrap_or(u16::MAX)
    }

    /// Whether the uplink's link is up.
    pub fn uplink_up(&self) -> bool {
        self.uplink_up
    }

    /// The counters of `port` (`None` for a VF or synthetic port that does not exist).
    pub fn counters(&self, port: PortId) -> Option<PortCounters> {
        match port {
            PortId::Uplink => Some(self.uplink_counters),
            PortId::Default => Some(self.default_counters),
            PortId::Vf(n) => self.vfs.get(usize::from(n)).map(|v| v.counters),
            PortId::Synthetic(id) => self.synthetics.get(&id).map(|s| s.counters),
        }
    }

    /// VF `vf`'s receiver refused `frame` after the switch delivered it (no free RX
    /// descriptor, its queue off, too long for its buffers): the frame counts as an RX
    /// drop of that port for `reason`, not as received. No-op for a VF that is gone.
    pub fn vf_refused(&mut self, vf: u16, frame: &[u8], reason: DropReason) {
        let dst = frame
            .get(..6)
            .and_then(|b| <[u8; 6]>::try_from(b).ok())
            .map(MacAddr)
            .unwrap_or(MacAddr([0; 6]));
        if let Some(v) = self.vfs.get_mut(usize::from(vf)) {
            v.counters.refused_rx(frame.len(), dst, reason);
        }
    }

    /// Frames from the uplink lost per destination MAC (failover accounting).
    pub fn lost_frames(&self) -> &LostFrames {
        &self.lost
    }

    /// Who holds the filter `key`, if anyone.
    pub fn filter(&self, key: FilterKey) -> Option<FilterEntry> {
        self.filters.get(&key).copied()
    }

    /// Every filter, in key order.
    pub fn filters(&self) -> Vec<(FilterKey, FilterEntry)> {
        self.filters.iter().map(|(k, e)| (*k, *e)).collect()
    }

    fn vf(&self, vf: u16) -> Result<&VfState, NicSwitchError> {
        self.vfs
            .get(usize::from(vf))
            .ok_or(NicSwitchError::NoSuchVf {
                vf,
                num_vfs: self.num_vfs(),
            })
    }

    fn vf_mut(&mut self, vf: u16) -> Result<&mut VfState, NicSwitchError> {
        let num_vfs = self.num_vfs();
        self.vfs
            .get_mut(usize::from(vf))
            .ok_or(NicSwitchError::NoSuchVf { vf, num_vfs })
    }

    /// The link state VF `vf` sees (STATUS.LU): its VPort exists and its setting is
    /// enable, or auto with the uplink up. `false` for a VF that does not exist.
    pub fn vf_link_up(&self, vf: u16) -> bool {
        self.vfs
            .get(usize::from(vf))
            .is_some_and(|v| v.link_up(self.uplink_up))
    }
}
