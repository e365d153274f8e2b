//! The transport driven as Linux's virtio_pci_modern driver drives it.
#![allow(clippy::cast_possible_truncation)] // test data

use super::*;
use crate::GuestMemory;
use crate::interrupt::msi_test_utils::RecordingMsi;
use crate::virtio::ActivateError;
use vm_memory::{Bytes, GuestAddress};

/// A test device: one queue; on notify it marks every chain used with length 7.
#[derive(Debug, Default)]
struct Fixture {
    ctx: Option<ActivateContext>,
    notified: Vec<u16>,
    resets: usize,
    events: Vec<Arc<vmm_sys_util::eventfd::EventFd>>,
}

impl VirtioDevice for Fixture {
    fn device_type(&self) -> u16 {
        1
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 16]
    }
    fn features(&self) -> u64 {
        1 << 5 // VIRTIO_NET_F_MAC
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::virtio::read_config_bytes(&[1, 2, 3, 4, 5, 6], offset, data);
    }
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if !ctx.queues[0].ready() {
            return Err(ActivateError::Queue(0));
        }
        self.ctx = Some(ctx);
        Ok(())
    }
    fn queue_notify(&mut self, queue: u16) {
        self.notified.push(queue);
        let Some(ctx) = &mut self.ctx else { return };
        let q = &mut ctx.queues[usize::from(queue)];
        let mem = ctx.mem.clone();
        while let Some(chain) = q.pop_descriptor_chain(&mem) {
            q.add_used(&mem, chain.head_index(), 7).unwrap();
        }
        ctx.interrupt.signal_queue(queue);
    }
    fn queue_events(&self) -> Vec<Arc<vmm_sys_util::eventfd::EventFd>> {
        self.events.clone()
    }
    fn reset(&mut self) {
        self.ctx = None;
        self.resets += 1;
    }
}

/// Records doorbell placements.
#[derive(Debug, Default)]
struct Doorbells(std::sync::Mutex<Vec<(bool, u64)>>);

impl crate::interrupt::DoorbellRegistry for Doorbells {
    fn register(&self, addr: u64, _evt: &vmm_sys_util::eventfd::EventFd) -> std::io::Result<()> {
        self.0.lock().unwrap().push((true, addr));
        Ok(())
    }
    fn unregister(&self, addr: u64, _evt: &vmm_sys_util::eventfd::EventFd) -> std::io::Result<()> {
        self.0.lock().unwrap().push((false, addr));
        Ok(())
    }
}

#[test]
fn doorbells_follow_bar_0() {
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let evt = || Arc::new(vmm_sys_util::eventfd::EventFd::new(0).unwrap());
    let fixture = Fixture {
        events: vec![evt(), evt()],
        ..Default::default()
    };
    let bells = Arc::new(Doorbells::default());
    let mut dev = VirtioPciDevice::new(
        Box::new(fixture),
        mem,
        crate::interrupt::MsixDelivery::Signal(Arc::new(RecordingMsi::default())),
        Some(bells.clone()),
    );
    dev.config_write(BAR0, &0xc000_0000u32.to_le_bytes());
    assert!(
        bells.0.lock().unwrap().is_empty(),
        "memory decoding still off"
    );
    dev.config_write(COMMAND, &CMD_MEMORY.to_le_bytes());
    assert_eq!(
        *bells.0.lock().unwrap(),
        vec![(true, 0xc000_3000), (true, 0xc000_3004)]
    );
    // Moving the BAR moves the doorbells.
    dev.config_write(BAR0, &0xc001_0000u32.to_le_bytes());
    assert_eq!(
        bells.0.lock().unwrap()[2..],
        [
            (false, 0xc000_3000),
            (false, 0xc000_3004),
            (true, 0xc001_3000),
            (true, 0xc001_3004)
        ]
    );
    // Dropping the device removes them.
    drop(dev);
    let log = bells.0.lock().unwrap();
    assert_eq!(log[6..], [(false, 0xc001_3000), (false, 0xc001_3004)]);
}

struct Setup {
    dev: VirtioPciDevice,
    msi: Arc<RecordingMsi>,
    mem: GuestMemory,
}

fn setup() -> Setup {
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let msi = Arc::new(RecordingMsi::default());
    let dev = VirtioPciDevice::new(
        Box::new(Fixture::default()),
        mem.clone(),
        crate::interrupt::MsixDelivery::Signal(msi.clone()),
        None,
    );
    Setup { dev, msi, mem }
}

fn rd(d: &mut VirtioPciDevice, off: u64, len: usize) -> u64 {
    let mut b = [0u8; 8];
    d.bar_read(0, off, &mut b[..len]);
    u64::from_le_bytes(b)
}

fn wr(d: &mut VirtioPciDevice, off: u64, len: usize, v: u64) {
    d.bar_write(0, off, &v.to_le_bytes()[..len]);
}

fn cfg16(d: &mut VirtioPciDevice, off: usize) -> u16 {
    let mut b = [0u8; 2];
    d.config_read(off, &mut b);
    u16::from_le_bytes(b)
}

