//! Tier 2: failover between a guest's VF and its synthetic standby, driven through the
//! vmm's API (`vmctl failover attach|detach`), which drives nicd's: the test guest plays
//! net_failover (scenario `failover`: a stream out of the VF while it is there, else the
//! standby; reflections taken from both) while the VF is attached and detached twice,
//! moved to another guest, lost with nicd and given back when nicd returns; and a vmm
//! killed with a VF.

use std::path::PathBuf;
use std::time::Duration;

use tests::nicd::{Nicd, Reflector, mac_text, vf_mac};
use tests::vfio_client::wait_for;
use tests::{RunArgs, VmProcess, require_kvm, temp_path, vmctl};

const DEADLINE: Duration = Duration::from_secs(120);

fn marker(vm: &mut VmProcess, text: &str) {
    vm.expect_stdout(DEADLINE, text);
}

/// A test guest playing net_failover (scenario `failover`, watching slot 2) with a standby
/// of `mac` on `nicd`, `frames` frames a phase and `cycles` cycles, and its API socket.
fn failover_guest(
    nicd: &Nicd,
    mac: [u8; 6],
    api_name: &str,
    frames: u32,
    cycles: u32,
) -> (VmProcess, PathBuf) {
    let api = temp_path(api_name);
    let mut args = RunArgs::testguest("failover", 1, "256M");
    args.cmdline.push_str(&format!(
        " testguest.hotplug_port=2 testguest.failover_frames={frames} \
         testguest.failover_cycles={cycles}"
    ));
    let net = nicd.synthetic_net(mac, true);
    let vm = args
        .with(&[
            "--net".as_ref(),
            net.as_ref(),
            "--api-socket".as_ref(),
            api.as_os_str(),
        ])
        .spawn();
    (vm, api)
}

