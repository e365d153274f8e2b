//! A unix seqpacket peer for a VM's `--net socket=PATH` backend, standing where nicd's
//! host port will be: it listens, accepts the VMM, and echoes or sinks frames.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use devices::virtio::net::{seqpacket_accept, seqpacket_listen};

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

impl SeqpacketPeer {
    /// Listens at `path` (replacing a stale socket).
    pub fn listen(path: &Path, mode: PeerMode) -> Self {
        let listener = seqpacket_listen(path, 1).expect("listen on the peer socket");
        let counters = Arc::new(PeerCounters::default());
        let c = counters.clone();
        let thread = std::thread::spawn(move || {
            if let Ok(conn) = seqpacket_accept(&listener) {
                serve(&conn, mode, &c);
            }
        });
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

fn serve(conn: &OwnedFd, mode: PeerMode, counters: &PeerCounters) {
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
    let listener = seqpacket_listen(path, 8).expect("listen on the host socket");
    std::thread::spawn(move || {
        let mut held = Vec::new();
        while let Ok(c) = seqpacket_accept(&listener) {
            held.push(c);
        }
    })
}
