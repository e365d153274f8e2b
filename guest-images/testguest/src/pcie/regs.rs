//! Configuration-space registers, their bits and the capability IDs: the one set the test
//! guest uses. Names are those of Linux's `include/uapi/linux/pci_regs.h` without the
//! `PCI_` prefix, a few shortened (`CAP_EXP` for `PCI_CAP_ID_EXP`, `EXT_ACS` for
//! `PCI_EXT_CAP_ID_ACS`, `CLASS_REV`, `BUSES`, `PREF_BASE`). A register's bits are named
//! after it (`EXP_SLTSTA_PDS` is a bit of `EXP_SLTSTA`); offsets in a capability count
//! from the capability.

// Sizes.

/// The standard header; capabilities start at or above it.
pub const STD_HEADER_SIZE: u16 = 0x40;
/// Configuration space reachable through 0xCF8/0xCFC; extended capabilities start here.
pub const CFG_SPACE_SIZE: u16 = 0x100;
/// Configuration space of a PCIe function (through ECAM).
pub const CFG_SPACE_EXP_SIZE: u16 = 0x1000;

// Type 0 and type 1 header.

/// Vendor ID (16 bits); device ID follows at 0x02.
pub const VENDOR_ID: u16 = 0x00;
/// Command (16 bits).
pub const COMMAND: u16 = 0x04;
/// Command: memory space decoding.
pub const COMMAND_MEMORY: u16 = 1 << 1;
/// Command: bus mastering (DMA, MSI).
pub const COMMAND_MASTER: u16 = 1 << 2;
/// Status (16 bits).
pub const STATUS: u16 = 0x06;
/// Status: the capability list is present.
pub const STATUS_CAP_LIST: u16 = 1 << 4;
/// Revision ID (8 bits) and class code (24 bits).
pub const CLASS_REV: u16 = 0x08;
/// Latency timer (8 bits; PCIe: reads 0).
pub const LATENCY_TIMER: u16 = 0x0d;
/// Header type (8 bits).
pub const HEADER_TYPE: u16 = 0x0e;
/// Header type: the layout (0 endpoint, 1 PCI-to-PCI bridge, 2 CardBus bridge).
pub const HEADER_TYPE_MASK: u8 = 0x7f;
/// Header type layout: PCI-to-PCI bridge.
pub const HEADER_TYPE_BRIDGE: u8 = 1;
/// Header type: the device has more than one function.
pub const HEADER_TYPE_MFD: u8 = 0x80;
/// First BAR; the others follow every 4 bytes (6 in a type 0 header, 2 in a type 1).
pub const BAR0: u16 = 0x10;
/// BAR: I/O space (else memory).
pub const BAR_SPACE_IO: u32 = 1 << 0;
/// Memory BAR: the type field.
pub const BAR_MEM_TYPE_MASK: u32 = 0x6;
/// Memory BAR type: 64-bit (the next BAR holds the upper half).
pub const BAR_MEM_TYPE_64: u32 = 0x4;
/// Memory BAR: the address bits.
pub const BAR_MEM_MASK: u32 = !0xf;
/// I/O BAR: the address bits.
pub const BAR_IO_MASK: u32 = !0x3;
/// Capabilities pointer (8 bits).
pub const CAP_PTR: u16 = 0x34;
/// Interrupt line (8 bits, read-write scratch for software).
pub const INTERRUPT_LINE: u16 = 0x3c;

// Type 1 (bridge) header.

/// Primary, secondary, subordinate bus and secondary latency timer.
pub const BUSES: u16 = 0x18;
/// Secondary latency timer (8 bits; PCIe: reads 0).
pub const SEC_LATENCY_TIMER: u16 = 0x1b;
/// I/O base and limit (8 bits each).
pub const IO_BASE: u16 = 0x1c;
/// Memory base and limit (16 bits each).
pub const MEMORY_BASE: u16 = 0x20;
/// Memory and prefetchable base and limit: the address bits (31:20 of the window).
pub const MEMORY_RANGE_MASK: u16 = 0xfff0;
/// Prefetchable base and limit (16 bits each).
pub const PREF_BASE: u16 = 0x24;
/// Prefetchable base and limit: the addressing field.
pub const PREF_RANGE_TYPE_MASK: u16 = 0xf;
/// Prefetchable addressing: 64-bit (the upper halves follow).
pub const PREF_RANGE_TYPE_64: u16 = 0x1;
/// Prefetchable base, upper 32 bits.
pub const PREF_BASE_UPPER: u16 = 0x28;
/// Prefetchable limit, upper 32 bits.
pub const PREF_LIMIT_UPPER: u16 = 0x2c;
/// I/O base, upper 16 bits.
pub const IO_BASE_UPPER16: u16 = 0x30;
/// I/O limit, upper 16 bits.
pub const IO_LIMIT_UPPER16: u16 = 0x32;
/// Bridge control (16 bits).
pub const BRIDGE_CONTROL: u16 = 0x3e;
/// Bridge control bits 5 and 7 to 11, which a PCIe bridge does not implement (read 0).
pub const BRIDGE_CTL_NOT_PCIE: u16 = 0x0fa0;

