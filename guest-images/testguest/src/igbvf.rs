//! A ring-3 driver for the Intel 82576 Virtual Function (8086:10CA) as Linux's igbvf
//! drives it (vf.c `e1000_reset_hw_vf`, mbx.c's posted mailbox, netdev.c's ring set-up and
//! MSI-X routing), after the host-side driver in devices/src/sriov/igbvf/driver.rs, without
//! a heap. See shared/reference/igb-82576.md.
//!
//! Bring-up ([`Igbvf::open`]): memory decoding and bus mastering on, BAR0 (registers) and
//! the MSI-X table mapped, the three MSI-X entries routed to this CPU (0 TX, 1 RX, 2
//! mailbox and link, as igbvf numbers them), CTRL.RST, the mailbox RESET handshake that
//! yields the permanent MAC, SET_LPE for MTU 1500, one TX and one RX ring of advanced
//! descriptors with a 2 KiB buffer each in a scratch area of RAM, IVAR0/IVAR_MISC, and
//! EIAC = EIAM = EIMS = 7. After that the caller moves frames: TX descriptors are queued and
//! sent behind one TDT write ([`Igbvf::queue_tx`], [`Igbvf::kick_tx`]) and reclaimed by
//! their DD bit; RX descriptors are taken by their DD bit and given back in batches behind
//! one RDT write.
//!
//! Interrupts auto-mask (EIAM): a vector fires once, then stays quiet until the driver
//! writes its EIMS bit again, as igbvf does at the end of its handlers.
//! [`Igbvf::rearm`] does that for the vectors that fired since it last ran.
//!
//! Nothing the device returns can panic or hang the driver: every wait is bounded by a
//! [`Deadline`], and every malformed answer is an [`IgbvfError`].

use core::fmt;
use core::sync::atomic::{Ordering, compiler_fence};

use crate::bootparams::{BootParams, E820_RAM};
use crate::paging::{self, MapError};
use crate::pcie::{Bdf, Ecam, Topology, regs};
use crate::ring0::{self, BSP_CPU, SPURIOUS_VECTOR};
use crate::time::{self, Deadline};
use crate::{lapic, mmio, phys};

/// PCI vendor ID (Intel).
pub const VENDOR_ID: u16 = 0x8086;
/// PCI device ID of the 82576 VF.
pub const DEVICE_ID: u16 = 0x10ca;
/// Bytes of BAR0 (the registers).
pub const BAR0_SIZE: u64 = 0x4000;
/// Bytes of each RX and TX buffer (SRRCTL's packet buffer size: 2 KiB, igbvf's default).
pub const BUF_LEN: u64 = 2048;
/// The longest frame [`Igbvf::queue_tx`] takes and [`Igbvf::recv`] returns.
pub const MAX_FRAME: usize = BUF_LEN as usize;
/// What igbvf adds to the MTU for SET_LPE: Ethernet header, FCS and one VLAN tag.
pub const MTU_OVERHEAD: u32 = 14 + 4 + 4;
/// The MTU [`Igbvf::open`] asks for.
pub const DEFAULT_MTU: u32 = 1500;
/// IDT vectors the MSI-X entries deliver: RX queue 0, TX queue 0, "other" (mailbox).
pub const RX_VECTOR: u8 = 0x58;
/// See [`RX_VECTOR`].
pub const TX_VECTOR: u8 = 0x59;
/// See [`RX_VECTOR`].
pub const OTHER_VECTOR: u8 = 0x5a;
/// MSI-X entries (and EICR/EIMS bits) as igbvf assigns them: TX 0, RX 1, other 2.
pub const TX_MSIX: u32 = 0;
/// See [`TX_MSIX`].
pub const RX_MSIX: u32 = 1;
/// See [`TX_MSIX`].
pub const OTHER_MSIX: u32 = 2;
/// MSI-X entry and IDT vector of each EIMS bit, in bit order.
const VECTORS: [(u32, u8); 3] = [
    (TX_MSIX, TX_VECTOR),
    (RX_MSIX, RX_VECTOR),
    (OTHER_MSIX, OTHER_VECTOR),
];
/// Budget of each mailbox wait (igbvf: 1 s). Every poll is a register read the VMM
/// forwards to nicd, so this is generous.
const MBX_BUDGET: u64 = time::BUDGET / 4;

/// BAR0 registers (Linux's regs.h names, without `E1000_`).
pub mod reg {
    /// Device control.
    pub const CTRL: u32 = 0x0000;
    /// Device status.
    pub const STATUS: u32 = 0x0008;
    /// Mailbox memory: 16 words shared by both directions.
    pub const VMBMEM: u32 = 0x0800;
    /// VF-to-PF mailbox control.
    pub const V2PMAILBOX: u32 = 0x0c40;
    /// Good packets received.
    pub const VFGPRC: u32 = 0x0f10;
    /// Good packets transmitted.
    pub const VFGPTC: u32 = 0x0f14;
    /// Good octets received.
    pub const VFGORC: u32 = 0x0f18;
    /// Good octets transmitted.
    pub const VFGOTC: u32 = 0x0f34;
    /// Multicast packets received.
    pub const VFMPRC: u32 = 0x0f3c;
    /// Extended interrupt cause set.
    pub const EICS: u32 = 0x1520;
    /// Extended interrupt mask set (reads the mask).
    pub const EIMS: u32 = 0x1524;
    /// Extended interrupt mask clear.
    pub const EIMC: u32 = 0x1528;
    /// Extended interrupt auto clear.
    pub const EIAC: u32 = 0x152c;
    /// Extended interrupt auto mask.
    pub const EIAM: u32 = 0x1530;
    /// Extended interrupt cause.
    pub const EICR: u32 = 0x1580;
    /// Queue to vector mapping: RX queue 0 in byte 0, TX queue 0 in byte 1.
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
    pub const SRRCTL: u32 = 0x280c;
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
    /// TX tail.
    pub const TDT: u32 = 0x3818;
    /// TX descriptor control.
    pub const TXDCTL: u32 = 0x3828;
}

