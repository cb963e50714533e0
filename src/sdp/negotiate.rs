//! Offer/answer proper: answering an offer, building an offer, reading the answer to it, and
//! re-anchoring a passed-through body.

#![deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, SocketAddr};

use sdp_types::{AddrType, Attribute, Connection, Media, NetType, Origin, Session, Time};

use super::error::OfferAnswerError;
use super::format::{static_payload_type, Direction, Format, PayloadFormat};
use super::view;
use super::Sdp;
use crate::media::api::LegSpec;
use crate::media::codec::Codec;

/// Packet time we offer when the caller has no preference (ms).
const DEFAULT_PTIME: u32 = 20;
/// First dynamic payload type number (RFC 3551).
const FIRST_DYNAMIC_PAYLOAD_TYPE: u8 = 96;

/// The `o=` identity of the SDP this node sends in one dialog: the id stays, the version goes
/// up by one with every new body (RFC 3264 section 8). The caller keeps it (no clock or
/// randomness here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SessionOrigin {
    /// `<sess-id>`.
    pub id: u64,
    /// `<sess-version>`.
    pub version: u64,
}

/// What this node brings to one relay leg: where it receives, what it accepts.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalMedia<'a> {
    /// The relay leg's address (goes into `c=` and `o=`).
    pub address: IpAddr,
    /// The relay leg's RTP port (goes into `m=`).
    pub rtp_port: u16,
    /// The relay leg's RTCP port when RTCP is not multiplexed (`a=rtcp:`).
    pub rtcp_port: u16,
    /// Accept (in an answer) or offer (in an offer) RTP/RTCP multiplexing (RFC 5761).
    pub rtcp_mux: bool,
    /// Formats we accept, most preferred first. Telephone-event and CN entries say that we
    /// accept them; they are only answered at the clock rate of a chosen voice codec.
    pub preferences: &'a [Format],
    /// Packet time we want to receive (ms); `None`: no preference (echo the offer's, offer 20).
    pub ptime: Option<u32>,
    /// What this leg may do: `SendRecv` for a single call, `SendOnly` for a group talker leg as
    /// seen from this node, `RecvOnly` for a group downlink. The answered direction is the
    /// offer's reversed, intersected with this.
    pub direction: Direction,
    /// Answer only the most preferred common voice codec (plus its telephone-event), so that
    /// neither side can switch to a codec the other leg of a non-transcoding relay lacks.
    pub single_codec: bool,
    /// The `o=` line identity.
    pub origin: SessionOrigin,
}

impl<'a> LocalMedia<'a> {
    /// A sendrecv leg at `address:rtp_port`, RTCP on the next port, no multiplexing, no ptime
    /// preference, all common codecs answered.
    pub fn new(address: IpAddr, rtp_port: u16, preferences: &'a [Format]) -> LocalMedia<'a> {
        LocalMedia {
            address,
            rtp_port,
            rtcp_port: rtp_port.wrapping_add(1),
            rtcp_mux: false,
            preferences,
            ptime: None,
            direction: Direction::SendRecv,
            single_codec: false,
            origin: SessionOrigin::default(),
        }
    }
}

/// The negotiated media parameters of one relay leg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// Index of the m-line carrying the leg's audio.
    pub media_index: usize,
    /// Negotiated payload formats: voice codecs first (the first is the preferred one), then
    /// telephone-event / CN. When the answerer numbered a format differently from the offer,
    /// its number comes first and the offer's number follows as an alias.
    pub formats: Vec<PayloadFormat>,
    /// Where to send RTP; `None` while the peer holds with `c=0.0.0.0`.
    pub remote_rtp: Option<SocketAddr>,
    /// Where to send RTCP when the peer said so (`a=rtcp`); `None`: RTP port + 1, or the RTP
    /// address with `rtcp_mux`.
    pub remote_rtcp: Option<SocketAddr>,
    /// RTP and RTCP share the port (both sides asked for `a=rtcp-mux`).
    pub rtcp_mux: bool,
    /// Direction from this node's point of view (`SendOnly`: we send, the peer only listens).
    pub direction: Direction,
    /// Packet time the peer asked for (ms), else ours.
    pub ptime: Option<u32>,
    /// The peer's connection address is `0.0.0.0` (RFC 2543 hold).
    pub connection_hold: bool,
}

impl Negotiated {
    /// The `(payload type, codec)` pairs for [`LegSpec::payload_types`].
    pub fn payload_types(&self) -> Vec<(u8, Codec)> {
        self.formats
            .iter()
            .map(|format| (format.payload_type, format.format.codec))
            .collect()
    }