#[test]
fn traffic_moves_between_the_vf_and_the_standby_across_detach_and_attach() {
    if !require_kvm() {
        return;
    }
    let mut nicd = Nicd::start(1);
    let reflector = Reflector::start(&mut nicd);
    let (mut vm, api) = failover_guest(&nicd, vf_mac(0), "failover-api.sock", 50, 2);
    // Without a VF, a detach has nothing to do.
    marker(&mut vm, "cycle 0: waiting for a VF");
    let (code, r) = vmctl(&api, &["failover", "detach"]);
    assert_ne!(code, 0);
    assert!(r.error.unwrap_or_default().contains("no VF"));
    for c in 0..2 {
        if c > 0 {
            marker(&mut vm, &format!("cycle {c}: waiting for a VF"));
            // The vmm lets a slot the guest just powered off rest before it takes a new
            // card there (pciehp ignores presence changes for a second after a power-off),
            // and this guest watches one slot: wait for it to be the free one again.
            std::thread::sleep(Duration::from_millis(2100));
        }
        let (code, r) = vmctl(&api, &["failover", "attach"]);
        assert_eq!(code, 0, "{r:?}\n{}", vm.transcript());
        let report = r.failover.expect("a report");
        eprintln!("attach {c}: {:?}", report.steps_us);
        assert_eq!(report.vf, 0);
        marker(
            &mut vm,
            &format!("cycle {c}: waiting for the attention button"),
        );
        // The second detach moves the filters last (after the guest let go of the VF).
        let detach: &[&str] = if c == 0 {
            &["failover", "detach"]
        } else {
            &["failover", "detach", "--filters-last"]
        };
        let (code, r) = vmctl(&api, detach);
        assert_eq!(code, 0, "{r:?}\n{}", vm.transcript());
        let report = r.failover.expect("a report");
        eprintln!("detach {c}: {:?}", report.steps_us);
        assert!(!report.surprise, "the guest released its VF in time");
        let filters = report
            .steps_us
            .iter()
            .position(|(what, _)| what.contains("filters on the default VPort"));
        assert_eq!(filters, Some(c), "{:?}", report.steps_us);
        marker(&mut vm, &format!("cycle {c}: VF released"));
    }
    vm.expect_pass(&["failover"], DEADLINE);
    // The stream has one frame in flight at a time: a switch may cost that one, no more.
    let mut lost = 0;
    for l in vm.stdout.iter().filter(|l| l.contains("frames back")) {
        eprintln!("{l}");
        lost += l
            .split(", ")
            .last()
            .and_then(|w| w.strip_suffix(" lost"))
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(0);
    }
    assert!(
        lost <= 4,
        "{lost} frames lost in 4 switches\n{}",
        vm.transcript()
    );
    // nicd's count: the orderly moves leave no frame for the guest's MAC without a port;
    // between the guest's release of the VF (its VPort goes) and a late filter move
    // (`--filters-last`), the one frame in flight may have nowhere to go.
    let (code, out, err) = nicd.vmctl(&["lost", "--json"]);
    assert_eq!(code, 0, "{err}");
    eprintln!("nicd lost: {out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let guest = mac_text(vf_mac(0));
    assert!(v["in_flight"][&guest].as_u64().unwrap_or(0) <= 1, "{out}");
    assert_eq!(v["no_owner"][&guest].as_u64().unwrap_or(0), 0, "{out}");
    assert!(
        reflector.seen_from(vf_mac(0)) > 0,
        "the stream went out through nicd's uplink"
    );
}

/// A guest that never releases its VF on the attention button: the detach surprise-removes
/// it after the timeout, the traffic has moved to the standby anyway, and nicd frees the
/// VF, which an attach then gives back.
#[test]
fn a_guest_that_holds_on_to_its_vf_loses_it_by_surprise() {
    if !require_kvm() {
        return;
    }
    let nicd = Nicd::start(1);
    let api = temp_path("failover-hold-api.sock");
    // vf-reflect ignores the slot's attention button (and waits for frames that do not
    // come).
    let mut args = RunArgs::testguest("vf-reflect", 1, "256M");
    args.cmdline.push_str(" testguest.vf_frames=1");
    let net = nicd.synthetic_net(vf_mac(0), true);
    let vf = format!("socket={}", nicd.vf(0).display());
    let mut vm = args
        .with(&[
            "--net".as_ref(),
            net.as_ref(),
            "--vf".as_ref(),
            vf.as_ref(),
            "--api-socket".as_ref(),
            api.as_os_str(),
        ])
        .spawn();
    marker(&mut vm, "vf-reflect: ready");
    let (code, r) = vmctl(&api, &["failover", "detach", "--timeout-ms", "300"]);
    assert_eq!(code, 0, "{r:?}\n{}", vm.transcript());
    let report = r.failover.expect("a report");
    assert!(report.surprise, "{report:?}");
    let (code, out, _) = nicd.vmctl(&["vf-status", "0", "--json"]);
    assert_eq!(code, 0);
    assert!(out.contains("\"client\":false"), "nicd freed the VF: {out}");
    let (code, r) = vmctl(&api, &["device", "list"]);
    assert_eq!(code, 0);
    let lost = r
        .slots
        .expect("slots")
        .into_iter()
        .find_map(|s| s.lost)
        .unwrap_or_default();
    assert!(lost.contains("did not release"), "{lost}");
    vm.kill();
}

/// `vmctl failover move --to B`: the one VF goes from guest A to guest B (more guests
/// than VFs: the other stays on its synthetic path); both guests' streams go on, each on
/// its standby while it has no VF.
#[test]
fn the_vf_moves_from_one_guest_to_another() {
    if !require_kvm() {
        return;
    }
    let mut nicd = Nicd::start(1);
    let _reflector = Reflector::start(&mut nicd);
    let guest =
        |name: &str, mac: [u8; 6]| failover_guest(&nicd, mac, &format!("move-{name}.sock"), 30, 1);
    let (mut a, api_a) = guest("a", [0x52, 0x54, 0x00, 0xaa, 0x00, 0x0a]);
    let (mut b, api_b) = guest("b", [0x52, 0x54, 0x00, 0xaa, 0x00, 0x0b]);
    marker(&mut a, "cycle 0: waiting for a VF");
    marker(&mut b, "cycle 0: waiting for a VF");
    let (code, r) = vmctl(&api_a, &["failover", "attach"]);
    assert_eq!(code, 0, "{r:?}\n{}", a.transcript());
    marker(&mut a, "cycle 0: waiting for the attention button");
    let b_socket = api_b.display().to_string();
    let out = std::process::Command::new(tests::vmctl_binary())
        .arg("--socket")
        .arg(&api_a)
        .args(["failover", "move", "--to", &b_socket])
        .output()
        .expect("run vmctl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answers: Vec<vmm::api::Response> = serde_json::from_str(&text).expect("two answers");
    let ops: Vec<String> = answers
        .iter()
        .map(|r| r.failover.as_ref().expect("a report").op.clone())
        .collect();
    assert_eq!(ops, ["detach", "attach"]);
    marker(&mut a, "cycle 0: VF released");
    marker(&mut b, "cycle 0: waiting for the attention button");
    let (code, r) = vmctl(&api_b, &["failover", "detach"]);
    assert_eq!(code, 0, "{r:?}");
    a.expect_pass(&["failover"], DEADLINE);
    b.expect_pass(&["failover"], DEADLINE);
}

/// nicd killed (SIGKILL) while the guest streams through its VF, and started again: the
/// vmm surprise-removes the VF (its vfio-user connection hung up), the standby's synthetic
/// port reconnects with backoff (the stream goes on on the standby), and the vmm gives the
/// guest a VF again by itself (`reattach=auto`, the default); `vmctl failover status`
/// tells the story.
#[test]
fn nicd_killed_and_restarted_the_guest_gets_a_vf_back() {
    if !require_kvm() {
        return;
    }
    let mut nicd = Nicd::start(1);
    let reflector = Reflector::start(&mut nicd);
    // 100 frames a phase: the standby phase after the restart has to outlast the
    // reconnect.
    let (mut vm, api) = failover_guest(&nicd, vf_mac(0), "failover-restart-api.sock", 100, 2);
    marker(&mut vm, "cycle 0: waiting for a VF");
    let (code, r) = vmctl(&api, &["failover", "attach"]);
    assert_eq!(code, 0, "{r:?}\n{}", vm.transcript());
    marker(&mut vm, "cycle 0: waiting for the attention button");
    let before = reflector.seen_from(vf_mac(0));
    nicd.restart();
    marker(&mut vm, "cycle 0: VF gone by surprise");
    // Nobody asks: the vmm re-attaches a VF once its synthetic port is back.
    marker(&mut vm, "cycle 1: VF at ");
    marker(&mut vm, "cycle 1: waiting for the attention button");
    let (code, r) = vmctl(&api, &["failover", "status"]);
    assert_eq!(code, 0, "{r:?}");
    let st = r.standby.expect("the standby's status");
    eprintln!("failover status: {st:?}");
    assert!(st.port.connected, "{st:?}");
    assert_eq!((st.port.disconnects, st.port.reconnects), (1, 1), "{st:?}");
    assert!(st.vf.is_some() && st.vf_wanted, "{st:?}");
    assert_eq!(st.reattach, "auto");
    let last = st.last_reattach.unwrap_or_default();
    assert!(last.contains("VF 0 attached"), "{last}");
    let (code, r) = vmctl(&api, &["device", "list"]);
    assert_eq!(code, 0);
    let lost = r
        .slots
        .expect("slots")
        .into_iter()
        .find_map(|s| s.lost)
        .unwrap_or_default();
    assert!(lost.contains("vf0"), "the VF lost with nicd: {lost}");
    // An orderly end: the guest no longer wants a VF after a detach.
    let (code, r) = vmctl(&api, &["failover", "detach"]);
    assert_eq!(code, 0, "{r:?}\n{}", vm.transcript());
    marker(&mut vm, "cycle 1: VF released");
    let (_, r) = vmctl(&api, &["failover", "status"]);
    assert!(!r.standby.expect("status").vf_wanted);
    vm.expect_pass(&["failover"], DEADLINE);
    for l in vm.stdout.iter().filter(|l| l.contains("frames back")) {
        eprintln!("{l}");
    }
    assert!(
        reflector.seen_from(vf_mac(0)) > before,
        "the stream reached the restarted nicd's uplink"
    );
}

/// A vmm killed (SIGKILL) with a VF and a standby: nicd sees both connections close,
/// deletes the VF's VPort, resets and frees the VF, and drops the synthetic port with the
/// guest's filter; frames for the guest's MAC then have no owner and are counted so, and
/// the VF can be claimed again.
#[test]
fn a_killed_vmm_gives_its_vf_and_its_port_back_to_nicd() {
    if !require_kvm() {
        return;
    }
    let nicd = Nicd::start(1);
    let mut args = RunArgs::testguest("vf-reflect", 1, "256M");
    args.cmdline.push_str(" testguest.vf_frames=1");
    let net = nicd.synthetic_net(vf_mac(0), true);
    let vf = format!("socket={}", nicd.vf(0).display());
    let mut vm = args
        .with(&["--net".as_ref(), net.as_ref(), "--vf".as_ref(), vf.as_ref()])
        .spawn();
    marker(&mut vm, "vf-reflect: ready");
    let status = || {
        let (code, out, err) = nicd.vmctl(&["vf-status", "0", "--json"]);
        assert_eq!(code, 0, "{err}");
        out
    };
    assert!(status().contains("\"client\":true"), "{}", status());
    vm.kill();
    assert!(
        wait_for(Duration::from_secs(10), || status()
            .contains("\"client\":false")),
        "nicd still serves VF 0 after its vmm died: {}",
        status()
    );
    // A frame from the uplink for the guest's MAC: no VPort or synthetic port has it.
    let mut frame = vec![0u8; 64];
    frame[..6].copy_from_slice(&vf_mac(0));
    frame[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0xfe]);
    frame[12..14].copy_from_slice(&[0x88, 0xb5]);
    nicd.uplink().send(&frame).unwrap();
    let guest = mac_text(vf_mac(0));
    let lost = || {
        let (code, out, err) = nicd.vmctl(&["lost", "--json"]);
        assert_eq!(code, 0, "{err}");
        out
    };
    let counted = |out: &str| {
        let v: serde_json::Value = serde_json::from_str(out).unwrap();
        v["no_owner"][&guest].as_u64().unwrap_or(0) >= 1
    };
    assert!(
        wait_for(Duration::from_secs(5), || counted(&lost())),
        "the frame for the dead guest was not counted as without an owner: {}",
        lost()
    );
    let (code, out, err) = nicd.vmctl(&["vf-claim", &guest, "--json"]);
    assert_eq!(code, 0, "the VF is free again: {out}{err}");
}
