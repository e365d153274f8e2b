//! Tests that play Linux 6.12's igbvf (netdev.c, vf.c, mbx.c) against the model, with a
//! fake clock, recorded interrupts and a recording frame sink.

// Test data is built with register-width casts of small, known values.
#![allow(clippy::cast_possible_truncation)]

mod irq;
mod mailbox;
mod robust;
mod rx;
mod tx;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::regs::*;
use super::{Clock, Igbvf, PfPolicy, RxOutcome, TxSink, VfBackends, VfIrq};

pub(super) type Mem = GuestMemoryMmap<()>;

pub(super) const MEM_SIZE: usize = 4 << 20;
pub(super) const TX_RING: u64 = 0x1_0000;
pub(super) const TX_COUNT: u32 = 256;
pub(super) const RX_RING: u64 = 0x2_0000;
pub(super) const RX_COUNT: u32 = 1024;
pub(super) const RX_BUF: u64 = 0x10_0000;
pub(super) const RX_BUF_STRIDE: u64 = 2048;
pub(super) const RX_HDR: u64 = 0x30_0000;
pub(super) const TX_BUF: u64 = 0x34_0000;
pub(super) const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

/// Nanoseconds the test sets.
#[derive(Debug, Default)]
pub(super) struct FakeClock(pub AtomicU64);

