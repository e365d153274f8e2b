//! Per-VF policy as `ip link set DEV vf N ...` sets it, the requests a VF driver makes
//! through the mailbox, and the validation both go through.

use super::frame::{ETH_FCS_LEN, ETH_HLEN, VLAN_VID_MAX};
use super::rate::MAX_FRAME;
use super::{MacAddr, NicSwitchError};

/// The VF's link state setting (`state auto|enable|disable`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LinkState {
    /// The VF's link follows the uplink.
    #[default]
    Auto,
    /// Up even while the uplink is down (VF-to-VF traffic still flows).
    Enable,
    /// Down: the VF's traffic is dropped both ways.
    Disable,
}

impl LinkState {
    /// The word `ip link` prints.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Enable => "enable",
            Self::Disable => "disable",
        }
    }
}

/// The tag protocol of a port VLAN (`proto 802.1Q|802.1ad`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum VlanProto {
    /// 802.1Q, the default and the only one supported.
    #[default]
    Dot1Q,
    /// 802.1ad: refused with EPROTONOSUPPORT, as igb does.
    Dot1Ad,
}

/// A port VLAN: inserted (with `qos` as PCP) on the VF's transmit, filtered and stripped
/// on its receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortVlan {
    /// VLAN ID (0 with a non-zero qos: priority tagging).
    pub vid: u16,
    /// PCP of the inserted tag.
    pub qos: u8,
}

/// Largest max frame size SET_LPE may ask for.
pub const MAX_FRAME_SIZE_MAX: u32 = 9728;
/// Smallest max frame size SET_LPE may ask for (MTU 68, Linux's IPv4 minimum, plus
/// header and FCS).
pub const MAX_FRAME_SIZE_MIN: u32 = 68 + 14 + 4;
/// Max frame size before the VF driver sends SET_LPE: MTU 1500 plus header and FCS.
pub const DEFAULT_MAX_FRAME_SIZE: u32 = 1500 + 14 + 4;

const _: () = assert!(MAX_FRAME_SIZE_MAX as usize == MAX_FRAME);
const _: () = assert!(MAX_FRAME_SIZE_MIN as usize == 68 + ETH_HLEN + ETH_FCS_LEN);
const _: () = assert!(DEFAULT_MAX_FRAME_SIZE as usize == 1500 + ETH_HLEN + ETH_FCS_LEN);
/// How many multicast hashes SET_MULTICAST carries at most (E1000_VF_MAX_MC_ADDRS... the
/// mailbox fits 30); further entries are ignored, as igb ignores them.
pub const MAX_MC_HASHES: usize = 30;
/// Extra unicast filters a trusted VF may add.
pub const MAX_EXTRA_UNICAST: usize = 16;
/// VLANs a VF (without a port VLAN) may join.
pub const MAX_VF_VLANS: usize = 32;

/// What the administrator set for one VF (all of `ip link set DEV vf N ...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VfPolicy {
    /// Admin MAC (zero: none set, the VF driver picks its own).
    pub mac: MacAddr,
    /// Port VLAN, if set.
    pub port_vlan: Option<PortVlan>,
    /// Spoof checking (default on).
    pub spoofchk: bool,
    /// Trust (default off).
    pub trust: bool,
    /// Link state setting.
    pub link_state: LinkState,
    /// max_tx_rate in Mbps (0: none).
    pub max_tx_rate: u32,
    /// min_tx_rate in Mbps (0: none).
    pub min_tx_rate: u32,
}

impl Default for VfPolicy {
    fn default() -> Self {
        Self {
            mac: MacAddr::ZERO,
            port_vlan: None,
            spoofchk: true,
            trust: false,
            link_state: LinkState::Auto,
            max_tx_rate: 0,
            min_tx_rate: 0,
        }
    }
}

/// Checks `vlan VID qos Q proto P` the way rtnetlink and igb do, in their order.
pub fn validate_port_vlan(
    vlan: u32,
    qos: u32,
    proto: VlanProto,
) -> Result<Option<PortVlan>, NicSwitchError> {
    let vid = u16::try_from(vlan)
        .ok()
        .filter(|v| *v <= VLAN_VID_MAX)
        .ok_or(NicSwitchError::VlanOutOfRange(vlan))?;
    let pcp = u8::try_from(qos)
        .ok()
        .filter(|q| *q <= 7)
        .ok_or(NicSwitchError::QosOutOfRange(qos))?;
    if proto != VlanProto::Dot1Q {
        return Err(NicSwitchError::VlanProtoNotSupported);
    }
    Ok((vid != 0 || pcp != 0).then_some(PortVlan { vid, qos: pcp }))
}

/// Checks an admin MAC: zero clears, multicast is EINVAL.
pub fn validate_mac(mac: MacAddr) -> Result<(), NicSwitchError> {
    if mac.is_multicast() {
        return Err(NicSwitchError::MulticastMac(mac));
    }
    Ok(())
}

/// Checks `min_tx_rate`/`max_tx_rate` (0 = off; max below min is EINVAL).
pub fn validate_rates(min: u32, max: u32, uplink_mbps: u32) -> Result<(), NicSwitchError> {
    if max != 0 && max < min {
        return Err(NicSwitchError::MaxBelowMin { max, min });
    }
    if uplink_mbps != 0 {
        for rate in [max, min] {
            if rate > uplink_mbps {
                return Err(NicSwitchError::RateAboveLink {
                    rate,
                    link: uplink_mbps,
                });
            }
        }
    }
    Ok(())
}

/// The multicast reception mode a VF driver asks for (E1000_VF_SET_PROMISC's flags).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum XcastMode {
    /// Only the multicast groups of its hash list.
    #[default]
    Multi,
    /// All multicast (trusted VFs only).
    AllMulti,
    /// Everything, unicast included (trusted VFs only).
    Promisc,
}

/// A request a VF driver makes through the mailbox that the switch decides on. The
/// mailbox agent asks [`super::Switch::check_vf_request`] (to ACK or NACK without
/// applying) or [`super::Switch::vf_request`] (to apply).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VfRequest {
    /// E1000_VF_SET_MAC_ADDR: use this MAC.
    SetMac(MacAddr),
    /// E1000_VF_SET_MAC_ADDR with the MAC_FILTER_ADD flag: receive for this MAC too.
    AddUnicast(MacAddr),
    /// E1000_VF_SET_MAC_ADDR with MAC_FILTER_CLR: drop the extra unicast filters.
    ClearUnicast,
    /// E1000_VF_SET_MULTICAST: the hash list (12-bit hashes).
    SetMulticast(Vec<u16>),
    /// E1000_VF_SET_PROMISC: the multicast/promiscuous mode.
    SetXcast(XcastMode),
    /// E1000_VF_SET_VLAN: join (`add`) or leave a VLAN.
    SetVlan {
        /// VLAN ID.
        vid: u16,
        /// Join (true) or leave.
        add: bool,
    },
    /// E1000_VF_SET_LPE: the largest frame (FCS included) the VF sends and receives.
    SetMaxFrame(u32),
}
