//! Short data (F-SDS-01, F-SDS-02): real-time short data to a user and multicast short messages
//! to a group, in `MESSAGE` requests with `Ptt-Extension: pttmsg`.
//!
//! # Routing
//!
//! A short-data MESSAGE to a user travels like a single call's INVITE: sender's serving TCF →
//! sender's home → destination's home → destination's serving TCF → the terminal's contact;
//! adjacent stages on one node are one hop, and the role of the next node travels in the
//! `stage` parameter (`caller-home`, `callee-home`, `callee-serving`, as for calls). Every hop
//! is a stateful relay: the MESSAGE it receives ends in its own server transaction, it sends its
//! own MESSAGE onwards in a client transaction, and answers its upstream with the final status
//! that came back (or its own: `404`, `480`, `503`, `408` ...). The body and its Content-Type
//! travel unchanged.
//!
//! A MESSAGE to a group number goes from the sender's serving TCF straight to the group home
//! (`stage=group-home`), as a group call set-up does. The group home answers `200` once it has
//! accepted it, then sends one MESSAGE per recipient — every registered member and dispatcher
//! of the group but the sender — to the recipient's serving TCF (`stage=callee-serving`, with
//! `GDN`), or to the terminal itself when it serves it. Those deliveries are fire and forget:
//! their failures are counted and logged, not reported to the sender.
//!
//! Nothing here is persisted: a short-data MESSAGE lives as long as its transactions.

use std::borrow::Cow;

use super::*;

/// The largest short-data body relayed, in bytes (larger: `413`). With the headers a hop adds
/// (under 500 bytes), every relayed MESSAGE stays within the 1300 bytes RFC 3428 §9 allows a
/// MESSAGE sent over UDP without congestion control, and so within the smallest
/// `sip.max_message_size` (1500).
pub const MAX_SHORT_DATA: usize = 800;

/// The status of a MESSAGE whose next TCF went down while it waited (no response).
const PEER_DOWN: u16 = 503;

/// The Ptt-Extension token of short data.
const TOKEN: &str = "pttmsg";

/// Counters of short data at this node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShortDataCounters {
    /// Short-data MESSAGEs received (from terminals and peers).
    pub received: u64,
    /// Of those, refused here (4xx/5xx/6xx answered without sending anything on).
    pub refused: u64,
    /// Copies of multicast short messages the group home sent to recipients.
    pub multicast_copies: u64,
    /// Of those, not delivered (an error answer, no answer, or the recipient's TCF down).
    pub multicast_failures: u64,
}

/// The role the receiving node plays (the `stage` parameter of `pttmsg`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// The sender's serving TCF (the MESSAGE came from a terminal or DC).
    SenderServing,
    /// The sender's home TCF.
    SenderHome,
    /// The destination user's home TCF.
    DestinationHome,
    /// The destination user's serving TCF.
    DestinationServing,
    /// The destination group's home.
    GroupHome,
}

impl Stage {
    /// The `stage` parameter naming this role: the names calls use.
    fn param(self) -> &'static str {
        match self {
            Stage::SenderServing => "caller-serving",
            Stage::SenderHome => "caller-home",
            Stage::DestinationHome => "callee-home",
            Stage::DestinationServing => "callee-serving",
            Stage::GroupHome => "group-home",
        }
    }

    /// The stage a peer asks this node to play (`caller-serving` is never sent).
    fn parse(text: &str) -> Option<Stage> {
        [
            Stage::SenderHome,
            Stage::DestinationHome,
            Stage::DestinationServing,
            Stage::GroupHome,
        ]
        .into_iter()
        .find(|stage| stage.param().eq_ignore_ascii_case(text))
    }
}

/// Where a short-data MESSAGE goes from this node.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Next {
    /// To a terminal or DC this node serves.
    Terminal(Binding),
    /// To a peer TCF, which plays `stage`.
    Peer {
        name: String,
        address: SocketAddr,
        stage: Stage,
    },
    /// This node is the group's home: accept it and send a copy to every recipient.
    Group(Number),
}

/// Who waits for the outcome of a MESSAGE this node sent on.
#[derive(Debug)]
struct Upstream {
    /// Our server transaction of the MESSAGE we received.
    server: TransactionKey,
    /// That MESSAGE.
    request: Message,
    /// Where it came from.
    source: SocketAddr,
}

/// A short-data MESSAGE this node sent, until its client transaction ends.
#[derive(Debug)]
pub(super) struct Forward {
    /// The MESSAGE we relay, answered with the outcome; `None` for one recipient's copy of a
    /// multicast short message (its outcome is only counted).
    upstream: Option<Upstream>,
    sender: Number,
    /// The number dialed (a user, or the group of a multicast copy).
    destination: Number,
    /// The recipient of a multicast copy.
    member: Option<Number>,
    /// The peer TCF it went to (`None`: a terminal).
    peer: Option<String>,
}

/// Why a short-data MESSAGE is refused here; the sender and destination when known (for the
/// event).
#[derive(Debug)]
struct Refusal {
    status: u16,
    reason: &'static str,
    sender: Option<Number>,
    destination: Option<Number>,
}

impl Refusal {
    fn new(status: u16, reason: &'static str) -> Refusal {
        Refusal {
            status,
            reason,
            sender: None,
            destination: None,
        }
    }

    fn about(mut self, sender: &Number, destination: Option<&Number>) -> Refusal {
        self.sender = Some(sender.clone());
        self.destination = destination.cloned();
        self
    }
}

/// The parts of a short-data MESSAGE every hop passes on unchanged.
#[derive(Debug, Clone)]
struct Payload {
    content_type: String,
    body: Bytes,
}

