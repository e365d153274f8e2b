//! max_tx_rate (token bucket with backpressure) and min_tx_rate (shares at the uplink)
//! over simulated time.

use super::*;

const FRAME: usize = 1500;

/// Runs `transmit` from `start` until `end`, keeping every VF in `busy` saturated with
/// `FRAME`-byte frames for the uplink, and returns the bytes each VF got onto the wire
/// between `measure_from` and `end`, and how many calls it took.
fn saturate(
    sw: &mut Switch,
    busy: &[u16],
    measure_from: Duration,
    end: Duration,
) -> (Vec<u64>, usize) {
    let mut rings = VecTxRings::new(sw.num_vfs());
    let mut sink = Sink::default();
    let mut bytes = vec![0u64; usize::from(sw.num_vfs())];
    let mut now = Duration::ZERO;
    let mut calls = 0;
    let mut seq = 0;
    while now < end {
        for &vf in busy {
            while rings.len(vf) < 16 {
                rings.push(vf, eth(HOST, vf_mac(vf), None, FRAME, seq));
                seq += 1;
            }
        }
        let report = sw.transmit(now, &mut rings, &mut sink, 64);
        calls += 1;
        assert_eq!(report.dropped, 0);
        for (port, f) in sink.take() {
            assert_eq!(port, PortId::Uplink);
            let src = EthHeader::parse(&f).unwrap().src;
            let vf = busy.iter().copied().find(|&v| vf_mac(v) == src).unwrap();
            if now >= measure_from {
                bytes[usize::from(vf)] += f.len() as u64;
            }
        }
        if !report.more {
            let next = report
                .next_wake
                .expect("saturated rings always wait for something");
            assert!(next > now, "wake {next:?} not after {now:?}");
            now = next;
        }
    }
    (bytes, calls)
}

/// VF 0 sends `frame` at time zero until told to wait: how many went, and the retry time.
fn send_until_wait(sw: &mut Switch, sink: &mut Sink, frame: &[u8]) -> (usize, Duration) {
    for sent in 0..1000 {
        match sw.vf_send(Duration::ZERO, 0, frame, sink) {
            TxVerdict::Sent { .. } => {}
            TxVerdict::Wait { retry_at } => return (sent, retry_at),
            TxVerdict::Dropped(r) => panic!("dropped: {r:?}"),
        }
    }
    panic!("never told to wait");
}

fn mbps(bytes: u64, over: Duration) -> f64 {
    bytes as f64 * 8.0 / over.as_secs_f64() / 1e6
}

#[test]
fn max_tx_rate_holds_within_one_percent_without_drops() {
    let mut sw = switch_with(1, SwitchConfig::default());
    sw.set_vf_rate(0, 0, 100, Duration::ZERO).unwrap();
    let end = Duration::from_secs(10);
    let (bytes, calls) = saturate(&mut sw, &[0], Duration::ZERO, end);
    let rate = mbps(bytes[0], end);
    // 100 Mbps plus the initial 10 ms burst (0.1%).
    assert!((rate - 100.0).abs() < 1.0, "{rate} Mbps");
    let c = sw.counters(PortId::Vf(0)).unwrap();
    assert_eq!(c.stats.tx_dropped, 0);
    assert_eq!(c.drops.rate, 0);
    assert_eq!(c.stats.tx_bytes, bytes[0]);
    assert!(
        calls > 80_000,
        "one wake per frame once the burst is spent: {calls}"
    );
}

#[test]
fn max_tx_rate_is_exact_over_long_runs() {
    // 7 Mbps is 875,000 B/s: a 1500 B frame every 1.714285... ms, which no whole number
    // of nanoseconds matches; the refill carries the fraction, so after 100 s the VF has
    // sent the bucket (two jumbo frames) plus rate * t, to within a frame.
    let mut sw = switch_with(1, SwitchConfig::default());
    sw.set_vf_rate(0, 0, 7, Duration::ZERO).unwrap();
    let end = Duration::from_secs(100);
    let (bytes, _) = saturate(&mut sw, &[0], Duration::ZERO, end);
    let expect = 7 * 125_000 * 100 + 2 * MAX_FRAME as u64;
    assert!(bytes[0] <= expect + FRAME as u64, "{} > {expect}", bytes[0]);
    assert!(
        bytes[0] + 2 * FRAME as u64 >= expect,
        "{} < {expect}",
        bytes[0]
    );
}

