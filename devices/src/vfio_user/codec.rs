//! Requests and replies: decoding from a received [`Message`] with every length checked
//! against the header's size and every fd count against what the command allows, and
//! encoding to the bytes and fds to send. Both directions are here, so the server (nicd)
//! and a client (the vmm, the tests) share one implementation.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use super::header::{HEADER_SIZE, Header, cmd};
use super::messages::*;
use super::wire::{Put, Reader, wire_len};

/// Why a message could not be decoded. The message itself was consumed whole (its size
/// was within limits), so the stream is still in step: the server answers with an error
/// reply (EINVAL) and goes on.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The bytes ran out while reading a field.
    #[error("{what}: needs {need} bytes, the message has {have}")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Bytes needed.
        need: usize,
        /// Bytes there.
        have: usize,
    },
    /// A fixed-size payload is longer than its structure.
    #[error("{what}: {extra} bytes beyond the structure")]
    TrailingBytes {
        /// The structure.
        what: &'static str,
        /// Extra bytes.
        extra: usize,
    },
    /// The header's size is smaller than the header.
    #[error("message size {size} is smaller than the 16-byte header")]
    SizeBelowHeader {
        /// The size field.
        size: u32,
    },
    /// The header's size does not match the payload handed to the decoder.
    #[error("header says {header} bytes, the message has {actual}")]
    SizeMismatch {
        /// The size field.
        header: u32,
        /// Header plus payload received.
        actual: usize,
    },
    /// More (or other) fds than the command allows.
    #[error("command {command} came with {got} fds, it allows {allowed}")]
    Fds {
        /// The command.
        command: u16,
        /// Fds received.
        got: usize,
        /// Fds allowed.
        allowed: usize,
    },
    /// Invalid flag bits.
    #[error("{what}: invalid flags {flags:#x}")]
    Flags {
        /// The structure.
        what: &'static str,
        /// The flags.
        flags: u32,
    },
    /// A count field disagrees with the data that follows.
    #[error("{what}: count {count} but {len} data bytes")]
    Count {
        /// The structure.
        what: &'static str,
        /// The count field.
        count: u32,
        /// The data's length.
        len: usize,
    },
    /// VERSION's capabilities are not valid JSON.
    #[error("VERSION capabilities are not valid JSON")]
    Json(#[source] serde_json::Error),
    /// VERSION's capabilities have the wrong shape.
    #[error("VERSION capabilities: {0}")]
    Capabilities(&'static str),
    /// The region-info capability chain points outside the reply or loops.
    #[error("region info capability chain broken at offset {offset}")]
    CapChain {
        /// The offending offset.
        offset: u32,
    },
}

/// One received message: header, payload (exactly `header.size - 16` bytes) and the fds
/// that came with it, owned from the moment they were received.
#[derive(Debug)]
pub struct Message {
    /// The header.
    pub header: Header,
    /// The payload.
    pub payload: Vec<u8>,
    /// Received fds.
    pub fds: Vec<OwnedFd>,
}

impl Message {
    fn check_size(&self) -> Result<(), DecodeError> {
        let actual = HEADER_SIZE + self.payload.len();
        if self.header.size as usize != actual {
            return Err(DecodeError::SizeMismatch {
                header: self.header.size,
                actual,
            });
        }
        Ok(())
    }

    fn allow_fds(&self, allowed: usize) -> Result<(), DecodeError> {
        if self.fds.len() > allowed {
            return Err(DecodeError::Fds {
                command: self.header.command,
                got: self.fds.len(),
                allowed,
            });
        }
        Ok(())
    }
}

/// A message ready to send: its bytes and the fds to pass with them.
#[derive(Debug)]
pub struct Encoded<'a> {
    /// Header and payload.
    pub bytes: Vec<u8>,
    /// Fds for SCM_RIGHTS.
    pub fds: Vec<BorrowedFd<'a>>,
}

fn finish(header: Header, mut body: Vec<u8>) -> Vec<u8> {
    let mut h = header;
    h.size = wire_len(body.len());
    body[..HEADER_SIZE].copy_from_slice(&h.to_bytes());
    body
}

fn start() -> Vec<u8> {
    vec![0u8; HEADER_SIZE]
}

