//! Tests of the NIC switch, driven the way nicd's glue drives it: frames pushed from the
//! uplink, the PF and guests' synthetic ports, VF rings drained by `transmit`, and
//! management calls as `ip link set` makes them.

mod failover;
mod forwarding;
mod iplink;
mod pcap;
mod policy;
mod random;
mod rate;

use std::collections::BTreeSet;
use std::time::Duration;

use super::*;

/// A receiver side that records every frame, and refuses frames for the ports in
/// `full` (no buffer).
#[derive(Debug, Default)]
pub(super) struct Sink {
    pub frames: Vec<(PortId, Vec<u8>)>,
    pub full: BTreeSet<PortId>,
}

impl FrameSink for Sink {
    fn deliver(&mut self, port: PortId, frame: &[u8]) -> Delivery {
        if self.full.contains(&port) {
            return Delivery::NoBuffer;
        }
        self.frames.push((port, frame.to_vec()));
        Delivery::Accepted
    }
}

impl Sink {
    /// The ports that got a frame, in order.
    pub fn ports(&self) -> Vec<PortId> {
        self.frames.iter().map(|(p, _)| *p).collect()
    }

    /// The ports that got a frame, sorted.
    pub fn sorted_ports(&self) -> Vec<PortId> {
        let mut ports = self.ports();
        ports.sort();
        ports
    }

    /// Takes the recorded frames.
    pub fn take(&mut self) -> Vec<(PortId, Vec<u8>)> {
        std::mem::take(&mut self.frames)
    }
}

/// 52:54:00:00:00:nn.
pub(super) fn mac(n: u8) -> MacAddr {
    MacAddr([0x52, 0x54, 0, 0, 0, n])
}

/// The admin MAC the helpers give VF `n`.
pub(super) fn vf_mac(n: u16) -> MacAddr {
    mac(0x10 + u8::try_from(n).unwrap())
}

/// A host on the far side of the uplink.
pub(super) const HOST: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x99]);

/// An IPv4 frame of `len` bytes (without FCS), optionally 802.1Q-tagged (vid, pcp), its
/// payload starting with `seq`.
pub(super) fn eth(
    dst: MacAddr,
    src: MacAddr,
    tag: Option<(u16, u8)>,
    len: usize,
    seq: u32,
) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&src.0);
    if let Some((vid, pcp)) = tag {
        f.extend_from_slice(&TPID_8021Q.to_be_bytes());
        f.extend_from_slice(&((u16::from(pcp) << 13) | vid).to_be_bytes());
    }
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.extend_from_slice(&seq.to_be_bytes());
    let mut i = 0u8;
    while f.len() < len {
        f.push(i);
        i = i.wrapping_add(1);
    }
    f
}

/// The sequence number `eth` put in a frame (tagged or not).
pub(super) fn seq_of(frame: &[u8]) -> u32 {
    let at = match EthHeader::parse(frame).and_then(|h| h.tag) {
        Some(_) => 18,
        None => 14,
    };
    u32::from_be_bytes([frame[at], frame[at + 1], frame[at + 2], frame[at + 3]])
}

/// The VLAN tag of a frame, as (vid, pcp).
pub(super) fn tag_of(frame: &[u8]) -> Option<(u16, u8)> {
    EthHeader::parse(frame)
        .and_then(|h| h.tag)
        .map(|t| (t.vid, t.pcp))
}

/// Time zero plus `us` microseconds.
pub(super) fn at_us(us: u64) -> Duration {
    Duration::from_micros(us)
}

/// A switch with `n` VFs, each with its VPort and admin MAC `vf_mac(i)`.
pub(super) fn switch_with(n: u16, cfg: SwitchConfig) -> Switch {
    let mut sw = Switch::new(SwitchConfig {
        total_vfs: n.max(cfg.total_vfs),
        ..cfg
    });
    sw.set_num_vfs(n).unwrap();
    for vf in 0..n {
        sw.set_vf_mac(vf, vf_mac(vf)).unwrap();
        sw.create_vport(vf).unwrap();
    }
    sw
}

/// `switch_with` on an unlimited uplink (no wire contention).
pub(super) fn switch(n: u16) -> Switch {
    switch_with(
        n,
        SwitchConfig {
            uplink_mbps: 0,
            ..SwitchConfig::default()
        },
    )
}

/// VF `vf` sends `frame` now; panics unless it was taken and forwarded.
pub(super) fn vf_tx(sw: &mut Switch, sink: &mut Sink, vf: u16, frame: &[u8]) -> usize {
    match sw.vf_send(Duration::ZERO, vf, frame, sink) {
        TxVerdict::Sent { copies } => copies,
        other => panic!("VF {vf} frame not sent: {other:?}"),
    }
}
