//! Video (F-VID-01, F-VID-02).
//!
//! # F-VID-01: video in a single call
//!
//! A single call ([`super::call`]) may carry a video stream besides its audio: in the initial
//! INVITE or added, changed or removed by a re-INVITE. An anchoring hop relays it like the
//! audio, on a second relay bridge of its own (two legs: one facing side A, one facing side
//! B); the relayed video m-line ([`crate::sdp::video_of`]: the first active `m=video` over
//! RTP/AVP or RTP/AVPF) is re-anchored at the leg facing the receiver of the body, hop by hop,
//! offer and answer alike ([`crate::sdp::reanchor_av`]). Video formats are passed through as
//! offered: no codec choice, no transcoding; the legs pass payload types unchanged.
//!
//! - A malformed relayed video m-line (no format, a format that is not a payload type number,
//!   a port count, an unusable address) gets 488, like an offer without a usable audio codec.
//! - No video bridge can be had (ports): the video m-line goes on with port 0 (declined), the
//!   call goes on with audio.
//! - The answerer declines the video (port 0) or answers it wrongly: its bridge is freed, the
//!   m-line goes back with port 0.
//! - A re-INVITE whose offer has no active video any more (port 0) frees the video bridge once
//!   the far side accepted it (2xx); a re-INVITE that adds video creates the bridge at once and
//!   frees it again if the far side refuses the re-INVITE or declines the video.
//! - The call's end frees both bridges.
//!
//! Non-anchoring hops pass the SDP through unchanged, video included. Ambient viewing
//! (calltype 7, [`super::ambient`]) is a single call: its video is relayed the same way.
//!
//! # F-VID-02: video forwarding orders
//!
//! A DC that receives a video stream in a call (e.g. ambient viewing) orders by `MESSAGE`,
//! `Ptt-Extension: pttvideoforward;action=start|stop;UDN=<user>|GDN=<group>;OnlineCallID="<id>"`,
//! that it be forwarded to another user or group, or that the forwarding stop. The order goes
//! to the DC's serving TCF (the forwarding node: it anchors the DC's call and holds its video
//! legs), which checks it (a registered dispatcher `403`, the call by the Call-ID of the DC's
//! own dialog `481`, carrying video `488`, the destination provisioned `404`, a stop of a
//! forwarding that is not running `481`) and relays it, statefully, to the destination's home
//! TCF (`DC=` added), which checks the DC and the destination and answers; its final answer
//! goes back to the DC. Once accepted, the forwarding node records the forwarding and sends the
//! DC a result report, `MESSAGE` with `...;result=0`. When the source call ends, its
//! forwardings end too and the DC gets a report with `action=stop;result=0;ended=source`.
//!
//! **Not done**: the forwarded media. No call to the destination is set up and no video is
//! copied to it; the orders, their checks, the relay, termination and the reports are. The
//! records are kept in memory only (they live no longer than the source call).
//!
//! Wire formats: `docs/protocol.md`, section "Video (F-VID-01, F-VID-02)".

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::control::provisioning::UserKind;
use crate::media::api::{BridgeKind, LegSpec};
use crate::sdp::{Ports, VideoStream};
use crate::sip::headers::PttExtension;

use super::call::{leg_spec, Anchor, Side};
use super::*;

/// The `Ptt-Extension` token of video forwarding orders and reports (F-VID-02).
pub(super) const FORWARD_TOKEN: &str = "pttvideoforward";

/// Start or stop a forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Start,
    Stop,
}

impl Action {
    fn param(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Stop => "stop",
        }
    }
}

/// Where the video goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Destination {
    User(Number),
    Group(Number),
}

impl Destination {
    fn number(&self) -> &Number {
        match self {
            Destination::User(number) | Destination::Group(number) => number,
        }
    }

    fn param(&self) -> &'static str {
        match self {
            Destination::User(_) => "UDN",
            Destination::Group(_) => "GDN",
        }
    }
}

/// An order or report as carried in `Ptt-Extension`:
/// `pttvideoforward;action=<a>;UDN=<u>|GDN=<g>[;OnlineCallID=<id>][;DC=<dc>][;result=<n>][;ended=source]`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ForwardOrder {
    action: Action,
    destination: Destination,
    /// The Call-ID of the DC's dialog of the source call (at the forwarding node).
    call_id: Option<String>,
    /// The ordering DC (between TCFs).
    dc: Option<Number>,
    /// A report's result: 0 done, else the refusing status.
    result: Option<u16>,
    /// A report sent because the source call ended.
    ended: bool,
}

