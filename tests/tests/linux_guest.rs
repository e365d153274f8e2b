//! Tier 3: Debian's 6.12 kernel on the real vmm.
//!
//! - `linux_early_boot_smoke` runs everywhere KVM is: with earlyprintk on the serial port it
//!   checks that the kernel prints its banner, takes our e820 map and parses our ACPI tables
//!   (RSDP, XSDT, FACP, DSDT, APIC), which proves the boot protocol, e820 and RSDP
//!   placement. On PVM this takes a minute or two (guest ring 0 is emulated).
//! - `linux_boots_to_user_space` needs hardware-assisted KVM: on PVM, Linux user space does
//!   not start at all (shared/reference/kvm-on-these-machines.md), so it skips there.

use std::path::PathBuf;
use std::time::Duration;

use tests::{RunArgs, SkipKind, guest_images_out, host_is_pvm, require_kvm, skip};

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
    if !require_kvm() {
        return;
    }
    if host_is_pvm() {
        skip(
            SkipKind::HostLimit,
            "KVM here is PVM (software-assisted, nested): Linux user space cannot start; \
             this test runs on hardware-assisted KVM",
        );
        return;
    }
    let (Some(kernel), Some(initrd)) = (image("vmlinux"), image("initramfs.cpio.gz")) else {
        return;
    };
    let mut vm = RunArgs {
        kernel,
        initrd: Some(initrd),
        cmdline: "console=ttyS0 panic=-1 guest.scenario=smoke".into(),
        vcpus: 2,
        memory: "512M".into(),
        extra: Vec::new(),
    }
    .spawn();
    let budget = Duration::from_secs(120);
    assert!(
        vm.wait_for_stdout(budget, |l| l.contains("GUEST READY"))
            .is_some(),
        "{}",
        vm.transcript()
    );
    assert!(
        vm.wait_for_stdout(budget, |l| l.contains("GUEST SCENARIO smoke PASS"))
            .is_some(),
        "{}",
        vm.transcript()
    );
    let status = vm.wait_exit(budget).expect("powers off");
    assert_eq!(status.code(), Some(0), "{}", vm.transcript());
}
