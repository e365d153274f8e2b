//! The PCIe slots at run time: which card is in which root port, hot-add, and removal
//! (orderly through the attention button and the guest's power-off, or by surprise).
//!
//! The registry knows cards, not what is on them (virtio.rs makes those), and no KVM: it
//! has unit tests of its own. It is an event-loop subscriber of its own, so slot events
//! (a guest that powers a slot off by itself, an eject that times out) are handled whether
//! or not anyone serves the API; long operations finish under a [`Ticket`] that the API
//! collects with [`PciSlots::take_finished`] when the wakeup eventfd fires.

use devices::sync::lock;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::pci::root_port::HotplugEvent;
use devices::pci::{PciRoot, PlugError, SharedCard};
use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};
use vmm_sys_util::timerfd::TimerFd;

/// How long the guest has to power a slot off after the attention button (Linux waits 5 s
/// for a second press, then removes the driver).
pub const EJECT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a slot the guest powered off rests before a new card goes into it when another
/// slot is free: Linux's pciehp waits a second after its power-off and then discards the
/// presence and link changes that came meanwhile, so a card plugged within that second
/// would go unnoticed.
pub const SLOT_SETTLE: Duration = Duration::from_secs(2);

/// Identifies a long operation until it finishes.
pub type Ticket = u64;

/// Errors of slot operations.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    /// No root port with this number.
    #[error("no root port {0}")]
    NoSuchPort(u8),
    /// The root port asked for holds a card or is being emptied.
    #[error("root port {0} is occupied")]
    Occupied(u8),
    /// Every slot is taken.
    #[error("no free root port")]
    NoFreePort,
    /// The card does not fit.
    #[error("cannot plug the card into root port {0}")]
    Plug(u8, #[source] PlugError),
    /// Unknown device.
    #[error("no device `{0}`")]
    NoDevice(String),
    /// A removal is already under way.
    #[error("device `{0}` is already being removed")]
    Busy(String),
    /// The guest did not power the slot off in time.
    #[error(
        "the guest did not power off slot {0} within {1:?} (is pciehp bound?); the device stays"
    )]
    EjectTimeout(u8, Duration),
    /// An eventfd or timer could not be created.
    #[error("cannot create the slot event descriptors")]
    Setup(#[source] std::io::Error),
}

/// What a slot holds, as the registry describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotDevice {
    /// Its ID, unique for the VM's lifetime.
    pub id: String,
    /// What it is, e.g. "virtio-net".
    pub kind: String,
    /// Root port number (= physical slot number).
    pub port: u8,
    /// The bus behind the port.
    pub bus: u8,
    /// Its MAC address, for network devices.
    pub mac: Option<[u8; 6]>,
    /// Where its frames go, for network devices.
    pub backend: Option<String>,
}

/// A root port and its device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// Port number.
    pub port: u8,
    /// The device in it (also while it is being removed).
    pub device: Option<SlotDevice>,
    /// The last device the slot lost without asking (its server went away), and why.
    pub lost: Option<String>,
}

/// A device's connection to the process that serves it (a vfio-user socket): when it
/// hangs up, the device is gone, and the registry removes it by surprise.
#[derive(Debug)]
struct Watch {
    id: String,
    sock: std::os::unix::net::UnixStream,
}

struct Pending {
    ticket: Ticket,
    device: SlotDevice,
    index: usize,
    deadline: Instant,
}

/// The devices in slots.
pub struct PciSlots {
    pci: PciRoot,
    devices: Vec<(usize, SlotDevice)>,
    pending: Vec<Pending>,
    finished: Vec<(Ticket, Result<SlotDevice, SlotError>)>,
    /// Slot events from the root ports.
    events: Arc<EventFd>,
    /// Fires at the next eject deadline.
    timer: TimerFd,
    /// Written when `finished` has something.
    wakeup: Option<Arc<EventFd>>,
    eject_timeout: Duration,
    /// Connections watched for hang-ups, by device.
    watches: Vec<Watch>,
    /// Watches of devices gone, kept open until the event loop has forgotten them (an fd
    /// closed while epoll still holds its file would leave a stale registration).
    retired: Vec<Watch>,
    /// What each port (by index) last lost by surprise.
    lost: Vec<(usize, String)>,
    /// When the registry was made (times in `lost` are relative to it).
    born: Instant,
    /// When the guest last powered each port (by index) off.
    powered_off: Vec<(usize, Instant)>,
}

