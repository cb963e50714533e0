//! Short data (F-SDS-01, F-SDS-02) between three real TCF nodes running the example network
//! (`config/example/`): tcf-a homes 1100-1199 and the DCs 9100-9101, tcf-b homes 1200-1299, the
//! DC 9200 and group 2200, tcf-c homes 1300-1399; group 2100 (home tcf-a) has the DCs 9100 and
//! 9200, group 2200 the DC 9200. Each test checks the final status the sender saw and the exact
//! MESSAGE (Request-URI, From, Ptt-Extension, Content-Type, body) each receiver got.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::cluster::*;
use common::phone::*;
use floorcast::control::tcf::TcfEvent;
use floorcast::sip::{HeaderName, Message};

const A: usize = 0;
const B: usize = 1;
const C: usize = 2;

const TEXT: &str = "text/plain;charset=UTF-8";

/// The text of a MESSAGE from `phone` to `destination` at its serving TCF (`extension` empty:
/// no Ptt-Extension; `content_type` empty: none).
fn message_text(phone: &Phone, destination: &str, extension: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let me = phone.sip_address();
    let server = phone.server;
    let branch = format!("z9hG4bK{:x}", rand::random::<u64>());
    let call_id = format!("{:x}@phone", rand::random::<u64>());
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
    let mut text = format!(
        "MESSAGE sip:{destination}@{server} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch={branch};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:{user}@{server}>;tag={tag:x}\r\nTo: <sip:{destination}@{server}>\r\n\
         Call-ID: {call_id}\r\nCSeq: 1 MESSAGE\r\n{extension}{content_type}Content-Length: {length}\r\n\r\n",
        user = phone.user(),
        tag = rand::random::<u32>(),
        length = body.len(),
    )
    .into_bytes();
    text.extend_from_slice(body);
    text
}

/// Sends short data from `phone` to `destination`; returns the final response.
async fn send_short_data(phone: &mut Phone, destination: &str, content_type: &str, body: &[u8]) -> Message {
    send_raw(phone, message_text(phone, destination, "pttmsg", content_type, body)).await;
    phone.expect_response("MESSAGE", 200).await
}

async fn send_raw(phone: &Phone, text: Vec<u8>) {
    phone.terminal.socket.send_to(&text, phone.server).await.unwrap();
}

fn header(message: &Message, name: HeaderName) -> String {
    message
        .header(name)
        .and_then(|header| header.value_str().map(|value| value.into_owned()))
        .unwrap_or_default()
}

fn reason(message: &Message) -> String {
    String::from_utf8_lossy(message.reason_phrase().unwrap_or_default()).into_owned()
}

/// Waits for the short-data MESSAGE at `receiver`, checks it names `sender` and carries the
/// body and Content-Type unchanged, answers `200`; returns its Ptt-Extension.
async fn receive_short_data(receiver: &mut Phone, sender: &str, content_type: &str, body: &[u8]) -> String {
    let request = receiver.expect_request("MESSAGE").await;
    let uri = String::from_utf8_lossy(request.request_uri_raw().unwrap()).into_owned();
    assert_eq!(
        uri,
        format!("sip:{}@{}", receiver.user(), receiver.sip_address()),
        "to {}'s contact",
        receiver.user()
    );
    let from = header(&request, HeaderName::From);
    assert!(
        from.starts_with(&format!("<sip:{sender}@")),
        "{}: From {from}",
        receiver.user()
    );
    assert_eq!(header(&request, HeaderName::ContentType), content_type);
    assert_eq!(request.body(), body, "{} gets the body byte-exact", receiver.user());
    let extension = ptt(&request);
    assert!(extension.starts_with("pttmsg;"), "{extension}");
    assert!(extension.contains(&format!("callerUDN={sender}")), "{extension}");
    assert!(
        !extension.contains("stage="),
        "no routing stage towards a terminal: {extension}"
    );
    receiver.ok(&request).await;
    extension
}

/// Checks `phone` receives no MESSAGE for a while.
async fn assert_no_short_data(phone: &mut Phone) {
    while let Some(message) = phone.next(Duration::from_millis(400)).await {
        assert!(
            !matches!(message.method(), Some(method) if method.as_str() == "MESSAGE"),
            "{} got a MESSAGE it should not",
            phone.user()
        );
    }
}

