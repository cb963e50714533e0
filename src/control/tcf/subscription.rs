//! Dispatcher subscriptions (F-SUB-01, F-SUB-02), on the model of RFC 6665: a DC subscribes
//! to a group (`Event: ptt-group`) or a user (`Event: ptt-user`) and is told the current state
//! at once and every change after, in NOTIFYs, until the subscription expires or is ended.
//!
//! # Shape
//!
//! The DC's SUBSCRIBE goes to its serving TCF, which authenticates it by its binding (like a
//! terminal's INVITE). The *notifier* is the group's (user's) home, where the state is known:
//! the members' locations pushed there (F-REG-07) and the group call's floor, or the user's home
//! registration and its busy mark. When the home is another node, the serving TCF is a B2BUA:
//! it holds its own subscription dialog with the home (each hop its own dialog, Call-ID and
//! tags), answers the DC with the home's answer, and relays the home's NOTIFYs down (copying
//! `Subscription-State` and the body); a refresh or an unsubscribe is carried up the same way.
//!
//! # State changes
//!
//! The node's own events ([`TcfEvent`]) mark a group or a user as changed
//! ([`Subscriptions::saw`]); after each input, every local subscription to a changed resource
//! has its state computed again, and gets a NOTIFY when that state differs from the last one
//! notified. One NOTIFY is in flight per subscription: a newer state waits for its answer and
//! replaces any state already waiting (the subscriber always ends on the latest state). A NOTIFY
//! answered with anything but a 2xx (481, a timeout…) ends the subscription.
//!
//! Subscriptions are soft state: kept in memory only, bounded by [`MAX_SUBSCRIPTIONS`] per node
//! and [`MAX_SUBSCRIPTIONS_PER_DISPATCHER`] per DC.
//!
//! Wire formats: `docs/protocol.md`, section "Subscriptions (F-SUB-01, F-SUB-02)".

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;

use crate::control::provisioning::UserKind;
use crate::sip::dialog::Dialog;

use super::*;

/// Subscriptions a node holds at most (notifier and relay ones together); more get `503`.
pub const MAX_SUBSCRIPTIONS: usize = 1024;

/// Subscriptions one dispatcher may hold at one node; more get `503`.
pub const MAX_SUBSCRIPTIONS_PER_DISPATCHER: usize = 16;

/// How long a relaying TCF keeps a subscription past its granted expiry, waiting for the home's
/// final NOTIFY, before it ends it towards the DC itself.
const RELAY_GRACE: Duration = Duration::from_secs(2);

/// The event packages served (`Allow-Events`).
const ALLOW_EVENTS: &str = "ptt-group, ptt-user";

/// An event package: what a subscription is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Package {
    /// `ptt-group`: a group's members, their registration and the group call's talker.
    Group,
    /// `ptt-user`: a user's registration and whether it is in a call.
    User,
}

impl Package {
    /// Its `Event` token.
    pub fn event(self) -> &'static str {
        match self {
            Package::Group => "ptt-group",
            Package::User => "ptt-user",
        }
    }

    /// The Content-Type of its NOTIFY bodies.
    pub fn content_type(self) -> &'static str {
        match self {
            Package::Group => "application/pttgroupinfo+xml",
            Package::User => "application/pttuserinfo+xml",
        }
    }

    /// The package an `Event` value names (its event type; parameters ignored).
    pub fn from_event(value: &str) -> Option<Package> {
        let token = value.split(';').next()?.trim();
        [Package::Group, Package::User]
            .into_iter()
            .find(|package| package.event() == token)
    }
}

/// A NOTIFY to send: its `Subscription-State` and body.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Notify {
    state: String,
    /// Content-Type and body (a relayed NOTIFY may have none).
    body: Option<(String, Bytes)>,
}

impl Notify {
    fn is_final(&self) -> bool {
        self.state.trim_start().to_ascii_lowercase().starts_with("terminated")
    }
}

/// A request of the subscriber answered once the home has answered (relay).
#[derive(Debug)]
struct Waiting {
    server: TransactionKey,
    request: Message,
    source: SocketAddr,
    expires: u32,
}

/// A relaying TCF's own subscription at the home.
#[derive(Debug)]
struct Upstream {
    address: SocketAddr,
    /// Our SUBSCRIBE (the dialog is made from it and the home's 2xx).
    request: Message,
    dialog: Option<Dialog>,
    /// Call-ID and our tag: what the home's requests carry.
    key: (String, String),
    /// The home's final NOTIFY came (or the dialog failed): nothing more from there.
    ended: bool,
}

/// One subscription at this node: a dialog with the subscriber (the DC, or the DC's serving
/// TCF), fed from local state or from the home.
#[derive(Debug)]
struct Subscription {
    package: Package,
    target: Number,
    subscriber: Number,
    /// Our tag and Contact in the subscriber's dialog.
    tag: String,
    contact: String,
    /// The subscriber's dialog (a relay has none until the home accepted).
    downstream: Option<Dialog>,
    /// Call-ID of the subscriber's dialog.
    call_id: String,
    /// Where the subscriber's requests came from: NOTIFYs go there.
    destination: SocketAddr,
    expires_at: Instant,
    /// `None`: this node is the home (notifier).
    upstream: Option<Upstream>,
    waiting: Option<Waiting>,
    version: u32,
    /// The state last put in a NOTIFY (notifier).
    notified: Option<String>,
    outstanding: bool,
    queued: Option<Notify>,
    /// The final NOTIFY is decided: no state changes any more.
    ending: bool,
    /// The final NOTIFY is in flight: its answer removes the subscription.
    final_sent: bool,
}

/// What one of our subscription client transactions is for.
#[derive(Debug)]
pub(super) enum Sent {
    /// Our initial SUBSCRIBE to the home.
    Subscribe(u64),
    /// A refresh or unsubscribe carried up to the home.
    Refresh(u64),
    /// A NOTIFY to the subscriber.
    Notify(u64),
    /// Nothing waits for the answer (an unsubscribe of a dialog already ended downstream).
    Forget,
}

/// All subscriptions of this node.
#[derive(Debug, Default)]
pub(super) struct Subscriptions {
    all: NetMap<u64, Subscription>,
    /// (Call-ID, our tag) of each dialog, downstream and upstream.
    by_dialog: NetMap<(String, String), u64>,
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    dirty_users: Vec<Number>,
    dirty_groups: Vec<Number>,
    next_id: u64,
}

