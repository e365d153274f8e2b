//! A unix stream socket that carries whole vfio-user messages with their fds
//! (SCM_RIGHTS). Receiving is bounded: a message larger than the limit fails the
//! connection before anything is allocated for it, and fds beyond the limit are closed by
//! the kernel (MSG_CTRUNC) and the message refused; fds that did arrive become `OwnedFd`
//! at once, so none leaks on any path.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::codec::Message;
use super::header::{HEADER_SIZE, Header};

/// Most fds the kernel passes in one message (SCM_MAX_FD).
pub const SCM_MAX_FD: usize = 253;

/// What one received message may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest message, header included.
    pub max_msg_size: u32,
    /// Most fds with one message (at most [`SCM_MAX_FD`]).
    pub max_fds: usize,
}

impl Limits {
    /// Limits for a peer that moves at most `max_data_xfer_size` bytes per REGION_READ or
    /// REGION_WRITE and passes at most `max_fds` fds: the largest legitimate message is a
    /// region access with its data; 4 KiB more leaves room for VERSION's JSON and region
    /// info with many sparse areas.
    pub fn new(max_data_xfer_size: u32, max_fds: usize) -> Self {
        let size = (HEADER_SIZE as u64) + 16 + u64::from(max_data_xfer_size) + 4096;
        Self {
            max_msg_size: u32::try_from(size).unwrap_or(u32::MAX),
            max_fds: max_fds.min(SCM_MAX_FD),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self::new(1 << 20, 16)
    }
}

/// Why receiving or sending failed.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// The peer closed the connection between messages.
    #[error("peer closed the connection")]
    Closed,
    /// The peer closed the connection in the middle of a message.
    #[error("peer closed the connection inside a message ({got} of {want} bytes)")]
    Truncated {
        /// Bytes received of the message.
        got: usize,
        /// Bytes it should have had.
        want: usize,
    },
    /// The header's size is below 16: the stream cannot be followed.
    #[error("message size {size} is smaller than the header")]
    SizeBelowHeader {
        /// The size field.
        size: u32,
    },
    /// The message is larger than the limit; the connection must be dropped.
    #[error("message of {size} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// The size field.
        size: u32,
        /// The limit.
        limit: u32,
    },
    /// The message came with more fds than allowed. It was read whole and its fds closed,
    /// so the stream is still in step: answer it with an error and go on.
    #[error("message came with more than {limit} fds")]
    TooManyFds {
        /// The message's header.
        header: Header,
        /// The limit.
        limit: usize,
    },
    /// Too many fds to send in one message.
    #[error("cannot send {count} fds in one message (at most {SCM_MAX_FD})")]
    TooManyFdsToSend {
        /// Fds asked to send.
        count: usize,
    },
    /// The peer did not take a message within the send timeout.
    #[error("peer did not read for {0:?}")]
    SendTimeout(Duration),
    /// No whole message came within the socket's read timeout (SO_RCVTIMEO).
    #[error("peer sent nothing for {0:?}")]
    RecvTimeout(Duration),
    /// A system call failed.
    #[error("socket I/O failed")]
    Io(#[source] io::Error),
}

impl SocketError {
    /// False only for errors after which the connection is still usable.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, Self::TooManyFds { .. })
    }
}

fn cvt_size(rc: isize) -> io::Result<usize> {
    usize::try_from(rc).map_err(|_| io::Error::last_os_error())
}

/// Room for `n` fds in a control buffer, in u64s so that the buffer is aligned for
/// `cmsghdr`.
fn cmsg_buffer(n: usize) -> Vec<u64> {
    // `n` is at most SCM_MAX_FD, so the byte count fits in u32.
    let bytes = u32::try_from(n * std::mem::size_of::<RawFd>()).unwrap_or(0);
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(bytes) } as usize;
    vec![0u64; space.div_ceil(8)]
}

