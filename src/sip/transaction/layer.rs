//! The transaction layer: many transactions, matched by key, with one merged timer queue and a cap.

use crate::proto::NetMap;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Instant;

use bytes::Bytes;

use super::client_invite::ClientInvite;
use super::client_non_invite::ClientNonInvite;
use super::server_invite::{ServerInvite, ServerInviteState};
use super::server_non_invite::ServerNonInvite;
use super::timer::TimerConfig;
use super::{notify, IdMap, Method, Output, Role, TransactionError, TransactionKey, TransactionUserEvent};

/// How the layer is sized and timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerConfig {
    /// T1/T2/T4.
    pub timers: TimerConfig,
    /// Live transactions (client and server together) beyond which new ones are refused with
    /// [`TransactionError::Overloaded`]. Every transaction ends within about 64·T1 of its final response,
    /// so this bounds memory at roughly `max_transactions` × (request + last response).
    pub max_transactions: usize,
}

impl LayerConfig {
    /// Default cap: 16 384 live transactions, about 500 new ones per second sustained with the default
    /// 32 s lifetime of a completed transaction, with headroom for retransmission storms.
    pub const DEFAULT_MAX_TRANSACTIONS: usize = 16_384;
}

impl Default for LayerConfig {
    fn default() -> Self {
        Self {
            timers: TimerConfig::default(),
            max_transactions: Self::DEFAULT_MAX_TRANSACTIONS,
        }
    }
}

/// A message or transport fact for the layer; see the module docs for how to build keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input<D> {
    /// A request arrived.
    Request {
        /// From the top Via and CSeq (an ACK's key is its INVITE's key).
        key: TransactionKey,
        /// The request-line method.
        method: Method,
        /// The whole request as received.
        bytes: Bytes,
        /// Where responses go (§18.2.2: received/rport of the top Via, or the connection); decided by the caller.
        reply_to: D,
        /// Whether it came over a reliable transport (TCP, TLS, SCTP, WebSocket): no retransmission timers.
        reliable: bool,
    },
    /// A response arrived.
    Response {
        /// From the top Via and CSeq.
        key: TransactionKey,
        /// The status code.
        status: u16,
        /// The whole response as received.
        bytes: Bytes,
    },
    /// The transport failed to send something an [`Output::Transmit`] for this role and key asked for.
    TransportError {
        /// The `role` of the failed transmit.
        role: Role,
        /// The `key` of the failed transmit.
        key: TransactionKey,
    },
}

/// What an incoming CANCEL targets (RFC 3261 §9.2). The CANCEL itself always gets a response through its own
/// server transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelMatch {
    /// An INVITE server transaction still without a final response: answer the CANCEL with 200, then the
    /// INVITE (this key) with 487.
    Pending(TransactionKey),
    /// The INVITE already has its final response: answer the CANCEL with 200; the CANCEL has no effect.
    AlreadyFinal(TransactionKey),
    /// No such INVITE server transaction: answer the CANCEL with 481. (A CANCEL for a non-INVITE request,
    /// which §9.1 says not to send, ends up here too.)
    NoMatch,
}

/// Counters for metrics; they only grow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LayerStats {
    /// Responses matching no client transaction, dropped (RFC 6026 §8.9).
    pub stray_responses: u64,
    /// New transactions refused because the cap was reached.
    pub overloaded: u64,
    /// Requests absorbed or answered by an existing server transaction (retransmissions, ACKs for non-2xx).
    pub matched_requests: u64,
}

/// The transaction layer: creates, matches, times and removes transactions. Generic over the transport's
/// destination type `D` (an address, a connection id), which it only clones and hands back.
///
/// See the [module docs](super) for the drive contract.
#[derive(Debug)]
pub struct TransactionLayer<D> {
    config: LayerConfig,
    transactions: IdMap<Slot<D>>,
    clients: NetMap<TransactionKey, u64>,
    servers: NetMap<TransactionKey, u64>,
    /// Deadlines by transaction id. Entries go stale when a transaction's deadline moves or it ends; an entry
    /// counts only if it equals the slot's `scheduled`, and the heap is rebuilt when stale entries pile up.
    deadlines: BinaryHeap<Reverse<(Instant, u64)>>,
    next_id: u64,
    outputs: VecDeque<Output<D>>,
    stats: LayerStats,
}

