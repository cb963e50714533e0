//! RTP fixed-header view and in-place header rewrite (RFC 3550 section 5.1).
//!
//! This is the relay's per-packet path: [`RtpView::parse`] validates a received datagram once,
//! without copying or allocating, and the `set_*` functions rewrite header fields directly in the
//! receive buffer before fan-out. Nothing here allocates, logs or panics, whatever the input.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |V=2|P|X|  CC   |M|     PT      |       sequence number         |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                           timestamp                           |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |           synchronization source (SSRC) identifier            |
//! +=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+
//! |            contributing source (CSRC) identifiers             |
//! |                             ....                              |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```

/// Length of the RTP fixed header, before any CSRC or header extension.
pub const FIXED_HEADER_LEN: usize = 12;

/// The only RTP version this crate speaks (RFC 3550).
pub const VERSION: u8 = 2;

/// Length of one CSRC identifier and of the header-extension header (RFC 3550 5.3.1).
const WORD_LEN: usize = 4;

const PADDING_BIT: u8 = 0x20;
const EXTENSION_BIT: u8 = 0x10;
const CSRC_COUNT_MASK: u8 = 0x0f;
const MARKER_BIT: u8 = 0x80;
const PAYLOAD_TYPE_MASK: u8 = 0x7f;

/// Why a datagram is not a well-formed RTP packet (malformed input: drop and count).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RtpError {
    /// Fewer bytes than the 12-byte fixed header.
    #[error("RTP packet shorter than the fixed header")]
    TooShort,
    /// The version field is not 2.
    #[error("RTP version is not 2")]
    BadVersion,
    /// The CSRC count points past the end of the packet.
    #[error("RTP CSRC list runs past the end of the packet")]
    CsrcOverrun,
    /// The header extension (or its 4-byte header) runs past the end of the packet.
    #[error("RTP header extension runs past the end of the packet")]
    ExtensionOverrun,
    /// The padding count is zero or larger than the bytes after the header.
    #[error("RTP padding count is zero or exceeds the packet")]
    BadPadding,
}

/// A validated, zero-copy view of one RTP packet in a receive buffer.
///
/// Construct it with [`RtpView::parse`]; every accessor is then infallible and cheap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpView<'a> {
    buf: &'a [u8],
    fixed: &'a [u8; FIXED_HEADER_LEN],
    csrc_end: usize,
    header_len: usize,
    payload_end: usize,
}

impl<'a> RtpView<'a> {
    /// Validates `buf` as one RTP packet: version 2, CSRC list and header extension inside the
    /// packet, and, when the P bit is set, a padding count between 1 and the number of bytes after
    /// the header. An empty payload is allowed.
    pub fn parse(buf: &'a [u8]) -> Result<Self, RtpError> {
        let fixed = buf.first_chunk::<FIXED_HEADER_LEN>().ok_or(RtpError::TooShort)?;
        if fixed[0] >> 6 != VERSION {
            return Err(RtpError::BadVersion);
        }

        let csrc_count = usize::from(fixed[0] & CSRC_COUNT_MASK);
        let csrc_end = FIXED_HEADER_LEN + WORD_LEN * csrc_count;
        if buf.len() < csrc_end {
            return Err(RtpError::CsrcOverrun);
        }

        let header_len = if fixed[0] & EXTENSION_BIT != 0 {
            let extension_header = array_at::<WORD_LEN>(buf, csrc_end).ok_or(RtpError::ExtensionOverrun)?;
            let words = u16::from_be_bytes([extension_header[2], extension_header[3]]);
            let header_len = csrc_end + WORD_LEN + WORD_LEN * usize::from(words);
            if buf.len() < header_len {
                return Err(RtpError::ExtensionOverrun);
            }
            header_len
        } else {
            csrc_end
        };

        let payload_end = if fixed[0] & PADDING_BIT != 0 {
            let after_header = buf.len() - header_len;
            let padding = usize::from(buf.last().copied().unwrap_or(0));
            if padding == 0 || padding > after_header {
                return Err(RtpError::BadPadding);
            }
            buf.len() - padding
        } else {
            buf.len()
        };

        Ok(Self {
            buf,
            fixed,
            csrc_end,
            header_len,
            payload_end,
        })
    }

