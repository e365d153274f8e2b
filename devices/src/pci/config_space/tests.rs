//! Config space semantics, driven the way Linux drives them.
#![allow(clippy::cast_possible_truncation)] // test data

use super::*;
use crate::pci::capability;

fn endpoint() -> ConfigSpace {
    ConfigSpace::new(
        HeaderType::Endpoint,
        PciId {
            vendor: 0x1af4,
            device: 0x1041,
            class: [0x02, 0x00, 0x00],
            revision: 1,
            subsystem_vendor: 0x1af4,
            subsystem: 0x0001,
        },
    )
}

fn r32(c: &ConfigSpace, off: usize) -> u32 {
    let mut b = [0u8; 4];
    c.read(off, &mut b);
    u32::from_le_bytes(b)
}

fn w32(c: &mut ConfigSpace, off: usize, v: u32) {
    c.write(off, &v.to_le_bytes());
}

fn r16(c: &ConfigSpace, off: usize) -> u16 {
    let mut b = [0u8; 2];
    c.read(off, &mut b);
    u16::from_le_bytes(b)
}

fn w16(c: &mut ConfigSpace, off: usize, v: u16) {
    c.write(off, &v.to_le_bytes());
}

#[test]
fn identity_is_read_only() {
    let mut c = endpoint();
    assert_eq!(r32(&c, 0), 0x1041_1af4);
    w32(&mut c, 0, 0xdead_beef);
    assert_eq!(r32(&c, 0), 0x1041_1af4);
    assert_eq!(r32(&c, 0x08), 0x0200_0001, "class and revision");
    w32(&mut c, 0x08, 0);
    assert_eq!(r32(&c, 0x08), 0x0200_0001);
    assert_eq!(c.read_u8(HEADER_TYPE), 0);
    c.set_multifunction(true);
    assert_eq!(c.read_u8(HEADER_TYPE), 0x80);
}

#[test]
fn command_bits_and_rw1c_status() {
    let mut c = endpoint();
    w16(&mut c, COMMAND, 0xffff);
    assert_eq!(
        r16(&c, COMMAND),
        CMD_IO | CMD_MEMORY | CMD_MASTER | CMD_PARITY | CMD_SERR | CMD_INTX_DISABLE
    );
    // Device sets error bits; writing 0 keeps them, writing 1 clears just those.
    c.set_u16(STATUS, 0x8000 | 0x2000 | STATUS_CAP_LIST);
    w16(&mut c, STATUS, 0);
    assert_eq!(r16(&c, STATUS), 0xa010);
    w16(&mut c, STATUS, 0x8000 | STATUS_CAP_LIST);
    assert_eq!(
        r16(&c, STATUS),
        0x2010,
        "only the written 1 cleared; cap list is RO"
    );
    // A byte write to the upper half of STATUS.
    c.write(STATUS + 1, &[0x20]);
    assert_eq!(r16(&c, STATUS), 0x0010);
}

#[test]
fn bar_sizing_like_linux() {
    let mut c = endpoint();
    c.add_bar(0, Bar::mem32(0x4000)).unwrap();
    c.add_bar(2, Bar::mem64(0x10_0000, true)).unwrap();
    c.add_bar(4, Bar::io(0x20)).unwrap();
    // Linux: save, write all ones, read back the size mask, restore.
    w32(&mut c, BAR0, 0xffff_ffff);
    assert_eq!(r32(&c, BAR0), 0xffff_c000);
    w32(&mut c, BAR0 + 8, 0xffff_ffff);
    w32(&mut c, BAR0 + 12, 0xffff_ffff);
    assert_eq!(r32(&c, BAR0 + 8), 0xfff0_000c, "64-bit prefetchable flags");
    assert_eq!(r32(&c, BAR0 + 12), 0xffff_ffff);
    w32(&mut c, BAR0 + 16, 0xffff_ffff);
    assert_eq!(r32(&c, BAR0 + 16), 0xffff_ffe1, "I/O flag");
    // Unimplemented BARs read 0 and stay 0.
    w32(&mut c, BAR0 + 4, 0xffff_ffff);
    assert_eq!(r32(&c, BAR0 + 4), 0);
    // Program addresses.
    w32(&mut c, BAR0, 0xc000_4000);
    w32(&mut c, BAR0 + 8, 0x4010_0000);
    w32(&mut c, BAR0 + 12, 0x1);
    assert_eq!(c.bar_address(0), Some(0xc000_4000));
    assert_eq!(c.bar_address(2), Some(0x1_4010_0000));
    assert_eq!(c.bar_address(1), None);
    // Unaligned addresses are truncated to the size.
    w32(&mut c, BAR0, 0xc000_4abc);
    assert_eq!(c.bar_address(0), Some(0xc000_4000));
}

#[test]
fn bar_declaration_errors() {
    let mut c = endpoint();
    assert_eq!(
        c.add_bar(5, Bar::mem64(0x1000, false)),
        Err(ConfigError::BarSlot(5))
    );
    assert_eq!(
        c.add_bar(0, Bar::mem32(0x1800)),
        Err(ConfigError::BarSize(0x1800))
    );
    assert_eq!(c.add_bar(0, Bar::mem32(8)), Err(ConfigError::BarSize(8)));
    c.add_bar(0, Bar::mem64(0x1000, false)).unwrap();
    assert_eq!(
        c.add_bar(1, Bar::mem32(0x1000)),
        Err(ConfigError::BarSlot(1))
    );
}

