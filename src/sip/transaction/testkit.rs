//! Deterministic test kit: simulated time, a seeded lossy/duplicating/delaying network, and scripted TUs.
//!
//! Nothing here sleeps or opens a socket. [`Sim`] owns a fake clock that jumps straight to the next thing that
//! can happen — a packet delivery, a layer deadline, a scripted TU action — and drives every node's
//! [`TransactionLayer`] by the drive contract: input, drain outputs (answering `NeedAck`/`NeedTrying`), repeat.
//!
//! The "wire format" is a toy one-line text encoding carrying exactly the facts a parser would extract, so the
//! layer sees opaque bytes just as in production.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{
    CancelMatch, Input, LayerConfig, Method, Output, Role, TimerConfig, TransactionKey, TransactionLayer,
    TransactionUserEvent,
};

/// Milliseconds, for brevity in tests.
pub(crate) fn ms(milliseconds: u64) -> Duration {
    Duration::from_millis(milliseconds)
}

/// An RFC 3261 key with the test client's sent-by.
pub(crate) fn key(branch: &str, method: Method) -> TransactionKey {
    TransactionKey::new(branch, CLIENT_SENT_BY, method).expect("test branches carry the magic cookie")
}

/// Drains `out` and returns the TU events in it.
pub(crate) fn events<D>(out: &mut VecDeque<Output<D>>) -> Vec<TransactionUserEvent> {
    out.drain(..)
        .filter_map(|output| match output {
            Output::ToTransactionUser(event) => Some(event),
            _ => None,
        })
        .collect()
}

/// Drains `out` and returns the bytes of every transmission in it.
pub(crate) fn transmissions<D>(out: &mut VecDeque<Output<D>>) -> Vec<Bytes> {
    out.drain(..)
        .filter_map(|output| match output {
            Output::Transmit { bytes, .. } => Some(bytes),
            _ => None,
        })
        .collect()
}

/// The sent-by of every request the simulated client sends.
pub(crate) const CLIENT_SENT_BY: &str = "client.test:5060";

/// xorshift64: tiny, seeded, good enough to pick losses and delays.
#[derive(Debug, Clone)]
pub(crate) struct XorShift(u64);

impl XorShift {
    pub(crate) fn new(seed: u64) -> Self {
        // Spread small seeds and avoid the all-zero state, which xorshift never leaves.
        Self((seed ^ 0x9E37_79B9_7F4A_7C15).max(1))
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform-ish in `0..bound` (`bound` > 0).
    pub(crate) fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }

    /// True with probability `per_mille`/1000.
    pub(crate) fn chance(&mut self, per_mille: u32) -> bool {
        self.below(1000) < u64::from(per_mille)
    }
}

/// The toy wire format. Requests: `METHOD branch sent-by`; responses: `SIP/2.0 status branch sent-by cseq-method`.
pub(crate) mod wire {
    use super::*;

    /// A decoded message: the facts a parser would hand the layer.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(crate) enum Message {
        Request { key: TransactionKey, method: Method },
        Response { key: TransactionKey, status: u16 },
    }

    pub(crate) fn request(method: &Method, branch: &str) -> Bytes {
        Bytes::from(format!("{method} {branch} {CLIENT_SENT_BY}"))
    }

    pub(crate) fn response(status: u16, key: &TransactionKey) -> Bytes {
        let branch = key.branch().expect("test keys are RFC 3261 keys");
        Bytes::from(format!("SIP/2.0 {status} {branch} {} {}", key.sent_by(), key.method()))
    }

    /// The branch the UAC core uses for its ACK to a 2xx: a new transaction (§13.2.2.4).
    pub(crate) fn success_ack_branch(invite_branch: &str) -> String {
        format!("{invite_branch}.ack")
    }

    pub(crate) fn decode(bytes: &[u8]) -> Message {
        let text = std::str::from_utf8(bytes).expect("toy wire format is text");
        let fields: Vec<&str> = text.split(' ').collect();
        if fields[0] == "SIP/2.0" {
            let status = fields[1].parse().expect("status");
            let key = TransactionKey::new(fields[2], fields[3], Method::from_token(fields[4])).expect("key");
            Message::Response { key, status }
        } else {
            let method = Method::from_token(fields[0]);
            let key = TransactionKey::new(fields[1], fields[2], method.clone()).expect("key");
            Message::Request { key, method }
        }
    }
}