#[test]
fn rate_limited_frames_wait_in_the_ring() {
    // An unlimited uplink, so that only the bucket pushes back.
    let mut sw = switch(1);
    sw.set_vf_rate(0, 0, 10, Duration::ZERO).unwrap();
    let mut sink = Sink::default();
    let f = eth(HOST, vf_mac(0), None, FRAME, 0);
    // The bucket holds the larger of 10 ms at 10 Mbps (12.5 kB) and two jumbo frames
    // (19456 B): 13 frames go (the 13th into debt), the 14th must wait.
    let (sent, retry) = send_until_wait(&mut sw, &mut sink, &f);
    assert_eq!(sent, 13);
    // Debt of 13 * 1500 - 19456 = 44 bytes at 1.25 MB/s: 35.2 us.
    assert_eq!(retry, Duration::from_nanos(35_200));
    assert!(matches!(
        sw.vf_send(retry - Duration::from_nanos(1), 0, &f, &mut sink),
        TxVerdict::Wait { .. }
    ));
    assert!(matches!(
        sw.vf_send(retry, 0, &f, &mut sink),
        TxVerdict::Sent { copies: 1 }
    ));
    assert_eq!(sw.counters(PortId::Vf(0)).unwrap().stats.tx_dropped, 0);
    // VF-to-VF traffic is limited too (max_tx_rate is the VF's whole TX).
    assert!(matches!(
        sw.vf_send(retry, 0, &eth(vf_mac(0), vf_mac(0), None, 64, 1), &mut sink),
        TxVerdict::Wait { .. }
    ));
}

#[test]
fn a_busy_uplink_pushes_back_on_vfs_and_drops_pushed_frames() {
    let mut sw = switch_with(1, SwitchConfig::default());
    let mut sink = Sink::default();
    let f = eth(HOST, vf_mac(0), None, FRAME, 0);
    // 1500 B at 1 Gbps is 12 us; the wire FIFO takes 100 us ahead: 9 frames go at t=0
    // (108 us of wire time). The rest waits until the FIFO has drained to half: 58 us.
    let (sent, retry) = send_until_wait(&mut sw, &mut sink, &f);
    assert_eq!(sent, 9);
    assert_eq!(retry, Duration::from_micros(58));
    // The PF pushes: queued up to 2 ms of wire time, then dropped as rate.
    sw.add_pf_mac(mac(0x77)).unwrap();
    let pf = eth(HOST, mac(0x77), None, FRAME, 0);
    let mut pushed = 0;
    while sw.from_pf(Duration::ZERO, &pf, &mut sink) == (Outcome::Forwarded { copies: 1 }) {
        pushed += 1;
    }
    assert_eq!(pushed, 2_000_000 / 12_000 - 9 + 1);
    assert_eq!(sw.counters(PortId::Uplink).unwrap().drops.rate, 1);
}

#[test]
fn min_tx_rate_shares_under_contention() {
    // Two VFs saturating a 1000 Mbps uplink with min 300 and 100: each gets its
    // guarantee plus the 600 Mbps left split 3:1 by the same weights, i.e. 750 and 250.
    let mut sw = switch_with(2, SwitchConfig::default());
    sw.set_vf_rate(0, 300, 0, Duration::ZERO).unwrap();
    sw.set_vf_rate(1, 100, 0, Duration::ZERO).unwrap();
    let from = Duration::from_millis(10);
    let end = Duration::from_millis(1010);
    let (bytes, _) = saturate(&mut sw, &[0, 1], from, end);
    let over = end - from;
    let (a, b) = (mbps(bytes[0], over), mbps(bytes[1], over));
    println!("min 300 / min 100 on 1000 Mbps: {a:.2} / {b:.2} Mbps");
    assert!((a + b - 1000.0).abs() < 5.0, "link not full: {a} + {b}");
    assert!((a - 750.0).abs() < 750.0 * 0.02, "VF 0 got {a} Mbps");
    assert!((b - 250.0).abs() < 250.0 * 0.02, "VF 1 got {b} Mbps");
    // What is left after the guarantees, split 3:1.
    let ratio = (a - 300.0) / (b - 100.0);
    assert!((ratio - 3.0).abs() < 0.1, "leftover ratio {ratio}");
}

