//! The server side of one vfio-user connection, independent of any event loop: feed it
//! received messages ([`Server::handle_message`]) and send what it returns, or let
//! [`Server::serve_one`] do both on a blocking socket.
//!
//! Decisions, for the glue that runs it:
//! - Version first: any other command before VERSION gets EINVAL; a second VERSION too.
//! - The server keeps the DMA map table (iova and size of each mapping): it answers
//!   EEXIST for an overlap, ENOENT for an unmap that matches no mapping exactly, ENOSPC
//!   past max_dma_maps, and knows what to drop on unmap-all and on disconnect. The device
//!   owns what a mapping means (it gets the fd and mmaps it) and must drop every
//!   reference to the memory before its `dma_unmap` returns.
//! - A second client for a busy VF is the glue's job: accept it, answer its first message
//!   with [`busy_reply`] (EBUSY; QEMU then reports "version reply: Device or resource
//!   busy") and close it, leaving the first connection's [`Server`] untouched.
//! - When a connection ends (any error from the socket other than
//!   [`SocketError::TooManyFds`]), the glue calls [`Server::disconnect`]: DMA unmapped, IRQ
//!   eventfds dropped, device state kept (the spec's rule). Resetting the device as well
//!   (nicd's VF: filters back to the default VPort) is the glue's decision.
//! - A no-reply flag is honoured: no reply is ever sent for such a message. On a command
//!   whose reply carries data (VERSION, the GET_* commands, REGION_READ) it makes no sense:
//!   the command is dropped unexecuted, logged (rate-limited) and counted.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::OwnedFd;

use super::codec::{Message, Reply, ReplyMessage, Request};
use super::header::{Header, cmd};
use super::messages::*;
use super::socket::{Limits, Socket, SocketError};
use crate::{debug_ratelimited, warn_ratelimited};

