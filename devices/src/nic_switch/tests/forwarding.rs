//! VEB forwarding: unicast by filter, unknown unicast, flooding within VLANs.

use super::*;

#[test]
fn vf_to_vf_stays_inside_the_adapter() {
    let mut sw = switch(3);
    let mut sink = Sink::default();
    let f = eth(vf_mac(2), vf_mac(0), None, 100, 7);
    assert_eq!(vf_tx(&mut sw, &mut sink, 0, &f), 1);
    assert_eq!(sink.frames, vec![(PortId::Vf(2), f.clone())]);
    let c0 = sw.counters(PortId::Vf(0)).unwrap().stats;
    let c2 = sw.counters(PortId::Vf(2)).unwrap().stats;
    assert_eq!((c0.tx_packets, c0.tx_bytes), (1, 100));
    assert_eq!((c2.rx_packets, c2.rx_bytes), (1, 100));
    assert_eq!(sw.counters(PortId::Uplink).unwrap().stats.tx_packets, 0);
    assert_eq!(sw.counters(PortId::Vf(1)).unwrap().stats.rx_packets, 0);
}

#[test]
fn uplink_to_vf_by_its_filter() {
    let mut sw = switch(2);
    let mut sink = Sink::default();
    let f = eth(vf_mac(1), HOST, None, 64, 1);
    assert_eq!(
        sw.from_uplink(Duration::ZERO, &f, &mut sink),
        Outcome::Forwarded { copies: 1 }
    );
    assert_eq!(sink.ports(), vec![PortId::Vf(1)]);
    assert_eq!(sw.counters(PortId::Uplink).unwrap().stats.rx_packets, 1);
}

#[test]
fn unknown_unicast_from_a_vport_goes_out_the_uplink() {
    let mut sw = switch(1);
    let mut sink = Sink::default();
    let f = eth(HOST, vf_mac(0), None, 64, 1);
    vf_tx(&mut sw, &mut sink, 0, &f);
    assert_eq!(sink.frames, vec![(PortId::Uplink, f)]);
    // So does a frame a VF addresses to itself: no hairpin.
    let f = eth(vf_mac(0), vf_mac(0), None, 64, 2);
    vf_tx(&mut sw, &mut sink, 0, &f);
    assert_eq!(sink.ports(), vec![PortId::Uplink, PortId::Uplink]);
    let f = eth(HOST, mac(0x77), None, 64, 3);
    sw.add_pf_mac(mac(0x77)).unwrap();
    sw.from_pf(Duration::ZERO, &f, &mut sink);
    assert_eq!(sink.ports().last(), Some(&PortId::Uplink));
}

#[test]
fn unknown_unicast_from_the_uplink_is_dropped_and_counted_per_mac() {
    let mut sw = switch(1);
    let mut sink = Sink::default();
    let stranger = mac(0x55);
    for i in 0..3 {
        let out = sw.from_uplink(Duration::ZERO, &eth(stranger, HOST, None, 64, i), &mut sink);
        assert_eq!(out, Outcome::Dropped(DropReason::NoOwner));
    }
    assert!(sink.frames.is_empty());
    let lost = sw.lost_frames();
    assert_eq!(lost.no_owner_for(stranger), 3);
    assert_eq!(lost.in_flight_for(stranger), 0);
    let up = sw.counters(PortId::Uplink).unwrap();
    assert_eq!(up.drops.no_owner, 3);
    assert_eq!(up.stats.rx_dropped, 3);
    // The VF's MAC on another VLAN is not the VF's filter either.
    let out = sw.from_uplink(
        Duration::ZERO,
        &eth(vf_mac(0), HOST, Some((5, 0)), 64, 9),
        &mut sink,
    );
    assert_eq!(out, Outcome::Dropped(DropReason::NoOwner));
}

#[test]
fn no_owner_tracking_is_bounded() {
    let mut sw = switch(0);
    let mut sink = Sink::default();
    for i in 0..u32::try_from(MAX_TRACKED_MACS + 10).unwrap() {
        let b = i.to_be_bytes();
        let dst = MacAddr([0x02, 0, b[0], b[1], b[2], b[3]]);
        sw.from_uplink(Duration::ZERO, &eth(dst, HOST, None, 64, i), &mut sink);
    }
    let lost = sw.lost_frames();
    assert_eq!(lost.no_owner.len(), MAX_TRACKED_MACS);
    assert_eq!(lost.no_owner_untracked, 10);
}

