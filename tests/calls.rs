//! Single calls (F-SC-01 … F-SC-09) between three real TCF nodes running the example network
//! (`config/example/`): tcf-a homes 1100-1199 (hook answer), tcf-b homes 1200-1299 (direct
//! answer, forward on busy to 1100), tcf-c homes 1300-1399 (forward on no answer to 1200).
//! Phones register at visited TCFs so calls cross every hop: caller V-TCF → caller H-TCF →
//! callee H-TCF → callee V-TCF. Each test checks the SIP messages each phone saw and that RTP
//! flowed, byte-exact, through the relays (or stopped).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::needless_range_loop)]

mod common;

use std::time::Duration;

use common::cluster::*;
use common::phone::*;
use floorcast::control::tcf::TcfEvent;

const A: usize = 0;
const B: usize = 1;
const C: usize = 2;

/// The caller hangs up: 200 to its BYE, and the other side gets a BYE it answers.
async fn hang_up(caller: &mut Phone, call: &mut Outgoing, other: &mut Phone) {
    caller.in_dialog(call, "BYE", None).await;
    caller.expect_response("BYE", 200).await;
    let bye = other.expect_request("BYE").await;
    other.ok(&bye).await;
}

/// Waits until no node holds a call any more (every resource freed).
async fn assert_no_calls(cluster: &Cluster) {
    for index in 0..3 {
        if cluster.nodes[index].is_none() {
            continue;
        }
        let handle = &cluster.node(index).sip;
        let idle = wait_for(Duration::from_secs(5), || async {
            handle.stats().await.is_some_and(|stats| stats.calls == 0)
        })
        .await;
        assert!(idle, "{} freed every call", NAMES[index]);
    }
}

fn ptt_extension(message: &floorcast::sip::Message) -> String {
    message
        .headers_named("Ptt-Extension")
        .next()
        .and_then(|header| header.value_str().map(|value| value.into_owned()))
        .unwrap_or_default()
}

/// F-SC-01: 1100 (home tcf-a) at tcf-b calls 1101 (home tcf-a, hook mode) at tcf-c: the
/// INVITE goes b → a → c, the callee rings (180 back to the caller), answers (200), the caller
/// ACKs; RTP flows both ways byte-exact through the relays of tcf-b and tcf-c; the caller
/// hangs up and everything is freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_sc_01_call_success() {
    let cluster = Cluster::start(16100).await;
    cluster.wait_all_up().await;
    let mut caller = Phone::register("1100", "alpha", cluster.address(B)).await;
    let mut callee = Phone::register("1101", "alpha", cluster.address(C)).await;
    let mut events = cluster.node(A).sip.subscribe();

    let mut call = caller.call("1101").await;
    let incoming = callee.incoming().await;
    let extension = ptt_extension(&incoming.invite);
    assert!(extension.starts_with("pttcall"), "{extension}");
    assert!(extension.contains("callerUDN=1100"), "{extension}");
    assert!(extension.contains("answermode=hook"), "{extension}");
    // The offer reaching the callee names tcf-c's relay, not the caller.
    let offered = incoming.remote_rtp.expect("an offer");
    assert_ne!(offered.port(), caller.rtp_port());
    callee
        .respond(&incoming.invite, &incoming.tag, 180, "Ringing", None)
        .await;
    let ringing = caller.expect_response("INVITE", 180).await;
    assert_eq!(ringing.status(), Some(180));
    callee.answer(&incoming).await;
    assert_eq!(caller.final_for(&mut call).await, 200);
    callee.expect_request("ACK").await;
    expect_event(&mut events, WAIT, |event| {
        matches!(event, TcfEvent::CallAnswered { .. })
    })
    .await;
    assert_eq!(caller.statuses("INVITE"), vec![100, 180, 200]);

    // Media both ways through the relays.
    let answer_at = call.remote_rtp.expect("an answer");
    assert_ne!(answer_at.port(), callee.rtp_port());
    check_rtp_flows(&caller, answer_at, &callee, 1).await;
    check_rtp_flows(&callee, offered, &caller, 2).await;

    // The caller hangs up.
    caller.in_dialog(&mut call, "BYE", None).await;
    assert_eq!(caller.expect_response("BYE", 200).await.status(), Some(200));
    let bye = callee.expect_request("BYE").await;
    callee.ok(&bye).await;
    assert_eq!(callee.requests(), vec!["INVITE", "ACK", "BYE"]);
    assert_no_calls(&cluster).await;
    // Media stopped: nothing arrives any more.
    caller.send_rtp(answer_at, 5, 3).await;
    assert!(callee.receive_rtp(Duration::from_millis(300)).await.is_empty());
    cluster.shutdown().await;
}

