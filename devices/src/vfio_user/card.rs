//! A PCI card whose one function is served by another process over vfio-user (a VF of
//! nicd): the vmm's side of device assignment.
//!
//! What stays in the vmm and what crosses the socket:
//! - Config space is the server's (region 7), read and written synchronously, except the
//!   BARs and COMMAND, which are shadowed here (the vmm places BARs; their sizes come from
//!   the regions' info), and the MSI-X capability's enable and mask bits, which drive the
//!   MSI-X table emulated here. Writes of COMMAND and of MSI-X control reach the server too.
//! - The MSI-X table and PBA are emulated here ([`Msix`] with external vectors): each vector
//!   is an eventfd handed to the server with SET_IRQS and connected to a KVM route (an
//!   irqfd) only while the guest lets the vector fire, so the server interrupts the guest
//!   without a vmm thread, and a masked vector pends in its eventfd.
//! - Other BAR reads are synchronous REGION_READs; BAR writes are posted REGION_WRITEs
//!   (no reply), sent by the vCPU thread that took the exit.
//!
//! Nothing the server does can panic the vmm or hang a vCPU: every reply is checked (the
//! client's), a reply that does not come within the client's timeout fails the request,
//! and after the first failure the card is *broken*: reads return all ones, writes are
//! dropped, and the socket is shut down so that whoever watches it for a hang-up (the
//! vmm's slot registry) removes the card from the guest.

use std::io;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::Arc;

use super::client::{Client, ClientError, default_capabilities};
use super::messages::{irq, region};
use super::{Request, messages::RegionData};
use crate::interrupt::{ExternalVectors, MsiRouteFactory, MsixDelivery};
use crate::pci::card::{BarError, PciCard, decode_bar};
use crate::pci::config_space::{ConfigSpace, HeaderType, PciId};
use crate::pci::msix::{MSIX_ENTRY_SIZE, Msix};
use crate::pci::regs::{BAR0, CAP_ID_EXP, CAP_ID_MSIX, CAPABILITIES_POINTER, COMMAND, EXP_DEVCTL};
use crate::pci::{Bar, BarKind};

/// Bytes of config space read at connection (the standard capabilities live there).
const CONFIG_HEAD: u32 = 256;
/// DEVCTL: Initiate Function Level Reset.
const DEVCTL_BCR_FLR: u16 = 1 << 15;
/// MSI-X Message Control: enable, function mask, table size.
const MSIX_ENABLE: u16 = 1 << 15;
const MSIX_MASKALL: u16 = 1 << 14;
const MSIX_TABLE_SIZE: u16 = 0x7ff;

/// Why a vfio-user card cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum CardError {
    /// The server did not answer as a device must.
    #[error("vfio-user request failed")]
    Client(#[source] ClientError),
    /// The device is not what a PCI card can be built from.
    #[error("the device is not usable: {0}")]
    Device(String),
    /// No interrupt routes for its vectors.
    #[error("cannot route the device's MSI-X vectors")]
    Routes(#[source] io::Error),
}

impl From<ClientError> for CardError {
    fn from(e: ClientError) -> Self {
        CardError::Client(e)
    }
}

fn bad(what: impl Into<String>) -> CardError {
    CardError::Device(what.into())
}

/// Where the MSI-X structures are, and their emulation.
#[derive(Debug)]
struct MsixSite {
    /// Offset of the capability in config space.
    cap: usize,
    table_bar: usize,
    table: std::ops::Range<u64>,
    pba_bar: usize,
    pba: std::ops::Range<u64>,
    msix: Msix,
    vectors: Arc<dyn ExternalVectors>,
}

impl std::fmt::Debug for dyn ExternalVectors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ExternalVectors({})", self.vectors())
    }
}

/// Counters of what crossed the socket.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CardStats {
    /// Synchronous BAR reads.
    pub bar_reads: u64,
    /// Posted BAR writes.
    pub bar_writes: u64,
    /// Config reads and writes sent to the server.
    pub config_accesses: u64,
}

