//! RX queue 0: its registers and the delivery of one frame into the descriptors the
//! driver posted in [RDH, RDT).
//!
//! Two layouts, chosen by SRRCTL's descriptor type:
//! - one buffer: the whole frame in the packet buffer of one descriptor; a frame longer
//!   than the buffer (SRRCTL size) is dropped, never spread over several descriptors
//!   (igbvf's one-buffer path cannot take that).
//! - header split (always): the headers (parsed up to TCP/UDP, at least the Ethernet
//!   header, at most the header buffer) in the header buffer of the first descriptor, the
//!   rest in packet buffers, continuing in further descriptors.
//!
//! Write-back: hdr_info (header length, SPH), status DD | EOP (last) | IXSM ("no checksum
//! reported", always right) | VP (VLAN stripped), length and VLAN; the status dword is
//! written last, after a release fence.

use std::sync::atomic::{Ordering, fence};

use vm_memory::{Address, Bytes, GuestAddress};

use super::IgbvfError;
use super::regs::{
    DBAL_MASK, DCTL_ENABLE, DESC_LEN, DLEN_MASK, RXD_ERR_RXE, RXD_HDR_LEN_SHIFT, RXD_HDR_SPH,
    RXD_STAT_DD, RXD_STAT_EOP, RXD_STAT_IXSM, RXD_STAT_VP, SRRCTL_BSIZEHDR_MASK,
    SRRCTL_BSIZEHDR_SHIFT, SRRCTL_BSIZEPKT_MASK, SRRCTL_DESCTYPE_MASK, SRRCTL_DROP_EN,
};
use super::{VfCounters, dma_read, dma_write};

/// Why a frame was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxDrop {
    /// The queue is disabled, bus mastering is off, the VF has not reset with its PF, or
    /// the link is down.
    Disabled,
    /// No descriptor was free and SRRCTL.DROP_EN is set.
    NoDescriptor,
    /// Longer than the VF's max frame or than one buffer (one-buffer mode).
    TooLong,
    /// Shorter than an Ethernet header.
    Runt,
    /// The ring registers are unusable (length, head or tail).
    BadRing,
    /// A descriptor or buffer could not be reached.
    Dma,
}

/// What happened to a received frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxOutcome {
    /// Written to the guest.
    Delivered,
    /// Dropped and counted.
    Dropped(RxDrop),
    /// No descriptor was free and DROP_EN is clear: the frame was not taken; the switch
    /// may hold it and offer it again after the driver moves RDT.
    NoDescriptor,
}

/// The RX queue's registers.
#[derive(Debug, Default, Clone)]
pub(crate) struct RxQueue {
    pub bal: u32,
    pub bah: u32,
    pub len: u32,
    pub srrctl: u32,
    pub head: u32,
    pub tail: u32,
    pub rxdctl: u32,
}

/// Ethernet, VLAN, IPv4/IPv6 and TCP/UDP header length of a frame, as far as it parses.
pub fn parse_header_len(f: &[u8]) -> usize {
    const ETH: usize = 14;
    if f.len() < ETH {
        return f.len();
    }
    let mut l3 = ETH;
    let mut ethertype = u16::from_be_bytes([f[12], f[13]]);
    if matches!(ethertype, 0x8100 | 0x88A8) && f.len() >= ETH + 4 {
        ethertype = u16::from_be_bytes([f[16], f[17]]);
        l3 += 4;
    }
    let (l4, proto) = match ethertype {
        0x0800 if f.len() >= l3 + 20 => {
            let ihl = usize::from(f[l3] & 0xF) * 4;
            let frag = u16::from_be_bytes([f[l3 + 6], f[l3 + 7]]) & 0x3FFF != 0;
            if ihl < 20 || l3 + ihl > f.len() {
                return l3;
            }
            if frag {
                return l3 + ihl;
            }
            (l3 + ihl, f[l3 + 9])
        }
        0x86DD if f.len() >= l3 + 40 => (l3 + 40, f[l3 + 6]),
        _ => return l3,
    };
    match proto {
        6 if f.len() >= l4 + 20 => {
            let doff = usize::from(f[l4 + 12] >> 4) * 4;
            if doff >= 20 && l4 + doff <= f.len() {
                l4 + doff
            } else {
                l4
            }
        }
        17 if f.len() >= l4 + 8 => l4 + 8,
        _ => l4,
    }
}

