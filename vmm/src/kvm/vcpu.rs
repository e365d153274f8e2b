//! vCPU threads: one thread per vCPU, driven by an explicit state machine
//! (created -> running <-> paused -> exited). Requests change the state under a lock and
//! kick the thread out of KVM_RUN with a signal whose handler sets `immediate_exit`, so a
//! request that races with the entry into KVM_RUN is never lost.
//!
//! Before it parks after running, the thread completes a pending port or MMIO access (one
//! KVM_RUN with `immediate_exit` set, as KVM documents) and tells kvmclock the guest was
//! stopped, so its state is at an instruction boundary. While parked it serves requests
//! for its state ([`VcpuHandle::save_state`], [`VcpuHandle::restore_state`]) on its own
//! thread, answering through a channel.

use devices::GuestMemory;
use devices::sync::{lock, wait};
use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::signal::{Killable, SIGRTMIN, register_signal_handler};

use super::cpu_state::{self, CpuState, CpuStateCaps, CpuStateError};
use super::exit::{ExitAction, IoBus, StopReason, handle_exit};

/// The life cycle of a vCPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcpuState {
    /// Configured, not yet started.
    Created,
    /// Running guest code (or about to).
    Running,
    /// Parked outside KVM_RUN until resumed.
    Paused,
    /// Done; the thread has ended or is ending.
    Exited,
}

/// What can be asked of a vCPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcpuEvent {
    /// Start running.
    Start,
    /// Stop running guest code until resumed.
    Pause,
    /// Run again after a pause.
    Resume,
    /// End the thread.
    Exit,
}

/// A request that does not apply in the current state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("vCPU cannot {event:?} while {state:?}")]
pub struct InvalidTransition {
    /// The state.
    pub state: VcpuState,
    /// The request.
    pub event: VcpuEvent,
}

/// The state machine: the state `event` leads to from `state`.
pub fn transition(state: VcpuState, event: VcpuEvent) -> Result<VcpuState, InvalidTransition> {
    use VcpuEvent as E;
    use VcpuState as S;
    match (state, event) {
        (S::Created, E::Start) | (S::Paused, E::Resume) => Ok(S::Running),
        (S::Running, E::Pause) => Ok(S::Paused),
        (_, E::Exit) => Ok(S::Exited),
        _ => Err(InvalidTransition { state, event }),
    }
}

/// Why a vCPU thread ended on its own, with what the user needs to diagnose it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VcpuStop {
    /// The vCPU.
    pub vcpu: u8,
    /// The reason.
    pub reason: StopReason,
    /// Registers and instruction bytes, when they tell something.
    pub detail: Option<String>,
}

/// Receives the stop of a vCPU thread that ended without being asked to.
pub trait VcpuStopSink: Send + Sync {
    /// Called once, from the vCPU thread.
    fn vcpu_stopped(&self, stop: VcpuStop);
}

/// A request for the vCPU's state, served by its thread while parked.
enum StateRequest {
    Save(Sender<Result<CpuState, CpuStateError>>),
    Restore(Box<CpuState>, Sender<Result<(), CpuStateError>>),
}

/// Why a state request was not answered.
#[derive(Debug, thiserror::Error)]
pub enum StateRequestError {
    /// The vCPU is running or gone: pause it first.
    #[error("vCPU {0} is {1:?}; its state can be saved or restored only while paused")]
    NotParked(u8, VcpuState),
    /// The thread did not answer in time.
    #[error("vCPU {0} did not answer within {1:?}")]
    Timeout(u8, Duration),
    /// KVM refused.
    #[error("vCPU {0}")]
    Kvm(u8, #[source] CpuStateError),
}

struct Inner {
    state: VcpuState,
    requests: VecDeque<StateRequest>,
}

struct Shared {
    inner: Mutex<Inner>,
    changed: Condvar,
    /// The thread is waiting outside KVM_RUN (created or paused), guest state at rest.
    parked: std::sync::atomic::AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock only means another thread panicked; the state is still valid.
        lock(&self.inner)
    }
}

