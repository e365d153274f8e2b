//! The failover sequences, in the order of the Hyper-V SR-IOV design (the seeds): the vmm
//! drives nicd through its API and its own slots. They take seconds (the guest releases
//! its VF; a new VF's driver comes up), so each runs on a thread of its own and answers
//! its API request when done; the event loop is never blocked.
//!
//! - detach: the guest's filters to the default VPort (the synthetic path carries its
//!   traffic from here on); the VF removed from the guest, orderly (attention button)
//!   and by surprise if the guest has not released it in time; nicd deletes the VF's
//!   VPort, resets (FLR) and frees the VF when its client goes, which is waited for.
//! - attach: a free VF claimed from nicd with the guest's MAC as its admin MAC; hot-added;
//!   waited for until the guest's igbvf is up (its VPort exists, RX has descriptors);
//!   the guest's filters moved to its VPort.
//! - reattach: attach, started by the vmm itself when the standby's synthetic port
//!   reconnects to nicd after nicd was away and took the guest's VF with it (the VM's
//!   standby has `reattach=auto` and the guest had a VF); retried with backoff.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::nic_switch::MacAddr;
use devices::sync::lock;
use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::api::SharedVmm;
use crate::api::protocol::FailoverReport;
use crate::api::{Client, Response};
use crate::config::{Reattach, VfSpec};
use crate::device_manager::Standby;
use crate::nicd::api::{NicRequest, NicResponse};

/// How long the guest has by default to release its VF, or to bring a new one up.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the state is looked at while waiting.
const POLL: Duration = Duration::from_millis(5);
/// The first wait between automatic re-attach attempts; it doubles up to
/// [`REATTACH_MAX`].
const REATTACH_FIRST: Duration = Duration::from_millis(500);
/// The longest wait between automatic re-attach attempts.
const REATTACH_MAX: Duration = Duration::from_secs(16);
/// Automatic re-attach attempts before the vmm gives up (about a minute and a half).
const REATTACH_ATTEMPTS: u32 = 10;

/// Finished sequences, for the API server to answer.
pub type Done = Arc<Mutex<Vec<(u64, Response)>>>;

/// A sequence's steps: what, and its end in microseconds since the sequence began.
#[derive(Debug)]
struct Steps {
    t0: Instant,
    list: Vec<(String, u64)>,
}

impl Steps {
    fn new() -> Self {
        Self {
            t0: Instant::now(),
            list: Vec::new(),
        }
    }

    /// `what` is done now.
    fn done(&mut self, what: &str) {
        let us = u64::try_from(self.t0.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.list.push((what.to_string(), us));
    }
}

/// One sequence.
#[derive(Debug)]
pub struct Job {
    /// The VM.
    pub vmm: SharedVmm,
    /// Its standby.
    pub standby: Standby,
    /// `detach` or `attach`.
    pub op: String,
    /// See [`DEFAULT_TIMEOUT`].
    pub timeout: Duration,
    /// Detach: the filters move once the guest has released the VF, not first.
    pub filters_last: bool,
    /// The request's ticket.
    pub ticket: u64,
    /// Where the answer goes.
    pub done: Done,
    /// Written when it is there.
    pub wakeup: Arc<EventFd>,
}

impl Job {
    /// Runs the sequence on a thread of its own, unless one runs already (the standby's
    /// `busy`, which it clears when done).
    pub fn spawn(self) -> Result<(), String> {
        if self.standby.busy.swap(true, Ordering::SeqCst) {
            return Err("a failover is under way".into());
        }
        std::thread::spawn(move || {
            let r = match self.op.as_str() {
                "detach" => self.detach(),
                "attach" => self.attach(),
                "reattach" => self.reattach(),
                other => Err(format!(
                    "no failover operation `{other}` (detach, attach, status)"
                )),
            };
            let response = match r {
                Ok(report) => Response {
                    failover: Some(report),
                    ..Response::ok()
                },
                Err(e) => Response::error(format!("failover {}: {e}", self.op)),
            };
            devices::info_ratelimited!("failover {}: {response:?}", self.op);
            if self.op == "reattach" {
                let uptime = lock(&self.vmm).uptime().as_millis();
                let what = match &response.failover {
                    Some(r) => format!("VF {} attached as {}", r.vf, r.device),
                    None => response.error.clone().unwrap_or_default(),
                };
                *lock(&self.standby.last_reattach) = Some(format!("at {uptime} ms: {what}"));
            }
            lock(&self.done).push((self.ticket, response));
            self.standby.busy.store(false, Ordering::SeqCst);
            let _ = self.wakeup.write(1);
            // A re-attach that waited for this sequence may start now.
            let _ = self.standby.events.write(1);
        });
        Ok(())
    }

