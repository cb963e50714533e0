//! Group calls and floor control between three real TCF nodes running the example network
//! (`config/example/`). Group 2100 is homed on tcf-a; its members are 1100-1104 (home tcf-a),
//! 1200-1204 (home tcf-b), 1300-1304 (home tcf-c), its dispatchers 9100 (tcf-a) and 9200
//! (tcf-b). Members register at visited TCFs so every kind of session is exercised: a member
//! served by the group home itself, member TCFs with one downlink each, a DC with a downlink of
//! its own relayed by its serving TCF, and a set-up that passes through the caller's home.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::needless_range_loop)]

mod common;

use std::time::Duration;

use common::cluster::*;
use common::phone::*;
use floorcast::control::tcf::TcfEvent;
use floorcast::sip::Message;

const A: usize = 0;
const B: usize = 1;
const C: usize = 2;

/// A member in the group call: its phone and its session (it was invited).
struct Listener {
    phone: Phone,
    session: Incoming,
}

impl Listener {
    /// Waits for the group INVITE and answers it.
    async fn join(mut phone: Phone) -> Listener {
        let session = phone.incoming().await;
        let extension = ptt(&session.invite);
        assert!(extension.contains("calltype=4"), "{}: {extension}", phone.user());
        assert!(extension.contains("GDN=2100"), "{}: {extension}", phone.user());
        phone.answer(&session).await;
        phone.expect_request("ACK").await;
        Listener { phone, session }
    }

    /// The RTP address the TCF gave it.
    fn media(&self) -> std::net::SocketAddr {
        self.session.remote_rtp.expect("the group INVITE names the TCF's leg")
    }

    /// Waits for an INFO `pttinfo` naming `talker` and answers it.
    async fn expect_talker(&mut self, talker: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} expected pttinfo {talker}",
                self.phone.user()
            );
            let info = self.phone.expect_request("INFO").await;
            self.phone.ok(&info).await;
            let extension = ptt(&info);
            if extension.contains("pttinfo") && extension.contains(&format!("UDN={talker}")) {
                return;
            }
        }
    }
}

/// Waits until no node holds a call or group call any more.
async fn assert_all_released(cluster: &Cluster) {
    for index in 0..3 {
        let handle = &cluster.node(index).sip;
        let idle = wait_for(Duration::from_secs(5), || async {
            handle
                .stats()
                .await
                .is_some_and(|stats| stats.calls == 0 && stats.group_calls == 0)
        })
        .await;
        assert!(idle, "{} released every call and group call", NAMES[index]);
    }
}

/// Waits for the group home to know where `users` are (F-REG-07 pushes).
async fn wait_located(cluster: &Cluster, users: &[&str]) {
    let handle = &cluster.node(A).sip;
    for user in users {
        let number = floorcast::proto::Number::parse(user).unwrap();
        let known = wait_for(WAIT, || async { handle.location(&number).await.is_some() }).await;
        assert!(known, "the group home knows where {user} is");
    }
}

/// Sends RTP from a talker and checks what each listener receives: every packet, payload
/// unchanged, in one continuous stream per listener; and nothing back to the talker.
async fn talk_and_check(talker: &Phone, to: std::net::SocketAddr, pt: u8, listeners: &[&Phone], seed: u8) {
    let sent = talker.send_rtp_pt(to, 20, seed, pt).await;
    let expected: Vec<Vec<u8>> = sent.iter().map(|packet| packet[12..].to_vec()).collect();
    let mut heard = Vec::new();
    for listener in listeners {
        heard.push(listener.receive_rtp(Duration::from_millis(700)).await);
    }
    let counts: Vec<(String, usize)> = listeners
        .iter()
        .zip(&heard)
        .map(|(listener, packets)| (listener.user().to_owned(), packets.len()))
        .collect();
    for (listener, received) in listeners.iter().zip(&heard) {
        assert_eq!(
            received.len(),
            expected.len(),
            "{} hears every packet of {}: {counts:?}",
            listener.user(),
            talker.user()
        );
        let payloads = continuous_payloads(received);
        assert!(
            payloads == expected,
            "{} hears {} byte-exact",
            listener.user(),
            talker.user()
        );
    }
    assert!(
        talker.receive_rtp(Duration::from_millis(100)).await.is_empty(),
        "{} never hears itself",
        talker.user()
    );
}

