//! The only module with `unsafe`: batched UDP I/O and the media workers.
//!
//! - [`udp`]: leg sockets, `recvmmsg` into fixed buffers, `sendmmsg` of header + shared body.
//! - [`uring`]: the io_uring send backend (one submission per fan-out), probed at start.
//! - [`worker`]: one thread per core owning its sockets and a [`crate::media::shard::Shard`].
//! - [`engine`]: the [`Engine`] handle the control plane calls.

pub mod engine;
pub mod udp;
pub mod uring;
pub mod worker;

pub use engine::{Engine, EngineError};
