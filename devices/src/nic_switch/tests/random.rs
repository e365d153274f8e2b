//! A seeded random walk over frames from every port (garbage included) and management
//! calls: nothing panics, drops always add up to their reasons, and every filter keeps
//! exactly one owner or is in flight for a guest.

use super::*;

/// xorshift64*, so the walk is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn byte(&mut self) -> u8 {
        self.next().to_le_bytes()[0]
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[usize::try_from(self.below(items.len() as u64)).unwrap()]
    }
}

fn random_frame(rng: &mut Rng, macs: &[MacAddr]) -> Vec<u8> {
    match rng.below(10) {
        0 => {
            // Garbage of any length, tags announced or not.
            let len = usize::try_from(rng.below(40)).unwrap();
            (0..len).map(|_| rng.byte()).collect()
        }
        _ => {
            let tag = match rng.below(4) {
                0 => Some((u16::try_from(rng.below(4096)).unwrap(), rng.byte() & 7)),
                1 => Some((10, 0)),
                _ => None,
            };
            let len = usize::try_from(18 + rng.below(2000)).unwrap();
            eth(
                rng.pick(macs),
                rng.pick(macs),
                tag,
                len,
                rng.next().to_le_bytes()[0].into(),
            )
        }
    }
}

fn check_invariants(sw: &Switch, ports: &[PortId]) {
    for port in ports {
        let Some(c) = sw.counters(*port) else {
            continue;
        };
        let d = &c.drops;
        let reasons = d.spoofed
            + d.vlan
            + d.link_down
            + d.mtu
            + d.no_buffer
            + d.no_owner
            + d.in_flight
            + d.rate
            + d.malformed;
        assert_eq!(
            c.stats.rx_dropped + c.stats.tx_dropped,
            reasons,
            "{port}: {c:?}"
        );
    }
    for (key, entry) in sw.filters() {
        assert!(
            entry.owner.is_some() || entry.guest.is_some(),
            "{key} has no owner and no guest"
        );
        if let Some(VPortId::Vf(n)) = entry.owner {
            assert!(sw.vf_has_vport(n), "{key} on VF {n} without a VPort");
        }
    }
}

#[test]
fn random_walk_keeps_the_books() {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut sw = switch_with(4, SwitchConfig::default());
    let guests = [
        sw.add_synthetic(mac(0x40), 0).unwrap(),
        sw.add_synthetic(mac(0x41), 10).unwrap(),
    ];
    let macs = [
        vf_mac(0),
        vf_mac(1),
        vf_mac(2),
        vf_mac(3),
        mac(0x40),
        mac(0x41),
        HOST,
        MacAddr::BROADCAST,
        MacAddr([1, 0, 0x5e, 0, 0, 1]),
        MacAddr::ZERO,
    ];
    let ports = [
        PortId::Uplink,
        PortId::Default,
        PortId::Vf(0),
        PortId::Vf(1),
        PortId::Vf(2),
        PortId::Vf(3),
        PortId::Synthetic(guests[0]),
        PortId::Synthetic(guests[1]),
    ];
    let mut sink = Sink::default();
    let mut rings = VecTxRings::new(4);
    let mut now = Duration::ZERO;
    for _ in 0..20_000 {
        now += Duration::from_nanos(rng.below(50_000));
        let vf = u16::try_from(rng.below(5)).unwrap(); // 4 is out of range on purpose
        let g = rng.pick(&guests);
        match rng.below(24) {
            0..=5 => {
                sw.from_uplink(now, &random_frame(&mut rng, &macs), &mut sink);
            }
            6 => {
                sw.from_pf(now, &random_frame(&mut rng, &macs), &mut sink);
            }
            7 => {
                let _ = sw.from_synthetic(now, g, &random_frame(&mut rng, &macs), &mut sink);
            }
            8..=10 => {
                sw.vf_send(now, vf, &random_frame(&mut rng, &macs), &mut sink);
            }
            11..=13 => {
                rings.push(vf, random_frame(&mut rng, &macs));
                let r = sw.transmit(now, &mut rings, &mut sink, 8);
                assert!(r.sent + r.dropped <= 8);
            }
            14 => {
                let vlan = u32::try_from(rng.below(4200)).unwrap();
                let qos = u32::try_from(rng.below(9)).unwrap();
                let _ = sw.set_vf_vlan(vf, vlan, qos, VlanProto::Dot1Q);
            }
            15 => {
                let state = rng.pick(&[LinkState::Auto, LinkState::Enable, LinkState::Disable]);
                let _ = sw.set_vf_link_state(vf, state);
            }
            16 => {
                let _ = sw.set_vf_trust(vf, rng.below(2) == 0);
                let _ = sw.set_vf_spoofchk(vf, rng.below(2) == 0);
            }
            17 => {
                let target = rng.pick(&[VPortId::Default, VPortId::Vf(0), VPortId::Vf(1)]);
                let _ = sw.move_guest_filters(g, target);
            }
            18 => {
                let _ = sw.release_guest_filters(g);
            }
            19 => {
                if sw.vf_has_vport(vf) {
                    let _ = sw.delete_vport(vf);
                } else {
                    let _ = sw.create_vport(vf);
                }
            }
            20 => {
                let min = u32::try_from(rng.below(400)).unwrap();
                let max = u32::try_from(rng.below(1200)).unwrap();
                let _ = sw.set_vf_rate(vf, min, max, now);
            }
            21 => {
                let req = match rng.below(5) {
                    0 => VfRequest::SetMac(rng.pick(&macs)),
                    1 => VfRequest::AddUnicast(rng.pick(&macs)),
                    2 => VfRequest::SetXcast(XcastMode::AllMulti),
                    3 => VfRequest::SetVlan {
                        vid: u16::try_from(rng.below(4100)).unwrap(),
                        add: rng.below(2) == 0,
                    },
                    _ => VfRequest::SetMaxFrame(u32::try_from(rng.below(10_000)).unwrap()),
                };
                let _ = sw.vf_request(vf, req);
            }
            22 => {
                let _ = sw.set_uplink_up(rng.below(4) != 0);
            }
            _ => {
                let _ = sw.vf_reset(vf);
                let _ = sw.set_vf_mac(vf, rng.pick(&macs));
            }
        }
        sink.frames.clear();
        check_invariants(&sw, &ports);
    }
    // The walk did reach the interesting places.
    let up = sw.counters(PortId::Uplink).unwrap();
    assert!(
        up.stats.rx_packets > 1000 && up.stats.tx_packets > 100,
        "{up:?}"
    );
    assert!(up.drops.malformed > 0 && up.drops.no_owner > 0);
    assert!(sw.lost_frames().in_flight.values().sum::<u64>() > 0);
}
