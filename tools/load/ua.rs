//! One simulated terminal or dispatch console: a SIP user agent on its own UDP socket, built on
//! the project's SIP layer (parser, builder, transaction layer, dialogs, digest) and SDP
//! offer/answer.
//!
//! Each UA is a task. Its owner drives it with [`UaHandle`] (REGISTER, INVITE, re-INVITE, BYE;
//! each resolves with the final response or [`UaError::Timeout`] after the scenario's SIP
//! timeout). Requests from the TCF are answered here at once, the way a terminal does, and
//! reported as [`Event`]s: a group INVITE (answered 200 with an SDP answer at the session's RTP
//! port), in-dialog INVITEs carrying `pttaccept` / `pttreleasefloor`, INFO `pttinfo` /
//! `pttwaiting`, BYE. Single-call INVITEs are answered per [`AnswerMode`].
//!
//! Our 2xx to an INVITE is retransmitted (T1 doubling to T2) until the ACK comes (RFC 3261
//! §13.3.1.4); a retransmitted 2xx to our INVITE is ACKed again (RFC 6026).

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use floorcast::sdp::{self, Direction, Format, LocalMedia, Sdp};
use floorcast::sip::dialog::Dialog;
use floorcast::sip::transaction::{
    Input, LayerConfig, Method as TxMethod, Output, Role, TransactionKey, TransactionLayer, TransactionUserEvent,
};
use floorcast::sip::{digest, response_to, HeaderName, Message, MessageBuilder, Method};
use std::os::fd::AsRawFd;

use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

const T1: Duration = Duration::from_millis(500);
const T2: Duration = Duration::from_secs(4);
const TWO_XX_LIFETIME: Duration = Duration::from_secs(32);

/// How a UA answers a single call (an INVITE without a group number).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerMode {
    /// 180, then 200 after the delay.
    Answer(Duration),
    /// 486 Busy Here.
    Busy,
    /// 603 Decline.
    Decline,
    /// 180 and nothing more (the caller's ring timer ends it).
    NoAnswer,
}

/// Why a request of ours got no usable answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UaError {
    /// No final response within the SIP timeout.
    Timeout,
    /// The UA is gone, or the dialog named does not exist.
    Gone,
    /// A message could not be built (a bug).
    Build(String),
}

impl fmt::Display for UaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UaError::Timeout => f.write_str("no final response (timeout)"),
            UaError::Gone => f.write_str("no such dialog"),
            UaError::Build(error) => write!(f, "cannot build request: {error}"),
        }
    }
}

/// The final answer to an INVITE or re-INVITE of ours.
#[derive(Debug, Clone)]
pub struct Answered {
    pub status: u16,
    /// The `Ptt-Extension` of the response ("" when none).
    pub extension: String,
    pub call_id: String,
    /// Where our RTP goes (the SDP answer of a 2xx).
    pub remote_rtp: Option<SocketAddr>,
    pub payload_type: Option<u8>,
    /// When the first 180/183 came, if one did.
    pub ringing_at: Option<Instant>,
    /// From this UA handing the request to the kernel to the kernel's receipt of the final
    /// response: the time the request spent in the network and the nodes, without the
    /// generator's own delays in reading the response (`None` without a kernel timestamp).
    pub round_trip: Option<Duration>,
}

/// Something the TCF did to this UA.
#[derive(Debug, Clone)]
pub struct Event {
    pub terminal: usize,
    pub call_id: String,
    pub at: Instant,
    pub kind: EventKind,
}

#[derive(Debug, Clone)]
pub enum EventKind {
    /// We answered an INVITE with 200 and the ACK came (a group call member session, or a
    /// single call).
    Joined {
        remote_rtp: Option<SocketAddr>,
        payload_type: Option<u8>,
    },
    /// An in-dialog INVITE with `pttaccept` (a queued request was granted).
    FloorGranted,
    /// An in-dialog INVITE with `pttreleasefloor` (the floor was taken away).
    FloorRevoked { cause: String },
    /// INFO `pttinfo;UDN=` (who talks now, or `idle`).
    Talker,
    /// INFO `pttwaiting;position=`.
    Waiting,
    /// A BYE ended the session.
    Ended { reason: String },
    /// The caller cancelled an INVITE we had not answered.
    Cancelled,
}

/// Where a UA's events go: the controller of the session's group, or the single-call controller.
#[derive(Default)]
pub struct Router {
    pub groups: HashMap<String, mpsc::UnboundedSender<Event>>,
    pub calls: Option<mpsc::UnboundedSender<Event>>,
}

impl Router {
    fn send(&self, gdn: Option<&str>, event: Event) {
        let target = match gdn {
            Some(gdn) => self.groups.get(gdn),
            None => self.calls.as_ref(),
        };
        if let Some(target) = target {
            let _ = target.send(event);
        }
    }
}

/// What a UA is.
#[derive(Debug, Clone)]
pub struct UaSpec {
    pub index: usize,
    pub number: String,
    pub password: String,
    pub server: SocketAddr,
    pub bind: IpAddr,
    /// The voice format offered and accepted, and telephone-event.
    pub formats: Arc<Vec<Format>>,
    pub sip_timeout: Duration,
    pub answer: AnswerMode,
    /// The RTP port of this UA's session in each group call it is a member of.
    pub group_ports: HashMap<String, u16>,
    /// The RTP port for single calls.
    pub call_port: Option<u16>,
}