/// Index of a node in the simulation; also the layer's destination type.
pub(crate) type NodeId = usize;

/// How the simulated network mistreats packets.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Network {
    /// Reliable (stream-like) transport: the layer is told so; no loss, no duplication, FIFO per direction.
    pub(crate) reliable: bool,
    /// Probability (‰) a datagram is lost.
    pub(crate) drop_per_mille: u32,
    /// Probability (‰) a datagram is delivered twice.
    pub(crate) duplicate_per_mille: u32,
    /// Each delivery takes between `delay_min` and `delay_max` (each copy drawn independently, so UDP reorders).
    pub(crate) delay_min: Duration,
    pub(crate) delay_max: Duration,
}

impl Network {
    pub(crate) fn perfect_udp() -> Self {
        Self {
            reliable: false,
            drop_per_mille: 0,
            duplicate_per_mille: 0,
            delay_min: ms(10),
            delay_max: ms(10),
        }
    }

    pub(crate) fn perfect_reliable() -> Self {
        Self {
            reliable: true,
            ..Self::perfect_udp()
        }
    }
}

/// How a simulated TU behaves.
#[derive(Debug, Clone)]
pub(crate) struct Script {
    /// Server: a provisional to send after this long (INVITE only).
    pub(crate) provisional: Option<(u16, Duration)>,
    /// Server: the final status, sent after `final_delay`.
    pub(crate) final_status: u16,
    pub(crate) final_delay: Duration,
    /// Server: answer `NeedTrying` with a 100.
    pub(crate) answer_trying: bool,
    /// Server: the final response is never sent (to exercise timeouts and CANCEL).
    pub(crate) never_answer: bool,
    /// Client: this long after the first provisional for an INVITE without a final response, CANCEL it.
    pub(crate) cancel_after: Duration,
}

impl Default for Script {
    fn default() -> Self {
        Self {
            provisional: None,
            final_status: 200,
            final_delay: Duration::ZERO,
            answer_trying: true,
            never_answer: false,
            cancel_after: Duration::from_secs(60),
        }
    }
}

/// Something that happened at a node, with its simulated time (offset from the start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Record {
    Sent { at: Duration, bytes: Bytes },
    Event { at: Duration, event: TransactionUserEvent },
}

/// One simulated SIP element: a layer plus a scripted TU.
pub(crate) struct Node {
    pub(crate) layer: TransactionLayer<NodeId>,
    pub(crate) script: Script,
    pub(crate) log: Vec<Record>,
    /// Server TU: final status sent per server transaction.
    pub(crate) finals_sent: HashMap<TransactionKey, u16>,
    /// Server TU: INVITEs whose 2xx was ACKed (stops the TU's 2xx retransmissions).
    pub(crate) success_acked: HashSet<TransactionKey>,
    /// Client TU: the first final status received per client transaction.
    pub(crate) finals_received: HashMap<TransactionKey, u16>,
    /// Client TU: transactions that timed out.
    pub(crate) timeouts: HashSet<TransactionKey>,
    /// Client TU: INVITEs that have seen a provisional.
    provisional_seen: HashSet<TransactionKey>,
}

impl Node {
    fn new(config: LayerConfig, script: Script) -> Self {
        Self {
            layer: TransactionLayer::new(config),
            script,
            log: Vec::new(),
            finals_sent: HashMap::new(),
            success_acked: HashSet::new(),
            finals_received: HashMap::new(),
            timeouts: HashSet::new(),
            provisional_seen: HashSet::new(),
        }
    }

    /// The TU events recorded at this node.
    pub(crate) fn events(&self) -> impl Iterator<Item = (Duration, &TransactionUserEvent)> {
        self.log.iter().filter_map(|record| match record {
            Record::Event { at, event } => Some((*at, event)),
            Record::Sent { .. } => None,
        })
    }

    /// Offsets at which this node transmitted bytes starting with `prefix`.
    pub(crate) fn sent_times(&self, prefix: &str) -> Vec<Duration> {
        self.log
            .iter()
            .filter_map(|record| match record {
                Record::Sent { at, bytes } if bytes.starts_with(prefix.as_bytes()) => Some(*at),
                _ => None,
            })
            .collect()
    }

