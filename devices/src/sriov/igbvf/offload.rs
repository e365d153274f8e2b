//! Transmit offloads the VF must perform: L4 checksum completion (TCP, UDP, SCTP CRC32c),
//! TCP segmentation (IPv4 and IPv6) and VLAN tag insertion, driven by an advanced context
//! descriptor. Every offset comes from the guest: each is checked against the frame.

use super::IgbvfError;
use super::regs::{TUCMD_IPV4, TUCMD_L4T_SHIFT};

/// Ethernet header length.
pub const ETH_HLEN: usize = 14;
/// Most segments one TSO frame may produce (bounds the work per frame).
pub const MAX_TSO_SEGMENTS: usize = 4096;
/// Largest segment (headers and payload) TSO may produce.
pub const MAX_SEGMENT: usize = 16 * 1024;

/// The L4 protocol a context descriptor names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum L4Type {
    /// UDP (also what a zeroed context says).
    #[default]
    Udp,
    /// TCP.
    Tcp,
    /// SCTP.
    Sctp,
    /// The reserved encoding.
    Reserved,
}

/// An advanced TX context descriptor, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TxContext {
    /// Length of the MAC header (before VLAN insertion).
    pub maclen: usize,
    /// Length of the IP header(s) up to the L4 header.
    pub iplen: usize,
    /// VLAN tag to insert when a data descriptor asks (VLE).
    pub vlan: u16,
    /// IPv4 (else IPv6) for TSO.
    pub ipv4: bool,
    /// L4 protocol.
    pub l4: L4Type,
    /// TSO segment size.
    pub mss: usize,
    /// TSO L4 header length.
    pub l4len: usize,
}

impl TxContext {
    /// Decodes the four dwords of a context descriptor.
    pub fn parse(d: [u32; 4]) -> Self {
        let l4 = match (d[2] >> TUCMD_L4T_SHIFT) & 3 {
            0 => L4Type::Udp,
            1 => L4Type::Tcp,
            2 => L4Type::Sctp,
            _ => L4Type::Reserved,
        };
        Self {
            iplen: (d[0] & 0x1FF) as usize,
            maclen: ((d[0] >> 9) & 0x7F) as usize,
            vlan: (d[0] >> 16) as u16,
            ipv4: d[2] & TUCMD_IPV4 != 0,
            l4,
            l4len: ((d[3] >> 8) & 0xFF) as usize,
            mss: (d[3] >> 16) as usize,
        }
    }

    /// Where the L4 header starts.
    fn l4_start(&self) -> usize {
        self.maclen + self.iplen
    }
}

/// Adds `data` to a running one's-complement sum (RFC 1071), 16-bit big-endian words.
pub fn sum_words(data: &[u8], mut sum: u64) -> u64 {
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        sum += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
}

/// Folds a running sum to 16 bits.
pub fn fold(mut sum: u64) -> u16 {
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    u16::try_from(sum).unwrap_or(u16::MAX)
}

