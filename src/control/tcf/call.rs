//! Single calls (F-SC-01 … F-SC-09): each TCF hop is a stateful back-to-back user agent.
//!
//! # Shape
//!
//! A call at this node has an inbound side `A` (we are its UAS: the INVITE came from a terminal
//! or a peer TCF) and an outbound side `B` (we are its UAC: our own INVITE to a peer TCF or to
//! the callee's terminal). Each side has its own Call-ID, tags, CSeq, transactions and dialog;
//! messages are translated between them, never forwarded as they are.
//!
//! # Routing
//!
//! A call travels caller V-TCF → caller H-TCF → callee H-TCF → callee V-TCF; adjacent stages
//! on one node collapse into one hop. The stage the next node plays travels in the
//! `Ptt-Extension: pttcall;...;stage=` parameter (`caller-home`, `callee-home`,
//! `callee-serving`), so a node never guesses its role from addresses (a node may play several
//! roles in one call, e.g. caller home and callee serving). Requests only ever go to configured
//! peers and to registered terminals' source addresses, never to a host named in a header.
//!
//! - **Caller home**: the caller must be a provisioned user; it is marked busy here; the ring
//!   timer (`calls.ring_timeout`) runs here (F-SC-05: on expiry CANCEL towards the callee and
//!   480 to the caller).
//! - **Callee home**: unknown user 404; a user in a call known here is busy (486, or forwarded
//!   to `forward_busy`, F-SC-09); not registered 480; else towards its serving TCF. A callee
//!   with `forward_no_answer` is forwarded when the no-answer timer (`calls.no_answer_timeout`)
//!   runs out (CANCEL of the first attempt, 487, then a new INVITE); a `486` from the callee
//!   is forwarded to `forward_busy`. A forwarded call is not forwarded again.
//! - **Callee serving**: the terminal's binding (its REGISTER's source address).
//!
//! Ambient listening and viewing (`pttcall;calltype=6|7`, F-AMB-01) is a call with its own
//! rules (dispatchers only, no ring timer, forwarding or busy marks, `answermode=direct`):
//! module [`super::ambient`]. A BYE's `pttrelease;cause=` goes on in the hop's own BYE.
//!
//! # Media
//!
//! With `calls.anchoring = "edge"` a hop anchors media when one of its sides is a terminal;
//! with `"always"` every hop does. An anchoring hop creates a relay bridge with one leg per
//! side, checks the offer (488 when no codec is acceptable), forwards the offer re-anchored at
//! the B leg and the answer re-anchored at the A leg; RTP and RTCP are relayed byte for byte.
//! A video stream is relayed the same way on a second bridge (F-VID-01, module
//! [`super::video`]). Other hops pass SDP through unchanged.

use crate::proto::NetMap;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::config::Anchoring;
use crate::media::api::{BridgeId, BridgeKind, LegInfo, LegSpec};
use crate::sdp::{self, Sdp};
use crate::sip::dialog::{Dialog, DialogId, DialogState};
use crate::sip::transaction::IdMap;

use super::ambient::{self, Ambient};
use super::resend::{Resend, Resend2xx};
use super::video::{self as video, VideoChange};

use super::*;

/// Which side of a call at this hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    /// Inbound: we answer (UAS).
    A,
    /// Outbound: we call (UAC).
    B,
}

/// The role the receiving node plays (the `stage` parameter of `pttcall`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// The caller's serving TCF (a request from a terminal).
    CallerServing,
    /// The caller's home TCF.
    CallerHome,
    /// The callee's home TCF.
    CalleeHome,
    /// The callee's serving TCF.
    CalleeServing,
    /// The group's home (a group set-up relayed by the caller's home).
    GroupHome,
}

impl Side {
    /// The opposite side.
    pub(super) fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }
}

impl Stage {
    fn param(self) -> &'static str {
        match self {
            Stage::CallerServing => "caller-serving",
            Stage::CallerHome => "caller-home",
            Stage::CalleeHome => "callee-home",
            Stage::CalleeServing => "callee-serving",
            Stage::GroupHome => "group-home",
        }
    }

    fn parse(text: &str) -> Option<Stage> {
        [Stage::CallerHome, Stage::CalleeHome, Stage::CalleeServing]
            .into_iter()
            .find(|stage| stage.param().eq_ignore_ascii_case(text))
    }
}

/// Where the outbound side goes.
#[derive(Debug, Clone)]
enum Next {
    Terminal(Binding),
    Peer {
        name: String,
        address: SocketAddr,
        stage: Stage,
    },
}

/// What routing decided besides the next hop.
#[derive(Debug, Default)]
struct Plan {
    /// Users this node (their home) marks busy for the call.
    busy: Vec<Number>,
    /// This node is the caller's home: run the ring timer.
    ring: bool,
    /// The callee at the next hop (differs from the dialed number after forwarding).
    target: Option<Number>,
    /// Forwarding already happened (the call is not forwarded again).
    forwarded: bool,
    /// The number first dialed, once forwarded.
    forwarded_from: Option<Number>,
    /// Callee home: forward a 486 to this number.
    forward_busy: Option<Number>,
    /// Callee home: forward to this number when unanswered.
    forward_no_answer: Option<Number>,
    /// An ambient listening / viewing session (F-AMB-01): its own routing rules.
    ambient: Option<Ambient>,
}

#[derive(Debug)]
struct Inbound {
    server: TransactionKey,
    invite: Message,
    source: SocketAddr,
    /// Where in-dialog requests to this side go.
    destination: SocketAddr,
    peer: Option<String>,
    tag: String,
    contact: String,
    dialog: Option<Dialog>,
    /// A final response was sent to the INVITE.
    answered: bool,
    reliable: bool,
}

#[derive(Debug)]
struct Outbound {
    client: TransactionKey,
    invite: Message,
    destination: SocketAddr,
    peer: Option<String>,
    dialog: Option<Dialog>,
    provisional: bool,
    cancel_wanted: bool,
    cancel_sent: bool,
    /// Final response received.
    finished: bool,
    /// The ACK we sent for its 2xx (sent again for a retransmitted 2xx).
    ack: Option<Bytes>,
    /// The offer we sent (re-anchored or passed through).
    offer: Option<Sdp>,
    /// The callee at that hop.
    target: Number,
}

/// A relay bridge of an anchoring hop: the call's audio, or its video (F-VID-01).
#[derive(Debug)]
pub(super) struct Anchor {
    pub(super) bridge: BridgeId,
    /// The leg facing side A.
    pub(super) a: LegInfo,
    /// The leg facing side B.
    pub(super) b: LegInfo,
}

/// Our 2xx to an INVITE on one side of the call, sent again until its ACK comes.
#[derive(Debug)]
struct Retransmit {
    side: Side,
    resend: Resend2xx,
}

#[derive(Debug)]
struct Call {
    id: u64,
    caller: Number,
    dialed: Number,
    priority: u8,
    a: Inbound,
    b: Option<Outbound>,
    anchor: Option<Anchor>,
    /// The video relay bridge while the call carries video (F-VID-01, module `video`).
    video: Option<Anchor>,
    busy: Vec<Number>,
    answered: bool,
    ring_deadline: Option<Instant>,
    no_answer: Option<(Instant, Number)>,
    forward_busy: Option<Number>,
    forwarded: bool,
    /// The number first dialed, when the call was forwarded.
    forwarded_from: Option<Number>,
    /// `pttcall` call type (1: single call; 4: a group session relayed like a call).
    calltype: String,
    /// The group of a group session relayed like a call.
    gdn: Option<String>,
    /// Why we gave up on B before it answered: the status the caller then gets.
    give_up_status: Option<(u16, &'static str)>,
    retransmit: Option<Retransmit>,
    /// A re-INVITE is in progress (a second one gets 491).
    reinvite: bool,
    /// The body forwarded to B with the INVITE.
    b_body: Option<Bytes>,
    /// `b_body` parsed, until the first INVITE to B takes it.
    b_offer: Option<Sdp>,
    /// The stage B plays, for forwarding restarts.
    started: Instant,
    /// The `pttrelease;cause=` of the BYE that ended the call, for the BYE sent on.
    release: Option<String>,
}

/// What one of our client transactions belongs to.
#[derive(Debug)]
enum Sent {
    /// A call's outbound INVITE.
    Invite { call: u64 },
    /// An outbound INVITE we gave up on (cancelled, replaced by forwarding, or its call ended):
    /// a 2xx to it is ACKed and ended with BYE.
    Abandoned(Box<Outbound>),
    /// A re-INVITE sent on behalf of the other side.
    Reinvite(Box<Reinvite>),
    /// An in-dialog request (INFO, MESSAGE, OPTIONS) passed on from the other side.
    Passed(Box<Passed>),
    /// BYE or CANCEL: its answer changes nothing.
    Other,
}

/// A re-INVITE in progress: the sender's transaction and the offers.
#[derive(Debug)]
struct Reinvite {
    call: u64,
    from: Side,
    server: TransactionKey,
    request: Message,
    source: SocketAddr,
    sent_offer: Option<Sdp>,
    /// What the answer does to the video bridge (F-VID-01).
    video: VideoChange,
    /// The video stream of the offer as sent on (its answer is read against it).
    sent_video: Option<sdp::VideoStream>,
}

/// An in-dialog request passed on: the sender's transaction.
#[derive(Debug)]
struct Passed {
    server: TransactionKey,
    request: Message,
    source: SocketAddr,
}

/// All calls of this node.
#[derive(Debug, Default)]
pub(super) struct Calls {
    calls: IdMap<Call>,
    by_invite: NetMap<TransactionKey, u64>,
    by_dialog: NetMap<DialogId, (u64, Side)>,
    sent: NetMap<TransactionKey, Sent>,
    busy: NetMap<Number, u64>,
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    next_id: u64,
    /// Peers that went down since the last timeout (their calls are torn down).
    pub(super) peers_down: Vec<String>,
    /// Calls set up and ended since start.
    pub(super) answered_total: u64,
    pub(super) ended_total: u64,
}

impl Calls {
    pub(super) fn len(&self) -> usize {
        self.calls.len()
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    /// Whether a client transaction is one of ours.
    pub(super) fn owns(&self, key: &TransactionKey) -> bool {
        self.sent.contains_key(key)
    }

    /// Whether this node (the user's home) marks `user` busy: in a call, ringing or answered.
    pub(super) fn is_busy(&self, user: &Number) -> bool {
        self.busy.contains_key(user)
    }
}

pub(super) const SDP: &str = "application/sdp";

/// A relay leg sending to `remote` (RTCP to `remote_rtcp`, or multiplexed).
pub(super) fn leg_spec(remote: Option<SocketAddr>, remote_rtcp: Option<SocketAddr>, rtcp_mux: bool) -> LegSpec {
    LegSpec {
        remote,
        remote_rtcp,
        rtcp_mux,
        ..LegSpec::default()
    }
}

pub(super) fn is_sdp(message: &Message) -> bool {
    !message.body().is_empty()
        && message
            .content_type()
            .ok()
            .flatten()
            .is_some_and(|media_type| media_type.is("application", "sdp"))
}

fn ptt_param(message: &Message, name: &str) -> Option<String> {
    ptt_value(ptt_extension(message).as_ref(), name)
}

/// The Ptt-Extension of `message`, parsed once for several [`ptt_value`] look-ups.
fn ptt_extension(message: &Message) -> Option<crate::sip::headers::PttExtension<'_>> {
    message.ptt_extension().ok().flatten()
}

/// Parameter `name` of a parsed Ptt-Extension, as [`ptt_param`] reads it.
fn ptt_value(extension: Option<&crate::sip::headers::PttExtension<'_>>, name: &str) -> Option<String> {
    let value = extension?.param(name)?;
    Some(String::from_utf8_lossy(&value).into_owned())
}

/// A CSeq value, `<number> <method>`, without the formatting machinery.
fn cseq_text(number: u32, method: &str) -> String {
    let mut text = String::with_capacity(11 + method.len());
    text.push_str(itoa::Buffer::new().format(number));
    text.push(' ');
    text.push_str(method);
    text
}

/// The CANCEL for an INVITE we sent (RFC 3261 §9.1): same Request-URI, top Via, From, To,
/// Call-ID, CSeq number and Route.
pub(super) fn cancel_for(invite: &Message) -> Option<Bytes> {
    let uri = std::str::from_utf8(invite.request_uri_raw()?).ok()?;
    let mut builder = MessageBuilder::request(Method::Cancel, uri)
        .header(HeaderName::Via, invite.header(HeaderName::Via)?.value)
        .header(HeaderName::MaxForwards, "70")
        .header(HeaderName::From, invite.header(HeaderName::From)?.value)
        .header(HeaderName::To, invite.header(HeaderName::To)?.value)
        .header(HeaderName::CallId, invite.call_id().ok()?)
        .header(HeaderName::CSeq, cseq_text(invite.cseq().ok()?.number, "CANCEL"));
    for route in invite.headers_of(HeaderName::Route) {
        builder = builder.header(HeaderName::Route, route.value);
    }
    builder.build_bytes().ok()
}

/// The ACK for a non-2xx final response to an INVITE we sent (RFC 3261 §17.1.1.3).
pub(super) fn ack_for_failure(invite: &[u8], response: &[u8]) -> Option<Bytes> {
    let invite = Message::parse_datagram(Bytes::copy_from_slice(invite)).ok()?;
    let response = Message::parse_datagram(Bytes::copy_from_slice(response)).ok()?;
    let uri = std::str::from_utf8(invite.request_uri_raw()?).ok()?;
    let mut builder = MessageBuilder::request(Method::Ack, uri)
        .header(HeaderName::Via, invite.header(HeaderName::Via)?.value)
        .header(HeaderName::MaxForwards, "70")
        .header(HeaderName::From, invite.header(HeaderName::From)?.value)
        .header(HeaderName::To, response.header(HeaderName::To)?.value)
        .header(HeaderName::CallId, invite.call_id().ok()?)
        .header(HeaderName::CSeq, cseq_text(invite.cseq().ok()?.number, "ACK"));
    for route in invite.headers_of(HeaderName::Route) {
        builder = builder.header(HeaderName::Route, route.value);
    }
    builder.build_bytes().ok()
}

impl Tcf {
    fn media_ip(&self) -> std::net::IpAddr {
        self.address.ip()
    }

    // ---- a new INVITE ---------------------------------------------------------------------

