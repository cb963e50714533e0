//! RTCP wire codecs and receiver statistics (RFC 3550 sections 6 and appendix A).
//!
//! * Parsing: [`validate_compound`] checks a received compound packet (appendix A.2), then
//!   [`RtcpIter`] walks its packets and [`SenderReport`], [`ReceiverReport`], [`Sdes`] and
//!   [`Bye`] read them, all as zero-copy views.
//! * Building: the `write_*` functions serialize one packet into a caller's buffer and return
//!   its length; a compound packet is built by calling them on successive sub-slices.
//! * Statistics: [`ReceiverStats`] tracks one incoming stream (appendix A.1, A.3, A.8) and
//!   produces the [`ReportBlock`] to send back.
//! * Time: NTP timestamp helpers and the round-trip computation of section 6.4.1.
//!
//! Nothing here allocates, logs or panics, whatever the input.

use std::iter::FusedIterator;
use std::slice::ChunksExact;

/// The only RTCP version this crate speaks (RFC 3550).
pub const VERSION: u8 = 2;

/// Length of the common RTCP header (V/P/count, packet type, length).
pub const HEADER_LEN: usize = 4;

/// Length of one report block on the wire.
pub const REPORT_BLOCK_LEN: usize = 24;

/// Largest value of the 5-bit count field (report blocks, SDES chunks, BYE sources).
pub const MAX_COUNT: usize = 31;

/// Seconds from the NTP epoch (1900-01-01) to the Unix epoch (1970-01-01).
pub const NTP_UNIX_OFFSET_SECONDS: u64 = 2_208_988_800;

/// RTCP packet type numbers (RFC 3550 section 12.1).
pub mod packet_type {
    /// Sender report (SR).
    pub const SENDER_REPORT: u8 = 200;
    /// Receiver report (RR).
    pub const RECEIVER_REPORT: u8 = 201;
    /// Source description (SDES).
    pub const SOURCE_DESCRIPTION: u8 = 202;
    /// Goodbye (BYE).
    pub const GOODBYE: u8 = 203;
    /// Application-defined (APP).
    pub const APPLICATION: u8 = 204;
}

/// SDES item type numbers (RFC 3550 section 6.5).
pub mod sdes_item {
    /// Ends the item list of a chunk.
    pub const END: u8 = 0;
    /// Canonical end-point identifier.
    pub const CNAME: u8 = 1;
}

/// Size of the sender-report body before its report blocks: sender SSRC and sender info.
const SENDER_REPORT_FIXED_LEN: usize = 24;
/// Size of the receiver-report body before its report blocks: the sender SSRC.
const RECEIVER_REPORT_FIXED_LEN: usize = 4;
const WORD_LEN: usize = 4;
const PADDING_BIT: u8 = 0x20;
const COUNT_MASK: u8 = 0x1f;
const MAX_LOST: i32 = 0x7f_ffff;
const MIN_LOST: i32 = -0x80_0000;

/// Why RTCP bytes were refused (malformed input, except the builder-only variants).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RtcpError {
    /// Fewer bytes than a header or the fixed part of the packet type needs.
    #[error("RTCP packet too short")]
    TooShort,
    /// The version field is not 2.
    #[error("RTCP version is not 2")]
    BadVersion,
    /// A length or count field disagrees with the bytes present.
    #[error("RTCP length or count disagrees with the packet size")]
    BadLength,
    /// The padding count is zero, exceeds the packet, or padding is set on a non-last packet.
    #[error("RTCP padding is invalid")]
    BadPadding,
    /// The compound packet does not start with a sender or receiver report.
    #[error("RTCP compound packet does not start with SR or RR")]
    NotCompound,
    /// A typed view was asked for a packet of another type.
    #[error("RTCP packet is not of the requested type")]
    WrongType,
    /// The output buffer cannot hold the packet being built.
    #[error("output buffer too small for the RTCP packet")]
    BufferTooSmall,
    /// A builder input exceeds its wire field (over 31 report blocks, CNAME over 255 bytes).
    #[error("value too large for its RTCP field")]
    TooLarge,
}

/// Validates a received compound RTCP packet per RFC 3550 appendix A.2.
///
/// Every packet must be version 2, lengths must add up to exactly `buf.len()`, the first packet
/// must be an SR or RR, and only the last packet may carry padding (whose count must be at least
/// 1 and fit in that packet). Unlike the appendix's mask check, a lone SR/RR (first and last at
/// once) may carry padding. Reduced-size RTCP (RFC 5506) is refused with `NotCompound`; walk such
/// packets with [`RtcpIter`] directly.
pub fn validate_compound(buf: &[u8]) -> Result<(), RtcpError> {
    let header = array_at::<HEADER_LEN>(buf, 0).ok_or(RtcpError::TooShort)?;
    if header[0] >> 6 != VERSION {
        return Err(RtcpError::BadVersion);
    }
    if !matches!(header[1], packet_type::SENDER_REPORT | packet_type::RECEIVER_REPORT) {
        return Err(RtcpError::NotCompound);
    }

    let mut rest = buf;
    while !rest.is_empty() {
        if rest.len() < HEADER_LEN {
            return Err(RtcpError::BadLength);
        }
        let (_, padded, next) = split_packet(rest)?;
        if padded && !next.is_empty() {
            return Err(RtcpError::BadPadding);
        }
        rest = next;
    }
    Ok(())
}

/// Validates `buf` with [`validate_compound`] and returns an iterator over its packets.
pub fn parse_compound(buf: &[u8]) -> Result<RtcpIter<'_>, RtcpError> {
    validate_compound(buf)?;
    Ok(RtcpIter::new(buf))
}

/// One RTCP packet of a compound: its header fields and its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtcpPacket<'a> {
    /// Packet type (200 SR, 201 RR, 202 SDES, 203 BYE, 204 APP, 205/206 feedback, ...).
    pub packet_type: u8,
    /// The 5-bit count field: report count, source count or feedback format.
    pub count: u8,
    /// The bytes after the 4-byte header, without padding.
    pub body: &'a [u8],
}

impl<'a> RtcpPacket<'a> {
    /// Parses the first packet of `buf` and returns it with the bytes that follow it.
    ///
    /// Checks version, length and padding of this packet only; use [`validate_compound`] for
    /// the rules that span a compound packet.
    pub fn parse(buf: &'a [u8]) -> Result<(Self, &'a [u8]), RtcpError> {
        split_packet(buf).map(|(packet, _, rest)| (packet, rest))
    }
}

/// Iterator over the packets of a compound RTCP packet.
///
/// Meant for a buffer that passed [`validate_compound`]; on malformed bytes it never panics but
/// simply ends at the first packet it cannot parse.
#[derive(Debug, Clone)]
pub struct RtcpIter<'a> {
    rest: &'a [u8],
}

impl<'a> RtcpIter<'a> {
    /// Starts iterating at the beginning of `buf`.
    #[must_use]
    pub fn new(buf: &'a [u8]) -> Self {
        Self { rest: buf }
    }
}

impl<'a> Iterator for RtcpIter<'a> {
    type Item = RtcpPacket<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        match split_packet(self.rest) {
            Ok((packet, _, rest)) => {
                self.rest = rest;
                Some(packet)
            }
            Err(_) => {
                self.rest = &[];
                None
            }
        }
    }
}

impl FusedIterator for RtcpIter<'_> {}

/// Splits the first packet off `buf`: (packet, padding bit, rest).
fn split_packet(buf: &[u8]) -> Result<(RtcpPacket<'_>, bool, &[u8]), RtcpError> {
    let header = array_at::<HEADER_LEN>(buf, 0).ok_or(RtcpError::TooShort)?;
    if header[0] >> 6 != VERSION {
        return Err(RtcpError::BadVersion);
    }
    let words = usize::from(u16::from_be_bytes([header[2], header[3]])) + 1;
    let length = words * WORD_LEN;
    let packet = buf.get(..length).ok_or(RtcpError::BadLength)?;
    let rest = buf.get(length..).unwrap_or_default();
    let mut body = packet.get(HEADER_LEN..).unwrap_or_default();

    let padded = header[0] & PADDING_BIT != 0;
    if padded {
        let padding = usize::from(body.last().copied().unwrap_or(0));
        if padding == 0 {
            return Err(RtcpError::BadPadding);
        }
        let kept = body.len().checked_sub(padding).ok_or(RtcpError::BadPadding)?;
        body = body.get(..kept).unwrap_or_default();
    }

    let packet = RtcpPacket {
        packet_type: header[1],
        count: header[0] & COUNT_MASK,
        body,
    };
    Ok((packet, padded, rest))
}

/// One reception report block (RFC 3550 section 6.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReportBlock {
    /// The source this block reports on.
    pub ssrc: u32,
    /// Fraction of packets lost since the previous report, in 1/256 units.
    pub fraction_lost: u8,
    /// Cumulative packets lost (24-bit signed on the wire; negative with duplicates).
    pub cumulative_lost: i32,
    /// Extended highest sequence number received (cycles in the high 16 bits).
    pub highest_seq: u32,
    /// Interarrival jitter in timestamp units.
    pub jitter: u32,
    /// Middle 32 bits of the NTP timestamp of the last SR from this source (0 if none).
    pub last_sr: u32,
    /// Delay since that SR arrived, in 1/65536 s (0 if none).
    pub delay_since_last_sr: u32,
}

