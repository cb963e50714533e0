//! Header names (with their compact forms) and typed views of the header fields the node relies
//! on.
//!
//! Each view borrows from the header value it was parsed from and validates the whole value up
//! front, so a view that exists is well formed. The views scan the value in place: folded lines
//! count as white space, and nothing is copied until a caller asks for an unquoted or unescaped
//! form (which comes back as a [`Cow`]).
#![deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![warn(missing_docs)]

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;

use crate::sip::message::Method;
use crate::sip::syntax::{
    ascii_str, is_token, is_word, is_ws, parse_u32, parse_u64, split_list, trim_ws, unquote, Cursor,
};
use crate::sip::uri::{Host, Uri, UriError};

/// Why a header field value did not parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// The header field is absent.
    #[error("header field missing")]
    Missing,
    /// The value is empty, or a list holds an empty element.
    #[error("empty value")]
    Empty,
    /// The value does not follow the field's grammar.
    #[error("malformed value")]
    Syntax,
    /// A quoted string is not closed.
    #[error("unterminated quoted string")]
    UnterminatedQuote,
    /// A number does not fit the field's range.
    #[error("number out of range")]
    OutOfRange,
    /// The URI inside the value did not parse.
    #[error("invalid URI: {0}")]
    Uri(#[from] UriError),
}

macro_rules! header_names {
    ($( $(#[$doc:meta])* $variant:ident => $canonical:literal $(, $compact:literal)? ;)*) => {
        /// A header field name the parser knows, resolved case-insensitively from the long or the
        /// compact form. Names it does not know are [`HeaderName::Other`]; their text stays in the
        /// message.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum HeaderName {
            $( $(#[$doc])* $variant, )*
            /// Any other header field.
            Other,
        }

        impl HeaderName {
            /// Resolves a received header name (long or compact form, any case).
            pub fn from_bytes(name: &[u8]) -> Self {
                if let [single] = name {
                    $( $( if single.eq_ignore_ascii_case(&$compact) { return HeaderName::$variant; } )? )*
                    return HeaderName::Other;
                }
                $( if name.eq_ignore_ascii_case($canonical.as_bytes()) { return HeaderName::$variant; } )*
                HeaderName::Other
            }

            /// The canonical long form, as sent by this node. Empty for [`HeaderName::Other`].
            pub fn as_str(&self) -> &'static str {
                match self {
                    $( HeaderName::$variant => $canonical, )*
                    HeaderName::Other => "",
                }
            }

            /// The compact form (RFC 3261 section 7.3.3 and the IANA registry), if there is one.
            pub fn compact(&self) -> Option<char> {
                match self {
                    $( $( HeaderName::$variant => Some($compact as char), )? )*
                    _ => None,
                }
            }
        }
    };
}

header_names! {
    /// `Accept`.
    Accept => "Accept";
    /// `Accept-Contact` (compact `a`).
    AcceptContact => "Accept-Contact", b'a';
    /// `Allow`.
    Allow => "Allow";
    /// `Allow-Events` (compact `u`).
    AllowEvents => "Allow-Events", b'u';
    /// `Authorization`.
    Authorization => "Authorization";
    /// `Call-ID` (compact `i`).
    CallId => "Call-ID", b'i';
    /// `Contact` (compact `m`).
    Contact => "Contact", b'm';
    /// `Content-Encoding` (compact `e`).
    ContentEncoding => "Content-Encoding", b'e';
    /// `Content-Length` (compact `l`).
    ContentLength => "Content-Length", b'l';
    /// `Content-Type` (compact `c`).
    ContentType => "Content-Type", b'c';
    /// `CSeq`.
    CSeq => "CSeq";
    /// `Date`.
    Date => "Date";
    /// `Event` (compact `o`).
    Event => "Event", b'o';
    /// `Expires`.
    Expires => "Expires";
    /// `From` (compact `f`).
    From => "From", b'f';
    /// `Identity` (compact `y`).
    Identity => "Identity", b'y';
    /// `Identity-Info` (compact `n`).
    IdentityInfo => "Identity-Info", b'n';
    /// `Max-Forwards`.
    MaxForwards => "Max-Forwards";
    /// `Proxy-Authenticate`.
    ProxyAuthenticate => "Proxy-Authenticate";
    /// `Proxy-Authorization`.
    ProxyAuthorization => "Proxy-Authorization";
    /// `Proxy-Require`.
    ProxyRequire => "Proxy-Require";
    /// `Ptt-Extension`, this project's extension header.
    PttExtension => "Ptt-Extension";
    /// `Reason`.
    Reason => "Reason";
    /// `Record-Route`.
    RecordRoute => "Record-Route";
    /// `Refer-To` (compact `r`).
    ReferTo => "Refer-To", b'r';
    /// `Referred-By` (compact `b`).
    ReferredBy => "Referred-By", b'b';
    /// `Reject-Contact` (compact `j`).
    RejectContact => "Reject-Contact", b'j';
    /// `Request-Disposition` (compact `d`).
    RequestDisposition => "Request-Disposition", b'd';
    /// `Require`.
    Require => "Require";
    /// `Retry-After`.
    RetryAfter => "Retry-After";
    /// `Route`.
    Route => "Route";
    /// `Server`.
    Server => "Server";
    /// `Session-Expires` (compact `x`).
    SessionExpires => "Session-Expires", b'x';
    /// `Subject` (compact `s`).
    Subject => "Subject", b's';
    /// `Supported` (compact `k`).
    Supported => "Supported", b'k';
    /// `To` (compact `t`).
    To => "To", b't';
    /// `Unsupported`.
    Unsupported => "Unsupported";
    /// `User-Agent`.
    UserAgent => "User-Agent";
    /// `Via` (compact `v`).
    Via => "Via", b'v';
    /// `Warning`.
    Warning => "Warning";
    /// `WWW-Authenticate`.
    WwwAuthenticate => "WWW-Authenticate";
}

impl fmt::Display for HeaderName {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderName::Other => formatter.write_str("extension header"),
            known => formatter.write_str(known.as_str()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Generic parameters
// ---------------------------------------------------------------------------------------------

/// The `*( SEMI generic-param )` tail of a header value, validated when built and scanned again
/// (without allocating) on each lookup. Parameter names compare ASCII case-insensitively.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Params<'a> {
    raw: &'a [u8],
}

/// One `name [= value]` header parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Param<'a> {
    /// The parameter name, as received.
    pub name: &'a str,
    /// The value as received (a token, host or quoted string with its quotes), if any.
    pub value: Option<&'a [u8]>,
}

impl<'a> Param<'a> {
    /// The value with quotes removed and quoted pairs resolved.
    pub fn value_unquoted(&self) -> Option<Cow<'a, [u8]>> {
        self.value.map(unquote)
    }

    /// The value as text: unquoted, and only when it is valid UTF-8.
    pub fn value_str(&self) -> Option<Cow<'a, str>> {
        match self.value_unquoted()? {
            Cow::Borrowed(bytes) => std::str::from_utf8(bytes).ok().map(Cow::Borrowed),
            Cow::Owned(bytes) => String::from_utf8(bytes).ok().map(Cow::Owned),
        }
    }
}

