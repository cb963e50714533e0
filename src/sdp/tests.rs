#![allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, Ipv4Addr};

use proptest::prelude::*;

use super::*;
use crate::media::api::LegSpec;
use crate::media::codec::Codec;

const RELAY: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 5));

/// Linphone / baresip style: opus first, G.711, telephone-event at 8 kHz, explicit a=rtcp.
const LINPHONE: &str = "v=0\r
o=alice 2163 2890 IN IP4 192.0.2.10\r
s=Talk\r
c=IN IP4 192.0.2.10\r
t=0 0\r
a=rtcp-xr:rcvr-rtt=all:10000 stat-summary=loss,dup,jitt,TTL voip-metrics\r
m=audio 7078 RTP/AVP 96 0 8 101\r
a=rtpmap:96 opus/48000/2\r
a=fmtp:96 useinbandfec=1\r
a=rtpmap:0 PCMU/8000\r
a=rtpmap:8 PCMA/8000\r
a=rtpmap:101 telephone-event/8000\r
a=fmtp:101 0-16\r
a=rtcp:7079\r
a=rtcp-fb:* trr-int 1000\r
a=ptime:20\r
a=sendrecv\r
";

/// A 3GPP (IMS / MCPTT) style offer: AMR-WB in both packings, AMR, telephone events at both
/// rates, dynamic numbers well above 96, bandwidth lines.
const THREE_GPP: &str = "v=0\r
o=- 3762718 3762718 IN IP4 10.1.2.3\r
s=-\r
c=IN IP4 10.1.2.3\r
b=AS:41\r
t=0 0\r
m=audio 49152 RTP/AVP 116 107 97 111 110\r
b=AS:41\r
a=rtpmap:116 AMR-WB/16000/1\r
a=fmtp:116 mode-change-capability=2;max-red=0\r
a=rtpmap:107 AMR-WB/16000/1\r
a=fmtp:107 mode-set=0,1,2; octet-align=1; mode-change-capability=2\r
a=rtpmap:97 AMR/8000/1\r
a=fmtp:97 mode-set=0,2,4,7;octet-align=1\r
a=rtpmap:111 telephone-event/16000\r
a=fmtp:111 0-15\r
a=rtpmap:110 telephone-event/8000\r
a=fmtp:110 0-15\r
a=ptime:20\r
a=maxptime:240\r
a=sendrecv\r
";

/// A re-INVITE putting the call on hold the RFC 3264 way.
const HOLD_SENDONLY: &str = "v=0\r
o=bob 5 6 IN IP4 198.51.100.20\r
s=-\r
c=IN IP4 198.51.100.20\r
t=0 0\r
m=audio 30000 RTP/AVP 8\r
a=rtpmap:8 PCMA/8000\r
a=sendonly\r
";

/// Old-style (RFC 2543) hold: connection address 0.0.0.0, no direction attribute.
const HOLD_ZERO: &str = "v=0\r
o=bob 5 7 IN IP4 198.51.100.20\r
s=-\r
c=IN IP4 0.0.0.0\r
t=0 0\r
m=audio 30000 RTP/AVP 8 0\r
";

/// Audio and video; the video has its own c= line.
const AUDIO_VIDEO: &str = "v=0\r
o=carol 1 1 IN IP4 192.0.2.30\r
s=-\r
c=IN IP4 192.0.2.30\r
t=0 0\r
m=audio 5004 RTP/AVP 0 101\r
a=rtpmap:101 telephone-event/8000\r
m=video 5006 RTP/AVP 99\r
c=IN IP4 192.0.2.31\r
a=rtpmap:99 H264/90000\r
a=fmtp:99 profile-level-id=42e01f\r
";

/// rtcp-mux offered, with an a=rtcp naming another address.
const MUX: &str = "v=0\r
o=dave 1 1 IN IP4 192.0.2.40\r
s=-\r
t=0 0\r
m=audio 53020 RTP/AVP 8 101\r
c=IN IP4 192.0.2.40\r
a=rtpmap:8 PCMA/8000\r
a=rtpmap:101 telephone-event/8000\r
a=rtcp:53021 IN IP4 198.51.100.7\r
a=rtcp-mux\r
";

fn sdp(text: &str) -> Sdp {
    parse(text.as_bytes()).unwrap()
}

fn lines(sdp: &Sdp) -> Vec<String> {
    String::from_utf8(sdp.to_bytes())
        .unwrap()
        .split("\r\n")
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect()
}

fn media_lines(sdp: &Sdp, index: usize) -> Vec<String> {
    let all = lines(sdp);
    let starts: Vec<usize> = all
        .iter()
        .enumerate()
        .filter(|(_, line)| line.starts_with("m="))
        .map(|(at, _)| at)
        .collect();
    let end = starts.get(index + 1).copied().unwrap_or(all.len());
    all[starts[index]..end].to_vec()
}

fn local(preferences: &[Format]) -> LocalMedia<'_> {
    let mut local = LocalMedia::new(RELAY, 40000, preferences);
    local.origin = SessionOrigin { id: 77, version: 1 };
    local
}

#[test]
fn linphone_offer_gets_g711_in_our_order_with_dtmf() {
    let preferences = default_preferences();
    let answer = answer(&sdp(LINPHONE), &local(&preferences)).unwrap();
    assert_eq!(
        lines(&answer.sdp),
        [
            "v=0",
            "o=- 77 1 IN IP4 203.0.113.5",
            "s=-",
            "c=IN IP4 203.0.113.5",
            "t=0 0",
            "m=audio 40000 RTP/AVP 8 0 101",
            "a=rtpmap:8 PCMA/8000",
            "a=rtpmap:0 PCMU/8000",
            "a=rtpmap:101 telephone-event/8000",
            "a=fmtp:101 0-16",
            "a=ptime:20",
            "a=rtcp:40001",
            "a=sendrecv",
        ]
    );
    let negotiated = &answer.negotiated;
    assert_eq!(negotiated.media_index, 0);
    assert_eq!(
        negotiated.payload_types(),
        [(8, Codec::Pcma), (0, Codec::Pcmu), (101, Codec::TelephoneEvent8k)]
    );
    assert_eq!(negotiated.voice().unwrap().format.codec, Codec::Pcma);
    assert_eq!(negotiated.remote_rtp, Some("192.0.2.10:7078".parse().unwrap()));
    assert_eq!(negotiated.remote_rtcp, Some("192.0.2.10:7079".parse().unwrap()));
    assert!(!negotiated.rtcp_mux);
    assert_eq!(negotiated.direction, Direction::SendRecv);
    assert_eq!(negotiated.ptime, Some(20));
    assert!(!negotiated.connection_hold);

    let mut leg = LegSpec::default();
    negotiated.apply_to(&mut leg);
    assert_eq!(leg.remote, negotiated.remote_rtp);
    assert_eq!(leg.remote_rtcp, negotiated.remote_rtcp);
    assert_eq!(leg.payload_types.len(), 3);
    assert!(leg.fanout);

    // What we send parses back to the same description.
    assert_eq!(parse(&answer.sdp.to_bytes()).unwrap(), answer.sdp);
}

