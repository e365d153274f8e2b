//! BAR0 register offsets and bit fields of the 82576 VF, as Linux's igbvf names them
//! (`regs.h`, `defines.h`, `mbx.h`).

/// Size of BAR0 (registers).
pub const BAR0_SIZE: u64 = 0x4000;

/// Device control; bit 26 is the VF's queue and interrupt reset.
pub const CTRL: u32 = 0x0000;
/// Device status: link up, full duplex, 1000 Mb/s.
pub const STATUS: u32 = 0x0008;
/// Mailbox memory, 16 words shared by both directions.
pub const VMBMEM: u32 = 0x0800;
/// Words of mailbox memory.
pub const VMBMEM_WORDS: usize = 16;
/// End of mailbox memory.
pub const VMBMEM_END: u32 = VMBMEM + 4 * 16;
/// VF-to-PF mailbox control.
pub const V2PMAILBOX: u32 = 0x0C40;

/// Good packets received.
pub const VFGPRC: u32 = 0x0F10;
/// Good packets transmitted.
pub const VFGPTC: u32 = 0x0F14;
/// Good octets received.
pub const VFGORC: u32 = 0x0F18;
/// Good octets transmitted.
pub const VFGOTC: u32 = 0x0F34;
/// Multicast packets received.
pub const VFMPRC: u32 = 0x0F3C;

/// Extended interrupt cause set.
pub const EICS: u32 = 0x1520;
/// Extended interrupt mask set (reads the mask).
pub const EIMS: u32 = 0x1524;
/// Extended interrupt mask clear.
pub const EIMC: u32 = 0x1528;
/// Extended interrupt auto clear.
pub const EIAC: u32 = 0x152C;
/// Extended interrupt auto mask.
pub const EIAM: u32 = 0x1530;
/// Extended interrupt cause.
pub const EICR: u32 = 0x1580;
/// Interrupt throttle of vector 0 (vectors 1 and 2 follow, 4 bytes apart).
pub const EITR0: u32 = 0x1680;
/// End of the EITR registers.
pub const EITR_END: u32 = EITR0 + 4 * 3;
/// Queue to vector mapping: RX 0 (byte 0), TX 0 (byte 1).
pub const IVAR0: u32 = 0x1700;
/// Mailbox to vector mapping (byte 0).
pub const IVAR_MISC: u32 = 0x1740;

/// RX ring base, low.
pub const RDBAL: u32 = 0x2800;
/// RX ring base, high.
pub const RDBAH: u32 = 0x2804;
/// RX ring length in bytes.
pub const RDLEN: u32 = 0x2808;
/// Split and replication receive control.
pub const SRRCTL: u32 = 0x280C;
/// RX head.
pub const RDH: u32 = 0x2810;
/// RX tail.
pub const RDT: u32 = 0x2818;
/// RX descriptor control.
pub const RXDCTL: u32 = 0x2828;

/// TX ring base, low.
pub const TDBAL: u32 = 0x3800;
/// TX ring base, high.
pub const TDBAH: u32 = 0x3804;
/// TX ring length in bytes.
pub const TDLEN: u32 = 0x3808;
/// TX head.
pub const TDH: u32 = 0x3810;
/// TX DCA control (plain storage).
pub const DCA_TXCTRL: u32 = 0x3814;
/// TX tail.
pub const TDT: u32 = 0x3818;
/// TX descriptor control.
pub const TXDCTL: u32 = 0x3828;

/// CTRL: VF reset, self-clearing.
pub const CTRL_RST: u32 = 1 << 26;
/// STATUS.FD: full duplex (bit 0).
pub const STATUS_FD: u32 = 0x01;
/// STATUS.LU: link up (bit 1; e1000's E1000_STATUS_LU).
pub const STATUS_LU: u32 = 0x02;
/// STATUS.SPEED = 1000 Mb/s (bits 7:6 = 10b).
pub const STATUS_SPEED_1000: u32 = 0x80;
/// STATUS with link: LU | FD | SPEED_1000 (0x83).
pub const STATUS_LINK_UP: u32 = STATUS_LU | STATUS_FD | STATUS_SPEED_1000;
/// STATUS without link: FD | SPEED_1000, LU clear (0x81).
pub const STATUS_LINK_DOWN: u32 = STATUS_FD | STATUS_SPEED_1000;

