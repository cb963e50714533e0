//! Dynamic regrouping (F-RGP-01 … F-RGP-03): a dispatcher adds users to a group, removes them,
//! or cancels earlier changes; every TCF that reads the group's membership follows.
//!
//! # Effective membership
//!
//! A group's members are its provisioned members plus the users added by regrouping, less the
//! users removed by it. The changes are kept per group in an overlay ([`Regroups`]; a user is in
//! `added` only when it is not a provisioned member, in `removed` only when it is), written to the
//! store on every change and restored at start, so a regrouping survives a restart. Every reader
//! of membership goes through [`Regroups::members`], [`Regroups::is_member`] and
//! [`Regroups::groups_of`]: the group home (whom a group call invites, who may set one up), member
//! TCFs (which local members a downlink is delivered to), the user's home (which group homes the
//! location pushes of F-REG-07 go to). A group's dispatchers are provisioned only.
//!
//! # The order's path (F-RGP-01, F-RGP-02)
//!
//! DC → the DC's serving TCF (D) → the group home (G) → per user: the user's home (H) → the
//! user's serving TCF (S) → the terminal. Adjacent stages on one node are one hop. D relays the
//! DC's order statefully (the DC gets G's final status); G applies the change, answers, then sends
//! one order per affected user; H and S each record the change for that user (H so its location
//! pushes follow, S so it delivers group calls to the user) and pass it on.
//!
//! # The report's path (F-RGP-03)
//!
//! The terminal's `reDGNA` report goes back along the same path. Each node remembers, per
//! (group, user, role), where the order came from ([`Back`]) for [`REPORT_WINDOW`]; a report
//! without such an entry gets `481`. A node on the path that cannot pass the order on (the user
//! is not registered, the next TCF is down or does not answer) reports the failure itself, with
//! the SIP status as the result cause.
//!
//! Wire formats: `docs/protocol.md`, "Dynamic regrouping".

use std::time::Duration;

use quick_xml::events::Event;
use quick_xml::Reader;

use crate::control::provisioning::{Group, UserKind};

use super::*;

/// Content type of the member list of a regrouping order.
pub(super) const MEMBER_LIST: &str = "application/pttdgnagrpmbrlist+xml";
/// Largest member-list body accepted.
const MAX_BODY: usize = 16 * 1024;
/// Most members one order may list.
const MAX_MEMBERS: usize = 256;
/// How long a node waits for the result report of an order it passed on.
const REPORT_WINDOW: Duration = Duration::from_secs(120);
/// Most report paths remembered at once (older ones are dropped first when full).
const MAX_AWAITING: usize = 8192;

/// What a regrouping order does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Adds the listed users to the group.
    Add,
    /// Removes the listed users from the group.
    Remove,
    /// Undoes the regrouping of the listed users (of every user when none is listed).
    Cancel,
}

impl Action {
    fn parse(text: &str) -> Option<Action> {
        match text.to_ascii_lowercase().as_str() {
            "add" => Some(Action::Add),
            "remove" => Some(Action::Remove),
            "cancel" => Some(Action::Cancel),
            _ => None,
        }
    }

    /// The token on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Add => "add",
            Action::Remove => "remove",
            Action::Cancel => "cancel",
        }
    }
}

/// One group's regrouping overlay, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Regroup {
    /// The group.
    pub group: Number,
    /// Users added (none of them a provisioned member).
    pub added: Vec<Number>,
    /// Provisioned members removed.
    pub removed: Vec<Number>,
}

/// Which stage of the order's path a node plays for one user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Role {
    /// The group home.
    Group,
    /// The user's home.
    Home,
    /// The user's serving TCF.
    Serving,
}

/// Where a report goes back to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Back {
    /// The dispatcher, served by this node.
    Dc,
    /// A peer TCF, addressed as `sip:<user>@<peer>` (the group, the user or the DC: the number
    /// tells the peer which of its entries the report is for).
    Peer { tcf: String, uri_user: Number },
    /// Nobody: the order was the user's home bringing a new serving TCF up to date.
    Here,
}

/// A report path remembered at one node.
#[derive(Debug, Clone)]
struct Awaiting {
    back: Back,
    /// The dispatcher that ordered (none for a user's home bringing its serving TCF up to date).
    dc: Option<Number>,
    /// The TCF the order went on to (`None`: the terminal); only it may report.
    next: Option<String>,
    until: Instant,
}

/// A regrouping request this node sent, for [`Tcf::regroup_completed`].
#[derive(Debug)]
pub(super) enum Sent {
    /// A DC's order relayed to the group home: the DC gets the outcome.
    Relayed {
        server: TransactionKey,
        request: Box<Message>,
        source: SocketAddr,
        group: Number,
        dc: Number,
    },
    /// A per-user order passed on from `role`: a failure is reported back from here.
    Order { group: Number, user: Number, role: Role },
    /// A result report, or an update of a serving TCF: nothing follows.
    Report,
}

/// The regrouping state of a node: the overlays, and the report paths of orders in flight.
#[derive(Debug, Default)]
pub(super) struct Regroups {
    overlays: NetMap<Number, Regroup>,
    awaiting: NetMap<(Number, Number, Role), Awaiting>,
    /// DC orders relayed to a group home (D side): (group, DC) → the home and until when its
    /// reports are expected.
    relayed: NetMap<(Number, Number), (String, Instant)>,
    /// Users whose home registration moved to another serving TCF since the last look (user
    /// home side): that TCF is brought up to date once the REGISTER is answered.
    pub(super) arrived: Vec<(Number, String)>,
}

/// What [`Regroups::apply`] changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Applied {
    /// The users the order concerns (for a cancel of the whole group: every user it had changed).
    pub affected: Vec<Number>,
    /// The store write, when the overlay changed.
    pub write: Option<StoreWrite>,
}

