//! Dispatcher monitoring (F-MON-01, F-MON-02) between three real TCF nodes running the example
//! network (`config/example/`): group 2300 is homed on tcf-c (members 1110-1119, 1310-1319,
//! dispatcher 9101); DCs 9100/9101 are homed on tcf-a, 9200 on tcf-b; users 13xx on tcf-c.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::needless_range_loop)]

mod common;

use std::time::Duration;

use common::cluster::*;
use common::phone::*;
use floorcast::control::tcf::{MonitorKey, MonitorKind, MonitorRecord, TcfEvent};
use floorcast::proto::Number;
use floorcast::sip::Message;

const A: usize = 0;
const B: usize = 1;
const C: usize = 2;

fn n(text: &str) -> Number {
    Number::parse(text).unwrap()
}

/// A MESSAGE from `phone` to `sip:<uri_user>@<its TCF>` with `extension`.
fn message_text(phone: &Phone, uri_user: &str, extension: &str) -> String {
    let me = phone.sip_address();
    let server = phone.server;
    let branch = format!("z9hG4bK{:x}", rand::random::<u64>());
    let call_id = format!("{:x}@phone", rand::random::<u64>());
    let tag = format!("{:x}", rand::random::<u32>());
    format!(
        "MESSAGE sip:{uri_user}@{server} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch={branch};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:{user}@{server}>;tag={tag}\r\nTo: <sip:{uri_user}@{server}>\r\n\
         Call-ID: {call_id}\r\nCSeq: 1 MESSAGE\r\nPtt-Extension: {extension}\r\nContent-Length: 0\r\n\r\n",
        user = phone.user(),
    )
}

/// Sends a MESSAGE and waits for its final response; returns it and the requests that arrived
/// meanwhile (a running call's INVITE may overtake the answer to the order).
async fn exchange(phone: &mut Phone, uri_user: &str, extension: &str) -> (Message, Vec<Message>) {
    phone.send(&message_text(phone, uri_user, extension)).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut requests = Vec::new();
    loop {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let message = phone
            .next(remaining)
            .await
            .unwrap_or_else(|| panic!("{} expected an answer to its MESSAGE", phone.user()));
        if message.is_request() {
            requests.push(message);
            continue;
        }
        let final_message = message.status().is_some_and(|status| status >= 200)
            && message.cseq().is_ok_and(|cseq| cseq.method.as_str() == "MESSAGE");
        if final_message {
            return (message, requests);
        }
    }
}

/// The DC's order: `pttmonitor;GDN=..|UDN=..;action=..`; returns the final status.
async fn order(dc: &mut Phone, target: &str, extension: &str) -> u16 {
    let (response, requests) = exchange(dc, target, extension).await;
    assert!(requests.is_empty(), "nothing else reached {}: {requests:?}", dc.user());
    response.status().unwrap()
}

fn reason(message: &Message) -> String {
    message
        .reason_phrase()
        .map(|reason| String::from_utf8_lossy(reason).into_owned())
        .unwrap_or_default()
}

fn record(kind: MonitorKind, target: &str, dc: &str, from: &str) -> MonitorRecord {
    MonitorRecord {
        key: MonitorKey {
            kind,
            target: n(target),
            dc: n(dc),
        },
        from_tcf: from.to_owned(),
    }
}

/// The monitoring records of node `index`.
async fn monitors(cluster: &Cluster, index: usize) -> Vec<MonitorRecord> {
    cluster.node(index).sip.monitors().await.unwrap()
}

/// Waits for a `MonitorChanged` event for (target, dc) at one node.
async fn expect_changed(
    events: &mut tokio::sync::broadcast::Receiver<TcfEvent>,
    target: &str,
    dc: &str,
    monitoring: bool,
) {
    let (target, dc) = (n(target), n(dc));
    expect_event(events, WAIT, |event| {
        matches!(event, TcfEvent::MonitorChanged { key, monitoring: m }
            if key.target == target && key.dc == dc && *m == monitoring)
    })
    .await;
}

