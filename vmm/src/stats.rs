//! Process figures the VMM reports at exit (`--exit-stats`) for benchmarks: peak RSS and
//! how much of it is guest memory.

use serde::Serialize;

/// Figures printed as one JSON line on stderr, prefixed by [`STATS_PREFIX`].
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ExitStats {
    /// Wall time from the start of `main` to the end of the VM, in microseconds.
    pub wall_us: u64,
    /// Peak resident set of the process (VmHWM), in KiB.
    pub peak_rss_kib: u64,
    /// Guest RAM resident at exit (touched by the guest or the VMM), in KiB.
    pub guest_touched_kib: u64,
}

/// The prefix of the stats line.
pub const STATS_PREFIX: &str = "vmm-exit-stats: ";

/// VmHWM from /proc/self/status, in KiB.
pub fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    parse_vm_hwm(&status).unwrap_or(0)
}

fn parse_vm_hwm(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vm_hwm() {
        let s = "Name:\tvmm\nVmPeak:\t 100 kB\nVmHWM:\t    5120 kB\nVmRSS:\t 10 kB\n";
        assert_eq!(parse_vm_hwm(s), Some(5120));
        assert_eq!(parse_vm_hwm("nothing"), None);
        assert!(peak_rss_kib() > 0);
    }
}
