//! Dynamic regrouping (F-RGP-01 … F-RGP-03) between three real TCF nodes running the example
//! network (`config/example/`): group 2100 is homed on tcf-a (dispatchers 9100, 9200), 2200 on
//! tcf-b (dispatcher 9200), 2300 on tcf-c (dispatcher 9101); users 11xx and DCs 91xx are homed on
//! tcf-a, 12xx and 9200 on tcf-b, 13xx on tcf-c. The orders are chosen so that the DC's TCF, the
//! group home, the user's home and the user's serving TCF are different nodes where it matters.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::needless_range_loop)]

mod common;

use std::time::Duration;

use common::cluster::*;
use common::phone::*;
use floorcast::control::tcf::TcfEvent;
use floorcast::proto::Number;
use floorcast::sip::Message;

const A: usize = 0;
const B: usize = 1;
const C: usize = 2;

const LIST: &str = "application/pttdgnagrpmbrlist+xml";

fn n(text: &str) -> Number {
    Number::parse(text).unwrap()
}

fn member_list(members: &[&str]) -> String {
    let mut body = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<dgna>\n");
    for member in members {
        body.push_str(&format!("  <member>{member}</member>\n"));
    }
    body.push_str("</dgna>\n");
    body
}

/// A MESSAGE from `phone` to `sip:<uri_user>@<its TCF>`.
fn message_text(phone: &Phone, uri_user: &str, extension: &str, content_type: Option<&str>, body: &str) -> String {
    let me = phone.sip_address();
    let server = phone.server;
    let branch = format!("z9hG4bK{:x}", rand::random::<u64>());
    let call_id = format!("{:x}@phone", rand::random::<u64>());
    let tag = format!("{:x}", rand::random::<u32>());
    let content_type = content_type
        .map(|value| format!("Content-Type: {value}\r\n"))
        .unwrap_or_default();
    format!(
        "MESSAGE sip:{uri_user}@{server} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch={branch};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:{user}@{server}>;tag={tag}\r\nTo: <sip:{uri_user}@{server}>\r\n\
         Call-ID: {call_id}\r\nCSeq: 1 MESSAGE\r\nPtt-Extension: {extension}\r\n{content_type}\
         Content-Length: {length}\r\n\r\n{body}",
        user = phone.user(),
        length = body.len(),
    )
}

/// The DC orders `action` for `members` of `gdn`; returns the final status it gets.
async fn order(dc: &mut Phone, gdn: &str, action: &str, members: &[&str]) -> u16 {
    let body = if members.is_empty() {
        String::new()
    } else {
        member_list(members)
    };
    let content_type = (!body.is_empty()).then_some(LIST);
    let text = message_text(
        dc,
        gdn,
        &format!("pptDGNA;GDN={gdn};action={action}"),
        content_type,
        &body,
    );
    send_and_status(dc, &text).await
}

async fn send_and_status(phone: &mut Phone, text: &str) -> u16 {
    phone.send(text).await;
    phone.expect_response("MESSAGE", 200).await.status().unwrap()
}

/// Waits for a MESSAGE whose Ptt-Extension contains every one of `parts` (answering every
/// MESSAGE with 200 and skipping other requests); returns its Ptt-Extension.
async fn expect_message(phone: &mut Phone, parts: &[&str]) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} expected a MESSAGE with {parts:?}",
            phone.user()
        );
        let message = phone.expect_request("MESSAGE").await;
        phone.ok(&message).await;
        let extension = ptt(&message);
        if parts.iter().all(|part| extension.contains(part)) {
            return extension;
        }
    }
}

/// The terminal's result report (F-RGP-03) to its serving TCF; returns the status it gets.
async fn report(phone: &mut Phone, gdn: &str, result: &str) -> u16 {
    let user = phone.user().to_owned();
    let text = message_text(
        phone,
        gdn,
        &format!("reDGNA;GDN={gdn};UDN={user};DGNAresult={result}"),
        None,
        "",
    );
    send_and_status(phone, &text).await
}

/// Waits for the group home to know where `user` is.
async fn wait_located(cluster: &Cluster, home: usize, user: &str, serving: &str) {
    let handle = &cluster.node(home).sip;
    let number = n(user);
    let known = wait_for(WAIT, || async {
        handle
            .location(&number)
            .await
            .is_some_and(|location| location.serving == serving)
    })
    .await;
    assert!(known, "{} knows {user} is served by {serving}", NAMES[home]);
}

