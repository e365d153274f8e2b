//! Builders for the capabilities the models use: each returns the capability's bytes and
//! the guest-writable mask, for [`ConfigSpace::add_capability`] or
//! [`ConfigSpace::add_ext_capability`].
//!
//! [`ConfigSpace::add_capability`]: super::ConfigSpace::add_capability
//! [`ConfigSpace::add_ext_capability`]: super::ConfigSpace::add_ext_capability

use super::regs::*;

/// A capability body and its writable mask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapBytes {
    /// The bytes (standard capabilities include ID and next pointer).
    pub body: Vec<u8>,
    /// Guest-writable bits, byte by byte.
    pub writable: Vec<u8>,
}

impl CapBytes {
    fn new(len: usize) -> Self {
        Self {
            body: vec![0; len],
            writable: vec![0; len],
        }
    }

    fn put16(&mut self, off: usize, value: u16, writable: u16) {
        self.body[off..off + 2].copy_from_slice(&value.to_le_bytes());
        self.writable[off..off + 2].copy_from_slice(&writable.to_le_bytes());
    }

    fn put32(&mut self, off: usize, value: u32, writable: u32) {
        self.body[off..off + 4].copy_from_slice(&value.to_le_bytes());
        self.writable[off..off + 4].copy_from_slice(&writable.to_le_bytes());
    }
}

/// The hotplug slot of a root port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotConfig {
    /// Physical slot number, unique in the machine (13 bits).
    pub number: u16,
}

/// The PCI Express capability (version 2) of a function of `port_type`
/// ([`EXP_TYPE_ROOT_PORT`], [`EXP_TYPE_ENDPOINT`], [`EXP_TYPE_RC_END`]).
///
/// Root ports get: link capabilities with DLLLARC and their port number, a link that is
/// up at 2.5 GT/s x1, ARI forwarding support, and with `slot` a hotplug slot: attention
/// button, power controller, attention and power indicators, hotplug capable, command
/// completion reported on every Slot Control write (NCCS clear), the slot number.
pub fn pcie(port_type: u16, port_number: u8, slot: Option<SlotConfig>) -> CapBytes {
    let mut c = CapBytes::new(EXP_CAP_LEN);
    c.body[0] = CAP_ID_EXP;
    let mut flags = 2 | (port_type << 4);
    if slot.is_some() {
        flags |= EXP_FLAGS_SLOT;
    }
    c.put16(EXP_FLAGS, flags, 0);
    // Max payload 256 bytes; role-based error reporting.
    c.put32(EXP_DEVCAP, 0x1 | (1 << 15), 0);
    // Error reporting enables, relaxed ordering, max payload/read request, no snoop.
    c.put16(EXP_DEVCTL, 0x2810, 0x7cff);
    // Device status: error bits are RW1C (not tracked: always 0).
    let root_port = port_type == EXP_TYPE_ROOT_PORT;
    // A root-complex integrated endpoint has no link: its link registers stay 0.
    let has_link = port_type != EXP_TYPE_RC_END;
    if has_link {
        let lnkcap = 0x1 | (1 << 4) | if root_port { LNKCAP_DLLLARC } else { 0 };
        c.put32(EXP_LNKCAP, lnkcap | (u32::from(port_number) << 24), 0);
        // Link control: ASPM, RCB, common clock, clock PM... writable, no effect. Retrain
        // Link (bit 5) always reads 0, so it is not stored.
        c.put16(EXP_LNKCTL, 0, 0x0fdb);
        // Link status: 2.5 GT/s, x1; DLLLA is set while a device is present (root ports).
        c.put16(EXP_LNKSTA, 0x1 | (1 << 4), 0);
    }
    if let Some(slot) = slot {
        let sltcap = SLTCAP_ABP
            | SLTCAP_PCP
            | SLTCAP_AIP
            | SLTCAP_PIP
            | SLTCAP_HPC
            | (u32::from(slot.number & 0x1fff) << SLTCAP_PSN_SHIFT);
        c.put32(EXP_SLTCAP, sltcap, 0);
        let sltctl_rw = SLTCTL_ABPE
            | SLTCTL_PFDE
            | SLTCTL_MRLSCE
            | SLTCTL_PDCE
            | SLTCTL_CCIE
            | SLTCTL_HPIE
            | SLTCTL_AIC
            | SLTCTL_PIC
            | SLTCTL_PCC
            | SLTCTL_EIC
            | SLTCTL_DLLSCE;
        // Indicators off, power on.
        c.put16(EXP_SLTCTL, PIC_OFF | (3 << 6), sltctl_rw);
    }
    if root_port {
        // Root control: error and PME interrupt enables (CRS software visibility is not
        // offered in Root Capabilities, so its enable reads 0).
        c.put16(EXP_RTCTL, 0, 0x000f);
    }
    let devcap2 = if root_port { DEVCAP2_ARI } else { 0 };
    c.put32(EXP_DEVCAP2, devcap2, 0);
    // Only ARI forwarding is controllable (no completion timeout ranges are offered).
    let devctl2_rw = if root_port { DEVCTL2_ARI } else { 0 };
    c.put16(EXP_DEVCTL2, 0, devctl2_rw);
    if has_link {
        // Supported link speeds: 2.5 GT/s.
        c.put32(EXP_LNKCAP2, 1 << 1, 0);
        c.put16(EXP_LNKCTL2, 1, 0x003f);
    }
    c
}

/// Where an MSI-X table or PBA lives: BAR index and offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixLocation {
    /// BAR index.
    pub bar: u8,
    /// Offset in the BAR (8-byte aligned).
    pub offset: u32,
}

/// The MSI-X capability for `vectors` vectors (1..=2048).
pub fn msix(vectors: u16, table: MsixLocation, pba: MsixLocation) -> CapBytes {
    let mut c = CapBytes::new(12);
    c.body[0] = CAP_ID_MSIX;
    c.put16(
        MSIX_FLAGS,
        vectors.clamp(1, 2048) - 1,
        MSIX_FLAGS_ENABLE | MSIX_FLAGS_MASKALL,
    );
    c.put32(MSIX_TABLE, table.offset | u32::from(table.bar & 7), 0);
    c.put32(MSIX_PBA, pba.offset | u32::from(pba.bar & 7), 0);
    c
}

/// The MSI capability: one vector, 64-bit addresses, per-vector masking.
pub fn msi() -> CapBytes {
    let mut c = CapBytes::new(0x18);
    c.body[0] = CAP_ID_MSI;
    // Message control: 64-bit (bit 7), per-vector masking (bit 8); enable and MME writable.
    c.put16(2, (1 << 7) | (1 << 8), 0x0071);
    c.put32(4, 0, 0xffff_fffc); // address low
    c.put32(8, 0, 0xffff_ffff); // address high
    c.put16(12, 0, 0xffff); // data
    c.put32(16, 0, 0x1); // mask bits
    c.put32(20, 0, 0); // pending bits
    c
}

/// The body of the ARI extended capability (after its header): `next_function` is the
/// next function number of the device (0 ends the list).
pub fn ari(next_function: u8) -> CapBytes {
    let mut c = CapBytes::new(4);
    c.put16(0, u16::from(next_function) << 8, 0);
    c.put16(2, 0, 0);
    c
}

/// The body of the ACS extended capability: source validation, translation blocking, P2P
/// request and completion redirect, upstream forwarding; all controllable.
pub fn acs() -> CapBytes {
    let mut c = CapBytes::new(4);
    let bits = 0x1f;
    c.put16(0, bits, 0);
    c.put16(2, 0, bits);
    c
}
