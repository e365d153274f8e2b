//! `vmm-bench`: benchmarks that print figures (never assertions).
//!
//! `vmm-bench boot [--runs N] [--vcpus N] [--memory SIZE]` boots the test guest's `boot`
//! scenario N times with the `vmm` built beside this binary and prints the median wall time
//! from process start to exit, and the VMM's peak RSS minus the guest memory it touched.
//!
//! `vmm-bench net [--frames N] [--sizes 64,1500] [--backends socket,tap]` has the test
//! guest's ring-3 virtio-net driver send N frames of each size as fast as it can, through
//! the seqpacket backend to a sink in this process, and through a TAP device into a network
//! namespace, and prints frames per second and Gbit/s (frame bytes, without the virtio
//! header), timed on the host between the guest's start and end markers.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use clap::{Parser, Subcommand};
use vmm::stats::STATS_PREFIX;

#[derive(Debug, Parser)]
#[command(name = "vmm-bench", about = "VMM benchmarks: print figures")]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// virtio-net transmit throughput from the test guest.
    Net {
        /// Frames per measurement.
        #[arg(long, default_value_t = 200_000)]
        frames: u64,
        /// Frame sizes in bytes (60..=1514).
        #[arg(long, value_delimiter = ',', default_value = "64,1500")]
        sizes: Vec<u64>,
        /// Backends: socket, tap.
        #[arg(long, value_delimiter = ',', default_value = "socket,tap")]
        backends: Vec<String>,
        /// Also measure with the device behind the virtio-iommu (translated DMA).
        #[arg(long)]
        iommu: bool,
    },
    /// Boot the test guest's trivial `boot` scenario repeatedly.
    Boot {
        /// Number of boots.
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// vCPUs per VM.
        #[arg(long, default_value_t = 1)]
        vcpus: u32,
        /// Guest memory.
        #[arg(long, default_value = "256M")]
        memory: String,
        /// Test guest ELF [default: the one built beside this binary, else
        /// guest-images/out/testguest.elf].
        #[arg(long)]
        kernel: Option<PathBuf>,
    },
}