// Capability IDs and the list.

/// Capability ID: MSI.
pub const CAP_MSI: u8 = 0x05;
/// Capability ID: vendor specific (virtio's transport structures).
pub const CAP_VNDR: u8 = 0x09;
/// Capability ID: PCI Express.
pub const CAP_EXP: u8 = 0x10;
/// Capability ID: MSI-X.
pub const CAP_MSIX: u8 = 0x11;
/// A capability's pointer to the next (8 bits), after its ID.
pub const CAP_LIST_NEXT: u16 = 1;
/// Extended capability ID: ACS.
pub const EXT_ACS: u16 = 0x0d;

// MSI capability.

/// Message control (16 bits).
pub const MSI_FLAGS: u16 = 0x02;
/// Message control: MSI enable.
pub const MSI_FLAGS_ENABLE: u16 = 1 << 0;
/// Message control: vectors capable, log2 (bits 3:1).
pub const MSI_FLAGS_QMASK: u16 = 0x0e;
/// Message control: 64-bit addresses.
pub const MSI_FLAGS_64BIT: u16 = 1 << 7;
/// Message control: per-vector masking.
pub const MSI_FLAGS_MASKBIT: u16 = 1 << 8;
/// Message address, low 32 bits.
pub const MSI_ADDRESS_LO: u16 = 0x04;
/// Message address, high 32 bits (64-bit capability).
pub const MSI_ADDRESS_HI: u16 = 0x08;
/// Message data (16 bits, 64-bit capability).
pub const MSI_DATA_64: u16 = 0x0c;

// MSI-X capability and table.

/// Message control (16 bits).
pub const MSIX_FLAGS: u16 = 0x02;
/// Message control: table size minus one.
pub const MSIX_FLAGS_QSIZE: u16 = 0x07ff;
/// Message control: function mask.
pub const MSIX_FLAGS_MASKALL: u16 = 1 << 14;
/// Message control: MSI-X enable.
pub const MSIX_FLAGS_ENABLE: u16 = 1 << 15;
/// Table offset and BAR indicator (32 bits).
pub const MSIX_TABLE: u16 = 0x04;
/// Pending-bit array offset and BAR indicator (32 bits).
pub const MSIX_PBA: u16 = 0x08;
/// Table and PBA: the BAR indicator bits (the rest is the offset into that BAR).
pub const MSIX_BIR: u32 = 0x7;
/// Bytes per MSI-X table entry.
pub const MSIX_ENTRY_SIZE: u64 = 16;
/// Table entry: message address, low 32 bits.
pub const MSIX_ENTRY_LOWER_ADDR: u64 = 0x0;
/// Table entry: message address, high 32 bits.
pub const MSIX_ENTRY_UPPER_ADDR: u64 = 0x4;
/// Table entry: message data.
pub const MSIX_ENTRY_DATA: u64 = 0x8;
/// Table entry: vector control.
pub const MSIX_ENTRY_VECTOR_CTRL: u64 = 0xc;

// PCI Express capability.

