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

/// The kernel and initramfs, with `cmdline` and `extra` flags, 2 vCPUs, 512 MiB, and an
/// API socket (the transcript of a guest that stopped shows its vCPUs' registers).
fn linux(cmdline: &str, extra: &[&std::ffi::OsStr]) -> Option<VmProcess> {
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
        vcpus: 2,
        memory: "512M".into(),
        extra: Vec::new(),
    };
    Some(args.with(&extra).spawn())
}

fn expect_line(vm: &mut VmProcess, budget: Duration, text: &str) {
    let seen = vm.wait_for_stdout(budget, |l| l.contains(text));
    assert!(seen.is_some(), "no `{text}`\n{}", vm.transcript());
}

/// The scenario passes and the guest powers off with status 0.
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
    let Some(mut vm) = linux("guest.scenario=smoke", &[]) else {
        return;
    };
    let budget = Duration::from_secs(120);
    expect_line(&mut vm, budget, "GUEST READY");
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
