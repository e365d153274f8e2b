//! Table layout, checksums and contents, error paths, and a decompile of every table by
//! `iasl -d` (acpica-tools) when it is installed.
#![allow(clippy::cast_possible_truncation)] // test data

use super::*;
use acpi_tables::aml;
use devices::GuestMemory;
use devices::legacy::acpi_pm::S5_SLP_TYP;

const RSDP_ADDR: u64 = 0xe_0000;
const TABLES_END: u64 = 0x10_0000;

fn mem() -> GuestMemory {
    GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
}

/// The machine without PCIe.
fn config(num_vcpus: u8) -> AcpiConfig {
    AcpiConfig {
        num_vcpus,
        lapic_addr: 0xfee0_0000,
        ioapic_addr: 0xfec0_0000,
        ioapic_id: 0,
        pm_io_base: 0x600,
        rsdp_addr: GuestAddress(RSDP_ADDR),
        tables_end: GuestAddress(TABLES_END),
        pci: None,
        viot: None,
    }
}

/// The machine with the PCIe root complex and the virtio-iommu.
fn pcie_config(num_vcpus: u8) -> AcpiConfig {
    AcpiConfig {
        pci: Some(PciAcpi {
            ecam_base: 0xe000_0000,
            last_bus: 255,
            mem32: (0xc000_0000, 0xdfff_ffff),
            mem64: (0x80_0000_0000, 0x8f_ffff_ffff),
        }),
        viot: Some(Viot {
            iommu_device: 31,
            buses: (1, 4),
        }),
        ..config(num_vcpus)
    }
}

fn read(m: &GuestMemory, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    m.read_slice(&mut v, GuestAddress(addr)).unwrap();
    v
}

fn sum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes(b[o..o + 2].try_into().unwrap())
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// Reads a table at `addr` by the length in its header.
fn table(m: &GuestMemory, addr: u64) -> Vec<u8> {
    let head = read(m, addr, 8);
    read(m, addr, u32_at(&head, 4) as usize)
}

/// A table found by following the pointers from the RSDP.
struct Found {
    sig: String,
    addr: u64,
    bytes: Vec<u8>,
}

/// Follows RSDP -> XSDT -> tables (and FADT -> DSDT), checking the RSDP and every
/// checksum; returns the XSDT, then the tables in XSDT order, the DSDT after the FADT.
fn walk(m: &GuestMemory, rsdp: u64) -> Vec<Found> {
    let r = read(m, rsdp, 36);
    assert_eq!(&r[0..8], b"RSD PTR ");
    assert_eq!(sum(&r[..20]), 0, "RSDP v1 checksum (first 20 bytes)");
    assert_eq!(sum(&r), 0, "RSDP extended checksum (36 bytes)");
    assert_eq!(&r[9..15], &OEM_ID, "RSDP OEM ID");
    assert_eq!(r[15], 2, "RSDP revision");
    assert_eq!(u32_at(&r, 16), 0, "no RSDT");
    assert_eq!(u32_at(&r, 20), 36, "RSDP length");
    let xsdt_addr = u64_at(&r, 24);
    let xsdt = table(m, xsdt_addr);
    assert_eq!(&xsdt[..4], b"XSDT");
    assert_eq!(sum(&xsdt), 0, "XSDT checksum");
    assert_eq!((xsdt.len() - 36) % 8, 0);
    let mut out = vec![Found {
        sig: "XSDT".into(),
        addr: xsdt_addr,
        bytes: xsdt.clone(),
    }];
    for i in (36..xsdt.len()).step_by(8) {
        let addr = u64_at(&xsdt, i);
        let t = table(m, addr);
        let sig = String::from_utf8_lossy(&t[..4]).to_string();
        assert_eq!(sum(&t), 0, "{sig} checksum");
        let dsdt_addr = (sig == "FACP").then(|| u64_at(&t, 140));
        out.push(Found {
            sig,
            addr,
            bytes: t,
        });
        if let Some(addr) = dsdt_addr {
            let dsdt = table(m, addr);
            assert_eq!(&dsdt[..4], b"DSDT", "FADT X_DSDT points at a DSDT");
            assert_eq!(sum(&dsdt), 0, "DSDT checksum");
            out.push(Found {
                sig: "DSDT".into(),
                addr,
                bytes: dsdt,
            });
        }
    }
    out
}

