//! Dispatcher subscriptions (F-SUB-01, F-SUB-02) between three real TCF nodes running the
//! example network (`config/example/`): group 2100 is homed on tcf-a (members 1100-1104,
//! 1200-1204, 1300-1304; dispatchers 9100, 9200), the DC 9200 on tcf-b, users 1300-1319 on
//! tcf-c. Each test checks the exact SUBSCRIBE answers and NOTIFYs (headers and XML body) the
//! DC saw.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::cluster::*;
use common::phone::*;
use floorcast::sip::Message;

const A: usize = 0;
const B: usize = 1;
const C: usize = 2;

const GROUP_INFO: &str = "application/pttgroupinfo+xml";
const USER_INFO: &str = "application/pttuserinfo+xml";

fn header(message: &Message, name: &str) -> String {
    message
        .headers_named(name)
        .next()
        .and_then(|header| header.value_str().map(|value| value.into_owned()))
        .unwrap_or_default()
}

fn body(message: &Message) -> String {
    String::from_utf8_lossy(message.body()).into_owned()
}

fn tag_of(value: &str) -> Option<String> {
    value
        .split(';')
        .find_map(|param| param.trim().strip_prefix("tag=").map(str::to_owned))
}

/// A DC's subscription: its phone and its side of the dialog.
struct Subscriber {
    phone: Phone,
    target: String,
    event: &'static str,
    call_id: String,
    to_tag: Option<String>,
    cseq: u32,
}

impl Subscriber {
    fn new(phone: Phone, target: &str, event: &'static str) -> Subscriber {
        Subscriber {
            phone,
            target: target.to_owned(),
            event,
            call_id: format!("{:x}@dc", rand::random::<u64>()),
            to_tag: None,
            cseq: 0,
        }
    }

    /// Sends the SUBSCRIBE (in the dialog once it exists) and returns the final answer.
    async fn subscribe(&mut self, expires: u32) -> Message {
        self.cseq += 1;
        let me = self.phone.sip_address();
        let server = self.phone.server;
        let accept = if self.event == "ptt-group" {
            GROUP_INFO
        } else {
            USER_INFO
        };
        let to_tag = self
            .to_tag
            .as_ref()
            .map(|tag| format!(";tag={tag}"))
            .unwrap_or_default();
        let text = format!(
            "SUBSCRIBE sip:{target}@{server} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{branch:x};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:{user}@{server}>;tag=dc1\r\nTo: <sip:{target}@{server}>{to_tag}\r\n\
             Call-ID: {call_id}\r\nCSeq: {cseq} SUBSCRIBE\r\nContact: <sip:{user}@{me}>\r\nEvent: {event}\r\n\
             Expires: {expires}\r\nAccept: {accept}\r\nContent-Length: 0\r\n\r\n",
            target = self.target,
            branch = rand::random::<u64>(),
            user = self.phone.user(),
            call_id = self.call_id,
            cseq = self.cseq,
            event = self.event,
        );
        self.phone.send(&text).await;
        let response = self.phone.expect_response("SUBSCRIBE", 200).await;
        if response.status() == Some(200) && self.to_tag.is_none() {
            self.to_tag = tag_of(&header(&response, "To"));
        }
        response
    }

    /// Waits for the next NOTIFY of this subscription and answers it 200 (a group INVITE to the
    /// DC meanwhile is declined: the DC only watches).
    async fn notify(&mut self) -> Message {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let message = self
                .phone
                .next(remaining)
                .await
                .unwrap_or_else(|| panic!("{} expected a NOTIFY", self.phone.user()));
            match message.method().map(|method| method.as_str().to_owned()).as_deref() {
                Some("NOTIFY") if message.call_id().ok() == Some(self.call_id.as_str()) => {
                    self.phone.ok(&message).await;
                    assert_eq!(header(&message, "Event"), self.event);
                    assert_eq!(message.to_tag().unwrap(), Some("dc1"));
                    assert_eq!(message.from_tag().unwrap(), self.to_tag.as_deref());
                    return message;
                }
                Some("INVITE") => {
                    self.phone
                        .respond(&message, "dc", 480, "Temporarily Unavailable", None)
                        .await
                }
                Some("NOTIFY") => self.phone.ok(&message).await,
                _ => {}
            }
        }
    }

    /// Waits for a NOTIFY whose body contains every one of `parts` (earlier ones are answered
    /// and returned too, in order).
    async fn notify_until(&mut self, parts: &[&str]) -> Vec<Message> {
        let mut seen = Vec::new();
        loop {
            let notify = self.notify().await;
            let text = body(&notify);
            seen.push(notify);
            if parts.iter().all(|part| text.contains(part)) {
                return seen;
            }
        }
    }

    /// Nothing more arrives for this subscription within `quiet`.
    async fn assert_quiet(&mut self, quiet: Duration) {
        while let Some(message) = self.phone.next(quiet).await {
            assert!(
                message.call_id().ok() != Some(self.call_id.as_str()),
                "nothing more expected, got {:?}",
                message.method()
            );
        }
    }
}

