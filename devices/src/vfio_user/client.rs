//! A blocking vfio-user client on the same codec as the server: one request at a time,
//! its reply read before the next (posted writes need none). It plays the vmm's side of
//! a VF (and a guest driver's, in benchmarks and tests): VERSION, the device's regions and
//! IRQs, DMA_MAP of memfd-backed memory, SET_IRQS with eventfds chunked to the server's
//! `max_msg_fds`, REGION_READ/WRITE. Nothing the server sends can panic it: every reply is
//! decoded with lengths and fds checked, matched to its request by id and command, and
//! anything else is a [`ClientError`].

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::codec::{DecodeError, Reply, Request};
use super::header::cmd;
use super::messages::{
    Capabilities, DeviceInfo, DmaMap, DmaUnmap, IrqAction, IrqData, IrqInfo, IrqSet, RegionData,
    RegionInfoReply, RegionRead, VFIO_DMA_MAP_FLAG_READ, VFIO_DMA_MAP_FLAG_WRITE, Version,
};
use super::server::command_name;
use super::socket::{Limits, Socket, SocketError};

/// How long a reply may take before the server counts as gone.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be connected.
    #[error("cannot connect to {}", path.display())]
    Connect {
        /// The socket's path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Sending or receiving failed (the server closed, timed out, sent too much).
    #[error("vfio-user connection failed")]
    Socket(#[source] SocketError),
    /// A reply that does not decode.
    #[error("malformed reply")]
    Decode(#[source] DecodeError),
    /// The server sent a command where a reply belongs.
    #[error("the server sent command {command} instead of a reply")]
    NotAReply {
        /// Its command number.
        command: u16,
    },
    /// A reply whose id or command is not the request's.
    #[error(
        "reply (id {got_id}, command {got_command}) does not answer request {want_id} ({want_command})"
    )]
    OutOfStep {
        /// The request's id.
        want_id: u16,
        /// The request's command.
        want_command: u16,
        /// The reply's id.
        got_id: u16,
        /// The reply's command.
        got_command: u16,
    },
    /// The server refused the request.
    #[error("{command} refused")]
    Refused {
        /// The request.
        command: &'static str,
        /// The server's errno.
        #[source]
        source: io::Error,
    },
    /// A reply of the right command but not the shape asked for (e.g. fewer bytes read).
    #[error("{command}: unexpected reply: {detail}")]
    Unexpected {
        /// The request.
        command: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// A local system call failed (dup of an fd, an eventfd).
    #[error("{what} failed")]
    Local {
        /// What.
        what: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// What the client proposes in VERSION (QEMU's values).
pub fn default_capabilities() -> Capabilities {
    Capabilities {
        max_msg_fds: Some(16),
        max_data_xfer_size: Some(1 << 20),
        pgsizes: Some(4096),
        max_dma_maps: Some(65535),
        ..Capabilities::default()
    }
}

/// A connection to one vfio-user device.
#[derive(Debug)]
pub struct Client {
    sock: Socket,
    next_id: u16,
    limits: Limits,
    /// What the server chose in VERSION (before it: the defaults).
    server: Capabilities,
}

impl Client {
    /// Connects to the socket at `path` (replies time out after [`REPLY_TIMEOUT`]).
    pub fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_stream(stream)
    }

    /// A client on a connected stream.
    pub fn from_stream(stream: UnixStream) -> Result<Self, ClientError> {
        stream
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .map_err(|source| ClientError::Local {
                what: "setting the reply timeout",
                source,
            })?;
        Ok(Self {
            sock: Socket::new(stream),
            next_id: 0,
            limits: Limits::default(),
            server: Capabilities::default(),
        })
    }

    /// How long a reply may take ([`REPLY_TIMEOUT`] by default); then the call fails
    /// with a socket error.
    pub fn set_reply_timeout(&self, t: Duration) -> Result<(), ClientError> {
        self.sock
            .stream()
            .set_read_timeout(Some(t))
            .map_err(|source| ClientError::Local {
                what: "setting the reply timeout",
                source,
            })
    }

    /// What the server chose in VERSION.
    pub fn server_capabilities(&self) -> &Capabilities {
        &self.server
    }

    /// The socket (e.g. to poll it for the server closing).
    pub fn stream(&self) -> &UnixStream {
        self.sock.stream()
    }

    /// Sends `req` asking for a reply, without waiting for it (pipelining, or a test of
    /// a client that does not read); returns its id. Read the replies with
    /// [`Client::recv_reply`], in order.
    pub fn send_request(&mut self, req: &Request) -> Result<u16, ClientError> {
        self.send(req, false)
    }

    /// The next reply the server sent: its id and the reply (an error reply as
    /// [`Reply::Error`]).
    pub fn recv_reply(&mut self) -> Result<(u16, Reply), ClientError> {
        let msg = self
            .sock
            .recv_message(&self.limits)
            .map_err(ClientError::Socket)?;
        if !msg.header.is_reply() {
            return Err(ClientError::NotAReply {
                command: msg.header.command,
            });
        }
        let id = msg.header.id;
        Ok((id, Reply::decode(msg).map_err(ClientError::Decode)?))
    }

    fn send(&mut self, req: &Request, posted: bool) -> Result<u16, ClientError> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let enc = req.encode(id, posted);
        self.sock
            .send_message(&enc.bytes, &enc.fds)
            .map_err(ClientError::Socket)?;
        Ok(id)
    }

    /// Sends `req` without asking for a reply (a posted write).
    pub fn post(&mut self, req: &Request) -> Result<(), ClientError> {
        self.send(req, true).map(|_| ())
    }

    /// Sends `req` and returns its reply; an error reply is [`ClientError::Refused`].
    pub fn call(&mut self, req: &Request) -> Result<Reply, ClientError> {
        let command = req.command();
        let id = self.send(req, false)?;
        let msg = self
            .sock
            .recv_message(&self.limits)
            .map_err(ClientError::Socket)?;
        let h = msg.header;
        if !h.is_reply() {
            return Err(ClientError::NotAReply { command: h.command });
        }
        if h.id != id || h.command != command {
            return Err(ClientError::OutOfStep {
                want_id: id,
                want_command: command,
                got_id: h.id,
                got_command: h.command,
            });
        }
        match Reply::decode(msg).map_err(ClientError::Decode)? {
            Reply::Error { errno } => Err(ClientError::Refused {
                command: command_name(command),
                source: io::Error::from_raw_os_error(i32::try_from(errno).unwrap_or(i32::MAX)),
            }),
            reply => Ok(reply),
        }
    }

    fn unexpected(command: u16, reply: &Reply) -> ClientError {
        ClientError::Unexpected {
            command: command_name(command),
            detail: format!("{reply:?}"),
        }
    }

    /// VERSION with `caps`; keeps and returns what the server chose.
    pub fn negotiate(&mut self, caps: Capabilities) -> Result<Version, ClientError> {
        let req = Request::Version(Version {
            major: 0,
            minor: 0,
            capabilities: Some(caps),
        });
        match self.call(&req)? {
            Reply::Version(v) => {
                self.server = v.capabilities.clone().unwrap_or_default();
                Ok(v)
            }
            other => Err(Self::unexpected(cmd::VERSION, &other)),
        }
    }

    /// DEVICE_GET_INFO.
    pub fn device_info(&mut self) -> Result<DeviceInfo, ClientError> {
        match self.call(&Request::DeviceGetInfo { argsz: 16 })? {
            Reply::DeviceGetInfo(info) => Ok(info),
            other => Err(Self::unexpected(cmd::DEVICE_GET_INFO, &other)),
        }
    }

    /// GET_REGION_INFO of region `index`.
    pub fn region_info(&mut self, index: u32) -> Result<RegionInfoReply, ClientError> {
        match self.call(&Request::GetRegionInfo { argsz: 32, index })? {
            Reply::GetRegionInfo(r) => Ok(r),
            other => Err(Self::unexpected(cmd::GET_REGION_INFO, &other)),
        }
    }

    /// GET_IRQ_INFO of IRQ index `index`.
    pub fn irq_info(&mut self, index: u32) -> Result<IrqInfo, ClientError> {
        match self.call(&Request::GetIrqInfo { argsz: 16, index })? {
            Reply::GetIrqInfo(i) => Ok(i),
            other => Err(Self::unexpected(cmd::GET_IRQ_INFO, &other)),
        }
    }

    /// Maps `size` bytes of `file` from `offset` at `iova`, readable and writable.
    pub fn dma_map(
        &mut self,
        file: &File,
        offset: u64,
        iova: u64,
        size: u64,
    ) -> Result<(), ClientError> {
        let fd = file
            .as_fd()
            .try_clone_to_owned()
            .map_err(|source| ClientError::Local {
                what: "dup of a DMA fd",
                source,
            })?;
        let req = Request::DmaMap(DmaMap {
            flags: VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
            offset,
            iova,
            size,
            fd: Some(fd),
        });
        match self.call(&req)? {
            Reply::DmaMap => Ok(()),
            other => Err(Self::unexpected(cmd::DMA_MAP, &other)),
        }
    }

    /// Unmaps `[iova, iova + size)`.
    pub fn dma_unmap(&mut self, iova: u64, size: u64) -> Result<(), ClientError> {
        let req = Request::DmaUnmap(DmaUnmap {
            argsz: 24,
            flags: 0,
            iova,
            size,
        });
        match self.call(&req)? {
            Reply::DmaUnmap(_) => Ok(()),
            other => Err(Self::unexpected(cmd::DMA_UNMAP, &other)),
        }
    }

    /// SET_IRQS with one eventfd per vector of `index` from `start`, in messages of at
    /// most the server's `max_msg_fds` fds each.
    pub fn set_irq_eventfds(
        &mut self,
        index: u32,
        start: u32,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), ClientError> {
        let chunk = usize::try_from(self.server.max_msg_fds_or_default())
            .unwrap_or(1)
            .clamp(1, super::socket::SCM_MAX_FD);
        let mut at = start;
        for part in fds.chunks(chunk) {
            let owned = part
                .iter()
                .map(BorrowedFd::try_clone_to_owned)
                .collect::<io::Result<Vec<OwnedFd>>>()
                .map_err(|source| ClientError::Local {
                    what: "dup of an eventfd",
                    source,
                })?;
            let count = u32::try_from(owned.len()).unwrap_or(u32::MAX);
            let req = Request::SetIrqs(IrqSet {
                index,
                start: at,
                count,
                action: IrqAction::Trigger,
                data: IrqData::Eventfds(owned),
            });
            match self.call(&req)? {
                Reply::SetIrqs => {}
                other => return Err(Self::unexpected(cmd::SET_IRQS, &other)),
            }
            at = at.saturating_add(count);
        }
        Ok(())
    }

    /// REGION_READ of `count` bytes at `offset` of `region`.
    pub fn read(&mut self, region: u32, offset: u64, count: u32) -> Result<Vec<u8>, ClientError> {
        let req = Request::RegionRead(RegionRead {
            offset,
            region,
            count,
        });
        match self.call(&req)? {
            Reply::RegionRead(d) if d.data.len() == count as usize => Ok(d.data),
            other => Err(Self::unexpected(cmd::REGION_READ, &other)),
        }
    }

    /// A 32-bit REGION_READ.
    pub fn read32(&mut self, region: u32, offset: u64) -> Result<u32, ClientError> {
        let d = self.read(region, offset, 4)?;
        Ok(u32::from_le_bytes([d[0], d[1], d[2], d[3]]))
    }

    /// REGION_WRITE of `data` at `offset` of `region`, waiting for the reply.
    pub fn write(&mut self, region: u32, offset: u64, data: &[u8]) -> Result<(), ClientError> {
        let req = Request::RegionWrite(RegionData {
            offset,
            region,
            data: data.to_vec(),
        });
        match self.call(&req)? {
            Reply::RegionWrite(_) => Ok(()),
            other => Err(Self::unexpected(cmd::REGION_WRITE, &other)),
        }
    }

    /// A 32-bit REGION_WRITE, waiting for the reply.
    pub fn write32(&mut self, region: u32, offset: u64, value: u32) -> Result<(), ClientError> {
        self.write(region, offset, &value.to_le_bytes())
    }

    /// A posted 32-bit REGION_WRITE (no reply; a memory-BAR write as QEMU sends it).
    pub fn post_write32(
        &mut self,
        region: u32,
        offset: u64,
        value: u32,
    ) -> Result<(), ClientError> {
        self.post(&Request::RegionWrite(RegionData {
            offset,
            region,
            data: value.to_le_bytes().to_vec(),
        }))
    }

    /// DEVICE_RESET.
    pub fn reset(&mut self) -> Result<(), ClientError> {
        match self.call(&Request::DeviceReset)? {
            Reply::DeviceReset => Ok(()),
            other => Err(Self::unexpected(cmd::DEVICE_RESET, &other)),
        }
    }
}
