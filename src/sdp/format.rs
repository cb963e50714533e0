//! Payload formats and media directions: what one entry of an m-line means to us.

#![deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::media::codec::Codec;

/// The direction of a media stream from one side's point of view (RFC 3264 section 5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Direction {
    /// Send and receive (`a=sendrecv`, also the default when no attribute is present).
    #[default]
    SendRecv,
    /// Only send (`a=sendonly`): a talker leg, or the side that puts the other on hold.
    SendOnly,
    /// Only receive (`a=recvonly`): a group call downlink.
    RecvOnly,
    /// Neither (`a=inactive`).
    Inactive,
}

impl Direction {
    /// The direction that sends when `send` and receives when `receive`.
    pub fn new(send: bool, receive: bool) -> Direction {
        match (send, receive) {
            (true, true) => Direction::SendRecv,
            (true, false) => Direction::SendOnly,
            (false, true) => Direction::RecvOnly,
            (false, false) => Direction::Inactive,
        }
    }

    /// Whether this side sends media.
    pub fn sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }

    /// Whether this side receives media.
    pub fn receives(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }

    /// The same stream seen from the other side (sendonly becomes recvonly and back).
    pub fn reversed(self) -> Direction {
        Direction::new(self.receives(), self.sends())
    }

    /// What both of two constraints on the same side allow.
    pub fn intersect(self, other: Direction) -> Direction {
        Direction::new(self.sends() && other.sends(), self.receives() && other.receives())
    }

    /// The SDP attribute name (`sendrecv`, `sendonly`, `recvonly`, `inactive`).
    pub fn attribute(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    /// The direction an attribute name stands for, if it is one of the four.
    pub fn from_attribute(name: &str) -> Option<Direction> {
        [
            Direction::SendRecv,
            Direction::SendOnly,
            Direction::RecvOnly,
            Direction::Inactive,
        ]
        .into_iter()
        .find(|direction| name.eq_ignore_ascii_case(direction.attribute()))
    }
}

/// A payload format: a codec plus the format parameters that change what is on the wire.
///
/// For AMR and AMR-WB, bandwidth-efficient and octet-aligned packing (RFC 4867 `octet-align`)
/// are different payload formats: a receiver of one cannot decode the other, and the relay does
/// not repack. [`Format::matches`] therefore compares `octet_align` for those codecs. Other
/// parameters (`mode-set`, `mode-change-capability`, telephone-event ranges) are carried in
/// `fmtp` unchanged and do not take part in matching.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Format {
    /// The codec.
    pub codec: Codec,
    /// AMR/AMR-WB octet-aligned packing (`octet-align=1`); ignored for other codecs.
    pub octet_align: bool,
    /// The `a=fmtp` parameters (the text after the payload type), as received or to be sent.
    /// `None` when building an offer: the default for the codec is used (see
    /// [`Format::fmtp_or_default`]).
    pub fmtp: Option<String>,
}

impl From<Codec> for Format {
    fn from(codec: Codec) -> Format {
        Format::new(codec)
    }
}

impl Format {
    /// The codec with default parameters (AMR/AMR-WB octet-aligned, as 3GPP terminals offer first).
    pub fn new(codec: Codec) -> Format {
        Format {
            codec,
            octet_align: is_amr(codec),
            fmtp: None,
        }
    }

    /// AMR or AMR-WB in bandwidth-efficient packing (no `octet-align` parameter).
    pub fn bandwidth_efficient(codec: Codec) -> Format {
        Format {
            codec,
            octet_align: false,
            fmtp: None,
        }
    }

    /// Whether this is AMR or AMR-WB (packing matters).
    pub fn is_amr(&self) -> bool {
        is_amr(self.codec)
    }

    /// Whether two formats are the same payload format: same codec and, for AMR/AMR-WB, the
    /// same packing.
    pub fn matches(&self, other: &Format) -> bool {
        self.codec == other.codec && (!self.is_amr() || self.octet_align == other.octet_align)
    }

    /// Whether this is an auxiliary format (telephone events, comfort noise) that only goes
    /// along with a voice codec of the same clock rate.
    pub fn is_auxiliary(&self) -> bool {
        matches!(
            self.codec,
            Codec::TelephoneEvent8k | Codec::TelephoneEvent16k | Codec::ComfortNoise
        )
    }

    /// Whether this codec can be carried on an audio m-line.
    pub fn is_audio(&self) -> bool {
        !matches!(self.codec, Codec::H264)
    }

    /// The `a=fmtp` parameters to send: the carried ones, else the codec's default
    /// (`octet-align=1` for octet-aligned AMR, `0-15` for telephone events).
    pub fn fmtp_or_default(&self) -> Option<String> {
        if let Some(fmtp) = &self.fmtp {
            return Some(fmtp.clone());
        }
        match self.codec {
            Codec::Amr | Codec::AmrWb if self.octet_align => Some("octet-align=1".to_owned()),
            Codec::TelephoneEvent8k | Codec::TelephoneEvent16k => Some("0-15".to_owned()),
            _ => None,
        }
    }

    /// The `a=rtpmap` value after the payload type (`AMR-WB/16000`, `opus/48000/2`).
    pub fn rtpmap(&self) -> String {
        let (name, channels) = encoding_name(self.codec);
        match channels {
            Some(channels) => format!("{name}/{}/{channels}", self.codec.clock_rate()),
            None => format!("{name}/{}", self.codec.clock_rate()),
        }
    }

