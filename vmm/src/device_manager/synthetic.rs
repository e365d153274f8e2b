//! The vmm's end of a guest's synthetic port of nicd: the virtio-net backend of the
//! synthetic path, which outlives nicd. When nicd goes away (the connection breaks: a
//! receive sees its end, a send is refused, or the port's own watcher sees the hang-up),
//! the port counts what the guest sends meanwhile as lost and reconnects, with backoff,
//! until nicd is back. The new connection takes the old one's descriptor (`dup3`), so
//! the virtio-net worker keeps its descriptor and only renews its registration, which
//! the port's wake-up descriptor asks it to do (`NetBackend::wake_fd`). A reconnect also
//! writes the descriptor given to [`SyntheticPort::notify_reconnect`]: the VM's failover
//! events, on which `machine::failover::Reattacher` gives the guest a VF again if it had
//! one (docs/failover.md).

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use devices::nic_switch::MacAddr;
use devices::seqpacket::SeqpacketSocket;
use devices::sync::lock;
use devices::virtio::net::NetBackend;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::api::protocol::SyntheticStatus;
use crate::nicd::synthetic::{Hello, HelloReply};

/// How long nicd may take to answer a hello.
const HELLO_TIMEOUT_MS: i32 = 5000;
/// The first wait between reconnect attempts; it doubles up to [`BACKOFF_MAX`].
const BACKOFF_FIRST: Duration = Duration::from_millis(50);
/// The longest wait between reconnect attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How often the watcher looks for a hang-up nobody has noticed (an idle guest neither
/// sends nor receives).
const WATCH_EVERY_MS: i32 = 250;