#[test]
fn three_gpp_amr_wb_keeps_numbers_and_fmtp() {
    let preferences = default_preferences();
    let mut local = local(&preferences);
    local.single_codec = true;
    local.ptime = Some(40);
    let answer = answer(&sdp(THREE_GPP), &local).unwrap();
    assert_eq!(
        media_lines(&answer.sdp, 0),
        [
            "m=audio 40000 RTP/AVP 107 111",
            "a=rtpmap:107 AMR-WB/16000",
            "a=fmtp:107 mode-set=0,1,2; octet-align=1; mode-change-capability=2",
            "a=rtpmap:111 telephone-event/16000",
            "a=fmtp:111 0-15",
            "a=ptime:20",
            "a=rtcp:40001",
            "a=sendrecv",
        ]
    );
    let voice = answer.negotiated.voice().unwrap();
    assert_eq!(voice.payload_type, 107);
    assert!(voice.format.octet_align);
    assert_eq!(
        answer.negotiated.payload_types(),
        [(107, Codec::AmrWb), (111, Codec::TelephoneEvent16k)]
    );
    assert_eq!(answer.negotiated.remote_rtp, Some("10.1.2.3:49152".parse().unwrap()));
    assert_eq!(answer.negotiated.remote_rtcp, None);
}

#[test]
fn amr_packing_must_match() {
    // Bandwidth-efficient AMR-WB only: the octet-aligned 107 is not taken.
    let efficient = [
        Format::bandwidth_efficient(Codec::AmrWb),
        Format::new(Codec::TelephoneEvent16k),
    ];
    let answer = answer(&sdp(THREE_GPP), &local(&efficient)).unwrap();
    assert_eq!(
        answer.negotiated.payload_types(),
        [(116, Codec::AmrWb), (111, Codec::TelephoneEvent16k)]
    );
    assert!(!answer.negotiated.formats[0].format.octet_align);

    // Bandwidth-efficient AMR (narrowband) was not offered: only octet-aligned.
    let amr = [Format::bandwidth_efficient(Codec::Amr)];
    let error = super::answer(&sdp(THREE_GPP), &local(&amr)).unwrap_err();
    assert_eq!(error, OfferAnswerError::NoCommonCodec);
    assert_eq!(error.status_code(), 488);
    assert_eq!(error.kind(), ErrorKind::NotAcceptable);
}

#[test]
fn dtmf_only_at_the_chosen_clock_rate() {
    // AMR narrowband chosen: telephone-event/8000 (110) goes along, /16000 (111) does not.
    let preferences = [
        Format::new(Codec::Amr),
        Format::new(Codec::TelephoneEvent8k),
        Format::new(Codec::TelephoneEvent16k),
    ];
    let answer = answer(&sdp(THREE_GPP), &local(&preferences)).unwrap();
    assert_eq!(
        answer.negotiated.payload_types(),
        [(97, Codec::Amr), (110, Codec::TelephoneEvent8k)]
    );
    // telephone-event alone is no codec.
    let dtmf_only = [Format::new(Codec::TelephoneEvent8k)];
    assert_eq!(
        super::answer(&sdp(LINPHONE), &local(&dtmf_only)).unwrap_err(),
        OfferAnswerError::NoCommonCodec
    );
}

#[test]
fn sendonly_hold_is_answered_recvonly() {
    let preferences = default_preferences();
    let answer = answer(&sdp(HOLD_SENDONLY), &local(&preferences)).unwrap();
    assert_eq!(answer.negotiated.direction, Direction::RecvOnly);
    assert_eq!(
        answer.negotiated.remote_rtp,
        Some("198.51.100.20:30000".parse().unwrap())
    );
    assert!(!answer.negotiated.connection_hold);
    assert_eq!(answer.negotiated.ptime, None);
    assert_eq!(
        media_lines(&answer.sdp, 0),
        [
            "m=audio 40000 RTP/AVP 8",
            "a=rtpmap:8 PCMA/8000",
            "a=rtcp:40001",
            "a=recvonly"
        ]
    );
}

#[test]
fn zero_address_hold_is_recognised() {
    let preferences = default_preferences();
    let answer = answer(&sdp(HOLD_ZERO), &local(&preferences)).unwrap();
    assert!(answer.negotiated.connection_hold);
    assert_eq!(answer.negotiated.remote_rtp, None);
    assert_eq!(answer.negotiated.remote_rtcp, None);
    assert_eq!(answer.negotiated.direction, Direction::RecvOnly);
    // Static payload types without rtpmap are understood.
    assert_eq!(answer.negotiated.payload_types(), [(8, Codec::Pcma), (0, Codec::Pcmu)]);
    assert!(lines(&answer.sdp).contains(&"c=IN IP4 203.0.113.5".to_owned()));
}

