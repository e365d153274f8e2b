//! Configuration-space register offsets and bits (Linux include/uapi/linux/pci_regs.h).

#![allow(missing_docs)]

pub const VENDOR_ID: usize = 0x00;
pub const DEVICE_ID: usize = 0x02;
pub const COMMAND: usize = 0x04;
pub const STATUS: usize = 0x06;
pub const REVISION_ID: usize = 0x08;
pub const CLASS_PROG: usize = 0x09;
pub const CLASS_DEVICE: usize = 0x0a;
pub const CACHE_LINE_SIZE: usize = 0x0c;
pub const LATENCY_TIMER: usize = 0x0d;
pub const HEADER_TYPE: usize = 0x0e;
pub const BAR0: usize = 0x10;
pub const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
pub const SUBSYSTEM_ID: usize = 0x2e;
pub const CAPABILITIES_POINTER: usize = 0x34;
pub const INTERRUPT_LINE: usize = 0x3c;
pub const INTERRUPT_PIN: usize = 0x3d;

// Type 1 (bridge) header.
pub const PRIMARY_BUS: usize = 0x18;
pub const SECONDARY_BUS: usize = 0x19;
pub const SUBORDINATE_BUS: usize = 0x1a;
pub const SEC_LATENCY_TIMER: usize = 0x1b;
pub const IO_BASE: usize = 0x1c;
pub const IO_LIMIT: usize = 0x1d;
pub const SEC_STATUS: usize = 0x1e;
pub const MEMORY_BASE: usize = 0x20;
pub const MEMORY_LIMIT: usize = 0x22;
pub const PREF_MEMORY_BASE: usize = 0x24;
pub const PREF_MEMORY_LIMIT: usize = 0x26;
pub const PREF_BASE_UPPER32: usize = 0x28;
pub const PREF_LIMIT_UPPER32: usize = 0x2c;
pub const IO_BASE_UPPER16: usize = 0x30;
pub const IO_LIMIT_UPPER16: usize = 0x32;
pub const BRIDGE_CONTROL: usize = 0x3e;

pub const CMD_IO: u16 = 1 << 0;
pub const CMD_MEMORY: u16 = 1 << 1;
pub const CMD_MASTER: u16 = 1 << 2;
pub const CMD_PARITY: u16 = 1 << 6;
pub const CMD_SERR: u16 = 1 << 8;
pub const CMD_INTX_DISABLE: u16 = 1 << 10;

pub const STATUS_CAP_LIST: u16 = 1 << 4;
/// Master data parity error, signalled/received target abort, received master abort,
/// signalled system error, detected parity error: all RW1C.
pub const STATUS_ERROR_BITS: u16 = 0xf900;

// Capability IDs.
pub const CAP_ID_MSI: u8 = 0x05;
pub const CAP_ID_VNDR: u8 = 0x09;
pub const CAP_ID_EXP: u8 = 0x10;
pub const CAP_ID_MSIX: u8 = 0x11;

// Extended capability IDs.
pub const EXT_CAP_ID_ACS: u16 = 0x0d;
pub const EXT_CAP_ID_ARI: u16 = 0x0e;
pub const EXT_CAP_ID_SRIOV: u16 = 0x10;

// PCI Express capability (offsets from the capability).
pub const EXP_FLAGS: usize = 0x02;
pub const EXP_DEVCAP: usize = 0x04;
pub const EXP_DEVCTL: usize = 0x08;
pub const EXP_DEVSTA: usize = 0x0a;
pub const EXP_LNKCAP: usize = 0x0c;
pub const EXP_LNKCTL: usize = 0x10;
pub const EXP_LNKSTA: usize = 0x12;
pub const EXP_SLTCAP: usize = 0x14;
pub const EXP_SLTCTL: usize = 0x18;
pub const EXP_SLTSTA: usize = 0x1a;
pub const EXP_RTCTL: usize = 0x1c;
pub const EXP_RTCAP: usize = 0x1e;
pub const EXP_RTSTA: usize = 0x20;
pub const EXP_DEVCAP2: usize = 0x24;
pub const EXP_DEVCTL2: usize = 0x28;
pub const EXP_LNKCAP2: usize = 0x2c;
pub const EXP_LNKCTL2: usize = 0x30;
pub const EXP_LNKSTA2: usize = 0x32;
/// Length of a version 2 PCIe capability with slot and root registers.
pub const EXP_CAP_LEN: usize = 0x3c;