/// A request (client to server).
#[derive(Debug)]
pub enum Request {
    /// VERSION.
    Version(Version),
    /// DMA_MAP.
    DmaMap(DmaMap),
    /// DMA_UNMAP.
    DmaUnmap(DmaUnmap),
    /// DEVICE_GET_INFO with the client's argsz.
    DeviceGetInfo {
        /// Reply size the client can take.
        argsz: u32,
    },
    /// GET_REGION_INFO.
    GetRegionInfo {
        /// Reply size the client can take.
        argsz: u32,
        /// Region index.
        index: u32,
    },
    /// GET_REGION_IO_FDS.
    GetRegionIoFds {
        /// Reply size the client can take.
        argsz: u32,
        /// Region index.
        index: u32,
    },
    /// GET_IRQ_INFO.
    GetIrqInfo {
        /// Reply size the client can take.
        argsz: u32,
        /// IRQ index.
        index: u32,
    },
    /// SET_IRQS.
    SetIrqs(IrqSet),
    /// REGION_READ.
    RegionRead(RegionRead),
    /// REGION_WRITE.
    RegionWrite(RegionData),
    /// DEVICE_RESET.
    DeviceReset,
    /// A command this implementation does not handle; its payload and fds were consumed
    /// and dropped. The server answers ENOSYS.
    Unknown {
        /// The command number.
        command: u16,
    },
}

impl Request {
    /// The command number.
    pub fn command(&self) -> u16 {
        match self {
            Self::Version(_) => cmd::VERSION,
            Self::DmaMap(_) => cmd::DMA_MAP,
            Self::DmaUnmap(_) => cmd::DMA_UNMAP,
            Self::DeviceGetInfo { .. } => cmd::DEVICE_GET_INFO,
            Self::GetRegionInfo { .. } => cmd::GET_REGION_INFO,
            Self::GetRegionIoFds { .. } => cmd::GET_REGION_IO_FDS,
            Self::GetIrqInfo { .. } => cmd::GET_IRQ_INFO,
            Self::SetIrqs(_) => cmd::SET_IRQS,
            Self::RegionRead(_) => cmd::REGION_READ,
            Self::RegionWrite(_) => cmd::REGION_WRITE,
            Self::DeviceReset => cmd::DEVICE_RESET,
            Self::Unknown { command } => *command,
        }
    }

    /// True for commands whose reply carries data, so that a no-reply flag on them makes
    /// no sense.
    pub fn needs_reply(&self) -> bool {
        matches!(
            self,
            Self::Version(_)
                | Self::DeviceGetInfo { .. }
                | Self::GetRegionInfo { .. }
                | Self::GetRegionIoFds { .. }
                | Self::GetIrqInfo { .. }
                | Self::RegionRead(_)
        )
    }

