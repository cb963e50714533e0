//! Dispatcher monitoring (F-MON-01, F-MON-02): a DC asks to listen to a group's calls or to a
//! user's calls.
//!
//! # The order's path
//!
//! The DC sends `MESSAGE` with `Ptt-Extension: pttmonitor;GDN=<group>;action=start|stop` (or
//! `UDN=<user>`) to its serving TCF, which checks that the sender is a dispatcher registered
//! there and relays the order, naming the DC (`DC=<dc>`), to the group's home (F-MON-01) or to
//! the user's home (F-MON-02); the user's home relays it on to the user's serving TCF. Every
//! hop is a stateful relay: it answers its upstream with the status its downstream gave (`408`
//! when the downstream does not answer, `503` when it is known to be down). Adjacent stages on
//! one node are one hop.
//!
//! # State
//!
//! The group home, the user's home and the user's serving TCF each keep a [`MonitorRecord`] per
//! (target, DC), persisted (table `monitors`) and restored at start, so monitoring survives a
//! restart; `stop` removes it. A hop records the order only once its downstream accepted it, so
//! a DC that got an error has changed nothing. The user's home is authoritative: whenever the
//! user registers through a peer TCF, the home tells that TCF again (an order like the DC's,
//! fire and forget), and a serving TCF's copy goes when the user's binding there ends.
//!
//! # Effect
//!
//! At the group home a monitoring DC is an extra listener of the group's calls: it gets a DC
//! downlink through the TCF that relayed its order, like a provisioned dispatcher, including the
//! call running when monitoring starts; `stop` ends its downlink of a running call. A listener
//! that is neither a member nor a dispatcher of the group gets `403` for floor requests, and its
//! hang-up only takes it out of the call.
//!
//! The node serving a monitored user (which anchors the user's side of its single calls) gives
//! each monitoring DC a *monitoring session* of every answered single call of the user: an
//! INVITE (`pttcall;calltype=8`, `sendonly`, the call's formats) through the TCF serving the DC
//! (`DCTCF` of the order), and a tap leg on the call's relay bridge that gets a copy of both
//! sides' RTP. The session ends with the call, on `stop`, or when the DC hangs up; a DC that
//! refuses changes nothing for the call.
//!
//! Wire formats: `docs/protocol.md`, section "Monitoring (F-MON-01, F-MON-02)".

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::control::provisioning::UserKind;
use crate::media::api::{LegInfo, LegSpec};
use crate::sdp::{self, Sdp};
use crate::sip::dialog::{Dialog, DialogId};
use crate::sip::headers::PttExtension;

use super::*;

/// The `Ptt-Extension` token of a monitoring order.
pub(super) const TOKEN: &str = "pttmonitor";
/// Most monitoring records one node keeps (further `start` orders get `503`).
const MAX_MONITORS: usize = 16 * 1024;

/// What a DC monitors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MonitorKind {
    /// A group's calls (F-MON-01).
    Group,
    /// A user's calls (F-MON-02).
    User,
}

/// One monitoring relation: `dc` monitors the group or user `target`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MonitorKey {
    /// Group or user.
    pub kind: MonitorKind,
    /// The monitored group or user.
    pub target: Number,
    /// The monitoring dispatcher.
    pub dc: Number,
}

impl MonitorKey {
    /// The key of its row in the store: `group/<gdn>/<dc>` or `user/<udn>/<dc>`.
    pub fn store_key(&self) -> String {
        let kind = match self.kind {
            MonitorKind::Group => "group/",
            MonitorKind::User => "user/",
        };
        concat(&[kind, self.target.as_str(), "/", self.dc.as_str()])
    }
}

/// A persisted monitoring relation (table `monitors`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorRecord {
    /// Who monitors what.
    pub key: MonitorKey,
    /// The TCF the order came from (this node's own name when the DC ordered here). At the
    /// group home it is the DC's serving TCF, where the DC's downlinks go.
    pub from_tcf: String,
}

/// `action=` of an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Action {
    Start,
    Stop,
}

impl Action {
    fn parse(text: &str) -> Option<Action> {
        if text.eq_ignore_ascii_case("start") {
            Some(Action::Start)
        } else if text.eq_ignore_ascii_case("stop") {
            Some(Action::Stop)
        } else {
            None
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Stop => "stop",
        }
    }
}

/// A parsed `pttmonitor` extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Order {
    kind: MonitorKind,
    target: Number,
    action: Action,
    /// The ordering DC (between TCFs).
    dc: Option<Number>,
    /// The TCF serving the DC (`DCTCF`, user's home → user's serving TCF): where the DC's
    /// monitoring sessions go (F-MON-02).
    dc_tcf: Option<String>,
}

