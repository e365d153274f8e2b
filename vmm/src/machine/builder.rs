//! Building a [`Vmm`] for a fresh boot: guest memory, the kernel and boot tables in it,
//! the KVM VM, the devices, and vCPUs with boot registers. Building from saved state will
//! share everything but the guest loading and the vCPUs' setup (plain vCPUs that take a
//! saved [`crate::kvm::CpuState`]).

use std::sync::Arc;
use std::time::Instant;

use linux_loader::cmdline::Cmdline;
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::{ExitMonitor, VmState, Vmm, VmmError};
use crate::acpi::{self, AcpiConfig, PciAcpi, Viot};
use crate::boot::cpuid::CpuTemplate;
use crate::boot::params::{BootInfo, build_boot_params, write_boot_params};
use crate::boot::{self, BootError, regs};
use crate::config::{KernelSource, MAX_CMDLINE_LEN, VmConfig};
use crate::device_manager::{DeviceManager, IOMMU_DEVICE, legacy::IOAPIC_ID};
use crate::kvm::vcpu::VcpuContext;
use crate::kvm::{VcpuHandle, Vm};
use crate::memory::{GuestRam, layout};
use crate::pci_resources::PciPlan;

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
            lapic_addr: const { layout::addr32(layout::LAPIC_START) },
            ioapic_addr: const { layout::addr32(layout::IOAPIC_START) },
            ioapic_id: IOAPIC_ID,
            pm_io_base: devices::legacy::acpi_pm::PM_IO_BASE,
            rsdp_addr: GuestAddress(layout::RSDP_START),
            tables_end: GuestAddress(layout::ACPI_END),
            pci: Some(PciAcpi {
                ecam_base: const { layout::addr32(layout::ECAM_START) },
                last_bus: layout::ECAM_LAST_BUS,
                mem32: const {
                    (
                        layout::addr32(layout::PCI_MMIO32_START),
                        layout::addr32(layout::PCI_MMIO32_END - 1),
                    )
                },
                mem64: (layout::PCI_MMIO64_START, layout::PCI_MMIO64_END - 1),
            }),
            viot: plan
                .port_buses()
                .filter(|_| config.iommu)
                .map(|buses| Viot {
                    iommu_device: IOMMU_DEVICE,
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

/// The default test guest must exist before anything else is set up.
fn check_default_kernel(config: &VmConfig) -> Result<(), VmmError> {
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
    Ok(())
}

/// Builds a VM that boots `config`'s kernel, with its console on `console`. Nothing runs
/// until [`Vmm::start`].
pub fn build_for_boot(
    config: &VmConfig,
    console: devices::legacy::serial::SerialOut,
) -> Result<Vmm, VmmError> {
    let started = Instant::now();
    check_default_kernel(config)?;
    let template = config.cpu_template.unwrap_or_else(CpuTemplate::for_host);
    let ram = GuestRam::new(config.memory)?;
    let plan = PciPlan::new(config.pcie_root_ports)?;
    let entry = load_guest(config, &ram, &plan)?;
    let vm = Vm::new(config.vcpus)?;
    vm.register_memory(ram.memory())?;
    let monitor = Arc::new(ExitMonitor::new().map_err(|e| VmmError::Runtime("an eventfd", e))?);
    let devices = DeviceManager::new(&vm, monitor.clone(), console, &plan, ram.memory(), config)?;
    let parked =
        Arc::new(EventFd::new(EFD_NONBLOCK).map_err(|e| VmmError::Runtime("an eventfd", e))?);
    let state_caps = vm.cpu_state_caps();
    let saved_msrs = vm.saved_msrs()?;
    let mut vcpus = Vec::with_capacity(usize::from(config.vcpus));
    for id in 0..config.vcpus {
        let fd = vm.create_boot_vcpu(id, config.vcpus, template, entry)?;
        let handle = VcpuHandle::spawn(VcpuContext {
            fd,
            id,
            bus: devices.bus.clone(),
            mem: ram.memory().clone(),
            stop_sink: monitor.clone(),
            state_caps,
            saved_msrs: saved_msrs.clone(),
            parked_notify: Some(parked.clone()),
        })
        .map_err(|e| VmmError::Runtime("a vCPU thread", e))?;
        vcpus.push(handle);
    }
    Ok(Vmm {
        vcpus,
        devices,
        vm,
        ram,
        state: VmState::Created,
        config: config.clone(),
        template,
        monitor,
        parked,
        started,
    })
}