/// One recvmsg: bytes into `buf`, fds (at most `max_fds`) appended to `fds`. Returns the
/// byte count and whether fds were cut off (MSG_CTRUNC).
fn recv_some(
    fd: RawFd,
    buf: &mut [u8],
    max_fds: usize,
    fds: &mut Vec<OwnedFd>,
) -> io::Result<(usize, bool)> {
    let mut control = cmsg_buffer(max_fds.max(1));
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; all zeroes is valid.
    let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
    mh.msg_iov = &raw mut iov;
    mh.msg_iovlen = 1;
    if max_fds > 0 {
        mh.msg_control = control.as_mut_ptr().cast();
        mh.msg_controllen = std::mem::size_of_val(control.as_slice()) as _;
    }
    let n = loop {
        // SAFETY: `mh` points at `iov` (valid for writes of buf.len() bytes) and at
        // `control` (valid for writes of msg_controllen bytes), both alive for the call.
        let rc = unsafe { libc::recvmsg(fd, &raw mut mh, libc::MSG_CMSG_CLOEXEC) };
        match cvt_size(rc) {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    };
    let truncated = mh.msg_flags & libc::MSG_CTRUNC != 0;
    if max_fds == 0 {
        return Ok((n, truncated));
    }
    // SAFETY: `mh` was filled by recvmsg; CMSG_FIRSTHDR reads only its control fields.
    let mut c = unsafe { libc::CMSG_FIRSTHDR(&raw const mh) };
    while !c.is_null() {
        // SAFETY: `c` is non-null and points inside `control`, as CMSG_FIRSTHDR and
        // CMSG_NXTHDR guarantee for a buffer the kernel filled.
        let hdr = unsafe { &*c };
        if hdr.cmsg_level == libc::SOL_SOCKET && hdr.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN only computes a size.
            let base = unsafe { libc::CMSG_LEN(0) } as usize;
            let count = (hdr.cmsg_len as usize).saturating_sub(base) / std::mem::size_of::<RawFd>();
            // SAFETY: CMSG_DATA points at the `count` ints after this header, inside
            // `control`.
            let data = unsafe { libc::CMSG_DATA(c) }.cast::<RawFd>();
            for i in 0..count {
                // SAFETY: `i < count`, so the read stays in this cmsg's data; the data may
                // be unaligned for i32, hence read_unaligned.
                let raw = unsafe { data.wrapping_add(i).read_unaligned() };
                // SAFETY: the kernel just installed `raw` in our table for us; nothing
                // else owns it.
                fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
            }
        }
        // SAFETY: `mh` and `c` are as above.
        c = unsafe { libc::CMSG_NXTHDR(&raw const mh, c) };
    }
    Ok((n, truncated))
}

/// The receive side of a connection as a state machine: it keeps a partly received
/// message across calls, so it works on a non-blocking socket driven by an event loop
/// (call [`MessageReader::poll`] when the socket is readable) as well as on a blocking one.
#[derive(Debug, Default)]
pub struct MessageReader {
    head: [u8; HEADER_SIZE],
    head_len: usize,
    header: Option<Header>,
    payload: Vec<u8>,
    filled: usize,
    fds: Vec<OwnedFd>,
    fd_overflow: bool,
}

impl MessageReader {
    /// A reader at a message boundary.
    pub fn new() -> Self {
        Self::default()
    }

    /// True when no part of a message is pending.
    pub fn is_idle(&self) -> bool {
        self.head_len == 0
    }

    fn take(&mut self) -> (Header, Vec<u8>, Vec<OwnedFd>, bool) {
        let header = self.header.take().unwrap_or_default();
        let payload = std::mem::take(&mut self.payload);
        let fds = std::mem::take(&mut self.fds);
        let overflow = self.fd_overflow;
        *self = Self::default();
        (header, payload, fds, overflow)
    }

    /// Reads what is available. `Ok(Some(msg))` for a complete message, `Ok(None)` when the
    /// socket would block before one is complete (non-blocking sockets only).
    pub fn poll(&mut self, sock: &Socket, limits: &Limits) -> Result<Option<Message>, SocketError> {
        let fd = sock.as_raw_fd();
        loop {
            let room = limits.max_fds.saturating_sub(self.fds.len());
            let step = if self.header.is_none() {
                recv_some(fd, &mut self.head[self.head_len..], room, &mut self.fds)
            } else {
                recv_some(fd, &mut self.payload[self.filled..], room, &mut self.fds)
            };
            let (n, ctrunc) = match step {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => {
                    *self = Self::default();
                    return Err(SocketError::Io(e));
                }
            };
            self.fd_overflow |= ctrunc || self.fds.len() > limits.max_fds;
            if n == 0 {
                let (got, want) = match self.header {
                    None if self.head_len == 0 => {
                        *self = Self::default();
                        return Err(SocketError::Closed);
                    }
                    None => (self.head_len, HEADER_SIZE),
                    Some(h) => (HEADER_SIZE + self.filled, h.size as usize),
                };
                *self = Self::default();
                return Err(SocketError::Truncated { got, want });
            }
            match self.header {
                None => {
                    self.head_len += n;
                    if self.head_len < HEADER_SIZE {
                        continue;
                    }
                    let h = match Header::decode(&self.head) {
                        Ok(h) => h,
                        Err(_) => {
                            let size = u32::from_le_bytes([
                                self.head[4],
                                self.head[5],
                                self.head[6],
                                self.head[7],
                            ]);
                            *self = Self::default();
                            return Err(SocketError::SizeBelowHeader { size });
                        }
                    };
                    if h.size > limits.max_msg_size {
                        *self = Self::default();
                        return Err(SocketError::TooLarge {
                            size: h.size,
                            limit: limits.max_msg_size,
                        });
                    }
                    // Bounded by the limit just checked.
                    self.payload = vec![0u8; h.payload_len()];
                    self.filled = 0;
                    self.header = Some(h);
                }
                Some(_) => self.filled += n,
            }
            if self.header.is_some() && self.filled == self.payload.len() {
                let (header, payload, fds, overflow) = self.take();
                if overflow {
                    drop(fds);
                    return Err(SocketError::TooManyFds {
                        header,
                        limit: limits.max_fds,
                    });
                }
                return Ok(Some(Message {
                    header,
                    payload,
                    fds,
                }));
            }
        }
    }
}

