//! Stun, kill and revive (F-SKR-01 … F-SKR-03): a dispatcher's order that disables a user's
//! terminal (or gives it back its service), carried DC's serving TCF → user's home → user's
//! serving TCF → terminal, and the terminal's result report carried back along the same path.
//!
//! # State
//!
//! Each node keeps an [`SkrState`] per user it holds one for. The user's home holds the
//! authoritative state and enforces it where calls and registrations pass through the home
//! (single calls on the caller and the callee side, REGISTER); the serving TCF holds a copy for
//! the terminals it serves and enforces it where only it sees the user (group-call set-up and
//! floor requests). Both are persisted; active is the absence of a row. A serving TCF's copy
//! lives as long as the user's binding there; whenever a stunned user registers through a peer
//! TCF, the home tells that TCF again (an order without `DC`).
//!
//! # Pending orders
//!
//! Every hop an order passes remembers, per target user, where the order came from and where it
//! went on to ([`OrderPath`]), so that the terminal's result report (F-SKR-03) retraces the
//! order's path, and a report that matches no order it sent gets `481`. These are kept in memory
//! only (a report after a restart of a hop is refused with `481`); a new order for the same user
//! replaces the previous one.
//!
//! Wire formats: `docs/protocol.md`, section "Stun, kill, revive".

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::control::provisioning::UserKind;
use crate::sip::headers::PttExtension;

use super::*;

/// A user's stun/kill state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkrState {
    /// Normal service.
    #[default]
    Active,
    /// Stunned: no calls placed or received, no group-call set-up, no floor, until revived.
    Stunned,
    /// Killed: stunned, and no registration either, until revived.
    Killed,
}

impl SkrState {
    /// The state after `order`: stun and kill disable, a revive restores service; a kill is
    /// undone only by a revive (a stun leaves a killed user killed).
    pub fn after(self, order: SkrOrder) -> SkrState {
        match (self, order) {
            (_, SkrOrder::Revive) => SkrState::Active,
            (_, SkrOrder::Kill) | (SkrState::Killed, SkrOrder::Stun) => SkrState::Killed,
            (_, SkrOrder::Stun) => SkrState::Stunned,
        }
    }

    /// The reason phrase of the `403` a user in this state gets for a call or floor request
    /// (`None`: active, allowed).
    pub fn barred(self) -> Option<&'static str> {
        match self {
            SkrState::Active => None,
            SkrState::Stunned => Some("Forbidden (stunned)"),
            SkrState::Killed => Some("Forbidden (killed)"),
        }
    }
}

/// A dispatcher's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SkrOrder {
    /// `pttstun`.
    Stun,
    /// `pttkill`.
    Kill,
    /// `pttrevive`.
    Revive,
}

impl SkrOrder {
    /// Its `Ptt-Extension` token.
    pub fn token(self) -> &'static str {
        match self {
            SkrOrder::Stun => "pttstun",
            SkrOrder::Kill => "pttkill",
            SkrOrder::Revive => "pttrevive",
        }
    }

    /// The order a token names (case-insensitive).
    pub fn from_token(token: &str) -> Option<SkrOrder> {
        [SkrOrder::Stun, SkrOrder::Kill, SkrOrder::Revive]
            .into_iter()
            .find(|order| token.eq_ignore_ascii_case(order.token()))
    }
}

/// A persisted state (table `skr_states`, keyed by the user number).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkrRecord {
    /// The user.
    pub user: Number,
    /// Its state (never active: active is the absence of a row).
    pub state: SkrState,
}

/// An order or a report as carried in `Ptt-Extension`:
/// `<token>;UDN=<user>[;DC=<dispatcher>][;result=<cause>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SkrMessage {
    order: SkrOrder,
    /// The target user (for a report: the user that reports).
    udn: Number,
    /// The ordering dispatcher (between TCFs).
    dc: Option<Number>,
    /// A report's result: 0 done, else a cause.
    result: Option<u16>,
}

impl SkrMessage {
    /// Reads the parameters of an extension whose token names `order`; `Err`: the reason
    /// phrase of the `400`.
    fn parse(order: SkrOrder, extension: &PttExtension<'_>) -> Result<SkrMessage, &'static str> {
        fn text<'a>(extension: &'a PttExtension<'_>, name: &str) -> Option<std::borrow::Cow<'a, [u8]>> {
            extension.param(name)
        }
        let number = |name: &str| {
            text(extension, name).map(|value| {
                std::str::from_utf8(&value)
                    .ok()
                    .and_then(|value| Number::parse(value).ok())
            })
        };
        let udn = match number("UDN") {
            Some(Some(udn)) => udn,
            _ => return Err("Bad Request (UDN)"),
        };
        let dc = match number("DC") {
            None => None,
            Some(Some(dc)) => Some(dc),
            Some(None) => return Err("Bad Request (DC)"),
        };
        let result = match text(extension, "result") {
            None => None,
            Some(value) => {
                let parsed = std::str::from_utf8(&value)
                    .ok()
                    .filter(|value| !value.is_empty() && value.bytes().all(|byte| byte.is_ascii_digit()))
                    .and_then(|value| value.parse::<u16>().ok());
                match parsed {
                    Some(result) => Some(result),
                    None => return Err("Bad Request (result)"),
                }
            }
        };
        Ok(SkrMessage { order, udn, dc, result })
    }

    /// The `Ptt-Extension` value.
    fn render(&self) -> String {
        let mut value = concat(&[self.order.token(), ";UDN=", self.udn.as_str()]);
        if let Some(dc) = &self.dc {
            value.push_str(";DC=");
            value.push_str(dc.as_str());
        }
        if let Some(result) = self.result {
            value.push_str(";result=");
            value.push_str(itoa::Buffer::new().format(result));
        }
        value
    }
}

/// Where an order came from: the report goes back there.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Origin {
    /// The DC that sent it, from this address (its binding here).
    Dc(SocketAddr),
    /// The TCF that sent it on.
    Peer(String),
}

