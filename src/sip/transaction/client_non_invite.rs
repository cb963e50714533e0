//! The non-INVITE client transaction: RFC 3261 §17.1.2 (figure 6).
//!
//! ```text
//! Trying     --1xx--------> Proceeding
//! Trying     --200-699----> Completed  --Timer K--> Terminated
//! Proceeding --200-699----> Completed
//! Trying     --Timer F----> Terminated (Timeout to the TU; also from Proceeding)
//! any        --transport error--> Terminated
//! ```

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::timer::{Timer, TimerConfig, TimerTable};
use super::{is_valid_status, notify, transmit, Output, Role, TransactionError, TransactionKey, TransactionUserEvent};

/// The states of figure 6, for observers; the machine's own state also holds data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientNonInviteState {
    /// Request sent, no response yet; retransmitting on Timer E (doubling up to T2) over UDP.
    Trying,
    /// A provisional response arrived; still retransmitting over UDP, every T2.
    Proceeding,
    /// A final response arrived; absorbing its retransmissions until Timer K.
    Completed,
    /// Over.
    Terminated,
}

impl ClientNonInviteState {
    /// The state name, for errors and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trying => "Trying",
            Self::Proceeding => "Proceeding",
            Self::Completed => "Completed",
            Self::Terminated => "Terminated",
        }
    }
}

/// One non-INVITE client transaction (BYE, OPTIONS, REGISTER, CANCEL, ...): sends the request reliably and
/// hands responses to the TU.
#[derive(Debug)]
pub struct ClientNonInvite<D> {
    key: TransactionKey,
    destination: D,
    reliable: bool,
    config: TimerConfig,
    timers: TimerTable,
    state: State,
}

#[derive(Debug)]
enum State {
    Trying {
        request: Bytes,
        /// The interval Timer E was last armed with; doubles up to T2.
        retransmit_interval: Duration,
    },
    Proceeding {
        request: Bytes,
    },
    Completed,
    Terminated,
}

impl<D: Clone> ClientNonInvite<D> {
    /// Creates the transaction and sends the request: Timer E (UDP only) and Timer F start now.
    pub fn start(
        now: Instant,
        key: TransactionKey,
        request: Bytes,
        destination: D,
        reliable: bool,
        config: TimerConfig,
        out: &mut VecDeque<Output<D>>,
    ) -> Self {
        let mut timers = TimerTable::default();
        if !reliable {
            timers.set(Timer::E, now + config.t1());
        }
        timers.set(Timer::F, now + config.transaction_timeout());
        transmit(out, Role::Client, &key, request.clone(), destination.clone());
        Self {
            key,
            destination,
            reliable,
            config,
            timers,
            state: State::Trying {
                request,
                retransmit_interval: config.t1(),
            },
        }
    }

    /// A response matched this transaction. Invalid status codes and responses after the final are ignored.
    pub fn on_response(&mut self, now: Instant, status: u16, bytes: Bytes, out: &mut VecDeque<Output<D>>) {
        if !is_valid_status(status) || !matches!(self.state, State::Trying { .. } | State::Proceeding { .. }) {
            return;
        }
        if status < 200 {
            if let State::Trying { request, .. } = &mut self.state {
                let request = std::mem::take(request);
                self.state = State::Proceeding { request };
            }
        } else {
            self.timers.stop(Timer::E);
            self.timers.stop(Timer::F);
            self.timers.set(Timer::K, now + self.config.linger(self.reliable));
            self.state = State::Completed;
        }
        notify(
            out,
            TransactionUserEvent::Response {
                key: self.key.clone(),
                status,
                bytes,
            },
        );
    }

    /// The transport could not deliver for this transaction: tell the TU and terminate.
    pub fn on_transport_error(&mut self, out: &mut VecDeque<Output<D>>) {
        if self.is_terminated() {
            return;
        }
        notify(
            out,
            TransactionUserEvent::TransportError {
                role: Role::Client,
                key: self.key.clone(),
            },
        );
        self.terminate(out);
    }

