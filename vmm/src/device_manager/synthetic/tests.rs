//! The synthetic port against a stand-in for nicd's synthetic socket: a real seqpacket
//! listener that answers hellos as nicd does, and goes away and comes back.

use std::time::{Duration, Instant};

use super::*;

const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x11];

fn temp_socket(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("synthetic-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("synthetic.sock")
}

/// Accepts one port on `listener`, reads its hello and answers it (`error`: refuse).
fn serve_one(listener: &SeqpacketSocket, error: Option<&str>) -> (SeqpacketSocket, Hello) {
    let conn = listener.accept().unwrap();
    // The socket's receive never blocks (MSG_DONTWAIT): wait for the hello first.
    let mut p = libc::pollfd {
        fd: conn.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd; the socket outlives the call.
    assert_eq!(unsafe { libc::poll(&raw mut p, 1, 10_000) }, 1, "no hello");
    let mut buf = [0u8; 1024];
    let n = conn.recv(&mut buf).unwrap();
    let hello: Hello = serde_json::from_slice(&buf[..n]).unwrap();
    let reply = HelloReply {
        ok: error.is_none(),
        port: error.is_none().then_some(7),
        error: error.map(String::from),
        api: Some(PathBuf::from("/run/nicd/api.sock")),
    };
    conn.send(&serde_json::to_vec(&reply).unwrap()).unwrap();
    (conn, hello)
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn readable(fd: RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&raw mut p, 1, 0) == 1 }
}

#[test]
fn the_port_reconnects_in_the_same_descriptor_when_nicd_comes_back() {
    let path = temp_socket("reconnect");
    let listener = SeqpacketSocket::listen(&path, 4).unwrap();
    let server = std::thread::spawn({
        let l = listener;
        move || (serve_one(&l, None), l)
    });
    let port = SyntheticPort::connect(&path, MAC).unwrap();
    let ((conn, hello), listener) = server.join().unwrap();
    assert_eq!(hello.mac, "02:00:00:00:00:11");
    assert_eq!(port.nicd_api(), Some(PathBuf::from("/run/nicd/api.sock")));
    let fd = port.fd();
    let wake = port.wake_fd().unwrap();
    let reconnected = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
    port.notify_reconnect(reconnected.clone());

    // Frames both ways.
    port.send(b"to nicd").unwrap();
    let mut buf = [0u8; 64];
    let n = conn.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"to nicd");
    conn.send(b"to the guest").unwrap();
    wait_until("a frame arrives", || readable(fd));
    let n = port.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"to the guest");

    // nicd goes away: the watcher sees the hang-up though nobody sends or receives.
    drop(conn);
    drop(listener);
    std::fs::remove_file(&path).unwrap();
    wait_until("the port sees nicd gone", || !port.is_connected());
    assert!(port.send(b"lost").is_err());
    assert!(port.send_batch(&[b"lost", b"lost too"]).is_err());
    let st = port.status();
    assert!(!st.connected);
    assert_eq!((st.disconnects, st.reconnects, st.tx_lost), (1, 0, 3));
    assert!(st.last_error.is_some());
    assert!(!readable(wake), "no wake-up before a reconnect");

    // nicd is back at the same path.
    std::thread::sleep(Duration::from_millis(200));
    let listener = SeqpacketSocket::listen(&path, 4).unwrap();
    let (conn, _) = serve_one(&listener, None);
    wait_until("the port reconnects", || port.is_connected());
    assert_eq!(port.fd(), fd, "the new connection took the old descriptor");
    assert!(readable(wake), "the worker is woken");
    port.ack_wake();
    assert!(!readable(wake));
    assert!(readable(reconnected.as_raw_fd()), "the API handler is told");
    assert!(port.take_reconnected());
    assert!(!port.take_reconnected());
    let st = port.status();
    assert_eq!((st.disconnects, st.reconnects, st.tx_lost), (1, 1, 3));
    // SAFETY: F_GETFD on a descriptor of ours.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    assert_ne!(flags & libc::FD_CLOEXEC, 0, "still close-on-exec");
    port.send(b"again").unwrap();
    let n = conn.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"again");
}

#[test]
fn a_refused_hello_is_an_error_with_nicds_reason() {
    let path = temp_socket("refused");
    let listener = SeqpacketSocket::listen(&path, 4).unwrap();
    let server = std::thread::spawn(move || {
        let _ = serve_one(&listener, Some("MAC 02:00:00:00:00:11 is taken"));
    });
    let e = SyntheticPort::connect(&path, MAC).unwrap_err();
    server.join().unwrap();
    assert!(
        matches!(&e, SyntheticError::Refused(why) if why.contains("taken")),
        "{e:?}"
    );
}

#[test]
fn no_nicd_is_an_error() {
    let path = temp_socket("absent");
    let e = SyntheticPort::connect(&path, MAC).unwrap_err();
    assert!(matches!(e, SyntheticError::Connect(_)), "{e:?}");
}