    /// The preferred voice format (the codec media is expected in).
    pub fn voice(&self) -> Option<&PayloadFormat> {
        self.formats.iter().find(|format| !format.format.is_auxiliary())
    }

    /// Writes the negotiated remote addresses, multiplexing and payload types into a leg
    /// description (source checking and fan-out stay the caller's).
    pub fn apply_to(&self, leg: &mut LegSpec) {
        leg.remote = self.remote_rtp;
        leg.remote_rtcp = self.remote_rtcp;
        leg.rtcp_mux = self.rtcp_mux;
        leg.payload_types = self.payload_types();
    }
}

/// An answer to an offer: the body to send and what it means for the relay leg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The SDP to send (our relay address and ports).
    pub sdp: Sdp,
    /// The negotiated leg parameters.
    pub negotiated: Negotiated,
}

/// Answers `offer` for the relay leg `local` (RFC 3264 section 6).
///
/// One m-line per offered m-line, in order. The first active RTP audio m-line with a codec in
/// common is accepted: formats keep the offer's payload type numbers and fmtp, direction is
/// answered per section 6.1, `a=rtcp-mux` is accepted when offered and wanted, ptime is the
/// smaller of the offered and ours. Every other m-line (video, SRTP, T.38, a second audio
/// stream, an audio stream without a common codec) is rejected with port 0.
///
/// Errors: [`OfferAnswerError::NoCommonCodec`] (answer 488) when an audio stream was offered
/// but none shares a codec with `local.preferences`; [`OfferAnswerError::NoAcceptableMedia`]
/// (488) when no RTP audio was offered at all; address errors for a malformed accepted stream.
pub fn answer(offer: &Sdp, local: &LocalMedia<'_>) -> Result<Answer, OfferAnswerError> {
    let session = offer.session();
    let negotiated = negotiate_offer(offer, local)?;
    let mut answer = session_for(local);
    answer.medias = session
        .medias
        .iter()
        .enumerate()
        .map(|(index, media)| {
            if index == negotiated.media_index {
                answered_audio(media, local, &negotiated)
            } else {
                rejected(media)
            }
        })
        .collect();
    Ok(Answer {
        sdp: Sdp(answer),
        negotiated,
    })
}

/// What [`answer`] negotiates for `offer`, with the same errors, without writing the answer:
/// for a hop that forwards the offer (re-anchored) rather than answering it.
pub fn negotiate_offer(offer: &Sdp, local: &LocalMedia<'_>) -> Result<Negotiated, OfferAnswerError> {
    let session = offer.session();
    let mut audio_offered = false;
    for (index, media) in session.medias.iter().enumerate() {
        if view::is_active(media) && view::is_rtp_audio(media) {
            audio_offered = true;
            if let Some(negotiated) = answer_audio(session, media, index, local)? {
                return Ok(negotiated);
            }
        }
    }
    if audio_offered {
        Err(OfferAnswerError::NoCommonCodec)
    } else {
        Err(OfferAnswerError::NoAcceptableMedia)
    }
}

/// The answer's m-line for the accepted audio stream `media`.
fn answered_audio(media: &Media, local: &LocalMedia<'_>, negotiated: &Negotiated) -> Media {
    let lines = LineOptions {
        rtcp_port: (!negotiated.rtcp_mux).then_some(local.rtcp_port),
        rtcp_mux: negotiated.rtcp_mux,
        default_fmtp: false,
    };
    audio_media(
        media.media.clone(),
        media.proto.clone(),
        local,
        &negotiated.formats,
        negotiated.ptime,
        lines,
        negotiated.direction,
    )
}

