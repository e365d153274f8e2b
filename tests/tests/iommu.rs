//! Tier 2: the virtio-iommu at 00:1f.0 (`--iommu`), its VIOT, and its request queue driven
//! by the test guest's ring-3 driver (scenario `iommu-requests`).

use std::time::Duration;

use tests::{PeerMode, RunArgs, SeqpacketPeer, require_kvm, temp_path};

const DEADLINE: Duration = Duration::from_secs(120);

fn run(scenarios: &str, vcpus: u32) {
    RunArgs::testguest(scenarios, vcpus, "256M")
        .with(&["--iommu".as_ref()])
        .spawn()
        .expect_pass(&scenarios.split(',').collect::<Vec<_>>(), DEADLINE);
}

#[test]
fn requests_1vcpu() {
    if require_kvm() {
        run("iommu-requests", 1);
    }
}

#[test]
fn requests_and_topology_2vcpus() {
    if require_kvm() {
        run("pci-enum,acpi,iommu-requests", 2);
    }
}

#[test]
fn thirty_one_ports_leave_no_room() {
    let out = std::process::Command::new(tests::vmm_binary())
        .args(["run", "--iommu", "--pcie-root-ports", "31"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("30 with --iommu"));
}

fn run_net(scenario: &str, extra_cmdline: &str) -> SeqpacketPeer {
    let path = temp_path(&format!("{scenario}.sock"));
    let peer = SeqpacketPeer::listen(&path, PeerMode::Echo);
    let net = format!("socket={}", path.display());
    let mut args = RunArgs::testguest(scenario, 2, "256M");
    args.cmdline.push_str(extra_cmdline);
    args.with(&["--iommu".as_ref(), "--net".as_ref(), net.as_ref()])
        .spawn()
        .expect_pass(&[scenario], DEADLINE);
    let _ = std::fs::remove_file(&path);
    peer
}

/// virtio-net behind the IOMMU: rings and buffers at IOVAs 256 GiB away from their
/// guest-physical addresses; every frame still comes back intact.
#[test]
fn virtio_net_through_translation() {
    if require_kvm() {
        let peer = run_net("iommu-map", " testguest.net_frames=100");
        assert_eq!(peer.frames(), 100);
    }
}

/// The receive buffers' mapping goes away while a frame arrives: a write fault on the event
/// queue, the memory behind it untouched, and the device works on once they are mapped.
#[test]
fn dma_fault_is_reported_and_contained() {
    if require_kvm() {
        let peer = run_net("iommu-fault", "");
        assert_eq!(peer.frames(), 9, "4 + the faulted one + 4");
    }
}

/// Two devices in two domains with the same IOVAs mapped to different memory: each echoes
/// through its own domain, and an IOVA only domain 1 maps faults for the other device.
#[test]
fn endpoints_are_isolated() {
    if !require_kvm() {
        return;
    }
    let (pa, pb) = (temp_path("a.sock"), temp_path("b.sock"));
    let (peer_a, peer_b) = (
        SeqpacketPeer::listen(&pa, PeerMode::Echo),
        SeqpacketPeer::listen(&pb, PeerMode::Echo),
    );
    let (na, nb) = (
        format!("socket={}", pa.display()),
        format!("socket={}", pb.display()),
    );
    let mut vm = RunArgs::testguest("iommu-isolation", 1, "256M")
        .with(&[
            "--iommu".as_ref(),
            "--net".as_ref(),
            na.as_ref(),
            "--net".as_ref(),
            nb.as_ref(),
        ])
        .spawn();
    vm.expect_pass(&["iommu-isolation"], DEADLINE);
    assert_eq!(
        (peer_a.frames(), peer_b.frames()),
        (8, 8),
        "the faulted frame never left"
    );
}
