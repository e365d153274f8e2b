//! virtio-net through its worker, with a seqpacket peer standing for the other end.

use super::*;
use crate::virtio::test_utils::TestRing;
use crate::virtio::{ActivateContext, VirtioInterrupt};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::Duration;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

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
    mem: GuestMemoryMmap,
    rx: TestRing,
    tx: TestRing,
    peer: UnixStream,
    irqs: Receiver<u16>,
}

const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

fn setup() -> Setup {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
    let (ours, peer) = backend::seqpacket_pair().unwrap();
    // SAFETY: `ours` is a valid open socket; making it non-blocking changes no memory.
    unsafe {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&ours);
        libc::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK);
    }
    peer.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut net = VirtioNet::new(MAC, Arc::new(SeqpacketBackend::from_fd(ours))).unwrap();
    let rx = TestRing::new(&mem, 0x10000, 16);
    let tx = TestRing::new(&mem, 0x20000, 16);
    let (s, irqs) = channel();
    net.activate(ActivateContext {
        mem: crate::virtio::dma::plain(mem.clone()),
        queues: vec![rx.queue(), tx.queue()],
        interrupt: Arc::new(ChannelIrq(Mutex::new(s))),
        features: F_MAC | F_MRG_RXBUF | crate::virtio::features::VERSION_1,
    })
    .unwrap();
    Setup {
        net,
        mem,
        rx,
        tx,
        peer,
        irqs,
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