#[test]
fn direction_answers_follow_rfc3264() {
    let preferences = default_preferences();
    for (offered, local_direction, expected) in [
        ("sendrecv", Direction::SendRecv, Direction::SendRecv),
        ("sendonly", Direction::SendRecv, Direction::RecvOnly),
        ("recvonly", Direction::SendRecv, Direction::SendOnly),
        ("inactive", Direction::SendRecv, Direction::Inactive),
        // Group call: a downlink we only send to, a talker leg we only receive from.
        ("sendrecv", Direction::SendOnly, Direction::SendOnly),
        ("sendrecv", Direction::RecvOnly, Direction::RecvOnly),
        ("sendonly", Direction::SendOnly, Direction::Inactive),
    ] {
        let text = HOLD_SENDONLY.replace("a=sendonly", &format!("a={offered}"));
        let mut local = local(&preferences);
        local.direction = local_direction;
        let answer = answer(&sdp(&text), &local).unwrap();
        assert_eq!(answer.negotiated.direction, expected, "{offered} / {local_direction:?}");
        assert!(lines(&answer.sdp).contains(&format!("a={}", expected.attribute())));
    }
    // A session-level direction attribute applies to the media.
    let text = HOLD_SENDONLY
        .replace("a=sendonly\r\n", "")
        .replace("t=0 0\r\n", "t=0 0\r\na=inactive\r\n");
    let answer = answer(&sdp(&text), &local(&preferences)).unwrap();
    assert_eq!(answer.negotiated.direction, Direction::Inactive);
}

#[test]
fn video_is_rejected_with_port_zero() {
    let preferences = default_preferences();
    let answer = answer(&sdp(AUDIO_VIDEO), &local(&preferences)).unwrap();
    assert_eq!(answer.sdp.media_count(), 2);
    assert_eq!(
        media_lines(&answer.sdp, 0),
        [
            "m=audio 40000 RTP/AVP 0 101",
            "a=rtpmap:0 PCMU/8000",
            "a=rtpmap:101 telephone-event/8000",
            "a=rtcp:40001",
            "a=sendrecv"
        ]
    );
    assert_eq!(media_lines(&answer.sdp, 1), ["m=video 0 RTP/AVP 99"]);

    // Only things we cannot relay: 488.
    let video_only = AUDIO_VIDEO.replace("m=audio 5004 RTP/AVP 0 101", "m=audio 0 RTP/AVP 0 101");
    let error = super::answer(&sdp(&video_only), &local(&preferences)).unwrap_err();
    assert_eq!(error, OfferAnswerError::NoAcceptableMedia);
    assert_eq!(error.status_code(), 488);
    let srtp = AUDIO_VIDEO.replace("m=audio 5004 RTP/AVP", "m=audio 5004 RTP/SAVP");
    assert_eq!(
        super::answer(&sdp(&srtp), &local(&preferences)).unwrap_err(),
        OfferAnswerError::NoAcceptableMedia
    );
}

#[test]
fn second_audio_stream_tried_when_first_has_no_common_codec() {
    let text = format!("{LINPHONE}m=audio 7080 RTP/AVP 96\r\na=rtpmap:96 AMR-WB/16000\r\na=fmtp:96 octet-align=1\r\n")
        .replace("m=audio 7078 RTP/AVP 96 0 8 101", "m=audio 7078 RTP/AVP 96");
    let preferences = default_preferences();
    let answer = answer(&sdp(&text), &local(&preferences)).unwrap();
    assert_eq!(answer.negotiated.media_index, 1);
    assert_eq!(answer.negotiated.remote_rtp, Some("192.0.2.10:7080".parse().unwrap()));
    assert_eq!(media_lines(&answer.sdp, 0), ["m=audio 0 RTP/AVP 96"]);
    assert_eq!(media_lines(&answer.sdp, 1)[0], "m=audio 40000 RTP/AVP 96");
}

#[test]
fn rtcp_mux_accepted_when_wanted() {
    let preferences = default_preferences();
    let mut local = local(&preferences);
    local.rtcp_mux = true;
    local.rtcp_port = local.rtp_port;
    let answer = answer(&sdp(MUX), &local).unwrap();
    assert!(answer.negotiated.rtcp_mux);
    assert_eq!(answer.negotiated.remote_rtcp, None);
    assert_eq!(answer.negotiated.remote_rtp, Some("192.0.2.40:53020".parse().unwrap()));
    let media = media_lines(&answer.sdp, 0);
    assert!(media.contains(&"a=rtcp-mux".to_owned()));
    assert!(!media.iter().any(|line| line.starts_with("a=rtcp:")));

    // Not wanted: separate RTCP, the peer's a=rtcp address is used.
    let preferences = default_preferences();
    let answer = super::answer(&sdp(MUX), &self::local(&preferences)).unwrap();
    assert!(!answer.negotiated.rtcp_mux);
    assert_eq!(
        answer.negotiated.remote_rtcp,
        Some("198.51.100.7:53021".parse().unwrap())
    );
    let media = media_lines(&answer.sdp, 0);
    assert!(!media.contains(&"a=rtcp-mux".to_owned()));
    assert!(media.contains(&"a=rtcp:40001".to_owned()));
}

#[test]
fn ptime_is_the_smaller() {
    let preferences = default_preferences();
    let mut local = local(&preferences);
    local.ptime = Some(20);
    let text = LINPHONE.replace("a=ptime:20", "a=ptime:30");
    assert_eq!(answer(&sdp(&text), &local).unwrap().negotiated.ptime, Some(20));
    local.ptime = None;
    assert_eq!(answer(&sdp(&text), &local).unwrap().negotiated.ptime, Some(30));
    local.ptime = Some(60);
    assert_eq!(answer(&sdp(&text), &local).unwrap().negotiated.ptime, Some(30));
}

#[test]
fn malformed_accepted_streams() {
    let preferences = default_preferences();
    let no_connection = HOLD_SENDONLY.replace("c=IN IP4 198.51.100.20\r\n", "");
    let error = answer(&sdp(&no_connection), &local(&preferences)).unwrap_err();
    assert_eq!(error, OfferAnswerError::NoConnection { media: 0 });
    assert_eq!(error.kind(), ErrorKind::Malformed);
    assert_eq!(error.status_code(), 400);
    for bad in [
        "c=IN IP4 pbx.example.com",
        "c=IN IP4 224.2.1.1/127",
        "c=IN IP4 255.255.255.255",
    ] {
        let text = HOLD_SENDONLY.replace("c=IN IP4 198.51.100.20", bad);
        assert_eq!(
            answer(&sdp(&text), &local(&preferences)).unwrap_err(),
            OfferAnswerError::BadAddress { media: 0 },
            "{bad}"
        );
    }
}

