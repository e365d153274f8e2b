//! ACPI tables, generated with the `acpi_tables` crate: RSDP, XSDT, FADT (hardware-reduced,
//! with sleep and reset registers), MADT (one LAPIC per vCPU, the IOAPIC) and a DSDT whose
//! device list grows with the machine (the PCIe host bridge comes with the PCIe work).
//!
//! Tables are laid out one after another from the RSDP (in the reserved BIOS area below
//! 1 MiB), each 8-byte aligned, and checked to fit.

pub mod dsdt;
pub mod pci;

pub use pci::PciAcpi;

use acpi_tables::Aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, MADT, ProcessorLocalApic,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::viot::{PciDevice as ViotPciDevice, PciRange, VIOT, VirtIoPciIommu};
use acpi_tables::xsdt::XSDT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

/// OEM ID in every table.
pub const OEM_ID: [u8; 6] = *b"SRIOVM";
/// OEM table ID in every table.
pub const OEM_TABLE_ID: [u8; 8] = *b"SRIOVMM ";
/// OEM revision in every table.
pub const OEM_REVISION: u32 = 1;

/// FADT IAPC_BOOT_ARCH: an i8042 is present.
const IAPC_8042: u16 = 1 << 1;
/// FADT IAPC_BOOT_ARCH: no VGA.
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
/// FADT IAPC_BOOT_ARCH: no CMOS RTC (none is emulated; Linux then does not probe it).
const IAPC_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;
/// MADT flags: the machine also has 8259 PICs (KVM's in-kernel ones).
const MADT_PCAT_COMPAT: u32 = 1;
/// Offset of the MADT flags.
const MADT_FLAGS_OFFSET: usize = 40;
/// Offset of the checksum in every SDT header.
const SDT_CHECKSUM_OFFSET: usize = 9;

/// Where ACPI tables go and what they describe.
#[derive(Debug, Clone)]
pub struct AcpiConfig {
    /// vCPUs (1..=254); APIC IDs and processor UIDs are 0..num_vcpus-1.
    pub num_vcpus: u8,
    /// The local APIC base.
    pub lapic_addr: u32,
    /// The IOAPIC base.
    pub ioapic_addr: u32,
    /// The IOAPIC's ID.
    pub ioapic_id: u8,
    /// I/O base of the PM registers: sleep control (+0), sleep status (+1), reset (+2).
    pub pm_io_base: u16,
    /// The RSDP's address; the other tables follow it.
    pub rsdp_addr: GuestAddress,
    /// End of the area the tables may use (exclusive).
    pub tables_end: GuestAddress,
    /// The PCIe root complex, if the machine has one.
    pub pci: Option<PciAcpi>,
    /// The virtio-iommu, if the machine has one.
    pub viot: Option<Viot>,
}

/// What the VIOT describes: the virtio-pci IOMMU on bus 0 and the buses whose every
/// function it translates for (endpoint ID = requester ID).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Viot {
    /// Device number of the IOMMU on bus 0 (function 0).
    pub iommu_device: u8,
    /// First and last bus covered.
    pub buses: (u8, u8),
}

fn viot(v: &Viot) -> Vec<u8> {
    let mut t = VIOT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    let handle = t.add_virtio_pci_iommu(VirtIoPciIommu::new(ViotPciDevice::new(
        0,
        0,
        v.iommu_device & 31,
        0,
    )));
    t.add_pci_range(PciRange::new(
        ViotPciDevice::new(0, v.buses.0, 0, 0),
        ViotPciDevice::new(0, v.buses.1, 31, 7),
        &handle,
    ));
    bytes_of(&t)
}

/// What was written.
#[derive(Debug, Clone)]
pub struct AcpiTables {
    /// The RSDP (for boot_params.acpi_rsdp_addr).
    pub rsdp: GuestAddress,
    /// Every other table: signature, address, length.
    pub tables: Vec<(String, GuestAddress, usize)>,
}

/// Errors building the tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// The tables do not fit in the area.
    #[error("ACPI tables need {need} bytes but only {have} are available")]
    OutOfSpace {
        /// Bytes needed.
        need: u64,
        /// Bytes available.
        have: u64,
    },
    /// Guest memory refused a write.
    #[error("cannot write the {0} table to guest memory")]
    Write(&'static str, #[source] vm_memory::GuestMemoryError),
    /// A vCPU count the MADT cannot describe.
    #[error("{0} vCPUs cannot be described (1 to 254)")]
    Vcpus(u8),
}

/// Raw AML bytes as an AML object.
#[derive(Debug, Clone)]
pub struct RawAml(pub Vec<u8>);

impl Aml for RawAml {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        sink.vec(&self.0);
    }
}

fn bytes_of(table: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    table.to_aml_bytes(&mut v);
    v
}

/// Sets the header checksum so the bytes of `table` sum to zero.
pub fn fix_checksum(table: &mut [u8]) {
    table[SDT_CHECKSUM_OFFSET] = 0;
    let sum = table.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    table[SDT_CHECKSUM_OFFSET] = sum.wrapping_neg();
}

