//! The KVM VM: memory slots, KVM's split irqchip (local APICs in the kernel; the IOAPIC in
//! this process, no PIC, no PIT), irqfds, and vCPU creation with CPUID, MSRs, LAPIC and
//! boot registers.

use devices::GuestMemory;
use kvm_bindings::{
    KVM_CAP_SPLIT_IRQCHIP, KVM_MAX_CPUID_ENTRIES, Msrs, kvm_enable_cap, kvm_userspace_memory_region,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use std::sync::Arc;

use devices::bits::{hi32, lo32};
use devices::interrupt::{DoorbellRegistry, MsiSink};
use kvm_bindings::kvm_msi;
use kvm_ioctls::{IoEventAddress, NoDatamatch};

use super::cpu_state::CpuStateCaps;
use crate::boot::cpuid::{CpuTemplate, host_brand, vcpu_cpuid_with_brand};
use crate::boot::regs;
use crate::memory::layout;
use devices::legacy::ioapic::IOAPIC_PINS;

/// Errors from KVM.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// /dev/kvm cannot be opened.
    #[error("cannot open /dev/kvm (is KVM enabled and accessible to this user?)")]
    Open(#[source] kvm_ioctls::Error),
    /// The KVM API version is not 12.
    #[error("unsupported KVM API version {0}")]
    ApiVersion(i32),
    /// A capability the VMM needs is missing.
    #[error("KVM lacks a required capability: {0:?}")]
    MissingCap(Cap),
    /// More vCPUs than KVM supports.
    #[error("{0} vCPUs requested but this host's KVM supports at most {1}")]
    TooManyVcpus(u8, usize),
    /// An ioctl failed.
    #[error("KVM {0} failed")]
    Ioctl(&'static str, #[source] kvm_ioctls::Error),
    /// Reading what a vCPU state carries failed.
    #[error("cannot list the vCPU state")]
    CpuState(#[source] Box<super::cpu_state::CpuStateError>),
}

fn ioctl<T>(what: &'static str, r: Result<T, kvm_ioctls::Error>) -> Result<T, KvmError> {
    r.map_err(|e| KvmError::Ioctl(what, e))
}

/// A KVM VM with its irqchip.
#[derive(Debug)]
pub struct Vm {
    kvm: Kvm,
    fd: Arc<VmFd>,
    /// KVM emulates the LAPIC timer's TSC-deadline mode.
    tsc_deadline: bool,
    /// KVM_GET_SUPPORTED_CPUID, asked once per VM rather than once per vCPU.
    supported_cpuid: std::sync::OnceLock<Vec<kvm_bindings::kvm_cpuid_entry2>>,
    /// The MSRs a saved vCPU carries, asked for the first time a state is saved.
    saved_msrs: std::sync::OnceLock<Arc<Vec<u32>>>,
    /// The host CPU's brand string leaves.
    host_brand: std::sync::OnceLock<Option<[[u32; 4]; 3]>>,
}

/// CPUID.1:ECX bit 24, the LAPIC timer's TSC-deadline mode. KVM emulates it without listing
/// it in KVM_GET_SUPPORTED_CPUID; the VMM sets it when KVM_CAP_TSC_DEADLINE_TIMER says so.
/// With no PIT, it is what lets Linux skip calibrating the LAPIC timer against one.
const CPUID_1_ECX_TSC_DEADLINE: u32 = 24;

impl Vm {
    /// Creates the VM with a split irqchip (local APICs in KVM, [`IOAPIC_PINS`] GSIs
    /// reserved for the IOAPIC this process emulates) and KVM's private pages in the hole.
    ///
    /// Neither a PIC nor a PIT is created: both would cost SRCU grace periods at creation
    /// and teardown (tens of milliseconds), and guests use the LAPIC timer and kvmclock.
    pub fn new(num_vcpus: u8) -> Result<Self, KvmError> {
        let kvm = Kvm::new().map_err(KvmError::Open)?;
        let version = kvm.get_api_version();
        if version != 12 {
            return Err(KvmError::ApiVersion(version));
        }
        for cap in [
            Cap::SplitIrqchip,
            Cap::Irqfd,
            Cap::Ioeventfd,
            Cap::UserMemory,
            Cap::ImmediateExit,
        ] {
            if !kvm.check_extension(cap) {
                return Err(KvmError::MissingCap(cap));
            }
        }
        let max = kvm.get_max_vcpus();
        if usize::from(num_vcpus) > max {
            return Err(KvmError::TooManyVcpus(num_vcpus, max));
        }
        let fd = ioctl("KVM_CREATE_VM", kvm.create_vm())?;
        ioctl(
            "KVM_SET_TSS_ADDR",
            fd.set_tss_address(const { layout::addr32(layout::KVM_TSS_START) } as usize),
        )?;
        ioctl(
            "KVM_SET_IDENTITY_MAP_ADDR",
            fd.set_identity_map_address(layout::KVM_IDENTITY_MAP_START),
        )?;
        let mut split = kvm_enable_cap {
            cap: KVM_CAP_SPLIT_IRQCHIP,
            ..Default::default()
        };
        split.args[0] = IOAPIC_PINS as u64;
        ioctl(
            "KVM_ENABLE_CAP(KVM_CAP_SPLIT_IRQCHIP)",
            fd.enable_cap(&split),
        )?;
        let tsc_deadline = kvm.check_extension(Cap::TscDeadlineTimer);
        Ok(Self {
            kvm,
            fd: Arc::new(fd),
            tsc_deadline,
            supported_cpuid: std::sync::OnceLock::new(),
            saved_msrs: std::sync::OnceLock::new(),
            host_brand: std::sync::OnceLock::new(),
        })
    }

    /// The VM file descriptor.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// Whether dropping this closes the VM's fd (nothing else holds it: routes, irqfd
    /// owners and MSI sinks are gone).
    pub fn is_last_holder(&self) -> bool {
        Arc::strong_count(&self.fd) == 1
    }

    /// The VM's GSI routing table (installs KVM's default routes).
    pub fn gsi_router(&self) -> std::io::Result<Arc<super::irq_routing::GsiRouter>> {
        super::irq_routing::GsiRouter::new(self.fd.clone()).map(Arc::new)
    }

    /// A doorbell registry backed by KVM ioeventfds.
    pub fn doorbells(&self) -> Arc<KvmDoorbells> {
        Arc::new(KvmDoorbells(self.fd.clone()))
    }

    /// An MSI sink that injects through KVM_SIGNAL_MSI.
    pub fn msi_sink(&self) -> Arc<KvmMsi> {
        Arc::new(KvmMsi(self.fd.clone()))
    }

    /// Registers every region of `mem` as a memory slot.
    pub fn register_memory(&self, mem: &GuestMemory) -> Result<(), KvmError> {
        for (slot, region) in (0u32..).zip(mem.iter()) {
            let host = mem.get_host_address(region.start_addr()).map_err(|_| {
                KvmError::Ioctl(
                    "KVM_SET_USER_MEMORY_REGION",
                    kvm_ioctls::Error::new(libc::EFAULT),
                )
            })?;
            let mr = kvm_userspace_memory_region {
                slot,
                flags: 0,
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the host range is a live mapping owned by `mem`, which the caller keeps
            // alive as long as the VM (both are owned by the same VM object), and slots do not
            // overlap because `mem`'s regions do not.
            ioctl("KVM_SET_USER_MEMORY_REGION", unsafe {
                self.fd.set_user_memory_region(mr)
            })?;
        }
        Ok(())
    }

    /// Creates vCPU `id` with nothing set: what a restore loads a saved state into.
    pub fn create_plain_vcpu(&self, id: u8) -> Result<VcpuFd, KvmError> {
        ioctl("KVM_CREATE_VCPU", self.fd.create_vcpu(u64::from(id)))
    }

    /// Creates vCPU `id` of `num_vcpus` for a fresh boot: CPUID from `template`, MSRs, FPU
    /// and LAPIC at their boot values. The boot vCPU (id 0) also gets its 64-bit entry
    /// registers; the others stay in KVM's wait-for-SIPI state, as application processors
    /// do on hardware.
    pub fn create_boot_vcpu(
        &self,
        id: u8,
        num_vcpus: u8,
        template: CpuTemplate,
        entry: GuestAddress,
    ) -> Result<VcpuFd, KvmError> {
        let vcpu = self.create_plain_vcpu(id)?;
        self.set_cpuid(&vcpu, id, num_vcpus, template)?;
        let msrs = ioctl(
            "building the MSR list",
            Msrs::from_entries(&regs::boot_msrs()).map_err(|_| kvm_ioctls::Error::new(libc::E2BIG)),
        )?;
        let set = ioctl("KVM_SET_MSRS", vcpu.set_msrs(&msrs))?;
        if set != msrs.as_slice().len() {
            return Err(KvmError::Ioctl(
                "KVM_SET_MSRS",
                kvm_ioctls::Error::new(libc::EINVAL),
            ));
        }
        ioctl("KVM_SET_FPU", vcpu.set_fpu(&regs::boot_fpu()))?;
        let mut lapic = ioctl("KVM_GET_LAPIC", vcpu.get_lapic())?;
        regs::set_lint_pins(&mut lapic);
        ioctl("KVM_SET_LAPIC", vcpu.set_lapic(&lapic))?;
        if id == 0 {
            let sregs = ioctl("KVM_GET_SREGS", vcpu.get_sregs())?;
            ioctl("KVM_SET_SREGS", vcpu.set_sregs(&regs::boot_sregs(sregs)))?;
            ioctl("KVM_SET_REGS", vcpu.set_regs(&regs::boot_regs(entry)))?;
        }
        Ok(vcpu)
    }

    /// Gives `vcpu` the CPUID of vCPU `id` of `num_vcpus` under `template`.
    fn set_cpuid(
        &self,
        vcpu: &VcpuFd,
        id: u8,
        num_vcpus: u8,
        template: CpuTemplate,
    ) -> Result<(), KvmError> {
        let supported = match self.supported_cpuid.get() {
            Some(s) => s,
            None => {
                let s = ioctl(
                    "KVM_GET_SUPPORTED_CPUID",
                    self.kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES),
                )?;
                self.supported_cpuid.get_or_init(|| s.as_slice().to_vec())
            }
        };
        // The host's brand string, read once per VM (each CPUID traps when the host is
        // itself a VM).
        let brand = *self.host_brand.get_or_init(host_brand);
        let mut entries = vcpu_cpuid_with_brand(supported, template, id, num_vcpus, brand);
        if self.tsc_deadline {
            for e in entries.iter_mut().filter(|e| e.function == 1) {
                e.ecx |= 1 << CPUID_1_ECX_TSC_DEADLINE;
            }
        }
        let cpuid = ioctl(
            "building the CPUID table",
            kvm_bindings::CpuId::from_entries(&entries)
                .map_err(|_| kvm_ioctls::Error::new(libc::E2BIG)),
        )?;
        ioctl("KVM_SET_CPUID2", vcpu.set_cpuid2(&cpuid))
    }

    /// What KVM can save of a vCPU on this host.
    pub fn cpu_state_caps(&self) -> CpuStateCaps {
        CpuStateCaps::of(&self.kvm)
    }

    /// The MSRs a saved vCPU state carries on this host (asked once).
    pub fn saved_msrs(&self) -> Result<Arc<Vec<u32>>, KvmError> {
        if let Some(list) = self.saved_msrs.get() {
            return Ok(list.clone());
        }
        let list = Arc::new(
            super::cpu_state::saved_msr_indices(&self.kvm)
                .map_err(|e| KvmError::CpuState(Box::new(e)))?,
        );
        Ok(self.saved_msrs.get_or_init(|| list).clone())
    }
}

/// Delivers MSIs with KVM_SIGNAL_MSI: the address and data the guest programmed go to the
/// in-kernel LAPICs as they are.
#[derive(Debug)]
pub struct KvmMsi(Arc<VmFd>);

impl MsiSink for KvmMsi {
    fn send_msi(&self, address: u64, data: u32) -> std::io::Result<()> {
        let msi = kvm_msi {
            address_lo: lo32(address),
            address_hi: hi32(address),
            data,
            ..Default::default()
        };
        self.0
            .signal_msi(msi)
            .map(|_| ())
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }
}

/// Doorbells as KVM ioeventfds: a guest write to the address (any length) signals the
/// eventfd in the kernel, without an exit to this process.
#[derive(Debug)]
pub struct KvmDoorbells(Arc<VmFd>);

impl DoorbellRegistry for KvmDoorbells {
    fn register(&self, addr: u64, evt: &EventFd) -> std::io::Result<()> {
        self.0
            .register_ioevent(evt, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }

    fn unregister(&self, addr: u64, evt: &EventFd) -> std::io::Result<()> {
        self.0
            .unregister_ioevent(evt, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }
}
