//! What the run measures: live counters for the progress line, latency histograms, and the
//! logs (spurts sent, session memberships) the final loss accounting is computed from.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// A latency histogram in microseconds (1 µs to 1 h, 3 significant digits).
pub fn histogram() -> Histogram<u64> {
    #[allow(clippy::expect_used)]
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static histogram bounds are valid")
}

/// Records a duration in microseconds.
pub fn record(histogram: &mut Histogram<u64>, duration: Duration) {
    histogram.saturating_record((duration.as_micros() as u64).max(1));
}

/// Records nanoseconds as microseconds (negative clock differences count as 1 µs).
pub fn record_ns(histogram: &mut Histogram<u64>, ns: i64) {
    histogram.saturating_record(((ns.max(0) as u64) / 1000).max(1));
}

/// Locks a mutex even when a panicking thread poisoned it (the data is counters).
pub fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One talker's turn (or one direction of a single call), as sent.
#[derive(Debug, Clone, Serialize)]
pub struct SpurtRecord {
    pub id: u32,
    pub session: u32,
    /// Index of the group (or single call pair) in the plan.
    pub owner: usize,
    pub talker_slot: u32,
    pub grant_ns: u64,
    pub first_ns: u64,
    pub last_ns: u64,
    pub sent: u32,
}

/// A listener slot's time in a session (it should hear every spurt sent in that window).
#[derive(Debug, Clone, Copy)]
pub struct Membership {
    pub slot: u32,
    pub session: u32,
    pub joined_ns: u64,
    pub left_ns: Option<u64>,
}

/// The control-plane latencies, in microseconds.
pub struct Latencies {
    pub register: Histogram<u64>,
    pub group_setup: Histogram<u64>,
    pub join: Histogram<u64>,
    /// Group call set-up to the last member joined (INVITE → every member's ACK).
    pub group_setup_all: Histogram<u64>,
    pub floor_grant: Histogram<u64>,
    /// Floor grants of requesters served by the group's home (`[0]`) and by other TCFs (`[1]`,
    /// whose request and grant cross a member TCF).
    pub floor_grant_by_place: [Histogram<u64>; 2],
    pub queued_grant: Histogram<u64>,
    pub release: Histogram<u64>,
    pub teardown: Histogram<u64>,
    pub call_setup: Histogram<u64>,
    pub call_ringing: Histogram<u64>,
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies {
            register: histogram(),
            group_setup: histogram(),
            join: histogram(),
            group_setup_all: histogram(),
            floor_grant: histogram(),
            floor_grant_by_place: [histogram(), histogram()],
            queued_grant: histogram(),
            release: histogram(),
            teardown: histogram(),
            call_setup: histogram(),
            call_ringing: histogram(),
        }
    }
}

/// Control-plane counters.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ControlCounters {
    pub registrations_ok: u64,
    pub registrations_failed: u64,
    pub floor_requests: u64,
    pub floor_granted: u64,
    pub floor_queued: u64,
    pub floor_rejected: u64,
    pub floor_revoked: u64,
    pub floor_releases: u64,
    pub talker_notifications: u64,
    pub sip_timeouts: u64,
    pub sip_errors: u64,
    pub unexpected_byes: u64,
    pub members_missing: u64,
    /// Cycle mode: group calls set up and torn down completely (every member got its BYE)
    /// during the traffic time, and cycles that went wrong (a failure or a missing BYE).
    pub cycles_completed: u64,
    pub cycles_failed: u64,
}

/// How one group call went.
#[derive(Debug, Clone, Serialize)]
pub struct GroupOutcome {
    pub group: String,
    pub home: String,
    pub session: u32,
    pub members: usize,
    pub joined: usize,
    pub spurts: u32,
    /// `None` when the call ran to the end.
    pub failure: Option<Failure>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub reason: String,
    /// Seconds since the start of the run.
    pub at_s: f64,
}

/// Single-call counters.
#[derive(Debug, Default, Clone, Serialize)]
pub struct CallCounters {
    pub attempted: u64,
    pub answered: u64,
    pub failed: u64,
    pub by_status: std::collections::BTreeMap<String, u64>,
    pub completed: u64,
    pub max_concurrent: u64,
    /// Calls not placed because every pair was still in a call.
    pub skipped: u64,
}

