//! Receive: one-buffer and header-split rings, VLAN stripping, drops, and no DMA once
//! the queues are down.

use super::*;
use crate::sriov::igbvf::RxDrop;

fn frame(dst: [u8; 6], len: usize) -> Vec<u8> {
    let mut f = dst.to_vec();
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x77]);
    f.extend_from_slice(&[0x88, 0xB5]);
    f.extend((0..len - 14).map(|i| (i % 251) as u8));
    f
}

fn tcp_frame(payload_len: usize) -> Vec<u8> {
    let mut f = MAC.to_vec();
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x77, 0x08, 0x00]);
    let tot = (40 + payload_len) as u16;
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&tot.to_be_bytes());
    f.extend_from_slice(&[0, 1, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 2, 10, 0, 0, 1]);
    f.extend_from_slice(&[
        0, 80, 0x30, 0x39, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x10, 0xff, 0xff,
    ]);
    f.extend_from_slice(&[0, 0, 0, 0]);
    f.extend((0..payload_len).map(|i| (i % 253) as u8));
    f
}

fn status(d: &[u8; 16]) -> u32 {
    u32::from_le_bytes([d[8], d[9], d[10], d[11]])
}
fn length(d: &[u8; 16]) -> usize {
    usize::from(u16::from_le_bytes([d[12], d[13]]))
}
fn vlan(d: &[u8; 16]) -> u16 {
    u16::from_le_bytes([d[14], d[15]])
}
fn hdr_info(d: &[u8; 16]) -> u16 {
    u16::from_le_bytes([d[2], d[3]])
}

/// Everything the device may write: the RX ring, its buffers and header buffers.
fn rx_snapshot(h: &Harness) -> Vec<u8> {
    let mut s = h.read_mem(RX_RING, (RX_COUNT * 16) as usize);
    s.extend(h.read_mem(RX_BUF, 0x22_0000));
    s
}

#[test]
fn one_buffer_frames_with_writeback() {
    let mut h = Harness::up(policy_up(), false);
    let small = frame(MAC, 60);
    let full = frame(MAC, 1514);
    let mcast = frame([0x01, 0, 0x5e, 0, 0, 1], 100);
    assert_eq!(h.vf.receive(&small, false), RxOutcome::Delivered);
    assert_eq!(h.vf.receive(&full, false), RxOutcome::Delivered);
    assert_eq!(h.vf.receive(&mcast, false), RxOutcome::Delivered);
    for (i, f) in [&small, &full, &mcast].into_iter().enumerate() {
        let d = h.rx_desc(i as u32);
        assert_eq!(status(&d), RXD_STAT_DD | RXD_STAT_EOP | RXD_STAT_IXSM);
        assert_eq!(length(&d), f.len());
        assert_eq!(hdr_info(&d), 0);
        assert_eq!(&h.read_mem(rx_buf(i as u32), f.len()), f);
    }
    assert_eq!(h.rd(RDH), 3);
    assert_eq!(h.rd(VFGPRC), 3);
    assert_eq!(h.rd(VFMPRC), 1);
    assert_eq!(h.rd(VFGORC), (60 + 1514 + 100) as u32);
    assert_eq!(
        h.irqs(),
        vec![1],
        "the other two throttled, then auto-masked"
    );

    // 1515 bytes + FCS exceed the 1522 max frame only with a tag: untagged 1518 ok,
    // 1519 bytes too long. Nothing is written for it.
    let before = h.read_mem(rx_buf(3), 2048);
    let too_long = frame(MAC, 1519);
    assert_eq!(
        h.vf.receive(&too_long, false),
        RxOutcome::Dropped(RxDrop::TooLong)
    );
    assert_eq!(h.read_mem(rx_buf(3), 2048), before);
    assert_eq!(status(&h.rx_desc(3)), 0);
}

#[test]
fn vlan_stripped_into_descriptor_only_when_asked() {
    let mut h = Harness::up(policy_up(), false);
    let mut tagged = frame(MAC, 100);
    tagged.splice(12..12, [0x81, 0x00, 0x00, 0x05]);
    assert_eq!(h.vf.receive(&tagged, true), RxOutcome::Delivered);
    let d = h.rx_desc(0);
    assert_eq!(status(&d) & RXD_STAT_VP, RXD_STAT_VP);
    assert_eq!(vlan(&d), 5);
    assert_eq!(length(&d), 100);
    assert_eq!(h.read_mem(rx_buf(0), 100), frame(MAC, 100));
    assert_eq!(h.vf.receive(&tagged, false), RxOutcome::Delivered);
    let d = h.rx_desc(1);
    assert_eq!(status(&d) & RXD_STAT_VP, 0);
    assert_eq!(length(&d), 104);
}

