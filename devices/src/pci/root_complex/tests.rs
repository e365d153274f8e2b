//! Config cycles through ECAM and 0xCF8/0xCFC.
#![allow(clippy::cast_possible_truncation)] // test data

use super::*;
use crate::interrupt::msi_test_utils::RecordingMsi;
use crate::pci::regs::*;
use crate::pci::{RootPort, RootPortConfig};
use std::sync::Arc;

fn complex(ports: u8) -> PciRoot {
    complex_with_sink(ports, Arc::new(RecordingMsi::default()))
}

fn complex_with_sink(ports: u8, msi: Arc<dyn crate::interrupt::MsiSink>) -> PciRoot {
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
                msi.clone(),
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

fn card(device: impl crate::pci::PciDevice + 'static) -> SharedCard {
    crate::pci::FunctionCard::single(Box::new(device)).shared()
}

fn ecam32(rc: &PciRoot, bus: u8, dev: u8, func: u8, reg: u64) -> u32 {
    let off = (u64::from(bus) << 20) | (u64::from(dev) << 15) | (u64::from(func) << 12) | reg;
    let mut b = [0u8; 4];
    rc.ecam_read(off, &mut b);
    u32::from_le_bytes(b)
}

fn cf8_read32(rc: &PciRoot, bus: u8, dev: u8, func: u8, reg: u8) -> u32 {
    let addr = 0x8000_0000
        | (u32::from(bus) << 16)
        | (u32::from(dev) << 11)
        | (u32::from(func) << 8)
        | u32::from(reg);
    rc.pio_write(0, &addr.to_le_bytes());
    let mut b = [0u8; 4];
    rc.pio_read(4, &mut b);
    u32::from_le_bytes(b)
}

#[test]
fn enumerates_bus_0() {
    let rc = complex(2);
    assert_eq!(ecam32(&rc, 0, 0, 0, 0), 0x0008_1b36, "host bridge");
    assert_eq!(ecam32(&rc, 0, 0, 0, 8) >> 8, 0x06_0000);
    assert_eq!(ecam32(&rc, 0, 1, 0, 0), 0x000c_1b36, "root port");
    assert_eq!(ecam32(&rc, 0, 2, 0, 0), 0x000c_1b36);
    assert_eq!(ecam32(&rc, 0, 3, 0, 0), 0xffff_ffff, "no device 3");
    assert_eq!(ecam32(&rc, 0, 1, 1, 0), 0xffff_ffff, "single function");
    // Empty slot behind port 1.
    assert_eq!(ecam32(&rc, 1, 0, 0, 0), 0xffff_ffff);
    // Extended config reachable through ECAM: ACS header of the root port.
    assert_eq!(
        ecam32(&rc, 0, 1, 0, 0x100) & 0xffff,
        u32::from(EXT_CAP_ID_ACS)
    );
}

#[test]
fn legacy_and_ecam_are_coherent() {
    let rc = complex(1);
    assert_eq!(cf8_read32(&rc, 0, 1, 0, 0), 0x000c_1b36);
    // Write the root port's COMMAND through 0xCFC (byte access at 0xCFC+0), read via ECAM.
    let addr: u32 = 0x8000_0000 | (1 << 11) | COMMAND as u32;
    rc.pio_write(0, &addr.to_le_bytes());
    rc.pio_write(4, &[0x06]);
    assert_eq!(ecam32(&rc, 0, 1, 0, COMMAND as u64) & 0xffff, 0x6);
    // A 16-bit access at 0xCFE reaches offset + 2 (STATUS).
    let mut st = [0u8; 2];
    rc.pio_read(6, &mut st);
    assert_eq!(u16::from_le_bytes(st) & STATUS_CAP_LIST, STATUS_CAP_LIST);
    // The address register reads back without its reserved bits.
    rc.pio_write(0, &0xffff_ffffu32.to_le_bytes());
    let mut a = [0u8; 4];
    rc.pio_read(0, &mut a);
    assert_eq!(u32::from_le_bytes(a), 0x80ff_fffc);
    // Disabled: data reads all ones.
    rc.pio_write(0, &0u32.to_le_bytes());
    rc.pio_read(4, &mut a);
    assert_eq!(a, [0xff; 4]);
}

#[test]
fn slot_device_and_bus_routing() {
    let rc = complex(2);
    rc.with(|rc| rc.ports_mut()[1].plug_cold(card(crate::pci::HostBridge::new())))
        .unwrap();
    assert_eq!(ecam32(&rc, 2, 0, 0, 0), 0x0008_1b36, "device behind port 2");
    assert_eq!(ecam32(&rc, 2, 1, 0, 0), 0xffff_ffff, "device 1 on a link");
    assert_eq!(ecam32(&rc, 1, 0, 0, 0), 0xffff_ffff, "port 1 is empty");
    // The guest renumbers port 2's secondary bus to 5.
    let off = (2u64 << 15) | SECONDARY_BUS as u64;
    rc.ecam_write(off, &[5]);
    rc.ecam_write((2u64 << 15) | SUBORDINATE_BUS as u64, &[5]);
    assert_eq!(ecam32(&rc, 5, 0, 0, 0), 0x0008_1b36);
    assert_eq!(ecam32(&rc, 2, 0, 0, 0), 0xffff_ffff);
}

#[test]
fn malformed_accesses() {
    let rc = complex(1);
    let mut b = [0u8; 8];
    rc.ecam_read(0, &mut b);
    assert_eq!(b, [0xff; 8]);
    let mut b = [0u8; 4];
    rc.ecam_read(256 << 20, &mut b);
    assert_eq!(b, [0xff; 4]);
    rc.ecam_write(u64::MAX, &[1]);
    rc.ecam_write(0, &[1, 2, 3]);
    // 0xCFF with a 4-byte access crosses the data port: all ones.
    rc.pio_write(0, &0x8000_0000u32.to_le_bytes());
    rc.pio_read(7, &mut b);
    assert_eq!(b, [0xff; 4]);
    rc.pio_read(1, &mut b);
    assert_eq!(b, [0xff; 4]);
}

/// An endpoint with a 32-bit and a 64-bit prefetchable BAR that echoes offsets.
#[derive(Debug)]
struct BarDevice {
    config: crate::pci::ConfigSpace,
    writes: Vec<(usize, u64, Vec<u8>)>,
}

impl BarDevice {
    fn new() -> Self {
        let mut config = crate::pci::ConfigSpace::new(
            crate::pci::HeaderType::Endpoint,
            crate::pci::PciId {
                vendor: 0x1af4,
                device: 0x1041,
                class: [2, 0, 0],
                revision: 1,
                subsystem_vendor: 0,
                subsystem: 0,
            },
        );
        config.add_bar(0, crate::pci::Bar::mem32(0x1000)).unwrap();
        config
            .add_bar(2, crate::pci::Bar::mem64(0x4000, true))
            .unwrap();
        Self {
            config,
            writes: Vec::new(),
        }
    }
}

impl crate::pci::PciDevice for BarDevice {
    fn config(&self) -> &crate::pci::ConfigSpace {
        &self.config
    }
    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.config.write(offset, data);
    }
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        data.fill(0);
        data[0] = bar as u8;
        data[1] = offset as u8;
    }
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        self.writes.push((bar, offset, data.to_vec()));
    }
}

