//! Slot behaviour as pciehp drives it.

use super::*;
use crate::interrupt::msi_test_utils::RecordingMsi;
use crate::pci::HostBridge;
use crate::pci::card::FunctionCard;

fn card() -> SharedCard {
    FunctionCard::single(Box::new(HostBridge::new())).shared()
}

/// MSIs sent so far: the port's deferred work runs first, as the root complex runs it
/// once its lock is released.
fn sent(p: &mut RootPort, msi: &RecordingMsi) -> usize {
    p.take_deferred().run();
    msi.count()
}

fn port() -> (RootPort, Arc<RecordingMsi>) {
    let msi = Arc::new(RecordingMsi::default());
    let p = RootPort::new(
        RootPortConfig {
            port_number: 3,
            bus: 3,
            mem_window: (0xc030_0000, 0xc03f_ffff),
            pref_window: (0x80_3000_0000, 0x80_3fff_ffff),
        },
        msi.clone(),
    );
    (p, msi)
}

fn r16(p: &mut RootPort, off: usize) -> u16 {
    let mut b = [0u8; 2];
    p.config_read(off, &mut b);
    u16::from_le_bytes(b)
}

fn w16(p: &mut RootPort, off: usize, v: u16) {
    p.config_write(off, &v.to_le_bytes());
}

fn w32(p: &mut RootPort, off: usize, v: u32) {
    p.config_write(off, &v.to_le_bytes());
}

/// Enables MSI at 0xfee00000 / data 0x4041, as Linux's pcieport does.
fn enable_msi(p: &mut RootPort) -> usize {
    let m = p.config().find_capability(CAP_ID_MSI).unwrap();
    w32(p, m + 4, 0xfee0_0000);
    w32(p, m + 8, 0);
    w16(p, m + 12, 0x4041);
    w16(p, m + 2, 1);
    m
}

fn exp(p: &RootPort) -> usize {
    p.config().find_capability(CAP_ID_EXP).unwrap()
}

/// What pciehp enables with an attention button: ABPE, HPIE, CCIE, DLLSCE.
fn pciehp_enable(p: &mut RootPort) {
    let e = exp(p);
    let ctl = r16(p, e + EXP_SLTCTL);
    w16(
        p,
        e + EXP_SLTCTL,
        ctl | SLTCTL_ABPE | SLTCTL_HPIE | SLTCTL_CCIE | SLTCTL_DLLSCE,
    );
    // Acknowledge the command completion.
    w16(p, e + EXP_SLTSTA, SLTSTA_CC);
}

#[test]
fn header_and_capabilities() {
    let (mut p, _) = port();
    let c = p.config();
    assert_eq!(c.read_u8(HEADER_TYPE), 1);
    assert_eq!(c.read_u16(CLASS_DEVICE), 0x0604);
    assert_eq!(p.bus_range(), (3, 3));
    assert_eq!(c.read_u16(MEMORY_BASE), 0xc030);
    assert_eq!(c.read_u16(MEMORY_LIMIT), 0xc030);
    assert_eq!(c.read_u16(PREF_MEMORY_BASE), 0x3001);
    assert_eq!(c.read_u32(PREF_BASE_UPPER32), 0x80);
    let e = exp(&p);
    let flags = c.read_u16(e + EXP_FLAGS);
    assert_eq!((flags >> 4) & 0xf, EXP_TYPE_ROOT_PORT);
    assert_ne!(flags & EXP_FLAGS_SLOT, 0);
    let sltcap = c.read_u32(e + EXP_SLTCAP);
    assert_ne!(sltcap & SLTCAP_HPC, 0);
    assert_ne!(sltcap & SLTCAP_ABP, 0);
    assert_eq!(sltcap & SLTCAP_NCCS, 0);
    assert_eq!(sltcap >> SLTCAP_PSN_SHIFT, 3);
    assert_ne!(c.read_u32(e + EXP_LNKCAP) & LNKCAP_DLLLARC, 0);
    assert_ne!(c.read_u32(e + EXP_DEVCAP2) & DEVCAP2_ARI, 0);
    assert!(c.find_ext_capability(EXT_CAP_ID_ACS).is_some());
    // ARI forwarding enable.
    assert!(!p.ari_forwarding());
    w16(&mut p, e + EXP_DEVCTL2, DEVCTL2_ARI);
    assert!(p.ari_forwarding());
    // Empty slot: no presence, link down.
    assert_eq!(r16(&mut p, e + EXP_SLTSTA) & SLTSTA_PDS, 0);
    assert_eq!(r16(&mut p, e + EXP_LNKSTA) & LNKSTA_DLLLA, 0);
}

