//! The machine's PCI resources, handed out before the guest boots as firmware would: bus
//! numbers (vm-allocator's `IdAllocator`) and slices of the 32-bit and 64-bit MMIO windows
//! (`AddressAllocator`) for every root port and for the BARs of the devices on bus 0.
//!
//! The plan is deterministic: the bus-0 device window is the last 16 MiB of the 32-bit
//! window; root port i (0-based) gets bus i + 1, the i-th 16 MiB of the 32-bit window and
//! the i-th 2 GiB of the 64-bit window (room for an SR-IOV adapter's VF BARs). The ACPI
//! tables (VIOT) and the IOMMU's covered requester IDs are derived from the same plan.

use std::ops::RangeInclusive;

use devices::pci::RootPortConfig;
use vm_allocator::{AddressAllocator, AllocPolicy, IdAllocator};

use crate::memory::layout;

/// Size of each root port's 32-bit window.
pub const PORT_MEM32_SIZE: u64 = 16 << 20;
/// Size of each root port's 64-bit prefetchable window.
pub const PORT_MEM64_SIZE: u64 = 2 << 30;
/// Size of the window for BARs of devices on bus 0.
pub const ROOT_DEVICES_SIZE: u64 = 16 << 20;

/// Why the PCI resources cannot be handed out.
#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    /// An allocator could not be set up over its window.
    #[error("invalid PCI {what} window")]
    Window {
        /// Which window.
        what: &'static str,
        /// The allocator's complaint.
        #[source]
        source: vm_allocator::Error,
    },
    /// A window or the bus numbers ran out.
    #[error("no room for root port {port} in the PCI {what}")]
    Exhausted {
        /// 0-based root port index (or the bus-0 device window's, 255).
        port: u8,
        /// Which resource.
        what: &'static str,
        /// The allocator's complaint.
        #[source]
        source: vm_allocator::Error,
    },
    /// An allocator handed out what the root port's registers cannot hold (a bus number
    /// above 255, a 32-bit window slice above 4 GiB).
    #[error("root port {port}: the {what} is out of range")]
    OutOfRange {
        /// 0-based root port index.
        port: u8,
        /// Which resource.
        what: &'static str,
    },
}

/// What each root port and the bus-0 devices were given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciPlan {
    /// The root ports, in order (port i is 00:(i+1).0).
    pub ports: Vec<RootPortConfig>,
    /// Where the BARs of devices on bus 0 go (inclusive end).
    pub root_devices_window: (u64, u64),
}

impl PciPlan {
    /// Hands out the resources of a machine with `root_ports` root ports.
    pub fn new(root_ports: u8) -> Result<Self, ResourceError> {
        let window = |what, start: u64, end: u64| {
            AddressAllocator::new(start, end - start)
                .map_err(|source| ResourceError::Window { what, source })
        };
        let mut buses =
            IdAllocator::new(1, u32::from(layout::ECAM_LAST_BUS)).map_err(|source| {
                ResourceError::Window {
                    what: "bus",
                    source,
                }
            })?;
        let mut mem32 = window("32-bit", layout::PCI_MMIO32_START, layout::PCI_MMIO32_END)?;
        let mut mem64 = window("64-bit", layout::PCI_MMIO64_START, layout::PCI_MMIO64_END)?;
        let exhausted = |port, what| move |source| ResourceError::Exhausted { port, what, source };
        let root = mem32
            .allocate(ROOT_DEVICES_SIZE, ROOT_DEVICES_SIZE, AllocPolicy::LastMatch)
            .map_err(exhausted(u8::MAX, "32-bit window"))?;
        let mut ports = Vec::with_capacity(usize::from(root_ports));
        for index in 0..root_ports {
            let bus = buses
                .allocate_id()
                .map_err(exhausted(index, "bus numbers"))?;
            let slice32 = mem32
                .allocate(PORT_MEM32_SIZE, PORT_MEM32_SIZE, AllocPolicy::FirstMatch)
                .map_err(exhausted(index, "32-bit window"))?;
            let slice64 = mem64
                .allocate(PORT_MEM64_SIZE, PORT_MEM64_SIZE, AllocPolicy::FirstMatch)
                .map_err(exhausted(index, "64-bit window"))?;
            let out_of_range = |what| move |_| ResourceError::OutOfRange { port: index, what };
            ports.push(RootPortConfig {
                port_number: index + 1,
                // IDs come from 1..=ECAM_LAST_BUS (a u8).
                bus: u8::try_from(bus).map_err(out_of_range("bus number"))?,
                // The 32-bit window lies below 4 GiB.
                mem_window: (
                    u32::try_from(slice32.start()).map_err(out_of_range("32-bit window"))?,
                    u32::try_from(slice32.end()).map_err(out_of_range("32-bit window"))?,
                ),
                pref_window: (slice64.start(), slice64.end()),
            });
        }
        Ok(Self {
            ports,
            root_devices_window: (root.start(), root.end()),
        })
    }

