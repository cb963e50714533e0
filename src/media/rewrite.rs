//! Stream continuity across talker switches (F-UP-03).
//!
//! Two small state machines, both sans-IO and allocation-free:
//!
//! - [`SourceGate`] (one per group bridge) admits only packets of the current floor holder's
//!   stream and numbers its *talk spurts*: every change of source leg or of source SSRC starts a
//!   new spurt. It drops duplicates, packets older than the spurt's first packet (late packets of a
//!   previous talker, or of this talker's previous spurt) and packets too old to be tracked.
//! - [`ListenerStream`] (one per listener leg) turns admitted packets into one continuous outgoing
//!   stream: its own SSRC, sequence numbers and timestamps rebased at the first packet of every
//!   spurt it receives, the marker bit set on that packet.
//!
//! The algorithm is written down in `docs/continuity.md`; the property tests at the end of this
//! file check its invariants over random switch / loss / reorder / duplicate sequences.

/// Outcome of [`SourceGate::admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Forward the packet. `spurt` numbers the talk spurt it belongs to.
    Forward {
        /// Spurt number (changes on every source switch).
        spurt: u32,
        /// This packet started the spurt.
        first: bool,
    },
    /// The packet is not from the current floor holder's leg.
    NotHolder,
    /// Same sequence number as a packet already forwarded in this spurt.
    Duplicate,
    /// Older than the spurt's first packet, or than the reorder window.
    Late,
}

/// Number of sequence numbers behind the highest one within which reordered packets are
/// still forwarded (and duplicates recognised).
pub const REORDER_WINDOW: u16 = 64;

/// A forward jump larger than this needs confirmation by a second packet (RFC 3550 A.1).
pub const MAX_DROPOUT: i16 = 3000;

/// Bridge-level gate: which leg may talk, and which of its packets go out.
///
/// A switch of holder may hand over: the previous holder's packets are still admitted (in their
/// own spurt) until the new holder's first packet arrives or a deadline passes, whichever comes
/// first. A release travels through the signalling while the talker's last packets travel
/// through the user plane, and the next talker's first packet through yet another path; the
/// handover keeps both ends of such a switch without ever interleaving two talkers at a
/// listener.
#[derive(Debug, Clone, Default)]
pub struct SourceGate {
    holder: Option<u32>,
    track: Track,
    /// The last spurt number given out (spurt numbers are unique across tracks).
    spurts: u32,
    handover: Option<Handover>,
}

/// The previous holder during a handover.
#[derive(Debug, Clone)]
struct Handover {
    leg: u32,
    until_ns: u64,
    track: Track,
}

/// The admission state of one source leg's packets.
#[derive(Debug, Clone, Default)]
struct Track {
    spurt: u32,
    stream: Option<GateStream>,
    previous_ssrc: Option<u32>,
    /// After a packet far outside the window, the sequence number that would confirm a jump
    /// of the source's numbering (RFC 3550 A.1 style re-synchronisation).
    resync: Option<u16>,
}

#[derive(Debug, Clone, Copy)]
struct GateStream {
    ssrc: u32,
    start_seq: u16,
    /// The spurt is younger than the reorder window: packets before `start_seq` are possible
    /// and must be dropped. (Compared only while young: 16-bit serial arithmetic against the
    /// start would misjudge packets once a spurt is 32768 packets long.)
    young: bool,
    highest_seq: u16,
    /// Bit i set: `highest_seq - i` was forwarded.
    seen: u64,
}

impl GateStream {
    fn start(ssrc: u32, seq: u16) -> Self {
        GateStream {
            ssrc,
            start_seq: seq,
            young: true,
            highest_seq: seq,
            seen: 1,
        }
    }
}

impl SourceGate {
    /// A gate with no floor holder.
    pub fn new() -> Self {
        Self::default()
    }

    /// The leg whose packets are forwarded, if any.
    pub fn holder(&self) -> Option<u32> {
        self.holder
    }

    /// The previous holder still admitted while a handover lasts (at `now_ns`), if any.
    pub fn handing_over(&self, now_ns: u64) -> Option<u32> {
        self.handover
            .as_ref()
            .filter(|handover| now_ns < handover.until_ns)
            .map(|handover| handover.leg)
    }

    /// The current spurt number.
    pub fn spurt(&self) -> u32 {
        self.track.spurt
    }

