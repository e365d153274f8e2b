//! `vmm`: runs one microVM.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};

use vmm::config::{ByteSize, ConfigError, NetSpec, VfSpec, VmConfig, VmConfigFile};
use vmm::machine::{self, VmmError};
use vmm::stats::{ExitStats, STATS_PREFIX, peak_rss_kib};

/// Exit code for bad input (CLI, config, images).
const EXIT_USAGE: u8 = 2;
/// Exit code for a VM that failed or a VMM error.
const EXIT_FAILURE: u8 = 1;

/// A KVM microVM monitor with an emulated SR-IOV network adapter.
#[derive(Debug, Parser)]
#[command(name = "vmm", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Boot a microVM and run it until the guest powers off, resets or fails.
    ///
    /// Exit status: 0 when the guest shut down, reset or reported success (or the VMM got
    /// SIGINT/SIGTERM); 1 when the VM failed (triple fault, KVM internal error) or the VMM
    /// did; 2 for bad input (flags, config file, kernel, initrd, sizes); 3 when the test
    /// guest reported failure through the debug-exit port.
    Run(RunArgs),
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Kernel to boot: an ELF vmlinux or a bzImage, entered in 64-bit mode. Without it the
    /// default test guest (guest-images/out/testguest.elf, or $VMM_GUEST_IMAGES) boots.
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Initial ramdisk, loaded at the top of RAM below 3 GiB.
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,
    /// Kernel command line (at most 2047 bytes).
    #[arg(long, value_name = "STRING")]
    cmdline: Option<String>,
    /// Number of vCPUs, 1 to 254 [default: 1].
    #[arg(long, value_name = "N")]
    vcpus: Option<u32>,
    /// Guest memory, e.g. 256M or 1G; RAM above 3 GiB is placed above 4 GiB
    /// [default: 256M].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    memory: Option<ByteSize>,
    /// CPUID template: `host` (the host's features, filtered for a VM) or `nested-safe`
    /// (without AVX/VEX, XSAVE, CX16 and the other instructions a software-assisted nested
    /// KVM cannot emulate in guest ring 0). Default: nested-safe on PVM hosts, else host.
    #[arg(long, value_name = "NAME")]
    cpu_template: Option<String>,
    /// Serve the JSON API on this unix socket (one request per line, e.g.
    /// {"action":"status"}).
    #[arg(long, value_name = "PATH")]
    api_socket: Option<PathBuf>,
    /// A virtio-net device in the next free root port: `socket=PATH[,mac=MAC]` (connect to
    /// a unix seqpacket socket, one frame per message), `tap=NAME[,mac=MAC]` (a TAP
    /// device) or `nicd=PATH[,mac=MAC][,standby[,reattach=auto|off]]` (a synthetic port
    /// of nicd on its synthetic socket, DIR/synthetic.sock, which reconnects when nicd
    /// comes back; `standby` offers VIRTIO_NET_F_STANDBY, the failover standby of the
    /// guest's VF of the same MAC; `reattach`: whether the vmm gives the guest a VF again
    /// after nicd was away, default auto). Repeatable.
    #[arg(long, value_name = "SPEC", value_parser = parse_net)]
    net: Vec<NetSpec>,
    /// A Virtual Function of nicd's SR-IOV adapter in the next free root port (after the
    /// --net devices): `socket=PATH`, the VF's vfio-user socket (nicd's
    /// `--socket-dir`/vfN.sock). The guest drives it with igbvf. Repeatable.
    #[arg(long, value_name = "SPEC", value_parser = parse_vf)]
    vf: Vec<VfSpec>,
    /// Add a virtio-iommu at 00:1f.0, described by an ACPI VIOT that covers every
    /// root-port bus (hot-added functions and VFs included). Devices behind it offer
    /// VIRTIO_F_ACCESS_PLATFORM and their DMA is translated by it.
    #[arg(long)]
    iommu: bool,
    /// Number of PCIe root ports, 0 to 31, each a native-hotplug slot with its own bus
    /// [default: 4].
    #[arg(long, value_name = "N")]
    pcie_root_ports: Option<u32>,
    /// Read settings from a JSON file (keys: kernel, initrd, cmdline, vcpus, memory,
    /// cpu_template, api_socket, pcie_root_ports, net, vf, iommu); flags given on the command
    /// line win.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// At exit, print one JSON line on stderr with wall time, peak RSS and guest memory
    /// touched (for benchmarks).
    #[arg(long)]
    exit_stats: bool,
}

fn parse_net(s: &str) -> Result<NetSpec, String> {
    s.parse().map_err(|e: ConfigError| e.to_string())
}

fn parse_vf(s: &str) -> Result<VfSpec, String> {
    s.parse().map_err(|e: ConfigError| e.to_string())
}

fn parse_size(s: &str) -> Result<ByteSize, String> {
    s.parse().map_err(|e: ConfigError| e.to_string())
}

fn run(args: RunArgs, started: Instant) -> Result<(u8, String), VmmError> {
    let file = match &args.config {
        Some(path) => VmConfigFile::load(path)?,
        None => VmConfigFile::default(),
    };
    let cli = VmConfigFile {
        kernel: args.kernel,
        initrd: args.initrd,
        cmdline: args.cmdline,
        vcpus: args.vcpus,
        memory: args.memory,
        cpu_template: args.cpu_template,
        api_socket: args.api_socket,
        pcie_root_ports: args.pcie_root_ports,
        net: (!args.net.is_empty()).then_some(args.net),
        vf: (!args.vf.is_empty()).then_some(args.vf),
        iommu: args.iommu.then_some(true),
    };
    let config = VmConfig::try_from(file.merged_with(cli))?;
    let outcome = machine::run(&config)?;
    if args.exit_stats {
        let stats = ExitStats {
            wall_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            peak_rss_kib: peak_rss_kib(),
            guest_touched_kib: outcome.guest_touched_bytes().unwrap_or(0) / 1024,
        };
        if let Ok(json) = serde_json::to_string(&stats) {
            eprintln!("{STATS_PREFIX}{json}");
        }
    }
    Ok(outcome.end.exit_code_and_message())
}

fn main() -> ExitCode {
    let started = Instant::now();
    vmm::logger::init("vmm", "VMM_LOG");
    vmm::console::install_panic_hook();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match cli.command {
        Command::Run(args) => match run(args, started) {
            Ok((code, message)) => {
                eprintln!("vmm: {message}");
                ExitCode::from(code)
            }
            Err(e) => {
                eprintln!("vmm: error: {}", vmm::error_chain(&e));
                ExitCode::from(if e.is_user_error() {
                    EXIT_USAGE
                } else {
                    EXIT_FAILURE
                })
            }
        },
    }
}