    /// Decodes a command message (the caller checked the type bits).
    pub fn decode(mut msg: Message) -> Result<Self, DecodeError> {
        msg.check_size()?;
        let command = msg.header.command;
        let mut r = Reader::new(&msg.payload);
        let req = match command {
            cmd::VERSION => {
                msg.allow_fds(0)?;
                Self::Version(decode_version(&mut r)?)
            }
            cmd::DMA_MAP => {
                msg.allow_fds(1)?;
                let _argsz = r.u32("DMA_MAP argsz")?;
                let flags = r.u32("DMA_MAP flags")?;
                let offset = r.u64("DMA_MAP offset")?;
                let iova = r.u64("DMA_MAP address")?;
                let size = r.u64("DMA_MAP size")?;
                r.finish("DMA_MAP")?;
                Self::DmaMap(DmaMap {
                    flags,
                    offset,
                    iova,
                    size,
                    fd: msg.fds.pop(),
                })
            }
            cmd::DMA_UNMAP => {
                msg.allow_fds(0)?;
                let u = decode_dma_unmap(&mut r)?;
                r.finish("DMA_UNMAP")?;
                Self::DmaUnmap(u)
            }
            cmd::DEVICE_GET_INFO => {
                msg.allow_fds(0)?;
                let argsz = r.u32("DEVICE_GET_INFO argsz")?;
                r.bytes(DEVICE_INFO_SIZE - 4, "DEVICE_GET_INFO")?;
                r.finish("DEVICE_GET_INFO")?;
                Self::DeviceGetInfo { argsz }
            }
            cmd::GET_REGION_INFO => {
                msg.allow_fds(0)?;
                let argsz = r.u32("GET_REGION_INFO argsz")?;
                let _flags = r.u32("GET_REGION_INFO flags")?;
                let index = r.u32("GET_REGION_INFO index")?;
                r.bytes(REGION_INFO_SIZE - 12, "GET_REGION_INFO")?;
                r.finish("GET_REGION_INFO")?;
                Self::GetRegionInfo { argsz, index }
            }
            cmd::GET_REGION_IO_FDS => {
                msg.allow_fds(0)?;
                let argsz = r.u32("GET_REGION_IO_FDS argsz")?;
                let _flags = r.u32("GET_REGION_IO_FDS flags")?;
                let index = r.u32("GET_REGION_IO_FDS index")?;
                let _count = r.u32("GET_REGION_IO_FDS count")?;
                r.finish("GET_REGION_IO_FDS")?;
                Self::GetRegionIoFds { argsz, index }
            }
            cmd::GET_IRQ_INFO => {
                msg.allow_fds(0)?;
                let argsz = r.u32("GET_IRQ_INFO argsz")?;
                let _flags = r.u32("GET_IRQ_INFO flags")?;
                let index = r.u32("GET_IRQ_INFO index")?;
                let _count = r.u32("GET_IRQ_INFO count")?;
                r.finish("GET_IRQ_INFO")?;
                Self::GetIrqInfo { argsz, index }
            }
            cmd::SET_IRQS => Self::SetIrqs(decode_irq_set(&mut r, msg.fds, command)?),
            cmd::REGION_READ => {
                msg.allow_fds(0)?;
                let offset = r.u64("REGION_READ offset")?;
                let region = r.u32("REGION_READ region")?;
                let count = r.u32("REGION_READ count")?;
                r.finish("REGION_READ")?;
                Self::RegionRead(RegionRead {
                    offset,
                    region,
                    count,
                })
            }
            cmd::REGION_WRITE => {
                msg.allow_fds(0)?;
                Self::RegionWrite(decode_region_data(&mut r, "REGION_WRITE")?)
            }
            cmd::DEVICE_RESET => {
                msg.allow_fds(0)?;
                r.finish("DEVICE_RESET")?;
                Self::DeviceReset
            }
            // The payload is already consumed; the fds drop here.
            command => Self::Unknown { command },
        };
        Ok(req)
    }

    /// Encodes the request with message id `id`; `no_reply` sets the no-reply flag.
    pub fn encode(&self, id: u16, no_reply: bool) -> Encoded<'_> {
        let mut b = start();
        let mut fds = Vec::new();
        match self {
            Self::Version(v) => encode_version(&mut b, v),
            Self::DmaMap(m) => {
                b.put_u32(wire_len(DMA_MAP_SIZE));
                b.put_u32(m.flags);
                b.put_u64(m.offset);
                b.put_u64(m.iova);
                b.put_u64(m.size);
                fds.extend(m.fd.as_ref().map(|f| f.as_fd()));
            }
            Self::DmaUnmap(u) => encode_dma_unmap(&mut b, u),
            Self::DeviceGetInfo { argsz } => {
                b.put_u32(*argsz);
                b.resize(HEADER_SIZE + DEVICE_INFO_SIZE, 0);
            }
            Self::GetRegionInfo { argsz, index } => {
                b.put_u32(*argsz);
                b.put_u32(0);
                b.put_u32(*index);
                b.resize(HEADER_SIZE + REGION_INFO_SIZE, 0);
            }
            Self::GetRegionIoFds { argsz, index } | Self::GetIrqInfo { argsz, index } => {
                b.put_u32(*argsz);
                b.put_u32(0);
                b.put_u32(*index);
                b.put_u32(0);
            }
            Self::SetIrqs(s) => {
                let data_len = match &s.data {
                    IrqData::Bool(v) => v.len(),
                    _ => 0,
                };
                b.put_u32(wire_len(IRQ_SET_SIZE + data_len));
                b.put_u32(s.data.flag() | s.action.flag());
                b.put_u32(s.index);
                b.put_u32(s.start);
                b.put_u32(s.count);
                match &s.data {
                    IrqData::None => {}
                    IrqData::Bool(v) => b.extend(v.iter().map(|&x| u8::from(x))),
                    IrqData::Eventfds(v) => fds.extend(v.iter().map(|f| f.as_fd())),
                }
            }
            Self::RegionRead(rd) => {
                b.put_u64(rd.offset);
                b.put_u32(rd.region);
                b.put_u32(rd.count);
            }
            Self::RegionWrite(w) => encode_region_data(&mut b, w),
            Self::DeviceReset | Self::Unknown { .. } => {}
        }
        Encoded {
            bytes: finish(Header::command(id, self.command(), 0, no_reply), b),
            fds,
        }
    }
}

