//! nicd's API: its requests and answers (one JSON object per line, as the vmm's API, served
//! by the same [`ApiServer`](crate::api::ApiServer)), and the handler that carries them out
//! on the adapter. `vmctl --socket S nic ...` is the client; the words mirror iproute2's.

use std::fmt::Write as _;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use devices::nic_switch::{LinkState, MacAddr, PortId, VPortId, VlanProto, vf_json, vf_text};
use devices::sriov::pf::PF_DEVFN;
use devices::sync::lock;

use super::adapter::{Adapter, Refusal};
use crate::api::{ApiHandler, Reply};

/// A request.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "action", rename_all = "kebab-case", deny_unknown_fields)]
pub enum NicRequest {
    /// Set NumVFs (as writing `sriov_numvfs`).
    Numvfs {
        /// The new count.
        numvfs: u16,
    },
    /// `ip link set PF vf N ...`: every setting given, in iproute2's order.
    VfSet {
        /// The VF.
        vf: u16,
        /// The settings.
        settings: VfSettings,
    },
    /// `ip [-s] link show PF`: the VF lines (and the same as JSON).
    Show {
        /// With statistics (`-s`).
        #[serde(default)]
        stats: bool,
    },
    /// Start a pcap capture of a port into a file.
    PcapStart {
        /// `uplink`, `default` or `vfN`.
        port: String,
        /// The file to write (created or truncated).
        file: PathBuf,
    },
    /// Stop a capture.
    PcapStop {
        /// The port.
        port: String,
    },
    /// The PF and the VFs with their RIDs, like `lspci -tv`.
    Lspci,
    /// Failover: the filters of the guest whose synthetic port has `mac` move to `to`
    /// (`default`, or `vfN`) in one step.
    GuestFilters {
        /// The guest's MAC.
        mac: String,
        /// `default` or `vfN`.
        to: String,
    },
    /// Failover, attach: a free VF for the guest of `mac`, its admin MAC set to it;
    /// answers `{"vf": N, "socket": PATH}` in `json`.
    VfClaim {
        /// The guest's MAC.
        mac: String,
    },
    /// Frames lost for want of a port, per destination MAC: `in_flight` (a guest's filters
    /// between VPorts), `no_owner` (no filter names the MAC), and per synthetic port the
    /// frames its guest's full socket refused; in `json`.
    Lost,
    /// Failover: VF `vf`'s state, `{"client": bool, "vport": bool, "rx_ready": bool}`
    /// in `json` (its driver is up once it has its VPort and RX descriptors).
    VfStatus {
        /// The VF.
        vf: u16,
    },
}

/// What `ip link set PF vf N` can set; absent fields stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct VfSettings {
    /// Admin MAC (`00:00:00:00:00:00` clears it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Port VLAN (0 removes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u32>,
    /// Its priority (with `vlan`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos: Option<u32>,
    /// Spoof checking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spoofchk: Option<bool>,
    /// Trust.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust: Option<bool>,
    /// Link state: `auto`, `enable` or `disable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// max_tx_rate, Mbps (0: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tx_rate: Option<u32>,
    /// min_tx_rate, Mbps (0: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_tx_rate: Option<u32>,
}

/// The answer: `ok`, and the text (and JSON) to print, or the error.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct NicResponse {
    /// Whether the request succeeded.
    pub ok: bool,
    /// Why not: the errno's message and the details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The errno, for a refusal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno: Option<i32>,
    /// What to print.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// What to print with `--json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<serde_json::Value>,
}

impl NicResponse {
    /// Success with `text`.
    pub fn text(text: String) -> Self {
        Self {
            ok: true,
            text: Some(text),
            ..Self::default()
        }
    }

    /// Failure with `message`.
    pub fn error(message: String) -> Self {
        Self {
            ok: false,
            error: Some(message),
            ..Self::default()
        }
    }

    fn refused(r: &Refusal) -> Self {
        Self {
            errno: Some(r.errno),
            ..Self::error(r.to_string())
        }
    }
}

/// Carries out API requests on the adapter.
#[derive(Debug)]
pub struct NicdApi {
    adapter: Arc<Mutex<Adapter>>,
}

impl NicdApi {
    /// A handler for `adapter`.
    pub fn new(adapter: Arc<Mutex<Adapter>>) -> Self {
        Self { adapter }
    }
}

impl ApiHandler for NicdApi {
    type Request = NicRequest;
    type Response = NicResponse;

    fn error(&self, message: String) -> NicResponse {
        NicResponse::error(message)
    }