/// Answers a group INVITE of `gdn`; returns the session.
async fn accept(phone: &mut Phone, invite: Message, gdn: &str) -> Incoming {
    let extension = ptt(&invite);
    assert!(
        extension.contains(&format!("GDN={gdn}")),
        "{}: {extension}",
        phone.user()
    );
    let session = Incoming {
        remote_rtp: media_address(invite.body()),
        tag: format!("{:x}", rand::random::<u32>()),
        invite,
        cseq: 1,
    };
    phone.answer(&session).await;
    phone.expect_request("ACK").await;
    session
}

/// Waits for the group INVITE of `gdn`, answers it; returns the session.
async fn join(phone: &mut Phone, gdn: &str) -> Incoming {
    let invite = phone.expect_request("INVITE").await;
    accept(phone, invite, gdn).await
}

/// Whether a group INVITE reaches `phone` within `timeout`.
async fn invited_within(phone: &mut Phone, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        if remaining.is_zero() {
            return false;
        }
        match phone.next(remaining).await {
            Some(message) if message.method().is_some_and(|method| method.as_str() == "INVITE") => return true,
            Some(_) => continue,
            None => return false,
        }
    }
}

/// The caller talks (20 packets); `listener` hears every one of them, byte-exact payloads.
async fn hears(caller: &Phone, call: &Outgoing, pt: u8, listener: &Phone, seed: u8) {
    let talk_to = call.remote_rtp.expect("the 200 names the home's leg");
    // What an earlier round left in its socket is not this round's.
    listener.receive_rtp(Duration::from_millis(50)).await;
    let sent = caller.send_rtp_pt(talk_to, 20, seed, pt).await;
    let heard = listener.receive_rtp(Duration::from_millis(800)).await;
    assert_eq!(
        heard.len(),
        20,
        "{} hears every packet of {}",
        listener.user(),
        caller.user()
    );
    let payloads = continuous_payloads(&heard);
    for (sent, payload) in sent.iter().zip(&payloads) {
        assert_eq!(&sent[12..], payload.as_slice(), "payload unchanged");
    }
}

/// Ends a group call (the initiator hangs up); the listeners answer their BYE; every node lets
/// go of it.
async fn end_call(cluster: &Cluster, caller: &mut Phone, call: &mut Outgoing, listeners: &mut [&mut Phone]) {
    caller.in_dialog(call, "BYE", None).await;
    caller.expect_response("BYE", 200).await;
    for listener in listeners.iter_mut() {
        let bye = listener.expect_request("BYE").await;
        listener.ok(&bye).await;
    }
    for index in 0..3 {
        let handle = &cluster.node(index).sip;
        let idle = wait_for(Duration::from_secs(5), || async {
            handle
                .stats()
                .await
                .is_some_and(|stats| stats.group_calls == 0 && stats.calls == 0)
        })
        .await;
        assert!(idle, "{} released the call", NAMES[index]);
    }
}