impl Regroups {
    /// The effective members of `gdn` (none when the group is not provisioned).
    pub(super) fn members<'a>(
        &'a self,
        subscribers: &'a Subscribers,
        gdn: &Number,
    ) -> impl Iterator<Item = &'a Number> + 'a {
        let overlay = self.overlays.get(gdn);
        subscribers
            .group(gdn)
            .into_iter()
            .flat_map(|group| group.members.iter())
            .filter(move |user| !overlay.is_some_and(|overlay| overlay.removed.contains(user)))
            .chain(overlay.into_iter().flat_map(|overlay| overlay.added.iter()))
    }

    /// Whether `user` is an effective member of `group` (dispatchers aside).
    pub(super) fn is_member(&self, group: &Group, user: &Number) -> bool {
        let overlay = self.overlays.get(&group.number);
        match overlay {
            Some(overlay) => {
                overlay.added.contains(user) || (group.members.contains(user) && !overlay.removed.contains(user))
            }
            None => group.members.contains(user),
        }
    }

    /// The groups `user` belongs to, as member (effective) or dispatcher.
    pub(super) fn groups_of<'a>(
        &'a self,
        subscribers: &'a Subscribers,
        user: &'a Number,
    ) -> impl Iterator<Item = &'a Number> + 'a {
        subscribers
            .groups_of(user)
            .filter(move |group| {
                group.dispatchers.contains(user)
                    || !self
                        .overlays
                        .get(&group.number)
                        .is_some_and(|overlay| overlay.removed.contains(user))
            })
            .map(|group| &group.number)
            .chain(
                self.overlays
                    .values()
                    .filter(move |overlay| overlay.added.contains(user))
                    .map(|overlay| &overlay.group),
            )
    }

    /// A group's overlay.
    pub(super) fn overlay(&self, gdn: &Number) -> Option<&Regroup> {
        self.overlays.get(gdn)
    }

    /// Applies an order to `group`'s overlay: `users` listed (for a cancel, none = all).
    pub(super) fn apply(&mut self, group: &Group, action: Action, users: &[Number]) -> Applied {
        let gdn = &group.number;
        let before = self.overlays.get(gdn).cloned();
        let overlay = self.overlays.entry(gdn.clone()).or_insert_with(|| Regroup {
            group: gdn.clone(),
            added: Vec::new(),
            removed: Vec::new(),
        });
        let affected = match action {
            Action::Cancel if users.is_empty() => {
                let mut all = std::mem::take(&mut overlay.added);
                all.append(&mut overlay.removed);
                all
            }
            _ => users.to_vec(),
        };
        for user in users {
            let provisioned = group.members.contains(user);
            overlay.added.retain(|added| added != user);
            overlay.removed.retain(|removed| removed != user);
            match action {
                Action::Add if !provisioned => overlay.added.push(user.clone()),
                Action::Remove if provisioned => overlay.removed.push(user.clone()),
                _ => {}
            }
        }
        let empty = overlay.added.is_empty() && overlay.removed.is_empty();
        let after = if empty {
            self.overlays.remove(gdn);
            None
        } else {
            Some(overlay.clone())
        };
        let write = match (before == after, after) {
            (true, _) => None,
            (false, Some(overlay)) => Some(StoreWrite::PutRegroup(overlay)),
            (false, None) => Some(StoreWrite::RemoveRegroup(gdn.clone())),
        };
        Applied { affected, write }
    }

    fn expect(&mut self, key: (Number, Number, Role), awaiting: Awaiting, now: Instant) {
        if self.awaiting.len() >= MAX_AWAITING {
            self.awaiting.retain(|_, entry| entry.until > now);
            if self.awaiting.len() >= MAX_AWAITING {
                // Still full of live entries: the oldest one goes.
                let oldest = self
                    .awaiting
                    .iter()
                    .min_by_key(|(_, entry)| entry.until)
                    .map(|(key, _)| key.clone());
                if let Some(oldest) = oldest {
                    self.awaiting.remove(&oldest);
                }
            }
        }
        self.awaiting.insert(key, awaiting);
    }

    fn take(&mut self, key: &(Number, Number, Role), now: Instant) -> Option<Awaiting> {
        self.awaiting.remove(key).filter(|entry| entry.until >= now)
    }
}

/// Why a member list was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ListError {
    /// Not the schema, not XML, too long: `400`.
    Malformed(&'static str),
}

/// Parses a member list: `<dgna><member>1105</member>...</dgna>` (an XML declaration and
/// comments allowed; no DOCTYPE, entities, attributes other than on the root, or other elements).
pub(super) fn parse_member_list(body: &[u8]) -> Result<Vec<Number>, ListError> {
    if body.len() > MAX_BODY {
        return Err(ListError::Malformed("member list too long"));
    }
    let text = std::str::from_utf8(body).map_err(|_| ListError::Malformed("member list not UTF-8"))?;
    let mut reader = Reader::from_str(text);
    reader.config_mut().trim_text(true);
    let mut members = Vec::new();
    // 0: before the root, 1: in <dgna>, 2: in <member>, 3: after the root.
    let mut depth = 0u8;
    let mut current: Option<Number> = None;
    // Every <member> counts towards the bound, duplicates too.
    let mut listed = 0usize;
    loop {
        let event = reader
            .read_event()
            .map_err(|_| ListError::Malformed("member list is not well-formed XML"))?;
        match (depth, event) {
            (_, Event::Eof) => break,
            (_, Event::Comment(_)) | (0, Event::Decl(_)) => {}
            (_, Event::Text(text)) if text.iter().all(u8::is_ascii_whitespace) => {}
            (0, Event::Start(start)) if start.local_name().as_ref() == b"dgna" => depth = 1,
            (0, Event::Empty(start)) if start.local_name().as_ref() == b"dgna" => depth = 3,
            (1, Event::Start(start))
                if start.local_name().as_ref() == b"member" && start.attributes().next().is_none() =>
            {
                depth = 2;
                current = None;
            }
            (1, Event::End(end)) if end.local_name().as_ref() == b"dgna" => depth = 3,
            (2, Event::Text(text)) if current.is_none() => {
                let digits = std::str::from_utf8(&text).map_err(|_| ListError::Malformed("member number"))?;
                let number = Number::parse(digits.trim()).map_err(|_| ListError::Malformed("member number"))?;
                current = Some(number);
            }
            (2, Event::End(end)) if end.local_name().as_ref() == b"member" => {
                let number = current.take().ok_or(ListError::Malformed("empty member"))?;
                listed += 1;
                if listed > MAX_MEMBERS {
                    return Err(ListError::Malformed("member list too long"));
                }
                if !members.contains(&number) {
                    members.push(number);
                }
                depth = 1;
            }
            _ => return Err(ListError::Malformed("member list does not follow the schema")),
        }
    }
    if depth != 3 {
        return Err(ListError::Malformed("member list has no <dgna> element"));
    }
    Ok(members)
}

/// The member-list body for `users`.
#[cfg(test)]
pub(super) fn member_list(users: &[Number]) -> String {
    let mut body = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<dgna>\n");
    for user in users {
        body.push_str("  <member>");
        body.push_str(user.as_str());
        body.push_str("</member>\n");
    }
    body.push_str("</dgna>\n");
    body
}

/// The parameters of a `pptDGNA` / `reDGNA` Ptt-Extension.
#[derive(Debug, Default)]
struct Params {
    group: Option<String>,
    user: Option<String>,
    action: Option<String>,
    dc: Option<String>,
    result: Option<String>,
}

impl Params {
    fn of(request: &Message) -> Params {
        let Some(extension) = request.ptt_extension().ok().flatten() else {
            return Params::default();
        };
        let text = |name: &str| {
            extension
                .param(name)
                .map(|value| String::from_utf8_lossy(&value).into_owned())
        };
        Params {
            group: text("GDN"),
            user: text("UDN"),
            action: text("action"),
            dc: text("DC"),
            result: text("DGNAresult"),
        }
    }
}

