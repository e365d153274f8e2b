//! Guests' synthetic ports: the vmm's virtio-net backend for the synthetic path connects
//! to nicd's synthetic socket (`DIR/synthetic.sock`), one seqpacket connection per guest.
//! Its first message says who the guest is, as one JSON object, `{"mac": "52:54:..",
//! "vlan": 0}`; nicd registers a synthetic port on the PF's default VPort with the guest's
//! filter (`Switch::add_synthetic`) and answers `{"ok": true, "port": N}` or `{"ok":
//! false, "error": "..."}` (then closes). After that every message is one Ethernet frame,
//! both ways. The connection closing removes the port (and its filter, wherever it is).
//!
//! Frames to a guest are sent without blocking; a guest whose socket is full loses the
//! frame, counted (a synthetic port is a software queue with no ring to wait in).

use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::Mutex;

use devices::nic_switch::{MacAddr, SyntheticId};
use devices::seqpacket::SeqpacketSocket;
use devices::sync::lock;
use serde::{Deserialize, Serialize};

use super::fabric::Fabric;

/// The synthetic socket's name in nicd's socket directory.
pub const SOCKET_NAME: &str = "synthetic.sock";
/// Messages read from one guest per wakeup (the loop is level-triggered).
const MESSAGES_PER_WAKEUP: usize = 64;
/// Largest frame a guest sends (a 64 KiB GSO frame has been segmented by the vmm).
const MAX_FRAME: usize = 65_536;
/// Connections at most (with or without their hello): beyond, new ones are closed at once.
const MAX_CONNS: usize = 1024;

/// The first message of a connection.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// The guest's MAC (the VF's, for a failover pair).
    pub mac: String,
    /// Its access VLAN (0: none).
    #[serde(default)]
    pub vlan: u16,
}

/// nicd's answer to it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct HelloReply {
    /// Whether the port exists now.
    pub ok: bool,
    /// Its number.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub port: Option<u16>,
    /// Why not.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
    /// nicd's management API socket (the vmm drives failover through it).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub api: Option<std::path::PathBuf>,
}

/// One guest's connection.
#[derive(Debug)]
pub struct Conn {
    /// The socket.
    pub sock: SeqpacketSocket,
    /// Its port, once the hello registered one.
    pub id: Option<SyntheticId>,
    /// Frames to it lost because its socket was full.
    pub lost: u64,
}

/// The synthetic socket and the guests connected to it.
#[derive(Debug)]
pub struct SyntheticPorts {
    listener: SeqpacketSocket,
    /// nicd's API socket, told to each guest's vmm in the hello's answer.
    api: std::path::PathBuf,
    /// Connected guests.
    pub conns: Vec<Conn>,
    /// Connections closed, whose descriptors the event loop must unregister before they
    /// close.
    pub retired: Vec<Conn>,
    /// Where a message is read (one buffer for every connection).
    buf: Vec<u8>,
}

impl SyntheticPorts {
    /// Listens at `dir/synthetic.sock`; `api` is nicd's API socket.
    pub fn bind(dir: &Path, api: &Path) -> std::io::Result<Self> {
        let listener = SeqpacketSocket::listen(&dir.join(SOCKET_NAME), 64)?;
        listener.set_nonblocking(true)?;
        Ok(Self {
            listener,
            api: std::path::absolute(api)?,
            conns: Vec::new(),
            retired: Vec::new(),
            buf: vec![0u8; MAX_FRAME],
        })
    }

    /// The listening socket's descriptor.
    pub fn listener_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    /// Accepts the guests waiting to connect (beyond [`MAX_CONNS`], closes them).
    pub fn accept(&mut self) {
        while let Ok(sock) = self.listener.accept() {
            if self.conns.len() >= MAX_CONNS {
                devices::warn_ratelimited!("nicd: {MAX_CONNS} synthetic connections: refusing");
                continue;
            }
            if let Err(e) = sock.set_nonblocking(true) {
                devices::warn_ratelimited!("nicd: a synthetic connection: {e}");
                continue;
            }
            self.conns.push(Conn {
                sock,
                id: None,
                lost: 0,
            });
        }
    }