impl Tcf {
    /// A MESSAGE outside any dialog: handles (and answers) it when it carries `pttmsg` or a
    /// Ptt-Extension that does not parse (`400`); returns it when it is something else.
    pub(super) fn short_data(&mut self, now: Now, key: &TransactionKey, request: Message) -> Option<Message> {
        let (stage_text, gdn_text) = match request.ptt_extension() {
            Err(_) => {
                self.respond(now, key, &request, 400, "Bad Request (Ptt-Extension)", &[]);
                return None;
            }
            Ok(Some(extension)) if extension.value().eq_ignore_ascii_case(TOKEN) => {
                let text = |name: &str| {
                    extension
                        .param(name)
                        .map(|value| String::from_utf8_lossy(&value).into_owned())
                };
                (text("stage"), text("GDN"))
            }
            Ok(_) => return Some(request),
        };
        self.short_data.received += 1;
        let outcome = self.short_data_request(now, key, &request, stage_text.as_deref(), gdn_text.as_deref());
        if let Err(refusal) = outcome {
            self.short_data.refused += 1;
            self.respond(now, key, &request, refusal.status, refusal.reason, &[]);
            if let (Some(sender), Some(destination)) = (refusal.sender, refusal.destination) {
                self.event(TcfEvent::ShortData {
                    sender,
                    destination,
                    status: refusal.status,
                });
            }
        }
        None
    }

