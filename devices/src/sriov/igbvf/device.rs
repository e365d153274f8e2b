//! The VF: BAR0 register file, resets, link, and the entry points the glue calls.

use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress};

use super::interrupts::{Cause, Interrupts};
use super::mailbox::Mailbox;
use super::pf_agent::{PfAgent, PfEvent, PfPolicy};
use super::regs::*;
use super::rx::{RxDrop, RxOutcome, RxQueue};
use super::tx::TxQueue;
use super::{Clock, TxSink, VfCounters, VfIrq};

/// What the VF needs from outside.
pub struct VfBackends {
    /// MSI-X vectors.
    pub irq: Arc<dyn VfIrq>,
    /// Frames out.
    pub tx: Box<dyn TxSink>,
    /// Time, for EITR.
    pub clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for VfBackends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfBackends").finish_non_exhaustive()
    }
}

/// One 82576 VF with its PF-side agent.
pub struct Igbvf<M> {
    mem: M,
    backends: VfBackends,
    ctrl: u32,
    mbx: Mailbox,
    pf: PfAgent,
    ints: Interrupts,
    rx: RxQueue,
    tx: TxQueue,
    counters: VfCounters,
    bus_master: bool,
}

impl<M> std::fmt::Debug for Igbvf<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Igbvf")
            .field("ctrl", &self.ctrl)
            .field("pf", &self.pf)
            .field("ints", &self.ints)
            .field("rx", &self.rx)
            .field("tx", &self.tx)
            .field("counters", &self.counters)
            .field("bus_master", &self.bus_master)
            .finish_non_exhaustive()
    }
}

