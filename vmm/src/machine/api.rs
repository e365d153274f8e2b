//! The VM as the API sees it: requests turned into [`Vmm`] and device-manager calls, and
//! their typed results into wire responses. Long operations (pause, orderly removal) are
//! answered later, never by blocking the event loop.

use devices::sync::lock;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

use super::{VmState, Vmm};
use crate::api::protocol::parse_request;
use crate::api::protocol::{StandbyStatus, VcpuInfo};
use crate::api::{ApiHandler, DeviceInfo, NetDevice, Reply, Request, Response, SlotInfo, VmStatus};
use crate::config::{NetSpec, VfSpec};
use crate::device_manager::pci::{Slot, SlotDevice};

/// How long vCPUs have to leave KVM_RUN after a pause.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a parked vCPU thread has to hand out its registers.
const SAVE_TIMEOUT: Duration = Duration::from_secs(2);

/// A shared VM.
pub type SharedVmm = Arc<Mutex<Vmm>>;

fn mac_string(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn device_info(d: SlotDevice) -> DeviceInfo {
    DeviceInfo {
        id: d.id,
        kind: d.kind,
        port: d.port,
        bus: d.bus,
        mac: d.mac.as_ref().map(mac_string),
        backend: d.backend,
    }
}

fn net_spec(n: NetDevice) -> NetSpec {
    NetSpec {
        socket: n.socket,
        tap: n.tap,
        nicd: n.nicd,
        mac: n.mac,
        standby: n.standby,
        reattach: n.reattach,
    }
}

/// A 32-bit register of a saved local APIC page.
fn apic_reg(lapic: &kvm_bindings::kvm_lapic_state, offset: usize) -> u32 {
    let b = |i: usize| lapic.regs.get(offset + i).map_or(0, |&v| v as u8);
    u32::from_le_bytes([b(0), b(1), b(2), b(3)])
}

/// The vectors set in one of the local APIC's 256-bit registers (ISR, TMR, IRR: eight
/// 32-bit words 16 bytes apart from `base`), lowest first.
fn apic_vectors(lapic: &kvm_bindings::kvm_lapic_state, base: usize) -> Vec<u8> {
    (0u8..=255)
        .filter(|&v| {
            let word = apic_reg(lapic, base + 16 * usize::from(v / 32));
            word & (1 << (v % 32)) != 0
        })
        .collect()
}

fn mp_state_name(state: u32) -> String {
    match state {
        kvm_bindings::KVM_MP_STATE_RUNNABLE => "runnable".into(),
        kvm_bindings::KVM_MP_STATE_UNINITIALIZED => "uninitialized".into(),
        kvm_bindings::KVM_MP_STATE_INIT_RECEIVED => "init-received".into(),
        kvm_bindings::KVM_MP_STATE_HALTED => "halted".into(),
        kvm_bindings::KVM_MP_STATE_SIPI_RECEIVED => "sipi-received".into(),
        other => format!("mp-state-{other}"),
    }
}

/// What a person reading a stuck guest wants of a saved vCPU.
fn vcpu_info(index: u8, s: &crate::kvm::CpuState) -> VcpuInfo {
    let hex = |v: u64| format!("{v:#x}");
    let ev = &s.events;
    let exception = (ev.exception.injected != 0 || ev.exception.pending != 0).then(|| {
        if ev.exception.has_error_code != 0 {
            format!("{}/{:#x}", ev.exception.nr, ev.exception.error_code)
        } else {
            ev.exception.nr.to_string()
        }
    });
    let interrupt = (ev.interrupt.injected != 0).then(|| format!("{:#x}", ev.interrupt.nr));
    VcpuInfo {
        index,
        mp_state: mp_state_name(s.mp_state.mp_state),
        rip: hex(s.regs.rip),
        rsp: hex(s.regs.rsp),
        rflags: hex(s.regs.rflags),
        cs: format!("{:#x}", s.sregs.cs.selector),
        cr0: hex(s.sregs.cr0),
        cr2: hex(s.sregs.cr2),
        cr3: hex(s.sregs.cr3),
        cr4: hex(s.sregs.cr4),
        efer: hex(s.sregs.efer),
        exception,
        interrupt,
        nmi_pending: ev.nmi.pending != 0 || ev.nmi.injected != 0,
        apic_tpr: format!("{:#x}", apic_reg(&s.lapic, 0x80)),
        apic_isr: apic_vectors(&s.lapic, 0x100),
        apic_irr: apic_vectors(&s.lapic, 0x200),
        apic_lvt_timer: format!("{:#x}", apic_reg(&s.lapic, 0x320)),
        apic_timer_count: format!(
            "{}/{}",
            apic_reg(&s.lapic, 0x380),
            apic_reg(&s.lapic, 0x390)
        ),
    }
}

fn slot_info(s: Slot) -> SlotInfo {
    SlotInfo {
        port: s.port,
        device: s.device.map(device_info),
        lost: s.lost,
    }
}

/// The API handler of a VM.
pub struct VmApi {
    vmm: SharedVmm,
    /// Written by vCPUs that park and by the slot registry when removals finish.
    wakeup: Arc<EventFd>,
    next_ticket: u64,
    /// Pauses waiting for every vCPU to park, with their deadlines.
    pauses: Vec<(u64, Instant)>,
    /// Failover sequences done, waiting to be answered.
    failovers: super::failover::Done,
}

impl std::fmt::Debug for VmApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmApi").finish_non_exhaustive()
    }
}

