//! The virtio 1.2 PCI transport (modern only): a PCI Express endpoint whose BAR 0 holds
//! the common configuration, ISR status, device configuration, notification area and the
//! MSI-X table and PBA, each announced by a vendor-specific capability.
//!
//! BAR 0 layout (32 KiB, 32-bit non-prefetchable):
//! ```text
//! 0x0000 common configuration   0x1000 ISR status      0x2000 device configuration
//! 0x3000 notifications (4 bytes per queue)             0x4000 MSI-X table   0x6000 PBA
//! ```

use crate::GuestMemory;
use crate::sync::lock;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};

use super::dma::{self, DmaMemory, IommuContext};
use super::{ActivateContext, NO_VECTOR, VirtioDevice, VirtioInterrupt, features, status};
use crate::bits::{hi32, lo32};
use crate::interrupt::{DoorbellRegistry, MsixDelivery};
use crate::pci::capability::{self, MsixLocation};
use crate::pci::msix::Msix;
use crate::pci::regs::*;
use crate::pci::{Bar, ConfigSpace, HeaderType, PciDevice, PciId};
use crate::{debug_ratelimited, warn_ratelimited};
use iommu::RequesterId;

/// virtio's PCI vendor ID.
pub const VIRTIO_VENDOR_ID: u16 = 0x1af4;
/// Modern device IDs are 0x1040 + the virtio device type.
pub const VIRTIO_DEVICE_ID_BASE: u16 = 0x1040;

/// Vendor capability types.
const CAP_COMMON: u8 = 1;
const CAP_NOTIFY: u8 = 2;
const CAP_ISR: u8 = 3;
const CAP_DEVICE: u8 = 4;

/// BAR 0 regions.
pub const BAR_SIZE: u64 = 0x8000;
const COMMON_OFFSET: u64 = 0x0000;
const COMMON_SIZE: u64 = 0x38;
const ISR_OFFSET: u64 = 0x1000;
const DEVICE_OFFSET: u64 = 0x2000;
const DEVICE_SIZE: u64 = 0x1000;
const NOTIFY_OFFSET: u64 = 0x3000;
const NOTIFY_MULTIPLIER: u32 = 4;
const MSIX_TABLE_OFFSET: u64 = 0x4000;
const MSIX_PBA_OFFSET: u64 = 0x6000;

/// Most queues a device may have here (the notify area is 4 KiB).
const MAX_QUEUES: u16 = 1024;

// BAR 0 is a 32-bit BAR: every offset and length in it fits the 32-bit fields of the
// capabilities that describe it ([`bar0_field`]).
const _: () = assert!(BAR_SIZE <= 1 << 32);

/// `x`, an offset or a length inside BAR 0, as a capability's 32-bit field holds it.
fn bar0_field(x: u64) -> u32 {
    debug_assert!(x <= BAR_SIZE);
    lo32(x)
}

/// The state the guest programs through the common configuration.
#[derive(Debug)]
struct Common {
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    msix_config: u16,
    status: u8,
    config_generation: u8,
    queue_select: u16,
    queues: Vec<Queue>,
}

/// What the device's interrupt handle shares with the transport.
#[derive(Debug)]
struct Signals {
    isr: AtomicU8,
    msix: Mutex<Msix>,
    queue_vectors: Mutex<Vec<u16>>,
    config_vector: Mutex<u16>,
}

impl VirtioInterrupt for Signals {
    fn signal_queue(&self, queue: u16) {
        self.isr.fetch_or(1, Ordering::SeqCst);
        let vector = lock(&self.queue_vectors)
            .get(usize::from(queue))
            .copied()
            .unwrap_or(NO_VECTOR);
        if vector != NO_VECTOR {
            lock(&self.msix).notify(vector);
        }
    }

    fn signal_config(&self) {
        self.isr.fetch_or(2, Ordering::SeqCst);
        let vector = *lock(&self.config_vector);
        if vector != NO_VECTOR {
            lock(&self.msix).notify(vector);
        }
    }
}

