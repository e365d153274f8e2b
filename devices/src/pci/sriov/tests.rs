//! The SR-IOV capability on its own: registers, masks, layout invariants.

use super::*;
use crate::pci::{HeaderType, PciId};
use iommu::RequesterId;
use proptest::prelude::*;

const VF_BAR: Bar = Bar::mem64(16 * 1024, true);

fn endpoint() -> ConfigSpace {
    ConfigSpace::new(
        HeaderType::Endpoint,
        PciId {
            vendor: 0x8086,
            device: 0x10c9,
            class: [2, 0, 0],
            revision: 1,
            subsystem_vendor: 0,
            subsystem: 0,
        },
    )
}

fn build(total: u16) -> (ConfigSpace, SriovCapability) {
    let mut cs = endpoint();
    let cfg = SriovConfig::new(total, 0x10ca)
        .with_vf_bar(0, VF_BAR)
        .with_vf_bar(3, VF_BAR);
    let cap = SriovCapability::add(&mut cs, &cfg).unwrap();
    (cs, cap)
}

/// A guest write through the masks, then the capability's side effects.
fn write(
    cs: &mut ConfigSpace,
    cap: &mut SriovCapability,
    off: usize,
    data: &[u8],
) -> Option<SriovEvent> {
    let at = cap.offset() + off;
    assert!(cs.write(at, data));
    cap.after_write(cs, at, data)
}

fn w16(cs: &mut ConfigSpace, cap: &mut SriovCapability, off: usize, v: u16) -> Option<SriovEvent> {
    write(cs, cap, off, &v.to_le_bytes())
}

fn w32(cs: &mut ConfigSpace, cap: &mut SriovCapability, off: usize, v: u32) -> Option<SriovEvent> {
    write(cs, cap, off, &v.to_le_bytes())
}

fn r16(cs: &ConfigSpace, cap: &SriovCapability, off: usize) -> u16 {
    let mut b = [0; 2];
    cs.read(cap.offset() + off, &mut b);
    u16::from_le_bytes(b)
}

fn r32(cs: &ConfigSpace, cap: &SriovCapability, off: usize) -> u32 {
    let mut b = [0; 4];
    cs.read(cap.offset() + off, &mut b);
    u32::from_le_bytes(b)
}

#[test]
fn registers_after_reset() {
    let (cs, cap) = build(7);
    assert_eq!(cs.find_ext_capability(EXT_CAP_ID_SRIOV), Some(cap.offset()));
    assert_eq!(r32(&cs, &cap, 0) & 0xf_ffff, 0x1_0010, "ID 0x10, version 1");
    assert_eq!(r32(&cs, &cap, SRIOV_CAP), 0, "no VF Migration");
    assert_eq!(r16(&cs, &cap, SRIOV_CTRL), 0);
    assert_eq!(r16(&cs, &cap, SRIOV_STATUS), 0);
    assert_eq!(r16(&cs, &cap, SRIOV_INITIAL_VF), 7);
    assert_eq!(r16(&cs, &cap, SRIOV_TOTAL_VF), 7);
    assert_eq!(r16(&cs, &cap, SRIOV_NUM_VF), 0);
    assert_eq!(cs.read_u8(cap.offset() + SRIOV_FUNC_LINK), 0);
    assert_eq!(r16(&cs, &cap, SRIOV_VF_OFFSET), 1);
    assert_eq!(r16(&cs, &cap, SRIOV_VF_STRIDE), 1);
    assert_eq!(r16(&cs, &cap, SRIOV_VF_DID), 0x10ca);
    assert_eq!(r32(&cs, &cap, SRIOV_SUP_PGSIZE), 0x553);
    assert_eq!(r32(&cs, &cap, SRIOV_SYS_PGSIZE), 1);
    assert_eq!(r32(&cs, &cap, SRIOV_BAR), 0xc, "64-bit prefetchable");
    assert_eq!(r32(&cs, &cap, SRIOV_BAR + 12), 0xc);
    for i in [1, 2, 4, 5] {
        assert_eq!(r32(&cs, &cap, SRIOV_BAR + 4 * i), 0, "BAR{i}");
    }
    assert_eq!(r32(&cs, &cap, SRIOV_VFM), 0);
}

#[test]
fn read_only_fields_ignore_writes() {
    let (mut cs, mut cap) = build(7);
    let ro = [
        SRIOV_CAP,
        SRIOV_STATUS,
        SRIOV_INITIAL_VF,
        SRIOV_FUNC_LINK,
        SRIOV_VF_OFFSET,
        SRIOV_VF_DID - 2,
        SRIOV_SUP_PGSIZE,
        SRIOV_VFM,
    ];
    for off in ro {
        let before = r32(&cs, &cap, off);
        w32(&mut cs, &mut cap, off, 0xffff_ffff);
        assert_eq!(r32(&cs, &cap, off), before, "offset {off:#x}");
    }
    // VF Migration Enable and its interrupt enable are not offered.
    w16(&mut cs, &mut cap, SRIOV_CTRL, CTRL_VFM | CTRL_INTR);
    assert_eq!(r16(&cs, &cap, SRIOV_CTRL), 0);
    // Status (VF Migration Status) stays 0 even written with ones.
    w16(&mut cs, &mut cap, SRIOV_STATUS, 0xffff);
    assert_eq!(r16(&cs, &cap, SRIOV_STATUS), 0);
}

