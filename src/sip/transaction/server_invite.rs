//! The INVITE server transaction: RFC 3261 §17.2.1 (figure 7) with the RFC 6026 Accepted state.
//!
//! ```text
//! Proceeding --300-699 from TU--> Completed --ACK--> Confirmed --Timer I--> Terminated
//! Proceeding --2xx from TU------> Accepted  --Timer L--> Terminated
//! Completed  --Timer H----------> Terminated (Timeout to the TU)
//! any        --transport error--> Terminated
//! ```

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::timer::{Timer, TimerConfig, TimerTable};
use super::{
    is_valid_status, notify, transmit, Method, Output, Role, TransactionError, TransactionKey, TransactionUserEvent,
};

/// The states of figure 7 plus RFC 6026 Accepted, for observers; the machine's own state also holds data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerInviteState {
    /// The TU has the INVITE; provisional responses go out and are resent on INVITE retransmissions.
    Proceeding,
    /// A 300–699 final response went out; retransmitting it on Timer G over UDP until the ACK or Timer H.
    Completed,
    /// The ACK arrived; absorbing ACK retransmissions until Timer I.
    Confirmed,
    /// RFC 6026: a 2xx went out; absorbing INVITE retransmissions until Timer L.
    Accepted,
    /// Over.
    Terminated,
}

impl ServerInviteState {
    /// The state name, for errors and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Proceeding => "Proceeding",
            Self::Completed => "Completed",
            Self::Confirmed => "Confirmed",
            Self::Accepted => "Accepted",
            Self::Terminated => "Terminated",
        }
    }
}

/// One INVITE server transaction: delivers the INVITE to the TU once, asks for a 100 (Trying) if the TU is
/// slow, sends the TU's responses and retransmits a non-2xx final one until it is ACKed.
#[derive(Debug)]
pub struct ServerInvite<D> {
    key: TransactionKey,
    reply_to: D,
    reliable: bool,
    config: TimerConfig,
    timers: TimerTable,
    state: State,
}

#[derive(Debug)]
enum State {
    Proceeding {
        /// The INVITE, for [`Output::NeedTrying`]; dropped with this state.
        request: Bytes,
        /// The last provisional sent, resent on each INVITE retransmission.
        provisional: Option<Bytes>,
    },
    Completed {
        response: Bytes,
        /// The interval Timer G was last armed with; doubles up to T2.
        retransmit_interval: Duration,
    },
    Confirmed,
    Accepted,
    Terminated,
}

impl<D: Clone> ServerInvite<D> {
    /// Creates the transaction for a new INVITE and passes it to the TU; the 200 ms 100 (Trying) timer starts.
    pub fn start(
        now: Instant,
        key: TransactionKey,
        request: Bytes,
        reply_to: D,
        reliable: bool,
        config: TimerConfig,
        out: &mut VecDeque<Output<D>>,
    ) -> Self {
        let mut timers = TimerTable::default();
        timers.set(Timer::Trying, now + TimerConfig::TRYING_DELAY);
        notify(
            out,
            TransactionUserEvent::NewRequest {
                key: key.clone(),
                method: Method::Invite,
                bytes: request.clone(),
            },
        );
        Self {
            key,
            reply_to,
            reliable,
            config,
            timers,
            state: State::Proceeding {
                request,
                provisional: None,
            },
        }
    }

    /// A request matched this transaction: an INVITE retransmission or an ACK (other methods are ignored).
    pub fn on_request(&mut self, now: Instant, method: &Method, bytes: Bytes, out: &mut VecDeque<Output<D>>) {
        match (method, &self.state) {
            (
                Method::Invite,
                State::Proceeding {
                    provisional: Some(provisional),
                    ..
                },
            ) => {
                transmit(out, Role::Server, &self.key, provisional.clone(), self.reply_to.clone());
            }
            (Method::Invite, State::Completed { response, .. }) => {
                transmit(out, Role::Server, &self.key, response.clone(), self.reply_to.clone());
            }
            (Method::Ack, State::Completed { .. }) => {
                self.timers.stop(Timer::G);
                self.timers.stop(Timer::H);
                self.timers.set(Timer::I, now + self.config.linger(self.reliable));
                self.state = State::Confirmed;
            }
            (Method::Ack, State::Accepted) => {
                // RFC 6026 §7.1: an ACK matching an Accepted transaction (an RFC 2543 peer, whose ACK shares
                // the INVITE's key) belongs to the TU.
                notify(
                    out,
                    TransactionUserEvent::Ack {
                        key: self.key.clone(),
                        bytes,
                    },
                );
            }
            // INVITE retransmissions in Confirmed/Accepted, ACK retransmissions, ACK before a final response.
            _ => {}
        }
    }

