//! The failover benchmark: a test guest (scenario `failover`, which plays net_failover:
//! one frame at a time, out of the VF while it is there, else out of the standby;
//! reflections taken from both) streams to a reflector on nicd's uplink in this process,
//! while this process drives N attach/detach cycles through the vmm's API. Per switch it
//! prints how long the sequence took, the frames the guest lost in the phase around it,
//! and two gaps between consecutive frames at the reflector, against the stream's median
//! interval: around the filter move (the moment the traffic changes paths: the last step
//! of an attach, the first of a detach), and over the whole sequence, which includes the
//! test guest's own pause (it has one vCPU and brings its VF up, or releases it, between
//! two frames); then the frames lost while no switch happened.

use std::os::fd::{AsRawFd, OwnedFd};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::seqpacket::SeqpacketSocket;
use vmm::api::{Request, VmClient};

use super::nicd::Nicd;
use super::vf::Guest;

/// The benchmark's options.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Attach/detach cycles.
    #[arg(long, default_value_t = 10)]
    cycles: u32,
    /// Frames of each steady phase (on the standby, on the VF).
    #[arg(long, default_value_t = 200)]
    frames: u32,
}

/// The guest's MAC: VF 0's admin MAC, which its standby carries.
const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x5a, 0x00, 0x01];
/// The stream's peer, beyond the uplink.
const PEER: &str = "02:00:00:00:00:fe";
/// The test stream's EtherType.
const ETHERTYPE: [u8; 2] = [0x88, 0xb5];
/// A slot the guest powered off rests this long before the vmm plugs into it again.
const SLOT_REST: Duration = Duration::from_millis(2100);
/// After the guest's marker, a switch waits this long: the marker's bytes on the serial
/// console hold the guest up for milliseconds, and the stream is to be steady first.
const STEADY: Duration = Duration::from_millis(30);
/// After a sequence's answer, frames still count towards its switch for this long.
const SETTLE: Duration = Duration::from_millis(50);
/// After the filter move, frames still count towards it for this long: a frame whose
/// reflection was on its way during the move comes back within it, or is lost (the guest
/// then waits 20-50 ms before the next).
const MOVE_SETTLE: Duration = Duration::from_millis(2);

/// One attach or detach.
struct Switch {
    cycle: u32,
    op: &'static str,
    start: Instant,
    end: Instant,
    /// When the guest's filters moved: from the end of the step before the move to the
    /// end of the move.
    filter_move: (Instant, Instant),
}

/// Reflects the stream on nicd's uplink, noting when each of the guest's frames came.
fn reflector(
    fd: OwnedFd,
    stop: Arc<AtomicBool>,
    arrivals: Arc<Mutex<Vec<Instant>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let sock = SeqpacketSocket::from(fd);
        let mut buf = vec![0u8; 65536];
        while !stop.load(Ordering::Relaxed) {
            let mut p = libc::pollfd {
                fd: sock.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd; the socket outlives the call.
            if unsafe { libc::poll(&raw mut p, 1, 10) } != 1 {
                continue;
            }
            while let Ok(n) = sock.recv(&mut buf) {
                if n < 18 || n > buf.len() {
                    break;
                }
                let frame = &mut buf[..n];
                if frame[6..12] != GUEST_MAC || frame[12..14] != ETHERTYPE {
                    continue;
                }
                arrivals
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(Instant::now());
                let (dst, src) = frame.split_at_mut(6);
                dst.swap_with_slice(&mut src[..6]);
                let _ = sock.send(frame);
            }
        }
    })
}

/// A failover operation through the vmm's API: its steps and their ends (µs from the
/// start of the sequence).
fn failover(api: &std::path::Path, op: &str) -> Result<Vec<(String, u64)>, String> {
    let r = VmClient::connect(api)
        .and_then(|mut c| {
            c.request(&Request::Failover {
                op: op.into(),
                timeout_ms: None,
                filters_last: false,
            })
        })
        .map_err(|e| format!("failover {op}: {}", vmm::error_chain(&e)))?;
    if r.ok {
        Ok(r.failover.map(|f| f.steps_us).unwrap_or_default())
    } else {
        Err(format!("failover {op}: {}", r.error.unwrap_or_default()))
    }
}