#[test]
fn broadcast_floods_within_its_vlan_except_the_source() {
    let mut sw = switch(4);
    sw.set_vf_vlan(2, 10, 0, VlanProto::Dot1Q).unwrap();
    // VF 3 joins VLAN 10 itself (no port VLAN).
    sw.vf_request(3, VfRequest::SetVlan { vid: 10, add: true })
        .unwrap();
    let mut sink = Sink::default();
    let bcast = eth(MacAddr::BROADCAST, vf_mac(0), None, 60, 1);
    vf_tx(&mut sw, &mut sink, 0, &bcast);
    // VLAN 0: VFs 1 and 3, the PF, the uplink; not VF 2 (port VLAN 10), not VF 0.
    assert_eq!(
        sink.sorted_ports(),
        vec![
            PortId::Uplink,
            PortId::Default,
            PortId::Vf(1),
            PortId::Vf(3)
        ]
    );
    assert_eq!(sw.counters(PortId::Vf(1)).unwrap().stats.broadcast, 1);

    // VLAN 10 from the uplink: VF 2 (tag stripped) and VF 3 (tag kept), nobody else.
    sink.take();
    let bcast10 = eth(MacAddr::BROADCAST, HOST, Some((10, 0)), 64, 2);
    sw.from_uplink(Duration::ZERO, &bcast10, &mut sink);
    let frames = sink.take();
    let ports: Vec<PortId> = frames.iter().map(|(p, _)| *p).collect();
    assert_eq!(ports, vec![PortId::Vf(2), PortId::Vf(3)]);
    assert_eq!(tag_of(&frames[0].1), None);
    assert_eq!(frames[0].1.len(), 60);
    assert_eq!(tag_of(&frames[1].1), Some((10, 0)));
}

#[test]
fn multicast_goes_to_subscribers_and_the_uplink() {
    let mut sw = switch(3);
    let group = MacAddr([0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb]);
    // VF 1 subscribes through SET_MULTICAST (igbvf's 12-bit hashes).
    sw.vf_request(1, VfRequest::SetMulticast(vec![0x123, group.mc_hash()]))
        .unwrap();
    // VF 2 is trusted and asks for all-multicast.
    sw.set_vf_trust(2, true).unwrap();
    sw.vf_request(2, VfRequest::SetXcast(XcastMode::AllMulti))
        .unwrap();
    let mut sink = Sink::default();
    vf_tx(&mut sw, &mut sink, 0, &eth(group, vf_mac(0), None, 80, 1));
    assert_eq!(
        sink.sorted_ports(),
        vec![
            PortId::Uplink,
            PortId::Default,
            PortId::Vf(1),
            PortId::Vf(2)
        ]
    );
    assert_eq!(sw.counters(PortId::Vf(1)).unwrap().stats.multicast, 1);
    assert_eq!(sw.counters(PortId::Vf(1)).unwrap().stats.broadcast, 0);

    // A group VF 1 did not ask for reaches only the all-multicast VF.
    sink.take();
    let other = MacAddr([0x01, 0x00, 0x5e, 0x00, 0x10, 0x01]);
    assert_ne!(other.mc_hash(), group.mc_hash());
    sw.from_uplink(Duration::ZERO, &eth(other, HOST, None, 80, 2), &mut sink);
    let mut got = sink.ports();
    got.sort();
    assert_eq!(got, vec![PortId::Default, PortId::Vf(2)]);
}

#[test]
fn igbvf_multicast_hash_matches_the_82576() {
    // e1000_hash_mc_addr_vf with 128 MTA registers: (mc[4] >> 4) | (mc[5] << 4), 12 bits.
    let m = MacAddr([0x01, 0x00, 0x5e, 0x7f, 0xab, 0xcd]);
    assert_eq!(m.mc_hash(), 0xcda);
    assert_eq!(MacAddr([1, 0, 0x5e, 0, 0, 1]).mc_hash(), 0x010);
}