/// A reply (server to client).
#[derive(Debug)]
pub enum Reply {
    /// VERSION: the server's choice.
    Version(Version),
    /// DMA_MAP done.
    DmaMap,
    /// DMA_UNMAP done, with the request's entry echoed (absent if the server sent none).
    DmaUnmap(Option<DmaUnmap>),
    /// DEVICE_GET_INFO.
    DeviceGetInfo(DeviceInfo),
    /// GET_REGION_INFO.
    GetRegionInfo(RegionInfoReply),
    /// GET_REGION_IO_FDS.
    GetRegionIoFds(RegionIoFdsReply),
    /// GET_IRQ_INFO.
    GetIrqInfo(IrqInfo),
    /// SET_IRQS done.
    SetIrqs,
    /// REGION_READ data.
    RegionRead(RegionData),
    /// REGION_WRITE done.
    RegionWrite(RegionWriteReply),
    /// DEVICE_RESET done.
    DeviceReset,
    /// An error reply: header only, with an errno.
    Error {
        /// The errno (positive).
        errno: u32,
    },
    /// A reply to a command this codec does not know.
    Unknown {
        /// The command number.
        command: u16,
    },
}

impl Reply {
    /// Decodes a reply message (the caller checked the type bits).
    pub fn decode(mut msg: Message) -> Result<Self, DecodeError> {
        msg.check_size()?;
        if msg.header.is_error() {
            return Ok(Self::Error {
                errno: msg.header.error,
            });
        }
        let command = msg.header.command;
        let mut r = Reader::new(&msg.payload);
        let reply = match command {
            cmd::VERSION => {
                msg.allow_fds(0)?;
                Self::Version(decode_version(&mut r)?)
            }
            cmd::DMA_MAP | cmd::SET_IRQS | cmd::DEVICE_RESET => {
                msg.allow_fds(0)?;
                r.finish("empty reply")?;
                match command {
                    cmd::DMA_MAP => Self::DmaMap,
                    cmd::SET_IRQS => Self::SetIrqs,
                    _ => Self::DeviceReset,
                }
            }
            cmd::DMA_UNMAP => {
                msg.allow_fds(0)?;
                if r.remaining() == 0 {
                    Self::DmaUnmap(None)
                } else {
                    let u = decode_dma_unmap(&mut r)?;
                    r.finish("DMA_UNMAP reply")?;
                    Self::DmaUnmap(Some(u))
                }
            }
            cmd::DEVICE_GET_INFO => {
                msg.allow_fds(0)?;
                let info = DeviceInfo {
                    argsz: r.u32("DEVICE_GET_INFO argsz")?,
                    flags: r.u32("DEVICE_GET_INFO flags")?,
                    num_regions: r.u32("DEVICE_GET_INFO num_regions")?,
                    num_irqs: r.u32("DEVICE_GET_INFO num_irqs")?,
                };
                r.finish("DEVICE_GET_INFO reply")?;
                Self::DeviceGetInfo(info)
            }
            cmd::GET_REGION_INFO => {
                msg.allow_fds(1)?;
                let mut reply = decode_region_info(&msg.payload)?;
                reply.fd = msg.fds.pop();
                Self::GetRegionInfo(reply)
            }
            cmd::GET_REGION_IO_FDS => {
                let argsz = r.u32("GET_REGION_IO_FDS argsz")?;
                let flags = r.u32("GET_REGION_IO_FDS flags")?;
                let index = r.u32("GET_REGION_IO_FDS index")?;
                let count = r.u32("GET_REGION_IO_FDS count")?;
                if flags != 0 {
                    return Err(DecodeError::Flags {
                        what: "GET_REGION_IO_FDS reply",
                        flags,
                    });
                }
                let rest = r.rest();
                let mut sub_regions = Vec::new();
                if !rest.is_empty() {
                    let want = (count as usize).checked_mul(IO_FD_SUB_REGION_SIZE);
                    if want != Some(rest.len()) {
                        return Err(DecodeError::Count {
                            what: "GET_REGION_IO_FDS reply",
                            count,
                            len: rest.len(),
                        });
                    }
                    let mut e = Reader::new(rest);
                    for _ in 0..count {
                        let s = IoFdSubRegion {
                            offset: e.u64("sub-region offset")?,
                            size: e.u64("sub-region size")?,
                            fd_index: e.u32("sub-region fd_index")?,
                            kind: e.u32("sub-region type")?,
                            flags: e.u32("sub-region flags")?,
                            datamatch: {
                                let _padding = e.u32("sub-region padding")?;
                                e.u64("sub-region datamatch")?
                            },
                        };
                        if s.fd_index as usize >= msg.fds.len() {
                            return Err(DecodeError::Fds {
                                command,
                                got: msg.fds.len(),
                                allowed: s.fd_index as usize + 1,
                            });
                        }
                        sub_regions.push(s);
                    }
                } else {
                    msg.allow_fds(0)?;
                }
                Self::GetRegionIoFds(RegionIoFdsReply {
                    argsz,
                    index,
                    count,
                    sub_regions,
                    fds: std::mem::take(&mut msg.fds),
                })
            }
            cmd::GET_IRQ_INFO => {
                msg.allow_fds(0)?;
                let info = IrqInfo {
                    argsz: r.u32("GET_IRQ_INFO argsz")?,
                    flags: r.u32("GET_IRQ_INFO flags")?,
                    index: r.u32("GET_IRQ_INFO index")?,
                    count: r.u32("GET_IRQ_INFO count")?,
                };
                r.finish("GET_IRQ_INFO reply")?;
                Self::GetIrqInfo(info)
            }
            cmd::REGION_READ => {
                msg.allow_fds(0)?;
                Self::RegionRead(decode_region_data(&mut r, "REGION_READ reply")?)
            }
            cmd::REGION_WRITE => {
                msg.allow_fds(0)?;
                let w = RegionWriteReply {
                    offset: r.u64("REGION_WRITE offset")?,
                    region: r.u32("REGION_WRITE region")?,
                    count: r.u32("REGION_WRITE count")?,
                };
                r.finish("REGION_WRITE reply")?;
                Self::RegionWrite(w)
            }
            command => Self::Unknown { command },
        };
        Ok(reply)
    }