/// Linux `__pci_read_base` on a VF BAR pair: save, write all ones, read, restore.
fn size_bar64(cs: &mut ConfigSpace, cap: &mut SriovCapability, bar: usize) -> (u32, u64) {
    let reg = SRIOV_BAR + 4 * bar;
    let l = r32(cs, cap, reg);
    w32(cs, cap, reg, 0xffff_ffff);
    let sz = r32(cs, cap, reg);
    w32(cs, cap, reg, l);
    let lh = r32(cs, cap, reg + 4);
    w32(cs, cap, reg + 4, 0xffff_ffff);
    let szh = r32(cs, cap, reg + 4);
    w32(cs, cap, reg + 4, lh);
    assert_eq!(r32(cs, cap, reg), l, "restored");
    let mask = (u64::from(szh) << 32) | u64::from(sz & !0xf);
    (sz & 0xf, !mask + 1)
}

#[test]
fn vf_bars_size_like_bars() {
    let (mut cs, mut cap) = build(7);
    assert_eq!(size_bar64(&mut cs, &mut cap, 0), (0xc, 16 * 1024));
    assert_eq!(size_bar64(&mut cs, &mut cap, 3), (0xc, 16 * 1024));
    // Unimplemented slots read 0 after the all-ones write.
    for i in [2, 5] {
        w32(&mut cs, &mut cap, SRIOV_BAR + 4 * i, 0xffff_ffff);
        assert_eq!(r32(&cs, &cap, SRIOV_BAR + 4 * i), 0);
    }
    // A programmed base reads back and places VF k at base + k * 16 KiB.
    w32(&mut cs, &mut cap, SRIOV_BAR, 0x4000_0000);
    w32(&mut cs, &mut cap, SRIOV_BAR + 4, 0x80);
    assert_eq!(r32(&cs, &cap, SRIOV_BAR), 0x4000_000c);
    assert_eq!(cap.vf_bar_base(&cs, 0), Some(0x80_4000_0000));
    assert_eq!(cap.vf_bar_address(&cs, 6, 0), Some(0x80_4001_8000));
    assert_eq!(cap.vf_bar_address(&cs, 0, 1), None, "no BAR1");
}

#[test]
fn system_page_size_resizes_vf_bars() {
    let (mut cs, mut cap) = build(7);
    // 64 KiB pages (bit 4): each VF BAR grows to a page.
    w32(&mut cs, &mut cap, SRIOV_SYS_PGSIZE, 1 << 4);
    assert_eq!(cap.page_size(&cs), 64 * 1024);
    assert_eq!(size_bar64(&mut cs, &mut cap, 0), (0xc, 64 * 1024));
    // 16 KiB (bit 2) is not supported: the write does not stick.
    w32(&mut cs, &mut cap, SRIOV_SYS_PGSIZE, 1 << 2);
    assert_eq!(r32(&cs, &cap, SRIOV_SYS_PGSIZE), 0);
    w32(&mut cs, &mut cap, SRIOV_SYS_PGSIZE, 1);
    assert_eq!(size_bar64(&mut cs, &mut cap, 0), (0xc, 16 * 1024));
}

#[test]
fn enable_freezes_num_vfs_ari_and_page_size() {
    let (mut cs, mut cap) = build(7);
    assert_eq!(w16(&mut cs, &mut cap, SRIOV_NUM_VF, 3), None);
    assert_eq!(
        w16(&mut cs, &mut cap, SRIOV_CTRL, CTRL_VFE | CTRL_MSE),
        Some(SriovEvent::Enabled { num_vfs: 3 })
    );
    assert_eq!(cap.active_vfs(&cs), 3);
    w16(&mut cs, &mut cap, SRIOV_NUM_VF, 5);
    assert_eq!(r16(&cs, &cap, SRIOV_NUM_VF), 3, "NumVFs frozen");
    assert_eq!(
        w16(
            &mut cs,
            &mut cap,
            SRIOV_CTRL,
            CTRL_VFE | CTRL_MSE | CTRL_ARI
        ),
        None
    );
    assert!(!cap.ari_capable(&cs), "ARI frozen");
    w32(&mut cs, &mut cap, SRIOV_SYS_PGSIZE, 1 << 4);
    assert_eq!(r32(&cs, &cap, SRIOV_SYS_PGSIZE), 1, "page size frozen");
    // MSE alone may change.
    w16(&mut cs, &mut cap, SRIOV_CTRL, CTRL_VFE);
    assert!(cap.vf_enabled(&cs) && !cap.vf_memory_enabled(&cs));
    assert_eq!(
        w16(&mut cs, &mut cap, SRIOV_CTRL, 0),
        Some(SriovEvent::Disabled)
    );
    assert_eq!(cap.active_vfs(&cs), 0);
    w16(&mut cs, &mut cap, SRIOV_NUM_VF, 5);
    assert_eq!(r16(&cs, &cap, SRIOV_NUM_VF), 5, "writable again");
}