/// Answers one audio m-line; `Ok(None)`: no codec in common.
fn answer_audio(
    session: &Session,
    media: &Media,
    index: usize,
    local: &LocalMedia<'_>,
) -> Result<Option<Negotiated>, OfferAnswerError> {
    let offered = view::formats(media);
    let mut formats: Vec<PayloadFormat> = Vec::new();
    for preference in local.preferences.iter().filter(|format| !format.is_auxiliary()) {
        for candidate in offered.iter().filter(|offered| offered.format.matches(preference)) {
            if !formats
                .iter()
                .any(|chosen| chosen.payload_type == candidate.payload_type)
            {
                formats.push(candidate.clone());
            }
        }
    }
    if formats.is_empty() {
        return Ok(None);
    }
    if local.single_codec {
        formats.truncate(1);
    }
    // Telephone-event / CN go along at the clock rates of the chosen voice codecs (those
    // added below share one of them, so looking at the whole list is the same).
    for candidate in &offered {
        let wanted = candidate.format.is_auxiliary()
            && formats
                .iter()
                .any(|chosen| chosen.format.codec.clock_rate() == candidate.format.codec.clock_rate())
            && local
                .preferences
                .iter()
                .any(|preference| preference.matches(&candidate.format));
        if wanted
            && !formats
                .iter()
                .any(|chosen| chosen.payload_type == candidate.payload_type)
        {
            formats.push(candidate.clone());
        }
    }

    let remote_ip = view::connection_address(session, media, index)?;
    let connection_hold = remote_ip.is_none();
    let mut offered_direction = view::direction(session, media);
    if connection_hold {
        // RFC 2543 hold: the offerer does not want to receive, whatever the attribute says.
        offered_direction = offered_direction.intersect(Direction::SendOnly);
    }
    let direction = offered_direction.reversed().intersect(local.direction);
    let rtcp_mux = local.rtcp_mux && view::has_attribute(&media.attributes, "rtcp-mux");
    let remote_rtcp = if rtcp_mux {
        None
    } else {
        view::rtcp_address(media, index, remote_ip)?
    };
    let ptime = match (view::ptime(media), local.ptime) {
        (Some(offered), Some(ours)) => Some(offered.min(ours)),
        (offered, ours) => offered.or(ours),
    };

    Ok(Some(Negotiated {
        media_index: index,
        formats,
        remote_rtp: remote_ip.map(|ip| SocketAddr::new(ip, media.port)),
        remote_rtcp,
        rtcp_mux,
        direction,
        ptime,
        connection_hold,
    }))
}

/// Builds our own offer for the relay leg `local`: one audio m-line over RTP/AVP with
/// `local.preferences` (static payload types where the codec has one, dynamic ones from 96 up
/// otherwise), `a=rtpmap` for every format, `a=fmtp` for AMR/AMR-WB (`octet-align=1` unless
/// the format is bandwidth-efficient or carries its own parameters) and telephone events,
/// `a=ptime`, `a=rtcp:` (and `a=rtcp-mux` when wanted), and the direction `local.direction`.
pub fn offer(local: &LocalMedia<'_>) -> Sdp {
    let mut formats: Vec<PayloadFormat> = Vec::with_capacity(local.preferences.len());
    let mut next_dynamic = FIRST_DYNAMIC_PAYLOAD_TYPE;
    for format in local.preferences.iter().filter(|format| format.is_audio()) {
        if formats.iter().any(|chosen| chosen.format == *format) {
            continue;
        }
        let payload_type = match static_payload_type(format.codec) {
            Some(number) => number,
            None => {
                if next_dynamic > 127 {
                    // 32 dynamic numbers: more distinct formats than that is a caller bug;
                    // offer what fits.
                    continue;
                }
                let number = next_dynamic;
                next_dynamic = next_dynamic.saturating_add(1);
                number
            }
        };
        formats.push(PayloadFormat {
            payload_type,
            format: format.clone(),
        });
    }
    let ptime = Some(local.ptime.unwrap_or(DEFAULT_PTIME));
    // With multiplexing, a separate RTCP port is still offered as the fallback (RFC 5761
    // section 5.1.1) when the caller has one.
    let lines = LineOptions {
        rtcp_port: (!local.rtcp_mux || local.rtcp_port != local.rtp_port).then_some(local.rtcp_port),
        rtcp_mux: local.rtcp_mux,
        default_fmtp: true,
    };
    let media = audio_media(
        "audio".to_owned(),
        "RTP/AVP".to_owned(),
        local,
        &formats,
        ptime,
        lines,
        local.direction,
    );
    let mut session = session_for(local);
    session.medias.push(media);
    Sdp(session)
}