use reg::*;

/// CTRL: VF reset (self-clearing).
pub const CTRL_RST: u32 = 1 << 26;
/// STATUS: link up.
pub const STATUS_LU: u32 = 1 << 1;
/// V2PMAILBOX: the VF posted a message.
const V2P_REQ: u32 = 0x01;
/// V2PMAILBOX: the VF read the PF's message.
const V2P_ACK: u32 = 0x02;
/// V2PMAILBOX: the VF holds the buffer.
const V2P_VFU: u32 = 0x04;
/// V2PMAILBOX: the PF posted a message (read to clear).
const V2P_PFSTS: u32 = 0x10;
/// V2PMAILBOX: the PF acknowledged the VF's message (read to clear).
const V2P_PFACK: u32 = 0x20;
/// V2PMAILBOX: the PF is in reset (level).
const V2P_RSTI: u32 = 0x40;
/// V2PMAILBOX: the PF finished a reset (read to clear).
const V2P_RSTD: u32 = 0x80;
/// The read-to-clear bits, which the driver remembers between reads as igbvf does.
const V2P_R2C: u32 = V2P_PFSTS | V2P_PFACK | V2P_RSTD;
/// Words of mailbox memory.
const VMBMEM_WORDS: usize = 16;
/// Message word 0: ACK.
pub const MSG_ACK: u32 = 0x8000_0000;
/// Message word 0: NACK.
pub const MSG_NACK: u32 = 0x4000_0000;
/// Message word 0: clear to send (the PF has seen the VF's RESET).
pub const MSG_CTS: u32 = 0x2000_0000;
/// Message word 0: the info field (bits 23:16).
const MSG_INFO_SHIFT: u32 = 16;
/// Requests (word 0, low 16 bits).
const MSG_RESET: u32 = 0x01;
const MSG_SET_MAC_ADDR: u32 = 0x02;
const MSG_SET_MULTICAST: u32 = 0x03;
const MSG_SET_VLAN: u32 = 0x04;
const MSG_SET_LPE: u32 = 0x05;
/// A message from the PF: control (link) ping.
const MSG_PF_CONTROL: u32 = 0x0100;
/// EICR/EIMS/EIAC/EIAM: the three vectors.
const VECTOR_BITS: u32 = 0x7;
/// IVAR entry valid bit.
const IVAR_VALID: u32 = 0x80;
/// RXDCTL/TXDCTL: queue enable.
const DCTL_ENABLE: u32 = 1 << 25;
/// igbvf's RXDCTL thresholds: prefetch 16, host 8, write-back 1.
const RXDCTL_THRESHOLDS: u32 = 16 | (8 << 8) | (1 << 16);
/// SRRCTL: drop frames when no descriptor is free.
const SRRCTL_DROP_EN: u32 = 1 << 31;
/// SRRCTL: advanced one-buffer descriptors.
const SRRCTL_DESCTYPE_ADV_ONEBUF: u32 = 0x0200_0000;
/// SRRCTL: packet buffer size in KiB.
const SRRCTL_BSIZEPKT_KIB: u32 = (BUF_LEN / 1024) as u32;
/// TX cmd_type_len: advanced data descriptor, end of packet, insert FCS, report status.
const TXD_DTYP_DATA: u32 = 0x0030_0000;
const TXD_EOP: u32 = 0x0100_0000;
const TXD_IFCS: u32 = 0x0200_0000;
const TXD_RS: u32 = 0x0800_0000;
const TXD_DEXT: u32 = 0x2000_0000;
/// TX olinfo_status: shift of PAYLEN.
const TXD_PAYLEN_SHIFT: u32 = 14;
/// TX and RX write-back: descriptor done.
const STAT_DD: u32 = 0x01;
/// RX write-back: end of packet.
const RXD_STAT_EOP: u32 = 0x02;
/// RX write-back errors that spoil the frame (CE, SE, SEQ, CXE, RXE; not the checksum
/// ones), igbvf's `E1000_RXDEXT_ERR_FRAME_ERR_MASK`.
const RXD_ERR_FRAME: u32 = 0x9700_0000;
/// RX write-back: the frame could not be received (its buffer was unreachable).
pub const RXD_ERR_RXE: u32 = 0x8000_0000;
/// Ethernet header.
const ETH_HLEN: usize = 14;