impl ReportBlock {
    /// Decodes a block from its 24 wire bytes.
    #[must_use]
    pub fn decode(bytes: &[u8; REPORT_BLOCK_LEN]) -> Self {
        let word = |at: usize| {
            array_at::<WORD_LEN>(bytes, at)
                .map(|word| u32::from_be_bytes(*word))
                .unwrap_or(0)
        };
        Self {
            ssrc: word(0),
            fraction_lost: bytes[4],
            // The arithmetic shift sign-extends the 24-bit field.
            cumulative_lost: i32::from_be_bytes([bytes[5], bytes[6], bytes[7], 0]) >> 8,
            highest_seq: word(8),
            jitter: word(12),
            last_sr: word(16),
            delay_since_last_sr: word(20),
        }
    }

    /// Encodes the block into its 24 wire bytes; `cumulative_lost` is clamped to 24 bits.
    #[must_use]
    pub fn encode(&self) -> [u8; REPORT_BLOCK_LEN] {
        let lost = self.cumulative_lost.clamp(MIN_LOST, MAX_LOST).to_be_bytes();
        let words = [
            self.ssrc.to_be_bytes(),
            [self.fraction_lost, lost[1], lost[2], lost[3]],
            self.highest_seq.to_be_bytes(),
            self.jitter.to_be_bytes(),
            self.last_sr.to_be_bytes(),
            self.delay_since_last_sr.to_be_bytes(),
        ];
        let mut out = [0; REPORT_BLOCK_LEN];
        for (target, word) in out.chunks_exact_mut(WORD_LEN).zip(words) {
            target.copy_from_slice(&word);
        }
        out
    }
}

/// Iterator over the report blocks of an SR or RR.
#[derive(Debug, Clone)]
pub struct ReportBlocks<'a> {
    chunks: ChunksExact<'a, u8>,
}

impl<'a> ReportBlocks<'a> {
    fn new(blocks: &'a [u8]) -> Self {
        Self {
            chunks: blocks.chunks_exact(REPORT_BLOCK_LEN),
        }
    }
}

impl Iterator for ReportBlocks<'_> {
    type Item = ReportBlock;

    fn next(&mut self) -> Option<Self::Item> {
        self.chunks
            .next()
            .and_then(|chunk| chunk.first_chunk::<REPORT_BLOCK_LEN>())
            .map(ReportBlock::decode)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.chunks.size_hint()
    }
}

impl ExactSizeIterator for ReportBlocks<'_> {}

impl FusedIterator for ReportBlocks<'_> {}

/// A validated view of a sender report (SR, packet type 200).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderReport<'a> {
    fixed: &'a [u8; SENDER_REPORT_FIXED_LEN],
    blocks: &'a [u8],
    profile_extension: &'a [u8],
}

impl<'a> SenderReport<'a> {
    /// Reads an SR; its report count must fit in the body.
    pub fn parse(packet: RtcpPacket<'a>) -> Result<Self, RtcpError> {
        if packet.packet_type != packet_type::SENDER_REPORT {
            return Err(RtcpError::WrongType);
        }
        let fixed = array_at::<SENDER_REPORT_FIXED_LEN>(packet.body, 0).ok_or(RtcpError::TooShort)?;
        let (blocks, profile_extension) = split_blocks(packet.body, SENDER_REPORT_FIXED_LEN, packet.count)?;
        Ok(Self {
            fixed,
            blocks,
            profile_extension,
        })
    }

    /// SSRC of the sender of this report.
    #[must_use]
    pub fn sender_ssrc(&self) -> u32 {
        word_at(self.fixed, 0)
    }

    /// NTP timestamp (64-bit fixed point) of the moment the report was sent.
    #[must_use]
    pub fn ntp(&self) -> u64 {
        (u64::from(word_at(self.fixed, 4)) << 32) | u64::from(word_at(self.fixed, 8))
    }

    /// RTP timestamp corresponding to [`ntp`](Self::ntp).
    #[must_use]
    pub fn rtp_timestamp(&self) -> u32 {
        word_at(self.fixed, 12)
    }

    /// RTP data packets sent since the stream started.
    #[must_use]
    pub fn packet_count(&self) -> u32 {
        word_at(self.fixed, 16)
    }

    /// RTP payload octets sent since the stream started.
    #[must_use]
    pub fn octet_count(&self) -> u32 {
        word_at(self.fixed, 20)
    }

    /// The report blocks.
    #[must_use]
    pub fn report_blocks(&self) -> ReportBlocks<'a> {
        ReportBlocks::new(self.blocks)
    }

    /// Profile-specific extension bytes after the report blocks (usually empty).
    #[must_use]
    pub fn profile_extension(&self) -> &'a [u8] {
        self.profile_extension
    }
}

/// A validated view of a receiver report (RR, packet type 201).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiverReport<'a> {
    fixed: &'a [u8; RECEIVER_REPORT_FIXED_LEN],
    blocks: &'a [u8],
    profile_extension: &'a [u8],
}

impl<'a> ReceiverReport<'a> {
    /// Reads an RR; its report count must fit in the body.
    pub fn parse(packet: RtcpPacket<'a>) -> Result<Self, RtcpError> {
        if packet.packet_type != packet_type::RECEIVER_REPORT {
            return Err(RtcpError::WrongType);
        }
        let fixed = array_at::<RECEIVER_REPORT_FIXED_LEN>(packet.body, 0).ok_or(RtcpError::TooShort)?;
        let (blocks, profile_extension) = split_blocks(packet.body, RECEIVER_REPORT_FIXED_LEN, packet.count)?;
        Ok(Self {
            fixed,
            blocks,
            profile_extension,
        })
    }

    /// SSRC of the sender of this report.
    #[must_use]
    pub fn sender_ssrc(&self) -> u32 {
        word_at(self.fixed, 0)
    }

    /// The report blocks.
    #[must_use]
    pub fn report_blocks(&self) -> ReportBlocks<'a> {
        ReportBlocks::new(self.blocks)
    }

    /// Profile-specific extension bytes after the report blocks (usually empty).
    #[must_use]
    pub fn profile_extension(&self) -> &'a [u8] {
        self.profile_extension
    }
}

/// Splits an SR/RR body after `fixed_len` into `count` report blocks and the remainder.
fn split_blocks(body: &[u8], fixed_len: usize, count: u8) -> Result<(&[u8], &[u8]), RtcpError> {
    let end = fixed_len + REPORT_BLOCK_LEN * usize::from(count);
    let blocks = body.get(fixed_len..end).ok_or(RtcpError::BadLength)?;
    let rest = body.get(end..).unwrap_or_default();
    Ok((blocks, rest))
}

/// A validated view of a goodbye packet (BYE, packet type 203).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bye<'a> {
    ssrcs: &'a [u8],
    reason: Option<&'a [u8]>,
}

impl<'a> Bye<'a> {
    /// Reads a BYE; its source count and optional reason must fit in the body.
    pub fn parse(packet: RtcpPacket<'a>) -> Result<Self, RtcpError> {
        if packet.packet_type != packet_type::GOODBYE {
            return Err(RtcpError::WrongType);
        }
        let end = WORD_LEN * usize::from(packet.count);
        let ssrcs = packet.body.get(..end).ok_or(RtcpError::BadLength)?;
        let rest = packet.body.get(end..).unwrap_or_default();
        let reason = match rest.split_first() {
            None => None,
            Some((&len, text)) => Some(text.get(..usize::from(len)).ok_or(RtcpError::BadLength)?),
        };
        Ok(Self { ssrcs, reason })
    }

    /// The sources leaving.
    pub fn ssrcs(&self) -> impl ExactSizeIterator<Item = u32> + 'a {
        words(self.ssrcs)
    }

    /// The optional reason for leaving (UTF-8 by RFC, not checked here).
    #[must_use]
    pub fn reason(&self) -> Option<&'a [u8]> {
        self.reason
    }
}

/// A validated view of a source description (SDES, packet type 202).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sdes<'a> {
    body: &'a [u8],
    count: u8,
}

impl<'a> Sdes<'a> {
    /// Reads an SDES: each of its `count` chunks must hold an SSRC and a well-formed item list
    /// ended by a null octet, padded to a 32-bit boundary.
    pub fn parse(packet: RtcpPacket<'a>) -> Result<Self, RtcpError> {
        if packet.packet_type != packet_type::SOURCE_DESCRIPTION {
            return Err(RtcpError::WrongType);
        }
        let mut rest = packet.body;
        for _ in 0..packet.count {
            let (_, next) = split_chunk(rest).ok_or(RtcpError::BadLength)?;
            rest = next;
        }
        Ok(Self {
            body: packet.body,
            count: packet.count,
        })
    }

    /// The chunks, one per described source.
    #[must_use]
    pub fn chunks(&self) -> SdesChunks<'a> {
        SdesChunks {
            rest: self.body,
            remaining: self.count,
        }
    }
}

/// Iterator over the chunks of an SDES packet.
#[derive(Debug, Clone)]
pub struct SdesChunks<'a> {
    rest: &'a [u8],
    remaining: u8,
}

impl<'a> Iterator for SdesChunks<'a> {
    type Item = SdesChunk<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        self.remaining = self.remaining.checked_sub(1)?;
        match split_chunk(self.rest) {
            Some((chunk, rest)) => {
                self.rest = rest;
                Some(chunk)
            }
            None => {
                self.remaining = 0;
                None
            }
        }
    }
}

impl FusedIterator for SdesChunks<'_> {}

/// One SDES chunk: a source and its items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SdesChunk<'a> {
    /// The source (SSRC or CSRC) described.
    pub ssrc: u32,
    items: &'a [u8],
}