/// Checks `answer` against the offer we sent (`offer`, as built by [`offer`] or re-anchored by
/// [`rewrite_connection`]) and extracts the leg's parameters.
///
/// The answer must have one m-line per offered m-line with the same media types; its audio
/// stream (the first active RTP audio m-line of our offer) must not be rejected and must list
/// only formats we offered (matched by codec and AMR packing; dynamic numbers may differ from
/// ours, RFC 3264 section 6.1 only recommends keeping them).
pub fn parse_answer(offer: &Sdp, answer: &Sdp) -> Result<Negotiated, OfferAnswerError> {
    let ours = offer.session();
    let theirs = answer.session();
    if ours.medias.len() != theirs.medias.len() {
        return Err(OfferAnswerError::MediaCountMismatch {
            offered: ours.medias.len(),
            answered: theirs.medias.len(),
        });
    }
    for (index, (offered, answered)) in ours.medias.iter().zip(&theirs.medias).enumerate() {
        if !offered.media.eq_ignore_ascii_case(&answered.media) {
            return Err(OfferAnswerError::MediaMismatch { media: index });
        }
    }
    let (index, (offered, answered)) = ours
        .medias
        .iter()
        .zip(&theirs.medias)
        .enumerate()
        .find(|(_, (offered, _))| view::is_active(offered) && view::is_rtp_audio(offered))
        .ok_or(OfferAnswerError::NoOfferedAudio)?;
    if !view::is_active(answered) {
        return Err(OfferAnswerError::MediaRejected);
    }

    let offered_formats = view::formats(offered);
    let answered_lines = view::FormatLines::new(answered);
    let mut formats: Vec<PayloadFormat> = Vec::new();
    let mut aliases: Vec<PayloadFormat> = Vec::new();
    for payload_type in view::payload_types(answered) {
        if formats.iter().any(|known| known.payload_type == payload_type) {
            continue;
        }
        // An answer may leave out the rtpmap of a number it copied from the offer.
        let format = answered_lines.format(payload_type).or_else(|| {
            offered_formats
                .iter()
                .find(|ours| ours.payload_type == payload_type)
                .map(|ours| ours.format.clone())
        });
        let Some(format) = format else {
            return Err(OfferAnswerError::UnofferedFormat { payload_type });
        };
        let Some(ours) = offered_formats.iter().find(|ours| ours.format.matches(&format)) else {
            return Err(OfferAnswerError::UnofferedFormat { payload_type });
        };
        let format = Format {
            fmtp: format.fmtp.or_else(|| ours.format.fmtp.clone()),
            ..format
        };
        if ours.payload_type != payload_type {
            aliases.push(PayloadFormat {
                payload_type: ours.payload_type,
                format: format.clone(),
            });
        }
        formats.push(PayloadFormat { payload_type, format });
    }
    if !formats.iter().any(|format| !format.format.is_auxiliary()) {
        return Err(OfferAnswerError::NoCommonCodec);
    }
    for alias in aliases {
        if !formats.iter().any(|known| known.payload_type == alias.payload_type) {
            formats.push(alias);
        }
    }
    // Voice codecs first, keeping the answer's order within each group.
    formats.sort_by_key(|format| format.format.is_auxiliary());

    let remote_ip = view::connection_address(theirs, answered, index)?;
    let connection_hold = remote_ip.is_none();
    let mut answered_direction = view::direction(theirs, answered);
    if connection_hold {
        answered_direction = answered_direction.intersect(Direction::SendOnly);
    }
    let direction = view::direction(ours, offered).intersect(answered_direction.reversed());
    let rtcp_mux =
        view::has_attribute(&offered.attributes, "rtcp-mux") && view::has_attribute(&answered.attributes, "rtcp-mux");
    let remote_rtcp = if rtcp_mux {
        None
    } else {
        view::rtcp_address(answered, index, remote_ip)?
    };
    Ok(Negotiated {
        media_index: index,
        formats,
        remote_rtp: remote_ip.map(|ip| SocketAddr::new(ip, answered.port)),
        remote_rtcp,
        rtcp_mux,
        direction,
        ptime: view::ptime(answered).or_else(|| view::ptime(offered)),
        connection_hold,
    })
}

/// Re-anchors a body at this node's relay leg, for a B2BUA that forwards the other side's
/// offer or answer (media anchoring `always`, or an edge TCF).
///
/// The first active RTP audio m-line gets `rtp_port` and `address` (its own `c=` if it had
/// one; a `0.0.0.0` hold address, session- or media-level, stays `0.0.0.0`); its `a=rtcp` becomes `rtcp_port` (the RTP
/// port when `None`: multiplexed), and one is added when `rtcp_port` is not RTP + 1; ICE
/// candidates of it are dropped (they name addresses behind the relay). The session `c=` and
/// the `o=` address become `address` (topology hiding; the `o=` id and version are kept so
/// they still change when the original does). Other active m-lines are disabled with port 0:
/// this node relays only the audio stream. Every other line is kept as it was.
pub fn rewrite_connection(sdp: &Sdp, address: IpAddr, rtp_port: u16, rtcp_port: Option<u16>) -> Sdp {
    reanchor(sdp.clone(), address, rtp_port, rtcp_port)
}

