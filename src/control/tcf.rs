//! The TCF's SIP application core, sans-IO: registration (terminal side and V-TCF → H-TCF),
//! kick-off, group-location push, expiry, and peer heartbeats, on top of the RFC 3261
//! transaction layer.
//!
//! Drive contract: feed every received datagram to [`Tcf::handle_datagram`] and call
//! [`Tcf::handle_timeout`] once [`Tcf::poll_timeout`] has passed; after each call drain
//! [`Tcf::poll_output`] until it returns `None` (datagrams to send, durable-state writes,
//! events). Nothing here reads the clock or touches a socket or a file.
//!
//! Wire formats of everything sent here: `docs/protocol.md`.

use crate::proto::NetMap;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::config::{CallsConfig, GroupsConfig, SipConfig};
use crate::control::media::{MediaPlane, NoMedia};
use crate::control::provisioning::{AnswerMode, Network, Subscribers};
use crate::proto::Number;
use crate::sip::digest::{self, Verdict, Verifier, VerifierConfig};
use crate::sip::transaction::{
    LayerConfig, Method as TxMethod, Output as TxOutput, TimerConfig, TimerConfigError, TransactionKey,
    TransactionLayer, TransactionUserEvent,
};
use crate::sip::{ErrorAction, FirstContact, HeaderName, Message, MessageBuilder, Method};

/// Settings of the SIP core: the node's `[sip]` section plus what the node derives for it.
#[derive(Debug, Clone)]
pub struct TcfConfig {
    /// This node's name (its entry in the network).
    pub name: String,
    /// The `[sip]` settings (realm, expiry bounds, heartbeats, digest, limits).
    pub sip: SipConfig,
    /// T1/T2/T4, from `sip`.
    pub timers: TimerConfig,
    /// Key for stateless nonces (keep it across restarts).
    pub nonce_key: [u8; 32],
    /// The `[calls]` settings.
    pub calls: CallsConfig,
    /// The `[groups]` settings.
    pub groups: GroupsConfig,
}

impl TcfConfig {
    /// The core's settings for node `name`.
    pub fn new(name: &str, sip: SipConfig, nonce_key: [u8; 32]) -> Result<TcfConfig, TimerConfigError> {
        let timers = TimerConfig::new(sip.t1, sip.t2, sip.t4)?;
        Ok(TcfConfig {
            name: name.to_owned(),
            sip,
            timers,
            nonce_key,
            calls: CallsConfig::default(),
            groups: GroupsConfig::default(),
        })
    }
}

/// The time of an input: monotonic for timers, wall clock for expiry and nonces.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    /// Monotonic time.
    pub instant: Instant,
    /// Wall-clock time.
    pub wall: SystemTime,
}

impl Now {
    fn unix(&self) -> u64 {
        self.wall
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs())
    }
}

/// A terminal's registration at the TCF serving it (the V-TCF view): where to reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    /// The user.
    pub user: Number,
    /// Its Contact URI.
    pub contact: String,
    /// Where its REGISTER came from (requests to it go there: NAT-safe).
    pub address: SocketAddr,
    /// Unix time the binding expires.
    pub expires_at: u64,
}

/// A user's registration at its home TCF (the H-TCF view): which TCF serves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// The user.
    pub user: Number,
    /// Name of the serving TCF.
    pub serving: String,
    /// Unix time it expires.
    pub expires_at: u64,
}

/// A group member's serving TCF as pushed to the group home (F-REG-07).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    /// The user.
    pub user: Number,
    /// Name of the serving TCF.
    pub serving: String,
    /// Unix time it expires.
    pub expires_at: u64,
}

/// A durable-state write the driver applies to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreWrite {
    /// Save a binding.
    PutBinding(Binding),
    /// Delete a binding.
    RemoveBinding(Number),
    /// Save a home registration.
    PutRegistration(Registration),
    /// Delete a home registration.
    RemoveRegistration(Number),
    /// Save a group location.
    PutLocation(Location),
    /// Delete a group location.
    RemoveLocation(Number),
    /// Save a group's regrouping overlay (F-RGP-02).
    PutRegroup(regroup::Regroup),
    /// Delete a group's regrouping overlay.
    RemoveRegroup(Number),
    /// Save a user's stun/kill state (F-SKR).
    PutSkrState(SkrRecord),
    /// Delete a user's stun/kill state (revived: active).
    RemoveSkrState(Number),
    /// Save a monitoring relation (F-MON-01, F-MON-02).
    PutMonitor(MonitorRecord),
    /// Delete a monitoring relation.
    RemoveMonitor(MonitorKey),
}

/// Something that happened, for logs, metrics and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TcfEvent {
    /// A terminal registered here (this node serves it).
    Bound {
        /// The user.
        user: Number,
        /// Seconds granted.
        expires: u32,
    },
    /// A terminal's binding here ended.
    Unbound {
        /// The user.
        user: Number,
        /// Why.
        reason: &'static str,
    },
    /// The home registration of a user changed (this node is its home).
    HomeRegistered {
        /// The user.
        user: Number,
        /// Its serving TCF.
        serving: String,
    },
    /// The home registration of a user ended.
    HomeDeregistered {
        /// The user.
        user: Number,
        /// Why.
        reason: &'static str,
    },
    /// This node (group home) learned a member's serving TCF.
    LocationUpdated {
        /// The user.
        user: Number,
        /// Its serving TCF (`None`: withdrawn).
        serving: Option<String>,
    },
    /// A peer TCF answered a TC2 REGISTER with a digest challenge.
    ChallengedByPeer {
        /// The peer.
        peer: String,
    },
    /// A peer's heartbeat state changed.
    PeerState {
        /// The peer.
        peer: String,
        /// Up or down.
        up: bool,
    },
    /// A call through this node was answered.
    CallAnswered {
        /// The caller.
        caller: Number,
        /// Who answered (the forward target after forwarding).
        callee: Number,
    },
    /// A call through this node was forwarded (F-SC-09).
    CallForwarded {
        /// The dialed user.
        callee: Number,
        /// The forward target.
        to: Number,
    },
    /// A call through this node ended (answered or not).
    CallEnded {
        /// The caller.
        caller: Number,
        /// The dialed user.
        callee: Number,
        /// Why.
        reason: String,
    },
    /// A group call started at this node (its home).
    GroupCallStarted {
        /// The group.
        group: Number,
        /// Who set it up.
        initiator: Number,
    },
    /// A member or DC served here joined a group call.
    GroupMemberJoined {
        /// The group.
        group: Number,
        /// The member.
        user: Number,
    },
    /// The floor of a group call changed (at its home): the new talker or idle.
    FloorChanged {
        /// The group.
        group: Number,
        /// The holder, `None` when idle.
        talker: Option<Number>,
    },
    /// The home took the floor away from its holder (F-FLR-06).
    FloorRevoked {
        /// The group.
        group: Number,
        /// The former holder.
        user: Number,
        /// Why (`maxtalktime`, `inactivity`, `preempted`, `insertion`, `ordered`).
        reason: String,
    },
    /// A group call ended at this node (home or member TCF).
    GroupCallEnded {
        /// The group.
        group: Number,
        /// Why.
        reason: String,
    },
    /// Regrouping changed a group's membership as this node sees it (F-RGP-01, F-RGP-02).
    Regrouped {
        /// The group.
        group: Number,
        /// The users concerned.
        users: Vec<Number>,
        /// `add`, `remove` or `cancel`.
        action: String,
    },
    /// A regrouping result passed back through this node (F-RGP-03).
    RegroupReported {
        /// The group.
        group: Number,
        /// The user whose result it is.
        user: Number,
        /// `DGNAresult`: 0 done, else a cause.
        result: String,
    },
    /// A user's stun/kill state changed at this node (its home, or the TCF serving it).
    SkrStateChanged {
        /// The user.
        user: Number,
        /// The new state.
        state: SkrState,
    },
    /// This node answered a video forwarding order (F-VID-02): as the forwarding node (the
    /// DC's serving TCF) or as the destination's home.
    VideoForward {
        /// The ordering DC.
        dc: Number,
        /// The destination user or group.
        destination: Number,
        /// `start` or `stop`.
        action: String,
        /// The final status answered.
        status: u16,
    },
    /// A terminal's stun/kill/revive result report passed this node on its way to the DC.
    SkrReported {
        /// The user that reported.
        user: Number,
        /// Its result (0: done).
        result: u16,
    },
    /// A DC started or stopped monitoring a group or user, as recorded at this node (F-MON-01,
    /// F-MON-02).
    MonitorChanged {
        /// Who monitors what.
        key: MonitorKey,
        /// Whether it monitors now.
        monitoring: bool,
    },
    /// This node answered a short-data MESSAGE (F-SDS-01): `status` went back to whoever sent
    /// it here (the group home answers a multicast message once it has accepted it).
    ShortData {
        /// The sender.
        sender: Number,
        /// The destination user or group.
        destination: Number,
        /// The final status answered.
        status: u16,
    },
    /// The group home learned the outcome of one recipient's copy of a multicast short message.
    ShortDataToMember {
        /// The group.
        group: Number,
        /// The recipient (member or dispatcher).
        member: Number,
        /// Its final status (`408`: no answer, `503`: its TCF is down).
        status: u16,
    },
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send a datagram.
    Transmit {
        /// Destination.
        destination: SocketAddr,
        /// The message.
        bytes: Bytes,
    },
    /// Apply a durable-state write.
    Store(StoreWrite),
    /// Report an event.
    Event(TcfEvent),
}

/// Counters of the SIP core.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SipCounters {
    /// Datagrams that were not SIP or not answerable (dropped).
    pub dropped: u64,
    /// Malformed requests answered with an error (400/505/513).
    pub rejected: u64,
    /// Requests received (new transactions).
    pub requests: u64,
    /// Responses received.
    pub responses: u64,
}

/// A snapshot of the SIP core (control path).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SipStats {
    /// Counters since start.
    pub counters: SipCounters,
    /// Terminals served here.
    pub bindings: usize,
    /// Users whose home registration is here.
    pub registrations: usize,
    /// Group member locations known here.
    pub locations: usize,
    /// Live SIP transactions.
    pub transactions: usize,
    /// Calls alive on this node.
    pub calls: usize,
    /// Group calls alive on this node (as home or member TCF).
    pub group_calls: usize,
    /// Calls answered since start.
    pub calls_answered: u64,
    /// Calls ended since start.
    pub calls_ended: u64,
    /// Peer TCFs and whether they are up (`None`: not yet known).
    pub peers: Vec<(String, Option<bool>)>,
}

#[derive(Debug)]
struct Peer {
    name: String,
    address: SocketAddr,
    up: Option<bool>,
    failures: u32,
    outstanding: Option<TransactionKey>,
    next_at: Instant,
}