fn find<'a>(tables: &'a [Found], sig: &str) -> &'a Found {
    tables.iter().find(|t| t.sig == sig).unwrap()
}

/// FADT 6.5: hardware-reduced, reset and sleep registers, boot flags, both DSDT pointers.
fn check_fadt(fadt: &[u8], dsdt_addr: u64) {
    assert_eq!(fadt.len(), 276);
    assert_eq!((fadt[8], fadt[131]), (6, 5), "FADT revision 6.5");
    assert_eq!(u64_at(fadt, 140), dsdt_addr, "X_DSDT");
    assert_eq!(u64::from(u32_at(fadt, 40)), dsdt_addr, "32-bit DSDT");
    let flags = u32_at(fadt, 112);
    assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
    assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
    let boot_arch = u16_at(fadt, 109);
    assert_ne!(boot_arch & (1 << 1), 0, "8042 present");
    assert_ne!(boot_arch & (1 << 2), 0, "VGA not present");
    assert_ne!(boot_arch & (1 << 5), 0, "CMOS RTC not present");
    assert_eq!(
        boot_arch & (1 << 3),
        0,
        "MSI must not be declared unsupported"
    );
    // Generic Address Structures: system I/O (1), 8 bits, offset 0, byte access (1).
    let io8 = |off: usize| (fadt[off], fadt[off + 1], fadt[off + 2], fadt[off + 3]);
    assert_eq!(io8(116), (1, 8, 0, 1), "RESET_REG");
    assert_eq!(u64_at(fadt, 120), 0x602, "RESET_REG = pm_io_base + 2");
    assert_eq!(fadt[128], 1, "RESET_VALUE");
    assert_eq!(io8(244), (1, 8, 0, 1), "SLEEP_CONTROL_REG");
    assert_eq!(u64_at(fadt, 248), 0x600, "SLEEP_CONTROL_REG = pm_io_base");
    assert_eq!(io8(256), (1, 8, 0, 1), "SLEEP_STATUS_REG");
    assert_eq!(
        u64_at(fadt, 260),
        0x601,
        "SLEEP_STATUS_REG = pm_io_base + 1"
    );
    assert_eq!(&fadt[268..276], b"SRIOVMM\0", "hypervisor vendor identity");
}

/// MADT: LAPIC address, no PCAT_COMPAT (no 8259 PICs), n enabled LAPICs with IDs (and UIDs) 0..n, one IOAPIC,
/// nothing else (no interrupt source overrides).
fn check_madt(madt: &[u8], n: u8) {
    assert_eq!(u32_at(madt, 36), 0xfee0_0000, "local APIC address");
    assert_eq!(u32_at(madt, 40), 0, "flags: no PCAT_COMPAT");
    let (mut lapics, mut ioapics) = (Vec::new(), 0);
    let mut off = 44;
    while off < madt.len() {
        let (kind, len) = (madt[off], madt[off + 1] as usize);
        match kind {
            0 => {
                assert_eq!(len, 8);
                assert_eq!(u32_at(madt, off + 4), 1, "enabled");
                assert_eq!(madt[off + 2], madt[off + 3], "UID = APIC ID");
                lapics.push(madt[off + 3]);
            }
            1 => {
                assert_eq!(len, 12);
                assert_eq!(madt[off + 2], 0, "IOAPIC ID");
                assert_eq!(u32_at(madt, off + 4), 0xfec0_0000);
                assert_eq!(u32_at(madt, off + 8), 0, "GSI base");
                ioapics += 1;
            }
            other => panic!("unexpected MADT entry type {other}"),
        }
        off += len;
    }
    assert_eq!(off, madt.len(), "entries fill the MADT exactly");
    assert_eq!(lapics, (0..n).collect::<Vec<_>>());
    assert_eq!(ioapics, 1);
}

/// MCFG: one entry, base, segment 0, buses 0..=255.
fn check_mcfg(mcfg: &[u8]) {
    assert_eq!(mcfg.len(), 36 + 8 + 16);
    assert_eq!(u64_at(mcfg, 44), 0xe000_0000);
    assert_eq!((mcfg[52], mcfg[53], mcfg[54], mcfg[55]), (0, 0, 0, 255));
}