    /// The version field (always 2 for a parsed view).
    #[must_use]
    pub fn version(&self) -> u8 {
        self.fixed[0] >> 6
    }

    /// Whether the P bit is set (the packet ends with padding).
    #[must_use]
    pub fn padding(&self) -> bool {
        self.fixed[0] & PADDING_BIT != 0
    }

    /// Whether the X bit is set (a header extension follows the CSRC list).
    #[must_use]
    pub fn extension(&self) -> bool {
        self.fixed[0] & EXTENSION_BIT != 0
    }

    /// Number of CSRC identifiers (0..=15).
    #[must_use]
    pub fn csrc_count(&self) -> u8 {
        self.fixed[0] & CSRC_COUNT_MASK
    }

    /// The marker bit.
    #[must_use]
    pub fn marker(&self) -> bool {
        self.fixed[1] & MARKER_BIT != 0
    }

    /// The 7-bit payload type.
    #[must_use]
    pub fn payload_type(&self) -> u8 {
        self.fixed[1] & PAYLOAD_TYPE_MASK
    }

    /// The 16-bit sequence number.
    #[must_use]
    pub fn sequence(&self) -> u16 {
        u16::from_be_bytes([self.fixed[2], self.fixed[3]])
    }

    /// The 32-bit media timestamp.
    #[must_use]
    pub fn timestamp(&self) -> u32 {
        u32::from_be_bytes([self.fixed[4], self.fixed[5], self.fixed[6], self.fixed[7]])
    }

    /// The synchronization source identifier.
    #[must_use]
    pub fn ssrc(&self) -> u32 {
        u32::from_be_bytes([self.fixed[8], self.fixed[9], self.fixed[10], self.fixed[11]])
    }

    /// The CSRC identifier at `index`, or `None` past [`csrc_count`](Self::csrc_count).
    #[must_use]
    pub fn csrc(&self, index: usize) -> Option<u32> {
        let offset = index.checked_mul(WORD_LEN)?;
        array_at::<WORD_LEN>(self.csrc_bytes(), offset).map(|bytes| u32::from_be_bytes(*bytes))
    }

    /// The CSRC identifiers in order.
    pub fn csrcs(&self) -> impl Iterator<Item = u32> + 'a {
        self.csrc_bytes()
            .chunks_exact(WORD_LEN)
            .filter_map(|chunk| chunk.first_chunk::<WORD_LEN>())
            .map(|bytes| u32::from_be_bytes(*bytes))
    }

    /// The raw CSRC list (`4 * csrc_count` bytes).
    #[must_use]
    pub fn csrc_bytes(&self) -> &'a [u8] {
        self.buf.get(FIXED_HEADER_LEN..self.csrc_end).unwrap_or_default()
    }

    /// The header extension's profile-defined 16-bit identifier, when the X bit is set.
    #[must_use]
    pub fn extension_profile(&self) -> Option<u16> {
        if !self.extension() {
            return None;
        }
        array_at::<WORD_LEN>(self.buf, self.csrc_end).map(|header| u16::from_be_bytes([header[0], header[1]]))
    }

    /// The header extension's data after its 4-byte header, when the X bit is set.
    #[must_use]
    pub fn extension_data(&self) -> Option<&'a [u8]> {
        if !self.extension() {
            return None;
        }
        self.buf.get(self.csrc_end + WORD_LEN..self.header_len)
    }

    /// Length of the whole header: 12 + 4 * CSRC count + the extension including its header.
    #[must_use]
    pub fn header_len(&self) -> usize {
        self.header_len
    }

    /// Offset just past the CSRC list, where the header extension (or else the payload) begins.
    #[must_use]
    pub fn csrc_end(&self) -> usize {
        self.csrc_end
    }

    /// The payload, without header and without padding; may be empty.
    #[must_use]
    pub fn payload(&self) -> &'a [u8] {
        self.buf.get(self.header_len..self.payload_end).unwrap_or_default()
    }

    /// Number of padding bytes at the end, including the count byte itself (0 without P bit).
    #[must_use]
    pub fn padding_len(&self) -> usize {
        self.buf.len() - self.payload_end
    }

    /// The whole packet as received.
    #[must_use]
    pub fn as_bytes(&self) -> &'a [u8] {
        self.buf
    }
}