/// Why the driver gave up.
#[derive(Debug, Clone, Copy)]
pub enum IgbvfError {
    /// No 8086:10CA function number n (from 0) in the PCI topology.
    NotFound(usize),
    /// A BAR that is not an assigned memory BAR: its number and address.
    Bar(u8, u64),
    /// The function has no MSI-X capability.
    NoMsix,
    /// The MSI-X table has fewer than the three entries igbvf needs.
    MsixVectors(u16),
    /// A BAR could not be mapped.
    Map(MapError),
    /// The scratch area (base, length) is not RAM or too small for the rings.
    Scratch(u64, u64),
    /// A ring size igbvf would not use (a multiple of 8 from 8 to 4096).
    RingSize(u16),
    /// After CTRL.RST the mailbox still shows a PF reset (V2PMAILBOX).
    ResetStuck(u32),
    /// The VF could not take the mailbox buffer (V2PMAILBOX).
    MailboxBusy(u32),
    /// The PF did not acknowledge the message with this word 0.
    NoAck(u32),
    /// The PF did not answer the message with this word 0.
    NoReply(u32),
    /// RESET answered with NACK: the PF has no MAC for this VF.
    NoMac,
    /// RESET answered with this word 0 instead of 0x80000001.
    ResetReply(u32),
    /// The permanent MAC is not a unicast address.
    BadMac([u8; 6]),
    /// A reply that does not answer the request.
    BadReply {
        /// Word 0 of the request.
        request: u32,
        /// Word 0 of the reply.
        reply: u32,
    },
    /// The PF's last message is a NACK without CTS: it no longer knows the VF (word 0).
    LostCts(u32),
    /// A VLAN ID above 4095.
    BadVlan(u16),
    /// A frame of this many bytes cannot be sent (1 to [`MAX_FRAME`]).
    FrameSize(usize),
    /// An RX descriptor written back with a frame the driver cannot take.
    RxDescriptor {
        /// Its index in the ring.
        index: u32,
        /// Status and error dword.
        status: u32,
        /// Length.
        len: usize,
    },
    /// TX descriptors not written back within the budget.
    TxStuck {
        /// How many were outstanding.
        in_flight: u32,
    },
}

impl From<MapError> for IgbvfError {
    fn from(e: MapError) -> Self {
        Self::Map(e)
    }
}

impl fmt::Display for IgbvfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::NotFound(0) => write!(f, "no {VENDOR_ID:04x}:{DEVICE_ID:04x} VF"),
            Self::NotFound(n) => write!(f, "no {VENDOR_ID:04x}:{DEVICE_ID:04x} VF number {n}"),
            Self::Bar(i, addr) => write!(f, "BAR{i} ({addr:#x}) is not an assigned memory BAR"),
            Self::NoMsix => write!(f, "the VF has no MSI-X capability"),
            Self::MsixVectors(n) => write!(f, "MSI-X table of {n} entries, 3 needed"),
            Self::Map(e) => write!(f, "{e}"),
            Self::Scratch(base, len) => write!(
                f,
                "scratch area {base:#x} (+{len:#x}) is not RAM or too small for the rings"
            ),
            Self::RingSize(n) => write!(
                f,
                "ring of {n} descriptors: a multiple of 8 from 8 to 4096 is needed"
            ),
            Self::ResetStuck(v) => write!(
                f,
                "PF still in reset state after CTRL.RST (V2PMAILBOX {v:#x})"
            ),
            Self::MailboxBusy(v) => {
                write!(f, "the VF cannot take the mailbox (V2PMAILBOX {v:#x})")
            }
            Self::NoAck(w) => write!(f, "mailbox: the PF did not acknowledge {w:#010x}"),
            Self::NoReply(w) => write!(f, "mailbox: the PF did not answer {w:#010x}"),
            Self::NoMac => write!(f, "mailbox: RESET was NACKed (no MAC assigned)"),
            Self::ResetReply(w) => write!(
                f,
                "mailbox: RESET answered with {w:#010x}, expected {:#010x}",
                MSG_RESET | MSG_ACK
            ),
            Self::BadMac(m) => write!(f, "permanent MAC {} is not unicast", Mac(m)),
            Self::BadReply { request, reply } => {
                write!(f, "mailbox: {request:#010x} answered with {reply:#010x}")
            }
            Self::LostCts(w) => {
                write!(f, "mailbox: the PF sent {w:#010x} (NACK without CTS)")
            }
            Self::BadVlan(v) => write!(f, "VLAN ID {v} is above 4095"),
            Self::FrameSize(n) => write!(f, "a frame of {n} bytes cannot be sent"),
            Self::RxDescriptor { index, status, len } => write!(
                f,
                "RX descriptor {index} written back with status {status:#010x}, length {len}"
            ),
            Self::TxStuck { in_flight } => write!(
                f,
                "{in_flight} TX descriptors not written back within the budget"
            ),
        }
    }
}

/// A MAC address, displayed as `aa:bb:cc:dd:ee:ff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// The PF's answer to a configuration request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Granted.
    Ack,
    /// Refused.
    Nack,
    /// A link ping from the PF replaced the reply before it was read (igb does this to
    /// the replies of SET_LPE and SET_MULTICAST, which igbvf never reads).
    Replaced,
}

/// The VF's statistics registers (free-running 32-bit counters, not cleared by CTRL.RST).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// VFGPRC: good packets received.
    pub gprc: u32,
    /// VFGPTC: good packets transmitted.
    pub gptc: u32,
    /// VFGORC: good octets received.
    pub gorc: u32,
    /// VFGOTC: good octets transmitted.
    pub gotc: u32,
    /// VFMPRC: multicast packets received.
    pub mprc: u32,
}

impl Stats {
    /// What the counters counted since `earlier` (modulo 2^32).
    pub fn since(&self, earlier: &Stats) -> Stats {
        Stats {
            gprc: self.gprc.wrapping_sub(earlier.gprc),
            gptc: self.gptc.wrapping_sub(earlier.gptc),
            gorc: self.gorc.wrapping_sub(earlier.gorc),
            gotc: self.gotc.wrapping_sub(earlier.gotc),
            mprc: self.mprc.wrapping_sub(earlier.mprc),
        }
    }
}

