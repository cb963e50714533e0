//! The INVITE client transaction: RFC 3261 §17.1.1 (figure 5) with the RFC 6026 Accepted state.
//!
//! ```text
//! Calling    --1xx-------> Proceeding
//! Calling    --300-699---> Completed  (ACK via NeedAck)   --Timer D--> Terminated
//! Proceeding --300-699---> Completed
//! Calling    --2xx-------> Accepted   (2xx to the TU)     --Timer M--> Terminated
//! Proceeding --2xx-------> Accepted
//! Calling    --Timer B---> Terminated (Timeout to the TU; in Proceeding only after a CANCEL)
//! any        --transport error--> Terminated
//! ```

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::timer::{Timer, TimerConfig, TimerTable};
use super::{is_valid_status, notify, transmit, Output, Role, TransactionError, TransactionKey, TransactionUserEvent};

/// The states of figure 5 plus RFC 6026 Accepted, for observers; the machine's own state also holds data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientInviteState {
    /// Request sent, no response yet; retransmitting on Timer A over UDP.
    Calling,
    /// A provisional response arrived; waiting for the final one without retransmitting.
    Proceeding,
    /// A 300–699 final response arrived and is ACKed; absorbing its retransmissions until Timer D.
    Completed,
    /// RFC 6026: a 2xx arrived; passing further 2xx to the TU until Timer M.
    Accepted,
    /// Over.
    Terminated,
}

impl ClientInviteState {
    /// The state name, for errors and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Calling => "Calling",
            Self::Proceeding => "Proceeding",
            Self::Completed => "Completed",
            Self::Accepted => "Accepted",
            Self::Terminated => "Terminated",
        }
    }
}

/// One INVITE client transaction: sends the INVITE reliably, ACKs a non-2xx final response, and hands
/// responses to the TU.
#[derive(Debug)]
pub struct ClientInvite<D> {
    key: TransactionKey,
    /// The INVITE: retransmitted in Calling, and needed to build the ACK for a non-2xx.
    request: Bytes,
    destination: D,
    reliable: bool,
    config: TimerConfig,
    timers: TimerTable,
    state: State,
}

#[derive(Debug)]
enum State {
    Calling {
        /// The interval Timer A was last armed with; doubles on each firing.
        retransmit_interval: Duration,
    },
    Proceeding,
    Completed {
        /// The ACK the caller built, resent for each retransmission of the final response.
        ack: Option<Bytes>,
    },
    Accepted,
    Terminated,
}