#[test]
fn offer_assigns_numbers_and_lines() {
    let preferences = [
        Format::new(Codec::AmrWb),
        Format::bandwidth_efficient(Codec::AmrWb),
        Format::new(Codec::Pcma),
        Format::new(Codec::Pcmu),
        Format::new(Codec::TelephoneEvent16k),
        Format::new(Codec::TelephoneEvent8k),
        Format::new(Codec::H264),
    ];
    let mut local = local(&preferences);
    local.rtcp_port = 40003;
    let offer = offer(&local);
    assert_eq!(
        lines(&offer),
        [
            "v=0",
            "o=- 77 1 IN IP4 203.0.113.5",
            "s=-",
            "c=IN IP4 203.0.113.5",
            "t=0 0",
            "m=audio 40000 RTP/AVP 96 97 8 0 98 99",
            "a=rtpmap:96 AMR-WB/16000",
            "a=fmtp:96 octet-align=1",
            "a=rtpmap:97 AMR-WB/16000",
            "a=rtpmap:8 PCMA/8000",
            "a=rtpmap:0 PCMU/8000",
            "a=rtpmap:98 telephone-event/16000",
            "a=fmtp:98 0-15",
            "a=rtpmap:99 telephone-event/8000",
            "a=fmtp:99 0-15",
            "a=ptime:20",
            "a=rtcp:40003",
            "a=sendrecv",
        ]
    );

    // A group talker leg, multiplexed, with a carried mode-set.
    let carried = [Format {
        fmtp: Some("mode-set=2; octet-align=1".to_owned()),
        ..Format::new(Codec::AmrWb)
    }];
    let mut local = self::local(&carried);
    local.direction = Direction::SendOnly;
    local.rtcp_mux = true;
    local.rtcp_port = local.rtp_port;
    assert_eq!(
        media_lines(&super::offer(&local), 0),
        [
            "m=audio 40000 RTP/AVP 96",
            "a=rtpmap:96 AMR-WB/16000",
            "a=fmtp:96 mode-set=2; octet-align=1",
            "a=ptime:20",
            "a=rtcp-mux",
            "a=sendonly",
        ]
    );
}

#[test]
fn offer_answer_round_trip() {
    // We offer towards the next hop; the next hop answers with its own relay (same code).
    let preferences = default_preferences();
    let ours = local(&preferences);
    let our_offer = offer(&ours);
    let received = parse(&our_offer.to_bytes()).unwrap();
    let theirs_preferences = [Format::new(Codec::Pcma), Format::new(Codec::TelephoneEvent8k)];
    let mut theirs = LocalMedia::new("198.51.100.99".parse().unwrap(), 50000, &theirs_preferences);
    theirs.direction = Direction::RecvOnly;
    let their_answer = answer(&received, &theirs).unwrap();
    let received_answer = parse(&their_answer.sdp.to_bytes()).unwrap();

    let negotiated = parse_answer(&our_offer, &received_answer).unwrap();
    assert_eq!(
        negotiated.payload_types(),
        [(8, Codec::Pcma), (101, Codec::TelephoneEvent8k)]
    );
    assert_eq!(negotiated.remote_rtp, Some("198.51.100.99:50000".parse().unwrap()));
    assert_eq!(negotiated.remote_rtcp, Some("198.51.100.99:50001".parse().unwrap()));
    assert_eq!(negotiated.direction, Direction::SendOnly);
    assert_eq!(negotiated.ptime, Some(20));
    assert!(!negotiated.rtcp_mux);
}

#[test]
fn answer_with_other_dynamic_numbers_keeps_both() {
    let preferences = [Format::new(Codec::AmrWb), Format::new(Codec::TelephoneEvent16k)];
    let our_offer = offer(&local(&preferences));
    let text = "v=0\r
o=- 1 1 IN IP4 192.0.2.50\r
s=-\r
c=IN IP4 192.0.2.50\r
t=0 0\r
m=audio 6000 RTP/AVP 104 105\r
a=rtpmap:104 AMR-WB/16000\r
a=fmtp:104 octet-align=1;mode-set=0,1,2\r
a=rtpmap:105 telephone-event/16000\r
";
    let negotiated = parse_answer(&our_offer, &sdp(text)).unwrap();
    assert_eq!(
        negotiated.payload_types(),
        [
            (104, Codec::AmrWb),
            (96, Codec::AmrWb),
            (105, Codec::TelephoneEvent16k),
            (97, Codec::TelephoneEvent16k)
        ]
    );
    assert_eq!(
        negotiated.formats[0].format.fmtp.as_deref(),
        Some("octet-align=1;mode-set=0,1,2")
    );
    // The engine sends with the answerer's numbers and accepts both.
    let map = crate::media::codec::PayloadMap::new(&negotiated.payload_types());
    assert_eq!(map.payload_type(Codec::AmrWb), Some(104));
    assert_eq!(map.codec(96), Some(Codec::AmrWb));
}

#[test]
fn parse_answer_rejects_what_we_did_not_offer() {
    let preferences = [Format::new(Codec::Pcma)];
    let our_offer = offer(&local(&preferences));
    let base = "v=0\r
o=- 1 1 IN IP4 192.0.2.50\r
s=-\r
c=IN IP4 192.0.2.50\r
t=0 0\r
m=audio 6000 RTP/AVP 8\r
";
    assert!(parse_answer(&our_offer, &sdp(base)).is_ok());
    let unoffered = base.replace("RTP/AVP 8", "RTP/AVP 0");
    let error = parse_answer(&our_offer, &sdp(&unoffered)).unwrap_err();
    assert_eq!(error, OfferAnswerError::UnofferedFormat { payload_type: 0 });
    assert_eq!(error.kind(), ErrorKind::ProtocolViolation);
    let rejected = base.replace("m=audio 6000", "m=audio 0");
    assert_eq!(
        parse_answer(&our_offer, &sdp(&rejected)).unwrap_err(),
        OfferAnswerError::MediaRejected
    );
    let extra = format!("{base}m=video 0 RTP/AVP 99\r\n");
    assert_eq!(
        parse_answer(&our_offer, &sdp(&extra)).unwrap_err(),
        OfferAnswerError::MediaCountMismatch {
            offered: 1,
            answered: 2
        }
    );
    let video = base.replace("m=audio", "m=video");
    assert_eq!(
        parse_answer(&our_offer, &sdp(&video)).unwrap_err(),
        OfferAnswerError::MediaMismatch { media: 0 }
    );
    let hold = base.replace("c=IN IP4 192.0.2.50", "c=IN IP4 0.0.0.0");
    let negotiated = parse_answer(&our_offer, &sdp(&hold)).unwrap();
    assert!(negotiated.connection_hold);
    assert_eq!(negotiated.direction, Direction::RecvOnly);
}

