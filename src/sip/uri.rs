//! SIP and SIPS URIs (RFC 3261 section 19.1), with other schemes kept opaque.
//!
//! [`Uri::parse`] borrows every component from its input; escapes stay escaped in the view and
//! are decoded on request ([`SipUri::user_unescaped`], [`UriParam::value_unescaped`]), or while
//! comparing ([`SipUri::param`] matches `%6C%72` against `lr`).
#![deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![warn(missing_docs)]

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::sip::syntax::{ascii_str, escapes_valid, parse_u64, substr, unescape, unescaped_eq_ignore_case};

/// Why a URI did not parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UriError {
    /// The URI has no `scheme:` prefix, or the scheme holds characters a scheme cannot.
    #[error("missing or invalid URI scheme")]
    Scheme,
    /// The user or password part holds a character or escape the grammar forbids.
    #[error("invalid user or password in URI")]
    UserInfo,
    /// The host is neither a host name, an IPv4 address nor a bracketed IPv6 address.
    #[error("invalid host in URI")]
    Host,
    /// The port is empty, not decimal or larger than 65535.
    #[error("invalid port in URI")]
    Port,
    /// A `;name=value` parameter is malformed.
    #[error("invalid URI parameter")]
    Parameter,
    /// The `?name=value&...` headers part is malformed.
    #[error("invalid URI headers")]
    Headers,
    /// The URI holds white space, control characters or other bytes no URI may contain.
    #[error("invalid character in URI")]
    Character,
}

/// A parsed URI: SIP or SIPS in detail, any other scheme as an opaque string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Uri<'a> {
    /// A `sip:` or `sips:` URI.
    Sip(SipUri<'a>),
    /// Another scheme (`tel:`, `http:`, ...), kept as received.
    Other(OpaqueUri<'a>),
}

impl<'a> Uri<'a> {
    /// Parses a URI. The whole input must be the URI: no surrounding white space or brackets.
    pub fn parse(input: &'a [u8]) -> Result<Self, UriError> {
        let colon = memchr::memchr(b':', input).ok_or(UriError::Scheme)?;
        let scheme_bytes = input.get(..colon).unwrap_or_default();
        let rest = input.get(colon + 1..).unwrap_or_default();
        // The scheme is checked as bytes; its text is taken from the URI's (one UTF-8 check).
        if !is_scheme(scheme_bytes) {
            return Err(UriError::Scheme);
        }
        if scheme_bytes.eq_ignore_ascii_case(b"sip") {
            SipUri::parse_after_scheme(input, rest, false).map(Uri::Sip)
        } else if scheme_bytes.eq_ignore_ascii_case(b"sips") {
            SipUri::parse_after_scheme(input, rest, true).map(Uri::Sip)
        } else {
            if rest.is_empty() || !rest.iter().all(|&b| is_opaque_char(b)) {
                return Err(UriError::Character);
            }
            let text = ascii_str(input).ok_or(UriError::Character)?;
            let scheme = substr(text, scheme_bytes).ok_or(UriError::Scheme)?;
            let opaque = substr(text, rest).ok_or(UriError::Character)?;
            Ok(Uri::Other(OpaqueUri { text, scheme, opaque }))
        }
    }

    /// The URI exactly as received.
    pub fn as_str(&self) -> &'a str {
        match self {
            Uri::Sip(uri) => uri.text,
            Uri::Other(uri) => uri.text,
        }
    }

    /// The SIP view, if this is a `sip:` or `sips:` URI.
    pub fn as_sip(&self) -> Option<&SipUri<'a>> {
        match self {
            Uri::Sip(uri) => Some(uri),
            Uri::Other(_) => None,
        }
    }

    /// The scheme as received (`sip`, `SIPS`, `tel`, ...).
    pub fn scheme(&self) -> &'a str {
        match self {
            Uri::Sip(uri) => uri.text.split(':').next().unwrap_or_default(),
            Uri::Other(uri) => uri.scheme,
        }
    }
}