impl<'a> Params<'a> {
    /// Validates `raw`, which must be empty or start (after optional white space) with `;`.
    pub fn parse(raw: &'a [u8]) -> Result<Self, HeaderError> {
        let params = Params { raw };
        let mut cursor = Cursor::new(raw);
        while next_raw_param(&mut cursor)?.is_some() {}
        Ok(params)
    }

    /// The parameters in order, names as bytes (no text conversion until one is wanted).
    pub(crate) fn iter_raw(&self) -> impl Iterator<Item = RawParam<'a>> + 'a {
        let mut cursor = Cursor::new(self.raw);
        std::iter::from_fn(move || next_raw_param(&mut cursor).ok().flatten())
    }

    /// The parameters in order.
    pub fn iter(&self) -> impl Iterator<Item = Param<'a>> + 'a {
        let mut cursor = Cursor::new(self.raw);
        std::iter::from_fn(move || next_param(&mut cursor).ok().flatten())
    }

    /// The first parameter named `name` (ASCII case-insensitive).
    pub fn get(&self, name: &str) -> Option<Param<'a>> {
        self.iter_raw()
            .find(|param| param.name.eq_ignore_ascii_case(name.as_bytes()))
            .and_then(RawParam::into_param)
    }

    /// True when a parameter named `name` is present, with or without a value.
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// The unquoted value of parameter `name`, when present with a value.
    pub fn value(&self, name: &str) -> Option<Cow<'a, [u8]>> {
        self.get(name).and_then(|param| param.value_unquoted())
    }

    /// True when there are no parameters.
    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }

    /// The parameters as received, from the first `;`.
    pub fn as_bytes(&self) -> &'a [u8] {
        trim_ws(self.raw)
    }
}

fn is_gen_value_char(byte: u8) -> bool {
    // token / host (IPv6 references bring ':' '[' ']')
    is_token(byte) || matches!(byte, b':' | b'[' | b']')
}

/// A parameter with its name as bytes (`token` characters, so ASCII).
#[derive(Clone, Copy)]
pub(crate) struct RawParam<'a> {
    /// The name as received.
    pub(crate) name: &'a [u8],
    /// The value as received, if any.
    pub(crate) value: Option<&'a [u8]>,
}

impl<'a> RawParam<'a> {
    fn into_param(self) -> Option<Param<'a>> {
        Some(Param {
            name: std::str::from_utf8(self.name).ok()?,
            value: self.value,
        })
    }
}

/// Reads `SEMI name [EQUAL value]`; `Ok(None)` at the end of the input.
fn next_param<'a>(cursor: &mut Cursor<'a>) -> Result<Option<Param<'a>>, HeaderError> {
    Ok(next_raw_param(cursor)?.and_then(RawParam::into_param))
}

/// [`next_param`] with the name left as bytes.
fn next_raw_param<'a>(cursor: &mut Cursor<'a>) -> Result<Option<RawParam<'a>>, HeaderError> {
    cursor.skip_ws();
    if cursor.at_end() {
        return Ok(None);
    }
    if !cursor.eat(b';') {
        return Err(HeaderError::Syntax);
    }
    cursor.skip_ws();
    let name = cursor.take_while(is_token);
    if name.is_empty() {
        return Err(HeaderError::Syntax);
    }
    cursor.skip_ws();
    let value = if cursor.eat(b'=') {
        cursor.skip_ws();
        let value = if cursor.peek() == Some(b'"') {
            cursor.quoted_string().ok_or(HeaderError::UnterminatedQuote)?
        } else {
            let value = cursor.take_while(is_gen_value_char);
            if value.is_empty() {
                return Err(HeaderError::Syntax);
            }
            value
        };
        Some(value)
    } else {
        None
    };
    Ok(Some(RawParam { name, value }))
}

/// Validates `raw` as [`Params::parse`] does, handing each parameter to `visit` until `visit`
/// fails: one pass for the grammar and the checks of the known parameters. A grammar error wins
/// over the visitor's, as when the two were separate passes.
fn scan_params<'a>(
    raw: &'a [u8],
    mut visit: impl FnMut(RawParam<'a>) -> Result<(), HeaderError>,
) -> Result<Params<'a>, HeaderError> {
    let mut cursor = Cursor::new(raw);
    let mut visited = Ok(());
    while let Some(param) = next_raw_param(&mut cursor)? {
        if visited.is_ok() {
            visited = visit(param);
        }
    }
    visited.map(|()| Params { raw })
}

