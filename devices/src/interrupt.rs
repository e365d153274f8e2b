//! Interrupt lines as device models see them. The VMM backs a line with an eventfd that it
//! registers as a KVM irqfd; unit tests back it with a counter.

use std::io;
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

/// An edge-triggered interrupt line a device can raise.
pub trait InterruptLine: Send + Sync {
    /// Raises the line once.
    fn trigger(&self) -> io::Result<()>;
}

/// A line backed by an eventfd (a KVM irqfd in the VMM).
#[derive(Debug)]
pub struct EventFdLine(EventFd);

impl EventFdLine {
    /// Wraps `fd`; writes to it raise the interrupt.
    pub fn new(fd: EventFd) -> Self {
        Self(fd)
    }

    /// The eventfd, for registering it as an irqfd.
    pub fn eventfd(&self) -> &EventFd {
        &self.0
    }
}

impl InterruptLine for EventFdLine {
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Adapts any [`InterruptLine`] to vm-superio's `Trigger`.
#[derive(Clone)]
pub struct LineTrigger(pub Arc<dyn InterruptLine>);

impl std::fmt::Debug for LineTrigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LineTrigger")
    }
}

impl vm_superio::Trigger for LineTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.trigger()
    }
}

#[cfg(test)]
pub(crate) mod test_utils {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A line that counts how often it was raised.
    #[derive(Debug, Default)]
    pub struct CountingLine(pub AtomicUsize);

    impl CountingLine {
        pub fn count(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
    }

    impl InterruptLine for CountingLine {
        fn trigger(&self) -> io::Result<()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }
}

/// Places doorbells: a guest write to `addr` signals the eventfd without leaving the
/// kernel (the VMM: a KVM ioeventfd). Tests and VMMs without one simply do not provide it.
pub trait DoorbellRegistry: Send + Sync {
    /// Routes writes to `addr` (any length) to `evt`.
    fn register(&self, addr: u64, evt: &EventFd) -> io::Result<()>;
    /// Undoes [`DoorbellRegistry::register`].
    fn unregister(&self, addr: u64, evt: &EventFd) -> io::Result<()>;
}

/// Per-vector MSI routes: the VMM binds every MSI-X vector of a function to an irqfd whose
/// GSI route follows what the guest programs in the table, so raising a vector is one
/// eventfd write (from any thread, or from another process such as nicd).
pub trait MsiRoutes: Send + Sync {
    /// The guest programmed `vector` with this message.
    fn set_route(&self, vector: u16, address: u64, data: u32) -> io::Result<()>;
    /// Raises `vector` through its route.
    fn trigger(&self, vector: u16) -> io::Result<()>;
}

/// Makes the per-vector routes of a new function (the VMM: irqfds on fresh GSIs), so code
/// that builds devices needs no KVM and runs in unit tests.
pub trait MsiRouteFactory: Send + Sync {
    /// Routes for `vectors` vectors.
    fn routes(&self, vectors: u16) -> io::Result<Arc<dyn MsiRoutes>>;
}

/// How an MSI-X function delivers its vectors.
#[derive(Clone)]
pub enum MsixDelivery {
    /// Inject each message as it is sent (KVM_SIGNAL_MSI).
    Signal(Arc<dyn MsiSink>),
    /// Through per-vector routes (irqfds).
    Routed(Arc<dyn MsiRoutes>),
}

impl std::fmt::Debug for MsixDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MsixDelivery::Signal(_) => "Signal",
            MsixDelivery::Routed(_) => "Routed",
        })
    }
}

/// Delivers message-signalled interrupts (the VMM: KVM_SIGNAL_MSI or an irqfd route).
pub trait MsiSink: Send + Sync {
    /// Sends one MSI with the address and data the guest programmed.
    fn send_msi(&self, address: u64, data: u32) -> io::Result<()>;
}

#[cfg(test)]
pub(crate) mod msi_test_utils {
    use super::*;
    use std::sync::Mutex;

    /// Records every MSI.
    #[derive(Debug, Default)]
    pub struct RecordingMsi(pub Mutex<Vec<(u64, u32)>>);

    impl RecordingMsi {
        pub fn count(&self) -> usize {
            self.0.lock().unwrap().len()
        }
    }

    impl MsiSink for RecordingMsi {
        fn send_msi(&self, address: u64, data: u32) -> io::Result<()> {
            self.0.lock().unwrap().push((address, data));
            Ok(())
        }
    }
}
