//! The video stream of a call (F-VID-01): found in a body, checked, and read back from the
//! answer. The relay passes video through like audio, byte for byte: no codec is chosen or
//! transcoded here, the offered formats (H.264, VP8, ...) go on as offered and the answerer
//! picks among them.
//!
//! The relayed video stream of a body is its first active `m=video` over RTP/AVP or RTP/AVPF;
//! every other video m-line (a second one, SRTP) is declined with port 0 by
//! [`super::reanchor_av`], as before.

#![deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;

use sdp_types::Media;

use super::error::OfferAnswerError;
use super::view;
use super::Sdp;

/// The relayed video stream of one body, as the relay needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoStream {
    /// Index of the m-line.
    pub media_index: usize,
    /// Where to send video RTP; `None` while the peer holds with `c=0.0.0.0`.
    pub remote_rtp: Option<SocketAddr>,
    /// Where to send RTCP when the peer said so (`a=rtcp`); `None`: RTP port + 1.
    pub remote_rtcp: Option<SocketAddr>,
    /// The payload type numbers listed, in order (passed through, never renumbered).
    pub payload_types: Vec<u8>,
}

/// The index of the relayed video m-line of a session: the first active RTP video one.
pub(crate) fn video_index(medias: &[Media]) -> Option<usize> {
    medias
        .iter()
        .position(|media| view::is_active(media) && view::is_rtp_video(media))
}

/// The relayed video stream of `sdp`, if it has one (`Ok(None)`: no active RTP video m-line,
/// e.g. none, only port 0, or only SRTP video).
///
/// Errors ([`OfferAnswerError::BadVideo`], address errors): the stream lists no format, a token
/// that is not a payload type number 0..=127, a port count (`m=video 5000/2`), or has an
/// unusable connection address. A node answers such an offer 488.
pub fn video_of(sdp: &Sdp) -> Result<Option<VideoStream>, OfferAnswerError> {
    let session = sdp.session();
    let Some(index) = video_index(&session.medias) else {
        return Ok(None);
    };
    let Some(media) = session.medias.get(index) else {
        return Ok(None);
    };
    stream(session, media, index).map(Some)
}

fn stream(session: &sdp_types::Session, media: &Media, index: usize) -> Result<VideoStream, OfferAnswerError> {
    let bad = OfferAnswerError::BadVideo { media: index };
    if media.num_ports.is_some_and(|ports| ports != 1) {
        return Err(bad);
    }
    let mut payload_types = Vec::new();
    for token in media.fmt.split_ascii_whitespace() {
        match token.parse::<u8>() {
            Ok(number) if number <= 127 => {
                if !payload_types.contains(&number) {
                    payload_types.push(number);
                }
            }
            _ => return Err(bad),
        }
    }
    if payload_types.is_empty() {
        return Err(bad);
    }
    let remote_ip = view::connection_address(session, media, index)?;
    let remote_rtcp = view::rtcp_address(media, index, remote_ip)?;
    Ok(VideoStream {
        media_index: index,
        remote_rtp: remote_ip.map(|ip| SocketAddr::new(ip, media.port)),
        remote_rtcp,
        payload_types,
    })
}