    /// Serves the connection on `fd`: its hello, then its frames into the switch. A
    /// connection that closed, failed or said something wrong is retired, its port
    /// removed.
    pub fn serve(&mut self, fd: RawFd, fabric: &Mutex<Fabric>) {
        let Some(i) = self.conns.iter().position(|c| c.sock.as_raw_fd() == fd) else {
            return;
        };
        let mut buf = std::mem::take(&mut self.buf);
        self.serve_conn(i, fabric, &mut buf);
        self.buf = buf;
    }

    fn serve_conn(&mut self, i: usize, fabric: &Mutex<Fabric>, buf: &mut [u8]) {
        for _ in 0..MESSAGES_PER_WAKEUP {
            let c = &mut self.conns[i];
            let n = match c.sock.recv(buf) {
                Ok(0) => return self.retire(i, fabric, "the guest closed the connection"),
                Ok(n) if n > buf.len() => {
                    devices::debug_ratelimited!("nicd: a {n}-byte synthetic frame dropped");
                    continue;
                }
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => return self.retire(i, fabric, &e.to_string()),
            };
            match c.id {
                Some(id) => lock(fabric).synthetic_frame(id, &buf[..n]),
                None => {
                    if let Err(why) = Self::hello(c, &buf[..n], fabric, &self.api) {
                        let reply = HelloReply {
                            ok: false,
                            port: None,
                            error: Some(why.clone()),
                            api: None,
                        };
                        let _ = c.sock.send(&serde_json::to_vec(&reply).unwrap_or_default());
                        return self.retire(i, fabric, &why);
                    }
                }
            }
        }
    }

    fn hello(c: &mut Conn, msg: &[u8], fabric: &Mutex<Fabric>, api: &Path) -> Result<(), String> {
        let hello: Hello = serde_json::from_slice(msg).map_err(|e| format!("bad hello: {e}"))?;
        let mac: MacAddr = hello
            .mac
            .parse()
            .map_err(|e| format!("bad MAC {}: {e}", hello.mac))?;
        let id = lock(fabric)
            .switch
            .add_synthetic(mac, hello.vlan)
            .map_err(|e| e.to_string())?;
        c.id = Some(id);
        let reply = HelloReply {
            ok: true,
            port: Some(id.0),
            error: None,
            api: Some(api.to_path_buf()),
        };
        let sent = c.sock.send(&serde_json::to_vec(&reply).unwrap_or_default());
        if let Err(e) = sent {
            return Err(format!("cannot answer the hello: {e}"));
        }
        devices::info_ratelimited!("nicd: synthetic port {} for {mac}", id.0);
        Ok(())
    }

    fn retire(&mut self, i: usize, fabric: &Mutex<Fabric>, why: &str) {
        let c = self.conns.remove(i);
        if let Some(id) = c.id {
            let mut f = lock(fabric);
            if let Err(e) = f.switch.remove_synthetic(id) {
                devices::warn_ratelimited!("nicd: synthetic port {}: {e}", id.0);
            }
            f.clear_synthetic(id);
            devices::info_ratelimited!("nicd: synthetic port {} gone: {why}", id.0);
        }
        self.retired.push(c);
    }

    /// Sends the frames the switch queued for synthetic ports.
    pub fn deliver(&mut self, fabric: &Mutex<Fabric>) {
        let out = lock(fabric).take_synthetic_out();
        for (id, frame) in out {
            let Some(c) = self.conns.iter_mut().find(|c| c.id == Some(id)) else {
                continue;
            };
            if c.sock.send(&frame).is_err() {
                c.lost += 1;
                devices::debug_ratelimited!("nicd: synthetic port {}: a frame lost", id.0);
            }
        }
    }

    /// The connected guests' descriptors.
    pub fn conn_fds(&self) -> Vec<RawFd> {
        self.conns.iter().map(|c| c.sock.as_raw_fd()).collect()
    }
}