/// A virtio device on the PCI transport.
pub struct VirtioPciDevice {
    config: ConfigSpace,
    msix_cap: usize,
    device: Box<dyn VirtioDevice>,
    common: Common,
    signals: Arc<Signals>,
    mem: GuestMemory,
    activated: bool,
    /// The IOMMU this function sits behind, with its requester ID.
    iommu: Option<(IommuContext, RequesterId)>,
    doorbells: Option<Arc<dyn DoorbellRegistry>>,
    /// BAR 0's base while the doorbells are registered there.
    doorbell_base: Option<u64>,
}

impl std::fmt::Debug for VirtioPciDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioPciDevice")
            .field("device", &self.device)
            .field("activated", &self.activated)
            .field("doorbell_base", &self.doorbell_base)
            .finish_non_exhaustive()
    }
}

impl VirtioPciDevice {
    /// Wraps `device` as a PCI Express endpoint (what sits in a root port's slot); its DMA
    /// uses `mem`, its interrupts go to `msi`; with `doorbells`, queue notifications
    /// become doorbells wherever the guest maps BAR 0.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemory,
        delivery: MsixDelivery,
        doorbells: Option<Arc<dyn DoorbellRegistry>>,
    ) -> Self {
        Self::build(device, mem, delivery, doorbells, EXP_TYPE_ENDPOINT)
    }

    /// Like [`VirtioPciDevice::new`], as a root-complex integrated endpoint (PCIe device
    /// type 9, no link): what a function on the root bus is, e.g. the virtio-iommu.
    pub fn new_integrated(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemory,
        delivery: MsixDelivery,
        doorbells: Option<Arc<dyn DoorbellRegistry>>,
    ) -> Self {
        Self::build(device, mem, delivery, doorbells, EXP_TYPE_RC_END)
    }

    fn build(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemory,
        delivery: MsixDelivery,
        doorbells: Option<Arc<dyn DoorbellRegistry>>,
        pcie_type: u16,
    ) -> Self {
        let dtype = device.device_type();
        let class = match dtype {
            1 => [0x02, 0x00, 0x00],
            // virtio-iommu: "other system peripheral", as QEMU has it.
            23 => [0x08, 0x80, 0x00],
            _ => [0xff, 0x00, 0x00],
        };
        let mut config = ConfigSpace::new(
            HeaderType::Endpoint,
            PciId {
                vendor: VIRTIO_VENDOR_ID,
                device: VIRTIO_DEVICE_ID_BASE + dtype,
                class,
                revision: 1,
                subsystem_vendor: VIRTIO_VENDOR_ID,
                subsystem: 0x40,
            },
        );
        let nq = usize::from(Self::queue_count(device.as_ref()));
        let vectors = Self::vectors_for(device.as_ref());
        // A fresh endpoint has room for all of these: they cannot fail.
        let _ = config.add_bar(0, Bar::mem32(BAR_SIZE));
        let pcie = capability::pcie(pcie_type, 0, None);
        let _ = config.add_capability(&pcie.body, &pcie.writable);
        let msix = capability::msix(
            vectors,
            MsixLocation {
                bar: 0,
                offset: bar0_field(MSIX_TABLE_OFFSET),
            },
            MsixLocation {
                bar: 0,
                offset: bar0_field(MSIX_PBA_OFFSET),
            },
        );
        let msix_cap = config
            .add_capability(&msix.body, &msix.writable)
            .unwrap_or_default();
        for (kind, offset, len) in [
            (CAP_COMMON, COMMON_OFFSET, COMMON_SIZE),
            (CAP_ISR, ISR_OFFSET, 1),
            (CAP_DEVICE, DEVICE_OFFSET, DEVICE_SIZE),
        ] {
            let _ = config.add_capability(&vendor_cap(kind, offset, len, None), &[]);
        }
        let notify_len = (nq as u64).max(1) * u64::from(NOTIFY_MULTIPLIER);
        let _ = config.add_capability(
            &vendor_cap(
                CAP_NOTIFY,
                NOTIFY_OFFSET,
                notify_len,
                Some(NOTIFY_MULTIPLIER),
            ),
            &[],
        );
        let queues = device.queue_max_sizes()[..nq]
            .iter()
            .map(|max| Queue::new(*max).unwrap_or_else(|_| Queue::new(256).expect("256 is valid")))
            .collect();
        Self {
            config,
            msix_cap,
            common: Common {
                device_feature_select: 0,
                driver_feature_select: 0,
                driver_features: 0,
                msix_config: NO_VECTOR,
                status: 0,
                config_generation: 0,
                queue_select: 0,
                queues,
            },
            signals: Arc::new(Signals {
                isr: AtomicU8::new(0),
                msix: Mutex::new(Msix::with_delivery(vectors, delivery)),
                queue_vectors: Mutex::new(vec![NO_VECTOR; nq]),
                config_vector: Mutex::new(NO_VECTOR),
            }),
            device,
            mem,
            activated: false,
            iommu: None,
            doorbells,
            doorbell_base: None,
        }
    }

    /// Puts the function behind an IOMMU as requester `rid`: it offers
    /// VIRTIO_F_ACCESS_PLATFORM and, once the driver accepts it, its DMA is translated.
    pub fn behind_iommu(mut self, ctx: IommuContext, rid: RequesterId) -> Self {
        self.iommu = Some((ctx, rid));
        self
    }

    /// Memory as the device will see it with `features` negotiated.
    fn dma_memory(&self, features: u64) -> DmaMemory {
        match &self.iommu {
            Some((ctx, rid)) => dma::behind(
                self.mem.clone(),
                ctx.translation(),
                ctx.faults.clone(),
                *rid,
                features & features::ACCESS_PLATFORM != 0,
            ),
            None => dma::plain(self.mem.clone()),
        }
    }

    /// MSI-X vectors the transport gives `device`: one per queue plus one for
    /// configuration changes (routed delivery must provide as many).
    pub fn vectors_for(device: &dyn VirtioDevice) -> u16 {
        Self::queue_count(device) + 1
    }

    /// The queues the transport gives `device`: as many as it has, at most [`MAX_QUEUES`].
    fn queue_count(device: &dyn VirtioDevice) -> u16 {
        u16::try_from(device.queue_max_sizes().len()).map_or(MAX_QUEUES, |n| n.min(MAX_QUEUES))
    }

    /// Moves the doorbells to where BAR 0 decodes now (or removes them).
    fn update_doorbells(&mut self) {
        let Some(registry) = self.doorbells.clone() else {
            return;
        };
        let base = self
            .config
            .bar_address(0)
            .filter(|b| *b != 0 && self.config.memory_enabled());
        if base == self.doorbell_base {
            return;
        }
        let events = self.device.queue_events();
        let addr =
            |base: u64, q: usize| base + NOTIFY_OFFSET + q as u64 * u64::from(NOTIFY_MULTIPLIER);
        if let Some(old) = self.doorbell_base.take() {
            for (q, evt) in events.iter().enumerate() {
                if let Err(e) = registry.unregister(addr(old, q), evt) {
                    warn_ratelimited!("virtio: cannot remove doorbell {q}: {e}");
                }
            }
        }
        if let Some(new) = base {
            for (q, evt) in events.iter().enumerate() {
                if let Err(e) = registry.register(addr(new, q), evt) {
                    // The trapped path in bar_write still delivers the notification.
                    warn_ratelimited!("virtio: cannot place doorbell {q}: {e}");
                }
            }
            self.doorbell_base = Some(new);
        }
    }

    /// The features offered: the device's plus VERSION_1, plus ACCESS_PLATFORM behind an
    /// IOMMU.
    fn device_features(&self) -> u64 {
        let platform = if self.iommu.is_some() {
            features::ACCESS_PLATFORM
        } else {
            0
        };
        self.device.features() | features::VERSION_1 | platform
    }

    fn reset(&mut self) {
        if self.activated {
            self.device.reset();
        }
        self.activated = false;
        let c = &mut self.common;
        c.status = 0;
        c.driver_features = 0;
        c.device_feature_select = 0;
        c.driver_feature_select = 0;
        c.queue_select = 0;
        c.msix_config = NO_VECTOR;
        for q in &mut c.queues {
            q.reset();
        }
        lock(&self.signals.queue_vectors).fill(NO_VECTOR);
        *lock(&self.signals.config_vector) = NO_VECTOR;
        self.signals.isr.store(0, Ordering::SeqCst);
    }

    fn set_status(&mut self, value: u8) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.common.status;
        let mut new = value;
        if new & status::FEATURES_OK != 0 && old & status::FEATURES_OK == 0 {
            let offered = self.device_features();
            let accepted = self.common.driver_features;
            if accepted & !offered != 0 || accepted & features::VERSION_1 == 0 {
                // The driver must accept VERSION_1 and nothing we did not offer.
                new &= !status::FEATURES_OK;
            }
        }
        self.common.status = new;
        if new & status::DRIVER_OK != 0 && old & status::DRIVER_OK == 0 && !self.activated {
            self.activate();
        }
    }

    fn activate(&mut self) {
        if self.common.status & status::FEATURES_OK == 0 {
            self.common.status |= status::DEVICE_NEEDS_RESET;
            return;
        }
        let dma = self.dma_memory(self.common.driver_features);
        let mut queues = Vec::with_capacity(self.common.queues.len());
        for (i, q) in self.common.queues.iter().enumerate() {
            // The device gets its own copy; the transport keeps the programmed values.
            let copy = if q.ready() {
                Queue::try_from(q.state()).ok().filter(|c| c.is_valid(&dma))
            } else {
                Queue::new(q.max_size()).ok()
            };
            match copy {
                Some(c) => queues.push(c),
                None => {
                    warn_ratelimited!("virtio: queue {i} is enabled but invalid");
                    self.common.status |= status::DEVICE_NEEDS_RESET;
                    return;
                }
            }
        }
        let ctx = ActivateContext {
            mem: dma,
            queues,
            interrupt: self.signals.clone(),
            features: self.common.driver_features,
        };
        match self.device.activate(ctx) {
            Ok(()) => self.activated = true,
            Err(e) => {
                warn_ratelimited!("virtio: activation failed: {e}");
                self.common.status |= status::DEVICE_NEEDS_RESET;
            }
        }
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        let q = usize::from(self.common.queue_select);
        self.common.queues.get_mut(q)
    }

    fn common_read(&self, offset: u64, data: &mut [u8]) {
        let c = &self.common;
        let q = c.queues.get(usize::from(c.queue_select));
        let vectors = lock(&self.signals.queue_vectors);
        let value: u64 = match (offset, data.len()) {
            (0x00, 4) => u64::from(c.device_feature_select),
            (0x04, 4) => match c.device_feature_select {
                0 => self.device_features() & 0xffff_ffff,
                1 => self.device_features() >> 32,
                _ => 0,
            },
            (0x08, 4) => u64::from(c.driver_feature_select),
            (0x0c, 4) => match c.driver_feature_select {
                0 => c.driver_features & 0xffff_ffff,
                1 => c.driver_features >> 32,
                _ => 0,
            },
            (0x10, 2) => u64::from(*lock(&self.signals.config_vector)),
            (0x12, 2) => c.queues.len() as u64,
            (0x14, 1) => u64::from(c.status),
            (0x15, 1) => u64::from(c.config_generation),
            (0x16, 2) => u64::from(c.queue_select),
            (0x18, 2) => q.map_or(0, |q| u64::from(q.size())),
            (0x1a, 2) => vectors
                .get(usize::from(c.queue_select))
                .map_or(u64::from(NO_VECTOR), |v| u64::from(*v)),
            (0x1c, 2) => q.map_or(0, |q| u64::from(q.ready())),
            (0x1e, 2) => u64::from(c.queue_select),
            (0x20, 4) => q.map_or(0, |q| q.desc_table() & 0xffff_ffff),
            (0x24, 4) => q.map_or(0, |q| q.desc_table() >> 32),
            (0x28, 4) => q.map_or(0, |q| q.avail_ring() & 0xffff_ffff),
            (0x2c, 4) => q.map_or(0, |q| q.avail_ring() >> 32),
            (0x30, 4) => q.map_or(0, |q| q.used_ring() & 0xffff_ffff),
            (0x34, 4) => q.map_or(0, |q| q.used_ring() >> 32),
            (0x20 | 0x28 | 0x30, 8) => q.map_or(0, |q| match offset {
                0x20 => q.desc_table(),
                0x28 => q.avail_ring(),
                _ => q.used_ring(),
            }),
            _ => {
                debug_ratelimited!("virtio: common read {offset:#x}/{}", data.len());
                0
            }
        };
        data.copy_from_slice(&value.to_le_bytes()[..data.len()]);
    }

    fn common_write(&mut self, offset: u64, data: &[u8]) {
        let mut raw = [0u8; 8];
        raw[..data.len()].copy_from_slice(data);
        let v = u64::from_le_bytes(raw);
        // The value as a register of each width takes it (each arm below matches its width).
        let v8 = raw[0];
        let v16 = u16::from_le_bytes([raw[0], raw[1]]);
        let v32 = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
        let live = self.common.status & status::DRIVER_OK != 0;
        let nq = self.common.queues.len();
        match (offset, data.len()) {
            (0x00, 4) => self.common.device_feature_select = v32,
            (0x08, 4) => self.common.driver_feature_select = v32,
            (0x0c, 4) if self.common.status & status::FEATURES_OK == 0 => {
                let f = &mut self.common.driver_features;
                match self.common.driver_feature_select {
                    0 => *f = (*f & !0xffff_ffff) | v,
                    1 => *f = (*f & 0xffff_ffff) | (v << 32),
                    _ => {}
                }
            }
            (0x10, 2) => *lock(&self.signals.config_vector) = self.valid_vector(v16),
            (0x14, 1) => self.set_status(v8),
            (0x16, 2) => self.common.queue_select = v16,
            (0x1a, 2) => {
                let vector = self.valid_vector(v16);
                if let Some(slot) =
                    lock(&self.signals.queue_vectors).get_mut(usize::from(self.common.queue_select))
                {
                    *slot = vector;
                }
            }
            _ if live => debug_ratelimited!("virtio: queue setup write after DRIVER_OK"),
            (0x18, 2) => {
                if let Some(q) = self.selected_queue() {
                    q.set_size(v16);
                }
            }
            (0x1c, 2) => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(v == 1);
                }
            }
            (0x20..=0x37, 4 | 8) if usize::from(self.common.queue_select) < nq => {
                let low = Some(v32);
                let high = (data.len() == 8).then_some(hi32(v));
                let Some(q) = self.selected_queue() else {
                    return;
                };
                match offset {
                    0x20 => q.set_desc_table_address(low, high),
                    0x24 => q.set_desc_table_address(None, low),
                    0x28 => q.set_avail_ring_address(low, high),
                    0x2c => q.set_avail_ring_address(None, low),
                    0x30 => q.set_used_ring_address(low, high),
                    0x34 => q.set_used_ring_address(None, low),
                    _ => {}
                }
            }
            _ => debug_ratelimited!("virtio: common write {offset:#x}/{}", data.len()),
        }
    }

    /// A vector the device can use, or NO_VECTOR (what the driver reads back to learn the
    /// assignment failed).
    fn valid_vector(&self, v: u16) -> u16 {
        if v < lock(&self.signals.msix).vectors() {
            v
        } else {
            NO_VECTOR
        }
    }

    fn msix_control_written(&mut self) {
        let control = self.config.read_u16(self.msix_cap + MSIX_FLAGS);
        lock(&self.signals.msix).set_control(
            control & MSIX_FLAGS_ENABLE != 0,
            control & MSIX_FLAGS_MASKALL != 0,
        );
    }
}

