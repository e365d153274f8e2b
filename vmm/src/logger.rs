//! The processes' logger: stderr, a level from an environment variable, and a rate limit
//! over all lines, since dependencies (virtio-queue) log what a guest or a vfio-user client
//! does wrong without a limit of their own, and neither may flood the host's logs.

use std::sync::OnceLock;

use devices::ratelimit::RateLimit;

/// Lines a second the logger lets through, in all.
const LINES_PER_SECOND: u64 = 50;

struct StderrLogger {
    prog: &'static str,
    limit: RateLimit,
}

impl log::Log for StderrLogger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) && self.limit.check_n(LINES_PER_SECOND).is_some() {
            eprintln!(
                "{}: {}: {}",
                self.prog,
                r.level().as_str().to_lowercase(),
                r.args()
            );
        }
    }

    fn flush(&self) {}
}

static LOGGER: OnceLock<StderrLogger> = OnceLock::new();

/// Logs to stderr as `PROG: LEVEL: message`, at the level named in `$env_var` (error, warn,
/// info, debug, trace; default warn). A second call changes nothing.
pub fn init(prog: &'static str, env_var: &str) {
    let level = std::env::var(env_var)
        .ok()
        .and_then(|l| l.parse().ok())
        .unwrap_or(log::LevelFilter::Warn);
    let logger = LOGGER.get_or_init(|| StderrLogger {
        prog,
        limit: RateLimit::new(),
    });
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}
