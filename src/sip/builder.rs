//! Building messages: requests and responses from parts, and responses to a received request
//! (RFC 3261 section 8.2.6).
//!
//! A built message is serialised once and parsed back, so it is the same [`Message`] type the
//! parser produces and needs no separate serialiser. The builder refuses header names and values
//! that would break the framing (line breaks, non-token names).
#![deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![warn(missing_docs)]

use bytes::Bytes;

use crate::sip::headers::{HeaderName, NameAddr};
use crate::sip::message::{Message, Method, Rejection};
use crate::sip::syntax::{is_token, unfold};

/// Why a message could not be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A header name is empty or holds non-token characters.
    #[error("invalid header name {0:?}")]
    HeaderName(String),
    /// A header value, reason phrase or Request-URI holds a line break, which would break the
    /// message framing.
    #[error("line break in a header value, reason phrase or Request-URI")]
    LineBreak,
    /// The status code is outside 100..=699, or the method is not a token.
    #[error("invalid start line")]
    StartLine,
    /// Content-Length is set by the builder from the body; it may not be added by hand.
    #[error("Content-Length is computed by the builder")]
    ContentLength,
    /// The request to answer carries no Via, From, To, Call-ID or CSeq to copy.
    #[error("the request lacks a header the response must copy")]
    Unaddressable,
    /// The serialised message did not parse back (a bug, or a caller-supplied header value that
    /// the parser refuses).
    #[error("built message does not parse: {0}")]
    Parse(#[from] Box<Rejection>),
}

/// Builds a request or a response. Headers are written in the order they are added;
/// `Content-Length` is appended last, from the body.
#[derive(Clone, Debug)]
pub struct MessageBuilder {
    head: Vec<u8>,
    body: Bytes,
    error: Option<BuildError>,
}

impl MessageBuilder {
    /// Starts a request: `METHOD uri SIP/2.0`.
    pub fn request(method: Method<'_>, uri: &str) -> Self {
        let mut builder = Self::empty();
        if !method.is_valid() {
            builder.error = Some(BuildError::StartLine);
        } else if has_line_break(uri.as_bytes()) || uri.contains(' ') || uri.is_empty() {
            builder.error = Some(BuildError::LineBreak);
        }
        builder.head.extend_from_slice(method.as_str().as_bytes());
        builder.head.push(b' ');
        builder.head.extend_from_slice(uri.as_bytes());
        builder.head.extend_from_slice(b" SIP/2.0\r\n");
        builder
    }

    /// Starts a response: `SIP/2.0 status reason`.
    pub fn response(status: u16, reason: &str) -> Self {
        let mut builder = Self::empty();
        if !(100..=699).contains(&status) {
            builder.error = Some(BuildError::StartLine);
        } else if has_line_break(reason.as_bytes()) {
            builder.error = Some(BuildError::LineBreak);
        }
        builder.head.extend_from_slice(b"SIP/2.0 ");
        push_decimal(&mut builder.head, u64::from(status));
        builder.head.push(b' ');
        builder.head.extend_from_slice(reason.as_bytes());
        builder.head.extend_from_slice(b"\r\n");
        builder
    }

    fn empty() -> Self {
        Self {
            // Room for a challenge with two WWW-Authenticate fields without growing, yet below
            // 1 KiB: glibc serves larger requests from its large bins, consolidating first.
            head: Vec::with_capacity(960),
            body: Bytes::new(),
            error: None,
        }
    }

    /// Appends a header field with a known name, written in its long form.
    pub fn header(mut self, name: HeaderName, value: impl AsRef<[u8]>) -> Self {
        self.push_header(name, value.as_ref());
        self
    }

    /// Appends a header field with a known name whose value is `parts` written one after the
    /// other: the same as [`MessageBuilder::header`] with the parts joined, without building the
    /// joined value first.
    pub fn header_parts(mut self, name: HeaderName, parts: &[&[u8]]) -> Self {
        let mut parts = parts.iter();
        self.push_header_start(name, parts.next().copied().unwrap_or_default());
        for part in parts {
            self.start_header_append(b"", part);
        }
        self.head.extend_from_slice(b"\r\n");
        self
    }

    /// [`MessageBuilder::header`] through a reference (no move of the builder per field).
    pub fn push_header(&mut self, name: HeaderName, value: &[u8]) {
        self.push_header_start(name, value);
        self.head.extend_from_slice(b"\r\n");
    }