/// Waits for the `Regrouped` event of `group` at one node.
async fn expect_regrouped(
    events: &mut tokio::sync::broadcast::Receiver<TcfEvent>,
    group: &str,
    user: &str,
    action: &str,
) {
    let (group, user) = (n(group), n(user));
    expect_event(events, WAIT, |event| {
        matches!(event, TcfEvent::Regrouped { group: g, users, action: a }
            if *g == group && users.contains(&user) && a == action)
    })
    .await;
}

/// Waits for the group INVITE of `gdn`, answers it; returns the session.
async fn join(phone: &mut Phone, gdn: &str) -> Incoming {
    let session = phone.incoming().await;
    let extension = ptt(&session.invite);
    assert!(
        extension.contains(&format!("GDN={gdn}")),
        "{}: {extension}",
        phone.user()
    );
    phone.answer(&session).await;
    phone.expect_request("ACK").await;
    session
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

/// Ends a group call (the initiator hangs up) and waits until every node let go of it.
async fn end_call(cluster: &Cluster, caller: &mut Phone, call: &mut Outgoing) {
    caller.in_dialog(call, "BYE", None).await;
    caller.expect_response("BYE", 200).await;
    for index in 0..3 {
        let handle = &cluster.node(index).sip;
        let idle = wait_for(Duration::from_secs(5), || async {
            handle.stats().await.is_some_and(|stats| stats.group_calls == 0)
        })
        .await;
        assert!(idle, "{} released the group call", NAMES[index]);
    }
}

/// A group set-up that is refused: the final status (the non-2xx is ACKed in its transaction,
/// so it is not retransmitted into later exchanges).
async fn refused_setup(phone: &mut Phone, gdn: &str) -> u16 {
    let call = phone.call(gdn).await;
    let response = phone.expect_response("INVITE", 200).await;
    let to = response
        .headers_named("To")
        .next()
        .and_then(|header| header.value_str().map(|value| value.into_owned()))
        .unwrap();
    let me = phone.sip_address();
    let server = phone.server;
    let text = format!(
        "ACK sip:{gdn}@{server} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch={branch};rport\r\nMax-Forwards: 70\r\n\
         From: <sip:{user}@{server}>;tag={from_tag}\r\nTo: {to}\r\nCall-ID: {call_id}\r\n\
         CSeq: {cseq} ACK\r\nContent-Length: 0\r\n\r\n",
        branch = call.branch,
        user = phone.user(),
        from_tag = call.from_tag,
        call_id = call.call_id,
        cseq = call.cseq,
    );
    phone.send(&text).await;
    response.status().unwrap()
}

/// F-RGP-01 (and F-RGP-02 to a user homed at the group home): DC 9200 (home tcf-b, served by
/// tcf-b) orders tcf-b to add 1110 (home tcf-a, served by tcf-a) to group 2100 (home tcf-a).
/// tcf-b is not the group home: it relays the order to tcf-a and answers the DC with tcf-a's
/// final status. Then remove and cancel, each answered 200 and each delivered to the terminal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_rgp_01_order_from_a_dc_on_another_tcf_goes_to_the_group_home() {
    let cluster = Cluster::start(14100).await;
    cluster.wait_all_up().await;
    let mut home_events = cluster.node(A).sip.subscribe();
    let mut dc_events = cluster.node(B).sip.subscribe();
    let mut dc = Phone::register("9200", "dispatch-b", cluster.address(B)).await;
    let mut user = Phone::register("1110", "alpha", cluster.address(A)).await;

    assert_eq!(order(&mut dc, "2100", "add", &["1110"]).await, 200);
    expect_regrouped(&mut home_events, "2100", "1110", "add").await;
    let extension = expect_message(&mut user, &["pptDGNA"]).await;
    assert_eq!(extension, "pptDGNA;GDN=2100;UDN=1110;action=add");
    // The DC's TCF is not the group home: it keeps no overlay of its own for the group.
    let no_overlay = tokio::time::timeout(Duration::from_millis(300), async {
        loop {
            if let Ok(TcfEvent::Regrouped { .. }) = dc_events.recv().await {
                return;
            }
        }
    })
    .await;
    assert!(no_overlay.is_err(), "tcf-b (DC's TCF only) records nothing");

    // The DC's own 200 came from the group home through tcf-b (nothing else answers it).
    assert_eq!(dc.statuses("MESSAGE"), vec![200]);

    assert_eq!(order(&mut dc, "2100", "remove", &["1110"]).await, 200);
    expect_regrouped(&mut home_events, "2100", "1110", "remove").await;
    let extension = expect_message(&mut user, &["pptDGNA"]).await;
    assert_eq!(extension, "pptDGNA;GDN=2100;UDN=1110;action=remove");

    // Remove a provisioned member, then cancel the whole regrouping of the group.
    let mut member = Phone::register("1101", "alpha", cluster.address(A)).await;
    assert_eq!(order(&mut dc, "2100", "remove", &["1101"]).await, 200);
    assert_eq!(
        expect_message(&mut member, &["pptDGNA"]).await,
        "pptDGNA;GDN=2100;UDN=1101;action=remove"
    );
    assert_eq!(order(&mut dc, "2100", "cancel", &[]).await, 200);
    assert_eq!(
        expect_message(&mut member, &["pptDGNA"]).await,
        "pptDGNA;GDN=2100;UDN=1101;action=cancel"
    );
    expect_regrouped(&mut home_events, "2100", "1101", "cancel").await;
    assert_eq!(dc.statuses("MESSAGE"), vec![200], "every order answered 200");
    cluster.shutdown().await;
}