// ---------------------------------------------------------------------------------------------
// Via
// ---------------------------------------------------------------------------------------------

/// The RFC 3261 branch prefix.
pub const BRANCH_MAGIC_COOKIE: &str = "z9hG4bK";

/// One `via-parm`: `SIP/2.0/UDP host:port;branch=...;received=...;rport`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Via<'a> {
    protocol_name: &'a str,
    protocol_version: &'a str,
    transport: &'a str,
    host: Host<'a>,
    host_raw: &'a str,
    port: Option<u16>,
    params: Params<'a>,
    /// The first `branch` parameter's value, found while the parameters were checked.
    branch: Option<&'a str>,
    /// The first `rport` parameter, likewise (see [`Via::rport`]).
    rport: Option<Option<u16>>,
}

impl<'a> Via<'a> {
    /// Parses one Via value (one element of a comma-separated Via header).
    pub fn parse(value: &'a [u8]) -> Result<Self, HeaderError> {
        let mut cursor = Cursor::new(value);
        cursor.skip_ws();
        let protocol_name = cursor.token().ok_or(HeaderError::Syntax)?;
        expect_slash(&mut cursor)?;
        let protocol_version = cursor.token().ok_or(HeaderError::Syntax)?;
        expect_slash(&mut cursor)?;
        let transport = cursor.token().ok_or(HeaderError::Syntax)?;
        let before_ws = cursor.rest().len();
        cursor.skip_ws();
        if cursor.rest().len() == before_ws {
            return Err(HeaderError::Syntax);
        }
        let host_bytes = if cursor.peek() == Some(b'[') {
            let rest = cursor.rest();
            let close = rest.iter().position(|&b| b == b']').ok_or(HeaderError::Syntax)?;
            cursor.advance(close + 1);
            rest.get(..=close).unwrap_or_default()
        } else {
            cursor.take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        };
        let host_raw = ascii_str(host_bytes).ok_or(HeaderError::Uri(UriError::Host))?;
        let host = Host::parse_str(host_raw).map_err(HeaderError::Uri)?;
        let mut probe = cursor;
        probe.skip_ws();
        let port = if probe.eat(b':') {
            probe.skip_ws();
            let digits = probe.take_while(|b| b.is_ascii_digit());
            let port = parse_u64(digits)
                .and_then(|value| u16::try_from(value).ok())
                .ok_or(HeaderError::OutOfRange)?;
            cursor = probe;
            Some(port)
        } else {
            None
        };
        let mut branch = None;
        let mut rport = None;
        let params = scan_params(cursor.rest(), |param| check_via_param(param, &mut branch, &mut rport))?;
        Ok(Via {
            protocol_name,
            protocol_version,
            transport,
            host,
            host_raw,
            port,
            params,
            branch: branch.flatten(),
            rport,
        })
    }

    /// The parts of a parsed Via, to rebuild it later without parsing it again
    /// ([`Via::from_parts`]).
    pub(crate) fn parts(&self) -> ViaParts<'a> {
        ViaParts {
            protocol_name: self.protocol_name,
            protocol_version: self.protocol_version,
            transport: self.transport,
            host: self.host,
            host_raw: self.host_raw,
            port: self.port,
            params: self.params.raw,
            branch: self.branch,
            rport: self.rport,
        }
    }

    /// A Via from the parts of one that parsed ([`Via::parts`]).
    pub(crate) fn from_parts(parts: ViaParts<'a>) -> Self {
        Via {
            protocol_name: parts.protocol_name,
            protocol_version: parts.protocol_version,
            transport: parts.transport,
            host: parts.host,
            host_raw: parts.host_raw,
            port: parts.port,
            params: Params { raw: parts.params },
            branch: parts.branch,
            rport: parts.rport,
        }
    }

    /// The protocol name, normally `SIP`.
    pub fn protocol_name(&self) -> &'a str {
        self.protocol_name
    }

    /// The protocol version, normally `2.0`.
    pub fn protocol_version(&self) -> &'a str {
        self.protocol_version
    }

    /// The transport token as received (`UDP`, `TCP`, `TLS`, `SCTP`, `WS`, or unknown ones).
    pub fn transport(&self) -> &'a str {
        self.transport
    }

    /// The sent-by host.
    pub fn host(&self) -> Host<'a> {
        self.host
    }

    /// The sent-by host as received.
    pub fn host_raw(&self) -> &'a str {
        self.host_raw
    }

    /// The sent-by port, if given.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// The `branch` parameter.
    pub fn branch(&self) -> Option<&'a str> {
        self.branch
    }

    /// True when the branch carries the RFC 3261 magic cookie and something after it, so that it
    /// can serve as a transaction identifier (RFC 3261 section 17.2.3). RFC 4475 section 3.2.1
    /// (`badbranch`) sends the bare cookie: the transaction layer must then fall back to RFC 2543
    /// matching or reject the request.
    pub fn has_rfc3261_branch(&self) -> bool {
        self.branch()
            .is_some_and(|branch| branch.len() > BRANCH_MAGIC_COOKIE.len() && branch.starts_with(BRANCH_MAGIC_COOKIE))
    }

    /// The `received` parameter.
    pub fn received(&self) -> Option<IpAddr> {
        self.params
            .get("received")
            .and_then(|param| param.value)
            .and_then(|value| Host::parse(value).ok())
            .and_then(|host| host.ip())
    }

    /// The `rport` parameter (RFC 3581): `None` when absent, `Some(None)` when present without a
    /// value (a request asking for it), `Some(Some(port))` when filled in.
    pub fn rport(&self) -> Option<Option<u16>> {
        self.rport
    }

    /// The `maddr` parameter.
    pub fn maddr(&self) -> Option<&'a str> {
        self.params
            .get("maddr")
            .and_then(|param| param.value)
            .and_then(ascii_str)
    }

    /// The `ttl` parameter.
    pub fn ttl(&self) -> Option<u8> {
        self.params
            .get("ttl")
            .and_then(|param| param.value)
            .and_then(parse_u32)
            .and_then(|ttl| u8::try_from(ttl).ok())
    }

    /// All parameters, known ones included.
    pub fn params(&self) -> Params<'a> {
        self.params
    }

    /// The parameters other than `branch`, `received`, `rport`, `maddr` and `ttl`.
    pub fn other_params(&self) -> impl Iterator<Item = Param<'a>> + 'a {
        self.params.iter().filter(|param| {
            !["branch", "received", "rport", "maddr", "ttl"]
                .iter()
                .any(|known| param.name.eq_ignore_ascii_case(known))
        })
    }
}

