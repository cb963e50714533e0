//! The SIP message type: a received buffer plus an index of its start line, header fields and
//! body, and the parser that builds it.
//!
//! Parsing happens in two steps, both reachable separately:
//!
//! 1. **Structure** ([`Message::parse_datagram_unvalidated`], and the stream framer): find the
//!    start line, split the header block into `(name, value)` byte ranges, frame the body with
//!    Content-Length. One `Vec` of header entries is the only allocation.
//! 2. **Validation** ([`Message::validate`]): what a UAS must check before acting on a message
//!    (RFC 3261 section 8.2): version, the mandatory header fields, single-valued fields
//!    appearing once, the typed grammar of the fields the node relies on, and the CSeq method.
//!
//! [`Message::parse_datagram`] runs both. A failure comes back as a [`Rejection`], which keeps
//! the partly parsed request when there is one, so that the node can answer it
//! ([`Rejection::action`], [`Rejection::response`]) or drop it.
#![deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![warn(missing_docs)]

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;

use crate::sip::builder::{response_to, MessageBuilder};
use crate::sip::headers::{
    parse_call_id, parse_number, AuthHeader, CSeq, Contact, ContactList, HeaderError, HeaderName, MediaType, NameAddr,
    PttExtension, SipDate, Via, ViaParts,
};
use crate::sip::syntax::{ascii_str, is_token, is_ws, split_list, substr, trim_ws, unfold};
use crate::sip::uri::{Host, Uri};

/// Header fields a message may carry before the parser gives up on it.
pub const MAX_HEADERS: usize = 256;

// ---------------------------------------------------------------------------------------------
// Method
// ---------------------------------------------------------------------------------------------

/// A request method. Methods are case-sensitive: `invite` is an extension method, not INVITE.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method<'a> {
    /// INVITE (RFC 3261).
    Invite,
    /// ACK (RFC 3261).
    Ack,
    /// BYE (RFC 3261).
    Bye,
    /// CANCEL (RFC 3261).
    Cancel,
    /// OPTIONS (RFC 3261).
    Options,
    /// REGISTER (RFC 3261).
    Register,
    /// INFO (RFC 6086).
    Info,
    /// MESSAGE (RFC 3428).
    Message,
    /// SUBSCRIBE (RFC 6665).
    Subscribe,
    /// NOTIFY (RFC 6665).
    Notify,
    /// PRACK (RFC 3262).
    Prack,
    /// UPDATE (RFC 3311).
    Update,
    /// REFER (RFC 3515).
    Refer,
    /// PUBLISH (RFC 3903).
    Publish,
    /// Any other method token; the node answers it with 501.
    Extension(&'a str),
}

impl<'a> Method<'a> {
    /// Maps a method token to a method; unknown tokens become [`Method::Extension`].
    pub fn from_token(token: &'a str) -> Self {
        match token {
            "INVITE" => Method::Invite,
            "ACK" => Method::Ack,
            "BYE" => Method::Bye,
            "CANCEL" => Method::Cancel,
            "OPTIONS" => Method::Options,
            "REGISTER" => Method::Register,
            "INFO" => Method::Info,
            "MESSAGE" => Method::Message,
            "SUBSCRIBE" => Method::Subscribe,
            "NOTIFY" => Method::Notify,
            "PRACK" => Method::Prack,
            "UPDATE" => Method::Update,
            "REFER" => Method::Refer,
            "PUBLISH" => Method::Publish,
            other => Method::Extension(other),
        }
    }

    /// The method token.
    pub fn as_str(&self) -> &'a str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Options => "OPTIONS",
            Method::Register => "REGISTER",
            Method::Info => "INFO",
            Method::Message => "MESSAGE",
            Method::Subscribe => "SUBSCRIBE",
            Method::Notify => "NOTIFY",
            Method::Prack => "PRACK",
            Method::Update => "UPDATE",
            Method::Refer => "REFER",
            Method::Publish => "PUBLISH",
            Method::Extension(token) => token,
        }
    }

    /// True when the token is a valid method token (`token` characters, non-empty).
    pub fn is_valid(&self) -> bool {
        let token = self.as_str();
        !token.is_empty() && token.bytes().all(is_token)
    }
}

impl fmt::Display for Method<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Why a message was refused. Each variant belongs to one of three kinds, which
/// [`response_for_error`] turns into an action:
///
/// - the buffer is not SIP, or its start line cannot be understood: drop it;
/// - the request is malformed but its Via, From, To, Call-ID and CSeq can address a response:
///   answer 400 (505 for the version), naming the problem in the reason phrase;
/// - a typed header field does not follow its grammar ([`ParseError::InvalidHeader`]): same
///   rule, 400 when the response can be addressed.
///
/// Responses are never answered; a malformed response is always dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The buffer holds nothing but line breaks (a keep-alive) or nothing at all.
    #[error("empty message")]
    Empty,
    /// The first line is neither a SIP request line nor a SIP status line.
    #[error("not a SIP message")]
    NotSip,
    /// A status line whose code is not three digits from 100 to 699.
    #[error("malformed status line")]
    BadStatusLine,
    /// The request line has extra white space around or between its three elements, or a method
    /// that is not a token.
    #[error("malformed request line")]
    MalformedRequestLine,
    /// The Request-URI does not parse, or carries URI headers (`?...`), which it may not.
    #[error("invalid Request-URI")]
    InvalidRequestUri,
    /// The SIP version is not 2.0.
    #[error("unsupported SIP version")]
    UnsupportedVersion,
    /// The header block ends without the empty line that closes it.
    #[error("header block not terminated")]
    UnterminatedHeaders,
    /// A header line is not `name: value`.
    #[error("malformed header line")]
    MalformedHeaderLine,
    /// More than [`MAX_HEADERS`] header fields.
    #[error("too many header fields")]
    TooManyHeaders,
    /// A mandatory header field is absent.
    #[error("missing {0} header")]
    MissingHeader(HeaderName),
    /// A header field that may appear only once appears more than once.
    #[error("more than one {0} header")]
    DuplicateHeader(HeaderName),
    /// A header field value does not follow the field's grammar.
    #[error("malformed {name} header: {error}")]
    InvalidHeader {
        /// The field.
        name: HeaderName,
        /// What is wrong with it.
        error: HeaderError,
    },
    /// Content-Length promises more body than the datagram holds (RFC 4475 clerr).
    #[error("Content-Length larger than the message")]
    ContentLengthTooLarge,
    /// The CSeq method differs from the request method (RFC 4475 mismatch01, mismatch02).
    #[error("CSeq method does not match the request method")]
    CSeqMethodMismatch,
}

impl ParseError {
    /// The status code to answer a request with, or `None` when the message must be dropped
    /// whatever it holds.
    pub fn status_code(&self) -> Option<u16> {
        match self {
            ParseError::Empty | ParseError::NotSip | ParseError::BadStatusLine => None,
            ParseError::UnsupportedVersion => Some(505),
            _ => Some(400),
        }
    }

    /// A reason phrase naming the problem, for the error response.
    pub fn reason_phrase(&self) -> Cow<'static, str> {
        match self {
            ParseError::UnsupportedVersion => Cow::Borrowed("Version Not Supported"),
            ParseError::MalformedRequestLine => Cow::Borrowed("Bad Request - Malformed Request-Line"),
            ParseError::InvalidRequestUri => Cow::Borrowed("Bad Request - Malformed Request-URI"),
            ParseError::UnterminatedHeaders => Cow::Borrowed("Bad Request - Header Block Not Terminated"),
            ParseError::MalformedHeaderLine => Cow::Borrowed("Bad Request - Malformed Header Line"),
            ParseError::TooManyHeaders => Cow::Borrowed("Bad Request - Too Many Header Fields"),
            ParseError::MissingHeader(name) => Cow::Owned(format!("Bad Request - Missing {name}")),
            ParseError::DuplicateHeader(name) => Cow::Owned(format!("Bad Request - Multiple {name} Values")),
            ParseError::InvalidHeader { name, .. } => Cow::Owned(format!("Bad Request - Malformed {name}")),
            ParseError::ContentLengthTooLarge => Cow::Borrowed("Bad Request - Content-Length Exceeds Message"),
            ParseError::CSeqMethodMismatch => Cow::Borrowed("Bad Request - CSeq Method Mismatch"),
            ParseError::Empty | ParseError::NotSip | ParseError::BadStatusLine => Cow::Borrowed("Bad Request"),
        }
    }
}