impl Subscriptions {
    /// Notes what an event changes for subscriptions (called for every event of the node).
    pub(super) fn saw(&mut self, event: &TcfEvent) {
        if self.all.is_empty() {
            return;
        }
        match event {
            TcfEvent::LocationUpdated { user, .. }
            | TcfEvent::HomeRegistered { user, .. }
            | TcfEvent::HomeDeregistered { user, .. } => self.dirty_users.push(user.clone()),
            TcfEvent::CallAnswered { caller, callee } | TcfEvent::CallEnded { caller, callee, .. } => {
                self.dirty_users.push(caller.clone());
                self.dirty_users.push(callee.clone());
            }
            TcfEvent::GroupCallStarted { group, .. }
            | TcfEvent::FloorChanged { group, .. }
            | TcfEvent::GroupCallEnded { group, .. }
            | TcfEvent::Regrouped { group, .. } => self.dirty_groups.push(group.clone()),
            _ => {}
        }
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    pub(super) fn len(&self) -> usize {
        self.all.len()
    }

    fn schedule(&mut self, id: u64, at: Instant) {
        if let Some(subscription) = self.all.get_mut(&id) {
            subscription.expires_at = at;
            self.timers.push(Reverse((at, id)));
        }
    }

    fn remove(&mut self, id: u64) -> Option<Subscription> {
        let subscription = self.all.remove(&id)?;
        self.by_dialog
            .remove(&(subscription.call_id.clone(), subscription.tag.clone()));
        if let Some(upstream) = &subscription.upstream {
            self.by_dialog.remove(&upstream.key);
        }
        Some(subscription)
    }
}

/// Escapes text for an XML attribute value.
fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            other => out.push(other),
        }
    }
    out
}

/// Whether an `Accept` list takes `content_type` (no Accept: yes).
fn accepts(request: &Message, content_type: &str) -> bool {
    let mut any = false;
    for value in request.list_values(HeaderName::Accept) {
        any = true;
        let text = String::from_utf8_lossy(value);
        let media = text.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
        if media == content_type || media == "*/*" || media == "application/*" {
            return true;
        }
    }
    !any
}

/// The full NOTIFY body for `content` (what [`Tcf::resource_state`] gives).
pub(super) fn body(package: Package, target: &Number, version: u32, content: &str) -> String {
    let (element, attribute) = match package {
        Package::Group => ("pttgroupinfo", "group"),
        Package::User => ("pttuserinfo", "user"),
    };
    concat(&[
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\r\n<",
        element,
        " version=\"",
        itoa::Buffer::new().format(version),
        "\" ",
        attribute,
        "=\"",
        target.as_str(),
        "\">\r\n",
        content,
        "</",
        element,
        ">\r\n",
    ])
}

impl Tcf {
    /// Subscriptions held at this node (as notifier or relay).
    pub fn subscription_count(&self) -> usize {
        self.subscriptions.len()
    }

    /// The group's effective membership, as subscriptions report it: the one place to point at
    /// a dynamic-regrouping overlay.
    fn subscription_members(&self, gdn: &Number) -> Vec<Number> {
        // The effective members: provisioned ± dynamic regrouping (F-RGP).
        self.regroups.members(&self.subscribers, gdn).cloned().collect()
    }

    /// The state of a resource homed here, as the inner elements of its NOTIFY body.
    fn resource_state(&self, package: Package, target: &Number) -> String {
        let mut out = String::new();
        match package {
            Package::Group => {
                match self.groups.call_state(target) {
                    None => out.push_str("  <call active=\"false\"/>\r\n"),
                    Some((initiator, talker)) => {
                        out.push_str("  <call active=\"true\" initiator=\"");
                        out.push_str(initiator.as_str());
                        out.push('"');
                        if let Some(talker) = talker {
                            out.push_str(" talker=\"");
                            out.push_str(talker.as_str());
                            out.push('"');
                        }
                        out.push_str("/>\r\n");
                    }
                }
                for member in self.subscription_members(target) {
                    out.push_str("  <member number=\"");
                    out.push_str(member.as_str());
                    match self.locations.get(&member) {
                        Some(location) => {
                            out.push_str("\" registered=\"true\" servingtcf=\"");
                            out.push_str(&xml_escape(&location.serving));
                            out.push_str("\"/>\r\n");
                        }
                        None => out.push_str("\" registered=\"false\"/>\r\n"),
                    }
                }
            }
            Package::User => {
                match self.registrations.get(target) {
                    Some(registration) => {
                        out.push_str("  <registration registered=\"true\" servingtcf=\"");
                        out.push_str(&xml_escape(&registration.serving));
                        out.push_str("\"/>\r\n");
                    }
                    None => out.push_str("  <registration registered=\"false\"/>\r\n"),
                }
                out.push_str(if self.calls.is_busy(target) {
                    "  <call busy=\"true\"/>\r\n"
                } else {
                    "  <call busy=\"false\"/>\r\n"
                });
            }
        }
        out
    }