/// The control side of a vCPU thread.
pub struct VcpuHandle {
    id: u8,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for VcpuHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuHandle")
            .field("id", &self.id)
            .field("state", &self.shared.lock().state)
            .finish()
    }
}

thread_local! {
    /// The `immediate_exit` byte of this thread's kvm_run, for the kick signal handler.
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let ptr = IMMEDIATE_EXIT.with(Cell::get);
    if !ptr.is_null() {
        // SAFETY: the pointer was set by this very thread to the immediate_exit byte of its
        // kvm_run mapping, which lives as long as the thread's VcpuFd, and is cleared before
        // the VcpuFd is dropped.
        unsafe { std::ptr::write_volatile(ptr, 1) };
    }
}

/// Installs the kick signal handler (once per process).
pub fn install_kick_handler() -> std::io::Result<()> {
    register_signal_handler(SIGRTMIN(), kick_handler)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

/// Everything a vCPU thread needs.
#[allow(missing_debug_implementations)] // VcpuFd and the trait objects have no Debug.
pub struct VcpuContext {
    /// The vCPU, configured.
    pub fd: VcpuFd,
    /// Its index (= APIC ID).
    pub id: u8,
    /// Port and MMIO dispatch.
    pub bus: Arc<dyn IoBus + Send + Sync>,
    /// Guest memory, for diagnostics.
    pub mem: GuestMemory,
    /// Where an unrequested stop is reported.
    pub stop_sink: Arc<dyn VcpuStopSink>,
    /// What KVM can save of a vCPU here.
    pub state_caps: CpuStateCaps,
    /// The MSRs a saved state carries.
    pub saved_msrs: Arc<Vec<u32>>,
    /// Written each time the thread parks (so a deferred pause can be answered).
    pub parked_notify: Option<Arc<vmm_sys_util::eventfd::EventFd>>,
}

impl VcpuHandle {
    /// Spawns the thread of `ctx`; it waits in [`VcpuState::Created`] for [`VcpuEvent::Start`].
    pub fn spawn(ctx: VcpuContext) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                state: VcpuState::Created,
                requests: VecDeque::new(),
            }),
            changed: Condvar::new(),
            parked: std::sync::atomic::AtomicBool::new(false),
        });
        let id = ctx.id;
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || run_loop(ctx, &thread_shared))?;
        Ok(Self {
            id,
            shared,
            thread: Some(thread),
        })
    }

    /// The vCPU index.
    pub fn id(&self) -> u8 {
        self.id
    }

    /// The current state.
    pub fn state(&self) -> VcpuState {
        self.shared.lock().state
    }

    /// Applies `event` and kicks the thread out of KVM_RUN so it sees it.
    pub fn request(&self, event: VcpuEvent) -> Result<(), InvalidTransition> {
        let mut inner = self.shared.lock();
        inner.state = transition(inner.state, event)?;
        self.shared.changed.notify_all();
        drop(inner);
        if matches!(event, VcpuEvent::Pause | VcpuEvent::Exit) {
            self.kick();
        }
        Ok(())
    }

    fn kick(&self) {
        if let Some(t) = &self.thread
            && !t.is_finished()
        {
            // A failed kill means the thread is gone already, which is what we want.
            let _ = t.kill(SIGRTMIN());
        }
    }

    /// Whether the thread is parked outside KVM_RUN (or has ended).
    pub fn is_parked(&self) -> bool {
        self.shared.parked.load(std::sync::atomic::Ordering::SeqCst)
            || self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Waits until the thread has left KVM_RUN after a pause (or ended); false on timeout.
    pub fn wait_parked(&self, timeout: std::time::Duration) -> bool {
        use std::sync::atomic::Ordering;
        let deadline = std::time::Instant::now() + timeout;
        let mut inner = self.shared.lock();
        loop {
            let done = self.shared.parked.load(Ordering::SeqCst)
                || inner.state == VcpuState::Exited
                || self.thread.as_ref().is_none_or(|t| t.is_finished());
            if done {
                return true;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            inner = self
                .shared
                .changed
                .wait_timeout(inner, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    /// Queues a state request for the parked thread.
    fn submit(&self, request: StateRequest) -> Result<(), StateRequestError> {
        let mut inner = self.shared.lock();
        if !matches!(inner.state, VcpuState::Paused | VcpuState::Created) {
            return Err(StateRequestError::NotParked(self.id, inner.state));
        }
        inner.requests.push_back(request);
        self.shared.changed.notify_all();
        Ok(())
    }

    /// The vCPU's state, saved by its own thread while paused (or not yet started).
    pub fn save_state(&self, timeout: Duration) -> Result<CpuState, StateRequestError> {
        let (tx, rx) = channel();
        self.submit(StateRequest::Save(tx))?;
        rx.recv_timeout(timeout)
            .map_err(|_| StateRequestError::Timeout(self.id, timeout))?
            .map_err(|e| StateRequestError::Kvm(self.id, e))
    }

    /// Loads `state` into the vCPU, by its own thread, before it first runs (restore) or
    /// while paused.
    pub fn restore_state(
        &self,
        state: CpuState,
        timeout: Duration,
    ) -> Result<(), StateRequestError> {
        let (tx, rx) = channel();
        self.submit(StateRequest::Restore(Box::new(state), tx))?;
        rx.recv_timeout(timeout)
            .map_err(|_| StateRequestError::Timeout(self.id, timeout))?
            .map_err(|e| StateRequestError::Kvm(self.id, e))
    }

    /// Asks the thread to exit and waits for it.
    pub fn exit_and_join(&mut self) {
        let _ = self.request(VcpuEvent::Exit);
        if let Some(t) = self.thread.take() {
            // The thread catches nothing; with panic=abort a join error cannot happen.
            let _ = t.join();
        }
    }
}

impl Drop for VcpuHandle {
    fn drop(&mut self) {
        self.exit_and_join();
    }
}

/// Completes a port or MMIO access the last exit left pending (KVM finishes it at the next
/// KVM_RUN, which returns at once with `immediate_exit` set) and tells the guest's kvmclock
/// it was stopped. EINVAL from KVM_KVMCLOCK_CTRL only means the guest has no kvmclock.
fn settle(ctx: &mut VcpuContext) {
    ctx.fd.set_kvm_immediate_exit(1);
    let _ = ctx.fd.run();
    ctx.fd.set_kvm_immediate_exit(0);
    let _ = ctx.fd.kvmclock_ctrl();
}

fn serve(ctx: &VcpuContext, request: StateRequest) {
    // A requester that gave up has dropped its receiver; nothing to tell it.
    match request {
        StateRequest::Save(reply) => {
            let _ = reply.send(cpu_state::save(&ctx.fd, ctx.state_caps, &ctx.saved_msrs));
        }
        StateRequest::Restore(state, reply) => {
            let _ = reply.send(cpu_state::restore(&ctx.fd, &state));
        }
    }
}

/// Waits while created or paused (marked parked meanwhile), settling the vCPU first if it
/// ran and serving state requests; returns false once the vCPU must exit.
fn park(shared: &Shared, ctx: &mut VcpuContext, ran: &mut bool) -> bool {
    use std::sync::atomic::Ordering;
    let mut inner = shared.lock();
    loop {
        match inner.state {
            VcpuState::Running => {
                shared.parked.store(false, Ordering::SeqCst);
                return true;
            }
            VcpuState::Exited => return false,
            VcpuState::Created | VcpuState::Paused => {
                if std::mem::take(ran) {
                    drop(inner);
                    settle(ctx);
                    inner = shared.lock();
                    continue;
                }
                if let Some(request) = inner.requests.pop_front() {
                    drop(inner);
                    serve(ctx, request);
                    inner = shared.lock();
                    continue;
                }
                if !shared.parked.swap(true, Ordering::SeqCst) {
                    shared.changed.notify_all();
                    if let Some(evt) = &ctx.parked_notify {
                        // The event loop reads it; a failure means it is gone already.
                        let _ = evt.write(1);
                    }
                }
                inner = wait(&shared.changed, inner);
            }
        }
    }
}

fn run_loop(mut ctx: VcpuContext, shared: &Shared) {
    let run = ctx.fd.get_kvm_run();
    let immediate_exit: *mut u8 = std::ptr::addr_of_mut!(run.immediate_exit);
    IMMEDIATE_EXIT.with(|c| c.set(immediate_exit));
    let mut ran = false;
    let stop = loop {
        if !park(shared, &mut ctx, &mut ran) {
            break None;
        }
        ran = true;
        let action = match ctx.fd.run() {
            Ok(exit) => handle_exit(exit, &*ctx.bus),
            Err(e) if e.errno() == libc::EINTR => ExitAction::Interrupted,
            Err(e) if e.errno() == libc::EAGAIN => ExitAction::Continue,
            Err(e) => ExitAction::Stop(StopReason::Unexpected(format!("KVM_RUN failed: {e}"))),
        };
        match action {
            ExitAction::Continue => {}
            ExitAction::Interrupted => ctx.fd.set_kvm_immediate_exit(0),
            ExitAction::Stop(reason) => break Some(reason),
        }
    };
    IMMEDIATE_EXIT.with(|c| c.set(std::ptr::null_mut()));
    let Some(reason) = stop else { return };
    let detail = diagnose(&mut ctx, &reason);
    shared.lock().state = VcpuState::Exited;
    ctx.stop_sink.vcpu_stopped(VcpuStop {
        vcpu: ctx.id,
        reason,
        detail,
    });
}

/// Registers and the bytes at RIP, for the stops a user has to debug.
fn diagnose(ctx: &mut VcpuContext, reason: &StopReason) -> Option<String> {
    if !matches!(
        reason,
        StopReason::InternalError | StopReason::TripleFault | StopReason::FailEntry(_)
    ) {
        return None;
    }
    let mut out = String::new();
    if *reason == StopReason::InternalError {
        // SAFETY: after KVM_EXIT_INTERNAL_ERROR the `internal` member of the exit union is
        // the one KVM filled in.
        let internal = unsafe { ctx.fd.get_kvm_run().__bindgen_anon_1.internal };
        out.push_str(&format!("suberror {} ", internal.suberror));
    }
    let Ok(regs) = ctx.fd.get_regs() else {
        return Some(out + "(registers unavailable)");
    };
    out.push_str(&format!("rip={:#x} rsp={:#x}", regs.rip, regs.rsp));
    if let Ok(sregs) = ctx.fd.get_sregs() {
        out.push_str(&format!(
            " cs={:#x} cr0={:#x} cr3={:#x} cr4={:#x}",
            sregs.cs.selector, sregs.cr0, sregs.cr3, sregs.cr4
        ));
    }
    let code = ctx
        .fd
        .translate_gva(regs.rip)
        .ok()
        .filter(|t| t.valid != 0)
        .and_then(|t| {
            let mut bytes = [0u8; 16];
            ctx.mem
                .read_slice(&mut bytes, GuestAddress(t.physical_address))
                .ok()
                .map(|()| bytes)
        });
    match code {
        Some(bytes) => {
            let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
            out.push_str(&format!(" code: {}", hex.join(" ")));
        }
        None => out.push_str(" code: (RIP not mapped)"),
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use VcpuEvent as E;
    use VcpuState as S;

    #[test]
    fn transitions() {
        assert_eq!(transition(S::Created, E::Start), Ok(S::Running));
        assert_eq!(transition(S::Running, E::Pause), Ok(S::Paused));
        assert_eq!(transition(S::Paused, E::Resume), Ok(S::Running));
        for s in [S::Created, S::Running, S::Paused, S::Exited] {
            assert_eq!(transition(s, E::Exit), Ok(S::Exited));
        }
        for (s, e) in [
            (S::Created, E::Pause),
            (S::Created, E::Resume),
            (S::Running, E::Start),
            (S::Running, E::Resume),
            (S::Paused, E::Pause),
            (S::Paused, E::Start),
            (S::Exited, E::Start),
            (S::Exited, E::Resume),
        ] {
            assert_eq!(
                transition(s, e),
                Err(InvalidTransition { state: s, event: e })
            );
        }
    }
}