/// VIOT: two nodes from offset 48; the IOMMU node is 00:1f.0, the range covers buses 1-4
/// with endpoint IDs equal to requester IDs.
fn check_viot(v: &[u8]) {
    assert_eq!((u16_at(v, 36), u16_at(v, 38)), (2, 48));
    assert_eq!(
        (v[48], u16_at(v, 54)),
        (3, 0xf8),
        "virtio-pci IOMMU 00:1f.0"
    );
    let r = 64;
    assert_eq!(v[r], 1, "PCI range node");
    assert_eq!(u32_at(v, r + 4), 0x100, "endpoint_start = first BDF");
    assert_eq!(u16_at(v, r + 12), 0x100);
    assert_eq!(u16_at(v, r + 14), 0x4ff);
    assert_eq!(u16_at(v, r + 16), 48, "output node");
}

/// Builds the tables for `cfg` and checks everything reachable from the RSDP, the layout
/// and what `create_acpi_tables` reports. Returns the memory and the reported tables.
fn build_and_check(cfg: &AcpiConfig) -> (GuestMemory, AcpiTables) {
    let n = cfg.num_vcpus;
    let m = mem();
    let t = create_acpi_tables(&m, cfg).unwrap();
    assert_eq!(t.rsdp, GuestAddress(RSDP_ADDR));
    let all = walk(&m, t.rsdp.0);

    // XSDT entries, in order.
    let mut expected = vec!["FACP", "APIC"];
    if cfg.pci.is_some() {
        expected.push("MCFG");
    }
    if cfg.viot.is_some() {
        expected.push("VIOT");
    }
    let listed: Vec<&str> = all
        .iter()
        .filter(|f| f.sig != "XSDT" && f.sig != "DSDT")
        .map(|f| f.sig.as_str())
        .collect();
    assert_eq!(listed, expected, "XSDT entries with {n} vCPUs");

    // What was reported is what the pointers reach, and every table is in memory as reported.
    let mut reported: Vec<_> = t
        .tables
        .iter()
        .map(|(s, a, l)| (s.clone(), a.0, *l))
        .collect();
    let mut reached: Vec<_> = all
        .iter()
        .map(|f| (f.sig.clone(), f.addr, f.bytes.len()))
        .collect();
    reported.sort();
    reached.sort();
    assert_eq!(reported, reached);

    // Layout: after the RSDP, 8-byte aligned, no overlap, below tables_end.
    let mut spans: Vec<(u64, u64)> = t.tables.iter().map(|(_, a, l)| (a.0, *l as u64)).collect();
    spans.sort();
    let mut next = RSDP_ADDR + 36;
    for (addr, len) in spans {
        assert_eq!(addr % 8, 0, "{addr:#x} aligned");
        assert!(addr >= next, "{addr:#x} overlaps what precedes it");
        next = addr + len;
    }
    assert!(next <= TABLES_END);

    // One OEM ID, OEM table ID and creator ID throughout.
    for f in &all {
        assert_eq!(&f.bytes[10..16], &OEM_ID, "{} OEM ID", f.sig);
        assert_eq!(&f.bytes[16..24], &OEM_TABLE_ID, "{} OEM table ID", f.sig);
        assert_eq!(
            &f.bytes[28..32],
            &acpi_tables::CREATOR_ID,
            "{} creator",
            f.sig
        );
    }

    let dsdt = find(&all, "DSDT");
    check_fadt(&find(&all, "FACP").bytes, dsdt.addr);
    check_madt(&find(&all, "APIC").bytes, n);
    if cfg.pci.is_some() {
        check_mcfg(&find(&all, "MCFG").bytes);
    }
    if cfg.viot.is_some() {
        check_viot(&find(&all, "VIOT").bytes);
    }
    (m, t)
}

#[test]
fn tables_for_1_2_and_254_vcpus() {
    for n in [1u8, 2, 254] {
        build_and_check(&config(n));
    }
}

#[test]
fn tables_with_pcie_and_viot() {
    for n in [1u8, 2, 254] {
        build_and_check(&pcie_config(n));
    }
}

#[test]
fn rsdp_is_16_byte_aligned() {
    let m = mem();
    let mut cfg = config(2);
    cfg.rsdp_addr = GuestAddress(RSDP_ADDR + 8);
    let t = create_acpi_tables(&m, &cfg).unwrap();
    assert_eq!(t.rsdp, GuestAddress(RSDP_ADDR + 16));
    walk(&m, t.rsdp.0);
}

