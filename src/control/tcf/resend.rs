//! Our 2xx to an INVITE, sent again until its ACK comes (RFC 3261 §13.3.1.4): T1, doubling up to
//! T2, for at most 64·T1. The schedule single calls and group calls share; each keeps its own
//! idea of whose 2xx it is.

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::sip::transaction::TransactionKey;

/// A 2xx waiting for its ACK.
#[derive(Debug)]
pub(super) struct Resend2xx {
    /// The INVITE server transaction the 2xx answered (it is sent again through it).
    pub(super) key: TransactionKey,
    /// The 2xx as sent.
    pub(super) bytes: Bytes,
    /// The INVITE's CSeq number (the ACK that stops it carries the same).
    pub(super) cseq: u32,
    next: Instant,
    interval: Duration,
    give_up: Instant,
}

/// What [`Resend2xx::poll`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Resend {
    /// Not yet: look again at [`Resend2xx::next`].
    Wait,
    /// Send [`Resend2xx::bytes`] again now (the next time is set).
    Send,
    /// 64·T1 passed with no ACK.
    GiveUp,
}

impl Resend2xx {
    /// A 2xx sent at `now`: the first resend is due after `t1`.
    pub(super) fn new(key: TransactionKey, bytes: Bytes, cseq: u32, now: Instant, t1: Duration) -> Self {
        Self {
            key,
            bytes,
            cseq,
            next: now + t1,
            interval: t1,
            give_up: now + t1 * 64,
        }
    }

    /// When to poll next (never after the give-up time).
    pub(super) fn next(&self) -> Instant {
        self.next
    }

    /// What to do at `now`; after [`Resend::Send`] the interval has doubled (at most `t2`).
    pub(super) fn poll(&mut self, now: Instant, t2: Duration) -> Resend {
        if now >= self.give_up {
            return Resend::GiveUp;
        }
        if self.next > now {
            return Resend::Wait;
        }
        self.interval = (self.interval * 2).min(t2);
        self.next = (now + self.interval).min(self.give_up);
        Resend::Send
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_t2_then_gives_up_at_64_t1() {
        let start = Instant::now();
        let t1 = Duration::from_millis(500);
        let t2 = Duration::from_secs(4);
        let key = TransactionKey::new(
            "z9hG4bKresend",
            "127.0.0.1:5060",
            crate::sip::transaction::Method::Invite,
        )
        .unwrap();
        let mut resend = Resend2xx::new(key, Bytes::from_static(b"SIP/2.0 200 OK"), 1, start, t1);
        let mut sent = Vec::new();
        let now = loop {
            let now = resend.next();
            match resend.poll(now, t2) {
                Resend::Send => sent.push(now.duration_since(start).as_millis()),
                Resend::GiveUp => break now,
                Resend::Wait => unreachable!("polled at its own next time"),
            }
        };
        assert_eq!(&sent[..5], &[500, 1500, 3500, 7500, 11500]);
        assert_eq!(now.duration_since(start), t1 * 64);
        assert_eq!(resend.poll(now + Duration::from_secs(1), t2), Resend::GiveUp);
    }
}