/// What the node should do with a message that failed to parse or validate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ErrorAction {
    /// Discard it silently (count it).
    Drop,
    /// Answer with this status and reason phrase (build it with [`Rejection::response`]).
    Respond {
        /// 400 or 505.
        status: u16,
        /// Names what is wrong.
        reason: Cow<'static, str>,
    },
}

/// Decides between answering and dropping: a request is answered when the error allows it and
/// the request carries what a response must copy (Via, From, To, Call-ID, CSeq; RFC 3261
/// section 8.2.6.2). ACKs and responses are never answered.
pub fn response_for_error(error: &ParseError, message: Option<&Message>) -> ErrorAction {
    let Some(status) = error.status_code() else {
        return ErrorAction::Drop;
    };
    let Some(message) = message else {
        return ErrorAction::Drop;
    };
    let answerable =
        matches!(message.method(), Some(method) if method != Method::Ack) && message.can_address_response();
    if answerable {
        ErrorAction::Respond {
            status,
            reason: error.reason_phrase(),
        }
    } else {
        ErrorAction::Drop
    }
}

/// A message that failed to parse or validate, with what could be parsed of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    error: ParseError,
    message: Option<Box<Message>>,
}

impl Rejection {
    pub(crate) fn new(error: ParseError, message: Option<Message>) -> Self {
        Self {
            error,
            message: message.map(Box::new),
        }
    }

    /// What is wrong.
    pub fn error(&self) -> ParseError {
        self.error
    }

    /// The partly parsed message, when the start line and header block could be indexed.
    pub fn message(&self) -> Option<&Message> {
        self.message.as_deref()
    }

    /// Answer or drop; see [`response_for_error`].
    pub fn action(&self) -> ErrorAction {
        response_for_error(&self.error, self.message())
    }

    /// Builds the error response (RFC 3261 section 8.2.6) when [`Rejection::action`] says to
    /// answer. `to_tag` is added to To when the request has no tag; the caller generates it
    /// (this module has no randomness).
    pub fn response(&self, to_tag: &str) -> Option<Message> {
        let ErrorAction::Respond { status, reason } = self.action() else {
            return None;
        };
        let request = self.message()?;
        response_to(request, status, &reason, Some(to_tag))
            .and_then(MessageBuilder::build)
            .ok()
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.error, formatter)
    }
}

impl std::error::Error for Rejection {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

// ---------------------------------------------------------------------------------------------
// The message
// ---------------------------------------------------------------------------------------------

/// A byte range within the message buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
struct Span {
    start: usize,
    end: usize,
}

impl Span {
    fn new(start: usize, end: usize) -> Self {
        Self {
            start,
            end: end.max(start),
        }
    }

    fn len(&self) -> usize {
        self.end - self.start
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StartSpans {
    Request {
        method: Span,
        uri: Span,
        version: Span,
        /// Extra white space in the request line (RFC 4475 lwsstart, trws).
        irregular: bool,
    },
    Response {
        version: Span,
        code: u16,
        reason: Span,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct HeaderEntry {
    name: HeaderName,
    name_span: Span,
    value: Span,
}

/// The start line of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartLine<'a> {
    /// `Method SP Request-URI SP SIP-Version`.
    Request {
        /// The method.
        method: Method<'a>,
        /// The Request-URI as received (parse it with [`Message::request_uri`]).
        uri: &'a [u8],
        /// The SIP version as received (`SIP/2.0`).
        version: &'a str,
    },
    /// `SIP-Version SP Status-Code SP Reason-Phrase`.
    Response {
        /// The SIP version as received.
        version: &'a str,
        /// The status code, 100 to 699.
        code: u16,
        /// The reason phrase as received (UTF-8 text, possibly empty).
        reason: &'a [u8],
    },
}

/// One header field as received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header<'a> {
    /// The resolved name.
    pub name: HeaderName,
    /// The name as received (for example `v`, `VIA` or an extension name).
    pub raw_name: &'a str,
    /// The value as received: leading and trailing white space removed, folds kept.
    pub value: &'a [u8],
}

impl<'a> Header<'a> {
    /// The value with folded lines and runs of white space collapsed to one space.
    pub fn unfolded(&self) -> Cow<'a, [u8]> {
        unfold(self.value)
    }

    /// The unfolded value as text, when it is valid UTF-8.
    pub fn value_str(&self) -> Option<Cow<'a, str>> {
        match self.unfolded() {
            Cow::Borrowed(bytes) => std::str::from_utf8(bytes).ok().map(Cow::Borrowed),
            Cow::Owned(bytes) => String::from_utf8(bytes).ok().map(Cow::Owned),
        }
    }
}

/// How the body of a message is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    /// A UDP datagram: Content-Length may be absent (the body runs to the end) or smaller than
    /// what follows (the rest is ignored, RFC 3261 section 18.3).
    Datagram,
    /// A message cut out of a stream by the framer: the body is everything after the header
    /// block, and Content-Length, which is mandatory, has already been checked against it.
    Framed,
}

/// A parsed SIP message over an owned, shared buffer. Cloning is cheap (the buffer is
/// reference-counted); typed accessors borrow from it.
#[derive(Clone)]
pub struct Message {
    buffer: Bytes,
    start: StartSpans,
    headers: Vec<HeaderEntry>,
    body: Span,
    /// What a successful validation parsed of the fields read on every request, so that they
    /// are not parsed again (`None`: not validated, or by [`Message::validate`] alone).
    facts: Option<Box<Facts>>,
}

/// Two messages are equal when their bytes and index are; recorded facts follow from those.
impl PartialEq for Message {
    fn eq(&self, other: &Self) -> bool {
        self.buffer == other.buffer
            && self.start == other.start
            && self.headers == other.headers
            && self.body == other.body
    }
}

impl Eq for Message {}

/// The parts of To and Contact that [`Message::validate`] parses anyway, as spans.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Facts {
    /// The Request-URI parsed and is a `sip:`/`sips:` URI (false for other schemes and for
    /// responses).
    request_uri_sip: bool,
    /// To carries a `tag` parameter.
    to_tagged: bool,
    /// The `tag` parameters of To and From.
    to_tag: TagFact,
    from_tag: TagFact,
    /// The To URI is `sip:`/`sips:`, and its user part.
    to_sip: bool,
    to_user: Option<Span>,
    /// The first Contact address.
    contact: ContactFacts,
    /// The top Via, when its header field holds it alone on one line.
    top_via: Option<ViaSpans>,
}

/// A parsed Via as spans of the buffer (see [`Via::parts`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ViaSpans {
    protocol_name: Span,
    protocol_version: Span,
    transport: Span,
    host: HostSpan,
    host_raw: Span,
    port: Option<u16>,
    params: Span,
    branch: Option<Span>,
    rport: Option<Option<u16>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HostSpan {
    Name(Span),
    V4(std::net::Ipv4Addr),
    V6(std::net::Ipv6Addr),
}

/// A `tag` parameter as validation found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TagFact {
    /// No tag (or one that is not ASCII, which [`NameAddr::tag`] does not return either).
    Absent,
    /// The tag's value.
    At(Span),
    /// Not recorded (a value outside the buffer): parse again.
    Unknown,
}

