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

#[cfg(test)]
pub(crate) mod test_utils {
    use super::*;
    use std::sync::Mutex;

    /// A sink that records every event.
    #[derive(Debug, Default)]
    pub struct RecordingSink(Mutex<Vec<PowerEvent>>);

    impl RecordingSink {
        /// The events so far.
        pub fn events(&self) -> Vec<PowerEvent> {
            self.0.lock().unwrap().clone()
        }
    }

    impl PowerEventSink for RecordingSink {
        fn power_event(&self, event: PowerEvent) {
            self.0.lock().unwrap().push(event);
        }
    }
}
