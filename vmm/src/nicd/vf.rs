//! One VF as a vfio-user device: the 82576 VF model behind BAR0, the MSI-X BAR, and a
//! config space virtualized the way kernel vfio-pci presents a VF (8086:10CA, BAR type
//! bits, MSI-X and PCIe capabilities), with the client's memory as the VF's DMA space.
//!
//! Regions: BAR0 (16 KiB, the VF registers), BAR3 (16 KiB: the MSI-X table at 0, which
//! the client emulates, so reads give zeros; the PBA at 0x2000 from the masks and pending
//! bits SET_IRQS told us), config (4 KiB). None is mmappable: every register access comes
//! as REGION_READ/WRITE, so a TDT write starts the TX walk at once.
//!
//! The config space itself lives in the PF card ([`SriovPf`]); FLR and Bus Master reach
//! the VF model through a [`VfShim`] that the card calls and this device drains.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

use devices::pci::regs::{BAR0, CAP_ID_EXP, CMD_MEMORY, COMMAND, EXP_DEVCTL};
use devices::sriov::igbvf::{Igbvf, MonotonicClock, PfPolicy, VfBackends, VfIrq};
use devices::sriov::pf::{
    DEVCTL_BCR_FLR, SriovPf, VENDOR_INTEL, VF_BAR_SIZE, VF_DEVICE_ID, VF_MSIX_BAR,
    VF_MSIX_PBA_OFFSET, VF_MSIX_VECTORS, VfControl, VfFactory, VfFunction,
};
use devices::sync::lock;
use devices::vfio_user::{
    DeviceError, DeviceInfo, DmaMapping, IrqAction, IrqData, IrqInfo, IrqSet, RegionInfo,
    VFIO_DEVICE_FLAGS_PCI, VFIO_DEVICE_FLAGS_RESET, VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_INFO_MASKABLE,
    VFIO_IRQ_INFO_NORESIZE, VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
    VfioUserDevice, irq, region,
};

use super::fabric::{Fabric, SwitchTx};

/// MSI-X vectors of a VF (the card's, so the server's SET_IRQS range check and these
/// arrays cannot disagree).
pub const MSIX_VECTORS: usize = VF_MSIX_VECTORS as usize;
/// Size of the config region (PCIe extended config space).
pub const CONFIG_SIZE: u64 = 4096;
/// BAR index of the MSI-X table and PBA.
const MSIX_BAR: u32 = VF_MSIX_BAR as u32;
/// Type bits of the VF's BARs: 64-bit, prefetchable memory (as the PF's SR-IOV
/// capability announces them).
const BAR_FLAGS: u32 = 0x4 | 0x8;
/// COMMAND.Memory Space within COMMAND's low byte.
const CMD_MEMORY_BYTE: u8 = CMD_MEMORY.to_le_bytes()[0];
/// Bytes of BAR registers (BAR0..BAR5).
const BAR_BYTES: usize = 24;

/// What the PF card told a VF's shim: an FLR, or new controls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VfCtl {
    /// Function level reset.
    Flr,
    /// COMMAND.Bus Master or the MSI-X controls changed.
    Control(VfControl),
}

/// Control events of every VF, in order, as (VF, event).
pub type CtlQueue = Arc<Mutex<Vec<(u16, VfCtl)>>>;

/// The PF card's view of a VF: its BARs are served by the vfio-user device, so the shim
/// only passes FLRs and control changes on.
#[derive(Debug)]
pub struct VfShim {
    index: u16,
    events: CtlQueue,
}

