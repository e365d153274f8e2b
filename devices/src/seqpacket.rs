//! Unix `SOCK_SEQPACKET` sockets (one message per frame), the one place their raw calls
//! live: the virtio-net socket backend, nicd's synthetic ports, tests and benchmarks use
//! these safe wrappers.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

/// A unix seqpacket socket: listening, or connected.
#[derive(Debug)]
pub struct SeqpacketSocket(OwnedFd);

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn cvt_size(rc: isize) -> io::Result<usize> {
    usize::try_from(rc).map_err(|_| io::Error::last_os_error())
}

/// The address of the unix socket at `path`.
fn sockaddr(path: &Path) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path empty, too long or with a NUL",
        ));
    }
    addr.sun_family = libc::sa_family_t::try_from(libc::AF_UNIX).map_err(io::Error::other)?;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // The length is at most the size of sockaddr_un (checked above).
    let len = libc::socklen_t::try_from(len).map_err(io::Error::other)?;
    Ok((addr, len))
}

impl SeqpacketSocket {
    fn new(flags: libc::c_int) -> io::Result<Self> {
        // SAFETY: socket(2) with constant arguments; the result is checked.
        let raw = cvt(unsafe {
            libc::socket(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC | flags,
                0,
            )
        })?;
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(raw) }))
    }

    /// Listens at `path`, replacing a stale socket file there.
    pub fn listen(path: &Path, backlog: i32) -> io::Result<Self> {
        let _ = std::fs::remove_file(path);
        let (addr, len) = sockaddr(path)?;
        let s = Self::new(0)?;
        // SAFETY: `addr` is a valid sockaddr_un of `len` bytes; the socket is ours.
        cvt(unsafe { libc::bind(s.0.as_raw_fd(), (&raw const addr).cast(), len) })?;
        // SAFETY: listen(2) on our bound socket.
        cvt(unsafe { libc::listen(s.0.as_raw_fd(), backlog) })?;
        Ok(s)
    }

    /// Accepts one connection (blocking, unless the listener is non-blocking).
    pub fn accept(&self) -> io::Result<Self> {
        // SAFETY: accept4(2) on our socket, without a peer address; the result is checked.
        let c = cvt(unsafe {
            libc::accept4(
                self.0.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        })?;
        // SAFETY: `c` is a fresh connected socket nothing else owns.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(c) }))
    }

    /// Connects to the socket listening at `path`; `nonblocking` for the connected socket.
    pub fn connect(path: &Path, nonblocking: bool) -> io::Result<Self> {
        let (addr, len) = sockaddr(path)?;
        let s = Self::new(if nonblocking { libc::SOCK_NONBLOCK } else { 0 })?;
        // SAFETY: `addr` is a valid sockaddr_un of `len` bytes; the socket is ours.
        cvt(unsafe { libc::connect(s.0.as_raw_fd(), (&raw const addr).cast(), len) })?;
        Ok(s)
    }

    /// A connected pair.
    pub fn pair() -> io::Result<(Self, Self)> {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors socketpair writes.
        cvt(unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        })?;
        // SAFETY: the descriptor is fresh and owned by nothing else.
        let a = unsafe { OwnedFd::from_raw_fd(fds[0]) };
        // SAFETY: likewise.
        let b = unsafe { OwnedFd::from_raw_fd(fds[1]) };
        Ok((Self(a), Self(b)))
    }

    /// Switches non-blocking mode.
    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        // SAFETY: F_GETFL/F_SETFL on our descriptor; no memory is passed.
        let flags = cvt(unsafe { libc::fcntl(self.0.as_raw_fd(), libc::F_GETFL) })?;
        let flags = if on {
            flags | libc::O_NONBLOCK
        } else {
            flags & !libc::O_NONBLOCK
        };
        // SAFETY: as above.
        cvt(unsafe { libc::fcntl(self.0.as_raw_fd(), libc::F_SETFL, flags) })?;
        Ok(())
    }

    /// Sends one message without blocking; returns the bytes sent.
    pub fn send(&self, msg: &[u8]) -> io::Result<usize> {
        // SAFETY: `msg` is valid for reads of its length; the socket is ours.
        cvt_size(unsafe {
            libc::send(
                self.0.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        })
    }

    /// Sends `msgs` as one message each, in order, in one system call (sendmmsg) without
    /// blocking; returns how many went (fewer when the socket filled up: `WouldBlock`
    /// only if none did).
    pub fn send_many(&self, msgs: &[&[u8]]) -> io::Result<usize> {
        if msgs.is_empty() {
            return Ok(0);
        }
        let mut iovs: Vec<libc::iovec> = msgs
            .iter()
            .map(|m| libc::iovec {
                iov_base: m.as_ptr().cast_mut().cast(),
                iov_len: m.len(),
            })
            .collect();
        let mut hdrs: Vec<libc::mmsghdr> = iovs
            .iter_mut()
            .map(|iov| {
                // SAFETY: an all-zero msghdr is valid (no name, no control data).
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_iov = std::ptr::from_mut(iov);
                h.msg_hdr.msg_iovlen = 1;
                h
            })
            .collect();
        let n = u32::try_from(hdrs.len()).unwrap_or(u32::MAX);
        // SAFETY: every header points at one iovec describing a live slice of `msgs`
        // (only read by the kernel); `hdrs` and `iovs` outlive the call.
        let sent = unsafe {
            libc::sendmmsg(
                self.0.as_raw_fd(),
                hdrs.as_mut_ptr(),
                n,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        cvt(sent).map(|s| usize::try_from(s).unwrap_or(0))
    }

    /// Receives one message into `buf` without blocking; returns its full length, which
    /// exceeds `buf.len()` when it was truncated (MSG_TRUNC). 0 means the peer closed.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of its length; the socket is ours.
        cvt_size(unsafe {
            libc::recv(
                self.0.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
            )
        })
    }
}

impl AsRawFd for SeqpacketSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl AsFd for SeqpacketSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl From<SeqpacketSocket> for OwnedFd {
    fn from(s: SeqpacketSocket) -> Self {
        s.0
    }
}

impl From<OwnedFd> for SeqpacketSocket {
    /// Takes a descriptor the caller knows is a unix seqpacket socket.
    fn from(fd: OwnedFd) -> Self {
        Self(fd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_messages_in_one_call_until_the_socket_is_full() {
        let (a, b) = SeqpacketSocket::pair().unwrap();
        assert_eq!(a.send_many(&[]).unwrap(), 0);
        let frames: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 10 + usize::from(i)]).collect();
        let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        assert_eq!(a.send_many(&refs).unwrap(), 3);
        let mut buf = [0u8; 64];
        for f in &frames {
            let n = b.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], f.as_slice(), "one message each, in order");
        }
        // Fill the socket: a call sends what fits, then one sends none.
        let big = vec![0u8; 60_000];
        let burst: Vec<&[u8]> = std::iter::repeat_n(big.as_slice(), 64).collect();
        let mut sent = 0;
        let e = loop {
            match a.send_many(&burst) {
                Ok(n) => {
                    assert!(n > 0 && n <= burst.len());
                    sent += n;
                }
                Err(e) => break e,
            }
        };
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        let mut got = 0;
        let mut rx = vec![0u8; 65_536];
        while b.recv(&mut rx).is_ok() {
            got += 1;
        }
        assert_eq!(got, sent, "every message sent arrived");
    }

    #[test]
    fn messages_keep_their_boundaries_and_truncation_is_seen() {
        let (a, b) = SeqpacketSocket::pair().unwrap();
        assert_eq!(a.send(b"one").unwrap(), 3);
        assert_eq!(a.send(&[7u8; 100]).unwrap(), 100);
        let mut buf = [0u8; 64];
        assert_eq!(b.recv(&mut buf).unwrap(), 3);
        assert_eq!(&buf[..3], b"one");
        assert_eq!(b.recv(&mut buf).unwrap(), 100, "full length reported");
        let e = b.recv(&mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        drop(a);
        assert_eq!(b.recv(&mut buf).unwrap(), 0, "peer closed");
    }

    #[test]
    fn listen_connect_accept() {
        let path = std::env::temp_dir().join(format!("seqpacket-test-{}.sock", std::process::id()));
        let l = SeqpacketSocket::listen(&path, 1).unwrap();
        let c = SeqpacketSocket::connect(&path, true).unwrap();
        let s = l.accept().unwrap();
        c.send(b"hi").unwrap();
        let mut buf = [0u8; 8];
        s.set_nonblocking(true).unwrap();
        assert_eq!(s.recv(&mut buf).unwrap(), 2);
        std::fs::remove_file(&path).unwrap();
        assert!(SeqpacketSocket::connect(&path, false).is_err());
        assert!(SeqpacketSocket::connect(Path::new(""), false).is_err());
        let long = "x".repeat(200);
        assert!(SeqpacketSocket::listen(Path::new(&long), 1).is_err());
    }
}
