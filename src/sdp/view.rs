//! Reading what offer/answer needs from a parsed session: the crate keeps attributes as
//! name/value text, these helpers give them meaning. Nothing here trusts the input: every
//! number is parsed with a checked conversion and every lookup is by search, not by index.

#![deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, SocketAddr};

use sdp_types::{Attribute, Connection, Media, NetType, Session};

use super::error::OfferAnswerError;
use super::format::{Direction, Format, PayloadFormat};

/// `text.trim()`, without its Unicode scan when the text starts and ends with a visible
/// ASCII character (the usual case: names and values the parser has already split at spaces).
pub(crate) fn trim(text: &str) -> &str {
    match (text.as_bytes().first(), text.as_bytes().last()) {
        (Some(first), Some(last)) if first.is_ascii_graphic() && last.is_ascii_graphic() => text,
        _ => text.trim(),
    }
}

/// `text.split_once(|c: char| c.is_ascii_whitespace())`, by bytes (ASCII white space is one
/// byte in UTF-8 and no byte of a longer sequence).
pub(crate) fn split_at_whitespace(text: &str) -> Option<(&str, &str)> {
    let at = text.bytes().position(|byte| byte.is_ascii_whitespace())?;
    let (before, rest) = text.split_at_checked(at)?;
    Some((before, rest.get(1..)?))
}

/// `text.split_once(byte as char)` for an ASCII `byte`, by bytes.
fn split_at_byte(text: &str, byte: u8) -> Option<(&str, &str)> {
    let at = text.bytes().position(|candidate| candidate == byte)?;
    let (before, rest) = text.split_at_checked(at)?;
    Some((before, rest.get(1..)?))
}

/// The values of the attributes called `name` (case-insensitive), in order.
pub(crate) fn attribute_values<'a>(
    attributes: &'a [Attribute],
    name: &'a str,
) -> impl Iterator<Item = Option<&'a str>> + 'a {
    attributes
        .iter()
        .filter(move |attribute| trim(&attribute.attribute).eq_ignore_ascii_case(name))
        .map(|attribute| attribute.value.as_deref().map(trim))
}

/// Whether an attribute called `name` is present.
pub(crate) fn has_attribute(attributes: &[Attribute], name: &str) -> bool {
    attribute_values(attributes, name).next().is_some()
}

/// Whether an m-line is an RTP audio stream we can relay: `audio` over plain RTP/AVP or
/// RTP/AVPF (no SRTP: we hold no keys, and DTLS-SRTP ends at each hop).
pub(crate) fn is_rtp_audio(media: &Media) -> bool {
    media.media.eq_ignore_ascii_case("audio")
        && (media.proto.eq_ignore_ascii_case("RTP/AVP") || media.proto.eq_ignore_ascii_case("RTP/AVPF"))
}

/// Whether an m-line is an RTP video stream we can relay: `video` over plain RTP/AVP or
/// RTP/AVPF (F-VID-01; no SRTP, as for audio).
pub(crate) fn is_rtp_video(media: &Media) -> bool {
    media.media.eq_ignore_ascii_case("video")
        && (media.proto.eq_ignore_ascii_case("RTP/AVP") || media.proto.eq_ignore_ascii_case("RTP/AVPF"))
}

/// Whether an m-line is active (non-zero port).
pub(crate) fn is_active(media: &Media) -> bool {
    media.port != 0
}

/// The payload type numbers of an RTP m-line, in order; tokens that are not a number in 0..=127
/// are skipped (they cannot match anything).
pub(crate) fn payload_types(media: &Media) -> impl Iterator<Item = u8> + '_ {
    media
        .fmt
        .split_ascii_whitespace()
        .filter_map(|token| token.parse::<u8>().ok())
        .filter(|&payload_type| payload_type <= 127)
}

