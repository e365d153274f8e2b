//! PCI devices in root-port slots at run time: the registry behind `device-list`, and
//! hot-add and removal (orderly through the attention button and the guest's power-off,
//! or by surprise) for the API.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::interrupt::{DoorbellRegistry, MsixDelivery};
use devices::pci::root_port::HotplugEvent;
use devices::pci::{FunctionCard, PciRoot};
use devices::virtio::dma::IommuContext;
use devices::virtio::net::{NetBackend, SeqpacketBackend, TapBackend, VirtioNet};
use devices::virtio::transport::VirtioPciDevice;
use iommu::RequesterId;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::api::{DeviceInfo, Response, SlotInfo};
use crate::config::{NetBackendConfig, NetConfig, NetSpec};
use crate::kvm::irq_routing::{KvmMsixRoutes, SharedRouter};

/// How long the guest has to power a slot off after the attention button (Linux waits 5 s
/// for a second press, then removes the driver).
pub const EJECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors of hotplug operations, as the API reports them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HotplugError {
    /// Bad device description.
    #[error("{0}")]
    Spec(String),
    /// No free slot, or the one asked for is taken.
    #[error("{0}")]
    Slot(String),
    /// Unknown device.
    #[error("no device `{0}`")]
    NoDevice(String),
    /// A removal is already under way.
    #[error("device `{0}` is already being removed")]
    Busy(String),
    /// The backend could not be opened.
    #[error("cannot open {0}")]
    Backend(String),
}

struct Entry {
    info: DeviceInfo,
    port: usize,
}

struct Pending {
    ticket: u64,
    entry: Entry,
    deadline: Instant,
}

/// The devices in slots.
pub struct PciHotplug {
    pci: PciRoot,
    mem: GuestMemoryMmap,
    router: SharedRouter,
    doorbells: Arc<dyn DoorbellRegistry>,
    /// The IOMMU devices in slots sit behind, if the machine has one.
    iommu: Option<IommuContext>,
    devices: Vec<Entry>,
    pending: Vec<Pending>,
    next_net: usize,
    events: Arc<EventFd>,
}

impl std::fmt::Debug for PciHotplug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciHotplug")
            .field("devices", &self.devices.len())
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

