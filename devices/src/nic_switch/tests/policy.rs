//! Per-VF policy: port VLAN, spoof check, trust, link state, MTU, and every validation
//! error as iproute2 users see it.

use super::*;

#[test]
fn port_vlan_inserts_with_pcp_strips_and_drops_vf_tags() {
    let mut sw = switch(2);
    sw.set_vf_vlan(0, 100, 3, VlanProto::Dot1Q).unwrap();
    let mut sink = Sink::default();
    // TX: tag 100 with PCP 3 inserted on the way to the uplink.
    let f = eth(HOST, vf_mac(0), None, 64, 1);
    vf_tx(&mut sw, &mut sink, 0, &f);
    let frames = sink.take();
    assert_eq!(frames[0].0, PortId::Uplink);
    assert_eq!(tag_of(&frames[0].1), Some((100, 3)));
    assert_eq!(strip_tag(&frames[0].1), f);
    // RX: only VLAN 100 reaches the VF, stripped.
    let out = sw.from_uplink(
        Duration::ZERO,
        &eth(vf_mac(0), HOST, None, 64, 2),
        &mut sink,
    );
    assert_eq!(out, Outcome::Dropped(DropReason::NoOwner));
    sw.from_uplink(
        Duration::ZERO,
        &eth(vf_mac(0), HOST, Some((100, 5)), 68, 3),
        &mut sink,
    );
    let frames = sink.take();
    assert_eq!(frames.len(), 1);
    assert_eq!((frames[0].0, tag_of(&frames[0].1)), (PortId::Vf(0), None));
    assert_eq!(seq_of(&frames[0].1), 3);
    // A frame the VF tags itself is dropped, whatever the tag (802.1ad too).
    for tag in [Some((100, 0)), Some((7, 0)), Some((0, 0))] {
        let out = sw.vf_send(
            Duration::ZERO,
            0,
            &eth(HOST, vf_mac(0), tag, 64, 4),
            &mut sink,
        );
        assert_eq!(out, TxVerdict::Dropped(DropReason::Vlan));
    }
    let mut qinq = eth(HOST, vf_mac(0), None, 64, 5);
    qinq[12..14].copy_from_slice(&TPID_8021AD.to_be_bytes());
    assert_eq!(
        sw.vf_send(Duration::ZERO, 0, &qinq, &mut sink),
        TxVerdict::Dropped(DropReason::Vlan)
    );
    let c = sw.counters(PortId::Vf(0)).unwrap();
    assert_eq!((c.drops.vlan, c.stats.tx_dropped), (4, 4));
    // The VF's own VLAN requests are refused.
    let e = sw
        .vf_request(0, VfRequest::SetVlan { vid: 5, add: true })
        .unwrap_err();
    assert!(matches!(e, NicSwitchError::PortVlanSet(0)));
    // VF to VF across VLANs does not happen: VF 1 (VLAN 0) cannot reach VF 0.
    let out = sw.vf_send(
        Duration::ZERO,
        1,
        &eth(vf_mac(0), vf_mac(1), None, 64, 6),
        &mut sink,
    );
    assert_eq!(out, TxVerdict::Sent { copies: 1 });
    assert_eq!(sink.take()[0].0, PortId::Uplink);
    // vlan 0 removes it.
    sw.set_vf_vlan(0, 0, 0, VlanProto::Dot1Q).unwrap();
    vf_tx(&mut sw, &mut sink, 0, &f);
    assert_eq!(tag_of(&sink.take()[0].1), None);
}

#[test]
fn port_vlan_between_vfs_of_the_same_vlan() {
    let mut sw = switch(2);
    sw.set_vf_vlan(0, 30, 1, VlanProto::Dot1Q).unwrap();
    sw.set_vf_vlan(1, 30, 0, VlanProto::Dot1Q).unwrap();
    let mut sink = Sink::default();
    let f = eth(vf_mac(1), vf_mac(0), None, 64, 1);
    vf_tx(&mut sw, &mut sink, 0, &f);
    // Inserted by VF 0's port, stripped by VF 1's: VF 1 sees what VF 0 sent.
    assert_eq!(sink.frames, vec![(PortId::Vf(1), f)]);
}

