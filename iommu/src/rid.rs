//! PCI requester IDs (segment:bus:device.function) and SR-IOV VF routing-ID arithmetic.
//!
//! The IOMMU keys every translation by requester ID, so each PF and each VF (which has a
//! RID of its own) can be isolated from the others.

use std::fmt;
use std::str::FromStr;

/// Errors building or parsing a requester ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RidError {
    /// Device number above 31.
    #[error("PCI device number {0} is out of range (0-31)")]
    Device(u8),
    /// Function number above 7.
    #[error("PCI function number {0} is out of range (0-7)")]
    Function(u8),
    /// Text that is not `[segment:]bus:device.function` in hex.
    #[error("`{0}` is not a PCI address of the form [ssss:]bb:dd.f")]
    Parse(String),
}

/// A PCI requester ID: segment plus the 16-bit routing ID (bus << 8 | devfn).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequesterId {
    segment: u16,
    routing_id: u16,
}

impl RequesterId {
    /// Builds a RID from its parts; the device must be below 32 and the function below 8.
    pub fn new(segment: u16, bus: u8, device: u8, function: u8) -> Result<Self, RidError> {
        if device > 31 {
            return Err(RidError::Device(device));
        }
        if function > 7 {
            return Err(RidError::Function(function));
        }
        let devfn = (device << 3) | function;
        Ok(Self::from_routing_id(
            segment,
            u16::from_be_bytes([bus, devfn]),
        ))
    }

    /// Builds a RID from a segment and a 16-bit routing ID (bus in the high byte).
    pub const fn from_routing_id(segment: u16, routing_id: u16) -> Self {
        Self {
            segment,
            routing_id,
        }
    }

    /// The PCI segment (domain).
    pub const fn segment(self) -> u16 {
        self.segment
    }

    /// The 16-bit routing ID: bus << 8 | device << 3 | function.
    pub const fn routing_id(self) -> u16 {
        self.routing_id
    }

    /// The bus number.
    pub const fn bus(self) -> u8 {
        (self.routing_id >> 8) as u8
    }

    /// The device and function, packed as in config cycles (device << 3 | function).
    pub const fn devfn(self) -> u8 {
        (self.routing_id & 0xff) as u8
    }

    /// The device number (0-31).
    pub const fn device(self) -> u8 {
        self.devfn() >> 3
    }

    /// The function number (0-7), or the low 3 bits of an ARI function number.
    pub const fn function(self) -> u8 {
        self.devfn() & 7
    }

    /// The RID of the 0-based Virtual Function `index` of the PF `self`, from the PF's SR-IOV
    /// First VF Offset and VF Stride: PF + offset + index * stride, as a 16-bit routing ID, so
    /// the carry goes into the bus number (Linux `pci_iov_virtfn_bus/devfn`). `None` when the
    /// result does not fit in 16 bits (no such function can exist).
    pub fn vf(self, first_vf_offset: u16, vf_stride: u16, index: u16) -> Option<Self> {
        let rid = u32::from(self.routing_id)
            + u32::from(first_vf_offset)
            + u32::from(index) * u32::from(vf_stride);
        u16::try_from(rid)
            .ok()
            .map(|rid| Self::from_routing_id(self.segment, rid))
    }
}

impl fmt::Display for RequesterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.segment,
            self.bus(),
            self.device(),
            self.function()
        )
    }
}

impl FromStr for RequesterId {
    type Err = RidError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || RidError::Parse(s.to_string());
        let (head, function) = s.rsplit_once('.').ok_or_else(bad)?;
        let parts: Vec<&str> = head.split(':').collect();
        let (segment, bus, device) = match parts.as_slice() {
            [bus, dev] => ("0", *bus, *dev),
            [seg, bus, dev] => (*seg, *bus, *dev),
            _ => return Err(bad()),
        };
        let segment = u16::from_str_radix(segment, 16).map_err(|_| bad())?;
        let bus = u8::from_str_radix(bus, 16).map_err(|_| bad())?;
        let device = u8::from_str_radix(device, 16).map_err(|_| bad())?;
        let function = u8::from_str_radix(function, 16).map_err(|_| bad())?;
        Self::new(segment, bus, device, function)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_round_trip() {
        let rid = RequesterId::new(0, 0x3a, 0x1f, 7).unwrap();
        assert_eq!(rid.bus(), 0x3a);
        assert_eq!(rid.device(), 0x1f);
        assert_eq!(rid.function(), 7);
        assert_eq!(rid.routing_id(), 0x3aff);
        assert_eq!(rid.to_string(), "0000:3a:1f.7");
        assert_eq!("0000:3a:1f.7".parse::<RequesterId>().unwrap(), rid);
        assert_eq!("3a:1f.7".parse::<RequesterId>().unwrap(), rid);
    }

    #[test]
    fn rejects_bad_parts() {
        assert_eq!(RequesterId::new(0, 0, 32, 0), Err(RidError::Device(32)));
        assert_eq!(RequesterId::new(0, 0, 0, 8), Err(RidError::Function(8)));
        for bad in [
            "",
            "1.2",
            "zz:00.0",
            "00:00",
            "0:0:0:0.0",
            "00:20.0",
            "00:00.8",
        ] {
            assert!(bad.parse::<RequesterId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn vf_rid_carries_into_bus() {
        // PF at 01:00.0 with ARI: offset 1, stride 1; VF 255 is 02:00.0.
        let pf = RequesterId::new(0, 1, 0, 0).unwrap();
        assert_eq!(pf.vf(1, 1, 0).unwrap().to_string(), "0000:01:00.1");
        assert_eq!(pf.vf(1, 1, 254).unwrap().to_string(), "0000:01:1f.7");
        assert_eq!(pf.vf(1, 1, 255).unwrap().to_string(), "0000:02:00.0");
        // Stride 2 from function 0 with offset 0x80.
        assert_eq!(pf.vf(0x80, 2, 3).unwrap().routing_id(), 0x0186);
    }

    #[test]
    fn vf_rid_overflow_is_none() {
        let pf = RequesterId::new(0, 0xff, 0x1f, 0).unwrap();
        assert!(pf.vf(8, 1, 0).is_none());
        assert!(pf.vf(0, 0xffff, 0xffff).is_none());
    }
}