/// Where an order went on to: the report must come from there.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Toward {
    /// A TCF.
    Peer(String),
    /// The terminal, at this address.
    Terminal(SocketAddr),
}

/// An order that passed this node and awaits the terminal's report.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OrderPath {
    id: u64,
    order: SkrOrder,
    dc: Number,
    origin: Origin,
    toward: Toward,
}

/// A DC's order relayed to the target's home (F-SKR-01): the DC's transaction stays open until
/// the home answers.
#[derive(Debug)]
pub(super) struct Relay {
    id: u64,
    server: TransactionKey,
    request: Message,
    /// Where the DC's request came from (for the response's Via).
    source: SocketAddr,
    target: Number,
}

/// The stun/kill state of one node.
#[derive(Debug, Default)]
pub(super) struct Skr {
    states: NetMap<Number, SkrState>,
    orders: NetMap<Number, OrderPath>,
    next_id: u64,
}

impl Skr {
    fn state(&self, user: &Number) -> SkrState {
        self.states.get(user).copied().unwrap_or_default()
    }

    /// Applies `order` to `user`; returns the new state and the store write that records it.
    fn apply(&mut self, user: &Number, order: SkrOrder) -> (SkrState, StoreWrite) {
        let state = self.state(user).after(order);
        let write = if state == SkrState::Active {
            self.states.remove(user);
            StoreWrite::RemoveSkrState(user.clone())
        } else {
            self.states.insert(user.clone(), state);
            StoreWrite::PutSkrState(SkrRecord {
                user: user.clone(),
                state,
            })
        };
        (state, write)
    }

    /// Records that an order for `target` passed here; returns its id.
    fn remember(&mut self, target: &Number, order: SkrOrder, dc: &Number, origin: Origin, toward: Toward) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        self.orders.insert(
            target.clone(),
            OrderPath {
                id,
                order,
                dc: dc.clone(),
                origin,
                toward,
            },
        );
        id
    }

    /// Takes the pending order a report from `from` about `user` answers (`None`: no such
    /// order: `481`).
    fn answered(&mut self, user: &Number, order: SkrOrder, from: &Toward) -> Option<OrderPath> {
        let path = self.orders.get(user)?;
        if path.order != order || &path.toward != from {
            return None;
        }
        self.orders.remove(user)
    }
}

impl Tcf {
    /// A user's stun/kill state at this node (as its home, or as a copy where it is served).
    pub fn skr_state(&self, user: &Number) -> SkrState {
        self.skr.state(user)
    }

    /// Restores the persisted stun/kill states after a restart (beside [`Tcf::restore`]).
    pub fn restore_skr(&mut self, records: Vec<SkrRecord>) {
        for record in records {
            if record.state != SkrState::Active {
                self.skr.states.insert(record.user, record.state);
            }
        }
    }

