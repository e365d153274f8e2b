//! A ring-3 virtio-net driver on the transport in `virtio.rs`: negotiates the MAC feature
//! (and what the caller adds), reads the MAC, routes the three MSI-X vectors (receive,
//! transmit, configuration) to this CPU, sets up one receive and one transmit queue with a
//! buffer per descriptor, and moves frames: the caller writes and reads the frames, the
//! driver adds and strips the virtio-net header.

use crate::bootparams::BootParams;
use crate::lapic;
use crate::phys;
use crate::ring0::SPURIOUS_VECTOR;
use crate::virtio::{Scratch, VirtioError, VirtioPci, Vq, flags};

/// PCI device ID of a (modern) virtio-net function.
pub const DEVICE_ID: u16 = 0x1041;
/// Feature bit: the device has a MAC address in its configuration.
pub const F_MAC: u64 = 1 << 5;
/// Bytes of `virtio_net_hdr` (VERSION_1: with `num_buffers`) before every frame.
pub const HDR_LEN: u64 = 12;
/// Bytes of each receive and transmit buffer: header and frame.
pub const BUF_LEN: u64 = 2048;
/// The longest frame [`VirtioNet::queue_tx`] takes (Ethernet's 1514 fit).
pub const MAX_FRAME: usize = 1536;
/// IDT vectors the MSI-X entries deliver: receive, transmit completion, configuration.
pub const RX_VECTOR: u8 = 0x50;
/// See [`RX_VECTOR`].
pub const TX_VECTOR: u8 = 0x51;
/// See [`RX_VECTOR`].
pub const CONFIG_VECTOR: u8 = 0x52;
/// MSI-X table entries of the queues.
const RX_MSIX: u16 = 0;
const TX_MSIX: u16 = 1;
const CONFIG_MSIX: u16 = 2;

/// How to bring a device up.
#[derive(Debug, Clone, Copy)]
pub struct Setup {
    /// RAM for the rings and buffers: base and length.
    pub scratch: (u64, u64),
    /// Entries per queue (a power of two).
    pub queue_size: u16,
    /// Start with the transmit-completion vector masked.
    pub tx_masked: bool,
    /// Features wanted besides VIRTIO_NET_F_MAC and VERSION_1; the device must offer them.
    pub features: u64,
    /// Added to every guest-physical address the device is given (see `virtio::Vq`).
    pub dma_offset: u64,
}

impl Setup {
    /// Queues of `queue_size` in the RAM at `scratch` (base, length), DMA untranslated.
    pub const fn new(scratch: (u64, u64), queue_size: u16) -> Self {
        Self {
            scratch,
            queue_size,
            tx_masked: false,
            features: 0,
            dma_offset: 0,
        }
    }

    /// Behind an IOMMU: accepts VIRTIO_F_ACCESS_PLATFORM and hands the device IOVAs, each
    /// `dma_offset` from its guest-physical address.
    pub const fn translated(self, dma_offset: u64) -> Self {
        Self {
            features: self.features | crate::virtio::F_ACCESS_PLATFORM,
            dma_offset,
            ..self
        }
    }

    /// With the transmit-completion vector masked.
    pub const fn tx_masked(self) -> Self {
        Self {
            tx_masked: true,
            ..self
        }
    }
}

/// A running virtio-net device: descriptor `i` of each queue always points at buffer `i`.
#[derive(Debug)]
pub struct VirtioNet {
    /// The transport.
    pub dev: VirtioPci,
    /// Receive queue.
    pub rx: Vq,
    /// Transmit queue.
    pub tx: Vq,
    /// Guest-physical address of receive buffer 0 (the others follow, [`BUF_LEN`] apart).
    pub rx_bufs: u64,
    /// Guest-physical address of transmit buffer 0.
    pub tx_bufs: u64,
    /// The MAC address from the device's configuration.
    pub mac: [u8; 6],
    rx_posted: bool,
}