impl TagFact {
    fn of(message: &Message, address: &NameAddr<'_>) -> TagFact {
        match address.tag() {
            None => TagFact::Absent,
            Some(tag) => message.span_of(tag.as_bytes()).map_or(TagFact::Unknown, TagFact::At),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ContactFacts {
    /// `Contact: *`.
    Star,
    /// No Contact.
    Absent,
    /// The first address: its URI, and its `expires` parameter (`Some(None)`: out of range).
    Address { uri: Span, expires: Option<Option<u32>> },
}

/// The first Contact of a request, as a registrar reads it ([`Message::first_contact`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirstContact<'a> {
    /// `Contact: *` (remove every binding).
    Star,
    /// No Contact header field.
    Absent,
    /// The first address.
    Address {
        /// Its URI, as received.
        uri: &'a str,
        /// Its `expires` parameter; `Err(OutOfRange)` when the digits overflow a `u32`.
        expires: Option<Result<u32, HeaderError>>,
    },
}

impl fmt::Debug for Message {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Message")
            .field("start_line", &self.start_line())
            .field("headers", &self.headers.len())
            .field("body_len", &self.body.len())
            .finish()
    }
}

impl Message {
    /// Parses and validates a UDP datagram. On success the message is ready for the transaction
    /// layer; on failure the [`Rejection`] says whether to answer 400/505 or drop.
    pub fn parse_datagram(datagram: Bytes) -> Result<Message, Rejection> {
        Self::parse_datagram_unvalidated(datagram)?.validated()
    }

    /// Validates, keeping what validation parsed of To and Contact.
    fn validated(mut self) -> Result<Message, Rejection> {
        match self.validate_recording() {
            Ok(facts) => {
                self.facts = Some(Box::new(facts));
                Ok(self)
            }
            Err(error) => Err(Rejection::new(error, Some(self))),
        }
    }

    /// Indexes a UDP datagram without [`Message::validate`]: the start line is classified, the
    /// header block split and the body framed; header values, the SIP version and irregular
    /// request lines (extra white space, a non-token method) are left to `validate`.
    pub fn parse_datagram_unvalidated(datagram: Bytes) -> Result<Message, Rejection> {
        parse_structure(datagram, Framing::Datagram)
    }

    pub(crate) fn parse_framed(message: Bytes) -> Result<Message, Rejection> {
        parse_structure(message, Framing::Framed)?.validated()
    }

    fn slice(&self, span: Span) -> &[u8] {
        self.buffer.get(span.start..span.end).unwrap_or_default()
    }

    /// The span of `part`, a slice borrowed from this message's buffer (`None` otherwise).
    fn span_of(&self, part: &[u8]) -> Option<Span> {
        let start = (part.as_ptr() as usize).checked_sub(self.buffer.as_ptr() as usize)?;
        let end = start.checked_add(part.len())?;
        (end <= self.buffer.len()).then_some(Span { start, end })
    }

    fn slice_str(&self, span: Span) -> &str {
        ascii_str(self.slice(span)).unwrap_or_default()
    }

    // ---- raw access --------------------------------------------------------------------------

    /// The message exactly as received, from its start line to the end of its body (leading
    /// keep-alive line breaks and bytes after the body are not included).
    pub fn as_bytes(&self) -> &[u8] {
        &self.buffer
    }

    /// The same bytes as a shared buffer, for zero-copy forwarding.
    pub fn to_bytes(&self) -> Bytes {
        self.buffer.clone()
    }

    /// The start line.
    pub fn start_line(&self) -> StartLine<'_> {
        match self.start {
            StartSpans::Request {
                method, uri, version, ..
            } => StartLine::Request {
                method: Method::from_token(self.slice_str(method)),
                uri: self.slice(uri),
                version: self.slice_str(version),
            },
            StartSpans::Response { version, code, reason } => StartLine::Response {
                version: self.slice_str(version),
                code,
                reason: self.slice(reason),
            },
        }
    }

    /// True for a request.
    pub fn is_request(&self) -> bool {
        matches!(self.start, StartSpans::Request { .. })
    }

