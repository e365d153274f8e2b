//! `vmctl`: the command-line client of a VMM's API socket.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::{Value, json};

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
    /// Stop the vCPUs (answered once they are all out of the guest).
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

fn request(cli: &Cli) -> Result<Value, String> {
    Ok(match &cli.command {
        Command::Status => json!({"action": "status"}),
        Command::Pause => json!({"action": "pause"}),
        Command::Resume => json!({"action": "resume"}),
        Command::Device(DeviceCommand::List) => json!({"action": "device-list"}),
        Command::Device(DeviceCommand::Add {
            kind: AddKind::Net { spec, port },
        }) => {
            let spec: vmm::config::NetSpec = spec.parse().map_err(|e| format!("{e}"))?;
            let mut r = json!({"action": "device-add", "net": spec});
            if let Some(p) = port {
                r["port"] = json!(p);
            }
            r
        }
        Command::Device(DeviceCommand::Remove { id, surprise }) => {
            json!({"action": "device-remove", "id": id, "surprise": surprise})
        }
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let req = match request(&cli) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vmctl: {e}");
            return ExitCode::from(2);
        }
    };
    let stream = match UnixStream::connect(&cli.socket) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("vmctl: cannot connect to {}: {e}", cli.socket.display());
            return ExitCode::from(2);
        }
    };
    // An orderly removal waits for the guest (up to 30 s in the VMM).
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    let mut writer = &stream;
    if let Err(e) = writeln!(writer, "{req}") {
        eprintln!("vmctl: cannot send the request: {e}");
        return ExitCode::from(2);
    }
    let mut line = String::new();
    if let Err(e) = BufReader::new(&stream).read_line(&mut line) {
        eprintln!("vmctl: no answer: {e}");
        return ExitCode::from(2);
    }
    let answer: Value = match serde_json::from_str(&line) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("vmctl: malformed answer ({e}): {line}");
            return ExitCode::from(2);
        }
    };
    println!(
        "{}",
        serde_json::to_string_pretty(&answer).unwrap_or_else(|_| line.clone())
    );
    if answer["ok"] == json!(true) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
