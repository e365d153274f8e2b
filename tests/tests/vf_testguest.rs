//! Tier 2: VF assignment. The real nicd serves VFs over vfio-user; the vmm puts each in a
//! root-port slot (`--vf socket=PATH`, or `vmctl device add vf` at run time); the test
//! guest's ring-3 igbvf driver (guest-images/testguest/src/igbvf.rs) drives it: frames to
//! nicd's uplink (where the test reflects them) and, with a second vmm, VF to VF through
//! nicd's switch. nicd going away is a surprise removal the vmm survives.

use std::path::Path;
use std::time::Duration;

use tests::nicd::{Nicd, Reflector, mac_text, vf_mac};
use tests::{RunArgs, VmProcess, require_kvm, temp_path, vmctl};

const DEADLINE: Duration = Duration::from_secs(120);

/// A test guest with `scenarios` and VF `socket`, plus `extra` flags.
fn guest(scenarios: &str, cmdline: &str, socket: &Path, extra: &[&str]) -> VmProcess {
    let mut args = RunArgs::testguest(scenarios, 1, "256M");
    args.cmdline.push_str(cmdline);
    let vf = format!("socket={}", socket.display());
    let mut flags: Vec<&std::ffi::OsStr> = vec!["--vf".as_ref(), vf.as_ref()];
    flags.extend(extra.iter().map(std::ffi::OsStr::new));
    args.with(&flags).spawn()
}

