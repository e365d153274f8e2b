//! The card against the server and the toy device over a real socketpair (the server in
//! a thread), and against servers that lie, stall or send garbage.

#![allow(clippy::cast_possible_truncation)] // test data

use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;
use std::time::Duration;

use super::*;
use crate::interrupt::msi_test_utils::FakeRouteFactory;
use crate::vfio_user::toy::{BAR0_SIZE, EXP_CAP, MSIX_CAP, MSIX_VECTORS, Toy};
use crate::vfio_user::{Server, ServerConfig, Socket};

/// Where the tests put BAR0.
const BAR0_AT: u64 = 0xe000_0000;

fn serve(toy: Toy) -> (UnixStream, JoinHandle<Server<Toy>>) {
    let (c, s) = UnixStream::pair().unwrap();
    let server = std::thread::spawn(move || {
        let sock = Socket::new(s);
        let mut server = Server::with_config(
            toy,
            ServerConfig {
                max_msg_fds: 2,
                ..ServerConfig::default()
            },
        );
        while server.serve_one(&sock).is_ok() {}
        server
    });
    (c, server)
}

fn card(toy: Toy) -> (VfioUserCard, Arc<FakeRouteFactory>, JoinHandle<Server<Toy>>) {
    let (c, server) = serve(toy);
    let routes = Arc::new(FakeRouteFactory::default());
    let card = VfioUserCard::new("vf0", Client::from_stream(c).unwrap(), &*routes).unwrap();
    (card, routes, server)
}

fn cfg32(card: &mut VfioUserCard, offset: usize) -> u32 {
    let mut b = [0u8; 4];
    card.config_read(0, offset, &mut b);
    u32::from_le_bytes(b)
}

fn placed(card: &mut VfioUserCard) {
    card.assign_bars(&mut |bar| {
        assert_eq!(bar.size, BAR0_SIZE);
        Some(BAR0_AT)
    })
    .unwrap();
}

#[test]
fn config_bars_and_msix_stay_local_the_rest_reaches_the_server() {
    let (mut card, routes, server) = card(Toy::new());
    assert_eq!(cfg32(&mut card, 0), 0x10ca_8086);
    assert_eq!(card.stats().config_accesses, 1);
    // BAR sizing is answered here.
    card.config_write(0, BAR0, &u32::MAX.to_le_bytes());
    card.config_write(0, BAR0 + 4, &u32::MAX.to_le_bytes());
    assert_eq!(cfg32(&mut card, BAR0), !(BAR0_SIZE as u32 - 1) | 0x4);
    assert_eq!(cfg32(&mut card, BAR0 + 4), u32::MAX);
    assert_eq!(
        card.stats().config_accesses,
        1,
        "BARs never cross the socket"
    );
    placed(&mut card);
    assert_eq!(cfg32(&mut card, BAR0), BAR0_AT as u32 | 0x4);
    // Other functions of the slot's bus are absent.
    let mut b = [0u8; 4];
    card.config_read(1, 0, &mut b);
    assert_eq!(b, [0xff; 4]);
    assert!(!card.has_function(8));

    // BAR0 registers: a posted write then a synchronous read of it.
    assert!(card.mmio_write(BAR0_AT + 0x1000, &0xfeed_f00du32.to_le_bytes()));
    let mut r = [0u8; 4];
    assert!(card.mmio_read(BAR0_AT + 0x1000, &mut r));
    assert_eq!(u32::from_le_bytes(r), 0xfeed_f00d);
    assert!(
        !card.mmio_read(BAR0_AT + BAR0_SIZE, &mut r),
        "outside the BAR"
    );
    assert_eq!((card.stats().bar_writes, card.stats().bar_reads), (1, 1));

    // The MSI-X table is emulated here: program vector 1, enable MSI-X through config.
    let ext = routes.0.lock().unwrap()[0].clone();
    assert_eq!(ext.fds.len(), MSIX_VECTORS as usize);
    let entry = BAR0_AT + 16;
    card.mmio_write(entry, &0xfee0_0000u32.to_le_bytes());
    card.mmio_write(entry + 8, &0x4041u32.to_le_bytes());
    card.mmio_write(entry + 12, &0u32.to_le_bytes());
    card.mmio_read(entry + 8, &mut r);
    assert_eq!(u32::from_le_bytes(r), 0x4041);
    let ctl = MSIX_CAP + 2;
    card.config_write(0, ctl, &0x8000u16.to_le_bytes());
    let mut c = [0u8; 2];
    card.config_read(0, ctl, &mut c);
    assert_eq!(
        u16::from_le_bytes(c),
        0x8000 | (MSIX_VECTORS as u16 - 1),
        "enable shows, table size is the server's"
    );
    assert_eq!(
        ext.take_log(),
        [
            "route 1 0xfee00000 0x0",
            "route 1 0xfee00000 0x4041",
            "connect 1"
        ]
    );
    // The PBA shows a masked vector the device raised; a PBA write is ignored.
    ext.raise(0);
    card.mmio_read(BAR0_AT + 0x800, &mut r);
    assert_eq!(u32::from_le_bytes(r), 0b1);
    card.mmio_write(BAR0_AT + 0x800, &0u32.to_le_bytes());
    ext.raise(1);
    assert_eq!(ext.take_log(), ["deliver 1"]);

    // FLR through the PCIe capability: the MSI-X state goes back to reset.
    card.config_write(0, EXP_CAP + EXP_DEVCTL, &0x8000u16.to_le_bytes());
    assert_eq!(ext.take_log(), ["disconnect 1"]);
    card.mmio_read(entry + 12, &mut r);
    assert_eq!(u32::from_le_bytes(r), 1, "masked after FLR");

    let writes_before = card.stats().bar_writes;
    drop(card);
    let server = server.join().unwrap();
    let toy = server.device();
    assert!(toy.msix.iter().all(Option::is_some), "eventfds handed over");
    let mut word = [0u8; 4];
    toy.bar0.read_exact_at(&mut word, 16 + 8).unwrap();
    assert_eq!(word, [0; 4], "table writes never reached the server");
    assert_eq!(writes_before, 1);
    assert_eq!(toy.config[0x10], 0x4, "BAR addresses stay in the vmm");
    assert_eq!(
        u16::from_le_bytes([toy.config[4], toy.config[5]]) & 0x2,
        0x2,
        "the server learnt that memory decoding is on"
    );
}

