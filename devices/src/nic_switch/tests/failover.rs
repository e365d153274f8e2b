//! Synthetic ports and the failover step: a guest's MAC/VLAN filters moving between the
//! default VPort and its VF's VPort, in the seed's order.

use super::*;

/// A guest with MAC `vf_mac(0)` whose VF 0 is attached: filters on VF 0's VPort.
fn guest_on_vf() -> (Switch, SyntheticId) {
    let mut sw = Switch::new(SwitchConfig {
        uplink_mbps: 0,
        ..SwitchConfig::default()
    });
    sw.set_num_vfs(2).unwrap();
    // The guest boots on its synthetic path.
    let g = sw.add_synthetic(vf_mac(0), 0).unwrap();
    assert!(sw.synthetic_active(g));
    // Bring-up: admin MAC, VPort, then move the guest's filters to the VF's VPort.
    sw.set_vf_mac(0, vf_mac(0)).unwrap();
    sw.create_vport(0).unwrap();
    assert_eq!(
        sw.filter(FilterKey::new(vf_mac(0), 0)).unwrap().owner,
        Some(VPortId::Default),
        "a new VPort takes no guest filter by itself"
    );
    sw.move_guest_filters(g, VPortId::Vf(0)).unwrap();
    assert!(!sw.synthetic_active(g));
    (sw, g)
}

#[test]
fn filter_move_during_traffic_loses_nothing() {
    let (mut sw, g) = guest_on_vf();
    let mut sink = Sink::default();
    let guest = vf_mac(0);
    for seq in 0..1000u32 {
        if seq == 500 {
            // Failover, step 1: the filters go back to the default VPort.
            sw.move_guest_filters(g, VPortId::Default).unwrap();
        }
        let out = sw.from_uplink(
            at_us(u64::from(seq)),
            &eth(guest, HOST, None, 128, seq),
            &mut sink,
        );
        assert_eq!(out, Outcome::Forwarded { copies: 1 }, "frame {seq}");
    }
    let frames = sink.take();
    assert_eq!(frames.len(), 1000);
    for (i, (port, f)) in frames.iter().enumerate() {
        let expect = if i < 500 {
            PortId::Vf(0)
        } else {
            PortId::Synthetic(g)
        };
        assert_eq!((*port, seq_of(f)), (expect, u32::try_from(i).unwrap()));
    }
    assert_eq!(sw.lost_frames().in_flight_for(guest), 0);
    assert_eq!(sw.lost_frames().no_owner_for(guest), 0);
    assert_eq!(sw.counters(PortId::Vf(0)).unwrap().stats.rx_packets, 500);
    assert_eq!(
        sw.counters(PortId::Synthetic(g)).unwrap().stats.rx_packets,
        500
    );

    // The rest of the seed's order: delete the VPort (nothing left on it), free the VF.
    sw.delete_vport(0).unwrap();
    sw.delete_vport(1).unwrap_err();
    sw.set_num_vfs(0).unwrap();
    assert!(sw.synthetic_active(g));
}

#[test]
fn failover_and_back_with_traffic_both_ways() {
    let (mut sw, g) = guest_on_vf();
    let mut sink = Sink::default();
    let guest = vf_mac(0);
    // The guest talks through its VF: VF 0 to VF 1's peer (the uplink).
    vf_tx(&mut sw, &mut sink, 0, &eth(HOST, guest, None, 64, 1));
    // Failover; the guest now sends through its synthetic path.
    sw.move_guest_filters(g, VPortId::Default).unwrap();
    let out = sw
        .from_synthetic(Duration::ZERO, g, &eth(HOST, guest, None, 64, 2), &mut sink)
        .unwrap();
    assert_eq!(out, Outcome::Forwarded { copies: 1 });
    // A frame from a VF to the guest now reaches the synthetic port.
    sw.set_vf_mac(1, vf_mac(1)).unwrap();
    sw.create_vport(1).unwrap();
    vf_tx(&mut sw, &mut sink, 1, &eth(guest, vf_mac(1), None, 64, 3));
    assert_eq!(
        sink.ports(),
        vec![PortId::Uplink, PortId::Uplink, PortId::Synthetic(g)]
    );
    // And back to the VF (hot-add after migration).
    sw.move_guest_filters(g, VPortId::Vf(0)).unwrap();
    sink.take();
    vf_tx(&mut sw, &mut sink, 1, &eth(guest, vf_mac(1), None, 64, 4));
    assert_eq!(sink.ports(), vec![PortId::Vf(0)]);
}