    /// [`MessageBuilder::push_header`] without the line end.
    fn push_header_start(&mut self, name: HeaderName, value: &[u8]) {
        match name {
            HeaderName::Other => {
                self.error.get_or_insert(BuildError::HeaderName(String::new()));
            }
            HeaderName::ContentLength => {
                self.error.get_or_insert(BuildError::ContentLength);
            }
            _ => {}
        }
        // Known names are tokens: only the value needs checking.
        self.start_header(name.as_str(), value);
    }

    /// Appends `separator` and `more` to the value being written by [`MessageBuilder::start_header`].
    fn start_header_append(&mut self, separator: &[u8], more: &[u8]) {
        if has_line_break(more) {
            self.error.get_or_insert(BuildError::LineBreak);
        }
        self.head.extend_from_slice(separator);
        self.head.extend_from_slice(more);
    }

    /// Writes `name: value` without the line end, so that a caller can append to the value.
    fn start_header(&mut self, name: &str, value: &[u8]) {
        if has_line_break(value) {
            self.error.get_or_insert(BuildError::LineBreak);
        }
        self.start_header_unbroken(name, value);
    }

    /// [`MessageBuilder::start_header`] of a value known to hold no line break (the output of
    /// `unfold`, which turns every CR and LF into white space), so not scanned again.
    fn start_header_unbroken(&mut self, name: &str, value: &[u8]) {
        self.head.extend_from_slice(name.as_bytes());
        self.head.extend_from_slice(b": ");
        self.head.extend_from_slice(value);
    }

    /// Appends a header field by name (for extension headers).
    pub fn raw_header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        let value = value.as_ref();
        if name.is_empty() || !name.bytes().all(is_token) {
            self.error.get_or_insert(BuildError::HeaderName(name.to_owned()));
        } else if name.eq_ignore_ascii_case("Content-Length") || name.eq_ignore_ascii_case("l") {
            self.error.get_or_insert(BuildError::ContentLength);
        } else if has_line_break(value) {
            self.error.get_or_insert(BuildError::LineBreak);
        }
        self.head.extend_from_slice(name.as_bytes());
        self.head.extend_from_slice(b": ");
        self.head.extend_from_slice(value);
        self.head.extend_from_slice(b"\r\n");
        self
    }

    /// Sets the body and its Content-Type.
    pub fn body(self, content_type: &str, body: impl Into<Bytes>) -> Self {
        let mut builder = self.header(HeaderName::ContentType, content_type);
        builder.body = body.into();
        builder
    }

    /// Serialises (adding `Content-Length`) and parses the result back.
    pub fn build(self) -> Result<Message, BuildError> {
        let bytes = self.build_bytes()?;
        Message::parse_datagram_unvalidated(bytes).map_err(|rejection| BuildError::Parse(Box::new(rejection)))
    }

    /// Serialises (adding `Content-Length`) without parsing the result back: for messages that
    /// are only sent. The builder's own checks (start line, header names, no line breaks in
    /// values, no hand-written Content-Length) still apply.
    pub fn build_bytes(self) -> Result<Bytes, BuildError> {
        if let Some(error) = self.error {
            return Err(error);
        }
        let mut out = self.head;
        out.reserve(self.body.len() + 24);
        out.extend_from_slice(b"Content-Length: ");
        push_decimal(&mut out, u64::try_from(self.body.len()).unwrap_or(u64::MAX));
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(&self.body);
        Ok(Bytes::from(out))
    }
}

fn has_line_break(bytes: &[u8]) -> bool {
    memchr::memchr2(b'\r', b'\n', bytes).is_some()
}

/// Appends `value` in decimal (no allocation, unlike `to_string`).
pub(crate) fn push_decimal(out: &mut Vec<u8>, value: u64) {
    let mut digits = [0u8; 20];
    out.extend_from_slice(decimal(value, &mut digits));
}

/// `value` in decimal, written into `digits` (no allocation).
pub(crate) fn decimal(value: u64, digits: &mut [u8; 20]) -> &[u8] {
    let mut start = digits.len();
    let mut rest = value;
    loop {
        start -= 1;
        if let Some(slot) = digits.get_mut(start) {
            // `rest % 10` is below 10.
            *slot = b'0' + (rest % 10) as u8;
        }
        rest /= 10;
        if rest == 0 || start == 0 {
            break;
        }
    }
    digits.get(start..).unwrap_or_default()
}

