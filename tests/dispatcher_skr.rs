//! Stun, kill and revive (F-SKR-01 … F-SKR-03) between three real TCF nodes running the example
//! network (`config/example/`): users 1100-1119 and DC 9100 are homed on tcf-a, 1200-1219 and
//! DC 9200 on tcf-b, 1300-1319 on tcf-c; group 2300 is homed on tcf-c. Targets register at
//! visited TCFs so the order crosses every hop: DC's TCF → user's home → user's serving TCF.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::cluster::*;
use common::phone::*;
use floorcast::control::tcf::{SkrState, TcfEvent};
use floorcast::proto::Number;
use floorcast::sip::{HeaderName, Message};

const A: usize = 0;
const B: usize = 1;
const C: usize = 2;

fn number(text: &str) -> Number {
    Number::parse(text).unwrap()
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

/// Sends `MESSAGE sip:<uri_user>@<server>` with `Ptt-Extension: <extension>` from `phone`.
async fn send_message(phone: &Phone, uri_user: &str, extension: &str) {
    let me = phone.sip_address();
    let server = phone.server;
    let branch = format!("z9hG4bK{:x}", rand::random::<u64>());
    let call_id = format!("{:x}@phone", rand::random::<u64>());
    let text = format!(
        "MESSAGE sip:{uri_user}@{server} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch={branch};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:{user}@{server}>;tag=m{tag:x}\r\nTo: <sip:{uri_user}@{server}>\r\n\
         Call-ID: {call_id}\r\nCSeq: 1 MESSAGE\r\nPtt-Extension: {extension}\r\nContent-Length: 0\r\n\r\n",
        user = phone.user(),
        tag = rand::random::<u32>(),
    );
    phone.send(&text).await;
}

/// Sends a MESSAGE and returns the final response to it.
async fn message(phone: &mut Phone, uri_user: &str, extension: &str) -> Message {
    send_message(phone, uri_user, extension).await;
    phone.expect_response("MESSAGE", 200).await
}

/// Waits for a request `method`, answering the INFOs of a group session meanwhile.
async fn request(phone: &mut Phone, method: &str) -> Message {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let message = phone
            .next(remaining)
            .await
            .unwrap_or_else(|| panic!("{} expected a {method}", phone.user()));
        match message.method() {
            Some(m) if m.as_str() == method => return message,
            Some(m) if m.as_str() == "INFO" => phone.ok(&message).await,
            _ => {}
        }
    }
}

/// Checks an order delivered to a terminal by its serving TCF (`serving`) and answers it.
async fn expect_order(phone: &mut Phone, extension: &str, dc: &str, serving: SocketAddr) {
    let order = request(phone, "MESSAGE").await;
    assert_eq!(ptt(&order), extension, "{} gets the order", phone.user());
    let uri = String::from_utf8_lossy(order.request_uri_raw().unwrap_or_default()).into_owned();
    assert_eq!(
        uri,
        format!("sip:{}@{}", phone.user(), phone.sip_address()),
        "to its contact"
    );
    assert!(
        header(&order, HeaderName::Via).contains(&serving.to_string()),
        "from its serving TCF {serving}: {}",
        header(&order, HeaderName::Via)
    );
    assert!(
        header(&order, HeaderName::From).starts_with(&format!("<sip:{dc}@")),
        "naming the DC: {}",
        header(&order, HeaderName::From)
    );
    phone.ok(&order).await;
}

async fn expect_state(events: &mut tokio::sync::broadcast::Receiver<TcfEvent>, user: &str, state: SkrState) {
    let user = number(user);
    expect_event(
        events,
        WAIT,
        |event| matches!(event, TcfEvent::SkrStateChanged { user: u, state: s } if *u == user && *s == state),
    )
    .await;
}

