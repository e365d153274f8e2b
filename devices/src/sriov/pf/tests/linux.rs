//! Linux 6.12's PCI core against the PF card, config cycle by config cycle, through the
//! root complex: `pci_configure_ari`, `sriov_init` (with `compute_max_vf_buses`),
//! `sriov_enable` with `pci_iov_add_virtfn` for each VF, then `sriov_disable`.

use super::*;
use crate::pci::regs::*;
use crate::pci::sriov::*;
use iommu::RequesterId;

/// The root port, 00:01.0.
const PORT: u8 = 0x08;

/// What `sriov_init` keeps in `struct pci_sriov`.
#[derive(Debug)]
struct Iov {
    pos: usize,
    total: u16,
    ctrl: u16,
    barsz: [u64; 6],
    offset: u16,
    stride: u16,
}

/// `pci_configure_ari` for the PF at devfn 0: ARI Forwarding on in the port if it offers
/// it and the PF has the ARI capability.
fn configure_ari(ecam: &Ecam<'_>) {
    let exp = ecam.find_cap(0, PORT, CAP_ID_EXP).unwrap();
    assert_ne!(ecam.r32(0, PORT, exp + EXP_DEVCAP2) & DEVCAP2_ARI, 0);
    assert!(ecam.find_ext_cap(BUS, 0, EXT_CAP_ID_ARI).is_some());
    let ctl2 = ecam.r16(0, PORT, exp + EXP_DEVCTL2);
    ecam.w16(0, PORT, exp + EXP_DEVCTL2, ctl2 | DEVCTL2_ARI);
}

/// `virtfn_bus` / `virtfn_devfn` (`pci_iov_virtfn_bus/devfn`).
fn virtfn(offset: u16, stride: u16, id: u16) -> (u8, u8) {
    let rid = u32::from(offset) + u32::from(stride) * u32::from(id);
    let [_, _, bus, devfn] = rid.to_be_bytes();
    (BUS + bus, devfn)
}

/// `__pci_read_base` on VF BAR `i`: returns (flags, size, is 64-bit); size 0 if absent.
fn read_base(ecam: &Ecam<'_>, reg: usize) -> (u32, u64, bool) {
    let l = ecam.r32(BUS, 0, reg);
    ecam.w32(BUS, 0, reg, l | 0xffff_ffff);
    let mut sz = ecam.r32(BUS, 0, reg);
    ecam.w32(BUS, 0, reg, l);
    if sz == 0xffff_ffff {
        sz = 0;
    }
    let bar64 = l & 0x7 == 0x4;
    let mut mask = u64::from(sz & !0xf);
    if bar64 {
        let lh = ecam.r32(BUS, 0, reg + 4);
        ecam.w32(BUS, 0, reg + 4, 0xffff_ffff);
        let szh = ecam.r32(BUS, 0, reg + 4);
        ecam.w32(BUS, 0, reg + 4, lh);
        mask |= u64::from(szh) << 32;
    }
    let size = if mask == 0 { 0 } else { !mask + 1 };
    (l & 0xf, size, bar64)
}

