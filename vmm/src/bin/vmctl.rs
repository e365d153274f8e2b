//! `vmctl`: the command-line client of a VMM's API socket.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vmm::api::{Client, NetDevice, Request, VfDevice, VmClient};
use vmm::nicd::api::{NicRequest, NicResponse, VfSettings};

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
    /// The registers of each vCPU: RIP, control registers, pending events, the local
    /// APIC's in-service and requested vectors (pause the VM first).
    Vcpus,
    /// PCI devices in root-port slots.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Fail the guest over between its VF and its standby (the VM needs
    /// `--net nicd=PATH,mac=MAC,standby`): `detach` moves its traffic to the synthetic
    /// path and gives the VF back to nicd; `attach` takes a free VF from nicd and moves the
    /// traffic onto it; `move --to OTHER` detaches here and attaches in the VM whose API
    /// socket is OTHER (the VF goes from one guest to the other). Answered when done, with
    /// each step's time. `status`: the standby's synthetic port (connected to nicd or
    /// reconnecting, frames lost) and the VF re-attach policy.
    Failover {
        /// detach, attach, move or status.
        #[arg(value_parser = ["detach", "attach", "move", "status"])]
        op: String,
        /// For move: the API socket of the VM that gets the VF.
        #[arg(long, value_name = "PATH")]
        to: Option<PathBuf>,
        /// detach and move: move the guest's filters to the synthetic path once the guest
        /// has released its VF, not before (for Linux guests, whose net_failover drops
        /// what comes on the standby while the VF is its primary).
        #[arg(long)]
        filters_last: bool,
        /// How long the guest has to release its VF (then it is surprise-removed), or to
        /// bring a new one up, in ms [default: 10000].
        #[arg(long, value_name = "MS")]
        timeout_ms: Option<u64>,
    },
    /// Manage a nicd adapter (--socket is nicd's --api-socket), in iproute2's words.
    #[command(subcommand)]
    Nic(NicCommand),
}