/// The `a=rtpmap` and `a=fmtp` lines of an m-line, read in one pass over its attributes (a
/// search per payload type and attribute name cost a pass each).
pub(crate) struct FormatLines<'a> {
    /// The first [`INLINE_LINES`] lines (of `inline_len`), in attribute order; an `a=rtpmap`
    /// only when it reads completely. Kept on the stack: an m-line rarely has more.
    inline: [(u8, FormatLine<'a>); INLINE_LINES],
    inline_len: usize,
    /// The lines after those.
    spilled: Vec<(u8, FormatLine<'a>)>,
}

/// rtpmap/fmtp lines of an m-line read without allocating.
const INLINE_LINES: usize = 12;

#[derive(Clone, Copy)]
enum FormatLine<'a> {
    /// Encoding name and clock rate.
    Rtpmap(&'a str, u32),
    /// The parameters after the payload type.
    Fmtp(&'a str),
}

impl<'a> FormatLines<'a> {
    /// Reads the lines of `media`.
    pub(crate) fn new(media: &'a Media) -> FormatLines<'a> {
        let mut lines = FormatLines {
            inline: [(0, FormatLine::Fmtp("")); INLINE_LINES],
            inline_len: 0,
            spilled: Vec::new(),
        };
        for attribute in &media.attributes {
            let Some(value) = attribute.value.as_deref() else {
                continue;
            };
            let name = trim(&attribute.attribute);
            let rtpmap = name.eq_ignore_ascii_case("rtpmap");
            if !rtpmap && !name.eq_ignore_ascii_case("fmtp") {
                continue;
            }
            let Some((number, rest)) = split_at_whitespace(trim(value)) else {
                continue;
            };
            let Ok(payload_type) = number.parse::<u8>() else {
                continue;
            };
            let line = if rtpmap {
                // `<encoding name>/<clock rate>[/<parameters>]`
                let Some((name, rest)) = split_at_byte(trim(rest), b'/') else {
                    continue;
                };
                let rate = split_at_byte(rest, b'/').map_or(rest, |(rate, _)| rate);
                let Ok(clock_rate) = trim(rate).parse::<u32>() else {
                    continue;
                };
                FormatLine::Rtpmap(trim(name), clock_rate)
            } else {
                FormatLine::Fmtp(trim(rest))
            };
            lines.push((payload_type, line));
        }
        lines
    }

    fn push(&mut self, line: (u8, FormatLine<'a>)) {
        match self.inline.get_mut(self.inline_len) {
            Some(slot) => {
                *slot = line;
                self.inline_len += 1;
            }
            None => self.spilled.push(line),
        }
    }

    fn lines(&self) -> impl Iterator<Item = &(u8, FormatLine<'a>)> {
        self.inline.iter().take(self.inline_len).chain(&self.spilled)
    }

    /// The encoding name and clock rate of `payload_type` from its first readable `a=rtpmap`.
    fn rtpmap(&self, payload_type: u8) -> Option<(&'a str, u32)> {
        self.lines().find_map(|&(number, line)| match line {
            FormatLine::Rtpmap(name, clock_rate) if number == payload_type => Some((name, clock_rate)),
            _ => None,
        })
    }

    /// The parameters of `payload_type` from its first `a=fmtp`.
    fn fmtp(&self, payload_type: u8) -> Option<&'a str> {
        self.lines().find_map(|&(number, line)| match line {
            FormatLine::Fmtp(parameters) if number == payload_type => Some(parameters),
            _ => None,
        })
    }

    /// The format of one payload type of the m-line, if we know its codec.
    pub(crate) fn format(&self, payload_type: u8) -> Option<Format> {
        Format::from_sdp(payload_type, self.rtpmap(payload_type), self.fmtp(payload_type))
    }
}

/// The known formats of an m-line in m-line order (a payload type listed twice counts once).
pub(crate) fn formats(media: &Media) -> Vec<PayloadFormat> {
    let lines = FormatLines::new(media);
    let mut formats: Vec<PayloadFormat> = Vec::new();
    for payload_type in payload_types(media) {
        if formats.iter().any(|known| known.payload_type == payload_type) {
            continue;
        }
        if let Some(format) = lines.format(payload_type) {
            formats.push(PayloadFormat { payload_type, format });
        }
    }
    formats
}

/// The direction attribute of an m-line, else of the session, else sendrecv (RFC 3264 5.1).
pub(crate) fn direction(session: &Session, media: &Media) -> Direction {
    let find = |attributes: &[Attribute]| {
        attributes
            .iter()
            .find_map(|attribute| Direction::from_attribute(trim(&attribute.attribute)))
    };
    find(&media.attributes)
        .or_else(|| find(&session.attributes))
        .unwrap_or_default()
}

/// The `a=ptime` of an m-line in milliseconds (a fractional value is cut to whole ms; zero and
/// unreadable values are ignored).
pub(crate) fn ptime(media: &Media) -> Option<u32> {
    attribute_values(&media.attributes, "ptime")
        .flatten()
        .find_map(|value| {
            let whole = value.split('.').next()?;
            trim(whole).parse::<u32>().ok().filter(|&ptime| ptime > 0)
        })
}

/// The connection of an m-line: its own c=, else the session's.
fn connection<'a>(session: &'a Session, media: &'a Media) -> Option<&'a Connection> {
    media.connections.first().or(session.connection.as_ref())
}

/// An IP literal of a connection address, with an optional `/ttl` or `/count` suffix cut off.
fn ip_literal(address: &str) -> Option<IpAddr> {
    let literal = address.split('/').next()?;
    trim(literal).parse::<IpAddr>().ok()
}

/// The address to send an m-line's media to. `Ok(None)`: the unspecified address (`0.0.0.0`,
/// RFC 2543 hold: the peer does not want to receive).
pub(crate) fn connection_address(
    session: &Session,
    media: &Media,
    index: usize,
) -> Result<Option<IpAddr>, OfferAnswerError> {
    let connection = connection(session, media).ok_or(OfferAnswerError::NoConnection { media: index })?;
    if connection.nettype != NetType::In {
        return Err(OfferAnswerError::BadAddress { media: index });
    }
    let ip = ip_literal(&connection.connection_address).ok_or(OfferAnswerError::BadAddress { media: index })?;
    if ip.is_unspecified() {
        return Ok(None);
    }
    if ip.is_multicast() || ip_is_broadcast(ip) {
        return Err(OfferAnswerError::BadAddress { media: index });
    }
    Ok(Some(ip))
}

fn ip_is_broadcast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => ip.is_broadcast(),
        IpAddr::V6(_) => false,
    }
}

/// The remote RTCP address from `a=rtcp` (RFC 3605): its port, at its own address if it
/// gives one, else at the media's connection address. `Ok(None)`: no usable `a=rtcp` (RTCP
/// goes to RTP port + 1) or no remote address.
pub(crate) fn rtcp_address(
    media: &Media,
    index: usize,
    remote: Option<IpAddr>,
) -> Result<Option<SocketAddr>, OfferAnswerError> {
    let Some(value) = attribute_values(&media.attributes, "rtcp").flatten().next() else {
        return Ok(None);
    };
    let mut fields = value.split_ascii_whitespace();
    let Some(port) = fields.next().and_then(|port| port.parse::<u16>().ok()) else {
        return Err(OfferAnswerError::BadAddress { media: index });
    };
    let address = match (fields.next(), fields.next(), fields.next()) {
        (Some(nettype), Some(_addrtype), Some(address)) if nettype.eq_ignore_ascii_case("IN") => {
            let ip = ip_literal(address).ok_or(OfferAnswerError::BadAddress { media: index })?;
            if ip.is_unspecified() {
                None
            } else if ip.is_multicast() || ip_is_broadcast(ip) {
                return Err(OfferAnswerError::BadAddress { media: index });
            } else {
                Some(ip)
            }
        }
        (None, _, _) => remote,
        _ => return Err(OfferAnswerError::BadAddress { media: index }),
    };
    if port == 0 {
        return Ok(None);
    }
    Ok(address.map(|ip| SocketAddr::new(ip, port)))
}
