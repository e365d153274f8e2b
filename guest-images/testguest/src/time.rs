//! Bounded waits on the time-stamp counter.
//!
//! The TSC rate is not known (the VMM need not report it), so durations are cycle counts
//! sized for the fastest plausible TSC: a delay is at least as long as asked, and a
//! budget is generous everywhere.

/// The fastest TSC assumed when a delay must last at least some time.
const MAX_TSC_HZ: u64 = 5_000_000_000;

/// Budget for anything the VMM must do for us (start an AP, deliver interrupts): several
/// seconds at any TSC rate, so a broken VMM fails a scenario rather than hanging it.
pub const BUDGET: u64 = 20_000_000_000;

/// The time-stamp counter.
pub fn rdtsc() -> u64 {
    // SAFETY: rdtsc reads a counter; CR4.TSD is clear, so ring 3 may execute it.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// A point in TSC time.
#[derive(Debug, Clone, Copy)]
pub struct Deadline(u64);

impl Deadline {
    /// `cycles` TSC cycles from now.
    pub fn after(cycles: u64) -> Self {
        Deadline(rdtsc().saturating_add(cycles))
    }

    /// Whether the deadline has passed.
    pub fn expired(&self) -> bool {
        rdtsc() >= self.0
    }
}

/// Waits at least `us` microseconds.
pub fn delay_us(us: u64) {
    let deadline = Deadline::after(us * (MAX_TSC_HZ / 1_000_000));
    while !deadline.expired() {
        core::hint::spin_loop();
    }
}

/// Spins until `done()` holds or [`BUDGET`] cycles pass; returns whether `done()` held,
/// and the cycles it took.
pub fn wait_until(mut done: impl FnMut() -> bool) -> (bool, u64) {
    let start = rdtsc();
    let deadline = Deadline::after(BUDGET);
    loop {
        if done() {
            return (true, rdtsc().wrapping_sub(start));
        }
        if deadline.expired() {
            return (false, rdtsc().wrapping_sub(start));
        }
        core::hint::spin_loop();
    }
}