impl Order {
    /// Reads `pttmonitor;GDN=..|UDN=..;action=..[;DC=..]`; `Err`: the reason of the `400`.
    fn parse(extension: &PttExtension<'_>) -> Result<Order, &'static str> {
        let number = |name: &str| {
            extension.param(name).map(|value| {
                std::str::from_utf8(&value)
                    .ok()
                    .and_then(|value| Number::parse(value).ok())
            })
        };
        let (kind, target) = match (number("GDN"), number("UDN")) {
            (Some(Some(group)), None) => (MonitorKind::Group, group),
            (None, Some(Some(user))) => (MonitorKind::User, user),
            (Some(_), Some(_)) => return Err("Bad Request (GDN or UDN, not both)"),
            (Some(None), None) => return Err("Bad Request (GDN)"),
            (None, Some(None)) => return Err("Bad Request (UDN)"),
            (None, None) => return Err("Bad Request (no GDN or UDN)"),
        };
        let action = extension
            .param("action")
            .and_then(|value| std::str::from_utf8(&value).ok().and_then(Action::parse))
            .ok_or("Bad Request (action)")?;
        let dc = match number("DC") {
            None => None,
            Some(Some(dc)) => Some(dc),
            Some(None) => return Err("Bad Request (DC)"),
        };
        // A TCF name: checked against the network where it is used.
        let dc_tcf = extension
            .param("DCTCF")
            .and_then(|value| std::str::from_utf8(&value).ok().map(str::to_owned))
            .filter(|name| !name.is_empty() && name.len() <= 64);
        Ok(Order {
            kind,
            target,
            action,
            dc,
            dc_tcf,
        })
    }

    /// The `Ptt-Extension` value.
    fn render(&self) -> String {
        let name = match self.kind {
            MonitorKind::Group => ";GDN=",
            MonitorKind::User => ";UDN=",
        };
        let mut value = concat(&[TOKEN, name, self.target.as_str(), ";action=", self.action.as_str()]);
        if let Some(dc) = &self.dc {
            value.push_str(";DC=");
            value.push_str(dc.as_str());
        }
        if let Some(dc_tcf) = &self.dc_tcf {
            value.push_str(";DCTCF=");
            value.push_str(dc_tcf);
        }
        value
    }

    fn key(&self, dc: &Number) -> MonitorKey {
        MonitorKey {
            kind: self.kind,
            target: self.target.clone(),
            dc: dc.clone(),
        }
    }
}

/// An order relayed downstream: the upstream's transaction stays open until the downstream
/// answers.
#[derive(Debug)]
pub(super) struct Relay {
    server: TransactionKey,
    request: Message,
    /// Where the upstream's request came from (for the response's Via).
    source: SocketAddr,
    /// What this node records once the downstream accepted (none at the DC's serving TCF).
    record: Option<(MonitorKey, Action, String)>,
}

/// The monitoring records of one node.
#[derive(Debug, Default)]
pub(super) struct Monitors {
    records: NetMap<MonitorKey, String>,
    /// The DCs' monitoring sessions of single calls anchored here (F-MON-02).
    taps: Vec<Tap>,
    /// Our client transactions of those sessions.
    sent: NetMap<TransactionKey, TapSent>,
}

/// Most monitoring sessions one node runs at once (further ones are not set up).
const MAX_TAPS_NODE: usize = 4096;

/// A DC's monitoring session of one single call (F-MON-02): a tap leg on the call's relay
/// bridge and our INVITE dialog towards the DC.
#[derive(Debug)]
struct Tap {
    call: u64,
    user: Number,
    dc: Number,
    leg: LegInfo,
    client: TransactionKey,
    /// The offer sent (the answer is checked against it).
    offer: Sdp,
    destination: SocketAddr,
    dialog: Option<Dialog>,
}

/// What one of our monitoring-session transactions is.
#[derive(Debug, Clone)]
enum TapSent {
    /// The session's INVITE (kept, so a 2xx after the session ended is ACKed and ended).
    Invite(Box<Message>, SocketAddr),
    /// BYE or CANCEL.
    Other,
}

impl Monitors {
    /// Whether a client transaction is one of the monitoring sessions'.
    pub(super) fn owns(&self, key: &TransactionKey) -> bool {
        self.sent.contains_key(key)
    }

    pub(super) fn transaction_ended(&mut self, key: &TransactionKey) {
        self.sent.remove(key);
    }
}

/// Why a change was not made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Full {
    /// [`MAX_MONITORS`] reached.
    Full,
}

impl Monitors {
    /// Applies `action` for `key`; returns the store write when something changed.
    pub(super) fn apply(
        &mut self,
        key: &MonitorKey,
        action: Action,
        from_tcf: &str,
    ) -> Result<Option<StoreWrite>, Full> {
        match action {
            Action::Start => {
                if self.records.get(key).is_some_and(|stored| stored == from_tcf) {
                    return Ok(None);
                }
                if !self.records.contains_key(key) && self.records.len() >= MAX_MONITORS {
                    return Err(Full::Full);
                }
                self.records.insert(key.clone(), from_tcf.to_owned());
                Ok(Some(StoreWrite::PutMonitor(MonitorRecord {
                    key: key.clone(),
                    from_tcf: from_tcf.to_owned(),
                })))
            }
            Action::Stop => Ok(self.records.remove(key).map(|_| StoreWrite::RemoveMonitor(key.clone()))),
        }
    }

    /// The DCs monitoring `target` (of `kind`), with the TCF each order came from.
    pub(super) fn of<'a>(
        &'a self,
        kind: MonitorKind,
        target: &'a Number,
    ) -> impl Iterator<Item = (&'a Number, &'a str)> + 'a {
        self.records
            .iter()
            .filter(move |(key, _)| key.kind == kind && key.target == *target)
            .map(|(key, from)| (&key.dc, from.as_str()))
    }

    /// Whether `dc` monitors `target`.
    pub(super) fn contains(&self, kind: MonitorKind, target: &Number, dc: &Number) -> bool {
        self.records.contains_key(&MonitorKey {
            kind,
            target: target.clone(),
            dc: dc.clone(),
        })
    }

    /// Every record, sorted.
    fn records(&self) -> Vec<MonitorRecord> {
        let mut records: Vec<MonitorRecord> = self
            .records
            .iter()
            .map(|(key, from)| MonitorRecord {
                key: key.clone(),
                from_tcf: from.clone(),
            })
            .collect();
        records.sort_by(|a, b| a.key.cmp(&b.key));
        records
    }
}

impl Tcf {
    /// The monitoring records this node holds.
    pub fn monitors(&self) -> Vec<MonitorRecord> {
        self.monitors.records()
    }

    /// Restores the persisted monitoring records after a restart (beside [`Tcf::restore`]);
    /// records whose target or DC is no longer provisioned are dropped.
    pub fn restore_monitors(&mut self, records: Vec<MonitorRecord>) {
        for record in records {
            let target_known = match record.key.kind {
                MonitorKind::Group => self.subscribers.group(&record.key.target).is_some(),
                MonitorKind::User => self.subscribers.user(&record.key.target).is_some(),
            };
            if !target_known || !self.is_dispatcher(&record.key.dc) {
                self.write(StoreWrite::RemoveMonitor(record.key));
                continue;
            }
            if self.monitors.records.len() < MAX_MONITORS {
                self.monitors.records.insert(record.key, record.from_tcf);
            }
        }
    }

    /// Whether `dc` monitors group `gdn`.
    pub(super) fn monitors_group(&self, gdn: &Number, dc: &Number) -> bool {
        self.monitors.contains(MonitorKind::Group, gdn, dc)
    }

    /// The DCs monitoring group `gdn` and the TCF each is served by (its location when the
    /// group home has one, else the TCF its order came from).
    pub(super) fn group_monitors(&self, gdn: &Number) -> Vec<(Number, String)> {
        self.monitors
            .of(MonitorKind::Group, gdn)
            .map(|(dc, from)| {
                let serving = self
                    .locations
                    .get(dc)
                    .map_or_else(|| from.to_owned(), |location| location.serving.clone());
                (dc.clone(), serving)
            })
            .collect()
    }

    fn is_dispatcher(&self, user: &Number) -> bool {
        self.subscribers
            .user(user)
            .is_some_and(|user| user.kind == UserKind::Dispatcher)
    }