    /// The method of a request.
    pub fn method(&self) -> Option<Method<'_>> {
        match self.start {
            StartSpans::Request { method, .. } => Some(Method::from_token(self.slice_str(method))),
            StartSpans::Response { .. } => None,
        }
    }

    /// The Request-URI of a request, as received.
    pub fn request_uri_raw(&self) -> Option<&[u8]> {
        match self.start {
            StartSpans::Request { uri, .. } => Some(self.slice(uri)),
            StartSpans::Response { .. } => None,
        }
    }

    /// The parsed Request-URI of a request.
    pub fn request_uri(&self) -> Option<Result<Uri<'_>, HeaderError>> {
        self.request_uri_raw()
            .map(|raw| Uri::parse(raw).map_err(HeaderError::Uri))
    }

    /// Whether the Request-URI of a request parses as a `sip:`/`sips:` URI (`Some(false)`: it
    /// does not parse, or has another scheme; `None` for a response). Taken from the
    /// validation's parse when there was one.
    pub fn request_uri_is_sip(&self) -> Option<bool> {
        if !self.is_request() {
            return None;
        }
        if let Some(facts) = &self.facts {
            return Some(facts.request_uri_sip);
        }
        self.request_uri()
            .map(|uri| uri.is_ok_and(|uri| uri.as_sip().is_some()))
    }

    /// The status code of a response.
    pub fn status(&self) -> Option<u16> {
        match self.start {
            StartSpans::Response { code, .. } => Some(code),
            StartSpans::Request { .. } => None,
        }
    }

    /// The reason phrase of a response, as received.
    pub fn reason_phrase(&self) -> Option<&[u8]> {
        match self.start {
            StartSpans::Response { reason, .. } => Some(self.slice(reason)),
            StartSpans::Request { .. } => None,
        }
    }

    /// The SIP version as received (`SIP/2.0`).
    pub fn version(&self) -> &str {
        match self.start {
            StartSpans::Request { version, .. } | StartSpans::Response { version, .. } => self.slice_str(version),
        }
    }

    /// All header fields in order.
    pub fn headers(&self) -> impl Iterator<Item = Header<'_>> + '_ {
        self.headers.iter().map(|entry| self.header_at(entry))
    }

    fn header_at(&self, entry: &HeaderEntry) -> Header<'_> {
        Header {
            name: entry.name,
            raw_name: self.slice_str(entry.name_span),
            value: self.slice(entry.value),
        }
    }

    /// The header fields named `name`, in order. For [`HeaderName::Other`] this yields every
    /// extension header; use [`Message::headers_named`] to pick one by its text.
    pub fn headers_of(&self, name: HeaderName) -> impl Iterator<Item = Header<'_>> + '_ {
        self.headers
            .iter()
            .filter(move |entry| entry.name == name)
            .map(|entry| self.header_at(entry))
    }

    /// The header fields whose name matches `name` (long or compact form, ASCII
    /// case-insensitive). Works for extension headers such as `Ptt-Extension` or
    /// `NewFangledHeader`.
    pub fn headers_named<'s>(&'s self, name: &'s str) -> impl Iterator<Item = Header<'s>> + 's {
        let known = HeaderName::from_bytes(name.as_bytes());
        self.headers().filter(move |header| {
            if known == HeaderName::Other {
                header.name == HeaderName::Other && header.raw_name.eq_ignore_ascii_case(name)
            } else {
                header.name == known
            }
        })
    }

    /// The first header field named `name`.
    pub fn header(&self, name: HeaderName) -> Option<Header<'_>> {
        self.headers_of(name).next()
    }

    /// The values of the header fields named `name`, in order (no name text looked at).
    pub(crate) fn values_of(&self, name: HeaderName) -> impl Iterator<Item = &[u8]> + '_ {
        self.headers
            .iter()
            .filter(move |entry| entry.name == name)
            .map(|entry| self.slice(entry.value))
    }

    /// The first `name` field's value unfolded, as text when it is UTF-8: what
    /// `header(name)?.value_str()` gives, without looking at the field's name text.
    pub(crate) fn first_value_str(&self, name: HeaderName) -> Option<Cow<'_, str>> {
        match unfold(self.first_value(name)?) {
            Cow::Borrowed(bytes) => std::str::from_utf8(bytes).ok().map(Cow::Borrowed),
            Cow::Owned(bytes) => String::from_utf8(bytes).ok().map(Cow::Owned),
        }
    }

    /// The value of the first header field named `name`.
    pub(crate) fn first_value(&self, name: HeaderName) -> Option<&[u8]> {
        self.values_of(name).next()
    }

    /// The list elements of every `name` header field, split at commas outside quotes and angle
    /// brackets, trimmed, empty elements skipped. For Accept, Allow, Supported, Require,
    /// Proxy-Require and the like.
    pub fn list_values(&self, name: HeaderName) -> impl Iterator<Item = &[u8]> + '_ {
        self.values_of(name)
            .flat_map(split_list)
            .filter(|item| !item.is_empty())
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        self.slice(self.body)
    }

    // ---- typed access ------------------------------------------------------------------------

    fn single(&self, name: HeaderName) -> Result<&[u8], HeaderError> {
        self.first_value(name).ok_or(HeaderError::Missing)
    }

    /// Every Via value, top first, across all Via header fields and comma-separated values.
    pub fn vias(&self) -> impl Iterator<Item = Result<Via<'_>, HeaderError>> + '_ {
        self.values_of(HeaderName::Via).flat_map(split_list).map(|item| {
            if item.is_empty() {
                Err(HeaderError::Empty)
            } else {
                Via::parse(item)
            }
        })
    }

    /// The topmost Via value (from the validation's parse when there was one).
    pub fn top_via(&self) -> Result<Via<'_>, HeaderError> {
        if let Some(spans) = self.facts.as_ref().and_then(|facts| facts.top_via) {
            return Ok(self.via_from_spans(&spans));
        }
        self.vias().next().unwrap_or(Err(HeaderError::Missing))
    }

    /// Whether the top Via header field holds one Via on one line (then [`Message::top_via`]
    /// is that field's whole value).
    pub(crate) fn top_via_alone(&self) -> bool {
        self.facts.as_ref().is_some_and(|facts| facts.top_via.is_some())
    }

    fn via_from_spans(&self, spans: &ViaSpans) -> Via<'_> {
        // One UTF-8 check for the whole Via (its parts were ASCII when it was parsed), then
        // each part borrowed from it.
        // The branch, in the parameters that follow, is part of it when there is one.
        let end = spans
            .branch
            .map_or(spans.params.start, |branch| branch.end.max(spans.params.start));
        let whole = self.slice_str(Span::new(spans.protocol_name.start, end));
        let part = |span: Span| substr(whole, self.slice(span)).unwrap_or_else(|| self.slice_str(span));
        Via::from_parts(ViaParts {
            protocol_name: part(spans.protocol_name),
            protocol_version: part(spans.protocol_version),
            transport: part(spans.transport),
            host: match spans.host {
                HostSpan::Name(name) => Host::Name(part(name)),
                HostSpan::V4(address) => Host::V4(address),
                HostSpan::V6(address) => Host::V6(address),
            },
            host_raw: part(spans.host_raw),
            port: spans.port,
            params: self.slice(spans.params),
            branch: spans.branch.map(part),
            rport: spans.rport,
        })
    }

    /// The spans of `via`, a Via parsed from this message's buffer.
    fn via_spans(&self, via: &Via<'_>) -> Option<ViaSpans> {
        let parts = via.parts();
        let span = |text: &str| self.span_of(text.as_bytes());
        Some(ViaSpans {
            protocol_name: span(parts.protocol_name)?,
            protocol_version: span(parts.protocol_version)?,
            transport: span(parts.transport)?,
            host: match parts.host {
                Host::Name(name) => HostSpan::Name(span(name)?),
                Host::V4(address) => HostSpan::V4(address),
                Host::V6(address) => HostSpan::V6(address),
            },
            host_raw: span(parts.host_raw)?,
            port: parts.port,
            params: self.span_of(parts.params)?,
            branch: match parts.branch {
                Some(branch) => Some(span(branch)?),
                None => None,
            },
            rport: parts.rport,
        })
    }

    /// From.
    pub fn from(&self) -> Result<NameAddr<'_>, HeaderError> {
        NameAddr::parse(self.single(HeaderName::From)?)
    }

    /// To.
    pub fn to(&self) -> Result<NameAddr<'_>, HeaderError> {
        NameAddr::parse(self.single(HeaderName::To)?)
    }

    /// The To tag: `to()?.tag()`, without parsing To again when validation recorded it.
    pub fn to_tag(&self) -> Result<Option<&str>, HeaderError> {
        match self.facts.as_ref().map(|facts| facts.to_tag) {
            Some(fact) if fact != TagFact::Unknown => Ok(self.tag_of(fact)),
            _ => self.to().map(|to| to.tag()),
        }
    }

    /// The From tag: `from()?.tag()`, without parsing From again when validation recorded it.
    pub fn from_tag(&self) -> Result<Option<&str>, HeaderError> {
        match self.facts.as_ref().map(|facts| facts.from_tag) {
            Some(fact) if fact != TagFact::Unknown => Ok(self.tag_of(fact)),
            _ => self.from().map(|from| from.tag()),
        }
    }

    fn tag_of(&self, fact: TagFact) -> Option<&str> {
        match fact {
            TagFact::At(span) => Some(self.slice_str(span)),
            TagFact::Absent | TagFact::Unknown => None,
        }
    }

    /// Call-ID, trimmed.
    pub fn call_id(&self) -> Result<&str, HeaderError> {
        parse_call_id(self.single(HeaderName::CallId)?)
    }

    /// CSeq.
    pub fn cseq(&self) -> Result<CSeq<'_>, HeaderError> {
        CSeq::parse(self.single(HeaderName::CSeq)?)
    }

    /// Max-Forwards, 0 to 255; `Ok(None)` when absent (RFC 2543 peers omit it).
    pub fn max_forwards(&self) -> Result<Option<u8>, HeaderError> {
        match self.first_value(HeaderName::MaxForwards) {
            None => Ok(None),
            Some(value) => parse_number(value)
                .and_then(|hops| u8::try_from(hops).map_err(|_| HeaderError::OutOfRange))
                .map(Some),
        }
    }

    /// Content-Length; `Ok(None)` when absent.
    pub fn content_length(&self) -> Result<Option<u32>, HeaderError> {
        self.first_value(HeaderName::ContentLength)
            .map(parse_number)
            .transpose()
    }

    /// Content-Type; `Ok(None)` when absent.
    pub fn content_type(&self) -> Result<Option<MediaType<'_>>, HeaderError> {
        self.first_value(HeaderName::ContentType)
            .map(MediaType::parse)
            .transpose()
    }

    /// Expires in seconds; `Ok(None)` when absent. Overflowing values are an error that the
    /// registrar may treat as its default expiry (RFC 4475 scalar02).
    pub fn expires(&self) -> Result<Option<u32>, HeaderError> {
        self.first_value(HeaderName::Expires).map(parse_number).transpose()
    }

    /// Date; `Ok(None)` when absent. Only `GMT` dates are accepted.
    pub fn date(&self) -> Result<Option<SipDate>, HeaderError> {
        self.first_value(HeaderName::Date).map(SipDate::parse).transpose()
    }

    /// The Contact header fields: `*`, or all addresses in order. `Ok(Addresses(empty))` when
    /// there is no Contact.
    pub fn contacts(&self) -> Result<ContactList<'_>, HeaderError> {
        let mut contacts = Vec::new();
        if self.visit_contacts(|contact| contacts.push(contact))? {
            Ok(ContactList::Star)
        } else {
            Ok(ContactList::Addresses(contacts))
        }
    }

    /// Parses every Contact address, handing each to `visit`; `Ok(true)` for `*`. The work of
    /// [`Message::contacts`] without collecting the addresses.
    fn visit_contacts<'s>(&'s self, mut visit: impl FnMut(Contact<'s>)) -> Result<bool, HeaderError> {
        let mut items = self.values_of(HeaderName::Contact).flat_map(split_list).peekable();
        if items.peek() == Some(&&b"*"[..]) {
            items.next();
            return if items.next().is_none() {
                Ok(true)
            } else {
                Err(HeaderError::Syntax)
            };
        }
        for item in items {
            if item.is_empty() {
                return Err(HeaderError::Empty);
            }
            visit(Contact::parse(item)?);
        }
        Ok(false)
    }

    /// The first Contact address with its `expires` parameter, `*`, or none: what a registrar
    /// binding one contact reads. Taken from the validation's parse when there was one.
    pub fn first_contact(&self) -> Result<FirstContact<'_>, HeaderError> {
        if let Some(facts) = &self.facts {
            return Ok(match facts.contact {
                ContactFacts::Star => FirstContact::Star,
                ContactFacts::Absent => FirstContact::Absent,
                ContactFacts::Address { uri, expires } => FirstContact::Address {
                    uri: self.slice_str(uri),
                    expires: expires.map(|expires| expires.ok_or(HeaderError::OutOfRange)),
                },
            });
        }
        let mut first = None;
        let star = self.visit_contacts(|contact| {
            if first.is_none() {
                first = Some(contact);
            }
        })?;
        Ok(match first {
            _ if star => FirstContact::Star,
            None => FirstContact::Absent,
            Some(contact) => FirstContact::Address {
                uri: contact.uri().as_str(),
                expires: contact.expires(),
            },
        })
    }

    /// Whether the To URI is a SIP URI, and its user part: taken from the validation's parse
    /// when there was one.
    pub fn to_sip_user(&self) -> Result<(bool, Option<&str>), HeaderError> {
        if let Some(facts) = &self.facts {
            return Ok((facts.to_sip, facts.to_user.map(|user| self.slice_str(user))));
        }
        let to = self.to()?;
        let sip = to.uri().as_sip();
        Ok((sip.is_some(), sip.and_then(|uri| uri.user())))
    }

    /// Whether To carries a tag, when a validation recorded it.
    pub(crate) fn to_tagged(&self) -> Option<bool> {
        self.facts.as_ref().map(|facts| facts.to_tagged)
    }

    /// The Route values, top first.
    pub fn routes(&self) -> impl Iterator<Item = Result<NameAddr<'_>, HeaderError>> + '_ {
        self.name_addr_list(HeaderName::Route)
    }

    /// The Record-Route values, top first.
    pub fn record_routes(&self) -> impl Iterator<Item = Result<NameAddr<'_>, HeaderError>> + '_ {
        self.name_addr_list(HeaderName::RecordRoute)
    }

    fn name_addr_list(&self, name: HeaderName) -> impl Iterator<Item = Result<NameAddr<'_>, HeaderError>> + '_ {
        self.values_of(name).flat_map(split_list).map(|item| {
            if item.is_empty() {
                Err(HeaderError::Empty)
            } else {
                NameAddr::parse(item)
            }
        })
    }

    /// The first Authorization; `Ok(None)` when absent.
    pub fn authorization(&self) -> Result<Option<AuthHeader<'_>>, HeaderError> {
        self.auth(HeaderName::Authorization)
    }

    /// The first Proxy-Authorization; `Ok(None)` when absent.
    pub fn proxy_authorization(&self) -> Result<Option<AuthHeader<'_>>, HeaderError> {
        self.auth(HeaderName::ProxyAuthorization)
    }

    /// The first WWW-Authenticate; `Ok(None)` when absent.
    pub fn www_authenticate(&self) -> Result<Option<AuthHeader<'_>>, HeaderError> {
        self.auth(HeaderName::WwwAuthenticate)
    }

    /// The first Proxy-Authenticate; `Ok(None)` when absent.
    pub fn proxy_authenticate(&self) -> Result<Option<AuthHeader<'_>>, HeaderError> {
        self.auth(HeaderName::ProxyAuthenticate)
    }

    fn auth(&self, name: HeaderName) -> Result<Option<AuthHeader<'_>>, HeaderError> {
        self.first_value(name).map(AuthHeader::parse).transpose()
    }

    /// The first Ptt-Extension; `Ok(None)` when absent.
    pub fn ptt_extension(&self) -> Result<Option<PttExtension<'_>>, HeaderError> {
        self.first_value(HeaderName::PttExtension)
            .map(PttExtension::parse)
            .transpose()
    }

    // ---- validation --------------------------------------------------------------------------

    /// True when the message carries what a response must copy: Via, From, To, Call-ID, CSeq.
    pub fn can_address_response(&self) -> bool {
        [
            HeaderName::Via,
            HeaderName::From,
            HeaderName::To,
            HeaderName::CallId,
            HeaderName::CSeq,
        ]
        .iter()
        .all(|&name| self.first_value(name).is_some_and(|value| !value.is_empty()))
    }

    /// The checks a UAS makes before acting on a message (RFC 3261 section 8.2), as far as the
    /// message layer can make them:
    ///
    /// - request line without extra white space, SIP/2.0 (else 505);
    /// - Via, From, To, Call-ID and CSeq present; From, To, Call-ID, CSeq, Max-Forwards,
    ///   Content-Length, Content-Type and Expires at most once;
    /// - CSeq number in 32 bits and method equal to the request method;
    /// - Request-URI parseable, without URI headers;
    /// - Via, From, To, Call-ID, Max-Forwards, Content-Type, Contact, Route and Record-Route
    ///   following their grammar.
    ///
    /// Left to the layers above: unknown URI schemes (416), Require/Proxy-Require (420),
    /// unsupported bodies (415), Accept (406), Max-Forwards 0 (483), the Date value, expiry
    /// values, and the RFC 2543 fallback for branches without the magic cookie.
    pub fn validate(&self) -> Result<(), ParseError> {
        self.validate_recording().map(drop)
    }

    /// [`Message::validate`], returning what it parsed of To and Contact.
    fn validate_recording(&self) -> Result<Facts, ParseError> {
        if let StartSpans::Request { irregular: true, .. } = self.start {
            return Err(ParseError::MalformedRequestLine);
        }
        if !self.version().eq_ignore_ascii_case("SIP/2.0") {
            return Err(ParseError::UnsupportedVersion);
        }
        for name in [
            HeaderName::Via,
            HeaderName::From,
            HeaderName::To,
            HeaderName::CallId,
            HeaderName::CSeq,
        ] {
            if self.first_value(name).is_none() {
                return Err(ParseError::MissingHeader(name));
            }
        }
        for name in [
            HeaderName::From,
            HeaderName::To,
            HeaderName::CallId,
            HeaderName::CSeq,
            HeaderName::MaxForwards,
            HeaderName::ContentLength,
            HeaderName::ContentType,
            HeaderName::Expires,
        ] {
            if self.values_of(name).nth(1).is_some() {
                return Err(ParseError::DuplicateHeader(name));
            }
        }
        let invalid = |name| move |error| ParseError::InvalidHeader { name, error };
        let cseq = self.cseq().map_err(invalid(HeaderName::CSeq))?;
        let mut request_uri_sip = false;
        if let Some(method) = self.method() {
            if cseq.method != method {
                return Err(ParseError::CSeqMethodMismatch);
            }
            match self.request_uri() {
                Some(Ok(Uri::Sip(uri))) if uri.headers_raw().is_none() => request_uri_sip = true,
                Some(Ok(Uri::Other(_))) => {}
                _ => return Err(ParseError::InvalidRequestUri),
            }
        }
        let mut top_via = None;
        for (index, via) in self.vias().enumerate() {
            let via = via.map_err(invalid(HeaderName::Via))?;
            if index == 0 {
                top_via = Some(via);
            }
        }
        // Recorded only when the top Via field is that Via alone, on one line: then a response
        // may copy it from the recorded parts.
        let top_via = top_via.filter(|_| {
            self.first_value(HeaderName::Via).is_some_and(|value| {
                // Without a comma there is one element; with one, split to tell.
                (memchr::memchr(b',', value).is_none() || split_list(value).nth(1).is_none())
                    && memchr::memchr2(b'\r', b'\n', value).is_none()
            })
        });
        let from = self.from().map_err(invalid(HeaderName::From))?;
        let to = self.to().map_err(invalid(HeaderName::To))?;
        self.call_id().map_err(invalid(HeaderName::CallId))?;
        self.max_forwards().map_err(invalid(HeaderName::MaxForwards))?;
        self.content_type().map_err(invalid(HeaderName::ContentType))?;
        let mut contact = ContactFacts::Absent;
        let star = self
            .visit_contacts(|address| {
                if contact == ContactFacts::Absent {
                    if let Some(uri) = self.span_of(address.uri().as_str().as_bytes()) {
                        let expires = address.expires().map(Result::ok);
                        contact = ContactFacts::Address { uri, expires };
                    }
                }
            })
            .map_err(invalid(HeaderName::Contact))?;
        if star {
            contact = ContactFacts::Star;
        }
        for route in self.routes() {
            route.map_err(invalid(HeaderName::Route))?;
        }
        for route in self.record_routes() {
            route.map_err(invalid(HeaderName::RecordRoute))?;
        }
        let sip = to.uri().as_sip();
        Ok(Facts {
            request_uri_sip,
            to_tagged: to.tag().is_some(),
            to_tag: TagFact::of(self, &to),
            from_tag: TagFact::of(self, &from),
            to_sip: sip.is_some(),
            to_user: sip
                .and_then(|uri| uri.user())
                .and_then(|user| self.span_of(user.as_bytes())),
            contact,
            top_via: top_via.and_then(|via| self.via_spans(&via)),
        })
    }

    // ---- serialisation -----------------------------------------------------------------------

    /// Writes the message in a normalised form: the start line with single spaces, each header
    /// as `raw-name: unfolded-value`, the empty line and the body. Malformed header lines (which
    /// were not indexed) are left out. Header order, names, values
    /// and the body are unchanged, so parsing the output gives the same message view.
    pub fn write_normalized(&self, out: &mut Vec<u8>) {
        match self.start {
            StartSpans::Request {
                method, uri, version, ..
            } => {
                out.extend_from_slice(self.slice(method));
                out.push(b' ');
                out.extend_from_slice(self.slice(uri));
                out.push(b' ');
                out.extend_from_slice(self.slice(version));
            }
            StartSpans::Response { version, code, reason } => {
                out.extend_from_slice(self.slice(version));
                out.extend_from_slice(format!(" {code} ").as_bytes());
                out.extend_from_slice(self.slice(reason));
            }
        }
        out.extend_from_slice(b"\r\n");
        for header in self.headers() {
            out.extend_from_slice(header.raw_name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(&header.unfolded());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(self.body());
    }

    /// [`Message::write_normalized`] into a new buffer.
    pub fn to_normalized_bytes(&self) -> Bytes {
        let mut out = Vec::with_capacity(self.buffer.len());
        self.write_normalized(&mut out);
        Bytes::from(out)
    }
}

// ---------------------------------------------------------------------------------------------
// Structure parser
// ---------------------------------------------------------------------------------------------

/// Finds the next line: returns (end of the line content without CR, start of the next line).
/// `None` when no LF follows.
fn next_line(buffer: &[u8], from: usize) -> Option<(usize, usize)> {
    let rest = buffer.get(from..)?;
    let newline = from + memchr::memchr(b'\n', rest)?;
    let content_end = if newline > from && buffer.get(newline - 1) == Some(&b'\r') {
        newline - 1
    } else {
        newline
    };
    Some((content_end, newline + 1))
}

fn is_sip_version(bytes: &[u8]) -> bool {
    match bytes {
        [s, i, p, b'/', rest @ ..] => {
            s.eq_ignore_ascii_case(&b'S') && i.eq_ignore_ascii_case(&b'I') && p.eq_ignore_ascii_case(&b'P') && {
                let mut parts = rest.split(|&b| b == b'.');
                let major = parts.next().unwrap_or_default();
                let minor = parts.next().unwrap_or_default();
                !major.is_empty()
                    && !minor.is_empty()
                    && parts.next().is_none()
                    && major.iter().chain(minor).all(u8::is_ascii_digit)
            }
        }
        _ => false,
    }
}

fn parse_start_line(buffer: &[u8], end: usize) -> Result<StartSpans, ParseError> {
    let line = buffer.get(..end).unwrap_or_default();
    if line.len() > 4 && line.get(..4).is_some_and(|p| p.eq_ignore_ascii_case(b"SIP/")) {
        // Status-Line = SIP-Version SP Status-Code SP Reason-Phrase
        let version_end = line.iter().position(|&b| b == b' ').ok_or(ParseError::BadStatusLine)?;
        if !is_sip_version(line.get(..version_end).unwrap_or_default()) {
            return Err(ParseError::NotSip);
        }
        let code_bytes = line.get(version_end + 1..version_end + 4).unwrap_or_default();
        let code = match code_bytes {
            [a @ b'1'..=b'6', b, c] if b.is_ascii_digit() && c.is_ascii_digit() => {
                u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0')
            }
            _ => return Err(ParseError::BadStatusLine),
        };
        let reason_start = match line.get(version_end + 4) {
            None => version_end + 4,
            Some(b' ') => version_end + 5,
            Some(_) => return Err(ParseError::BadStatusLine),
        };
        return Ok(StartSpans::Response {
            version: Span::new(0, version_end),
            code,
            reason: Span::new(reason_start.min(end), end),
        });
    }

    // Request-Line = Method SP Request-URI SP SIP-Version
    let is_space = |b: &u8| *b == b' ' || *b == b'\t';
    let content_end = line.iter().rposition(|b| !is_space(b)).map_or(0, |last| last + 1);
    let version_start = line
        .get(..content_end)
        .unwrap_or_default()
        .iter()
        .rposition(is_space)
        .map(|space| space + 1)
        .ok_or(ParseError::NotSip)?;
    if !is_sip_version(line.get(version_start..content_end).unwrap_or_default()) {
        return Err(ParseError::NotSip);
    }
    let method_end = line.iter().position(is_space).unwrap_or(0);
    let method = line.get(..method_end).unwrap_or_default();
    let uri = Span::new(method_end + 1, version_start.saturating_sub(1));
    let uri_bytes = line.get(uri.start..uri.end).unwrap_or_default();
    // Irregular request lines are indexed anyway so that the 400 can be addressed.
    let irregular = content_end != line.len()
        || method.is_empty()
        || !method.iter().all(|&b| is_token(b))
        || uri_bytes.is_empty()
        || uri_bytes.first().is_some_and(is_space)
        || uri_bytes.last().is_some_and(is_space)
        || line.get(method_end) != Some(&b' ')
        || line.get(version_start - 1) != Some(&b' ');
    Ok(StartSpans::Request {
        method: Span::new(0, method_end),
        uri,
        version: Span::new(version_start, content_end),
        irregular,
    })
}

/// One line of a header block, as classified by [`HeadLines`].
#[derive(Clone, Copy, Debug)]
enum HeadLine {
    /// `name *(SP/HTAB) ":" value`; the value span runs to the end of the line, untrimmed.
    Field { name: Span, value: Span },
    /// A line starting with SP or HTAB: it extends the previous field's value to `end`.
    Continuation { end: usize },
    /// A line that is neither.
    Malformed,
    /// The empty line closing the header block; the body starts at `body_start`.
    End { body_start: usize },
}

/// Walks the lines of a header block. Used by the parser and by the stream framer, so that both
/// read Content-Length from the same lines.
#[derive(Clone, Debug)]
struct HeadLines<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> HeadLines<'a> {
    /// Starts at `position`, the first byte after the start line.
    fn new(bytes: &'a [u8], position: usize) -> Self {
        Self { bytes, position }
    }
}

