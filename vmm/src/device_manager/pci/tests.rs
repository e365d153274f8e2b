//! The slot registry without KVM: cards plugged into a real root complex model, the guest's
//! side played through config cycles.

use std::sync::Weak;

use devices::interrupt::MsiSink;
use devices::pci::regs::{CAP_ID_EXP, EXP_SLTCTL, SLTCTL_PCC};
use devices::pci::{
    EcamLayout, FunctionCard, HostBridge, PciDevice, RootComplex, RootPort, RootPortConfig,
};

use super::*;

#[derive(Debug)]
struct NoMsi;

impl MsiSink for NoMsi {
    fn send_msi(&self, _: u64, _: u32) -> std::io::Result<()> {
        Ok(())
    }
}

fn root(ports: u8) -> PciRoot {
    let sink: Arc<dyn MsiSink> = Arc::new(NoMsi);
    let ports = (1..=ports)
        .map(|i| {
            RootPort::new(
                RootPortConfig {
                    port_number: i,
                    bus: i,
                    mem_window: (
                        0xc000_0000 + (u32::from(i) << 20),
                        0xc00f_ffff + (u32::from(i) << 20),
                    ),
                    pref_window: (0x80_0000_0000, 0x80_0fff_ffff),
                },
                sink.clone(),
            )
        })
        .collect();
    PciRoot::new(RootComplex::new(
        EcamLayout {
            base: 0xe000_0000,
            last_bus: 255,
        },
        ports,
        (0xdf00_0000, 0xdfff_ffff),
    ))
}

fn card() -> (SharedCard, Weak<Mutex<dyn devices::pci::PciCard>>) {
    let card = FunctionCard::single(Box::new(HostBridge::new())).shared();
    let weak = Arc::downgrade(&card);
    (card, weak)
}

fn describe(id: &str, port: u8, bus: u8) -> SlotDevice {
    SlotDevice {
        id: id.into(),
        kind: "test".into(),
        port,
        bus,
        mac: None,
        backend: None,
    }
}

/// Adds a card the way the device manager does: choose a port, then plug.
fn add(
    slots: &mut PciSlots,
    id: &str,
    port: Option<u8>,
    cold: bool,
) -> Result<SlotDevice, SlotError> {
    let (index, number, bus) = slots.choose_port(port)?;
    slots.plug(index, card().0, describe(id, number, bus), cold)
}

/// The guest powers slot `port` off, as pciehp does after the attention button.
fn guest_powers_off(pci: &PciRoot, port: u8) {
    let dev = u64::from(port) << 15;
    let exp = pci.with(|rc| {
        rc.ports()[usize::from(port) - 1]
            .config()
            .find_capability(CAP_ID_EXP)
            .unwrap()
    }) as u64;
    pci.ecam_write(dev | (exp + EXP_SLTCTL as u64), &SLTCTL_PCC.to_le_bytes());
}

#[test]
fn plug_list_and_port_choice() {
    let pci = root(3);
    let mut slots = PciSlots::new(pci.clone()).unwrap();
    assert_eq!(add(&mut slots, "a", None, true).unwrap().port, 1);
    assert_eq!(add(&mut slots, "b", Some(3), false).unwrap().port, 3);
    assert!(matches!(
        add(&mut slots, "c", Some(3), false),
        Err(SlotError::Occupied(3))
    ));
    assert!(matches!(
        add(&mut slots, "c", Some(4), false),
        Err(SlotError::NoSuchPort(4))
    ));
    assert!(matches!(
        add(&mut slots, "c", Some(0), false),
        Err(SlotError::NoSuchPort(0))
    ));
    assert_eq!(add(&mut slots, "c", None, false).unwrap().port, 2);
    assert!(matches!(
        add(&mut slots, "d", None, false),
        Err(SlotError::NoFreePort)
    ));
    let list = slots.list();
    let ids: Vec<_> = list
        .iter()
        .map(|s| (s.port, s.device.as_ref().map(|d| d.id.clone())))
        .collect();
    assert_eq!(
        ids,
        vec![
            (1, Some("a".into())),
            (2, Some("c".into())),
            (3, Some("b".into()))
        ]
    );
    assert_eq!(list[2].device.as_ref().unwrap().bus, 3);
}

#[test]
fn orderly_removal_finishes_when_the_guest_powers_off() {
    let pci = root(2);
    let mut slots = PciSlots::new(pci.clone()).unwrap();
    let wakeup = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
    slots.set_wakeup(wakeup.clone());
    let (index, port, bus) = slots.choose_port(None).unwrap();
    let (c, weak) = card();
    slots
        .plug(index, c, describe("net0", port, bus), false)
        .unwrap();
    assert_eq!(slots.remove("net0", false, 7).unwrap(), None);
    assert!(matches!(
        slots.remove("net0", false, 8),
        Err(SlotError::Busy(_))
    ));
    // While pending, the device is still listed and its slot cannot be reused.
    assert!(slots.list()[0].device.is_some());
    assert!(matches!(
        slots.choose_port(Some(1)),
        Err(SlotError::Occupied(1))
    ));
    slots.poll();
    assert!(
        slots.take_finished().is_empty(),
        "nothing before the power-off"
    );
    guest_powers_off(&pci, 1);
    assert!(weak.upgrade().is_none(), "the card goes with the power");
    slots.poll();
    let done = slots.take_finished();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].0, 7);
    assert_eq!(done[0].1.as_ref().unwrap().id, "net0");
    assert_eq!(wakeup.read().unwrap(), 1, "the API is woken");
    assert!(slots.list()[0].device.is_none());
    assert!(matches!(
        slots.remove("net0", false, 9),
        Err(SlotError::NoDevice(_))
    ));
}

#[test]
fn eject_timeout_keeps_the_device() {
    let pci = root(1);
    let mut slots = PciSlots::new(pci).unwrap();
    slots.set_eject_timeout(Duration::ZERO);
    add(&mut slots, "net0", None, false).unwrap();
    assert_eq!(slots.remove("net0", false, 1).unwrap(), None);
    slots.poll();
    let done = slots.take_finished();
    assert!(matches!(
        done[..],
        [(1, Err(SlotError::EjectTimeout(1, _)))]
    ));
    assert_eq!(slots.list()[0].device.as_ref().unwrap().id, "net0");
    // It can be removed again, by surprise this time.
    assert_eq!(slots.remove("net0", true, 2).unwrap().unwrap().id, "net0");
}

#[test]
fn surprise_removal_and_guest_initiated_power_off() {
    let pci = root(2);
    let mut slots = PciSlots::new(pci.clone()).unwrap();
    let (index, port, bus) = slots.choose_port(None).unwrap();
    let (c, weak) = card();
    slots
        .plug(index, c, describe("a", port, bus), false)
        .unwrap();
    assert_eq!(slots.remove("a", true, 1).unwrap().unwrap().id, "a");
    assert!(weak.upgrade().is_none(), "dropped at once");
    assert!(slots.list()[0].device.is_none());
    // A guest that powers a slot off by itself (sysfs) loses the device too.
    add(&mut slots, "b", Some(2), false).unwrap();
    guest_powers_off(&pci, 2);
    slots.poll();
    assert!(slots.list()[1].device.is_none());
    assert!(slots.take_finished().is_empty(), "nobody asked");
}