/// Capabilities register (16 bits).
pub const EXP_FLAGS: u16 = 0x02;
/// Capabilities: capability version.
pub const EXP_FLAGS_VERS: u16 = 0x000f;
/// Capabilities: device/port type (bits 7:4, see [`exp_type`]).
pub const EXP_FLAGS_TYPE: u16 = 0x00f0;
/// Capabilities: slot implemented.
pub const EXP_FLAGS_SLOT: u16 = 1 << 8;
/// Capabilities: interrupt message number (bits 13:9).
pub const EXP_FLAGS_IRQ: u16 = 0x3e00;
/// Device/port type: PCIe endpoint.
pub const EXP_TYPE_ENDPOINT: u16 = 0;
/// Device/port type: legacy PCIe endpoint.
pub const EXP_TYPE_LEG_END: u16 = 1;
/// Device/port type: root port.
pub const EXP_TYPE_ROOT_PORT: u16 = 4;
/// Device/port type: upstream port of a switch.
pub const EXP_TYPE_UPSTREAM: u16 = 5;
/// Device/port type: root-complex integrated endpoint.
pub const EXP_TYPE_RC_END: u16 = 9;
/// Link Capabilities (32 bits).
pub const EXP_LNKCAP: u16 = 0x0c;
/// Link Capabilities: Data Link Layer Link Active Reporting Capable.
pub const EXP_LNKCAP_DLLLARC: u32 = 1 << 20;
/// Link Capabilities: the port number is bits 31:24.
pub const EXP_LNKCAP_PN_SHIFT: u32 = 24;
/// Link Control (16 bits).
pub const EXP_LNKCTL: u16 = 0x10;
/// Link Control: Retrain Link.
pub const EXP_LNKCTL_RL: u16 = 1 << 5;
/// Link Status (16 bits).
pub const EXP_LNKSTA: u16 = 0x12;
/// Link Status: Negotiated Link Width.
pub const EXP_LNKSTA_NLW: u16 = 0x03f0;
/// Link Status: Link Training.
pub const EXP_LNKSTA_LT: u16 = 1 << 11;
/// Link Status: Data Link Layer Link Active.
pub const EXP_LNKSTA_DLLLA: u16 = 1 << 13;
/// Slot Capabilities (32 bits).
pub const EXP_SLTCAP: u16 = 0x14;
/// Slot Capabilities: Attention Button Present.
pub const EXP_SLTCAP_ABP: u32 = 1 << 0;
/// Slot Capabilities: Power Controller Present.
pub const EXP_SLTCAP_PCP: u32 = 1 << 1;
/// Slot Capabilities: Attention Indicator Present.
pub const EXP_SLTCAP_AIP: u32 = 1 << 3;
/// Slot Capabilities: Power Indicator Present.
pub const EXP_SLTCAP_PIP: u32 = 1 << 4;
/// Slot Capabilities: Hot-Plug Capable.
pub const EXP_SLTCAP_HPC: u32 = 1 << 6;
/// Slot Capabilities: No Command Completed Support.
pub const EXP_SLTCAP_NCCS: u32 = 1 << 18;
/// Slot Capabilities: the Physical Slot Number is bits 31:19.
pub const EXP_SLTCAP_PSN_SHIFT: u32 = 19;
/// Slot Control (16 bits).
pub const EXP_SLTCTL: u16 = 0x18;
/// Slot Control: Attention Button Pressed Enable.
pub const EXP_SLTCTL_ABPE: u16 = 1 << 0;
/// Slot Control: Command Completed Interrupt Enable.
pub const EXP_SLTCTL_CCIE: u16 = 1 << 4;
/// Slot Control: Hot-Plug Interrupt Enable.
pub const EXP_SLTCTL_HPIE: u16 = 1 << 5;
/// Slot Control: Power Indicator Control (one of the `EXP_SLTCTL_PWR_IND_*` values).
pub const EXP_SLTCTL_PIC: u16 = 3 << 8;
/// Power Indicator Control: on.
pub const EXP_SLTCTL_PWR_IND_ON: u16 = 1 << 8;
/// Power Indicator Control: blinking.
pub const EXP_SLTCTL_PWR_IND_BLINK: u16 = 2 << 8;
/// Power Indicator Control: off.
pub const EXP_SLTCTL_PWR_IND_OFF: u16 = 3 << 8;
/// Slot Control: Power Controller Control (set: power off).
pub const EXP_SLTCTL_PCC: u16 = 1 << 10;
/// Slot Control: Data Link Layer State Changed Enable.
pub const EXP_SLTCTL_DLLSCE: u16 = 1 << 12;
/// Slot Status (16 bits).
pub const EXP_SLTSTA: u16 = 0x1a;
/// Slot Status: Attention Button Pressed (RW1C).
pub const EXP_SLTSTA_ABP: u16 = 1 << 0;
/// Slot Status: Power Fault Detected (RW1C).
pub const EXP_SLTSTA_PFD: u16 = 1 << 1;
/// Slot Status: MRL Sensor Changed (RW1C).
pub const EXP_SLTSTA_MRLSC: u16 = 1 << 2;
/// Slot Status: Presence Detect Changed (RW1C).
pub const EXP_SLTSTA_PDC: u16 = 1 << 3;
/// Slot Status: Command Completed (RW1C).
pub const EXP_SLTSTA_CC: u16 = 1 << 4;
/// Slot Status: Presence Detect State.
pub const EXP_SLTSTA_PDS: u16 = 1 << 6;
/// Slot Status: Data Link Layer State Changed (RW1C).
pub const EXP_SLTSTA_DLLSC: u16 = 1 << 8;
/// Slot Status: every RW1C event bit.
pub const EXP_SLTSTA_EVENTS: u16 = EXP_SLTSTA_ABP
    | EXP_SLTSTA_PFD
    | EXP_SLTSTA_MRLSC
    | EXP_SLTSTA_PDC
    | EXP_SLTSTA_CC
    | EXP_SLTSTA_DLLSC;
/// Device Capabilities 2 (32 bits).
pub const EXP_DEVCAP2: u16 = 0x24;
/// Device Capabilities 2: ARI Forwarding Supported.
pub const EXP_DEVCAP2_ARI: u32 = 1 << 5;
/// Size of a version 2 PCI Express capability of a port with a slot.
pub const EXP_SIZEOF_V2: u16 = 0x3c;

/// The device/port type in the PCI Express capabilities register ([`EXP_FLAGS`]).
pub const fn exp_type(flags: u16) -> u16 {
    (flags & EXP_FLAGS_TYPE) >> 4
}
