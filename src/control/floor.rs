//! Floor control of one group call at the group home TCF (F-FLR-01 to F-FLR-10), sans-IO: who
//! holds the floor, who waits for it in which order, and when the network takes it away.
//!
//! Drive contract: feed every floor request ([`Floor::request`]), forced insertion
//! ([`Floor::insert`]), release or cancelled request ([`Floor::release`]), network or DC order
//! ([`Floor::revoke`]), RTP seen from a participant ([`Floor::media`]) and departure from the call
//! ([`Floor::leave`]) with the time it happened; call [`Floor::handle_timeout`] once
//! [`Floor::poll_timeout`] has passed (a spurious call is harmless). After each call drain
//! [`Floor::poll_action`] until it returns `None`. Nothing here reads the clock or sends anything;
//! the driver maps the outcome and the actions to SIP:
//!
//! | output | what the driver does | flow |
//! |---|---|---|
//! | [`RequestOutcome::Granted`] | `200 OK` to the floor request | F-FLR-01 |
//! | [`RequestOutcome::Queued`] | `200 OK` with the queue indication and position | F-FLR-03 |
//! | [`RequestOutcome::Rejected`] | `480 Temporarily Unavailable` | F-FLR-02 |
//! | [`FloorAction::Granted`] with `from_queue` | `INVITE` (floor grant) in that request's session | F-FLR-04 |
//! | [`FloorAction::Revoked`] | `BYE` to the holder's TCF | F-FLR-06 |
//! | [`FloorAction::Dequeued`] | the waiting request failed: `BYE` on its talker session | F-FLR-02 |
//! | [`FloorAction::QueuePosition`] | tell the waiting participant its new position | F-FLR-03 |
//! | [`FloorAction::Notify`] | `INFO` (talker or idle) to every member TCF and DC | F-FLR-07 |
//! | [`FloorAction::HangTimeExpired`] | release the group call | F-GRP-06 |
//!
//! Every change of floor holder emits exactly one [`FloorAction::Notify`], as the last action of
//! that change (after its `Revoked`, `Granted` and `QueuePosition` actions). Queue changes alone
//! notify nobody but the waiting participants concerned.
//!
//! Rules, where the flows leave a choice (decisions):
//!
//! - **Rank.** A request's effective priority is its `priority` (higher is more important); with
//!   [`FloorConfig::dc_outranks`], a dispatcher outranks every terminal whatever the priorities,
//!   and dispatchers compare among themselves by priority. Without it, the dispatcher flag plays
//!   no part. The queue is ordered by rank, then by arrival (first come, first served).
//! - **Pre-emption (F-FLR-08).** A request of strictly higher rank than the holder's takes the
//!   floor at once; equal or lower rank waits. The pre-empted holder is released, not queued (as
//!   in 3GPP MCPTT, TS 24.380: a revoked floor must be asked for again).
//! - **Forced insertion (F-FLR-09).** The inserting participant takes the floor whatever the
//!   holder's rank, leaving the queue if it was waiting. Until it releases the floor, an ordinary
//!   request cannot pre-empt it (only another insertion, a [`Floor::revoke`] or the floor timers
//!   end it): a dispatcher who barges in is not thrown out by the next high-priority terminal.
//!   A holder inserting gets that protection without any other change. Whether the participant
//!   may insert (is a DC of the group) is the caller's check.
//! - **Full queue (F-FLR-02).** A request that outranks the lowest-ranked waiting request bumps it
//!   out ([`DequeueReason::QueueFull`], the newest of the lowest rank goes first); otherwise it is
//!   rejected. Equal rank never bumps (first come, first served). Nobody waits on an idle floor:
//!   a freed floor goes to the head of the queue at once.
//! - **Repeated requests.** The holder asking again is granted again, without any action (its
//!   stored number and priority, and its timers, are unchanged). A
//!   waiting participant asking again keeps its place (and its original rank) and is told its
//!   position again.
//! - **Departures.** A participant that releases, cancels or leaves gets no action about itself
//!   (its own message caused it); the others get theirs (a grant, new positions, the notify).
//!   A forced release ([`Floor::revoke`], timers) emits [`FloorAction::Revoked`] so that the
//!   driver ends the talker session.
//! - **Timers.** Maximum talk time runs from the grant; inactivity from the grant or the holder's
//!   last media; the hang time from the moment the floor fell idle with an empty queue (or from
//!   [`Floor::new`]) and fires once. When both holder timers are due, the earlier deadline names
//!   the reason (a tie is [`RevokeReason::MaxTalkTime`]). Zero durations are allowed: one
//!   [`Floor::handle_timeout`] call then runs every timer due at that instant.

#![deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::cmp::Reverse;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::proto::Number;

/// Floor timers and queue policy of a group (3GPP MCPTT defaults, FLOWS.md "Decision").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FloorConfig {
    /// The longest a holder may talk before the floor is taken away (default 30 s).
    pub max_talk_time: Duration,
    /// How long the holder may send no media before the floor is taken away (default 4 s).
    pub inactivity: Duration,
    /// How long the floor may stay idle with nobody waiting before the group call ends
    /// (default 10 s).
    pub hang_time: Duration,
    /// The most requests that may wait for the floor (default 8; 0 disables queuing).
    pub queue_capacity: usize,
    /// Whether a dispatcher outranks every terminal whatever the priorities (default true).
    pub dc_outranks: bool,
}

impl Default for FloorConfig {
    fn default() -> FloorConfig {
        FloorConfig {
            max_talk_time: Duration::from_secs(30),
            inactivity: Duration::from_secs(4),
            hang_time: Duration::from_secs(10),
            queue_capacity: 8,
            dc_outranks: true,
        }
    }
}

/// A participant of the group call, as the caller identifies it (e.g. an index of its talker
/// session).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParticipantId(pub u64);

/// Who asks for the floor, and with what weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requester {
    /// The participant.
    pub id: ParticipantId,
    /// Its user number, announced to the members while it talks (F-FLR-07).
    pub number: Number,
    /// Its priority in this group; higher is more important.
    pub priority: u8,
    /// Whether it is a dispatch console.
    pub dispatcher: bool,
}

/// The answer to a floor request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestOutcome {
    /// The requester holds the floor (F-FLR-01, or F-FLR-08 pre-emption).
    Granted,
    /// The requester waits at this 1-based position (F-FLR-03).
    Queued {
        /// 1 for the head of the queue.
        position: usize,
    },
    /// The floor is taken and the queue full of requests of equal or higher rank (F-FLR-02).
    Rejected,
}