/// Device/port types in EXP_FLAGS[7:4].
pub const EXP_TYPE_ENDPOINT: u16 = 0x0;
pub const EXP_TYPE_ROOT_PORT: u16 = 0x4;
pub const EXP_TYPE_RC_END: u16 = 0x9;
pub const EXP_FLAGS_SLOT: u16 = 1 << 8;

pub const SLTCAP_ABP: u32 = 1 << 0;
pub const SLTCAP_PCP: u32 = 1 << 1;
pub const SLTCAP_AIP: u32 = 1 << 3;
pub const SLTCAP_PIP: u32 = 1 << 4;
pub const SLTCAP_HPS: u32 = 1 << 5;
pub const SLTCAP_HPC: u32 = 1 << 6;
pub const SLTCAP_NCCS: u32 = 1 << 18;
pub const SLTCAP_PSN_SHIFT: u32 = 19;

pub const SLTCTL_ABPE: u16 = 1 << 0;
pub const SLTCTL_PFDE: u16 = 1 << 1;
pub const SLTCTL_MRLSCE: u16 = 1 << 2;
pub const SLTCTL_PDCE: u16 = 1 << 3;
pub const SLTCTL_CCIE: u16 = 1 << 4;
pub const SLTCTL_HPIE: u16 = 1 << 5;
pub const SLTCTL_AIC: u16 = 3 << 6;
pub const SLTCTL_PIC: u16 = 3 << 8;
pub const SLTCTL_PCC: u16 = 1 << 10;
pub const SLTCTL_EIC: u16 = 1 << 11;
pub const SLTCTL_DLLSCE: u16 = 1 << 12;
/// Power indicator values in SLTCTL_PIC.
pub const PIC_ON: u16 = 1 << 8;
pub const PIC_BLINK: u16 = 2 << 8;
pub const PIC_OFF: u16 = 3 << 8;

pub const SLTSTA_ABP: u16 = 1 << 0;
pub const SLTSTA_PFD: u16 = 1 << 1;
pub const SLTSTA_MRLSC: u16 = 1 << 2;
pub const SLTSTA_PDC: u16 = 1 << 3;
pub const SLTSTA_CC: u16 = 1 << 4;
pub const SLTSTA_MRLSS: u16 = 1 << 5;
pub const SLTSTA_PDS: u16 = 1 << 6;
pub const SLTSTA_EIS: u16 = 1 << 7;
pub const SLTSTA_DLLSC: u16 = 1 << 8;
/// The RW1C event bits of Slot Status.
pub const SLTSTA_EVENTS: u16 =
    SLTSTA_ABP | SLTSTA_PFD | SLTSTA_MRLSC | SLTSTA_PDC | SLTSTA_CC | SLTSTA_DLLSC;

pub const LNKCAP_DLLLARC: u32 = 1 << 20;
pub const LNKSTA_DLLLA: u16 = 1 << 13;

pub const DEVCAP2_ARI: u32 = 1 << 5;
pub const DEVCTL2_ARI: u16 = 1 << 5;

// MSI-X capability (offsets from the capability).
pub const MSIX_FLAGS: usize = 0x02;
pub const MSIX_TABLE: usize = 0x04;
pub const MSIX_PBA: usize = 0x08;
pub const MSIX_FLAGS_ENABLE: u16 = 1 << 15;
pub const MSIX_FLAGS_MASKALL: u16 = 1 << 14;
