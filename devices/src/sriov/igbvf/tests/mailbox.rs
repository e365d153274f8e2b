//! Probe, open, link and the PF agent's answers.

use super::*;
use crate::sriov::igbvf::PfEvent;

#[test]
fn probe_gets_admin_mac_and_open_reports_requests() {
    let mut h = Harness::new(policy_up());
    // Power-on: RSTD is set once, RSTI never.
    assert_eq!(h.rd(STATUS), 0x83);
    assert_eq!(h.probe(), MAC);
    h.open(false);
    assert!(h.link_up());
    let req = h.vf.pf().requests().clone();
    assert!(req.reset_done);
    assert_eq!(req.mac, Some(MAC));
    assert_eq!(
        req.multicast_hashes,
        vec![
            mc_hash(&[0x33, 0x33, 0, 0, 0, 1]),
            mc_hash(&[1, 0, 0x5e, 0, 0, 1])
        ]
    );
    assert_eq!(req.vlans.iter().copied().collect::<Vec<_>>(), vec![0]);
    assert_eq!(req.max_frame, 1522);
    assert!(!req.vlan_strip(h.vf.pf().policy()));
    let events = h.vf.take_pf_events();
    assert!(events.contains(&PfEvent::Reset { mac: Some(MAC) }));
    assert!(events.contains(&PfEvent::MacFiltersCleared));
    assert!(events.contains(&PfEvent::VlanAdded(0)));
    // The registers igbvf programmed read back.
    assert_eq!(h.rd(IVAR_MISC), 0x82);
    assert_eq!(h.rd(EIMS), 7);
    assert_eq!(h.rd(EIAC), 7);
    assert_eq!(h.rd(EIAM), 7);
    assert_eq!(h.rd(EITR0), 488);
    assert_eq!(h.rd(TDLEN), TX_COUNT * 16);
    assert_eq!(h.rd(RDLEN), RX_COUNT * 16);
    assert_eq!(h.rd(RDT), RX_COUNT - 2);
    assert_eq!(h.vf.rx_descriptors_available(), RX_COUNT - 2);
    assert_eq!(h.rd(RXDCTL) & DCTL_ENABLE, DCTL_ENABLE);
}

#[test]
fn reset_without_admin_mac_is_nacked_and_the_vf_picks_its_own() {
    let mut h = Harness::new(PfPolicy {
        admin_mac: None,
        ..policy_up()
    });
    h.wr(EIMC, !0);
    let reply = h.reset_hw();
    assert_eq!(reply, vec![MSG_RESET | MSG_NACK, 0, 0]);
    let own = [0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee];
    let r = h.request(&set_mac_msg(0, &own), 3);
    assert_eq!(r[0], MSG_SET_MAC_ADDR | MSG_ACK | MSG_CTS);
    assert_eq!(h.vf.pf().requests().mac, Some(own));
    // igb hands the VF's own MAC back on the next RESET.
    let reply = h.reset_hw();
    assert_eq!(reply[0], MSG_RESET | MSG_ACK);
    assert_eq!(reply[1], u32::from_le_bytes([2, 0xaa, 0xbb, 0xcc]));
    // A multicast address is not a valid MAC.
    let r = h.request(&set_mac_msg(0, &[1, 2, 3, 4, 5, 6]), 3);
    assert_eq!(r[0], MSG_SET_MAC_ADDR | MSG_NACK | MSG_CTS);
}

#[test]
fn untrusted_vf_cannot_leave_admin_mac_trusted_can() {
    let mut h = Harness::new(policy_up());
    h.probe();
    let other = [0x02, 1, 2, 3, 4, 5];
    let r = h.request(&set_mac_msg(0, &other), 3);
    assert_eq!(r[0], MSG_SET_MAC_ADDR | MSG_NACK | MSG_CTS);
    let r = h.request(&set_mac_msg(MAC_FILTER_ADD, &other), 3);
    assert_eq!(r[0], MSG_SET_MAC_ADDR | (2 << 16) | MSG_NACK | MSG_CTS);
    let r = h.request(&[MSG_SET_PROMISC | PROMISC_MULTICAST], 1);
    assert_eq!(
        r[0],
        MSG_SET_PROMISC | PROMISC_MULTICAST | MSG_NACK | MSG_CTS
    );
    assert_eq!(h.vf.pf().requests().mac, Some(MAC));
    assert!(
        h.vf.take_pf_events()
            .contains(&PfEvent::Refused(MSG_SET_MAC_ADDR | (2 << 16)))
    );

    h.vf.set_policy(PfPolicy {
        trusted: true,
        ..policy_up()
    });
    let r = h.request(&set_mac_msg(0, &other), 3);
    assert_eq!(r[0], MSG_SET_MAC_ADDR | MSG_ACK | MSG_CTS);
    let r = h.request(&set_mac_msg(MAC_FILTER_ADD, &[0x02, 9, 9, 9, 9, 9]), 3);
    assert_eq!(r[0], MSG_SET_MAC_ADDR | (2 << 16) | MSG_ACK | MSG_CTS);
    let r = h.request(&[MSG_SET_PROMISC | PROMISC_MULTICAST], 1);
    assert_eq!(
        r[0],
        MSG_SET_PROMISC | PROMISC_MULTICAST | MSG_ACK | MSG_CTS
    );
    let req = h.vf.pf().requests();
    assert_eq!(req.mac, Some(other));
    assert_eq!(req.mac_filters, vec![[0x02, 9, 9, 9, 9, 9]]);
    assert!(req.promisc_multicast && !req.promisc_unicast);
}