fn number(text: Option<&str>) -> Option<Number> {
    Number::parse(text?).ok()
}

impl Tcf {
    /// Restores the regrouping overlays after a restart.
    pub fn restore_regroups(&mut self, regroups: Vec<Regroup>) {
        let subscribers = Arc::clone(&self.subscribers);
        for mut regroup in regroups {
            let Some(group) = subscribers.group(&regroup.group) else {
                // The group is no longer provisioned: its overlay goes too.
                self.write(StoreWrite::RemoveRegroup(regroup.group));
                continue;
            };
            // Provisioning may have changed since: keep the overlay's invariants (an added user
            // is no provisioned member, a removed one is).
            let stored = regroup.clone();
            regroup.added.retain(|user| !group.members.contains(user));
            regroup.removed.retain(|user| group.members.contains(user));
            if regroup.added.is_empty() && regroup.removed.is_empty() {
                self.write(StoreWrite::RemoveRegroup(regroup.group));
                continue;
            }
            if regroup != stored {
                self.write(StoreWrite::PutRegroup(regroup.clone()));
            }
            self.regroups.overlays.insert(regroup.group.clone(), regroup);
        }
    }

    /// A group's regrouping overlay as this node knows it.
    pub fn regroup(&self, gdn: &Number) -> Option<&Regroup> {
        self.regroups.overlay(gdn)
    }

    /// The effective members of a group as this node knows them.
    pub fn group_members(&self, gdn: &Number) -> Vec<Number> {
        self.regroups.members(&self.subscribers, gdn).cloned().collect()
    }

    /// Whether `user` is an effective member or a dispatcher of `group`.
    pub(super) fn in_group(&self, group: &Group, user: &Number) -> bool {
        self.regroups.is_member(group, user) || group.dispatchers.contains(user)
    }

    // ---- orders --------------------------------------------------------------------------

    /// `MESSAGE` with `pptDGNA`: a DC's order (from the DC, or relayed by its TCF) or a per-user
    /// order from the previous TCF of the path.
    pub(super) fn dgna_order(&mut self, now: Now, key: TransactionKey, request: Message) {
        let Some(source) = self.current_source else { return };
        let peer = self.network.tcf_at(source).map(|tcf| tcf.name.clone());
        let params = Params::of(&request);
        let Some(action) = params.action.as_deref().and_then(Action::parse) else {
            self.respond(now, &key, &request, 400, "Bad Request (action)", &[]);
            return;
        };
        let uri_user = request_user(&request);
        let gdn = match (params.group.as_deref(), &uri_user) {
            (Some(text), _) => Number::parse(text).ok(),
            (None, Some(user)) => Some(user.clone()),
            (None, None) => None,
        };
        let Some(gdn) = gdn else {
            self.respond(now, &key, &request, 400, "Bad Request (GDN)", &[]);
            return;
        };
        match (peer, params.user.as_deref()) {
            (None, Some(_)) => {
                self.respond(
                    now,
                    &key,
                    &request,
                    403,
                    "Forbidden (per-user orders come from TCFs)",
                    &[],
                );
            }
            (None, None) => self.dc_order(now, key, request, gdn, action, source),
            (Some(peer), None) => {
                let Some(dc) = number(params.dc.as_deref()) else {
                    self.respond(now, &key, &request, 400, "Bad Request (DC)", &[]);
                    return;
                };
                if self.network.home_of_group(&gdn).map(|tcf| tcf.name.as_str()) != Some(self.config.name.as_str()) {
                    self.respond(now, &key, &request, 404, "Not Found (not the group's home)", &[]);
                    return;
                }
                let users = match self.check_order(&request, &gdn, &dc, action) {
                    Ok(users) => users,
                    Err((status, reason)) => {
                        self.respond(now, &key, &request, status, &reason, &[]);
                        return;
                    }
                };
                let back = Back::Peer {
                    tcf: peer,
                    uri_user: dc.clone(),
                };
                self.group_order(now, &key, &request, &gdn, action, &users, &dc, back);
            }
            (Some(peer), Some(user)) => {
                let Ok(user) = Number::parse(user) else {
                    self.respond(now, &key, &request, 400, "Bad Request (UDN)", &[]);
                    return;
                };
                let dc = number(params.dc.as_deref());
                self.peer_user_order(now, key, request, peer, gdn, user, dc, action);
            }
        }
    }

    /// F-RGP-01 at the DC's serving TCF.
    fn dc_order(
        &mut self,
        now: Now,
        key: TransactionKey,
        request: Message,
        gdn: Number,
        action: Action,
        source: SocketAddr,
    ) {
        let Some(dc) = self.registered_sender(&request, source) else {
            self.respond(now, &key, &request, 403, "Forbidden (not registered here)", &[]);
            return;
        };
        let users = match self.check_order(&request, &gdn, &dc, action) {
            Ok(users) => users,
            Err((status, reason)) => {
                self.respond(now, &key, &request, status, &reason, &[]);
                return;
            }
        };
        let Some((home, address)) = self.network.home_of_group(&gdn).map(|tcf| (tcf.name.clone(), tcf.sip)) else {
            self.respond(now, &key, &request, 404, "Not Found (unknown group)", &[]);
            return;
        };
        if home == self.config.name {
            self.group_order(now, &key, &request, &gdn, action, &users, &dc, Back::Dc);
            return;
        }
        if self.peer_is_down(&home) {
            self.respond(
                now,
                &key,
                &request,
                503,
                "Service Unavailable (group home unreachable)",
                &[],
            );
            return;
        }
        // The order goes on to the group home with the DC named; the DC gets its answer.
        let extension = format!("pptDGNA;GDN={gdn};action={};DC={dc}", action.as_str());
        let body = (!request.body().is_empty()).then(|| Bytes::copy_from_slice(request.body()));
        if self.regroups.relayed.len() >= MAX_AWAITING {
            self.regroups.relayed.retain(|_, (_, until)| *until > now.instant);
        }
        self.regroups
            .relayed
            .insert((gdn.clone(), dc.clone()), (home.clone(), now.instant + REPORT_WINDOW));
        let uri = format!("sip:{gdn}@{address}");
        let sent = Sent::Relayed {
            server: key.clone(),
            request: Box::new(request.clone()),
            source,
            group: gdn.clone(),
            dc: dc.clone(),
        };
        if self
            .send_regroup(now, &uri, &dc, &extension, body, address, sent)
            .is_none()
        {
            self.regroups.relayed.remove(&(gdn, dc));
            self.respond(now, &key, &request, 500, "Server Internal Error", &[]);
        }
    }