#[test]
fn cold_plug_assigns_bars_and_routes_mmio() {
    let rc = complex(2);
    assert_eq!(rc.with(|r| r.free_port()), Some(0));
    rc.plug_cold(1, card(BarDevice::new())).unwrap();
    assert_eq!(rc.with(|r| r.free_port()), Some(0));
    assert_eq!(
        rc.plug_cold(1, card(BarDevice::new())),
        Err(PlugError::Occupied(1))
    );
    assert_eq!(
        rc.plug_cold(9, card(BarDevice::new())),
        Err(PlugError::NoSuchPort(9))
    );
    // Port 2's windows: 32-bit at 0xc020_0000, prefetchable at 0x80_0000_0000.
    let bar0 = ecam32(&rc, 2, 0, 0, BAR0 as u64);
    assert_eq!(bar0, 0xc020_0000);
    let bar2 = u64::from(ecam32(&rc, 2, 0, 0, BAR0 as u64 + 8) & !0xf)
        | (u64::from(ecam32(&rc, 2, 0, 0, BAR0 as u64 + 12)) << 32);
    assert_eq!(bar2, 0x80_0000_0000);
    assert_ne!(
        ecam32(&rc, 2, 0, 0, COMMAND as u64) & u32::from(CMD_MEMORY),
        0
    );
    let mut b = [0u8; 4];
    assert!(rc.mmio_read(0xc020_0010, &mut b));
    assert_eq!(&b[..2], &[0, 0x10]);
    assert!(rc.mmio_read(0x80_0000_3ffc, &mut b));
    assert_eq!(&b[..2], &[2, 0xfc]);
    assert!(!rc.mmio_read(0xc020_1000, &mut b), "past BAR 0");
    assert!(
        !rc.mmio_read(0x80_0000_3ffe, &mut b),
        "straddles the end of BAR 2"
    );
    assert!(
        !rc.mmio_read(0xc010_0000, &mut b),
        "port 1's window, empty slot"
    );
    // Memory decoding off in the device: nothing claims it.
    let cmd_off = (2u64 << 20) | COMMAND as u64;
    rc.ecam_write(cmd_off, &0u16.to_le_bytes());
    assert!(!rc.mmio_read(0xc020_0010, &mut b));
    rc.ecam_write(cmd_off, &CMD_MEMORY.to_le_bytes());
    assert!(rc.mmio_write(0xc020_0004, &[7]));
    // The port stops forwarding when its window is moved away.
    let mem_base = (2u64 << 15) | MEMORY_BASE as u64;
    rc.ecam_write(mem_base, &0xd000u16.to_le_bytes());
    assert!(!rc.mmio_read(0xc020_0010, &mut b));
}

