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
async fn f_grp_01_f_grp_03_f_grp_04_f_flr_11_setup_fanout_and_terminal_floor_handover() {
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
    cluster.shutdown().await;
}

/// The standard scene: 1300 at tcf-b sets up group 2100 and holds the floor; 1100 (at the
/// home), 1101 (tcf-b), 1301 (tcf-c) and the DC 9200 (tcf-c) have joined and know 1300 talks.
struct Scene {
    cluster: Cluster,
    caller: Phone,
    call: Outgoing,
    pt: u8,
    l1100: Listener,
    l1101: Listener,
    l1301: Listener,
    dc: Listener,
}

impl Scene {
    async fn start(base: u16, extra: &str) -> Scene {
        let cluster = Cluster::start_with(base, extra).await;
        cluster.wait_all_up().await;
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
        let pt = first_payload_type(ok.body()).unwrap();
        let mut scene = Scene {
            l1100: Listener::join(m1100).await,
            l1101: Listener::join(m1101).await,
            l1301: Listener::join(m1301).await,
            dc: Listener::join(dc).await,
            cluster,
            caller,
            call,
            pt,
        };
        for listener in scene.listeners() {
            listener.expect_talker("1300").await;
        }
        scene
    }

    fn listeners(&mut self) -> [&mut Listener; 4] {
        [&mut self.l1100, &mut self.l1101, &mut self.l1301, &mut self.dc]
    }

    /// The caller releases the floor; everyone hears "idle".
    async fn caller_releases(&mut self) {
        let release = sdp(self.caller.rtp_port(), "recvonly");
        self.caller
            .in_dialog_with(
                &mut self.call,
                "INVITE",
                Some(&release),
                "Ptt-Extension: pttreleasefloor\r\n",
            )
            .await;
        self.caller.expect_response("INVITE", 200).await;
        self.caller.ack(&self.call).await;
    }

    /// The caller hangs up and everyone is released.
    async fn end(mut self) {
        self.caller.in_dialog(&mut self.call, "BYE", None).await;
        self.caller.expect_response("BYE", 200).await;
        for listener in self.listeners() {
            let bye = listener.phone.expect_request("BYE").await;
            listener.phone.ok(&bye).await;
        }
        assert_all_released(&self.cluster).await;
        self.cluster.shutdown().await;
    }
}

impl Listener {
    /// Asks for the floor (`pttrequest` or `pttinsert`) with a re-INVITE; returns the response.
    async fn request_floor(&mut self, token: &str) -> floorcast::sip::Message {
        let offer = sdp(self.phone.rtp_port(), "sendonly");
        let extra = format!("Ptt-Extension: {token}\r\n");
        self.phone
            .callee_request_with(&mut self.session, "INVITE", Some(&offer), &extra)
            .await;
        let response = self.phone.expect_response("INVITE", 200).await;
        if response.status() == Some(200) {
            self.phone.callee_ack(&self.session).await;
        }
        response
    }

    /// Gives the floor back with a re-INVITE.
    async fn release_floor(&mut self) {
        let offer = sdp(self.phone.rtp_port(), "recvonly");
        self.phone
            .callee_request_with(
                &mut self.session,
                "INVITE",
                Some(&offer),
                "Ptt-Extension: pttreleasefloor\r\n",
            )
            .await;
        assert_eq!(self.phone.expect_response("INVITE", 200).await.status(), Some(200));
        self.phone.callee_ack(&self.session).await;
    }

    /// Waits for an in-dialog INVITE from the TCF carrying `token`, answers 200.
    async fn expect_floor_invite(&mut self, token: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} expected {token}",
                self.phone.user()
            );
            let message = self.phone.next(WAIT).await.expect("a message");
            match message.method().map(|m| m.as_str().to_owned()).as_deref() {
                Some("INVITE") => {
                    let answer = answer_sdp(message.body(), self.phone.rtp_port(), "sendrecv");
                    self.phone
                        .respond(&message, &self.session.tag, 200, "OK", Some(&answer))
                        .await;
                    if ptt(&message).contains(token) {
                        return;
                    }
                }
                Some("INFO") => self.phone.ok(&message).await,
                _ => {}
            }
        }
    }
}