#[test]
fn num_vfs_above_total_refuses_vf_enable() {
    // QEMU after CVE-2025-54566/54567: NumVFs takes the value, VF Enable does not.
    let (mut cs, mut cap) = build(7);
    w16(&mut cs, &mut cap, SRIOV_NUM_VF, 8);
    assert_eq!(r16(&cs, &cap, SRIOV_NUM_VF), 8);
    assert_eq!(
        w16(&mut cs, &mut cap, SRIOV_CTRL, CTRL_VFE | CTRL_MSE),
        None
    );
    assert!(!cap.vf_enabled(&cs));
    assert_eq!(cap.active_vfs(&cs), 0);
    w16(&mut cs, &mut cap, SRIOV_NUM_VF, 0xffff);
    assert_eq!(w16(&mut cs, &mut cap, SRIOV_CTRL, CTRL_VFE), None);
    w16(&mut cs, &mut cap, SRIOV_NUM_VF, 7);
    assert_eq!(
        w16(&mut cs, &mut cap, SRIOV_CTRL, CTRL_VFE | CTRL_MSE),
        Some(SriovEvent::Enabled { num_vfs: 7 })
    );
}

#[test]
fn ari_capable_hierarchy_moves_the_vfs() {
    let cases = [
        // total, (offset, stride) without ARI, with ARI
        (1, (1, 1), (0x80, 2)),
        (7, (1, 1), (0x80, 2)),
        (8, (0x80, 2), (0x80, 2)),
        (64, (0x80, 2), (0x80, 2)),
        (65, (1, 1), (1, 1)),
        (255, (1, 1), (1, 1)),
    ];
    for (total, plain, ari) in cases {
        let (mut cs, mut cap) = build(total);
        let layout = |cs: &ConfigSpace, cap: &SriovCapability| {
            (r16(cs, cap, SRIOV_VF_OFFSET), r16(cs, cap, SRIOV_VF_STRIDE))
        };
        assert_eq!(layout(&cs, &cap), plain, "total {total} without ARI");
        w16(&mut cs, &mut cap, SRIOV_CTRL, CTRL_ARI);
        assert_eq!(layout(&cs, &cap), ari, "total {total} with ARI");
        w16(&mut cs, &mut cap, SRIOV_CTRL, 0);
        assert_eq!(layout(&cs, &cap), plain, "total {total} back without ARI");
    }
}

#[test]
fn builder_rejects_bad_configs() {
    let mut cs = endpoint();
    for total in [0, 256] {
        assert_eq!(
            SriovCapability::add(&mut cs, &SriovConfig::new(total, 1)).unwrap_err(),
            SriovError::TotalVfs(total)
        );
    }
    let mut cfg = SriovConfig::new(255, 1);
    cfg.pf_devfn = 0x10;
    assert_eq!(
        SriovCapability::add(&mut cs, &cfg).unwrap_err(),
        SriovError::NoLayout {
            pf_devfn: 0x10,
            total_vfs: 255
        }
    );
    let bad_size = [Bar::io(4096), Bar::mem64(2048, false), Bar::mem32(3 * 4096)];
    for bar in bad_size {
        let cfg = SriovConfig::new(7, 1).with_vf_bar(0, bar);
        assert_eq!(
            SriovCapability::add(&mut cs, &cfg).unwrap_err(),
            SriovError::BarSize(bar.size)
        );
    }
    let bad_slot = [
        SriovConfig::new(7, 1).with_vf_bar(5, VF_BAR),
        SriovConfig::new(7, 1).with_vf_bar(6, Bar::mem32(4096)),
        SriovConfig::new(7, 1)
            .with_vf_bar(0, VF_BAR)
            .with_vf_bar(1, Bar::mem32(4096)),
    ];
    for cfg in bad_slot {
        assert!(matches!(
            SriovCapability::add(&mut cs, &cfg),
            Err(SriovError::BarSlot(_))
        ));
    }
    assert_eq!(
        cs.find_ext_capability(EXT_CAP_ID_SRIOV),
        None,
        "nothing added"
    );
}

