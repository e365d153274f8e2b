//! The architectural state of one vCPU, as KVM hands it out: what a snapshot or a migration
//! carries, saved and restored in the order that works (Firecracker's, with the pitfalls
//! it found; see docs/architecture.md):
//!
//! - save: MP_STATE first (it runs the LAPIC's pending INIT/SIPI), then REGS, SREGS, XSAVE,
//!   XCRS, DEBUGREGS, LAPIC, TSC_KHZ, CPUID2, MSRs, VCPU_EVENTS last;
//! - restore into a fresh vCPU that never ran: CPUID2 first, MP_STATE, REGS, SREGS (SET_REGS
//!   clears pending exceptions, and the LAPIC needs the APIC base from SREGS), XSAVE, XCRS,
//!   DEBUGREGS, LAPIC, the MSRs without TSC_DEADLINE, then TSC_DEADLINE alone (KVM drops a
//!   deadline set before the LAPIC and TSC), VCPU_EVENTS last.

use kvm_bindings::{
    CpuId, Msrs, kvm_cpuid_entry2, kvm_debugregs, kvm_fpu, kvm_lapic_state, kvm_mp_state,
    kvm_msr_entry, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use kvm_ioctls::{Kvm, VcpuFd};

/// Errors saving or restoring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum CpuStateError {
    /// An ioctl failed.
    #[error("KVM {0} failed")]
    Ioctl(&'static str, #[source] kvm_ioctls::Error),
    /// KVM took fewer MSRs than it was given.
    #[error("KVM_SET_MSRS took {0} of {1} MSRs (first refused: {2:#x})")]
    MsrsRefused(usize, usize, u32),
    /// A table too large for KVM's fixed-size arrays.
    #[error("too many {0} entries")]
    TooMany(&'static str),
}

fn ioctl<T>(what: &'static str, r: Result<T, kvm_ioctls::Error>) -> Result<T, CpuStateError> {
    r.map_err(|e| CpuStateError::Ioctl(what, e))
}

/// Most entries one KVM_GET/SET_MSRS takes here.
const MSR_CHUNK: usize = 64;
/// MSR_IA32_TSC_DEADLINE.
const MSR_TSC_DEADLINE: u32 = 0x6e0;
/// Most CPUID entries a vCPU has.
const MAX_CPUID: usize = kvm_bindings::KVM_MAX_CPUID_ENTRIES;

/// Whether a vCPU's MSR `index` is state a snapshot must carry (KVM_GET_MSR_INDEX_LIST also
/// lists MSRs GET_MSRS refuses, such as the PMU's).
pub fn msr_is_saved(index: u32) -> bool {
    matches!(
        index,
        0x10                       // TSC
        | 0x1b                     // APIC base
        | 0x3a                     // feature control
        | 0x174..=0x176            // SYSENTER_CS/ESP/EIP
        | 0x1a0                    // MISC_ENABLE
        | 0x277                    // PAT
        | 0x2ff                    // MTRR default type
        | 0x200..=0x20f            // variable MTRRs
        | 0x250 | 0x258 | 0x259    // fixed MTRRs
        | 0x268..=0x26f
        | MSR_TSC_DEADLINE
        | 0xda0                    // XSS
        | 0xc000_0080              // EFER
        | 0xc000_0081..=0xc000_0084 // STAR, LSTAR, CSTAR, SFMASK
        | 0xc000_0100..=0xc000_0103 // FS/GS/KERNEL_GS base, TSC_AUX
        | 0x4b56_4d00..=0x4b56_4dff // KVM paravirtual: kvmclock, async PF, steal time, PV EOI
    )
}

/// The MSRs to save on this host: KVM's index list through [`msr_is_saved`].
pub fn saved_msr_indices(kvm: &Kvm) -> Result<Vec<u32>, CpuStateError> {
    let list = ioctl("KVM_GET_MSR_INDEX_LIST", kvm.get_msr_index_list())?;
    Ok(list
        .as_slice()
        .iter()
        .copied()
        .filter(|&i| msr_is_saved(i))
        .collect())
}

/// One vCPU's state.
pub struct CpuState {
    /// MP state (runnable, halted, waiting for SIPI).
    pub mp_state: kvm_mp_state,
    /// General-purpose registers.
    pub regs: kvm_regs,
    /// Segment and control registers.
    pub sregs: kvm_sregs,
    /// FPU, SSE and extended state (the legacy 4 KiB KVM_GET_XSAVE area), when KVM has
    /// XSAVE; else the FPU alone.
    pub xsave: Option<kvm_xsave>,
    /// FPU state, when there is no XSAVE.
    pub fpu: Option<kvm_fpu>,
    /// Extended control registers (XCR0), when KVM has them.
    pub xcrs: Option<kvm_xcrs>,
    /// Debug registers.
    pub debugregs: kvm_debugregs,
    /// The local APIC's registers.
    pub lapic: kvm_lapic_state,
    /// TSC frequency, when KVM reports it.
    pub tsc_khz: Option<u32>,
    /// The CPUID table the vCPU was given.
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// The MSRs of [`saved_msr_indices`].
    pub msrs: Vec<kvm_msr_entry>,
    /// Pending exceptions, interrupts, NMIs, SMIs.
    pub events: kvm_vcpu_events,
}

impl std::fmt::Debug for CpuState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuState")
            .field("mp_state", &self.mp_state.mp_state)
            .field("rip", &self.regs.rip)
            .field("msrs", &self.msrs.len())
            .finish_non_exhaustive()
    }
}

/// What this host's KVM can save beyond the basics.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuStateCaps {
    /// KVM_CAP_XSAVE.
    pub xsave: bool,
    /// KVM_CAP_XCRS.
    pub xcrs: bool,
}

