//! ACPI for the PCIe root complex: the PNP0A08 host bridge in the DSDT (bus range, windows,
//! `_OSC` granting native hotplug and PCIe capability control), the PNP0C02 motherboard
//! resource device that reserves ECAM, and the MCFG table.

use acpi_tables::Aml;
use acpi_tables::aml::{self, AddressSpace, AddressSpaceCacheable, Path};
use acpi_tables::mcfg::MCFG;

use super::{OEM_ID, OEM_REVISION, OEM_TABLE_ID, RawAml, bytes_of};

/// The PCI segment this VMM builds (one host bridge).
pub const PCI_SEGMENT: u16 = 0;
/// `_OSC` UUID of PCI host bridges.
const PCI_OSC_UUID: &str = "33DB4D5B-1FF7-401C-9657-7441C03DD766";
/// Control bits granted through `_OSC`: native hotplug, SHPC hotplug, PME, AER, and
/// PCIe capability structure control.
const OSC_GRANTED: u32 = 0x1f;

/// What the ACPI tables say about PCI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciAcpi {
    /// ECAM base (of bus 0), below 4 GiB: the motherboard resources reserve the window
    /// with a 32-bit fixed memory range.
    pub ecam_base: u32,
    /// Last bus ECAM decodes.
    pub last_bus: u8,
    /// 32-bit MMIO window (inclusive).
    pub mem32: (u32, u32),
    /// 64-bit MMIO window (inclusive).
    pub mem64: (u64, u64),
}

impl PciAcpi {
    /// Size of the ECAM window (1 MiB per bus: at most 256 MiB).
    pub fn ecam_size(&self) -> u32 {
        (u32::from(self.last_bus) + 1) << 20
    }
}

/// The MCFG table: one ECAM entry for segment 0, buses 0..=last_bus.
pub fn mcfg(pci: &PciAcpi) -> Vec<u8> {
    let mut mcfg = MCFG::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    mcfg.add_ecam(u64::from(pci.ecam_base), PCI_SEGMENT, 0, pci.last_bus);
    bytes_of(&mcfg)
}

/// The `_OSC` method: grant what is asked of [`OSC_GRANTED`], flag an unknown revision or
/// UUID, and report masked capabilities, as PCI firmware specification 3.3 says.
fn osc() -> Vec<u8> {
    let cdw1 = Path::new("CDW1");
    let cdw2 = Path::new("CDW2");
    let cdw3 = Path::new("CDW3");
    let uuid = aml::Uuid::new(PCI_OSC_UUID);
    let granted = OSC_GRANTED;
    let unknown_revision: u8 = 0x08;
    let masked: u8 = 0x10;
    let unknown_uuid: u8 = 0x04;
    let mut out = Vec::new();
    aml::Method::new(
        "_OSC".into(),
        4,
        false,
        vec![
            &aml::CreateDWordField::new(&cdw1, &aml::Arg(3), &0u8),
            &aml::If::new(
                &aml::Equal::new(&aml::Arg(0), &uuid),
                vec![
                    &aml::CreateDWordField::new(&cdw2, &aml::Arg(3), &4u8),
                    &aml::CreateDWordField::new(&cdw3, &aml::Arg(3), &8u8),
                    &aml::And::new(&aml::Local(0), &cdw3, &granted),
                    &aml::If::new(
                        &aml::NotEqual::new(&aml::Arg(1), &aml::ONE),
                        vec![&aml::Or::new(&cdw1, &cdw1, &unknown_revision)],
                    ),
                    &aml::If::new(
                        &aml::NotEqual::new(&cdw3, &aml::Local(0)),
                        vec![&aml::Or::new(&cdw1, &cdw1, &masked)],
                    ),
                    &aml::Store::new(&cdw3, &aml::Local(0)),
                ],
            ),
            &aml::Else::new(vec![&aml::Or::new(&cdw1, &cdw1, &unknown_uuid)]),
            &aml::Return::new(&aml::Arg(3)),
        ],
    )
    .to_aml_bytes(&mut out);
    out
}

/// The `PCI0` host bridge device.
pub fn host_bridge(pci: &PciAcpi) -> RawAml {
    let hid = aml::EISAName::new("PNP0A08");
    let cid = aml::EISAName::new("PNP0A03");
    let bus = AddressSpace::new_bus_number(0u16, u16::from(pci.last_bus));
    let cfg_ports = aml::IO::new(0xcf8, 0xcf8, 1, 8);
    let io_low = AddressSpace::new_io(0u16, 0x0cf7u16, None);
    let io_high = AddressSpace::new_io(0x0d00u16, 0xffffu16, None);
    let mem32 = AddressSpace::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        pci.mem32.0,
        pci.mem32.1,
        None,
    );
    let mem64 = AddressSpace::new_memory(
        AddressSpaceCacheable::Cacheable,
        true,
        pci.mem64.0,
        pci.mem64.1,
        None,
    );
    let crs = aml::ResourceTemplate::new(vec![&bus, &cfg_ports, &io_low, &io_high, &mem32, &mem64]);
    let osc = RawAml(osc());
    let mut out = Vec::new();
    aml::Device::new(
        "PCI0".into(),
        vec![
            &aml::Name::new("_HID".into(), &hid),
            &aml::Name::new("_CID".into(), &cid),
            &aml::Name::new("_ADR".into(), &0u8),
            &aml::Name::new("_SEG".into(), &PCI_SEGMENT),
            &aml::Name::new("_UID".into(), &0u8),
            &aml::Name::new("_BBN".into(), &0u8),
            &aml::Name::new("_CRS".into(), &crs),
            &osc,
        ],
    )
    .to_aml_bytes(&mut out);
    RawAml(out)
}

/// The `MBRD` motherboard-resources device reserving the ECAM window (Linux accepts MCFG
/// late only when a PNP0C01/PNP0C02 `_CRS` covers it).
pub fn ecam_reservation(pci: &PciAcpi) -> RawAml {
    let hid = aml::EISAName::new("PNP0C02");
    let ecam = aml::Memory32Fixed::new(false, pci.ecam_base, pci.ecam_size());
    let crs = aml::ResourceTemplate::new(vec![&ecam]);
    let mut out = Vec::new();
    aml::Device::new(
        "MBRD".into(),
        vec![
            &aml::Name::new("_HID".into(), &hid),
            &aml::Name::new("_UID".into(), &0u8),
            &aml::Name::new("_CRS".into(), &crs),
        ],
    )
    .to_aml_bytes(&mut out);
    RawAml(out)
}
