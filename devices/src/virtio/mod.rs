//! virtio: the device interface the transports drive, and the modern (virtio 1.2) PCI
//! transport. Devices get their queues at DRIVER_OK and signal the driver through
//! [`VirtioInterrupt`], which the transport backs with MSI-X.

pub mod dma;
pub mod iommu;
pub mod net;
pub mod pause;
#[cfg(test)]
pub(crate) mod test_utils;
pub mod transport;

use std::fmt;
use std::sync::Arc;

use virtio_queue::Queue;

/// Device status bits (virtio 1.2, 2.1).
pub mod status {
    /// The guest found the device.
    pub const ACKNOWLEDGE: u8 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u8 = 2;
    /// The driver is ready.
    pub const DRIVER_OK: u8 = 4;
    /// Feature negotiation is done.
    pub const FEATURES_OK: u8 = 8;
    /// The device needs a reset.
    pub const DEVICE_NEEDS_RESET: u8 = 0x40;
    /// The guest gave up on the device.
    pub const FAILED: u8 = 0x80;
}

/// Transport feature bits.
pub mod features {
    /// Modern device (required by this transport).
    pub const VERSION_1: u64 = 1 << 32;
    /// DMA goes through the platform's IOMMU.
    pub const ACCESS_PLATFORM: u64 = 1 << 33;
}

/// "No MSI-X vector" in the common configuration.
pub const NO_VECTOR: u16 = 0xffff;

/// Notifications from a device to its driver.
pub trait VirtioInterrupt: Send + Sync + fmt::Debug {
    /// The device used buffers of `queue`.
    fn signal_queue(&self, queue: u16);
    /// The device configuration changed.
    fn signal_config(&self);
}

/// Why a device refused to start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActivateError {
    /// A queue the device needs is not set up.
    #[error("queue {0} is not ready or invalid")]
    Queue(u16),
    /// The backend could not start.
    #[error("backend: {0}")]
    Backend(String),
}

/// What a device gets at DRIVER_OK.
#[derive(Debug)]
pub struct ActivateContext {
    /// Guest memory as the device's DMA sees it (translated when behind the IOMMU).
    pub mem: dma::DmaMemory,
    /// The queues, in order (those the driver did not enable are not ready).
    pub queues: Vec<Queue>,
    /// How to notify the driver.
    pub interrupt: Arc<dyn VirtioInterrupt>,
    /// The features the driver accepted.
    pub features: u64,
}

/// A virtio device, transport-independent.
pub trait VirtioDevice: Send + fmt::Debug {
    /// The virtio device ID (1 = net, 23 = iommu).
    fn device_type(&self) -> u16;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// The features the device offers (the transport adds VERSION_1).
    fn features(&self) -> u64;
    /// A read of the device-specific configuration.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// A write of the device-specific configuration.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// DRIVER_OK: start with these queues.
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError>;
    /// The driver notified `queue`.
    fn queue_notify(&mut self, queue: u16);
    /// One eventfd per queue that the device's worker waits on for notifications: the
    /// transport makes them doorbells when it can. Empty if the device has none.
    fn queue_events(&self) -> Vec<Arc<vmm_sys_util::eventfd::EventFd>> {
        Vec::new()
    }
    /// The driver reset the device: drop the queues and return to the initial state.
    fn reset(&mut self);
    /// The VM is pausing: stop touching guest memory and queues (returns at once; see
    /// [`VirtioDevice::is_paused`]). Devices that only act on vCPU threads have nothing to
    /// do.
    fn pause(&mut self) {}
    /// The VM runs again.
    fn resume(&mut self) {}
    /// Whether the device holds still after [`VirtioDevice::pause`].
    fn is_paused(&self) -> bool {
        true
    }
}

/// Reads a slice of a device's config struct `bytes` at `offset` into `data`; out of range
/// reads as zero.
pub fn read_config_bytes(bytes: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if start < bytes.len() {
        let end = bytes.len().min(start + data.len());
        data[..end - start].copy_from_slice(&bytes[start..end]);
    }
}

/// How many of the `left` bytes still to write a device-writable descriptor of `len` bytes
/// takes: at most `len`, so the count is a u32, as the used ring's lengths are.
pub(crate) fn desc_take(len: u32, left: usize) -> u32 {
    len.min(u32::try_from(left).unwrap_or(u32::MAX))
}
