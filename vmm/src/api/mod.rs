//! The API sockets: one JSON request and one JSON answer per line, over a unix stream
//! socket. `server` is the event-loop subscriber, generic over a handler with its own
//! request and response types (the vmm's VM, nicd's adapter); `client` is the other end,
//! used by vmctl, the tests and, later, a vmm talking to another during migration;
//! `protocol` holds the vmm's wire types.

pub mod client;
pub mod protocol;
pub mod server;

pub use client::{Client, ClientError, VmClient};
pub use protocol::{DeviceInfo, NetDevice, Request, Response, SlotInfo, VfDevice, VmStatus};
pub use server::{ApiError, ApiHandler, ApiServer, Reply};