/// The `nth` (from 0) 82576 VF in the topology, depth first.
pub fn find(topo: &Topology, nth: usize) -> Result<Bdf, IgbvfError> {
    topo.with_id(VENDOR_ID, DEVICE_ID)
        .nth(nth)
        .map(|f| f.bdf)
        .ok_or(IgbvfError::NotFound(nth))
}

/// Where [`Igbvf::open`] puts the RX buffers of rings of `ring` descriptors in a scratch
/// area starting at `base`: (start, length), page aligned.
pub fn rx_buffer_area(base: u64, ring: u16) -> (u64, u64) {
    let (layout, _) = Layout::place(base, u32::from(ring));
    (layout.rx_bufs, BUF_LEN * u64::from(ring))
}

/// Where the rings and buffers lie in the scratch area.
#[derive(Debug, Clone, Copy)]
struct Layout {
    tx_ring: u64,
    rx_ring: u64,
    tx_bufs: u64,
    rx_bufs: u64,
}

impl Layout {
    /// Where rings of `count` descriptors and their buffers go from `base` on, and the
    /// bytes of the rings.
    fn place(base: u64, count: u32) -> (Self, u64) {
        let ring = (16 * u64::from(count)).next_multiple_of(4096);
        let bufs = BUF_LEN * u64::from(count);
        let tx_ring = base.next_multiple_of(4096);
        let layout = Self {
            tx_ring,
            rx_ring: tx_ring + ring,
            tx_bufs: tx_ring + 2 * ring,
            rx_bufs: tx_ring + 2 * ring + bufs,
        };
        (layout, ring)
    }

    /// Rings of `count` descriptors and their buffers in `[base, base + len)`, which must
    /// be RAM. The rings are zeroed.
    fn new(boot: &BootParams, (base, len): (u64, u64), count: u32) -> Result<Self, IgbvfError> {
        let bad = IgbvfError::Scratch(base, len);
        if !matches!(boot.e820_entry_containing(base, len), Some(e) if e.kind == E820_RAM)
            || !phys::is_mapped(base, len)
        {
            return Err(bad);
        }
        let (layout, ring) = Self::place(base, count);
        let tx_ring = layout.tx_ring;
        if layout.rx_bufs + BUF_LEN * u64::from(count) > base + len {
            return Err(bad);
        }
        for q in (tx_ring..tx_ring + 2 * ring).step_by(8) {
            phys::write_u64(q, 0);
        }
        Ok(layout)
    }
}

/// A running VF.
#[derive(Debug)]
pub struct Igbvf {
    /// Where it is.
    pub bdf: Bdf,
    /// The permanent MAC the PF gave in its RESET reply.
    pub mac: [u8; 6],
    ecam: Ecam,
    regs: u64,
    msix_cap: u16,
    msix_table: u64,
    msix_pba: u64,
    /// Descriptors per ring.
    count: u32,
    layout: Layout,
    /// Added to every guest-physical address the device is given (an IOMMU's IOVAs).
    dma_offset: u64,
    /// Read-to-clear V2PMAILBOX bits seen and not yet consumed.
    v2p_soft: u32,
    /// Next TX descriptor to fill.
    tx_tail: u32,
    /// Oldest TX descriptor not yet seen done.
    tx_clean: u32,
    /// Next RX descriptor to look at.
    rx_next: u32,
    /// RX descriptors given back since RDT was last written.
    rx_unposted: u32,
    /// Interrupts counted on each vector (EIMS bit order) when it was last re-armed.
    armed: [u64; 3],
}

impl Igbvf {
    /// Brings the VF at `bdf` up with rings of `ring` descriptors in the RAM at `scratch`
    /// (base, length): see the module documentation. RX is armed when this returns; the
    /// link may still be coming up ([`Igbvf::wait_link`]).
    pub fn open(
        ecam: &Ecam,
        bdf: Bdf,
        boot: &BootParams,
        scratch: (u64, u64),
        ring: u16,
    ) -> Result<Self, IgbvfError> {
        Self::open_translated(ecam, bdf, boot, scratch, ring, 0)
    }