/// Everything the controllers write.
#[derive(Default)]
pub struct Control {
    pub latencies: Latencies,
    pub counters: ControlCounters,
    pub spurts: Vec<SpurtRecord>,
    pub memberships: Vec<Membership>,
    pub groups: Vec<GroupOutcome>,
    pub calls: CallCounters,
    /// First failures seen, with context (message traces for the report).
    pub evidence: Vec<String>,
}

impl Control {
    pub fn evidence(&mut self, text: String) {
        if self.evidence.len() < 50 {
            self.evidence.push(text);
        }
    }
}

/// State shared by every part of one run.
pub struct Shared {
    pub run_id: u32,
    pub started: Instant,
    pub started_ns: u64,
    /// Tells the receivers to finish.
    pub stop_receivers: AtomicBool,
    /// Tells the controllers to wind down (duration or count reached).
    pub stop_traffic: AtomicBool,
    pub next_spurt: AtomicU32,
    pub next_session: AtomicU32,
    pub tx_packets: AtomicU64,
    pub tx_errors: AtomicU64,
    pub sender_late: AtomicU64,
    pub expected_deliveries: AtomicU64,
    pub rx_packets: AtomicU64,
    pub groups_up: AtomicUsize,
    pub calls_up: AtomicUsize,
    pub spurts_started: AtomicU64,
    /// Mouth-to-ear latency of the current progress interval (µs).
    pub live_latency: Mutex<Histogram<u64>>,
    pub control: Mutex<Control>,
}

impl Shared {
    pub fn new() -> Shared {
        Shared {
            run_id: rand::random::<u32>() | 1,
            started: Instant::now(),
            started_ns: crate::rtp::now_ns(),
            stop_receivers: AtomicBool::new(false),
            stop_traffic: AtomicBool::new(false),
            next_spurt: AtomicU32::new(1),
            next_session: AtomicU32::new(1),
            tx_packets: AtomicU64::new(0),
            tx_errors: AtomicU64::new(0),
            sender_late: AtomicU64::new(0),
            expected_deliveries: AtomicU64::new(0),
            rx_packets: AtomicU64::new(0),
            groups_up: AtomicUsize::new(0),
            calls_up: AtomicUsize::new(0),
            spurts_started: AtomicU64::new(0),
            live_latency: Mutex::new(histogram()),
            control: Mutex::new(Control::default()),
        }
    }

    pub fn spurt_id(&self) -> u32 {
        self.next_spurt.fetch_add(1, Ordering::Relaxed)
    }

    pub fn session_id(&self) -> u32 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// Wall-clock ns of a monotonic instant of this run.
    pub fn wall_ns(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.started);
        self.started_ns + since.as_nanos() as u64
    }

    pub fn stopping(&self) -> bool {
        self.stop_traffic.load(Ordering::Relaxed)
    }
}

/// What a listener received of one spurt: the distinct packets, and which (a bit per index).
#[derive(Debug, Default, Clone)]
pub struct SpurtSeen {
    pub unique: u32,
    pub bits: Vec<u64>,
}

impl SpurtSeen {
    pub fn has(&self, index: u32) -> bool {
        self.bits
            .get((index / 64) as usize)
            .is_some_and(|word| word & (1u64 << (index % 64)) != 0)
    }
}

/// What one listener slot saw (from a receiver thread).
#[derive(Debug, Default, Clone)]
pub struct SlotResult {
    pub slot: u32,
    /// What was received of each spurt.
    pub spurts: HashMap<u32, SpurtSeen>,
    pub packets: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub late_spurt: u64,
    pub seq_discontinuities: u64,
    pub ts_discontinuities: u64,
    pub ssrc_changes: u64,
    pub marker_missing: u64,
    pub corrupt: u64,
    pub self_heard: u64,
    pub foreign: u64,
    pub rtcp: u64,
    /// The first discontinuities, described.
    pub notes: Vec<String>,
}

/// What a receiver thread hands back.
pub struct ReceiverOutput {
    pub slots: Vec<SlotResult>,
    pub mouth_to_ear: Histogram<u64>,
    pub switch: Histogram<u64>,
    /// Switch and mouth-to-ear latency of listeners served by the group's home TCF (`[0]`) and
    /// by other TCFs (`[1]`).
    pub switch_by_place: [Histogram<u64>; 2],
    pub mouth_to_ear_by_place: [Histogram<u64>; 2],
    pub kernel_timestamps: bool,
}