async fn expect_reported(events: &mut tokio::sync::broadcast::Receiver<TcfEvent>, user: &str, result: u16) {
    let user = number(user);
    expect_event(
        events,
        WAIT,
        |event| matches!(event, TcfEvent::SkrReported { user: u, result: r } if *u == user && *r == result),
    )
    .await;
}

/// The final status of a call attempt and its reason (ACKed on 2xx by `final_for`).
async fn call_status(caller: &mut Phone, callee: &str) -> (u16, String) {
    let mut call = caller.call(callee).await;
    let status = caller.final_for(&mut call).await;
    let response = caller
        .seen
        .iter()
        .rev()
        .find(|message| message.status() == Some(status))
        .cloned()
        .unwrap();
    (status, reason(&response))
}

/// F-SKR-01: DC 9200 (home and serving tcf-b) stuns 1100 (home tcf-a, registered at tcf-c): tcf-b
/// sends the order on to tcf-a and answers the DC with tcf-a's 200; tcf-a records the state and
/// sends the order on to tcf-c (F-SKR-02), which records it too and delivers it to the terminal.
/// When the stunned user moves to tcf-b, its home tells tcf-b, which enforces the stun.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_skr_01_stun_ordered_by_a_dc_on_another_tcf() {
    let cluster = Cluster::start(19300).await;
    cluster.wait_all_up().await;
    let mut dc = Phone::register("9200", "dispatch-b", cluster.address(B)).await;
    let mut target = Phone::register("1100", "alpha", cluster.address(C)).await;
    let registration = cluster.node(A).sip.registration(&number("1100")).await.unwrap();
    assert_eq!(registration.serving, "tcf-c");
    let mut events_a = cluster.node(A).sip.subscribe();
    let mut events_c = cluster.node(C).sip.subscribe();

    let answer = message(&mut dc, "1100", "pttstun;UDN=1100").await;
    assert_eq!(
        answer.status(),
        Some(200),
        "the DC gets the home's 200: {}",
        reason(&answer)
    );
    assert!(
        header(&answer, HeaderName::Via).contains(&dc.sip_address().to_string()),
        "answered to the DC's own request"
    );
    expect_state(&mut events_a, "1100", SkrState::Stunned).await;
    expect_state(&mut events_c, "1100", SkrState::Stunned).await;
    expect_order(&mut target, "pttstun;UDN=1100", "9200", cluster.address(C)).await;
    // The DC saw nothing but its answer.
    assert!(dc.next(Duration::from_millis(300)).await.is_none());

    // The stun follows a move: 1100 registers through tcf-b, whose terminal tcf-a tells again
    // (an order naming no DC), and tcf-b refuses its group set-up.
    let mut events_b = cluster.node(B).sip.subscribe();
    let mut moved = Phone::register("1100", "alpha", cluster.address(B)).await;
    expect_state(&mut events_b, "1100", SkrState::Stunned).await;
    expect_order(&mut moved, "pttstun;UDN=1100", "tcf-b", cluster.address(B)).await;
    assert_eq!(
        call_status(&mut moved, "2100").await,
        (403, "Forbidden (stunned)".to_owned())
    );
    cluster.shutdown().await;
}