/// F-SC-01 (183 and direct answer): 1200 (home tcf-b, direct mode) at tcf-c is called by 1100
/// at tcf-a: the INVITE tells the terminal to answer directly; the callee's 183 with early
/// media SDP is passed back (only because the callee sent one), then its 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_sc_01_direct_answer_with_183_passed_through() {
    let cluster = Cluster::start(16200).await;
    cluster.wait_all_up().await;
    let mut caller = Phone::register("1100", "alpha", cluster.address(A)).await;
    let mut callee = Phone::register("1200", "bravo", cluster.address(C)).await;
    let mut call = caller.call("1200").await;
    let incoming = callee.incoming().await;
    assert!(ptt_extension(&incoming.invite).contains("answermode=direct"));
    let early = sdp(callee.rtp_port(), "sendrecv");
    callee
        .respond(&incoming.invite, &incoming.tag, 183, "Session Progress", Some(&early))
        .await;
    let progress = caller.expect_response("INVITE", 180).await;
    assert_eq!(progress.status(), Some(183));
    let early_at = media_address(progress.body()).expect("183 carries SDP");
    assert_ne!(early_at.port(), callee.rtp_port(), "re-anchored at tcf-a");
    // Early media flows already.
    check_rtp_flows(&caller, early_at, &callee, 4).await;
    callee.answer(&incoming).await;
    assert_eq!(caller.final_for(&mut call).await, 200);
    assert_eq!(caller.statuses("INVITE"), vec![100, 183, 200]);
    callee.expect_request("ACK").await;
    hang_up(&mut caller, &mut call, &mut callee).await;
    assert_no_calls(&cluster).await;
    cluster.shutdown().await;
}

/// F-SC-02: 1101 is in a call (its home tcf-a knows); 1102 calls it and tcf-a answers 486
/// without bothering the terminal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_sc_02_callee_busy() {
    let cluster = Cluster::start(16300).await;
    cluster.wait_all_up().await;
    let mut first = Phone::register("1100", "alpha", cluster.address(B)).await;
    let mut busy = Phone::register("1101", "alpha", cluster.address(C)).await;
    let mut late = Phone::register("1102", "alpha", cluster.address(A)).await;
    let mut call = first.call("1101").await;
    let incoming = busy.incoming().await;
    busy.answer(&incoming).await;
    assert_eq!(first.final_for(&mut call).await, 200);
    busy.expect_request("ACK").await;

    let mut second = late.call("1101").await;
    assert_eq!(late.final_for(&mut second).await, 486);
    assert_eq!(late.statuses("INVITE"), vec![486]);
    // The busy terminal saw nothing of the second call.
    assert!(busy.next(Duration::from_millis(300)).await.is_none());

    hang_up(&mut first, &mut call, &mut busy).await;
    assert_no_calls(&cluster).await;
    cluster.shutdown().await;
}

/// F-SC-03: the callee rings, then declines (603): the caller gets the 603.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_sc_03_callee_rejects() {
    let cluster = Cluster::start(16400).await;
    cluster.wait_all_up().await;
    let mut caller = Phone::register("1300", "charlie", cluster.address(A)).await;
    let mut callee = Phone::register("1101", "alpha", cluster.address(B)).await;
    let mut call = caller.call("1101").await;
    let incoming = callee.incoming().await;
    callee
        .respond(&incoming.invite, &incoming.tag, 180, "Ringing", None)
        .await;
    caller.expect_response("INVITE", 180).await;
    callee
        .respond(&incoming.invite, &incoming.tag, 603, "Decline", None)
        .await;
    callee.expect_request("ACK").await;
    assert_eq!(caller.final_for(&mut call).await, 603);
    assert_eq!(caller.statuses("INVITE"), vec![100, 180, 603]);
    assert_no_calls(&cluster).await;
    cluster.shutdown().await;
}