    /// [`Igbvf::open`] for a VF behind an IOMMU that maps the scratch area at its
    /// guest-physical address plus `dma_offset`: every address the device is given (ring
    /// bases, buffers) is the IOVA; the driver itself reads and writes guest-physical.
    pub fn open_translated(
        ecam: &Ecam,
        bdf: Bdf,
        boot: &BootParams,
        scratch: (u64, u64),
        ring: u16,
        dma_offset: u64,
    ) -> Result<Self, IgbvfError> {
        let count = u32::from(ring);
        if !(8..=4096).contains(&count) || !count.is_multiple_of(8) {
            return Err(IgbvfError::RingSize(ring));
        }
        let layout = Layout::new(boot, scratch, count)?;
        let bar0 = ecam.bar(bdf, 0);
        if bar0.io || bar0.addr == 0 {
            return Err(IgbvfError::Bar(0, bar0.addr));
        }
        paging::map_uncached(bar0.addr, BAR0_SIZE)?;
        let msix_cap = ecam
            .capabilities(bdf)
            .find(regs::CAP_MSIX)
            .ok_or(IgbvfError::NoMsix)?;
        let entries = (ecam.read16(bdf, msix_cap + regs::MSIX_FLAGS) & regs::MSIX_FLAGS_QSIZE) + 1;
        if entries < 3 {
            return Err(IgbvfError::MsixVectors(entries));
        }
        // The table and the PBA: a BAR indicator and an offset into that BAR each.
        let locate = |reg: u16, len: u64| -> Result<u64, IgbvfError> {
            let v = ecam.read32(bdf, msix_cap + reg);
            let bir = (v & regs::MSIX_BIR) as u8;
            if bir > 5 {
                return Err(IgbvfError::Bar(bir, 0));
            }
            let bar = ecam.bar(bdf, bir);
            if bar.io || bar.addr == 0 {
                return Err(IgbvfError::Bar(bir, bar.addr));
            }
            let addr = bar.addr + u64::from(v & !regs::MSIX_BIR);
            paging::map_uncached(addr, len)?;
            Ok(addr)
        };
        let msix_table = locate(regs::MSIX_TABLE, regs::MSIX_ENTRY_SIZE * u64::from(entries))?;
        let msix_pba = locate(regs::MSIX_PBA, 8)?;
        let cmd = ecam.read16(bdf, regs::COMMAND);
        ecam.write16(
            bdf,
            regs::COMMAND,
            cmd | regs::COMMAND_MEMORY | regs::COMMAND_MASTER,
        );
        let mut vf = Self {
            bdf,
            mac: [0; 6],
            ecam: *ecam,
            regs: bar0.addr,
            msix_cap,
            msix_table,
            msix_pba,
            count,
            layout,
            dma_offset,
            v2p_soft: 0,
            tx_tail: 0,
            tx_clean: 0,
            rx_next: 0,
            rx_unposted: 0,
            armed: [0; 3],
        };
        vf.setup_msix();
        // igbvf's probe: every interrupt masked, no auto clear, then the reset handshake.
        vf.write(EIMC, !0);
        vf.write(EIAC, 0);
        vf.mac = vf.reset_hw()?;
        // igbvf_open: max frame for the MTU, TX ring, RX ring, MSI-X routing, interrupts.
        // Its reply carries CTS, which the link check wants to see.
        vf.set_mtu(DEFAULT_MTU)?;
        vf.configure_tx();
        vf.configure_rx();
        vf.write(IVAR0, ((IVAR_VALID | TX_MSIX) << 8) | IVAR_VALID | RX_MSIX);
        vf.write(IVAR_MISC, IVAR_VALID | OTHER_MSIX);
        vf.read(EICR);
        vf.armed = VECTORS.map(|(_, v)| ring0::irq_count(BSP_CPU, v));
        vf.write(EIAC, VECTOR_BITS);
        vf.write(EIAM, VECTOR_BITS);
        vf.write(EIMS, VECTOR_BITS);
        Ok(vf)
    }

    /// The address the device uses for guest-physical `gpa`.
    fn dma(&self, gpa: u64) -> u64 {
        gpa.wrapping_add(self.dma_offset)
    }

    /// The guest-physical address of RX buffer `i`.
    pub fn rx_buf(&self, i: u32) -> u64 {
        self.layout.rx_bufs + BUF_LEN * u64::from(i)
    }

    /// The RX descriptor the device fills next (the driver's view: the next one it takes).
    pub fn rx_next(&self) -> u32 {
        self.rx_next
    }

    /// Reads register `reg` of BAR0.
    pub fn read(&self, reg: u32) -> u32 {
        mmio::read32(self.regs + u64::from(reg & 0x3ffc))
    }

    /// Writes register `reg` of BAR0.
    pub fn write(&self, reg: u32, value: u32) {
        mmio::write32(self.regs + u64::from(reg & 0x3ffc), value);
    }

    /// Descriptors per ring.
    pub fn ring_size(&self) -> u32 {
        self.count
    }

    // --- MSI-X ---------------------------------------------------------------------------

    /// Entries 0-2 deliver [`TX_VECTOR`], [`RX_VECTOR`] and [`OTHER_VECTOR`] to this CPU,
    /// unmasked; MSI-X on, function mask off.
    fn setup_msix(&self) {
        lapic::enable(SPURIOUS_VECTOR);
        let apic = lapic::id();
        for (entry, vector) in VECTORS {
            let e = self.msix_table + regs::MSIX_ENTRY_SIZE * u64::from(entry);
            mmio::write32(e + regs::MSIX_ENTRY_LOWER_ADDR, lapic::msi_address(apic));
            mmio::write32(e + regs::MSIX_ENTRY_UPPER_ADDR, 0);
            mmio::write32(e + regs::MSIX_ENTRY_DATA, u32::from(vector));
            mmio::write32(e + regs::MSIX_ENTRY_VECTOR_CTRL, 0);
        }
        let reg = self.msix_cap + regs::MSIX_FLAGS;
        let flags = self.ecam.read16(self.bdf, reg);
        self.ecam.write16(
            self.bdf,
            reg,
            (flags | regs::MSIX_FLAGS_ENABLE) & !regs::MSIX_FLAGS_MASKALL,
        );
    }

    /// Masks or unmasks MSI-X entry `entry` (0 TX, 1 RX, 2 other).
    pub fn msix_mask(&self, entry: u32, masked: bool) {
        let e = self.msix_table + regs::MSIX_ENTRY_SIZE * u64::from(entry % 3);
        mmio::write32(e + regs::MSIX_ENTRY_VECTOR_CTRL, u32::from(masked));
    }

    /// The PBA's pending bits (bit n: entry n).
    pub fn msix_pending(&self) -> u32 {
        mmio::read32(self.msix_pba)
    }

