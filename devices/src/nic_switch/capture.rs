//! Packet capture of any port to a pcap stream. A capture sees the frames that crossed
//! its port, both ways, as the port's side sees them: a VF's frames untagged when it has
//! a port VLAN, the uplink's as they are on the wire. Dropped frames are not captured.
//! A write error stops the capture (forwarding goes on) and is reported by
//! [`Switch::stop_capture`].

use std::io::Write;
use std::time::Duration;

use super::pcap::PcapWriter;
use super::{NicSwitchError, PortId, Switch};

/// Where a running capture writes.
pub(crate) struct Capture {
    writer: PcapWriter<Box<dyn Write + Send>>,
    ts_offset: Duration,
    failed: Option<std::io::Error>,
    frames: u64,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture")
            .field("ts_offset", &self.ts_offset)
            .field("failed", &self.failed)
            .field("frames", &self.frames)
            .finish_non_exhaustive()
    }
}

impl Switch {
    /// Starts capturing `port` into `out` (the pcap header is written at once). Frames
    /// are stamped `ts_offset + now`: pass the Unix time of the switch's time zero.
    pub fn start_capture(
        &mut self,
        port: PortId,
        out: Box<dyn Write + Send>,
        ts_offset: Duration,
    ) -> Result<(), NicSwitchError> {
        if self.captures.contains_key(&port) {
            return Err(NicSwitchError::CaptureRunning(port));
        }
        let writer =
            PcapWriter::new(out).map_err(|source| NicSwitchError::Capture { port, source })?;
        self.captures.insert(
            port,
            Capture {
                writer,
                ts_offset,
                failed: None,
                frames: 0,
            },
        );
        Ok(())
    }

    /// Stops capturing `port`: flushes and returns the writer and the number of frames
    /// written, or the write error that stopped the capture early.
    pub fn stop_capture(
        &mut self,
        port: PortId,
    ) -> Result<(Box<dyn Write + Send>, u64), NicSwitchError> {
        let cap = self
            .captures
            .remove(&port)
            .ok_or(NicSwitchError::NoCapture(port))?;
        if let Some(source) = cap.failed {
            return Err(NicSwitchError::Capture { port, source });
        }
        let frames = cap.frames;
        let out = cap
            .writer
            .finish()
            .map_err(|source| NicSwitchError::Capture { port, source })?;
        Ok((out, frames))
    }

    /// Whether `port` is being captured.
    pub fn capturing(&self, port: PortId) -> bool {
        self.captures.contains_key(&port)
    }

    /// Records `frame` on `port`'s capture, if one runs.
    pub(crate) fn capture(&mut self, port: PortId, now: Duration, frame: &[u8]) {
        let Some(cap) = self.captures.get_mut(&port) else {
            return;
        };
        if cap.failed.is_some() {
            return;
        }
        match cap.writer.write_frame(cap.ts_offset + now, frame) {
            Ok(()) => cap.frames += 1,
            Err(e) => {
                crate::warn_ratelimited!("nic switch: capture of {port} stopped: {e}");
                cap.failed = Some(e);
            }
        }
    }
}