impl fmt::Display for Uri<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// A URI with a scheme this parser does not look into, such as `tel:` or `http:`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpaqueUri<'a> {
    text: &'a str,
    scheme: &'a str,
    opaque: &'a str,
}

impl<'a> OpaqueUri<'a> {
    /// The scheme, as received.
    pub fn scheme(&self) -> &'a str {
        self.scheme
    }

    /// Everything after `scheme:`.
    pub fn opaque(&self) -> &'a str {
        self.opaque
    }
}

/// The host of a SIP URI or Via sent-by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Host<'a> {
    /// A DNS name, as received (compare case-insensitively).
    Name(&'a str),
    /// An IPv4 address.
    V4(Ipv4Addr),
    /// An IPv6 address (written in brackets in the URI).
    V6(Ipv6Addr),
}

impl<'a> Host<'a> {
    /// Parses `hostname / IPv4address / IPv6reference`. Bare IPv6 (without brackets) is
    /// accepted too, as some Via `received` values carry it that way.
    pub fn parse(input: &'a [u8]) -> Result<Self, UriError> {
        Self::parse_str(ascii_str(input).ok_or(UriError::Host)?)
    }

    /// [`Host::parse`] of text already known to be valid (no second UTF-8 check).
    pub(crate) fn parse_str(text: &'a str) -> Result<Self, UriError> {
        let bytes = text.as_bytes();
        if let [b'[', .., b']'] = bytes {
            let inner = text.get(1..text.len() - 1).ok_or(UriError::Host)?;
            return inner.parse().map(Host::V6).map_err(|_| UriError::Host);
        }
        if bytes.is_empty() {
            return Err(UriError::Host);
        }
        // One pass classifies the text: IPv4 (digits and dots), bare IPv6 (a colon), or a host
        // name, whose labels (trailing dots ignored) must be non-empty runs of host characters.
        let mut digits_and_dots = true;
        let mut colon = false;
        let mut labels_ok = true;
        let mut after_dot = true;
        let mut empty_label = false;
        let mut label_bytes = false;
        for &byte in bytes {
            if byte == b'.' {
                empty_label |= after_dot;
                after_dot = true;
                continue;
            }
            if !byte.is_ascii_digit() {
                digits_and_dots = false;
                colon |= byte == b':';
                labels_ok &= is_host_char(byte);
            }
            // An empty label followed by more text (not only by trailing dots).
            labels_ok &= !empty_label;
            after_dot = false;
            label_bytes = true;
        }
        if digits_and_dots {
            return parse_ipv4(bytes).map(Host::V4).ok_or(UriError::Host);
        }
        if colon {
            return text.parse().map(Host::V6).map_err(|_| UriError::Host);
        }
        if labels_ok && label_bytes {
            Ok(Host::Name(text))
        } else {
            Err(UriError::Host)
        }
    }

    /// The address, when the host is an IP literal.
    pub fn ip(&self) -> Option<IpAddr> {
        match *self {
            Host::Name(_) => None,
            Host::V4(address) => Some(IpAddr::V4(address)),
            Host::V6(address) => Some(IpAddr::V6(address)),
        }
    }
}

impl fmt::Display for Host<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(name) => formatter.write_str(name),
            Host::V4(address) => write!(formatter, "{address}"),
            Host::V6(address) => write!(formatter, "[{address}]"),
        }
    }
}

/// A `sip:` or `sips:` URI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SipUri<'a> {
    text: &'a str,
    secure: bool,
    user: Option<&'a str>,
    password: Option<&'a str>,
    host: Host<'a>,
    port: Option<u16>,
    params: &'a str,
    headers: Option<&'a str>,
}