/// F-GRP-01, F-GRP-03, F-GRP-04, F-FLR-01, F-FLR-05, F-FLR-07, F-FLR-11, F-GRP-05, F-GRP-06,
/// F-UP-02, F-UP-03: 1300 (home tcf-c) at tcf-b sets up a call of group 2100 (home tcf-a); the
/// set-up goes b → c → a; tcf-a invites 1100 (served by itself) directly, sends one downlink to
/// tcf-b (1101) and one to tcf-c (1301), and one to the DC 9200 through tcf-c. Everyone hears
/// 1300, then 1300 releases the floor and 1301 takes it with a re-INVITE; everyone hears 1301
/// in the same continuous stream. 1300 hangs up: as the initiator it ends the call everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_grp_01_group_call_setup_through_caller_home_and_floor_handover() {
    let cluster = Cluster::start(18100).await;
    cluster.wait_all_up().await;
    let mut events = cluster.node(A).sip.subscribe();
    let m1100 = Phone::register("1100", "alpha", cluster.address(A)).await;
    let m1101 = Phone::register("1101", "alpha", cluster.address(B)).await;
    let mut caller = Phone::register("1300", "charlie", cluster.address(B)).await;
    let m1301 = Phone::register("1301", "charlie", cluster.address(C)).await;
    let dc = Phone::register("9200", "dispatch-b", cluster.address(C)).await;
    wait_located(&cluster, &["1100", "1101", "1300", "1301", "9200"]).await;

    let mut call = caller.call("2100").await;
    assert_eq!(caller.final_for(&mut call).await, 200);
    let ok = caller
        .seen
        .iter()
        .rev()
        .find(|m| m.status() == Some(200))
        .cloned()
        .unwrap();
    assert!(
        ptt(&ok).contains("pttaccept"),
        "the set-up grants the floor: {}",
        ptt(&ok)
    );
    expect_event(&mut events, WAIT, |event| {
        matches!(event, TcfEvent::GroupCallStarted { .. })
    })
    .await;

    let mut l1100 = Listener::join(m1100).await;
    let mut l1101 = Listener::join(m1101).await;
    let mut l1301 = Listener::join(m1301).await;
    let mut ldc = Listener::join(dc).await;
    for listener in [&mut l1100, &mut l1101, &mut l1301, &mut ldc] {
        listener.expect_talker("1300").await;
    }
    let talk_to = call.remote_rtp.expect("the 200 names tcf-b's leg");
    if std::env::var("GROUP_DEBUG").is_ok() {
        caller
            .send_rtp_pt(talk_to, 3, 9, first_payload_type(ok.body()).unwrap())
            .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        for index in 0..3 {
            for worker in cluster.node(index).engine.stats(true).unwrap() {
                eprintln!("{} totals {:?}", NAMES[index], worker.totals);
                for leg in worker.legs {
                    eprintln!("  {leg:?}");
                }
            }
        }
    }
    let pt = first_payload_type(ok.body()).expect("an answer");
    talk_and_check(
        &caller,
        talk_to,
        pt,
        &[&l1100.phone, &l1101.phone, &l1301.phone, &ldc.phone],
        1,
    )
    .await;

    // 1300 gives the floor back (F-FLR-05 via F-FLR-11): everyone is told the floor is idle.
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
    for listener in [&mut l1100, &mut l1101, &mut l1301, &mut ldc] {
        listener.expect_talker("idle").await;
    }

    // 1301 asks for the floor with a re-INVITE and gets it (F-FLR-01 via F-FLR-11).
    let request = sdp(l1301.phone.rtp_port(), "sendonly");
    l1301
        .phone
        .callee_request_with(
            &mut l1301.session,
            "INVITE",
            Some(&request),
            "Ptt-Extension: pttrequest\r\n",
        )
        .await;
    let granted = l1301.phone.expect_response("INVITE", 200).await;
    assert!(ptt(&granted).contains("pttaccept"), "{}", ptt(&granted));
    for listener in [&mut l1100, &mut l1101, &mut ldc] {
        listener.expect_talker("1301").await;
    }
    let talk_to = l1301.media();
    talk_and_check(
        &l1301.phone,
        talk_to,
        pt,
        &[&l1100.phone, &l1101.phone, &caller, &ldc.phone],
        2,
    )
    .await;

    // The initiator hangs up (F-GRP-05): the home releases the whole call (F-GRP-06).
    caller.in_dialog(&mut call, "BYE", None).await;
    caller.expect_response("BYE", 200).await;
    for listener in [&mut l1100, &mut l1101, &mut l1301, &mut ldc] {
        let bye = listener.phone.expect_request("BYE").await;
        listener.phone.ok(&bye).await;
    }
    expect_event(&mut events, WAIT, |event| {
        matches!(event, TcfEvent::GroupCallEnded { .. })
    })
    .await;
    assert_all_released(&cluster).await;
    let _ = Message::parse_datagram;
    cluster.shutdown().await;
}