/// F-SKR-02 and the decision: DC 9100 (tcf-a, the user's home) stuns 1110 (registered at tcf-b);
/// tcf-a delivers through tcf-b. After a restart of both, the stunned user can neither call nor be
/// called (its home refuses), nor set up a group call or take the floor (its serving TCF
/// refuses): 403; it is not invited to a group call while stunned, joins the running call when
/// revived, takes no floor when stunned again in it, and revived once more takes the floor and
/// calls again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_skr_02_delivery_through_the_home_and_the_stun_enforced() {
    let mut cluster = Cluster::start(19400).await;
    cluster.wait_all_up().await;
    let mut dc = Phone::register("9100", "dispatch-a", cluster.address(A)).await;
    let mut target = Phone::register("1110", "alpha", cluster.address(B)).await;
    let mut other = Phone::register("1310", "charlie", cluster.address(C)).await;
    let group_home = &cluster.node(C).sip;
    let located = wait_for(WAIT, || async { group_home.location(&number("1110")).await.is_some() }).await;
    assert!(located, "the group home knows where 1110 is");
    let mut events_b = cluster.node(B).sip.subscribe();

    let answer = message(&mut dc, "1110", "pttstun;UDN=1110").await;
    assert_eq!(answer.status(), Some(200));
    expect_state(&mut events_b, "1110", SkrState::Stunned).await;
    expect_order(&mut target, "pttstun;UDN=1110", "9100", cluster.address(B)).await;

    // The state is durable at the home and at the serving TCF.
    cluster.stop(A).await;
    cluster.stop(B).await;
    cluster.restart(A).await;
    cluster.restart(B).await;
    cluster.wait_all_up().await;
    let mut events_b = cluster.node(B).sip.subscribe();

    assert_eq!(
        call_status(&mut target, "1310").await,
        (403, "Forbidden (stunned)".to_owned()),
        "a stunned user places no call"
    );
    assert_eq!(
        call_status(&mut other, "1110").await,
        (403, "Forbidden (stunned)".to_owned()),
        "nor receives one"
    );
    assert_eq!(
        call_status(&mut target, "2300").await,
        (403, "Forbidden (stunned)".to_owned()),
        "nor sets up a group call"
    );

    // 1310 sets up a call of group 2300: the stunned 1110 receives no group call either.
    let mut group_call = other.call("2300").await;
    assert_eq!(other.final_for(&mut group_call).await, 200);
    let mut quiet = Vec::new();
    while let Some(message) = target.next(Duration::from_millis(700)).await {
        quiet.push(message);
    }
    assert!(
        quiet
            .iter()
            .all(|message| message.method().map(|m| m.as_str().to_owned()) != Some("INVITE".to_owned())),
        "a stunned member is not invited: {quiet:?}"
    );

    // Revived, it joins the running call (tcf-b invites it) ...
    let answer = message(&mut dc, "1110", "pttrevive;UDN=1110").await;
    assert_eq!(answer.status(), Some(200));
    expect_state(&mut events_b, "1110", SkrState::Active).await;
    expect_order(&mut target, "pttrevive;UDN=1110", "9100", cluster.address(B)).await;
    let mut session = {
        let invite = request(&mut target, "INVITE").await;
        assert!(ptt(&invite).contains("GDN=2300"), "{}", ptt(&invite));
        Incoming {
            remote_rtp: media_address(invite.body()),
            tag: format!("{:x}", rand::random::<u32>()),
            invite,
            cseq: 1,
        }
    };
    target.answer(&session).await;
    request(&mut target, "ACK").await;

    // ... stunned again in the call, it takes no floor ...
    assert_eq!(message(&mut dc, "1110", "pttstun;UDN=1110").await.status(), Some(200));
    expect_state(&mut events_b, "1110", SkrState::Stunned).await;
    expect_order(&mut target, "pttstun;UDN=1110", "9100", cluster.address(B)).await;
    let offer = sdp(target.rtp_port(), "sendonly");
    target
        .callee_request_with(&mut session, "INVITE", Some(&offer), "Ptt-Extension: pttrequest\r\n")
        .await;
    let refused = target.expect_response("INVITE", 200).await;
    assert_eq!(
        (refused.status(), reason(&refused)),
        (Some(403), "Forbidden (stunned)".to_owned()),
        "a stunned member takes no floor"
    );

    // ... and revived once more, its floor request is granted or queued.
    let answer = message(&mut dc, "1110", "pttrevive;UDN=1110").await;
    assert_eq!(answer.status(), Some(200));
    expect_state(&mut events_b, "1110", SkrState::Active).await;
    expect_order(&mut target, "pttrevive;UDN=1110", "9100", cluster.address(B)).await;
    target
        .callee_request_with(&mut session, "INVITE", Some(&offer), "Ptt-Extension: pttrequest\r\n")
        .await;
    let answered = target.expect_response("INVITE", 200).await;
    assert_eq!(answered.status(), Some(200), "{}", reason(&answered));
    assert!(
        ptt(&answered).contains("pttwaiting") || ptt(&answered).contains("pttaccept"),
        "{}",
        ptt(&answered)
    );
    target.callee_ack(&session).await;

    // 1310 ends the group call; then 1110 calls 1310, who answers.
    other.in_dialog(&mut group_call, "BYE", None).await;
    other.expect_response("BYE", 200).await;
    let bye = request(&mut target, "BYE").await;
    target.ok(&bye).await;
    let mut call = target.call("1310").await;
    let incoming = other.incoming().await;
    other.answer(&incoming).await;
    assert_eq!(target.final_for(&mut call).await, 200, "a revived user calls again");
    target.in_dialog(&mut call, "BYE", None).await;
    target.expect_response("BYE", 200).await;
    cluster.shutdown().await;
}