    /// How many `NewRequest` events this node's TU saw for `key`.
    pub(crate) fn new_requests(&self, key: &TransactionKey) -> usize {
        self.events()
            .filter(|(_, event)| matches!(event, TransactionUserEvent::NewRequest { key: k, .. } if k == key))
            .count()
    }
}

#[derive(Debug)]
struct Packet {
    at: Instant,
    sequence: u64,
    from: NodeId,
    to: NodeId,
    bytes: Bytes,
}

#[derive(Debug, Clone)]
enum Action {
    /// Server TU sends a response.
    Respond { key: TransactionKey, status: u16 },
    /// Server TU (UAS core) retransmits its 2xx until ACKed (§13.3.1.4).
    RetransmitSuccess {
        key: TransactionKey,
        status: u16,
        interval: Duration,
    },
    /// Client TU gives up on a ringing INVITE.
    Cancel { key: TransactionKey },
}

/// The simulation: nodes, network, clock.
pub(crate) struct Sim {
    pub(crate) start: Instant,
    pub(crate) now: Instant,
    pub(crate) nodes: Vec<Node>,
    network: Network,
    rng: XorShift,
    in_flight: Vec<Packet>,
    sequence: u64,
    /// Last scheduled delivery per direction, to keep reliable transports FIFO.
    last_delivery: HashMap<(NodeId, NodeId), Instant>,
    actions: Vec<(Instant, NodeId, Action)>,
    timers: TimerConfig,
}

/// The simulated client node.
pub(crate) const CLIENT: NodeId = 0;
/// The simulated server node.
pub(crate) const SERVER: NodeId = 1;

impl Sim {
    /// Two nodes, [`CLIENT`] and [`SERVER`], with the same layer config; the server uses `script`.
    pub(crate) fn new(seed: u64, network: Network, config: LayerConfig, script: Script) -> Self {
        let start = Instant::now();
        Self {
            start,
            now: start,
            nodes: vec![Node::new(config, script.clone()), Node::new(config, script)],
            network,
            rng: XorShift::new(seed),
            in_flight: Vec::new(),
            sequence: 0,
            last_delivery: HashMap::new(),
            actions: Vec::new(),
            timers: config.timers,
        }
    }

    /// Simulated time since the start.
    pub(crate) fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// The client TU starts a transaction towards the server.
    pub(crate) fn send_request(&mut self, method: Method, branch: &str) -> TransactionKey {
        let key = key(branch, method.clone());
        let bytes = wire::request(&method, branch);
        let reliable = self.network.reliable;
        self.nodes[CLIENT]
            .layer
            .send_request(self.now, key.clone(), method, bytes, SERVER, reliable)
            .expect("client transaction starts");
        self.drain(CLIENT);
        key
    }

    /// Runs until nothing is in flight, scheduled or timed; panics past `max_steps` (a livelock).
    pub(crate) fn run(&mut self, max_steps: usize) {
        for _ in 0..max_steps {
            let Some(next) = self.next_event() else { return };
            self.now = self.now.max(next);
            self.step();
        }
        panic!("simulation did not settle within {max_steps} steps");
    }

    /// Runs until simulated time reaches `until` (or nothing is left to do).
    pub(crate) fn run_until(&mut self, until: Instant) {
        while let Some(next) = self.next_event() {
            if next > until {
                break;
            }
            self.now = self.now.max(next);
            self.step();
        }
        self.now = self.now.max(until);
    }

    fn next_event(&self) -> Option<Instant> {
        let packets = self.in_flight.iter().map(|packet| packet.at);
        let actions = self.actions.iter().map(|(at, _, _)| *at);
        let timers = self.nodes.iter().filter_map(|node| node.layer.poll_timeout());
        packets.chain(actions).chain(timers).min()
    }