#[test]
fn frames_for_filters_in_flight_are_counted_per_mac() {
    let (mut sw, g) = guest_on_vf();
    let mut sink = Sink::default();
    let guest = vf_mac(0);
    // A move done as two OIDs: delete on the VF's VPort, set on the default one.
    sw.release_guest_filters(g).unwrap();
    assert_eq!(sw.filter(FilterKey::new(guest, 0)).unwrap().owner, None);
    for seq in 0..5 {
        let out = sw.from_uplink(Duration::ZERO, &eth(guest, HOST, None, 64, seq), &mut sink);
        assert_eq!(out, Outcome::Dropped(DropReason::InFlight));
    }
    // From inside the adapter too: the MAC is local, so the frame does not leak out.
    assert_eq!(
        sw.vf_send(
            Duration::ZERO,
            1,
            &eth(guest, vf_mac(1), None, 64, 9),
            &mut sink
        ),
        TxVerdict::Dropped(DropReason::LinkDown),
        "VF 1 has no VPort yet"
    );
    sw.set_vf_mac(1, vf_mac(1)).unwrap();
    sw.create_vport(1).unwrap();
    assert_eq!(
        sw.vf_send(
            Duration::ZERO,
            1,
            &eth(guest, vf_mac(1), None, 64, 9),
            &mut sink
        ),
        TxVerdict::Dropped(DropReason::InFlight)
    );
    sw.move_guest_filters(g, VPortId::Default).unwrap();
    sw.from_uplink(Duration::ZERO, &eth(guest, HOST, None, 64, 6), &mut sink);
    assert_eq!(sink.ports(), vec![PortId::Synthetic(g)]);
    let lost = sw.lost_frames();
    assert_eq!(lost.in_flight_for(guest), 6);
    assert_eq!(lost.no_owner_for(guest), 0);
    assert_eq!(sw.counters(PortId::Uplink).unwrap().drops.in_flight, 5);
}

#[test]
fn surprise_removal_leaves_the_guest_filters_in_flight() {
    let (mut sw, g) = guest_on_vf();
    let mut sink = Sink::default();
    let change = sw.delete_vport(0).unwrap();
    assert_eq!(change, Some(LinkChange { vf: 0, up: false }));
    sw.from_uplink(
        Duration::ZERO,
        &eth(vf_mac(0), HOST, None, 64, 1),
        &mut sink,
    );
    assert!(sink.frames.is_empty());
    assert_eq!(sw.lost_frames().in_flight_for(vf_mac(0)), 1);
    // The VF's VPort is gone: the filters can only go to the default VPort now.
    sw.move_guest_filters(g, VPortId::Vf(0)).unwrap_err();
    sw.move_guest_filters(g, VPortId::Default).unwrap();
    sw.from_uplink(
        Duration::ZERO,
        &eth(vf_mac(0), HOST, None, 64, 2),
        &mut sink,
    );
    assert_eq!(sink.ports(), vec![PortId::Synthetic(g)]);
}

#[test]
fn numvfs_zero_waits_for_the_vports() {
    let (mut sw, _g) = guest_on_vf();
    let err = sw.set_num_vfs(0).unwrap_err();
    assert!(matches!(err, NicSwitchError::VportInUse { vf: 0 }));
    assert_eq!(err.errno(), libc::EBUSY);
}