#[test]
fn vlan_refused_under_port_vlan_and_lpe_capped() {
    let mut h = Harness::new(PfPolicy {
        port_vlan: Some(100),
        ..policy_up()
    });
    h.probe();
    let r = h.request(&[MSG_SET_VLAN | (1 << 16), 5], 1);
    assert_eq!(r[0], MSG_SET_VLAN | (1 << 16) | MSG_NACK | MSG_CTS);
    assert!(h.vf.pf().requests().vlans.is_empty());
    assert!(h.vf.pf().requests().vlan_strip(h.vf.pf().policy()));
    let r = h.request(&[MSG_SET_LPE, 20000], 1);
    assert_eq!(r[0], MSG_SET_LPE | MSG_ACK | MSG_CTS);
    assert_eq!(h.vf.pf().requests().max_frame, 9728);

    h.vf.set_policy(policy_up());
    let r = h.request(&[MSG_SET_VLAN | (1 << 16), 5], 1);
    assert_eq!(r[0], MSG_SET_VLAN | (1 << 16) | MSG_ACK | MSG_CTS);
    assert!(h.vf.pf().requests().vlan_strip(h.vf.pf().policy()));
    let r = h.request(&[MSG_SET_VLAN, 5], 1);
    assert_eq!(r[0], MSG_SET_VLAN | MSG_ACK | MSG_CTS);
    assert!(h.vf.pf().requests().vlans.is_empty());
    let events = h.vf.take_pf_events();
    assert!(events.contains(&PfEvent::VlanAdded(5)) && events.contains(&PfEvent::VlanRemoved(5)));
}

#[test]
fn unknown_request_is_nack_cts_and_echoed_replies_are_ignored() {
    let mut h = Harness::new(policy_up());
    h.probe();
    let r = h.request(&[0x0009_0042], 1);
    assert_eq!(r[0], 0x0009_0042 | MSG_NACK | MSG_CTS);
    // A message that already carries ACK is acked but not answered.
    h.write_posted(&[MSG_SET_LPE | MSG_ACK, 1000]);
    assert!(!h.has_msg());
    assert_eq!(h.vf.pf().requests().max_frame, 1522);
}

#[test]
fn requests_before_reset_are_nacked_once_per_two_seconds() {
    let mut h = Harness::new(policy_up());
    h.wr(EIMC, !0);
    let r = h.request(&[MSG_SET_LPE, 1522], 1);
    assert_eq!(r[0], MSG_SET_LPE | MSG_NACK, "NACK without CTS");
    // Within 2 s igb stays silent (the ack comes, the reply does not).
    h.write_posted(&[MSG_SET_LPE, 1522]);
    assert!(!h.has_msg());
    h.advance_us(2_000_000);
    let r = h.request(&[MSG_SET_VLAN | (1 << 16), 0], 1);
    assert_eq!(r[0], MSG_SET_VLAN | (1 << 16) | MSG_NACK);
    assert!(!h.vf.pf().queues_enabled());
    assert!(h.vf.pf().requests().vlans.is_empty());
}

#[test]
fn link_needs_status_and_cts_and_pings_on_change() {
    let mut h = Harness::up(policy_up(), false);
    // Link down: STATUS.LU clears and the mailbox vector fires with a ping.
    h.vf.set_policy(PfPolicy {
        link_up: false,
        ..policy_up()
    });
    assert_eq!(
        h.rd(STATUS),
        0x81,
        "LU (bit 1) clear; FD and 1000 Mb/s stay"
    );
    assert_eq!(h.irqs(), vec![2]);
    assert!(!h.link_up());
    h.wr(EIMS, 4);
    // Link up: 0x20000100 in VMBMEM[0], PFSTS, vector 2.
    h.vf.set_policy(policy_up());
    assert_eq!(h.irqs(), vec![2]);
    assert!(h.has_msg());
    assert_eq!(h.rd(VMBMEM), MSG_PF_CONTROL | MSG_CTS);
    assert!(h.link_up());
}

