//! Counters: per leg and per bridge in the worker that owns them (plain integers, no atomics, no
//! locks: only that worker writes them), collected into snapshots on demand for `/metrics`.

/// Why a packet was dropped. Every drop is counted under exactly one cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
#[non_exhaustive]
pub enum DropCause {
    /// Not valid RTP (short, bad version, CSRC/extension/padding lengths that lie).
    MalformedRtp = 0,
    /// Not a valid RTCP compound packet.
    MalformedRtcp = 1,
    /// From an address that is not the leg's remote (strict) or latched address.
    SourceMismatch = 2,
    /// RTP from a leg that does not hold the floor.
    NotHolder = 3,
    /// Older than the current talk spurt or the reorder window.
    Late = 4,
    /// A sequence number already forwarded.
    Duplicate = 5,
    /// A payload type not negotiated on the receiving leg.
    UnknownPayloadType = 6,
    /// The codec is not negotiated on this listener leg.
    CodecMismatch = 7,
    /// Nowhere to send it: the destination leg has no remote address yet.
    NoDestination = 8,
    /// The kernel refused the send (full socket buffer, unreachable, ...).
    SendFailed = 9,
    /// Larger than the receive buffer.
    Truncated = 10,
    /// Dropped by the kernel because the socket's receive queue was full (overload).
    KernelOverflow = 11,
    /// Arrived at a pooled port that no leg uses (a released port in quarantine or idle):
    /// late media of an ended call, or a stray sender. Never forwarded.
    IdlePort = 12,
    /// Sent by a monitoring tap leg of a relay bridge: a tap only listens.
    TapInput = 13,
}

/// Number of [`DropCause`] variants.
pub const DROP_CAUSES: usize = 14;

impl DropCause {
    /// Every cause, in order.
    pub const ALL: [DropCause; DROP_CAUSES] = [
        DropCause::MalformedRtp,
        DropCause::MalformedRtcp,
        DropCause::SourceMismatch,
        DropCause::NotHolder,
        DropCause::Late,
        DropCause::Duplicate,
        DropCause::UnknownPayloadType,
        DropCause::CodecMismatch,
        DropCause::NoDestination,
        DropCause::SendFailed,
        DropCause::Truncated,
        DropCause::KernelOverflow,
        DropCause::IdlePort,
        DropCause::TapInput,
    ];

    /// Label used in metrics.
    pub fn name(self) -> &'static str {
        match self {
            DropCause::MalformedRtp => "malformed_rtp",
            DropCause::MalformedRtcp => "malformed_rtcp",
            DropCause::SourceMismatch => "source_mismatch",
            DropCause::NotHolder => "not_holder",
            DropCause::Late => "late",
            DropCause::Duplicate => "duplicate",
            DropCause::UnknownPayloadType => "unknown_payload_type",
            DropCause::CodecMismatch => "codec_mismatch",
            DropCause::NoDestination => "no_destination",
            DropCause::SendFailed => "send_failed",
            DropCause::Truncated => "truncated",
            DropCause::KernelOverflow => "kernel_overflow",
            DropCause::IdlePort => "idle_port",
            DropCause::TapInput => "tap_input",
        }
    }
}

/// Packet and byte counters with drops by cause.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// RTP packets received.
    pub rtp_in_packets: u64,
    /// RTP bytes received.
    pub rtp_in_bytes: u64,
    /// RTP packets sent.
    pub rtp_out_packets: u64,
    /// RTP bytes sent.
    pub rtp_out_bytes: u64,
    /// RTCP packets received.
    pub rtcp_in_packets: u64,
    /// RTCP packets sent (relayed or generated).
    pub rtcp_out_packets: u64,
    /// Drops, indexed by [`DropCause`].
    pub drops: [u64; DROP_CAUSES],
}

impl Counters {
    /// Counts one drop.
    #[inline]
    pub fn drop(&mut self, cause: DropCause) {
        self.drops[cause as usize] += 1;
    }

    /// Drops of one cause.
    pub fn drops(&self, cause: DropCause) -> u64 {
        self.drops[cause as usize]
    }

    /// All drops.
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }

    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &Counters) {
        self.rtp_in_packets += other.rtp_in_packets;
        self.rtp_in_bytes += other.rtp_in_bytes;
        self.rtp_out_packets += other.rtp_out_packets;
        self.rtp_out_bytes += other.rtp_out_bytes;
        self.rtcp_in_packets += other.rtcp_in_packets;
        self.rtcp_out_packets += other.rtcp_out_packets;
        for (total, value) in self.drops.iter_mut().zip(other.drops.iter()) {
            *total += value;
        }
    }
}

/// What the far end of a leg reported about the stream we send it (RTCP RR/SR report block),
/// and what we measured on the stream it sends us.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Quality {
    /// Fraction lost the far end last reported, 0.0-1.0.
    pub remote_fraction_lost: f64,
    /// Cumulative packets lost the far end last reported.
    pub remote_cumulative_lost: i32,
    /// Interarrival jitter the far end last reported, milliseconds.
    pub remote_jitter_ms: f64,
    /// Round-trip time from the last report block (RFC 3550 6.4.1), milliseconds.
    pub round_trip_ms: Option<f64>,
    /// Packets we expected on the incoming stream.
    pub local_expected: u64,
    /// Packets lost on the incoming stream (expected - received).
    pub local_lost: i64,
    /// Our interarrival jitter estimate for the incoming stream, milliseconds.
    pub local_jitter_ms: f64,
}