impl Iterator for HeadLines<'_> {
    type Item = HeadLine;

    fn next(&mut self) -> Option<HeadLine> {
        let (line_end, next) = next_line(self.bytes, self.position)?;
        let start = self.position;
        let line = self.bytes.get(start..line_end).unwrap_or_default();
        self.position = next;
        if line.is_empty() {
            // Nothing follows the end of the header block.
            self.position = self.bytes.len().saturating_add(1);
            return Some(HeadLine::End { body_start: next });
        }
        if matches!(line.first(), Some(b' ' | b'\t')) {
            return Some(HeadLine::Continuation { end: line_end });
        }
        let name_len = line.iter().take_while(|&&b| is_token(b)).count();
        let after_name = line.get(name_len..).unwrap_or_default();
        let colon = after_name
            .iter()
            .position(|&b| b != b' ' && b != b'\t')
            .filter(|&index| after_name.get(index) == Some(&b':'));
        match colon {
            Some(colon) if name_len > 0 => Some(HeadLine::Field {
                name: Span::new(start, start + name_len),
                value: Span::new(start + name_len + colon + 1, line_end),
            }),
            _ => Some(HeadLine::Malformed),
        }
    }
}

/// What the framer needs from a header block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ContentLengthScan {
    /// No Content-Length field.
    Missing,
    /// One Content-Length with this value.
    Value(u32),
    /// A Content-Length that is not a number, or more than one.
    Invalid,
}