/// V2PMAILBOX: the VF posted a message.
pub const V2P_REQ: u32 = 0x01;
/// V2PMAILBOX: the VF acknowledges the PF's message.
pub const V2P_ACK: u32 = 0x02;
/// V2PMAILBOX: the VF holds the buffer.
pub const V2P_VFU: u32 = 0x04;
/// V2PMAILBOX: the PF holds the buffer.
pub const V2P_PFU: u32 = 0x08;
/// V2PMAILBOX: the PF posted a message (read to clear).
pub const V2P_PFSTS: u32 = 0x10;
/// V2PMAILBOX: the PF acknowledged the VF's message (read to clear).
pub const V2P_PFACK: u32 = 0x20;
/// V2PMAILBOX: PF reset in progress (level; always 0 here).
pub const V2P_RSTI: u32 = 0x40;
/// V2PMAILBOX: PF reset done (read to clear).
pub const V2P_RSTD: u32 = 0x80;
/// The read-to-clear bits of V2PMAILBOX.
pub const V2P_R2C_BITS: u32 = V2P_PFSTS | V2P_PFACK | V2P_RSTD;

/// The VF's three MSI-X vectors as EICR/EIMS bits.
pub const VECTOR_MASK: u32 = 0x7;
/// Number of MSI-X vectors.
pub const NUM_VECTORS: usize = 3;
/// IVAR entry valid bit.
pub const IVAR_VALID: u32 = 0x80;
/// EITR interval field (microseconds in bits 14:2).
pub const EITR_INTERVAL_MASK: u32 = 0x7FFC;

/// RXDCTL/TXDCTL: queue enable.
pub const DCTL_ENABLE: u32 = 1 << 25;
/// Mask of RDLEN/TDLEN (bytes, a multiple of 128, 20 bits).
pub const DLEN_MASK: u32 = 0x000F_FF80;
/// Mask of RDBAL/TDBAL (128-byte aligned).
pub const DBAL_MASK: u32 = !0x7F;

/// SRRCTL: packet buffer size in KiB.
pub const SRRCTL_BSIZEPKT_MASK: u32 = 0x7F;
/// SRRCTL: header buffer size in 64-byte units.
pub const SRRCTL_BSIZEHDR_MASK: u32 = 0xF00;
/// SRRCTL: shift of the header buffer size.
pub const SRRCTL_BSIZEHDR_SHIFT: u32 = 8;
/// SRRCTL: descriptor type field.
pub const SRRCTL_DESCTYPE_MASK: u32 = 0x0E00_0000;
/// SRRCTL descriptor type: advanced, one buffer.
pub const SRRCTL_DESCTYPE_ADV_ONEBUF: u32 = 0x0200_0000;
/// SRRCTL descriptor type: advanced, header split always.
pub const SRRCTL_DESCTYPE_HDR_SPLIT_ALWAYS: u32 = 0x0A00_0000;
/// SRRCTL: drop frames when no descriptor is free.
pub const SRRCTL_DROP_EN: u32 = 1 << 31;