    /// A SUBSCRIBE outside a dialog: from a DC (at its serving TCF) or from a DC's serving TCF
    /// (at the home).
    pub(super) fn subscribe(&mut self, now: Now, key: TransactionKey, request: Message) {
        let Some(source) = self.current_source else { return };
        let peer = self.network.tcf_at(source).map(|tcf| tcf.name.clone());
        let subscriber = from_user(&request);
        if peer.is_none() {
            // D interface: the DC must be registered here, from where the request came.
            let registered = subscriber
                .as_ref()
                .and_then(|subscriber| self.bindings.get(subscriber))
                .is_some_and(|binding| binding.address == source);
            if !registered {
                self.respond(now, &key, &request, 403, "Forbidden (not registered here)", &[]);
                return;
            }
        }
        let Some(subscriber) = subscriber.filter(|subscriber| {
            self.subscribers
                .user(subscriber)
                .is_some_and(|user| user.kind == UserKind::Dispatcher)
        }) else {
            self.respond(now, &key, &request, 403, "Forbidden (not a dispatcher)", &[]);
            return;
        };
        let package = request
            .first_value_str(HeaderName::Event)
            .and_then(|value| Package::from_event(&value));
        let Some(package) = package else {
            self.respond(now, &key, &request, 489, "Bad Event", &[("Allow-Events", ALLOW_EVENTS)]);
            return;
        };
        if !accepts(&request, package.content_type()) {
            self.respond(
                now,
                &key,
                &request,
                406,
                "Not Acceptable",
                &[("Accept", package.content_type())],
            );
            return;
        }
        let Some(expires) = self.subscription_expires(now, &key, &request) else {
            return;
        };
        if !matches!(request.first_contact(), Ok(FirstContact::Address { .. })) {
            self.respond(now, &key, &request, 400, "Bad Request (Contact)", &[]);
            return;
        }
        let target = request_user(&request);
        let home = target.as_ref().and_then(|target| match package {
            Package::Group => {
                let group = self.subscribers.group(target)?;
                let home = self.network.home_of_group(target)?;
                Some((home.name.clone(), home.sip, group.dispatchers.contains(&subscriber)))
            }
            // Any dispatcher may subscribe to any user.
            Package::User => {
                self.subscribers.user(target)?;
                let home = self.network.home_of_user(target)?;
                Some((home.name.clone(), home.sip, true))
            }
        });
        let (Some(target), Some((home, home_address, allowed))) = (target, home) else {
            self.respond(now, &key, &request, 404, "Not Found", &[]);
            return;
        };
        if !allowed {
            self.respond(
                now,
                &key,
                &request,
                403,
                "Forbidden (not a dispatcher of the group)",
                &[],
            );
            return;
        }
        if peer.is_some() && home != self.config.name {
            self.respond(now, &key, &request, 404, "Not Found (not homed here)", &[]);
            return;
        }
        let held = self
            .subscriptions
            .all
            .values()
            .filter(|subscription| subscription.subscriber == subscriber)
            .count();
        if self.subscriptions.len() >= MAX_SUBSCRIPTIONS || held >= MAX_SUBSCRIPTIONS_PER_DISPATCHER {
            self.respond(
                now,
                &key,
                &request,
                503,
                "Service Unavailable (too many subscriptions)",
                &[("Retry-After", "60")],
            );
            return;
        }
        let Ok(call_id) = request.call_id().map(str::to_owned) else {
            return;
        };
        let tag = self.token();
        let contact = concat(&["<sip:", target.as_str(), "@", &self.address_text, ">"]);
        self.subscriptions.next_id += 1;
        let id = self.subscriptions.next_id;
        let mut subscription = Subscription {
            package,
            target: target.clone(),
            subscriber: subscriber.clone(),
            tag: tag.clone(),
            contact: contact.clone(),
            downstream: None,
            call_id: call_id.clone(),
            destination: source,
            expires_at: now.instant,
            upstream: None,
            waiting: None,
            version: 0,
            notified: None,
            outstanding: false,
            queued: None,
            ending: false,
            final_sent: false,
        };
        if home == self.config.name {
            // The notifier: accept, then the current state at once.
            let Ok(mut dialog) = Dialog::uas(&request, &tag, &contact) else {
                self.respond(now, &key, &request, 400, "Bad Request (dialog)", &[]);
                return;
            };
            let granted = expires.to_string();
            let answered = self.subscription_reply(
                now,
                &key,
                &request,
                source,
                200,
                "OK",
                &tag,
                &[("Expires", &granted), ("Contact", &contact)],
            );
            if !answered || dialog.confirm_sent(200).is_err() {
                return;
            }
            subscription.downstream = Some(dialog);
            self.subscriptions.all.insert(id, subscription);
            self.subscriptions.by_dialog.insert((call_id, tag), id);
            self.subscriptions
                .schedule(id, now.instant + Duration::from_secs(u64::from(expires)));
            let reason = (expires == 0).then_some("timeout");
            self.notify_state(now, id, reason);
            return;
        }
        // The DC's serving TCF: subscribe at the home, answer the DC with its answer.
        if self.peer_is_down(&home) {
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
        let up_call_id = concat(&[&self.token(), "@", &self.config.name]);
        let up_tag = self.token();
        let branch = self.branch();
        let sent_by = self.sent_by();
        let me = &self.address_text;
        let home_text = home_address.to_string();
        let builder = MessageBuilder::request(Method::Subscribe, &concat(&["sip:", target.as_str(), "@", &home_text]))
            .header(
                HeaderName::Via,
                concat(&["SIP/2.0/UDP ", &sent_by, ";branch=", &branch, ";rport"]),
            )
            .header(HeaderName::MaxForwards, "70")
            .header(
                HeaderName::From,
                concat(&["<sip:", subscriber.as_str(), "@", me, ">;tag=", &up_tag]),
            )
            .header(
                HeaderName::To,
                concat(&["<sip:", target.as_str(), "@", &home_text, ">"]),
            )
            .header(HeaderName::CallId, &up_call_id)
            .header(HeaderName::CSeq, "1 SUBSCRIBE")
            .header(HeaderName::Contact, &contact)
            .raw_header("Event", package.event())
            .raw_header("Expires", expires.to_string())
            .raw_header("Accept", package.content_type())
            .raw_header(
                "P-Asserted-Identity",
                concat(&["<sip:", subscriber.as_str(), "@", me, ">"]),
            );
        let Some(upstream_request) = builder
            .build_bytes()
            .ok()
            .and_then(|bytes| Message::parse_datagram(bytes).ok())
        else {
            self.respond(now, &key, &request, 500, "Server Internal Error", &[]);
            return;
        };
        let up_key = (up_call_id, up_tag);
        subscription.upstream = Some(Upstream {
            address: home_address,
            request: upstream_request.clone(),
            dialog: None,
            key: up_key.clone(),
            ended: false,
        });
        subscription.waiting = Some(Waiting {
            server: key.clone(),
            request: request.clone(),
            source,
            expires,
        });
        self.subscriptions.all.insert(id, subscription);
        self.subscriptions.by_dialog.insert(up_key, id);
        // Until the home answers, the relay lives at most as long as the DC asked, plus grace.
        self.subscriptions
            .schedule(id, now.instant + Duration::from_secs(u64::from(expires)) + RELAY_GRACE);
        if !self.subscription_transmit(
            now,
            &branch,
            Method::Subscribe,
            upstream_request.to_bytes(),
            home_address,
            Sent::Subscribe(id),
        ) {
            self.subscriptions.remove(id);
            self.respond(now, &key, &request, 503, "Service Unavailable", &[]);
        }
    }

    /// The period a SUBSCRIBE asks for, bounded like registrations (`sip.min_expires`,
    /// `sip.max_expires`, `sip.default_expires` when absent); `None` when answered with an error.
    fn subscription_expires(&mut self, now: Now, key: &TransactionKey, request: &Message) -> Option<u32> {
        let expires = match request.expires() {
            Ok(expires) => expires.unwrap_or(self.config.sip.default_expires),
            Err(_) => {
                self.respond(now, key, request, 400, "Bad Request (Expires)", &[]);
                return None;
            }
        };
        if expires != 0 && expires < self.config.sip.min_expires {
            let min = self.config.sip.min_expires.to_string();
            self.respond(now, key, request, 423, "Interval Too Brief", &[("Min-Expires", &min)]);
            return None;
        }
        Some(expires.min(self.config.sip.max_expires))
    }

    /// Answers `request` (its server transaction `server`, from `source`) with our `tag`.
    #[allow(clippy::too_many_arguments)]
    fn subscription_reply(
        &mut self,
        now: Now,
        server: &TransactionKey,
        request: &Message,
        source: SocketAddr,
        status: u16,
        reason: &str,
        tag: &str,
        headers: &[(&str, &str)],
    ) -> bool {
        let Ok(mut builder) = crate::sip::response_to_from(request, status, reason, Some(tag), source) else {
            return false;
        };
        builder = builder.header(HeaderName::Server, SERVER);
        for (name, value) in headers {
            builder = builder.raw_header(name, value);
        }
        let Ok(bytes) = builder.build_bytes() else { return false };
        self.layer.respond(now.instant, server, status, bytes).is_ok()
    }

    /// Sends a request in a new client transaction whose answer goes to [`Tcf::subscription_answered`].
    fn subscription_transmit(
        &mut self,
        now: Now,
        branch: &str,
        method: Method<'_>,
        bytes: Bytes,
        destination: SocketAddr,
        sent: Sent,
    ) -> bool {
        let tx_method = TxMethod::from_token(method.as_str());
        let Ok(key) = TransactionKey::new(branch, &self.address_text, tx_method.clone()) else {
            return false;
        };
        if self
            .layer
            .send_request(now.instant, key.clone(), tx_method, bytes, destination, false)
            .is_err()
        {
            return false;
        }
        self.pending.insert(key, Pending::Subscription(Box::new(sent)));
        true
    }

    /// Queues a NOTIFY with the current state of a local subscription (`reason`: the final one,
    /// `Subscription-State: terminated;reason=<reason>`).
    fn notify_state(&mut self, now: Now, id: u64, reason: Option<&str>) {
        let Some((package, target)) = self
            .subscriptions
            .all
            .get(&id)
            .map(|subscription| (subscription.package, subscription.target.clone()))
        else {
            return;
        };
        let content = self.resource_state(package, &target);
        let Some(subscription) = self.subscriptions.all.get_mut(&id) else {
            return;
        };
        subscription.version += 1;
        let body = body(package, &target, subscription.version, &content);
        subscription.notified = Some(content);
        let state = match reason {
            Some(reason) => concat(&["terminated;reason=", reason]),
            None => {
                let left = subscription.expires_at.saturating_duration_since(now.instant).as_secs();
                concat(&["active;expires=", itoa::Buffer::new().format(left)])
            }
        };
        let notify = Notify {
            state,
            body: Some((package.content_type().to_owned(), Bytes::from(body))),
        };
        self.notify(now, id, notify);
    }

    /// Sends a NOTIFY to the subscriber, or queues it behind the one in flight (replacing any
    /// queued one: the latest state wins).
    fn notify(&mut self, now: Now, id: u64, notify: Notify) {
        let branch = self.branch();
        let sent_by = self.sent_by();
        let Some(subscription) = self.subscriptions.all.get_mut(&id) else {
            return;
        };
        if subscription.final_sent {
            return;
        }
        if notify.is_final() {
            subscription.ending = true;
        }
        if subscription.outstanding || subscription.downstream.is_none() {
            subscription.queued = Some(notify);
            return;
        }
        let destination = subscription.destination;
        let package = subscription.package;
        let Some(dialog) = subscription.downstream.as_mut() else {
            return;
        };
        let Ok(mut builder) = dialog.request(Method::Notify, &branch, &sent_by, "UDP") else {
            self.subscriptions.remove(id);
            return;
        };
        builder = builder
            .raw_header("Event", package.event())
            .raw_header("Subscription-State", &notify.state);
        if let Some((content_type, body)) = &notify.body {
            builder = builder.body(content_type, body.clone());
        }
        subscription.outstanding = true;
        subscription.final_sent = notify.is_final();
        let sent = builder.build_bytes().ok().is_some_and(|bytes| {
            self.subscription_transmit(now, &branch, Method::Notify, bytes, destination, Sent::Notify(id))
        });
        if !sent {
            self.subscription_ended(now, id);
        }
    }

    /// Drops a subscription whose subscriber side failed; a relay unsubscribes at the home.
    fn subscription_ended(&mut self, now: Now, id: u64) {
        let Some(mut subscription) = self.subscriptions.remove(id) else {
            return;
        };
        let Some(upstream) = subscription.upstream.as_mut().filter(|upstream| !upstream.ended) else {
            return;
        };
        let address = upstream.address;
        let Some(dialog) = upstream.dialog.as_mut() else { return };
        let branch = self.branch();
        let sent_by = self.sent_by();
        let Ok(builder) = dialog.request(Method::Subscribe, &branch, &sent_by, "UDP") else {
            return;
        };
        let bytes = builder
            .raw_header("Event", subscription.package.event())
            .raw_header("Expires", "0")
            .build_bytes();
        if let Ok(bytes) = bytes {
            self.subscription_transmit(now, &branch, Method::Subscribe, bytes, address, Sent::Forget);
        }
    }

    /// An in-dialog request: a refresh from the subscriber or a NOTIFY from the home. Hands the
    /// request back when it belongs to no subscription.
    pub(super) fn subscription_in_dialog(
        &mut self,
        now: Now,
        key: TransactionKey,
        request: Message,
    ) -> Option<Message> {
        let dialog_key = match (request.call_id(), request.to_tag()) {
            (Ok(call_id), Ok(Some(tag))) => (call_id.to_owned(), tag.to_owned()),
            _ => return Some(request),
        };
        let Some(&id) = self.subscriptions.by_dialog.get(&dialog_key) else {
            return Some(request);
        };
        let upstream_side = self
            .subscriptions
            .all
            .get(&id)
            .and_then(|subscription| subscription.upstream.as_ref())
            .is_some_and(|upstream| upstream.key == dialog_key);
        match (request.method(), upstream_side) {
            (Some(Method::Subscribe), false) => self.refresh(now, id, key, request),
            (Some(Method::Notify), true) => self.relay_notify(now, id, key, request),
            _ => self.respond(
                now,
                &key,
                &request,
                405,
                "Method Not Allowed",
                &[("Allow", "SUBSCRIBE, NOTIFY")],
            ),
        }
        None
    }

    /// A refresh or unsubscribe from the subscriber (RFC 6665 §4.1.2.2, §4.1.2.3).
    fn refresh(&mut self, now: Now, id: u64, key: TransactionKey, request: Message) {
        let Some(subscription) = self.subscriptions.all.get_mut(&id) else {
            return;
        };
        let checked = match subscription.downstream.as_mut() {
            Some(dialog) => dialog.check_request(&request),
            None => Err(crate::sip::dialog::InDialogError::Terminated),
        };
        if let Err(error) = checked {
            let (status, reason) = error.status().unwrap_or((481, "Call/Transaction Does Not Exist"));
            self.respond(now, &key, &request, status, reason, &[]);
            return;
        }
        let package = subscription.package;
        let (ending, relaying, busy) = (
            subscription.ending,
            subscription.upstream.is_some(),
            subscription.waiting.is_some(),
        );
        let event = request.first_value_str(HeaderName::Event);
        if event.and_then(|value| Package::from_event(&value)) != Some(package) {
            self.respond(now, &key, &request, 489, "Bad Event", &[("Allow-Events", ALLOW_EVENTS)]);
            return;
        }
        let Some(expires) = self.subscription_expires(now, &key, &request) else {
            return;
        };
        if ending {
            self.respond(
                now,
                &key,
                &request,
                481,
                "Call/Transaction Does Not Exist (subscription ending)",
                &[],
            );
            return;
        }
        if !relaying {
            let granted = expires.to_string();
            self.respond(now, &key, &request, 200, "OK", &[("Expires", &granted)]);
            self.subscriptions
                .schedule(id, now.instant + Duration::from_secs(u64::from(expires)));
            self.notify_state(now, id, (expires == 0).then_some("timeout"));
            return;
        }
        if busy {
            self.respond(
                now,
                &key,
                &request,
                500,
                "Server Internal Error (a refresh is under way)",
                &[("Retry-After", "1")],
            );
            return;
        }
        // Relay: carry it up, answer with the home's answer.
        let branch = self.branch();
        let sent_by = self.sent_by();
        let source = self.current_source.unwrap_or(self.address);
        let Some(subscription) = self.subscriptions.all.get_mut(&id) else {
            return;
        };
        let Some(upstream) = subscription.upstream.as_mut().filter(|upstream| !upstream.ended) else {
            self.respond(now, &key, &request, 481, "Call/Transaction Does Not Exist", &[]);
            return;
        };
        let address = upstream.address;
        let built = upstream
            .dialog
            .as_mut()
            .and_then(|dialog| dialog.request(Method::Subscribe, &branch, &sent_by, "UDP").ok())
            .and_then(|builder| {
                builder
                    .raw_header("Event", package.event())
                    .raw_header("Expires", expires.to_string())
                    .raw_header("Accept", package.content_type())
                    .build_bytes()
                    .ok()
            });
        let Some(bytes) = built else {
            self.respond(now, &key, &request, 481, "Call/Transaction Does Not Exist", &[]);
            return;
        };
        subscription.waiting = Some(Waiting {
            server: key.clone(),
            request: request.clone(),
            source,
            expires,
        });
        if !self.subscription_transmit(now, &branch, Method::Subscribe, bytes, address, Sent::Refresh(id)) {
            if let Some(subscription) = self.subscriptions.all.get_mut(&id) {
                subscription.waiting = None;
            }
            self.respond(now, &key, &request, 503, "Service Unavailable", &[]);
        }
    }

    /// A NOTIFY from the home (relay): answered at once, passed down to the subscriber.
    fn relay_notify(&mut self, now: Now, id: u64, key: TransactionKey, request: Message) {
        let Some(subscription) = self.subscriptions.all.get_mut(&id) else {
            return;
        };
        let Some(upstream) = subscription.upstream.as_mut() else {
            return;
        };
        // Before the home's 2xx (a NOTIFY may overtake it) there is no dialog to check yet.
        if let Some(dialog) = upstream.dialog.as_mut() {
            if let Err(error) = dialog.check_request(&request) {
                let (status, reason) = error.status().unwrap_or((481, "Call/Transaction Does Not Exist"));
                self.respond(now, &key, &request, status, reason, &[]);
                return;
            }
        }
        let state = request
            .headers_named("Subscription-State")
            .next()
            .and_then(|header| header.value_str().map(|value| value.into_owned()));
        let Some(state) = state.filter(|state| !state.trim().is_empty()) else {
            self.respond(now, &key, &request, 400, "Bad Request (Subscription-State)", &[]);
            return;
        };
        let body = request
            .first_value_str(HeaderName::ContentType)
            .map(|content_type| (content_type.into_owned(), Bytes::copy_from_slice(request.body())));
        let notify = Notify { state, body };
        if notify.is_final() {
            upstream.ended = true;
            let upstream_key = upstream.key.clone();
            self.subscriptions.by_dialog.remove(&upstream_key);
        }
        self.respond(now, &key, &request, 200, "OK", &[]);
        self.notify(now, id, notify);
    }

    /// A client transaction of ours ended with `status`.
    pub(super) fn subscription_answered(&mut self, now: Now, sent: Sent, status: u16, response: Option<Message>) {
        match sent {
            Sent::Forget => {}
            Sent::Notify(id) => {
                let Some(subscription) = self.subscriptions.all.get_mut(&id) else {
                    return;
                };
                subscription.outstanding = false;
                if !(200..300).contains(&status) || subscription.final_sent {
                    let failed = !(200..300).contains(&status);
                    if failed {
                        tracing::info!(subscriber = %subscription.subscriber, status, "subscription ended: NOTIFY refused");
                    }
                    self.subscription_ended(now, id);
                    return;
                }
                if let Some(queued) = subscription.queued.take() {
                    self.notify(now, id, queued);
                }
            }
            Sent::Subscribe(id) => self.upstream_answered(now, id, status, response),
            Sent::Refresh(id) => {
                let Some(waiting) = self
                    .subscriptions
                    .all
                    .get_mut(&id)
                    .and_then(|subscription| subscription.waiting.take())
                else {
                    return;
                };
                let granted = response
                    .as_ref()
                    .and_then(|response| response.expires().ok().flatten())
                    .unwrap_or(waiting.expires);
                let tag = self
                    .subscriptions
                    .all
                    .get(&id)
                    .map(|s| s.tag.clone())
                    .unwrap_or_default();
                if (200..300).contains(&status) {
                    let granted_text = granted.to_string();
                    self.subscription_reply(
                        now,
                        &waiting.server,
                        &waiting.request,
                        waiting.source,
                        200,
                        "OK",
                        &tag,
                        &[("Expires", &granted_text)],
                    );
                    self.subscriptions
                        .schedule(id, now.instant + Duration::from_secs(u64::from(granted)) + RELAY_GRACE);
                    return;
                }
                let reason = reason_of(status, response.as_ref());
                self.subscription_reply(
                    now,
                    &waiting.server,
                    &waiting.request,
                    waiting.source,
                    status,
                    &reason,
                    &tag,
                    &[],
                );
                if matches!(status, 408 | 481) {
                    // The home no longer has it: the subscriber learns it from this answer.
                    self.subscriptions.remove(id);
                }
            }
        }
    }

    /// The home answered our initial SUBSCRIBE (relay): answer the DC alike.
    fn upstream_answered(&mut self, now: Now, id: u64, status: u16, response: Option<Message>) {
        let Some(subscription) = self.subscriptions.all.get_mut(&id) else {
            return;
        };
        let Some(waiting) = subscription.waiting.take() else {
            return;
        };
        let tag = subscription.tag.clone();
        let contact = subscription.contact.clone();
        let dialogs = match (&response, subscription.upstream.as_ref()) {
            (Some(response), Some(upstream)) if (200..300).contains(&status) => {
                let up = Dialog::uac(&upstream.request, response).ok();
                let down = Dialog::uas(&waiting.request, &tag, &contact).ok();
                up.zip(down)
            }
            _ => None,
        };
        let Some((up, mut down)) = dialogs else {
            let (status, reason) = if (200..300).contains(&status) {
                (502, "Bad Gateway (home TCF answer unusable)".to_owned())
            } else {
                (status, reason_of(status, response.as_ref()))
            };
            self.subscription_reply(
                now,
                &waiting.server,
                &waiting.request,
                waiting.source,
                status,
                &reason,
                &tag,
                &[],
            );
            self.subscriptions.remove(id);
            return;
        };
        let granted = response
            .as_ref()
            .and_then(|response| response.expires().ok().flatten())
            .unwrap_or(waiting.expires)
            .min(waiting.expires);
        let granted_text = granted.to_string();
        let answered = self.subscription_reply(
            now,
            &waiting.server,
            &waiting.request,
            waiting.source,
            200,
            "OK",
            &tag,
            &[("Expires", &granted_text), ("Contact", &contact)],
        );
        if !answered || down.confirm_sent(200).is_err() {
            self.subscription_ended(now, id);
            return;
        }
        let Some(subscription) = self.subscriptions.all.get_mut(&id) else {
            return;
        };
        if let Some(upstream) = subscription.upstream.as_mut() {
            upstream.dialog = Some(up);
        }
        subscription.downstream = Some(down);
        let dialog_key = (subscription.call_id.clone(), tag);
        let queued = subscription.queued.take();
        self.subscriptions.by_dialog.insert(dialog_key, id);
        self.subscriptions
            .schedule(id, now.instant + Duration::from_secs(u64::from(granted)) + RELAY_GRACE);
        if let Some(queued) = queued {
            self.notify(now, id, queued);
        }
    }

    /// Expired subscriptions end with a final NOTIFY (`terminated;reason=timeout`).
    pub(super) fn subscription_timers(&mut self, now: Now) {
        while let Some(&Reverse((at, id))) = self.subscriptions.timers.peek() {
            if at > now.instant {
                break;
            }
            self.subscriptions.timers.pop();
            let Some(subscription) = self.subscriptions.all.get(&id) else {
                continue;
            };
            if subscription.expires_at != at || subscription.ending {
                continue;
            }
            if subscription.upstream.is_none() {
                self.notify_state(now, id, Some("timeout"));
                continue;
            }
            // Relay: the home's final NOTIFY did not come in time (or the home never answered).
            if subscription.downstream.is_none() {
                self.subscriptions.remove(id);
                continue;
            }
            self.notify(
                now,
                id,
                Notify {
                    state: "terminated;reason=timeout".to_owned(),
                    body: None,
                },
            );
            self.subscription_ended_upstream(id);
        }
    }

    /// The home's side of a relayed subscription is given up (its final NOTIFY is not awaited).
    fn subscription_ended_upstream(&mut self, id: u64) {
        let Some(upstream) = self
            .subscriptions
            .all
            .get_mut(&id)
            .and_then(|subscription| subscription.upstream.as_mut())
        else {
            return;
        };
        upstream.ended = true;
        let key = upstream.key.clone();
        self.subscriptions.by_dialog.remove(&key);
    }

    /// After an input: local subscriptions to what changed get a NOTIFY when their state did.
    pub(super) fn subscriptions_changed(&mut self, now: Now) {
        if self.subscriptions.dirty_users.is_empty() && self.subscriptions.dirty_groups.is_empty() {
            return;
        }
        let users = std::mem::take(&mut self.subscriptions.dirty_users);
        let groups = std::mem::take(&mut self.subscriptions.dirty_groups);
        let candidates: Vec<(u64, Package, Number)> = self
            .subscriptions
            .all
            .iter()
            .filter(|(_, subscription)| subscription.upstream.is_none() && !subscription.ending)
            .map(|(id, subscription)| (*id, subscription.package, subscription.target.clone()))
            .collect();
        for (id, package, target) in candidates {
            let touched = match package {
                Package::User => users.contains(&target),
                Package::Group => {
                    groups.contains(&target) || {
                        let members = self.subscription_members(&target);
                        users.iter().any(|user| members.contains(user))
                    }
                }
            };
            if !touched {
                continue;
            }
            let content = self.resource_state(package, &target);
            let changed = self
                .subscriptions
                .all
                .get(&id)
                .is_some_and(|subscription| subscription.notified.as_deref() != Some(content.as_str()));
            if changed {
                self.notify_state(now, id, None);
            }
        }
    }
}

/// The reason phrase to pass on with `status` (the home's, else a default).
fn reason_of(status: u16, response: Option<&Message>) -> String {
    if status == 408 {
        return "Request Timeout (home TCF did not answer)".to_owned();
    }
    response
        .and_then(|response| response.reason_phrase())
        .map(|reason| String::from_utf8_lossy(reason).into_owned())
        .unwrap_or_else(|| "Refused by home TCF".to_owned())
}

#[cfg(test)]
mod tests {
    //! One node as the home of a group and its users, a DC served there, in simulated time; a
    //! second TCF `b` exists only as the sender of location pushes.
    use super::*;