/// F-MON-01: DC 9200 (home and serving tcf-b) monitors group 2300 (home tcf-c, whose own
/// dispatcher is 9101): the order goes tcf-b → tcf-c, only tcf-c records it. A later call of
/// 2300 reaches 9200 through tcf-b like a dispatcher's downlink and 9200 hears the talker; it
/// only listens (its floor request gets 403). Stopped during a call, its session is ended with
/// BYE, and the next call leaves it out. Started during a call, the running call reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_mon_01_dc_monitors_a_group_and_hears_its_calls() {
    let cluster = Cluster::start(13600).await;
    cluster.wait_all_up().await;
    let mut events: Vec<_> = (0..3).map(|index| cluster.node(index).sip.subscribe()).collect();
    let mut dc = Phone::register("9200", "dispatch-b", cluster.address(B)).await;
    let mut caller = Phone::register("1310", "charlie", cluster.address(C)).await;
    let mut member = Phone::register("1311", "charlie", cluster.address(C)).await;

    // Not monitoring yet: a call of 2300 does not reach 9200.
    let (mut call, _) = caller.set_up_call("2300").await;
    join(&mut member, "2300").await;
    assert!(
        !invited_within(&mut dc, Duration::from_millis(800)).await,
        "9200 is no listener yet"
    );
    end_call(&cluster, &mut caller, &mut call, &mut [&mut member]).await;

    // Start: tcf-b relays to the group home, which records it and answers 200.
    assert_eq!(order(&mut dc, "2300", "pttmonitor;GDN=2300;action=start").await, 200);
    expect_changed(&mut events[C], "2300", "9200", true).await;
    assert_eq!(
        monitors(&cluster, C).await,
        vec![record(MonitorKind::Group, "2300", "9200", "tcf-b")]
    );
    assert!(monitors(&cluster, B).await.is_empty(), "the DC's TCF only relays");
    assert!(monitors(&cluster, A).await.is_empty());

    // A later call reaches 9200 (a DC downlink through tcf-b), and 9200 hears the talker.
    let (mut call, pt) = caller.set_up_call("2300").await;
    join(&mut member, "2300").await;
    let mut session = join(&mut dc, "2300").await;
    let extension = ptt(&session.invite);
    assert!(
        extension.contains("calltype=4") && extension.contains("calleeUDN=9200"),
        "{extension}"
    );
    assert!(session.remote_rtp.is_some());
    hears(&caller, &call, pt, &dc, 3).await;
    // A listener only: its floor request is refused.
    let offer = sdp(dc.rtp_port(), "sendonly");
    dc.callee_request_with(&mut session, "INVITE", Some(&offer), "Ptt-Extension: pttrequest\r\n")
        .await;
    let refused = dc.expect_response("INVITE", 200).await;
    assert_eq!(
        (refused.status(), reason(&refused)),
        (Some(403), "Forbidden (monitoring only)".to_owned())
    );
    // The member still hears the talker; the listener's refusal changed nothing.
    hears(&caller, &call, pt, &member, 4).await;

    // Stop during the call: 9200's session ends (BYE), the others go on.
    let (response, requests) = exchange(&mut dc, "2300", "pttmonitor;GDN=2300;action=stop").await;
    assert_eq!(response.status(), Some(200));
    expect_changed(&mut events[C], "2300", "9200", false).await;
    assert!(monitors(&cluster, C).await.is_empty());
    let bye = match requests
        .into_iter()
        .find(|request| request.method().is_some_and(|m| m.as_str() == "BYE"))
    {
        Some(bye) => bye,
        None => dc.expect_request("BYE").await,
    };
    dc.ok(&bye).await;
    dc.receive_rtp(Duration::from_millis(50)).await;
    hears(&caller, &call, pt, &member, 5).await;
    assert!(
        dc.receive_rtp(Duration::from_millis(300)).await.is_empty(),
        "9200 hears nothing more"
    );
    end_call(&cluster, &mut caller, &mut call, &mut [&mut member]).await;

    // The next call leaves 9200 out.
    let (mut call, _) = caller.set_up_call("2300").await;
    join(&mut member, "2300").await;
    assert!(
        !invited_within(&mut dc, Duration::from_millis(800)).await,
        "9200 stopped monitoring"
    );

    // Start while this call runs: it reaches 9200 at once.
    let (response, requests) = exchange(&mut dc, "2300", "pttmonitor;GDN=2300;action=start").await;
    assert_eq!(response.status(), Some(200));
    let invite = match requests
        .into_iter()
        .find(|request| request.method().is_some_and(|m| m.as_str() == "INVITE"))
    {
        Some(invite) => invite,
        None => dc.expect_request("INVITE").await,
    };
    accept(&mut dc, invite, "2300").await;
    let pt = first_payload_type(
        caller
            .seen
            .iter()
            .rev()
            .find(|message| {
                message.status() == Some(200) && message.cseq().is_ok_and(|c| c.method.as_str() == "INVITE")
            })
            .unwrap()
            .body(),
    )
    .unwrap();
    hears(&caller, &call, pt, &dc, 6).await;
    end_call(&cluster, &mut caller, &mut call, &mut [&mut member, &mut dc]).await;
    cluster.shutdown().await;
}

