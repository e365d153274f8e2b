//! Rate-limited logging for anything a guest (or a peer process) can trigger: a guest that
//! hammers an unknown port must not be able to fill the host's disk with log lines. Each
//! call site may log [`BURST`] lines a second; what it had to drop is counted and reported
//! with its next line, so a quiet log never hides that something was suppressed. Windows
//! are measured on the monotonic clock, so a wall-clock step neither reopens nor freezes
//! them.
//!
//! Raw `log::` macros are disallowed in this workspace (clippy.toml): use the macros here.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Messages allowed per call site per second.
pub const BURST: u64 = 10;

/// Seconds on the monotonic clock since the first log call of the process.
fn now_secs() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_secs()
}

/// One call site's budget: the current one-second window, how many messages it used, and
/// how many were dropped since the last one logged.
#[derive(Debug, Default)]
pub struct RateLimit {
    window: AtomicU64,
    used: AtomicU64,
    dropped: AtomicU64,
}

impl RateLimit {
    /// A fresh budget (const, so each call site can hold one in a static).
    pub const fn new() -> Self {
        Self {
            window: AtomicU64::new(0),
            used: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// `Some(n)` if a message may be logged now ([`BURST`] a second), `n` being how many
    /// were suppressed since the last one that was; `None` (and counted) if not.
    pub fn check(&self) -> Option<u64> {
        self.check_n(BURST)
    }

    /// Like [`RateLimit::check`] with `burst` messages a second.
    pub fn check_n(&self, burst: u64) -> Option<u64> {
        self.check_at(now_secs(), burst)
    }

    fn check_at(&self, now_secs: u64, burst: u64) -> Option<u64> {
        if self.window.swap(now_secs, Ordering::Relaxed) != now_secs {
            self.used.store(0, Ordering::Relaxed);
        }
        if self.used.fetch_add(1, Ordering::Relaxed) < burst {
            Some(self.dropped.swap(0, Ordering::Relaxed))
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// Logs at `$level` through the call site's own [`RateLimit`].
#[doc(hidden)]
#[macro_export]
macro_rules! log_ratelimited {
    ($level:expr, $($arg:tt)+) => {{
        static LIMIT: $crate::ratelimit::RateLimit = $crate::ratelimit::RateLimit::new();
        // The level first: a disabled level costs one load, not a clock read (call sites
        // on per-frame paths are many, and under PVM the clock may be a system call).
        #[allow(clippy::disallowed_macros)]
        let enabled = log::log_enabled!($level);
        if enabled && let Some(dropped) = LIMIT.check() {
            #[allow(clippy::disallowed_macros)]
            if dropped == 0 {
                log::log!($level, $($arg)+);
            } else {
                log::log!(
                    $level,
                    "{} ({dropped} similar lines suppressed before this one)",
                    format_args!($($arg)+)
                );
            }
        }
    }};
}

/// `log::error!` limited to [`BURST`] lines per second per call site.
#[macro_export]
macro_rules! error_ratelimited {
    ($($arg:tt)+) => { $crate::log_ratelimited!(log::Level::Error, $($arg)+) };
}

/// `log::warn!` limited to [`BURST`] lines per second per call site.
#[macro_export]
macro_rules! warn_ratelimited {
    ($($arg:tt)+) => { $crate::log_ratelimited!(log::Level::Warn, $($arg)+) };
}

/// `log::info!` limited to [`BURST`] lines per second per call site.
#[macro_export]
macro_rules! info_ratelimited {
    ($($arg:tt)+) => { $crate::log_ratelimited!(log::Level::Info, $($arg)+) };
}

/// `log::debug!` limited to [`BURST`] lines per second per call site.
#[macro_export]
macro_rules! debug_ratelimited {
    ($($arg:tt)+) => { $crate::log_ratelimited!(log::Level::Debug, $($arg)+) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_per_window_and_suppressed_count() {
        let limit = RateLimit::new();
        let allowed = (0..100)
            .filter(|_| limit.check_at(7, BURST).is_some())
            .count() as u64;
        assert_eq!(allowed, BURST);
        assert_eq!(
            limit.check_at(8, BURST),
            Some(100 - BURST),
            "a new second opens a new window and reports what was dropped"
        );
        assert_eq!(limit.check_at(8, BURST), Some(0), "and only once");
    }

    #[test]
    fn windows_follow_the_monotonic_clock() {
        let a = now_secs();
        let b = now_secs();
        assert!(b >= a);
    }
}
