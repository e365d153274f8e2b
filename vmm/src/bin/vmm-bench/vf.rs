//! The VF-path benchmark: test guests in vmm processes drive VFs of one nicd with their
//! ring-3 igbvf driver (scenario `vf-bench`), against the synthetic path (the test
//! guest's virtio-net through the vmm's socket backend, scenario `net-bench`).
//!
//! - `vf-uplink`: one guest sends to a MAC beyond the uplink; this process sinks nicd's
//!   uplink and counts.
//! - `vf-vf`: one guest sends to another guest's VF (scenario `vf-sink` in a second vmm),
//!   switched inside nicd.
//! - `synthetic`: one guest sends through virtio-net to a sink in this process.
//!
//! Timing is the host's, between the sender's start and end markers. CPU per frame comes
//! from schedstat (nanoseconds on CPU) of every thread of the sending vmm (the vCPU thread
//! apart from the others) and of nicd, sampled at the same markers.
//!
//! `--scale N` then starts N vmm processes (64 MiB each), one VF each from one nicd, all
//! sending to the uplink at once: aggregate frames/s at the uplink, nicd's CPU and RSS,
//! and frames lost (sent by the guests, not seen at the uplink) with nicd's drop counts.

use std::io::{BufRead, BufReader};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use super::nicd::Nicd;

/// The benchmark's options.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Frames per measurement.
    #[arg(long, default_value_t = 200_000)]
    frames: u64,
    /// Frame sizes in bytes (60..=1514).
    #[arg(long, value_delimiter = ',', default_value = "64,1500")]
    sizes: Vec<u64>,
    /// Paths: vf-uplink, vf-vf, synthetic.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "vf-uplink,vf-vf,synthetic"
    )]
    paths: Vec<String>,
    /// Also run N guests with a VF each at once (0: no).
    #[arg(long, default_value_t = 0)]
    scale: u16,
    /// Frames each guest sends in the scale run.
    #[arg(long, default_value_t = 20_000)]
    scale_frames: u64,
}

/// How long a guest may take to get to and through a run.
const DEADLINE: Duration = Duration::from_secs(300);

/// nicd's nice value in the scale run (when the bench may set it).
const NICD_NICE: i32 = -10;

/// A MAC nothing in the adapter owns (the switch sends it to the uplink).
const BEYOND_UPLINK: &str = "02:00:00:00:00:fe";

/// nicd's admin MAC of VF `k`.
fn vf_mac(k: u16) -> String {
    let [.., b] = (k + 1).to_be_bytes();
    format!("52:54:00:5a:00:{b:02x}")
}

/// A vmm running the test guest; its serial lines arrive on `lines`.
pub(crate) struct Guest {
    child: Child,
    lines: Receiver<String>,
}

impl Guest {
    pub(crate) fn start(cmdline: &str, memory: &str, extra: &[String]) -> Result<Self, String> {
        let mut child = Command::new(super::sibling("vmm"))
            .arg("run")
            .arg("--kernel")
            .arg(super::test_guest())
            .args(["--cmdline", cmdline, "--memory", memory])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run vmm: {e}"))?;
        let out = child.stdout.take().ok_or("no stdout")?;
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Ok(Self { child, lines })
    }

    /// Waits for a line containing `marker`; a FAIL line or the end of output is an error.
    pub(crate) fn wait_for(&self, marker: &str) -> Result<String, String> {
        let mut lines = self.wait_for_all(marker)?;
        lines
            .pop()
            .ok_or_else(|| format!("no `{marker}` from the guest"))
    }