#[derive(Debug)]
struct Slot<D> {
    /// Boxed (a machine is ~450 bytes): the map's entries stay small, so sizing the table for
    /// the cap costs little, and rebuilding the deadline heap scans `scheduled` without
    /// touching the machines.
    transaction: Box<Transaction<D>>,
    /// The deadline currently in the heap for this transaction.
    scheduled: Option<Instant>,
}

/// One live transaction. The variants are named after the machine types they hold, hence the shared suffix.
#[allow(clippy::enum_variant_names)]
#[derive(Debug)]
enum Transaction<D> {
    ClientInvite(ClientInvite<D>),
    ClientNonInvite(ClientNonInvite<D>),
    ServerInvite(ServerInvite<D>),
    ServerNonInvite(ServerNonInvite<D>),
}

impl<D: Clone> TransactionLayer<D> {
    /// An empty layer, its tables sized for `config.max_transactions` at once: growing a table
    /// of 10⁵ transactions rehashes every key (10–30 ms in which no message is handled), so the
    /// tables never grow. Address space: about 400 bytes per transaction of the cap (boxed slots
    /// aside), touched as the tables fill.
    pub fn new(config: LayerConfig) -> Self {
        let capacity = config.max_transactions;
        Self {
            config,
            transactions: IdMap::with_capacity_and_hasher(capacity, Default::default()),
            clients: NetMap::with_capacity_and_hasher(capacity, Default::default()),
            servers: NetMap::with_capacity_and_hasher(capacity, Default::default()),
            // Stale entries may pile up to twice the live ones before a rebuild.
            deadlines: BinaryHeap::with_capacity(2 * capacity + 128),
            next_id: 0,
            outputs: VecDeque::new(),
            stats: LayerStats::default(),
        }
    }

    /// Feeds a received message or a transport failure. Then drain [`Self::poll_output`].
    ///
    /// A request matching a server transaction goes to it (retransmissions are absorbed or answered with the
    /// last response; an ACK for a non-2xx completes the INVITE transaction). An unmatched ACK goes to the TU
    /// as [`TransactionUserEvent::Ack`]. Any other unmatched request creates a server transaction, unless the
    /// cap is reached: then `Err(Overloaded)` and the caller answers 503 statelessly. A response goes to its
    /// client transaction or is dropped.
    pub fn handle_input(&mut self, now: Instant, input: Input<D>) -> Result<(), TransactionError> {
        match input {
            Input::Request {
                key,
                method,
                bytes,
                reply_to,
                reliable,
            } => self.on_request(now, key, method, bytes, reply_to, reliable),
            Input::Response { key, status, bytes } => {
                self.on_response(now, &key, status, bytes);
                Ok(())
            }
            Input::TransportError { role, key } => {
                if let Some(id) = self.id(role, &key) {
                    if let Some(slot) = self.transactions.get_mut(&id) {
                        slot.transaction.on_transport_error(&mut self.outputs);
                    }
                    self.settle(id);
                }
                Ok(())
            }
        }
    }

    /// Starts a client transaction and sends `request` to `destination`. `key` comes from the request's top Via
    /// (a fresh branch) and CSeq method. Then drain [`Self::poll_output`].
    pub fn send_request(
        &mut self,
        now: Instant,
        key: TransactionKey,
        method: Method,
        request: Bytes,
        destination: D,
        reliable: bool,
    ) -> Result<(), TransactionError> {
        if method == Method::Ack {
            return Err(TransactionError::AckIsNotATransaction);
        }
        if method != *key.method() {
            return Err(TransactionError::MethodMismatch { method });
        }
        if self.clients.contains_key(&key) {
            return Err(TransactionError::DuplicateKey);
        }
        self.check_capacity()?;
        let timers = self.config.timers;
        let transaction = if method == Method::Invite {
            Transaction::ClientInvite(ClientInvite::start(
                now,
                key.clone(),
                request,
                destination,
                reliable,
                timers,
                &mut self.outputs,
            ))
        } else {
            Transaction::ClientNonInvite(ClientNonInvite::start(
                now,
                key.clone(),
                request,
                destination,
                reliable,
                timers,
                &mut self.outputs,
            ))
        };
        self.insert(Role::Client, key, transaction);
        Ok(())
    }

