//! Native PCIe hotplug end to end: the VMM's API adds and removes a virtio-net device while
//! the test guest plays pciehp (scenario `hotplug`): hot-add, orderly removal through the
//! attention button and the guest's power-off, and surprise removal.

use std::time::Duration;

use tests::{RunArgs, VmProcess, hold_connections, require_kvm, temp_path, vmctl};

const DEADLINE: Duration = Duration::from_secs(120);

fn marker(vm: &mut VmProcess, text: &str) {
    vm.expect_stdout(DEADLINE, text);
}

#[test]
fn add_orderly_remove_add_surprise_remove() {
    if !require_kvm() {
        return;
    }
    let api = temp_path("api.sock");
    let host = temp_path("host.sock");
    let _peer = hold_connections(&host);
    let mut vm = RunArgs::testguest("hotplug", 1, "256M")
        .with(&["--api-socket".as_ref(), api.as_os_str()])
        .spawn();
    marker(&mut vm, "hotplug: ready");
    let spec = format!("socket={}", host.display());

    let (code, r) = vmctl(&api, &["device", "add", "net", &spec, "--port", "1"]);
    assert_eq!(code, 0, "{r:?}");
    marker(&mut vm, "hotplug: added:");

    marker(&mut vm, "waiting for the attention button");
    // Answered only once the guest has powered the slot off.
    let (code, r) = vmctl(&api, &["device", "remove", "net0"]);
    assert_eq!(code, 0, "{r:?}\n{}", vm.transcript());
    assert_eq!(r.device.expect("the removed device").id, "net0");
    marker(&mut vm, "removed (orderly)");
    let (_, list) = vmctl(&api, &["device", "list"]);
    assert!(list.slots.expect("slots")[0].device.is_none());

    let (code, r) = vmctl(&api, &["device", "add", "net", &spec, "--port", "1"]);
    assert_eq!(code, 0, "{r:?}");
    marker(&mut vm, "waiting for a surprise removal");
    let (code, r) = vmctl(&api, &["device", "remove", "net1", "--surprise"]);
    assert_eq!(code, 0, "{r:?}");

    vm.expect_pass(&["hotplug"], DEADLINE);
    let _ = std::fs::remove_file(&host);
}