#[test]
fn synthetic_access_vlan_and_spoofing() {
    let mut sw = switch(1);
    let gmac = mac(0x42);
    let g = sw.add_synthetic(gmac, 20).unwrap();
    let mut sink = Sink::default();
    // From the wire on VLAN 20: stripped for the guest.
    sw.from_uplink(
        Duration::ZERO,
        &eth(gmac, HOST, Some((20, 0)), 68, 1),
        &mut sink,
    );
    let frames = sink.take();
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].0, PortId::Synthetic(g));
    assert_eq!(tag_of(&frames[0].1), None);
    assert_eq!(frames[0].1.len(), 64);
    // Untagged for the guest's MAC: not its filter.
    assert_eq!(
        sw.from_uplink(Duration::ZERO, &eth(gmac, HOST, None, 64, 2), &mut sink),
        Outcome::Dropped(DropReason::NoOwner)
    );
    // From the guest: tagged with 20 on the wire.
    sw.from_synthetic(Duration::ZERO, g, &eth(HOST, gmac, None, 64, 3), &mut sink)
        .unwrap();
    let frames = sink.take();
    assert_eq!(frames[0].0, PortId::Uplink);
    assert_eq!(tag_of(&frames[0].1), Some((20, 0)));
    // Another source MAC, or a tag of its own: dropped.
    let out = sw
        .from_synthetic(
            Duration::ZERO,
            g,
            &eth(HOST, mac(0x43), None, 64, 4),
            &mut sink,
        )
        .unwrap();
    assert_eq!(out, Outcome::Dropped(DropReason::Spoofed));
    let out = sw
        .from_synthetic(
            Duration::ZERO,
            g,
            &eth(HOST, gmac, Some((7, 0)), 64, 5),
            &mut sink,
        )
        .unwrap();
    assert_eq!(out, Outcome::Dropped(DropReason::Vlan));
    let c = sw.counters(PortId::Synthetic(g)).unwrap();
    assert_eq!(
        (c.drops.spoofed, c.drops.vlan, c.stats.tx_dropped),
        (1, 1, 2)
    );
    // Broadcast on VLAN 20 reaches it, VLAN 0 does not.
    sw.from_uplink(
        Duration::ZERO,
        &eth(MacAddr::BROADCAST, HOST, None, 64, 6),
        &mut sink,
    );
    assert!(!sink.ports().contains(&PortId::Synthetic(g)));
    sw.from_uplink(
        Duration::ZERO,
        &eth(MacAddr::BROADCAST, HOST, Some((20, 0)), 68, 7),
        &mut sink,
    );
    assert_eq!(sink.ports().last(), Some(&PortId::Synthetic(g)));
    sw.from_synthetic(
        Duration::ZERO,
        SyntheticId(99),
        &eth(HOST, gmac, None, 64, 8),
        &mut sink,
    )
    .unwrap_err();
}

#[test]
fn broadcast_reaches_the_guest_once_on_its_live_path() {
    let (mut sw, g) = guest_on_vf();
    let mut sink = Sink::default();
    let b = eth(MacAddr::BROADCAST, HOST, None, 64, 1);
    sw.from_uplink(Duration::ZERO, &b, &mut sink);
    let ports = sink.take().into_iter().map(|(p, _)| p).collect::<Vec<_>>();
    assert!(ports.contains(&PortId::Vf(0)));
    assert!(!ports.contains(&PortId::Synthetic(g)));
    sw.move_guest_filters(g, VPortId::Default).unwrap();
    sw.delete_vport(0).unwrap();
    sw.from_uplink(Duration::ZERO, &b, &mut sink);
    let ports = sink.take().into_iter().map(|(p, _)| p).collect::<Vec<_>>();
    assert_eq!(ports, vec![PortId::Default, PortId::Synthetic(g)]);
}

#[test]
fn synthetic_registration_errors() {
    let mut sw = switch(1);
    let g = sw.add_synthetic(mac(0x42), 0).unwrap();
    let e = sw.add_synthetic(mac(0x42), 0).unwrap_err();
    assert_eq!(e.errno(), libc::EADDRINUSE);
    assert_eq!(
        sw.add_synthetic(MacAddr([1, 0, 0, 0, 0, 1]), 0)
            .unwrap_err()
            .errno(),
        libc::EINVAL
    );
    assert_eq!(
        sw.add_synthetic(mac(0x43), 4096).unwrap_err().errno(),
        libc::EINVAL
    );
    sw.remove_synthetic(g).unwrap();
    assert_eq!(sw.remove_synthetic(g).unwrap_err().errno(), libc::ENOENT);
    assert!(sw.filter(FilterKey::new(mac(0x42), 0)).is_none());
    // A guest whose MAC a VF already holds takes the filter over where it is.
    let g = sw.add_synthetic(vf_mac(0), 0).unwrap();
    let e = sw.filter(FilterKey::new(vf_mac(0), 0)).unwrap();
    assert_eq!((e.owner, e.guest), (Some(VPortId::Vf(0)), Some(g)));
    sw.remove_synthetic(g).unwrap();
    let e = sw.filter(FilterKey::new(vf_mac(0), 0)).unwrap();
    assert_eq!((e.owner, e.guest), (Some(VPortId::Vf(0)), None));
}