/// [`rewrite_connection`] of a body the caller no longer needs: rewritten in place, without a
/// copy.
pub fn reanchor(sdp: Sdp, address: IpAddr, rtp_port: u16, rtcp_port: Option<u16>) -> Sdp {
    reanchor_av(
        sdp,
        address,
        Ports {
            rtp: rtp_port,
            rtcp: rtcp_port,
        },
        None,
    )
}

/// The ports of one relay leg for [`reanchor_av`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    /// RTP port (goes into `m=`).
    pub rtp: u16,
    /// RTCP port (`a=rtcp`); `None`: multiplexed on the RTP port.
    pub rtcp: Option<u16>,
}

/// [`reanchor`] for a call that relays video too (F-VID-01): the audio stream is re-anchored at
/// `audio`, and, when `video` is given, the first active RTP video m-line
/// ([`super::video_of`]) at `video` the same way (its formats and attributes pass through
/// unchanged). Without `video`, or for any other active m-line, port 0 as in [`reanchor`].
pub fn reanchor_av(sdp: Sdp, address: IpAddr, audio: Ports, video: Option<Ports>) -> Sdp {
    let mut session = sdp.0;
    session.origin.addrtype = addrtype(address);
    set_ip(&mut session.origin.unicast_address, address);
    let session_hold = session
        .connection
        .as_ref()
        .is_some_and(|connection| is_unspecified(&connection.connection_address));
    let had_session_connection = session.connection.is_some();
    if let Some(connection) = &mut session.connection {
        set_connection(connection, if session_hold { unspecified(address) } else { address });
    }

    let anchored = session
        .medias
        .iter()
        .position(|media| view::is_active(media) && view::is_rtp_audio(media));
    let video_anchored = video.and_then(|ports| super::video::video_index(&session.medias).map(|index| (index, ports)));
    for (index, media) in session.medias.iter_mut().enumerate() {
        let ports = if Some(index) == anchored {
            audio
        } else if let Some((_, ports)) = video_anchored.filter(|(video_index, _)| *video_index == index) {
            ports
        } else {
            if view::is_active(media) {
                media.port = 0;
                media.num_ports = None;
            }
            for connection in &mut media.connections {
                set_connection(connection, address);
            }
            continue;
        };
        anchor_media(media, address, ports, session_hold, had_session_connection);
    }
    Sdp(session)
}

/// Re-anchors one relayed m-line at `address` and `ports` (see [`reanchor`]).
fn anchor_media(media: &mut Media, address: IpAddr, ports: Ports, session_hold: bool, had_session_connection: bool) {
    let Ports {
        rtp: rtp_port,
        rtcp: rtcp_port,
    } = ports;
    let hold = match media.connections.first() {
        Some(connection) => is_unspecified(&connection.connection_address),
        None => session_hold,
    };
    let own = if hold { unspecified(address) } else { address };
    if !media.connections.is_empty() || !had_session_connection || hold != session_hold {
        // One c= line at `own`, rewritten in place when there is one.
        media.connections.truncate(1);
        match media.connections.first_mut() {
            Some(connection) => set_connection(connection, own),
            None => media.connections.push(connection(own)),
        }
    }
    media.port = rtp_port;
    media.num_ports = None;
    media.attributes.retain(|attribute| {
        let name = view::trim(&attribute.attribute);
        !name.eq_ignore_ascii_case("candidate") && !name.eq_ignore_ascii_case("remote-candidates")
    });
    let rtcp = rtcp_port.unwrap_or(rtp_port);
    let mut had_rtcp = false;
    for attribute in &mut media.attributes {
        if view::trim(&attribute.attribute).eq_ignore_ascii_case("rtcp") {
            let value = attribute.value.get_or_insert_with(String::new);
            value.clear();
            value.push_str(itoa::Buffer::new().format(rtcp));
            had_rtcp = true;
        }
    }
    if !had_rtcp && Some(rtcp) != rtp_port.checked_add(1) && rtcp_port.is_some() {
        media.attributes.push(Attribute::with_value("rtcp", rtcp));
    }
}

/// The session part of a body this node writes.
fn session_for(local: &LocalMedia<'_>) -> Session {
    let origin = Origin {
        username: None,
        sess_id: local.origin.id.to_string(),
        sess_version: local.origin.version,
        nettype: NetType::In,
        addrtype: addrtype(local.address),
        unicast_address: ip_text(local.address),
    };
    let mut session = Session::new(origin, "-");
    session.connection = Some(connection(local.address));
    session.times.push(Time::new(0, 0));
    session
}

