//! Codecs the engine knows by name, and per-leg payload-type maps.
//!
//! Legs of one bridge may number the same codec differently (dynamic payload types negotiated
//! separately on each leg). The engine maps an incoming payload type to a [`Codec`] through the
//! talker leg's map and back to each listener's number through the listener's map: two table
//! lookups per packet, no search.

/// A codec, as negotiated in SDP (`a=rtpmap`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
#[non_exhaustive]
pub enum Codec {
    /// G.711 µ-law, 8 kHz.
    Pcmu = 0,
    /// G.711 A-law, 8 kHz.
    Pcma = 1,
    /// G.722, 8 kHz RTP clock.
    G722 = 2,
    /// AMR narrowband, 8 kHz.
    Amr = 3,
    /// AMR wideband, 16 kHz.
    AmrWb = 4,
    /// RFC 4733 telephone events at 8 kHz.
    TelephoneEvent8k = 5,
    /// RFC 4733 telephone events at 16 kHz.
    TelephoneEvent16k = 6,
    /// Opus, 48 kHz.
    Opus = 7,
    /// H.264 video, 90 kHz.
    H264 = 8,
    /// Comfort noise (RFC 3389), 8 kHz.
    ComfortNoise = 9,
}

/// Number of [`Codec`] variants (size of the reverse maps).
pub const CODEC_COUNT: usize = 10;

const NONE: u8 = u8::MAX;

impl Codec {
    /// The codec for an SDP encoding name and clock rate, if the engine knows it.
    pub fn from_rtpmap(name: &str, clock_rate: u32) -> Option<Codec> {
        // Compared case-insensitively in place: this runs for every format of every offer, so no
        // uppercased copy of the name is allocated.
        const NAMES: [(&str, u32, Codec); 10] = [
            ("PCMU", 8000, Codec::Pcmu),
            ("PCMA", 8000, Codec::Pcma),
            ("G722", 8000, Codec::G722),
            ("AMR", 8000, Codec::Amr),
            ("AMR-WB", 16000, Codec::AmrWb),
            ("TELEPHONE-EVENT", 8000, Codec::TelephoneEvent8k),
            ("TELEPHONE-EVENT", 16000, Codec::TelephoneEvent16k),
            ("OPUS", 48000, Codec::Opus),
            ("H264", 90000, Codec::H264),
            ("CN", 8000, Codec::ComfortNoise),
        ];
        NAMES
            .iter()
            .find(|(known, rate, _)| *rate == clock_rate && known.eq_ignore_ascii_case(name))
            .map(|&(_, _, codec)| codec)
    }

    /// The RTP clock rate of this codec.
    pub fn clock_rate(self) -> u32 {
        match self {
            Codec::Pcmu | Codec::Pcma | Codec::G722 | Codec::Amr => 8000,
            Codec::TelephoneEvent8k | Codec::ComfortNoise => 8000,
            Codec::AmrWb | Codec::TelephoneEvent16k => 16000,
            Codec::Opus => 48000,
            Codec::H264 => 90000,
        }
    }

    fn from_index(index: u8) -> Option<Codec> {
        Some(match index {
            0 => Codec::Pcmu,
            1 => Codec::Pcma,
            2 => Codec::G722,
            3 => Codec::Amr,
            4 => Codec::AmrWb,
            5 => Codec::TelephoneEvent8k,
            6 => Codec::TelephoneEvent16k,
            7 => Codec::Opus,
            8 => Codec::H264,
            9 => Codec::ComfortNoise,
            _ => return None,
        })
    }
}

/// A leg's negotiated payload types, both directions, as fixed tables (138 bytes).
#[derive(Clone)]
pub struct PayloadMap {
    /// Payload type -> codec index (`NONE`: not negotiated).
    to_codec: [u8; 128],
    /// Codec index -> payload type (`NONE`: not negotiated).
    to_pt: [u8; CODEC_COUNT],
    /// No types negotiated: payload types pass through unchanged.
    transparent: bool,
}