/// F-MON-02: DC 9100 (home and serving tcf-a) monitors user 1300 (home tcf-c) registered at
/// tcf-b: the order goes tcf-a → tcf-c (user's home) → tcf-b (serving), each hop answering 200
/// once the next did; tcf-c and tcf-b record it (tcf-a only relays), the terminal is told
/// nothing. The records survive a restart of tcf-c and tcf-b. When 1300 moves to tcf-a, its
/// home tells tcf-a, and tcf-b's copy goes with the binding. Stop removes every record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_mon_02_dc_monitors_a_user_through_its_home_and_serving_tcf() {
    let mut cluster = Cluster::start(13700).await;
    cluster.wait_all_up().await;
    let mut events: Vec<_> = (0..3).map(|index| cluster.node(index).sip.subscribe()).collect();
    let mut dc = Phone::register("9100", "dispatch-a", cluster.address(A)).await;
    let mut user = Phone::register("1300", "charlie", cluster.address(B)).await;

    assert_eq!(order(&mut dc, "1300", "pttmonitor;UDN=1300;action=start").await, 200);
    expect_changed(&mut events[C], "1300", "9100", true).await;
    expect_changed(&mut events[B], "1300", "9100", true).await;
    let at_home = vec![record(MonitorKind::User, "1300", "9100", "tcf-a")];
    // The serving TCF records the TCF serving the DC (where its monitoring sessions go).
    let at_serving = vec![record(MonitorKind::User, "1300", "9100", "tcf-a")];
    assert_eq!(monitors(&cluster, C).await, at_home);
    assert_eq!(monitors(&cluster, B).await, at_serving);
    assert!(monitors(&cluster, A).await.is_empty(), "the DC's TCF only relays");
    assert!(
        user.next(Duration::from_millis(300)).await.is_none(),
        "the monitored terminal is told nothing"
    );
    // The same order again: 200, nothing changes.
    assert_eq!(order(&mut dc, "1300", "pttmonitor;UDN=1300;action=start").await, 200);
    assert_eq!(monitors(&cluster, C).await, at_home);

    // Both records survive a restart of the user's home and serving TCF.
    cluster.stop(B).await;
    cluster.stop(C).await;
    cluster.restart(B).await;
    cluster.restart(C).await;
    cluster.wait_all_up().await;
    assert_eq!(monitors(&cluster, C).await, at_home);
    assert_eq!(monitors(&cluster, B).await, at_serving);

    // 1300 moves to tcf-a: its home tells tcf-a; tcf-b's copy goes with the binding.
    let mut events_a = cluster.node(A).sip.subscribe();
    let moved = Phone::register("1300", "charlie", cluster.address(A)).await;
    expect_changed(&mut events_a, "1300", "9100", true).await;
    assert_eq!(
        monitors(&cluster, A).await,
        vec![record(MonitorKind::User, "1300", "9100", "tcf-a")]
    );
    let handle = &cluster.node(B).sip;
    let gone = wait_for(WAIT, || async { handle.monitors().await.is_some_and(|m| m.is_empty()) }).await;
    assert!(gone, "tcf-b no longer serves 1300");

    // Stop: tcf-a → tcf-c → tcf-a (now serving); every record gone.
    let mut events_c = cluster.node(C).sip.subscribe();
    assert_eq!(order(&mut dc, "1300", "pttmonitor;UDN=1300;action=stop").await, 200);
    expect_changed(&mut events_c, "1300", "9100", false).await;
    for index in [A, B, C] {
        assert!(monitors(&cluster, index).await.is_empty(), "{}", NAMES[index]);
    }
    drop(moved);
    cluster.shutdown().await;
}