/// F-GRP-02: an unknown group gets 404, a caller who is no member of the group 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_grp_02_setup_rejected() {
    let cluster = Cluster::start(18200).await;
    cluster.wait_all_up().await;
    // 1105 is a member of 2200 only.
    let mut outsider = Phone::register("1105", "alpha", cluster.address(B)).await;
    let mut call = outsider.call("2100").await;
    assert_eq!(outsider.final_for(&mut call).await, 403);
    // 2199 is in tcf-a's group range but not provisioned.
    let mut call = outsider.call("2199").await;
    assert_eq!(outsider.final_for(&mut call).await, 404);
    assert_all_released(&cluster).await;
    cluster.shutdown().await;
}

/// F-FLR-03 and F-FLR-04: 1301 asks while 1300 talks and is queued (200 with `pttwaiting` and
/// its position); when 1300 releases, the home grants the floor to 1301 with an INVITE in its
/// session (relayed to the terminal as an in-dialog INVITE with `pttaccept`); everyone is told
/// 1301 talks, and hears it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_flr_03_floor_queued_then_f_flr_04_granted_from_queue() {
    let mut scene = Scene::start(18300, "").await;
    let queued = scene.l1301.request_floor("pttrequest").await;
    assert!(ptt(&queued).contains("pttwaiting"), "{}", ptt(&queued));
    assert!(ptt(&queued).contains("position=1"), "{}", ptt(&queued));
    scene.caller_releases().await;
    scene.l1301.expect_floor_invite("pttaccept").await;
    for listener in [&mut scene.l1100, &mut scene.l1101, &mut scene.dc] {
        listener.expect_talker("1301").await;
    }
    let to = scene.l1301.media();
    talk_and_check(
        &scene.l1301.phone,
        to,
        scene.pt,
        &[&scene.l1100.phone, &scene.caller],
        3,
    )
    .await;
    scene.end().await;
}

/// F-FLR-02: with no queue (`groups.queue = 0`), a request while the floor is taken is
/// rejected with 480.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_flr_02_request_rejected() {
    let mut scene = Scene::start(18400, "[groups]\nqueue = 0\n").await;
    let offer = sdp(scene.l1301.phone.rtp_port(), "sendonly");
    scene
        .l1301
        .phone
        .callee_request_with(
            &mut scene.l1301.session,
            "INVITE",
            Some(&offer),
            "Ptt-Extension: pttrequest\r\n",
        )
        .await;
    let response = scene.l1301.phone.expect_response("INVITE", 300).await;
    assert_eq!(response.status(), Some(480));
    scene.end().await;
}

/// F-FLR-06: the holder talks past `groups.max_talk_time_s`: the home takes the floor away
/// (BYE on the talker session, told to the terminal as `pttreleasefloor`) and the floor is idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_flr_06_network_forced_release_after_max_talk_time() {
    let mut scene = Scene::start(18500, "[groups]\nmax_talk_time_s = 1\nhang_time_s = 60\n").await;
    let mut events = scene.cluster.node(A).sip.subscribe();
    // The caller keeps talking.
    let to = scene.call.remote_rtp.unwrap();
    let talker = scene.caller.send_rtp_pt(to, 10, 4, scene.pt);
    let _ = talker.await;
    expect_event(
        &mut events,
        WAIT,
        |event| matches!(event, TcfEvent::FloorRevoked { reason, .. } if reason == "maxtalktime"),
    )
    .await;
    // The caller is told (an in-dialog INVITE with pttreleasefloor).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the caller is told the floor is gone"
        );
        let message = scene.caller.next(WAIT).await.expect("a message");
        if message.method().is_some_and(|m| m.as_str() == "INVITE") {
            let answer = answer_sdp(message.body(), scene.caller.rtp_port(), "recvonly");
            let tag = scene.call.from_tag.clone();
            scene.caller.respond(&message, &tag, 200, "OK", Some(&answer)).await;
            assert!(ptt(&message).contains("pttreleasefloor"), "{}", ptt(&message));
            break;
        }
        if message.method().is_some_and(|m| m.as_str() == "INFO") {
            scene.caller.ok(&message).await;
        }
    }
    for listener in scene.listeners() {
        listener.expect_talker("idle").await;
    }
    scene.end().await;
}

