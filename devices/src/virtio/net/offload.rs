//! Checksum offload: the `virtio_net_hdr` in front of every frame, and what the device does
//! with its checksum fields in each direction.
//!
//! - Transmit (guest to backend): a frame with `NEEDS_CSUM` carries a partial checksum (the
//!   pseudo-header sum at `csum_start + csum_offset`). A backend that takes the header too
//!   (TAP with IFF_VNET_HDR) gets it as is, and the host kernel finishes the job or
//!   hands the frame on with CHECKSUM_PARTIAL; for a backend of bare frames (the seqpacket
//!   socket) the device completes the checksum in software first.
//! - Receive (backend to guest): a TAP may hand over `NEEDS_CSUM` frames (only while the
//!   driver accepted VIRTIO_NET_F_GUEST_CSUM: the offloads are set to match); the header
//!   then goes to the guest unchanged. Should one arrive for a driver without
//!   GUEST_CSUM, its checksum is completed here and the flags cleared.
//!
//! No segmentation offload is offered, so a header with a GSO type is malformed.

/// Length of the header (virtio 1.x `virtio_net_hdr_v1`, with `num_buffers`).
pub const NET_HDR_LEN: usize = 12;
/// Header flag: the checksum at `csum_start + csum_offset` is partial.
pub const HDR_F_NEEDS_CSUM: u8 = 1;
/// Header flag: the checksum was validated.
pub const HDR_F_DATA_VALID: u8 = 2;
/// Header GSO type: none.
pub const HDR_GSO_NONE: u8 = 0;

/// Why a frame's header cannot be honoured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OffloadError {
    /// The header asks for segmentation, which this device does not offer.
    #[error("GSO type {0} requested, but no segmentation offload was offered")]
    Gso(u8),
    /// The checksum field or the range it covers lies outside the frame.
    #[error("checksum at {start}+{offset} outside a {len}-byte frame")]
    ChecksumOutOfFrame {
        /// Where the checksummed range starts.
        start: u16,
        /// Where the checksum field is, from `start`.
        offset: u16,
        /// Length of the frame.
        len: usize,
    },
}

/// The fields of a `virtio_net_hdr_v1`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetHdr {
    /// `HDR_F_*` flags.
    pub flags: u8,
    /// GSO type.
    pub gso_type: u8,
    /// Length of the headers (a hint).
    pub hdr_len: u16,
    /// GSO segment size.
    pub gso_size: u16,
    /// Where the checksummed range starts.
    pub csum_start: u16,
    /// Where the checksum goes, from `csum_start`.
    pub csum_offset: u16,
    /// Receive buffers the frame takes (mergeable receive buffers).
    pub num_buffers: u16,
}

impl NetHdr {
    /// Reads a header (little endian, as virtio 1.x has it).
    pub fn parse(b: &[u8; NET_HDR_LEN]) -> Self {
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Self {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
            num_buffers: u16_at(10),
        }
    }

    /// The header's bytes.
    pub fn to_bytes(self) -> [u8; NET_HDR_LEN] {
        let mut b = [0u8; NET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b[10..12].copy_from_slice(&self.num_buffers.to_le_bytes());
        b
    }
}

/// The Internet checksum's one's-complement sum of `data` (RFC 1071), folded to 16 bits.
fn ones_complement_sum(data: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        sum += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        sum += u64::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // The loop leaves at most 0xffff: the mask drops nothing.
    (sum & 0xffff) as u16
}

/// Where the checksum field `start + offset` lies in a `len`-byte frame, if it fits.
fn checksum_field(len: usize, start: u16, offset: u16) -> Result<usize, OffloadError> {
    let at = usize::from(start) + usize::from(offset);
    if at + 2 > len {
        return Err(OffloadError::ChecksumOutOfFrame { start, offset, len });
    }
    Ok(at)
}

/// Completes a partial checksum: sums `frame[start..]` (the checksum field holds the
/// pseudo-header sum) and stores the complement at `start + offset`, as Linux's
/// `skb_checksum_help` does. A result of 0 is stored as 0xffff (the same value in one's
/// complement, and the one UDP requires).
pub fn complete_checksum(frame: &mut [u8], start: u16, offset: u16) -> Result<(), OffloadError> {
    let at = checksum_field(frame.len(), start, offset)?;
    let sum = !ones_complement_sum(&frame[usize::from(start)..]);
    let sum = if sum == 0 { 0xffff } else { sum };
    frame[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    Ok(())
}

/// Readies a guest frame for a backend: `frame` starts with the header. With `backend_hdr`
/// the header goes along (the backend offloads); without, a partial checksum is completed.
/// Errors mean the frame is malformed and must be dropped.
pub fn prepare_tx(frame: &mut [u8], backend_hdr: bool) -> Result<(), OffloadError> {
    let Some((hdr, body)) = frame.split_first_chunk_mut::<NET_HDR_LEN>() else {
        return Ok(());
    };
    let h = NetHdr::parse(hdr);
    if h.gso_type != HDR_GSO_NONE {
        return Err(OffloadError::Gso(h.gso_type));
    }
    if h.flags & HDR_F_NEEDS_CSUM != 0 {
        if backend_hdr {
            // The host kernel checks the offsets (virtio_net_hdr_to_skb); check them here
            // too, so a bad frame is counted as dropped by this device.
            checksum_field(body.len(), h.csum_start, h.csum_offset)?;
        } else {
            complete_checksum(body, h.csum_start, h.csum_offset)?;
        }
    }
    Ok(())
}

/// Readies a backend frame for the guest: `frame` starts with the header the backend gave
/// (zeros for a backend without one). Without `guest_csum` a partial checksum is completed
/// and the flags cleared. Errors mean the frame must be dropped.
pub fn prepare_rx(frame: &mut [u8], guest_csum: bool) -> Result<(), OffloadError> {
    let Some((hdr, body)) = frame.split_first_chunk_mut::<NET_HDR_LEN>() else {
        return Ok(());
    };
    let mut h = NetHdr::parse(hdr);
    if h.gso_type != HDR_GSO_NONE {
        return Err(OffloadError::Gso(h.gso_type));
    }
    if !guest_csum {
        if h.flags & HDR_F_NEEDS_CSUM != 0 {
            complete_checksum(body, h.csum_start, h.csum_offset)?;
        }
        h = NetHdr::default();
    } else {
        h.flags &= HDR_F_NEEDS_CSUM | HDR_F_DATA_VALID;
    }
    // num_buffers is the device's to fill in.
    h.num_buffers = 0;
    *hdr = h.to_bytes();
    Ok(())
}

#[cfg(test)]
pub(super) mod tests;
