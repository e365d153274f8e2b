//! TX queue 0: its registers and the descriptor walk from TDH to TDT.
//!
//! A frame is the chain of descriptors from TDH up to one with EOP; context descriptors
//! met on the way load one of the two context slots. A chain that does not reach EOP
//! before TDT is left for later (the driver has not finished it); one longer than
//! [`MAX_DESCS_PER_FRAME`] is consumed and dropped. A frame whose buffers cannot be read,
//! whose offload request is malformed or which is too long is dropped and counted, its
//! descriptors completed: the queue goes on. A descriptor that cannot be read stops the
//! walk (the ring itself is unreachable). DD is written into every RS descriptor once
//! its frame is done; there is no head write-back.

use vm_memory::{Address, Bytes, GuestAddress};

use super::IgbvfError;
use super::offload::{self, TxContext};
use super::regs::{
    DBAL_MASK, DCTL_ENABLE, DESC_LEN, DLEN_MASK, TXD_DEXT, TXD_DTYP_CTXT, TXD_DTYP_DATA,
    TXD_DTYP_MASK, TXD_EOP, TXD_IC, TXD_IDX_SHIFT, TXD_POPTS_IXSM, TXD_POPTS_TXSM, TXD_RS,
    TXD_STAT_DD, TXD_TSE, TXD_VLE,
};
use super::{TxSink, VfCounters, dma_read, dma_write};

/// Longest descriptor chain of one frame (igbvf uses at most a context descriptor and
/// two per fragment).
pub const MAX_DESCS_PER_FRAME: usize = 128;
/// Largest frame without TSO.
pub const MAX_FRAME: usize = 16 * 1024;
/// Largest TSO frame (the 82576 segments up to 256 KiB).
pub const MAX_TSO_FRAME: usize = 256 * 1024;

/// The TX queue's registers.
#[derive(Debug, Default, Clone)]
pub(crate) struct TxQueue {
    pub bal: u32,
    pub bah: u32,
    pub len: u32,
    pub head: u32,
    pub tail: u32,
    pub dca_txctrl: u32,
    pub txdctl: u32,
    ctx: [TxContext; 2],
}

/// One descriptor as read from the ring.
#[derive(Debug, Clone, Copy)]
struct Desc {
    idx: u32,
    d: [u32; 4],
}

impl Desc {
    fn addr(&self) -> u64 {
        u64::from(self.d[0]) | (u64::from(self.d[1]) << 32)
    }
    fn cmd(&self) -> u32 {
        self.d[2]
    }
    fn is_context(&self) -> bool {
        self.cmd() & TXD_DEXT != 0 && self.cmd() & TXD_DTYP_MASK == TXD_DTYP_CTXT
    }
}

/// What one walk did.
#[derive(Debug, Default)]
pub(crate) struct TxOutcome {
    /// A descriptor with RS was written back (the TX cause fires).
    pub wrote_back: bool,
}

impl TxQueue {
    /// Whether the queue is enabled.
    pub fn enabled(&self) -> bool {
        self.txdctl & DCTL_ENABLE != 0
    }

    /// Descriptors in the ring (0 when the length is unusable).
    pub fn count(&self) -> u32 {
        (self.len & DLEN_MASK) / 16
    }

    fn base(&self) -> u64 {
        u64::from(self.bal & DBAL_MASK) | (u64::from(self.bah) << 32)
    }

    fn desc_addr(&self, idx: u32) -> Result<GuestAddress, IgbvfError> {
        self.base()
            .checked_add(u64::from(idx) * DESC_LEN)
            .map(GuestAddress)
            .ok_or(IgbvfError::AddressOverflow)
    }

    /// Back to the power-on state.
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    fn read_desc<M: Bytes<GuestAddress>>(&self, mem: &M, idx: u32) -> Result<Desc, IgbvfError>
    where
        M::E: std::error::Error + Send + Sync + 'static,
    {
        let mut b = [0u8; 16];
        dma_read(mem, self.desc_addr(idx)?, &mut b)?;
        let w = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Ok(Desc {
            idx,
            d: [w(0), w(4), w(8), w(12)],
        })
    }