    const NETWORK: &str = "[[tcf]]\nname = \"a\"\nsip = \"127.0.0.1:5601\"\nusers = [\"1000-1099\", \"9000-9001\"]\n\
                           groups = [\"2000\"]\nsecret = \"s\"\n\
                           [[tcf]]\nname = \"b\"\nsip = \"127.0.0.1:5602\"\nusers = [\"1100-1199\"]\nsecret = \"s\"\n";
    const SUBSCRIBERS: &str = "[[user]]\nnumber = \"1000-1009\"\npassword = \"pw\"\n\
                               [[user]]\nnumber = \"1100\"\npassword = \"pw\"\n\
                               [[user]]\nnumber = \"9000-9001\"\npassword = \"pw\"\nkind = \"dispatcher\"\n\
                               [[group]]\nnumber = \"2000\"\nmembers = [\"1000\", \"1001\", \"1100\"]\ndispatchers = [\"9000\"]\n";
    const DC: &str = "127.0.0.1:7000";
    const OTHER_DC: &str = "127.0.0.1:7001";
    const USER: &str = "127.0.0.1:7002";
    const PEER_B: &str = "127.0.0.1:5602";

    struct Rig {
        tcf: Tcf,
        start: Instant,
        wall: SystemTime,
        elapsed: Duration,
        branch: u32,
    }

