//! Group calls and floor control (F-GRP-01 … F-GRP-07, F-FLR-01 … F-FLR-11, F-REG-09).
//!
//! # Roles and sessions
//!
//! - **Group home** ([`Home`], one per running group call): runs the [`Floor`] and a group bridge
//!   in the engine whose source is the floor holder. It holds
//!   - one *talker session* per member TCF user who asked for the floor (TC2 INVITE to the GDN,
//!     `pttcall` for the set-up, `pttrequest` afterwards; its SDP sets up an uplink leg),
//!   - one *downlink* per member TCF (INVITE `stage=group-member`, one per TCF, not per user)
//!     and one per dispatcher (INVITE to the DC's number, `stage=callee-serving`, relayed to the
//!     DC by its serving TCF like a single call),
//!   - the D sessions of members and DCs it serves itself.
//! - **Member TCF** ([`Local`]): a group bridge of its own whose source is the downlink from the
//!   home (or its own member's leg while that member holds the floor, so local listeners hear it
//!   without the round trip and the talker never hears itself), one D session per local member,
//!   and the talker sessions of local members towards the home.
//!
//! # Terminal side (F-FLR-11)
//!
//! A member asks for the floor with a re-INVITE in its group session carrying
//! `Ptt-Extension: pttrequest` and gives it back with `pttreleasefloor`; the final response to
//! that re-INVITE carries the outcome (`200` with `pttaccept`, `200` with
//! `pttwaiting;position=N`, or `480`). Later changes come as in-dialog INVITEs from the TCF
//! (`pttaccept` when a queued request is granted, `pttreleasefloor` when the floor is taken
//! away) and INFO (`pttinfo;UDN=<talker>` or `UDN=idle` after every floor change,
//! `pttwaiting;position=N` when a queue position changes).

use crate::proto::NetMap;
use std::collections::HashMap;

use crate::config::ReleaseBy;
use crate::control::floor::{Floor, FloorAction, FloorConfig, ParticipantId, RequestOutcome, Requester, RevokeReason};
use crate::media::api::{BridgeId, BridgeKind, Event, GroupOptions, LegInfo, LegSpec};
use crate::media::codec::Codec;
use crate::sdp::{self, Direction, Format, Sdp};
use crate::sip::dialog::{Dialog, DialogId};

use super::*;

use super::call::{is_sdp, SDP};
use super::resend::{Resend, Resend2xx};

/// Where a group dialog belongs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Slot {
    /// Home: a member TCF user's talker session (we are UAS).
    HomeTalker { gdn: Number, user: Number },
    /// Home: a downlink to a member TCF or a DC (we are UAC).
    HomeDownlink { gdn: Number, target: String },
    /// Home: the D session of a member or DC served here.
    HomeMember { gdn: Number, user: Number },
    /// Member TCF: the downlink from the home (we are UAS).
    LocalDownlink { gdn: Number },
    /// Member TCF: a local member's D session.
    LocalMember { gdn: Number, user: Number },
    /// Member TCF: a local member's talker session towards the home (we are UAC).
    LocalTalker { gdn: Number, user: Number },
}

/// A request we must answer later (a floor request waiting for the home's decision, an
/// initiator's INVITE waiting for the set-up).
#[derive(Debug, Clone)]
struct Awaiting {
    server: TransactionKey,
    request: Message,
    source: SocketAddr,
    /// The To tag for a response that creates the dialog.
    tag: Option<String>,
}

/// A D session with a terminal or DC.
#[derive(Debug)]
struct Member {
    dialog: Option<Dialog>,
    destination: SocketAddr,
    leg: LegInfo,
    /// Our INVITE to it (we invited it) and its offer, until answered.
    invite: Option<(TransactionKey, Message, Sdp)>,
    /// Our contact in its dialog.
    contact: String,
    /// Its request waiting for an answer.
    awaiting: Option<Awaiting>,
}

/// A local member's talker session towards the home (member TCF side).
#[derive(Debug)]
struct LocalTalker {
    invite: Message,
    offer: Sdp,
    dialog: Option<Dialog>,
    leg: LegInfo,
    /// The leg's description once the home answered.
    spec: Option<LegSpec>,
    granted: bool,
    /// Released by the member: the session (and its leg, which carries the member's last
    /// packets up to the home meanwhile) ends then, after the release grace.
    releasing: Option<Instant>,
}

/// A talker session at the home.
#[derive(Debug)]
struct HomeTalker {
    dialog: Option<Dialog>,
    destination: SocketAddr,
    leg: LegInfo,
}

/// A downlink at the home.
#[derive(Debug)]
struct Downlink {
    /// A DC's number (its own downlink) or `None` (a member TCF's).
    dc: Option<Number>,
    client: TransactionKey,
    peer: String,
    destination: SocketAddr,
    leg: LegInfo,
    invite: Message,
    offer: Sdp,
    dialog: Option<Dialog>,
}

/// How a floor participant is reached at the home.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Path {
    Talker,
    Member,
    Dc(String),
}

/// A group call at its home.
#[derive(Debug)]
struct Home {
    gdn: Number,
    bridge: BridgeId,
    /// The group's codec: every leg of the call uses it (the engine does not transcode).
    codec: Format,
    floor: Floor,
    initiator: Number,
    priority: u8,
    talkers: NetMap<Number, HomeTalker>,
    downlinks: NetMap<String, Downlink>,
    members: NetMap<Number, Member>,
    /// Members served here and DCs that hung up (F-GRP-05: only they leave): not invited
    /// again while the call lasts, unless they register anew or move ([`Groups::rejoined`]).
    left: Vec<Number>,
    pids: NetMap<Number, ParticipantId>,
    users: NetMap<ParticipantId, Number>,
    next_pid: u64,
}

/// A group call at a member TCF.
#[derive(Debug)]
struct Local {
    bridge: BridgeId,
    /// The group's codec (from the home's downlink offer or the initiator's offer).
    codec: Format,
    home: String,
    home_address: SocketAddr,
    downlink: Option<(Dialog, LegInfo)>,
    /// The home acknowledged our answer to its downlink: it has the downlink's address, so
    /// what it forwards reaches us. Members are invited only from then on, so none can hear
    /// the call start with a packet the home could not send yet.
    downlink_confirmed: bool,
    members: NetMap<Number, Member>,
    /// Local members that hung up: not invited again while the call lasts, unless they
    /// register anew or move ([`Groups::rejoined`]).
    left: Vec<Number>,
    talkers: NetMap<Number, LocalTalker>,
    initiator: Option<Number>,
    priority: u8,
    /// The talker the home last announced (`idle` when none).
    talker: String,
}

/// What one of our group client transactions is.
#[derive(Debug, Clone)]
enum GSent {
    /// An INVITE that creates a dialog (D INVITE to a member, downlink, talker session), with
    /// the INVITE and where it went (to end a late answer with BYE).
    Creating(Slot, Box<Message>, SocketAddr),
    /// An in-dialog INVITE (floor grant/revocation): ACK its 2xx in that dialog.
    InDialog(Slot),
    /// BYE, INFO, MESSAGE: nothing to do with the answer.
    Other,
}

/// A 2xx we retransmit until its ACK arrives.
#[derive(Debug)]
struct Retransmit {
    dialog: DialogId,
    resend: Resend2xx,
}

/// What waits for the end of a voluntary release's [`RELEASE_GRACE`]: the released talker's
/// legs stay until then, so that its last packets (sent just before the release, possibly
/// still queued in a media worker) can still be forwarded by the engine's handover.
#[derive(Debug)]
enum Deferred {
    /// Home: remove a released talker session's leg.
    RemoveLeg(crate::media::api::LegId),
    /// Member TCF: end a released member's talker session and follow the floor.
    DropLocalTalker(Number, Number),
}

/// How long the engine still forwards a switched-from talker when the next one has not spoken
/// yet (a group bridge's handover), and how long a released talker's legs stay: three packet
/// times.
const RELEASE_GRACE: Duration = Duration::from_millis(60);

/// All group calls of this node.
#[derive(Debug, Default)]
pub(super) struct Groups {
    homes: NetMap<Number, Home>,
    locals: NetMap<Number, Local>,
    by_dialog: NetMap<DialogId, Slot>,
    sent: NetMap<TransactionKey, GSent>,
    /// Users bound, unbound or located since the last look (late entry, F-REG-09).
    pub(super) changed: Vec<Number>,
    /// Users newly registered or moved since the last look (not a mere refresh): they may
    /// join calls they had left.
    pub(super) rejoined: Vec<Number>,
    /// Peers that went down since the last look: their sessions end.
    pub(super) peers_down: Vec<String>,
    /// Our 2xx responses to INVITEs, sent again until their ACK (RFC 3261 §13.3.1.4).
    retransmits: Vec<Retransmit>,
    /// What a voluntary release does once its grace period is over.
    deferred: Vec<(Instant, Deferred)>,
    pub(super) set_up_total: u64,
}

impl Groups {
    pub(super) fn owns(&self, key: &TransactionKey) -> bool {
        self.sent.contains_key(key)
    }

    pub(super) fn len(&self) -> usize {
        self.homes.len() + self.locals.len()
    }

    /// The initiator and the talker (`None`: idle) of the group call homed here, if one is up.
    pub(super) fn call_state(&self, gdn: &Number) -> Option<(Number, Option<Number>)> {
        let home = self.homes.get(gdn)?;
        Some((
            home.initiator.clone(),
            home.floor.holder().map(|holder| holder.number.clone()),
        ))
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let floors = self.homes.values().filter_map(|home| home.floor.poll_timeout());
        floors
            .chain(self.retransmits.iter().map(|retransmit| retransmit.resend.next()))
            .chain(self.deferred.iter().map(|(at, _)| *at))
            .min()
    }
}

fn extension(message: &Message) -> Option<(String, HashMap<String, String>)> {
    let ext = message.ptt_extension().ok().flatten()?;
    let params = ext
        .params()
        .iter()
        .map(|param| {
            (
                param.name.to_ascii_lowercase(),
                param
                    .value
                    .map(|value| String::from_utf8_lossy(value).into_owned())
                    .unwrap_or_default(),
            )
        })
        .collect();
    Some((ext.value().to_ascii_lowercase(), params))
}

/// The SDP offer a group INVITE must carry.
fn offer_of(request: &Message) -> Result<Sdp, (u16, &'static str)> {
    match is_sdp(request).then(|| sdp::parse(request.body())) {
        Some(Ok(offer)) => Ok(offer),
        _ => Err((488, "Not Acceptable Here (SDP offer required)")),
    }
}

fn group_leg_spec(negotiated: Option<&sdp::Negotiated>, fanout: bool, peer: u32) -> LegSpec {
    match negotiated {
        Some(negotiated) => LegSpec {
            remote: negotiated.remote_rtp,
            remote_rtcp: negotiated.remote_rtcp,
            rtcp_mux: negotiated.rtcp_mux,
            payload_types: negotiated.payload_types(),
            fanout,
            peer,
            ..LegSpec::default()
        },
        None => LegSpec {
            fanout,
            peer,
            ..LegSpec::default()
        },
    }
}

/// The engine's peer tag of the legs a group call has with peer TCF `name` (see
/// [`LegSpec::peer`]): what came from that TCF never goes back to it. FNV-1a of the name;
/// never 0 (no peer).
fn peer_tag(name: &str) -> u32 {
    let hash = name.bytes().fold(0x811c_9dc5u32, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    });
    hash.max(1)
}

impl Tcf {
    fn floor_config(&self) -> FloorConfig {
        let groups = &self.config.groups;
        FloorConfig {
            max_talk_time: groups.max_talk_time,
            // Inactivity comes from the engine (TalkerSilent), which sees every packet.
            inactivity: Duration::from_secs(86_400 * 365),
            hang_time: groups.hang_time,
            queue_capacity: groups.queue,
            dc_outranks: groups.dc_outranks,
        }
    }

    /// The formats a group leg may use: the group's codec (once chosen) and telephone
    /// events at its clock rate.
    fn group_preferences(codec: Option<&Format>) -> Vec<Format> {
        match codec {
            Some(codec) => {
                let events = if codec.codec.clock_rate() == 16_000 {
                    Codec::TelephoneEvent16k
                } else {
                    Codec::TelephoneEvent8k
                };
                vec![codec.clone(), Format::new(events)]
            }
            None => sdp::default_preferences(),
        }
    }

    /// The codec a new group call will use: our most preferred one the offer has.
    fn group_codec(&self, offer: &Sdp) -> Result<Format, (u16, &'static str)> {
        let preferences = sdp::default_preferences();
        let mut local = sdp::LocalMedia::new(self.address.ip(), 9, &preferences);
        local.single_codec = true;
        let negotiated =
            sdp::negotiate_offer(offer, &local).map_err(|_| (488, "Not Acceptable Here (no acceptable codec)"))?;
        negotiated
            .voice()
            .map(|voice| voice.format.clone())
            .ok_or((488, "Not Acceptable Here (no acceptable codec)"))
    }

