//! Time-based rate machinery: the token bucket behind max_tx_rate (and the min_tx_rate
//! guarantees) and the wire clock of the uplink. All arithmetic is exact integer math on
//! nanoseconds, so nothing drifts however long a simulation runs.

/// How much a max_tx_rate bucket holds: this many nanoseconds of traffic at its rate
/// (10 ms), and never less than two of the largest frames.
pub const BURST_NS: u64 = 10_000_000;
/// The largest frame the switch passes (the 82576's jumbo limit, SET_LPE's ceiling).
pub const MAX_FRAME: usize = 9728;

const NS_PER_S: i128 = 1_000_000_000;

/// Bytes per second of `mbps` megabits per second.
pub(crate) fn mbps_to_bytes_per_s(mbps: u32) -> u64 {
    u64::from(mbps) * 125_000
}

/// A token bucket in the manner of Firecracker's: refilled lazily from the elapsed time,
/// the fraction carried; a frame may go whenever the bucket is not in debt, and taking
/// more than it holds leaves a debt the caller waits out (`ready_at`). Tokens are kept in
/// "nanobytes" (bytes x 10^9), so a refill of `rate` bytes/s over `dt` ns is `rate * dt`.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    rate: u64,
    cap: i128,
    tokens: i128,
    last_ns: u64,
}

impl TokenBucket {
    /// A full bucket of `size` bytes refilled at `rate` bytes per second (`rate` > 0).
    pub(crate) fn new(rate: u64, size: u64, now_ns: u64) -> Self {
        let cap = i128::from(size) * NS_PER_S;
        Self {
            rate: rate.max(1),
            cap,
            tokens: cap,
            last_ns: now_ns,
        }
    }

    /// A bucket for a rate of `mbps`, sized by [`BURST_NS`].
    pub(crate) fn for_mbps(mbps: u32, now_ns: u64) -> Self {
        let rate = mbps_to_bytes_per_s(mbps);
        let burst = u64::try_from(u128::from(rate) * u128::from(BURST_NS) / 1_000_000_000)
            .unwrap_or(u64::MAX);
        Self::new(rate, burst.max(2 * MAX_FRAME as u64), now_ns)
    }

    fn refill(&mut self, now_ns: u64) {
        if now_ns > self.last_ns {
            let dt = i128::from(now_ns - self.last_ns);
            self.tokens = (self.tokens + i128::from(self.rate) * dt).min(self.cap);
            self.last_ns = now_ns;
        }
    }

    /// `None` if a frame may go now, else the first time (ns) it may.
    pub(crate) fn ready_at(&mut self, now_ns: u64) -> Option<u64> {
        self.refill(now_ns);
        if self.tokens >= 0 {
            return None;
        }
        let rate = i128::from(self.rate);
        let wait = (-self.tokens + rate - 1) / rate;
        Some(now_ns.saturating_add(u64::try_from(wait).unwrap_or(u64::MAX)))
    }

    /// Takes `len` bytes (possibly into debt).
    pub(crate) fn consume(&mut self, now_ns: u64, len: usize) {
        self.refill(now_ns);
        self.tokens -= i128::from(len as u64) * NS_PER_S;
    }
}

/// When the uplink's wire is free again: serialization at the uplink's speed, kept in
/// units of ns x Mbps so that a frame of `len` bytes takes exactly `len * 8000` units.
/// A speed of 0 means unlimited (never busy).
#[derive(Debug, Clone)]
pub(crate) struct WireClock {
    mbps: u32,
    busy_until: u128,
}

impl WireClock {
    pub(crate) fn new(mbps: u32) -> Self {
        Self {
            mbps,
            busy_until: 0,
        }
    }

    fn units(&self, ns: u64) -> u128 {
        u128::from(ns) * u128::from(self.mbps)
    }

    /// Whether a frame can start now.
    pub(crate) fn is_free(&self, now_ns: u64) -> bool {
        self.mbps == 0 || self.busy_until <= self.units(now_ns)
    }

    /// The time (ns) the wire is free again.
    pub(crate) fn free_at(&self) -> u64 {
        if self.mbps == 0 {
            return 0;
        }
        let m = u128::from(self.mbps);
        u64::try_from(self.busy_until.div_ceil(m)).unwrap_or(u64::MAX)
    }

    /// How long (ns) frames already queued keep the wire busy after `now_ns`.
    pub(crate) fn backlog_ns(&self, now_ns: u64) -> u64 {
        self.free_at().saturating_sub(now_ns)
    }

    /// Puts a frame of `len` bytes on the wire, starting when it is free.
    pub(crate) fn occupy(&mut self, now_ns: u64, len: usize) {
        if self.mbps == 0 {
            return;
        }
        let start = self.busy_until.max(self.units(now_ns));
        self.busy_until = start + (len as u128) * 8000;
    }
}
