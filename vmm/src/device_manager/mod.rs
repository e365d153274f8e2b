//! The devices of a microVM and the bus that dispatches vCPU exits to them. A thin facade
//! over its parts: `legacy` (IOAPIC, console, i8042, ACPI PM, debug exit), `pci` (the root
//! complex's slots: what card is where, hot-add and removal) and `virtio` (factories for
//! the virtio devices). Device models live in the `devices` crate; this module wires them
//! to KVM (irqfds, ioeventfds) and to the I/O address space.

pub mod legacy;
pub mod pci;
pub mod synthetic;
pub mod vf;
pub mod virtio;

use devices::GuestMemory;
use devices::sync::lock;
use std::sync::{Arc, Mutex};

use devices::legacy::{Ioapic, SerialDevice};
use devices::pci::io::{ConfigPorts, EcamWindow, MemoryWindow};
use devices::pci::root_complex::CONFIG_ADDRESS_PORT;
use devices::pci::{EcamLayout, PciRoot, RootComplex, RootPort};
use devices::power::PowerEventSink;
use iommu::RequesterId;
use vm_device::bus::{MmioAddress, MmioRange, PioAddress};
use vm_device::device_manager::{IoManager, MmioManager, PioManager};

use crate::config::{NetConfig, VfSpec, VmConfig};
use crate::kvm::irq_routing::{GsiRouter, KvmIoapicPins, KvmRouteFactory};
use crate::kvm::{IoBus, Vm};
use crate::memory::layout;
use crate::pci_resources::PciPlan;
use legacy::{Legacy, pio_range};
use pci::{PciSlots, SharedSlots, SlotDevice, SlotError};
use vf::{VfDma, VfError};
use virtio::{VirtioError, VirtioFactory};

