//! One microVM. [`Vmm`] owns guest memory, the KVM VM, the devices and the vCPU threads, and
//! moves through a validated lifecycle ([`VmState`]); `builder` makes one for a fresh boot
//! (a restore will make one from saved state, with plain vCPUs); `run` drives it from the
//! command line: event loop, API, signals, exit.

mod api;
mod builder;
mod exit;
mod failover;
mod run;

use std::sync::Arc;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

use crate::acpi;
use crate::api::ApiError;
use crate::boot::BootError;
use crate::boot::cpuid::CpuTemplate;
use crate::config::{ConfigError, VmConfig};
use crate::device_manager::{DeviceError, DeviceManager};
use crate::kvm::vcpu::StateRequestError;
use crate::kvm::{CpuState, KvmError, VcpuEvent, VcpuHandle, Vm};
use crate::memory::{GuestRam, MemoryError};

pub use builder::build_for_boot;
pub use exit::{ExitMonitor, VmEnd};
pub use run::{RunOutcome, run};

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
    /// A lifecycle step that does not apply now.
    #[error(transparent)]
    State(#[from] VmStateError),
    /// A vCPU refused a request.
    #[error("vCPU {0}")]
    Vcpu(u8, #[source] crate::kvm::vcpu::InvalidTransition),
    /// A vCPU's state could not be saved or restored.
    #[error(transparent)]
    VcpuState(#[from] StateRequestError),
    /// A thread, eventfd, signal handler or the event loop could not be set up.
    #[error("cannot set up {0}")]
    Runtime(&'static str, #[source] std::io::Error),
    /// The event loop failed.
    #[error("the event loop failed: {0:?}")]
    EventLoop(event_manager::Error),
}

impl VmmError {
    /// Whether the user's input caused it (exit code 2) rather than the host or a bug.
    pub fn is_user_error(&self) -> bool {
        match self {
            VmmError::Config(_) | VmmError::Boot(_) => true,
            VmmError::Api(ApiError::PathInUse(_) | ApiError::Bind(..)) => true,
            VmmError::Kvm(KvmError::TooManyVcpus(..)) => true,
            VmmError::Device(e) => e.is_user_error(),
            _ => false,
        }
    }
}

/// Where a VM is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmState {
    /// Built, no vCPU has run.
    Created,
    /// vCPUs run guest code.
    Running,
    /// vCPUs and devices are stopped; guest memory and device state hold still.
    Paused,
    /// On the way out; nothing runs again.
    ShuttingDown,
}

/// A lifecycle step that does not apply in the current state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the VM cannot go from {from} to {to}")]
pub struct VmStateError {
    /// Where it is.
    pub from: VmState,
    /// Where it was asked to go.
    pub to: VmState,
}

impl VmState {
    /// Whether the VM may go from `self` to `to`.
    pub fn valid_transition(self, to: VmState) -> Result<(), VmStateError> {
        use VmState::*;
        match (self, to) {
            (Created, Running)
            | (Running, Paused)
            | (Paused, Running)
            | (Created | Running | Paused, ShuttingDown) => Ok(()),
            _ => Err(VmStateError { from: self, to }),
        }
    }
}

impl std::fmt::Display for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            VmState::Created => "created",
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::ShuttingDown => "shutting-down",
        })
    }
}

/// A microVM. Field order is drop order: vCPU threads end first, then devices, the VM and
/// guest memory (see [`Vmm::shutdown`] for the cheaper orderly path).
#[derive(Debug)]
pub struct Vmm {
    vcpus: Vec<VcpuHandle>,
    devices: DeviceManager,
    vm: Vm,
    ram: GuestRam,
    state: VmState,
    config: VmConfig,
    template: CpuTemplate,
    monitor: Arc<ExitMonitor>,
    /// Written when a vCPU parks.
    parked: Arc<EventFd>,
    started: Instant,
}

impl Vmm {
    /// Where the VM is in its life.
    pub fn state(&self) -> VmState {
        self.state
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    /// The CPU template in use.
    pub fn template(&self) -> CpuTemplate {
        self.template
    }

    /// How long since it was built.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The devices.
    pub fn devices(&self) -> &DeviceManager {
        &self.devices
    }

    /// The devices, to add or remove some.
    pub fn devices_mut(&mut self) -> &mut DeviceManager {
        &mut self.devices
    }

    /// Guest memory.
    pub fn ram(&self) -> &GuestRam {
        &self.ram
    }

    /// The eventfd written each time a vCPU parks.
    pub fn parked_event(&self) -> &Arc<EventFd> {
        &self.parked
    }

    /// The first reason the VM ended, once there is one.
    pub fn monitor(&self) -> &Arc<ExitMonitor> {
        &self.monitor
    }

    fn go(&mut self, to: VmState) -> Result<(), VmmError> {
        self.state.valid_transition(to)?;
        self.state = to;
        Ok(())
    }

    fn request_all(&self, event: VcpuEvent) -> Result<(), VmmError> {
        for v in &self.vcpus {
            v.request(event).map_err(|e| VmmError::Vcpu(v.id(), e))?;
        }
        Ok(())
    }

    /// Starts the vCPUs.
    pub fn start(&mut self) -> Result<(), VmmError> {
        self.go(VmState::Running)?;
        self.request_all(VcpuEvent::Start)
    }

    /// Asks every vCPU to stop running guest code, then every device to stop touching
    /// guest memory. Returns at once; [`Vmm::all_parked`] tells when they all have (vCPUs
    /// write [`Vmm::parked_event`] as they park).
    pub fn pause(&mut self) -> Result<(), VmmError> {
        self.go(VmState::Paused)?;
        self.request_all(VcpuEvent::Pause)?;
        self.devices.pause();
        Ok(())
    }

    /// Runs the devices, then the vCPUs, again.
    pub fn resume(&mut self) -> Result<(), VmmError> {
        self.go(VmState::Running)?;
        self.devices.resume();
        self.request_all(VcpuEvent::Resume)
    }

    /// Whether every vCPU is outside KVM_RUN and every device holds still.
    pub fn all_parked(&self) -> bool {
        self.vcpus.iter().all(VcpuHandle::is_parked) && self.devices.all_paused()
    }

    /// The state of every vCPU, saved by its own thread (the VM must be paused and parked).
    pub fn save_vcpus(&self, timeout: Duration) -> Result<Vec<CpuState>, VmmError> {
        self.vcpus
            .iter()
            .map(|v| v.save_state(timeout).map_err(VmmError::from))
            .collect()
    }

    /// Ends the VM: the vCPU threads stop, the devices are released without undoing their
    /// KVM registrations one by one, the VM's fd closes (taking irqfds, routes and memory
    /// slots at once) and guest memory is unmapped last, when no KVM MMU notifier has to
    /// walk it. Returns the guest memory's memfd, for figures taken afterwards.
    pub fn shutdown(mut self) -> std::fs::File {
        self.state = VmState::ShuttingDown;
        for v in &mut self.vcpus {
            v.exit_and_join();
        }
        let Vmm {
            vcpus,
            devices,
            vm,
            ram,
            ..
        } = self;
        drop(vcpus);
        devices.release_with_vm();
        if !vm.is_last_holder() {
            // Still correct, only slower: unmapping guest memory under a live VM walks
            // KVM's reverse maps page by page.
            devices::warn_ratelimited!("VM fd still shared at teardown");
        }
        drop(vm);
        ram.into_memfd()
    }
}

#[cfg(test)]
mod tests;