/// A 32-bit BAR offered an address above 4 GiB is refused, not programmed truncated; a
/// 64-bit BAR takes it in both halves.
#[test]
fn a_32_bit_bar_is_not_placed_above_4_gib() {
    let c = card(BarDevice::new());
    let high = 0x1_c000_0000;
    assert_eq!(
        lock(&c).assign_bars(&mut |_| Some(high)),
        Err(crate::pci::card::BarError::Above4G(high))
    );
    let mut next = [0xc000_0000, 0x80_0000_0000].into_iter();
    lock(&c).assign_bars(&mut |_| next.next()).unwrap();
    let mut b = [0u8; 8];
    lock(&c).config_read(0, BAR0 + 8, &mut b[..4]);
    lock(&c).config_read(0, BAR0 + 12, &mut b[4..]);
    assert_eq!(u64::from_le_bytes(b) & !0xf, 0x80_0000_0000);
}

#[test]
fn root_bus_endpoints() {
    let rc = complex(2);
    assert_eq!(
        rc.add_root_device(2, card(BarDevice::new())),
        Err(PlugError::Occupied(2)),
        "device 2 is a root port"
    );
    rc.add_root_device(31, card(BarDevice::new())).unwrap();
    assert_eq!(ecam32(&rc, 0, 31, 0, 0), 0x1041_1af4);
    assert_eq!(ecam32(&rc, 0, 31, 0, BAR0 as u64), 0xdf00_0000);
    let mut b = [0u8; 4];
    assert!(rc.mmio_read(0xdf00_0008, &mut b));
    assert_eq!(&b[..2], &[0, 8]);
    assert!(!rc.mmio_read(0xdfff_0000, &mut b));
}

