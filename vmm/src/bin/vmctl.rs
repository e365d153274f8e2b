//! `vmctl`: the command-line client of a VMM's API socket.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vmm::api::{NetDevice, Request, VmClient};

/// Talks to a running `vmm` over its API socket and prints the JSON answer.
#[derive(Debug, Parser)]
#[command(name = "vmctl", version, about)]
struct Cli {
    /// The VMM's API socket (`vmm run --api-socket`).
    #[arg(long, short, value_name = "PATH")]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The VM's state, vCPUs, memory, CPU template.
    Status,
    /// Stop the vCPUs and devices (answered once they all hold still).
    Pause,
    /// Run the vCPUs again.
    Resume,
    /// PCI devices in root-port slots.
    #[command(subcommand)]
    Device(DeviceCommand),
}

#[derive(Debug, Subcommand)]
enum DeviceCommand {
    /// Root ports and what is in their slots.
    List,
    /// Hot-add a device; answered once it is in its slot and the guest was told.
    Add {
        #[command(subcommand)]
        kind: AddKind,
    },
    /// Remove a device: orderly through the attention button (answered once the guest has
    /// powered the slot off, or failed after 30 s), or with --surprise at once.
    Remove {
        /// Device ID, as `device list` shows it (e.g. net0).
        id: String,
        /// Yank it without asking the guest.
        #[arg(long)]
        surprise: bool,
    },
}

#[derive(Debug, Subcommand)]
enum AddKind {
    /// A virtio-net device: `socket=PATH[,mac=MAC]` or `tap=NAME[,mac=MAC]`.
    Net {
        /// The backend and MAC.
        spec: String,
        /// Root port number to use (default: the first free one).
        #[arg(long)]
        port: Option<u8>,
    },
}

fn request(command: Command) -> Result<Request, String> {
    Ok(match command {
        Command::Status => Request::Status,
        Command::Pause => Request::Pause,
        Command::Resume => Request::Resume,
        Command::Device(DeviceCommand::List) => Request::DeviceList,
        Command::Device(DeviceCommand::Add {
            kind: AddKind::Net { spec, port },
        }) => {
            let spec: vmm::config::NetSpec = spec.parse().map_err(|e| format!("{e}"))?;
            Request::DeviceAdd {
                net: NetDevice {
                    socket: spec.socket,
                    tap: spec.tap,
                    mac: spec.mac,
                },
                port,
            }
        }
        Command::Device(DeviceCommand::Remove { id, surprise }) => {
            Request::DeviceRemove { id, surprise }
        }
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let req = match request(cli.command) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vmctl: {e}");
            return ExitCode::from(2);
        }
    };
    let answer = VmClient::connect(&cli.socket).and_then(|mut c| c.request(&req));
    let answer = match answer {
        Ok(a) => a,
        Err(e) => {
            eprintln!("vmctl: {}", vmm::error_chain(&e));
            return ExitCode::from(2);
        }
    };
    // Printed as a JSON value: keys sorted, as the tools that read it expect.
    let printed = serde_json::to_value(&answer)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_else(|e| format!("(cannot print the answer: {e})"));
    println!("{printed}");
    if answer.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