fn sibling(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn main() -> std::process::ExitCode {
    match Cli::parse().bench {
        Bench::Boot {
            runs,
            vcpus,
            memory,
            kernel,
        } => boot(runs, vcpus, memory, kernel),
        Bench::Net {
            frames,
            sizes,
            backends,
            iommu,
        } => net::run(frames, &sizes, &backends, iommu),
    }
}

/// The test guest built beside this binary (the same build), else guest-images/out's.
fn test_guest() -> PathBuf {
    let beside = sibling("testguest");
    if beside.exists() {
        beside
    } else {
        vmm::config::guest_images_dir().join(vmm::config::DEFAULT_KERNEL)
    }
}

fn boot(
    runs: usize,
    vcpus: u32,
    memory: String,
    kernel: Option<PathBuf>,
) -> std::process::ExitCode {
    let vmm = sibling("vmm");
    let kernel = kernel.unwrap_or_else(test_guest);
    if !vmm.exists() || !kernel.exists() {
        eprintln!(
            "vmm-bench: need {} and {}: run `cargo build --release --workspace` or \
             guest-images/build.sh testguest",
            vmm.display(),
            kernel.display()
        );
        return std::process::ExitCode::from(2);
    }
    let mut wall_ms = Vec::with_capacity(runs);
    let mut stats = Vec::with_capacity(runs);
    for run in 0..runs.max(1) {
        let t0 = Instant::now();
        let out = Command::new(&vmm)
            .args(["run", "--kernel"])
            .arg(&kernel)
            .args(["--cmdline", "testguest.scenario=boot", "--exit-stats"])
            .args(["--vcpus", &vcpus.to_string(), "--memory", &memory])
            .stdin(Stdio::null())
            .output();
        let elapsed = t0.elapsed().as_secs_f64() * 1e3;
        let out = match out {
            Ok(o) => o,
            Err(e) => {
                eprintln!("vmm-bench: cannot run {}: {e}", vmm.display());
                return std::process::ExitCode::FAILURE;
            }
        };
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() || !stdout.contains("TESTGUEST PASS boot") {
            eprintln!(
                "vmm-bench: run {run} failed ({}):\n{stdout}\n{stderr}",
                out.status
            );
            return std::process::ExitCode::FAILURE;
        }
        wall_ms.push(elapsed);
        if let Some(s) = stderr
            .lines()
            .find_map(|l| l.strip_prefix(STATS_PREFIX))
            .and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok())
        {
            stats.push(s);
        }
    }
    wall_ms.sort_by(f64::total_cmp);
    let field = |k: &str| {
        let mut v: Vec<f64> = stats.iter().filter_map(|s| s[k].as_f64()).collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let rss = field("peak_rss_kib");
    let touched = field("guest_touched_kib");
    let mut overhead: Vec<f64> = stats
        .iter()
        .filter_map(|s| Some(s["peak_rss_kib"].as_f64()? - s["guest_touched_kib"].as_f64()?))
        .collect();
    overhead.sort_by(f64::total_cmp);
    println!(
        "boot benchmark: {} runs, {vcpus} vCPU(s), {memory}, {}",
        wall_ms.len(),
        kernel.display()
    );
    println!(
        "  wall time process start -> exit: median {:.1} ms, p90 {:.1} ms, min {:.1} ms, max {:.1} ms",
        percentile(&wall_ms, 0.5),
        percentile(&wall_ms, 0.9),
        wall_ms[0],
        wall_ms[wall_ms.len() - 1]
    );
    if !rss.is_empty() {
        println!(
            "  peak RSS: median {:.0} KiB; guest memory touched: median {:.0} KiB",
            percentile(&rss, 0.5),
            percentile(&touched, 0.5)
        );
        println!(
            "  VMM overhead (peak RSS - guest touched): median {:.0} KiB ({:.1} MiB)",
            percentile(&overhead, 0.5),
            percentile(&overhead, 0.5) / 1024.0
        );
    }
    std::process::ExitCode::SUCCESS
}

mod net {
    //! The virtio-net benchmark.

    use std::io::{BufRead, BufReader};
    use std::os::fd::AsRawFd;
    use std::path::Path;

    use devices::virtio::net::{seqpacket_accept, seqpacket_listen};
    use std::process::{Command, ExitCode, Stdio};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Instant;

    const NETNS: &str = "vmm-bench";
    const TAP: &str = "vmmbench0";

    /// Counts what a seqpacket sink receives.
    fn sink(path: &Path) -> std::io::Result<Arc<AtomicU64>> {
        let listener = seqpacket_listen(path, 1)?;
        let frames = Arc::new(AtomicU64::new(0));
        let f = frames.clone();
        std::thread::spawn(move || {
            let Ok(conn) = seqpacket_accept(&listener) else {
                return;
            };
            let mut buf = vec![0u8; 65_536];
            loop {
                // SAFETY: `buf` is valid for writes of its length.
                let n =
                    unsafe { libc::recv(conn.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n <= 0 {
                    return;
                }
                f.fetch_add(1, Ordering::Relaxed);
            }
        });
        Ok(frames)
    }

    fn sh(args: &[&str]) -> bool {
        Command::new(args[0])
            .args(&args[1..])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// A network namespace holding a persistent, up TAP device the VMM opens by name.
    fn netns_with_tap() -> bool {
        let _ = sh(&["ip", "netns", "del", NETNS]);
        sh(&["ip", "netns", "add", NETNS])
            && sh(&[
                "ip", "netns", "exec", NETNS, "ip", "link", "set", "lo", "up",
            ])
            && sh(&[
                "ip", "netns", "exec", NETNS, "ip", "tuntap", "add", "dev", TAP, "mode", "tap",
            ])
            && sh(&["ip", "netns", "exec", NETNS, "ip", "link", "set", TAP, "up"])
    }

    fn tap_rx_packets() -> u64 {
        Command::new("ip")
            .args(["netns", "exec", NETNS, "cat"])
            .arg(format!("/sys/class/net/{TAP}/statistics/rx_packets"))
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// One measurement: (seconds between the guest's markers, frames the receiver saw).
    fn measure(backend: &str, frames: u64, size: u64, iommu: bool) -> Result<(f64, u64), String> {
        let vmm = super::sibling("vmm");
        let kernel = super::test_guest();
        let cmdline = format!(
            "testguest.scenario=net-bench testguest.net_frames={frames} testguest.net_size={size} testguest.net_iommu={}",
            u8::from(iommu)
        );
        let sock = std::env::temp_dir().join(format!("vmm-bench-net-{}.sock", std::process::id()));
        let (mut cmd, counter) = match backend {
            "socket" => {
                let f = sink(&sock).map_err(|e| format!("sink: {e}"))?;
                let mut c = Command::new(&vmm);
                c.arg("run")
                    .arg("--net")
                    .arg(format!("socket={}", sock.display()));
                (c, Some(f))
            }
            "tap" => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", NETNS])
                    .arg(&vmm)
                    .arg("run")
                    .arg("--net")
                    .arg(format!("tap={TAP}"));
                (c, None)
            }
            other => return Err(format!("unknown backend {other}")),
        };
        if iommu {
            cmd.arg("--iommu");
        }
        let tap_before = if counter.is_none() {
            tap_rx_packets()
        } else {
            0
        };
        let mut child = cmd
            .arg("--kernel")
            .arg(&kernel)
            .args(["--cmdline", &cmdline, "--memory", "256M"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run vmm: {e}"))?;
        let out = child.stdout.take().ok_or("no stdout")?;
        let (mut start, mut end, mut passed) = (None, None, false);
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if line.contains("net-bench: virtio-net at") {
                start = Some(Instant::now());
            } else if line.contains("net-bench: sent") {
                end = Some(Instant::now());
            } else if line == "TESTGUEST PASS net-bench" {
                passed = true;
            } else if line.starts_with("TESTGUEST FAIL") {
                let _ = child.kill();
                return Err(line);
            }
        }
        let _ = child.wait();
        let _ = std::fs::remove_file(&sock);
        let (Some(s), Some(e), true) = (start, end, passed) else {
            return Err("the guest did not finish the run".into());
        };
        let seen = match counter {
            Some(f) => f.load(Ordering::Relaxed),
            None => tap_rx_packets().saturating_sub(tap_before),
        };
        Ok((e.duration_since(s).as_secs_f64(), seen))
    }

    pub fn run(frames: u64, sizes: &[u64], backends: &[String], iommu: bool) -> ExitCode {
        if backends.iter().any(|b| b == "tap") && !netns_with_tap() {
            eprintln!(
                "vmm-bench: cannot create network namespace {NETNS} with {TAP} (needs root and iproute2)"
            );
            return ExitCode::from(2);
        }
        println!("virtio-net TX from the test guest's ring-3 driver, {frames} frames per run");
        println!(
            "{:<12} {:>6} {:>10} {:>12} {:>9} {:>10}",
            "backend", "size", "seconds", "frames/s", "Gbit/s", "received"
        );
        let mut ok = true;
        let modes: &[bool] = if iommu { &[false, true] } else { &[false] };
        for backend in backends {
            for &size in sizes {
                for &through_iommu in modes {
                    let label = if through_iommu {
                        format!("{backend}+iommu")
                    } else {
                        backend.clone()
                    };
                    match measure(backend, frames, size, through_iommu) {
                        Ok((secs, seen)) => {
                            let fps = frames as f64 / secs;
                            let gbps = fps * size as f64 * 8.0 / 1e9;
                            println!(
                                "{label:<12} {size:>6} {secs:>10.3} {fps:>12.0} {gbps:>9.3} {seen:>10}"
                            );
                        }
                        Err(e) => {
                            ok = false;
                            println!("{label:<12} {size:>6} failed: {e}");
                        }
                    }
                }
            }
        }
        if backends.iter().any(|b| b == "tap") {
            let _ = sh(&["ip", "netns", "del", NETNS]);
        }
        if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }
}