#[test]
fn ping_waits_while_vf_holds_the_mailbox_or_has_a_reply_to_read() {
    let mut h = Harness::up(policy_up(), false);
    h.vf.set_policy(PfPolicy {
        link_up: false,
        ..policy_up()
    });
    h.read_mbx(1);
    h.wr(EIMS, 4);
    h.irqs();
    // The VF takes the buffer and writes a request: a ping now must not clobber it.
    h.wr(V2PMAILBOX, V2P_VFU);
    h.wr(VMBMEM, MSG_SET_VLAN | (1 << 16));
    h.wr(VMBMEM + 4, 5);
    h.vf.set_policy(policy_up());
    assert_eq!(h.rd(VMBMEM), MSG_SET_VLAN | (1 << 16));
    // REQ drops VFU; the reply is posted; the ping waits for the VF's ACK.
    h.wr(V2PMAILBOX, V2P_REQ);
    assert_eq!(h.rd(VMBMEM) & 0xFF00_FFFF, MSG_SET_VLAN | MSG_ACK | MSG_CTS);
    h.v2p_soft = 0;
    assert_eq!(
        h.read_mbx(1)[0] & 0xFF00_FFFF,
        MSG_SET_VLAN | MSG_ACK | MSG_CTS
    );
    assert_eq!(h.rd(VMBMEM), MSG_PF_CONTROL | MSG_CTS);
    assert!(h.link_up());
}

#[test]
fn ping_replaces_a_reply_igbvf_never_reads() {
    let mut h = Harness::up(policy_up(), false);
    h.wr(EIMS, 4);
    h.irqs();
    // SET_LPE: igbvf waits for PFACK and never reads the reply.
    h.wr(V2PMAILBOX, V2P_VFU);
    h.wr(VMBMEM, MSG_SET_LPE);
    h.wr(VMBMEM + 4, 1522);
    h.wr(V2PMAILBOX, V2P_REQ);
    assert_eq!(h.rd(VMBMEM), MSG_SET_LPE | MSG_ACK | MSG_CTS);
    h.v2p_soft = 0;
    h.irqs();
    h.vf.set_policy(PfPolicy {
        link_up: false,
        ..policy_up()
    });
    assert_eq!(h.rd(VMBMEM), MSG_PF_CONTROL | MSG_CTS, "the ping is posted");
    assert!(!h.link_up());
}

#[test]
fn ctrl_rst_clears_pf_state_until_reset() {
    let mut h = Harness::up(policy_up(), false);
    h.vf.take_pf_events();
    let ctrl = h.rd(CTRL);
    h.wr(CTRL, ctrl | CTRL_RST);
    assert_eq!(h.rd(CTRL) & CTRL_RST, 0, "RST self-clears");
    assert!(!h.vf.pf().queues_enabled());
    assert!(h.vf.pf().requests().vlans.is_empty());
    assert_eq!(h.rd(EIMS), 0);
    assert_eq!(h.rd(RXDCTL), 0);
    assert_eq!(h.rd(TDLEN), 0);
    assert_eq!(h.vf.take_pf_events(), vec![PfEvent::Cleared]);
}

#[test]
fn flr_then_up_without_reset_is_accepted() {
    let mut h = Harness::up(policy_up(), false);
    // igbvf's reset_prepare: down (with RESET).
    h.down();
    h.vf.flr();
    assert!(!h.vf.bus_master());
    assert_eq!(h.rd(V2PMAILBOX), 0, "no RSTD after FLR");
    assert_eq!(h.rd(VMBMEM), 0);
    assert_eq!(h.rd(EIMS), 0);
    assert_eq!(h.rd(VFGPRC), 0);
    h.vf.set_bus_master(true);
    // reset_done: up without RESET; configuration is still accepted with CTS.
    h.open(false);
    assert!(h.link_up());
    assert!(h.vf.pf().queues_enabled());
}

#[test]
fn forget_drops_everything_for_the_next_guest() {
    let mut h = Harness::up(policy_up(), false);
    h.vf.pf_mut().forget();
    let req = h.vf.pf().requests();
    assert!(!req.reset_done);
    assert!(req.vlans.is_empty() && req.multicast_hashes.is_empty());
    assert_eq!(req.mac, Some(MAC));
}