    /// An INVITE outside any dialog: a new call through this node.
    pub(super) fn invite(&mut self, now: Now, key: TransactionKey, mut request: Message, reliable: bool) {
        let Some(source) = self.current_source else { return };
        if self.calls.len() >= self.config.calls.max_calls {
            self.respond(now, &key, &request, 503, "Service Unavailable (call limit)", &[]);
            return;
        }
        let peer = self.network.tcf_at(source).map(|tcf| tcf.name.clone());
        // Who calls is checked first: a stranger learns nothing about our users.
        let stage_text = ptt_param(&request, "stage").map(|stage| stage.to_ascii_lowercase());
        let (caller, stage) = match &peer {
            Some(_) => {
                let Some(caller) = asserted_user(&request).or_else(|| user_of(request.from())) else {
                    self.respond(now, &key, &request, 400, "Bad Request (no caller identity)", &[]);
                    return;
                };
                // Group sessions (set-up at the home, floor requests, downlinks).
                if matches!(stage_text.as_deref(), Some("group-home" | "group-member")) {
                    let gdn = request_user(&request)
                        .or_else(|| ptt_param(&request, "GDN").and_then(|gdn| Number::parse(&gdn).ok()));
                    if let Some(gdn) = gdn {
                        let stage = stage_text.clone();
                        if let Some(request) =
                            self.group_invite(now, key.clone(), request, &caller, &gdn, false, stage.as_deref())
                        {
                            self.respond(now, &key, &request, 404, "Not Found (not the group's home)", &[]);
                        }
                    } else {
                        self.respond(now, &key, &request, 404, "Not Found", &[]);
                    }
                    return;
                }
                let Some(stage) = stage_text.as_deref().and_then(Stage::parse) else {
                    self.respond(now, &key, &request, 400, "Bad Request (pttcall stage)", &[]);
                    return;
                };
                (caller, stage)
            }
            None => {
                let Some(caller) = self.registered_sender(&request, source) else {
                    self.respond(now, &key, &request, 403, "Forbidden (not registered here)", &[]);
                    return;
                };
                (caller, Stage::CallerServing)
            }
        };
        let Some(callee) = request_user(&request) else {
            self.respond(now, &key, &request, 404, "Not Found", &[]);
            return;
        };
        // Ambient listening / viewing (F-AMB-01) targets a user, never a group.
        let ambient = Ambient::of_request(ptt_extension(&request).as_ref());
        if ambient.is_some() && self.subscribers.group(&callee).is_some() {
            self.respond(
                now,
                &key,
                &request,
                404,
                "Not Found (ambient listening targets a user)",
                &[],
            );
            return;
        }
        // A group number: group set-up (from a terminal, or at the caller's home when that is
        // the group home too); a caller home elsewhere relays it like a call (below).
        if self.subscribers.group(&callee).is_some() {
            let from_terminal = peer.is_none();
            let stage_name = if from_terminal { None } else { Some(stage.param()) };
            match self.group_invite(now, key.clone(), request, &caller, &callee, from_terminal, stage_name) {
                Some(returned) => request = returned,
                None => return,
            }
        }
        // The offer: every call carries one in its INVITE.
        let offer = if is_sdp(&request) {
            match sdp::parse(request.body()) {
                Ok(offer) => offer,
                Err(_) => {
                    self.respond(now, &key, &request, 488, "Not Acceptable Here (malformed SDP)", &[]);
                    return;
                }
            }
        } else if !request.body().is_empty() {
            // RFC 3261 §21.4.13 / RFC 4475 3.3.7: a body we cannot read.
            self.respond(now, &key, &request, 415, "Unsupported Media Type", &[("Accept", SDP)]);
            return;
        } else {
            self.respond(
                now,
                &key,
                &request,
                488,
                "Not Acceptable Here (SDP offer required)",
                &[],
            );
            return;
        };
        // One parse of the Ptt-Extension for the parameters read from here on.
        let extension = ptt_extension(&request);
        let forwarded_from = ptt_value(extension.as_ref(), "forwarded").and_then(|number| Number::parse(&number).ok());
        let arrived_forwarded = forwarded_from.is_some();
        let mut plan = Plan {
            forwarded: forwarded_from.is_some(),
            forwarded_from,
            ambient,
            ..Plan::default()
        };
        let next = match self.route_call(stage, &caller, &callee, &mut plan) {
            Ok(next) => next,
            Err((status, reason)) => {
                self.respond(now, &key, &request, status, reason, &[]);
                return;
            }
        };
        if let (false, Some(from), Some(to)) = (arrived_forwarded, &plan.forwarded_from, &plan.target) {
            self.event(TcfEvent::CallForwarded {
                callee: from.clone(),
                to: to.clone(),
            });
        }
        let from_terminal = peer.is_none();
        let to_terminal = matches!(next, Next::Terminal(_));
        let anchoring = self.config.calls.anchoring == Anchoring::Always || from_terminal || to_terminal;
        let (anchor, video, body, b_offer) = if anchoring {
            match self.anchor(offer) {
                Ok((anchor, video, body, sent)) => (Some(anchor), video, body, sent),
                Err((status, reason)) => {
                    self.respond(now, &key, &request, status, reason, &[]);
                    return;
                }
            }
        } else {
            (None, None, Bytes::copy_from_slice(request.body()), offer)
        };
        // This hop is going to work on the call: 100 at once (hop by hop).
        self.respond(now, &key, &request, 100, "Trying", &[]);
        let destination = if from_terminal {
            source
        } else {
            self.network.tcf_at(source).map_or(source, |tcf| tcf.sip)
        };
        let id = self.calls.next_id;
        self.calls.next_id += 1;
        let calltype = match ambient {
            Some(ambient) => ambient.calltype().to_owned(),
            None => ptt_value(extension.as_ref(), "calltype")
                .filter(|calltype| calltype.len() <= 4 && calltype.bytes().all(|byte| byte.is_ascii_digit()))
                .unwrap_or_else(|| "1".to_owned()),
        };
        let gdn = ptt_value(extension.as_ref(), "GDN")
            .and_then(|gdn| Number::parse(&gdn).ok())
            .map(|gdn| gdn.as_str().to_owned())
            .or_else(|| {
                self.subscribers
                    .group(&callee)
                    .map(|group| group.number.as_str().to_owned())
            });
        let tag = self.token();
        let contact = super::concat(&["<sip:", callee.as_str(), "@", &self.address_text, ">"]);
        let priority = self.subscribers.user(&caller).map_or(1, |user| user.priority);
        let mut call = Call {
            id,
            caller: caller.clone(),
            dialed: callee.clone(),
            priority,
            a: Inbound {
                server: key.clone(),
                invite: request,
                source,
                destination,
                peer,
                tag,
                contact,
                dialog: None,
                answered: false,
                reliable,
            },
            b: None,
            anchor,
            video,
            busy: Vec::new(),
            answered: false,
            ring_deadline: None,
            no_answer: None,
            forward_busy: plan.forward_busy.take(),
            forwarded: plan.forwarded,
            forwarded_from: plan.forwarded_from.take(),
            calltype,
            gdn,
            give_up_status: None,
            retransmit: None,
            reinvite: false,
            b_body: Some(body),
            b_offer: Some(b_offer),
            started: now.instant,
            release: None,
        };
        for user in std::mem::take(&mut plan.busy) {
            self.calls.busy.insert(user.clone(), id);
            call.busy.push(user);
        }
        if plan.ring {
            let at = now.instant + self.config.calls.ring_timeout;
            call.ring_deadline = Some(at);
            self.calls.timers.push(Reverse((at, id)));
        }
        if let Some(target) = plan.forward_no_answer.take() {
            let at = now.instant + self.config.calls.no_answer_timeout;
            call.no_answer = Some((at, target));
            self.calls.timers.push(Reverse((at, id)));
        }
        let target = plan.target.clone().unwrap_or(callee);
        self.calls.by_invite.insert(key, id);
        match self.start_outbound(now, &mut call, next, target) {
            Ok(()) => {
                self.calls.calls.insert(id, call);
            }
            Err((status, reason)) => {
                self.calls.calls.insert(id, call);
                self.end_call(now, id, None, (status, reason), "could not reach the next hop");
            }
        }
    }

    /// Decides the next hop of a call arriving at `stage`, collapsing the stages this node
    /// plays. `Err`: the status to answer.
    fn route_call(
        &self,
        mut stage: Stage,
        caller: &Number,
        callee: &Number,
        plan: &mut Plan,
    ) -> Result<Next, (u16, &'static str)> {
        let me = self.config.name.as_str();
        let mut callee = callee.clone();
        // Each stage advances at most once per call, plus one forwarding: a bounded loop.
        for _ in 0..8 {
            match stage {
                Stage::CallerServing => {
                    if let Some(ambient) = plan.ambient {
                        self.ambient_allowed(ambient, caller, &callee)?;
                    }
                    let home = self
                        .network
                        .home_of_user(caller)
                        .ok_or((403, "Forbidden (caller has no home TCF)"))?;
                    if home.name == me {
                        stage = Stage::CallerHome;
                        continue;
                    }
                    return self.to_peer(&home.name, Stage::CallerHome);
                }
                Stage::CallerHome => {
                    if !self.network.home_of_user(caller).is_some_and(|home| home.name == me) {
                        return Err((403, "Forbidden (caller not homed here)"));
                    }
                    if self.subscribers.user(caller).is_none() {
                        return Err((403, "Forbidden (unknown caller)"));
                    }
                    // A stunned (or killed) caller places no call (F-SKR decision).
                    if let Some(reason) = self.skr_barred(caller) {
                        return Err((403, reason));
                    }
                    if let Some(home) = self.network.home_of_group(&callee) {
                        // A group set-up passing through the caller's home (F-GRP-01).
                        plan.target = Some(callee.clone());
                        let home = home.name.clone();
                        return self.to_peer(&home, Stage::GroupHome);
                    }
                    if let Some(ambient) = plan.ambient {
                        // No ring timer; nobody is marked busy (module `ambient`).
                        self.ambient_allowed(ambient, caller, &callee)?;
                    } else {
                        plan.ring = true;
                        plan.busy.push(caller.clone());
                    }
                    let home = self.network.home_of_user(&callee).ok_or((404, "Not Found"))?;
                    if home.name == me {
                        stage = Stage::CalleeHome;
                        continue;
                    }
                    plan.target = Some(callee.clone());
                    return self.to_peer(&home.name, Stage::CalleeHome);
                }
                Stage::CalleeHome => {
                    if !self.network.home_of_user(&callee).is_some_and(|home| home.name == me) {
                        return Err((404, "Not Found (not homed here)"));
                    }
                    let user = self.subscribers.user(&callee).ok_or((404, "Not Found"))?;
                    // Nor does a stunned (or killed) callee receive one.
                    if let Some(reason) = self.skr_barred(&callee) {
                        return Err((403, reason));
                    }
                    if self.calls.busy.contains_key(&callee) || plan.busy.contains(&callee) {
                        match user.forward_busy.clone() {
                            Some(target) if !plan.forwarded && plan.ambient.is_none() => {
                                plan.forwarded = true;
                                plan.forwarded_from = Some(callee.clone());
                                callee = target;
                                plan.target = Some(callee.clone());
                                let home = self.network.home_of_user(&callee).ok_or((486, "Busy Here"))?;
                                if home.name == me {
                                    continue;
                                }
                                return self.to_peer(&home.name, Stage::CalleeHome);
                            }
                            _ => return Err((486, "Busy Here")),
                        }
                    }
                    if plan.ambient.is_none() {
                        if !plan.forwarded {
                            plan.forward_busy = user.forward_busy.clone();
                            plan.forward_no_answer = user.forward_no_answer.clone();
                        }
                        plan.busy.push(callee.clone());
                    }
                    plan.target = Some(callee.clone());
                    let registration = self
                        .registrations
                        .get(&callee)
                        .ok_or((480, "Temporarily Unavailable (not registered)"))?;
                    if registration.serving == me {
                        stage = Stage::CalleeServing;
                        continue;
                    }
                    let serving = registration.serving.clone();
                    return self.to_peer(&serving, Stage::CalleeServing);
                }
                Stage::GroupHome => return Err((404, "Not Found (not the group's home)")),
                Stage::CalleeServing => {
                    let binding = self
                        .bindings
                        .get(&callee)
                        .ok_or((480, "Temporarily Unavailable (not registered here)"))?;
                    plan.target = Some(callee.clone());
                    return Ok(Next::Terminal(binding.clone()));
                }
            }
        }
        Err((500, "Server Internal Error (routing loop)"))
    }

    fn to_peer(&self, name: &str, stage: Stage) -> Result<Next, (u16, &'static str)> {
        let tcf = self
            .network
            .tcf(name)
            .ok_or((500, "Server Internal Error (unknown TCF)"))?;
        if self.peer_is_down(name) {
            return Err((503, "Service Unavailable (next TCF unreachable)"));
        }
        Ok(Next::Peer {
            name: name.to_owned(),
            address: tcf.sip,
            stage,
        })
    }

    /// Creates the relay bridge of an anchoring hop for `offer`; returns it and the offer
    /// re-anchored at the B leg, as a body and parsed.
    #[allow(clippy::type_complexity)]
    fn anchor(&mut self, offer: Sdp) -> Result<(Anchor, Option<Anchor>, Bytes, Sdp), (u16, &'static str)> {
        let preferences = sdp::default_preferences();
        let local = sdp::LocalMedia::new(self.media_ip(), 9, &preferences);
        let negotiated =
            sdp::negotiate_offer(&offer, &local).map_err(|_| (488, "Not Acceptable Here (no acceptable codec)"))?;
        let video_stream = sdp::video_of(&offer).map_err(|_| (488, "Not Acceptable Here (bad video stream)"))?;
        let spec_a = leg_spec(negotiated.remote_rtp, negotiated.remote_rtcp, false);
        let no_media = (503, "Service Unavailable (no media resources)");
        let bridge = self.media.create_bridge(BridgeKind::Relay).map_err(|_| no_media)?;
        let legs = self
            .media
            .add_leg(bridge, spec_a)
            .and_then(|a| Ok((a, self.media.add_leg(bridge, LegSpec::default())?)));
        let (a, b) = match legs {
            Ok(legs) => legs,
            Err(_) => {
                self.media.remove_bridge(bridge);
                return Err(no_media);
            }
        };
        let video = video_stream.and_then(|stream| self.video_bridge(Side::A, &stream));
        let audio_ports = sdp::Ports {
            rtp: b.local_rtp.port(),
            rtcp: Some(b.local_rtcp.port()),
        };
        let video_ports = video.as_ref().map(|video| video::ports_facing(video, Side::B));
        let sent = sdp::reanchor_av(offer, b.local_rtp.ip(), audio_ports, video_ports);
        let body = Bytes::from(sent.to_bytes());
        Ok((Anchor { bridge, a, b }, video, body, sent))
    }

    /// F-MON-02: an answered single call anchored here, as monitoring sees it: its relay
    /// bridge, the offer this node sent on (the call's formats, numbered as the call uses them)
    /// and the users on its terminal sides (whom this node serves in it).
    pub(super) fn monitored_call(&self, id: u64) -> Option<(BridgeId, Sdp, Vec<Number>)> {
        let call = self.calls.calls.get(&id)?;
        let b = call.b.as_ref()?;
        if !call.answered || call.calltype != "1" {
            return None;
        }
        let bridge = call.anchor.as_ref()?.bridge;
        let mut users = Vec::new();
        if call.a.peer.is_none() {
            users.push(call.caller.clone());
        }
        if b.peer.is_none() {
            users.push(b.target.clone());
        }
        Some((bridge, b.offer.clone()?, users))
    }

