//! Pausing a device's worker thread: the VMM asks, the worker acknowledges at its next
//! wake-up (the gate's eventfd is in its epoll set) and waits there, touching no guest
//! memory, until released. Asking never blocks the caller; [`PauseGate::is_parked`] tells
//! when the worker is holding still.

use crate::sync::{lock, wait};
use std::sync::{Condvar, Mutex, MutexGuard};

use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

#[derive(Debug, Default)]
struct GateState {
    requested: bool,
    parked: bool,
}

/// The pause handshake between a device and its worker.
#[derive(Debug)]
pub struct PauseGate {
    state: Mutex<GateState>,
    changed: Condvar,
    kick: EventFd,
}

impl PauseGate {
    /// An open gate.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            state: Mutex::new(GateState::default()),
            changed: Condvar::new(),
            kick: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    fn lock(&self) -> MutexGuard<'_, GateState> {
        lock(&self.state)
    }

    /// Asks the worker to park; returns at once.
    pub fn request(&self) {
        self.lock().requested = true;
        // A full counter still wakes the worker.
        let _ = self.kick.write(1);
    }

    /// Lets the worker go on.
    pub fn release(&self) {
        self.lock().requested = false;
        self.changed.notify_all();
    }

    /// Whether a pause was asked for and the worker is holding still.
    pub fn is_parked(&self) -> bool {
        let s = self.lock();
        s.requested && s.parked
    }

    /// The descriptor the worker watches.
    pub fn fd(&self) -> &EventFd {
        &self.kick
    }

    /// Worker side, when the descriptor is readable: parks while a pause is asked for.
    pub fn park_if_requested(&self) {
        let _ = self.kick.read();
        let mut s = self.lock();
        if !s.requested {
            return;
        }
        s.parked = true;
        while s.requested {
            s = wait(&self.changed, s);
        }
        s.parked = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    /// A worker that counts while running and parks when asked: while parked the count
    /// holds still; after release it moves again.
    #[test]
    fn worker_parks_and_resumes() {
        let gate = Arc::new(PauseGate::new().unwrap());
        let count = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let worker = {
            let (gate, count, stop) = (gate.clone(), count.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    // The real workers learn of the kick from epoll; polling does here.
                    gate.park_if_requested();
                    count.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_micros(100));
                }
            })
        };
        let wait = |cond: &dyn Fn() -> bool| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !cond() {
                assert!(Instant::now() < deadline, "timed out");
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        wait(&|| count.load(Ordering::SeqCst) > 10);
        assert!(!gate.is_parked());
        gate.request();
        wait(&|| gate.is_parked());
        let held = count.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(
            count.load(Ordering::SeqCst),
            held,
            "a parked worker does nothing"
        );
        gate.release();
        assert!(!gate.is_parked());
        wait(&|| count.load(Ordering::SeqCst) > held + 10);
        stop.store(true, Ordering::SeqCst);
        worker.join().unwrap();
    }

    /// Releasing without a request, or before the worker saw it, leaves it running.
    #[test]
    fn release_before_park() {
        let gate = PauseGate::new().unwrap();
        gate.release();
        gate.request();
        gate.release();
        gate.park_if_requested(); // returns at once: nothing is asked any more
        assert!(!gate.is_parked());
    }
}