/// F-MON-01 decision: group monitoring survives a restart of the group home. DC 9200 (tcf-b)
/// monitors 2300 (home tcf-c); tcf-c restarts; a call of 2300 still reaches 9200. Stopped, and
/// tcf-c restarted again, the next call leaves it out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_mon_01_group_monitoring_survives_a_restart_of_the_group_home() {
    let mut cluster = Cluster::start(13800).await;
    cluster.wait_all_up().await;
    let mut dc = Phone::register("9200", "dispatch-b", cluster.address(B)).await;
    let mut caller = Phone::register("1310", "charlie", cluster.address(C)).await;
    let mut member = Phone::register("1311", "charlie", cluster.address(C)).await;

    assert_eq!(order(&mut dc, "2300", "pttmonitor;GDN=2300;action=start").await, 200);
    cluster.stop(C).await;
    cluster.restart(C).await;
    cluster.wait_all_up().await;
    assert_eq!(
        monitors(&cluster, C).await,
        vec![record(MonitorKind::Group, "2300", "9200", "tcf-b")]
    );

    let (mut call, pt) = caller.set_up_call("2300").await;
    join(&mut member, "2300").await;
    join(&mut dc, "2300").await;
    hears(&caller, &call, pt, &dc, 8).await;
    end_call(&cluster, &mut caller, &mut call, &mut [&mut member, &mut dc]).await;

    assert_eq!(order(&mut dc, "2300", "pttmonitor;GDN=2300;action=stop").await, 200);
    cluster.stop(C).await;
    cluster.restart(C).await;
    cluster.wait_all_up().await;
    assert!(monitors(&cluster, C).await.is_empty());
    let (mut call, _) = caller.set_up_call("2300").await;
    join(&mut member, "2300").await;
    assert!(
        !invited_within(&mut dc, Duration::from_millis(800)).await,
        "9200 stopped monitoring"
    );
    end_call(&cluster, &mut caller, &mut call, &mut [&mut member]).await;
    cluster.shutdown().await;
}

/// F-MON-01/02 refusals: a terminal that is no dispatcher (403), an address that registered
/// nothing (403), unknown targets (404), malformed orders (400), a target home that is down
/// (503), a serving TCF that is down (503, nothing recorded); the nodes go on working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_mon_hostile_orders_are_refused() {
    let mut cluster = Cluster::start(13900).await;
    cluster.wait_all_up().await;
    let mut dc = Phone::register("9200", "dispatch-b", cluster.address(B)).await;
    let mut other_dc = Phone::register("9100", "dispatch-a", cluster.address(A)).await;
    let mut terminal = Phone::register("1200", "bravo", cluster.address(B)).await;
    let _monitored = Phone::register("1301", "charlie", cluster.address(C)).await;

    let (refused, _) = exchange(&mut terminal, "2300", "pttmonitor;GDN=2300;action=start").await;
    assert_eq!(
        (refused.status(), reason(&refused)),
        (Some(403), "Forbidden (not a dispatcher)".to_owned())
    );
    let cases: &[(&str, &str, u16)] = &[
        ("2999", "pttmonitor;GDN=2999;action=start", 404),
        ("1999", "pttmonitor;UDN=1999;action=start", 404),
        ("2300", "pttmonitor;GDN=2300;action=listen", 400),
        ("2300", "pttmonitor;GDN=2300", 400),
        ("2300", "pttmonitor;GDN=2300;UDN=1300;action=start", 400),
        ("2300", "pttmonitor;GDN=23x0;action=start", 400),
        ("2300", "pttmonitor;action=start", 400),
        ("2300", "pttmonitor;GDN=;action=stop", 400),
        ("2200", "pttmonitor;GDN=2300;action=start", 400),
        ("2300", "pttmonitor;GDN=2300;action=start;DC=", 400),
    ];
    for (uri_user, extension, status) in cases {
        assert_eq!(order(&mut dc, uri_user, extension).await, *status, "{extension}");
    }
    assert!(monitors(&cluster, C).await.is_empty(), "no refused order was recorded");
    // A `DC` from the DC itself is ignored: the order is the sender's.
    let extension = "pttmonitor;GDN=2300;action=start;DC=9101";
    assert_eq!(order(&mut dc, "2300", extension).await, 200);
    assert_eq!(
        monitors(&cluster, C).await,
        vec![record(MonitorKind::Group, "2300", "9200", "tcf-b")]
    );

    // The DC's identity from an address that registered nothing.
    let stranger = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let text = message_text(&dc, "2300", "pttmonitor;GDN=2300;action=stop").replace(
        &dc.sip_address().to_string(),
        &stranger.local_addr().unwrap().to_string(),
    );
    stranger.send_to(text.as_bytes(), cluster.address(B)).await.unwrap();
    let mut buffer = vec![0u8; 65_536];
    let (length, _) = tokio::time::timeout(WAIT, stranger.recv_from(&mut buffer))
        .await
        .unwrap()
        .unwrap();
    let response = Message::parse_datagram(bytes::Bytes::copy_from_slice(&buffer[..length])).unwrap();
    assert_eq!(response.status(), Some(403), "unregistered source");
    assert_eq!(monitors(&cluster, C).await.len(), 1, "still monitoring");

    // The monitored user's serving TCF is down (1301 is at tcf-c, home tcf-c: one hop; 1200
    // is at tcf-b, home tcf-b: one hop); a user of tcf-c served at tcf-b: tcf-b down → 503.
    let _visitor = Phone::register("1302", "charlie", cluster.address(B)).await;
    assert_eq!(
        order(&mut other_dc, "1301", "pttmonitor;UDN=1301;action=start").await,
        200
    );
    cluster.stop(B).await;
    let handle = &cluster.node(C).sip;
    let down = wait_for(WAIT, || async { handle.peer_up("tcf-b").await == Some(false) }).await;
    assert!(down, "tcf-c sees tcf-b down");
    let (refused, _) = exchange(&mut other_dc, "1302", "pttmonitor;UDN=1302;action=start").await;
    assert_eq!(refused.status(), Some(503), "{}", reason(&refused));
    assert_eq!(
        monitors(&cluster, C).await,
        vec![
            record(MonitorKind::Group, "2300", "9200", "tcf-b"),
            record(MonitorKind::User, "1301", "9100", "tcf-a"),
        ],
        "nothing recorded for 1302"
    );
    // The target's home is down: the DC's TCF answers 503 at once.
    cluster.stop(C).await;
    let handle = &cluster.node(A).sip;
    let down = wait_for(WAIT, || async { handle.peer_up("tcf-c").await == Some(false) }).await;
    assert!(down, "tcf-a sees tcf-c down");
    assert_eq!(
        order(&mut other_dc, "2300", "pttmonitor;GDN=2300;action=start").await,
        503
    );
    // Still working: an order for a group homed on tcf-a itself.
    assert_eq!(
        order(&mut other_dc, "2100", "pttmonitor;GDN=2100;action=start").await,
        200
    );
    assert_eq!(
        monitors(&cluster, A).await,
        vec![record(MonitorKind::Group, "2100", "9100", "tcf-a")]
    );
    cluster.shutdown().await;
}

