//! What `ip -s link show` prints for a VF, as text and as `ip -j` JSON, so that nicd's
//! `vmctl nic show` reads the way SR-IOV users know (iproute2's `print_vfinfo` and
//! `print_vf_stats64`, as the kernel fills IFLA_VF_* for igb: one vlan_list entry, the
//! legacy tx rate equal to max_tx_rate, spoofchk and trust always reported, no
//! query_rss).

use std::fmt::Write as _;

use super::{LinkState, MacAddr, NicSwitchError, Switch, VfStats, VlanProto};

/// Everything `ip link` shows of one VF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VfInfo {
    /// VF index.
    pub vf: u16,
    /// Its MAC (admin, else the driver's).
    pub mac: MacAddr,
    /// Port VLAN ID (0: none).
    pub vlan: u16,
    /// Port VLAN QoS.
    pub qos: u8,
    /// Port VLAN protocol.
    pub proto: VlanProto,
    /// max_tx_rate (Mbps).
    pub max_tx_rate: u32,
    /// min_tx_rate (Mbps).
    pub min_tx_rate: u32,
    /// Spoof checking.
    pub spoofchk: bool,
    /// Link state setting.
    pub link_state: LinkState,
    /// Trust.
    pub trust: bool,
    /// Counters.
    pub stats: VfStats,
}

impl Switch {
    /// What `ip link` would show of VF `vf`.
    pub fn vf_info(&self, vf: u16) -> Result<VfInfo, NicSwitchError> {
        let v = self.vf(vf)?;
        let p = &v.policy;
        Ok(VfInfo {
            vf,
            mac: v.mac(),
            vlan: p.port_vlan.map_or(0, |pv| pv.vid),
            qos: p.port_vlan.map_or(0, |pv| pv.qos),
            proto: VlanProto::Dot1Q,
            max_tx_rate: p.max_tx_rate,
            min_tx_rate: p.min_tx_rate,
            spoofchk: p.spoofchk,
            link_state: p.link_state,
            trust: p.trust,
            stats: v.counters.stats,
        })
    }
}

/// The VF's lines as `ip -s link show` prints them (with `show_stats`; as `ip link show`
/// without), trailing spaces included, without the final newline: the first line starts
/// with its four-space indent, each further line is preceded by `\n`.
pub fn vf_text(info: &VfInfo, show_stats: bool) -> String {
    let mut s = String::new();
    // write! into a String cannot fail.
    let _ = write!(
        s,
        "    vf {}     link/ether {} brd {}",
        info.vf,
        info.mac,
        MacAddr::BROADCAST
    );
    if info.vlan != 0 {
        let _ = write!(s, ", vlan {}", info.vlan);
    }
    if info.qos != 0 {
        let _ = write!(s, ", qos {}", info.qos);
    }
    if info.proto == VlanProto::Dot1Ad {
        s.push_str(", vlan protocol 802.1ad");
    }
    if info.max_tx_rate != 0 {
        let _ = write!(s, ", tx rate {} (Mbps)", info.max_tx_rate);
        let _ = write!(s, ", max_tx_rate {}Mbps", info.max_tx_rate);
    }
    if info.min_tx_rate != 0 {
        let _ = write!(s, ", min_tx_rate {}Mbps", info.min_tx_rate);
    }
    let on_off = |b: bool| if b { "on" } else { "off" };
    let _ = write!(
        s,
        ", spoof checking {}, link-state {}, trust {}",
        on_off(info.spoofchk),
        info.link_state.as_str(),
        on_off(info.trust)
    );
    if show_stats {
        let st = &info.stats;
        s.push_str("\n    RX: bytes  packets  mcast   bcast   dropped \n    ");
        for (width, v) in [
            (10, st.rx_bytes),
            (8, st.rx_packets),
            (7, st.multicast),
            (7, st.broadcast),
            (8, st.rx_dropped),
        ] {
            let _ = write!(s, "{v:>width$} ");
        }
        s.push_str("\n    TX: bytes  packets   dropped \n    ");
        for (width, v) in [(10, st.tx_bytes), (8, st.tx_packets), (8, st.tx_dropped)] {
            let _ = write!(s, "{v:>width$} ");
        }
    }
    s
}

/// One `vlan_list` entry of `ip -j` (fields only when non-zero / not 802.1Q).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VfVlanJson {
    /// VLAN ID.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
    /// QoS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qos: Option<u8>,
    /// Protocol, only when not 802.1Q.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

/// `rate` of `ip -j`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VfRateJson {
    /// max_tx_rate.
    pub max_tx: u32,
    /// min_tx_rate.
    pub min_tx: u32,
}

/// `stats.rx` of `ip -j -s`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VfRxStatsJson {
    /// Bytes received.
    pub bytes: u64,
    /// Packets received.
    pub packets: u64,
    /// Multicast received.
    pub multicast: u64,
    /// Broadcast received.
    pub broadcast: u64,
    /// Received frames dropped.
    pub dropped: u64,
}

/// `stats.tx` of `ip -j -s`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VfTxStatsJson {
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Sent frames dropped.
    pub dropped: u64,
}

/// `stats` of `ip -j -s`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VfStatsJson {
    /// Receive side.
    pub rx: VfRxStatsJson,
    /// Transmit side.
    pub tx: VfTxStatsJson,
}

/// One `vfinfo_list` entry of `ip -j link show`, fields in iproute2's order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VfInfoJson {
    /// VF index.
    pub vf: u16,
    /// Always "ether".
    pub link_type: &'static str,
    /// MAC.
    pub address: String,
    /// Broadcast address.
    pub broadcast: String,
    /// The port VLAN (one entry, possibly empty).
    pub vlan_list: Vec<VfVlanJson>,
    /// Legacy tx rate, when non-zero.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tx_rate: Option<u32>,
    /// Rates.
    pub rate: VfRateJson,
    /// Spoof checking.
    pub spoofchk: bool,
    /// auto, enable or disable.
    pub link_state: &'static str,
    /// Trust.
    pub trust: bool,
    /// Counters, with `-s`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats: Option<VfStatsJson>,
}

/// The VF as `ip -j [-s] link show` prints it.
pub fn vf_json(info: &VfInfo, show_stats: bool) -> VfInfoJson {
    let st = &info.stats;
    VfInfoJson {
        vf: info.vf,
        link_type: "ether",
        address: info.mac.to_string(),
        broadcast: MacAddr::BROADCAST.to_string(),
        vlan_list: vec![VfVlanJson {
            vlan: (info.vlan != 0).then_some(info.vlan),
            qos: (info.qos != 0).then_some(info.qos),
            protocol: (info.proto == VlanProto::Dot1Ad).then(|| "802.1ad".to_string()),
        }],
        tx_rate: (info.max_tx_rate != 0).then_some(info.max_tx_rate),
        rate: VfRateJson {
            max_tx: info.max_tx_rate,
            min_tx: info.min_tx_rate,
        },
        spoofchk: info.spoofchk,
        link_state: info.link_state.as_str(),
        trust: info.trust,
        stats: show_stats.then_some(VfStatsJson {
            rx: VfRxStatsJson {
                bytes: st.rx_bytes,
                packets: st.rx_packets,
                multicast: st.multicast,
                broadcast: st.broadcast,
                dropped: st.rx_dropped,
            },
            tx: VfTxStatsJson {
                tx_bytes: st.tx_bytes,
                tx_packets: st.tx_packets,
                dropped: st.tx_dropped,
            },
        }),
    }
}