/// The body without its `version` attribute (it counts NOTIFYs of the hop that made it).
fn without_version(text: &str) -> String {
    let Some(start) = text.find("info version=\"").map(|at| at + 4) else {
        return text.to_owned();
    };
    let after = &text[start + 10..];
    let end = after.find('"').unwrap();
    format!("{}{}", &text[..start], &after[end + 1..])
}

/// F-SUB-01: the DC 9200 (home tcf-b, registered there) subscribes to group 2100 (home tcf-a):
/// tcf-b relays to tcf-a; the DC gets 200 and a NOTIFY with the members and who is registered
/// where; then a member at tcf-c registers, a group call starts (talker 1300) and the talker
/// gives the floor back: each change reaches the DC as a NOTIFY; an unsubscribe ends it with a
/// terminated NOTIFY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_sub_01_dc_subscribes_to_a_group_homed_on_another_tcf() {
    let cluster = Cluster::start(13100).await;
    cluster.wait_all_up().await;
    let _m1100 = Phone::register("1100", "alpha", cluster.address(A)).await;
    let dc = Phone::register("9200", "dispatch-b", cluster.address(B)).await;
    let handle = &cluster.node(A).sip;
    let number = floorcast::proto::Number::parse("1100").unwrap();
    assert!(wait_for(WAIT, || async { handle.location(&number).await.is_some() }).await);

    let mut dc = Subscriber::new(dc, "2100", "ptt-group");
    let ok = dc.subscribe(120).await;
    assert_eq!(ok.status(), Some(200));
    assert_eq!(header(&ok, "Expires"), "120");
    let first = dc.notify().await;
    let state = header(&first, "Subscription-State");
    assert!(state.starts_with("active;expires="), "{state}");
    assert_eq!(header(&first, "Content-Type"), GROUP_INFO);
    let mut expected = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\r\n<pttgroupinfo group=\"2100\">\r\n  <call active=\"false\"/>\r\n",
    );
    for member in (1100..=1104).chain(1200..=1204).chain(1300..=1304) {
        if member == 1100 {
            expected.push_str("  <member number=\"1100\" registered=\"true\" servingtcf=\"tcf-a\"/>\r\n");
        } else {
            expected.push_str(&format!("  <member number=\"{member}\" registered=\"false\"/>\r\n"));
        }
    }
    expected.push_str("</pttgroupinfo>\r\n");
    assert_eq!(without_version(&body(&first)), expected);

    // A member registers at tcf-c (its home): the location push reaches tcf-a, the DC hears.
    let mut caller = Phone::register("1300", "charlie", cluster.address(C)).await;
    let seen = dc
        .notify_until(&["<member number=\"1300\" registered=\"true\" servingtcf=\"tcf-c\"/>"])
        .await;
    assert_eq!(seen.len(), 1, "one NOTIFY for one change");

    // 1300 sets up a group call and holds the floor.
    let mut call = caller.call("2100").await;
    assert_eq!(caller.final_for(&mut call).await, 200);
    dc.notify_until(&["<call active=\"true\" initiator=\"1300\" talker=\"1300\"/>"])
        .await;
    // It gives the floor back: the call stays up, without a talker.
    let release = sdp(caller.rtp_port(), "recvonly");
    caller
        .in_dialog_with(
            &mut call,
            "INVITE",
            Some(&release),
            "Ptt-Extension: pttreleasefloor\r\n",
        )
        .await;
    assert_eq!(caller.expect_response("INVITE", 200).await.status(), Some(200));
    caller.ack(&call).await;
    dc.notify_until(&["<call active=\"true\" initiator=\"1300\"/>"]).await;
    // 1300 hangs up: the call ends.
    caller.in_dialog(&mut call, "BYE", None).await;
    caller.expect_response("BYE", 200).await;
    dc.notify_until(&["<call active=\"false\"/>"]).await;

    // Unsubscribe: 200 with Expires 0, then the final NOTIFY with the state.
    let ok = dc.subscribe(0).await;
    assert_eq!(ok.status(), Some(200));
    assert_eq!(header(&ok, "Expires"), "0");
    let last = dc.notify().await;
    assert_eq!(header(&last, "Subscription-State"), "terminated;reason=timeout");
    assert!(body(&last).contains("<member number=\"1300\" registered=\"true\" servingtcf=\"tcf-c\"/>"));
    dc.assert_quiet(Duration::from_millis(300)).await;
    // The dialog is gone at both hops.
    assert_eq!(dc.subscribe(60).await.status(), Some(481));
    cluster.shutdown().await;
}