/// Negotiates features and sets queue 0 up at 0x1000/0x2000/0x3000 with vector 1.
fn bring_up(d: &mut VirtioPciDevice) {
    wr(d, 0x14, 1, u64::from(status::ACKNOWLEDGE | status::DRIVER));
    wr(d, 0x08, 4, 0);
    wr(d, 0x0c, 4, 1 << 5);
    wr(d, 0x08, 4, 1);
    wr(d, 0x0c, 4, 1); // VERSION_1
    wr(
        d,
        0x14,
        1,
        u64::from(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK),
    );
    assert_ne!(rd(d, 0x14, 1) as u8 & status::FEATURES_OK, 0);
    wr(d, 0x16, 2, 0);
    assert_eq!(rd(d, 0x18, 2), 16, "max size");
    wr(d, 0x18, 2, 8);
    wr(d, 0x20, 4, 0x1000);
    wr(d, 0x24, 4, 0);
    wr(d, 0x28, 8, 0x2000);
    wr(d, 0x30, 4, 0x3000);
    wr(d, 0x1a, 2, 1);
    assert_eq!(rd(d, 0x1a, 2), 1);
    wr(d, 0x1c, 2, 1);
    wr(d, 0x10, 2, 0);
    // MSI-X: enable, program vector 1.
    let cap = d.config().find_capability(CAP_ID_MSIX).unwrap();
    d.config_write(cap + 2, &MSIX_FLAGS_ENABLE.to_le_bytes());
    wr(d, MSIX_TABLE_OFFSET + 16, 4, 0xfee0_0000);
    wr(d, MSIX_TABLE_OFFSET + 24, 4, 0x4050);
    wr(d, MSIX_TABLE_OFFSET + 28, 4, 0);
    wr(
        d,
        0x14,
        1,
        u64::from(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK),
    );
}

#[test]
fn pci_identity_and_capabilities() {
    let Setup { mut dev, .. } = setup();
    let c = dev.config();
    assert_eq!(c.read_u16(VENDOR_ID), 0x1af4);
    assert_eq!(c.read_u16(DEVICE_ID), 0x1041);
    assert_eq!(c.read_u8(REVISION_ID), 1);
    let vendor_caps: Vec<u8> = c
        .capabilities()
        .iter()
        .filter(|(id, _)| *id == CAP_ID_VNDR)
        .map(|(_, off)| c.read_u8(off + 3))
        .collect();
    assert_eq!(
        vendor_caps,
        vec![CAP_COMMON, CAP_ISR, CAP_DEVICE, CAP_NOTIFY]
    );
    let notify = c
        .capabilities()
        .iter()
        .find(|(id, off)| *id == CAP_ID_VNDR && c.read_u8(off + 3) == CAP_NOTIFY)
        .unwrap()
        .1;
    assert_eq!(c.read_u32(notify + 16), NOTIFY_MULTIPLIER);
    let msix = c.find_capability(CAP_ID_MSIX).unwrap();
    assert_eq!(
        c.read_u16(msix + 2) & 0x7ff,
        2,
        "3 vectors: 2 queues + config"
    );
    assert!(c.find_capability(CAP_ID_EXP).is_some());
    // BAR 0 sizes to 32 KiB.
    dev.config_write(BAR0, &0xffff_ffffu32.to_le_bytes());
    let mut b = [0u8; 4];
    dev.config_read(BAR0, &mut b);
    assert_eq!(u32::from_le_bytes(b), !(BAR_SIZE as u32 - 1));
    assert_eq!(cfg16(&mut dev, STATUS) & STATUS_CAP_LIST, STATUS_CAP_LIST);
}

#[test]
fn feature_negotiation() {
    let Setup { mut dev, .. } = setup();
    wr(&mut dev, 0x00, 4, 1);
    assert_eq!(rd(&mut dev, 0x04, 4), 1, "VERSION_1 in the high word");
    wr(&mut dev, 0x00, 4, 0);
    assert_eq!(rd(&mut dev, 0x04, 4), 1 << 5);
    // A driver that does not accept VERSION_1 does not get FEATURES_OK.
    wr(&mut dev, 0x14, 1, u64::from(status::FEATURES_OK));
    assert_eq!(rd(&mut dev, 0x14, 1) as u8 & status::FEATURES_OK, 0);
    // Nor one that accepts something never offered.
    wr(&mut dev, 0x08, 4, 1);
    wr(&mut dev, 0x0c, 4, 1 | 2);
    wr(&mut dev, 0x14, 1, u64::from(status::FEATURES_OK));
    assert_eq!(rd(&mut dev, 0x14, 1) as u8 & status::FEATURES_OK, 0);
    assert_eq!(rd(&mut dev, 0x12, 2), 2, "num_queues");
    // Device config.
    assert_eq!(rd(&mut dev, DEVICE_OFFSET, 4), 0x0403_0201);
    assert_eq!(rd(&mut dev, DEVICE_OFFSET + 4, 4), 0x0605);
}