#[test]
fn header_split_puts_headers_in_the_header_buffer() {
    let mut h = Harness::up(policy_up(), true);
    let f = tcp_frame(5000 - 54);
    assert_eq!(f.len(), 5000);
    assert_eq!(h.vf.receive(&f, false), RxOutcome::Delivered);
    let d0 = h.rx_desc(0);
    assert_eq!(hdr_info(&d0), (54 << 5) | 0x8000, "54-byte header, SPH");
    assert_eq!(h.read_mem(RX_HDR, 54), f[..54]);
    assert_eq!(status(&d0), RXD_STAT_DD | RXD_STAT_IXSM, "not the end");
    assert_eq!(length(&d0), 2048);
    let d1 = h.rx_desc(1);
    assert_eq!(hdr_info(&d1), 0);
    assert_eq!(length(&d1), 2048);
    let d2 = h.rx_desc(2);
    assert_eq!(status(&d2), RXD_STAT_DD | RXD_STAT_EOP | RXD_STAT_IXSM);
    assert_eq!(length(&d2), 5000 - 54 - 4096);
    let mut got = h.read_mem(RX_HDR, 54);
    got.extend(h.read_mem(rx_buf(0), 2048));
    got.extend(h.read_mem(rx_buf(1), 2048));
    got.extend(h.read_mem(rx_buf(2), 5000 - 54 - 4096));
    assert_eq!(got, f);
    assert_eq!(h.rd(RDH), 3);
    // A frame that does not parse as IP: the Ethernet header goes to the header buffer.
    let raw = frame(MAC, 200);
    h.vf.receive(&raw, false);
    let d3 = h.rx_desc(3);
    assert_eq!(hdr_info(&d3), (14 << 5) | 0x8000);
    assert_eq!(length(&d3), 186);
}

#[test]
fn no_descriptor_drops_with_drop_en_and_refuses_without() {
    let mut h = Harness::up(policy_up(), false);
    let rdt = h.rd(RDT);
    h.wr(RDH, rdt);
    assert_eq!(h.vf.rx_descriptors_available(), 0);
    let f = frame(MAC, 64);
    assert_eq!(
        h.vf.receive(&f, false),
        RxOutcome::Dropped(RxDrop::NoDescriptor)
    );
    assert_eq!(h.vf.counters().rx_no_descriptor, 1);
    let srrctl = h.rd(SRRCTL);
    h.wr(SRRCTL, srrctl & !SRRCTL_DROP_EN);
    assert_eq!(h.vf.receive(&f, false), RxOutcome::NoDescriptor);
    h.wr(RDT, (rdt + 1) % RX_COUNT);
    assert_eq!(h.vf.receive(&f, false), RxOutcome::Delivered);
}

#[test]
fn link_set_down_stops_dma() {
    let mut h = Harness::up(policy_up(), false);
    h.vf.receive(&frame(MAC, 64), false);
    // igbvf_down: queues disabled first.
    let rxdctl = h.rd(RXDCTL);
    h.wr(RXDCTL, rxdctl & !DCTL_ENABLE);
    let txdctl = h.rd(TXDCTL);
    h.wr(TXDCTL, txdctl & !DCTL_ENABLE);
    let before = rx_snapshot(&h);
    assert_eq!(
        h.vf.receive(&frame(MAC, 64), false),
        RxOutcome::Dropped(RxDrop::Disabled)
    );
    // A TX descriptor queued now is not fetched.
    let a = h.tx_buffer(0, &frame(MAC, 64));
    h.put_tx_desc([
        a as u32,
        0,
        TXD_DTYP_DATA | TXD_DEXT | TXD_EOP | TXD_RS | 64,
        0,
    ]);
    h.wr(TDT, 1);
    assert!(h.sent().is_empty());
    assert_eq!(rx_snapshot(&h), before, "guest memory untouched");
    // The rest of the down sequence, then still nothing.
    h.down();
    assert_eq!(
        h.vf.receive(&frame(MAC, 64), false),
        RxOutcome::Dropped(RxDrop::Disabled)
    );
    assert_eq!(rx_snapshot(&h), before);
    assert_eq!(h.rd(RDH), 0);
    assert_eq!(h.rd(TDT), 0);
}

#[test]
fn bus_master_clear_and_flr_stop_dma() {
    let mut h = Harness::up(policy_up(), false);
    h.vf.set_bus_master(false);
    let before = rx_snapshot(&h);
    assert_eq!(
        h.vf.receive(&frame(MAC, 64), false),
        RxOutcome::Dropped(RxDrop::Disabled)
    );
    let a = h.tx_buffer(0, &frame(MAC, 64));
    h.put_tx_desc([
        a as u32,
        0,
        TXD_DTYP_DATA | TXD_DEXT | TXD_EOP | TXD_RS | 64,
        0,
    ]);
    h.wr(TDT, 1);
    assert!(h.sent().is_empty());
    assert_eq!(rx_snapshot(&h), before);
    // Re-enabling resumes the ring where it was.
    h.vf.set_bus_master(true);
    assert_eq!(h.sent().len(), 1);

    h.vf.flr();
    h.vf.set_bus_master(true);
    let before = rx_snapshot(&h);
    assert_eq!(
        h.vf.receive(&frame(MAC, 64), false),
        RxOutcome::Dropped(RxDrop::Disabled)
    );
    assert_eq!(rx_snapshot(&h), before);
    assert_eq!(h.rd(RDLEN), 0);
}

#[test]
fn buffer_outside_memory_is_reported_in_the_descriptor() {
    let mut h = Harness::up(policy_up(), false);
    h.mem()
        .write_obj(u64::MAX - 100, GuestAddress(RX_RING))
        .unwrap();
    assert_eq!(
        h.vf.receive(&frame(MAC, 64), false),
        RxOutcome::Dropped(RxDrop::Dma)
    );
    let d = h.rx_desc(0);
    assert_eq!(
        status(&d) & (RXD_STAT_DD | RXD_STAT_EOP | RXD_ERR_RXE),
        0x8000_0003
    );
    assert_eq!(h.rd(RDH), 1, "the ring goes on");
    assert_eq!(h.vf.receive(&frame(MAC, 64), false), RxOutcome::Delivered);
}