/// Why the holder loses the floor against its will (F-FLR-06).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeReason {
    /// It talked for the maximum talk time.
    MaxTalkTime,
    /// It sent no media for the inactivity time.
    Inactivity,
    /// A request of higher rank took the floor (F-FLR-08).
    Preempted,
    /// A dispatcher barged in (F-FLR-09).
    ForcedInsertion,
    /// A dispatcher or the network ordered it (F-FLR-10).
    Ordered,
}

/// Why a waiting request leaves the queue without getting the floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DequeueReason {
    /// The queue was full and a request of higher rank took its place.
    QueueFull,
}

/// Something the driver must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FloorAction {
    /// The participant now holds the floor: start forwarding its talker leg. `from_queue`: it
    /// waited, so the grant goes in its session (F-FLR-04); otherwise it answers the request or
    /// insertion being handled.
    Granted {
        /// The new holder.
        id: ParticipantId,
        /// Whether it was granted from the queue.
        from_queue: bool,
    },
    /// The holder lost the floor against its will: stop forwarding and end its talker session.
    Revoked {
        /// The former holder.
        holder: ParticipantId,
        /// Why.
        reason: RevokeReason,
    },
    /// A waiting request was dropped from the queue.
    Dequeued {
        /// The participant whose request was dropped.
        id: ParticipantId,
        /// Why.
        reason: DequeueReason,
    },
    /// A waiting participant's position changed.
    QueuePosition {
        /// The participant.
        id: ParticipantId,
        /// Its new 1-based position.
        position: usize,
    },
    /// The floor changed: tell every member TCF and DC (F-FLR-07). `None`: the floor is idle.
    Notify {
        /// The new holder's number.
        talker: Option<Number>,
    },
    /// The floor stayed idle for the hang time: the group call should end (F-GRP-06).
    HangTimeExpired,
}

/// The floor arbiter of one group call.
#[derive(Debug)]
pub struct Floor {
    config: FloorConfig,
    state: State,
    /// Waiting requests, by rank (highest first), then arrival.
    queue: VecDeque<Waiting>,
    next_arrival: u64,
    actions: VecDeque<FloorAction>,
}

/// Effective priority: (dispatcher outranking terminals, priority), compared in that order.
type Rank = (bool, u8);

#[derive(Debug)]
enum State {
    /// Nobody talks (and, by construction, nobody waits).
    Idle {
        /// When the group call should end; `None` once reported.
        hang_deadline: Option<Instant>,
    },
    /// Somebody talks.
    Taken {
        holder: Requester,
        /// When it got the floor.
        since: Instant,
        /// Its last media, or its grant.
        last_media: Instant,
        /// Whether it took the floor by forced insertion (no pre-emption by request then).
        inserted: bool,
    },
}

#[derive(Debug)]
struct Waiting {
    requester: Requester,
    /// Order of arrival, for first come, first served within a rank.
    arrival: u64,
}

impl Floor {
    /// An idle floor for a group call set up at `now` (the hang time runs from here).
    pub fn new(config: FloorConfig, now: Instant) -> Floor {
        Floor {
            state: State::Idle {
                hang_deadline: now.checked_add(config.hang_time),
            },
            config,
            queue: VecDeque::new(),
            next_arrival: 0,
            actions: VecDeque::new(),
        }
    }

    /// A floor request (F-FLR-01, -02, -03, -08); answer it as the outcome says.
    #[must_use]
    pub fn request(&mut self, requester: Requester, now: Instant) -> RequestOutcome {
        let id = requester.id;
        if self.holder_id() == Some(id) {
            return RequestOutcome::Granted;
        }
        if let Some(position) = self.position(id) {
            return RequestOutcome::Queued { position };
        }
        let rank = self.rank(&requester);
        let preempt = match &self.state {
            State::Idle { .. } => None,
            State::Taken { holder, inserted, .. } => Some(!inserted && rank > self.rank(holder)),
        };
        match preempt {
            None => {
                self.take(requester, None, false, now);
                self.notify();
                RequestOutcome::Granted
            }
            Some(true) => {
                self.take(requester, Some(RevokeReason::Preempted), false, now);
                self.notify();
                RequestOutcome::Granted
            }
            Some(false) => self.enqueue(requester, rank),
        }
    }

    /// Forced insertion by a dispatcher (F-FLR-09): it takes the floor at once, whatever the
    /// holder's rank. The caller checks that the participant may do so.
    pub fn insert(&mut self, requester: Requester, now: Instant) {
        if let State::Taken { holder, inserted, .. } = &mut self.state {
            if holder.id == requester.id {
                *inserted = true;
                return;
            }
        }
        let before = self.queue_ids();
        self.remove_waiting(requester.id);
        self.take(requester, Some(RevokeReason::ForcedInsertion), true, now);
        self.report_positions(&before);
        self.notify();
    }

    /// The participant releases the floor or cancels its waiting request (F-FLR-05). A released
    /// floor goes to the head of the queue (F-FLR-04) or falls idle. Returns whether the
    /// participant held the floor or waited for it.
    pub fn release(&mut self, id: ParticipantId, now: Instant) -> bool {
        if self.holder_id() == Some(id) {
            self.pass_on(now);
            return true;
        }
        let before = self.queue_ids();
        if self.remove_waiting(id) {
            self.report_positions(&before);
            return true;
        }
        false
    }

    /// Takes the floor from the holder `id` (F-FLR-06, F-FLR-10); it goes to the head of the
    /// queue or falls idle. Returns whether `id` held the floor (nothing happens otherwise; a
    /// waiting participant is removed with [`Floor::leave`]).
    pub fn revoke(&mut self, id: ParticipantId, reason: RevokeReason, now: Instant) -> bool {
        if self.holder_id() != Some(id) {
            return false;
        }
        self.actions.push_back(FloorAction::Revoked { holder: id, reason });
        self.pass_on(now);
        true
    }

    /// RTP from participant `id`: keeps the holder's floor alive (ignored for anyone else).
    pub fn media(&mut self, id: ParticipantId, now: Instant) {
        if let State::Taken { holder, last_media, .. } = &mut self.state {
            if holder.id == id {
                *last_media = (*last_media).max(now);
            }
        }
    }

    /// The participant left the call (F-GRP-05): the same as [`Floor::release`] for the floor.
    pub fn leave(&mut self, id: ParticipantId, now: Instant) -> bool {
        self.release(id, now)
    }