/// Waits until the home of group `gdn` (node `home`) knows where `users` are (F-REG-07).
async fn wait_located(cluster: &Cluster, home: usize, users: &[&str]) {
    let handle = &cluster.node(home).sip;
    for user in users {
        let number = floorcast::proto::Number::parse(user).unwrap();
        let known = wait_for(WAIT, || async { handle.location(&number).await.is_some() }).await;
        assert!(known, "the group home knows where {user} is");
    }
}

/// F-SDS-01 (user), F-SDS-02: 1100 (home tcf-a) visiting tcf-b sends to 1300 (home and
/// served at tcf-c): tcf-b → tcf-a → tcf-c → 1300, whose 200 comes back to 1100. Then a DC,
/// 9100 (home tcf-a) at tcf-a, sends to 1300 as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_sds_01_short_data_to_a_user_across_three_nodes() {
    let cluster = Cluster::start(17500).await;
    cluster.wait_all_up().await;
    let mut sender = Phone::register("1100", "alpha", cluster.address(B)).await;
    let mut receiver = Phone::register("1300", "charlie", cluster.address(C)).await;
    let mut dc = Phone::register("9100", "dispatch-a", cluster.address(A)).await;
    let mut relayed = [
        cluster.node(A).sip.subscribe(),
        cluster.node(B).sip.subscribe(),
        cluster.node(C).sip.subscribe(),
    ];

    let body = "Unit 7: report to gate 3 — 集合 at 14:00\r\n".as_bytes();
    send_raw(&sender, message_text(&sender, "1300", "pttmsg", TEXT, body)).await;
    let extension = receive_short_data(&mut receiver, "1100", TEXT, body).await;
    assert_eq!(extension, "pttmsg;callerUDN=1100;calleeUDN=1300");
    let response = sender.expect_response("MESSAGE", 200).await;
    assert_eq!(response.status(), Some(200));
    // Every hop relayed it and answered its upstream with the 200.
    for events in &mut relayed {
        expect_event(events, WAIT, |event| {
            matches!(event, TcfEvent::ShortData { sender, destination, status: 200 }
                if sender.as_str() == "1100" && destination.as_str() == "1300")
        })
        .await;
    }

    // A DC sends any content type: it travels unchanged.
    let data = [0u8, 1, 2, 0xfe, 0xff, b'\r', b'\n', 0];
    let response = {
        send_raw(
            &dc,
            message_text(&dc, "1300", "pttmsg", "application/octet-stream", &data),
        )
        .await;
        let extension = receive_short_data(&mut receiver, "9100", "application/octet-stream", &data).await;
        assert_eq!(extension, "pttmsg;callerUDN=9100;calleeUDN=1300");
        dc.expect_response("MESSAGE", 200).await
    };
    assert_eq!(response.status(), Some(200));
    assert_no_short_data(&mut sender).await;
    assert_eq!(receiver.requests(), vec!["MESSAGE", "MESSAGE"]);
    cluster.shutdown().await;
}

/// F-SDS-01 (multicast), F-SDS-02: 1105 (home tcf-a, at tcf-a) sends to group 2200 (home
/// tcf-b): the home answers 200 and every other registered member on all three nodes (served
/// by the home, by member TCFs, visiting) and the group's DC 9200 get one copy; the sender and
/// an unregistered member get none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_sds_01_multicast_short_message_reaches_every_registered_member_and_the_dc() {
    let cluster = Cluster::start(17600).await;
    cluster.wait_all_up().await;
    let mut sender = Phone::register("1105", "alpha", cluster.address(A)).await;
    let mut members = vec![
        Phone::register("1106", "alpha", cluster.address(C)).await, // visiting tcf-c
        Phone::register("1205", "bravo", cluster.address(B)).await, // at the group home
        Phone::register("1206", "bravo", cluster.address(A)).await, // visiting tcf-a
        Phone::register("1305", "charlie", cluster.address(C)).await,
        Phone::register("9200", "dispatch-b", cluster.address(B)).await, // the group's DC
    ];
    wait_located(&cluster, B, &["1105", "1106", "1205", "1206", "1305", "9200"]).await;
    let mut home = cluster.node(B).sip.subscribe();

    let body = "Évacuation: tous au point B".as_bytes();
    let response = send_short_data(&mut sender, "2200", TEXT, body).await;
    assert_eq!(response.status(), Some(200), "{}", reason(&response));
    for member in &mut members {
        let user = member.user().to_owned();
        let extension = receive_short_data(member, "1105", TEXT, body).await;
        assert_eq!(extension, format!("pttmsg;callerUDN=1105;calleeUDN={user};GDN=2200"));
    }
    // The home learns every copy was delivered.
    let mut delivered = Vec::new();
    while delivered.len() < members.len() {
        let event = expect_event(&mut home, WAIT, |event| {
            matches!(event, TcfEvent::ShortDataToMember { .. })
        })
        .await;
        if let TcfEvent::ShortDataToMember { group, member, status } = event {
            assert_eq!((group.as_str(), status), ("2200", 200), "{member}");
            delivered.push(member.to_string());
        }
    }
    delivered.sort();
    assert_eq!(delivered, vec!["1106", "1205", "1206", "1305", "9200"]);
    assert_no_short_data(&mut sender).await;
    for member in &mut members {
        assert_no_short_data(member).await;
        assert_eq!(member.requests(), vec!["MESSAGE"], "{} got one copy", member.user());
    }
    // A non-member may not send to the group.
    let mut stranger = Phone::register("1100", "alpha", cluster.address(A)).await;
    let response = send_short_data(&mut stranger, "2200", TEXT, b"hi").await;
    assert_eq!(response.status(), Some(403), "{}", reason(&response));
    cluster.shutdown().await;
}