/// F-SKR-03: the terminal answers the order, then reports its result in a MESSAGE of its own to
/// its serving TCF (tcf-c), which sends it on to the user's home (tcf-a), which sends it on to
/// the DC's TCF (tcf-b), which delivers it to the DC. A second report matches no order: 481.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_skr_03_result_report_back_to_the_dc() {
    let cluster = Cluster::start(19500).await;
    cluster.wait_all_up().await;
    let mut dc = Phone::register("9200", "dispatch-b", cluster.address(B)).await;
    let mut target = Phone::register("1100", "alpha", cluster.address(C)).await;
    let mut events: Vec<_> = (0..3).map(|index| cluster.node(index).sip.subscribe()).collect();

    assert_eq!(message(&mut dc, "1100", "pttstun;UDN=1100").await.status(), Some(200));
    expect_order(&mut target, "pttstun;UDN=1100", "9200", cluster.address(C)).await;

    let answer = message(&mut target, "9200", "pttstun;UDN=1100;result=0").await;
    assert_eq!(answer.status(), Some(200), "{}", reason(&answer));
    for events in &mut events {
        expect_reported(events, "1100", 0).await;
    }
    let report = request(&mut dc, "MESSAGE").await;
    assert_eq!(ptt(&report), "pttstun;UDN=1100;result=0");
    let uri = String::from_utf8_lossy(report.request_uri_raw().unwrap_or_default()).into_owned();
    assert_eq!(uri, format!("sip:9200@{}", dc.sip_address()));
    assert!(header(&report, HeaderName::Via).contains(&cluster.address(B).to_string()));
    assert!(header(&report, HeaderName::From).starts_with("<sip:1100@"));
    dc.ok(&report).await;

    let again = message(&mut target, "9200", "pttstun;UDN=1100;result=0").await;
    assert_eq!(again.status(), Some(481), "no order waits for a second report");

    // A failure cause travels the same way.
    assert_eq!(message(&mut dc, "1100", "pttrevive;UDN=1100").await.status(), Some(200));
    expect_order(&mut target, "pttrevive;UDN=1100", "9200", cluster.address(C)).await;
    assert_eq!(
        message(&mut target, "9200", "pttrevive;UDN=1100;result=17")
            .await
            .status(),
        Some(200)
    );
    let report = request(&mut dc, "MESSAGE").await;
    assert_eq!(ptt(&report), "pttrevive;UDN=1100;result=17");
    dc.ok(&report).await;
    cluster.shutdown().await;
}