    /// Writes EIMS for every vector that interrupted since it was last re-armed (EIAM
    /// masked it when it fired). Costs nothing when none did.
    pub fn rearm(&mut self) {
        let mut bits = 0;
        for (i, (_, vector)) in VECTORS.iter().enumerate() {
            let n = ring0::irq_count(BSP_CPU, *vector);
            if n != self.armed[i] {
                self.armed[i] = n;
                bits |= 1 << i;
            }
        }
        if bits != 0 {
            self.write(EIMS, bits);
        }
    }

    // --- Mailbox -------------------------------------------------------------------------

    /// V2PMAILBOX with the read-to-clear bits seen earlier and not yet consumed
    /// (`e1000_read_v2p_mailbox`).
    fn read_v2p(&mut self) -> u32 {
        let v = self.read(V2PMAILBOX) | self.v2p_soft;
        self.v2p_soft |= v & V2P_R2C;
        v
    }

    /// Whether any of `mask` is set; consumes them (`e1000_check_for_bit_vf`).
    fn check_bit(&mut self, mask: u32) -> bool {
        let v = self.read_v2p();
        self.v2p_soft &= !mask;
        v & mask != 0
    }

    /// Polls `check_bit(mask)` until it holds or the mailbox budget runs out.
    fn poll_bit(&mut self, mask: u32) -> bool {
        let deadline = Deadline::after(MBX_BUDGET);
        loop {
            if self.check_bit(mask) {
                return true;
            }
            if deadline.expired() {
                return false;
            }
            core::hint::spin_loop();
        }
    }

    /// Takes the buffer (VFU), retrying while the PF holds it.
    fn obtain_lock(&mut self) -> Result<(), IgbvfError> {
        let deadline = Deadline::after(MBX_BUDGET);
        loop {
            self.write(V2PMAILBOX, V2P_VFU);
            let v = self.read_v2p();
            if v & V2P_VFU != 0 {
                return Ok(());
            }
            if deadline.expired() {
                return Err(IgbvfError::MailboxBusy(v));
            }
            time::delay_us(100);
        }
    }

    /// `e1000_write_posted_mbx`: takes the buffer, drops stale PFSTS/PFACK, writes `msg`
    /// (at most 16 words), sets REQ and waits for PFACK.
    fn write_posted(&mut self, msg: &[u32]) -> Result<(), IgbvfError> {
        let word0 = msg.first().copied().unwrap_or(0);
        self.obtain_lock()?;
        self.check_bit(V2P_PFSTS);
        self.check_bit(V2P_PFACK);
        for (i, w) in (0u32..).zip(msg.iter().take(VMBMEM_WORDS)) {
            self.write(VMBMEM + 4 * i, *w);
        }
        self.write(V2PMAILBOX, V2P_REQ);
        if !self.poll_bit(V2P_PFACK) {
            return Err(IgbvfError::NoAck(word0));
        }
        Ok(())
    }

    /// `e1000_read_mbx_vf`: takes the buffer, reads `out.len()` words, sets ACK.
    fn read_mbx(&mut self, out: &mut [u32]) -> Result<(), IgbvfError> {
        self.obtain_lock()?;
        for (i, w) in (0u32..).zip(out.iter_mut().take(VMBMEM_WORDS)) {
            *w = self.read(VMBMEM + 4 * i);
        }
        self.write(V2PMAILBOX, V2P_ACK);
        Ok(())
    }

    /// Sends `msg` (at most 16 words) and reads the reply into `reply`: igbvf's
    /// `write_posted` (PFACK), then `read_posted` (PFSTS, then the words and ACK).
    pub fn request(&mut self, msg: &[u32], reply: &mut [u32]) -> Result<(), IgbvfError> {
        self.write_posted(msg)?;
        if !self.poll_bit(V2P_PFSTS) {
            return Err(IgbvfError::NoReply(msg.first().copied().unwrap_or(0)));
        }
        self.read_mbx(reply)
    }

    /// A configuration request and the PF's verdict.
    fn configure(&mut self, msg: &[u32]) -> Result<Verdict, IgbvfError> {
        let request = msg.first().copied().unwrap_or(0);
        let mut reply = [0u32; 1];
        self.request(msg, &mut reply)?;
        let reply = reply[0];
        let unread_by_igbvf = matches!(request & 0xffff, MSG_SET_LPE | MSG_SET_MULTICAST);
        if unread_by_igbvf && reply & 0xffff == MSG_PF_CONTROL {
            return Ok(Verdict::Replaced);
        }
        if reply & !(MSG_ACK | MSG_NACK | MSG_CTS) != request {
            return Err(IgbvfError::BadReply { request, reply });
        }
        match reply & (MSG_ACK | MSG_NACK) {
            MSG_ACK => Ok(Verdict::Ack),
            MSG_NACK => Ok(Verdict::Nack),
            _ => Err(IgbvfError::BadReply { request, reply }),
        }
    }