/// What a device refused, mapped to an errno for the client.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// No such region or IRQ index.
    #[error("no index {0}")]
    NoSuchIndex(u32),
    /// An access outside the region.
    #[error("access of {len} bytes at {offset:#x} is outside region {index}")]
    OutOfRange {
        /// Region index.
        index: u32,
        /// Offset.
        offset: u64,
        /// Length.
        len: usize,
    },
    /// An argument the device cannot take.
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    /// Something the device does not do.
    #[error("{0} is not supported")]
    Unsupported(&'static str),
    /// The device cannot do it now.
    #[error("device busy")]
    Busy,
    /// A system call failed (mmap of a DMA fd, ...).
    #[error("system call failed")]
    Io(#[source] io::Error),
}

impl DeviceError {
    /// The errno the client sees.
    pub fn errno(&self) -> i32 {
        match self {
            Self::NoSuchIndex(_) | Self::OutOfRange { .. } | Self::Invalid(_) => libc::EINVAL,
            Self::Unsupported(_) => libc::ENOTSUP,
            Self::Busy => libc::EBUSY,
            Self::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
        }
    }
}

/// A DMA mapping handed to the device.
#[derive(Debug)]
pub struct DmaMapping {
    /// DMA address.
    pub iova: u64,
    /// Length.
    pub size: u64,
    /// Offset of the memory in `fd`.
    pub offset: u64,
    /// The device may read it.
    pub readable: bool,
    /// The device may write it.
    pub writable: bool,
    /// The client's memory (a memfd for QEMU with memory-backend-memfd,share=on).
    pub fd: OwnedFd,
}

/// What a device must provide to be served over vfio-user. Indices are checked against
/// [`VfioUserDevice::device_info`] before any other method is called; offsets and lengths
/// are the device's to check.
pub trait VfioUserDevice {
    /// Flags (VFIO_DEVICE_FLAGS_PCI, _RESET), number of regions (QEMU needs at least 8:
    /// BARs 0-5, ROM, config) and IRQ indices (at least 3: INTx, MSI, MSI-X); argsz is
    /// filled in by the server.
    fn device_info(&self) -> DeviceInfo;

    /// A region's description, and the fd to mmap it with when its flags have MMAP (a
    /// duplicate the server may send and drop). Sparse areas must leave out the MSI-X table
    /// and PBA, which the client emulates or reads through REGION_READ.
    fn region_info(&self, index: u32) -> Result<(RegionInfo, Option<OwnedFd>), DeviceError>;

    /// Sub-regions the client may wire to ioeventfds, with their fds. Default: none.
    fn region_io_fds(
        &self,
        _index: u32,
    ) -> Result<(Vec<IoFdSubRegion>, Vec<OwnedFd>), DeviceError> {
        Err(DeviceError::Unsupported("GET_REGION_IO_FDS"))
    }

    /// An IRQ index's description (argsz is filled in by the server).
    fn irq_info(&self, index: u32) -> Result<IrqInfo, DeviceError>;

    /// Reads `data.len()` bytes of region `index` at `offset`.
    fn region_read(&mut self, index: u32, offset: u64, data: &mut [u8]) -> Result<(), DeviceError>;

    /// Writes `data` to region `index` at `offset`.
    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<(), DeviceError>;

    /// Adds a DMA mapping (already checked: aligned, no overlap, within max_dma_maps).
    fn dma_map(&mut self, map: DmaMapping) -> Result<(), DeviceError>;

    /// Removes the mapping at exactly `iova`/`size`; every reference to its memory must be
    /// gone when this returns.
    fn dma_unmap(&mut self, iova: u64, size: u64) -> Result<(), DeviceError>;

    /// Removes every DMA mapping (unmap-all, disconnect).
    fn dma_unmap_all(&mut self) -> Result<(), DeviceError>;

    /// SET_IRQS with vfio_irq_set semantics; the range is checked against
    /// [`VfioUserDevice::irq_info`]'s count. `IrqSet::is_disable` means drop every eventfd
    /// of the index; `IrqData::Eventfds` empty means de-assign the range.
    fn set_irqs(&mut self, set: IrqSet) -> Result<(), DeviceError>;

    /// DEVICE_RESET (function-level reset).
    fn reset(&mut self) -> Result<(), DeviceError>;
}

/// What the server offers in VERSION and enforces afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerConfig {
    /// Most fds the server takes in one message (QEMU refuses more than 16).
    pub max_msg_fds: u32,
    /// Largest REGION_READ/WRITE count (QEMU refuses more than 64 MiB).
    pub max_data_xfer_size: u32,
    /// Most DMA mappings at once (QEMU refuses more than 65535).
    pub max_dma_maps: u32,
    /// Page sizes for DMA maps (each a multiple of 4096 for QEMU); the smallest is the
    /// alignment required of iova, size and offset.
    pub pgsizes: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_msg_fds: 16,
            max_data_xfer_size: 1 << 20,
            max_dma_maps: 65535,
            pgsizes: 4096,
        }
    }
}

impl ServerConfig {
    /// The receive limits that follow from this configuration.
    pub fn limits(&self) -> Limits {
        Limits::new(self.max_data_xfer_size, self.max_msg_fds as usize)
    }
}

/// What was agreed in VERSION.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// Major version.
    pub major: u16,
    /// Minor version.
    pub minor: u16,
    /// Most fds the client takes in one message.
    pub client_max_msg_fds: u64,
    /// Largest data transfer the client takes.
    pub client_max_data_xfer_size: u64,
}

/// Counters of a connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Command messages handled.
    pub requests: u64,
    /// Error replies sent.
    pub error_replies: u64,
    /// Messages dropped without a reply: failed no-reply commands, no-reply flags on
    /// commands that need a reply, and stray replies.
    pub dropped: u64,
    /// DMA maps without an fd: recorded, not reachable by the device.
    pub fdless_maps: u64,
}