    fn group_bridge(&mut self, codec: &Format) -> Result<BridgeId, (u16, &'static str)> {
        let options = GroupOptions {
            talker_inactivity: self.config.groups.inactivity,
            clock_rate: codec.codec.clock_rate(),
            handover: RELEASE_GRACE,
            ..GroupOptions::default()
        };
        self.media
            .create_bridge(BridgeKind::Group(options))
            .map_err(|_| (503, "Service Unavailable (no media resources)"))
    }

    /// Answers `offer` for a new leg of `bridge`: the leg and the SDP answer.
    fn group_answer(
        &mut self,
        bridge: BridgeId,
        codec: &Format,
        offer: &Sdp,
        direction: Direction,
        fanout: bool,
        peer: u32,
    ) -> Result<(LegInfo, Bytes), (u16, &'static str)> {
        let preferences = Self::group_preferences(Some(codec));
        let mut local = sdp::LocalMedia::new(self.address.ip(), 9, &preferences);
        local.direction = direction;
        local.single_codec = true;
        let negotiated =
            sdp::negotiate_offer(offer, &local).map_err(|_| (488, "Not Acceptable Here (no acceptable codec)"))?;
        let spec = group_leg_spec(Some(&negotiated), fanout, peer);
        let leg = self
            .media
            .add_leg(bridge, spec)
            .map_err(|_| (503, "Service Unavailable (no media resources)"))?;
        let body = self.group_answer_body(&leg, codec, offer, direction)?;
        Ok((leg, body))
    }

    fn group_answer_body(
        &self,
        leg: &LegInfo,
        codec: &Format,
        offer: &Sdp,
        direction: Direction,
    ) -> Result<Bytes, (u16, &'static str)> {
        let preferences = Self::group_preferences(Some(codec));
        let mut local = sdp::LocalMedia::new(leg.local_rtp.ip(), leg.local_rtp.port(), &preferences);
        local.rtcp_port = leg.local_rtcp.port();
        local.direction = direction;
        local.single_codec = true;
        let answer = sdp::answer(offer, &local).map_err(|_| (488, "Not Acceptable Here (no acceptable codec)"))?;
        Ok(Bytes::from(answer.sdp.to_bytes()))
    }

    /// A new leg of `bridge` with our offer.
    fn group_offer(
        &mut self,
        bridge: BridgeId,
        codec: &Format,
        direction: Direction,
        fanout: bool,
        peer: u32,
    ) -> Option<(LegInfo, Sdp)> {
        let leg = self.media.add_leg(bridge, group_leg_spec(None, fanout, peer)).ok()?;
        let preferences = Self::group_preferences(Some(codec));
        let mut local = sdp::LocalMedia::new(leg.local_rtp.ip(), leg.local_rtp.port(), &preferences);
        local.rtcp_port = leg.local_rtcp.port();
        local.direction = direction;
        Some((leg, sdp::offer(&local)))
    }

    fn group_token(&mut self) -> String {
        format!("z9hG4bK{}", self.token())
    }

    /// Sends a dialog-creating INVITE; returns the request and its key.
    #[allow(clippy::too_many_arguments)]
    fn group_invite_out(
        &mut self,
        now: Now,
        uri: &str,
        to: &str,
        from_user: &Number,
        extension: &str,
        offer: &Sdp,
        destination: SocketAddr,
        slot: Slot,
    ) -> Option<(TransactionKey, Message)> {
        let (key, request) = self.new_invite(uri, to, from_user, extension, Bytes::from(offer.to_bytes()))?;
        self.layer
            .send_request(
                now.instant,
                key.clone(),
                TxMethod::Invite,
                request.to_bytes(),
                destination,
                false,
            )
            .ok()?;
        self.groups.sent.insert(
            key.clone(),
            GSent::Creating(slot, Box::new(request.clone()), destination),
        );
        Some((key, request))
    }

    /// The dialog of a slot and where its requests go.
    fn group_dialog(&mut self, slot: &Slot) -> Option<(&mut Dialog, SocketAddr)> {
        match slot {
            Slot::HomeTalker { gdn, user } => {
                let talker = self.groups.homes.get_mut(gdn)?.talkers.get_mut(user)?;
                let destination = talker.destination;
                Some((talker.dialog.as_mut()?, destination))
            }
            Slot::HomeDownlink { gdn, target } => {
                let downlink = self.groups.homes.get_mut(gdn)?.downlinks.get_mut(target)?;
                let destination = downlink.destination;
                Some((downlink.dialog.as_mut()?, destination))
            }
            Slot::HomeMember { gdn, user } => {
                let member = self.groups.homes.get_mut(gdn)?.members.get_mut(user)?;
                let destination = member.destination;
                Some((member.dialog.as_mut()?, destination))
            }
            Slot::LocalDownlink { gdn } => {
                let local = self.groups.locals.get_mut(gdn)?;
                let destination = local.home_address;
                Some((&mut local.downlink.as_mut()?.0, destination))
            }
            Slot::LocalMember { gdn, user } => {
                let member = self.groups.locals.get_mut(gdn)?.members.get_mut(user)?;
                let destination = member.destination;
                Some((member.dialog.as_mut()?, destination))
            }
            Slot::LocalTalker { gdn, user } => {
                let local = self.groups.locals.get_mut(gdn)?;
                let destination = local.home_address;
                Some((local.talkers.get_mut(user)?.dialog.as_mut()?, destination))
            }
        }
    }

    /// Sends a request in a group dialog.
    fn group_request(
        &mut self,
        now: Now,
        slot: &Slot,
        method: Method<'_>,
        extension: Option<String>,
        body: Option<Bytes>,
    ) -> Option<TransactionKey> {
        let branch = self.group_token();
        let sent_by = self.address.to_string();
        let (dialog, destination) = self.group_dialog(slot)?;
        let mut builder = dialog.request(method, &branch, &sent_by, "UDP").ok()?;
        if let Some(extension) = extension {
            builder = builder.raw_header("Ptt-Extension", extension);
        }
        if let Some(body) = body {
            builder = builder.body(SDP, body);
        }
        let bytes = builder.build_bytes().ok()?;
        let tx_method = TxMethod::from_token(method.as_str());
        let key = TransactionKey::new(&branch, &sent_by, tx_method.clone()).ok()?;
        self.layer
            .send_request(now.instant, key.clone(), tx_method, bytes, destination, false)
            .ok()?;
        let sent = if method == Method::Invite {
            GSent::InDialog(slot.clone())
        } else {
            GSent::Other
        };
        self.groups.sent.insert(key.clone(), sent);
        Some(key)
    }

    /// Answers a request now or later, with our tag when it creates the dialog.
    #[allow(clippy::too_many_arguments)]
    fn group_reply(
        &mut self,
        now: Now,
        awaiting: &Awaiting,
        status: u16,
        reason: &str,
        contact: Option<&str>,
        extension: Option<String>,
        body: Option<Bytes>,
    ) -> Option<Message> {
        let builder = crate::sip::response_to_from(
            &awaiting.request,
            status,
            reason,
            awaiting.tag.as_deref(),
            awaiting.source,
        )
        .ok()?;
        let mut builder = builder.raw_header("Server", SERVER);
        if let (Some(contact), true) = (contact, status < 300) {
            builder = builder.header(HeaderName::Contact, contact);
        }
        if let Some(extension) = extension {
            builder = builder.raw_header("Ptt-Extension", extension);
        }
        if let Some(body) = body {
            builder = builder.body(SDP, body);
        }
        let response = builder.build().ok()?;
        let bytes = response.to_bytes();
        let _ = self.layer.respond(now.instant, &awaiting.server, status, bytes.clone());
        let invite = awaiting.request.method() == Some(Method::Invite);
        if invite && (200..300).contains(&status) && !self.current_reliable {
            if let Some(dialog) = DialogId::of_received(&response).map(|id| DialogId {
                // Our tag is in To: the ACK's dialog id as received.
                call_id: id.call_id,
                local_tag: id.remote_tag,
                remote_tag: id.local_tag,
            }) {
                let t1 = self.config.timers.t1();
                let cseq = awaiting.request.cseq().map_or(0, |cseq| cseq.number);
                self.groups.retransmits.push(Retransmit {
                    dialog,
                    resend: Resend2xx::new(awaiting.server.clone(), bytes, cseq, now.instant, t1),
                });
            }
        }
        Some(response)
    }

    fn awaiting(&mut self, key: &TransactionKey, request: &Message, tag: bool) -> Option<Awaiting> {
        Some(Awaiting {
            server: key.clone(),
            request: request.clone(),
            source: self.current_source?,
            tag: tag.then(|| self.token()),
        })
    }

    // ---- entry points ---------------------------------------------------------------------

