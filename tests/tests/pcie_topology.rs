//! Tier 2: the test guest enumerates the PCIe hierarchy over ECAM and 0xCF8 (scenario
//! `pci-enum`) through the real VMM, and the tree it prints is checked line by line against
//! the layout the VMM promises: root port i at 00:i.0 with bus i, 16 MiB at
//! 0xC000_0000 + (i-1) * 16 MiB, 2 GiB prefetchable at 0x80_0000_0000 + (i-1) * 2 GiB,
//! physical slot i, an empty slot behind it; and a cold-plugged device behind port 1.

use std::ffi::OsStr;
use std::time::Duration;

use tests::{RunArgs, require_kvm};

const DEADLINE: Duration = Duration::from_secs(120);

/// Boots `pci-enum`; `ports` is passed as `--pcie-root-ports` unless None (the default),
/// `expect` as `testguest.pcie_root_ports`. Returns the serial lines and the exit code.
fn boot(ports: Option<u32>, expect: u32, vcpus: u32) -> (Vec<String>, Option<i32>, String) {
    let mut args = RunArgs::testguest("pci-enum", vcpus, "256M");
    args.cmdline
        .push_str(&format!(" testguest.pcie_root_ports={expect}"));
    let ports = ports.map(|n| n.to_string());
    let mut flags: Vec<&OsStr> = Vec::new();
    if let Some(n) = &ports {
        flags.extend([OsStr::new("--pcie-root-ports"), OsStr::new(n)]);
    }
    let mut vm = args.with(&flags).spawn();
    let status = vm.wait_exit(DEADLINE);
    let transcript = vm.transcript();
    (vm.stdout.clone(), status.and_then(|s| s.code()), transcript)
}

/// The INFO line a root port must print, up to its window list.
fn port_line(i: u64) -> String {
    let mem = 0xc000_0000 + (i - 1) * (16 << 20);
    let pref = 0x80_0000_0000 + (i - 1) * (2 << 30);
    format!(
        "TESTGUEST INFO pci-enum: 00:{i:02x}.0 [1b36:000c] class 0604 type 1 bus 00->{i:02x}..{i:02x} \
         mem {mem:x}-{:x} pref {pref:x}-{:x} io none slot {i} ",
        mem + (16 << 20) - 1,
        pref + (2 << 30) - 1
    )
}

/// Passes with exactly `ports` root ports, each with its line and an empty slot, in
/// depth-first order after the host bridge.
fn enumerate(flag: Option<u32>, ports: u32, vcpus: u32) {
    let (out, code, t) = boot(flag, ports, vcpus);
    assert!(out.iter().any(|l| l == "TESTGUEST PASS pci-enum"), "{t}");
    assert_eq!(code, Some(0), "{t}");
    let tree: Vec<&str> = out
        .iter()
        .map(String::as_str)
        .filter(|l| l.starts_with("TESTGUEST INFO pci-enum: 00:"))
        .collect();
    assert_eq!(
        tree.first().copied(),
        Some("TESTGUEST INFO pci-enum: 00:00.0 [1b36:0008] class 0600 host bridge"),
        "{t}"
    );
    assert_eq!(tree.len(), 1 + 2 * ports as usize, "{t}");
    for n in 1..=ports {
        let (at, i) = (2 * n as usize - 1, u64::from(n));
        assert!(tree[at].starts_with(&port_line(i)), "{}\n{t}", port_line(i));
        assert_eq!(
            tree[at + 1],
            format!("TESTGUEST INFO pci-enum: 00:{i:02x}.0 -> bus {i:02x}: empty slot"),
            "{t}"
        );
    }
    let walked = format!(
        "TESTGUEST INFO pci-enum: walked {} functions on {} buses",
        1 + ports,
        1 + ports
    );
    assert!(out.contains(&walked), "{walked}\n{t}");
    let count = format!("TESTGUEST INFO pci-enum: {ports} root ports");
    assert!(out.contains(&count), "{t}");
}

#[test]
fn default_is_four_ports_1vcpu() {
    if require_kvm() {
        enumerate(None, 4, 1);
    }
}

#[test]
fn no_root_ports() {
    if require_kvm() {
        enumerate(Some(0), 0, 1);
    }
}

#[test]
fn thirty_one_root_ports_2vcpus() {
    if require_kvm() {
        enumerate(Some(31), 31, 2);
    }
}

/// The count check bites: a guest told to expect another count fails, and the VMM exits
/// with the guest-failure status.
#[test]
fn wrong_expected_count_fails() {
    if !require_kvm() {
        return;
    }
    let (out, code, t) = boot(Some(2), 3, 1);
    assert!(
        out.iter()
            .any(|l| l == "TESTGUEST FAIL pci-enum: 2 root ports, expected 3"),
        "{t}"
    );
    assert_eq!(code, Some(3), "{t}");
}

#[test]
fn cold_plugged_virtio_net_is_behind_port_1() {
    if !require_kvm() {
        return;
    }
    if !tests::require_net_admin() {
        return;
    }
    // The name is unique per test process.
    let tap = format!("vmmt{}", std::process::id() % 100_000);
    let net = format!("tap={tap},mac=52:54:00:00:00:07");
    let mut args = RunArgs::testguest("pci-enum", 1, "256M");
    args.cmdline.push_str(" testguest.pcie_root_ports=2");
    let mut vm = args
        .with(&[
            OsStr::new("--pcie-root-ports"),
            OsStr::new("2"),
            OsStr::new("--net"),
            OsStr::new(&net),
        ])
        .spawn();
    let status = vm.wait_exit(DEADLINE);
    let t = vm.transcript();
    assert!(
        vm.stdout.iter().any(|l| l == "TESTGUEST PASS pci-enum"),
        "{t}"
    );
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{t}");
    let out = &vm.stdout;
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
