//! Untrusted input: garbage rings, bad lengths, odd accesses, and a property test over
//! random register writes and ring contents.

use proptest::prelude::*;

use super::*;
use crate::sriov::igbvf::RxDrop;

fn data_desc(addr: u64, len: u32, cmd: u32, olinfo: u32) -> [u32; 4] {
    [
        addr as u32,
        (addr >> 32) as u32,
        TXD_DTYP_DATA | TXD_DEXT | cmd | len,
        olinfo,
    ]
}

fn eth_frame(len: usize) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1];
    f.extend_from_slice(&MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    f.resize(len, 0x5A);
    f
}

#[test]
fn ring_lengths_are_masked_and_unusable_rings_do_nothing() {
    let mut h = Harness::up(policy_up(), false);
    h.wr(RDLEN, 100);
    assert_eq!(h.rd(RDLEN), 0);
    assert_eq!(
        h.vf.receive(&eth_frame(64), false),
        RxOutcome::Dropped(RxDrop::BadRing)
    );
    h.wr(RDLEN, 0x1005);
    assert_eq!(h.rd(RDLEN), 0x1000);
    // TDT beyond an 8-descriptor ring: nothing fetched, counted.
    h.wr(TDLEN, 128);
    h.wr(TDT, 100);
    assert!(h.sent().is_empty());
    assert_eq!(h.rd(TDH), 0);
    assert_eq!(h.vf.counters().tx_bad_ring, 1);
    // RDH beyond the ring.
    h.wr(RDH, 5000);
    assert_eq!(
        h.vf.receive(&eth_frame(64), false),
        RxOutcome::Dropped(RxDrop::BadRing)
    );
}

#[test]
fn tx_dma_errors_drop_the_frame_or_stop_the_ring() {
    let mut h = Harness::up(policy_up(), false);
    // A buffer outside memory: dropped, completed, the queue goes on.
    h.put_tx_desc(data_desc(1 << 40, 64, TXD_EOP | TXD_RS, 0));
    let a = h.tx_buffer(0, &eth_frame(64));
    h.put_tx_desc(data_desc(a, 64, TXD_EOP | TXD_RS, 0));
    h.wr(TDT, 2);
    assert_eq!(h.sent(), vec![eth_frame(64)]);
    assert_eq!(h.rd(TDH), 2);
    assert_eq!(h.vf.counters().tx_dma_errors, 1);
    assert_eq!(h.vf.counters().tx_dropped, 1);
    // A ring outside memory: nothing moves.
    h.wr(TDBAL, 0);
    h.wr(TDBAH, 0x100);
    h.wr(TDH, 0);
    h.wr(TDT, 3);
    assert_eq!(h.rd(TDH), 0);
    assert_eq!(h.vf.counters().tx_dma_errors, 2);
    // An RX ring outside memory.
    h.wr(RDBAH, 0x100);
    assert_eq!(
        h.vf.receive(&eth_frame(64), false),
        RxOutcome::Dropped(RxDrop::Dma)
    );
}

#[test]
fn endless_chain_is_bounded_and_dropped() {
    let mut h = Harness::up(policy_up(), false);
    let a = h.tx_buffer(0, &eth_frame(64));
    for _ in 0..TX_COUNT - 1 {
        h.put_tx_desc(data_desc(a, 64, TXD_RS, 0));
    }
    h.wr(TDT, TX_COUNT - 1);
    assert!(h.sent().is_empty());
    // One chain of MAX_DESCS_PER_FRAME dropped; the rest waits for an EOP.
    assert_eq!(h.rd(TDH), 128);
    assert_eq!(h.vf.counters().tx_dropped, 1);
}

#[test]
fn absurd_lengths_and_tso_garbage_end_only_their_frame() {
    let mut h = Harness::up(policy_up(), false);
    let a = h.tx_buffer(0, &eth_frame(64));
    // 2 x 64 KiB without TSO: too long.
    h.put_tx_desc(data_desc(TX_BUF, 0xFFFF, 0, 0));
    h.put_tx_desc(data_desc(TX_BUF, 0xFFFF, TXD_EOP | TXD_RS, 0));
    // TSO with MSS 0.
    h.put_tx_desc([
        14 << 9 | 20,
        0,
        TXD_DEXT | TXD_DTYP_CTXT | TUCMD_IPV4 | (1 << 11),
        20 << 8,
    ]);
    h.put_tx_desc(data_desc(a, 64, TXD_TSE | TXD_EOP | TXD_RS, TXD_POPTS_TXSM));
    // TSO whose headers (14 + 200 + 60) lie beyond a 64-byte frame.
    h.put_tx_desc([
        14 << 9 | 200,
        0,
        TXD_DEXT | TXD_DTYP_CTXT | TUCMD_IPV4 | (1 << 11),
        (100 << 16) | (60 << 8),
    ]);
    h.put_tx_desc(data_desc(a, 64, TXD_TSE | TXD_EOP | TXD_RS, TXD_POPTS_TXSM));
    // Checksum offload with the L4 header beyond the frame.
    h.put_tx_desc(data_desc(a, 20, TXD_EOP | TXD_RS, TXD_POPTS_TXSM));
    // A descriptor of an unknown type.
    h.put_tx_desc([
        a as u32,
        0,
        TXD_DEXT | 0x0050_0000 | TXD_EOP | TXD_RS | 64,
        0,
    ]);
    // And a good one.
    h.put_tx_desc(data_desc(a, 64, TXD_EOP | TXD_RS, 0));
    let tail = h.tx_next;
    h.wr(TDT, tail);
    assert_eq!(h.sent(), vec![eth_frame(64)]);
    assert_eq!(h.vf.counters().tx_dropped, 5);
    assert_eq!(h.rd(TDH), tail);
}