enum Command {
    Register {
        expires: u32,
        reply: oneshot::Sender<Result<u16, UaError>>,
    },
    Invite {
        target: String,
        port: u16,
        gdn: Option<String>,
        reply: oneshot::Sender<Result<Answered, UaError>>,
    },
    ReInvite {
        call_id: String,
        extension: String,
        direction: Direction,
        reply: oneshot::Sender<Result<Answered, UaError>>,
    },
    Bye {
        call_id: String,
        reply: oneshot::Sender<Result<u16, UaError>>,
    },
}

/// The owner's end of a UA.
#[derive(Clone)]
pub struct UaHandle {
    commands: mpsc::UnboundedSender<Command>,
}

impl UaHandle {
    /// REGISTER (answering the digest challenge); the final status.
    pub async fn register(&self, expires: u32) -> Result<u16, UaError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Register { expires, reply })
            .map_err(|_| UaError::Gone)?;
        answer.await.map_err(|_| UaError::Gone)?
    }

    /// INVITE `target` with an offer at RTP `port`; on 2xx the dialog exists (ACK sent).
    pub async fn invite(&self, target: &str, port: u16, gdn: Option<&str>) -> Result<Answered, UaError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Invite {
                target: target.to_owned(),
                port,
                gdn: gdn.map(str::to_owned),
                reply,
            })
            .map_err(|_| UaError::Gone)?;
        answer.await.map_err(|_| UaError::Gone)?
    }

    /// A re-INVITE in dialog `call_id` with `Ptt-Extension: extension` and an offer `direction`.
    pub async fn reinvite(&self, call_id: &str, extension: &str, direction: Direction) -> Result<Answered, UaError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::ReInvite {
                call_id: call_id.to_owned(),
                extension: extension.to_owned(),
                direction,
                reply,
            })
            .map_err(|_| UaError::Gone)?;
        answer.await.map_err(|_| UaError::Gone)?
    }

    /// BYE in dialog `call_id`; the final status.
    pub async fn bye(&self, call_id: &str) -> Result<u16, UaError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Bye {
                call_id: call_id.to_owned(),
                reply,
            })
            .map_err(|_| UaError::Gone)?;
        answer.await.map_err(|_| UaError::Gone)?
    }
}

/// Starts a UA: binds its SIP socket and spawns its task on the current runtime.
pub async fn spawn(spec: UaSpec, router: Arc<Router>) -> std::io::Result<UaHandle> {
    let socket = UdpSocket::bind(SocketAddr::new(spec.bind, 0)).await?;
    floorcast::io::stamp::enable(socket.as_raw_fd());
    let address = socket.local_addr()?;
    let (commands, receiver) = mpsc::unbounded_channel();
    let ua = Ua {
        me: address,
        socket,
        layer: TransactionLayer::new(LayerConfig::default()),
        sessions: HashMap::new(),
        pending: HashMap::new(),
        resend: Vec::new(),
        answers: Vec::new(),
        outbox: Vec::new(),
        incoming: None,
        received_at: None,
        register_call_id: format!("{:016x}@load", rand::random::<u64>()),
        cseq: 0,
        nc: 0,
        router,
        spec,
    };
    tokio::spawn(run(ua, receiver));
    Ok(UaHandle { commands })
}

/// A dialog of this UA.
struct Session {
    dialog: Dialog,
    gdn: Option<String>,
    port: u16,
    /// An INVITE we received and have not answered with a final response yet.
    unanswered: Option<(TransactionKey, Message, Bytes)>,
    remote_rtp: Option<SocketAddr>,
    payload_type: Option<u8>,
    origin_version: u64,
    /// We answered the dialog's INVITE with 200 and wait for the ACK (then: Joined).
    awaiting_ack: bool,
}

enum Pending {
    Register {
        expires: u32,
        authorized: bool,
        reply: Option<oneshot::Sender<Result<u16, UaError>>>,
        deadline: Instant,
    },
    Invite {
        invite: Message,
        offer: Sdp,
        gdn: Option<String>,
        port: u16,
        ringing_at: Option<Instant>,
        reply: Option<oneshot::Sender<Result<Answered, UaError>>>,
        deadline: Instant,
        sent_at: Instant,
    },
    ReInvite {
        call_id: String,
        offer: Sdp,
        reply: Option<oneshot::Sender<Result<Answered, UaError>>>,
        deadline: Instant,
        sent_at: Instant,
    },
    Bye {
        call_id: String,
        reply: Option<oneshot::Sender<Result<u16, UaError>>>,
        deadline: Instant,
    },
    /// A 2xx was ACKed with this; a retransmitted 2xx gets it again.
    Acked(Bytes),
    Done,
}

impl Pending {
    fn deadline(&self) -> Option<Instant> {
        match self {
            Pending::Register {
                reply: Some(_),
                deadline,
                ..
            }
            | Pending::Invite {
                reply: Some(_),
                deadline,
                ..
            }
            | Pending::ReInvite {
                reply: Some(_),
                deadline,
                ..
            }
            | Pending::Bye {
                reply: Some(_),
                deadline,
                ..
            } => Some(*deadline),
            _ => None,
        }
    }