/// What [`Via::parts`] returns.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ViaParts<'a> {
    pub(crate) protocol_name: &'a str,
    pub(crate) protocol_version: &'a str,
    pub(crate) transport: &'a str,
    pub(crate) host: Host<'a>,
    pub(crate) host_raw: &'a str,
    pub(crate) port: Option<u16>,
    pub(crate) params: &'a [u8],
    pub(crate) branch: Option<&'a str>,
    pub(crate) rport: Option<Option<u16>>,
}

/// Checks one Via parameter whose value the grammar constrains, noting the first `branch` value
/// and the first `rport` (what [`Via::branch`] and [`Via::rport`] return), so that they are not
/// looked up again.
fn check_via_param<'a>(
    param: RawParam<'a>,
    branch: &mut Option<Option<&'a str>>,
    rport: &mut Option<Option<u16>>,
) -> Result<(), HeaderError> {
    let value = param.value.unwrap_or_default();
    if param.name.eq_ignore_ascii_case(b"branch") || param.name.eq_ignore_ascii_case(b"maddr") {
        if value.is_empty() {
            return Err(HeaderError::Syntax);
        }
        if branch.is_none() && param.name.eq_ignore_ascii_case(b"branch") {
            *branch = Some(param.value.and_then(ascii_str));
        }
    } else if param.name.eq_ignore_ascii_case(b"ttl") {
        parse_u32(value)
            .filter(|ttl| *ttl <= 255)
            .ok_or(HeaderError::OutOfRange)?;
    } else if param.name.eq_ignore_ascii_case(b"rport") {
        let port = match param.value {
            Some(_) => Some(
                parse_u64(value)
                    .and_then(|port| u16::try_from(port).ok())
                    .ok_or(HeaderError::OutOfRange)?,
            ),
            None => None,
        };
        rport.get_or_insert(port);
    } else if param.name.eq_ignore_ascii_case(b"received") {
        Host::parse(value)
            .ok()
            .and_then(|host| host.ip())
            .ok_or(HeaderError::Syntax)?;
    }
    Ok(())
}

fn expect_slash(cursor: &mut Cursor<'_>) -> Result<(), HeaderError> {
    cursor.skip_ws();
    if !cursor.eat(b'/') {
        return Err(HeaderError::Syntax);
    }
    cursor.skip_ws();
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// name-addr / addr-spec (From, To, Contact, Route, Record-Route, Refer-To, ...)
// ---------------------------------------------------------------------------------------------

/// A `(name-addr / addr-spec) *(SEMI param)` value: From, To, Contact elements, Route and
/// Record-Route elements.
///
/// Follows RFC 3261 section 20.10: without angle brackets, everything after the first `;` is a
/// header parameter, and a URI holding `,`, `;` or `?` must be bracketed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameAddr<'a> {
    display_name: Option<&'a [u8]>,
    uri: Uri<'a>,
    bracketed: bool,
    params: Params<'a>,
    /// The first `tag` parameter's value when ASCII, found while the parameters were checked
    /// (what [`NameAddr::tag`] returns).
    tag: Option<&'a str>,
}

impl<'a> NameAddr<'a> {
    /// Parses one value.
    pub fn parse(value: &'a [u8]) -> Result<Self, HeaderError> {
        Self::parse_with(value, |_| Ok(()))
    }

    /// [`NameAddr::parse`], handing each header parameter to `visit` in the same pass (see
    /// [`scan_params`]).
    fn parse_with(
        value: &'a [u8],
        mut visit: impl FnMut(RawParam<'a>) -> Result<(), HeaderError>,
    ) -> Result<Self, HeaderError> {
        let mut cursor = Cursor::new(value);
        cursor.skip_ws();
        if cursor.at_end() {
            return Err(HeaderError::Empty);
        }
        let mut display_name = None;
        if cursor.peek() == Some(b'"') {
            display_name = Some(cursor.quoted_string().ok_or(HeaderError::UnterminatedQuote)?);
            cursor.skip_ws();
            if cursor.peek() != Some(b'<') {
                return Err(HeaderError::Syntax);
            }
        } else {
            // display-name = *(token LWS): look past tokens and white space for a '<'.
            let mut probe = cursor;
            let words = probe.take_while(|b| is_token(b) || is_ws(b));
            if probe.peek() == Some(b'<') {
                let words = trim_ws(words);
                if !words.is_empty() {
                    display_name = Some(words);
                }
                cursor = probe;
            }
        }

        let (uri_bytes, bracketed) = if cursor.eat(b'<') {
            let rest = cursor.rest();
            let close = memchr::memchr(b'>', rest).ok_or(HeaderError::Syntax)?;
            cursor.advance(close + 1);
            (rest.get(..close).unwrap_or_default(), true)
        } else {
            let uri = cursor.take_while(|b| !is_ws(b) && b != b';');
            if uri.iter().any(|&b| matches!(b, b',' | b'?' | b'<' | b'>' | b'"')) {
                return Err(HeaderError::Syntax);
            }
            (uri, false)
        };
        let uri = Uri::parse(uri_bytes)?;
        let mut tag = None;
        let params = scan_params(cursor.rest(), |param| {
            if tag.is_none() && param.name.eq_ignore_ascii_case(b"tag") {
                tag = Some(param.value.and_then(ascii_str));
            }
            visit(param)
        })?;
        Ok(NameAddr {
            display_name,
            uri,
            bracketed,
            params,
            tag: tag.flatten(),
        })
    }

    /// The display name as received: a quoted string with its quotes, or tokens.
    pub fn display_name_raw(&self) -> Option<&'a [u8]> {
        self.display_name
    }