impl CpuStateCaps {
    /// Asks `kvm`.
    pub fn of(kvm: &Kvm) -> Self {
        Self {
            xsave: kvm.check_extension(kvm_ioctls::Cap::Xsave),
            xcrs: kvm.check_extension(kvm_ioctls::Cap::Xcrs),
        }
    }
}

fn get_msrs(fd: &VcpuFd, indices: &[u32]) -> Result<Vec<kvm_msr_entry>, CpuStateError> {
    let mut out = Vec::with_capacity(indices.len());
    for chunk in indices.chunks(MSR_CHUNK) {
        let entries: Vec<kvm_msr_entry> = chunk
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| CpuStateError::TooMany("MSR"))?;
        let n = ioctl("KVM_GET_MSRS", fd.get_msrs(&mut msrs))?;
        // KVM stops at the first MSR it cannot read; the rest are not state it has.
        out.extend_from_slice(&msrs.as_slice()[..n.min(chunk.len())]);
    }
    Ok(out)
}

fn set_msrs(fd: &VcpuFd, entries: &[kvm_msr_entry]) -> Result<(), CpuStateError> {
    for chunk in entries.chunks(MSR_CHUNK) {
        let msrs = Msrs::from_entries(chunk).map_err(|_| CpuStateError::TooMany("MSR"))?;
        let n = ioctl("KVM_SET_MSRS", fd.set_msrs(&msrs))?;
        if n != chunk.len() {
            return Err(CpuStateError::MsrsRefused(n, chunk.len(), chunk[n].index));
        }
    }
    Ok(())
}

/// Saves the state of `fd`, which must not be running (its thread is parked or it is the
/// calling thread's own vCPU).
pub fn save(
    fd: &VcpuFd,
    caps: CpuStateCaps,
    msr_indices: &[u32],
) -> Result<CpuState, CpuStateError> {
    let mp_state = ioctl("KVM_GET_MP_STATE", fd.get_mp_state())?;
    let regs = ioctl("KVM_GET_REGS", fd.get_regs())?;
    let sregs = ioctl("KVM_GET_SREGS", fd.get_sregs())?;
    let (xsave, fpu) = if caps.xsave {
        (Some(ioctl("KVM_GET_XSAVE", fd.get_xsave())?), None)
    } else {
        (None, Some(ioctl("KVM_GET_FPU", fd.get_fpu())?))
    };
    let xcrs = if caps.xcrs {
        Some(ioctl("KVM_GET_XCRS", fd.get_xcrs())?)
    } else {
        None
    };
    let debugregs = ioctl("KVM_GET_DEBUGREGS", fd.get_debug_regs())?;
    let lapic = ioctl("KVM_GET_LAPIC", fd.get_lapic())?;
    let tsc_khz = fd.get_tsc_khz().ok();
    let cpuid = ioctl("KVM_GET_CPUID2", fd.get_cpuid2(MAX_CPUID))?
        .as_slice()
        .to_vec();
    let msrs = get_msrs(fd, msr_indices)?;
    let events = ioctl("KVM_GET_VCPU_EVENTS", fd.get_vcpu_events())?;
    Ok(CpuState {
        mp_state,
        regs,
        sregs,
        xsave,
        fpu,
        xcrs,
        debugregs,
        lapic,
        tsc_khz,
        cpuid,
        msrs,
        events,
    })
}

/// Restores `state` into `fd`, a vCPU that has not run since it was created. The TSC
/// frequency is not changed (these hosts have no TSC scaling); a caller that migrates
/// between hosts compares it first.
pub fn restore(fd: &VcpuFd, state: &CpuState) -> Result<(), CpuStateError> {
    let cpuid = CpuId::from_entries(&state.cpuid).map_err(|_| CpuStateError::TooMany("CPUID"))?;
    ioctl("KVM_SET_CPUID2", fd.set_cpuid2(&cpuid))?;
    ioctl("KVM_SET_MP_STATE", fd.set_mp_state(state.mp_state))?;
    ioctl("KVM_SET_REGS", fd.set_regs(&state.regs))?;
    ioctl("KVM_SET_SREGS", fd.set_sregs(&state.sregs))?;
    if let Some(xsave) = &state.xsave {
        // SAFETY: `xsave` is a full legacy 4 KiB area, as KVM_GET_XSAVE returned it.
        ioctl("KVM_SET_XSAVE", unsafe { fd.set_xsave(xsave) })?;
    }
    if let Some(fpu) = &state.fpu {
        ioctl("KVM_SET_FPU", fd.set_fpu(fpu))?;
    }
    if let Some(xcrs) = &state.xcrs {
        ioctl("KVM_SET_XCRS", fd.set_xcrs(xcrs))?;
    }
    ioctl("KVM_SET_DEBUGREGS", fd.set_debug_regs(&state.debugregs))?;
    ioctl("KVM_SET_LAPIC", fd.set_lapic(&state.lapic))?;
    let (deadline, others): (Vec<_>, Vec<_>) =
        state.msrs.iter().partition(|m| m.index == MSR_TSC_DEADLINE);
    set_msrs(fd, &others)?;
    set_msrs(fd, &deadline)?;
    ioctl("KVM_SET_VCPU_EVENTS", fd.set_vcpu_events(&state.events))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msr_allow_list() {
        for saved in [
            0x10,
            0x1b,
            0x6e0,
            0xc000_0080,
            0xc000_0102,
            0x4b56_4d01,
            0x277,
        ] {
            assert!(msr_is_saved(saved), "{saved:#x}");
        }
        // PMU counters and event selects, and MSRs nobody lists, are not state we carry.
        for not in [0xc1, 0x186, 0x38f, 0xc001_0000, 0x1234] {
            assert!(!msr_is_saved(not), "{not:#x}");
        }
    }
}
