//! Stream framing for SIP over TCP and TLS (RFC 3261 section 18.3): check, then parse.
//!
//! [`check`] looks at the front of the receive buffer and says how long the next frame is, or
//! that more bytes are needed ([`FramingError::Incomplete`]), without building anything.
//! [`StreamFramer`] owns the buffer, calls `check`, cuts complete frames off zero-copy and parses
//! them. Content-Length is mandatory on streams; a message without it, with an unreadable one, or
//! larger than the configured maximum cannot be delimited, so the connection must be closed.
//! Line breaks between messages are keep-alives (RFC 5626 section 4.4.1): a double CRLF is a
//! ping that the node answers with a single CRLF; a single CRLF (a pong) is skipped.
#![deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![warn(missing_docs)]

use bytes::{Buf, BytesMut};

use crate::sip::message::{scan_content_length, ContentLengthScan, Message, Rejection};

/// Default upper bound on one framed message, header block and body together.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 64 * 1024;

/// What [`check`] found at the front of the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// A CRLF CRLF keep-alive ping of this many bytes.
    Ping(usize),
    /// A lone line break (keep-alive pong or stray CRLF) of this many bytes, to skip.
    Skip(usize),
    /// A complete message of this many bytes.
    Message(usize),
}

/// Why the front of the buffer is not (yet) a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FramingError {
    /// The header block or the body is not complete yet: read more.
    #[error("incomplete message")]
    Incomplete,
    /// The message (or its header block, still unterminated) exceeds the maximum size.
    #[error("message exceeds the maximum size")]
    TooLarge,
    /// The header block has no Content-Length, so the body cannot be delimited.
    #[error("missing Content-Length on a stream")]
    MissingContentLength,
    /// Content-Length is not a number, or appears more than once (RFC 4475 ncl, mcl01).
    #[error("invalid Content-Length on a stream")]
    InvalidContentLength,
}

impl FramingError {
    /// True when the connection cannot continue (everything but [`FramingError::Incomplete`]).
    pub fn is_fatal(&self) -> bool {
        !matches!(self, FramingError::Incomplete)
    }
}

/// Finds the end of the header block: the offset just after the empty line. Searches from
/// `from` (a resume point from an earlier call; 0 to start over).
fn find_head_end(buffer: &[u8], from: usize) -> Option<usize> {
    let mut position = from;
    loop {
        let rest = buffer.get(position..)?;
        let newline = position + memchr::memchr(b'\n', rest)?;
        let after = newline + 1;
        match buffer.get(after..) {
            Some([b'\n', ..]) => return Some(after + 1),
            Some([b'\r', b'\n', ..]) => return Some(after + 2),
            _ => position = after,
        }
    }
}

/// Sizes the frame at the front of `buffer`, which must start at a frame boundary.
pub fn check(buffer: &[u8], max_message_size: usize) -> Result<Check, FramingError> {
    size_frame(buffer, max_message_size, 0).map_err(|pending| match pending {
        Pending::Head | Pending::Body => FramingError::Incomplete,
        Pending::Fatal(error) => error,
    })
}

/// Why [`size_frame`] found no frame.
enum Pending {
    /// The header block is not complete.
    Head,
    /// The header block is complete, the body is not.
    Body,
    /// The stream cannot be framed.
    Fatal(FramingError),
}

fn size_frame(buffer: &[u8], max_message_size: usize, resume: usize) -> Result<Check, Pending> {
    match buffer {
        [] | [b'\r'] | [b'\r', b'\n'] | [b'\r', b'\n', b'\r'] => return Err(Pending::Head),
        [b'\r', b'\n', b'\r', b'\n', ..] => return Ok(Check::Ping(4)),
        [b'\r', b'\n', ..] => return Ok(Check::Skip(2)),
        [b'\r' | b'\n', ..] => return Ok(Check::Skip(1)),
        _ => {}
    }
    let window = buffer.get(..buffer.len().min(max_message_size)).unwrap_or(buffer);
    let Some(head_end) = find_head_end(window, resume) else {
        return Err(if buffer.len() >= max_message_size {
            Pending::Fatal(FramingError::TooLarge)
        } else {
            Pending::Head
        });
    };
    let head = buffer.get(..head_end).unwrap_or_default();
    let body_len = match scan_content_length(head) {
        ContentLengthScan::Value(length) => {
            usize::try_from(length).map_err(|_| Pending::Fatal(FramingError::TooLarge))?
        }
        ContentLengthScan::Missing => return Err(Pending::Fatal(FramingError::MissingContentLength)),
        ContentLengthScan::Invalid => return Err(Pending::Fatal(FramingError::InvalidContentLength)),
    };
    let total = head_end
        .checked_add(body_len)
        .filter(|total| *total <= max_message_size)
        .ok_or(Pending::Fatal(FramingError::TooLarge))?;
    if buffer.len() < total {
        return Err(Pending::Body);
    }
    Ok(Check::Message(total))
}

/// One item cut from the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// A message that parsed and validated.
    Message(Message),
    /// A complete message that failed validation; the connection can go on. Answer or drop it
    /// as [`Rejection::action`] says.
    Rejected(Rejection),
    /// A CRLF CRLF keep-alive ping: answer with a single CRLF.
    Ping,
}

