//! The PF side of the mailbox: a state machine that answers the VF as Linux igb's
//! `igb_rcv_msg_from_vf` does, under a policy the NIC switch owns ([`PfPolicy`]), and
//! records what the VF asked for ([`VfRequests`], [`PfEvent`]) for the switch to apply.
//!
//! Replies (word 0; see igb-82576.md section 4):
//! - RESET: `0x80000001` and the VF's MAC in words 1-2, or `0x40000001` without a MAC.
//!   No CTS; from then on the VF is clear to send and its queues may move frames.
//! - Before a RESET every other request is NACKed (without CTS), at most once per 2 s; a
//!   request in between gets no reply, as igb does.
//! - SET_MAC: allowed for the admin MAC, or any valid MAC if trusted or no admin MAC is
//!   set. MAC filter clear always; add refused if an admin MAC is set and the VF is not
//!   trusted. SET_MULTICAST: up to 30 hashes. SET_VLAN: refused under a port VLAN.
//!   SET_LPE: max frame = min(size, 9728). SET_PROMISC: trusted only. Anything else NACK.
//!   Every one of these replies carries CTS.

use std::collections::{BTreeSet, VecDeque};

use super::mailbox::Mailbox;
use super::regs::{
    MAC_FILTER_ADD, MAC_FILTER_CLR, MSG_ACK, MSG_CTS, MSG_INFO_MASK, MSG_INFO_SHIFT, MSG_NACK,
    MSG_PF_CONTROL, MSG_RESET, MSG_SET_LPE, MSG_SET_MAC_ADDR, MSG_SET_MULTICAST, MSG_SET_PROMISC,
    MSG_SET_VLAN, PROMISC_MULTICAST, PROMISC_UNICAST, VMBMEM_WORDS,
};

/// An Ethernet MAC address.
pub type MacAddr = [u8; 6];

/// The largest frame a VF may ask for (igb's MAX_JUMBO_FRAME_SIZE).
pub const MAX_JUMBO_FRAME: u32 = 9728;
/// The largest receive frame (with FCS) before the VF sets one: MTU 1500 + VLAN tag.
pub const DEFAULT_MAX_FRAME: u32 = 1522;
/// Multicast hashes a VF may set.
pub const MAX_MC_HASHES: usize = 30;
/// VLANs a VF may join (the 82576's VLVF has 32 entries).
pub const MAX_VLANS: usize = 32;
/// Extra unicast MAC filters a VF may add.
pub const MAX_MAC_FILTERS: usize = 16;
/// Events kept for the switch before the oldest are dropped.
pub const MAX_EVENTS: usize = 256;
/// igb NACKs a VF that has not reset at most this often.
const NACK_INTERVAL_NS: u64 = 2_000_000_000;

/// What the administrator (the NIC switch) decides for this VF.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PfPolicy {
    /// The MAC given to the VF on RESET (igb: `ip link set pf vf N mac`). `None`: the VF
    /// gets a NACK and chooses its own.
    pub admin_mac: Option<MacAddr>,
    /// Trusted VFs may change their MAC, add MAC filters and go promiscuous.
    pub trusted: bool,
    /// A port VLAN the switch inserts and strips; the VF may not join VLANs itself.
    pub port_vlan: Option<u16>,
    /// Link state shown in STATUS.LU and announced by a ping.
    pub link_up: bool,
}

/// What the VF asked for and was granted: the switch reads this to program its filters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VfRequests {
    /// The VF completed a RESET handshake (igb's CTS flag; also VFTE/VFRE).
    pub reset_done: bool,
    /// The VF's unicast MAC (the admin MAC, or the one it set).
    pub mac: Option<MacAddr>,
    /// Additional unicast MAC filters.
    pub mac_filters: Vec<MacAddr>,
    /// 12-bit multicast hashes (`((addr[4] >> 4) | (addr[5] << 4)) & 0xfff`).
    pub multicast_hashes: Vec<u16>,
    /// VLANs the VF joined.
    pub vlans: BTreeSet<u16>,
    /// Largest receive frame, FCS included.
    pub max_frame: u32,
    /// Unicast promiscuous granted.
    pub promisc_unicast: bool,
    /// Multicast promiscuous granted.
    pub promisc_multicast: bool,
}