impl<'a> SdesChunk<'a> {
    /// The items of this chunk, without the terminating null octets.
    #[must_use]
    pub fn items(&self) -> SdesItems<'a> {
        SdesItems { rest: self.items }
    }

    /// The CNAME item's value, if the chunk has one.
    #[must_use]
    pub fn cname(&self) -> Option<&'a [u8]> {
        self.items()
            .find(|item| item.kind == sdes_item::CNAME)
            .map(|item| item.value)
    }
}

/// One SDES item: its type and value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SdesItem<'a> {
    /// Item type (see [`sdes_item`]).
    pub kind: u8,
    /// Item value (UTF-8 text by RFC, not checked here).
    pub value: &'a [u8],
}

/// Iterator over the items of an SDES chunk.
#[derive(Debug, Clone)]
pub struct SdesItems<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for SdesItems<'a> {
    type Item = SdesItem<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        let (item, rest) = split_item(self.rest)?;
        self.rest = rest;
        Some(item)
    }
}

impl FusedIterator for SdesItems<'_> {}

/// Splits one item off `buf`; `None` at the end marker or on truncation.
fn split_item(buf: &[u8]) -> Option<(SdesItem<'_>, &[u8])> {
    let (&kind, rest) = buf.split_first()?;
    if kind == sdes_item::END {
        return None;
    }
    let (&len, rest) = rest.split_first()?;
    let value = rest.get(..usize::from(len))?;
    let rest = rest.get(usize::from(len)..)?;
    Some((SdesItem { kind, value }, rest))
}

/// Splits one chunk off `buf` (which starts on a 32-bit boundary); `None` if malformed.
fn split_chunk(buf: &[u8]) -> Option<(SdesChunk<'_>, &[u8])> {
    let ssrc = u32::from_be_bytes(*array_at::<WORD_LEN>(buf, 0)?);
    let mut offset = WORD_LEN;
    loop {
        match buf.get(offset)? {
            &sdes_item::END => break,
            _ => {
                let len = *buf.get(offset + 1)?;
                offset += 2 + usize::from(len);
            }
        }
    }
    let items = buf.get(WORD_LEN..offset)?;
    // Skip the null octet and the padding up to the next 32-bit boundary.
    let end = (offset / WORD_LEN + 1) * WORD_LEN;
    let rest = buf.get(end..)?;
    Some((SdesChunk { ssrc, items }, rest))
}

/// Writes a sender report into `out` and returns its length (28 + 24 per block).
pub fn write_sender_report(
    out: &mut [u8],
    sender_ssrc: u32,
    ntp: u64,
    rtp_timestamp: u32,
    packet_count: u32,
    octet_count: u32,
    blocks: &[ReportBlock],
) -> Result<usize, RtcpError> {
    let len = HEADER_LEN + SENDER_REPORT_FIXED_LEN + REPORT_BLOCK_LEN * blocks.len();
    let mut cursor = start_packet(out, packet_type::SENDER_REPORT, blocks.len(), len)?;
    cursor.put_u32(sender_ssrc)?;
    cursor.put_u64(ntp)?;
    cursor.put_u32(rtp_timestamp)?;
    cursor.put_u32(packet_count)?;
    cursor.put_u32(octet_count)?;
    for block in blocks {
        cursor.put(&block.encode())?;
    }
    Ok(cursor.position)
}

/// Writes a receiver report into `out` and returns its length (8 + 24 per block).
pub fn write_receiver_report(out: &mut [u8], sender_ssrc: u32, blocks: &[ReportBlock]) -> Result<usize, RtcpError> {
    let len = HEADER_LEN + RECEIVER_REPORT_FIXED_LEN + REPORT_BLOCK_LEN * blocks.len();
    let mut cursor = start_packet(out, packet_type::RECEIVER_REPORT, blocks.len(), len)?;
    cursor.put_u32(sender_ssrc)?;
    for block in blocks {
        cursor.put(&block.encode())?;
    }
    Ok(cursor.position)
}

/// Writes an SDES packet with one chunk holding one CNAME item into `out` and returns its
/// length. The item list is ended by one to four null octets, reaching a 32-bit boundary
/// (RFC 3550 section 6.5).
pub fn write_sdes_cname(out: &mut [u8], ssrc: u32, cname: &[u8]) -> Result<usize, RtcpError> {
    let cname_len = u8::try_from(cname.len()).map_err(|_| RtcpError::TooLarge)?;
    let items_len = 2 + cname.len();
    let nulls = WORD_LEN - items_len % WORD_LEN;
    let len = HEADER_LEN + WORD_LEN + items_len + nulls;
    let mut cursor = start_packet(out, packet_type::SOURCE_DESCRIPTION, 1, len)?;
    cursor.put_u32(ssrc)?;
    cursor.put(&[sdes_item::CNAME, cname_len])?;
    cursor.put(cname)?;
    cursor.put([0; WORD_LEN].get(..nulls).unwrap_or_default())?;
    Ok(cursor.position)
}

/// Writes a BYE for one source, without reason, into `out` and returns its length (8).
pub fn write_bye(out: &mut [u8], ssrc: u32) -> Result<usize, RtcpError> {
    let mut cursor = start_packet(out, packet_type::GOODBYE, 1, HEADER_LEN + WORD_LEN)?;
    cursor.put_u32(ssrc)?;
    Ok(cursor.position)
}

/// Checks the count and room for a `len`-byte packet and writes its header.
fn start_packet(out: &mut [u8], packet_type: u8, count: usize, len: usize) -> Result<Cursor<'_>, RtcpError> {
    if count > MAX_COUNT {
        return Err(RtcpError::TooLarge);
    }
    let out = out.get_mut(..len).ok_or(RtcpError::BufferTooSmall)?;
    let words = (len / WORD_LEN)
        .checked_sub(1)
        .and_then(|words| u16::try_from(words).ok())
        .ok_or(RtcpError::TooLarge)?;
    let mut cursor = Cursor::new(out);
    // `count` <= 31, so the cast keeps every bit.
    cursor.put(&[(VERSION << 6) | count as u8, packet_type])?;
    cursor.put(&words.to_be_bytes())?;
    Ok(cursor)
}

/// A bounds-checked writer over a caller's buffer.
struct Cursor<'b> {
    out: &'b mut [u8],
    position: usize,
}

impl<'b> Cursor<'b> {
    fn new(out: &'b mut [u8]) -> Self {
        Self { out, position: 0 }
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), RtcpError> {
        let end = self
            .position
            .checked_add(bytes.len())
            .ok_or(RtcpError::BufferTooSmall)?;
        let target = self.out.get_mut(self.position..end).ok_or(RtcpError::BufferTooSmall)?;
        target.copy_from_slice(bytes);
        self.position = end;
        Ok(())
    }

    fn put_u32(&mut self, value: u32) -> Result<(), RtcpError> {
        self.put(&value.to_be_bytes())
    }

    fn put_u64(&mut self, value: u64) -> Result<(), RtcpError> {
        self.put(&value.to_be_bytes())
    }
}

/// Reception statistics for one incoming RTP stream (RFC 3550 appendix A.1, A.3, A.8).
///
/// Feed every received packet to [`on_packet`](Self::on_packet); call
/// [`report_block`](Self::report_block) once per outgoing report. A relay accepts a new stream
/// at once (MIN_SEQUENTIAL = 1), but keeps A.1's restart rule: a jump of more than
/// [`MAX_DROPOUT`](Self::MAX_DROPOUT) ahead (or [`MAX_MISORDER`](Self::MAX_MISORDER) behind) is
/// ignored unless the next packet follows it, which restarts the statistics there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReceiverStats {
    started: bool,
    has_transit: bool,
    max_seq: u16,
    /// Sequence-number cycles, shifted left by 16 as in A.1.
    cycles: u32,
    base_seq: u32,
    /// Last out-of-window sequence number + 1; `SEQ_MOD + 1` matches nothing.
    bad_seq: u32,
    received: u32,
    expected_prior: u32,
    received_prior: u32,
    transit: u32,
    /// Jitter scaled by 16 (A.8's integer form).
    jitter_q4: u32,
}

impl ReceiverStats {
    /// Largest forward gap treated as loss rather than a restart (A.1).
    pub const MAX_DROPOUT: u16 = 3000;
    /// Largest backward step treated as reordering rather than a restart (A.1).
    pub const MAX_MISORDER: u16 = 100;
    const SEQ_MOD: u32 = 1 << 16;

    /// New statistics, before the first packet.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a received packet; `arrival` is its arrival time already in RTP timestamp units
    /// (any fixed origin). Returns whether the packet counted as part of the stream: `false` for
    /// an out-of-window packet that A.1 sets aside (a relay may drop it).
    pub fn on_packet(&mut self, seq: u16, rtp_timestamp: u32, arrival: u32) -> bool {
        if !self.started {
            self.started = true;
            self.restart(seq);
        } else if !self.update_seq(seq) {
            return false;
        }
        self.received = self.received.wrapping_add(1);
        self.update_jitter(rtp_timestamp, arrival);
        true
    }

    /// Builds the report block for this stream and starts a new loss interval (A.3).
    #[must_use]
    pub fn report_block(&mut self, ssrc: u32, last_sr: u32, delay_since_last_sr: u32) -> ReportBlock {
        let expected = self.expected();
        let expected_interval = expected.wrapping_sub(self.expected_prior);
        self.expected_prior = expected;
        let received_interval = self.received.wrapping_sub(self.received_prior);
        self.received_prior = self.received;
        let lost_interval = i64::from(expected_interval) - i64::from(received_interval);
        let fraction_lost = if expected_interval == 0 || lost_interval <= 0 {
            0
        } else {
            u8::try_from((lost_interval << 8) / i64::from(expected_interval)).unwrap_or(u8::MAX)
        };
        ReportBlock {
            ssrc,
            fraction_lost,
            cumulative_lost: self.cumulative_lost(),
            highest_seq: self.extended_highest_seq(),
            jitter: self.jitter(),
            last_sr,
            delay_since_last_sr,
        }
    }

