//! virtio-net through its worker, with a seqpacket peer standing for the other end.
#![allow(clippy::cast_possible_truncation)] // test data

use super::*;
use crate::GuestMemory;
use crate::virtio::test_utils::TestRing;
use crate::virtio::{ActivateContext, VirtioInterrupt};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::Duration;
use vm_memory::{Bytes, GuestAddress};

#[derive(Debug)]
struct ChannelIrq(Mutex<Sender<u16>>);

impl VirtioInterrupt for ChannelIrq {
    fn signal_queue(&self, queue: u16) {
        let _ = self.0.lock().unwrap().send(queue);
    }
    fn signal_config(&self) {}
}

struct Setup {
    net: VirtioNet,
    mem: GuestMemory,
    rx: TestRing,
    tx: TestRing,
    peer: UnixStream,
    irqs: Receiver<u16>,
}

const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

struct Device {
    net: VirtioNet,
    mem: GuestMemory,
    rx: TestRing,
    tx: TestRing,
    irqs: Receiver<u16>,
}

/// A device on `backend`, activated with `features` accepted.
fn activate(backend: Arc<dyn NetBackend>, features: u64) -> Device {
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
    let mut net = VirtioNet::new(MAC, backend).unwrap();
    let rx = TestRing::new(&mem, 0x10000, 16);
    let tx = TestRing::new(&mem, 0x20000, 16);
    let (s, irqs) = channel();
    net.activate(ActivateContext {
        mem: crate::virtio::dma::plain(mem.clone()),
        queues: vec![rx.queue(), tx.queue()],
        interrupt: Arc::new(ChannelIrq(Mutex::new(s))),
        features,
    })
    .unwrap();
    Device {
        net,
        mem,
        rx,
        tx,
        irqs,
    }
}

fn seqpacket_backend() -> (Arc<dyn NetBackend>, UnixStream) {
    let (ours, peer) = crate::seqpacket::SeqpacketSocket::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    // The peer reads and writes whole messages through the stream API, with a timeout.
    let peer = UnixStream::from(std::os::fd::OwnedFd::from(peer));
    peer.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    (Arc::new(SeqpacketBackend::from_socket(ours)), peer)
}

fn setup() -> Setup {
    let (backend, peer) = seqpacket_backend();
    let d = activate(
        backend,
        F_MAC | F_MRG_RXBUF | crate::virtio::features::VERSION_1,
    );
    Setup {
        net: d.net,
        mem: d.mem,
        rx: d.rx,
        tx: d.tx,
        peer,
        irqs: d.irqs,
    }
}

fn wait_irq(irqs: &Receiver<u16>, queue: u16) {
    loop {
        let q = irqs
            .recv_timeout(Duration::from_secs(10))
            .expect("interrupt");
        if q == queue {
            return;
        }
    }
}

#[test]
fn config_space() {
    let Setup { net, .. } = setup();
    let mut b = [0u8; 8];
    net.read_config(0, &mut b);
    assert_eq!(&b[..6], &MAC);
    assert_eq!(u16::from_le_bytes([b[6], b[7]]), 1, "link up");
    assert_eq!(
        net.features() & (F_MAC | F_STATUS | F_MRG_RXBUF),
        F_MAC | F_STATUS | F_MRG_RXBUF
    );
    assert_eq!(net.features() & F_STANDBY, 0, "not a standby unless asked");
    let (backend, _peer) = seqpacket_backend();
    let standby = VirtioNet::new(MAC, backend).unwrap().with_standby();
    assert_eq!(
        standby.features() & F_STANDBY,
        1 << 62,
        "VIRTIO_NET_F_STANDBY"
    );
}

#[test]
fn transmit_strips_the_header() {
    let Setup {
        mut net,
        mem,
        mut tx,
        mut peer,
        irqs,
        ..
    } = setup();
    let frame: Vec<u8> = (0..100u8).collect();
    // Header and frame in separate descriptors, as Linux does with sg.
    mem.write_slice(&[0u8; NET_HDR_LEN], GuestAddress(0x40000))
        .unwrap();
    mem.write_slice(&frame, GuestAddress(0x41000)).unwrap();
    tx.add_chain(&[(0x40000, NET_HDR_LEN as u32, false), (0x41000, 100, false)]);
    net.queue_notify(TX_QUEUE);
    wait_irq(&irqs, TX_QUEUE);
    let mut got = vec![0u8; 2048];
    let n = peer.read(&mut got).unwrap();
    assert_eq!(&got[..n], &frame[..]);
    assert_eq!(tx.used_idx(), 1);
}