/// F-SDS-02: DC 9100 (home tcf-a) visiting tcf-c receives short data addressed to it (from
/// 1200 at tcf-b), and a multicast short message of its group 2100 (from 1300 at tcf-c).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_sds_02_a_dc_receives_short_data_and_its_groups_multicast() {
    let cluster = Cluster::start(17700).await;
    cluster.wait_all_up().await;
    let mut dc = Phone::register("9100", "dispatch-a", cluster.address(C)).await;
    let mut user = Phone::register("1200", "bravo", cluster.address(B)).await;
    let mut member = Phone::register("1300", "charlie", cluster.address(C)).await;
    wait_located(&cluster, A, &["9100", "1200", "1300"]).await;

    let body = b"status?";
    send_raw(&user, message_text(&user, "9100", "pttmsg", TEXT, body)).await;
    let extension = receive_short_data(&mut dc, "1200", TEXT, body).await;
    assert_eq!(extension, "pttmsg;callerUDN=1200;calleeUDN=9100");
    assert_eq!(user.expect_response("MESSAGE", 200).await.status(), Some(200));

    let body = br#"{"alert":"all units","level":3}"#;
    let response = send_short_data(&mut member, "2100", "application/json", body).await;
    assert_eq!(response.status(), Some(200));
    let extension = receive_short_data(&mut dc, "1300", "application/json", body).await;
    assert_eq!(extension, "pttmsg;callerUDN=1300;calleeUDN=9100;GDN=2100");
    // 1200 is a member of 2100 too.
    let extension = receive_short_data(&mut user, "1300", "application/json", body).await;
    assert!(extension.contains("GDN=2100"), "{extension}");
    assert_no_short_data(&mut member).await;
    assert_no_short_data(&mut dc).await;
    assert_eq!(dc.requests(), vec!["MESSAGE", "MESSAGE"]);
    cluster.shutdown().await;
}