/// F-RGP-02: DC 9101 (home and serving tcf-a) adds 1200 (home tcf-b, visiting tcf-a) to group
/// 2300 (home tcf-c): the order goes tcf-a → tcf-c (group home) → tcf-b (user home) → tcf-a
/// (serving) → the terminal, and each of the three nodes records the change. A group call of
/// 2300 set up by 1310 then reaches 1200 at tcf-a and 1200 may set up one itself; after a
/// remove it is neither invited nor allowed to set one up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_rgp_02_group_update_reaches_user_home_and_serving_tcf_and_group_calls_follow() {
    let cluster = Cluster::start(14200).await;
    cluster.wait_all_up().await;
    let mut events: Vec<_> = (0..3).map(|index| cluster.node(index).sip.subscribe()).collect();
    let mut dc = Phone::register("9101", "dispatch-a", cluster.address(A)).await;
    let mut added = Phone::register("1200", "bravo", cluster.address(A)).await;
    let mut caller = Phone::register("1310", "charlie", cluster.address(C)).await;
    let mut member = Phone::register("1311", "charlie", cluster.address(C)).await;

    // Not a member yet: 1200 may not set up a call of 2300.
    assert_eq!(refused_setup(&mut added, "2300").await, 403);

    assert_eq!(order(&mut dc, "2300", "add", &["1200"]).await, 200);
    for index in [C, B, A] {
        expect_regrouped(&mut events[index], "2300", "1200", "add").await;
    }
    assert_eq!(
        expect_message(&mut added, &["pptDGNA"]).await,
        "pptDGNA;GDN=2300;UDN=1200;action=add"
    );
    // The user's home told the group home where 1200 is at once (F-REG-07).
    wait_located(&cluster, C, "1200", "tcf-a").await;

    // A group call of 2300 reaches the added user on tcf-a, and its voice with it.
    let (mut call, pt) = caller.set_up_call("2300").await;
    let session = join(&mut added, "2300").await;
    join(&mut member, "2300").await;
    assert!(session.remote_rtp.is_some());
    let talk_to = call.remote_rtp.expect("the 200 names tcf-c's leg");
    caller.send_rtp_pt(talk_to, 20, 7, pt).await;
    let heard = added.receive_rtp(Duration::from_millis(800)).await;
    assert_eq!(heard.len(), 20, "1200 hears every packet of 1310");
    end_call(&cluster, &mut caller, &mut call).await;

    // The added user may set up a call of 2300 itself (and holds the floor).
    let (mut own, _) = added.set_up_call("2300").await;
    join(&mut member, "2300").await;
    end_call(&cluster, &mut added, &mut own).await;

    // Remove: the next call does not reach 1200, and 1200 may not set one up.
    assert_eq!(order(&mut dc, "2300", "remove", &["1200"]).await, 200);
    for index in [C, B, A] {
        expect_regrouped(&mut events[index], "2300", "1200", "remove").await;
    }
    assert_eq!(
        expect_message(&mut added, &["pptDGNA"]).await,
        "pptDGNA;GDN=2300;UDN=1200;action=remove"
    );
    let (mut call, _) = caller.set_up_call("2300").await;
    join(&mut member, "2300").await;
    assert!(
        !invited_within(&mut added, Duration::from_millis(1500)).await,
        "a removed member is not invited"
    );
    end_call(&cluster, &mut caller, &mut call).await;
    assert_eq!(refused_setup(&mut added, "2300").await, 403);
    cluster.shutdown().await;
}