#[test]
fn command_completed_on_every_control_write() {
    let (mut p, msi) = port();
    enable_msi(&mut p);
    let e = exp(&p);
    w16(&mut p, e + EXP_SLTCTL, SLTCTL_HPIE | SLTCTL_CCIE);
    assert_ne!(r16(&mut p, e + EXP_SLTSTA) & SLTSTA_CC, 0);
    assert_eq!(sent(&mut p, &msi), 1, "CC with CCIE and HPIE interrupts");
    assert_eq!(msi.0.lock().unwrap()[0], (0xfee0_0000, 0x4041));
    // Still asserted: a second event does not interrupt again (0 -> 1 rule).
    w16(&mut p, e + EXP_SLTCTL, SLTCTL_HPIE | SLTCTL_CCIE | PIC_ON);
    assert_eq!(sent(&mut p, &msi), 1);
    // Acknowledge, then the next command completion interrupts.
    w16(&mut p, e + EXP_SLTSTA, SLTSTA_CC);
    assert_eq!(r16(&mut p, e + EXP_SLTSTA) & SLTSTA_CC, 0);
    w16(&mut p, e + EXP_SLTCTL, SLTCTL_HPIE | SLTCTL_CCIE | PIC_OFF);
    assert_eq!(sent(&mut p, &msi), 2);
}

#[test]
fn hot_add_then_orderly_removal() {
    let (mut p, msi) = port();
    enable_msi(&mut p);
    pciehp_enable(&mut p);
    let before = sent(&mut p, &msi);
    p.plug(card()).unwrap();
    let e = exp(&p);
    let sta = r16(&mut p, e + EXP_SLTSTA);
    assert_ne!(sta & SLTSTA_PDS, 0);
    assert_ne!(sta & SLTSTA_DLLSC, 0);
    assert_ne!(r16(&mut p, e + EXP_LNKSTA) & LNKSTA_DLLLA, 0);
    assert_eq!(sent(&mut p, &msi), before + 1, "DLLSC interrupts");
    assert!(p.plug(card()).is_err(), "occupied");
    // Guest acknowledges.
    w16(&mut p, e + EXP_SLTSTA, SLTSTA_PDC | SLTSTA_DLLSC);

    // Orderly removal: the button, then the guest's power-off.
    assert!(p.request_eject());
    assert_ne!(r16(&mut p, e + EXP_SLTSTA) & SLTSTA_ABP, 0);
    assert_eq!(sent(&mut p, &msi), before + 2);
    assert!(p.occupied(), "nothing happens before the guest powers off");
    w16(&mut p, e + EXP_SLTSTA, SLTSTA_ABP);
    let ctl = r16(&mut p, e + EXP_SLTCTL);
    w16(
        &mut p,
        e + EXP_SLTCTL,
        (ctl & !SLTCTL_PIC) | PIC_OFF | SLTCTL_PCC,
    );
    assert!(!p.occupied());
    assert_eq!(p.take_events(), vec![HotplugEvent::Ejected]);
    let deferred = p.take_deferred();
    assert_eq!(
        deferred.removed.len(),
        1,
        "the card is dropped outside the lock"
    );
    let sta = r16(&mut p, e + EXP_SLTSTA);
    assert_eq!(sta & SLTSTA_PDS, 0);
    assert_ne!(sta & SLTSTA_DLLSC, 0);
    assert_eq!(r16(&mut p, e + EXP_LNKSTA) & LNKSTA_DLLLA, 0);
}