/// F-SUB-02: the DC 9200 (at tcf-b) subscribes to user 1300 (home tcf-c) registered at tcf-b:
/// the NOTIFY says registered, served by tcf-b, not busy; a call of 1300 makes it busy and its
/// end not busy; its deregistration is notified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_sub_02_dc_subscribes_to_a_user_homed_on_another_tcf() {
    let cluster = Cluster::start(13200).await;
    cluster.wait_all_up().await;
    let dc = Phone::register("9200", "dispatch-b", cluster.address(B)).await;
    let mut user = Phone::register("1300", "charlie", cluster.address(B)).await;
    let mut callee = Phone::register("1301", "charlie", cluster.address(C)).await;

    let mut dc = Subscriber::new(dc, "1300", "ptt-user");
    let ok = dc.subscribe(300).await;
    assert_eq!(ok.status(), Some(200));
    assert_eq!(header(&ok, "Expires"), "300");
    let first = dc.notify().await;
    assert!(header(&first, "Subscription-State").starts_with("active;expires="));
    assert_eq!(header(&first, "Content-Type"), USER_INFO);
    assert_eq!(
        without_version(&body(&first)),
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\r\n<pttuserinfo user=\"1300\">\r\n\
         \x20 <registration registered=\"true\" servingtcf=\"tcf-b\"/>\r\n  <call busy=\"false\"/>\r\n</pttuserinfo>\r\n"
    );

    // A call: busy while it lasts.
    let mut call = user.call("1301").await;
    let incoming = callee.incoming().await;
    callee.answer(&incoming).await;
    assert_eq!(user.final_for(&mut call).await, 200);
    let seen = dc.notify_until(&["<call busy=\"true\"/>"]).await;
    assert_eq!(seen.len(), 1);
    user.in_dialog(&mut call, "BYE", None).await;
    let bye = callee.expect_request("BYE").await;
    callee.ok(&bye).await;
    user.expect_response("BYE", 200).await;
    let seen = dc.notify_until(&["<call busy=\"false\"/>"]).await;
    assert_eq!(seen.len(), 1);

    // Deregistration.
    let response = user.terminal.register(cluster.address(B), 0).await;
    assert_eq!(response.status(), Some(200));
    let seen = dc.notify_until(&["<registration registered=\"false\"/>"]).await;
    assert_eq!(seen.len(), 1);
    assert!(body(&seen[0]).contains("<call busy=\"false\"/>"));
    cluster.shutdown().await;
}

/// Expiry and refresh through the relay: a refresh gets 200 with the new period and a NOTIFY;
/// at the end of the period the home's final NOTIFY (`terminated;reason=timeout`) reaches the
/// DC; a refresh after it gets 481.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_sub_01_expiry_and_refresh() {
    let cluster = Cluster::start(13300).await;
    cluster.wait_all_up().await;
    let dc = Phone::register("9200", "dispatch-b", cluster.address(B)).await;
    let mut dc = Subscriber::new(dc, "2100", "ptt-group");
    assert_eq!(dc.subscribe(2).await.status(), Some(200));
    dc.notify().await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let ok = dc.subscribe(3).await;
    assert_eq!(ok.status(), Some(200));
    assert_eq!(header(&ok, "Expires"), "3");
    let refreshed = dc.notify().await;
    let state = header(&refreshed, "Subscription-State");
    assert!(state == "active;expires=3" || state == "active;expires=2", "{state}");
    // Not over at the first period's end (2 s after the start).
    let started = tokio::time::Instant::now();
    let last = dc.notify().await;
    assert_eq!(header(&last, "Subscription-State"), "terminated;reason=timeout");
    let waited = started.elapsed();
    assert!(
        waited > Duration::from_millis(2000) && waited < Duration::from_millis(4000),
        "{waited:?}"
    );
    assert_eq!(dc.subscribe(60).await.status(), Some(481));
    cluster.shutdown().await;
}