impl Default for VfRequests {
    fn default() -> Self {
        Self {
            reset_done: false,
            mac: None,
            mac_filters: Vec::new(),
            multicast_hashes: Vec::new(),
            vlans: BTreeSet::new(),
            max_frame: DEFAULT_MAX_FRAME,
            promisc_unicast: false,
            promisc_multicast: false,
        }
    }
}

impl VfRequests {
    /// Whether received frames should have their VLAN tag stripped into the descriptor,
    /// as igb programs it: when the VF joined a VLAN or a port VLAN is set.
    pub fn vlan_strip(&self, policy: &PfPolicy) -> bool {
        policy.port_vlan.is_some() || self.vlans.iter().any(|&v| v != 0)
    }
}

/// A change the VF asked for, in order; the state in [`VfRequests`] is the sum of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PfEvent {
    /// The VF reset: its filters, hashes and VLANs are cleared; `mac` is what it was told.
    Reset {
        /// The MAC sent in the reply, if any.
        mac: Option<MacAddr>,
    },
    /// The VF's MAC changed.
    MacAddr(MacAddr),
    /// The VF's extra MAC filters were cleared.
    MacFiltersCleared,
    /// A MAC filter was added.
    MacFilterAdded(MacAddr),
    /// The multicast hash list was replaced.
    Multicast(Vec<u16>),
    /// The VF joined a VLAN.
    VlanAdded(u16),
    /// The VF left a VLAN.
    VlanRemoved(u16),
    /// The largest receive frame changed.
    MaxFrame(u32),
    /// Promiscuous modes changed.
    Promisc {
        /// Unicast promiscuous.
        unicast: bool,
        /// Multicast promiscuous.
        multicast: bool,
    },
    /// A request was refused (word 0 of the request).
    Refused(u32),
    /// The VF's filter state was forgotten by a VF reset (CTRL.RST) or by the switch.
    Cleared,
}

/// The PF-side agent of one VF.
#[derive(Debug, Default)]
pub struct PfAgent {
    policy: PfPolicy,
    state: VfRequests,
    events: VecDeque<PfEvent>,
    events_dropped: u64,
    last_nack: Option<u64>,
    ping_pending: bool,
}

/// The MAC in words 1-2 of a message (bytes packed little-endian).
fn mac_of(msg: &[u32; VMBMEM_WORDS]) -> MacAddr {
    let a = msg[1].to_le_bytes();
    let b = msg[2].to_le_bytes();
    [a[0], a[1], a[2], a[3], b[0], b[1]]
}

/// A unicast, non-zero MAC (Linux's `is_valid_ether_addr`).
pub fn is_valid_mac(mac: &MacAddr) -> bool {
    mac[0] & 1 == 0 && mac.iter().any(|&b| b != 0)
}