    /// `Some(reason)`: `user` may not call or take the floor (`403 <reason>`).
    pub(super) fn skr_barred(&self, user: &Number) -> Option<&'static str> {
        self.skr.state(user).barred()
    }

    /// Whether the home refuses `user`'s registration (killed).
    pub(super) fn skr_refuses_registration(&self, user: &Number) -> bool {
        self.skr.state(user) == SkrState::Killed
    }

    /// A MESSAGE outside a dialog: handles it when its `Ptt-Extension` is a stun, kill or revive
    /// order or report (or is malformed: `400`); otherwise hands it back.
    pub(super) fn skr_message(&mut self, now: Now, key: &TransactionKey, request: Message) -> Option<Message> {
        let parsed = match request.ptt_extension() {
            Ok(Some(extension)) => {
                SkrOrder::from_token(extension.value()).map(|order| SkrMessage::parse(order, &extension))
            }
            Ok(None) => None,
            Err(_) => {
                self.respond(now, key, &request, 400, "Bad Request (Ptt-Extension)", &[]);
                return None;
            }
        };
        let (Some(parsed), Some(source)) = (parsed, self.current_source) else {
            return Some(request);
        };
        match self.network.tcf_at(source).map(|tcf| tcf.name.clone()) {
            Some(peer) => self.skr_from_peer(now, key, &request, peer, parsed),
            None => self.skr_from_terminal(now, key, &request, source, parsed),
        }
        None
    }

    /// D interface: a DC's order (F-SKR-01 at the DC's TCF) or a terminal's report (F-SKR-03 at
    /// its serving TCF).
    fn skr_from_terminal(
        &mut self,
        now: Now,
        key: &TransactionKey,
        request: &Message,
        source: SocketAddr,
        parsed: Result<SkrMessage, &'static str>,
    ) {
        // Who sends is checked first: a stranger learns nothing about our users. A terminal
        // just killed (its binding gone) may still report on the order it was given.
        let sender = from_user(request);
        let registered = sender
            .as_ref()
            .and_then(|sender| self.bindings.get(sender))
            .is_some_and(|binding| binding.address == source);
        let given_order = sender
            .as_ref()
            .and_then(|sender| self.skr.orders.get(sender))
            .is_some_and(|path| path.toward == Toward::Terminal(source));
        let Some(sender) = sender.filter(|_| registered || given_order) else {
            self.respond(now, key, request, 403, "Forbidden (not registered here)", &[]);
            return;
        };
        let message = match parsed {
            Ok(message) => message,
            Err(reason) => {
                self.respond(now, key, request, 400, reason, &[]);
                return;
            }
        };
        if let Some(result) = message.result {
            if message.udn != sender {
                self.respond(now, key, request, 403, "Forbidden (a report names its sender)", &[]);
                return;
            }
            let Some(path) = self.skr.answered(&sender, message.order, &Toward::Terminal(source)) else {
                self.respond(
                    now,
                    key,
                    request,
                    481,
                    "Call/Transaction Does Not Exist (no order)",
                    &[],
                );
                return;
            };
            self.respond(now, key, request, 200, "OK", &[]);
            self.skr_report(now, path, &sender, result);
            return;
        }
        if !registered {
            self.respond(now, key, request, 403, "Forbidden (not registered here)", &[]);
            return;
        }
        let dispatcher = self
            .subscribers
            .user(&sender)
            .is_some_and(|user| user.kind == UserKind::Dispatcher);
        if !dispatcher {
            self.respond(now, key, request, 403, "Forbidden (not a dispatcher)", &[]);
            return;
        }
        if request_user(request).is_some_and(|user| user != message.udn) {
            self.respond(now, key, request, 400, "Bad Request (Request-URI and UDN differ)", &[]);
            return;
        }
        let target = message.udn;
        let home = self
            .network
            .home_of_user(&target)
            .map(|tcf| (tcf.name.clone(), tcf.sip));
        let (Some((home, home_address)), true) = (home, self.subscribers.user(&target).is_some()) else {
            self.respond(now, key, request, 404, "Not Found", &[]);
            return;
        };
        if home == self.config.name {
            self.respond(now, key, request, 200, "OK", &[]);
            self.skr_at_home(now, message.order, &target, &sender, Origin::Dc(source));
            return;
        }
        // F-SKR-01: on to the user's home, answering the DC with the home's answer.
        if self.peer_is_down(&home) {
            self.respond(
                now,
                key,
                request,
                503,
                "Service Unavailable (home TCF unreachable)",
                &[],
            );
            return;
        }
        let id = self.skr.remember(
            &target,
            message.order,
            &sender,
            Origin::Dc(source),
            Toward::Peer(home.clone()),
        );
        let extension = SkrMessage {
            order: message.order,
            udn: target.clone(),
            dc: Some(sender.clone()),
            result: None,
        }
        .render();
        let relay = Relay {
            id,
            server: key.clone(),
            request: request.clone(),
            source,
            target: target.clone(),
        };
        let uri = concat(&["sip:", target.as_str(), "@", &home_address.to_string()]);
        let sent = self.skr_send(
            now,
            &uri,
            sender.as_str(),
            extension,
            home_address,
            Pending::Skr(Box::new(relay)),
        );
        if sent.is_none() {
            self.skr.orders.remove(&target);
            self.respond(now, key, request, 503, "Service Unavailable", &[]);
        }
    }

    /// TC2 interface: an order from a DC's TCF (F-SKR-01 at the home), an order from the user's
    /// home (F-SKR-02 at the serving TCF), or a report on its way back (F-SKR-03).
    fn skr_from_peer(
        &mut self,
        now: Now,
        key: &TransactionKey,
        request: &Message,
        peer: String,
        parsed: Result<SkrMessage, &'static str>,
    ) {
        let message = match parsed {
            Ok(message) => message,
            Err(reason) => {
                self.respond(now, key, request, 400, reason, &[]);
                return;
            }
        };
        if let Some(result) = message.result {
            let Some(path) = self.skr.answered(&message.udn, message.order, &Toward::Peer(peer)) else {
                self.respond(
                    now,
                    key,
                    request,
                    481,
                    "Call/Transaction Does Not Exist (no order)",
                    &[],
                );
                return;
            };
            self.respond(now, key, request, 200, "OK", &[]);
            self.skr_report(now, path, &message.udn, result);
            return;
        }
        let dispatcher = |dc: &Number| {
            self.subscribers
                .user(dc)
                .is_some_and(|user| user.kind == UserKind::Dispatcher)
        };
        if message.dc.as_ref().is_some_and(|dc| !dispatcher(dc)) {
            self.respond(now, key, request, 403, "Forbidden (not a dispatcher)", &[]);
            return;
        }
        let target = message.udn;
        let home = self.network.home_of_user(&target).map(|tcf| tcf.name.clone());
        let (Some(home), true) = (home, self.subscribers.user(&target).is_some()) else {
            self.respond(now, key, request, 404, "Not Found", &[]);
            return;
        };
        if home == self.config.name {
            let Some(dc) = message.dc else {
                self.respond(now, key, request, 400, "Bad Request (DC)", &[]);
                return;
            };
            self.respond(now, key, request, 200, "OK", &[]);
            self.skr_at_home(now, message.order, &target, &dc, Origin::Peer(peer));
        } else if home == peer {
            self.respond(now, key, request, 200, "OK", &[]);
            let before = self.skr.state(&target);
            let after = self.skr_set(now, &target, message.order);
            // An order naming no DC only refreshes this copy: the terminal hears of it when
            // the copy changed (it moved here stunned), not on every re-registration.
            if message.dc.is_some() || before != after {
                self.skr_to_terminal(now, message.order, &target, message.dc.as_ref(), Origin::Peer(peer));
            }
        } else {
            self.respond(
                now,
                key,
                request,
                403,
                "Forbidden (only the user's home TCF may deliver)",
                &[],
            );
        }
    }

    /// At the user's home: record the new state, then deliver the order where the user is
    /// served (F-SKR-02); a kill ends the user's registration once the order went out.
    fn skr_at_home(&mut self, now: Now, order: SkrOrder, target: &Number, dc: &Number, origin: Origin) {
        let state = self.skr_set(now, target, order);
        let serving = self
            .registrations
            .get(target)
            .map(|registration| registration.serving.clone());
        match serving {
            None => {}
            Some(serving) if serving == self.config.name => {
                self.skr_to_terminal(now, order, target, Some(dc), origin);
            }
            Some(serving) => {
                if let Some(address) = self.network.tcf(&serving).map(|tcf| tcf.sip) {
                    if !self.peer_is_down(&serving) {
                        let extension = SkrMessage {
                            order,
                            udn: target.clone(),
                            dc: Some(dc.clone()),
                            result: None,
                        }
                        .render();
                        let uri = concat(&["sip:", target.as_str(), "@", &address.to_string()]);
                        let sent = self.skr_send(now, &uri, dc.as_str(), extension, address, Pending::FireAndForget);
                        if sent.is_some() {
                            self.skr.remember(target, order, dc, origin, Toward::Peer(serving));
                        }
                    }
                }
            }
        }
        if state == SkrState::Killed {
            self.home_deregister(now, target, "killed");
        }
    }

    /// At the serving TCF: deliver the order to the terminal (if it is registered here); a kill
    /// ends its binding once the order went out.
    fn skr_to_terminal(&mut self, now: Now, order: SkrOrder, target: &Number, dc: Option<&Number>, origin: Origin) {
        let Some(binding) = self.bindings.get(target).cloned() else {
            return;
        };
        let extension = SkrMessage {
            order,
            udn: target.clone(),
            dc: None,
            result: None,
        }
        .render();
        let uri = binding.contact.trim_matches(|c| c == '<' || c == '>').to_owned();
        // From: the ordering DC; an order re-delivered on registration names this node.
        let from = dc.map_or_else(|| self.config.name.clone(), |dc| dc.as_str().to_owned());
        let sent = self.skr_send(now, &uri, &from, extension, binding.address, Pending::FireAndForget);
        if let (Some(_), Some(dc)) = (sent, dc) {
            self.skr
                .remember(target, order, dc, origin, Toward::Terminal(binding.address));
        }
        if self.skr.state(target) == SkrState::Killed {
            self.unbind(target, "killed");
        }
    }

    /// F-SKR-03: sends a report on to where its order came from.
    fn skr_report(&mut self, now: Now, path: OrderPath, user: &Number, result: u16) {
        self.event(TcfEvent::SkrReported {
            user: user.clone(),
            result,
        });
        let mut report = SkrMessage {
            order: path.order,
            udn: user.clone(),
            dc: Some(path.dc.clone()),
            result: Some(result),
        };
        let (uri, destination) = match &path.origin {
            Origin::Peer(name) => {
                let Some(address) = self.network.tcf(name).map(|tcf| tcf.sip) else {
                    return;
                };
                if self.peer_is_down(name) {
                    return;
                }
                (concat(&["sip:", path.dc.as_str(), "@", &address.to_string()]), address)
            }
            Origin::Dc(address) => {
                report.dc = None;
                // The DC where it is registered now, else where its order came from.
                match self.bindings.get(&path.dc) {
                    Some(binding) => (
                        binding.contact.trim_matches(|c| c == '<' || c == '>').to_owned(),
                        binding.address,
                    ),
                    None => (concat(&["sip:", path.dc.as_str(), "@", &address.to_string()]), *address),
                }
            }
        };
        let extension = report.render();
        self.skr_send(now, &uri, user.as_str(), extension, destination, Pending::FireAndForget);
    }

    /// The home answered a relayed order (or did not): answer the DC likewise.
    pub(super) fn skr_answered(&mut self, now: Now, relay: Box<Relay>, status: u16, response: Option<Message>) {
        let Relay {
            id,
            server,
            request,
            source,
            target,
        } = *relay;
        let succeeded = (200..300).contains(&status);
        if !succeeded && self.skr.orders.get(&target).is_some_and(|path| path.id == id) {
            self.skr.orders.remove(&target);
        }
        // The responses below answer the DC's request, which came from `source`.
        let handling = self.current_source.replace(source);
        match status {
            200..=299 => self.respond(now, &server, &request, 200, "OK", &[]),
            408 => self.respond(
                now,
                &server,
                &request,
                408,
                "Request Timeout (home TCF did not answer)",
                &[],
            ),
            status => {
                let reason = response
                    .as_ref()
                    .and_then(|response| response.reason_phrase())
                    .map(|reason| String::from_utf8_lossy(reason).into_owned())
                    .unwrap_or_else(|| "Refused by home TCF".to_owned());
                self.respond(now, &server, &request, status, &reason, &[]);
            }
        }
        self.current_source = handling;
    }

    /// At the home, a user (re-)registered through the peer `serving`: when it is stunned, the
    /// serving TCF is told again (an order without `DC`, so no report comes back), so its copy
    /// is there whether the user moved or its binding there had lapsed.
    pub(super) fn skr_registered(&mut self, now: Now, user: &Number, serving: &str) {
        if self.skr.state(user) != SkrState::Stunned {
            return;
        }
        let Some(address) = self.network.tcf(serving).map(|tcf| tcf.sip) else {
            return;
        };
        if self.peer_is_down(serving) {
            return;
        }
        let extension = SkrMessage {
            order: SkrOrder::Stun,
            udn: user.clone(),
            dc: None,
            result: None,
        }
        .render();
        let uri = concat(&["sip:", user.as_str(), "@", &address.to_string()]);
        self.skr_send(
            now,
            &uri,
            &self.config.name.clone(),
            extension,
            address,
            Pending::FireAndForget,
        );
    }

    /// A terminal's binding here ended: a serving TCF's copy of its state goes with it (the home
    /// keeps its own).
    pub(super) fn skr_unbound(&mut self, user: &Number) {
        let home_here = self
            .network
            .home_of_user(user)
            .is_some_and(|home| home.name == self.config.name);
        if !home_here && self.skr.states.remove(user).is_some() {
            self.write(StoreWrite::RemoveSkrState(user.clone()));
        }
    }

    /// Applies `order` to `user` here: state, and store and event when it changed. A user
    /// revived here joins the group calls running for it where it is served.
    fn skr_set(&mut self, now: Now, user: &Number, order: SkrOrder) -> SkrState {
        let before = self.skr.state(user);
        let (state, write) = self.skr.apply(user, order);
        if state != before {
            self.write(write);
            self.event(TcfEvent::SkrStateChanged {
                user: user.clone(),
                state,
            });
            if state == SkrState::Active {
                self.invite_to_running_group_calls(now, user);
            }
        }
        state
    }

    /// Sends a stun/kill/revive MESSAGE (order or report) on behalf of `from_user`.
    fn skr_send(
        &mut self,
        now: Now,
        uri: &str,
        from_user: &str,
        extension: String,
        destination: SocketAddr,
        pending: Pending,
    ) -> Option<TransactionKey> {
        self.send_message_as(now, from_user, uri, extension, None, destination, pending)
    }
}