    /// An INVITE outside any dialog concerning a group: set-up from a terminal, set-up or floor
    /// request at the home, downlink at a member TCF. Returns the request when it is not ours.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn group_invite(
        &mut self,
        now: Now,
        key: TransactionKey,
        request: Message,
        caller: &Number,
        gdn: &Number,
        from_terminal: bool,
        stage: Option<&str>,
    ) -> Option<Message> {
        let me = self.config.name.clone();
        let Some(home) = self.network.home_of_group(gdn).map(|tcf| (tcf.name.clone(), tcf.sip)) else {
            self.respond(now, &key, &request, 404, "Not Found (unknown group)", &[]);
            return None;
        };
        // Membership as regrouping left it (F-RGP-02).
        let Some(is_member) = self.subscribers.group(gdn).map(|group| self.in_group(group, caller)) else {
            self.respond(now, &key, &request, 404, "Not Found (unknown group)", &[]);
            return None;
        };
        match (from_terminal, stage) {
            (true, _) => {
                if !is_member {
                    self.respond(now, &key, &request, 403, "Forbidden (not a member of the group)", &[]);
                    return None;
                }
                // A stunned member sets up no group call (F-SKR decision, at its serving TCF).
                if let Some(reason) = self.skr_barred(caller) {
                    self.respond(now, &key, &request, 403, reason, &[]);
                    return None;
                }
                if home.0 == me {
                    self.home_talker_request(now, key, request, caller, gdn, true);
                } else {
                    self.local_setup(now, key, request, caller, gdn, home);
                }
                None
            }
            (false, Some("group-home")) if home.0 == me => {
                if !is_member {
                    self.respond(now, &key, &request, 403, "Forbidden (not a member of the group)", &[]);
                    return None;
                }
                self.home_talker_request(now, key, request, caller, gdn, false);
                None
            }
            (false, Some("group-member")) => {
                if self.network.tcf_at(self.current_source?).map(|tcf| tcf.name.clone()) != Some(home.0.clone()) {
                    self.respond(now, &key, &request, 403, "Forbidden (not the group's home)", &[]);
                    return None;
                }
                self.local_downlink(now, key, request, gdn, home);
                None
            }
            (false, Some("caller-home")) if home.0 == me => {
                self.home_talker_request(now, key, request, caller, gdn, false);
                None
            }
            _ => Some(request),
        }
    }

    // ---- home ------------------------------------------------------------------------------

    /// A floor request at the home: the set-up INVITE (which also asks for the floor), a
    /// member TCF's talker session INVITE, or a terminal served here calling the group.
    fn home_talker_request(
        &mut self,
        now: Now,
        key: TransactionKey,
        request: Message,
        caller: &Number,
        gdn: &Number,
        terminal: bool,
    ) {
        let offer = match offer_of(&request) {
            Ok(offer) => offer,
            Err((status, reason)) => {
                self.respond(now, &key, &request, status, reason, &[]);
                return;
            }
        };
        let mut new_call = false;
        if !self.groups.homes.contains_key(gdn) {
            let codec = match self.group_codec(&offer) {
                Ok(codec) => codec,
                Err((status, reason)) => {
                    self.respond(now, &key, &request, status, reason, &[]);
                    return;
                }
            };
            let bridge = match self.group_bridge(&codec) {
                Ok(bridge) => bridge,
                Err((status, reason)) => {
                    self.respond(now, &key, &request, status, reason, &[]);
                    return;
                }
            };
            let priority = self.subscribers.group(gdn).map_or(1, |group| group.priority);
            let floor = Floor::new(self.floor_config(), now.instant);
            self.groups.homes.insert(
                gdn.clone(),
                Home {
                    gdn: gdn.clone(),
                    bridge,
                    codec,
                    floor,
                    initiator: caller.clone(),
                    priority,
                    talkers: NetMap::default(),
                    downlinks: NetMap::default(),
                    members: NetMap::default(),
                    left: Vec::new(),
                    pids: NetMap::default(),
                    users: NetMap::default(),
                    next_pid: 1,
                },
            );
            new_call = true;
        }
        let Some((bridge, codec)) = self.groups.homes.get(gdn).map(|home| (home.bridge, home.codec.clone())) else {
            return;
        };
        self.respond(now, &key, &request, 100, "Trying", &[]);
        let direction = if terminal {
            Direction::SendRecv
        } else {
            Direction::RecvOnly
        };
        // A talker session from a member TCF: its voice must not go back down the downlink to
        // that TCF (which fans it out locally itself). The TCF serving the talker is known from
        // its location, else it is the one the session came from.
        let peer = if terminal {
            0
        } else {
            self.location(caller)
                .map(|location| location.serving.clone())
                .or_else(|| {
                    self.current_source
                        .and_then(|source| self.network.tcf_at(source))
                        .map(|tcf| tcf.name.clone())
                })
                .filter(|name| *name != self.config.name)
                .map_or(0, |name| peer_tag(&name))
        };
        let (leg, body) = match self.group_answer(bridge, &codec, &offer, direction, terminal, peer) {
            Ok(answered) => answered,
            Err((status, reason)) => {
                self.respond(now, &key, &request, status, reason, &[]);
                if new_call {
                    self.release_home(now, gdn, "set-up failed");
                }
                return;
            }
        };
        let Some(awaiting) = self.awaiting(&key, &request, true) else {
            return;
        };
        let contact = format!("<sip:{gdn}@{}>", self.address);
        let destination = if terminal {
            awaiting.source
        } else {
            self.network
                .tcf_at(awaiting.source)
                .map_or(awaiting.source, |tcf| tcf.sip)
        };
        // The floor decides.
        let requester = self.requester(gdn, caller);
        let pid = requester.id;
        let Some(home) = self.groups.homes.get_mut(gdn) else {
            return;
        };
        let outcome = home.floor.request(requester, now.instant);
        let (status, reason, ext) = match outcome {
            RequestOutcome::Granted => (200, "OK", "pttaccept".to_owned()),
            RequestOutcome::Queued { position } => (200, "OK", format!("pttwaiting;position={position}")),
            RequestOutcome::Rejected => (480, "Temporarily Unavailable (floor busy)", String::new()),
        };
        if status != 200 {
            self.media.remove_leg(leg.id);
            self.group_reply(now, &awaiting, status, reason, None, None, None);
            if new_call {
                self.release_home(now, gdn, "set-up rejected");
            }
            return;
        }
        let response = self.group_reply(now, &awaiting, status, reason, Some(&contact), Some(ext), Some(body));
        let dialog = response.and_then(|response| {
            let tag = awaiting.tag.clone()?;
            let mut dialog = Dialog::uas(&request, &tag, &contact).ok()?;
            let _ = dialog.confirm(&response);
            Some(dialog)
        });
        let slot = if terminal {
            Slot::HomeMember {
                gdn: gdn.clone(),
                user: caller.clone(),
            }
        } else {
            Slot::HomeTalker {
                gdn: gdn.clone(),
                user: caller.clone(),
            }
        };
        if let Some(dialog) = &dialog {
            self.groups.by_dialog.insert(dialog.id().clone(), slot);
        }
        if let Some(home) = self.groups.homes.get_mut(gdn) {
            if terminal {
                home.members.insert(
                    caller.clone(),
                    Member {
                        dialog,
                        destination,
                        leg,
                        invite: None,
                        contact,
                        awaiting: None,
                    },
                );
            } else {
                if let Some(old) = home.talkers.remove(caller) {
                    self.media.remove_leg(old.leg.id);
                }
                home.talkers.insert(
                    caller.clone(),
                    HomeTalker {
                        dialog,
                        destination,
                        leg,
                    },
                );
            }
        }
        let _ = pid;
        self.floor_actions(now, gdn);
        if new_call {
            self.groups.set_up_total += 1;
            self.event(TcfEvent::GroupCallStarted {
                group: gdn.clone(),
                initiator: caller.clone(),
            });
            self.invite_members(now, gdn);
        }
    }

    fn requester(&mut self, gdn: &Number, user: &Number) -> Requester {
        let (priority, dispatcher) = self.subscribers.user(user).map_or((1, false), |user| {
            (
                user.priority,
                user.kind == crate::control::provisioning::UserKind::Dispatcher,
            )
        });
        let id = match self.groups.homes.get_mut(gdn) {
            Some(home) => match home.pids.get(user) {
                Some(&pid) => pid,
                None => {
                    let pid = ParticipantId(home.next_pid);
                    home.next_pid += 1;
                    home.pids.insert(user.clone(), pid);
                    home.users.insert(pid, user.clone());
                    pid
                }
            },
            None => ParticipantId(0),
        };
        Requester {
            id,
            number: user.clone(),
            priority,
            dispatcher,
        }
    }

    /// Sends the call to every member TCF (one downlink each), every DC (one each) and every
    /// member served here that is not in it yet (F-GRP-03; also late entry, F-GRP-07).
    fn invite_members(&mut self, now: Now, gdn: &Number) {
        let Some(group) = self.subscribers.group(gdn) else {
            return;
        };
        let me = self.config.name.clone();
        let mut tcfs: Vec<String> = Vec::new();
        let mut dcs: Vec<(Number, String)> = Vec::new();
        let mut here: Vec<Number> = Vec::new();
        // The effective members (provisioned ± regrouping, F-RGP-02), then the dispatchers.
        let members = self.regroups.members(&self.subscribers, gdn);
        for user in members.chain(group.dispatchers.iter()) {
            let Some(location) = self.locations.get(user) else {
                continue;
            };
            let serving = location.serving.clone();
            if serving == me {
                here.push(user.clone());
            } else if group.dispatchers.contains(user) {
                dcs.push((user.clone(), serving));
            } else if !tcfs.contains(&serving) {
                tcfs.push(serving);
            }
        }
        // DCs monitoring the group (F-MON-01): listeners, reached like its dispatchers.
        for (dc, serving) in self.group_monitors(gdn) {
            if serving == me {
                if !here.contains(&dc) {
                    here.push(dc);
                }
            } else if !dcs.iter().any(|(known, _)| *known == dc) {
                dcs.push((dc, serving));
            }
        }
        for tcf in tcfs {
            if self
                .groups
                .homes
                .get(gdn)
                .is_some_and(|home| home.downlinks.contains_key(&tcf))
            {
                continue;
            }
            self.send_downlink(now, gdn, &tcf, None);
        }
        for (dc, serving) in dcs {
            let target = format!("dc:{dc}");
            if self
                .groups
                .homes
                .get(gdn)
                .is_some_and(|home| home.downlinks.contains_key(&target) || home.left.contains(&dc))
            {
                continue;
            }
            self.send_downlink(now, gdn, &serving, Some(dc));
        }
        for user in here {
            if self
                .groups
                .homes
                .get(gdn)
                .is_some_and(|home| home.members.contains_key(&user))
            {
                continue;
            }
            self.invite_member(now, gdn, &user, true);
        }
    }

    fn send_downlink(&mut self, now: Now, gdn: &Number, tcf: &str, dc: Option<Number>) {
        if self.peer_is_down(tcf) {
            return;
        }
        let Some(address) = self.network.tcf(tcf).map(|tcf| tcf.sip) else {
            return;
        };
        let Some(home) = self.groups.homes.get(gdn) else { return };
        let (bridge, codec, initiator, priority) =
            (home.bridge, home.codec.clone(), home.initiator.clone(), home.priority);
        // A member TCF's downlink gets nothing that came from that TCF; a DC's is its own.
        let peer = if dc.is_none() { peer_tag(tcf) } else { 0 };
        let Some((leg, offer)) = self.group_offer(bridge, &codec, Direction::SendOnly, true, peer) else {
            return;
        };
        let (uri_user, target, extension) = match &dc {
            Some(dc) => (
                dc.clone(),
                format!("dc:{dc}"),
                format!(
                    "pttcall;calltype=4;priority={priority};GDN={gdn};callerUDN={initiator};calleeUDN={dc};stage=callee-serving"
                ),
            ),
            None => (
                gdn.clone(),
                tcf.to_owned(),
                format!("pttcall;calltype=4;priority={priority};GDN={gdn};callerUDN={initiator};stage=group-member"),
            ),
        };
        let slot = Slot::HomeDownlink {
            gdn: gdn.clone(),
            target: target.clone(),
        };
        let uri = format!("sip:{uri_user}@{address}");
        let sent = self.group_invite_out(now, &uri, &format!("<{uri}>"), gdn, &extension, &offer, address, slot);
        let Some((client, invite)) = sent else {
            self.media.remove_leg(leg.id);
            return;
        };
        if let Some(home) = self.groups.homes.get_mut(gdn) {
            home.downlinks.insert(
                target,
                Downlink {
                    dc,
                    client,
                    peer: tcf.to_owned(),
                    destination: address,
                    leg,
                    invite,
                    offer,
                    dialog: None,
                },
            );
        }
    }

    /// Sends the group call to a terminal or DC this node serves (home or member TCF side).
    fn invite_member(&mut self, now: Now, gdn: &Number, user: &Number, at_home: bool) {
        // A stunned (or killed) member receives no group call (F-SKR decision); revived, it
        // joins the calls still running ([`Tcf::invite_to_running_group_calls`]).
        if self.skr_barred(user).is_some() {
            return;
        }
        // One who hung up stays out (F-GRP-05).
        let left = if at_home {
            self.groups.homes.get(gdn).is_some_and(|home| home.left.contains(user))
        } else {
            self.groups
                .locals
                .get(gdn)
                .is_some_and(|local| local.left.contains(user))
        };
        if left {
            return;
        }
        let Some(binding) = self.bindings.get(user).cloned() else {
            return;
        };
        let (bridge, codec, initiator, priority) = if at_home {
            match self.groups.homes.get(gdn) {
                Some(home) => (
                    home.bridge,
                    home.codec.clone(),
                    home.initiator.to_string(),
                    home.priority,
                ),
                None => return,
            }
        } else {
            match self.groups.locals.get(gdn) {
                Some(local) => (
                    local.bridge,
                    local.codec.clone(),
                    local.initiator.as_ref().map(|n| n.to_string()).unwrap_or_default(),
                    local.priority,
                ),
                None => return,
            }
        };
        let Some((leg, offer)) = self.group_offer(bridge, &codec, Direction::SendRecv, true, 0) else {
            return;
        };
        let mode = match self.subscribers.user(user).map(|user| user.answer) {
            Some(AnswerMode::Direct) => "direct",
            _ => "hook",
        };
        let extension = format!(
            "pttcall;calltype=4;priority={priority};GDN={gdn};callerUDN={initiator};calleeUDN={user};answermode={mode}"
        );
        let uri = binding.contact.trim_matches(|c| c == '<' || c == '>').to_owned();
        let slot = if at_home {
            Slot::HomeMember {
                gdn: gdn.clone(),
                user: user.clone(),
            }
        } else {
            Slot::LocalMember {
                gdn: gdn.clone(),
                user: user.clone(),
            }
        };
        let Some((key, invite)) = self.group_invite_out(
            now,
            &uri,
            &format!("<{uri}>"),
            gdn,
            &extension,
            &offer,
            binding.address,
            slot,
        ) else {
            self.media.remove_leg(leg.id);
            return;
        };
        let member = Member {
            dialog: None,
            destination: binding.address,
            leg,
            invite: Some((key, invite, offer)),
            contact: format!("<sip:{gdn}@{}>", self.address),
            awaiting: None,
        };
        let members = if at_home {
            self.groups.homes.get_mut(gdn).map(|home| &mut home.members)
        } else {
            self.groups.locals.get_mut(gdn).map(|local| &mut local.members)
        };
        if let Some(members) = members {
            members.insert(user.clone(), member);
        }
    }

    /// Carries out what the floor decided (F-FLR-01 … F-FLR-10).
    fn floor_actions(&mut self, now: Now, gdn: &Number) {
        loop {
            let Some(home) = self.groups.homes.get_mut(gdn) else {
                return;
            };
            let Some(action) = home.floor.poll_action() else { return };
            match action {
                FloorAction::Granted { id, from_queue } => {
                    let Some(user) = home.users.get(&id).cloned() else {
                        continue;
                    };
                    let Some(path) = self.path_of(gdn, &user) else { continue };
                    let leg = self.source_leg(gdn, &user, &path);
                    if let Some(home) = self.groups.homes.get(gdn) {
                        let _ = self.media.set_source(home.bridge, leg);
                    }
                    if from_queue {
                        // F-FLR-04: the grant goes in the request's own session.
                        self.tell_participant(now, gdn, &user, &path, "pttaccept".to_owned(), true);
                    }
                }
                FloorAction::Revoked { holder, reason } => {
                    let Some(user) = home.users.get(&holder).cloned() else {
                        continue;
                    };
                    let bridge = home.bridge;
                    let _ = self.media.set_source(bridge, None);
                    let cause = match reason {
                        RevokeReason::MaxTalkTime => "maxtalktime",
                        RevokeReason::Inactivity => "inactivity",
                        RevokeReason::Preempted => "preempted",
                        RevokeReason::ForcedInsertion => "insertion",
                        RevokeReason::Ordered => "ordered",
                    };
                    self.event(TcfEvent::FloorRevoked {
                        group: gdn.clone(),
                        user: user.clone(),
                        reason: cause.to_owned(),
                    });
                    self.take_floor_away(now, gdn, &user, cause);
                }
                FloorAction::Dequeued { id, .. } => {
                    let Some(user) = home.users.get(&id).cloned() else {
                        continue;
                    };
                    self.take_floor_away(now, gdn, &user, "queuefull");
                }
                FloorAction::QueuePosition { id, position } => {
                    let Some(user) = home.users.get(&id).cloned() else {
                        continue;
                    };
                    let Some(path) = self.path_of(gdn, &user) else { continue };
                    self.tell_participant(now, gdn, &user, &path, format!("pttwaiting;position={position}"), false);
                }
                FloorAction::Notify { talker } => {
                    let udn = talker.as_ref().map_or("idle".to_owned(), |talker| talker.to_string());
                    self.event(TcfEvent::FloorChanged {
                        group: gdn.clone(),
                        talker: talker.clone(),
                    });
                    self.notify_all(now, gdn, &format!("pttinfo;UDN={udn}"));
                }
                FloorAction::HangTimeExpired => {
                    self.release_home(now, gdn, "hang time");
                    return;
                }
            }
        }
    }

    fn path_of(&self, gdn: &Number, user: &Number) -> Option<Path> {
        let home = self.groups.homes.get(gdn)?;
        if home.talkers.contains_key(user) {
            Some(Path::Talker)
        } else if home.members.contains_key(user) {
            Some(Path::Member)
        } else {
            let target = format!("dc:{user}");
            home.downlinks.contains_key(&target).then_some(Path::Dc(target))
        }
    }

    fn source_leg(&self, gdn: &Number, user: &Number, path: &Path) -> Option<crate::media::api::LegId> {
        let home = self.groups.homes.get(gdn)?;
        match path {
            Path::Talker => home.talkers.get(user).map(|talker| talker.leg.id),
            Path::Member => home.members.get(user).map(|member| member.leg.id),
            Path::Dc(target) => home.downlinks.get(target).map(|downlink| downlink.leg.id),
        }
    }

    /// Sends `pttaccept` / `pttreleasefloor` (in-dialog INVITE) or `pttwaiting` (INFO) to a
    /// participant, whatever its path.
    fn tell_participant(
        &mut self,
        now: Now,
        gdn: &Number,
        user: &Number,
        path: &Path,
        extension: String,
        invite: bool,
    ) {
        let slot = match path {
            Path::Talker => Slot::HomeTalker {
                gdn: gdn.clone(),
                user: user.clone(),
            },
            Path::Member => Slot::HomeMember {
                gdn: gdn.clone(),
                user: user.clone(),
            },
            Path::Dc(target) => Slot::HomeDownlink {
                gdn: gdn.clone(),
                target: target.clone(),
            },
        };
        if invite {
            let body = self.slot_offer(&slot);
            self.group_request(now, &slot, Method::Invite, Some(extension), body);
        } else {
            self.group_request(now, &slot, Method::Info, Some(extension), None);
        }
    }

    /// The SDP we offer again in an in-dialog INVITE on a slot (our leg, unchanged).
    fn slot_offer(&self, slot: &Slot) -> Option<Bytes> {
        let (leg, codec) = self.slot_leg(slot)?;
        let preferences = Self::group_preferences(Some(&codec));
        let mut local = sdp::LocalMedia::new(leg.local_rtp.ip(), leg.local_rtp.port(), &preferences);
        local.rtcp_port = leg.local_rtcp.port();
        Some(Bytes::from(sdp::offer(&local).to_bytes()))
    }

    /// A slot's leg and the group's codec.
    fn slot_leg(&self, slot: &Slot) -> Option<(LegInfo, Format)> {
        let home = |gdn: &Number| self.groups.homes.get(gdn);
        let local = |gdn: &Number| self.groups.locals.get(gdn);
        Some(match slot {
            Slot::HomeTalker { gdn, user } => (home(gdn)?.talkers.get(user)?.leg, home(gdn)?.codec.clone()),
            Slot::HomeDownlink { gdn, target } => (home(gdn)?.downlinks.get(target)?.leg, home(gdn)?.codec.clone()),
            Slot::HomeMember { gdn, user } => (home(gdn)?.members.get(user)?.leg, home(gdn)?.codec.clone()),
            Slot::LocalDownlink { gdn } => (local(gdn)?.downlink.as_ref()?.1, local(gdn)?.codec.clone()),
            Slot::LocalMember { gdn, user } => (local(gdn)?.members.get(user)?.leg, local(gdn)?.codec.clone()),
            Slot::LocalTalker { gdn, user } => (local(gdn)?.talkers.get(user)?.leg, local(gdn)?.codec.clone()),
        })
    }

    /// The answer to an in-dialog INVITE's offer on a slot (our leg, the group's codec).
    fn slot_answer(&self, slot: &Slot, request: &Message) -> Option<Bytes> {
        if !is_sdp(request) {
            return self.slot_offer(slot);
        }
        let (leg, codec) = self.slot_leg(slot)?;
        let offer = sdp::parse(request.body()).ok()?;
        self.group_answer_body(&leg, &codec, &offer, Direction::SendRecv).ok()
    }

    /// The floor was taken from `user` (revoked or dequeued): end its talker session (BYE,
    /// F-FLR-06), or tell a terminal/DC served through a D session (`pttreleasefloor`).
    fn take_floor_away(&mut self, now: Now, gdn: &Number, user: &Number, cause: &str) {
        let Some(path) = self.path_of(gdn, user) else { return };
        match path {
            Path::Talker => {
                let slot = Slot::HomeTalker {
                    gdn: gdn.clone(),
                    user: user.clone(),
                };
                self.group_request(
                    now,
                    &slot,
                    Method::Bye,
                    Some(format!("pttreleasefloor;cause={cause}")),
                    None,
                );
                self.drop_home_talker(gdn, user, None);
            }
            path => self.tell_participant(now, gdn, user, &path, format!("pttreleasefloor;cause={cause}"), true),
        }
    }

    /// Ends a talker session at the home; its leg goes at once, or after the release grace
    /// counted from `grace_from` (a voluntary release).
    fn drop_home_talker(&mut self, gdn: &Number, user: &Number, grace_from: Option<Now>) {
        let Some(home) = self.groups.homes.get_mut(gdn) else {
            return;
        };
        if let Some(talker) = home.talkers.remove(user) {
            if let Some(dialog) = &talker.dialog {
                self.groups.by_dialog.remove(dialog.id());
            }
            match grace_from {
                Some(now) => self
                    .groups
                    .deferred
                    .push((now.instant + RELEASE_GRACE, Deferred::RemoveLeg(talker.leg.id))),
                None => self.media.remove_leg(talker.leg.id),
            }
        }
    }

    /// INFO to every downlink and every member served here (F-FLR-07).
    fn notify_all(&mut self, now: Now, gdn: &Number, extension: &str) {
        let Some(home) = self.groups.homes.get(gdn) else { return };
        let mut slots: Vec<Slot> = home
            .downlinks
            .iter()
            .filter(|(_, downlink)| downlink.dialog.is_some())
            .map(|(target, _)| Slot::HomeDownlink {
                gdn: gdn.clone(),
                target: target.clone(),
            })
            .collect();
        slots.extend(
            home.members
                .iter()
                .filter(|(_, member)| member.dialog.is_some())
                .map(|(user, _)| Slot::HomeMember {
                    gdn: gdn.clone(),
                    user: user.clone(),
                }),
        );
        for slot in slots {
            self.group_request(now, &slot, Method::Info, Some(extension.to_owned()), None);
        }
    }

    /// Ends a group call at its home (F-GRP-06): BYE to every talker session, downlink and
    /// member; all media freed.
    fn release_home(&mut self, now: Now, gdn: &Number, reason: &str) {
        let Some(home) = self.groups.homes.get(gdn) else { return };
        let mut slots = Vec::new();
        for (user, talker) in &home.talkers {
            if talker.dialog.is_some() {
                slots.push(Slot::HomeTalker {
                    gdn: gdn.clone(),
                    user: user.clone(),
                });
            }
        }
        for (target, downlink) in &home.downlinks {
            if downlink.dialog.is_some() {
                slots.push(Slot::HomeDownlink {
                    gdn: gdn.clone(),
                    target: target.clone(),
                });
            }
        }
        for (user, member) in &home.members {
            if member.dialog.is_some() {
                slots.push(Slot::HomeMember {
                    gdn: gdn.clone(),
                    user: user.clone(),
                });
            }
        }
        // INVITEs still unanswered are cancelled; an answer that still comes is ACKed and
        // ended with BYE (`creating_response`).
        let pending: Vec<(TransactionKey, Message)> = home
            .downlinks
            .values()
            .filter(|downlink| downlink.dialog.is_none())
            .map(|downlink| (downlink.client.clone(), downlink.invite.clone()))
            .chain(
                home.members
                    .values()
                    .filter_map(|member| member.invite.clone().map(|(key, invite, _)| (key, invite))),
            )
            .collect();
        for slot in &slots {
            self.group_request(now, slot, Method::Bye, Some("pttrelease;cause=64".to_owned()), None);
        }
        for (key, invite) in pending {
            self.group_cancel(now, &key, &invite);
        }
        let Some(home) = self.groups.homes.remove(gdn) else {
            return;
        };
        self.media.remove_bridge(home.bridge);
        self.groups.by_dialog.retain(|_, slot| !slot_of_home(slot, gdn));
        tracing::info!(group = %gdn, reason, "group call released");
        self.event(TcfEvent::GroupCallEnded {
            group: gdn.clone(),
            reason: reason.to_owned(),
        });
    }

    // ---- member TCF ------------------------------------------------------------------------

    fn local_group(
        &mut self,
        gdn: &Number,
        home: &(String, SocketAddr),
        offer: &Sdp,
    ) -> Result<(), (u16, &'static str)> {
        if self.groups.locals.contains_key(gdn) {
            return Ok(());
        }
        let codec = self.group_codec(offer)?;
        let bridge = self.group_bridge(&codec)?;
        let priority = self.subscribers.group(gdn).map_or(1, |group| group.priority);
        self.groups.locals.insert(
            gdn.clone(),
            Local {
                bridge,
                codec,
                home: home.0.clone(),
                home_address: home.1,
                downlink: None,
                downlink_confirmed: false,
                members: NetMap::default(),
                left: Vec::new(),
                talkers: NetMap::default(),
                initiator: None,
                priority,
                talker: "idle".to_owned(),
            },
        );
        Ok(())
    }

    /// A new leg of this node's part of a group call for the offer in `request` (the local
    /// bridge is created with the offer's codec when it does not exist yet), and our answer.
    fn local_leg(
        &mut self,
        gdn: &Number,
        home: &(String, SocketAddr),
        request: &Message,
        direction: Direction,
        fanout: bool,
        peer: u32,
    ) -> Result<(LegInfo, Bytes), (u16, &'static str)> {
        let offer = offer_of(request)?;
        self.local_group(gdn, home, &offer)?;
        let (bridge, codec) = self
            .groups
            .locals
            .get(gdn)
            .map(|local| (local.bridge, local.codec.clone()))
            .ok_or((500, "Server Internal Error"))?;
        self.group_answer(bridge, &codec, &offer, direction, fanout, peer)
    }

    /// A terminal here calls a group homed elsewhere (F-GRP-01): its leg joins the local
    /// bridge and a talker session (which also asks for the floor) goes to the group home.
    fn local_setup(
        &mut self,
        now: Now,
        key: TransactionKey,
        request: Message,
        caller: &Number,
        gdn: &Number,
        home: (String, SocketAddr),
    ) {
        if self.peer_is_down(&home.0) {
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
        let (leg, _) = match self.local_leg(gdn, &home, &request, Direction::SendRecv, true, 0) {
            Ok(answered) => answered,
            Err((status, reason)) => {
                self.respond(now, &key, &request, status, reason, &[]);
                return;
            }
        };
        self.respond(now, &key, &request, 100, "Trying", &[]);
        let Some(mut awaiting) = self.awaiting(&key, &request, true) else {
            return;
        };
        awaiting.tag = Some(self.token());
        let contact = format!("<sip:{gdn}@{}>", self.address);
        if let Some(local) = self.groups.locals.get_mut(gdn) {
            local.initiator.get_or_insert_with(|| caller.clone());
            local.members.insert(
                caller.clone(),
                Member {
                    dialog: None,
                    destination: awaiting.source,
                    leg,
                    invite: None,
                    contact,
                    awaiting: Some(awaiting),
                },
            );
        }
        // The set-up goes through the caller's home when that is another node (F-GRP-01).
        let caller_home = self.network.home_of_user(caller).map(|tcf| (tcf.name.clone(), tcf.sip));
        let (destination, stage) = match caller_home {
            Some((name, address)) if name != self.config.name && name != home.0 => (address, "caller-home"),
            _ => (home.1, "group-home"),
        };
        self.send_talker_invite(now, gdn, caller, destination, stage, "pttcall;calltype=4");
    }

    /// A talker session INVITE from here to the home (set-up or floor request).
    fn send_talker_invite(
        &mut self,
        now: Now,
        gdn: &Number,
        user: &Number,
        destination: SocketAddr,
        stage: &str,
        token: &str,
    ) {
        let Some((bridge, codec)) = self
            .groups
            .locals
            .get(gdn)
            .map(|local| (local.bridge, local.codec.clone()))
        else {
            return;
        };
        // The network side of this node's part of the call (the downlink and the talker
        // sessions): what comes down the downlink never goes back up.
        let peer = self.groups.locals.get(gdn).map_or(0, |local| peer_tag(&local.home));
        let Some((leg, offer)) = self.group_offer(bridge, &codec, Direction::SendOnly, false, peer) else {
            return;
        };
        let priority = self.subscribers.user(user).map_or(1, |user| user.priority);
        let extension = format!("{token};priority={priority};GDN={gdn};callerUDN={user};UDN={user};stage={stage}");
        let uri = format!("sip:{gdn}@{destination}");
        let slot = Slot::LocalTalker {
            gdn: gdn.clone(),
            user: user.clone(),
        };
        let Some((_, invite)) = self.group_invite_out(
            now,
            &uri,
            &format!("<{uri}>"),
            user,
            &extension,
            &offer,
            destination,
            slot,
        ) else {
            self.media.remove_leg(leg.id);
            return;
        };
        if let Some(local) = self.groups.locals.get_mut(gdn) {
            local.talkers.insert(
                user.clone(),
                LocalTalker {
                    invite,
                    offer,
                    dialog: None,
                    leg,
                    spec: None,
                    granted: false,
                    releasing: None,
                },
            );
        }
    }

    /// The home's downlink INVITE arrives (F-GRP-04): join it to the local bridge as the
    /// source, answer, and deliver the call to the local members.
    fn local_downlink(
        &mut self,
        now: Now,
        key: TransactionKey,
        request: Message,
        gdn: &Number,
        home: (String, SocketAddr),
    ) {
        let peer = peer_tag(&home.0);
        let (leg, body) = match self.local_leg(gdn, &home, &request, Direction::RecvOnly, false, peer) {
            Ok(answered) => answered,
            Err((status, reason)) => {
                self.respond(now, &key, &request, status, reason, &[]);
                return;
            }
        };
        let Some(awaiting) = self.awaiting(&key, &request, true) else {
            return;
        };
        let contact = format!("<sip:{gdn}@{}>", self.address);
        let Some(response) = self.group_reply(now, &awaiting, 200, "OK", Some(&contact), None, Some(body)) else {
            return;
        };
        let Some(tag) = awaiting.tag.clone() else { return };
        let Ok(mut dialog) = Dialog::uas(&request, &tag, &contact) else {
            return;
        };
        let _ = dialog.confirm(&response);
        self.groups
            .by_dialog
            .insert(dialog.id().clone(), Slot::LocalDownlink { gdn: gdn.clone() });
        let initiator = extension(&request)
            .and_then(|(_, params)| params.get("callerudn").cloned())
            .and_then(|number| Number::parse(&number).ok());
        let holder_here = self
            .groups
            .locals
            .get(gdn)
            .and_then(|local| local.talkers.iter().find(|(_, talker)| talker.granted))
            .map(|(user, _)| user.clone());
        if let Some(local) = self.groups.locals.get_mut(gdn) {
            if let Some((old, old_leg)) = local.downlink.replace((dialog, leg)) {
                self.groups.by_dialog.remove(old.id());
                self.media.remove_leg(old_leg.id);
            }
            if local.initiator.is_none() {
                local.initiator = initiator;
            }
            if holder_here.is_none() {
                let _ = self.media.set_source(local.bridge, Some(leg.id));
            }
            // The local members are invited when the home's ACK confirms the downlink
            // (`group_ack_received`); a replaced downlink keeps the call going meanwhile.
        }
    }

    /// Invites every member of the group bound here that is not in the call yet.
    /// Invites `user`, served here, into the running calls of its groups it is not in (it was
    /// revived after they started): at their home when that is this node, else as a local
    /// member of the call this node relays.
    pub(super) fn invite_to_running_group_calls(&mut self, now: Now, user: &Number) {
        if !self.bindings.contains_key(user) {
            return;
        }
        let member_of =
            |tcf: &Tcf, gdn: &Number| tcf.regroups.members(&tcf.subscribers, gdn).any(|member| member == user);
        let at_home: Vec<Number> = self
            .groups
            .homes
            .iter()
            .filter(|(gdn, home)| !home.members.contains_key(user) && member_of(self, gdn))
            .map(|(gdn, _)| gdn.clone())
            .collect();
        let relayed: Vec<Number> = self
            .groups
            .locals
            .iter()
            .filter(|(gdn, local)| {
                local.downlink.is_some() && !local.members.contains_key(user) && member_of(self, gdn)
            })
            .map(|(gdn, _)| gdn.clone())
            .collect();
        for gdn in at_home {
            self.invite_member(now, &gdn, user, true);
        }
        for gdn in relayed {
            self.invite_member(now, &gdn, user, false);
        }
    }

    fn deliver_locally(&mut self, now: Now, gdn: &Number) {
        // The effective members (provisioned ± regrouping, F-RGP-02).
        let missing: Vec<Number> = self
            .regroups
            .members(&self.subscribers, gdn)
            .filter(|user| self.bindings.contains_key(*user))
            .filter(|user| {
                self.groups
                    .locals
                    .get(gdn)
                    .is_some_and(|local| !local.members.contains_key(*user))
            })
            .cloned()
            .collect();
        for user in missing {
            self.invite_member(now, gdn, &user, false);
        }
    }

    /// Sets the local bridge's source: the holder's leg when it is a member here, else the
    /// downlink from the home.
    fn local_source(&mut self, gdn: &Number) {
        let Some(local) = self.groups.locals.get(gdn) else {
            return;
        };
        // A member that has just released is not the source any more, but the engine hands
        // over (RELEASE_GRACE): its last packets, perhaps still queued behind the release, go
        // out until the next talker's first packet comes down the downlink.
        let holder = local
            .talkers
            .iter()
            .find(|(_, talker)| talker.granted)
            .map(|(user, _)| user);
        let leg = match holder {
            Some(user) => local.members.get(user).map(|member| member.leg.id),
            None => local.downlink.as_ref().map(|(_, leg)| leg.id),
        };
        let bridge = local.bridge;
        let _ = self.media.set_source(bridge, leg);
    }

    /// Releases a group call at a member TCF: BYE to every member and talker session.
    fn release_local(&mut self, now: Now, gdn: &Number, reason: &str) {
        let Some(local) = self.groups.locals.get(gdn) else {
            return;
        };
        let mut slots: Vec<Slot> = local
            .members
            .iter()
            .filter(|(_, member)| member.dialog.is_some())
            .map(|(user, _)| Slot::LocalMember {
                gdn: gdn.clone(),
                user: user.clone(),
            })
            .collect();
        slots.extend(
            local
                .talkers
                .iter()
                .filter(|(_, talker)| talker.dialog.is_some())
                .map(|(user, _)| Slot::LocalTalker {
                    gdn: gdn.clone(),
                    user: user.clone(),
                }),
        );
        // Members whose requests wait for the home get an answer.
        let awaiting: Vec<Awaiting> = local
            .members
            .values()
            .filter_map(|member| member.awaiting.clone())
            .collect();
        for slot in &slots {
            self.group_request(now, slot, Method::Bye, Some("pttrelease;cause=64".to_owned()), None);
        }
        for awaiting in awaiting {
            self.group_reply(
                now,
                &awaiting,
                480,
                "Temporarily Unavailable (group call ended)",
                None,
                None,
                None,
            );
        }
        let Some(local) = self.groups.locals.remove(gdn) else {
            return;
        };
        self.media.remove_bridge(local.bridge);
        self.groups.by_dialog.retain(|_, slot| !slot_of_local(slot, gdn));
        tracing::info!(group = %gdn, reason, "group call released here");
        self.event(TcfEvent::GroupCallEnded {
            group: gdn.clone(),
            reason: reason.to_owned(),
        });
    }

    // ---- in-dialog requests -----------------------------------------------------------------

    /// A request in a group dialog; gives it back when it is in none.
    pub(super) fn group_in_dialog(&mut self, now: Now, key: TransactionKey, request: Message) -> Option<Message> {
        let Some(id) = DialogId::of_received(&request) else {
            return Some(request);
        };
        let Some(slot) = self.groups.by_dialog.get(&id).cloned() else {
            return Some(request);
        };
        if let Some((dialog, _)) = self.group_dialog(&slot) {
            if let Err(error) = dialog.check_request(&request) {
                let (status, reason) = error.status().unwrap_or((481, "Call/Transaction Does Not Exist"));
                self.respond(now, &key, &request, status, reason, &[]);
                return None;
            }
        }
        let method = request
            .method()
            .map(|method| method.as_str().to_owned())
            .unwrap_or_default();
        let (token, params) = extension(&request).unwrap_or_default();
        // A stunned member takes no floor (F-SKR decision, at its serving TCF).
        if let (Slot::HomeMember { user, .. } | Slot::LocalMember { user, .. }, "INVITE", "pttrequest" | "pttinsert") =
            (&slot, method.as_str(), token.as_str())
        {
            if let Some(reason) = self.skr_barred(user) {
                self.respond(now, &key, &request, 403, reason, &[]);
                return None;
            }
        }
        // A DC that only monitors the group listens (F-MON-01 decision, at the home).
        if let ("INVITE", "pttrequest" | "pttinsert") = (method.as_str(), token.as_str()) {
            if let Some((gdn, user)) = home_participant(&slot) {
                if self.listener_only(&gdn, &user) {
                    self.respond(now, &key, &request, 403, "Forbidden (monitoring only)", &[]);
                    return None;
                }
            }
        }
        match (slot, method.as_str()) {
            (slot, "BYE") => {
                self.respond(now, &key, &request, 200, "OK", &[]);
                self.group_bye(now, slot);
            }
            (Slot::HomeMember { gdn, user }, "INVITE") => {
                self.home_member_floor(now, key, request, &gdn, &user, &token, Path::Member);
            }
            (Slot::HomeDownlink { gdn, target }, "INVITE") => {
                let user = target.strip_prefix("dc:").and_then(|user| Number::parse(user).ok());
                match user {
                    Some(user) => self.home_member_floor(now, key, request, &gdn, &user, &token, Path::Dc(target)),
                    None => self.respond(now, &key, &request, 200, "OK", &[]),
                }
            }
            (Slot::HomeTalker { gdn, user }, "INVITE") => {
                // A talker session re-INVITE: a repeated request or a release.
                if token == "pttreleasefloor" {
                    self.home_release(now, &gdn, &user);
                }
                let body = self.slot_answer(
                    &Slot::HomeTalker {
                        gdn: gdn.clone(),
                        user: user.clone(),
                    },
                    &request,
                );
                self.respond_in_dialog(now, &key, &request, 200, "OK", None, body);
            }
            (Slot::HomeDownlink { gdn, .. } | Slot::HomeTalker { gdn, .. }, "MESSAGE") if token == "pttrelease" => {
                self.respond(now, &key, &request, 200, "OK", &[]);
                let user = params.get("udn").and_then(|user| Number::parse(user).ok());
                if let Some(user) = user {
                    self.hang_up_report(now, &gdn, &user);
                }
            }
            (Slot::HomeDownlink { gdn, target }, "MESSAGE") if token == "pttdismantle" => {
                let dc = target.strip_prefix("dc:").and_then(|dc| Number::parse(dc).ok());
                self.dismantle(now, key, request, &gdn, dc, params.get("udn").cloned());
            }
            (Slot::LocalMember { .. } | Slot::LocalTalker { .. } | Slot::HomeTalker { .. }, "MESSAGE")
                if token == "pttdismantle" =>
            {
                // DCs reach the home in sessions of their own; a member's session cannot order.
                self.respond(
                    now,
                    &key,
                    &request,
                    403,
                    "Forbidden (only a dispatcher of the group)",
                    &[],
                );
            }
            (Slot::HomeMember { gdn, user }, "MESSAGE") if token == "pttdismantle" => {
                self.dismantle(now, key, request, &gdn, Some(user), params.get("udn").cloned());
            }
            (Slot::LocalDownlink { gdn }, "INFO") => {
                self.respond(now, &key, &request, 200, "OK", &[]);
                if token == "pttinfo" {
                    self.local_notify(now, &gdn, params.get("udn").cloned().unwrap_or_default());
                }
            }
            (Slot::LocalMember { gdn, user }, "INVITE") => {
                self.local_member_floor(now, key, request, &gdn, &user, &token);
            }
            (Slot::LocalTalker { gdn, user }, "INVITE") => {
                // The home grants a queued request (F-FLR-04) or repeats a decision.
                let body = self.slot_answer(
                    &Slot::LocalTalker {
                        gdn: gdn.clone(),
                        user: user.clone(),
                    },
                    &request,
                );
                self.respond_in_dialog(now, &key, &request, 200, "OK", None, body);
                if token == "pttaccept" {
                    self.local_granted(now, &gdn, &user, true);
                }
            }
            (Slot::LocalTalker { gdn, user }, "INFO") => {
                self.respond(now, &key, &request, 200, "OK", &[]);
                if token == "pttwaiting" {
                    let slot = Slot::LocalMember { gdn, user };
                    let position = params.get("position").cloned().unwrap_or_default();
                    self.group_request(
                        now,
                        &slot,
                        Method::Info,
                        Some(format!("pttwaiting;position={position}")),
                        None,
                    );
                }
            }
            (_, "INFO" | "MESSAGE" | "OPTIONS") => self.respond(now, &key, &request, 200, "OK", &[]),
            _ => self.respond(now, &key, &request, 501, "Not Implemented", &[("Allow", ALLOW)]),
        }
        None
    }

    #[allow(clippy::too_many_arguments)]
    fn respond_in_dialog(
        &mut self,
        now: Now,
        key: &TransactionKey,
        request: &Message,
        status: u16,
        reason: &str,
        extension: Option<String>,
        body: Option<Bytes>,
    ) {
        let Some(awaiting) = self.awaiting(key, request, false) else {
            return;
        };
        // The same Contact as the dialog's other messages: the group number at this node.
        let contact = match request_user(request) {
            Some(user) => format!("<sip:{user}@{}>", self.address),
            None => format!("<sip:{}>", self.address),
        };
        self.group_reply(now, &awaiting, status, reason, Some(&contact), extension, body);
    }

    /// A floor request or release by a member or DC in its D session at the home
    /// (F-FLR-11 at the home itself; DCs' re-INVITEs reach it through their serving TCF).
    #[allow(clippy::too_many_arguments)]
    fn home_member_floor(
        &mut self,
        now: Now,
        key: TransactionKey,
        request: Message,
        gdn: &Number,
        user: &Number,
        token: &str,
        path: Path,
    ) {
        let slot = match &path {
            Path::Dc(target) => Slot::HomeDownlink {
                gdn: gdn.clone(),
                target: target.clone(),
            },
            _ => Slot::HomeMember {
                gdn: gdn.clone(),
                user: user.clone(),
            },
        };
        let body = self.slot_answer(&slot, &request);
        match token {
            "pttrequest" | "pttinsert" => {
                let requester = self.requester(gdn, user);
                let is_dc = requester.dispatcher;
                let Some(home) = self.groups.homes.get_mut(gdn) else {
                    return;
                };
                let outcome = if token == "pttinsert" && is_dc {
                    home.floor.insert(requester, now.instant);
                    RequestOutcome::Granted
                } else {
                    home.floor.request(requester, now.instant)
                };
                match outcome {
                    RequestOutcome::Granted => {
                        self.respond_in_dialog(now, &key, &request, 200, "OK", Some("pttaccept".to_owned()), body)
                    }
                    RequestOutcome::Queued { position } => self.respond_in_dialog(
                        now,
                        &key,
                        &request,
                        200,
                        "OK",
                        Some(format!("pttwaiting;position={position}")),
                        body,
                    ),
                    RequestOutcome::Rejected => {
                        self.respond(now, &key, &request, 480, "Temporarily Unavailable (floor busy)", &[])
                    }
                }
                self.floor_actions(now, gdn);
            }
            "pttreleasefloor" => {
                self.respond_in_dialog(now, &key, &request, 200, "OK", None, body);
                self.home_release(now, gdn, user);
            }
            _ => self.respond_in_dialog(now, &key, &request, 200, "OK", None, body),
        }
    }

    /// F-FLR-10: a DC orders a forced teardown (`MESSAGE` with `pttdismantle`): of one user's
    /// talk (`UDN=<user>`: its floor is taken away, reason `ordered`) or of the whole group call.
    fn dismantle(
        &mut self,
        now: Now,
        key: TransactionKey,
        request: Message,
        gdn: &Number,
        sender: Option<Number>,
        udn: Option<String>,
    ) {
        let is_dc = sender.as_ref().is_some_and(|sender| {
            self.subscribers
                .group(gdn)
                .is_some_and(|group| group.dispatchers.contains(sender))
        });
        if !is_dc {
            self.respond(
                now,
                &key,
                &request,
                403,
                "Forbidden (only a dispatcher of the group)",
                &[],
            );
            return;
        }
        self.respond(now, &key, &request, 200, "OK", &[]);
        match udn.and_then(|udn| Number::parse(&udn).ok()) {
            Some(user) => {
                if let Some(home) = self.groups.homes.get_mut(gdn) {
                    if let Some(&pid) = home.pids.get(&user) {
                        if !home.floor.revoke(pid, RevokeReason::Ordered, now.instant) {
                            home.floor.release(pid, now.instant);
                        }
                    }
                }
                self.floor_actions(now, gdn);
            }
            None => self.release_home(now, gdn, "dismantled by a dispatcher"),
        }
    }

    fn home_release(&mut self, now: Now, gdn: &Number, user: &Number) {
        let Some(home) = self.groups.homes.get_mut(gdn) else {
            return;
        };
        if let Some(&pid) = home.pids.get(user) {
            home.floor.release(pid, now.instant);
        }
        self.floor_actions(now, gdn);
        // Nobody next: stop forwarding. The engine hands over (RELEASE_GRACE): the released
        // talker's last packets, still on their way, go out until the next talker speaks.
        if let Some(home) = self.groups.homes.get(gdn) {
            if home.floor.holder().is_none() {
                let _ = self.media.set_source(home.bridge, None);
            }
        }
    }

    /// F-GRP-05 at the home: a member hung up. The whole call ends when it may end it.
    fn hang_up_report(&mut self, now: Now, gdn: &Number, user: &Number) {
        let Some(home) = self.groups.homes.get(gdn) else { return };
        let dispatcher = self
            .subscribers
            .group(gdn)
            .is_some_and(|group| group.dispatchers.contains(user));
        let may_end = match self.config.groups.release_by {
            ReleaseBy::Anyone => true,
            ReleaseBy::Dispatchers => dispatcher,
            ReleaseBy::Initiator => dispatcher || home.initiator == *user,
        };
        if may_end {
            self.release_home(now, gdn, "ended by a member");
        } else if let Some(home) = self.groups.homes.get_mut(gdn) {
            if let Some(&pid) = home.pids.get(user) {
                home.floor.leave(pid, now.instant);
            }
            self.floor_actions(now, gdn);
        }
    }

    /// A BYE in a group dialog.
    fn group_bye(&mut self, now: Now, slot: Slot) {
        match slot {
            Slot::HomeTalker { gdn, user } => {
                // F-FLR-05: the talker releases the floor or cancels its request.
                self.drop_home_talker(&gdn, &user, Some(now));
                self.home_release(now, &gdn, &user);
            }
            Slot::HomeMember { gdn, user } => {
                if let Some(home) = self.groups.homes.get_mut(&gdn) {
                    home.left.push(user.clone());
                }
                if let Some(member) = self
                    .groups
                    .homes
                    .get_mut(&gdn)
                    .and_then(|home| home.members.remove(&user))
                {
                    if let Some(dialog) = &member.dialog {
                        self.groups.by_dialog.remove(dialog.id());
                    }
                    self.media.remove_leg(member.leg.id);
                }
                // A monitoring DC's hang-up only takes it out of the call (F-MON-01).
                if !self.listener_only(&gdn, &user) {
                    self.hang_up_report(now, &gdn, &user);
                }
            }
            Slot::HomeDownlink { gdn, target } => {
                if let Some(downlink) = self
                    .groups
                    .homes
                    .get_mut(&gdn)
                    .and_then(|home| home.downlinks.remove(&target))
                {
                    if let Some(dialog) = &downlink.dialog {
                        self.groups.by_dialog.remove(dialog.id());
                    }
                    self.media.remove_leg(downlink.leg.id);
                    if let (Some(dc), Some(home)) = (downlink.dc.as_ref(), self.groups.homes.get_mut(&gdn)) {
                        home.left.push(dc.clone());
                    }
                    if let Some(dc) = downlink.dc.filter(|dc| !self.listener_only(&gdn, dc)) {
                        self.hang_up_report(now, &gdn, &dc);
                    }
                }
            }
            Slot::LocalDownlink { gdn } => self.release_local(now, &gdn, "released by the group home"),
            Slot::LocalMember { gdn, user } => {
                // F-GRP-05: report the hang-up to the home in the downlink session.
                if let Some(local) = self.groups.locals.get_mut(&gdn) {
                    local.left.push(user.clone());
                    if let Some(member) = local.members.remove(&user) {
                        if let Some(dialog) = &member.dialog {
                            self.groups.by_dialog.remove(dialog.id());
                        }
                        self.media.remove_leg(member.leg.id);
                    }
                }
                let report = format!("pttrelease;UDN={user};cause=64");
                let talker = Slot::LocalTalker {
                    gdn: gdn.clone(),
                    user: user.clone(),
                };
                let downlink = Slot::LocalDownlink { gdn: gdn.clone() };
                let has_downlink = self
                    .groups
                    .locals
                    .get(&gdn)
                    .is_some_and(|local| local.downlink.is_some());
                let slot = if has_downlink { downlink } else { talker.clone() };
                self.group_request(now, &slot, Method::Message, Some(report), None);
                // Its talker session ends too.
                if self.group_dialog(&talker).is_some() {
                    self.group_request(now, &talker, Method::Bye, None, None);
                }
                self.drop_local_talker(&gdn, &user);
                self.local_source(&gdn);
            }
            Slot::LocalTalker { gdn, user } => {
                // F-FLR-06: the home took the floor away.
                self.drop_local_talker(&gdn, &user);
                self.local_source(&gdn);
                let slot = Slot::LocalMember { gdn, user };
                let body = self.slot_offer(&slot);
                self.group_request(now, &slot, Method::Invite, Some("pttreleasefloor".to_owned()), body);
            }
        }
    }

    fn drop_local_talker(&mut self, gdn: &Number, user: &Number) {
        let Some(local) = self.groups.locals.get_mut(gdn) else {
            return;
        };
        if let Some(talker) = local.talkers.remove(user) {
            if let Some(dialog) = &talker.dialog {
                self.groups.by_dialog.remove(dialog.id());
            }
            self.media.remove_leg(talker.leg.id);
        }
    }

    /// F-FLR-11 at a member TCF: a member's floor re-INVITE becomes a talker session to the
    /// home (`pttrequest`) or its end (`pttreleasefloor`).
    fn local_member_floor(
        &mut self,
        now: Now,
        key: TransactionKey,
        request: Message,
        gdn: &Number,
        user: &Number,
        token: &str,
    ) {
        let slot = Slot::LocalMember {
            gdn: gdn.clone(),
            user: user.clone(),
        };
        let body = self.slot_answer(&slot, &request);
        match token {
            "pttrequest" | "pttinsert" => {
                // A session still in its release grace is over: this is a new request.
                let releasing = self
                    .groups
                    .locals
                    .get(gdn)
                    .and_then(|local| local.talkers.get(user))
                    .is_some_and(|talker| talker.releasing.is_some());
                if releasing {
                    self.drop_local_talker(gdn, user);
                }
                let existing = self
                    .groups
                    .locals
                    .get(gdn)
                    .and_then(|local| local.talkers.get(user))
                    .map(|t| t.granted);
                match existing {
                    Some(true) => {
                        self.respond_in_dialog(now, &key, &request, 200, "OK", Some("pttaccept".to_owned()), body)
                    }
                    Some(false) => {
                        self.respond_in_dialog(now, &key, &request, 200, "OK", Some("pttwaiting".to_owned()), body)
                    }
                    None => {
                        let Some(awaiting) = self.awaiting(&key, &request, false) else {
                            return;
                        };
                        let Some(local) = self.groups.locals.get_mut(gdn) else {
                            return;
                        };
                        if let Some(member) = local.members.get_mut(user) {
                            member.awaiting = Some(awaiting);
                        }
                        let home = local.home_address;
                        self.respond(now, &key, &request, 100, "Trying", &[]);
                        self.send_talker_invite(now, gdn, user, home, "group-home", token);
                    }
                }
            }
            "pttreleasefloor" => {
                self.respond_in_dialog(now, &key, &request, 200, "OK", None, body);
                let talker = Slot::LocalTalker {
                    gdn: gdn.clone(),
                    user: user.clone(),
                };
                if self.group_dialog(&talker).is_some() {
                    self.group_request(now, &talker, Method::Bye, None, None);
                }
                // The talker session and the local source end after the release grace.
                let until = now.instant + RELEASE_GRACE;
                if let Some(session) = self
                    .groups
                    .locals
                    .get_mut(gdn)
                    .and_then(|local| local.talkers.get_mut(user))
                {
                    session.granted = false;
                    session.releasing = Some(until);
                }
                self.groups
                    .deferred
                    .push((until, Deferred::DropLocalTalker(gdn.clone(), user.clone())));
                self.local_source(gdn);
            }
            _ => self.respond_in_dialog(now, &key, &request, 200, "OK", None, body),
        }
    }

    /// The local member's floor request was granted: its leg becomes the local source and the
    /// talker session carries its voice to the home.
    fn local_granted(&mut self, now: Now, gdn: &Number, user: &Number, tell: bool) {
        let Some(local) = self.groups.locals.get_mut(gdn) else {
            return;
        };
        let Some(talker) = local.talkers.get_mut(user) else {
            return;
        };
        talker.granted = true;
        // Another member's session (one that released and is in its grace) must not carry
        // this talker's voice to the home as well: the home still forwards it for the grace.
        let others: Vec<Number> = local.talkers.keys().filter(|other| *other != user).cloned().collect();
        self.local_source(gdn);
        for other in &others {
            self.set_talker_fanout(gdn, other, false);
        }
        self.set_talker_fanout(gdn, user, true);
        if tell {
            let slot = Slot::LocalMember {
                gdn: gdn.clone(),
                user: user.clone(),
            };
            let body = self.slot_offer(&slot);
            self.group_request(now, &slot, Method::Invite, Some("pttaccept".to_owned()), body);
        }
    }

    fn set_talker_fanout(&mut self, gdn: &Number, user: &Number, fanout: bool) {
        let Some(talker) = self.groups.locals.get(gdn).and_then(|local| local.talkers.get(user)) else {
            return;
        };
        let leg = talker.leg.id;
        if let Some(mut spec) = talker.spec.clone() {
            spec.fanout = fanout;
            let _ = self.media.update_leg(leg, spec);
        }
    }

    /// INFO `pttinfo` from the home (F-FLR-07): follow the floor locally and tell every member.
    fn local_notify(&mut self, now: Now, gdn: &Number, udn: String) {
        let talker = Number::parse(&udn).ok();
        // A local talker whose grant we have not seen yet is the holder now.
        if let Some(talker) = &talker {
            if let Some(local) = self.groups.locals.get_mut(gdn) {
                for (user, session) in local.talkers.iter_mut() {
                    if user != talker {
                        session.granted = false;
                    }
                }
            }
        } else if let Some(local) = self.groups.locals.get_mut(gdn) {
            for session in local.talkers.values_mut() {
                session.granted = false;
            }
        }
        self.local_source(gdn);
        let Some(local) = self.groups.locals.get_mut(gdn) else {
            return;
        };
        local.talker = udn.clone();
        let slots: Vec<Slot> = local
            .members
            .iter()
            .filter(|(_, member)| member.dialog.is_some())
            .map(|(user, _)| Slot::LocalMember {
                gdn: gdn.clone(),
                user: user.clone(),
            })
            .collect();
        for slot in slots {
            self.group_request(now, &slot, Method::Info, Some(format!("pttinfo;UDN={udn}")), None);
        }
    }

    // ---- responses to our requests ----------------------------------------------------------

    pub(super) fn group_response(&mut self, now: Now, key: TransactionKey, status: u16, response: Option<Message>) {
        let Some(sent) = self.groups.sent.get(&key).cloned() else {
            return;
        };
        match sent {
            GSent::Creating(slot, invite, destination) => {
                if !self.slot_exists(&slot) {
                    // Its group call is gone: end a late answer at once.
                    if let (200..=299, Some(response)) = (status, response) {
                        self.ack_and_bye(now, &invite, &response, destination);
                    }
                    return;
                }
                self.creating_response(now, &key, slot, status, response)
            }
            GSent::InDialog(slot) => {
                if let (200..=299, Some(response)) = (status, response) {
                    self.group_ack(&slot, &response);
                }
            }
            GSent::Other => {}
        }
    }

    /// Whether the owner of a slot still exists (the dialog itself may not yet).
    fn slot_exists(&self, slot: &Slot) -> bool {
        match slot {
            Slot::HomeTalker { gdn, user } => self
                .groups
                .homes
                .get(gdn)
                .is_some_and(|home| home.talkers.contains_key(user)),
            Slot::HomeDownlink { gdn, target } => self
                .groups
                .homes
                .get(gdn)
                .is_some_and(|home| home.downlinks.contains_key(target)),
            Slot::HomeMember { gdn, user } => self
                .groups
                .homes
                .get(gdn)
                .is_some_and(|home| home.members.contains_key(user)),
            Slot::LocalDownlink { gdn } => self.groups.locals.contains_key(gdn),
            Slot::LocalMember { gdn, user } => self
                .groups
                .locals
                .get(gdn)
                .is_some_and(|local| local.members.contains_key(user)),
            Slot::LocalTalker { gdn, user } => self
                .groups
                .locals
                .get(gdn)
                .is_some_and(|local| local.talkers.contains_key(user)),
        }
    }

    /// ACKs a 2xx to an INVITE whose session is no longer wanted, and ends it with BYE.
    fn ack_and_bye(&mut self, now: Now, invite: &Message, response: &Message, destination: SocketAddr) {
        let Ok(mut dialog) = Dialog::uac(invite, response) else {
            return;
        };
        let cseq = response.cseq().map_or(1, |cseq| cseq.number);
        let branch = self.group_token();
        let sent_by = self.address.to_string();
        if let Ok(ack) = dialog.ack_for(cseq, &branch, &sent_by, "UDP").build_bytes() {
            self.outputs.push_back(Output::Transmit {
                destination,
                bytes: ack,
            });
        }
        let branch = self.group_token();
        let Ok(builder) = dialog.request(Method::Bye, &branch, &sent_by, "UDP") else {
            return;
        };
        let Ok(bye) = builder.build_bytes() else { return };
        let Ok(key) = TransactionKey::new(&branch, &sent_by, TxMethod::from_token("BYE")) else {
            return;
        };
        if self
            .layer
            .send_request(
                now.instant,
                key.clone(),
                TxMethod::from_token("BYE"),
                bye,
                destination,
                false,
            )
            .is_ok()
        {
            self.groups.sent.insert(key, GSent::Other);
        }
    }

    /// Cancels an unanswered INVITE of ours.
    fn group_cancel(&mut self, now: Now, key: &TransactionKey, invite: &Message) {
        if let Some(cancel) = super::call::cancel_for(invite) {
            if let Ok(cancel_key) = self.layer.send_cancel(now.instant, key, cancel) {
                self.groups.sent.insert(cancel_key, GSent::Other);
            }
        }
    }

    pub(super) fn group_transaction_ended(&mut self, key: &TransactionKey) {
        self.groups.sent.remove(key);
    }

    fn group_ack(&mut self, slot: &Slot, response: &Message) {
        let cseq = response.cseq().map_or(1, |cseq| cseq.number);
        let branch = self.group_token();
        let sent_by = self.address.to_string();
        let Some((dialog, destination)) = self.group_dialog(slot) else {
            return;
        };
        if let Ok(ack) = dialog.ack_for(cseq, &branch, &sent_by, "UDP").build_bytes() {
            self.outputs.push_back(Output::Transmit {
                destination,
                bytes: ack,
            });
        }
    }

    fn creating_response(
        &mut self,
        now: Now,
        key: &TransactionKey,
        slot: Slot,
        status: u16,
        response: Option<Message>,
    ) {
        if status < 200 {
            return;
        }
        let success = (200..300).contains(&status);
        match (&slot, success, response) {
            (Slot::HomeDownlink { gdn, target }, true, Some(response)) => {
                let Some(home) = self.groups.homes.get_mut(gdn) else {
                    return;
                };
                let Some(downlink) = home.downlinks.get_mut(target) else {
                    return;
                };
                let negotiated = answered_session(
                    &mut downlink.dialog,
                    &downlink.invite,
                    &downlink.offer,
                    &response,
                    &mut self.groups.by_dialog,
                    &slot,
                );
                let leg = downlink.leg.id;
                let peer = if downlink.dc.is_none() {
                    peer_tag(&downlink.peer)
                } else {
                    0
                };
                let _ = self
                    .media
                    .update_leg(leg, group_leg_spec(negotiated.as_ref(), true, peer));
                self.group_ack(&slot, &response);
                // Tell the new downlink who talks now.
                let talker = self
                    .groups
                    .homes
                    .get(gdn)
                    .and_then(|home| home.floor.holder().map(|holder| holder.number.to_string()))
                    .unwrap_or_else(|| "idle".to_owned());
                self.group_request(now, &slot, Method::Info, Some(format!("pttinfo;UDN={talker}")), None);
            }
            (Slot::HomeMember { gdn, user } | Slot::LocalMember { gdn, user }, true, Some(response)) => {
                let at_home = matches!(slot, Slot::HomeMember { .. });
                let members = if at_home {
                    self.groups.homes.get_mut(gdn).map(|home| &mut home.members)
                } else {
                    self.groups.locals.get_mut(gdn).map(|local| &mut local.members)
                };
                let Some(member) = members.and_then(|members| members.get_mut(user)) else {
                    return;
                };
                let Some((_, invite, offer)) = member.invite.take() else {
                    // A retransmitted 2xx: ACK again.
                    self.group_ack(&slot, &response);
                    return;
                };
                let negotiated = answered_session(
                    &mut member.dialog,
                    &invite,
                    &offer,
                    &response,
                    &mut self.groups.by_dialog,
                    &slot,
                );
                let leg = member.leg.id;
                let _ = self.media.update_leg(leg, group_leg_spec(negotiated.as_ref(), true, 0));
                self.group_ack(&slot, &response);
                self.event(TcfEvent::GroupMemberJoined {
                    group: gdn.clone(),
                    user: user.clone(),
                });
                // Tell the new member who talks now.
                let talker = if at_home {
                    self.groups
                        .homes
                        .get(gdn)
                        .and_then(|home| home.floor.holder().map(|holder| holder.number.to_string()))
                        .unwrap_or_else(|| "idle".to_owned())
                } else {
                    self.groups
                        .locals
                        .get(gdn)
                        .map_or_else(|| "idle".to_owned(), |local| local.talker.clone())
                };
                self.group_request(now, &slot, Method::Info, Some(format!("pttinfo;UDN={talker}")), None);
            }
            (Slot::LocalTalker { gdn, user }, true, Some(response)) => {
                let (token, params) = extension(&response).unwrap_or_default();
                let Some(local) = self.groups.locals.get_mut(gdn) else {
                    return;
                };
                let Some(talker) = local.talkers.get_mut(user) else {
                    return;
                };
                let negotiated = answered_session(
                    &mut talker.dialog,
                    &talker.invite,
                    &talker.offer,
                    &response,
                    &mut self.groups.by_dialog,
                    &slot,
                );
                let spec = group_leg_spec(negotiated.as_ref(), false, peer_tag(&local.home));
                talker.spec = Some(spec.clone());
                let leg = talker.leg.id;
                let _ = self.media.update_leg(leg, spec);
                self.group_ack(&slot, &response);
                let granted = token == "pttaccept";
                if granted {
                    self.local_granted(now, gdn, user, false);
                }
                // Answer the member's pending request (its set-up INVITE or floor re-INVITE).
                let member_slot = Slot::LocalMember {
                    gdn: gdn.clone(),
                    user: user.clone(),
                };
                let extension = if granted {
                    "pttaccept".to_owned()
                } else {
                    format!(
                        "pttwaiting;position={}",
                        params.get("position").cloned().unwrap_or_default()
                    )
                };
                self.answer_member(now, gdn, user, 200, "OK", Some(extension), &member_slot);
            }
            (Slot::LocalTalker { gdn, user }, false, _) => {
                self.drop_local_talker(gdn, user);
                let member_slot = Slot::LocalMember {
                    gdn: gdn.clone(),
                    user: user.clone(),
                };
                let reason = if status == 480 {
                    "Temporarily Unavailable (floor busy)"
                } else {
                    "Temporarily Unavailable"
                };
                let setup = self
                    .groups
                    .locals
                    .get(gdn)
                    .and_then(|local| local.members.get(user))
                    .is_some_and(|member| member.dialog.is_none());
                self.answer_member(now, gdn, user, status.max(400), reason, None, &member_slot);
                if setup {
                    // The set-up failed: the member is not in the call.
                    if let Some(local) = self.groups.locals.get_mut(gdn) {
                        if let Some(member) = local.members.remove(user) {
                            self.media.remove_leg(member.leg.id);
                        }
                    }
                    let empty = self
                        .groups
                        .locals
                        .get(gdn)
                        .is_some_and(|local| local.members.is_empty() && local.downlink.is_none());
                    if empty {
                        if let Some(local) = self.groups.locals.remove(gdn) {
                            self.media.remove_bridge(local.bridge);
                        }
                    }
                }
            }
            (Slot::HomeDownlink { gdn, target }, false, _) => {
                if let Some(downlink) = self
                    .groups
                    .homes
                    .get_mut(gdn)
                    .and_then(|home| home.downlinks.remove(target))
                {
                    self.media.remove_leg(downlink.leg.id);
                }
            }
            (Slot::HomeMember { gdn, user } | Slot::LocalMember { gdn, user }, false, _) => {
                let removed = match slot {
                    Slot::HomeMember { .. } => self
                        .groups
                        .homes
                        .get_mut(gdn)
                        .and_then(|home| home.members.remove(user)),
                    _ => self
                        .groups
                        .locals
                        .get_mut(gdn)
                        .and_then(|local| local.members.remove(user)),
                };
                if let Some(member) = removed {
                    self.media.remove_leg(member.leg.id);
                }
            }
            _ => {}
        }
        let _ = key;
    }

    /// Answers a member's pending request (set-up INVITE or floor re-INVITE) at a member TCF.
    #[allow(clippy::too_many_arguments)]
    fn answer_member(
        &mut self,
        now: Now,
        gdn: &Number,
        user: &Number,
        status: u16,
        reason: &str,
        extension: Option<String>,
        slot: &Slot,
    ) {
        let Some(member) = self
            .groups
            .locals
            .get_mut(gdn)
            .and_then(|local| local.members.get_mut(user))
        else {
            return;
        };
        let Some(awaiting) = member.awaiting.take() else { return };
        let contact = member.contact.clone();
        let body = if status < 300 {
            self.slot_answer(slot, &awaiting.request)
        } else {
            None
        };
        let response = self.group_reply(now, &awaiting, status, reason, Some(&contact), extension, body);
        // A set-up INVITE's 2xx creates the member's dialog.
        if let (Some(response), Some(tag)) = (response, awaiting.tag.clone()) {
            if (200..300).contains(&status) {
                if let Ok(mut dialog) = Dialog::uas(&awaiting.request, &tag, &contact) {
                    let _ = dialog.confirm(&response);
                    self.groups.by_dialog.insert(dialog.id().clone(), slot.clone());
                    if let Some(member) = self
                        .groups
                        .locals
                        .get_mut(gdn)
                        .and_then(|local| local.members.get_mut(user))
                    {
                        member.dialog = Some(dialog);
                    }
                }
            }
        }
    }

    // ---- timers, media events, late entry ---------------------------------------------------

    /// An ACK: stop retransmitting the 2xx it acknowledges.
    pub(super) fn group_ack_received(&mut self, now: Now, ack: &Message) {
        let Some(id) = DialogId::of_received(ack) else { return };
        if let Some(Slot::LocalDownlink { gdn }) = self.groups.by_dialog.get(&id).cloned() {
            let first = self
                .groups
                .locals
                .get_mut(&gdn)
                .is_some_and(|local| !std::mem::replace(&mut local.downlink_confirmed, true));
            if first {
                self.deliver_locally(now, &gdn);
            }
        }
        if self.groups.retransmits.is_empty() {
            return;
        }
        let cseq = ack.cseq().map_or(0, |cseq| cseq.number);
        self.groups
            .retransmits
            .retain(|retransmit| !(retransmit.dialog == id && retransmit.resend.cseq == cseq));
    }

    fn group_retransmissions(&mut self, now: Now) {
        let t2 = self.config.timers.t2();
        let mut due = Vec::new();
        self.groups
            .retransmits
            .retain_mut(|retransmit| match retransmit.resend.poll(now.instant, t2) {
                Resend::GiveUp => false,
                Resend::Send => {
                    due.push((retransmit.resend.key.clone(), retransmit.resend.bytes.clone()));
                    true
                }
                Resend::Wait => true,
            });
        for (key, bytes) in due {
            let _ = self.layer.respond(now.instant, &key, 200, bytes);
        }
    }

    pub(super) fn group_timers(&mut self, now: Now) {
        self.group_retransmissions(now);
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.groups.deferred)
            .into_iter()
            .partition(|(at, _)| *at <= now.instant);
        self.groups.deferred = later;
        for (_, deferred) in due {
            match deferred {
                Deferred::RemoveLeg(leg) => self.media.remove_leg(leg),
                Deferred::DropLocalTalker(gdn, user) => {
                    let released = self
                        .groups
                        .locals
                        .get(&gdn)
                        .and_then(|local| local.talkers.get(&user))
                        .is_some_and(|talker| talker.releasing.is_some());
                    if released {
                        self.drop_local_talker(&gdn, &user);
                        self.local_source(&gdn);
                    }
                }
            }
        }
        // Engine events: a silent holder loses the floor.
        while let Some(event) = self.media.poll_event() {
            if let Event::TalkerSilent { bridge, leg, .. } = event {
                let found = self
                    .groups
                    .homes
                    .values_mut()
                    .find(|home| home.bridge == bridge)
                    .and_then(|home| {
                        let holder = home.floor.holder()?.number.clone();
                        let _ = leg;
                        Some((home.gdn.clone(), holder))
                    });
                if let Some((gdn, holder)) = found {
                    if let Some(home) = self.groups.homes.get_mut(&gdn) {
                        if let Some(&pid) = home.pids.get(&holder) {
                            home.floor.revoke(pid, RevokeReason::Inactivity, now.instant);
                        }
                    }
                    self.floor_actions(now, &gdn);
                }
            }
        }
        let due: Vec<Number> = self
            .groups
            .homes
            .values()
            .filter(|home| home.floor.poll_timeout().is_some_and(|at| at <= now.instant))
            .map(|home| home.gdn.clone())
            .collect();
        for gdn in due {
            if let Some(home) = self.groups.homes.get_mut(&gdn) {
                home.floor.handle_timeout(now.instant);
            }
            self.floor_actions(now, &gdn);
        }
        for peer in std::mem::take(&mut self.groups.peers_down) {
            self.group_peer_down(now, &peer);
        }
        self.group_changes(now);
    }

    /// A peer TCF is down: its downlinks and talker sessions at our homes end (its talkers
    /// leave the floor), and the group calls homed there end here.
    fn group_peer_down(&mut self, now: Now, peer: &str) {
        let address = self.network.tcf(peer).map(|tcf| tcf.sip);
        let gdns: Vec<Number> = self.groups.homes.keys().cloned().collect();
        for gdn in gdns {
            let Some(home) = self.groups.homes.get_mut(&gdn) else {
                continue;
            };
            let downlinks: Vec<String> = home
                .downlinks
                .iter()
                .filter(|(_, downlink)| downlink.peer == peer)
                .map(|(target, _)| target.clone())
                .collect();
            let talkers: Vec<Number> = home
                .talkers
                .iter()
                .filter(|(_, talker)| Some(talker.destination) == address)
                .map(|(user, _)| user.clone())
                .collect();
            for target in downlinks {
                if let Some(downlink) = home.downlinks.remove(&target) {
                    if let Some(dialog) = &downlink.dialog {
                        self.groups.by_dialog.remove(dialog.id());
                    }
                    self.media.remove_leg(downlink.leg.id);
                }
            }
            for user in talkers {
                self.drop_home_talker(&gdn, &user, None);
                if let Some(home) = self.groups.homes.get_mut(&gdn) {
                    if let Some(&pid) = home.pids.get(&user) {
                        home.floor.leave(pid, now.instant);
                    }
                }
                self.floor_actions(now, &gdn);
            }
            tracing::warn!(group = %gdn, peer, "peer TCF down: its group sessions ended");
        }
        let homed_there: Vec<Number> = self
            .groups
            .locals
            .iter()
            .filter(|(_, local)| local.home == peer)
            .map(|(gdn, _)| gdn.clone())
            .collect();
        for gdn in homed_there {
            self.release_local(now, &gdn, "group home down");
        }
    }

    /// Late entry (F-GRP-07) and moves (F-REG-09): users bound, unbound or located since the
    /// last look.
    /// Whether `user` is in `gdn`'s call only because it monitors the group (neither an
    /// effective member nor a dispatcher of it).
    fn listener_only(&self, gdn: &Number, user: &Number) -> bool {
        self.monitors_group(gdn, user)
            && !self
                .subscribers
                .group(gdn)
                .is_some_and(|group| self.in_group(group, user))
    }

    /// At the group home: a DC started monitoring `gdn`; a running call reaches it at once.
    pub(super) fn monitoring_started(&mut self, now: Now, gdn: &Number) {
        if self.groups.homes.contains_key(gdn) {
            self.invite_members(now, gdn);
        }
    }

    /// At the group home: `dc` stopped monitoring `gdn`; unless it belongs to the group, its
    /// session of a running call ends (BYE, or CANCEL while unanswered).
    pub(super) fn monitoring_stopped(&mut self, now: Now, gdn: &Number, dc: &Number) {
        let belongs = self
            .subscribers
            .group(gdn)
            .is_some_and(|group| self.in_group(group, dc));
        if belongs || !self.groups.homes.contains_key(gdn) {
            return;
        }
        let target = format!("dc:{dc}");
        let downlink = Slot::HomeDownlink {
            gdn: gdn.clone(),
            target: target.clone(),
        };
        let member = Slot::HomeMember {
            gdn: gdn.clone(),
            user: dc.clone(),
        };
        for slot in [downlink, member] {
            if self.group_dialog(&slot).is_some() {
                self.group_request(now, &slot, Method::Bye, Some("pttrelease;cause=16".to_owned()), None);
            }
            let Some(home) = self.groups.homes.get_mut(gdn) else {
                return;
            };
            let removed = match &slot {
                Slot::HomeDownlink { .. } => home.downlinks.remove(&target).map(|downlink| {
                    let pending = downlink
                        .dialog
                        .is_none()
                        .then(|| (downlink.client.clone(), downlink.invite.clone()));
                    (
                        downlink.dialog.map(|dialog| dialog.id().clone()),
                        downlink.leg.id,
                        pending,
                    )
                }),
                _ => home.members.remove(dc).map(|member| {
                    (
                        member.dialog.map(|dialog| dialog.id().clone()),
                        member.leg.id,
                        member.invite.map(|(key, invite, _)| (key, invite)),
                    )
                }),
            };
            let Some((dialog, leg, pending)) = removed else {
                continue;
            };
            if let Some(dialog) = dialog {
                self.groups.by_dialog.remove(&dialog);
            }
            self.media.remove_leg(leg);
            if let Some((key, invite)) = pending {
                self.group_cancel(now, &key, &invite);
            }
        }
    }

    pub(super) fn group_changes(&mut self, now: Now) {
        if self.groups.changed.is_empty() {
            return;
        }
        let changed = std::mem::take(&mut self.groups.changed);
        // A user registered anew or moved may join again the calls it had left.
        for user in std::mem::take(&mut self.groups.rejoined) {
            for home in self.groups.homes.values_mut() {
                home.left.retain(|left| *left != user);
            }
            for local in self.groups.locals.values_mut() {
                local.left.retain(|left| *left != user);
            }
        }
        for user in changed {
            let groups: Vec<Number> = self.regroups.groups_of(&self.subscribers, &user).cloned().collect();
            for gdn in groups {
                // Home: a member located at a TCF without a downlink gets one; one served
                // here gets invited.
                if self.groups.homes.contains_key(&gdn) {
                    self.invite_members(now, &gdn);
                }
                // Member TCF: a member bound here joins; one gone leaves.
                if self
                    .groups
                    .locals
                    .get(&gdn)
                    .is_some_and(|local| local.downlink.is_some() && local.downlink_confirmed)
                {
                    if self.bindings.contains_key(&user) {
                        self.deliver_locally(now, &gdn);
                    } else if let Some(member) = self
                        .groups
                        .locals
                        .get_mut(&gdn)
                        .and_then(|local| local.members.remove(&user))
                    {
                        if let Some(dialog) = &member.dialog {
                            self.groups.by_dialog.remove(dialog.id());
                        }
                        self.media.remove_leg(member.leg.id);
                    }
                }
            }
        }
    }
}