#[derive(Debug, Subcommand)]
enum NicCommand {
    /// Set the number of enabled VFs, as `echo N > .../sriov_numvfs` does (0 disables
    /// them; changing a non-zero count needs 0 first).
    Numvfs {
        /// The new count, 0 to TotalVFs.
        #[arg(value_name = "N")]
        numvfs: u16,
    },
    /// Change a VF, as `ip link set DEV vf N ...` does.
    Vf {
        /// The VF number.
        #[arg(value_name = "N")]
        vf: u16,
        #[command(subcommand)]
        command: VfCommand,
    },
    /// Show the VFs as `ip link show DEV` prints them.
    Show {
        /// With statistics, as `ip -s link show`.
        #[arg(short = 's', long = "stats")]
        stats: bool,
        /// As `ip -j link show`: the vfinfo_list as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Capture a port to a pcap file (tcpdump -r reads it): `pcap PORT FILE` starts,
    /// `pcap PORT stop` stops. PORT is uplink, default (the PF's VPort) or vfN.
    Pcap {
        /// uplink, default or vfN.
        #[arg(value_name = "PORT")]
        port: String,
        /// The file to write, or `stop`.
        #[arg(value_name = "FILE|stop")]
        file: String,
    },
    /// The PF and its VFs with their routing IDs, as `lspci -tv` draws them.
    Lspci,
    /// Failover: move the filters of the guest whose synthetic port has MAC to `default`
    /// (the synthetic path) or `vfN` (the guest's VF), in one step.
    GuestFilters {
        /// The guest's MAC.
        mac: String,
        /// default or vfN.
        to: String,
    },
    /// Frames lost for want of a port, per destination MAC: in flight between VPorts
    /// during a failover, with no owner at all, refused by a guest's synthetic port
    /// (`--json`: as JSON).
    Lost {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Failover: claim a free VF for the guest of MAC (its admin MAC set to MAC); prints
    /// its number and socket (`--json`: as JSON).
    VfClaim {
        /// The guest's MAC.
        mac: String,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Failover: whether VF N has a client, a VPort (its driver's RESET) and RX
    /// descriptors (`--json`: as JSON).
    VfStatus {
        /// The VF.
        vf: u16,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum VfCommand {
    /// mac LLADDR | vlan VLANID [qos VLAN-QOS] | spoofchk {on|off} | trust {on|off} |
    /// state {auto|enable|disable} | max_tx_rate TXRATE | min_tx_rate TXRATE
    /// (rates in Mbps, 0 for none; mac 00:00:00:00:00:00 clears the admin MAC; vlan 0
    /// removes the port VLAN).
    #[command(
        override_usage = "vmctl --socket PATH nic vf N set [ mac LLADDR ] [ vlan VLANID [ qos VLAN-QOS ] ]\n\
        \x20                                  [ spoofchk { on | off } ] [ trust { on | off } ]\n\
        \x20                                  [ state { auto | enable | disable } ]\n\
        \x20                                  [ max_tx_rate TXRATE ] [ min_tx_rate TXRATE ]"
    )]
    Set {
        /// The settings, as ip link takes them.
        #[arg(
            value_name = "SETTING",
            trailing_var_arg = true,
            allow_hyphen_values = true,
            required = true
        )]
        settings: Vec<String>,
    },
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
    /// A virtio-net device: `socket=PATH[,mac=MAC]`, `tap=NAME[,mac=MAC]` or
    /// `nicd=PATH[,mac=MAC][,standby[,reattach=auto|off]]` (a synthetic port of nicd;
    /// `standby`: the failover standby of the guest's VF; `reattach`: whether the vmm
    /// gives the guest a VF again after nicd was away, default auto).
    Net {
        /// The backend and MAC.
        spec: String,
        /// Root port number to use (default: the first free one).
        #[arg(long)]
        port: Option<u8>,
    },
    /// A VF of nicd's adapter: `socket=PATH`, the VF's vfio-user socket.
    Vf {
        /// The socket.
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
        Command::Vcpus => Request::Vcpus,
        Command::Device(DeviceCommand::List) => Request::DeviceList,
        Command::Device(DeviceCommand::Add {
            kind: AddKind::Net { spec, port },
        }) => {
            let spec: vmm::config::NetSpec = spec.parse().map_err(|e| format!("{e}"))?;
            Request::DeviceAdd {
                net: Some(NetDevice {
                    socket: spec.socket,
                    tap: spec.tap,
                    nicd: spec.nicd,
                    mac: spec.mac,
                    standby: spec.standby,
                    reattach: spec.reattach,
                }),
                vf: None,
                port,
            }
        }
        Command::Device(DeviceCommand::Add {
            kind: AddKind::Vf { spec, port },
        }) => {
            let spec: vmm::config::VfSpec = spec.parse().map_err(|e| format!("{e}"))?;
            Request::DeviceAdd {
                net: None,
                vf: Some(VfDevice {
                    socket: spec.socket,
                }),
                port,
            }
        }
        Command::Device(DeviceCommand::Remove { id, surprise }) => {
            Request::DeviceRemove { id, surprise }
        }
        Command::Failover {
            op,
            timeout_ms,
            filters_last,
            ..
        } => Request::Failover {
            op,
            timeout_ms,
            filters_last,
        },
        Command::Nic(_) => return Err("nic commands go to nicd".into()),
    })
}

/// What `ip link set` says of a value it cannot take.
fn invalid(what: &str, value: &str) -> String {
    format!("Error: argument \"{value}\" is wrong: Invalid \"{what}\" value")
}

fn on_off(what: &str, value: &str) -> Result<bool, String> {
    match value {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!(
            "Error: argument of \"{what}\" must be \"on\" or \"off\", not \"{value}\""
        )),
    }
}

fn number<T: std::str::FromStr>(what: &str, value: &str) -> Result<T, String> {
    value.parse().map_err(|_| invalid(what, value))
}

/// Parses ip link's `vf N` settings.
fn vf_settings(args: &[String]) -> Result<VfSettings, String> {
    let mut s = VfSettings::default();
    let mut it = args.iter().map(String::as_str).peekable();
    while let Some(word) = it.next() {
        let mut value = || {
            it.next().ok_or_else(|| {
                format!(
                    "Command line is not complete. Try option \"help\" (\"{word}\" needs a value)"
                )
            })
        };
        match word {
            "mac" => {
                let v = value()?;
                v.parse::<devices::nic_switch::MacAddr>()
                    .map_err(|_| invalid("mac", v))?;
                s.mac = Some(v.to_string());
            }
            "vlan" => s.vlan = Some(number("vlan", value()?)?),
            "qos" => {
                if s.vlan.is_none() {
                    return Err("Error: \"qos\" must follow \"vlan\"".into());
                }
                s.qos = Some(number("qos", value()?)?);
            }
            "spoofchk" => s.spoofchk = Some(on_off("spoofchk", value()?)?),
            "trust" => s.trust = Some(on_off("trust", value()?)?),
            "state" => {
                let v = value()?;
                vmm::nicd::api::parse_link_state(v).ok_or_else(|| invalid("state", v))?;
                s.state = Some(v.to_string());
            }
            "max_tx_rate" => s.max_tx_rate = Some(number("max_tx_rate", value()?)?),
            "min_tx_rate" => s.min_tx_rate = Some(number("min_tx_rate", value()?)?),
            other => {
                return Err(format!(
                    "Error: argument \"{other}\" is wrong: unknown vf setting"
                ));
            }
        }
    }
    Ok(s)
}

