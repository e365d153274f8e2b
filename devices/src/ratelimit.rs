//! Rate-limited logging for anything a guest can trigger: a guest that hammers an unknown
//! port must not be able to fill the host's disk with log lines.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Messages allowed per call site per second.
pub const BURST: u64 = 10;

/// One call site's budget: the current one-second window and how many messages it used.
#[derive(Debug, Default)]
pub struct RateLimit {
    window: AtomicU64,
    used: AtomicU64,
}

impl RateLimit {
    /// A fresh budget (const, so each call site can hold one in a static).
    pub const fn new() -> Self {
        Self {
            window: AtomicU64::new(0),
            used: AtomicU64::new(0),
        }
    }

    /// Whether a message may be logged now ([`BURST`] a second); counts it if so.
    pub fn allow(&self) -> bool {
        self.allow_n(BURST)
    }

    /// Whether a message may be logged now with `burst` a second; counts it if so.
    pub fn allow_n(&self, burst: u64) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.allow_at(now, burst)
    }

    fn allow_at(&self, now_secs: u64, burst: u64) -> bool {
        if self.window.swap(now_secs, Ordering::Relaxed) != now_secs {
            self.used.store(0, Ordering::Relaxed);
        }
        self.used.fetch_add(1, Ordering::Relaxed) < burst
    }
}

/// `log::warn!` limited to [`BURST`] lines per second per call site.
#[macro_export]
macro_rules! warn_ratelimited {
    ($($arg:tt)+) => {{
        static LIMIT: $crate::ratelimit::RateLimit = $crate::ratelimit::RateLimit::new();
        if LIMIT.allow() {
            log::warn!($($arg)+);
        }
    }};
}

/// `log::debug!` limited to [`BURST`] lines per second per call site.
#[macro_export]
macro_rules! debug_ratelimited {
    ($($arg:tt)+) => {{
        static LIMIT: $crate::ratelimit::RateLimit = $crate::ratelimit::RateLimit::new();
        if LIMIT.allow() {
            log::debug!($($arg)+);
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_per_window() {
        let limit = RateLimit::new();
        let allowed = (0..100).filter(|_| limit.allow_at(7, BURST)).count() as u64;
        assert_eq!(allowed, BURST);
        assert!(limit.allow_at(8, BURST), "a new second opens a new window");
    }
}