#[cfg(test)]
mod tests {
    //! The stun/kill state machine and one node playing every role (DC's TCF, home, serving), in
    //! simulated time.
    use super::*;

    #[test]
    fn orders_move_the_state_and_only_a_revive_undoes_a_kill() {
        use SkrOrder::*;
        use SkrState::*;
        let cases = [
            (Active, Stun, Stunned),
            (Active, Kill, Killed),
            (Active, Revive, Active),
            (Stunned, Stun, Stunned),
            (Stunned, Kill, Killed),
            (Stunned, Revive, Active),
            (Killed, Stun, Killed),
            (Killed, Kill, Killed),
            (Killed, Revive, Active),
        ];
        for (from, order, to) in cases {
            assert_eq!(from.after(order), to, "{from:?} + {order:?}");
        }
        assert_eq!(Active.barred(), None);
        assert_eq!(Stunned.barred(), Some("Forbidden (stunned)"));
        assert_eq!(Killed.barred(), Some("Forbidden (killed)"));
    }

    #[test]
    fn applying_orders_writes_the_store_and_active_is_no_row() {
        let mut skr = Skr::default();
        let user = Number::parse("1000").unwrap();
        let (state, write) = skr.apply(&user, SkrOrder::Stun);
        assert_eq!(state, SkrState::Stunned);
        assert_eq!(
            write,
            StoreWrite::PutSkrState(SkrRecord {
                user: user.clone(),
                state: SkrState::Stunned
            })
        );
        assert_eq!(skr.apply(&user, SkrOrder::Kill).0, SkrState::Killed);
        assert_eq!(skr.apply(&user, SkrOrder::Stun).0, SkrState::Killed);
        let (state, write) = skr.apply(&user, SkrOrder::Revive);
        assert_eq!(state, SkrState::Active);
        assert_eq!(write, StoreWrite::RemoveSkrState(user.clone()));
        assert!(skr.states.is_empty());
    }