    impl Rig {
        fn new() -> Rig {
            let start = Instant::now();
            let wall = SystemTime::now();
            let network = Arc::new(Network::from_toml("n", NETWORK).unwrap());
            let subscribers = Arc::new(Subscribers::from_toml("s", SUBSCRIBERS).unwrap());
            let sip = crate::config::Config::from_toml("[sip]\nrealm = \"test\"\nt1_ms = 100\nmin_expires = 1\n")
                .unwrap()
                .sip;
            let config = TcfConfig::new("a", sip, [7; 32]).unwrap();
            let now = Now { instant: start, wall };
            let mut tcf = Tcf::new(config, network, subscribers, now, 1).unwrap();
            let unix = wall.duration_since(UNIX_EPOCH).unwrap().as_secs();
            let users = [("9000", DC), ("9001", OTHER_DC), ("1000", USER)];
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
            let locations = vec![Location {
                user: Number::parse("1000").unwrap(),
                serving: "a".to_owned(),
                expires_at: unix + 3600,
            }];
            tcf.restore(bindings, registrations, locations, now);
            Rig {
                tcf,
                start,
                wall,
                elapsed: Duration::ZERO,
                branch: 0,
            }
        }

        fn now(&self) -> Now {
            Now {
                instant: self.start + self.elapsed,
                wall: self.wall + self.elapsed,
            }
        }