#[test]
fn a_vport_without_filters_gets_only_broadcast() {
    let mut sw = Switch::new(SwitchConfig {
        uplink_mbps: 0,
        ..SwitchConfig::default()
    });
    sw.set_num_vfs(1).unwrap();
    sw.create_vport(0).unwrap();
    assert!(!sw.vport_has_filters(VPortId::Vf(0)));
    let mut sink = Sink::default();
    sw.from_uplink(Duration::ZERO, &eth(mac(1), HOST, None, 64, 1), &mut sink);
    sw.from_uplink(
        Duration::ZERO,
        &eth(MacAddr([1, 0, 0x5e, 0, 0, 1]), HOST, None, 64, 2),
        &mut sink,
    );
    assert!(!sink.ports().contains(&PortId::Vf(0)));
    sw.from_uplink(
        Duration::ZERO,
        &eth(MacAddr::BROADCAST, HOST, None, 64, 3),
        &mut sink,
    );
    assert!(sink.ports().contains(&PortId::Vf(0)));
}

#[test]
fn no_buffer_at_the_receiver_is_counted_there() {
    let mut sw = switch(2);
    let mut sink = Sink::default();
    sink.full.insert(PortId::Vf(1));
    let out = sw.vf_send(
        Duration::ZERO,
        0,
        &eth(vf_mac(1), vf_mac(0), None, 64, 1),
        &mut sink,
    );
    assert_eq!(out, TxVerdict::Sent { copies: 0 });
    let c = sw.counters(PortId::Vf(1)).unwrap();
    assert_eq!(
        (c.stats.rx_dropped, c.drops.no_buffer, c.stats.rx_packets),
        (1, 1, 0)
    );
    // The sender's frame was sent all the same.
    assert_eq!(sw.counters(PortId::Vf(0)).unwrap().stats.tx_packets, 1);
}

#[test]
fn runts_are_dropped_as_malformed() {
    let mut sw = switch(1);
    let mut sink = Sink::default();
    assert_eq!(
        sw.from_uplink(Duration::ZERO, &[0u8; 13], &mut sink),
        Outcome::Dropped(DropReason::Malformed)
    );
    assert_eq!(
        sw.vf_send(Duration::ZERO, 0, &[0xffu8; 6], &mut sink),
        TxVerdict::Dropped(DropReason::Malformed)
    );
    // A tag announced without room for it.
    let mut f = eth(vf_mac(0), HOST, None, 14, 0);
    f.truncate(15);
    f[12..14].copy_from_slice(&TPID_8021Q.to_be_bytes());
    assert_eq!(
        sw.from_uplink(Duration::ZERO, &f, &mut sink),
        Outcome::Dropped(DropReason::Malformed)
    );
    assert_eq!(sw.counters(PortId::Uplink).unwrap().drops.malformed, 2);
    assert_eq!(sw.counters(PortId::Vf(0)).unwrap().drops.malformed, 1);
}

#[test]
fn frame_helpers_insert_and_strip_tags() {
    let f = eth(mac(1), mac(2), None, 64, 42);
    let tagged = insert_tag(
        &f,
        VlanTag {
            vid: 100,
            pcp: 3,
            dei: false,
        },
    );
    assert_eq!(tagged.len(), 68);
    assert_eq!(&tagged[12..16], &[0x81, 0x00, 0x60, 0x64]);
    assert_eq!(tag_of(&tagged), Some((100, 3)));
    assert_eq!(seq_of(&tagged), 42);
    assert_eq!(strip_tag(&tagged), f);
    assert_eq!(strip_tag(&f), f);
    assert_eq!("52:54:00:00:00:01".parse::<MacAddr>(), Ok(mac(1)));
    assert!("52:54:00:00:00".parse::<MacAddr>().is_err());
    assert!("52:54:00:00:00:01:02".parse::<MacAddr>().is_err());
    assert!("52:54:00:00:00:0g".parse::<MacAddr>().is_err());
    assert_eq!(mac(0xab).to_string(), "52:54:00:00:00:ab");
}
