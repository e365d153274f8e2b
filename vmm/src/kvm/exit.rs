//! vCPU exit decoding: a pure function from a KVM exit to what the run loop does next, so
//! unit tests cover every exit without KVM.

use std::fmt;

use kvm_ioctls::VcpuExit;

use devices::debug_ratelimited;

/// KVM_SYSTEM_EVENT_* types.
const SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const SYSTEM_EVENT_RESET: u32 = 2;
const SYSTEM_EVENT_CRASH: u32 = 3;

/// Port and MMIO accesses of the guest, as the run loop dispatches them.
pub trait IoBus {
    /// A port read; `false` if no device claims the port.
    fn pio_read(&self, port: u16, data: &mut [u8]) -> bool;
    /// A port write; `false` if no device claims the port.
    fn pio_write(&self, port: u16, data: &[u8]) -> bool;
    /// An MMIO read; `false` if no device claims the address.
    fn mmio_read(&self, addr: u64, data: &mut [u8]) -> bool;
    /// An MMIO write; `false` if no device claims the address.
    fn mmio_write(&self, addr: u64, data: &[u8]) -> bool;
    /// A local APIC signalled the EOI of a level-triggered IOAPIC vector
    /// (KVM_EXIT_IOAPIC_EOI, split irqchip).
    fn ioapic_eoi(&self, vector: u8);
}

/// Why a vCPU stopped running the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// KVM_EXIT_SHUTDOWN: a triple fault.
    TripleFault,
    /// KVM_EXIT_INTERNAL_ERROR (usually an instruction KVM could not emulate).
    InternalError,
    /// VM entry failed with this hardware reason.
    FailEntry(u64),
    /// The guest asked KVM to power off (PSCI-style system event).
    SystemShutdown,
    /// The guest asked KVM to reset.
    SystemReset,
    /// The guest reported a crash.
    SystemCrash,
    /// HLT with interrupts that can never arrive (only without an in-kernel irqchip).
    Halted,
    /// An exit this VMM does not handle.
    Unexpected(String),
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::TripleFault => f.write_str("triple fault (KVM_EXIT_SHUTDOWN)"),
            StopReason::InternalError => f.write_str("KVM internal error"),
            StopReason::FailEntry(r) => write!(f, "VM entry failed (hardware reason {r:#x})"),
            StopReason::SystemShutdown => f.write_str("system event: shutdown"),
            StopReason::SystemReset => f.write_str("system event: reset"),
            StopReason::SystemCrash => f.write_str("system event: guest crash"),
            StopReason::Halted => f.write_str("vCPU halted with no interrupt source"),
            StopReason::Unexpected(s) => write!(f, "unexpected vCPU exit: {s}"),
        }
    }
}

/// What the run loop does after an exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitAction {
    /// Run the guest again.
    Continue,
    /// The run was interrupted by a signal: check for requests, then run again.
    Interrupted,
    /// Stop this vCPU (and the VM).
    Stop(StopReason),
}