    /// F-MON-02: the calls [`Tcf::monitored_call`] finds with `user` on a terminal side.
    pub(super) fn monitored_calls_of(&self, user: &Number) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .calls
            .calls
            .keys()
            .copied()
            .filter(|&id| {
                self.monitored_call(id)
                    .is_some_and(|(_, _, users)| users.contains(user))
            })
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Sends the call's outbound INVITE to `next`.
    fn start_outbound(
        &mut self,
        now: Now,
        call: &mut Call,
        next: Next,
        target: Number,
    ) -> Result<(), (u16, &'static str)> {
        let (uri, to, destination, peer, stage, answer_mode) = match &next {
            Next::Terminal(binding) => {
                let uri = binding.contact.trim_matches(|c| c == '<' || c == '>').to_owned();
                // Ambient listening and monitoring sessions (F-MON-02) are answered at once.
                let ambient =
                    Ambient::of_calltype(&call.calltype).is_some() || call.calltype == super::monitor::MONITOR_CALLTYPE;
                let mode = match self.subscribers.user(&target).map(|user| user.answer) {
                    // Ambient listening: answered at once, without alerting the user.
                    _ if ambient => "direct",
                    Some(AnswerMode::Direct) => "direct",
                    _ => "hook",
                };
                let to = super::concat(&["<", &uri, ">"]);
                (uri, to, binding.address, None, None, Some(mode))
            }
            Next::Peer { name, address, stage } => {
                let host = crate::sip::builder::socket_addr_text(*address);
                (
                    super::concat(&["sip:", target.as_str(), "@", &host]),
                    super::concat(&["<sip:", target.as_str(), "@", &host, ">"]),
                    *address,
                    Some(name.clone()),
                    Some(*stage),
                    None,
                )
            }
        };
        let caller = &call.caller;
        // pttcall;calltype=..[;duplex=1];priority=..[;GDN=..];callerUDN=..;calleeUDN=..
        let mut extension = String::with_capacity(160);
        extension.push_str("pttcall;calltype=");
        extension.push_str(&call.calltype);
        if call.gdn.is_none()
            && Ambient::of_calltype(&call.calltype).is_none()
            && call.calltype != super::monitor::MONITOR_CALLTYPE
        {
            extension.push_str(";duplex=1");
        }
        extension.push_str(";priority=");
        extension.push_str(itoa::Buffer::new().format(call.priority));
        if let Some(gdn) = &call.gdn {
            extension.push_str(";GDN=");
            extension.push_str(gdn);
        }
        extension.push_str(";callerUDN=");
        extension.push_str(caller.as_str());
        extension.push_str(";calleeUDN=");
        extension.push_str(target.as_str());
        if let Some(stage) = stage {
            extension.push_str(";stage=");
            extension.push_str(stage.param());
        }
        if let Some(from) = &call.forwarded_from {
            extension.push_str(";forwarded=");
            extension.push_str(from.as_str());
        }
        if let Some(mode) = answer_mode {
            extension.push_str(";answermode=");
            extension.push_str(mode);
        }
        let body = call.b_body.clone().unwrap_or_default();
        let caller = caller.clone();
        let (key, request) = self
            .new_invite(&uri, &to, &caller, &extension, body)
            .ok_or((500, "Server Internal Error (building INVITE)"))?;
        // The offer as sent, kept from when it was written (parsed back only for a second
        // attempt, which is rare: forwarding).
        let offer = match call.b_offer.take() {
            Some(offer) => Some(offer),
            None => sdp::parse(request.body()).ok(),
        };
        self.layer
            .send_request(
                now.instant,
                key.clone(),
                TxMethod::Invite,
                request.to_bytes(),
                destination,
                false,
            )
            .map_err(|_| (503, "Service Unavailable (overloaded)"))?;
        self.calls.sent.insert(key.clone(), Sent::Invite { call: call.id });
        call.b = Some(Outbound {
            client: key,
            invite: request,
            destination,
            peer,
            dialog: None,
            provisional: false,
            cancel_wanted: false,
            cancel_sent: false,
            finished: false,
            ack: None,
            offer,
            target,
        });
        Ok(())
    }

    /// A new dialog-creating INVITE from this node (fresh branch, From tag and Call-ID; our
    /// Contact and P-Asserted-Identity name `from_user`) and its client transaction key.
    pub(super) fn new_invite(
        &mut self,
        uri: &str,
        to: &str,
        from_user: &Number,
        extension: &str,
        body: Bytes,
    ) -> Option<(TransactionKey, Message)> {
        let branch = self.branch();
        let tag = self.token();
        let call_id = self.token();
        let me = self.address_text.as_bytes();
        let user = from_user.as_str().as_bytes();
        let address = [b"<sip:".as_slice(), user, b"@", me, b">"];
        let request = MessageBuilder::request(Method::Invite, uri)
            .header_parts(
                HeaderName::Via,
                &[b"SIP/2.0/UDP ", me, b";branch=", branch.as_bytes(), b";rport"],
            )
            .header(HeaderName::MaxForwards, "70")
            .header_parts(HeaderName::From, &[b"<sip:", user, b"@", me, b">;tag=", tag.as_bytes()])
            .header(HeaderName::To, to)
            .header_parts(
                HeaderName::CallId,
                &[call_id.as_bytes(), b"@", self.config.name.as_bytes()],
            )
            .header(HeaderName::CSeq, "1 INVITE")
            .header_parts(HeaderName::Contact, &address)
            .raw_header("P-Asserted-Identity", address.concat())
            .raw_header("Ptt-Extension", extension)
            .header(HeaderName::Allow, ALLOW)
            .body(SDP, body)
            .build()
            .ok()?;
        let key = TransactionKey::new(&branch, &self.address_text, TxMethod::Invite).ok()?;
        Some((key, request))
    }

    // ---- responses to our requests ----------------------------------------------------------

    /// A response (or a timeout, `response` = `None`) for one of our call transactions.
    pub(super) fn call_response(&mut self, now: Now, key: TransactionKey, status: u16, response: Option<Message>) {
        let Some(sent) = self.calls.sent.get(&key) else { return };
        match sent {
            Sent::Invite { call } => {
                let call = *call;
                self.outbound_response(now, call, status, response);
            }
            Sent::Abandoned(_) => self.abandoned_response(now, &key, status, response),
            Sent::Reinvite(_) | Sent::Passed(_) => {
                if status < 200 {
                    return;
                }
                if let Some(sent) = self.calls.sent.insert(key, Sent::Other) {
                    self.relayed_response(now, sent, status, response);
                }
            }
            Sent::Other => {}
        }
    }

    /// The transaction is gone: forget it.
    pub(super) fn call_transaction_ended(&mut self, key: &TransactionKey) {
        self.calls.sent.remove(key);
        self.calls.by_invite.remove(key);
    }

    fn outbound_response(&mut self, now: Now, id: u64, status: u16, response: Option<Message>) {
        let Some(mut call) = self.calls.calls.remove(&id) else {
            return;
        };
        let Some(mut b) = call.b.take() else {
            self.calls.calls.insert(id, call);
            return;
        };
        match (status, response) {
            (100, _) => {
                call.b = Some(b);
                self.calls.calls.insert(id, call);
            }
            (101..=199, Some(response)) => {
                b.provisional = true;
                if b.cancel_wanted && !b.cancel_sent {
                    self.send_cancel(now, &mut b);
                } else {
                    if b.dialog.is_none() && response.to_tag().ok().flatten().is_some() {
                        b.dialog = Dialog::uac(&b.invite, &response).ok();
                    }
                    // Pass 180/183 back (183 only because the callee sent one).
                    let body = self.answer_body(&mut call, &b, &response);
                    let reason = String::from_utf8_lossy(response.reason_phrase().unwrap_or(b"")).into_owned();
                    self.answer_a(now, &mut call, status, &reason, body);
                }
                call.b = Some(b);
                self.calls.calls.insert(id, call);
            }
            (200..=299, Some(response)) => {
                b.provisional = true;
                b.finished = true;
                match b.dialog.as_mut() {
                    Some(dialog) => {
                        let _ = dialog.confirm(&response);
                    }
                    None => b.dialog = Dialog::uac(&b.invite, &response).ok(),
                }
                self.ack_2xx(&mut b, &response);
                if call.answered {
                    // A retransmitted 2xx (our ACK was lost or late): ACKed again, nothing else.
                    call.b = Some(b);
                    self.calls.calls.insert(id, call);
                    return;
                }
                if call.a.answered || b.cancel_wanted {
                    // Too late: the caller side is gone.
                    call.b = Some(b);
                    self.calls.calls.insert(id, call);
                    self.end_call(
                        now,
                        id,
                        Some(Side::A),
                        (487, "Request Terminated"),
                        "answered after cancel",
                    );
                    return;
                }
                let body = self.answer_body(&mut call, &b, &response);
                if body.is_none() && call.anchor.is_some() {
                    call.b = Some(b);
                    self.calls.calls.insert(id, call);
                    self.end_call(
                        now,
                        id,
                        None,
                        (488, "Not Acceptable Here (bad SDP answer)"),
                        "bad SDP answer",
                    );
                    return;
                }
                if let Some(dialog) = &b.dialog {
                    self.calls.by_dialog.insert(dialog.id().clone(), (id, Side::B));
                }
                call.answered = true;
                call.ring_deadline = None;
                call.no_answer = None;
                self.calls.answered_total += 1;
                let extension = response
                    .headers_named("Ptt-Extension")
                    .next()
                    .and_then(|header| header.value_str().map(|value| value.into_owned()));
                self.answer_a_with(now, &mut call, status, "OK", body, extension);
                self.event(TcfEvent::CallAnswered {
                    caller: call.caller.clone(),
                    callee: b.target.clone(),
                });
                call.b = Some(b);
                self.calls.calls.insert(id, call);
                self.monitor_call_answered(now, id);
            }
            (_, response) => {
                b.finished = true;
                // Forward a busy callee when provisioned (F-SC-09).
                if status == 486 && !call.forwarded && call.give_up_status.is_none() {
                    if let Some(target) = call.forward_busy.clone() {
                        call.b = Some(b);
                        self.calls.calls.insert(id, call);
                        self.forward(now, id, target);
                        return;
                    }
                }
                let (status, reason) = match call.give_up_status {
                    Some(given) => (given.0, given.1.to_owned()),
                    None => (
                        status,
                        response
                            .as_ref()
                            .and_then(|response| response.reason_phrase())
                            .map(|reason| String::from_utf8_lossy(reason).into_owned())
                            .unwrap_or_else(|| "Request Timeout".to_owned()),
                    ),
                };
                call.b = Some(b);
                self.calls.calls.insert(id, call);
                self.end_call_with(now, id, None, status, &reason, "call failed");
            }
        }
    }

    fn abandoned_response(&mut self, now: Now, key: &TransactionKey, status: u16, response: Option<Message>) {
        let Some(Sent::Abandoned(mut b)) = self.calls.sent.remove(key) else {
            return;
        };
        match (status, response) {
            (101..=199, Some(_)) => {
                b.provisional = true;
                if !b.cancel_sent {
                    self.send_cancel(now, &mut b);
                }
            }
            (200..=299, Some(response)) => {
                if b.dialog.is_none() {
                    b.dialog = Dialog::uac(&b.invite, &response).ok();
                } else if let Some(dialog) = b.dialog.as_mut() {
                    let _ = dialog.confirm(&response);
                }
                self.ack_2xx(&mut b, &response);
                if !b.finished {
                    b.finished = true;
                    let destination = b.destination;
                    if let Some(dialog) = b.dialog.as_mut() {
                        self.send_in_dialog(now, dialog, Method::Bye, destination, &[], None, Sent::Other);
                    }
                }
            }
            _ => b.finished = true,
        }
        self.calls.sent.insert(key.clone(), Sent::Abandoned(b));
    }

    /// ACKs a 2xx to our INVITE (a retransmitted 2xx gets the same ACK again).
    fn ack_2xx(&mut self, b: &mut Outbound, response: &Message) {
        if b.ack.is_none() {
            let cseq = response.cseq().map_or(1, |cseq| cseq.number);
            let branch = self.branch();
            let sent_by = self.sent_by();
            b.ack = b
                .dialog
                .as_ref()
                .and_then(|dialog| dialog.ack_for(cseq, &branch, &sent_by, "UDP").build_bytes().ok());
        }
        if let Some(ack) = &b.ack {
            self.outputs.push_back(Output::Transmit {
                destination: b.destination,
                bytes: ack.clone(),
            });
        }
    }

    fn send_cancel(&mut self, now: Now, b: &mut Outbound) {
        b.cancel_wanted = true;
        if !b.provisional || b.cancel_sent || b.finished {
            return;
        }
        if let Some(cancel) = cancel_for(&b.invite) {
            if let Ok(key) = self.layer.send_cancel(now.instant, &b.client, cancel) {
                b.cancel_sent = true;
                self.calls.sent.insert(key, Sent::Other);
            }
        }
    }

    /// The SDP body of a response from B for A: re-anchored at the A leg when this hop anchors
    /// (and the B leg learns where to send), else unchanged. `None`: no body, or an answer that
    /// does not fit our offer.
    fn answer_body(&mut self, call: &mut Call, b: &Outbound, response: &Message) -> Option<Bytes> {
        if !is_sdp(response) {
            return None;
        }
        let Some(anchor) = &call.anchor else {
            return Some(Bytes::copy_from_slice(response.body()));
        };
        let answer = sdp::parse(response.body()).ok()?;
        let offer = b.offer.as_ref()?;
        let negotiated = sdp::parse_answer(offer, &answer).ok()?;
        let spec_b = leg_spec(negotiated.remote_rtp, negotiated.remote_rtcp, negotiated.rtcp_mux);
        let _ = self.media.update_leg(anchor.b.id, spec_b);
        let (address, audio_ports) = (anchor.a.local_rtp.ip(), video::ports_facing(anchor, Side::A));
        // The video stream: the answered one goes to the B leg, a declined one frees it.
        let offered_video = sdp::video_of(offer).ok().flatten();
        let answered_video = offered_video.and_then(|offered| sdp::video_answer(&offered, &answer).ok().flatten());
        let video_ports = match (&call.video, answered_video) {
            (Some(video), Some(stream)) => {
                let _ = self.media.update_leg(video.b.id, video::video_spec(&stream));
                Some(video::ports_facing(video, Side::A))
            }
            (Some(_), None) => {
                self.free_video(&mut call.video);
                None
            }
            (None, _) => None,
        };
        let body = sdp::reanchor_av(answer, address, audio_ports, video_ports);
        Some(Bytes::from(body.to_bytes()))
    }