/// Reassembles messages from a byte stream. Push bytes as they arrive, then call
/// [`StreamFramer::next_frame`] until it returns `Ok(None)`.
#[derive(Debug)]
pub struct StreamFramer {
    buffer: BytesMut,
    max_message_size: usize,
    /// Where the search for the end of the header block resumes, so that a message arriving a
    /// few bytes at a time is not scanned from the start each time.
    resume: usize,
    failed: Option<FramingError>,
}

impl Default for StreamFramer {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_MESSAGE_SIZE)
    }
}

impl StreamFramer {
    /// A framer refusing messages larger than `max_message_size` bytes.
    pub fn new(max_message_size: usize) -> Self {
        Self {
            buffer: BytesMut::with_capacity(max_message_size.min(16 * 1024)),
            max_message_size,
            resume: 0,
            failed: None,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buffer.extend_from_slice(data);
    }

    /// The receive buffer, to read into directly (for example with `read_buf`).
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buffer
    }

    /// Bytes received but not yet framed.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// The next frame: `Ok(None)` when more bytes are needed, `Err` when the stream can no
    /// longer be framed (close the connection; every later call returns the same error).
    #[must_use = "frames must be handled, and a framing error means the connection must close"]
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FramingError> {
        if let Some(error) = self.failed {
            return Err(error);
        }
        loop {
            // Resume a little before the old end, as the empty line may straddle the reads.
            let resume = self.resume.saturating_sub(3);
            match size_frame(&self.buffer, self.max_message_size, resume) {
                Err(Pending::Head) => {
                    self.resume = self.buffer.len();
                    return Ok(None);
                }
                Err(Pending::Body) => return Ok(None),
                Err(Pending::Fatal(error)) => {
                    self.failed = Some(error);
                    return Err(error);
                }
                Ok(Check::Skip(length)) => {
                    self.buffer.advance(length);
                    self.resume = 0;
                }
                Ok(Check::Ping(length)) => {
                    self.buffer.advance(length);
                    self.resume = 0;
                    return Ok(Some(Frame::Ping));
                }
                Ok(Check::Message(length)) => {
                    let bytes = self.buffer.split_to(length).freeze();
                    self.resume = 0;
                    return Ok(Some(match Message::parse_framed(bytes) {
                        Ok(message) => Frame::Message(message),
                        Err(rejection) => Frame::Rejected(rejection),
                    }));
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use crate::sip::builder::MessageBuilder;
    use crate::sip::headers::HeaderName;
    use crate::sip::message::Method;
    use proptest::prelude::*;

    const OPTIONS: &[u8] = b"OPTIONS sip:bob@example.com SIP/2.0\r\n\
Via: SIP/2.0/TCP 192.0.2.1;branch=z9hG4bKx\r\nFrom: <sip:a@example.com>;tag=1\r\n\
To: <sip:bob@example.com>\r\nCall-ID: c1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 3\r\n\r\nabc";

    fn drain(framer: &mut StreamFramer) -> Vec<Frame> {
        let mut frames = Vec::new();
        while let Some(frame) = framer.next_frame().expect("framing") {
            frames.push(frame);
        }
        frames
    }

    #[test]
    fn check_reports_incomplete_until_the_body_is_in() {
        for cut in 0..OPTIONS.len() {
            assert_eq!(check(&OPTIONS[..cut], 1024), Err(FramingError::Incomplete), "cut {cut}");
        }
        assert_eq!(check(OPTIONS, 1024), Ok(Check::Message(OPTIONS.len())));
    }

    #[test]
    fn keepalives_between_messages() {
        let mut framer = StreamFramer::default();
        framer.push(b"\r\n\r\n");
        framer.push(OPTIONS);
        framer.push(b"\r\n");
        framer.push(OPTIONS);
        let frames = drain(&mut framer);
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0], Frame::Ping);
        assert!(matches!(&frames[1], Frame::Message(m) if m.as_bytes() == OPTIONS));
        assert!(matches!(&frames[2], Frame::Message(m) if m.as_bytes() == OPTIONS));
    }

    #[test]
    fn fatal_errors_poison_the_framer() {
        let mut framer = StreamFramer::default();
        framer.push(b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/TCP h\r\n\r\n");
        assert_eq!(framer.next_frame(), Err(FramingError::MissingContentLength));
        assert_eq!(framer.next_frame(), Err(FramingError::MissingContentLength));

        let mut framer = StreamFramer::default();
        framer.push(b"OPTIONS sip:x SIP/2.0\r\nl: -999\r\n\r\n");
        assert_eq!(framer.next_frame(), Err(FramingError::InvalidContentLength));

        let mut framer = StreamFramer::default();
        framer.push(b"OPTIONS sip:x SIP/2.0\r\nl: 13\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(framer.next_frame(), Err(FramingError::InvalidContentLength));

        let mut framer = StreamFramer::new(100);
        framer.push(&[b'a'; 200]);
        assert_eq!(framer.next_frame(), Err(FramingError::TooLarge));

        let mut framer = StreamFramer::new(100);
        framer.push(b"OPTIONS sip:x SIP/2.0\r\nl: 1000\r\n\r\n");
        assert_eq!(framer.next_frame(), Err(FramingError::TooLarge));
    }

    #[test]
    fn invalid_message_is_rejected_not_fatal() {
        let mut framer = StreamFramer::default();
        let mismatch = String::from_utf8(OPTIONS.to_vec())
            .unwrap()
            .replace("1 OPTIONS", "1 INVITE");
        framer.push(mismatch.as_bytes());
        framer.push(OPTIONS);
        let frames = drain(&mut framer);
        assert!(matches!(&frames[0], Frame::Rejected(r) if r.action() != crate::sip::message::ErrorAction::Drop));
        assert!(matches!(&frames[1], Frame::Message(_)));
    }

    // ---- property tests ----------------------------------------------------------------------

    fn token() -> impl Strategy<Value = String> {
        "[A-Za-z0-9][A-Za-z0-9.!%*_+`'~-]{0,11}"
    }

    prop_compose! {
        fn message()(
            method in prop::sample::select(vec!["INVITE", "OPTIONS", "REGISTER", "MESSAGE", "BYE"]),
            user in "[a-z0-9]{1,8}",
            host in "[a-z]{1,8}\\.example\\.com",
            branch in token(),
            tag in token(),
            call_id in token(),
            number in 0u32..100_000,
            extra in proptest::collection::vec((token(), "[ -~]{0,20}"), 0..4),
            body in proptest::collection::vec(any::<u8>(), 0..64),
        ) -> Vec<u8> {
            let mut builder = MessageBuilder::request(Method::from_token(method), &format!("sip:{user}@{host}"))
                .header(HeaderName::Via, format!("SIP/2.0/TCP {host};branch=z9hG4bK{branch}"))
                .header(HeaderName::From, format!("<sip:a@{host}>;tag={tag}"))
                .header(HeaderName::To, format!("<sip:{user}@{host}>"))
                .header(HeaderName::CallId, call_id)
                .header(HeaderName::CSeq, format!("{number} {method}"));
            for (name, value) in extra {
                builder = builder.raw_header(&format!("X-{name}"), value.trim());
            }
            builder.body("application/octet-stream", body).build().expect("builds").as_bytes().to_vec()
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn chunking_does_not_change_the_messages(
            messages in proptest::collection::vec((message(), any::<bool>()), 1..5),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..20),
        ) {
            let mut stream = Vec::new();
            let mut expected = Vec::new();
            for (message, keepalive) in &messages {
                if *keepalive {
                    stream.extend_from_slice(b"\r\n\r\n");
                }
                stream.extend_from_slice(message);
                expected.push(message.clone());
            }
            let mut cuts: Vec<usize> = cuts.iter().map(|index| index.index(stream.len() + 1)).collect();
            cuts.push(stream.len());
            cuts.sort_unstable();
            let mut framer = StreamFramer::default();
            let mut got = Vec::new();
            let mut pings = 0;
            let mut from = 0;
            for cut in cuts {
                framer.push(&stream[from..cut]);
                from = cut;
                for frame in drain(&mut framer) {
                    match frame {
                        Frame::Message(message) => got.push(message.as_bytes().to_vec()),
                        Frame::Rejected(rejection) => panic!("rejected: {rejection}"),
                        Frame::Ping => pings += 1,
                    }
                }
            }
            prop_assert_eq!(got, expected);
            prop_assert_eq!(pings, messages.iter().filter(|(_, keepalive)| *keepalive).count());
            prop_assert_eq!(framer.buffered(), 0);
        }

        #[test]
        fn round_trip_through_the_normalised_form(message in message()) {
            let parsed = Message::parse_datagram(bytes::Bytes::from(message)).expect("valid");
            let again = Message::parse_datagram(parsed.to_normalized_bytes()).expect("still valid");
            prop_assert_eq!(parsed.start_line(), again.start_line());
            let headers = |m: &Message| m.headers().map(|h| (h.raw_name.to_owned(), h.unfolded().into_owned())).collect::<Vec<_>>();
            prop_assert_eq!(headers(&parsed), headers(&again));
            prop_assert_eq!(parsed.body(), again.body());
            // And the raw form round-trips exactly.
            let exact = Message::parse_datagram(parsed.to_bytes()).expect("valid");
            prop_assert_eq!(exact, parsed);
        }

        #[test]
        fn framing_of_arbitrary_bytes_does_not_depend_on_chunking(
            data in proptest::collection::vec(any::<u8>(), 0..600),
            chunk in 1usize..40,
        ) {
            let frames = |chunk: usize| {
                let mut framer = StreamFramer::new(512);
                let mut frames = Vec::new();
                for piece in data.chunks(chunk) {
                    framer.push(piece);
                    loop {
                        match framer.next_frame() {
                            Ok(Some(frame)) => frames.push(frame),
                            Ok(None) => break,
                            Err(error) => return (frames, Some(error)),
                        }
                    }
                }
                (frames, None)
            };
            prop_assert_eq!(frames(data.len().max(1)), frames(chunk));
        }
    }
}
