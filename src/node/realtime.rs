//! When the SIP thread runs real-time (`sip.realtime_priority`).
//!
//! Under `SCHED_FIFO` the SIP thread runs the moment a datagram wakes it: a floor grant crosses
//! each TCF without waiting behind the media workers. The same promptness costs throughput when
//! SIP traffic is heavy, because datagrams no longer pile up between wake-ups: each wake-up
//! serves one, and the CPU per single call nearly doubles (BENCHMARKS.md, session 6). So the
//! thread stays real-time only while it is lightly loaded: [`Governor`] watches the share of a
//! CPU it used over each 20 ms window and drops it to ordinary scheduling as soon as one window
//! is above `sip.realtime_max_busy`, or at once when two receives in a row find a backlog
//! ([`BACKLOG`] datagrams or more queued each time: a real-time thread that falls behind falls
//! further, its CPU per message doubling; one such receive alone is only the answers to a
//! fan-out arriving together), and takes it back to real time only after a
//! quarter of a second whose average stayed below a third of that (an average, so that the short bursts a
//! floor change or a group set-up causes do not keep it ordinary). A third, not a half: the same
//! load costs a real-time thread up to twice the CPU of an ordinary one, so a narrower band
//! could flip it back and forth.

use std::time::{Duration, Instant};

/// How the SIP thread should be scheduled from now on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// `SCHED_FIFO` at the configured priority.
    Realtime,
    /// Ordinary scheduling (`SCHED_OTHER`).
    Ordinary,
}

/// Decides, window by window, whether the SIP thread runs real-time. Sans-IO: it is given the
/// time and the thread's CPU time and says what to change.
#[derive(Debug)]
pub struct Governor {
    max_busy: f64,
    realtime: bool,
    window_start: Instant,
    window_cpu: Duration,
    /// While ordinary: the start of the current span ([`CALM`]) and the CPU time then.
    span_start: Instant,
    span_cpu: Duration,
    /// Receives in a row that found a backlog.
    backlog_streak: u32,
}

/// The shortest stretch over which the busy share is judged.
pub const WINDOW: Duration = Duration::from_millis(20);

/// Datagrams found queued by a receive that, twice in a row, show the real-time thread is
/// falling behind. (With fewer receive slots than this, e.g. `sip.max_message_size` above
/// 256 KiB, only the busy share counts.)
pub const BACKLOG: usize = 8;

/// The span over which an ordinary thread's load is averaged to decide on its return.
pub const CALM: Duration = Duration::from_millis(250);

impl Governor {
    /// A governor for a thread that has just been made real-time, at `now` with `cpu` of CPU
    /// time used so far. `max_busy` is the share of a CPU (0–1] above which it goes ordinary;
    /// 1 or more keeps it real-time whatever its load.
    pub fn new(max_busy: f64, now: Instant, cpu: Duration) -> Governor {
        Governor {
            max_busy,
            realtime: true,
            window_start: now,
            window_cpu: cpu,
            span_start: now,
            span_cpu: cpu,
            backlog_streak: 0,
        }
    }

    /// Whether the thread is meant to be real-time now.
    pub fn realtime(&self) -> bool {
        self.realtime
    }

    /// A receive found `count` datagrams queued. True when that makes two receives in a row
    /// with a backlog while real-time: then call [`Governor::backlog`].
    pub fn received(&mut self, count: usize) -> bool {
        if count < BACKLOG {
            self.backlog_streak = 0;
            return false;
        }
        self.backlog_streak = self.backlog_streak.saturating_add(1);
        self.realtime && self.max_busy < 1.0 && self.backlog_streak >= 2
    }

    /// The real-time thread is falling behind (at `now`, with `cpu` of CPU time used): it goes
    /// ordinary at once.
    pub fn backlog(&mut self, now: Instant, cpu: Duration) -> Option<Change> {
        if !self.realtime || self.max_busy >= 1.0 {
            return None;
        }
        self.ordinary(now, cpu);
        Some(Change::Ordinary)
    }

    /// The kernel refused to make the thread real-time again: it stays ordinary, and the next
    /// attempt waits for another calm span.
    pub fn refused(&mut self, now: Instant, cpu: Duration) {
        self.ordinary(now, cpu);
    }

