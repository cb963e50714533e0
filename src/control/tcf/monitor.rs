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
//! hang-up only takes it out of the call. Monitoring a user is recorded and relayed; the user's
//! call audio is not yet delivered to the DC (`docs/protocol.md`).
//!
//! Wire formats: `docs/protocol.md`, section "Monitoring (F-MON-01, F-MON-02)".

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::control::provisioning::UserKind;
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
        Ok(Order {
            kind,
            target,
            action,
            dc,
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

/// The user number in the From URI.
fn from_user(request: &Message) -> Option<Number> {
    let from = request.from().ok()?;
    Number::parse(from.uri().as_sip()?.user()?).ok()
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
        let sender = from_user(request);
        let registered = sender
            .as_ref()
            .and_then(|sender| self.bindings.get(sender))
            .is_some_and(|binding| binding.address == source);
        let Some(dc) = sender.filter(|_| registered) else {
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
            // At the user's serving TCF, from its home.
            self.monitor_record(now, key, request, &order.key(&dc), order.action, &peer);
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
                self.monitor_relay(now, key, request, source, order, &serving, record);
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
        let dcs: Vec<Number> = self
            .monitors
            .of(MonitorKind::User, user)
            .map(|(dc, _)| dc.clone())
            .collect();
        if dcs.is_empty() || self.peer_is_down(serving) {
            return;
        }
        let Some(address) = self.network.tcf(serving).map(|tcf| tcf.sip) else {
            return;
        };
        let uri = concat(&["sip:", user.as_str(), "@", &address.to_string()]);
        for dc in dcs {
            let order = Order {
                kind: MonitorKind::User,
                target: user.clone(),
                action: Action::Start,
                dc: Some(dc.clone()),
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
        let from = concat(&["<sip:", dc.as_str(), "@", &self.address_text, ">"]);
        let to = concat(&["<", uri, ">"]);
        let call_id = concat(&[&self.token(), "@", &self.config.name]);
        let tag = self.token();
        let headers = [("Ptt-Extension", extension), ("P-Asserted-Identity", from.clone())];
        self.send(
            now,
            Method::Message,
            uri,
            &to,
            &from,
            &call_id,
            &tag,
            1,
            &headers,
            destination,
            pending,
        )
    }
}