/// F-RGP-03: the terminal's result goes back along the order's path, tcf-a (serving) → tcf-b
/// (user home) → tcf-c (group home) → tcf-a (DC's TCF) → DC 9101, each hop answering 200; a
/// second report finds no order (481). A user who is not registered gets a report from its home
/// TCF instead (`DGNAresult=480`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_rgp_03_result_report_reaches_the_dc_through_every_hop() {
    let cluster = Cluster::start(14300).await;
    cluster.wait_all_up().await;
    let mut events: Vec<_> = (0..3).map(|index| cluster.node(index).sip.subscribe()).collect();
    let mut dc = Phone::register("9101", "dispatch-a", cluster.address(A)).await;
    let mut user = Phone::register("1200", "bravo", cluster.address(A)).await;

    assert_eq!(order(&mut dc, "2300", "add", &["1200"]).await, 200);
    assert_eq!(
        expect_message(&mut user, &["pptDGNA"]).await,
        "pptDGNA;GDN=2300;UDN=1200;action=add"
    );
    assert_eq!(report(&mut user, "2300", "0").await, 200);
    let extension = expect_message(&mut dc, &["reDGNA"]).await;
    assert_eq!(extension, "reDGNA;GDN=2300;UDN=1200;DGNAresult=0");
    // Every hop passed it on: tcf-a twice (serving TCF, then the DC's TCF), tcf-b, tcf-c.
    for (index, times) in [(A, 2), (B, 1), (C, 1)] {
        for _ in 0..times {
            expect_event(&mut events[index], WAIT, |event| {
                matches!(event, TcfEvent::RegroupReported { group, user, result }
                    if *group == n("2300") && *user == n("1200") && result == "0")
            })
            .await;
        }
    }
    // The report was consumed on its way: a second one finds no order.
    assert_eq!(report(&mut user, "2300", "0").await, 481);

    // A cause other than 0 travels the same way.
    assert_eq!(order(&mut dc, "2300", "remove", &["1200"]).await, 200);
    expect_message(&mut user, &["action=remove"]).await;
    assert_eq!(report(&mut user, "2300", "17").await, 200);
    assert_eq!(
        expect_message(&mut dc, &["reDGNA"]).await,
        "reDGNA;GDN=2300;UDN=1200;DGNAresult=17"
    );

    // 1201 is not registered: its home reports 480 for it.
    assert_eq!(order(&mut dc, "2300", "add", &["1201"]).await, 200);
    assert_eq!(
        expect_message(&mut dc, &["reDGNA"]).await,
        "reDGNA;GDN=2300;UDN=1201;DGNAresult=480"
    );
    cluster.shutdown().await;
}

/// F-RGP-02 decision: regrouping survives restarts. DC 9200 (home tcf-b) visiting tcf-a adds
/// 1300 (home and serving tcf-c) to group 2200 (home tcf-b) and removes the provisioned member
/// 1205; the group home and the member's serving TCF are restarted; a group call of 2200 still
/// reaches 1300 and not 1205. After a cancel of the whole group the provisioned membership is
/// back: 1205 is invited, 1300 is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_rgp_02_regrouping_survives_a_restart_of_the_group_home_and_serving_tcf() {
    let mut cluster = Cluster::start(14400).await;
    cluster.wait_all_up().await;
    let mut dc = Phone::register("9200", "dispatch-b", cluster.address(A)).await;
    let mut added = Phone::register("1300", "charlie", cluster.address(C)).await;
    let mut removed = Phone::register("1205", "bravo", cluster.address(B)).await;
    let mut caller = Phone::register("1206", "bravo", cluster.address(B)).await;
    let mut member = Phone::register("1207", "bravo", cluster.address(B)).await;

    assert_eq!(order(&mut dc, "2200", "add", &["1300"]).await, 200);
    expect_message(&mut added, &["GDN=2200", "action=add"]).await;
    assert_eq!(order(&mut dc, "2200", "remove", &["1205"]).await, 200);
    expect_message(&mut removed, &["GDN=2200", "action=remove"]).await;
    wait_located(&cluster, B, "1300", "tcf-c").await;

    cluster.stop(B).await;
    cluster.stop(C).await;
    cluster.restart(B).await;
    cluster.restart(C).await;
    cluster.wait_all_up().await;

    let (mut call, _) = caller.set_up_call("2200").await;
    join(&mut member, "2200").await;
    join(&mut added, "2200").await;
    assert!(
        !invited_within(&mut removed, Duration::from_millis(1500)).await,
        "1205 stays removed"
    );
    end_call(&cluster, &mut caller, &mut call).await;

    // Cancel the whole regrouping of 2200: both users are told, membership is provisioned again.
    assert_eq!(order(&mut dc, "2200", "cancel", &[]).await, 200);
    expect_message(&mut added, &["GDN=2200", "action=cancel"]).await;
    expect_message(&mut removed, &["GDN=2200", "action=cancel"]).await;
    cluster.stop(B).await;
    cluster.restart(B).await;
    cluster.wait_all_up().await;
    let (mut call, _) = caller.set_up_call("2200").await;
    join(&mut member, "2200").await;
    join(&mut removed, "2200").await;
    assert!(
        !invited_within(&mut added, Duration::from_millis(1500)).await,
        "1300 is no member after the cancel"
    );
    end_call(&cluster, &mut caller, &mut call).await;
    cluster.shutdown().await;
}