    /// Checks an order against provisioning: the group exists (404), `dc` is one of its
    /// dispatchers (403), the body is a member list (415/400) of provisioned terminals (404/400).
    fn check_order(
        &self,
        request: &Message,
        gdn: &Number,
        dc: &Number,
        action: Action,
    ) -> Result<Vec<Number>, (u16, String)> {
        let Some(group) = self.subscribers.group(gdn) else {
            return Err((404, "Not Found (unknown group)".to_owned()));
        };
        if self.network.home_of_group(gdn).is_none() {
            return Err((404, "Not Found (unknown group)".to_owned()));
        }
        let is_dispatcher = self
            .subscribers
            .user(dc)
            .is_some_and(|user| user.kind == UserKind::Dispatcher);
        if !is_dispatcher || !group.dispatchers.contains(dc) {
            return Err((403, "Forbidden (not a dispatcher of the group)".to_owned()));
        }
        let users = if request.body().is_empty() {
            Vec::new()
        } else {
            let list = request
                .content_type()
                .ok()
                .flatten()
                .is_some_and(|media_type| media_type.is("application", "pttdgnagrpmbrlist+xml"));
            if !list {
                return Err((415, "Unsupported Media Type".to_owned()));
            }
            parse_member_list(request.body())
                .map_err(|ListError::Malformed(why)| (400, format!("Bad Request ({why})")))?
        };
        if users.is_empty() && action != Action::Cancel {
            return Err((400, "Bad Request (no member listed)".to_owned()));
        }
        for user in &users {
            match self.subscribers.user(user) {
                None => return Err((404, format!("Not Found (unknown user {user})"))),
                Some(subscriber) if subscriber.kind == UserKind::Dispatcher => {
                    return Err((400, format!("Bad Request ({user} is a dispatcher)")));
                }
                Some(_) => {}
            }
            if self.network.home_of_user(user).is_none() {
                return Err((404, format!("Not Found (no home TCF for {user})")));
            }
        }
        Ok(users)
    }

    /// At the group home: applies the order, answers it, sends it on per user (F-RGP-02).
    #[allow(clippy::too_many_arguments)]
    fn group_order(
        &mut self,
        now: Now,
        key: &TransactionKey,
        request: &Message,
        gdn: &Number,
        action: Action,
        users: &[Number],
        dc: &Number,
        back: Back,
    ) {
        let subscribers = Arc::clone(&self.subscribers);
        let Some(group) = subscribers.group(gdn) else {
            self.respond(now, key, request, 404, "Not Found (unknown group)", &[]);
            return;
        };
        let applied = self.regroups.apply(group, action, users);
        self.overlay_changed(gdn, action, &applied);
        self.respond(now, key, request, 200, "OK", &[]);
        for user in applied.affected {
            self.user_order(now, gdn, &user, action, Some(dc), back.clone(), Role::Group);
        }
    }

    /// Persists an overlay change and lets running group calls follow it.
    fn overlay_changed(&mut self, gdn: &Number, action: Action, applied: &Applied) {
        if let Some(write) = &applied.write {
            self.write(write.clone());
            self.groups.changed.extend(applied.affected.iter().cloned());
            self.event(TcfEvent::Regrouped {
                group: gdn.clone(),
                users: applied.affected.clone(),
                action: action.as_str().to_owned(),
            });
        }
    }

    /// A per-user order from a peer: this node is the user's home (from the group home) or its
    /// serving TCF (from the user's home).
    #[allow(clippy::too_many_arguments)]
    fn peer_user_order(
        &mut self,
        now: Now,
        key: TransactionKey,
        request: Message,
        peer: String,
        gdn: Number,
        user: Number,
        dc: Option<Number>,
        action: Action,
    ) {
        let user_home = self.network.home_of_user(&user).map(|tcf| tcf.name.clone());
        let group_home = self.network.home_of_group(&gdn).map(|tcf| tcf.name.clone());
        let (Some(user_home), Some(group_home)) = (user_home, group_home) else {
            self.respond(now, &key, &request, 404, "Not Found", &[]);
            return;
        };
        if self.subscribers.group(&gdn).is_none() || self.subscribers.user(&user).is_none() {
            self.respond(now, &key, &request, 404, "Not Found", &[]);
            return;
        }
        let (role, expected, uri_user) = if user_home == self.config.name {
            (Role::Home, group_home, gdn.clone())
        } else {
            (Role::Serving, user_home, user.clone())
        };
        if peer != expected {
            self.respond(
                now,
                &key,
                &request,
                403,
                "Forbidden (not the previous TCF of the order)",
                &[],
            );
            return;
        }
        // Without a DC only the user's home may bring its serving TCF up to date.
        if dc.is_none() && role != Role::Serving {
            self.respond(now, &key, &request, 400, "Bad Request (DC)", &[]);
            return;
        }
        self.respond(now, &key, &request, 200, "OK", &[]);
        let back = match dc {
            Some(_) => Back::Peer { tcf: peer, uri_user },
            None => Back::Here,
        };
        self.user_order(now, &gdn, &user, action, dc.as_ref(), back, role);
    }