#[test]
fn malformed_tx_chain_is_dropped_not_fatal() {
    let Setup {
        mut net,
        mem,
        mut tx,
        mut peer,
        irqs,
        ..
    } = setup();
    // A device-writable descriptor in a TX chain, and one pointing outside memory.
    tx.add_chain(&[(0x40000, 64, true)]);
    tx.add_chain(&[(0xffff_0000, 64, false)]);
    // A descriptor loop: 5 -> 5.
    tx.write_desc(5, 0x40000, 16, 1, 5);
    tx.publish(5);
    // Then a good frame.
    mem.write_slice(&[0u8; NET_HDR_LEN + 4], GuestAddress(0x42000))
        .unwrap();
    mem.write_slice(b"ping", GuestAddress(0x42000 + NET_HDR_LEN as u64))
        .unwrap();
    tx.add_chain(&[(0x42000, (NET_HDR_LEN + 4) as u32, false)]);
    net.queue_notify(TX_QUEUE);
    wait_irq(&irqs, TX_QUEUE);
    let mut got = [0u8; 64];
    let n = peer.read(&mut got).unwrap();
    assert_eq!(&got[..n], b"ping", "only the good frame goes out");
    assert!(tx.used_idx() >= 3);
}

#[test]
fn receive_fills_mergeable_buffers() {
    let Setup {
        mut net,
        mem,
        mut rx,
        mut peer,
        irqs,
        ..
    } = setup();
    // Small buffers: a 3000-byte frame needs 3 of them.
    for i in 0..4u64 {
        rx.add_chain(&[(0x50000 + i * 0x1000, 1500, true)]);
    }
    net.queue_notify(RX_QUEUE);
    let frame: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
    peer.write_all(&frame).unwrap();
    wait_irq(&irqs, RX_QUEUE);
    assert_eq!(rx.used_idx(), 3);
    let lens: Vec<u32> = (0..3).map(|i| rx.used_elem(i).1).collect();
    assert_eq!(lens, vec![1500, 1500, 12]);
    let hdr: [u8; NET_HDR_LEN] = mem.read_obj(GuestAddress(0x50000)).unwrap();
    assert_eq!(u16::from_le_bytes([hdr[10], hdr[11]]), 3, "num_buffers");
    let mut got = vec![0u8; 4500];
    for i in 0..3u64 {
        mem.read_slice(
            &mut got[i as usize * 1500..(i as usize + 1) * 1500],
            GuestAddress(0x50000 + i * 0x1000),
        )
        .unwrap();
    }
    assert_eq!(&got[NET_HDR_LEN..NET_HDR_LEN + 3000], &frame[..]);
}

#[test]
fn receive_waits_for_buffers() {
    let Setup {
        mut net,
        mem,
        mut rx,
        mut peer,
        irqs,
        ..
    } = setup();
    peer.write_all(b"early frame").unwrap();
    // No buffers yet: nothing delivered. Post one and notify.
    assert!(irqs.recv_timeout(Duration::from_millis(200)).is_err());
    rx.add_chain(&[(0x60000, 2048, true)]);
    net.queue_notify(RX_QUEUE);
    wait_irq(&irqs, RX_QUEUE);
    assert_eq!(rx.used_elem(0).1 as usize, NET_HDR_LEN + 11);
    let mut got = [0u8; 11];
    mem.read_slice(&mut got, GuestAddress(0x60000 + NET_HDR_LEN as u64))
        .unwrap();
    assert_eq!(&got, b"early frame");
}

#[test]
fn reset_stops_and_restarts() {
    let Setup { mut net, mem, .. } = setup();
    net.reset();
    let rx = TestRing::new(&mem, 0x10000, 16);
    let tx = TestRing::new(&mem, 0x20000, 16);
    let (s, _irqs) = channel();
    net.activate(ActivateContext {
        mem: crate::virtio::dma::plain(mem),
        queues: vec![rx.queue(), tx.queue()],
        interrupt: Arc::new(ChannelIrq(Mutex::new(s))),
        features: 0,
    })
    .expect("a reset device starts again with its backend");
}

