//! PCI and PCI Express: configuration space with masks and capability chains, BARs,
//! capabilities (PCIe, MSI, MSI-X, ARI, ACS), the host bridge, root ports with native
//! hotplug slots, the cards slots hold (one or more functions each), and the root complex
//! that routes ECAM and 0xCF8/0xCFC config cycles and memory accesses to them.

pub mod bar;
pub mod capability;
pub mod card;
pub mod config_space;
pub mod device;
pub mod host_bridge;
pub mod io;
pub mod msix;
pub mod regs;
pub mod root_complex;
pub mod root_port;
pub mod sriov;

pub use bar::{Bar, BarKind};
pub use card::{FunctionCard, PciCard, SharedCard};
pub use config_space::{ConfigError, ConfigSpace, HeaderType, PciId};
pub use device::PciDevice;
pub use host_bridge::HostBridge;
pub use root_complex::{EcamLayout, PciRoot, PlugError, RootComplex};
pub use root_port::{HotplugEvent, RootPort, RootPortConfig};

/// Red Hat's PCI vendor ID, registered for virtual devices.
pub const VENDOR_REDHAT: u16 = 0x1b36;
