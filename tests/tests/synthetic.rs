//! Tier 2: the synthetic path. A guest's virtio-net whose backend is a synthetic port of
//! nicd (`--net nicd=DIR/synthetic.sock,mac=MAC`), on the adapter's default VPort: it
//! reaches the uplink and other guests' VFs through nicd's switch without a VF of its own.

use std::time::Duration;

use tests::nicd::{Nicd, Reflector, vf_mac};
use tests::{RunArgs, VmProcess, require_kvm};

const DEADLINE: Duration = Duration::from_secs(120);
/// The synthetic guest's MAC.
const GUEST: [u8; 6] = [0x52, 0x54, 0x00, 0xaa, 0x00, 0x01];

fn mac_text(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn synthetic_guest(nicd: &Nicd, scenario: &str, cmdline: &str, spec_extra: &str) -> VmProcess {
    let mut args = RunArgs::testguest(scenario, 1, "256M");
    args.cmdline.push_str(cmdline);
    let net = format!(
        "nicd={},mac={}{spec_extra}",
        nicd.dir.join("synthetic.sock").display(),
        mac_text(GUEST)
    );
    args.with(&["--net".as_ref(), net.as_ref()]).spawn()
}

#[test]
fn a_guest_without_a_vf_reaches_the_uplink_through_the_default_vport() {
    if !require_kvm() {
        return;
    }
    let mut nicd = Nicd::start(1);
    let reflector = Reflector::start(&mut nicd);
    let mut vm = synthetic_guest(
        &nicd,
        "virtio-net",
        " testguest.net_frames=64 testguest.net_peer=02:00:00:00:00:fe",
        ",standby",
    );
    vm.expect_pass(&["virtio-net"], DEADLINE);
    assert!(
        reflector.seen(GUEST, 0) >= 64,
        "the guest's frames left through the uplink: {}",
        reflector.seen(GUEST, 0)
    );
}

/// A guest on the synthetic path and a guest on a VF reach each other through the
/// switch: the synthetic guest sends to the VF's MAC, the VF guest reflects.
#[test]
fn a_synthetic_guest_and_a_vf_guest_reach_each_other() {
    if !require_kvm() {
        return;
    }
    let nicd = Nicd::start(2);
    let frames = 64;
    let mut b = RunArgs::testguest("vf-reflect", 1, "256M");
    b.cmdline
        .push_str(&format!(" testguest.vf_frames={frames}"));
    let vf = format!("socket={}", nicd.vf(1).display());
    let mut b = b.with(&["--vf".as_ref(), vf.as_ref()]).spawn();
    let ready = b.wait_for_stdout(DEADLINE, |l| l.contains("vf-reflect: ready"));
    assert!(ready.is_some(), "{}", b.transcript());
    let mut a = synthetic_guest(
        &nicd,
        "virtio-net",
        &format!(
            " testguest.net_frames={frames} testguest.net_peer={}",
            mac_text(vf_mac(1))
        ),
        "",
    );
    a.expect_pass(&["virtio-net"], DEADLINE);
    b.expect_pass(&["vf-reflect"], DEADLINE);
    assert!(
        nicd.uplink_recv_nowait().is_none(),
        "guest to guest stays inside the adapter"
    );
}

/// A second guest claiming a MAC another synthetic port has is refused at start (exit 2,
/// nicd's reason); one naming no nicd is refused too.
#[test]
fn a_taken_mac_or_a_missing_nicd_is_exit_2() {
    if !require_kvm() {
        return;
    }
    let nicd = Nicd::start(1);
    let mut first = synthetic_guest(&nicd, "virtio-net", " testguest.net_frames=100000", "");
    // The first guest holds its port while it sends (nobody answers).
    std::thread::sleep(Duration::from_millis(300));
    let mut second = synthetic_guest(&nicd, "boot", "", "");
    let status = second.wait_exit(DEADLINE).expect("exits");
    assert_eq!(status.code(), Some(2), "{}", second.transcript());
    assert!(
        second
            .stderr
            .iter()
            .any(|l| l.contains("cannot open the network backend nicd:")
                && l.contains("filter 52:54:00:aa:00:01")),
        "nicd's reason reaches the user\n{}",
        second.transcript()
    );
    first.kill();
    let args = RunArgs::testguest("boot", 1, "256M");
    let missing = tests::temp_path("no-nicd.sock");
    let net = format!("nicd={}", missing.display());
    let mut third = args.with(&["--net".as_ref(), net.as_ref()]).spawn();
    let status = third.wait_exit(DEADLINE).expect("exits");
    assert_eq!(status.code(), Some(2), "{}", third.transcript());
    drop(nicd);
}
