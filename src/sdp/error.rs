//! Errors of the SDP layer: one enum for reading a body, one for offer/answer.
//!
//! The two kinds a caller must keep apart: a body we cannot read at all ([`SdpError`], and
//! [`OfferAnswerError::Malformed`]-like variants: answer 400, or 488 inside a re-INVITE) and a
//! well-formed body we cannot accept ([`OfferAnswerError::NoCommonCodec`] and friends: 488).
//! [`OfferAnswerError::kind`] says which.

#![deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

/// Why an SDP body could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SdpError {
    /// The body is larger than [`super::MAX_SDP_SIZE`].
    #[error("SDP body of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Size of the body.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The body has more m-lines than [`super::MAX_MEDIA`].
    #[error("SDP has {count} m-lines, more than the limit of {limit}")]
    TooManyMedia {
        /// Number of m-lines.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// An m-line lists more formats than [`super::MAX_FORMATS`].
    #[error("m-line {media} lists more than {limit} formats")]
    TooManyFormats {
        /// Index of the m-line (0-based).
        media: usize,
        /// The limit.
        limit: usize,
    },
    /// The session or one media section has more attributes than [`super::MAX_ATTRIBUTES`].
    #[error("an SDP section has more than {limit} attributes")]
    TooManyAttributes {
        /// The limit.
        limit: usize,
    },
    /// The SDP parser rejected the body (the text is the parser's message).
    #[error("SDP syntax error: {0}")]
    Syntax(String),
}

/// How a caller should treat an [`OfferAnswerError`] (house habit: keep malformed input,
/// unacceptable input and peer protocol violations apart).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The SDP cannot be read or lacks a field it must have: 400 for an initial INVITE (488
    /// inside a dialog), count it.
    Malformed,
    /// Well-formed, but nothing in it we can accept: 488 Not Acceptable Here.
    NotAcceptable,
    /// An answer that breaks RFC 3264 against the offer we sent: end the session (BYE/CANCEL)
    /// and count it.
    ProtocolViolation,
    /// The caller passed us something it built wrong: a bug on this node.
    Local,
}

/// Why an offer could not be answered, or an answer to our offer could not be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OfferAnswerError {
    /// The body could not be parsed.
    #[error(transparent)]
    Sdp(#[from] SdpError),
    /// An active media line has no connection address (neither media- nor session-level c=).
    #[error("m-line {media} has no connection address")]
    NoConnection {
        /// Index of the m-line.
        media: usize,
    },
    /// A connection address (c= or a=rtcp) is not an IP literal we can send to (a host name,
    /// a multicast or otherwise unusable address).
    #[error("m-line {media} has an unusable connection address")]
    BadAddress {
        /// Index of the m-line.
        media: usize,
    },
    /// No m-line is an RTP audio stream we can relay (only video, SRTP, T.38, ...): 488.
    #[error("no acceptable audio stream")]
    NoAcceptableMedia,
    /// The audio stream shares no codec with our preferences: 488.
    #[error("no common codec")]
    NoCommonCodec,
    /// The answer does not have one m-line per offered m-line (RFC 3264 section 6).
    #[error("answer has {answered} m-lines for {offered} offered")]
    MediaCountMismatch {
        /// m-lines in our offer.
        offered: usize,
        /// m-lines in the answer.
        answered: usize,
    },
    /// An answered m-line is of another media type than the offered one at that index.
    #[error("answer m-line {media} does not match the offered media type")]
    MediaMismatch {
        /// Index of the m-line.
        media: usize,
    },
    /// The answerer rejected (port 0) the audio stream we offered.
    #[error("the audio stream was rejected by the answerer")]
    MediaRejected,
    /// The answer lists a payload format we did not offer.
    #[error("answer lists payload type {payload_type} that was not offered")]
    UnofferedFormat {
        /// The payload type number in the answer.
        payload_type: u8,
    },
    /// The relayed video m-line lists no format, or a format that is not an RTP payload type
    /// number (0..=127), or more than one port (F-VID-01): 488.
    #[error("m-line {media} is not a video stream we can relay")]
    BadVideo {
        /// Index of the m-line.
        media: usize,
    },
    /// The SDP we are asked to treat as our own offer has no audio stream (a local bug).
    #[error("the offer we sent has no active audio stream")]
    NoOfferedAudio,
}

impl OfferAnswerError {
    /// How the caller should treat this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            OfferAnswerError::Sdp(_)
            | OfferAnswerError::NoConnection { .. }
            | OfferAnswerError::BadAddress { .. }
            | OfferAnswerError::BadVideo { .. } => ErrorKind::Malformed,
            OfferAnswerError::NoAcceptableMedia | OfferAnswerError::NoCommonCodec | OfferAnswerError::MediaRejected => {
                ErrorKind::NotAcceptable
            }
            OfferAnswerError::MediaCountMismatch { .. }
            | OfferAnswerError::MediaMismatch { .. }
            | OfferAnswerError::UnofferedFormat { .. } => ErrorKind::ProtocolViolation,
            OfferAnswerError::NoOfferedAudio => ErrorKind::Local,
        }
    }

    /// The SIP status to answer an offer with when this error comes from [`super::answer`]:
    /// 400 for a malformed body, 488 otherwise.
    pub fn status_code(&self) -> u16 {
        match self.kind() {
            ErrorKind::Malformed => 400,
            _ => 488,
        }
    }
}