    /// Answers A's initial INVITE (provisional or final) with our tag and Contact.
    fn answer_a(&mut self, now: Now, call: &mut Call, status: u16, reason: &str, body: Option<Bytes>) {
        self.answer_a_with(now, call, status, reason, body, None);
    }

    /// Like `answer_a`, passing on the far side's `Ptt-Extension` (a floor outcome).
    fn answer_a_with(
        &mut self,
        now: Now,
        call: &mut Call,
        status: u16,
        reason: &str,
        body: Option<Bytes>,
        extension: Option<String>,
    ) {
        if call.a.answered {
            return;
        }
        let tag = (status > 100).then_some(call.a.tag.as_str());
        let Ok(mut builder) = crate::sip::response_to_from(&call.a.invite, status, reason, tag, call.a.source) else {
            return;
        };
        builder = builder.raw_header("Server", SERVER);
        if status < 300 {
            builder = builder.header(HeaderName::Contact, &call.a.contact);
        }
        if (200..300).contains(&status) {
            builder = builder.header(HeaderName::Allow, ALLOW);
        }
        if let Some(extension) = extension {
            builder = builder.raw_header("Ptt-Extension", extension);
        }
        if let Some(body) = body {
            builder = builder.body(SDP, body);
        }
        // Only sent, never read: not parsed back (as `Tcf::respond_with` does).
        let Ok(bytes) = builder.build_bytes() else { return };
        if (101..300).contains(&status) && call.a.dialog.is_none() {
            if let Ok(dialog) = Dialog::uas(&call.a.invite, &call.a.tag, &call.a.contact) {
                self.calls.by_dialog.insert(dialog.id().clone(), (call.id, Side::A));
                call.a.dialog = Some(dialog);
            }
        }
        if (200..300).contains(&status) {
            if let Some(dialog) = call.a.dialog.as_mut() {
                // Built just above from the dialog's INVITE and tag: nothing to check in it.
                let _ = dialog.confirm_sent(status);
            }
        }
        if status >= 200 {
            call.a.answered = true;
        }
        let _ = self.layer.respond(now.instant, &call.a.server, status, bytes.clone());
        if (200..300).contains(&status) && !call.a.reliable {
            // The ACK that stops it carries the caller's INVITE CSeq (RFC 3261 §13.2.2.4),
            // whatever number the caller started from.
            let cseq = call.a.invite.cseq().map_or(1, |cseq| cseq.number);
            self.retransmit_2xx(call, Side::A, call.a.server.clone(), bytes, cseq, now);
        }
    }

    fn retransmit_2xx(&mut self, call: &mut Call, side: Side, key: TransactionKey, bytes: Bytes, cseq: u32, now: Now) {
        let resend = Resend2xx::new(key, bytes, cseq, now.instant, self.config.timers.t1());
        self.calls.timers.push(Reverse((resend.next(), call.id)));
        call.retransmit = Some(Retransmit { side, resend });
    }

    // ---- ending -----------------------------------------------------------------------------

    fn end_call(&mut self, now: Now, id: u64, initiator: Option<Side>, a_status: (u16, &str), reason: &str) {
        self.end_call_with(now, id, initiator, a_status.0, a_status.1, reason);
    }

    /// Ends a call whichever way: the side that did not end it gets a BYE (answered calls),
    /// a final response (A, unanswered) or a CANCEL (B, unanswered); every resource is freed.
    fn end_call_with(
        &mut self,
        now: Now,
        id: u64,
        initiator: Option<Side>,
        status: u16,
        status_reason: &str,
        reason: &str,
    ) {
        let Some(mut call) = self.calls.calls.remove(&id) else {
            return;
        };
        // Its dialogs leave the index (found by their ids, not by scanning every call's).
        for dialog in [call.a.dialog.as_ref(), call.b.as_ref().and_then(|b| b.dialog.as_ref())]
            .into_iter()
            .flatten()
        {
            self.calls.by_dialog.remove(dialog.id());
        }
        // The BYEs carry the release cause received (F-AMB-02); an ambient call's always do.
        let release = call
            .release
            .take()
            .or_else(|| Ambient::of_calltype(&call.calltype).map(|_| ambient::ordinary_release()));
        let bye_headers: Vec<(&str, String)> = release.into_iter().map(|value| ("Ptt-Extension", value)).collect();
        // Side A.
        if !call.a.answered {
            self.answer_a(now, &mut call, status, status_reason, None);
        } else if initiator != Some(Side::A) && call.answered {
            let destination = call.a.destination;
            if let Some(dialog) = call.a.dialog.as_mut() {
                if dialog.state() == DialogState::Confirmed {
                    self.send_in_dialog(now, dialog, Method::Bye, destination, &bye_headers, None, Sent::Other);
                }
            }
        }
        // Side B.
        if let Some(mut b) = call.b.take() {
            let confirmed = b
                .dialog
                .as_ref()
                .is_some_and(|dialog| dialog.state() == DialogState::Confirmed);
            if confirmed && b.finished {
                if initiator != Some(Side::B) {
                    let destination = b.destination;
                    if let Some(dialog) = b.dialog.as_mut() {
                        self.send_in_dialog(now, dialog, Method::Bye, destination, &bye_headers, None, Sent::Other);
                    }
                }
                self.calls.sent.remove(&b.client);
            } else if !b.finished {
                self.abandon(now, b);
            }
        }
        self.monitor_call_ended(now, id);
        self.release(&mut call);
        self.video_call_ended(now, id);
        self.calls.ended_total += 1;
        tracing::debug!(call = id, caller = %call.caller, callee = %call.dialed, reason, "call ended");
        self.event(TcfEvent::CallEnded {
            caller: call.caller.clone(),
            callee: call.dialed.clone(),
            reason: reason.to_owned(),
        });
    }

    /// Gives up on an unanswered outbound INVITE: CANCEL (now or once it has a provisional
    /// response); a 2xx that still comes is ACKed and ended with BYE.
    fn abandon(&mut self, now: Now, mut b: Outbound) {
        self.send_cancel(now, &mut b);
        let key = b.client.clone();
        self.calls.sent.insert(key, Sent::Abandoned(Box::new(b)));
    }

    /// The answered call in which the terminal `user`, served here, has the dialog `call_id`,
    /// and whether it carries video (F-VID-02).
    pub(super) fn call_of_terminal(&self, user: &Number, call_id: &str) -> Option<(u64, bool)> {
        self.calls
            .calls
            .values()
            .find(|call| {
                let as_caller =
                    call.a.peer.is_none() && call.caller == *user && call.a.invite.call_id().ok() == Some(call_id);
                let as_callee = call
                    .b
                    .as_ref()
                    .is_some_and(|b| b.peer.is_none() && b.target == *user && b.invite.call_id().ok() == Some(call_id));
                call.answered && (as_caller || as_callee)
            })
            .map(|call| (call.id, call.video.is_some()))
    }

    /// Frees what a call holds (media, busy marks, indexes).
    fn release(&mut self, call: &mut Call) {
        if let Some(anchor) = call.anchor.take() {
            self.media.remove_bridge(anchor.bridge);
        }
        self.free_video(&mut call.video);
        for user in call.busy.drain(..) {
            if self.calls.busy.get(&user) == Some(&call.id) {
                self.calls.busy.remove(&user);
            }
        }
        self.calls.by_invite.remove(&call.a.server);
    }

    /// Replaces the outbound side with a call to `target` (forwarding, F-SC-09).
    fn forward(&mut self, now: Now, id: u64, target: Number) {
        let Some(mut call) = self.calls.calls.remove(&id) else {
            return;
        };
        if let Some(old) = call.b.take() {
            if !old.finished {
                self.abandon(now, old);
            } else {
                self.calls.sent.remove(&old.client);
            }
        }
        call.forwarded = true;
        call.forwarded_from.get_or_insert_with(|| call.dialed.clone());
        call.no_answer = None;
        call.forward_busy = None;
        let mut plan = Plan {
            forwarded: true,
            ..Plan::default()
        };
        let routed = self
            .route_call(Stage::CalleeHome, &call.caller, &target, &mut plan)
            .or_else(|error| {
                // The target is not homed here: send the call to its home.
                match self.network.home_of_user(&target) {
                    Some(home) if home.name != self.config.name => self.to_peer(&home.name.clone(), Stage::CalleeHome),
                    _ => Err(error),
                }
            });
        let next = match routed {
            Ok(next) => next,
            Err((status, reason)) => {
                self.calls.calls.insert(id, call);
                self.end_call(now, id, None, (status, reason), "forwarding failed");
                return;
            }
        };
        for user in plan.busy {
            if !call.busy.contains(&user) {
                self.calls.busy.insert(user.clone(), id);
                call.busy.push(user);
            }
        }
        // An anchored B leg forgets the first callee's address.
        if let Some(anchor) = &call.anchor {
            let _ = self.media.update_leg(anchor.b.id, LegSpec::default());
        }
        if let Some(video) = &call.video {
            let _ = self.media.update_leg(video.b.id, LegSpec::default());
        }
        let target = plan.target.unwrap_or(target);
        tracing::debug!(call = id, to = %target, "call forwarded");
        self.event(TcfEvent::CallForwarded {
            callee: call.dialed.clone(),
            to: target.clone(),
        });
        let started = self.start_outbound(now, &mut call, next, target);
        self.calls.calls.insert(id, call);
        if let Err((status, reason)) = started {
            self.end_call(now, id, None, (status, reason), "forwarding failed");
        }
    }

    // ---- CANCEL, ACK, in-dialog requests ----------------------------------------------------

    /// A CANCEL (RFC 3261 §9.2): 200 to it, 487 to the INVITE, CANCEL onwards.
    pub(super) fn cancel(&mut self, now: Now, key: TransactionKey, request: Message) {
        use crate::sip::transaction::CancelMatch;
        match self.layer.match_cancel(&key) {
            CancelMatch::Pending(invite) => {
                self.respond(now, &key, &request, 200, "OK", &[]);
                if let Some(&id) = self.calls.by_invite.get(&invite) {
                    self.end_call(
                        now,
                        id,
                        Some(Side::A),
                        (487, "Request Terminated"),
                        "cancelled by caller",
                    );
                }
            }
            CancelMatch::AlreadyFinal(_) => self.respond(now, &key, &request, 200, "OK", &[]),
            CancelMatch::NoMatch => self.respond(now, &key, &request, 481, "Call/Transaction Does Not Exist", &[]),
        }
    }

    /// An ACK that matched no transaction: the ACK for a 2xx we sent.
    pub(super) fn ack(&mut self, now: Now, ack: &Message) {
        self.group_ack_received(now, ack);
        let Some(id) = DialogId::of_received(ack) else { return };
        let Some(&(call_id, side)) = self.calls.by_dialog.get(&id) else {
            return;
        };
        let Some(call) = self.calls.calls.get_mut(&call_id) else {
            return;
        };
        let cseq = ack.cseq().map_or(0, |cseq| cseq.number);
        if call
            .retransmit
            .as_ref()
            .is_some_and(|retransmit| retransmit.side == side && retransmit.resend.cseq == cseq)
        {
            call.retransmit = None;
        }
    }

    /// A request inside a call's dialog (To tag present).
    /// Gives the request back when it belongs to no call.
    pub(super) fn in_dialog(&mut self, now: Now, key: TransactionKey, request: Message) -> Option<Message> {
        let Some(source) = self.current_source else {
            return Some(request);
        };
        let Some(dialog_id) = DialogId::of_received(&request) else {
            return Some(request);
        };
        let Some(&(id, side)) = self.calls.by_dialog.get(&dialog_id) else {
            return Some(request);
        };
        let Some(mut call) = self.calls.calls.remove(&id) else {
            return Some(request);
        };
        let dialog = match side {
            Side::A => call.a.dialog.as_mut(),
            Side::B => call.b.as_mut().and_then(|b| b.dialog.as_mut()),
        };
        let checked = match dialog {
            Some(dialog) => dialog.check_request(&request),
            None => Err(crate::sip::dialog::InDialogError::Terminated),
        };
        if let Err(error) = checked {
            let (status, reason) = error.status().unwrap_or((481, "Call/Transaction Does Not Exist"));
            self.calls.calls.insert(id, call);
            self.respond(now, &key, &request, status, reason, &[]);
            return None;
        }
        let method = request
            .method()
            .map(|method| method.as_str().to_owned())
            .unwrap_or_default();
        match method.as_str() {
            "BYE" => {
                self.respond(now, &key, &request, 200, "OK", &[]);
                call.release = ambient::release_of(&request);
                self.calls.calls.insert(id, call);
                let reason = match side {
                    Side::A => "hang-up (caller side)",
                    Side::B => "hang-up (callee side)",
                };
                self.end_call(now, id, Some(side), (487, "Request Terminated"), reason);
            }
            "INVITE" => {
                self.reinvite(now, &mut call, side, key, request, source);
                self.calls.calls.insert(id, call);
            }
            "INFO" | "MESSAGE" | "OPTIONS" => {
                self.pass_on(now, &mut call, side, key, request, source);
                self.calls.calls.insert(id, call);
            }
            _ => {
                self.calls.calls.insert(id, call);
                self.respond(now, &key, &request, 501, "Not Implemented", &[("Allow", ALLOW)]);
            }
        }
        None
    }

    /// The dialog and destination of the side opposite `side`, if it can take requests.
    fn other_side(call: &mut Call, side: Side) -> Option<(&mut Dialog, SocketAddr)> {
        match side {
            Side::A => {
                let b = call.b.as_mut()?;
                let destination = b.destination;
                Some((b.dialog.as_mut()?, destination))
            }
            Side::B => {
                let destination = call.a.destination;
                Some((call.a.dialog.as_mut()?, destination))
            }
        }
    }