/// Why [`Server::serve_one`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Receiving failed; the connection is over unless the error says otherwise
    /// ([`SocketError::is_fatal`]).
    #[error("receiving a vfio-user message failed")]
    Recv(#[source] SocketError),
    /// Sending a reply failed; the connection is over.
    #[error("sending a vfio-user reply failed")]
    Send(#[source] SocketError),
}

/// A request refused with an errno, and why (for the log).
struct Refused {
    errno: i32,
    why: String,
}

impl Refused {
    fn new(errno: i32, why: impl Into<String>) -> Self {
        Self {
            errno,
            why: why.into(),
        }
    }
}

impl From<DeviceError> for Refused {
    fn from(e: DeviceError) -> Self {
        Self::new(e.errno(), e.to_string())
    }
}

fn errno_u32(e: i32) -> u32 {
    u32::try_from(e).unwrap_or(libc::EINVAL as u32)
}

/// The EBUSY error reply a glue sends to a second client of a VF that already has one
/// (None if the message wants no reply or is not a command).
pub fn busy_reply(header: &Header) -> Option<ReplyMessage> {
    (header.is_command() && !header.no_reply()).then(|| ReplyMessage {
        id: header.id,
        command: header.command,
        reply: Reply::Error {
            errno: errno_u32(libc::EBUSY),
        },
    })
}

/// One connection's server state around a device.
#[derive(Debug)]
pub struct Server<D> {
    device: D,
    config: ServerConfig,
    negotiated: Option<Negotiated>,
    /// iova -> size of every DMA mapping.
    dma: BTreeMap<u64, u64>,
    stats: ServerStats,
}

impl<D: VfioUserDevice> Server<D> {
    /// A server with the default configuration.
    pub fn new(device: D) -> Self {
        Self::with_config(device, ServerConfig::default())
    }

    /// A server with `config`.
    pub fn with_config(device: D, config: ServerConfig) -> Self {
        Self {
            device,
            config,
            negotiated: None,
            dma: BTreeMap::new(),
            stats: ServerStats::default(),
        }
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device, mutably (the glue's other paths: interrupts, the switch).
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Receive limits for this connection's socket.
    pub fn limits(&self) -> Limits {
        self.config.limits()
    }

    /// What VERSION agreed, once it has.
    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.negotiated.as_ref()
    }

    /// Current DMA mappings as (iova, size), in iova order.
    pub fn dma_mappings(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.dma.iter().map(|(&a, &s)| (a, s))
    }

    /// Counters.
    pub fn stats(&self) -> ServerStats {
        self.stats
    }

    /// The client is gone: unmap all DMA, drop every IRQ eventfd, forget the version.
    /// Device state is kept; the next client starts with VERSION again.
    pub fn disconnect(&mut self) {
        if !self.dma.is_empty() {
            if let Err(e) = self.device.dma_unmap_all() {
                warn_ratelimited!("vfio-user: unmapping DMA at disconnect failed: {e}");
            }
            self.dma.clear();
        }
        for index in 0..self.device.device_info().num_irqs {
            let disable = IrqSet {
                index,
                start: 0,
                count: 0,
                action: IrqAction::Trigger,
                data: IrqData::None,
            };
            if let Err(e) = self.device.set_irqs(disable) {
                debug_ratelimited!("vfio-user: disabling IRQ index {index} failed: {e}");
            }
        }
        self.negotiated = None;
    }

    /// Reads one message (blocking), handles it and sends the reply if there is one.
    /// A message with too many fds is answered with EINVAL and the connection goes on;
    /// any other error ends it (call [`Server::disconnect`]).
    pub fn serve_one(&mut self, sock: &Socket) -> Result<(), ServerError> {
        let reply = match sock.recv_message(&self.limits()) {
            Ok(msg) => self.handle_message(msg),
            Err(e) if !e.is_fatal() => self.handle_recv_error(&e),
            Err(e) => return Err(ServerError::Recv(e)),
        };
        if let Some(r) = reply {
            let enc = r.encode();
            sock.send_message(&enc.bytes, &enc.fds)
                .map_err(ServerError::Send)?;
        }
        Ok(())
    }

    /// The reply owed for a receive error the connection survives (too many fds).
    pub fn handle_recv_error(&mut self, e: &SocketError) -> Option<ReplyMessage> {
        let SocketError::TooManyFds { header, .. } = e else {
            return None;
        };
        warn_ratelimited!("vfio-user: {e} (command {})", header.command);
        self.refuse(header, Refused::new(libc::EINVAL, e.to_string()))
    }

    fn refuse(&mut self, header: &Header, r: Refused) -> Option<ReplyMessage> {
        if header.no_reply() || !header.is_command() {
            self.stats.dropped += 1;
            debug_ratelimited!(
                "vfio-user: no-reply command {} failed: {} (errno {})",
                header.command,
                r.why,
                r.errno
            );
            return None;
        }
        self.stats.error_replies += 1;
        debug_ratelimited!(
            "vfio-user: command {} refused: {} (errno {})",
            header.command,
            r.why,
            r.errno
        );
        Some(ReplyMessage {
            id: header.id,
            command: header.command,
            reply: Reply::Error {
                errno: errno_u32(r.errno),
            },
        })
    }

    /// Handles one received message; returns the reply to send, if any.
    pub fn handle_message(&mut self, msg: Message) -> Option<ReplyMessage> {
        let header = msg.header;
        if !header.is_command() {
            self.stats.dropped += 1;
            warn_ratelimited!(
                "vfio-user: dropping a message of type {} (command {}): the server expects commands",
                header.msg_type(),
                header.command
            );
            return None;
        }
        self.stats.requests += 1;
        let req = match Request::decode(msg) {
            Ok(r) => r,
            Err(e) => {
                warn_ratelimited!("vfio-user: malformed command {}: {e}", header.command);
                return self.refuse(&header, Refused::new(libc::EINVAL, e.to_string()));
            }
        };
        if header.no_reply() && req.needs_reply() {
            self.stats.dropped += 1;
            warn_ratelimited!(
                "vfio-user: command {} has the no-reply flag but its reply carries data: dropped",
                header.command
            );
            return None;
        }
        let result = self.dispatch(req);
        match result {
            Ok(reply) if !header.no_reply() => Some(ReplyMessage {
                id: header.id,
                command: header.command,
                reply,
            }),
            Ok(_) => None,
            Err(r) => self.refuse(&header, r),
        }
    }

    fn dispatch(&mut self, req: Request) -> Result<Reply, Refused> {
        if let Request::Version(v) = req {
            return self.version(v);
        }
        let Some(neg) = self.negotiated else {
            return Err(Refused::new(libc::EINVAL, "command before VERSION"));
        };
        match req {
            Request::Version(_) => unreachable!("handled above"),
            Request::DmaMap(m) => self.dma_map(m),
            Request::DmaUnmap(u) => self.dma_unmap(u),
            Request::DeviceGetInfo { argsz } => {
                if (argsz as usize) < DEVICE_INFO_SIZE {
                    return Err(Refused::new(
                        libc::EINVAL,
                        "DEVICE_GET_INFO argsz too small",
                    ));
                }
                let info = self.device.device_info();
                Ok(Reply::DeviceGetInfo(DeviceInfo {
                    argsz: wire_len(DEVICE_INFO_SIZE),
                    ..info
                }))
            }
            Request::GetRegionInfo { argsz, index } => self.region_info(argsz, index, &neg),
            Request::GetRegionIoFds { argsz, index } => self.region_io_fds(argsz, index, &neg),
            Request::GetIrqInfo { argsz, index } => {
                if (argsz as usize) < IRQ_INFO_SIZE {
                    return Err(Refused::new(libc::EINVAL, "GET_IRQ_INFO argsz too small"));
                }
                self.check_irq_index(index)?;
                let info = self.device.irq_info(index)?;
                Ok(Reply::GetIrqInfo(IrqInfo {
                    argsz: wire_len(IRQ_INFO_SIZE),
                    index,
                    ..info
                }))
            }
            Request::SetIrqs(s) => self.set_irqs(s),
            Request::RegionRead(rd) => {
                self.check_region_access(rd.region, rd.count as usize)?;
                let mut data = vec![0u8; rd.count as usize];
                self.device.region_read(rd.region, rd.offset, &mut data)?;
                Ok(Reply::RegionRead(RegionData {
                    offset: rd.offset,
                    region: rd.region,
                    data,
                }))
            }
            Request::RegionWrite(w) => {
                self.check_region_access(w.region, w.data.len())?;
                self.device.region_write(w.region, w.offset, &w.data)?;
                Ok(Reply::RegionWrite(RegionWriteReply {
                    offset: w.offset,
                    region: w.region,
                    count: u32::try_from(w.data.len()).unwrap_or(u32::MAX),
                }))
            }
            Request::DeviceReset => {
                self.device.reset()?;
                Ok(Reply::DeviceReset)
            }
            Request::Unknown { command } => Err(Refused::new(
                libc::ENOSYS,
                format!("command {command} not implemented"),
            )),
        }
    }

    fn version(&mut self, v: Version) -> Result<Reply, Refused> {
        if self.negotiated.is_some() {
            return Err(Refused::new(libc::EINVAL, "VERSION again"));
        }
        if v.major != PROTOCOL_MAJOR {
            return Err(Refused::new(
                libc::ENOTSUP,
                format!(
                    "protocol major {} (this server speaks {PROTOCOL_MAJOR})",
                    v.major
                ),
            ));
        }
        // Our only minor, 0, is never above the proposed one (replace by a min() when
        // PROTOCOL_MINOR grows).
        let minor = PROTOCOL_MINOR;
        let theirs = v.capabilities.clone().unwrap_or_default();
        // Answer only what was proposed (a subset), with what this server takes. Keeping
        // to the proposed members also keeps the reply no longer than QEMU's request,
        // which is the largest reply QEMU accepts.
        let capabilities = v.capabilities.as_ref().map(|c| Capabilities {
            max_msg_fds: c.max_msg_fds.map(|_| u64::from(self.config.max_msg_fds)),
            max_data_xfer_size: c
                .max_data_xfer_size
                .map(|_| u64::from(self.config.max_data_xfer_size)),
            max_dma_maps: c.max_dma_maps.map(|_| u64::from(self.config.max_dma_maps)),
            pgsizes: c.pgsizes.map(|_| self.config.pgsizes),
            write_multiple: None,
            migration: None,
        });
        self.negotiated = Some(Negotiated {
            major: v.major,
            minor,
            client_max_msg_fds: theirs.max_msg_fds_or_default(),
            client_max_data_xfer_size: theirs.max_data_xfer_size_or_default(),
        });
        Ok(Reply::Version(Version {
            major: v.major,
            minor,
            capabilities,
        }))
    }

    fn check_region_index(&self, index: u32) -> Result<(), Refused> {
        if index >= self.device.device_info().num_regions {
            return Err(DeviceError::NoSuchIndex(index).into());
        }
        Ok(())
    }

    fn check_irq_index(&self, index: u32) -> Result<(), Refused> {
        if index >= self.device.device_info().num_irqs {
            return Err(DeviceError::NoSuchIndex(index).into());
        }
        Ok(())
    }

    fn check_region_access(&self, index: u32, len: usize) -> Result<(), Refused> {
        self.check_region_index(index)?;
        if len > self.config.max_data_xfer_size as usize {
            return Err(Refused::new(
                libc::EINVAL,
                format!("{len} bytes exceed max_data_xfer_size"),
            ));
        }
        Ok(())
    }

    fn region_info(&self, argsz: u32, index: u32, neg: &Negotiated) -> Result<Reply, Refused> {
        if (argsz as usize) < REGION_INFO_SIZE {
            return Err(Refused::new(
                libc::EINVAL,
                "GET_REGION_INFO argsz too small",
            ));
        }
        self.check_region_index(index)?;
        let (mut info, mut fd) = self.device.region_info(index)?;
        info.index = index;
        if neg.client_max_msg_fds == 0 && fd.is_some() {
            // The client takes no fds: offer no mmap.
            fd = None;
            info.flags &= !VFIO_REGION_INFO_FLAG_MMAP;
            info.sparse.clear();
        }
        let full = info.full_argsz();
        if !info.sparse.is_empty() {
            info.flags |= VFIO_REGION_INFO_FLAG_CAPS;
        }
        if (argsz as usize) < full {
            // The kernel's way: say how much is needed, send the fixed part only; the
            // client asks again with a larger argsz. The fd comes with the full reply.
            info.sparse.clear();
            fd = None;
        }
        Ok(Reply::GetRegionInfo(RegionInfoReply {
            argsz: u32::try_from(full).unwrap_or(u32::MAX),
            info,
            fd,
        }))
    }

    fn region_io_fds(&self, argsz: u32, index: u32, neg: &Negotiated) -> Result<Reply, Refused> {
        if (argsz as usize) < REGION_IO_FDS_SIZE {
            return Err(Refused::new(
                libc::EINVAL,
                "GET_REGION_IO_FDS argsz too small",
            ));
        }
        self.check_region_index(index)?;
        let (subs, fds) = self.device.region_io_fds(index)?;
        if fds.len() as u64 > neg.client_max_msg_fds {
            return Err(Refused::new(
                libc::E2BIG,
                "more io fds than the client takes",
            ));
        }
        let full = REGION_IO_FDS_SIZE + subs.len() * IO_FD_SUB_REGION_SIZE;
        let count = u32::try_from(subs.len()).unwrap_or(u32::MAX);
        let (sub_regions, fds) = if (argsz as usize) < full {
            (Vec::new(), Vec::new())
        } else {
            (subs, fds)
        };
        Ok(Reply::GetRegionIoFds(RegionIoFdsReply {
            argsz: u32::try_from(full).unwrap_or(u32::MAX),
            index,
            count,
            sub_regions,
            fds,
        }))
    }

    fn set_irqs(&mut self, s: IrqSet) -> Result<Reply, Refused> {
        self.check_irq_index(s.index)?;
        let info = self.device.irq_info(s.index)?;
        if !s.is_disable() {
            let end = s.start.checked_add(s.count);
            if s.count == 0 || end.is_none_or(|e| e > info.count) {
                return Err(Refused::new(
                    libc::EINVAL,
                    format!(
                        "SET_IRQS vectors {}+{} outside index {} of {}",
                        s.start, s.count, s.index, info.count
                    ),
                ));
            }
        }
        if matches!(s.data, IrqData::Eventfds(_)) && info.flags & VFIO_IRQ_INFO_EVENTFD == 0 {
            return Err(Refused::new(libc::EINVAL, "IRQ index takes no eventfds"));
        }
        self.device.set_irqs(s)?;
        Ok(Reply::SetIrqs)
    }

    fn page_size(&self) -> u64 {
        let p = self.config.pgsizes & self.config.pgsizes.wrapping_neg();
        p.max(1)
    }

    fn dma_map(&mut self, m: DmaMap) -> Result<Reply, Refused> {
        let prot = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE;
        if m.flags & !prot != 0 {
            return Err(Refused::new(
                libc::EINVAL,
                format!("DMA_MAP flags {:#x}", m.flags),
            ));
        }
        let page = self.page_size();
        let end = m.iova.checked_add(m.size);
        let misaligned = (m.iova | m.size | m.offset) & (page - 1) != 0;
        if m.size == 0 || end.is_none() || m.offset.checked_add(m.size).is_none() || misaligned {
            return Err(Refused::new(
                libc::EINVAL,
                format!(
                    "DMA_MAP iova {:#x} size {:#x} offset {:#x} (page {page:#x})",
                    m.iova, m.size, m.offset
                ),
            ));
        }
        let end = end.unwrap_or(u64::MAX);
        let overlap = self
            .dma
            .range(..end)
            .next_back()
            .is_some_and(|(&a, &s)| a + s > m.iova);
        if overlap {
            return Err(Refused::new(
                libc::EEXIST,
                format!("DMA_MAP {:#x}+{:#x} overlaps a mapping", m.iova, m.size),
            ));
        }
        if self.dma.len() >= self.config.max_dma_maps as usize {
            return Err(Refused::new(libc::ENOSPC, "max_dma_maps reached"));
        }
        let Some(fd) = m.fd else {
            // Memory the client keeps to itself (QEMU sends its ROMs and any RAM that is not
            // fd-backed this way), reachable only through DMA_READ/DMA_WRITE messages, which
            // this server does not offer: the range is recorded, so its unmap matches, but
            // the device cannot reach it (DMA there fails and is counted by the device).
            // Refusing it would make QEMU's client stop.
            debug_ratelimited!(
                "vfio-user: DMA_MAP {:#x}+{:#x} without an fd: recorded, not reachable by the device",
                m.iova,
                m.size
            );
            self.dma.insert(m.iova, m.size);
            self.stats.fdless_maps += 1;
            return Ok(Reply::DmaMap);
        };
        self.device.dma_map(DmaMapping {
            iova: m.iova,
            size: m.size,
            offset: m.offset,
            readable: m.flags & VFIO_DMA_MAP_FLAG_READ != 0,
            writable: m.flags & VFIO_DMA_MAP_FLAG_WRITE != 0,
            fd,
        })?;
        self.dma.insert(m.iova, m.size);
        Ok(Reply::DmaMap)
    }

    fn dma_unmap(&mut self, u: DmaUnmap) -> Result<Reply, Refused> {
        if (u.argsz as usize) < DMA_UNMAP_SIZE {
            return Err(Refused::new(libc::EINVAL, "DMA_UNMAP argsz too small"));
        }
        if u.flags & VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP != 0 {
            return Err(Refused::new(libc::ENOTSUP, "dirty bitmaps"));
        }
        if u.flags & !VFIO_DMA_UNMAP_FLAG_ALL != 0 {
            return Err(Refused::new(
                libc::EINVAL,
                format!("DMA_UNMAP flags {:#x}", u.flags),
            ));
        }
        if u.flags & VFIO_DMA_UNMAP_FLAG_ALL != 0 {
            // As the kernel: unmap-all takes no range.
            if u.iova != 0 || u.size != 0 {
                return Err(Refused::new(libc::EINVAL, "unmap-all with a range"));
            }
            self.device.dma_unmap_all()?;
            self.dma.clear();
        } else {
            if self.dma.get(&u.iova) != Some(&u.size) {
                return Err(Refused::new(
                    libc::ENOENT,
                    format!("DMA_UNMAP {:#x}+{:#x} matches no mapping", u.iova, u.size),
                ));
            }
            self.device.dma_unmap(u.iova, u.size)?;
            self.dma.remove(&u.iova);
        }
        Ok(Reply::DmaUnmap(Some(DmaUnmap {
            argsz: wire_len(DMA_UNMAP_SIZE),
            ..u
        })))
    }
}

/// The command a request message carries, for logging by the glue.
pub fn command_name(command: u16) -> &'static str {
    match command {
        cmd::VERSION => "VERSION",
        cmd::DMA_MAP => "DMA_MAP",
        cmd::DMA_UNMAP => "DMA_UNMAP",
        cmd::DEVICE_GET_INFO => "DEVICE_GET_INFO",
        cmd::GET_REGION_INFO => "GET_REGION_INFO",
        cmd::GET_REGION_IO_FDS => "GET_REGION_IO_FDS",
        cmd::GET_IRQ_INFO => "GET_IRQ_INFO",
        cmd::SET_IRQS => "SET_IRQS",
        cmd::REGION_READ => "REGION_READ",
        cmd::REGION_WRITE => "REGION_WRITE",
        cmd::DMA_READ => "DMA_READ",
        cmd::DMA_WRITE => "DMA_WRITE",
        cmd::DEVICE_RESET => "DEVICE_RESET",
        cmd::REGION_WRITE_MULTI => "REGION_WRITE_MULTI",
        _ => "unknown",
    }
}