fn mac_string(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl PciHotplug {
    /// A registry over the root ports of `pci`; ejections wake [`PciHotplug::event_fd`].
    pub fn new(
        pci: PciRoot,
        mem: GuestMemoryMmap,
        router: SharedRouter,
        doorbells: Arc<dyn DoorbellRegistry>,
        iommu: Option<IommuContext>,
    ) -> std::io::Result<Self> {
        let events = Arc::new(EventFd::new(EFD_NONBLOCK)?);
        pci.with(|rc| {
            for port in rc.ports_mut() {
                port.set_notifier(events.clone());
            }
        });
        Ok(Self {
            pci,
            mem,
            router,
            doorbells,
            iommu,
            devices: Vec::new(),
            pending: Vec::new(),
            next_net: 0,
            events,
        })
    }

    /// The descriptor that becomes readable when a slot event is queued.
    pub fn event_fd(&self) -> &EventFd {
        &self.events
    }

    /// Every root port and its device.
    pub fn list(&self) -> Vec<SlotInfo> {
        let ports: Vec<u8> = self.pci.with(|rc| {
            rc.ports()
                .iter()
                .map(|p| p.port_config().port_number)
                .collect()
        });
        ports
            .into_iter()
            .enumerate()
            .map(|(i, port)| SlotInfo {
                port,
                device: self
                    .devices
                    .iter()
                    .chain(self.pending.iter().map(|p| &p.entry))
                    .find(|e| e.port == i)
                    .map(|e| e.info.clone()),
            })
            .collect()
    }

    /// Creates a virtio-net device and puts it in a slot: `cold` at boot (as firmware
    /// finds it), else hot-added (the guest is told through the slot's events).
    pub fn add_net(
        &mut self,
        net: &NetConfig,
        port: Option<u8>,
        cold: bool,
    ) -> Result<DeviceInfo, HotplugError> {
        let (index, port_cfg) = self.pci.with(|rc| {
            let index = match port {
                Some(n) => {
                    let i = usize::from(n)
                        .checked_sub(1)
                        .filter(|&i| i < rc.ports().len())
                        .ok_or_else(|| HotplugError::Slot(format!("no root port {n}")))?;
                    if rc.ports()[i].occupied() || self.pending.iter().any(|p| p.entry.port == i) {
                        return Err(HotplugError::Slot(format!("root port {n} is occupied")));
                    }
                    i
                }
                None => rc
                    .free_port()
                    .ok_or_else(|| HotplugError::Slot("no free root port".into()))?,
            };
            Ok((index, rc.ports()[index].port_config()))
        })?;
        let (backend, backend_name): (Arc<dyn NetBackend>, String) = match &net.backend {
            NetBackendConfig::Socket(path) => (
                Arc::new(SeqpacketBackend::connect(path).map_err(|e| {
                    HotplugError::Backend(format!("socket {}: {e}", path.display()))
                })?),
                format!("socket:{}", path.display()),
            ),
            NetBackendConfig::Tap(name) => (
                Arc::new(
                    TapBackend::open(name)
                        .map_err(|e| HotplugError::Backend(format!("tap {name}: {e}")))?,
                ),
                format!("tap:{name}"),
            ),
        };
        let device = VirtioNet::new(net.mac, backend)
            .map_err(|e| HotplugError::Backend(format!("virtio-net: {e}")))?;
        let routes = KvmMsixRoutes::new(self.router.clone(), VirtioPciDevice::vectors_for(&device))
            .map_err(|e| HotplugError::Backend(format!("MSI-X routes: {e}")))?;
        let mut pci_dev = VirtioPciDevice::new(
            Box::new(device),
            self.mem.clone(),
            MsixDelivery::Routed(Arc::new(routes)),
            Some(self.doorbells.clone()),
        );
        if let Some(ctx) = &self.iommu {
            // Function 0 of the slot's bus.
            let rid = RequesterId::from_routing_id(0, u16::from(port_cfg.bus) << 8);
            pci_dev = pci_dev.behind_iommu(ctx.clone(), rid);
        }
        let card = FunctionCard::single(Box::new(pci_dev)).shared();
        if cold {
            self.pci
                .plug_cold(index, card)
                .map_err(|e| HotplugError::Slot(e.to_string()))?;
        } else {
            self.pci
                .with(|rc| rc.ports_mut()[index].plug(card))
                .map_err(|_| HotplugError::Slot(format!("root port {} is occupied", index + 1)))?;
        }
        let info = DeviceInfo {
            id: format!("net{}", self.next_net),
            kind: "virtio-net".into(),
            port: port_cfg.port_number,
            bus: port_cfg.bus,
            mac: Some(mac_string(&net.mac)),
            backend: Some(backend_name),
        };
        self.next_net += 1;
        self.devices.push(Entry {
            info: info.clone(),
            port: index,
        });
        Ok(info)
    }

    /// Hot-adds from an API spec.
    pub fn add_spec(
        &mut self,
        spec: NetSpec,
        port: Option<u8>,
    ) -> Result<DeviceInfo, HotplugError> {
        let net = spec
            .check(self.next_net)
            .map_err(|e| HotplugError::Spec(e.to_string()))?;
        self.add_net(&net, port, false)
    }

    /// Starts removing `id`. A surprise removal completes at once (`Some`); an orderly one
    /// completes when the guest powers the slot off, reported by [`PciHotplug::poll`]
    /// under `ticket`.
    pub fn remove(
        &mut self,
        id: &str,
        surprise: bool,
        ticket: u64,
    ) -> Result<Option<DeviceInfo>, HotplugError> {
        if self.pending.iter().any(|p| p.entry.info.id == id) {
            return Err(HotplugError::Busy(id.to_string()));
        }
        let pos = self
            .devices
            .iter()
            .position(|e| e.info.id == id)
            .ok_or_else(|| HotplugError::NoDevice(id.to_string()))?;
        let entry = self.devices.remove(pos);
        if surprise {
            // The card is dropped once the root complex's lock is released: its worker
            // stops and its backend closes.
            self.pci
                .with(|rc| rc.ports_mut()[entry.port].surprise_remove());
            return Ok(Some(entry.info));
        }
        self.pci
            .with(|rc| rc.ports_mut()[entry.port].request_eject());
        self.pending.push(Pending {
            ticket,
            entry,
            deadline: Instant::now() + EJECT_TIMEOUT,
        });
        Ok(None)
    }

    /// Orderly removals that completed or timed out, as API responses by ticket.
    pub fn poll(&mut self) -> Vec<(u64, Response)> {
        let _ = self.events.read();
        let mut done = Vec::new();
        let now = Instant::now();
        let ejected: Vec<usize> = self.pci.with(|rc| {
            rc.ports_mut()
                .iter_mut()
                .enumerate()
                .filter_map(|(i, port)| {
                    port.take_events()
                        .contains(&HotplugEvent::Ejected)
                        .then_some(i)
                })
                .collect()
        });
        // A slot the guest powered off on its own (sysfs `power`): its device is gone.
        self.devices.retain(|e| !ejected.contains(&e.port));
        let mut still = Vec::new();
        for p in self.pending.drain(..) {
            if ejected.contains(&p.entry.port) {
                done.push((p.ticket, Response::device(p.entry.info)));
            } else if now >= p.deadline {
                done.push((
                    p.ticket,
                    Response::error(format!(
                        "the guest did not power off slot {} within {} s (is pciehp bound?); \
                         the device stays",
                        p.entry.info.port,
                        EJECT_TIMEOUT.as_secs()
                    )),
                ));
                self.devices.push(p.entry);
            } else {
                still.push(p);
            }
        }
        self.pending = still;
        done
    }
}

/// A shared registry.
pub type SharedHotplug = Arc<Mutex<PciHotplug>>;