#[test]
fn rewrite_connection_keeps_everything_else() {
    let original = sdp(LINPHONE);
    let rewritten = rewrite_connection(&original, RELAY, 41000, Some(41001));
    let before = lines(&original);
    let after = lines(&rewritten);
    assert_eq!(before.len(), after.len());
    let changed: Vec<(&String, &String)> = before.iter().zip(&after).filter(|(a, b)| a != b).collect();
    assert_eq!(
        changed,
        [
            (
                &"o=alice 2163 2890 IN IP4 192.0.2.10".to_owned(),
                &"o=alice 2163 2890 IN IP4 203.0.113.5".to_owned()
            ),
            (&"c=IN IP4 192.0.2.10".to_owned(), &"c=IN IP4 203.0.113.5".to_owned()),
            (
                &"m=audio 7078 RTP/AVP 96 0 8 101".to_owned(),
                &"m=audio 41000 RTP/AVP 96 0 8 101".to_owned()
            ),
            (&"a=rtcp:7079".to_owned(), &"a=rtcp:41001".to_owned()),
        ]
    );

    // Video is disabled, its c= hidden; audio gets a=rtcp when RTCP is not at RTP + 1.
    let rewritten = rewrite_connection(&sdp(AUDIO_VIDEO), RELAY, 41000, Some(41005));
    assert_eq!(
        media_lines(&rewritten, 0),
        [
            "m=audio 41000 RTP/AVP 0 101",
            "a=rtpmap:101 telephone-event/8000",
            "a=rtcp:41005"
        ]
    );
    assert_eq!(
        media_lines(&rewritten, 1),
        [
            "m=video 0 RTP/AVP 99",
            "c=IN IP4 203.0.113.5",
            "a=rtpmap:99 H264/90000",
            "a=fmtp:99 profile-level-id=42e01f"
        ]
    );

    // Media-level c= and multiplexing: a=rtcp follows the RTP port.
    let rewritten = rewrite_connection(&sdp(MUX), RELAY, 41000, None);
    assert_eq!(
        media_lines(&rewritten, 0),
        [
            "m=audio 41000 RTP/AVP 8 101",
            "c=IN IP4 203.0.113.5",
            "a=rtpmap:8 PCMA/8000",
            "a=rtpmap:101 telephone-event/8000",
            "a=rtcp:41000",
            "a=rtcp-mux"
        ]
    );

    // Old-style hold survives re-anchoring.
    let rewritten = rewrite_connection(&sdp(HOLD_ZERO), RELAY, 41000, Some(41001));
    let preferences = default_preferences();
    assert!(
        answer(&rewritten, &local(&preferences))
            .unwrap()
            .negotiated
            .connection_hold
    );
    assert!(!lines(&rewritten).iter().any(|line| line.contains("198.51.100.20")));
}

#[test]
fn parse_limits() {
    let big = format!("{LINPHONE}{}", "a=x-padding:0123456789\r\n".repeat(800));
    assert!(matches!(parse(big.as_bytes()), Err(SdpError::TooLarge { .. })));
    let many_media = format!("{LINPHONE}{}", "m=video 0 RTP/AVP 99\r\n".repeat(MAX_MEDIA));
    assert!(matches!(
        parse(many_media.as_bytes()),
        Err(SdpError::TooManyMedia { .. })
    ));
    let formats: Vec<String> = (0..=MAX_FORMATS).map(|n| n.to_string()).collect();
    let many_formats = LINPHONE.replace("RTP/AVP 96 0 8 101", &format!("RTP/AVP {}", formats.join(" ")));
    assert!(matches!(
        parse(many_formats.as_bytes()),
        Err(SdpError::TooManyFormats { media: 0, .. })
    ));
    let many_attributes = format!("{LINPHONE}{}", "a=x\r\n".repeat(MAX_ATTRIBUTES));
    assert!(matches!(
        parse(many_attributes.as_bytes()),
        Err(SdpError::TooManyAttributes { .. })
    ));
    assert!(matches!(parse(b"hello"), Err(SdpError::Syntax(_))));
    assert!(matches!(parse(b""), Err(SdpError::Syntax(_))));
    let error = OfferAnswerError::from(SdpError::Syntax(String::new()));
    assert_eq!(error.status_code(), 400);
}

#[test]
fn lenient_about_real_world_quirks() {
    // LF-only line ends, c= after t=, unknown media and protocols, case-insensitive names.
    let text = "v=0\no=- 1 1 IN IP4 192.0.2.60\ns=-\nt=0 0\nc=IN IP4 192.0.2.60\n\
m=message 9 TCP/MSRP *\nm=audio 8000 RTP/AVP 8 18\na=RTPMAP:8 pcma/8000\na=SendOnly\n";
    let preferences = default_preferences();
    let answer = answer(&sdp(text), &local(&preferences)).unwrap();
    assert_eq!(answer.negotiated.media_index, 1);
    assert_eq!(answer.negotiated.payload_types(), [(8, Codec::Pcma)]);
    assert_eq!(answer.negotiated.direction, Direction::RecvOnly);
    assert_eq!(media_lines(&answer.sdp, 0), ["m=message 0 TCP/MSRP *"]);
}

