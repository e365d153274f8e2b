//! Ethernet framing the switch needs: addresses, the 802.1Q tag (read, insert, strip) and
//! the 82576's multicast hash. Frames are plain byte slices without FCS, as TAP devices,
//! seqpacket sockets and the VF's descriptors carry them.

use std::fmt;

/// Length of an untagged Ethernet header.
pub const ETH_HLEN: usize = 14;
/// Length of an 802.1Q tag.
pub const VLAN_HLEN: usize = 4;
/// Length of the frame check sequence, which frames here do not carry.
pub const ETH_FCS_LEN: usize = 4;
/// TPID of an 802.1Q (customer) tag.
pub const TPID_8021Q: u16 = 0x8100;
/// TPID of an 802.1ad (service) tag.
pub const TPID_8021AD: u16 = 0x88a8;
/// The pre-standard QinQ TPID some switches still send.
pub const TPID_QINQ_LEGACY: u16 = 0x9100;
/// Largest VLAN ID an 802.1Q tag can carry.
pub const VLAN_VID_MAX: u16 = 4095;

/// A 48-bit MAC address.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// 00:00:00:00:00:00, which clears an admin MAC.
    pub const ZERO: MacAddr = MacAddr([0; 6]);
    /// ff:ff:ff:ff:ff:ff.
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

    /// Whether this is the all-zero address.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }

    /// Whether this is the broadcast address.
    pub fn is_broadcast(&self) -> bool {
        self.0 == [0xff; 6]
    }

    /// Whether the group bit is set (multicast, broadcast included).
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 != 0
    }

    /// The 12-bit multicast table hash the 82576 (and igbvf's SET_MULTICAST list) uses
    /// with MO = 0: bits 4..15 of the address's last two bytes.
    pub fn mc_hash(&self) -> u16 {
        (u16::from(self.0[4] >> 4) | (u16::from(self.0[5]) << 4)) & 0xfff
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for MacAddr {
    type Err = ParseMacError;

    /// Parses `aa:bb:cc:dd:ee:ff` (hex, either case), as `ip link` takes it.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let part = parts.next().ok_or(ParseMacError)?;
            if part.is_empty() || part.len() > 2 {
                return Err(ParseMacError);
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| ParseMacError)?;
        }
        if parts.next().is_some() {
            return Err(ParseMacError);
        }
        Ok(MacAddr(out))
    }
}

/// A string that is not a MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a MAC address (expected aa:bb:cc:dd:ee:ff)")]
pub struct ParseMacError;

/// An 802.1Q tag's TCI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VlanTag {
    /// VLAN ID (12 bits).
    pub vid: u16,
    /// Priority code point (3 bits).
    pub pcp: u8,
    /// Drop eligible indicator.
    pub dei: bool,
}

impl VlanTag {
    fn tci(self) -> u16 {
        (u16::from(self.pcp & 7) << 13) | (u16::from(self.dei) << 12) | (self.vid & 0xfff)
    }

    fn from_tci(tci: u16) -> Self {
        Self {
            vid: tci & 0xfff,
            pcp: ((tci >> 13) & 7) as u8,
            dei: tci & 0x1000 != 0,
        }
    }
}

/// What the switch reads from a frame's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthHeader {
    /// Destination address.
    pub dst: MacAddr,
    /// Source address.
    pub src: MacAddr,
    /// The 802.1Q tag, if the frame has one (TPID 0x8100).
    pub tag: Option<VlanTag>,
    /// Whether the frame has any VLAN tag at all (802.1Q, 802.1ad or 0x9100).
    pub any_tag: bool,
}

impl EthHeader {
    /// Reads the header; `None` for a frame too short to hold one (or its tag).
    pub fn parse(frame: &[u8]) -> Option<Self> {
        let hdr = frame.get(..ETH_HLEN)?;
        let mac = |at: usize| {
            let mut m = [0u8; 6];
            m.copy_from_slice(&hdr[at..at + 6]);
            MacAddr(m)
        };
        let tpid = u16::from_be_bytes([hdr[12], hdr[13]]);
        let any_tag = matches!(tpid, TPID_8021Q | TPID_8021AD | TPID_QINQ_LEGACY);
        let tag = if tpid == TPID_8021Q {
            let tci = frame.get(ETH_HLEN..ETH_HLEN + 2)?;
            Some(VlanTag::from_tci(u16::from_be_bytes([tci[0], tci[1]])))
        } else if any_tag && frame.len() < ETH_HLEN + VLAN_HLEN {
            return None;
        } else {
            None
        };
        Some(Self {
            dst: mac(0),
            src: mac(6),
            tag,
            any_tag,
        })
    }

    /// The VLAN the switch files the frame under: the 802.1Q VID, or 0 for an untagged
    /// (or priority-tagged) frame, as NDIS reads a MAC-only filter.
    pub fn vlan(&self) -> u16 {
        self.tag.map_or(0, |t| t.vid)
    }
}

/// `frame` with an 802.1Q tag inserted after the source address.
pub fn insert_tag(frame: &[u8], tag: VlanTag) -> Vec<u8> {
    let split = ETH_HLEN - 2;
    let mut out = Vec::with_capacity(frame.len() + VLAN_HLEN);
    out.extend_from_slice(&frame[..split.min(frame.len())]);
    out.extend_from_slice(&TPID_8021Q.to_be_bytes());
    out.extend_from_slice(&tag.tci().to_be_bytes());
    out.extend_from_slice(frame.get(split..).unwrap_or(&[]));
    out
}

/// `frame` without its outer 802.1Q tag (unchanged if it has none).
pub fn strip_tag(frame: &[u8]) -> Vec<u8> {
    let split = ETH_HLEN - 2;
    match EthHeader::parse(frame) {
        Some(h) if h.tag.is_some() => {
            let mut out = Vec::with_capacity(frame.len() - VLAN_HLEN);
            out.extend_from_slice(&frame[..split]);
            out.extend_from_slice(&frame[split + VLAN_HLEN..]);
            out
        }
        _ => frame.to_vec(),
    }
}
