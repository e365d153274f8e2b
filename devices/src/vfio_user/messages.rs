//! The payload of each message: plain structs, their wire sizes, and the constants of
//! <linux/vfio.h> they reuse (taken from vfio-bindings so they cannot drift).
//!
//! Layout choice: fields are read and written one by one, little-endian, with
//! the module `wire`; nothing is transmuted from the kernel's `#[repr(C)]` structs. That keeps
//! the decoder free of `unsafe` and of alignment questions on an untrusted byte stream, and
//! the struct sizes are pinned to vfio-bindings' by the const assertions below.

use std::os::fd::OwnedFd;

use vfio_bindings::bindings::vfio as kernel;

pub use kernel::{
    VFIO_DEVICE_FLAGS_PCI, VFIO_DEVICE_FLAGS_RESET, VFIO_DMA_MAP_FLAG_READ,
    VFIO_DMA_MAP_FLAG_WRITE, VFIO_DMA_UNMAP_FLAG_ALL, VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP,
    VFIO_DMA_UNMAP_FLAG_VADDR, VFIO_IRQ_INFO_AUTOMASKED, VFIO_IRQ_INFO_EVENTFD,
    VFIO_IRQ_INFO_MASKABLE, VFIO_IRQ_INFO_NORESIZE, VFIO_IRQ_SET_ACTION_MASK,
    VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_ACTION_TYPE_MASK, VFIO_IRQ_SET_ACTION_UNMASK,
    VFIO_IRQ_SET_DATA_BOOL, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE,
    VFIO_IRQ_SET_DATA_TYPE_MASK, VFIO_REGION_INFO_CAP_SPARSE_MMAP, VFIO_REGION_INFO_FLAG_CAPS,
    VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};

/// PCI region indices (0-5 BARs, 6 ROM, 7 config space, 8 VGA) and their count.
pub mod region {
    use vfio_bindings::bindings::vfio as kernel;
    /// BAR 0.
    pub const BAR0: u32 = kernel::VFIO_PCI_BAR0_REGION_INDEX;
    /// Expansion ROM.
    pub const ROM: u32 = kernel::VFIO_PCI_ROM_REGION_INDEX;
    /// Configuration space.
    pub const CONFIG: u32 = kernel::VFIO_PCI_CONFIG_REGION_INDEX;
    /// VGA (QEMU asks for it when num_regions > 8).
    pub const VGA: u32 = kernel::VFIO_PCI_VGA_REGION_INDEX;
    /// Number of standard PCI regions.
    pub const NUM: u32 = kernel::VFIO_PCI_NUM_REGIONS;
}

/// PCI interrupt indices and their count.
pub mod irq {
    use vfio_bindings::bindings::vfio as kernel;
    /// INTx.
    pub const INTX: u32 = kernel::VFIO_PCI_INTX_IRQ_INDEX;
    /// MSI.
    pub const MSI: u32 = kernel::VFIO_PCI_MSI_IRQ_INDEX;
    /// MSI-X.
    pub const MSIX: u32 = kernel::VFIO_PCI_MSIX_IRQ_INDEX;
    /// AER error notification.
    pub const ERR: u32 = kernel::VFIO_PCI_ERR_IRQ_INDEX;
    /// Device request (unplug) notification.
    pub const REQ: u32 = kernel::VFIO_PCI_REQ_IRQ_INDEX;
    /// Number of standard PCI interrupt indices.
    pub const NUM: u32 = kernel::VFIO_PCI_NUM_IRQS;
}

/// A payload or header size as the u32 that `argsz` and the header's `size` carry. Used on
/// the fixed sizes below (a few dozen bytes); the assert makes a misuse fail loudly.
pub const fn wire_len(n: usize) -> u32 {
    let v = n as u64;
    assert!(v <= u32::MAX as u64, "a vfio-user size fits a u32");
    (v & 0xffff_ffff) as u32
}