impl VfFunction for VfShim {
    fn bar_read(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn bar_write(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}

    fn flr(&mut self) {
        lock(&self.events).push((self.index, VfCtl::Flr));
    }

    fn control_changed(&mut self, control: VfControl) {
        lock(&self.events).push((self.index, VfCtl::Control(control)));
    }
}

/// Makes [`VfShim`]s that report into one queue.
#[derive(Debug)]
pub struct ShimFactory(pub CtlQueue);

impl VfFactory for ShimFactory {
    fn create(&mut self, index: u16) -> Box<dyn VfFunction> {
        Box::new(VfShim {
            index,
            events: self.0.clone(),
        })
    }
}

#[derive(Debug, Default)]
struct MsixState {
    fds: [Option<File>; MSIX_VECTORS],
    masked: [bool; MSIX_VECTORS],
    pending: [bool; MSIX_VECTORS],
}

impl MsixState {
    fn fire(&mut self, v: usize) {
        if self.masked[v] {
            self.pending[v] = true;
            return;
        }
        if let Some(f) = &self.fds[v] {
            // Non-blocking (nonblocking_file): a full counter (EAGAIN) means the client has
            // an interrupt pending anyway.
            let _ = (&*f).write(&1u64.to_ne_bytes());
        }
    }
}

/// A client's interrupt fd, made non-blocking: raising a vector must never block nicd's one
/// thread, whatever the client passed (an eventfd with a full counter, or a pipe or FIFO
/// nobody reads); a write that would block is dropped.
fn nonblocking_file(fd: std::os::fd::OwnedFd) -> File {
    use std::os::fd::AsRawFd;
    // SAFETY: F_GETFL on a descriptor this function owns.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags >= 0 {
        // SAFETY: F_SETFL on the same descriptor, with the flags it had plus O_NONBLOCK.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) };
    }
    File::from(fd)
}

/// The VF's MSI-X vectors as the client's eventfds (the client applies its MSI-X table).
#[derive(Debug, Default)]
pub struct MsixIrq(Mutex<MsixState>);

impl VfIrq for MsixIrq {
    fn raise(&self, vector: u16) {
        let v = usize::from(vector);
        if v < MSIX_VECTORS {
            lock(&self.0).fire(v);
        }
    }
}

impl MsixIrq {
    /// Whether vector `v` has an eventfd.
    pub fn has_eventfd(&self, v: usize) -> bool {
        lock(&self.0).fds.get(v).is_some_and(Option::is_some)
    }

    fn pba(&self) -> u64 {
        let s = lock(&self.0);
        (0..MSIX_VECTORS)
            .filter(|&v| s.pending[v])
            .fold(0, |acc, v| acc | 1 << v)
    }