    /// Sends a response from the TU on a server transaction. Then drain [`Self::poll_output`].
    pub fn respond(
        &mut self,
        now: Instant,
        key: &TransactionKey,
        status: u16,
        response: Bytes,
    ) -> Result<(), TransactionError> {
        let id = self.id(Role::Server, key).ok_or(TransactionError::UnknownTransaction)?;
        let slot = self
            .transactions
            .get_mut(&id)
            .ok_or(TransactionError::UnknownTransaction)?;
        let result = match &mut *slot.transaction {
            Transaction::ServerInvite(machine) => machine.respond(now, status, response, &mut self.outputs),
            Transaction::ServerNonInvite(machine) => machine.respond(now, status, response, &mut self.outputs),
            Transaction::ClientInvite(_) | Transaction::ClientNonInvite(_) => Err(TransactionError::UnknownTransaction),
        };
        self.settle(id);
        result
    }

    /// Answers [`Output::NeedAck`]: sends the ACK through the INVITE client transaction, which keeps it for
    /// retransmitted final responses. Then keep draining [`Self::poll_output`].
    pub fn send_ack(&mut self, key: &TransactionKey, ack: Bytes) -> Result<(), TransactionError> {
        let id = self.id(Role::Client, key).ok_or(TransactionError::UnknownTransaction)?;
        let slot = self
            .transactions
            .get_mut(&id)
            .ok_or(TransactionError::UnknownTransaction)?;
        let result = match &mut *slot.transaction {
            Transaction::ClientInvite(machine) => machine.send_ack(ack, &mut self.outputs),
            Transaction::ClientNonInvite(machine) => Err(machine.wrong_state()),
            Transaction::ServerInvite(_) | Transaction::ServerNonInvite(_) => Err(TransactionError::UnknownTransaction),
        };
        self.settle(id);
        result
    }

    /// Cancels a pending INVITE (RFC 3261 §9.1): starts a CANCEL client transaction to the INVITE's destination
    /// over the same transport and returns its key. `cancel` must carry the INVITE's top Via (same branch).
    /// If no final response arrives within 64·T1, the INVITE transaction times out.
    ///
    /// Refused with [`TransactionError::WrongState`] before any provisional response (wait for one, §9.1) and
    /// after the final one (nothing left to cancel).
    pub fn send_cancel(
        &mut self,
        now: Instant,
        invite: &TransactionKey,
        cancel: Bytes,
    ) -> Result<TransactionKey, TransactionError> {
        let id = self
            .id(Role::Client, invite)
            .ok_or(TransactionError::UnknownTransaction)?;
        let cancel_key = invite.with_method(Method::Cancel);
        if self.clients.contains_key(&cancel_key) {
            return Err(TransactionError::DuplicateKey);
        }
        self.check_capacity()?;
        let Some(Transaction::ClientInvite(machine)) =
            self.transactions.get_mut(&id).map(|slot| &mut *slot.transaction)
        else {
            return Err(TransactionError::UnknownTransaction);
        };
        machine.cancel_sent(now)?;
        let destination = machine.destination().clone();
        let reliable = machine.is_reliable();
        self.settle(id);
        let transaction = Transaction::ClientNonInvite(ClientNonInvite::start(
            now,
            cancel_key.clone(),
            cancel,
            destination,
            reliable,
            self.config.timers,
            &mut self.outputs,
        ));
        self.insert(Role::Client, cancel_key.clone(), transaction);
        Ok(cancel_key)
    }

    /// Finds the INVITE server transaction an incoming CANCEL (given by its own key) targets, so the TU can
    /// answer 200 to the CANCEL and 487 to the INVITE, or 481 to the CANCEL when there is none.
    #[must_use]
    pub fn match_cancel(&self, cancel: &TransactionKey) -> CancelMatch {
        let invite = cancel.with_method(Method::Invite);
        let state = self
            .id(Role::Server, &invite)
            .and_then(|id| self.transactions.get(&id))
            .and_then(|slot| match &*slot.transaction {
                Transaction::ServerInvite(machine) => Some(machine.state()),
                _ => None,
            });
        match state {
            Some(ServerInviteState::Proceeding) => CancelMatch::Pending(invite),
            Some(_) => CancelMatch::AlreadyFinal(invite),
            None => CancelMatch::NoMatch,
        }
    }

