//! Management: what nicd's API does on behalf of `ip link set DEV vf N ...`, NumVFs,
//! VPorts, synthetic ports and the failover step of moving a guest's filters.

use std::time::Duration;

use super::policy::{validate_mac, validate_port_vlan, validate_rates};
use super::rate::TokenBucket;
use super::vf::VfState;
use super::{
    FilterEntry, FilterKey, LinkChange, LinkState, MAX_SYNTHETICS, MacAddr, NicSwitchError,
    PortCounters, Switch, Synthetic, SyntheticId, VPortId, VlanProto, ns,
};

impl Switch {
    /// Sets NumVFs as `sriov_numvfs` does: more than TotalVFs is ERANGE, N>0 to M>0
    /// without going through 0 is EBUSY, and going to 0 is EBUSY while a VF still has a
    /// VPort (delete them first, as Hyper-V frees a VF only after its VPort). Enabling
    /// gives every VF the default policy and zeroed counters, and no VPort.
    pub fn set_num_vfs(&mut self, n: u16) -> Result<(), NicSwitchError> {
        let current = self.num_vfs();
        if n > self.cfg.total_vfs {
            return Err(NicSwitchError::TooManyVfs {
                requested: n,
                total: self.cfg.total_vfs,
            });
        }
        if n == current {
            return Ok(());
        }
        if n > 0 && current > 0 {
            return Err(NicSwitchError::NumVfsBusy { current });
        }
        if let Some((_, vf)) = self.vfs.iter().zip(0..current).find(|(v, _)| v.vport) {
            return Err(NicSwitchError::VportInUse { vf });
        }
        self.vfs = vec![VfState::default(); usize::from(n)];
        self.sched.resize(usize::from(n));
        Ok(())
    }

    /// Creates VF `vf`'s VPort (EEXIST if it has one). The VPort gets the filters of the
    /// VF's own MAC (admin or driver-set) where nobody holds them yet; a guest's filters
    /// stay on the default VPort until [`Self::move_guest_filters`] moves them.
    pub fn create_vport(&mut self, vf: u16) -> Result<Option<LinkChange>, NicSwitchError> {
        let uplink_up = self.uplink_up;
        let state = self.vf_mut(vf)?;
        if state.vport {
            return Err(NicSwitchError::VportExists(vf));
        }
        state.vport = true;
        let up = state.link_up(uplink_up);
        self.sync_vf_filters(vf);
        Ok(up.then_some(LinkChange { vf, up }))
    }

    /// Deletes VF `vf`'s VPort. Its own filters go; a guest's filters it still holds are
    /// left in flight (frames for them are lost and counted per MAC) until management
    /// moves them, which is what a surprise removal costs. The orderly failover moves them
    /// to the default VPort first.
    pub fn delete_vport(&mut self, vf: u16) -> Result<Option<LinkChange>, NicSwitchError> {
        let uplink_up = self.uplink_up;
        let state = self.vf_mut(vf)?;
        if !state.vport {
            return Err(NicSwitchError::NoVport(VPortId::Vf(vf)));
        }
        let was_up = state.link_up(uplink_up);
        state.vport = false;
        let owner = Some(VPortId::Vf(vf));
        self.filters.retain(|_, e| {
            if e.owner == owner && e.guest.is_some() {
                e.owner = None;
            }
            !(e.owner == owner && e.guest.is_none())
        });
        Ok(was_up.then_some(LinkChange { vf, up: false }))
    }

    /// `ip link set DEV vf N mac LLADDR`: 00:00:00:00:00:00 clears, multicast is EINVAL.
    pub fn set_vf_mac(&mut self, vf: u16, mac: MacAddr) -> Result<(), NicSwitchError> {
        validate_mac(mac)?;
        self.vf_mut(vf)?.policy.mac = mac;
        self.sync_vf_filters(vf);
        Ok(())
    }

    /// `ip link set DEV vf N vlan VID [qos Q] [proto P]`: vlan > 4095 or qos > 7 is
    /// EINVAL, 802.1ad EPROTONOSUPPORT; vlan 0 with qos 0 removes the port VLAN. Setting
    /// one makes the VF leave the VLANs its driver joined.
    pub fn set_vf_vlan(
        &mut self,
        vf: u16,
        vlan: u32,
        qos: u32,
        proto: VlanProto,
    ) -> Result<(), NicSwitchError> {
        let port_vlan = validate_port_vlan(vlan, qos, proto)?;
        let state = self.vf_mut(vf)?;
        state.policy.port_vlan = port_vlan;
        if port_vlan.is_some() {
            state.vlans.clear();
        }
        self.sync_vf_filters(vf);
        Ok(())
    }