#[test]
fn vlan_requests_without_a_port_vlan() {
    let mut sw = switch(1);
    let mut sink = Sink::default();
    // Tagged TX on a VLAN the VF has not joined is VLAN spoofing.
    let f = eth(HOST, vf_mac(0), Some((12, 0)), 68, 1);
    assert_eq!(
        sw.vf_send(Duration::ZERO, 0, &f, &mut sink),
        TxVerdict::Dropped(DropReason::Vlan)
    );
    sw.vf_request(0, VfRequest::SetVlan { vid: 12, add: true })
        .unwrap();
    vf_tx(&mut sw, &mut sink, 0, &f);
    // And the VF now receives its MAC on VLAN 12, tag kept (its driver strips).
    sw.from_uplink(
        Duration::ZERO,
        &eth(vf_mac(0), HOST, Some((12, 0)), 68, 2),
        &mut sink,
    );
    let frames = sink.take();
    assert_eq!(frames[1].0, PortId::Vf(0));
    assert_eq!(tag_of(&frames[1].1), Some((12, 0)));
    sw.vf_request(
        0,
        VfRequest::SetVlan {
            vid: 12,
            add: false,
        },
    )
    .unwrap();
    assert_eq!(
        sw.from_uplink(
            Duration::ZERO,
            &eth(vf_mac(0), HOST, Some((12, 0)), 68, 3),
            &mut sink
        ),
        Outcome::Dropped(DropReason::NoOwner)
    );
    // With spoofchk off the tag passes.
    sw.set_vf_spoofchk(0, false).unwrap();
    vf_tx(&mut sw, &mut sink, 0, &f);
}

#[test]
fn spoof_check_on_and_off() {
    let mut sw = switch(1);
    assert!(sw.vf_policy(0).unwrap().spoofchk, "default on");
    let mut sink = Sink::default();
    let forged = eth(HOST, mac(0x66), None, 64, 1);
    assert_eq!(
        sw.vf_send(Duration::ZERO, 0, &forged, &mut sink),
        TxVerdict::Dropped(DropReason::Spoofed)
    );
    assert_eq!(
        sw.vf_send(Duration::ZERO, 0, &forged, &mut sink),
        TxVerdict::Dropped(DropReason::Spoofed)
    );
    let c = sw.counters(PortId::Vf(0)).unwrap();
    assert_eq!(
        (c.drops.spoofed, c.stats.tx_dropped, c.stats.tx_packets),
        (2, 2, 0)
    );
    assert!(sink.frames.is_empty());
    sw.set_vf_spoofchk(0, false).unwrap();
    vf_tx(&mut sw, &mut sink, 0, &forged);
    assert_eq!(sink.ports(), vec![PortId::Uplink]);
}

#[test]
fn untrusted_vfs_are_refused_what_needs_trust() {
    let mut sw = switch(1);
    assert!(!sw.vf_policy(0).unwrap().trust, "default off");
    let refused = |sw: &Switch, req: VfRequest, action: TrustedAction| {
        let e = sw.check_vf_request(0, &req).unwrap_err();
        assert!(
            matches!(e, NicSwitchError::NotTrusted { vf: 0, action: a } if a == action),
            "{req:?}: {e}"
        );
        assert_eq!(e.errno(), libc::EPERM);
    };
    refused(&sw, VfRequest::SetMac(mac(0x70)), TrustedAction::ChangeMac);
    refused(
        &sw,
        VfRequest::AddUnicast(mac(0x71)),
        TrustedAction::AddUnicastFilter,
    );
    refused(
        &sw,
        VfRequest::SetXcast(XcastMode::AllMulti),
        TrustedAction::AllMulticast,
    );
    refused(
        &sw,
        VfRequest::SetXcast(XcastMode::Promisc),
        TrustedAction::Promiscuous,
    );
    // What needs no trust is granted: its own MAC again, multicast lists, VLANs, LPE.
    for req in [
        VfRequest::SetMac(vf_mac(0)),
        VfRequest::SetMulticast(vec![1, 2, 3]),
        VfRequest::SetXcast(XcastMode::Multi),
        VfRequest::SetVlan { vid: 9, add: true },
        VfRequest::SetMaxFrame(9018),
    ] {
        sw.vf_request(0, req).unwrap();
    }
    // Not a station address: refused whatever the trust.
    assert!(matches!(
        sw.check_vf_request(0, &VfRequest::SetMac(MacAddr::ZERO)),
        Err(NicSwitchError::InvalidMac(_))
    ));
    assert!(matches!(
        sw.check_vf_request(0, &VfRequest::SetMac(MacAddr::BROADCAST)),
        Err(NicSwitchError::MulticastMac(_))
    ));
    // A refused request changed nothing.
    assert!(sw.vf_request(0, VfRequest::SetMac(mac(0x70))).is_err());
    assert_eq!(sw.vf_mac(0).unwrap(), vf_mac(0));

    // Trusted: granted; the new MAC passes the spoof check and gets the filter.
    sw.set_vf_trust(0, true).unwrap();
    sw.vf_request(0, VfRequest::SetMac(mac(0x70))).unwrap();
    sw.vf_request(0, VfRequest::AddUnicast(mac(0x71))).unwrap();
    sw.vf_request(0, VfRequest::SetXcast(XcastMode::AllMulti))
        .unwrap();
    // The admin MAC still wins as the VF's MAC; the driver's is extra.
    let mut sink = Sink::default();
    vf_tx(&mut sw, &mut sink, 0, &eth(HOST, mac(0x71), None, 64, 1));
    sw.from_uplink(
        Duration::ZERO,
        &eth(mac(0x71), HOST, None, 64, 2),
        &mut sink,
    );
    assert_eq!(sink.ports(), vec![PortId::Uplink, PortId::Vf(0)]);
    // Revoking trust takes the extras back.
    sw.set_vf_trust(0, false).unwrap();
    assert_eq!(
        sw.from_uplink(
            Duration::ZERO,
            &eth(mac(0x71), HOST, None, 64, 3),
            &mut sink
        ),
        Outcome::Dropped(DropReason::NoOwner)
    );
    assert_eq!(
        sw.vf_send(
            Duration::ZERO,
            0,
            &eth(HOST, mac(0x71), None, 64, 4),
            &mut sink
        ),
        TxVerdict::Dropped(DropReason::Spoofed)
    );
}