    /// The display name with quotes removed and quoted pairs resolved.
    pub fn display_name(&self) -> Option<Cow<'a, [u8]>> {
        self.display_name.map(unquote)
    }

    /// The URI.
    pub fn uri(&self) -> &Uri<'a> {
        &self.uri
    }

    /// True when the URI was written in angle brackets (name-addr form).
    pub fn is_bracketed(&self) -> bool {
        self.bracketed
    }

    /// The header parameters (after the URI, not inside it).
    pub fn params(&self) -> Params<'a> {
        self.params
    }

    /// The `tag` parameter.
    pub fn tag(&self) -> Option<&'a str> {
        self.tag
    }
}

/// One Contact element with its `q` and `expires` parameters decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Contact<'a> {
    address: NameAddr<'a>,
    /// The first `expires` parameter, decoded while the parameters were checked (see
    /// [`Contact::expires`]).
    expires: Option<Result<u32, HeaderError>>,
}

impl<'a> Contact<'a> {
    /// Parses one Contact element (not `*`).
    pub fn parse(value: &'a [u8]) -> Result<Self, HeaderError> {
        // The first `q` and the first `expires` are checked in the pass over the parameters.
        let (mut seen_q, mut expires) = (false, None);
        let address = NameAddr::parse_with(value, |param| {
            if !seen_q && param.name.eq_ignore_ascii_case(b"q") {
                seen_q = true;
                parse_qvalue(param.value.unwrap_or_default()).ok_or(HeaderError::Syntax)?;
            } else if expires.is_none() && param.name.eq_ignore_ascii_case(b"expires") {
                let value = param.value.unwrap_or_default();
                if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
                    return Err(HeaderError::Syntax);
                }
                expires = Some(parse_u32(value).ok_or(HeaderError::OutOfRange));
            }
            Ok(())
        })?;
        Ok(Contact { address, expires })
    }

    /// The address, its display name and parameters.
    pub fn address(&self) -> &NameAddr<'a> {
        &self.address
    }

    /// The URI.
    pub fn uri(&self) -> &Uri<'a> {
        self.address.uri()
    }

    /// The `q` preference in thousandths (`q=0.33` is 330).
    pub fn q(&self) -> Option<u16> {
        self.address
            .params
            .get("q")
            .and_then(|param| param.value)
            .and_then(parse_qvalue)
    }

    /// The `expires` parameter. `Some(Err(OutOfRange))` when the digits overflow a `u32`: RFC 4475
    /// (scalar02) lets the registrar then apply its default expiry.
    pub fn expires(&self) -> Option<Result<u32, HeaderError>> {
        self.expires
    }
}

/// A Contact header field set: `*` or a list of addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContactList<'a> {
    /// `Contact: *`, which only a REGISTER removing all bindings sends.
    Star,
    /// The addresses, in order, across all Contact header fields.
    Addresses(Vec<Contact<'a>>),
}

/// `qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )`, in thousandths.
fn parse_qvalue(value: &[u8]) -> Option<u16> {
    let (whole, fraction) = match value.iter().position(|&b| b == b'.') {
        Some(dot) => (value.get(..dot)?, value.get(dot + 1..)?),
        None => (value, &b""[..]),
    };
    if fraction.len() > 3 || !fraction.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut thousandths: u16 = 0;
    for (index, digit) in fraction.iter().enumerate() {
        let scale = [100, 10, 1].get(index).copied()?;
        thousandths += u16::from(digit - b'0') * scale;
    }
    match whole {
        b"0" => Some(thousandths),
        b"1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Call-ID, CSeq, numbers, Content-Type, Date
// ---------------------------------------------------------------------------------------------

/// Parses `Call-ID = word [ "@" word ]`, returning it trimmed.
pub fn parse_call_id(value: &[u8]) -> Result<&str, HeaderError> {
    let value = trim_ws(value);
    if value.is_empty() {
        return Err(HeaderError::Empty);
    }
    let mut parts = value.split(|&b| b == b'@');
    let valid = parts
        .next()
        .is_some_and(|word| !word.is_empty() && word.iter().all(|&b| is_word(b)))
        && parts
            .next()
            .map_or(true, |word| !word.is_empty() && word.iter().all(|&b| is_word(b)))
        && parts.next().is_none();
    if valid {
        ascii_str(value).ok_or(HeaderError::Syntax)
    } else {
        Err(HeaderError::Syntax)
    }
}

/// Parses a header holding only `1*DIGIT` (Content-Length, Expires, Max-Forwards).
pub fn parse_number(value: &[u8]) -> Result<u32, HeaderError> {
    let value = trim_ws(value);
    if value.is_empty() {
        return Err(HeaderError::Empty);
    }
    if !value.iter().all(u8::is_ascii_digit) {
        return Err(HeaderError::Syntax);
    }
    parse_u32(value).ok_or(HeaderError::OutOfRange)
}

/// `CSeq: 1*DIGIT LWS Method`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CSeq<'a> {
    /// The sequence number.
    pub number: u32,
    /// The method.
    pub method: Method<'a>,
}

impl<'a> CSeq<'a> {
    /// Parses a CSeq value. Numbers that do not fit 32 bits are refused (RFC 4475 scalar02).
    pub fn parse(value: &'a [u8]) -> Result<Self, HeaderError> {
        let mut cursor = Cursor::new(value);
        cursor.skip_ws();
        let digits = cursor.take_while(|b| b.is_ascii_digit());
        if digits.is_empty() {
            return Err(HeaderError::Syntax);
        }
        let number = parse_u32(digits).ok_or(HeaderError::OutOfRange)?;
        let before = cursor.rest().len();
        cursor.skip_ws();
        if cursor.rest().len() == before {
            return Err(HeaderError::Syntax);
        }
        let method = cursor.token().ok_or(HeaderError::Syntax)?;
        cursor.skip_ws();
        if !cursor.at_end() {
            return Err(HeaderError::Syntax);
        }
        Ok(CSeq {
            number,
            method: Method::from_token(method),
        })
    }
}

impl fmt::Display for CSeq<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{} {}", self.number, self.method)
    }
}

