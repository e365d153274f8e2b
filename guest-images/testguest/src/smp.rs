//! Starting the APs (INIT, SIPI, SIPI, as on hardware) and their ring-3 life: check in,
//! then park.

use core::sync::atomic::{AtomicU32, Ordering};

use crate::lapic::{self, ICR_ASSERT, ICR_INIT, ICR_STARTUP, IpiStuck};
use crate::ring0::{self, MAX_CPUS, TRAMPOLINE_ADDR};
use crate::time::delay_us;

/// APIC IDs an xAPIC can address (255 is the broadcast ID).
pub const MAX_APIC_ID: u32 = 254;

/// Check-ins per APIC ID, since the last [`prepare`].
static CHECKINS: [AtomicU32; 256] = [const { AtomicU32::new(0) }; 256];
/// Check-ins in all, since the last [`prepare`].
static CHECKED_IN: AtomicU32 = AtomicU32::new(0);
/// APIC ID of each CPU index (the order APs reached ring 0), for reports.
static CPU_APIC_ID: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(u32::MAX) }; MAX_CPUS];

/// Ring-3 entry of an AP (from ring0.s), `cpu` its index (1..MAX_CPUS).
pub extern "C" fn ap_main(cpu: u64) -> ! {
    let id = lapic::id();
    CPU_APIC_ID[cpu as usize].store(id, Ordering::Relaxed);
    if let Some(count) = CHECKINS.get(id as usize) {
        count.fetch_add(1, Ordering::Relaxed);
    }
    // Release: whoever sees the total sees the per-ID counts above.
    CHECKED_IN.fetch_add(1, Ordering::Release);
    ring0::park()
}

/// Gets ready to start APs: the trampoline at its page, check-ins cleared, ring 0's CPU
/// numbering and TSSes reset. Only while no AP runs.
pub fn prepare() {
    let code = ring0::trampoline();
    // SAFETY: TRAMPOLINE_ADDR..+4 KiB is low RAM the contract leaves free for it
    // (link.ld checks the code fits); no Rust object lives there.
    unsafe {
        core::ptr::copy_nonoverlapping(code.as_ptr(), TRAMPOLINE_ADDR as *mut u8, code.len())
    };
    for count in &CHECKINS {
        count.store(0, Ordering::Relaxed);
    }
    for id in &CPU_APIC_ID {
        id.store(u32::MAX, Ordering::Relaxed);
    }
    CHECKED_IN.store(0, Ordering::SeqCst);
    ring0::reset_ap_state();
}

/// Sends INIT to each APIC in `ids`, then two SIPIs each, with the delays hardware
/// wants (they cost nothing under KVM). One delay serves all APs.
pub fn start_aps(ids: impl Iterator<Item = u32> + Clone) -> Result<(), IpiStuck> {
    let vector = (TRAMPOLINE_ADDR >> 12) as u32;
    for id in ids.clone() {
        lapic::send_ipi(id, ICR_INIT | ICR_ASSERT)?;
    }
    delay_us(10_000);
    for _ in 0..2 {
        for id in ids.clone() {
            lapic::send_ipi(id, ICR_STARTUP | ICR_ASSERT | vector)?;
        }
        delay_us(200);
    }
    Ok(())
}

/// Check-ins since [`prepare`].
pub fn checked_in() -> u32 {
    CHECKED_IN.load(Ordering::Acquire)
}

/// How often the AP with APIC ID `id` checked in since [`prepare`].
pub fn checkins_of(id: u32) -> u32 {
    CHECKINS
        .get(id as usize)
        .map_or(0, |c| c.load(Ordering::Relaxed))
}

/// The APIC ID CPU index `cpu` reported, if it checked in.
pub fn apic_id_of_cpu(cpu: usize) -> Option<u32> {
    CPU_APIC_ID
        .get(cpu)
        .map(|id| id.load(Ordering::Relaxed))
        .filter(|&id| id != u32::MAX)
}