    /// Checks and routes a short-data MESSAGE; `Err`: the refusal to answer.
    fn short_data_request(
        &mut self,
        now: Now,
        key: &TransactionKey,
        request: &Message,
        stage_text: Option<&str>,
        gdn_text: Option<&str>,
    ) -> Result<(), Refusal> {
        let Some(source) = self.current_source else {
            return Err(Refusal::new(500, "Server Internal Error"));
        };
        let peer = self.network.tcf_at(source).map(|tcf| tcf.name.clone());
        // Who sends is checked first: a stranger learns nothing about our users.
        let (sender, stage) = match &peer {
            Some(_) => {
                let sender = asserted_user(request)
                    .or_else(|| user_of(request.from()))
                    .ok_or_else(|| Refusal::new(400, "Bad Request (no sender identity)"))?;
                let stage = stage_text
                    .and_then(Stage::parse)
                    .ok_or_else(|| Refusal::new(400, "Bad Request (pttmsg stage)").about(&sender, None))?;
                (sender, stage)
            }
            None => match self.registered_sender(request, source) {
                Some(sender) => (sender, Stage::SenderServing),
                None => return Err(Refusal::new(403, "Forbidden (not registered here)")),
            },
        };
        let Some(destination) = request_user(request) else {
            return Err(Refusal::new(404, "Not Found").about(&sender, None));
        };
        let refuse =
            |(status, reason): (u16, &'static str)| Refusal::new(status, reason).about(&sender, Some(&destination));
        let payload = payload_of(request).map_err(refuse)?;
        // A group's copy names the group it came from (checked: a number, or nothing).
        let gdn = match gdn_text {
            Some(text) if peer.is_some() => Some(Number::parse(text).map_err(|_| refuse((400, "Bad Request (GDN)")))?),
            _ => None,
        };
        let next = self.route_short_data(stage, &sender, &destination).map_err(refuse)?;
        match next {
            Next::Group(group) => {
                self.respond(now, key, request, 200, "OK", &[]);
                self.event(TcfEvent::ShortData {
                    sender: sender.clone(),
                    destination: destination.clone(),
                    status: 200,
                });
                self.multicast(now, &sender, &group, &payload);
                Ok(())
            }
            next => {
                let forward = Forward {
                    upstream: Some(Upstream {
                        server: key.clone(),
                        request: request.clone(),
                        source,
                    }),
                    sender: sender.clone(),
                    destination: destination.clone(),
                    member: None,
                    peer: None,
                };
                self.send_short_data(now, &next, &sender, &destination, gdn.as_ref(), &payload, forward)
                    .map_err(refuse)?;
                Ok(())
            }
        }
    }

    /// Decides the next hop of a short-data MESSAGE arriving at `stage`, collapsing the stages
    /// this node plays. `Err`: the status to answer.
    fn route_short_data(
        &self,
        mut stage: Stage,
        sender: &Number,
        destination: &Number,
    ) -> Result<Next, (u16, &'static str)> {
        let me = self.config.name.as_str();
        // A stunned (or killed) user neither sends nor receives short data (F-SKR decision):
        // checked where its state is known, its serving TCF and its home.
        if matches!(stage, Stage::SenderServing | Stage::SenderHome) {
            if let Some(reason) = self.skr_barred(sender) {
                return Err((403, reason));
            }
        }
        // Each stage advances at most once: a bounded loop.
        for _ in 0..6 {
            match stage {
                Stage::SenderServing | Stage::SenderHome if self.subscribers.group(destination).is_some() => {
                    // Multicast: straight to the group home, as a group call set-up goes.
                    self.member_of(sender, destination)?;
                    let home = self
                        .network
                        .home_of_group(destination)
                        .ok_or((404, "Not Found (unknown group)"))?;
                    if home.name == me {
                        stage = Stage::GroupHome;
                        continue;
                    }
                    return self.short_data_peer(&home.name, Stage::GroupHome);
                }
                Stage::SenderServing => {
                    let home = self
                        .network
                        .home_of_user(sender)
                        .ok_or((403, "Forbidden (sender has no home TCF)"))?;
                    if home.name == me {
                        stage = Stage::SenderHome;
                        continue;
                    }
                    return self.short_data_peer(&home.name, Stage::SenderHome);
                }
                Stage::SenderHome => {
                    if !self.network.home_of_user(sender).is_some_and(|home| home.name == me) {
                        return Err((403, "Forbidden (sender not homed here)"));
                    }
                    if self.subscribers.user(sender).is_none() {
                        return Err((403, "Forbidden (unknown sender)"));
                    }
                    let home = self.network.home_of_user(destination).ok_or((404, "Not Found"))?;
                    if home.name == me {
                        stage = Stage::DestinationHome;
                        continue;
                    }
                    return self.short_data_peer(&home.name, Stage::DestinationHome);
                }
                Stage::DestinationHome => {
                    if !self
                        .network
                        .home_of_user(destination)
                        .is_some_and(|home| home.name == me)
                    {
                        return Err((404, "Not Found (not homed here)"));
                    }
                    if self.subscribers.user(destination).is_none() {
                        return Err((404, "Not Found"));
                    }
                    if let Some(reason) = self.skr_barred(destination) {
                        return Err((403, reason));
                    }
                    let registration = self
                        .registrations
                        .get(destination)
                        .ok_or((480, "Temporarily Unavailable (not registered)"))?;
                    if registration.serving == me {
                        stage = Stage::DestinationServing;
                        continue;
                    }
                    let serving = registration.serving.clone();
                    return self.short_data_peer(&serving, Stage::DestinationServing);
                }
                Stage::DestinationServing => {
                    if let Some(reason) = self.skr_barred(destination) {
                        return Err((403, reason));
                    }
                    let binding = self
                        .bindings
                        .get(destination)
                        .ok_or((480, "Temporarily Unavailable (not registered here)"))?;
                    return Ok(Next::Terminal(binding.clone()));
                }
                Stage::GroupHome => {
                    if !self
                        .network
                        .home_of_group(destination)
                        .is_some_and(|home| home.name == me)
                    {
                        return Err((404, "Not Found (not the group's home)"));
                    }
                    self.member_of(sender, destination)?;
                    return Ok(Next::Group(destination.clone()));
                }
            }
        }
        Err((500, "Server Internal Error (routing loop)"))
    }

    /// `Ok` when `sender` may send to group `gdn` (a member or one of its dispatchers).
    fn member_of(&self, sender: &Number, gdn: &Number) -> Result<(), (u16, &'static str)> {
        let group = self.subscribers.group(gdn).ok_or((404, "Not Found (unknown group)"))?;
        if group.members.contains(sender) || group.dispatchers.contains(sender) {
            Ok(())
        } else {
            Err((403, "Forbidden (not a member of the group)"))
        }
    }

    fn short_data_peer(&self, name: &str, stage: Stage) -> Result<Next, (u16, &'static str)> {
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

    /// The group home sends a copy to every registered member and dispatcher but the sender.
    fn multicast(&mut self, now: Now, sender: &Number, gdn: &Number, payload: &Payload) {
        let Some(group) = self.subscribers.group(gdn).cloned() else {
            return;
        };
        let me = self.config.name.clone();
        let mut recipients: Vec<Number> = Vec::new();
        for user in group.members.iter().chain(group.dispatchers.iter()) {
            if user != sender && !recipients.contains(user) {
                recipients.push(user.clone());
            }
        }
        for member in recipients {
            let Some(serving) = self.locations.get(&member).map(|location| location.serving.clone()) else {
                continue; // not registered: nothing to deliver
            };
            self.short_data.multicast_copies += 1;
            let next = if serving == me {
                self.bindings
                    .get(&member)
                    .cloned()
                    .map(Next::Terminal)
                    .ok_or((480, "Temporarily Unavailable (not registered here)"))
            } else {
                self.short_data_peer(&serving, Stage::DestinationServing)
            };
            let forward = Forward {
                upstream: None,
                sender: sender.clone(),
                destination: gdn.clone(),
                member: Some(member.clone()),
                peer: None,
            };
            let sent = next.map_err(|(status, _)| status).and_then(|next| {
                self.send_short_data(now, &next, sender, &member, Some(gdn), payload, forward)
                    .map_err(|(status, _)| status)
            });
            if let Err(status) = sent {
                self.multicast_failed(gdn, &member, status);
            }
        }
    }

    fn multicast_failed(&mut self, gdn: &Number, member: &Number, status: u16) {
        self.short_data.multicast_failures += 1;
        tracing::info!(group = %gdn, member = %member, status, "multicast short message not delivered");
        self.event(TcfEvent::ShortDataToMember {
            group: gdn.clone(),
            member: member.clone(),
            status,
        });
    }

    /// Sends a short-data MESSAGE to `next` in a client transaction of its own; `Err`: the
    /// status to answer instead.
    #[allow(clippy::too_many_arguments)]
    fn send_short_data(
        &mut self,
        now: Now,
        next: &Next,
        sender: &Number,
        destination: &Number,
        gdn: Option<&Number>,
        payload: &Payload,
        mut forward: Forward,
    ) -> Result<TransactionKey, (u16, &'static str)> {
        let (uri, address, stage) = match next {
            Next::Terminal(binding) => (
                binding.contact.trim_matches(|c| c == '<' || c == '>').to_owned(),
                binding.address,
                None,
            ),
            Next::Peer { name, address, stage } => {
                forward.peer = Some(name.clone());
                let host = crate::sip::builder::socket_addr_text(*address);
                (
                    concat(&["sip:", destination.as_str(), "@", &host]),
                    *address,
                    Some(*stage),
                )
            }
            Next::Group(_) => return Err((500, "Server Internal Error (not a hop)")),
        };
        // pttmsg;callerUDN=..;calleeUDN=..[;GDN=..][;stage=..]
        let mut extension = String::with_capacity(96);
        extension.push_str(TOKEN);
        extension.push_str(";callerUDN=");
        extension.push_str(sender.as_str());
        extension.push_str(";calleeUDN=");
        extension.push_str(destination.as_str());
        if let Some(gdn) = gdn {
            extension.push_str(";GDN=");
            extension.push_str(gdn.as_str());
        }
        if let Some(stage) = stage {
            extension.push_str(";stage=");
            extension.push_str(stage.param());
        }
        self.send_message_as(
            now,
            sender.as_str(),
            &uri,
            extension,
            Some((&payload.content_type, payload.body.clone())),
            address,
            Pending::ShortData(Box::new(forward)),
        )
        .ok_or((503, "Service Unavailable (overloaded)"))
    }

    /// The client transaction of a short-data MESSAGE ended with `status` (`408` and no
    /// response: no answer).
    pub(super) fn short_data_answered(&mut self, now: Now, forward: Forward, status: u16, response: Option<Message>) {
        let Forward {
            upstream,
            sender,
            destination,
            member,
            ..
        } = forward;
        let Some(upstream) = upstream else {
            let Some(member) = member else { return };
            if (200..300).contains(&status) {
                self.event(TcfEvent::ShortDataToMember {
                    group: destination,
                    member,
                    status,
                });
            } else {
                self.multicast_failed(&destination, &member, status);
            }
            return;
        };
        let reason = response
            .as_ref()
            .and_then(|response| response.reason_phrase())
            .map(String::from_utf8_lossy);
        let (status, reason) = upstream_status(status, reason, response.is_some());
        // The answer goes to whoever sent the MESSAGE here, not to the hop that answered.
        let handling = self.current_source.replace(upstream.source);
        self.respond(now, &upstream.server, &upstream.request, status, &reason, &[]);
        self.current_source = handling;
        self.event(TcfEvent::ShortData {
            sender,
            destination,
            status,
        });
    }

    /// Short data waiting for a peer TCF that heartbeats have declared down fails at once with
    /// `503` (its client transaction runs on; its outcome no longer matters). Called with the
    /// heartbeats.
    pub(super) fn short_data_peers_down(&mut self, now: Now) {
        if !self.peers.iter().any(|peer| peer.up == Some(false)) {
            return;
        }
        let stranded: Vec<TransactionKey> = self
            .pending
            .iter()
            .filter(|(_, pending)| {
                matches!(pending, Pending::ShortData(forward)
                    if forward.peer.as_deref().is_some_and(|peer| self.peer_is_down(peer)))
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in stranded {
            if let Some(Pending::ShortData(forward)) = self.pending.remove(&key) {
                let Some(peer) = forward.peer.clone() else { continue };
                tracing::info!(%peer, "peer TCF down: short data towards it failed");
                self.short_data_answered(now, *forward, PEER_DOWN, None);
            }
        }
    }

    /// Counters of short data since start.
    pub fn short_data_counters(&self) -> ShortDataCounters {
        self.short_data
    }
}

/// The status (and reason) a hop answers its upstream with, from what its own MESSAGE got:
/// the same, except what the sender could not act on: a challenge (`401`/`407`, meant for this
/// hop) becomes `403`, a redirection `480`; no answer at all is `408`.
fn upstream_status(status: u16, reason: Option<Cow<'_, str>>, answered: bool) -> (u16, Cow<'_, str>) {
    match status {
        PEER_DOWN if !answered => (503, Cow::Borrowed("Service Unavailable (next TCF unreachable)")),
        408 if !answered => (408, Cow::Borrowed("Request Timeout (next hop did not answer)")),
        401 | 407 => (403, Cow::Borrowed("Forbidden (refused by the next hop)")),
        300..=399 => (480, Cow::Borrowed("Temporarily Unavailable (redirected)")),
        200..=699 => (
            status,
            reason
                .filter(|reason| !reason.is_empty())
                .unwrap_or(Cow::Borrowed(if status < 300 {
                    "OK"
                } else {
                    "Refused by the next hop"
                })),
        ),
        _ => (
            500,
            Cow::Borrowed("Server Internal Error (bad status from the next hop)"),
        ),
    }
}

/// The body and Content-Type of a short-data MESSAGE; `Err`: why it is refused.
fn payload_of(request: &Message) -> Result<Payload, (u16, &'static str)> {
    let body = request.body();
    if body.is_empty() {
        return Err((400, "Bad Request (no short data)"));
    }
    if body.len() > MAX_SHORT_DATA {
        return Err((413, "Request Entity Too Large (short data over 800 bytes)"));
    }
    // RFC 3261 §7.4.1: a body needs its Content-Type, which must parse.
    if !matches!(request.content_type(), Ok(Some(_))) {
        return Err((400, "Bad Request (Content-Type)"));
    }
    let content_type = request
        .header(HeaderName::ContentType)
        .and_then(|header| header.value_str())
        .ok_or((400, "Bad Request (Content-Type)"))?
        .into_owned();
    Ok(Payload {
        content_type,
        body: Bytes::copy_from_slice(body),
    })
}

#[cfg(test)]
mod tests {
    //! Short data between three cores in simulated time: terminals are plain addresses whose
    //! datagrams are collected, peers are real cores.
    use super::*;

    const NETWORK: &str = "\
        [[tcf]]\nname = \"a\"\nsip = \"127.0.0.1:5701\"\nusers = [\"1000-1099\"]\ngroups = [\"2000\"]\nsecret = \"s\"\n\
        [[tcf]]\nname = \"b\"\nsip = \"127.0.0.1:5702\"\nusers = [\"1100-1199\"]\ngroups = [\"2100\"]\nsecret = \"s\"\n\
        [[tcf]]\nname = \"c\"\nsip = \"127.0.0.1:5703\"\nusers = [\"1200-1299\"]\nsecret = \"s\"\n";
    const SUBSCRIBERS: &str = "\
        [[user]]\nnumber = \"1000-1009\"\npassword = \"pw\"\n\
        [[user]]\nnumber = \"1100-1109\"\npassword = \"pw\"\n\
        [[user]]\nnumber = \"1200-1209\"\npassword = \"pw\"\n\
        [[user]]\nnumber = \"9000\"\npassword = \"pw\"\nkind = \"dispatcher\"\n\
        [[group]]\nnumber = \"2000\"\nmembers = [\"1000-1002\", \"1100-1101\", \"1200\"]\ndispatchers = [\"9000\"]\n\
        [[group]]\nnumber = \"2100\"\nmembers = [\"1100-1101\"]\n";
    const NAMES: [&str; 3] = ["a", "b", "c"];

    fn number(text: &str) -> Number {
        Number::parse(text).unwrap()
    }

    /// A terminal's address: 127.0.0.2, port = its number.
    fn terminal(user: &str) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 2], user.parse::<u16>().unwrap()))
    }