#[test]
fn servers_that_lie_about_the_device_are_refused() {
    let refused = |toy: Toy| {
        let (c, _server) = serve(toy);
        let routes = FakeRouteFactory::default();
        match VfioUserCard::new("vf0", Client::from_stream(c).unwrap(), &routes) {
            Err(CardError::Device(why)) => why,
            other => panic!("expected a refusal, got {other:?}"),
        }
    };
    let mut t = Toy::new();
    t.bar0_info_size = 0x3000;
    assert!(refused(t).contains("not a power of two"));
    let mut t = Toy::new();
    // The PBA past the end of BAR0.
    t.config[MSIX_CAP + 8..MSIX_CAP + 12].copy_from_slice(&0x4000u32.to_le_bytes());
    assert!(refused(t).contains("outside the BAR"));
    let mut t = Toy::new();
    t.config[MSIX_CAP + 2] = 7; // 8 vectors, the server has 3
    assert!(refused(t).contains("8 vectors"));
    let mut t = Toy::new();
    t.config[0x34] = 0;
    assert!(refused(t).contains("no MSI-X"));
    let mut t = Toy::new();
    // A capability list that loops.
    t.config[MSIX_CAP + 1] = MSIX_CAP as u8;
    t.config[0x34] = MSIX_CAP as u8;
    let (c, _server) = serve(t);
    assert!(
        VfioUserCard::new(
            "vf0",
            Client::from_stream(c).unwrap(),
            &FakeRouteFactory::default()
        )
        .is_ok()
    );
}

/// A server that answers bring-up, then stops answering: the vCPU's read times out, the
/// card is broken from then on (all ones, writes dropped, no further waits) and shuts the
/// socket down, which is what the vmm watches for.
#[test]
fn a_stalled_server_breaks_the_card_without_hanging_it() {
    let (c, s) = UnixStream::pair().unwrap();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let server = std::thread::spawn(move || {
        let sock = Socket::new(s.try_clone().unwrap());
        let mut server = Server::new(Toy::new());
        // VERSION, DEVICE_GET_INFO, config region info, config read, 5 BAR region
        // infos (BAR0 is 64-bit), IRQ info, SET_IRQS; the COMMAND write of the BAR
        // assignment.
        for _ in 0..12 {
            server.serve_one(&sock).unwrap();
        }
        stop_rx.recv().unwrap();
        // Then it reads what comes and never answers; EOF shows the shutdown.
        let mut rest = Vec::new();
        let _ = (&s).read_to_end(&mut rest);
        rest.len()
    });
    let client = Client::from_stream(c).unwrap();
    client
        .set_reply_timeout(Duration::from_millis(200))
        .unwrap();
    let routes = FakeRouteFactory::default();
    let mut card = VfioUserCard::new("vf0", client, &routes).unwrap();
    placed(&mut card);
    assert_eq!(card.broken(), None);
    stop_tx.send(()).unwrap();
    let mut r = [0u8; 4];
    let t0 = std::time::Instant::now();
    assert!(card.mmio_read(BAR0_AT + 0x1000, &mut r));
    assert_eq!(r, [0xff; 4]);
    assert!(
        card.broken().unwrap().contains("BAR read"),
        "{:?}",
        card.broken()
    );
    // Broken: answered at once, nothing more is sent.
    card.mmio_write(BAR0_AT + 0x1000, &[1, 2, 3, 4]);
    assert_eq!(cfg32(&mut card, 0), u32::MAX);
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert!(card.dma_unmap(0, 4096).is_err());
    let sent_after_stop = server.join().unwrap();
    assert!(sent_after_stop > 0, "the read went out before the stall");
}

/// A peer that answers VERSION with garbage: an error, not a panic or a hang.
#[test]
fn garbage_from_the_server_is_an_error() {
    let (c, mut s) = UnixStream::pair().unwrap();
    let peer = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf);
        let _ = s.write_all(&[0xa5; 64]);
    });
    let client = Client::from_stream(c).unwrap();
    client.set_reply_timeout(Duration::from_secs(2)).unwrap();
    let e = VfioUserCard::new("vf0", client, &FakeRouteFactory::default()).unwrap_err();
    assert!(matches!(e, CardError::Client(_)), "{e:?}");
    peer.join().unwrap();
}