impl RxQueue {
    /// Whether the queue is enabled.
    pub fn enabled(&self) -> bool {
        self.rxdctl & DCTL_ENABLE != 0
    }

    /// Descriptors in the ring (0 when the length is unusable).
    pub fn count(&self) -> u32 {
        (self.len & DLEN_MASK) / 16
    }

    /// Back to the power-on state.
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// Descriptors the driver has given the device.
    pub fn available(&self) -> u32 {
        let count = self.count();
        if count == 0 || self.head >= count || self.tail >= count {
            return 0;
        }
        (self.tail + count - self.head) % count
    }

    fn header_split(&self) -> bool {
        // 010b (split) and 101b (split always) use the header buffer.
        matches!(
            self.srrctl & SRRCTL_DESCTYPE_MASK,
            0x0400_0000 | 0x0A00_0000
        )
    }

    fn packet_buffer(&self) -> usize {
        match (self.srrctl & SRRCTL_BSIZEPKT_MASK) as usize {
            0 => 2048,
            kib => kib * 1024,
        }
    }

    fn header_buffer(&self) -> usize {
        (((self.srrctl & SRRCTL_BSIZEHDR_MASK) >> SRRCTL_BSIZEHDR_SHIFT) as usize) * 64
    }

    fn desc_addr(&self, idx: u32) -> Result<GuestAddress, IgbvfError> {
        let base = u64::from(self.bal & DBAL_MASK) | (u64::from(self.bah) << 32);
        base.checked_add(u64::from(idx) * DESC_LEN)
            .map(GuestAddress)
            .ok_or(IgbvfError::AddressOverflow)
    }

    /// Delivers `frame` (without FCS). `strip_vlan` moves an 802.1Q tag into the
    /// descriptor; `max_frame` is the VF's RLPML (FCS included).
    pub fn receive<M: Bytes<GuestAddress>>(
        &mut self,
        mem: &M,
        frame: &[u8],
        strip_vlan: bool,
        max_frame: u32,
        counters: &mut VfCounters,
    ) -> RxOutcome
    where
        M::E: std::error::Error + Send + Sync + 'static,
    {
        let outcome = self.deliver(mem, frame, strip_vlan, max_frame);
        match outcome {
            RxOutcome::Delivered => {
                counters.gprc = counters.gprc.wrapping_add(1);
                counters.gorc = counters
                    .gorc
                    .wrapping_add(u32::try_from(frame.len()).unwrap_or(u32::MAX));
                if frame[0] & 1 != 0 && frame[..6] != [0xFF; 6] {
                    counters.mprc = counters.mprc.wrapping_add(1);
                }
            }
            RxOutcome::Dropped(RxDrop::Dma) => {
                counters.rx_dropped += 1;
                counters.rx_dma_errors += 1;
            }
            RxOutcome::Dropped(RxDrop::NoDescriptor) => counters.rx_no_descriptor += 1,
            RxOutcome::Dropped(_) => counters.rx_dropped += 1,
            RxOutcome::NoDescriptor => {}
        }
        outcome
    }

