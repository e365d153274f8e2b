//! The PF and VF functions one by one: identity, COMMAND, FLR, direct BAR access, bounds.

use super::*;
use crate::pci::regs::*;
use crate::pci::sriov::{CTRL_MSE, CTRL_VFE, SRIOV_BAR, SRIOV_CTRL, SRIOV_NUM_VF};

fn cfg_r32(pf: &mut SriovPf, devfn: u8, reg: usize) -> u32 {
    let mut b = [0; 4];
    pf.config_read(devfn, reg, &mut b);
    u32::from_le_bytes(b)
}

fn cfg_w16(pf: &mut SriovPf, devfn: u8, reg: usize, v: u16) {
    pf.config_write(devfn, reg, &v.to_le_bytes());
}

#[test]
fn pf_identity_and_capabilities() {
    let (pf, _log) = pf(8);
    let cs = pf.pf_config();
    assert_eq!(
        (cs.read_u16(VENDOR_ID), cs.read_u16(DEVICE_ID)),
        (0x8086, 0x10c9)
    );
    assert_eq!(cs.read_u32(REVISION_ID), 0x0200_0001);
    let exp = cs.find_capability(CAP_ID_EXP).unwrap();
    assert_eq!((cs.read_u16(exp + EXP_FLAGS) >> 4) & 0xf, EXP_TYPE_ENDPOINT);
    assert_ne!(cs.read_u32(exp + EXP_DEVCAP) & DEVCAP_FLR, 0);
    let msix = cs.find_capability(CAP_ID_MSIX).unwrap();
    assert_eq!(cs.read_u16(msix + MSIX_FLAGS) & 0x7ff, PF_MSIX_VECTORS - 1);
    assert_eq!(cs.read_u32(msix + MSIX_TABLE), u32::from(PF_BAR_MSIX));
    let ext: Vec<u16> = cs
        .ext_capabilities()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(ext, [EXT_CAP_ID_ARI, EXT_CAP_ID_SRIOV]);
    assert_eq!(cs.bar(0).map(|b| b.size), Some(PF_REGS_SIZE));
    assert_eq!(cs.bar(3).map(|b| b.size), Some(PF_MSIX_SIZE));
    assert_eq!(pf.sriov().total_vfs(), 8);
}

#[test]
fn firmware_places_pf_bars_and_vf_windows() {
    let rc = root();
    let (card, _log) = pf(255);
    rc.plug_cold(0, card.shared()).unwrap();
    // The VF windows (4080 KiB each, in 4 MiB slots) land in the 64-bit window.
    let ecam = Ecam(&rc);
    let pos = ecam
        .find_ext_cap(BUS, 0, crate::pci::regs::EXT_CAP_ID_SRIOV)
        .unwrap();
    let base = |i: usize| {
        u64::from(ecam.r32(BUS, 0, pos + SRIOV_BAR + 4 * i) & !0xf)
            | (u64::from(ecam.r32(BUS, 0, pos + SRIOV_BAR + 4 * i + 4)) << 32)
    };
    let (b0, b3) = (base(0), base(3));
    for b in [b0, b3] {
        assert!(PREF.0 <= b && b + 255 * 16384 <= PREF.1, "{b:#x}");
        assert_eq!(b % (4 << 20), 0);
    }
    assert!(b0.abs_diff(b3) >= 4 << 20, "no overlap");
    assert_ne!(ecam.r16(BUS, 0, COMMAND) & CMD_MEMORY, 0);
    assert_eq!(
        ecam.r16(BUS, 0, pos + SRIOV_CTRL) & CTRL_VFE,
        0,
        "VFs stay off"
    );
}

#[test]
fn pf_bar_registers_read_zero() {
    let rc = root();
    let (card, _log) = pf(8);
    let card = Arc::new(Mutex::new(card));
    rc.plug_cold(0, card.clone()).unwrap();
    let bar0 = Ecam(&rc).r32(BUS, 0, BAR0) & !0xf;
    let mut b = [0xaa; 4];
    assert!(rc.mmio_read(u64::from(bar0) + 8, &mut b));
    assert_eq!(b, [0; 4]);
    assert!(rc.mmio_write(u64::from(bar0), &[1, 2, 3, 4]));
    assert_eq!(card.lock().unwrap().registers_mut().dropped_writes(), 1);
}

#[test]
fn vf_command_keeps_bus_master_only() {
    let (mut pf, log) = pf(8);
    pf.set_num_vfs(2).unwrap();
    let devfn = pf.vf_devfn(1).unwrap();
    cfg_w16(
        &mut pf,
        devfn,
        COMMAND,
        CMD_IO | CMD_MEMORY | CMD_MASTER | CMD_INTX_DISABLE,
    );
    assert_eq!(
        cfg_r32(&mut pf, devfn, COMMAND) & 0xffff,
        u32::from(CMD_MASTER)
    );
    let msix = pf
        .vf_config(1)
        .unwrap()
        .find_capability(CAP_ID_MSIX)
        .unwrap();
    cfg_w16(
        &mut pf,
        devfn,
        msix + MSIX_FLAGS,
        MSIX_FLAGS_ENABLE | MSIX_FLAGS_MASKALL,
    );
    let controls = log.lock().unwrap().controls.clone();
    let on = |msix_enabled, msix_masked| VfControl {
        bus_master: true,
        msix_enabled,
        msix_masked,
    };
    assert_eq!(controls, [(1, on(false, false)), (1, on(true, true))]);
    assert_eq!(pf.vf_control(1), Some(on(true, true)));
    assert_eq!(
        pf.vf_control(0),
        Some(VfControl::default()),
        "VF 0 untouched"
    );
}