/// F-RGP-01 refusals: malformed, oversize or foreign orders and stray reports get their error
/// (400, 403, 404, 415, 481, 503) and the nodes go on working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_rgp_01_hostile_orders_and_reports_are_refused() {
    let mut cluster = Cluster::start(14500).await;
    cluster.wait_all_up().await;
    let mut dc = Phone::register("9200", "dispatch-b", cluster.address(B)).await;
    let mut other_dc = Phone::register("9101", "dispatch-a", cluster.address(A)).await;
    let mut terminal = Phone::register("1205", "bravo", cluster.address(B)).await;

    let cases: Vec<(&str, String, Option<&str>, String, u16)> = vec![
        (
            "bad XML",
            "pptDGNA;GDN=2200;action=add".into(),
            Some(LIST),
            "<dgna><member>1300</dgna>".into(),
            400,
        ),
        (
            "not the schema",
            "pptDGNA;GDN=2200;action=add".into(),
            Some(LIST),
            "<list><user>1300</user></list>".into(),
            400,
        ),
        (
            "oversize body",
            "pptDGNA;GDN=2200;action=add".into(),
            Some(LIST),
            format!("<dgna><!-- {} --><member>1300</member></dgna>", "x".repeat(20_000)),
            400,
        ),
        (
            "too many members",
            "pptDGNA;GDN=2200;action=add".into(),
            Some(LIST),
            member_list(&vec!["1300"; 300]),
            400,
        ),
        (
            "unknown group",
            "pptDGNA;GDN=2999;action=add".into(),
            Some(LIST),
            member_list(&["1300"]),
            404,
        ),
        (
            "unknown user",
            "pptDGNA;GDN=2200;action=add".into(),
            Some(LIST),
            member_list(&["1399"]),
            404,
        ),
        (
            "a dispatcher listed",
            "pptDGNA;GDN=2200;action=add".into(),
            Some(LIST),
            member_list(&["9101"]),
            400,
        ),
        (
            "no member",
            "pptDGNA;GDN=2200;action=add".into(),
            None,
            String::new(),
            400,
        ),
        (
            "bad action",
            "pptDGNA;GDN=2200;action=merge".into(),
            Some(LIST),
            member_list(&["1300"]),
            400,
        ),
        (
            "other content type",
            "pptDGNA;GDN=2200;action=add".into(),
            Some("text/plain"),
            "1300".into(),
            415,
        ),
        (
            "per-user order from a terminal",
            "pptDGNA;GDN=2200;UDN=1300;action=add;DC=9200".into(),
            None,
            String::new(),
            403,
        ),
        (
            "report without an order",
            "reDGNA;GDN=2200;UDN=9200;DGNAresult=0".into(),
            None,
            String::new(),
            481,
        ),
    ];
    for (what, extension, content_type, body, expected) in &cases {
        let text = message_text(&dc, "2200", extension, *content_type, body);
        assert_eq!(send_and_status(&mut dc, &text).await, *expected, "{what}");
    }

    // Not a dispatcher of the group: a terminal, and a DC of other groups (relayed to tcf-b).
    let text = message_text(
        &terminal,
        "2200",
        "pptDGNA;GDN=2200;action=add",
        Some(LIST),
        &member_list(&["1300"]),
    );
    assert_eq!(send_and_status(&mut terminal, &text).await, 403, "a terminal");
    assert_eq!(
        order(&mut other_dc, "2200", "add", &["1300"]).await,
        403,
        "another group's DC"
    );
    // A report from a terminal with no order pending.
    assert_eq!(report(&mut terminal, "2200", "0").await, 481);
    // A report naming someone else.
    let text = message_text(&terminal, "2200", "reDGNA;GDN=2200;UDN=1206;DGNAresult=0", None, "");
    assert_eq!(send_and_status(&mut terminal, &text).await, 403);
    // The DC's identity from an address that registered nothing.
    let stranger = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let text = message_text(
        &dc,
        "2200",
        "pptDGNA;GDN=2200;action=add",
        Some(LIST),
        &member_list(&["1300"]),
    );
    let text = text.replace(
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

    // The nodes still work: a valid order is carried out.
    assert_eq!(order(&mut dc, "2200", "add", &["1300"]).await, 200);

    // The group home is down: the DC's TCF answers 503 at once.
    cluster.stop(C).await;
    let handle = &cluster.node(A).sip;
    let down = wait_for(Duration::from_secs(5), || async {
        handle.peer_up("tcf-c").await == Some(false)
    })
    .await;
    assert!(down, "tcf-a sees tcf-c down");
    assert_eq!(order(&mut other_dc, "2300", "add", &["1200"]).await, 503);
    cluster.shutdown().await;
}

