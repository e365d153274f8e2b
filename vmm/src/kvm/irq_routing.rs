//! The VM's GSI routing table. Under KVM's split irqchip every route is an MSI: GSIs 0-23
//! carry the IOAPIC's pins (the emulated IOAPIC sets each route from the pin's
//! redirection entry; KVM scans these routes for level-triggered vectors that need an EOI
//! exit), GSIs from 24 up carry the MSI-X vectors of PCI functions, each bound to an
//! irqfd. KVM_SET_GSI_ROUTING replaces the whole table, so the table is kept here and
//! committed whole on every change. MSI-X GSIs come from vm-allocator's `IdAllocator`, so
//! those of a removed device are reused by the next.

use devices::sync::lock;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use devices::bits::{hi32, lo32};
use devices::interrupt::MsiRoutes;
use devices::legacy::ioapic::{IOAPIC_NUM_PINS, IOAPIC_PINS};
use kvm_bindings::{KVM_IRQ_ROUTING_MSI, KvmIrqRouting, kvm_irq_routing_entry};
use kvm_ioctls::VmFd;
use vm_allocator::IdAllocator;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// First GSI above the IOAPIC's pins.
const FIRST_MSI_GSI: u32 = IOAPIC_NUM_PINS;
/// Routes KVM accepts on these machines.
const MAX_GSI: u32 = 4096;

fn io_err(e: kvm_ioctls::Error) -> std::io::Error {
    std::io::Error::from_raw_os_error(e.errno())
}

#[derive(Debug)]
struct Table {
    msi: BTreeMap<u32, kvm_irq_routing_entry>,
    gsis: IdAllocator,
}

/// The routing table of a VM.
pub struct GsiRouter {
    vm: Arc<VmFd>,
    table: Mutex<Table>,
    /// The VM is ending: see [`GsiRouter::close`].
    closing: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for GsiRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GsiRouter").finish_non_exhaustive()
    }
}

impl GsiRouter {
    /// A router for `vm`, with no routes yet.
    pub fn new(vm: Arc<VmFd>) -> std::io::Result<Self> {
        let r = Self {
            vm,
            table: Mutex::new(Table {
                msi: BTreeMap::new(),
                gsis: IdAllocator::new(FIRST_MSI_GSI, MAX_GSI - 1)
                    .map_err(std::io::Error::other)?,
            }),
            closing: std::sync::atomic::AtomicBool::new(false),
        };
        r.commit(&r.lock())?;
        Ok(r)
    }

    /// The VM is ending: closing its fd releases every route and irqfd at once, so routes
    /// dropped from now on skip their one-by-one KVM_IRQFD deassigns and routing commits
    /// (each deassign can wait for the kernel to flush its irqfd work).
    pub fn close(&self) {
        self.closing
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn is_closing(&self) -> bool {
        self.closing.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        lock(&self.table)
    }

    fn commit(&self, t: &Table) -> std::io::Result<()> {
        let entries: Vec<_> = t.msi.values().copied().collect();
        let routing = KvmIrqRouting::from_entries(&entries)
            .map_err(|_| std::io::Error::other("too many GSI routes"))?;
        self.vm.set_gsi_routing(&routing).map_err(io_err)
    }

    /// Reserves `n` GSIs for MSI routes (the lowest free ones, not necessarily
    /// consecutive); all or none.
    pub fn allocate(&self, n: u32) -> std::io::Result<Vec<u32>> {
        let mut t = self.lock();
        let mut got = Vec::with_capacity(n as usize);
        for _ in 0..n {
            match t.gsis.allocate_id() {
                Ok(g) => got.push(g),
                Err(e) => {
                    for g in got {
                        let _ = t.gsis.free_id(g);
                    }
                    return Err(std::io::Error::other(format!(
                        "out of GSIs for MSI routes: {e}"
                    )));
                }
            }
        }
        Ok(got)
    }

    /// Routes `gsi` to the MSI `address`/`data`.
    pub fn set_msi(&self, gsi: u32, address: u64, data: u32) -> std::io::Result<()> {
        let mut e = kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_MSI,
            ..Default::default()
        };
        e.u.msi.address_lo = lo32(address);
        e.u.msi.address_hi = hi32(address);
        e.u.msi.data = data;
        let mut t = self.lock();
        t.msi.insert(gsi, e);
        self.commit(&t)
    }

