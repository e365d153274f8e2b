//! Factories for the virtio devices: each builds a card ready for a slot (or for bus 0),
//! with its MSI-X routes, its doorbells and, behind the virtual IOMMU, its requester ID.
//! They take the interrupt and doorbell plumbing as traits, so they need no KVM.

use devices::GuestMemory;
use std::sync::{Arc, Mutex};

use devices::interrupt::{DoorbellRegistry, MsiRouteFactory, MsixDelivery};
use devices::pci::{FunctionCard, SharedCard};
use devices::virtio::dma::IommuContext;
use devices::virtio::iommu::VirtioIommu;
use devices::virtio::net::{NetBackend, SeqpacketBackend, TapBackend, VirtioNet};
use devices::virtio::transport::VirtioPciDevice;
use iommu::virtio::Engine;
use iommu::{IommuTable, RequesterId};

use super::synthetic::SyntheticPort;
use crate::config::{NetBackendConfig, NetConfig};

/// Errors building a virtio device.
#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    /// The network backend could not be opened.
    #[error("cannot open the network backend {0}")]
    Backend(String, #[source] std::io::Error),
    /// The device could not be set up (its eventfds or worker).
    #[error("cannot set up the {0} device")]
    Device(&'static str, #[source] std::io::Error),
    /// A synthetic port of nicd could not be connected.
    #[error("cannot connect a synthetic port at {0}")]
    Synthetic(String, #[source] super::synthetic::SyntheticError),
    /// No MSI-X routes for it.
    #[error("cannot route the {0} device's MSI-X vectors")]
    Routes(&'static str, #[source] std::io::Error),
}

/// A virtio-net card and where its frames go.
#[derive(Debug)]
pub struct NetCard {
    /// The card.
    pub card: SharedCard,
    /// The backend, as `socket:PATH`, `tap:NAME` or `nicd:PATH`.
    pub backend: String,
    /// For a synthetic port of nicd: the port (its state, nicd's API socket).
    pub synthetic: Option<Arc<SyntheticPort>>,
}

/// The virtio-iommu and what devices behind it need.
#[derive(Debug)]
pub struct IommuCard {
    /// The card, for bus 0.
    pub card: SharedCard,
    /// The translation context devices behind it use.
    pub context: IommuContext,
}

/// Builds virtio devices for one VM.
pub struct VirtioFactory {
    mem: GuestMemory,
    routes: Arc<dyn MsiRouteFactory>,
    doorbells: Option<Arc<dyn DoorbellRegistry>>,
    /// The IOMMU devices sit behind, once there is one.
    iommu: Option<IommuContext>,
}

impl std::fmt::Debug for VirtioFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioFactory")
            .field("iommu", &self.iommu.is_some())
            .finish_non_exhaustive()
    }
}

impl VirtioFactory {
    /// A factory for devices on `mem`, with routes from `routes` and doorbells from
    /// `doorbells` (None: queues are notified by MMIO writes the transport handles).
    pub fn new(
        mem: GuestMemory,
        routes: Arc<dyn MsiRouteFactory>,
        doorbells: Option<Arc<dyn DoorbellRegistry>>,
    ) -> Self {
        Self {
            mem,
            routes,
            doorbells,
            iommu: None,
        }
    }

    /// The virtio-iommu as a root-complex integrated endpoint, covering `endpoints`; every
    /// device built afterwards sits behind it.
    pub fn iommu(
        &mut self,
        endpoints: Vec<std::ops::RangeInclusive<u16>>,
    ) -> Result<IommuCard, VirtioError> {
        let engine = Arc::new(Mutex::new(Engine::new(
            IommuTable::default(),
            endpoints,
            (0, u64::MAX),
        )));
        let device = VirtioIommu::new(engine.clone(), (0, u64::MAX), (0, u32::MAX));
        let faults = device.fault_sink();
        let routes = self
            .routes
            .routes(VirtioPciDevice::vectors_for(&device))
            .map_err(|e| VirtioError::Routes("virtio-iommu", e))?;
        let pci_dev = VirtioPciDevice::new_integrated(
            Box::new(device),
            self.mem.clone(),
            MsixDelivery::Routed(routes),
            None,
        );
        let context = IommuContext {
            engine,
            faults: Arc::new(faults),
        };
        self.iommu = Some(context.clone());
        Ok(IommuCard {
            card: FunctionCard::single(Box::new(pci_dev)).shared(),
            context,
        })
    }

    /// The IOMMU devices built from now on sit behind, if there is one.
    pub fn iommu_context(&self) -> Option<&IommuContext> {
        self.iommu.as_ref()
    }

    /// A virtio-net card whose function will be `rid` (its requester ID behind the IOMMU).
    pub fn net(&self, net: &NetConfig, rid: RequesterId) -> Result<NetCard, VirtioError> {
        let mut synthetic = None;
        let (backend, name): (Arc<dyn NetBackend>, String) = match &net.backend {
            NetBackendConfig::Socket(path) => {
                let name = format!("socket:{}", path.display());
                let b = SeqpacketBackend::connect(path)
                    .map_err(|e| VirtioError::Backend(name.clone(), e))?;
                (Arc::new(b), name)
            }
            NetBackendConfig::Tap(tap) => {
                let name = format!("tap:{tap}");
                let b = TapBackend::open(tap).map_err(|e| VirtioError::Backend(name.clone(), e))?;
                (Arc::new(b), name)
            }
            NetBackendConfig::Nicd(path) => {
                let name = format!("nicd:{}", path.display());
                let port = SyntheticPort::connect(path, net.mac)
                    .map_err(|e| VirtioError::Synthetic(name.clone(), e))?;
                synthetic = Some(port.clone());
                (port, name)
            }
        };
        let mut device =
            VirtioNet::new(net.mac, backend).map_err(|e| VirtioError::Device("virtio-net", e))?;
        if net.standby {
            device = device.with_standby();
        }
        let routes = self
            .routes
            .routes(VirtioPciDevice::vectors_for(&device))
            .map_err(|e| VirtioError::Routes("virtio-net", e))?;
        let mut pci_dev = VirtioPciDevice::new(
            Box::new(device),
            self.mem.clone(),
            MsixDelivery::Routed(routes),
            self.doorbells.clone(),
        );
        if let Some(ctx) = &self.iommu {
            pci_dev = pci_dev.behind_iommu(ctx.clone(), rid);
        }
        Ok(NetCard {
            card: FunctionCard::single(Box::new(pci_dev)).shared(),
            backend: name,
            synthetic,
        })
    }
}