/// Whether a datagram on an rtcp-mux port is RTCP rather than RTP (RFC 5761 section 4): its
/// second byte, RTCP's packet type, lies in 192..=223. Shorter than two bytes means not RTCP.
#[must_use]
pub fn is_rtcp(buf: &[u8]) -> bool {
    matches!(buf.get(1), Some(192..=223))
}

/// Rewrites the sequence number in place. Fails only if `packet` is shorter than the fixed header.
pub fn set_sequence(packet: &mut [u8], sequence: u16) -> Result<(), RtpError> {
    let fixed = fixed_header_mut(packet)?;
    let [high, low] = sequence.to_be_bytes();
    fixed[2] = high;
    fixed[3] = low;
    Ok(())
}

/// Rewrites the timestamp in place. Fails only if `packet` is shorter than the fixed header.
pub fn set_timestamp(packet: &mut [u8], timestamp: u32) -> Result<(), RtpError> {
    let fixed = fixed_header_mut(packet)?;
    let [b0, b1, b2, b3] = timestamp.to_be_bytes();
    fixed[4] = b0;
    fixed[5] = b1;
    fixed[6] = b2;
    fixed[7] = b3;
    Ok(())
}

/// Rewrites the SSRC in place. Fails only if `packet` is shorter than the fixed header.
pub fn set_ssrc(packet: &mut [u8], ssrc: u32) -> Result<(), RtpError> {
    let fixed = fixed_header_mut(packet)?;
    let [b0, b1, b2, b3] = ssrc.to_be_bytes();
    fixed[8] = b0;
    fixed[9] = b1;
    fixed[10] = b2;
    fixed[11] = b3;
    Ok(())
}

/// Sets or clears the marker bit in place, keeping the payload type.
/// Fails only if `packet` is shorter than the fixed header.
pub fn set_marker(packet: &mut [u8], marker: bool) -> Result<(), RtpError> {
    let fixed = fixed_header_mut(packet)?;
    if marker {
        fixed[1] |= MARKER_BIT;
    } else {
        fixed[1] &= !MARKER_BIT;
    }
    Ok(())
}

/// Rewrites the payload type in place, keeping the marker bit; only the low 7 bits of
/// `payload_type` are used. Fails only if `packet` is shorter than the fixed header.
pub fn set_payload_type(packet: &mut [u8], payload_type: u8) -> Result<(), RtpError> {
    let fixed = fixed_header_mut(packet)?;
    fixed[1] = (fixed[1] & MARKER_BIT) | (payload_type & PAYLOAD_TYPE_MASK);
    Ok(())
}

fn fixed_header_mut(packet: &mut [u8]) -> Result<&mut [u8; FIXED_HEADER_LEN], RtpError> {
    packet.first_chunk_mut::<FIXED_HEADER_LEN>().ok_or(RtpError::TooShort)
}