/// F-FLR-08: the DC (priority 12, dispatchers outrank terminals) asks while 1300 talks: it
/// pre-empts 1300 at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_flr_08_preemption_by_dispatcher() {
    let mut scene = Scene::start(18600, "").await;
    let granted = scene.dc.request_floor("pttrequest").await;
    assert!(ptt(&granted).contains("pttaccept"), "{}", ptt(&granted));
    for listener in [&mut scene.l1100, &mut scene.l1101, &mut scene.l1301] {
        listener.expect_talker("9200").await;
    }
    let to = scene.dc.media();
    talk_and_check(
        &scene.dc.phone,
        to,
        scene.pt,
        &[&scene.l1100.phone, &scene.l1301.phone, &scene.caller],
        5,
    )
    .await;
    scene.end().await;
}

/// F-FLR-09: the DC takes the floor with forced insertion (`pttinsert`) at once; while it
/// holds it, an ordinary request (1301's) cannot pre-empt it and waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_flr_09_forced_insertion() {
    let mut scene = Scene::start(18700, "[groups]\ndc_outranks = false\n").await;
    let granted = scene.dc.request_floor("pttinsert").await;
    assert!(ptt(&granted).contains("pttaccept"), "{}", ptt(&granted));
    for listener in [&mut scene.l1100, &mut scene.l1301] {
        listener.expect_talker("9200").await;
    }
    // An ordinary request cannot take it back while the DC holds it: 1301 waits.
    let queued = scene.l1301.request_floor("pttrequest").await;
    assert!(ptt(&queued).contains("pttwaiting"), "{}", ptt(&queued));
    scene.end().await;
}

/// F-FLR-10 / F-GRP-05: a DC hangs up its downlink session: a DC may end the group call, so the
/// home releases it everywhere. A plain member hanging up only leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_flr_10_dc_forced_teardown_and_f_grp_05_member_leaves() {
    let mut scene = Scene::start(18800, "").await;
    // 1101 (not the initiator) hangs up: only it leaves.
    scene.l1101.phone.callee_request(&mut scene.l1101.session, "BYE").await;
    scene.l1101.phone.expect_response("BYE", 200).await;
    let to = scene.call.remote_rtp.unwrap();
    talk_and_check(
        &scene.caller,
        to,
        scene.pt,
        &[&scene.l1100.phone, &scene.l1301.phone],
        6,
    )
    .await;
    assert!(scene
        .l1101
        .phone
        .receive_rtp(Duration::from_millis(200))
        .await
        .is_empty());
    // Another member joining at tcf-b (late entry) does not bring 1101 back: it stays out.
    let late = Phone::register("1102", "alpha", scene.cluster.address(B)).await;
    let mut l1102 = Listener::join(late).await;
    l1102.expect_talker("1300").await;
    let mut seen = Vec::new();
    while let Some(message) = scene.l1101.phone.next(Duration::from_millis(700)).await {
        seen.extend(message.method().map(|method| method.as_str().to_owned()));
    }
    assert!(
        !seen.iter().any(|method| method == "INVITE"),
        "1101 left and stays out: {seen:?}"
    );
    // The DC hangs up: the call ends everywhere.
    scene.dc.phone.callee_request(&mut scene.dc.session, "BYE").await;
    scene.dc.phone.expect_response("BYE", 200).await;
    for listener in [&mut scene.l1100, &mut scene.l1301, &mut l1102] {
        let bye = listener.phone.expect_request("BYE").await;
        listener.phone.ok(&bye).await;
    }
    let bye = scene.caller.expect_request("BYE").await;
    scene.caller.ok(&bye).await;
    assert_all_released(&scene.cluster).await;
    scene.cluster.shutdown().await;
}

/// F-GRP-07 and F-REG-09: 1100 (at the home) sets up the call, 1101 at tcf-b joins. 1102
/// registering at tcf-b during the call joins it through tcf-b's existing downlink (late entry);
/// 1101 then re-registers at tcf-c, which has no downlink yet: the home builds one and 1101 gets
/// the call through its new V-TCF (idle handover).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_grp_07_late_entry_and_f_reg_09_move_rebuilds_downlink() {
    let cluster = Cluster::start(18900).await;
    cluster.wait_all_up().await;
    let mut caller = Phone::register("1100", "alpha", cluster.address(A)).await;
    let m1101 = Phone::register("1101", "alpha", cluster.address(B)).await;
    wait_located(&cluster, &["1100", "1101"]).await;
    let mut call = caller.call("2100").await;
    assert_eq!(caller.final_for(&mut call).await, 200);
    let mut l1101 = Listener::join(m1101).await;
    l1101.expect_talker("1100").await;
    // Late entry at tcf-b, which has a downlink already.
    let late = Phone::register("1102", "alpha", cluster.address(B)).await;
    let mut l1102 = Listener::join(late).await;
    l1102.expect_talker("1100").await;
    // 1101 moves to tcf-c, which has no downlink yet: the home builds one (F-REG-09).
    let moved = Phone::register("1101", "alpha", cluster.address(C)).await;
    let mut moved = Listener::join(moved).await;
    moved.expect_talker("1100").await;
    let ok = caller
        .seen
        .iter()
        .rev()
        .find(|m| m.status() == Some(200))
        .cloned()
        .unwrap();
    let pt = first_payload_type(ok.body()).unwrap();
    let to = call.remote_rtp.unwrap();
    talk_and_check(&caller, to, pt, &[&l1102.phone, &moved.phone], 7).await;
    caller.in_dialog(&mut call, "BYE", None).await;
    caller.expect_response("BYE", 200).await;
    for listener in [&mut l1102, &mut moved] {
        let bye = listener.phone.expect_request("BYE").await;
        listener.phone.ok(&bye).await;
    }
    assert_all_released(&cluster).await;
    cluster.shutdown().await;
}