#[test]
fn capability_chains_walk() {
    let mut c = endpoint();
    assert!(c.capabilities().is_empty());
    assert_eq!(r16(&c, STATUS) & STATUS_CAP_LIST, 0);
    let exp = capability::pcie(EXP_TYPE_ENDPOINT, 0, None);
    let a = c.add_capability(&exp.body, &exp.writable).unwrap();
    let msix = capability::msix(
        4,
        capability::MsixLocation { bar: 0, offset: 0 },
        capability::MsixLocation {
            bar: 0,
            offset: 0x800,
        },
    );
    let b = c.add_capability(&msix.body, &msix.writable).unwrap();
    assert_eq!(r16(&c, STATUS) & STATUS_CAP_LIST, STATUS_CAP_LIST);
    assert_eq!(c.read_u8(CAPABILITIES_POINTER) as usize, a);
    assert_eq!(c.capabilities(), vec![(CAP_ID_EXP, a), (CAP_ID_MSIX, b)]);
    assert_eq!(c.find_capability(CAP_ID_MSIX), Some(b));
    // The next pointer and ID are read-only.
    c.write(a, &[0xff, 0xff]);
    assert_eq!(c.capabilities(), vec![(CAP_ID_EXP, a), (CAP_ID_MSIX, b)]);
    // MSI-X: table size N-1 read-only, enable and function mask writable.
    w16(&mut c, b + MSIX_FLAGS, 0xffff);
    assert_eq!(r16(&c, b + MSIX_FLAGS), 0xc003);

    let ari = capability::ari(0);
    let x = c
        .add_ext_capability(EXT_CAP_ID_ARI, 1, &ari.body, &ari.writable)
        .unwrap();
    let acs = capability::acs();
    let y = c
        .add_ext_capability(EXT_CAP_ID_ACS, 1, &acs.body, &acs.writable)
        .unwrap();
    assert_eq!(x, 0x100);
    assert_eq!(
        c.ext_capabilities(),
        vec![(EXT_CAP_ID_ARI, x), (EXT_CAP_ID_ACS, y)]
    );
    assert_eq!(r32(&c, x) >> 20, y as u32, "next pointer");
    assert_eq!((r32(&c, x) >> 16) & 0xf, 1, "version");
    // ACS control writable, capability read-only.
    w32(&mut c, y + 4, 0xffff_ffff);
    assert_eq!(r32(&c, y + 4), 0x001f_001f);
}

#[test]
fn no_ext_caps_reads_zero_header() {
    let c = endpoint();
    assert_eq!(r32(&c, 0x100), 0);
    assert!(c.ext_capabilities().is_empty());
}

#[test]
fn bad_accesses_float_and_change_nothing() {
    let mut c = endpoint();
    let mut three = [0u8; 3];
    c.read(0, &mut three);
    assert_eq!(three, [0xff; 3]);
    let mut b = [0u8; 4];
    c.read(4094, &mut b);
    assert_eq!(b, [0xff; 4]);
    c.read(usize::MAX - 1, &mut b);
    assert_eq!(b, [0xff; 4]);
    assert!(!c.write(4094, &[1, 2, 3, 4]));
    assert!(!c.write(usize::MAX, &[1]));
    assert!(!c.write(COMMAND, &[1, 2, 3]));
    assert_eq!(r16(&c, COMMAND), 0);
}

#[test]
fn capability_overflow_is_an_error() {
    let mut c = endpoint();
    let big = vec![0x09u8; 0x90];
    c.add_capability(&big, &[]).unwrap();
    assert!(matches!(
        c.add_capability(&big, &[]),
        Err(ConfigError::NoRoom { .. })
    ));
}

#[test]
fn bridge_windows() {
    let mut c = ConfigSpace::new(
        HeaderType::Bridge,
        PciId {
            vendor: 1,
            device: 2,
            class: [6, 4, 0],
            revision: 0,
            subsystem_vendor: 0,
            subsystem: 0,
        },
    );
    assert_eq!(c.read_u8(HEADER_TYPE), 1);
    w32(&mut c, PRIMARY_BUS, 0x00ff_0100);
    assert_eq!(r32(&c, PRIMARY_BUS) & 0xff_ffff, 0xff_0100);
    w32(&mut c, MEMORY_BASE, 0xffff_ffff);
    assert_eq!(r32(&c, MEMORY_BASE), 0xfff0_fff0);
    w16(&mut c, PREF_MEMORY_BASE, 0xffff);
    assert_eq!(
        r16(&c, PREF_MEMORY_BASE),
        0xfff1,
        "64-bit prefetchable decode"
    );
    // A bridge has two BARs at most.
    assert_eq!(
        c.add_bar(2, Bar::mem32(0x1000)),
        Err(ConfigError::BarSlot(2))
    );
}