/// `sriov_init` (ECAM, PF at devfn 0 of bus 1), `ari` being `pci_ari_enabled(bus)`.
fn sriov_init(ecam: &Ecam<'_>, ari: bool) -> Iov {
    let pos = ecam.find_ext_cap(BUS, 0, EXT_CAP_ID_SRIOV).unwrap();
    let ctrl = ecam.r16(BUS, 0, pos + SRIOV_CTRL);
    assert_eq!(ctrl & CTRL_VFE, 0, "VF Enable clear at boot");
    let ctrl = if ari { CTRL_ARI } else { 0 };
    ecam.w16(BUS, 0, pos + SRIOV_CTRL, ctrl);
    let total = ecam.r16(BUS, 0, pos + SRIOV_TOTAL_VF);
    assert_ne!(total, 0);
    // PAGE_SHIFT 12: the lowest supported size of at least 4 KiB.
    let pgsz = ecam.r32(BUS, 0, pos + SRIOV_SUP_PGSIZE);
    assert_ne!(pgsz, 0, "-EIO");
    let pgsz = pgsz & !(pgsz - 1);
    assert_eq!(pgsz, 1);
    ecam.w32(BUS, 0, pos + SRIOV_SYS_PGSIZE, pgsz);
    let mut barsz = [0; 6];
    let mut i = 0;
    while i < 6 {
        let (flags, size, bar64) = read_base(ecam, pos + SRIOV_BAR + 4 * i);
        if size != 0 {
            assert_eq!(size % 4096, 0, "-EIO: VF BAR {i} not a page multiple");
            assert_eq!(flags, 0xc, "VF BAR {i}: 64-bit prefetchable memory");
            barsz[i] = size;
        }
        i += 1 + usize::from(bar64);
    }
    assert_eq!(ecam.r16(BUS, 0, pos + SRIOV_VF_DID), VF_DEVICE_ID);
    assert_eq!(ecam.r32(BUS, 0, pos + SRIOV_CAP), 0, "no VF Migration");
    assert_eq!(ecam.r8(BUS, 0, pos + SRIOV_FUNC_LINK), 0, "link to itself");
    let mut iov = Iov {
        pos,
        total,
        ctrl,
        barsz,
        offset: 0,
        stride: 0,
    };
    // compute_max_vf_buses.
    for n in (1..=total).rev() {
        set_numvfs(ecam, &mut iov, n);
        assert!(
            iov.offset != 0 && (n == 1 || iov.stride != 0),
            "-EIO at {n}"
        );
        assert_eq!(virtfn(iov.offset, iov.stride, n - 1).0, BUS, "VF bus");
    }
    set_numvfs(ecam, &mut iov, 0);
    iov
}

/// `pci_iov_set_numvfs`.
fn set_numvfs(ecam: &Ecam<'_>, iov: &mut Iov, n: u16) {
    ecam.w16(BUS, 0, iov.pos + SRIOV_NUM_VF, n);
    iov.offset = ecam.r16(BUS, 0, iov.pos + SRIOV_VF_OFFSET);
    iov.stride = ecam.r16(BUS, 0, iov.pos + SRIOV_VF_STRIDE);
}

/// Resource assignment then `pci_update_resource` for each VF BAR: windows of
/// size x TotalVFs from `base`, each aligned to its own power-of-two size. Returns the
/// bases.
fn assign_vf_bars(ecam: &Ecam<'_>, iov: &Iov, mut base: u64) -> [u64; 6] {
    let mut bases = [0; 6];
    for (i, size) in iov.barsz.iter().enumerate().filter(|(_, s)| **s != 0) {
        let window = size * u64::from(iov.total);
        base = base.next_multiple_of(window.next_power_of_two());
        let reg = iov.pos + SRIOV_BAR + 4 * i;
        ecam.w32(BUS, 0, reg, ((base & 0xffff_ffff) as u32) | 0xc);
        ecam.w32(BUS, 0, reg + 4, (base >> 32) as u32);
        bases[i] = base;
        base += window;
    }
    bases
}

/// `sriov_enable(dev, nr)` up to the Control write; returns the VFs' (bus, devfn).
fn sriov_enable(ecam: &Ecam<'_>, iov: &mut Iov, nr: u16) -> Vec<(u8, u8)> {
    let initial = ecam.r16(BUS, 0, iov.pos + SRIOV_INITIAL_VF);
    assert_eq!(
        initial, iov.total,
        "-EIO: InitialVFs != TotalVFs without VF Migration"
    );
    assert!(nr <= initial);
    assert_eq!(
        virtfn(iov.offset, iov.stride, nr - 1).0,
        BUS,
        "bus out of range"
    );
    // pci_enable_resources: memory decoding on.
    let cmd = ecam.r16(BUS, 0, COMMAND);
    ecam.w16(BUS, 0, COMMAND, cmd | CMD_MEMORY);
    set_numvfs(ecam, iov, nr);
    iov.ctrl |= CTRL_VFE | CTRL_MSE;
    ecam.w16(BUS, 0, iov.pos + SRIOV_CTRL, iov.ctrl);
    (0..nr)
        .map(|id| virtfn(iov.offset, iov.stride, id))
        .collect()
}