#[test]
fn decode_routes_to_vf_bar_and_offset() {
    let (mut cs, mut cap) = build(7);
    w32(&mut cs, &mut cap, SRIOV_BAR, 0x1000_0000);
    w32(&mut cs, &mut cap, SRIOV_BAR + 12, 0x2000_0000);
    w16(&mut cs, &mut cap, SRIOV_NUM_VF, 3);
    assert_eq!(cap.decode(&cs, 0x1000_0000, 4), None, "VF Enable clear");
    w16(&mut cs, &mut cap, SRIOV_CTRL, CTRL_VFE);
    assert_eq!(cap.decode(&cs, 0x1000_0000, 4), None, "VF MSE clear");
    w16(&mut cs, &mut cap, SRIOV_CTRL, CTRL_VFE | CTRL_MSE);
    let at = |vf, bar, offset| Some(VfAccess { vf, bar, offset });
    assert_eq!(cap.decode(&cs, 0x1000_8010, 4), at(2, 0, 0x10));
    assert_eq!(cap.decode(&cs, 0x2000_4000, 8), at(1, 3, 0));
    assert_eq!(cap.decode(&cs, 0x1000_3ffc, 4), at(0, 0, 0x3ffc));
    assert_eq!(cap.decode(&cs, 0x1000_3ffe, 4), None, "crosses VF 0 / VF 1");
    assert_eq!(cap.decode(&cs, 0x1000_c000, 4), None, "VF 3 does not exist");
    assert_eq!(cap.decode(&cs, 0x0fff_fffc, 4), None);
}

#[test]
fn vf_index_inverts_vf_devfn() {
    let (mut cs, mut cap) = build(8);
    w16(&mut cs, &mut cap, SRIOV_CTRL, CTRL_ARI);
    w16(&mut cs, &mut cap, SRIOV_NUM_VF, 3);
    assert_eq!(cap.vf_index(&cs, 0x80), None, "VF Enable clear");
    w16(&mut cs, &mut cap, SRIOV_CTRL, CTRL_ARI | CTRL_VFE);
    assert_eq!(cap.vf_index(&cs, 0x80), Some(0));
    assert_eq!(cap.vf_index(&cs, 0x84), Some(2));
    assert_eq!(cap.vf_index(&cs, 0x81), None, "between VFs");
    assert_eq!(cap.vf_index(&cs, 0x86), None, "past NumVFs");
    assert_eq!(cap.vf_index(&cs, 0x00), None, "the PF");
}

/// The invariants Linux checks (`sriov_init`, `compute_max_vf_buses`, `sriov_enable`) and
/// the one this model adds (every VF on the PF's bus), for every NumVFs, read back through
/// the registers as Linux reads them.
fn check_layout(total: u16, ari: bool) -> Result<(), TestCaseError> {
    let (mut cs, mut cap) = build(total);
    w16(
        &mut cs,
        &mut cap,
        SRIOV_CTRL,
        if ari { CTRL_ARI } else { 0 },
    );
    let pf = RequesterId::new(0, 3, 0, 0).unwrap();
    for n in (1..=total).rev() {
        w16(&mut cs, &mut cap, SRIOV_NUM_VF, n);
        let offset = r16(&cs, &cap, SRIOV_VF_OFFSET);
        let stride = r16(&cs, &cap, SRIOV_VF_STRIDE);
        prop_assert!(offset != 0, "offset 0 for {n} of {total}");
        prop_assert!(n == 1 || stride != 0, "stride 0 for {n} of {total}");
        let last = u32::from(offset) + u32::from(n - 1) * u32::from(stride);
        prop_assert!(last <= 255, "VF {n} of {total} leaves the bus: {last:#x}");
        let rid = pf.vf(offset, stride, n - 1).unwrap();
        prop_assert_eq!(rid.bus(), 3);
    }
    w16(&mut cs, &mut cap, SRIOV_NUM_VF, total);
    w16(
        &mut cs,
        &mut cap,
        SRIOV_CTRL,
        CTRL_VFE | if ari { CTRL_ARI } else { 0 },
    );
    let mut owner = [None; 256];
    for k in 0..total {
        let devfn = cap.vf_devfn(&cs, k).unwrap();
        prop_assert_ne!(devfn, 0, "VF {} on the PF", k);
        prop_assert_eq!(owner[usize::from(devfn)].replace(k), None, "shared devfn");
    }
    for devfn in 0..=255u8 {
        prop_assert_eq!(cap.vf_index(&cs, devfn), owner[usize::from(devfn)]);
    }
    Ok(())
}

proptest! {
    #[test]
    fn layout_invariants(total in 1u16..=255, ari in any::<bool>()) {
        check_layout(total, ari)?;
    }
}

#[test]
fn layout_invariants_every_total() {
    for total in 1..=255 {
        for ari in [false, true] {
            check_layout(total, ari).unwrap();
        }
    }
}
