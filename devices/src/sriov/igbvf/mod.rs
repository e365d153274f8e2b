//! The Intel 82576 Virtual Function (8086:10CA) as Linux's stock `igbvf` drives it, as a
//! pure model: BAR0 registers, MSI-X interrupt logic, the mailbox with a PF-side agent,
//! and the TX/RX data path over guest memory. See shared/reference/igb-82576.md.
//!
//! What the model needs from outside comes through small traits: [`VfIrq`] (raise an
//! MSI-X vector; the MSI-X table and PBA live with whoever presents the PCI function),
//! [`TxSink`] (frames out, with backpressure), [`Clock`] (time, for EITR throttling) and
//! vm-memory's [`Bytes<GuestAddress>`](vm_memory::Bytes) for DMA (in nicd: IOVAs over the
//! vfio-user DMA mappings). Everything runs synchronously inside the calls of the glue:
//! a register access, [`Igbvf::receive`], [`Igbvf::process_tx`], [`Igbvf::poll_timers`].
//!
//! Layout: [`device`] (the VF and its registers), [`interrupts`], [`mailbox`] (VF side),
//! [`pf_agent`] (PF side), [`tx`], [`rx`], [`offload`] (checksums, TSO, VLAN), [`regs`].

pub mod device;
pub mod driver;
pub mod interrupts;
mod mailbox;
pub mod offload;
pub mod pf_agent;
pub mod regs;
pub mod rx;
pub mod tx;

#[cfg(test)]
mod tests;

use std::sync::OnceLock;
use std::time::Instant;

use vm_memory::{Bytes, GuestAddress};

pub use device::{Igbvf, VfBackends};
pub use interrupts::Cause;
pub use pf_agent::{MacAddr, PfAgent, PfEvent, PfPolicy, VfRequests};
pub use rx::{RxDrop, RxOutcome};

/// Raises one of the VF's MSI-X vectors (0 TX, 1 RX, 2 mailbox as igbvf maps them). The
/// implementer applies the MSI-X table (address, data, per-vector mask and PBA).
pub trait VfIrq: Send + Sync {
    /// Sends the MSI-X message of `vector` (0..3).
    fn raise(&self, vector: u16);
}

/// Where transmitted frames go (the NIC switch).
pub trait TxSink: Send {
    /// Whether a frame can be taken now. `false` leaves the frame and all after it in the
    /// ring; call [`Igbvf::process_tx`] when it can.
    fn ready(&mut self) -> bool {
        true
    }
    /// Takes one frame (no FCS; TSO already segmented, checksums and VLAN tag inserted).
    fn send(&mut self, frame: &[u8]);
}

/// Monotonic time in nanoseconds, for interrupt throttling.
pub trait Clock: Send + Sync {
    /// Nanoseconds since an arbitrary, fixed origin.
    fn now_ns(&self) -> u64;
}

/// The process's monotonic clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct MonotonicClock;

impl Clock for MonotonicClock {
    fn now_ns(&self) -> u64 {
        static EPOCH: OnceLock<Instant> = OnceLock::new();
        u64::try_from(EPOCH.get_or_init(Instant::now).elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// Why a DMA or a frame failed. These never escape the model: each ends one frame (or
/// stops one ring walk) and is counted in [`VfCounters`].
#[derive(Debug, thiserror::Error)]
pub enum IgbvfError {
    /// Guest memory could not be read or written.
    #[error("DMA {op} of {len} bytes at {addr:#x} failed")]
    Dma {
        /// "read" or "write".
        op: &'static str,
        /// Guest (IO virtual) address.
        addr: u64,
        /// Bytes.
        len: usize,
        /// The memory's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A descriptor address computation overflowed.
    #[error("descriptor address overflows")]
    AddressOverflow,
    /// A TX descriptor of an unknown type.
    #[error("TX descriptor with unknown type (cmd {0:#010x})")]
    BadDescriptor(u32),
    /// A frame longer than the device handles.
    #[error("frame of {len} bytes exceeds {max}")]
    FrameTooLong {
        /// Length reached.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// A descriptor chain without end of packet.
    #[error("no end of packet within {0} descriptors")]
    NoEop(usize),
    /// TSO asked with MSS 0.
    #[error("TSO with MSS 0")]
    ZeroMss,
    /// Header lengths of a TSO context that cannot be right.
    #[error("TSO header lengths MAC {maclen}, IP {iplen}, L4 {l4len}")]
    BadHeaderLengths {
        /// MACLEN.
        maclen: usize,
        /// IPLEN.
        iplen: usize,
        /// L4LEN.
        l4len: usize,
    },
    /// Offload headers lie beyond the frame.
    #[error("headers end at {hdr}, beyond a {len}-byte frame")]
    HeadersBeyondFrame {
        /// Where the headers end.
        hdr: usize,
        /// Frame length.
        len: usize,
    },
    /// An offload the model does not do.
    #[error("unsupported offload: {0}")]
    Unsupported(&'static str),
}

/// The VF's statistics registers and the model's own drop counters.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct VfCounters {
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
    /// TX frames dropped (malformed, unreadable, too long, bad offload request).
    pub tx_dropped: u64,
    /// TX frames completed without being sent because the link was down.
    pub tx_link_down: u64,
    /// TX DMA failures (descriptor or buffer).
    pub tx_dma_errors: u64,
    /// TX walks refused because TDLEN, TDH or TDT are unusable.
    pub tx_bad_ring: u64,
    /// TX walks stopped because the sink was not ready.
    pub tx_backpressure: u64,
    /// RX frames dropped (disabled, too long, runt, bad ring, DMA).
    pub rx_dropped: u64,
    /// RX frames dropped for want of a descriptor (DROP_EN).
    pub rx_no_descriptor: u64,
    /// RX DMA failures.
    pub rx_dma_errors: u64,
}

/// Reads guest memory, mapping the error.
pub(crate) fn dma_read<M: Bytes<GuestAddress>>(
    mem: &M,
    addr: GuestAddress,
    buf: &mut [u8],
) -> Result<(), IgbvfError>
where
    M::E: std::error::Error + Send + Sync + 'static,
{
    mem.read_slice(buf, addr).map_err(|e| IgbvfError::Dma {
        op: "read",
        addr: addr.0,
        len: buf.len(),
        source: Box::new(e),
    })
}

/// Writes guest memory, mapping the error.
pub(crate) fn dma_write<M: Bytes<GuestAddress>>(
    mem: &M,
    addr: GuestAddress,
    buf: &[u8],
) -> Result<(), IgbvfError>
where
    M::E: std::error::Error + Send + Sync + 'static,
{
    mem.write_slice(buf, addr).map_err(|e| IgbvfError::Dma {
        op: "write",
        addr: addr.0,
        len: buf.len(),
        source: Box::new(e),
    })
}