/// Hostile and refused SUBSCRIBEs get their errors, never a subscription; a NOTIFY for no
/// dialog gets 481; a flood of SUBSCRIBEs from one DC is bounded (503 past 16).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_sub_01_f_sub_02_refusals_and_flood() {
    let cluster = Cluster::start(13400).await;
    cluster.wait_all_up().await;
    let dc = Phone::register("9200", "dispatch-b", cluster.address(B)).await;
    let user = Phone::register("1200", "bravo", cluster.address(B)).await;
    let mut dc = Subscriber::new(dc, "2100", "presence");
    let refused = dc.subscribe(60).await;
    assert_eq!(refused.status(), Some(489));
    assert_eq!(header(&refused, "Allow-Events"), "ptt-group, ptt-user");
    // A user that is no dispatcher.
    let mut not_dc = Subscriber::new(user, "2100", "ptt-group");
    assert_eq!(not_dc.subscribe(60).await.status(), Some(403));
    // Unknown group and user; a group whose dispatchers do not include 9200 (2300, home tcf-c).
    for (target, event, status) in [
        ("2999", "ptt-group", 404),
        ("1399", "ptt-user", 404),
        ("2300", "ptt-group", 403),
    ] {
        let mut attempt = Subscriber::new(dc.phone, target, event);
        assert_eq!(attempt.subscribe(60).await.status(), Some(status), "{target}");
        dc.phone = attempt.phone;
    }
    // A NOTIFY for no subscription.
    let me = dc.phone.sip_address();
    let server = dc.phone.server;
    dc.phone
        .send(&format!(
            "NOTIFY sip:2100@{server} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKstray;rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:9200@{server}>;tag=a\r\nTo: <sip:2100@{server}>;tag=b\r\n\
             Call-ID: stray\r\nCSeq: 1 NOTIFY\r\nEvent: ptt-group\r\nSubscription-State: active\r\n\
             Content-Length: 0\r\n\r\n"
        ))
        .await;
    assert_eq!(dc.phone.expect_response("NOTIFY", 200).await.status(), Some(481));

    // A flood: 20 subscriptions to one user; 16 are taken.
    let mut statuses = Vec::new();
    for _ in 0..20 {
        let mut flood = Subscriber::new(dc.phone, "1100", "ptt-user");
        statuses.push(flood.subscribe(60).await.status().unwrap());
        dc.phone = flood.phone;
    }
    assert_eq!(
        statuses.iter().filter(|&&status| status == 200).count(),
        16,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|&&status| status == 503).count(),
        4,
        "{statuses:?}"
    );
    // The nodes still serve.
    let other = Phone::register("1201", "bravo", cluster.address(B)).await;
    drop(other);
    cluster.shutdown().await;
}

/// F-SUB-01 with dynamic regrouping (F-RGP): the group's state lists the effective members, so
/// DC 9100 (tcf-a, a dispatcher of 2100) adding 1110 to group 2100 sends the subscribed DC 9200
/// (tcf-b) a NOTIFY that lists it, and removing it another that does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_sub_01_a_regrouping_is_notified_to_the_group_subscriber() {
    let cluster = Cluster::start(13500).await;
    cluster.wait_all_up().await;
    let subscriber = Phone::register("9200", "dispatch-b", cluster.address(B)).await;
    let mut ordering = Phone::register("9100", "dispatch-a", cluster.address(A)).await;
    let mut dc = Subscriber::new(subscriber, "2100", "ptt-group");
    assert_eq!(dc.subscribe(120).await.status(), Some(200));
    let first = dc.notify().await;
    assert!(!body(&first).contains("number=\"1110\""), "{}", body(&first));

    let (me, server) = (ordering.sip_address(), ordering.server);
    let order = |action: &str| {
        let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<dgna>\n  <member>1110</member>\n</dgna>\n";
        format!(
            "MESSAGE sip:2100@{server} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{branch:x};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:9100@{server}>;tag=r{tag:x}\r\nTo: <sip:2100@{server}>\r\n\
             Call-ID: {call_id:x}@phone\r\nCSeq: 1 MESSAGE\r\nPtt-Extension: pptDGNA;GDN=2100;action={action}\r\n\
             Content-Type: application/pttdgnagrpmbrlist+xml\r\nContent-Length: {length}\r\n\r\n{body}",
            branch = rand::random::<u64>(),
            tag = rand::random::<u32>(),
            call_id = rand::random::<u64>(),
            length = body.len(),
        )
    };
    let add = order("add");
    ordering.send(&add).await;
    assert_eq!(ordering.expect_response("MESSAGE", 200).await.status(), Some(200));
    let seen = dc
        .notify_until(&["<member number=\"1110\" registered=\"false\"/>"])
        .await;
    assert!(!seen.is_empty());

    let remove = order("remove");
    ordering.send(&remove).await;
    assert_eq!(ordering.expect_response("MESSAGE", 200).await.status(), Some(200));
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let notify = dc.notify().await;
        if !body(&notify).contains("number=\"1110\"") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no NOTIFY without 1110");
    }
    cluster.shutdown().await;
}
