//! `nicd`: the emulated SR-IOV adapter, serving its VFs over vfio-user.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use vmm::nicd::{MAX_TOTAL_VFS, NicdConfig, UplinkSpec};

/// Exit code for bad input.
const EXIT_USAGE: u8 = 2;
/// Exit code for other failures.
const EXIT_FAILURE: u8 = 1;

/// An emulated Intel 82576 SR-IOV network adapter whose Virtual Functions (8086:10ca,
/// driven by Linux's igbvf) are served over vfio-user, one unix socket per VF, to QEMU's
/// vfio-user-pci or the vmm. Inside, a NIC switch joins the VFs and the uplink; manage
/// it with `vmctl --socket API nic ...`, in ip-link's words.
///
/// Prints `nicd: ready` on stderr once every socket listens. SIGTERM or SIGINT: clean
/// shutdown, exit 0. Bad arguments: exit 2. Other failures: exit 1.
#[derive(Debug, Parser)]
#[command(name = "nicd", version, about, long_about = None)]
struct Cli {
    /// Virtual Functions to enable at start (0 to --total-vfs; `vmctl nic numvfs` changes
    /// it later, as sriov_numvfs does).
    #[arg(long, value_name = "N")]
    vfs: u16,
    /// The physical port: `tap=NAME` (a TAP device, created if needed, with
    /// IFF_VNET_HDR), `socket=PATH` (connect to a unix SOCK_SEQPACKET socket, one frame
    /// per message) or `none`.
    #[arg(long, value_name = "SPEC")]
    uplink: UplinkSpec,
    /// Directory for the sockets: VF k listens on DIR/vf<k>.sock, guests' synthetic ports
    /// connect to DIR/synthetic.sock.
    #[arg(long, value_name = "DIR")]
    socket_dir: PathBuf,
    /// The management API socket (`vmctl --socket PATH nic ...`).
    #[arg(long, value_name = "PATH")]
    api_socket: PathBuf,
    /// TotalVFs of the adapter, 1 to 255 [default: 8].
    #[arg(long, value_name = "T", default_value_t = 8, hide_default_value = true)]
    total_vfs: u16,
    /// The physical port's line rate in Mbit/s, which frames to the uplink share (the
    /// 82576's 1000 by default; 0: no limit) [default: 1000].
    #[arg(
        long,
        value_name = "MBPS",
        default_value_t = 1000,
        hide_default_value = true
    )]
    uplink_mbps: u32,
}

fn config(cli: Cli) -> Result<NicdConfig, String> {
    if !(1..=MAX_TOTAL_VFS).contains(&cli.total_vfs) {
        return Err(format!(
            "--total-vfs {} is out of range (1 to {MAX_TOTAL_VFS})",
            cli.total_vfs
        ));
    }
    if cli.vfs > cli.total_vfs {
        return Err(format!(
            "--vfs {} exceeds --total-vfs {}",
            cli.vfs, cli.total_vfs
        ));
    }
    if !cli.socket_dir.is_dir() {
        return Err(format!(
            "--socket-dir {} is not a directory",
            cli.socket_dir.display()
        ));
    }
    Ok(NicdConfig {
        vfs: cli.vfs,
        total_vfs: cli.total_vfs,
        uplink: cli.uplink,
        socket_dir: cli.socket_dir,
        api_socket: cli.api_socket,
        uplink_mbps: cli.uplink_mbps,
    })
}

fn main() -> ExitCode {
    vmm::logger::init("nicd", "NICD_LOG");
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let cfg = match config(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("nicd: error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match vmm::nicd::run(&cfg, || eprintln!("nicd: ready")) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nicd: error: {}", vmm::error_chain(&e));
            ExitCode::from(EXIT_FAILURE)
        }
    }
}
