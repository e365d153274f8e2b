//! The DSDT: the S5 sleep package and the legacy devices, plus whatever devices the
//! machine adds (the PCIe host bridge and its resource device come with the PCIe work).

use acpi_tables::sdt::Sdt;
use acpi_tables::{Aml, aml};
use devices::legacy::acpi_pm::S5_SLP_TYP;

use super::{OEM_ID, OEM_REVISION, OEM_TABLE_ID, RawAml};

/// The DSDT revision (2: 64-bit integers).
const DSDT_REVISION: u8 = 2;

/// A `Device` with a _HID, a _UID and a current-resource template.
fn legacy_device(name: &str, hid: &str, uid: u8, resources: Vec<&dyn Aml>) -> Vec<u8> {
    let mut out = Vec::new();
    let hid = aml::EISAName::new(hid);
    let crs = aml::ResourceTemplate::new(resources);
    aml::Device::new(
        name.into(),
        vec![
            &aml::Name::new("_HID".into(), &hid),
            &aml::Name::new("_UID".into(), &uid),
            &aml::Name::new("_CRS".into(), &crs),
        ],
    )
    .to_aml_bytes(&mut out);
    out
}

/// Builds the DSDT: `\_S5_`, then `\_SB_` with COM1 (PNP0501: I/O 0x3F8-0x3FF, IRQ 4), the
/// PS/2 controller (PNP0303: I/O 0x60 and 0x64, IRQ 1) and then `devices` (each an AML
/// `Device`, e.g. the PNP0A08 host bridge and the PNP0C02 reservation).
pub fn dsdt(devices: &[&dyn Aml]) -> Vec<u8> {
    let mut body = Vec::new();
    // \_S5: SLP_TYP for PM1a and PM1b (and two reserved); the guest writes
    // SLP_TYP << 2 | SLP_EN to the FADT's sleep control register, which the PM device decodes.
    let s5 = aml::Package::new(vec![&S5_SLP_TYP, &0u8, &0u8, &0u8]);
    aml::Name::new("_S5_".into(), &s5).to_aml_bytes(&mut body);

    let com1 = RawAml(legacy_device(
        "COM1",
        "PNP0501",
        0,
        vec![
            &aml::IO::new(0x3f8, 0x3f8, 1, 8),
            &aml::Interrupt::new(true, true, false, false, 4),
        ],
    ));
    let ps2 = RawAml(legacy_device(
        "PS2K",
        "PNP0303",
        0,
        vec![
            &aml::IO::new(0x60, 0x60, 1, 1),
            &aml::IO::new(0x64, 0x64, 1, 1),
            &aml::Interrupt::new(true, true, false, false, 1),
        ],
    ));
    let mut children: Vec<&dyn Aml> = vec![&com1, &ps2];
    children.extend_from_slice(devices);
    aml::Scope::new("\\_SB_".into(), children).to_aml_bytes(&mut body);

    let mut sdt = Sdt::new(
        *b"DSDT",
        36,
        DSDT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    sdt.append_slice(&body);
    sdt.as_slice().to_vec()
}