    fn ordinary(&mut self, now: Instant, cpu: Duration) {
        self.realtime = false;
        self.backlog_streak = 0;
        self.window_start = now;
        self.window_cpu = cpu;
        self.span_start = now;
        self.span_cpu = cpu;
    }

    /// Takes the thread's CPU time `cpu` at `now`; at the end of each window, says what to
    /// change, if anything.
    pub fn observe(&mut self, now: Instant, cpu: Duration) -> Option<Change> {
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed < WINDOW {
            return None;
        }
        let used = cpu.saturating_sub(self.window_cpu);
        let busy = used.as_secs_f64() / elapsed.as_secs_f64();
        self.window_start = now;
        self.window_cpu = cpu;
        if self.max_busy >= 1.0 {
            return None;
        }
        if self.realtime {
            if busy > self.max_busy {
                self.ordinary(now, cpu);
                return Some(Change::Ordinary);
            }
            return None;
        }
        let span = now.saturating_duration_since(self.span_start);
        if span < CALM {
            return None;
        }
        let average = cpu.saturating_sub(self.span_cpu).as_secs_f64() / span.as_secs_f64();
        self.span_start = now;
        self.span_cpu = cpu;
        if average < self.max_busy / 3.0 {
            self.realtime = true;
            return Some(Change::Realtime);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Feeds `busy` (share of a CPU) for `windows` windows; returns the changes.
    fn run(governor: &mut Governor, at: &mut Instant, cpu: &mut Duration, busy: f64, windows: u32) -> Vec<Change> {
        let mut changes = Vec::new();
        for _ in 0..windows {
            // Observed twice per window: the first look is too early to judge.
            *at += WINDOW / 2;
            *cpu += WINDOW.mul_f64(busy / 2.0);
            changes.extend(governor.observe(*at, *cpu));
            *at += WINDOW / 2;
            *cpu += WINDOW.mul_f64(busy / 2.0);
            changes.extend(governor.observe(*at, *cpu));
        }
        changes
    }

    #[test]
    fn a_lightly_loaded_thread_stays_realtime() {
        let mut at = Instant::now();
        let mut cpu = Duration::from_secs(3);
        let mut governor = Governor::new(0.25, at, cpu);
        assert!(run(&mut governor, &mut at, &mut cpu, 0.05, 500).is_empty());
        assert!(governor.realtime());
    }

    #[test]
    fn a_busy_thread_goes_ordinary_and_comes_back_only_well_below_the_limit() {
        let mut at = Instant::now();
        let mut cpu = Duration::ZERO;
        let mut governor = Governor::new(0.25, at, cpu);
        assert_eq!(run(&mut governor, &mut at, &mut cpu, 0.5, 1), vec![Change::Ordinary]);
        assert!(!governor.realtime());
        // Ordinary scheduling halves the cost; still above a third of the limit: stays.
        assert!(run(&mut governor, &mut at, &mut cpu, 0.2, 200).is_empty());
        assert!(run(&mut governor, &mut at, &mut cpu, 0.09, 200).is_empty());
        // Calm: back within two spans (the first may have begun busy).
        assert_eq!(run(&mut governor, &mut at, &mut cpu, 0.05, 100), vec![Change::Realtime]);
        assert!(governor.realtime());
    }

    #[test]
    fn bursts_count_by_their_average() {
        let mut at = Instant::now();
        let mut cpu = Duration::ZERO;
        let mut governor = Governor::new(0.25, at, cpu);
        assert_eq!(run(&mut governor, &mut at, &mut cpu, 0.9, 1), vec![Change::Ordinary]);
        // A burst of 15% every other window: 7.5% on average, below a third of 25%.
        let mut changes = Vec::new();
        for _ in 0..60 {
            changes.extend(run(&mut governor, &mut at, &mut cpu, 0.15, 1));
            changes.extend(run(&mut governor, &mut at, &mut cpu, 0.0, 1));
        }
        assert_eq!(changes, vec![Change::Realtime]);
        // 20% every other window (10% on average) once real-time again: no window above 25%,
        // so it stays real-time; as ordinary it would not come back.
        assert!(run(&mut governor, &mut at, &mut cpu, 0.2, 100).is_empty());
        assert_eq!(run(&mut governor, &mut at, &mut cpu, 0.3, 1), vec![Change::Ordinary]);
        let mut changes = Vec::new();
        for _ in 0..100 {
            changes.extend(run(&mut governor, &mut at, &mut cpu, 0.2, 1));
            changes.extend(run(&mut governor, &mut at, &mut cpu, 0.0, 1));
        }
        assert!(changes.is_empty(), "{changes:?}");
    }

    #[test]
    fn a_load_at_the_limit_does_not_flip_back_and_forth() {
        // A load that costs 26% real-time and 14% ordinary (the ~1.8× of BENCHMARKS.md).
        let mut at = Instant::now();
        let mut cpu = Duration::ZERO;
        let mut governor = Governor::new(0.25, at, cpu);
        let mut changes = run(&mut governor, &mut at, &mut cpu, 0.26, 1);
        for _ in 0..500 {
            let busy = if governor.realtime() { 0.26 } else { 0.14 };
            changes.extend(run(&mut governor, &mut at, &mut cpu, busy, 1));
        }
        assert_eq!(changes, vec![Change::Ordinary]);
    }

    #[test]
    fn a_backlog_twice_in_a_row_makes_it_ordinary_at_once_until_a_calm_span() {
        let mut at = Instant::now();
        let mut cpu = Duration::ZERO;
        let mut governor = Governor::new(0.25, at, cpu);
        at += MS;
        // A fan-out's answers arriving together: one big receive, then small ones.
        for count in [12, 1, 9, 3, 32, 0, 8, 7] {
            assert!(!governor.received(count), "{count}");
        }
        assert!(!governor.received(8));
        assert!(governor.received(8), "a second backlog in a row");
        assert_eq!(governor.backlog(at, cpu), Some(Change::Ordinary));
        assert!(!governor.received(30) && !governor.received(30), "already ordinary");
        assert_eq!(governor.backlog(at, cpu), None, "already ordinary");
        assert!(run(&mut governor, &mut at, &mut cpu, 0.1, 200).is_empty());
        assert_eq!(run(&mut governor, &mut at, &mut cpu, 0.02, 100), vec![Change::Realtime]);
        let mut always = Governor::new(1.0, at, cpu);
        assert!(!always.received(32) && !always.received(32));
        assert_eq!(always.backlog(at, cpu), None);
    }

    #[test]
    fn a_refused_return_waits_for_another_calm_span() {
        let mut at = Instant::now();
        let mut cpu = Duration::ZERO;
        let mut governor = Governor::new(0.25, at, cpu);
        assert_eq!(run(&mut governor, &mut at, &mut cpu, 0.5, 1), vec![Change::Ordinary]);
        assert_eq!(run(&mut governor, &mut at, &mut cpu, 0.0, 100), vec![Change::Realtime]);
        governor.refused(at, cpu);
        assert!(!governor.realtime());
        assert!(run(&mut governor, &mut at, &mut cpu, 0.0, 10).is_empty());
        assert_eq!(run(&mut governor, &mut at, &mut cpu, 0.0, 5), vec![Change::Realtime]);
    }

    #[test]
    fn max_busy_of_one_keeps_it_realtime() {
        let mut at = Instant::now();
        let mut cpu = Duration::ZERO;
        let mut governor = Governor::new(1.0, at, cpu);
        assert!(run(&mut governor, &mut at, &mut cpu, 0.99, 200).is_empty());
        assert!(governor.realtime());
    }

    #[test]
    fn short_looks_and_clock_oddities_judge_nothing() {
        let at = Instant::now();
        let mut governor = Governor::new(0.25, at, Duration::from_secs(1));
        assert_eq!(governor.observe(at + 5 * MS, Duration::from_secs(5)), None);
        // CPU time going backwards (it cannot, but) counts as idle.
        assert_eq!(governor.observe(at + 200 * MS, Duration::ZERO), None);
        assert!(governor.realtime());
    }
}
