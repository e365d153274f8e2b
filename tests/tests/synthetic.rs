//! Tier 2: the synthetic path. A guest's virtio-net whose backend is a synthetic port of
//! nicd (`--net nicd=DIR/synthetic.sock,mac=MAC`), on the adapter's default VPort: it
//! reaches the uplink and other guests' VFs through nicd's switch without a VF of its own.

use std::time::Duration;

use tests::nicd::{Nicd, Reflector, mac_text, vf_mac};
use tests::{RunArgs, VmProcess, require_kvm};

const DEADLINE: Duration = Duration::from_secs(120);
/// The synthetic guest's MAC.
const GUEST: [u8; 6] = [0x52, 0x54, 0x00, 0xaa, 0x00, 0x01];

fn synthetic_guest(nicd: &Nicd, scenario: &str, cmdline: &str, standby: bool) -> VmProcess {
    let mut args = RunArgs::testguest(scenario, 1, "256M");
    args.cmdline.push_str(cmdline);
    let net = nicd.synthetic_net(GUEST, standby);
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
        true,
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
        false,
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
    let mut first = synthetic_guest(&nicd, "virtio-net", " testguest.net_frames=100000", false);
    // The first guest holds its port (registered before its guest runs) while it sends
    // (nobody answers).
    first.expect_stdout(DEADLINE, "virtio-net: virtio-net at");
    let mut second = synthetic_guest(&nicd, "boot", "", false);
    let status = second.wait_exit(DEADLINE).expect("exits");
    assert_eq!(status.code(), Some(2), "{}", second.transcript());
    assert!(
        second
            .stderr
            .iter()
            .any(|l| l.contains("cannot connect a synthetic port at nicd:")
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
    assert!(
        third
            .stderr
            .iter()
            .any(|l| l.contains("cannot connect to nicd's synthetic socket")),
        "the reason reaches the user\n{}",
        third.transcript()
    );
    drop(nicd);
}

/// The failover step "move the filters", through nicd's API: a guest has a standby on a
/// synthetic port and a VF, both with the VF's admin MAC. While the guest's filters are on
/// the default VPort, frames for its MAC go to the synthetic path and the VF sees none;
/// moved to the VF's VPort, the VF gets them (it reflects them onto the uplink); moved
/// back, it gets none again. A claim finds no free VF while the guest holds the only one.
#[test]
fn guest_filters_move_between_the_default_vport_and_the_vf() {
    if !require_kvm() {
        return;
    }
    const PEER: [u8; 6] = [0x02, 0, 0, 0, 0, 0x99];
    let nicd = Nicd::start(1);
    let mac = vf_mac(0);
    let frames = 8;
    let mut args = RunArgs::testguest("vf-reflect", 1, "256M");
    args.cmdline
        .push_str(&format!(" testguest.vf_frames={}", 2 * frames));
    let net = nicd.synthetic_net(mac, true);
    let vf = format!("socket={}", nicd.vf(0).display());
    let mut vm = args
        .with(&["--net".as_ref(), net.as_ref(), "--vf".as_ref(), vf.as_ref()])
        .spawn();
    let ready = vm.wait_for_stdout(DEADLINE, |l| l.contains("vf-reflect: ready"));
    assert!(ready.is_some(), "{}", vm.transcript());
    let (code, out, err) = nicd.vmctl(&["vf-status", "0", "--json"]);
    assert_eq!(code, 0, "{err}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        status,
        serde_json::json!({"client": true, "vport": true, "rx_ready": true}),
        "the guest's igbvf is up"
    );
    let (code, _, err) = nicd.vmctl(&["vf-claim", &mac_text(mac)]);
    assert_ne!(code, 0);
    assert!(err.contains("no free VF"), "{err}");
    let send = |n: u8| {
        for i in 0..n {
            let mut f = tests::vfio_client::frame(mac, PEER, 100);
            f[12..14].copy_from_slice(&[0x88, 0xb5]);
            f[20] = i;
            nicd.uplink().send(&f).unwrap();
        }
    };
    let reflected = |nicd: &Nicd| {
        let mut n = 0;
        while let Some(f) = nicd.uplink_recv_nowait() {
            if f[6..12] == mac {
                n += 1;
            }
        }
        n
    };
    // On the default VPort (the synthetic path): the VF sees nothing.
    send(frames);
    assert_eq!(reflected(&nicd), 0, "frames reached the VF before the move");
    let to = |vport: &str| {
        let (code, _, err) = nicd.vmctl(&["guest-filters", &mac_text(mac), vport]);
        assert_eq!(code, 0, "{err}");
    };
    to("vf0");
    send(frames);
    assert_eq!(
        reflected(&nicd),
        u32::from(frames),
        "the VF got the guest's frames"
    );
    to("default");
    send(frames);
    assert_eq!(
        reflected(&nicd),
        0,
        "frames reached the VF after the move back"
    );
    to("vf0");
    send(frames);
    vm.expect_pass(&["vf-reflect"], DEADLINE);
    assert_eq!(
        reflected(&nicd),
        u32::from(frames),
        "and again after the second move"
    );
    let (code, _, err) = nicd.vmctl(&["guest-filters", "52:54:00:00:00:77", "default"]);
    assert_ne!(code, 0, "a MAC without a synthetic port");
    assert!(err.contains("no synthetic port"), "{err}");
}
