//! A deterministic driver of the sans-IO SIP core for instruction counts (issue 3 and 4):
//! the `sip_calls` bench's single calls across two in-process [`Tcf`]s, or the `sip_register`
//! bench's authenticated REGISTERs against one, with simulated time and no sockets.
//!
//! ```text
//! cargo build --release --example sip_cpu
//! valgrind --tool=callgrind --collect-atstart=no \
//!     --toggle-collect='*Tcf*handle_datagram*' --toggle-collect='*Tcf*handle_timeout*' \
//!     target/release/examples/sip_cpu calls 2000
//! ```
//!
//! Only the nodes' work is counted (the toggled functions); the terminals' side (building
//! requests, answering challenges, parsing what they get) is not. Divide the total by the
//! count given. `calls N`: N calls (INVITE with SDP → 100/180/200 with SDP → ACK, then the
//! caller's BYE → 200, the callee gets ACK and BYE from tcf-2), one every 15 ms of simulated
//! time, so transactions also expire during the run (held 64·T1 = 32 s). `register N`: N
//! authenticated REGISTERs (REGISTER → 401, REGISTER with `Authorization` → 200) from 4,096
//! users, one every millisecond. The media plane is the in-memory fake.
#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use floorcast::control::media::FakeMedia;
use floorcast::control::provisioning::{Network, Subscribers};
use floorcast::control::tcf::{Binding, Now, Output, Registration, Tcf, TcfConfig};
use floorcast::proto::Number;
use floorcast::sip::{digest, HeaderName, Message};

const TCF_1: &str = "127.0.0.1:5061";
const TCF_2: &str = "127.0.0.1:5062";
const CALLER: &str = "127.0.0.1:7000";
const CALLEE: &str = "127.0.0.1:7100";
const USERS: usize = 4096;
const PASSWORD: &str = "secret";

struct Clock {
    start: Instant,
    wall: SystemTime,
    millis: u64,
}

impl Clock {
    fn now(&self) -> Now {
        Now {
            instant: self.start + Duration::from_millis(self.millis),
            wall: self.wall + Duration::from_millis(self.millis),
        }
    }
}

fn node(name: &str, network: &Arc<Network>, subscribers: &Arc<Subscribers>, now: Now, t1_ms: u64) -> Tcf {
    let sip = floorcast::config::Config::from_toml(&format!(
        "[sip]\nrealm = \"bench\"\nt1_ms = {t1_ms}\nmax_transactions = 1048576\n"
    ))
    .unwrap()
    .sip;
    let config = TcfConfig::new(name, sip, [7; 32]).unwrap();
    let mut tcf = Tcf::new(config, network.clone(), subscribers.clone(), now, 1).unwrap();
    tcf.set_media(Box::new(FakeMedia::new()));
    tcf
}

/// The nodes' work on one input (kept out of line so callgrind can toggle on it).
#[inline(never)]
fn deliver(tcf: &mut Tcf, now: Now, from: SocketAddr, bytes: Bytes) {
    tcf.handle_datagram(now, from, bytes);
}

#[inline(never)]
fn tick(tcf: &mut Tcf, now: Now) {
    if tcf.poll_timeout() <= now.instant {
        tcf.handle_timeout(now);
    }
}

/// Datagrams in flight: (from, to, bytes).
type Wire = VecDeque<(SocketAddr, SocketAddr, Bytes)>;

fn drain(tcf: &mut Tcf, wire: &mut Wire) {
    let from = tcf.address();
    while let Some(output) = tcf.poll_output() {
        if let Output::Transmit { destination, bytes } = output {
            wire.push_back((from, destination, bytes));
        }
    }
}

