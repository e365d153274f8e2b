//! `vmm-bench boot`: whole VMM processes from start to exit, the way a user's script or an
//! orchestrator starts microVMs. Each run is one process: spawned, reaped with wait4, its
//! wall time (spawn to reap), CPU time (user + system, from the rusage) and peak RSS
//! (ru_maxrss) recorded. With `--compare`, Firecracker and Cloud Hypervisor binaries run
//! the same guest, alternating with ours run by run, so a drift of the host affects all
//! alike.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use vmm::stats::STATS_PREFIX;

use super::trivial_guest;

/// Options of `vmm-bench boot`.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Runs per VMM and memory size.
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// vCPUs per VM.
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    /// Guest memory sizes, in MiB (M) or GiB (G).
    #[arg(long, value_delimiter = ',', default_value = "256M,4G")]
    memory: Vec<String>,
    /// `trivial`: a guest this bench writes, one byte to COM1 then a power-off (every VMM
    /// can run it). `testguest`: the test guest's `boot` scenario (our vmm only).
    #[arg(long, default_value = "trivial")]
    guest: String,
    /// Other VMMs to run alongside: `firecracker=PATH`, `cloud-hypervisor=PATH`, and
    /// `vmm=PATH` for another build of this vmm (before and after a change).
    #[arg(long, value_delimiter = ',')]
    compare: Vec<String>,
    /// Test guest ELF for `--guest testguest` [default: the one built beside this binary,
    /// else guest-images/out/testguest.elf].
    #[arg(long)]
    kernel: Option<PathBuf>,
}

/// Which VMM a contender is; each is started its own way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ours,
    Firecracker,
    CloudHypervisor,
}

#[derive(Debug)]
struct Contender {
    name: &'static str,
    kind: Kind,
    path: PathBuf,
}

/// One run's figures.
#[derive(Debug, Clone, Copy)]
struct Sample {
    wall_ms: f64,
    cpu_ms: f64,
    rss_kib: f64,
    /// Our vmm only (`--exit-stats`): guest RAM touched.
    guest_kib: Option<f64>,
}

