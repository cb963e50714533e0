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