    /// `e1000_reset_hw_vf`: CTRL.RST, wait while the mailbox shows a PF reset (RSTD, read
    /// to clear, or RSTI), RESET, and the permanent MAC from the reply (3 words: ACK, MAC
    /// bytes 0-3, MAC bytes 4-5).
    fn reset_hw(&mut self) -> Result<[u8; 6], IgbvfError> {
        let ctrl = self.read(CTRL);
        self.write(CTRL, ctrl | CTRL_RST);
        let deadline = Deadline::after(MBX_BUDGET);
        while self.check_bit(V2P_RSTD | V2P_RSTI) {
            if deadline.expired() {
                return Err(IgbvfError::ResetStuck(self.read(V2PMAILBOX)));
            }
            core::hint::spin_loop();
        }
        self.v2p_soft = 0;
        let mut reply = [0u32; 3];
        self.request(&[MSG_RESET], &mut reply)?;
        match reply[0] {
            w if w == MSG_RESET | MSG_ACK => {}
            w if w & !MSG_CTS == MSG_RESET | MSG_NACK => return Err(IgbvfError::NoMac),
            w => return Err(IgbvfError::ResetReply(w)),
        }
        let (a, b) = (reply[1].to_le_bytes(), reply[2].to_le_bytes());
        let mac = [a[0], a[1], a[2], a[3], b[0], b[1]];
        if mac[0] & 1 != 0 || mac == [0; 6] {
            return Err(IgbvfError::BadMac(mac));
        }
        Ok(mac)
    }

    /// SET_MAC_ADDR: asks for `mac` as the VF's address (an untrusted VF may only set its
    /// admin MAC).
    pub fn set_mac(&mut self, mac: [u8; 6]) -> Result<Verdict, IgbvfError> {
        self.configure(&[
            MSG_SET_MAC_ADDR,
            u32::from_le_bytes([mac[0], mac[1], mac[2], mac[3]]),
            u32::from_le_bytes([mac[4], mac[5], 0, 0]),
        ])
    }

    /// SET_LPE: the largest frame to receive, FCS and VLAN tag included.
    pub fn set_max_frame(&mut self, bytes: u32) -> Result<Verdict, IgbvfError> {
        self.configure(&[MSG_SET_LPE, bytes])
    }

    /// SET_LPE for `mtu`, as igbvf asks (MTU + [`MTU_OVERHEAD`]).
    pub fn set_mtu(&mut self, mtu: u32) -> Result<Verdict, IgbvfError> {
        self.set_max_frame(mtu.saturating_add(MTU_OVERHEAD))
    }

    /// SET_VLAN: joins (`add`) or leaves VLAN `vid`.
    pub fn set_vlan(&mut self, vid: u16, add: bool) -> Result<Verdict, IgbvfError> {
        if vid > 4095 {
            return Err(IgbvfError::BadVlan(vid));
        }
        let info = u32::from(add) << MSG_INFO_SHIFT;
        self.configure(&[MSG_SET_VLAN | info, u32::from(vid)])
    }

    // --- Link and counters ---------------------------------------------------------------

    /// igbvf's link check (`e1000_check_for_link_vf`): STATUS.LU, and the PF's last
    /// mailbox message (read without waiting for PFSTS) carries CTS. A NACK without CTS
    /// means the PF lost the VF's RESET.
    pub fn link_up(&mut self) -> Result<bool, IgbvfError> {
        if self.read(STATUS) & STATUS_LU == 0 {
            return Ok(false);
        }
        let mut word = [0u32; 1];
        self.read_mbx(&mut word)?;
        match word[0] {
            w if w & MSG_CTS != 0 => Ok(true),
            w if w & MSG_NACK != 0 => Err(IgbvfError::LostCts(w)),
            _ => Ok(false),
        }
    }

    /// Checks the link every millisecond until it is up or `budget` TSC cycles pass;
    /// returns whether it came up.
    pub fn wait_link(&mut self, budget: u64) -> Result<bool, IgbvfError> {
        let deadline = Deadline::after(budget);
        loop {
            if self.link_up()? {
                return Ok(true);
            }
            if deadline.expired() {
                return Ok(false);
            }
            time::delay_us(1000);
        }
    }

    /// The statistics registers.
    pub fn stats(&self) -> Stats {
        Stats {
            gprc: self.read(VFGPRC),
            gptc: self.read(VFGPTC),
            gorc: self.read(VFGORC),
            gotc: self.read(VFGOTC),
            mprc: self.read(VFMPRC),
        }
    }

    // --- TX ------------------------------------------------------------------------------

    /// `igbvf_configure_tx`: queue off, ring registers, head and tail 0, queue on.
    fn configure_tx(&mut self) {
        let txdctl = self.read(TXDCTL);
        self.write(TXDCTL, txdctl & !DCTL_ENABLE);
        self.write(TDLEN, self.count * 16);
        let ring = self.dma(self.layout.tx_ring);
        self.write(TDBAL, ring as u32);
        self.write(TDBAH, (ring >> 32) as u32);
        self.write(TDH, 0);
        self.write(TDT, 0);
        self.write(TXDCTL, txdctl | DCTL_ENABLE);
        self.tx_tail = 0;
        self.tx_clean = 0;
    }

    /// TX descriptors queued and not yet seen done.
    pub fn tx_in_flight(&self) -> u32 {
        (self.tx_tail + self.count - self.tx_clean) % self.count
    }

