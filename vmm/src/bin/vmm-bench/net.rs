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
            let n = unsafe { libc::recv(conn.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
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