/// A connected vfio-user stream socket.
#[derive(Debug)]
pub struct Socket {
    stream: UnixStream,
    send_timeout: Duration,
}

impl Socket {
    /// Wraps a connected unix stream socket (from `UnixListener::accept` or
    /// `UnixStream::connect`).
    pub fn new(stream: UnixStream) -> Self {
        Self {
            stream,
            send_timeout: Duration::from_secs(5),
        }
    }

    /// A connected pair, for tests and in-process clients.
    pub fn pair() -> io::Result<(Self, Self)> {
        let (a, b) = UnixStream::pair()?;
        Ok((Self::new(a), Self::new(b)))
    }

    /// The underlying stream (to set non-blocking mode or register it with an event loop).
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// How long a send waits for a peer that does not read (default 5 s, QEMU's reply
    /// timeout); after that the connection is to be dropped.
    pub fn set_send_timeout(&mut self, t: Duration) {
        self.send_timeout = t;
    }

    /// Receives one whole message, blocking until it is complete, or failing with
    /// [`SocketError::RecvTimeout`] when the stream's read timeout passes without input
    /// (on a non-blocking socket in an event loop, use a [`MessageReader`] instead).
    pub fn recv_message(&self, limits: &Limits) -> Result<Message, SocketError> {
        let timeout = self.stream.read_timeout().map_err(SocketError::Io)?;
        // The whole message within the timeout: a blocking read already waited for it.
        let deadline = timeout.map(|t| std::time::Instant::now() + t);
        let mut reader = MessageReader::new();
        loop {
            if let Some(m) = reader.poll(self, limits)? {
                return Ok(m);
            }
            // No input yet (non-blocking, or SO_RCVTIMEO passed): wait rather than spin.
            let left = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        return Err(SocketError::RecvTimeout(timeout.unwrap_or_default()));
                    }
                    Some(left)
                }
                None => None,
            };
            if !self.wait(libc::POLLIN, left)? {
                return Err(SocketError::RecvTimeout(timeout.unwrap_or_default()));
            }
        }
    }

    /// Waits until the socket is ready for `events`; false on timeout.
    fn wait(&self, events: libc::c_short, timeout: Option<Duration>) -> Result<bool, SocketError> {
        let mut p = libc::pollfd {
            fd: self.as_raw_fd(),
            events,
            revents: 0,
        };
        let ms = timeout.map_or(-1, |t| i32::try_from(t.as_millis()).unwrap_or(i32::MAX));
        loop {
            // SAFETY: one valid pollfd, for the duration of the call.
            let rc = unsafe { libc::poll(&raw mut p, 1, ms) };
            if rc >= 0 {
                return Ok(rc > 0);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(SocketError::Io(e));
            }
        }
    }

    /// Sends one whole message with its fds (passed with the first bytes), waiting at most
    /// the send timeout for a peer that does not read.
    pub fn send_message(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), SocketError> {
        if fds.len() > SCM_MAX_FD {
            return Err(SocketError::TooManyFdsToSend { count: fds.len() });
        }
        let mut sent = 0;
        let mut fds_pending = !fds.is_empty();
        while sent < bytes.len() {
            let n = match self.send_some(&bytes[sent..], if fds_pending { fds } else { &[] }) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !self.wait(libc::POLLOUT, Some(self.send_timeout))? {
                        return Err(SocketError::SendTimeout(self.send_timeout));
                    }
                    continue;
                }
                Err(e) => return Err(SocketError::Io(e)),
            };
            fds_pending = false;
            sent += n;
        }
        Ok(())
    }

    fn send_some(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
        self.send_some_flags(bytes, fds, 0)
    }

    fn send_some_flags(
        &self,
        bytes: &[u8],
        fds: &[BorrowedFd<'_>],
        flags: libc::c_int,
    ) -> io::Result<usize> {
        let mut control = cmsg_buffer(fds.len());
        let mut iov = libc::iovec {
            iov_base: bytes.as_ptr().cast_mut().cast(),
            iov_len: bytes.len(),
        };
        // SAFETY: msghdr is plain data; all zeroes is valid.
        let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
        mh.msg_iov = &raw mut iov;
        mh.msg_iovlen = 1;
        if !fds.is_empty() {
            mh.msg_control = control.as_mut_ptr().cast();
            mh.msg_controllen = std::mem::size_of_val(control.as_slice()) as _;
            // SAFETY: the control buffer has room for one cmsghdr (cmsg_buffer sized it
            // with CMSG_SPACE), so the first header is non-null and inside it.
            let c = unsafe { libc::CMSG_FIRSTHDR(&raw const mh) };
            // SAFETY: `c` points at the aligned cmsghdr at the start of `control`.
            let hdr = unsafe { &mut *c };
            hdr.cmsg_level = libc::SOL_SOCKET;
            hdr.cmsg_type = libc::SCM_RIGHTS;
            // fds.len() <= SCM_MAX_FD, so the byte count fits in u32.
            let bytes = u32::try_from(fds.len() * std::mem::size_of::<RawFd>()).unwrap_or(0);
            // SAFETY: CMSG_LEN only computes a size.
            hdr.cmsg_len = unsafe { libc::CMSG_LEN(bytes) } as _;
            // SAFETY: the data of the header `c` lies inside `control`.
            let data = unsafe { libc::CMSG_DATA(c) }.cast::<RawFd>();
            for (i, f) in fds.iter().enumerate() {
                // SAFETY: `i < fds.len()`, within the room CMSG_SPACE reserved; the data
                // need not be aligned for i32, hence write_unaligned.
                unsafe { data.wrapping_add(i).write_unaligned(f.as_raw_fd()) };
            }
        }
        // SAFETY: `mh` points at `iov` (valid for reads of bytes.len()) and `control`,
        // both alive for the call; the fds are borrowed, so open, for its duration.
        let rc =
            unsafe { libc::sendmsg(self.as_raw_fd(), &raw const mh, libc::MSG_NOSIGNAL | flags) };
        cvt_size(rc)
    }
}