#[test]
fn vf_flr_resets_config_and_model() {
    let (mut pf, log) = pf(8);
    pf.set_num_vfs(3).unwrap();
    let devfn = pf.vf_devfn(2).unwrap();
    cfg_w16(&mut pf, devfn, COMMAND, CMD_MASTER);
    let exp = pf
        .vf_config(2)
        .unwrap()
        .find_capability(CAP_ID_EXP)
        .unwrap();
    let devctl = pf.vf_config(2).unwrap().read_u16(exp + EXP_DEVCTL);
    cfg_w16(&mut pf, devfn, exp + EXP_DEVCTL, devctl | DEVCTL_BCR_FLR);
    assert_eq!(log.lock().unwrap().flrs, [2]);
    assert_eq!(
        cfg_r32(&mut pf, devfn, COMMAND) & 0xffff,
        0,
        "bus master off"
    );
    let devctl = pf.vf_config(2).unwrap().read_u16(exp + EXP_DEVCTL);
    assert_eq!(devctl & DEVCTL_BCR_FLR, 0, "Initiate FLR reads 0");
    assert_eq!(pf.num_vfs(), 3, "the VF stays");
}

#[test]
fn pf_flr_takes_the_vfs_away() {
    let (mut pf, log) = pf(8);
    let cap = pf.sriov().offset();
    cfg_w16(&mut pf, 0, cap + SRIOV_BAR, 0xc000);
    pf.set_num_vfs(5).unwrap();
    let exp = pf.pf_config().find_capability(CAP_ID_EXP).unwrap();
    cfg_w16(&mut pf, 0, exp + EXP_DEVCTL, DEVCTL_BCR_FLR);
    assert_eq!(pf.num_vfs(), 0);
    assert_eq!(log.lock().unwrap().live, 0);
    let cs = pf.pf_config();
    assert_eq!(cs.read_u16(cap + SRIOV_CTRL), 0);
    assert_eq!(cs.read_u16(cap + SRIOV_NUM_VF), 0);
    assert_eq!(cs.read_u32(cap + SRIOV_BAR), 0xc, "VF BAR back to reset");
    assert!(!pf.has_function(0x80));
    pf.set_num_vfs(1).unwrap();
}

#[test]
fn guest_num_vfs_above_total_creates_nothing() {
    let (mut pf, log) = pf(8);
    let cap = pf.sriov().offset();
    cfg_w16(&mut pf, 0, cap + SRIOV_NUM_VF, 0xffff);
    cfg_w16(&mut pf, 0, cap + SRIOV_CTRL, CTRL_VFE | CTRL_MSE);
    assert_eq!(pf.num_vfs(), 0);
    assert!(log.lock().unwrap().created.is_empty());
    assert!((1..=255).all(|d| !pf.has_function(d)));
}

#[test]
fn direct_vf_bar_access_is_bounded() {
    let (mut pf, log) = pf(8);
    let cap = pf.sriov().offset();
    pf.config_write(0, cap + SRIOV_BAR + 12, &0x4000_0000u32.to_le_bytes());
    pf.set_num_vfs(2).unwrap();
    assert_eq!(pf.vf_bar_address(1, 3), Some(0x4000_4000));
    assert_eq!(pf.vf_bar_address(2, 3), None, "no VF 2");
    assert_eq!(pf.vf_bar_address(1, 2), None, "no BAR 2");
    let mut b = [0; 4];
    assert!(pf.vf_bar_read(1, 0, 0x3ffc, &mut b));
    assert_eq!(
        u64::from(u32::from_le_bytes(b)),
        fake_value(1, 0, 0x3ffc) & 0xffff_ffff
    );
    assert!(!pf.vf_bar_read(1, 0, 0x3ffe, &mut b), "crosses the BAR end");
    assert_eq!(b, [0xff; 4]);
    assert!(!pf.vf_bar_read(2, 0, 0, &mut b), "no VF 2");
    assert!(!pf.vf_bar_read(0, 1, 0, &mut b), "no BAR 1");
    assert!(pf.vf_bar_write(0, 3, 0x10, &[1]));
    assert!(!pf.vf_bar_write(0, 3, 0x4000, &[1]));
    assert_eq!(log.lock().unwrap().writes, [(0, 3, 0x10, vec![1])]);
    assert!(!pf.vf_config_read(2, 0, &mut b));
    assert!(!pf.vf_config_write(2, 4, &[4]));
    assert!(pf.vf_config_read(0, 8, &mut b));
    assert_eq!(u32::from_le_bytes(b), 0x0200_0001);
}

#[test]
fn vf_mmio_needs_vf_mse() {
    let rc = root();
    let (card, _log) = pf(8);
    rc.plug_cold(0, card.shared()).unwrap();
    let ecam = Ecam(&rc);
    let pos = ecam.find_ext_cap(BUS, 0, EXT_CAP_ID_SRIOV).unwrap();
    let base = u64::from(ecam.r32(BUS, 0, pos + SRIOV_BAR) & !0xf)
        | (u64::from(ecam.r32(BUS, 0, pos + SRIOV_BAR + 4)) << 32);
    ecam.w16(BUS, 0, pos + SRIOV_NUM_VF, 2);
    ecam.w16(BUS, 0, pos + SRIOV_CTRL, CTRL_VFE);
    let mut b = [0; 4];
    assert!(!rc.mmio_read(base, &mut b), "VF MSE clear");
    ecam.w16(BUS, 0, pos + SRIOV_CTRL, CTRL_VFE | CTRL_MSE);
    assert!(rc.mmio_read(base + 16384, &mut b));
    assert_eq!(
        u64::from(u32::from_le_bytes(b)),
        fake_value(1, 0, 0) & 0xffff_ffff
    );
}