    /// A re-INVITE (F-SC-07): its offer goes on to the other side (re-anchored), the answer
    /// comes back.
    fn reinvite(
        &mut self,
        now: Now,
        call: &mut Call,
        side: Side,
        key: TransactionKey,
        request: Message,
        source: SocketAddr,
    ) {
        if !call.answered {
            self.respond(now, &key, &request, 491, "Request Pending", &[]);
            return;
        }
        if call.reinvite {
            self.respond(now, &key, &request, 491, "Request Pending", &[]);
            return;
        }
        self.respond(now, &key, &request, 100, "Trying", &[]);
        let offer = if is_sdp(&request) {
            match sdp::parse(request.body()) {
                Ok(offer) => Some(offer),
                Err(_) => {
                    self.respond(now, &key, &request, 488, "Not Acceptable Here (malformed SDP)", &[]);
                    return;
                }
            }
        } else {
            None
        };
        // Re-anchor the offer at the leg facing the other side.
        let mut video_change = VideoChange::Keep;
        let mut sent_video = None;
        let body = match (&offer, &call.anchor) {
            (Some(offer), Some(anchor)) => {
                let preferences = sdp::default_preferences();
                let local = sdp::LocalMedia::new(self.media_ip(), 9, &preferences);
                let Ok(negotiated) = sdp::negotiate_offer(offer, &local) else {
                    self.respond(
                        now,
                        &key,
                        &request,
                        488,
                        "Not Acceptable Here (no acceptable codec)",
                        &[],
                    );
                    return;
                };
                let (own, far) = match side {
                    Side::A => (&anchor.a, &anchor.b),
                    Side::B => (&anchor.b, &anchor.a),
                };
                let Ok(offered_video) = sdp::video_of(offer) else {
                    self.respond(now, &key, &request, 488, "Not Acceptable Here (bad video stream)", &[]);
                    return;
                };
                let spec = leg_spec(negotiated.remote_rtp, negotiated.remote_rtcp, false);
                let _ = self.media.update_leg(own.id, spec);
                let address = far.local_rtp.ip();
                let audio_ports = video::ports_facing(anchor, side.other());
                // The video stream (F-VID-01): changed, added or removed.
                let video_ports = match (&call.video, &offered_video) {
                    (Some(existing), Some(stream)) => {
                        let leg = match side {
                            Side::A => existing.a.id,
                            Side::B => existing.b.id,
                        };
                        let _ = self.media.update_leg(leg, video::video_spec(stream));
                        Some(video::ports_facing(existing, side.other()))
                    }
                    (None, Some(stream)) => {
                        call.video = self.video_bridge(side, stream);
                        if call.video.is_some() {
                            video_change = VideoChange::Added;
                        }
                        call.video
                            .as_ref()
                            .map(|video| video::ports_facing(video, side.other()))
                    }
                    (Some(_), None) => {
                        video_change = VideoChange::Removed;
                        None
                    }
                    (None, None) => None,
                };
                let body = sdp::reanchor_av(offer.clone(), address, audio_ports, video_ports);
                sent_video = video_ports.and_then(|_| sdp::video_of(&body).ok().flatten());
                Some(Bytes::from(body.to_bytes()))
            }
            (Some(_), None) => Some(Bytes::copy_from_slice(request.body())),
            (None, _) => None,
        };
        let sent_offer = body.as_ref().and_then(|body| sdp::parse(body).ok());
        let extension = request
            .headers_named("Ptt-Extension")
            .next()
            .and_then(|header| header.value_str().map(|value| value.into_owned()));
        let mut headers: Vec<(&str, String)> = Vec::new();
        if let Some(extension) = &extension {
            headers.push(("Ptt-Extension", extension.clone()));
        }
        let call_id = call.id;
        let Some((dialog, destination)) = Self::other_side(call, side) else {
            self.respond(now, &key, &request, 500, "Server Internal Error (no dialog)", &[]);
            return;
        };
        let sent = Sent::Reinvite(Box::new(Reinvite {
            call: call_id,
            from: side,
            server: key.clone(),
            request: request.clone(),
            source,
            sent_offer,
            video: video_change,
            sent_video,
        }));
        let mut dialog = dialog.clone();
        let sent_key = self.send_in_dialog(now, &mut dialog, Method::Invite, destination, &headers, body, sent);
        if let Some((original, _)) = Self::other_side(call, side) {
            *original = dialog;
        }
        if sent_key.is_none() {
            if video_change == VideoChange::Added {
                self.free_video(&mut call.video);
            }
            self.respond(now, &key, &request, 500, "Server Internal Error", &[]);
            return;
        }
        call.reinvite = true;
    }

    /// An in-dialog INFO / MESSAGE / OPTIONS goes on to the other side; its answer comes back.
    fn pass_on(
        &mut self,
        now: Now,
        call: &mut Call,
        side: Side,
        key: TransactionKey,
        request: Message,
        source: SocketAddr,
    ) {
        let Some(method) = request.method() else { return };
        let method_text = method.as_str().to_owned();
        let mut headers: Vec<(&str, String)> = Vec::new();
        if let Some(extension) = request
            .headers_named("Ptt-Extension")
            .next()
            .and_then(|header| header.value_str().map(|value| value.into_owned()))
        {
            headers.push(("Ptt-Extension", extension));
        }
        let body = (!request.body().is_empty()).then(|| {
            let content_type = request
                .header(HeaderName::ContentType)
                .and_then(|header| header.value_str().map(|value| value.into_owned()))
                .unwrap_or_else(|| "application/octet-stream".to_owned());
            (content_type, Bytes::copy_from_slice(request.body()))
        });
        let Some((dialog, destination)) = Self::other_side(call, side) else {
            self.respond(now, &key, &request, 481, "Call/Transaction Does Not Exist", &[]);
            return;
        };
        let mut dialog_copy = dialog.clone();
        let sent = Sent::Passed(Box::new(Passed {
            server: key.clone(),
            request: request.clone(),
            source,
        }));
        let method = Method::from_token(&method_text);
        let sent_key = self.send_in_dialog_typed(now, &mut dialog_copy, method, destination, &headers, body, sent);
        if let Some((original, _)) = Self::other_side(call, side) {
            *original = dialog_copy;
        }
        if sent_key.is_none() {
            self.respond(now, &key, &request, 500, "Server Internal Error", &[]);
        }
    }

    /// The final answer to a re-INVITE or passed-on request goes back to its sender.
    fn relayed_response(&mut self, now: Now, sent: Sent, status: u16, response: Option<Message>) {
        match sent {
            Sent::Reinvite(reinvite) => {
                let Reinvite {
                    call: id,
                    from,
                    server,
                    request,
                    source,
                    sent_offer,
                    video: video_change,
                    sent_video,
                } = *reinvite;
                let Some(mut call) = self.calls.calls.remove(&id) else {
                    return;
                };
                call.reinvite = false;
                let reason = response
                    .as_ref()
                    .and_then(|response| response.reason_phrase())
                    .map(|reason| String::from_utf8_lossy(reason).into_owned())
                    .unwrap_or_else(|| "Request Timeout".to_owned());
                let mut body = None;
                if let (200..=299, Some(response)) = (status, &response) {
                    // ACK the far side's 2xx.
                    let cseq = response.cseq().map_or(1, |cseq| cseq.number);
                    let branch = self.branch();
                    let sent_by = self.sent_by();
                    let far = match from {
                        Side::A => call.b.as_ref().map(|b| b.destination),
                        Side::B => Some(call.a.destination),
                    };
                    let ack = Self::other_side(&mut call, from)
                        .and_then(|(dialog, _)| dialog.ack_for(cseq, &branch, &sent_by, "UDP").build_bytes().ok());
                    if let (Some(ack), Some(destination)) = (ack, far) {
                        self.outputs.push_back(Output::Transmit {
                            destination,
                            bytes: ack,
                        });
                    }
                    body = self.reinvite_answer(&mut call, from, sent_offer.as_ref(), sent_video.as_ref(), response);
                    if video_change == VideoChange::Removed {
                        self.free_video(&mut call.video);
                    }
                } else if video_change == VideoChange::Added {
                    // The re-INVITE failed: the session stays as it was, without video.
                    self.free_video(&mut call.video);
                }
                let built = crate::sip::response_to_from(&request, status, &reason, None, source).map(|builder| {
                    let mut builder = builder.raw_header("Server", SERVER);
                    let contact = match from {
                        Side::A => call.a.contact.clone(),
                        Side::B => super::concat(&["<sip:", call.caller.as_str(), "@", &self.address_text, ">"]),
                    };
                    if status < 300 {
                        builder = builder.header(HeaderName::Contact, contact);
                    }
                    if let Some(extension) = response
                        .as_ref()
                        .and_then(|response| response.headers_named("Ptt-Extension").next())
                        .and_then(|header| header.value_str().map(|value| value.into_owned()))
                    {
                        builder = builder.raw_header("Ptt-Extension", extension);
                    }
                    if let Some(body) = body {
                        builder = builder.body(SDP, body);
                    }
                    builder
                });
                if let Ok(bytes) = built.and_then(|builder| builder.build_bytes()) {
                    let _ = self.layer.respond(now.instant, &server, status, bytes.clone());
                    if (200..300).contains(&status) {
                        let cseq = request.cseq().map_or(0, |cseq| cseq.number);
                        self.retransmit_2xx(&mut call, from, server, bytes, cseq, now);
                    }
                }
                self.calls.calls.insert(id, call);
            }
            Sent::Passed(passed) => {
                let Passed {
                    server,
                    request,
                    source,
                } = *passed;
                let reason = response
                    .as_ref()
                    .and_then(|response| response.reason_phrase())
                    .map(|reason| String::from_utf8_lossy(reason).into_owned())
                    .unwrap_or_else(|| "Request Timeout".to_owned());
                let built = crate::sip::response_to_from(&request, status, &reason, None, source)
                    .map(|builder| builder.raw_header("Server", SERVER));
                if let Ok(bytes) = built.and_then(|builder| builder.build_bytes()) {
                    let _ = self.layer.respond(now.instant, &server, status, bytes);
                }
            }
            _ => {}
        }
    }

    /// The answer to a re-INVITE for its sender: re-anchored when this hop anchors (the far
    /// leg learns the new remote address).
    fn reinvite_answer(
        &mut self,
        call: &mut Call,
        from: Side,
        sent_offer: Option<&Sdp>,
        sent_video: Option<&sdp::VideoStream>,
        response: &Message,
    ) -> Option<Bytes> {
        if !is_sdp(response) {
            return None;
        }
        let Some(anchor) = &call.anchor else {
            return Some(Bytes::copy_from_slice(response.body()));
        };
        let answer = sdp::parse(response.body()).ok()?;
        let (own, far) = match from {
            Side::A => (&anchor.a, &anchor.b),
            Side::B => (&anchor.b, &anchor.a),
        };
        if let Some(negotiated) = sent_offer.and_then(|offer| sdp::parse_answer(offer, &answer).ok()) {
            let spec = leg_spec(negotiated.remote_rtp, negotiated.remote_rtcp, negotiated.rtcp_mux);
            let _ = self.media.update_leg(far.id, spec);
        }
        let (address, audio_ports) = (own.local_rtp.ip(), video::ports_facing(anchor, from));
        // The video stream (F-VID-01): the far leg learns where to send, a declined one is freed.
        let answered_video = sent_video.and_then(|offered| sdp::video_answer(offered, &answer).ok().flatten());
        let video_ports = match (&call.video, sent_video, answered_video) {
            (Some(video), Some(_), Some(stream)) => {
                let far_leg = match from {
                    Side::A => video.b.id,
                    Side::B => video.a.id,
                };
                let _ = self.media.update_leg(far_leg, video::video_spec(&stream));
                Some(video::ports_facing(video, from))
            }
            (Some(_), Some(_), None) => {
                self.free_video(&mut call.video);
                None
            }
            _ => None,
        };
        let body = sdp::reanchor_av(answer, address, audio_ports, video_ports);
        Some(Bytes::from(body.to_bytes()))
    }

    #[allow(clippy::too_many_arguments)]
    fn send_in_dialog(
        &mut self,
        now: Now,
        dialog: &mut Dialog,
        method: Method<'_>,
        destination: SocketAddr,
        headers: &[(&str, String)],
        body: Option<Bytes>,
        sent: Sent,
    ) -> Option<TransactionKey> {
        let body = body.map(|body| (SDP.to_owned(), body));
        self.send_in_dialog_typed(now, dialog, method, destination, headers, body, sent)
    }

    #[allow(clippy::too_many_arguments)]
    fn send_in_dialog_typed(
        &mut self,
        now: Now,
        dialog: &mut Dialog,
        method: Method<'_>,
        destination: SocketAddr,
        headers: &[(&str, String)],
        body: Option<(String, Bytes)>,
        sent: Sent,
    ) -> Option<TransactionKey> {
        let branch = self.branch();
        let sent_by = self.sent_by();
        let mut builder = dialog.request(method, &branch, &sent_by, "UDP").ok()?;
        for (name, value) in headers {
            builder = builder.raw_header(name, value);
        }
        if let Some((content_type, body)) = body {
            builder = builder.body(&content_type, body);
        }
        let bytes = builder.build_bytes().ok()?;
        let tx_method = TxMethod::from_token(method.as_str());
        let key = TransactionKey::new(&branch, &sent_by, tx_method.clone()).ok()?;
        self.layer
            .send_request(now.instant, key.clone(), tx_method, bytes, destination, false)
            .ok()?;
        self.calls.sent.insert(key.clone(), sent);
        Some(key)
    }

    // ---- timers and peers -------------------------------------------------------------------

    /// Runs due call timers: 2xx retransmission, ring timeout, no-answer forwarding.
    pub(super) fn call_timers(&mut self, now: Now) {
        while let Some(&Reverse((at, id))) = self.calls.timers.peek() {
            if at > now.instant {
                break;
            }
            self.calls.timers.pop();
            self.call_timer(now, id);
        }
        let peers = std::mem::take(&mut self.calls.peers_down);
        self.groups.peers_down.extend(peers.iter().cloned());
        for peer in peers {
            let ids: Vec<u64> = self
                .calls
                .calls
                .values()
                .filter(|call| {
                    call.a.peer.as_deref() == Some(peer.as_str())
                        || call
                            .b
                            .as_ref()
                            .is_some_and(|b| b.peer.as_deref() == Some(peer.as_str()))
                })
                .map(|call| call.id)
                .collect();
            for id in ids {
                let dead = match self.calls.calls.get(&id) {
                    Some(call) if call.a.peer.as_deref() == Some(peer.as_str()) => Side::A,
                    _ => Side::B,
                };
                tracing::warn!(call = id, peer = %peer, "peer TCF down: call torn down");
                self.end_call(
                    now,
                    id,
                    Some(dead),
                    (503, "Service Unavailable (next TCF unreachable)"),
                    "peer TCF down",
                );
            }
        }
    }

    fn call_timer(&mut self, now: Now, id: u64) {
        let Some(call) = self.calls.calls.get_mut(&id) else {
            return;
        };
        // 2xx retransmission.
        if let Some(retransmit) = call.retransmit.as_mut() {
            match retransmit.resend.poll(now.instant, self.config.timers.t2()) {
                Resend::GiveUp => {
                    call.retransmit = None;
                    tracing::warn!(call = id, "no ACK for our 2xx: ending the call (RFC 3261 §13.3.1.4)");
                    self.end_call(now, id, None, (408, "Request Timeout"), "no ACK");
                    return;
                }
                Resend::Send => {
                    let resend = &retransmit.resend;
                    let _ = self.layer.respond(now.instant, &resend.key, 200, resend.bytes.clone());
                    self.calls.timers.push(Reverse((resend.next(), id)));
                }
                Resend::Wait => {}
            }
        }
        let Some(call) = self.calls.calls.get_mut(&id) else {
            return;
        };
        if call.answered {
            return;
        }
        if call.ring_deadline.is_some_and(|at| at <= now.instant) {
            call.ring_deadline = None;
            call.give_up_status = Some((480, "Temporarily Unavailable (no answer)"));
            tracing::debug!(call = id, "ring timeout: cancelling");
            self.end_call(
                now,
                id,
                None,
                (480, "Temporarily Unavailable (no answer)"),
                "ring timeout",
            );
            return;
        }
        if let Some((at, target)) = call.no_answer.clone() {
            if at <= now.instant {
                call.no_answer = None;
                self.forward(now, id, target);
            }
        }
    }

