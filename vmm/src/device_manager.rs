//! The devices of a microVM and the bus that dispatches vCPU exits to them: legacy devices
//! and the PCIe root complex with its root ports. A thin facade:
//! the device models live in the `devices` crate; this wires them to KVM (irqfds) and to
//! the I/O address space.

use std::sync::{Arc, Mutex};

use devices::interrupt::LineTrigger;
use devices::legacy::ioapic::IOAPIC_WINDOW;
use devices::legacy::{
    AcpiPmDevice, DebugExitDevice, I8042, Ioapic, IoapicLine, SerialDevice, acpi_pm, debug_exit,
    i8042, serial,
};
use devices::pci::io::{ConfigPorts, EcamWindow, MemoryWindow};
use devices::pci::root_complex::CONFIG_ADDRESS_PORT;
use devices::pci::{EcamLayout, FunctionCard, PciRoot, RootComplex, RootPort};
use devices::power::PowerEventSink;
use vm_device::bus::{MmioAddress, MmioRange, PioAddress, PioRange};
use vm_device::device_manager::{IoManager, MmioManager, PioManager};
use vm_memory::GuestMemoryMmap;

use crate::config::NetConfig;
use crate::hotplug::{HotplugError, PciHotplug, SharedHotplug};
use crate::kvm::irq_routing::{KvmIoapicPins, KvmMsixRoutes};
use crate::kvm::{IoBus, Vm};
use crate::memory::layout;
use crate::pci_resources::PciPlan;
use devices::interrupt::MsixDelivery;
use devices::virtio::dma::IommuContext;
use devices::virtio::iommu::{SharedEngine, VirtioIommu};
use devices::virtio::transport::VirtioPciDevice;
use iommu::IommuTable;
use iommu::virtio::Engine;

/// Errors wiring devices.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// An eventfd could not be created.
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    /// Two devices claim the same addresses.
    #[error("cannot register a device on the I/O bus")]
    Bus(#[source] vm_device::bus::Error),
    /// A device cannot be created or put in its slot.
    #[error("cannot add a device")]
    Hotplug(#[source] HotplugError),
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
        self.ioapic
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .end_of_interrupt(vector);
    }
}

/// The devices of a VM.
#[derive(Debug)]
pub struct DeviceManager {
    /// The bus the vCPUs dispatch to.
    pub bus: Arc<Bus>,
    /// The console, which the VMM feeds with host input.
    pub serial: Arc<Mutex<SerialDevice>>,
    /// The PCIe root complex.
    pub pci: PciRoot,
    /// The devices in root-port slots.
    pub hotplug: SharedHotplug,
    /// The virtio-iommu's engine, when the machine has one.
    pub iommu: Option<SharedEngine>,
    /// The VM's GSI routes.
    router: Arc<crate::kvm::irq_routing::GsiRouter>,
}

impl DeviceManager {
    /// The VM is ending: the devices go with it, without undoing their KVM registrations
    /// one by one (the VM's fd releases them all).
    pub fn release_with_vm(self) {
        self.router.close();
    }
}

/// The IOAPIC's ID (the MADT's).
pub const IOAPIC_ID: u8 = 0;

/// The virtio-iommu's device number on bus 0.
pub const IOMMU_DEVICE: u8 = 31;

fn pio_range(base: u16, len: u16) -> Result<PioRange, DeviceError> {
    PioRange::new(PioAddress(base), len).map_err(DeviceError::Bus)
}

impl DeviceManager {
    /// Creates the devices: the PCIe root complex with its root ports, the virtio-iommu when
    /// asked for, the virtio-net devices of `net`, the IOAPIC, COM1 on its pin 4, the
    /// i8042, the ACPI PM registers and the debug-exit port. Power events go to `power`.
    pub fn new(
        vm: &Vm,
        power: Arc<dyn PowerEventSink>,
        console: serial::SerialOut,
        plan: &PciPlan,
        mem: &GuestMemoryMmap,
        net: &[NetConfig],
        iommu: bool,
    ) -> Result<Self, DeviceError> {
        let mut io = IoManager::new();

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
        let router = vm.gsi_router().map_err(DeviceError::EventFd)?;
        let router_for_ioapic = router.clone();
        let router_for_teardown = router.clone();
        let iommu_engine = if iommu {
            let engine = Arc::new(Mutex::new(Engine::new(
                IommuTable::default(),
                plan.iommu_covered_rids(),
                (0, u64::MAX),
            )));
            let device = VirtioIommu::new(engine.clone(), (0, u64::MAX), (0, u32::MAX));
            let faults = device.fault_sink();
            let routes = KvmMsixRoutes::new(router.clone(), VirtioPciDevice::vectors_for(&device))
                .map_err(DeviceError::EventFd)?;
            let pci_dev = VirtioPciDevice::new_integrated(
                Box::new(device),
                mem.clone(),
                MsixDelivery::Routed(Arc::new(routes)),
                None,
            );
            pci.add_root_device(
                IOMMU_DEVICE,
                FunctionCard::single(Box::new(pci_dev)).shared(),
            )
            .map_err(|e| DeviceError::Hotplug(HotplugError::Slot(e.to_string())))?;
            Some(IommuContext {
                engine,
                faults: Arc::new(faults),
            })
        } else {
            None
        };
        let hotplug = PciHotplug::new(
            pci.clone(),
            mem.clone(),
            router,
            vm.doorbells(),
            iommu_engine.clone(),
        )
        .map_err(DeviceError::EventFd)?;
        let hotplug = Arc::new(Mutex::new(hotplug));
        for n in net {
            hotplug
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .add_net(n, None, true)
                .map_err(DeviceError::Hotplug)?;
        }

        let pins = Arc::new(KvmIoapicPins::new(router_for_ioapic));
        let ioapic = Arc::new(Mutex::new(Ioapic::new(IOAPIC_ID, pins)));
        io.register_mmio(
            MmioRange::new(MmioAddress(layout::IOAPIC_START), IOAPIC_WINDOW)
                .map_err(DeviceError::Bus)?,
            ioapic.clone(),
        )
        .map_err(DeviceError::Bus)?;
        let line = LineTrigger(Arc::new(IoapicLine::new(
            ioapic.clone(),
            serial::COM1_IRQ as usize,
        )));
        let serial = Arc::new(Mutex::new(SerialDevice::new(line, console)));
        io.register_pio(
            pio_range(serial::COM1_BASE, serial::SERIAL_PORTS)?,
            serial.clone(),
        )
        .map_err(DeviceError::Bus)?;

        let i8042 = Arc::new(Mutex::new(I8042::new(power.clone())));
        for port in [i8042::I8042_DATA_PORT, i8042::I8042_COMMAND_PORT] {
            io.register_pio(pio_range(port, 1)?, i8042.clone())
                .map_err(DeviceError::Bus)?;
        }
        io.register_pio(
            pio_range(acpi_pm::PM_IO_BASE, acpi_pm::PM_IO_PORTS)?,
            Arc::new(AcpiPmDevice::new(power.clone())),
        )
        .map_err(DeviceError::Bus)?;
        io.register_pio(
            pio_range(debug_exit::DEBUG_EXIT_PORT, debug_exit::DEBUG_EXIT_PORTS)?,
            Arc::new(DebugExitDevice::new(power)),
        )
        .map_err(DeviceError::Bus)?;

        Ok(Self {
            bus: Arc::new(Bus { io, ioapic }),
            serial,
            pci,
            hotplug,
            iommu: iommu_engine.map(|c| c.engine),
            router: router_for_teardown,
        })
    }
}
