//! Registration (F-REG-01 … F-REG-08) and heartbeat (F-HB-01, F-HB-02) between three real
//! TCF nodes running the example network (`config/example/`): tcf-a homes 1100-1199 and
//! requires TC2 authentication, tcf-b homes 1200-1299 and group 2200, tcf-c homes 1300-1399.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::cluster::*;
use floorcast::control::tcf::TcfEvent;
use floorcast::proto::Number;

const WAIT: Duration = Duration::from_secs(5);
const A: usize = 0;
const B: usize = 1;
const C: usize = 2;

fn number(text: &str) -> Number {
    Number::parse(text).unwrap()
}

/// F-REG-01: a terminal registers through a visited TCF; the V-TCF relays to the H-TCF, which
/// records the serving TCF and answers 200 (no TC2 challenge: tcf-b does not require one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_reg_01_register_success() {
    let cluster = Cluster::start(15100).await;
    cluster.wait_all_up().await;
    let mut events = cluster.node(B).sip.subscribe();
    let mut terminal = Terminal::new("1205", "bravo").await;
    let response = terminal.register(cluster.address(C), 600).await;
    assert_eq!(response.status(), Some(200));
    assert_eq!(response.expires().unwrap(), Some(600));
    expect_event(&mut events, WAIT, |event| {
        matches!(event, TcfEvent::HomeRegistered { user, serving } if user.as_str() == "1205" && serving == "tcf-c")
    })
    .await;
    let registration = cluster.node(B).sip.registration(&number("1205")).await.unwrap();
    assert_eq!(registration.serving, "tcf-c");
    let binding = cluster.node(C).sip.binding(&number("1205")).await.unwrap();
    assert_eq!(binding.address, terminal.address());
    assert!(cluster.node(A).sip.registration(&number("1205")).await.is_none());
    cluster.shutdown().await;
}

/// F-REG-02: the H-TCF (tcf-a) challenges the V-TCF's REGISTER; the V-TCF answers with its
/// TC2 credentials and the registration succeeds. The terminal itself is challenged by its
/// serving TCF (D interface) before anything is relayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_reg_02_register_with_challenge() {
    let cluster = Cluster::start(15200).await;
    cluster.wait_all_up().await;
    let mut events_b = cluster.node(B).sip.subscribe();
    let mut terminal = Terminal::new("1100", "alpha").await;
    // Without credentials the serving TCF challenges at once.
    terminal
        .send(
            cluster.address(B),
            &unauthenticated_register("1100", &terminal, cluster.address(B)),
        )
        .await;
    let challenge = terminal.final_response(WAIT).await;
    assert_eq!(challenge.status(), Some(401));
    let schemes: Vec<String> = challenge
        .headers_of(floorcast::sip::HeaderName::WwwAuthenticate)
        .filter_map(|header| header.value_str().map(|value| value.into_owned()))
        .collect();
    assert_eq!(schemes.len(), 2, "SHA-256 and MD5 challenges");
    assert!(
        schemes[0].contains("SHA-256") && schemes[0].contains("qop=\"auth\""),
        "{schemes:?}"
    );

    let response = terminal.register(cluster.address(B), 300).await;
    assert_eq!(response.status(), Some(200));
    expect_event(
        &mut events_b,
        WAIT,
        |event| matches!(event, TcfEvent::ChallengedByPeer { peer } if peer == "tcf-a"),
    )
    .await;
    let registration = cluster.node(A).sip.registration(&number("1100")).await.unwrap();
    assert_eq!(registration.serving, "tcf-b");
    cluster.shutdown().await;
}

fn unauthenticated_register(user: &str, terminal: &Terminal, server: std::net::SocketAddr) -> String {
    let me = terminal.address();
    format!(
        "REGISTER sip:{server} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKplain{user};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:{user}@{server}>;tag=x\r\nTo: <sip:{user}@{server}>\r\n\
         Call-ID: plain-{user}\r\nCSeq: 1 REGISTER\r\nContact: <sip:{user}@{me}>\r\nContent-Length: 0\r\n\r\n"
    )
}