    /// A MESSAGE outside a dialog: handles it when its `Ptt-Extension` is `pttmonitor`;
    /// otherwise hands it back.
    pub(super) fn monitor_message(&mut self, now: Now, key: &TransactionKey, request: Message) -> Option<Message> {
        let parsed = match request.ptt_extension() {
            Ok(Some(extension)) if extension.value().eq_ignore_ascii_case(TOKEN) => Order::parse(&extension),
            _ => return Some(request),
        };
        let source = self.current_source?;
        match self.network.tcf_at(source).map(|tcf| tcf.name.clone()) {
            Some(peer) => self.monitor_from_peer(now, key, &request, source, peer, parsed),
            None => self.monitor_from_terminal(now, key, &request, source, parsed),
        }
        None
    }

    /// At the DC's serving TCF: the DC's own order.
    fn monitor_from_terminal(
        &mut self,
        now: Now,
        key: &TransactionKey,
        request: &Message,
        source: SocketAddr,
        parsed: Result<Order, &'static str>,
    ) {
        // Who sends is checked first: a stranger learns nothing about our users.
        let Some(dc) = self.registered_sender(request, source) else {
            self.respond(now, key, request, 403, "Forbidden (not registered here)", &[]);
            return;
        };
        if !self.is_dispatcher(&dc) {
            self.respond(now, key, request, 403, "Forbidden (not a dispatcher)", &[]);
            return;
        }
        let mut order = match parsed {
            Ok(order) => order,
            Err(reason) => {
                self.respond(now, key, request, 400, reason, &[]);
                return;
            }
        };
        if request_user(request).is_some_and(|user| user != order.target) {
            self.respond(
                now,
                key,
                request,
                400,
                "Bad Request (Request-URI and target differ)",
                &[],
            );
            return;
        }
        // The DC is the sender, whatever it wrote.
        order.dc = Some(dc.clone());
        let Some(next) = self.monitor_next_hop(&order) else {
            self.respond(now, key, request, 404, "Not Found", &[]);
            return;
        };
        let me = self.config.name.clone();
        if next == me {
            self.monitor_at_target(now, key, request, source, &order, &dc, &me);
            return;
        }
        self.monitor_relay(now, key, request, source, &order, &next, None);
    }

    /// The TCF an order for `order.target` goes to from the DC's TCF: the group's or the
    /// user's home (`None`: unknown target).
    fn monitor_next_hop(&self, order: &Order) -> Option<String> {
        match order.kind {
            MonitorKind::Group => {
                self.subscribers.group(&order.target)?;
                self.network.home_of_group(&order.target).map(|tcf| tcf.name.clone())
            }
            MonitorKind::User => {
                self.subscribers.user(&order.target)?;
                self.network.home_of_user(&order.target).map(|tcf| tcf.name.clone())
            }
        }
    }

    /// TC2: an order relayed by a DC's TCF (at the group or user's home) or by the user's home
    /// (at the user's serving TCF).
    fn monitor_from_peer(
        &mut self,
        now: Now,
        key: &TransactionKey,
        request: &Message,
        source: SocketAddr,
        peer: String,
        parsed: Result<Order, &'static str>,
    ) {
        let order = match parsed {
            Ok(order) => order,
            Err(reason) => {
                self.respond(now, key, request, 400, reason, &[]);
                return;
            }
        };
        let Some(dc) = order.dc.clone() else {
            self.respond(now, key, request, 400, "Bad Request (DC)", &[]);
            return;
        };
        if !self.is_dispatcher(&dc) {
            self.respond(now, key, request, 403, "Forbidden (not a dispatcher)", &[]);
            return;
        }
        let Some(home) = self.monitor_next_hop(&order) else {
            self.respond(now, key, request, 404, "Not Found", &[]);
            return;
        };
        if home == self.config.name {
            self.monitor_at_target(now, key, request, source, &order, &dc, &peer);
        } else if order.kind == MonitorKind::User && home == peer {
            // At the user's serving TCF, from its home: it records the TCF serving the DC
            // (where the DC's monitoring sessions go), else the home.
            let dc_tcf = order
                .dc_tcf
                .clone()
                .filter(|name| self.network.tcf(name).is_some())
                .unwrap_or(peer);
            self.monitor_record(now, key, request, &order.key(&dc), order.action, &dc_tcf);
        } else {
            self.respond(now, key, request, 404, "Not Found (not the target's home)", &[]);
        }
    }

    /// At the target's home (group home or user's home): the order from `from_tcf`.
    #[allow(clippy::too_many_arguments)]
    fn monitor_at_target(
        &mut self,
        now: Now,
        key: &TransactionKey,
        request: &Message,
        source: SocketAddr,
        order: &Order,
        dc: &Number,
        from_tcf: &str,
    ) {
        let monitor = order.key(dc);
        if order.kind == MonitorKind::Group {
            self.monitor_record(now, key, request, &monitor, order.action, from_tcf);
            return;
        }
        // F-MON-02: on to the user's serving TCF when that is a peer.
        let serving = self
            .registrations
            .get(&order.target)
            .map(|registration| registration.serving.clone())
            .filter(|serving| *serving != self.config.name);
        match serving {
            None => self.monitor_record(now, key, request, &monitor, order.action, from_tcf),
            Some(serving) => {
                let record = Some((monitor, order.action, from_tcf.to_owned()));
                let order = Order {
                    dc_tcf: Some(from_tcf.to_owned()),
                    ..order.clone()
                };
                self.monitor_relay(now, key, request, source, &order, &serving, record);
            }
        }
    }

    /// Records an order here and answers it (`200`, or `503` when full); at a group home the
    /// running call follows.
    fn monitor_record(
        &mut self,
        now: Now,
        key: &TransactionKey,
        request: &Message,
        monitor: &MonitorKey,
        action: Action,
        from_tcf: &str,
    ) {
        let Ok(write) = self.monitors.apply(monitor, action, from_tcf) else {
            self.respond(
                now,
                key,
                request,
                503,
                "Service Unavailable (too many monitorings)",
                &[],
            );
            return;
        };
        let Some(write) = write else {
            self.respond(now, key, request, 200, "OK", &[]);
            return;
        };
        // Written before the answer (the driver answers once the row is on disk).
        self.write(write);
        self.event(TcfEvent::MonitorChanged {
            key: monitor.clone(),
            monitoring: action == Action::Start,
        });
        self.respond(now, key, request, 200, "OK", &[]);
        self.monitor_follow(now, monitor, action);
    }

