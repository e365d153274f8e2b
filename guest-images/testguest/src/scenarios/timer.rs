//! `timer`: the BSP's LAPIC timer, periodic, reaches the ring-0 handler from ring 3.

use super::{Ctx, Fail, ensure, info};
use crate::lapic::{self, Divide, reg};
use crate::ring0::{self, BSP_CPU, SPURIOUS_VECTOR};
use crate::time::{self, delay_us};

const VECTOR: u8 = 0x40;
/// Timer ticks per interrupt: 1.6 ms with KVM's 1 GHz APIC bus divided by 16.
const INITIAL_COUNT: u32 = 100_000;
/// Interrupts to see.
const WANT: u64 = 3;

/// See the module documentation.
pub fn run(ctx: &Ctx) -> Result<(), Fail> {
    lapic::enable(SPURIOUS_VECTOR);
    let count = || ring0::irq_count(BSP_CPU, VECTOR);
    let before = count();
    lapic::timer_periodic(VECTOR, Divide::By16, INITIAL_COUNT);
    let (done, cycles) = time::wait_until(|| count() - before >= WANT);
    let (lvt, current) = (lapic::read(reg::LVT_TIMER), lapic::read(reg::TIMER_CURRENT));
    lapic::timer_stop();
    let got = count() - before;
    ensure!(
        done,
        "{got} timer interrupts (vector {VECTOR:#x}) within {} TSC cycles, expected {WANT}; \
         LVT timer {lvt:#x}, current count {current:#x}",
        time::BUDGET
    );
    info!(
        ctx,
        "{got} interrupts on vector {VECTOR:#x} in {cycles} TSC cycles"
    );

    // Masked and stopped: at most one interrupt already on its way may still come, over
    // a wait of many periods.
    let stopped = count();
    delay_us(20_000);
    let late = count() - stopped;
    ensure!(
        late <= 1,
        "{late} timer interrupts after the timer was masked and stopped"
    );
    Ok(())
}
