//! Wire types of the vmm's API socket. A request is one JSON object on one line, tagged by
//! `action`; the answer is one JSON object on one line with `ok` and either the result or
//! an `error` message. These types are the wire format and nothing else: the VMM converts
//! them to and from its own.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A request.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "action", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// The VM's status.
    Status,
    /// Stop every vCPU outside KVM_RUN; answered once they all are.
    Pause,
    /// Run the vCPUs again.
    Resume,
    /// The registers of every vCPU, as KVM holds them (the VM must be paused): what a
    /// stuck guest was doing.
    Vcpus,
    /// The root ports and the devices in their slots.
    DeviceList,
    /// Hot-add a device in the next free slot (or the one named): exactly one of `net` and
    /// `vf`.
    DeviceAdd {
        /// A virtio-net device.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        net: Option<NetDevice>,
        /// A VF of nicd's adapter.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        vf: Option<VfDevice>,
        /// The root port (1-based port number) to use.
        #[serde(default)]
        port: Option<u8>,
    },
    /// Failover (the VM has a standby on a synthetic port of nicd): `detach` moves the
    /// guest's filters to nicd's default VPort, removes the VF (orderly; by surprise after
    /// `timeout_ms`) and waits for nicd to free it; `attach` claims a free VF with the
    /// guest's MAC, hot-adds it, waits for the guest's driver and moves the filters to
    /// its VPort. Answered when done, with each step's time. `status`: the standby's
    /// synthetic port (connected to nicd or reconnecting, what it lost) and whether the
    /// vmm gives the guest a VF again when nicd comes back.
    Failover {
        /// `detach`, `attach` or `status`.
        op: String,
        /// How long the guest has to release its VF, or to bring a new one up (ms).
        #[serde(default)]
        timeout_ms: Option<u64>,
        /// Detach: move the guest's filters to the default VPort only once the guest has
        /// released its VF, not first (the seed's order). For Linux guests: net_failover
        /// drops what arrives on the standby while the VF is still its primary.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        filters_last: bool,
    },
    /// Remove a device: orderly (attention button, the guest powers the slot off) or by
    /// surprise. Answered once the device is gone.
    DeviceRemove {
        /// The device ID from `device-list`.
        id: String,
        /// Yank it without asking the guest.
        #[serde(default)]
        surprise: bool,
    },
}

/// A virtio-net device to add: exactly one backend, and a MAC or the VMM's default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NetDevice {
    /// A unix seqpacket socket to connect to.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub socket: Option<PathBuf>,
    /// A TAP device to open.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tap: Option<String>,
    /// nicd's synthetic socket.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub nicd: Option<PathBuf>,
    /// The MAC address, `xx:xx:xx:xx:xx:xx`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub mac: Option<String>,
    /// Offer VIRTIO_NET_F_STANDBY (the failover standby of the guest's VF).
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub standby: bool,
    /// For a standby: give the guest a VF again after nicd was away (`auto`, the default)
    /// or not (`off`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reattach: Option<crate::config::Reattach>,
}

/// A VF to assign: the vfio-user socket nicd serves it on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VfDevice {
    /// The socket.
    pub socket: PathBuf,
}

/// What a failover sequence did: each step and when it ended.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct FailoverReport {
    /// `detach` or `attach`.
    pub op: String,
    /// The steps, in order: what, and its end in microseconds since the sequence began.
    pub steps_us: Vec<(String, u64)>,
    /// The VF (nicd's number).
    pub vf: u16,
    /// Its device ID in the VM.
    pub device: String,
    /// Whether the guest did not release the VF in time and it was surprise-removed.
    #[serde(default)]
    pub surprise: bool,
}

/// A guest's synthetic port of nicd, as the vmm sees it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct SyntheticStatus {
    /// nicd's synthetic socket.
    pub socket: PathBuf,
    /// The guest's MAC.
    pub mac: String,
    /// Connected to nicd (else reconnecting).
    pub connected: bool,
    /// Milliseconds in that state.
    pub for_ms: u64,
    /// Times the connection broke (nicd went away).
    pub disconnects: u64,
    /// Times it was made again.
    pub reconnects: u64,
    /// Frames the guest sent that could not go to nicd (it was away, or refused them).
    pub tx_lost: u64,
    /// Why the connection last broke, or why the last reconnect failed.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub last_error: Option<String>,
}

/// The failover standby and the VF it pairs with.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct StandbyStatus {
    /// The standby's device ID.
    pub device: String,
    /// Its synthetic port.
    pub port: SyntheticStatus,
    /// The guest's VF (its device ID), if it has one now.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub vf: Option<String>,
    /// Whether the guest should have a VF (it was given one and not detached): after nicd
    /// comes back, the vmm attaches a VF again if `reattach` is on.
    pub vf_wanted: bool,
    /// The re-attach policy: `auto` or `off`.
    pub reattach: String,
    /// The last automatic re-attach: when (ms since the VM started) and how it went.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub last_reattach: Option<String>,
}

/// A device in a slot.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct DeviceInfo {
    /// Its ID.
    pub id: String,
    /// What it is, e.g. "virtio-net".
    pub kind: String,
    /// Root port number (= physical slot number).
    pub port: u8,
    /// The bus behind the port.
    pub bus: u8,
    /// Its MAC address, for network devices.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub mac: Option<String>,
    /// Where its frames go.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub backend: Option<String>,
}