    /// Whether the current spurt has forwarded a packet yet.
    pub fn spurt_started(&self) -> bool {
        self.track.stream.is_some()
    }

    /// Sets (or clears) the floor holder. Takes effect for the very next packet; nothing of
    /// the previous holder is admitted any more. Setting the same holder again does not start
    /// a new spurt.
    pub fn set_holder(&mut self, holder: Option<u32>) {
        if holder == self.holder {
            return;
        }
        self.handover = None;
        self.holder = holder;
        self.track.end(&mut self.spurts);
    }

    /// Sets (or clears) the floor holder, handing over: the previous holder's packets are
    /// still admitted until the new holder's first packet or until `until_ns`. With no
    /// previous holder, a handover already under way goes on.
    pub fn set_holder_handing_over(&mut self, holder: Option<u32>, until_ns: u64) {
        if holder == self.holder {
            return;
        }
        if let Some(previous) = self.holder {
            self.handover = Some(Handover {
                leg: previous,
                until_ns,
                track: self.track.clone(),
            });
        }
        if self
            .handover
            .as_ref()
            .is_some_and(|handover| Some(handover.leg) == holder)
        {
            // Back to the leg being handed over from: it is the holder again, in a new spurt.
            self.handover = None;
        }
        self.holder = holder;
        self.track.end(&mut self.spurts);
    }

    /// Forgets a leg (it was removed): it is neither holder nor handed over from any more.
    pub fn forget(&mut self, leg: u32) {
        if self.handover.as_ref().is_some_and(|handover| handover.leg == leg) {
            self.handover = None;
        }
        if self.holder == Some(leg) {
            self.holder = None;
            self.track.end(&mut self.spurts);
        }
    }

    /// Decides what to do with an RTP packet from leg `leg` (no handover deadline passes).
    pub fn admit(&mut self, leg: u32, ssrc: u32, seq: u16) -> Admit {
        self.admit_at(leg, ssrc, seq, 0)
    }

    /// Decides what to do with an RTP packet from leg `leg` arriving at `now_ns`.
    pub fn admit_at(&mut self, leg: u32, ssrc: u32, seq: u16, now_ns: u64) -> Admit {
        if self.holder == Some(leg) {
            // The new holder speaks: the handover is over.
            self.handover = None;
            return self.track.admit(ssrc, seq, &mut self.spurts);
        }
        let Some(handover) = self.handover.as_mut() else {
            return Admit::NotHolder;
        };
        if now_ns >= handover.until_ns {
            self.handover = None;
            return Admit::NotHolder;
        }
        if handover.leg != leg {
            return Admit::NotHolder;
        }
        handover.track.admit(ssrc, seq, &mut self.spurts)
    }
}

impl Track {
    fn end(&mut self, spurts: &mut u32) {
        if let Some(stream) = self.stream.take() {
            self.previous_ssrc = Some(stream.ssrc);
        }
        self.resync = None;
        self.spurt = next_spurt(spurts);
    }

    fn admit(&mut self, ssrc: u32, seq: u16, spurts: &mut u32) -> Admit {
        let Some(stream) = self.stream.as_mut() else {
            self.stream = Some(GateStream::start(ssrc, seq));
            return Admit::Forward {
                spurt: self.spurt,
                first: true,
            };
        };
        if stream.ssrc != ssrc {
            if self.previous_ssrc == Some(ssrc) {
                // A straggler of the stream this holder sent before its SSRC changed.
                return Admit::Late;
            }
            // The holder's leg now carries another stream (e.g. a member TCF relaying a new
            // talker): a new spurt.
            self.previous_ssrc = Some(stream.ssrc);
            self.spurt = next_spurt(spurts);
            *stream = GateStream::start(ssrc, seq);
            return Admit::Forward {
                spurt: self.spurt,
                first: true,
            };
        }
        let ahead = seq.wrapping_sub(stream.highest_seq) as i16;
        if ahead > 0 && ahead <= MAX_DROPOUT {
            self.resync = None;
            if stream.young && seq.wrapping_sub(stream.start_seq) >= REORDER_WINDOW {
                stream.young = false;
            }
            let shift = ahead as u32;
            stream.seen = if shift >= 64 { 1 } else { (stream.seen << shift) | 1 };
            stream.highest_seq = seq;
            return Admit::Forward {
                spurt: self.spurt,
                first: false,
            };
        }
        if ahead == 0 {
            return Admit::Duplicate;
        }
        let behind = ahead.unsigned_abs();
        let before_start = stream.young && (seq.wrapping_sub(stream.start_seq) as i16) < 0;
        if ahead > 0 || before_start || behind >= REORDER_WINDOW {
            // Far behind: a straggler, or the source's numbering jumped (an upstream relay
            // switched talkers without changing SSRC, an endpoint restarted, or more than half
            // the sequence space was lost). Two consecutive such packets confirm a jump: start
            // a new spurt there, so listeners rebase instead of dropping everything after.
            if self.resync == Some(seq) {
                self.resync = None;
                self.spurt = next_spurt(spurts);
                *stream = GateStream::start(ssrc, seq);
                return Admit::Forward {
                    spurt: self.spurt,
                    first: true,
                };
            }
            self.resync = Some(seq.wrapping_add(1));
            return Admit::Late;
        }
        let bit = 1u64 << behind;
        if stream.seen & bit != 0 {
            return Admit::Duplicate;
        }
        stream.seen |= bit;
        Admit::Forward {
            spurt: self.spurt,
            first: false,
        }
    }
}

