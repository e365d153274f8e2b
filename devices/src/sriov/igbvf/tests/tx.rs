//! Transmit: descriptors as igbvf writes them, offloads verified against checksums the
//! test computes itself.

use std::sync::atomic::Ordering;

use super::*;
use crate::sriov::igbvf::offload::crc32c;

const SRC_IP: [u8; 4] = [10, 0, 0, 1];
const DST_IP: [u8; 4] = [10, 0, 0, 2];
const SRC_IP6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const DST_IP6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x99];

fn eth(ethertype: u16) -> Vec<u8> {
    let mut f = DST_MAC.to_vec();
    f.extend_from_slice(&MAC);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

fn ipv4_header(tot_len: u16, id: u16, proto: u8, with_checksum: bool) -> Vec<u8> {
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&tot_len.to_be_bytes());
    h.extend_from_slice(&id.to_be_bytes());
    h.extend_from_slice(&[0x40, 0, 64, proto, 0, 0]);
    h.extend_from_slice(&SRC_IP);
    h.extend_from_slice(&DST_IP);
    if with_checksum {
        let c = inet_checksum(&[&h]);
        h[10..12].copy_from_slice(&c.to_be_bytes());
    }
    h
}

fn ipv6_header(payload_len: u16, next: u8) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&payload_len.to_be_bytes());
    h.extend_from_slice(&[next, 64]);
    h.extend_from_slice(&SRC_IP6);
    h.extend_from_slice(&DST_IP6);
    h
}

/// The pseudo-header as bytes (IPv4 or IPv6), `len` the L4 length.
fn pseudo(v6: bool, proto: u8, len: u32) -> Vec<u8> {
    let mut p = Vec::new();
    if v6 {
        p.extend_from_slice(&SRC_IP6);
        p.extend_from_slice(&DST_IP6);
        p.extend_from_slice(&len.to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, proto]);
    } else {
        p.extend_from_slice(&SRC_IP);
        p.extend_from_slice(&DST_IP);
        p.extend_from_slice(&[0, proto]);
        p.extend_from_slice(&(len as u16).to_be_bytes());
    }
    p
}

/// The non-complemented pseudo-header sum Linux leaves in the checksum field
/// (`~csum_*_magic`), as a big-endian u16.
fn seed(v6: bool, proto: u8, len: u32) -> u16 {
    !inet_checksum(&[&pseudo(v6, proto, len)])
}

fn tcp_header(seq: u32, flags: u8, check: u16) -> Vec<u8> {
    let mut t = vec![0x30, 0x39, 0x00, 0x50];
    t.extend_from_slice(&seq.to_be_bytes());
    t.extend_from_slice(&7u32.to_be_bytes());
    t.extend_from_slice(&[0x50, flags, 0xff, 0xff]);
    t.extend_from_slice(&check.to_be_bytes());
    t.extend_from_slice(&[0, 0]);
    t
}

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + 3) as u8).collect()
}

fn ctx_desc(maclen: u32, iplen: u32, vlan: u16, tucmd: u32, mss: u32, l4len: u32) -> [u32; 4] {
    [
        iplen | (maclen << 9) | (u32::from(vlan) << 16),
        0,
        TXD_DEXT | TXD_DTYP_CTXT | tucmd,
        (mss << 16) | (l4len << 8),
    ]
}

fn data_desc(addr: u64, len: usize, cmd: u32, olinfo: u32) -> [u32; 4] {
    [
        addr as u32,
        (addr >> 32) as u32,
        TXD_DTYP_DATA | TXD_DEXT | TXD_IFCS | cmd | len as u32,
        olinfo,
    ]
}

fn tx_status(h: &Harness, i: u32) -> u32 {
    h.mem()
        .read_obj::<u32>(GuestAddress(TX_RING + u64::from(i) * 16 + 12))
        .unwrap()
}

#[test]
fn udp_checksum_offload_over_two_buffers() {
    let mut h = Harness::up(policy_up(), false);
    let data = payload(100);
    let udp_len = 8 + data.len() as u16;
    let mut frame = eth(0x0800);
    frame.extend(ipv4_header(20 + udp_len, 1, 17, true));
    frame.extend_from_slice(&[0x13, 0x88, 0x13, 0x89]);
    frame.extend_from_slice(&udp_len.to_be_bytes());
    frame.extend_from_slice(&seed(false, 17, u32::from(udp_len)).to_be_bytes());
    frame.extend_from_slice(&data);
    let a = h.tx_buffer(0, &frame[..42]);
    let b = h.tx_buffer(0x1000, &frame[42..]);
    let olinfo = TXD_POPTS_TXSM | ((frame.len() as u32) << 14);
    h.put_tx_desc(ctx_desc(14, 20, 0, 0, 0, 0));
    h.put_tx_desc(data_desc(a, 42, 0, olinfo));
    h.put_tx_desc(data_desc(b, frame.len() - 42, TXD_EOP | TXD_RS, olinfo));
    let tail = h.tx_next;
    h.wr(TDT, tail);

    let sent = h.sent();
    assert_eq!(sent.len(), 1);
    let out = &sent[0];
    assert_eq!(out[..40], frame[..40], "all but the UDP checksum unchanged");
    assert_eq!(out[42..], frame[42..]);
    assert_ne!(out[40..42], [0, 0]);
    assert!(checksum_ok(&[
        &pseudo(false, 17, u32::from(udp_len)),
        &out[34..]
    ]));
    assert_eq!(tx_status(&h, 2) & TXD_STAT_DD, 1, "DD on the RS descriptor");
    assert_eq!(tx_status(&h, 1) & TXD_STAT_DD, 0, "no DD without RS");
    assert_eq!(h.rd(TDH), tail);
    assert_eq!(h.irqs(), vec![0], "TX vector");
    assert_eq!(h.rd(VFGPTC), 1);
    assert_eq!(h.rd(VFGOTC), frame.len() as u32);
}

