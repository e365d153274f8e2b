//! How a VM ends: the first power event, vCPU stop or signal wins, and wakes the event loop.

use devices::sync::lock;
use std::sync::Mutex;

use devices::power::{PowerEvent, PowerEventSink};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::kvm::StopReason;
use crate::kvm::vcpu::{VcpuStop, VcpuStopSink};

/// How the VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmEnd {
    /// The guest raised a power event.
    Power(PowerEvent),
    /// A vCPU stopped.
    Vcpu(VcpuStop),
    /// The VMM got SIGINT or SIGTERM.
    Signal(i32),
}

impl VmEnd {
    /// The process exit code and a one-line description.
    pub fn exit_code_and_message(&self) -> (u8, String) {
        match self {
            VmEnd::Power(PowerEvent::PowerOff) => (0, "guest powered off".into()),
            VmEnd::Power(PowerEvent::Reset) => (0, "guest requested a reset; VM stopped".into()),
            VmEnd::Power(PowerEvent::DebugExit(0)) => (0, "guest reported success".into()),
            VmEnd::Power(PowerEvent::DebugExit(s)) => (
                3,
                format!("guest reported failure (debug-exit status {s:#x})"),
            ),
            VmEnd::Vcpu(stop) => match stop.reason {
                StopReason::SystemShutdown => (0, "guest shut down".into()),
                StopReason::SystemReset => (0, "guest requested a reset; VM stopped".into()),
                _ => {
                    let mut msg = format!("vCPU {}: {}", stop.vcpu, stop.reason);
                    if let Some(d) = &stop.detail {
                        msg.push_str(": ");
                        msg.push_str(d);
                    }
                    (1, msg)
                }
            },
            VmEnd::Signal(sig) => (0, format!("stopped by signal {sig}; VM shut down")),
        }
    }
}

/// Collects the first reason the VM ends and wakes the event loop.
#[derive(Debug)]
pub struct ExitMonitor {
    end: Mutex<Option<VmEnd>>,
    evt: EventFd,
}

impl ExitMonitor {
    /// A monitor with nothing recorded.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            end: Mutex::new(None),
            evt: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// Records `end` unless something ended the VM before.
    pub fn record(&self, end: VmEnd) {
        let mut slot = lock(&self.end);
        if slot.is_none() {
            *slot = Some(end);
            // The event loop polls this fd; a failed write means it is gone already.
            let _ = self.evt.write(1);
        }
    }

    /// What ended the VM, if anything has.
    pub fn take(&self) -> Option<VmEnd> {
        lock(&self.end).clone()
    }

    /// Readable once the VM has ended.
    pub fn event(&self) -> &EventFd {
        &self.evt
    }
}

impl PowerEventSink for ExitMonitor {
    fn power_event(&self, event: PowerEvent) {
        self.record(VmEnd::Power(event));
    }
}

impl VcpuStopSink for ExitMonitor {
    fn vcpu_stopped(&self, stop: VcpuStop) {
        self.record(VmEnd::Vcpu(stop));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        let stop = |reason| {
            VmEnd::Vcpu(VcpuStop {
                vcpu: 1,
                reason,
                detail: Some("rip=0x1".into()),
            })
        };
        assert_eq!(
            VmEnd::Power(PowerEvent::DebugExit(0))
                .exit_code_and_message()
                .0,
            0
        );
        assert_eq!(
            VmEnd::Power(PowerEvent::DebugExit(1))
                .exit_code_and_message()
                .0,
            3
        );
        assert_eq!(
            VmEnd::Power(PowerEvent::PowerOff).exit_code_and_message().0,
            0
        );
        assert_eq!(VmEnd::Power(PowerEvent::Reset).exit_code_and_message().0, 0);
        assert_eq!(VmEnd::Signal(libc::SIGINT).exit_code_and_message().0, 0);
        assert_eq!(
            stop(StopReason::SystemShutdown).exit_code_and_message().0,
            0
        );
        let (code, msg) = stop(StopReason::TripleFault).exit_code_and_message();
        assert_eq!(code, 1);
        assert_eq!(msg, "vCPU 1: triple fault (KVM_EXIT_SHUTDOWN): rip=0x1");
        assert_eq!(stop(StopReason::InternalError).exit_code_and_message().0, 1);
    }

    #[test]
    fn first_end_wins() {
        let m = ExitMonitor::new().unwrap();
        m.power_event(PowerEvent::DebugExit(0));
        m.power_event(PowerEvent::Reset);
        assert_eq!(m.take(), Some(VmEnd::Power(PowerEvent::DebugExit(0))));
        assert_eq!(m.evt.read().unwrap(), 1);
    }
}
