//! Tier 2: the test guest's ring-3 virtio-net driver against the VMM's virtio-net, through
//! the socket backend with a peer that echoes frames, and MSI-X masking semantics.

use std::time::Duration;

use tests::{PeerMode, RunArgs, SeqpacketPeer, require_kvm, temp_path};

const DEADLINE: Duration = Duration::from_secs(120);

fn run(scenario: &str, vcpus: u32, peer: PeerMode, extra_cmdline: &str) -> SeqpacketPeer {
    let path = temp_path(&format!("{scenario}.sock"));
    let peer = SeqpacketPeer::listen(&path, peer);
    let mut args = RunArgs::testguest(scenario, vcpus, "256M");
    args.cmdline.push_str(extra_cmdline);
    let net = format!("socket={},mac=52:54:00:12:34:56", path.display());
    let mut vm = args.with(&["--net".as_ref(), net.as_ref()]).spawn();
    vm.expect_pass(&[scenario], DEADLINE);
    let _ = std::fs::remove_file(&path);
    let t = vm.transcript();
    assert!(
        vm.stdout
            .iter()
            .any(|l| l.contains("mac 52:54:00:12:34:56")),
        "the guest reads the MAC from config space\n{t}"
    );
    peer
}

#[test]
fn frames_round_trip_1vcpu() {
    if require_kvm() {
        let peer = run("virtio-net", 1, PeerMode::Echo, " testguest.net_frames=200");
        assert_eq!(peer.frames(), 200);
    }
}

#[test]
fn frames_round_trip_2vcpus() {
    if require_kvm() {
        let peer = run("virtio-net", 2, PeerMode::Echo, "");
        assert_eq!(peer.frames(), 32);
    }
}

#[test]
fn msix_masking() {
    if require_kvm() {
        run("msix", 1, PeerMode::Sink, "");
    }
}
