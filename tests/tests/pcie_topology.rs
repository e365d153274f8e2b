//! Tier 2: the test guest enumerates the PCIe hierarchy over ECAM and 0xCF8 and checks the
//! root ports, their slots and windows (scenario `pci-enum`).

use std::time::Duration;

use tests::{RunArgs, require_kvm};

const DEADLINE: Duration = Duration::from_secs(120);

fn enumerate(ports: u32, vcpus: u32, extra: &[&str]) -> Vec<String> {
    let mut args = RunArgs::testguest("pci-enum", vcpus, "256M");
    args.cmdline
        .push_str(&format!(" testguest.pcie_root_ports={ports}"));
    let ports = ports.to_string();
    let mut flags: Vec<&std::ffi::OsStr> = vec!["--pcie-root-ports".as_ref(), ports.as_ref()];
    flags.extend(extra.iter().map(|s| std::ffi::OsStr::new(*s)));
    let mut vm = args.with(&flags).spawn();
    let status = vm.wait_exit(DEADLINE);
    let t = vm.transcript();
    assert!(
        vm.stdout.iter().any(|l| l == "TESTGUEST PASS pci-enum"),
        "{t}"
    );
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{t}");
    vm.stdout.clone()
}

#[test]
fn default_four_ports() {
    if require_kvm() {
        enumerate(4, 1, &[]);
    }
}

#[test]
fn no_ports() {
    if require_kvm() {
        enumerate(0, 1, &[]);
    }
}

#[test]
fn thirty_one_ports_two_vcpus() {
    if require_kvm() {
        enumerate(31, 2, &[]);
    }
}

#[test]
fn cold_plugged_virtio_net_is_behind_port_1() {
    if !require_kvm() {
        return;
    }
    // A TAP backend needs CAP_NET_ADMIN; the name is unique per test process.
    let tap = format!("vmmt{}", std::process::id() % 100_000);
    let net = format!("tap={tap},mac=52:54:00:00:00:07");
    let out = enumerate(2, 1, &["--net", &net]);
    assert!(
        out.iter()
            .any(|l| l.contains("00:01.0 -> 01:00.0 [1af4:1041] class 020000")),
        "{out:?}"
    );
    assert!(
        out.iter()
            .any(|l| l.contains("00:02.0 -> bus 02: empty slot"))
    );
}