    fn deliver<M: Bytes<GuestAddress>>(
        &mut self,
        mem: &M,
        frame: &[u8],
        strip_vlan: bool,
        max_frame: u32,
    ) -> RxOutcome
    where
        M::E: std::error::Error + Send + Sync + 'static,
    {
        if frame.len() < 14 {
            return RxOutcome::Dropped(RxDrop::Runt);
        }
        if frame.len() + 4 > max_frame as usize {
            return RxOutcome::Dropped(RxDrop::TooLong);
        }
        let count = self.count();
        if count == 0 || self.head >= count || self.tail >= count {
            crate::debug_ratelimited!(
                "igbvf: RX ring unusable (len {:#x}, head {}, tail {})",
                self.len,
                self.head,
                self.tail
            );
            return RxOutcome::Dropped(RxDrop::BadRing);
        }
        let tagged = frame.len() >= 18 && frame[12..14] == [0x81, 0x00];
        let (data, vlan) = if strip_vlan && tagged {
            let mut d = Vec::with_capacity(frame.len() - 4);
            d.extend_from_slice(&frame[..12]);
            d.extend_from_slice(&frame[16..]);
            (d, Some(u16::from_be_bytes([frame[14], frame[15]])))
        } else {
            (frame.to_vec(), None)
        };
        let pkt = self.packet_buffer();
        let (hlen, sph) = if self.header_split() {
            let parsed = parse_header_len(&data);
            let hbuf = self.header_buffer();
            if parsed <= hbuf {
                (parsed, true)
            } else {
                (hbuf.min(data.len()), false)
            }
        } else {
            (0, false)
        };
        let rest = data.len() - hlen;
        let needed = if self.header_split() {
            1 + rest.saturating_sub(pkt).div_ceil(pkt)
        } else if data.len() > pkt {
            return RxOutcome::Dropped(RxDrop::TooLong);
        } else {
            1
        };
        if needed > self.available() as usize {
            if self.srrctl & SRRCTL_DROP_EN != 0 {
                return RxOutcome::Dropped(RxDrop::NoDescriptor);
            }
            return RxOutcome::NoDescriptor;
        }
        let mut status = RXD_STAT_DD | RXD_STAT_IXSM;
        if vlan.is_some() {
            status |= RXD_STAT_VP;
        }
        let mut off = 0;
        for i in 0..needed {
            let last = i + 1 == needed;
            let at = match self.desc_addr(self.head) {
                Ok(a) => a,
                Err(_) => return RxOutcome::Dropped(RxDrop::Dma),
            };
            let mut d = [0u8; 16];
            if dma_read(mem, at, &mut d).is_err() {
                return RxOutcome::Dropped(RxDrop::Dma);
            }
            let pkt_addr = u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]);
            let hdr_addr =
                u64::from_le_bytes([d[8], d[9], d[10], d[11], d[12], d[13], d[14], d[15]]);
            let h = if i == 0 { hlen } else { 0 };
            let chunk = &data[off + h..(off + h + pkt).min(data.len())];
            let mut written = Ok(());
            if h > 0 {
                written = dma_write(mem, GuestAddress(hdr_addr), &data[off..off + h]);
            }
            if written.is_ok() && !chunk.is_empty() {
                written = dma_write(mem, GuestAddress(pkt_addr), chunk);
            }
            off += h + chunk.len();
            let mut st = status;
            if last || written.is_err() {
                st |= RXD_STAT_EOP;
            }
            if written.is_err() {
                st |= RXD_ERR_RXE;
            }
            let hdr_info = if h > 0 {
                // h <= 15 * 64: fits in the 10-bit field.
                (u32::try_from(h).unwrap_or(0) << RXD_HDR_LEN_SHIFT)
                    | if sph { RXD_HDR_SPH } else { 0 }
            } else {
                0
            };
            // A packet buffer is at most 127 KiB; the field is 16 bits: mask.
            let len = u32::try_from(chunk.len()).unwrap_or(0) & 0xFFFF;
            let dword3 = len | (u32::from(vlan.unwrap_or(0)) << 16);
            if self
                .write_back(mem, at, hdr_info << 16, dword3, st)
                .is_err()
            {
                return RxOutcome::Dropped(RxDrop::Dma);
            }
            self.head = (self.head + 1) % count;
            if let Err(e) = written {
                crate::debug_ratelimited!("igbvf: RX buffer unreachable: {e}");
                return RxOutcome::Dropped(RxDrop::Dma);
            }
        }
        RxOutcome::Delivered
    }

    fn write_back<M: Bytes<GuestAddress>>(
        &self,
        mem: &M,
        at: GuestAddress,
        dword0: u32,
        dword3: u32,
        status: u32,
    ) -> Result<(), IgbvfError>
    where
        M::E: std::error::Error + Send + Sync + 'static,
    {
        let mut lower = [0u8; 8];
        lower[..4].copy_from_slice(&dword0.to_le_bytes());
        dma_write(mem, at, &lower)?;
        let upper = at.checked_add(12).ok_or(IgbvfError::AddressOverflow)?;
        let status_at = at.checked_add(8).ok_or(IgbvfError::AddressOverflow)?;
        dma_write(mem, upper, &dword3.to_le_bytes())?;
        fence(Ordering::Release);
        dma_write(mem, status_at, &status.to_le_bytes())
    }
}
