//! The adapter: the PF card, the switch (in the [`Fabric`]) and one [`VfPort`] per enabled
//! VF (its vfio-user socket, its client, its device). Everything here runs on the event
//! loop's thread; the methods are what the loop and the API call.
//!
//! The VF driver's mailbox requests are decided by the VF model's PF-side agent under a
//! [`PfPolicy`] kept in step with the switch's per-VF policy ([`Adapter::sync_policy`]),
//! and what it granted is applied to the switch right after the register write that made
//! it ([`Adapter::apply_pf_events`]). The VF's VPort exists while its driver has done the
//! mailbox RESET handshake, so its MAC filters are on the VPort exactly then.

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use devices::nic_switch::{
    DropReason, LinkState, MacAddr, NicSwitchError, Switch, VPortId, VfRequest, XcastMode,
};
use devices::sriov::igbvf::{Clock, MonotonicClock, PfEvent, PfPolicy, RxDrop, RxOutcome};
use devices::sriov::pf::{NumVfsError, SriovPf};
use devices::sync::lock;
use devices::vfio_user::{MessageReader, Outgoing, Server, Socket};

use super::fabric::Fabric;
use super::synthetic::SyntheticPorts;
use super::vf::{CtlQueue, VfDevice};

/// Clients waiting to be told their VF is busy, per VF; more are closed at once.
pub const MAX_BUSY_CLIENTS: usize = 4;

/// A refusal for the API: an errno and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The errno an iproute2 or sysfs user would see.
    pub errno: i32,
    /// The details.
    pub detail: String,
}

impl Refusal {
    /// A refusal with `errno`.
    pub fn new(errno: i32, detail: impl Into<String>) -> Self {
        Self {
            errno,
            detail: detail.into(),
        }
    }
}

impl std::fmt::Display for Refusal {
    /// The errno's message, then the details: `Numerical result out of range (9 VFs
    /// requested but the PF has only 8)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let os = std::io::Error::from_raw_os_error(self.errno).to_string();
        let msg = os.split(" (os error").next().unwrap_or(&os);
        write!(f, "{msg} ({})", self.detail)
    }
}

impl From<NicSwitchError> for Refusal {
    fn from(e: NicSwitchError) -> Self {
        Self::new(e.errno(), crate::error_chain(&e))
    }
}

impl From<NumVfsError> for Refusal {
    fn from(e: NumVfsError) -> Self {
        Self::new(e.errno(), e.to_string())
    }
}

/// A connected vfio-user client.
#[derive(Debug)]
pub struct Conn {
    /// The socket (non-blocking).
    pub sock: Socket,
    /// Its partly received message.
    pub reader: MessageReader,
    /// Replies the client has not taken yet (it stopped reading): sent when its socket is
    /// writable; meanwhile nothing more of it is served.
    pub owed: std::collections::VecDeque<Outgoing>,
}

impl Conn {
    fn new(stream: std::os::unix::net::UnixStream) -> std::io::Result<Self> {
        stream.set_nonblocking(true)?;
        Ok(Self {
            sock: Socket::new(stream),
            reader: MessageReader::new(),
            owed: std::collections::VecDeque::new(),
        })
    }
}

/// One VF's socket, client and device.
#[derive(Debug)]
pub struct VfPort {
    /// The VF's index.
    pub index: u16,
    /// Where it listens.
    pub path: PathBuf,
    /// The listening socket (non-blocking).
    pub listener: UnixListener,
    /// The client, one at a time.
    pub conn: Option<Conn>,
    /// Second clients waiting for their EBUSY answer.
    pub busy: Vec<Conn>,
    /// The protocol state around the VF device.
    pub server: Server<VfDevice>,
    /// The socket file's inode, so that only this port's file is removed at the end.
    ino: Option<u64>,
}

impl VfPort {
    /// The VF device.
    pub fn device(&mut self) -> &mut VfDevice {
        self.server.device_mut()
    }
}