impl std::fmt::Debug for PciSlots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciSlots")
            .field("devices", &self.devices.len())
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl PciSlots {
    /// A registry over the root ports of `pci`.
    pub fn new(pci: PciRoot) -> Result<Self, SlotError> {
        let events = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(SlotError::Setup)?);
        pci.with(|rc| {
            for port in rc.ports_mut() {
                port.set_notifier(events.clone());
            }
        });
        Ok(Self {
            pci,
            devices: Vec::new(),
            pending: Vec::new(),
            finished: Vec::new(),
            events,
            timer: TimerFd::new()
                .map_err(|e| SlotError::Setup(std::io::Error::from_raw_os_error(e.errno())))?,
            wakeup: None,
            eject_timeout: EJECT_TIMEOUT,
            watches: Vec::new(),
            retired: Vec::new(),
            lost: Vec::new(),
            born: Instant::now(),
            powered_off: Vec::new(),
        })
    }

    /// Written whenever operations finish, so the API server collects them.
    pub fn set_wakeup(&mut self, evt: Arc<EventFd>) {
        self.wakeup = Some(evt);
    }

    /// Changes how long the guest has to power a slot off (tests).
    pub fn set_eject_timeout(&mut self, timeout: Duration) {
        self.eject_timeout = timeout;
    }

    /// Every root port and its device.
    pub fn list(&self) -> Vec<Slot> {
        let ports: Vec<u8> = self.pci.with(|rc| {
            rc.ports()
                .iter()
                .map(|p| p.port_config().port_number)
                .collect()
        });
        ports
            .into_iter()
            .enumerate()
            .map(|(i, port)| Slot {
                port,
                lost: self
                    .lost
                    .iter()
                    .rev()
                    .find(|(idx, _)| *idx == i)
                    .map(|(_, why)| why.clone()),
                device: self
                    .devices
                    .iter()
                    .map(|(idx, d)| (*idx, d))
                    .chain(self.pending.iter().map(|p| (p.index, &p.device)))
                    .find(|(idx, _)| *idx == i)
                    .map(|(_, d)| d.clone()),
            })
            .collect()
    }

    /// The port index for a card: the one asked for (1-based port number) if free, else the
    /// first free one. Returns the index and the port's bus.
    pub fn choose_port(&self, port: Option<u8>) -> Result<(usize, u8, u8), SlotError> {
        let pending = |i: usize| self.pending.iter().any(|p| p.index == i);
        self.pci.with(|rc| {
            let index = match port {
                Some(n) => {
                    let i = usize::from(n)
                        .checked_sub(1)
                        .filter(|&i| i < rc.ports().len())
                        .ok_or(SlotError::NoSuchPort(n))?;
                    if rc.ports()[i].occupied() || pending(i) {
                        return Err(SlotError::Occupied(n));
                    }
                    i
                }
                None => {
                    // A free slot, preferring one the guest has not just powered off.
                    let resting = |i: usize| {
                        self.powered_off
                            .iter()
                            .find(|(p, _)| *p == i)
                            .map(|(_, at)| at.elapsed() < SLOT_SETTLE)
                            .unwrap_or(false)
                    };
                    let free: Vec<usize> = (0..rc.ports().len())
                        .filter(|&i| !rc.ports()[i].occupied() && !pending(i))
                        .collect();
                    free.iter()
                        .copied()
                        .find(|&i| !resting(i))
                        .or_else(|| free.first().copied())
                        .ok_or(SlotError::NoFreePort)?
                }
            };
            let cfg = rc.ports()[index].port_config();
            Ok((index, cfg.port_number, cfg.bus))
        })
    }

    /// Puts `card` into the slot of port index `index` (from [`PciSlots::choose_port`]):
    /// `cold` at boot (as firmware finds it: BARs assigned), else hot-added (the guest is
    /// told through the slot's events). `device` describes it; its ID must be new.
    pub fn plug(
        &mut self,
        index: usize,
        card: SharedCard,
        device: SlotDevice,
        cold: bool,
    ) -> Result<SlotDevice, SlotError> {
        let port = device.port;
        if cold {
            self.pci
                .plug_cold(index, card)
                .map_err(|e| SlotError::Plug(port, e))?;
        } else {
            self.pci
                .with(|rc| rc.ports_mut()[index].plug(card))
                .map_err(|_| SlotError::Occupied(port))?;
        }
        self.devices.push((index, device.clone()));
        Ok(device)
    }

    /// The VM's VF (the first, if several), as the failover sequences know it.
    pub fn vf(&self) -> Option<SlotDevice> {
        self.devices
            .iter()
            .map(|(_, d)| d)
            .find(|d| d.kind == "vf")
            .cloned()
    }

    /// Watches `sock`, the connection of device `id`, for a hang-up: then the device is
    /// removed by surprise ([`PciSlots::hung_up`]).
    pub fn watch(&mut self, id: &str, sock: std::os::unix::net::UnixStream) {
        self.watches.push(Watch {
            id: id.to_string(),
            sock,
        });
        // The event loop picks the new fd up when it next handles slot events.
        let _ = self.events.write(1);
    }

    /// Stops watching `id`'s connection.
    fn unwatch(&mut self, id: &str) {
        if let Some(i) = self.watches.iter().position(|w| w.id == id) {
            let w = self.watches.remove(i);
            self.retired.push(w);
            let _ = self.events.write(1);
        }
    }

    /// The connection of `id` hung up (or failed): its device is surprise-removed, an
    /// orderly removal under way finishes with it, and the slot remembers why.
    pub fn hung_up(&mut self, id: &str, why: &str) {
        self.unwatch(id);
        let at = self.born.elapsed().as_secs_f64();
        let index = if let Some(pos) = self.devices.iter().position(|(_, d)| d.id == id) {
            let (index, _) = self.devices.remove(pos);
            Some(index)
        } else if let Some(pos) = self.pending.iter().position(|p| p.device.id == id) {
            let p = self.pending.remove(pos);
            self.finished.push((p.ticket, Ok(p.device)));
            if let Some(w) = &self.wakeup {
                let _ = w.write(1);
            }
            self.arm_timer();
            Some(p.index)
        } else {
            None
        };
        let Some(index) = index else { return };
        self.pci.with(|rc| rc.ports_mut()[index].surprise_remove());
        let port = self
            .pci
            .with(|rc| rc.ports()[index].port_config().port_number);
        devices::warn_ratelimited!(
            "{id}: {why}; surprise-removed from root port {port} at {at:.3} s"
        );
        self.lost.retain(|(i, _)| *i != index);
        self.lost
            .push((index, format!("{id} lost at {at:.3} s: {why}")));
    }

    /// The watched connections (raw fds with their devices); called by the event loop.
    fn watch_fds(&self) -> Vec<(i32, String)> {
        self.watches
            .iter()
            .map(|w| (w.sock.as_raw_fd(), w.id.clone()))
            .collect()
    }

    /// Starts removing `id`. A surprise removal completes at once (`Some`); an orderly one
    /// finishes under `ticket` when the guest powers the slot off, or fails when it does not
    /// in time ([`PciSlots::take_finished`]).
    pub fn remove(
        &mut self,
        id: &str,
        surprise: bool,
        ticket: Ticket,
    ) -> Result<Option<SlotDevice>, SlotError> {
        if self.pending.iter().any(|p| p.device.id == id) {
            return Err(SlotError::Busy(id.to_string()));
        }
        let pos = self
            .devices
            .iter()
            .position(|(_, d)| d.id == id)
            .ok_or_else(|| SlotError::NoDevice(id.to_string()))?;
        let (index, device) = self.devices.remove(pos);
        if surprise {
            self.unwatch(id);
            // The card is dropped once the root complex's lock is released: its worker
            // stops and its backend closes.
            self.pci.with(|rc| rc.ports_mut()[index].surprise_remove());
            return Ok(Some(device));
        }
        self.pci.with(|rc| rc.ports_mut()[index].request_eject());
        self.pending.push(Pending {
            ticket,
            device,
            index,
            deadline: Instant::now() + self.eject_timeout,
        });
        self.arm_timer();
        Ok(None)
    }

    /// Handles slot events and deadlines: slots the guest powered off lose their devices,
    /// pending removals finish or time out.
    pub fn poll(&mut self) {
        let _ = self.events.read();
        let now = Instant::now();
        let ejected: Vec<usize> = self.pci.with(|rc| {
            rc.ports_mut()
                .iter_mut()
                .enumerate()
                .filter_map(|(i, port)| {
                    port.take_events()
                        .contains(&HotplugEvent::Ejected)
                        .then_some(i)
                })
                .collect()
        });
        for &i in &ejected {
            self.powered_off.retain(|(p, _)| *p != i);
            self.powered_off.push((i, now));
        }
        // A slot the guest powered off on its own (sysfs `power`): its device is gone.
        let gone: Vec<String> = self
            .devices
            .iter()
            .map(|(i, d)| (*i, d))
            .chain(self.pending.iter().map(|p| (p.index, &p.device)))
            .filter(|(i, _)| ejected.contains(i))
            .map(|(_, d)| d.id.clone())
            .collect();
        for id in &gone {
            self.unwatch(id);
        }
        self.devices.retain(|(i, _)| !ejected.contains(i));
        let before = self.finished.len();
        let mut still = Vec::new();
        for p in self.pending.drain(..) {
            if ejected.contains(&p.index) {
                self.finished.push((p.ticket, Ok(p.device)));
            } else if now >= p.deadline {
                self.finished.push((
                    p.ticket,
                    Err(SlotError::EjectTimeout(p.device.port, self.eject_timeout)),
                ));
                self.devices.push((p.index, p.device));
            } else {
                still.push(p);
            }
        }
        self.pending = still;
        self.arm_timer();
        if self.finished.len() > before
            && let Some(w) = &self.wakeup
        {
            let _ = w.write(1);
        }
    }

    /// Operations that finished since the last call.
    pub fn take_finished(&mut self) -> Vec<(Ticket, Result<SlotDevice, SlotError>)> {
        std::mem::take(&mut self.finished)
    }

    fn arm_timer(&mut self) {
        let next = self.pending.iter().map(|p| p.deadline).min();
        let r = match next {
            // A zero duration would disarm the timer: fire in a millisecond instead.
            Some(d) => self.timer.reset(
                d.saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1)),
                None,
            ),
            None => self.timer.clear(),
        };
        if let Err(e) = r {
            devices::warn_ratelimited!("pci slots: eject timer: {e}");
        }
    }
}