    /// Copies `frame` into the next TX buffer and fills its descriptor (EOP, IFCS, RS),
    /// without telling the device; false if the ring is full (one descriptor stays free,
    /// as in igbvf).
    pub fn queue_tx(&mut self, frame: &[u8]) -> Result<bool, IgbvfError> {
        let len = frame.len();
        if len == 0 || len > MAX_FRAME {
            return Err(IgbvfError::FrameSize(len));
        }
        if self.tx_in_flight() + 1 >= self.count {
            return Ok(false);
        }
        let i = self.tx_tail;
        let buf = self.layout.tx_bufs + BUF_LEN * u64::from(i);
        let mut bytes = [0u8; MAX_FRAME];
        bytes[..len].copy_from_slice(frame);
        phys::write_bytes(buf, &bytes[..len.next_multiple_of(8)]);
        let len = len as u32;
        let cmd = TXD_DTYP_DATA | TXD_DEXT | TXD_IFCS | TXD_EOP | TXD_RS | len;
        let olinfo = len << TXD_PAYLEN_SHIFT;
        let desc = self.layout.tx_ring + 16 * u64::from(i);
        phys::write_u64(desc, self.dma(buf));
        phys::write_u64(desc + 8, u64::from(cmd) | (u64::from(olinfo) << 32));
        self.tx_tail = (i + 1) % self.count;
        Ok(true)
    }

    /// Writes TDT: the device sends what was queued.
    pub fn kick_tx(&self) {
        compiler_fence(Ordering::SeqCst);
        self.write(TDT, self.tx_tail);
    }

    /// Reclaims the queued TX descriptors the device wrote back (DD), oldest first;
    /// returns how many.
    pub fn reclaim_tx(&mut self) -> u32 {
        let mut n = 0;
        while self.tx_clean != self.tx_tail {
            let desc = self.layout.tx_ring + 16 * u64::from(self.tx_clean);
            let olinfo = (phys::read_u64(desc + 8) >> 32) as u32;
            if olinfo & STAT_DD == 0 {
                break;
            }
            self.tx_clean = (self.tx_clean + 1) % self.count;
            n += 1;
        }
        n
    }

    /// Waits (at most `budget` TSC cycles) until every queued TX descriptor is done.
    pub fn wait_tx_done(&mut self, budget: u64) -> Result<(), IgbvfError> {
        let deadline = Deadline::after(budget);
        loop {
            self.reclaim_tx();
            let in_flight = self.tx_in_flight();
            if in_flight == 0 {
                return Ok(());
            }
            if deadline.expired() {
                return Err(IgbvfError::TxStuck { in_flight });
            }
            core::hint::spin_loop();
        }
    }

    // --- RX ------------------------------------------------------------------------------

    /// `igbvf_configure_rx`: one 2 KiB buffer per advanced descriptor, drop when full;
    /// every descriptor holds its buffer and RDT one behind the first gives the device
    /// all but one.
    fn configure_rx(&mut self) {
        let rxdctl = self.read(RXDCTL);
        self.write(RXDCTL, rxdctl & !DCTL_ENABLE);
        self.write(
            SRRCTL,
            SRRCTL_DROP_EN | SRRCTL_DESCTYPE_ADV_ONEBUF | SRRCTL_BSIZEPKT_KIB,
        );
        let ring = self.dma(self.layout.rx_ring);
        self.write(RDBAL, ring as u32);
        self.write(RDBAH, (ring >> 32) as u32);
        self.write(RDLEN, self.count * 16);
        self.write(RDH, 0);
        self.write(RDT, 0);
        self.write(
            RXDCTL,
            (rxdctl & 0xfff0_0000) | DCTL_ENABLE | RXDCTL_THRESHOLDS,
        );
        for i in 0..self.count {
            self.post_rx(i);
        }
        self.rx_next = 0;
        self.rx_unposted = 0;
        compiler_fence(Ordering::SeqCst);
        self.write(RDT, self.count - 1);
    }

    /// Gives RX descriptor `i` its buffer again, in the read format (status clear).
    fn post_rx(&self, i: u32) {
        let desc = self.layout.rx_ring + 16 * u64::from(i);
        phys::write_u64(desc, self.dma(self.rx_buf(i)));
        phys::write_u64(desc + 8, 0);
    }

    /// RX descriptors taken before RDT is written.
    fn rx_batch(&self) -> u32 {
        (self.count / 8).max(1)
    }

    /// Takes the next received frame, if the device has written one back: copies it into
    /// `out` (as much as fits) and returns its length. The descriptor goes back to the
    /// device at once, RDT moves every eighth of the ring ([`Igbvf::flush_rx`] moves it now).
    pub fn recv(&mut self, out: &mut [u8]) -> Result<Option<usize>, IgbvfError> {
        let i = self.rx_next;
        let desc = self.layout.rx_ring + 16 * u64::from(i);
        let upper = phys::read_u64(desc + 8);
        let status = upper as u32;
        if status & STAT_DD == 0 {
            return Ok(None);
        }
        let len = ((upper >> 32) & 0xffff) as usize;
        let good = status & RXD_STAT_EOP != 0
            && status & RXD_ERR_FRAME == 0
            && (ETH_HLEN..=MAX_FRAME).contains(&len);
        if good {
            let n = len.min(out.len());
            phys::read_bytes(self.rx_buf(i), &mut out[..n]);
        }
        self.post_rx(i);
        self.rx_next = (i + 1) % self.count;
        self.rx_unposted += 1;
        if self.rx_unposted >= self.rx_batch() {
            self.flush_rx();
        }
        if !good {
            return Err(IgbvfError::RxDescriptor {
                index: i,
                status,
                len,
            });
        }
        Ok(Some(len))
    }

    /// Writes RDT one behind the next descriptor to look at: the device owns every
    /// descriptor given back so far.
    pub fn flush_rx(&mut self) {
        if self.rx_unposted == 0 {
            return;
        }
        compiler_fence(Ordering::SeqCst);
        self.write(RDT, (self.rx_next + self.count - 1) % self.count);
        self.rx_unposted = 0;
    }
}
