//! ACPI tables, generated with the `acpi_tables` crate: RSDP, XSDT, FADT (hardware-reduced,
//! with sleep and reset registers), MADT (one LAPIC per vCPU, the IOAPIC), a DSDT whose
//! device list grows with the machine ([`dsdt::dsdt`] takes the extra devices: the PCIe
//! host bridge and the ECAM reservation from [`pci`]), and MCFG and VIOT when the machine
//! has PCIe and a virtio-iommu.
//!
//! Tables are laid out one after another from the RSDP (in the reserved BIOS area below
//! 1 MiB; the RSDP 16-byte aligned, the others 8-byte aligned), checked to fit before
//! anything is written.

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
use vm_memory::{Bytes, GuestAddress, GuestMemory};

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
/// Offset of the checksum in every SDT header.
const SDT_CHECKSUM_OFFSET: usize = 9;
/// Length of the SDT header.
const SDT_HEADER_LEN: usize = 36;
/// The RSDP's alignment (on a 16-byte boundary, where OSes scanning the BIOS area look).
const RSDP_ALIGN: u64 = 16;
/// Every other table's alignment.
const TABLE_ALIGN: u64 = 8;

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
    /// The RSDP's address (rounded up to 16 bytes); the other tables follow it.
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
    /// The PM register block (3 ports from `pm_io_base`) runs past port 0xffff.
    #[error("PM register block at I/O port {0:#x} runs past port 0xffff")]
    PmPorts(u16),
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

/// Sets the header checksum so the bytes of `table` sum to zero (a slice too short to hold
/// an SDT header is left alone).
pub fn fix_checksum(table: &mut [u8]) {
    if table.len() < SDT_HEADER_LEN {
        return;
    }
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

/// The FADT (revision 6.5, as the crate builds it): hardware-reduced, with the sleep
/// control/status and reset registers at `pm_io_base` +0, +1 and +2 (8-bit system I/O).
fn fadt(cfg: &AcpiConfig, dsdt: u64) -> Result<Vec<u8>, AcpiError> {
    use devices::legacy::acpi_pm::{RESET_REG, RESET_VALUE, SLEEP_CONTROL, SLEEP_STATUS};
    let port = |offset: u16| {
        cfg.pm_io_base
            .checked_add(offset)
            .map(io_gas)
            .ok_or(AcpiError::PmPorts(cfg.pm_io_base))
    };
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .dsdt_64(dsdt);
    // The crate's dsdt_64 clears the 32-bit DSDT field; fill it in too while the DSDT is
    // below 4 GiB, for OSes that read only that one (ACPI: X_DSDT wins when both are set).
    if let Ok(dsdt32) = u32::try_from(dsdt) {
        fadt.dsdt = dsdt32.into();
    }
    fadt.iapc_boot_arch = (IAPC_8042 | IAPC_VGA_NOT_PRESENT | IAPC_CMOS_RTC_NOT_PRESENT).into();
    fadt.reset_reg = port(RESET_REG)?;
    fadt.reset_value = RESET_VALUE;
    fadt.sleep_control_reg = port(SLEEP_CONTROL)?;
    fadt.sleep_status_reg = port(SLEEP_STATUS)?;
    fadt.hypervisor_vendor_identity = u64::from_le_bytes(*b"SRIOVMM\0").into();
    Ok(bytes_of(&fadt.finalize()))
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
    // Flags stay 0 (the crate's value): no PCAT_COMPAT, as the machine has no 8259 PICs.
    bytes_of(&madt)
}

/// Lays tables out one after another from an address, aligned, within a limit.
struct Placer {
    next: u64,
    end: u64,
    start: u64,
}

impl Placer {
    /// Places a table of `len` bytes at the next `align`-byte boundary.
    fn place_aligned(&mut self, len: usize, align: u64) -> Result<GuestAddress, AcpiError> {
        let out_of_space = |end: u64| AcpiError::OutOfSpace {
            need: end.saturating_sub(self.start),
            have: self.end.saturating_sub(self.start),
        };
        let addr = self
            .next
            .checked_next_multiple_of(align)
            .ok_or(out_of_space(u64::MAX))?;
        let end = addr.checked_add(len as u64).ok_or(out_of_space(u64::MAX))?;
        if end > self.end {
            return Err(out_of_space(end));
        }
        self.next = end;
        Ok(GuestAddress(addr))
    }

    /// Places a table of `len` bytes at the next 8-byte boundary.
    fn place(&mut self, len: usize) -> Result<GuestAddress, AcpiError> {
        self.place_aligned(len, TABLE_ALIGN)
    }
}

/// Builds every table and writes them to `mem`: the RSDP at `cfg.rsdp_addr` (rounded up to
/// 16 bytes), then the DSDT, FADT, MADT, (MCFG, VIOT) and XSDT, each 8-byte aligned, all
/// below `cfg.tables_end`. Nothing is written unless every table fits in that window.
pub fn create_acpi_tables<M: GuestMemory>(
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
    let rsdp_addr = at.place_aligned(Rsdp::len(), RSDP_ALIGN)?;
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
    let fadt = fadt(cfg, dsdt_addr.0)?;
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