impl PfAgent {
    /// An agent with `policy`; the VF has not reset yet.
    pub fn new(policy: PfPolicy) -> Self {
        let state = VfRequests {
            mac: policy.admin_mac,
            ..VfRequests::default()
        };
        Self {
            policy,
            state,
            ..Self::default()
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> &PfPolicy {
        &self.policy
    }

    /// What the VF asked for and was granted.
    pub fn requests(&self) -> &VfRequests {
        &self.state
    }

    /// The events since the last call, oldest first.
    pub fn take_events(&mut self) -> Vec<PfEvent> {
        self.events.drain(..).collect()
    }

    /// Events dropped because the switch did not take them in time.
    pub fn events_dropped(&self) -> u64 {
        self.events_dropped
    }

    /// Whether the VF's queues may move frames (igb's VFTE/VFRE, set by RESET).
    pub fn queues_enabled(&self) -> bool {
        self.state.reset_done
    }

    fn event(&mut self, e: PfEvent) {
        if self.events.len() >= MAX_EVENTS {
            self.events.pop_front();
            self.events_dropped += 1;
        }
        self.events.push_back(e);
    }

    /// Replaces the policy. An admin MAC change applies to the next RESET (igb asks for a
    /// VF driver reload); returns whether the link state changed.
    pub(crate) fn set_policy(&mut self, policy: PfPolicy) -> bool {
        let link_changed = policy.link_up != self.policy.link_up;
        if policy.admin_mac != self.policy.admin_mac && policy.admin_mac.is_some() {
            self.state.mac = policy.admin_mac;
        }
        self.policy = policy;
        link_changed
    }

    /// Forgets everything the VF asked for, as when the VF is given to another guest.
    pub fn forget(&mut self) {
        self.state = VfRequests {
            mac: self.policy.admin_mac,
            ..VfRequests::default()
        };
        self.last_nack = None;
        self.ping_pending = false;
        self.event(PfEvent::Cleared);
    }

    /// A VF reset (CTRL.RST): igb's `igb_vf_reset_event`, the VF must RESET again.
    pub(crate) fn vf_reset_event(&mut self) {
        let mac = self.state.mac;
        self.state = VfRequests {
            mac,
            ..VfRequests::default()
        };
        self.event(PfEvent::Cleared);
    }

    fn may_nack(&mut self, now: u64) -> bool {
        let ok = self
            .last_nack
            .is_none_or(|t| now.saturating_sub(t) >= NACK_INTERVAL_NS);
        if ok {
            self.last_nack = Some(now);
        }
        ok
    }

    /// The VF set REQ: read its message, acknowledge it and reply. Returns whether the VF
    /// must be interrupted (always: PFACK was set).
    pub(crate) fn on_request(&mut self, mbx: &mut Mailbox, now: u64) -> bool {
        let msg = mbx.mem;
        mbx.pf_ack();
        let word0 = msg[0];
        // A reply the VF echoed back: nothing to do.
        if word0 & (MSG_ACK | MSG_NACK) != 0 {
            return true;
        }
        if word0 == MSG_RESET {
            self.reset_msg(mbx);
            return true;
        }
        if !self.state.reset_done {
            if self.may_nack(now) {
                mbx.pf_post(&[word0 | MSG_NACK], false);
            }
            return true;
        }
        let ok = match word0 & 0xFFFF {
            MSG_SET_MAC_ADDR => self.set_mac(&msg),
            MSG_SET_MULTICAST => self.set_multicast(&msg),
            MSG_SET_VLAN => self.set_vlan(&msg),
            MSG_SET_LPE => self.set_lpe(msg[1]),
            MSG_SET_PROMISC => self.set_promisc(word0),
            _ => false,
        };
        if !ok {
            crate::debug_ratelimited!("igbvf: PF refused VF request {word0:#010x}");
            self.event(PfEvent::Refused(word0));
        }
        let verdict = if ok { MSG_ACK } else { MSG_NACK };
        // igbvf never reads the replies to SET_MULTICAST and SET_LPE (it only waits for
        // PFACK), and igb's pings overwrite them: a later ping may replace them too, or it
        // would wait for a read that never comes and the VF would miss a link change.
        let unread_by_vf = matches!(word0 & 0xFFFF, MSG_SET_MULTICAST | MSG_SET_LPE);
        mbx.pf_post(&[word0 | MSG_CTS | verdict], unread_by_vf);
        true
    }

    /// The VF set ACK: igb NACKs a VF that is not clear to send (rate-limited). Returns
    /// whether the VF must be interrupted.
    pub(crate) fn on_ack(&mut self, mbx: &mut Mailbox, now: u64) -> bool {
        mbx.vf_ack();
        if !self.state.reset_done && self.may_nack(now) {
            mbx.pf_post(&[MSG_NACK], false);
            return true;
        }
        false
    }

    /// Asks for a link ping; it is posted now if the buffer is free, else when it frees.
    /// Returns whether it was posted (the VF must then be interrupted).
    pub(crate) fn ping(&mut self, mbx: &mut Mailbox) -> bool {
        self.ping_pending = true;
        self.flush_ping(mbx)
    }

    /// Posts a pending ping if the VF neither holds the buffer nor has a reply to read.
    pub(crate) fn flush_ping(&mut self, mbx: &mut Mailbox) -> bool {
        if !self.ping_pending || mbx.vf_holds() || (mbx.unread && !mbx.unread_replaceable) {
            return false;
        }
        self.ping_pending = false;
        let cts = if self.state.reset_done { MSG_CTS } else { 0 };
        mbx.pf_post(&[MSG_PF_CONTROL | cts], true);
        true
    }

    fn reset_msg(&mut self, mbx: &mut Mailbox) {
        // igb_vf_reset_event: filters, hashes and VLANs go; the MAC stays.
        let mac = self.state.mac;
        self.state = VfRequests {
            mac,
            reset_done: true,
            ..VfRequests::default()
        };
        let reply = match mac {
            Some(m) => [
                MSG_RESET | MSG_ACK,
                u32::from_le_bytes([m[0], m[1], m[2], m[3]]),
                u32::from_le_bytes([m[4], m[5], 0, 0]),
            ],
            None => [MSG_RESET | MSG_NACK, 0, 0],
        };
        mbx.pf_post(&reply, false);
        self.event(PfEvent::Reset { mac });
    }

    fn set_mac(&mut self, msg: &[u32; VMBMEM_WORDS]) -> bool {
        let info = (msg[0] & MSG_INFO_MASK) >> MSG_INFO_SHIFT;
        let addr = mac_of(msg);
        let admin_locked = self.policy.admin_mac.is_some() && !self.policy.trusted;
        match info {
            0 => {
                let allowed = if admin_locked {
                    Some(addr) == self.policy.admin_mac
                } else {
                    is_valid_mac(&addr)
                };
                if allowed && self.state.mac != Some(addr) {
                    self.state.mac = Some(addr);
                    self.event(PfEvent::MacAddr(addr));
                }
                allowed
            }
            MAC_FILTER_CLR => {
                self.state.mac_filters.clear();
                self.event(PfEvent::MacFiltersCleared);
                true
            }
            MAC_FILTER_ADD => {
                if admin_locked || !is_valid_mac(&addr) {
                    return false;
                }
                if !self.state.mac_filters.contains(&addr) {
                    if self.state.mac_filters.len() >= MAX_MAC_FILTERS {
                        return false;
                    }
                    self.state.mac_filters.push(addr);
                }
                self.event(PfEvent::MacFilterAdded(addr));
                true
            }
            _ => false,
        }
    }

    fn set_multicast(&mut self, msg: &[u32; VMBMEM_WORDS]) -> bool {
        let n = ((msg[0] & MSG_INFO_MASK) >> MSG_INFO_SHIFT) as usize;
        let hashes: Vec<u16> = msg[1..]
            .iter()
            .flat_map(|w| [(w & 0xFFFF) as u16, (w >> 16) as u16])
            .take(n.min(MAX_MC_HASHES))
            .collect();
        self.state.multicast_hashes = hashes.clone();
        self.event(PfEvent::Multicast(hashes));
        true
    }

    fn set_vlan(&mut self, msg: &[u32; VMBMEM_WORDS]) -> bool {
        if self.policy.port_vlan.is_some() {
            return false;
        }
        let add = msg[0] & MSG_INFO_MASK != 0;
        let vid = (msg[1] & 0xFFF) as u16;
        if add {
            if !self.state.vlans.contains(&vid) {
                if self.state.vlans.len() >= MAX_VLANS {
                    return false;
                }
                self.state.vlans.insert(vid);
                self.event(PfEvent::VlanAdded(vid));
            }
        } else if self.state.vlans.remove(&vid) {
            self.event(PfEvent::VlanRemoved(vid));
        }
        true
    }

    fn set_lpe(&mut self, size: u32) -> bool {
        let size = size.min(MAX_JUMBO_FRAME);
        if size != self.state.max_frame {
            self.state.max_frame = size;
            self.event(PfEvent::MaxFrame(size));
        }
        true
    }

    fn set_promisc(&mut self, word0: u32) -> bool {
        if !self.policy.trusted
            || word0 & MSG_INFO_MASK & !(PROMISC_UNICAST | PROMISC_MULTICAST) != 0
        {
            return false;
        }
        self.state.promisc_unicast = word0 & PROMISC_UNICAST != 0;
        self.state.promisc_multicast = word0 & PROMISC_MULTICAST != 0;
        self.event(PfEvent::Promisc {
            unicast: self.state.promisc_unicast,
            multicast: self.state.promisc_multicast,
        });
        true
    }
}