/// `pci_iov_add_virtfn`'s config reads of VF `id` at (bus, devfn), as `pci_setup_device`
/// and the capability walks do them, and what Linux requires of the answers.
fn probe_vf(ecam: &Ecam<'_>, id: u16, (bus, devfn): (u8, u8)) {
    if id == 0 {
        // pci_read_vf_config_common: class, revision, header type, subsystem from VF 0.
        assert_eq!(ecam.r32(bus, devfn, REVISION_ID), 0x0200_0001);
        assert_eq!(ecam.r8(bus, devfn, HEADER_TYPE) & 0x7f, 0);
        assert_eq!(ecam.r16(bus, devfn, SUBSYSTEM_VENDOR_ID), VENDOR_INTEL);
        assert_eq!(ecam.r16(bus, devfn, SUBSYSTEM_ID), INTEL_SUBSYSTEM_ID);
    }
    assert_eq!(ecam.r32(bus, devfn, VENDOR_ID), 0xffff_ffff, "raw VF IDs");
    assert_ne!(ecam.r16(bus, devfn, COMMAND), 0xffff, "pci_dev_wait");
    assert_eq!(ecam.r32(bus, devfn, BAR0), 0, "VF BARs read 0");
    assert_eq!(ecam.r8(bus, devfn, INTERRUPT_PIN), 0, "no INTx");
    let exp = ecam
        .find_cap(bus, devfn, CAP_ID_EXP)
        .expect("PCIe capability");
    assert_eq!(
        (ecam.r16(bus, devfn, exp + EXP_FLAGS) >> 4) & 0xf,
        EXP_TYPE_ENDPOINT
    );
    assert_ne!(
        ecam.r32(bus, devfn, exp + EXP_DEVCAP) & DEVCAP_FLR,
        0,
        "FLR"
    );
    let msix = ecam.find_cap(bus, devfn, CAP_ID_MSIX).expect("MSI-X");
    assert_eq!(
        ecam.r16(bus, devfn, msix + MSIX_FLAGS) & 0x7ff,
        2,
        "3 vectors"
    );
    assert_eq!(
        ecam.r32(bus, devfn, msix + MSIX_TABLE),
        3,
        "table at BAR3 + 0"
    );
    assert_eq!(
        ecam.r32(bus, devfn, msix + MSIX_PBA),
        0x2003,
        "PBA at BAR3 + 0x2000"
    );
}