/// The format of a payload type found the way the module did before [`view::FormatLines`]: a
/// search over the attributes per payload type and line (the reference it must agree with).
fn format_by_search(media: &sdp_types::Media, payload_type: u8) -> Option<Format> {
    let values = |name: &'static str| {
        media
            .attributes
            .iter()
            .filter(move |attribute| attribute.attribute.trim().eq_ignore_ascii_case(name))
            .filter_map(|attribute| attribute.value.as_deref().map(str::trim))
    };
    let rtpmap = values("rtpmap").find_map(|value| {
        let (number, rest) = value.split_once(|c: char| c.is_ascii_whitespace())?;
        if number.parse::<u8>().ok()? != payload_type {
            return None;
        }
        let mut parts = rest.trim().split('/');
        let name = parts.next()?.trim();
        let clock_rate = parts.next()?.trim().parse::<u32>().ok()?;
        Some((name, clock_rate))
    });
    let fmtp = values("fmtp").find_map(|value| {
        let (number, rest) = value.split_once(|c: char| c.is_ascii_whitespace())?;
        (number.parse::<u8>().ok()? == payload_type).then(|| rest.trim())
    });
    Format::from_sdp(payload_type, rtpmap, fmtp)
}

/// `reanchor` as it was before it rewrote in place (the reference it must agree with).
fn reanchor_reference(sdp: Sdp, address: IpAddr, rtp_port: u16, rtcp_port: Option<u16>) -> Sdp {
    let mut session = sdp.into_session();
    session.origin.addrtype = reference_addrtype(address);
    session.origin.unicast_address = address.to_string();
    let session_hold = session
        .connection
        .as_ref()
        .is_some_and(|connection| reference_is_unspecified(&connection.connection_address));
    let had_session_connection = session.connection.is_some();
    if had_session_connection {
        session.connection = Some(reference_connection(if session_hold {
            reference_unspecified(address)
        } else {
            address
        }));
    }

    let anchored = session
        .medias
        .iter()
        .position(|media| super::view::is_active(media) && super::view::is_rtp_audio(media));
    for (index, media) in session.medias.iter_mut().enumerate() {
        if Some(index) != anchored {
            if super::view::is_active(media) {
                media.port = 0;
                media.num_ports = None;
            }
            for connection in &mut media.connections {
                *connection = reference_connection(address);
            }
            continue;
        }
        let hold = match media.connections.first() {
            Some(connection) => reference_is_unspecified(&connection.connection_address),
            None => session_hold,
        };
        let own = if hold { reference_unspecified(address) } else { address };
        if !media.connections.is_empty() || !had_session_connection || hold != session_hold {
            media.connections = vec![reference_connection(own)];
        }
        media.port = rtp_port;
        media.num_ports = None;
        media.attributes.retain(|attribute| {
            let name = attribute.attribute.trim();
            !name.eq_ignore_ascii_case("candidate") && !name.eq_ignore_ascii_case("remote-candidates")
        });
        let rtcp = rtcp_port.unwrap_or(rtp_port);
        let mut had_rtcp = false;
        for attribute in &mut media.attributes {
            if attribute.attribute.trim().eq_ignore_ascii_case("rtcp") {
                attribute.value = Some(rtcp.to_string());
                had_rtcp = true;
            }
        }
        if !had_rtcp && Some(rtcp) != rtp_port.checked_add(1) && rtcp_port.is_some() {
            media.attributes.push(sdp_types::Attribute::with_value("rtcp", rtcp));
        }
    }
    Sdp::from(session)
}

fn reference_addrtype(address: IpAddr) -> sdp_types::AddrType {
    match address {
        IpAddr::V4(_) => sdp_types::AddrType::Ip4,
        IpAddr::V6(_) => sdp_types::AddrType::Ip6,
    }
}

fn reference_connection(address: IpAddr) -> sdp_types::Connection {
    sdp_types::Connection {
        nettype: sdp_types::NetType::In,
        addrtype: reference_addrtype(address),
        connection_address: address.to_string(),
    }
}

fn reference_unspecified(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    }
}

fn reference_is_unspecified(connection_address: &str) -> bool {
    connection_address
        .split('/')
        .next()
        .and_then(|literal| literal.trim().parse::<IpAddr>().ok())
        .is_some_and(|ip| ip.is_unspecified())
}

fn exercise(body: &[u8]) {
    let Ok(offer) = parse(body) else { return };
    for media in &offer.session().medias {
        let lines = view::FormatLines::new(media);
        for payload_type in 0..=u8::MAX {
            assert_eq!(lines.format(payload_type), format_by_search(media, payload_type));
        }
    }
    let preferences = default_preferences();
    let mut local = local(&preferences);
    let _ = offer.to_bytes();
    // Negotiating without writing the answer gives what the answer carries, errors included.
    assert_eq!(
        negotiate_offer(&offer, &local),
        answer(&offer, &local).map(|answer| answer.negotiated)
    );
    if let Ok(answer) = answer(&offer, &local) {
        // What we answer must always be readable again.
        let again = parse(&answer.sdp.to_bytes()).unwrap();
        let _ = parse_answer(&offer, &again);
    }
    local.single_codec = true;
    local.rtcp_mux = true;
    assert_eq!(
        negotiate_offer(&offer, &local),
        super::answer(&offer, &local).map(|answer| answer.negotiated)
    );
    let _ = parse_answer(&offer, &offer);
    let our_offer = super::offer(&local);
    let _ = parse_answer(&our_offer, &offer);
    let v6 = IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 5));
    for (address, rtp_port, rtcp_port) in [(RELAY, 40000, Some(40001)), (RELAY, 40000, Some(40007)), (v6, 1, None)] {
        assert_eq!(
            reanchor(offer.clone(), address, rtp_port, rtcp_port),
            reanchor_reference(offer.clone(), address, rtp_port, rtcp_port)
        );
    }
    let rewritten = rewrite_connection(&offer, RELAY, 65535, Some(0));
    let _ = super::answer(&rewritten, &local);
    let _ = rewrite_connection(&offer, RELAY, 1, None).to_bytes();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..1024)) {
        exercise(&body);
    }

    #[test]
    fn sdp_like_lines_never_panic(lines in proptest::collection::vec(
        "(v=0|o=- [0-9]{1,3} 1 IN IP[46] [0-9a-f.:]{1,16}|c=IN IP[46] [0-9a-z.:/]{0,20}|m=(audio|video) [0-9]{1,6}(/[0-9])? RTP/AVPF? [0-9 ]{0,12}|a=(rtpmap|fmtp|rtcp|ptime):[0-9]{0,4} ?[A-Za-z0-9/=;., -]{0,20}|a=(sendonly|recvonly|inactive|rtcp-mux)|t=0 0|s=-)",
        0..24,
    )) {
        exercise(lines.join("\r\n").as_bytes());
    }

    #[test]
    fn mutated_offers_never_panic(
        which in 0usize..6,
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..8),
    ) {
        let base = [LINPHONE, THREE_GPP, HOLD_SENDONLY, HOLD_ZERO, AUDIO_VIDEO, MUX][which];
        let mut body = base.as_bytes().to_vec();
        for (position, byte, action) in edits {
            if body.is_empty() {
                break;
            }
            let at = position % body.len();
            match action {
                0 => body[at] = byte,
                1 => {
                    body.remove(at);
                }
                _ => body.insert(at, byte),
            }
        }
        exercise(&body);
    }
}