/// VF k's counters as nicd reports them (`ip -s link`'s JSON): (rx packets, tx packets).
fn vf_counters(nicd: &Nicd, k: usize) -> (u64, u64) {
    let (code, out, err) = nicd.vmctl(&["show", "-s", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let stats = &v["vfinfo_list"][k]["stats"];
    (
        stats["rx"]["packets"].as_u64().unwrap(),
        stats["tx"]["tx_packets"].as_u64().unwrap(),
    )
}

#[test]
fn vf_frames_reach_the_uplink_and_come_back() {
    if !require_kvm() {
        return;
    }
    let mut nicd = Nicd::start(2);
    let reflector = Reflector::start(&mut nicd);
    let mut vm = guest(
        "vf-net,vf-config",
        " testguest.vf_frames=200",
        &nicd.vf(0),
        &[],
    );
    vm.expect_pass(&["vf-net", "vf-config"], DEADLINE);
    let t = vm.transcript();
    assert!(
        vm.stdout
            .iter()
            .any(|l| l.contains(&format!("mac {}", mac_text(vf_mac(0))))),
        "the guest got nicd's admin MAC over the mailbox\n{t}"
    );
    let reflected = reflector.frames.load(std::sync::atomic::Ordering::SeqCst);
    assert!(reflected >= 200, "{reflected} frames reflected\n{t}");
    let (rx, tx) = vf_counters(&nicd, 0);
    assert!(rx >= 200 && tx >= 200, "nicd counted rx {rx} tx {tx}\n{t}");
}

/// The VF behind the virtio-iommu: rings and buffers at IOVAs far from their guest-physical
/// addresses work; a buffer whose page the guest unmapped is never written (the frame is
/// dropped and nicd counts it); mapped again, frames flow on.
#[test]
fn vf_dma_goes_through_the_iommu_and_stops_at_an_unmapped_page() {
    if !require_kvm() {
        return;
    }
    let mut nicd = Nicd::start(1);
    let _reflector = Reflector::start(&mut nicd);
    let mut vm = guest(
        "vf-iommu",
        " testguest.vf_frames=64",
        &nicd.vf(0),
        &["--iommu"],
    );
    vm.expect_pass(&["vf-iommu"], DEADLINE);
    let (code, out, err) = nicd.vmctl(&["show", "-s", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let dropped = v["vfinfo_list"][0]["stats"]["rx"]["dropped"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        dropped >= 1,
        "nicd counted no drop for the frame whose buffer was unmapped: {out}\n{}",
        vm.transcript()
    );
}

/// nicd's per-VF policy as the guest and the wire see it: a port VLAN tags the guest's
/// frames on the uplink (and is taken off on the way back: the guest's frames come back
/// intact), max_tx_rate paces them, the spoof check drops frames from a MAC that is not
/// the VF's (counted), and link-state disable and auto take the guest's link down and up.
#[test]
fn vf_admin_settings_take_effect_as_the_guest_and_the_wire_see_them() {
    if !require_kvm() {
        return;
    }
    const SPOOFED: [u8; 6] = [0x02, 0x5b, 0x00, 0x00, 0x00, 0x01];
    let mut nicd = Nicd::start(1);
    for setting in [["vlan", "100"], ["max_tx_rate", "2"]] {
        let (code, _, err) = nicd.vmctl(&["vf", "0", "set", setting[0], setting[1]]);
        assert_eq!(code, 0, "{setting:?}: {err}");
    }
    let reflector = Reflector::start(&mut nicd);
    let frames = 64;
    let mut vm = guest(
        "vf-admin",
        &format!(" testguest.vf_frames={frames}"),
        &nicd.vf(0),
        &[],
    );
    let at = |vm: &mut VmProcess, text: &str| {
        let seen = vm.wait_for_stdout(DEADLINE, |l| l.contains(text));
        assert!(seen.is_some(), "no `{text}`\n{}", vm.transcript());
        std::time::Instant::now()
    };
    let t0 = at(&mut vm, "vf-admin: exchange begins");
    let t1 = at(&mut vm, "sent and back intact");
    // About 51 kB at 2 Mbit/s, less the bucket's burst of about 19 kB: 0.13 s at least.
    let took = t1.duration_since(t0);
    assert!(
        took >= Duration::from_millis(100),
        "max_tx_rate 2 Mbit/s did not pace {frames} frames: {took:?}"
    );
    let guest_mac = vf_mac(0);
    assert!(
        reflector.seen(guest_mac, 100) >= frames && reflector.seen(guest_mac, 0) == 0,
        "every frame of the guest carries VLAN 100 on the uplink: {} tagged, {} untagged",
        reflector.seen(guest_mac, 100),
        reflector.seen(guest_mac, 0)
    );
    at(&mut vm, "waiting for the link to go down");
    assert_eq!(
        reflector.seen_from(SPOOFED),
        0,
        "spoofed frames reached the wire"
    );
    let (code, out, _) = nicd.vmctl(&["show", "-s", "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let dropped = v["vfinfo_list"][0]["stats"]["tx"]["dropped"]
        .as_u64()
        .unwrap_or(0);
    assert!(dropped >= 3, "nicd counted {dropped} TX drops: {out}");
    let (code, _, err) = nicd.vmctl(&["vf", "0", "set", "state", "disable"]);
    assert_eq!(code, 0, "{err}");
    at(&mut vm, "vf-admin: link down");
    let (code, _, err) = nicd.vmctl(&["vf", "0", "set", "state", "auto"]);
    assert_eq!(code, 0, "{err}");
    vm.expect_pass(&["vf-admin"], DEADLINE);
}

#[test]
fn vf_to_vf_between_two_vmms_through_the_switch() {
    if !require_kvm() {
        return;
    }
    let nicd = Nicd::start(2);
    let frames = 300;
    let mut b = guest(
        "vf-reflect",
        &format!(" testguest.vf_frames={frames}"),
        &nicd.vf(1),
        &[],
    );
    let ready = b.wait_for_stdout(DEADLINE, |l| l.contains("vf-reflect: ready"));
    assert!(
        ready.is_some(),
        "guest B never got ready\n{}",
        b.transcript()
    );
    let mut a = guest(
        "vf-net",
        &format!(
            " testguest.vf_frames={frames} testguest.vf_peer={}",
            mac_text(vf_mac(1))
        ),
        &nicd.vf(0),
        &[],
    );
    a.expect_pass(&["vf-net"], DEADLINE);
    b.expect_pass(&["vf-reflect"], DEADLINE);
    assert!(
        nicd.uplink_recv_nowait().is_none(),
        "VF to VF stays inside the adapter"
    );
    let (rx0, tx0) = vf_counters(&nicd, 0);
    let (rx1, tx1) = vf_counters(&nicd, 1);
    assert!(
        rx0 >= frames && tx0 >= frames && rx1 >= frames && tx1 >= frames,
        "vf0 rx {rx0} tx {tx0}, vf1 rx {rx1} tx {tx1}"
    );
}

#[test]
fn a_missing_or_busy_vf_is_refused_at_start_with_exit_2() {
    if !require_kvm() {
        return;
    }
    let nicd = Nicd::start(1);
    let missing = temp_path("no-such-vf.sock");
    let mut vm = guest("boot", "", &missing, &[]);
    let status = vm.wait_exit(DEADLINE).expect("vmm exits");
    assert_eq!(status.code(), Some(2), "{}", vm.transcript());
    assert!(
        vm.stderr
            .iter()
            .any(|l| l.contains("cannot attach the VF") && l.contains("No such file")),
        "{}",
        vm.transcript()
    );
    // VF 0 held by another vmm (one that waits for frames that never come).
    let mut holder = guest("vf-reflect", "", &nicd.vf(0), &[]);
    assert!(
        holder
            .wait_for_stdout(DEADLINE, |l| l.contains("vf-reflect: ready"))
            .is_some(),
        "{}",
        holder.transcript()
    );
    let mut second = guest("boot", "", &nicd.vf(0), &[]);
    let status = second.wait_exit(DEADLINE).expect("vmm exits");
    assert_eq!(status.code(), Some(2), "{}", second.transcript());
    assert!(
        second
            .stderr
            .iter()
            .any(|l| l.contains("Device or resource busy")),
        "{}",
        second.transcript()
    );
    holder.kill();
}

/// nicd killed under a running guest: the vmm notices the socket hang up, removes the VF
/// from its slot by surprise, says so in its log and in `device list`, and keeps running.
#[test]
fn nicd_killed_is_a_surprise_removal_the_vmm_survives() {
    if !require_kvm() {
        return;
    }
    let mut nicd = Nicd::start(1);
    let api = temp_path("vf-api.sock");
    let api_arg = api.display().to_string();
    let mut vm = guest("vf-reflect", "", &nicd.vf(0), &["--api-socket", &api_arg]);
    assert!(
        vm.wait_for_stdout(DEADLINE, |l| l.contains("vf-reflect: ready"))
            .is_some(),
        "{}",
        vm.transcript()
    );
    let (code, r) = vmctl(&api, &["device", "list"]);
    assert_eq!(code, 0);
    let slot = &r.slots.as_ref().unwrap()[0];
    assert_eq!(slot.device.as_ref().map(|d| d.kind.as_str()), Some("vf"));
    nicd.kill();
    let logged = vm.wait_for_stderr(DEADLINE, |l| l.contains("surprise-removed"));
    assert!(logged.is_some(), "{}", vm.transcript());
    let (code, r) = vmctl(&api, &["device", "list"]);
    assert_eq!(code, 0, "the vmm still answers");
    let slot = &r.slots.as_ref().unwrap()[0];
    assert!(slot.device.is_none(), "{r:?}");
    assert!(
        slot.lost
            .as_deref()
            .is_some_and(|l| l.starts_with("vf0 lost")),
        "{r:?}"
    );
    assert!(
        vm.wait_exit(Duration::from_millis(500)).is_none(),
        "the vmm keeps running"
    );
    vm.kill();
}

/// Hot-add through the API: the VF lands in the slot asked for; a busy VF is an error
/// reply; a surprise removal frees it in nicd for the next client. (The guest plays pciehp
/// on slot 1 and ignores slots 2 and 3.)
#[test]
fn vf_hot_add_and_remove_through_the_api() {
    if !require_kvm() {
        return;
    }
    let nicd = Nicd::start(1);
    let api = temp_path("vf-hot-api.sock");
    let mut vm = RunArgs::testguest("hotplug", 1, "256M")
        .with(&["--api-socket".as_ref(), api.as_os_str()])
        .spawn();
    marker(&mut vm, "hotplug: ready");
    let sock = format!("socket={}", nicd.vf(0).display());
    let add = |port: &str| vmctl(&api, &["device", "add", "vf", &sock, "--port", port]);
    let (code, r) = add("3");
    assert_eq!(code, 0, "{r:?}");
    let d = r.device.unwrap();
    assert_eq!((d.id.as_str(), d.kind.as_str(), d.port), ("vf0", "vf", 3));
    let (code, r) = add("2");
    assert_ne!(code, 0);
    assert!(r.error.unwrap().contains("busy"), "a VF serves one vmm");
    let (code, r) = vmctl(&api, &["device", "remove", "vf0", "--surprise"]);
    assert_eq!(code, 0, "{r:?}");
    // nicd takes the next client once the first has gone.
    let mut again = add("2");
    for _ in 0..50 {
        if again.1.ok {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        again = add("2");
    }
    assert!(again.1.ok, "{:?}", again.1);
    assert_eq!(again.1.device.unwrap().id, "vf1");
    vm.kill();
}

fn marker(vm: &mut VmProcess, text: &str) {
    vm.expect_stdout(DEADLINE, text);
}

/// The guest sees a VF come and go: hot-add, igbvf up, frames; orderly removal through the
/// attention button; hot-add again; then nicd is killed and the guest sees the VF vanish
/// while the vmm keeps running.
#[test]
fn vf_hot_add_orderly_removal_and_surprise_loss_as_the_guest_sees_them() {
    if !require_kvm() {
        return;
    }
    let mut nicd = Nicd::start(1);
    let reflector = Reflector::start(&mut nicd);
    let api = temp_path("vf-hotplug-api.sock");
    let mut vm = RunArgs::testguest("vf-hotplug", 1, "256M");
    vm.cmdline.push_str(" testguest.vf_frames=64");
    let mut vm = vm.with(&["--api-socket".as_ref(), api.as_os_str()]).spawn();
    marker(&mut vm, "vf-hotplug: ready");
    let sock = format!("socket={}", nicd.vf(0).display());
    let (code, r) = vmctl(&api, &["device", "add", "vf", &sock, "--port", "1"]);
    assert_eq!(code, 0, "{r:?}");
    marker(&mut vm, "vf-hotplug: added: VF at 01:00.0");
    marker(&mut vm, "waiting for the attention button");
    // Answered once the guest has powered the slot off.
    let (code, r) = vmctl(&api, &["device", "remove", "vf0"]);
    assert_eq!(code, 0, "{r:?}\n{}", vm.transcript());
    marker(&mut vm, "removed (orderly)");
    // The vmm let go of the VF: nicd serves it to the next client.
    let mut again = vmctl(&api, &["device", "add", "vf", &sock, "--port", "1"]);
    for _ in 0..50 {
        if again.1.ok {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        again = vmctl(&api, &["device", "add", "vf", &sock, "--port", "1"]);
    }
    assert!(again.1.ok, "{:?}", again.1);
    marker(&mut vm, "waiting for the VF to be lost");
    drop(reflector);
    nicd.kill();
    vm.expect_pass(&["vf-hotplug"], DEADLINE);
    assert!(
        vm.stderr
            .iter()
            .any(|l| l.contains("vf1") && l.contains("surprise-removed")),
        "{}",
        vm.transcript()
    );
}