    /// `ip link set DEV vf N min_tx_rate MIN max_tx_rate MAX` (Mbps, 0 = off): max below
    /// min is EINVAL, as are rates above the uplink and guarantees that together exceed
    /// it. `now` starts the buckets (full).
    pub fn set_vf_rate(
        &mut self,
        vf: u16,
        min: u32,
        max: u32,
        now: Duration,
    ) -> Result<(), NicSwitchError> {
        self.vf(vf)?;
        validate_rates(min, max, self.cfg.uplink_mbps)?;
        if self.cfg.uplink_mbps != 0 {
            let others: u64 = self
                .vfs
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != usize::from(vf))
                .map(|(_, v)| u64::from(v.policy.min_tx_rate))
                .sum();
            let total = others + u64::from(min);
            if total > u64::from(self.cfg.uplink_mbps) {
                return Err(NicSwitchError::MinRatesOversubscribed {
                    total,
                    link: self.cfg.uplink_mbps,
                });
            }
        }
        let now_ns = ns(now);
        let state = self.vf_mut(vf)?;
        state.policy.min_tx_rate = min;
        state.policy.max_tx_rate = max;
        state.max_rate = (max != 0).then(|| TokenBucket::for_mbps(max, now_ns));
        self.sched.set_min_rate(vf, min, now_ns);
        Ok(())
    }

    /// `ip link set DEV vf N rate TXRATE` (the legacy form): max_tx_rate, min unchanged.
    pub fn set_vf_tx_rate(
        &mut self,
        vf: u16,
        rate: u32,
        now: Duration,
    ) -> Result<(), NicSwitchError> {
        let min = self.vf(vf)?.policy.min_tx_rate;
        self.set_vf_rate(vf, min, rate, now)
    }

    /// `ip link set DEV vf N spoofchk on|off`.
    pub fn set_vf_spoofchk(&mut self, vf: u16, on: bool) -> Result<(), NicSwitchError> {
        self.vf_mut(vf)?.policy.spoofchk = on;
        Ok(())
    }

    /// `ip link set DEV vf N trust on|off`. Revoking trust takes back what only trust
    /// allowed: extra unicast filters, all-multicast and promiscuous mode, and a MAC the
    /// driver set over the admin MAC.
    pub fn set_vf_trust(&mut self, vf: u16, on: bool) -> Result<(), NicSwitchError> {
        let state = self.vf_mut(vf)?;
        state.policy.trust = on;
        if !on {
            state.extra_macs.clear();
            state.xcast = super::XcastMode::Multi;
            if !state.policy.mac.is_zero() {
                state.driver_mac = MacAddr::ZERO;
            }
            self.sync_vf_filters(vf);
        }
        Ok(())
    }

    /// `ip link set DEV vf N state auto|enable|disable`; returns the change of the VF's
    /// visible link, if any, for the VF model to raise.
    pub fn set_vf_link_state(
        &mut self,
        vf: u16,
        state: LinkState,
    ) -> Result<Option<LinkChange>, NicSwitchError> {
        let uplink_up = self.uplink_up;
        let v = self.vf_mut(vf)?;
        let before = v.link_up(uplink_up);
        v.policy.link_state = state;
        let up = v.link_up(uplink_up);
        Ok((up != before).then_some(LinkChange { vf, up }))
    }

    /// The uplink's carrier changed; returns the VFs whose visible link changed with it
    /// (those in `auto`).
    pub fn set_uplink_up(&mut self, up: bool) -> Vec<LinkChange> {
        let before: Vec<bool> = self.vfs.iter().map(|v| v.link_up(self.uplink_up)).collect();
        self.uplink_up = up;
        self.vfs
            .iter()
            .zip(before)
            .zip(0..)
            .filter_map(|((v, was), i)| {
                let now = v.link_up(up);
                (now != was).then_some(LinkChange { vf: i, up: now })
            })
            .collect()
    }

    /// Gives the PF (the default VPort's own endpoint) a unicast filter for `mac` on
    /// VLAN 0.
    pub fn add_pf_mac(&mut self, mac: MacAddr) -> Result<(), NicSwitchError> {
        validate_mac(mac)?;
        self.filters.insert(
            FilterKey::new(mac, 0),
            FilterEntry {
                owner: Some(VPortId::Default),
                guest: None,
            },
        )
    }

    /// Registers a guest's synthetic port: its filter (`mac`, `vlan`) is created on the
    /// default VPort, tagged as the guest's. `vlan` non-zero makes the port an access
    /// port of that VLAN (tag stripped towards the guest, inserted from it). A key held
    /// by a VF's own filter is taken over (the guest's filter is the one that moves).
    pub fn add_synthetic(
        &mut self,
        mac: MacAddr,
        vlan: u16,
    ) -> Result<SyntheticId, NicSwitchError> {
        validate_mac(mac)?;
        if mac.is_zero() {
            return Err(NicSwitchError::InvalidMac(mac));
        }
        if vlan > super::frame::VLAN_VID_MAX {
            return Err(NicSwitchError::VlanOutOfRange(u32::from(vlan)));
        }
        if self.synthetics.len() >= MAX_SYNTHETICS {
            return Err(NicSwitchError::SyntheticsFull);
        }
        let key = FilterKey::new(mac, vlan);
        if let Some(e) = self.filters.get(&key)
            && (e.guest.is_some() || e.owner == Some(VPortId::Default))
        {
            return Err(NicSwitchError::FilterInUse {
                key,
                owner: e.owner.unwrap_or(VPortId::Default),
            });
        }
        let id = loop {
            let id = SyntheticId(self.next_synthetic);
            self.next_synthetic = self.next_synthetic.wrapping_add(1);
            if !self.synthetics.contains_key(&id) {
                break id;
            }
        };
        let owner = match self.filters.get(&key) {
            Some(e) => e.owner,
            None => Some(VPortId::Default),
        };
        self.filters.remove(&key);
        self.filters.insert(
            key,
            FilterEntry {
                owner,
                guest: Some(id),
            },
        )?;
        self.synthetics.insert(
            id,
            Synthetic {
                mac,
                vlan,
                counters: PortCounters::default(),
            },
        );
        Ok(id)
    }

    /// Removes a synthetic port and its filters (wherever they are; a VF holding the key
    /// for its own MAC gets it back at its next filter change).
    pub fn remove_synthetic(&mut self, id: SyntheticId) -> Result<(), NicSwitchError> {
        self.synthetics
            .remove(&id)
            .ok_or(NicSwitchError::NoSuchSynthetic(id.0))?;
        self.filters.retain(|_, e| e.guest != Some(id));
        for vf in 0..self.num_vfs() {
            self.sync_vf_filters(vf);
        }
        self.captures.remove(&super::PortId::Synthetic(id));
        Ok(())
    }

    /// The failover step "move the MAC/VLAN filters": every filter of guest `id` goes to
    /// `to` in one step, so a frame is delivered by the old owner before and by the new
    /// one after, and none is lost in between. `to` must exist (ENOENT).
    pub fn move_guest_filters(
        &mut self,
        id: SyntheticId,
        to: VPortId,
    ) -> Result<(), NicSwitchError> {
        if !self.synthetics.contains_key(&id) {
            return Err(NicSwitchError::NoSuchSynthetic(id.0));
        }
        if let VPortId::Vf(vf) = to
            && !self.vf(vf)?.vport
        {
            return Err(NicSwitchError::NoVport(to));
        }
        self.filters.set_guest_owner(id, Some(to));
        Ok(())
    }

    /// Takes guest `id`'s filters from their VPort without giving them to another (the
    /// first half of a move done as two OIDs): until [`Self::move_guest_filters`] claims
    /// them, frames for the guest are lost and counted per MAC as lost in flight.
    pub fn release_guest_filters(&mut self, id: SyntheticId) -> Result<(), NicSwitchError> {
        if !self.synthetics.contains_key(&id) {
            return Err(NicSwitchError::NoSuchSynthetic(id.0));
        }
        self.filters.set_guest_owner(id, None);
        Ok(())
    }

    /// The MAC and VLAN of synthetic port `id`.
    pub fn synthetic(&self, id: SyntheticId) -> Option<(MacAddr, u16)> {
        self.synthetics.get(&id).map(|s| (s.mac, s.vlan))
    }

    /// Whether synthetic port `id` is the guest's live path: the default VPort holds its
    /// filter.
    pub fn synthetic_active(&self, id: SyntheticId) -> bool {
        self.synthetics.get(&id).is_some_and(|s| {
            self.filters
                .get(&FilterKey::new(s.mac, s.vlan))
                .is_some_and(|e| e.owner == Some(VPortId::Default))
        })
    }

    /// The filters VF `vf`'s VPort holds (its own and guests').
    pub fn vport_filters(&self, vport: VPortId) -> Vec<FilterKey> {
        let mut keys = self.filters.own_keys(vport);
        keys.extend(
            self.filters
                .iter()
                .filter(|(_, e)| e.owner == Some(vport) && e.guest.is_some())
                .map(|(k, _)| *k),
        );
        keys.sort();
        keys
    }

    /// Whether `vport` holds any filter (a VPort without filters receives only the
    /// broadcast and multicast it subscribed to).
    pub fn vport_has_filters(&self, vport: VPortId) -> bool {
        self.filters.owns_any(vport)
    }
}
