//! The engine's vocabulary shared by the control plane and the workers: identifiers, leg and
//! bridge descriptions, events up, statistics snapshots.

use std::net::SocketAddr;
use std::time::Duration;

use crate::config::SourceCheck;
use crate::media::codec::Codec;
use crate::media::stats::{Counters, Quality};

/// A leg: one media endpoint of a call on this node (a local RTP port, RTCP on the next port
/// or multiplexed, a remote address, negotiated payload types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LegId(pub u64);

/// A bridge: the legs of one call and how media flows between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BridgeId(pub u64);

impl std::fmt::Display for LegId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "leg-{}", self.0)
    }
}

impl std::fmt::Display for BridgeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bridge-{}", self.0)
    }
}

/// How media flows in a bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BridgeKind {
    /// Single call (F-UP-01): two legs, RTP and RTCP of each sent out of the other unchanged.
    Relay,
    /// Group call (F-UP-02/03): only the current source's RTP goes to every fan-out leg except
    /// the source itself, rewritten into each listener's own continuous stream.
    Group(GroupOptions),
}

/// Options of a group bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupOptions {
    /// RTP clock rate of the group's audio codec (timestamps advance by wall-clock time
    /// at this rate across talker switches).
    pub clock_rate: u32,
    /// Put the talker's SSRC in the CSRC list of forwarded packets (when they carry none).
    pub talker_csrc: bool,
    /// Report the talker silent after this long without RTP from it (floor timer).
    pub talker_inactivity: Duration,
    /// Packet time, used as the minimum timestamp advance across a switch until a real
    /// spacing is observed.
    pub ptime: Duration,
    /// After a source switch, how long the previous source is still forwarded if the new one
    /// has not sent yet (its last packets may still be on their way when the switch is
    /// ordered); zero: the switch cuts at once.
    pub handover: Duration,
}

impl Default for GroupOptions {
    fn default() -> Self {
        Self {
            clock_rate: 8000,
            talker_csrc: true,
            talker_inactivity: Duration::from_secs(4),
            ptime: Duration::from_millis(20),
            handover: Duration::ZERO,
        }
    }
}

/// Where a leg's media goes and what it accepts.
#[derive(Debug, Clone, PartialEq)]
pub struct LegSpec {
    /// Remote RTP address (from SDP), if known yet.
    pub remote: Option<SocketAddr>,
    /// Remote RTCP address; `None`: RTP port + 1 (or the RTP address with `rtcp_mux`).
    pub remote_rtcp: Option<SocketAddr>,
    /// RTP and RTCP share one port (RFC 5761); no RTCP port is allocated.
    pub rtcp_mux: bool,
    /// Source checking; `None`: the node's default.
    pub source_check: Option<SourceCheck>,
    /// Negotiated payload types; empty: pass payload types through unchanged.
    pub payload_types: Vec<(u8, Codec)>,
    /// In a group bridge: whether this leg receives the fan-out (false for a leg that only
    /// ever sends, such as a talker uplink).
    pub fanout: bool,
    /// In a group bridge: the peer this leg talks to, as a number the caller picks (0: none).
    /// What one leg of a peer sends never goes out of another leg of the same peer (a talker's
    /// voice is not sent back down its own TCF's downlink).
    pub peer: u32,
    /// In a relay bridge: a monitoring tap (F-MON-02). It receives a copy of every RTP
    /// packet of both sides (not RTCP), and nothing it sends goes into the call (dropped,
    /// counted as `tap_input`). At most [`MAX_TAPS`] per bridge; ignored in group bridges.
    pub tap: bool,
}

/// Most tap legs one relay bridge takes.
pub const MAX_TAPS: usize = 4;

impl Default for LegSpec {
    fn default() -> Self {
        Self {
            remote: None,
            remote_rtcp: None,
            rtcp_mux: false,
            source_check: None,
            payload_types: Vec::new(),
            fanout: true,
            peer: 0,
            tap: false,
        }
    }
}

/// What the engine allocated for a new leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LegInfo {
    /// The leg.
    pub id: LegId,
    /// Local RTP address (put it in the SDP).
    pub local_rtp: SocketAddr,
    /// Local RTCP address (the RTP address with rtcp-mux).
    pub local_rtcp: SocketAddr,
    /// SSRC of the stream the engine originates on this leg (group bridges).
    pub ssrc: u32,
}

/// Something the control plane needs to know, reported by a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The first packet of a talk spurt arrived from the floor holder.
    TalkerFirstPacket {
        /// The group bridge.
        bridge: BridgeId,
        /// The holder's leg.
        leg: LegId,
        /// The SSRC it sends with.
        ssrc: u32,
    },
    /// No RTP from the floor holder for the bridge's inactivity time (once per spurt).
    TalkerSilent {
        /// The group bridge.
        bridge: BridgeId,
        /// The holder's leg.
        leg: LegId,
        /// Time since its last packet.
        silent_for: Duration,
    },
    /// A latching leg locked onto its first source address.
    Latched {
        /// The leg.
        leg: LegId,
        /// The address it latched.
        remote: SocketAddr,
    },
}

/// A snapshot of one leg.
#[derive(Debug, Clone, PartialEq)]
pub struct LegStats {
    /// The leg.
    pub id: LegId,
    /// Its bridge.
    pub bridge: BridgeId,
    /// Current remote RTP address.
    pub remote: Option<SocketAddr>,
    /// Counters.
    pub counters: Counters,
    /// RTCP-derived quality figures.
    pub quality: Quality,
}

/// A snapshot of one bridge.
#[derive(Debug, Clone, PartialEq)]
pub struct BridgeStats {
    /// The bridge.
    pub id: BridgeId,
    /// Relay or group.
    pub kind: BridgeKind,
    /// Number of legs.
    pub legs: usize,
    /// Current floor holder (group bridges).
    pub holder: Option<LegId>,
    /// Source switches so far.
    pub switches: u64,
    /// Sum of its legs' counters.
    pub counters: Counters,
}

/// A snapshot of one worker.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkerStats {
    /// Worker index.
    pub worker: usize,
    /// Totals since start, including legs already removed.
    pub totals: Counters,
    /// Legs (empty unless asked for).
    pub legs: Vec<LegStats>,
    /// Bridges.
    pub bridges: Vec<BridgeStats>,
    /// Loop turns (wake-ups) so far.
    pub wakeups: u64,
    /// Events that could not be delivered because the control plane was not reading.
    pub events_lost: u64,
}