/// A terminal's REGISTER relayed by this V-TCF to the user's H-TCF (one client transaction,
/// or two when the H-TCF challenges).
#[derive(Debug)]
struct Relay {
    /// The terminal's server transaction, answered when the H-TCF has answered.
    server: TransactionKey,
    /// The terminal's REGISTER.
    request: Message,
    /// Where the terminal's REGISTER came from (for the response's Via).
    source: SocketAddr,
    user: Number,
    home: String,
    expires: u32,
    /// The binding to record on success (none when deregistering).
    binding: Option<Binding>,
    call_id: String,
    from_tag: String,
    cseq: u32,
    /// The H-TCF's challenge was answered already (answer it only once).
    challenged: bool,
}

#[derive(Debug)]
enum Pending {
    /// A REGISTER relayed to the user's home on behalf of a terminal.
    Relay(Box<Relay>),
    /// A heartbeat.
    Heartbeat { peer: String },
    /// A request whose answer changes nothing (kick-off, location push).
    FireAndForget,
    /// A regrouping order or report (F-RGP-01 … F-RGP-03).
    Regroup(Box<regroup::Sent>),
    /// A DC's stun/kill/revive order relayed to the user's home (F-SKR-01).
    Skr(Box<skr::Relay>),
    /// A short-data MESSAGE sent on (F-SDS-01).
    ShortData(Box<short_data::Forward>),
    /// A SUBSCRIBE or NOTIFY of a DC subscription (F-SUB-01/02).
    Subscription(Box<subscription::Sent>),
    /// A DC's video forwarding order relayed to the destination's home (F-VID-02).
    VideoForward(Box<video::ForwardRelay>),
    /// A monitoring order relayed downstream (F-MON-01, F-MON-02).
    Monitor(Box<monitor::Relay>),
}

/// The SIP application core of one TCF node.
pub struct Tcf {
    config: TcfConfig,
    network: Arc<Network>,
    subscribers: Arc<Subscribers>,
    address: SocketAddr,
    /// `address` as text (`host:port`), written into every request we send.
    address_text: String,
    requires_peer_auth: bool,
    secret: String,
    layer: TransactionLayer<SocketAddr>,
    verifier: Verifier,
    peer_verifier: Verifier,
    rng: StdRng,
    bindings: NetMap<Number, Binding>,
    registrations: NetMap<Number, Registration>,
    locations: NetMap<Number, Location>,
    peers: Vec<Peer>,
    pending: NetMap<TransactionKey, Pending>,
    incoming: Option<Message>,
    /// Source address of the datagram being handled (requests are dispatched synchronously
    /// within `handle_datagram`).
    current_source: Option<SocketAddr>,
    /// Whether the message being handled came over a stream (TCP).
    current_reliable: bool,
    /// Set while a request is answered statelessly (no server transaction): where to.
    stateless_to: Option<SocketAddr>,
    outputs: VecDeque<Output>,
    next_housekeeping: Instant,
    next_expiry: Instant,
    counters: SipCounters,
    calls: call::Calls,
    groups: group::Groups,
    regroups: regroup::Regroups,
    skr: skr::Skr,
    /// Running video forwardings (F-VID-02).
    video_forwards: video::Forwards,
    monitors: monitor::Monitors,
    short_data: ShortDataCounters,
    subscriptions: subscription::Subscriptions,
    malformed_log: LogLimiter,
    media: Box<dyn MediaPlane>,
}

impl std::fmt::Debug for Tcf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tcf")
            .field("name", &self.config.name)
            .field("address", &self.address)
            .finish()
    }
}

/// Why the core could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TcfError {
    /// `node.name` is not in the network.
    #[error("node `{0}` is not in the provisioned network")]
    NotInNetwork(String),
}

const SERVER: &str = "floorcast";

/// Lets one log line through per interval and counts the ones held back (hostile input is
/// logged, but a flood of it cannot flood the log).
#[derive(Debug, Default)]
struct LogLimiter {
    next: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    const INTERVAL: Duration = Duration::from_secs(10);