/// F-REG-03: registration refused: an unknown user gets 404; a wrong password never gets past
/// the challenge; credentials of another user get 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_reg_03_register_failure() {
    let cluster = Cluster::start(15300).await;
    cluster.wait_all_up().await;
    let mut unknown = Terminal::new("1150", "whatever").await;
    assert_eq!(unknown.register(cluster.address(B), 300).await.status(), Some(404));
    let mut wrong = Terminal::new("1200", "not-bravo").await;
    assert_eq!(wrong.register(cluster.address(B), 300).await.status(), Some(401));
    assert!(cluster.node(B).sip.registration(&number("1200")).await.is_none());
    // 1202's valid credentials used to register 1201.
    let mut impostor = Terminal::new("1201", "bravo").await;
    impostor.auth_user = Some("1202".into());
    assert_eq!(impostor.register(cluster.address(B), 300).await.status(), Some(403));
    assert!(cluster.node(B).sip.registration(&number("1201")).await.is_none());
    let mut owner = Terminal::new("1202", "bravo").await;
    assert_eq!(
        owner.register(cluster.address(B), 300).await.status(),
        Some(200),
        "own credentials work"
    );
    cluster.shutdown().await;
}

/// F-REG-04: deregistration (Expires 0) through the V-TCF removes the binding and the home
/// registration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_reg_04_deregister_success() {
    let cluster = Cluster::start(15400).await;
    cluster.wait_all_up().await;
    let mut terminal = Terminal::new("1300", "charlie").await;
    assert_eq!(terminal.register(cluster.address(A), 300).await.status(), Some(200));
    assert!(cluster.node(C).sip.registration(&number("1300")).await.is_some());
    let response = terminal.register(cluster.address(A), 0).await;
    assert_eq!(response.status(), Some(200));
    assert!(cluster.node(C).sip.registration(&number("1300")).await.is_none());
    assert!(cluster.node(A).sip.binding(&number("1300")).await.is_none());
    cluster.shutdown().await;
}

/// F-REG-06 and F-REG-05: a user registers through tcf-c, then through tcf-a: its home (tcf-b)
/// kicks off tcf-c (OPTIONS pttkickoff), which drops the binding and tells the old terminal.
/// A deregistration through the stale tcf-c is then refused by the home: 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_reg_06_kickoff() {
    let cluster = Cluster::start(15500).await;
    cluster.wait_all_up().await;
    let mut old = Terminal::new("1206", "bravo").await;
    assert_eq!(old.register(cluster.address(C), 300).await.status(), Some(200));
    let mut events_c = cluster.node(C).sip.subscribe();
    let mut moved = Terminal::new("1206", "bravo").await;
    assert_eq!(moved.register(cluster.address(A), 300).await.status(), Some(200));
    expect_event(&mut events_c, WAIT, |event| {
        matches!(event, TcfEvent::Unbound { user, reason } if user.as_str() == "1206" && reason.contains("kicked off"))
    })
    .await;
    // The old terminal is told (D-interface kick-off) and answers.
    let kickoff = old.receive(WAIT).await.expect("kick-off OPTIONS");
    assert_eq!(
        kickoff.method().map(|method| method.as_str().to_owned()).as_deref(),
        Some("OPTIONS")
    );
    let extension = kickoff.ptt_extension().unwrap().unwrap();
    assert_eq!(extension.value(), "pttkickoff");
    old.answer_ok(&kickoff, cluster.address(C)).await;
    assert_eq!(
        cluster.node(B).sip.registration(&number("1206")).await.unwrap().serving,
        "tcf-a"
    );
    assert!(cluster.node(C).sip.binding(&number("1206")).await.is_none());
    cluster.shutdown().await;
}