/// `Content-Type: type/subtype *(;param)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MediaType<'a> {
    /// The top-level type, as received.
    pub kind: &'a str,
    /// The subtype, as received.
    pub subtype: &'a str,
    /// The parameters (`boundary`, `charset`, ...).
    pub params: Params<'a>,
}

impl<'a> MediaType<'a> {
    /// Parses a media type.
    pub fn parse(value: &'a [u8]) -> Result<Self, HeaderError> {
        let mut cursor = Cursor::new(value);
        cursor.skip_ws();
        let kind = cursor.token().ok_or(HeaderError::Syntax)?;
        expect_slash(&mut cursor)?;
        let subtype = cursor.token().ok_or(HeaderError::Syntax)?;
        let params = Params::parse(cursor.rest())?;
        Ok(MediaType { kind, subtype, params })
    }

    /// True for `kind/subtype`, compared ASCII case-insensitively.
    pub fn is(&self, kind: &str, subtype: &str) -> bool {
        self.kind.eq_ignore_ascii_case(kind) && self.subtype.eq_ignore_ascii_case(subtype)
    }
}

/// A `Date` value in the only form SIP allows: `Sat, 15 Oct 2005 04:44:56 GMT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SipDate {
    /// Day of the month, 1 to 31.
    pub day: u8,
    /// Month, 1 to 12.
    pub month: u8,
    /// Year.
    pub year: u16,
    /// Hour, 0 to 23.
    pub hour: u8,
    /// Minute, 0 to 59.
    pub minute: u8,
    /// Second, 0 to 60.
    pub second: u8,
}

impl SipDate {
    /// Parses `rfc1123-date`; any zone but `GMT` is refused (RFC 4475 baddate).
    pub fn parse(value: &[u8]) -> Result<Self, HeaderError> {
        const WEEKDAYS: [&[u8]; 7] = [b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun"];
        const MONTHS: [&[u8]; 12] = [
            b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
        ];
        let value = trim_ws(value);
        // "Sat, 15 Oct 2005 04:44:56 GMT" is exactly 29 bytes.
        let field = |range: std::ops::Range<usize>| value.get(range).ok_or(HeaderError::Syntax);
        let number = |range: std::ops::Range<usize>| {
            field(range).and_then(|digits| {
                if digits.iter().all(u8::is_ascii_digit) {
                    parse_u32(digits).ok_or(HeaderError::Syntax)
                } else {
                    Err(HeaderError::Syntax)
                }
            })
        };
        if value.len() != 29
            || !WEEKDAYS.contains(&field(0..3)?)
            || field(3..5)? != b", "
            || field(7..8)? != b" "
            || field(11..12)? != b" "
            || field(16..17)? != b" "
            || field(19..20)? != b":"
            || field(22..23)? != b":"
            || field(25..29)? != b" GMT"
        {
            return Err(HeaderError::Syntax);
        }
        let month = MONTHS
            .iter()
            .position(|name| *name == field(8..11).unwrap_or_default())
            .ok_or(HeaderError::Syntax)?;
        let date = SipDate {
            day: u8::try_from(number(5..7)?).map_err(|_| HeaderError::OutOfRange)?,
            month: u8::try_from(month + 1).map_err(|_| HeaderError::OutOfRange)?,
            year: u16::try_from(number(12..16)?).map_err(|_| HeaderError::OutOfRange)?,
            hour: u8::try_from(number(17..19)?).map_err(|_| HeaderError::OutOfRange)?,
            minute: u8::try_from(number(20..22)?).map_err(|_| HeaderError::OutOfRange)?,
            second: u8::try_from(number(23..25)?).map_err(|_| HeaderError::OutOfRange)?,
        };
        if !(1..=31).contains(&date.day) || date.hour > 23 || date.minute > 59 || date.second > 60 {
            return Err(HeaderError::OutOfRange);
        }
        Ok(date)
    }
}

// ---------------------------------------------------------------------------------------------
// Authorization / WWW-Authenticate
// ---------------------------------------------------------------------------------------------

/// `Authorization`, `Proxy-Authorization`, `WWW-Authenticate` and `Proxy-Authenticate`:
/// `scheme LWS auth-param *(COMMA auth-param)`. Works for Digest and for unknown schemes alike
/// (RFC 4475 regaut01).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuthHeader<'a> {
    scheme: &'a str,
    params: &'a [u8],
}

