//! The VM's GSI routing table: KVM's default routes for the ISA and IOAPIC pins, plus MSI
//! routes for irqfds that MSI-X vectors are bound to. KVM_SET_GSI_ROUTING replaces the
//! whole table, so the table is kept here and committed whole on every change.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use devices::interrupt::MsiRoutes;
use kvm_bindings::{
    KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KvmIrqRouting, kvm_irq_routing_entry,
};
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// First GSI above the IOAPIC's 24 pins.
const FIRST_MSI_GSI: u32 = 24;
/// Routes KVM accepts on these machines.
const MAX_GSI: u32 = 4096;

fn io_err(e: kvm_ioctls::Error) -> std::io::Error {
    std::io::Error::from_raw_os_error(e.errno())
}

fn irqchip(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    e.u.irqchip.irqchip = chip;
    e.u.irqchip.pin = pin;
    e
}

/// KVM's default routing: GSI 0-15 to the PICs and the IOAPIC, 16-23 to the IOAPIC.
fn default_routes() -> Vec<kvm_irq_routing_entry> {
    let mut v = Vec::new();
    for gsi in 0..24 {
        if gsi < 16 {
            let chip = if gsi < 8 {
                KVM_IRQCHIP_PIC_MASTER
            } else {
                KVM_IRQCHIP_PIC_SLAVE
            };
            v.push(irqchip(gsi, chip, gsi % 8));
        }
        v.push(irqchip(gsi, KVM_IRQCHIP_IOAPIC, gsi));
    }
    v
}

#[derive(Debug)]
struct Table {
    msi: BTreeMap<u32, kvm_irq_routing_entry>,
    next_gsi: u32,
}

/// The routing table of a VM.
pub struct GsiRouter {
    vm: Arc<VmFd>,
    table: Mutex<Table>,
}

impl std::fmt::Debug for GsiRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GsiRouter").finish_non_exhaustive()
    }
}

impl GsiRouter {
    /// A router for `vm`, with the default routes installed.
    pub fn new(vm: Arc<VmFd>) -> std::io::Result<Self> {
        let r = Self {
            vm,
            table: Mutex::new(Table {
                msi: BTreeMap::new(),
                next_gsi: FIRST_MSI_GSI,
            }),
        };
        r.commit(&r.lock())?;
        Ok(r)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn commit(&self, t: &Table) -> std::io::Result<()> {
        let mut entries = default_routes();
        entries.extend(t.msi.values().copied());
        let routing = KvmIrqRouting::from_entries(&entries)
            .map_err(|_| std::io::Error::other("too many GSI routes"))?;
        self.vm.set_gsi_routing(&routing).map_err(io_err)
    }

    /// Reserves `n` GSIs for MSI routes.
    pub fn allocate(&self, n: u32) -> std::io::Result<Range<u32>> {
        let mut t = self.lock();
        let start = t.next_gsi;
        let end = start
            .checked_add(n)
            .filter(|e| *e <= MAX_GSI)
            .ok_or_else(|| std::io::Error::other("out of GSIs for MSI routes"))?;
        t.next_gsi = end;
        Ok(start..end)
    }

    /// Routes `gsi` to the MSI `address`/`data`.
    pub fn set_msi(&self, gsi: u32, address: u64, data: u32) -> std::io::Result<()> {
        let mut e = kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_MSI,
            ..Default::default()
        };
        e.u.msi.address_lo = address as u32;
        e.u.msi.address_hi = (address >> 32) as u32;
        e.u.msi.data = data;
        let mut t = self.lock();
        t.msi.insert(gsi, e);
        self.commit(&t)
    }

    /// Drops the routes of `gsis`.
    pub fn remove(&self, gsis: Range<u32>) -> std::io::Result<()> {
        let mut t = self.lock();
        for g in gsis {
            t.msi.remove(&g);
        }
        self.commit(&t)
    }
}

/// The MSI-X vectors of one function, each an irqfd on its own GSI.
pub struct KvmMsixRoutes {
    router: Arc<GsiRouter>,
    gsis: Range<u32>,
    irqfds: Vec<EventFd>,
}

impl std::fmt::Debug for KvmMsixRoutes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvmMsixRoutes")
            .field("gsis", &self.gsis)
            .finish_non_exhaustive()
    }
}

impl KvmMsixRoutes {
    /// `vectors` irqfds on fresh GSIs of `router`.
    pub fn new(router: Arc<GsiRouter>, vectors: u16) -> std::io::Result<Self> {
        let gsis = router.allocate(u32::from(vectors))?;
        let mut irqfds = Vec::with_capacity(usize::from(vectors));
        for gsi in gsis.clone() {
            let fd = EventFd::new(EFD_NONBLOCK)?;
            router.vm.register_irqfd(&fd, gsi).map_err(io_err)?;
            irqfds.push(fd);
        }
        Ok(Self {
            router,
            gsis,
            irqfds,
        })
    }

    /// The irqfd of `vector` (what an out-of-process device would be given).
    pub fn irqfd(&self, vector: u16) -> Option<&EventFd> {
        self.irqfds.get(usize::from(vector))
    }
}

impl MsiRoutes for KvmMsixRoutes {
    fn set_route(&self, vector: u16, address: u64, data: u32) -> std::io::Result<()> {
        let gsi = self.gsis.start + u32::from(vector);
        if !self.gsis.contains(&gsi) {
            return Err(std::io::Error::other("vector out of range"));
        }
        self.router.set_msi(gsi, address, data)
    }

    fn trigger(&self, vector: u16) -> std::io::Result<()> {
        self.irqfd(vector)
            .ok_or_else(|| std::io::Error::other("vector out of range"))?
            .write(1)
    }
}

impl Drop for KvmMsixRoutes {
    fn drop(&mut self) {
        for (fd, gsi) in self.irqfds.iter().zip(self.gsis.clone()) {
            let _ = self.router.vm.unregister_irqfd(fd, gsi);
        }
        let _ = self.router.remove(self.gsis.clone());
    }
}

/// Shared so every function's routes commit to one table.
pub type SharedRouter = Arc<GsiRouter>;
