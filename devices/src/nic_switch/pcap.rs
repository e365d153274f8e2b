//! Classic pcap (the libpcap file format tcpdump and Wireshark open): a 24-byte global
//! header, then per frame a 16-byte record header and the frame. Written through any
//! `std::io::Write`, with the timestamps the caller gives.

use std::io::{self, Write};
use std::time::Duration;

/// Magic number of a microsecond-resolution pcap file (written in host order).
pub const PCAP_MAGIC: u32 = 0xa1b2_c3d4;
/// Format version written.
pub const PCAP_VERSION: (u16, u16) = (2, 4);
/// Snapshot length declared (and frames longer than it are cut to it).
pub const PCAP_SNAPLEN: u32 = 65535;
/// LINKTYPE_ETHERNET.
pub const LINKTYPE_ETHERNET: u32 = 1;

/// A pcap stream being written.
#[derive(Debug)]
pub struct PcapWriter<W: Write> {
    out: W,
}

impl<W: Write> PcapWriter<W> {
    /// Writes the global header and returns the writer.
    pub fn new(mut out: W) -> io::Result<Self> {
        let mut hdr = [0u8; 24];
        hdr[0..4].copy_from_slice(&PCAP_MAGIC.to_ne_bytes());
        hdr[4..6].copy_from_slice(&PCAP_VERSION.0.to_ne_bytes());
        hdr[6..8].copy_from_slice(&PCAP_VERSION.1.to_ne_bytes());
        // thiszone and sigfigs stay 0.
        hdr[16..20].copy_from_slice(&PCAP_SNAPLEN.to_ne_bytes());
        hdr[20..24].copy_from_slice(&LINKTYPE_ETHERNET.to_ne_bytes());
        out.write_all(&hdr)?;
        Ok(Self { out })
    }

    /// Writes one frame stamped `ts` (since the Unix epoch; seconds past 2^32 wrap, as
    /// the format's 32-bit field does).
    pub fn write_frame(&mut self, ts: Duration, frame: &[u8]) -> io::Result<()> {
        let orig_len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
        let incl_len = orig_len.min(PCAP_SNAPLEN);
        let mut rec = [0u8; 16];
        let secs = (ts.as_secs() & 0xffff_ffff) as u32;
        rec[0..4].copy_from_slice(&secs.to_ne_bytes());
        rec[4..8].copy_from_slice(&ts.subsec_micros().to_ne_bytes());
        rec[8..12].copy_from_slice(&incl_len.to_ne_bytes());
        rec[12..16].copy_from_slice(&orig_len.to_ne_bytes());
        self.out.write_all(&rec)?;
        self.out.write_all(&frame[..incl_len as usize])
    }

    /// Flushes and returns the underlying writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}