    #[test]
    fn a_report_matches_only_the_order_it_answers_from_where_the_order_went() {
        let mut skr = Skr::default();
        let (user, dc) = (Number::parse("1000").unwrap(), Number::parse("9000").unwrap());
        let terminal: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        skr.remember(
            &user,
            SkrOrder::Stun,
            &dc,
            Origin::Peer("b".into()),
            Toward::Terminal(terminal),
        );
        assert!(skr
            .answered(&user, SkrOrder::Kill, &Toward::Terminal(terminal))
            .is_none());
        assert!(skr.answered(&user, SkrOrder::Stun, &Toward::Peer("c".into())).is_none());
        let other: SocketAddr = "127.0.0.1:7001".parse().unwrap();
        assert!(skr.answered(&user, SkrOrder::Stun, &Toward::Terminal(other)).is_none());
        let path = skr
            .answered(&user, SkrOrder::Stun, &Toward::Terminal(terminal))
            .unwrap();
        assert_eq!(path.origin, Origin::Peer("b".into()));
        assert!(
            skr.answered(&user, SkrOrder::Stun, &Toward::Terminal(terminal))
                .is_none(),
            "answered once"
        );
    }

    #[test]
    fn the_extension_parses_and_renders() {
        let parse = |text: &str| {
            let extension = PttExtension::parse(text.as_bytes()).unwrap();
            let order = SkrOrder::from_token(extension.value()).unwrap();
            SkrMessage::parse(order, &extension)
        };
        let order = parse("PTTKILL;udn=1100;DC=9200").unwrap();
        assert_eq!(order.order, SkrOrder::Kill);
        assert_eq!(order.render(), "pttkill;UDN=1100;DC=9200");
        let report = parse("pttstun;UDN=1100;result=17").unwrap();
        assert_eq!(report.result, Some(17));
        assert_eq!(report.render(), "pttstun;UDN=1100;result=17");
        assert_eq!(parse("pttrevive"), Err("Bad Request (UDN)"));
        assert_eq!(parse("pttrevive;UDN"), Err("Bad Request (UDN)"));
        assert_eq!(parse("pttrevive;UDN=11a0"), Err("Bad Request (UDN)"));
        assert_eq!(parse("pttstun;UDN=1100;DC=x"), Err("Bad Request (DC)"));
        assert_eq!(parse("pttstun;UDN=1100;result=-1"), Err("Bad Request (result)"));
        assert_eq!(parse("pttstun;UDN=1100;result=99999"), Err("Bad Request (result)"));
        assert_eq!(SkrOrder::from_token("pttlocation"), None);
    }