    /// Drops the routes of `gsis` (not from the allocator) without freeing them.
    fn drop_routes(&self, gsis: &[u32]) -> std::io::Result<()> {
        let mut t = self.lock();
        for g in gsis {
            t.msi.remove(g);
        }
        self.commit(&t)
    }

    /// Drops the routes of `gsis` and frees them for reuse.
    pub fn remove(&self, gsis: &[u32]) -> std::io::Result<()> {
        let mut t = self.lock();
        for &g in gsis {
            t.msi.remove(&g);
            let _ = t.gsis.free_id(g);
        }
        self.commit(&t)
    }
}

/// The MSI-X vectors of one function, each an irqfd on its own GSI.
pub struct KvmMsixRoutes {
    router: Arc<GsiRouter>,
    /// The GSI of each vector.
    gsis: Vec<u32>,
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
        // Should a registration fail, dropping `routes` unregisters the irqfds registered
        // so far (paired with the first GSIs) and frees every GSI.
        let mut routes = Self {
            router,
            irqfds: Vec::with_capacity(gsis.len()),
            gsis,
        };
        for &gsi in &routes.gsis {
            let fd = EventFd::new(EFD_NONBLOCK)?;
            routes.router.vm.register_irqfd(&fd, gsi).map_err(io_err)?;
            routes.irqfds.push(fd);
        }
        Ok(routes)
    }

    /// The irqfd of `vector` (what an out-of-process device would be given).
    pub fn irqfd(&self, vector: u16) -> Option<&EventFd> {
        self.irqfds.get(usize::from(vector))
    }
}

impl MsiRoutes for KvmMsixRoutes {
    fn set_route(&self, vector: u16, address: u64, data: u32) -> std::io::Result<()> {
        let gsi = *self
            .gsis
            .get(usize::from(vector))
            .ok_or_else(|| std::io::Error::other("vector out of range"))?;
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
        if self.router.is_closing() {
            return;
        }
        for (fd, &gsi) in self.irqfds.iter().zip(&self.gsis) {
            let _ = self.router.vm.unregister_irqfd(fd, gsi);
        }
        let _ = self.router.remove(&self.gsis);
    }
}

/// The MSI-X vectors of a function in another process (a vfio-user device): each an
/// eventfd on its own GSI, registered as a KVM irqfd only while the vector may be delivered.
/// KVM delivers, on registration, what the eventfd counted while it was not registered, so
/// a vector raised while masked is its pending bit and fires on unmask, with no VMM thread
/// watching it.
pub struct KvmExternalVectors {
    router: Arc<GsiRouter>,
    gsis: Vec<u32>,
    eventfds: Vec<EventFd>,
    /// Which eventfds are registered as irqfds.
    connected: Mutex<Vec<bool>>,
}

impl std::fmt::Debug for KvmExternalVectors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvmExternalVectors")
            .field("gsis", &self.gsis)
            .finish_non_exhaustive()
    }
}

impl KvmExternalVectors {
    /// `vectors` eventfds on fresh GSIs of `router`, none connected.
    pub fn new(router: Arc<GsiRouter>, vectors: u16) -> std::io::Result<Self> {
        let gsis = router.allocate(u32::from(vectors))?;
        let eventfds = (0..vectors)
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<std::io::Result<Vec<_>>>();
        let eventfds = match eventfds {
            Ok(e) => e,
            Err(e) => {
                let _ = router.remove(&gsis);
                return Err(e);
            }
        };
        Ok(Self {
            connected: Mutex::new(vec![false; gsis.len()]),
            router,
            gsis,
            eventfds,
        })
    }

