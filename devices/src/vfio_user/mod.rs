//! vfio-user: the protocol between nicd (the server, one socket per VF) and its clients
//! (the vmm, QEMU's `vfio-user-pci`). Our own implementation, because the published
//! `vfio_user` crate answers errors with errno 0, desyncs on unknown commands, replies to
//! no-reply messages and shifts the DMA_UNMAP flag bits.
//!
//! - [`header`]: the 16-byte header and command numbers.
//! - [`messages`]: each payload as a plain struct, with the <linux/vfio.h> constants.
//! - [`codec`]: [`Request`] and [`Reply`], decoded from a received [`Message`] with every
//!   length and fd count checked, and encoded to bytes plus fds. Symmetric: the server
//!   decodes requests and encodes replies, a client does the reverse.
//! - [`socket`]: whole messages with their fds over a unix stream socket, bounded.
//! - [`server`]: [`Server`] around a [`VfioUserDevice`], independent of any event loop.
//!
//! How nicd's glue drives one VF's socket (all plain calls, no threads of their own):
//!
//! ```text
//! accept -> Socket::new(stream); stream.set_nonblocking(true); register it for EPOLLIN
//! readable -> while let Some(msg) = reader.poll(&sock, &server.limits())? {
//!                 if let Some(reply) = server.handle_message(msg) {
//!                     let e = reply.encode();
//!                     queue Outgoing::new(e.bytes, &e.fds); sock.send_nonblocking(&mut it)
//!                     (what is left goes when the socket is writable; meanwhile stop reading)
//!                 }
//!             }
//!             Err(e) if !e.is_fatal() -> send server.handle_recv_error(&e), go on
//!             Err(_) (closed, too large, truncated) -> drop the socket, server.disconnect()
//! second client while busy -> answer its first message with busy_reply(), close it
//! ```
//!
//! - [`client`]: a blocking [`Client`] on the same pieces the other way round
//!   (`Request::encode`, `Socket::send_message`, `Socket::recv_message`, `Reply::decode`),
//!   every reply matched to its request and checked: the vmm's side of a VF, and the
//!   benchmarks' and tests' guest driver.
//!
//! Not implemented: DMA_READ/DMA_WRITE (DMA goes through the fd of DMA_MAP; a map without
//! one is recorded and acknowledged, and DMA there fails like DMA to an unmapped IOVA), REGION_WRITE_MULTI and migration (not offered in VERSION, so a
//! client does not send them; if one does, ENOSYS), twin sockets.

pub mod card;
pub mod client;
pub mod codec;
pub mod header;
pub mod messages;
pub mod server;
pub mod socket;
mod wire;

#[cfg(test)]
mod tests;
#[cfg(any(test, feature = "test-utils"))]
pub mod toy;

pub use client::{Client, ClientError};
pub use codec::{DecodeError, Encoded, Message, Reply, ReplyMessage, Request};
pub use header::{Header, cmd};
pub use messages::*;
pub use server::{
    DeviceError, DmaMapping, Negotiated, Server, ServerConfig, ServerError, ServerStats,
    VfioUserDevice, busy_reply,
};
pub use socket::{Limits, MessageReader, Outgoing, Socket, SocketError};
