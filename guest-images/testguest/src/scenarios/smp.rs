//! `smp`: start every AP the MADT lists; each checks in from ring 3, once, then parks.

use super::{Ctx, Fail, Join, ensure, info};
use crate::acpi::{self, ApicIds};
use crate::lapic;
use crate::ring0::{MAX_CPUS, SPURIOUS_VECTOR};
use crate::smp::{self, MAX_APIC_ID};
use crate::time::{self, delay_us};

/// See the module documentation.
pub fn run(ctx: &Ctx) -> Result<(), Fail> {
    let madt = acpi::madt()?;
    let list = ApicIds::from_madt(&madt)?;
    let ids = list.as_slice();
    ensure!(!ids.is_empty(), "the MADT lists no enabled local APIC");
    ensure!(
        ids.len() <= MAX_CPUS,
        "the MADT lists {} CPUs, the guest supports {MAX_CPUS}",
        ids.len()
    );
    if let Some(id) = list.first_duplicate() {
        return Err(super::fail!("the MADT lists APIC ID {id} twice"));
    }
    if let Some(id) = ids.iter().find(|&&id| id > MAX_APIC_ID) {
        return Err(super::fail!(
            "APIC ID {id} cannot be addressed in xAPIC mode"
        ));
    }
    let bsp = lapic::id();
    ensure!(
        ids.contains(&bsp),
        "the BSP's APIC ID {bsp} is not in the MADT ({})",
        Join(ids.iter(), ", ")
    );
    if ids.len() == 1 {
        info!(ctx, "1 vCPU (APIC ID {bsp}): no AP to start");
        return Ok(());
    }

    lapic::enable(SPURIOUS_VECTOR);
    smp::prepare();
    let aps = ids.iter().copied().filter(|&id| id != bsp);
    let start = time::rdtsc();
    smp::start_aps(aps.clone())?;
    let want = ids.len() as u32 - 1;
    let (all_in, _) = time::wait_until(|| smp::checked_in() >= want);
    let cycles = time::rdtsc() - start;
    // Give a second start of the same AP time to show up before counting.
    delay_us(10_000);

    let missing = aps.clone().filter(|&id| smp::checkins_of(id) == 0);
    let repeated = aps.clone().filter(|&id| smp::checkins_of(id) > 1);
    let total = smp::checked_in();
    ensure!(
        all_in,
        "{total} of {want} APs checked in within {} TSC cycles; missing APIC IDs: {}",
        time::BUDGET,
        Join(missing, ", ")
    );
    ensure!(
        repeated.clone().next().is_none(),
        "APs checked in more than once: APIC IDs {}",
        Join(repeated, ", ")
    );
    ensure!(
        total == want,
        "{total} check-ins for {want} APs: an AP not in the MADT started"
    );
    let cpus =
        (1..=want as usize).filter_map(|cpu| smp::apic_id_of_cpu(cpu).map(|id| CpuId(cpu, id)));
    info!(
        ctx,
        "{want} APs checked in and parked {cycles} TSC cycles after the first INIT \
         (the INIT and SIPI delays included): {}",
        Join(cpus, ", ")
    );
    Ok(())
}

/// "cpu<index>=apic<id>", for the report.
#[derive(Debug, Clone, Copy)]
struct CpuId(usize, u32);

impl core::fmt::Display for CpuId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "cpu{}=apic{}", self.0, self.1)
    }
}