    /// Walks the ring from TDH to TDT, at most once around, sending complete frames
    /// through `sink` (or dropping them while `link_up` is false).
    pub fn process<M: Bytes<GuestAddress>>(
        &mut self,
        mem: &M,
        sink: &mut dyn TxSink,
        link_up: bool,
        counters: &mut VfCounters,
    ) -> TxOutcome
    where
        M::E: std::error::Error + Send + Sync + 'static,
    {
        let mut out = TxOutcome::default();
        let count = self.count();
        if count == 0 || self.head >= count || self.tail >= count {
            if self.head != self.tail {
                counters.tx_bad_ring += 1;
                crate::debug_ratelimited!(
                    "igbvf: TX ring unusable (len {:#x}, head {}, tail {})",
                    self.len,
                    self.head,
                    self.tail
                );
            }
            return out;
        }
        let mut budget = count;
        while self.head != self.tail && budget > 0 {
            if link_up && !sink.ready() {
                counters.tx_backpressure += 1;
                break;
            }
            let chain = match self.collect_chain(mem, count) {
                Ok(Some(chain)) => chain,
                Ok(None) => break,
                Err(e) => {
                    counters.tx_dma_errors += 1;
                    crate::debug_ratelimited!("igbvf: TX descriptor unreadable: {e}");
                    break;
                }
            };
            let used = u32::try_from(chain.len()).unwrap_or(u32::MAX);
            match self.build_frame(mem, &chain) {
                Ok(frame) => self.send(frame, &chain, sink, link_up, counters),
                Err(e) => {
                    counters.tx_dropped += 1;
                    if matches!(e, IgbvfError::Dma { .. }) {
                        counters.tx_dma_errors += 1;
                    }
                    crate::debug_ratelimited!("igbvf: TX frame dropped: {e}");
                }
            }
            for desc in chain.iter().filter(|d| d.cmd() & TXD_RS != 0) {
                out.wrote_back = true;
                let at = self.desc_addr(desc.idx).and_then(|a| {
                    let a = a.checked_add(12).ok_or(IgbvfError::AddressOverflow)?;
                    dma_write(mem, a, &(desc.d[3] | TXD_STAT_DD).to_le_bytes())
                });
                if let Err(e) = at {
                    counters.tx_dma_errors += 1;
                    crate::debug_ratelimited!("igbvf: TX write-back failed: {e}");
                }
            }
            self.head = (self.head + used) % count;
            budget = budget.saturating_sub(used);
        }
        out
    }

    /// The descriptors of the next frame (context descriptors applied on the way), or
    /// `None` if the chain does not end before TDT. A chain with no EOP within
    /// [`MAX_DESCS_PER_FRAME`] is returned as is, to be dropped.
    fn collect_chain<M: Bytes<GuestAddress>>(
        &mut self,
        mem: &M,
        count: u32,
    ) -> Result<Option<Vec<Desc>>, IgbvfError>
    where
        M::E: std::error::Error + Send + Sync + 'static,
    {
        let mut chain = Vec::new();
        let mut idx = self.head;
        while chain.len() < MAX_DESCS_PER_FRAME {
            if idx == self.tail {
                return Ok(None);
            }
            let desc = self.read_desc(mem, idx)?;
            chain.push(desc);
            idx = (idx + 1) % count;
            if desc.is_context() {
                let slot = ((desc.d[3] >> TXD_IDX_SHIFT) & 1) as usize;
                self.ctx[slot] = TxContext::parse(desc.d);
                // A context descriptor on its own is a complete unit.
                if chain.len() == 1 {
                    return Ok(Some(chain));
                }
            } else if desc.cmd() & TXD_EOP != 0 {
                return Ok(Some(chain));
            }
        }
        Ok(Some(chain))
    }