impl std::fmt::Debug for PayloadMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut list = f.debug_map();
        for (pt, &codec) in self.to_codec.iter().enumerate() {
            if let Some(codec) = Codec::from_index(codec) {
                list.entry(&pt, &codec);
            }
        }
        list.finish()
    }
}

impl Default for PayloadMap {
    fn default() -> Self {
        Self::transparent()
    }
}

impl PayloadMap {
    /// A map that passes every payload type through unchanged.
    pub fn transparent() -> Self {
        Self {
            to_codec: [NONE; 128],
            to_pt: [NONE; CODEC_COUNT],
            transparent: true,
        }
    }

    /// A map from negotiated `(payload type, codec)` pairs. Payload types above 127 are ignored;
    /// the first number given for a codec is the one sent. An empty list is transparent.
    pub fn new(types: &[(u8, Codec)]) -> Self {
        let mut map = Self {
            to_codec: [NONE; 128],
            to_pt: [NONE; CODEC_COUNT],
            transparent: types.is_empty(),
        };
        for &(pt, codec) in types {
            if let Some(slot) = map.to_codec.get_mut(usize::from(pt)) {
                *slot = codec as u8;
                if map.to_pt[codec as usize] == NONE {
                    map.to_pt[codec as usize] = pt;
                }
            }
        }
        map
    }

    /// Whether payload types pass through unchanged.
    pub fn is_transparent(&self) -> bool {
        self.transparent
    }

    /// The codec an incoming payload type stands for (`None`: not negotiated on this leg).
    #[inline]
    pub fn codec(&self, pt: u8) -> Option<Codec> {
        Codec::from_index(*self.to_codec.get(usize::from(pt))?)
    }

    /// The payload type this leg uses for `codec` (`None`: not negotiated on this leg).
    #[inline]
    pub fn payload_type(&self, codec: Codec) -> Option<u8> {
        match self.to_pt[codec as usize] {
            NONE => None,
            pt => Some(pt),
        }
    }

    /// Maps a payload type received on `from` to the number this leg uses. `None`: drop the
    /// packet for this leg (codec not negotiated here).
    #[inline]
    pub fn translate(&self, from: &PayloadMap, pt: u8) -> Option<u8> {
        if from.transparent || self.transparent {
            return Some(pt);
        }
        self.payload_type(from.codec(pt)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translates_dynamic_numbers() {
        let talker = PayloadMap::new(&[(96, Codec::AmrWb), (101, Codec::TelephoneEvent16k), (8, Codec::Pcma)]);
        let listener = PayloadMap::new(&[(104, Codec::AmrWb), (8, Codec::Pcma)]);
        assert_eq!(listener.translate(&talker, 96), Some(104));
        assert_eq!(listener.translate(&talker, 8), Some(8));
        assert_eq!(listener.translate(&talker, 101), None);
        assert_eq!(listener.translate(&talker, 97), None);
        assert_eq!(PayloadMap::transparent().translate(&talker, 97), Some(97));
        assert_eq!(listener.translate(&PayloadMap::transparent(), 55), Some(55));
    }

    #[test]
    fn rtpmap_names() {
        assert_eq!(Codec::from_rtpmap("amr-wb", 16000), Some(Codec::AmrWb));
        assert_eq!(Codec::from_rtpmap("AMR-WB", 8000), None);
        assert_eq!(
            Codec::from_rtpmap("Telephone-Event", 16000),
            Some(Codec::TelephoneEvent16k)
        );
        assert_eq!(
            Codec::from_rtpmap("telephone-event", 8000),
            Some(Codec::TelephoneEvent8k)
        );
        assert_eq!(Codec::from_rtpmap("opus", 48000), Some(Codec::Opus));
        assert_eq!(Codec::from_rtpmap("pcmu", 8000), Some(Codec::Pcmu));
        assert_eq!(Codec::from_rtpmap("PCMUX", 8000), None);
        assert_eq!(Codec::from_rtpmap("PCM", 8000), None);
        assert_eq!(Codec::from_rtpmap("", 8000), None);
        for index in 0..CODEC_COUNT as u8 {
            let codec = Codec::from_index(index).unwrap();
            assert_eq!(codec as u8, index);
        }
    }
}