    /// Runs every timer due at `now`; calling it early or twice is harmless. Then drain [`Self::poll_output`].
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&Reverse((at, id))) = self.deadlines.peek() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            let Some(slot) = self.transactions.get_mut(&id) else {
                continue;
            };
            if slot.scheduled != Some(at) {
                continue;
            }
            slot.scheduled = None;
            slot.transaction.handle_timeout(now, &mut self.outputs);
            self.settle(id);
        }
        self.prune_stale_head();
    }

    /// The next output, or `None` once drained. Call after every input until `None`.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output<D>> {
        self.outputs.pop_front()
    }

    /// When to call [`Self::handle_timeout`] next (possibly already past, for zero-length timers), or `None`
    /// if no timer is running. Ask after draining the outputs.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.peek().map(|Reverse((at, _))| *at)
    }

    /// Number of live transactions.
    pub fn len(&self) -> usize {
        self.transactions.len()
    }

    /// Whether no transaction is live.
    pub fn is_empty(&self) -> bool {
        self.transactions.is_empty()
    }

    /// Whether a live transaction has this role and key.
    pub fn contains(&self, role: Role, key: &TransactionKey) -> bool {
        self.id(role, key).is_some()
    }

    /// Counters for metrics.
    pub fn stats(&self) -> LayerStats {
        self.stats
    }

    /// The configuration.
    pub fn config(&self) -> &LayerConfig {
        &self.config
    }

    /// Entries in the deadline heap, live or stale.
    #[cfg(test)]
    pub(crate) fn heap_len(&self) -> usize {
        self.deadlines.len()
    }

    fn on_request(
        &mut self,
        now: Instant,
        key: TransactionKey,
        method: Method,
        bytes: Bytes,
        reply_to: D,
        reliable: bool,
    ) -> Result<(), TransactionError> {
        if method.for_matching() != *key.method() {
            return Err(TransactionError::MethodMismatch { method });
        }
        if let Some(id) = self.id(Role::Server, &key) {
            self.stats.matched_requests += 1;
            if let Some(slot) = self.transactions.get_mut(&id) {
                match &mut *slot.transaction {
                    Transaction::ServerInvite(machine) => machine.on_request(now, &method, bytes, &mut self.outputs),
                    Transaction::ServerNonInvite(machine) => machine.on_request(&mut self.outputs),
                    Transaction::ClientInvite(_) | Transaction::ClientNonInvite(_) => {}
                }
            }
            self.settle(id);
            return Ok(());
        }
        if method == Method::Ack {
            notify(&mut self.outputs, TransactionUserEvent::Ack { key, bytes });
            return Ok(());
        }
        self.check_capacity()?;
        let timers = self.config.timers;
        let transaction = if method == Method::Invite {
            Transaction::ServerInvite(ServerInvite::start(
                now,
                key.clone(),
                bytes,
                reply_to,
                reliable,
                timers,
                &mut self.outputs,
            ))
        } else {
            Transaction::ServerNonInvite(ServerNonInvite::start(
                key.clone(),
                method,
                bytes,
                reply_to,
                reliable,
                timers,
                &mut self.outputs,
            ))
        };
        self.insert(Role::Server, key, transaction);
        Ok(())
    }

    fn on_response(&mut self, now: Instant, key: &TransactionKey, status: u16, bytes: Bytes) {
        let Some(id) = self.id(Role::Client, key) else {
            self.stats.stray_responses += 1;
            return;
        };
        if let Some(slot) = self.transactions.get_mut(&id) {
            match &mut *slot.transaction {
                Transaction::ClientInvite(machine) => machine.on_response(now, status, bytes, &mut self.outputs),
                Transaction::ClientNonInvite(machine) => machine.on_response(now, status, bytes, &mut self.outputs),
                Transaction::ServerInvite(_) | Transaction::ServerNonInvite(_) => {}
            }
        }
        self.settle(id);
    }

    fn id(&self, role: Role, key: &TransactionKey) -> Option<u64> {
        match role {
            Role::Client => self.clients.get(key).copied(),
            Role::Server => self.servers.get(key).copied(),
        }
    }

    /// The tables' capacities (transactions, client keys, server keys, deadlines).
    #[cfg(test)]
    pub(super) fn capacities(&self) -> [usize; 4] {
        [
            self.transactions.capacity(),
            self.clients.capacity(),
            self.servers.capacity(),
            self.deadlines.capacity(),
        ]
    }

    fn check_capacity(&mut self) -> Result<(), TransactionError> {
        if self.transactions.len() >= self.config.max_transactions {
            self.stats.overloaded += 1;
            return Err(TransactionError::Overloaded);
        }
        Ok(())
    }

    fn insert(&mut self, role: Role, key: TransactionKey, transaction: Transaction<D>) {
        let id = self.next_id;
        self.next_id += 1;
        match role {
            Role::Client => self.clients.insert(key, id),
            Role::Server => self.servers.insert(key, id),
        };
        self.transactions.insert(
            id,
            Slot {
                transaction: Box::new(transaction),
                scheduled: None,
            },
        );
        self.settle(id);
    }

    /// After anything touched transaction `id`: remove it if it terminated, else keep its heap entry current.
    fn settle(&mut self, id: u64) {
        let Some(slot) = self.transactions.get_mut(&id) else {
            return;
        };
        if slot.transaction.is_terminated() {
            if let Some(slot) = self.transactions.remove(&id) {
                let (role, key) = slot.transaction.identity();
                match role {
                    Role::Client => self.clients.remove(key),
                    Role::Server => self.servers.remove(key),
                };
            }
            self.prune_stale_head();
            return;
        }
        let next = slot.transaction.poll_timeout();
        if next != slot.scheduled {
            slot.scheduled = next;
            if let Some(at) = next {
                self.deadlines.push(Reverse((at, id)));
                self.compact_deadlines();
            }
            self.prune_stale_head();
        }
    }

    /// Pops stale entries off the top of the heap, so that [`Self::poll_timeout`] is exact. Every change to a
    /// transaction's deadline goes through `settle`, so the head is always live afterwards.
    fn prune_stale_head(&mut self) {
        while let Some(&Reverse((at, id))) = self.deadlines.peek() {
            let live = self
                .transactions
                .get(&id)
                .is_some_and(|slot| slot.scheduled == Some(at));
            if live {
                return;
            }
            self.deadlines.pop();
        }
    }

    /// Rebuilds the heap from the live deadlines once stale entries outnumber them, so memory stays
    /// proportional to the live transactions.
    fn compact_deadlines(&mut self) {
        if self.deadlines.len() <= 2 * self.transactions.len() + 64 {
            return;
        }
        // From one scan of the table (entries are small, the machines are not touched), into
        // the heap's own allocation, which keeps the capacity it was given at the start.
        let mut entries = std::mem::take(&mut self.deadlines).into_vec();
        entries.clear();
        entries.extend(
            self.transactions
                .iter()
                .filter_map(|(id, slot)| slot.scheduled.map(|at| Reverse((at, *id)))),
        );
        self.deadlines = BinaryHeap::from(entries);
    }
}