/// The DC's order (answered `200`) and the request of `method` it causes, which may overtake
/// the order's `200`.
async fn order_then(dc: &mut Phone, target: &str, extension: &str, method: &str) -> Message {
    let (status, early) = exchange(dc, target, extension).await;
    assert_eq!(status.status(), Some(200), "{extension}");
    match early
        .into_iter()
        .find(|message| message.method().is_some_and(|name| name.as_str() == method))
    {
        Some(request) => request,
        None => dc.expect_request(method).await,
    }
}

/// 1300 (registered at tcf-b) calls 1301 (at tcf-c); both answer and ACK. Returns the call,
/// the callee's session.
async fn single_call(caller: &mut Phone, callee: &mut Phone) -> (Outgoing, Incoming) {
    let mut call = caller.call(callee.user()).await;
    let incoming = callee.incoming().await;
    callee.answer(&incoming).await;
    assert_eq!(caller.final_for(&mut call).await, 200);
    callee.expect_request("ACK").await;
    (call, incoming)
}

/// The DC's monitoring session: its INVITE (checked), answered `recvonly`, ACKed.
async fn monitoring_session(dc: &mut Phone, user: &str) -> Incoming {
    let invite = dc.expect_request("INVITE").await;
    answer_session(dc, invite, user).await
}

