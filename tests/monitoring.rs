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

/// A group call set up by `caller`: its session and the 200's payload type.
async fn set_up(caller: &mut Phone, gdn: &str) -> (Outgoing, u8) {
    let mut call = caller.call(gdn).await;
    assert_eq!(
        caller.final_for(&mut call).await,
        200,
        "{} sets up {gdn}",
        caller.user()
    );
    let ok = caller
        .seen
        .iter()
        .rev()
        .find(|message| message.status() == Some(200))
        .cloned()
        .unwrap();
    (call, first_payload_type(ok.body()).expect("an answer"))
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
    let (mut call, _) = set_up(&mut caller, "2300").await;
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
    let (mut call, pt) = set_up(&mut caller, "2300").await;
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
    let (mut call, _) = set_up(&mut caller, "2300").await;
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