/// F-SDS-01 refusals: unknown numbers 404, an unregistered destination 480, a sender not
/// registered at the TCF (or sending from elsewhere) 403, hostile or incomplete requests 400
/// (413 for a body over the bound); the node keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_sds_01_errors_unknown_unregistered_unauthenticated_and_hostile() {
    let cluster = Cluster::start(17800).await;
    cluster.wait_all_up().await;
    let mut sender = Phone::register("1100", "alpha", cluster.address(B)).await;
    let mut receiver = Phone::register("1101", "alpha", cluster.address(C)).await;

    for (destination, status) in [
        ("1150", 404),
        ("5555", 404),
        ("1301", 480),
        ("1201", 480),
        ("2999", 404),
    ] {
        let response = send_short_data(&mut sender, destination, TEXT, b"x").await;
        assert_eq!(
            response.status(),
            Some(status),
            "to {destination}: {}",
            reason(&response)
        );
    }
    let response = send_short_data(&mut sender, "1301", TEXT, b"x").await;
    assert_eq!(reason(&response), "Temporarily Unavailable (not registered)");

    // Not registered anywhere; then registered, but sending from another socket.
    let mut unregistered = Phone::register("1102", "alpha", cluster.address(B)).await;
    unregistered.terminal = common::cluster::Terminal::new("1103", "alpha").await;
    let response = send_short_data(&mut unregistered, "1101", TEXT, b"x").await;
    assert_eq!(response.status(), Some(403));
    unregistered.terminal = common::cluster::Terminal::new("1100", "alpha").await;
    let response = send_short_data(&mut unregistered, "1101", TEXT, b"x").await;
    assert_eq!(response.status(), Some(403), "1100's number from another address");

    // Hostile and incomplete requests.
    let big = vec![b'x'; floorcast::control::tcf::MAX_SHORT_DATA + 1];
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (message_text(&sender, "1101", "pttmsg;;;=", TEXT, b"x"), 400),
        (message_text(&sender, "1101", "\"pttmsg\"", TEXT, b"x"), 400),
        (message_text(&sender, "1101", "pttmsg", TEXT, b""), 400),
        (message_text(&sender, "1101", "pttmsg", "", b"x"), 400),
        (message_text(&sender, "1101", "pttmsg", "text", b"x"), 400),
        (message_text(&sender, "1101", "pttmsg", TEXT, &big), 413),
        (message_text(&sender, "1101", "", TEXT, b"x"), 501),
        (message_text(&sender, "alice", "pttmsg", TEXT, b"x"), 404),
    ];
    for (text, status) in cases {
        send_raw(&sender, text.clone()).await;
        let response = sender.expect_response("MESSAGE", 200).await;
        assert_eq!(
            response.status(),
            Some(status),
            "{}: {}",
            String::from_utf8_lossy(&text[..text.len().min(400)]),
            reason(&response)
        );
    }
    // Garbage that is no SIP at all is dropped.
    send_raw(&sender, b"MESSAGE \x00\xff garbage\r\n\r\n".to_vec()).await;
    assert_no_short_data(&mut receiver).await;

    // Still working.
    send_raw(&sender, message_text(&sender, "1101", "pttmsg", TEXT, b"ok")).await;
    receive_short_data(&mut receiver, "1100", TEXT, b"ok").await;
    assert_eq!(sender.expect_response("MESSAGE", 200).await.status(), Some(200));
    cluster.shutdown().await;
}

/// The final response to the last MESSAGE `phone` sent, waiting up to `timeout`.
async fn final_within(phone: &mut Phone, timeout: Duration) -> Option<Message> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let message = phone.next(remaining).await?;
        if message.status().is_some_and(|status| status >= 200) {
            return Some(message);
        }
    }
}

/// F-SDS-01 with a peer TCF down: 1100 at tcf-a sends to 1300 served by tcf-c, which has just
/// stopped: the MESSAGE waits, and tcf-a answers 503 as soon as heartbeats declare tcf-c down
/// (3 × 400 ms here), well before its transaction would give up (64·T1 = 6.4 s); after that,
/// 503 at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_sds_01_peer_tcf_down_gives_an_error_in_bounded_time() {
    let mut cluster = Cluster::start(17900).await;
    cluster.wait_all_up().await;
    let mut sender = Phone::register("1100", "alpha", cluster.address(A)).await;
    let _receiver = Phone::register("1300", "charlie", cluster.address(C)).await;
    let mut peers = cluster.node(A).sip.subscribe();
    cluster.stop(C).await;

    let started = tokio::time::Instant::now();
    send_raw(&sender, message_text(&sender, "1300", "pttmsg", TEXT, b"anyone?")).await;
    let response = final_within(&mut sender, Duration::from_secs(10))
        .await
        .expect("an answer in bounded time");
    assert_eq!(response.status(), Some(503), "{}", reason(&response));
    assert_eq!(reason(&response), "Service Unavailable (next TCF unreachable)");
    assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());

    expect_event(
        &mut peers,
        Duration::from_secs(5),
        |event| matches!(event, TcfEvent::PeerState { peer, up: false } if peer == "tcf-c"),
    )
    .await;
    let started = tokio::time::Instant::now();
    let response = send_short_data(&mut sender, "1300", TEXT, b"anyone?").await;
    assert_eq!(response.status(), Some(503));
    assert_eq!(reason(&response), "Service Unavailable (next TCF unreachable)");
    assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
    cluster.shutdown().await;
}