/// F-REG-05: deregistration refused (the subscription state says another TCF serves the user).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_reg_05_deregister_failure() {
    let cluster = Cluster::start(15600).await;
    cluster.wait_all_up().await;
    let mut old = Terminal::new("1207", "bravo").await;
    assert_eq!(old.register(cluster.address(C), 300).await.status(), Some(200));
    let mut moved = Terminal::new("1207", "bravo").await;
    assert_eq!(moved.register(cluster.address(A), 300).await.status(), Some(200));
    // Drain the kick-off the old terminal gets.
    let _ = old.receive(WAIT).await;
    let response = old.register(cluster.address(C), 0).await;
    assert_eq!(response.status(), Some(403));
    assert_eq!(
        cluster.node(B).sip.registration(&number("1207")).await.unwrap().serving,
        "tcf-a"
    );
    cluster.shutdown().await;
}

/// F-REG-07: a user whose home (tcf-a) is not its group's home (2200 on tcf-b): the user home
/// pushes the serving TCF to the group home on registration, and withdraws it on
/// deregistration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_reg_07_group_location_push() {
    let cluster = Cluster::start(15700).await;
    cluster.wait_all_up().await;
    let mut events_b = cluster.node(B).sip.subscribe();
    let mut terminal = Terminal::new("1105", "alpha").await;
    assert_eq!(terminal.register(cluster.address(C), 300).await.status(), Some(200));
    expect_event(&mut events_b, WAIT, |event| {
        matches!(event, TcfEvent::LocationUpdated { user, serving: Some(serving) }
            if user.as_str() == "1105" && serving == "tcf-c")
    })
    .await;
    assert_eq!(
        cluster.node(B).sip.location(&number("1105")).await.unwrap().serving,
        "tcf-c"
    );
    assert_eq!(terminal.register(cluster.address(C), 0).await.status(), Some(200));
    expect_event(
        &mut events_b,
        WAIT,
        |event| matches!(event, TcfEvent::LocationUpdated { user, serving: None } if user.as_str() == "1105"),
    )
    .await;
    cluster.shutdown().await;
}

/// F-REG-08: a registration not refreshed expires at the V-TCF and at the H-TCF, and the group
/// location is withdrawn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_reg_08_expiry() {
    let cluster = Cluster::start(15800).await;
    cluster.wait_all_up().await;
    let mut events_a = cluster.node(A).sip.subscribe();
    let mut events_b = cluster.node(B).sip.subscribe();
    let mut terminal = Terminal::new("1106", "alpha").await;
    assert_eq!(terminal.register(cluster.address(A), 2).await.status(), Some(200));
    expect_event(
        &mut events_b,
        WAIT,
        |event| matches!(event, TcfEvent::LocationUpdated { user, serving: Some(_) } if user.as_str() == "1106"),
    )
    .await;
    expect_event(&mut events_a, WAIT, |event| {
        matches!(event, TcfEvent::HomeDeregistered { user, reason } if user.as_str() == "1106" && reason == &"expired")
    })
    .await;
    expect_event(
        &mut events_b,
        WAIT,
        |event| matches!(event, TcfEvent::LocationUpdated { user, serving: None } if user.as_str() == "1106"),
    )
    .await;
    assert!(cluster.node(A).sip.binding(&number("1106")).await.is_none());
    cluster.shutdown().await;
}

/// F-HB-01: every node heartbeats every other and answers them: all peers up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_hb_01_heartbeat_success() {
    let cluster = Cluster::start(15900).await;
    cluster.wait_all_up().await;
    // A plain OPTIONS from a terminal is answered too (200 with Allow).
    let terminal = Terminal::new("1100", "alpha").await;
    let me = terminal.address();
    let server = cluster.address(A);
    terminal
        .send(
            server,
            &format!(
                "OPTIONS sip:{server} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKhb1;rport\r\nMax-Forwards: 70\r\n\
                 From: <sip:1100@{server}>;tag=1\r\nTo: <sip:{server}>\r\nCall-ID: hb1\r\nCSeq: 1 OPTIONS\r\n\
                 Content-Length: 0\r\n\r\n"
            ),
        )
        .await;
    let response = terminal.final_response(WAIT).await;
    assert_eq!(response.status(), Some(200));
    assert!(response
        .header(floorcast::sip::HeaderName::from_bytes(b"Allow"))
        .is_some());
    cluster.shutdown().await;
}

