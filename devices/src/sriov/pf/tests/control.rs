//! nicd as the PF driver: `set_num_vfs` with the sequence and errors of `sriov_numvfs`.

use super::*;
use crate::pci::sriov::{CTRL_ARI, CTRL_MSE, CTRL_VFE, SRIOV_CTRL, SRIOV_NUM_VF};

fn ctrl(pf: &SriovPf) -> u16 {
    pf.sriov().control(pf.pf_config())
}

fn num_vfs_reg(pf: &SriovPf) -> u16 {
    pf.pf_config().read_u16(pf.sriov().offset() + SRIOV_NUM_VF)
}

#[test]
fn enable_change_and_disable_like_sriov_numvfs() {
    let (mut pf, log) = pf(8);
    pf.set_num_vfs(4).unwrap();
    assert_eq!(pf.num_vfs(), 4);
    assert_eq!(ctrl(&pf), CTRL_VFE | CTRL_MSE);
    assert_eq!(num_vfs_reg(&pf), 4);
    assert_eq!(log.lock().unwrap().created, [0, 1, 2, 3]);

    pf.set_num_vfs(4).unwrap();
    assert_eq!(
        log.lock().unwrap().created.len(),
        4,
        "same count: nothing happens"
    );

    let busy = pf.set_num_vfs(5).unwrap_err();
    assert_eq!(
        busy,
        NumVfsError::Busy {
            enabled: 4,
            requested: 5
        }
    );
    assert_eq!(busy.errno(), libc::EBUSY);
    assert_eq!(pf.num_vfs(), 4, "the VFs stay");

    let range = pf.set_num_vfs(9).unwrap_err();
    assert_eq!(
        range,
        NumVfsError::OutOfRange {
            requested: 9,
            total: 8
        }
    );
    assert_eq!(range.errno(), libc::ERANGE);

    pf.set_num_vfs(0).unwrap();
    assert_eq!(pf.num_vfs(), 0);
    assert_eq!(ctrl(&pf), 0);
    assert_eq!(num_vfs_reg(&pf), 0);
    assert_eq!(log.lock().unwrap().live, 0);

    pf.set_num_vfs(8).unwrap();
    assert_eq!(pf.num_vfs(), 8);
    assert_eq!(log.lock().unwrap().live, 8);
}

#[test]
fn keeps_ari_capable_hierarchy() {
    let (mut pf, _log) = pf(8);
    let at = pf.sriov().offset() + SRIOV_CTRL;
    pf.config_write(PF_DEVFN, at, &CTRL_ARI.to_le_bytes());
    pf.set_num_vfs(2).unwrap();
    assert_eq!(ctrl(&pf), CTRL_ARI | CTRL_VFE | CTRL_MSE);
    assert_eq!([pf.vf_devfn(0), pf.vf_devfn(1)], [Some(0x80), Some(0x82)]);
    assert_eq!(pf.vf_devfn(2), None);
    pf.set_num_vfs(0).unwrap();
    assert_eq!(ctrl(&pf), CTRL_ARI);
}

#[test]
fn vfs_a_guest_enabled_are_busy() {
    let (mut pf, _log) = pf(8);
    let cap = pf.sriov().offset();
    pf.config_write(PF_DEVFN, cap + SRIOV_NUM_VF, &2u16.to_le_bytes());
    pf.config_write(PF_DEVFN, cap + SRIOV_CTRL, &CTRL_VFE.to_le_bytes());
    assert_eq!(pf.num_vfs(), 2);
    assert!(matches!(
        pf.set_num_vfs(3),
        Err(NumVfsError::Busy { enabled: 2, .. })
    ));
    pf.set_num_vfs(2).unwrap();

    // VF Enable with NumVFs 0 is enabled too: 0 clears it.
    pf.set_num_vfs(0).unwrap();
    pf.config_write(PF_DEVFN, cap + SRIOV_CTRL, &CTRL_VFE.to_le_bytes());
    assert!(matches!(
        pf.set_num_vfs(1),
        Err(NumVfsError::Busy { enabled: 0, .. })
    ));
    pf.set_num_vfs(0).unwrap();
    pf.set_num_vfs(1).unwrap();
    assert_eq!(pf.num_vfs(), 1);
}