impl Clock for FakeClock {
    fn now_ns(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Every vector raised, in order.
#[derive(Debug, Default)]
pub(super) struct RecordingIrq(pub Mutex<Vec<u16>>);

impl VfIrq for RecordingIrq {
    fn raise(&self, vector: u16) {
        self.0.lock().unwrap().push(vector);
    }
}

/// Frames sent, and whether the sink takes more.
#[derive(Debug)]
pub(super) struct Sink {
    pub frames: Arc<Mutex<Vec<Vec<u8>>>>,
    pub ready: Arc<AtomicBool>,
}

impl TxSink for Sink {
    fn ready(&mut self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
    fn send(&mut self, frame: &[u8]) {
        self.frames.lock().unwrap().push(frame.to_vec());
    }
}

/// The model plus the test's handles on its backends, and the driver's soft state.
pub(super) struct Harness {
    pub vf: Igbvf<Mem>,
    pub clock: Arc<FakeClock>,
    pub irq: Arc<RecordingIrq>,
    pub frames: Arc<Mutex<Vec<Vec<u8>>>>,
    pub ready: Arc<AtomicBool>,
    /// igbvf's `hw->dev_spec.vf.v2p_mailbox`: read-to-clear bits seen but not consumed.
    v2p_soft: u32,
    /// igbvf's `tx_ring->next_to_use`.
    pub tx_next: u32,
    /// igbvf's `rx_ring->next_to_clean`.
    pub rx_next: u32,
}

pub(super) fn policy_up() -> PfPolicy {
    PfPolicy {
        admin_mac: Some(MAC),
        trusted: false,
        port_vlan: None,
        link_up: true,
    }
}

impl Harness {
    pub fn new(policy: PfPolicy) -> Self {
        Self::with_memory(
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap(),
            policy,
        )
    }

    pub fn with_memory(mem: Mem, policy: PfPolicy) -> Self {
        let clock = Arc::new(FakeClock::default());
        let irq = Arc::new(RecordingIrq::default());
        let frames = Arc::new(Mutex::new(Vec::new()));
        let ready = Arc::new(AtomicBool::new(true));
        let backends = VfBackends {
            irq: irq.clone(),
            tx: Box::new(Sink {
                frames: frames.clone(),
                ready: ready.clone(),
            }),
            clock: clock.clone(),
        };
        let mut vf = Igbvf::new(mem, backends, policy);
        vf.set_bus_master(true);
        Self {
            vf,
            clock,
            irq,
            frames,
            ready,
            v2p_soft: 0,
            tx_next: 0,
            rx_next: 0,
        }
    }

    pub fn rd(&mut self, off: u32) -> u32 {
        let mut b = [0u8; 4];
        self.vf.read(u64::from(off), &mut b);
        u32::from_le_bytes(b)
    }

    pub fn wr(&mut self, off: u32, val: u32) {
        self.vf.write(u64::from(off), &val.to_le_bytes());
    }

    pub fn advance_us(&self, us: u64) {
        self.clock.0.fetch_add(us * 1000, Ordering::SeqCst);
    }

    pub fn irqs(&self) -> Vec<u16> {
        std::mem::take(&mut *self.irq.0.lock().unwrap())
    }

    pub fn sent(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut *self.frames.lock().unwrap())
    }

    pub fn mem(&self) -> &Mem {
        self.vf.memory()
    }

    // ---- mbx.c ----

    /// `e1000_read_v2p_mailbox`.
    fn read_v2p(&mut self) -> u32 {
        let v = self.rd(V2PMAILBOX) | self.v2p_soft;
        self.v2p_soft |= v & V2P_R2C_BITS;
        v
    }

    /// `e1000_check_for_bit_vf`.
    fn check_bit(&mut self, mask: u32) -> bool {
        let v = self.read_v2p();
        self.v2p_soft &= !mask;
        v & mask != 0
    }

    fn obtain_lock(&mut self) {
        self.wr(V2PMAILBOX, V2P_VFU);
        assert!(
            self.read_v2p() & V2P_VFU != 0,
            "VF could not take the mailbox"
        );
    }

    /// `e1000_write_posted_mbx`: write, then poll for the PF's ack.
    pub fn write_posted(&mut self, msg: &[u32]) {
        self.obtain_lock();
        self.check_bit(V2P_PFSTS);
        self.check_bit(V2P_PFACK);
        for (i, w) in msg.iter().enumerate() {
            self.wr(VMBMEM + 4 * i as u32, *w);
        }
        self.wr(V2PMAILBOX, V2P_REQ);
        assert!(self.check_bit(V2P_PFACK), "PF did not ack {:#x}", msg[0]);
    }

    /// Whether a message is waiting (`e1000_check_for_msg_vf`).
    pub fn has_msg(&mut self) -> bool {
        self.check_bit(V2P_PFSTS)
    }

    /// `e1000_read_mbx_vf`: lock, read, ACK.
    pub fn read_mbx(&mut self, n: usize) -> Vec<u32> {
        self.obtain_lock();
        let msg = (0..n).map(|i| self.rd(VMBMEM + 4 * i as u32)).collect();
        self.wr(V2PMAILBOX, V2P_ACK);
        msg
    }

    /// `e1000_read_posted_mbx`.
    pub fn read_posted(&mut self, n: usize) -> Vec<u32> {
        assert!(self.has_msg(), "PF did not answer");
        self.read_mbx(n)
    }

    /// A request and its reply, as `e1000_write_msg_read_ack` and friends do.
    pub fn request(&mut self, msg: &[u32], reply_words: usize) -> Vec<u32> {
        self.write_posted(msg);
        self.read_posted(reply_words)
    }

    // ---- vf.c / netdev.c ----

    /// `e1000_reset_hw_vf`: CTRL.RST, wait out RSTD/RSTI, RESET; returns the PF's reply.
    pub fn reset_hw(&mut self) -> Vec<u32> {
        let ctrl = self.rd(CTRL);
        self.wr(CTRL, ctrl | CTRL_RST);
        let mut timeout = 200;
        while self.check_bit(V2P_RSTD | V2P_RSTI) && timeout > 0 {
            timeout -= 1;
        }
        assert!(timeout > 0, "PF still in reset state");
        self.request(&[MSG_RESET], 3)
    }

    /// Probe: irq disable, reset, RESET, SET_MAC with the permanent MAC. Returns it.
    pub fn probe(&mut self) -> [u8; 6] {
        self.wr(EIMC, !0);
        self.wr(EIAC, 0);
        let reply = self.reset_hw();
        assert_eq!(reply[0], MSG_RESET | MSG_ACK, "RESET reply");
        let a = reply[1].to_le_bytes();
        let b = reply[2].to_le_bytes();
        let mac = [a[0], a[1], a[2], a[3], b[0], b[1]];
        let r = self.request(&set_mac_msg(0, &mac), 3);
        assert_eq!(r[0] & !MSG_CTS, MSG_SET_MAC_ADDR | MSG_ACK);
        mac
    }

    /// `igbvf_configure_tx`.
    pub fn configure_tx(&mut self) {
        let txdctl = self.rd(TXDCTL);
        self.wr(TXDCTL, txdctl & !DCTL_ENABLE);
        self.wr(TDLEN, TX_COUNT * 16);
        self.wr(TDBAL, TX_RING as u32);
        self.wr(TDBAH, (TX_RING >> 32) as u32);
        self.wr(TDH, 0);
        self.wr(TDT, 0);
        let dca = self.rd(DCA_TXCTRL);
        self.wr(DCA_TXCTRL, dca & !(1 << 13));
        self.wr(TXDCTL, txdctl | DCTL_ENABLE);
        self.tx_next = 0;
    }

    /// `igbvf_setup_srrctl` + `igbvf_configure_rx` + `igbvf_alloc_rx_buffers`.
    /// `split`: header-split mode (MTU above 1504), else one buffer of 1522 bytes.
    pub fn configure_rx(&mut self, split: bool, max_frame: u32) {
        let srrctl = if split {
            SRRCTL_DROP_EN | 2 | (128 << 2) | SRRCTL_DESCTYPE_HDR_SPLIT_ALWAYS
        } else {
            SRRCTL_DROP_EN | (1522u32.div_ceil(1024)) | SRRCTL_DESCTYPE_ADV_ONEBUF
        };
        self.wr(SRRCTL, srrctl);
        let rxdctl = self.rd(RXDCTL);
        self.wr(RXDCTL, rxdctl & !DCTL_ENABLE);
        self.wr(RDBAL, RX_RING as u32);
        self.wr(RDBAH, (RX_RING >> 32) as u32);
        self.wr(RDLEN, RX_COUNT * 16);
        self.wr(RDH, 0);
        self.wr(RDT, 0);
        let r = self.request(&[MSG_SET_LPE, max_frame], 16);
        assert_eq!(r[0], MSG_SET_LPE | MSG_ACK | MSG_CTS);
        let rxdctl = ((rxdctl | DCTL_ENABLE) & 0xFFF0_0000) | 16 | (8 << 8) | (1 << 16);
        self.wr(RXDCTL, rxdctl);
        self.rx_next = 0;
        for i in 0..RX_COUNT - 1 {
            self.post_rx(i, split);
        }
        self.wr(RDT, RX_COUNT - 2);
    }

    /// Writes the read format of RX descriptor `i`.
    pub fn post_rx(&mut self, i: u32, split: bool) {
        let at = RX_RING + u64::from(i) * 16;
        let (pkt, hdr) = if split {
            (rx_buf(i), RX_HDR + u64::from(i) * 128)
        } else {
            (rx_buf(i), 0)
        };
        self.mem().write_obj(pkt, GuestAddress(at)).unwrap();
        self.mem().write_obj(hdr, GuestAddress(at + 8)).unwrap();
    }

    /// `igbvf_open` after probe: multicast, MAC filters, VLAN 0, rings, MSI-X, enable.
    pub fn open(&mut self, split: bool) {
        // igbvf_set_multi: two groups.
        let hashes = [
            mc_hash(&[0x33, 0x33, 0, 0, 0, 1]),
            mc_hash(&[1, 0, 0x5e, 0, 0, 1]),
        ];
        let mut msg = [0u32; 16];
        msg[0] = MSG_SET_MULTICAST | (2 << MSG_INFO_SHIFT);
        msg[1] = u32::from(hashes[0]) | (u32::from(hashes[1]) << 16);
        let r = self.request(&msg, 16);
        assert_eq!(r[0], msg[0] | MSG_ACK | MSG_CTS);
        // igbvf_set_uni: clear the unicast filters.
        let r = self.request(&set_mac_msg(MAC_FILTER_CLR, &[0; 6]), 1);
        assert_eq!(r[0], MSG_SET_MAC_ADDR | (1 << 16) | MSG_ACK | MSG_CTS);
        // igbvf_restore_vlan: the 8021q module's VID 0.
        let r = self.request(&[MSG_SET_VLAN | (1 << MSG_INFO_SHIFT), 0], 1);
        assert_eq!(r[0], MSG_SET_VLAN | (1 << 16) | MSG_ACK | MSG_CTS);
        self.configure_tx();
        self.configure_rx(split, if split { 9000 + 22 } else { 1522 });
        // igbvf_configure_msix: TX -> 0, RX -> 1, mailbox -> 2.
        let ivar = self.rd(IVAR0);
        self.wr(IVAR0, (ivar & 0xFFFF_00FF) | ((IVAR_VALID) << 8));
        self.wr(EITR0, 488);
        let ivar = self.rd(IVAR0);
        self.wr(IVAR0, (ivar & 0xFFFF_FF00) | 1 | IVAR_VALID);
        self.wr(EITR0 + 4, 488);
        self.wr(IVAR_MISC, 2 | IVAR_VALID);
        assert_eq!(self.rd(IVAR0), 0x0000_8081);
        self.rd(EICR);
        self.wr(EIAC, 7);
        self.wr(EIAM, 7);
        self.wr(EIMS, 7);
    }

    /// `e1000_check_for_link_vf`: no reset seen, STATUS.LU, and CTS in VMBMEM[0].
    pub fn link_up(&mut self) -> bool {
        if self.check_bit(V2P_RSTD | V2P_RSTI) {
            return false;
        }
        if self.rd(STATUS) & STATUS_LU == 0 {
            return false;
        }
        let msg = self.read_mbx(1)[0];
        msg & MSG_CTS != 0
    }

    /// `igbvf_down`: queues off, interrupts masked, reset + RESET + SET_MAC, heads and
    /// tails zeroed.
    pub fn down(&mut self) {
        let rxdctl = self.rd(RXDCTL);
        self.wr(RXDCTL, rxdctl & !DCTL_ENABLE);
        let txdctl = self.rd(TXDCTL);
        self.wr(TXDCTL, txdctl & !DCTL_ENABLE);
        self.wr(EIMC, !0);
        self.wr(EIAC, 0);
        let reply = self.reset_hw();
        assert_eq!(reply[0], MSG_RESET | MSG_ACK);
        let r = self.request(&set_mac_msg(0, &MAC), 3);
        assert_eq!(r[0] & !MSG_CTS, MSG_SET_MAC_ADDR | MSG_ACK);
        self.wr(TDH, 0);
        self.wr(TDT, 0);
        self.wr(RDH, 0);
        self.wr(RDT, 0);
    }

    /// Probe and open with the standard MTU; interrupts recorded so far are discarded.
    pub fn up(policy: PfPolicy, split: bool) -> Self {
        let mut h = Self::new(policy);
        h.probe();
        h.open(split);
        assert!(h.link_up());
        h.irqs();
        h
    }

    /// Queues one TX descriptor (16 bytes) at `tx_next`.
    pub fn put_tx_desc(&mut self, d: [u32; 4]) {
        let at = TX_RING + u64::from(self.tx_next) * 16;
        let mut b = [0u8; 16];
        for (i, w) in d.iter().enumerate() {
            b[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
        }
        self.mem().write_slice(&b, GuestAddress(at)).unwrap();
        self.tx_next = (self.tx_next + 1) % TX_COUNT;
    }

    /// Writes `data` to TX buffer space at `off` and returns its address.
    pub fn tx_buffer(&self, off: u64, data: &[u8]) -> u64 {
        self.mem()
            .write_slice(data, GuestAddress(TX_BUF + off))
            .unwrap();
        TX_BUF + off
    }

    /// The 16 bytes of RX descriptor `i`.
    pub fn rx_desc(&self, i: u32) -> [u8; 16] {
        let mut b = [0u8; 16];
        self.mem()
            .read_slice(&mut b, GuestAddress(RX_RING + u64::from(i) * 16))
            .unwrap();
        b
    }

    pub fn read_mem(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.mem().read_slice(&mut b, GuestAddress(addr)).unwrap();
        b
    }
}

pub(super) fn rx_buf(i: u32) -> u64 {
    RX_BUF + u64::from(i) * RX_BUF_STRIDE
}

/// A SET_MAC_ADDR message with `info`.
pub(super) fn set_mac_msg(info: u32, mac: &[u8; 6]) -> [u32; 3] {
    [
        MSG_SET_MAC_ADDR | (info << MSG_INFO_SHIFT),
        u32::from_le_bytes([mac[0], mac[1], mac[2], mac[3]]),
        u32::from_le_bytes([mac[4], mac[5], 0, 0]),
    ]
}

/// `e1000_hash_mc_addr_vf` with filter type 0.
pub(super) fn mc_hash(mac: &[u8; 6]) -> u16 {
    ((u16::from(mac[4]) >> 4) | (u16::from(mac[5]) << 4)) & 0xFFF
}

/// The Internet checksum over a list of byte slices, written independently of the model
/// (32-bit accumulator over byte pairs of the concatenation).
pub(super) fn inet_checksum(parts: &[&[u8]]) -> u16 {
    let bytes: Vec<u8> = parts.concat();
    let mut acc: u32 = 0;
    for pair in bytes.chunks(2) {
        let hi = u32::from(pair[0]) << 8;
        let lo = pair.get(1).copied().map(u32::from).unwrap_or(0);
        acc += hi | lo;
        acc = (acc & 0xFFFF) + (acc >> 16);
    }
    !(acc as u16)
}

/// True if the Internet checksum over `parts` (which include the checksum) verifies.
pub(super) fn checksum_ok(parts: &[&[u8]]) -> bool {
    inet_checksum(parts) == 0
}