/// F-HB-02: a peer that stops answering is marked down after the configured failures; requests
/// that need it fail at once (503); a heartbeat from a node that is not a configured peer is
/// refused (403); when the peer comes back, it is up again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_hb_02_heartbeat_failure() {
    let mut cluster = Cluster::start(16000).await;
    cluster.wait_all_up().await;
    let mut events_b = cluster.node(B).sip.subscribe();
    cluster.stop(A).await;
    expect_event(
        &mut events_b,
        WAIT,
        |event| matches!(event, TcfEvent::PeerState { peer, up: false } if peer == "tcf-a"),
    )
    .await;
    // 1101's home is down: its serving TCF answers at once.
    let mut terminal = Terminal::new("1101", "alpha").await;
    let started = std::time::Instant::now();
    let response = terminal.register(cluster.address(B), 300).await;
    assert_eq!(response.status(), Some(503));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "failed at once, not after a timeout"
    );

    // A stranger's heartbeat is refused.
    let stranger = Terminal::new("0", "x").await;
    let me = stranger.address();
    let server = cluster.address(B);
    stranger
        .send(
            server,
            &format!(
                "OPTIONS sip:{server} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKhb2;rport\r\nMax-Forwards: 70\r\n\
                 From: <sip:stranger@{me}>;tag=1\r\nTo: <sip:{server}>\r\nCall-ID: hb2\r\nCSeq: 1 OPTIONS\r\n\
                 Ptt-Extension: pttheartbeat\r\nContent-Length: 0\r\n\r\n"
            ),
        )
        .await;
    assert_eq!(stranger.final_response(WAIT).await.status(), Some(403));

    cluster.restart(A).await;
    expect_event(
        &mut events_b,
        WAIT,
        |event| matches!(event, TcfEvent::PeerState { peer, up: true } if peer == "tcf-a"),
    )
    .await;
    cluster.shutdown().await;
}

/// Registrations, bindings and group locations survive a restart of the nodes holding them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_reg_01_registrations_survive_restart() {
    let mut cluster = Cluster::start(16100).await;
    cluster.wait_all_up().await;
    let mut terminal = Terminal::new("1107", "alpha").await;
    assert_eq!(terminal.register(cluster.address(C), 600).await.status(), Some(200));
    for index in [A, B, C] {
        cluster.stop(index).await;
    }
    for index in [A, B, C] {
        cluster.restart(index).await;
    }
    let registration = cluster
        .node(A)
        .sip
        .registration(&number("1107"))
        .await
        .expect("home registration restored");
    assert_eq!(registration.serving, "tcf-c");
    assert!(
        cluster.node(C).sip.binding(&number("1107")).await.is_some(),
        "binding restored"
    );
    assert_eq!(
        cluster.node(B).sip.location(&number("1107")).await.unwrap().serving,
        "tcf-c",
        "location restored"
    );
    cluster.shutdown().await;
}

