//! A raw client on the codec for the server's tests: exact ids, raw bytes and fds, and
//! replies read one by one (`client::Client` is the checked one the vmm and nicd's tests
//! use).

use crate::vfio_user::*;

pub struct Client {
    pub sock: Socket,
    pub next_id: u16,
    pub limits: Limits,
}

impl Client {
    pub fn new(sock: Socket) -> Self {
        Self {
            sock,
            next_id: 0,
            limits: Limits::default(),
        }
    }

    /// Sends `req`; returns its message id.
    pub fn send(&mut self, req: &Request, no_reply: bool) -> u16 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let enc = req.encode(id, no_reply);
        self.sock.send_message(&enc.bytes, &enc.fds).unwrap();
        id
    }

    /// Sends raw bytes and fds.
    pub fn send_raw(&self, bytes: &[u8], fds: &[std::os::fd::BorrowedFd<'_>]) {
        self.sock.send_message(bytes, fds).unwrap();
    }

    /// Receives one reply.
    pub fn recv(&self) -> (Header, Reply) {
        let msg = self.sock.recv_message(&self.limits).unwrap();
        assert!(msg.header.is_reply(), "{:?}", msg.header);
        let h = msg.header;
        (h, Reply::decode(msg).unwrap())
    }

    /// True if a reply is waiting (without blocking).
    pub fn has_pending(&self) -> bool {
        let mut p = libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(&self.sock),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the call.
        unsafe { libc::poll(&raw mut p, 1, 0) > 0 }
    }
}

/// Runs one request through `server` and returns its reply.
pub fn call<D: VfioUserDevice>(
    client: &mut Client,
    server: &mut Server<D>,
    server_sock: &Socket,
    req: &Request,
) -> Reply {
    let id = client.send(req, false);
    server.serve_one(server_sock).unwrap();
    let (h, reply) = client.recv();
    assert_eq!(h.id, id, "reply to the request just sent");
    assert_eq!(h.command, req.command());
    reply
}

/// The errno of an error reply, or panics.
pub fn errno(r: &Reply) -> i32 {
    match r {
        Reply::Error { errno } => *errno as i32,
        other => panic!("expected an error reply, got {other:?}"),
    }
}

/// A connected client and server around a toy device, VERSION done.
pub fn connected() -> (Client, Server<crate::vfio_user::toy::Toy>, Socket) {
    let (c, s) = Socket::pair().unwrap();
    let mut client = Client::new(c);
    let mut server = Server::new(crate::vfio_user::toy::Toy::new());
    let v = call(
        &mut client,
        &mut server,
        &s,
        &Request::Version(Version {
            major: 0,
            minor: 0,
            capabilities: Some(Capabilities {
                max_msg_fds: Some(16),
                ..Default::default()
            }),
        }),
    );
    assert!(matches!(v, Reply::Version(_)), "{v:?}");
    (client, server, s)
}
