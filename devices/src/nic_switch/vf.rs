//! A VF's state in the switch and the requests its driver makes through the mailbox:
//! what trust allows, what a port VLAN forbids, and how its filters follow its MACs.

use std::collections::BTreeSet;

use super::policy::{
    DEFAULT_MAX_FRAME_SIZE, MAX_EXTRA_UNICAST, MAX_FRAME_SIZE_MAX, MAX_FRAME_SIZE_MIN,
    MAX_MC_HASHES, MAX_VF_VLANS,
};
use super::rate::TokenBucket;
use super::{
    FilterEntry, FilterKey, LinkState, MacAddr, NicSwitchError, PortCounters, Switch,
    TrustedAction, VPortId, VfPolicy, VfRequest, XcastMode,
};

/// One VF as the switch holds it.
#[derive(Debug, Clone)]
pub(crate) struct VfState {
    pub(crate) policy: VfPolicy,
    pub(crate) vport: bool,
    /// The MAC the VF driver set itself (used while no admin MAC is set).
    pub(crate) driver_mac: MacAddr,
    pub(crate) extra_macs: BTreeSet<MacAddr>,
    pub(crate) mc_hashes: BTreeSet<u16>,
    pub(crate) xcast: XcastMode,
    pub(crate) vlans: BTreeSet<u16>,
    pub(crate) max_frame: u32,
    pub(crate) counters: PortCounters,
    pub(crate) max_rate: Option<TokenBucket>,
}

impl Default for VfState {
    fn default() -> Self {
        Self {
            policy: VfPolicy::default(),
            vport: false,
            driver_mac: MacAddr::ZERO,
            extra_macs: BTreeSet::new(),
            mc_hashes: BTreeSet::new(),
            xcast: XcastMode::Multi,
            vlans: BTreeSet::new(),
            max_frame: DEFAULT_MAX_FRAME_SIZE,
            counters: PortCounters::default(),
            max_rate: None,
        }
    }
}

impl VfState {
    /// The MAC the VF uses: the admin MAC if set, else its driver's.
    pub(crate) fn mac(&self) -> MacAddr {
        if self.policy.mac.is_zero() {
            self.driver_mac
        } else {
            self.policy.mac
        }
    }

    pub(crate) fn link_up(&self, uplink_up: bool) -> bool {
        self.vport
            && match self.policy.link_state {
                LinkState::Auto => uplink_up,
                LinkState::Enable => true,
                LinkState::Disable => false,
            }
    }

    /// Whether the VF's VPort is in VLAN `vlan`.
    pub(crate) fn in_vlan(&self, vlan: u16) -> bool {
        match self.policy.port_vlan {
            Some(pv) => pv.vid == vlan,
            None => vlan == 0 || self.vlans.contains(&vlan),
        }
    }

    /// Whether the VF receives multicast `dst` (in its VLAN).
    pub(crate) fn wants_multicast(&self, dst: MacAddr) -> bool {
        dst.is_broadcast()
            || self.xcast != XcastMode::Multi
            || self.mc_hashes.contains(&dst.mc_hash())
    }

    /// The filters the VF's MACs and VLANs call for.
    fn wanted_keys(&self) -> BTreeSet<FilterKey> {
        let macs = std::iter::once(self.mac())
            .filter(|m| !m.is_zero())
            .chain(self.extra_macs.iter().copied());
        let vlans: Vec<u16> = match self.policy.port_vlan {
            Some(pv) => vec![pv.vid],
            None => std::iter::once(0)
                .chain(self.vlans.iter().copied())
                .collect(),
        };
        macs.flat_map(|m| vlans.iter().map(move |&v| FilterKey::new(m, v)))
            .collect()
    }

    /// Forgets what the VF driver asked for (its reset, FLR): the admin policy stays.
    pub(crate) fn driver_reset(&mut self) {
        self.driver_mac = MacAddr::ZERO;
        self.extra_macs.clear();
        self.mc_hashes.clear();
        self.xcast = XcastMode::Multi;
        self.vlans.clear();
        self.max_frame = DEFAULT_MAX_FRAME_SIZE;
    }
}

impl Switch {
    /// Brings VF `vf`'s own filters (those of no guest) in line with its MACs and VLANs:
    /// stale ones go, missing ones are added where nobody else holds the key (a key held
    /// by another VPort, or by a guest, stays where it is: moving a guest's filters is
    /// management's explicit step).
    pub(crate) fn sync_vf_filters(&mut self, vf: u16) {
        let Some(state) = self.vfs.get(usize::from(vf)) else {
            return;
        };
        let owner = VPortId::Vf(vf);
        let wanted = if state.vport {
            state.wanted_keys()
        } else {
            BTreeSet::new()
        };
        self.filters
            .retain(|k, e| !(e.owner == Some(owner) && e.guest.is_none() && !wanted.contains(k)));
        for key in wanted {
            let entry = FilterEntry {
                owner: Some(owner),
                guest: None,
            };
            if let Err(NicSwitchError::FiltersFull) = self.filters.insert(key, entry) {
                crate::warn_ratelimited!("nic switch: filter table full, VF {vf} lacks {key}");
            }
        }
    }