/// Group hang time: an idle floor for `groups.hang_time_s` ends the call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_grp_06_release_after_hang_time() {
    let mut scene = Scene::start(19000, "[groups]\nhang_time_s = 1\n").await;
    let mut events = scene.cluster.node(A).sip.subscribe();
    scene.caller_releases().await;
    expect_event(
        &mut events,
        Duration::from_secs(5),
        |event| matches!(event, TcfEvent::GroupCallEnded { reason, .. } if reason == "hang time"),
    )
    .await;
    for listener in scene.listeners() {
        let bye = listener.phone.expect_request("BYE").await;
        listener.phone.ok(&bye).await;
    }
    let bye = scene.caller.expect_request("BYE").await;
    scene.caller.ok(&bye).await;
    assert_all_released(&scene.cluster).await;
    scene.cluster.shutdown().await;
}

/// The SIP threads running under `SCHED_FIFO` at `priority` in this process (the test's nodes
/// run in it; other tests' nodes use the default priority, 10).
fn realtime_sip_threads(priority: u32) -> usize {
    common::sched::sip_threads("self")
        .into_iter()
        .filter(|&thread| thread == (1, priority))
        .count()
}

/// The race: after the caller releases, three members ask for the floor in the same instant.
/// Exactly one is granted, the others are queued with positions 1 and 2; then the floor is
/// handed down the queue as each holder releases, and the INFO notifications the DC gets name
/// the holders in exactly that order. The nodes run their SIP threads under `SCHED_FIFO`
/// (`sip.realtime_priority`) throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_flr_race_many_requests_one_holder() {
    // Real-time whatever the load (`realtime_max_busy = 1`): the set-up's bursts would
    // otherwise send a thread ordinary for a second now and then (tests/cli.rs covers that).
    let mut scene = Scene::start(19100, "realtime_priority = 3\nrealtime_max_busy = 1.0\n").await;
    // Where this process may have SCHED_FIFO (root with CAP_SYS_NICE, as in CI), the nodes
    // must have it; without the right they warn and go on.
    if common::sched::realtime_allowed() {
        assert_eq!(
            realtime_sip_threads(3),
            3,
            "each node's SIP thread runs SCHED_FIFO at 3"
        );
    }
    // Three members of equal priority (1301 has a higher one and would pre-empt): 1100 at the
    // home, 1101 at tcf-b and 1102, who joins late at tcf-c.
    let late = Phone::register("1102", "alpha", scene.cluster.address(C)).await;
    let mut l1102 = Listener::join(late).await;
    l1102.expect_talker("1300").await;
    scene.caller_releases().await;
    for listener in scene.listeners() {
        listener.expect_talker("idle").await;
    }
    l1102.expect_talker("idle").await;
    // Send the three requests back to back, then collect the answers.
    for listener in [&mut scene.l1100, &mut scene.l1101, &mut l1102] {
        let offer = sdp(listener.phone.rtp_port(), "sendonly");
        listener
            .phone
            .callee_request_with(
                &mut listener.session,
                "INVITE",
                Some(&offer),
                "Ptt-Extension: pttrequest\r\n",
            )
            .await;
    }
    let mut order: Vec<(usize, String)> = Vec::new();
    let mut granted = Vec::new();
    for (index, listener) in [&mut scene.l1100, &mut scene.l1101, &mut l1102].into_iter().enumerate() {
        let response = listener.phone.expect_response("INVITE", 200).await;
        listener.phone.callee_ack(&listener.session).await;
        let extension = ptt(&response);
        if extension.contains("pttaccept") {
            granted.push(index);
            order.push((0, listener.phone.user().to_owned()));
        } else {
            assert!(extension.contains("pttwaiting"), "{extension}");
            let position = extension
                .split(';')
                .find_map(|param| param.strip_prefix("position="))
                .and_then(|position| position.parse::<usize>().ok())
                .expect("a queue position");
            order.push((position, listener.phone.user().to_owned()));
        }
    }
    assert_eq!(granted.len(), 1, "exactly one holder: {order:?}");
    order.sort();
    let positions: Vec<usize> = order.iter().map(|(position, _)| *position).collect();
    assert_eq!(positions, vec![0, 1, 2], "one holder, then queue positions 1 and 2");
    // Hand the floor down the queue: each holder releases, the next is granted.
    for round in 0..3 {
        let holder = order[round].1.clone();
        scene.dc.expect_talker(&holder).await;
        let listener = match holder.as_str() {
            "1100" => &mut scene.l1100,
            "1101" => &mut scene.l1101,
            _ => &mut l1102,
        };
        if round > 0 {
            listener.expect_floor_invite("pttaccept").await;
        }
        listener.release_floor().await;
    }
    scene.dc.expect_talker("idle").await;
    let bye_late = async {
        let bye = l1102.phone.expect_request("BYE").await;
        l1102.phone.ok(&bye).await;
    };
    let ((), ()) = tokio::join!(scene.end(), bye_late);
}