/// F-SC-04: the caller cancels while the callee rings: 200 to the CANCEL and 487 to the
/// INVITE at every hop; the callee gets the CANCEL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_sc_04_caller_cancels() {
    let cluster = Cluster::start(16500).await;
    cluster.wait_all_up().await;
    let mut caller = Phone::register("1100", "alpha", cluster.address(B)).await;
    let mut callee = Phone::register("1301", "charlie", cluster.address(A)).await;
    let mut call = caller.call("1301").await;
    let incoming = callee.incoming().await;
    callee
        .respond(&incoming.invite, &incoming.tag, 180, "Ringing", None)
        .await;
    caller.expect_response("INVITE", 180).await;
    caller.cancel(&call).await;
    assert_eq!(caller.expect_response("CANCEL", 200).await.status(), Some(200));
    let cancel = callee.expect_request("CANCEL").await;
    callee.respond(&cancel, &incoming.tag, 200, "OK", None).await;
    callee
        .respond(&incoming.invite, &incoming.tag, 487, "Request Terminated", None)
        .await;
    callee.expect_request("ACK").await;
    assert_eq!(caller.final_for(&mut call).await, 487);
    assert_eq!(caller.statuses("INVITE"), vec![100, 180, 487]);
    assert_eq!(callee.requests(), vec!["INVITE", "CANCEL", "ACK"]);
    assert_no_calls(&cluster).await;
    cluster.shutdown().await;
}

/// F-SC-05: nobody answers; the caller's H-TCF (tcf-a) cancels when its ring timer runs out:
/// the callee gets CANCEL, the caller 480.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_sc_05_no_answer_ring_timeout() {
    let cluster = Cluster::start_with(16600, "[calls]\nring_timeout_s = 1\n").await;
    cluster.wait_all_up().await;
    let mut caller = Phone::register("1100", "alpha", cluster.address(B)).await;
    let mut callee = Phone::register("1101", "alpha", cluster.address(C)).await;
    let mut call = caller.call("1101").await;
    let incoming = callee.incoming().await;
    callee
        .respond(&incoming.invite, &incoming.tag, 180, "Ringing", None)
        .await;
    caller.expect_response("INVITE", 180).await;
    let cancel = callee.expect_request("CANCEL").await;
    callee.respond(&cancel, &incoming.tag, 200, "OK", None).await;
    callee
        .respond(&incoming.invite, &incoming.tag, 487, "Request Terminated", None)
        .await;
    assert_eq!(caller.final_for(&mut call).await, 480);
    assert_eq!(caller.statuses("INVITE"), vec![100, 180, 480]);
    assert_no_calls(&cluster).await;
    cluster.shutdown().await;
}

/// F-SC-06: the callee hangs up: the caller gets the BYE; media stops; all freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_sc_06_hang_up_by_callee() {
    let cluster = Cluster::start(16700).await;
    cluster.wait_all_up().await;
    let mut caller = Phone::register("1100", "alpha", cluster.address(B)).await;
    let mut callee = Phone::register("1201", "bravo", cluster.address(A)).await;
    let mut call = caller.call("1201").await;
    let mut incoming = callee.incoming().await;
    callee.answer(&incoming).await;
    assert_eq!(caller.final_for(&mut call).await, 200);
    callee.expect_request("ACK").await;
    let answer_at = call.remote_rtp.unwrap();
    check_rtp_flows(&caller, answer_at, &callee, 5).await;
    callee.callee_request(&mut incoming, "BYE").await;
    assert_eq!(callee.expect_response("BYE", 200).await.status(), Some(200));
    let bye = caller.expect_request("BYE").await;
    caller.ok(&bye).await;
    assert_no_calls(&cluster).await;
    caller.send_rtp(answer_at, 5, 6).await;
    assert!(callee.receive_rtp(Duration::from_millis(300)).await.is_empty());
    cluster.shutdown().await;
}