/// An endpoint whose vendor/device ID says which function it is.
fn function(device: u16) -> Box<dyn crate::pci::PciDevice> {
    let mut d = BarDevice::new();
    d.config.set_u16(DEVICE_ID, device);
    Box::new(d)
}

/// A card with functions 0, 1 and 9 behind port 1: without ARI forwarding functions 0-7 of
/// device 0 answer (function 9 is device 1, which a link does not have); with ARI forwarding,
/// devfn 9 is function 9. BARs of every function are assigned at cold plug and decode.
#[test]
fn multi_function_cards_and_ari() {
    let rc = complex(1);
    let multi = crate::pci::FunctionCard::multi(vec![
        (0, function(0x100)),
        (1, function(0x101)),
        (9, function(0x109)),
    ])
    .unwrap()
    .shared();
    rc.plug_cold(0, multi).unwrap();
    assert_eq!(ecam32(&rc, 1, 0, 0, 0) >> 16, 0x100);
    assert_eq!(ecam32(&rc, 1, 0, 1, 0) >> 16, 0x101);
    assert_eq!(ecam32(&rc, 1, 0, 2, 0), 0xffff_ffff, "no function 2");
    assert_eq!(ecam32(&rc, 1, 1, 1, 0), 0xffff_ffff, "device 1 without ARI");
    // Every function got its own BARs in the port's window, and each decodes.
    let bars: Vec<u32> = [(0, 0), (0, 1), (1, 1)]
        .iter()
        .map(|&(dev, func)| ecam32(&rc, 1, dev, func, BAR0 as u64))
        .collect();
    assert_eq!(bars, vec![0xc010_0000, 0xc010_1000, 0xffff_ffff]);
    let mut b = [0u8; 4];
    assert!(rc.mmio_read(0xc010_1004, &mut b));
    assert_eq!(&b[..2], &[0, 4]);
    // ARI forwarding on in the port (Device Control 2): devfn 9 reaches function 9.
    let exp = rc.with(|r| r.ports()[0].config().find_capability(CAP_ID_EXP).unwrap());
    let devctl2 = (1u64 << 15) | (exp + EXP_DEVCTL2) as u64;
    rc.ecam_write(devctl2, &DEVCTL2_ARI.to_le_bytes());
    assert_eq!(ecam32(&rc, 1, 1, 1, 0) >> 16, 0x109);
    assert_eq!(ecam32(&rc, 1, 1, 1, BAR0 as u64), 0xc010_2000);
    assert_eq!(ecam32(&rc, 1, 31, 7, 0), 0xffff_ffff, "function 255 absent");
    // A card without function 0 cannot be built.
    assert!(crate::pci::FunctionCard::multi(vec![(1, function(1))]).is_none());
}

/// A card that blocks in its config read until told to go on, the way a function served by
/// a stalled peer would.
#[derive(Debug)]
struct StallingCard {
    entered: std::sync::mpsc::Sender<()>,
    release: std::sync::mpsc::Receiver<()>,
}

impl crate::pci::PciCard for StallingCard {
    fn has_function(&self, devfn: u8) -> bool {
        devfn == 0
    }
    fn config_read(&mut self, _: u8, _: usize, data: &mut [u8]) {
        let _ = self.entered.send(());
        let _ = self.release.recv();
        data.fill(0x5a);
    }
    fn config_write(&mut self, _: u8, _: usize, _: &[u8]) {}
    fn mmio_read(&mut self, _: u64, _: &mut [u8]) -> bool {
        false
    }
    fn mmio_write(&mut self, _: u64, _: &[u8]) -> bool {
        false
    }
    fn assign_bars(
        &mut self,
        _: &mut dyn FnMut(crate::pci::Bar) -> Option<u64>,
    ) -> Result<(), crate::pci::card::BarError> {
        Ok(())
    }
    fn pause(&mut self) {}
    fn resume(&mut self) {}
    fn is_paused(&self) -> bool {
        true
    }
}

