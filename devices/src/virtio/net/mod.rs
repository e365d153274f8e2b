//! virtio-net: MAC, link status, mergeable receive buffers and checksum offload in both
//! directions ([`offload`]), with a packet backend (a unix seqpacket socket, one frame per
//! message, or a TAP device, which takes the virtio-net header along). A worker thread per
//! device runs both directions: the driver's notifications and the backend's readability
//! wake it, so no vCPU thread copies packets.

pub mod backend;
pub mod offload;
mod worker;

use std::sync::Arc;
use std::thread::JoinHandle;

use virtio_queue::QueueT;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

pub use backend::{NetBackend, SeqpacketBackend, TapBackend, seqpacket_accept, seqpacket_listen};

use super::pause::PauseGate;
use super::{ActivateContext, ActivateError, VirtioDevice, read_config_bytes};
use crate::warn_ratelimited;

/// virtio device type of network cards.
pub const VIRTIO_ID_NET: u16 = 1;
/// Feature bits: the device takes frames with partial checksums.
pub const F_CSUM: u64 = 1 << 0;
/// The driver takes frames with partial checksums.
pub const F_GUEST_CSUM: u64 = 1 << 1;
/// The device has a MAC address.
pub const F_MAC: u64 = 1 << 5;
/// Receive buffers may be merged.
pub const F_MRG_RXBUF: u64 = 1 << 15;
/// Link status in config.
pub const F_STATUS: u64 = 1 << 16;
/// The device is a failover standby for a primary device with the same MAC (a VF):
/// Linux's net_failover pairs the two (VIRTIO_NET_F_STANDBY).
pub const F_STANDBY: u64 = 1 << 62;
/// The link is up.
const LINK_UP: u16 = 1;
/// The receive and transmit queues.
pub const RX_QUEUE: u16 = 0;
/// The transmit queue.
pub const TX_QUEUE: u16 = 1;
/// Queue size offered.
pub const QUEUE_SIZE: u16 = 256;
pub use offload::NET_HDR_LEN;
/// Largest frame accepted from the guest or the backend (without the header).
pub const MAX_FRAME: usize = 65_562;

/// A virtio-net device.
pub struct VirtioNet {
    mac: [u8; 6],
    /// Offers VIRTIO_NET_F_STANDBY.
    standby: bool,
    backend: Option<Arc<dyn NetBackend>>,
    kicks: [Arc<EventFd>; 2],
    stop: Arc<EventFd>,
    pause: Arc<PauseGate>,
    worker: Option<JoinHandle<Arc<dyn NetBackend>>>,
}

impl std::fmt::Debug for VirtioNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioNet")
            .field("mac", &self.mac)
            .field("running", &self.worker.is_some())
            .finish_non_exhaustive()
    }
}

impl VirtioNet {
    /// A device with `mac` on `backend`.
    pub fn new(mac: [u8; 6], backend: Arc<dyn NetBackend>) -> std::io::Result<Self> {
        let evt = || EventFd::new(EFD_NONBLOCK).map(Arc::new);
        Ok(Self {
            mac,
            standby: false,
            backend: Some(backend),
            kicks: [evt()?, evt()?],
            stop: evt()?,
            pause: Arc::new(PauseGate::new()?),
            worker: None,
        })
    }

    /// Offers VIRTIO_NET_F_STANDBY: the guest pairs this device, as the standby, with a
    /// primary (its VF) of the same MAC.
    pub fn with_standby(mut self) -> Self {
        self.standby = true;
        self
    }

    fn config_bytes(&self) -> [u8; 10] {
        let mut c = [0u8; 10];
        c[..6].copy_from_slice(&self.mac);
        c[6..8].copy_from_slice(&LINK_UP.to_le_bytes());
        c[8..10].copy_from_slice(&1u16.to_le_bytes()); // max_virtqueue_pairs
        c
    }

    fn stop_worker(&mut self) {
        if let Some(worker) = self.worker.take() {
            // A parked worker must wake up to see the stop.
            self.pause.release();
            let _ = self.stop.write(1);
            match worker.join() {
                Ok(backend) => self.backend = Some(backend),
                Err(_) => warn_ratelimited!("virtio-net: worker panicked"),
            }
            // Drain the stop event for the next activation.
            let _ = self.stop.read();
        }
    }
}

impl VirtioDevice for VirtioNet {
    fn device_type(&self) -> u16 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        let standby = if self.standby { F_STANDBY } else { 0 };
        F_CSUM | F_GUEST_CSUM | F_MAC | F_STATUS | F_MRG_RXBUF | standby
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_bytes(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // The MAC is writable only with VIRTIO_NET_F_CTRL_MAC_ADDR-less legacy drivers;
        // this device keeps the MAC it was given.
        warn_ratelimited!(
            "virtio-net: ignored {}-byte config write at {offset:#x}",
            data.len()
        );
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        self.stop_worker();
        for q in [RX_QUEUE, TX_QUEUE] {
            if !ctx.queues.get(usize::from(q)).is_some_and(|q| q.ready()) {
                return Err(ActivateError::Queue(q));
            }
        }
        let backend = self
            .backend
            .take()
            .ok_or_else(|| ActivateError::Backend("backend lost".into()))?;
        if let Err(e) = backend.set_rx_offloads(ctx.features & F_GUEST_CSUM != 0) {
            // The backend then completes checksums itself, which is always correct.
            warn_ratelimited!("virtio-net: cannot set the backend's offloads: {e}");
        }
        let worker = worker::Worker::new(
            ctx,
            backend,
            self.kicks.clone(),
            self.stop.clone(),
            self.pause.clone(),
        );
        let handle = std::thread::Builder::new()
            .name("virtio-net".into())
            .spawn(move || worker.run())
            .map_err(|e| ActivateError::Backend(format!("cannot start worker: {e}")))?;
        self.worker = Some(handle);
        Ok(())
    }

    fn queue_notify(&mut self, queue: u16) {
        if let Some(k) = self.kicks.get(usize::from(queue)) {
            let _ = k.write(1);
        }
    }

    fn queue_events(&self) -> Vec<Arc<EventFd>> {
        self.kicks.to_vec()
    }

    fn reset(&mut self) {
        self.stop_worker();
    }

    fn pause(&mut self) {
        if self.worker.is_some() {
            self.pause.request();
        }
    }

    fn resume(&mut self) {
        self.pause.release();
    }

    fn is_paused(&self) -> bool {
        self.worker.is_none() || self.pause.is_parked()
    }
}

impl Drop for VirtioNet {
    fn drop(&mut self) {
        self.stop_worker();
    }
}

#[cfg(test)]
mod tests;