#[test]
fn transmit_waits_for_a_full_backend() {
    let Setup {
        mut net,
        mem,
        mut tx,
        mut peer,
        irqs,
        ..
    } = setup();
    // 16 frames of 30000 bytes: more than a unix socket buffers, so the backend fills up
    // while the peer is not reading. Nothing may be lost.
    const LEN: usize = 30_000;
    for i in 0..16u64 {
        let base = 0x10_0000 + i * 0x8000;
        mem.write_slice(&[0u8; NET_HDR_LEN], GuestAddress(base))
            .unwrap();
        mem.write_slice(&vec![i as u8; LEN], GuestAddress(base + NET_HDR_LEN as u64))
            .unwrap();
        tx.add_chain(&[(base, (NET_HDR_LEN + LEN) as u32, false)]);
    }
    net.queue_notify(TX_QUEUE);
    let mut got = vec![0u8; 65536];
    for i in 0..16u8 {
        let n = peer.read(&mut got).unwrap();
        assert_eq!(n, LEN, "frame {i}");
        assert!(got[..n].iter().all(|b| *b == i), "frame {i} content");
    }
    // The last chain is returned after its frame went out.
    while tx.used_idx() < 16 {
        wait_irq(&irqs, TX_QUEUE);
    }
}

use super::offload::tests::reference_sum as fold_sum;

const ETH_IP: usize = 14 + 20;

/// An Ethernet/IPv4/UDP frame with a valid IP header checksum; the UDP checksum is
/// partial (the pseudo-header sum, as Linux leaves it for CHECKSUM_PARTIAL).
fn partial_udp_frame(
    macs: ([u8; 6], [u8; 6]),
    ips: ([u8; 4], [u8; 4]),
    ports: (u16, u16),
    payload: &[u8],
) -> Vec<u8> {
    let udp_len = 8 + payload.len() as u16;
    let mut f = Vec::new();
    f.extend_from_slice(&macs.1);
    f.extend_from_slice(&macs.0);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(20 + udp_len).to_be_bytes());
    ip[6] = 0x40; // don't fragment
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&ips.0);
    ip[16..20].copy_from_slice(&ips.1);
    let c = !fold_sum(&[&ip]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&ports.0.to_be_bytes());
    f.extend_from_slice(&ports.1.to_be_bytes());
    f.extend_from_slice(&udp_len.to_be_bytes());
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&ips.0);
    pseudo.extend_from_slice(&ips.1);
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&udp_len.to_be_bytes());
    f.extend_from_slice(&fold_sum(&[&pseudo]).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Whether the UDP checksum of an Ethernet/IPv4/UDP frame verifies.
fn udp_checksum_ok(f: &[u8]) -> bool {
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&f[14 + 12..14 + 20]);
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&((f.len() - ETH_IP) as u16).to_be_bytes());
    fold_sum(&[&pseudo, &f[ETH_IP..]]) == 0xffff
}

fn csum_hdr() -> offload::NetHdr {
    offload::NetHdr {
        flags: offload::HDR_F_NEEDS_CSUM,
        csum_start: ETH_IP as u16,
        csum_offset: 6,
        ..Default::default()
    }
}

/// Queues `frame` behind `hdr` on the TX ring and notifies.
fn transmit(d: &mut Device, hdr: offload::NetHdr, frame: &[u8]) {
    d.mem
        .write_slice(&hdr.to_bytes(), GuestAddress(0x40000))
        .unwrap();
    d.mem.write_slice(frame, GuestAddress(0x41000)).unwrap();
    d.tx.add_chain(&[
        (0x40000, NET_HDR_LEN as u32, false),
        (0x41000, frame.len() as u32, false),
    ]);
    d.net.queue_notify(TX_QUEUE);
}