/// While one vCPU waits on a stalled card, another reaches the host bridge, the root ports
/// and the other slots: the root complex's lock is not held across a card access.
#[test]
fn a_stalled_card_does_not_stall_the_bus() {
    let rc = complex(2);
    let (entered_tx, entered) = std::sync::mpsc::channel();
    let (release, release_rx) = std::sync::mpsc::channel();
    let stalling: SharedCard = Arc::new(std::sync::Mutex::new(StallingCard {
        entered: entered_tx,
        release: release_rx,
    }));
    rc.plug_cold(0, stalling).unwrap();
    rc.plug_cold(1, card(BarDevice::new())).unwrap();
    let stalled = {
        let rc = rc.clone();
        std::thread::spawn(move || ecam32(&rc, 1, 0, 0, 0))
    };
    entered.recv().unwrap();
    assert_eq!(ecam32(&rc, 0, 0, 0, 0), 0x0008_1b36, "host bridge");
    assert_eq!(ecam32(&rc, 0, 1, 0, 0), 0x000c_1b36, "root port");
    assert_eq!(ecam32(&rc, 2, 0, 0, 0), 0x1041_1af4, "the other slot");
    let mut b = [0u8; 4];
    assert!(rc.mmio_read(0xc020_0010, &mut b), "the other slot's BAR");
    release.send(()).unwrap();
    assert_eq!(stalled.join().unwrap(), 0x5a5a_5a5a);
}

/// Records whether the root complex's lock was free when an MSI went out.
#[derive(Debug, Default)]
struct LockProbe {
    rc: std::sync::OnceLock<PciRoot>,
    free: std::sync::Mutex<Vec<bool>>,
}

impl crate::interrupt::MsiSink for LockProbe {
    fn send_msi(&self, _: u64, _: u32) -> std::io::Result<()> {
        let free = self.rc.get().is_some_and(|rc| rc.0.try_lock().is_ok());
        self.free.lock().unwrap().push(free);
        Ok(())
    }
}

/// Root-port MSIs (hotplug events) leave after the root complex's lock is released, and so
/// do cards a slot lets go.
#[test]
fn port_msis_are_sent_outside_the_lock() {
    let probe = Arc::new(LockProbe::default());
    let rc = complex_with_sink(1, probe.clone());
    probe.rc.set(rc.clone()).unwrap();
    let port = 1u64 << 15;
    let msi = rc.with(|r| r.ports()[0].config().find_capability(CAP_ID_MSI).unwrap()) as u64;
    let exp = rc.with(|r| r.ports()[0].config().find_capability(CAP_ID_EXP).unwrap()) as u64;
    rc.ecam_write(port | (msi + 4), &0xfee0_0000u32.to_le_bytes());
    rc.ecam_write(port | (msi + 12), &0x4041u16.to_le_bytes());
    rc.ecam_write(port | (msi + 2), &1u16.to_le_bytes());
    // Command Completed with CCIE and HPIE: an MSI from a guest config write.
    rc.ecam_write(
        port | (exp + EXP_SLTCTL as u64),
        &(SLTCTL_HPIE | SLTCTL_CCIE | SLTCTL_PDCE).to_le_bytes(),
    );
    rc.ecam_write(port | (exp + EXP_SLTSTA as u64), &SLTSTA_CC.to_le_bytes());
    // Presence change from a hot-add by the VMM.
    let device = card(BarDevice::new());
    let weak = Arc::downgrade(&device);
    rc.with(|r| r.ports_mut()[0].plug(device)).unwrap();
    assert_eq!(*probe.free.lock().unwrap(), vec![true, true]);
    // Surprise removal: the card is gone once `with` returns.
    rc.with(|r| r.ports_mut()[0].surprise_remove());
    assert!(weak.upgrade().is_none());
}