    /// Packets counted since the stream (re)started, duplicates included.
    #[must_use]
    pub fn received(&self) -> u32 {
        self.received
    }

    /// Packets expected since the stream (re)started: highest minus first sequence number + 1.
    #[must_use]
    pub fn expected(&self) -> u32 {
        if !self.started {
            return 0;
        }
        self.extended_highest_seq().wrapping_sub(self.base_seq).wrapping_add(1)
    }

    /// Expected minus received, clamped to the 24-bit signed wire field.
    #[must_use]
    pub fn cumulative_lost(&self) -> i32 {
        clamp_lost(i64::from(self.expected()) - i64::from(self.received))
    }

    /// Interarrival jitter estimate, in timestamp units.
    #[must_use]
    pub fn jitter(&self) -> u32 {
        self.jitter_q4 >> 4
    }

    /// Highest sequence number seen, extended with the cycle count in the high 16 bits.
    #[must_use]
    pub fn extended_highest_seq(&self) -> u32 {
        self.cycles.wrapping_add(u32::from(self.max_seq))
    }

    /// A.1 `init_seq`, plus a fresh jitter baseline since a restarted stream's timing is unrelated.
    fn restart(&mut self, seq: u16) {
        self.base_seq = u32::from(seq);
        self.max_seq = seq;
        self.bad_seq = Self::SEQ_MOD + 1;
        self.cycles = 0;
        self.received = 0;
        self.received_prior = 0;
        self.expected_prior = 0;
        self.has_transit = false;
    }

    /// A.1 `update_seq` after probation; `false` means the packet is set aside.
    fn update_seq(&mut self, seq: u16) -> bool {
        let delta = seq.wrapping_sub(self.max_seq);
        if delta < Self::MAX_DROPOUT {
            // In order, with a permissible gap.
            if seq < self.max_seq {
                self.cycles = self.cycles.wrapping_add(Self::SEQ_MOD);
            }
            self.max_seq = seq;
        } else if delta <= u16::MAX - Self::MAX_MISORDER + 1 {
            // A very large jump: restart only if the next packet follows it.
            if u32::from(seq) == self.bad_seq {
                self.restart(seq);
            } else {
                self.bad_seq = (u32::from(seq) + 1) & (Self::SEQ_MOD - 1);
                return false;
            }
        }
        // Otherwise a duplicate or reordered packet: counted, no state change.
        true
    }

    /// A.8: J += (|D| - J) / 16, kept scaled by 16 in integers.
    fn update_jitter(&mut self, rtp_timestamp: u32, arrival: u32) {
        let transit = arrival.wrapping_sub(rtp_timestamp);
        if self.has_transit {
            // Interpreted as signed, the wrapped difference is the true one for |D| < 2^31.
            let difference = u64::from((transit.wrapping_sub(self.transit) as i32).unsigned_abs());
            let jitter = u64::from(self.jitter_q4);
            let next = (jitter + difference).saturating_sub((jitter + 8) >> 4);
            self.jitter_q4 = u32::try_from(next).unwrap_or(u32::MAX);
        }
        self.transit = transit;
        self.has_transit = true;
    }
}

/// Clamps a loss count to the 24-bit signed range of the report block field.
fn clamp_lost(lost: i64) -> i32 {
    // In range after the clamp, so the conversion cannot fail.
    i32::try_from(lost.clamp(i64::from(MIN_LOST), i64::from(MAX_LOST))).unwrap_or(MAX_LOST)
}

/// NTP 64-bit fixed-point timestamp (seconds since 1900 in the high word) for a time given as
/// nanoseconds since the Unix epoch, e.g. `SystemTime::duration_since(UNIX_EPOCH)?.as_nanos()`.
/// Seconds wrap modulo 2^32 (NTP eras), as on the wire.
#[must_use]
pub fn ntp_from_unix_nanos(nanos: u128) -> u64 {
    const NANOS_PER_SECOND: u128 = 1_000_000_000;
    let seconds = nanos / NANOS_PER_SECOND + u128::from(NTP_UNIX_OFFSET_SECONDS);
    let fraction = ((nanos % NANOS_PER_SECOND) << 32) / NANOS_PER_SECOND;
    // Truncation to the low 32 bits is the era wrap; the fraction is below 2^32.
    (u64::from(seconds as u32) << 32) | (fraction as u64)
}

/// The middle 32 bits of an NTP timestamp (16.16 fixed point), as carried in LSR.
#[must_use]
pub fn ntp_middle32(ntp: u64) -> u32 {
    (ntp >> 16) as u32
}

/// Round-trip time in 1/65536 s from a report block (RFC 3550 section 6.4.1: A - LSR - DLSR),
/// where `arrival_ntp_middle32` is when the block arrived. `None` if the peer has no SR from us
/// yet (`last_sr == 0`) or the result would be negative (clock trouble).
#[must_use]
pub fn round_trip(arrival_ntp_middle32: u32, last_sr: u32, delay_since_last_sr: u32) -> Option<u32> {
    if last_sr == 0 {
        return None;
    }
    // Modulo 2^32, the time since our SR left; wraps every ~18 hours, which is harmless here.
    let since_sender_report = arrival_ntp_middle32.wrapping_sub(last_sr);
    since_sender_report.checked_sub(delay_since_last_sr)
}

/// Converts a 16.16 fixed-point duration (LSR/DLSR units) to microseconds, rounding down.
#[must_use]
pub fn middle32_to_micros(value: u32) -> u64 {
    (u64::from(value) * 1_000_000) >> 16
}

/// Converts microseconds to a 16.16 fixed-point duration (DLSR units), rounding down and
/// saturating at the largest value.
#[must_use]
pub fn micros_to_middle32(micros: u64) -> u32 {
    u32::try_from((u128::from(micros) << 16) / 1_000_000).unwrap_or(u32::MAX)
}

/// `N` bytes of `buf` starting at `offset`, if they are all there.
fn array_at<const N: usize>(buf: &[u8], offset: usize) -> Option<&[u8; N]> {
    buf.get(offset..)?.first_chunk::<N>()
}

/// The big-endian word at `offset` of a fixed-size array, 0 if out of range.
fn word_at<const N: usize>(bytes: &[u8; N], offset: usize) -> u32 {
    array_at::<WORD_LEN>(bytes, offset)
        .map(|word| u32::from_be_bytes(*word))
        .unwrap_or(0)
}