impl<'a> SipUri<'a> {
    fn parse_after_scheme(whole: &'a [u8], rest: &'a [u8], secure: bool) -> Result<Self, UriError> {
        if !rest.iter().all(|&b| b.is_ascii_graphic()) || rest.is_empty() {
            return Err(UriError::Character);
        }
        // The scheme (alphanumerics, `+-.`), the colon and `rest` (checked just above) are ASCII:
        // one UTF-8 view of the whole, no separate ASCII pass.
        let text = std::str::from_utf8(whole).map_err(|_| UriError::Character)?;
        // '@' may not appear unescaped in a parameter or header, so the first one ends userinfo.
        let (user, password, hostpart) = match memchr::memchr(b'@', rest) {
            Some(at) => {
                let userinfo = rest.get(..at).unwrap_or_default();
                let hostpart = rest.get(at + 1..).unwrap_or_default();
                let (user, password) = match userinfo.iter().position(|&b| b == b':') {
                    Some(colon) => (
                        userinfo.get(..colon).unwrap_or_default(),
                        Some(userinfo.get(colon + 1..).unwrap_or_default()),
                    ),
                    None => (userinfo, None),
                };
                if user.is_empty() || !user.iter().all(|&b| is_user_char(b)) || !escapes_valid(user) {
                    return Err(UriError::UserInfo);
                }
                if let Some(password) = password {
                    if !password.iter().all(|&b| is_password_char(b)) || !escapes_valid(password) {
                        return Err(UriError::UserInfo);
                    }
                }
                (
                    substr(text, user),
                    password.and_then(|password| substr(text, password)),
                    hostpart,
                )
            }
            None => (None, None, rest),
        };

        // hostport
        let host_end = if hostpart.first() == Some(&b'[') {
            hostpart
                .iter()
                .position(|&b| b == b']')
                .map(|close| close + 1)
                .ok_or(UriError::Host)?
        } else {
            hostpart
                .iter()
                .position(|&b| matches!(b, b':' | b';' | b'?'))
                .unwrap_or(hostpart.len())
        };
        let host_bytes = hostpart.get(..host_end).unwrap_or_default();
        let host = Host::parse_str(substr(text, host_bytes).ok_or(UriError::Host)?)?;
        let mut rest = hostpart.get(host_end..).unwrap_or_default();
        let mut port = None;
        if let Some(after_colon) = rest.strip_prefix(b":") {
            let digits_end = after_colon
                .iter()
                .position(|b| !b.is_ascii_digit())
                .unwrap_or(after_colon.len());
            let digits = after_colon.get(..digits_end).unwrap_or_default();
            let value = parse_u64(digits)
                .and_then(|value| u16::try_from(value).ok())
                .ok_or(UriError::Port)?;
            port = Some(value);
            rest = after_colon.get(digits_end..).unwrap_or_default();
        }

        // uri-parameters
        let params_end = rest.iter().position(|&b| b == b'?').unwrap_or(rest.len());
        let params = rest.get(..params_end).unwrap_or_default();
        if !params.is_empty() {
            if params.first() != Some(&b';') {
                return Err(UriError::Host);
            }
            for param in params.split(|&b| b == b';').skip(1) {
                let (name, value) = split_once(param, b'=');
                let name_ok = !name.is_empty() && name.iter().all(|&b| is_param_char(b));
                let value_ok = value.map_or(true, |value| {
                    !value.is_empty() && value.iter().all(|&b| is_param_char(b))
                });
                if !name_ok || !value_ok || !escapes_valid(param) {
                    return Err(UriError::Parameter);
                }
            }
        }

        // headers
        let headers = match rest.get(params_end..) {
            Some([b'?', headers @ ..]) => {
                for header in headers.split(|&b| b == b'&') {
                    let (name, value) = split_once(header, b'=');
                    let name_ok = !name.is_empty() && name.iter().all(|&b| is_header_char(b));
                    let value_ok = value.is_some_and(|value| value.iter().all(|&b| is_header_char(b)));
                    if !name_ok || !value_ok || !escapes_valid(header) {
                        return Err(UriError::Headers);
                    }
                }
                Some(substr(text, headers).ok_or(UriError::Headers)?)
            }
            _ => None,
        };

        Ok(SipUri {
            text,
            secure,
            user,
            password,
            host,
            port,
            params: substr(text, params).ok_or(UriError::Parameter)?,
            headers,
        })
    }

