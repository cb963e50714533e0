//! RFC 4475 "SIP Torture Test Messages", one test per message, named after its file.
//!
//! The messages are under `tests/data/rfc4475/` byte for byte (CRLF line ends, the binary part
//! of mpart01, the control characters of intmeth). Each test asserts what the RFC says about
//! its message:
//!
//! - section 3.1.1 (valid syntax): the message parses and validates, and the typed views return
//!   the values the RFC explains;
//! - section 3.1.2 (invalid syntax): the message is refused, and the refusal is a 400 (505 for
//!   badvers) when the request can be answered, a drop for responses;
//! - sections 3.2 to 3.4 (transaction and application layer): the message parses; the test
//!   checks the value the upper layer decides on and names that decision.

use bytes::Bytes;
use floorcast::sip::{
    ContactList, ErrorAction, Frame, FramingError, HeaderError, HeaderName, Host, Message, Method, ParseError,
    Rejection, StreamFramer, Uri,
};

fn datagram(bytes: &'static [u8]) -> Result<Message, Rejection> {
    Message::parse_datagram(Bytes::from_static(bytes))
}

#[track_caller]
fn valid(bytes: &'static [u8]) -> Message {
    match datagram(bytes) {
        Ok(message) => {
            // The same message framed from a stream is the same message (when it has a
            // Content-Length, which streams require, and fills the datagram).
            let whole = message.as_bytes().len() == bytes.len();
            if whole && message.content_length().ok().flatten().is_some() {
                assert_eq!(stream(bytes), Ok(vec![Frame::Message(message.clone())]));
            }
            // Serialising and parsing again gives the same view.
            let again = Message::parse_datagram(message.to_normalized_bytes()).expect("normalised form parses");
            assert_eq!(again.start_line(), message.start_line());
            assert_eq!(again.headers().count(), message.headers().count());
            assert_eq!(again.body(), message.body());
            message
        }
        Err(rejection) => panic!("expected a valid message, got {rejection:?}"),
    }
}

#[track_caller]
fn rejected(bytes: &'static [u8]) -> Rejection {
    match datagram(bytes) {
        Ok(message) => panic!("expected a rejection, got {message:?}"),
        Err(rejection) => rejection,
    }
}

/// Asserts a 400 (or `status`) answer that copies the request's Call-ID and CSeq.
#[track_caller]
fn assert_answered(rejection: &Rejection, status: u16) {
    match rejection.action() {
        ErrorAction::Respond { status: got, reason } => {
            assert_eq!(got, status);
            assert!(!reason.is_empty());
        }
        ErrorAction::Drop => panic!("expected {status}, got a drop for {:?}", rejection.error()),
    }
    let request = rejection.message().expect("partly parsed request");
    let response = rejection.response("t0").expect("response builds");
    assert_eq!(response.status(), Some(status));
    assert_eq!(
        response.header(HeaderName::CallId).map(|h| h.unfolded()),
        request.header(HeaderName::CallId).map(|h| h.unfolded())
    );
    assert_eq!(
        response.header(HeaderName::CSeq).map(|h| h.unfolded()),
        request.header(HeaderName::CSeq).map(|h| h.unfolded())
    );
    assert_eq!(
        response.headers_of(HeaderName::Via).count(),
        request.headers_of(HeaderName::Via).count()
    );
}

fn stream(bytes: &[u8]) -> Result<Vec<Frame>, FramingError> {
    let mut framer = StreamFramer::default();
    framer.push(bytes);
    let mut frames = Vec::new();
    while let Some(frame) = framer.next_frame()? {
        frames.push(frame);
    }
    Ok(frames)
}

fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).expect("utf-8")
}

fn sip_user(uri: &Uri<'_>) -> Vec<u8> {
    uri.as_sip()
        .and_then(|uri| uri.user_unescaped())
        .expect("sip user")
        .into_owned()
}

// =============================================================================================
// 3.1.1 Valid messages
// =============================================================================================