fn nic_request(command: NicCommand) -> Result<(NicRequest, bool), String> {
    Ok(match command {
        NicCommand::Numvfs { numvfs } => (NicRequest::Numvfs { numvfs }, false),
        NicCommand::Vf {
            vf,
            command: VfCommand::Set { settings },
        } => (
            NicRequest::VfSet {
                vf,
                settings: vf_settings(&settings)?,
            },
            false,
        ),
        NicCommand::Show { stats, json } => (NicRequest::Show { stats }, json),
        NicCommand::Pcap { port, file } => {
            if vmm::nicd::api::parse_port(&port).is_none() {
                return Err(format!(
                    "Error: \"{port}\" is not a port (uplink, default, vf0, vf1, ...)"
                ));
            }
            if file == "stop" {
                (NicRequest::PcapStop { port }, false)
            } else {
                (
                    NicRequest::PcapStart {
                        port,
                        file: std::path::absolute(&file).map_err(|e| format!("{file}: {e}"))?,
                    },
                    false,
                )
            }
        }
        NicCommand::Lspci => (NicRequest::Lspci, false),
        NicCommand::GuestFilters { mac, to } => (NicRequest::GuestFilters { mac, to }, false),
        NicCommand::VfClaim { mac, json } => (NicRequest::VfClaim { mac }, json),
        NicCommand::Lost { json } => (NicRequest::Lost, json),
        NicCommand::VfStatus { vf, json } => (NicRequest::VfStatus { vf }, json),
    })
}

/// `vmctl nic ...`: prints what the adapter answered, as the tool it mirrors would.
fn nic(socket: &std::path::Path, command: NicCommand) -> ExitCode {
    let (req, json) = match nic_request(command) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let answer = Client::connect(socket, std::time::Duration::from_secs(10))
        .and_then(|mut c| c.call::<_, NicResponse>(&req));
    let answer = match answer {
        Ok(a) => a,
        Err(e) => {
            eprintln!("vmctl: {}", vmm::error_chain(&e));
            return ExitCode::from(2);
        }
    };
    if !answer.ok {
        eprintln!("vmctl: {}", answer.error.unwrap_or_default());
        return ExitCode::FAILURE;
    }
    let out = if json {
        answer
            .json
            .and_then(|j| serde_json::to_string(&j).ok())
            .unwrap_or_default()
    } else {
        answer.text.unwrap_or_default()
    };
    if !out.is_empty() {
        println!("{out}");
    }
    ExitCode::SUCCESS
}

/// `vmctl failover move --to OTHER`: a detach here, then an attach there; prints both
/// answers as a JSON array.
fn failover_move(
    from: &std::path::Path,
    to: &std::path::Path,
    timeout_ms: Option<u64>,
    filters_last: bool,
) -> ExitCode {
    let call = |socket: &std::path::Path, op: &str| {
        VmClient::connect(socket).and_then(|mut c| {
            c.request(&Request::Failover {
                op: op.to_string(),
                timeout_ms,
                filters_last,
            })
        })
    };
    let mut answers = Vec::new();
    for (socket, op) in [(from, "detach"), (to, "attach")] {
        match call(socket, op) {
            Ok(a) => {
                let ok = a.ok;
                answers.push(a);
                if !ok {
                    break;
                }
            }
            Err(e) => {
                eprintln!("vmctl: {}: {}", socket.display(), vmm::error_chain(&e));
                return ExitCode::from(2);
            }
        }
    }
    let printed = serde_json::to_string_pretty(&answers)
        .unwrap_or_else(|e| format!("(cannot print the answers: {e})"));
    println!("{printed}");
    if answers.len() == 2 && answers.iter().all(|a| a.ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = match cli.command {
        Command::Nic(n) => return nic(&cli.socket, n),
        Command::Failover {
            op,
            to: Some(to),
            timeout_ms,
            filters_last,
        } if op == "move" => return failover_move(&cli.socket, &to, timeout_ms, filters_last),
        Command::Failover { op, .. } if op == "move" => {
            eprintln!("vmctl: failover move needs --to PATH (the other VM's API socket)");
            return ExitCode::from(2);
        }
        c => c,
    };
    let req = match request(command) {
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
