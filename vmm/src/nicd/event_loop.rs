//! The event loop: one thread, one epoll set (rust-vmm's event-manager) with the API
//! socket and its clients, every VF's listening socket and client, the uplink, one timerfd
//! and the signal eventfd. Nothing polls: an idle VF costs nothing until its client
//! writes, a frame arrives or a timer it asked for expires. TX runs inside the client's
//! TDT write, RX when the uplink or another VF has frames; the timerfd is re-armed after
//! every event for the earliest interrupt-throttling deadline or held TX frame.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use devices::sync::lock;
use devices::vfio_user::{Outgoing, Socket, SocketError, busy_reply};

use super::adapter::{Adapter, Conn, VfPort};
use super::api::NicdApi;
use crate::api::ApiServer;

/// Messages handled per client per wakeup (epoll is level-triggered: the rest next round,
/// so one busy client cannot hold the loop). Small, because a VF's doorbell waits behind
/// what other clients sent before it: with 64, a receiver's RDT writes waited behind a
/// sender's 64 TDT writes, whose frames then found its ring without descriptors
/// (`vmm-bench nicd`, VF to VF: 128 of 639 frames dropped); with 8 none are.
const MESSAGES_PER_WAKEUP: usize = 8;

/// What a watched descriptor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Timer,
    Signal,
    Uplink,
    Listener(u16),
    Client(u16),
    Busy(u16),
    SyntheticListener,
    Synthetic,
}

/// The subscriber that serves the whole adapter.
#[derive(Debug)]
pub struct Nicd {
    adapter: Arc<Mutex<Adapter>>,
    api: ApiServer<NicdApi>,
    timer: TimerFd,
    signal: EventFd,
    done: Arc<AtomicBool>,
    tokens: HashMap<RawFd, Token>,
    /// Clients watched for writability (they owe replies a read), not input.
    writing: HashSet<RawFd>,
    /// The uplink is watched for writability too (frames wait in its backlog).
    uplink_out: bool,
}

/// Sends what `c` is owed, oldest first, without waiting: true when nothing is left.
fn pay(c: &mut Conn) -> Result<bool, SocketError> {
    while let Some(out) = c.owed.front_mut() {
        if !c.sock.send_nonblocking(out)? {
            return Ok(false);
        }
        c.owed.pop_front();
    }
    Ok(true)
}

fn port_fds(port: &VfPort) -> Vec<RawFd> {
    let mut fds = vec![port.listener.as_raw_fd()];
    fds.extend(port.conn.iter().map(|c| c.sock.as_raw_fd()));
    fds.extend(port.busy.iter().map(|c| c.sock.as_raw_fd()));
    fds
}

