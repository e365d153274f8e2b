//! `nested-kvm`: the nested KVM host by hand (tests/src/nested.rs).
//!
//! ```text
//! nested-kvm test [FILTER]...     the Linux-guest tests inside the nested host (with
//!                                 RUST_TEST_NOCAPTURE=1, their output shows when they pass)
//! nested-kvm shell                a shell in the nested host, with the payload in /payload
//! nested-kvm bench [--runs N] [--vcpus N] [--append ARGS] [--timeout S] [--trace]
//!                                 boot times of a Linux-guest scenario there (smoke by default)
//! ```
//!
//! Run it with cargo, so that the vmm it puts in the host is built and current:
//! `cargo run -p tests --bin nested-kvm -- shell`.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tests::nested::{
    self, BootLoop, Limits, NestedHost, Payload, base_payload, boot_loop_script, boot_results,
    echo_line, paths, run_retrying_emulator_failure,
};

#[derive(Parser)]
#[command(about = "Runs the vmm inside a nested KVM host under QEMU's emulator (TCG)")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the Linux-guest tests inside the nested host (those whose names contain one of
    /// the filters; all without).
    Test {
        /// Substrings of test names.
        filters: Vec<String>,
    },
    /// Boot the nested host with the payload and give a shell on its console (Ctrl-A X
    /// quits QEMU). `sh /payload/run` runs the Linux-guest tests; the vmm is
    /// /payload/bin/vmm, the images are in /payload/images.
    Shell,
    /// Boot the Linux guest with a scenario (smoke by default) inside the nested host, repeatedly,
    /// and print the vmm's wall time (start to exit) of each boot and their median.
    Bench {
        /// Boots.
        #[arg(long, default_value_t = 5)]
        runs: u32,
        /// vCPUs of the Linux guest.
        #[arg(long, default_value_t = 2)]
        vcpus: u32,
        /// The initramfs scenario: smoke, iommu (needs `--vmm-args "--iommu --net ..."`), pcie
        /// (needs `--tap` and a `--net tap=...`).
        #[arg(long, default_value = "smoke")]
        scenario: String,
        /// More vmm flags, as shell words (e.g. `--pcie-root-ports 2 --net tap=t0`).
        #[arg(long, default_value = "", allow_hyphen_values = true)]
        vmm_args: String,
        /// A TAP the vmm creates (in `--vmm-args`) whose host side gets 10.0.2.2/24.
        #[arg(long)]
        tap: Option<String>,
        /// More kernel command-line words for the guest (e.g. `quiet`).
        #[arg(long, default_value = "")]
        append: String,
        /// Seconds after which a boot counts as hung (the vmm's threads are then shown).
        #[arg(long, default_value_t = 180)]
        timeout: u32,
        /// Record KVM's tracepoints in the nested host; a failed boot's transcript ends
        /// with the last 2000 events (exits, injected exceptions, IPIs).
        #[arg(long)]
        trace: bool,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Cmd::Test { filters } => test(&filters),
        Cmd::Shell => shell(),
        Cmd::Bench {
            runs,
            vcpus,
            scenario,
            vmm_args,
            tap,
            append,
            timeout,
            trace,
        } => bench(&BootLoop {
            runs,
            vcpus,
            scenario,
            extra_cmdline: append,
            vmm_args,
            tap,
            timeout_s: timeout,
            trace,
        }),
    }
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("nested-kvm: {e}");
    ExitCode::FAILURE
}

fn test(filters: &[String]) -> ExitCode {
    let limits = Limits {
        stall: Duration::from_secs(120),
        deadline: Duration::from_secs(30 * 60),
    };
    match nested::run_linux_tier(filters, limits) {
        Ok(report) => {
            println!("{}", report.summary());
            if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => fail(e),
    }
}

fn shell() -> ExitCode {
    let result = (|| -> Result<std::process::ExitStatus, nested::NestedError> {
        let host = NestedHost::find()?;
        let mut payload: Payload = base_payload(&nested::tests_script(&[], false))?;
        for target in nested::LINUX_TEST_TARGETS {
            let bin = nested::test_binary(target)?;
            payload.binary(&format!("{}/{target}", paths::TESTS), &bin)?;
        }
        eprintln!(
            "nested-kvm: booting the nested host (Ctrl-A X quits); in it: `sh /payload/run` \
             runs the Linux-guest tests, /payload/bin/vmm is the vmm"
        );
        nested::shell(&host, &payload)
    })();
    match result {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(s) => fail(format!("QEMU exited with {s}")),
        Err(e) => fail(e),
    }
}

fn bench(plan: &BootLoop) -> ExitCode {
    let BootLoop { runs, vcpus, .. } = *plan;
    let append = &plan.extra_cmdline;
    let result = (|| -> Result<nested::Run, nested::NestedError> {
        let host = NestedHost::find()?;
        let payload = base_payload(&boot_loop_script(plan))?;
        let limits = Limits {
            stall: Duration::from_secs(u64::from(plan.timeout_s) + 60),
            deadline: Duration::from_secs(u64::from(runs) * u64::from(plan.timeout_s + 30) + 300),
        };
        run_retrying_emulator_failure(&host, &payload, limits, echo_line)
    })();
    let run = match result {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let boots = boot_results(&run.lines);
    let passed = boots.iter().filter(|b| b.passed && b.status == 0).count();
    let hung = boots.iter().filter(|b| b.hung).count();
    let mut walls: Vec<Duration> = boots
        .iter()
        .filter(|b| b.passed && b.status == 0)
        .filter_map(|b| b.wall)
        .collect();
    walls.sort();
    let cmdline = if append.is_empty() { "" } else { " " };
    println!(
        "nested host: QEMU start to /init {}",
        run.to_init
            .map(|d| format!("{:.1} s", d.as_secs_f64()))
            .unwrap_or_else(|| "never".into())
    );
    if let (Some(min), Some(max)) = (walls.first(), walls.last()) {
        println!(
            "{} boot in the nested host ({vcpus} vCPUs, 512M{cmdline}{append}): \
             median {:.2} s, min {:.2} s, max {:.2} s over {} passing boots",
            plan.scenario,
            walls[walls.len() / 2].as_secs_f64(),
            min.as_secs_f64(),
            max.as_secs_f64(),
            walls.len()
        );
    }
    println!(
        "boots: {} of {runs} ran, {passed} passed, {} failed ({hung} hung); {}",
        boots.len(),
        boots.len() - passed,
        run.outcome
    );
    if passed == runs as usize {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