    fn handle(&mut self, request: NicRequest) -> Reply<NicResponse> {
        let mut a = lock(&self.adapter);
        let r = match request {
            NicRequest::Numvfs { numvfs } => a
                .set_num_vfs(numvfs)
                .map(|()| NicResponse::text(String::new())),
            NicRequest::VfSet { vf, settings } => vf_set(&mut a, vf, &settings),
            NicRequest::Show { stats } => show(&a, stats),
            NicRequest::PcapStart { port, file } => pcap_start(&a, &port, file),
            NicRequest::PcapStop { port } => pcap_stop(&a, &port),
            NicRequest::Lspci => Ok(NicResponse::text(lspci(&a))),
            NicRequest::GuestFilters { mac, to } => guest_filters(&mut a, &mac, &to),
            NicRequest::Lost => Ok(lost(&a)),
            NicRequest::VfClaim { mac } => parse_mac(&mac).and_then(|mac| {
                let (vf, socket) = a.claim_vf(mac)?;
                Ok(NicResponse {
                    json: Some(serde_json::json!({ "vf": vf, "socket": socket })),
                    ..NicResponse::text(format!("vf {vf} for {mac}: {}", socket.display()))
                })
            }),
            NicRequest::VfStatus { vf } => {
                a.vf_status(vf)
                    .map(|(client, vport, rx_ready)| NicResponse {
                        json: Some(serde_json::json!({
                            "client": client, "vport": vport, "rx_ready": rx_ready
                        })),
                        ..NicResponse::text(format!(
                            "vf {vf}: client {client}, vport {vport}, rx_ready {rx_ready}"
                        ))
                    })
            }
        };
        Reply::Now(r.unwrap_or_else(|e| NicResponse::refused(&e)))
    }
}

fn invalid(detail: String) -> Refusal {
    Refusal::new(libc::EINVAL, detail)
}

fn parse_mac(mac: &str) -> Result<MacAddr, Refusal> {
    mac.parse()
        .map_err(|_| invalid(format!("\"{mac}\" is not a MAC address")))
}

fn lost(a: &Adapter) -> NicResponse {
    let f = lock(a.fabric());
    let l = f.switch.lost_frames();
    let map = |m: &std::collections::BTreeMap<MacAddr, u64>| {
        m.iter()
            .map(|(mac, n)| (mac.to_string(), serde_json::json!(n)))
            .collect::<serde_json::Map<_, _>>()
    };
    let synthetic: serde_json::Map<_, _> = a
        .synthetics
        .iter()
        .flat_map(|s| s.conns.iter())
        .filter_map(|c| {
            let (mac, _) = f.switch.synthetic(c.id?)?;
            Some((mac.to_string(), serde_json::json!(c.lost)))
        })
        .collect();
    let json = serde_json::json!({
        "in_flight": map(&l.in_flight),
        "no_owner": map(&l.no_owner),
        "no_owner_untracked": l.no_owner_untracked,
        "synthetic_refused": synthetic,
    });
    let text = format!(
        "in flight: {}; no owner: {} (+{} untracked); refused by synthetic ports: {}",
        json["in_flight"], json["no_owner"], l.no_owner_untracked, json["synthetic_refused"]
    );
    NicResponse {
        json: Some(json),
        ..NicResponse::text(text)
    }
}

fn guest_filters(a: &mut Adapter, mac: &str, to: &str) -> Result<NicResponse, Refusal> {
    let mac = parse_mac(mac)?;
    let vport = match parse_port(to) {
        Some(PortId::Default) => VPortId::Default,
        Some(PortId::Vf(n)) => VPortId::Vf(n),
        _ => {
            return Err(invalid(format!(
                "\"{to}\" is not a VPort (default, vf0, ...)"
            )));
        }
    };
    a.move_guest_filters(mac, vport)?;
    Ok(NicResponse::text(format!(
        "the filters of {mac} are on {to}"
    )))
}

/// Parses `auto|enable|disable`.
pub fn parse_link_state(s: &str) -> Option<LinkState> {
    match s {
        "auto" => Some(LinkState::Auto),
        "enable" => Some(LinkState::Enable),
        "disable" => Some(LinkState::Disable),
        _ => None,
    }
}

/// Applies the settings in the order the kernel's do_setvfinfo takes them (mac, vlan,
/// rate, spoofchk, link state, trust), stopping at the first refusal; the VF model then
/// follows the new policy.
fn vf_set(a: &mut Adapter, vf: u16, s: &VfSettings) -> Result<NicResponse, Refusal> {
    let r = vf_set_switch(a, vf, s);
    a.sync_policy(vf);
    r.map(|()| NicResponse::text(String::new()))
}

fn vf_set_switch(a: &Adapter, vf: u16, s: &VfSettings) -> Result<(), Refusal> {
    let mut f = lock(a.fabric());
    let now = f.now();
    let sw = &mut f.switch;
    sw.vf_policy(vf)?;
    if let Some(mac) = &s.mac {
        let mac: MacAddr = mac
            .parse()
            .map_err(|_| invalid(format!("\"{mac}\" is not a MAC address")))?;
        sw.set_vf_mac(vf, mac)?;
    }
    if s.vlan.is_some() || s.qos.is_some() {
        let vlan = s
            .vlan
            .ok_or_else(|| invalid("qos needs vlan".to_string()))?;
        sw.set_vf_vlan(vf, vlan, s.qos.unwrap_or(0), VlanProto::Dot1Q)?;
    }
    if s.max_tx_rate.is_some() || s.min_tx_rate.is_some() {
        let p = sw.vf_policy(vf)?;
        let max = s.max_tx_rate.unwrap_or(p.max_tx_rate);
        let min = s.min_tx_rate.unwrap_or(p.min_tx_rate);
        sw.set_vf_rate(vf, min, max, now)?;
    }
    if let Some(on) = s.spoofchk {
        sw.set_vf_spoofchk(vf, on)?;
    }
    if let Some(state) = &s.state {
        let state =
            parse_link_state(state).ok_or_else(|| invalid(format!("link state \"{state}\"")))?;
        sw.set_vf_link_state(vf, state)?;
    }
    if let Some(on) = s.trust {
        sw.set_vf_trust(vf, on)?;
    }
    Ok(())
}