/// Mailbox: ACK.
pub const MSG_ACK: u32 = 0x8000_0000;
/// Mailbox: NACK.
pub const MSG_NACK: u32 = 0x4000_0000;
/// Mailbox: clear to send.
pub const MSG_CTS: u32 = 0x2000_0000;
/// Mailbox: shift of the info field.
pub const MSG_INFO_SHIFT: u32 = 16;
/// Mailbox: the info field.
pub const MSG_INFO_MASK: u32 = 0xFF << MSG_INFO_SHIFT;
/// Mailbox request: reset.
pub const MSG_RESET: u32 = 0x01;
/// Mailbox request: set MAC address (info 1: clear filters, 2: add filter).
pub const MSG_SET_MAC_ADDR: u32 = 0x02;
/// Mailbox request: set multicast hashes (info: count).
pub const MSG_SET_MULTICAST: u32 = 0x03;
/// Mailbox request: add (info 1) or remove a VLAN.
pub const MSG_SET_VLAN: u32 = 0x04;
/// Mailbox request: set the largest receive frame.
pub const MSG_SET_LPE: u32 = 0x05;
/// Mailbox request: set promiscuous modes.
pub const MSG_SET_PROMISC: u32 = 0x06;
/// Mailbox message from the PF: control (link) ping.
pub const MSG_PF_CONTROL: u32 = 0x0100;
/// SET_MAC_ADDR info: clear the MAC filters.
pub const MAC_FILTER_CLR: u32 = 1;
/// SET_MAC_ADDR info: add a MAC filter.
pub const MAC_FILTER_ADD: u32 = 2;
/// SET_PROMISC info bit: unicast promiscuous.
pub const PROMISC_UNICAST: u32 = 0x1 << MSG_INFO_SHIFT;
/// SET_PROMISC info bit: multicast promiscuous.
pub const PROMISC_MULTICAST: u32 = 0x2 << MSG_INFO_SHIFT;

/// Descriptor size (RX and TX advanced).
pub const DESC_LEN: u64 = 16;

/// TX cmd_type_len: end of packet.
pub const TXD_EOP: u32 = 0x0100_0000;
/// TX cmd_type_len: insert FCS.
pub const TXD_IFCS: u32 = 0x0200_0000;
/// TX legacy cmd: insert checksum.
pub const TXD_IC: u32 = 0x0400_0000;
/// TX cmd_type_len: report status.
pub const TXD_RS: u32 = 0x0800_0000;
/// TX cmd_type_len: extended (advanced) descriptor.
pub const TXD_DEXT: u32 = 0x2000_0000;
/// TX cmd_type_len: insert VLAN.
pub const TXD_VLE: u32 = 0x4000_0000;
/// TX cmd_type_len: TCP segmentation.
pub const TXD_TSE: u32 = 0x8000_0000;
/// TX cmd_type_len: descriptor type field.
pub const TXD_DTYP_MASK: u32 = 0x00F0_0000;
/// TX descriptor type: context.
pub const TXD_DTYP_CTXT: u32 = 0x0020_0000;
/// TX descriptor type: data.
pub const TXD_DTYP_DATA: u32 = 0x0030_0000;
/// TX status: descriptor done.
pub const TXD_STAT_DD: u32 = 0x1;
/// TX olinfo: insert IPv4 checksum.
pub const TXD_POPTS_IXSM: u32 = 0x100;
/// TX olinfo: insert L4 checksum.
pub const TXD_POPTS_TXSM: u32 = 0x200;
/// TX olinfo: context index shift.
pub const TXD_IDX_SHIFT: u32 = 4;
/// TX context TUCMD: IPv4.
pub const TUCMD_IPV4: u32 = 0x400;
/// TX context TUCMD: shift of the L4 type (0 UDP, 1 TCP, 2 SCTP).
pub const TUCMD_L4T_SHIFT: u32 = 11;

/// RX status: descriptor done.
pub const RXD_STAT_DD: u32 = 0x01;
/// RX status: end of packet.
pub const RXD_STAT_EOP: u32 = 0x02;
/// RX status: ignore checksum indication.
pub const RXD_STAT_IXSM: u32 = 0x04;
/// RX status: VLAN stripped into the descriptor.
pub const RXD_STAT_VP: u32 = 0x08;
/// RX error: RX data error (the frame is dropped by the driver).
pub const RXD_ERR_RXE: u32 = 0x8000_0000;
/// RX hdr_info: shift of the header length.
pub const RXD_HDR_LEN_SHIFT: u32 = 5;
/// RX hdr_info: split header.
pub const RXD_HDR_SPH: u32 = 0x8000;