/// F-FLR-10: a DC orders forced teardowns with `MESSAGE pttdismantle` in its session: first of
/// the talker's floor (`UDN=1300`: 1300 is told `pttreleasefloor`, everyone hears idle), then of
/// the whole group call (everyone gets BYE). A terminal may not (403).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_flr_10_dc_orders_forced_teardown() {
    let mut scene = Scene::start(19200, "[groups]\nhang_time_s = 60\n").await;
    // A member that is no DC is refused.
    scene
        .l1101
        .phone
        .callee_request_with(
            &mut scene.l1101.session,
            "MESSAGE",
            None,
            "Ptt-Extension: pttdismantle\r\n",
        )
        .await;
    assert_eq!(
        scene.l1101.phone.expect_response("MESSAGE", 200).await.status(),
        Some(403)
    );
    // The DC takes the floor away from 1300.
    scene
        .dc
        .phone
        .callee_request_with(
            &mut scene.dc.session,
            "MESSAGE",
            None,
            "Ptt-Extension: pttdismantle;UDN=1300\r\n",
        )
        .await;
    assert_eq!(scene.dc.phone.expect_response("MESSAGE", 200).await.status(), Some(200));
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        assert!(tokio::time::Instant::now() < deadline, "1300 is told its floor is gone");
        let message = scene.caller.next(WAIT).await.expect("a message");
        match message.method().map(|m| m.as_str().to_owned()).as_deref() {
            Some("INVITE") => {
                let answer = answer_sdp(message.body(), scene.caller.rtp_port(), "recvonly");
                let tag = scene.call.from_tag.clone();
                scene.caller.respond(&message, &tag, 200, "OK", Some(&answer)).await;
                assert!(ptt(&message).contains("pttreleasefloor"), "{}", ptt(&message));
                break;
            }
            Some("INFO") => scene.caller.ok(&message).await,
            _ => {}
        }
    }
    for listener in [&mut scene.l1100, &mut scene.l1101, &mut scene.l1301] {
        listener.expect_talker("idle").await;
    }
    // The DC dismantles the whole call.
    scene
        .dc
        .phone
        .callee_request_with(
            &mut scene.dc.session,
            "MESSAGE",
            None,
            "Ptt-Extension: pttdismantle\r\n",
        )
        .await;
    assert_eq!(scene.dc.phone.expect_response("MESSAGE", 200).await.status(), Some(200));
    for listener in [&mut scene.l1100, &mut scene.l1101, &mut scene.l1301, &mut scene.dc] {
        let bye = listener.phone.expect_request("BYE").await;
        listener.phone.ok(&bye).await;
    }
    let bye = scene.caller.expect_request("BYE").await;
    scene.caller.ok(&bye).await;
    assert_all_released(&scene.cluster).await;
    scene.cluster.shutdown().await;
}