/// Longest `OnlineCallID` accepted.
const MAX_CALL_ID: usize = 200;

impl ForwardOrder {
    /// Reads an order; `Err`: the reason phrase of the `400`.
    fn parse(extension: &PttExtension<'_>) -> Result<ForwardOrder, &'static str> {
        let text = |name: &str| {
            extension
                .param(name)
                .map(|value| std::str::from_utf8(&value).map(str::to_owned).map_err(|_| ()))
        };
        let action = match text("action") {
            Some(Ok(action)) if action.eq_ignore_ascii_case("start") => Action::Start,
            Some(Ok(action)) if action.eq_ignore_ascii_case("stop") => Action::Stop,
            _ => return Err("Bad Request (action)"),
        };
        let number = |name: &str| match text(name) {
            None => Ok(None),
            Some(Ok(value)) => Number::parse(&value).map(Some).map_err(|_| ()),
            Some(Err(())) => Err(()),
        };
        let destination = match (number("UDN"), number("GDN")) {
            (Ok(Some(user)), Ok(None)) => Destination::User(user),
            (Ok(None), Ok(Some(group))) => Destination::Group(group),
            _ => return Err("Bad Request (one of UDN or GDN)"),
        };
        let call_id = match text("OnlineCallID") {
            None => None,
            Some(Ok(id))
                if !id.is_empty()
                    && id.len() <= MAX_CALL_ID
                    && id.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\') =>
            {
                Some(id)
            }
            Some(_) => return Err("Bad Request (OnlineCallID)"),
        };
        let dc = number("DC").map_err(|_| "Bad Request (DC)")?;
        let result = match text("result") {
            None => None,
            Some(Ok(value)) => Some(value.parse::<u16>().map_err(|_| "Bad Request (result)")?),
            Some(Err(())) => return Err("Bad Request (result)"),
        };
        Ok(ForwardOrder {
            action,
            destination,
            call_id,
            dc,
            result,
            ended: false,
        })
    }

    fn render(&self) -> String {
        let mut text = String::with_capacity(120);
        text.push_str(FORWARD_TOKEN);
        text.push_str(";action=");
        text.push_str(self.action.param());
        text.push(';');
        text.push_str(self.destination.param());
        text.push('=');
        text.push_str(self.destination.number().as_str());
        if let Some(call_id) = &self.call_id {
            // A Call-ID has `@` and other non-token characters: always quoted.
            text.push_str(";OnlineCallID=\"");
            text.push_str(call_id);
            text.push('"');
        }
        if let Some(dc) = &self.dc {
            text.push_str(";DC=");
            text.push_str(dc.as_str());
        }
        if let Some(result) = self.result {
            text.push_str(";result=");
            text.push_str(itoa::Buffer::new().format(result));
        }
        if self.ended {
            text.push_str(";ended=source");
        }
        text
    }
}

/// One running forwarding at the forwarding node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ForwardKey {
    dc: Number,
    call_id: String,
    destination: Destination,
}

/// The running forwardings of this node (in memory: they live as long as their source call).
#[derive(Debug, Default)]
pub(super) struct Forwards {
    /// Forwarding → the source call's id.
    running: HashMap<ForwardKey, u64>,
}

/// A DC's order relayed to the destination's home, waiting for its answer.
#[derive(Debug)]
pub(super) struct ForwardRelay {
    server: TransactionKey,
    request: Message,
    source: SocketAddr,
    key: ForwardKey,
    action: Action,
    call: u64,
}

/// What a re-INVITE does to the call's video bridge, applied when its answer comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum VideoChange {
    /// Nothing to do: the video bridge (if any) stays as it is.
    Keep,
    /// The bridge was created for this re-INVITE: freed again if it fails or video is declined.
    Added,
    /// The offer removed the video: the bridge is freed on a 2xx.
    Removed,
}