        fn deliver(&mut self, from: &str, text: String) -> Vec<(SocketAddr, Message)> {
            let now = self.now();
            self.tcf
                .handle_datagram(now, from.parse().unwrap(), Bytes::from(text.into_bytes()));
            self.sent()
        }

        /// A SUBSCRIBE from `user` at `from`; `dialog`: (Call-ID, To tag, CSeq) of a refresh.
        fn subscribe(
            &mut self,
            from: &str,
            user: &str,
            target: &str,
            event: &str,
            expires: u32,
            dialog: Option<(&str, &str, u32)>,
        ) -> Vec<(SocketAddr, Message)> {
            self.branch += 1;
            let (call_id, to_tag, cseq) = match dialog {
                Some((call_id, tag, cseq)) => (call_id.to_owned(), format!(";tag={tag}"), cseq),
                None => (format!("s{}", self.branch), String::new(), 1),
            };
            let text = format!(
                "SUBSCRIBE sip:{target}@127.0.0.1:5601 SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bKs{branch};rport\r\n\
                 Max-Forwards: 70\r\nFrom: <sip:{user}@127.0.0.1:5601>;tag=dc\r\nTo: <sip:{target}@127.0.0.1:5601>{to_tag}\r\n\
                 Call-ID: {call_id}\r\nCSeq: {cseq} SUBSCRIBE\r\nContact: <sip:{user}@{from}>\r\nEvent: {event}\r\n\
                 Expires: {expires}\r\nContent-Length: 0\r\n\r\n",
                branch = self.branch
            );
            self.deliver(from, text)
        }

