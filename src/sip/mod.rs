//! The SIP message layer: a zero-copy parser, typed header views, stream framing and a builder.
//!
//! This is Floorcast's own SIP syntax layer, written to pass the RFC 4475 torture messages
//! (`tests/sip_torture.rs`). It is sans-IO: it turns bytes into [`Message`]s and back and
//! never touches sockets, clocks or randomness.
//!
//! # Shape
//!
//! - [`Message`] keeps the received buffer ([`bytes::Bytes`]) and an index of it: the start
//!   line, one `(name, value)` byte range per header field, the body range. Nothing is copied
//!   or unfolded while parsing.
//! - Typed views ([`Via`], [`NameAddr`], [`CSeq`], [`ContactList`], [`AuthHeader`],
//!   [`PttExtension`], ...) are parsed on demand from those ranges and borrow from the buffer.
//!   Folded lines are read as white space in place; a [`std::borrow::Cow`] is only built when a
//!   caller asks for an unquoted, unescaped or unfolded value.
//! - [`Message::parse_datagram`] applies the UDP rules of RFC 3261 section 18.3 and then
//!   [`Message::validate`]. [`StreamFramer`] does the same for TCP/TLS, where Content-Length is
//!   mandatory.
//! - Failures are [`Rejection`]s: the [`ParseError`] plus what could be indexed, so that
//!   [`Rejection::action`] can tell "answer 400/505" from "drop", and [`Rejection::response`]
//!   can build the answer (RFC 3261 section 8.2.6).
//! - [`MessageBuilder`] and [`response_to`] build messages; a built message is parsed back into
//!   the same [`Message`] type.
//!
//! # Robustness
//!
//! Network input never panics the message layer: no indexing, `unwrap` or `expect` on received
//! data, enforced by `#![deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used,
//! clippy::panic)]` at the top of each of its files (per file, so that sibling modules keep
//! their own lint choices). Every entry point is fuzzed (`fuzz/fuzz_targets/sip_parse.rs`) and
//! property-tested.

pub mod builder;
pub mod dialog;
/// Digest authentication (RFC 3261 section 22, RFC 7616, RFC 8760).
pub mod digest;
pub mod framing;
pub mod headers;
pub mod message;
mod syntax;
pub mod transaction;
pub mod uri;

pub use builder::{response_to, response_to_from, BuildError, MessageBuilder};
pub use framing::{Frame, FramingError, StreamFramer, DEFAULT_MAX_MESSAGE_SIZE};
pub use headers::{
    AuthHeader, CSeq, Contact, ContactList, HeaderError, HeaderName, MediaType, NameAddr, Param, Params, PttExtension,
    SipDate, Via, BRANCH_MAGIC_COOKIE,
};
pub use message::{
    response_for_error, ErrorAction, FirstContact, Header, Message, Method, ParseError, Rejection, StartLine,
    MAX_HEADERS,
};
pub use uri::{Host, OpaqueUri, SipUri, Uri, UriError, UriParam};
