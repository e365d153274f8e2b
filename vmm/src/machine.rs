//! One microVM from configuration to exit: memory, KVM, boot images, ACPI, devices, vCPU
//! threads, the event loop (API socket, console input, signals) and the final outcome.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use devices::power::{PowerEvent, PowerEventSink};
use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use linux_loader::cmdline::Cmdline;
use vm_memory::GuestAddress;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::acpi::{self, AcpiConfig, PciAcpi, Viot};
use crate::api::{ApiError, ApiHandler, ApiServer, Reply, Request, Response, VmStatus};
use crate::boot::cpuid::CpuTemplate;
use crate::boot::params::{BootInfo, build_boot_params, write_boot_params};
use crate::boot::{self, BootError, regs};
use crate::config::{ConfigError, KernelSource, MAX_CMDLINE_LEN, VmConfig};
use crate::console::{StdinForwarder, Stdout, TerminalMode};
use crate::device_manager::{DeviceError, DeviceManager};
use crate::hotplug::{PciHotplug, SharedHotplug};
use crate::kvm::vcpu::{VcpuContext, VcpuStop, VcpuStopSink, install_kick_handler};
use crate::kvm::{KvmError, StopReason, VcpuEvent, VcpuHandle, Vm};
use crate::memory::{GuestRam, MemoryError, layout};
use crate::pci_resources::PciPlan;

