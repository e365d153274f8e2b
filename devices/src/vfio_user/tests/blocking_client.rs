//! The blocking [`client::Client`] against the server and the toy device over a real
//! socketpair, the server in a thread of its own; and against peers that misbehave.

use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::thread::JoinHandle;

use crate::vfio_user::client::{Client, ClientError, default_capabilities};
use crate::vfio_user::toy::{BAR0_SIZE, MSIX_VECTORS, Toy, memfd};
use crate::vfio_user::*;

/// A server around the toy with `config`, serving until the client goes; returns it.
fn serve(config: ServerConfig) -> (Client, JoinHandle<Server<Toy>>) {
    let (c, s) = std::os::unix::net::UnixStream::pair().unwrap();
    let server = std::thread::spawn(move || {
        let sock = Socket::new(s);
        let mut server = Server::with_config(Toy::new(), config);
        while server.serve_one(&sock).is_ok() {}
        server
    });
    (Client::from_stream(c).unwrap(), server)
}

#[test]
fn bring_up_dma_irqs_and_registers() {
    let config = ServerConfig {
        max_msg_fds: 2,
        ..ServerConfig::default()
    };
    let (mut client, server) = serve(config);
    let v = client.negotiate(default_capabilities()).unwrap();
    assert_eq!((v.major, v.minor), (0, 0));
    assert_eq!(client.server_capabilities().max_msg_fds, Some(2));
    let info = client.device_info().unwrap();
    assert_eq!(info.num_regions, region::NUM);
    assert_eq!(
        client.region_info(region::BAR0).unwrap().info.size,
        BAR0_SIZE
    );
    assert_eq!(client.irq_info(irq::MSIX).unwrap().count, MSIX_VECTORS);

    let ram = memfd(0x10000);
    ram.write_all_at(b"guest", 0x2000).unwrap();
    client.dma_map(&ram, 0, 0x10_0000, 0x10000).unwrap();

    // Three vectors, two fds per message: two SET_IRQS.
    let fds: Vec<std::fs::File> = (0..MSIX_VECTORS)
        .map(|_| std::fs::File::from(crate::vfio_user::toy::eventfd()))
        .collect();
    client
        .set_irq_eventfds(
            irq::MSIX,
            0,
            &fds.iter().map(AsFd::as_fd).collect::<Vec<_>>(),
        )
        .unwrap();

    assert_eq!(client.read32(region::CONFIG, 0).unwrap(), 0x10ca_8086);
    client.write32(region::BAR0, 0x100, 0xdead_beef).unwrap();
    client
        .post_write32(region::BAR0, 0x104, 0x1234_5678)
        .unwrap();
    assert_eq!(client.read32(region::BAR0, 0x104).unwrap(), 0x1234_5678);
    assert_eq!(client.read32(region::BAR0, 0x100).unwrap(), 0xdead_beef);
    client.reset().unwrap();
    client.dma_unmap(0x10_0000, 0x10000).unwrap();
    drop(client);

    let server = server.join().unwrap();
    let toy = server.device();
    assert!(
        toy.msix.iter().all(Option::is_some),
        "every vector got its eventfd"
    );
    assert_eq!(toy.resets, 1);
    assert!(toy.dma.is_empty());
}

#[test]
fn refusals_carry_the_errno_and_leave_the_connection_usable() {
    let (mut client, _server) = serve(ServerConfig::default());
    client.negotiate(default_capabilities()).unwrap();
    let e = client.read(region::BAR0, BAR0_SIZE, 4).unwrap_err();
    let ClientError::Refused { command, source } = &e else {
        panic!("{e:?}");
    };
    assert_eq!(*command, "REGION_READ");
    assert_eq!(source.raw_os_error(), Some(libc::EINVAL), "{e}");
    // Overlapping maps: EEXIST.
    let ram = memfd(0x2000);
    client.dma_map(&ram, 0, 0, 0x2000).unwrap();
    let e = client.dma_map(&ram, 0, 0x1000, 0x1000).unwrap_err();
    assert!(
        matches!(&e, ClientError::Refused { source, .. } if source.raw_os_error() == Some(libc::EEXIST)),
        "{e:?}"
    );
    assert_eq!(client.read32(region::CONFIG, 0).unwrap(), 0x10ca_8086);
}

/// A peer that answers each request with `answer(request header)` bytes, then closes.
fn fake_server(answer: impl Fn(&Header) -> Vec<u8> + Send + 'static) -> Client {
    let (c, s) = std::os::unix::net::UnixStream::pair().unwrap();
    std::thread::spawn(move || {
        let sock = Socket::new(s);
        if let Ok(msg) = sock.recv_message(&Limits::default()) {
            let bytes = answer(&msg.header);
            let _ = sock.send_message(&bytes, &[]);
        }
    });
    Client::from_stream(c).unwrap()
}

#[test]
fn misbehaving_servers_are_errors_not_panics() {
    // A reply to another request.
    let mut c = fake_server(|h| {
        Header::reply(h.id.wrapping_add(7), h.command, 16)
            .to_bytes()
            .to_vec()
    });
    let e = c.device_info().unwrap_err();
    assert!(matches!(e, ClientError::OutOfStep { .. }), "{e:?}");

    // A command instead of a reply.
    let mut c = fake_server(|h| {
        Header::command(h.id, h.command, 16, false)
            .to_bytes()
            .to_vec()
    });
    let e = c.device_info().unwrap_err();
    assert!(matches!(e, ClientError::NotAReply { .. }), "{e:?}");

    // A reply too short for DEVICE_GET_INFO.
    let mut c = fake_server(|h| Header::reply(h.id, h.command, 16).to_bytes().to_vec());
    let e = c.device_info().unwrap_err();
    assert!(matches!(e, ClientError::Decode(_)), "{e:?}");

    // A header that promises more than comes, then the peer closes.
    let mut c = fake_server(|h| Header::reply(h.id, h.command, 64).to_bytes().to_vec());
    let e = c.read32(region::CONFIG, 0).unwrap_err();
    assert!(matches!(e, ClientError::Socket(_)), "{e:?}");

    // A peer that reads the request and never answers: the call fails when the reply
    // timeout passes, it does not hang.
    let (c, s) = std::os::unix::net::UnixStream::pair().unwrap();
    let mut c = Client::from_stream(c).unwrap();
    c.set_reply_timeout(std::time::Duration::from_millis(200))
        .unwrap();
    let start = std::time::Instant::now();
    let e = c.device_info().unwrap_err();
    assert!(
        matches!(e, ClientError::Socket(SocketError::RecvTimeout(_))),
        "{e:?}"
    );
    // Once, not twice (the blocking read already waited the whole timeout).
    let took = start.elapsed();
    assert!(
        took < std::time::Duration::from_millis(390),
        "a 200 ms reply timeout fired after {took:?}"
    );
    drop(s);

    // A peer that is gone before answering.
    let mut c = fake_server(|_| Vec::new());
    let e = c.negotiate(default_capabilities()).unwrap_err();
    assert!(matches!(e, ClientError::Socket(_)), "{e:?}");
    let e = Client::connect(std::path::Path::new("/nonexistent/vf0.sock")).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/vf0.sock"), "{e}");
}