/// The segments a correct TSO must produce, built from scratch.
fn expected_segments(v6: bool, data: &[u8], mss: usize, id: u16, seq: u32) -> Vec<Vec<u8>> {
    let chunks: Vec<&[u8]> = data.chunks(mss).collect();
    chunks
        .iter()
        .enumerate()
        .map(|(i, chunk)| {
            let last = i + 1 == chunks.len();
            let flags = if last { 0x18 } else { 0x10 };
            let l4_len = 20 + chunk.len() as u32;
            let mut tcp = tcp_header(seq.wrapping_add((i * mss) as u32), flags, 0);
            tcp.extend_from_slice(chunk);
            let c = inet_checksum(&[&pseudo(v6, 6, l4_len), &tcp]);
            tcp[16..18].copy_from_slice(&c.to_be_bytes());
            let mut f = eth(if v6 { 0x86DD } else { 0x0800 });
            if v6 {
                f.extend(ipv6_header(l4_len as u16, 6));
            } else {
                f.extend(ipv4_header(20 + l4_len as u16, id + i as u16, 6, true));
            }
            f.extend(tcp);
            f
        })
        .collect()
}

/// A TSO frame as igbvf 6.12 hands it over: IP length zeroed, IPv4 checksum zeroed, the
/// TCP checksum seeded with the pseudo-header sum without the length.
fn tso_frame(v6: bool, data: &[u8], id: u16, seq: u32) -> Vec<u8> {
    let mut f = eth(if v6 { 0x86DD } else { 0x0800 });
    if v6 {
        f.extend(ipv6_header(0, 6));
    } else {
        f.extend(ipv4_header(0, id, 6, false));
    }
    f.extend(tcp_header(seq, 0x18, seed(v6, 6, 0)));
    f.extend_from_slice(data);
    f
}

#[test]
fn tso_ipv4_segments_are_byte_exact() {
    let mut h = Harness::up(policy_up(), false);
    let data = payload(2500);
    let frame = tso_frame(false, &data, 0x1234, 1000);
    let hdr = 54;
    let a = h.tx_buffer(0, &frame[..hdr]);
    let b = h.tx_buffer(0x1000, &frame[hdr..]);
    let olinfo = TXD_POPTS_TXSM | TXD_POPTS_IXSM | (((frame.len() - hdr) as u32) << 14);
    h.put_tx_desc(ctx_desc(
        14,
        20,
        0,
        TUCMD_IPV4 | (1 << TUCMD_L4T_SHIFT),
        1000,
        20,
    ));
    h.put_tx_desc(data_desc(a, hdr, TXD_TSE, olinfo));
    h.put_tx_desc(data_desc(b, data.len(), TXD_TSE | TXD_EOP | TXD_RS, olinfo));
    let tail = h.tx_next;
    h.wr(TDT, tail);
    let sent = h.sent();
    let want = expected_segments(false, &data, 1000, 0x1234, 1000);
    assert_eq!(sent.len(), 3);
    for (i, (got, want)) in sent.iter().zip(&want).enumerate() {
        assert_eq!(got, want, "segment {i}");
        assert!(checksum_ok(&[&got[14..34]]));
    }
    assert_eq!(h.rd(VFGPTC), 3);
    assert_eq!(h.rd(TDH), tail);
}

#[test]
fn tso_ipv6_with_vlan_insertion() {
    let mut h = Harness::up(policy_up(), false);
    let data = payload(3000);
    let frame = tso_frame(true, &data, 0, 0xFFFF_FF00);
    let a = h.tx_buffer(0, &frame);
    let olinfo = TXD_POPTS_TXSM | (((frame.len() - 74) as u32) << 14);
    h.put_tx_desc(ctx_desc(14, 40, 0x2064, 1 << TUCMD_L4T_SHIFT, 1440, 20));
    h.put_tx_desc(data_desc(
        a,
        frame.len(),
        TXD_TSE | TXD_VLE | TXD_EOP | TXD_RS,
        olinfo,
    ));
    let tail = h.tx_next;
    h.wr(TDT, tail);
    let sent = h.sent();
    let want = expected_segments(true, &data, 1440, 0, 0xFFFF_FF00);
    assert_eq!(sent.len(), 3);
    for (got, want) in sent.iter().zip(&want) {
        assert_eq!(got[..12], want[..12]);
        assert_eq!(got[12..16], [0x81, 0x00, 0x20, 0x64], "802.1Q tag inserted");
        assert_eq!(got[16..], want[12..], "sequence numbers wrap");
    }
}

