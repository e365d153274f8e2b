//! Tier 2: the test guest's ring-3 virtio-net driver against the VMM's virtio-net, through
//! the socket backend with a peer that echoes frames, and MSI-X masking semantics.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tests::{PeerMode, RunArgs, SeqpacketPeer, require_kvm};

const DEADLINE: Duration = Duration::from_secs(120);

/// A socket path unique to this process and call (tests run in parallel).
fn sock(name: &str) -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    std::env::temp_dir().join(format!("vmm-net-{}-{name}-{n}.sock", std::process::id()))
}

fn run(scenario: &str, vcpus: u32, peer: PeerMode, extra_cmdline: &str) -> SeqpacketPeer {
    let path = sock(scenario);
    let peer = SeqpacketPeer::listen(&path, peer);
    let mut args = RunArgs::testguest(scenario, vcpus, "256M");
    args.cmdline.push_str(extra_cmdline);
    let net = format!("socket={},mac=52:54:00:12:34:56", path.display());
    let mut vm = args.with(&["--net".as_ref(), net.as_ref()]).spawn();
    let status = vm.wait_exit(DEADLINE);
    let t = vm.transcript();
    let pass = format!("TESTGUEST PASS {scenario}");
    assert!(vm.stdout.contains(&pass), "{t}");
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{t}");
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