    /// Encodes the reply to the command `command` whose message id was `id`.
    pub fn encode(&self, id: u16, command: u16) -> Encoded<'_> {
        let mut b = start();
        let mut fds = Vec::new();
        match self {
            Self::Error { errno } => {
                return Encoded {
                    bytes: Header::error_reply(id, command, *errno).to_bytes().to_vec(),
                    fds,
                };
            }
            Self::Version(v) => encode_version(&mut b, v),
            Self::DmaMap | Self::SetIrqs | Self::DeviceReset | Self::Unknown { .. } => {}
            Self::DmaUnmap(u) => {
                if let Some(u) = u {
                    encode_dma_unmap(&mut b, u);
                }
            }
            Self::DeviceGetInfo(i) => {
                b.put_u32(i.argsz);
                b.put_u32(i.flags);
                b.put_u32(i.num_regions);
                b.put_u32(i.num_irqs);
            }
            Self::GetRegionInfo(ri) => {
                encode_region_info(&mut b, ri);
                fds.extend(ri.fd.as_ref().map(|f| f.as_fd()));
            }
            Self::GetRegionIoFds(io) => {
                b.put_u32(io.argsz);
                b.put_u32(0);
                b.put_u32(io.index);
                b.put_u32(io.count);
                for s in &io.sub_regions {
                    b.put_u64(s.offset);
                    b.put_u64(s.size);
                    b.put_u32(s.fd_index);
                    b.put_u32(s.kind);
                    b.put_u32(s.flags);
                    b.put_u32(0);
                    b.put_u64(s.datamatch);
                }
                fds.extend(io.fds.iter().map(|f| f.as_fd()));
            }
            Self::GetIrqInfo(i) => {
                b.put_u32(i.argsz);
                b.put_u32(i.flags);
                b.put_u32(i.index);
                b.put_u32(i.count);
            }
            Self::RegionRead(d) => encode_region_data(&mut b, d),
            Self::RegionWrite(w) => {
                b.put_u64(w.offset);
                b.put_u32(w.region);
                b.put_u32(w.count);
            }
        }
        Encoded {
            bytes: finish(Header::reply(id, command, 0), b),
            fds,
        }
    }
}