    fn nicd(&self, req: &NicRequest) -> Result<NicResponse, String> {
        let api = self
            .standby
            .nicd_api()
            .ok_or("nicd named no API socket in its answer to the standby's hello")?;
        let r: NicResponse = Client::connect(&api, Duration::from_secs(5))
            .and_then(|mut c| c.call(req))
            .map_err(|e| format!("nicd ({}): {}", api.display(), crate::error_chain(&e)))?;
        if r.ok {
            Ok(r)
        } else {
            Err(format!("nicd: {}", r.error.unwrap_or_default()))
        }
    }

    fn mac(&self) -> String {
        MacAddr(self.standby.port.mac()).to_string()
    }

    /// VF `vf`'s state in nicd: (client, VPort, RX ready).
    fn vf_status(&self, vf: u16) -> Result<(bool, bool, bool), String> {
        let j = self
            .nicd(&NicRequest::VfStatus { vf })?
            .json
            .unwrap_or_default();
        let b = |k: &str| j[k].as_bool().unwrap_or(false);
        Ok((b("client"), b("vport"), b("rx_ready")))
    }

    /// The guest's VF: its device ID and nicd's number for it (from its socket's name).
    fn assigned_vf(&self) -> Result<(String, u16), String> {
        let vmm = lock(&self.vmm);
        let slots = lock(&vmm.devices().slots);
        slots
            .list()
            .into_iter()
            .filter_map(|s| s.device)
            .find(|d| d.kind == "vf")
            .and_then(|d| {
                let path = d
                    .backend
                    .as_deref()?
                    .strip_prefix("vfio-user:")?
                    .to_string();
                Some((d.id, vf_number(Path::new(&path))?))
            })
            .ok_or_else(|| "the VM has no VF of nicd".to_string())
    }

    fn device_present(&self, id: &str) -> bool {
        let vmm = lock(&self.vmm);
        let slots = lock(&vmm.devices().slots);
        slots
            .list()
            .into_iter()
            .any(|s| s.device.is_some_and(|d| d.id == id))
    }

    fn detach(&self) -> Result<FailoverReport, String> {
        let mut steps = Steps::new();
        let (id, vf) = self.assigned_vf()?;
        let to_default = |steps: &mut Steps| -> Result<(), String> {
            self.nicd(&NicRequest::GuestFilters {
                mac: self.mac(),
                to: "default".into(),
            })?;
            steps.done("the guest's filters on the default VPort");
            Ok(())
        };
        if !self.filters_last {
            to_default(&mut steps)?;
        }
        {
            let vmm = lock(&self.vmm);
            // Ticket 0: nobody waits for this removal's own answer (the API skips it).
            lock(&vmm.devices().slots)
                .remove(&id, false, 0)
                .map_err(|e| e.to_string())?;
        }
        let deadline = Instant::now() + self.timeout;
        while self.device_present(&id) && Instant::now() < deadline {
            std::thread::sleep(POLL);
        }
        let surprise = self.device_present(&id);
        if surprise {
            let vmm = lock(&self.vmm);
            lock(&vmm.devices().slots).hung_up(
                &id,
                &format!(
                    "the guest did not release its VF within {} ms (failover)",
                    self.timeout.as_millis()
                ),
            );
            steps.done("the VF surprise-removed (the guest held on to it)");
        } else {
            steps.done("the VF removed by the guest (attention button)");
        }
        if self.filters_last {
            to_default(&mut steps)?;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.vf_status(vf)?.0 {
            if Instant::now() >= deadline {
                return Err(format!("nicd still serves VF {vf}"));
            }
            std::thread::sleep(POLL);
        }
        steps.done("nicd deleted the VF's VPort, reset it (FLR) and freed it");
        self.standby.vf_wanted.store(false, Ordering::SeqCst);
        Ok(FailoverReport {
            op: "detach".into(),
            steps_us: steps.list,
            vf,
            device: id,
            surprise,
        })
    }

    fn attach(&self) -> Result<FailoverReport, String> {
        let mut steps = Steps::new();
        if self.assigned_vf().is_ok() {
            return Err("the VM has a VF already".into());
        }
        let claim = self
            .nicd(&NicRequest::VfClaim { mac: self.mac() })?
            .json
            .unwrap_or_default();
        let vf = claim["vf"]
            .as_u64()
            .and_then(|v| u16::try_from(v).ok())
            .ok_or("nicd's claim named no VF")?;
        let socket = claim["socket"]
            .as_str()
            .ok_or("nicd's claim named no socket")?
            .to_string();
        steps.done("a free VF claimed, the guest's MAC its admin MAC");
        let device = {
            let mut vmm = lock(&self.vmm);
            vmm.devices_mut()
                .add_vf(
                    &VfSpec {
                        socket: socket.into(),
                    },
                    None,
                    false,
                )
                .map_err(|e| crate::error_chain(&e))?
        };
        steps.done("the VF hot-added");
        self.bring_up(vf, device.id, steps)
    }

    /// The end of an attach: waits until the guest's driver has VF `vf` (device `device`)
    /// up, then moves the guest's filters to its VPort.
    fn bring_up(
        &self,
        vf: u16,
        device: String,
        mut steps: Steps,
    ) -> Result<FailoverReport, String> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let (_, vport, rx) = self.vf_status(vf)?;
            if vport && rx {
                break;
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the guest's driver did not bring VF {vf} up within {} ms",
                    self.timeout.as_millis()
                ));
            }
            std::thread::sleep(POLL);
        }
        steps.done("the guest's igbvf up (VPort made, RX enabled)");
        self.nicd(&NicRequest::GuestFilters {
            mac: self.mac(),
            to: format!("vf{vf}"),
        })?;
        steps.done("the guest's filters on the VF's VPort");
        Ok(FailoverReport {
            op: self.op.clone(),
            steps_us: steps.list,
            vf,
            device,
            surprise: false,
        })
    }

    /// Gives the guest a VF again after nicd came back: attach, retried with backoff
    /// while the guest still wants a VF and nicd is there; an attempt that got as far as
    /// the hot-add is finished by the next one.
    fn reattach(&self) -> Result<FailoverReport, String> {
        let mut delay = REATTACH_FIRST;
        let mut last = String::new();
        for attempt in 1..=REATTACH_ATTEMPTS {
            if !self.standby.vf_wanted.load(Ordering::SeqCst) {
                return Err("the guest no longer wants a VF (detached meanwhile)".into());
            }
            if !self.standby.port.is_connected() {
                // The next reconnect starts another re-attach.
                return Err("nicd went away again".into());
            }
            let r = match self.assigned_vf() {
                Ok((device, vf)) => self.bring_up(vf, device, Steps::new()),
                Err(_) => self.attach(),
            };
            match r {
                Ok(report) => return Ok(report),
                Err(e) => {
                    devices::info_ratelimited!("failover reattach: attempt {attempt}: {e}");
                    last = e;
                }
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(REATTACH_MAX);
        }
        Err(format!(
            "no VF after {REATTACH_ATTEMPTS} attempts; the last: {last}"
        ))
    }
}

