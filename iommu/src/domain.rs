//! An address-translation domain: non-overlapping IOVA ranges mapped to guest-physical
//! addresses with permissions, kept in a BTreeMap keyed by range start. Ends are
//! inclusive, so a mapping may end at u64::MAX, and no arithmetic on them can overflow.

use std::collections::BTreeMap;
use std::fmt;

/// Access rights of a mapping, and the kind of an access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Perm {
    /// The device may read.
    pub read: bool,
    /// The device may write.
    pub write: bool,
}

impl Perm {
    /// Read only.
    pub const R: Perm = Perm {
        read: true,
        write: false,
    };
    /// Write only.
    pub const W: Perm = Perm {
        read: false,
        write: true,
    };
    /// Read and write.
    pub const RW: Perm = Perm {
        read: true,
        write: true,
    };

    /// Whether a mapping with these rights allows `access`.
    pub fn allows(self, access: Perm) -> bool {
        (!access.read || self.read) && (!access.write || self.write)
    }
}

impl fmt::Display for Perm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match (self.read, self.write) {
            (true, true) => "rw",
            (true, false) => "r",
            (false, true) => "w",
            (false, false) => "-",
        })
    }
}

/// One mapping: `[start, end]` (inclusive) of IOVA space to `phys`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mapping {
    /// First IOVA.
    pub start: u64,
    /// Last IOVA (inclusive).
    pub end: u64,
    /// Guest-physical address of `start`.
    pub phys: u64,
    /// Rights.
    pub perm: Perm,
}

impl Mapping {
    /// The guest-physical address of `iova`, which must lie in the mapping.
    pub fn translate(&self, iova: u64) -> u64 {
        self.phys.wrapping_add(iova - self.start)
    }
}

/// Why a map or unmap was refused (the virtio-iommu status it becomes in brackets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    /// start > end, or a physical range that wraps [INVAL].
    #[error("invalid range {start:#x}..={end:#x}")]
    InvalidRange {
        /// Start.
        start: u64,
        /// End.
        end: u64,
    },
    /// The new range overlaps a mapping [INVAL].
    #[error("{start:#x}..={end:#x} overlaps the mapping at {existing:#x}")]
    Overlap {
        /// Start.
        start: u64,
        /// End.
        end: u64,
        /// Start of the mapping in the way.
        existing: u64,
    },
    /// The unmap would split a mapping [RANGE]; nothing was removed.
    #[error("unmapping {start:#x}..={end:#x} would split the mapping at {existing:#x}")]
    Split {
        /// Start.
        start: u64,
        /// End.
        end: u64,
        /// Start of the mapping that would be split.
        existing: u64,
    },
}

/// A domain's mappings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Domain {
    maps: BTreeMap<u64, Mapping>,
}

impl Domain {
    /// An empty domain.
    pub fn new() -> Self {
        Self::default()
    }

    /// The mappings, by start.
    pub fn mappings(&self) -> impl Iterator<Item = &Mapping> {
        self.maps.values()
    }

    /// The mapping containing `iova`.
    pub fn lookup(&self, iova: u64) -> Option<&Mapping> {
        self.maps
            .range(..=iova)
            .next_back()
            .map(|(_, m)| m)
            .filter(|m| iova <= m.end)
    }

    /// Mappings intersecting `[start, end]`, in order.
    fn intersecting(&self, start: u64, end: u64) -> impl Iterator<Item = &Mapping> {
        // The one that starts before `start` may still reach into the range.
        let before = self.lookup(start).filter(|m| m.start < start);
        before
            .into_iter()
            .chain(self.maps.range(start..=end).map(|(_, m)| m))
    }

    /// Maps `[start, end]` to `phys` (virtio-iommu MAP): refused if it overlaps anything.
    pub fn map(
        &mut self,
        start: u64,
        end: u64,
        phys: u64,
        perm: Perm,
    ) -> Result<Mapping, MapError> {
        if start > end || phys.checked_add(end - start).is_none() {
            return Err(MapError::InvalidRange { start, end });
        }
        if let Some(m) = self.intersecting(start, end).next() {
            return Err(MapError::Overlap {
                start,
                end,
                existing: m.start,
            });
        }
        let m = Mapping {
            start,
            end,
            phys,
            perm,
        };
        self.maps.insert(start, m);
        Ok(m)
    }