    /// [`Guest::wait_for`], returning every line up to the marker's.
    pub(crate) fn wait_for_all(&self, marker: &str) -> Result<Vec<String>, String> {
        let deadline = Instant::now() + DEADLINE;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(marker) => {
                    seen.push(l);
                    return Ok(seen);
                }
                Ok(l) if l.starts_with("TESTGUEST FAIL") => return Err(l),
                Ok(l) => seen.push(l),
                Err(_) => return Err(format!("no `{marker}` from the guest")),
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Nanoseconds on CPU of each thread of `pid`: (name, ns).
fn thread_cpu(pid: u32) -> Vec<(String, u64)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| {
            let p = e.path();
            let name = std::fs::read_to_string(p.join("comm")).ok()?;
            let ns = std::fs::read_to_string(p.join("schedstat"))
                .ok()?
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            Some((name.trim().to_string(), ns))
        })
        .collect()
}

/// CPU of the sending vmm between two samples: (vCPU threads, every other thread).
fn vmm_cpu(before: &[(String, u64)], after: &[(String, u64)]) -> (u64, u64) {
    let total = |v: &[(String, u64)], vcpu: bool| -> u64 {
        v.iter()
            .filter(|(n, _)| n.starts_with("vcpu") == vcpu)
            .map(|(_, ns)| ns)
            .sum()
    };
    (
        total(after, true).saturating_sub(total(before, true)),
        total(after, false).saturating_sub(total(before, false)),
    )
}

/// Counts frames arriving on `fd` (nicd's uplink, or the vmm's socket backend) until
/// `stop`, at nice value `nice` if given.
fn count_frames(fd: OwnedFd, stop: Arc<AtomicBool>, nice: Option<i32>) -> Arc<AtomicU64> {
    let n = Arc::new(AtomicU64::new(0));
    let count = n.clone();
    std::thread::spawn(move || {
        if let Some(nice) = nice {
            // SAFETY: setpriority of this thread (Linux: per thread); no memory is passed.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
        }
        let mut buf = vec![0u8; 65_536];
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        while !stop.load(Ordering::Relaxed) {
            // SAFETY: one valid pollfd; the fd lives in this closure.
            if unsafe { libc::poll(&raw mut pfd, 1, 100) } <= 0 {
                continue;
            }
            count.fetch_add(super::nicd::drain_uplink(&fd, &mut buf), Ordering::Relaxed);
        }
    });
    n
}

/// One run's figures.
struct Run {
    seconds: f64,
    delivered: u64,
    vcpu_ns: u64,
    other_ns: u64,
    nicd_ns: Option<u64>,
}

/// Times `sender` between its markers, sampling CPU of it and of `nicd`.
fn time_sender(
    sender: &Guest,
    start: &str,
    end: &str,
    nicd: Option<&Nicd>,
) -> Result<(f64, u64, u64, Option<u64>), String> {
    sender.wait_for(start)?;
    let (t0, c0, n0) = (
        Instant::now(),
        thread_cpu(sender.pid()),
        nicd.map(Nicd::cpu_ns),
    );
    sender.wait_for(end)?;
    let (t1, c1, n1) = (
        Instant::now(),
        thread_cpu(sender.pid()),
        nicd.map(Nicd::cpu_ns),
    );
    let (vcpu, other) = vmm_cpu(&c0, &c1);
    let nicd_ns = n0.zip(n1).map(|(a, b)| b.saturating_sub(a));
    Ok((t1.duration_since(t0).as_secs_f64(), vcpu, other, nicd_ns))
}

fn bench_cmdline(scenario: &str, frames: u64, size: u64, peer: &str, mem: &str) -> String {
    format!(
        "testguest.scenario={scenario} testguest.net_frames={frames} testguest.net_size={size} \
         testguest.vf_peer={peer} testguest.mem={mem}"
    )
}

