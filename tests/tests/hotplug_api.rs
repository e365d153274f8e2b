//! The device API with a running VM: hot-add of virtio-net devices, listing, surprise
//! removal and malformed requests, driven through the real `vmctl`.

use std::time::Duration;

use tests::{RunArgs, hold_connections, require_kvm, temp_path, vmctl};
use vmm::api::Response;

const DEADLINE: Duration = Duration::from_secs(120);

/// The device of a successful add or remove answer.
fn device(r: &Response) -> &vmm::api::DeviceInfo {
    r.device
        .as_ref()
        .unwrap_or_else(|| panic!("no device in {r:?}"))
}

/// The error text of a failed answer.
fn error(r: &Response) -> &str {
    r.error
        .as_deref()
        .unwrap_or_else(|| panic!("no error in {r:?}"))
}

#[test]
fn hot_add_list_and_surprise_remove() {
    if !require_kvm() {
        return;
    }
    let api = temp_path("api.sock");
    let host = temp_path("host.sock");
    let _peer = hold_connections(&host);
    let mut vm = RunArgs::testguest("idle", 1, "256M")
        .with(&[
            "--api-socket".as_ref(),
            api.as_os_str(),
            "--pcie-root-ports".as_ref(),
            "2".as_ref(),
        ])
        .spawn();
    assert!(
        vm.wait_for_stdout(DEADLINE, |l| l.starts_with("TESTGUEST INFO idle"))
            .is_some(),
        "{}",
        vm.transcript()
    );
    let spec = format!("socket={},mac=52:54:00:00:00:42", host.display());
    let (code, added) = vmctl(&api, &["device", "add", "net", &spec]);
    assert_eq!(code, 0, "{added:?}");
    let d = device(&added);
    assert_eq!((d.id.as_str(), d.port), ("net0", 1));
    assert_eq!(d.mac.as_deref(), Some("52:54:00:00:00:42"));

    let (_, list) = vmctl(&api, &["device", "list"]);
    let slots = list.slots.expect("slots");
    assert_eq!(slots.len(), 2);
    assert_eq!(
        slots[0].device.as_ref().map(|d| d.id.as_str()),
        Some("net0")
    );
    assert!(slots[1].device.is_none());

    // Errors: an occupied port, a bad MAC, an unreachable backend, an unknown device.
    let (code, e) = vmctl(&api, &["device", "add", "net", &spec, "--port", "1"]);
    assert_eq!(code, 1, "{e:?}");
    assert!(error(&e).contains("occupied"), "{e:?}");
    let bad_mac = format!("socket={},mac=01:00:5e:00:00:01", host.display());
    let (code, e) = vmctl(&api, &["device", "add", "net", &bad_mac]);
    assert_eq!(code, 1, "{e:?}");
    let (code, e) = vmctl(&api, &["device", "add", "net", "socket=/nonexistent.sock"]);
    assert_eq!(code, 1);
    assert!(error(&e).contains("/nonexistent.sock"), "{e:?}");
    let (code, e) = vmctl(&api, &["device", "remove", "net7"]);
    assert_eq!(code, 1);
    assert_eq!(error(&e), "no device `net7`");

    // The second slot takes another device; then both go by surprise.
    let plain = format!("socket={}", host.display());
    let (code, second) = vmctl(&api, &["device", "add", "net", &plain]);
    assert_eq!(code, 0, "{second:?}");
    assert_eq!(device(&second).port, 2);
    let (code, full) = vmctl(&api, &["device", "add", "net", &plain]);
    assert_eq!(code, 1, "{full:?}");
    assert_eq!(error(&full), "no free root port");
    for id in ["net0", "net1"] {
        let (code, r) = vmctl(&api, &["device", "remove", id, "--surprise"]);
        assert_eq!(code, 0, "{r:?}");
        assert_eq!(device(&r).id, id);
    }
    let (_, list) = vmctl(&api, &["device", "list"]);
    assert!(
        list.slots
            .expect("slots")
            .iter()
            .all(|s| s.device.is_none())
    );
    vm.signal(libc::SIGTERM);
    assert_eq!(vm.wait_exit(DEADLINE).and_then(|s| s.code()), Some(0));
    let _ = std::fs::remove_file(&host);
}