    /// The URI exactly as received.
    pub fn as_str(&self) -> &'a str {
        self.text
    }

    /// True for `sips:`.
    pub fn is_secure(&self) -> bool {
        self.secure
    }

    /// The user part, still escaped.
    pub fn user(&self) -> Option<&'a str> {
        self.user
    }

    /// The user part with `%HH` escapes decoded (may hold any byte, `%00` included).
    pub fn user_unescaped(&self) -> Option<Cow<'a, [u8]>> {
        self.user.map(|user| unescape(user.as_bytes()))
    }

    /// The password, still escaped.
    pub fn password(&self) -> Option<&'a str> {
        self.password
    }

    /// The host.
    pub fn host(&self) -> Host<'a> {
        self.host
    }

    /// The explicit port, if any.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// The `uri-parameters`, in order.
    pub fn params(&self) -> impl Iterator<Item = UriParam<'a>> + 'a {
        self.params.split(';').skip(1).map(|param| match param.split_once('=') {
            Some((name, value)) => UriParam {
                name,
                value: Some(value),
            },
            None => UriParam {
                name: param,
                value: None,
            },
        })
    }

    /// The first parameter whose (unescaped) name equals `name`, ignoring ASCII case.
    pub fn param(&self, name: &str) -> Option<UriParam<'a>> {
        self.params()
            .find(|param| unescaped_eq_ignore_case(param.name.as_bytes(), name.as_bytes()))
    }

    /// The `transport` parameter value.
    pub fn transport(&self) -> Option<&'a str> {
        self.param("transport").and_then(|param| param.value)
    }

    /// The `headers` part after `?`, still escaped. The Request-URI may not carry one.
    pub fn headers_raw(&self) -> Option<&'a str> {
        self.headers
    }

    /// The `?name=value&...` headers, split; values still escaped.
    pub fn headers(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.headers
            .into_iter()
            .flat_map(|headers| headers.split('&'))
            .map(|header| header.split_once('=').unwrap_or((header, "")))
    }
}

impl fmt::Display for SipUri<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.text)
    }
}

/// One `;name[=value]` parameter of a SIP URI, still escaped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UriParam<'a> {
    /// The name, as received.
    pub name: &'a str,
    /// The value, as received; `None` for a flag such as `lr`.
    pub value: Option<&'a str>,
}

impl<'a> UriParam<'a> {
    /// The name with escapes decoded.
    pub fn name_unescaped(&self) -> Cow<'a, [u8]> {
        unescape(self.name.as_bytes())
    }

    /// The value with escapes decoded.
    pub fn value_unescaped(&self) -> Option<Cow<'a, [u8]>> {
        self.value.map(|value| unescape(value.as_bytes()))
    }
}

fn split_once(input: &[u8], separator: u8) -> (&[u8], Option<&[u8]>) {
    match input.iter().position(|&b| b == separator) {
        Some(index) => (input.get(..index).unwrap_or_default(), input.get(index + 1..)),
        None => (input, None),
    }
}

fn is_scheme(bytes: &[u8]) -> bool {
    bytes.first().is_some_and(u8::is_ascii_alphabetic)
        && bytes
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

fn is_host_char(byte: u8) -> bool {
    // RFC 3261 allows alphanum and '-'; '_' is accepted because deployed names carry it.
    byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_'
}

/// A byte class as a table: `unreserved` (alphanum / mark) plus `extra`. The URI parser asks
/// these for every byte of a user part, parameter or header. Evaluated at compile time only
/// (the statics below), over its own bounds: no network data reaches this indexing.
#[allow(clippy::indexing_slicing)]
const fn unreserved_and(extra: &[u8]) -> [bool; 256] {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        let b = byte as u8;
        table[byte] =
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'!' | b'~' | b'*' | b'\'' | b'(' | b')');
        byte += 1;
    }
    let mut index = 0;
    while index < extra.len() {
        table[extra[index] as usize] = true;
        index += 1;
    }
    table
}

