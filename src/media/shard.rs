//! The sans-IO state of one media worker: its legs and bridges, the per-packet decisions, RTCP
//! and timers.
//!
//! Drive contract: the worker hands every received batch to [`Shard::on_rtp`] /
//! [`Shard::on_rtcp`] with the current [`Now`], then sends what the [`OutBatch`] holds and
//! reports the outcome with [`Shard::sent`]; it calls [`Shard::poll_timers`] whenever the deadline
//! it last returned has passed. Events go into the `events` sink given to each call. Nothing here
//! reads the clock, touches a socket or allocates on the per-packet path.

use crate::proto::NetMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::config::SourceCheck;
use crate::media::api::{
    BridgeId, BridgeKind, BridgeStats, Event, GroupOptions, LegId, LegSpec, LegStats, WorkerStats, MAX_TAPS,
};
use crate::media::codec::PayloadMap;
use crate::media::out::{Channel, OutBatch, RxSlice};
use crate::media::rewrite::{ns_to_ts, Admit, ListenerStream, SourceGate};
use crate::media::rtcp::{self, ReceiverStats, ReportBlock};
use crate::media::rtp::{self, RtpView};
use crate::media::stats::{Counters, DropCause, Quality};

/// The time of a loop turn, read once by the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Monotonic clock, nanoseconds since an arbitrary start.
    pub mono_ns: u64,
    /// Wall clock, nanoseconds since the Unix epoch (for RTCP NTP timestamps).
    pub unix_ns: u64,
}

/// A received datagram, as handed to the shard.
#[derive(Debug, Clone, Copy)]
pub struct RxPacket<'a> {
    /// Its bytes.
    pub data: &'a [u8],
    /// Its source address.
    pub from: SocketAddr,
    /// Index of the receive buffer holding it (bodies of outgoing messages point there).
    pub buffer: u32,
    /// The datagram was larger than the buffer.
    pub truncated: bool,
}

/// A batch of received datagrams (the I/O layer's receive buffers, or a slice in tests).
pub trait RxBatch {
    /// Number of datagrams.
    fn len(&self) -> usize;
    /// Whether there are none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Datagram `index`.
    fn packet(&self, index: usize) -> Option<RxPacket<'_>>;
}

impl RxBatch for [RxPacket<'_>] {
    fn len(&self) -> usize {
        <[RxPacket<'_>]>::len(self)
    }

    fn packet(&self, index: usize) -> Option<RxPacket<'_>> {
        self.get(index).copied()
    }
}

/// Numbering of a stream the engine originates (RFC 3550: random initial values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamOrigin {
    /// SSRC.
    pub ssrc: u32,
    /// First sequence number.
    pub seq: u16,
    /// First timestamp.
    pub timestamp: u32,
}

/// Settings of a shard.
#[derive(Debug, Clone)]
pub struct ShardConfig {
    /// Mean RTCP report interval.
    pub rtcp_interval: Duration,
    /// Default source checking for legs that don't specify one.
    pub default_source_check: SourceCheck,
    /// RTCP CNAME (node name), at most 255 bytes.
    pub cname: String,
    /// Seed for RTCP interval randomisation.
    pub seed: u64,
}

/// Longest RTP header the engine writes: 12 bytes + 15 CSRCs.
const MAX_HEADER: usize = 12 + 15 * 4;
/// Most packets of one receive batch the shard tracks at once.
pub const MAX_BATCH: usize = 1024;

#[derive(Debug)]
struct Leg {
    id: LegId,
    bridge: u32,
    remote: Option<SocketAddr>,
    remote_rtcp: Option<SocketAddr>,
    explicit_rtcp: bool,
    rtcp_mux: bool,
    source_check: SourceCheck,
    latched_rtp: bool,
    latched_rtcp: bool,
    payload: PayloadMap,
    fanout: bool,
    peer: u32,
    /// A monitoring tap of a relay bridge (fixed at creation).
    tap: bool,
    out: ListenerStream,
    incoming: ReceiverStats,
    incoming_ssrc: Option<u32>,
    last_sr: u32,
    last_sr_arrival_ns: u64,
    quality: Quality,
    next_rtcp_ns: u64,
    counters: Counters,
}

impl Leg {
    fn rtcp_destination(&self) -> Option<SocketAddr> {
        if self.rtcp_mux {
            return self.remote;
        }
        self.remote_rtcp
    }

    fn apply_spec(&mut self, spec: &LegSpec, default_check: SourceCheck) {
        self.remote = spec.remote;
        self.explicit_rtcp = spec.remote_rtcp.is_some();
        self.remote_rtcp = spec.remote_rtcp.or_else(|| rtcp_next_port(spec.remote, spec.rtcp_mux));
        self.source_check = spec.source_check.unwrap_or(default_check);
        self.latched_rtp = false;
        self.latched_rtcp = false;
        self.payload = PayloadMap::new(&spec.payload_types);
        self.fanout = spec.fanout;
        self.peer = spec.peer;
    }
}

fn rtcp_next_port(remote: Option<SocketAddr>, mux: bool) -> Option<SocketAddr> {
    let mut address = remote?;
    if !mux {
        address.set_port(address.port().checked_add(1)?);
    }
    Some(address)
}

#[derive(Debug)]
struct Bridge {
    id: BridgeId,
    kind: BridgeKind,
    legs: Vec<u32>,
    gate: SourceGate,
    frame_ts: u32,
    /// How long a switched-from source is still forwarded (0: not at all).
    handover_ns: u64,
    switches: u64,
    talker_last_ns: u64,
    talker_active: bool,
    talker_silent_reported: bool,
}

/// One admitted packet of a batch, waiting for the fan-out pass.
#[derive(Debug, Clone, Copy, Default)]
struct Accepted {
    index: u16,
    spurt: u32,
    seq: u16,
    timestamp: u32,
    marker: bool,
    payload_type: u8,
    first_byte: u8,
    ssrc: u32,
    csrc_end: u16,
    payload_len: u16,
}

/// The legs and bridges of one worker.
#[derive(Debug)]
pub struct Shard {
    config: ShardConfig,
    legs: Vec<Option<Leg>>,
    free_legs: Vec<u32>,
    bridges: Vec<Option<Bridge>>,
    free_bridges: Vec<u32>,
    leg_slots: NetMap<LegId, u32>,
    bridge_slots: NetMap<BridgeId, u32>,
    /// Counters of legs already removed, so totals never go backwards.
    retired: Counters,
    accepted: Vec<Accepted>,
    rng: u64,
    next_timer_ns: u64,
}

/// Errors of shard commands (control path).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ShardError {
    /// No such bridge on this shard.
    #[error("unknown bridge")]
    UnknownBridge,
    /// No such leg on this shard.
    #[error("unknown leg")]
    UnknownLeg,
    /// The identifier is already in use.
    #[error("identifier already in use")]
    Duplicate,
    /// A relay bridge already has its two legs (or its [`MAX_TAPS`] taps).
    #[error("a relay bridge takes exactly two legs and at most four taps")]
    RelayFull,
    /// The leg is not in that bridge.
    #[error("leg is not in that bridge")]
    NotInBridge,
}

impl Shard {
    /// An empty shard.
    pub fn new(config: ShardConfig) -> Self {
        let rng = config.seed | 1;
        Self {
            config,
            legs: Vec::new(),
            free_legs: Vec::new(),
            bridges: Vec::new(),
            free_bridges: Vec::new(),
            leg_slots: NetMap::default(),
            bridge_slots: NetMap::default(),
            retired: Counters::default(),
            accepted: Vec::with_capacity(MAX_BATCH),
            rng,
            next_timer_ns: 0,
        }
    }