/// The ports of the leg of `anchor` facing `side`, for [`crate::sdp::reanchor_av`].
pub(super) fn ports_facing(anchor: &Anchor, side: Side) -> Ports {
    let leg = match side {
        Side::A => &anchor.a,
        Side::B => &anchor.b,
    };
    Ports {
        rtp: leg.local_rtp.port(),
        rtcp: Some(leg.local_rtcp.port()),
    }
}

/// The spec of a video leg sending to the stream's remote address.
pub(super) fn video_spec(stream: &VideoStream) -> LegSpec {
    leg_spec(stream.remote_rtp, stream.remote_rtcp, false)
}

impl Tcf {
    /// A video relay bridge for a call whose side `from` offered `stream`: the leg facing
    /// `from` sends to the offered address, the other learns its remote from the answer.
    /// `None`: no media resources (the video is then declined).
    pub(super) fn video_bridge(&mut self, from: Side, stream: &VideoStream) -> Option<Anchor> {
        let bridge = self.media.create_bridge(BridgeKind::Relay).ok()?;
        let (spec_a, spec_b) = match from {
            Side::A => (video_spec(stream), LegSpec::default()),
            Side::B => (LegSpec::default(), video_spec(stream)),
        };
        let legs = self
            .media
            .add_leg(bridge, spec_a)
            .and_then(|a| Ok((a, self.media.add_leg(bridge, spec_b)?)));
        match legs {
            Ok((a, b)) => Some(Anchor { bridge, a, b }),
            Err(error) => {
                tracing::warn!(%error, "no video relay legs: video declined");
                self.media.remove_bridge(bridge);
                None
            }
        }
    }

    /// Frees a call's video bridge.
    pub(super) fn free_video(&mut self, video: &mut Option<Anchor>) {
        if let Some(anchor) = video.take() {
            self.media.remove_bridge(anchor.bridge);
        }
    }
}

impl Tcf {
    /// A MESSAGE outside a dialog: handles it when its `Ptt-Extension` is a video forwarding
    /// order (F-VID-02); otherwise hands it back.
    pub(super) fn video_forward_message(
        &mut self,
        now: Now,
        key: &TransactionKey,
        request: Message,
    ) -> Option<Message> {
        let parsed = match request.ptt_extension() {
            Ok(Some(extension)) if extension.value().eq_ignore_ascii_case(FORWARD_TOKEN) => {
                ForwardOrder::parse(&extension)
            }
            _ => return Some(request),
        };
        let source = self.current_source?;
        match self.network.tcf_at(source).map(|tcf| tcf.name.clone()) {
            Some(_) => self.video_forward_at_home(now, key, &request, parsed),
            None => self.video_forward_from_dc(now, key, &request, source, parsed),
        }
        None
    }

    /// At the DC's serving TCF (the forwarding node): check, then accept here or relay to the
    /// destination's home.
    fn video_forward_from_dc(
        &mut self,
        now: Now,
        key: &TransactionKey,
        request: &Message,
        source: SocketAddr,
        parsed: Result<ForwardOrder, &'static str>,
    ) {
        let Some(dc) = self.registered_sender(request, source) else {
            self.respond(now, key, request, 403, "Forbidden (not registered here)", &[]);
            return;
        };
        if !self
            .subscribers
            .user(&dc)
            .is_some_and(|user| user.kind == UserKind::Dispatcher)
        {
            self.respond(now, key, request, 403, "Forbidden (not a dispatcher)", &[]);
            return;
        }
        let order = match parsed {
            Ok(order) if order.result.is_none() => order,
            Ok(_) => {
                self.respond(now, key, request, 400, "Bad Request (a DC sends no result)", &[]);
                return;
            }
            Err(reason) => {
                self.respond(now, key, request, 400, reason, &[]);
                return;
            }
        };
        let Some(call_id) = order.call_id.clone() else {
            self.respond(now, key, request, 400, "Bad Request (OnlineCallID)", &[]);
            return;
        };
        let Some((call, has_video)) = self.call_of_terminal(&dc, &call_id) else {
            self.respond(
                now,
                key,
                request,
                481,
                "Call/Transaction Does Not Exist (no such call)",
                &[],
            );
            return;
        };
        if !has_video && order.action == Action::Start {
            self.respond(
                now,
                key,
                request,
                488,
                "Not Acceptable Here (the call carries no video)",
                &[],
            );
            return;
        }
        let home = match &order.destination {
            Destination::User(user) => self.subscribers.user(user).and(self.network.home_of_user(user)),
            Destination::Group(group) => self.subscribers.group(group).and(self.network.home_of_group(group)),
        }
        .map(|tcf| (tcf.name.clone(), tcf.sip));
        let Some((home, home_address)) = home else {
            self.respond(now, key, request, 404, "Not Found (destination)", &[]);
            return;
        };
        let forward = ForwardKey {
            dc: dc.clone(),
            call_id,
            destination: order.destination.clone(),
        };
        let running = self.video_forwards.running.contains_key(&forward);
        if order.action == Action::Stop && !running {
            self.respond(
                now,
                key,
                request,
                481,
                "Call/Transaction Does Not Exist (not forwarding)",
                &[],
            );
            return;
        }
        if home == self.config.name {
            self.respond(now, key, request, 200, "OK", &[]);
            self.video_forward_done(now, forward, order.action, call, 200);
            return;
        }
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
        let extension = ForwardOrder {
            call_id: None,
            dc: Some(dc.clone()),
            ..order.clone()
        }
        .render();
        let relay = ForwardRelay {
            server: key.clone(),
            request: request.clone(),
            source,
            key: forward,
            action: order.action,
            call,
        };
        let uri = concat(&[
            "sip:",
            order.destination.number().as_str(),
            "@",
            &home_address.to_string(),
        ]);
        let sent = self.send_message_as(
            now,
            dc.as_str(),
            &uri,
            extension,
            None,
            home_address,
            Pending::VideoForward(Box::new(relay)),
        );
        if sent.is_none() {
            self.respond(now, key, request, 503, "Service Unavailable", &[]);
        }
    }