/// Appends an IP address as `Display` writes it, without a `format!` allocation.
fn push_ip(out: &mut Vec<u8>, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => out.extend_from_slice(crate::proto::ipv4_text(v4, &mut [0; 15]).as_bytes()),
        std::net::IpAddr::V6(v6) => {
            use std::io::Write;
            let _ = write!(out, "{v6}");
        }
    }
}

/// Appends `address` as `sent-by` text (`192.0.2.1:5060`, `[2001:db8::1]:5060`): the same text as
/// its `Display`, without the formatting machinery for IPv4 (this runs for every request we send).
pub(crate) fn push_socket_addr(out: &mut String, address: std::net::SocketAddr) {
    match address {
        std::net::SocketAddr::V4(v4) => {
            out.push_str(crate::proto::ipv4_text(*v4.ip(), &mut [0; 15]));
            out.push(':');
            out.push_str(itoa::Buffer::new().format(v4.port()));
        }
        std::net::SocketAddr::V6(v6) => {
            use std::fmt::Write;
            let _ = write!(out, "{v6}");
        }
    }
}

/// `address` as `sent-by` text; see [`push_socket_addr`].
pub(crate) fn socket_addr_text(address: std::net::SocketAddr) -> String {
    let mut out = String::with_capacity(21);
    push_socket_addr(&mut out, address);
    out
}

/// Starts a response to `request` as RFC 3261 section 8.2.6.2 requires: the Via fields (all of
/// them, in order), From, Call-ID and CSeq copied; To copied with `to_tag` added when the
/// request's To has no tag (and `to_tag` is given and the status is not 100). Values are
/// unfolded. Add further headers and a body with the returned builder.
pub fn response_to(
    request: &Message,
    status: u16,
    reason: &str,
    to_tag: Option<&str>,
) -> Result<MessageBuilder, BuildError> {
    build_response(request, status, reason, to_tag, None)
}

/// Like [`response_to`], for a request that arrived from `source`: the top Via gets
/// `received=<source IP>` when its sent-by host differs (RFC 3261 §18.2.1), and a valueless
/// `rport` is filled with the source port, `received` then always added (RFC 3581 §4), so a
/// client behind NAT learns its public address.
pub fn response_to_from(
    request: &Message,
    status: u16,
    reason: &str,
    to_tag: Option<&str>,
    source: std::net::SocketAddr,
) -> Result<MessageBuilder, BuildError> {
    build_response(request, status, reason, to_tag, Some(source))
}

/// The top Via of a response to a request from `source` (see [`response_to_from`]), appended to
/// `out`; `false` (and nothing written) when the Via does not parse (it is then echoed unchanged).
fn push_stamped_via(out: &mut Vec<u8>, raw: &[u8], source: std::net::SocketAddr) -> bool {
    let Ok(via) = crate::sip::headers::Via::parse(raw) else {
        return false;
    };
    push_stamped(out, &via, source);
    true
}

/// Writes `via` stamped for `source` (see [`response_to_from`]).
fn push_stamped(out: &mut Vec<u8>, via: &crate::sip::headers::Via<'_>, source: std::net::SocketAddr) {
    out.extend_from_slice(via.protocol_name().as_bytes());
    out.push(b'/');
    out.extend_from_slice(via.protocol_version().as_bytes());
    out.push(b'/');
    out.extend_from_slice(via.transport().as_bytes());
    out.push(b' ');
    out.extend_from_slice(via.host_raw().as_bytes());
    if let Some(port) = via.port() {
        out.push(b':');
        push_decimal(out, u64::from(port));
    }
    let mut rport = false;
    for param in via.params().iter_raw() {
        if param.name.eq_ignore_ascii_case(b"received") {
            continue;
        }
        out.push(b';');
        if param.name.eq_ignore_ascii_case(b"rport") && param.value.is_none() {
            rport = true;
            out.extend_from_slice(b"rport=");
            push_decimal(out, u64::from(source.port()));
            continue;
        }
        out.extend_from_slice(param.name);
        if let Some(value) = param.value {
            out.push(b'=');
            out.extend_from_slice(value);
        }
    }
    if rport || via.host().ip() != Some(source.ip()) {
        out.extend_from_slice(b";received=");
        push_ip(out, source.ip());
    }
}