    /// Runs due timers: the holder's maximum talk time and inactivity, the idle floor's hang time.
    pub fn handle_timeout(&mut self, now: Instant) {
        loop {
            match &mut self.state {
                State::Taken {
                    holder,
                    since,
                    last_media,
                    ..
                } => {
                    let talk = since.checked_add(self.config.max_talk_time).filter(|due| *due <= now);
                    let quiet = last_media.checked_add(self.config.inactivity).filter(|due| *due <= now);
                    let reason = match (talk, quiet) {
                        (Some(talk), Some(quiet)) if quiet < talk => RevokeReason::Inactivity,
                        (Some(_), _) => RevokeReason::MaxTalkTime,
                        (None, Some(_)) => RevokeReason::Inactivity,
                        (None, None) => return,
                    };
                    let holder = holder.id;
                    self.actions.push_back(FloorAction::Revoked { holder, reason });
                    // The next holder's timers start now: loop in case they are zero.
                    self.pass_on(now);
                }
                State::Idle { hang_deadline } => {
                    if hang_deadline.is_some_and(|due| due <= now) {
                        *hang_deadline = None;
                        self.actions.push_back(FloorAction::HangTimeExpired);
                    }
                    return;
                }
            }
        }
    }

    /// When to call [`Floor::handle_timeout`] next; `None`: no timer runs.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::Idle { hang_deadline } => *hang_deadline,
            State::Taken { since, last_media, .. } => {
                let talk = since.checked_add(self.config.max_talk_time);
                let quiet = last_media.checked_add(self.config.inactivity);
                talk.into_iter().chain(quiet).min()
            }
        }
    }

    /// The next action, if any; drain after every input.
    #[must_use]
    pub fn poll_action(&mut self) -> Option<FloorAction> {
        self.actions.pop_front()
    }

    /// The floor holder, if any.
    pub fn holder(&self) -> Option<&Requester> {
        match &self.state {
            State::Idle { .. } => None,
            State::Taken { holder, .. } => Some(holder),
        }
    }

    /// The waiting participants, head first.
    pub fn queue(&self) -> impl Iterator<Item = ParticipantId> + '_ {
        self.queue.iter().map(|waiting| waiting.requester.id)
    }

    /// The 1-based queue position of a waiting participant.
    pub fn position(&self, id: ParticipantId) -> Option<usize> {
        self.queue
            .iter()
            .position(|waiting| waiting.requester.id == id)
            .map(|index| index + 1)
    }

    /// Whether nobody holds the floor.
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Idle { .. })
    }

    /// The settings.
    pub fn config(&self) -> &FloorConfig {
        &self.config
    }

    fn holder_id(&self) -> Option<ParticipantId> {
        self.holder().map(|holder| holder.id)
    }

    fn rank(&self, requester: &Requester) -> Rank {
        (self.config.dc_outranks && requester.dispatcher, requester.priority)
    }

    fn queue_ids(&self) -> Vec<ParticipantId> {
        self.queue().collect()
    }

    /// Gives the floor to `requester` directly (not from the queue), revoking the holder, if
    /// any, with `reason`. The caller notifies.
    fn take(&mut self, requester: Requester, reason: Option<RevokeReason>, inserted: bool, now: Instant) {
        if let (Some(reason), Some(holder)) = (reason, self.holder_id()) {
            self.actions.push_back(FloorAction::Revoked { holder, reason });
        }
        self.actions.push_back(FloorAction::Granted {
            id: requester.id,
            from_queue: false,
        });
        self.state = State::Taken {
            holder: requester,
            since: now,
            last_media: now,
            inserted,
        };
    }

    /// The holder is gone: the floor goes to the head of the queue or falls idle; notifies.
    fn pass_on(&mut self, now: Instant) {
        let before = self.queue_ids();
        match self.queue.pop_front() {
            Some(head) => {
                self.actions.push_back(FloorAction::Granted {
                    id: head.requester.id,
                    from_queue: true,
                });
                self.state = State::Taken {
                    holder: head.requester,
                    since: now,
                    last_media: now,
                    inserted: false,
                };
                self.report_positions(&before);
            }
            None => {
                self.state = State::Idle {
                    hang_deadline: now.checked_add(self.config.hang_time),
                };
            }
        }
        self.notify();
    }

    /// Queues a request that neither gets nor pre-empts the floor, bumping the lowest-ranked
    /// waiting request out of a full queue if this one outranks it.
    fn enqueue(&mut self, requester: Requester, rank: Rank) -> RequestOutcome {
        let before = self.queue_ids();
        if self.queue.len() >= self.config.queue_capacity {
            let outranks_last = self.queue.back().is_some_and(|last| self.rank(&last.requester) < rank);
            if !outranks_last {
                return RequestOutcome::Rejected;
            }
            if let Some(bumped) = self.queue.pop_back() {
                self.actions.push_back(FloorAction::Dequeued {
                    id: bumped.requester.id,
                    reason: DequeueReason::QueueFull,
                });
            }
        }
        let arrival = self.next_arrival;
        self.next_arrival += 1;
        // Queue order: higher rank first, then earlier arrival.
        let key = (rank, Reverse(arrival));
        let index = self
            .queue
            .iter()
            .position(|waiting| (self.rank(&waiting.requester), Reverse(waiting.arrival)) < key)
            .unwrap_or(self.queue.len());
        self.queue.insert(index, Waiting { requester, arrival });
        self.report_positions(&before);
        RequestOutcome::Queued { position: index + 1 }
    }

    fn remove_waiting(&mut self, id: ParticipantId) -> bool {
        match self.queue.iter().position(|waiting| waiting.requester.id == id) {
            Some(index) => self.queue.remove(index).is_some(),
            None => false,
        }
    }

    /// A position action for every waiting participant that was already waiting in `before` at
    /// another position.
    fn report_positions(&mut self, before: &[ParticipantId]) {
        for (index, waiting) in self.queue.iter().enumerate() {
            let id = waiting.requester.id;
            let moved = before.iter().position(|old| *old == id).is_some_and(|old| old != index);
            if moved {
                self.actions.push_back(FloorAction::QueuePosition {
                    id,
                    position: index + 1,
                });
            }
        }
    }

    fn notify(&mut self) {
        let talker = self.holder().map(|holder| holder.number.clone());
        self.actions.push_back(FloorAction::Notify { talker });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;

    fn id(value: u64) -> ParticipantId {
        ParticipantId(value)
    }

    fn number(value: u64) -> Number {
        Number::parse(&(1000 + value).to_string()).unwrap()
    }

    fn terminal(value: u64, priority: u8) -> Requester {
        Requester {
            id: id(value),
            number: number(value),
            priority,
            dispatcher: false,
        }
    }

    fn dispatcher(value: u64, priority: u8) -> Requester {
        Requester {
            dispatcher: true,
            ..terminal(value, priority)
        }
    }

    fn drain(floor: &mut Floor) -> Vec<FloorAction> {
        std::iter::from_fn(|| floor.poll_action()).collect()
    }

    fn notify(value: u64) -> FloorAction {
        FloorAction::Notify {
            talker: Some(number(value)),
        }
    }

    fn idle() -> FloorAction {
        FloorAction::Notify { talker: None }
    }

    fn granted(value: u64, from_queue: bool) -> FloorAction {
        FloorAction::Granted {
            id: id(value),
            from_queue,
        }
    }

    fn revoked(value: u64, reason: RevokeReason) -> FloorAction {
        FloorAction::Revoked {
            holder: id(value),
            reason,
        }
    }

    fn moved(value: u64, position: usize) -> FloorAction {
        FloorAction::QueuePosition {
            id: id(value),
            position,
        }
    }

    fn queue(floor: &Floor) -> Vec<u64> {
        floor.queue().map(|participant| participant.0).collect()
    }

    fn holder(floor: &Floor) -> Option<u64> {
        floor.holder().map(|holder| holder.id.0)
    }

    fn at(start: Instant, millis: u64) -> Instant {
        start + Duration::from_millis(millis)
    }

    /// A floor held by `holder`, with `waiting` queued in order, actions drained.
    fn busy(config: FloorConfig, start: Instant, holder: Requester, waiting: &[Requester]) -> Floor {
        let mut floor = Floor::new(config, start);
        assert_eq!(floor.request(holder, start), RequestOutcome::Granted);
        for requester in waiting {
            assert!(matches!(
                floor.request(requester.clone(), start),
                RequestOutcome::Queued { .. }
            ));
        }
        drain(&mut floor);
        floor
    }

    #[test]
    fn f_flr_01_request_granted_when_idle() {
        let start = Instant::now();
        let mut floor = Floor::new(FloorConfig::default(), start);
        assert!(floor.is_idle());
        assert_eq!(floor.request(terminal(1, 3), start), RequestOutcome::Granted);
        assert_eq!(drain(&mut floor), vec![granted(1, false), notify(1)]);
        assert_eq!(holder(&floor), Some(1));
        assert!(!floor.is_idle());
        assert_eq!(queue(&floor), Vec::<u64>::new());
    }

    #[test]
    fn f_flr_02_rejected_when_queue_full() {
        let start = Instant::now();
        let config = FloorConfig {
            queue_capacity: 2,
            ..FloorConfig::default()
        };
        let mut floor = busy(config, start, terminal(1, 5), &[terminal(2, 5), terminal(3, 5)]);
        // Equal rank to the lowest waiting request: first come, first served, no bump.
        assert_eq!(floor.request(terminal(4, 5), start), RequestOutcome::Rejected);
        assert_eq!(floor.request(terminal(5, 1), start), RequestOutcome::Rejected);
        assert_eq!(drain(&mut floor), vec![]);
        assert_eq!(queue(&floor), vec![2, 3]);
        assert_eq!(floor.position(id(4)), None);
        assert_eq!(holder(&floor), Some(1));
    }

    #[test]
    fn rejected_without_queue() {
        let start = Instant::now();
        let config = FloorConfig {
            queue_capacity: 0,
            ..FloorConfig::default()
        };
        let mut floor = busy(config, start, terminal(1, 5), &[]);
        assert_eq!(floor.request(terminal(2, 5), start), RequestOutcome::Rejected);
        // Pre-emption needs no queue room.
        assert_eq!(floor.request(terminal(3, 6), start), RequestOutcome::Granted);
        assert_eq!(queue(&floor), Vec::<u64>::new());
    }

    #[test]
    fn full_queue_bumps_the_lowest_rank() {
        let start = Instant::now();
        let config = FloorConfig {
            queue_capacity: 2,
            ..FloorConfig::default()
        };
        let mut floor = busy(config, start, terminal(1, 9), &[terminal(2, 5), terminal(3, 1)]);
        assert_eq!(
            floor.request(terminal(4, 3), start),
            RequestOutcome::Queued { position: 2 }
        );
        assert_eq!(
            drain(&mut floor),
            vec![FloorAction::Dequeued {
                id: id(3),
                reason: DequeueReason::QueueFull
            }]
        );
        assert_eq!(
            floor.request(terminal(5, 7), start),
            RequestOutcome::Queued { position: 1 }
        );
        assert_eq!(
            drain(&mut floor),
            vec![
                FloorAction::Dequeued {
                    id: id(4),
                    reason: DequeueReason::QueueFull
                },
                moved(2, 2)
            ]
        );
        assert_eq!(queue(&floor), vec![5, 2]);
    }

    #[test]
    fn f_flr_03_queued_with_position() {
        let start = Instant::now();
        let mut floor = busy(FloorConfig::default(), start, terminal(1, 7), &[]);
        assert_eq!(
            floor.request(terminal(2, 3), start),
            RequestOutcome::Queued { position: 1 }
        );
        assert_eq!(
            floor.request(terminal(3, 3), start),
            RequestOutcome::Queued { position: 2 }
        );
        assert_eq!(drain(&mut floor), vec![]);
        // A higher priority that does not outrank the holder goes ahead of the others.
        assert_eq!(
            floor.request(terminal(4, 5), start),
            RequestOutcome::Queued { position: 1 }
        );
        assert_eq!(drain(&mut floor), vec![moved(2, 2), moved(3, 3)]);
        // Asking again keeps the place, even with another priority.
        assert_eq!(
            floor.request(terminal(2, 6), start),
            RequestOutcome::Queued { position: 2 }
        );
        assert_eq!(drain(&mut floor), vec![]);
        assert_eq!(queue(&floor), vec![4, 2, 3]);
        assert_eq!(floor.position(id(3)), Some(3));
        assert_eq!(floor.position(id(1)), None);
        assert_eq!(holder(&floor), Some(1));
    }

    #[test]
    fn repeated_request_from_the_holder_is_granted_again() {
        let start = Instant::now();
        let mut floor = busy(FloorConfig::default(), start, terminal(1, 3), &[terminal(2, 3)]);
        assert_eq!(floor.request(terminal(1, 3), at(start, 1000)), RequestOutcome::Granted);
        assert_eq!(drain(&mut floor), vec![]);
        assert_eq!(queue(&floor), vec![2]);
        // The talk time still runs from the first grant.
        assert_eq!(floor.poll_timeout(), Some(at(start, 4000)));
    }

    #[test]
    fn f_flr_04_grant_to_head_of_queue_on_release() {
        let start = Instant::now();
        let mut floor = busy(
            FloorConfig::default(),
            start,
            terminal(1, 3),
            &[terminal(2, 3), terminal(3, 3)],
        );
        let later = at(start, 2000);
        assert!(floor.release(id(1), later));
        assert_eq!(drain(&mut floor), vec![granted(2, true), moved(3, 1), notify(2)]);
        assert_eq!(holder(&floor), Some(2));
        assert_eq!(queue(&floor), vec![3]);
        // The new holder's timers start at its grant.
        assert_eq!(floor.poll_timeout(), Some(at(start, 6000)));
    }

    #[test]
    fn f_flr_05_release_and_cancel_queued() {
        let start = Instant::now();
        let waiting = [terminal(2, 3), terminal(3, 3), terminal(4, 3)];
        let mut floor = busy(FloorConfig::default(), start, terminal(1, 3), &waiting);
        assert!(floor.release(id(3), start));
        assert_eq!(drain(&mut floor), vec![moved(4, 2)]);
        assert_eq!(queue(&floor), vec![2, 4]);
        assert_eq!(holder(&floor), Some(1));
        assert!(!floor.release(id(3), start));
        assert!(!floor.release(id(9), start));
        assert_eq!(drain(&mut floor), vec![]);

        let mut alone = busy(FloorConfig::default(), start, terminal(1, 3), &[]);
        assert!(alone.release(id(1), start));
        assert_eq!(drain(&mut alone), vec![idle()]);
        assert!(alone.is_idle());
    }

    #[test]
    fn f_flr_06_forced_release_on_max_talk_time() {
        let start = Instant::now();
        let mut floor = busy(FloorConfig::default(), start, terminal(1, 3), &[terminal(2, 3)]);
        for millis in (2000..=30_000).step_by(2000) {
            floor.media(id(1), at(start, millis));
            floor.handle_timeout(at(start, millis - 1));
        }
        assert_eq!(drain(&mut floor), vec![]);
        assert_eq!(floor.poll_timeout(), Some(at(start, 30_000)));
        floor.handle_timeout(at(start, 29_999));
        assert_eq!(drain(&mut floor), vec![]);
        assert_eq!(holder(&floor), Some(1));
        floor.handle_timeout(at(start, 30_000));
        assert_eq!(
            drain(&mut floor),
            vec![revoked(1, RevokeReason::MaxTalkTime), granted(2, true), notify(2)]
        );
        assert_eq!(floor.position(id(1)), None);
        assert_eq!(floor.poll_timeout(), Some(at(start, 34_000)));
    }

    #[test]
    fn f_flr_06_forced_release_on_inactivity() {
        let start = Instant::now();
        let mut floor = busy(FloorConfig::default(), start, terminal(1, 3), &[]);
        floor.media(id(1), at(start, 1000));
        assert_eq!(floor.poll_timeout(), Some(at(start, 5000)));
        // Media from anyone else keeps nothing alive.
        floor.media(id(9), at(start, 3000));
        assert_eq!(floor.poll_timeout(), Some(at(start, 5000)));
        floor.handle_timeout(at(start, 4999));
        assert_eq!(drain(&mut floor), vec![]);
        floor.handle_timeout(at(start, 5000));
        assert_eq!(drain(&mut floor), vec![revoked(1, RevokeReason::Inactivity), idle()]);
        assert!(floor.is_idle());
        assert_eq!(floor.poll_timeout(), Some(at(start, 15_000)));
    }

    #[test]
    fn zero_talk_time_runs_through_the_queue_in_one_call() {
        let start = Instant::now();
        let config = FloorConfig {
            max_talk_time: Duration::ZERO,
            hang_time: Duration::ZERO,
            ..FloorConfig::default()
        };
        let mut floor = busy(config, start, terminal(1, 3), &[terminal(2, 3)]);
        floor.handle_timeout(start);
        assert_eq!(
            drain(&mut floor),
            vec![
                revoked(1, RevokeReason::MaxTalkTime),
                granted(2, true),
                notify(2),
                revoked(2, RevokeReason::MaxTalkTime),
                idle(),
                FloorAction::HangTimeExpired
            ]
        );
        assert_eq!(floor.poll_timeout(), None);
    }

    #[test]
    fn f_flr_07_every_change_notifies() {
        let start = Instant::now();
        let mut floor = Floor::new(FloorConfig::default(), start);
        let notifies = |floor: &mut Floor| -> Vec<FloorAction> {
            let actions = drain(floor);
            let count = actions
                .iter()
                .filter(|action| matches!(action, FloorAction::Notify { .. }))
                .count();
            assert!(count <= 1, "{actions:?}");
            assert!(count == 0 || matches!(actions.last(), Some(FloorAction::Notify { .. })));
            actions
                .into_iter()
                .filter(|action| matches!(action, FloorAction::Notify { .. }))
                .collect()
        };
        assert_eq!(floor.request(terminal(1, 3), start), RequestOutcome::Granted);
        assert_eq!(notifies(&mut floor), vec![notify(1)]);
        assert_eq!(
            floor.request(terminal(2, 3), start),
            RequestOutcome::Queued { position: 1 }
        );
        assert_eq!(floor.request(terminal(1, 3), start), RequestOutcome::Granted);
        floor.media(id(1), start);
        assert_eq!(notifies(&mut floor), vec![]);
        assert_eq!(floor.request(terminal(3, 5), start), RequestOutcome::Granted);
        assert_eq!(notifies(&mut floor), vec![notify(3)]);
        assert!(floor.release(id(3), start));
        assert_eq!(notifies(&mut floor), vec![notify(2)]);
        assert_eq!(
            floor.request(terminal(4, 1), start),
            RequestOutcome::Queued { position: 1 }
        );
        assert!(floor.revoke(id(2), RevokeReason::Ordered, start));
        assert_eq!(notifies(&mut floor), vec![notify(4)]);
        floor.insert(dispatcher(5, 0), start);
        assert_eq!(notifies(&mut floor), vec![notify(5)]);
        assert!(floor.leave(id(5), start));
        assert_eq!(notifies(&mut floor), vec![idle()]);
        assert_eq!(floor.request(terminal(6, 1), start), RequestOutcome::Granted);
        assert_eq!(notifies(&mut floor), vec![notify(6)]);
        floor.handle_timeout(at(start, 4000));
        assert_eq!(notifies(&mut floor), vec![idle()]);
        floor.handle_timeout(at(start, 14_000));
        assert_eq!(notifies(&mut floor), vec![]);
    }

    #[test]
    fn f_flr_08_preemption_by_higher_priority() {
        let start = Instant::now();
        let mut floor = busy(FloorConfig::default(), start, terminal(1, 3), &[terminal(2, 3)]);
        let later = at(start, 1000);
        assert_eq!(floor.request(terminal(3, 5), later), RequestOutcome::Granted);
        assert_eq!(
            drain(&mut floor),
            vec![revoked(1, RevokeReason::Preempted), granted(3, false), notify(3)]
        );
        assert_eq!(holder(&floor), Some(3));
        // The pre-empted holder is released, not queued.
        assert_eq!(queue(&floor), vec![2]);
        assert_eq!(floor.poll_timeout(), Some(at(start, 5000)));
        // Equal priority does not pre-empt.
        assert_eq!(
            floor.request(terminal(4, 5), later),
            RequestOutcome::Queued { position: 1 }
        );
        assert_eq!(holder(&floor), Some(3));
    }

    #[test]
    fn f_flr_09_forced_insertion() {
        let start = Instant::now();
        let mut floor = busy(FloorConfig::default(), start, dispatcher(1, 9), &[terminal(2, 3)]);
        floor.insert(dispatcher(3, 0), start);
        assert_eq!(
            drain(&mut floor),
            vec![revoked(1, RevokeReason::ForcedInsertion), granted(3, false), notify(3)]
        );
        assert_eq!(holder(&floor), Some(3));
        assert_eq!(queue(&floor), vec![2]);
        // An inserted holder is not pre-empted by a request of higher rank...
        assert_eq!(
            floor.request(dispatcher(4, 9), start),
            RequestOutcome::Queued { position: 1 }
        );
        assert_eq!(holder(&floor), Some(3));
        drain(&mut floor);
        // ...but another insertion takes the floor, from the head of the queue too.
        assert_eq!(queue(&floor), vec![4, 2]);
        floor.insert(dispatcher(4, 9), start);
        assert_eq!(
            drain(&mut floor),
            vec![
                revoked(3, RevokeReason::ForcedInsertion),
                granted(4, false),
                moved(2, 1),
                notify(4)
            ]
        );
        assert_eq!(queue(&floor), vec![2]);
        // Inserting while holding changes nothing.
        floor.insert(dispatcher(4, 9), start);
        assert_eq!(drain(&mut floor), vec![]);
        // Exit by BYE: the floor goes on as usual.
        assert!(floor.release(id(4), start));
        assert_eq!(drain(&mut floor), vec![granted(2, true), notify(2)]);
    }

    #[test]
    fn f_flr_09_forced_insertion_on_an_idle_floor() {
        let start = Instant::now();
        let mut floor = Floor::new(FloorConfig::default(), start);
        floor.insert(dispatcher(1, 0), start);
        assert_eq!(drain(&mut floor), vec![granted(1, false), notify(1)]);
    }

    #[test]
    fn f_flr_10_forced_teardown_revokes() {
        let start = Instant::now();
        let mut floor = busy(FloorConfig::default(), start, terminal(1, 3), &[terminal(2, 3)]);
        assert!(!floor.revoke(id(2), RevokeReason::Ordered, start));
        assert!(!floor.revoke(id(9), RevokeReason::Ordered, start));
        assert_eq!(drain(&mut floor), vec![]);
        assert_eq!(queue(&floor), vec![2]);
        assert!(floor.revoke(id(1), RevokeReason::Ordered, start));
        assert_eq!(
            drain(&mut floor),
            vec![revoked(1, RevokeReason::Ordered), granted(2, true), notify(2)]
        );
        assert!(floor.revoke(id(2), RevokeReason::Ordered, start));
        assert_eq!(drain(&mut floor), vec![revoked(2, RevokeReason::Ordered), idle()]);
        assert!(floor.is_idle());
    }

    #[test]
    fn leave_removes_holder_and_waiting_without_revoking() {
        let start = Instant::now();
        let mut floor = busy(
            FloorConfig::default(),
            start,
            terminal(1, 3),
            &[terminal(2, 3), terminal(3, 3)],
        );
        assert!(floor.leave(id(2), start));
        assert_eq!(drain(&mut floor), vec![moved(3, 1)]);
        assert!(floor.leave(id(1), start));
        assert_eq!(drain(&mut floor), vec![granted(3, true), notify(3)]);
        assert!(!floor.leave(id(1), start));
        assert_eq!(drain(&mut floor), vec![]);
    }

    #[test]
    fn hang_time_ends_an_idle_call() {
        let start = Instant::now();
        let mut floor = Floor::new(FloorConfig::default(), start);
        assert_eq!(floor.poll_timeout(), Some(at(start, 10_000)));
        floor.handle_timeout(at(start, 9999));
        assert_eq!(drain(&mut floor), vec![]);
        // Talking stops the hang timer; falling idle starts it again.
        assert_eq!(floor.request(terminal(1, 3), at(start, 5000)), RequestOutcome::Granted);
        floor.handle_timeout(at(start, 8000));
        assert_eq!(drain(&mut floor), vec![granted(1, false), notify(1)]);
        assert!(floor.release(id(1), at(start, 8000)));
        assert_eq!(drain(&mut floor), vec![idle()]);
        assert_eq!(floor.poll_timeout(), Some(at(start, 18_000)));
        floor.handle_timeout(at(start, 17_999));
        assert_eq!(drain(&mut floor), vec![]);
        floor.handle_timeout(at(start, 18_000));
        assert_eq!(drain(&mut floor), vec![FloorAction::HangTimeExpired]);
        // Reported once.
        assert_eq!(floor.poll_timeout(), None);
        floor.handle_timeout(at(start, 60_000));
        assert_eq!(drain(&mut floor), vec![]);
    }

    #[test]
    fn fifo_within_equal_priority() {
        let start = Instant::now();
        let mut floor = busy(FloorConfig::default(), start, terminal(1, 9), &[]);
        for value in [2, 3, 4, 5] {
            let priority = if value == 4 { 1 } else { 3 };
            assert!(matches!(
                floor.request(terminal(value, priority), start),
                RequestOutcome::Queued { .. }
            ));
        }
        assert_eq!(
            floor.request(terminal(6, 3), start),
            RequestOutcome::Queued { position: 4 }
        );
        assert_eq!(queue(&floor), vec![2, 3, 5, 6, 4]);
        let mut order = Vec::new();
        for _ in 0..5 {
            let holder = floor.holder().map(|holder| holder.id).unwrap();
            assert!(floor.release(holder, start));
            order.push(floor.holder().unwrap().id.0);
        }
        assert_eq!(order, vec![2, 3, 5, 6, 4]);
    }

    #[test]
    fn dispatcher_outranks_terminal() {
        let start = Instant::now();
        let mut floor = busy(FloorConfig::default(), start, terminal(1, 255), &[terminal(2, 200)]);
        assert_eq!(floor.request(dispatcher(3, 0), start), RequestOutcome::Granted);
        assert_eq!(floor.position(id(1)), None);
        assert_eq!(
            floor.request(dispatcher(4, 0), start),
            RequestOutcome::Queued { position: 1 }
        );
        assert_eq!(queue(&floor), vec![4, 2]);
        // Among dispatchers, priority decides.
        assert_eq!(floor.request(dispatcher(5, 1), start), RequestOutcome::Granted);
    }

    #[test]
    fn dispatcher_ranks_by_priority_when_not_outranking() {
        let start = Instant::now();
        let config = FloorConfig {
            dc_outranks: false,
            ..FloorConfig::default()
        };
        let mut floor = busy(config, start, terminal(1, 255), &[terminal(2, 200)]);
        assert_eq!(
            floor.request(dispatcher(3, 0), start),
            RequestOutcome::Queued { position: 2 }
        );
        assert_eq!(holder(&floor), Some(1));
        assert_eq!(
            floor.request(dispatcher(4, 201), start),
            RequestOutcome::Queued { position: 1 }
        );
    }

    // Random operation sequences; every invariant checked after every step.

    #[derive(Debug, Clone)]
    enum Op {
        Request {
            who: u64,
            priority: u8,
            dispatcher: bool,
        },
        Insert {
            who: u64,
            priority: u8,
        },
        Release {
            who: u64,
        },
        Revoke {
            who: u64,
            reason: RevokeReason,
        },
        Media {
            who: u64,
        },
        Leave {
            who: u64,
        },
        Advance {
            millis: u64,
        },
        /// Time moves to just before (or at) the next deadline.
        ToDeadline {
            early_millis: u64,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        let who = 0u64..7;
        let reason = prop_oneof![
            Just(RevokeReason::MaxTalkTime),
            Just(RevokeReason::Inactivity),
            Just(RevokeReason::Preempted),
            Just(RevokeReason::ForcedInsertion),
            Just(RevokeReason::Ordered),
        ];
        prop_oneof![
            8 => (who.clone(), 0u8..4, any::<bool>())
                .prop_map(|(who, priority, dispatcher)| Op::Request { who, priority, dispatcher }),
            1 => (who.clone(), 0u8..4).prop_map(|(who, priority)| Op::Insert { who, priority }),
            3 => who.clone().prop_map(|who| Op::Release { who }),
            1 => (who.clone(), reason).prop_map(|(who, reason)| Op::Revoke { who, reason }),
            3 => who.clone().prop_map(|who| Op::Media { who }),
            1 => who.prop_map(|who| Op::Leave { who }),
            4 => prop_oneof![Just(0u64), 0u64..6000, 0u64..40_000].prop_map(|millis| Op::Advance { millis }),
            2 => (0u64..3).prop_map(|early_millis| Op::ToDeadline { early_millis }),
        ]
    }

    fn config() -> impl Strategy<Value = FloorConfig> {
        (0u64..40, 0u64..8, 0u64..20, 0usize..5, any::<bool>()).prop_map(
            |(talk, inactivity, hang, queue_capacity, dc_outranks)| FloorConfig {
                max_talk_time: Duration::from_secs(talk),
                inactivity: Duration::from_secs(inactivity),
                hang_time: Duration::from_secs(hang),
                queue_capacity,
                dc_outranks,
            },
        )
    }

    /// Checks the invariants after one step of `op`; `before` is (holder, queue) before it.
    fn check(
        floor: &Floor,
        op: &Op,
        before: &(Option<Requester>, Vec<ParticipantId>),
        actions: &[FloorAction],
    ) -> Result<(), TestCaseError> {
        let (old_holder, old_queue) = before;
        let old_holder = old_holder.as_ref().map(|holder| holder.id);
        let holder = floor.holder().map(|holder| holder.id);
        let queue: Vec<ParticipantId> = floor.queue().collect();
        // Timer steps may chain several changes (zero durations); other steps make at most one.
        let timers = matches!(op, Op::Advance { .. } | Op::ToDeadline { .. });

        // One holder (by type), never also waiting; everyone waits once; bounded queue.
        if let Some(holder) = holder {
            prop_assert!(!queue.contains(&holder));
        }
        let mut unique = queue.clone();
        unique.sort();
        unique.dedup();
        prop_assert_eq!(unique.len(), queue.len());
        prop_assert!(queue.len() <= floor.config.queue_capacity);
        prop_assert!(!floor.is_idle() || queue.is_empty());
        // Sorted by rank, then arrival.
        for (first, second) in floor.queue.iter().zip(floor.queue.iter().skip(1)) {
            let (first_rank, second_rank) = (floor.rank(&first.requester), floor.rank(&second.requester));
            prop_assert!(first_rank > second_rank || (first_rank == second_rank && first.arrival < second.arrival));
        }

        // Notifies: one per change of holder, the last one naming the final holder and followed
        // by nothing but the hang-time report.
        let count = |wanted: fn(&FloorAction) -> bool| actions.iter().filter(|action| wanted(action)).count();
        let notifies = count(|action| matches!(action, FloorAction::Notify { .. }));
        let revocations = count(|action| matches!(action, FloorAction::Revoked { .. }));
        let grants = count(|action| matches!(action, FloorAction::Granted { .. }));
        let changed = old_holder != holder;
        if timers {
            prop_assert_eq!(notifies, revocations, "{:?}", actions);
            prop_assert_eq!(changed, notifies > 0, "{:?}", actions);
        } else {
            prop_assert_eq!(notifies, usize::from(changed), "{:?}", actions);
            prop_assert!(revocations <= 1 && grants <= 1, "{:?}", actions);
        }
        if let Some(last) = actions
            .iter()
            .rposition(|action| matches!(action, FloorAction::Notify { .. }))
        {
            let talker = holder.map(|holder| number(holder.0));
            prop_assert_eq!(actions.get(last), Some(&FloorAction::Notify { talker }));
            let after = actions.iter().skip(last + 1);
            prop_assert!(
                after.clone().all(|action| *action == FloorAction::HangTimeExpired),
                "{:?}",
                actions
            );
        }
        let mut first_revocation = true;
        for action in actions {
            match action {
                FloorAction::Granted { id, from_queue } => {
                    prop_assert!(changed);
                    if *from_queue {
                        prop_assert!(old_queue.contains(id));
                        if !timers {
                            prop_assert_eq!(old_queue.first(), Some(id));
                        }
                    } else {
                        let direct = matches!(op, Op::Request { .. } | Op::Insert { .. });
                        prop_assert!(direct, "{:?}", op);
                    }
                    if !timers {
                        prop_assert_eq!(holder, Some(*id));
                    }
                }
                FloorAction::Revoked { holder, .. } => {
                    if first_revocation {
                        prop_assert_eq!(old_holder, Some(*holder));
                    }
                    first_revocation = false;
                }
                FloorAction::Dequeued { id, .. } => {
                    prop_assert!(old_queue.contains(id) && !queue.contains(id));
                }
                _ => {}
            }
        }

        // A position report exactly for every waiting participant that moved.
        let positions: Vec<(ParticipantId, usize)> = actions
            .iter()
            .filter_map(|action| match action {
                FloorAction::QueuePosition { id, position } => Some((*id, *position)),
                _ => None,
            })
            .collect();
        let mut expected = Vec::new();
        for (index, id) in queue.iter().enumerate() {
            if let Some(old) = old_queue.iter().position(|old| old == id) {
                if old != index {
                    expected.push((*id, index + 1));
                }
            }
        }
        if timers {
            // Each change of a chain reports its own moves: the last report per participant counts.
            let mut last: Vec<(ParticipantId, usize)> = Vec::new();
            for (id, position) in positions.iter().rev() {
                if !last.iter().any(|(seen, _)| seen == id) {
                    last.push((*id, *position));
                }
            }
            for (id, position) in &last {
                if let Some(index) = queue.iter().position(|waiting| waiting == id) {
                    prop_assert_eq!(*position, index + 1);
                }
            }
            for pair in &expected {
                prop_assert!(last.contains(pair), "{:?} not in {:?}", pair, actions);
            }
        } else {
            prop_assert_eq!(positions, expected);
        }
        Ok(())
    }

    proptest! {
        /// Over random sequences of requests, insertions, releases, orders, media, departures and
        /// time: one holder, never also waiting; a bounded, sorted queue of distinct
        /// participants; exactly one notify per change of holder, last; position reports for
        /// every waiting participant that moved; timers that fire only when due, and all of them.
        #[test]
        fn invariants_hold(config in config(), ops in proptest::collection::vec(op(), 1..200)) {
            let start = Instant::now();
            let mut now = start;
            let mut floor = Floor::new(config, start);
            for op in ops {
                let before = (floor.holder().cloned(), floor.queue().collect::<Vec<_>>());
                let deadline = floor.poll_timeout();
                match op {
                    Op::Request { who, priority, dispatcher } => {
                        let requester = Requester { dispatcher, ..terminal(who, priority) };
                        let outcome = floor.request(requester, now);
                        match outcome {
                            RequestOutcome::Granted => prop_assert_eq!(holder(&floor), Some(who)),
                            RequestOutcome::Queued { position } => {
                                prop_assert_eq!(floor.position(id(who)), Some(position));
                            }
                            RequestOutcome::Rejected => {
                                prop_assert_eq!(floor.position(id(who)), None);
                                prop_assert_ne!(holder(&floor), Some(who));
                                prop_assert_eq!(&before.1, &floor.queue().collect::<Vec<_>>());
                                prop_assert!(floor.actions.is_empty());
                            }
                        }
                    }
                    Op::Insert { who, priority } => {
                        floor.insert(dispatcher(who, priority), now);
                        prop_assert_eq!(holder(&floor), Some(who));
                    }
                    Op::Release { who } => {
                        let known = before.0.as_ref().map(|holder| holder.id) == Some(id(who))
                            || before.1.contains(&id(who));
                        prop_assert_eq!(floor.release(id(who), now), known);
                        prop_assert_eq!(floor.position(id(who)), None);
                        prop_assert_ne!(holder(&floor), Some(who));
                    }
                    Op::Revoke { who, reason } => {
                        let held = before.0.as_ref().map(|holder| holder.id) == Some(id(who));
                        prop_assert_eq!(floor.revoke(id(who), reason, now), held);
                        prop_assert_ne!(holder(&floor), Some(who));
                    }
                    Op::Media { who } => floor.media(id(who), now),
                    Op::Leave { who } => {
                        floor.leave(id(who), now);
                        prop_assert_eq!(floor.position(id(who)), None);
                        prop_assert_ne!(holder(&floor), Some(who));
                    }
                    Op::Advance { millis } => {
                        now += Duration::from_millis(millis);
                        floor.handle_timeout(now);
                        // Every due timer ran.
                        prop_assert!(floor.poll_timeout().map_or(true, |next| next > now));
                    }
                    Op::ToDeadline { early_millis } => {
                        if let Some(deadline) = deadline {
                            let target = deadline.checked_sub(Duration::from_millis(early_millis)).unwrap_or(deadline);
                            now = now.max(target);
                        }
                        floor.handle_timeout(now);
                        // Every due timer ran.
                        prop_assert!(floor.poll_timeout().map_or(true, |next| next > now));
                    }
                }
                let actions = drain(&mut floor);
                // Timers fire only at or after their deadline.
                let fired = actions.iter().any(|action| {
                    matches!(
                        action,
                        FloorAction::HangTimeExpired
                            | FloorAction::Revoked { reason: RevokeReason::MaxTalkTime | RevokeReason::Inactivity, .. }
                    )
                });
                if fired && !matches!(op, Op::Revoke { .. }) {
                    let timer_step = matches!(op, Op::Advance { .. } | Op::ToDeadline { .. });
                    prop_assert!(timer_step, "{:?}", op);
                    prop_assert!(deadline.is_some_and(|deadline| deadline <= now));
                }
                check(&floor, &op, &before, &actions)?;
            }
        }
    }
}