#[test]
fn without_min_rates_the_uplink_is_shared_equally() {
    let mut sw = switch_with(3, SwitchConfig::default());
    let from = Duration::from_millis(10);
    let end = Duration::from_millis(510);
    let (bytes, _) = saturate(&mut sw, &[0, 1, 2], from, end);
    for (vf, b) in bytes.iter().enumerate() {
        let r = mbps(*b, end - from);
        assert!((r - 333.3).abs() < 333.3 * 0.02, "VF {vf}: {r} Mbps");
    }
}

#[test]
fn a_guarantee_holds_against_many_best_effort_vfs() {
    // VF 0: min 500; VFs 1-4 best effort (weight 1 each against VF 0's 500): VF 0 gets
    // 500 + 500 * 500/504 = 996 Mbps, the others about 1 Mbps each.
    let mut sw = switch_with(5, SwitchConfig::default());
    sw.set_vf_rate(0, 500, 0, Duration::ZERO).unwrap();
    let from = Duration::from_millis(10);
    let end = Duration::from_millis(1010);
    let (bytes, _) = saturate(&mut sw, &[0, 1, 2, 3, 4], from, end);
    let a = mbps(bytes[0], end - from);
    assert!((a - 996.0).abs() < 996.0 * 0.02, "VF 0 got {a} Mbps");
    // And the best-effort VFs are not starved.
    for (vf, b) in bytes.iter().enumerate().skip(1) {
        assert!(*b > 0, "VF {vf} starved");
    }
}

#[test]
fn a_guaranteed_vf_that_asks_for_less_leaves_the_rest() {
    // VF 0 (min 300) offers only 100 Mbps (one frame per 120 us); VF 1 (min 100)
    // saturates and gets the other 900.
    let mut sw = switch_with(2, SwitchConfig::default());
    sw.set_vf_rate(0, 300, 0, Duration::ZERO).unwrap();
    sw.set_vf_rate(1, 100, 0, Duration::ZERO).unwrap();
    let mut rings = VecTxRings::new(2);
    let mut sink = Sink::default();
    let mut now = Duration::ZERO;
    let mut next_offer = Duration::ZERO;
    let end = Duration::from_millis(500);
    let mut bytes = [0u64; 2];
    while now < end {
        while rings.len(1) < 16 {
            rings.push(1, eth(HOST, vf_mac(1), None, FRAME, 0));
        }
        if now >= next_offer {
            rings.push(0, eth(HOST, vf_mac(0), None, FRAME, 0));
            next_offer += Duration::from_micros(120);
        }
        let report = sw.transmit(now, &mut rings, &mut sink, 64);
        for (_, f) in sink.take() {
            let vf = usize::from(EthHeader::parse(&f).unwrap().src != vf_mac(0));
            bytes[vf] += f.len() as u64;
        }
        now = report
            .next_wake
            .unwrap_or(now)
            .min(next_offer)
            .max(now + Duration::from_nanos(1));
    }
    let (a, b) = (mbps(bytes[0], end), mbps(bytes[1], end));
    assert!((a - 100.0).abs() < 3.0, "VF 0 got {a} Mbps");
    assert!((b - 900.0).abs() < 18.0, "VF 1 got {b} Mbps");
}

#[test]
fn transmit_respects_its_budget() {
    let mut sw = switch(2);
    let mut rings = VecTxRings::new(2);
    for i in 0..10 {
        rings.push(0, eth(vf_mac(1), vf_mac(0), None, 64, i));
    }
    let mut sink = Sink::default();
    let r = sw.transmit(Duration::ZERO, &mut rings, &mut sink, 4);
    assert_eq!((r.sent, r.more, r.next_wake), (4, true, None));
    let r = sw.transmit(Duration::ZERO, &mut rings, &mut sink, 100);
    assert_eq!((r.sent, r.more), (6, false));
    assert!(rings.is_empty());
    // In order.
    let seqs: Vec<u32> = sink.frames.iter().map(|(_, f)| seq_of(f)).collect();
    assert_eq!(seqs, (0..10).collect::<Vec<_>>());
    // Dropped frames are taken too, and reported.
    rings.push(1, eth(HOST, mac(0x66), None, 64, 0));
    let r = sw.transmit(Duration::ZERO, &mut rings, &mut sink, 100);
    assert_eq!((r.sent, r.dropped), (0, 1));
}
