//! The receive filter table: (MAC, VLAN) pairs, each owned by one VPort at a time or in
//! flight between two. A pair may belong to a guest (its synthetic port): then it moves
//! as a unit with the guest's other filters, and while the default VPort owns it, frames
//! matching it go to that guest's synthetic port.

use std::collections::BTreeMap;
use std::fmt;

use super::{MacAddr, NicSwitchError, SyntheticId};

/// Filters the table holds at most (the model's bound; the 82576 has 24 RAR entries but
/// nicd serves up to 255 VFs).
pub const MAX_FILTERS: usize = 4096;

/// A VPort of the switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum VPortId {
    /// The PF's default VPort: always exists, never deleted.
    Default,
    /// The VPort of VF `n`.
    Vf(u16),
}

impl fmt::Display for VPortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default => f.write_str("the default VPort"),
            Self::Vf(n) => write!(f, "the VPort of VF {n}"),
        }
    }
}

/// A receive filter: destination MAC and VLAN together (VLAN 0: untagged or VID 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FilterKey {
    /// Destination MAC.
    pub mac: MacAddr,
    /// VLAN ID.
    pub vlan: u16,
}

impl FilterKey {
    /// A filter for `mac` on `vlan`.
    pub fn new(mac: MacAddr, vlan: u16) -> Self {
        Self { mac, vlan }
    }
}

impl fmt::Display for FilterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} vlan {}", self.mac, self.vlan)
    }
}

/// Who holds a filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilterEntry {
    /// The owning VPort; `None` while in flight between VPorts.
    pub owner: Option<VPortId>,
    /// The guest (synthetic port) the filter belongs to, if any.
    pub guest: Option<SyntheticId>,
}

#[derive(Debug, Default)]
pub(crate) struct FilterTable {
    map: BTreeMap<FilterKey, FilterEntry>,
}

impl FilterTable {
    pub(crate) fn get(&self, key: &FilterKey) -> Option<&FilterEntry> {
        self.map.get(key)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&FilterKey, &FilterEntry)> {
        self.map.iter()
    }

    /// Adds `key` for `owner`; a key the same owner already holds is left as it is.
    pub(crate) fn insert(
        &mut self,
        key: FilterKey,
        entry: FilterEntry,
    ) -> Result<(), NicSwitchError> {
        match self.map.get(&key) {
            Some(e) if e.owner == entry.owner => Ok(()),
            Some(e) => Err(NicSwitchError::FilterInUse {
                key,
                owner: e.owner.unwrap_or(VPortId::Default),
            }),
            None if self.map.len() >= MAX_FILTERS => Err(NicSwitchError::FiltersFull),
            None => {
                self.map.insert(key, entry);
                Ok(())
            }
        }
    }

    pub(crate) fn remove(&mut self, key: &FilterKey) -> Option<FilterEntry> {
        self.map.remove(key)
    }

    /// Hands every filter of `guest` to `owner` (`None`: in flight) in one step.
    pub(crate) fn set_guest_owner(&mut self, guest: SyntheticId, owner: Option<VPortId>) {
        for e in self.map.values_mut().filter(|e| e.guest == Some(guest)) {
            e.owner = owner;
        }
    }

    /// Keeps only the entries `keep` accepts.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&FilterKey, &mut FilterEntry) -> bool) {
        self.map.retain(|k, e| keep(k, e));
    }

    /// The keys `owner` holds that belong to no guest.
    pub(crate) fn own_keys(&self, owner: VPortId) -> Vec<FilterKey> {
        self.map
            .iter()
            .filter(|(_, e)| e.owner == Some(owner) && e.guest.is_none())
            .map(|(k, _)| *k)
            .collect()
    }

    /// Whether `owner` holds any filter at all.
    pub(crate) fn owns_any(&self, owner: VPortId) -> bool {
        self.map.values().any(|e| e.owner == Some(owner))
    }
}