/// The group and user of a home session a user may ask the floor in (its D session at the
/// home, or a DC's downlink).
fn home_participant(slot: &Slot) -> Option<(Number, Number)> {
    match slot {
        Slot::HomeMember { gdn, user } => Some((gdn.clone(), user.clone())),
        Slot::HomeDownlink { gdn, target } => {
            let dc = Number::parse(target.strip_prefix("dc:")?).ok()?;
            Some((gdn.clone(), dc))
        }
        _ => None,
    }
}

/// A 2xx to one of our dialog-creating INVITEs: its UAC dialog (made once, indexed under
/// `slot`) and what the answer negotiates for the leg.
fn answered_session(
    dialog: &mut Option<Dialog>,
    invite: &Message,
    offer: &Sdp,
    response: &Message,
    by_dialog: &mut NetMap<DialogId, Slot>,
    slot: &Slot,
) -> Option<sdp::Negotiated> {
    if dialog.is_none() {
        *dialog = Dialog::uac(invite, response).ok();
        if let Some(dialog) = dialog {
            by_dialog.insert(dialog.id().clone(), slot.clone());
        }
    }
    let answer = sdp::parse(response.body()).ok()?;
    sdp::parse_answer(offer, &answer).ok()
}

fn slot_of_home(slot: &Slot, gdn: &Number) -> bool {
    matches!(slot, Slot::HomeTalker { gdn: g, .. } | Slot::HomeDownlink { gdn: g, .. } | Slot::HomeMember { gdn: g, .. } if g == gdn)
}

fn slot_of_local(slot: &Slot, gdn: &Number) -> bool {
    matches!(slot, Slot::LocalDownlink { gdn: g } | Slot::LocalMember { gdn: g, .. } | Slot::LocalTalker { gdn: g, .. } if g == gdn)
}
