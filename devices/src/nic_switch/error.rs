//! The switch's one error type, with the errno an `ip link set` user would see.

use super::{FilterKey, MacAddr, PortId, VPortId};

/// Something a VF driver may ask for that trust governs (see [`super::VfRequest`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrustedAction {
    /// Replace the MAC the administrator set.
    ChangeMac,
    /// Add a unicast filter beyond its MAC.
    AddUnicastFilter,
    /// Receive all multicast.
    AllMulticast,
    /// Receive everything (unicast promiscuous).
    Promiscuous,
}

impl std::fmt::Display for TrustedAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::ChangeMac => "change its MAC address",
            Self::AddUnicastFilter => "add unicast filters",
            Self::AllMulticast => "enter all-multicast mode",
            Self::Promiscuous => "enter promiscuous mode",
        })
    }
}

/// Why a management or VF request was refused.
#[derive(Debug, thiserror::Error)]
pub enum NicSwitchError {
    /// The VF index is not below the number of enabled VFs (EINVAL, as igb returns).
    #[error("VF {vf} does not exist ({num_vfs} VFs enabled)")]
    NoSuchVf {
        /// The VF asked for.
        vf: u16,
        /// How many VFs are enabled.
        num_vfs: u16,
    },
    /// `vlan` above 4095 (EINVAL).
    #[error("VLAN ID {0} out of range (0-4095)")]
    VlanOutOfRange(u32),
    /// `qos` above 7 (EINVAL).
    #[error("VLAN QoS {0} out of range (0-7)")]
    QosOutOfRange(u32),
    /// `proto 802.1ad` (EPROTONOSUPPORT): the 82576 inserts 802.1Q tags only.
    #[error("VLAN protocol 802.1ad is not supported")]
    VlanProtoNotSupported,
    /// A multicast address as an admin MAC or filter (EINVAL).
    #[error("{0} is a multicast address")]
    MulticastMac(MacAddr),
    /// The all-zero address where a station address is needed (EINVAL).
    #[error("{0} is not a valid station address")]
    InvalidMac(MacAddr),
    /// `max_tx_rate` non-zero and below `min_tx_rate` (EINVAL).
    #[error("max_tx_rate {max} Mbps is below min_tx_rate {min} Mbps")]
    MaxBelowMin {
        /// Requested max_tx_rate.
        max: u32,
        /// Requested min_tx_rate.
        min: u32,
    },
    /// A rate above the uplink's speed (EINVAL, as igb returns).
    #[error("rate {rate} Mbps exceeds the uplink's {link} Mbps")]
    RateAboveLink {
        /// Requested rate.
        rate: u32,
        /// Uplink speed.
        link: u32,
    },
    /// The min_tx_rate guarantees of all VFs would exceed the uplink (EINVAL).
    #[error("min_tx_rate guarantees would total {total} Mbps, more than the uplink's {link} Mbps")]
    MinRatesOversubscribed {
        /// Sum of the guarantees with this request.
        total: u64,
        /// Uplink speed.
        link: u32,
    },
    /// More VFs than TotalVFs (ERANGE).
    #[error("{requested} VFs requested, the adapter has {total}")]
    TooManyVfs {
        /// Requested NumVFs.
        requested: u16,
        /// TotalVFs.
        total: u16,
    },
    /// NumVFs changed from N>0 to M>0 without going through 0 (EBUSY).
    #[error("{current} VFs are enabled: disable them (numvfs 0) first")]
    NumVfsBusy {
        /// VFs enabled now.
        current: u16,
    },
    /// VFs cannot be disabled while one still has a VPort (EBUSY).
    #[error("VF {vf} still has a VPort")]
    VportInUse {
        /// The VF with a VPort.
        vf: u16,
    },
    /// The VF already has its VPort (EEXIST).
    #[error("VF {0} already has a VPort")]
    VportExists(u16),
    /// The VF has no VPort (ENOENT).
    #[error("{0} does not exist")]
    NoVport(VPortId),
    /// The filter belongs to another VPort (EADDRINUSE).
    #[error("filter {key} belongs to {owner}")]
    FilterInUse {
        /// The filter.
        key: FilterKey,
        /// Its owner.
        owner: VPortId,
    },
    /// The filter table or a VF's share of it is full (ENOSPC).
    #[error("no room for another receive filter")]
    FiltersFull,
    /// An untrusted VF asked for what only trusted VFs may do (EPERM).
    #[error("VF {vf} is not trusted to {action}")]
    NotTrusted {
        /// The VF.
        vf: u16,
        /// What it asked for.
        action: TrustedAction,
    },
    /// A VF with a port VLAN asked to join a VLAN itself (EPERM).
    #[error("VF {0} has a port VLAN; its own VLAN requests are refused")]
    PortVlanSet(u16),
    /// SET_LPE with a size the 82576 cannot take (EINVAL).
    #[error("max frame size {0} out of range")]
    MaxFrameOutOfRange(u32),
    /// No synthetic port with this id (ENOENT).
    #[error("synthetic port {0} does not exist")]
    NoSuchSynthetic(u16),
    /// Too many synthetic ports (ENOSPC).
    #[error("no room for another synthetic port")]
    SyntheticsFull,
    /// A capture of this port is already running (EBUSY).
    #[error("a capture of {0} is already running")]
    CaptureRunning(PortId),
    /// No capture of this port is running (ENOENT).
    #[error("no capture of {0} is running")]
    NoCapture(PortId),
    /// Writing the capture failed; it was stopped (EIO).
    #[error("capture of {port}")]
    Capture {
        /// The captured port.
        port: PortId,
        /// The write error.
        #[source]
        source: std::io::Error,
    },
}

impl NicSwitchError {
    /// The errno (positive) the kernel interface would return for this refusal.
    pub fn errno(&self) -> i32 {
        match self {
            Self::NoSuchVf { .. }
            | Self::VlanOutOfRange(_)
            | Self::QosOutOfRange(_)
            | Self::MulticastMac(_)
            | Self::InvalidMac(_)
            | Self::MaxBelowMin { .. }
            | Self::RateAboveLink { .. }
            | Self::MinRatesOversubscribed { .. }
            | Self::MaxFrameOutOfRange(_) => libc::EINVAL,
            Self::VlanProtoNotSupported => libc::EPROTONOSUPPORT,
            Self::TooManyVfs { .. } => libc::ERANGE,
            Self::NumVfsBusy { .. } | Self::VportInUse { .. } | Self::CaptureRunning(_) => {
                libc::EBUSY
            }
            Self::VportExists(_) => libc::EEXIST,
            Self::NoVport(_) | Self::NoSuchSynthetic(_) | Self::NoCapture(_) => libc::ENOENT,
            Self::FilterInUse { .. } => libc::EADDRINUSE,
            Self::FiltersFull | Self::SyntheticsFull => libc::ENOSPC,
            Self::NotTrusted { .. } | Self::PortVlanSet(_) => libc::EPERM,
            Self::Capture { .. } => libc::EIO,
        }
    }
}