static USER_CHARS: [bool; 256] = unreserved_and(b"%&=+$,;?/");
static PASSWORD_CHARS: [bool; 256] = unreserved_and(b"%&=+$,");
static PARAM_CHARS: [bool; 256] = unreserved_and(b"%[]/:&+$");
static HEADER_CHARS: [bool; 256] = unreserved_and(b"%[]/?:+$");

/// `user = 1*( unreserved / escaped / user-unreserved )`
fn is_user_char(byte: u8) -> bool {
    USER_CHARS.get(usize::from(byte)).copied().unwrap_or(false)
}

/// `password = *( unreserved / escaped / "&" / "=" / "+" / "$" / "," )`
fn is_password_char(byte: u8) -> bool {
    PASSWORD_CHARS.get(usize::from(byte)).copied().unwrap_or(false)
}

/// `paramchar = param-unreserved / unreserved / escaped`
fn is_param_char(byte: u8) -> bool {
    PARAM_CHARS.get(usize::from(byte)).copied().unwrap_or(false)
}

/// `hname` / `hvalue` characters.
fn is_header_char(byte: u8) -> bool {
    HEADER_CHARS.get(usize::from(byte)).copied().unwrap_or(false)
}

/// Characters an opaque (non-SIP) URI may hold: RFC 3986 reserved and unreserved, `%`, and a
/// few that deployed schemes use. White space, quotes and angle brackets end a URI.
fn is_opaque_char(byte: u8) -> bool {
    byte.is_ascii_graphic() && !matches!(byte, b'<' | b'>' | b'"' | b'\\' | b'{' | b'}' | b'|' | b'^' | b'`')
}