/// F-REG-01 over TCP (RFC 3261 §18: Content-Length framing, responses on the same
/// connection): a terminal registers with digest at its home over one TCP connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_reg_01_register_over_tcp() {
    use floorcast::sip::{Frame, HeaderName, StreamFramer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let cluster = Cluster::start(16200).await;
    let server = cluster.address(B);
    let mut stream = tokio::net::TcpStream::connect(server).await.unwrap();
    let me = stream.local_addr().unwrap();
    let mut framer = StreamFramer::new(65_536);
    let register = |cseq: u32, authorization: Option<String>| {
        let auth = authorization
            .map(|value| format!("Authorization: {value}\r\n"))
            .unwrap_or_default();
        format!(
            "REGISTER sip:{server} SIP/2.0\r\nVia: SIP/2.0/TCP {me};branch=z9hG4bKtcp{cseq};rport\r\nMax-Forwards: 70\r\n\
             From: <sip:1210@{server}>;tag=tcp\r\nTo: <sip:1210@{server}>\r\nCall-ID: tcp-1210\r\nCSeq: {cseq} REGISTER\r\n\
             Contact: <sip:1210@{me};transport=tcp>;expires=300\r\n{auth}Content-Length: 0\r\n\r\n"
        )
    };
    async fn next_message(stream: &mut tokio::net::TcpStream, framer: &mut StreamFramer) -> floorcast::sip::Message {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(Frame::Message(message)) = framer.next_frame().unwrap() {
                return message;
            }
            let read = tokio::time::timeout(WAIT, stream.read(&mut chunk))
                .await
                .unwrap()
                .unwrap();
            assert!(read > 0, "connection closed");
            framer.push(&chunk[..read]);
        }
    }
    stream.write_all(register(1, None).as_bytes()).await.unwrap();
    let challenge = next_message(&mut stream, &mut framer).await;
    assert_eq!(challenge.status(), Some(401));
    let challenges: Vec<floorcast::sip::digest::Challenge> = challenge
        .headers_of(HeaderName::WwwAuthenticate)
        .filter_map(|header| header.value_str())
        .filter_map(|value| floorcast::sip::digest::parse_challenge(&value).ok())
        .collect();
    let chosen = floorcast::sip::digest::choose(&challenges).unwrap();
    let authorization = floorcast::sip::digest::respond(
        chosen,
        "1210",
        "bravo",
        "REGISTER",
        &format!("sip:{server}"),
        1,
        "c0ffee",
    );
    stream
        .write_all(register(2, Some(authorization)).as_bytes())
        .await
        .unwrap();
    let ok = next_message(&mut stream, &mut framer).await;
    assert_eq!(ok.status(), Some(200));
    let binding = cluster.node(B).sip.binding(&number("1210")).await.unwrap();
    assert_eq!(binding.address, me);
    cluster.shutdown().await;
}

/// TCP limits: beyond `sip.max_tcp_connections` a new connection is closed at once, while the
/// open ones keep working; a message larger than `sip.max_message_size` closes its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_tcp_connection_and_size_limits() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let cluster = Cluster::start_with(16300, "max_tcp_connections = 2\nmax_message_size = 2000").await;
    let server = cluster.address(B);
    let first = tokio::net::TcpStream::connect(server).await.unwrap();
    let second = tokio::net::TcpStream::connect(server).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut third = tokio::net::TcpStream::connect(server).await.unwrap();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(WAIT, third.read(&mut byte))
        .await
        .expect("closed, not left hanging");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "the third connection is refused: {read:?}"
    );

    // An open connection still works: OPTIONS answered.
    let mut stream = first;
    let me = stream.local_addr().unwrap();
    let options = format!(
        "OPTIONS sip:{server} SIP/2.0\r\nVia: SIP/2.0/TCP {me};branch=z9hG4bKlimit1\r\nMax-Forwards: 70\r\n\
         From: <sip:x@{me}>;tag=1\r\nTo: <sip:{server}>\r\nCall-ID: limit1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    stream.write_all(options.as_bytes()).await.unwrap();
    let mut response = vec![0u8; 4096];
    let read = tokio::time::timeout(WAIT, stream.read(&mut response))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&response[..read]).starts_with("SIP/2.0 200"));

    // An oversized message closes its connection.
    let mut big = second;
    let header = format!(
        "MESSAGE sip:{server} SIP/2.0\r\nVia: SIP/2.0/TCP {me};branch=z9hG4bKbig\r\nContent-Length: 5000\r\n\r\n"
    );
    big.write_all(header.as_bytes()).await.unwrap();
    let _ = big.write_all(&[b'x'; 5000]).await;
    let read = tokio::time::timeout(WAIT, big.read(&mut byte)).await.expect("closed");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "oversized message closes the connection: {read:?}"
    );
    cluster.shutdown().await;
}