/// A PCI function served over vfio-user, as a card for a root-port slot (function 0).
#[derive(Debug)]
pub struct VfioUserCard {
    name: String,
    client: Client,
    /// The shadow: BARs and COMMAND.
    cfg: ConfigSpace,
    /// Offset of the PCI Express capability, for FLR.
    exp_cap: Option<usize>,
    msix: MsixSite,
    /// Why the card stopped talking to the server, once it did.
    broken: Option<String>,
    stats: CardStats,
}

/// The config offsets shadowed here: COMMAND and the six BAR registers.
fn shadowed(offset: usize) -> bool {
    (COMMAND..COMMAND + 2).contains(&offset) || (BAR0..BAR0 + 24).contains(&offset)
}

/// The vfio-user region of BAR `bar` (0..=5: the same number).
fn region_index(bar: usize) -> u32 {
    u32::try_from(bar).unwrap_or(u32::MAX)
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The standard capabilities in `head` (offset, ID), following the list at most 48 hops,
/// ignoring pointers outside the capability area (a server's config is untrusted).
fn capabilities(head: &[u8]) -> Vec<(usize, u8)> {
    let mut out = Vec::new();
    let mut at = usize::from(head[CAPABILITIES_POINTER] & 0xfc);
    while (0x40..head.len() - 1).contains(&at) && out.len() < 48 {
        if out.iter().any(|(o, _)| *o == at) {
            break;
        }
        out.push((at, head[at]));
        at = usize::from(head[at + 1] & 0xfc);
    }
    out
}

impl VfioUserCard {
    /// Sets the device on `client` up as a card named `name` (for logs): negotiates, reads
    /// its regions, config and MSI-X capability, declares its BARs, makes its vectors with
    /// `routes` and hands their eventfds to the server.
    pub fn new(
        name: &str,
        mut client: Client,
        routes: &dyn MsiRouteFactory,
    ) -> Result<Self, CardError> {
        client.negotiate(default_capabilities())?;
        let info = client.device_info()?;
        if info.num_regions <= region::CONFIG || info.num_irqs <= irq::MSIX {
            return Err(bad(format!(
                "{} regions and {} IRQ types: not a PCI device",
                info.num_regions, info.num_irqs
            )));
        }
        let config = client.region_info(region::CONFIG)?;
        if config.info.size < u64::from(CONFIG_HEAD) {
            return Err(bad(format!("config region of {} bytes", config.info.size)));
        }
        let head = client.read(region::CONFIG, 0, CONFIG_HEAD)?;
        let id = PciId {
            vendor: le16(&head, 0),
            device: le16(&head, 2),
            class: [head[0x0b], head[0x0a], head[0x09]],
            revision: head[0x08],
            subsystem_vendor: le16(&head, 0x2c),
            subsystem: le16(&head, 0x2e),
        };
        if id.vendor == 0xffff || head[0x0e] & 0x7f != 0 {
            return Err(bad(format!(
                "config space of {:04x}:{:04x}, header type {:#x}: not an endpoint",
                id.vendor, id.device, head[0x0e]
            )));
        }
        let mut cfg = ConfigSpace::new(HeaderType::Endpoint, id);
        let mut index = 0;
        while index < 6 {
            let size = client
                .region_info(u32::try_from(index).unwrap_or(u32::MAX))?
                .info
                .size;
            if size == 0 {
                index += 1;
                continue;
            }
            let flags = le32(&head, BAR0 + 4 * index);
            if flags & 1 != 0 {
                return Err(bad(format!("BAR {index} is an I/O BAR")));
            }
            let bar = if flags & 0x6 == 0x4 {
                Bar::mem64(size, flags & 0x8 != 0)
            } else {
                Bar {
                    kind: BarKind::Memory32,
                    size,
                    prefetchable: flags & 0x8 != 0,
                }
            };
            cfg.add_bar(index, bar)
                .map_err(|e| bad(format!("BAR {index} of {size:#x} bytes: {e}")))?;
            index += if bar.kind == BarKind::Memory64 { 2 } else { 1 };
        }
        let caps = capabilities(&head);
        let exp_cap = caps
            .iter()
            .find(|(_, id)| *id == CAP_ID_EXP)
            .map(|(o, _)| *o);
        let msix = Self::msix_site(&mut client, &head, &caps, &cfg, routes)?;
        Ok(Self {
            name: name.to_string(),
            client,
            cfg,
            exp_cap,
            msix,
            broken: None,
            stats: CardStats::default(),
        })
    }

    /// Finds the MSI-X capability, checks it against the BARs and the server's IRQ info,
    /// and connects the vectors' eventfds to the server.
    fn msix_site(
        client: &mut Client,
        head: &[u8],
        caps: &[(usize, u8)],
        cfg: &ConfigSpace,
        routes: &dyn MsiRouteFactory,
    ) -> Result<MsixSite, CardError> {
        let cap = caps
            .iter()
            .find(|(_, id)| *id == CAP_ID_MSIX)
            .map(|(o, _)| *o)
            .filter(|o| o + 12 <= head.len())
            .ok_or_else(|| bad("no MSI-X capability"))?;
        let vectors = (le16(head, cap + 2) & MSIX_TABLE_SIZE) + 1;
        let place = |reg: u32, len: u64| -> Result<(usize, std::ops::Range<u64>), CardError> {
            let bar = (reg & 7) as usize;
            let off = u64::from(reg & !7);
            let size = cfg.bar(bar).map_or(0, |b| b.size);
            if bar > 5 || off + len > size {
                return Err(bad(format!(
                    "MSI-X structure at BAR {bar} offset {off:#x} (+{len:#x}) outside the BAR"
                )));
            }
            Ok((bar, off..off + len))
        };
        let (table_bar, table) = place(le32(head, cap + 4), u64::from(vectors) * MSIX_ENTRY_SIZE)?;
        let (pba_bar, pba) = place(le32(head, cap + 8), u64::from(vectors).div_ceil(64) * 8)?;
        let irqs = client.irq_info(irq::MSIX)?;
        if irqs.count < u32::from(vectors) {
            return Err(bad(format!(
                "MSI-X capability has {vectors} vectors, the server {}",
                irqs.count
            )));
        }
        let ext = routes.external(vectors).map_err(CardError::Routes)?;
        let fds = (0..vectors)
            .map(|v| {
                ext.eventfd(v).map(|e| {
                    // SAFETY: the eventfd lives in `ext`, which outlives this call.
                    unsafe { BorrowedFd::borrow_raw(e.as_raw_fd()) }
                })
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad("fewer eventfds than vectors"))?;
        client.set_irq_eventfds(irq::MSIX, 0, &fds)?;
        Ok(MsixSite {
            cap,
            table_bar,
            table,
            pba_bar,
            pba,
            msix: Msix::with_delivery(vectors, MsixDelivery::External(ext.clone())),
            vectors: ext,
        })
    }

    /// The card's name, for logs.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Why the card stopped talking to its server, if it did.
    pub fn broken(&self) -> Option<&str> {
        self.broken.as_deref()
    }

    /// What crossed the socket so far.
    pub fn stats(&self) -> CardStats {
        self.stats
    }

    /// The connection's socket (to watch it for the server going away).
    pub fn socket(&self) -> &std::os::unix::net::UnixStream {
        self.client.stream()
    }

    /// Marks the card broken after `e`: it is logged once, the socket is shut down (so a
    /// watcher of hang-ups removes the card), and every later access is answered locally.
    fn fail(&mut self, what: &str, e: &ClientError) {
        if self.broken.is_some() {
            return;
        }
        let why = format!("{what}: {}", crate::error_chain(e));
        crate::error_ratelimited!(
            "{}: the vfio-user server failed ({why}); the device is gone",
            self.name
        );
        let _ = self.client.stream().shutdown(Shutdown::Both);
        self.broken = Some(why);
    }

    /// Runs `f` on the client unless the card is broken; a failure breaks it.
    fn with_client<T>(
        &mut self,
        what: &str,
        f: impl FnOnce(&mut Client) -> Result<T, ClientError>,
    ) -> Option<T> {
        if self.broken.is_some() {
            return None;
        }
        match f(&mut self.client) {
            Ok(v) => Some(v),
            Err(e) => {
                self.fail(what, &e);
                None
            }
        }
    }

    /// DMA-maps `size` bytes of `file` from `offset` at `iova` in the server.
    pub fn dma_map(
        &mut self,
        file: &std::fs::File,
        offset: u64,
        iova: u64,
        size: u64,
    ) -> Result<(), ClientError> {
        self.checked("DMA_MAP", |c| c.dma_map(file, offset, iova, size))
    }

    /// Unmaps `[iova, iova + size)` in the server; returns once the server stopped using it.
    pub fn dma_unmap(&mut self, iova: u64, size: u64) -> Result<(), ClientError> {
        self.checked("DMA_UNMAP", |c| c.dma_unmap(iova, size))
    }

    /// Like [`Self::with_client`], but returns the error (a refused request does not break
    /// the card; a broken connection does).
    fn checked<T>(
        &mut self,
        what: &str,
        f: impl FnOnce(&mut Client) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        if let Some(why) = &self.broken {
            return Err(ClientError::Unexpected {
                command: "request",
                detail: format!("the connection is broken ({why})"),
            });
        }
        let r = f(&mut self.client);
        if let Err(e) = &r
            && !matches!(e, ClientError::Refused { .. })
        {
            self.fail(what, e);
        }
        r
    }

    /// The function was reset (FLR, device reset): its MSI-X state is back at reset
    /// (disabled, every vector masked), its eventfds disconnected.
    fn reset_msix(&mut self) {
        let site = &mut self.msix;
        site.msix.set_control(false, false);
        site.msix = Msix::with_delivery(
            site.msix.vectors(),
            MsixDelivery::External(site.vectors.clone()),
        );
    }

    /// MSI-X Message Control as the guest sees it: enable and function mask from the
    /// emulation, the table size as read at connection.
    fn msix_control(&self) -> u16 {
        let m = &self.msix.msix;
        (u16::from(m.enabled()) * MSIX_ENABLE)
            | (u16::from(m.function_masked()) * MSIX_MASKALL)
            | (m.vectors() - 1)
    }

    /// The server's config bytes at `offset`, with the shadowed ones laid over.
    fn read_config(&mut self, offset: usize, data: &mut [u8]) {
        let len = data.len();
        if !(0..len).all(|i| shadowed(offset + i)) {
            let read = self.with_client("config read", |c| {
                c.read(
                    region::CONFIG,
                    offset as u64,
                    u32::try_from(len).unwrap_or(u32::MAX),
                )
            });
            self.stats.config_accesses += 1;
            match read {
                Some(d) => data.copy_from_slice(&d),
                None => data.fill(0xff),
            }
        }
        let ctl_at = self.msix.cap + 2;
        let ctl = self.msix_control().to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            let o = offset + i;
            if shadowed(o) {
                *b = self.cfg.read_u8(o);
            } else if o == ctl_at {
                *b = ctl[0];
            } else if o == ctl_at + 1 {
                // Bits 11-13 are reserved: the server's.
                *b = (*b & 0x38) | ctl[1];
            }
        }
    }

    fn write_config(&mut self, offset: usize, data: &[u8]) {
        let end = offset + data.len();
        let shadow_only = (offset..end).all(|o| (BAR0..BAR0 + 24).contains(&o));
        if (offset..end).any(shadowed) {
            self.cfg.write(offset, data);
        }
        // MSI-X control (its high byte holds enable and function mask).
        let hi = self.msix.cap + 3;
        if (offset..end).contains(&hi) {
            let v = data[hi - offset];
            self.msix.msix.set_control(v & 0x80 != 0, v & 0x40 != 0);
        }
        let flr = self.exp_cap.is_some_and(|cap| {
            let at = cap + EXP_DEVCTL + 1;
            (offset..end).contains(&at) && u16::from(data[at - offset]) << 8 & DEVCTL_BCR_FLR != 0
        });
        if !shadow_only {
            self.stats.config_accesses += 1;
            let _ = self.with_client("config write", |c| {
                c.write(region::CONFIG, offset as u64, data)
            });
        }
        if flr {
            self.reset_msix();
        }
    }

    /// The BAR (with memory decoding on) that holds `[addr, addr + len)`, and the offset.
    fn bar_at(&self, addr: u64, len: usize) -> Option<(usize, u64)> {
        let end = addr.checked_add(len as u64)?;
        decode_bar(&self.cfg, addr, end)
    }

    /// The MSI-X structure an access at `off` of BAR `bar` falls in, if any.
    fn msix_part(&self, bar: usize, off: u64, len: usize) -> Option<(bool, u64)> {
        let end = off + len as u64;
        let s = &self.msix;
        if bar == s.table_bar && off >= s.table.start && end <= s.table.end {
            return Some((true, off - s.table.start));
        }
        if bar == s.pba_bar && off >= s.pba.start && end <= s.pba.end {
            return Some((false, off - s.pba.start));
        }
        None
    }
}

impl PciCard for VfioUserCard {
    fn has_function(&self, devfn: u8) -> bool {
        devfn == 0
    }

    fn config_read(&mut self, devfn: u8, offset: usize, data: &mut [u8]) {
        if devfn != 0 || offset + data.len() > crate::pci::config_space::CONFIG_SPACE_SIZE {
            data.fill(0xff);
            return;
        }
        self.read_config(offset, data);
    }

    fn config_write(&mut self, devfn: u8, offset: usize, data: &[u8]) {
        if devfn == 0 && offset + data.len() <= crate::pci::config_space::CONFIG_SPACE_SIZE {
            self.write_config(offset, data);
        }
    }

    fn mmio_read(&mut self, addr: u64, data: &mut [u8]) -> bool {
        let Some((bar, off)) = self.bar_at(addr, data.len()) else {
            return false;
        };
        match self.msix_part(bar, off, data.len()) {
            Some((true, o)) => self.msix.msix.table_read(o, data),
            Some((false, o)) => self.msix.msix.pba_read(o, data),
            None => {
                self.stats.bar_reads += 1;
                let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
                match self.with_client("BAR read", |c| c.read(region_index(bar), off, len)) {
                    Some(d) => data.copy_from_slice(&d),
                    None => data.fill(0xff),
                }
            }
        }
        true
    }

    fn mmio_write(&mut self, addr: u64, data: &[u8]) -> bool {
        let Some((bar, off)) = self.bar_at(addr, data.len()) else {
            return false;
        };
        match self.msix_part(bar, off, data.len()) {
            Some((true, o)) => self.msix.msix.table_write(o, data),
            // The PBA is read-only.
            Some((false, _)) => {}
            None => {
                self.stats.bar_writes += 1;
                let req = Request::RegionWrite(RegionData {
                    offset: off,
                    region: region_index(bar),
                    data: data.to_vec(),
                });
                let _ = self.with_client("BAR write", |c| c.post(&req));
            }
        }
        true
    }

    fn assign_bars(&mut self, alloc: &mut dyn FnMut(Bar) -> Option<u64>) -> Result<(), BarError> {
        let mut shadow = Shadow(&mut self.cfg);
        crate::pci::card::assign_function_bars(&mut shadow, alloc)?;
        // The server learns that memory decoding is on.
        let cmd = self.cfg.read_u16(COMMAND).to_le_bytes();
        let _ = self.with_client("config write", |c| {
            c.write(region::CONFIG, COMMAND as u64, &cmd)
        });
        Ok(())
    }

    fn pause(&mut self) {}

    fn resume(&mut self) {}

    /// The server's DMA cannot be paused through vfio-user: a VF is detached before
    /// anything that needs guest memory to hold still (snapshots, migration).
    fn is_paused(&self) -> bool {
        true
    }
}

/// The shadow config space as a function, for BAR assignment.
#[derive(Debug)]
struct Shadow<'a>(&'a mut ConfigSpace);

impl crate::pci::PciDevice for Shadow<'_> {
    fn config(&self) -> &ConfigSpace {
        self.0
    }

    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.0.write(offset, data);
    }
}

#[cfg(test)]
mod tests;