/// Kill: DC 9200 (tcf-b) kills 1300 (home tcf-c, registered at tcf-a). The order ends its
/// registration at both; the killed terminal can still report; it cannot register again, not
/// even after its home restarts, until revived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_skr_kill_bars_registration_until_revived() {
    let mut cluster = Cluster::start(19600).await;
    cluster.wait_all_up().await;
    let mut dc = Phone::register("9200", "dispatch-b", cluster.address(B)).await;
    let mut target = Phone::register("1300", "charlie", cluster.address(A)).await;
    let user = number("1300");

    assert_eq!(message(&mut dc, "1300", "pttkill;UDN=1300").await.status(), Some(200));
    expect_order(&mut target, "pttkill;UDN=1300", "9200", cluster.address(A)).await;
    let (home, serving) = (&cluster.node(C).sip, &cluster.node(A).sip);
    let gone = wait_for(WAIT, || async {
        home.registration(&user).await.is_none() && serving.binding(&user).await.is_none()
    })
    .await;
    assert!(gone, "a kill ends the registration at the home and the serving TCF");

    let answer = message(&mut target, "9200", "pttkill;UDN=1300;result=0").await;
    assert_eq!(
        answer.status(),
        Some(200),
        "the killed terminal reports: {}",
        reason(&answer)
    );
    let report = request(&mut dc, "MESSAGE").await;
    assert_eq!(ptt(&report), "pttkill;UDN=1300;result=0");
    dc.ok(&report).await;

    let refused = target.terminal.register(cluster.address(A), 600).await;
    assert_eq!(
        (refused.status(), reason(&refused)),
        (Some(403), "Forbidden (killed)".to_owned())
    );
    let refused = target.terminal.register(cluster.address(C), 600).await;
    assert_eq!(refused.status(), Some(403), "at its home too");

    cluster.stop(C).await;
    cluster.restart(C).await;
    cluster.wait_all_up().await;
    let refused = target.terminal.register(cluster.address(A), 600).await;
    assert_eq!(refused.status(), Some(403), "still killed after its home restarted");

    assert_eq!(message(&mut dc, "1300", "pttrevive;UDN=1300").await.status(), Some(200));
    let accepted = target.terminal.register(cluster.address(A), 600).await;
    assert_eq!(accepted.status(), Some(200), "revived, it registers");
    cluster.shutdown().await;
}

/// Hostile orders and reports: each gets its error, and the node goes on serving; an order for
/// a user whose home is down gets 503 from the DC's TCF.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_skr_hostile_orders_and_reports_are_refused() {
    let cluster = Cluster::start(19700).await;
    cluster.wait_all_up().await;
    let mut dc = Phone::register("9200", "dispatch-b", cluster.address(B)).await;
    let mut user = Phone::register("1200", "bravo", cluster.address(B)).await;
    let mut stranger = Phone::register("1201", "bravo", cluster.address(B)).await;
    // The stranger's binding is gone; it keeps its socket.
    assert_eq!(
        stranger.terminal.register(cluster.address(B), 0).await.status(),
        Some(200)
    );

    for (uri, extension, status) in [
        ("1100", "pttstun;UDN=11x0", 400),
        ("1100", "pttstun", 400),
        ("1100", ";;;", 400),
        ("1100", "pttkill;UDN=1100;DC=nine", 400),
        ("1101", "pttstun;UDN=1100", 400),
        ("1199", "pttstun;UDN=1199", 404),
        ("5555", "pttstun;UDN=5555", 404),
    ] {
        let answer = message(&mut dc, uri, extension).await;
        assert_eq!(answer.status(), Some(status), "{extension}: {}", reason(&answer));
    }
    let answer = message(&mut user, "1100", "pttstun;UDN=1100").await;
    assert_eq!(
        (answer.status(), reason(&answer)),
        (Some(403), "Forbidden (not a dispatcher)".to_owned())
    );
    let answer = message(&mut user, "9200", "pttstun;UDN=1200;result=0").await;
    assert_eq!(answer.status(), Some(481), "a report without an order");
    let answer = message(&mut user, "9200", "pttstun;UDN=1100;result=0").await;
    assert_eq!(answer.status(), Some(403), "a report on behalf of another user");
    let answer = message(&mut stranger, "1100", "pttstun;UDN=1100").await;
    assert_eq!(answer.status(), Some(403), "an order from an unregistered address");

    // Still serving: a real order goes through.
    assert_eq!(message(&mut dc, "1200", "pttstun;UDN=1200").await.status(), Some(200));
    expect_order(&mut user, "pttstun;UDN=1200", "9200", cluster.address(B)).await;

    // The target's home is down: the DC's TCF answers 503 at once.
    let mut cluster = cluster;
    cluster.stop(A).await;
    let handle = &cluster.node(B).sip;
    let down = wait_for(WAIT, || async { handle.peer_up("tcf-a").await == Some(false) }).await;
    assert!(down, "tcf-b sees tcf-a down");
    let answer = message(&mut dc, "1100", "pttstun;UDN=1100").await;
    assert_eq!(answer.status(), Some(503), "{}", reason(&answer));
    cluster.shutdown().await;
}