/// A reply with the id and command of the request it answers.
#[derive(Debug)]
pub struct ReplyMessage {
    /// The request's message id.
    pub id: u16,
    /// The request's command.
    pub command: u16,
    /// The reply.
    pub reply: Reply,
}

impl ReplyMessage {
    /// The bytes and fds to send.
    pub fn encode(&self) -> Encoded<'_> {
        self.reply.encode(self.id, self.command)
    }

    /// The errno if this is an error reply.
    pub fn errno(&self) -> Option<u32> {
        match self.reply {
            Reply::Error { errno } => Some(errno),
            _ => None,
        }
    }
}

fn decode_dma_unmap(r: &mut Reader<'_>) -> Result<DmaUnmap, DecodeError> {
    Ok(DmaUnmap {
        argsz: r.u32("DMA_UNMAP argsz")?,
        flags: r.u32("DMA_UNMAP flags")?,
        iova: r.u64("DMA_UNMAP address")?,
        size: r.u64("DMA_UNMAP size")?,
    })
}

fn encode_dma_unmap(b: &mut Vec<u8>, u: &DmaUnmap) {
    b.put_u32(u.argsz);
    b.put_u32(u.flags);
    b.put_u64(u.iova);
    b.put_u64(u.size);
}

fn decode_region_data(r: &mut Reader<'_>, what: &'static str) -> Result<RegionData, DecodeError> {
    let offset = r.u64(what)?;
    let region = r.u32(what)?;
    let count = r.u32(what)?;
    let data = r.rest();
    if count as usize != data.len() {
        return Err(DecodeError::Count {
            what,
            count,
            len: data.len(),
        });
    }
    Ok(RegionData {
        offset,
        region,
        data: data.to_vec(),
    })
}

fn encode_region_data(b: &mut Vec<u8>, d: &RegionData) {
    b.put_u64(d.offset);
    b.put_u32(d.region);
    b.put_u32(wire_len(d.data.len()));
    b.extend_from_slice(&d.data);
}

fn decode_irq_set(
    r: &mut Reader<'_>,
    mut fds: Vec<OwnedFd>,
    command: u16,
) -> Result<IrqSet, DecodeError> {
    let _argsz = r.u32("SET_IRQS argsz")?;
    let flags = r.u32("SET_IRQS flags")?;
    let index = r.u32("SET_IRQS index")?;
    let start = r.u32("SET_IRQS start")?;
    let count = r.u32("SET_IRQS count")?;
    let bad = DecodeError::Flags {
        what: "SET_IRQS",
        flags,
    };
    if flags & !(VFIO_IRQ_SET_DATA_TYPE_MASK | VFIO_IRQ_SET_ACTION_TYPE_MASK) != 0 {
        return Err(bad);
    }
    let action = match flags & VFIO_IRQ_SET_ACTION_TYPE_MASK {
        VFIO_IRQ_SET_ACTION_MASK => IrqAction::Mask,
        VFIO_IRQ_SET_ACTION_UNMASK => IrqAction::Unmask,
        VFIO_IRQ_SET_ACTION_TRIGGER => IrqAction::Trigger,
        _ => return Err(bad),
    };
    let rest = r.rest();
    let fd_error = |got: usize, allowed: usize| DecodeError::Fds {
        command,
        got,
        allowed,
    };
    let data = match flags & VFIO_IRQ_SET_DATA_TYPE_MASK {
        VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_DATA_EVENTFD if !rest.is_empty() => {
            return Err(DecodeError::TrailingBytes {
                what: "SET_IRQS",
                extra: rest.len(),
            });
        }
        VFIO_IRQ_SET_DATA_NONE => {
            if !fds.is_empty() {
                return Err(fd_error(fds.len(), 0));
            }
            IrqData::None
        }
        VFIO_IRQ_SET_DATA_BOOL => {
            if !fds.is_empty() {
                return Err(fd_error(fds.len(), 0));
            }
            if count as usize != rest.len() {
                return Err(DecodeError::Count {
                    what: "SET_IRQS bools",
                    count,
                    len: rest.len(),
                });
            }
            IrqData::Bool(rest.iter().map(|&b| b != 0).collect())
        }
        VFIO_IRQ_SET_DATA_EVENTFD => {
            // One fd per vector, or none to de-assign.
            if !fds.is_empty() && fds.len() != count as usize {
                return Err(fd_error(fds.len(), count as usize));
            }
            IrqData::Eventfds(std::mem::take(&mut fds))
        }
        _ => return Err(bad),
    };
    Ok(IrqSet {
        index,
        start,
        count,
        action,
        data,
    })
}