impl VmApi {
    /// Serves `vmm`; `wakeup` is its parked event, which the slot registry writes too.
    pub fn new(vmm: SharedVmm) -> Self {
        let wakeup = {
            let v = lock(&vmm);
            let wakeup = v.parked_event().clone();
            lock(&v.devices().slots).set_wakeup(wakeup.clone());
            wakeup
        };
        Self {
            vmm,
            wakeup,
            next_ticket: 0,
            pauses: Vec::new(),
            failovers: super::failover::Done::default(),
        }
    }

    fn ticket(&mut self) -> u64 {
        self.next_ticket += 1;
        self.next_ticket
    }

    fn status_of(vmm: &Vmm) -> VmStatus {
        VmStatus {
            state: vmm.state().to_string(),
            vcpus: vmm.config().vcpus,
            memory_bytes: vmm.config().memory,
            cpu_template: vmm.template().to_string(),
            kernel: vmm.config().kernel.path().display().to_string(),
            uptime_ms: u64::try_from(vmm.uptime().as_millis()).unwrap_or(u64::MAX),
        }
    }

    fn handle_now(&mut self, request: Request) -> Result<Reply<Response>, String> {
        let mut vmm = lock(&self.vmm);
        let response = match request {
            Request::Status => Response::status(Self::status_of(&vmm)),
            Request::Pause => {
                vmm.pause().map_err(|e| e.to_string())?;
                if !vmm.all_parked() {
                    drop(vmm);
                    let ticket = self.ticket();
                    self.pauses.push((ticket, Instant::now() + PAUSE_TIMEOUT));
                    return Ok(Reply::Later(ticket));
                }
                Response::status(Self::status_of(&vmm))
            }
            Request::Resume => {
                vmm.resume().map_err(|e| e.to_string())?;
                Response::status(Self::status_of(&vmm))
            }
            Request::Vcpus => {
                if vmm.state() != VmState::Paused || !vmm.all_parked() {
                    return Err("the vCPUs' registers are read while the VM is paused: \
                                `vmctl pause` first"
                        .into());
                }
                let states = vmm
                    .save_vcpus(SAVE_TIMEOUT)
                    .map_err(|e| crate::error_chain(&e))?;
                Response::vcpus((0u8..).zip(&states).map(|(i, s)| vcpu_info(i, s)).collect())
            }
            Request::DeviceList => Response::slots(
                lock(&vmm.devices().slots)
                    .list()
                    .into_iter()
                    .map(slot_info)
                    .collect(),
            ),
            Request::DeviceAdd { net, vf, port } => {
                let device = match (net, vf) {
                    (Some(net), None) => {
                        let net = net_spec(net)
                            .check(vmm.devices().next_net_index())
                            .map_err(|e| e.to_string())?;
                        vmm.devices_mut().add_net(&net, port, false)
                    }
                    (None, Some(vf)) => {
                        vmm.devices_mut()
                            .add_vf(&VfSpec { socket: vf.socket }, port, false)
                    }
                    _ => return Err("device-add takes exactly one of `net` and `vf`".into()),
                }
                .map_err(|e| crate::error_chain(&e))?;
                Response::device(device_info(device))
            }
            Request::Failover {
                op,
                timeout_ms,
                filters_last,
            } => {
                let standby = vmm
                    .devices()
                    .standby()
                    .cloned()
                    .ok_or("failover needs a standby: --net nicd=PATH,mac=MAC,standby")?;
                if op == "status" {
                    let vf = lock(&vmm.devices().slots).vf().map(|d| d.id);
                    let status = StandbyStatus {
                        device: standby.id.clone(),
                        port: standby.port.status(),
                        vf,
                        vf_wanted: standby.vf_wanted.load(std::sync::atomic::Ordering::SeqCst),
                        reattach: standby.reattach.to_string(),
                        last_reattach: lock(&standby.last_reattach).clone(),
                    };
                    return Ok(Reply::Now(Response {
                        standby: Some(status),
                        ..Response::ok()
                    }));
                }
                drop(vmm);
                let ticket = self.ticket();
                super::failover::Job {
                    vmm: self.vmm.clone(),
                    standby,
                    op,
                    timeout: timeout_ms
                        .map_or(super::failover::DEFAULT_TIMEOUT, Duration::from_millis),
                    filters_last,
                    ticket,
                    done: self.failovers.clone(),
                    wakeup: self.wakeup.clone(),
                }
                .spawn()?;
                return Ok(Reply::Later(ticket));
            }
            Request::DeviceRemove { id, surprise } => {
                drop(vmm);
                let ticket = self.ticket();
                let vmm = lock(&self.vmm);
                let removed = lock(&vmm.devices().slots)
                    .remove(&id, surprise, ticket)
                    .map_err(|e| e.to_string())?;
                match removed {
                    Some(device) => Response::device(device_info(device)),
                    None => return Ok(Reply::Later(ticket)),
                }
            }
        };
        Ok(Reply::Now(response))
    }
}