    /// At the destination's home: the DC must be a dispatcher, the destination ours.
    fn video_forward_at_home(
        &mut self,
        now: Now,
        key: &TransactionKey,
        request: &Message,
        parsed: Result<ForwardOrder, &'static str>,
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
        if !self
            .subscribers
            .user(&dc)
            .is_some_and(|user| user.kind == UserKind::Dispatcher)
        {
            self.respond(now, key, request, 403, "Forbidden (not a dispatcher)", &[]);
            return;
        }
        let me = self.config.name.as_str();
        let ours = match &order.destination {
            Destination::User(user) => {
                self.subscribers.user(user).is_some()
                    && self.network.home_of_user(user).is_some_and(|home| home.name == me)
            }
            Destination::Group(group) => {
                self.subscribers.group(group).is_some()
                    && self.network.home_of_group(group).is_some_and(|home| home.name == me)
            }
        };
        if !ours {
            self.respond(now, key, request, 404, "Not Found (not the destination's home)", &[]);
            return;
        }
        self.respond(now, key, request, 200, "OK", &[]);
        self.event(TcfEvent::VideoForward {
            dc,
            destination: order.destination.number().clone(),
            action: order.action.param().to_owned(),
            status: 200,
        });
    }

    /// The destination's home answered a relayed order (or did not): answer the DC likewise.
    pub(super) fn video_forward_answered(
        &mut self,
        now: Now,
        relay: ForwardRelay,
        status: u16,
        response: Option<Message>,
    ) {
        let ForwardRelay {
            server,
            request,
            source,
            key,
            action,
            call,
        } = relay;
        let handling = self.current_source.replace(source);
        if (200..300).contains(&status) {
            self.respond(now, &server, &request, 200, "OK", &[]);
            self.current_source = handling;
            self.video_forward_done(now, key, action, call, 200);
            return;
        }
        let reason = match (status, response.as_ref().and_then(|response| response.reason_phrase())) {
            (408, _) => "Request Timeout (home TCF did not answer)".to_owned(),
            (_, Some(reason)) => String::from_utf8_lossy(reason).into_owned(),
            (_, None) => "Refused by home TCF".to_owned(),
        };
        self.respond(now, &server, &request, status, &reason, &[]);
        self.current_source = handling;
        self.event(TcfEvent::VideoForward {
            dc: key.dc,
            destination: key.destination.number().clone(),
            action: action.param().to_owned(),
            status,
        });
    }