fn calls(count: usize) {
    let network = Arc::new(
        Network::from_toml(
            "network",
            &format!(
                "[[tcf]]\nname = \"tcf-1\"\nsip = \"{TCF_1}\"\nusers = [\"10000-19999\"]\nauth = false\nsecret = \"one\"\n\n\
                 [[tcf]]\nname = \"tcf-2\"\nsip = \"{TCF_2}\"\nusers = [\"20000-29999\"]\nauth = false\nsecret = \"two\"\n"
            ),
        )
        .unwrap(),
    );
    let subscribers = Arc::new(
        Subscribers::from_toml(
            "subscribers",
            &format!(
                "[[user]]\nnumber = \"10000-19999\"\npassword = \"{PASSWORD}\"\n\n\
                 [[user]]\nnumber = \"20000-29999\"\npassword = \"{PASSWORD}\"\n"
            ),
        )
        .unwrap(),
    );
    let mut clock = Clock {
        start: Instant::now(),
        wall: SystemTime::now(),
        millis: 0,
    };
    let now = clock.now();
    let unix = clock.wall.duration_since(UNIX_EPOCH).unwrap().as_secs();
    let mut nodes = [
        node("tcf-1", &network, &subscribers, now, 500),
        node("tcf-2", &network, &subscribers, now, 500),
    ];
    for (index, (base, terminal, serving)) in [(10000, CALLER, "tcf-1"), (20000, CALLEE, "tcf-2")]
        .into_iter()
        .enumerate()
    {
        let users: Vec<Number> = (0..USERS)
            .map(|user| Number::parse(&(base + user).to_string()).unwrap())
            .collect();
        nodes[index].restore(
            users
                .iter()
                .map(|user| Binding {
                    user: user.clone(),
                    contact: format!("<sip:{user}@{terminal}>"),
                    address: terminal.parse().unwrap(),
                    expires_at: unix + 3600,
                })
                .collect(),
            users
                .iter()
                .map(|user| Registration {
                    user: user.clone(),
                    serving: serving.to_owned(),
                    expires_at: unix + 3600,
                })
                .collect(),
            Vec::new(),
            now,
        );
    }
    let addresses: [SocketAddr; 2] = [TCF_1.parse().unwrap(), TCF_2.parse().unwrap()];
    let caller: SocketAddr = CALLER.parse().unwrap();
    let callee: SocketAddr = CALLEE.parse().unwrap();
    let sdp = |port: u16| {
        format!(
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
             m=audio {port} RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n\
             a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\na=sendrecv\r\n"
        )
    };
    let caller_sdp = sdp(4000);
    let callee_sdp = Bytes::from(sdp(6000));
    let mut wire = Wire::new();
    let mut completed = 0;
    let mut byes_answered = 0;
    for call in 0..count {
        clock.millis += 15;
        let now = clock.now();
        for (tcf, _) in nodes.iter_mut().zip(addresses) {
            tick(tcf, now);
            drain(tcf, &mut wire);
        }
        let user = call % USERS;
        let invite = format!(
            "INVITE sip:{callee_number}@{TCF_1} SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bKi{call};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:{caller_number}@{TCF_1}>;tag=f{call}\r\n\
             To: <sip:{callee_number}@{TCF_1}>\r\nCall-ID: c{call}@bench\r\nCSeq: 1 INVITE\r\n\
             Contact: <sip:{caller_number}@{CALLER}>\r\nContent-Type: application/sdp\r\nContent-Length: {length}\r\n\r\n\
             {caller_sdp}",
            callee_number = 20000 + user,
            caller_number = 10000 + user,
            length = caller_sdp.len(),
        );
        wire.push_back((caller, addresses[0], Bytes::from(invite)));
        while let Some((from, to, bytes)) = wire.pop_front() {
            if let Some(index) = addresses.iter().position(|address| *address == to) {
                deliver(&mut nodes[index], now, from, bytes);
                drain(&mut nodes[index], &mut wire);
                continue;
            }
            let message = Message::parse_datagram(bytes).unwrap();
            if to == caller {
                let Some(status) = message.status() else { continue };
                let method = message.cseq().unwrap().method.as_str().to_owned();
                match (method.as_str(), status) {
                    ("INVITE", 200) => {
                        let to_tag = message.to().unwrap().tag().unwrap().to_owned();
                        for (cseq, method) in [(1, "ACK"), (2, "BYE")] {
                            let text = format!(
                                "{method} sip:{callee_number}@{TCF_1} SIP/2.0\r\n\
                                 Via: SIP/2.0/UDP {CALLER};branch=z9hG4bK{method}{call};rport\r\n\
                                 Max-Forwards: 70\r\nFrom: <sip:{caller_number}@{TCF_1}>;tag=f{call}\r\n\
                                 To: <sip:{callee_number}@{TCF_1}>;tag={to_tag}\r\nCall-ID: c{call}@bench\r\n\
                                 CSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n",
                                callee_number = 20000 + user,
                                caller_number = 10000 + user,
                            );
                            wire.push_back((caller, addresses[0], Bytes::from(text)));
                        }
                    }
                    ("BYE", 200) => completed += 1,
                    ("INVITE", 100..=199) => {}
                    (method, status) => panic!("caller got {status} to {method}"),
                }
            } else if to == callee {
                let Some(method) = message.method().map(|method| method.as_str().to_owned()) else {
                    continue;
                };
                let respond = |status: u16, reason: &str, body: Option<Bytes>| {
                    let mut builder = floorcast::sip::response_to(&message, status, reason, Some("t1"))
                        .unwrap()
                        .header(HeaderName::Contact, format!("<sip:{}@{CALLEE}>", 20000 + user));
                    if let Some(body) = body {
                        builder = builder.body("application/sdp", body);
                    }
                    builder.build_bytes().unwrap()
                };
                match method.as_str() {
                    "INVITE" => {
                        wire.push_back((callee, addresses[1], respond(180, "Ringing", None)));
                        wire.push_back((callee, addresses[1], respond(200, "OK", Some(callee_sdp.clone()))));
                    }
                    "BYE" => {
                        byes_answered += 1;
                        wire.push_back((callee, addresses[1], respond(200, "OK", None)));
                    }
                    _ => {}
                }
            }
        }
    }
    assert_eq!(completed, count, "every call completed");
    assert_eq!(byes_answered, count, "every callee got its BYE");
    let stats = [nodes[0].stats(), nodes[1].stats()];
    eprintln!("sip_cpu: {count} calls completed; {stats:?}");
}