/// A root port.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct SlotInfo {
    /// Port number (= physical slot number).
    pub port: u8,
    /// The device in it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub device: Option<DeviceInfo>,
    /// The last device it lost by surprise (its server went away), when and why.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub lost: Option<String>,
}

/// The VM's status.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct VmStatus {
    /// "running" or "paused".
    pub state: String,
    /// vCPU count.
    pub vcpus: u8,
    /// Guest memory in bytes.
    pub memory_bytes: u64,
    /// The CPU template in use.
    pub cpu_template: String,
    /// The kernel image.
    pub kernel: String,
    /// Milliseconds since the VM started.
    pub uptime_ms: u64,
}

/// One vCPU's registers, for people reading a stuck guest (hex strings where a register
/// is an address or a bit field).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct VcpuInfo {
    /// vCPU index.
    pub index: u8,
    /// KVM's MP state: runnable, halted, uninitialized (waiting for INIT/SIPI), ...
    pub mp_state: String,
    /// RIP.
    pub rip: String,
    /// RSP.
    pub rsp: String,
    /// RFLAGS.
    pub rflags: String,
    /// CS selector.
    pub cs: String,
    /// CR0.
    pub cr0: String,
    /// CR2 (the last page-fault address).
    pub cr2: String,
    /// CR3 (the page-table root).
    pub cr3: String,
    /// CR4.
    pub cr4: String,
    /// EFER.
    pub efer: String,
    /// An exception KVM holds for injection or has pending: `vector` or
    /// `vector/error_code`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub exception: Option<String>,
    /// An interrupt vector being injected.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub interrupt: Option<String>,
    /// An NMI is pending or being injected.
    pub nmi_pending: bool,
    /// The local APIC: task priority.
    pub apic_tpr: String,
    /// Vectors in service (ISR), highest last.
    pub apic_isr: Vec<u8>,
    /// Vectors requested (IRR), highest last.
    pub apic_irr: Vec<u8>,
    /// The LVT timer entry.
    pub apic_lvt_timer: String,
    /// The timer's initial and current count (0/0: off, or in TSC-deadline mode).
    pub apic_timer_count: String,
}

/// A response.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Response {
    /// Whether the request succeeded.
    pub ok: bool,
    /// The status, for `status`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub status: Option<VmStatus>,
    /// The slots, for `device-list`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub slots: Option<Vec<SlotInfo>>,
    /// The device added or removed.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub device: Option<DeviceInfo>,
    /// The vCPUs' registers, for `vcpus`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub vcpus: Option<Vec<VcpuInfo>>,
    /// What a failover did, for `failover`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub failover: Option<FailoverReport>,
    /// The standby, for `failover status`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub standby: Option<StandbyStatus>,
    /// What went wrong.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
}

impl Response {
    /// A success with nothing else to say.
    pub fn ok() -> Self {
        Self {
            ok: true,
            status: None,
            slots: None,
            device: None,
            vcpus: None,
            failover: None,
            standby: None,
            error: None,
        }
    }

    /// A failure with `message`.
    pub fn error(message: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(message.into()),
            ..Self::ok()
        }
    }

    /// A status answer.
    pub fn status(status: VmStatus) -> Self {
        Self {
            status: Some(status),
            ..Self::ok()
        }
    }

    /// A slot list.
    pub fn slots(slots: Vec<SlotInfo>) -> Self {
        Self {
            slots: Some(slots),
            ..Self::ok()
        }
    }

    /// A device that was added or removed.
    pub fn device(device: DeviceInfo) -> Self {
        Self {
            device: Some(device),
            ..Self::ok()
        }
    }

    /// The vCPUs' registers.
    pub fn vcpus(vcpus: Vec<VcpuInfo>) -> Self {
        Self {
            vcpus: Some(vcpus),
            ..Self::ok()
        }
    }
}

/// Parses one request line; the error is the message to send back.
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    let value: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| format!("malformed request: {e}"))?;
    // serde ignores unknown fields next to the tag of a unit variant: reject them here, so
    // a misspelt parameter is an error rather than silently dropped.
    let unit = matches!(
        value.get("action").and_then(|a| a.as_str()),
        Some("status" | "device-list" | "pause" | "resume" | "vcpus")
    );
    if unit
        && let Some(extra) = value
            .as_object()
            .and_then(|o| o.keys().find(|k| k.as_str() != "action"))
    {
        return Err(format!("malformed request: unknown field `{extra}`"));
    }
    serde_json::from_value(value).map_err(|e| format!("malformed request: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests() {
        assert_eq!(
            parse_request(br#"{"action":"status"}"#),
            Ok(Request::Status)
        );
        for bad in [
            &br#"{"action":"reboot"}"#[..],
            br#"{"action":"status","x":1}"#,
            br#"{}"#,
            b"not json",
            b"",
            b"\xff\xfe",
        ] {
            let e = parse_request(bad).unwrap_err();
            assert!(e.starts_with("malformed request"), "{e}");
        }
    }

    #[test]
    fn responses_serialize_compactly() {
        let r = serde_json::to_string(&Response::error("nope")).unwrap();
        assert_eq!(r, r#"{"ok":false,"error":"nope"}"#);
    }
}