    fn step(&mut self) {
        let now = self.now;
        // Deliveries due, in (time, send order).
        let mut due: Vec<Packet> = Vec::new();
        let mut index = 0;
        while index < self.in_flight.len() {
            if self.in_flight[index].at <= now {
                due.push(self.in_flight.swap_remove(index));
            } else {
                index += 1;
            }
        }
        due.sort_by_key(|packet| (packet.at, packet.sequence));
        for packet in due {
            self.deliver(packet);
        }
        // TU actions due.
        let mut actions = Vec::new();
        let mut index = 0;
        while index < self.actions.len() {
            if self.actions[index].0 <= now {
                actions.push(self.actions.swap_remove(index));
            } else {
                index += 1;
            }
        }
        actions.sort_by_key(|(at, node, _)| (*at, *node));
        for (_, node, action) in actions {
            self.act(node, action);
        }
        // Timers due.
        for node in 0..self.nodes.len() {
            if self.nodes[node].layer.poll_timeout().is_some_and(|at| at <= now) {
                self.nodes[node].layer.handle_timeout(now);
                self.drain(node);
            }
        }
    }

    fn deliver(&mut self, packet: Packet) {
        let reliable = self.network.reliable;
        let node = packet.to;
        match wire::decode(&packet.bytes) {
            wire::Message::Request { key, method } => {
                let input = Input::Request {
                    key: key.clone(),
                    method,
                    bytes: packet.bytes,
                    reply_to: packet.from,
                    reliable,
                };
                if self.nodes[node].layer.handle_input(self.now, input).is_err() {
                    // Overloaded: a stateless 503.
                    self.transmit(node, packet.from, wire::response(503, &key));
                }
            }
            wire::Message::Response { key, status } => {
                let input = Input::Response {
                    key,
                    status,
                    bytes: packet.bytes,
                };
                self.nodes[node]
                    .layer
                    .handle_input(self.now, input)
                    .expect("responses are never refused");
            }
        }
        self.drain(node);
    }

    /// The drive contract: drain until empty, answering requests for messages as they come.
    fn drain(&mut self, node: NodeId) {
        while let Some(output) = self.nodes[node].layer.poll_output() {
            match output {
                Output::Transmit { bytes, destination, .. } => self.transmit(node, destination, bytes),
                Output::NeedAck { key, .. } => {
                    let branch = key.branch().expect("RFC 3261 key").to_owned();
                    let ack = wire::request(&Method::Ack, &branch);
                    self.nodes[node]
                        .layer
                        .send_ack(&key, ack)
                        .expect("NeedAck is answered at once");
                }
                Output::NeedTrying { key, .. } => {
                    if self.nodes[node].script.answer_trying {
                        let trying = wire::response(100, &key);
                        self.nodes[node]
                            .layer
                            .respond(self.now, &key, 100, trying)
                            .expect("Proceeding");
                    }
                }
                Output::ToTransactionUser(event) => {
                    let at = self.elapsed();
                    self.nodes[node].log.push(Record::Event {
                        at,
                        event: event.clone(),
                    });
                    self.on_event(node, event);
                }
            }
        }
    }