    fn gsi(&self, vector: u16) -> std::io::Result<u32> {
        self.gsis
            .get(usize::from(vector))
            .copied()
            .ok_or_else(|| std::io::Error::other("vector out of range"))
    }
}

impl devices::interrupt::ExternalVectors for KvmExternalVectors {
    fn vectors(&self) -> u16 {
        u16::try_from(self.gsis.len()).unwrap_or(u16::MAX)
    }

    fn eventfd(&self, vector: u16) -> Option<&EventFd> {
        self.eventfds.get(usize::from(vector))
    }

    fn set_route(&self, vector: u16, address: u64, data: u32) -> std::io::Result<()> {
        self.router.set_msi(self.gsi(vector)?, address, data)
    }

    fn set_masked(&self, vector: u16, masked: bool) -> std::io::Result<()> {
        let gsi = self.gsi(vector)?;
        let v = usize::from(vector);
        let mut connected = lock(&self.connected);
        if connected[v] != masked {
            return Ok(());
        }
        let fd = &self.eventfds[v];
        if masked {
            self.router.vm.unregister_irqfd(fd, gsi).map_err(io_err)?;
        } else {
            self.router.vm.register_irqfd(fd, gsi).map_err(io_err)?;
            // KVM injects at registration if the eventfd counted raises meanwhile, but
            // leaves the count: drain it, so it does not later read as pending. A raise
            // after the registration is consumed and injected by KVM itself.
            let _ = fd.read();
        }
        connected[v] = !masked;
        Ok(())
    }

    fn is_pending(&self, vector: u16) -> bool {
        let Some(fd) = self.eventfds.get(usize::from(vector)) else {
            return false;
        };
        let mut p = libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(fd),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, a zero timeout; the eventfd outlives the call.
        let n = unsafe { libc::poll(&raw mut p, 1, 0) };
        n == 1 && p.revents & libc::POLLIN != 0
    }
}

impl Drop for KvmExternalVectors {
    fn drop(&mut self) {
        if self.router.is_closing() {
            return;
        }
        let connected = lock(&self.connected).clone();
        for ((fd, &gsi), on) in self.eventfds.iter().zip(&self.gsis).zip(connected) {
            if on {
                let _ = self.router.vm.unregister_irqfd(fd, gsi);
            }
        }
        let _ = self.router.remove(&self.gsis);
    }
}

/// The IOAPIC's pins: pin n is GSI n (0-23, the GSIs KVM's split irqchip reserves for the
/// IOAPIC), bound to an irqfd the first time the IOAPIC routes it, so pins a guest never
/// unmasks cost nothing at start or exit.
pub struct KvmIoapicPins {
    router: Arc<GsiRouter>,
    irqfds: Mutex<[Option<EventFd>; IOAPIC_PINS]>,
}

impl std::fmt::Debug for KvmIoapicPins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvmIoapicPins").finish_non_exhaustive()
    }
}