/// Errors wiring devices.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// KVM's interrupt routing could not be set up.
    #[error("cannot set up interrupt routing")]
    Routing(#[source] std::io::Error),
    /// Two devices claim the same addresses.
    #[error("cannot register a device on the I/O bus")]
    Bus(#[source] vm_device::bus::Error),
    /// A virtio device cannot be built.
    #[error(transparent)]
    Virtio(#[from] VirtioError),
    /// A card cannot go where it was asked to.
    #[error(transparent)]
    Slot(#[from] SlotError),
    /// The virtio-iommu cannot sit on bus 0.
    #[error("cannot put the virtio-iommu on bus 0")]
    Iommu(#[source] devices::pci::PlugError),
    /// A VF cannot be assigned.
    #[error(transparent)]
    Vf(#[from] VfError),
}

impl DeviceError {
    /// Whether the user's request or configuration is at fault (a backend that cannot be
    /// opened, a slot that does not exist or is taken) rather than the host or a bug.
    pub fn is_user_error(&self) -> bool {
        match self {
            DeviceError::Virtio(VirtioError::Backend(..) | VirtioError::Synthetic(..)) => true,
            DeviceError::Vf(VfError::Connect { .. } | VfError::Card { .. }) => true,
            DeviceError::Slot(e) => !matches!(e, SlotError::Setup(_)),
            _ => false,
        }
    }
}

/// The I/O address space as vCPUs see it, and the IOAPIC that takes their EOIs.
pub struct Bus {
    io: IoManager,
    ioapic: Arc<Mutex<Ioapic>>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bus")
    }
}

impl IoBus for Bus {
    fn pio_read(&self, port: u16, data: &mut [u8]) -> bool {
        self.io.pio_read(PioAddress(port), data).is_ok()
    }
    fn pio_write(&self, port: u16, data: &[u8]) -> bool {
        self.io.pio_write(PioAddress(port), data).is_ok()
    }
    fn mmio_read(&self, addr: u64, data: &mut [u8]) -> bool {
        self.io.mmio_read(MmioAddress(addr), data).is_ok()
    }
    fn mmio_write(&self, addr: u64, data: &[u8]) -> bool {
        self.io.mmio_write(MmioAddress(addr), data).is_ok()
    }
    fn ioapic_eoi(&self, vector: u8) {
        lock(&self.ioapic).end_of_interrupt(vector);
    }
}

/// The virtio-iommu's device number on bus 0.
pub const IOMMU_DEVICE: u8 = 31;

/// The devices of a VM.
#[derive(Debug)]
pub struct DeviceManager {
    /// The bus the vCPUs dispatch to.
    pub bus: Arc<Bus>,
    /// The console, which the VMM feeds with host input.
    pub serial: Arc<Mutex<SerialDevice>>,
    /// The PCIe root complex.
    pub pci: PciRoot,
    /// The cards in root-port slots.
    pub slots: SharedSlots,
    /// Builds virtio devices.
    virtio: VirtioFactory,
    /// The VM's GSI routes.
    router: Arc<GsiRouter>,
    /// Guest memory (VFs' DMA maps it).
    mem: GuestMemory,
    /// Default MACs are numbered by this.
    next_net: usize,
    /// VFs are numbered by this.
    next_vf: usize,
    /// The failover standby (a virtio-net with STANDBY on a synthetic port of nicd).
    standby: Option<Standby>,
    /// See [`Standby::events`]; made with the VM, so the event loop can watch it before
    /// a standby exists.
    failover_events: Arc<vmm_sys_util::eventfd::EventFd>,
    /// See [`Standby::busy`].
    failover_busy: Arc<std::sync::atomic::AtomicBool>,
}

/// The guest's failover standby: what the failover sequences need to know.
#[derive(Debug, Clone)]
pub struct Standby {
    /// Its device ID.
    pub id: String,
    /// Its synthetic port of nicd (which knows the guest's MAC, the VF's too).
    pub port: Arc<synthetic::SyntheticPort>,
    /// What to do when nicd comes back after the guest lost its VF with it.
    pub reattach: crate::config::Reattach,
    /// Whether the guest should have a VF: set when one is added, cleared by a failover
    /// detach. A VF lost with nicd leaves it set.
    pub vf_wanted: Arc<std::sync::atomic::AtomicBool>,
    /// The last automatic re-attach, for the API.
    pub last_reattach: Arc<Mutex<Option<String>>>,
    /// Written when the port reconnects and when a failover sequence ends: the
    /// re-attach watcher looks then (`machine::failover::Reattacher`).
    pub events: Arc<vmm_sys_util::eventfd::EventFd>,
    /// Set while a failover sequence runs (one at a time).
    pub busy: Arc<std::sync::atomic::AtomicBool>,
}

impl Standby {
    /// nicd's API socket, as nicd's last answer to the port's hello named it.
    pub fn nicd_api(&self) -> Option<std::path::PathBuf> {
        self.port.nicd_api()
    }
}

/// A virtio-net device as the VMM names it: `net0`, `net1`, ...
fn net_id(n: usize) -> String {
    format!("net{n}")
}

impl DeviceManager {
    /// Creates the devices of `config`: the PCIe root complex with its root ports, the
    /// virtio-iommu when asked for, the virtio-net devices and then the VFs cold-plugged
    /// into the first free slots, and the legacy devices. Power events go to `power`, console output to `console`.
    pub fn new(
        vm: &Vm,
        power: Arc<dyn PowerEventSink>,
        console: devices::legacy::serial::SerialOut,
        plan: &PciPlan,
        mem: &GuestMemory,
        config: &VmConfig,
    ) -> Result<Self, DeviceError> {
        let mut io = IoManager::new();
        let router = vm.gsi_router().map_err(DeviceError::Routing)?;
        let msi = vm.msi_sink();
        let ports = plan
            .ports
            .iter()
            .map(|cfg| RootPort::new(*cfg, msi.clone()))
            .collect();
        let ecam = EcamLayout {
            base: layout::ECAM_START,
            last_bus: layout::ECAM_LAST_BUS,
        };
        let pci = PciRoot::new(RootComplex::new(ecam, ports, plan.root_devices_window));
        io.register_mmio(
            MmioRange::new(MmioAddress(ecam.base), ecam.size()).map_err(DeviceError::Bus)?,
            Arc::new(EcamWindow(pci.clone())),
        )
        .map_err(DeviceError::Bus)?;
        io.register_pio(
            pio_range(CONFIG_ADDRESS_PORT, 8)?,
            Arc::new(ConfigPorts(pci.clone())),
        )
        .map_err(DeviceError::Bus)?;
        for (start, end) in [
            (layout::PCI_MMIO32_START, layout::PCI_MMIO32_END),
            (layout::PCI_MMIO64_START, layout::PCI_MMIO64_END),
        ] {
            io.register_mmio(
                MmioRange::new(MmioAddress(start), end - start).map_err(DeviceError::Bus)?,
                Arc::new(MemoryWindow(pci.clone())),
            )
            .map_err(DeviceError::Bus)?;
        }
        let mut virtio = VirtioFactory::new(
            mem.clone(),
            Arc::new(KvmRouteFactory(router.clone())),
            Some(vm.doorbells()),
        );
        if config.iommu {
            let card = virtio.iommu(plan.iommu_covered_rids())?;
            pci.add_root_device(IOMMU_DEVICE, card.card)
                .map_err(DeviceError::Iommu)?;
        }
        let slots = Arc::new(Mutex::new(PciSlots::new(pci.clone())?));
        let legacy = Legacy::new(
            &mut io,
            Arc::new(KvmIoapicPins::new(router.clone())),
            console,
            power,
        )?;
        let mut dm = Self {
            bus: Arc::new(Bus {
                io,
                ioapic: legacy.ioapic,
            }),
            serial: legacy.serial,
            pci,
            slots,
            virtio,
            router,
            mem: mem.clone(),
            next_net: 0,
            next_vf: 0,
            standby: None,
            failover_events: Arc::new(
                vmm_sys_util::eventfd::EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK)
                    .map_err(DeviceError::Routing)?,
            ),
            failover_busy: Arc::default(),
        };
        for n in &config.net {
            dm.add_net(n, None, true)?;
        }
        for v in &config.vf {
            dm.add_vf(v, None, true)?;
        }
        Ok(dm)
    }

    /// The default MAC of the next virtio-net device.
    pub fn next_net_index(&self) -> usize {
        self.next_net
    }

    /// Creates a virtio-net device and puts it into a slot (`port`, or the first free one):
    /// `cold` at boot (as firmware finds it), else hot-added.
    pub fn add_net(
        &mut self,
        net: &NetConfig,
        port: Option<u8>,
        cold: bool,
    ) -> Result<SlotDevice, DeviceError> {
        let mut slots = lock(&self.slots);
        let (index, port, bus) = slots.choose_port(port)?;
        // Function 0 of the slot's bus.
        let rid = RequesterId::from_routing_id(0, u16::from(bus) << 8);
        let made = self.virtio.net(net, rid)?;
        if net.standby
            && self.standby.is_none()
            && let Some(port) = made.synthetic.clone()
        {
            let has_vf = slots.vf().is_some();
            port.notify_reconnect(self.failover_events.clone());
            self.standby = Some(Standby {
                id: net_id(self.next_net),
                port,
                reattach: net.reattach,
                vf_wanted: Arc::new(std::sync::atomic::AtomicBool::new(has_vf)),
                last_reattach: Arc::default(),
                events: self.failover_events.clone(),
                busy: self.failover_busy.clone(),
            });
        }
        let device = SlotDevice {
            id: net_id(self.next_net),
            kind: "virtio-net".into(),
            port,
            bus,
            mac: Some(net.mac),
            backend: Some(made.backend),
        };
        let device = slots.plug(index, made.card, device, cold)?;
        self.next_net += 1;
        Ok(device)
    }

    /// Assigns the VF served at `vf.socket` and puts it into a slot (`port`, or the first
    /// free one): `cold` at boot, else hot-added. Its DMA reaches guest memory through the
    /// virtual IOMMU if the VM has one, else all of RAM at guest-physical addresses; the
    /// slot's registry removes it by surprise when its server goes away.
    pub fn add_vf(
        &mut self,
        vf: &VfSpec,
        port: Option<u8>,
        cold: bool,
    ) -> Result<SlotDevice, DeviceError> {
        // Connected before the registry is locked: a server that is slow to answer holds
        // up this request only, not the slot events.
        let id = format!("vf{}", self.next_vf);
        let card = vf::connect(&id, &vf.socket, &KvmRouteFactory(self.router.clone()))?;
        let watch = card.socket().try_clone().map_err(DeviceError::Routing)?;
        let mut slots = lock(&self.slots);
        let (index, port, bus) = slots.choose_port(port)?;
        let rid = RequesterId::from_routing_id(0, u16::from(bus) << 8);
        let card = Arc::new(Mutex::new(card));
        let dma = Arc::new(
            VfDma::new(Arc::downgrade(&card), rid, &self.mem)
                .map_err(|e| DeviceError::Vf(VfError::Dma(e)))?,
        );
        match self.virtio.iommu_context() {
            Some(ctx) => dma.follow(ctx).map(|_| ()),
            None => dma.map_identity(),
        }
        .map_err(|e| DeviceError::Vf(VfError::Dma(e)))?;
        let device = SlotDevice {
            id: id.clone(),
            kind: "vf".into(),
            port,
            bus,
            mac: None,
            backend: Some(format!("vfio-user:{}", vf.socket.display())),
        };
        let device = slots.plug(index, card, device, cold)?;
        slots.watch(&id, watch);
        self.next_vf += 1;
        if let Some(standby) = &self.standby {
            standby
                .vf_wanted
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        devices::info_ratelimited!(
            "{id}: VF from {} in root port {port} (bus {bus})",
            vf.socket.display()
        );
        Ok(device)
    }

    /// Written when the standby's port reconnects and when a failover sequence ends.
    pub fn failover_events(&self) -> &Arc<vmm_sys_util::eventfd::EventFd> {
        &self.failover_events
    }

    /// The failover standby, if the VM has one.
    pub fn standby(&self) -> Option<&Standby> {
        self.standby.as_ref()
    }

    /// Asks every card to stop touching guest memory (returns at once).
    pub fn pause(&self) {
        for card in self.pci.cards() {
            lock(&card).pause();
        }
    }

    /// Lets every card run again.
    pub fn resume(&self) {
        for card in self.pci.cards() {
            lock(&card).resume();
        }
    }

    /// Whether every card holds still.
    pub fn all_paused(&self) -> bool {
        self.pci.cards().iter().all(|c| lock(c).is_paused())
    }

    /// The VM is ending: the devices go with it, without undoing their KVM registrations
    /// one by one (the VM's fd releases them all).
    pub fn release_with_vm(self) {
        self.router.close();
    }
}
