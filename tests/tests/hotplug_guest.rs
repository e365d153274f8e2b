//! Native PCIe hotplug end to end: the VMM's API adds and removes a virtio-net device while
//! the test guest plays pciehp (scenario `hotplug`): hot-add, orderly removal through the
//! attention button and the guest's power-off, and surprise removal.

use std::path::PathBuf;
use std::time::Duration;

use tests::{RunArgs, VmProcess, hold_connections, require_kvm, vmctl};

const DEADLINE: Duration = Duration::from_secs(120);

fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("vmm-hpg-{}-{name}", std::process::id()))
}

fn marker(vm: &mut VmProcess, text: &str) {
    let seen = vm.wait_for_stdout(DEADLINE, |l| l.contains(text));
    assert!(seen.is_some(), "no `{text}`\n{}", vm.transcript());
}

#[test]
fn add_orderly_remove_add_surprise_remove() {
    if !require_kvm() {
        return;
    }
    let api = temp("api.sock");
    let host = temp("host.sock");
    let _peer = hold_connections(&host);
    let mut vm = RunArgs::testguest("hotplug", 1, "256M")
        .with(&["--api-socket".as_ref(), api.as_os_str()])
        .spawn();
    marker(&mut vm, "hotplug: ready");
    let spec = format!("socket={}", host.display());

    let (code, r) = vmctl(&api, &["device", "add", "net", &spec, "--port", "1"]);
    assert_eq!(code, 0, "{r}");
    marker(&mut vm, "hotplug: added:");

    marker(&mut vm, "waiting for the attention button");
    // Answered only once the guest has powered the slot off.
    let (code, r) = vmctl(&api, &["device", "remove", "net0"]);
    assert_eq!(code, 0, "{r}\n{}", vm.transcript());
    assert_eq!(r["device"]["id"], "net0");
    marker(&mut vm, "removed (orderly)");
    let (_, list) = vmctl(&api, &["device", "list"]);
    assert!(list["slots"][0].get("device").is_none(), "{list}");

    let (code, r) = vmctl(&api, &["device", "add", "net", &spec, "--port", "1"]);
    assert_eq!(code, 0, "{r}");
    marker(&mut vm, "waiting for a surprise removal");
    let (code, r) = vmctl(&api, &["device", "remove", "net1", "--surprise"]);
    assert_eq!(code, 0, "{r}");

    let status = vm.wait_exit(DEADLINE);
    let t = vm.transcript();
    assert!(
        vm.stdout.iter().any(|l| l == "TESTGUEST PASS hotplug"),
        "{t}"
    );
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{t}");
}