impl<'a> AuthHeader<'a> {
    /// Parses and validates the whole value.
    pub fn parse(value: &'a [u8]) -> Result<Self, HeaderError> {
        let mut cursor = Cursor::new(value);
        cursor.skip_ws();
        let scheme = cursor.token().ok_or(HeaderError::Syntax)?;
        let before = cursor.rest().len();
        cursor.skip_ws();
        if cursor.rest().len() == before && !cursor.at_end() {
            return Err(HeaderError::Syntax);
        }
        let header = AuthHeader {
            scheme,
            params: cursor.rest(),
        };
        for item in split_list(header.params) {
            if item.is_empty() && trim_ws(header.params).is_empty() {
                break;
            }
            parse_auth_param(item)?;
        }
        Ok(header)
    }

    /// The scheme as received (`Digest`, ...).
    pub fn scheme(&self) -> &'a str {
        self.scheme
    }

    /// True for the Digest scheme.
    pub fn is_digest(&self) -> bool {
        self.scheme.eq_ignore_ascii_case("Digest")
    }

    /// The `name=value` parameters, values as received (quoted strings keep their quotes).
    pub fn params(&self) -> impl Iterator<Item = Param<'a>> + 'a {
        split_list(self.params).filter_map(|item| parse_auth_param(item).ok())
    }

    /// The unquoted value of parameter `name` (ASCII case-insensitive), escapes resolved.
    pub fn param(&self, name: &str) -> Option<Cow<'a, [u8]>> {
        self.params()
            .find(|param| param.name.eq_ignore_ascii_case(name))
            .and_then(|param| param.value_unquoted())
    }
}

fn parse_auth_param(item: &[u8]) -> Result<Param<'_>, HeaderError> {
    let mut cursor = Cursor::new(item);
    cursor.skip_ws();
    let name = cursor.token().ok_or(HeaderError::Syntax)?;
    cursor.skip_ws();
    if !cursor.eat(b'=') {
        return Err(HeaderError::Syntax);
    }
    cursor.skip_ws();
    let value = if cursor.peek() == Some(b'"') {
        cursor.quoted_string().ok_or(HeaderError::UnterminatedQuote)?
    } else {
        let token = cursor.take_while(|b| is_token(b) || b == b'/' || b == b'=');
        if token.is_empty() {
            return Err(HeaderError::Syntax);
        }
        token
    };
    cursor.skip_ws();
    if !cursor.at_end() {
        return Err(HeaderError::Syntax);
    }
    Ok(Param {
        name,
        value: Some(value),
    })
}

// ---------------------------------------------------------------------------------------------
// Ptt-Extension
// ---------------------------------------------------------------------------------------------

/// `Ptt-Extension: <token> *(;param[=value])`, the project's extension header. Parameter names
/// match ASCII case-insensitively.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PttExtension<'a> {
    value: &'a str,
    params: Params<'a>,
}

impl<'a> PttExtension<'a> {
    /// Parses the value.
    pub fn parse(value: &'a [u8]) -> Result<Self, HeaderError> {
        let mut cursor = Cursor::new(value);
        cursor.skip_ws();
        let token = cursor.token().ok_or(HeaderError::Syntax)?;
        let params = Params::parse(cursor.rest())?;
        Ok(PttExtension { value: token, params })
    }

