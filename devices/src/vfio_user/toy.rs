//! A toy PCI device for the tests: config space in memory, BAR0 backed by a memfd (with a
//! sparse-mmap area), MSI-X with three vectors, DMA through the client's fd. A test double
//! (also for other crates' tests, with the `test-utils` feature).
#![allow(
    missing_docs,
    clippy::missing_panics_doc,
    clippy::cast_possible_truncation
)]

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;

use crate::vfio_user::*;

/// A fresh memfd of `size` bytes.
pub fn memfd(size: u64) -> File {
    // SAFETY: a NUL-terminated name and constant flags; the result is checked.
    let raw = unsafe { libc::memfd_create(c"vfio-user-test".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(
        raw >= 0,
        "memfd_create: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `raw` is a fresh descriptor nothing else owns.
    let f = File::from(unsafe { OwnedFd::from_raw_fd(raw) });
    f.set_len(size).unwrap();
    f
}

/// A fresh eventfd.
pub fn eventfd() -> OwnedFd {
    // SAFETY: constant arguments; the result is checked.
    let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    assert!(raw >= 0);
    // SAFETY: `raw` is a fresh descriptor nothing else owns.
    unsafe { OwnedFd::from_raw_fd(raw) }
}

/// A pipe (read end non-blocking): sending copies of the write end and then reading EOF
/// from the read end proves that every copy was closed.
pub fn pipe() -> (File, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) };
    assert_eq!(rc, 0);
    // SAFETY: fresh descriptors owned by nothing else.
    let r = File::from(unsafe { OwnedFd::from_raw_fd(fds[0]) });
    // SAFETY: likewise.
    let w = unsafe { OwnedFd::from_raw_fd(fds[1]) };
    (r, w)
}

/// True when every write end of the pipe is closed (read gives EOF, not EAGAIN).
pub fn all_writers_closed(r: &File) -> bool {
    let mut b = [0u8; 1];
    matches!(std::io::Read::read(&mut &*r, &mut b), Ok(0))
}

/// Reads an eventfd's counter (0 if it was not signalled).
pub fn eventfd_count(fd: &OwnedFd) -> u64 {
    let mut b = [0u8; 8];
    match std::io::Read::read(&mut File::from(fd.try_clone().unwrap()), &mut b) {
        Ok(8) => u64::from_le_bytes(b),
        _ => 0,
    }
}

pub const BAR0_SIZE: u64 = 0x4000;
pub const CONFIG_SIZE: usize = 256;
pub const MSIX_VECTORS: u32 = 3;

/// Config offsets of the toy's capabilities: MSI-X (table in BAR0 at 0, PBA at 0x800),
/// then PCI Express.
pub const MSIX_CAP: usize = 0x40;
pub const EXP_CAP: usize = 0x50;

/// The toy's config space at reset.
fn initial_config() -> [u8; CONFIG_SIZE] {
    let mut config = [0u8; CONFIG_SIZE];
    config[0..2].copy_from_slice(&0x8086u16.to_le_bytes());
    config[2..4].copy_from_slice(&0x10cau16.to_le_bytes());
    config[6] = 0x10; // capability list
    config[0x0b] = 0x02; // class: network
    // BAR0: 64-bit memory, non-prefetchable.
    config[0x10] = 0x4;
    config[0x34] = MSIX_CAP as u8;
    config[MSIX_CAP] = 0x11;
    config[MSIX_CAP + 1] = EXP_CAP as u8;
    config[MSIX_CAP + 2..MSIX_CAP + 4].copy_from_slice(&(MSIX_VECTORS as u16 - 1).to_le_bytes());
    config[MSIX_CAP + 8..MSIX_CAP + 12].copy_from_slice(&0x800u32.to_le_bytes());
    config[EXP_CAP] = 0x10;
    config
}

pub struct Toy {
    pub config: [u8; CONFIG_SIZE],
    /// The size region info gives BAR0 (a server that lies: not its real size).
    pub bar0_info_size: u64,
    pub bar0: File,
    pub msix: Vec<Option<OwnedFd>>,
    pub dma: BTreeMap<u64, (u64, u64, File)>,
    /// Every DMA_MAP (`map IOVA+SIZE @OFFSET`) and DMA_UNMAP (`unmap IOVA+SIZE`), in order.
    pub dma_log: Vec<String>,
    pub resets: u32,
}

impl std::fmt::Debug for Toy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Toy")
            .field("dma_log", &self.dma_log)
            .field("resets", &self.resets)
            .finish_non_exhaustive()
    }
}

impl Default for Toy {
    fn default() -> Self {
        Self::new()
    }
}

impl Toy {
    pub fn new() -> Self {
        Self {
            config: initial_config(),
            bar0_info_size: BAR0_SIZE,
            bar0: memfd(BAR0_SIZE),
            msix: (0..MSIX_VECTORS).map(|_| None).collect(),
            dma: BTreeMap::new(),
            dma_log: Vec::new(),
            resets: 0,
        }
    }

    /// Reads guest memory through the DMA mappings, as a device's DMA engine would.
    pub fn dma_read(&self, iova: u64, len: usize) -> Option<Vec<u8>> {
        let (&base, (size, offset, f)) = self.dma.range(..=iova).next_back()?;
        if iova + len as u64 > base + size {
            return None;
        }
        let mut v = vec![0u8; len];
        f.read_exact_at(&mut v, offset + (iova - base)).ok()?;
        Some(v)
    }