fn decode_region_info(payload: &[u8]) -> Result<RegionInfoReply, DecodeError> {
    let mut r = Reader::new(payload);
    let argsz = r.u32("GET_REGION_INFO argsz")?;
    let flags = r.u32("GET_REGION_INFO flags")?;
    let index = r.u32("GET_REGION_INFO index")?;
    let cap_offset = r.u32("GET_REGION_INFO cap_offset")?;
    let size = r.u64("GET_REGION_INFO size")?;
    let offset = r.u64("GET_REGION_INFO offset")?;
    let mut info = RegionInfo {
        index,
        flags,
        size,
        offset,
        sparse: Vec::new(),
    };
    if flags & VFIO_REGION_INFO_FLAG_CAPS != 0 && cap_offset != 0 {
        info.sparse = decode_caps(payload, cap_offset)?;
    }
    Ok(RegionInfoReply {
        argsz,
        info,
        fd: None,
    })
}

/// Most capabilities followed in one chain (each must move forward, so the chain ends
/// anyway; this only bounds the work on a long one).
const MAX_CAPS: usize = 16;

fn decode_caps(payload: &[u8], first: u32) -> Result<Vec<SparseArea>, DecodeError> {
    let mut sparse = Vec::new();
    let mut at = first;
    for _ in 0..MAX_CAPS {
        let off = at as usize;
        if off < REGION_INFO_SIZE || off >= payload.len() {
            return Err(DecodeError::CapChain { offset: at });
        }
        let mut r = Reader::new(&payload[off..]);
        let id = r.u16("capability id")?;
        let _version = r.u16("capability version")?;
        let next = r.u32("capability next")?;
        if u32::from(id) == VFIO_REGION_INFO_CAP_SPARSE_MMAP {
            let nr = r.u32("sparse nr_areas")?;
            let _reserved = r.u32("sparse reserved")?;
            let fits = (nr as usize)
                .checked_mul(SPARSE_AREA_SIZE)
                .is_some_and(|n| n <= r.remaining());
            if !fits {
                return Err(DecodeError::Count {
                    what: "sparse mmap areas",
                    count: nr,
                    len: r.remaining(),
                });
            }
            sparse.clear();
            for _ in 0..nr {
                sparse.push(SparseArea {
                    offset: r.u64("sparse area offset")?,
                    size: r.u64("sparse area size")?,
                });
            }
        }
        if next == 0 {
            return Ok(sparse);
        }
        if next <= at {
            return Err(DecodeError::CapChain { offset: next });
        }
        at = next;
    }
    Err(DecodeError::CapChain { offset: at })
}

fn encode_region_info(b: &mut Vec<u8>, ri: &RegionInfoReply) {
    let info = &ri.info;
    let has_caps = !info.sparse.is_empty();
    b.put_u32(ri.argsz);
    b.put_u32(
        info.flags
            | if has_caps {
                VFIO_REGION_INFO_FLAG_CAPS
            } else {
                0
            },
    );
    b.put_u32(info.index);
    b.put_u32(if has_caps {
        wire_len(REGION_INFO_SIZE)
    } else {
        0
    });
    b.put_u64(info.size);
    b.put_u64(info.offset);
    if has_caps {
        // The kernel's id is a u32 constant; on the wire it is the u16 id field.
        b.put_u16((VFIO_REGION_INFO_CAP_SPARSE_MMAP & 0xffff) as u16);
        b.put_u16(1);
        b.put_u32(0);
        b.put_u32(wire_len(info.sparse.len()));
        b.put_u32(0);
        for a in &info.sparse {
            b.put_u64(a.offset);
            b.put_u64(a.size);
        }
    }
}

