//! The VM lifecycle, and vCPU state through real KVM.

use std::sync::Arc;
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::boot::regs;
use crate::kvm::IoBus;
use crate::kvm::vcpu::{VcpuContext, install_kick_handler};

#[test]
fn lifecycle_transitions() {
    use VmState::*;
    let ok = [
        (Created, Running),
        (Running, Paused),
        (Paused, Running),
        (Created, ShuttingDown),
        (Running, ShuttingDown),
        (Paused, ShuttingDown),
    ];
    for from in [Created, Running, Paused, ShuttingDown] {
        for to in [Created, Running, Paused, ShuttingDown] {
            let want = ok.contains(&(from, to));
            assert_eq!(from.valid_transition(to).is_ok(), want, "{from} -> {to}");
        }
    }
    assert_eq!(
        Paused.valid_transition(Paused).unwrap_err().to_string(),
        "the VM cannot go from paused to paused"
    );
}

/// No devices: the guest below never leaves its loop.
struct NoBus;

impl IoBus for NoBus {
    fn pio_read(&self, _: u16, _: &mut [u8]) -> bool {
        false
    }
    fn pio_write(&self, _: u16, _: &[u8]) -> bool {
        false
    }
    fn mmio_read(&self, _: u64, _: &mut [u8]) -> bool {
        false
    }
    fn mmio_write(&self, _: u64, _: &[u8]) -> bool {
        false
    }
    fn ioapic_eoi(&self, _: u8) {}
}

/// `inc rax; jmp .-3` at 1 MiB: RAX counts how long the vCPU ran.
const LOOP: [u8; 5] = [0x48, 0xff, 0xc0, 0xeb, 0xfb];
const ENTRY: u64 = 0x10_0000;

fn spawn(vm: &Vm, ram: &GuestRam, fd: kvm_ioctls::VcpuFd) -> VcpuHandle {
    VcpuHandle::spawn(VcpuContext {
        fd,
        id: 0,
        bus: Arc::new(NoBus),
        mem: ram.memory().clone(),
        stop_sink: Arc::new(ExitMonitor::new().unwrap()),
        state_caps: vm.cpu_state_caps(),
        saved_msrs: vm.saved_msrs().unwrap(),
        parked_notify: None,
    })
    .unwrap()
}

/// Runs until RAX has moved, then pauses; returns the saved state.
fn run_then_save(vcpu: &VcpuHandle, event: VcpuEvent, above: u64) -> CpuState {
    vcpu.request(event).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        std::thread::sleep(Duration::from_millis(20));
        vcpu.request(VcpuEvent::Pause).unwrap();
        assert!(
            vcpu.wait_parked(Duration::from_secs(10)),
            "vCPU did not park"
        );
        let state = vcpu.save_state(Duration::from_secs(10)).unwrap();
        if state.regs.rax > above {
            return state;
        }
        assert!(std::time::Instant::now() < deadline, "RAX never moved");
        vcpu.request(VcpuEvent::Resume).unwrap();
    }
}

/// A vCPU runs a counting loop, is paused, and its thread saves its registers; a fresh vCPU
/// of a fresh VM over the same memory takes them and carries on counting from there.
#[test]
fn paused_vcpu_state_moves_to_a_fresh_vcpu() {
    if kvm_ioctls::Kvm::new().is_err() {
        assert!(
            std::env::var_os("VMM_TESTS_STRICT").is_none_or(|v| v != "1"),
            "/dev/kvm is not usable"
        );
        println!("SKIP: /dev/kvm is not usable");
        return;
    }
    install_kick_handler().unwrap();
    let ram = GuestRam::new(16 << 20).unwrap();
    regs::write_boot_tables(ram.memory()).unwrap();
    ram.memory()
        .write_slice(&LOOP, GuestAddress(ENTRY))
        .unwrap();
    let template = CpuTemplate::for_host();

    let vm = Vm::new(1).unwrap();
    vm.register_memory(ram.memory()).unwrap();
    let fd = vm
        .create_boot_vcpu(0, 1, template, GuestAddress(ENTRY))
        .unwrap();
    let mut vcpu = spawn(&vm, &ram, fd);
    // Not started yet: a parked vCPU of state Created answers too.
    let before = vcpu.save_state(Duration::from_secs(10)).unwrap();
    assert_eq!(before.regs.rip, ENTRY);
    let saved = run_then_save(&vcpu, VcpuEvent::Start, 0);
    // Paused means paused: saving again finds the same registers.
    let again = vcpu.save_state(Duration::from_secs(10)).unwrap();
    assert_eq!(again.regs.rax, saved.regs.rax);
    assert_eq!(again.regs.rip, saved.regs.rip);
    assert!(
        (ENTRY..ENTRY + 5).contains(&saved.regs.rip),
        "rip {:#x}",
        saved.regs.rip
    );
    assert!(!saved.msrs.is_empty() && !saved.cpuid.is_empty());
    vcpu.exit_and_join();
    // Asking a gone vCPU fails at once.
    assert!(vcpu.save_state(Duration::from_secs(1)).is_err());
    drop(vm);

    let vm = Vm::new(1).unwrap();
    vm.register_memory(ram.memory()).unwrap();
    let fd = vm.create_plain_vcpu(0).unwrap();
    let mut fresh = spawn(&vm, &ram, fd);
    let rax = saved.regs.rax;
    let (rip, cr3, efer) = (saved.regs.rip, saved.sregs.cr3, saved.sregs.efer);
    fresh.restore_state(saved, Duration::from_secs(10)).unwrap();
    let loaded = fresh.save_state(Duration::from_secs(10)).unwrap();
    assert_eq!(
        (
            loaded.regs.rax,
            loaded.regs.rip,
            loaded.sregs.cr3,
            loaded.sregs.efer
        ),
        (rax, rip, cr3, efer)
    );
    let later = run_then_save(&fresh, VcpuEvent::Start, rax);
    assert!(later.regs.rax > rax);
    fresh.exit_and_join();
}