        /// Answers a NOTIFY with `status`.
        fn answer(&mut self, from: &str, notify: &Message, status: u16) -> Vec<(SocketAddr, Message)> {
            let response = crate::sip::response_to(notify, status, "Whatever", None)
                .unwrap()
                .build()
                .unwrap();
            self.deliver(from, String::from_utf8(response.as_bytes().to_vec()).unwrap())
        }

        fn advance(&mut self, seconds: f64) -> Vec<(SocketAddr, Message)> {
            let target = self.elapsed + Duration::from_secs_f64(seconds);
            let mut out = Vec::new();
            while self.elapsed < target {
                self.elapsed = (self.elapsed + Duration::from_millis(50)).min(target);
                let now = self.now();
                self.tcf.handle_timeout(now);
                out.extend(self.sent());
            }
            out
        }

        /// A location push from `b` for `user` (F-REG-07).
        fn location(&mut self, user: &str, expires: u32) -> Vec<(SocketAddr, Message)> {
            self.branch += 1;
            let text = format!(
                "MESSAGE sip:2000@127.0.0.1:5601 SIP/2.0\r\nVia: SIP/2.0/UDP {PEER_B};branch=z9hG4bKl{branch};rport\r\n\
                 Max-Forwards: 70\r\nFrom: <sip:b@{PEER_B}>;tag=l\r\nTo: <sip:2000@127.0.0.1:5601>\r\n\
                 Call-ID: l{branch}\r\nCSeq: 1 MESSAGE\r\n\
                 Ptt-Extension: pttlocation;UDN={user};servingtcf=b;expires={expires}\r\nContent-Length: 0\r\n\r\n",
                branch = self.branch
            );
            self.deliver(PEER_B, text)
        }

        fn sent(&mut self) -> Vec<(SocketAddr, Message)> {
            let mut out = Vec::new();
            while let Some(output) = self.tcf.poll_output() {
                if let Output::Transmit { destination, bytes } = output {
                    out.push((destination, Message::parse_datagram(bytes).unwrap()));
                }
            }
            out
        }
    }

    fn to(sent: &[(SocketAddr, Message)], address: &str) -> Vec<Message> {
        let address: SocketAddr = address.parse().unwrap();
        sent.iter()
            .filter(|(destination, _)| *destination == address)
            .map(|(_, message)| message.clone())
            .collect()
    }

    fn status(messages: &[Message]) -> Vec<(u16, String)> {
        messages
            .iter()
            .filter_map(|message| {
                let reason = String::from_utf8_lossy(message.reason_phrase()?).into_owned();
                Some((message.status()?, reason))
            })
            .collect()
    }

    /// The NOTIFYs, retransmissions left out.
    fn notifies(messages: &[Message]) -> Vec<Message> {
        let mut out: Vec<Message> = Vec::new();
        for message in messages {
            let cseq = message.cseq().map(|cseq| cseq.number).ok();
            let seen = out
                .iter()
                .any(|other| other.cseq().map(|cseq| cseq.number).ok() == cseq);
            if message.method() == Some(Method::Notify) && !seen {
                out.push(message.clone());
            }
        }
        out
    }

    fn header(message: &Message, name: &str) -> String {
        message
            .headers_named(name)
            .next()
            .and_then(|header| header.value_str().map(|value| value.into_owned()))
            .unwrap_or_default()
    }

    fn body_text(message: &Message) -> String {
        String::from_utf8_lossy(message.body()).into_owned()
    }

    fn to_tag(message: &Message) -> String {
        message.to_tag().unwrap().unwrap().to_owned()
    }

