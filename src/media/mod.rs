//! The user plane, sans-IO: RTP/RTCP header views and in-place rewrite, the floor gate and
//! stream continuity, bridges (relay, group fan-out), the port pool, and the engine's
//! vocabulary (identifiers, commands, events, statistics).
//!
//! Nothing in this module touches a socket, a thread or the clock: the workers in
//! [`crate::io`] drive [`shard::Shard`] with received batches and the current time.

pub mod api;
pub mod codec;
pub mod out;
pub mod ports;
pub mod rewrite;
pub mod rtcp;
pub mod rtp;
pub mod shard;
pub mod stats;
