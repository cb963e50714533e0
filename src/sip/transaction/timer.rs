//! The transaction timers, named after RFC 3261 §17 (table 4) and RFC 6026, as a fixed table of deadlines.
//!
//! Each state machine owns one [`TimerTable`]. A timer is either stopped or holds the instant at which it
//! fires; the machine's next timeout is the earliest of them. Firing is driven from outside: the machine's
//! `handle_timeout(now)` takes every timer whose deadline is not after `now`, so calling it early (a spurious
//! wake-up) does nothing.

use std::time::{Duration, Instant};

/// One transaction timer. The letters are those of RFC 3261 table 4 (A–K) and RFC 6026 (L, M).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timer {
    /// Client INVITE request retransmission (UDP only): T1, doubling each time, no cap.
    A,
    /// Client INVITE transaction timeout: 64·T1. Also armed in Proceeding once a CANCEL has been sent
    /// (RFC 3261 §9.1: give up 64·T1 after the CANCEL if no final response arrives).
    B,
    /// Client INVITE wait for response retransmissions in Completed: at least 32 s on UDP, zero on reliable.
    D,
    /// Client non-INVITE request retransmission (UDP only): T1, doubling up to T2.
    E,
    /// Client non-INVITE transaction timeout: 64·T1.
    F,
    /// Server INVITE final non-2xx response retransmission (UDP only): T1, doubling up to T2.
    G,
    /// Server INVITE wait for ACK: 64·T1.
    H,
    /// Server INVITE wait for ACK retransmissions in Confirmed: T4 on UDP, zero on reliable.
    I,
    /// Server non-INVITE wait for request retransmissions in Completed: 64·T1 on UDP, zero on reliable.
    J,
    /// Client non-INVITE wait for response retransmissions in Completed: T4 on UDP, zero on reliable.
    K,
    /// RFC 6026 server INVITE Accepted state: absorb INVITE retransmissions for 64·T1 after a 2xx.
    L,
    /// RFC 6026 client INVITE Accepted state: pass 2xx retransmissions to the TU for 64·T1.
    M,
    /// Not lettered in RFC 3261: the 200 ms after which §17.2.1 wants a 100 (Trying) for an INVITE the TU
    /// has not answered yet.
    Trying,
}

impl Timer {
    /// Every timer, in table order (which is also the tie-break order when two fire at the same instant).
    pub const ALL: [Timer; 13] = [
        Timer::A,
        Timer::B,
        Timer::D,
        Timer::E,
        Timer::F,
        Timer::G,
        Timer::H,
        Timer::I,
        Timer::J,
        Timer::K,
        Timer::L,
        Timer::M,
        Timer::Trying,
    ];

    const COUNT: usize = Self::ALL.len();

    fn index(self) -> usize {
        self as usize
    }
}

/// The three RFC 3261 base intervals every transaction timer derives from.
///
/// Built through [`TimerConfig::new`] so that a zero or inverted value (which would make retransmission
/// loops spin) cannot reach a state machine; the defaults are the RFC's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerConfig {
    t1: Duration,
    t2: Duration,
    t4: Duration,
}

/// Why a [`TimerConfig`] was refused; each variant names the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TimerConfigError {
    /// `t1` must be at least 1 ms and at most [`TimerConfig::MAX`].
    #[error("t1 must be between 1 ms and 60 s, got {0:?}")]
    T1OutOfRange(Duration),
    /// `t2` must be at least `t1` (it caps a doubling that starts at `t1`) and at most [`TimerConfig::MAX`].
    #[error("t2 must be between t1 ({t1:?}) and 60 s, got {t2:?}")]
    T2OutOfRange {
        /// The accepted `t1`.
        t1: Duration,
        /// The refused `t2`.
        t2: Duration,
    },
    /// `t4` must be at least 1 ms and at most [`TimerConfig::MAX`].
    #[error("t4 must be between 1 ms and 60 s, got {0:?}")]
    T4OutOfRange(Duration),
}

impl TimerConfig {
    /// RFC 3261 T1, the round-trip time estimate: 500 ms.
    pub const DEFAULT_T1: Duration = Duration::from_millis(500);
    /// RFC 3261 T2, the cap on non-INVITE request and INVITE response retransmission intervals: 4 s.
    pub const DEFAULT_T2: Duration = Duration::from_secs(4);
    /// RFC 3261 T4, the time a message may linger in the network: 5 s.
    pub const DEFAULT_T4: Duration = Duration::from_secs(5);
    /// Upper bound on any base interval; far beyond sane values, it keeps deadline arithmetic far from overflow.
    pub const MAX: Duration = Duration::from_secs(60);
    /// RFC 3261 §17.2.1: answer an INVITE with 100 (Trying) if the TU has not responded within 200 ms.
    pub const TRYING_DELAY: Duration = Duration::from_millis(200);
    /// RFC 3261 Timer D floor on unreliable transports: 32 s.
    pub const MIN_TIMER_D: Duration = Duration::from_secs(32);

    /// Validates the base intervals: `1 ms <= t1 <= t2 <= 60 s` and `1 ms <= t4 <= 60 s`.
    pub fn new(t1: Duration, t2: Duration, t4: Duration) -> Result<Self, TimerConfigError> {
        let floor = Duration::from_millis(1);
        if t1 < floor || t1 > Self::MAX {
            return Err(TimerConfigError::T1OutOfRange(t1));
        }
        if t2 < t1 || t2 > Self::MAX {
            return Err(TimerConfigError::T2OutOfRange { t1, t2 });
        }
        if t4 < floor || t4 > Self::MAX {
            return Err(TimerConfigError::T4OutOfRange(t4));
        }
        Ok(Self { t1, t2, t4 })
    }