/// Bitwise CRC-32C, independent of the model's table.
fn crc32c_bitwise(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn sctp_crc32c_offload_and_tcp_checksum_with_vlan() {
    assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    let mut h = Harness::up(policy_up(), false);
    let chunk = payload(64);
    let mut frame = eth(0x0800);
    frame.extend(ipv4_header(20 + 12 + 64, 9, 132, true));
    frame.extend_from_slice(&[0, 1, 0, 2, 0xde, 0xad, 0xbe, 0xef, 0x55, 0x55, 0x55, 0x55]);
    frame.extend_from_slice(&chunk);
    let a = h.tx_buffer(0, &frame);
    h.put_tx_desc(ctx_desc(14, 20, 0, 2 << TUCMD_L4T_SHIFT, 0, 0));
    h.put_tx_desc(data_desc(a, frame.len(), TXD_EOP | TXD_RS, TXD_POPTS_TXSM));
    // A TCP frame with checksum offload and a VLAN tag from the same context slot.
    let mut tcp = eth(0x0800);
    tcp.extend(ipv4_header(20 + 20 + 10, 10, 6, true));
    tcp.extend(tcp_header(5, 0x18, seed(false, 6, 30)));
    tcp.extend_from_slice(&payload(10));
    let b = h.tx_buffer(0x1000, &tcp);
    h.put_tx_desc(ctx_desc(14, 20, 7, 1 << TUCMD_L4T_SHIFT, 0, 0));
    h.put_tx_desc(data_desc(
        b,
        tcp.len(),
        TXD_EOP | TXD_RS | TXD_VLE,
        TXD_POPTS_TXSM,
    ));
    let tail = h.tx_next;
    h.wr(TDT, tail);
    let sent = h.sent();
    assert_eq!(sent.len(), 2);
    let sctp = &sent[0][34..];
    let mut zeroed = sctp.to_vec();
    zeroed[8..12].fill(0);
    assert_eq!(sctp[8..12], crc32c_bitwise(&zeroed).to_le_bytes());
    assert_eq!(sent[1][12..16], [0x81, 0, 0, 7]);
    assert!(checksum_ok(&[&pseudo(false, 6, 30), &sent[1][38..]]));
}

#[test]
fn backpressure_leaves_descriptors_and_link_down_completes_without_sending() {
    let mut h = Harness::up(policy_up(), false);
    let frame = eth(0x0800)
        .into_iter()
        .chain(payload(50))
        .collect::<Vec<_>>();
    let a = h.tx_buffer(0, &frame);
    h.ready.store(false, Ordering::SeqCst);
    h.put_tx_desc(data_desc(a, frame.len(), TXD_EOP | TXD_RS, 0));
    h.put_tx_desc(data_desc(a, frame.len(), TXD_EOP | TXD_RS, 0));
    h.wr(TDT, 2);
    assert!(h.sent().is_empty());
    assert_eq!(h.rd(TDH), 0, "descriptors stay in the ring");
    assert_eq!(tx_status(&h, 0) & 1, 0);
    assert!(h.irqs().is_empty());
    h.ready.store(true, Ordering::SeqCst);
    h.vf.process_tx();
    assert_eq!(h.sent().len(), 2);
    assert_eq!(h.rd(TDH), 2);

    h.vf.set_policy(PfPolicy {
        link_up: false,
        ..policy_up()
    });
    h.put_tx_desc(data_desc(a, frame.len(), TXD_EOP | TXD_RS, 0));
    h.wr(TDT, 3);
    assert!(h.sent().is_empty());
    assert_eq!(tx_status(&h, 2) & 1, 1, "completed while link is down");
    assert_eq!(h.vf.counters().tx_link_down, 1);
}

#[test]
fn incomplete_chain_waits_for_its_eop() {
    let mut h = Harness::up(policy_up(), false);
    let frame = eth(0x0800)
        .into_iter()
        .chain(payload(50))
        .collect::<Vec<_>>();
    let a = h.tx_buffer(0, &frame);
    h.put_tx_desc(data_desc(a, 30, 0, 0));
    h.wr(TDT, 1);
    assert!(h.sent().is_empty());
    assert_eq!(h.rd(TDH), 0);
    h.put_tx_desc(data_desc(a + 30, frame.len() - 30, TXD_EOP | TXD_RS, 0));
    h.wr(TDT, 2);
    assert_eq!(h.sent(), vec![frame]);
}
