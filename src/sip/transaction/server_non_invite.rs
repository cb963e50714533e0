//! The non-INVITE server transaction: RFC 3261 §17.2.2 (figure 8).
//!
//! ```text
//! Trying     --1xx from TU------> Proceeding
//! Trying     --200-699 from TU--> Completed --Timer J--> Terminated
//! Proceeding --200-699 from TU--> Completed
//! any        --transport error--> Terminated
//! ```

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;

use super::timer::{Timer, TimerConfig, TimerTable};
use super::{
    is_valid_status, notify, transmit, Method, Output, Role, TransactionError, TransactionKey, TransactionUserEvent,
};

/// The states of figure 8, for observers; the machine's own state also holds data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerNonInviteState {
    /// The TU has the request and has not answered; retransmissions are absorbed silently.
    Trying,
    /// A provisional response went out; resent on each request retransmission.
    Proceeding,
    /// The final response went out; resent on each request retransmission until Timer J.
    Completed,
    /// Over.
    Terminated,
}

impl ServerNonInviteState {
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

/// One non-INVITE server transaction: delivers the request to the TU once and answers its retransmissions
/// with the last response sent.
#[derive(Debug)]
pub struct ServerNonInvite<D> {
    key: TransactionKey,
    reply_to: D,
    reliable: bool,
    config: TimerConfig,
    timers: TimerTable,
    state: State,
}

#[derive(Debug)]
enum State {
    Trying,
    Proceeding { provisional: Bytes },
    Completed { response: Bytes },
    Terminated,
}

impl<D: Clone> ServerNonInvite<D> {
    /// Creates the transaction for a new request and passes it to the TU.
    pub fn start(
        key: TransactionKey,
        method: Method,
        request: Bytes,
        reply_to: D,
        reliable: bool,
        config: TimerConfig,
        out: &mut VecDeque<Output<D>>,
    ) -> Self {
        notify(
            out,
            TransactionUserEvent::NewRequest {
                key: key.clone(),
                method,
                bytes: request,
            },
        );
        Self {
            key,
            reply_to,
            reliable,
            config,
            timers: TimerTable::default(),
            state: State::Trying,
        }
    }

    /// A retransmission of the request arrived: resend the last response, if any.
    pub fn on_request(&mut self, out: &mut VecDeque<Output<D>>) {
        match &self.state {
            State::Proceeding { provisional: last } | State::Completed { response: last } => {
                transmit(out, Role::Server, &self.key, last.clone(), self.reply_to.clone());
            }
            State::Trying | State::Terminated => {}
        }
    }

    /// Sends a response from the TU: any number of provisional ones, then one final one.
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
        if !matches!(self.state, State::Trying | State::Proceeding { .. }) {
            return Err(TransactionError::WrongState {
                state: self.state().as_str(),
            });
        }
        transmit(out, Role::Server, &self.key, bytes.clone(), self.reply_to.clone());
        if status < 200 {
            self.state = State::Proceeding { provisional: bytes };
        } else {
            self.timers.set(Timer::J, now + self.config.timer_j(self.reliable));
            self.state = State::Completed { response: bytes };
        }
        Ok(())
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
            if let (Timer::J, State::Completed { .. }) = (timer, &self.state) {
                self.terminate(out);
            }
        }
    }

    /// The next instant `handle_timeout` has work to do.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next_timeout()
    }

    /// The current state.
    pub fn state(&self) -> ServerNonInviteState {
        match self.state {
            State::Trying => ServerNonInviteState::Trying,
            State::Proceeding { .. } => ServerNonInviteState::Proceeding,
            State::Completed { .. } => ServerNonInviteState::Completed,
            State::Terminated => ServerNonInviteState::Terminated,
        }
    }

    /// Whether a final response has gone out (or the transaction is over).
    pub fn is_final(&self) -> bool {
        matches!(self.state, State::Completed { .. } | State::Terminated)
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

    fn start(reliable: bool) -> (Instant, ServerNonInvite<u8>, VecDeque<Output<u8>>) {
        let mut out = VecDeque::new();
        let machine = ServerNonInvite::start(
            key("z9hG4bK4", Method::Other("BYE".into())),
            Method::Other("BYE".into()),
            Bytes::from_static(b"BYE"),
            1,
            reliable,
            TimerConfig::default(),
            &mut out,
        );
        (Instant::now(), machine, out)
    }

    #[test]
    fn retransmissions_are_absorbed_and_answered_with_the_last_response() {
        let (now, mut machine, mut out) = start(false);
        assert_eq!(events(&mut out).len(), 1, "the TU sees the request once");
        machine.on_request(&mut out);
        assert!(out.is_empty(), "Trying absorbs silently");
        machine
            .respond(now, 100, Bytes::from_static(b"100"), &mut out)
            .expect("Trying");
        machine.on_request(&mut out);
        assert_eq!(
            transmissions(&mut out),
            [Bytes::from_static(b"100"), Bytes::from_static(b"100")]
        );
        machine
            .respond(now, 200, Bytes::from_static(b"200"), &mut out)
            .expect("Proceeding");
        machine.on_request(&mut out);
        machine.on_request(&mut out);
        assert_eq!(transmissions(&mut out), vec![Bytes::from_static(b"200"); 3]);
        assert!(out.is_empty());
        assert!(machine.respond(now, 200, Bytes::new(), &mut out).is_err());
    }

    #[test]
    fn timer_j_is_64_t1_on_udp_and_zero_on_reliable() {
        let (now, mut machine, mut out) = start(false);
        machine.respond(now, 200, Bytes::new(), &mut out).expect("Trying");
        assert_eq!(machine.poll_timeout(), Some(now + ms(32_000)));
        out.clear();
        machine.handle_timeout(now + ms(32_000), &mut out);
        assert!(matches!(
            &events(&mut out)[..],
            [TransactionUserEvent::Terminated { .. }]
        ));

        let (now, mut machine, mut out) = start(true);
        machine.respond(now, 200, Bytes::new(), &mut out).expect("Trying");
        assert_eq!(machine.poll_timeout(), Some(now));
    }
}
