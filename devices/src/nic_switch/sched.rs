//! The uplink's transmit arbiter: which VF's pending frame goes on the wire next when
//! several want it (min_tx_rate).
//!
//! Two tiers, decided afresh for every frame while the wire is free:
//!
//! 1. **Guarantees.** A VF with a min_tx_rate of `m` Mbps has a guarantee bucket filling
//!    at `m` (holding two jumbo frames at most). VFs whose bucket is not in debt go first,
//!    round-robin among themselves; sending takes the frame's bytes from the bucket. A
//!    backlogged VF thus gets `m` whenever the guarantees fit the uplink, which setting
//!    min_tx_rate enforces (their sum may not exceed the uplink's speed).
//! 2. **Leftover.** Otherwise the wire goes by start-time fair queueing with weight
//!    `w = m` (1 for a VF without min_tx_rate): each VF carries a finish tag; the VF with
//!    the smallest `max(finish, V)` sends, its tag advances by `len / w` and the virtual
//!    time `V` becomes that start. Frames sent under tier 1 leave the tags alone, so tier
//!    2 splits only what the guarantees leave.
//!
//! With `n` VFs all saturating an uplink of `C` Mbps, VF `i` therefore gets
//! `m_i + (C - sum(m)) * w_i / sum(w)`: min 300 and 100 on 1000 Mbps give 300 + 450 = 750
//! and 100 + 150 = 250, the 3:1 split of the 600 Mbps left after the guarantees. A VF
//! whose demand is below that keeps what it asks for and the rest is shared by the others
//! (the arbiter only ever chooses among VFs with a frame waiting).

use super::rate::{MAX_FRAME, TokenBucket, mbps_to_bytes_per_s};

/// Fixed-point scale of the finish tags (bytes x SCALE / weight).
const SCALE: u128 = 1 << 20;

#[derive(Debug, Clone)]
struct VfSched {
    guarantee: Option<TokenBucket>,
    weight: u128,
    finish: u128,
}

impl Default for VfSched {
    fn default() -> Self {
        Self {
            guarantee: None,
            weight: 1,
            finish: 0,
        }
    }
}

/// Which tier a pick came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tier {
    Guaranteed,
    Shared,
}

#[derive(Debug, Default)]
pub(crate) struct UplinkScheduler {
    vfs: Vec<VfSched>,
    vtime: u128,
    last_guaranteed: Option<u16>,
}

impl UplinkScheduler {
    pub(crate) fn resize(&mut self, n: usize) {
        self.vfs.clear();
        self.vfs.resize(n, VfSched::default());
        self.last_guaranteed = None;
    }

    /// Sets VF `vf`'s min_tx_rate (0: none).
    pub(crate) fn set_min_rate(&mut self, vf: u16, mbps: u32, now_ns: u64) {
        let Some(s) = self.vfs.get_mut(usize::from(vf)) else {
            return;
        };
        s.guarantee = (mbps != 0)
            .then(|| TokenBucket::new(mbps_to_bytes_per_s(mbps), 2 * MAX_FRAME as u64, now_ns));
        s.weight = u128::from(mbps.max(1));
    }

    /// Chooses among `contenders` (VFs with a frame for the uplink); `None` if empty.
    pub(crate) fn pick(&mut self, contenders: &[u16], now_ns: u64) -> Option<(u16, Tier)> {
        let ready = |s: &mut Self, vf: u16| {
            s.vfs
                .get_mut(usize::from(vf))
                .and_then(|v| v.guarantee.as_mut())
                .is_some_and(|g| g.ready_at(now_ns).is_none())
        };
        // Tier 1: round-robin over the guaranteed VFs whose bucket is not in debt,
        // starting after the one served last.
        let after = self.last_guaranteed;
        let mut best: Option<u16> = None;
        for &vf in contenders {
            if !ready(self, vf) {
                continue;
            }
            let key = |v: u16| (after.is_some_and(|a| v <= a), v);
            if best.is_none_or(|b| key(vf) < key(b)) {
                best = Some(vf);
            }
        }
        if let Some(vf) = best {
            return Some((vf, Tier::Guaranteed));
        }
        // Tier 2: the smallest start tag.
        let vtime = self.vtime;
        contenders
            .iter()
            .map(|&vf| {
                let finish = self.vfs.get(usize::from(vf)).map_or(0, |s| s.finish);
                (finish.max(vtime), vf)
            })
            .min()
            .map(|(_, vf)| (vf, Tier::Shared))
    }

    /// Records that `vf` sent `len` bytes under `tier`.
    pub(crate) fn account(&mut self, vf: u16, len: usize, tier: Tier, now_ns: u64) {
        let vtime = self.vtime;
        let Some(s) = self.vfs.get_mut(usize::from(vf)) else {
            return;
        };
        match tier {
            Tier::Guaranteed => {
                if let Some(g) = s.guarantee.as_mut() {
                    g.consume(now_ns, len);
                }
                self.last_guaranteed = Some(vf);
            }
            Tier::Shared => {
                let start = s.finish.max(vtime);
                s.finish = start + (len as u128) * SCALE / s.weight;
                self.vtime = start;
            }
        }
    }
}