#[test]
fn a_vf_without_admin_mac_picks_its_own() {
    let mut sw = Switch::new(SwitchConfig::default());
    sw.set_num_vfs(1).unwrap();
    sw.create_vport(0).unwrap();
    assert_eq!(sw.vf_mac(0).unwrap(), MacAddr::ZERO);
    sw.vf_request(0, VfRequest::SetMac(mac(0x33))).unwrap();
    assert_eq!(sw.vf_mac(0).unwrap(), mac(0x33));
    assert_eq!(
        sw.filter(FilterKey::new(mac(0x33), 0)).unwrap().owner,
        Some(VPortId::Vf(0))
    );
    // Its reset forgets it.
    sw.vf_reset(0).unwrap();
    assert_eq!(sw.vf_mac(0).unwrap(), MacAddr::ZERO);
    assert!(sw.filter(FilterKey::new(mac(0x33), 0)).is_none());
    // The admin MAC replaces the VF's filter at once.
    sw.set_vf_mac(0, mac(0x34)).unwrap();
    assert_eq!(
        sw.vport_filters(VPortId::Vf(0)),
        vec![FilterKey::new(mac(0x34), 0)]
    );
    sw.set_vf_mac(0, mac(0x35)).unwrap();
    assert_eq!(
        sw.vport_filters(VPortId::Vf(0)),
        vec![FilterKey::new(mac(0x35), 0)]
    );
    sw.set_vf_mac(0, MacAddr::ZERO).unwrap();
    assert!(sw.vport_filters(VPortId::Vf(0)).is_empty());
}