/// Reads the Content-Length of a complete header block. `bytes` starts at the start line and
/// contains at least the whole header block.
pub(crate) fn scan_content_length(bytes: &[u8]) -> ContentLengthScan {
    let Some((_, first_field)) = next_line(bytes, 0) else {
        return ContentLengthScan::Missing;
    };
    let mut found: Option<Span> = None;
    let mut count = 0usize;
    let mut current_is_length = false;
    for line in HeadLines::new(bytes, first_field) {
        match line {
            HeadLine::Field { name, value } => {
                current_is_length = HeaderName::from_bytes(bytes.get(name.start..name.end).unwrap_or_default())
                    == HeaderName::ContentLength;
                if current_is_length {
                    count += 1;
                    found = Some(value);
                }
            }
            HeadLine::Continuation { end } => {
                if current_is_length {
                    if let Some(span) = found.as_mut() {
                        span.end = end;
                    }
                }
            }
            HeadLine::Malformed => current_is_length = false,
            HeadLine::End { .. } => break,
        }
    }
    match (found, count) {
        (None, _) => ContentLengthScan::Missing,
        (Some(span), 1) => parse_number(bytes.get(span.start..span.end).unwrap_or_default())
            .map_or(ContentLengthScan::Invalid, ContentLengthScan::Value),
        _ => ContentLengthScan::Invalid,
    }
}