/// Handles one exit: dispatches I/O to `bus`, decodes everything else.
pub fn handle_exit(exit: VcpuExit<'_>, bus: &dyn IoBus) -> ExitAction {
    match exit {
        VcpuExit::IoIn(port, data) => {
            if !bus.pio_read(port, data) {
                debug_ratelimited!("unclaimed {}-byte port read at {port:#x}", data.len());
                data.fill(0xff);
            }
            ExitAction::Continue
        }
        VcpuExit::IoOut(port, data) => {
            if !bus.pio_write(port, data) {
                debug_ratelimited!("unclaimed {}-byte port write at {port:#x}", data.len());
            }
            ExitAction::Continue
        }
        VcpuExit::MmioRead(addr, data) => {
            if !bus.mmio_read(addr, data) {
                debug_ratelimited!("unclaimed {}-byte MMIO read at {addr:#x}", data.len());
                data.fill(0xff);
            }
            ExitAction::Continue
        }
        VcpuExit::MmioWrite(addr, data) => {
            if !bus.mmio_write(addr, data) {
                debug_ratelimited!("unclaimed {}-byte MMIO write at {addr:#x}", data.len());
            }
            ExitAction::Continue
        }
        VcpuExit::Intr => ExitAction::Interrupted,
        VcpuExit::IoapicEoi(vector) => {
            bus.ioapic_eoi(vector);
            ExitAction::Continue
        }
        // Only requested for PIC interrupts, and there is no PIC.
        VcpuExit::IrqWindowOpen => ExitAction::Continue,
        VcpuExit::Hlt => ExitAction::Stop(StopReason::Halted),
        VcpuExit::Shutdown => ExitAction::Stop(StopReason::TripleFault),
        VcpuExit::InternalError => ExitAction::Stop(StopReason::InternalError),
        VcpuExit::FailEntry(reason, _cpu) => ExitAction::Stop(StopReason::FailEntry(reason)),
        VcpuExit::SystemEvent(kind, _) => ExitAction::Stop(match kind {
            SYSTEM_EVENT_SHUTDOWN => StopReason::SystemShutdown,
            SYSTEM_EVENT_RESET => StopReason::SystemReset,
            SYSTEM_EVENT_CRASH => StopReason::SystemCrash,
            other => StopReason::Unexpected(format!("system event {other}")),
        }),
        other => ExitAction::Stop(StopReason::Unexpected(format!("{other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// A bus with one port (0x3f8) and one MMIO page (0x1000), recording writes.
    #[derive(Default)]
    struct TestBus {
        writes: RefCell<Vec<(u64, Vec<u8>)>>,
        eois: RefCell<Vec<u8>>,
    }

    impl IoBus for TestBus {
        fn pio_read(&self, port: u16, data: &mut [u8]) -> bool {
            data.fill(0x42);
            port == 0x3f8
        }
        fn pio_write(&self, port: u16, data: &[u8]) -> bool {
            self.writes
                .borrow_mut()
                .push((u64::from(port), data.to_vec()));
            port == 0x3f8
        }
        fn mmio_read(&self, addr: u64, data: &mut [u8]) -> bool {
            data.fill(0x17);
            (0x1000..0x2000).contains(&addr)
        }
        fn mmio_write(&self, addr: u64, data: &[u8]) -> bool {
            self.writes.borrow_mut().push((addr, data.to_vec()));
            (0x1000..0x2000).contains(&addr)
        }
        fn ioapic_eoi(&self, vector: u8) {
            self.eois.borrow_mut().push(vector);
        }
    }

    #[test]
    fn ioapic_eois_reach_the_bus() {
        let bus = TestBus::default();
        assert_eq!(
            handle_exit(VcpuExit::IoapicEoi(0x31), &bus),
            ExitAction::Continue
        );
        assert_eq!(*bus.eois.borrow(), vec![0x31]);
    }

    #[test]
    fn io_is_dispatched() {
        let bus = TestBus::default();
        let mut data = [0u8; 1];
        assert_eq!(
            handle_exit(VcpuExit::IoIn(0x3f8, &mut data), &bus),
            ExitAction::Continue
        );
        assert_eq!(data, [0x42]);
        assert_eq!(
            handle_exit(VcpuExit::IoOut(0x3f8, b"a"), &bus),
            ExitAction::Continue
        );
        let mut word = [0u8; 4];
        assert_eq!(
            handle_exit(VcpuExit::MmioRead(0x1004, &mut word), &bus),
            ExitAction::Continue
        );
        assert_eq!(word, [0x17; 4]);
        handle_exit(VcpuExit::MmioWrite(0x1008, &[1, 2]), &bus);
        assert_eq!(
            *bus.writes.borrow(),
            vec![(0x3f8, b"a".to_vec()), (0x1008, vec![1, 2])]
        );
    }

    #[test]
    fn unclaimed_reads_float_high() {
        let bus = TestBus::default();
        let mut data = [0u8; 2];
        assert_eq!(
            handle_exit(VcpuExit::IoIn(0x80, &mut data), &bus),
            ExitAction::Continue
        );
        assert_eq!(data, [0xff, 0xff]);
        let mut m = [0u8; 8];
        handle_exit(VcpuExit::MmioRead(0xdead_0000, &mut m), &bus);
        assert_eq!(m, [0xff; 8]);
        assert_eq!(
            handle_exit(VcpuExit::IoOut(0x80, &[0]), &bus),
            ExitAction::Continue
        );
    }

    #[test]
    fn fatal_exits_stop() {
        let bus = TestBus::default();
        let cases = [
            (VcpuExit::Shutdown, StopReason::TripleFault),
            (VcpuExit::InternalError, StopReason::InternalError),
            (VcpuExit::FailEntry(7, 0), StopReason::FailEntry(7)),
            (VcpuExit::Hlt, StopReason::Halted),
            (VcpuExit::SystemEvent(1, &[]), StopReason::SystemShutdown),
            (VcpuExit::SystemEvent(2, &[]), StopReason::SystemReset),
            (VcpuExit::SystemEvent(3, &[]), StopReason::SystemCrash),
        ];
        for (exit, reason) in cases {
            assert_eq!(handle_exit(exit, &bus), ExitAction::Stop(reason));
        }
        assert!(matches!(
            handle_exit(VcpuExit::SystemEvent(9, &[]), &bus),
            ExitAction::Stop(StopReason::Unexpected(_))
        ));
        assert!(matches!(
            handle_exit(VcpuExit::Nmi, &bus),
            ExitAction::Stop(StopReason::Unexpected(_))
        ));
        assert_eq!(handle_exit(VcpuExit::Intr, &bus), ExitAction::Interrupted);
    }
}