    struct Net {
        cores: Vec<Tcf>,
        start: Instant,
        wall: SystemTime,
        /// Datagrams sent to terminals, parsed.
        inbox: Vec<(SocketAddr, Message)>,
        /// Datagrams from `dead` cores' addresses are dropped, and none reach them.
        dead: Vec<usize>,
        events: Vec<(usize, TcfEvent)>,
    }

    impl Net {
        /// Three cores; `served` lists (user, serving node index): each is bound at its serving
        /// node, registered at its home, located at the homes of its groups.
        fn new(served: &[(&str, usize)]) -> Net {
            let start = Instant::now();
            let wall = SystemTime::now();
            let now = Now { instant: start, wall };
            let network = Arc::new(Network::from_toml("n", NETWORK).unwrap());
            let subscribers = Arc::new(Subscribers::from_toml("s", SUBSCRIBERS).unwrap());
            let unix = wall.duration_since(UNIX_EPOCH).unwrap().as_secs() + 3600;
            let mut cores: Vec<Tcf> = NAMES
                .iter()
                .zip(1..)
                .map(|(name, seed)| {
                    let sip = crate::config::Config::from_toml("[sip]\nrealm = \"test\"\nt1_ms = 100\n")
                        .unwrap()
                        .sip;
                    let config = TcfConfig::new(name, sip, [7; 32]).unwrap();
                    Tcf::new(config, network.clone(), subscribers.clone(), now, seed).unwrap()
                })
                .collect();
            let index_of = |name: &str| NAMES.iter().position(|n| *n == name).unwrap();
            for (index, core) in cores.iter_mut().enumerate() {
                let mut bindings = Vec::new();
                let mut registrations = Vec::new();
                let mut locations = Vec::new();
                for (user, serving) in served {
                    let user = number(user);
                    if *serving == index {
                        bindings.push(Binding {
                            user: user.clone(),
                            contact: format!("<sip:{user}@{}>", terminal(user.as_str())),
                            address: terminal(user.as_str()),
                            expires_at: unix,
                        });
                    }
                    if network.home_of_user(&user).map(|home| index_of(&home.name)) == Some(index) {
                        registrations.push(Registration {
                            user: user.clone(),
                            serving: NAMES[*serving].to_owned(),
                            expires_at: unix,
                        });
                    }
                    let homes_a_group = subscribers.groups_of(&user).any(|group| {
                        network.home_of_group(&group.number).map(|home| index_of(&home.name)) == Some(index)
                    });
                    if homes_a_group {
                        locations.push(Location {
                            user: user.clone(),
                            serving: NAMES[*serving].to_owned(),
                            expires_at: unix,
                        });
                    }
                }
                core.restore(bindings, registrations, locations, now);
            }
            Net {
                cores,
                start,
                wall,
                inbox: Vec::new(),
                dead: Vec::new(),
                events: Vec::new(),
            }
        }