impl<M: Bytes<GuestAddress>> Igbvf<M>
where
    M::E: std::error::Error + Send + Sync + 'static,
{
    /// A VF in its power-on state, DMA through `mem`, the PF side under `policy`. Bus
    /// mastering starts off, as the PCI COMMAND register does.
    pub fn new(mem: M, backends: VfBackends, policy: PfPolicy) -> Self {
        Self {
            mem,
            backends,
            ctrl: 0,
            mbx: Mailbox::default(),
            pf: PfAgent::new(policy),
            ints: Interrupts::default(),
            rx: RxQueue::default(),
            tx: TxQueue::default(),
            counters: VfCounters::default(),
            bus_master: false,
        }
    }

    fn now(&self) -> u64 {
        self.backends.clock.now_ns()
    }

    fn raise(&mut self, cause: Cause) {
        let now = self.now();
        self.ints.raise(cause, now, &*self.backends.irq);
    }

    /// Sends interrupts whose throttling interval has ended. Call at (or after)
    /// [`Igbvf::next_timer_deadline`].
    pub fn poll_timers(&mut self) {
        let now = self.now();
        self.ints.poll(now, &*self.backends.irq);
    }

    /// When [`Igbvf::poll_timers`] has work, on the [`Clock`]'s time line.
    pub fn next_timer_deadline(&self) -> Option<u64> {
        self.ints.next_deadline()
    }

    /// A BAR0 read of any width: 4-byte aligned reads (and 8-byte ones, as two) reach the
    /// registers; anything else reads zeros without side effects.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Ok(off) = u32::try_from(offset) else {
            return;
        };
        match data.len() {
            4 if offset.is_multiple_of(4) && offset < BAR0_SIZE => {
                data.copy_from_slice(&self.read32(off).to_le_bytes());
            }
            8 if offset.is_multiple_of(8) && offset < BAR0_SIZE => {
                let lo = self.read32(off);
                let hi = self.read32(off + 4);
                data[..4].copy_from_slice(&lo.to_le_bytes());
                data[4..].copy_from_slice(&hi.to_le_bytes());
            }
            n => crate::debug_ratelimited!("igbvf: ignored {n}-byte read at {offset:#x}"),
        }
    }

    /// A BAR0 write of any width; see [`Igbvf::read`].
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        let Ok(off) = u32::try_from(offset) else {
            return;
        };
        match *data {
            [a, b, c, d] if offset.is_multiple_of(4) && offset < BAR0_SIZE => {
                self.write32(off, u32::from_le_bytes([a, b, c, d]));
            }
            [a, b, c, d, e, f, g, h] if offset.is_multiple_of(8) && offset < BAR0_SIZE => {
                self.write32(off, u32::from_le_bytes([a, b, c, d]));
                self.write32(off + 4, u32::from_le_bytes([e, f, g, h]));
            }
            _ => {
                crate::debug_ratelimited!("igbvf: ignored {}-byte write at {offset:#x}", data.len())
            }
        }
    }

    /// A 32-bit register read.
    pub fn read32(&mut self, offset: u32) -> u32 {
        self.poll_timers();
        match offset {
            CTRL => self.ctrl,
            STATUS => {
                if self.pf.policy().link_up {
                    STATUS_LINK_UP
                } else {
                    STATUS_LINK_DOWN
                }
            }
            o if (VMBMEM..VMBMEM_END).contains(&o) => self.mbx.mem[((o - VMBMEM) / 4) as usize],
            V2PMAILBOX => self.mbx.read_ctrl(),
            VFGPRC => self.counters.gprc,
            VFGPTC => self.counters.gptc,
            VFGORC => self.counters.gorc,
            VFGOTC => self.counters.gotc,
            VFMPRC => self.counters.mprc,
            EIMS => self.ints.eims,
            EIAC => self.ints.eiac,
            EIAM => self.ints.eiam,
            EICR => self.ints.eicr,
            o if (EITR0..EITR_END).contains(&o) => self.ints.eitr[((o - EITR0) / 4) as usize],
            IVAR0 => self.ints.ivar0,
            IVAR_MISC => self.ints.ivar_misc,
            RDBAL => self.rx.bal,
            RDBAH => self.rx.bah,
            RDLEN => self.rx.len,
            SRRCTL => self.rx.srrctl,
            RDH => self.rx.head,
            RDT => self.rx.tail,
            RXDCTL => self.rx.rxdctl,
            TDBAL => self.tx.bal,
            TDBAH => self.tx.bah,
            TDLEN => self.tx.len,
            TDH => self.tx.head,
            DCA_TXCTRL => self.tx.dca_txctrl,
            TDT => self.tx.tail,
            TXDCTL => self.tx.txdctl,
            _ => 0,
        }
    }

    /// A 32-bit register write.
    pub fn write32(&mut self, offset: u32, val: u32) {
        self.poll_timers();
        let now = self.now();
        let irq = Arc::clone(&self.backends.irq);
        match offset {
            CTRL => {
                self.ctrl = val & !CTRL_RST;
                if val & CTRL_RST != 0 {
                    self.vf_reset();
                }
            }
            o if (VMBMEM..VMBMEM_END).contains(&o) => {
                self.mbx.mem[((o - VMBMEM) / 4) as usize] = val;
            }
            V2PMAILBOX => self.write_mailbox(val, now),
            EICS => self.ints.write_eics(val, now, &*irq),
            EIMS => self.ints.write_eims(val, now, &*irq),
            EIMC => self.ints.write_eimc(val),
            EIAC => self.ints.eiac = val & VECTOR_MASK,
            EIAM => self.ints.eiam = val & VECTOR_MASK,
            EICR => self.ints.write_eicr(val),
            o if (EITR0..EITR_END).contains(&o) => {
                self.ints.eitr[((o - EITR0) / 4) as usize] = val;
            }
            IVAR0 => self.ints.ivar0 = val,
            IVAR_MISC => self.ints.ivar_misc = val & 0xFF,
            RDBAL => self.rx.bal = val & DBAL_MASK,
            RDBAH => self.rx.bah = val,
            RDLEN => self.rx.len = val & DLEN_MASK,
            SRRCTL => self.rx.srrctl = val,
            RDH => self.rx.head = val & 0xFFFF,
            RDT => self.rx.tail = val & 0xFFFF,
            RXDCTL => self.rx.rxdctl = val,
            TDBAL => self.tx.bal = val & DBAL_MASK,
            TDBAH => self.tx.bah = val,
            TDLEN => self.tx.len = val & DLEN_MASK,
            TDH => self.tx.head = val & 0xFFFF,
            DCA_TXCTRL => self.tx.dca_txctrl = val,
            TDT => {
                self.tx.tail = val & 0xFFFF;
                self.process_tx();
            }
            TXDCTL => {
                self.tx.txdctl = val;
                self.process_tx();
            }
            _ => crate::debug_ratelimited!("igbvf: write {val:#x} to {offset:#x} ignored"),
        }
    }

    fn write_mailbox(&mut self, val: u32, now: u64) {
        self.mbx.write_vfu(val);
        let mut notify = false;
        if val & V2P_REQ != 0 {
            notify |= self.pf.on_request(&mut self.mbx, now);
        }
        if val & V2P_ACK != 0 {
            notify |= self.pf.on_ack(&mut self.mbx, now);
        }
        notify |= self.pf.flush_ping(&mut self.mbx);
        if notify {
            self.raise(Cause::Mailbox);
        }
    }

    /// CTRL.RST: queues and interrupt state back to power-on, synchronously (no DMA after
    /// this returns); the PF side forgets the VF's filters and waits for a RESET message.
    fn vf_reset(&mut self) {
        self.rx.reset();
        self.tx.reset();
        self.ints.reset();
        self.mbx.write_vfu(0);
        self.pf.vf_reset_event();
    }

    /// Function level reset: every register back to power-on, mailbox memory and
    /// statistics cleared, bus mastering off (the function's COMMAND register resets too).
    /// The PF side keeps the VF's RESET handshake: igbvf (6.4+) brings the interface up
    /// after an FLR without a new RESET message.
    pub fn flr(&mut self) {
        self.ctrl = 0;
        self.rx.reset();
        self.tx.reset();
        self.ints.reset();
        self.mbx = Mailbox {
            ctrl: 0,
            ..Mailbox::default()
        };
        self.counters = VfCounters::default();
        self.bus_master = false;
    }

    /// The function's COMMAND.BME. While clear, no DMA happens: TX stays in the ring and
    /// received frames are dropped.
    pub fn set_bus_master(&mut self, enabled: bool) {
        self.bus_master = enabled;
        if enabled {
            self.process_tx();
        }
    }

    /// Whether bus mastering is on.
    pub fn bus_master(&self) -> bool {
        self.bus_master
    }

    /// Walks the TX ring (after TDT moved, the sink became ready, or DMA was re-enabled).
    pub fn process_tx(&mut self) {
        if !self.tx.enabled() || !self.bus_master || !self.pf.queues_enabled() {
            return;
        }
        let link_up = self.pf.policy().link_up;
        let out = self.tx.process(
            &self.mem,
            &mut *self.backends.tx,
            link_up,
            &mut self.counters,
        );
        if out.wrote_back {
            self.raise(Cause::Tx);
        }
    }

    /// Delivers a frame (without FCS) from the switch. With `strip_vlan` an 802.1Q tag is
    /// moved into the descriptor (see [`super::VfRequests::vlan_strip`]).
    pub fn receive(&mut self, frame: &[u8], strip_vlan: bool) -> RxOutcome {
        self.poll_timers();
        if !self.rx.enabled()
            || !self.bus_master
            || !self.pf.queues_enabled()
            || !self.pf.policy().link_up
        {
            self.counters.rx_dropped += 1;
            return RxOutcome::Dropped(RxDrop::Disabled);
        }
        let max_frame = self.pf.requests().max_frame;
        let out = self
            .rx
            .receive(&self.mem, frame, strip_vlan, max_frame, &mut self.counters);
        if out == RxOutcome::Delivered {
            self.raise(Cause::Rx);
        }
        out
    }

    /// RX descriptors the driver has posted and the device not yet used.
    pub fn rx_descriptors_available(&self) -> u32 {
        self.rx.available()
    }

    /// Applies the switch's policy. A change of link state shows in STATUS.LU and is
    /// announced by a ping (`0x100`, with CTS once the VF has reset), as igb does.
    pub fn set_policy(&mut self, policy: PfPolicy) {
        if self.pf.set_policy(policy) && self.pf.ping(&mut self.mbx) {
            self.raise(Cause::Mailbox);
        }
        self.process_tx();
    }

    /// The PF-side agent (policy, what the VF asked for).
    pub fn pf(&self) -> &PfAgent {
        &self.pf
    }

    /// The PF-side agent, to take events or forget the VF's state.
    pub fn pf_mut(&mut self) -> &mut PfAgent {
        &mut self.pf
    }

    /// Shorthand for `pf_mut().take_events()`.
    pub fn take_pf_events(&mut self) -> Vec<PfEvent> {
        self.pf.take_events()
    }

    /// Statistics and drop counters.
    pub fn counters(&self) -> &VfCounters {
        &self.counters
    }

    /// MSI-X messages sent per vector.
    pub fn interrupts_sent(&self) -> [u64; NUM_VECTORS] {
        self.ints.sent
    }

    /// The DMA address space.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// Replaces the DMA address space (after a DMA map change).
    pub fn set_memory(&mut self, mem: M) {
        self.mem = mem;
    }
}