fn vf_uplink(frames: u64, size: u64) -> Result<Run, String> {
    let mut nicd = Nicd::start(1, 1)?;
    let stop = Arc::new(AtomicBool::new(false));
    let seen = count_frames(nicd.take_uplink().ok_or("no uplink")?, stop.clone(), None);
    let vf = format!("socket={}", nicd.vf(0).display());
    let sender = Guest::start(
        &bench_cmdline("vf-bench", frames, size, BEYOND_UPLINK, "256M"),
        "256M",
        &["--vf".into(), vf],
    )?;
    let (seconds, vcpu_ns, other_ns, nicd_ns) =
        time_sender(&sender, "vf-bench: VF at", "vf-bench: sent", Some(&nicd))?;
    sender.wait_for("TESTGUEST PASS vf-bench")?;
    // What is still in flight in the adapter lands shortly.
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    Ok(Run {
        seconds,
        delivered: seen.load(Ordering::Relaxed),
        vcpu_ns,
        other_ns,
        nicd_ns,
    })
}

fn vf_vf(frames: u64, size: u64) -> Result<Run, String> {
    let nicd = Nicd::start(2, 2)?;
    let sink = Guest::start(
        &bench_cmdline("vf-sink", frames, size, BEYOND_UPLINK, "256M"),
        "256M",
        &["--vf".into(), format!("socket={}", nicd.vf(1).display())],
    )?;
    sink.wait_for("vf-sink: ready")?;
    let sender = Guest::start(
        &bench_cmdline("vf-bench", frames, size, &vf_mac(1), "256M"),
        "256M",
        &["--vf".into(), format!("socket={}", nicd.vf(0).display())],
    )?;
    let (seconds, vcpu_ns, other_ns, nicd_ns) =
        time_sender(&sender, "vf-bench: VF at", "vf-bench: sent", Some(&nicd))?;
    let line = sink.wait_for("vf-sink: received")?;
    let delivered = line
        .split_whitespace()
        .find_map(|w| w.parse::<u64>().ok())
        .unwrap_or(0);
    Ok(Run {
        seconds,
        delivered,
        vcpu_ns,
        other_ns,
        nicd_ns,
    })
}

