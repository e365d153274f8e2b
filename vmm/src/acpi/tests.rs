//! Table layout, checksums and contents, and a decompile by `iasl -d` when it is installed.

use super::*;
use vm_memory::GuestMemoryMmap;

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
}

fn config(num_vcpus: u8) -> AcpiConfig {
    AcpiConfig {
        num_vcpus,
        lapic_addr: 0xfee0_0000,
        ioapic_addr: 0xfec0_0000,
        ioapic_id: 0,
        pm_io_base: 0x600,
        rsdp_addr: GuestAddress(0xe_0000),
        tables_end: GuestAddress(0x10_0000),
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
    }
}

fn read(m: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    m.read_slice(&mut v, GuestAddress(addr)).unwrap();
    v
}

fn sum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// Reads a table at `addr` by the length in its header.
fn table(m: &GuestMemoryMmap, addr: u64) -> Vec<u8> {
    let head = read(m, addr, 8);
    read(m, addr, u32_at(&head, 4) as usize)
}

/// Follows RSDP -> XSDT -> tables, checking every checksum; returns tables by signature.
fn walk(m: &GuestMemoryMmap, rsdp: u64) -> Vec<(String, Vec<u8>)> {
    let r = read(m, rsdp, 36);
    assert_eq!(&r[0..8], b"RSD PTR ");
    assert_eq!(sum(&r[..20]), 0, "RSDP v1 checksum");
    assert_eq!(sum(&r), 0, "RSDP extended checksum");
    assert_eq!(r[15], 2, "revision");
    assert_eq!(u32_at(&r, 20), 36);
    let xsdt = table(m, u64_at(&r, 24));
    assert_eq!(&xsdt[..4], b"XSDT");
    assert_eq!(sum(&xsdt), 0, "XSDT checksum");
    let mut out = vec![("XSDT".to_string(), xsdt.clone())];
    for i in (36..xsdt.len()).step_by(8) {
        let t = table(m, u64_at(&xsdt, i));
        let sig = String::from_utf8_lossy(&t[..4]).to_string();
        assert_eq!(sum(&t), 0, "{sig} checksum");
        if sig == "FACP" {
            let dsdt = table(m, u64_at(&t, 140));
            assert_eq!(&dsdt[..4], b"DSDT");
            assert_eq!(sum(&dsdt), 0, "DSDT checksum");
            out.push(("DSDT".into(), dsdt));
        }
        out.push((sig, t));
    }
    out
}

fn find<'a>(tables: &'a [(String, Vec<u8>)], sig: &str) -> &'a [u8] {
    &tables.iter().find(|(s, _)| s == sig).unwrap().1
}

#[test]
fn tables_are_reachable_and_checksummed() {
    for n in [1u8, 2, 254] {
        let m = mem();
        let t = create_acpi_tables(&m, &config(n)).unwrap();
        assert_eq!(t.rsdp, GuestAddress(0xe_0000));
        let all = walk(&m, t.rsdp.0);
        for sig in ["XSDT", "FACP", "APIC", "DSDT", "MCFG", "VIOT"] {
            assert!(all.iter().any(|(s, _)| s == sig), "{sig} with {n} vCPUs");
        }
        for (_, addr, len) in &t.tables {
            assert!(addr.0 % 8 == 0 && addr.0 + *len as u64 <= 0x10_0000);
        }

        let madt = find(&all, "APIC");
        assert_eq!(u32_at(madt, 36), 0xfee0_0000);
        assert_eq!(u32_at(madt, 40), 1, "PCAT_COMPAT");
        let (mut lapics, mut ioapics) = (Vec::new(), 0);
        let mut off = 44;
        while off < madt.len() {
            let (kind, len) = (madt[off], madt[off + 1] as usize);
            match kind {
                0 => {
                    assert_eq!(len, 8);
                    assert_eq!(u32_at(madt, off + 4) & 1, 1, "enabled");
                    assert_eq!(madt[off + 2], madt[off + 3], "UID = APIC ID");
                    lapics.push(madt[off + 3]);
                }
                1 => {
                    assert_eq!(u32_at(madt, off + 4), 0xfec0_0000);
                    assert_eq!(u32_at(madt, off + 8), 0, "GSI base");
                    ioapics += 1;
                }
                other => panic!("unexpected MADT entry type {other}"),
            }
            off += len;
        }
        assert_eq!(lapics, (0..n).collect::<Vec<_>>());
        assert_eq!(ioapics, 1);

        // MCFG: one entry, base, segment 0, buses 0..=255.
        let mcfg = find(&all, "MCFG");
        assert_eq!(mcfg.len(), 36 + 8 + 16);
        assert_eq!(u64_at(mcfg, 44), 0xe000_0000);
        assert_eq!((mcfg[52], mcfg[53], mcfg[54], mcfg[55]), (0, 0, 0, 255));

        // VIOT: two nodes from offset 48; the IOMMU node is 00:1f.0, the range covers
        // buses 1-4 with endpoint IDs equal to requester IDs.
        let v = find(&all, "VIOT");
        assert_eq!(
            (
                u16::from_le_bytes([v[36], v[37]]),
                u16::from_le_bytes([v[38], v[39]])
            ),
            (2, 48)
        );
        assert_eq!(
            (v[48], u16::from_le_bytes([v[54], v[55]])),
            (3, 0xf8),
            "virtio-pci IOMMU 00:1f.0"
        );
        let r = 64;
        assert_eq!(v[r], 1, "PCI range node");
        assert_eq!(u32_at(v, r + 4), 0x100, "endpoint_start = first BDF");
        assert_eq!(u16::from_le_bytes([v[r + 12], v[r + 13]]), 0x100);
        assert_eq!(u16::from_le_bytes([v[r + 14], v[r + 15]]), 0x4ff);
        assert_eq!(
            u16::from_le_bytes([v[r + 16], v[r + 17]]),
            48,
            "output node"
        );

        let fadt = find(&all, "FACP");
        let flags = u32_at(fadt, 112);
        assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
        assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
        let boot_arch = u16::from_le_bytes([fadt[109], fadt[110]]);
        assert_eq!(
            boot_arch & 0b10_0110,
            0b10_0110,
            "8042, no VGA, no CMOS RTC"
        );
        assert_eq!(
            boot_arch & (1 << 3),
            0,
            "MSI must not be declared unsupported"
        );
        // RESET_REG: system I/O at pm_io_base + 2, value 1.
        assert_eq!((fadt[116], u64_at(fadt, 120), fadt[128]), (1, 0x602, 1));
        // SLEEP_CONTROL_REG and SLEEP_STATUS_REG.
        assert_eq!((fadt[244], u64_at(fadt, 248)), (1, 0x600));
        assert_eq!((fadt[256], u64_at(fadt, 260)), (1, 0x601));
    }
}