/// `N` bytes of `buf` starting at `offset`, if they are all there.
fn array_at<const N: usize>(buf: &[u8], offset: usize) -> Option<&[u8; N]> {
    buf.get(offset..)?.first_chunk::<N>()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use bytes::Bytes;
    use proptest::prelude::*;
    use rtp::extension::HeaderExtension;
    use rtp::header::Extension;

    use super::*;

    /// V=2, no P/X, CC=0, M=1, PT=96, seq=0x1234, ts=0xdeadbeef, ssrc=0x01020304.
    const BASIC: [u8; 12] = [0x80, 0xe0, 0x12, 0x34, 0xde, 0xad, 0xbe, 0xef, 0x01, 0x02, 0x03, 0x04];

    fn with(header: &[u8], tail: &[u8]) -> Vec<u8> {
        let mut packet = header.to_vec();
        packet.extend_from_slice(tail);
        packet
    }

    #[test]
    fn parses_basic_header() {
        let packet = with(&BASIC, b"voice");
        let view = RtpView::parse(&packet).unwrap();
        assert_eq!(view.version(), 2);
        assert!(!view.padding());
        assert!(!view.extension());
        assert_eq!(view.csrc_count(), 0);
        assert!(view.marker());
        assert_eq!(view.payload_type(), 96);
        assert_eq!(view.sequence(), 0x1234);
        assert_eq!(view.timestamp(), 0xdead_beef);
        assert_eq!(view.ssrc(), 0x0102_0304);
        assert_eq!(view.csrc(0), None);
        assert!(view.csrc_bytes().is_empty());
        assert_eq!(view.header_len(), 12);
        assert_eq!(view.csrc_end(), 12);
        assert_eq!(view.payload(), b"voice");
        assert_eq!(view.padding_len(), 0);
        assert_eq!(view.extension_profile(), None);
        assert_eq!(view.extension_data(), None);
        assert_eq!(view.as_bytes(), &packet[..]);
    }

    #[test]
    fn parses_csrcs_extension_and_padding() {
        let mut header = BASIC;
        header[0] = 0x80 | PADDING_BIT | EXTENSION_BIT | 2;
        let mut packet = header.to_vec();
        packet.extend_from_slice(&[0, 0, 0, 7, 0, 0, 0, 9]); // two CSRCs
        packet.extend_from_slice(&[0xbe, 0xde, 0, 1, 0x10, 0xaa, 0, 0]); // 1-word extension
        packet.extend_from_slice(b"ab"); // payload
        packet.extend_from_slice(&[0, 0, 3]); // padding
        let view = RtpView::parse(&packet).unwrap();
        assert_eq!(view.csrc_count(), 2);
        assert_eq!(view.csrc(0), Some(7));
        assert_eq!(view.csrc(1), Some(9));
        assert_eq!(view.csrc(2), None);
        assert_eq!(view.csrc(usize::MAX), None);
        assert_eq!(view.csrcs().collect::<Vec<_>>(), [7, 9]);
        assert_eq!(view.csrc_bytes(), &[0, 0, 0, 7, 0, 0, 0, 9]);
        assert_eq!(view.csrc_end(), 20);
        assert_eq!(view.header_len(), 28);
        assert_eq!(view.extension_profile(), Some(0xbede));
        assert_eq!(view.extension_data(), Some(&[0x10, 0xaa, 0, 0][..]));
        assert_eq!(view.payload(), b"ab");
        assert_eq!(view.padding_len(), 3);
    }

    #[test]
    fn allows_empty_payload_after_padding() {
        let mut packet = with(&BASIC, &[0, 0, 0, 4]);
        packet[0] |= PADDING_BIT;
        let view = RtpView::parse(&packet).unwrap();
        assert!(view.payload().is_empty());
        assert_eq!(view.padding_len(), 4);
        assert!(RtpView::parse(&BASIC).unwrap().payload().is_empty());
    }

    #[test]
    fn rejects_short_packets() {
        assert_eq!(RtpView::parse(&[]), Err(RtpError::TooShort));
        assert_eq!(RtpView::parse(&BASIC[..11]), Err(RtpError::TooShort));
    }

    #[test]
    fn rejects_other_versions() {
        for version in [0u8, 1, 3] {
            let mut packet = BASIC;
            packet[0] = (packet[0] & 0x3f) | (version << 6);
            assert_eq!(RtpView::parse(&packet), Err(RtpError::BadVersion));
        }
    }

    #[test]
    fn rejects_csrc_overrun() {
        let mut packet = with(&BASIC, &[0; 7]);
        packet[0] |= 2; // needs 8 bytes of CSRCs, 7 present
        assert_eq!(RtpView::parse(&packet), Err(RtpError::CsrcOverrun));
        packet[0] = 0x80 | 15;
        assert_eq!(RtpView::parse(&packet), Err(RtpError::CsrcOverrun));
    }

    #[test]
    fn rejects_extension_overrun() {
        // The extension's own 4-byte header is cut.
        let mut packet = with(&BASIC, &[0xbe, 0xde, 0]);
        packet[0] |= EXTENSION_BIT;
        assert_eq!(RtpView::parse(&packet), Err(RtpError::ExtensionOverrun));
        // The header claims 2 words, 1 present.
        let mut packet = with(&BASIC, &[0xbe, 0xde, 0, 2, 1, 2, 3, 4]);
        packet[0] |= EXTENSION_BIT;
        assert_eq!(RtpView::parse(&packet), Err(RtpError::ExtensionOverrun));
        // The largest length cannot overflow anything.
        let mut packet = with(&BASIC, &[0xbe, 0xde, 0xff, 0xff]);
        packet[0] |= EXTENSION_BIT;
        assert_eq!(RtpView::parse(&packet), Err(RtpError::ExtensionOverrun));
    }

    #[test]
    fn rejects_padding_lies() {
        // Pad count zero.
        let mut packet = with(&BASIC, &[1, 2, 0]);
        packet[0] |= PADDING_BIT;
        assert_eq!(RtpView::parse(&packet), Err(RtpError::BadPadding));
        // Pad count larger than what follows the header.
        let mut packet = with(&BASIC, &[1, 2, 4]);
        packet[0] |= PADDING_BIT;
        assert_eq!(RtpView::parse(&packet), Err(RtpError::BadPadding));
        // Padding that would eat into the header extension.
        let mut packet = with(&BASIC, &[0x10, 0, 0, 0, 5]);
        packet[0] |= PADDING_BIT | EXTENSION_BIT;
        assert_eq!(RtpView::parse(&packet), Err(RtpError::BadPadding));
        // P bit on a header-only packet: the count byte would be inside the header.
        let mut packet = BASIC;
        packet[0] |= PADDING_BIT;
        assert_eq!(RtpView::parse(&packet), Err(RtpError::BadPadding));
    }

    #[test]
    fn demultiplexes_rtcp() {
        assert!(is_rtcp(&[0x80, 200, 0, 6]));
        assert!(is_rtcp(&[0x81, 192]));
        assert!(is_rtcp(&[0x81, 223]));
        assert!(!is_rtcp(&[0x80, 191]));
        assert!(!is_rtcp(&[0x80, 224]));
        assert!(!is_rtcp(&BASIC)); // PT 96 with marker = 224
        assert!(!is_rtcp(&[0x80, 0x00]));
        assert!(!is_rtcp(&[0x80]));
        assert!(!is_rtcp(&[]));
    }

    #[test]
    fn rewrites_in_place() {
        let mut packet = with(&BASIC, b"xy");
        set_sequence(&mut packet, 0xfffe).unwrap();
        set_timestamp(&mut packet, 7).unwrap();
        set_ssrc(&mut packet, 0xcafe_f00d).unwrap();
        set_marker(&mut packet, false).unwrap();
        set_payload_type(&mut packet, 0xff).unwrap();
        let view = RtpView::parse(&packet).unwrap();
        assert_eq!(view.sequence(), 0xfffe);
        assert_eq!(view.timestamp(), 7);
        assert_eq!(view.ssrc(), 0xcafe_f00d);
        assert!(!view.marker());
        assert_eq!(view.payload_type(), 0x7f);
        assert_eq!(view.payload(), b"xy");

        set_payload_type(&mut packet, 8).unwrap();
        set_marker(&mut packet, true).unwrap();
        let view = RtpView::parse(&packet).unwrap();
        assert!(view.marker());
        assert_eq!(view.payload_type(), 8);
        assert_eq!(packet[0], 0x80);
    }

    #[test]
    fn mutators_refuse_short_buffers() {
        let mut short = [0x80u8; 11];
        assert_eq!(set_sequence(&mut short, 1), Err(RtpError::TooShort));
        assert_eq!(set_timestamp(&mut short, 1), Err(RtpError::TooShort));
        assert_eq!(set_ssrc(&mut short, 1), Err(RtpError::TooShort));
        assert_eq!(set_marker(&mut short, true), Err(RtpError::TooShort));
        assert_eq!(set_payload_type(&mut short, 1), Err(RtpError::TooShort));
        assert_eq!(short, [0x80; 11]);
    }

    #[test]
    fn errors_display() {
        assert_eq!(
            RtpError::BadPadding.to_string(),
            "RTP padding count is zero or exceeds the packet"
        );
    }

    /// Touches every accessor and checks the layout invariants of an accepted packet.
    fn check_view(view: &RtpView<'_>) {
        let len = view.as_bytes().len();
        assert!(view.csrc_end() <= view.header_len());
        assert_eq!(view.header_len() + view.payload().len() + view.padding_len(), len);
        assert_eq!(view.csrc_bytes().len(), 4 * usize::from(view.csrc_count()));
        assert_eq!(view.csrcs().count(), usize::from(view.csrc_count()));
        for index in 0..16 {
            assert_eq!(view.csrc(index).is_some(), index < usize::from(view.csrc_count()));
        }
        assert_eq!(view.extension_profile().is_some(), view.extension());
        assert_eq!(view.extension_data().is_some(), view.extension());
        assert_eq!(view.padding(), view.padding_len() > 0);
        let _ = (view.marker(), view.payload_type(), view.sequence());
        let _ = (view.timestamp(), view.ssrc(), view.version());
    }

    /// Bytes that often start like RTP, so parsing gets past the version check.
    fn rtp_like() -> impl Strategy<Value = Vec<u8>> {
        (
            prop_oneof![any::<u8>(), 0x80u8..=0xbf],
            proptest::collection::vec(any::<u8>(), 0..120),
        )
            .prop_map(|(first, rest)| with(&[first], &rest))
    }

    /// Marshals a webrtc-rs value through the `Box<dyn Marshal>` that `HeaderExtension::Custom`
    /// holds: rtp 0.12 does not re-export webrtc-util's `Marshal` trait, and this avoids a
    /// dev-dependency on webrtc-util just to name it.
    fn webrtc_marshal(boxed: HeaderExtension) -> Bytes {
        match boxed {
            HeaderExtension::Custom { extension, .. } => extension.marshal().unwrap(),
            _ => unreachable!("always built as Custom"),
        }
    }

    /// One webrtc-rs header extension setup: (profile, extensions).
    fn extensions() -> impl Strategy<Value = (u16, Vec<Extension>)> {
        fn payload(range: impl Into<proptest::collection::SizeRange>) -> impl Strategy<Value = Bytes> {
            proptest::collection::vec(any::<u8>(), range).prop_map(Bytes::from)
        }
        prop_oneof![
            // RFC 8285 one-byte form.
            proptest::collection::vec((1u8..15, payload(1..=16)), 0..4).prop_map(|list| (0xbede, list)),
            // RFC 8285 two-byte form.
            proptest::collection::vec((1u8..=255, payload(0..=20)), 0..4).prop_map(|list| (0x1000, list)),
            // Plain RFC 3550 extension: one opaque body in whole words.
            (
                any::<u16>().prop_filter("not RFC 8285", |p| *p != 0xbede && *p != 0x1000),
                (0usize..8).prop_flat_map(|words| payload(words * 4..=words * 4)),
            )
                .prop_map(|(profile, body)| (profile, vec![(0, body)])),
        ]
        .prop_map(|(profile, list)| {
            let list = list
                .into_iter()
                .map(|(id, payload)| Extension { id, payload })
                .collect();
            (profile, list)
        })
    }

    proptest! {
        #[test]
        fn parse_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(view) = RtpView::parse(&buf) {
                check_view(&view);
            }
            let _ = is_rtcp(&buf);
        }

        #[test]
        fn parse_never_panics_on_rtp_like_bytes(buf in rtp_like()) {
            if let Ok(view) = RtpView::parse(&buf) {
                check_view(&view);
            }
        }

        #[test]
        fn mutators_never_panic_and_touch_only_their_field(
            mut buf in proptest::collection::vec(any::<u8>(), 0..20),
            value in any::<u32>(),
        ) {
            let before = buf.clone();
            let ok = set_ssrc(&mut buf, value).is_ok();
            prop_assert_eq!(ok, before.len() >= FIXED_HEADER_LEN);
            let _ = set_sequence(&mut buf, value as u16);
            let _ = set_timestamp(&mut buf, value);
            let _ = set_marker(&mut buf, value & 1 == 1);
            let _ = set_payload_type(&mut buf, value as u8);
            if ok {
                prop_assert_eq!(buf[0], before[0]);
                prop_assert_eq!(&buf[12..], &before[12..]);
            } else {
                prop_assert_eq!(buf, before);
            }
        }

        /// Packets marshalled by webrtc-rs `rtp` are parsed to the same fields.
        #[test]
        fn agrees_with_webrtc_rs(
            marker in any::<bool>(),
            payload_type in 0u8..128,
            sequence in any::<u16>(),
            timestamp in any::<u32>(),
            ssrc in any::<u32>(),
            csrc in proptest::collection::vec(any::<u32>(), 0..=15),
            extension in proptest::option::of(extensions()),
            padding in any::<bool>(),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let (extension_profile, extensions) = extension.clone().unwrap_or_default();
            let packet = rtp::packet::Packet {
                header: rtp::header::Header {
                    version: 2,
                    padding,
                    extension: extension.is_some(),
                    marker,
                    payload_type,
                    sequence_number: sequence,
                    timestamp,
                    ssrc,
                    csrc: csrc.clone(),
                    extension_profile,
                    extensions,
                    extensions_padding: 0,
                },
                payload: Bytes::from(payload.clone()),
            };
            let header_len = webrtc_marshal(HeaderExtension::Custom {
                uri: "".into(),
                extension: Box::new(packet.header.clone()),
            })
            .len();
            let wire = webrtc_marshal(HeaderExtension::Custom {
                uri: "".into(),
                extension: Box::new(packet),
            });
            let view = RtpView::parse(&wire).unwrap();
            check_view(&view);
            prop_assert_eq!(view.version(), 2);
            prop_assert_eq!(view.padding(), padding);
            prop_assert_eq!(view.extension(), extension.is_some());
            prop_assert_eq!(usize::from(view.csrc_count()), csrc.len());
            prop_assert_eq!(view.marker(), marker);
            prop_assert_eq!(view.payload_type(), payload_type);
            prop_assert_eq!(view.sequence(), sequence);
            prop_assert_eq!(view.timestamp(), timestamp);
            prop_assert_eq!(view.ssrc(), ssrc);
            prop_assert_eq!(view.csrcs().collect::<Vec<_>>(), csrc);
            prop_assert_eq!(view.header_len(), header_len);
            prop_assert_eq!(view.payload(), &payload[..]);
            if extension.is_some() {
                prop_assert_eq!(view.extension_profile(), Some(extension_profile));
            }
        }
    }
}
