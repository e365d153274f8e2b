//! Tests that play the client: QEMU's messages byte for byte, its bring-up sequence over a
//! real socketpair against a toy device, malformed input, and a property test of the
//! decoder.

// Test data: lengths of small test messages are built with `as`.
#![allow(clippy::cast_possible_truncation)]

mod blocking_client;
mod client;
mod codec;
mod fuzz;
mod malformed;
mod session;