#[test]
fn undersized_window_is_an_error_and_writes_nothing() {
    for cfg in [config(254), pcie_config(254)] {
        let m = mem();
        let t = create_acpi_tables(&m, &cfg).unwrap();
        let needed = t
            .tables
            .iter()
            .map(|(_, a, l)| a.0 + *l as u64)
            .max()
            .unwrap();
        let m = mem();
        for end in RSDP_ADDR..needed {
            let cfg = AcpiConfig {
                tables_end: GuestAddress(end),
                ..cfg.clone()
            };
            match create_acpi_tables(&m, &cfg) {
                Err(AcpiError::OutOfSpace { need, have }) => {
                    assert!(
                        need > have && have == end - RSDP_ADDR,
                        "{need} {have} {end:#x}"
                    )
                }
                other => panic!("tables_end {end:#x}: {other:?}"),
            }
        }
        assert!(
            read(&m, RSDP_ADDR, (TABLES_END - RSDP_ADDR) as usize)
                .iter()
                .all(|b| *b == 0),
            "nothing written when the tables do not fit"
        );
        let exact = AcpiConfig {
            tables_end: GuestAddress(needed),
            ..cfg.clone()
        };
        create_acpi_tables(&m, &exact).unwrap();
    }
}

#[test]
fn bad_configs_are_errors_not_panics() {
    let m = mem();
    let err = |cfg: AcpiConfig| create_acpi_tables(&m, &cfg).unwrap_err();

    assert!(matches!(err(config(0)), AcpiError::Vcpus(0)));
    assert!(matches!(err(config(255)), AcpiError::Vcpus(255)));

    let mut cfg = config(1);
    cfg.tables_end = GuestAddress(RSDP_ADDR - 0x1000);
    assert!(matches!(err(cfg), AcpiError::OutOfSpace { have: 0, .. }));

    // Arithmetic at the top of the address space.
    let mut cfg = config(1);
    cfg.rsdp_addr = GuestAddress(u64::MAX - 4);
    cfg.tables_end = GuestAddress(u64::MAX);
    assert!(matches!(err(cfg), AcpiError::OutOfSpace { .. }));

    // The three PM ports must fit below 0x10000.
    let mut cfg = config(1);
    cfg.pm_io_base = 0xfffe;
    assert!(matches!(err(cfg), AcpiError::PmPorts(0xfffe)));
    let mut cfg = config(1);
    cfg.pm_io_base = 0xfffd;
    create_acpi_tables(&m, &cfg).unwrap();

    // A window outside guest memory.
    let mut cfg = config(1);
    cfg.rsdp_addr = GuestAddress(0x20_0000);
    cfg.tables_end = GuestAddress(0x30_0000);
    assert!(matches!(err(cfg), AcpiError::Write("RSDP", _)));
}

#[test]
fn fix_checksum_handles_any_slice() {
    let mut short = [1u8, 2, 3];
    fix_checksum(&mut short);
    assert_eq!(short, [1, 2, 3]);
    let mut t = vec![7u8; 40];
    fix_checksum(&mut t);
    assert_eq!(sum(&t), 0);
}

#[test]
fn dsdt_has_s5_legacy_devices_and_extra_devices() {
    let d = dsdt::dsdt(&[]);
    assert_eq!(&d[..4], b"DSDT");
    assert_eq!(u32_at(&d, 4) as usize, d.len());
    assert_eq!(d[8], 2, "DSDT revision 2 (64-bit integers)");
    assert_eq!(sum(&d), 0);
    let has = |d: &[u8], needle: &[u8]| d.windows(needle.len()).position(|w| w == needle);
    // Name (_S5_, Package (4) { 5, Zero, Zero, Zero })
    let s5 = [
        0x08, b'_', b'S', b'5', b'_', 0x12, 0x07, 0x04, 0x0a, S5_SLP_TYP, 0, 0, 0,
    ];
    assert!(has(&d, &s5).is_some(), "\\_S5_ = {{5, 0, 0, 0}}");
    assert!(has(&d, b"_SB_").is_some() && has(&d, b"COM1").is_some());
    assert!(has(&d, b"PS2K").is_some());

    // Extra devices go into \_SB_ after the legacy ones.
    let mut extra = Vec::new();
    aml::Device::new(
        "TEST".into(),
        vec![&aml::Name::new(
            "_HID".into(),
            &aml::EISAName::new("PNP0C02"),
        )],
    )
    .to_aml_bytes(&mut extra);
    let d2 = dsdt::dsdt(&[&RawAml(extra.clone())]);
    assert_eq!(sum(&d2), 0);
    assert_eq!(d2.len(), d.len() + extra.len());
    assert!(has(&d2, &extra).unwrap() > has(&d2, b"PS2K").unwrap());
}