    /// Runs every timer due at `now`; harmless if none is.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut VecDeque<Output<D>>) {
        while let Some(timer) = self.timers.expire(now) {
            match (timer, &mut self.state) {
                (
                    Timer::E,
                    State::Trying {
                        request,
                        retransmit_interval,
                    },
                ) => {
                    *retransmit_interval = retransmit_interval.saturating_mul(2).min(self.config.t2());
                    self.timers.set(Timer::E, now + *retransmit_interval);
                    transmit(out, Role::Client, &self.key, request.clone(), self.destination.clone());
                }
                (Timer::E, State::Proceeding { request }) => {
                    self.timers.set(Timer::E, now + self.config.t2());
                    transmit(out, Role::Client, &self.key, request.clone(), self.destination.clone());
                }
                (Timer::F, State::Trying { .. } | State::Proceeding { .. }) => {
                    notify(
                        out,
                        TransactionUserEvent::Timeout {
                            role: Role::Client,
                            key: self.key.clone(),
                        },
                    );
                    self.terminate(out);
                }
                (Timer::K, State::Completed) => self.terminate(out),
                // Timers are stopped on every transition, so anything else is a leftover: ignore it.
                _ => {}
            }
        }
    }

    /// The next instant `handle_timeout` has work to do.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next_timeout()
    }

    /// The current state.
    pub fn state(&self) -> ClientNonInviteState {
        match self.state {
            State::Trying { .. } => ClientNonInviteState::Trying,
            State::Proceeding { .. } => ClientNonInviteState::Proceeding,
            State::Completed => ClientNonInviteState::Completed,
            State::Terminated => ClientNonInviteState::Terminated,
        }
    }

    /// Whether the transaction is over.
    pub fn is_terminated(&self) -> bool {
        matches!(self.state, State::Terminated)
    }

    /// The transaction's key.
    pub fn key(&self) -> &TransactionKey {
        &self.key
    }

    pub(crate) fn wrong_state(&self) -> TransactionError {
        TransactionError::WrongState {
            state: self.state().as_str(),
        }
    }

    fn terminate(&mut self, out: &mut VecDeque<Output<D>>) {
        self.timers.stop_all();
        self.state = State::Terminated;
        notify(
            out,
            TransactionUserEvent::Terminated {
                role: Role::Client,
                key: self.key.clone(),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::transaction::testkit::{events, key, ms};
    use crate::sip::transaction::Method;

    fn start(reliable: bool) -> (Instant, ClientNonInvite<u8>, VecDeque<Output<u8>>) {
        let now = Instant::now();
        let mut out = VecDeque::new();
        let machine = ClientNonInvite::start(
            now,
            key("z9hG4bK2", Method::Other("OPTIONS".into())),
            Bytes::from_static(b"OPTIONS"),
            3,
            reliable,
            TimerConfig::default(),
            &mut out,
        );
        (now, machine, out)
    }

    /// Drives the machine exactly at its deadlines until it has none, applying `at_ms` inputs on the way;
    /// returns the offsets (ms) of every transmission.
    fn run(
        start: Instant,
        machine: &mut ClientNonInvite<u8>,
        out: &mut VecDeque<Output<u8>>,
        responses: &[(u64, u16)],
    ) -> Vec<u128> {
        let mut pending: VecDeque<(u64, u16)> = responses.iter().copied().collect();
        let mut sent = Vec::new();
        let mut now = start;
        loop {
            for output in out.drain(..) {
                if let Output::Transmit { .. } = output {
                    sent.push((now - start).as_millis());
                }
            }
            let timer = machine.poll_timeout();
            let response = pending.front().map(|(at, _)| start + ms(*at));
            match (timer, response) {
                (None, None) => return sent,
                (Some(at), Some(response_at)) if at < response_at => {
                    now = at;
                    machine.handle_timeout(now, out);
                }
                (Some(at), None) => {
                    now = at;
                    machine.handle_timeout(now, out);
                }
                (_, Some(response_at)) => {
                    now = response_at;
                    let (_, status) = pending.pop_front().expect("peeked above");
                    machine.on_response(now, status, Bytes::new(), out);
                }
            }
        }
    }

    #[test]
    fn timer_e_doubles_up_to_t2_until_timer_f() {
        let (now, mut machine, mut out) = start(false);
        let sent = run(now, &mut machine, &mut out, &[]);
        assert_eq!(
            sent,
            [0, 500, 1500, 3500, 7500, 11_500, 15_500, 19_500, 23_500, 27_500, 31_500]
        );
        assert!(machine.is_terminated());
    }

    #[test]
    fn timer_f_times_out_at_64_t1() {
        let (now, mut machine, mut out) = start(true);
        out.clear();
        machine.handle_timeout(now + ms(31_999), &mut out);
        assert!(out.is_empty());
        machine.handle_timeout(now + ms(32_000), &mut out);
        assert!(matches!(
            &events(&mut out)[..],
            [
                TransactionUserEvent::Timeout { role: Role::Client, .. },
                TransactionUserEvent::Terminated { .. }
            ]
        ));
    }

    #[test]
    fn proceeding_retransmits_every_t2() {
        let (now, mut machine, mut out) = start(false);
        // 100 at 600 ms: Timer E still fires at 1500 (armed in Trying), then every T2.
        let sent = run(now, &mut machine, &mut out, &[(600, 100), (9000, 200)]);
        assert_eq!(sent, [0, 500, 1500, 5500]);
        assert!(machine.is_terminated(), "Timer K ran out");
    }

    #[test]
    fn reliable_sends_once_and_timer_k_is_zero() {
        let (now, mut machine, mut out) = start(true);
        let sent = run(now, &mut machine, &mut out, &[(50, 200)]);
        assert_eq!(sent, [0]);
        let (now, mut machine, mut out) = start(true);
        machine.on_response(now, 200, Bytes::new(), &mut out);
        assert_eq!(machine.poll_timeout(), Some(now));
    }

    #[test]
    fn final_goes_to_the_user_once_and_timer_k_is_t4() {
        let (now, mut machine, mut out) = start(false);
        out.clear();
        machine.on_response(now + ms(100), 100, Bytes::new(), &mut out);
        machine.on_response(now + ms(200), 200, Bytes::new(), &mut out);
        machine.on_response(now + ms(300), 200, Bytes::new(), &mut out);
        let statuses: Vec<u16> = events(&mut out)
            .into_iter()
            .filter_map(|event| match event {
                TransactionUserEvent::Response { status, .. } => Some(status),
                _ => None,
            })
            .collect();
        assert_eq!(statuses, [100, 200]);
        assert_eq!(machine.state(), ClientNonInviteState::Completed);
        assert_eq!(machine.poll_timeout(), Some(now + ms(5200)));
    }
}