    /// Whether the switch would grant `req` from VF `vf`'s driver, without applying it:
    /// what the mailbox agent asks to decide between ACK and NACK.
    pub fn check_vf_request(&self, vf: u16, req: &VfRequest) -> Result<(), NicSwitchError> {
        let state = self.vf(vf)?;
        let trusted = state.policy.trust;
        let refuse = |action| Err(NicSwitchError::NotTrusted { vf, action });
        match req {
            VfRequest::SetMac(mac) => {
                super::validate_mac(*mac)?;
                if mac.is_zero() {
                    return Err(NicSwitchError::InvalidMac(*mac));
                }
                // An untrusted VF keeps the MAC the administrator gave it.
                if !trusted && !state.policy.mac.is_zero() && *mac != state.policy.mac {
                    return refuse(TrustedAction::ChangeMac);
                }
            }
            VfRequest::AddUnicast(mac) => {
                if !trusted {
                    return refuse(TrustedAction::AddUnicastFilter);
                }
                super::validate_mac(*mac)?;
                if mac.is_zero() {
                    return Err(NicSwitchError::InvalidMac(*mac));
                }
                if state.extra_macs.len() >= MAX_EXTRA_UNICAST && !state.extra_macs.contains(mac) {
                    return Err(NicSwitchError::FiltersFull);
                }
            }
            VfRequest::ClearUnicast | VfRequest::SetMulticast(_) => {}
            VfRequest::SetXcast(XcastMode::Multi) => {}
            VfRequest::SetXcast(XcastMode::AllMulti) if !trusted => {
                return refuse(TrustedAction::AllMulticast);
            }
            VfRequest::SetXcast(XcastMode::Promisc) if !trusted => {
                return refuse(TrustedAction::Promiscuous);
            }
            VfRequest::SetXcast(_) => {}
            VfRequest::SetVlan { vid, add } => {
                if state.policy.port_vlan.is_some() {
                    return Err(NicSwitchError::PortVlanSet(vf));
                }
                if *vid > super::frame::VLAN_VID_MAX {
                    return Err(NicSwitchError::VlanOutOfRange(u32::from(*vid)));
                }
                if *add && state.vlans.len() >= MAX_VF_VLANS && !state.vlans.contains(vid) {
                    return Err(NicSwitchError::FiltersFull);
                }
            }
            VfRequest::SetMaxFrame(size) => {
                if !(MAX_FRAME_SIZE_MIN..=MAX_FRAME_SIZE_MAX).contains(size) {
                    return Err(NicSwitchError::MaxFrameOutOfRange(*size));
                }
            }
        }
        Ok(())
    }

    /// Applies `req` from VF `vf`'s driver if [`Self::check_vf_request`] grants it.
    pub fn vf_request(&mut self, vf: u16, req: VfRequest) -> Result<(), NicSwitchError> {
        self.check_vf_request(vf, &req)?;
        let state = self.vf_mut(vf)?;
        let resync = match req {
            VfRequest::SetMac(mac) => {
                state.driver_mac = mac;
                true
            }
            VfRequest::AddUnicast(mac) => state.extra_macs.insert(mac),
            VfRequest::ClearUnicast => {
                let had = !state.extra_macs.is_empty();
                state.extra_macs.clear();
                had
            }
            VfRequest::SetMulticast(hashes) => {
                state.mc_hashes = hashes
                    .into_iter()
                    .take(MAX_MC_HASHES)
                    .map(|h| h & 0xfff)
                    .collect();
                false
            }
            VfRequest::SetXcast(mode) => {
                state.xcast = mode;
                false
            }
            VfRequest::SetVlan { vid, add } => {
                if add {
                    state.vlans.insert(vid)
                } else {
                    state.vlans.remove(&vid)
                }
            }
            VfRequest::SetMaxFrame(size) => {
                state.max_frame = size;
                false
            }
        };
        if resync {
            self.sync_vf_filters(vf);
        }
        Ok(())
    }

    /// The VF driver reset (mailbox RESET, CTRL.RST, FLR): what it asked for is forgotten,
    /// the admin policy and the counters stay.
    pub fn vf_reset(&mut self, vf: u16) -> Result<(), NicSwitchError> {
        self.vf_mut(vf)?.driver_reset();
        self.sync_vf_filters(vf);
        Ok(())
    }

    /// The MAC VF `vf` uses (the admin MAC, else the one its driver set): what the
    /// mailbox RESET reply carries.
    pub fn vf_mac(&self, vf: u16) -> Result<MacAddr, NicSwitchError> {
        Ok(self.vf(vf)?.mac())
    }

    /// VF `vf`'s policy.
    pub fn vf_policy(&self, vf: u16) -> Result<&VfPolicy, NicSwitchError> {
        Ok(&self.vf(vf)?.policy)
    }

    /// The largest frame (FCS included, SET_LPE's unit) VF `vf` sends and receives.
    pub fn vf_max_frame(&self, vf: u16) -> Result<u32, NicSwitchError> {
        Ok(self.vf(vf)?.max_frame)
    }

    /// Whether VF `vf` has its VPort.
    pub fn vf_has_vport(&self, vf: u16) -> bool {
        self.vfs.get(usize::from(vf)).is_some_and(|v| v.vport)
    }
}