    /// After a change here: at a group home the group's running call follows (the DC joins it
    /// as a listener, or leaves it).
    fn monitor_follow(&mut self, now: Now, monitor: &MonitorKey, action: Action) {
        let group_home = monitor.kind == MonitorKind::Group
            && self
                .network
                .home_of_group(&monitor.target)
                .is_some_and(|home| home.name == self.config.name);
        if group_home {
            match action {
                Action::Start => self.monitoring_started(now, &monitor.target),
                Action::Stop => self.monitoring_stopped(now, &monitor.target, &monitor.dc),
            }
        }
        if monitor.kind == MonitorKind::User {
            match action {
                // The user's calls running here reach the DC at once.
                Action::Start => {
                    for call in self.monitored_calls_of(&monitor.target) {
                        self.tap_call(now, call, Some(&monitor.dc));
                    }
                }
                Action::Stop => self.untap(now, |tap| tap.user == monitor.target && tap.dc == monitor.dc),
            }
        }
    }

    /// Relays `order` to the TCF `next`, answering the upstream with its answer.
    #[allow(clippy::too_many_arguments)]
    fn monitor_relay(
        &mut self,
        now: Now,
        key: &TransactionKey,
        request: &Message,
        source: SocketAddr,
        order: &Order,
        next: &str,
        record: Option<(MonitorKey, Action, String)>,
    ) {
        let Some(address) = self.network.tcf(next).map(|tcf| tcf.sip) else {
            self.respond(now, key, request, 404, "Not Found", &[]);
            return;
        };
        if self.peer_is_down(next) {
            self.respond(
                now,
                key,
                request,
                503,
                "Service Unavailable (next TCF unreachable)",
                &[],
            );
            return;
        }
        let Some(dc) = order.dc.clone() else { return };
        let relay = Relay {
            server: key.clone(),
            request: request.clone(),
            source,
            record,
        };
        let uri = concat(&["sip:", order.target.as_str(), "@", &address.to_string()]);
        if self
            .monitor_send(
                now,
                &uri,
                &dc,
                order.render(),
                address,
                Pending::Monitor(Box::new(relay)),
            )
            .is_none()
        {
            self.respond(now, key, request, 500, "Server Internal Error", &[]);
        }
    }

    /// The downstream answered a relayed order (or did not: `408`): record it here on success,
    /// and answer the upstream likewise.
    pub(super) fn monitor_answered(&mut self, now: Now, relay: Relay, status: u16, response: Option<Message>) {
        let Relay {
            server,
            request,
            source,
            record,
        } = relay;
        // The responses below answer the upstream's request, which came from `source`.
        let handling = self.current_source.replace(source);
        match status {
            200..=299 => match record {
                Some((monitor, action, from_tcf)) => {
                    self.monitor_record(now, &server, &request, &monitor, action, &from_tcf);
                }
                None => self.respond(now, &server, &request, 200, "OK", &[]),
            },
            408 => self.respond(
                now,
                &server,
                &request,
                408,
                "Request Timeout (next TCF did not answer)",
                &[],
            ),
            status => {
                let reason = response
                    .as_ref()
                    .and_then(|response| response.reason_phrase())
                    .map(|reason| String::from_utf8_lossy(reason).into_owned())
                    .unwrap_or_else(|| "Refused by the next TCF".to_owned());
                self.respond(now, &server, &request, status, &reason, &[]);
            }
        }
        self.current_source = handling;
    }

    /// At the user's home, the user (re-)registered through the peer `serving`: that TCF is
    /// told of every DC monitoring the user (fire and forget), whether the user moved there or
    /// its copy there had lapsed.
    pub(super) fn monitor_registered(&mut self, now: Now, user: &Number, serving: &str) {
        let dcs: Vec<(Number, String)> = self
            .monitors
            .of(MonitorKind::User, user)
            .map(|(dc, from)| (dc.clone(), from.to_owned()))
            .collect();
        if dcs.is_empty() || self.peer_is_down(serving) {
            return;
        }
        let Some(address) = self.network.tcf(serving).map(|tcf| tcf.sip) else {
            return;
        };
        let uri = concat(&["sip:", user.as_str(), "@", &address.to_string()]);
        for (dc, dc_tcf) in dcs {
            let order = Order {
                kind: MonitorKind::User,
                target: user.clone(),
                action: Action::Start,
                dc: Some(dc.clone()),
                dc_tcf: Some(dc_tcf),
            };
            self.monitor_send(now, &uri, &dc, order.render(), address, Pending::FireAndForget);
        }
    }

    /// A terminal's binding here ended: a serving TCF's copies of its monitorings go with it
    /// (the user's home keeps its own).
    pub(super) fn monitor_unbound(&mut self, user: &Number) {
        let home_here = self
            .network
            .home_of_user(user)
            .is_some_and(|home| home.name == self.config.name);
        if home_here {
            return;
        }
        let gone: Vec<MonitorKey> = self
            .monitors
            .records
            .keys()
            .filter(|key| key.kind == MonitorKind::User && key.target == *user)
            .cloned()
            .collect();
        for key in gone {
            self.monitors.records.remove(&key);
            self.write(StoreWrite::RemoveMonitor(key.clone()));
            self.event(TcfEvent::MonitorChanged { key, monitoring: false });
        }
    }

    /// Sends a monitoring order on behalf of `dc`.
    fn monitor_send(
        &mut self,
        now: Now,
        uri: &str,
        dc: &Number,
        extension: String,
        destination: SocketAddr,
        pending: Pending,
    ) -> Option<TransactionKey> {
        self.send_message_as(now, dc.as_str(), uri, extension, None, destination, pending)
    }
}

/// `calltype` of a monitoring session (F-MON-02): a DC's listen-only copy of a user's call.
pub(super) const MONITOR_CALLTYPE: &str = "8";