    // ---- one node: DC, target and another user all served at their home -------------------

    const NETWORK: &str =
        "[[tcf]]\nname = \"a\"\nsip = \"127.0.0.1:5601\"\nusers = [\"1000-1099\", \"9000\"]\nsecret = \"s\"\n";
    const SUBSCRIBERS: &str = "[[user]]\nnumber = \"1000-1009\"\npassword = \"pw\"\n\
                               [[user]]\nnumber = \"9000\"\npassword = \"pw\"\nkind = \"dispatcher\"\n";
    const DC: &str = "127.0.0.1:7000";
    const TARGET: &str = "127.0.0.1:7001";
    const OTHER: &str = "127.0.0.1:7002";

    struct Rig {
        tcf: Tcf,
        start: Instant,
        wall: SystemTime,
        writes: Vec<StoreWrite>,
        branch: u32,
    }

    impl Rig {
        fn new(states: Vec<SkrRecord>) -> Rig {
            let start = Instant::now();
            let wall = SystemTime::now();
            let network = Arc::new(Network::from_toml("n", NETWORK).unwrap());
            let subscribers = Arc::new(Subscribers::from_toml("s", SUBSCRIBERS).unwrap());
            let sip = crate::config::Config::from_toml("[sip]\nrealm = \"test\"\nt1_ms = 100\n")
                .unwrap()
                .sip;
            let config = TcfConfig::new("a", sip, [7; 32]).unwrap();
            let now = Now { instant: start, wall };
            let mut tcf = Tcf::new(config, network, subscribers, now, 1).unwrap();
            tcf.set_media(Box::new(crate::control::media::FakeMedia::new()));
            let unix = wall.duration_since(UNIX_EPOCH).unwrap().as_secs();
            let users = [("9000", DC), ("1000", TARGET), ("1001", OTHER)];
            let bindings = users
                .iter()
                .map(|(user, address)| Binding {
                    user: Number::parse(user).unwrap(),
                    contact: format!("<sip:{user}@{address}>"),
                    address: address.parse().unwrap(),
                    expires_at: unix + 3600,
                })
                .collect();
            let registrations = users
                .iter()
                .map(|(user, _)| Registration {
                    user: Number::parse(user).unwrap(),
                    serving: "a".to_owned(),
                    expires_at: unix + 3600,
                })
                .collect();
            tcf.restore(bindings, registrations, Vec::new(), now);
            tcf.restore_skr(states);
            Rig {
                tcf,
                start,
                wall,
                writes: Vec::new(),
                branch: 0,
            }
        }