        fn at(&self, millis: u64) -> Now {
            Now {
                instant: self.start + Duration::from_millis(millis),
                wall: self.wall + Duration::from_millis(millis),
            }
        }

        fn address(&self, index: usize) -> SocketAddr {
            self.cores[index].address()
        }

        /// A datagram from `from` to core `index`, then every exchange it causes.
        fn deliver(&mut self, millis: u64, from: SocketAddr, index: usize, text: &str) {
            let now = self.at(millis);
            self.cores[index].handle_datagram(now, from, Bytes::copy_from_slice(text.as_bytes()));
            self.settle(millis);
        }

        /// Runs every core's timers at `millis`, then the exchanges they cause.
        fn tick(&mut self, millis: u64) {
            let now = self.at(millis);
            for (index, core) in self.cores.iter_mut().enumerate() {
                if !self.dead.contains(&index) {
                    core.handle_timeout(now);
                }
            }
            self.settle(millis);
        }

        fn settle(&mut self, millis: u64) {
            let now = self.at(millis);
            for _ in 0..50 {
                let mut moved = false;
                for index in 0..self.cores.len() {
                    let from = self.address(index);
                    while let Some(output) = self.cores[index].poll_output() {
                        match output {
                            Output::Transmit { destination, bytes } => {
                                if self.dead.contains(&index) {
                                    continue;
                                }
                                moved = true;
                                match (0..self.cores.len()).find(|&other| self.address(other) == destination) {
                                    Some(other) if !self.dead.contains(&other) => {
                                        self.cores[other].handle_datagram(now, from, bytes)
                                    }
                                    Some(_) => {}
                                    None => self.inbox.push((destination, Message::parse_datagram(bytes).unwrap())),
                                }
                            }
                            Output::Event(event) => self.events.push((index, event)),
                            Output::Store(_) => {}
                        }
                    }
                }
                if !moved {
                    return;
                }
            }
        }

        /// The messages `user`'s terminal received (and forgets them).
        fn received(&mut self, user: &str) -> Vec<Message> {
            let address = terminal(user);
            let (mine, others) = std::mem::take(&mut self.inbox)
                .into_iter()
                .partition(|(destination, _)| *destination == address);
            self.inbox = others;
            mine.into_iter().map(|(_, message)| message).collect()
        }

        /// `user`'s terminal answers `request` with `status`.
        fn answer(&mut self, millis: u64, user: &str, serving: usize, request: &Message, status: u16) {
            let response = crate::sip::response_to(request, status, "Whatever", Some("t"))
                .unwrap()
                .build_bytes()
                .unwrap();
            let text = String::from_utf8(response.to_vec()).unwrap();
            self.deliver(millis, terminal(user), serving, &text);
        }
    }