/// F-RGP-02 for a user who was not registered when it was added, and who moves later: DC 9101
/// adds 1201 (home tcf-b, offline) to group 2300 (home tcf-c) — tcf-b reports `480` for it. When
/// 1201 registers at tcf-a, its home brings tcf-a up to date (the terminal is told, without a
/// report path) and a group call of 2300 reaches it there; after it moves to tcf-b, a call
/// reaches it at tcf-b.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_rgp_02_a_user_added_while_offline_gets_group_calls_where_it_registers() {
    let cluster = Cluster::start(14600).await;
    cluster.wait_all_up().await;
    let mut dc = Phone::register("9101", "dispatch-a", cluster.address(A)).await;
    let mut caller = Phone::register("1310", "charlie", cluster.address(C)).await;
    let mut member = Phone::register("1311", "charlie", cluster.address(C)).await;

    assert_eq!(order(&mut dc, "2300", "add", &["1201"]).await, 200);
    assert_eq!(
        expect_message(&mut dc, &["reDGNA"]).await,
        "reDGNA;GDN=2300;UDN=1201;DGNAresult=480"
    );

    let mut visiting = Phone::register("1201", "bravo", cluster.address(A)).await;
    assert_eq!(
        expect_message(&mut visiting, &["pptDGNA"]).await,
        "pptDGNA;GDN=2300;UDN=1201;action=add"
    );
    // Its report ends at its serving TCF (nobody ordered this update).
    assert_eq!(report(&mut visiting, "2300", "0").await, 200);
    wait_located(&cluster, C, "1201", "tcf-a").await;
    let (mut call, _) = caller.set_up_call("2300").await;
    join(&mut member, "2300").await;
    join(&mut visiting, "2300").await;
    end_call(&cluster, &mut caller, &mut call).await;

    // It moves home to tcf-b (which recorded the change as its home).
    let mut home = Phone::register("1201", "bravo", cluster.address(B)).await;
    wait_located(&cluster, C, "1201", "tcf-b").await;
    let (mut call, _) = caller.set_up_call("2300").await;
    join(&mut member, "2300").await;
    join(&mut home, "2300").await;
    end_call(&cluster, &mut caller, &mut call).await;
    assert!(
        expect_message_within(&mut dc, Duration::from_millis(300))
            .await
            .is_none(),
        "no report reaches the DC for the updates"
    );
    cluster.shutdown().await;
}

/// The next MESSAGE within `timeout` (its Ptt-Extension), if any.
async fn expect_message_within(phone: &mut Phone, timeout: Duration) -> Option<String> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let message = phone.next(remaining).await?;
        if message.method().is_some_and(|method| method.as_str() == "MESSAGE") {
            phone.ok(&message).await;
            return Some(ptt(&message));
        }
    }
}