    /// Resolves the request with an error (once).
    fn fail(&mut self, error: UaError) {
        match std::mem::replace(self, Pending::Done) {
            Pending::Register { reply: Some(reply), .. } | Pending::Bye { reply: Some(reply), .. } => {
                let _ = reply.send(Err(error));
            }
            Pending::Invite { reply: Some(reply), .. } | Pending::ReInvite { reply: Some(reply), .. } => {
                let _ = reply.send(Err(error));
            }
            other => *self = other,
        }
    }
}

/// Our 2xx to an INVITE, sent again until the ACK.
struct Resend {
    call_id: String,
    cseq: u32,
    bytes: Bytes,
    next: Instant,
    interval: Duration,
    until: Instant,
}

struct Ua {
    spec: UaSpec,
    me: SocketAddr,
    socket: UdpSocket,
    layer: TransactionLayer<SocketAddr>,
    sessions: HashMap<String, Session>,
    pending: HashMap<TransactionKey, Pending>,
    resend: Vec<Resend>,
    /// Single calls to answer later: (when, Call-ID).
    answers: Vec<(Instant, String)>,
    outbox: Vec<(Bytes, SocketAddr)>,
    incoming: Option<Message>,
    /// The kernel receive time of the datagram being handled, if it carries one.
    received_at: Option<Instant>,
    register_call_id: String,
    cseq: u32,
    nc: u32,
    router: Arc<Router>,
}

async fn run(mut ua: Ua, mut commands: mpsc::UnboundedReceiver<Command>) {
    // SIP from a TCF is a few hundred bytes to a few KiB; larger datagrams are cut and refused.
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let deadline = ua
            .next_deadline()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            received = ua.socket.async_io(Interest::READABLE, || {
                floorcast::io::stamp::recv_from(ua.socket.as_raw_fd(), &mut buffer)
            }) => {
                if let Ok((length, from, wall_ns)) = received {
                    ua.received_at = wall_ns.map(floorcast::io::stamp::instant_of);
                    ua.datagram(Bytes::copy_from_slice(&buffer[..length]), from);
                    ua.received_at = None;
                }
            }
            command = commands.recv() => match command {
                Some(command) => ua.command(command),
                None => break,
            },
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => ua.timers(),
        }
        for (bytes, destination) in std::mem::take(&mut ua.outbox) {
            let _ = ua.socket.send_to(&bytes, destination).await;
        }
    }
}

fn token() -> String {
    format!("{:016x}", rand::random::<u64>())
}

fn branch() -> String {
    format!("z9hG4bK{:016x}", rand::random::<u64>())
}

/// The transaction key of a message: its top Via branch and sent-by, its CSeq method.
fn transaction_key(message: &Message) -> Option<TransactionKey> {
    let via = message.top_via().ok()?;
    let cseq = message.cseq().ok()?;
    let sent_by = match via.port() {
        Some(port) => format!("{}:{port}", via.host_raw()),
        None => via.host_raw().to_owned(),
    };
    TransactionKey::new(via.branch()?, &sent_by, TxMethod::from_token(cseq.method.as_str())).ok()
}

/// The `Ptt-Extension` of a message: its token (lowercase) and parameters (names lowercase).
pub fn extension(message: &Message) -> (String, HashMap<String, String>) {
    let Ok(Some(ext)) = message.ptt_extension() else {
        return (String::new(), HashMap::new());
    };
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
    (ext.value().to_ascii_lowercase(), params)
}

fn extension_text(message: &Message) -> String {
    message
        .headers_named("Ptt-Extension")
        .next()
        .and_then(|header| header.value_str().map(|value| value.into_owned()))
        .unwrap_or_default()
}

/// The ACK for a non-2xx final response to our INVITE (RFC 3261 §17.1.1.3).
fn ack_for_failure(invite: &[u8], response: &[u8]) -> Option<Bytes> {
    let invite = Message::parse_datagram(Bytes::copy_from_slice(invite)).ok()?;
    let response = Message::parse_datagram(Bytes::copy_from_slice(response)).ok()?;
    let uri = std::str::from_utf8(invite.request_uri_raw()?).ok()?;
    MessageBuilder::request(Method::Ack, uri)
        .header(HeaderName::Via, invite.header(HeaderName::Via)?.value)
        .header(HeaderName::MaxForwards, "70")
        .header(HeaderName::From, invite.header(HeaderName::From)?.value)
        .header(HeaderName::To, response.header(HeaderName::To)?.value)
        .header(HeaderName::CallId, invite.call_id().ok()?)
        .header(HeaderName::CSeq, format!("{} ACK", invite.cseq().ok()?.number))
        .build_bytes()
        .ok()
}

fn voice_payload_type(negotiated: &sdp::Negotiated) -> Option<u8> {
    negotiated.voice().map(|voice| voice.payload_type)
}

impl Ua {
    fn contact(&self) -> String {
        format!("<sip:{}@{}>", self.spec.number, self.me)
    }

