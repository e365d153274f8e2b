//! The API socket: JSON requests and responses, one object per line, over a unix stream
//! socket. `protocol` holds the wire types; `server` the event-loop subscriber.

pub mod protocol;
pub mod server;

pub use protocol::{DeviceInfo, Request, Response, SlotInfo, VmStatus};
pub use server::{ApiError, ApiHandler, ApiServer, Reply};