/// `cycle C, PHASE: B of S frames back (...), L lost` → (C, PHASE, S, L).
fn phase(line: &str) -> Option<(u32, String, u64, u64)> {
    let rest = &line[line.find("cycle ")? + 6..];
    let (cycle, rest) = rest.split_once(", ")?;
    let (what, rest) = rest.split_once(": ")?;
    let mut words = rest.split_whitespace();
    let _back = words.next()?;
    let sent = words.nth(1)?.parse().ok()?;
    let lost = rest
        .rsplit_once(", ")?
        .1
        .strip_suffix(" lost")?
        .parse()
        .ok()?;
    Some((cycle.parse().ok()?, what.to_string(), sent, lost))
}

/// The longest interval between consecutive arrivals from the last one before `from`
/// to the last one before `to`; None without two arrivals there (no stream then).
fn longest_gap(arrivals: &[Instant], from: Instant, to: Instant) -> Option<Duration> {
    let first = arrivals.partition_point(|&t| t < from).saturating_sub(1);
    let last = arrivals.partition_point(|&t| t <= to);
    arrivals
        .get(first..last)
        .unwrap_or_default()
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn bench(o: &Options) -> Result<(), String> {
    let mut nicd = Nicd::start(1, 1)?;
    let stop = Arc::new(AtomicBool::new(false));
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let reflecting = reflector(
        nicd.take_uplink().ok_or("no uplink")?,
        stop.clone(),
        arrivals.clone(),
    );
    let api = std::env::temp_dir().join(format!("vmm-bench-failover-{}.sock", std::process::id()));
    let mac: Vec<String> = GUEST_MAC.iter().map(|b| format!("{b:02x}")).collect();
    let guest = Guest::start(
        &format!(
            "testguest.scenario=failover testguest.hotplug_port=2 testguest.failover_frames={} \
             testguest.failover_cycles={} testguest.vf_peer={PEER} testguest.mem=256M",
            o.frames, o.cycles
        ),
        "256M",
        &[
            "--net".into(),
            format!(
                "nicd={},mac={},standby",
                nicd.synthetic().display(),
                mac.join(":")
            ),
            "--api-socket".into(),
            api.display().to_string(),
        ],
    )?;
    let mut lines = Vec::new();
    let mut switches = Vec::new();
    for cycle in 0..o.cycles {
        lines.extend(guest.wait_for_all(&format!("cycle {cycle}: waiting for a VF"))?);
        std::thread::sleep(if cycle > 0 { SLOT_REST } else { STEADY });
        for op in ["attach", "detach"] {
            if op == "detach" {
                lines.extend(
                    guest.wait_for_all(&format!(
                        "cycle {cycle}: waiting for the attention button"
                    ))?,
                );
            }
            if op == "detach" {
                std::thread::sleep(STEADY);
            }
            let start = Instant::now();
            let steps = failover(&api, op)?;
            let end = Instant::now();
            let at = |i: usize| {
                steps
                    .get(i)
                    .map_or(start, |s| start + Duration::from_micros(s.1))
            };
            // The filters move last in an attach, first in a detach.
            let filter_move = match op {
                "attach" => (
                    at(steps.len().saturating_sub(2)),
                    at(steps.len().saturating_sub(1)),
                ),
                _ => (start, at(0)),
            };
            switches.push(Switch {
                cycle,
                op,
                start,
                end,
                filter_move,
            });
        }
        lines.extend(guest.wait_for_all(&format!("cycle {cycle}: VF released"))?);
    }
    lines.extend(guest.wait_for_all("TESTGUEST PASS failover")?);
    stop.store(true, Ordering::Relaxed);
    let _ = reflecting.join();
    let arrivals = std::mem::take(
        &mut *arrivals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    let mut intervals: Vec<Duration> = arrivals.windows(2).map(|w| w[1] - w[0]).collect();
    intervals.sort();
    let median = intervals
        .get(intervals.len() / 2)
        .copied()
        .unwrap_or_default();
    let phases: Vec<(u32, String, u64, u64)> = lines.iter().filter_map(|l| phase(l)).collect();
    let lost_in = |cycle: u32, what: &str| {
        phases
            .iter()
            .find(|(c, w, _, _)| *c == cycle && w == what)
            .map(|p| p.3)
    };
    println!(
        "failover: {} cycles, {} frames a steady phase, one frame in flight; {} frames reflected, \
         median interval {:.3} ms",
        o.cycles,
        o.frames,
        arrivals.len(),
        ms(median)
    );
    println!(
        "cycle  switch  sequence ms  lost around it  gap at the filter move ms  \
         longest gap in the sequence ms"
    );
    let (mut worst_move, mut worst) = (Duration::ZERO, Duration::ZERO);
    for s in &switches {
        let at_move = longest_gap(&arrivals, s.filter_move.0, s.filter_move.1 + MOVE_SETTLE);
        let gap = longest_gap(&arrivals, s.start, s.end + SETTLE);
        worst_move = worst_move.max(at_move.unwrap_or_default());
        worst = worst.max(gap.unwrap_or_default());
        let around = match s.op {
            "attach" => lost_in(s.cycle, "until the VF"),
            _ => lost_in(s.cycle, "until the detach"),
        };
        println!(
            "{:>5}  {:<6}  {:>11.1}  {:>14}  {:>25}  {:>30}",
            s.cycle,
            s.op,
            ms(s.end - s.start),
            around.map_or("?".into(), |n| n.to_string()),
            at_move.map_or("no stream".into(), |d| format!("{:.3}", ms(d))),
            gap.map_or("no stream".into(), |d| format!("{:.3}", ms(d))),
        );
    }
    let (mut steady_sent, mut steady_lost, mut switch_lost) = (0, 0, 0);
    for (_, what, sent, lost) in &phases {
        if what.starts_with("until") {
            switch_lost += lost;
        } else {
            steady_sent += sent;
            steady_lost += lost;
        }
    }
    println!(
        "lost: {switch_lost} frames in the phases with a switch; {steady_lost} of {steady_sent} \
         in the steady phases (no switch)"
    );
    println!(
        "longest gap: {:.3} ms at a filter move ({:.3} ms beyond the median interval); {:.3} ms \
         in a whole sequence, the test guest's own pause included",
        ms(worst_move),
        ms(worst_move.saturating_sub(median)),
        ms(worst)
    );
    Ok(())
}

/// Runs the benchmark.
pub fn run(o: &Options) -> ExitCode {
    match bench(o) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmm-bench failover: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_lines_parse() {
        let l = "testguest: cycle 3, until the detach: 41 of 42 frames back (40 on the VF, 1 on \
                 the standby), 1 lost";
        assert_eq!(phase(l), Some((3, "until the detach".into(), 42, 1)));
        assert_eq!(phase("cycle 0: waiting for a VF"), None);
    }

    #[test]
    fn the_longest_gap_starts_at_the_last_frame_before_the_switch() {
        let t = Instant::now();
        let at = |ms: u64| t + Duration::from_millis(ms);
        let arrivals = [at(0), at(1), at(2), at(10), at(11), at(30)];
        let ms = |n| Some(Duration::from_millis(n));
        assert_eq!(longest_gap(&arrivals, at(5), at(12)), ms(8));
        assert_eq!(longest_gap(&arrivals, at(5), at(40)), ms(19));
        assert_eq!(longest_gap(&arrivals, at(50), at(60)), None);
    }
}