    fn transmit(&mut self, from: NodeId, to: NodeId, bytes: Bytes) {
        let at = self.elapsed();
        self.nodes[from].log.push(Record::Sent {
            at,
            bytes: bytes.clone(),
        });
        let network = self.network;
        let copies = if network.reliable {
            1
        } else if self.rng.chance(network.drop_per_mille) {
            0
        } else if self.rng.chance(network.duplicate_per_mille) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let spread = (network.delay_max - network.delay_min).as_millis() as u64;
            let delay = network.delay_min + ms(if spread == 0 { 0 } else { self.rng.below(spread + 1) });
            let mut at = self.now + delay;
            if network.reliable {
                let last = self.last_delivery.entry((from, to)).or_insert(at);
                at = at.max(*last);
                *last = at;
            }
            self.sequence += 1;
            self.in_flight.push(Packet {
                at,
                sequence: self.sequence,
                from,
                to,
                bytes: bytes.clone(),
            });
        }
    }

    fn schedule(&mut self, after: Duration, node: NodeId, action: Action) {
        self.actions.push((self.now + after, node, action));
    }

    /// The scripted TU reacting to an event.
    fn on_event(&mut self, node: NodeId, event: TransactionUserEvent) {
        match event {
            TransactionUserEvent::NewRequest { key, method, .. } => self.on_new_request(node, key, method),
            TransactionUserEvent::Ack { key, .. } => {
                // The ACK for our 2xx: stop retransmitting it.
                let branch = key.branch().unwrap_or_default();
                if let Some(invite_branch) = branch.strip_suffix(".ack") {
                    let invite = TransactionKey::new(invite_branch, key.sent_by(), Method::Invite).expect("key");
                    self.nodes[node].success_acked.insert(invite);
                }
            }
            TransactionUserEvent::Response { key, status, .. } => {
                let tu = &mut self.nodes[node];
                if status >= 200 {
                    tu.finals_received.entry(key.clone()).or_insert(status);
                }
                if *key.method() == Method::Invite {
                    if status < 200 && tu.provisional_seen.insert(key.clone()) {
                        let after = tu.script.cancel_after;
                        self.schedule(after, node, Action::Cancel { key: key.clone() });
                    }
                    if (200..300).contains(&status) {
                        // The UAC core ACKs every 2xx itself, on a new branch, straight to the transport.
                        let branch = wire::success_ack_branch(key.branch().expect("RFC 3261 key"));
                        self.transmit(node, 1 - node, wire::request(&Method::Ack, &branch));
                    }
                }
            }
            TransactionUserEvent::Timeout {
                role: Role::Client,
                key,
            } => {
                self.nodes[node].timeouts.insert(key);
            }
            TransactionUserEvent::Timeout { role: Role::Server, .. }
            | TransactionUserEvent::TransportError { .. }
            | TransactionUserEvent::Terminated { .. } => {}
        }
    }

    fn on_new_request(&mut self, node: NodeId, key: TransactionKey, method: Method) {
        let script = self.nodes[node].script.clone();
        match method {
            Method::Cancel => {
                let (cancel_status, invite) = match self.nodes[node].layer.match_cancel(&key) {
                    CancelMatch::Pending(invite) => (200, Some(invite)),
                    CancelMatch::AlreadyFinal(_) => (200, None),
                    CancelMatch::NoMatch => (481, None),
                };
                self.respond(node, &key, cancel_status);
                if let Some(invite) = invite {
                    self.respond(node, &invite, 487);
                }
            }
            _ => {
                if method == Method::Invite {
                    if let Some((status, delay)) = script.provisional {
                        self.schedule(
                            delay,
                            node,
                            Action::Respond {
                                key: key.clone(),
                                status,
                            },
                        );
                    }
                }
                if !script.never_answer {
                    let status = script.final_status;
                    self.schedule(script.final_delay, node, Action::Respond { key, status });
                }
            }
        }
    }

    fn act(&mut self, node: NodeId, action: Action) {
        match action {
            Action::Respond { key, status } => {
                if self.nodes[node].finals_sent.contains_key(&key) {
                    return; // Already answered (487 after a CANCEL).
                }
                self.respond(node, &key, status);
            }
            Action::RetransmitSuccess { key, status, interval } => {
                if self.nodes[node].success_acked.contains(&key) {
                    return;
                }
                let bytes = wire::response(status, &key);
                // Fails once Timer L ended the transaction: the UAS core gives up too.
                if self.nodes[node].layer.respond(self.now, &key, status, bytes).is_ok() {
                    self.drain(node);
                    let interval = (interval * 2).min(self.timers.t2());
                    self.schedule(interval, node, Action::RetransmitSuccess { key, status, interval });
                }
            }
            Action::Cancel { key } => {
                if self.nodes[node].finals_received.contains_key(&key) {
                    return;
                }
                let cancel = wire::request(&Method::Cancel, key.branch().expect("RFC 3261 key"));
                // WrongState if the final response won the race: nothing to cancel.
                if self.nodes[node].layer.send_cancel(self.now, &key, cancel).is_ok() {
                    self.drain(node);
                }
            }
        }
    }

    fn respond(&mut self, node: NodeId, key: &TransactionKey, status: u16) {
        let bytes = wire::response(status, key);
        if self.nodes[node].layer.respond(self.now, key, status, bytes).is_err() {
            return;
        }
        if status >= 200 {
            self.nodes[node].finals_sent.insert(key.clone(), status);
            if *key.method() == Method::Invite && status < 300 {
                let interval = self.timers.t1();
                let retransmit = Action::RetransmitSuccess {
                    key: key.clone(),
                    status,
                    interval,
                };
                self.schedule(interval, node, retransmit);
            }
        }
        self.drain(node);
    }
}