/// Checks a monitoring session's INVITE of `user`'s call, answers it `recvonly`; waits for the ACK.
async fn answer_session(dc: &mut Phone, invite: Message, user: &str) -> Incoming {
    let extension = ptt(&invite);
    assert!(extension.starts_with("pttcall;calltype=8;"), "{extension}");
    assert!(extension.contains(&format!("callerUDN={user}")), "{extension}");
    assert!(extension.contains(&format!("calleeUDN={}", dc.user())), "{extension}");
    assert!(extension.contains("answermode=direct"), "{extension}");
    assert!(!extension.contains("duplex"), "a listen-only session: {extension}");
    let offer = String::from_utf8_lossy(invite.body()).into_owned();
    assert!(offer.contains("a=sendonly"), "{offer}");
    let session = Incoming {
        remote_rtp: media_address(invite.body()),
        tag: format!("{:x}", rand::random::<u32>()),
        invite,
        cseq: 1,
    };
    let answer = answer_sdp(session.invite.body(), dc.rtp_port(), "recvonly");
    dc.respond(&session.invite, &session.tag, 200, "OK", Some(&answer))
        .await;
    dc.expect_request("ACK").await;
    // The DC's TCF ACKs on its own (hop by hop): the copy starts once the 200 it passed on
    // reached the user's serving TCF, a moment later.
    tokio::time::sleep(Duration::from_millis(100)).await;
    session
}

/// `from` talks 20 packets to `to_address`: `to` gets every one byte-exact, and so does the
/// monitoring DC when given.
async fn talk(from: &Phone, to_address: std::net::SocketAddr, to: &Phone, dc: Option<&Phone>, seed: u8) {
    let sent = from.send_rtp(to_address, 20, seed).await;
    let received = to.receive_rtp(Duration::from_millis(800)).await;
    assert!(received == sent, "{} hears {} byte-exact", to.user(), from.user());
    if let Some(dc) = dc {
        let copied = dc.receive_rtp(Duration::from_millis(400)).await;
        let seqs: Vec<u16> = copied.iter().map(|p| u16::from_be_bytes([p[2], p[3]])).collect();
        assert!(
            copied == sent,
            "{} gets a copy of {}'s RTP: {seqs:?}",
            dc.user(),
            from.user()
        );
    }
}

/// F-MON-02 media: DC 9100 (tcf-a) monitors 1300 (home tcf-c, registered at tcf-b). 1300 calls
/// 1301 (at tcf-c); once answered, tcf-b (anchoring 1300's side) sends the DC a monitoring
/// session (`calltype=8`, `sendonly`) through tcf-a; the call's RTP both ways stays byte-exact
/// and the DC gets a byte-exact copy of both sides. What the DC sends goes nowhere. The call
/// ends: the DC gets a BYE and no more RTP; nothing is left on any node. A call where 1300 is
/// the callee reaches the DC too; the DC hanging up ends only its session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_mon_02_dc_hears_the_monitored_users_call() {
    let cluster = Cluster::start(12100).await;
    cluster.wait_all_up().await;
    let mut dc = Phone::register("9100", "dispatch-a", cluster.address(A)).await;
    let mut user = Phone::register("1300", "charlie", cluster.address(B)).await;
    let mut other = Phone::register("1301", "charlie", cluster.address(C)).await;
    assert_eq!(order(&mut dc, "1300", "pttmonitor;UDN=1300;action=start").await, 200);
    assert_eq!(
        monitors(&cluster, B).await,
        vec![record(MonitorKind::User, "1300", "9100", "tcf-a")],
        "the serving TCF records the TCF serving the DC"
    );

    let (mut call, incoming) = single_call(&mut user, &mut other).await;
    let session = monitoring_session(&mut dc, "1300").await;
    let answer_at = call.remote_rtp.expect("an answer");
    let offer_at = incoming.remote_rtp.expect("an offer");
    talk(&user, answer_at, &other, Some(&dc), 1).await;
    talk(&other, offer_at, &user, Some(&dc), 2).await;
    // The DC only listens: what it sends reaches neither side.
    let tap_at = session.remote_rtp.expect("the session's offer");
    dc.send_rtp(tap_at, 5, 9).await;
    assert!(user.receive_rtp(Duration::from_millis(300)).await.is_empty());
    assert!(other.receive_rtp(Duration::from_millis(100)).await.is_empty());

    // The call ends: so does the DC's session.
    user.in_dialog(&mut call, "BYE", None).await;
    user.expect_response("BYE", 200).await;
    let bye = other.expect_request("BYE").await;
    other.ok(&bye).await;
    let bye = dc.expect_request("BYE").await;
    assert!(ptt(&bye).starts_with("pttrelease"), "{}", ptt(&bye));
    dc.ok(&bye).await;
    user.send_rtp(answer_at, 5, 3).await;
    assert!(
        dc.receive_rtp(Duration::from_millis(300)).await.is_empty(),
        "no more RTP"
    );
    cluster.assert_all_freed().await;

    // 1300 called: the DC hears that call too; its hang-up ends only its session.
    let mut call = other.call("1300").await;
    let incoming = user.incoming().await;
    user.answer(&incoming).await;
    assert_eq!(other.final_for(&mut call).await, 200);
    user.expect_request("ACK").await;
    let mut session = monitoring_session(&mut dc, "1300").await;
    let answer_at = call.remote_rtp.expect("an answer");
    talk(&other, answer_at, &user, Some(&dc), 4).await;
    dc.callee_request(&mut session, "BYE").await;
    assert_eq!(dc.expect_response("BYE", 200).await.status(), Some(200));
    talk(&other, answer_at, &user, None, 5).await;
    assert!(dc.receive_rtp(Duration::from_millis(200)).await.is_empty());
    other.in_dialog(&mut call, "BYE", None).await;
    other.expect_response("BYE", 200).await;
    let bye = user.expect_request("BYE").await;
    user.ok(&bye).await;
    assert!(
        dc.next(Duration::from_millis(300)).await.is_none(),
        "its session already ended"
    );
    cluster.assert_all_freed().await;
    cluster.shutdown().await;
}