/// `struct vfio_iommu_type1_dma_map` as vfio-user carries it.
pub const DMA_MAP_SIZE: usize = 32;
/// `struct vfio_iommu_type1_dma_unmap` without the dirty bitmap.
pub const DMA_UNMAP_SIZE: usize = 24;
/// `struct vfio_device_info` as vfio-user carries it (no cap_offset).
pub const DEVICE_INFO_SIZE: usize = 16;
/// `struct vfio_region_info`.
pub const REGION_INFO_SIZE: usize = 32;
/// `struct vfio_irq_info`.
pub const IRQ_INFO_SIZE: usize = 16;
/// `struct vfio_irq_set` without its data.
pub const IRQ_SET_SIZE: usize = 20;
/// The offset, region and count that start REGION_READ/WRITE payloads.
pub const REGION_RW_SIZE: usize = 16;
/// `struct vfio_info_cap_header`.
pub const CAP_HEADER_SIZE: usize = 8;
/// `struct vfio_region_info_cap_sparse_mmap` before its areas (header, nr_areas, reserved).
pub const SPARSE_CAP_SIZE: usize = 16;
/// `struct vfio_region_sparse_mmap_area`.
pub const SPARSE_AREA_SIZE: usize = 16;
/// The fixed part of a GET_REGION_IO_FDS request and reply.
pub const REGION_IO_FDS_SIZE: usize = 16;
/// One sub-region of a GET_REGION_IO_FDS reply, as the spec defines it.
pub const IO_FD_SUB_REGION_SIZE: usize = 40;

const _: () = {
    use std::mem::size_of;
    assert!(size_of::<kernel::vfio_iommu_type1_dma_map>() == DMA_MAP_SIZE);
    assert!(size_of::<kernel::vfio_iommu_type1_dma_unmap>() == DMA_UNMAP_SIZE);
    assert!(size_of::<kernel::vfio_region_info>() == REGION_INFO_SIZE);
    assert!(size_of::<kernel::vfio_irq_info>() == IRQ_INFO_SIZE);
    assert!(size_of::<kernel::vfio_irq_set>() == IRQ_SET_SIZE);
    assert!(size_of::<kernel::vfio_info_cap_header>() == CAP_HEADER_SIZE);
    assert!(size_of::<kernel::vfio_region_sparse_mmap_area>() == SPARSE_AREA_SIZE);
};

/// The protocol version this implementation speaks (QEMU proposes and requires 0.0).
pub const PROTOCOL_MAJOR: u16 = 0;
/// See [`PROTOCOL_MAJOR`].
pub const PROTOCOL_MINOR: u16 = 0;

/// The `capabilities` object of VERSION. Absent keys take the spec's defaults
/// (see the `*_or_default` methods). Unknown keys are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Most fds the sender can receive in one message (default 1).
    pub max_msg_fds: Option<u64>,
    /// Most data bytes in one REGION/DMA read or write (default 1 MiB).
    pub max_data_xfer_size: Option<u64>,
    /// Most DMA mappings at once (default 65535).
    pub max_dma_maps: Option<u64>,
    /// Page sizes supported for DMA maps, or'ed (default 4096).
    pub pgsizes: Option<u64>,
    /// REGION_WRITE_MULTI support.
    pub write_multiple: Option<bool>,
    /// The migration object (pgsize, max_bitmap_size), kept only to answer it.
    pub migration: Option<MigrationCaps>,
}

/// The `migration` member of the capabilities.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationCaps {
    /// Dirty-page granularity.
    pub pgsize: Option<u64>,
    /// Largest dirty bitmap.
    pub max_bitmap_size: Option<u64>,
}

/// Spec default for `max_msg_fds`.
pub const DEFAULT_MAX_MSG_FDS: u64 = 1;
/// Spec default for `max_data_xfer_size`.
pub const DEFAULT_MAX_DATA_XFER_SIZE: u64 = 1 << 20;
/// Spec default for `max_dma_maps`.
pub const DEFAULT_MAX_DMA_MAPS: u64 = 65535;
/// Spec default for `pgsizes`.
pub const DEFAULT_PGSIZES: u64 = 4096;