    /// Time since the call began (for logs).
    #[allow(dead_code)]
    fn call_age(call: &Call, now: Now) -> Duration {
        now.instant.saturating_duration_since(call.started)
    }
}

#[cfg(test)]
mod tests {
    //! The call core alone, in simulated time: one node, two terminals, no sockets.
    use super::*;
    use crate::control::media::FakeMedia;

    const NETWORK: &str = "[[tcf]]\nname = \"a\"\nsip = \"127.0.0.1:5601\"\nusers = [\"1000-1099\"]\ngroups = [\"2000\"]\nsecret = \"s\"\n";
    const SUBSCRIBERS: &str = "[[user]]\nnumber = \"1000-1009\"\npassword = \"pw\"\n\
                               [[group]]\nnumber = \"2000\"\nmembers = [\"1000-1009\"]\n";
    const CALLER: &str = "127.0.0.1:7000";
    const CALLEE: &str = "127.0.0.1:7002";

    struct Rig {
        tcf: Tcf,
        media: FakeMedia,
        start: Instant,
        wall: SystemTime,
    }

    impl Rig {
        fn new() -> Rig {
            Rig::with(NETWORK, SUBSCRIBERS)
        }

        /// Node "a" of `network`, serving 1000 (at CALLER) and 1001 (at CALLEE).
        fn with(network: &str, subscribers: &str) -> Rig {
            let start = Instant::now();
            let wall = SystemTime::now();
            let network = Arc::new(Network::from_toml("n", network).unwrap());
            let subscribers = Arc::new(Subscribers::from_toml("s", subscribers).unwrap());
            let sip = crate::config::Config::from_toml("[sip]\nrealm = \"test\"\nt1_ms = 100\n")
                .unwrap()
                .sip;
            let config = TcfConfig::new("a", sip, [7; 32]).unwrap();
            let now = Now { instant: start, wall };
            let mut tcf = Tcf::new(config, network, subscribers, now, 1).unwrap();
            let media = FakeMedia::new();
            tcf.set_media(Box::new(media.clone()));
            let unix = wall.duration_since(UNIX_EPOCH).unwrap().as_secs();
            let binding = |user: &str, address: &str| Binding {
                user: Number::parse(user).unwrap(),
                contact: format!("<sip:{user}@{address}>"),
                address: address.parse().unwrap(),
                expires_at: unix + 3600,
            };
            let registration = |user: &str| Registration {
                user: Number::parse(user).unwrap(),
                serving: "a".to_owned(),
                expires_at: unix + 3600,
            };
            let location = |user: &str| Location {
                user: Number::parse(user).unwrap(),
                serving: "a".to_owned(),
                expires_at: unix + 3600,
            };
            tcf.restore(
                vec![binding("1000", CALLER), binding("1001", CALLEE)],
                vec![registration("1000"), registration("1001")],
                vec![location("1000"), location("1001")],
                now,
            );
            Rig {
                tcf,
                media,
                start,
                wall,
            }
        }

        fn at(&self, millis: u64) -> Now {
            Now {
                instant: self.start + Duration::from_millis(millis),
                wall: self.wall + Duration::from_millis(millis),
            }
        }

        fn deliver(&mut self, millis: u64, from: &str, text: &str) {
            let now = self.at(millis);
            self.tcf
                .handle_datagram(now, from.parse().unwrap(), Bytes::copy_from_slice(text.as_bytes()));
        }

        fn tick(&mut self, millis: u64) {
            let now = self.at(millis);
            self.tcf.handle_timeout(now);
        }

        /// Everything sent since the last call, as (destination, message).
        fn sent(&mut self) -> Vec<(SocketAddr, Message)> {
            let mut out = Vec::new();
            while let Some(output) = self.tcf.poll_output() {
                if let Output::Transmit { destination, bytes } = output {
                    out.push((destination, Message::parse_datagram(bytes).unwrap()));
                }
            }
            out
        }

        fn bridges(&self) -> usize {
            self.media.inspect(|state| state.bridges.len())
        }
    }

    fn offer(port: u16) -> String {
        format!(
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
             m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
        )
    }

    fn invite() -> String {
        let body = offer(9000);
        format!(
            "INVITE sip:1001@127.0.0.1:5601 SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bKinv1;rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:1000@127.0.0.1:5601>;tag=c1\r\nTo: <sip:1001@127.0.0.1:5601>\r\n\
             Call-ID: call1@caller\r\nCSeq: 1 INVITE\r\nContact: <sip:1000@{CALLER}>\r\n\
             Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    fn response_to(request: &Message, status: u16, tag: &str, body: Option<String>) -> String {
        let mut builder = crate::sip::response_to(request, status, "X", Some(tag))
            .unwrap()
            .header(HeaderName::Contact, format!("<sip:1001@{CALLEE}>"));
        if let Some(body) = body {
            builder = builder.body("application/sdp", Bytes::from(body));
        }
        String::from_utf8(builder.build_bytes().unwrap().to_vec()).unwrap()
    }

    fn statuses(sent: &[(SocketAddr, Message)], to: &str) -> Vec<u16> {
        let to: SocketAddr = to.parse().unwrap();
        sent.iter()
            .filter(|(destination, _)| *destination == to)
            .filter_map(|(_, message)| message.status())
            .collect()
    }

    fn requests<'a>(sent: &'a [(SocketAddr, Message)], to: &str, method: &str) -> Vec<&'a Message> {
        let to: SocketAddr = to.parse().unwrap();
        sent.iter()
            .filter(|(destination, message)| {
                *destination == to && message.method().is_some_and(|m| m.as_str() == method)
            })
            .map(|(_, message)| message)
            .collect()
    }

    /// Sets up a call up to the callee's 200; returns the INVITE the callee got.
    fn answered(rig: &mut Rig) -> Message {
        rig.deliver(0, CALLER, &invite());
        let sent = rig.sent();
        assert_eq!(statuses(&sent, CALLER), vec![100]);
        let onward = requests(&sent, CALLEE, "INVITE")[0].clone();
        assert_eq!(rig.bridges(), 1, "one relay bridge for a call with both ends here");
        rig.deliver(10, CALLEE, &response_to(&onward, 200, "e1", Some(offer(9100))));
        onward
    }

    #[test]
    fn our_2xx_is_retransmitted_until_the_ack_then_the_call_ends_without_one() {
        let mut rig = Rig::new();
        answered(&mut rig);
        let sent = rig.sent();
        assert_eq!(statuses(&sent, CALLER), vec![200]);
        assert_eq!(
            requests(&sent, CALLEE, "ACK").len(),
            1,
            "the callee's 2xx is ACKed at once"
        );
        // No ACK from the caller: T1, 2·T1, 4·T1, ... capped at T2, for 64·T1.
        let mut retransmissions = 0;
        let mut byes = 0;
        for millis in (20..=7_000).step_by(10) {
            rig.tick(millis);
            let sent = rig.sent();
            retransmissions += statuses(&sent, CALLER).iter().filter(|&&status| status == 200).count();
            byes += requests(&sent, CALLER, "BYE").len() + requests(&sent, CALLEE, "BYE").len();
            if byes > 0 {
                break;
            }
        }
        assert!(retransmissions >= 5, "2xx retransmitted ({retransmissions})");
        assert_eq!(byes, 2, "after 64·T1 without ACK both sides get BYE");
        assert_eq!(rig.bridges(), 0, "media freed");
        assert_eq!(rig.tcf.stats().calls, 0);
    }

    #[test]
    fn a_retransmitted_2xx_is_acked_again_and_the_call_stays() {
        let mut rig = Rig::new();
        let onward = answered(&mut rig);
        let _ = rig.sent();
        // The callee did not get our ACK and sends its 200 again.
        rig.deliver(50, CALLEE, &response_to(&onward, 200, "e1", Some(offer(9100))));
        let sent = rig.sent();
        assert_eq!(requests(&sent, CALLEE, "ACK").len(), 1, "ACKed again");
        assert!(requests(&sent, CALLEE, "BYE").is_empty() && requests(&sent, CALLER, "BYE").is_empty());
        assert_eq!(rig.tcf.stats().calls, 1, "the call goes on");
        assert_eq!(rig.bridges(), 1);
    }

    /// The caller's ACK (CSeq `cseq`) of the 200 among what the node has just sent.
    fn caller_ack(rig: &mut Rig, cseq: u32) -> String {
        let ok = rig
            .sent()
            .into_iter()
            .find(|(_, message)| message.status() == Some(200))
            .map(|(_, message)| message)
            .unwrap();
        let to = ok.header(HeaderName::To).unwrap().value_str().unwrap().into_owned();
        format!(
            "ACK sip:1001@127.0.0.1:5601 SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bKack{cseq};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:1000@127.0.0.1:5601>;tag=c1\r\nTo: {to}\r\n\
             Call-ID: call1@caller\r\nCSeq: {cseq} ACK\r\nContent-Length: 0\r\n\r\n"
        )
    }

    #[test]
    fn the_ack_stops_retransmission() {
        let mut rig = Rig::new();
        answered(&mut rig);
        let ack = caller_ack(&mut rig, 1);
        rig.deliver(20, CALLER, &ack);
        for millis in (30..=2_000).step_by(10) {
            rig.tick(millis);
        }
        assert!(
            statuses(&rig.sent(), CALLER).is_empty(),
            "nothing retransmitted after the ACK"
        );
        assert_eq!(rig.tcf.stats().calls, 1);
    }

    /// The caller's CSeq need not start at 1 (many phones start elsewhere): its ACK, which
    /// carries the INVITE's number, stops the 2xx retransmissions all the same, and the call
    /// is not ended for want of an ACK.
    #[test]
    fn the_ack_stops_retransmission_whatever_the_callers_cseq() {
        let mut rig = Rig::new();
        rig.deliver(0, CALLER, &invite().replace("CSeq: 1 INVITE", "CSeq: 314 INVITE"));
        let onward = requests(&rig.sent(), CALLEE, "INVITE")[0].clone();
        rig.deliver(10, CALLEE, &response_to(&onward, 200, "e1", Some(offer(9100))));
        let ack = caller_ack(&mut rig, 314);
        rig.deliver(20, CALLER, &ack);
        for millis in (30..=7_000).step_by(10) {
            rig.tick(millis);
        }
        let sent = rig.sent();
        assert!(
            statuses(&sent, CALLER).is_empty(),
            "nothing retransmitted after the ACK"
        );
        assert!(requests(&sent, CALLER, "BYE").is_empty(), "the call is not ended");
        assert_eq!(rig.tcf.stats().calls, 1);
    }

    #[test]
    fn an_answer_racing_the_cancel_is_acked_and_released_with_bye() {
        let mut rig = Rig::new();
        rig.deliver(0, CALLER, &invite());
        let onward = requests(&rig.sent(), CALLEE, "INVITE")[0].clone();
        rig.deliver(5, CALLEE, &response_to(&onward, 180, "e1", None));
        assert_eq!(statuses(&rig.sent(), CALLER), vec![180]);
        let cancel = invite()
            .replacen("INVITE sip", "CANCEL sip", 1)
            .replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL");
        let cancel = cancel.split("Content-Type").next().unwrap().to_owned() + "Content-Length: 0\r\n\r\n";
        rig.deliver(10, CALLER, &cancel);
        let sent = rig.sent();
        assert_eq!(statuses(&sent, CALLER), vec![200, 487]);
        assert_eq!(requests(&sent, CALLEE, "CANCEL").len(), 1);
        assert_eq!(rig.bridges(), 0, "media freed at once");
        // The callee answers anyway.
        rig.deliver(15, CALLEE, &response_to(&onward, 200, "e1", Some(offer(9100))));
        let sent = rig.sent();
        assert_eq!(requests(&sent, CALLEE, "ACK").len(), 1);
        assert_eq!(requests(&sent, CALLEE, "BYE").len(), 1);
        assert!(statuses(&sent, CALLER).is_empty(), "the caller hears nothing more");
    }

    #[test]
    fn an_offer_without_a_usable_codec_gets_488_and_holds_nothing() {
        let mut rig = Rig::new();
        let text = invite().replace(
            "RTP/AVP 0\r\na=rtpmap:0 PCMU/8000",
            "RTP/AVP 98\r\na=rtpmap:98 opus/48000",
        );
        let text = {
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            let head = head.replace(
                &format!("Content-Length: {}", offer(9000).len()),
                &format!("Content-Length: {}", body.len()),
            );
            format!("{head}\r\n\r\n{body}")
        };
        rig.deliver(0, CALLER, &text);
        assert_eq!(statuses(&rig.sent(), CALLER), vec![488]);
        assert_eq!(rig.bridges(), 0);
        assert_eq!(rig.tcf.stats().calls, 0);
    }

    // ---- ambient listening (F-AMB-01, F-AMB-02) ----------------------------------------------

    /// 1000 is a dispatcher, 1001 a terminal (answering by hand).
    const AMBIENT_SUBSCRIBERS: &str = "[[user]]\nnumber = \"1000\"\npassword = \"pw\"\nkind = \"dispatcher\"\n\
                                       [[user]]\nnumber = \"1001-1009\"\npassword = \"pw\"\nanswer = \"hook\"\n\
                                       [[group]]\nnumber = \"2000\"\nmembers = [\"1001-1009\"]\n";