    /// T1: the first retransmission interval.
    pub fn t1(&self) -> Duration {
        self.t1
    }

    /// T2: the cap on doubling retransmission intervals (timers E and G).
    pub fn t2(&self) -> Duration {
        self.t2
    }

    /// T4: how long messages may stay in the network (timers I and K).
    pub fn t4(&self) -> Duration {
        self.t4
    }

    /// 64·T1: the transaction timeout (timers B, F, H, L, M and J on UDP).
    pub fn transaction_timeout(&self) -> Duration {
        self.t1 * 64
    }

    /// Timer D: zero on reliable transports, else the larger of 32 s and 64·T1 so that it always outlasts the
    /// server's Timer H retransmission window (RFC 3261 asks for "> 32 s", sized for the default T1).
    pub(crate) fn timer_d(&self, reliable: bool) -> Duration {
        if reliable {
            Duration::ZERO
        } else {
            Self::MIN_TIMER_D.max(self.transaction_timeout())
        }
    }

    /// Timers I and K: zero on reliable transports, else T4.
    pub(crate) fn linger(&self, reliable: bool) -> Duration {
        if reliable {
            Duration::ZERO
        } else {
            self.t4
        }
    }

    /// Timer J: zero on reliable transports, else 64·T1.
    pub(crate) fn timer_j(&self, reliable: bool) -> Duration {
        if reliable {
            Duration::ZERO
        } else {
            self.transaction_timeout()
        }
    }
}

impl Default for TimerConfig {
    fn default() -> Self {
        Self {
            t1: Self::DEFAULT_T1,
            t2: Self::DEFAULT_T2,
            t4: Self::DEFAULT_T4,
        }
    }
}

/// The deadlines of one transaction, indexed by [`Timer`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TimerTable {
    deadlines: [Option<Instant>; Timer::COUNT],
}

impl TimerTable {
    /// Arms (or re-arms) `timer` to fire at `at`.
    pub(crate) fn set(&mut self, timer: Timer, at: Instant) {
        self.deadlines[timer.index()] = Some(at);
    }

    /// Disarms `timer`; stopping a stopped timer is harmless.
    pub(crate) fn stop(&mut self, timer: Timer) {
        self.deadlines[timer.index()] = None;
    }

    /// Disarms every timer (the machine reached Terminated).
    pub(crate) fn stop_all(&mut self) {
        self.deadlines = [None; Timer::COUNT];
    }

    /// When `timer` fires, if armed.
    pub(crate) fn deadline(&self, timer: Timer) -> Option<Instant> {
        self.deadlines[timer.index()]
    }

    /// The earliest armed deadline.
    pub(crate) fn next_timeout(&self) -> Option<Instant> {
        self.deadlines.iter().flatten().min().copied()
    }

    /// Disarms and returns the earliest timer due at `now` (ties in table order), or `None` if nothing is due.
    pub(crate) fn expire(&mut self, now: Instant) -> Option<Timer> {
        let mut due: Option<(Instant, Timer)> = None;
        for timer in Timer::ALL {
            if let Some(at) = self.deadlines[timer.index()] {
                if at <= now && due.map_or(true, |(earliest, _)| at < earliest) {
                    due = Some((at, timer));
                }
            }
        }
        let (_, timer) = due?;
        self.stop(timer);
        Some(timer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_order_matches_index() {
        for (position, timer) in Timer::ALL.into_iter().enumerate() {
            assert_eq!(timer.index(), position);
        }
    }

    #[test]
    fn next_timeout_is_the_minimum_and_expire_takes_due_timers_in_deadline_order() {
        let start = Instant::now();
        let mut table = TimerTable::default();
        assert_eq!(table.next_timeout(), None);
        table.set(Timer::B, start + Duration::from_secs(32));
        table.set(Timer::A, start + Duration::from_millis(500));
        table.set(Timer::Trying, start + Duration::from_millis(200));
        assert_eq!(table.next_timeout(), Some(start + Duration::from_millis(200)));

        // A spurious poll before anything is due changes nothing.
        assert_eq!(table.expire(start + Duration::from_millis(100)), None);

        let late = start + Duration::from_secs(1);
        assert_eq!(table.expire(late), Some(Timer::Trying));
        assert_eq!(table.expire(late), Some(Timer::A));
        assert_eq!(table.expire(late), None);
        assert_eq!(table.deadline(Timer::B), Some(start + Duration::from_secs(32)));
        table.stop_all();
        assert_eq!(table.next_timeout(), None);
    }

    #[test]
    fn config_is_validated() {
        let ms = Duration::from_millis;
        assert!(TimerConfig::new(ms(500), ms(4000), ms(5000)).is_ok());
        assert_eq!(
            TimerConfig::new(Duration::ZERO, ms(4000), ms(5000)),
            Err(TimerConfigError::T1OutOfRange(Duration::ZERO))
        );
        assert!(matches!(
            TimerConfig::new(ms(500), ms(100), ms(5000)),
            Err(TimerConfigError::T2OutOfRange { .. })
        ));
        assert!(matches!(
            TimerConfig::new(ms(500), ms(4000), Duration::ZERO),
            Err(TimerConfigError::T4OutOfRange(_))
        ));
        let config = TimerConfig::default();
        assert_eq!(config.transaction_timeout(), Duration::from_secs(32));
        assert_eq!(config.timer_d(false), Duration::from_secs(32));
        assert_eq!(config.timer_d(true), Duration::ZERO);
        let slow = TimerConfig::new(Duration::from_secs(1), Duration::from_secs(4), Duration::from_secs(5))
            .expect("valid config");
        assert_eq!(slow.timer_d(false), Duration::from_secs(64));
    }
}
