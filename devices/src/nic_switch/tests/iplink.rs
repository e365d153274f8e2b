//! The `ip -s link show` text and `ip -j` JSON of VF lines.

use super::*;

#[test]
fn text_matches_iproute2() {
    let mut sw = switch_with(2, SwitchConfig::default());
    sw.set_vf_vlan(0, 100, 3, VlanProto::Dot1Q).unwrap();
    sw.set_vf_rate(0, 0, 1000, Duration::ZERO).unwrap();
    let mut info = sw.vf_info(0).unwrap();
    info.stats = VfStats {
        rx_bytes: 1_234_567,
        rx_packets: 9876,
        multicast: 12,
        broadcast: 34,
        rx_dropped: 0,
        tx_bytes: 765_432,
        tx_packets: 5432,
        tx_dropped: 0,
    };
    // nic-switch.md's example, with the trailing spaces iproute2 prints.
    assert_eq!(
        vf_text(&info, true),
        "    vf 0     link/ether 52:54:00:00:00:10 brd ff:ff:ff:ff:ff:ff, vlan 100, qos 3, \
         tx rate 1000 (Mbps), max_tx_rate 1000Mbps, spoof checking on, link-state auto, trust off\n\
         \x20   RX: bytes  packets  mcast   bcast   dropped \n\
         \x20      1234567     9876      12      34        0 \n\
         \x20   TX: bytes  packets   dropped \n\
         \x20       765432     5432        0 "
    );
    // Defaults: no vlan, qos or rates printed; link-state and trust always.
    sw.set_vf_spoofchk(1, false).unwrap();
    sw.set_vf_trust(1, true).unwrap();
    sw.set_vf_link_state(1, LinkState::Disable).unwrap();
    sw.set_vf_rate(1, 50, 0, Duration::ZERO).unwrap();
    assert_eq!(
        vf_text(&sw.vf_info(1).unwrap(), false),
        "    vf 1     link/ether 52:54:00:00:00:11 brd ff:ff:ff:ff:ff:ff, min_tx_rate 50Mbps, \
         spoof checking off, link-state disable, trust on"
    );
}

#[test]
fn text_stats_come_from_the_counters() {
    let mut sw = switch(2);
    let mut sink = Sink::default();
    vf_tx(
        &mut sw,
        &mut sink,
        0,
        &eth(vf_mac(1), vf_mac(0), None, 100, 1),
    );
    vf_tx(
        &mut sw,
        &mut sink,
        0,
        &eth(MacAddr::BROADCAST, vf_mac(0), None, 60, 2),
    );
    sw.vf_send(
        Duration::ZERO,
        1,
        &eth(HOST, mac(0x66), None, 64, 3),
        &mut sink,
    );
    let text = vf_text(&sw.vf_info(1).unwrap(), true);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[2],
        "           160        2       0       1        0 "
    );
    assert_eq!(lines[4], "             0        0        1 ");
}

#[test]
fn json_matches_ip_j() {
    let mut sw = switch_with(2, SwitchConfig::default());
    sw.set_vf_vlan(0, 100, 3, VlanProto::Dot1Q).unwrap();
    sw.set_vf_rate(0, 100, 1000, Duration::ZERO).unwrap();
    let mut info = sw.vf_info(0).unwrap();
    info.stats.rx_bytes = 10;
    info.stats.tx_packets = 2;
    let json = serde_json::to_string(&vf_json(&info, true)).unwrap();
    assert_eq!(
        json,
        r#"{"vf":0,"link_type":"ether","address":"52:54:00:00:00:10","broadcast":"ff:ff:ff:ff:ff:ff","vlan_list":[{"vlan":100,"qos":3}],"tx_rate":1000,"rate":{"max_tx":1000,"min_tx":100},"spoofchk":true,"link_state":"auto","trust":false,"stats":{"rx":{"bytes":10,"packets":0,"multicast":0,"broadcast":0,"dropped":0},"tx":{"tx_bytes":0,"tx_packets":2,"dropped":0}}}"#
    );
    // Without -s, no stats; without a port VLAN, one empty vlan_list entry; no tx_rate.
    let json = serde_json::to_string(&vf_json(&sw.vf_info(1).unwrap(), false)).unwrap();
    assert_eq!(
        json,
        r#"{"vf":1,"link_type":"ether","address":"52:54:00:00:00:11","broadcast":"ff:ff:ff:ff:ff:ff","vlan_list":[{}],"rate":{"max_tx":0,"min_tx":0},"spoofchk":true,"link_state":"auto","trust":false}"#
    );
}

#[test]
fn info_of_a_missing_vf_is_einval() {
    let sw = switch(1);
    assert_eq!(sw.vf_info(1).unwrap_err().errno(), libc::EINVAL);
}