/// The offer to a DC: the call's formats (as numbered in the call), at the tap leg, `sendonly`.
fn tap_offer(call_offer: &Sdp, leg: &LegInfo) -> Option<Sdp> {
    let anchored = sdp::rewrite_connection(
        call_offer,
        leg.local_rtp.ip(),
        leg.local_rtp.port(),
        Some(leg.local_rtcp.port()),
    );
    let text = String::from_utf8(anchored.to_bytes()).ok()?;
    let mut out = String::with_capacity(text.len() + 16);
    let mut placed = false;
    let mut in_audio = false;
    for line in text.split("\r\n").filter(|line| !line.is_empty()) {
        if matches!(line, "a=sendrecv" | "a=sendonly" | "a=recvonly" | "a=inactive") {
            continue;
        }
        if line.starts_with("m=") {
            if in_audio && !placed {
                out.push_str("a=sendonly\r\n");
                placed = true;
            }
            in_audio = line.starts_with("m=audio ") && !line.starts_with("m=audio 0 ");
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    if in_audio && !placed {
        out.push_str("a=sendonly\r\n");
    }
    sdp::parse(out.as_bytes()).ok()
}

impl Tcf {
    /// A single call anchored here was answered: every DC monitoring a user it serves here
    /// gets a monitoring session of it.
    pub(super) fn monitor_call_answered(&mut self, now: Now, call: u64) {
        if !self.monitors.records.keys().any(|key| key.kind == MonitorKind::User) {
            return;
        }
        self.tap_call(now, call, None);
    }

    /// A call is ending: its monitoring sessions end too (before its bridge goes).
    pub(super) fn monitor_call_ended(&mut self, now: Now, call: u64) {
        if self.monitors.taps.iter().any(|tap| tap.call == call) {
            self.untap(now, |tap| tap.call == call);
        }
    }

    /// Sets up the monitoring sessions of `call` (of every monitoring DC, or only of `only`).
    pub(super) fn tap_call(&mut self, now: Now, call: u64, only: Option<&Number>) {
        let Some((bridge, offer, users)) = self.monitored_call(call) else {
            return;
        };
        for user in users {
            let dcs: Vec<(Number, String)> = self
                .monitors
                .of(MonitorKind::User, &user)
                .filter(|(dc, _)| only.map_or(true, |only| only == *dc))
                .map(|(dc, dc_tcf)| (dc.clone(), dc_tcf.to_owned()))
                .collect();
            for (dc, dc_tcf) in dcs {
                let exists = self.monitors.taps.iter().any(|tap| tap.call == call && tap.dc == dc);
                if !exists && self.monitors.taps.len() < MAX_TAPS_NODE {
                    self.tap_start(now, call, bridge, &offer, &user, &dc, &dc_tcf);
                }
            }
        }
    }

    /// INVITEs `dc` (through `dc_tcf`, its serving TCF) to listen to `call` through a new tap leg.
    #[allow(clippy::too_many_arguments)]
    fn tap_start(
        &mut self,
        now: Now,
        call: u64,
        bridge: crate::media::api::BridgeId,
        call_offer: &Sdp,
        user: &Number,
        dc: &Number,
        dc_tcf: &str,
    ) {
        let (uri, destination, stage) = if dc_tcf == self.config.name {
            let Some(binding) = self.bindings.get(dc) else { return };
            let uri = binding.contact.trim_matches(|c| c == '<' || c == '>').to_owned();
            (uri, binding.address, None)
        } else {
            let Some(address) = self.network.tcf(dc_tcf).map(|tcf| tcf.sip) else {
                return;
            };
            if self.peer_is_down(dc_tcf) {
                return;
            }
            let host = crate::sip::builder::socket_addr_text(address);
            (
                concat(&["sip:", dc.as_str(), "@", &host]),
                address,
                Some("callee-serving"),
            )
        };
        let spec = LegSpec {
            tap: true,
            ..LegSpec::default()
        };
        // A full bridge (four taps) or no ports: this DC does not hear this call.
        let Ok(leg) = self.media.add_leg(bridge, spec) else {
            tracing::debug!(call, %dc, "no tap leg for a monitoring session");
            return;
        };
        let Some(offer) = tap_offer(call_offer, &leg) else {
            self.media.remove_leg(leg.id);
            return;
        };
        let priority = self.subscribers.user(user).map_or(1, |user| user.priority);
        let mut extension = String::with_capacity(120);
        extension.push_str("pttcall;calltype=");
        extension.push_str(MONITOR_CALLTYPE);
        extension.push_str(";priority=");
        extension.push_str(itoa::Buffer::new().format(priority));
        extension.push_str(";callerUDN=");
        extension.push_str(user.as_str());
        extension.push_str(";calleeUDN=");
        extension.push_str(dc.as_str());
        match stage {
            Some(stage) => {
                extension.push_str(";stage=");
                extension.push_str(stage);
            }
            None => extension.push_str(";answermode=direct"),
        }
        let to = concat(&["<", &uri, ">"]);
        let sent = self
            .new_invite(&uri, &to, user, &extension, Bytes::from(offer.to_bytes()))
            .and_then(|(key, request)| {
                self.layer
                    .send_request(
                        now.instant,
                        key.clone(),
                        TxMethod::Invite,
                        request.to_bytes(),
                        destination,
                        false,
                    )
                    .ok()
                    .map(|_| (key, request))
            });
        let Some((client, request)) = sent else {
            self.media.remove_leg(leg.id);
            return;
        };
        self.monitors
            .sent
            .insert(client.clone(), TapSent::Invite(Box::new(request), destination));
        self.monitors.taps.push(Tap {
            call,
            user: user.clone(),
            dc: dc.clone(),
            leg,
            client,
            offer,
            destination,
            dialog: None,
        });
    }

    /// Ends the monitoring sessions `which` selects: BYE (answered) or CANCEL (not yet), and
    /// their tap legs go. The calls are not touched.
    fn untap(&mut self, now: Now, which: impl Fn(&Tap) -> bool) {
        let (gone, kept): (Vec<Tap>, Vec<Tap>) = std::mem::take(&mut self.monitors.taps).into_iter().partition(&which);
        self.monitors.taps = kept;
        for mut tap in gone {
            self.media.remove_leg(tap.leg.id);
            match tap.dialog.as_mut() {
                Some(dialog) => self.tap_bye(now, dialog, tap.destination),
                None => {
                    let invite = match self.monitors.sent.get(&tap.client) {
                        Some(TapSent::Invite(invite, _)) => Some(invite.clone()),
                        _ => None,
                    };
                    if let Some(cancel) = invite.and_then(|invite| super::call::cancel_for(&invite)) {
                        if let Ok(key) = self.layer.send_cancel(now.instant, &tap.client, cancel) {
                            self.monitors.sent.insert(key, TapSent::Other);
                        }
                    }
                }
            }
        }
    }

    /// Sends BYE in a monitoring session's dialog.
    fn tap_bye(&mut self, now: Now, dialog: &mut Dialog, destination: SocketAddr) {
        let branch = concat(&["z9hG4bK", &self.token()]);
        let sent_by = self.address_text.clone();
        let Ok(builder) = dialog.request(Method::Bye, &branch, &sent_by, "UDP") else {
            return;
        };
        let Ok(bye) = builder.raw_header("Ptt-Extension", "pttrelease;cause=16").build_bytes() else {
            return;
        };
        dialog.terminate();
        let Ok(key) = TransactionKey::new(&branch, &sent_by, TxMethod::from_token("BYE")) else {
            return;
        };
        let sent = self.layer.send_request(
            now.instant,
            key.clone(),
            TxMethod::from_token("BYE"),
            bye,
            destination,
            false,
        );
        if sent.is_ok() {
            self.monitors.sent.insert(key, TapSent::Other);
        }
    }

    /// ACKs a 2xx of a monitoring session's INVITE.
    fn tap_ack(&mut self, dialog: &Dialog, response: &Message, destination: SocketAddr) {
        let cseq = response.cseq().map_or(1, |cseq| cseq.number);
        let branch = concat(&["z9hG4bK", &self.token()]);
        if let Ok(ack) = dialog.ack_for(cseq, &branch, &self.address_text, "UDP").build_bytes() {
            self.outputs.push_back(Output::Transmit {
                destination,
                bytes: ack,
            });
        }
    }

    /// A response (or a timeout: `408`, no message) to a monitoring session's request.
    pub(super) fn tap_response(&mut self, now: Now, key: TransactionKey, status: u16, response: Option<Message>) {
        let Some(TapSent::Invite(invite, destination)) = self.monitors.sent.get(&key).cloned() else {
            return;
        };
        if status < 200 {
            return;
        }
        let index = self.monitors.taps.iter().position(|tap| tap.client == key);
        match (status, response, index) {
            (200..=299, Some(response), Some(index)) => {
                if let Some(dialog) = self.monitors.taps.get(index).and_then(|tap| tap.dialog.clone()) {
                    // A retransmitted 2xx: ACKed again.
                    self.tap_ack(&dialog, &response, destination);
                    return;
                }
                let Ok(dialog) = Dialog::uac(&invite, &response) else {
                    return;
                };
                self.tap_ack(&dialog, &response, destination);
                let negotiated = self.monitors.taps.get(index).and_then(|tap| {
                    sdp::parse(response.body())
                        .ok()
                        .and_then(|answer| sdp::parse_answer(&tap.offer, &answer).ok())
                });
                let Some(tap) = self.monitors.taps.get_mut(index) else {
                    return;
                };
                tap.dialog = Some(dialog);
                let leg = tap.leg.id;
                let (user, dc) = (tap.user.clone(), tap.dc.clone());
                let updated = negotiated.and_then(|negotiated| {
                    let spec = LegSpec {
                        remote: negotiated.remote_rtp,
                        remote_rtcp: negotiated.remote_rtcp,
                        rtcp_mux: negotiated.rtcp_mux,
                        tap: true,
                        ..LegSpec::default()
                    };
                    self.media.update_leg(leg, spec).ok()
                });
                if updated.is_none() {
                    // No usable answer: the session ends; the call goes on.
                    self.untap(now, |tap| tap.client == key);
                    return;
                }
                tracing::debug!(%user, %dc, "monitoring session answered");
            }
            (200..=299, Some(response), None) => {
                // The session ended before its answer: ACK and BYE.
                if let Ok(mut dialog) = Dialog::uac(&invite, &response) {
                    self.tap_ack(&dialog, &response, destination);
                    self.tap_bye(now, &mut dialog, destination);
                }
            }
            (_, _, Some(index)) => {
                // Refused or unanswered: no session; the call goes on.
                let tap = self.monitors.taps.remove(index);
                self.media.remove_leg(tap.leg.id);
                tracing::debug!(user = %tap.user, dc = %tap.dc, status, "monitoring session refused");
            }
            _ => {}
        }
    }

    /// An in-dialog request of a monitoring session (from the DC's side): BYE ends it (the call
    /// goes on); anything else is refused, the DC only listens. Not ours: handed back.
    pub(super) fn tap_in_dialog(&mut self, now: Now, key: TransactionKey, request: Message) -> Option<Message> {
        if self.monitors.taps.is_empty() {
            return Some(request);
        }
        let id = DialogId::of_received(&request)?;
        let Some(index) = self
            .monitors
            .taps
            .iter()
            .position(|tap| tap.dialog.as_ref().is_some_and(|dialog| *dialog.id() == id))
        else {
            return Some(request);
        };
        if let Some(dialog) = self.monitors.taps.get_mut(index).and_then(|tap| tap.dialog.as_mut()) {
            if let Err(error) = dialog.check_request(&request) {
                let (status, reason) = error.status().unwrap_or((481, "Call/Transaction Does Not Exist"));
                self.respond(now, &key, &request, status, reason, &[]);
                return None;
            }
        }
        if request.method() == Some(Method::Bye) {
            let tap = self.monitors.taps.remove(index);
            self.media.remove_leg(tap.leg.id);
            self.respond(now, &key, &request, 200, "OK", &[]);
        } else {
            self.respond(now, &key, &request, 403, "Forbidden (monitoring only)", &[]);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    //! The monitoring records, the order's parser, and the relay between two cores in
    //! simulated time.
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::sip::headers::PttExtension;

    fn n(text: &str) -> Number {
        Number::parse(text).unwrap()
    }

    fn key(kind: MonitorKind, target: &str, dc: &str) -> MonitorKey {
        MonitorKey {
            kind,
            target: n(target),
            dc: n(dc),
        }
    }

    #[test]
    fn records_start_and_stop_with_one_write_per_change() {
        let mut monitors = Monitors::default();
        let group = key(MonitorKind::Group, "2000", "9100");
        let write = monitors.apply(&group, Action::Start, "b").unwrap();
        assert_eq!(
            write,
            Some(StoreWrite::PutMonitor(MonitorRecord {
                key: group.clone(),
                from_tcf: "b".to_owned()
            }))
        );
        assert_eq!(monitors.apply(&group, Action::Start, "b").unwrap(), None, "no change");
        assert!(
            monitors.apply(&group, Action::Start, "c").unwrap().is_some(),
            "moved DC"
        );
        // A user of the same number is another relation.
        let user = key(MonitorKind::User, "2000", "9100");
        assert!(!monitors.contains(MonitorKind::User, &n("2000"), &n("9100")));
        assert_eq!(monitors.apply(&user, Action::Stop, "b").unwrap(), None);
        let gdn = n("2000");
        let of: Vec<(&Number, &str)> = monitors.of(MonitorKind::Group, &gdn).collect();
        assert_eq!(of, vec![(&n("9100"), "c")]);
        assert_eq!(
            monitors.apply(&group, Action::Stop, "b").unwrap(),
            Some(StoreWrite::RemoveMonitor(group.clone()))
        );
        assert!(monitors.records().is_empty());
        assert_eq!(group.store_key(), "group/2000/9100");
        assert_eq!(user.store_key(), "user/2000/9100");
    }

    #[test]
    fn records_are_bounded() {
        let mut monitors = Monitors::default();
        for index in 0..MAX_MONITORS {
            let dc = format!("{}", 100_000 + index);
            monitors
                .apply(&key(MonitorKind::Group, "2000", &dc), Action::Start, "a")
                .unwrap();
        }
        let one_more = key(MonitorKind::Group, "2001", "9100");
        assert_eq!(monitors.apply(&one_more, Action::Start, "a"), Err(Full::Full));
        // Stopping and refreshing still work when full.
        let first = key(MonitorKind::Group, "2000", "100000");
        assert_eq!(
            monitors.apply(&first, Action::Start, "b").map(|w| w.is_some()),
            Ok(true)
        );
        assert!(monitors.apply(&first, Action::Stop, "b").unwrap().is_some());
    }

    fn parse(value: &str) -> Result<Order, &'static str> {
        let extension = PttExtension::parse(value.as_bytes()).map_err(|_| "unparsable")?;
        Order::parse(&extension)
    }

    #[test]
    fn a_tap_offer_is_the_calls_formats_at_the_tap_leg_sendonly() {
        let call_offer = sdp::parse(
            b"v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n\
              m=audio 4000 RTP/AVP 96 0 101\r\na=rtpmap:96 AMR-WB/16000\r\na=rtpmap:0 PCMU/8000\r\n\
              a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n\
              m=video 5000 RTP/AVP 97\r\na=rtpmap:97 H264/90000\r\n",
        )
        .unwrap();
        let leg = LegInfo {
            id: crate::media::api::LegId(7),
            local_rtp: "127.0.0.1:30000".parse().unwrap(),
            local_rtcp: "127.0.0.1:30001".parse().unwrap(),
            ssrc: 1,
        };
        let offer = tap_offer(&call_offer, &leg).unwrap();
        let text = String::from_utf8(offer.to_bytes()).unwrap();
        assert!(text.contains("m=audio 30000 RTP/AVP 96 0 101\r\n"), "{text}");
        assert!(text.contains("c=IN IP4 127.0.0.1\r\n"), "{text}");
        assert_eq!(text.matches("a=sendonly").count(), 1, "{text}");
        assert!(!text.contains("a=sendrecv"), "{text}");
        // The direction belongs to the audio section, before the disabled video one.
        let audio = text.find("m=audio").unwrap();
        let video = text.find("m=video 0").unwrap();
        let direction = text.find("a=sendonly").unwrap();
        assert!(audio < direction && direction < video, "{text}");
    }

    #[test]
    fn orders_parse_defensively_and_render_back() {
        let order = parse("pttmonitor;GDN=2300;action=START;DC=9100").unwrap();
        assert_eq!(
            order,
            Order {
                kind: MonitorKind::Group,
                target: n("2300"),
                action: Action::Start,
                dc: Some(n("9100")),
                dc_tcf: None,
            }
        );
        assert_eq!(order.render(), "pttmonitor;GDN=2300;action=start;DC=9100");
        let order = parse("pttmonitor;UDN=1300;action=stop").unwrap();
        assert_eq!(order.render(), "pttmonitor;UDN=1300;action=stop");
        let order = parse("pttmonitor;UDN=1300;action=start;DC=9100;DCTCF=tcf-a").unwrap();
        assert_eq!(order.dc_tcf.as_deref(), Some("tcf-a"));
        assert_eq!(order.render(), "pttmonitor;UDN=1300;action=start;DC=9100;DCTCF=tcf-a");
        // An oversized DCTCF is no DCTCF (an unknown name is ignored where used).
        let long = format!("pttmonitor;UDN=1300;action=start;DCTCF={}", "x".repeat(65));
        assert_eq!(parse(&long).unwrap().dc_tcf, None);
        for bad in [
            "pttmonitor",
            "pttmonitor;action=start",
            "pttmonitor;GDN=2300",
            "pttmonitor;GDN=2300;action=listen",
            "pttmonitor;GDN=2300;action=",
            "pttmonitor;GDN=;action=start",
            "pttmonitor;GDN=23a;action=start",
            "pttmonitor;UDN=1300;GDN=2300;action=start",
            "pttmonitor;UDN=1300;action=start;DC=x",
        ] {
            assert!(parse(bad).is_err(), "{bad} is refused");
        }
    }

    // ---- two cores: a DC's order relayed b → a, in simulated time ----------------------------

    const NETWORK: &str = "[[tcf]]\nname = \"a\"\nsip = \"127.0.0.1:5801\"\nusers = [\"1000-1099\"]\ngroups = [\"2000\"]\nsecret = \"sa\"\n\
                           [[tcf]]\nname = \"b\"\nsip = \"127.0.0.1:5802\"\nusers = [\"1100-1199\", \"9100\"]\nsecret = \"sb\"\n";
    const SUBSCRIBERS: &str =
        "[[user]]\nnumber = \"1000-1001\"\npassword = \"pw\"\n[[user]]\nnumber = \"1100-1101\"\npassword = \"pw\"\n\
                               [[user]]\nnumber = \"9100\"\npassword = \"pw\"\nkind = \"dispatcher\"\n\
                               [[group]]\nnumber = \"2000\"\nmembers = [\"1000-1001\"]\n";
    const DC: &str = "127.0.0.1:7200";
    const USER: &str = "127.0.0.1:7201";

    struct Pair {
        a: Tcf,
        b: Tcf,
        start: Instant,
        wall: SystemTime,
        a_silent: bool,
    }

    impl Pair {
        /// Group 2000 and users 10xx homed on a; DC 9100 and user 1100 homed on and served by b.
        fn new() -> Pair {
            let (start, wall) = (Instant::now(), SystemTime::now());
            let network = Arc::new(Network::from_toml("n", NETWORK).unwrap());
            let subscribers = Arc::new(Subscribers::from_toml("s", SUBSCRIBERS).unwrap());
            let core = |name: &str| {
                let sip = crate::config::Config::from_toml("[sip]\nrealm = \"test\"\nt1_ms = 100\n")
                    .unwrap()
                    .sip;
                let config = TcfConfig::new(name, sip, [7; 32]).unwrap();
                Tcf::new(
                    config,
                    Arc::clone(&network),
                    Arc::clone(&subscribers),
                    Now { instant: start, wall },
                    1,
                )
                .unwrap()
            };
            let (a, mut b) = (core("a"), core("b"));
            let unix = wall.duration_since(UNIX_EPOCH).unwrap().as_secs();
            let binding = |user: &str, address: &str| Binding {
                user: n(user),
                contact: format!("<sip:{user}@{address}>"),
                address: address.parse().unwrap(),
                expires_at: unix + 3600,
            };
            b.restore(
                vec![binding("9100", DC), binding("1100", USER)],
                vec![],
                vec![],
                Now { instant: start, wall },
            );
            Pair {
                a,
                b,
                start,
                wall,
                a_silent: false,
            }
        }

        fn at(&self, millis: u64) -> Now {
            Now {
                instant: self.start + Duration::from_millis(millis),
                wall: self.wall + Duration::from_millis(millis),
            }
        }

        /// Moves datagrams between the cores until they are quiet; returns the final statuses
        /// sent to terminals, the store writes and the events.
        fn run(&mut self, millis: u64) -> (Vec<(SocketAddr, u16)>, Vec<StoreWrite>, Vec<TcfEvent>) {
            let now = self.at(millis);
            let (mut statuses, mut writes, mut events) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..100 {
                let mut moved = false;
                for from_a in [true, false] {
                    let (from, to) = if from_a {
                        (&mut self.a, &mut self.b)
                    } else {
                        (&mut self.b, &mut self.a)
                    };
                    let from_address = from.address();
                    let mut datagrams = Vec::new();
                    while let Some(output) = from.poll_output() {
                        match output {
                            Output::Transmit { destination, bytes } => datagrams.push((destination, bytes)),
                            Output::Store(write) => writes.push(write),
                            Output::Event(event) => events.push(event),
                        }
                    }
                    for (destination, bytes) in datagrams {
                        if destination == to.address() {
                            if !self.a_silent || from_a {
                                moved = true;
                                to.handle_datagram(now, from_address, bytes);
                            }
                        } else if let Some(status) = Message::parse_datagram(bytes).unwrap().status() {
                            if status >= 200 {
                                statuses.push((destination, status));
                            }
                        }
                    }
                }
                if !moved {
                    break;
                }
            }
            (statuses, writes, events)
        }

        fn terminal_sends(&mut self, millis: u64, from: &str, address: &str, uri_user: &str, extension: &str) {
            let text = format!(
                "MESSAGE sip:{uri_user}@127.0.0.1:5802 SIP/2.0\r\nVia: SIP/2.0/UDP {address};branch=z9hG4bK{millis}{from};rport\r\n\
                 Max-Forwards: 70\r\nFrom: <sip:{from}@127.0.0.1:5802>;tag=t\r\nTo: <sip:{uri_user}@127.0.0.1:5802>\r\n\
                 Call-ID: m{millis}{from}@t\r\nCSeq: 1 MESSAGE\r\nPtt-Extension: {extension}\r\nContent-Length: 0\r\n\r\n"
            );
            let now = self.at(millis);
            self.b
                .handle_datagram(now, address.parse().unwrap(), Bytes::copy_from_slice(text.as_bytes()));
        }
    }

    #[test]
    fn a_group_order_is_relayed_to_the_group_home_which_records_it() {
        let mut pair = Pair::new();
        pair.terminal_sends(0, "9100", DC, "2000", "pttmonitor;GDN=2000;action=start");
        let (statuses, writes, events) = pair.run(0);
        let address: SocketAddr = DC.parse().unwrap();
        assert_eq!(statuses, vec![(address, 200)]);
        let record = MonitorRecord {
            key: key(MonitorKind::Group, "2000", "9100"),
            from_tcf: "b".to_owned(),
        };
        assert_eq!(
            writes,
            vec![StoreWrite::PutMonitor(record.clone())],
            "only the home records"
        );
        assert_eq!(pair.a.monitors(), vec![record.clone()]);
        assert!(pair.b.monitors().is_empty());
        assert!(pair.a.monitors_group(&n("2000"), &n("9100")));
        assert!(events
            .iter()
            .any(|event| matches!(event, TcfEvent::MonitorChanged { monitoring: true, .. })));
        // Without a running call, the group home's listeners are known for the next one.
        assert_eq!(pair.a.group_monitors(&n("2000")), vec![(n("9100"), "b".to_owned())]);

        // A restored home knows it again; a record whose DC is no dispatcher any more goes.
        let mut restored = Pair::new();
        let stray = MonitorRecord {
            key: key(MonitorKind::Group, "2000", "1100"),
            from_tcf: "b".to_owned(),
        };
        restored.a.restore_monitors(vec![record.clone(), stray.clone()]);
        assert_eq!(restored.a.monitors(), vec![record]);
        let (_, writes, _) = restored.run(0);
        assert!(writes.contains(&StoreWrite::RemoveMonitor(stray.key)));

        // Stop: removed.
        pair.terminal_sends(10, "9100", DC, "2000", "pttmonitor;GDN=2000;action=stop");
        let (statuses, writes, _) = pair.run(10);
        assert_eq!(statuses, vec![(address, 200)]);
        assert_eq!(
            writes,
            vec![StoreWrite::RemoveMonitor(key(MonitorKind::Group, "2000", "9100"))]
        );
        assert!(pair.a.monitors().is_empty());
    }

    #[test]
    fn refusals_record_nothing() {
        let mut pair = Pair::new();
        let cases = [
            ("1100", USER, "2000", "pttmonitor;GDN=2000;action=start", 403),
            (
                "9100",
                "127.0.0.1:7299",
                "2000",
                "pttmonitor;GDN=2000;action=start",
                403,
            ),
            ("9100", DC, "2999", "pttmonitor;GDN=2999;action=start", 404),
            ("9100", DC, "1999", "pttmonitor;UDN=1999;action=start", 404),
            ("9100", DC, "2000", "pttmonitor;GDN=2000;action=go", 400),
            ("9100", DC, "2000", "pttmonitor;GDN=2000;UDN=1000;action=go", 400),
        ];
        for (index, (from, address, uri_user, extension, status)) in cases.into_iter().enumerate() {
            let millis = index as u64;
            pair.terminal_sends(millis, from, address, uri_user, extension);
            let (statuses, writes, _) = pair.run(millis);
            let address: SocketAddr = address.parse().unwrap();
            assert_eq!(statuses, vec![(address, status)], "{extension}");
            assert!(writes.is_empty(), "{extension}");
        }
    }

    #[test]
    fn an_order_to_a_silent_home_times_out_with_408() {
        let mut pair = Pair::new();
        pair.a_silent = true;
        pair.terminal_sends(0, "9100", DC, "1000", "pttmonitor;UDN=1000;action=start");
        let (statuses, _, _) = pair.run(0);
        assert!(statuses.is_empty(), "no answer yet");
        let mut status = None;
        for step in 1..=80 {
            let millis = step * 100;
            let now = pair.at(millis);
            pair.b.handle_timeout(now);
            let (statuses, _, _) = pair.run(millis);
            status = status.or(statuses.first().map(|(_, status)| *status));
        }
        assert_eq!(status, Some(408), "64·T1 without an answer");
        assert!(pair.b.monitors().is_empty() && pair.a.monitors().is_empty());
    }
}
