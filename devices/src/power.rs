//! VM-level events that devices raise on the guest's behalf: reset, power-off, and the
//! status the test guest reports through the debug-exit port.

/// Why the guest asked the VM to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerEvent {
    /// Reset (i8042 pulse, ACPI reset register). This VMM ends the VM on reset.
    Reset,
    /// ACPI S5 soft-off.
    PowerOff,
    /// A status written to the debug-exit port: 0 means success.
    DebugExit(u32),
}

/// Receives [`PowerEvent`]s; the VMM implements it to stop the vCPUs and exit.
pub trait PowerEventSink: Send + Sync {
    /// Records the event and wakes whoever ends the VM. The first event wins.
    fn power_event(&self, event: PowerEvent);
}