impl ApiHandler for VmApi {
    type Request = Request;
    type Response = Response;

    fn parse(&self, line: &[u8]) -> Result<Request, String> {
        parse_request(line)
    }

    fn error(&self, message: String) -> Response {
        Response::error(message)
    }

    fn handle(&mut self, request: Request) -> Reply<Response> {
        self.handle_now(request)
            .unwrap_or_else(|e| Reply::Now(Response::error(e)))
    }

    fn completion_fd(&self) -> Option<i32> {
        Some(self.wakeup.as_raw_fd())
    }

    fn completed(&mut self) -> Vec<(u64, Response)> {
        let _ = self.wakeup.read();
        let vmm = lock(&self.vmm);
        let mut done: Vec<(u64, Response)> = lock(&vmm.devices().slots)
            .take_finished()
            .into_iter()
            // Ticket 0: a removal a failover sequence made and waits for itself.
            .filter(|(ticket, _)| *ticket != 0)
            .map(|(ticket, r)| {
                let response = match r {
                    Ok(device) => Response::device(device_info(device)),
                    Err(e) => Response::error(e.to_string()),
                };
                (ticket, response)
            })
            .collect();
        done.append(&mut lock(&self.failovers));
        let now = Instant::now();
        let parked = vmm.all_parked();
        let paused = vmm.state() == VmState::Paused;
        self.pauses.retain(|&(ticket, deadline)| {
            // Resumed meanwhile, or every vCPU is out of KVM_RUN: the pause is answered.
            let response = if !paused || parked {
                Response::status(Self::status_of(&vmm))
            } else if now >= deadline {
                Response::error(format!(
                    "vCPUs did not stop within {} s",
                    PAUSE_TIMEOUT.as_secs()
                ))
            } else {
                return true;
            };
            done.push((ticket, response));
            false
        });
        done
    }
}