/// F-MON-02: monitoring that starts during a call reaches the DC at once; stopped during the
/// call, the DC's session is ended with BYE and the call goes on. A DC that refuses the
/// session changes nothing for the call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_mon_02_monitoring_started_and_stopped_during_a_call() {
    let cluster = Cluster::start(12700).await;
    cluster.wait_all_up().await;
    let mut dc = Phone::register("9100", "dispatch-a", cluster.address(A)).await;
    let mut user = Phone::register("1300", "charlie", cluster.address(B)).await;
    let mut other = Phone::register("1301", "charlie", cluster.address(C)).await;
    let (mut call, incoming) = single_call(&mut user, &mut other).await;
    let (answer_at, offer_at) = (call.remote_rtp.unwrap(), incoming.remote_rtp.unwrap());

    // Started during the call: the session comes at once.
    let invite = order_then(&mut dc, "1300", "pttmonitor;UDN=1300;action=start", "INVITE").await;
    answer_session(&mut dc, invite, "1300").await;
    talk(&user, answer_at, &other, Some(&dc), 1).await;

    // Stopped: the DC's session ends, the call goes on.
    let bye = order_then(&mut dc, "1300", "pttmonitor;UDN=1300;action=stop", "BYE").await;
    dc.ok(&bye).await;
    talk(&user, answer_at, &other, None, 2).await;
    talk(&other, offer_at, &user, None, 3).await;
    assert!(dc.receive_rtp(Duration::from_millis(200)).await.is_empty());

    // Started again and refused by the DC: the call goes on as it was.
    let invite = order_then(&mut dc, "1300", "pttmonitor;UDN=1300;action=start", "INVITE").await;
    dc.respond(&invite, "refuse", 486, "Busy Here", None).await;
    dc.expect_request("ACK").await;
    talk(&user, answer_at, &other, None, 4).await;
    assert!(dc.receive_rtp(Duration::from_millis(200)).await.is_empty());
    user.in_dialog(&mut call, "BYE", None).await;
    user.expect_response("BYE", 200).await;
    let bye = other.expect_request("BYE").await;
    other.ok(&bye).await;
    assert!(
        dc.next(Duration::from_millis(300)).await.is_none(),
        "nothing more for the DC"
    );
    cluster.assert_all_freed().await;
    cluster.shutdown().await;
}