/// The whole cycle for a PF with `total` VFs, all enabled.
fn linux_sriov_cycle(total: u16, layout: (u16, u16)) {
    let rc = root();
    let (card, log) = pf(total);
    rc.plug_cold(0, card.shared()).unwrap();
    let ecam = Ecam(&rc);
    assert_eq!(ecam.r32(BUS, 0, VENDOR_ID), 0x10c9_8086);
    assert_eq!(ecam.r32(BUS, 0, REVISION_ID), 0x0200_0001);

    configure_ari(&ecam);
    assert!(rc.with(|rc| rc.ports()[0].ari_forwarding()));
    let mut iov = sriov_init(&ecam, true);
    assert_eq!(iov.total, total);
    assert_eq!(iov.barsz, [16384, 0, 0, 16384, 0, 0]);
    assert_eq!((iov.offset, iov.stride), layout);
    assert!(log.lock().unwrap().created.is_empty(), "no VFs yet");

    let bases = assign_vf_bars(&ecam, &iov, PREF.0 + 0x0800_0000);
    let vfs = sriov_enable(&ecam, &mut iov, total);
    assert_eq!(
        ecam.r16(BUS, 0, iov.pos + SRIOV_CTRL),
        CTRL_ARI | CTRL_VFE | CTRL_MSE
    );
    assert_eq!(log.lock().unwrap().created, (0..total).collect::<Vec<_>>());

    // Enumeration, and the routing IDs the IOMMU will see.
    let pf_rid = RequesterId::new(0, BUS, 0, 0).unwrap();
    let mut taken = [false; 256];
    taken[0] = true;
    for (id, &(bus, devfn)) in (0..total).zip(&vfs) {
        probe_vf(&ecam, id, (bus, devfn));
        let rid = pf_rid.vf(iov.offset, iov.stride, id).unwrap();
        assert_eq!(
            rid,
            RequesterId::from_routing_id(0, u16::from_be_bytes([bus, devfn]))
        );
        assert!(!std::mem::replace(&mut taken[usize::from(devfn)], true));
    }
    for devfn in (0..=255u8).filter(|d| !taken[usize::from(*d)]) {
        assert_eq!(
            ecam.r32(BUS, devfn, REVISION_ID),
            0xffff_ffff,
            "devfn {devfn:#x}"
        );
    }

    // VF k's BARs sit at base + k * 16 KiB and reach VF k's model.
    for k in 0..total {
        let at = |bar: usize, off: u64| bases[bar] + u64::from(k) * 16384 + off;
        assert!(rc.mmio_write(at(0, 0x1520), &u32::from(k).to_le_bytes()));
        let mut b = [0; 8];
        assert!(rc.mmio_read(at(3, 8), &mut b));
        assert_eq!(u64::from_le_bytes(b), fake_value(k, 3, 8));
    }
    let writes = log.lock().unwrap().writes.clone();
    let expected: Vec<_> = (0..total)
        .map(|k| (k, 0, 0x1520, u32::from(k).to_le_bytes().to_vec()))
        .collect();
    assert_eq!(writes, expected);
    let past = bases[3] + u64::from(total) * 16384;
    let mut b = [0; 4];
    assert!(!rc.mmio_read(past, &mut b), "past the last VF");

    // sriov_disable: VF Enable and VF MSE clear, then NumVFs 0.
    iov.ctrl &= !(CTRL_VFE | CTRL_MSE);
    ecam.w16(BUS, 0, iov.pos + SRIOV_CTRL, iov.ctrl);
    set_numvfs(&ecam, &mut iov, 0);
    assert_eq!(log.lock().unwrap().live, 0, "VF models dropped");
    let (bus, devfn) = vfs[0];
    assert_eq!(ecam.r32(bus, devfn, REVISION_ID), 0xffff_ffff);
    assert!(!rc.mmio_read(bases[0], &mut b));
    assert_eq!(ecam.r32(BUS, 0, VENDOR_ID), 0x10c9_8086, "the PF stays");
}

#[test]
fn linux_enables_7_vfs() {
    // QEMU's igb layout: VFs at 01:10.0, 01:10.2, ... 01:11.4.
    linux_sriov_cycle(7, (0x80, 2));
}

#[test]
fn linux_enables_64_vfs() {
    linux_sriov_cycle(64, (0x80, 2));
}

#[test]
fn linux_enables_255_vfs() {
    linux_sriov_cycle(255, (1, 1));
}

#[test]
fn without_ari_forwarding_7_vfs_sit_in_device_0() {
    let rc = root();
    let (card, log) = pf(7);
    rc.plug_cold(0, card.shared()).unwrap();
    let ecam = Ecam(&rc);
    let mut iov = sriov_init(&ecam, false);
    assert_eq!((iov.offset, iov.stride), (1, 1));
    assign_vf_bars(&ecam, &iov, PREF.0);
    let vfs = sriov_enable(&ecam, &mut iov, 7);
    assert_eq!(vfs, (1..=7).map(|f| (BUS, f)).collect::<Vec<_>>());
    for (id, vf) in (0..7).zip(vfs) {
        probe_vf(&ecam, id, vf);
    }
    assert_eq!(log.lock().unwrap().live, 7);
}

#[test]
fn without_ari_forwarding_8_vfs_are_out_of_reach() {
    // Eight VFs do not fit in device 0: they keep the ARI layout, which only a port with
    // ARI Forwarding lets through (hardware would put them on the next bus instead).
    let rc = root();
    let (card, _log) = pf(8);
    rc.plug_cold(0, card.shared()).unwrap();
    let ecam = Ecam(&rc);
    let mut iov = sriov_init(&ecam, false);
    assert_eq!((iov.offset, iov.stride), (0x80, 2));
    assign_vf_bars(&ecam, &iov, PREF.0);
    let vfs = sriov_enable(&ecam, &mut iov, 8);
    assert_eq!(ecam.r32(vfs[0].0, vfs[0].1, REVISION_ID), 0xffff_ffff);
    configure_ari(&ecam);
    assert_eq!(ecam.r32(vfs[0].0, vfs[0].1, REVISION_ID), 0x0200_0001);
}