    fn random(&mut self) -> u64 {
        // xorshift64*: cheap, good enough for SSRCs and timer jitter (not for secrets).
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Number of legs.
    pub fn leg_count(&self) -> usize {
        self.leg_slots.len()
    }

    /// Number of bridges.
    pub fn bridge_count(&self) -> usize {
        self.bridge_slots.len()
    }

    /// The slot of a leg (the worker's index for its sockets).
    pub fn leg_slot(&self, id: LegId) -> Option<u32> {
        self.leg_slots.get(&id).copied()
    }

    /// Adds a bridge.
    pub fn add_bridge(&mut self, id: BridgeId, kind: BridgeKind) -> Result<(), ShardError> {
        if self.bridge_slots.contains_key(&id) {
            return Err(ShardError::Duplicate);
        }
        let (frame_ts, handover_ns) = match kind {
            BridgeKind::Group(GroupOptions {
                clock_rate,
                ptime,
                handover,
                ..
            }) => (
                ns_to_ts(ptime.as_nanos() as u64, clock_rate).max(1),
                handover.as_nanos() as u64,
            ),
            BridgeKind::Relay => (160, 0),
        };
        let bridge = Bridge {
            id,
            kind,
            legs: Vec::new(),
            gate: SourceGate::new(),
            frame_ts,
            handover_ns,
            switches: 0,
            talker_last_ns: 0,
            talker_active: false,
            talker_silent_reported: false,
        };
        let slot = occupy(&mut self.bridges, &mut self.free_bridges, bridge);
        self.bridge_slots.insert(id, slot);
        Ok(())
    }

    /// Removes a bridge and its legs; returns the slots of the removed legs (their sockets
    /// are to be closed).
    pub fn remove_bridge(&mut self, id: BridgeId) -> Result<Vec<u32>, ShardError> {
        let slot = self.bridge_slots.remove(&id).ok_or(ShardError::UnknownBridge)?;
        let bridge = self.bridges[slot as usize].take().ok_or(ShardError::UnknownBridge)?;
        self.free_bridges.push(slot);
        for &leg_slot in &bridge.legs {
            if let Some(leg) = self.legs[leg_slot as usize].take() {
                self.retired.add(&leg.counters);
                self.leg_slots.remove(&leg.id);
                self.free_legs.push(leg_slot);
            }
        }
        Ok(bridge.legs)
    }

    /// Adds a leg to a bridge; returns its slot. `origin` numbers the stream the engine
    /// originates on it (random, chosen by the caller).
    pub fn add_leg(
        &mut self,
        id: LegId,
        bridge: BridgeId,
        spec: &LegSpec,
        origin: StreamOrigin,
        now: Now,
    ) -> Result<u32, ShardError> {
        if self.leg_slots.contains_key(&id) {
            return Err(ShardError::Duplicate);
        }
        let bridge_slot = *self.bridge_slots.get(&bridge).ok_or(ShardError::UnknownBridge)?;
        let (frame_ts, relay, relay_full) = {
            let bridge = self.bridges[bridge_slot as usize]
                .as_ref()
                .ok_or(ShardError::UnknownBridge)?;
            let relay = bridge.kind == BridgeKind::Relay;
            let taps = bridge
                .legs
                .iter()
                .filter(|&&other| {
                    self.legs
                        .get(other as usize)
                        .and_then(Option::as_ref)
                        .is_some_and(|leg| leg.tap)
                })
                .count();
            let full = if spec.tap {
                taps >= MAX_TAPS
            } else {
                bridge.legs.len() - taps >= 2
            };
            (bridge.frame_ts, relay, relay && full)
        };
        if relay_full {
            return Err(ShardError::RelayFull);
        }
        let first_report = now.mono_ns + self.rtcp_delay();
        let mut leg = Leg {
            id,
            bridge: bridge_slot,
            remote: None,
            remote_rtcp: None,
            explicit_rtcp: false,
            rtcp_mux: spec.rtcp_mux,
            source_check: SourceCheck::Strict,
            latched_rtp: false,
            latched_rtcp: false,
            payload: PayloadMap::transparent(),
            fanout: true,
            peer: 0,
            tap: false,
            out: ListenerStream::new(origin.ssrc, origin.seq, origin.timestamp, frame_ts),
            incoming: ReceiverStats::default(),
            incoming_ssrc: None,
            last_sr: 0,
            last_sr_arrival_ns: 0,
            quality: Quality::default(),
            next_rtcp_ns: first_report,
            counters: Counters::default(),
        };
        leg.apply_spec(spec, self.config.default_source_check);
        leg.tap = spec.tap && relay;
        let slot = occupy(&mut self.legs, &mut self.free_legs, leg);
        self.leg_slots.insert(id, slot);
        if let Some(bridge) = self.bridges[bridge_slot as usize].as_mut() {
            bridge.legs.push(slot);
        }
        Ok(slot)
    }

    /// Replaces a leg's remote addresses, source checking, payload types and fan-out flag
    /// (after a re-INVITE). Latching starts again from the new remote.
    pub fn update_leg(&mut self, id: LegId, spec: &LegSpec) -> Result<(), ShardError> {
        let slot = *self.leg_slots.get(&id).ok_or(ShardError::UnknownLeg)?;
        let default_check = self.config.default_source_check;
        let leg = self.legs[slot as usize].as_mut().ok_or(ShardError::UnknownLeg)?;
        leg.apply_spec(spec, default_check);
        Ok(())
    }

    /// Removes a leg; returns its slot (its sockets are to be closed).
    pub fn remove_leg(&mut self, id: LegId) -> Result<u32, ShardError> {
        let slot = self.leg_slots.remove(&id).ok_or(ShardError::UnknownLeg)?;
        let leg = self.legs[slot as usize].take().ok_or(ShardError::UnknownLeg)?;
        self.retired.add(&leg.counters);
        self.free_legs.push(slot);
        if let Some(bridge) = self.bridges.get_mut(leg.bridge as usize).and_then(Option::as_mut) {
            bridge.legs.retain(|&other| other != slot);
            if bridge.gate.holder() == Some(slot) {
                bridge.talker_active = false;
                bridge.switches += 1;
            }
            bridge.gate.forget(slot);
        }
        Ok(slot)
    }

    /// Sets (or clears) the leg whose RTP a group bridge forwards. Takes effect for the next
    /// packet; with a handover time in the bridge's options, the previous source is still
    /// forwarded until the new one's first packet or for that long after `now`.
    pub fn set_source(&mut self, bridge: BridgeId, leg: Option<LegId>, now: Now) -> Result<(), ShardError> {
        let bridge_slot = *self.bridge_slots.get(&bridge).ok_or(ShardError::UnknownBridge)?;
        let leg_slot = match leg {
            Some(id) => {
                let slot = *self.leg_slots.get(&id).ok_or(ShardError::UnknownLeg)?;
                let in_bridge = self.legs[slot as usize]
                    .as_ref()
                    .is_some_and(|leg| leg.bridge == bridge_slot);
                if !in_bridge {
                    return Err(ShardError::NotInBridge);
                }
                Some(slot)
            }
            None => None,
        };
        let bridge = self.bridges[bridge_slot as usize]
            .as_mut()
            .ok_or(ShardError::UnknownBridge)?;
        if bridge.gate.holder() != leg_slot {
            if bridge.handover_ns > 0 {
                bridge
                    .gate
                    .set_holder_handing_over(leg_slot, now.mono_ns.saturating_add(bridge.handover_ns));
            } else {
                bridge.gate.set_holder(leg_slot);
            }
            bridge.switches += 1;
            bridge.talker_active = false;
            bridge.talker_silent_reported = false;
        }
        Ok(())
    }

    /// Handles a batch of datagrams received on a leg's RTP socket.
    pub fn on_rtp(
        &mut self,
        slot: u32,
        packets: &(impl RxBatch + ?Sized),
        now: Now,
        out: &mut OutBatch,
        events: &mut impl FnMut(Event),
    ) {
        let Some(Some(leg)) = self.legs.get(slot as usize) else {
            return;
        };
        let bridge_slot = leg.bridge;
        let is_group = matches!(
            self.bridges
                .get(bridge_slot as usize)
                .and_then(Option::as_ref)
                .map(|bridge| bridge.kind),
            Some(BridgeKind::Group(_))
        );
        if is_group {
            self.group_rtp(slot, bridge_slot, packets, now, out, events);
        } else {
            self.relay(slot, bridge_slot, Channel::Rtp, packets, now, out, events);
        }
    }

    /// Handles a batch of datagrams received on a leg's RTCP socket.
    pub fn on_rtcp(
        &mut self,
        slot: u32,
        packets: &(impl RxBatch + ?Sized),
        now: Now,
        out: &mut OutBatch,
        events: &mut impl FnMut(Event),
    ) {
        let Some(Some(leg)) = self.legs.get(slot as usize) else {
            return;
        };
        let bridge_slot = leg.bridge;
        let clock_rate = match self
            .bridges
            .get(bridge_slot as usize)
            .and_then(Option::as_ref)
            .map(|bridge| bridge.kind)
        {
            Some(BridgeKind::Group(options)) => options.clock_rate,
            _ => {
                self.relay(slot, bridge_slot, Channel::Rtcp, packets, now, out, events);
                return;
            }
        };
        for index in 0..packets.len() {
            let Some(packet) = packets.packet(index) else { continue };
            let Some(leg) = self.legs[slot as usize].as_mut() else {
                return;
            };
            if !check_source(leg, Channel::Rtcp, packet.from, events) {
                continue;
            }
            leg.counters.rtcp_in_packets += 1;
            if packet.truncated {
                leg.counters.drop(DropCause::Truncated);
                continue;
            }
            read_rtcp(leg, packet.data, now, clock_rate);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn relay(
        &mut self,
        slot: u32,
        bridge_slot: u32,
        channel: Channel,
        packets: &(impl RxBatch + ?Sized),
        now: Now,
        out: &mut OutBatch,
        events: &mut impl FnMut(Event),
    ) {
        // The other side, and the taps with their destinations (fixed-size: no allocation).
        let mut other_slot = None;
        let mut taps = [(0u32, None::<SocketAddr>); MAX_TAPS];
        let mut tap_count = 0;
        if let Some(bridge) = self.bridges.get(bridge_slot as usize).and_then(Option::as_ref) {
            for &other in &bridge.legs {
                let Some(other_leg) = self.legs.get(other as usize).and_then(Option::as_ref) else {
                    continue;
                };
                if other == slot {
                    continue;
                }
                if other_leg.tap {
                    if let Some(entry) = taps.get_mut(tap_count) {
                        *entry = (other, other_leg.remote);
                        tap_count += 1;
                    }
                } else if other_slot.is_none() {
                    other_slot = Some(other);
                }
            }
        }
        let mut destinations = [None, None];
        if let Some(other) = other_slot
            .and_then(|other| self.legs.get(other as usize))
            .and_then(Option::as_ref)
        {
            destinations = [other.remote, other.rtcp_destination()];
        }
        let Some(leg) = self.legs[slot as usize].as_mut() else {
            return;
        };
        if leg.tap {
            // A tap only listens: whatever its DC sends is counted and dropped.
            for index in 0..packets.len() {
                let Some(packet) = packets.packet(index) else { continue };
                if !check_source(leg, channel, packet.from, events) {
                    continue;
                }
                if channel == Channel::Rtcp || rtp::is_rtcp(packet.data) {
                    leg.counters.rtcp_in_packets += 1;
                } else {
                    leg.counters.rtp_in_packets += 1;
                    leg.counters.rtp_in_bytes += packet.data.len() as u64;
                }
                leg.counters.drop(DropCause::TapInput);
            }
            return;
        }
        let copy = taps.iter().take(tap_count).any(|(_, remote)| remote.is_some());
        self.accepted.clear();
        for index in 0..packets.len() {
            let Some(packet) = packets.packet(index) else { continue };
            if !check_source(leg, channel, packet.from, events) {
                continue;
            }
            if packet.truncated {
                leg.counters.drop(DropCause::Truncated);
                continue;
            }
            // With rtcp-mux, RTCP arrives on the RTP socket (RFC 5761 demultiplexing).
            let rtcp = channel == Channel::Rtcp || rtp::is_rtcp(packet.data);
            if rtcp {
                leg.counters.rtcp_in_packets += 1;
                if !read_rtcp(leg, packet.data, now, 8000) {
                    continue;
                }
            } else {
                leg.counters.rtp_in_packets += 1;
                leg.counters.rtp_in_bytes += packet.data.len() as u64;
                let Ok(view) = RtpView::parse(packet.data) else {
                    leg.counters.drop(DropCause::MalformedRtp);
                    continue;
                };
                let clock_rate = leg
                    .payload
                    .codec(view.payload_type())
                    .map_or(8000, |codec| codec.clock_rate());
                note_incoming(leg, &view, now, clock_rate);
                // Copied to the taps after this pass (one run per tap socket).
                if copy && self.accepted.len() < MAX_BATCH {
                    self.accepted.push(Accepted {
                        index: index as u16,
                        ..Accepted::default()
                    });
                }
            }
            let (Some(other), Some(destination)) = (other_slot, destinations[usize::from(rtcp)]) else {
                leg.counters.drop(DropCause::NoDestination);
                continue;
            };
            let body = RxSlice {
                buffer: packet.buffer,
                start: 0,
                end: packet.data.len() as u32,
            };
            let out_channel = if rtcp { Channel::Rtcp } else { Channel::Rtp };
            out.push_body(other, out_channel, destination, body);
        }
        for &(tap, remote) in taps.iter().take(tap_count) {
            let Some(destination) = remote else { continue };
            for accepted in &self.accepted {
                let Some(packet) = packets.packet(usize::from(accepted.index)) else {
                    continue;
                };
                let body = RxSlice {
                    buffer: packet.buffer,
                    start: 0,
                    end: packet.data.len() as u32,
                };
                out.push_body(tap, Channel::Rtp, destination, body);
            }
        }
    }

    fn group_rtp(
        &mut self,
        slot: u32,
        bridge_slot: u32,
        packets: &(impl RxBatch + ?Sized),
        now: Now,
        out: &mut OutBatch,
        events: &mut impl FnMut(Event),
    ) {
        let Some(Some(bridge)) = self.bridges.get_mut(bridge_slot as usize) else {
            return;
        };
        let Some(leg) = self.legs[slot as usize].as_mut() else {
            return;
        };
        let BridgeKind::Group(options) = bridge.kind else {
            return;
        };
        self.accepted.clear();
        for index in 0..packets.len().min(MAX_BATCH) {
            let Some(packet) = packets.packet(index) else { continue };
            if !check_source(leg, Channel::Rtp, packet.from, events) {
                continue;
            }
            if packet.truncated {
                leg.counters.drop(DropCause::Truncated);
                continue;
            }
            if rtp::is_rtcp(packet.data) {
                leg.counters.rtcp_in_packets += 1;
                read_rtcp(leg, packet.data, now, options.clock_rate);
                continue;
            }
            leg.counters.rtp_in_packets += 1;
            leg.counters.rtp_in_bytes += packet.data.len() as u64;
            let Ok(view) = RtpView::parse(packet.data) else {
                leg.counters.drop(DropCause::MalformedRtp);
                continue;
            };
            note_incoming(leg, &view, now, options.clock_rate);
            if !leg.payload.is_transparent() && leg.payload.codec(view.payload_type()).is_none() {
                leg.counters.drop(DropCause::UnknownPayloadType);
                continue;
            }
            match bridge.gate.admit_at(slot, view.ssrc(), view.sequence(), now.mono_ns) {
                Admit::Forward { spurt, first } => {
                    let holder = bridge.gate.holder() == Some(slot);
                    if first && holder {
                        bridge.talker_active = true;
                        bridge.talker_silent_reported = false;
                        events(Event::TalkerFirstPacket {
                            bridge: bridge.id,
                            leg: leg.id,
                            ssrc: view.ssrc(),
                        });
                    }
                    if holder {
                        bridge.talker_last_ns = now.mono_ns;
                    }
                    let csrc_end = view.csrc_end();
                    self.accepted.push(Accepted {
                        index: index as u16,
                        spurt,
                        seq: view.sequence(),
                        timestamp: view.timestamp(),
                        marker: view.marker(),
                        payload_type: view.payload_type(),
                        first_byte: packet.data.first().copied().unwrap_or(0),
                        ssrc: view.ssrc(),
                        csrc_end: csrc_end as u16,
                        payload_len: view.payload().len() as u16,
                    });
                }
                Admit::NotHolder => leg.counters.drop(DropCause::NotHolder),
                Admit::Duplicate => leg.counters.drop(DropCause::Duplicate),
                Admit::Late => leg.counters.drop(DropCause::Late),
            }
        }
        if self.accepted.is_empty() {
            return;
        }
        // Fan-out pass, listener by listener so that each listener's messages are adjacent
        // (one sendmmsg per listener socket carries the whole batch).
        let talker_payload = leg.payload.clone();
        let talker_peer = leg.peer;
        let mut header = [0u8; MAX_HEADER];
        for &listener_slot in &bridge.legs {
            if listener_slot == slot {
                continue; // never back to the talker
            }
            let Some(Some(listener)) = self.legs.get_mut(listener_slot as usize) else {
                continue;
            };
            if !listener.fanout || (talker_peer != 0 && listener.peer == talker_peer) {
                continue; // nor to another leg of the talker's own peer
            }
            let Some(destination) = listener.remote else {
                listener.counters.drop(DropCause::NoDestination);
                continue;
            };
            for accepted in &self.accepted {
                let Some(packet) = packets.packet(usize::from(accepted.index)) else {
                    continue;
                };
                let Some(payload_type) = listener.payload.translate(&talker_payload, accepted.payload_type) else {
                    listener.counters.drop(DropCause::CodecMismatch);
                    continue;
                };
                let Some(rewritten) = listener.out.rewrite(
                    accepted.spurt,
                    accepted.seq,
                    accepted.timestamp,
                    accepted.marker,
                    usize::from(accepted.payload_len),
                    now.mono_ns,
                    options.clock_rate,
                ) else {
                    listener.counters.drop(DropCause::Late);
                    continue;
                };
                // CSRC list: keep the incoming one (it already names the talkers), or name the
                // talker when the bridge is configured to.
                let incoming_csrcs = packet.data.get(12..usize::from(accepted.csrc_end)).unwrap_or(&[]);
                let (csrc_count, csrc_bytes): (u8, &[u8]) = if !incoming_csrcs.is_empty() {
                    ((incoming_csrcs.len() / 4) as u8, incoming_csrcs)
                } else if options.talker_csrc {
                    (1, &[])
                } else {
                    (0, &[])
                };
                header[0] = (accepted.first_byte & 0xb0) | 0x80 | (csrc_count & 0x0f);
                header[1] = (u8::from(rewritten.marker) << 7) | (payload_type & 0x7f);
                header[2..4].copy_from_slice(&rewritten.seq.to_be_bytes());
                header[4..8].copy_from_slice(&rewritten.timestamp.to_be_bytes());
                header[8..12].copy_from_slice(&listener.out.ssrc().to_be_bytes());
                let mut length = 12;
                if csrc_bytes.is_empty() && csrc_count == 1 {
                    header[12..16].copy_from_slice(&accepted.ssrc.to_be_bytes());
                    length = 16;
                } else if let Some(target) = header.get_mut(12..12 + csrc_bytes.len()) {
                    target.copy_from_slice(csrc_bytes);
                    length = 12 + csrc_bytes.len();
                }
                let body = RxSlice {
                    buffer: packet.buffer,
                    start: u32::from(accepted.csrc_end),
                    end: packet.data.len() as u32,
                };
                out.push(listener_slot, Channel::Rtp, destination, &header[..length], Some(body));
            }
        }
    }

    /// How many messages one received packet on `slot` can produce (the bridge's size), so
    /// the worker can size its receive batch and bound the out batch.
    #[inline]
    pub fn fanout_width(&self, slot: u32) -> usize {
        self.legs
            .get(slot as usize)
            .and_then(Option::as_ref)
            .and_then(|leg| self.bridges.get(leg.bridge as usize))
            .and_then(Option::as_ref)
            .map_or(1, |bridge| bridge.legs.len().max(1))
    }

    /// Records the outcome of sending a run of messages from one leg's socket.
    #[inline]
    pub fn sent(&mut self, slot: u32, channel: Channel, packets: u64, bytes: u64, failed: u64) {
        let Some(Some(leg)) = self.legs.get_mut(slot as usize) else {
            return;
        };
        match channel {
            Channel::Rtp => {
                leg.counters.rtp_out_packets += packets;
                leg.counters.rtp_out_bytes += bytes;
            }
            Channel::Rtcp => leg.counters.rtcp_out_packets += packets,
        }
        leg.counters.drops[DropCause::SendFailed as usize] += failed;
    }

    /// Records the kernel's running count of datagrams dropped on a full receive queue of one
    /// of a leg's sockets (`SO_RXQ_OVFL`), as a delta since the last report.
    pub fn kernel_dropped(&mut self, slot: u32, dropped: u64) {
        if let Some(Some(leg)) = self.legs.get_mut(slot as usize) {
            leg.counters.drops[DropCause::KernelOverflow as usize] += dropped;
        }
    }

    /// Counts datagrams that arrived at a pooled port no leg uses (dropped unread, never
    /// forwarded); they go to the shard totals, no leg owns them.
    pub fn idle_dropped(&mut self, dropped: u64) {
        self.retired.drops[DropCause::IdlePort as usize] += dropped;
    }

    fn rtcp_delay(&mut self) -> u64 {
        // RFC 3550 6.3.1: randomise over [0.5, 1.5] times the interval.
        let interval = self.config.rtcp_interval.as_nanos() as u64;
        interval / 2 + self.random() % interval.max(1)
    }

    /// Runs timers: talker inactivity, RTCP reports. Returns when to call again
    /// (monotonic nanoseconds).
    #[must_use]
    pub fn poll_timers(&mut self, now: Now, out: &mut OutBatch, events: &mut impl FnMut(Event)) -> u64 {
        if now.mono_ns < self.next_timer_ns {
            return self.next_timer_ns;
        }
        let mut next = now.mono_ns + 1_000_000_000;
        for bridge in self.bridges.iter_mut().flatten() {
            let BridgeKind::Group(options) = bridge.kind else {
                continue;
            };
            if !bridge.talker_active || bridge.talker_silent_reported {
                continue;
            }
            let Some(holder) = bridge.gate.holder() else { continue };
            let limit = options.talker_inactivity.as_nanos() as u64;
            let silent_for = now.mono_ns.saturating_sub(bridge.talker_last_ns);
            if silent_for >= limit {
                bridge.talker_silent_reported = true;
                if let Some(Some(leg)) = self.legs.get(holder as usize) {
                    events(Event::TalkerSilent {
                        bridge: bridge.id,
                        leg: leg.id,
                        silent_for: Duration::from_nanos(silent_for),
                    });
                }
            } else {
                next = next.min(bridge.talker_last_ns + limit);
            }
        }
        let mut scratch = [0u8; 256];
        for slot in 0..self.legs.len() {
            let due = match &self.legs[slot] {
                Some(leg) => leg.next_rtcp_ns,
                None => continue,
            };
            if due > now.mono_ns {
                next = next.min(due);
                continue;
            }
            let delay = self.rtcp_delay();
            let cname = self.config.cname.as_bytes();
            let Some(leg) = self.legs[slot].as_mut() else { continue };
            leg.next_rtcp_ns = now.mono_ns + delay;
            next = next.min(leg.next_rtcp_ns);
            let is_group = matches!(
                self.bridges
                    .get(leg.bridge as usize)
                    .and_then(Option::as_ref)
                    .map(|bridge| bridge.kind),
                Some(BridgeKind::Group(_))
            );
            if !is_group {
                continue; // relayed calls carry the endpoints' own RTCP
            }
            let Some(destination) = leg.rtcp_destination() else {
                continue;
            };
            let clock_rate = match self
                .bridges
                .get(leg.bridge as usize)
                .and_then(Option::as_ref)
                .map(|b| b.kind)
            {
                Some(BridgeKind::Group(options)) => options.clock_rate,
                _ => 8000,
            };
            if let Some(length) = build_report(leg, now, clock_rate, cname, &mut scratch) {
                out.push(slot as u32, Channel::Rtcp, destination, &scratch[..length], None);
            }
        }
        self.next_timer_ns = next;
        next
    }

    /// Totals since start, removed legs included (walks every leg: call it rarely).
    pub fn totals(&self) -> Counters {
        let mut totals = self.retired;
        for leg in self.legs.iter().flatten() {
            totals.add(&leg.counters);
        }
        totals
    }

    /// Statistics of this shard (control path: allocates).
    pub fn snapshot(&self, worker: usize, with_legs: bool) -> WorkerStats {
        let mut totals = self.retired;
        let mut legs = Vec::new();
        for leg in self.legs.iter().flatten() {
            totals.add(&leg.counters);
            if with_legs {
                legs.push(self.leg_stats(leg));
            }
        }
        let bridges = self
            .bridges
            .iter()
            .flatten()
            .map(|bridge| {
                let mut counters = Counters::default();
                for &slot in &bridge.legs {
                    if let Some(Some(leg)) = self.legs.get(slot as usize) {
                        counters.add(&leg.counters);
                    }
                }
                BridgeStats {
                    id: bridge.id,
                    kind: bridge.kind,
                    legs: bridge.legs.len(),
                    holder: bridge
                        .gate
                        .holder()
                        .and_then(|slot| self.legs.get(slot as usize))
                        .and_then(Option::as_ref)
                        .map(|leg| leg.id),
                    switches: bridge.switches,
                    counters,
                }
            })
            .collect();
        WorkerStats {
            worker,
            totals,
            legs,
            bridges,
            wakeups: 0,
            events_lost: 0,
        }
    }

    /// Statistics of one leg.
    pub fn leg_snapshot(&self, id: LegId) -> Option<LegStats> {
        let slot = *self.leg_slots.get(&id)?;
        self.legs.get(slot as usize)?.as_ref().map(|leg| self.leg_stats(leg))
    }

    fn leg_stats(&self, leg: &Leg) -> LegStats {
        let bridge = self
            .bridges
            .get(leg.bridge as usize)
            .and_then(Option::as_ref)
            .map_or(BridgeId(0), |bridge| bridge.id);
        LegStats {
            id: leg.id,
            bridge,
            remote: leg.remote,
            counters: leg.counters,
            quality: leg.quality,
        }
    }
}

/// Puts `value` in a free slot of `slots` (reusing a freed one first); returns the slot.
fn occupy<T>(slots: &mut Vec<Option<T>>, free: &mut Vec<u32>, value: T) -> u32 {
    match free.pop() {
        Some(slot) => {
            slots[slot as usize] = Some(value);
            slot
        }
        None => {
            slots.push(Some(value));
            (slots.len() - 1) as u32
        }
    }
}

/// Source check (F-UP-06): strict legs accept only their remote address; latching legs lock
/// onto the first source seen. Counts and returns false on a mismatch.
#[inline]
fn check_source(leg: &mut Leg, channel: Channel, from: SocketAddr, events: &mut impl FnMut(Event)) -> bool {
    let expected = match channel {
        Channel::Rtp => leg.remote,
        Channel::Rtcp if leg.rtcp_mux => leg.remote,
        Channel::Rtcp => leg.remote_rtcp,
    };
    if expected == Some(from) {
        return true;
    }
    if leg.source_check == SourceCheck::Latch {
        match channel {
            Channel::Rtp | Channel::Rtcp if leg.rtcp_mux && !leg.latched_rtp => {
                leg.remote = Some(from);
                leg.latched_rtp = true;
                events(Event::Latched {
                    leg: leg.id,
                    remote: from,
                });
                return true;
            }
            Channel::Rtp if !leg.latched_rtp => {
                leg.remote = Some(from);
                if !leg.explicit_rtcp && !leg.latched_rtcp {
                    leg.remote_rtcp = rtcp_next_port(Some(from), false);
                }
                leg.latched_rtp = true;
                events(Event::Latched {
                    leg: leg.id,
                    remote: from,
                });
                return true;
            }
            Channel::Rtcp if !leg.latched_rtcp && !leg.rtcp_mux => {
                leg.remote_rtcp = Some(from);
                leg.latched_rtcp = true;
                return true;
            }
            _ => {}
        }
    }
    leg.counters.drop(DropCause::SourceMismatch);
    false
}

/// Updates a leg's receive statistics with an accepted RTP packet.
#[inline]
fn note_incoming(leg: &mut Leg, view: &RtpView<'_>, now: Now, clock_rate: u32) {
    if leg.incoming_ssrc != Some(view.ssrc()) {
        leg.incoming_ssrc = Some(view.ssrc());
        leg.incoming = ReceiverStats::default();
    }
    let arrival = ns_to_ts(now.mono_ns, clock_rate);
    leg.incoming.on_packet(view.sequence(), view.timestamp(), arrival);
}

/// Reads an RTCP compound packet from a leg: SR arrival times (for our reports' LSR/DLSR) and
/// report blocks about the stream we send it. Returns false (and counts) when malformed.
fn read_rtcp(leg: &mut Leg, data: &[u8], now: Now, clock_rate: u32) -> bool {
    if rtcp::validate_compound(data).is_err() {
        leg.counters.drop(DropCause::MalformedRtcp);
        return false;
    }
    let our_ssrc = leg.out.ssrc();
    let now_ntp = rtcp::ntp_middle32(rtcp::ntp_from_unix_nanos(u128::from(now.unix_ns)));
    for packet in rtcp::RtcpIter::new(data) {
        let note_block = |block: ReportBlock, leg: &mut Leg| {
            if block.ssrc != our_ssrc {
                return;
            }
            leg.quality.remote_fraction_lost = f64::from(block.fraction_lost) / 256.0;
            leg.quality.remote_cumulative_lost = block.cumulative_lost;
            leg.quality.remote_jitter_ms = f64::from(block.jitter) * 1000.0 / f64::from(clock_rate);
            if let Some(rtt) = rtcp::round_trip(now_ntp, block.last_sr, block.delay_since_last_sr) {
                leg.quality.round_trip_ms = Some(rtcp::middle32_to_micros(rtt) as f64 / 1000.0);
            }
        };
        match packet.packet_type {
            200 => {
                if let Ok(report) = rtcp::SenderReport::parse(packet) {
                    leg.last_sr = rtcp::ntp_middle32(report.ntp());
                    leg.last_sr_arrival_ns = now.mono_ns;
                    for block in report.report_blocks() {
                        note_block(block, leg);
                    }
                }
            }
            201 => {
                if let Ok(report) = rtcp::ReceiverReport::parse(packet) {
                    for block in report.report_blocks() {
                        note_block(block, leg);
                    }
                }
            }
            _ => {}
        }
    }
    true
}

/// Builds the compound report a group leg sends: SR if the engine sent on it since the start,
/// else RR; a report block on the incoming stream if any; SDES CNAME.
fn build_report(leg: &mut Leg, now: Now, clock_rate: u32, cname: &[u8], scratch: &mut [u8; 256]) -> Option<usize> {
    let mut blocks = [ReportBlock::default(); 1];
    let mut block_count = 0;
    if let Some(ssrc) = leg.incoming_ssrc {
        let delay = if leg.last_sr == 0 {
            0
        } else {
            ((now.mono_ns.saturating_sub(leg.last_sr_arrival_ns) as u128 * 65536) / 1_000_000_000) as u32
        };
        blocks[0] = leg.incoming.report_block(ssrc, leg.last_sr, delay);
        block_count = 1;
        leg.quality.local_expected = u64::from(leg.incoming.expected());
        leg.quality.local_lost = i64::from(leg.incoming.expected()) - i64::from(leg.incoming.received());
        leg.quality.local_jitter_ms = f64::from(leg.incoming.jitter()) * 1000.0 / f64::from(clock_rate);
    }
    let ssrc = leg.out.ssrc();
    let first = if leg.out.started() {
        let ntp = rtcp::ntp_from_unix_nanos(u128::from(now.unix_ns));
        rtcp::write_sender_report(
            &mut scratch[..],
            ssrc,
            ntp,
            leg.out.timestamp_at(now.mono_ns, clock_rate),
            leg.out.packets(),
            leg.out.octets(),
            &blocks[..block_count],
        )
        .ok()?
    } else if block_count > 0 {
        rtcp::write_receiver_report(&mut scratch[..], ssrc, &blocks[..block_count]).ok()?
    } else {
        return None;
    };
    let second = rtcp::write_sdes_cname(scratch.get_mut(first..)?, ssrc, cname).ok()?;
    Some(first + second)
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};

    use super::*;
    use crate::media::codec::Codec;

    fn address(port: u16) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, port))
    }

    fn shard() -> Shard {
        Shard::new(ShardConfig {
            rtcp_interval: Duration::from_secs(1),
            default_source_check: SourceCheck::Strict,
            cname: "unit".into(),
            seed: 7,
        })
    }

    fn at(ms: u64) -> Now {
        Now {
            mono_ns: ms * 1_000_000,
            unix_ns: 1_700_000_000_000_000_000 + ms * 1_000_000,
        }
    }

    fn rtp(ssrc: u32, seq: u16, ts: u32, pt: u8) -> Vec<u8> {
        let mut data = vec![0x80, pt, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xaa, 0xbb];
        data[2..4].copy_from_slice(&seq.to_be_bytes());
        data[4..8].copy_from_slice(&ts.to_be_bytes());
        data[8..12].copy_from_slice(&ssrc.to_be_bytes());
        data
    }

    /// A group of a talker (port 1000) and two listeners (2000, 3000).
    fn group_of_three(shard: &mut Shard, listener_types: &[(u8, Codec)]) -> [u32; 3] {
        let bridge = BridgeId(1);
        shard
            .add_bridge(bridge, BridgeKind::Group(GroupOptions::default()))
            .unwrap();
        let origin = |ssrc| StreamOrigin {
            ssrc,
            seq: 100,
            timestamp: 5000,
        };
        let spec = |port, types: &[(u8, Codec)]| LegSpec {
            remote: Some(address(port)),
            payload_types: types.to_vec(),
            ..LegSpec::default()
        };
        let talker = shard
            .add_leg(LegId(1), bridge, &spec(1000, &[(96, Codec::AmrWb)]), origin(11), at(0))
            .unwrap();
        let first = shard
            .add_leg(LegId(2), bridge, &spec(2000, listener_types), origin(22), at(0))
            .unwrap();
        let second = shard
            .add_leg(LegId(3), bridge, &spec(3000, &[]), origin(33), at(0))
            .unwrap();
        shard.set_source(bridge, Some(LegId(1)), at(0)).unwrap();
        [talker, first, second]
    }

    #[test]
    fn fan_out_writes_each_listeners_header_and_shares_the_body() {
        let mut shard = shard();
        let [talker, ..] = group_of_three(&mut shard, &[(104, Codec::AmrWb)]);
        let data = rtp(0xdead, 9, 900, 96);
        let batch = [RxPacket {
            data: &data,
            from: address(1000),
            buffer: 3,
            truncated: false,
        }];
        let mut out = OutBatch::default();
        shard.on_rtp(talker, &batch[..], at(1), &mut out, &mut |_| {});
        assert_eq!(out.len(), 2);
        let first = out.messages[0];
        let head = out.head(&first);
        assert_eq!(first.destination, address(2000));
        assert_eq!(head.len(), 16, "fixed header + the talker as CSRC");
        assert_eq!(head[0], 0x81, "version 2, one CSRC");
        assert_eq!(
            head[1],
            0x80 | 104,
            "marker on the spurt start, listener's payload type"
        );
        assert_eq!(u16::from_be_bytes([head[2], head[3]]), 100);
        assert_eq!(u32::from_be_bytes([head[8], head[9], head[10], head[11]]), 22);
        assert_eq!(u32::from_be_bytes([head[12], head[13], head[14], head[15]]), 0xdead);
        assert_eq!(
            first.body,
            Some(RxSlice {
                buffer: 3,
                start: 12,
                end: 14
            })
        );
        let second = out.head(&out.messages[1]);
        assert_eq!(second[1], 0x80 | 96, "a transparent listener keeps the number");
    }

    #[test]
    fn strict_and_latching_source_checks() {
        let mut shard = shard();
        let bridge = BridgeId(1);
        shard.add_bridge(bridge, BridgeKind::Relay).unwrap();
        let origin = StreamOrigin {
            ssrc: 1,
            seq: 1,
            timestamp: 1,
        };
        let strict = LegSpec {
            remote: Some(address(1000)),
            ..LegSpec::default()
        };
        let latch = LegSpec {
            source_check: Some(SourceCheck::Latch),
            ..LegSpec::default()
        };
        let a = shard.add_leg(LegId(1), bridge, &strict, origin, at(0)).unwrap();
        let b = shard.add_leg(LegId(2), bridge, &latch, origin, at(0)).unwrap();
        let data = rtp(5, 1, 1, 0);
        let mut out = OutBatch::default();
        let mut events = Vec::new();
        let from = |port| {
            [RxPacket {
                data: &data,
                from: address(port),
                buffer: 0,
                truncated: false,
            }]
        };
        shard.on_rtp(a, &from(999)[..], at(1), &mut out, &mut |event| events.push(event));
        assert!(out.is_empty());
        // B has no remote yet: A's packet has nowhere to go.
        shard.on_rtp(a, &from(1000)[..], at(1), &mut out, &mut |event| events.push(event));
        assert!(out.is_empty());
        // B latches 4000; then A's packets reach it; another source on B is refused.
        shard.on_rtp(b, &from(4000)[..], at(2), &mut out, &mut |event| events.push(event));
        assert_eq!(out.messages[0].destination, address(1000));
        assert_eq!(
            events,
            vec![Event::Latched {
                leg: LegId(2),
                remote: address(4000)
            }]
        );
        out.clear();
        shard.on_rtp(a, &from(1000)[..], at(3), &mut out, &mut |_| {});
        assert_eq!(out.messages[0].destination, address(4000));
        out.clear();
        shard.on_rtp(b, &from(4001)[..], at(4), &mut out, &mut |_| {});
        assert!(out.is_empty());
        let drops = |slot: LegId| {
            shard
                .leg_snapshot(slot)
                .unwrap()
                .counters
                .drops(DropCause::SourceMismatch)
        };
        assert_eq!((drops(LegId(1)), drops(LegId(2))), (1, 1));
        assert_eq!(
            shard
                .leg_snapshot(LegId(1))
                .unwrap()
                .counters
                .drops(DropCause::NoDestination),
            1
        );
    }

    #[test]
    fn relay_taps_get_a_copy_of_both_sides_rtp_and_send_nothing_in() {
        let mut shard = shard();
        let bridge = BridgeId(1);
        shard.add_bridge(bridge, BridgeKind::Relay).unwrap();
        let origin = StreamOrigin {
            ssrc: 1,
            seq: 1,
            timestamp: 1,
        };
        let side = |port| LegSpec {
            remote: Some(address(port)),
            ..LegSpec::default()
        };
        let tap = |port| LegSpec {
            remote: Some(address(port)),
            tap: true,
            ..LegSpec::default()
        };
        let a = shard.add_leg(LegId(1), bridge, &side(1000), origin, at(0)).unwrap();
        // A tap may come before the second side; it never takes a side's place.
        let t1 = shard.add_leg(LegId(3), bridge, &tap(3000), origin, at(0)).unwrap();
        let b = shard.add_leg(LegId(2), bridge, &side(2000), origin, at(0)).unwrap();
        let t2 = shard.add_leg(LegId(4), bridge, &tap(4000), origin, at(0)).unwrap();
        for n in 5..=6 {
            shard.add_leg(LegId(n), bridge, &tap(5000), origin, at(0)).unwrap();
        }
        assert_eq!(
            shard.add_leg(LegId(7), bridge, &tap(5000), origin, at(0)),
            Err(ShardError::RelayFull),
            "at most MAX_TAPS taps"
        );
        assert_eq!(
            shard.add_leg(LegId(8), bridge, &side(5000), origin, at(0)),
            Err(ShardError::RelayFull)
        );
        shard.remove_leg(LegId(5)).unwrap();
        shard.remove_leg(LegId(6)).unwrap();
        let first = rtp(5, 1, 1, 0);
        let second = rtp(5, 2, 161, 0);
        let report = [0x80u8, 201, 0, 1, 0, 0, 0, 5];
        let batch = |from: u16| {
            [&first[..], &second[..], &report[..]].map(|data| RxPacket {
                data,
                from: address(from),
                buffer: 0,
                truncated: false,
            })
        };
        let mut out = OutBatch::default();
        shard.on_rtp(a, &batch(1000)[..], at(1), &mut out, &mut |_| {});
        let sent: Vec<(u32, Channel, u16, u32)> = out
            .messages
            .iter()
            .map(|m| (m.leg, m.channel, m.destination.port(), m.body.unwrap().end))
            .collect();
        let (rtp_len, rtcp_len) = (first.len() as u32, report.len() as u32);
        // The other side gets everything unchanged; each tap, from its own socket, the RTP
        // only, after the side's run (one sendmmsg per socket).
        assert_eq!(
            sent,
            vec![
                (b, Channel::Rtp, 2000, rtp_len),
                (b, Channel::Rtp, 2000, rtp_len),
                (b, Channel::Rtcp, 2001, rtcp_len),
                (t1, Channel::Rtp, 3000, rtp_len),
                (t1, Channel::Rtp, 3000, rtp_len),
                (t2, Channel::Rtp, 4000, rtp_len),
                (t2, Channel::Rtp, 4000, rtp_len),
            ]
        );
        out.clear();
        shard.on_rtp(b, &batch(2000)[..2], at(2), &mut out, &mut |_| {});
        let legs: Vec<(u32, u16)> = out.messages.iter().map(|m| (m.leg, m.destination.port())).collect();
        assert_eq!(
            legs,
            vec![(a, 1000), (a, 1000), (t1, 3000), (t1, 3000), (t2, 4000), (t2, 4000)]
        );
        out.clear();
        // What a tap's DC sends goes nowhere, counted.
        shard.on_rtp(t1, &batch(3000)[..], at(3), &mut out, &mut |_| {});
        assert!(out.is_empty());
        let tap_stats = shard.leg_snapshot(LegId(3)).unwrap().counters;
        assert_eq!(tap_stats.drops(DropCause::TapInput), 3);
        assert_eq!(shard.fanout_width(a), 4);
        // Without taps the relay is as before.
        shard.remove_leg(LegId(3)).unwrap();
        shard.remove_leg(LegId(4)).unwrap();
        shard.on_rtp(a, &batch(1000)[..1], at(4), &mut out, &mut |_| {});
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn timers_send_sender_reports_and_report_silence() {
        let mut shard = shard();
        let [talker, first, _] = group_of_three(&mut shard, &[]);
        let mut out = OutBatch::default();
        let mut events = Vec::new();
        for seq in 0..10u16 {
            let data = rtp(0xdead, seq, u32::from(seq) * 320, 96);
            let batch = [RxPacket {
                data: &data,
                from: address(1000),
                buffer: 0,
                truncated: false,
            }];
            shard.on_rtp(talker, &batch[..], at(20 * u64::from(seq)), &mut out, &mut |event| {
                events.push(event)
            });
        }
        assert!(matches!(
            events[0],
            Event::TalkerFirstPacket {
                leg: LegId(1),
                ssrc: 0xdead,
                ..
            }
        ));
        out.clear();
        // After 1.5 intervals every leg has reported once; after 4 s of silence the talker is
        // reported silent, once.
        let _ = shard.poll_timers(at(1600), &mut out, &mut |event| events.push(event));
        let _ = shard.poll_timers(at(4300), &mut out, &mut |event| events.push(event));
        let _ = shard.poll_timers(at(4400), &mut out, &mut |event| events.push(event));
        let silent: Vec<_> = events
            .iter()
            .filter(|event| matches!(event, Event::TalkerSilent { .. }))
            .collect();
        assert_eq!(silent.len(), 1);
        let report = out
            .messages
            .iter()
            .find(|message| message.leg == first)
            .expect("an SR to the listener");
        assert_eq!(report.destination, address(2001), "RTCP on RTP port + 1");
        let data = out.head(report);
        rtcp::validate_compound(data).unwrap();
        let packet = rtcp::RtcpIter::new(data).next().unwrap();
        let sr = rtcp::SenderReport::parse(packet).unwrap();
        assert_eq!((sr.sender_ssrc(), sr.packet_count(), sr.octet_count()), (22, 10, 20));
        let to_talker = out
            .messages
            .iter()
            .find(|message| message.leg == talker)
            .expect("an RR to the talker");
        let data = out.head(to_talker);
        let packet = rtcp::RtcpIter::new(data).next().unwrap();
        let rr = rtcp::ReceiverReport::parse(packet).unwrap();
        let block = rr.report_blocks().next().unwrap();
        assert_eq!((block.ssrc, block.cumulative_lost, block.highest_seq), (0xdead, 0, 9));
    }

    /// A group bridge with a 60 ms handover: talkers A (port 1000) and B (2000), listener C
    /// (3000); A is the source.
    fn handover_group(shard: &mut Shard) -> [u32; 3] {
        let bridge = BridgeId(1);
        let options = GroupOptions {
            handover: Duration::from_millis(60),
            ..GroupOptions::default()
        };
        shard.add_bridge(bridge, BridgeKind::Group(options)).unwrap();
        let origin = |ssrc| StreamOrigin {
            ssrc,
            seq: 100,
            timestamp: 5000,
        };
        let spec = |port| LegSpec {
            remote: Some(address(port)),
            ..LegSpec::default()
        };
        let slots = [1u16, 2, 3].map(|n| {
            shard
                .add_leg(
                    LegId(u64::from(n)),
                    bridge,
                    &spec(n * 1000),
                    origin(u32::from(n) * 11),
                    at(0),
                )
                .unwrap()
        });
        shard.set_source(bridge, Some(LegId(1)), at(0)).unwrap();
        slots
    }

    /// Feeds one packet from `leg` (whose remote is `port`) and returns what went out: (RTP
    /// destination port, outgoing sequence number) per message.
    fn feed(shard: &mut Shard, leg: u32, port: u16, ssrc: u32, seq: u16, ms: u64) -> Vec<(u16, u16)> {
        let data = rtp(ssrc, seq, u32::from(seq) * 160, 0);
        let batch = [RxPacket {
            data: &data,
            from: address(port),
            buffer: 0,
            truncated: false,
        }];
        let mut out = OutBatch::default();
        shard.on_rtp(leg, &batch[..], at(ms), &mut out, &mut |_| {});
        out.messages
            .iter()
            .map(|message| {
                let head = out.head(message);
                (message.destination.port(), u16::from_be_bytes([head[2], head[3]]))
            })
            .collect()
    }

    #[test]
    fn handover_forwards_the_previous_source_until_the_new_one_speaks() {
        let mut shard = shard();
        let [a, b, _] = handover_group(&mut shard);
        assert_eq!(feed(&mut shard, a, 1000, 0xa, 1, 1), vec![(2000, 100), (3000, 100)]);
        shard.set_source(BridgeId(1), Some(LegId(2)), at(10)).unwrap();
        // A's last packet, sent before the switch but arriving after it, still goes out.
        assert_eq!(feed(&mut shard, a, 1000, 0xa, 2, 15), vec![(2000, 101), (3000, 101)]);
        // B's first packet ends the handover: C's stream goes on without a gap.
        assert_eq!(feed(&mut shard, b, 2000, 0xb, 500, 20), vec![(1000, 100), (3000, 102)]);
        assert!(
            feed(&mut shard, a, 1000, 0xa, 3, 25).is_empty(),
            "A is cut once B spoke"
        );
        assert_eq!(feed(&mut shard, b, 2000, 0xb, 501, 40), vec![(1000, 101), (3000, 103)]);
        let stats = shard.snapshot(0, true);
        let a_stats = stats.legs.iter().find(|leg| leg.id == LegId(1)).unwrap();
        assert_eq!(a_stats.counters.drops[DropCause::NotHolder as usize], 1);
    }

    #[test]
    fn handover_ends_at_its_deadline_and_on_release_too() {
        let mut shard = shard();
        let [a, b, _] = handover_group(&mut shard);
        assert_eq!(feed(&mut shard, a, 1000, 0xa, 1, 1).len(), 2);
        // Released with nobody next: A goes on for the handover time, then is cut.
        shard.set_source(BridgeId(1), None, at(10)).unwrap();
        assert_eq!(feed(&mut shard, a, 1000, 0xa, 2, 69).len(), 2);
        assert!(feed(&mut shard, a, 1000, 0xa, 3, 70).is_empty());
        // Granted to B later: no handover from the expired A.
        shard.set_source(BridgeId(1), Some(LegId(2)), at(100)).unwrap();
        assert!(feed(&mut shard, a, 1000, 0xa, 4, 101).is_empty());
        assert_eq!(feed(&mut shard, b, 2000, 0xb, 9, 102), vec![(1000, 100), (3000, 102)]);
        // Switching back to A hands over from B, and A's first packet ends that.
        shard.set_source(BridgeId(1), Some(LegId(1)), at(200)).unwrap();
        assert_eq!(feed(&mut shard, b, 2000, 0xb, 10, 201), vec![(1000, 101), (3000, 103)]);
        assert_eq!(feed(&mut shard, a, 1000, 0xa, 50, 202), vec![(2000, 102), (3000, 104)]);
        assert!(feed(&mut shard, b, 2000, 0xb, 11, 203).is_empty());
    }

    #[test]
    fn handover_source_removed_is_forgotten() {
        let mut shard = shard();
        let [a, _, _] = handover_group(&mut shard);
        assert_eq!(feed(&mut shard, a, 1000, 0xa, 1, 1).len(), 2);
        shard.set_source(BridgeId(1), Some(LegId(2)), at(10)).unwrap();
        shard.remove_leg(LegId(1)).unwrap();
        let stats = shard.snapshot(0, false);
        assert_eq!(stats.bridges[0].holder, Some(LegId(2)));
        assert_eq!(stats.bridges[0].legs, 2);
    }

    #[test]
    fn without_handover_a_switch_cuts_at_once() {
        let mut shard = shard();
        let [talker, ..] = group_of_three(&mut shard, &[]);
        shard.set_source(BridgeId(1), Some(LegId(2)), at(10)).unwrap();
        assert!(feed(&mut shard, talker, 1000, 0xa, 1, 11).is_empty());
    }

    #[test]
    fn legs_of_the_talkers_own_peer_get_nothing() {
        let mut shard = shard();
        let bridge = BridgeId(1);
        shard
            .add_bridge(bridge, BridgeKind::Group(GroupOptions::default()))
            .unwrap();
        let origin = StreamOrigin {
            ssrc: 1,
            seq: 100,
            timestamp: 0,
        };
        // An uplink from peer 7 (sends only), downlinks to peers 7 and 8, a local listener.
        let legs = [(1000, 7, false), (2000, 7, true), (3000, 8, true), (4000, 0, true)];
        let mut slots = Vec::new();
        for (index, (port, peer, fanout)) in legs.into_iter().enumerate() {
            let spec = LegSpec {
                remote: Some(address(port)),
                fanout,
                peer,
                ..LegSpec::default()
            };
            slots.push(
                shard
                    .add_leg(LegId(index as u64 + 1), bridge, &spec, origin, at(0))
                    .unwrap(),
            );
        }
        shard.set_source(bridge, Some(LegId(1)), at(0)).unwrap();
        let ports: Vec<u16> = feed(&mut shard, slots[0], 1000, 5, 1, 1).iter().map(|m| m.0).collect();
        assert_eq!(ports, vec![3000, 4000], "not back down peer 7's downlink");
        // The local listener talks: every downlink gets it, peer 7's too.
        shard.set_source(bridge, Some(LegId(4)), at(2)).unwrap();
        let ports: Vec<u16> = feed(&mut shard, slots[3], 4000, 6, 1, 3).iter().map(|m| m.0).collect();
        assert_eq!(ports, vec![2000, 3000]);
    }

    #[test]
    fn removing_the_holder_clears_the_floor() {
        let mut shard = shard();
        group_of_three(&mut shard, &[]);
        shard.remove_leg(LegId(1)).unwrap();
        let stats = shard.snapshot(0, false);
        assert_eq!(stats.bridges[0].holder, None);
        assert_eq!(stats.bridges[0].legs, 2);
        assert_eq!(shard.remove_bridge(BridgeId(1)).unwrap().len(), 2);
        assert_eq!(shard.leg_count(), 0);
    }
}
