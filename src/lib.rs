//! Floorcast: a trunking control function (TCF) for broadband push-to-talk trunking
//! (B-TrunC), with a floor-gated RTP relay and fan-out engine.
//!
//! # Crate map
//!
//! - [`config`]: raw serde structs validated into typed configuration.
//! - [`proto`]: shared newtypes of the trunking domain (numbers, number ranges).
//! - [`control`]: sans-IO application logic: provisioning data, and (coming) registrar, peers,
//!   calls, floor control.
//! - [`media`]: the user plane, sans-IO: RTP/RTCP views, the floor gate and stream continuity,
//!   bridges, the port pool, statistics. Per-packet decisions live here.
//! - [`io`]: the only module with `unsafe`: batched UDP (`recvmmsg`/`sendmmsg`, io_uring) and
//!   the per-core media workers that own sockets and drive [`media::shard::Shard`]s; the
//!   [`io::Engine`] handle the control plane uses.
//! - [`sip`]: the project's own SIP message layer (zero-copy parser, typed header views,
//!   stream framing, builder) and digest authentication; sans-IO.
//! - [`sdp`]: SDP offer/answer (RFC 3264) for the codecs the relay carries, on the
//!   `sdp-types` parser; sans-IO. Used by the call-control issues (not wired yet).
//! - [`node`]: the process shell: starts the engine and the metrics endpoint, and shuts down
//!   cleanly.
//!
//! # The run-loop contract
//!
//! Sans-IO engines never read the clock, open sockets or spawn tasks. A driver feeds each
//! input together with the current time, then drains the outputs (datagrams to send, events,
//! the next timer deadline) before waiting again; a spurious timer call is harmless. The media
//! workers in [`io::worker`] are such drivers: one loop turn = drain control commands, wait for
//! readiness (or the next deadline), receive one batch per ready socket, hand it to the shard,
//! send what it produced, run due timers.

pub mod config;
pub mod control;
pub mod io;
pub mod media;
pub mod node;
pub mod proto;
pub mod sdp;
pub mod sip;