fn parse_structure(buffer: Bytes, framing: Framing) -> Result<Message, Rejection> {
    // RFC 3261 section 7.5: ignore line breaks before the start line (keep-alives).
    let skip = buffer
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buffer.len());
    let mut buffer = buffer.slice(skip..);
    if buffer.is_empty() {
        return Err(Rejection::new(ParseError::Empty, None));
    }
    let bytes: &[u8] = &buffer;
    let Some((start_end, first_field)) = next_line(bytes, 0) else {
        // A start line with nothing after it: still tell SIP from not-SIP.
        let error = parse_start_line(bytes, bytes.len())
            .err()
            .unwrap_or(ParseError::UnterminatedHeaders);
        return Err(Rejection::new(error, None));
    };
    let start = parse_start_line(bytes, start_end).map_err(|error| Rejection::new(error, None))?;

    let mut headers: Vec<HeaderEntry> = Vec::with_capacity(16);
    let mut first_error: Option<ParseError> = None;
    let mut body_start = None;
    // Whether the previous line was a header that a continuation line may extend.
    let mut last_was_header = false;
    for line in HeadLines::new(bytes, first_field) {
        match line {
            HeadLine::End { body_start: start } => {
                body_start = Some(start);
                break;
            }
            HeadLine::Continuation { end } => match headers.last_mut() {
                Some(entry) if last_was_header => entry.value.end = end,
                _ => {
                    first_error.get_or_insert(ParseError::MalformedHeaderLine);
                }
            },
            HeadLine::Malformed => {
                last_was_header = false;
                first_error.get_or_insert(ParseError::MalformedHeaderLine);
            }
            HeadLine::Field { name, value } => {
                last_was_header = false;
                if headers.len() >= MAX_HEADERS {
                    first_error.get_or_insert(ParseError::TooManyHeaders);
                    continue;
                }
                headers.push(HeaderEntry {
                    name: HeaderName::from_bytes(bytes.get(name.start..name.end).unwrap_or_default()),
                    name_span: name,
                    value,
                });
                last_was_header = true;
            }
        }
    }
    // Trim white space (and folds) around each value.
    for entry in &mut headers {
        let raw = bytes.get(entry.value.start..entry.value.end).unwrap_or_default();
        let leading = raw.iter().position(|&b| !is_ws(b)).unwrap_or(raw.len());
        let trimmed = trim_ws(raw).len();
        let start = entry.value.start + leading;
        entry.value = Span::new(start, start + trimmed);
    }

    let body_start = match body_start {
        Some(body_start) => body_start,
        None => {
            first_error.get_or_insert(ParseError::UnterminatedHeaders);
            bytes.len()
        }
    };
    let available = bytes.len().saturating_sub(body_start);

    // Content-Length framing (RFC 3261 section 18.3).
    let mut lengths = headers
        .iter()
        .filter(|entry| entry.name == HeaderName::ContentLength)
        .map(|entry| parse_number(bytes.get(entry.value.start..entry.value.end).unwrap_or_default()));
    let declared = lengths.next();
    let duplicate = lengths.next().is_some();
    let body_len = match declared {
        _ if duplicate => {
            first_error.get_or_insert(ParseError::DuplicateHeader(HeaderName::ContentLength));
            available
        }
        Some(Err(error)) => {
            first_error.get_or_insert(ParseError::InvalidHeader {
                name: HeaderName::ContentLength,
                error,
            });
            available
        }
        Some(Ok(length)) => {
            let length = usize::try_from(length).unwrap_or(usize::MAX);
            if length > available {
                first_error.get_or_insert(ParseError::ContentLengthTooLarge);
                available
            } else if framing == Framing::Framed && length != available {
                first_error.get_or_insert(ParseError::InvalidHeader {
                    name: HeaderName::ContentLength,
                    error: HeaderError::Syntax,
                });
                available
            } else {
                length
            }
        }
        None if framing == Framing::Framed => {
            first_error.get_or_insert(ParseError::MissingHeader(HeaderName::ContentLength));
            available
        }
        None => available,
    };
    let body = Span::new(body_start, body_start + body_len);
    buffer.truncate(body.end);
    let message = Message {
        buffer,
        start,
        headers,
        body,
        facts: None,
    };
    match first_error {
        None => Ok(message),
        Some(error) => Err(Rejection::new(error, Some(message))),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const INVITE: &[u8] = b"INVITE sip:bob@example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776asdhds;rport\r\n\
Max-Forwards: 70\r\n\
To: Bob <sip:bob@example.com>\r\n\
From: \"Alice\" <sip:alice@example.com>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@pc33.example.com\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:alice@192.0.2.1>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 4\r\n\
\r\n\
v=0\n";

    fn parse(bytes: &[u8]) -> Result<Message, Rejection> {
        Message::parse_datagram(Bytes::copy_from_slice(bytes))
    }

    #[test]
    fn parses_a_plain_invite() {
        let message = parse(INVITE).expect("valid");
        assert_eq!(message.method(), Some(Method::Invite));
        assert_eq!(message.request_uri_raw(), Some(&b"sip:bob@example.com"[..]));
        assert_eq!(message.top_via().unwrap().branch(), Some("z9hG4bK776asdhds"));
        assert_eq!(message.from().unwrap().tag(), Some("1928301774"));
        assert_eq!(message.to().unwrap().tag(), None);
        assert_eq!(message.call_id(), Ok("a84b4c76e66710@pc33.example.com"));
        assert_eq!(message.cseq().unwrap().number, 314159);
        assert_eq!(message.max_forwards(), Ok(Some(70)));
        assert_eq!(message.body(), b"v=0\n");
        assert_eq!(message.as_bytes(), INVITE);
    }

    #[test]
    fn leading_crlf_and_trailing_bytes_are_not_part_of_the_message() {
        let mut datagram = b"\r\n\r\n".to_vec();
        datagram.extend_from_slice(INVITE);
        datagram.extend_from_slice(b"garbage after the body");
        let message = parse(&datagram).expect("valid");
        assert_eq!(message.as_bytes(), INVITE);
    }

    #[test]
    fn missing_content_length_runs_to_the_end_on_udp() {
        let text = String::from_utf8(INVITE.to_vec())
            .unwrap()
            .replace("Content-Length: 4\r\n", "");
        let message = parse(text.as_bytes()).expect("valid");
        assert_eq!(message.body(), b"v=0\n");
    }

    #[test]
    fn version_and_mismatch_checks() {
        let text = String::from_utf8(INVITE.to_vec()).unwrap();
        let bad_version = text.replacen("SIP/2.0\r\n", "SIP/7.0\r\n", 1);
        let rejection = parse(bad_version.as_bytes()).unwrap_err();
        assert_eq!(rejection.error(), ParseError::UnsupportedVersion);
        assert!(matches!(rejection.action(), ErrorAction::Respond { status: 505, .. }));

        let mismatch = text.replace("CSeq: 314159 INVITE", "CSeq: 314159 OPTIONS");
        let rejection = parse(mismatch.as_bytes()).unwrap_err();
        assert_eq!(rejection.error(), ParseError::CSeqMethodMismatch);
        let response = rejection.response("abc").expect("400");
        assert_eq!(response.status(), Some(400));
        assert_eq!(response.to().unwrap().tag(), Some("abc"));
        assert_eq!(response.call_id(), Ok("a84b4c76e66710@pc33.example.com"));
    }

    #[test]
    fn not_sip_is_dropped() {
        for input in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"\r\n\r\n",
            b"",
            b"hello",
            b"SIP/2.0 2000 OK\r\n\r\n",
        ] {
            let rejection = parse(input).unwrap_err();
            assert_eq!(
                rejection.action(),
                ErrorAction::Drop,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn responses_are_never_answered() {
        let response = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 999\r\n\r\n";
        let rejection = parse(response).unwrap_err();
        assert_eq!(rejection.action(), ErrorAction::Drop);
    }

    #[test]
    fn recorded_facts_match_a_fresh_parse() {
        let register = |via: &str, contact: &str| {
            format!(
                "REGISTER sip:h SIP/2.0\r\n{via}\r\nFrom: <sip:1000@h>;tag=f\r\nTo: <sip:1000@h>\r\n\
                 Call-ID: c\r\nCSeq: 1 REGISTER\r\n{contact}Expires: 60\r\nContent-Length: 0\r\n\r\n"
            )
        };
        let source: std::net::SocketAddr = "192.0.2.9:5999".parse().unwrap();
        for via in [
            "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKa;rport",
            "v: SIP/2.0/UDP host.example;branch=z9hG4bKa;received=192.0.2.2",
            "Via: SIP/2.0/UDP [2001:db8::1]:5070;branch=z9hG4bKa, SIP/2.0/TCP 192.0.2.3;branch=z9hG4bKb",
            "Via: SIP/2.0/UDP 192.0.2.1\r\n ;branch=z9hG4bKa;x=\"q,\\\"r\"",
            // A non-ASCII parameter before the branch: the parts are then read one by one.
            "Via: SIP/2.0/UDP 192.0.2.1:5060;x=\"caf\u{e9}\";branch=z9hG4bKa;rport",
        ] {
            for contact in [
                "",
                "Contact: *\r\n",
                "Contact: <sip:1000@192.0.2.1:5060>;expires=30, <sip:1000@b>\r\n",
                "m: sip:1000@192.0.2.1;expires=99999999999\r\n",
            ] {
                let text = register(via, contact);
                let validated = parse(text.as_bytes()).expect("valid");
                let fresh = Message::parse_datagram_unvalidated(Bytes::from(text.clone())).expect("indexes");
                assert!(validated.facts.is_some() && fresh.facts.is_none());
                assert_eq!(validated, fresh);
                assert_eq!(validated.top_via(), fresh.top_via(), "{text}");
                assert_eq!(validated.first_contact(), fresh.first_contact(), "{text}");
                assert_eq!(validated.to_sip_user(), fresh.to_sip_user(), "{text}");
                let answer = |message: &Message| {
                    crate::sip::response_to_from(message, 200, "OK", Some("t"), source)
                        .unwrap()
                        .build_bytes()
                        .unwrap()
                };
                assert_eq!(answer(&validated), answer(&fresh), "{text}");
            }
        }
    }

    #[test]
    fn recorded_tags_match_a_fresh_parse() {
        for (from, to) in [
            ("From: <sip:1000@h>;tag=f", "To: <sip:1001@h>"),
            ("f: \"A <b>\" <sip:1000@h;tag=u>;tag=f2", "t: sip:1001@h;tag=t1"),
            ("From: sip:1000@h;x=1", "To: <sip:1001@h>;TAG=up;y"),
            ("From: <sip:1000@h>;tag=a\r\n ;q=1", "To: <sip:1001@h>;x=1;tag=z"),
        ] {
            let text = format!(
                "BYE sip:h SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKa\r\n{from}\r\n{to}\r\n\
                 Call-ID: c\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
            );
            let validated = parse(text.as_bytes()).expect("valid");
            let fresh = Message::parse_datagram_unvalidated(Bytes::from(text.clone())).expect("indexes");
            assert!(validated.facts.is_some() && fresh.facts.is_none());
            for message in [&validated, &fresh] {
                assert_eq!(message.to_tag(), message.to().map(|to| to.tag()), "{text}");
                assert_eq!(message.from_tag(), message.from().map(|from| from.tag()), "{text}");
            }
            assert_eq!(validated.to_tag(), fresh.to_tag(), "{text}");
            assert_eq!(validated.from_tag(), fresh.from_tag(), "{text}");
        }
    }

    #[test]
    fn extension_headers_by_name() {
        let text = String::from_utf8(INVITE.to_vec()).unwrap().replace(
            "Max-Forwards: 70\r\n",
            "Max-Forwards: 70\r\nptt-extension: floor;Priority=2\r\nX-Thing: a,\r\n b\r\n",
        );
        let message = parse(text.as_bytes()).expect("valid");
        let ext = message.ptt_extension().unwrap().expect("present");
        assert_eq!(ext.param("PRIORITY").as_deref(), Some(&b"2"[..]));
        let thing = message.headers_named("x-thing").next().expect("x-thing");
        assert_eq!(&*thing.unfolded(), b"a, b");
    }

    // ---- property tests ----------------------------------------------------------------------

    fn exercise(message: &Message) {
        let _ = message.validate();
        let _ = message.start_line();
        let _ = message.request_uri();
        let _ = message.vias().count();
        let _ = message.from();
        let _ = message.to();
        let _ = message.call_id();
        let _ = message.cseq();
        let _ = message.max_forwards();
        let _ = message.content_type();
        let _ = message.expires();
        let _ = message.date();
        let _ = message.contacts();
        let _ = message.routes().count();
        let _ = message
            .authorization()
            .map(|auth| auth.map(|auth| auth.params().count()));
        let _ = message.ptt_extension();
        for header in message.headers() {
            let _ = header.unfolded();
        }
        let _ = message.to_normalized_bytes();
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            match Message::parse_datagram_unvalidated(Bytes::from(bytes)) {
                Ok(message) => exercise(&message),
                Err(rejection) => {
                    let _ = rejection.action();
                    let _ = rejection.response("t");
                    if let Some(message) = rejection.message() {
                        exercise(message);
                    }
                }
            }
        }

        #[test]
        fn never_panics_on_mutated_messages(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..12)
        ) {
            let mut bytes = INVITE.to_vec();
            for (index, byte, kind) in edits {
                let at = index.index(bytes.len() + 1);
                match kind {
                    0 => bytes.insert(at, byte),
                    1 if at < bytes.len() => { bytes.remove(at); }
                    _ if at < bytes.len() => bytes[at] = byte,
                    _ => {}
                }
            }
            match Message::parse_datagram(Bytes::from(bytes)) {
                Ok(message) => exercise(&message),
                Err(rejection) => {
                    let _ = rejection.response("t");
                    if let Some(message) = rejection.message() {
                        exercise(message);
                    }
                }
            }
        }
    }
}
