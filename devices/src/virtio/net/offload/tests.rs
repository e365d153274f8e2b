//! Checksum completion against an independent reference (the full RFC 768/793 checksum
//! over the pseudo-header), and the header rules in both directions.
#![allow(clippy::cast_possible_truncation)] // test data

use super::*;

const ETH: usize = 14;
const IP: usize = 20;

/// A byte-at-a-time reference sum (folded, not complemented), independent of
/// `ones_complement_sum`; the worker's tests use it too.
pub(in crate::virtio::net) fn reference_sum(parts: &[&[u8]]) -> u16 {
    let bytes: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
    let mut sum: u32 = 0;
    for (i, b) in bytes.iter().enumerate() {
        sum += if i % 2 == 0 {
            u32::from(*b) << 8
        } else {
            u32::from(*b)
        };
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// An Ethernet + IPv4 frame carrying `proto` with `l4` (its checksum field zero), and the
/// offset of the checksum field in the L4 header.
fn frame(proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; ETH + IP];
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    f[ETH] = 0x45;
    f[ETH + 2..ETH + 4].copy_from_slice(&((IP + l4.len()) as u16).to_be_bytes());
    f[ETH + 8] = 64;
    f[ETH + 9] = proto;
    f[ETH + 12..ETH + 16].copy_from_slice(&[10, 0, 2, 15]);
    f[ETH + 16..ETH + 20].copy_from_slice(&[10, 0, 2, 2]);
    f.extend_from_slice(l4);
    f
}

fn pseudo(f: &[u8], proto: u8) -> Vec<u8> {
    let l4_len = (f.len() - ETH - IP) as u16;
    let mut p = f[ETH + 12..ETH + 20].to_vec();
    p.extend_from_slice(&[0, proto]);
    p.extend_from_slice(&l4_len.to_be_bytes());
    p
}

/// The correct checksum of the L4 segment of `f` (checksum field zero).
fn full_checksum(f: &[u8], proto: u8) -> u16 {
    let c = !reference_sum(&[&pseudo(f, proto), &f[ETH + IP..]]);
    if c == 0 { 0xffff } else { c }
}

/// What Linux puts in the field for CHECKSUM_PARTIAL: the folded pseudo-header sum.
fn make_partial(f: &mut [u8], proto: u8, field: usize) {
    let p = reference_sum(&[&pseudo(f, proto)]);
    f[ETH + IP + field..ETH + IP + field + 2].copy_from_slice(&p.to_be_bytes());
}

fn udp(payload: &[u8]) -> Vec<u8> {
    let mut u = vec![0u8; 8];
    u[0..2].copy_from_slice(&5000u16.to_be_bytes());
    u[2..4].copy_from_slice(&6000u16.to_be_bytes());
    u[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(payload);
    u
}

fn tcp(payload: &[u8]) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&22u16.to_be_bytes());
    t[2..4].copy_from_slice(&40000u16.to_be_bytes());
    t[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = 0x18;
    t[14..16].copy_from_slice(&0xffffu16.to_be_bytes());
    t.extend_from_slice(payload);
    t
}

/// A deterministic byte stream (xorshift) for payloads.
fn payload(seed: u32, len: usize) -> Vec<u8> {
    let mut x = seed.max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

#[test]
fn completes_udp_and_tcp_like_the_reference() {
    for (seed, len) in [(1, 0), (2, 1), (3, 17), (4, 18), (5, 1400), (6, 1471)] {
        for (proto, field, l4) in [
            (17u8, 6usize, udp(&payload(seed, len))),
            (6, 16, tcp(&payload(seed, len))),
        ] {
            let mut f = frame(proto, &l4);
            let want = full_checksum(&f, proto);
            make_partial(&mut f, proto, field);
            complete_checksum(&mut f, (ETH + IP) as u16, field as u16).unwrap();
            let at = ETH + IP + field;
            assert_eq!(
                u16::from_be_bytes([f[at], f[at + 1]]),
                want,
                "proto {proto}, {len}-byte payload"
            );
            // And the receiver's check holds: the sum over pseudo-header and segment is
            // all ones.
            assert_eq!(reference_sum(&[&pseudo(&f, proto), &f[ETH + IP..]]), 0xffff);
        }
    }
}

#[test]
fn checksum_field_outside_the_frame_is_an_error() {
    let mut f = frame(17, &udp(b"x"));
    let len = f.len();
    let before = f.clone();
    for (start, offset) in [
        (len as u16, 0),
        ((len - 1) as u16, 0),
        (34, u16::MAX),
        (u16::MAX, u16::MAX),
    ] {
        assert_eq!(
            complete_checksum(&mut f, start, offset),
            Err(OffloadError::ChecksumOutOfFrame { start, offset, len })
        );
    }
    assert_eq!(f, before, "nothing written");
    // The last two bytes are a valid place.
    assert!(complete_checksum(&mut f, (len - 2) as u16, 0).is_ok());
}

fn with_header(h: NetHdr, body: &[u8]) -> Vec<u8> {
    let mut v = h.to_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

fn partial_udp() -> (Vec<u8>, u16) {
    let mut f = frame(17, &udp(b"offload me"));
    let want = full_checksum(&f, 17);
    make_partial(&mut f, 17, 6);
    (f, want)
}

#[test]
fn header_round_trips() {
    let h = NetHdr {
        flags: 1,
        gso_type: 0,
        hdr_len: 0x1234,
        gso_size: 0x5678,
        csum_start: 34,
        csum_offset: 6,
        num_buffers: 3,
    };
    assert_eq!(NetHdr::parse(&h.to_bytes()), h);
}

#[test]
fn tx_completes_for_bare_backends_and_passes_the_header_otherwise() {
    let (f, want) = partial_udp();
    let hdr = NetHdr {
        flags: HDR_F_NEEDS_CSUM,
        csum_start: 34,
        csum_offset: 6,
        ..Default::default()
    };
    let mut bare = with_header(hdr, &f);
    prepare_tx(&mut bare, false).unwrap();
    let at = NET_HDR_LEN + ETH + IP + 6;
    assert_eq!(u16::from_be_bytes([bare[at], bare[at + 1]]), want);

    let mut tap = with_header(hdr, &f);
    prepare_tx(&mut tap, true).unwrap();
    assert_eq!(tap, with_header(hdr, &f), "left for the host kernel");

    // No flags: nothing to do either way.
    let mut plain = with_header(NetHdr::default(), &f);
    prepare_tx(&mut plain, false).unwrap();
    assert_eq!(plain, with_header(NetHdr::default(), &f));
}

#[test]
fn tx_rejects_gso_and_bad_offsets() {
    let (f, _) = partial_udp();
    let gso = NetHdr {
        gso_type: 1,
        ..Default::default()
    };
    for backend_hdr in [false, true] {
        assert_eq!(
            prepare_tx(&mut with_header(gso, &f), backend_hdr),
            Err(OffloadError::Gso(1))
        );
        let bad = NetHdr {
            flags: HDR_F_NEEDS_CSUM,
            csum_start: f.len() as u16 - 1,
            csum_offset: 0,
            ..Default::default()
        };
        assert!(matches!(
            prepare_tx(&mut with_header(bad, &f), backend_hdr),
            Err(OffloadError::ChecksumOutOfFrame { .. })
        ));
    }
    // A chain shorter than a header is left to the caller.
    assert!(prepare_tx(&mut [1u8, 2, 3], false).is_ok());
}

#[test]
fn rx_passes_flags_to_a_guest_that_takes_them_and_completes_otherwise() {
    let (f, want) = partial_udp();
    let hdr = NetHdr {
        flags: HDR_F_NEEDS_CSUM,
        csum_start: 34,
        csum_offset: 6,
        num_buffers: 7,
        ..Default::default()
    };
    let mut to_csum_guest = with_header(hdr, &f);
    prepare_rx(&mut to_csum_guest, true).unwrap();
    let expect = NetHdr {
        num_buffers: 0,
        ..hdr
    };
    assert_eq!(to_csum_guest, with_header(expect, &f));

    let mut to_plain_guest = with_header(hdr, &f);
    prepare_rx(&mut to_plain_guest, false).unwrap();
    let h: [u8; NET_HDR_LEN] = to_plain_guest[..NET_HDR_LEN].try_into().unwrap();
    assert_eq!(NetHdr::parse(&h), NetHdr::default());
    let at = NET_HDR_LEN + ETH + IP + 6;
    assert_eq!(
        u16::from_be_bytes([to_plain_guest[at], to_plain_guest[at + 1]]),
        want
    );

    // DATA_VALID goes to a GUEST_CSUM driver; unknown flag bits do not.
    let mut valid = with_header(
        NetHdr {
            flags: HDR_F_DATA_VALID | 0x80,
            ..Default::default()
        },
        &f,
    );
    prepare_rx(&mut valid, true).unwrap();
    assert_eq!(valid[0], HDR_F_DATA_VALID);

    assert_eq!(
        prepare_rx(
            &mut with_header(
                NetHdr {
                    gso_type: 4,
                    ..Default::default()
                },
                &f
            ),
            true
        ),
        Err(OffloadError::Gso(4))
    );
}