fn next_spurt(spurts: &mut u32) -> u32 {
    *spurts = spurts.wrapping_add(1);
    *spurts
}

/// What a listener leg sends for one admitted packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewritten {
    /// Outgoing sequence number.
    pub seq: u16,
    /// Outgoing RTP timestamp.
    pub timestamp: u32,
    /// Outgoing marker bit.
    pub marker: bool,
}

/// Per-listener outgoing stream state.
#[derive(Debug, Clone, Copy)]
pub struct ListenerStream {
    ssrc: u32,
    seq_offset: u16,
    ts_offset: u32,
    /// Input sequence number at which the current spurt was rebased for this listener;
    /// older input is not sent (it would reuse an outgoing sequence number).
    rebase_seq: u16,
    /// Whether input is still close enough to `rebase_seq` for the check above to be needed
    /// (afterwards the gate's reorder window keeps older packets out, and a 16-bit comparison
    /// would misjudge packets of a spurt longer than 32768 packets).
    guard: bool,
    last_seq: u16,
    last_ts: u32,
    last_wall_ns: u64,
    /// RTP timestamp units of one frame (last observed packet spacing).
    frame_ts: u32,
    spurt: Option<u32>,
    started: bool,
    packets: u32,
    octets: u32,
}

impl ListenerStream {
    /// A new outgoing stream with its own `ssrc`, starting at `initial_seq` / `initial_ts`
    /// (random in production, per RFC 3550), with `frame_ts` timestamp units per packet until a
    /// real spacing is observed.
    pub fn new(ssrc: u32, initial_seq: u16, initial_ts: u32, frame_ts: u32) -> Self {
        Self {
            ssrc,
            seq_offset: 0,
            ts_offset: 0,
            rebase_seq: 0,
            guard: false,
            last_seq: initial_seq.wrapping_sub(1),
            last_ts: initial_ts.wrapping_sub(frame_ts.max(1)),
            last_wall_ns: 0,
            frame_ts: frame_ts.max(1),
            spurt: None,
            started: false,
            packets: 0,
            octets: 0,
        }
    }

    /// The outgoing SSRC.
    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// Whether anything was sent yet.
    pub fn started(&self) -> bool {
        self.started
    }

    /// Packets sent (RTCP sender report count).
    pub fn packets(&self) -> u32 {
        self.packets
    }

    /// Payload octets sent (RTCP sender report count).
    pub fn octets(&self) -> u32 {
        self.octets
    }

    /// Highest outgoing sequence number and timestamp sent, and when.
    pub fn last_sent(&self) -> (u16, u32, u64) {
        (self.last_seq, self.last_ts, self.last_wall_ns)
    }

    /// The RTP timestamp that corresponds to wall-clock `now_ns` on this stream (for sender
    /// reports): the last timestamp sent, advanced by the time elapsed since.
    pub fn timestamp_at(&self, now_ns: u64, clock_rate: u32) -> u32 {
        self.last_ts
            .wrapping_add(ns_to_ts(now_ns.saturating_sub(self.last_wall_ns), clock_rate))
    }