/// The registry, shared between its event-loop subscriber, the device manager and the API.
pub type SharedSlots = Arc<Mutex<PciSlots>>;

/// The registry's event-loop subscriber: slot events, eject deadlines, and hang-ups of
/// the connections of devices served by other processes.
#[derive(Debug)]
pub struct SlotEvents {
    slots: SharedSlots,
    /// Connections registered with the event loop, and their devices.
    watched: Vec<(i32, String)>,
}

impl SlotEvents {
    /// The subscriber of `slots`.
    pub fn new(slots: SharedSlots) -> Self {
        Self {
            slots,
            watched: Vec::new(),
        }
    }

    /// Registers new watches and forgets retired ones.
    fn sync_watches(&mut self, slots: &mut PciSlots, ops: &mut EventOps) {
        let now = slots.watch_fds();
        self.watched.retain(|(fd, _)| {
            let keep = now.iter().any(|(f, _)| f == fd);
            if !keep && let Err(e) = ops.remove(Events::new_raw(*fd, EventSet::empty())) {
                devices::warn_ratelimited!("pci slots: cannot forget a watch: {e:?}");
            }
            keep
        });
        for (fd, id) in now {
            if self.watched.iter().any(|(f, _)| *f == fd) {
                continue;
            }
            match ops.add(Events::new_raw(fd, EventSet::READ_HANG_UP)) {
                Ok(()) => self.watched.push((fd, id)),
                Err(e) => devices::warn_ratelimited!("pci slots: cannot watch {id}: {e:?}"),
            }
        }
        // Every retired watch is unregistered above: its descriptor may close now.
        slots.retired.clear();
    }
}

impl MutEventSubscriber for SlotEvents {
    fn init(&mut self, ops: &mut EventOps) {
        let slots = self.slots.clone();
        let mut slots = lock(&slots);
        for fd in [slots.events.as_raw_fd(), slots.timer.as_raw_fd()] {
            if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                devices::warn_ratelimited!("pci slots: cannot watch slot events: {e:?}");
            }
        }
        self.sync_watches(&mut slots, ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let shared = self.slots.clone();
        let mut slots = lock(&shared);
        let fd = events.fd();
        if fd == slots.timer.as_raw_fd() {
            let _ = slots.timer.wait();
        }
        if let Some((_, id)) = self.watched.iter().find(|(f, _)| *f == fd) {
            let id = id.clone();
            slots.hung_up(
                &id,
                "its vfio-user connection ended (the server closed it, or the vmm gave up on \
                 it: see the error above)",
            );
        }
        slots.poll();
        self.sync_watches(&mut slots, ops);
    }
}

#[cfg(test)]
mod tests;