#[test]
fn queue_round_trip_with_msix() {
    let Setup { mut dev, msi, mem } = setup();
    bring_up(&mut dev);
    // One descriptor at 0x1000 pointing at 0x8000, in the avail ring at 0x2000.
    mem.write_obj(0x8000u64, GuestAddress(0x1000)).unwrap();
    mem.write_obj(64u32, GuestAddress(0x1008)).unwrap();
    mem.write_obj(2u16, GuestAddress(0x100c)).unwrap(); // WRITE
    mem.write_obj(0u16, GuestAddress(0x2004)).unwrap(); // ring[0] = desc 0
    mem.write_obj(1u16, GuestAddress(0x2002)).unwrap(); // avail idx
    wr(&mut dev, NOTIFY_OFFSET, 2, 0);
    assert_eq!(
        mem.read_obj::<u16>(GuestAddress(0x3002)).unwrap(),
        1,
        "used idx"
    );
    assert_eq!(
        mem.read_obj::<u32>(GuestAddress(0x3008)).unwrap(),
        7,
        "used len"
    );
    assert_eq!(msi.0.lock().unwrap().as_slice(), &[(0xfee0_0000, 0x4050)]);
    assert_eq!(rd(&mut dev, ISR_OFFSET, 1), 1, "ISR queue bit");
    assert_eq!(rd(&mut dev, ISR_OFFSET, 1), 0, "ISR clears on read");
    // Queue setup is frozen after DRIVER_OK.
    wr(&mut dev, 0x18, 2, 4);
    assert_eq!(rd(&mut dev, 0x18, 2), 8);
    // Reset clears everything.
    wr(&mut dev, 0x14, 1, 0);
    assert_eq!(rd(&mut dev, 0x14, 1), 0);
    assert_eq!(rd(&mut dev, 0x1c, 2), 0);
    assert_eq!(rd(&mut dev, 0x1a, 2), u64::from(NO_VECTOR));
    // Notifications after reset do nothing.
    wr(&mut dev, NOTIFY_OFFSET, 2, 0);
}

#[test]
fn bad_setup_needs_reset() {
    let Setup { mut dev, .. } = setup();
    // DRIVER_OK without FEATURES_OK.
    wr(&mut dev, 0x14, 1, u64::from(status::DRIVER_OK));
    assert_ne!(rd(&mut dev, 0x14, 1) as u8 & status::DEVICE_NEEDS_RESET, 0);
    // A size that is not a power of two is refused; an enabled queue whose rings lie
    // outside guest memory stops activation.
    let Setup { mut dev, .. } = setup();
    wr(&mut dev, 0x08, 4, 1);
    wr(&mut dev, 0x0c, 4, 1);
    wr(&mut dev, 0x14, 1, u64::from(status::FEATURES_OK));
    wr(&mut dev, 0x18, 2, 3);
    assert_eq!(rd(&mut dev, 0x18, 2), 16);
    wr(&mut dev, 0x20, 8, 0xffff_0000);
    wr(&mut dev, 0x1c, 2, 1);
    wr(
        &mut dev,
        0x14,
        1,
        u64::from(status::FEATURES_OK | status::DRIVER_OK),
    );
    assert_ne!(rd(&mut dev, 0x14, 1) as u8 & status::DEVICE_NEEDS_RESET, 0);
    // Out-of-range vectors read back as NO_VECTOR; odd accesses do not panic.
    wr(&mut dev, 0x10, 2, 99);
    assert_eq!(rd(&mut dev, 0x10, 2), u64::from(NO_VECTOR));
    wr(&mut dev, 0x16, 2, 77);
    assert_eq!(rd(&mut dev, 0x18, 2), 0);
    wr(&mut dev, 0x18, 2, 8);
    wr(&mut dev, 0x20, 4, 0x1000);
    let _ = rd(&mut dev, 0x05, 1);
    wr(&mut dev, 0x7fff, 1, 1);
    dev.bar_write(1, 0, &[1]);
    let mut b = [0u8; 4];
    dev.bar_read(0, BAR_SIZE + 8, &mut b);
}

/// A slot function is a PCI Express endpoint with a link; an integrated one (root bus) is
/// type 9 with no link registers, and its capability chain is otherwise unchanged.
#[test]
fn integrated_endpoint_has_no_link() {
    let Setup { dev, .. } = setup();
    let exp = dev.config().find_capability(CAP_ID_EXP).unwrap();
    let flags = dev.config().read_u16(exp + EXP_FLAGS);
    assert_eq!((flags >> 4) & 0xf, EXP_TYPE_ENDPOINT);
    assert_ne!(dev.config().read_u32(exp + EXP_LNKCAP), 0);
    let caps = dev.config().capabilities();

    let dev = VirtioPciDevice::new_integrated(
        Box::new(Fixture::default()),
        GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap(),
        crate::interrupt::MsixDelivery::Signal(Arc::new(RecordingMsi::default())),
        None,
    );
    assert_eq!(dev.config().capabilities(), caps);
    let flags = dev.config().read_u16(exp + EXP_FLAGS);
    assert_eq!((flags >> 4) & 0xf, EXP_TYPE_RC_END);
    assert_eq!(flags & 0xf, 2, "capability version");
    assert_eq!(dev.config().read_u32(exp + EXP_LNKCAP), 0);
    assert_eq!(dev.config().read_u16(exp + EXP_LNKSTA), 0);
}