/// What `iasl -d` made of one table.
struct Decompiled {
    ok: bool,
    console: String,
    dsl: String,
}

fn iasl_d(dir: &std::path::Path, name: &str, bytes: &[u8]) -> Decompiled {
    let file = dir.join(format!("{name}.dat"));
    std::fs::write(&file, bytes).unwrap();
    let out = std::process::Command::new("iasl")
        .arg("-d")
        .arg(&file)
        .current_dir(dir)
        .output()
        .unwrap();
    Decompiled {
        ok: out.status.success(),
        console: String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr),
        dsl: std::fs::read_to_string(file.with_extension("dsl")).unwrap_or_default(),
    }
}

/// Decompiles every table with iasl (acpica-tools). iasl fails on a length that does not
/// match the data, and marks a bad checksum in the `.dsl` only ("Incorrect checksum"), so
/// both the console output and the `.dsl` are searched.
#[test]
fn iasl_decompiles_cleanly() {
    if std::process::Command::new("iasl")
        .arg("-v")
        .output()
        .is_err()
    {
        let reason = "iasl is not installed (Debian package acpica-tools)";
        if std::env::var("VMM_TESTS_STRICT").is_ok_and(|v| v == "1") {
            panic!("VMM_TESTS_STRICT=1 and {reason}");
        }
        use std::io::Write;
        // Past libtest's capture, so the skip shows in CI logs.
        let _ = writeln!(std::io::stderr(), "SKIP: {reason}");
        return;
    }
    let dir = std::env::temp_dir().join(format!("vmm-acpi-iasl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad_words = ["error", "warning", "invalid", "incorrect"];
    for (label, cfg) in [("base", config(2)), ("pcie", pcie_config(2))] {
        let m = mem();
        let t = create_acpi_tables(&m, &cfg).unwrap();
        for f in walk(&m, t.rsdp.0) {
            let name = format!("{label}-{}", f.sig.to_lowercase());
            let out = iasl_d(&dir, &name, &f.bytes);
            assert!(out.ok, "iasl -d {name}: {}", out.console);
            let text = (out.console + &out.dsl).to_lowercase();
            for bad in bad_words {
                assert!(!text.contains(bad), "iasl -d {name}: {bad} in:\n{text}");
            }
            let mut needles = Vec::new();
            if f.sig == "DSDT" {
                needles.extend([
                    "Name (_S5, Package (0x04)",
                    "0x05, ",
                    "PNP0501",
                    "0x03F8,             // Range Minimum",
                    "0x00000004,",
                    "PNP0303",
                    "0x0060,             // Range Minimum",
                    "0x0064,             // Range Minimum",
                    "0x00000001,",
                ]);
                if label == "pcie" {
                    needles.extend([
                        "PNP0A08",
                        "PNP0C02",
                        "_OSC",
                        "33db4d5b-1ff7-401c-9657-7441c03dd766",
                        "0xDFFFFFFF",
                        "0x0000008FFFFFFFFF",
                        "0x10000000", // ECAM length in MBRD
                    ]);
                }
            }
            for needle in needles {
                assert!(
                    out.dsl.contains(needle),
                    "{needle} missing from:\n{}",
                    out.dsl
                );
            }
        }
    }

    // The checks above can fail: a wrong checksum and a wrong length are reported.
    let m = mem();
    let t = create_acpi_tables(&m, &config(1)).unwrap();
    let mut facp = find(&walk(&m, t.rsdp.0), "FACP").bytes.clone();
    facp[9] = facp[9].wrapping_add(1);
    let out = iasl_d(&dir, "bad-checksum", &facp);
    assert!(out.dsl.contains("Incorrect checksum"), "{}", out.dsl);
    let mut madt = find(&walk(&m, t.rsdp.0), "APIC").bytes.clone();
    madt[4] += 8;
    fix_checksum(&mut madt);
    assert!(!iasl_d(&dir, "bad-length", &madt).ok);

    std::fs::remove_dir_all(dir).unwrap();
}
