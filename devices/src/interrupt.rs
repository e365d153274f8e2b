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

    /// Routes for `vectors` vectors raised outside the VMM, all disconnected at first.
    fn external(&self, vectors: u16) -> io::Result<Arc<dyn ExternalVectors>>;
}

/// The MSI-X vectors of a function that raises them itself, outside the VMM (a vfio-user
/// device in another process writes each vector's eventfd). The VMM emulates the table: it
/// routes each eventfd as the guest programs the entry, and connects it only while the
/// vector may be delivered (MSI-X on, function and vector unmasked). A vector raised while
/// disconnected stays counted in its eventfd: it is the vector's pending bit, and it is
/// delivered when the vector is connected again.
pub trait ExternalVectors: Send + Sync {
    /// Number of vectors.
    fn vectors(&self) -> u16;
    /// The eventfd the device raises `vector` with (to hand to it).
    fn eventfd(&self, vector: u16) -> Option<&EventFd>;
    /// The guest programmed `vector` with this message.
    fn set_route(&self, vector: u16, address: u64, data: u32) -> io::Result<()>;
    /// Connects (`false`) or disconnects (`true`) the vector's eventfd from its route.
    fn set_masked(&self, vector: u16, masked: bool) -> io::Result<()>;
    /// Whether the vector was raised and not delivered (its eventfd is readable).
    fn is_pending(&self, vector: u16) -> bool;
}

/// How an MSI-X function delivers its vectors.
#[derive(Clone)]
pub enum MsixDelivery {
    /// Inject each message as it is sent (KVM_SIGNAL_MSI).
    Signal(Arc<dyn MsiSink>),
    /// Through per-vector routes (irqfds).
    Routed(Arc<dyn MsiRoutes>),
    /// Raised outside the VMM, through eventfds the VMM connects to routes.
    External(Arc<dyn ExternalVectors>),
}

impl std::fmt::Debug for MsixDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MsixDelivery::Signal(_) => "Signal",
            MsixDelivery::Routed(_) => "Routed",
            MsixDelivery::External(_) => "External",
        })
    }
}

/// Delivers message-signalled interrupts (the VMM: KVM_SIGNAL_MSI or an irqfd route).
pub trait MsiSink: Send + Sync {
    /// Sends one MSI with the address and data the guest programmed.
    fn send_msi(&self, address: u64, data: u32) -> io::Result<()>;
}

#[cfg(any(test, feature = "test-utils"))]
#[allow(missing_docs, clippy::missing_panics_doc)]
pub mod msi_test_utils {
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

    /// Vectors raised outside the VMM, as KVM treats them: a connected vector's eventfd
    /// is consumed and logged as delivered at once, a disconnected one keeps its count
    /// (pending) until connected. Also logs routes and (dis)connections.
    #[derive(Debug)]
    pub struct FakeExternal {
        pub fds: Vec<EventFd>,
        pub connected: Mutex<Vec<bool>>,
        pub log: Mutex<Vec<String>>,
    }

    impl FakeExternal {
        pub fn new(n: u16) -> Self {
            Self {
                fds: (0..n)
                    .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
                    .collect(),
                connected: Mutex::new(vec![false; usize::from(n)]),
                log: Mutex::default(),
            }
        }

        /// The device raises `v`.
        pub fn raise(&self, v: u16) {
            self.fds[usize::from(v)].write(1).unwrap();
            if self.connected.lock().unwrap()[usize::from(v)] {
                self.consume(v);
            }
        }

        fn consume(&self, v: u16) {
            if self.fds[usize::from(v)].read().is_ok() {
                self.log.lock().unwrap().push(format!("deliver {v}"));
            }
        }

        /// What happened since the last call.
        pub fn take_log(&self) -> Vec<String> {
            std::mem::take(&mut *self.log.lock().unwrap())
        }
    }

    impl ExternalVectors for FakeExternal {
        fn vectors(&self) -> u16 {
            u16::try_from(self.fds.len()).unwrap()
        }
        fn eventfd(&self, vector: u16) -> Option<&EventFd> {
            self.fds.get(usize::from(vector))
        }
        fn set_route(&self, vector: u16, address: u64, data: u32) -> io::Result<()> {
            self.log
                .lock()
                .unwrap()
                .push(format!("route {vector} {address:#x} {data:#x}"));
            Ok(())
        }
        fn set_masked(&self, vector: u16, masked: bool) -> io::Result<()> {
            let v = usize::from(vector);
            if v >= self.fds.len() {
                return Err(io::Error::other("vector out of range"));
            }
            self.connected.lock().unwrap()[v] = !masked;
            let what = if masked { "disconnect" } else { "connect" };
            self.log.lock().unwrap().push(format!("{what} {v}"));
            if !masked {
                self.consume(vector);
            }
            Ok(())
        }
        fn is_pending(&self, vector: u16) -> bool {
            let fd = &self.fds[usize::from(vector)];
            // Peek: read the count and put it back.
            match fd.read() {
                Ok(n) => {
                    fd.write(n).unwrap();
                    true
                }
                Err(_) => false,
            }
        }
    }

    /// A route factory of fakes: in-process routes are not expected.
    #[derive(Debug, Default)]
    pub struct FakeRouteFactory(pub Mutex<Vec<Arc<FakeExternal>>>);

    impl MsiRouteFactory for FakeRouteFactory {
        fn routes(&self, _vectors: u16) -> io::Result<Arc<dyn MsiRoutes>> {
            Err(io::Error::other("no in-process routes here"))
        }
        fn external(&self, vectors: u16) -> io::Result<Arc<dyn ExternalVectors>> {
            let f = Arc::new(FakeExternal::new(vectors));
            self.0.lock().unwrap().push(f.clone());
            Ok(f)
        }
    }

    impl MsiSink for RecordingMsi {
        fn send_msi(&self, address: u64, data: u32) -> io::Result<()> {
            self.0.lock().unwrap().push((address, data));
            Ok(())
        }
    }
}