    /// The format read from an m-line entry: its `a=rtpmap` (encoding name, clock rate) or, for
    /// static payload types without one, the RFC 3551 assignment; `fmtp` is the entry's
    /// `a=fmtp` parameters. `None`: a codec we do not know.
    pub(crate) fn from_sdp(payload_type: u8, rtpmap: Option<(&str, u32)>, fmtp: Option<&str>) -> Option<Format> {
        let codec = match rtpmap {
            Some((name, clock_rate)) => Codec::from_rtpmap(name, clock_rate)?,
            None => static_codec(payload_type)?,
        };
        let octet_align = is_amr(codec) && fmtp.is_some_and(|fmtp| fmtp_param(fmtp, "octet-align") == Some("1"));
        Some(Format {
            codec,
            octet_align,
            fmtp: fmtp.map(str::to_owned),
        })
    }
}

/// One negotiated payload format with the number it has on a leg.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PayloadFormat {
    /// The RTP payload type number.
    pub payload_type: u8,
    /// The format.
    pub format: Format,
}

/// A sensible default preference list for a trunking node: AMR-WB, AMR (octet-aligned before
/// bandwidth-efficient), G.711 A-law then µ-law, and telephone events at both clock rates.
pub fn default_preferences() -> Vec<Format> {
    vec![
        Format::new(Codec::AmrWb),
        Format::bandwidth_efficient(Codec::AmrWb),
        Format::new(Codec::Amr),
        Format::bandwidth_efficient(Codec::Amr),
        Format::new(Codec::Pcma),
        Format::new(Codec::Pcmu),
        Format::new(Codec::TelephoneEvent16k),
        Format::new(Codec::TelephoneEvent8k),
    ]
}

/// The static payload type of a codec (RFC 3551), if it has one.
pub fn static_payload_type(codec: Codec) -> Option<u8> {
    match codec {
        Codec::Pcmu => Some(0),
        Codec::Pcma => Some(8),
        Codec::G722 => Some(9),
        Codec::ComfortNoise => Some(13),
        _ => None,
    }
}

/// The codec of a static payload type we know (RFC 3551).
fn static_codec(payload_type: u8) -> Option<Codec> {
    match payload_type {
        0 => Some(Codec::Pcmu),
        8 => Some(Codec::Pcma),
        9 => Some(Codec::G722),
        13 => Some(Codec::ComfortNoise),
        _ => None,
    }
}

fn is_amr(codec: Codec) -> bool {
    matches!(codec, Codec::Amr | Codec::AmrWb)
}

/// The rtpmap encoding name and channel count of a codec.
fn encoding_name(codec: Codec) -> (&'static str, Option<u8>) {
    match codec {
        Codec::Pcmu => ("PCMU", None),
        Codec::Pcma => ("PCMA", None),
        Codec::G722 => ("G722", None),
        Codec::Amr => ("AMR", None),
        Codec::AmrWb => ("AMR-WB", None),
        Codec::TelephoneEvent8k | Codec::TelephoneEvent16k => ("telephone-event", None),
        Codec::Opus => ("opus", Some(2)),
        Codec::H264 => ("H264", None),
        Codec::ComfortNoise => ("CN", None),
    }
}

/// The value of one `name=value` parameter of an fmtp line (names compared case-insensitively,
/// white space around parameters ignored, as terminals write `mode-set=0,2; octet-align=1`).
pub(crate) fn fmtp_param<'a>(fmtp: &'a str, name: &str) -> Option<&'a str> {
    fmtp.split(';').find_map(|param| {
        let (key, value) = param.split_once('=')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direction_rules() {
        assert_eq!(Direction::SendOnly.reversed(), Direction::RecvOnly);
        assert_eq!(Direction::Inactive.reversed(), Direction::Inactive);
        assert_eq!(Direction::SendRecv.intersect(Direction::RecvOnly), Direction::RecvOnly);
        assert_eq!(Direction::from_attribute("SENDONLY"), Some(Direction::SendOnly));
        assert_eq!(Direction::from_attribute("rtcp-mux"), None);
    }

    #[test]
    fn amr_packing_is_part_of_the_format() {
        let octet = Format::from_sdp(96, Some(("AMR-WB", 16000)), Some("mode-set=0,1,2; octet-align=1")).unwrap();
        let efficient = Format::from_sdp(97, Some(("AMR-WB", 16000)), Some("mode-set=0,1,2")).unwrap();
        assert!(octet.octet_align);
        assert!(!efficient.octet_align);
        assert!(!octet.matches(&efficient));
        assert!(octet.matches(&Format::new(Codec::AmrWb)));
        assert!(efficient.matches(&Format::bandwidth_efficient(Codec::AmrWb)));
        assert_eq!(Format::from_sdp(8, None, None).unwrap().codec, Codec::Pcma);
        assert_eq!(Format::from_sdp(96, None, None), None);
        assert_eq!(Format::new(Codec::Opus).rtpmap(), "opus/48000/2");
        assert_eq!(Format::new(Codec::TelephoneEvent16k).rtpmap(), "telephone-event/16000");
    }
}