    fn local_media(&self, port: u16, direction: Direction, version: u64) -> LocalMedia<'_> {
        let mut local = LocalMedia::new(self.spec.bind, port, &self.spec.formats);
        // RTCP to the RTP port: one socket per session receives both (RTCP is told apart).
        local.rtcp_port = port;
        local.direction = direction;
        local.single_codec = true;
        local.origin = sdp::SessionOrigin {
            id: u64::from(port),
            version,
        };
        local
    }

    fn next_deadline(&self) -> Option<Instant> {
        let mut next = self.layer.poll_timeout();
        let mut consider = |at: Instant| next = Some(next.map_or(at, |next: Instant| next.min(at)));
        for pending in self.pending.values() {
            if let Some(deadline) = pending.deadline() {
                consider(deadline);
            }
        }
        for resend in &self.resend {
            consider(resend.next);
        }
        for (at, _) in &self.answers {
            consider(*at);
        }
        next
    }

    fn timers(&mut self) {
        let now = Instant::now();
        self.layer.handle_timeout(now);
        for pending in self.pending.values_mut() {
            if pending.deadline().is_some_and(|deadline| deadline <= now) {
                pending.fail(UaError::Timeout);
            }
        }
        let mut outbox = Vec::new();
        let server = self.spec.server;
        self.resend.retain_mut(|resend| {
            if resend.until <= now {
                return false;
            }
            if resend.next <= now {
                outbox.push((resend.bytes.clone(), server));
                resend.interval = (resend.interval * 2).min(T2);
                resend.next = now + resend.interval;
            }
            true
        });
        self.outbox.extend(outbox);
        let due: Vec<String> = self
            .answers
            .iter()
            .filter(|(at, _)| *at <= now)
            .map(|(_, call_id)| call_id.clone())
            .collect();
        self.answers.retain(|(at, _)| *at > now);
        for call_id in due {
            self.answer_invite(now, &call_id);
        }
        self.drain(now);
    }

    // ---- input ----------------------------------------------------------------------------

    fn datagram(&mut self, bytes: Bytes, from: SocketAddr) {
        let now = Instant::now();
        let Ok(message) = Message::parse_datagram(bytes.clone()) else {
            return;
        };
        let Some(key) = transaction_key(&message) else {
            return;
        };
        let input = if let Some(method) = message.method() {
            let method = TxMethod::from_token(method.as_str());
            self.incoming = Some(message);
            Input::Request {
                key,
                method,
                bytes,
                reply_to: from,
                reliable: false,
            }
        } else {
            let Some(status) = message.status() else { return };
            self.incoming = Some(message);
            Input::Response { key, status, bytes }
        };
        let _ = self.layer.handle_input(now, input);
        self.drain(now);
        self.incoming = None;
    }

    fn parsed(&mut self, bytes: Bytes) -> Option<Message> {
        match self.incoming.take() {
            Some(message) if message.as_bytes() == &bytes[..] => Some(message),
            _ => Message::parse_datagram(bytes).ok(),
        }
    }

    fn drain(&mut self, now: Instant) {
        while let Some(output) = self.layer.poll_output() {
            match output {
                Output::Transmit { bytes, destination, .. } => self.outbox.push((bytes, destination)),
                Output::NeedAck { key, request, response } => {
                    if let Some(ack) = ack_for_failure(&request, &response) {
                        let _ = self.layer.send_ack(&key, ack);
                    }
                }
                Output::NeedTrying { key, request } => {
                    if let Ok(request) = Message::parse_datagram(request) {
                        if let Ok(trying) =
                            response_to(&request, 100, "Trying", None).and_then(|builder| builder.build_bytes())
                        {
                            let _ = self.layer.respond(now, &key, 100, trying);
                        }
                    }
                }
                Output::ToTransactionUser(event) => self.transaction_user(now, event),
            }
        }
    }

    fn transaction_user(&mut self, now: Instant, event: TransactionUserEvent) {
        match event {
            TransactionUserEvent::NewRequest { key, bytes, .. } => {
                if let Some(request) = self.parsed(bytes) {
                    self.request(now, key, request);
                }
            }
            TransactionUserEvent::Ack { bytes, .. } => {
                if let Some(ack) = self.parsed(bytes) {
                    let call_id = ack.call_id().unwrap_or("").to_owned();
                    let cseq = ack.cseq().map_or(0, |cseq| cseq.number);
                    self.resend
                        .retain(|resend| !(resend.call_id == call_id && resend.cseq == cseq));
                    if let Some(session) = self.sessions.get_mut(&call_id) {
                        if std::mem::take(&mut session.awaiting_ack) {
                            let kind = EventKind::Joined {
                                remote_rtp: session.remote_rtp,
                                payload_type: session.payload_type,
                            };
                            let gdn = session.gdn.clone();
                            self.emit(gdn.as_deref(), &call_id, now, kind);
                        }
                    }
                }
            }
            TransactionUserEvent::Response { key, status, bytes } => {
                if let Some(response) = self.parsed(bytes) {
                    self.response(now, key, status, response);
                }
            }
            TransactionUserEvent::Timeout {
                role: Role::Client,
                key,
            }
            | TransactionUserEvent::TransportError {
                role: Role::Client,
                key,
            } => {
                if let Some(pending) = self.pending.get_mut(&key) {
                    pending.fail(UaError::Timeout);
                }
            }
            TransactionUserEvent::Terminated {
                role: Role::Client,
                key,
            } => {
                if let Some(mut pending) = self.pending.remove(&key) {
                    pending.fail(UaError::Timeout);
                }
            }
            _ => {}
        }
    }

    fn emit(&self, gdn: Option<&str>, call_id: &str, at: Instant, kind: EventKind) {
        self.router.send(
            gdn,
            Event {
                terminal: self.spec.index,
                call_id: call_id.to_owned(),
                at,
                kind,
            },
        );
    }

    /// Answers `request` on server transaction `key`.
    #[allow(clippy::too_many_arguments)]
    fn respond(
        &mut self,
        now: Instant,
        key: &TransactionKey,
        request: &Message,
        status: u16,
        reason: &str,
        tag: Option<&str>,
        body: Option<Bytes>,
    ) -> Option<Message> {
        let mut builder = response_to(request, status, reason, tag).ok()?;
        if (101..300).contains(&status) && request.method() == Some(Method::Invite) {
            builder = builder.header(HeaderName::Contact, self.contact());
        }
        if let Some(body) = body {
            builder = builder.body("application/sdp", body);
        }
        let response = builder.build().ok()?;
        let _ = self.layer.respond(now, key, status, response.to_bytes());
        if (200..300).contains(&status) && request.method() == Some(Method::Invite) {
            self.resend.push(Resend {
                call_id: request.call_id().unwrap_or("").to_owned(),
                cseq: request.cseq().map_or(0, |cseq| cseq.number),
                bytes: response.to_bytes(),
                next: now + T1,
                interval: T1,
                until: now + TWO_XX_LIFETIME,
            });
        }
        Some(response)
    }

    fn request(&mut self, now: Instant, key: TransactionKey, request: Message) {
        let Some(method) = request.method().map(|method| method.as_str().to_owned()) else {
            return;
        };
        let in_dialog = request.to().ok().and_then(|to| to.tag()).is_some();
        match method.as_str() {
            "INVITE" if !in_dialog => self.new_invite(now, key, request),
            "CANCEL" => self.cancel(now, key, request),
            _ if in_dialog => self.in_dialog(now, key, request, &method),
            "OPTIONS" | "MESSAGE" | "NOTIFY" => {
                self.respond(now, &key, &request, 200, "OK", Some(&token()), None);
            }
            _ => {
                self.respond(
                    now,
                    &key,
                    &request,
                    481,
                    "Call/Transaction Does Not Exist",
                    Some(&token()),
                    None,
                );
            }
        }
    }

    fn new_invite(&mut self, now: Instant, key: TransactionKey, request: Message) {
        let (_, params) = extension(&request);
        let gdn = params.get("gdn").cloned();
        let port = match &gdn {
            Some(gdn) => self.spec.group_ports.get(gdn).copied(),
            None => self.spec.call_port,
        };
        let tag = token();
        let Some(port) = port else {
            self.respond(
                now,
                &key,
                &request,
                480,
                "Temporarily Unavailable (not in this scenario)",
                Some(&tag),
                None,
            );
            return;
        };
        let call_id = request.call_id().unwrap_or("").to_owned();
        let answer = sdp::parse(request.body())
            .ok()
            .and_then(|offer| sdp::answer(&offer, &self.local_media(port, Direction::SendRecv, 1)).ok());
        let Some(answer) = answer else {
            self.respond(now, &key, &request, 488, "Not Acceptable Here", Some(&tag), None);
            return;
        };
        let Ok(dialog) = Dialog::uas(&request, &tag, &self.contact()) else {
            self.respond(now, &key, &request, 400, "Bad Request", Some(&tag), None);
            return;
        };
        let body = Bytes::from(answer.sdp.to_bytes());
        self.sessions.insert(
            call_id.clone(),
            Session {
                dialog,
                gdn: gdn.clone(),
                port,
                unanswered: Some((key.clone(), request.clone(), body)),
                remote_rtp: answer.negotiated.remote_rtp,
                payload_type: voice_payload_type(&answer.negotiated),
                origin_version: 1,
                awaiting_ack: false,
            },
        );
        let mode = if gdn.is_some() {
            AnswerMode::Answer(Duration::ZERO)
        } else {
            self.spec.answer
        };
        match mode {
            AnswerMode::Answer(delay) if delay.is_zero() => self.answer_invite(now, &call_id),
            AnswerMode::Answer(delay) => {
                self.respond(now, &key, &request, 180, "Ringing", Some(&tag), None);
                self.answers.push((now + delay, call_id));
            }
            AnswerMode::NoAnswer => {
                self.respond(now, &key, &request, 180, "Ringing", Some(&tag), None);
            }
            AnswerMode::Busy | AnswerMode::Decline => {
                let (status, reason) = if mode == AnswerMode::Busy {
                    (486, "Busy Here")
                } else {
                    (603, "Decline")
                };
                self.sessions.remove(&call_id);
                self.respond(now, &key, &request, status, reason, Some(&tag), None);
            }
        }
    }

    /// Sends the 200 to an INVITE we hold unanswered.
    fn answer_invite(&mut self, now: Instant, call_id: &str) {
        let Some(session) = self.sessions.get_mut(call_id) else {
            return;
        };
        let Some((key, request, body)) = session.unanswered.take() else {
            return;
        };
        let tag = session.dialog.id().local_tag.clone();
        let Some(response) = self.respond(now, &key, &request, 200, "OK", Some(&tag), Some(body)) else {
            return;
        };
        let Some(session) = self.sessions.get_mut(call_id) else {
            return;
        };
        let _ = session.dialog.confirm(&response);
        // Joined once the ACK comes: then the TCF has taken our answer (and pointed its leg at
        // our RTP socket), so what is sent from then on must reach us.
        session.awaiting_ack = true;
    }

    fn cancel(&mut self, now: Instant, key: TransactionKey, request: Message) {
        let call_id = request.call_id().unwrap_or("").to_owned();
        self.respond(now, &key, &request, 200, "OK", Some(&token()), None);
        let Some(session) = self.sessions.get_mut(&call_id) else {
            return;
        };
        if let Some((invite_key, invite, _)) = session.unanswered.take() {
            let tag = session.dialog.id().local_tag.clone();
            let gdn = session.gdn.clone();
            self.sessions.remove(&call_id);
            self.respond(now, &invite_key, &invite, 487, "Request Terminated", Some(&tag), None);
            self.emit(gdn.as_deref(), &call_id, now, EventKind::Cancelled);
        }
    }

    fn in_dialog(&mut self, now: Instant, key: TransactionKey, request: Message, method: &str) {
        let call_id = request.call_id().unwrap_or("").to_owned();
        let checked = match self.sessions.get_mut(&call_id) {
            None => Err((481, "Call/Transaction Does Not Exist")),
            Some(session) => session
                .dialog
                .check_request(&request)
                .map_err(|error| error.status().unwrap_or((481, "Call/Transaction Does Not Exist"))),
        };
        if let Err((status, reason)) = checked {
            self.respond(now, &key, &request, status, reason, None, None);
            return;
        }
        let (token, params) = extension(&request);
        let Some(session) = self.sessions.get(&call_id) else {
            return;
        };
        let gdn = session.gdn.clone();
        match method {
            "INVITE" => {
                let version = session.origin_version + 1;
                let local = self.local_media(session.port, Direction::SendRecv, version);
                let body = match sdp::parse(request.body()) {
                    Ok(offer) => sdp::answer(&offer, &local).ok().map(|answer| answer.sdp.to_bytes()),
                    Err(_) => Some(sdp::offer(&local).to_bytes()),
                };
                if let Some(session) = self.sessions.get_mut(&call_id) {
                    session.origin_version = version;
                }
                self.respond(now, &key, &request, 200, "OK", None, body.map(Bytes::from));
                match token.as_str() {
                    "pttaccept" => self.emit(gdn.as_deref(), &call_id, now, EventKind::FloorGranted),
                    "pttreleasefloor" => {
                        let cause = params.get("cause").cloned().unwrap_or_default();
                        self.emit(gdn.as_deref(), &call_id, now, EventKind::FloorRevoked { cause });
                    }
                    _ => {}
                }
            }
            "INFO" => {
                self.respond(now, &key, &request, 200, "OK", None, None);
                match token.as_str() {
                    "pttinfo" => self.emit(gdn.as_deref(), &call_id, now, EventKind::Talker),
                    "pttwaiting" => self.emit(gdn.as_deref(), &call_id, now, EventKind::Waiting),
                    _ => {}
                }
            }
            "BYE" => {
                self.respond(now, &key, &request, 200, "OK", None, None);
                self.sessions.remove(&call_id);
                self.resend.retain(|resend| resend.call_id != call_id);
                let reason = extension_text(&request);
                self.emit(gdn.as_deref(), &call_id, now, EventKind::Ended { reason });
            }
            _ => {
                self.respond(now, &key, &request, 200, "OK", None, None);
            }
        }
    }

    fn response(&mut self, now: Instant, key: TransactionKey, status: u16, response: Message) {
        let Some(pending) = self.pending.get_mut(&key) else {
            return;
        };
        match pending {
            Pending::Register {
                expires,
                authorized,
                reply,
                ..
            } => {
                if status < 200 {
                    return;
                }
                let challenged = matches!(status, 401 | 407) && !*authorized;
                let expires = *expires;
                let Some(sender) = reply.take() else { return };
                *pending = Pending::Done;
                if challenged {
                    match self.authorization(&response) {
                        Some(authorization) => self.send_register(now, expires, Some(authorization), sender),
                        None => {
                            let _ = sender.send(Ok(status));
                        }
                    }
                } else {
                    let _ = sender.send(Ok(status));
                }
            }
            Pending::Invite {
                ringing_at,
                invite,
                offer,
                gdn,
                port,
                reply,
                sent_at,
                ..
            } => {
                if status < 200 {
                    if status >= 180 && ringing_at.is_none() {
                        *ringing_at = Some(now);
                    }
                    return;
                }
                let call_id = invite.call_id().unwrap_or("").to_owned();
                let mut answered = Answered {
                    status,
                    extension: extension_text(&response),
                    call_id: call_id.clone(),
                    remote_rtp: None,
                    payload_type: None,
                    ringing_at: *ringing_at,
                    round_trip: self.received_at.map(|at| at.saturating_duration_since(*sent_at)),
                };
                let reply = reply.take();
                if (200..300).contains(&status) {
                    let negotiated = sdp::parse(response.body())
                        .ok()
                        .and_then(|answer| sdp::parse_answer(offer, &answer).ok());
                    answered.remote_rtp = negotiated.as_ref().and_then(|n| n.remote_rtp);
                    answered.payload_type = negotiated.as_ref().and_then(voice_payload_type);
                    let session = Dialog::uac(invite, &response).ok().map(|dialog| Session {
                        dialog,
                        gdn: gdn.clone(),
                        port: *port,
                        unanswered: None,
                        remote_rtp: answered.remote_rtp,
                        payload_type: answered.payload_type,
                        origin_version: 1,
                        awaiting_ack: false,
                    });
                    let cseq = invite.cseq().map_or(1, |cseq| cseq.number);
                    let ack = session.as_ref().and_then(|session| {
                        session
                            .dialog
                            .ack_for(cseq, &branch(), &self.me.to_string(), "UDP")
                            .build_bytes()
                            .ok()
                    });
                    *pending = Pending::Acked(ack.clone().unwrap_or_default());
                    if let Some(ack) = ack {
                        self.outbox.push((ack, self.spec.server));
                    }
                    if let Some(session) = session {
                        self.sessions.insert(call_id, session);
                    }
                } else {
                    *pending = Pending::Done;
                }
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(answered));
                }
            }
            Pending::ReInvite {
                call_id,
                offer,
                reply,
                sent_at,
                ..
            } => {
                if status < 200 {
                    return;
                }
                let call_id = call_id.clone();
                let mut answered = Answered {
                    status,
                    extension: extension_text(&response),
                    call_id: call_id.clone(),
                    remote_rtp: None,
                    payload_type: None,
                    ringing_at: None,
                    round_trip: self.received_at.map(|at| at.saturating_duration_since(*sent_at)),
                };
                let reply = reply.take();
                let mut ack = None;
                if (200..300).contains(&status) {
                    let negotiated = sdp::parse(response.body())
                        .ok()
                        .and_then(|answer| sdp::parse_answer(offer, &answer).ok());
                    answered.remote_rtp = negotiated.as_ref().and_then(|n| n.remote_rtp);
                    answered.payload_type = negotiated.as_ref().and_then(voice_payload_type);
                    let cseq = response.cseq().map_or(1, |cseq| cseq.number);
                    let me = self.me.to_string();
                    if let Some(session) = self.sessions.get_mut(&call_id) {
                        let _ = session.dialog.check_response(&response);
                        ack = session.dialog.ack_for(cseq, &branch(), &me, "UDP").build_bytes().ok();
                    }
                }
                if let Some(pending) = self.pending.get_mut(&key) {
                    *pending = match &ack {
                        Some(ack) => Pending::Acked(ack.clone()),
                        None => Pending::Done,
                    };
                }
                if let Some(ack) = ack {
                    self.outbox.push((ack, self.spec.server));
                }
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(answered));
                }
            }
            Pending::Bye { call_id, reply, .. } => {
                if status < 200 {
                    return;
                }
                let call_id = call_id.clone();
                if let Some(reply) = reply.take() {
                    let _ = reply.send(Ok(status));
                }
                *pending = Pending::Done;
                self.sessions.remove(&call_id);
            }
            Pending::Acked(ack) => {
                if (200..300).contains(&status) && !ack.is_empty() {
                    self.outbox.push((ack.clone(), self.spec.server));
                }
            }
            Pending::Done => {}
        }
    }

    fn authorization(&mut self, challenge: &Message) -> Option<String> {
        let challenges: Vec<digest::Challenge> = challenge
            .headers_of(HeaderName::WwwAuthenticate)
            .chain(challenge.headers_of(HeaderName::ProxyAuthenticate))
            .filter_map(|header| header.value_str())
            .filter_map(|value| digest::parse_challenge(&value).ok())
            .collect();
        let chosen = digest::choose(&challenges)?;
        self.nc += 1;
        let cnonce = digest::new_cnonce(&mut rand::rng());
        Some(digest::respond(
            chosen,
            &self.spec.number,
            &self.spec.password,
            "REGISTER",
            &format!("sip:{}", self.spec.server),
            self.nc,
            &cnonce,
        ))
    }

    // ---- commands ---------------------------------------------------------------------------

    fn command(&mut self, command: Command) {
        let now = Instant::now();
        match command {
            Command::Register { expires, reply } => self.send_register(now, expires, None, reply),
            Command::Invite {
                target,
                port,
                gdn,
                reply,
            } => self.send_invite(now, &target, port, gdn, reply),
            Command::ReInvite {
                call_id,
                extension,
                direction,
                reply,
            } => self.send_reinvite(now, &call_id, &extension, direction, reply),
            Command::Bye { call_id, reply } => self.send_bye(now, &call_id, reply),
        }
        self.drain(now);
    }

    fn send_register(
        &mut self,
        now: Instant,
        expires: u32,
        authorization: Option<String>,
        reply: oneshot::Sender<Result<u16, UaError>>,
    ) {
        self.cseq += 1;
        let server = self.spec.server;
        let user = &self.spec.number;
        let branch = branch();
        let mut builder = MessageBuilder::request(Method::Register, &format!("sip:{server}"))
            .header(
                HeaderName::Via,
                format!("SIP/2.0/UDP {};branch={branch};rport", self.me),
            )
            .header(HeaderName::MaxForwards, "70")
            .header(HeaderName::From, format!("<sip:{user}@{server}>;tag={}", token()))
            .header(HeaderName::To, format!("<sip:{user}@{server}>"))
            .header(HeaderName::CallId, &self.register_call_id)
            .header(HeaderName::CSeq, format!("{} REGISTER", self.cseq))
            .header(HeaderName::Contact, format!("{};expires={expires}", self.contact()))
            .raw_header("Ptt-Extension", "pttregister");
        if let Some(authorization) = &authorization {
            builder = builder.header(HeaderName::Authorization, authorization);
        }
        let bytes = match builder.build_bytes() {
            Ok(bytes) => bytes,
            Err(error) => {
                let _ = reply.send(Err(UaError::Build(error.to_string())));
                return;
            }
        };
        let pending = Pending::Register {
            expires,
            authorized: authorization.is_some(),
            reply: Some(reply),
            deadline: now + self.spec.sip_timeout,
        };
        let _ = self.start_with_reply(now, &branch, "REGISTER", bytes, pending);
    }

    fn send_invite(
        &mut self,
        now: Instant,
        target: &str,
        port: u16,
        gdn: Option<String>,
        reply: oneshot::Sender<Result<Answered, UaError>>,
    ) {
        self.cseq += 1;
        let server = self.spec.server;
        let user = &self.spec.number;
        let branch = branch();
        let offer = sdp::offer(&self.local_media(port, Direction::SendRecv, 1));
        let built = MessageBuilder::request(Method::Invite, &format!("sip:{target}@{server}"))
            .header(
                HeaderName::Via,
                format!("SIP/2.0/UDP {};branch={branch};rport", self.me),
            )
            .header(HeaderName::MaxForwards, "70")
            .header(HeaderName::From, format!("<sip:{user}@{server}>;tag={}", token()))
            .header(HeaderName::To, format!("<sip:{target}@{server}>"))
            .header(HeaderName::CallId, format!("{}@load", token()))
            .header(HeaderName::CSeq, "1 INVITE")
            .header(HeaderName::Contact, self.contact())
            .body("application/sdp", Bytes::from(offer.to_bytes()))
            .build();
        let invite = match built {
            Ok(invite) => invite,
            Err(error) => {
                let _ = reply.send(Err(UaError::Build(error.to_string())));
                return;
            }
        };
        let pending = Pending::Invite {
            invite: invite.clone(),
            offer,
            gdn,
            port,
            ringing_at: None,
            reply: Some(reply),
            deadline: now + self.spec.sip_timeout,
            sent_at: now,
        };
        let _ = self.start_with_reply(now, &branch, "INVITE", invite.to_bytes(), pending);
    }

    /// Like [`Ua::start`]; on failure the pending request's reply gets the error.
    fn start_with_reply(
        &mut self,
        now: Instant,
        branch: &str,
        method: &str,
        bytes: Bytes,
        pending: Pending,
    ) -> Result<(), ()> {
        let method_tx = TxMethod::from_token(method);
        let key = match TransactionKey::new(branch, &self.me.to_string(), method_tx.clone()) {
            Ok(key) => key,
            Err(error) => {
                let mut pending = pending;
                pending.fail(UaError::Build(error.to_string()));
                return Err(());
            }
        };
        if let Err(error) = self
            .layer
            .send_request(now, key.clone(), method_tx, bytes, self.spec.server, false)
        {
            let mut pending = pending;
            pending.fail(UaError::Build(error.to_string()));
            return Err(());
        }
        self.pending.insert(key, pending);
        Ok(())
    }

    fn send_reinvite(
        &mut self,
        now: Instant,
        call_id: &str,
        extension: &str,
        direction: Direction,
        reply: oneshot::Sender<Result<Answered, UaError>>,
    ) {
        let me = self.me.to_string();
        let Some(session) = self.sessions.get(call_id) else {
            let _ = reply.send(Err(UaError::Gone));
            return;
        };
        let version = session.origin_version + 1;
        let offer = sdp::offer(&self.local_media(session.port, direction, version));
        let branch = branch();
        let Some(session) = self.sessions.get_mut(call_id) else {
            return;
        };
        session.origin_version = version;
        let built = session
            .dialog
            .request(Method::Invite, &branch, &me, "UDP")
            .map(|builder| {
                builder
                    .raw_header("Ptt-Extension", extension)
                    .body("application/sdp", Bytes::from(offer.to_bytes()))
                    .build_bytes()
            });
        let bytes = match built {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(error)) => {
                let _ = reply.send(Err(UaError::Build(error.to_string())));
                return;
            }
            Err(error) => {
                let _ = reply.send(Err(UaError::Build(error.to_string())));
                return;
            }
        };
        let pending = Pending::ReInvite {
            call_id: call_id.to_owned(),
            offer,
            reply: Some(reply),
            deadline: now + self.spec.sip_timeout,
            sent_at: now,
        };
        let _ = self.start_with_reply(now, &branch, "INVITE", bytes, pending);
    }

    fn send_bye(&mut self, now: Instant, call_id: &str, reply: oneshot::Sender<Result<u16, UaError>>) {
        let me = self.me.to_string();
        let branch = branch();
        let Some(session) = self.sessions.get_mut(call_id) else {
            let _ = reply.send(Err(UaError::Gone));
            return;
        };
        let built = session
            .dialog
            .request(Method::Bye, &branch, &me, "UDP")
            .map(|builder| builder.build_bytes());
        let bytes = match built {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(error)) => {
                let _ = reply.send(Err(UaError::Build(error.to_string())));
                return;
            }
            Err(error) => {
                let _ = reply.send(Err(UaError::Build(error.to_string())));
                return;
            }
        };
        session.dialog.terminate();
        let pending = Pending::Bye {
            call_id: call_id.to_owned(),
            reply: Some(reply),
            deadline: now + self.spec.sip_timeout,
        };
        let _ = self.start_with_reply(now, &branch, "BYE", bytes, pending);
    }
}