    #[test]
    fn group_subscription_notifies_the_state_then_changes_then_ends_on_unsubscribe() {
        let mut rig = Rig::new();
        let sent = to(&rig.subscribe(DC, "9000", "2000", "ptt-group", 60, None), DC);
        assert_eq!(status(&sent), vec![(200, "OK".to_owned())]);
        let ok = &sent[0];
        assert_eq!(header(ok, "Expires"), "60");
        let tag = to_tag(ok);
        let notify = notifies(&sent);
        assert_eq!(notify.len(), 1, "the state at once");
        let notify = &notify[0];
        assert_eq!(header(notify, "Event"), "ptt-group");
        assert_eq!(header(notify, "Subscription-State"), "active;expires=60");
        assert_eq!(header(notify, "Content-Type"), "application/pttgroupinfo+xml");
        assert_eq!(notify.from_tag().unwrap(), Some(tag.as_str()));
        assert_eq!(notify.to_tag().unwrap(), Some("dc"));
        assert_eq!(
            body_text(notify),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\r\n<pttgroupinfo version=\"1\" group=\"2000\">\r\n\
             \x20 <call active=\"false\"/>\r\n\
             \x20 <member number=\"1000\" registered=\"true\" servingtcf=\"a\"/>\r\n\
             \x20 <member number=\"1001\" registered=\"false\"/>\r\n\
             \x20 <member number=\"1100\" registered=\"false\"/>\r\n</pttgroupinfo>\r\n"
        );
        // A change while the first NOTIFY is unanswered waits for its answer; two changes
        // give one NOTIFY with the latest state.
        assert!(notifies(&to(&rig.location("1100", 300), DC)).is_empty());
        assert!(notifies(&to(&rig.location("1001", 300), DC)).is_empty());
        let next = notifies(&to(&rig.answer(DC, notify, 200), DC));
        assert_eq!(next.len(), 1);
        let body = body_text(&next[0]);
        assert!(body.contains("version=\"3\""), "{body}");
        assert!(
            body.contains("<member number=\"1001\" registered=\"true\" servingtcf=\"b\"/>"),
            "{body}"
        );
        assert!(
            body.contains("<member number=\"1100\" registered=\"true\" servingtcf=\"b\"/>"),
            "{body}"
        );
        assert!(rig.answer(DC, &next[0], 200).is_empty());
        // A push that changes nothing notifies nothing.
        assert!(notifies(&to(&rig.location("1100", 300), DC)).is_empty());
        // Unsubscribe: 200 with Expires 0, the final NOTIFY, then nothing is left.
        let sent = to(
            &rig.subscribe(DC, "9000", "2000", "ptt-group", 0, Some(("s1", &tag, 2))),
            DC,
        );
        assert_eq!(status(&sent), vec![(200, "OK".to_owned())]);
        assert_eq!(header(&sent[0], "Expires"), "0");
        let last = notifies(&sent);
        assert_eq!(header(&last[0], "Subscription-State"), "terminated;reason=timeout");
        assert_eq!(rig.tcf.subscription_count(), 1, "until the final NOTIFY is answered");
        rig.answer(DC, &last[0], 200);
        assert_eq!(rig.tcf.subscription_count(), 0);
        // Its dialog is gone.
        let sent = to(
            &rig.subscribe(DC, "9000", "2000", "ptt-group", 60, Some(("s1", &tag, 3))),
            DC,
        );
        assert_eq!(status(&sent)[0].0, 481);
    }

    #[test]
    fn expiry_and_refresh_in_simulated_time() {
        let mut rig = Rig::new();
        let sent = to(&rig.subscribe(DC, "9000", "1000", "ptt-user", 5, None), DC);
        let tag = to_tag(&sent[0]);
        let notify = notifies(&sent).remove(0);
        assert_eq!(header(&notify, "Content-Type"), "application/pttuserinfo+xml");
        assert!(body_text(&notify).contains("<registration registered=\"true\" servingtcf=\"a\"/>"));
        assert!(body_text(&notify).contains("<call busy=\"false\"/>"));
        rig.answer(DC, &notify, 200);
        // Refreshed at 4 s for 10 s more: a NOTIFY with the new period, no expiry at 5 s.
        rig.advance(4.0);
        let sent = to(
            &rig.subscribe(DC, "9000", "1000", "ptt-user", 10, Some(("s1", &tag, 2))),
            DC,
        );
        assert_eq!(status(&sent), vec![(200, "OK".to_owned())]);
        let notify = notifies(&sent).remove(0);
        assert_eq!(header(&notify, "Subscription-State"), "active;expires=10");
        rig.answer(DC, &notify, 200);
        assert!(notifies(&to(&rig.advance(9.5), DC)).is_empty());
        let sent = to(&rig.advance(1.0), DC);
        let last = notifies(&sent);
        assert_eq!(last.len(), 1);
        assert_eq!(header(&last[0], "Subscription-State"), "terminated;reason=timeout");
        rig.answer(DC, &last[0], 200);
        assert_eq!(rig.tcf.subscription_count(), 0);
    }

    #[test]
    fn a_notify_refused_or_unanswered_ends_the_subscription() {
        let mut rig = Rig::new();
        let sent = to(&rig.subscribe(DC, "9000", "1000", "ptt-user", 60, None), DC);
        rig.answer(DC, &notifies(&sent)[0], 481);
        assert_eq!(rig.tcf.subscription_count(), 0);
        // Unanswered: the NOTIFY's transaction times out (64·T1 = 6.4 s here).
        let sent = to(&rig.subscribe(DC, "9000", "1000", "ptt-user", 60, None), DC);
        assert_eq!(notifies(&sent).len(), 1);
        rig.advance(7.0);
        assert_eq!(rig.tcf.subscription_count(), 0);
    }

    #[test]
    fn hostile_subscribes_get_their_errors() {
        let mut rig = Rig::new();
        let cases = [
            (DC, "9000", "2000", "presence", 489),
            (DC, "9000", "2000", "", 489),
            (USER, "1000", "2000", "ptt-group", 403),
            (OTHER_DC, "9001", "2000", "ptt-group", 403),
            ("127.0.0.1:7999", "9000", "2000", "ptt-group", 403),
            (DC, "9000", "2999", "ptt-group", 404),
            (DC, "9000", "1099", "ptt-user", 404),
            (DC, "9000", "2000", "ptt-user", 404),
        ];
        for (from, user, target, event, expected) in cases {
            let sent = to(&rig.subscribe(from, user, target, event, 60, None), from);
            assert_eq!(status(&sent)[0].0, expected, "{user} → {target} ({event})");
            assert!(notifies(&sent).is_empty());
        }
        let sent = to(&rig.subscribe(DC, "9000", "2000", "ptt-group", 60, None), DC);
        assert_eq!(status(&sent)[0].0, 200);
        // A NOTIFY for no subscription, in or out of a dialog.
        for to_tag in [";tag=nope", ""] {
            let text = format!(
                "NOTIFY sip:9000@127.0.0.1:5601 SIP/2.0\r\nVia: SIP/2.0/UDP {DC};branch=z9hG4bKn{to_tag};rport\r\n\
                 Max-Forwards: 70\r\nFrom: <sip:2000@127.0.0.1:5601>;tag=x\r\nTo: <sip:9000@127.0.0.1:5601>{to_tag}\r\n\
                 Call-ID: n1\r\nCSeq: 1 NOTIFY\r\nEvent: ptt-group\r\nSubscription-State: active\r\nContent-Length: 0\r\n\r\n"
            );
            let sent = to(&rig.deliver(DC, text), DC);
            assert_eq!(status(&sent)[0].0, 481);
        }
        // A flood: one DC holds at most MAX_SUBSCRIPTIONS_PER_DISPATCHER.
        let mut refused = 0;
        for _ in 0..MAX_SUBSCRIPTIONS_PER_DISPATCHER + 4 {
            let sent = to(&rig.subscribe(DC, "9000", "1000", "ptt-user", 60, None), DC);
            if status(&sent)[0].0 == 503 {
                refused += 1;
            }
        }
        assert_eq!(refused, 5);
        assert_eq!(rig.tcf.subscription_count(), MAX_SUBSCRIPTIONS_PER_DISPATCHER);
    }
}