impl Drop for VfPort {
    fn drop(&mut self) {
        use std::os::unix::fs::MetadataExt;
        // A later port may have bound the same path already: leave its file alone.
        if std::fs::symlink_metadata(&self.path).map(|m| m.ino()).ok() == self.ino {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// VF `k`'s default admin MAC: 52:54:00:5a:00:<k+1>.
pub fn default_mac(k: u16) -> MacAddr {
    let [_, lo] = (k + 1).to_be_bytes();
    MacAddr([0x52, 0x54, 0x00, 0x5a, 0x00, lo])
}

/// Binds `path`, replacing a stale socket file.
fn listen(path: &Path) -> std::io::Result<UnixListener> {
    if std::fs::symlink_metadata(path).is_ok() {
        std::fs::remove_file(path)?;
    }
    let l = UnixListener::bind(path)?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// The adapter.
#[derive(Debug)]
pub struct Adapter {
    fabric: Arc<Mutex<Fabric>>,
    pf: Arc<Mutex<SriovPf>>,
    ctl: CtlQueue,
    socket_dir: PathBuf,
    /// VF k at index k.
    pub vfs: Vec<VfPort>,
    /// Ports torn down whose descriptors the event loop must unregister before they close.
    pub retired: Vec<VfPort>,
    /// The guests' synthetic ports (none until [`Adapter::listen_synthetic`]).
    pub synthetics: Option<SyntheticPorts>,
    /// VFs handed out by [`Adapter::claim_vf`] whose client has not connected yet.
    claimed: std::collections::HashSet<u16>,
}

impl Adapter {
    /// An adapter with no VFs enabled.
    pub fn new(
        fabric: Arc<Mutex<Fabric>>,
        pf: Arc<Mutex<SriovPf>>,
        ctl: CtlQueue,
        socket_dir: PathBuf,
    ) -> Self {
        Self {
            fabric,
            pf,
            ctl,
            socket_dir,
            vfs: Vec::new(),
            retired: Vec::new(),
            synthetics: None,
            claimed: std::collections::HashSet::new(),
        }
    }

    /// Failover, attach: a free VF (no client, not claimed, no VPort) for the guest of
    /// `mac`, its admin MAC set to `mac` (igbvf takes it as its permanent address, which
    /// net_failover pairs with the standby's). Returns the VF and its socket.
    pub fn claim_vf(&mut self, mac: MacAddr) -> Result<(u16, PathBuf), Refusal> {
        let free = {
            let f = lock(&self.fabric);
            self.vfs
                .iter()
                .find(|p| {
                    p.conn.is_none()
                        && !self.claimed.contains(&p.index)
                        && !f.switch.vf_has_vport(p.index)
                })
                .map(|p| (p.index, p.path.clone()))
        };
        let (vf, path) = free.ok_or_else(|| Refusal::new(libc::ENOSPC, "no free VF"))?;
        lock(&self.fabric).switch.set_vf_mac(vf, mac)?;
        self.sync_policy(vf);
        self.claimed.insert(vf);
        Ok((vf, path))
    }

    /// Failover: VF `vf`'s state: whether a client holds it, whether its driver made its
    /// VPort (the mailbox RESET), whether its receiver has descriptors (RX enabled).
    pub fn vf_status(&mut self, vf: u16) -> Result<(bool, bool, bool), Refusal> {
        let vport = lock(&self.fabric).switch.vf_has_vport(vf);
        let port = self
            .vfs
            .get_mut(usize::from(vf))
            .ok_or_else(|| Refusal::new(libc::ENOENT, format!("no VF {vf}")))?;
        let client = port.conn.is_some();
        let rx_ready = port.device().igbvf().rx_descriptors_available() > 0;
        Ok((client, vport, rx_ready))
    }

    /// Failover: moves the filters of the guest whose synthetic port has `mac` to `to`
    /// (the default VPort or a VF's), in one step.
    pub fn move_guest_filters(&mut self, mac: MacAddr, to: VPortId) -> Result<(), Refusal> {
        let mut f = lock(&self.fabric);
        let id = self
            .synthetics
            .iter()
            .flat_map(|s| s.conns.iter())
            .filter_map(|c| c.id)
            .find(|id| f.switch.synthetic(*id).is_some_and(|(m, _)| m == mac))
            .ok_or_else(|| Refusal::new(libc::ENOENT, format!("no synthetic port for {mac}")))?;
        f.switch.move_guest_filters(id, to)?;
        Ok(())
    }

    /// Opens the synthetic socket in the socket directory; `api` is nicd's API socket
    /// (told to the guests' vmms).
    pub fn listen_synthetic(&mut self, api: &std::path::Path) -> std::io::Result<()> {
        self.synthetics = Some(SyntheticPorts::bind(&self.socket_dir, api)?);
        Ok(())
    }

    /// Accepts guests on the synthetic socket.
    pub fn synthetic_accept(&mut self) {
        if let Some(s) = &mut self.synthetics {
            s.accept();
        }
    }

    /// Serves the synthetic connection on `fd`, and delivers what it made. Returns
    /// whether a connection closed (the event loop must forget its descriptor).
    pub fn synthetic_serve(&mut self, fd: std::os::fd::RawFd) -> bool {
        let mut closed = false;
        if let Some(s) = &mut self.synthetics {
            s.serve(fd, &self.fabric);
            closed = !s.retired.is_empty();
        }
        self.flush_outbox();
        closed
    }

    /// The data path.
    pub fn fabric(&self) -> &Arc<Mutex<Fabric>> {
        &self.fabric
    }

    /// The PF card.
    pub fn pf(&self) -> &Arc<Mutex<SriovPf>> {
        &self.pf
    }

    /// Where VF sockets are.
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// Sets NumVFs as `sriov_numvfs` does (ERANGE above TotalVFs, EBUSY for N>0 to M>0),
    /// and EBUSY to disable VFs while a client holds one (Linux's igb refuses to disable
    /// VFs that are assigned to guests). New VFs listen on DIR/vf<k>.sock at once.
    pub fn set_num_vfs(&mut self, n: u16) -> Result<(), Refusal> {
        let current = u16::try_from(self.vfs.len()).unwrap_or(u16::MAX);
        if n == current {
            return Ok(());
        }
        if n == 0 {
            if let Some(p) = self.vfs.iter().find(|p| p.conn.is_some()) {
                return Err(Refusal::new(
                    libc::EBUSY,
                    format!("VF {} is in use by a client", p.index),
                ));
            }
        } else {
            lock(&self.pf).set_num_vfs(n)?;
        }
        {
            let mut f = lock(&self.fabric);
            if n == 0 {
                for vf in 0..current {
                    if f.switch.vf_has_vport(vf) {
                        f.switch.delete_vport(vf)?;
                    }
                }
            }
            f.switch.set_num_vfs(n)?;
            f.resize(n);
            for k in 0..n {
                f.switch.set_vf_mac(k, default_mac(k))?;
            }
        }
        if n == 0 {
            lock(&self.pf).set_num_vfs(0)?;
            self.retired.append(&mut self.vfs);
            return Ok(());
        }
        for k in 0..n {
            if let Err(e) = self.add_port(k) {
                self.retired.append(&mut self.vfs);
                let mut f = lock(&self.fabric);
                let _ = f.switch.set_num_vfs(0);
                f.resize(0);
                drop(f);
                let _ = lock(&self.pf).set_num_vfs(0);
                return Err(e);
            }
        }
        Ok(())
    }

    fn add_port(&mut self, k: u16) -> Result<(), Refusal> {
        let path = self.socket_dir.join(format!("vf{k}.sock"));
        let listener = listen(&path).map_err(|e| {
            Refusal::new(
                e.raw_os_error().unwrap_or(libc::EIO),
                format!("cannot listen on {}: {e}", path.display()),
            )
        })?;
        let ino = std::os::unix::fs::MetadataExt::ino(
            &std::fs::symlink_metadata(&path)
                .map_err(|e| Refusal::new(libc::EIO, e.to_string()))?,
        );
        let policy = pf_policy(&lock(&self.fabric).switch, k);
        let device = VfDevice::new(
            k,
            self.fabric.clone(),
            self.pf.clone(),
            self.ctl.clone(),
            policy,
        );
        self.vfs.push(VfPort {
            index: k,
            path,
            listener,
            conn: None,
            busy: Vec::new(),
            server: Server::new(device),
            ino: Some(ino),
        });
        Ok(())
    }

    /// Accepts a client of VF `vf`: the first becomes its client, later ones wait for
    /// their EBUSY answer. Returns the accepted connections' slots (true: the client).
    pub fn accept(&mut self, vf: u16) -> Vec<bool> {
        let mut accepted = Vec::new();
        let Some(port) = self.vfs.get_mut(usize::from(vf)) else {
            return accepted;
        };
        loop {
            let stream = match port.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    devices::warn_ratelimited!("nicd: VF {vf}: accept failed: {e}");
                    break;
                }
            };
            let Ok(conn) = Conn::new(stream) else {
                continue;
            };
            if port.conn.is_none() {
                port.conn = Some(conn);
                self.claimed.remove(&vf);
                accepted.push(true);
            } else if port.busy.len() < MAX_BUSY_CLIENTS {
                devices::info_ratelimited!("nicd: VF {vf} has a client: refusing another");
                port.busy.push(conn);
                accepted.push(false);
            }
        }
        accepted
    }

    /// VF `vf`'s client is gone: DMA unmapped and IRQ eventfds closed (the server's
    /// part), the VF reset (FLR), what its driver asked for forgotten and its VPort
    /// deleted, so its filters leave the switch (uplink frames for its MAC are dropped as
    /// "no owner").
    pub fn client_gone(&mut self, vf: u16) {
        let Some(port) = self.vfs.get_mut(usize::from(vf)) else {
            return;
        };
        port.conn = None;
        port.server.disconnect();
        let dev = port.device();
        dev.flr();
        dev.igbvf_mut().pf_mut().forget();
        lock(&self.fabric).clear_vf(vf);
        self.apply_pf_events(vf);
        self.sync_policy(vf);
    }

    /// Applies what VF `vf`'s driver was granted through the mailbox to the switch.
    pub fn apply_pf_events(&mut self, vf: u16) {
        let Some(port) = self.vfs.get_mut(usize::from(vf)) else {
            return;
        };
        let events = port.device().igbvf_mut().take_pf_events();
        if events.is_empty() {
            return;
        }
        let mut f = lock(&self.fabric);
        let sw = &mut f.switch;
        for e in events {
            let r = match e {
                PfEvent::Reset { .. } => sw.vf_reset(vf).and_then(|()| {
                    if sw.vf_has_vport(vf) {
                        Ok(())
                    } else {
                        sw.create_vport(vf).map(|_| ())
                    }
                }),
                PfEvent::Cleared => sw.vf_reset(vf).and_then(|()| {
                    if sw.vf_has_vport(vf) {
                        sw.delete_vport(vf).map(|_| ())
                    } else {
                        Ok(())
                    }
                }),
                PfEvent::MacAddr(m) => sw.vf_request(vf, VfRequest::SetMac(MacAddr(m))),
                PfEvent::MacFiltersCleared => sw.vf_request(vf, VfRequest::ClearUnicast),
                PfEvent::MacFilterAdded(m) => sw.vf_request(vf, VfRequest::AddUnicast(MacAddr(m))),
                PfEvent::Multicast(h) => sw.vf_request(vf, VfRequest::SetMulticast(h)),
                PfEvent::VlanAdded(vid) => sw.vf_request(vf, VfRequest::SetVlan { vid, add: true }),
                PfEvent::VlanRemoved(vid) => {
                    sw.vf_request(vf, VfRequest::SetVlan { vid, add: false })
                }
                PfEvent::MaxFrame(size) => sw.vf_request(vf, VfRequest::SetMaxFrame(size)),
                PfEvent::Promisc { unicast, multicast } => {
                    let mode = if unicast {
                        XcastMode::Promisc
                    } else if multicast {
                        XcastMode::AllMulti
                    } else {
                        XcastMode::Multi
                    };
                    sw.vf_request(vf, VfRequest::SetXcast(mode))
                }
                PfEvent::Refused(_) => Ok(()),
            };
            if let Err(e) = r {
                devices::debug_ratelimited!("nicd: VF {vf}: the switch refused a request: {e}");
            }
        }
    }

    /// Brings VF `vf`'s model in line with the switch's policy for it (admin MAC, trust,
    /// port VLAN, link: a link change shows in STATUS.LU and is announced by a ping).
    pub fn sync_policy(&mut self, vf: u16) {
        let policy = pf_policy(&lock(&self.fabric).switch, vf);
        if let Some(port) = self.vfs.get_mut(usize::from(vf)) {
            port.device().igbvf_mut().set_policy(policy);
        }
    }

    /// Hands the frames the switch left for VFs to their models.
    pub fn flush_outbox(&mut self) {
        if let Some(s) = &mut self.synthetics {
            s.deliver(&self.fabric);
        }
        // Receiving makes no new frames, so one round empties it; the bound is a guard.
        for _ in 0..4 {
            let out = lock(&self.fabric).take_outbox();
            if out.is_empty() {
                return;
            }
            for (vf, frame) in out {
                if let Some(port) = self.vfs.get_mut(usize::from(vf)) {
                    let igbvf = port.device().igbvf_mut();
                    let strip = igbvf.pf().requests().vlan_strip(igbvf.pf().policy());
                    if let RxOutcome::Dropped(why) = igbvf.receive(&frame, strip) {
                        // Counted as received by the switch when queued: make it a drop.
                        let reason = match why {
                            RxDrop::TooLong => DropReason::Mtu,
                            RxDrop::Runt => DropReason::Malformed,
                            RxDrop::Disabled => DropReason::LinkDown,
                            RxDrop::NoDescriptor | RxDrop::BadRing | RxDrop::Dma => {
                                DropReason::NoBuffer
                            }
                        };
                        lock(&self.fabric).switch.vf_refused(vf, &frame, reason);
                    }
                }
            }
        }
    }

    /// Reads uplink frames into the switch and out to the VFs. False when the uplink
    /// failed: stop watching it, then call [`Adapter::uplink_gone`].
    pub fn uplink_rx(&mut self) -> bool {
        let alive = lock(&self.fabric).uplink_rx(64);
        self.flush_outbox();
        alive
    }

    /// The uplink's socket takes frames again: its backlog goes out, and VF rings that
    /// stopped behind it walk on once it is low. Returns false when the uplink failed.
    pub fn uplink_writable(&mut self) -> bool {
        let (resume, alive) = lock(&self.fabric).uplink_writable();
        if resume {
            for port in &mut self.vfs {
                port.device().igbvf_mut().process_tx();
            }
            self.flush_outbox();
        }
        alive
    }

    /// Whether frames wait for the uplink's socket to take them.
    pub fn uplink_backlogged(&self) -> bool {
        lock(&self.fabric).uplink_backlog() > 0
    }

    /// The uplink failed (its peer went away): it is dropped and its carrier is lost, so
    /// VFs whose link follows it (state auto) see their link go down.
    pub fn uplink_gone(&mut self) {
        let changes = {
            let mut f = lock(&self.fabric);
            f.drop_uplink();
            f.switch.set_uplink_up(false)
        };
        for c in changes {
            self.sync_policy(c.vf);
        }
    }

    /// Interrupt throttling timers and held TX frames whose time came: the held frames go
    /// through the switch's arbiter together (min_tx_rate), and the VFs whose frame went
    /// walk their rings on. A held frame may have been its ring's last: only the timer
    /// sends it.
    pub fn on_timer(&mut self) {
        for port in &mut self.vfs {
            port.device().igbvf_mut().poll_timers();
        }
        let went = lock(&self.fabric).arbitrate();
        for vf in went {
            if let Some(port) = self.vfs.get_mut(usize::from(vf)) {
                port.device().igbvf_mut().process_tx();
            }
        }
        self.flush_outbox();
    }

    /// How long until the next timer work, if there is any.
    pub fn next_timer(&self) -> Option<Duration> {
        let now = MonotonicClock.now_ns();
        let eitr = self
            .vfs
            .iter()
            .filter_map(|p| p.server.device().igbvf().next_timer_deadline())
            .map(|d| Duration::from_nanos(d.saturating_sub(now)))
            .min();
        let f = lock(&self.fabric);
        let retry = f.next_retry().map(|at| at.saturating_sub(f.now()));
        [eitr, retry].into_iter().flatten().min()
    }
}

/// The VF model's policy from the switch's: the admin MAC, trust, the port VLAN, and the
/// link the VF's setting gives (a VF with state auto sees the uplink's carrier).
pub fn pf_policy(sw: &Switch, vf: u16) -> PfPolicy {
    let Ok(p) = sw.vf_policy(vf) else {
        return PfPolicy::default();
    };
    let link_up = match p.link_state {
        LinkState::Auto => sw.uplink_up(),
        LinkState::Enable => true,
        LinkState::Disable => false,
    };
    PfPolicy {
        admin_mac: (!p.mac.is_zero()).then_some(p.mac.0),
        trusted: p.trust,
        port_vlan: p.port_vlan.map(|v| v.vid),
        link_up,
    }
}