impl Nicd {
    /// The subscriber; `signal` is written on SIGTERM/SIGINT, which sets `done`.
    pub fn new(
        adapter: Arc<Mutex<Adapter>>,
        api: ApiServer<NicdApi>,
        signal: EventFd,
        done: Arc<AtomicBool>,
    ) -> std::io::Result<Self> {
        let timer = TimerFd::new().map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
        // Non-blocking, so a read after a re-arm that cleared the expiry cannot block.
        // SAFETY: F_SETFL on our own timerfd with a valid flag set.
        let rc = unsafe { libc::fcntl(timer.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self {
            adapter,
            api,
            timer,
            signal,
            done,
            tokens: HashMap::new(),
            writing: HashSet::new(),
            uplink_out: false,
        })
    }

    fn watch(&mut self, ops: &mut EventOps, fd: RawFd, token: Token) {
        match ops.add(Events::new_raw(fd, EventSet::IN)) {
            Ok(()) => {
                self.tokens.insert(fd, token);
            }
            Err(e) => devices::error_ratelimited!("nicd: cannot watch {token:?}: {e:?}"),
        }
    }

    fn unwatch(&mut self, ops: &mut EventOps, fd: RawFd) {
        self.writing.remove(&fd);
        if self.tokens.remove(&fd).is_some() {
            let _ = ops.remove(Events::empty_raw(fd));
        }
    }

    /// Watches a client for input, or, while it owes replies a read, for writability.
    fn want_write(&mut self, ops: &mut EventOps, fd: RawFd, write: bool) {
        if write == self.writing.contains(&fd) || !self.tokens.contains_key(&fd) {
            return;
        }
        let set = if write { EventSet::OUT } else { EventSet::IN };
        match ops.modify(Events::new_raw(fd, set)) {
            Ok(()) if write => {
                self.writing.insert(fd);
            }
            Ok(()) => {
                self.writing.remove(&fd);
            }
            Err(e) => devices::error_ratelimited!("nicd: cannot re-watch a client: {e:?}"),
        }
    }

    /// Brings the watched set in line with the adapter: ports torn down are unwatched
    /// (before their descriptors close), new listeners and clients watched.
    fn reconcile(&mut self, ops: &mut EventOps) {
        let adapter = self.adapter.clone();
        let mut a = lock(&adapter);
        let retired = std::mem::take(&mut a.retired);
        for port in &retired {
            for fd in port_fds(port) {
                self.unwatch(ops, fd);
            }
        }
        drop(retired);
        let mut want = Vec::new();
        if let Some(s) = &mut a.synthetics {
            let gone = std::mem::take(&mut s.retired);
            for c in &gone {
                self.unwatch(ops, c.sock.as_raw_fd());
            }
            drop(gone);
            want.push((s.listener_fd(), Token::SyntheticListener));
            want.extend(s.conn_fds().into_iter().map(|fd| (fd, Token::Synthetic)));
        }
        if let Some(fd) = lock(a.fabric()).uplink_fd() {
            want.push((fd, Token::Uplink));
        }
        for port in &a.vfs {
            let i = port.index;
            want.push((port.listener.as_raw_fd(), Token::Listener(i)));
            want.extend(
                port.conn
                    .iter()
                    .map(|c| (c.sock.as_raw_fd(), Token::Client(i))),
            );
            want.extend(
                port.busy
                    .iter()
                    .map(|c| (c.sock.as_raw_fd(), Token::Busy(i))),
            );
        }
        drop(a);
        for (fd, token) in want {
            if self.tokens.get(&fd) != Some(&token) {
                self.unwatch(ops, fd);
                self.watch(ops, fd, token);
            }
        }
    }

    /// Sends the frames this event queued for the uplink (and what waited for its socket).
    fn flush_uplink(&mut self, ops: &mut EventOps) {
        let fd = {
            let a = lock(&self.adapter);
            if !a.uplink_backlogged() {
                return;
            }
            lock(a.fabric()).uplink_fd()
        };
        if !lock(&self.adapter).uplink_writable()
            && let Some(fd) = fd
        {
            self.uplink_failed(ops, fd);
        }
    }

    /// The uplink failed: it is forgotten (its carrier goes).
    fn uplink_failed(&mut self, ops: &mut EventOps, fd: RawFd) {
        self.unwatch(ops, fd);
        self.uplink_out = false;
        lock(&self.adapter).uplink_gone();
    }

    /// Watches the uplink for writability exactly while frames wait in its backlog.
    fn watch_uplink_output(&mut self, ops: &mut EventOps) {
        let (fd, want) = {
            let a = lock(&self.adapter);
            let fd = lock(a.fabric()).uplink_fd();
            (fd, a.uplink_backlogged())
        };
        let Some(fd) = fd else { return };
        if want == self.uplink_out || self.tokens.get(&fd) != Some(&Token::Uplink) {
            return;
        }
        let set = if want {
            EventSet::IN | EventSet::OUT
        } else {
            EventSet::IN
        };
        match ops.modify(Events::new_raw(fd, set)) {
            Ok(()) => self.uplink_out = want,
            Err(e) => devices::error_ratelimited!("nicd: cannot re-watch the uplink: {e:?}"),
        }
    }

    fn rearm_timer(&mut self) {
        let next = lock(&self.adapter).next_timer();
        let r = match next {
            // A zero duration would disarm the timer.
            Some(d) => self.timer.reset(d.max(Duration::from_micros(1)), None),
            None => self.timer.clear(),
        };
        if let Err(e) = r {
            devices::warn_ratelimited!("nicd: cannot arm the timer: {e}");
        }
    }

    /// Serves VF `vf`'s client: first what it is owed, then every whole message it sent,
    /// each reply sent back, and what a register write caused (mailbox decisions, frames
    /// to other VFs) carried out. A client that does not read its replies is not served
    /// further until it does: its socket is watched for writability meanwhile, so it
    /// stalls its own VF, never the loop.
    fn client(&mut self, ops: &mut EventOps, vf: u16) {
        let adapter = self.adapter.clone();
        let mut a = lock(&adapter);
        let mut gone = None;
        let mut owing = None;
        for _ in 0..MESSAGES_PER_WAKEUP {
            let Some(VfPort { conn, server, .. }) = a.vfs.get_mut(usize::from(vf)) else {
                return;
            };
            let Some(c) = conn.as_mut() else {
                return;
            };
            let fd = c.sock.as_raw_fd();
            match pay(c) {
                Ok(true) => owing = Some((fd, false)),
                Ok(false) => {
                    owing = Some((fd, true));
                    break;
                }
                Err(e) => {
                    devices::warn_ratelimited!("nicd: VF {vf}: cannot answer the client: {e}");
                    gone = Some(fd);
                    break;
                }
            }
            let limits = server.limits();
            let reply = match c.reader.poll(&c.sock, &limits) {
                Ok(Some(msg)) => server.handle_message(msg),
                Ok(None) => break,
                Err(e) if !e.is_fatal() => server.handle_recv_error(&e),
                Err(e) => {
                    devices::info_ratelimited!("nicd: VF {vf}: client gone: {e}");
                    gone = Some(fd);
                    break;
                }
            };
            if let Some(reply) = reply {
                let enc = reply.encode();
                match Outgoing::new(enc.bytes, &enc.fds) {
                    Ok(out) => c.owed.push_back(out),
                    Err(e) => {
                        devices::warn_ratelimited!("nicd: VF {vf}: cannot queue a reply: {e}");
                        gone = Some(fd);
                        break;
                    }
                }
                // Sent at the top of the next round (or when the socket is writable).
            }
            a.apply_pf_events(vf);
            a.flush_outbox();
        }
        // Replies of the last round.
        if gone.is_none()
            && let Some(c) = a.vfs.get_mut(usize::from(vf)).and_then(|p| p.conn.as_mut())
        {
            let fd = c.sock.as_raw_fd();
            match pay(c) {
                Ok(done) => owing = Some((fd, !done)),
                Err(e) => {
                    devices::warn_ratelimited!("nicd: VF {vf}: cannot answer the client: {e}");
                    gone = Some(fd);
                }
            }
        }
        drop(a);
        if let Some(fd) = gone {
            self.unwatch(ops, fd);
            lock(&adapter).client_gone(vf);
        } else if let Some((fd, write)) = owing {
            self.want_write(ops, fd, write);
        }
    }

    /// Answers a second client's first message with EBUSY and closes it.
    fn busy(&mut self, ops: &mut EventOps, vf: u16, fd: RawFd) {
        let adapter = self.adapter.clone();
        let mut a = lock(&adapter);
        let Some(port) = a.vfs.get_mut(usize::from(vf)) else {
            return;
        };
        let Some(i) = port.busy.iter().position(|c| c.sock.as_raw_fd() == fd) else {
            return;
        };
        let limits = port.server.limits();
        let c = &mut port.busy[i];
        let done = match c.reader.poll(&c.sock, &limits) {
            Ok(None) => false,
            Ok(Some(msg)) => {
                if let Some(reply) = busy_reply(&msg.header) {
                    let enc = reply.encode();
                    let _ = c.sock.send_message(&enc.bytes, &enc.fds);
                }
                true
            }
            Err(_) => true,
        };
        if done {
            let conn = port.busy.remove(i);
            drop(a);
            self.unwatch(ops, fd);
            drop::<Socket>(conn.sock);
        }
    }
}

impl MutEventSubscriber for Nicd {
    fn init(&mut self, ops: &mut EventOps) {
        self.api.init(ops);
        let (timer, signal) = (self.timer.as_raw_fd(), self.signal.as_raw_fd());
        self.watch(ops, timer, Token::Timer);
        self.watch(ops, signal, Token::Signal);
        self.reconcile(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        match self.tokens.get(&fd).copied() {
            None => {
                self.api.process(events, ops);
                self.reconcile(ops);
                lock(&self.adapter).flush_outbox();
            }
            Some(Token::Timer) => {
                let _ = self.timer.wait();
                lock(&self.adapter).on_timer();
            }
            Some(Token::Signal) => {
                let _ = self.signal.read();
                self.done.store(true, Ordering::SeqCst);
            }
            Some(Token::Uplink) => {
                let set = events.event_set();
                if set.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR)
                    && !lock(&self.adapter).uplink_rx()
                {
                    self.uplink_failed(ops, fd);
                }
                // Writability: the backlog goes out below.
            }
            Some(Token::Listener(vf)) => {
                lock(&self.adapter).accept(vf);
                self.reconcile(ops);
            }
            Some(Token::Client(vf)) => self.client(ops, vf),
            Some(Token::SyntheticListener) => {
                lock(&self.adapter).synthetic_accept();
                self.reconcile(ops);
            }
            Some(Token::Synthetic) => {
                let closed = lock(&self.adapter).synthetic_serve(fd);
                if closed {
                    self.reconcile(ops);
                }
            }
            Some(Token::Busy(vf)) => self.busy(ops, vf, fd),
        }
        self.flush_uplink(ops);
        self.watch_uplink_output(ops);
        self.rearm_timer();
    }
}