/// Dotted-quad IPv4 from digits and dots, with the rules of `Ipv4Addr::from_str` (four decimal
/// octets of at most three digits, no leading zeros, each at most 255), without its general
/// parser machinery.
fn parse_ipv4(text: &[u8]) -> Option<Ipv4Addr> {
    if text.len() > 15 {
        return None;
    }
    let mut octets = [0u8; 4];
    let mut parts = text.split(|&b| b == b'.');
    for octet in &mut octets {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 3 || (part.len() > 1 && part.first() == Some(&b'0')) {
            return None;
        }
        let mut value: u16 = 0;
        for &digit in part {
            if !digit.is_ascii_digit() {
                return None;
            }
            value = value * 10 + u16::from(digit - b'0');
        }
        *octet = u8::try_from(value).ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(Ipv4Addr::from(octets))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_parses_as_the_standard_library_does() {
        let cases = [
            "0.0.0.0",
            "1.2.3.4",
            "255.255.255.255",
            "256.1.1.1",
            "01.2.3.4",
            "1.2.3",
            "1.2.3.4.5",
            "1..3.4",
            ".1.2.3",
            "1.2.3.",
            "",
            "1234.1.1.1",
            "000.0.0.0",
            "0.0.0.00",
            "10.0.0.255",
            "192.168.001.1",
            "1.2.3.4444",
            "99.99.99.99",
        ];
        for case in cases {
            assert_eq!(parse_ipv4(case.as_bytes()), case.parse().ok(), "{case:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn ipv4_agrees_with_the_standard_library(text in "[0-9.]{0,18}") {
            proptest::prop_assert_eq!(parse_ipv4(text.as_bytes()), text.parse().ok());
        }
    }

    /// The host parser as it was before the one-pass rewrite, as the reference.
    fn host_reference(text: &str) -> Result<Host<'_>, UriError> {
        if !text.is_ascii() {
            return Err(UriError::Host);
        }
        if let Some(inner) = text.strip_prefix('[').and_then(|rest| rest.strip_suffix(']')) {
            return inner.parse().map(Host::V6).map_err(|_| UriError::Host);
        }
        if text.is_empty() {
            return Err(UriError::Host);
        }
        if text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return text.parse().map(Host::V4).map_err(|_| UriError::Host);
        }
        if text.contains(':') {
            return text.parse().map(Host::V6).map_err(|_| UriError::Host);
        }
        let labels_ok = text
            .trim_end_matches('.')
            .split('.')
            .all(|label| !label.is_empty() && label.bytes().all(is_host_char));
        if labels_ok {
            Ok(Host::Name(text))
        } else {
            Err(UriError::Host)
        }
    }

    #[test]
    fn host_parses_as_the_reference_does() {
        for case in [
            "",
            ".",
            "..",
            "a",
            "a.",
            "a..",
            ".a",
            "a..b",
            "a.b.c",
            "a_b-c.d",
            "1.2.3.4",
            "1.2.3.4.",
            "1.2.a",
            "[::1]",
            "[::1",
            "::1",
            "[]",
            "[",
            "]",
            "a:b",
            "1:2",
            "é",
            "a é",
            "[é]",
            "-a.b-",
            "1..2",
            "999.1.1.1",
        ] {
            assert_eq!(Host::parse_str(case), host_reference(case), "{case:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn host_agrees_with_the_reference(text in "[0-9a-f.:_\\-\\[\\]é ]{0,12}") {
            proptest::prop_assert_eq!(Host::parse_str(&text), host_reference(&text));
        }
    }

    fn sip(input: &str) -> SipUri<'_> {
        match Uri::parse(input.as_bytes()) {
            Ok(Uri::Sip(uri)) => uri,
            other => panic!("{input}: {other:?}"),
        }
    }

    #[test]
    fn parses_full_sip_uri() {
        let uri = sip("sips:alice:secret@[2001:db8::1]:5061;transport=tcp;lr?subject=hi&x=%20");
        assert!(uri.is_secure());
        assert_eq!(uri.user(), Some("alice"));
        assert_eq!(uri.password(), Some("secret"));
        assert_eq!(uri.host(), Host::V6("2001:db8::1".parse().expect("literal")));
        assert_eq!(uri.port(), Some(5061));
        assert_eq!(uri.transport(), Some("tcp"));
        assert!(uri.param("LR").is_some());
        let headers: Vec<_> = uri.headers().collect();
        assert_eq!(headers, vec![("subject", "hi"), ("x", "%20")]);
    }

    #[test]
    fn escaped_params_compare_decoded() {
        let uri = sip("sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31");
        assert_eq!(uri.user_unescaped().as_deref(), Some(&b"caller"[..]));
        assert!(uri.param("lr").is_some());
        let name = uri.param("name").expect("name param");
        assert_eq!(name.value_unescaped().as_deref(), Some(&b"value%41"[..]));
    }

    #[test]
    fn keeps_unknown_schemes_opaque() {
        let uri = Uri::parse(b"tel:+1-201-555-0123;phone-context=example.com").expect("tel");
        assert_eq!(uri.scheme(), "tel");
        assert!(uri.as_sip().is_none());
        assert!(Uri::parse(b"soap.beep://192.0.2.103:3002").is_ok());
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            &b"<sip:user@example.com>"[..],
            b"sip:user@example.com; lr",
            b"sip:",
            b"sip:user@",
            b"sip:host:99999",
            b"sip:us er@host",
            b"sip:user@host;=x",
            b"sip:user@host?x",
            b"sip:%zz@host",
            b"no-scheme",
            b"1abc:x",
        ] {
            assert!(Uri::parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn host_forms() {
        assert_eq!(Host::parse(b"192.0.2.1"), Ok(Host::V4(Ipv4Addr::new(192, 0, 2, 1))));
        assert_eq!(Host::parse(b"example.com."), Ok(Host::Name("example.com.")));
        assert!(Host::parse(b"999.1.1.1").is_err());
        assert!(Host::parse(b"a..b").is_err());
        assert!(Host::parse(b"[::1").is_err());
    }
}