/// A message sent without blocking: its bytes, how many went, and its fds (owned, so the
/// message may wait for a slow reader; they go with the first bytes).
#[derive(Debug)]
pub struct Outgoing {
    bytes: Vec<u8>,
    sent: usize,
    fds: Vec<OwnedFd>,
}

impl Outgoing {
    /// `bytes` with `fds` (duplicated, so the caller's stay its own).
    pub fn new(bytes: Vec<u8>, fds: &[BorrowedFd<'_>]) -> io::Result<Self> {
        Ok(Self {
            bytes,
            sent: 0,
            fds: fds
                .iter()
                .map(|f| f.try_clone_to_owned())
                .collect::<io::Result<_>>()?,
        })
    }

    /// Bytes not sent yet.
    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.sent
    }
}

impl Socket {
    /// Sends what the socket takes of `out` now, never waiting; true once all of it went.
    /// For a reader that may stall: keep the rest and call again when the socket is
    /// writable.
    pub fn send_nonblocking(&self, out: &mut Outgoing) -> Result<bool, SocketError> {
        if out.fds.len() > SCM_MAX_FD {
            return Err(SocketError::TooManyFdsToSend {
                count: out.fds.len(),
            });
        }
        while out.sent < out.bytes.len() {
            let fds: Vec<BorrowedFd<'_>> = out.fds.iter().map(AsFd::as_fd).collect();
            match self.send_some_flags(&out.bytes[out.sent..], &fds, libc::MSG_DONTWAIT) {
                Ok(n) => {
                    out.sent += n;
                    out.fds.clear();
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(SocketError::Io(e)),
            }
        }
        Ok(true)
    }
}

impl AsRawFd for Socket {
    fn as_raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }
}

impl AsFd for Socket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

impl From<UnixStream> for Socket {
    fn from(s: UnixStream) -> Self {
        Self::new(s)
    }
}