impl<D: Clone> ClientInvite<D> {
    /// Creates the transaction and sends the INVITE: Timer A (UDP only) and Timer B start now.
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
            timers.set(Timer::A, now + config.t1());
        }
        timers.set(Timer::B, now + config.transaction_timeout());
        transmit(out, Role::Client, &key, request.clone(), destination.clone());
        Self {
            key,
            request,
            destination,
            reliable,
            config,
            timers,
            state: State::Calling {
                retransmit_interval: config.t1(),
            },
        }
    }

    /// A response matched this transaction. Invalid status codes are ignored.
    pub fn on_response(&mut self, now: Instant, status: u16, bytes: Bytes, out: &mut VecDeque<Output<D>>) {
        if !is_valid_status(status) {
            return;
        }
        match &mut self.state {
            State::Calling { .. } | State::Proceeding => match status {
                100..=199 => {
                    if matches!(self.state, State::Calling { .. }) {
                        // Figure 5: in Proceeding the request is no longer retransmitted and only a CANCEL
                        // (see `cancel_sent`) can time the transaction out.
                        self.timers.stop(Timer::A);
                        self.timers.stop(Timer::B);
                        self.state = State::Proceeding;
                    }
                    self.pass_to_user(status, bytes, out);
                }
                200..=299 => {
                    self.timers.stop(Timer::A);
                    self.timers.stop(Timer::B);
                    self.timers.set(Timer::M, now + self.config.transaction_timeout());
                    self.state = State::Accepted;
                    self.pass_to_user(status, bytes, out);
                }
                _ => {
                    self.timers.stop(Timer::A);
                    self.timers.stop(Timer::B);
                    self.timers.set(Timer::D, now + self.config.timer_d(self.reliable));
                    self.state = State::Completed { ack: None };
                    // The ACK first: a TU answering a 401 with a new INVITE should not overtake it.
                    out.push_back(Output::NeedAck {
                        key: self.key.clone(),
                        request: self.request.clone(),
                        response: bytes.clone(),
                    });
                    self.pass_to_user(status, bytes, out);
                }
            },
            State::Completed { ack } => {
                if status >= 300 {
                    // A retransmission of the final response: our ACK was lost. Not for the TU.
                    match ack {
                        Some(ack) => transmit(out, Role::Client, &self.key, ack.clone(), self.destination.clone()),
                        None => out.push_back(Output::NeedAck {
                            key: self.key.clone(),
                            request: self.request.clone(),
                            response: bytes,
                        }),
                    }
                }
            }
            State::Accepted => {
                if (200..=299).contains(&status) {
                    // RFC 6026 §8.4: a retransmission, or a 2xx from another fork; the TU ACKs each.
                    self.pass_to_user(status, bytes, out);
                }
            }
            State::Terminated => {}
        }
    }

    /// Sends the ACK the caller built for [`Output::NeedAck`]; it is kept for retransmitted final responses.
    pub fn send_ack(&mut self, ack: Bytes, out: &mut VecDeque<Output<D>>) -> Result<(), TransactionError> {
        match &mut self.state {
            State::Completed { ack: slot } => {
                *slot = Some(ack.clone());
                transmit(out, Role::Client, &self.key, ack, self.destination.clone());
                Ok(())
            }
            _ => Err(self.wrong_state()),
        }
    }

    /// Records that the TU sent a CANCEL for this INVITE: if no final response arrives within 64·T1, the
    /// transaction times out (RFC 3261 §9.1), reusing Timer B. Refused in Calling (§9.1: the CANCEL must wait
    /// for a provisional response) and once a final response arrived.
    pub fn cancel_sent(&mut self, now: Instant) -> Result<(), TransactionError> {
        match self.state {
            State::Proceeding => {
                // A second CANCEL does not extend the deadline of the first.
                if self.timers.deadline(Timer::B).is_none() {
                    self.timers.set(Timer::B, now + self.config.transaction_timeout());
                }
                Ok(())
            }
            _ => Err(self.wrong_state()),
        }
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
                (Timer::A, State::Calling { retransmit_interval }) => {
                    *retransmit_interval = retransmit_interval.saturating_mul(2);
                    self.timers.set(Timer::A, now + *retransmit_interval);
                    transmit(
                        out,
                        Role::Client,
                        &self.key,
                        self.request.clone(),
                        self.destination.clone(),
                    );
                }
                (Timer::B, State::Calling { .. } | State::Proceeding) => {
                    notify(
                        out,
                        TransactionUserEvent::Timeout {
                            role: Role::Client,
                            key: self.key.clone(),
                        },
                    );
                    self.terminate(out);
                }
                (Timer::D, State::Completed { .. }) | (Timer::M, State::Accepted) => self.terminate(out),
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
    pub fn state(&self) -> ClientInviteState {
        match self.state {
            State::Calling { .. } => ClientInviteState::Calling,
            State::Proceeding => ClientInviteState::Proceeding,
            State::Completed { .. } => ClientInviteState::Completed,
            State::Accepted => ClientInviteState::Accepted,
            State::Terminated => ClientInviteState::Terminated,
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

    /// Where the INVITE (and its ACK and CANCEL, §9.1 / §17.1.1.3) goes.
    pub fn destination(&self) -> &D {
        &self.destination
    }

    /// Whether the transport is reliable (no retransmissions, zero Timer D).
    pub fn is_reliable(&self) -> bool {
        self.reliable
    }

    fn pass_to_user(&self, status: u16, bytes: Bytes, out: &mut VecDeque<Output<D>>) {
        notify(
            out,
            TransactionUserEvent::Response {
                key: self.key.clone(),
                status,
                bytes,
            },
        );
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

    fn wrong_state(&self) -> TransactionError {
        TransactionError::WrongState {
            state: self.state().as_str(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::transaction::testkit::{events, key, ms, transmissions};
    use crate::sip::transaction::Method;

    fn start(reliable: bool) -> (Instant, ClientInvite<u8>, VecDeque<Output<u8>>) {
        let now = Instant::now();
        let mut out = VecDeque::new();
        let machine = ClientInvite::start(
            now,
            key("z9hG4bK1", Method::Invite),
            Bytes::from_static(b"INVITE"),
            7,
            reliable,
            TimerConfig::default(),
            &mut out,
        );
        (now, machine, out)
    }

    /// Runs the machine alone, calling `handle_timeout` exactly at each deadline, and returns the offsets (ms)
    /// at which it transmitted plus the outputs.
    fn run_to_end(start: Instant, machine: &mut ClientInvite<u8>, out: &mut VecDeque<Output<u8>>) -> Vec<u128> {
        let mut sent = Vec::new();
        let mut now = start;
        loop {
            for output in out.drain(..) {
                if let Output::Transmit { .. } = output {
                    sent.push((now - start).as_millis());
                }
            }
            match machine.poll_timeout() {
                Some(at) => {
                    now = at;
                    machine.handle_timeout(now, out);
                }
                None => return sent,
            }
        }
    }

    #[test]
    fn timer_a_doubles_without_cap_until_timer_b_over_udp() {
        let (now, mut machine, mut out) = start(false);
        let sent = run_to_end(now, &mut machine, &mut out);
        // T1 = 500 ms: 0, T1, 3T1, 7T1, 15T1, 31T1, 63T1; Timer B at 64T1 = 32 s.
        assert_eq!(sent, [0, 500, 1500, 3500, 7500, 15_500, 31_500]);
        assert_eq!(machine.state(), ClientInviteState::Terminated);
    }

    #[test]
    fn timeout_reports_to_the_user_at_64_t1() {
        let (now, mut machine, mut out) = start(true);
        out.clear();
        machine.handle_timeout(now + ms(31_999), &mut out);
        assert!(out.is_empty(), "nothing before Timer B");
        machine.handle_timeout(now + ms(32_000), &mut out);
        let events = events(&mut out);
        assert!(matches!(
            &events[0],
            TransactionUserEvent::Timeout { role: Role::Client, .. }
        ));
        assert!(matches!(
            &events[1],
            TransactionUserEvent::Terminated { role: Role::Client, .. }
        ));
        assert_eq!(events.len(), 2);
    }

    #[test]
    fn reliable_transport_sends_once() {
        let (now, mut machine, mut out) = start(true);
        let sent = run_to_end(now, &mut machine, &mut out);
        assert_eq!(sent, [0]);
    }

    #[test]
    fn provisional_stops_retransmissions_and_the_timeout() {
        let (now, mut machine, mut out) = start(false);
        out.clear();
        machine.on_response(now + ms(100), 180, Bytes::from_static(b"180"), &mut out);
        assert_eq!(machine.state(), ClientInviteState::Proceeding);
        assert_eq!(machine.poll_timeout(), None);
        assert!(matches!(
            &events(&mut out)[..],
            [TransactionUserEvent::Response { status: 180, .. }]
        ));
    }

    #[test]
    fn non_2xx_final_is_acked_inside_the_transaction_and_retransmissions_absorbed() {
        let (now, mut machine, mut out) = start(false);
        out.clear();
        machine.on_response(now + ms(100), 486, Bytes::from_static(b"486"), &mut out);
        let Some(Output::NeedAck { request, response, .. }) = out.pop_front() else {
            panic!("the ACK must be asked for first");
        };
        assert_eq!((&request[..], &response[..]), (&b"INVITE"[..], &b"486"[..]));
        assert!(matches!(
            &events(&mut out)[..],
            [TransactionUserEvent::Response { status: 486, .. }]
        ));
        machine
            .send_ack(Bytes::from_static(b"ACK"), &mut out)
            .expect("ACK allowed in Completed");
        assert_eq!(transmissions(&mut out), [Bytes::from_static(b"ACK")]);

        // Retransmitted 486: the ACK goes again, the TU hears nothing.
        machine.on_response(now + ms(600), 486, Bytes::from_static(b"486"), &mut out);
        assert_eq!(transmissions(&mut out), [Bytes::from_static(b"ACK")]);
        assert!(out.is_empty());

        // Timer D: 32 s on UDP.
        machine.handle_timeout(now + ms(32_099), &mut out);
        assert_eq!(machine.state(), ClientInviteState::Completed);
        machine.handle_timeout(now + ms(32_100), &mut out);
        assert_eq!(machine.state(), ClientInviteState::Terminated);
        assert!(matches!(
            &events(&mut out)[..],
            [TransactionUserEvent::Terminated { .. }]
        ));
    }

    #[test]
    fn retransmitted_final_before_the_ack_is_built_asks_again() {
        let (now, mut machine, mut out) = start(false);
        machine.on_response(now, 404, Bytes::from_static(b"404"), &mut out);
        out.clear();
        machine.on_response(now, 404, Bytes::from_static(b"404"), &mut out);
        assert!(matches!(out.pop_front(), Some(Output::NeedAck { .. })));
        assert!(out.is_empty());
    }

    #[test]
    fn timer_d_is_zero_on_reliable_transport() {
        let (now, mut machine, mut out) = start(true);
        machine.on_response(now, 603, Bytes::from_static(b"603"), &mut out);
        machine
            .send_ack(Bytes::from_static(b"ACK"), &mut out)
            .expect("in Completed");
        assert_eq!(machine.poll_timeout(), Some(now));
        machine.handle_timeout(now, &mut out);
        assert!(machine.is_terminated());
    }

    #[test]
    fn rfc6026_accepted_passes_every_2xx_and_never_acks() {
        let (now, mut machine, mut out) = start(false);
        out.clear();
        machine.on_response(now + ms(10), 200, Bytes::from_static(b"200"), &mut out);
        assert_eq!(machine.state(), ClientInviteState::Accepted);
        machine.on_response(now + ms(510), 200, Bytes::from_static(b"200"), &mut out);
        machine.on_response(now + ms(600), 180, Bytes::from_static(b"180"), &mut out);
        let statuses: Vec<u16> = events(&mut out)
            .into_iter()
            .filter_map(|event| match event {
                TransactionUserEvent::Response { status, .. } => Some(status),
                _ => None,
            })
            .collect();
        assert_eq!(statuses, [200, 200]);
        assert!(
            machine.send_ack(Bytes::new(), &mut out).is_err(),
            "2xx ACK belongs to the TU"
        );
        // Timer M = 64·T1 after the first 2xx.
        assert_eq!(machine.poll_timeout(), Some(now + ms(10) + ms(32_000)));
        machine.handle_timeout(now + ms(32_010), &mut out);
        assert!(machine.is_terminated());
    }

    #[test]
    fn cancel_waits_for_a_provisional_and_then_bounds_proceeding() {
        let (now, mut machine, mut out) = start(false);
        assert!(
            machine.cancel_sent(now).is_err(),
            "§9.1: no CANCEL before a provisional"
        );
        machine.on_response(now + ms(100), 180, Bytes::from_static(b"180"), &mut out);
        assert_eq!(machine.poll_timeout(), None);
        machine.cancel_sent(now + ms(1000)).expect("Proceeding");
        assert_eq!(machine.poll_timeout(), Some(now + ms(33_000)));
        out.clear();
        machine.handle_timeout(now + ms(33_000), &mut out);
        assert!(matches!(events(&mut out)[0], TransactionUserEvent::Timeout { .. }));
    }

    #[test]
    fn transport_error_terminates() {
        let (_, mut machine, mut out) = start(false);
        out.clear();
        machine.on_transport_error(&mut out);
        machine.on_transport_error(&mut out);
        assert!(matches!(
            &events(&mut out)[..],
            [
                TransactionUserEvent::TransportError { .. },
                TransactionUserEvent::Terminated { .. }
            ]
        ));
        assert_eq!(machine.poll_timeout(), None);
    }
}