/// The big-endian words of `bytes` (whose length is a multiple of 4).
fn words(bytes: &[u8]) -> impl ExactSizeIterator<Item = u32> + '_ {
    bytes.chunks_exact(WORD_LEN).map(|chunk| {
        chunk
            .first_chunk::<WORD_LEN>()
            .map_or(0, |word| u32::from_be_bytes(*word))
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use bytes::Bytes;
    use proptest::prelude::*;

    use super::*;

    /// RR + SDES + BYE + PLI + RRR, the compound from webrtc-rs rtcp's own packet test.
    const WEBRTC_COMPOUND: [u8; 116] = [
        0x81, 0xc9, 0x00, 0x07, // v=2, p=0, count=1, RR, len=7
        0x90, 0x2f, 0x9e, 0x2e, // ssrc=0x902f9e2e
        0xbc, 0x5e, 0x9a, 0x40, // ssrc=0xbc5e9a40
        0x00, 0x00, 0x00, 0x00, // fracLost=0, totalLost=0
        0x00, 0x00, 0x46, 0xe1, // lastSeq=0x46e1
        0x00, 0x00, 0x01, 0x11, // jitter=273
        0x09, 0xf3, 0x64, 0x32, // lsr=0x9f36432
        0x00, 0x02, 0x4a, 0x79, // delay=150137
        0x81, 0xca, 0x00, 0x0c, // v=2, p=0, count=1, SDES, len=12
        0x90, 0x2f, 0x9e, 0x2e, // ssrc=0x902f9e2e
        0x01, 0x26, // CNAME, len=38
        0x7b, 0x39, 0x63, 0x30, 0x30, 0x65, 0x62, 0x39, 0x32, 0x2d, 0x31, 0x61, 0x66, 0x62, 0x2d, 0x39, 0x64, 0x34,
        0x39, 0x2d, 0x61, 0x34, 0x37, 0x64, 0x2d, 0x39, 0x31, 0x66, 0x36, 0x34, 0x65, 0x65, 0x65, 0x36, 0x39, 0x66,
        0x35, 0x7d, // "{9c00eb92-1afb-9d49-a47d-91f64eee69f5}"
        0x00, 0x00, 0x00, 0x00, // END + padding
        0x81, 0xcb, 0x00, 0x01, // v=2, p=0, count=1, BYE, len=1
        0x90, 0x2f, 0x9e, 0x2e, // source=0x902f9e2e
        0x81, 0xce, 0x00, 0x02, // PLI
        0x90, 0x2f, 0x9e, 0x2e, // sender=0x902f9e2e
        0x90, 0x2f, 0x9e, 0x2e, // media=0x902f9e2e
        0x85, 0xcd, 0x00, 0x02, // RRR
        0x90, 0x2f, 0x9e, 0x2e, // sender=0x902f9e2e
        0x90, 0x2f, 0x9e, 0x2e, // media=0x902f9e2e
    ];

    /// An RR with no blocks: the smallest valid compound.
    const EMPTY_RR: [u8; 8] = [0x80, 0xc9, 0x00, 0x01, 0x00, 0x00, 0x00, 0x05];

    fn block(seed: u32) -> ReportBlock {
        ReportBlock {
            ssrc: seed,
            fraction_lost: seed as u8,
            cumulative_lost: -(seed as i32 % 1000),
            highest_seq: seed.wrapping_mul(3),
            jitter: seed.wrapping_mul(5),
            last_sr: seed.wrapping_mul(7),
            delay_since_last_sr: seed.wrapping_mul(11),
        }
    }

    fn concat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    #[test]
    fn reads_webrtc_compound() {
        let packets: Vec<_> = parse_compound(&WEBRTC_COMPOUND).unwrap().collect();
        let types: Vec<_> = packets.iter().map(|p| (p.packet_type, p.count)).collect();
        assert_eq!(types, [(201, 1), (202, 1), (203, 1), (206, 1), (205, 5)]);

        let report = ReceiverReport::parse(packets[0]).unwrap();
        assert_eq!(report.sender_ssrc(), 0x902f_9e2e);
        assert!(report.profile_extension().is_empty());
        let blocks: Vec<_> = report.report_blocks().collect();
        assert_eq!(
            blocks,
            [ReportBlock {
                ssrc: 0xbc5e_9a40,
                fraction_lost: 0,
                cumulative_lost: 0,
                highest_seq: 0x46e1,
                jitter: 273,
                last_sr: 0x09f3_6432,
                delay_since_last_sr: 150_137,
            }]
        );

        let sdes = Sdes::parse(packets[1]).unwrap();
        let chunks: Vec<_> = sdes.chunks().collect();
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].ssrc, 0x902f_9e2e);
        assert_eq!(chunks[0].cname(), Some(&b"{9c00eb92-1afb-9d49-a47d-91f64eee69f5}"[..]));

        let bye = Bye::parse(packets[2]).unwrap();
        assert_eq!(bye.ssrcs().collect::<Vec<_>>(), [0x902f_9e2e]);
        assert_eq!(bye.reason(), None);

        assert_eq!(packets[3].body.len(), 8);
        assert_eq!(SenderReport::parse(packets[3]), Err(RtcpError::WrongType));
        assert_eq!(ReceiverReport::parse(packets[1]), Err(RtcpError::WrongType));
        assert_eq!(Sdes::parse(packets[0]).unwrap_err(), RtcpError::WrongType);
        assert_eq!(Bye::parse(packets[0]).unwrap_err(), RtcpError::WrongType);
    }

    #[test]
    fn reads_a_sender_report() {
        let mut sr = vec![0x81, 0xc8, 0x00, 0x0c];
        sr.extend_from_slice(&0x1122_3344u32.to_be_bytes()); // sender SSRC
        sr.extend_from_slice(&0x83aa_7e80_8000_0000u64.to_be_bytes()); // NTP
        sr.extend_from_slice(&160u32.to_be_bytes()); // RTP timestamp
        sr.extend_from_slice(&10u32.to_be_bytes()); // packets
        sr.extend_from_slice(&1600u32.to_be_bytes()); // octets
        sr.extend_from_slice(&block(9).encode());
        validate_compound(&sr).unwrap();
        let packet = RtcpIter::new(&sr).next().unwrap();
        let report = SenderReport::parse(packet).unwrap();
        assert_eq!(report.sender_ssrc(), 0x1122_3344);
        assert_eq!(report.ntp(), 0x83aa_7e80_8000_0000);
        assert_eq!(report.rtp_timestamp(), 160);
        assert_eq!(report.packet_count(), 10);
        assert_eq!(report.octet_count(), 1600);
        assert_eq!(report.report_blocks().len(), 1);
        assert_eq!(report.report_blocks().next(), Some(block(9)));
        assert!(report.profile_extension().is_empty());
    }

    #[test]
    fn validate_rejects_short_input() {
        assert_eq!(validate_compound(&[]), Err(RtcpError::TooShort));
        assert_eq!(validate_compound(&[0x80, 0xc9, 0x00]), Err(RtcpError::TooShort));
        assert!(parse_compound(&[]).is_err());
    }

    #[test]
    fn validate_rejects_bad_version() {
        let mut first = EMPTY_RR;
        first[0] = 0x40;
        assert_eq!(validate_compound(&first), Err(RtcpError::BadVersion));
        let mut second = EMPTY_RR;
        second[0] = 0xc0;
        let compound = concat(&[&EMPTY_RR, &second]);
        assert_eq!(validate_compound(&compound), Err(RtcpError::BadVersion));
    }

    #[test]
    fn validate_requires_sr_or_rr_first() {
        let bye = [0x81, 0xcb, 0x00, 0x01, 0, 0, 0, 1];
        assert_eq!(validate_compound(&bye), Err(RtcpError::NotCompound));
        let app = [0x80, 0xcc, 0x00, 0x02, 0, 0, 0, 1, b'n', b'a', b'm', b'e'];
        assert_eq!(validate_compound(&app), Err(RtcpError::NotCompound));
        let pli = &WEBRTC_COMPOUND[84..96];
        assert_eq!(validate_compound(pli), Err(RtcpError::NotCompound));
        // Reduced-size RTCP can still be walked directly.
        assert_eq!(RtcpIter::new(pli).count(), 1);
        assert_eq!(
            validate_compound(&concat(&[&bye, &EMPTY_RR])),
            Err(RtcpError::NotCompound)
        );
    }

    #[test]
    fn validate_requires_lengths_to_sum() {
        // Length claims one word more than present.
        let mut long = EMPTY_RR;
        long[3] = 2;
        assert_eq!(validate_compound(&long), Err(RtcpError::BadLength));
        // Trailing bytes too short for a header.
        assert_eq!(
            validate_compound(&concat(&[&EMPTY_RR, &[0x80, 0xc9]])),
            Err(RtcpError::BadLength)
        );
        // A second packet whose length runs past the end.
        let tail = [0x81, 0xcb, 0x00, 0x05, 0, 0, 0, 1];
        assert_eq!(
            validate_compound(&concat(&[&EMPTY_RR, &tail])),
            Err(RtcpError::BadLength)
        );
        // The largest length field.
        let mut huge = EMPTY_RR;
        huge[2] = 0xff;
        huge[3] = 0xff;
        assert_eq!(validate_compound(&huge), Err(RtcpError::BadLength));
        assert_eq!(RtcpIter::new(&huge).next(), None);
    }

    #[test]
    fn validate_checks_padding() {
        // Padding on the last packet: fine, and removed from the body.
        let padded_bye = [0xa1, 0xcb, 0x00, 0x02, 0, 0, 0, 1, 0, 0, 0, 4];
        let compound = concat(&[&EMPTY_RR, &padded_bye]);
        validate_compound(&compound).unwrap();
        let bye = RtcpIter::new(&compound).nth(1).unwrap();
        assert_eq!(bye.body, &[0, 0, 0, 1]);
        assert_eq!(Bye::parse(bye).unwrap().ssrcs().collect::<Vec<_>>(), [1]);

        // Padding on a packet that is not last.
        let mut padded_rr = EMPTY_RR.to_vec();
        padded_rr[0] |= PADDING_BIT;
        padded_rr[3] = 2;
        padded_rr.extend_from_slice(&[0, 0, 0, 4]);
        validate_compound(&padded_rr).unwrap();
        let compound = concat(&[&padded_rr, &EMPTY_RR]);
        assert_eq!(validate_compound(&compound), Err(RtcpError::BadPadding));

        // Pad count zero.
        let zero = [0xa1, 0xcb, 0x00, 0x02, 0, 0, 0, 1, 0, 0, 0, 0];
        assert_eq!(
            validate_compound(&concat(&[&EMPTY_RR, &zero])),
            Err(RtcpError::BadPadding)
        );
        // Pad count larger than the packet body.
        let large = [0xa1, 0xcb, 0x00, 0x02, 0, 0, 0, 1, 0, 0, 0, 9];
        assert_eq!(
            validate_compound(&concat(&[&EMPTY_RR, &large])),
            Err(RtcpError::BadPadding)
        );
        assert_eq!(RtcpPacket::parse(&large), Err(RtcpError::BadPadding));
    }

    #[test]
    fn report_count_must_fit() {
        let mut rr = EMPTY_RR;
        rr[0] = 0x81; // one block announced, none present
        let packet = RtcpIter::new(&rr).next().unwrap();
        assert_eq!(ReceiverReport::parse(packet), Err(RtcpError::BadLength));

        let mut sr = vec![0x81, 0xc8, 0x00, 0x06];
        sr.extend_from_slice(&[0; 24]);
        let packet = RtcpIter::new(&sr).next().unwrap();
        assert_eq!(SenderReport::parse(packet), Err(RtcpError::BadLength));

        let short_sr = [0x80, 0xc8, 0x00, 0x01, 0, 0, 0, 1];
        let packet = RtcpIter::new(&short_sr).next().unwrap();
        assert_eq!(SenderReport::parse(packet), Err(RtcpError::TooShort));
        let bare_rr = [0x80, 0xc9, 0x00, 0x00];
        let packet = RtcpIter::new(&bare_rr).next().unwrap();
        assert_eq!(ReceiverReport::parse(packet), Err(RtcpError::TooShort));
    }

    #[test]
    fn reads_bye_reasons() {
        let bye = [
            0x82, 0xcb, 0x00, 0x04, 0, 0, 0, 1, 0, 0, 0, 2, 3, b'b', b'y', b'e', 0, 0, 0, 0,
        ];
        let packet = RtcpPacket::parse(&bye).unwrap().0;
        let parsed = Bye::parse(packet).unwrap();
        assert_eq!(parsed.ssrcs().collect::<Vec<_>>(), [1, 2]);
        assert_eq!(parsed.reason(), Some(&b"bye"[..]));

        let lying_reason = [0x81, 0xcb, 0x00, 0x02, 0, 0, 0, 1, 9, b'b', b'y', b'e'];
        let packet = RtcpPacket::parse(&lying_reason).unwrap().0;
        assert_eq!(Bye::parse(packet), Err(RtcpError::BadLength));

        let lying_count = [0x83, 0xcb, 0x00, 0x02, 0, 0, 0, 1, 0, 0, 0, 2];
        let packet = RtcpPacket::parse(&lying_count).unwrap().0;
        assert_eq!(Bye::parse(packet), Err(RtcpError::BadLength));
    }

    #[test]
    fn reads_sdes_items_and_rejects_broken_chunks() {
        // Two chunks; the first has CNAME "ab" and NAME "c".
        let sdes = [
            0x82, 0xca, 0x00, 0x05, //
            0, 0, 0, 1, 1, 2, b'a', b'b', 2, 1, b'c', 0, //
            0, 0, 0, 2, 0, 0, 0, 0,
        ];
        let packet = RtcpPacket::parse(&sdes).unwrap().0;
        let parsed = Sdes::parse(packet).unwrap();
        let chunks: Vec<_> = parsed.chunks().collect();
        assert_eq!(chunks.len(), 2);
        let items: Vec<_> = chunks[0].items().collect();
        assert_eq!(
            items,
            [SdesItem { kind: 1, value: b"ab" }, SdesItem { kind: 2, value: b"c" }]
        );
        assert_eq!(chunks[0].cname(), Some(&b"ab"[..]));
        assert_eq!(chunks[1].ssrc, 2);
        assert_eq!(chunks[1].items().count(), 0);
        assert_eq!(chunks[1].cname(), None);

        // No null octet before the end.
        let unterminated = [0x81, 0xca, 0x00, 0x02, 0, 0, 0, 1, 1, 2, b'a', b'b'];
        let packet = RtcpPacket::parse(&unterminated).unwrap().0;
        assert_eq!(Sdes::parse(packet), Err(RtcpError::BadLength));
        // Item length past the end.
        let overrun = [0x81, 0xca, 0x00, 0x02, 0, 0, 0, 1, 1, 9, b'a', 0];
        let packet = RtcpPacket::parse(&overrun).unwrap().0;
        assert_eq!(Sdes::parse(packet), Err(RtcpError::BadLength));
        // Count says two chunks, one present.
        let missing = [0x82, 0xca, 0x00, 0x02, 0, 0, 0, 1, 0, 0, 0, 0];
        let packet = RtcpPacket::parse(&missing).unwrap().0;
        assert_eq!(Sdes::parse(packet), Err(RtcpError::BadLength));
    }

    #[test]
    fn report_block_cumulative_lost_is_24_bit_signed() {
        let mut bytes = block(1).encode();
        bytes[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
        assert_eq!(ReportBlock::decode(&bytes).cumulative_lost, -1);
        bytes[5..8].copy_from_slice(&[0x80, 0x00, 0x00]);
        assert_eq!(ReportBlock::decode(&bytes).cumulative_lost, MIN_LOST);
        bytes[5..8].copy_from_slice(&[0x7f, 0xff, 0xff]);
        assert_eq!(ReportBlock::decode(&bytes).cumulative_lost, MAX_LOST);

        let mut too_many = block(1);
        too_many.cumulative_lost = i32::MAX;
        assert_eq!(ReportBlock::decode(&too_many.encode()).cumulative_lost, MAX_LOST);
        too_many.cumulative_lost = i32::MIN;
        assert_eq!(ReportBlock::decode(&too_many.encode()).cumulative_lost, MIN_LOST);
    }

    #[test]
    fn builds_a_compound_on_successive_slices() {
        let mut out = [0u8; 200];
        let mut len =
            write_sender_report(&mut out, 5, 0x0102_0304_0506_0708, 9, 10, 11, &[block(1), block(2)]).unwrap();
        assert_eq!(len, 28 + 48);
        len += write_sdes_cname(&mut out[len..], 5, b"alice@example").unwrap();
        len += write_bye(&mut out[len..], 5).unwrap();
        let compound = &out[..len];

        let packets: Vec<_> = parse_compound(compound).unwrap().collect();
        assert_eq!(packets.len(), 3);
        let report = SenderReport::parse(packets[0]).unwrap();
        assert_eq!(
            (report.sender_ssrc(), report.ntp(), report.rtp_timestamp()),
            (5, 0x0102_0304_0506_0708, 9)
        );
        assert_eq!((report.packet_count(), report.octet_count()), (10, 11));
        assert_eq!(report.report_blocks().collect::<Vec<_>>(), [block(1), block(2)]);
        let chunk = Sdes::parse(packets[1]).unwrap().chunks().next().unwrap();
        assert_eq!((chunk.ssrc, chunk.cname()), (5, Some(&b"alice@example"[..])));
        assert_eq!(Bye::parse(packets[2]).unwrap().ssrcs().collect::<Vec<_>>(), [5]);

        let mut rr = [0u8; 32];
        assert_eq!(write_receiver_report(&mut rr, 7, &[block(3)]), Ok(32));
        let packet = parse_compound(&rr).unwrap().next().unwrap();
        let report = ReceiverReport::parse(packet).unwrap();
        assert_eq!(report.sender_ssrc(), 7);
        assert_eq!(report.report_blocks().collect::<Vec<_>>(), [block(3)]);
    }

    #[test]
    fn sdes_cname_is_null_terminated_and_padded() {
        let mut out = [0xaa_u8; 300];
        for cname_len in 0..=9 {
            let cname = vec![b'x'; cname_len];
            let len = write_sdes_cname(&mut out, 1, &cname).unwrap();
            assert_eq!(len % 4, 0);
            // Header, SSRC, type, length, text, then 1..=4 nulls.
            let nulls = len - (4 + 4 + 2 + cname_len);
            assert!((1..=4).contains(&nulls), "cname {cname_len}: {nulls} nulls");
            assert!(out[len - nulls..len].iter().all(|&byte| byte == 0));
            let words = u16::from_be_bytes([out[2], out[3]]);
            assert_eq!(usize::from(words), len / 4 - 1);
        }
        let len = write_sdes_cname(&mut out, 1, &[b'y'; 255]).unwrap();
        assert_eq!(len, 4 + 4 + 2 + 255 + 3);
    }

    #[test]
    fn builders_refuse_small_buffers_and_large_values() {
        let mut small = [0u8; 27];
        assert_eq!(
            write_sender_report(&mut small, 1, 2, 3, 4, 5, &[]),
            Err(RtcpError::BufferTooSmall)
        );
        assert_eq!(
            write_receiver_report(&mut small, 1, &[block(1)]),
            Err(RtcpError::BufferTooSmall)
        );
        assert_eq!(
            write_sdes_cname(&mut small, 1, &[b'z'; 20]),
            Err(RtcpError::BufferTooSmall)
        );
        assert_eq!(write_bye(&mut small[..7], 1), Err(RtcpError::BufferTooSmall));
        assert_eq!(write_bye(&mut [], 1), Err(RtcpError::BufferTooSmall));

        let mut big = [0u8; 1024];
        let blocks = [ReportBlock::default(); 32];
        assert_eq!(write_receiver_report(&mut big, 1, &blocks), Err(RtcpError::TooLarge));
        assert_eq!(
            write_sender_report(&mut big, 1, 2, 3, 4, 5, &blocks),
            Err(RtcpError::TooLarge)
        );
        assert_eq!(write_sdes_cname(&mut big, 1, &[b'z'; 256]), Err(RtcpError::TooLarge));
        assert_eq!(write_receiver_report(&mut big, 1, &blocks[..31]), Ok(8 + 31 * 24));
    }

    #[test]
    fn errors_display() {
        assert_eq!(
            RtcpError::NotCompound.to_string(),
            "RTCP compound packet does not start with SR or RR"
        );
    }

    // --- ReceiverStats ---

    /// Feeds sequence numbers with timestamps 160 apart and a constant transit time.
    fn feed(stats: &mut ReceiverStats, seqs: impl IntoIterator<Item = u16>) {
        for seq in seqs {
            let timestamp = u32::from(seq).wrapping_mul(160);
            stats.on_packet(seq, timestamp, timestamp.wrapping_add(1000));
        }
    }

    #[test]
    fn stats_start_empty() {
        let mut stats = ReceiverStats::new();
        assert_eq!((stats.received(), stats.expected(), stats.cumulative_lost()), (0, 0, 0));
        let block = stats.report_block(1, 0, 0);
        assert_eq!(block.fraction_lost, 0);
        assert_eq!(block.cumulative_lost, 0);
    }

    #[test]
    fn stats_in_order() {
        let mut stats = ReceiverStats::default();
        feed(&mut stats, 1000..1100);
        assert_eq!(stats.received(), 100);
        assert_eq!(stats.expected(), 100);
        assert_eq!(stats.cumulative_lost(), 0);
        assert_eq!(stats.extended_highest_seq(), 1099);
        assert_eq!(stats.jitter(), 0);
        let block = stats.report_block(0xabcd, 0x1234, 0x5678);
        assert_eq!(
            block,
            ReportBlock {
                ssrc: 0xabcd,
                fraction_lost: 0,
                cumulative_lost: 0,
                highest_seq: 1099,
                jitter: 0,
                last_sr: 0x1234,
                delay_since_last_sr: 0x5678,
            }
        );
    }

    #[test]
    fn stats_loss_and_fraction_per_interval() {
        let mut stats = ReceiverStats::default();
        // 100 expected, every tenth lost.
        feed(&mut stats, (0..100).filter(|seq| seq % 10 != 5));
        assert_eq!(stats.received(), 90);
        assert_eq!(stats.expected(), 100);
        assert_eq!(stats.cumulative_lost(), 10);
        let first = stats.report_block(1, 0, 0);
        assert_eq!(first.fraction_lost, 25); // (10 << 8) / 100
        assert_eq!(first.cumulative_lost, 10);

        // Next interval: 50 expected, 25 lost -> one half.
        feed(&mut stats, (100..150).filter(|seq| seq % 2 == 1));
        let second = stats.report_block(1, 0, 0);
        assert_eq!(second.fraction_lost, 128);
        assert_eq!(second.cumulative_lost, 35);
        assert_eq!(second.highest_seq, 149);

        // No packets since: nothing expected, fraction 0.
        let third = stats.report_block(1, 0, 0);
        assert_eq!(third.fraction_lost, 0);
        assert_eq!(third.cumulative_lost, 35);
    }

    #[test]
    fn stats_reorder_is_not_loss() {
        let mut stats = ReceiverStats::default();
        feed(&mut stats, [0, 1, 3, 2, 4, 6, 5]);
        assert_eq!(stats.received(), 7);
        assert_eq!(stats.expected(), 7);
        assert_eq!(stats.cumulative_lost(), 0);
        assert_eq!(stats.extended_highest_seq(), 6);
        assert_eq!(stats.report_block(1, 0, 0).fraction_lost, 0);
    }

    #[test]
    fn stats_duplicates_make_loss_negative() {
        let mut stats = ReceiverStats::default();
        feed(&mut stats, [0, 1, 1, 2, 2]);
        assert_eq!(stats.received(), 5);
        assert_eq!(stats.expected(), 3);
        assert_eq!(stats.cumulative_lost(), -2);
        let block = stats.report_block(1, 0, 0);
        assert_eq!(block.fraction_lost, 0);
        assert_eq!(block.cumulative_lost, -2);
        assert_eq!(ReportBlock::decode(&block.encode()).cumulative_lost, -2);
    }

    #[test]
    fn stats_wrap_at_65535() {
        let mut stats = ReceiverStats::default();
        feed(&mut stats, (65530..=65535).chain(0..=3));
        assert_eq!(stats.received(), 10);
        assert_eq!(stats.expected(), 10);
        assert_eq!(stats.cumulative_lost(), 0);
        assert_eq!(stats.extended_highest_seq(), 65536 + 3);
        // A late packet from before the wrap does not add a cycle.
        feed(&mut stats, [65534]);
        assert_eq!(stats.extended_highest_seq(), 65536 + 3);
        // A gap across the wrap counts as loss.
        let mut gapped = ReceiverStats::default();
        feed(&mut gapped, [65534, 1]);
        assert_eq!(gapped.extended_highest_seq(), 65536 + 1);
        assert_eq!(gapped.cumulative_lost(), 2);
    }

    #[test]
    fn stats_restart_after_confirmed_large_jump() {
        let mut stats = ReceiverStats::default();
        feed(&mut stats, 0..10);
        assert!(!stats.on_packet(20_000, 0, 0), "first jump is set aside");
        assert_eq!(stats.received(), 10);
        assert!(stats.on_packet(20_001, 0, 0), "the next one confirms it");
        assert_eq!(stats.received(), 1);
        assert_eq!(stats.expected(), 1);
        assert_eq!(stats.extended_highest_seq(), 20_001);
        assert_eq!(stats.cumulative_lost(), 0);
    }

    #[test]
    fn stats_ignore_unconfirmed_jumps_and_very_late_packets() {
        let mut stats = ReceiverStats::default();
        feed(&mut stats, 0..1000);
        assert!(!stats.on_packet(30_000, 0, 0));
        assert!(stats.on_packet(1000, 0, 0));
        // 101 behind: beyond MAX_MISORDER, treated like a jump and set aside.
        assert!(!stats.on_packet(900, 0, 0));
        // 100 behind: reordering, counted.
        assert!(stats.on_packet(901, 0, 0));
        assert_eq!(stats.received(), 1002);
        assert_eq!(stats.extended_highest_seq(), 1000);
        // A gap just under MAX_DROPOUT is loss, not a restart.
        assert!(stats.on_packet(1000 + 2999, 0, 0));
        assert_eq!(stats.cumulative_lost(), 2998 - 1);
    }

    #[test]
    fn stats_cumulative_lost_clamps() {
        let mut stats = ReceiverStats::default();
        let mut seq = 0u16;
        for _ in 0..3000 {
            stats.on_packet(seq, 0, 0);
            seq = seq.wrapping_add(2999);
        }
        assert_eq!(stats.cumulative_lost(), MAX_LOST);
        assert_eq!(stats.report_block(1, 0, 0).cumulative_lost, MAX_LOST);
        assert_eq!(clamp_lost(-10_000_000), MIN_LOST);
        assert_eq!(clamp_lost(-5), -5);
    }

    #[test]
    fn jitter_is_zero_for_constant_delay() {
        let mut stats = ReceiverStats::default();
        for seq in 0..500u16 {
            let timestamp = 7_000u32.wrapping_add(u32::from(seq) * 160);
            stats.on_packet(seq, timestamp, timestamp.wrapping_add(123_456));
        }
        assert_eq!(stats.jitter(), 0);
    }

    #[test]
    fn jitter_follows_a_16th_of_each_step() {
        let mut stats = ReceiverStats::default();
        stats.on_packet(0, 0, 1000);
        assert_eq!(stats.jitter(), 0);
        stats.on_packet(1, 160, 1000 + 160 + 32); // D = 32 -> J = 2
        assert_eq!(stats.jitter(), 2);
    }

    #[test]
    fn jitter_converges_for_alternating_delay() {
        // Transit alternates between 0 and 100, so |D| = 100 for every packet after the first;
        // J converges to 100 (A.8), within the integer form's rounding.
        let mut stats = ReceiverStats::default();
        let mut exact = 0.0f64;
        for seq in 0..1000u16 {
            let timestamp = u32::from(seq) * 160;
            let delay = if seq % 2 == 0 { 0 } else { 100 };
            stats.on_packet(seq, timestamp, timestamp + delay);
            if seq > 0 {
                exact += (100.0 - exact) / 16.0;
            }
        }
        assert!((99..=100).contains(&stats.jitter()), "jitter {}", stats.jitter());
        assert!((exact - f64::from(stats.jitter())).abs() <= 1.0);
        // Timestamp and arrival wrapping around 2^32 change nothing.
        let mut wrapped = ReceiverStats::default();
        for seq in 0..1000u16 {
            let timestamp = (u32::MAX - 80_000).wrapping_add(u32::from(seq) * 160);
            let delay = if seq % 2 == 0 { 0 } else { 100 };
            wrapped.on_packet(seq, timestamp, timestamp.wrapping_add(delay));
        }
        assert_eq!(wrapped.jitter(), stats.jitter());
    }

    #[test]
    fn stats_stay_small() {
        assert!(std::mem::size_of::<ReceiverStats>() <= 64);
    }

    // --- time ---

    #[test]
    fn ntp_from_unix_time() {
        assert_eq!(ntp_from_unix_nanos(0), 0x83aa_7e80_0000_0000);
        assert_eq!(ntp_from_unix_nanos(1_500_000_000), 0x83aa_7e81_8000_0000);
        assert_eq!(ntp_from_unix_nanos(250_000_000) & 0xffff_ffff, 0x4000_0000);
        // 2036-02-07T06:28:16Z is the start of NTP era 1.
        let era_one = (1u128 << 32) - u128::from(NTP_UNIX_OFFSET_SECONDS);
        assert_eq!(ntp_from_unix_nanos(era_one * 1_000_000_000), 0);
        let _ = ntp_from_unix_nanos(u128::MAX);
        assert_eq!(ntp_middle32(0x83aa_7e81_8000_0000), 0x7e81_8000);
    }

    #[test]
    fn round_trip_matches_rfc_3550_example() {
        // Section 6.4.1: A = 46864.500 s, LSR = 46853.125 s, DLSR = 5.250 s -> 6.125 s.
        let rtt = round_trip(0xb710_8000, 0xb705_2000, 0x0005_4000).unwrap();
        assert_eq!(rtt, 0x0006_2000);
        assert_eq!(middle32_to_micros(rtt), 6_125_000);
        assert_eq!(micros_to_middle32(6_125_000), 0x0006_2000);
        assert_eq!(micros_to_middle32(u64::MAX), u32::MAX);
        assert_eq!(middle32_to_micros(u32::MAX), 65_535_999_984);
    }

    #[test]
    fn round_trip_edge_cases() {
        assert_eq!(round_trip(0xb710_8000, 0, 0), None, "no SR received yet");
        assert_eq!(round_trip(0x1000, 0x0800, 0x0900), None, "negative");
        assert_eq!(round_trip(0x1000, 0x0800, 0x0800), Some(0));
        // The middle 32 bits wrapped between our SR and the report.
        assert_eq!(round_trip(0x0000_1000, 0xffff_0000, 0x100), Some(0x0001_0f00));
    }

    // --- property tests ---

    /// Touches every typed view and iterator of every packet in `buf`.
    fn exercise(buf: &[u8]) {
        let _ = validate_compound(buf);
        let _ = parse_compound(buf).map(Iterator::count);
        let _ = RtcpPacket::parse(buf);
        for packet in RtcpIter::new(buf) {
            if let Ok(report) = SenderReport::parse(packet) {
                let _ = (report.sender_ssrc(), report.ntp(), report.rtp_timestamp());
                let _ = (report.packet_count(), report.octet_count(), report.profile_extension());
                assert_eq!(report.report_blocks().count(), usize::from(packet.count));
            }
            if let Ok(report) = ReceiverReport::parse(packet) {
                let _ = (report.sender_ssrc(), report.profile_extension());
                assert_eq!(report.report_blocks().len(), usize::from(packet.count));
            }
            if let Ok(sdes) = Sdes::parse(packet) {
                assert_eq!(sdes.chunks().count(), usize::from(packet.count));
                for chunk in sdes.chunks() {
                    let _ = (chunk.ssrc, chunk.cname(), chunk.items().count());
                }
            }
            if let Ok(bye) = Bye::parse(packet) {
                assert_eq!(bye.ssrcs().count(), usize::from(packet.count));
                let _ = bye.reason();
            }
        }
    }

    fn arb_block() -> impl Strategy<Value = ReportBlock> {
        (any::<[u32; 5]>(), any::<u8>(), MIN_LOST..=MAX_LOST).prop_map(|(words, fraction, lost)| ReportBlock {
            ssrc: words[0],
            fraction_lost: fraction,
            cumulative_lost: lost,
            highest_seq: words[1],
            jitter: words[2],
            last_sr: words[3],
            delay_since_last_sr: words[4],
        })
    }

    /// Bytes that look like RTCP headers often enough to reach the typed views.
    fn rtcp_like() -> impl Strategy<Value = Vec<u8>> {
        let packet = (
            0x80u8..=0xbf,
            200u8..=206,
            0u8..8,
            proptest::collection::vec(any::<u8>(), 0..40),
        )
            .prop_map(|(first, packet_type, words, mut body)| {
                body.resize(usize::from(words) * 4, 0);
                let mut packet = vec![first, packet_type, 0, words];
                packet.extend_from_slice(&body);
                packet
            });
        proptest::collection::vec(packet, 1..4).prop_map(|packets| packets.concat())
    }

    /// A compound built with our writers, and what went into it.
    #[derive(Debug, Clone)]
    struct Built {
        sender: Option<(u64, u32, u32, u32)>,
        ssrc: u32,
        blocks: Vec<ReportBlock>,
        cname: Vec<u8>,
        bye: bool,
        bytes: Vec<u8>,
    }

    fn built() -> impl Strategy<Value = Built> {
        (
            proptest::option::of(any::<(u64, u32, u32, u32)>()),
            any::<u32>(),
            proptest::collection::vec(arb_block(), 0..=31),
            proptest::collection::vec(any::<u8>(), 0..=255),
            any::<bool>(),
        )
            .prop_map(|(sender, ssrc, blocks, cname, bye)| {
                let mut out = vec![0u8; 2048];
                let mut len = match sender {
                    Some((ntp, rtp_timestamp, packets, octets)) => {
                        write_sender_report(&mut out, ssrc, ntp, rtp_timestamp, packets, octets, &blocks)
                    }
                    None => write_receiver_report(&mut out, ssrc, &blocks),
                }
                .unwrap();
                len += write_sdes_cname(&mut out[len..], ssrc, &cname).unwrap();
                if bye {
                    len += write_bye(&mut out[len..], ssrc).unwrap();
                }
                out.truncate(len);
                Built {
                    sender,
                    ssrc,
                    blocks,
                    cname,
                    bye,
                    bytes: out,
                }
            })
    }

    fn same_block(ours: &ReportBlock, theirs: &rtcp::reception_report::ReceptionReport) -> bool {
        ours.ssrc == theirs.ssrc
            && ours.fraction_lost == theirs.fraction_lost
            && (ours.cumulative_lost as u32 & 0xff_ffff) == theirs.total_lost
            && ours.highest_seq == theirs.last_sequence_number
            && ours.jitter == theirs.jitter
            && ours.last_sr == theirs.last_sender_report
            && ours.delay_since_last_sr == theirs.delay
    }

    proptest! {
        #[test]
        fn parsing_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..200)) {
            exercise(&buf);
        }

        #[test]
        fn parsing_never_panics_on_rtcp_like_bytes(buf in rtcp_like()) {
            exercise(&buf);
        }

        #[test]
        fn parsing_never_panics_on_mutated_compounds(
            built in built(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut bytes = built.bytes;
            for (index, value) in flips {
                let at = index.index(bytes.len());
                bytes[at] = value;
            }
            exercise(&bytes);
            exercise(&bytes[..cut.index(bytes.len() + 1)]);
        }

        #[test]
        fn built_compounds_round_trip(built in built()) {
            let packets: Vec<_> = parse_compound(&built.bytes).unwrap().collect();
            prop_assert_eq!(packets.len(), 2 + usize::from(built.bye));
            let blocks: Vec<_> = match built.sender {
                Some((ntp, rtp_timestamp, packet_count, octet_count)) => {
                    let report = SenderReport::parse(packets[0]).unwrap();
                    prop_assert_eq!(report.sender_ssrc(), built.ssrc);
                    prop_assert_eq!(report.ntp(), ntp);
                    prop_assert_eq!(report.rtp_timestamp(), rtp_timestamp);
                    prop_assert_eq!(report.packet_count(), packet_count);
                    prop_assert_eq!(report.octet_count(), octet_count);
                    report.report_blocks().collect()
                }
                None => {
                    let report = ReceiverReport::parse(packets[0]).unwrap();
                    prop_assert_eq!(report.sender_ssrc(), built.ssrc);
                    report.report_blocks().collect()
                }
            };
            prop_assert_eq!(&blocks, &built.blocks);
            let chunk = Sdes::parse(packets[1]).unwrap().chunks().next().unwrap();
            prop_assert_eq!(chunk.ssrc, built.ssrc);
            prop_assert_eq!(chunk.cname(), Some(&built.cname[..]));
            if built.bye {
                let bye = Bye::parse(packets[2]).unwrap();
                prop_assert_eq!(bye.ssrcs().collect::<Vec<_>>(), vec![built.ssrc]);
            }
        }

        /// What our writers produce, webrtc-rs `rtcp` decodes to the same values.
        #[test]
        fn webrtc_rs_decodes_our_compounds(built in built()) {
            let packets = rtcp::packet::unmarshal(&mut Bytes::from(built.bytes.clone())).unwrap();
            prop_assert_eq!(packets.len(), 2 + usize::from(built.bye));
            let theirs = match built.sender {
                Some((ntp, rtp_timestamp, packet_count, octet_count)) => {
                    let report = packets[0]
                        .as_any()
                        .downcast_ref::<rtcp::sender_report::SenderReport>()
                        .unwrap();
                    prop_assert_eq!(report.ssrc, built.ssrc);
                    prop_assert_eq!(report.ntp_time, ntp);
                    prop_assert_eq!(report.rtp_time, rtp_timestamp);
                    prop_assert_eq!(report.packet_count, packet_count);
                    prop_assert_eq!(report.octet_count, octet_count);
                    report.reports.clone()
                }
                None => {
                    let report = packets[0]
                        .as_any()
                        .downcast_ref::<rtcp::receiver_report::ReceiverReport>()
                        .unwrap();
                    prop_assert_eq!(report.ssrc, built.ssrc);
                    report.reports.clone()
                }
            };
            prop_assert_eq!(theirs.len(), built.blocks.len());
            for (ours, theirs) in built.blocks.iter().zip(&theirs) {
                prop_assert!(same_block(ours, theirs), "{:?} vs {:?}", ours, theirs);
            }
            let sdes = packets[1]
                .as_any()
                .downcast_ref::<rtcp::source_description::SourceDescription>()
                .unwrap();
            prop_assert_eq!(sdes.chunks.len(), 1);
            prop_assert_eq!(sdes.chunks[0].source, built.ssrc);
            prop_assert_eq!(sdes.chunks[0].items.len(), 1);
            prop_assert_eq!(
                sdes.chunks[0].items[0].sdes_type,
                rtcp::source_description::SdesType::SdesCname
            );
            prop_assert_eq!(&sdes.chunks[0].items[0].text[..], &built.cname[..]);
            if built.bye {
                let bye = packets[2]
                    .as_any()
                    .downcast_ref::<rtcp::goodbye::Goodbye>()
                    .unwrap();
                prop_assert_eq!(&bye.sources, &vec![built.ssrc]);
                prop_assert!(bye.reason.is_empty());
            }
        }

        #[test]
        fn stats_never_panic(
            packets in proptest::collection::vec(any::<(u16, u32, u32)>(), 0..200),
            report_every in 1usize..50,
        ) {
            let mut stats = ReceiverStats::default();
            for (index, (seq, timestamp, arrival)) in packets.into_iter().enumerate() {
                let _ = stats.on_packet(seq, timestamp, arrival);
                if index % report_every == 0 {
                    let block = stats.report_block(1, 2, 3);
                    prop_assert!((MIN_LOST..=MAX_LOST).contains(&block.cumulative_lost));
                }
                let _ = (stats.received(), stats.expected(), stats.jitter());
            }
        }

        #[test]
        fn time_helpers_never_panic(nanos in any::<u128>(), a in any::<u32>(), b in any::<u32>(), c in any::<u32>()) {
            let ntp = ntp_from_unix_nanos(nanos);
            let _ = ntp_middle32(ntp);
            if let Some(rtt) = round_trip(a, b, c) {
                prop_assert!(rtt <= a.wrapping_sub(b));
            }
            let _ = middle32_to_micros(a);
            let _ = micros_to_middle32(u64::from(a) * u64::from(b));
        }
    }
}