    /// Rewrites one admitted packet for this listener, or returns `None` when this listener
    /// must not get it (older than the point where its spurt was rebased).
    ///
    /// `now_ns` is a monotonic clock in nanoseconds; `payload_len` counts for the RTCP SR.
    #[allow(clippy::too_many_arguments)] // one call site, all scalars: a struct would only rename them
    pub fn rewrite(
        &mut self,
        spurt: u32,
        seq: u16,
        timestamp: u32,
        marker: bool,
        payload_len: usize,
        now_ns: u64,
        clock_rate: u32,
    ) -> Option<Rewritten> {
        let mut marker = marker;
        if self.spurt != Some(spurt) {
            let next_seq = self.last_seq.wrapping_add(1);
            let next_ts = if self.started {
                let elapsed = ns_to_ts(now_ns.saturating_sub(self.last_wall_ns), clock_rate);
                self.last_ts.wrapping_add(elapsed.max(self.frame_ts))
            } else {
                self.last_ts.wrapping_add(self.frame_ts)
            };
            self.seq_offset = next_seq.wrapping_sub(seq);
            self.ts_offset = next_ts.wrapping_sub(timestamp);
            self.rebase_seq = seq;
            self.guard = true;
            self.spurt = Some(spurt);
            marker = true;
        } else if self.guard {
            let since = seq.wrapping_sub(self.rebase_seq) as i16;
            if since < 0 {
                return None;
            }
            if since >= REORDER_WINDOW as i16 {
                self.guard = false;
            }
        }
        let out_seq = seq.wrapping_add(self.seq_offset);
        let out_ts = timestamp.wrapping_add(self.ts_offset);
        let ahead = out_seq.wrapping_sub(self.last_seq) as i16;
        if ahead > 0 || !self.started {
            if ahead == 1 && self.started {
                let spacing = out_ts.wrapping_sub(self.last_ts);
                if spacing > 0 && spacing <= clock_rate / 4 {
                    self.frame_ts = spacing;
                }
            }
            self.last_seq = out_seq;
            self.last_ts = out_ts;
            self.last_wall_ns = now_ns;
            self.started = true;
        }
        self.packets = self.packets.wrapping_add(1);
        self.octets = self.octets.wrapping_add(payload_len as u32);
        Some(Rewritten {
            seq: out_seq,
            timestamp: out_ts,
            marker,
        })
    }
}