    /// Sends a response from the TU. Provisional ones are allowed in Proceeding; the first final one ends it;
    /// in Accepted only the TU's own 2xx retransmissions are allowed (RFC 6026 §8.7).
    pub fn respond(
        &mut self,
        now: Instant,
        status: u16,
        bytes: Bytes,
        out: &mut VecDeque<Output<D>>,
    ) -> Result<(), TransactionError> {
        if !is_valid_status(status) {
            return Err(TransactionError::InvalidStatus(status));
        }
        match &mut self.state {
            State::Proceeding { provisional, .. } => {
                self.timers.stop(Timer::Trying);
                transmit(out, Role::Server, &self.key, bytes.clone(), self.reply_to.clone());
                match status {
                    100..=199 => *provisional = Some(bytes),
                    200..=299 => {
                        self.timers.set(Timer::L, now + self.config.transaction_timeout());
                        self.state = State::Accepted;
                    }
                    _ => {
                        if !self.reliable {
                            self.timers.set(Timer::G, now + self.config.t1());
                        }
                        self.timers.set(Timer::H, now + self.config.transaction_timeout());
                        self.state = State::Completed {
                            response: bytes,
                            retransmit_interval: self.config.t1(),
                        };
                    }
                }
                Ok(())
            }
            State::Accepted if (200..=299).contains(&status) => {
                transmit(out, Role::Server, &self.key, bytes, self.reply_to.clone());
                Ok(())
            }
            _ => Err(TransactionError::WrongState {
                state: self.state().as_str(),
            }),
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
                role: Role::Server,
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
                    Timer::Trying,
                    State::Proceeding {
                        request,
                        provisional: None,
                    },
                ) => out.push_back(Output::NeedTrying {
                    key: self.key.clone(),
                    request: request.clone(),
                }),
                (
                    Timer::G,
                    State::Completed {
                        response,
                        retransmit_interval,
                    },
                ) => {
                    *retransmit_interval = retransmit_interval.saturating_mul(2).min(self.config.t2());
                    self.timers.set(Timer::G, now + *retransmit_interval);
                    transmit(out, Role::Server, &self.key, response.clone(), self.reply_to.clone());
                }
                (Timer::H, State::Completed { .. }) => {
                    notify(
                        out,
                        TransactionUserEvent::Timeout {
                            role: Role::Server,
                            key: self.key.clone(),
                        },
                    );
                    self.terminate(out);
                }
                (Timer::I, State::Confirmed) | (Timer::L, State::Accepted) => self.terminate(out),
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
    pub fn state(&self) -> ServerInviteState {
        match self.state {
            State::Proceeding { .. } => ServerInviteState::Proceeding,
            State::Completed { .. } => ServerInviteState::Completed,
            State::Confirmed => ServerInviteState::Confirmed,
            State::Accepted => ServerInviteState::Accepted,
            State::Terminated => ServerInviteState::Terminated,
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

    fn terminate(&mut self, out: &mut VecDeque<Output<D>>) {
        self.timers.stop_all();
        self.state = State::Terminated;
        notify(
            out,
            TransactionUserEvent::Terminated {
                role: Role::Server,
                key: self.key.clone(),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::transaction::testkit::{events, key, ms, transmissions};

    fn start(reliable: bool) -> (Instant, ServerInvite<u8>, VecDeque<Output<u8>>) {
        let now = Instant::now();
        let mut out = VecDeque::new();
        let machine = ServerInvite::start(
            now,
            key("z9hG4bK3", Method::Invite),
            Bytes::from_static(b"INVITE"),
            9,
            reliable,
            TimerConfig::default(),
            &mut out,
        );
        (now, machine, out)
    }

    #[test]
    fn new_invite_goes_to_the_user_and_asks_for_100_trying_after_200_ms() {
        let (now, mut machine, mut out) = start(false);
        assert!(matches!(
            &events(&mut out)[..],
            [TransactionUserEvent::NewRequest {
                method: Method::Invite,
                ..
            }]
        ));
        machine.handle_timeout(now + ms(199), &mut out);
        assert!(out.is_empty());
        machine.handle_timeout(now + ms(200), &mut out);
        let Some(Output::NeedTrying { request, .. }) = out.pop_front() else {
            panic!("expected NeedTrying");
        };
        assert_eq!(&request[..], b"INVITE");
        machine
            .respond(now + ms(200), 100, Bytes::from_static(b"100"), &mut out)
            .expect("Proceeding");
        assert_eq!(transmissions(&mut out), [Bytes::from_static(b"100")]);

        // An INVITE retransmission gets the last provisional again, and the TU hears nothing.
        machine.on_request(now + ms(500), &Method::Invite, Bytes::new(), &mut out);
        assert_eq!(transmissions(&mut out), [Bytes::from_static(b"100")]);
        assert!(out.is_empty());
    }

    #[test]
    fn no_100_trying_when_the_user_answers_within_200_ms() {
        let (now, mut machine, mut out) = start(false);
        out.clear();
        machine
            .respond(now + ms(50), 180, Bytes::from_static(b"180"), &mut out)
            .expect("Proceeding");
        out.clear();
        machine.handle_timeout(now + ms(200), &mut out);
        assert!(out.is_empty());
        assert_eq!(machine.poll_timeout(), None);
    }

    #[test]
    fn timer_g_doubles_up_to_t2_until_timer_h() {
        let (start_at, mut machine, mut out) = start(false);
        out.clear();
        machine
            .respond(start_at, 486, Bytes::from_static(b"486"), &mut out)
            .expect("Proceeding");
        let mut sent = Vec::new();
        let mut now = start_at;
        loop {
            for output in out.drain(..) {
                match output {
                    Output::Transmit { .. } => sent.push((now - start_at).as_millis()),
                    Output::ToTransactionUser(TransactionUserEvent::Timeout { role, .. }) => {
                        assert_eq!(role, Role::Server);
                        assert_eq!(now - start_at, ms(32_000), "Timer H = 64·T1");
                    }
                    _ => {}
                }
            }
            let Some(at) = machine.poll_timeout() else { break };
            now = at;
            machine.handle_timeout(now, &mut out);
        }
        assert_eq!(
            sent,
            [0, 500, 1500, 3500, 7500, 11_500, 15_500, 19_500, 23_500, 27_500, 31_500]
        );
        assert!(machine.is_terminated());
    }

    #[test]
    fn ack_is_absorbed_and_timer_i_ends_it() {
        let (now, mut machine, mut out) = start(false);
        machine
            .respond(now, 404, Bytes::from_static(b"404"), &mut out)
            .expect("Proceeding");
        machine.on_request(now + ms(100), &Method::Invite, Bytes::new(), &mut out);
        out.clear();
        machine.on_request(now + ms(200), &Method::Ack, Bytes::new(), &mut out);
        machine.on_request(now + ms(300), &Method::Ack, Bytes::new(), &mut out);
        machine.on_request(now + ms(400), &Method::Invite, Bytes::new(), &mut out);
        assert!(out.is_empty(), "ACKs and late INVITEs are absorbed in Confirmed");
        assert_eq!(machine.state(), ServerInviteState::Confirmed);
        assert_eq!(machine.poll_timeout(), Some(now + ms(5200)), "Timer I = T4");
        machine.handle_timeout(now + ms(5200), &mut out);
        assert!(machine.is_terminated());
    }

    #[test]
    fn reliable_has_no_timer_g_and_zero_timer_i() {
        let (now, mut machine, mut out) = start(true);
        machine.respond(now, 500, Bytes::new(), &mut out).expect("Proceeding");
        assert_eq!(machine.poll_timeout(), Some(now + ms(32_000)), "only Timer H");
        machine.on_request(now + ms(10), &Method::Ack, Bytes::new(), &mut out);
        assert_eq!(machine.poll_timeout(), Some(now + ms(10)));
    }

    #[test]
    fn rfc6026_accepted_absorbs_invites_passes_acks_and_tu_retransmissions() {
        let (now, mut machine, mut out) = start(false);
        out.clear();
        machine
            .respond(now, 200, Bytes::from_static(b"200"), &mut out)
            .expect("Proceeding");
        assert_eq!(transmissions(&mut out).len(), 1);
        assert_eq!(machine.state(), ServerInviteState::Accepted);
        machine.on_request(now + ms(500), &Method::Invite, Bytes::new(), &mut out);
        assert!(
            out.is_empty(),
            "INVITE retransmission absorbed, no 2xx resent by the transaction"
        );
        machine
            .respond(now + ms(500), 200, Bytes::from_static(b"200"), &mut out)
            .expect("TU retransmission");
        assert_eq!(transmissions(&mut out).len(), 1);
        assert!(machine.respond(now + ms(500), 486, Bytes::new(), &mut out).is_err());
        machine.on_request(now + ms(600), &Method::Ack, Bytes::from_static(b"ACK"), &mut out);
        assert!(matches!(&events(&mut out)[..], [TransactionUserEvent::Ack { .. }]));
        assert_eq!(machine.poll_timeout(), Some(now + ms(32_000)), "Timer L = 64·T1");
        machine.handle_timeout(now + ms(32_000), &mut out);
        assert!(machine.is_terminated());
    }

    #[test]
    fn second_final_and_bad_status_are_refused() {
        let (now, mut machine, mut out) = start(false);
        assert_eq!(
            machine.respond(now, 99, Bytes::new(), &mut out),
            Err(TransactionError::InvalidStatus(99))
        );
        machine.respond(now, 486, Bytes::new(), &mut out).expect("Proceeding");
        assert_eq!(
            machine.respond(now, 487, Bytes::new(), &mut out),
            Err(TransactionError::WrongState { state: "Completed" })
        );
    }
}