    /// `Some(lines held back since the last one)` when a line may be logged now.
    fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.next {
            Some(next) if now < next => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.next = Some(now + Self::INTERVAL);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

mod ambient;
mod call;
mod group;
mod monitor;
mod regroup;
mod resend;
mod skr;
mod video;

pub use skr::{SkrOrder, SkrRecord, SkrState};
mod short_data;

pub use short_data::{ShortDataCounters, MAX_SHORT_DATA};
mod subscription;

pub use subscription::{Package, MAX_SUBSCRIPTIONS, MAX_SUBSCRIPTIONS_PER_DISPATCHER};

pub use monitor::{MonitorKey, MonitorKind, MonitorRecord};
pub use regroup::Regroup;

impl Tcf {
    /// A core for node `config.name` of `network`.
    pub fn new(
        config: TcfConfig,
        network: Arc<Network>,
        subscribers: Arc<Subscribers>,
        now: Now,
        seed: u64,
    ) -> Result<Tcf, TcfError> {
        let me = network
            .tcf(&config.name)
            .ok_or_else(|| TcfError::NotInNetwork(config.name.clone()))?;
        let address = me.sip;
        let requires_peer_auth = me.auth;
        let secret = me.secret.clone();
        let peers = network
            .tcfs()
            .iter()
            .filter(|tcf| tcf.name != config.name)
            .map(|tcf| Peer {
                name: tcf.name.clone(),
                address: tcf.sip,
                up: None,
                failures: 0,
                outstanding: None,
                next_at: now.instant,
            })
            .collect();
        let mut verifier_config = VerifierConfig::new(&config.sip.realm);
        verifier_config.nonce_lifetime = config.sip.nonce_lifetime;
        verifier_config.algorithms = config.sip.digest_algorithms.clone();
        let verifier = Verifier::new(verifier_config, config.nonce_key);
        let mut peer_config = VerifierConfig::new(&config.name);
        peer_config.nonce_lifetime = config.sip.nonce_lifetime;
        peer_config.algorithms = config.sip.digest_algorithms.clone();
        let peer_verifier = Verifier::new(peer_config, config.nonce_key);
        let layer = TransactionLayer::new(LayerConfig {
            timers: config.timers,
            max_transactions: config.sip.max_transactions,
        });
        Ok(Tcf {
            config,
            network,
            subscribers,
            address,
            address_text: address.to_string(),
            requires_peer_auth,
            secret,
            layer,
            verifier,
            peer_verifier,
            rng: StdRng::seed_from_u64(seed),
            bindings: NetMap::default(),
            registrations: NetMap::default(),
            locations: NetMap::default(),
            peers,
            pending: NetMap::default(),
            incoming: None,
            current_source: None,
            current_reliable: false,
            stateless_to: None,
            outputs: VecDeque::new(),
            next_housekeeping: now.instant,
            next_expiry: now.instant,
            counters: SipCounters::default(),
            calls: call::Calls::default(),
            groups: group::Groups::default(),
            regroups: regroup::Regroups::default(),
            skr: skr::Skr::default(),
            video_forwards: video::Forwards::default(),
            monitors: monitor::Monitors::default(),
            short_data: ShortDataCounters::default(),
            subscriptions: subscription::Subscriptions::default(),
            malformed_log: LogLimiter::default(),
            media: Box::new(NoMedia),
        })
    }

    /// Gives the core its user plane (without one, calls that need media get 503).
    pub fn set_media(&mut self, media: Box<dyn MediaPlane>) {
        self.media = media;
    }

    /// Lets the user plane carry out what it deferred ([`MediaPlane::flush`]). The driver
    /// calls it after sending the datagrams [`Self::poll_output`] gave.
    pub fn flush_media(&mut self) {
        self.media.flush();
    }

    /// This node's SIP address.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Restores durable state after a restart; entries already expired are dropped (and their
    /// removal written back).
    pub fn restore(
        &mut self,
        bindings: Vec<Binding>,
        registrations: Vec<Registration>,
        locations: Vec<Location>,
        now: Now,
    ) {
        let unix = now.unix();
        let outputs = &mut self.outputs;
        restore_live(
            &mut self.bindings,
            bindings,
            unix,
            outputs,
            |b| (&b.user, b.expires_at),
            StoreWrite::RemoveBinding,
        );
        restore_live(
            &mut self.registrations,
            registrations,
            unix,
            outputs,
            |r| (&r.user, r.expires_at),
            StoreWrite::RemoveRegistration,
        );
        restore_live(
            &mut self.locations,
            locations,
            unix,
            outputs,
            |l| (&l.user, l.expires_at),
            StoreWrite::RemoveLocation,
        );
    }

    /// A terminal's binding here.
    pub fn binding(&self, user: &Number) -> Option<&Binding> {
        self.bindings.get(user)
    }

    /// A user's home registration here.
    pub fn registration(&self, user: &Number) -> Option<&Registration> {
        self.registrations.get(user)
    }

    /// A group member's location known here (group home).
    pub fn location(&self, user: &Number) -> Option<&Location> {
        self.locations.get(user)
    }

    /// Whether a peer is up (`None`: no heartbeat answered yet).
    pub fn peer_up(&self, name: &str) -> Option<bool> {
        self.peers
            .iter()
            .find(|peer| peer.name == name)
            .and_then(|peer| peer.up)
    }

    /// Counters.
    pub fn counters(&self) -> SipCounters {
        self.counters
    }

    /// A snapshot for metrics.
    pub fn stats(&self) -> SipStats {
        SipStats {
            counters: self.counters,
            bindings: self.bindings.len(),
            registrations: self.registrations.len(),
            locations: self.locations.len(),
            transactions: self.layer.len(),
            calls: self.calls.len(),
            group_calls: self.groups.len(),
            calls_answered: self.calls.answered_total,
            calls_ended: self.calls.ended_total,
            peers: self.peers.iter().map(|peer| (peer.name.clone(), peer.up)).collect(),
        }
    }

    /// The next output, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When to call [`Tcf::handle_timeout`] next.
    #[must_use]
    pub fn poll_timeout(&self) -> Instant {
        let mut deadline = self.next_housekeeping;
        if let Some(at) = self.layer.poll_timeout() {
            deadline = deadline.min(at);
        }
        if let Some(at) = self.calls.next_deadline() {
            deadline = deadline.min(at);
        }
        if let Some(at) = self.groups.next_deadline() {
            deadline = deadline.min(at);
        }
        if let Some(at) = self.subscriptions.next_deadline() {
            deadline = deadline.min(at);
        }
        deadline
    }

    /// Runs due timers: transactions, heartbeats, expiry.
    pub fn handle_timeout(&mut self, now: Now) {
        self.layer.handle_timeout(now.instant);
        self.drain_layer(now);
        self.call_timers(now);
        self.group_timers(now);
        self.subscription_timers(now);
        self.subscriptions_changed(now);
        self.drain_layer(now);
        if now.instant >= self.next_housekeeping {
            // Heartbeats are checked every 100 ms (each peer has its own due time); expiry,
            // which walks every binding and registration, once a second (expiry is in whole
            // seconds anyway).
            self.next_housekeeping = now.instant + Duration::from_millis(100);
            self.heartbeats(now);
            self.short_data_peers_down(now);
            if now.instant >= self.next_expiry {
                self.next_expiry = now.instant + Duration::from_secs(1);
                self.expire(now);
            }
        }
        self.drain_layer(now);
    }

    /// Handles one received datagram.
    pub fn handle_datagram(&mut self, now: Now, from: SocketAddr, datagram: Bytes) {
        if datagram.len() > self.config.sip.max_message_size {
            // RFC 3261 §18.1.1/§21.5.14: 513 when the message can be addressed, else dropped.
            // The driver may pass only the first bytes of an oversize datagram: answer from its
            // complete lines, whether or not the header block ends among them.
            let complete = memchr::memrchr(b'\n', &datagram).map_or(0, |end| end + 1);
            let request = match Message::parse_datagram_unvalidated(datagram.slice(..complete)) {
                Ok(message) => Some(message),
                Err(rejection) => rejection.message().cloned(),
            };
            match request {
                Some(request) if request.is_request() && request.can_address_response() => {
                    self.counters.rejected += 1;
                    self.stateless(&request, from, 513, "Message Too Large");
                }
                _ => self.counters.dropped += 1,
            }
            return;
        }
        if datagram.iter().all(|byte| matches!(byte, b'\r' | b'\n')) {
            return; // keep-alive
        }
        match Message::parse_datagram(datagram) {
            Ok(message) => self.handle_message(now, from, message, false),
            Err(rejection) => self.handle_rejection(now, from, &rejection),
        }
    }

    /// Handles one message framed from a stream connection (TCP: `reliable`, no
    /// retransmissions) or a datagram.
    pub fn handle_message(&mut self, now: Now, from: SocketAddr, message: Message, reliable: bool) {
        self.current_source = Some(from);
        self.current_reliable = reliable;
        if message.is_request() {
            self.handle_request(now, from, message, reliable);
        } else {
            self.handle_response(now, message);
        }
        self.drain_layer(now);
        // Not handed back by the layer (a retransmission it absorbed, a stray response).
        self.incoming = None;
        self.group_changes(now);
        self.regroup_arrivals(now);
        self.subscriptions_changed(now);
        self.drain_layer(now);
        self.current_source = None;
    }

    /// Handles a message that failed to parse or validate: `400`/`505` when it can be
    /// addressed (RFC 3261 §8.2 / RFC 4475), else dropped and counted.
    pub fn handle_rejection(&mut self, now: Now, from: SocketAddr, rejection: &crate::sip::Rejection) {
        if let Some(suppressed) = self.malformed_log.allow(now.instant) {
            tracing::warn!(
                %from,
                error = ?rejection.error(),
                suppressed,
                "malformed SIP message (logged at most every 10 s; `suppressed` more since the last line)"
            );
        }
        match rejection.action() {
            ErrorAction::Respond { .. } => {
                let tag = self.token();
                if let (Some(response), Some(request)) = (rejection.response(&tag), rejection.message()) {
                    let destination = response_destination_of(request, from);
                    self.counters.rejected += 1;
                    self.outputs.push_back(Output::Transmit {
                        destination,
                        bytes: response.to_bytes(),
                    });
                } else {
                    self.counters.dropped += 1;
                }
            }
            ErrorAction::Drop => self.counters.dropped += 1,
        }
    }

    fn handle_request(&mut self, now: Now, from: SocketAddr, message: Message, reliable: bool) {
        // The top Via is parsed once here for the transaction key and the response address.
        let Ok(via) = message.top_via() else {
            self.counters.dropped += 1;
            return;
        };
        let Some(key) = transaction_key(&message, &via) else {
            self.counters.dropped += 1;
            return;
        };
        let destination = response_destination(&via, from);
        let Some(request_method) = message.method() else { return };
        let is_ack = request_method == Method::Ack;
        // RFC 3261 §8.2.2/§16.3: Max-Forwards 0 and loops are refused before anything else.
        if message.max_forwards().ok().flatten() == Some(0) && !is_ack {
            self.stateless(&message, from, 483, "Too Many Hops");
            return;
        }
        // Only a request with more than one Via can have looped through us.
        let several_vias = message.values_of(HeaderName::Via).take(2).count() > 1
            || message
                .first_value(HeaderName::Via)
                .is_some_and(|value| value.contains(&b','));
        let looped = several_vias
            && message.vias().skip(1).flatten().any(|via| {
                via.host().ip() == Some(self.address.ip()) && via.port().unwrap_or(5060) == self.address.port()
            });
        if looped && !is_ack {
            self.stateless(&message, from, 482, "Loop Detected");
            return;
        }
        // A REGISTER without credentials from a terminal can only get a final error or a
        // challenge: answer it statelessly (a retransmission just gets a fresh challenge), so
        // half of every authenticated registration holds no transaction for 64·T1.
        let unauthenticated_register = request_method == Method::Register
            && message.first_value(HeaderName::Authorization).is_none()
            && self.network.tcf_at(from).is_none();
        if unauthenticated_register {
            self.counters.requests += 1;
            self.stateless_to = Some(destination);
            self.dispatch(now, key, message);
            self.stateless_to = None;
            return;
        }
        let method = TxMethod::from_token(request_method.as_str());
        let bytes = message.to_bytes();
        // Kept for the transaction user, so the request is not parsed twice.
        self.incoming = Some(message);
        let input = crate::sip::transaction::Input::Request {
            key,
            method,
            bytes,
            reply_to: destination,
            reliable,
        };
        if self.layer.handle_input(now.instant, input).is_err() {
            // Overloaded (or a caller bug): answer statelessly.
            if let Some(message) = self.incoming.take() {
                self.stateless(&message, from, 503, "Service Unavailable");
            }
        }
    }

    fn handle_response(&mut self, now: Now, message: Message) {
        self.counters.responses += 1;
        let Ok(via) = message.top_via() else { return };
        let Some(key) = transaction_key(&message, &via) else {
            return;
        };
        let Some(status) = message.status() else { return };
        let input = crate::sip::transaction::Input::Response {
            key,
            status,
            bytes: message.to_bytes(),
        };
        // Kept for the transaction user, so the response is not parsed twice.
        self.incoming = Some(message);
        let _ = self.layer.handle_input(now.instant, input);
    }

    fn stateless(&mut self, request: &Message, from: SocketAddr, status: u16, reason: &str) {
        if request.method() == Some(Method::Ack) {
            return;
        }
        let tag = self.token();
        if let Ok(builder) = crate::sip::response_to(request, status, reason, Some(&tag)) {
            if let Ok(response) = builder.build() {
                let destination = response_destination_of(request, from);
                self.outputs.push_back(Output::Transmit {
                    destination,
                    bytes: response.to_bytes(),
                });
            }
        }
    }

    /// Moves the transaction layer's outputs into ours, handling TU events.
    fn drain_layer(&mut self, now: Now) {
        while let Some(output) = self.layer.poll_output() {
            match output {
                TxOutput::Transmit { bytes, destination, .. } => {
                    self.outputs.push_back(Output::Transmit { destination, bytes })
                }
                TxOutput::NeedAck { key, request, response } => {
                    if let Some(ack) = call::ack_for_failure(&request, &response) {
                        let _ = self.layer.send_ack(&key, ack);
                    }
                }
                TxOutput::NeedTrying { key, request } => {
                    if let Ok(request) = Message::parse_datagram(request) {
                        if let Ok(trying) = crate::sip::response_to(&request, 100, "Trying", None)
                            .and_then(|builder| builder.build_bytes())
                        {
                            let _ = self.layer.respond(now.instant, &key, 100, trying);
                        }
                    }
                }
                TxOutput::ToTransactionUser(event) => self.transaction_user(now, event),
            }
        }
    }

    fn transaction_user(&mut self, now: Now, event: TransactionUserEvent) {
        match event {
            TransactionUserEvent::NewRequest { key, bytes, .. } => {
                self.counters.requests += 1;
                let Some(message) = self.received(bytes) else { return };
                self.dispatch(now, key, message);
            }
            TransactionUserEvent::Response { key, status, bytes } if self.calls.owns(&key) => {
                let response = self.received(bytes);
                self.call_response(now, key, status, response);
            }
            TransactionUserEvent::Timeout { key, .. } | TransactionUserEvent::TransportError { key, .. }
                if self.calls.owns(&key) =>
            {
                self.call_response(now, key, 408, None);
            }
            TransactionUserEvent::Response { key, status, bytes } if self.groups.owns(&key) => {
                let response = self.received(bytes);
                self.group_response(now, key, status, response);
            }
            TransactionUserEvent::Timeout { key, .. } | TransactionUserEvent::TransportError { key, .. }
                if self.groups.owns(&key) =>
            {
                self.group_response(now, key, 408, None);
            }
            TransactionUserEvent::Response { key, status, bytes } if self.monitors.owns(&key) => {
                let response = self.received(bytes);
                self.tap_response(now, key, status, response);
            }
            TransactionUserEvent::Timeout { key, .. } | TransactionUserEvent::TransportError { key, .. }
                if self.monitors.owns(&key) =>
            {
                self.tap_response(now, key, 408, None);
            }
            TransactionUserEvent::Terminated { key, .. } => {
                self.call_transaction_ended(&key);
                self.group_transaction_ended(&key);
                self.monitors.transaction_ended(&key);
            }
            TransactionUserEvent::Ack { bytes, .. } => {
                if let Some(ack) = self.received(bytes) {
                    self.ack(now, &ack);
                }
            }
            TransactionUserEvent::Response { key, status, bytes } => {
                if status < 200 {
                    return;
                }
                if let Some(pending) = self.pending.remove(&key) {
                    let response = self.received(bytes);
                    self.completed(now, pending, status, response);
                }
            }
            TransactionUserEvent::Timeout { key, .. } | TransactionUserEvent::TransportError { key, .. } => {
                if let Some(pending) = self.pending.remove(&key) {
                    self.completed(now, pending, 408, None);
                }
            }
        }
    }

    /// The message the transaction layer handed back as `bytes`: the one being handled (parsed
    /// once, in `handle_datagram`), or parsed here when it is another (a timer's doing).
    fn received(&mut self, bytes: Bytes) -> Option<Message> {
        match self.incoming.take() {
            // The layer hands back the buffer it was given: the same pointer says so without
            // comparing the bytes.
            Some(message)
                if (message.as_bytes().as_ptr() == bytes.as_ptr() && message.as_bytes().len() == bytes.len())
                    || message.as_bytes() == &bytes[..] =>
            {
                Some(message)
            }
            other => {
                self.incoming = other;
                Message::parse_datagram(bytes).ok()
            }
        }
    }

    fn dispatch(&mut self, now: Now, key: TransactionKey, request: Message) {
        let Some(method) = request.method() else { return };
        let from = self.current_source;
        // RFC 3261 §8.2.2 header inspection, after method inspection (unknown methods get their
        // 501 below); never for ACK, and CANCEL must not carry Require.
        if !matches!(method, Method::Ack | Method::Cancel | Method::Extension(_)) {
            // §8.2.2.1: a Request-URI scheme the node does not serve (RFC 4475 unkscm, novelsc).
            if request.request_uri_is_sip() == Some(false) && request.request_uri().is_some_and(|uri| uri.is_ok()) {
                self.respond(now, &key, &request, 416, "Unsupported URI Scheme", &[]);
                return;
            }
            // §8.2.2.3: the node supports no option tag, so any Require is refused, naming the
            // tags in Unsupported (RFC 4475 bext01).
            let required: Vec<String> = request
                .list_values(HeaderName::Require)
                .map(|tag| String::from_utf8_lossy(tag).into_owned())
                .collect();
            if !required.is_empty() {
                let unsupported = required.join(", ");
                self.respond(
                    now,
                    &key,
                    &request,
                    420,
                    "Bad Extension",
                    &[("Unsupported", &unsupported)],
                );
                return;
            }
        }
        let in_dialog = !matches!(method, Method::Register | Method::Ack | Method::Cancel)
            && request.to_tag().ok().flatten().is_some();
        if in_dialog {
            let unmatched = self
                .in_dialog(now, key.clone(), request)
                .and_then(|request| self.group_in_dialog(now, key.clone(), request))
                .and_then(|request| self.subscription_in_dialog(now, key.clone(), request))
                .and_then(|request| self.tap_in_dialog(now, key.clone(), request));
            if let Some(unmatched) = unmatched {
                self.respond(now, &key, &unmatched, 481, "Call/Transaction Does Not Exist", &[]);
            }
            return;
        }
        match method {
            Method::Register => self.register(now, key, request),
            Method::Options => self.options(now, key, request, from),
            Method::Message => self.message(now, key, request),
            Method::Subscribe => self.subscribe(now, key, request),
            // RFC 6665 §4.1.3: a NOTIFY that matches no subscription.
            Method::Notify => self.respond(now, &key, &request, 481, "Subscription Does Not Exist", &[]),
            Method::Cancel => self.cancel(now, key, request),
            Method::Ack => {}
            Method::Invite => {
                let reliable = self.current_reliable;
                self.invite(now, key, request, reliable);
            }
            _ => self.respond(now, &key, &request, 501, "Not Implemented", &[("Allow", ALLOW)]),
        }
    }

    // ---- responses and requests -------------------------------------------------------------

    fn token(&mut self) -> String {
        let mut token = String::with_capacity(16);
        self.push_token(&mut token);
        token
    }

    /// Appends a fresh random token: the same text as `format!("{value:016x}")` of a random
    /// `u64`, without the formatting machinery.
    fn push_token(&mut self, out: &mut String) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let value = self.rng.random::<u64>();
        out.extend(
            (0..16)
                .rev()
                .map(|digit| char::from(HEX[((value >> (digit * 4)) & 0xf) as usize])),
        );
    }

    /// A fresh RFC 3261 branch: the magic cookie and a random token.
    fn branch(&mut self) -> String {
        let mut branch = String::with_capacity(23);
        branch.push_str("z9hG4bK");
        self.push_token(&mut branch);
        branch
    }

    /// Our `sent-by` (host:port) for the Via of the requests we send.
    fn sent_by(&self) -> String {
        self.address_text.clone()
    }

    fn respond(
        &mut self,
        now: Now,
        key: &TransactionKey,
        request: &Message,
        status: u16,
        reason: &str,
        headers: &[(&str, &str)],
    ) {
        let Some(mut builder) = self.response_builder(request, status, reason) else {
            return;
        };
        for (name, value) in headers {
            builder = builder.raw_header(name, value);
        }
        self.respond_with(now, key, status, builder);
    }

    /// The start of a response to `request`: the copied fields, a fresh To tag, `Server`.
    fn response_builder(&mut self, request: &Message, status: u16, reason: &str) -> Option<MessageBuilder> {
        let tag = self.token();
        // The top Via records where the request really came from (RFC 3261 §18.2.1, RFC 3581).
        let built = match self.current_source {
            Some(source) => crate::sip::response_to_from(request, status, reason, Some(&tag), source),
            None => crate::sip::response_to(request, status, reason, Some(&tag)),
        };
        Some(built.ok()?.header(HeaderName::Server, SERVER))
    }

    /// Sends a response built from [`Tcf::response_builder`]: statelessly, or through the
    /// server transaction `key`.
    fn respond_with(&mut self, now: Now, key: &TransactionKey, status: u16, builder: MessageBuilder) {
        let Ok(response) = builder.build_bytes() else { return };
        if let Some(destination) = self.stateless_to {
            self.outputs.push_back(Output::Transmit {
                destination,
                bytes: response,
            });
            return;
        }
        let _ = self.layer.respond(now.instant, key, status, response);
    }

    /// Sends a request to a peer or terminal in a new client transaction; returns its key.
    #[allow(clippy::too_many_arguments)]
    fn send(
        &mut self,
        now: Now,
        method: Method<'_>,
        uri: &str,
        to: &str,
        from: &str,
        call_id: &str,
        from_tag: &str,
        cseq: u32,
        headers: &[(&str, String)],
        destination: SocketAddr,
        pending: Pending,
    ) -> Option<TransactionKey> {
        self.send_with_body(
            now,
            method,
            uri,
            to,
            from,
            call_id,
            from_tag,
            cseq,
            headers,
            None,
            destination,
            pending,
        )
    }

    /// A `MESSAGE` to `uri` at `destination` on behalf of `user` (From and
    /// P-Asserted-Identity `<sip:user@this node>`), carrying `Ptt-Extension: extension` and
    /// `body` (content type, bytes): the dispatcher orders, their reports and short data.
    #[allow(clippy::too_many_arguments)]
    fn send_message_as(
        &mut self,
        now: Now,
        user: &str,
        uri: &str,
        extension: String,
        body: Option<(&str, Bytes)>,
        destination: SocketAddr,
        pending: Pending,
    ) -> Option<TransactionKey> {
        let from = concat(&["<sip:", user, "@", &self.address_text, ">"]);
        let to = concat(&["<", uri, ">"]);
        let call_id = concat(&[&self.token(), "@", &self.config.name]);
        let tag = self.token();
        let headers = [("Ptt-Extension", extension), ("P-Asserted-Identity", from.clone())];
        self.send_with_body(
            now,
            Method::Message,
            uri,
            &to,
            &from,
            &call_id,
            &tag,
            1,
            &headers,
            body,
            destination,
            pending,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn send_with_body(
        &mut self,
        now: Now,
        method: Method<'_>,
        uri: &str,
        to: &str,
        from: &str,
        call_id: &str,
        from_tag: &str,
        cseq: u32,
        headers: &[(&str, String)],
        body: Option<(&str, Bytes)>,
        destination: SocketAddr,
        pending: Pending,
    ) -> Option<TransactionKey> {
        let branch = self.branch();
        let sent_by = self.sent_by();
        let via = concat(&["SIP/2.0/UDP ", &sent_by, ";branch=", &branch, ";rport"]);
        let mut cseq_text = String::with_capacity(16);
        cseq_text.push_str(itoa::Buffer::new().format(cseq));
        cseq_text.push(' ');
        cseq_text.push_str(method.as_str());
        let mut builder = MessageBuilder::request(method, uri)
            .header(HeaderName::Via, via)
            .header(HeaderName::MaxForwards, "70")
            .header(HeaderName::From, concat(&[from, ";tag=", from_tag]))
            .header(HeaderName::To, to)
            .header(HeaderName::CallId, call_id)
            .header(HeaderName::CSeq, cseq_text);
        for (name, value) in headers {
            builder = builder.raw_header(name, value);
        }
        if let Some((content_type, body)) = body {
            builder = builder.body(content_type, body);
        }
        let request = builder.build_bytes().ok()?;
        let tx_method = TxMethod::from_token(method.as_str());
        let key = TransactionKey::new(&branch, &sent_by, tx_method.clone()).ok()?;
        let sent = self
            .layer
            .send_request(now.instant, key.clone(), tx_method, request, destination, false);
        if sent.is_err() {
            return None;
        }
        self.pending.insert(key.clone(), pending);
        Some(key)
    }

    fn peer_is_down(&self, name: &str) -> bool {
        self.peers
            .iter()
            .any(|peer| peer.name == name && peer.up == Some(false))
    }

    fn event(&mut self, event: TcfEvent) {
        self.subscriptions.saw(&event);
        self.outputs.push_back(Output::Event(event));
    }

    fn write(&mut self, write: StoreWrite) {
        self.outputs.push_back(Output::Store(write));
    }

    // ---- REGISTER ---------------------------------------------------------------------------

    fn register(&mut self, now: Now, key: TransactionKey, request: Message) {
        let source = self.current_source;
        // To and Contact are parsed once here for the whole REGISTER.
        let (to_is_sip, user) = match request.to_sip_user() {
            Ok((sip, user)) => (sip, user.and_then(|user| Number::parse(user).ok())),
            Err(_) => (false, None),
        };
        let Some(user) = user else {
            // RFC 3261 §10.3 step 3: a SIP address of record that is no user of this network is
            // unknown here (404); a To that is no SIP address at all is a bad request.
            if to_is_sip {
                self.respond(now, &key, &request, 404, "Not Found", &[]);
            } else {
                self.respond(now, &key, &request, 400, "Bad Request (To names no user number)", &[]);
            }
            return;
        };
        let (expires, contact) = match expires_and_contact(&request) {
            Ok((expires, contact)) => (expires.unwrap_or(self.config.sip.default_expires), contact),
            Err(()) => {
                self.respond(now, &key, &request, 400, "Bad Request (Expires)", &[]);
                return;
            }
        };
        if expires != 0 && expires < self.config.sip.min_expires {
            let min = self.config.sip.min_expires.to_string();
            self.respond(now, &key, &request, 423, "Interval Too Brief", &[("Min-Expires", &min)]);
            return;
        }
        let expires = expires.min(self.config.sip.max_expires);
        let peer = source
            .and_then(|address| self.network.tcf_at(address))
            .map(|tcf| tcf.name.clone());
        match peer {
            Some(peer) => self.register_from_peer(now, key, request, user, expires, peer, contact),
            None => self.register_from_terminal(now, key, request, user, expires, contact),
        }
    }

    /// D interface: a terminal or DC registers with the TCF serving it. `contact` is the
    /// request's first Contact address (`<uri>`), if any.
    fn register_from_terminal(
        &mut self,
        now: Now,
        key: TransactionKey,
        request: Message,
        user: Number,
        expires: u32,
        contact: Option<String>,
    ) {
        let subscribers = Arc::clone(&self.subscribers);
        let Some(subscriber) = subscribers.user(&user) else {
            self.respond(now, &key, &request, 404, "Not Found", &[]);
            return;
        };
        // Digest authentication is always required on the D interface.
        let authorization = request.first_value_str(HeaderName::Authorization);
        let credentials = authorization.as_deref().map(digest::parse_credentials);
        let verdict = match credentials {
            None => None,
            Some(Err(error)) if error.is_malformed() => {
                self.respond(now, &key, &request, 400, "Bad Request (Authorization)", &[]);
                return;
            }
            Some(Err(_)) => None,
            Some(Ok(credentials)) => {
                if credentials.username != user.as_str() {
                    self.respond(now, &key, &request, 403, "Forbidden (credentials of another user)", &[]);
                    return;
                }
                Some(self.verifier.verify_ref(
                    &credentials,
                    "REGISTER",
                    digest::UserSecret::Password(&subscriber.password),
                    now.wall,
                ))
            }
        };
        match verdict {
            Some(Verdict::Ok) => {}
            Some(Verdict::Stale) => {
                self.challenge(now, &key, &request, true, false);
                return;
            }
            _ => {
                self.challenge(now, &key, &request, false, false);
                return;
            }
        }
        let source = self.current_source.unwrap_or(self.address);
        let contact = contact.unwrap_or_else(|| format!("<sip:{user}@{source}>"));
        let binding = (expires > 0).then(|| Binding {
            user: user.clone(),
            contact: contact.clone(),
            address: source,
            expires_at: now.unix() + u64::from(expires),
        });
        let Some(home) = self.network.home_of_user(&user).map(|tcf| (tcf.name.clone(), tcf.sip)) else {
            self.respond(now, &key, &request, 404, "Not Found (no home TCF)", &[]);
            return;
        };
        if home.0 == self.config.name {
            // This node is the user's home: bind and register at once.
            if expires == 0 {
                if self
                    .registrations
                    .get(&user)
                    .is_some_and(|registration| registration.serving != self.config.name)
                {
                    self.respond(
                        now,
                        &key,
                        &request,
                        403,
                        "Forbidden (registered through another TCF)",
                        &[],
                    );
                    return;
                }
                self.unbind(&user, "deregistered");
                self.home_deregister(now, &user, "deregistered");
                self.respond(now, &key, &request, 200, "OK", &[("Expires", "0")]);
                return;
            }
            if self.skr_refuses_registration(&user) {
                self.respond(now, &key, &request, 403, "Forbidden (killed)", &[]);
                return;
            }
            if let Some(binding) = binding {
                self.bind(binding, expires);
            }
            let serving = self.config.name.clone();
            self.home_register(now, &user, serving, expires);
            self.registered(now, &key, &request, &contact, expires);
            return;
        }
        // This node is the V-TCF: relay to the H-TCF (F-REG-01/02).
        if self.peer_is_down(&home.0) {
            self.respond(
                now,
                &key,
                &request,
                503,
                "Service Unavailable (home TCF unreachable)",
                &[],
            );
            return;
        }
        let call_id = format!("{}@{}", self.token(), self.config.name);
        let from_tag = self.token();
        let relay = Relay {
            server: key,
            request,
            source,
            user: user.clone(),
            home: home.0.clone(),
            expires,
            binding,
            call_id,
            from_tag,
            cseq: 1,
            challenged: false,
        };
        self.relay_register(now, Box::new(relay), home.1, None);
    }

    fn challenge(&mut self, now: Now, key: &TransactionKey, request: &Message, stale: bool, peer: bool) {
        let Some(mut builder) = self.response_builder(request, 401, "Unauthorized") else {
            return;
        };
        let verifier = if peer { &self.peer_verifier } else { &self.verifier };
        // One WWW-Authenticate per algorithm, written without a `Challenge` or `String` each.
        verifier.write_challenges(now.wall, &mut self.rng, stale, |value| {
            builder.push_header(HeaderName::WwwAuthenticate, value.as_bytes());
        });
        self.respond_with(now, key, 401, builder);
    }

    fn relay_register(&mut self, now: Now, relay: Box<Relay>, home: SocketAddr, authorization: Option<String>) {
        let (user, expires, cseq) = (&relay.user, relay.expires, relay.cseq);
        let me = self.address;
        let uri = format!("sip:{home}");
        let to = format!("<sip:{user}@{home}>");
        let from = format!("<sip:{user}@{me}>");
        let mut headers = vec![
            ("Contact", format!("<sip:{user}@{me}>;expires={expires}")),
            ("Expires", expires.to_string()),
            ("Ptt-Extension", "pttregister".to_owned()),
            ("P-Asserted-Identity", format!("<sip:{user}@{me}>")),
        ];
        if let Some(authorization) = authorization {
            headers.push(("Authorization", authorization));
        }
        let (call_id, from_tag) = (relay.call_id.clone(), relay.from_tag.clone());
        self.send(
            now,
            Method::Register,
            &uri,
            &to,
            &from,
            &call_id,
            &from_tag,
            cseq,
            &headers,
            home,
            Pending::Relay(relay),
        );
    }

    /// TC2 interface: a V-TCF registers one of our users with us (we are its H-TCF).
    #[allow(clippy::too_many_arguments)]
    fn register_from_peer(
        &mut self,
        now: Now,
        key: TransactionKey,
        request: Message,
        user: Number,
        expires: u32,
        peer: String,
        contact: Option<String>,
    ) {
        if self.requires_peer_auth {
            let peer_secret = self
                .network
                .tcf(&peer)
                .map(|tcf| tcf.secret.clone())
                .unwrap_or_default();
            let authorization = request.first_value_str(HeaderName::Authorization);
            let credentials = authorization
                .as_deref()
                .and_then(|value| digest::parse_credentials(value).ok());
            let verdict = credentials
                .filter(|credentials| credentials.username == peer)
                .map(|credentials| {
                    self.peer_verifier.verify_ref(
                        &credentials,
                        "REGISTER",
                        digest::UserSecret::Password(&peer_secret),
                        now.wall,
                    )
                });
            match verdict {
                Some(Verdict::Ok) => {}
                Some(Verdict::Stale) => return self.challenge(now, &key, &request, true, true),
                _ => return self.challenge(now, &key, &request, false, true),
            }
        }
        if self.network.home_of_user(&user).map(|tcf| tcf.name.as_str()) != Some(self.config.name.as_str()) {
            self.respond(now, &key, &request, 404, "Not Found (not homed here)", &[]);
            return;
        }
        if self.subscribers.user(&user).is_none() {
            self.respond(now, &key, &request, 404, "Not Found", &[]);
            return;
        }
        if expires == 0 {
            match self.registrations.get(&user) {
                Some(registration) if registration.serving != peer => {
                    self.respond(
                        now,
                        &key,
                        &request,
                        403,
                        "Forbidden (registered through another TCF)",
                        &[],
                    );
                }
                _ => {
                    self.home_deregister(now, &user, "deregistered");
                    self.respond(now, &key, &request, 200, "OK", &[("Expires", "0")]);
                }
            }
            return;
        }
        if self.skr_refuses_registration(&user) {
            self.respond(now, &key, &request, 403, "Forbidden (killed)", &[]);
            return;
        }
        self.home_register(now, &user, peer.clone(), expires);
        let contact = contact.unwrap_or_default();
        self.registered(now, &key, &request, &contact, expires);
        // After the 200, so the new serving TCF has bound the terminal when the order arrives.
        self.skr_registered(now, &user, &peer);
        self.monitor_registered(now, &user, &peer);
    }

    /// Answers a successful REGISTER: `200 OK` with the binding's Contact and the period granted.
    fn registered(&mut self, now: Now, key: &TransactionKey, request: &Message, contact: &str, expires: u32) {
        let mut digits = [0u8; 20];
        // Decimal digits are ASCII.
        let expires_value =
            std::str::from_utf8(crate::sip::builder::decimal(u64::from(expires), &mut digits)).unwrap_or_default();
        let mut contact_value = String::with_capacity(contact.len() + 9 + expires_value.len());
        contact_value.push_str(contact);
        contact_value.push_str(";expires=");
        contact_value.push_str(expires_value);
        let headers = [("Contact", contact_value.as_str()), ("Expires", expires_value)];
        self.respond(now, key, request, 200, "OK", &headers);
    }

    fn bind(&mut self, binding: Binding, expires: u32) {
        let user = binding.user.clone();
        let previous = self.bindings.insert(user.clone(), binding.clone());
        if previous.map_or(true, |previous| {
            previous.address != binding.address || previous.contact != binding.contact
        }) {
            self.groups.rejoined.push(user.clone());
        }
        self.groups.changed.push(user.clone());
        self.write(StoreWrite::PutBinding(binding));
        self.event(TcfEvent::Bound { user, expires });
    }

    fn unbind(&mut self, user: &Number, reason: &'static str) -> Option<Binding> {
        let binding = self.bindings.remove(user)?;
        self.skr_unbound(user);
        self.monitor_unbound(user);
        self.groups.changed.push(user.clone());
        self.write(StoreWrite::RemoveBinding(user.clone()));
        self.event(TcfEvent::Unbound {
            user: user.clone(),
            reason,
        });
        Some(binding)
    }

    /// Records at home that `serving` serves `user`; kicks off the previous serving TCF if the
    /// user moved (F-REG-06) and pushes the location to group homes elsewhere (F-REG-07).
    fn home_register(&mut self, now: Now, user: &Number, serving: String, expires: u32) {
        let expires_at = now.unix() + u64::from(expires);
        let previous = self.registrations.insert(
            user.clone(),
            Registration {
                user: user.clone(),
                serving: serving.clone(),
                expires_at,
            },
        );
        let arrived = previous.as_ref().map_or(true, |previous| previous.serving != serving);
        if let Some(previous) = previous.filter(|previous| previous.serving != serving) {
            if previous.serving == self.config.name {
                self.unbind(user, "moved to another TCF");
            } else {
                self.kick_off(now, user, &previous.serving, "moved");
            }
        }
        self.write(StoreWrite::PutRegistration(Registration {
            user: user.clone(),
            serving: serving.clone(),
            expires_at,
        }));
        self.event(TcfEvent::HomeRegistered {
            user: user.clone(),
            serving: serving.clone(),
        });
        self.push_location(now, user, Some(&serving), expires);
        if arrived {
            // A new serving TCF learns the user's regrouping (F-RGP-02), once it has bound the user.
            self.regroups.arrived.push((user.clone(), serving));
        }
    }

    fn home_deregister(&mut self, now: Now, user: &Number, reason: &'static str) {
        if self.registrations.remove(user).is_some() {
            self.write(StoreWrite::RemoveRegistration(user.clone()));
            self.event(TcfEvent::HomeDeregistered {
                user: user.clone(),
                reason,
            });
            self.push_location(now, user, None, 0);
        }
    }

    /// F-REG-06: tells the TCF that served the user that it no longer does.
    fn kick_off(&mut self, now: Now, user: &Number, tcf: &str, cause: &str) {
        let Some(address) = self.network.tcf(tcf).map(|tcf| tcf.sip) else {
            return;
        };
        if self.peer_is_down(tcf) {
            return;
        }
        let me = self.address;
        let call_id = format!("{}@{}", self.token(), self.config.name);
        let tag = self.token();
        let headers = [("Ptt-Extension", format!("pttkickoff;cause={cause}"))];
        self.send(
            now,
            Method::Options,
            &format!("sip:{user}@{address}"),
            &format!("<sip:{user}@{address}>"),
            &format!("<sip:{}@{me}>", self.config.name),
            &call_id,
            &tag,
            1,
            &headers,
            address,
            Pending::FireAndForget,
        );
    }

    /// F-REG-07: tells the homes of the user's groups which TCF serves it (`None`: withdrawn).
    fn push_location(&mut self, now: Now, user: &Number, serving: Option<&str>, expires: u32) {
        let group_homes: Vec<(String, SocketAddr, Number)> = self
            .regroups
            .groups_of(&self.subscribers, user)
            .filter_map(|group| {
                let home = self.network.home_of_group(group)?;
                Some((home.name.clone(), home.sip, group.clone()))
            })
            .collect();
        let mut told = Vec::new();
        for (home, address, group) in group_homes {
            if told.contains(&home) {
                continue;
            }
            told.push(home.clone());
            self.location_to(now, user, serving, expires, &group, &home, address);
        }
    }

    /// Tells group `group`'s home (`home` at `address`) where `user` is served (`pttlocation`,
    /// F-REG-07); `serving` `None` (or `expires` 0) withdraws it. Recorded directly when this
    /// node is that home; nothing when it is down.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn location_to(
        &mut self,
        now: Now,
        user: &Number,
        serving: Option<&str>,
        expires: u32,
        group: &Number,
        home: &str,
        address: SocketAddr,
    ) {
        if home == self.config.name {
            self.set_location(now, user, serving.map(str::to_owned), expires);
            return;
        }
        if self.peer_is_down(home) {
            return;
        }
        let me = self.address;
        let call_id = format!("{}@{}", self.token(), self.config.name);
        let tag = self.token();
        let value = match serving {
            Some(serving) => format!("pttlocation;UDN={user};servingtcf={serving};expires={expires}"),
            None => format!("pttlocation;UDN={user};expires=0"),
        };
        let headers = [
            ("Ptt-Extension", value),
            ("P-Asserted-Identity", format!("<sip:{user}@{me}>")),
        ];
        self.send(
            now,
            Method::Message,
            &format!("sip:{group}@{address}"),
            &format!("<sip:{group}@{address}>"),
            &format!("<sip:{}@{me}>", self.config.name),
            &call_id,
            &tag,
            1,
            &headers,
            address,
            Pending::FireAndForget,
        );
    }

    fn set_location(&mut self, now: Now, user: &Number, serving: Option<String>, expires: u32) {
        match serving.clone().filter(|_| expires > 0) {
            Some(serving) => {
                let location = Location {
                    user: user.clone(),
                    serving,
                    expires_at: now.unix() + u64::from(expires),
                };
                // Located anew or elsewhere (not a refresh): it may join calls it had left.
                if self
                    .locations
                    .insert(user.clone(), location.clone())
                    .map_or(true, |previous| previous.serving != location.serving)
                {
                    self.groups.rejoined.push(user.clone());
                }
                self.write(StoreWrite::PutLocation(location));
            }
            None => {
                if self.locations.remove(user).is_none() {
                    return;
                }
                self.write(StoreWrite::RemoveLocation(user.clone()));
            }
        }
        self.groups.changed.push(user.clone());
        self.event(TcfEvent::LocationUpdated {
            user: user.clone(),
            serving: serving.filter(|_| expires > 0),
        });
    }

    /// A client transaction ended: act on the outcome.
    fn completed(&mut self, now: Now, pending: Pending, status: u16, response: Option<Message>) {
        match pending {
            Pending::Heartbeat { peer } => self.heartbeat_result(&peer, (200..300).contains(&status)),
            Pending::FireAndForget => {}
            Pending::Relay(relay) => self.relay_answered(now, relay, status, response),
            Pending::Regroup(sent) => self.regroup_completed(now, *sent, status, response),
            Pending::Skr(relay) => self.skr_answered(now, relay, status, response),
            Pending::ShortData(forward) => self.short_data_answered(now, *forward, status, response),
            Pending::Subscription(sent) => self.subscription_answered(now, *sent, status, response),
            Pending::VideoForward(relay) => self.video_forward_answered(now, *relay, status, response),
            Pending::Monitor(relay) => self.monitor_answered(now, *relay, status, response),
        }
    }

    /// The H-TCF answered a relayed REGISTER (or did not): answer its challenge once, else
    /// pass the outcome back to the terminal.
    fn relay_answered(&mut self, now: Now, mut relay: Box<Relay>, status: u16, response: Option<Message>) {
        if status == 401 && !relay.challenged {
            // The H-TCF requires TC2 authentication: answer its challenge once.
            let challenge = response.as_ref().and_then(|response| {
                let challenges: Vec<digest::Challenge> = response
                    .headers_of(HeaderName::WwwAuthenticate)
                    .filter_map(|header| header.value_str())
                    .filter_map(|value| digest::parse_challenge(&value).ok())
                    .collect();
                digest::choose(&challenges).cloned()
            });
            let address = self.network.tcf(&relay.home).map(|tcf| tcf.sip);
            if let (Some(challenge), Some(address)) = (challenge, address) {
                self.event(TcfEvent::ChallengedByPeer {
                    peer: relay.home.clone(),
                });
                let cnonce = digest::new_cnonce(&mut self.rng);
                let uri = format!("sip:{address}");
                let authorization = digest::respond(
                    &challenge,
                    &self.config.name,
                    &self.secret,
                    "REGISTER",
                    &uri,
                    1,
                    &cnonce,
                );
                relay.cseq += 1;
                relay.challenged = true;
                self.relay_register(now, relay, address, Some(authorization));
                return;
            }
        }
        let Relay {
            server,
            request,
            source,
            user,
            expires,
            binding,
            ..
        } = *relay;
        // Responses below answer the terminal's request, which came from `source`, not from
        // the H-TCF whose answer is being handled.
        let handling = self.current_source.replace(source);
        self.relay_outcome(
            now,
            &server,
            &request,
            &user,
            expires,
            binding,
            status,
            response.as_ref(),
        );
        self.current_source = handling;
    }

    #[allow(clippy::too_many_arguments)]
    fn relay_outcome(
        &mut self,
        now: Now,
        server: &TransactionKey,
        request: &Message,
        user: &Number,
        expires: u32,
        binding: Option<Binding>,
        status: u16,
        response: Option<&Message>,
    ) {
        match status {
            200..=299 if expires == 0 => {
                self.unbind(user, "deregistered");
                self.respond(now, server, request, 200, "OK", &[("Expires", "0")]);
            }
            200..=299 => {
                let contact = binding
                    .as_ref()
                    .map(|binding| binding.contact.clone())
                    .unwrap_or_default();
                if let Some(binding) = binding {
                    self.bind(binding, expires);
                }
                self.registered(now, server, request, &contact, expires);
            }
            408 => self.respond(
                now,
                server,
                request,
                408,
                "Request Timeout (home TCF did not answer)",
                &[],
            ),
            401 | 407 => self.respond(now, server, request, 403, "Forbidden (home TCF refused this TCF)", &[]),
            status => {
                let reason = response
                    .and_then(|response| response.reason_phrase())
                    .map(|reason| String::from_utf8_lossy(reason).into_owned())
                    .unwrap_or_else(|| "Refused by home TCF".to_owned());
                self.respond(now, server, request, status, &reason, &[]);
            }
        }
    }

    // ---- OPTIONS and MESSAGE ----------------------------------------------------------------

    fn options(&mut self, now: Now, key: TransactionKey, request: Message, source: Option<SocketAddr>) {
        let extension = request.ptt_extension().ok().flatten().map(|ext| {
            let token = ext.value().to_ascii_lowercase();
            let cause = ext
                .param("cause")
                .map(|cause| String::from_utf8_lossy(&cause).into_owned());
            (token, cause)
        });
        let peer = source
            .and_then(|address| self.network.tcf_at(address))
            .map(|tcf| tcf.name.clone());
        match extension {
            Some((token, _)) if token == "pttheartbeat" => {
                if peer.is_some() {
                    self.respond(now, &key, &request, 200, "OK", &[("Allow", ALLOW)]);
                } else {
                    self.respond(now, &key, &request, 403, "Forbidden (not a configured peer TCF)", &[]);
                }
            }
            Some((token, _)) if token == "pttkickoff" => {
                let Some(user) = request_user(&request).or_else(|| to_user(&request)) else {
                    self.respond(now, &key, &request, 400, "Bad Request (no user)", &[]);
                    return;
                };
                let home = self.network.home_of_user(&user).map(|tcf| tcf.name.clone());
                if peer.is_none() || peer != home {
                    self.respond(
                        now,
                        &key,
                        &request,
                        403,
                        "Forbidden (only the user's home TCF may kick off)",
                        &[],
                    );
                    return;
                }
                self.respond(now, &key, &request, 200, "OK", &[]);
                if let Some(binding) = self.unbind(&user, "kicked off by home TCF") {
                    // Tell the terminal too (D interface kick-off).
                    let me = self.address;
                    let call_id = format!("{}@{}", self.token(), self.config.name);
                    let tag = self.token();
                    let headers = [("Ptt-Extension", "pttkickoff;cause=moved".to_owned())];
                    let contact = binding.contact.trim_matches(|c| c == '<' || c == '>').to_owned();
                    self.send(
                        now,
                        Method::Options,
                        &contact,
                        &format!("<{contact}>"),
                        &format!("<sip:{}@{me}>", self.config.name),
                        &call_id,
                        &tag,
                        1,
                        &headers,
                        binding.address,
                        Pending::FireAndForget,
                    );
                }
            }
            _ => self.respond(
                now,
                &key,
                &request,
                200,
                "OK",
                &[("Allow", ALLOW), ("Accept", "application/sdp")],
            ),
        }
    }

    fn message(&mut self, now: Now, key: TransactionKey, request: Message) {
        let Some(request) = self.skr_message(now, &key, request) else {
            return;
        };
        // Video forwarding orders (F-VID-02): `tcf/video.rs`.
        let Some(request) = self.video_forward_message(now, &key, request) else {
            return;
        };
        // Monitoring orders (F-MON-01/02): `tcf/monitor.rs`.
        let Some(request) = self.monitor_message(now, &key, request) else {
            return;
        };
        // Short data (F-SDS-01/02) and a Ptt-Extension that does not parse: `tcf/short_data.rs`.
        let Some(request) = self.short_data(now, &key, request) else {
            return;
        };
        let source = self.current_source;
        let extension = request.ptt_extension().ok().flatten().map(|ext| {
            (
                ext.value().to_ascii_lowercase(),
                ext.param("UDN")
                    .map(|value| String::from_utf8_lossy(&value).into_owned()),
                ext.param("servingtcf")
                    .map(|value| String::from_utf8_lossy(&value).into_owned()),
                ext.param("expires")
                    .and_then(|value| std::str::from_utf8(&value).ok()?.parse::<u32>().ok()),
            )
        });
        match extension {
            Some((token, user, serving, expires)) if token == "pttlocation" => {
                if source.and_then(|address| self.network.tcf_at(address)).is_none() {
                    self.respond(now, &key, &request, 403, "Forbidden (not a configured peer TCF)", &[]);
                    return;
                }
                let Some(user) = user.as_deref().and_then(|user| Number::parse(user).ok()) else {
                    self.respond(now, &key, &request, 400, "Bad Request (UDN)", &[]);
                    return;
                };
                let expires = expires.unwrap_or(0).min(self.config.sip.max_expires);
                self.set_location(now, &user, serving, expires);
                self.respond(now, &key, &request, 200, "OK", &[]);
            }
            Some((token, ..)) if token == "pptdgna" => self.dgna_order(now, key, request),
            Some((token, ..)) if token == "redgna" => self.dgna_report(now, key, request),
            _ => self.respond(now, &key, &request, 501, "Not Implemented", &[("Allow", ALLOW)]),
        }
    }

    // ---- timers -----------------------------------------------------------------------------

    fn heartbeats(&mut self, now: Now) {
        let due: Vec<usize> = (0..self.peers.len())
            .filter(|&index| self.peers[index].next_at <= now.instant)
            .collect();
        for index in due {
            // An unanswered previous heartbeat counts as a failure.
            if self.peers[index].outstanding.take().is_some() {
                let name = self.peers[index].name.clone();
                self.heartbeat_result(&name, false);
            }
            let (name, address) = (self.peers[index].name.clone(), self.peers[index].address);
            self.peers[index].next_at = now.instant + self.config.sip.heartbeat_interval;
            let me = self.address;
            let call_id = format!("{}@{}", self.token(), self.config.name);
            let tag = self.token();
            let headers = [("Ptt-Extension", "pttheartbeat".to_owned())];
            let key = self.send(
                now,
                Method::Options,
                &format!("sip:{address}"),
                &format!("<sip:{name}@{address}>"),
                &format!("<sip:{}@{me}>", self.config.name),
                &call_id,
                &tag,
                1,
                &headers,
                address,
                Pending::Heartbeat { peer: name.clone() },
            );
            self.peers[index].outstanding = key;
        }
    }

    fn heartbeat_result(&mut self, name: &str, success: bool) {
        let threshold = self.config.sip.heartbeat_failures;
        let Some(peer) = self.peers.iter_mut().find(|peer| peer.name == name) else {
            return;
        };
        peer.outstanding = None;
        let was = peer.up;
        if success {
            peer.failures = 0;
            peer.up = Some(true);
        } else {
            peer.failures += 1;
            if peer.failures >= threshold {
                peer.up = Some(false);
            }
        }
        let now_up = peer.up;
        if now_up != was {
            if let Some(up) = now_up {
                if up {
                    tracing::info!(peer = name, "peer TCF up");
                } else {
                    tracing::warn!(peer = name, "peer TCF down: only heartbeats go to it until it answers");
                    self.calls.peers_down.push(name.to_owned());
                }
                self.event(TcfEvent::PeerState {
                    peer: name.to_owned(),
                    up,
                });
            }
        }
    }

    /// Removes what has expired. Expiry times are whole Unix seconds; an entry lives through its
    /// last second (never removed early, at most a second late).
    fn expire(&mut self, now: Now) {
        let unix = now.unix();
        let expired: Vec<Number> = self
            .bindings
            .values()
            .filter(|binding| binding.expires_at < unix)
            .map(|binding| binding.user.clone())
            .collect();
        for user in expired {
            self.unbind(&user, "expired");
        }
        let expired: Vec<Number> = self
            .registrations
            .values()
            .filter(|registration| registration.expires_at < unix)
            .map(|registration| registration.user.clone())
            .collect();
        for user in expired {
            self.home_deregister(now, &user, "expired");
        }
        let expired: Vec<Number> = self
            .locations
            .values()
            .filter(|location| location.expires_at < unix)
            .map(|location| location.user.clone())
            .collect();
        for user in expired {
            self.set_location(now, &user, None, 0);
        }
    }
}

/// Puts the entries still alive at `unix` into `map`; asks the store to delete the others.
fn restore_live<T>(
    map: &mut NetMap<Number, T>,
    entries: Vec<T>,
    unix: u64,
    outputs: &mut VecDeque<Output>,
    key: impl Fn(&T) -> (&Number, u64),
    remove: impl Fn(Number) -> StoreWrite,
) {
    for entry in entries {
        let (user, expires_at) = key(&entry);
        let user = user.clone();
        if expires_at >= unix {
            map.insert(user, entry);
        } else {
            outputs.push_back(Output::Store(remove(user)));
        }
    }
}

const ALLOW: &str = "INVITE, ACK, BYE, CANCEL, OPTIONS, REGISTER, INFO, MESSAGE, SUBSCRIBE, NOTIFY";

/// The transaction key of a message (RFC 3261 branch, or the RFC 2543 fallback).
/// The pieces joined into one string, sized once (in place of `format!` on the per-message path).
pub(super) fn concat(pieces: &[&str]) -> String {
    let mut out = String::with_capacity(pieces.iter().map(|piece| piece.len()).sum());
    for piece in pieces {
        out.push_str(piece);
    }
    out
}

fn transaction_key(message: &Message, via: &crate::sip::Via<'_>) -> Option<TransactionKey> {
    let cseq = message.cseq().ok()?;
    let method = TxMethod::from_token(cseq.method.as_str());
    let mut digits = [0u8; 20];
    let port = via
        .port()
        .map(|port| crate::sip::builder::decimal(u64::from(port), &mut digits));
    let host = via.host_raw();
    let mut sent_by = String::with_capacity(host.len() + port.map_or(0, |port| port.len() + 1));
    sent_by.push_str(host);
    if let Some(port) = port {
        sent_by.push(':');
        // Decimal digits are ASCII.
        sent_by.extend(port.iter().map(|&digit| char::from(digit)));
    }
    match via.branch() {
        Some(branch) if via.has_rfc3261_branch() => TransactionKey::new(branch, &sent_by, method).ok(),
        _ => {
            let call_id = message.call_id().ok()?;
            let from_tag = message.from_tag().ok()?.unwrap_or("").to_owned();
            Some(TransactionKey::rfc2543(
                call_id,
                &from_tag,
                cseq.number,
                &sent_by,
                method,
            ))
        }
    }
}

/// Where a response goes (RFC 3261 §18.2.2 with RFC 3581): always the source IP the request
/// came from (never an address merely named in a header); the source port with `rport`,
/// else the sent-by port.
fn response_destination(via: &crate::sip::Via<'_>, from: SocketAddr) -> SocketAddr {
    if via.rport().is_some() {
        from
    } else {
        SocketAddr::new(from.ip(), via.port().unwrap_or(5060))
    }
}

/// [`response_destination`] for a request whose top Via may not parse (then: the source).
fn response_destination_of(request: &Message, from: SocketAddr) -> SocketAddr {
    request.top_via().map_or(from, |via| response_destination(&via, from))
}

/// The user number of a name-addr header value (From, To, P-Asserted-Identity).
fn user_of(address: Result<crate::sip::NameAddr<'_>, crate::sip::HeaderError>) -> Option<Number> {
    let address = address.ok()?;
    Number::parse(address.uri().as_sip()?.user()?).ok()
}

/// The user a peer TCF names in P-Asserted-Identity.
fn asserted_user(message: &Message) -> Option<Number> {
    let header = message.headers_named("P-Asserted-Identity").next()?;
    let value = header.value_str()?;
    user_of(crate::sip::NameAddr::parse(value.as_bytes()))
}

/// The user number in the From URI.
fn from_user(request: &Message) -> Option<Number> {
    user_of(request.from())
}

impl Tcf {
    /// The From user of `request` when it is registered here and the request came from its
    /// binding's address `source`: how a terminal's or a DC's own request is authenticated.
    fn registered_sender(&self, request: &Message, source: SocketAddr) -> Option<Number> {
        let sender = from_user(request)?;
        self.bindings
            .get(&sender)
            .is_some_and(|binding| binding.address == source)
            .then_some(sender)
    }
}

/// The user number in the To URI.
fn to_user(request: &Message) -> Option<Number> {
    user_of(request.to())
}

/// The user number in the Request-URI.
fn request_user(request: &Message) -> Option<Number> {
    let uri = request.request_uri()?.ok()?;
    Number::parse(uri.as_sip()?.user()?).ok()
}

/// The expiry a REGISTER asks for (the first Contact's `expires`, else the Expires header;
/// `Some(0)` for `Contact: *`) and its first Contact address (`<uri>`, without parameters), from
/// one parse of the Contact fields. `Err` when a value is malformed.
fn expires_and_contact(request: &Message) -> Result<(Option<u32>, Option<String>), ()> {
    let (uri, expires) = match request.first_contact() {
        Ok(FirstContact::Star) => return Ok((Some(0), None)),
        Ok(FirstContact::Absent) => (None, None),
        Ok(FirstContact::Address { uri, expires }) => (Some(uri), expires),
        Err(_) => return Err(()),
    };
    let expires = match expires {
        Some(expires) => Some(expires.map_err(|_| ())?),
        None => request.expires().map_err(|_| ())?,
    };
    Ok((
        expires,
        uri.map(|uri| {
            let mut contact = String::with_capacity(uri.len() + 2);
            contact.push('<');
            contact.push_str(uri);
            contact.push('>');
            contact
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NETWORK: &str =
        "[[tcf]]\nname = \"a\"\nsip = \"127.0.0.1:5601\"\nusers = [\"1000-1099\"]\ngroups = [\"2000\"]\nauth = true\nsecret = \"sa\"\n\
                           [[tcf]]\nname = \"b\"\nsip = \"127.0.0.1:5602\"\nusers = [\"1100-1199\"]\nsecret = \"sb\"\n";
    const SUBSCRIBERS: &str =
        "[[user]]\nnumber = \"1000-1001\"\npassword = \"pw\"\n[[user]]\nnumber = \"1100\"\npassword = \"pw\"\n\
                               [[group]]\nnumber = \"2000\"\nmembers = [\"1000\", \"1100\"]\n";

    fn core(name: &str, start: Instant) -> Tcf {
        let network = Arc::new(Network::from_toml("n", NETWORK).unwrap());
        let subscribers = Arc::new(Subscribers::from_toml("s", SUBSCRIBERS).unwrap());
        let sip = crate::config::Config::from_toml(
            "[sip]\nrealm = \"test\"\nmin_expires = 1\nmax_expires = 3600\ndefault_expires = 600\n\
             heartbeat_interval_ms = 1000\nheartbeat_failures = 2\nnonce_lifetime_s = 60\nmax_transactions = 1024\n",
        )
        .unwrap()
        .sip;
        let config = TcfConfig::new(name, sip, [7; 32]).unwrap();
        Tcf::new(
            config,
            network,
            subscribers,
            Now {
                instant: start,
                wall: SystemTime::now(),
            },
            1,
        )
        .unwrap()
    }

    /// Delivers every datagram between the two cores until they are quiet; returns datagrams
    /// addressed elsewhere and the events.
    fn exchange(a: &mut Tcf, b: &mut Tcf, now: Now) -> (Vec<(SocketAddr, Bytes)>, Vec<TcfEvent>) {
        let mut elsewhere = Vec::new();
        let mut events = Vec::new();
        for _ in 0..100 {
            let mut moved = false;
            for (source, target) in [(0, 1), (1, 0)] {
                let (from, to) = if source == 0 {
                    (&mut *a, &mut *b)
                } else {
                    (&mut *b, &mut *a)
                };
                let _ = target;
                let from_address = from.address();
                let mut datagrams = Vec::new();
                while let Some(output) = from.poll_output() {
                    match output {
                        Output::Transmit { destination, bytes } => datagrams.push((destination, bytes)),
                        Output::Event(event) => events.push(event),
                        Output::Store(_) => {}
                    }
                }
                for (destination, bytes) in datagrams {
                    moved = true;
                    if destination == to.address() {
                        to.handle_datagram(now, from_address, bytes);
                    } else {
                        elsewhere.push((destination, bytes));
                    }
                }
            }
            if !moved {
                break;
            }
        }
        (elsewhere, events)
    }

    #[test]
    fn heartbeats_bring_peers_up() {
        let start = Instant::now();
        let now = Now {
            instant: start,
            wall: SystemTime::now(),
        };
        let mut a = core("a", start);
        let mut b = core("b", start);
        a.handle_timeout(now);
        b.handle_timeout(now);
        let (elsewhere, events) = exchange(&mut a, &mut b, now);
        assert!(elsewhere.is_empty(), "{elsewhere:?}");
        assert_eq!(a.peer_up("b"), Some(true), "{events:?}");
        assert_eq!(b.peer_up("a"), Some(true));
    }

    const TERMINAL: &str = "127.0.0.1:40000";

    fn at(start: Instant, wall: SystemTime, seconds: f64) -> Now {
        let elapsed = Duration::from_secs_f64(seconds);
        Now {
            instant: start + elapsed,
            wall: wall + elapsed,
        }
    }

    fn register_text(user: &str, server: SocketAddr, cseq: u32, expires: u32, authorization: Option<&str>) -> String {
        let auth = authorization
            .map(|value| format!("Authorization: {value}\r\n"))
            .unwrap_or_default();
        format!(
            "REGISTER sip:{server} SIP/2.0\r\nVia: SIP/2.0/UDP {TERMINAL};branch=z9hG4bKt{cseq};rport\r\nMax-Forwards: 70\r\n\
             From: <sip:{user}@{server}>;tag=t\r\nTo: <sip:{user}@{server}>\r\nCall-ID: reg-{user}\r\nCSeq: {cseq} REGISTER\r\n\
             Contact: <sip:{user}@{TERMINAL}>;expires={expires}\r\n{auth}Content-Length: 0\r\n\r\n"
        )
    }

    /// The terminal's side: register `user` at `server` (answering the digest challenge),
    /// exchanging messages between the two cores in between. Returns the final status.
    fn register(a: &mut Tcf, b: &mut Tcf, via_b: bool, user: &str, expires: u32, now: Now) -> (u16, Vec<TcfEvent>) {
        let terminal: SocketAddr = TERMINAL.parse().unwrap();
        let mut all_events = Vec::new();
        let mut authorization: Option<String> = None;
        for cseq in 1..=2 {
            let server = if via_b { b.address() } else { a.address() };
            let text = register_text(user, server, cseq, expires, authorization.as_deref());
            let target = if via_b { &mut *b } else { &mut *a };
            target.handle_datagram(now, terminal, Bytes::from(text));
            let (to_terminal, events) = exchange(a, b, now);
            all_events.extend(events);
            let response = to_terminal
                .iter()
                .filter(|(destination, _)| *destination == terminal)
                .filter_map(|(_, bytes)| Message::parse_datagram(bytes.clone()).ok())
                .find(|message| message.status().is_some_and(|status| status >= 200))
                .expect("a final response to the terminal");
            let status = response.status().unwrap();
            if status != 401 {
                return (status, all_events);
            }
            let challenges: Vec<digest::Challenge> = response
                .headers_of(HeaderName::WwwAuthenticate)
                .filter_map(|header| header.value_str())
                .filter_map(|value| digest::parse_challenge(&value).ok())
                .collect();
            let challenge = digest::choose(&challenges).unwrap().clone();
            authorization = Some(digest::respond(
                &challenge,
                user,
                "pw",
                "REGISTER",
                &format!("sip:{server}"),
                1,
                "c1",
            ));
        }
        (401, all_events)
    }

    #[test]
    fn registration_through_a_visited_tcf_answers_the_peer_challenge() {
        let (start, wall) = (Instant::now(), SystemTime::now());
        let now = at(start, wall, 0.0);
        let mut a = core("a", start);
        let mut b = core("b", start);
        let (status, events) = register(&mut a, &mut b, true, "1000", 300, now);
        assert_eq!(status, 200);
        assert!(
            events.contains(&TcfEvent::ChallengedByPeer { peer: "a".into() }),
            "{events:?}"
        );
        let user = Number::parse("1000").unwrap();
        assert_eq!(a.registration(&user).unwrap().serving, "b");
        assert_eq!(
            b.binding(&user).unwrap().address,
            TERMINAL.parse::<SocketAddr>().unwrap()
        );
        // The user's group 2000 is homed on a itself: the location is recorded locally.
        assert_eq!(a.location(&user).unwrap().serving, "b");
    }

    #[test]
    fn silent_peer_goes_down_and_requests_needing_it_fail_at_once() {
        let (start, wall) = (Instant::now(), SystemTime::now());
        let mut a = core("a", start);
        let mut events = Vec::new();
        for second in 0..4 {
            a.handle_timeout(at(start, wall, f64::from(second) + 0.01));
            while let Some(output) = a.poll_output() {
                if let Output::Event(event) = output {
                    events.push(event);
                }
            }
        }
        assert_eq!(a.peer_up("b"), Some(false), "{events:?}");
        assert!(events.contains(&TcfEvent::PeerState {
            peer: "b".into(),
            up: false
        }));
        // 1100's home is b: a answers 503 without sending anything to b.
        let mut b = core("b", start);
        let now = at(start, wall, 4.0);
        let terminal: SocketAddr = TERMINAL.parse().unwrap();
        a.handle_datagram(
            now,
            terminal,
            Bytes::from(register_text("1100", a.address(), 1, 300, None)),
        );
        let mut to_b = 0;
        let mut challenge = None;
        while let Some(output) = a.poll_output() {
            if let Output::Transmit { destination, bytes } = output {
                if destination == b.address() {
                    to_b += 1;
                }
                challenge = Message::parse_datagram(bytes).ok();
            }
        }
        let challenge = challenge.unwrap();
        let challenges: Vec<digest::Challenge> = challenge
            .headers_of(HeaderName::WwwAuthenticate)
            .filter_map(|header| header.value_str())
            .filter_map(|value| digest::parse_challenge(&value).ok())
            .collect();
        let authorization = digest::respond(&challenges[0], "1100", "pw", "REGISTER", "sip:x", 1, "c");
        a.handle_datagram(
            now,
            terminal,
            Bytes::from(register_text("1100", a.address(), 2, 300, Some(&authorization))),
        );
        let mut statuses = Vec::new();
        while let Some(output) = a.poll_output() {
            if let Output::Transmit { destination, bytes } = output {
                if destination == b.address() {
                    to_b += 1;
                } else if let Ok(message) = Message::parse_datagram(bytes) {
                    statuses.extend(message.status());
                }
            }
        }
        assert_eq!(statuses, vec![503]);
        assert_eq!(to_b, 0, "nothing but heartbeats goes to a down peer");
        let _ = b.poll_output();
    }

    #[test]
    fn malformed_input_is_logged_at_most_every_ten_seconds() {
        let start = Instant::now();
        let mut limiter = LogLimiter::default();
        assert_eq!(limiter.allow(start), Some(0));
        assert_eq!(limiter.allow(start + Duration::from_secs(1)), None);
        assert_eq!(limiter.allow(start + Duration::from_secs(9)), None);
        assert_eq!(
            limiter.allow(start + Duration::from_secs(10)),
            Some(2),
            "the held-back lines are counted"
        );
        assert_eq!(limiter.allow(start + Duration::from_secs(11)), None);
    }

    #[test]
    fn registrations_expire_in_simulated_time() {
        let (start, wall) = (Instant::now(), SystemTime::now());
        let mut a = core("a", start);
        let mut b = core("b", start);
        let (status, _) = register(&mut a, &mut b, false, "1001", 2, at(start, wall, 0.0));
        assert_eq!(status, 200);
        let user = Number::parse("1001").unwrap();
        assert!(a.binding(&user).is_some() && a.registration(&user).is_some());
        a.handle_timeout(at(start, wall, 1.5));
        assert!(a.binding(&user).is_some(), "not yet");
        a.handle_timeout(at(start, wall, 3.5));
        assert!(a.binding(&user).is_none() && a.registration(&user).is_none());
        let mut writes = Vec::new();
        while let Some(output) = a.poll_output() {
            if let Output::Store(write) = output {
                writes.push(write);
            }
        }
        assert!(writes.contains(&StoreWrite::RemoveBinding(user.clone())), "{writes:?}");
        assert!(writes.contains(&StoreWrite::RemoveRegistration(user)), "{writes:?}");
    }

    proptest::proptest! {
        /// Whatever arrives — arbitrary bytes, or a valid REGISTER with bytes flipped,
        /// truncated or spliced — the core never panics, and anything it sends goes to the
        /// datagram's source or a configured TCF, never to an address named in the message.
        #[test]
        fn hostile_datagrams_never_panic_nor_misroute(
            garbage in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
            flips in proptest::collection::vec((0usize..400, proptest::prelude::any::<u8>()), 0..8),
            cut in 0usize..400,
        ) {
            let (start, wall) = (Instant::now(), SystemTime::now());
            let now = at(start, wall, 0.0);
            let mut a = core("a", start);
            let from: SocketAddr = "127.0.0.77:5999".parse().unwrap();
            let mut register = register_text("1000", a.address(), 1, 300, None).into_bytes();
            for (position, byte) in flips {
                if let Some(slot) = register.get_mut(position) {
                    *slot = byte;
                }
            }
            let truncated = register.get(..cut.min(register.len())).unwrap_or(&[]).to_vec();
            for datagram in [garbage, register, truncated] {
                a.handle_datagram(now, from, Bytes::from(datagram));
                a.handle_timeout(at(start, wall, 40.0));
                while let Some(output) = a.poll_output() {
                    if let Output::Transmit { destination, .. } = output {
                        let peer = "127.0.0.1:5602".parse::<SocketAddr>().unwrap();
                        proptest::prop_assert!(
                            destination.ip() == from.ip() || destination == peer,
                            "sent to {destination}"
                        );
                    }
                }
            }
        }
    }
}