fn show(a: &Adapter, stats: bool) -> Result<NicResponse, Refusal> {
    let f = lock(a.fabric());
    let mut lines = Vec::new();
    let mut json = Vec::new();
    for vf in 0..f.switch.num_vfs() {
        let info = f.switch.vf_info(vf)?;
        lines.push(vf_text(&info, stats));
        json.push(vf_json(&info, stats));
    }
    let json = serde_json::to_value(&json).map_err(|e| Refusal::new(libc::EIO, e.to_string()))?;
    Ok(NicResponse {
        json: Some(serde_json::json!({ "vfinfo_list": json })),
        ..NicResponse::text(lines.join("\n"))
    })
}

/// Parses a capture point: `uplink`, `default` or `vfN`.
pub fn parse_port(s: &str) -> Option<PortId> {
    match s {
        "uplink" => Some(PortId::Uplink),
        "default" => Some(PortId::Default),
        _ => s.strip_prefix("vf")?.parse().ok().map(PortId::Vf),
    }
}

fn port_of(a: &Adapter, s: &str) -> Result<PortId, Refusal> {
    let port = parse_port(s).ok_or_else(|| {
        invalid(format!(
            "\"{s}\" is not a port (uplink, default, vf0, vf1, ...)"
        ))
    })?;
    if let PortId::Vf(n) = port {
        lock(a.fabric()).switch.vf_policy(n)?;
    }
    Ok(port)
}

fn pcap_start(a: &Adapter, port: &str, file: PathBuf) -> Result<NicResponse, Refusal> {
    let port = port_of(a, port)?;
    let mut f = lock(a.fabric());
    if f.switch.capturing(port) {
        return Err(Refusal::new(
            libc::EBUSY,
            format!("{port} is being captured"),
        ));
    }
    let out = create_capture_file(&file).map_err(|e| {
        Refusal::new(
            e.raw_os_error().unwrap_or(libc::EIO),
            format!("cannot create {}", file.display()),
        )
    })?;
    let epoch = f.epoch_unix();
    f.switch
        .start_capture(port, Box::new(BufWriter::new(out)), epoch)?;
    Ok(NicResponse::text(format!(
        "capturing {port} into {}",
        file.display()
    )))
}

/// Creates (or truncates) a regular file for a capture. Opened without blocking, so a
/// FIFO with no reader (or a device) named by an API client cannot stall nicd's one
/// thread in open(2); anything but a regular file is refused.
fn create_capture_file(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    // Plain blocking writes from here on, as for any regular file.
    // SAFETY: F_SETFL on a descriptor this function owns, with a valid flag set.
    if unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&f), libc::F_SETFL, 0) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(f)
}

fn pcap_stop(a: &Adapter, port: &str) -> Result<NicResponse, Refusal> {
    let port = port_of(a, port)?;
    let (mut out, frames) = lock(a.fabric()).switch.stop_capture(port)?;
    out.flush()
        .map_err(|e| Refusal::new(e.raw_os_error().unwrap_or(libc::EIO), e.to_string()))?;
    Ok(NicResponse::text(format!("{frames} frames captured")))
}

/// `lspci -tv` of the adapter's bus: the PF and its VFs with their routing IDs.
pub fn lspci(a: &Adapter) -> String {
    let pf = lock(a.pf());
    let slot = |devfn: u8| format!("{:02x}.{}", devfn >> 3, devfn & 7);
    let mut rows = vec![format!(
        "{}  Intel Corporation 82576 Gigabit Network Connection [8086:10c9] (PF, RID 0x{:04x})",
        slot(PF_DEVFN),
        u16::from(PF_DEVFN)
    )];
    for vf in 0..pf.num_vfs() {
        let Some(devfn) = pf.vf_devfn(vf) else {
            continue;
        };
        let client = a.vfs.get(usize::from(vf)).is_some_and(|p| p.conn.is_some());
        rows.push(format!(
            "{}  Intel Corporation 82576 Virtual Function [8086:10ca] (VF {vf}, RID 0x{:04x}, vf{vf}.sock{})",
            slot(devfn),
            u16::from(devfn),
            if client { ", in use" } else { "" }
        ));
    }
    let mut s = String::from("-[0000:00]-");
    let indent = " ".repeat(s.len());
    let last = rows.len() - 1;
    for (i, row) in rows.iter().enumerate() {
        let branch = match (i, last) {
            (0, 0) => "--",
            (0, _) => "+-",
            (i, l) if i == l => "\\-",
            _ => "+-",
        };
        if i > 0 {
            s.push('\n');
            s.push_str(&indent);
        }
        let _ = write!(s, "{branch}{row}");
    }
    s
}