/// Gives a guest its VF back after nicd was away: watches the standby's events (its port
/// reconnected; a failover sequence ended) on the VM's event loop, whether or not the VM
/// has an API socket, and starts a re-attach ([`Job`], op `reattach`) when the standby's
/// policy is `auto`, the guest wants a VF and has none, and no other sequence runs.
#[derive(Debug)]
pub struct Reattacher {
    vmm: SharedVmm,
    events: Arc<EventFd>,
    /// The port reconnected; a re-attach is still to start.
    pending: bool,
    /// Where the re-attach's answer goes: nobody waits for it (it reports through
    /// `failover status`).
    done: Done,
}

impl Reattacher {
    /// Watches `vmm`'s failover events.
    pub fn new(vmm: SharedVmm) -> Self {
        let events = lock(&vmm).devices().failover_events().clone();
        Self {
            vmm,
            events,
            pending: false,
            done: Done::default(),
        }
    }

    fn look(&mut self) {
        let _ = self.events.read();
        lock(&self.done).clear();
        let (standby, has_vf) = {
            let vmm = lock(&self.vmm);
            let has_vf = lock(&vmm.devices().slots).vf().is_some();
            (vmm.devices().standby().cloned(), has_vf)
        };
        let Some(standby) = standby else {
            return;
        };
        if standby.port.take_reconnected() {
            self.pending = true;
        }
        let wanted = standby.vf_wanted.load(Ordering::SeqCst);
        if !self.pending || standby.reattach != Reattach::Auto || !wanted || has_vf {
            self.pending = false;
            return;
        }
        let job = Job {
            vmm: self.vmm.clone(),
            standby,
            op: "reattach".into(),
            timeout: DEFAULT_TIMEOUT,
            filters_last: false,
            ticket: 0,
            done: self.done.clone(),
            wakeup: self.events.clone(),
        };
        // Busy: the sequence that runs writes the events when it ends.
        if job.spawn().is_ok() {
            self.pending = false;
        }
    }
}

impl MutEventSubscriber for Reattacher {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(self.events.as_ref(), EventSet::IN)) {
            devices::warn_ratelimited!("cannot watch the failover events: {e:?}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        self.look();
    }
}

/// nicd's number of the VF whose socket is `path` (`.../vfN.sock`).
fn vf_number(path: &Path) -> Option<u16> {
    path.file_name()?
        .to_str()?
        .strip_prefix("vf")?
        .strip_suffix(".sock")?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vf_numbers_come_from_socket_names() {
        assert_eq!(vf_number(Path::new("/run/nicd/vf12.sock")), Some(12));
        assert_eq!(vf_number(Path::new("vf0.sock")), Some(0));
        assert_eq!(vf_number(Path::new("/run/nicd/synthetic.sock")), None);
        assert_eq!(vf_number(Path::new("/run/nicd/vfx.sock")), None);
    }
}
