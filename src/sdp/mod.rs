//! SDP offer/answer (RFC 3264) for the relay: codec intersection, direction, ptime, RTCP
//! ports and connection rewriting. Sans-IO: pure functions over parsed bodies.
//!
//! # Shape
//!
//! - [`Sdp`] wraps a session description of the [`sdp_types`] crate. [`parse`] reads a body
//!   under the limits below (size, m-lines, formats, attributes); bodies we build are written
//!   back with [`Sdp::to_bytes`].
//! - [`answer`] answers an offer for one relay leg ([`LocalMedia`]): one m-line per offered
//!   m-line, in order; the first RTP audio stream we share a codec with is accepted, every
//!   other stream is rejected with port 0. The result carries the SDP to send and the
//!   [`Negotiated`] parameters of the leg (remote RTP/RTCP addresses, payload types for
//!   [`crate::media::api::LegSpec`], direction, ptime). [`negotiate_offer`] gives the same
//!   parameters without writing the answer, for a hop that forwards the offer instead.
//! - [`offer`] builds our own offer (a B2BUA leg towards the next hop); [`parse_answer`]
//!   checks the answer to it and extracts the same [`Negotiated`] parameters.
//! - [`rewrite_connection`] re-anchors a passed-through body at this node's relay leg (media
//!   anchoring `always`); with anchoring `edge` a home TCF forwards the body unchanged.
//!   [`reanchor_av`] does the same for a call that relays video too (F-VID-01): the first
//!   active RTP video m-line ([`video_of`]) is re-anchored at the video leg instead of being
//!   declined; [`video_answer`] reads the answered video stream. Video formats are passed
//!   through as offered (no codec choice, no transcoding).
//!
//! # Decisions
//!
//! - Payload formats are [`Format`]s: a [`Codec`](crate::media::codec::Codec) plus, for AMR and
//!   AMR-WB, the packing. Bandwidth-efficient and octet-aligned AMR are different formats and
//!   never match each other; `mode-set` and other parameters are carried over unchanged.
//! - The answer keeps the offerer's payload type numbers, lists our voice codecs in our
//!   preference order (optionally only the first, [`LocalMedia::single_codec`], since the relay
//!   does not transcode), and adds telephone-event / CN only at a clock rate of a chosen voice
//!   codec.
//! - Direction: the answer is the offer's direction reversed, intersected with what the caller
//!   allows ([`LocalMedia::direction`]). An offer with `c=0.0.0.0` (RFC 2543 hold) is read as
//!   "the offerer does not receive".
//!
//! # Robustness
//!
//! Network input never panics this module (`#![deny(clippy::indexing_slicing, ...)]` in each
//! file) and the property tests feed it arbitrary and mutated bodies.

#![deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod error;
mod format;
mod negotiate;
mod video;
mod view;
mod write;

#[cfg(test)]
mod tests;

use std::fmt;

pub use error::{ErrorKind, OfferAnswerError, SdpError};
pub use format::{default_preferences, static_payload_type, Direction, Format, PayloadFormat};
pub use negotiate::{
    answer, negotiate_offer, offer, parse_answer, reanchor, reanchor_av, rewrite_connection, Answer, LocalMedia,
    Negotiated, Ports, SessionOrigin,
};
pub use video::{video_answer, video_of, VideoStream};

/// Largest SDP body we read (bytes). Real offers of SIP phones are well under 2 KiB.
pub const MAX_SDP_SIZE: usize = 16 * 1024;
/// Most m-lines in one body.
pub const MAX_MEDIA: usize = 16;
/// Most formats on one m-line.
pub const MAX_FORMATS: usize = 64;
/// Most attributes at session level or in one media section.
pub const MAX_ATTRIBUTES: usize = 128;

/// A parsed (or built) session description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sdp(sdp_types::Session);

impl Sdp {
    /// Parses a body within the module's limits. Same as [`parse`].
    pub fn parse(body: &[u8]) -> Result<Sdp, SdpError> {
        if body.len() > MAX_SDP_SIZE {
            return Err(SdpError::TooLarge {
                size: body.len(),
                limit: MAX_SDP_SIZE,
            });
        }
        let session = sdp_types::Session::parse(body).map_err(|error| SdpError::Syntax(error.to_string()))?;
        check_limits(&session)?;
        Ok(Sdp(session))
    }

    /// The session description, for reading fields this module does not interpret.
    pub fn session(&self) -> &sdp_types::Session {
        &self.0
    }

    /// The session description, by value.
    pub fn into_session(self) -> sdp_types::Session {
        self.0
    }

    /// Number of m-lines.
    pub fn media_count(&self) -> usize {
        self.0.medias.len()
    }

    /// The body to send (CRLF line ends, as RFC 8866 asks).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(512);
        self.write_to(&mut body);
        body
    }

    /// Appends the body to `out`: the bytes `sdp_types::Session::write` writes (CR, LF and NUL
    /// are stripped from text fields, so a value carried over from a received body cannot
    /// inject lines), without its `core::fmt` machinery.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        write::session(out, &self.0);
    }
}

impl From<sdp_types::Session> for Sdp {
    /// Wraps a session built by the caller (no limits are checked).
    fn from(session: sdp_types::Session) -> Sdp {
        Sdp(session)
    }
}

impl fmt::Display for Sdp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.to_bytes()))
    }
}

/// Parses an SDP body (the body of an INVITE, a 200 OK, an ACK, an UPDATE, ...), rejecting bodies
/// larger than [`MAX_SDP_SIZE`], with more than [`MAX_MEDIA`] m-lines, [`MAX_FORMATS`] formats on
/// one m-line or [`MAX_ATTRIBUTES`] attributes in one section.
pub fn parse(body: &[u8]) -> Result<Sdp, SdpError> {
    Sdp::parse(body)
}

fn check_limits(session: &sdp_types::Session) -> Result<(), SdpError> {
    if session.medias.len() > MAX_MEDIA {
        return Err(SdpError::TooManyMedia {
            count: session.medias.len(),
            limit: MAX_MEDIA,
        });
    }
    if session.attributes.len() > MAX_ATTRIBUTES {
        return Err(SdpError::TooManyAttributes { limit: MAX_ATTRIBUTES });
    }
    for (index, media) in session.medias.iter().enumerate() {
        if token_count(&media.fmt) > MAX_FORMATS {
            return Err(SdpError::TooManyFormats {
                media: index,
                limit: MAX_FORMATS,
            });
        }
        if media.attributes.len() > MAX_ATTRIBUTES {
            return Err(SdpError::TooManyAttributes { limit: MAX_ATTRIBUTES });
        }
    }
    Ok(())
}

/// `text.split_ascii_whitespace().count()`, without building the pieces.
fn token_count(text: &str) -> usize {
    let mut count = 0;
    let mut in_token = false;
    for byte in text.bytes() {
        let white = byte.is_ascii_whitespace();
        if !white && !in_token {
            count += 1;
        }
        in_token = !white;
    }
    count
}