/// Sends short data (`pttmsg`, F-SDS-01) to `destination` and returns the final response.
async fn short_data(phone: &mut Phone, destination: &str) -> Message {
    let me = phone.sip_address();
    let server = phone.server;
    let body = "status?";
    let text = format!(
        "MESSAGE sip:{destination}@{server} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{branch:x};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:{user}@{server}>;tag=s{tag:x}\r\nTo: <sip:{destination}@{server}>\r\n\
         Call-ID: {call_id:x}@phone\r\nCSeq: 1 MESSAGE\r\nPtt-Extension: pttmsg\r\n\
         Content-Type: text/plain\r\nContent-Length: {length}\r\n\r\n{body}",
        user = phone.user(),
        branch = rand::random::<u64>(),
        tag = rand::random::<u32>(),
        call_id = rand::random::<u64>(),
        length = body.len(),
    );
    phone.send(&text).await;
    phone.expect_response("MESSAGE", 200).await
}

/// The decision applied to short data: a stunned user (1110, home tcf-a, served by tcf-b)
/// neither sends short data (its serving TCF refuses) nor receives it (its home refuses);
/// revived, both work again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_skr_02_a_stunned_user_sends_and_receives_no_short_data() {
    let cluster = Cluster::start(19900).await;
    cluster.wait_all_up().await;
    let mut dc = Phone::register("9100", "dispatch-a", cluster.address(A)).await;
    let mut target = Phone::register("1110", "alpha", cluster.address(B)).await;
    let mut other = Phone::register("1310", "charlie", cluster.address(C)).await;
    let mut events_b = cluster.node(B).sip.subscribe();

    assert_eq!(message(&mut dc, "1110", "pttstun;UDN=1110").await.status(), Some(200));
    expect_state(&mut events_b, "1110", SkrState::Stunned).await;
    expect_order(&mut target, "pttstun;UDN=1110", "9100", cluster.address(B)).await;

    let sent = short_data(&mut target, "1310").await;
    assert_eq!(
        (sent.status(), reason(&sent)),
        (Some(403), "Forbidden (stunned)".to_owned())
    );
    let received = short_data(&mut other, "1110").await;
    assert_eq!(
        (received.status(), reason(&received)),
        (Some(403), "Forbidden (stunned)".to_owned())
    );

    assert_eq!(message(&mut dc, "1110", "pttrevive;UDN=1110").await.status(), Some(200));
    expect_state(&mut events_b, "1110", SkrState::Active).await;
    expect_order(&mut target, "pttrevive;UDN=1110", "9100", cluster.address(B)).await;
    let delivery = async {
        let message = request(&mut other, "MESSAGE").await;
        other.ok(&message).await;
        message
    };
    let (sent, delivered) = tokio::join!(short_data(&mut target, "1310"), delivery);
    assert_eq!(sent.status(), Some(200), "{}", reason(&sent));
    assert_eq!(delivered.body(), b"status?");
    cluster.shutdown().await;
}