        fn now(&self) -> Now {
            Now {
                instant: self.start,
                wall: self.wall,
            }
        }

        /// Delivers a MESSAGE from `user` at `from` with `extension`; returns what was sent.
        fn message(&mut self, from: &str, user: &str, uri_user: &str, extension: &str) -> Vec<(SocketAddr, Message)> {
            self.branch += 1;
            let text = format!(
                "MESSAGE sip:{uri_user}@127.0.0.1:5601 SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bKm{branch};rport\r\n\
                 Max-Forwards: 70\r\nFrom: <sip:{user}@127.0.0.1:5601>;tag=m\r\nTo: <sip:{uri_user}@127.0.0.1:5601>\r\n\
                 Call-ID: m{branch}\r\nCSeq: 1 MESSAGE\r\nPtt-Extension: {extension}\r\nContent-Length: 0\r\n\r\n",
                branch = self.branch
            );
            let now = self.now();
            self.tcf
                .handle_datagram(now, from.parse().unwrap(), Bytes::from(text.into_bytes()));
            self.sent()
        }

        fn invite(&mut self, from: &str, caller: &str, callee: &str) -> Vec<(SocketAddr, Message)> {
            self.branch += 1;
            let body = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
                        m=audio 9000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";
            let text = format!(
                "INVITE sip:{callee}@127.0.0.1:5601 SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bKi{branch};rport\r\n\
                 Max-Forwards: 70\r\nFrom: <sip:{caller}@127.0.0.1:5601>;tag=c\r\nTo: <sip:{callee}@127.0.0.1:5601>\r\n\
                 Call-ID: i{branch}\r\nCSeq: 1 INVITE\r\nContact: <sip:{caller}@{from}>\r\n\
                 Content-Type: application/sdp\r\nContent-Length: {length}\r\n\r\n{body}",
                branch = self.branch,
                length = body.len()
            );
            let now = self.now();
            self.tcf
                .handle_datagram(now, from.parse().unwrap(), Bytes::from(text.into_bytes()));
            self.sent()
        }

        fn sent(&mut self) -> Vec<(SocketAddr, Message)> {
            let mut out = Vec::new();
            while let Some(output) = self.tcf.poll_output() {
                match output {
                    Output::Transmit { destination, bytes } => {
                        out.push((destination, Message::parse_datagram(bytes).unwrap()))
                    }
                    Output::Store(write) => self.writes.push(write),
                    Output::Event(_) => {}
                }
            }
            out
        }
    }

    fn final_status(sent: &[(SocketAddr, Message)], to: &str) -> Option<(u16, String)> {
        let to: SocketAddr = to.parse().unwrap();
        sent.iter()
            .filter(|(destination, message)| *destination == to && message.status().is_some_and(|s| s >= 200))
            .map(|(_, message)| {
                let reason = String::from_utf8_lossy(message.reason_phrase().unwrap_or_default()).into_owned();
                (message.status().unwrap(), reason)
            })
            .next()
    }

    fn extensions(sent: &[(SocketAddr, Message)], to: &str) -> Vec<String> {
        let to: SocketAddr = to.parse().unwrap();
        sent.iter()
            .filter(|(destination, message)| *destination == to && message.method() == Some(Method::Message))
            .filter_map(|(_, message)| {
                message
                    .first_value_str(HeaderName::PttExtension)
                    .map(|value| value.into_owned())
            })
            .collect()
    }