/// The answered video stream for the video stream `offered` of our offer: `Ok(None)` when the
/// answerer declined it (port 0).
///
/// Errors: the answer has no m-line at that index or another media type there, lists a payload
/// type we did not offer, or is malformed as in [`video_of`]. The caller then treats the
/// video as declined (frees its legs, passes the m-line on with port 0).
pub fn video_answer(offered: &VideoStream, answer: &Sdp) -> Result<Option<VideoStream>, OfferAnswerError> {
    let session = answer.session();
    let index = offered.media_index;
    let media = session.medias.get(index).ok_or(OfferAnswerError::MediaCountMismatch {
        offered: index.saturating_add(1),
        answered: session.medias.len(),
    })?;
    if !media.media.eq_ignore_ascii_case("video") {
        return Err(OfferAnswerError::MediaMismatch { media: index });
    }
    if !view::is_active(media) {
        return Ok(None);
    }
    let answered = stream(session, media, index)?;
    if let Some(&payload_type) = answered
        .payload_types
        .iter()
        .find(|payload_type| !offered.payload_types.contains(payload_type))
    {
        return Err(OfferAnswerError::UnofferedFormat { payload_type });
    }
    Ok(Some(answered))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use std::net::IpAddr;

    use super::*;
    use crate::sdp::{reanchor_av, Ports};

    const AUDIO: &str = "m=audio 4000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n";

    fn body(media: &str) -> Sdp {
        let text = format!("v=0\r\no=- 7 3 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\n{AUDIO}{media}");
        Sdp::parse(text.as_bytes()).unwrap()
    }

    #[test]
    fn the_first_active_rtp_video_line_is_the_stream() {
        let sdp = body(
            "m=video 0 RTP/AVP 96\r\n\
             m=video 5000 RTP/SAVP 96\r\n\
             m=video 5002 RTP/AVPF 96 97\r\nc=IN IP4 10.0.0.9\r\na=rtpmap:96 H264/90000\r\na=rtcp:6000\r\n\
             m=video 5004 RTP/AVP 98\r\n",
        );
        let stream = video_of(&sdp).unwrap().unwrap();
        assert_eq!(stream.media_index, 3);
        assert_eq!(stream.remote_rtp, Some("10.0.0.9:5002".parse().unwrap()));
        assert_eq!(stream.remote_rtcp, Some("10.0.0.9:6000".parse().unwrap()));
        assert_eq!(stream.payload_types, vec![96, 97]);
        assert_eq!(video_of(&body("")).unwrap(), None);
        assert_eq!(video_of(&body("m=video 0 RTP/AVP 96\r\n")).unwrap(), None);
        assert_eq!(video_of(&body("m=video 5000 RTP/SAVP 96\r\n")).unwrap(), None);
        // A hold address: no remote yet.
        let held = video_of(&body("m=video 5000 RTP/AVP 96\r\nc=IN IP4 0.0.0.0\r\n"))
            .unwrap()
            .unwrap();
        assert_eq!(held.remote_rtp, None);
    }

    #[test]
    fn a_bad_video_line_is_an_error() {
        let mut checked = 0;
        for media in [
            "m=video 5000 RTP/AVP abc\r\n",
            "m=video 5000 RTP/AVP 96 200\r\n",
            "m=video 5000 RTP/AVP -1\r\n",
            "m=video 5000/2 RTP/AVP 96\r\n",
            "m=video 5000 RTP/AVP 96\r\nc=IN IP4 video.example.com\r\n",
            "m=video 5000 RTP/AVP 96\r\nc=IN IP4 224.0.0.1\r\n",
            "m=video 5000 RTP/AVP 96\r\na=rtcp:notaport\r\n",
        ] {
            let Ok(sdp) = Sdp::parse(
                format!("v=0\r\no=- 1 1 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\n{AUDIO}{media}")
                    .as_bytes(),
            ) else {
                continue;
            };
            assert!(video_of(&sdp).is_err(), "{media}");
            checked += 1;
        }
        assert!(checked >= 5, "most bad lines parse as SDP and are refused here");
    }

    #[test]
    fn reanchoring_keeps_the_video_formats_and_moves_the_address() {
        let sdp = body(
            "m=video 5002 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=fmtp:96 profile-level-id=42e01f\r\n\
             a=candidate:1 1 UDP 1 10.0.0.5 5002 typ host\r\na=sendrecv\r\n\
             m=video 5004 RTP/AVP 97\r\n",
        );
        let relay: IpAddr = "192.0.2.1".parse().unwrap();
        let audio = Ports {
            rtp: 40000,
            rtcp: Some(40001),
        };
        let video = Ports {
            rtp: 40010,
            rtcp: Some(40011),
        };
        let out = reanchor_av(sdp.clone(), relay, audio, Some(video)).to_string();
        assert!(out.contains("c=IN IP4 192.0.2.1\r\n"), "{out}");
        assert!(out.contains("m=audio 40000 RTP/AVP 0 101\r\n"), "{out}");
        assert!(out.contains("m=video 40010 RTP/AVP 96\r\n"), "{out}");
        assert!(out.contains("a=fmtp:96 profile-level-id=42e01f\r\n"), "{out}");
        assert!(!out.contains("candidate"), "{out}");
        assert!(
            out.contains("m=video 0 RTP/AVP 97\r\n"),
            "a second video line is declined: {out}"
        );
        assert!(!out.contains("10.0.0.5"), "topology hidden: {out}");
        // Without video ports: every video line declined, as before F-VID-01.
        let audio_only = reanchor_av(sdp, relay, audio, None).to_string();
        assert!(audio_only.contains("m=video 0 RTP/AVP 96\r\n"), "{audio_only}");
        assert!(audio_only.contains("m=audio 40000 "), "{audio_only}");
    }

    #[test]
    fn the_answer_accepts_declines_or_breaks_the_video() {
        let offered = video_of(&body("m=video 5002 RTP/AVP 96 97\r\n")).unwrap().unwrap();
        let accepted = video_answer(&offered, &body("m=video 6002 RTP/AVP 97\r\n"))
            .unwrap()
            .unwrap();
        assert_eq!(accepted.remote_rtp, Some("10.0.0.5:6002".parse().unwrap()));
        assert_eq!(accepted.payload_types, vec![97]);
        assert_eq!(video_answer(&offered, &body("m=video 0 RTP/AVP 96\r\n")).unwrap(), None);
        assert!(matches!(
            video_answer(&offered, &body("m=video 6002 RTP/AVP 98\r\n")),
            Err(OfferAnswerError::UnofferedFormat { payload_type: 98 })
        ));
        assert!(matches!(
            video_answer(&offered, &body("m=audio 6002 RTP/AVP 0\r\n")),
            Err(OfferAnswerError::MediaMismatch { media: 1 })
        ));
        assert!(matches!(
            video_answer(&offered, &body("")),
            Err(OfferAnswerError::MediaCountMismatch { .. })
        ));
    }
}