    fn set(&self, set: IrqSet) -> Result<(), DeviceError> {
        let mut s = lock(&self.0);
        if set.is_disable() {
            *s = MsixState::default();
            return Ok(());
        }
        // The server checked start + count against the vector count.
        let start = set.start as usize;
        let range = start..start + set.count as usize;
        let picked: Vec<usize> = match &set.data {
            IrqData::Bool(b) => range
                .clone()
                .zip(b)
                .filter(|(_, b)| **b)
                .map(|(v, _)| v)
                .collect(),
            _ => range.clone().collect(),
        };
        match (set.action, set.data) {
            (IrqAction::Trigger, IrqData::Eventfds(fds)) => {
                let mut fds = fds.into_iter();
                for v in range {
                    s.fds[v] = fds.next().map(nonblocking_file);
                }
            }
            (IrqAction::Trigger, _) => picked.into_iter().for_each(|v| s.fire(v)),
            (IrqAction::Mask, IrqData::Eventfds(_)) | (IrqAction::Unmask, IrqData::Eventfds(_)) => {
                return Err(DeviceError::Unsupported("mask and unmask eventfds"));
            }
            (IrqAction::Mask, _) => picked.into_iter().for_each(|v| s.masked[v] = true),
            (IrqAction::Unmask, _) => {
                for v in picked {
                    s.masked[v] = false;
                    if std::mem::take(&mut s.pending[v]) {
                        s.fire(v);
                    }
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
struct DmaRegion {
    region: Arc<GuestRegionMmap>,
    writable: bool,
}

/// One VF served over vfio-user.
#[derive(Debug)]
pub struct VfDevice {
    index: u16,
    igbvf: Igbvf<GuestMemoryMmap>,
    pf: Arc<Mutex<SriovPf>>,
    ctl: CtlQueue,
    irq: Arc<MsixIrq>,
    dma: BTreeMap<u64, DmaRegion>,
    /// The files behind the DMA mappings, one descriptor per file (by device and inode):
    /// a client that maps page by page (Linux behind an IOMMU) sends the same memfd with
    /// each mapping, and keeping each of those descriptors would run nicd out of them.
    dma_files: HashMap<(u64, u64), Arc<File>>,
    bars: [u8; BAR_BYTES],
    /// COMMAND.Memory Space as the client last wrote it: a VF has no such bit (it reads
    /// 0), so vfio-pci virtualizes it, and so do we.
    memory_enable: bool,
}

fn range_check(index: u32, offset: u64, len: usize, size: u64) -> Result<usize, DeviceError> {
    let end = offset.checked_add(len as u64);
    if end.is_none_or(|e| e > size) {
        return Err(DeviceError::OutOfRange { index, offset, len });
    }
    usize::try_from(offset).map_err(|_| DeviceError::OutOfRange { index, offset, len })
}

impl VfDevice {
    /// VF `index`, its frames going through `fabric`, its config space in `pf`.
    pub fn new(
        index: u16,
        fabric: Arc<Mutex<Fabric>>,
        pf: Arc<Mutex<SriovPf>>,
        ctl: CtlQueue,
        policy: PfPolicy,
    ) -> Self {
        let irq = Arc::new(MsixIrq::default());
        let backends = VfBackends {
            irq: irq.clone(),
            tx: Box::new(SwitchTx::new(index, fabric)),
            clock: Arc::new(MonotonicClock),
        };
        Self {
            index,
            igbvf: Igbvf::new(GuestMemoryMmap::new(), backends, policy),
            pf,
            ctl,
            irq,
            dma: BTreeMap::new(),
            dma_files: HashMap::new(),
            bars: [0; BAR_BYTES],
            memory_enable: false,
        }
    }

    /// The VF model.
    pub fn igbvf(&self) -> &Igbvf<GuestMemoryMmap> {
        &self.igbvf
    }

    /// The VF model, mutably (frames from the switch, timers, policy).
    pub fn igbvf_mut(&mut self) -> &mut Igbvf<GuestMemoryMmap> {
        &mut self.igbvf
    }

    /// The MSI-X eventfds.
    pub fn irq(&self) -> &MsixIrq {
        &self.irq
    }

    /// Function level reset, through the VF's config space as a client's FLR goes.
    pub fn flr(&mut self) {
        let exp = lock(&self.pf)
            .vf_config(self.index)
            .and_then(|cs| cs.find_capability(CAP_ID_EXP));
        match exp {
            Some(exp) => {
                lock(&self.pf).vf_config_write(
                    self.index,
                    exp + EXP_DEVCTL,
                    &DEVCTL_BCR_FLR.to_le_bytes(),
                );
                self.apply_controls();
            }
            None => self.igbvf.flr(),
        }
    }

    /// Acts on what the PF card reported for this VF.
    fn apply_controls(&mut self) {
        let mine: Vec<VfCtl> = {
            let mut q = lock(&self.ctl);
            let (mine, rest) = q.drain(..).partition(|(i, _)| *i == self.index);
            *q = rest;
            mine.into_iter().map(|(_, e)| e).collect()
        };
        for e in mine {
            match e {
                VfCtl::Flr => {
                    self.memory_enable = false;
                    self.igbvf.flr();
                }
                VfCtl::Control(c) if c.bus_master != self.igbvf.bus_master() => {
                    self.igbvf.set_bus_master(c.bus_master);
                }
                VfCtl::Control(_) => {}
            }
        }
    }

    fn bar_dword(&self, n: usize) -> u32 {
        let b = &self.bars[n * 4..n * 4 + 4];
        let raw = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let mask = !(u32::try_from(VF_BAR_SIZE).unwrap_or(u32::MAX) - 1);
        match n {
            0 | 3 => (raw & mask) | BAR_FLAGS,
            1 | 4 => raw,
            _ => 0,
        }
    }

    /// The byte at `offset` as vfio-pci presents it, if it virtualizes that byte.
    fn virtual_byte(&self, offset: usize) -> Option<u8> {
        let ids = [VENDOR_INTEL.to_le_bytes(), VF_DEVICE_ID.to_le_bytes()];
        match offset {
            0..4 => Some(ids[offset / 2][offset % 2]),
            o if (BAR0..BAR0 + BAR_BYTES).contains(&o) => {
                let i = o - BAR0;
                Some(self.bar_dword(i / 4).to_le_bytes()[i % 4])
            }
            _ => None,
        }
    }

    fn config_read(&self, offset: u64, data: &mut [u8]) -> Result<(), DeviceError> {
        let off = range_check(region::CONFIG, offset, data.len(), CONFIG_SIZE)?;
        {
            // The card takes config cycles of 1, 2 or 4 naturally aligned bytes; a client
            // reads more at once (QEMU reads the whole 4 KiB at realize).
            let pf = lock(&self.pf);
            for (start, len) in config_cycles(off, data.len()) {
                pf.vf_config_read(self.index, off + start, &mut data[start..start + len]);
            }
        }
        for (i, b) in data.iter_mut().enumerate() {
            if let Some(v) = self.virtual_byte(off + i) {
                *b = v;
            }
        }
        if let Some(b) = COMMAND.checked_sub(off).and_then(|i| data.get_mut(i)) {
            *b = (*b & !CMD_MEMORY_BYTE)
                | if self.memory_enable {
                    CMD_MEMORY_BYTE
                } else {
                    0
                };
        }
        Ok(())
    }

    fn config_write(&mut self, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        let off = range_check(region::CONFIG, offset, data.len(), CONFIG_SIZE)?;
        if let Some(b) = COMMAND.checked_sub(off).and_then(|i| data.get(i)) {
            self.memory_enable = b & CMD_MEMORY_BYTE != 0;
        }
        // Runs of bytes that go to the card, split around the virtualized ones.
        let mut run_start = None;
        for i in 0..=data.len() {
            let o = off + i;
            let virt = i < data.len() && self.virtual_byte(o).is_some();
            if i == data.len() || virt {
                if let Some(s) = run_start.take() {
                    let mut pf = lock(&self.pf);
                    for (start, len) in config_cycles(off + s, i - s) {
                        let at = s + start;
                        pf.vf_config_write(self.index, off + at, &data[at..at + len]);
                    }
                }
                if virt && (BAR0..BAR0 + BAR_BYTES).contains(&o) {
                    self.bars[o - BAR0] = data[i];
                }
            } else if run_start.is_none() {
                run_start = Some(i);
            }
        }
        self.apply_controls();
        Ok(())
    }

    fn msix_bar_read(&self, offset: u64, data: &mut [u8]) -> Result<(), DeviceError> {
        let off = range_check(MSIX_BAR, offset, data.len(), VF_BAR_SIZE)?;
        data.fill(0);
        let pba = usize::try_from(VF_MSIX_PBA_OFFSET).unwrap_or(usize::MAX);
        let bits = self.irq.pba().to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            if let Some(v) = (off + i).checked_sub(pba).and_then(|j| bits.get(j)) {
                *b = *v;
            }
        }
        Ok(())
    }

    /// Closes the descriptors of files no mapping uses any more.
    fn forget_unused_files(&mut self) {
        self.dma_files.retain(|_, f| Arc::strong_count(f) > 1);
    }

    /// Rebuilds the VF's DMA space from the writable mappings. Read-only mappings (a
    /// client's ROMs) stay out of it: the VF model writes descriptors back, and a write to
    /// a read-only mapping would fault the process.
    fn rebuild_memory(&mut self) -> Result<(), DeviceError> {
        let regions: Vec<_> = self
            .dma
            .values()
            .filter(|r| r.writable)
            .map(|r| r.region.clone())
            .collect();
        let mem = if regions.is_empty() {
            GuestMemoryMmap::new()
        } else {
            GuestMemoryMmap::from_arc_regions(regions)
                .map_err(|_| DeviceError::Invalid("DMA mappings overlap"))?
        };
        self.igbvf.set_memory(mem);
        Ok(())
    }
}

/// Maps `len` bytes of `file` at `offset`, checked against the file's size (a mapping
/// past the end would fault the process on first touch).
fn map_fd(
    map: DmaMapping,
    files: &mut HashMap<(u64, u64), Arc<File>>,
) -> Result<DmaRegion, DeviceError> {
    use std::os::unix::fs::MetadataExt;
    let size = usize::try_from(map.size).map_err(|_| DeviceError::Invalid("DMA map size"))?;
    let file = File::from(map.fd);
    let meta = file.metadata().map_err(DeviceError::Io)?;
    let len = meta.len();
    if map.offset.checked_add(map.size).is_none_or(|end| end > len) {
        return Err(DeviceError::Invalid("DMA map beyond the end of its file"));
    }
    // SAFETY: F_GET_SEALS only reads the descriptor's seals.
    let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
    if seals < 0 || seals & libc::F_SEAL_SHRINK == 0 {
        devices::warn_ratelimited!(
            "nicd: a DMA map's file can shrink (not a sealed memfd): a client that truncates it would crash nicd"
        );
    }
    let mut prot = 0;
    if map.readable {
        prot |= libc::PROT_READ;
    }
    if map.writable {
        prot |= libc::PROT_READ | libc::PROT_WRITE;
    }
    if prot == 0 {
        return Err(DeviceError::Invalid(
            "DMA map neither readable nor writable",
        ));
    }
    // The descriptor of an earlier mapping of the same file stands for this one (the new
    // one closes here).
    let file = files
        .entry((meta.dev(), meta.ino()))
        .or_insert_with(|| Arc::new(file))
        .clone();
    let mapping = MmapRegion::build(
        Some(FileOffset::from_arc(file, map.offset)),
        size,
        prot,
        libc::MAP_SHARED | libc::MAP_NORESERVE,
    )
    .map_err(|e| DeviceError::Io(std::io::Error::other(e)))?;
    let region = GuestRegionMmap::new(mapping, GuestAddress(map.iova))
        .ok_or(DeviceError::Invalid("DMA map wraps the address space"))?;
    Ok(DmaRegion {
        region: Arc::new(region),
        writable: map.writable,
    })
}

impl VfioUserDevice for VfDevice {
    fn device_info(&self) -> DeviceInfo {
        DeviceInfo {
            argsz: 0,
            flags: VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET,
            num_regions: region::NUM,
            num_irqs: irq::NUM,
        }
    }

    fn region_info(
        &self,
        index: u32,
    ) -> Result<(RegionInfo, Option<std::os::fd::OwnedFd>), DeviceError> {
        let rw = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
        let (flags, size) = match index {
            region::BAR0 | MSIX_BAR => (rw, VF_BAR_SIZE),
            region::CONFIG => (rw, CONFIG_SIZE),
            _ => (0, 0),
        };
        Ok((
            RegionInfo {
                index,
                flags,
                size,
                offset: 0,
                sparse: Vec::new(),
            },
            None,
        ))
    }

    fn irq_info(&self, index: u32) -> Result<IrqInfo, DeviceError> {
        let (flags, count) = match index {
            irq::MSIX => (
                VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_MASKABLE | VFIO_IRQ_INFO_NORESIZE,
                u32::from(VF_MSIX_VECTORS),
            ),
            _ => (VFIO_IRQ_INFO_EVENTFD, 0),
        };
        Ok(IrqInfo {
            argsz: 0,
            flags,
            index,
            count,
        })
    }

    fn region_read(&mut self, index: u32, offset: u64, data: &mut [u8]) -> Result<(), DeviceError> {
        match index {
            region::BAR0 => {
                range_check(index, offset, data.len(), VF_BAR_SIZE)?;
                self.igbvf.read(offset, data);
                Ok(())
            }
            MSIX_BAR => self.msix_bar_read(offset, data),
            region::CONFIG => self.config_read(offset, data),
            _ => Err(DeviceError::OutOfRange {
                index,
                offset,
                len: data.len(),
            }),
        }
    }

    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        match index {
            region::BAR0 => {
                range_check(index, offset, data.len(), VF_BAR_SIZE)?;
                self.igbvf.write(offset, data);
                Ok(())
            }
            // The client emulates the MSI-X table; the PBA is read-only.
            MSIX_BAR => range_check(index, offset, data.len(), VF_BAR_SIZE).map(|_| ()),
            region::CONFIG => self.config_write(offset, data),
            _ => Err(DeviceError::OutOfRange {
                index,
                offset,
                len: data.len(),
            }),
        }
    }

    fn dma_map(&mut self, map: DmaMapping) -> Result<(), DeviceError> {
        let iova = map.iova;
        let region = map_fd(map, &mut self.dma_files)?;
        self.dma.insert(iova, region);
        if let Err(e) = self.rebuild_memory() {
            self.dma.remove(&iova);
            return Err(e);
        }
        Ok(())
    }

    fn dma_unmap(&mut self, iova: u64, _size: u64) -> Result<(), DeviceError> {
        // The VF model drops its reference in rebuild_memory, this one here: the memory
        // is unmapped before the reply goes out.
        let gone = self.dma.remove(&iova);
        let r = self.rebuild_memory();
        drop(gone);
        self.forget_unused_files();
        r
    }

    fn dma_unmap_all(&mut self) -> Result<(), DeviceError> {
        self.dma.clear();
        let r = self.rebuild_memory();
        self.forget_unused_files();
        r
    }

    fn set_irqs(&mut self, set: IrqSet) -> Result<(), DeviceError> {
        if set.index == irq::MSIX {
            return self.irq.set(set);
        }
        // Every other index has no vectors: only "disable" gets here.
        Ok(())
    }

    fn reset(&mut self) -> Result<(), DeviceError> {
        self.flr();
        Ok(())
    }
}

/// Splits an access of `len` bytes at config offset `at` into naturally aligned config
/// cycles of 4, 2 or 1 bytes: (start within the access, length) pairs, in order.
fn config_cycles(at: usize, len: usize) -> impl Iterator<Item = (usize, usize)> {
    let mut done = 0;
    std::iter::from_fn(move || {
        if done >= len {
            return None;
        }
        let (o, left) = (at + done, len - done);
        let n = if o % 4 == 0 && left >= 4 {
            4
        } else if o % 2 == 0 && left >= 2 {
            2
        } else {
            1
        };
        let piece = (done, n);
        done += n;
        Some(piece)
    })
}

#[cfg(test)]
mod config_cycle_tests {
    use super::config_cycles;

    #[test]
    fn whole_space_and_odd_pieces() {
        let all: Vec<_> = config_cycles(0, 4096).collect();
        assert_eq!(all.len(), 1024);
        assert!(all.iter().all(|&(s, n)| n == 4 && s % 4 == 0));
        assert_eq!(
            config_cycles(1, 8).collect::<Vec<_>>(),
            vec![(0, 1), (1, 2), (3, 4), (7, 1)]
        );
        assert_eq!(config_cycles(6, 2).collect::<Vec<_>>(), vec![(0, 2)]);
        assert_eq!(config_cycles(0, 0).count(), 0);
    }
}