fn register(count: usize) {
    let network = Arc::new(
        Network::from_toml(
            "network",
            &format!(
                "[[tcf]]\nname = \"tcf-1\"\nsip = \"{TCF_1}\"\nusers = [\"10000-19999\"]\n\n\
                 [[tcf]]\nname = \"bench-peer\"\nsip = \"{TCF_2}\"\n"
            ),
        )
        .unwrap(),
    );
    let subscribers = Arc::new(
        Subscribers::from_toml(
            "subscribers",
            &format!("[[user]]\nnumber = \"10000-19999\"\npassword = \"{PASSWORD}\"\n"),
        )
        .unwrap(),
    );
    let mut clock = Clock {
        start: Instant::now(),
        wall: SystemTime::now(),
        millis: 0,
    };
    let mut tcf = node("tcf-1", &network, &subscribers, clock.now(), 500);
    let terminal: SocketAddr = CALLER.parse().unwrap();
    let mut nc = vec![0u32; USERS];
    let mut wire = Wire::new();
    let mut registered = 0;
    let text = |branch: usize, user: usize, cseq: u32, authorization: Option<&str>| {
        let auth = authorization
            .map(|value| format!("Authorization: {value}\r\n"))
            .unwrap_or_default();
        Bytes::from(format!(
            "REGISTER sip:{TCF_1} SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bKb{branch}.{cseq};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:{number}@{TCF_1}>;tag=f{branch}\r\nTo: <sip:{number}@{TCF_1}>\r\n\
             Call-ID: {branch}@bench\r\nCSeq: {cseq} REGISTER\r\n\
             Contact: <sip:{number}@{CALLER}>;expires=3600\r\n{auth}Ptt-Extension: pttregister\r\n\
             Content-Length: 0\r\n\r\n",
            number = 10000 + user,
        ))
    };
    for index in 0..count {
        clock.millis += 1;
        let now = clock.now();
        tick(&mut tcf, now);
        drain(&mut tcf, &mut wire);
        wire.clear(); // heartbeats to the (absent) peer
        let user = index % USERS;
        deliver(&mut tcf, now, terminal, text(index, user, 1, None));
        drain(&mut tcf, &mut wire);
        while let Some((_, to, bytes)) = wire.pop_front() {
            if to != terminal {
                continue;
            }
            let message = Message::parse_datagram(bytes).unwrap();
            match message.status() {
                Some(401) => {
                    let challenges: Vec<digest::Challenge> = message
                        .headers_of(HeaderName::WwwAuthenticate)
                        .filter_map(|header| header.value_str())
                        .filter_map(|value| digest::parse_challenge(&value).ok())
                        .collect();
                    let challenge = digest::choose(&challenges).unwrap();
                    nc[user] += 1;
                    let authorization = digest::respond(
                        challenge,
                        &(10000 + user).to_string(),
                        PASSWORD,
                        "REGISTER",
                        &format!("sip:{TCF_1}"),
                        nc[user],
                        &format!("{index:016x}"),
                    );
                    deliver(&mut tcf, now, terminal, text(index, user, 2, Some(&authorization)));
                    drain(&mut tcf, &mut wire);
                }
                Some(200) => registered += 1,
                status => panic!("REGISTER answered {status:?}"),
            }
        }
    }
    assert_eq!(registered, count, "every REGISTER succeeded");
    eprintln!("sip_cpu: {count} authenticated REGISTERs; {:?}", tcf.stats());
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "calls".to_owned());
    let count = args.next().and_then(|count| count.parse().ok()).unwrap_or(1000);
    match mode.as_str() {
        "calls" => calls(count),
        "register" => register(count),
        other => panic!("unknown mode {other} (calls | register)"),
    }
}