impl VirtioNet {
    /// Negotiates features, routes the MSI-X vectors to this CPU and sets the queues up
    /// as `setup` says; the device runs when this returns (no receive buffer posted yet).
    pub fn open(mut dev: VirtioPci, boot: &BootParams, setup: Setup) -> Result<Self, VirtioError> {
        dev.dma_offset = setup.dma_offset;
        let required = F_MAC | setup.features;
        let offered = dev.init(required)?;
        if offered & required != required {
            return Err(VirtioError::NotOffered(required & !offered));
        }
        let mut mac = [0u8; 6];
        for (i, b) in mac.iter_mut().enumerate() {
            *b = dev.config8(i as u64);
        }
        let mut scratch = Scratch::new(boot, setup.scratch.0, setup.scratch.1)?;
        lapic::enable(SPURIOUS_VECTOR);
        let apic = lapic::id();
        dev.msix_vector(RX_MSIX, apic, RX_VECTOR, false);
        dev.msix_vector(TX_MSIX, apic, TX_VECTOR, setup.tx_masked);
        dev.msix_vector(CONFIG_MSIX, apic, CONFIG_VECTOR, false);
        dev.msix_enable();
        let rx = dev.setup_queue(&mut scratch, 0, setup.queue_size, RX_MSIX)?;
        let tx = dev.setup_queue(&mut scratch, 1, setup.queue_size, TX_MSIX)?;
        dev.driver_ok()?;
        let n = u64::from(setup.queue_size);
        let rx_bufs = scratch.alloc(n * BUF_LEN, 4096)?;
        let tx_bufs = scratch.alloc(n * BUF_LEN, 4096)?;
        Ok(Self {
            dev,
            rx,
            tx,
            rx_bufs,
            tx_bufs,
            mac,
            rx_posted: false,
        })
    }

    /// Offers every receive buffer, the first time only (later they are offered again as
    /// they are used), and notifies the device.
    pub fn fill_rx(&mut self) {
        if !self.rx_posted {
            for slot in 0..self.rx.size {
                self.post_rx(slot);
            }
            self.rx_posted = true;
        }
        self.rx.notify();
    }

    /// Offers receive buffer `slot` (without notifying).
    pub fn post_rx(&mut self, slot: u16) {
        self.rx.set_desc(
            slot,
            self.rx_bufs + u64::from(slot) * BUF_LEN,
            BUF_LEN as u32,
            flags::WRITE,
            0,
        );
        self.rx.push(slot);
    }

    /// Copies the frame in receive buffer `slot` (after the header) into `out`.
    pub fn read_rx(&self, slot: u16, out: &mut [u8]) {
        phys::read_bytes(self.rx_bufs + u64::from(slot) * BUF_LEN + HDR_LEN, out);
    }

    /// Writes `frame` (at most [`MAX_FRAME`] bytes) after a zero header into transmit
    /// buffer `slot` and offers it (without notifying).
    pub fn queue_tx(&mut self, slot: u16, frame: &[u8]) {
        let buf = self.tx_bufs + u64::from(slot) * BUF_LEN;
        let hdr = HDR_LEN as usize;
        let total = hdr + frame.len();
        // Header (zeros), then the frame, written a quadword at a time.
        let mut bytes = [0u8; MAX_FRAME + 16];
        bytes[hdr..total].copy_from_slice(frame);
        phys::write_bytes(buf, &bytes[..total.next_multiple_of(8)]);
        self.tx.set_desc(slot, buf, total as u32, 0, 0);
        self.tx.push(slot);
    }

    /// Pops a used receive chain of length 0 (a frame that could not be written) and posts
    /// the buffer again; false if none is there. Used transmit chains are reclaimed first.
    pub fn rx_used_empty(&mut self) -> bool {
        while self.tx.pop_used().is_some() {}
        match self.rx.pop_used() {
            Some((id, 0)) => {
                self.post_rx(id as u16);
                self.rx.notify();
                true
            }
            _ => false,
        }
    }
}