    #[test]
    fn an_order_a_report_and_the_stun_enforced_on_one_node() {
        let mut rig = Rig::new(Vec::new());
        let sent = rig.message(DC, "9000", "1000", "pttstun;UDN=1000");
        assert_eq!(final_status(&sent, DC), Some((200, "OK".into())));
        assert_eq!(extensions(&sent, TARGET), vec!["pttstun;UDN=1000"]);
        let target = Number::parse("1000").unwrap();
        assert_eq!(rig.tcf.skr_state(&target), SkrState::Stunned);
        assert!(rig.writes.contains(&StoreWrite::PutSkrState(SkrRecord {
            user: target.clone(),
            state: SkrState::Stunned
        })));
        // Stunned: no call out, no call in.
        let sent = rig.invite(TARGET, "1000", "1001");
        assert_eq!(final_status(&sent, TARGET), Some((403, "Forbidden (stunned)".into())));
        let sent = rig.invite(OTHER, "1001", "1000");
        assert_eq!(final_status(&sent, OTHER), Some((403, "Forbidden (stunned)".into())));
        // The terminal reports: the DC is told; a second report matches no order.
        let sent = rig.message(TARGET, "1000", "9000", "pttstun;UDN=1000;result=0");
        assert_eq!(final_status(&sent, TARGET), Some((200, "OK".into())));
        assert_eq!(extensions(&sent, DC), vec!["pttstun;UDN=1000;result=0"]);
        let sent = rig.message(TARGET, "1000", "9000", "pttstun;UDN=1000;result=0");
        assert_eq!(final_status(&sent, TARGET).map(|(status, _)| status), Some(481));
        // The state survives a restart (what the store holds is restored).
        let rows: Vec<SkrRecord> = rig
            .writes
            .iter()
            .filter_map(|write| match write {
                StoreWrite::PutSkrState(record) => Some(record.clone()),
                _ => None,
            })
            .collect();
        let mut rig = Rig::new(rows);
        assert_eq!(rig.tcf.skr_state(&target), SkrState::Stunned);
        let sent = rig.invite(TARGET, "1000", "1001");
        assert_eq!(final_status(&sent, TARGET).map(|(status, _)| status), Some(403));
        // Revived: calls again (100 Trying, then on to the callee).
        let sent = rig.message(DC, "9000", "1000", "pttrevive;UDN=1000");
        assert_eq!(final_status(&sent, DC).map(|(status, _)| status), Some(200));
        assert_eq!(extensions(&sent, TARGET), vec!["pttrevive;UDN=1000"]);
        assert_eq!(rig.tcf.skr_state(&target), SkrState::Active);
        assert!(rig.writes.contains(&StoreWrite::RemoveSkrState(target)));
        let sent = rig.invite(TARGET, "1000", "1001");
        assert_eq!(final_status(&sent, TARGET), None, "no final refusal");
    }

    #[test]
    fn a_kill_ends_the_binding_and_the_killed_terminal_may_still_report() {
        let mut rig = Rig::new(Vec::new());
        let sent = rig.message(DC, "9000", "1000", "pttkill;UDN=1000");
        assert_eq!(final_status(&sent, DC).map(|(status, _)| status), Some(200));
        assert_eq!(extensions(&sent, TARGET), vec!["pttkill;UDN=1000"]);
        let target = Number::parse("1000").unwrap();
        assert!(rig.tcf.binding(&target).is_none() && rig.tcf.registration(&target).is_none());
        let sent = rig.message(TARGET, "1000", "9000", "pttkill;UDN=1000;result=0");
        assert_eq!(final_status(&sent, TARGET).map(|(status, _)| status), Some(200));
        assert_eq!(extensions(&sent, DC), vec!["pttkill;UDN=1000;result=0"]);
        // Now neither registered nor with an order: a stranger.
        let sent = rig.message(TARGET, "1000", "9000", "pttkill;UDN=1000;result=0");
        assert_eq!(final_status(&sent, TARGET).map(|(status, _)| status), Some(403));
    }

    #[test]
    fn hostile_orders_get_their_errors() {
        let mut rig = Rig::new(Vec::new());
        let cases = [
            (DC, "9000", "1000", "pttstun;UDN=10x0", 400),
            (DC, "9000", "1000", "pttstun", 400),
            (DC, "9000", "1000", ";;", 400),
            (DC, "9000", "1001", "pttstun;UDN=1000", 400),
            (TARGET, "1000", "1001", "pttstun;UDN=1001", 403),
            ("127.0.0.1:7999", "9000", "1000", "pttstun;UDN=1000", 403),
            (DC, "9000", "1099", "pttstun;UDN=1099", 404),
            (DC, "9000", "5555", "pttstun;UDN=5555", 404),
            (OTHER, "1001", "9000", "pttstun;UDN=1001;result=0", 481),
            (OTHER, "1001", "9000", "pttstun;UDN=1000;result=0", 403),
        ];
        for (from, user, uri_user, extension, status) in cases {
            let sent = rig.message(from, user, uri_user, extension);
            assert_eq!(
                final_status(&sent, from).map(|(status, _)| status),
                Some(status),
                "{user} from {from}: {extension}"
            );
        }
        assert_eq!(rig.tcf.skr_state(&Number::parse("1001").unwrap()), SkrState::Active);
    }
}