    /// A short-data MESSAGE from `user`'s terminal to `destination` at its serving TCF (a new
    /// transaction each time).
    fn message(
        user: &str,
        server: SocketAddr,
        destination: &str,
        extension: &str,
        content_type: &str,
        body: &str,
    ) -> String {
        let me = terminal(user);
        let extension = if extension.is_empty() {
            String::new()
        } else {
            format!("Ptt-Extension: {extension}\r\n")
        };
        let content_type = if content_type.is_empty() {
            String::new()
        } else {
            format!("Content-Type: {content_type}\r\n")
        };
        static BRANCH: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let branch = BRANCH.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!(
            "MESSAGE sip:{destination}@{server} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{user}m{branch};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:{user}@{server}>;tag=f{user}\r\nTo: <sip:{destination}@{server}>\r\n\
             Call-ID: sd{user}@terminal\r\nCSeq: 7 MESSAGE\r\n{extension}{content_type}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    fn ptt(message: &Message) -> String {
        message
            .headers_named("Ptt-Extension")
            .next()
            .and_then(|header| header.value_str().map(Cow::into_owned))
            .unwrap_or_default()
    }

    fn statuses(messages: &[Message]) -> Vec<u16> {
        messages.iter().filter_map(Message::status).collect()
    }

    fn requests(messages: &[Message]) -> Vec<&Message> {
        messages.iter().filter(|message| message.is_request()).collect()
    }

    const TEXT: &str = "text/plain;charset=UTF-8";

    #[test]
    fn routing_collapses_the_stages_a_node_plays() {
        // 1000 (home a) at a, 1001 (home a) at c, 1100 (home b) at b; 1002 not registered.
        let mut net = Net::new(&[("1000", 0), ("1001", 2), ("1100", 1), ("1101", 0)]);
        let a = &net.cores[0];
        let peer = |name: &str, index: usize, stage: Stage| Next::Peer {
            name: name.to_owned(),
            address: a.cores_address(index),
            stage,
        };
        let route =
            |stage, sender: &str, destination: &str| a.route_short_data(stage, &number(sender), &number(destination));
        // Sender and destination homed here: straight to the destination's serving TCF.
        assert_eq!(
            route(Stage::SenderServing, "1000", "1001"),
            Ok(peer("c", 2, Stage::DestinationServing))
        );
        // ... or to the terminal itself when it is served here.
        assert!(
            matches!(route(Stage::SenderServing, "1001", "1000"), Ok(Next::Terminal(binding)) if binding.user == number("1000"))
        );
        // A visitor's sender home is elsewhere.
        assert_eq!(
            route(Stage::SenderServing, "1101", "1000"),
            Ok(peer("b", 1, Stage::SenderHome))
        );
        // The destination's home is elsewhere.
        assert_eq!(
            route(Stage::SenderHome, "1000", "1100"),
            Ok(peer("b", 1, Stage::DestinationHome))
        );
        // Failures at the destination's home.
        assert_eq!(route(Stage::DestinationHome, "1100", "1002").unwrap_err().0, 480);
        assert_eq!(
            route(Stage::DestinationHome, "1100", "1050").unwrap_err().0,
            404,
            "in range, not provisioned"
        );
        assert_eq!(
            route(Stage::SenderHome, "1000", "5555").unwrap_err().0,
            404,
            "in no TCF's range"
        );
        assert_eq!(
            route(Stage::DestinationHome, "1000", "1100").unwrap_err().0,
            404,
            "not homed here"
        );
        assert_eq!(
            route(Stage::SenderHome, "1100", "1000").unwrap_err().0,
            403,
            "sender not homed here"
        );
        assert_eq!(
            route(Stage::DestinationServing, "1100", "1001").unwrap_err().0,
            480,
            "not served here"
        );
        // Groups: the home fans out; elsewhere straight to the home; only members may send.
        assert_eq!(
            route(Stage::SenderServing, "1000", "2000"),
            Ok(Next::Group(number("2000")))
        );
        assert_eq!(route(Stage::GroupHome, "9000", "2000"), Ok(Next::Group(number("2000"))));
        assert_eq!(
            route(Stage::SenderServing, "1101", "2100"),
            Ok(peer("b", 1, Stage::GroupHome))
        );
        assert_eq!(
            route(Stage::SenderServing, "1000", "2100").unwrap_err().0,
            403,
            "not a member"
        );
        assert_eq!(
            route(Stage::GroupHome, "1100", "2100").unwrap_err().0,
            404,
            "not the group's home"
        );
        // A peer known to be down fails at once.
        net.cores[0].peers.iter_mut().for_each(|peer| peer.up = Some(false));
        let a = &net.cores[0];
        assert_eq!(
            a.route_short_data(Stage::SenderHome, &number("1000"), &number("1100"))
                .unwrap_err()
                .0,
            503
        );
    }

    impl Tcf {
        fn cores_address(&self, index: usize) -> SocketAddr {
            self.network.tcf(NAMES[index]).unwrap().sip
        }
    }

    /// F-SDS-01/02 over four hops: 1101 (home b) at a sends to 1001 (home a) at c: a → b
    /// (sender home) → a (destination home) → c (serving) → terminal; the terminal's 200 comes
    /// back along the path, and the body and Content-Type arrive unchanged.
    #[test]
    fn f_sds_01_short_data_crosses_every_stage_and_the_answer_comes_back() {
        let mut net = Net::new(&[("1101", 0), ("1001", 2)]);
        let a = net.address(0);
        let body = "Fire at gate 3 — évacuez";
        net.deliver(
            0,
            terminal("1101"),
            0,
            &message("1101", a, "1001", "pttmsg", TEXT, body),
        );
        assert!(net.received("1101").is_empty(), "no answer before the destination's");
        let delivered = net.received("1001");
        let delivered = requests(&delivered);
        assert_eq!(delivered.len(), 1);
        let request = delivered[0].clone();
        assert_eq!(request.method(), Some(Method::Message));
        assert_eq!(
            request.request_uri_raw(),
            Some(format!("sip:1001@{}", terminal("1001")).as_bytes())
        );
        assert_eq!(request.body(), body.as_bytes());
        assert_eq!(
            request.header(HeaderName::ContentType).unwrap().value_str().unwrap(),
            TEXT
        );
        assert_eq!(ptt(&request), "pttmsg;callerUDN=1101;calleeUDN=1001");
        assert_eq!(user_of(request.from()), Some(number("1101")));
        assert_eq!(asserted_user(&request), Some(number("1101")));
        net.answer(10, "1001", 2, &request, 200);
        assert_eq!(statuses(&net.received("1101")), vec![200]);
        let answered: Vec<&str> = net
            .events
            .iter()
            .filter(|(_, event)| matches!(event, TcfEvent::ShortData { status: 200, .. }))
            .map(|(index, _)| NAMES[*index])
            .collect();
        assert_eq!(answered, vec!["c", "a", "b", "a"], "every hop relayed the 200");
    }

    /// A terminal's error answer goes back with its status; a silent terminal gives 408.
    #[test]
    fn f_sds_01_errors_come_back_along_the_path() {
        let mut net = Net::new(&[("1000", 0), ("1100", 1)]);
        let a = net.address(0);
        net.deliver(0, terminal("1000"), 0, &message("1000", a, "1100", "pttmsg", TEXT, "x"));
        let request = requests(&net.received("1100"))[0].clone();
        net.answer(5, "1100", 1, &request, 486);
        let answers = net.received("1000");
        assert_eq!(statuses(&answers), vec![486]);
        assert_eq!(answers[0].reason_phrase(), Some(b"Whatever".as_slice()));
        // Unanswered (the token in any case): b's client transaction gives up after 64·T1
        // (6.4 s) and the 408 comes back.
        net.deliver(
            100,
            terminal("1000"),
            0,
            &message("1000", a, "1100", "PTTMSG", TEXT, "y"),
        );
        let mut millis = 100;
        let mut answers = Vec::new();
        while millis < 8_000 && answers.is_empty() {
            millis += 100;
            net.tick(millis);
            answers = net.received("1000");
        }
        assert_eq!(statuses(&answers), vec![408]);
        assert!((6_400..=6_700).contains(&millis), "{millis}");
        let tries = net.received("1100");
        assert!(tries.len() > 1, "retransmitted to the terminal");
    }

    /// F-SDS-01 multicast: the group home answers 200 and sends one copy per registered
    /// recipient (members and dispatcher, on every node), none to the sender nor to the
    /// unregistered; F-SDS-02: the dispatcher gets it like a member.
    #[test]
    fn f_sds_01_group_home_sends_one_copy_per_registered_recipient() {
        let mut net = Net::new(&[
            ("1000", 0),
            ("1001", 1),
            ("1100", 1),
            ("1101", 2),
            ("1200", 2),
            ("9000", 1),
        ]);
        let b = net.address(1);
        // 1100 (home b) at b sends to 2000 (home a): b → a.
        net.deliver(
            0,
            terminal("1100"),
            1,
            &message("1100", b, "2000", "pttmsg", "application/octet-stream", "\u{1}\u{2}"),
        );
        assert_eq!(statuses(&net.received("1100")), vec![200], "accepted by the home");
        let mut copies = Vec::new();
        for user in ["1000", "1001", "1101", "1200", "9000"] {
            let got = net.received(user);
            let got = requests(&got);
            assert_eq!(got.len(), 1, "{user} gets one copy");
            let copy = got[0].clone();
            assert_eq!(copy.body(), b"\x01\x02");
            assert_eq!(ptt(&copy), format!("pttmsg;callerUDN=1100;calleeUDN={user};GDN=2000"));
            copies.push((user, copy));
        }
        assert!(net.received("1002").is_empty(), "not registered");
        for (user, copy) in copies {
            let serving = match user {
                "1000" => 0,
                "1001" | "9000" => 1,
                _ => 2,
            };
            let status = if user == "1200" { 480 } else { 200 };
            net.answer(10, user, serving, &copy, status);
        }
        assert!(
            net.received("1100").is_empty(),
            "outcomes are not reported to the sender"
        );
        let outcomes: Vec<(String, u16)> = net
            .events
            .iter()
            .filter_map(|(index, event)| match event {
                TcfEvent::ShortDataToMember { member, status, .. } if *index == 0 => {
                    Some((member.to_string(), *status))
                }
                _ => None,
            })
            .collect();
        assert_eq!(outcomes.len(), 5, "{outcomes:?}");
        assert!(outcomes.contains(&("1200".to_owned(), 480)));
        let counters = net.cores[0].short_data_counters();
        assert_eq!((counters.multicast_copies, counters.multicast_failures), (5, 1));
    }

    /// A member TCF that is down gets no copy; the failure is counted at once.
    #[test]
    fn f_sds_01_a_recipient_tcf_down_is_counted_not_reported() {
        let mut net = Net::new(&[("1000", 0), ("1101", 2)]);
        net.cores[0]
            .peers
            .iter_mut()
            .filter(|peer| peer.name == "c")
            .for_each(|peer| peer.up = Some(false));
        let a = net.address(0);
        net.deliver(
            0,
            terminal("1000"),
            0,
            &message("1000", a, "2000", "pttmsg", TEXT, "hi"),
        );
        assert_eq!(statuses(&net.received("1000")), vec![200]);
        assert!(net.received("1101").is_empty());
        assert_eq!(net.cores[0].short_data_counters().multicast_failures, 1);
        // To a user behind it: 503 at once (from a, the sender's home).
        net.deliver(
            5,
            terminal("1000"),
            0,
            &message("1000", a, "1200", "pttmsg", TEXT, "hi"),
        );
        let answers = net.received("1000");
        assert_eq!(statuses(&answers), vec![503]);
        assert_eq!(
            answers[0].reason_phrase(),
            Some(b"Service Unavailable (next TCF unreachable)".as_slice())
        );
    }

    /// A peer TCF that goes down while short data waits for it: the sender gets 503 as soon as
    /// heartbeats say so (not the 408 of 64·T1 later), and a multicast copy counts as failed.
    #[test]
    fn f_sds_01_short_data_waiting_for_a_peer_that_goes_down_fails_at_once() {
        let mut net = Net::new(&[("1000", 0), ("1200", 2), ("1001", 0), ("1101", 2)]);
        net.dead.push(2);
        let a = net.address(0);
        net.deliver(0, terminal("1000"), 0, &message("1000", a, "1200", "pttmsg", TEXT, "x"));
        net.deliver(1, terminal("1001"), 0, &message("1001", a, "2000", "pttmsg", TEXT, "y"));
        assert_eq!(statuses(&net.received("1001")), vec![200], "the multicast is accepted");
        net.tick(500);
        assert!(statuses(&net.received("1000")).is_empty(), "still waiting");
        net.cores[0]
            .peers
            .iter_mut()
            .filter(|peer| peer.name == "c")
            .for_each(|peer| peer.up = Some(false));
        net.tick(600);
        let answers: Vec<Message> = net
            .received("1000")
            .into_iter()
            .filter(|m| m.status().is_some())
            .collect();
        assert_eq!(statuses(&answers), vec![503]);
        assert_eq!(
            answers[0].reason_phrase(),
            Some(b"Service Unavailable (next TCF unreachable)".as_slice())
        );
        let counters = net.cores[0].short_data_counters();
        assert_eq!(
            (counters.multicast_copies, counters.multicast_failures),
            (3, 2),
            "1000's sent; 1101's and 1200's (at c) failed"
        );
        // The client transactions end later, changing nothing.
        for millis in (700..8_000).step_by(500) {
            net.tick(millis);
        }
        assert!(statuses(&net.received("1000")).is_empty());
        // 1000 never answered its own copy: that one failed with 408.
        assert_eq!(net.cores[0].short_data_counters().multicast_failures, 3);
    }

    /// Refusals: unregistered sender 403, hostile or incomplete requests 400/413, other tokens
    /// keep their 501; nothing is sent on.
    #[test]
    fn refusals_send_nothing_on() {
        let mut net = Net::new(&[("1000", 0), ("1001", 0)]);
        let a = net.address(0);
        let big = "x".repeat(MAX_SHORT_DATA + 1);
        let fits = "x".repeat(MAX_SHORT_DATA);
        let cases: Vec<(String, u16)> = vec![
            (message("1000", a, "1001", "pttmsg;;=", TEXT, "x"), 400),
            (message("1000", a, "1001", "@@@", TEXT, "x"), 400),
            (message("1000", a, "1001", "pttmsg", TEXT, ""), 400),
            (message("1000", a, "1001", "pttmsg", "", "x"), 400),
            (message("1000", a, "1001", "pttmsg", "text/", "x"), 400),
            (message("1000", a, "1001", "pttmsg", TEXT, &big), 413),
            (message("1000", a, "1001", "", TEXT, "x"), 501),
            (message("1000", a, "1001", "pttsomething", TEXT, "x"), 501),
            (message("1000", a, "alice", "pttmsg", TEXT, "x"), 404),
            (message("1002", a, "1001", "pttmsg", TEXT, "x"), 403),
        ];
        for (index, (text, status)) in cases.iter().enumerate() {
            net.deliver(index as u64, terminal("1000"), 0, text);
            assert_eq!(statuses(&net.received("1000")), vec![*status], "case {index}: {text}");
            assert!(net.received("1001").is_empty(), "case {index}");
        }
        // Right at the bound: delivered.
        net.deliver(
            50,
            terminal("1000"),
            0,
            &message("1000", a, "1001", "pttmsg", TEXT, &fits),
        );
        assert_eq!(requests(&net.received("1001")).len(), 1);
        // From another address than the registered one: 403.
        let stranger = SocketAddr::from(([127, 0, 0, 3], 1000));
        net.deliver(60, stranger, 0, &message("1000", a, "1001", "pttmsg", TEXT, "x"));
        assert!(net.received("1001").is_empty());
        let refused: Vec<u16> = net
            .inbox
            .iter()
            .filter_map(|(to, m)| (*to == stranger).then(|| m.status()).flatten())
            .collect();
        assert_eq!(refused, vec![403]);
    }

    proptest::proptest! {
        /// Whatever a registered terminal puts in the Ptt-Extension, the Content-Type and the
        /// body, the nodes never panic, the sender gets exactly one final answer, nothing goes
        /// anywhere but to the nodes and the terminals, and what is delivered is what was sent.
        #[test]
        fn hostile_short_data_never_panics_nor_misroutes(
            token in "(pttmsg|PTTMSG|pttMsg|ptt|pttlocation|)",
            params in "(|;callerUDN=1|;stage=callee-serving;GDN=2000|[ -~]{0,40})",
            content_type in "(text/plain|application/octet-stream;x=\"y\"|[ -~]{0,30})",
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..900),
            destination in "(1001|1200|2000|2100|1050|9000|[0-9]{1,21})",
        ) {
            let mut net = Net::new(&[("1000", 0), ("1001", 0), ("1200", 2), ("9000", 1)]);
            let a = net.address(0);
            let extension = format!("{token}{params}");
            let mut text = message("1000", a, &destination, extension.trim(), content_type.trim(), "").into_bytes();
            let length = format!("Content-Length: {}\r\n", body.len());
            let text_str = String::from_utf8(text.clone()).unwrap().replace("Content-Length: 0\r\n", &length);
            text = text_str.into_bytes();
            text.extend_from_slice(&body);
            let now = net.at(0);
            net.cores[0].handle_datagram(now, terminal("1000"), Bytes::from(text));
            net.settle(0);
            let mut answers = Vec::new();
            for round in 1..4u64 {
                let inbox = std::mem::take(&mut net.inbox);
                for (to, message) in inbox {
                    proptest::prop_assert!(to.ip() == terminal("1000").ip(), "sent to {to}");
                    if to == terminal("1000") && message.status().is_some() {
                        answers.push(message.status());
                    } else if message.is_request() {
                        proptest::prop_assert_eq!(message.body(), &body[..]);
                        let user = to.port().to_string();
                        let serving = if user == "1200" { 2 } else if user == "9000" { 1 } else { 0 };
                        net.answer(round, &user, serving, &message, 200);
                    }
                }
            }
            proptest::prop_assert_eq!(answers.len(), 1, "{:?}", answers);
        }
    }

    #[test]
    fn upstream_status_hides_what_the_sender_cannot_act_on() {
        assert_eq!(upstream_status(200, None, true), (200, Cow::Borrowed("OK")));
        assert_eq!(upstream_status(202, Some(Cow::Borrowed("Accepted")), true).0, 202);
        assert_eq!(upstream_status(408, None, false).0, 408);
        assert_eq!(upstream_status(401, None, true).0, 403);
        assert_eq!(upstream_status(407, None, true).0, 403);
        assert_eq!(upstream_status(302, None, true).0, 480);
        assert_eq!(
            upstream_status(
                480,
                Some(Cow::Borrowed("Temporarily Unavailable (not registered)")),
                true
            ),
            (480, Cow::Borrowed("Temporarily Unavailable (not registered)"))
        );
        assert_eq!(upstream_status(999, None, true).0, 500);
    }
}