    /// Gathers and offloads the frame of a chain; `Ok(None)` for a lone context
    /// descriptor.
    fn build_frame<M: Bytes<GuestAddress>>(
        &self,
        mem: &M,
        chain: &[Desc],
    ) -> Result<Option<Frame>, IgbvfError>
    where
        M::E: std::error::Error + Send + Sync + 'static,
    {
        let mut data = chain.iter().filter(|d| !d.is_context()).peekable();
        let Some(first) = data.peek().copied() else {
            return Ok(None);
        };
        if chain.last().is_some_and(|d| d.cmd() & TXD_EOP == 0) {
            return Err(IgbvfError::NoEop(MAX_DESCS_PER_FRAME));
        }
        let advanced = first.cmd() & TXD_DEXT != 0;
        let tse = advanced && first.cmd() & TXD_TSE != 0;
        let max = if tse { MAX_TSO_FRAME } else { MAX_FRAME };
        let mut bytes = Vec::new();
        for desc in data {
            let cmd = desc.cmd();
            if cmd & TXD_DEXT != 0 && cmd & TXD_DTYP_MASK != TXD_DTYP_DATA {
                return Err(IgbvfError::BadDescriptor(cmd));
            }
            let len = (cmd & 0xFFFF) as usize;
            if bytes.len() + len > max {
                return Err(IgbvfError::FrameTooLong {
                    len: bytes.len() + len,
                    max,
                });
            }
            let at = bytes.len();
            bytes.resize(at + len, 0);
            dma_read(mem, GuestAddress(desc.addr()), &mut bytes[at..])?;
        }
        let cmd = first.cmd();
        if !advanced {
            // Legacy: CSO in bits 23:16 of dword 2, CSS and VLAN in dword 3.
            if cmd & TXD_IC != 0 {
                let cso = ((cmd >> 16) & 0xFF) as usize;
                let css = ((first.d[3] >> 8) & 0xFF) as usize;
                offload::legacy_checksum(&mut bytes, css, cso)?;
            }
            let vlan = (cmd & TXD_VLE != 0).then_some((first.d[3] >> 16) as u16);
            return Ok(Some(Frame {
                bytes,
                vlan,
                tso: None,
            }));
        }
        let popts = first.d[3];
        let ctx = self.ctx[((popts >> TXD_IDX_SHIFT) & 1) as usize];
        let vlan = (cmd & TXD_VLE != 0).then_some(ctx.vlan);
        if tse {
            return Ok(Some(Frame {
                bytes,
                vlan,
                tso: Some((
                    ctx,
                    popts & TXD_POPTS_IXSM != 0,
                    popts & TXD_POPTS_TXSM != 0,
                )),
            }));
        }
        if popts & TXD_POPTS_TXSM != 0 {
            offload::complete_l4_checksum(&mut bytes, &ctx)?;
        }
        Ok(Some(Frame {
            bytes,
            vlan,
            tso: None,
        }))
    }

    fn send(
        &self,
        frame: Option<Frame>,
        chain: &[Desc],
        sink: &mut dyn TxSink,
        link_up: bool,
        counters: &mut VfCounters,
    ) {
        let Some(frame) = frame else { return };
        let vlan = frame.vlan;
        let mut out = |bytes: &mut Vec<u8>| {
            if let Some(tci) = vlan
                && let Err(e) = offload::insert_vlan(bytes, tci)
            {
                counters.tx_dropped += 1;
                crate::debug_ratelimited!("igbvf: TX frame dropped: {e}");
                return;
            }
            if link_up {
                counters.gptc = counters.gptc.wrapping_add(1);
                counters.gotc = counters
                    .gotc
                    .wrapping_add(u32::try_from(bytes.len()).unwrap_or(u32::MAX));
                sink.send(bytes);
            } else {
                counters.tx_link_down += 1;
            }
        };
        let Frame {
            mut bytes,
            vlan: _,
            tso,
        } = frame;
        match tso {
            None => out(&mut bytes),
            Some((ctx, ixsm, txsm)) => {
                if let Err(e) = offload::segment_tcp(&bytes, &ctx, ixsm, txsm, out) {
                    counters.tx_dropped += 1;
                    crate::debug_ratelimited!(
                        "igbvf: TSO frame at descriptor {} dropped: {e}",
                        chain[0].idx
                    );
                }
            }
        }
    }
}

/// A gathered frame and what remains to be done to it.
#[derive(Debug)]
struct Frame {
    bytes: Vec<u8>,
    vlan: Option<u16>,
    /// TSO: the context, IXSM, TXSM.
    tso: Option<(TxContext, bool, bool)>,
}