#[test]
fn surprise_removal() {
    let (mut p, msi) = port();
    enable_msi(&mut p);
    pciehp_enable(&mut p);
    p.plug(card()).unwrap();
    let e = exp(&p);
    w16(&mut p, e + EXP_SLTSTA, SLTSTA_EVENTS);
    let before = sent(&mut p, &msi);
    assert!(p.surprise_remove());
    assert_eq!(sent(&mut p, &msi), before + 1);
    let sta = r16(&mut p, e + EXP_SLTSTA);
    assert_eq!(sta & SLTSTA_PDS, 0);
    assert_ne!(sta & (SLTSTA_PDC | SLTSTA_DLLSC), 0);
    assert!(!p.surprise_remove());
    assert!(!p.request_eject());
}

#[test]
fn masked_msi_is_delivered_on_unmask() {
    let (mut p, msi) = port();
    let m = enable_msi(&mut p);
    w32(&mut p, m + 16, 1);
    let e = exp(&p);
    w16(&mut p, e + EXP_SLTCTL, SLTCTL_HPIE | SLTCTL_CCIE);
    assert_eq!(sent(&mut p, &msi), 0);
    assert_eq!(p.config().read_u32(m + 20), 1, "pending");
    w32(&mut p, m + 16, 0);
    assert_eq!(sent(&mut p, &msi), 1);
    assert_eq!(p.config().read_u32(m + 20), 0);
}

#[test]
fn no_msi_without_hpie_or_enable() {
    let (mut p, msi) = port();
    let e = exp(&p);
    // MSI disabled.
    w16(&mut p, e + EXP_SLTCTL, SLTCTL_HPIE | SLTCTL_CCIE);
    assert_eq!(sent(&mut p, &msi), 0);
    let (mut p, msi) = port();
    enable_msi(&mut p);
    // HPIE clear.
    w16(&mut p, e + EXP_SLTCTL, SLTCTL_CCIE);
    p.plug(card()).unwrap();
    assert_eq!(sent(&mut p, &msi), 0);
    // Setting HPIE with events pending asserts the interrupt.
    w16(&mut p, e + EXP_SLTCTL, SLTCTL_CCIE | SLTCTL_HPIE);
    assert_eq!(sent(&mut p, &msi), 1);
}

/// Registers PCIe fixes at 0 or that the port does not implement read back as such after
/// Linux's probes: no I/O window (the 0xe0f0 probe of `pci_read_bridge_windows` reads 0),
/// latency timers, bridge-control bits PCIe reserves, Retrain Link, CRS visibility and
/// completion timeouts.
#[test]
fn unimplemented_bits_read_zero() {
    let (mut p, _) = port();
    for (reg, probe) in [
        (IO_BASE, 0xe0f0),
        (IO_BASE_UPPER16, 0xffff),
        (IO_LIMIT_UPPER16, 0xffff),
    ] {
        w16(&mut p, reg, probe);
        assert_eq!(r16(&mut p, reg), 0, "register {reg:#x}");
    }
    w16(&mut p, LATENCY_TIMER & !1, 0xff00);
    assert_eq!(r16(&mut p, LATENCY_TIMER & !1) >> 8, 0, "latency timer");
    w16(&mut p, SUBORDINATE_BUS, 0xff03);
    assert_eq!(
        r16(&mut p, SUBORDINATE_BUS),
        0x0003,
        "secondary latency timer"
    );
    w16(&mut p, BRIDGE_CONTROL, 0xffff);
    assert_eq!(r16(&mut p, BRIDGE_CONTROL), 0x005f, "bridge control");
    let e = exp(&p);
    w16(&mut p, e + EXP_LNKCTL, 0xffff);
    assert_eq!(r16(&mut p, e + EXP_LNKCTL) & (1 << 5), 0, "retrain link");
    w16(&mut p, e + EXP_RTCTL, 0xffff);
    assert_eq!(r16(&mut p, e + EXP_RTCTL), 0x000f, "root control");
    w16(&mut p, e + EXP_DEVCTL2, 0xffff);
    assert_eq!(
        r16(&mut p, e + EXP_DEVCTL2),
        DEVCTL2_ARI,
        "device control 2"
    );
    // The windows the VMM programmed are still there.
    assert!(p.forwards(0xc030_0000));
    assert!(p.forwards(0x80_3fff_ffff));
}
