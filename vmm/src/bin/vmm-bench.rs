//! `vmm-bench`: benchmarks that print figures (never assertions).
//!
//! `vmm-bench boot [--runs N] [--vcpus N] [--memory SIZE]` boots the test guest's `boot`
//! scenario N times with the `vmm` built beside this binary and prints the median wall time
//! from process start to exit, and the VMM's peak RSS minus the guest memory it touched.

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
        /// Test guest ELF [default: guest-images/out/testguest.elf, else the one built
        /// beside this binary].
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
    let Cli {
        bench:
            Bench::Boot {
                runs,
                vcpus,
                memory,
                kernel,
            },
    } = Cli::parse();
    let vmm = sibling("vmm");
    let kernel = kernel.unwrap_or_else(|| {
        let built = vmm::config::guest_images_dir().join(vmm::config::DEFAULT_KERNEL);
        if built.exists() {
            built
        } else {
            sibling("testguest")
        }
    });
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
