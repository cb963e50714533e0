//! The generator's RTP: the probe payload every talker sends and every listener checks, and
//! the few RTP header fields the checks need.
//!
//! Payload layout (big-endian), then a pattern up to the configured payload size:
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | magic `FCLG` |
//! | 4..8 | run id (random per run: stragglers of an earlier run are ignored) |
//! | 8..12 | session: the group call or single call instance |
//! | 12..16 | spurt: one talker's turn (a call direction for single calls) |
//! | 16..20 | index of the packet in its spurt, from 0 |
//! | 20..24 | the talker's slot |
//! | 24..32 | send time, ns since the Unix epoch (`CLOCK_REALTIME`) |
//! | 32..40 | grant time of the spurt, same clock (0: none) |
//! | 40.. | `pattern(spurt, index, i)`: lets the listener check the payload arrived unchanged |

use std::time::{SystemTime, UNIX_EPOCH};

/// Bytes of the fixed part of the payload.
pub const PROBE_HEADER: usize = 40;
const MAGIC: [u8; 4] = *b"FCLG";

/// Wall-clock nanoseconds (the clock both the send stamp and the kernel receive stamp use).
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64)
}

/// What a probe payload says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub run: u32,
    pub session: u32,
    pub spurt: u32,
    pub index: u32,
    pub talker: u32,
    pub sent_ns: u64,
    pub grant_ns: u64,
}

fn pattern(spurt: u32, index: u32, position: usize) -> u8 {
    (position as u32)
        .wrapping_mul(31)
        .wrapping_add(index.wrapping_mul(7))
        .wrapping_add(spurt) as u8
}

/// Writes the payload of `probe` into `out` (`out.len()` is the payload size, at least
/// [`PROBE_HEADER`]).
pub fn write_probe(probe: &Probe, out: &mut [u8]) {
    let fields: [&[u8]; 8] = [
        &MAGIC,
        &probe.run.to_be_bytes(),
        &probe.session.to_be_bytes(),
        &probe.spurt.to_be_bytes(),
        &probe.index.to_be_bytes(),
        &probe.talker.to_be_bytes(),
        &probe.sent_ns.to_be_bytes(),
        &probe.grant_ns.to_be_bytes(),
    ];
    let mut at = 0;
    for field in fields {
        out[at..at + field.len()].copy_from_slice(field);
        at += field.len();
    }
    for (position, byte) in out.iter_mut().enumerate().skip(PROBE_HEADER) {
        *byte = pattern(probe.spurt, probe.index, position);
    }
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    (u64::from(u32_at(bytes, at)) << 32) | u64::from(u32_at(bytes, at + 4))
}

/// Reads a probe payload; `None` when it is not one. The second value says whether the pattern
/// after the fixed part is intact.
pub fn read_probe(payload: &[u8]) -> Option<(Probe, bool)> {
    if payload.len() < PROBE_HEADER || payload[..4] != MAGIC {
        return None;
    }
    let probe = Probe {
        run: u32_at(payload, 4),
        session: u32_at(payload, 8),
        spurt: u32_at(payload, 12),
        index: u32_at(payload, 16),
        talker: u32_at(payload, 20),
        sent_ns: u64_at(payload, 24),
        grant_ns: u64_at(payload, 32),
    };
    let intact = payload
        .iter()
        .enumerate()
        .skip(PROBE_HEADER)
        .all(|(position, &byte)| byte == pattern(probe.spurt, probe.index, position));
    Some((probe, intact))
}

/// The RTP header fields the listener checks, and where the payload starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub marker: bool,
    pub payload_type: u8,
    pub seq: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    pub payload_start: usize,
    pub payload_end: usize,
}

/// Whether a datagram is RTCP (RFC 5761: second byte 192–223).
pub fn is_rtcp(packet: &[u8]) -> bool {
    packet.len() >= 2 && (192..=223).contains(&packet[1])
}

/// Parses an RTP header (version 2, CSRCs, extension and padding skipped).
pub fn parse_header(packet: &[u8]) -> Option<Header> {
    if packet.len() < 12 || packet[0] >> 6 != 2 {
        return None;
    }
    let csrcs = usize::from(packet[0] & 0x0f);
    let mut start = 12 + 4 * csrcs;
    if packet[0] & 0x10 != 0 {
        if packet.len() < start + 4 {
            return None;
        }
        let words = usize::from(u16::from_be_bytes([packet[start + 2], packet[start + 3]]));
        start += 4 + 4 * words;
    }
    let mut end = packet.len();
    if packet[0] & 0x20 != 0 {
        let padding = usize::from(*packet.last()?);
        end = end.checked_sub(padding)?;
    }
    if start > end {
        return None;
    }
    Some(Header {
        marker: packet[1] & 0x80 != 0,
        payload_type: packet[1] & 0x7f,
        seq: u16::from_be_bytes([packet[2], packet[3]]),
        timestamp: u32_at(packet, 4),
        ssrc: u32_at(packet, 8),
        payload_start: start,
        payload_end: end,
    })
}

/// Writes a 12-byte RTP header.
pub fn write_header(out: &mut [u8], marker: bool, payload_type: u8, seq: u16, timestamp: u32, ssrc: u32) {
    out[0] = 0x80;
    out[1] = (payload_type & 0x7f) | if marker { 0x80 } else { 0 };
    out[2..4].copy_from_slice(&seq.to_be_bytes());
    out[4..8].copy_from_slice(&timestamp.to_be_bytes());
    out[8..12].copy_from_slice(&ssrc.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_round_trip_and_tamper_check() {
        let probe = Probe {
            run: 7,
            session: 3,
            spurt: 42,
            index: 9,
            talker: 11,
            sent_ns: 1_700_000_000_123_456_789,
            grant_ns: 1_700_000_000_000_000_000,
        };
        let mut packet = vec![0u8; 12 + 160];
        write_header(&mut packet, true, 8, 65535, 4_000_000_000, 0xdead_beef);
        write_probe(&probe, &mut packet[12..]);
        let header = parse_header(&packet).expect("RTP");
        assert!(header.marker);
        assert_eq!(
            (header.payload_type, header.seq, header.timestamp, header.ssrc),
            (8, 65535, 4_000_000_000, 0xdead_beef)
        );
        let payload = &packet[header.payload_start..header.payload_end];
        assert_eq!(read_probe(payload), Some((probe, true)));
        let mut tampered = payload.to_vec();
        tampered[100] ^= 1;
        assert_eq!(read_probe(&tampered), Some((probe, false)));
        assert!(read_probe(&payload[..20]).is_none());
    }

    #[test]
    fn csrc_and_extension_are_skipped() {
        // CC=1 and X=1 with one extension word, as a group bridge may send.
        let mut packet = vec![0x91, 0x80, 0, 1, 0, 0, 0, 160, 0, 0, 0, 1];
        packet.extend_from_slice(&[0x3a, 0x1f, 0x0c, 0x22]);
        packet.extend_from_slice(&[0xbe, 0xde, 0, 1, 1, 2, 3, 4]);
        packet.extend_from_slice(b"payload");
        let header = parse_header(&packet).expect("RTP");
        assert_eq!(&packet[header.payload_start..header.payload_end], b"payload");
        assert!(is_rtcp(&[0x81, 0xc8]));
        assert!(!is_rtcp(&packet));
    }
}