/// Text for a field of the data model: mostly SDP-ish, sometimes with the CR, LF and NUL the
/// writers strip, sometimes non-ASCII.
fn field() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9 ./:=;*-]{0,12}",
        "[a-z\r\n\0]{0,6}",
        any::<String>().prop_map(|text| text.chars().take(8).collect()),
    ]
}

fn nettype() -> impl Strategy<Value = sdp_types::NetType> {
    prop_oneof![
        Just(sdp_types::NetType::In),
        Just(sdp_types::NetType::Tn),
        Just(sdp_types::NetType::Atm),
        Just(sdp_types::NetType::Pstn),
        field().prop_map(sdp_types::NetType::Other),
    ]
}

fn addrtype() -> impl Strategy<Value = sdp_types::AddrType> {
    prop_oneof![
        Just(sdp_types::AddrType::Ip4),
        Just(sdp_types::AddrType::Ip6),
        field().prop_map(sdp_types::AddrType::Other),
    ]
}

/// Seconds for `t=`, `r=` and `z=`: zero, whole days, hours and minutes, and anything.
fn seconds() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        (0u64..1000).prop_map(|days| days * 86_400),
        (0u64..1000).prop_map(|hours| hours * 3_600),
        (0u64..1000).prop_map(|minutes| minutes * 60),
        any::<u64>(),
    ]
}

fn connection_model() -> impl Strategy<Value = sdp_types::Connection> {
    (nettype(), addrtype(), field()).prop_map(|(nettype, addrtype, connection_address)| sdp_types::Connection {
        nettype,
        addrtype,
        connection_address,
    })
}

fn bandwidth_model() -> impl Strategy<Value = sdp_types::Bandwidth> {
    (field(), any::<u64>()).prop_map(|(bwtype, bandwidth)| sdp_types::Bandwidth { bwtype, bandwidth })
}

fn key_model() -> impl Strategy<Value = sdp_types::Key> {
    (field(), proptest::option::of(field()))
        .prop_map(|(method, encryption_key)| sdp_types::Key { method, encryption_key })
}

fn attribute_model() -> impl Strategy<Value = sdp_types::Attribute> {
    (field(), proptest::option::of(field())).prop_map(|(attribute, value)| sdp_types::Attribute { attribute, value })
}

fn media_model() -> impl Strategy<Value = sdp_types::Media> {
    (
        (
            field(),
            any::<u16>(),
            proptest::option::of(any::<u16>()),
            field(),
            field(),
        ),
        proptest::option::of(field()),
        proptest::collection::vec(connection_model(), 0..3),
        proptest::collection::vec(bandwidth_model(), 0..3),
        proptest::option::of(key_model()),
        proptest::collection::vec(attribute_model(), 0..6),
    )
        .prop_map(
            |((media, port, num_ports, proto, fmt), media_title, connections, bandwidths, key, attributes)| {
                sdp_types::Media {
                    media,
                    port,
                    num_ports,
                    proto,
                    fmt,
                    media_title,
                    connections,
                    bandwidths,
                    key,
                    attributes,
                }
            },
        )
}

fn session_model() -> impl Strategy<Value = sdp_types::Session> {
    let origin = (
        proptest::option::of(field()),
        field(),
        any::<u64>(),
        nettype(),
        addrtype(),
        field(),
    )
        .prop_map(
            |(username, sess_id, sess_version, nettype, addrtype, unicast_address)| sdp_types::Origin {
                username,
                sess_id,
                sess_version,
                nettype,
                addrtype,
                unicast_address,
            },
        );
    let repeat = (seconds(), seconds(), proptest::collection::vec(seconds(), 0..3)).prop_map(
        |(repeat_interval, active_duration, offsets)| sdp_types::Repeat {
            repeat_interval,
            active_duration,
            offsets,
        },
    );
    let time = (any::<u64>(), any::<u64>(), proptest::collection::vec(repeat, 0..2)).prop_map(
        |(start_time, stop_time, repeats)| sdp_types::Time {
            start_time,
            stop_time,
            repeats,
        },
    );
    let offset = prop_oneof![
        seconds().prop_map(|seconds| seconds as i64),
        seconds().prop_map(|seconds| (seconds as i64).wrapping_neg()),
        Just(i64::MIN),
        Just(i64::MAX),
    ];
    let zone = (seconds(), offset).prop_map(|(adjustment_time, offset)| sdp_types::TimeZone {
        adjustment_time,
        offset,
    });
    (
        (
            origin,
            field(),
            proptest::option::of(field()),
            proptest::option::of(field()),
        ),
        (
            proptest::collection::vec(field(), 0..3),
            proptest::collection::vec(field(), 0..3),
            proptest::option::of(connection_model()),
            proptest::collection::vec(bandwidth_model(), 0..3),
        ),
        (
            proptest::collection::vec(time, 0..3),
            proptest::collection::vec(zone, 0..3),
            proptest::option::of(key_model()),
            proptest::collection::vec(attribute_model(), 0..6),
            proptest::collection::vec(media_model(), 0..4),
        ),
    )
        .prop_map(
            |(
                (origin, session_name, session_description, uri),
                (emails, phones, connection, bandwidths),
                (times, time_zones, key, attributes, medias),
            )| sdp_types::Session {
                origin,
                session_name,
                session_description,
                uri,
                emails,
                phones,
                connection,
                bandwidths,
                times,
                time_zones,
                key,
                attributes,
                medias,
            },
        )
}

/// What the crate's own writer writes.
fn written_by_sdp_types(session: &sdp_types::Session) -> Vec<u8> {
    let mut body = Vec::new();
    session.write(&mut body).unwrap();
    body
}