#[test]
fn undersized_window_is_an_error() {
    let m = mem();
    let mut cfg = config(254);
    cfg.tables_end = GuestAddress(0xe_0100);
    assert!(matches!(
        create_acpi_tables(&m, &cfg),
        Err(AcpiError::OutOfSpace { .. })
    ));
    cfg = config(0);
    assert!(matches!(
        create_acpi_tables(&m, &cfg),
        Err(AcpiError::Vcpus(0))
    ));
    // A window outside guest memory.
    let mut far = config(1);
    far.rsdp_addr = GuestAddress(0x20_0000);
    far.tables_end = GuestAddress(0x30_0000);
    assert!(matches!(
        create_acpi_tables(&m, &far),
        Err(AcpiError::Write(..))
    ));
}

#[test]
fn dsdt_has_s5_and_legacy_devices() {
    let d = dsdt::dsdt(&[]);
    assert_eq!(sum(&d), 0);
    let has = |needle: &[u8]| d.windows(needle.len()).any(|w| w == needle);
    assert!(has(b"_S5_"));
    assert!(has(b"COM1") && has(b"PS2K") && has(b"_SB_"));
}

/// Decompiles every table with iasl (acpica-tools), which reports checksum and length
/// errors and malformed AML.
#[test]
fn iasl_decompiles_cleanly() {
    let iasl = std::process::Command::new("iasl").arg("-v").output();
    if iasl.is_err() {
        let reason = "iasl is not installed (Debian package acpica-tools)";
        if std::env::var("VMM_TESTS_STRICT").is_ok_and(|v| v == "1") {
            panic!("VMM_TESTS_STRICT=1 and {reason}");
        }
        use std::io::Write;
        // Past libtest's capture, so the skip shows in CI logs.
        let _ = writeln!(std::io::stderr(), "SKIP: {reason}");
        return;
    }
    let m = mem();
    let t = create_acpi_tables(&m, &config(2)).unwrap();
    let dir = std::env::temp_dir().join(format!("vmm-acpi-iasl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (sig, _) in walk(&m, t.rsdp.0) {
        let (_, addr, _) = t.tables.iter().find(|(s, ..)| *s == sig).unwrap();
        let file = dir.join(format!("{}.dat", sig.to_lowercase()));
        std::fs::write(&file, table(&m, addr.0)).unwrap();
        let out = std::process::Command::new("iasl")
            .arg("-d")
            .arg(&file)
            .current_dir(&dir)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "iasl -d {sig}: {text}");
        for bad in ["Invalid", "Error", "Warning", "incorrect"] {
            assert!(!text.contains(bad), "iasl -d {sig}: {text}");
        }
        let dsl = std::fs::read_to_string(file.with_extension("dsl")).unwrap();
        if sig == "DSDT" {
            for needle in [
                "_S5_",
                "PNP0501",
                "PNP0A08",
                "PNP0C02",
                "_OSC",
                "33db4d5b-1ff7-401c-9657-7441c03dd766",
                "0xDFFFFFFF",
                "0x0000008FFFFFFFFF",
                "0x10000000", // ECAM length in MBRD
            ] {
                assert!(dsl.contains(needle), "{needle} missing from:\n{dsl}");
            }
        }
    }
    std::fs::remove_dir_all(dir).unwrap();
}
