//! Tier 2: the real vmm boots the ring-3 test guest; one test per scenario, with 1 and 2
//! vCPUs, plus all of them in one boot as the README shows.

use std::time::Duration;

use tests::{RunArgs, require_kvm};

/// A hang guard for one boot, far above what a scenario needs.
const DEADLINE: Duration = Duration::from_secs(120);

fn run_scenarios(scenarios: &str, vcpus: u32) {
    if !require_kvm() {
        return;
    }
    RunArgs::testguest(scenarios, vcpus, "256M")
        .spawn()
        .expect_pass(&scenarios.split(',').collect::<Vec<_>>(), DEADLINE);
}

macro_rules! scenario_tests {
    ($($name:ident: $scenario:expr, $vcpus:expr;)*) => {
        $(
            #[test]
            fn $name() {
                run_scenarios($scenario, $vcpus);
            }
        )*
    };
}

scenario_tests! {
    boot_1vcpu: "boot", 1;
    boot_2vcpus: "boot", 2;
    smp_1vcpu: "smp", 1;
    smp_2vcpus: "smp", 2;
    timer_1vcpu: "timer", 1;
    timer_2vcpus: "timer", 2;
    acpi_1vcpu: "acpi", 1;
    acpi_2vcpus: "acpi", 2;
    ioapic_1vcpu: "ioapic", 1;
    ioapic_2vcpus: "ioapic", 2;
    all_four_2vcpus: "boot,smp,timer,acpi", 2;
    smp_4vcpus: "smp", 4;
}

/// A failing scenario gives exit code 3 and a FAIL line, not a PASS.
#[test]
fn unknown_scenario_fails_with_status() {
    if !require_kvm() {
        return;
    }
    let mut vm = RunArgs::testguest("no-such-scenario", 1, "64M").spawn();
    let status = vm.wait_exit(DEADLINE).expect("vmm exits");
    let t = vm.transcript();
    assert!(
        vm.stdout
            .iter()
            .any(|l| l.starts_with("TESTGUEST FAIL no-such-scenario")),
        "{t}"
    );
    assert_eq!(status.code(), Some(3), "{t}");
    assert!(
        vm.stderr
            .iter()
            .any(|l| l.contains("guest reported failure")),
        "{t}"
    );
}