    /// Removes every mapping inside `[start, end]` (virtio-iommu UNMAP). A mapping that
    /// the range covers only in part makes the whole request fail with nothing removed.
    pub fn unmap(&mut self, start: u64, end: u64) -> Result<Vec<Mapping>, MapError> {
        if start > end {
            return Err(MapError::InvalidRange { start, end });
        }
        let hit: Vec<Mapping> = self.intersecting(start, end).copied().collect();
        if let Some(m) = hit.iter().find(|m| m.start < start || m.end > end) {
            return Err(MapError::Split {
                start,
                end,
                existing: m.start,
            });
        }
        for m in &hit {
            self.maps.remove(&m.start);
        }
        Ok(hit)
    }

    /// Removes everything.
    pub fn clear(&mut self) -> Vec<Mapping> {
        std::mem::take(&mut self.maps).into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_lookup_and_overlap() {
        let mut d = Domain::new();
        d.map(0x1000, 0x1fff, 0x8000, Perm::RW).unwrap();
        d.map(0x3000, 0x3fff, 0x9000, Perm::R).unwrap();
        assert_eq!(d.lookup(0x1abc).unwrap().translate(0x1abc), 0x8abc);
        assert!(d.lookup(0x2000).is_none());
        assert!(d.lookup(0x0fff).is_none());
        for (s, e) in [
            (0x1fff, 0x2fff),
            (0x0, 0x1000),
            (0x2000, 0x3000),
            (0x0, u64::MAX),
            (0x3800, 0x3801),
        ] {
            assert!(
                matches!(d.map(s, e, 0, Perm::R), Err(MapError::Overlap { .. })),
                "{s:#x}"
            );
        }
        d.map(0x2000, 0x2fff, 0, Perm::W).unwrap();
        assert_eq!(d.mappings().count(), 3);
    }

    #[test]
    fn inclusive_ends_at_the_top() {
        let mut d = Domain::new();
        d.map(u64::MAX - 0xfff, u64::MAX, 0x1000, Perm::RW).unwrap();
        assert_eq!(d.lookup(u64::MAX).unwrap().translate(u64::MAX), 0x1fff);
        assert!(matches!(
            d.map(5, 4, 0, Perm::R),
            Err(MapError::InvalidRange { .. })
        ));
        assert!(matches!(
            d.map(0, 0xfff, u64::MAX, Perm::R),
            Err(MapError::InvalidRange { .. })
        ));
        assert_eq!(d.unmap(0, u64::MAX).unwrap().len(), 1);
    }

    #[test]
    fn unmap_semantics() {
        let mut d = Domain::new();
        d.map(0x1000, 0x1fff, 0, Perm::RW).unwrap();
        d.map(0x2000, 0x2fff, 0, Perm::RW).unwrap();
        d.map(0x5000, 0x5fff, 0, Perm::RW).unwrap();
        // Partial: refused, nothing removed.
        assert!(matches!(
            d.unmap(0x1800, 0x2fff),
            Err(MapError::Split {
                existing: 0x1000,
                ..
            })
        ));
        assert!(matches!(
            d.unmap(0x2000, 0x27ff),
            Err(MapError::Split { .. })
        ));
        assert_eq!(d.mappings().count(), 3);
        // A range crossing two whole mappings removes both; empty ranges are fine.
        assert_eq!(d.unmap(0x0, 0x2fff).unwrap().len(), 2);
        assert!(d.unmap(0x3000, 0x4fff).unwrap().is_empty());
        assert_eq!(d.clear().len(), 1);
    }

    #[test]
    fn permissions() {
        assert!(Perm::RW.allows(Perm::R) && Perm::RW.allows(Perm::W));
        assert!(!Perm::R.allows(Perm::W) && !Perm::W.allows(Perm::R));
        assert!(Perm::R.allows(Perm::default()));
        assert_eq!(Perm::RW.to_string(), "rw");
    }
}