#[test]
fn odd_widths_and_offsets_are_harmless() {
    let mut h = Harness::up(policy_up(), false);
    for len in [1usize, 2, 3, 5, 8, 16] {
        for off in [
            0u64,
            1,
            2,
            0xC40,
            0xC41,
            0x3FFC,
            0x3FFE,
            0x4000,
            u64::MAX - 3,
        ] {
            let mut buf = vec![0xEEu8; len];
            h.vf.read(off, &mut buf);
            h.vf.write(off, &vec![0xFF; len]);
        }
    }
    // A 2-byte read of V2PMAILBOX has no read-to-clear side effect and reads zeros.
    let mut two = [0xFFu8; 2];
    h.vf.read(u64::from(V2PMAILBOX), &mut two);
    assert_eq!(two, [0, 0]);
    // 8-byte accesses reach two registers.
    h.vf.write(u64::from(RDBAL), &[0x80, 0, 0, 0, 0x12, 0, 0, 0]);
    assert_eq!(h.rd(RDBAL), 0x80);
    assert_eq!(h.rd(RDBAH), 0x12);
    // Unknown registers read 0 and ignore writes.
    h.wr(0x2900, 0xFFFF_FFFF);
    assert_eq!(h.rd(0x2900), 0);
}

/// Registers worth hitting, plus any offset.
const REGS: &[u32] = &[
    CTRL,
    STATUS,
    VMBMEM,
    VMBMEM + 4,
    V2PMAILBOX,
    EICS,
    EIMS,
    EIMC,
    EIAC,
    EIAM,
    EICR,
    EITR0,
    EITR0 + 4,
    EITR0 + 8,
    IVAR0,
    IVAR_MISC,
    RDBAL,
    RDBAH,
    RDLEN,
    SRRCTL,
    RDH,
    RDT,
    RXDCTL,
    TDBAL,
    TDBAH,
    TDLEN,
    TDH,
    DCA_TXCTRL,
    TDT,
    TXDCTL,
];

#[derive(Debug, Clone)]
enum Op {
    Write(u32, u32),
    Read(u32),
    Poke(u16, Vec<u8>),
    Rx(Vec<u8>, bool),
    Tick(u32),
    Flr,
    BusMaster(bool),
    Policy(bool, bool, Option<u16>),
    Kick,
}

fn reg() -> impl Strategy<Value = u32> {
    prop_oneof![
        4 => proptest::sample::select(REGS),
        1 => (0u32..0x4000).prop_map(|o| o & !3),
    ]
}

fn value() -> impl Strategy<Value = u32> {
    prop_oneof![
        any::<u32>(),
        0u32..64,
        Just(DCTL_ENABLE),
        Just(CTRL_RST),
        Just(V2P_REQ),
        Just(V2P_VFU),
        Just(V2P_ACK),
        Just(7),
        (0u32..0x1000).prop_map(|v| v << 4),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (reg(), value()).prop_map(|(r, v)| Op::Write(r, v)),
        2 => reg().prop_map(Op::Read),
        3 => (any::<u16>(), proptest::collection::vec(any::<u8>(), 1..256))
            .prop_map(|(a, b)| Op::Poke(a, b)),
        2 => (proptest::collection::vec(any::<u8>(), 0..3000), any::<bool>())
            .prop_map(|(f, s)| Op::Rx(f, s)),
        1 => (0u32..500).prop_map(Op::Tick),
        1 => Just(Op::Flr),
        1 => any::<bool>().prop_map(Op::BusMaster),
        1 => (any::<bool>(), any::<bool>(), proptest::option::of(0u16..4096))
            .prop_map(|(l, t, v)| Op::Policy(l, t, v)),
        1 => Just(Op::Kick),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn random_registers_and_rings_never_panic(
        seed_mem in proptest::collection::vec(any::<u8>(), 0x1000),
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1_0000)]).unwrap();
        // Garbage descriptors and buffers everywhere, repeated.
        for i in 0..16u64 {
            mem.write_slice(&seed_mem, GuestAddress(i * 0x1000)).unwrap();
        }
        let mut h = Harness::with_memory(mem, policy_up());
        // Half the time start from a driver that is up, on a ring in this memory.
        if seed_mem[0] & 1 == 0 {
            h.probe();
        }
        for op in ops {
            match op {
                Op::Write(r, v) => h.wr(r, v),
                Op::Read(r) => { h.rd(r); }
                Op::Poke(a, b) => {
                    let _ = h.mem().write_slice(&b, GuestAddress(u64::from(a)));
                }
                Op::Rx(f, s) => { h.vf.receive(&f, s); }
                Op::Tick(us) => { h.advance_us(u64::from(us)); h.vf.poll_timers(); }
                Op::Flr => h.vf.flr(),
                Op::BusMaster(b) => h.vf.set_bus_master(b),
                Op::Policy(link_up, trusted, port_vlan) => h.vf.set_policy(PfPolicy {
                    admin_mac: Some(MAC),
                    trusted,
                    port_vlan,
                    link_up,
                }),
                Op::Kick => h.vf.process_tx(),
            }
            prop_assert!(h.rd(RDH) <= 0xFFFF && h.rd(TDH) <= 0xFFFF);
            prop_assert!(h.rd(EICR) <= 7 && h.rd(EIMS) <= 7);
            for v in h.irqs() {
                prop_assert!(v < 3);
            }
            prop_assert!(h.vf.pf().requests().multicast_hashes.len() <= 30);
            h.vf.take_pf_events();
        }
    }
}