/// F-SC-07: the caller puts the call on hold with a re-INVITE (`a=sendonly`); the callee gets
/// the new offer (re-anchored), answers `a=recvonly`; the caller gets 200 with the answer and
/// ACKs; then resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_sc_07_session_change_hold_and_resume() {
    let cluster = Cluster::start(16800).await;
    cluster.wait_all_up().await;
    let mut caller = Phone::register("1100", "alpha", cluster.address(B)).await;
    let mut callee = Phone::register("1101", "alpha", cluster.address(C)).await;
    let mut call = caller.call("1101").await;
    let incoming = callee.incoming().await;
    callee.answer(&incoming).await;
    assert_eq!(caller.final_for(&mut call).await, 200);
    callee.expect_request("ACK").await;

    for (ours, theirs) in [("sendonly", "recvonly"), ("sendrecv", "sendrecv")] {
        let offer = sdp(caller.rtp_port(), ours);
        caller.in_dialog(&mut call, "INVITE", Some(&offer)).await;
        let reinvite = callee.expect_request("INVITE").await;
        let body = String::from_utf8_lossy(reinvite.body()).into_owned();
        assert!(body.contains(&format!("a={ours}")), "{body}");
        assert!(
            !body.contains(&format!("m=audio {} ", caller.rtp_port())),
            "re-anchored: {body}"
        );
        let answer = sdp(callee.rtp_port(), theirs);
        callee.respond(&reinvite, &incoming.tag, 200, "OK", Some(&answer)).await;
        let ok = caller.expect_response("INVITE", 200).await;
        assert!(String::from_utf8_lossy(ok.body()).contains(&format!("a={theirs}")));
        caller.ack(&call).await;
        callee.expect_request("ACK").await;
    }
    // Media still flows after the changes.
    check_rtp_flows(&caller, call.remote_rtp.unwrap(), &callee, 7).await;
    hang_up(&mut caller, &mut call, &mut callee).await;
    assert_no_calls(&cluster).await;
    cluster.shutdown().await;
}

/// F-SC-08: an unknown callee gets 404, an offer without a usable codec 488, a BYE in no
/// dialog 481.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_sc_08_unknown_user_bad_sdp_no_dialog() {
    let cluster = Cluster::start(16900).await;
    cluster.wait_all_up().await;
    let mut caller = Phone::register("1100", "alpha", cluster.address(B)).await;
    // 1199 is in tcf-a's range but not provisioned; 1500 is in nobody's range.
    for unknown in ["1199", "1500"] {
        let mut call = caller.call(unknown).await;
        assert_eq!(caller.final_for(&mut call).await, 404, "{unknown}");
    }
    let video_only = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
                      m=audio 4000 RTP/AVP 98\r\na=rtpmap:98 opus/48000/2\r\n";
    let mut call = caller.invite_text("1101", video_only);
    caller.send(&call.invite).await;
    assert_eq!(caller.final_for(&mut call).await, 488);
    let mut stray = caller.invite_text("1101", "");
    stray.to_tag = Some("nosuchdialog".to_owned());
    caller.in_dialog(&mut stray, "BYE", None).await;
    assert_eq!(caller.expect_response("BYE", 400).await.status(), Some(481));
    assert_no_calls(&cluster).await;
    cluster.shutdown().await;
}

/// F-SC-09 (busy): 1200 forwards on busy to 1100. 1200 is in a call; 1300 calls 1200 and
/// the call goes to 1100 instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_sc_09_forward_on_busy() {
    let cluster = Cluster::start(17000).await;
    cluster.wait_all_up().await;
    let mut first = Phone::register("1101", "alpha", cluster.address(A)).await;
    let mut busy = Phone::register("1200", "bravo", cluster.address(C)).await;
    let mut target = Phone::register("1100", "alpha", cluster.address(B)).await;
    let mut caller = Phone::register("1300", "charlie", cluster.address(A)).await;
    let mut events = cluster.node(B).sip.subscribe();
    let mut call = first.call("1200").await;
    let incoming = busy.incoming().await;
    busy.answer(&incoming).await;
    assert_eq!(first.final_for(&mut call).await, 200);

    let mut forwarded = caller.call("1200").await;
    let at_target = target.incoming().await;
    assert!(ptt_extension(&at_target.invite).contains("forwarded=1200"));
    expect_event(&mut events, WAIT, |event| {
        matches!(event, TcfEvent::CallForwarded { callee, to } if callee.as_str() == "1200" && to.as_str() == "1100")
    })
    .await;
    target.answer(&at_target).await;
    assert_eq!(caller.final_for(&mut forwarded).await, 200);
    check_rtp_flows(&caller, forwarded.remote_rtp.unwrap(), &target, 8).await;
    // The busy terminal saw only its own call.
    assert_eq!(busy.requests(), vec!["INVITE"]);
    busy.expect_request("ACK").await;
    assert!(busy.next(Duration::from_millis(300)).await.is_none());
    cluster.shutdown().await;
}