/// Everything that can stop a VM from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Bad kernel, initrd or sizes.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// KVM.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// Devices.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// ACPI tables.
    #[error("cannot build the ACPI tables")]
    Acpi(#[source] acpi::AcpiError),
    /// PCI bus numbers or windows.
    #[error("cannot lay out the PCI hierarchy")]
    PciResources(#[from] crate::pci_resources::ResourceError),
    /// The API socket.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The event loop or a thread.
    #[error("VMM runtime failure: {0}")]
    Runtime(String),
}

impl VmmError {
    /// Whether the user's input caused it (exit code 2) rather than the host or a bug.
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            VmmError::Config(_)
                | VmmError::Boot(_)
                | VmmError::Api(ApiError::PathInUse(_) | ApiError::Bind(..))
                | VmmError::Kvm(KvmError::TooManyVcpus(..))
                | VmmError::Device(DeviceError::Hotplug(..))
        )
    }
}

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
    pub fn exit_code_and_message(&self) -> (i32, String) {
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
    fn new() -> Result<Self, VmmError> {
        Ok(Self {
            end: Mutex::new(None),
            evt: EventFd::new(EFD_NONBLOCK)
                .map_err(|e| VmmError::Runtime(format!("eventfd: {e}")))?,
        })
    }

    fn record(&self, end: VmEnd) {
        let mut slot = self.end.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(end);
            // The event loop polls this fd; a failed write means it is gone already.
            let _ = self.evt.write(1);
        }
    }

    fn take(&self) -> Option<VmEnd> {
        self.end.lock().unwrap_or_else(|e| e.into_inner()).clone()
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
        for fd in [&self.monitor.evt, &self.signal_evt] {
            if let Err(e) = ops.add(Events::new(fd, EventSet::IN)) {
                log::error!("cannot watch a control eventfd: {e:?}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() == std::os::fd::AsRawFd::as_raw_fd(&self.signal_evt) {
            let _ = self.signal_evt.read();
            self.monitor
                .record(VmEnd::Signal(LAST_SIGNAL.load(Ordering::SeqCst)));
        } else {
            let _ = self.monitor.evt.read();
        }
        self.done.store(true, Ordering::SeqCst);
    }
}

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

struct StatusSource {
    /// The vCPU threads (filled once they exist).
    handles: Arc<Mutex<Vec<VcpuHandle>>>,
    vcpus: u8,
    memory: u64,
    template: CpuTemplate,
    kernel: String,
    started: Instant,
}

/// The VM as the API sees it.
struct VmApi {
    status: StatusSource,
    hotplug: SharedHotplug,
    next_ticket: u64,
}

impl VmApi {
    fn hotplug(&self) -> std::sync::MutexGuard<'_, PciHotplug> {
        self.hotplug.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ApiHandler for VmApi {
    fn status(&self) -> VmStatus {
        self.status.status()
    }

    fn handle(&mut self, request: Request) -> Reply {
        let r = match request {
            Request::Status => Response::status(self.status.status()),
            Request::Pause | Request::Resume => {
                let pause = matches!(request, Request::Pause);
                let handles = self
                    .status
                    .handles
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let event = if pause {
                    VcpuEvent::Pause
                } else {
                    VcpuEvent::Resume
                };
                let refused = handles.iter().find_map(|v| v.request(event).err());
                let parked = !pause
                    || handles
                        .iter()
                        .all(|v| v.wait_parked(std::time::Duration::from_secs(5)));
                drop(handles);
                match (refused, parked) {
                    (Some(e), _) => Response::error(e.to_string()),
                    (None, false) => Response::error("vCPUs did not stop within 5 s"),
                    (None, true) => Response::status(self.status.status()),
                }
            }
            Request::DeviceList => Response::slots(self.hotplug().list()),
            Request::DeviceAdd { net, port } => match self.hotplug().add_spec(net, port) {
                Ok(info) => Response::device(info),
                Err(e) => Response::error(e.to_string()),
            },
            Request::DeviceRemove { id, surprise } => {
                self.next_ticket += 1;
                let ticket = self.next_ticket;
                match self.hotplug().remove(&id, surprise, ticket) {
                    Ok(Some(info)) => Response::device(info),
                    Ok(None) => return Reply::Later(ticket),
                    Err(e) => Response::error(e.to_string()),
                }
            }
        };
        Reply::Now(Box::new(r))
    }

    fn completion_fd(&self) -> Option<i32> {
        Some(std::os::fd::AsRawFd::as_raw_fd(self.hotplug().event_fd()))
    }

    fn completed(&mut self) -> Vec<(u64, Response)> {
        self.hotplug().poll()
    }
}

impl StatusSource {
    fn status(&self) -> VmStatus {
        let paused = self
            .handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|v| v.state() == crate::kvm::VcpuState::Paused);
        VmStatus {
            state: if paused { "paused" } else { "running" }.into(),
            vcpus: self.vcpus,
            memory_bytes: self.memory,
            cpu_template: self.template.to_string(),
            kernel: self.kernel.clone(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
        }
    }
}

type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Loads kernel, initrd, command line, boot tables, ACPI and the zero page; returns the
/// entry point.
fn load_guest(config: &VmConfig, ram: &GuestRam, plan: &PciPlan) -> Result<GuestAddress, VmmError> {
    let mem = ram.memory();
    let kernel = boot::load_kernel(mem, config.kernel.path())?;
    let initrd = config
        .initrd
        .as_deref()
        .map(|p| boot::load_initrd(mem, p, &kernel, ram.size()))
        .transpose()?;
    let mut cmdline = Cmdline::new(MAX_CMDLINE_LEN).map_err(BootError::Cmdline)?;
    if !config.cmdline.is_empty() {
        cmdline
            .insert_str(&config.cmdline)
            .map_err(BootError::Cmdline)?;
    }
    linux_loader::loader::load_cmdline(mem, GuestAddress(layout::CMDLINE_START), &cmdline)
        .map_err(BootError::CmdlineWrite)?;
    regs::write_boot_tables(mem)?;
    let tables = acpi::create_acpi_tables(
        mem,
        &AcpiConfig {
            num_vcpus: config.vcpus,
            lapic_addr: layout::LAPIC_START as u32,
            ioapic_addr: layout::IOAPIC_START as u32,
            ioapic_id: 0,
            pm_io_base: devices::legacy::acpi_pm::PM_IO_BASE,
            rsdp_addr: GuestAddress(layout::RSDP_START),
            tables_end: GuestAddress(layout::ACPI_END),
            pci: Some(PciAcpi {
                ecam_base: layout::ECAM_START,
                last_bus: layout::ECAM_LAST_BUS,
                mem32: (
                    layout::PCI_MMIO32_START as u32,
                    (layout::PCI_MMIO32_END - 1) as u32,
                ),
                mem64: (layout::PCI_MMIO64_START, layout::PCI_MMIO64_END - 1),
            }),
            viot: plan
                .port_buses()
                .filter(|_| config.iommu)
                .map(|buses| Viot {
                    iommu_device: crate::device_manager::IOMMU_DEVICE,
                    buses,
                }),
        },
    )
    .map_err(VmmError::Acpi)?;
    let e820 = layout::e820_map(ram.size());
    let params = build_boot_params(&BootInfo {
        kernel: &kernel,
        cmdline_len: config.cmdline.len(),
        initrd,
        e820: &e820,
        rsdp: tables.rsdp,
    });
    write_boot_params(mem, &params)?;
    Ok(kernel.entry)
}

/// Boots `config` and runs it to the end.
pub fn run(config: &VmConfig) -> Result<RunOutcome, VmmError> {
    let started = Instant::now();
    let template = config.cpu_template.unwrap_or_else(CpuTemplate::for_host);
    if let KernelSource::DefaultImage(path) = &config.kernel {
        eprintln!(
            "vmm: no --kernel given: booting the default test guest {} with `{}`",
            path.display(),
            config.cmdline
        );
        if !path.exists() {
            return Err(BootError::KernelFile {
                path: path.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "not built yet: run guest-images/build.sh testguest",
                ),
            }
            .into());
        }
    }
    let ram = GuestRam::new(config.memory)?;
    let plan = PciPlan::new(config.pcie_root_ports)?;
    let entry = load_guest(config, &ram, &plan)?;
    let vm = Vm::new(config.vcpus)?;
    vm.register_memory(ram.memory())?;

    let monitor = Arc::new(ExitMonitor::new()?);
    let devices = DeviceManager::new(
        &vm,
        monitor.clone(),
        Box::new(Stdout::new()),
        &plan,
        ram.memory(),
        &config.net,
        config.iommu,
    )?;

    let mut em = EventManager::<Subscriber>::new()
        .map_err(|e| VmmError::Runtime(format!("event manager: {e:?}")))?;
    let done = Arc::new(AtomicBool::new(false));
    let signal_evt =
        EventFd::new(EFD_NONBLOCK).map_err(|e| VmmError::Runtime(format!("eventfd: {e}")))?;
    SIGNAL_EVENT_FD.store(
        std::os::fd::AsRawFd::as_raw_fd(&signal_evt),
        Ordering::SeqCst,
    );
    for sig in [libc::SIGINT, libc::SIGTERM] {
        vmm_sys_util::signal::register_signal_handler(sig, on_stop_signal)
            .map_err(|e| VmmError::Runtime(format!("signal handler: {e}")))?;
    }
    em.add_subscriber(Arc::new(Mutex::new(Control {
        monitor: monitor.clone(),
        signal_evt,
        done: done.clone(),
    })));
    let vcpu_handles: Arc<Mutex<Vec<VcpuHandle>>> = Arc::new(Mutex::new(Vec::new()));
    if let Some(path) = &config.api_socket {
        let server = ApiServer::bind(
            path,
            Box::new(VmApi {
                status: StatusSource {
                    handles: vcpu_handles.clone(),
                    vcpus: config.vcpus,
                    memory: config.memory,
                    template,
                    kernel: config.kernel.path().display().to_string(),
                    started,
                },
                hotplug: devices.hotplug.clone(),
                next_ticket: 0,
            }),
        )?;
        em.add_subscriber(Arc::new(Mutex::new(server)));
    }
    let stdin = StdinForwarder::new(devices.serial.clone())
        .map_err(|e| VmmError::Runtime(format!("console input: {e}")))?;
    em.add_subscriber(Arc::new(Mutex::new(stdin)));

    install_kick_handler().map_err(|e| VmmError::Runtime(format!("kick handler: {e}")))?;
    let mut vcpus = Vec::with_capacity(usize::from(config.vcpus));
    for id in 0..config.vcpus {
        let fd = vm.create_vcpu(id, config.vcpus, template, entry)?;
        let handle = VcpuHandle::spawn(VcpuContext {
            fd,
            id,
            bus: devices.bus.clone(),
            mem: ram.memory().clone(),
            stop_sink: monitor.clone(),
        })
        .map_err(|e| VmmError::Runtime(format!("cannot spawn vCPU thread: {e}")))?;
        vcpus.push(handle);
    }
    log::info!(
        "booting {} with {} vCPUs, {} bytes, CPU template {template}",
        config.kernel.path().display(),
        config.vcpus,
        config.memory
    );
    let _terminal = TerminalMode::enter();
    for v in &vcpus {
        v.request(VcpuEvent::Start)
            .map_err(|e| VmmError::Runtime(e.to_string()))?;
    }
    *vcpu_handles.lock().unwrap_or_else(|e| e.into_inner()) = vcpus;
    while !done.load(Ordering::SeqCst) {
        em.run()
            .map_err(|e| VmmError::Runtime(format!("event loop: {e:?}")))?;
    }
    for v in vcpu_handles
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter_mut()
    {
        v.exit_and_join();
    }
    SIGNAL_EVENT_FD.store(-1, Ordering::SeqCst);
    devices
        .serial
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .flush();
    let end = monitor
        .take()
        .ok_or_else(|| VmmError::Runtime("event loop ended without a reason".into()))?;
    // Tear down in the order that costs least: devices without undoing their KVM
    // registrations, then the VM (its fd takes irqfds, routes and memory slots at once),
    // and guest RAM last, when no KVM MMU notifier has to walk it any more.
    drop(em);
    devices.release_with_vm();
    drop(vm);
    Ok(RunOutcome {
        end,
        guest_ram: ram.into_memfd(),
    })
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