    /// An accepted order takes effect at the forwarding node; the DC gets its report.
    fn video_forward_done(&mut self, now: Now, key: ForwardKey, action: Action, call: u64, status: u16) {
        match action {
            Action::Start => {
                self.video_forwards.running.insert(key.clone(), call);
            }
            Action::Stop => {
                self.video_forwards.running.remove(&key);
            }
        }
        self.event(TcfEvent::VideoForward {
            dc: key.dc.clone(),
            destination: key.destination.number().clone(),
            action: action.param().to_owned(),
            status,
        });
        self.video_forward_report(now, &key, action, false);
    }

    /// The result report to the DC (fire and forget, to its binding here).
    fn video_forward_report(&mut self, now: Now, key: &ForwardKey, action: Action, ended: bool) {
        let Some(binding) = self.bindings.get(&key.dc).cloned() else {
            return;
        };
        let extension = ForwardOrder {
            action,
            destination: key.destination.clone(),
            call_id: Some(key.call_id.clone()),
            dc: None,
            result: Some(0),
            ended,
        }
        .render();
        let uri = binding.contact.trim_matches(|c| c == '<' || c == '>').to_owned();
        let from = self.config.name.clone();
        self.send_message_as(
            now,
            &from,
            &uri,
            extension,
            None,
            binding.address,
            Pending::FireAndForget,
        );
    }

    /// A call ended: the forwardings of its video end too, each DC gets a report.
    pub(super) fn video_call_ended(&mut self, now: Now, call: u64) {
        if self.video_forwards.running.is_empty() {
            return;
        }
        let ended: Vec<ForwardKey> = self
            .video_forwards
            .running
            .iter()
            .filter(|(_, source)| **source == call)
            .map(|(key, _)| key.clone())
            .collect();
        for key in ended {
            self.video_forwards.running.remove(&key);
            self.video_forward_report(now, &key, Action::Stop, true);
        }
    }

    /// The number of running video forwardings at this node.
    pub fn video_forwardings(&self) -> usize {
        self.video_forwards.running.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::headers::PttExtension;

    fn parse(text: &str) -> Result<ForwardOrder, &'static str> {
        let extension = PttExtension::parse(text.as_bytes()).map_err(|_| "unparsable")?;
        ForwardOrder::parse(&extension)
    }

    #[test]
    fn orders_and_reports_read_and_render_alike() {
        let order = parse("pttvideoforward;action=start;UDN=1300;OnlineCallID=\"ab12@phone\"").unwrap();
        assert_eq!(order.action, Action::Start);
        assert_eq!(order.destination, Destination::User(Number::parse("1300").unwrap()));
        assert_eq!(order.call_id.as_deref(), Some("ab12@phone"));
        assert_eq!(
            order.render(),
            "pttvideoforward;action=start;UDN=1300;OnlineCallID=\"ab12@phone\""
        );
        let relayed = ForwardOrder {
            call_id: None,
            dc: Some(Number::parse("9200").unwrap()),
            ..order
        };
        assert_eq!(relayed.render(), "pttvideoforward;action=start;UDN=1300;DC=9200");
        assert_eq!(parse(&relayed.render()).unwrap(), relayed);
        let report = parse("pttvideoforward;ACTION=STOP;GDN=2100;OnlineCallID=x;result=0").unwrap();
        assert_eq!(report.action, Action::Stop);
        assert_eq!(report.destination, Destination::Group(Number::parse("2100").unwrap()));
        assert_eq!(report.result, Some(0));
    }

    #[test]
    fn malformed_orders_are_refused_with_a_reason() {
        for text in [
            "pttvideoforward;UDN=1300",
            "pttvideoforward;action=pause;UDN=1300",
            "pttvideoforward;action=start",
            "pttvideoforward;action=start;UDN=1300;GDN=2100",
            "pttvideoforward;action=start;UDN=abc",
            "pttvideoforward;action=start;UDN=1300;OnlineCallID=\"\"",
            "pttvideoforward;action=start;UDN=1300;OnlineCallID=\"a b\"",
            "pttvideoforward;action=start;UDN=1300;DC=x",
            "pttvideoforward;action=start;UDN=1300;result=-1",
        ] {
            assert!(parse(text).is_err(), "{text}");
        }
        let long = format!("pttvideoforward;action=start;UDN=1300;OnlineCallID={}", "a".repeat(201));
        assert!(parse(&long).is_err());
    }
}