#[test]
fn negotiate_offer_is_the_answer_without_the_body() {
    let preferences = default_preferences();
    for text in [LINPHONE, THREE_GPP, HOLD_SENDONLY, HOLD_ZERO, AUDIO_VIDEO, MUX] {
        let offer = sdp(text);
        let mut local = local(&preferences);
        for (single_codec, rtcp_mux) in [(false, false), (true, true)] {
            local.single_codec = single_codec;
            local.rtcp_mux = rtcp_mux;
            assert_eq!(
                negotiate_offer(&offer, &local),
                answer(&offer, &local).map(|answer| answer.negotiated),
                "{text}"
            );
        }
    }
    let video_only =
        sdp("v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=video 5000 RTP/AVP 99\r\n");
    assert_eq!(
        negotiate_offer(&video_only, &local(&preferences)),
        Err(OfferAnswerError::NoAcceptableMedia)
    );
    let only_g722 =
        sdp("v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 5000 RTP/AVP 9\r\n");
    assert_eq!(
        negotiate_offer(&only_g722, &local(&preferences)),
        Err(OfferAnswerError::NoCommonCodec)
    );
}

#[test]
fn write_matches_sdp_types_on_the_fixtures() {
    for text in [LINPHONE, THREE_GPP, HOLD_SENDONLY, HOLD_ZERO, AUDIO_VIDEO, MUX] {
        let parsed = sdp(text);
        assert_eq!(parsed.to_bytes(), written_by_sdp_types(parsed.session()), "{text}");
        let preferences = default_preferences();
        let answered = answer(&parsed, &local(&preferences)).unwrap().sdp;
        assert_eq!(answered.to_bytes(), written_by_sdp_types(answered.session()));
        let rewritten = rewrite_connection(&parsed, RELAY, 41000, Some(41001));
        assert_eq!(rewritten.to_bytes(), written_by_sdp_types(rewritten.session()));
    }
    let offered = offer(&local(&default_preferences()));
    assert_eq!(offered.to_bytes(), written_by_sdp_types(offered.session()));
    // Every line type, repeat and zone units, stripped characters, an empty time list.
    let text = "v=0\r
o=jdoe 2890844526 2890842807 IN IP4 10.47.16.5\r
s=SDP Seminar\r
i=A Seminar\r
u=http://www.example.com/seminars/sdp.pdf\r
e=j.doe@example.com (Jane Doe)\r
p=+1 617 555-6011\r
c=IN IP4 224.2.17.12/127\r
b=AS:128\r
t=2873397496 2873404696\r
r=7d 1h 0 25h\r
r=604800 3600 61 90000\r
t=0 0\r
z=2882844526 -1h 2898848070 0\r
k=clear:1234\r
a=recvonly\r
m=audio 49170 RTP/AVP 0\r
i=voice\r
c=IN IP6 ::1\r
c=IN IP4 192.0.2.1\r
b=CT:64\r
k=prompt\r
a=rtpmap:0 PCMU/8000\r
m=video 51372/2 RTP/AVP 99\r
a=rtpmap:99 h263-1998/90000\r
";
    let mut session = sdp(text).into_session();
    assert_eq!(Sdp::from(session.clone()).to_bytes(), written_by_sdp_types(&session));
    session.origin.username = Some(String::new());
    session.session_name = "a\r\nm=evil\0".to_owned();
    session.times.clear();
    session.time_zones.push(sdp_types::TimeZone::new(1, i64::MIN));
    assert_eq!(Sdp::from(session.clone()).to_bytes(), written_by_sdp_types(&session));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn write_matches_sdp_types(session in session_model()) {
        let ours = Sdp::from(session.clone()).to_bytes();
        let theirs = written_by_sdp_types(&session);
        prop_assert_eq!(String::from_utf8_lossy(&ours), String::from_utf8_lossy(&theirs));
        prop_assert_eq!(&ours, &theirs);
        // Appending keeps what is there.
        let mut out = b"head".to_vec();
        Sdp::from(session).write_to(&mut out);
        prop_assert_eq!(&out[4..], &ours[..]);
    }
}

proptest! {
    #[test]
    fn trim_and_split_are_the_std_ones(text in prop_oneof!["[ \t\r\na-z0-9\u{a0}\u{2003}\u{3000}é]{0,12}", any::<String>()]) {
        prop_assert_eq!(view::trim(&text), text.trim());
        prop_assert_eq!(
            view::split_at_whitespace(&text),
            text.split_once(|c: char| c.is_ascii_whitespace())
        );
    }
}

#[test]
fn format_lines_beyond_the_inline_ones() {
    // More rtpmap/fmtp lines than FormatLines keeps on the stack, with repeats: the first
    // readable one of each payload type still wins.
    let mut text = String::from("v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n");
    text.push_str("m=audio 5000 RTP/AVP 0 8 96 97 98 99 100 101 102 103 104 105 106 107 108 109\r\n");
    for payload_type in 96..110 {
        text.push_str(&format!("a=rtpmap:{payload_type} bad\r\n"));
        text.push_str(&format!("a=fmtp:{payload_type} x={payload_type}\r\n"));
    }
    for payload_type in 96..110 {
        let codec = if payload_type % 2 == 0 {
            "AMR-WB/16000"
        } else {
            "telephone-event/8000"
        };
        text.push_str(&format!(
            "a=rtpmap:{payload_type} {codec}\r\na=fmtp:{payload_type} y\r\n"
        ));
    }
    let offer = sdp(&text);
    let media = &offer.session().medias[0];
    let lines = view::FormatLines::new(media);
    for payload_type in 0..=u8::MAX {
        assert_eq!(lines.format(payload_type), format_by_search(media, payload_type));
    }
    assert_eq!(lines.format(109).unwrap().codec, Codec::TelephoneEvent8k);
    assert_eq!(lines.format(109).unwrap().fmtp.as_deref(), Some("x=109"));
}

proptest! {
    #[test]
    fn token_count_is_split_ascii_whitespace(text in "[ \t\r\n\x0ca-z0-9\u{a0}é]{0,16}") {
        prop_assert_eq!(super::token_count(&text), text.split_ascii_whitespace().count());
    }
}