fn parse_mib(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.as_bytes().last()? {
        b'G' | b'g' => (&s[..s.len() - 1], 1024),
        b'M' | b'm' => (&s[..s.len() - 1], 1),
        _ => (s, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

fn contenders(compare: &[String]) -> Result<Vec<Contender>, String> {
    let mut out = vec![Contender {
        name: "vmm",
        kind: Kind::Ours,
        path: super::sibling("vmm"),
    }];
    for c in compare {
        let (name, path) = c
            .split_once('=')
            .ok_or_else(|| format!("--compare {c}: expected NAME=PATH"))?;
        let (name, kind) = match name {
            "firecracker" => ("firecracker", Kind::Firecracker),
            "cloud-hypervisor" => ("cloud-hypervisor", Kind::CloudHypervisor),
            // Another build of this vmm (before and after a change, run alternately).
            "vmm" => ("other vmm", Kind::Ours),
            other => {
                return Err(format!(
                    "--compare: unknown VMM {other} (firecracker, cloud-hypervisor, vmm)"
                ));
            }
        };
        out.push(Contender {
            name,
            kind,
            path: PathBuf::from(path),
        });
    }
    for c in &out {
        if !c.path.exists() {
            return Err(format!("{}: {} does not exist", c.name, c.path.display()));
        }
    }
    Ok(out)
}

/// The guest a run boots and how to tell it ran.
struct Guest {
    path: PathBuf,
    testguest: bool,
}

/// The command that runs `guest` with `mib` of memory under `c`.
fn command(c: &Contender, guest: &Guest, vcpus: u32, mib: u64, dir: &Path) -> Command {
    let mut cmd = Command::new(&c.path);
    match c.kind {
        Kind::Ours => {
            cmd.arg("run")
                .arg("--kernel")
                .arg(&guest.path)
                .args(["--vcpus", &vcpus.to_string()])
                .args(["--memory", &format!("{mib}M"), "--exit-stats"]);
            if guest.testguest {
                cmd.args(["--cmdline", "testguest.scenario=boot"]);
            }
        }
        Kind::Firecracker => {
            let config = dir.join(format!("firecracker-{vcpus}-{mib}.json"));
            let json = serde_json::json!({
                "boot-source": {
                    "kernel_image_path": guest.path,
                    "boot_args": "console=ttyS0",
                },
                "drives": [],
                "machine-config": { "vcpu_count": vcpus, "mem_size_mib": mib },
            });
            // A failure shows as a failed run below, with Firecracker's own message.
            let _ = std::fs::write(&config, json.to_string());
            cmd.args(["--no-api", "--config-file"]).arg(config);
        }
        Kind::CloudHypervisor => {
            cmd.arg("--kernel")
                .arg(&guest.path)
                .args(["--cpus", &format!("boot={vcpus}")])
                .args(["--memory", &format!("size={mib}M")])
                .args(["--serial", "tty", "--console", "off"]);
        }
    }
    cmd
}

/// Runs one process to its end and measures it.
fn run_once(
    c: &Contender,
    guest: &Guest,
    vcpus: u32,
    mib: u64,
    dir: &Path,
) -> Result<Sample, String> {
    let out_path = dir.join("stdout");
    let err_path = dir.join("stderr");
    let out = File::create(&out_path).map_err(|e| e.to_string())?;
    let err = File::create(&err_path).map_err(|e| e.to_string())?;
    let mut cmd = command(c, guest, vcpus, mib, dir);
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    let t0 = Instant::now();
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", c.path.display()))?;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value of the plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `child.id()` is our unreaped child; `status` and `usage` are valid for
    // writes for the duration of the call.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let wall_ms = t0.elapsed().as_secs_f64() * 1e3;
    if pid < 0 {
        return Err(format!("wait4: {}", std::io::Error::last_os_error()));
    }
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let exited_ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    let ran = if guest.testguest {
        stdout.contains("TESTGUEST PASS boot")
    } else {
        stdout.contains(trivial_guest::MARKER as char)
    };
    if !exited_ok || !ran {
        return Err(format!(
            "{} did not run the guest to a clean exit (wait status {status:#x})\n\
             stdout: {stdout}\nstderr: {stderr}",
            c.name
        ));
    }
    let tv_ms = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
    let guest_kib = stderr
        .lines()
        .find_map(|l| l.strip_prefix(STATS_PREFIX))
        .and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok())
        .and_then(|v| v["guest_touched_kib"].as_f64());
    Ok(Sample {
        wall_ms,
        cpu_ms: tv_ms(usage.ru_utime) + tv_ms(usage.ru_stime),
        rss_kib: usage.ru_maxrss as f64,
        guest_kib,
    })
}

/// Median, min and max of one figure.
fn summary(samples: &[Sample], f: impl Fn(&Sample) -> f64) -> (f64, f64, f64) {
    let mut v: Vec<f64> = samples.iter().map(f).collect();
    v.sort_by(f64::total_cmp);
    let median = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    (median, v[0], v[v.len() - 1])
}

/// Runs the benchmark.
pub fn run(o: &Options) -> ExitCode {
    match bench(o) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmm-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bench(o: &Options) -> Result<(), String> {
    let contenders = contenders(&o.compare)?;
    let sizes = o
        .memory
        .iter()
        .map(|m| parse_mib(m).ok_or_else(|| format!("--memory {m}: not a size like 256M or 4G")))
        .collect::<Result<Vec<_>, _>>()?;
    let dir = std::env::temp_dir().join(format!("vmm-bench-boot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let guest = match o.guest.as_str() {
        "trivial" => {
            let path = dir.join("trivial.elf");
            std::fs::write(&path, trivial_guest::elf())
                .map_err(|e| format!("{}: {e}", path.display()))?;
            Guest {
                path,
                testguest: false,
            }
        }
        "testguest" => {
            if contenders.len() > 1 {
                return Err("--guest testguest runs on our vmm only; drop --compare".into());
            }
            let path = o.kernel.clone().unwrap_or_else(super::test_guest);
            Guest {
                path,
                testguest: true,
            }
        }
        other => return Err(format!("--guest {other}: trivial or testguest")),
    };
    if !guest.path.exists() {
        return Err(format!(
            "{} is missing: run guest-images/build.sh testguest",
            guest.path.display()
        ));
    }
    let result = sizes
        .iter()
        .try_for_each(|&mib| bench_size(o, &contenders, &guest, mib, &dir));
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn bench_size(
    o: &Options,
    contenders: &[Contender],
    guest: &Guest,
    mib: u64,
    dir: &Path,
) -> Result<(), String> {
    let runs = o.runs.max(1);
    let mut samples: Vec<Vec<Sample>> = contenders.iter().map(|_| Vec::new()).collect();
    // Paired runs: one of each VMM in turn, the order rotated every run.
    for run in 0..runs {
        for i in 0..contenders.len() {
            let k = (i + run) % contenders.len();
            samples[k].push(run_once(&contenders[k], guest, o.vcpus, mib, dir)?);
        }
    }
    println!(
        "boot: {} guest, {} vCPU(s), {mib} MiB, {runs} runs each (median [min..max]), \
         process start to exit",
        if guest.testguest {
            "test guest `boot` scenario"
        } else {
            "trivial (COM1 byte, then power-off)"
        },
        o.vcpus
    );
    let mut medians = Vec::new();
    for (c, s) in contenders.iter().zip(&samples) {
        let (wall, wall_min, wall_max) = summary(s, |x| x.wall_ms);
        let (cpu, cpu_min, cpu_max) = summary(s, |x| x.cpu_ms);
        let (rss, rss_min, rss_max) = summary(s, |x| x.rss_kib);
        println!(
            "  {:<17} wall {wall:6.2} ms [{wall_min:.2}..{wall_max:.2}]  cpu {cpu:6.2} ms \
             [{cpu_min:.2}..{cpu_max:.2}]  peak RSS {rss:6.0} KiB [{rss_min:.0}..{rss_max:.0}]",
            c.name
        );
        if s.iter().all(|x| x.guest_kib.is_some()) {
            let (g, _, _) = summary(s, |x| x.guest_kib.unwrap_or(0.0));
            let (over, _, _) = summary(s, |x| x.rss_kib - x.guest_kib.unwrap_or(0.0));
            println!(
                "  {:<17} guest RAM touched {g:.0} KiB; VMM overhead (peak RSS - guest) {over:.0} KiB",
                ""
            );
        }
        medians.push((c.name, wall, cpu, rss));
    }
    if let Some((_, wall, cpu, rss)) = medians.first().copied() {
        for (name, w, c, r) in medians.iter().skip(1) {
            println!(
                "  vmm / {name}: wall {:.2}x, cpu {:.2}x, peak RSS {:.2}x",
                wall / w,
                cpu / c,
                rss / r
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_mib("256M"), Some(256));
        assert_eq!(parse_mib("4G"), Some(4096));
        assert_eq!(parse_mib("512"), Some(512));
        assert_eq!(parse_mib("x"), None);
        assert_eq!(parse_mib(""), None);
    }

    #[test]
    fn medians() {
        let s = |w| Sample {
            wall_ms: w,
            cpu_ms: 0.0,
            rss_kib: 0.0,
            guest_kib: None,
        };
        assert_eq!(
            summary(&[s(3.0), s(1.0), s(2.0)], |x| x.wall_ms),
            (2.0, 1.0, 3.0)
        );
        assert_eq!(summary(&[s(4.0), s(1.0)], |x| x.wall_ms), (2.5, 1.0, 4.0));
    }
}
