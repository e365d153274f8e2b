//! The PF card: a fake VF model, a root complex to plug the card into, and the tests that
//! drive it like Linux (linux.rs), like nicd's API (control.rs) and function by function
//! (functions.rs).

mod control;
mod functions;
mod linux;

use std::sync::{Arc, Mutex};

use super::*;
use crate::interrupt::msi_test_utils::RecordingMsi;
use crate::pci::{EcamLayout, PciRoot, RootComplex, RootPort, RootPortConfig};

/// Everything the fake VF models saw.
#[derive(Debug, Default)]
struct Log {
    created: Vec<u16>,
    live: usize,
    writes: Vec<(u16, usize, u64, Vec<u8>)>,
    flrs: Vec<u16>,
    controls: Vec<(u16, VfControl)>,
}

type SharedLog = Arc<Mutex<Log>>;

/// A VF model that records what reaches it and reads back a value naming itself.
#[derive(Debug)]
struct FakeVf {
    index: u16,
    log: SharedLog,
}

/// What [`FakeVf`] reads: VF index, BAR and offset, so a test sees where a read landed.
fn fake_value(index: u16, bar: usize, offset: u64) -> u64 {
    (u64::from(index) << 40) | ((bar as u64) << 32) | offset
}

impl VfFunction for FakeVf {
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        let v = fake_value(self.index, bar, offset).to_le_bytes();
        let n = data.len().min(8);
        data[..n].copy_from_slice(&v[..n]);
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        let mut log = self.log.lock().unwrap();
        log.writes.push((self.index, bar, offset, data.to_vec()));
    }

    fn flr(&mut self) {
        self.log.lock().unwrap().flrs.push(self.index);
    }

    fn control_changed(&mut self, control: VfControl) {
        self.log
            .lock()
            .unwrap()
            .controls
            .push((self.index, control));
    }
}

impl Drop for FakeVf {
    fn drop(&mut self) {
        self.log.lock().unwrap().live -= 1;
    }
}

#[derive(Debug)]
struct FakeFactory(SharedLog);

impl VfFactory for FakeFactory {
    fn create(&mut self, index: u16) -> Box<dyn VfFunction> {
        let mut log = self.0.lock().unwrap();
        log.created.push(index);
        log.live += 1;
        Box::new(FakeVf {
            index,
            log: self.0.clone(),
        })
    }
}

/// A PF with `total_vfs` VFs and the log of its fake VFs.
fn pf(total_vfs: u16) -> (SriovPf, SharedLog) {
    let log = SharedLog::default();
    let cfg = PfConfig {
        total_vfs,
        ..PfConfig::default()
    };
    let pf = SriovPf::new(cfg, Box::new(FakeFactory(log.clone()))).unwrap();
    (pf, log)
}

/// The secondary bus of the root port the tests plug into.
const BUS: u8 = 1;
/// That port's 64-bit prefetchable window.
const PREF: (u64, u64) = (0x80_0000_0000, 0x80_0fff_ffff);

/// A root complex with one root port (00:01.0, bus 1) and ECAM over buses 0-255.
fn root() -> PciRoot {
    let port = RootPort::new(
        RootPortConfig {
            port_number: 1,
            bus: BUS,
            mem_window: (0xc000_0000, 0xc00f_ffff),
            pref_window: PREF,
        },
        Arc::new(RecordingMsi::default()),
    );
    PciRoot::new(RootComplex::new(
        EcamLayout {
            base: 0xe000_0000,
            last_bus: 255,
        },
        vec![port],
        (0xdf00_0000, 0xdfff_ffff),
    ))
}

/// Config accesses over ECAM, as a guest makes them.
struct Ecam<'a>(&'a PciRoot);

impl Ecam<'_> {
    fn at(bus: u8, devfn: u8, reg: usize) -> u64 {
        (u64::from(bus) << 20) | (u64::from(devfn) << 12) | reg as u64
    }

    fn read<const N: usize>(&self, bus: u8, devfn: u8, reg: usize) -> [u8; N] {
        let mut b = [0; N];
        self.0.ecam_read(Self::at(bus, devfn, reg), &mut b);
        b
    }

    fn r8(&self, bus: u8, devfn: u8, reg: usize) -> u8 {
        self.read::<1>(bus, devfn, reg)[0]
    }

    fn r16(&self, bus: u8, devfn: u8, reg: usize) -> u16 {
        u16::from_le_bytes(self.read(bus, devfn, reg))
    }

    fn r32(&self, bus: u8, devfn: u8, reg: usize) -> u32 {
        u32::from_le_bytes(self.read(bus, devfn, reg))
    }

    fn w16(&self, bus: u8, devfn: u8, reg: usize, v: u16) {
        self.0
            .ecam_write(Self::at(bus, devfn, reg), &v.to_le_bytes());
    }

    fn w32(&self, bus: u8, devfn: u8, reg: usize, v: u32) {
        self.0
            .ecam_write(Self::at(bus, devfn, reg), &v.to_le_bytes());
    }

    /// Linux `pci_find_capability`.
    fn find_cap(&self, bus: u8, devfn: u8, id: u8) -> Option<usize> {
        let mut pos = usize::from(self.r8(bus, devfn, 0x34));
        for _ in 0..48 {
            if pos < 0x40 {
                return None;
            }
            if self.r8(bus, devfn, pos) == id {
                return Some(pos);
            }
            pos = usize::from(self.r8(bus, devfn, pos + 1) & !3);
        }
        None
    }

    /// Linux `pci_find_ext_capability`.
    fn find_ext_cap(&self, bus: u8, devfn: u8, id: u16) -> Option<usize> {
        let mut pos = 0x100;
        for _ in 0..480 {
            let header = self.r32(bus, devfn, pos);
            if header == 0 || header == 0xffff_ffff {
                return None;
            }
            if header & 0xffff == u32::from(id) {
                return Some(pos);
            }
            pos = (header >> 20) as usize & !3;
            if pos < 0x100 {
                return None;
            }
        }
        None
    }
}