/// 3.1.1.1 A short tortuous INVITE: folding everywhere, escaped quotes, empty Subject, LWS
/// around every separator, compact and long forms mixed, unknown headers and parameters.
#[test]
fn rfc4475_wsinv() {
    let message = valid(include_bytes!("data/rfc4475/wsinv.dat"));
    assert_eq!(message.method(), Some(Method::Invite));
    let Some(Ok(Uri::Sip(uri))) = message.request_uri() else {
        panic!("sip request-uri")
    };
    assert_eq!(uri.user(), Some("vivekg"));
    assert_eq!(uri.host(), Host::Name("chair-dnrc.example.com"));
    assert!(uri.param("unknownparam").is_some());

    let to = message.to().expect("To");
    assert!(!to.is_bracketed());
    assert_eq!(to.tag(), Some("1918181833n"));
    let from = message.from().expect("From");
    assert_eq!(from.display_name().as_deref(), Some(&br#"J Rosenberg \""#[..]));
    assert_eq!(from.tag(), Some("98asjd8"));
    assert_eq!(message.max_forwards(), Ok(Some(68)));
    assert_eq!(message.call_id(), Ok("wsinv.ndaksdj@192.0.2.1"));
    assert_eq!(message.content_length(), Ok(Some(150)));
    let cseq = message.cseq().expect("CSeq");
    assert_eq!((cseq.number, cseq.method), (9, Method::Invite));

    let vias: Vec<_> = message.vias().map(|via| via.expect("via")).collect();
    assert_eq!(vias.len(), 3);
    assert_eq!(
        (vias[0].transport(), vias[0].host_raw(), vias[0].branch()),
        ("UDP", "192.0.2.2", Some("390skdjuw"))
    );
    assert_eq!(
        (vias[1].transport(), vias[1].host_raw(), vias[1].branch()),
        ("TCP", "spindle.example.com", Some("z9hG4bK9ikj8"))
    );
    assert_eq!(
        (vias[2].transport(), vias[2].host_raw(), vias[2].branch()),
        ("UDP", "192.168.255.111", Some("z9hG4bK30239"))
    );
    assert_eq!(vias[0].protocol_version(), "2.0");

    let subject = message.header(HeaderName::Subject).expect("empty Subject present");
    assert!(subject.value.is_empty());
    let newfangled = message
        .headers_named("NewFangledHeader")
        .next()
        .expect("NewFangledHeader");
    assert_eq!(&*newfangled.unfolded(), b"newfangled value continued newfangled value");
    let unusual = message
        .headers_named("unknownheaderwithunusualvalue")
        .next()
        .expect("unusual");
    assert_eq!(unusual.value, b";;,,;;,;");

    let routes: Vec<_> = message.routes().map(|route| route.expect("route")).collect();
    assert_eq!(routes.len(), 1);
    let route = routes[0].uri().as_sip().expect("sip route");
    assert!(route.param("lr").is_some());
    assert_eq!(route.param("unknownwith").and_then(|p| p.value), Some("value"));
    assert!(route.param("unknown-no-value").is_some_and(|p| p.value.is_none()));

    let ContactList::Addresses(contacts) = message.contacts().expect("Contact") else {
        panic!("not *")
    };
    assert_eq!(contacts.len(), 1);
    let contact = &contacts[0];
    assert_eq!(
        contact.address().display_name().as_deref(),
        Some(&br#"Quoted string """#[..])
    );
    assert_eq!(
        contact.address().params().value("newparam").as_deref(),
        Some(&b"newvalue"[..])
    );
    assert!(contact.address().params().contains("secondparam"));
    assert_eq!(contact.q(), Some(330));
    assert!(message
        .content_type()
        .expect("type")
        .is_some_and(|t| t.is("application", "sdp")));
    assert_eq!(message.body().len(), 150);
}

/// 3.1.1.2 Wide range of valid characters: an extension method, a URI user and password full of
/// marks, control characters escaped in a quoted display name, UTF-8 in a parameter and an
/// extension header. Upper layer: the method is unknown, so a UAS answers 501.
#[test]
fn rfc4475_intmeth() {
    let message = valid(include_bytes!("data/rfc4475/intmeth.dat"));
    let method = message.method().expect("request");
    assert_eq!(method, Method::Extension("!interesting-Method0123456789_*+`.%indeed'~"));
    let Some(Ok(Uri::Sip(uri))) = message.request_uri() else {
        panic!("sip request-uri")
    };
    assert_eq!(uri.user(), Some("1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"));
    assert_eq!(uri.password(), Some("&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"));
    assert_eq!(uri.host(), Host::Name("example.com"));
    assert_eq!(message.top_via().expect("via").branch(), Some("z9hG4bK-.!%66*_+`'~"));

    let to = message.to().expect("To");
    assert_eq!(to.display_name().as_deref(), Some(&b"BEL:\x07 NUL:\x00 DEL:\x7F"[..]));
    assert_eq!(sip_user(to.uri()), b"1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*");
    let from = message.from().expect("From");
    assert_eq!(
        from.display_name().as_deref(),
        Some(&b"token1~` token2'+_ token3*%!.-"[..])
    );
    let param = from.params().get("fromParam''~+*_!.-%").expect("fromParam");
    assert_eq!(param.value_str().as_deref(), Some("работающий"));
    assert_eq!(from.tag(), Some("_token~1'+`*%!-."));
    assert_eq!(message.call_id(), Ok(r#"intmeth.word%ZK-!.*_+'@word`~)(><:\/"][?}{"#));
    assert_eq!(message.cseq().expect("CSeq").method, method);
    assert_eq!(message.max_forwards(), Ok(Some(255)));
    let extension = message
        .headers_named("extensionHeader-!.%*+_`'~")
        .next()
        .expect("extension header");
    assert_eq!(text(extension.value), "\u{feff}大停電");
}

/// 3.1.1.3 Valid use of the % escaping mechanism: escaped characters in the Request-URI user,
/// To and From users, and Contact URI parameters, which compare equal to their unescaped forms.
#[test]
fn rfc4475_esc01() {
    let message = valid(include_bytes!("data/rfc4475/esc01.dat"));
    let Some(Ok(uri)) = message.request_uri() else {
        panic!("request-uri")
    };
    assert_eq!(sip_user(&uri), b"sips:user@example.com");
    assert_eq!(uri.as_sip().map(|uri| uri.host()), Some(Host::Name("example.net")));
    assert_eq!(sip_user(message.to().expect("To").uri()), b"user");
    assert_eq!(sip_user(message.from().expect("From").uri()), b"I have spaces");
    let ContactList::Addresses(contacts) = message.contacts().expect("Contact") else {
        panic!("not *")
    };
    let contact = contacts[0].uri().as_sip().expect("sip contact");
    assert_eq!(contact.user_unescaped().as_deref(), Some(&b"caller"[..]));
    assert!(contact.param("lr").is_some());
    let name = contact.param("name").expect("n%61me");
    assert_eq!(name.value_unescaped().as_deref(), Some(&b"value%41"[..]));
    assert_eq!(message.call_id(), Ok("esc01.239409asdfakjkn23onasd0-3234"));
    assert!(message.content_type().expect("c:").is_some());
}

/// 3.1.1.4 Escaped nulls in URIs: `%00` is legal and decodes to a NUL byte; two Contacts.
#[test]
fn rfc4475_escnull() {
    let message = valid(include_bytes!("data/rfc4475/escnull.dat"));
    assert_eq!(sip_user(message.to().expect("To").uri()), b"null-\x00-null");
    assert_eq!(sip_user(message.from().expect("From").uri()), b"null-\x00-null");
    let ContactList::Addresses(contacts) = message.contacts().expect("Contact") else {
        panic!("not *")
    };
    let users: Vec<Vec<u8>> = contacts.iter().map(|contact| sip_user(contact.uri())).collect();
    assert_eq!(users, vec![b"\x00".to_vec(), b"\x00\x00".to_vec()]);
    assert_eq!(message.content_length(), Ok(Some(0)));
}

/// 3.1.1.5 Use of % when it is not an escape: the method `RE%47IST%45R` is an extension method
/// (not REGISTER), `%Z%45` in a display name is literal, and `C%6Fntact` is an unknown header,
/// not Contact.
#[test]
fn rfc4475_esc02() {
    let message = valid(include_bytes!("data/rfc4475/esc02.dat"));
    assert_eq!(message.method(), Some(Method::Extension("RE%47IST%45R")));
    assert_ne!(message.method(), Some(Method::Register));
    assert_eq!(message.cseq().expect("CSeq").method, Method::Extension("RE%47IST%45R"));
    assert_eq!(message.to().expect("To").display_name().as_deref(), Some(&b"%Z%45"[..]));
    assert_eq!(message.top_via().expect("via").branch(), Some("z9hG4bK209%fzsnel234"));
    let ContactList::Addresses(contacts) = message.contacts().expect("Contact") else {
        panic!("not *")
    };
    let hosts: Vec<String> = contacts
        .iter()
        .map(|contact| contact.uri().as_sip().expect("sip").host().to_string())
        .collect();
    assert_eq!(hosts, vec!["host1.example.com", "host3.example.com"]);
    let odd = message.headers_named("C%6Fntact").next().expect("extension header");
    assert_eq!(odd.name, HeaderName::Other);
}

/// 3.1.1.6 No LWS between display name and `<`.
#[test]
fn rfc4475_lwsdisp() {
    let message = valid(include_bytes!("data/rfc4475/lwsdisp.dat"));
    let from = message.from().expect("From");
    assert_eq!(from.display_name().as_deref(), Some(&b"caller"[..]));
    assert_eq!(from.tag(), Some("323"));
    assert!(from.is_bracketed());
}

/// 3.1.1.7 Long values in header fields, and 34 Via values under eleven spellings of the name.
#[test]
fn rfc4475_longreq() {
    let message = valid(include_bytes!("data/rfc4475/longreq.dat"));
    let to = message.to().expect("To");
    let display = to.display_name().expect("display name");
    assert!(text(&display).starts_with("I have a user name of extremeextreme"));
    assert!(text(&display).ends_with("extreme proportion"));
    let to_uri = to.uri().as_sip().expect("sip To");
    assert_eq!(to_uri.port(), Some(6000));
    assert_eq!(
        to_uri.param("unknownparam1").and_then(|p| p.value).map(str::len),
        Some(4 + 4 * 20 + 5)
    );
    assert_eq!(to_uri.params().count(), 3);
    let from = message.from().expect("From");
    assert_eq!(from.tag().map(str::len), Some(2 + 3 * 50 + 3));
    assert_eq!(from.params().iter().count(), 3);
    assert_eq!(
        message.call_id().map(str::len),
        Ok("longreq.one".len() + 6 * 20 + "longcallid".len())
    );

    let vias: Vec<_> = message.vias().map(|via| via.expect("via")).collect();
    assert_eq!(vias.len(), 34);
    assert_eq!(vias[0].host_raw(), "sip33.example.com");
    assert_eq!(vias[32].host_raw(), "sip1.example.com");
    let last = &vias[33];
    assert_eq!(last.received(), "192.0.2.5".parse().ok());
    assert!(last.branch().is_some_and(|branch| branch.len() > 200));
    let unknown = message
        .headers()
        .find(|header| header.raw_name.starts_with("Unknown-LongLong"))
        .expect("long unknown header");
    assert!(unknown.value.starts_with(b"unknown-longlong"));
    let ContactList::Addresses(contacts) = message.contacts().expect("Contact") else {
        panic!("not *")
    };
    assert_eq!(
        contacts[0].uri().as_sip().and_then(|uri| uri.user()).map(str::len),
        Some(5 * 23)
    );
    assert_eq!(message.content_length(), Ok(Some(150)));
}

/// 3.1.1.8 Extra trailing octets in a UDP datagram: only the REGISTER is processed, the INVITE
/// after its (zero-length) body is ignored.
#[test]
fn rfc4475_dblreq() {
    let bytes = include_bytes!("data/rfc4475/dblreq.dat");
    let message = valid(bytes);
    assert_eq!(message.method(), Some(Method::Register));
    assert!(message.body().is_empty());
    assert!(message.as_bytes().len() < bytes.len());
    assert!(message.as_bytes().ends_with(b"Content-Length: 0\r\n\r\n"));
    assert_eq!(message.call_id(), Ok("dblreq.0ha0isndaksdj99sdfafnl3lk233412"));
}

/// 3.1.1.9 Semicolon-separated parameters in the URI user part: `user;par=u%40example.net` is
/// the user, and the Request-URI has no parameters. Accept is folded over three lines.
#[test]
fn rfc4475_semiuri() {
    let message = valid(include_bytes!("data/rfc4475/semiuri.dat"));
    let Some(Ok(Uri::Sip(uri))) = message.request_uri() else {
        panic!("sip request-uri")
    };
    assert_eq!(uri.user(), Some("user;par=u%40example.net"));
    assert_eq!(uri.host(), Host::Name("example.com"));
    assert_eq!(uri.params().count(), 0);
    let accept: Vec<&str> = message.list_values(HeaderName::Accept).map(text).collect();
    assert_eq!(
        accept,
        vec![
            "application/sdp",
            "application/pkcs7-mime",
            "multipart/mixed",
            "multipart/signed",
            "message/sip",
            "message/sipfrag"
        ]
    );
}

/// 3.1.1.10 Varied and unknown transport types in Via.
#[test]
fn rfc4475_transports() {
    let message = valid(include_bytes!("data/rfc4475/transports.dat"));
    let transports: Vec<String> = message
        .vias()
        .map(|via| via.expect("via").transport().to_owned())
        .collect();
    assert_eq!(transports, vec!["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]);
    assert_eq!(message.call_id(), Ok("transports.kijh4akdnaqjkwendsasfdj"));
}

/// 3.1.1.11 Multipart MIME message whose second part is binary and holds NUL bytes: framed by
/// Content-Length, not by text scanning.
#[test]
fn rfc4475_mpart01() {
    let message = valid(include_bytes!("data/rfc4475/mpart01.dat"));
    assert_eq!(message.method(), Some(Method::Message));
    assert_eq!(message.content_length(), Ok(Some(553)));
    assert_eq!(message.body().len(), 553);
    assert!(message.body().contains(&0));
    assert!(message.body().ends_with(b"--7a9cbec02ceef655--\r\n"));
    let content_type = message.content_type().expect("type").expect("present");
    assert!(content_type.is("multipart", "mixed"));
    assert_eq!(
        content_type.params.value("boundary").as_deref(),
        Some(&b"7a9cbec02ceef655"[..])
    );
    let via = message.top_via().expect("via");
    assert_eq!(via.rport(), Some(None));
    assert_eq!(via.port(), Some(5070));
    assert_eq!(
        message
            .date()
            .expect("date")
            .map(|date| (date.day, date.month, date.year)),
        Some((15, 10, 2005))
    );
    assert!(message
        .header(HeaderName::Identity)
        .is_some_and(|identity| identity.value.ends_with(b"=")));
}

/// 3.1.1.12 Unusual reason phrase: UTF-8 text.
#[test]
fn rfc4475_unreason() {
    let message = valid(include_bytes!("data/rfc4475/unreason.dat"));
    assert_eq!(message.status(), Some(200));
    assert_eq!(
        text(message.reason_phrase().expect("reason")),
        "= 2**3 * 5**2 но сто девяносто девять - простое"
    );
    assert_eq!(message.cseq().expect("CSeq").method, Method::Invite);
}

/// 3.1.1.13 Empty reason phrase.
#[test]
fn rfc4475_noreason() {
    let message = valid(include_bytes!("data/rfc4475/noreason.dat"));
    assert_eq!(message.status(), Some(100));
    assert_eq!(message.reason_phrase(), Some(&b""[..]));
}

// =============================================================================================
// 3.1.2 Invalid messages
// =============================================================================================

/// 3.1.2.1 Extraneous header field separators in Via and Contact: 400.
#[test]
fn rfc4475_badinv01() {
    let rejection = rejected(include_bytes!("data/rfc4475/badinv01.dat"));
    assert!(matches!(
        rejection.error(),
        ParseError::InvalidHeader {
            name: HeaderName::Via,
            ..
        }
    ));
    assert_answered(&rejection, 400);
}

/// 3.1.2.2 Content-Length larger than the message: 400 on UDP; on a stream the receiver keeps
/// waiting for the rest of the body.
#[test]
fn rfc4475_clerr() {
    let bytes = include_bytes!("data/rfc4475/clerr.dat");
    let rejection = rejected(bytes);
    assert_eq!(rejection.error(), ParseError::ContentLengthTooLarge);
    assert_answered(&rejection, 400);
    assert_eq!(stream(bytes), Ok(vec![]));
}

/// 3.1.2.3 Negative Content-Length: 400 on UDP; on a stream the framing is lost and the
/// connection must close.
#[test]
fn rfc4475_ncl() {
    let bytes = include_bytes!("data/rfc4475/ncl.dat");
    let rejection = rejected(bytes);
    assert_eq!(
        rejection.error(),
        ParseError::InvalidHeader {
            name: HeaderName::ContentLength,
            error: HeaderError::Syntax
        }
    );
    assert_answered(&rejection, 400);
    assert_eq!(stream(bytes), Err(FramingError::InvalidContentLength));
}

/// 3.1.2.4 Request scalar fields with overlarge values: 400 because of the CSeq. Max-Forwards and
/// the expiry values are out of range too; the RFC lets a registrar treat the expiries as its
/// default, so their typed views report the overflow instead of wrapping.
#[test]
fn rfc4475_scalar02() {
    let rejection = rejected(include_bytes!("data/rfc4475/scalar02.dat"));
    assert_eq!(
        rejection.error(),
        ParseError::InvalidHeader {
            name: HeaderName::CSeq,
            error: HeaderError::OutOfRange
        }
    );
    assert_answered(&rejection, 400);
    let message = rejection.message().expect("indexed");
    assert_eq!(message.max_forwards(), Err(HeaderError::OutOfRange));
    assert_eq!(message.expires(), Err(HeaderError::OutOfRange));
    let ContactList::Addresses(contacts) = message.contacts().expect("Contact") else {
        panic!("not *")
    };
    assert_eq!(contacts[0].expires(), Some(Err(HeaderError::OutOfRange)));
}

/// 3.1.2.5 Response scalar fields with overlarge values: a response, so it is dropped.
#[test]
fn rfc4475_scalarlg() {
    let rejection = rejected(include_bytes!("data/rfc4475/scalarlg.dat"));
    assert!(matches!(
        rejection.error(),
        ParseError::InvalidHeader {
            name: HeaderName::CSeq,
            ..
        }
    ));
    assert_eq!(rejection.action(), ErrorAction::Drop);
}

/// 3.1.2.6 Unterminated quoted string in the To display name: 400.
#[test]
fn rfc4475_quotbal() {
    let rejection = rejected(include_bytes!("data/rfc4475/quotbal.dat"));
    assert_eq!(
        rejection.error(),
        ParseError::InvalidHeader {
            name: HeaderName::To,
            error: HeaderError::UnterminatedQuote
        }
    );
    assert_answered(&rejection, 400);
}

/// 3.1.2.7 `<>` enclosing the Request-URI: 400.
#[test]
fn rfc4475_ltgtruri() {
    let rejection = rejected(include_bytes!("data/rfc4475/ltgtruri.dat"));
    assert_eq!(rejection.error(), ParseError::InvalidRequestUri);
    assert_answered(&rejection, 400);
}

/// 3.1.2.8 Malformed SIP Request-URI (embedded LWS): 400.
#[test]
fn rfc4475_lwsruri() {
    let rejection = rejected(include_bytes!("data/rfc4475/lwsruri.dat"));
    assert_eq!(rejection.error(), ParseError::InvalidRequestUri);
    assert_answered(&rejection, 400);
}

/// 3.1.2.9 Multiple SP separating Request-Line elements: the RFC allows rejecting it; we answer
/// 400.
#[test]
fn rfc4475_lwsstart() {
    let rejection = rejected(include_bytes!("data/rfc4475/lwsstart.dat"));
    assert_eq!(rejection.error(), ParseError::MalformedRequestLine);
    assert_answered(&rejection, 400);
}

/// 3.1.2.10 SP characters at the end of the Request-Line: the RFC allows rejecting it; we answer
/// 400.
#[test]
fn rfc4475_trws() {
    let rejection = rejected(include_bytes!("data/rfc4475/trws.dat"));
    assert_eq!(rejection.error(), ParseError::MalformedRequestLine);
    assert_answered(&rejection, 400);
}

/// 3.1.2.11 Escaped headers in the SIP Request-URI: the RFC allows rejecting it; we answer 400
/// (and never act on the escaped Route).
#[test]
fn rfc4475_escruri() {
    let rejection = rejected(include_bytes!("data/rfc4475/escruri.dat"));
    assert_eq!(rejection.error(), ParseError::InvalidRequestUri);
    assert_answered(&rejection, 400);
}

/// 3.1.2.12 Invalid time zone in the Date header. The RFC advises against rejecting the request
/// unless the Date matters to the element; it does not to Floorcast, so the message is accepted
/// and only the typed Date view refuses the value. Upper layer: ignore Date.
#[test]
fn rfc4475_baddate() {
    let message = valid(include_bytes!("data/rfc4475/baddate.dat"));
    assert_eq!(message.date(), Err(HeaderError::Syntax));
    assert!(message.header(HeaderName::Date).is_some());
}

/// 3.1.2.13 Failure to enclose a name-addr URI carrying a `?` header in `<>`: 400.
#[test]
fn rfc4475_regbadct() {
    let rejection = rejected(include_bytes!("data/rfc4475/regbadct.dat"));
    assert!(matches!(
        rejection.error(),
        ParseError::InvalidHeader {
            name: HeaderName::Contact,
            ..
        }
    ));
    assert_answered(&rejection, 400);
}

/// 3.1.2.14 Spaces within addr-spec (`< sip:... >`): 400.
#[test]
fn rfc4475_badaspec() {
    let rejection = rejected(include_bytes!("data/rfc4475/badaspec.dat"));
    assert!(matches!(
        rejection.error(),
        ParseError::InvalidHeader {
            name: HeaderName::To,
            ..
        }
    ));
    assert_answered(&rejection, 400);
}

/// 3.1.2.15 Non-token characters in an unquoted display name: 400.
#[test]
fn rfc4475_baddn() {
    let rejection = rejected(include_bytes!("data/rfc4475/baddn.dat"));
    assert!(matches!(
        rejection.error(),
        ParseError::InvalidHeader {
            name: HeaderName::From,
            ..
        }
    ));
    assert_answered(&rejection, 400);
}

/// 3.1.2.16 Unknown protocol version SIP/7.0: 505 Version Not Supported.
#[test]
fn rfc4475_badvers() {
    let rejection = rejected(include_bytes!("data/rfc4475/badvers.dat"));
    assert_eq!(rejection.error(), ParseError::UnsupportedVersion);
    assert_answered(&rejection, 505);
}

/// 3.1.2.17 Start line and CSeq method mismatch: 400.
#[test]
fn rfc4475_mismatch01() {
    let rejection = rejected(include_bytes!("data/rfc4475/mismatch01.dat"));
    assert_eq!(rejection.error(), ParseError::CSeqMethodMismatch);
    assert_answered(&rejection, 400);
}

/// 3.1.2.18 Unknown method with CSeq method mismatch: 400, not 501.
#[test]
fn rfc4475_mismatch02() {
    let rejection = rejected(include_bytes!("data/rfc4475/mismatch02.dat"));
    assert_eq!(rejection.error(), ParseError::CSeqMethodMismatch);
    assert_answered(&rejection, 400);
}

/// 3.1.2.19 Overlarge response code: dropped.
#[test]
fn rfc4475_bigcode() {
    let rejection = rejected(include_bytes!("data/rfc4475/bigcode.dat"));
    assert_eq!(rejection.error(), ParseError::BadStatusLine);
    assert!(rejection.message().is_none());
    assert_eq!(rejection.action(), ErrorAction::Drop);
}

// =============================================================================================
// 3.2 Transaction layer semantics
// =============================================================================================

/// 3.2.1 Missing transaction identifier: the branch is the bare magic cookie. Parses; upper
/// layer: fall back to RFC 2543 transaction matching, or answer 400 statelessly.
#[test]
fn rfc4475_badbranch() {
    let message = valid(include_bytes!("data/rfc4475/badbranch.dat"));
    let via = message.top_via().expect("via");
    assert_eq!(via.branch(), Some("z9hG4bK"));
    assert!(!via.has_rfc3261_branch());
}

// =============================================================================================
// 3.3 Application layer semantics
// =============================================================================================

/// 3.3.1 Missing required header fields (To, From, Call-ID). The RFC hopes for a 400, but a
/// response needs To, From and Call-ID to be well formed, so the node drops it (and counts it).
#[test]
fn rfc4475_insuf() {
    let rejection = rejected(include_bytes!("data/rfc4475/insuf.dat"));
    assert_eq!(rejection.error(), ParseError::MissingHeader(HeaderName::From));
    assert_eq!(rejection.action(), ErrorAction::Drop);
    assert!(rejection.message().is_some_and(|message| message.top_via().is_ok()));
}

/// 3.3.2 Request-URI with an unknown scheme: parses; upper layer answers 416.
#[test]
fn rfc4475_unkscm() {
    let message = valid(include_bytes!("data/rfc4475/unkscm.dat"));
    let Some(Ok(Uri::Other(uri))) = message.request_uri() else {
        panic!("opaque uri")
    };
    assert_eq!(uri.scheme(), "nobodyKnowsThisScheme");
    assert_eq!(uri.opaque(), "totallyopaquecontent");
}

/// 3.3.3 Request-URI with a known but atypical scheme (`soap.beep`): parses; upper layer
/// answers 416 as it does not support it.
#[test]
fn rfc4475_novelsc() {
    let message = valid(include_bytes!("data/rfc4475/novelsc.dat"));
    let Some(Ok(uri)) = message.request_uri() else {
        panic!("uri")
    };
    assert_eq!(uri.scheme(), "soap.beep");
    assert!(uri.as_sip().is_none());
}

/// 3.3.4 Unknown URI schemes in To, From and Contact: parses; upper layer: a registrar answers
/// 400 because the To of a REGISTER must be a SIP or SIPS address of record.
#[test]
fn rfc4475_unksm2() {
    let message = valid(include_bytes!("data/rfc4475/unksm2.dat"));
    assert_eq!(message.to().expect("To").uri().scheme(), "isbn");
    assert_eq!(message.from().expect("From").uri().scheme(), "http");
    let ContactList::Addresses(contacts) = message.contacts().expect("Contact") else {
        panic!("not *")
    };
    assert_eq!(contacts[0].uri().as_str(), "name:John_Smith");
    assert!(message.to().expect("To").uri().as_sip().is_none());
}

/// 3.3.5 Proxy-Require and Require with unknown option tags: parses; upper layer answers 420
/// Bad Extension listing them in Unsupported.
#[test]
fn rfc4475_bext01() {
    let message = valid(include_bytes!("data/rfc4475/bext01.dat"));
    let require: Vec<&str> = message.list_values(HeaderName::Require).map(text).collect();
    assert_eq!(require, vec!["nothingSupportsThis", "nothingSupportsThisEither"]);
    let proxy: Vec<&str> = message.list_values(HeaderName::ProxyRequire).map(text).collect();
    assert_eq!(proxy, vec!["noProxiesSupportThis", "norDoAnyProxiesSupportThis"]);
    assert_eq!(message.top_via().expect("via").transport(), "TLS");
}

/// 3.3.6 Unknown Content-Type: parses; upper layer answers 415 with an Accept header.
#[test]
fn rfc4475_invut() {
    let message = valid(include_bytes!("data/rfc4475/invut.dat"));
    let content_type = message.content_type().expect("type").expect("present");
    assert!(content_type.is("application", "unknownformat"));
    assert_eq!(message.body().len(), 40);
}

/// 3.3.7 Unknown authorization scheme: parses; upper layer: a registrar that authenticates
/// answers 401 with a Digest challenge, ignoring this credential.
#[test]
fn rfc4475_regaut01() {
    let message = valid(include_bytes!("data/rfc4475/regaut01.dat"));
    let credentials = message.authorization().expect("Authorization").expect("present");
    assert_eq!(credentials.scheme(), "NoOneKnowsThisScheme");
    assert!(!credentials.is_digest());
    assert_eq!(credentials.param("opaque-data").as_deref(), Some(&b"here"[..]));
}

/// 3.3.8 Multiple values in single-value fields (CSeq, Call-ID, To, From, Max-Forwards): 400.
#[test]
fn rfc4475_multi01() {
    let rejection = rejected(include_bytes!("data/rfc4475/multi01.dat"));
    assert!(matches!(rejection.error(), ParseError::DuplicateHeader(_)));
    assert_answered(&rejection, 400);
}

/// 3.3.9 Multiple, conflicting Content-Length values: 400 on UDP; on a stream the framing is
/// lost and the connection must close.
#[test]
fn rfc4475_mcl01() {
    let bytes = include_bytes!("data/rfc4475/mcl01.dat");
    let rejection = rejected(bytes);
    assert_eq!(
        rejection.error(),
        ParseError::DuplicateHeader(HeaderName::ContentLength)
    );
    assert_answered(&rejection, 400);
    assert_eq!(stream(bytes), Err(FramingError::InvalidContentLength));
}

/// 3.3.10 200 OK with a broadcast address in the second Via: parses; upper layer: a proxy must
/// not forward the response to the broadcast address (Floorcast, not being a proxy, consumes
/// the top Via only).
#[test]
fn rfc4475_bcast() {
    let message = valid(include_bytes!("data/rfc4475/bcast.dat"));
    assert_eq!(message.status(), Some(200));
    let hosts: Vec<Host<'_>> = message.vias().map(|via| via.expect("via").host()).collect();
    assert_eq!(hosts[1], Host::V4(std::net::Ipv4Addr::BROADCAST));
}

/// 3.3.11 Max-Forwards of zero: parses; upper layer: answer an OPTIONS addressed to the node,
/// 483 Too Many Hops for anything it would forward.
#[test]
fn rfc4475_zeromf() {
    let message = valid(include_bytes!("data/rfc4475/zeromf.dat"));
    assert_eq!(message.max_forwards(), Ok(Some(0)));
}

/// 3.3.12 REGISTER with a Contact header parameter: in addr-spec form `;unknownparam` belongs to
/// the header field, not to the URI (RFC 3261 section 20.10).
#[test]
fn rfc4475_cparam01() {
    let message = valid(include_bytes!("data/rfc4475/cparam01.dat"));
    let ContactList::Addresses(contacts) = message.contacts().expect("Contact") else {
        panic!("not *")
    };
    let contact = contacts[0].address();
    assert!(!contact.is_bracketed());
    assert!(contact.params().contains("unknownparam"));
    assert_eq!(contact.uri().as_sip().expect("sip").params().count(), 0);
}

/// 3.3.13 REGISTER with a url-parameter: inside `<>`, `;unknownparam` belongs to the URI.
#[test]
fn rfc4475_cparam02() {
    let message = valid(include_bytes!("data/rfc4475/cparam02.dat"));
    let ContactList::Addresses(contacts) = message.contacts().expect("Contact") else {
        panic!("not *")
    };
    let contact = contacts[0].address();
    assert!(contact.is_bracketed());
    assert!(contact.params().is_empty());
    assert!(contact.uri().as_sip().expect("sip").param("unknownparam").is_some());
}

/// 3.3.14 REGISTER with a URL-escaped header in the Contact URI: well formed; upper layer: the
/// registrar may store it, or refuse that header.
#[test]
fn rfc4475_regescrt() {
    let message = valid(include_bytes!("data/rfc4475/regescrt.dat"));
    let ContactList::Addresses(contacts) = message.contacts().expect("Contact") else {
        panic!("not *")
    };
    let uri = contacts[0].uri().as_sip().expect("sip");
    let headers: Vec<_> = uri.headers().collect();
    assert_eq!(headers, vec![("Route", "%3Csip:sip.example.com%3E")]);
    assert_eq!(message.content_length(), Ok(Some(0)));
}

/// 3.3.15 Unacceptable Accept offering: parses; upper layer answers 406 Not Acceptable.
#[test]
fn rfc4475_sdp01() {
    let message = valid(include_bytes!("data/rfc4475/sdp01.dat"));
    let accept: Vec<&str> = message.list_values(HeaderName::Accept).map(text).collect();
    assert_eq!(accept, vec!["text/nobodyKnowsThis"]);
}

// =============================================================================================
// 3.4 Backward compatibility
// =============================================================================================

/// 3.4.1 INVITE with RFC 2543 syntax: no branch, no Max-Forwards, no From tag, no
/// Content-Length (on UDP the body runs to the end of the datagram), and `;user=phone` outside
/// brackets, which is a To parameter. Parses; upper layer: RFC 2543 transaction matching and a
/// Max-Forwards of 70. On a stream it cannot be framed.
#[test]
fn rfc4475_inv2543() {
    let bytes = include_bytes!("data/rfc4475/inv2543.dat");
    let message = valid(bytes);
    let via = message.top_via().expect("via");
    assert_eq!(via.branch(), None);
    assert!(!via.has_rfc3261_branch());
    assert_eq!(message.max_forwards(), Ok(None));
    assert_eq!(message.from().expect("From").tag(), None);
    assert_eq!(message.content_length(), Ok(None));
    assert!(message.body().starts_with(b"v=0") && message.body().ends_with(b"RTP/AVP 0\r\n"));
    let to = message.to().expect("To");
    assert!(to.params().contains("user"));
    assert_eq!(to.uri().as_sip().expect("sip").params().count(), 0);
    let from = message.from().expect("From");
    assert_eq!(
        from.uri()
            .as_sip()
            .and_then(|uri| uri.param("user"))
            .and_then(|p| p.value),
        Some("phone")
    );
    assert_eq!(message.record_routes().count(), 1);
    assert_eq!(stream(bytes), Err(FramingError::MissingContentLength));
}

// =============================================================================================
// All messages, every path
// =============================================================================================

const ALL: &[&[u8]] = &[
    include_bytes!("data/rfc4475/wsinv.dat"),
    include_bytes!("data/rfc4475/intmeth.dat"),
    include_bytes!("data/rfc4475/esc01.dat"),
    include_bytes!("data/rfc4475/escnull.dat"),
    include_bytes!("data/rfc4475/esc02.dat"),
    include_bytes!("data/rfc4475/lwsdisp.dat"),
    include_bytes!("data/rfc4475/longreq.dat"),
    include_bytes!("data/rfc4475/dblreq.dat"),
    include_bytes!("data/rfc4475/semiuri.dat"),
    include_bytes!("data/rfc4475/transports.dat"),
    include_bytes!("data/rfc4475/mpart01.dat"),
    include_bytes!("data/rfc4475/unreason.dat"),
    include_bytes!("data/rfc4475/noreason.dat"),
    include_bytes!("data/rfc4475/badinv01.dat"),
    include_bytes!("data/rfc4475/clerr.dat"),
    include_bytes!("data/rfc4475/ncl.dat"),
    include_bytes!("data/rfc4475/scalar02.dat"),
    include_bytes!("data/rfc4475/scalarlg.dat"),
    include_bytes!("data/rfc4475/quotbal.dat"),
    include_bytes!("data/rfc4475/ltgtruri.dat"),
    include_bytes!("data/rfc4475/lwsruri.dat"),
    include_bytes!("data/rfc4475/lwsstart.dat"),
    include_bytes!("data/rfc4475/trws.dat"),
    include_bytes!("data/rfc4475/escruri.dat"),
    include_bytes!("data/rfc4475/baddate.dat"),
    include_bytes!("data/rfc4475/regbadct.dat"),
    include_bytes!("data/rfc4475/badaspec.dat"),
    include_bytes!("data/rfc4475/baddn.dat"),
    include_bytes!("data/rfc4475/badvers.dat"),
    include_bytes!("data/rfc4475/mismatch01.dat"),
    include_bytes!("data/rfc4475/mismatch02.dat"),
    include_bytes!("data/rfc4475/bigcode.dat"),
    include_bytes!("data/rfc4475/badbranch.dat"),
    include_bytes!("data/rfc4475/insuf.dat"),
    include_bytes!("data/rfc4475/unkscm.dat"),
    include_bytes!("data/rfc4475/novelsc.dat"),
    include_bytes!("data/rfc4475/unksm2.dat"),
    include_bytes!("data/rfc4475/bext01.dat"),
    include_bytes!("data/rfc4475/invut.dat"),
    include_bytes!("data/rfc4475/regaut01.dat"),
    include_bytes!("data/rfc4475/multi01.dat"),
    include_bytes!("data/rfc4475/mcl01.dat"),
    include_bytes!("data/rfc4475/bcast.dat"),
    include_bytes!("data/rfc4475/zeromf.dat"),
    include_bytes!("data/rfc4475/cparam01.dat"),
    include_bytes!("data/rfc4475/cparam02.dat"),
    include_bytes!("data/rfc4475/regescrt.dat"),
    include_bytes!("data/rfc4475/sdp01.dat"),
    include_bytes!("data/rfc4475/inv2543.dat"),
];

fn exercise(message: &Message) {
    let _ = message.validate();
    let _ = (message.from(), message.to(), message.call_id(), message.cseq());
    let _ = (
        message.max_forwards(),
        message.expires(),
        message.date(),
        message.contacts(),
    );
    let _ = (message.content_type(), message.authorization(), message.ptt_extension());
    let _ = (
        message.vias().count(),
        message.routes().count(),
        message.record_routes().count(),
    );
    let _ = message.to_normalized_bytes();
}

/// Every message through every entry point and typed view, chunked byte by byte through the
/// framer: nothing panics, and the framer agrees whatever the chunking.
#[test]
fn rfc4475_all_messages_every_path() {
    assert_eq!(ALL.len(), 49);
    for &bytes in ALL {
        let whole = stream(bytes);
        let mut framer = StreamFramer::default();
        let mut frames = Vec::new();
        let mut outcome = Ok(());
        for byte in bytes {
            framer.push(std::slice::from_ref(byte));
            loop {
                match framer.next_frame() {
                    Ok(Some(frame)) => frames.push(frame),
                    Ok(None) => break,
                    Err(error) => {
                        outcome = Err(error);
                        break;
                    }
                }
            }
            if outcome.is_err() {
                break;
            }
        }
        assert_eq!(outcome.map(|()| frames), whole);

        match Message::parse_datagram_unvalidated(Bytes::from_static(bytes)) {
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

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

    /// The torture messages with random byte edits (insert, delete, overwrite): no panic on any
    /// path, and a rejection that says to answer always yields that response.
    #[test]
    fn rfc4475_mutated_messages_never_panic(
        which in 0..49usize,
        edits in proptest::collection::vec(
            (proptest::prelude::any::<proptest::sample::Index>(), proptest::prelude::any::<u8>(), 0u8..3),
            1..16,
        ),
    ) {
        let mut bytes = ALL[which].to_vec();
        for (index, byte, kind) in edits {
            let at = index.index(bytes.len() + 1);
            match kind {
                0 => bytes.insert(at, byte),
                1 if at < bytes.len() => {
                    bytes.remove(at);
                }
                _ if at < bytes.len() => bytes[at] = byte,
                _ => {}
            }
        }
        let _ = stream(&bytes);
        match Message::parse_datagram(Bytes::from(bytes)) {
            Ok(message) => exercise(&message),
            Err(rejection) => {
                if let ErrorAction::Respond { status, .. } = rejection.action() {
                    let response = rejection.response("t");
                    proptest::prop_assert_eq!(response.and_then(|r| r.status()), Some(status));
                }
                if let Some(message) = rejection.message() {
                    exercise(message);
                }
            }
        }
    }
}