/// A partial checksum from the guest reaches a bare-frame backend completed; a header
/// asking for segmentation (never offered) drops the frame.
#[test]
fn transmit_completes_partial_checksums_for_bare_backends() {
    let (backend, mut peer) = seqpacket_backend();
    let mut d = activate(backend, F_CSUM | F_MRG_RXBUF);
    let f = partial_udp_frame(
        (MAC, [2, 0, 0, 0, 0, 1]),
        ([10, 0, 2, 15], [10, 0, 2, 2]),
        (5000, 6000),
        b"checksum me, please",
    );
    assert!(!udp_checksum_ok(&f));
    let gso = offload::NetHdr {
        gso_type: 1,
        ..csum_hdr()
    };
    transmit(&mut d, gso, &f);
    wait_irq(&d.irqs, TX_QUEUE);
    transmit(&mut d, csum_hdr(), &f);
    wait_irq(&d.irqs, TX_QUEUE);
    let mut got = vec![0u8; 2048];
    let n = peer.read(&mut got).unwrap();
    assert_eq!(n, f.len(), "only the second frame goes out");
    assert!(udp_checksum_ok(&got[..n]));
    assert_eq!(got[..ETH_IP + 6], f[..ETH_IP + 6]);
    assert_eq!(got[ETH_IP + 8..n], f[ETH_IP + 8..]);
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A TAP named for this test and process, addressed 10.201.N.1/24 with a static neighbour
/// 10.201.N.2 (the device's MAC), IPv6 off so nothing else crosses it.
fn tap_for_test(n: u8) -> Option<(Arc<dyn NetBackend>, String, [u8; 6])> {
    let name = format!("vmmck{n}x{}", std::process::id() % 10_000);
    let tap = match TapBackend::open(&name) {
        Ok(t) => t,
        Err(e) => {
            let reason = format!("cannot create TAP {name} ({e}): needs root and /dev/net/tun");
            if std::env::var_os("VMM_TESTS_STRICT").is_some_and(|v| v == "1") {
                panic!("{reason}");
            }
            println!("SKIP: {reason}");
            return None;
        }
    };
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
    let mac = MAC
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    let host = format!("10.201.{n}.1/24");
    let guest = format!("10.201.{n}.2");
    ip(&["addr", "add", &host, "dev", &name]).unwrap();
    ip(&["link", "set", &name, "up"]).unwrap();
    ip(&["neigh", "replace", &guest, "lladdr", &mac, "dev", &name]).unwrap();
    let addr = std::fs::read_to_string(format!("/sys/class/net/{name}/address")).unwrap();
    let mut host_mac = [0u8; 6];
    for (i, part) in addr.trim().split(':').enumerate().take(6) {
        host_mac[i] = u8::from_str_radix(part, 16).unwrap();
    }
    Some((Arc::new(tap), name, host_mac))
}

/// Waits for a used RX buffer holding a UDP frame to `port`; returns header and frame.
fn receive_udp(d: &mut Device, port: u16) -> (offload::NetHdr, Vec<u8>) {
    for i in 0..8u64 {
        d.rx.add_chain(&[(0x100000 + i * 0x1000, 2048, true)]);
    }
    d.net.queue_notify(RX_QUEUE);
    let mut seen = 0;
    loop {
        wait_irq(&d.irqs, RX_QUEUE);
        while seen < d.rx.used_idx() {
            let (id, len) = d.rx.used_elem(seen);
            seen += 1;
            let mut buf = vec![0u8; len as usize];
            // Chains are single buffers, posted in order from 0x100000.
            d.mem
                .read_slice(&mut buf, GuestAddress(0x100000 + u64::from(id) * 0x1000))
                .unwrap();
            let hdr = offload::NetHdr::parse(buf[..NET_HDR_LEN].try_into().unwrap());
            let f = buf[NET_HDR_LEN..].to_vec();
            if f.len() >= ETH_IP + 8
                && f[12..14] == [8, 0]
                && f[14 + 9] == 17
                && u16::from_be_bytes([f[ETH_IP + 2], f[ETH_IP + 3]]) == port
            {
                return (hdr, f);
            }
            assert!(seen < 8, "no UDP frame to port {port} among 8");
        }
    }
}

/// Checksum offload against the host kernel through a real TAP: with GUEST_CSUM the
/// kernel hands over (and the guest gets) a partial checksum with NEEDS_CSUM; without it,
/// a complete one and no flags. A guest frame with a partial checksum and NEEDS_CSUM is
/// delivered by the host's UDP stack, which drops bad checksums.
#[test]
fn tap_checksum_offload_with_the_host_kernel() {
    for (n, guest_csum) in [(1u8, true), (2, false)] {
        let Some((backend, name, host_mac)) = tap_for_test(n) else {
            return;
        };
        let features = F_CSUM | F_MRG_RXBUF | if guest_csum { F_GUEST_CSUM } else { 0 };
        let mut d = activate(backend, features);
        let host_ip = [10, 201, n, 1];
        let sock = std::net::UdpSocket::bind((std::net::Ipv4Addr::from(host_ip), 0)).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let host_port = sock.local_addr().unwrap().port();

        // Host to guest.
        sock.send_to(
            b"to the guest",
            (std::net::Ipv4Addr::new(10, 201, n, 2), 7000),
        )
        .unwrap();
        let (hdr, f) = receive_udp(&mut d, 7000);
        assert_eq!(&f[ETH_IP + 8..], b"to the guest");
        if guest_csum {
            assert_eq!(hdr.flags & offload::HDR_F_NEEDS_CSUM, 1, "{name}: {hdr:?}");
            assert_eq!(
                (hdr.csum_start, hdr.csum_offset),
                (ETH_IP as u16, 6),
                "{hdr:?}"
            );
        } else {
            assert_eq!(
                hdr,
                offload::NetHdr {
                    num_buffers: 1,
                    ..Default::default()
                }
            );
            assert!(udp_checksum_ok(&f), "complete checksum for a plain driver");
        }

        // Guest to host: the partial checksum only verifies if the flag went along.
        let f = partial_udp_frame(
            (MAC, host_mac),
            ([10, 201, n, 2], host_ip),
            (7000, host_port),
            b"to the host",
        );
        transmit(&mut d, csum_hdr(), &f);
        let mut buf = [0u8; 64];
        let (len, from) = sock
            .recv_from(&mut buf)
            .expect("the host stack takes the frame");
        assert_eq!(&buf[..len], b"to the host");
        assert_eq!(from.port(), 7000);
        drop(d);
    }
}

/// A paused device leaves guest memory alone: frames from the backend wait, frames the
/// guest queues stay queued; on resume both move. Pausing answers at once; the worker
/// acknowledges by itself.
#[test]
fn paused_device_touches_no_guest_memory() {
    let Setup {
        mut net,
        mem,
        mut rx,
        mut tx,
        mut peer,
        irqs,
    } = setup();
    net.pause();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !net.is_paused() {
        assert!(std::time::Instant::now() < deadline, "worker did not park");
        std::thread::sleep(Duration::from_millis(1));
    }
    rx.add_chain(&[(0x50000, 2048, true)]);
    net.queue_notify(RX_QUEUE);
    peer.write_all(&[0xab; 60]).unwrap();
    mem.write_slice(&[0u8; NET_HDR_LEN], GuestAddress(0x40000))
        .unwrap();
    mem.write_slice(&[0xcd; 60], GuestAddress(0x41000)).unwrap();
    tx.add_chain(&[(0x40000, NET_HDR_LEN as u32, false), (0x41000, 60, false)]);
    net.queue_notify(TX_QUEUE);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        (rx.used_idx(), tx.used_idx()),
        (0, 0),
        "nothing moved while paused"
    );
    let mut page = [0u8; 16];
    mem.read_slice(&mut page, GuestAddress(0x50000 + NET_HDR_LEN as u64))
        .unwrap();
    assert_eq!(page, [0; 16], "the receive buffer is untouched");
    assert!(irqs.try_recv().is_err(), "no interrupts while paused");
    net.resume();
    assert!(!net.is_paused());
    wait_irq(&irqs, RX_QUEUE);
    assert_eq!(rx.used_idx(), 1);
    let mut got = [0u8; 2048];
    assert_eq!(peer.read(&mut got).unwrap(), 60);
    assert_eq!(&got[..60], &[0xcd; 60]);
    // Pausing a device that is not running is immediate.
    net.reset();
    net.pause();
    assert!(net.is_paused());
}