/// CRC-32C (Castagnoli, reflected, as SCTP uses it).
pub fn crc32c(data: &[u8]) -> u32 {
    const fn table() -> [u32; 256] {
        let mut t = [0u32; 256];
        let mut i: u32 = 0;
        while i < 256 {
            let mut c = i;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0x82F6_3B78
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[i as usize] = c;
            i += 1;
        }
        t
    }
    static TABLE: [u32; 256] = table();
    let mut crc = !0u32;
    for &b in data {
        crc = TABLE[((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

fn check_range(frame_len: usize, end: usize) -> Result<(), IgbvfError> {
    if end > frame_len {
        return Err(IgbvfError::HeadersBeyondFrame {
            hdr: end,
            len: frame_len,
        });
    }
    Ok(())
}

fn put16(frame: &mut [u8], at: usize, v: u16) {
    frame[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

fn get16(frame: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([frame[at], frame[at + 1]])
}

/// Completes the L4 checksum (TXSM without TSO): the field holds the pseudo-header sum
/// (Linux's CHECKSUM_PARTIAL), the device sums from the L4 header to the end of the frame.
/// SCTP gets its CRC32c over the same range with the field zeroed, stored little-endian.
pub fn complete_l4_checksum(frame: &mut [u8], ctx: &TxContext) -> Result<(), IgbvfError> {
    let start = ctx.l4_start();
    match ctx.l4 {
        L4Type::Tcp | L4Type::Udp => {
            let off = if ctx.l4 == L4Type::Tcp { 16 } else { 6 };
            check_range(frame.len(), start + off + 2)?;
            let mut sum = !fold(sum_words(&frame[start..], 0));
            if ctx.l4 == L4Type::Udp && sum == 0 {
                sum = 0xFFFF;
            }
            put16(frame, start + off, sum);
        }
        L4Type::Sctp => {
            check_range(frame.len(), start + 12)?;
            frame[start + 8..start + 12].fill(0);
            let crc = crc32c(&frame[start..]);
            frame[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
        }
        L4Type::Reserved => return Err(IgbvfError::Unsupported("reserved L4 type")),
    }
    Ok(())
}

/// The legacy descriptor's checksum insertion: the sum from `css` to the end stored at
/// `cso`.
pub fn legacy_checksum(frame: &mut [u8], css: usize, cso: usize) -> Result<(), IgbvfError> {
    check_range(frame.len(), css.max(cso + 2))?;
    let sum = !fold(sum_words(&frame[css..], 0));
    put16(frame, cso, sum);
    Ok(())
}

/// Inserts an 802.1Q tag after the MAC addresses.
pub fn insert_vlan(frame: &mut Vec<u8>, tci: u16) -> Result<(), IgbvfError> {
    check_range(frame.len(), 12)?;
    let tag = [0x81, 0x00, (tci >> 8) as u8, (tci & 0xFF) as u8];
    frame.splice(12..12, tag);
    Ok(())
}

/// Segments a TSO frame as the 82576 does and hands each segment to `emit`: per segment
/// the IPv4 total length, ID (+1 each) and header checksum (IXSM) or the IPv6 payload
/// length, the TCP sequence number, FIN/PSH (last segment only) and the full TCP checksum
/// (TXSM: the field holds the pseudo-header sum without length, as igbvf leaves it).
pub fn segment_tcp(
    frame: &[u8],
    ctx: &TxContext,
    ixsm: bool,
    txsm: bool,
    mut emit: impl FnMut(&mut Vec<u8>),
) -> Result<(), IgbvfError> {
    if ctx.l4 != L4Type::Tcp {
        return Err(IgbvfError::Unsupported("TSO of a non-TCP frame"));
    }
    if ctx.mss == 0 {
        return Err(IgbvfError::ZeroMss);
    }
    let min_ip = if ctx.ipv4 { 20 } else { 40 };
    if ctx.maclen < ETH_HLEN || ctx.iplen < min_ip || ctx.l4len < 20 {
        return Err(IgbvfError::BadHeaderLengths {
            maclen: ctx.maclen,
            iplen: ctx.iplen,
            l4len: ctx.l4len,
        });
    }
    let ip = ctx.maclen;
    let l4 = ctx.l4_start();
    let hdr_len = l4 + ctx.l4len;
    check_range(frame.len(), hdr_len)?;
    let payload = &frame[hdr_len..];
    let segments = payload.len().div_ceil(ctx.mss).max(1);
    if segments > MAX_TSO_SEGMENTS || hdr_len + ctx.mss.min(payload.len()) > MAX_SEGMENT {
        return Err(IgbvfError::FrameTooLong {
            len: frame.len(),
            max: MAX_SEGMENT,
        });
    }
    let seq0 = u32::from_be_bytes([frame[l4 + 4], frame[l4 + 5], frame[l4 + 6], frame[l4 + 7]]);
    let id0 = get16(frame, ip + 4);
    let mut seg = Vec::with_capacity(hdr_len + ctx.mss);
    for i in 0..segments {
        let chunk_start = (i * ctx.mss).min(payload.len());
        let chunk = &payload[chunk_start..(chunk_start + ctx.mss).min(payload.len())];
        let last = i + 1 == segments;
        seg.clear();
        seg.extend_from_slice(&frame[..hdr_len]);
        seg.extend_from_slice(chunk);
        // Segments are below MAX_SEGMENT (16 KiB) and i below MAX_TSO_SEGMENTS: the
        // conversions below cannot fail.
        let ip_payload = u16::try_from(seg.len() - ip).unwrap_or(u16::MAX);
        if ctx.ipv4 {
            put16(&mut seg, ip + 2, ip_payload);
            put16(
                &mut seg,
                ip + 4,
                id0.wrapping_add(u16::try_from(i).unwrap_or(0)),
            );
            if ixsm {
                // The device sums IPLEN bytes with the checksum field as the driver left
                // it (0, or a value that cancels tunnel headers under GSO partial).
                let sum = !fold(sum_words(&seg[ip..l4], 0));
                put16(&mut seg, ip + 10, sum);
            }
        } else {
            put16(&mut seg, ip + 4, ip_payload - 40);
        }
        let seq = seq0.wrapping_add(u32::try_from(i * ctx.mss).unwrap_or(0));
        seg[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
        if !last {
            seg[l4 + 13] &= !(0x01 | 0x08); // FIN, PSH
        }
        if txsm {
            let l4_len = (seg.len() - l4) as u64;
            let sum = !fold(sum_words(&seg[l4..], l4_len));
            put16(&mut seg, l4 + 16, sum);
        }
        emit(&mut seg);
    }
    Ok(())
}