/// A virtio vendor-specific capability.
fn vendor_cap(kind: u8, offset: u64, len: u64, multiplier: Option<u32>) -> Vec<u8> {
    let cap_len: u8 = if multiplier.is_some() { 20 } else { 16 };
    let mut c = vec![0u8; usize::from(cap_len)];
    c[0] = CAP_ID_VNDR;
    c[2] = cap_len;
    c[3] = kind;
    c[4] = 0; // BAR 0
    c[8..12].copy_from_slice(&bar0_field(offset).to_le_bytes());
    c[12..16].copy_from_slice(&bar0_field(len).to_le_bytes());
    if let Some(m) = multiplier {
        c[16..20].copy_from_slice(&m.to_le_bytes());
    }
    c
}

impl PciDevice for VirtioPciDevice {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn pause(&mut self) {
        self.device.pause();
    }

    fn resume(&mut self) {
        self.device.resume();
    }

    fn is_paused(&self) -> bool {
        self.device.is_paused()
    }

    fn config_write(&mut self, offset: usize, data: &[u8]) {
        if !self.config.write(offset, data) {
            return;
        }
        let touches = |reg: usize, len: usize| offset < reg + len && reg < offset + data.len();
        if touches(self.msix_cap + MSIX_FLAGS, 2) {
            self.msix_control_written();
        }
        if touches(COMMAND, 2) || touches(BAR0, 4) {
            self.update_doorbells();
        }
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        if bar != 0 {
            data.fill(0xff);
            return;
        }
        match offset {
            o if o < COMMON_SIZE => self.common_read(o, data),
            ISR_OFFSET => {
                data.fill(0);
                data[0] = self.signals.isr.swap(0, Ordering::SeqCst);
            }
            o if (DEVICE_OFFSET..DEVICE_OFFSET + DEVICE_SIZE).contains(&o) => {
                self.device.read_config(o - DEVICE_OFFSET, data)
            }
            o if (MSIX_TABLE_OFFSET..MSIX_PBA_OFFSET).contains(&o) => {
                lock(&self.signals.msix).table_read(o - MSIX_TABLE_OFFSET, data)
            }
            o if (MSIX_PBA_OFFSET..BAR_SIZE).contains(&o) => {
                lock(&self.signals.msix).pba_read(o - MSIX_PBA_OFFSET, data)
            }
            _ => data.fill(0),
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if bar != 0 {
            return;
        }
        match offset {
            o if o < COMMON_SIZE => self.common_write(o, data),
            o if (DEVICE_OFFSET..DEVICE_OFFSET + DEVICE_SIZE).contains(&o) => {
                self.device.write_config(o - DEVICE_OFFSET, data)
            }
            o if (NOTIFY_OFFSET..MSIX_TABLE_OFFSET).contains(&o) => {
                let queue = u16::try_from((o - NOTIFY_OFFSET) / u64::from(NOTIFY_MULTIPLIER));
                if let Ok(queue) = queue
                    && self.activated
                    && usize::from(queue) < self.common.queues.len()
                {
                    self.device.queue_notify(queue);
                }
            }
            o if (MSIX_TABLE_OFFSET..MSIX_PBA_OFFSET).contains(&o) => {
                lock(&self.signals.msix).table_write(o - MSIX_TABLE_OFFSET, data)
            }
            _ => debug_ratelimited!("virtio: BAR write at {offset:#x} ignored"),
        }
    }
}

impl Drop for VirtioPciDevice {
    fn drop(&mut self) {
        // A removed device leaves no doorbells behind.
        self.config.set_u16(COMMAND, 0);
        self.update_doorbells();
    }
}

#[cfg(test)]
mod tests;