impl<D: Clone> Transaction<D> {
    fn identity(&self) -> (Role, &TransactionKey) {
        match self {
            Self::ClientInvite(machine) => (Role::Client, machine.key()),
            Self::ClientNonInvite(machine) => (Role::Client, machine.key()),
            Self::ServerInvite(machine) => (Role::Server, machine.key()),
            Self::ServerNonInvite(machine) => (Role::Server, machine.key()),
        }
    }

    fn is_terminated(&self) -> bool {
        match self {
            Self::ClientInvite(machine) => machine.is_terminated(),
            Self::ClientNonInvite(machine) => machine.is_terminated(),
            Self::ServerInvite(machine) => machine.is_terminated(),
            Self::ServerNonInvite(machine) => machine.is_terminated(),
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        match self {
            Self::ClientInvite(machine) => machine.poll_timeout(),
            Self::ClientNonInvite(machine) => machine.poll_timeout(),
            Self::ServerInvite(machine) => machine.poll_timeout(),
            Self::ServerNonInvite(machine) => machine.poll_timeout(),
        }
    }

    fn handle_timeout(&mut self, now: Instant, out: &mut VecDeque<Output<D>>) {
        match self {
            Self::ClientInvite(machine) => machine.handle_timeout(now, out),
            Self::ClientNonInvite(machine) => machine.handle_timeout(now, out),
            Self::ServerInvite(machine) => machine.handle_timeout(now, out),
            Self::ServerNonInvite(machine) => machine.handle_timeout(now, out),
        }
    }

    fn on_transport_error(&mut self, out: &mut VecDeque<Output<D>>) {
        match self {
            Self::ClientInvite(machine) => machine.on_transport_error(out),
            Self::ClientNonInvite(machine) => machine.on_transport_error(out),
            Self::ServerInvite(machine) => machine.on_transport_error(out),
            Self::ServerNonInvite(machine) => machine.on_transport_error(out),
        }
    }
}