    /// An INVITE from `from` (1000 at CALLER or 1001 at CALLEE) to `to` with `extension` and `body`.
    fn ambient_invite(from: &str, to: &str, extension: &str, body: &str) -> String {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let branch = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let address = if from == "1000" { CALLER } else { CALLEE };
        format!(
            "INVITE sip:{to}@127.0.0.1:5601 SIP/2.0\r\nVia: SIP/2.0/UDP {address};branch=z9hG4bKamb{branch};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:{from}@127.0.0.1:5601>;tag=c1\r\nTo: <sip:{to}@127.0.0.1:5601>\r\n\
             Call-ID: amb{from}@caller\r\nCSeq: 1 INVITE\r\nContact: <sip:{from}@{address}>\r\n\
             Ptt-Extension: {extension}\r\n\
             Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    fn directed(port: u16, direction: &str) -> String {
        offer(port) + "a=" + direction + "\r\n"
    }

    fn extension_of(message: &Message) -> String {
        message
            .headers_named("Ptt-Extension")
            .next()
            .and_then(|header| header.value_str().map(|value| value.into_owned()))
            .unwrap_or_default()
    }

    /// The dispatcher 1000 listens to 1001: the terminal is told to answer at once and gets
    /// the call type, answers sendonly; nobody is busy; no ring timer.
    #[test]
    fn f_amb_01_ambient_listening_is_answered_directly_and_marks_nobody_busy() {
        let mut rig = Rig::with(NETWORK, AMBIENT_SUBSCRIBERS);
        let offer_text = directed(9000, "recvonly");
        rig.deliver(
            0,
            CALLER,
            &ambient_invite("1000", "1001", "pttcall;calltype=6", &offer_text),
        );
        let sent = rig.sent();
        assert_eq!(statuses(&sent, CALLER), vec![100]);
        let onward = requests(&sent, CALLEE, "INVITE")[0].clone();
        let extension = extension_of(&onward);
        assert!(extension.starts_with("pttcall;calltype=6;priority="), "{extension}");
        assert!(extension.contains("answermode=direct"), "{extension}");
        assert!(!extension.contains("duplex"), "{extension}");
        assert!(String::from_utf8_lossy(onward.body()).contains("a=recvonly"));
        assert!(rig.tcf.calls.busy.is_empty(), "an ambient session marks nobody busy");
        // Past the ring timeout with only a 180: nothing is cancelled.
        rig.deliver(5, CALLEE, &response_to(&onward, 180, "e1", None));
        let _ = rig.sent();
        rig.tick(61_000);
        let sent = rig.sent();
        assert!(requests(&sent, CALLEE, "CANCEL").is_empty(), "no ring timer");
        assert!(statuses(&sent, CALLER).is_empty());
        rig.deliver(
            61_010,
            CALLEE,
            &response_to(&onward, 200, "e1", Some(directed(9100, "sendonly"))),
        );
        let sent = rig.sent();
        let ok = sent.iter().find(|(_, message)| message.status() == Some(200)).unwrap();
        assert!(String::from_utf8_lossy(ok.1.body()).contains("a=sendonly"));
        assert_eq!(rig.bridges(), 1);
        assert_eq!(rig.tcf.stats().calls, 1);
    }

    /// F-AMB-02: the dispatcher's BYE with `pttrelease;cause` reaches the terminal with the
    /// same cause; a plain BYE from the terminal gives the dispatcher `cause=64`.
    #[test]
    fn f_amb_02_the_release_cause_travels_with_the_bye() {
        for (from_dc, extra, expected) in [
            (true, "Ptt-Extension: pttrelease;cause=17\r\n", "pttrelease;cause=17"),
            (true, "", "pttrelease;cause=64"),
            (false, "", "pttrelease;cause=64"),
        ] {
            let mut rig = Rig::with(NETWORK, AMBIENT_SUBSCRIBERS);
            rig.deliver(
                0,
                CALLER,
                &ambient_invite("1000", "1001", "pttcall;calltype=6", &directed(9000, "recvonly")),
            );
            let onward = requests(&rig.sent(), CALLEE, "INVITE")[0].clone();
            rig.deliver(
                5,
                CALLEE,
                &response_to(&onward, 200, "e1", Some(directed(9100, "sendonly"))),
            );
            let sent = rig.sent();
            let ok = sent
                .iter()
                .find(|(_, message)| message.status() == Some(200))
                .unwrap()
                .1
                .clone();
            let our_tag = ok.to_tag().unwrap().unwrap().to_owned();
            let bye = if from_dc {
                format!(
                    "BYE sip:1001@127.0.0.1:5601 SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bKbye;rport\r\n\
                     Max-Forwards: 70\r\nFrom: <sip:1000@127.0.0.1:5601>;tag=c1\r\n\
                     To: <sip:1001@127.0.0.1:5601>;tag={our_tag}\r\nCall-ID: amb1000@caller\r\nCSeq: 2 BYE\r\n\
                     {extra}Content-Length: 0\r\n\r\n"
                )
            } else {
                let from = onward
                    .header(HeaderName::From)
                    .unwrap()
                    .value_str()
                    .unwrap()
                    .into_owned();
                let call_id = onward.call_id().unwrap().to_owned();
                format!(
                    "BYE sip:x@127.0.0.1:5601 SIP/2.0\r\nVia: SIP/2.0/UDP {CALLEE};branch=z9hG4bKbye;rport\r\n\
                     Max-Forwards: 70\r\nFrom: <sip:1001@127.0.0.1:5601>;tag=e1\r\nTo: {from}\r\n\
                     Call-ID: {call_id}\r\nCSeq: 2 BYE\r\n{extra}Content-Length: 0\r\n\r\n"
                )
            };
            let (sender, receiver) = if from_dc { (CALLER, CALLEE) } else { (CALLEE, CALLER) };
            rig.deliver(20, sender, &bye);
            let sent = rig.sent();
            assert_eq!(statuses(&sent, sender), vec![200]);
            let onward_bye = requests(&sent, receiver, "BYE");
            assert_eq!(onward_bye.len(), 1);
            assert_eq!(extension_of(onward_bye[0]), expected);
            assert_eq!(rig.bridges(), 0, "media freed");
            assert_eq!(rig.tcf.stats().calls, 0);
        }
    }

    /// Only a dispatcher starts one; a group is no target; a bad call type is an ordinary call;
    /// an audio + video offer is not refused (its video goes on with port 0).
    #[test]
    fn ambient_listening_refusals_and_viewing() {
        let mut rig = Rig::with(NETWORK, AMBIENT_SUBSCRIBERS);
        rig.deliver(
            0,
            CALLEE,
            &ambient_invite("1001", "1000", "pttcall;calltype=6", &directed(9100, "recvonly")),
        );
        assert_eq!(statuses(&rig.sent(), CALLEE), vec![403]);
        rig.deliver(
            0,
            CALLEE,
            &ambient_invite("1001", "1000", "pttambiancelistening", &directed(9100, "recvonly")),
        );
        assert_eq!(statuses(&rig.sent(), CALLEE), vec![403]);
        rig.deliver(
            0,
            CALLER,
            &ambient_invite("1000", "2000", "pttcall;calltype=6", &directed(9000, "recvonly")),
        );
        assert_eq!(statuses(&rig.sent(), CALLER), vec![404]);
        assert_eq!(rig.bridges(), 0);
        assert_eq!(rig.tcf.stats().calls, 0);

        // calltype=6x: a single call like any other (hook mode, duplex).
        rig.deliver(
            0,
            CALLER,
            &ambient_invite("1000", "1001", "pttcall;calltype=6x", &offer(9000)),
        );
        let sent = rig.sent();
        assert_eq!(statuses(&sent, CALLER), vec![100]);
        let extension = extension_of(requests(&sent, CALLEE, "INVITE")[0]);
        assert!(extension.starts_with("pttcall;calltype=1;duplex=1"), "{extension}");

        // A target in a call its home knows of: 486, as for single calls.
        let mut rig = Rig::with(NETWORK, AMBIENT_SUBSCRIBERS);
        rig.tcf.calls.busy.insert(Number::parse("1001").unwrap(), 99);
        rig.deliver(
            0,
            CALLER,
            &ambient_invite("1000", "1001", "pttcall;calltype=6", &directed(9000, "recvonly")),
        );
        assert_eq!(statuses(&rig.sent(), CALLER), vec![486]);

        // A stunned target is barred like for any call.
        let mut rig = Rig::with(NETWORK, AMBIENT_SUBSCRIBERS);
        rig.tcf.restore_skr(vec![super::super::SkrRecord {
            user: Number::parse("1001").unwrap(),
            state: super::super::SkrState::Stunned,
        }]);
        rig.deliver(
            0,
            CALLER,
            &ambient_invite("1000", "1001", "pttcall;calltype=6", &directed(9000, "recvonly")),
        );
        let sent = rig.sent();
        assert_eq!(statuses(&sent, CALLER), vec![403]);
        assert!(requests(&sent, CALLEE, "INVITE").is_empty());

        let mut rig = Rig::with(NETWORK, AMBIENT_SUBSCRIBERS);
        let viewing =
            directed(9000, "recvonly") + "m=video 9002 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=recvonly\r\n";
        rig.deliver(
            0,
            CALLER,
            &ambient_invite("1000", "1001", "pttcall;calltype=7", &viewing),
        );
        let sent = rig.sent();
        assert_eq!(statuses(&sent, CALLER), vec![100]);
        let onward = requests(&sent, CALLEE, "INVITE")[0].clone();
        assert!(extension_of(&onward).starts_with("pttcall;calltype=7;"));
        let body = String::from_utf8_lossy(onward.body()).into_owned();
        // The video is relayed too (F-VID-01): a second bridge, its m-line at the video leg.
        assert!(!body.contains("m=video 0 "), "{body}");
        assert!(body.contains("a=rtpmap:96 H264/90000"), "{body}");
        assert_eq!(rig.bridges(), 2);
    }

    #[test]
    fn an_invite_from_an_unregistered_address_is_refused() {
        let mut rig = Rig::new();
        rig.deliver(0, "127.0.0.1:7777", &invite());
        assert_eq!(
            statuses(&rig.sent(), "127.0.0.1:7777"),
            vec![403],
            "answered where it came from"
        );
        assert_eq!(rig.bridges(), 0);
    }

    proptest::proptest! {
        /// Mutated single-call and group INVITEs, re-INVITEs and BYEs from a registered
        /// terminal never panic the core, and whatever it sends goes only to the two
        /// terminals it serves (requests) or the source IP (responses).
        #[test]
        fn hostile_call_requests_never_panic_nor_misroute(
            flips in proptest::collection::vec((0usize..700, proptest::prelude::any::<u8>()), 0..10),
            cut in 0usize..700,
            group in proptest::prelude::any::<bool>(),
        ) {
            let mut rig = Rig::new();
            let mut text = invite();
            if group {
                text = text.replace("sip:1001@", "sip:2000@");
            }
            let mut bytes = text.clone().into_bytes();
            for (position, byte) in flips.iter().copied() {
                if let Some(slot) = bytes.get_mut(position) {
                    *slot = byte;
                }
            }
            let truncated = bytes.get(..cut.min(bytes.len())).unwrap_or(&[]).to_vec();
            // A valid request first (so dialogs exist), then the hostile ones, in-dialog too.
            let reinvite = text
                .replace("To: <sip:1001@127.0.0.1:5601>", "To: <sip:1001@127.0.0.1:5601>;tag=x")
                .replace("CSeq: 1 INVITE", "CSeq: 2 INVITE")
                .replace("z9hG4bKinv1", "z9hG4bKinv2");
            let mut mutated_reinvite = reinvite.clone().into_bytes();
            for (position, byte) in flips {
                if let Some(slot) = mutated_reinvite.get_mut(position) {
                    *slot = byte;
                }
            }
            let allowed: [SocketAddr; 2] = [CALLER.parse().unwrap(), CALLEE.parse().unwrap()];
            for (millis, datagram) in [
                (0, text.into_bytes()),
                (5, bytes),
                (10, truncated),
                (15, reinvite.into_bytes()),
                (20, mutated_reinvite),
            ] {
                rig.tcf.handle_datagram(rig.at(millis), CALLER.parse().unwrap(), Bytes::from(datagram));
                rig.tick(millis + 1);
                while let Some(output) = rig.tcf.poll_output() {
                    if let Output::Transmit { destination, .. } = output {
                        // Requests go only to the two terminals; a response may go to the source IP at
                        // the port its (possibly mangled) Via names (RFC 3261 §18.2.2).
                        proptest::prop_assert!(
                            allowed.contains(&destination) || destination.ip() == allowed[0].ip(),
                            "sent to {destination}"
                        );
                    }
                }
            }
            // Time passes: everything times out without panicking.
            for seconds in 1..80 {
                rig.tick(seconds * 1000);
                while let Some(output) = rig.tcf.poll_output() {
                    if let Output::Transmit { destination, .. } = output {
                        // Requests go only to the two terminals; a response may go to the source IP at
                        // the port its (possibly mangled) Via names (RFC 3261 §18.2.2).
                        proptest::prop_assert!(
                            allowed.contains(&destination) || destination.ip() == allowed[0].ip(),
                            "sent to {destination}"
                        );
                    }
                }
            }
        }
    }

    /// An INVITE from peer TCF `from` (From user `user`) to group 2100 at this node, with
    /// `Ptt-Extension: extension` and a send-only offer for RTP port `port`.
    fn peer_invite(from: &str, user: &str, call_id: &str, extension: &str, port: u16) -> String {
        let body = offer(port).replace("a=rtpmap:0 PCMU/8000\r\n", "a=rtpmap:0 PCMU/8000\r\na=sendonly\r\n");
        format!(
            "INVITE sip:2100@127.0.0.1:5601 SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bK{port};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:{user}@{from}>;tag=p{port}\r\nTo: <sip:2100@127.0.0.1:5601>\r\n\
             Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:{user}@{from}>\r\n\
             Ptt-Extension: {extension}\r\n\
             Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    /// F-GRP-04 at a member TCF: the group home's downlink INVITE is answered at once, but the
    /// local members are invited only when the home's ACK shows it has the downlink's address
    /// (before that, what the home forwards could not reach this node, and a member that joined
    /// would miss the start of the call).
    #[test]
    fn f_grp_04_member_tcf_invites_its_members_once_the_home_acknowledged_the_downlink() {
        const HOME: &str = "127.0.0.1:5602";
        let network = format!(
            "{NETWORK}[[tcf]]\nname = \"h\"\nsip = \"{HOME}\"\nusers = [\"1100-1199\"]\ngroups = [\"2100\"]\nsecret = \"s\"\n"
        );
        let subscribers = format!("{SUBSCRIBERS}[[group]]\nnumber = \"2100\"\nmembers = [\"1000-1009\"]\n");
        let mut rig = Rig::with(&network, &subscribers);
        let downlink = peer_invite(
            HOME,
            "2100",
            "dl1@h",
            "pttcall;calltype=4;priority=1;GDN=2100;callerUDN=1100;stage=group-member",
            9400,
        );
        rig.deliver(0, HOME, &downlink);
        let sent = rig.sent();
        assert_eq!(statuses(&sent, HOME), vec![200], "{sent:?}");
        assert!(requests(&sent, CALLER, "INVITE").is_empty(), "no member before the ACK");
        assert!(requests(&sent, CALLEE, "INVITE").is_empty(), "no member before the ACK");
        let ok = sent
            .iter()
            .find_map(|(_, message)| (message.status() == Some(200)).then_some(message))
            .unwrap();
        let to = ok.header(HeaderName::To).unwrap().value_str().unwrap().into_owned();
        let ack = format!(
            "ACK sip:2100@127.0.0.1:5601 SIP/2.0\r\nVia: SIP/2.0/UDP {HOME};branch=z9hG4bKack1;rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:2100@{HOME}>;tag=p9400\r\nTo: {to}\r\n\
             Call-ID: dl1@h\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
        );
        rig.deliver(3, HOME, &ack);
        let sent = rig.sent();
        assert_eq!(requests(&sent, CALLER, "INVITE").len(), 1, "{sent:?}");
        assert_eq!(requests(&sent, CALLEE, "INVITE").len(), 1, "{sent:?}");
        // A retransmitted ACK invites nobody twice.
        rig.deliver(4, HOME, &ack);
        let sent = rig.sent();
        assert!(requests(&sent, CALLER, "INVITE").is_empty());
        assert!(requests(&sent, CALLEE, "INVITE").is_empty());
    }

    /// Peer tags at the group home: the downlink to member TCF h and the talker session h opens
    /// for its member 1100 carry the same tag (so 1100's voice never goes back down h's
    /// downlink: h fans it out itself), and the home's own members carry none.
    #[test]
    fn f_up_04_home_tags_a_member_tcfs_downlink_and_talker_sessions_alike() {
        const MEMBER_TCF: &str = "127.0.0.1:5602";
        let network = format!(
            "[[tcf]]\nname = \"a\"\nsip = \"127.0.0.1:5601\"\nusers = [\"1000-1099\"]\ngroups = [\"2100\"]\nsecret = \"s\"\n\
             [[tcf]]\nname = \"h\"\nsip = \"{MEMBER_TCF}\"\nusers = [\"1100-1199\"]\nsecret = \"s\"\n"
        );
        let subscribers = "[[user]]\nnumber = \"1000-1009\"\npassword = \"pw\"\n\
                           [[user]]\nnumber = \"1100-1109\"\npassword = \"pw\"\n\
                           [[group]]\nnumber = \"2100\"\nmembers = [\"1000\", \"1001\", \"1100\"]\n";
        let mut rig = Rig::with(&network, subscribers);
        let now = rig.at(0);
        let unix = rig.wall.duration_since(UNIX_EPOCH).unwrap().as_secs();
        rig.tcf.restore(
            Vec::new(),
            Vec::new(),
            vec![Location {
                user: Number::parse("1100").unwrap(),
                serving: "h".to_owned(),
                expires_at: unix + 3600,
            }],
            now,
        );
        let _ = rig.sent();
        let text = invite()
            .replace("sip:1001@", "sip:2100@")
            .replace("<sip:1001@", "<sip:2100@");
        rig.deliver(1, CALLER, &text);
        let sent = rig.sent();
        let downlink = requests(&sent, MEMBER_TCF, "INVITE")
            .first()
            .copied()
            .cloned()
            .expect("a downlink INVITE to h");
        let port_of = |message: &Message| -> u16 {
            let body = String::from_utf8_lossy(message.body()).into_owned();
            let line = body
                .lines()
                .find(|line| line.starts_with("m=audio "))
                .unwrap()
                .to_owned();
            line.split_whitespace().nth(1).unwrap().parse().unwrap()
        };
        let peer_of_port = |rig: &Rig, port: u16| -> u32 {
            rig.media.inspect(|state| {
                state
                    .legs
                    .values()
                    .find(|(local, _)| local.port() == port)
                    .map(|(_, spec)| spec.peer)
                    .expect("a leg on that port")
            })
        };
        let downlink_tag = peer_of_port(&rig, port_of(&downlink));
        assert_ne!(downlink_tag, 0, "a member TCF's downlink is tagged");
        let member_invite = requests(&sent, CALLEE, "INVITE")[0].clone();
        assert_eq!(
            peer_of_port(&rig, port_of(&member_invite)),
            0,
            "a member served here is not"
        );
        // h opens a talker session for its member 1100 (a floor request).
        let talker = peer_invite(
            MEMBER_TCF,
            "1100",
            "ts1@h",
            "pttrequest;priority=1;GDN=2100;callerUDN=1100;UDN=1100;stage=group-home",
            9600,
        );
        rig.deliver(5, MEMBER_TCF, &talker);
        let sent = rig.sent();
        let answer = sent
            .iter()
            .find_map(|(to, message)| {
                (to.to_string() == MEMBER_TCF
                    && message.status() == Some(200)
                    && message.call_id().ok() == Some("ts1@h"))
                .then_some(message)
            })
            .expect("the talker session is answered");
        assert_eq!(peer_of_port(&rig, port_of(answer)), downlink_tag);
    }

    /// The group home in simulated time: 1000 sets up group 2000 and holds the floor (the
    /// bridge's source is its leg); 1001 is invited; 1000 releases and 1001 asks: the source
    /// follows at once, and 1001's 200 says `pttaccept`.
    #[test]
    fn group_floor_moves_the_bridge_source() {
        let mut rig = Rig::new();
        let text = invite()
            .replace("sip:1001@", "sip:2000@")
            .replace("<sip:1001@", "<sip:2000@");
        rig.deliver(0, CALLER, &text);
        let sent = rig.sent();
        let ok = sent
            .iter()
            .find(|(_, message)| message.status() == Some(200))
            .map(|(_, message)| message.clone())
            .expect("the set-up is answered");
        let extension = ok
            .headers_named("Ptt-Extension")
            .next()
            .unwrap()
            .value_str()
            .unwrap()
            .into_owned();
        assert_eq!(extension, "pttaccept");
        let member_invite = requests(&sent, CALLEE, "INVITE")[0].clone();
        let source = |rig: &Rig| {
            rig.media
                .inspect(|state| state.sources.values().next().copied().flatten())
        };
        let caller_leg = source(&rig).expect("the caller's leg is the source");
        // 1001 answers its group INVITE.
        rig.deliver(5, CALLEE, &response_to(&member_invite, 200, "m1", Some(offer(9200))));
        let sent = rig.sent();
        assert_eq!(requests(&sent, CALLEE, "ACK").len(), 1);
        assert!(requests(&sent, CALLEE, "INFO").iter().any(|info| {
            info.headers_named("Ptt-Extension")
                .next()
                .unwrap()
                .value_str()
                .unwrap()
                .contains("UDN=1000")
        }));
        // 1000 releases the floor: the source is cleared.
        let to = ok.header(HeaderName::To).unwrap().value_str().unwrap().into_owned();
        let body = offer(9000).replace("a=rtpmap:0 PCMU/8000\r\n", "a=rtpmap:0 PCMU/8000\r\na=recvonly\r\n");
        let release = format!(
            "INVITE sip:2000@127.0.0.1:5601 SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bKrel1;rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:1000@127.0.0.1:5601>;tag=c1\r\nTo: {to}\r\n\
             Call-ID: call1@caller\r\nCSeq: 2 INVITE\r\nContact: <sip:1000@{CALLER}>\r\n\
             Ptt-Extension: pttreleasefloor\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        rig.deliver(10, CALLER, &release);
        assert_eq!(statuses(&rig.sent(), CALLER), vec![200]);
        // The source is cleared at once: the engine hands over (the bridge's `handover`),
        // forwarding the released talker's last packets until the next talker speaks.
        assert_eq!(source(&rig), None, "nobody holds the floor");
        let handover = rig.media.inspect(|state| match state.kinds.values().next() {
            Some(BridgeKind::Group(options)) => options.handover,
            _ => Duration::ZERO,
        });
        assert_eq!(handover, Duration::from_millis(60));
        let _ = caller_leg;
        rig.tick(80);
        let _ = rig.sent();
        assert_eq!(source(&rig), None);
        // 1001 asks for the floor in its session (it is the UAS of that dialog).
        let from = member_invite
            .header(HeaderName::From)
            .unwrap()
            .value_str()
            .unwrap()
            .into_owned();
        let call_id = member_invite.call_id().unwrap().to_owned();
        let body = offer(9200);
        let request = format!(
            "INVITE sip:2000@127.0.0.1:5601 SIP/2.0\r\nVia: SIP/2.0/UDP {CALLEE};branch=z9hG4bKreq1;rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:1001@127.0.0.1:5601>;tag=m1\r\nTo: {from}\r\n\
             Call-ID: {call_id}\r\nCSeq: 2 INVITE\r\nContact: <sip:1001@{CALLEE}>\r\n\
             Ptt-Extension: pttrequest\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        rig.deliver(90, CALLEE, &request);
        let sent = rig.sent();
        let granted = sent
            .iter()
            .find(|(destination, message)| *destination == CALLEE.parse().unwrap() && message.status() == Some(200))
            .map(|(_, message)| message.clone())
            .expect("the floor request is answered");
        let extension = granted
            .headers_named("Ptt-Extension")
            .next()
            .unwrap()
            .value_str()
            .unwrap()
            .into_owned();
        assert_eq!(extension, "pttaccept");
        let member_leg = source(&rig).expect("the member's leg is the source now");
        assert_ne!(member_leg, caller_leg);
    }

    /// The caller's in-dialog re-INVITE (CSeq `cseq`) with `body`, after `answered`.
    fn caller_reinvite(to: &str, cseq: u32, body: &str) -> String {
        format!(
            "INVITE sip:1001@127.0.0.1:5601 SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bKre{cseq};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:1000@127.0.0.1:5601>;tag=c1\r\nTo: {to}\r\n\
             Call-ID: call1@caller\r\nCSeq: {cseq} INVITE\r\nContact: <sip:1000@{CALLER}>\r\n\
             Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    fn with_video(audio: u16, video: u16) -> String {
        offer(audio) + &format!("m=video {video} RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n")
    }

    /// The port of the `m=video` line of a body.
    fn video_port(message: &Message) -> Option<u16> {
        let body = String::from_utf8_lossy(message.body()).into_owned();
        let line = body.lines().find(|line| line.starts_with("m=video "))?.to_owned();
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// The remote address of the fake leg whose local RTP port is `port`.
    fn leg_remote(rig: &Rig, port: u16) -> Option<SocketAddr> {
        rig.media.inspect(|state| {
            state
                .legs
                .values()
                .find(|(local, _)| local.port() == port)
                .and_then(|(_, spec)| spec.remote)
        })
    }

    #[test]
    fn f_vid_01_the_video_bridge_follows_the_reinvites() {
        let mut rig = Rig::new();
        answered(&mut rig);
        let sent = rig.sent();
        let ok = sent
            .iter()
            .find(|(_, message)| message.status() == Some(200))
            .map(|(_, message)| message.clone())
            .unwrap();
        let to = ok.header(HeaderName::To).unwrap().value_str().unwrap().into_owned();
        // A hostile video line: 488, nothing allocated, the call goes on.
        rig.deliver(
            20,
            CALLER,
            &caller_reinvite(&to, 2, &(offer(9000) + "m=video 9002 RTP/AVP 96 300\r\n")),
        );
        let sent = rig.sent();
        assert_eq!(statuses(&sent, CALLER), vec![100, 488]);
        assert!(requests(&sent, CALLEE, "INVITE").is_empty());
        assert_eq!(rig.bridges(), 1);

        // Video added: a second bridge; the offer goes on with the video at its B leg.
        rig.deliver(30, CALLER, &caller_reinvite(&to, 3, &with_video(9000, 9002)));
        let sent = rig.sent();
        assert_eq!(rig.bridges(), 2);
        let onward = requests(&sent, CALLEE, "INVITE")[0].clone();
        let b_port = video_port(&onward).unwrap();
        assert!(b_port != 0 && b_port != 9002);
        assert!(String::from_utf8_lossy(onward.body()).contains("a=rtpmap:96 H264/90000"));
        rig.deliver(
            40,
            CALLEE,
            &response_to(&onward, 200, "e1", Some(with_video(9100, 9102))),
        );
        let sent = rig.sent();
        let answer = sent
            .iter()
            .find(|(destination, message)| *destination == CALLER.parse().unwrap() && message.status() == Some(200))
            .map(|(_, message)| message.clone())
            .unwrap();
        let a_port = video_port(&answer).unwrap();
        assert!(a_port != 0 && a_port != 9102 && a_port != b_port);
        assert_eq!(leg_remote(&rig, a_port), Some("127.0.0.1:9002".parse().unwrap()));
        assert_eq!(leg_remote(&rig, b_port), Some("127.0.0.1:9102".parse().unwrap()));

        // Video removed: the bridge goes once the callee accepted.
        rig.deliver(50, CALLER, &caller_reinvite(&to, 4, &with_video(9000, 0)));
        let sent = rig.sent();
        let onward = requests(&sent, CALLEE, "INVITE")[0].clone();
        assert_eq!(video_port(&onward), Some(0));
        assert_eq!(rig.bridges(), 2, "kept until the answer");
        rig.deliver(60, CALLEE, &response_to(&onward, 200, "e1", Some(with_video(9100, 0))));
        let _ = rig.sent();
        assert_eq!(rig.bridges(), 1);

        // Added again but the callee declines the video: freed again.
        rig.deliver(70, CALLER, &caller_reinvite(&to, 5, &with_video(9000, 9004)));
        let onward = requests(&rig.sent(), CALLEE, "INVITE")[0].clone();
        assert_eq!(rig.bridges(), 2);
        rig.deliver(80, CALLEE, &response_to(&onward, 200, "e1", Some(with_video(9100, 0))));
        let sent = rig.sent();
        let answer = sent
            .iter()
            .find(|(destination, message)| *destination == CALLER.parse().unwrap() && message.status() == Some(200))
            .map(|(_, message)| message.clone())
            .unwrap();
        assert_eq!(video_port(&answer), Some(0));
        assert_eq!(rig.bridges(), 1);
    }

    #[test]
    fn f_vid_01_an_initial_invite_with_video_gets_two_bridges_and_a_bad_one_488() {
        let mut rig = Rig::new();
        let body = with_video(9000, 9002);
        let text = invite().replace(&offer(9000), &body).replace(
            &format!("Content-Length: {}", offer(9000).len()),
            &format!("Content-Length: {}", body.len()),
        );
        rig.deliver(0, CALLER, &text);
        let sent = rig.sent();
        assert_eq!(statuses(&sent, CALLER), vec![100]);
        assert_eq!(rig.bridges(), 2);
        let onward = requests(&sent, CALLEE, "INVITE")[0].clone();
        // The callee answers without video at all (audio only): the video bridge goes.
        rig.deliver(10, CALLEE, &response_to(&onward, 200, "e1", Some(with_video(9100, 0))));
        let sent = rig.sent();
        assert_eq!(statuses(&sent, CALLER), vec![200]);
        assert_eq!(rig.bridges(), 1);

        for bad in ["abc", "96 128", ""] {
            let mut rig = Rig::new();
            let body = offer(9000) + &format!("m=video 9002 RTP/AVP {bad}\r\n");
            let text = invite().replace(&offer(9000), &body).replace(
                &format!("Content-Length: {}", offer(9000).len()),
                &format!("Content-Length: {}", body.len()),
            );
            rig.deliver(0, CALLER, &text);
            let sent = rig.sent();
            let status = statuses(&sent, CALLER);
            assert!(status == vec![488] || status == vec![400], "{bad:?}: {status:?}");
            assert_eq!(rig.bridges(), 0, "nothing held");
        }
    }
}
