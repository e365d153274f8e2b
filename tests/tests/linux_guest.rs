//! Tier 3: Debian's 6.12 kernel on the real vmm.
//!
//! - `linux_early_boot_smoke` runs everywhere KVM is: with earlyprintk on the serial port it
//!   checks that the kernel prints its banner, takes our e820 map and parses our ACPI tables
//!   (RSDP, XSDT, FACP, DSDT, APIC), which proves the boot protocol, e820 and RSDP
//!   placement. On PVM this takes a minute or two (guest ring 0 is emulated).
//! - `linux_boots_to_user_space`, `linux_pcie_ping_and_hotplug` and `linux_behind_iommu`
//!   need hardware-style KVM: on PVM, Linux user space does not start at all
//!   (docs/testing.md), so they skip there. They run the
//!   initramfs scenarios `smoke`, `pcie` and `iommu` (guest-images/linux/scenarios/).
//!
//! Where KVM is PVM, `nested_kvm.rs` runs this whole file inside a nested KVM host (QEMU's
//! emulator with an EPYC CPU, kvm_amd inside), with `VMM_BIN`, `VMCTL_BIN`,
//! `VMM_TESTGUEST` and `VMM_GUEST_IMAGES` naming the prebuilt binaries and images and
//! `VMM_TESTS_STRICT=1`: there nothing here skips.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tests::net::receive_tcp;
use tests::nicd::{Nicd, mac_text, vf_mac};
use tests::{
    RunArgs, SkipKind, VmProcess, guest_images_out, hold_connections, host_is_pvm, require_kvm,
    skip, temp_path, vmctl,
};

/// Whether Linux user space can run here; prints the skip otherwise.
fn user_space_runs() -> bool {
    if !require_kvm() {
        return false;
    }
    if host_is_pvm() {
        skip(
            SkipKind::HostLimit,
            "KVM here is PVM (software-assisted, nested): Linux user space cannot start; \
             this test runs on hardware-style KVM, and here inside the nested KVM host \
             (tests/tests/nested_kvm.rs)",
        );
        return false;
    }
    true
}

/// The kernel and initramfs, with `cmdline` and `extra` flags, one vCPU, 512 MiB, and an
/// API socket (the transcript of a guest that stopped shows its vCPUs' registers). One
/// vCPU: the nested host emulates every vCPU it runs, and its emulated nested paging
/// crashes two-vCPU guests now and then (docs/testing.md); the SMP boot has its own test,
/// `linux_boots_to_user_space`.
fn linux(cmdline: &str, extra: &[&std::ffi::OsStr]) -> Option<VmProcess> {
    linux_with(cmdline, extra, 1)
}

/// [`linux`] with `vcpus` vCPUs.
fn linux_with(cmdline: &str, extra: &[&std::ffi::OsStr], vcpus: u32) -> Option<VmProcess> {
    let (Some(kernel), Some(initrd)) = (image("vmlinux"), image("initramfs.cpio.gz")) else {
        return None;
    };
    let api = temp_path("linux-api.sock");
    let mut extra = extra.to_vec();
    if !extra.contains(&"--api-socket".as_ref()) {
        extra.extend(["--api-socket".as_ref(), api.as_os_str()]);
    }
    let args = RunArgs {
        kernel,
        initrd: Some(initrd),
        cmdline: format!("console=ttyS0 panic=-1 {cmdline}"),
        vcpus,
        memory: "512M".into(),
        extra: Vec::new(),
    };
    Some(args.with(&extra).spawn_with_console())
}

fn expect_line(vm: &mut VmProcess, budget: Duration, text: &str) {
    let seen = vm.wait_for_stdout(budget, |l| l.contains(text));
    assert!(seen.is_some(), "no `{text}`\n{}", vm.transcript());
}

/// The scenario passes and the guest powers off with status 0.
/// Sends `command` to the scenario and waits for its answer, a line containing `answer`
/// printed after the command (answers repeat: a second `ping` must not take the first's).
fn ask(vm: &mut VmProcess, budget: Duration, command: &str, answer: &str) -> String {
    let mark = vm.stdout_mark();
    vm.send_line(command);
    vm.wait_for_stdout_since(mark, budget, |l| l.contains(answer))
        .unwrap_or_else(|| panic!("no `{answer}` after `{command}`\n{}", vm.transcript()))
}