impl KvmIoapicPins {
    /// The pins of `router`'s VM, none bound yet.
    pub fn new(router: Arc<GsiRouter>) -> Self {
        Self {
            router,
            irqfds: Mutex::new(std::array::from_fn(|_| None)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, [Option<EventFd>; IOAPIC_PINS]> {
        lock(&self.irqfds)
    }
}

fn pin_index(pin: u16) -> std::io::Result<usize> {
    let i = usize::from(pin);
    if i < IOAPIC_PINS {
        Ok(i)
    } else {
        Err(std::io::Error::other("no such IOAPIC pin"))
    }
}

impl MsiRoutes for KvmIoapicPins {
    fn set_route(&self, pin: u16, address: u64, data: u32) -> std::io::Result<()> {
        let i = pin_index(pin)?;
        let mut irqfds = self.lock();
        if irqfds[i].is_none() {
            let fd = EventFd::new(EFD_NONBLOCK)?;
            self.router
                .vm
                .register_irqfd(&fd, u32::from(pin))
                .map_err(io_err)?;
            irqfds[i] = Some(fd);
        }
        self.router.set_msi(u32::from(pin), address, data)
    }

    fn trigger(&self, pin: u16) -> std::io::Result<()> {
        let i = pin_index(pin)?;
        match &self.lock()[i] {
            Some(fd) => fd.write(1),
            None => Err(std::io::Error::other(
                "IOAPIC pin raised before it was routed",
            )),
        }
    }
}

impl Drop for KvmIoapicPins {
    fn drop(&mut self) {
        if self.router.is_closing() {
            return;
        }
        let mut gsis = Vec::new();
        for (gsi, fd) in (0u32..).zip(self.lock().iter()) {
            if let Some(fd) = fd {
                let _ = self.router.vm.unregister_irqfd(fd, gsi);
                gsis.push(gsi);
            }
        }
        let _ = self.router.drop_routes(&gsis);
    }
}

/// Makes [`KvmMsixRoutes`] for new functions.
#[derive(Debug, Clone)]
pub struct KvmRouteFactory(pub Arc<GsiRouter>);

impl devices::interrupt::MsiRouteFactory for KvmRouteFactory {
    fn routes(&self, vectors: u16) -> std::io::Result<Arc<dyn MsiRoutes>> {
        Ok(Arc::new(KvmMsixRoutes::new(self.0.clone(), vectors)?))
    }

    fn external(
        &self,
        vectors: u16,
    ) -> std::io::Result<Arc<dyn devices::interrupt::ExternalVectors>> {
        Ok(Arc::new(KvmExternalVectors::new(self.0.clone(), vectors)?))
    }
}

/// Shared so every function's routes commit to one table.
pub type SharedRouter = Arc<GsiRouter>;

#[cfg(test)]
mod tests {
    use super::*;

    /// A VM with a split irqchip, or None (with a SKIP line) without /dev/kvm.
    fn vm() -> Option<Arc<VmFd>> {
        let kvm = match kvm_ioctls::Kvm::new() {
            Ok(k) => k,
            Err(e) => {
                assert!(
                    std::env::var_os("VMM_TESTS_STRICT").is_none_or(|v| v != "1"),
                    "/dev/kvm: {e}"
                );
                println!("SKIP: /dev/kvm is not usable: {e}");
                return None;
            }
        };
        let vm = kvm.create_vm().expect("create a VM");
        let mut split = kvm_bindings::kvm_enable_cap {
            cap: kvm_bindings::KVM_CAP_SPLIT_IRQCHIP,
            ..Default::default()
        };
        split.args[0] = u64::from(FIRST_MSI_GSI);
        vm.enable_cap(&split).expect("split irqchip");
        Some(Arc::new(vm))
    }

    /// GSIs of dropped routes go to the next function that asks (hot-unplug then plug
    /// again cannot run out of GSIs), and a route is set by vector.
    #[test]
    fn gsis_of_removed_functions_are_reused() {
        let Some(vm) = vm() else { return };
        let router = Arc::new(GsiRouter::new(vm).unwrap());
        let a = KvmMsixRoutes::new(router.clone(), 3).unwrap();
        let b = KvmMsixRoutes::new(router.clone(), 2).unwrap();
        assert_eq!(a.gsis, vec![24, 25, 26]);
        assert_eq!(b.gsis, vec![27, 28]);
        a.set_route(2, 0xfee0_0000, 0x4041).unwrap();
        assert!(a.set_route(3, 0xfee0_0000, 0x4041).is_err());
        assert!(router.lock().msi.contains_key(&26));
        drop(a);
        assert!(
            router.lock().msi.is_empty(),
            "routes of a dropped function go"
        );
        let c = KvmMsixRoutes::new(router.clone(), 4).unwrap();
        assert_eq!(c.gsis, vec![24, 25, 26, 29]);
        for _ in 0..1000 {
            let d = KvmMsixRoutes::new(router.clone(), 3).unwrap();
            assert_eq!(d.gsis, vec![30, 31, 32]);
        }
        // Asking for more than is left takes nothing.
        assert!(router.allocate(MAX_GSI).is_err());
        assert_eq!(router.allocate(1).unwrap(), vec![30]);
    }

    /// The IOAPIC's pins sit on GSIs 0-23, outside the allocator, bound when first routed:
    /// routes come and go with the pins, MSI-X functions never get those GSIs, and dropping
    /// the pins frees nothing of the allocator's.
    #[test]
    fn ioapic_pins_use_the_reserved_gsis() {
        let Some(vm) = vm() else { return };
        let router = Arc::new(GsiRouter::new(vm).unwrap());
        let pins = KvmIoapicPins::new(router.clone());
        assert!(pins.trigger(4).is_err(), "not routed yet");
        pins.set_route(4, 0xfee0_0000, 0x4030).unwrap();
        pins.set_route(4, 0xfee0_1000, 0x4030).unwrap();
        pins.set_route(9, 0xfee0_0000, 0xc031).unwrap();
        pins.trigger(4).unwrap();
        assert!(pins.trigger(9).is_ok());
        assert!(pins.trigger(5).is_err());
        assert!(pins.set_route(24, 0xfee0_0000, 0x4030).is_err());
        assert_eq!(
            pins.lock().iter().filter(|p| p.is_some()).count(),
            2,
            "an irqfd per routed pin"
        );
        let f = KvmMsixRoutes::new(router.clone(), 2).unwrap();
        assert_eq!(f.gsis, vec![24, 25]);
        assert_eq!(
            router.lock().msi.keys().copied().collect::<Vec<_>>(),
            vec![4, 9]
        );
        drop(pins);
        assert!(router.lock().msi.is_empty());
        drop(f);
        assert_eq!(router.allocate(1).unwrap(), vec![24]);
    }

    /// Once the router is closed, dropped routes leave the table alone (the VM's fd takes
    /// them all when it closes).
    #[test]
    fn external_vectors_pend_while_masked() {
        use devices::interrupt::ExternalVectors;
        let Some(vm) = vm() else { return };
        let router = Arc::new(GsiRouter::new(vm).unwrap());
        let ext = KvmExternalVectors::new(router.clone(), 2).unwrap();
        assert_eq!((ext.vectors(), ext.gsis.clone()), (2, vec![24, 25]));
        ext.set_route(1, 0xfee0_0000, 0x4041).unwrap();
        let fd = ext.eventfd(1).unwrap();
        assert!(!ext.is_pending(1));
        fd.write(1).unwrap();
        assert!(ext.is_pending(1), "raised while disconnected: pending");
        ext.set_masked(1, false).unwrap();
        assert!(!ext.is_pending(1), "delivered on connection");
        ext.set_masked(1, false).unwrap();
        fd.write(1).unwrap();
        // Connected: KVM consumes the count as it injects.
        for _ in 0..100 {
            if !ext.is_pending(1) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(!ext.is_pending(1), "KVM took the raise");
        ext.set_masked(1, true).unwrap();
        fd.write(1).unwrap();
        assert!(ext.is_pending(1));
        assert!(ext.set_masked(2, false).is_err());
        drop(ext);
        assert_eq!(router.allocate(2).unwrap(), vec![24, 25], "GSIs freed");
    }

    #[test]
    fn closed_router_skips_teardown() {
        let Some(vm) = vm() else { return };
        let router = Arc::new(GsiRouter::new(vm).unwrap());
        let f = KvmMsixRoutes::new(router.clone(), 2).unwrap();
        f.set_route(0, 0xfee0_0000, 0x4030).unwrap();
        router.close();
        drop(f);
        assert_eq!(router.lock().msi.len(), 1);
    }
}