#[test]
fn link_state_effects() {
    let mut sw = switch(2);
    let mut sink = Sink::default();
    assert!(sw.vf_link_up(0));
    // disable: link down, traffic dropped both ways and counted.
    assert_eq!(
        sw.set_vf_link_state(0, LinkState::Disable).unwrap(),
        Some(LinkChange { vf: 0, up: false })
    );
    assert!(!sw.vf_link_up(0));
    assert_eq!(
        sw.vf_send(
            Duration::ZERO,
            0,
            &eth(HOST, vf_mac(0), None, 64, 1),
            &mut sink
        ),
        TxVerdict::Dropped(DropReason::LinkDown)
    );
    assert_eq!(
        sw.from_uplink(
            Duration::ZERO,
            &eth(vf_mac(0), HOST, None, 64, 2),
            &mut sink
        ),
        Outcome::Forwarded { copies: 0 }
    );
    let c = sw.counters(PortId::Vf(0)).unwrap();
    assert_eq!(
        (c.stats.tx_dropped, c.stats.rx_dropped, c.drops.link_down),
        (1, 1, 2)
    );
    assert_eq!(sw.set_vf_link_state(0, LinkState::Disable).unwrap(), None);

    // auto follows the uplink; enable does not.
    sw.set_vf_link_state(0, LinkState::Enable).unwrap();
    let changes = sw.set_uplink_up(false);
    assert_eq!(changes, vec![LinkChange { vf: 1, up: false }]);
    assert!(sw.vf_link_up(0));
    assert!(!sw.vf_link_up(1));
    // VF to VF still works between enabled VFs while the uplink is down.
    assert_eq!(
        sw.set_vf_link_state(1, LinkState::Enable).unwrap(),
        Some(LinkChange { vf: 1, up: true })
    );
    vf_tx(
        &mut sw,
        &mut sink,
        0,
        &eth(vf_mac(1), vf_mac(0), None, 64, 3),
    );
    assert_eq!(sink.ports(), vec![PortId::Vf(1)]);
    // Frames for the uplink are dropped there, without backpressure.
    let out = sw.vf_send(
        Duration::ZERO,
        0,
        &eth(HOST, vf_mac(0), None, 64, 4),
        &mut sink,
    );
    assert_eq!(out, TxVerdict::Sent { copies: 0 });
    assert_eq!(sw.counters(PortId::Uplink).unwrap().drops.link_down, 1);
    assert_eq!(
        sw.from_uplink(
            Duration::ZERO,
            &eth(vf_mac(0), HOST, None, 64, 5),
            &mut sink
        ),
        Outcome::Dropped(DropReason::LinkDown)
    );
    // Back in auto, the VF's link follows the uplink coming back.
    sw.set_vf_link_state(1, LinkState::Auto).unwrap();
    assert_eq!(sw.set_uplink_up(true), vec![LinkChange { vf: 1, up: true }]);
}

#[test]
fn mtu_drops_both_ways() {
    let mut sw = switch(2);
    let mut sink = Sink::default();
    assert_eq!(sw.vf_max_frame(0).unwrap(), DEFAULT_MAX_FRAME_SIZE);
    // 1514 bytes + FCS = 1518: fits; one more byte does not.
    vf_tx(&mut sw, &mut sink, 0, &eth(HOST, vf_mac(0), None, 1514, 1));
    assert_eq!(
        sw.vf_send(
            Duration::ZERO,
            0,
            &eth(HOST, vf_mac(0), None, 1515, 2),
            &mut sink
        ),
        TxVerdict::Dropped(DropReason::Mtu)
    );
    // A tagged frame may be 4 bytes longer (RLPML counts the VLAN tag).
    sw.vf_request(0, VfRequest::SetVlan { vid: 3, add: true })
        .unwrap();
    vf_tx(
        &mut sw,
        &mut sink,
        0,
        &eth(HOST, vf_mac(0), Some((3, 0)), 1518, 3),
    );
    // RX: VF 1 takes up to its own max frame.
    assert_eq!(
        sw.vf_send(
            Duration::ZERO,
            0,
            &eth(vf_mac(1), vf_mac(0), None, 1514, 4),
            &mut sink
        ),
        TxVerdict::Sent { copies: 1 }
    );
    // SET_LPE for a 9000 MTU: VF 0 may send jumbo frames, VF 1 still drops them.
    sw.vf_request(0, VfRequest::SetMaxFrame(9018)).unwrap();
    assert_eq!(
        sw.vf_send(
            Duration::ZERO,
            0,
            &eth(vf_mac(1), vf_mac(0), None, 9014, 5),
            &mut sink
        ),
        TxVerdict::Sent { copies: 0 }
    );
    let c1 = sw.counters(PortId::Vf(1)).unwrap();
    assert_eq!((c1.drops.mtu, c1.stats.rx_dropped), (1, 1));
    let c0 = sw.counters(PortId::Vf(0)).unwrap();
    assert_eq!((c0.drops.mtu, c0.stats.tx_packets), (1, 4));
    // SET_LPE out of range is refused (the mailbox agent NACKs).
    for size in [0, 85, 9729, u32::MAX] {
        let e = sw.vf_request(0, VfRequest::SetMaxFrame(size)).unwrap_err();
        assert!(matches!(e, NicSwitchError::MaxFrameOutOfRange(s) if s == size));
    }
    // A reset returns to the default.
    sw.vf_reset(0).unwrap();
    assert_eq!(sw.vf_max_frame(0).unwrap(), DEFAULT_MAX_FRAME_SIZE);
}