fn build_response(
    request: &Message,
    status: u16,
    reason: &str,
    to_tag: Option<&str>,
    source: Option<std::net::SocketAddr>,
) -> Result<MessageBuilder, BuildError> {
    if !request.can_address_response() {
        return Err(BuildError::Unaddressable);
    }
    let mut builder = MessageBuilder::response(status, reason);
    for (index, via) in request.values_of(HeaderName::Via).enumerate() {
        let value = unfold(via);
        if let (Some(source), 0) = (source, index) {
            // A validated request's top Via, alone in its field, was parsed already.
            if let Some(top) = request.top_via_alone().then(|| request.top_via().ok()).flatten() {
                builder.head.extend_from_slice(b"Via: ");
                push_stamped(&mut builder.head, &top, source);
                builder.head.extend_from_slice(b"\r\n");
                continue;
            }
            let mark = builder.head.len();
            builder.head.extend_from_slice(b"Via: ");
            if push_stamped_via(&mut builder.head, &value, source) {
                builder.head.extend_from_slice(b"\r\n");
                continue;
            }
            builder.head.truncate(mark);
        }
        builder.start_header_unbroken(HeaderName::Via.as_str(), &value);
        builder.head.extend_from_slice(b"\r\n");
    }
    for name in [HeaderName::From, HeaderName::To, HeaderName::CallId, HeaderName::CSeq] {
        let Some(value) = request.first_value(name) else {
            return Err(BuildError::Unaddressable);
        };
        let value = unfold(value);
        builder.start_header_unbroken(name.as_str(), &value);
        if name == HeaderName::To && status > 100 {
            // Only add a tag when the To value parses and has none; a malformed To is echoed.
            if let Some(tag) = to_tag {
                let untagged = match request.to_tagged() {
                    Some(tagged) => !tagged,
                    None => NameAddr::parse(&value).is_ok_and(|to| to.tag().is_none()),
                };
                if untagged {
                    builder.start_header_append(b";tag=", tag.as_bytes());
                }
            }
        }
        builder.head.extend_from_slice(b"\r\n");
    }
    Ok(builder)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn builds_a_request() {
        let message = MessageBuilder::request(Method::Options, "sip:bob@example.com")
            .header(HeaderName::Via, "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKabc")
            .header(HeaderName::From, "<sip:alice@example.com>;tag=1")
            .header(HeaderName::To, "<sip:bob@example.com>")
            .header(HeaderName::CallId, "abc@host")
            .header(HeaderName::CSeq, "1 OPTIONS")
            .header(HeaderName::MaxForwards, "70")
            .raw_header("Ptt-Extension", "floor;priority=1")
            .body("text/plain", &b"hello"[..])
            .build()
            .expect("builds");
        message.validate().expect("valid");
        assert_eq!(message.content_length(), Ok(Some(5)));
        assert_eq!(message.body(), b"hello");
    }

    #[test]
    fn header_parts_is_header_with_the_parts_joined() {
        let joined = MessageBuilder::response(200, "OK")
            .header(HeaderName::From, "<sip:a@h>;tag=1")
            .build_bytes();
        let parts = MessageBuilder::response(200, "OK")
            .header_parts(HeaderName::From, &[b"<sip:a@h>", b";tag=", b"1"])
            .build_bytes();
        assert_eq!(joined, parts);
        let broken = MessageBuilder::response(200, "OK").header_parts(HeaderName::From, &[b"<sip:a@h>", b"\r\nX: y"]);
        assert_eq!(broken.build_bytes(), Err(BuildError::LineBreak));
        let empty = MessageBuilder::response(200, "OK").header_parts(HeaderName::Subject, &[]);
        let plain = MessageBuilder::response(200, "OK").header(HeaderName::Subject, "");
        assert_eq!(empty.build_bytes(), plain.build_bytes());
    }

    #[test]
    fn response_to_from_fills_received_and_rport() {
        let request = MessageBuilder::request(Method::Options, "sip:tcf@127.0.0.1")
            .header(HeaderName::Via, "SIP/2.0/UDP 10.0.0.7:5060;branch=z9hG4bKnat;rport")
            .header(HeaderName::Via, "SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKsecond")
            .header(HeaderName::From, "<sip:1001@x>;tag=1")
            .header(HeaderName::To, "<sip:tcf@x>")
            .header(HeaderName::CallId, "c")
            .header(HeaderName::CSeq, "1 OPTIONS")
            .build()
            .expect("builds");
        let source: std::net::SocketAddr = "127.0.0.9:40123".parse().expect("address");
        let response = response_to_from(&request, 200, "OK", Some("t"), source)
            .expect("builds")
            .build()
            .expect("ok");
        let vias: Vec<String> = response
            .headers_of(HeaderName::Via)
            .map(|via| String::from_utf8_lossy(&via.unfolded()).into_owned())
            .collect();
        let expected = [
            "SIP/2.0/UDP 10.0.0.7:5060;branch=z9hG4bKnat;rport=40123;received=127.0.0.9",
            // Only the top Via is ours to stamp.
            "SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKsecond",
        ];
        assert_eq!(vias, expected);
        let top = response.top_via().expect("parses");
        assert_eq!(top.rport(), Some(Some(40123)));
        // Same host, no rport: nothing to add.
        let plain = MessageBuilder::request(Method::Options, "sip:tcf@127.0.0.1")
            .header(HeaderName::Via, "SIP/2.0/TCP 127.0.0.9:40123;branch=z9hG4bKplain")
            .header(HeaderName::From, "<sip:1001@x>;tag=1")
            .header(HeaderName::To, "<sip:tcf@x>")
            .header(HeaderName::CallId, "c")
            .header(HeaderName::CSeq, "1 OPTIONS")
            .build()
            .expect("builds");
        let response = response_to_from(&plain, 200, "OK", None, source)
            .expect("builds")
            .build()
            .expect("ok");
        let via = response.header(HeaderName::Via).expect("via");
        assert_eq!(&via.unfolded()[..], b"SIP/2.0/TCP 127.0.0.9:40123;branch=z9hG4bKplain");
    }

    #[test]
    fn build_bytes_is_what_build_parses() {
        let builder = MessageBuilder::response(200, "OK")
            .header(HeaderName::Via, "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKabc")
            .header(HeaderName::CSeq, "1 OPTIONS");
        let bytes = builder.clone().build_bytes().expect("builds");
        assert_eq!(&bytes[..], builder.build().expect("parses").as_bytes());
    }

    #[test]
    fn refuses_injection() {
        let result = MessageBuilder::response(200, "OK")
            .raw_header("X-Evil", "a\r\nVia: injected")
            .build();
        assert_eq!(result.unwrap_err(), BuildError::LineBreak);
        assert!(MessageBuilder::response(200, "OK\r\n").build().is_err());
        assert!(MessageBuilder::response(99, "x").build().is_err());
        assert!(MessageBuilder::response(200, "OK")
            .raw_header("Bad Name", "x")
            .build()
            .is_err());
        assert!(MessageBuilder::response(200, "OK")
            .raw_header("l", "3")
            .build()
            .is_err());
    }

    #[test]
    fn response_copies_the_addressing_fields() {
        let request = Message::parse_datagram(Bytes::from_static(
            b"BYE sip:bob@192.0.2.4 SIP/2.0\r\n\
Via: SIP/2.0/UDP p1.example.com;branch=z9hG4bK1, SIP/2.0/UDP\r\n 192.0.2.1;branch=z9hG4bK2\r\n\
v: SIP/2.0/TCP 192.0.2.9;branch=z9hG4bK3\r\n\
f: <sip:alice@example.com>;tag=a\r\nt: <sip:bob@example.com>\r\ni: cid\r\nCSeq: 7 BYE\r\nl: 0\r\n\r\n",
        ))
        .expect("valid");
        let response = response_to(&request, 200, "OK", Some("b"))
            .expect("addressable")
            .build()
            .expect("builds");
        let branches: Vec<_> = response
            .vias()
            .map(|via| via.expect("via").branch().map(str::to_owned))
            .collect();
        assert_eq!(
            branches,
            vec![
                Some("z9hG4bK1".into()),
                Some("z9hG4bK2".into()),
                Some("z9hG4bK3".into())
            ]
        );
        assert_eq!(response.to().unwrap().tag(), Some("b"));
        assert_eq!(response.from().unwrap().tag(), Some("a"));
        assert_eq!(response.cseq().unwrap().number, 7);
        response.validate().expect("valid response");

        let trying = response_to(&request, 100, "Trying", Some("b"))
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(trying.to().unwrap().tag(), None);
    }

    #[test]
    fn socket_addr_text_matches_display() {
        for text in [
            "0.0.0.0:0",
            "192.0.2.1:5060",
            "255.255.255.255:65535",
            "10.0.0.9:9",
            "[2001:db8::1]:5060",
            "[::1]:1",
        ] {
            let address: std::net::SocketAddr = text.parse().unwrap();
            assert_eq!(socket_addr_text(address), address.to_string());
            let mut out = String::from("x ");
            push_socket_addr(&mut out, address);
            assert_eq!(out, format!("x {address}"));
        }
    }
}