    /// The leading token.
    pub fn value(&self) -> &'a str {
        self.value
    }

    /// The parameters.
    pub fn params(&self) -> Params<'a> {
        self.params
    }

    /// The unquoted value of parameter `name`, matched case-insensitively.
    pub fn param(&self, name: &str) -> Option<Cow<'a, [u8]>> {
        self.params.value(name)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn compact_forms_resolve() {
        let pairs = [
            ("i", HeaderName::CallId),
            ("M", HeaderName::Contact),
            ("e", HeaderName::ContentEncoding),
            ("l", HeaderName::ContentLength),
            ("c", HeaderName::ContentType),
            ("f", HeaderName::From),
            ("s", HeaderName::Subject),
            ("k", HeaderName::Supported),
            ("t", HeaderName::To),
            ("V", HeaderName::Via),
            ("o", HeaderName::Event),
            ("u", HeaderName::AllowEvents),
            ("r", HeaderName::ReferTo),
            ("b", HeaderName::ReferredBy),
            ("x", HeaderName::SessionExpires),
            ("a", HeaderName::AcceptContact),
            ("j", HeaderName::RejectContact),
            ("d", HeaderName::RequestDisposition),
            ("y", HeaderName::Identity),
            ("n", HeaderName::IdentityInfo),
            ("z", HeaderName::Other),
            ("cAlL-iD", HeaderName::CallId),
            ("www-authenticate", HeaderName::WwwAuthenticate),
            ("C%6Fntact", HeaderName::Other),
        ];
        for (text, name) in pairs {
            assert_eq!(HeaderName::from_bytes(text.as_bytes()), name, "{text}");
            if text.len() == 1 && name != HeaderName::Other {
                assert_eq!(name.compact(), text.chars().next().map(|c| c.to_ascii_lowercase()));
            }
        }
    }

    #[test]
    fn via_with_lws_everywhere() {
        let via = Via::parse(b"SIP  /   2.0\r\n /UDP\r\n    192.0.2.2;rport;branch=390skdjuw").expect("via");
        assert_eq!(via.transport(), "UDP");
        assert_eq!(via.host().to_string(), "192.0.2.2");
        assert_eq!(via.branch(), Some("390skdjuw"));
        assert_eq!(via.rport(), Some(None));
        let via = Via::parse(b"SIP/2.0/TCP [2001:db8::9] : 5061 ;received=192.0.2.1;rport=7;x=y").expect("via v6");
        assert_eq!(via.port(), Some(5061));
        assert_eq!(via.rport(), Some(Some(7)));
        assert_eq!(via.received(), "192.0.2.1".parse().ok());
        assert_eq!(via.other_params().count(), 1);
        assert!(Via::parse(b"SIP/2.0/UDP 192.0.2.15;;").is_err());
        assert!(Via::parse(b"SIP/2.0/UDP").is_err());
        assert!(Via::parse(b"SIP/2.0/UDP host;ttl=256").is_err());
    }

    #[test]
    fn name_addr_forms() {
        let to = NameAddr::parse(b"sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n").expect("addr-spec");
        assert_eq!(to.tag(), Some("1918181833n"));
        assert!(!to.is_bracketed());
        let contact = NameAddr::parse(b"sip:+19725552222@gw1.example.net;unknownparam").expect("cparam01");
        assert!(contact.params().contains("unknownparam"));
        assert!(contact.uri().as_sip().is_some_and(|uri| uri.params().next().is_none()));
        let from = NameAddr::parse(br#""J Rosenberg \\\""       <sip:jdrosen@example.com>  ;  tag = 98asjd8"#)
            .expect("quoted");
        assert_eq!(from.display_name().as_deref(), Some(&br#"J Rosenberg \""#[..]));
        assert_eq!(from.tag(), Some("98asjd8"));
        assert!(NameAddr::parse(b"Bell, Alexander <sip:a.g.bell@example.com>").is_err());
        assert!(NameAddr::parse(b"\"Mr. J. User <sip:j.user@example.com>").is_err());
        assert!(NameAddr::parse(b"\"Watson, Thomas\" < sip:t.watson@example.org >").is_err());
        assert!(NameAddr::parse(b"sip:user@example.com?Route=%3Csip:sip.example.com%3E").is_err());
    }

    #[test]
    fn contact_params() {
        let contact = Contact::parse(b"<sip:a@b>;q=0.33;expires=280297596632815").expect("contact");
        assert_eq!(contact.q(), Some(330));
        assert_eq!(contact.expires(), Some(Err(HeaderError::OutOfRange)));
        assert!(Contact::parse(b"<sip:a@b>;q=1.5").is_err());
        assert_eq!(parse_qvalue(b"1.000"), Some(1000));
        assert_eq!(parse_qvalue(b"0"), Some(0));
    }

    #[test]
    fn cseq_and_numbers() {
        let cseq = CSeq::parse(b"0009\r\n  INVITE").expect("cseq");
        assert_eq!(cseq.number, 9);
        assert_eq!(cseq.method, Method::Invite);
        assert_eq!(
            CSeq::parse(b"36893488147419103232 REGISTER"),
            Err(HeaderError::OutOfRange)
        );
        assert!(CSeq::parse(b"1INVITE").is_err());
        assert_eq!(parse_number(b" 0068 "), Ok(68));
        assert_eq!(parse_number(b"-999"), Err(HeaderError::Syntax));
    }

    #[test]
    fn call_id_words() {
        assert_eq!(
            parse_call_id(br#"intmeth.word%ZK-!.*_+'@word`~)(><:\/"][?}{"#),
            Ok(r#"intmeth.word%ZK-!.*_+'@word`~)(><:\/"][?}{"#)
        );
        assert!(parse_call_id(b"a@b@c").is_err());
        assert!(parse_call_id(b"has space").is_err());
    }

    #[test]
    fn digest_params() {
        let auth = AuthHeader::parse(
            br#"Digest username="bob\"s", realm="example.com", nonce="abc,def", uri="sip:x@y", response="0123", algorithm=MD5, qop=auth, nc=00000001"#,
        )
        .expect("digest");
        assert!(auth.is_digest());
        assert_eq!(auth.param("USERNAME").as_deref(), Some(&br#"bob"s"#[..]));
        assert_eq!(auth.param("nonce").as_deref(), Some(&b"abc,def"[..]));
        assert_eq!(auth.param("nc").as_deref(), Some(&b"00000001"[..]));
        assert_eq!(auth.params().count(), 8);
        assert!(AuthHeader::parse(b"Digest username=\"open").is_err());
        assert!(AuthHeader::parse(b"NoOneKnowsThisScheme opaque-data=here").is_ok());
    }

    #[test]
    fn ptt_extension_params() {
        let ext = PttExtension::parse(b"floor-request ; Priority=3;GROUP=\"g 1\";emergency").expect("ptt");
        assert_eq!(ext.value(), "floor-request");
        assert_eq!(ext.param("priority").as_deref(), Some(&b"3"[..]));
        assert_eq!(ext.param("group").as_deref(), Some(&b"g 1"[..]));
        assert!(ext.params().contains("EMERGENCY"));
        assert!(PttExtension::parse(b";x=1").is_err());
    }

    #[test]
    fn dates() {
        let date = SipDate::parse(b"Sat, 15 Oct 2005 04:44:56 GMT").expect("date");
        assert_eq!((date.day, date.month, date.year), (15, 10, 2005));
        assert!(SipDate::parse(b"Fri, 01 Jan 2010 16:00:00 EST").is_err());
    }

    #[test]
    fn media_type() {
        let media = MediaType::parse(b"multipart/mixed;boundary=7a9cbec02ceef655").expect("type");
        assert!(media.is("Multipart", "MIXED"));
        assert_eq!(
            media.params.value("boundary").as_deref(),
            Some(&b"7a9cbec02ceef655"[..])
        );
    }
}