#[test]
fn ip_link_validation_errors() {
    let mut sw = switch_with(2, SwitchConfig::default());
    let t = Duration::ZERO;
    let errno = |r: Result<(), NicSwitchError>| r.unwrap_err().errno();
    // vlan > 4095, qos > 7: EINVAL; 802.1ad: EPROTONOSUPPORT.
    assert_eq!(
        errno(sw.set_vf_vlan(0, 4096, 0, VlanProto::Dot1Q)),
        libc::EINVAL
    );
    assert_eq!(
        errno(sw.set_vf_vlan(0, 10, 8, VlanProto::Dot1Q)),
        libc::EINVAL
    );
    assert_eq!(
        errno(sw.set_vf_vlan(0, 10, 0, VlanProto::Dot1Ad)),
        libc::EPROTONOSUPPORT
    );
    // Range checks come before the protocol check, as in rtnetlink.
    assert!(matches!(
        sw.set_vf_vlan(0, 5000, 0, VlanProto::Dot1Ad),
        Err(NicSwitchError::VlanOutOfRange(5000))
    ));
    sw.set_vf_vlan(0, 4095, 7, VlanProto::Dot1Q).unwrap();
    // Multicast MAC: EINVAL (zero clears).
    assert_eq!(
        errno(sw.set_vf_mac(0, MacAddr([0x01, 0, 0x5e, 0, 0, 1]))),
        libc::EINVAL
    );
    assert_eq!(errno(sw.set_vf_mac(0, MacAddr::BROADCAST)), libc::EINVAL);
    sw.set_vf_mac(0, MacAddr::ZERO).unwrap();
    // max < min: EINVAL; max 0 means no max.
    assert!(matches!(
        sw.set_vf_rate(0, 200, 100, t),
        Err(NicSwitchError::MaxBelowMin { max: 100, min: 200 })
    ));
    sw.set_vf_rate(0, 200, 0, t).unwrap();
    sw.set_vf_rate(0, 200, 200, t).unwrap();
    // Above the uplink, or guarantees over it: EINVAL.
    assert_eq!(errno(sw.set_vf_rate(0, 0, 1001, t)), libc::EINVAL);
    assert!(matches!(
        sw.set_vf_rate(1, 900, 0, t),
        Err(NicSwitchError::MinRatesOversubscribed {
            total: 1100,
            link: 1000
        })
    ));
    // The legacy `rate` keeps min: 100 < 200 is EINVAL.
    assert_eq!(errno(sw.set_vf_tx_rate(0, 100, t)), libc::EINVAL);
    sw.set_vf_tx_rate(0, 300, t).unwrap();
    assert_eq!(
        (
            sw.vf_policy(0).unwrap().min_tx_rate,
            sw.vf_policy(0).unwrap().max_tx_rate
        ),
        (200, 300)
    );
    // A VF that does not exist: EINVAL, as igb says.
    assert_eq!(errno(sw.set_vf_spoofchk(2, false)), libc::EINVAL);
    assert_eq!(errno(sw.set_vf_trust(7, true)), libc::EINVAL);
    assert_eq!(
        sw.set_vf_link_state(9, LinkState::Auto)
            .unwrap_err()
            .errno(),
        libc::EINVAL
    );
    // NumVFs: over TotalVFs ERANGE, N to M without 0 EBUSY; VPorts twice EEXIST.
    assert_eq!(errno(sw.set_num_vfs(8)), libc::ERANGE);
    assert_eq!(errno(sw.set_num_vfs(1)), libc::EBUSY);
    assert_eq!(sw.create_vport(0).unwrap_err().errno(), libc::EEXIST);
    // The messages say what was wrong.
    assert_eq!(
        sw.set_vf_vlan(0, 4096, 0, VlanProto::Dot1Q)
            .unwrap_err()
            .to_string(),
        "VLAN ID 4096 out of range (0-4095)"
    );
    assert_eq!(
        sw.set_vf_rate(0, 20, 10, t).unwrap_err().to_string(),
        "max_tx_rate 10 Mbps is below min_tx_rate 20 Mbps"
    );
}

#[test]
fn numvfs_cycle_resets_policies() {
    let mut sw = switch(2);
    sw.set_vf_trust(1, true).unwrap();
    sw.delete_vport(0).unwrap();
    sw.delete_vport(1).unwrap();
    sw.set_num_vfs(0).unwrap();
    assert!(sw.filters().is_empty());
    sw.set_num_vfs(3).unwrap();
    assert_eq!(sw.num_vfs(), 3);
    assert_eq!(*sw.vf_policy(1).unwrap(), VfPolicy::default());
    assert!(!sw.vf_link_up(0), "no VPort yet");
}
