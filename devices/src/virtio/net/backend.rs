//! Where a virtio-net device's frames go: a unix seqpacket socket (one frame per message;
//! the synthetic path to nicd, and tests) or a TAP device.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use crate::seqpacket::SeqpacketSocket;
use std::path::Path;

/// A packet backend. Both calls are non-blocking.
pub trait NetBackend: Send + Sync + std::fmt::Debug {
    /// Sends one frame.
    fn send(&self, frame: &[u8]) -> io::Result<()>;
    /// Sends `frames` in order, as many as the backend takes without blocking; returns
    /// how many went (`WouldBlock` only if none did). One system call where the backend
    /// has one for it.
    fn send_batch(&self, frames: &[&[u8]]) -> io::Result<usize> {
        for (i, f) in frames.iter().enumerate() {
            match self.send(f) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && i > 0 => return Ok(i),
                Err(e) => return Err(e),
            }
        }
        Ok(frames.len())
    }
    /// Receives one frame into `buf`; `WouldBlock` when none is waiting.
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// The descriptor to poll for readability.
    fn fd(&self) -> RawFd;
    /// Whether every frame to and from the backend starts with a `virtio_net_hdr_v1`
    /// ([`super::NET_HDR_LEN`] bytes), so checksum offload passes through.
    fn has_vnet_hdr(&self) -> bool {
        false
    }
    /// A descriptor that becomes readable when the backend's connection was replaced (a
    /// reconnect, on the same [`NetBackend::fd`]): the worker then registers the
    /// descriptor afresh and tries again what the broken connection stopped. None for a
    /// backend that never reconnects.
    fn wake_fd(&self) -> Option<RawFd> {
        None
    }
    /// Takes note of a wake-up (drains [`NetBackend::wake_fd`]).
    fn ack_wake(&self) {}
    /// Says whether received frames may carry partial checksums (the driver accepted
    /// VIRTIO_NET_F_GUEST_CSUM); backends without a header ignore it.
    fn set_rx_offloads(&self, _partial_csum: bool) -> io::Result<()> {
        Ok(())
    }
}

/// A connected unix seqpacket socket.
#[derive(Debug)]
pub struct SeqpacketBackend {
    socket: SeqpacketSocket,
}

/// A seqpacket socket listening at `path` (a stale socket file there is replaced): the
/// other end of a `socket=PATH` backend, for nicd, tests and benchmarks.
pub fn seqpacket_listen(path: &Path, backlog: i32) -> io::Result<OwnedFd> {
    SeqpacketSocket::listen(path, backlog).map(OwnedFd::from)
}

/// Accepts one connection on a listening socket (blocking).
pub fn seqpacket_accept(listener: &OwnedFd) -> io::Result<OwnedFd> {
    let listener = listener.try_clone().map(SeqpacketSocket::from)?;
    listener.accept().map(OwnedFd::from)
}

impl SeqpacketBackend {
    /// Connects to the seqpacket socket listening at `path`.
    pub fn connect(path: &Path) -> io::Result<Self> {
        SeqpacketSocket::connect(path, true).map(|socket| Self { socket })
    }

    /// Wraps an already connected seqpacket socket (tests use a socket pair).
    pub fn from_socket(socket: SeqpacketSocket) -> Self {
        Self { socket }
    }
}

impl NetBackend for SeqpacketBackend {
    fn send(&self, frame: &[u8]) -> io::Result<()> {
        if self.socket.send(frame)? != frame.len() {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "short send"));
        }
        Ok(())
    }

    fn send_batch(&self, frames: &[&[u8]]) -> io::Result<usize> {
        self.socket.send_many(frames)
    }

    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.socket.recv(buf)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "peer closed",
            ));
        }
        if n > buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "oversized frame dropped",
            ));
        }
        Ok(n)
    }

    fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

/// A TAP device (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, non-blocking): frames carry the
/// 12-byte virtio-net header, so checksum offload passes between guest and host kernel.
#[derive(Debug)]
pub struct TapBackend {
    file: File,
    name: String,
}

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
/// _IOW('T', 216, int): the length of the virtio-net header on each frame.
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
/// _IOW('T', 208, unsigned int): the offloads the reader handles (TUN_F_*).
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
/// TUN_F_CSUM: the reader takes frames with partial checksums.
const TUN_F_CSUM: libc::c_uint = 0x01;

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl TapBackend {
    /// Opens (creating if needed) the TAP device `name`.
    pub fn open(name: &str) -> io::Result<Self> {
        if name.is_empty() || name.len() >= 16 || name.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "invalid interface name",
            ));
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")?;
        let mut req = IfReq {
            name: [0; 16],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes an ifreq, which IfReq lays out (name, flags,
        // padding to the union's size); the fd is the open tun device.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let hdr_len = libc::c_int::try_from(super::NET_HDR_LEN).map_err(io::Error::other)?;
        // SAFETY: TUNSETVNETHDRSZ reads an int from the pointer, which is valid.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETVNETHDRSZ, &hdr_len) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let tap = Self {
            file,
            name: name.to_string(),
        };
        // Complete checksums until a driver says it takes partial ones.
        tap.set_rx_offloads(false)?;
        Ok(tap)
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

use std::os::unix::fs::OpenOptionsExt;

impl NetBackend for TapBackend {
    fn send(&self, frame: &[u8]) -> io::Result<()> {
        (&self.file).write_all(frame)
    }

    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    fn has_vnet_hdr(&self) -> bool {
        true
    }

    fn set_rx_offloads(&self, partial_csum: bool) -> io::Result<()> {
        let offloads: libc::c_uint = if partial_csum { TUN_F_CSUM } else { 0 };
        // SAFETY: TUNSETOFFLOAD takes its argument by value; the fd is the TAP's.
        if unsafe { libc::ioctl(self.file.as_raw_fd(), TUNSETOFFLOAD, offloads) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}