/// Why a synthetic port could not be connected.
#[derive(Debug, thiserror::Error)]
pub enum SyntheticError {
    /// No connection to nicd's synthetic socket.
    #[error("cannot connect to nicd's synthetic socket")]
    Connect(#[source] io::Error),
    /// The hello could not be sent.
    #[error("cannot send the hello")]
    Hello(#[source] io::Error),
    /// nicd said nothing.
    #[error("nicd did not answer the hello within {HELLO_TIMEOUT_MS} ms")]
    NoAnswer,
    /// nicd's answer could not be read.
    #[error("cannot read nicd's answer")]
    Answer(#[source] io::Error),
    /// nicd's answer is not one.
    #[error("nicd's answer is not a hello reply")]
    BadAnswer(#[source] serde_json::Error),
    /// nicd refused the port.
    #[error("nicd refused the port: {0}")]
    Refused(String),
    /// The wake-up eventfd could not be made.
    #[error("cannot make the port's wake-up eventfd")]
    Wake(#[source] io::Error),
    /// The new connection could not take the old one's descriptor.
    #[error("cannot put the new connection in the old one's descriptor")]
    Dup(#[source] io::Error),
}

/// Connects to nicd's synthetic socket at `path` for a guest with `mac`: the hello, and
/// nicd's answer, which names nicd's API socket. The socket is non-blocking afterwards.
fn hello(path: &Path, mac: [u8; 6]) -> Result<(SeqpacketSocket, Option<PathBuf>), SyntheticError> {
    let sock = SeqpacketSocket::connect(path, false).map_err(SyntheticError::Connect)?;
    let hello = Hello {
        mac: MacAddr(mac).to_string(),
        vlan: 0,
    };
    let msg = serde_json::to_vec(&hello).map_err(|e| SyntheticError::Hello(e.into()))?;
    sock.send(&msg).map_err(SyntheticError::Hello)?;
    let mut p = libc::pollfd {
        fd: sock.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd; the socket outlives the call.
    if unsafe { libc::poll(&raw mut p, 1, HELLO_TIMEOUT_MS) } != 1 {
        return Err(SyntheticError::NoAnswer);
    }
    let mut buf = [0u8; 1024];
    let n = sock.recv(&mut buf).map_err(SyntheticError::Answer)?;
    let reply: HelloReply = serde_json::from_slice(buf.get(..n).unwrap_or_default())
        .map_err(SyntheticError::BadAnswer)?;
    if !reply.ok {
        return Err(SyntheticError::Refused(
            reply.error.unwrap_or_else(|| "no reason given".into()),
        ));
    }
    sock.set_nonblocking(true)
        .map_err(SyntheticError::Connect)?;
    Ok((sock, reply.api))
}

/// What changes seldom: under a lock.
#[derive(Debug)]
struct State {
    disconnects: u64,
    reconnects: u64,
    /// When the port was last connected or lost nicd.
    since: Instant,
    /// Why the connection last broke, or the last failed reconnect.
    last_error: Option<String>,
    /// nicd's API socket, as its last answer named it.
    api: Option<PathBuf>,
    /// Reconnected since [`SyntheticPort::take_reconnected`] last looked.
    reconnected: bool,
    /// Written after a reconnect.
    notify: Option<Arc<EventFd>>,
}

/// A guest's synthetic port: a [`NetBackend`] that reconnects to nicd.
#[derive(Debug)]
pub struct SyntheticPort {
    path: PathBuf,
    mac: [u8; 6],
    /// The connection; a reconnect puts the new one in its descriptor.
    sock: SeqpacketSocket,
    /// Written after a reconnect, for the virtio-net worker.
    wake: EventFd,
    /// Whether the connection is up (the data path reads this, not the lock).
    connected: AtomicBool,
    /// Frames the guest sent that could not go to nicd.
    tx_lost: AtomicU64,
    state: Mutex<State>,
}

impl SyntheticPort {
    /// Connects a synthetic port at nicd's synthetic socket `path` for a guest with
    /// `mac`, and starts its watcher, which reconnects it whenever nicd goes away.
    pub fn connect(path: &Path, mac: [u8; 6]) -> Result<Arc<Self>, SyntheticError> {
        let (sock, api) = hello(path, mac)?;
        let port = Arc::new(Self {
            path: path.to_path_buf(),
            mac,
            sock,
            wake: EventFd::new(EFD_NONBLOCK).map_err(SyntheticError::Wake)?,
            connected: AtomicBool::new(true),
            tx_lost: AtomicU64::new(0),
            state: Mutex::new(State {
                disconnects: 0,
                reconnects: 0,
                since: Instant::now(),
                last_error: None,
                api,
                reconnected: false,
                notify: None,
            }),
        });
        let weak = Arc::downgrade(&port);
        std::thread::Builder::new()
            .name("synthetic-port".into())
            .spawn(move || watch(&weak))
            .map_err(SyntheticError::Wake)?;
        Ok(port)
    }

    /// nicd's API socket, as nicd's last answer to a hello named it.
    pub fn nicd_api(&self) -> Option<PathBuf> {
        lock(&self.state).api.clone()
    }

    /// The guest's MAC.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Writes `fd` after every reconnect.
    pub fn notify_reconnect(&self, fd: Arc<EventFd>) {
        lock(&self.state).notify = Some(fd);
    }

    /// Whether the port reconnected since the last call.
    pub fn take_reconnected(&self) -> bool {
        std::mem::take(&mut lock(&self.state).reconnected)
    }

    /// Whether the connection to nicd is up.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// The port's state and counts, for the API.
    pub fn status(&self) -> SyntheticStatus {
        let st = lock(&self.state);
        SyntheticStatus {
            socket: self.path.clone(),
            mac: MacAddr(self.mac).to_string(),
            connected: self.is_connected(),
            for_ms: u64::try_from(st.since.elapsed().as_millis()).unwrap_or(u64::MAX),
            disconnects: st.disconnects,
            reconnects: st.reconnects,
            tx_lost: self.tx_lost.load(Ordering::Relaxed),
            last_error: st.last_error.clone(),
        }
    }

    /// The connection broke (`why`): counted once, and the watcher reconnects.
    fn broken(&self, why: &str) {
        if !self.connected.swap(false, Ordering::AcqRel) {
            return;
        }
        let mut st = lock(&self.state);
        st.disconnects += 1;
        st.since = Instant::now();
        st.last_error = Some(why.to_string());
        drop(st);
        devices::warn_ratelimited!(
            "synthetic port {}: nicd ({}) went away: {why}; reconnecting",
            MacAddr(self.mac),
            self.path.display()
        );
    }

    /// One attempt to connect again; on success the new connection is in place and the
    /// worker and the API handler are told.
    fn reconnect(&self) -> Result<(), SyntheticError> {
        let (sock, api) = hello(&self.path, self.mac)?;
        // SAFETY: both descriptors are open and ours; dup3 atomically makes the old
        // connection's descriptor refer to the new connection (closing the old one),
        // close-on-exec as before. The new socket's own descriptor is closed below.
        if unsafe { libc::dup3(sock.as_raw_fd(), self.sock.as_raw_fd(), libc::O_CLOEXEC) } < 0 {
            return Err(SyntheticError::Dup(io::Error::last_os_error()));
        }
        drop(sock);
        let notify = {
            let mut st = lock(&self.state);
            st.reconnects += 1;
            st.since = Instant::now();
            st.api = api;
            st.reconnected = true;
            st.notify.clone()
        };
        self.connected.store(true, Ordering::Release);
        devices::info_ratelimited!(
            "synthetic port {}: reconnected to nicd ({})",
            MacAddr(self.mac),
            self.path.display()
        );
        let _ = self.wake.write(1);
        if let Some(n) = notify {
            let _ = n.write(1);
        }
        Ok(())
    }

    /// Whether the connection has hung up (looked at without reading from it).
    fn hung_up(&self) -> bool {
        let mut p = libc::pollfd {
            fd: self.sock.as_raw_fd(),
            events: libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: one valid pollfd; the socket outlives the call.
        let n = unsafe { libc::poll(&raw mut p, 1, WATCH_EVERY_MS) };
        n == 1 && p.revents & (libc::POLLHUP | libc::POLLRDHUP | libc::POLLERR) != 0
    }

    fn count_lost(&self) -> io::Error {
        self.tx_lost.fetch_add(1, Ordering::Relaxed);
        io::Error::new(io::ErrorKind::NotConnected, "nicd is away")
    }
}

/// The watcher: notices a hang-up nobody else has, and reconnects with backoff while
/// nicd is away. Ends when the port is dropped.
fn watch(port: &Weak<SyntheticPort>) {
    loop {
        let Some(p) = port.upgrade() else { return };
        if p.is_connected() {
            if p.hung_up() {
                p.broken("nicd closed the connection");
            }
            continue;
        }
        let mut delay = BACKOFF_FIRST;
        let mut attempts = 0u64;
        drop(p);
        loop {
            let Some(p) = port.upgrade() else { return };
            attempts += 1;
            match p.reconnect() {
                Ok(()) => break,
                Err(e) => {
                    let why = crate::error_chain(&e);
                    if attempts == 1 || attempts.is_power_of_two() {
                        devices::info_ratelimited!(
                            "synthetic port {}: reconnect attempt {attempts}: {why}",
                            MacAddr(p.mac)
                        );
                    }
                    lock(&p.state).last_error = Some(why);
                }
            }
            drop(p);
            std::thread::sleep(delay);
            delay = (delay * 2).min(BACKOFF_MAX);
        }
    }
}

impl NetBackend for SyntheticPort {
    fn send(&self, frame: &[u8]) -> io::Result<()> {
        if !self.is_connected() {
            return Err(self.count_lost());
        }
        match self.sock.send(frame) {
            Ok(n) if n == frame.len() => Ok(()),
            Ok(_) => Err(io::Error::new(io::ErrorKind::WriteZero, "short send")),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(e),
            Err(e) => {
                self.broken(&format!("send: {e}"));
                Err(self.count_lost())
            }
        }
    }

    fn send_batch(&self, frames: &[&[u8]]) -> io::Result<usize> {
        if !self.is_connected() {
            let rest = frames.len().saturating_sub(1) as u64;
            self.tx_lost.fetch_add(rest, Ordering::Relaxed);
            return Err(self.count_lost());
        }
        match self.sock.send_many(frames) {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => {
                self.broken(&format!("send: {e}"));
                let rest = frames.len().saturating_sub(1) as u64;
                self.tx_lost.fetch_add(rest, Ordering::Relaxed);
                Err(self.count_lost())
            }
            r => r,
        }
    }

    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self.sock.recv(buf) {
            Ok(0) => {
                self.broken("nicd closed the connection");
                Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "nicd closed the connection",
                ))
            }
            Ok(n) if n > buf.len() => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "oversized frame dropped",
            )),
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(e),
            Err(e) => {
                self.broken(&format!("receive: {e}"));
                Err(e)
            }
        }
    }

    fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    fn wake_fd(&self) -> Option<RawFd> {
        Some(self.wake.as_raw_fd())
    }

    fn ack_wake(&self) {
        let _ = self.wake.read();
    }
}

#[cfg(test)]
mod tests;