/// Converts a duration in nanoseconds to RTP timestamp units at `clock_rate` Hz.
pub fn ns_to_ts(ns: u64, clock_rate: u32) -> u32 {
    ((u128::from(ns) * u128::from(clock_rate)) / 1_000_000_000) as u32
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;

    const RATE: u32 = 8000;
    const FRAME_NS: u64 = 20_000_000;

    #[test]
    fn gate_forwards_only_the_holder() {
        let mut gate = SourceGate::new();
        assert_eq!(gate.admit(1, 10, 5), Admit::NotHolder);
        gate.set_holder(Some(1));
        assert_eq!(gate.admit(2, 20, 5), Admit::NotHolder);
        assert!(matches!(gate.admit(1, 10, 5), Admit::Forward { first: true, .. }));
        assert!(matches!(gate.admit(1, 10, 6), Admit::Forward { first: false, .. }));
        assert_eq!(gate.admit(1, 10, 6), Admit::Duplicate);
        gate.set_holder(None);
        assert_eq!(gate.admit(1, 10, 7), Admit::NotHolder);
    }

    #[test]
    fn gate_drops_stragglers_of_a_previous_spurt() {
        let mut gate = SourceGate::new();
        gate.set_holder(Some(1));
        for seq in 100..110 {
            gate.admit(1, 10, seq);
        }
        gate.set_holder(Some(2));
        gate.admit(2, 20, 500);
        gate.set_holder(Some(1));
        assert!(matches!(gate.admit(1, 10, 120), Admit::Forward { first: true, .. }));
        // 105 belongs to leg 1's previous spurt: it would reuse an outgoing sequence number.
        assert_eq!(gate.admit(1, 10, 105), Admit::Late);
    }

    #[test]
    fn gate_reorder_within_window_and_wrap() {
        let mut gate = SourceGate::new();
        gate.set_holder(Some(1));
        assert!(matches!(gate.admit(1, 7, 65534), Admit::Forward { first: true, .. }));
        assert!(matches!(gate.admit(1, 7, 1), Admit::Forward { .. }));
        assert!(matches!(gate.admit(1, 7, 65535), Admit::Forward { .. }));
        assert!(matches!(gate.admit(1, 7, 0), Admit::Forward { .. }));
        assert_eq!(gate.admit(1, 7, 0), Admit::Duplicate);
        assert_eq!(gate.admit(1, 7, 65533), Admit::Late);
    }

    #[test]
    fn sequence_jump_is_confirmed_by_two_packets_then_a_new_spurt() {
        let mut gate = SourceGate::new();
        gate.set_holder(Some(1));
        for seq in 1000..1010 {
            gate.admit(1, 7, seq);
        }
        // An upstream relay switched talkers keeping the SSRC: numbering jumps far "back".
        assert_eq!(gate.admit(1, 7, 40_000), Admit::Late);
        let Admit::Forward { first: true, spurt } = gate.admit(1, 7, 40_001) else {
            panic!("resync")
        };
        assert!(matches!(gate.admit(1, 7, 40_002), Admit::Forward { first: false, spurt: s } if s == spurt));
        // A lone straggler does not trigger a resync.
        assert_eq!(gate.admit(1, 7, 1009), Admit::Late);
        assert!(matches!(gate.admit(1, 7, 40_003), Admit::Forward { first: false, .. }));
    }

    #[test]
    fn long_spurt_keeps_flowing_past_the_sequence_wrap() {
        let mut gate = SourceGate::new();
        gate.set_holder(Some(1));
        let mut listener = ListenerStream::new(9, 0, 0, 160);
        let mut seq = 100u16;
        let mut now = 0u64;
        let mut sent = 0u32;
        for index in 0..200_000u32 {
            seq = seq.wrapping_add(1);
            now += 20_000_000;
            // Every 1000th pair arrives swapped.
            let order: &[u16] = if index % 1000 == 0 { &[1, 0] } else { &[0] };
            if index % 1000 == 0 {
                seq = seq.wrapping_add(1);
            }
            for &back in order {
                let this = seq.wrapping_sub(back);
                if let Admit::Forward { spurt, .. } = gate.admit(1, 5, this) {
                    if listener
                        .rewrite(spurt, this, u32::from(this) * 160, false, 160, now, 8000)
                        .is_some()
                    {
                        sent += 1;
                    }
                }
            }
        }
        assert_eq!(
            sent,
            200_000 + 200,
            "every packet of a 200,000-packet spurt is forwarded"
        );
    }

    #[test]
    fn ssrc_change_on_the_holder_leg_starts_a_spurt() {
        let mut gate = SourceGate::new();
        gate.set_holder(Some(1));
        let Admit::Forward { spurt: first, .. } = gate.admit(1, 10, 1) else {
            panic!()
        };
        let Admit::Forward {
            spurt: second,
            first: true,
        } = gate.admit(1, 11, 900)
        else {
            panic!()
        };
        assert_ne!(first, second);
        assert_eq!(gate.admit(1, 10, 2), Admit::Late);
    }

    #[test]
    fn listener_rebases_on_switch() {
        let mut listener = ListenerStream::new(0xabc, 1000, 50_000, 160);
        let mut now = 1_000_000_000;
        let a = listener.rewrite(0, 7, 9000, false, 160, now, RATE).unwrap();
        assert_eq!((a.seq, a.timestamp, a.marker), (1000, 50_000, true));
        now += FRAME_NS;
        let b = listener.rewrite(0, 8, 9160, false, 160, now, RATE).unwrap();
        assert_eq!((b.seq, b.timestamp, b.marker), (1001, 50_160, false));
        // Switch after one second of silence to a source with unrelated numbering.
        now += 1_000_000_000;
        let c = listener.rewrite(1, 40_000, 7, false, 160, now, RATE).unwrap();
        assert_eq!((c.seq, c.timestamp, c.marker), (1002, 50_160 + 8000, true));
        // A quick switch (5 ms) still advances by at least one frame.
        now += 5_000_000;
        let d = listener.rewrite(2, 3, 3, false, 160, now, RATE).unwrap();
        assert_eq!((d.seq, d.timestamp), (1003, 50_160 + 8000 + 160));
    }

    #[derive(Debug, Clone)]
    enum Step {
        /// The holder sends its next packet (maybe lost, duplicated, or delayed by `delay` slots).
        Send { lost: bool, duplicate: bool, delay: u8 },
        /// The floor moves to another leg (or nobody).
        Switch { to: Option<u8> },
        /// The floor moves, handing over for three frames.
        HandOver { to: Option<u8> },
        /// The leg being handed over from sends one more packet (its last, late ones).
        SendPrevious,
        /// Time passes without packets.
        Silence { frames: u8 },
        /// The holder's leg changes SSRC.
        NewSsrc,
        /// The holder's sequence numbering jumps (same SSRC).
        SeqJump { by: u16 },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            8 => (any::<bool>(), any::<bool>(), 0u8..6).prop_map(|(lost, duplicate, delay)| Step::Send {
                lost: lost && delay % 2 == 0,
                duplicate: duplicate && delay % 3 == 0,
                delay: if delay > 3 { delay } else { 0 },
            }),
            2 => proptest::option::of(0u8..4).prop_map(|to| Step::Switch { to }),
            2 => proptest::option::of(0u8..4).prop_map(|to| Step::HandOver { to }),
            2 => Just(Step::SendPrevious),
            1 => (1u8..100).prop_map(|frames| Step::Silence { frames }),
            1 => Just(Step::NewSsrc),
            1 => any::<u16>().prop_map(|by| Step::SeqJump { by }),
        ]
    }

    /// What a listener got: (out seq, out ts, marker, spurt, in seq, wall ns).
    type SentLog = Vec<Vec<(u16, u32, bool, u32, u16, u64)>>;

    struct Talker {
        ssrc: u32,
        seq: u16,
        ts: u32,
    }

    proptest! {
        /// Over any sequence of switches, losses, duplicates, reordering and silences, every
        /// listener's outgoing stream: never repeats a sequence number; advances its sequence by
        /// exactly one at the first packet of every spurt it receives; keeps the source's gaps
        /// within a spurt; never sends the holder its own packets; advances timestamps at a
        /// switch by at least one frame and by the wall-clock time elapsed; sets the marker bit
        /// on the first packet of every spurt.
        #[test]
        fn continuity_invariants(
            steps in proptest::collection::vec(step(), 1..400),
            seeds in proptest::collection::vec(any::<(u32, u16, u32)>(), 4),
        ) {
            let mut gate = SourceGate::new();
            let mut talkers: Vec<Talker> = seeds
                .iter()
                .map(|&(ssrc, seq, ts)| Talker { ssrc, seq, ts })
                .collect();
            let mut listeners: Vec<ListenerStream> =
                (0..4).map(|i| ListenerStream::new(100 + i, (i as u16) * 1000, i * 77, 160)).collect();
            // What each listener got: (out seq, out ts, marker, spurt, in seq, wall ns)
            let mut sent: SentLog = vec![Vec::new(); 4];
            let mut delayed: Vec<(usize, u32, u16, u32, u8)> = Vec::new(); // (leg, ssrc, seq, ts, due)
            let mut now: u64 = 10_000_000_000;
            let mut ssrc_bump = 0u32;

            let deliver = |leg: usize, ssrc: u32, seq: u16, ts: u32, now: u64,
                               gate: &mut SourceGate, listeners: &mut Vec<ListenerStream>,
                               sent: &mut SentLog| {
                if let Admit::Forward { spurt, .. } = gate.admit_at(leg as u32, ssrc, seq, now) {
                    for (index, listener) in listeners.iter_mut().enumerate() {
                        if index == leg {
                            continue; // never back to the talker
                        }
                        if let Some(out) = listener.rewrite(spurt, seq, ts, false, 160, now, RATE) {
                            sent[index].push((out.seq, out.timestamp, out.marker, spurt, seq, now));
                        }
                    }
                }
            };

            for step in steps {
                now += FRAME_NS;
                // Deliver delayed packets that are due.
                let mut index = 0;
                while index < delayed.len() {
                    if delayed[index].4 == 0 {
                        let (leg, ssrc, seq, ts, _) = delayed.remove(index);
                        deliver(leg, ssrc, seq, ts, now, &mut gate, &mut listeners, &mut sent);
                    } else {
                        delayed[index].4 -= 1;
                        index += 1;
                    }
                }
                match step {
                    Step::Send { lost, duplicate, delay } => {
                        let Some(leg) = gate.holder() else { continue };
                        let leg = leg as usize;
                        let talker = &mut talkers[leg];
                        talker.seq = talker.seq.wrapping_add(1);
                        talker.ts = talker.ts.wrapping_add(160);
                        let (ssrc, seq, ts) = (talker.ssrc, talker.seq, talker.ts);
                        if lost {
                            continue;
                        }
                        if delay > 0 {
                            delayed.push((leg, ssrc, seq, ts, delay));
                        } else {
                            deliver(leg, ssrc, seq, ts, now, &mut gate, &mut listeners, &mut sent);
                        }
                        if duplicate {
                            deliver(leg, ssrc, seq, ts, now, &mut gate, &mut listeners, &mut sent);
                        }
                    }
                    Step::Switch { to } => gate.set_holder(to.map(u32::from)),
                    Step::HandOver { to } => gate.set_holder_handing_over(to.map(u32::from), now + 3 * FRAME_NS),
                    Step::SendPrevious => {
                        let Some(leg) = gate.handing_over(now) else { continue };
                        let leg = leg as usize;
                        let talker = &mut talkers[leg];
                        talker.seq = talker.seq.wrapping_add(1);
                        talker.ts = talker.ts.wrapping_add(160);
                        let (ssrc, seq, ts) = (talker.ssrc, talker.seq, talker.ts);
                        deliver(leg, ssrc, seq, ts, now, &mut gate, &mut listeners, &mut sent);
                    }
                    Step::Silence { frames } => {
                        now += u64::from(frames) * FRAME_NS;
                        for talker in &mut talkers {
                            talker.ts = talker.ts.wrapping_add(160 * u32::from(frames));
                        }
                    }
                    Step::SeqJump { by } => {
                        if let Some(leg) = gate.holder() {
                            talkers[leg as usize].seq = talkers[leg as usize].seq.wrapping_add(by);
                        }
                    }
                    Step::NewSsrc => {
                        if let Some(leg) = gate.holder() {
                            ssrc_bump += 1;
                            talkers[leg as usize].ssrc ^= 0x5a5a_0000 | ssrc_bump;
                        }
                    }
                }
            }

            for (index, packets) in sent.iter().enumerate() {
                // Sequence numbers are compared in an extended (unwrapped) space: 16-bit wrap
                // after a long stream is legitimate, a true repeat is not.
                let mut seen = HashSet::new();
                let mut extended: Option<(u16, i64)> = None;
                let mut highest: Option<(u16, u32, u64, u32, u16)> = None; // out seq, ts, wall, spurt, in seq
                // Spurts this listener has moved on from: none comes back (two talkers are never
                // interleaved, handover or not).
                let mut left: HashSet<u32> = HashSet::new();
                let mut current: Option<u32> = None;
                for &(seq, ts, marker, spurt, in_seq, wall) in packets {
                    prop_assert!(!left.contains(&spurt), "listener {index} went back to spurt {spurt}");
                    if current != Some(spurt) {
                        if let Some(previous) = current {
                            left.insert(previous);
                        }
                        current = Some(spurt);
                    }
                    let unwrapped = match extended {
                        Some((last, value)) => value + i64::from(seq.wrapping_sub(last) as i16),
                        None => i64::from(seq),
                    };
                    extended = Some((seq, unwrapped));
                    prop_assert!(seen.insert(unwrapped), "listener {index} repeated seq {seq}");
                    if let Some((last_seq, last_ts, last_wall, last_spurt, last_in)) = highest {
                        let ahead = seq.wrapping_sub(last_seq) as i16;
                        if spurt != last_spurt {
                            prop_assert_eq!(ahead, 1, "listener {} seq jumped at a switch", index);
                            prop_assert!(marker, "no marker at a spurt start");
                            let advance = ts.wrapping_sub(last_ts);
                            let elapsed = ns_to_ts(wall - last_wall, RATE);
                            prop_assert!(advance >= 160 && advance >= elapsed && advance < 1 << 30,
                                "timestamp advanced {} for {} elapsed", advance, elapsed);
                        } else {
                            // Within a spurt, output spacing mirrors input spacing (gaps kept).
                            prop_assert_eq!(ahead, in_seq.wrapping_sub(last_in) as i16);
                        }
                        if ahead > 0 {
                            highest = Some((seq, ts, wall, spurt, in_seq));
                        }
                    } else {
                        prop_assert!(marker);
                        highest = Some((seq, ts, wall, spurt, in_seq));
                    }
                }
            }
        }
    }
}
