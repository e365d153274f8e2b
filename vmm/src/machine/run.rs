//! `vmm run`: builds the VM, serves its event loop (API socket, console input, signals,
//! slot events) until the VM ends, then shuts it down.

use devices::sync::lock;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::api::VmApi;
use super::{ExitMonitor, VmEnd, VmmError, build_for_boot};
use crate::api::ApiServer;
use crate::config::VmConfig;
use crate::console::{StdinForwarder, Stdout, TerminalMode};
use crate::device_manager::pci::SlotEvents;
use crate::kvm::vcpu::install_kick_handler;

/// What `vmm run` reports at exit.
#[derive(Debug)]
pub struct RunOutcome {
    /// How the VM ended.
    pub end: VmEnd,
    /// The guest RAM's memfd (unmapped), for the figures `--exit-stats` asks for.
    guest_ram: std::fs::File,
}

impl RunOutcome {
    /// Guest RAM the guest or the VMM touched, in bytes (one fstat; only asked for by
    /// `--exit-stats`).
    pub fn guest_touched_bytes(&self) -> std::io::Result<u64> {
        crate::memory::ram::touched_bytes(&self.guest_ram)
    }
}

/// SIGINT/SIGTERM land here: the handler writes the eventfd (async-signal-safe).
static SIGNAL_EVENT_FD: AtomicI32 = AtomicI32::new(-1);
static LAST_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_stop_signal(sig: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    LAST_SIGNAL.store(sig, Ordering::SeqCst);
    let fd = SIGNAL_EVENT_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one = 1u64.to_ne_bytes();
        // SAFETY: write(2) is async-signal-safe; `one` is 8 valid bytes; a bad fd only
        // yields an error.
        unsafe { libc::write(fd, one.as_ptr().cast(), one.len()) };
    }
}

/// Watches the exit monitor and the signal eventfd; sets `done`.
struct Control {
    monitor: Arc<ExitMonitor>,
    signal_evt: EventFd,
    done: Arc<AtomicBool>,
}

impl MutEventSubscriber for Control {
    fn init(&mut self, ops: &mut EventOps) {
        for fd in [self.monitor.event(), &self.signal_evt] {
            if let Err(e) = ops.add(Events::new(fd, EventSet::IN)) {
                devices::warn_ratelimited!("cannot watch a control eventfd: {e:?}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() == std::os::fd::AsRawFd::as_raw_fd(&self.signal_evt) {
            let _ = self.signal_evt.read();
            self.monitor
                .record(VmEnd::Signal(LAST_SIGNAL.load(Ordering::SeqCst)));
        } else {
            let _ = self.monitor.event().read();
        }
        self.done.store(true, Ordering::SeqCst);
    }
}

type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Boots `config` and runs it to the end.
pub fn run(config: &VmConfig) -> Result<RunOutcome, VmmError> {
    let vmm = build_for_boot(config, Box::new(Stdout::new()))?;
    let monitor = vmm.monitor().clone();
    let serial = vmm.devices().serial.clone();
    let slots = vmm.devices().slots.clone();
    let vmm = Arc::new(Mutex::new(vmm));

    let mut em = EventManager::<Subscriber>::new().map_err(VmmError::EventLoop)?;
    let done = Arc::new(AtomicBool::new(false));
    let signal_evt = EventFd::new(EFD_NONBLOCK).map_err(|e| VmmError::Runtime("an eventfd", e))?;
    SIGNAL_EVENT_FD.store(
        std::os::fd::AsRawFd::as_raw_fd(&signal_evt),
        Ordering::SeqCst,
    );
    for sig in [libc::SIGINT, libc::SIGTERM] {
        vmm_sys_util::signal::register_signal_handler(sig, on_stop_signal).map_err(|e| {
            VmmError::Runtime(
                "the signal handlers",
                std::io::Error::from_raw_os_error(e.errno()),
            )
        })?;
    }
    em.add_subscriber(Arc::new(Mutex::new(Control {
        monitor: monitor.clone(),
        signal_evt,
        done: done.clone(),
    })));
    em.add_subscriber(Arc::new(Mutex::new(SlotEvents::new(slots))));
    em.add_subscriber(Arc::new(Mutex::new(super::failover::Reattacher::new(
        vmm.clone(),
    ))));
    if let Some(path) = &config.api_socket {
        let server = ApiServer::bind(path, VmApi::new(vmm.clone()))?;
        em.add_subscriber(Arc::new(Mutex::new(server)));
    }
    let stdin =
        StdinForwarder::new(serial.clone()).map_err(|e| VmmError::Runtime("console input", e))?;
    em.add_subscriber(Arc::new(Mutex::new(stdin)));

    install_kick_handler().map_err(|e| VmmError::Runtime("the vCPU kick handler", e))?;
    devices::info_ratelimited!(
        "booting {} with {} vCPUs, {} bytes, CPU template {}",
        config.kernel.path().display(),
        config.vcpus,
        config.memory,
        lock(&vmm).template()
    );
    let terminal = TerminalMode::enter();
    lock(&vmm).start()?;
    while !done.load(Ordering::SeqCst) {
        em.run().map_err(VmmError::EventLoop)?;
    }
    SIGNAL_EVENT_FD.store(-1, Ordering::SeqCst);
    // The subscribers hold the VM too: dropping them leaves this the only reference.
    drop(em);
    lock(&serial).flush();
    // The console reaches the VM's fd through its interrupt line: let go of it before the
    // teardown, which closes that fd before unmapping guest memory.
    drop(serial);
    drop(terminal);
    let end = monitor.take().unwrap_or(VmEnd::Signal(0));
    let vmm = Arc::try_unwrap(vmm)
        .map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()))
        .map_err(|_| {
            VmmError::Runtime(
                "the VM's teardown",
                std::io::Error::other("the VM is still shared"),
            )
        })?;
    Ok(RunOutcome {
        end,
        guest_ram: vmm.shutdown(),
    })
}