impl Capabilities {
    /// `max_msg_fds` or the spec's default.
    pub fn max_msg_fds_or_default(&self) -> u64 {
        self.max_msg_fds.unwrap_or(DEFAULT_MAX_MSG_FDS)
    }
    /// `max_data_xfer_size` or the spec's default.
    pub fn max_data_xfer_size_or_default(&self) -> u64 {
        self.max_data_xfer_size
            .unwrap_or(DEFAULT_MAX_DATA_XFER_SIZE)
    }
    /// `max_dma_maps` or the spec's default.
    pub fn max_dma_maps_or_default(&self) -> u64 {
        self.max_dma_maps.unwrap_or(DEFAULT_MAX_DMA_MAPS)
    }
    /// `pgsizes` or the spec's default.
    pub fn pgsizes_or_default(&self) -> u64 {
        self.pgsizes.unwrap_or(DEFAULT_PGSIZES)
    }
}

/// VERSION, request and reply alike.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Version {
    /// Major version.
    pub major: u16,
    /// Minor version.
    pub minor: u16,
    /// The JSON capabilities, when present.
    pub capabilities: Option<Capabilities>,
}

/// DMA_MAP: client memory the server may access, with its fd.
#[derive(Debug)]
pub struct DmaMap {
    /// VFIO_DMA_MAP_FLAG_READ / _WRITE.
    pub flags: u32,
    /// Offset of the region in `fd`.
    pub offset: u64,
    /// DMA address.
    pub iova: u64,
    /// Length in bytes.
    pub size: u64,
    /// The memory's fd (none: the client offers DMA_READ/WRITE instead).
    pub fd: Option<OwnedFd>,
}

/// DMA_UNMAP, request and (echoed) reply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DmaUnmap {
    /// Reply size the client can take.
    pub argsz: u32,
    /// VFIO_DMA_UNMAP_FLAG_ALL (bit 1) and the unsupported dirty-bitmap (bit 0) and
    /// vaddr (bit 2) bits, as the kernel numbers them.
    pub flags: u32,
    /// DMA address of the mapping.
    pub iova: u64,
    /// Its size.
    pub size: u64,
}

/// DEVICE_GET_INFO reply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Size of the full reply payload (16).
    pub argsz: u32,
    /// VFIO_DEVICE_FLAGS_RESET / _PCI.
    pub flags: u32,
    /// Number of regions (QEMU needs at least 8).
    pub num_regions: u32,
    /// Number of interrupt types (QEMU needs at least 3).
    pub num_irqs: u32,
}

/// One mmappable area of a region, relative to the region's start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SparseArea {
    /// Offset in the region.
    pub offset: u64,
    /// Size.
    pub size: u64,
}

/// A region's description (`struct vfio_region_info` plus the sparse-mmap capability).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegionInfo {
    /// Region index.
    pub index: u32,
    /// VFIO_REGION_INFO_FLAG_* (READ, WRITE, MMAP, CAPS).
    pub flags: u32,
    /// Region size.
    pub size: u64,
    /// Offset to give mmap() on the region's fd.
    pub offset: u64,
    /// Sparse-mmap areas (empty: none, or not in this reply because argsz was too small).
    pub sparse: Vec<SparseArea>,
}

impl RegionInfo {
    /// Bytes this region's capabilities take after the fixed struct.
    pub fn caps_len(&self) -> usize {
        if self.sparse.is_empty() {
            0
        } else {
            SPARSE_CAP_SIZE + self.sparse.len().saturating_mul(SPARSE_AREA_SIZE)
        }
    }

    /// The argsz of a full reply for this region.
    pub fn full_argsz(&self) -> usize {
        REGION_INFO_SIZE + self.caps_len()
    }
}

/// GET_REGION_INFO reply.
#[derive(Debug, Default)]
pub struct RegionInfoReply {
    /// Size of the full reply (larger than what was sent when the client's argsz was too
    /// small for the capabilities: it then asks again).
    pub argsz: u32,
    /// The region.
    pub info: RegionInfo,
    /// The fd to mmap the region with (only with a full reply).
    pub fd: Option<OwnedFd>,
}

/// One sub-region of a GET_REGION_IO_FDS reply (the spec's 40-byte entry).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoFdSubRegion {
    /// Offset in the region.
    pub offset: u64,
    /// Access width, 0 for any.
    pub size: u64,
    /// Index of the fd among the reply's fds.
    pub fd_index: u32,
    /// 0 ioeventfd, 1 ioregionfd.
    pub kind: u32,
    /// KVM ioeventfd / ioregionfd flags.
    pub flags: u32,
    /// Datamatch value (ioeventfd) or user data (ioregionfd).
    pub datamatch: u64,
}