/// Optional lines of an m-line we write.
#[derive(Clone, Copy)]
struct LineOptions {
    /// `a=rtcp:<port>`.
    rtcp_port: Option<u16>,
    /// `a=rtcp-mux`.
    rtcp_mux: bool,
    /// Write the codec's default fmtp when a format carries none (offers; an answer echoes
    /// the offer's fmtp exactly).
    default_fmtp: bool,
}

/// An accepted audio m-line at our leg.
fn audio_media(
    media: String,
    proto: String,
    local: &LocalMedia<'_>,
    formats: &[PayloadFormat],
    ptime: Option<u32>,
    lines: LineOptions,
    direction: Direction,
) -> Media {
    let fmt = formats
        .iter()
        .map(|format| format.payload_type.to_string())
        .collect::<Vec<_>>()
        .join(" ");
    let mut attributes = Vec::with_capacity(2 * formats.len() + 4);
    for PayloadFormat { payload_type, format } in formats {
        attributes.push(Attribute::with_value(
            "rtpmap",
            format!("{payload_type} {}", format.rtpmap()),
        ));
        let fmtp = if lines.default_fmtp {
            format.fmtp_or_default()
        } else {
            format.fmtp.clone()
        };
        if let Some(fmtp) = fmtp {
            attributes.push(Attribute::with_value("fmtp", format!("{payload_type} {fmtp}")));
        }
    }
    if let Some(ptime) = ptime {
        attributes.push(Attribute::with_value("ptime", ptime));
    }
    if let Some(port) = lines.rtcp_port {
        attributes.push(Attribute::with_value("rtcp", port));
    }
    if lines.rtcp_mux {
        attributes.push(Attribute::new("rtcp-mux"));
    }
    attributes.push(Attribute::new(direction.attribute()));
    Media {
        media,
        port: local.rtp_port,
        num_ports: None,
        proto,
        fmt,
        media_title: None,
        connections: Vec::new(),
        bandwidths: Vec::new(),
        key: None,
        attributes,
    }
}

/// A rejected m-line (RFC 3264 section 6: port 0, the offered formats, nothing else).
fn rejected(media: &Media) -> Media {
    Media {
        media: media.media.clone(),
        port: 0,
        num_ports: None,
        proto: media.proto.clone(),
        fmt: media.fmt.clone(),
        media_title: None,
        connections: Vec::new(),
        bandwidths: Vec::new(),
        key: None,
        attributes: Vec::new(),
    }
}

fn addrtype(address: IpAddr) -> AddrType {
    match address {
        IpAddr::V4(_) => AddrType::Ip4,
        IpAddr::V6(_) => AddrType::Ip6,
    }
}

fn connection(address: IpAddr) -> Connection {
    Connection {
        nettype: NetType::In,
        addrtype: addrtype(address),
        connection_address: ip_text(address),
    }
}

/// Makes `connection` what [`connection`] builds for `address`, reusing its text buffer.
fn set_connection(connection: &mut Connection, address: IpAddr) {
    connection.nettype = NetType::In;
    connection.addrtype = addrtype(address);
    set_ip(&mut connection.connection_address, address);
}

/// `address.to_string()`.
fn ip_text(address: IpAddr) -> String {
    let mut text = String::with_capacity(15);
    set_ip(&mut text, address);
    text
}

/// Replaces `text` with `address.to_string()`, without `core::fmt` for IPv4.
fn set_ip(text: &mut String, address: IpAddr) {
    text.clear();
    crate::proto::push_ip(text, address);
}

fn unspecified(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    }
}

fn is_unspecified(connection_address: &str) -> bool {
    connection_address
        .split('/')
        .next()
        .and_then(|literal| view::trim(literal).parse::<IpAddr>().ok())
        .is_some_and(|ip| ip.is_unspecified())
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn ip_text_is_display(v4 in any::<u32>(), v6 in any::<u128>(), short in 0u16..3) {
            let v6_short = Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, short, 1);
            for ip in [
                IpAddr::V4(Ipv4Addr::from(v4)),
                IpAddr::V6(Ipv6Addr::from(v6)),
                IpAddr::V6(v6_short),
            ] {
                prop_assert_eq!(ip_text(ip), ip.to_string());
                let mut reused = "255.255.255.255 and more".to_owned();
                set_ip(&mut reused, ip);
                prop_assert_eq!(reused, ip.to_string());
            }
        }
    }
}
