//! The device API with a running VM: hot-add of virtio-net devices, listing, surprise
//! removal and malformed requests, driven through the real `vmctl`.

use std::path::PathBuf;
use std::time::Duration;

use tests::{RunArgs, hold_connections, require_kvm, vmctl};

const DEADLINE: Duration = Duration::from_secs(120);

fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("vmm-hp-{}-{name}", std::process::id()))
}

#[test]
fn hot_add_list_and_surprise_remove() {
    if !require_kvm() {
        return;
    }
    let api = temp("api.sock");
    let host = temp("host.sock");
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
    assert_eq!(code, 0, "{added}");
    assert_eq!(added["device"]["id"], "net0");
    assert_eq!(added["device"]["port"], 1);
    assert_eq!(added["device"]["mac"], "52:54:00:00:00:42");

    let (_, list) = vmctl(&api, &["device", "list"]);
    let slots = list["slots"].as_array().unwrap();
    assert_eq!(slots.len(), 2);
    assert_eq!(slots[0]["device"]["id"], "net0");
    assert!(slots[1].get("device").is_none());

    // Errors: an occupied port, a bad MAC, an unreachable backend, an unknown device.
    let (code, e) = vmctl(&api, &["device", "add", "net", &spec, "--port", "1"]);
    assert_eq!(code, 1, "{e}");
    assert!(e["error"].as_str().unwrap().contains("occupied"));
    let bad_mac = format!("socket={},mac=01:00:5e:00:00:01", host.display());
    let (code, _) = vmctl(&api, &["device", "add", "net", &bad_mac]);
    assert_eq!(code, 1);
    let (code, e) = vmctl(&api, &["device", "add", "net", "socket=/nonexistent.sock"]);
    assert_eq!(code, 1);
    assert!(
        e["error"].as_str().unwrap().contains("/nonexistent.sock"),
        "{e}"
    );
    let (code, _) = vmctl(&api, &["device", "remove", "net7"]);
    assert_eq!(code, 1);

    // The second slot takes another device; then both go by surprise.
    let (code, second) = vmctl(
        &api,
        &[
            "device",
            "add",
            "net",
            &format!("socket={}", host.display()),
        ],
    );
    assert_eq!(code, 0, "{second}");
    assert_eq!(second["device"]["port"], 2);
    let (code, full) = vmctl(
        &api,
        &[
            "device",
            "add",
            "net",
            &format!("socket={}", host.display()),
        ],
    );
    assert_eq!(code, 1, "{full}");
    for id in ["net0", "net1"] {
        let (code, r) = vmctl(&api, &["device", "remove", id, "--surprise"]);
        assert_eq!(code, 0, "{r}");
        assert_eq!(r["device"]["id"], id);
    }
    let (_, list) = vmctl(&api, &["device", "list"]);
    assert!(
        list["slots"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s.get("device").is_none())
    );
    vm.signal(libc::SIGTERM);
    assert_eq!(vm.wait_exit(DEADLINE).and_then(|s| s.code()), Some(0));
    let _ = std::fs::remove_file(&host);
}