fn decode_version(r: &mut Reader<'_>) -> Result<Version, DecodeError> {
    let major = r.u16("VERSION major")?;
    let minor = r.u16("VERSION minor")?;
    let data = r.rest();
    let capabilities = if data.is_empty() {
        None
    } else {
        Some(parse_capabilities(data)?)
    };
    Ok(Version {
        major,
        minor,
        capabilities,
    })
}

fn encode_version(b: &mut Vec<u8>, v: &Version) {
    b.put_u16(v.major);
    b.put_u16(v.minor);
    if let Some(c) = &v.capabilities {
        b.extend_from_slice(capabilities_json(c).as_bytes());
        b.push(0);
    }
}

fn json_u64(v: &serde_json::Value) -> Result<u64, DecodeError> {
    v.as_u64().ok_or(DecodeError::Capabilities(
        "a number member is not an unsigned integer",
    ))
}

/// Parses the NUL-terminated JSON of VERSION (a missing final NUL is tolerated; an inner
/// one is not).
fn parse_capabilities(data: &[u8]) -> Result<Capabilities, DecodeError> {
    let json = data.strip_suffix(&[0]).unwrap_or(data);
    if json.contains(&0) {
        return Err(DecodeError::Capabilities("NUL inside the JSON"));
    }
    let value: serde_json::Value = serde_json::from_slice(json).map_err(DecodeError::Json)?;
    let top = value
        .as_object()
        .ok_or(DecodeError::Capabilities("not a JSON object"))?;
    let mut caps = Capabilities::default();
    let Some(c) = top.get("capabilities") else {
        return Ok(caps);
    };
    let c = c.as_object().ok_or(DecodeError::Capabilities(
        "\"capabilities\" is not an object",
    ))?;
    for (k, v) in c {
        match k.as_str() {
            "max_msg_fds" => caps.max_msg_fds = Some(json_u64(v)?),
            "max_data_xfer_size" => caps.max_data_xfer_size = Some(json_u64(v)?),
            "max_dma_maps" => caps.max_dma_maps = Some(json_u64(v)?),
            "pgsizes" => caps.pgsizes = Some(json_u64(v)?),
            "write_multiple" => {
                caps.write_multiple = Some(
                    v.as_bool()
                        .ok_or(DecodeError::Capabilities("write_multiple is not a boolean"))?,
                )
            }
            "migration" => {
                let m = v
                    .as_object()
                    .ok_or(DecodeError::Capabilities("migration is not an object"))?;
                let mut mig = MigrationCaps::default();
                if let Some(p) = m.get("pgsize") {
                    mig.pgsize = Some(json_u64(p)?);
                }
                if let Some(p) = m.get("max_bitmap_size") {
                    mig.max_bitmap_size = Some(json_u64(p)?);
                }
                caps.migration = Some(mig);
            }
            // twin_socket and future members: not offered, so not answered.
            _ => {}
        }
    }
    Ok(caps)
}

/// The compact JSON for `c`, members in a fixed order (no NUL).
pub fn capabilities_json(c: &Capabilities) -> String {
    let mut members = Vec::new();
    let numbers = [
        ("max_msg_fds", c.max_msg_fds),
        ("max_data_xfer_size", c.max_data_xfer_size),
        ("max_dma_maps", c.max_dma_maps),
        ("pgsizes", c.pgsizes),
    ];
    for (name, v) in numbers {
        if let Some(v) = v {
            members.push(format!("\"{name}\":{v}"));
        }
    }
    if let Some(w) = c.write_multiple {
        members.push(format!("\"write_multiple\":{w}"));
    }
    if let Some(m) = &c.migration {
        let mut inner = Vec::new();
        if let Some(p) = m.pgsize {
            inner.push(format!("\"pgsize\":{p}"));
        }
        if let Some(p) = m.max_bitmap_size {
            inner.push(format!("\"max_bitmap_size\":{p}"));
        }
        members.push(format!("\"migration\":{{{}}}", inner.join(",")));
    }
    format!("{{\"capabilities\":{{{}}}}}", members.join(","))
}