    fn range(index: u32, offset: u64, len: usize, size: u64) -> Result<u64, DeviceError> {
        let end = offset.checked_add(len as u64);
        if end.is_none_or(|e| e > size) {
            return Err(DeviceError::OutOfRange { index, offset, len });
        }
        Ok(offset)
    }
}

impl VfioUserDevice for Toy {
    fn device_info(&self) -> DeviceInfo {
        DeviceInfo {
            argsz: 0,
            flags: VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET,
            num_regions: region::NUM,
            num_irqs: irq::NUM,
        }
    }

    fn region_info(&self, index: u32) -> Result<(RegionInfo, Option<OwnedFd>), DeviceError> {
        let rw = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
        Ok(match index {
            region::BAR0 => (
                RegionInfo {
                    index,
                    flags: rw | VFIO_REGION_INFO_FLAG_MMAP,
                    size: self.bar0_info_size,
                    offset: 0,
                    // The MSI-X table and PBA live in the first page: not mappable.
                    sparse: vec![SparseArea {
                        offset: 0x1000,
                        size: 0x3000,
                    }],
                },
                Some(
                    self.bar0
                        .as_fd()
                        .try_clone_to_owned()
                        .map_err(DeviceError::Io)?,
                ),
            ),
            region::CONFIG => (
                RegionInfo {
                    index,
                    flags: rw,
                    size: CONFIG_SIZE as u64,
                    ..Default::default()
                },
                None,
            ),
            _ => (
                RegionInfo {
                    index,
                    ..Default::default()
                },
                None,
            ),
        })
    }

    fn irq_info(&self, index: u32) -> Result<IrqInfo, DeviceError> {
        let count = match index {
            irq::INTX => 1,
            irq::MSIX => MSIX_VECTORS,
            _ => 0,
        };
        Ok(IrqInfo {
            argsz: 0,
            flags: VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE,
            index,
            count,
        })
    }

    fn region_read(&mut self, index: u32, offset: u64, data: &mut [u8]) -> Result<(), DeviceError> {
        match index {
            region::CONFIG => {
                let o = Self::range(index, offset, data.len(), CONFIG_SIZE as u64)? as usize;
                data.copy_from_slice(&self.config[o..o + data.len()]);
                Ok(())
            }
            region::BAR0 => {
                let o = Self::range(index, offset, data.len(), BAR0_SIZE)?;
                self.bar0.read_exact_at(data, o).map_err(DeviceError::Io)
            }
            _ => Err(DeviceError::OutOfRange {
                index,
                offset,
                len: data.len(),
            }),
        }
    }

    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        match index {
            region::CONFIG => {
                let o = Self::range(index, offset, data.len(), CONFIG_SIZE as u64)? as usize;
                // IDs are read-only.
                if o < 4 {
                    return Ok(());
                }
                self.config[o..o + data.len()].copy_from_slice(data);
                Ok(())
            }
            region::BAR0 => {
                let o = Self::range(index, offset, data.len(), BAR0_SIZE)?;
                self.bar0.write_all_at(data, o).map_err(DeviceError::Io)
            }
            _ => Err(DeviceError::OutOfRange {
                index,
                offset,
                len: data.len(),
            }),
        }
    }

    fn dma_map(&mut self, map: DmaMapping) -> Result<(), DeviceError> {
        self.dma_log.push(format!(
            "map {:#x}+{:#x} @{:#x}",
            map.iova, map.size, map.offset
        ));
        self.dma
            .insert(map.iova, (map.size, map.offset, File::from(map.fd)));
        Ok(())
    }

    fn dma_unmap(&mut self, iova: u64, size: u64) -> Result<(), DeviceError> {
        self.dma_log.push(format!("unmap {iova:#x}+{size:#x}"));
        self.dma.remove(&iova);
        Ok(())
    }

    fn dma_unmap_all(&mut self) -> Result<(), DeviceError> {
        self.dma.clear();
        Ok(())
    }

    fn set_irqs(&mut self, set: IrqSet) -> Result<(), DeviceError> {
        if set.index != irq::MSIX {
            return if set.is_disable() {
                Ok(())
            } else {
                Err(DeviceError::Unsupported("interrupts other than MSI-X"))
            };
        }
        if set.is_disable() {
            self.msix.iter_mut().for_each(|v| *v = None);
            return Ok(());
        }
        let range = set.start as usize..(set.start + set.count) as usize;
        match (set.action, set.data) {
            (IrqAction::Trigger, IrqData::Eventfds(fds)) if fds.is_empty() => {
                self.msix[range].iter_mut().for_each(|v| *v = None);
            }
            (IrqAction::Trigger, IrqData::Eventfds(fds)) => {
                for (slot, fd) in self.msix[range].iter_mut().zip(fds) {
                    *slot = Some(fd);
                }
            }
            (IrqAction::Trigger, IrqData::None) => {
                for fd in self.msix[range].iter().flatten() {
                    let mut f = File::from(fd.try_clone().map_err(DeviceError::Io)?);
                    std::io::Write::write_all(&mut f, &1u64.to_le_bytes())
                        .map_err(DeviceError::Io)?;
                }
            }
            _ => return Err(DeviceError::Unsupported("MSI-X masking")),
        }
        Ok(())
    }

    fn reset(&mut self) -> Result<(), DeviceError> {
        self.resets += 1;
        self.config = initial_config();
        Ok(())
    }
}