    /// Carries a per-user order through the stages this node plays, from `role` on, and on to
    /// the next node or the terminal.
    #[allow(clippy::too_many_arguments)]
    fn user_order(
        &mut self,
        now: Now,
        gdn: &Number,
        user: &Number,
        action: Action,
        dc: Option<&Number>,
        back: Back,
        mut role: Role,
    ) {
        let me = self.config.name.clone();
        loop {
            let awaiting = |next: Option<String>| Awaiting {
                back: back.clone(),
                dc: dc.cloned(),
                next,
                until: now.instant + REPORT_WINDOW,
            };
            let key = (gdn.clone(), user.clone(), role);
            match role {
                Role::Group => {
                    let Some((home, address)) = self.network.home_of_user(user).map(|tcf| (tcf.name.clone(), tcf.sip))
                    else {
                        return;
                    };
                    if home == me {
                        role = Role::Home;
                        continue;
                    }
                    self.regroups.expect(key, awaiting(Some(home.clone())), now.instant);
                    self.order_to_peer(now, gdn, user, action, dc, &home, address, role);
                    return;
                }
                Role::Home => {
                    self.record_for_user(gdn, user, action);
                    self.location_to_group_home(now, gdn, user);
                    let serving = self
                        .registrations
                        .get(user)
                        .map(|registration| registration.serving.clone());
                    let Some(serving) = serving else {
                        self.regroups.expect(key, awaiting(None), now.instant);
                        self.report_back(now, gdn, user, role, "480");
                        return;
                    };
                    if serving == me {
                        role = Role::Serving;
                        continue;
                    }
                    let Some(address) = self.network.tcf(&serving).map(|tcf| tcf.sip) else {
                        return;
                    };
                    self.regroups.expect(key, awaiting(Some(serving.clone())), now.instant);
                    self.order_to_peer(now, gdn, user, action, dc, &serving, address, role);
                    return;
                }
                Role::Serving => {
                    self.record_for_user(gdn, user, action);
                    self.regroups.expect(key, awaiting(None), now.instant);
                    let Some(binding) = self.bindings.get(user).cloned() else {
                        self.report_back(now, gdn, user, role, "480");
                        return;
                    };
                    let extension = format!("pptDGNA;GDN={gdn};UDN={user};action={}", action.as_str());
                    let uri = binding.contact.trim_matches(|c| c == '<' || c == '>').to_owned();
                    let sent = Sent::Order {
                        group: gdn.clone(),
                        user: user.clone(),
                        role,
                    };
                    // From the DC, or from the group when a home brings its serving TCF up to date.
                    let from = dc.unwrap_or(gdn).clone();
                    if self
                        .send_regroup(now, &uri, &from, &extension, None, binding.address, sent)
                        .is_none()
                    {
                        self.report_back(now, gdn, user, role, "500");
                    }
                    return;
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn order_to_peer(
        &mut self,
        now: Now,
        gdn: &Number,
        user: &Number,
        action: Action,
        dc: Option<&Number>,
        peer: &str,
        address: SocketAddr,
        role: Role,
    ) {
        // An update of a serving TCF (no DC) has nobody to report a failure to.
        let reported = dc.is_some();
        if self.peer_is_down(peer) {
            if reported {
                self.report_back(now, gdn, user, role, "503");
            }
            return;
        }
        let mut extension = format!("pptDGNA;GDN={gdn};UDN={user};action={}", action.as_str());
        if let Some(dc) = dc {
            extension.push_str(";DC=");
            extension.push_str(dc.as_str());
        }
        let from = dc.unwrap_or(gdn);
        let uri = format!("sip:{user}@{address}");
        let sent = if reported {
            Sent::Order {
                group: gdn.clone(),
                user: user.clone(),
                role,
            }
        } else {
            Sent::Report
        };
        let sent = self.send_regroup(now, &uri, from, &extension, None, address, sent);
        if sent.is_none() && reported {
            self.report_back(now, gdn, user, role, "500");
        }
    }

    /// Records the order for one user at its home or serving TCF (the group home has applied
    /// it to the whole group already).
    fn record_for_user(&mut self, gdn: &Number, user: &Number, action: Action) {
        let subscribers = Arc::clone(&self.subscribers);
        let Some(group) = subscribers.group(gdn) else { return };
        let applied = self.regroups.apply(group, action, std::slice::from_ref(user));
        self.overlay_changed(gdn, action, &applied);
    }

    /// At the user's home: tells the group home where the user is at once (F-REG-07), so a group
    /// call reaches a user just added.
    fn location_to_group_home(&mut self, now: Now, gdn: &Number, user: &Number) {
        let Some(registration) = self.registrations.get(user).cloned() else {
            return;
        };
        if !self
            .subscribers
            .group(gdn)
            .is_some_and(|group| self.regroups.is_member(group, user))
        {
            return;
        }
        let Some((home, address)) = self.network.home_of_group(gdn).map(|tcf| (tcf.name.clone(), tcf.sip)) else {
            return;
        };
        let expires = u32::try_from(registration.expires_at.saturating_sub(now.unix()))
            .unwrap_or(u32::MAX)
            .max(1);
        self.location_to(now, user, Some(&registration.serving), expires, gdn, &home, address);
    }

    /// At the user's home: users now registered through another serving TCF (first, or moved
    /// there). The serving TCF gets the user's regroupings (without `DC`: no report comes
    /// back), so it delivers the groups' calls to the user and tells the terminal. Called after
    /// the REGISTER is answered, so the serving TCF has bound the user when the order arrives.
    pub(super) fn regroup_arrivals(&mut self, now: Now) {
        if self.regroups.arrived.is_empty() {
            return;
        }
        for (user, serving) in std::mem::take(&mut self.regroups.arrived) {
            self.regroup_arrived(now, &user, &serving);
        }
    }

    fn regroup_arrived(&mut self, now: Now, user: &Number, serving: &str) {
        if serving == self.config.name {
            return; // this node's own overlay is the one it serves the user by
        }
        let Some(address) = self.network.tcf(serving).map(|tcf| tcf.sip) else {
            return;
        };
        let orders: Vec<(Number, Action)> = self
            .regroups
            .overlays
            .values()
            .filter_map(|overlay| {
                if overlay.added.contains(user) {
                    Some((overlay.group.clone(), Action::Add))
                } else if overlay.removed.contains(user) {
                    Some((overlay.group.clone(), Action::Remove))
                } else {
                    None
                }
            })
            .collect();
        for (gdn, action) in orders {
            self.order_to_peer(now, &gdn, user, action, None, serving, address, Role::Home);
        }
    }

    // ---- reports -------------------------------------------------------------------------

    /// `MESSAGE` with `reDGNA`: a terminal's result, or one passed back by the next TCF.
    pub(super) fn dgna_report(&mut self, now: Now, key: TransactionKey, request: Message) {
        let Some(source) = self.current_source else { return };
        let peer = self.network.tcf_at(source).map(|tcf| tcf.name.clone());
        let params = Params::of(&request);
        let (Some(gdn), Some(user)) = (number(params.group.as_deref()), number(params.user.as_deref())) else {
            self.respond(now, &key, &request, 400, "Bad Request (GDN, UDN)", &[]);
            return;
        };
        let result = match params.result.as_deref() {
            Some(result) if !result.is_empty() && result.len() <= 8 && result.bytes().all(|b| b.is_ascii_digit()) => {
                result.to_owned()
            }
            _ => {
                self.respond(now, &key, &request, 400, "Bad Request (DGNAresult)", &[]);
                return;
            }
        };
        let Some(peer) = peer else {
            // From the terminal itself, registered here.
            let registered = from_user(&request).as_ref() == Some(&user)
                && self
                    .bindings
                    .get(&user)
                    .is_some_and(|binding| binding.address == source);
            if !registered {
                self.respond(now, &key, &request, 403, "Forbidden (not registered here)", &[]);
                return;
            }
            self.report_arrived(now, &key, &request, &gdn, &user, Role::Serving, None, &result);
            return;
        };
        let uri_user = request_user(&request);
        let dc = number(params.dc.as_deref());
        if uri_user.as_ref() == Some(&gdn) {
            self.report_arrived(now, &key, &request, &gdn, &user, Role::Group, Some(&peer), &result);
        } else if uri_user.is_some() && uri_user == dc {
            // At the DC's TCF, from the group home: on to the DC.
            let Some(dc) = dc else { return };
            let known = self
                .regroups
                .relayed
                .get(&(gdn.clone(), dc.clone()))
                .is_some_and(|(home, until)| *home == peer && *until >= now.instant);
            if !known {
                self.respond(
                    now,
                    &key,
                    &request,
                    481,
                    "Call/Transaction Does Not Exist (no such order)",
                    &[],
                );
                return;
            }
            self.respond(now, &key, &request, 200, "OK", &[]);
            self.event(TcfEvent::RegroupReported {
                group: gdn.clone(),
                user: user.clone(),
                result: result.clone(),
            });
            self.report_to_dc(now, &gdn, &user, &dc, &result);
        } else if uri_user.as_ref() == Some(&user) {
            self.report_arrived(now, &key, &request, &gdn, &user, Role::Home, Some(&peer), &result);
        } else {
            self.respond(now, &key, &request, 404, "Not Found", &[]);
        }
    }

    /// A report for this node's entry (`role`): answered, then passed back.
    #[allow(clippy::too_many_arguments)]
    fn report_arrived(
        &mut self,
        now: Now,
        key: &TransactionKey,
        request: &Message,
        gdn: &Number,
        user: &Number,
        role: Role,
        from: Option<&str>,
        result: &str,
    ) {
        let entry = (gdn.clone(), user.clone(), role);
        let expected = self
            .regroups
            .awaiting
            .get(&entry)
            .is_some_and(|awaiting| awaiting.next.as_deref() == from && awaiting.until >= now.instant);
        if !expected {
            self.respond(
                now,
                key,
                request,
                481,
                "Call/Transaction Does Not Exist (no such order)",
                &[],
            );
            return;
        }
        self.respond(now, key, request, 200, "OK", &[]);
        self.report_back(now, gdn, user, role, result);
    }

    /// Sends the result for (group, user) back from this node's `role` entry.
    fn report_back(&mut self, now: Now, gdn: &Number, user: &Number, role: Role, result: &str) {
        let Some(awaiting) = self.regroups.take(&(gdn.clone(), user.clone(), role), now.instant) else {
            return;
        };
        self.event(TcfEvent::RegroupReported {
            group: gdn.clone(),
            user: user.clone(),
            result: result.to_owned(),
        });
        let Some(dc) = awaiting.dc else { return };
        match awaiting.back {
            Back::Here => {}
            Back::Dc => self.report_to_dc(now, gdn, user, &dc, result),
            Back::Peer { tcf, uri_user } => {
                let Some(address) = self.network.tcf(&tcf).map(|tcf| tcf.sip) else {
                    return;
                };
                if self.peer_is_down(&tcf) {
                    return;
                }
                let extension = format!("reDGNA;GDN={gdn};UDN={user};DGNAresult={result};DC={dc}");
                let uri = format!("sip:{uri_user}@{address}");
                self.send_regroup(now, &uri, user, &extension, None, address, Sent::Report);
            }
        }
    }

    /// The last hop: the report to the DC this node serves.
    fn report_to_dc(&mut self, now: Now, gdn: &Number, user: &Number, dc: &Number, result: &str) {
        let Some(binding) = self.bindings.get(dc).cloned() else {
            return;
        };
        let extension = format!("reDGNA;GDN={gdn};UDN={user};DGNAresult={result}");
        let uri = binding.contact.trim_matches(|c| c == '<' || c == '>').to_owned();
        self.send_regroup(now, &uri, user, &extension, None, binding.address, Sent::Report);
    }

    // ---- client transactions ---------------------------------------------------------------

    /// Sends a regrouping `MESSAGE` (`from_user` acts: the DC for orders, the user for reports).
    #[allow(clippy::too_many_arguments)]
    fn send_regroup(
        &mut self,
        now: Now,
        uri: &str,
        from_user: &Number,
        extension: &str,
        body: Option<Bytes>,
        destination: SocketAddr,
        sent: Sent,
    ) -> Option<TransactionKey> {
        self.send_message_as(
            now,
            from_user.as_str(),
            uri,
            extension.to_owned(),
            body.map(|body| (MEMBER_LIST, body)),
            destination,
            Pending::Regroup(Box::new(sent)),
        )
    }

    /// A regrouping request this node sent was answered (or timed out: 408).
    pub(super) fn regroup_completed(&mut self, now: Now, sent: Sent, status: u16, response: Option<Message>) {
        match sent {
            Sent::Report => {}
            Sent::Order { group, user, role } => {
                if !(200..300).contains(&status) {
                    self.report_back(now, &group, &user, role, itoa::Buffer::new().format(status));
                }
            }
            Sent::Relayed {
                server,
                request,
                source,
                group,
                dc,
            } => {
                // The answer goes to the DC, whose request came from `source`.
                let handling = self.current_source.replace(source);
                match status {
                    200..=299 => self.respond(now, &server, &request, 200, "OK", &[]),
                    408 => {
                        self.regroups.relayed.remove(&(group, dc));
                        self.respond(
                            now,
                            &server,
                            &request,
                            408,
                            "Request Timeout (group home did not answer)",
                            &[],
                        );
                    }
                    status => {
                        self.regroups.relayed.remove(&(group, dc));
                        let reason = response
                            .as_ref()
                            .and_then(|response| response.reason_phrase())
                            .map(|reason| String::from_utf8_lossy(reason).into_owned())
                            .unwrap_or_else(|| "Refused by the group home".to_owned());
                        self.respond(now, &server, &request, status, &reason, &[]);
                    }
                }
                self.current_source = handling;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(text: &str) -> Number {
        Number::parse(text).unwrap()
    }

    fn group() -> Group {
        Group {
            number: n("2000"),
            members: vec![n("1000"), n("1001")],
            dispatchers: vec![n("9000")],
            priority: 5,
        }
    }

    #[test]
    fn overlay_adds_removes_and_cancels() {
        let subscribers = Subscribers::from_toml(
            "s",
            "[[user]]\nnumber = \"1000-1003\"\npassword = \"p\"\n[[user]]\nnumber = \"9000\"\npassword = \"p\"\nkind = \"dispatcher\"\n\
             [[group]]\nnumber = \"2000\"\nmembers = [\"1000\", \"1001\"]\ndispatchers = [\"9000\"]\n",
        )
        .unwrap();
        let group = group();
        let mut regroups = Regroups::default();
        let members =
            |regroups: &Regroups| -> Vec<Number> { regroups.members(&subscribers, &n("2000")).cloned().collect() };
        assert_eq!(members(&regroups), vec![n("1000"), n("1001")]);

        // Add one outsider and a provisioned member (no change for the latter).
        let applied = regroups.apply(&group, Action::Add, &[n("1002"), n("1000")]);
        assert_eq!(applied.affected, vec![n("1002"), n("1000")]);
        let expected = Regroup {
            group: n("2000"),
            added: vec![n("1002")],
            removed: vec![],
        };
        assert_eq!(applied.write, Some(StoreWrite::PutRegroup(expected)));
        assert_eq!(members(&regroups), vec![n("1000"), n("1001"), n("1002")]);
        assert!(regroups.is_member(&group, &n("1002")));
        let user = n("1002");
        let of_user: Vec<&Number> = regroups.groups_of(&subscribers, &user).collect();
        assert_eq!(of_user, vec![&n("2000")]);

        // The same order again changes nothing (no write).
        assert_eq!(regroups.apply(&group, Action::Add, &[n("1002")]).write, None);

        // Remove a provisioned member.
        regroups.apply(&group, Action::Remove, &[n("1001")]);
        assert_eq!(members(&regroups), vec![n("1000"), n("1002")]);
        assert!(!regroups.is_member(&group, &n("1001")));
        assert_eq!(regroups.groups_of(&subscribers, &n("1001")).count(), 0);
        // The dispatcher stays one whatever happens.
        assert_eq!(regroups.groups_of(&subscribers, &n("9000")).count(), 1);

        // Cancel for one user: 1001 is back.
        let applied = regroups.apply(&group, Action::Cancel, &[n("1001")]);
        assert_eq!(applied.affected, vec![n("1001")]);
        assert_eq!(members(&regroups), vec![n("1000"), n("1001"), n("1002")]);

        // Removing an added user drops it from the overlay; then the overlay is empty: removed.
        regroups.apply(&group, Action::Remove, &[n("1000")]);
        let applied = regroups.apply(&group, Action::Cancel, &[]);
        let mut affected = applied.affected.clone();
        affected.sort();
        assert_eq!(affected, vec![n("1000"), n("1002")]);
        assert_eq!(applied.write, Some(StoreWrite::RemoveRegroup(n("2000"))));
        assert_eq!(members(&regroups), vec![n("1000"), n("1001")]);
        assert!(regroups.overlay(&n("2000")).is_none());
        // Cancelling nothing writes nothing.
        assert_eq!(regroups.apply(&group, Action::Cancel, &[]).write, None);
    }

    // ---- two cores: the order and its report between TCFs, in simulated time ----------

    const NETWORK: &str = "[[tcf]]\nname = \"a\"\nsip = \"127.0.0.1:5701\"\nusers = [\"1000-1099\"]\ngroups = [\"2000\"]\nsecret = \"sa\"\n\
                           [[tcf]]\nname = \"b\"\nsip = \"127.0.0.1:5702\"\nusers = [\"1100-1199\", \"9100\"]\nsecret = \"sb\"\n";
    const SUBSCRIBERS: &str =
        "[[user]]\nnumber = \"1000-1001\"\npassword = \"pw\"\n[[user]]\nnumber = \"1100-1101\"\npassword = \"pw\"\n\
                               [[user]]\nnumber = \"9100\"\npassword = \"pw\"\nkind = \"dispatcher\"\n\
                               [[group]]\nnumber = \"2000\"\nmembers = [\"1000-1001\"]\ndispatchers = [\"9100\"]\n";
    const DC: &str = "127.0.0.1:7100";
    const USER: &str = "127.0.0.1:7101";

    struct Pair {
        a: Tcf,
        b: Tcf,
        start: Instant,
        wall: SystemTime,
        /// Deliver nothing to a (the group home does not answer).
        a_silent: bool,
    }

    impl Pair {
        /// Group 2000 homed on a; DC 9100 and user 1100 (both homed on b) served by b.
        fn new() -> Pair {
            let (start, wall) = (Instant::now(), SystemTime::now());
            let network = Arc::new(Network::from_toml("n", NETWORK).unwrap());
            let subscribers = Arc::new(Subscribers::from_toml("s", SUBSCRIBERS).unwrap());
            let core = |name: &str| {
                let sip = crate::config::Config::from_toml("[sip]\nrealm = \"test\"\nt1_ms = 100\n")
                    .unwrap()
                    .sip;
                let config = TcfConfig::new(name, sip, [7; 32]).unwrap();
                let now = Now { instant: start, wall };
                Tcf::new(config, Arc::clone(&network), Arc::clone(&subscribers), now, 1).unwrap()
            };
            let (a, mut b) = (core("a"), core("b"));
            let unix = wall.duration_since(UNIX_EPOCH).unwrap().as_secs();
            let binding = |user: &str, address: &str| Binding {
                user: n(user),
                contact: format!("<sip:{user}@{address}>"),
                address: address.parse().unwrap(),
                expires_at: unix + 3600,
            };
            let registration = |user: &str| Registration {
                user: n(user),
                serving: "b".to_owned(),
                expires_at: unix + 3600,
            };
            b.restore(
                vec![binding("9100", DC), binding("1100", USER)],
                vec![registration("9100"), registration("1100")],
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

        /// Moves datagrams between the cores until they are quiet; returns what went to the
        /// terminals, the store writes and the events of each core.
        fn run(&mut self, millis: u64) -> (Vec<(SocketAddr, Message)>, Vec<StoreWrite>, Vec<TcfEvent>) {
            let now = self.at(millis);
            let (mut terminals, mut writes, mut events) = (Vec::new(), Vec::new(), Vec::new());
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
                    let silent = self.a_silent && !from_a;
                    for (destination, bytes) in datagrams {
                        if destination == to.address() {
                            if !silent {
                                moved = true;
                                to.handle_datagram(now, from_address, bytes);
                            }
                        } else {
                            terminals.push((destination, Message::parse_datagram(bytes).unwrap()));
                        }
                    }
                }
                if !moved {
                    break;
                }
            }
            (terminals, writes, events)
        }

        fn terminal_sends(&mut self, millis: u64, address: &str, text: &str) {
            let now = self.at(millis);
            self.b
                .handle_datagram(now, address.parse().unwrap(), Bytes::copy_from_slice(text.as_bytes()));
        }
    }

    fn message_from(user: &str, address: &str, uri_user: &str, extension: &str, body: &str) -> String {
        let content_type = if body.is_empty() {
            String::new()
        } else {
            format!("Content-Type: {MEMBER_LIST}\r\n")
        };
        format!(
            "MESSAGE sip:{uri_user}@127.0.0.1:5702 SIP/2.0\r\nVia: SIP/2.0/UDP {address};branch=z9hG4bK{user}{uri_user}{};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:{user}@127.0.0.1:5702>;tag=t\r\nTo: <sip:{uri_user}@127.0.0.1:5702>\r\n\
             Call-ID: m{user}{}@t\r\nCSeq: 1 MESSAGE\r\nPtt-Extension: {extension}\r\n{content_type}\
             Content-Length: {}\r\n\r\n{body}",
            extension.len(),
            extension.len(),
            body.len()
        )
    }

    fn final_status(to: &[(SocketAddr, Message)], address: &str) -> Option<u16> {
        let address: SocketAddr = address.parse().unwrap();
        to.iter()
            .filter(|(destination, _)| *destination == address)
            .filter_map(|(_, message)| message.status())
            .find(|status| *status >= 200)
    }

    fn requests_to<'m>(to: &'m [(SocketAddr, Message)], address: &str) -> Vec<&'m Message> {
        let address: SocketAddr = address.parse().unwrap();
        to.iter()
            .filter(|(destination, message)| *destination == address && message.is_request())
            .map(|(_, message)| message)
            .collect()
    }

    fn extension_of(message: &Message) -> String {
        message
            .first_value_str(HeaderName::PttExtension)
            .unwrap_or_default()
            .into_owned()
    }

    #[test]
    fn order_relayed_to_the_group_home_and_report_back_to_the_dc() {
        let mut pair = Pair::new();
        let body = member_list(&[n("1100")]);
        let order = message_from("9100", DC, "2000", "pptDGNA;GDN=2000;action=add", &body);
        pair.terminal_sends(0, DC, &order);
        let (to_terminals, writes, events) = pair.run(0);
        assert_eq!(final_status(&to_terminals, DC), Some(200), "the DC gets the home's 200");
        // Both the group home (a) and the user's home and serving TCF (b) record the change.
        let expected = Regroup {
            group: n("2000"),
            added: vec![n("1100")],
            removed: vec![],
        };
        assert_eq!(
            writes
                .iter()
                .filter(|write| **write == StoreWrite::PutRegroup(expected.clone()))
                .count(),
            2,
            "{writes:?}"
        );
        assert_eq!(pair.a.group_members(&n("2000")), vec![n("1000"), n("1001"), n("1100")]);
        assert_eq!(pair.b.group_members(&n("2000")), vec![n("1000"), n("1001"), n("1100")]);
        assert!(events.iter().any(|event| matches!(event, TcfEvent::Regrouped { .. })));
        // b (the user's home) pushed 1100's location to the group home at once.
        assert_eq!(
            pair.a.location(&n("1100")).map(|location| location.serving.as_str()),
            Some("b")
        );
        // The terminal got the order.
        let orders = requests_to(&to_terminals, USER);
        assert_eq!(orders.len(), 1);
        assert_eq!(extension_of(orders[0]), "pptDGNA;GDN=2000;UDN=1100;action=add");

        // Its report goes b (serving) → a (group home) → b (DC's TCF) → the DC.
        let report = message_from("1100", USER, "2000", "reDGNA;GDN=2000;UDN=1100;DGNAresult=0", "");
        pair.terminal_sends(10, USER, &report);
        let (to_terminals, _, events) = pair.run(10);
        assert_eq!(final_status(&to_terminals, USER), Some(200));
        let reports = requests_to(&to_terminals, DC);
        assert_eq!(reports.len(), 1, "{to_terminals:?}");
        assert_eq!(extension_of(reports[0]), "reDGNA;GDN=2000;UDN=1100;DGNAresult=0");
        let hops = events
            .iter()
            .filter(|event| matches!(event, TcfEvent::RegroupReported { .. }))
            .count();
        assert_eq!(hops, 3, "serving/user home, group home, DC's TCF: {events:?}");

        // The same report again: no order pending.
        let again = report.replace("z9hG4bK1100", "z9hG4bK1100x");
        pair.terminal_sends(20, USER, &again);
        let (to_terminals, _, _) = pair.run(20);
        assert_eq!(final_status(&to_terminals, USER), Some(481));
    }

    #[test]
    fn order_to_a_silent_group_home_times_out_with_408() {
        let mut pair = Pair::new();
        pair.a_silent = true;
        let body = member_list(&[n("1101")]);
        let order = message_from("9100", DC, "2000", "pptDGNA;GDN=2000;action=add", &body);
        pair.terminal_sends(0, DC, &order);
        let (to_terminals, _, _) = pair.run(0);
        assert_eq!(final_status(&to_terminals, DC), None, "no answer yet");
        let mut status = None;
        for step in 1..=80 {
            let millis = step * 100;
            let now = pair.at(millis);
            pair.b.handle_timeout(now);
            let (to_terminals, _, _) = pair.run(millis);
            status = status.or(final_status(&to_terminals, DC));
        }
        assert_eq!(status, Some(408), "64·T1 without an answer");
        assert!(pair.b.group_members(&n("2000")).len() == 2, "nothing changed at b");
    }

    #[test]
    fn restored_overlays_follow_the_provisioning() {
        let mut pair = Pair::new();
        while pair.a.poll_output().is_some() {}
        pair.a.restore_regroups(vec![
            Regroup {
                group: n("2000"),
                added: vec![n("1000"), n("1100")],
                removed: vec![n("1101")],
            },
            Regroup {
                group: n("2999"),
                added: vec![n("1100")],
                removed: vec![],
            },
        ]);
        assert_eq!(pair.a.group_members(&n("2000")), vec![n("1000"), n("1001"), n("1100")]);
        let mut writes = Vec::new();
        while let Some(output) = pair.a.poll_output() {
            if let Output::Store(write) = output {
                writes.push(write);
            }
        }
        let normalized = Regroup {
            group: n("2000"),
            added: vec![n("1100")],
            removed: vec![],
        };
        assert_eq!(
            writes,
            vec![StoreWrite::PutRegroup(normalized), StoreWrite::RemoveRegroup(n("2999"))]
        );
    }

    #[test]
    fn member_lists_parse_defensively() {
        let good = member_list(&[n("1105"), n("1300")]);
        assert_eq!(parse_member_list(good.as_bytes()), Ok(vec![n("1105"), n("1300")]));
        assert_eq!(
            parse_member_list(b"<dgna><!-- x --><member> 7 </member><member>7</member></dgna>"),
            Ok(vec![n("7")]),
            "whitespace trimmed, duplicates once"
        );
        assert_eq!(parse_member_list(b"<dgna/>"), Ok(vec![]));
        for bad in [
            &b""[..],
            b"<dgna>",
            b"<dgna><member>12a</member></dgna>",
            b"<dgna><member></member></dgna>",
            b"<dgna><member>1</member></dgna><dgna/>",
            b"<other><member>1</member></other>",
            b"<dgna><group>1</group></dgna>",
            b"<dgna><member>1<x/></member></dgna>",
            b"<dgna><member>&amp;</member></dgna>",
            b"<!DOCTYPE dgna [<!ENTITY a \"1\">]><dgna><member>&a;</member></dgna>",
            b"<dgna><member>1</membre></dgna>",
            b"\xff\xfe<dgna/>",
            b"plain text",
        ] {
            assert!(
                parse_member_list(bad).is_err(),
                "{:?} is refused",
                String::from_utf8_lossy(bad)
            );
        }
        let many: Vec<Number> = (0..=MAX_MEMBERS)
            .map(|index| n(&format!("{}", 10_000 + index)))
            .collect();
        assert!(
            parse_member_list(member_list(&many).as_bytes()).is_err(),
            "too many members"
        );
        let huge = format!("<dgna>{}</dgna>", " ".repeat(MAX_BODY));
        assert!(parse_member_list(huge.as_bytes()).is_err(), "too long");
    }
}
