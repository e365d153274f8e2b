//! A unix seqpacket peer for a VM's `--net socket=PATH` backend, standing where nicd's
//! host port will be: it listens, accepts the VMM, and echoes or sinks frames.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

/// What the peer does with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerMode {
    /// Send it back.
    Echo,
    /// Count it.
    Sink,
}

/// Frames and bytes the peer has seen.
#[derive(Debug, Default)]
pub struct PeerCounters {
    /// Frames received.
    pub frames: AtomicU64,
    /// Bytes received.
    pub bytes: AtomicU64,
}

/// A listening peer; serves the first connection until it closes.
#[derive(Debug)]
pub struct SeqpacketPeer {
    path: PathBuf,
    /// What it saw.
    pub counters: Arc<PeerCounters>,
    thread: Option<JoinHandle<()>>,
}

fn check(rc: i32, what: &str) -> i32 {
    assert!(rc >= 0, "{what}: {}", std::io::Error::last_os_error());
    rc
}

impl SeqpacketPeer {
    /// Listens at `path` (replacing a stale socket).
    pub fn listen(path: &Path, mode: PeerMode) -> Self {
        let _ = std::fs::remove_file(path);
        // SAFETY: plain socket(2); checked.
        let fd = check(
            unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) },
            "socket",
        );
        // SAFETY: `fd` is fresh and ours.
        let listener = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_un is plain data; zero is valid.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (d, s) in addr.sun_path.iter_mut().zip(path.as_os_str().as_bytes()) {
            *d = *s as libc::c_char;
        }
        let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        // SAFETY: `addr` is a valid sockaddr_un of `len` bytes.
        check(
            unsafe { libc::bind(fd, (&raw const addr).cast(), len) },
            "bind",
        );
        // SAFETY: listen(2) on our socket.
        check(unsafe { libc::listen(fd, 1) }, "listen");
        let counters = Arc::new(PeerCounters::default());
        let c = counters.clone();
        let thread = std::thread::spawn(move || serve(listener, mode, &c));
        Self {
            path: path.to_path_buf(),
            counters,
            thread: Some(thread),
        }
    }

    /// Frames received so far.
    pub fn frames(&self) -> u64 {
        self.counters.frames.load(Ordering::SeqCst)
    }

    /// Bytes received so far.
    pub fn bytes(&self) -> u64 {
        self.counters.bytes.load(Ordering::SeqCst)
    }
}

fn serve(listener: OwnedFd, mode: PeerMode, counters: &PeerCounters) {
    // SAFETY: accept(2) on our listening socket; checked.
    let c = unsafe {
        libc::accept(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    };
    if c < 0 {
        return;
    }
    // SAFETY: `c` is a fresh connected socket.
    let conn = unsafe { OwnedFd::from_raw_fd(c) };
    let mut buf = vec![0u8; 65_536];
    loop {
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe { libc::recv(conn.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n <= 0 {
            return;
        }
        counters.frames.fetch_add(1, Ordering::SeqCst);
        counters.bytes.fetch_add(n as u64, Ordering::SeqCst);
        if mode == PeerMode::Echo {
            // SAFETY: the first `n` bytes of `buf` were just received.
            let sent = unsafe { libc::send(conn.as_raw_fd(), buf.as_ptr().cast(), n as usize, 0) };
            if sent < 0 {
                return;
            }
        }
    }
}

impl Drop for SeqpacketPeer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        // The thread ends when the VMM closes its side; do not wait for a VMM that never
        // connected.
        if let Some(t) = self.thread.take()
            && t.is_finished()
        {
            let _ = t.join();
        }
    }
}

/// A listener that accepts every connection and holds it open without reading: a host
/// port for devices whose traffic does not matter.
pub fn hold_connections(path: &Path) -> JoinHandle<()> {
    let _ = std::fs::remove_file(path);
    // SAFETY: plain socket(2); checked.
    let fd = check(
        unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) },
        "socket",
    );
    // SAFETY: `fd` is fresh and ours.
    let listener = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_un is plain data; zero is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(path.as_os_str().as_bytes()) {
        *d = *s as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_un of `len` bytes.
    check(
        unsafe { libc::bind(fd, (&raw const addr).cast(), len) },
        "bind",
    );
    // SAFETY: listen(2) on our socket.
    check(unsafe { libc::listen(fd, 8) }, "listen");
    std::thread::spawn(move || {
        let mut held = Vec::new();
        loop {
            // SAFETY: accept(2) on our listening socket; the result is checked.
            let c = unsafe {
                libc::accept(
                    listener.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                )
            };
            if c < 0 {
                return;
            }
            // SAFETY: `c` is a fresh connected socket.
            held.push(unsafe { OwnedFd::from_raw_fd(c) });
        }
    })
}