/// F-SC-09 (no answer): 1300 forwards on no answer to 1200. 1300 rings past the no-answer
/// time: its INVITE is cancelled (487) and 1200 gets the call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_sc_09_forward_on_no_answer() {
    let cluster = Cluster::start_with(17100, "[calls]\nno_answer_timeout_s = 1\n").await;
    cluster.wait_all_up().await;
    let mut caller = Phone::register("1100", "alpha", cluster.address(A)).await;
    let mut first = Phone::register("1300", "charlie", cluster.address(B)).await;
    let mut target = Phone::register("1200", "bravo", cluster.address(A)).await;
    let mut call = caller.call("1300").await;
    let incoming = first.incoming().await;
    first
        .respond(&incoming.invite, &incoming.tag, 180, "Ringing", None)
        .await;
    let cancel = first.expect_request("CANCEL").await;
    first.respond(&cancel, &incoming.tag, 200, "OK", None).await;
    first
        .respond(&incoming.invite, &incoming.tag, 487, "Request Terminated", None)
        .await;
    first.expect_request("ACK").await;
    let at_target = target.incoming().await;
    assert!(ptt_extension(&at_target.invite).contains("forwarded=1300"));
    target.answer(&at_target).await;
    assert_eq!(caller.final_for(&mut call).await, 200);
    check_rtp_flows(&target, at_target.remote_rtp.unwrap(), &caller, 9).await;
    hang_up(&mut caller, &mut call, &mut target).await;
    assert_no_calls(&cluster).await;
    cluster.shutdown().await;
}

/// A peer TCF dies mid-call: the surviving side is released with BYE once heartbeats declare
/// the peer down, and its resources are freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_sc_06_peer_down_mid_call_releases_survivor() {
    let mut cluster = Cluster::start(17200).await;
    cluster.wait_all_up().await;
    let mut caller = Phone::register("1100", "alpha", cluster.address(A)).await;
    let mut callee = Phone::register("1301", "charlie", cluster.address(C)).await;
    let mut call = caller.call("1301").await;
    let incoming = callee.incoming().await;
    callee.answer(&incoming).await;
    assert_eq!(caller.final_for(&mut call).await, 200);
    let mut events = cluster.node(A).sip.subscribe();
    cluster.stop(C).await;
    expect_event(
        &mut events,
        Duration::from_secs(10),
        |event| matches!(event, TcfEvent::CallEnded { reason, .. } if reason == "peer TCF down"),
    )
    .await;
    let bye = caller.expect_request("BYE").await;
    caller.ok(&bye).await;
    assert_no_calls(&cluster).await;
    cluster.shutdown().await;
}

/// Media anchoring `always`: every hop relays (here tcf-b, tcf-a and tcf-c each hold a relay
/// bridge), and RTP still arrives byte-exact both ways; with `edge` the home in the middle
/// (tcf-a) holds none (checked in `f_sc_01_call_success`'s setting here too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_sc_01_media_anchoring_always_and_edge() {
    for (base, anchoring, middle_anchors) in [(17300, "always", true), (17400, "edge", false)] {
        let cluster = Cluster::start_with(base, &format!("[calls]\nanchoring = \"{anchoring}\"\n")).await;
        cluster.wait_all_up().await;
        let free_before: Vec<usize> = (0..3)
            .map(|index| cluster.node(index).engine.ports_available())
            .collect();
        let mut caller = Phone::register("1100", "alpha", cluster.address(B)).await;
        let mut callee = Phone::register("1101", "alpha", cluster.address(C)).await;
        let mut call = caller.call("1101").await;
        let incoming = callee.incoming().await;
        callee.answer(&incoming).await;
        assert_eq!(caller.final_for(&mut call).await, 200);
        callee.expect_request("ACK").await;
        let free_during: Vec<usize> = (0..3)
            .map(|index| cluster.node(index).engine.ports_available())
            .collect();
        assert!(
            free_during[B] < free_before[B],
            "{anchoring}: the caller's serving TCF anchors"
        );
        assert!(
            free_during[C] < free_before[C],
            "{anchoring}: the callee's serving TCF anchors"
        );
        assert_eq!(
            free_during[A] < free_before[A],
            middle_anchors,
            "{anchoring}: the home TCF in the middle anchors only with `always`"
        );
        check_rtp_flows(&caller, call.remote_rtp.unwrap(), &callee, 10).await;
        check_rtp_flows(&callee, incoming.remote_rtp.unwrap(), &caller, 11).await;
        hang_up(&mut caller, &mut call, &mut callee).await;
        assert_no_calls(&cluster).await;
        cluster.shutdown().await;
    }
}