    /// The buses behind the root ports, first to last (None without ports).
    pub fn port_buses(&self) -> Option<(u8, u8)> {
        Some((self.ports.first()?.bus, self.ports.last()?.bus))
    }

    /// Requester IDs the IOMMU covers: every function on every root-port bus.
    pub fn iommu_covered_rids(&self) -> Vec<RangeInclusive<u16>> {
        self.port_buses()
            .map(|(first, last)| (u16::from(first) << 8)..=((u16::from(last) << 8) | 0xff))
            .into_iter()
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // test data
mod tests {
    use super::*;

    #[test]
    fn ports_get_consecutive_buses_and_window_slices() {
        let plan = PciPlan::new(3).unwrap();
        assert_eq!(plan.root_devices_window, (0xdf00_0000, 0xdfff_ffff));
        for (i, p) in plan.ports.iter().enumerate() {
            let i = i as u64;
            assert_eq!(u64::from(p.port_number), i + 1);
            assert_eq!(u64::from(p.bus), i + 1);
            let m = layout::PCI_MMIO32_START + i * PORT_MEM32_SIZE;
            assert_eq!(p.mem_window, (m as u32, (m + PORT_MEM32_SIZE - 1) as u32));
            let m = layout::PCI_MMIO64_START + i * PORT_MEM64_SIZE;
            assert_eq!(p.pref_window, (m, m + PORT_MEM64_SIZE - 1));
        }
        assert_eq!(plan.port_buses(), Some((1, 3)));
        assert_eq!(plan.iommu_covered_rids(), vec![0x0100..=0x03ff]);
    }

    #[test]
    fn no_ports_no_buses() {
        let plan = PciPlan::new(0).unwrap();
        assert!(plan.ports.is_empty());
        assert_eq!(plan.port_buses(), None);
        assert!(plan.iommu_covered_rids().is_empty());
    }

    /// The windows hold 31 ports beside the bus-0 window, no more: the 32nd port's 32-bit
    /// slice would overlap it.
    #[test]
    fn thirty_one_ports_fit_and_windows_never_overlap() {
        let plan = PciPlan::new(31).unwrap();
        let root = plan.root_devices_window;
        let mut slices: Vec<(u64, u64)> = plan
            .ports
            .iter()
            .map(|p| (u64::from(p.mem_window.0), u64::from(p.mem_window.1)))
            .chain(std::iter::once(root))
            .collect();
        slices.sort();
        for w in slices.windows(2) {
            assert!(w[0].1 < w[1].0, "{w:?} overlap");
        }
        assert!(slices.last().unwrap().1 < layout::PCI_MMIO32_END);
        assert!(matches!(
            PciPlan::new(32),
            Err(ResourceError::Exhausted {
                port: 31,
                what: "32-bit window",
                ..
            })
        ));
    }
}