fn io_gas(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(port),
    )
}

fn fadt(cfg: &AcpiConfig, dsdt: u64) -> Vec<u8> {
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .dsdt_64(dsdt);
    fadt.iapc_boot_arch = (IAPC_8042 | IAPC_VGA_NOT_PRESENT | IAPC_CMOS_RTC_NOT_PRESENT).into();
    fadt.reset_reg = io_gas(cfg.pm_io_base + 2);
    fadt.reset_value = devices::legacy::acpi_pm::RESET_VALUE;
    fadt.sleep_control_reg = io_gas(cfg.pm_io_base);
    fadt.sleep_status_reg = io_gas(cfg.pm_io_base + 1);
    fadt.hypervisor_vendor_identity = u64::from_le_bytes(*b"SRIOVMM\0").into();
    bytes_of(&fadt.finalize())
}

fn madt(cfg: &AcpiConfig) -> Vec<u8> {
    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(cfg.lapic_addr),
    );
    for id in 0..cfg.num_vcpus {
        madt.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(cfg.ioapic_id, cfg.ioapic_addr, 0));
    let mut bytes = bytes_of(&madt);
    // The crate has no setter for the MADT flags.
    bytes[MADT_FLAGS_OFFSET..MADT_FLAGS_OFFSET + 4]
        .copy_from_slice(&MADT_PCAT_COMPAT.to_le_bytes());
    fix_checksum(&mut bytes);
    bytes
}

/// Lays tables out from an address, 8-byte aligned, within a limit.
struct Placer {
    next: u64,
    end: u64,
    start: u64,
}

impl Placer {
    fn place(&mut self, len: usize) -> Result<GuestAddress, AcpiError> {
        let addr = self.next.next_multiple_of(8);
        let end = addr + len as u64;
        if end > self.end {
            return Err(AcpiError::OutOfSpace {
                need: end - self.start,
                have: self.end.saturating_sub(self.start),
            });
        }
        self.next = end;
        Ok(GuestAddress(addr))
    }
}

/// Builds every table and writes them to `mem`.
pub fn create_acpi_tables<M: GuestMemoryBackend>(
    mem: &M,
    cfg: &AcpiConfig,
) -> Result<AcpiTables, AcpiError> {
    if !(1..=254).contains(&cfg.num_vcpus) {
        return Err(AcpiError::Vcpus(cfg.num_vcpus));
    }
    let mut at = Placer {
        next: cfg.rsdp_addr.0,
        end: cfg.tables_end.0,
        start: cfg.rsdp_addr.0,
    };
    let rsdp_addr = at.place(Rsdp::len())?;
    let pci_devices = cfg
        .pci
        .map(|p| [pci::host_bridge(&p), pci::ecam_reservation(&p)]);
    let dsdt_devices: Vec<&dyn Aml> = pci_devices
        .iter()
        .flatten()
        .map(|d| d as &dyn Aml)
        .collect();
    let dsdt = dsdt::dsdt(&dsdt_devices);
    let dsdt_addr = at.place(dsdt.len())?;
    let fadt = fadt(cfg, dsdt_addr.0);
    let fadt_addr = at.place(fadt.len())?;
    let madt = madt(cfg);
    let madt_addr = at.place(madt.len())?;
    let mcfg = cfg.pci.as_ref().map(pci::mcfg);
    let mcfg_addr = mcfg.as_ref().map(|m| at.place(m.len())).transpose()?;
    let viot = cfg.viot.as_ref().map(viot);
    let viot_addr = viot.as_ref().map(|v| at.place(v.len())).transpose()?;
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr.0);
    xsdt.add_entry(madt_addr.0);
    for addr in [mcfg_addr, viot_addr].into_iter().flatten() {
        xsdt.add_entry(addr.0);
    }
    let xsdt = bytes_of(&xsdt);
    let xsdt_addr = at.place(xsdt.len())?;
    let rsdp = bytes_of(&Rsdp::new(OEM_ID, xsdt_addr.0));

    let mut tables = vec![
        ("RSDP", rsdp_addr, &rsdp),
        ("DSDT", dsdt_addr, &dsdt),
        ("FACP", fadt_addr, &fadt),
        ("APIC", madt_addr, &madt),
        ("XSDT", xsdt_addr, &xsdt),
    ];
    if let (Some(addr), Some(bytes)) = (mcfg_addr, mcfg.as_ref()) {
        tables.push(("MCFG", addr, bytes));
    }
    if let (Some(addr), Some(bytes)) = (viot_addr, viot.as_ref()) {
        tables.push(("VIOT", addr, bytes));
    }
    for &(sig, addr, bytes) in &tables {
        mem.write_slice(bytes, addr)
            .map_err(|e| AcpiError::Write(sig, e))?;
    }
    Ok(AcpiTables {
        rsdp: rsdp_addr,
        tables: tables[1..]
            .iter()
            .map(|(s, a, b)| (s.to_string(), *a, b.len()))
            .collect(),
    })
}

#[cfg(test)]
mod tests;
