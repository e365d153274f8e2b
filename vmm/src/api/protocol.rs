//! Wire types of the API socket. A request is one JSON object on one line, tagged by
//! `action`; the answer is one JSON object on one line with `ok` and either the result or
//! an `error` message.

use serde::{Deserialize, Serialize};

/// Longest request line accepted.
pub const MAX_REQUEST_LEN: usize = 64 * 1024;

/// A request.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "action", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// The VM's status.
    Status,
}

/// The VM's status.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct VmStatus {
    /// "running" (more states come with pause/resume).
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

/// A response.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Response {
    /// Whether the request succeeded.
    pub ok: bool,
    /// The status, for `status`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub status: Option<VmStatus>,
    /// What went wrong.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
}

impl Response {
    /// A failure with `message`.
    pub fn error(message: impl Into<String>) -> Self {
        Self {
            ok: false,
            status: None,
            error: Some(message.into()),
        }
    }

    /// A status answer.
    pub fn status(status: VmStatus) -> Self {
        Self {
            ok: true,
            status: Some(status),
            error: None,
        }
    }
}

/// Parses one request line; the error is the message to send back.
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    let value: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| format!("malformed request: {e}"))?;
    // serde ignores unknown fields next to the tag of a unit variant: reject them here, so
    // a misspelt parameter is an error rather than silently dropped.
    if let Some(extra) = value
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