fn scenario_passes(vm: &mut VmProcess, budget: Duration, scenario: &str) {
    expect_line(vm, budget, &format!("GUEST SCENARIO {scenario} PASS"));
    let status = vm.wait_exit(budget).expect("powers off");
    assert_eq!(status.code(), Some(0), "{}", vm.transcript());
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("runs ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits for the VMM to create TAP `name`, then gives the host side 10.0.2.2/24.
fn host_side_of_tap(name: &str) {
    let start = Instant::now();
    while !Path::new("/sys/class/net").join(name).exists() {
        assert!(start.elapsed() < Duration::from_secs(30), "no TAP {name}");
        std::thread::sleep(Duration::from_millis(50));
    }
    ip(&["addr", "add", "10.0.2.2/24", "dev", name]);
    ip(&["link", "set", name, "up"]);
}

fn image(name: &str) -> Option<PathBuf> {
    let p = guest_images_out().join(name);
    if p.exists() {
        Some(p)
    } else {
        skip(
            SkipKind::Missing,
            &format!(
                "{} is not built: run guest-images/build.sh linux",
                p.display()
            ),
        );
        None
    }
}

#[test]
fn linux_early_boot_smoke() {
    if !require_kvm() {
        return;
    }
    let Some(kernel) = image("vmlinux") else {
        return;
    };
    // Early boot only: no initrd needed. Budget: minutes, since ring 0 is emulated on PVM.
    // `noxsave`: PVM shows the guest the host's CPUID bits for features its KVM does not
    // list as supported (XSAVE among them), so the nested-safe template cannot hide XSAVE
    // there, and PVM's emulator cannot run XRSTOR (docs/boot.md).
    let cmdline = "console=ttyS0 earlyprintk=serial,ttyS0,115200 noxsave panic=-1";
    let mut vm = RunArgs {
        kernel,
        initrd: None,
        cmdline: cmdline.into(),
        vcpus: 2,
        memory: "512M".into(),
        extra: Vec::new(),
    }
    .spawn();
    let budget = Duration::from_secs(300);
    let expect = [
        ("banner", "Linux version 6.12"),
        ("e820 map", "BIOS-e820: [mem 0x0000000000100000-"),
        ("RSDP", "ACPI: RSDP 0x00000000000E0000"),
        ("XSDT", "ACPI: XSDT 0x"),
        ("FADT", "ACPI: FACP 0x"),
        ("DSDT", "ACPI: DSDT 0x"),
        ("MADT", "ACPI: APIC 0x"),
    ];
    for (what, needle) in expect {
        let seen = vm.wait_for_stdout(budget, |l| l.contains(needle));
        assert!(
            seen.is_some(),
            "Linux did not print its {what} line (`{needle}`)\n{}",
            vm.transcript()
        );
    }
    // The MADT carries both vCPUs.
    let cpus = vm.wait_for_stdout(budget, |l| l.contains("Allowing 2 present CPUs"));
    assert!(cpus.is_some(), "{}", vm.transcript());
    vm.kill();
}

#[test]
fn linux_boots_to_user_space() {
    if !user_space_runs() {
        return;
    }
    // Two vCPUs: the SMP boot (INIT/SIPI, the AP's start-up, the LAPIC timer on both).
    let Some(mut vm) = linux_with("guest.scenario=smoke", &[], 2) else {
        return;
    };
    let budget = Duration::from_secs(120);
    expect_line(&mut vm, budget, "GUEST READY");
    assert!(
        vm.stdout
            .iter()
            .any(|l| l.contains("smp: Brought up 1 node, 2 CPUs")),
        "the second vCPU did not come up\n{}",
        vm.transcript()
    );
    scenario_passes(&mut vm, budget, "smoke");
}

/// Linux tier for PCIe: the PCI tree, pcieport and a pciehp slot on every root port,
/// virtio_net up and answering a ping through the TAP backend, then a virtio-net hot-added
/// through the API appears in the guest and an orderly removal (attention button, the
/// guest's power-off) completes.
#[test]
fn linux_pcie_ping_and_hotplug() {
    if !user_space_runs() || !tests::require_net_admin() {
        return;
    }
    let tap = format!("vmml{}", std::process::id() % 100_000);
    let api = temp_path("api.sock");
    let host = temp_path("host.sock");
    let _peer = hold_connections(&host);
    let net = format!("tap={tap},mac=52:54:00:00:00:15");
    let Some(mut vm) = linux(
        "guest.scenario=pcie guest.hotplug=1",
        &[
            "--pcie-root-ports".as_ref(),
            "2".as_ref(),
            "--net".as_ref(),
            net.as_ref(),
            "--api-socket".as_ref(),
            api.as_os_str(),
        ],
    ) else {
        return;
    };
    host_side_of_tap(&tap);
    let budget = Duration::from_secs(180);
    expect_line(&mut vm, budget, "GUEST READY");
    expect_line(&mut vm, budget, "GUEST HOTPLUG READY");
    let spec = format!("socket={}", host.display());
    let (code, r) = vmctl(&api, &["device", "add", "net", &spec, "--port", "2"]);
    assert_eq!(code, 0, "{r:?}\n{}", vm.transcript());
    let id = r.device.expect("the added device").id;
    expect_line(&mut vm, budget, "GUEST HOTPLUG ADDED");
    // Answered once pciehp has powered the slot off and the VMM has detached the device.
    let (code, r) = vmctl(&api, &["device", "remove", &id]);
    assert_eq!(code, 0, "{r:?}\n{}", vm.transcript());
    expect_line(&mut vm, budget, "GUEST HOTPLUG REMOVED");
    scenario_passes(&mut vm, budget, "pcie");
}

/// Linux tier for the IOMMU: virtio-iommu binds from the initramfs module, one IOMMU group per
/// endpoint, virtio_net comes up behind it.
#[test]
fn linux_behind_iommu() {
    if !user_space_runs() {
        return;
    }
    let host = temp_path("iommu-host.sock");
    let _peer = hold_connections(&host);
    let net = format!("socket={}", host.display());
    let Some(mut vm) = linux(
        "guest.scenario=iommu",
        &["--iommu".as_ref(), "--net".as_ref(), net.as_ref()],
    ) else {
        return;
    };
    let budget = Duration::from_secs(180);
    expect_line(&mut vm, budget, "GUEST READY");
    scenario_passes(&mut vm, budget, "iommu");
}

/// The host end of nicd's uplink TAP in the VF tests.
const VF_HOST: &str = "10.0.3.1";

/// The `vf` scenario's bring-up markers, in order: igbvf bound, the admin MAC as the
/// permanent address, the carrier, a ping of the uplink's host end. Returns the DEVICE
/// line and the lines up to the ping.
fn expect_vf_bring_up(vm: &mut VmProcess, budget: Duration, mac: &str) {
    let dev = vm.wait_for_stdout(budget, |l| l.contains("GUEST VF DEVICE "));
    let dev = dev.unwrap_or_else(|| panic!("no VF device\n{}", vm.transcript()));
    assert!(dev.ends_with("driver=igbvf"), "{dev}\n{}", vm.transcript());
    expect_line(vm, budget, &format!("GUEST VF MAC {mac} assign_type=0"));
    expect_line(vm, budget, "GUEST VF CARRIER UP");
    expect_line(vm, budget, &format!("GUEST VF PING {VF_HOST} OK"));
}

/// Linux tier for VF assignment: Linux's igbvf drives a VF of nicd in a root-port slot of
/// the vmm: it binds, its permanent address is nicd's admin MAC, it pings the host end of
/// nicd's uplink TAP and sends 4 MiB over TCP (checksum and TSO offloads on nicd's side,
/// the SHA-256 checked here); nicd counts the bytes; nicd's link-state disable and auto are
/// seen as carrier loss and return; a second guest's VF answers a ping through nicd's
/// switch.
#[test]
fn linux_igbvf_on_a_nicd_vf() {
    if !user_space_runs() || !tests::require_net_admin() {
        return;
    }
    const BYTES: usize = 4 << 20;
    let tap = format!("nicdl{}", std::process::id() % 100_000);
    let nicd = Nicd::start_tap(2, &tap, &format!("{VF_HOST}/24"));
    let listener = std::net::TcpListener::bind(format!("{VF_HOST}:0")).expect("bind");
    let port = listener.local_addr().expect("local_addr").port();
    let received = receive_tcp(listener, BYTES);
    let vf = |k: u16| format!("socket={}", nicd.vf(k).display());
    let (mac0, mac1) = (mac_text(vf_mac(0)), mac_text(vf_mac(1)));
    let budget = Duration::from_secs(240);
    let vf0 = vf(0);
    let Some(mut a) = linux(
        &format!(
            "guest.scenario=vf guest.vf_mac={mac0} guest.vf_ip=10.0.3.2/24 \
             guest.peer_ip={VF_HOST} guest.tcp_port={port} guest.tcp_bytes={BYTES} \
             guest.vf_hold=1"
        ),
        &["--vf".as_ref(), vf0.as_ref()],
    ) else {
        return;
    };
    expect_vf_bring_up(&mut a, budget, &mac0);
    let sending = a
        .wait_for_stdout(budget, |l| l.contains("GUEST VF TCP SENDING "))
        .unwrap_or_else(|| panic!("no TCP transfer\n{}", a.transcript()));
    expect_line(&mut a, budget, "GUEST VF TCP SENT ");
    tests::net::expect_tcp_whole(&received, &sending, BYTES, &|| a.transcript());
    expect_line(&mut a, budget, "GUEST VF HOLD");
    // The guest's counters (ip -s link) against nicd's for the VF, nicd's read just
    // before and just after the guest's (frames may still trickle in from the host's
    // side of the TAP): every frame nicd delivered, the guest counted; nicd saw at least
    // the guest's TX packets and bytes (the guest counts a TSO frame once, nicd each
    // segment on the wire, headers included).
    let nicd_stats = || -> serde_json::Value {
        let (code, out, err) = nicd.vmctl(&["show", "-s", "--json"]);
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
        v["vfinfo_list"][0]["stats"].clone()
    };
    let before = nicd_stats();
    a.send_line("stats");
    let stats = a
        .wait_for_stdout(budget, |l| l.contains("GUEST VF STATS "))
        .unwrap_or_else(|| panic!("no stats\n{}", a.transcript()));
    let after = nicd_stats();
    let guest = |key: &str| -> u64 {
        stats
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{key}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in `{stats}`"))
    };
    let n = |v: &serde_json::Value, dir: &str, key: &str| v[dir][key].as_u64().unwrap_or(0);
    assert!(
        (n(&before, "rx", "packets")..=n(&after, "rx", "packets")).contains(&guest("rx_packets")),
        "RX packets: the guest's `{stats}`, nicd's {before} then {after}"
    );
    assert!(
        n(&after, "tx", "tx_packets") >= guest("tx_packets")
            && n(&after, "tx", "tx_bytes") >= guest("tx_bytes").max(BYTES as u64),
        "TX: the guest's `{stats}`, nicd's {after}"
    );

    // Link state, as the guest sees it.
    for (state, carrier) in [("disable", "down"), ("auto", "up")] {
        let (code, _, err) = nicd.vmctl(&["vf", "0", "set", "state", state]);
        assert_eq!(code, 0, "{err}");
        a.send_line(&format!("carrier {carrier}"));
        expect_line(
            &mut a,
            budget,
            &format!("GUEST VF CARRIER {}", carrier.to_uppercase()),
        );
    }

    // VF to VF through nicd's switch.
    let vf1 = vf(1);
    let Some(mut b) = linux(
        &format!(
            "guest.scenario=vf guest.vf_mac={mac1} guest.vf_ip=10.0.3.3/24 \
             guest.peer_ip={VF_HOST} guest.vf_hold=1"
        ),
        &["--vf".as_ref(), vf1.as_ref()],
    ) else {
        return;
    };
    expect_vf_bring_up(&mut b, budget, &mac1);
    expect_line(&mut b, budget, "GUEST VF HOLD");
    a.send_line("ping 10.0.3.3");
    expect_line(&mut a, budget, "GUEST VF PING 10.0.3.3 OK");
    for vm in [&mut a, &mut b] {
        vm.send_line("done");
        scenario_passes(vm, budget, "vf");
    }
    drop(nicd);
}

/// Linux tier for a VF behind the virtual IOMMU, hot-plugged: the guest boots with
/// virtio-iommu and no VF; a VF of nicd is hot-added through the API; pciehp and igbvf
/// bring it up in its own IOMMU group, where every DMA buffer igbvf maps reaches nicd as a
/// DMA_MAP at its IOVA; it pings the uplink; then an orderly removal through the
/// attention button detaches it.
#[test]
fn linux_igbvf_hot_plugged_behind_the_iommu() {
    if !user_space_runs() || !tests::require_net_admin() {
        return;
    }
    let tap = format!("nicdi{}", std::process::id() % 100_000);
    let nicd = Nicd::start_tap(1, &tap, &format!("{VF_HOST}/24"));
    let mac0 = mac_text(vf_mac(0));
    let api = temp_path("vf-iommu-api.sock");
    let budget = Duration::from_secs(240);
    let Some(mut vm) = linux(
        &format!(
            "guest.scenario=vf guest.vf_mac={mac0} guest.vf_ip=10.0.3.2/24 \
             guest.peer_ip={VF_HOST} guest.vf_wait=240 guest.vf_hold=1"
        ),
        &["--iommu".as_ref(), "--api-socket".as_ref(), api.as_os_str()],
    ) else {
        return;
    };
    expect_line(&mut vm, budget, "GUEST READY");
    let sock = format!("socket={}", nicd.vf(0).display());
    let (code, r) = vmctl(&api, &["device", "add", "vf", &sock]);
    assert_eq!(code, 0, "{r:?}\n{}", vm.transcript());
    let id = r.device.expect("the added device").id;
    let group = vm.wait_for_stdout(budget, |l| l.contains("GUEST VF IOMMU GROUP "));
    let group = group.unwrap_or_else(|| panic!("the VF has no IOMMU group\n{}", vm.transcript()));
    let members = group.split("devices=").nth(1).unwrap_or_default();
    assert_eq!(
        members.split_whitespace().count(),
        1,
        "the VF is alone in its group: {group}"
    );
    expect_vf_bring_up(&mut vm, budget, &mac0);
    expect_line(&mut vm, budget, "GUEST VF HOLD");
    // Answered once pciehp has powered the slot off and the vmm let go of the VF.
    let (code, r) = vmctl(&api, &["device", "remove", &id]);
    assert_eq!(code, 0, "{r:?}\n{}", vm.transcript());
    vm.send_line("done");
    scenario_passes(&mut vm, budget, "vf");
}

/// Linux tier for failover: Linux's net_failover pairs the virtio-net STANDBY (a
/// synthetic port of nicd) with the igbvf VF of the same MAC that `vmctl failover attach`
/// hot-adds; a TCP stream from the failover master to the host end of nicd's uplink TAP
/// goes on while the VF is attached and detached (three times, ten with
/// `VMM_LINUX_FAILOVER_CYCLES=10`; `vmctl failover`) and while
/// nicd is killed and started again (the VF goes by surprise; the vmm gives the guest a
/// new one by itself), and arrives whole.
#[test]
fn linux_net_failover_keeps_tcp_across_vf_detach_and_attach() {
    if !user_space_runs() || !tests::require_net_admin() {
        return;
    }
    const HOST: &str = "10.0.4.1";
    // The ten cycles with `VMM_LINUX_FAILOVER_CYCLES=10` (passed in this
    // project's runs); three by default, since every minute in the nested emulator risks
    // its crashes (docs/testing.md).
    let cycles: usize = std::env::var("VMM_LINUX_FAILOVER_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    // 64 KiB each, 0.4 s apart at least (their making is slow in the nested host): the
    // stream outlasts the cycles and nicd's restart.
    let chunks = 40 + 16 * cycles;
    let tap = format!("nicdf{}", std::process::id() % 100_000);
    let mut nicd = Nicd::start_tap(1, &tap, &format!("{HOST}/24"));
    let listener = std::net::TcpListener::bind(format!("{HOST}:0")).expect("bind");
    let port = listener.local_addr().expect("local_addr").port();
    let received = receive_tcp(listener, chunks * 65536);
    let api = temp_path("failover-linux-api.sock");
    let net = nicd.synthetic_net(vf_mac(0), true);
    let budget = Duration::from_secs(120);
    let Some(mut vm) = linux(
        &format!(
            "guest.scenario=failover guest.ip=10.0.4.2/24 guest.peer_ip={HOST} \
             guest.tcp_port={port} guest.tcp_chunks={chunks} guest.tcp_gap_ms=400"
        ),
        &[
            "--net".as_ref(),
            net.as_ref(),
            "--api-socket".as_ref(),
            api.as_os_str(),
        ],
    ) else {
        return;
    };
    expect_line(&mut vm, budget, "GUEST FAILOVER MASTER");
    expect_line(&mut vm, budget, &format!("GUEST FAILOVER PING {HOST} OK"));
    expect_line(&mut vm, budget, "GUEST FAILOVER TCP STARTED");
    expect_line(&mut vm, budget, "GUEST FAILOVER HOLD");
    let failover = |vm: &mut VmProcess, op: &str| {
        // A detach moves the filters once the guest has let go of the VF: net_failover
        // drops what arrives on the standby while the VF is its primary, which with the
        // seed's order (filters first) loses pciehp's 5-second button delay of inbound
        // traffic per detach.
        let mut args = vec!["failover", op, "--timeout-ms", "60000"];
        if op == "detach" {
            args.push("--filters-last");
        }
        let (code, r) = vmctl(&api, &args);
        assert_eq!(code, 0, "failover {op}: {r:?}\n{}", vm.transcript());
        eprintln!("failover {op}: {:?}", r.failover.map(|f| f.steps_us));
    };
    // The primary as the guest names it.
    let primary_present = |vm: &mut VmProcess| -> String {
        let l = ask(
            vm,
            budget,
            "primary present",
            "GUEST FAILOVER PRIMARY PRESENT",
        );
        l.split_whitespace().last().unwrap_or_default().to_string()
    };
    let ping = |vm: &mut VmProcess| {
        ask(
            vm,
            budget,
            &format!("ping {HOST}"),
            &format!("GUEST FAILOVER PING {HOST} OK"),
        );
    };
    for cycle in 0..cycles {
        failover(&mut vm, "attach");
        let primary = primary_present(&mut vm);
        ping(&mut vm);
        eprintln!("cycle {cycle}: the VF is the primary ({primary})");
        if cycle == 0 {
            // nicd killed (SIGKILL) and started again: the VF goes by surprise, the
            // standby's port reconnects, and the vmm gives the guest a VF again by
            // itself; the TCP stream goes on (retransmits) across it.
            let (_, r) = vmctl(&api, &["failover", "status"]);
            let vf_before = r.standby.and_then(|s| s.vf).expect("a VF");
            nicd.restart();
            let t0 = std::time::Instant::now();
            let deadline = t0 + budget;
            let status = loop {
                let (code, r) = vmctl(&api, &["failover", "status"]);
                assert_eq!(code, 0, "{r:?}\n{}", vm.transcript());
                let st = r.standby.expect("the standby's status");
                if st.last_reattach.is_some() {
                    break st;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "no re-attach after nicd's restart: {st:?}\n{}",
                    vm.transcript()
                );
                std::thread::sleep(Duration::from_millis(100));
            };
            eprintln!(
                "nicd restarted: re-attach after {:.1} s: {status:?}",
                t0.elapsed().as_secs_f64()
            );
            assert_eq!(
                (status.port.disconnects, status.port.reconnects),
                (1, 1),
                "{status:?}"
            );
            let last = status.last_reattach.unwrap_or_default();
            assert!(last.contains("attached"), "{last}\n{}", vm.transcript());
            assert_ne!(status.vf, Some(vf_before), "a new VF after the restart");
            for l in vm.stderr.iter().filter(|l| {
                l.contains("synthetic port") || l.contains("reattach") || l.contains("lost at")
            }) {
                eprintln!("vmm: {l}");
            }
            let again = primary_present(&mut vm);
            eprintln!("the new VF is the primary ({again})");
            ping(&mut vm);
        }
        failover(&mut vm, "detach");
        ask(
            &mut vm,
            budget,
            "primary absent",
            "GUEST FAILOVER PRIMARY ABSENT",
        );
    }
    // Pings five a second since the stream began: what the switches (and nicd's
    // restart) cost them.
    let stats = ask(&mut vm, budget, "stats", "GUEST FAILOVER PING STATS ");
    eprintln!(
        "{cycles} attach/detach cycles and a restart of nicd: {}",
        stats.split("STATS ").last().unwrap_or_default()
    );
    // Where frames went missing, as nicd counts (since its restart).
    let (_, lost, _) = nicd.vmctl(&["lost"]);
    let (_, show, _) = nicd.vmctl(&["show", "-s"]);
    eprintln!("nicd lost: {lost}\nnicd show -s:\n{show}");
    vm.send_line("tcp wait");
    let sent = vm
        .wait_for_stdout(budget, |l| l.contains("GUEST FAILOVER TCP SENT "))
        .unwrap_or_else(|| panic!("the stream did not end\n{}", vm.transcript()));
    tests::net::expect_tcp_whole(&received, &sent, chunks * 65536, &|| vm.transcript());
    vm.send_line("done");
    scenario_passes(&mut vm, budget, "failover");
}