/// Sub-region type: ioeventfd.
pub const IO_FD_TYPE_IOEVENTFD: u32 = 0;
/// Sub-region type: ioregionfd.
pub const IO_FD_TYPE_IOREGIONFD: u32 = 1;

/// GET_REGION_IO_FDS reply.
#[derive(Debug, Default)]
pub struct RegionIoFdsReply {
    /// Size of the full reply.
    pub argsz: u32,
    /// Region index.
    pub index: u32,
    /// Number of sub-regions in the full reply.
    pub count: u32,
    /// The sub-regions (empty when argsz was too small).
    pub sub_regions: Vec<IoFdSubRegion>,
    /// Their fds.
    pub fds: Vec<OwnedFd>,
}

/// GET_IRQ_INFO reply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IrqInfo {
    /// Size of the full reply (16).
    pub argsz: u32,
    /// VFIO_IRQ_INFO_* flags.
    pub flags: u32,
    /// IRQ index.
    pub index: u32,
    /// Number of vectors.
    pub count: u32,
}

/// What SET_IRQS does (exactly one ACTION bit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrqAction {
    /// VFIO_IRQ_SET_ACTION_MASK.
    Mask,
    /// VFIO_IRQ_SET_ACTION_UNMASK.
    Unmask,
    /// VFIO_IRQ_SET_ACTION_TRIGGER.
    Trigger,
}

impl IrqAction {
    /// The flag bit.
    pub fn flag(self) -> u32 {
        match self {
            Self::Mask => VFIO_IRQ_SET_ACTION_MASK,
            Self::Unmask => VFIO_IRQ_SET_ACTION_UNMASK,
            Self::Trigger => VFIO_IRQ_SET_ACTION_TRIGGER,
        }
    }
}

/// The data of SET_IRQS (exactly one DATA bit).
#[derive(Debug)]
pub enum IrqData {
    /// DATA_NONE: act on every vector of the range; with count 0 and TRIGGER it disables
    /// the whole index.
    None,
    /// DATA_BOOL: act on vector `start + i` when `bools[i]`.
    Bool(Vec<bool>),
    /// DATA_EVENTFD: one eventfd per vector of the range; empty means de-assign the
    /// range's eventfds (the client sent none).
    Eventfds(Vec<OwnedFd>),
}

impl IrqData {
    /// The flag bit.
    pub fn flag(&self) -> u32 {
        match self {
            Self::None => VFIO_IRQ_SET_DATA_NONE,
            Self::Bool(_) => VFIO_IRQ_SET_DATA_BOOL,
            Self::Eventfds(_) => VFIO_IRQ_SET_DATA_EVENTFD,
        }
    }
}

/// SET_IRQS (`struct vfio_irq_set` semantics; eventfds travel as SCM_RIGHTS).
#[derive(Debug)]
pub struct IrqSet {
    /// IRQ index.
    pub index: u32,
    /// First vector.
    pub start: u32,
    /// Number of vectors.
    pub count: u32,
    /// The action.
    pub action: IrqAction,
    /// The data.
    pub data: IrqData,
}

impl IrqSet {
    /// True for the "disable the whole index" form: DATA_NONE, TRIGGER, count 0.
    pub fn is_disable(&self) -> bool {
        self.count == 0 && matches!(self.data, IrqData::None) && self.action == IrqAction::Trigger
    }
}

/// REGION_READ request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegionRead {
    /// Offset in the region.
    pub offset: u64,
    /// Region index.
    pub region: u32,
    /// Bytes to read.
    pub count: u32,
}

/// REGION_WRITE request and REGION_READ reply: an access with its data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegionData {
    /// Offset in the region.
    pub offset: u64,
    /// Region index.
    pub region: u32,
    /// The bytes (the wire's count is their length).
    pub data: Vec<u8>,
}

/// REGION_WRITE reply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegionWriteReply {
    /// Offset in the region.
    pub offset: u64,
    /// Region index.
    pub region: u32,
    /// Bytes written.
    pub count: u32,
}
