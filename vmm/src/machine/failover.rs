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

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::nic_switch::MacAddr;
use devices::sync::lock;
use vmm_sys_util::eventfd::EventFd;

use super::api::SharedVmm;
use crate::api::protocol::FailoverReport;
use crate::api::{Client, Response};
use crate::config::VfSpec;
use crate::device_manager::Standby;
use crate::nicd::api::{NicRequest, NicResponse};

/// How long the guest has by default to release its VF, or to bring a new one up.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the state is looked at while waiting.
const POLL: Duration = Duration::from_millis(5);

/// Finished sequences, for the API server to answer.
pub type Done = Arc<Mutex<Vec<(u64, Response)>>>;

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
    /// The request's ticket.
    pub ticket: u64,
    /// Where the answer goes.
    pub done: Done,
    /// Written when it is there.
    pub wakeup: Arc<EventFd>,
    /// Set while a sequence runs (one at a time); cleared when this one ends.
    pub busy: Arc<std::sync::atomic::AtomicBool>,
}

impl Job {
    /// Runs the sequence on a thread of its own.
    pub fn spawn(self) {
        std::thread::spawn(move || {
            let r = match self.op.as_str() {
                "detach" => self.detach(),
                "attach" => self.attach(),
                other => Err(format!("no failover operation `{other}` (detach, attach)")),
            };
            let response = match r {
                Ok(report) => Response {
                    failover: Some(report),
                    ..Response::ok()
                },
                Err(e) => Response::error(format!("failover {}: {e}", self.op)),
            };
            devices::info_ratelimited!("failover {}: {response:?}", self.op);
            lock(&self.done).push((self.ticket, response));
            self.busy.store(false, std::sync::atomic::Ordering::SeqCst);
            let _ = self.wakeup.write(1);
        });
    }

    fn nicd(&self, req: &NicRequest) -> Result<NicResponse, String> {
        let api = &self.standby.nicd_api;
        let r: NicResponse = Client::connect(api, Duration::from_secs(5))
            .and_then(|mut c| c.call(req))
            .map_err(|e| format!("nicd ({}): {}", api.display(), crate::error_chain(&e)))?;
        if r.ok {
            Ok(r)
        } else {
            Err(format!("nicd: {}", r.error.unwrap_or_default()))
        }
    }

    fn mac(&self) -> String {
        MacAddr(self.standby.mac).to_string()
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
        let t0 = Instant::now();
        let mut steps = Vec::new();
        let step = |steps: &mut Vec<(String, u64)>, what: &str| {
            let us = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
            steps.push((what.to_string(), us));
        };
        let (id, vf) = self.assigned_vf()?;
        self.nicd(&NicRequest::GuestFilters {
            mac: self.mac(),
            to: "default".into(),
        })?;
        step(&mut steps, "the guest's filters on the default VPort");
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
            step(
                &mut steps,
                "the VF surprise-removed (the guest held on to it)",
            );
        } else {
            step(&mut steps, "the VF removed by the guest (attention button)");
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.vf_status(vf)?.0 {
            if Instant::now() >= deadline {
                return Err(format!("nicd still serves VF {vf}"));
            }
            std::thread::sleep(POLL);
        }
        step(
            &mut steps,
            "nicd deleted the VF's VPort, reset it (FLR) and freed it",
        );
        Ok(FailoverReport {
            op: "detach".into(),
            steps_us: steps,
            vf,
            device: id,
            surprise,
        })
    }

    fn attach(&self) -> Result<FailoverReport, String> {
        let t0 = Instant::now();
        let mut steps = Vec::new();
        let step = |steps: &mut Vec<(String, u64)>, what: &str| {
            let us = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
            steps.push((what.to_string(), us));
        };
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
        step(
            &mut steps,
            "a free VF claimed, the guest's MAC its admin MAC",
        );
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
        step(&mut steps, "the VF hot-added");
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
        step(&mut steps, "the guest's igbvf up (VPort made, RX enabled)");
        self.nicd(&NicRequest::GuestFilters {
            mac: self.mac(),
            to: format!("vf{vf}"),
        })?;
        step(&mut steps, "the guest's filters on the VF's VPort");
        Ok(FailoverReport {
            op: "attach".into(),
            steps_us: steps,
            vf,
            device: device.id,
            surprise: false,
        })
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