fn synthetic(frames: u64, size: u64) -> Result<Run, String> {
    let sock = std::env::temp_dir().join(format!("vmm-bench-vf-syn-{}.sock", std::process::id()));
    let listener = devices::virtio::net::seqpacket_listen(&sock, 1)
        .map_err(|e| format!("sink listener: {e}"))?;
    let sender = Guest::start(
        &format!(
            "testguest.scenario=net-bench testguest.net_frames={frames} \
             testguest.net_size={size} testguest.mem=256M"
        ),
        "256M",
        &["--net".into(), format!("socket={}", sock.display())],
    )?;
    let conn = devices::virtio::net::seqpacket_accept(&listener)
        .map_err(|e| format!("sink accept: {e}"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let seen = count_frames(conn, stop.clone(), None);
    let (seconds, vcpu_ns, other_ns, _) =
        time_sender(&sender, "net-bench: virtio-net at", "net-bench: sent", None)?;
    sender.wait_for("TESTGUEST PASS net-bench")?;
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let _ = std::fs::remove_file(&sock);
    Ok(Run {
        seconds,
        delivered: seen.load(Ordering::Relaxed),
        vcpu_ns,
        other_ns,
        nicd_ns: None,
    })
}

fn print_run(path: &str, size: u64, frames: u64, r: &Run) {
    let fps = frames as f64 / r.seconds;
    let delivered_fps = r.delivered as f64 / r.seconds;
    let gbit = delivered_fps * size as f64 * 8.0 / 1e9;
    let per = |ns: u64| ns as f64 / frames as f64;
    let nicd = r
        .nicd_ns
        .map_or("-".to_string(), |ns| format!("{:.0}", per(ns)));
    println!(
        "  {path:<10} {size:>5} B: sent {fps:>10.0} frames/s, delivered {delivered_fps:>10.0} \
         frames/s {gbit:>6.2} Gbit/s ({} of {frames}); CPU ns/frame: vcpu {:.0}, other vmm \
         threads {:.0}, nicd {nicd}",
        r.delivered,
        per(r.vcpu_ns),
        per(r.other_ns),
    );
}

/// N guests, one VF each, all sending to the uplink at once.
fn scale(n: u16, frames: u64) -> Result<(), String> {
    let mut nicd = Nicd::start(n, n)?;
    // nicd plays the adapter's hardware: it should not get a 1/(N+1) share of the CPU
    // next to N guests that spin. As root the bench gives it a higher priority.
    // SAFETY: setpriority on our child's pid; no memory is passed.
    let reniced = unsafe { libc::setpriority(libc::PRIO_PROCESS, nicd.pid(), NICD_NICE) } == 0;
    // So does the far end of the wire (the uplink's reader).
    let stop = Arc::new(AtomicBool::new(false));
    let seen = count_frames(
        nicd.take_uplink().ok_or("no uplink")?,
        stop.clone(),
        Some(NICD_NICE),
    );
    let rss_idle = nicd.rss_kib();
    let started = Instant::now();
    let guests = (0..n)
        .map(|k| {
            Guest::start(
                &bench_cmdline("vf-bench", frames, 64, BEYOND_UPLINK, "64M"),
                "64M",
                &["--vf".into(), format!("socket={}", nicd.vf(k).display())],
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    for g in &guests {
        g.wait_for("vf-bench: VF at")?;
    }
    let up = started.elapsed();
    let (t0, c0, s0) = (Instant::now(), nicd.cpu_ns(), seen.load(Ordering::Relaxed));
    let mut failed = 0;
    for g in &guests {
        if g.wait_for("TESTGUEST PASS vf-bench").is_err() {
            failed += 1;
        }
    }
    let (t1, c1) = (Instant::now(), nicd.cpu_ns());
    let rss_busy = nicd.rss_kib();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let total = seen.load(Ordering::Relaxed);
    let sent = frames * u64::from(n - failed);
    let secs = t1.duration_since(t0).as_secs_f64();
    println!(
        "  {n} guests (64 MiB, one VF each), {frames} frames of 64 B each, all at once: \
         {:.0} frames/s at the uplink (from the last guest up to the last done, {secs:.2} s), \
         {total} of {sent} sent arrived ({} lost), {failed} guests failed",
        total.saturating_sub(s0) as f64 / secs,
        sent.saturating_sub(total)
    );
    println!(
        "    nicd ({}): {:.0} ns CPU/frame, RSS {:.1} MiB idle with {n} VFs, {:.1} MiB busy; \
         all guests up in {:.1} s",
        if reniced {
            format!("nice {NICD_NICE}")
        } else {
            "nice 0: not root".to_string()
        },
        c1.saturating_sub(c0) as f64 / total.saturating_sub(s0).max(1) as f64,
        rss_idle as f64 / 1024.0,
        rss_busy as f64 / 1024.0,
        up.as_secs_f64()
    );
    if total < sent {
        println!("    nicd counted: {}", nicd.drop_counts());
    }
    Ok(())
}

pub fn run(o: &Options) -> ExitCode {
    vmm::nicd::raise_fd_limit(vmm::nicd::fds_needed(o.scale.max(2)));
    println!(
        "VF path vs synthetic path: the test guest sends {} frames per run as fast as its \
         ring allows",
        o.frames
    );
    let mut failed = false;
    for path in &o.paths {
        for &size in &o.sizes {
            let r = match path.as_str() {
                "vf-uplink" => vf_uplink(o.frames, size),
                "vf-vf" => vf_vf(o.frames, size),
                "synthetic" => synthetic(o.frames, size),
                other => Err(format!(
                    "unknown path {other} (vf-uplink, vf-vf, synthetic)"
                )),
            };
            match r {
                Ok(r) => print_run(path, size, o.frames, &r),
                Err(e) => {
                    eprintln!("vmm-bench: {path} {size} B: {e}");
                    failed = true;
                }
            }
        }
    }
    if o.scale > 0
        && let Err(e) = scale(o.scale, o.scale_frames)
    {
        eprintln!("vmm-bench: scale {}: {e}", o.scale);
        failed = true;
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
