//! Ambient listening and viewing (F-AMB-01, F-AMB-02) between three real TCF nodes running the
//! example network (`config/example/`): the dispatcher 9200 (home tcf-b) registered at tcf-b
//! listens to 1100 (home tcf-a, answer mode hook) registered at tcf-c, so the session crosses
//! every hop: DC's serving/home TCF (b) → the user's home (a) → its serving TCF (c) → terminal.
//! Each test checks the SIP messages each phone saw, that every hop took part (its call events),
//! that RTP flowed terminal → DC byte-exact and stopped after the release, and that every call,
//! relay bridge and leg is freed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::needless_range_loop)]

mod common;

use std::time::Duration;

use common::cluster::*;
use common::phone::*;
use floorcast::control::tcf::TcfEvent;
use tokio::sync::broadcast;

const B: usize = 1;
const C: usize = 2;

/// An audio + video offer (ambient viewing), receive-only.
fn viewing_sdp(port: u16, video: u16) -> String {
    sdp(port, "recvonly") + &format!("m=video {video} RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=recvonly\r\n")
}

/// The DC places an ambient session on `target`: an INVITE with `Ptt-Extension: extension`.
async fn start(dc: &mut Phone, target: &str, extension: &str, body: &str) -> Outgoing {
    let mut call = dc.invite_text(target, body);
    call.invite = call.invite.replacen(
        "Content-Type:",
        &format!("Ptt-Extension: {extension}\r\nContent-Type:"),
        1,
    );
    dc.send(&call.invite).await;
    call
}

/// The call events of the three nodes.
fn subscribe(cluster: &Cluster) -> Vec<broadcast::Receiver<TcfEvent>> {
    (0..3).map(|index| cluster.node(index).sip.subscribe()).collect()
}

/// Every node sees `matching` once (every hop of the session took part).
async fn expect_everywhere(events: &mut [broadcast::Receiver<TcfEvent>], matching: impl Fn(&TcfEvent) -> bool) {
    for receiver in events.iter_mut() {
        expect_event(receiver, WAIT, &matching).await;
    }
}

/// The set-up of F-AMB-01 (with `body` as the DC's offer): the terminal gets the INVITE and
/// answers 200 at once, sendonly (`answer` as its SDP); the DC gets 200 and ACKs.
async fn listening(dc: &mut Phone, terminal: &mut Phone, extension: &str, body: &str) -> (Outgoing, Incoming) {
    listening_with_video(dc, terminal, extension, body, 0).await
}

/// [`listening`] where the terminal answers an offered video stream at `video` (0: declined).
async fn listening_with_video(
    dc: &mut Phone,
    terminal: &mut Phone,
    extension: &str,
    body: &str,
    video: u16,
) -> (Outgoing, Incoming) {
    let mut call = start(dc, "1100", extension, body).await;
    let incoming = terminal.incoming().await;
    let answer = answer_for(incoming.invite.body(), terminal.rtp_port(), video);
    terminal
        .respond(&incoming.invite, &incoming.tag, 200, "OK", Some(&answer))
        .await;
    assert_eq!(dc.final_for(&mut call).await, 200);
    terminal.expect_request("ACK").await;
    (call, incoming)
}

/// The terminal's answer: audio `a=sendonly` at `port`, and any video m-line of the offer
/// answered `a=sendonly` at `video` (0, or an offer with port 0: declined).
fn answer_for(offer: &[u8], port: u16, video_port: u16) -> String {
    let offer = String::from_utf8_lossy(offer).into_owned();
    let (audio, video) = match offer.split_once("m=video ") {
        Some((audio, video)) => (audio.to_owned(), Some(format!("m=video {video}"))),
        None => (offer.clone(), None),
    };
    let mut answer = answer_sdp(audio.as_bytes(), port, "sendonly");
    if let Some(video) = video.as_deref().and_then(|video| video.lines().next()) {
        let offered_port = video.split_whitespace().nth(1).unwrap_or("0");
        let formats = video.split_whitespace().skip(3).collect::<Vec<_>>().join(" ");
        if offered_port == "0" || video_port == 0 {
            answer.push_str(&format!("m=video 0 RTP/AVP {formats}\r\n"));
        } else {
            answer.push_str(&format!(
                "m=video {video_port} RTP/AVP {formats}\r\na=rtpmap:96 H264/90000\r\na=sendonly\r\n"
            ));
        }
    }
    answer
}

/// F-AMB-01: DC 9200 at tcf-b starts ambient listening on 1100 (home tcf-a) visiting tcf-c:
/// the INVITE goes b → a → c (100 at every hop), the terminal is told to answer at once
/// (`answermode=direct` although 1100 is provisioned for hook answer) and sees the call type;
/// it answers 200 without ringing; the DC gets 200; the terminal's RTP reaches the DC
/// byte-exact through the relays of tcf-c and tcf-b.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_amb_01_dc_starts_ambient_listening_on_a_visiting_user() {
    let cluster = Cluster::start(14700).await;
    cluster.wait_all_up().await;
    let mut dc = Phone::register("9200", "dispatch-b", cluster.address(B)).await;
    let mut terminal = Phone::register("1100", "alpha", cluster.address(C)).await;
    let mut events = subscribe(&cluster);

    let offer = sdp(dc.rtp_port(), "recvonly");
    let mut call = start(&mut dc, "1100", "pttcall;calltype=6", &offer).await;
    let incoming = terminal.incoming().await;
    let extension = ptt(&incoming.invite);
    assert!(extension.starts_with("pttcall;calltype=6;"), "{extension}");
    assert!(extension.contains("callerUDN=9200"), "{extension}");
    assert!(extension.contains("calleeUDN=1100"), "{extension}");
    assert!(extension.contains("answermode=direct"), "{extension}");
    assert!(!extension.contains("duplex"), "{extension}");
    let offered = String::from_utf8_lossy(incoming.invite.body()).into_owned();
    assert!(offered.contains("a=recvonly"), "{offered}");
    // The offer names tcf-c's relay leg, not the DC.
    let send_to = incoming.remote_rtp.expect("an offer");
    assert_ne!(send_to.port(), dc.rtp_port());

    // No ringing: 200 at once.
    let answer = answer_for(incoming.invite.body(), terminal.rtp_port(), 0);
    terminal
        .respond(&incoming.invite, &incoming.tag, 200, "OK", Some(&answer))
        .await;
    assert_eq!(dc.final_for(&mut call).await, 200);
    assert_eq!(dc.statuses("INVITE"), vec![100, 200]);
    let ok = dc
        .seen
        .iter()
        .rev()
        .find(|message| message.status() == Some(200))
        .unwrap();
    let answered = String::from_utf8_lossy(ok.body()).into_owned();
    assert!(answered.contains("a=sendonly"), "{answered}");
    assert_ne!(
        call.remote_rtp.map(|at| at.port()),
        Some(terminal.rtp_port()),
        "re-anchored at tcf-b"
    );
    terminal.expect_request("ACK").await;
    assert_eq!(terminal.requests(), vec!["INVITE", "ACK"]);
    expect_everywhere(
        &mut events,
        |event| matches!(event, TcfEvent::CallAnswered { caller, .. } if caller.as_str() == "9200"),
    )
    .await;

    // The terminal's media reaches the DC unchanged.
    check_rtp_flows(&terminal, send_to, &dc, 1).await;
    check_rtp_flows(&terminal, send_to, &dc, 2).await;

    dc.in_dialog_with(&mut call, "BYE", None, "Ptt-Extension: pttrelease;cause=64\r\n")
        .await;
    dc.expect_response("BYE", 200).await;
    let bye = terminal.expect_request("BYE").await;
    terminal.ok(&bye).await;
    cluster.assert_all_freed().await;
    cluster.shutdown().await;
}

/// F-AMB-02: the DC's BYE carries `pttrelease;cause=16`; each hop answers 200 and sends its
/// own BYE on with the same `pttrelease`, so the terminal gets it; the terminal's RTP no
/// longer reaches the DC; every call, bridge and leg is freed on all three nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_amb_02_dc_stops_ambient_listening_hop_by_hop() {
    let cluster = Cluster::start(14800).await;
    cluster.wait_all_up().await;
    let mut dc = Phone::register("9200", "dispatch-b", cluster.address(B)).await;
    let mut terminal = Phone::register("1100", "alpha", cluster.address(C)).await;
    let offer = sdp(dc.rtp_port(), "recvonly");
    let (mut call, incoming) = listening(&mut dc, &mut terminal, "pttcall;calltype=6", &offer).await;
    let send_to = incoming.remote_rtp.unwrap();
    check_rtp_flows(&terminal, send_to, &dc, 3).await;
    let mut events = subscribe(&cluster);

    dc.in_dialog_with(&mut call, "BYE", None, "Ptt-Extension: pttrelease;cause=16\r\n")
        .await;
    assert_eq!(dc.expect_response("BYE", 200).await.status(), Some(200));
    let bye = terminal.expect_request("BYE").await;
    assert_eq!(ptt(&bye), "pttrelease;cause=16", "the cause travels with every BYE");
    terminal.ok(&bye).await;
    // Every hop ended its part because the previous hop's BYE came (caller side).
    expect_everywhere(&mut events, |event| {
        matches!(event, TcfEvent::CallEnded { caller, reason, .. }
            if caller.as_str() == "9200" && reason == "hang-up (caller side)")
    })
    .await;
    assert_eq!(dc.statuses("BYE"), vec![200]);
    assert_eq!(terminal.requests(), vec!["INVITE", "ACK", "BYE"]);
    cluster.assert_all_freed().await;

    // Media stopped.
    terminal.send_rtp(send_to, 5, 4).await;
    assert!(dc.receive_rtp(Duration::from_millis(300)).await.is_empty());
    assert!(
        dc.next(Duration::from_millis(200)).await.is_none(),
        "nothing more for the DC"
    );
    cluster.shutdown().await;
}

/// F-AMB-02 from the other end: the terminal's plain BYE ends the session too; the DC gets a
/// BYE with `pttrelease;cause=64` (ordinary release).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_amb_02_terminal_side_bye_ends_it_normally() {
    let cluster = Cluster::start(18000).await;
    cluster.wait_all_up().await;
    let mut dc = Phone::register("9200", "dispatch-b", cluster.address(B)).await;
    let mut terminal = Phone::register("1100", "alpha", cluster.address(C)).await;
    let offer = sdp(dc.rtp_port(), "recvonly");
    // The token of deployed clients is accepted for the same service.
    let (_call, mut incoming) = listening(&mut dc, &mut terminal, "pttambiancelistening", &offer).await;
    assert!(ptt(&incoming.invite).starts_with("pttcall;calltype=6;"));
    let send_to = incoming.remote_rtp.unwrap();
    check_rtp_flows(&terminal, send_to, &dc, 5).await;

    terminal.callee_request(&mut incoming, "BYE").await;
    terminal.expect_response("BYE", 200).await;
    let bye = dc.expect_request("BYE").await;
    assert_eq!(ptt(&bye), "pttrelease;cause=64");
    dc.ok(&bye).await;
    cluster.assert_all_freed().await;
    terminal.send_rtp(send_to, 5, 6).await;
    assert!(dc.receive_rtp(Duration::from_millis(300)).await.is_empty());
    cluster.shutdown().await;
}

/// Ambient viewing (F-AMB-01, calltype 7) with F-VID-01: an audio + video offer is relayed
/// whole: the video m-line reaches the terminal re-anchored at tcf-c's video leg, and the
/// terminal's answer (video `a=sendonly`) the DC re-anchored at tcf-b's; the terminal's audio
/// and video both reach the DC byte-exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_amb_01_ambient_viewing_relays_audio_and_video() {
    let cluster = Cluster::start(14900).await;
    cluster.wait_all_up().await;
    let mut dc = Phone::register("9200", "dispatch-b", cluster.address(B)).await;
    let mut terminal = Phone::register("1100", "alpha", cluster.address(C)).await;
    let dc_video = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let terminal_video = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let dc_video_port = dc_video.local_addr().unwrap().port();
    let offer = viewing_sdp(dc.rtp_port(), dc_video_port);
    let (mut call, incoming) = listening_with_video(
        &mut dc,
        &mut terminal,
        "pttcall;calltype=7",
        &offer,
        terminal_video.local_addr().unwrap().port(),
    )
    .await;
    let extension = ptt(&incoming.invite);
    assert!(extension.starts_with("pttcall;calltype=7;"), "{extension}");
    assert!(extension.contains("answermode=direct"), "{extension}");
    let offered = String::from_utf8_lossy(incoming.invite.body()).into_owned();
    let video_line = offered.lines().find(|line| line.starts_with("m=video ")).unwrap();
    assert!(video_line.ends_with(" RTP/AVP 96"), "{offered}");
    let video_to_dc: u16 = video_line.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(
        video_to_dc != 0 && video_to_dc != dc_video_port,
        "re-anchored: {offered}"
    );
    assert!(offered.contains("a=rtpmap:96 H264/90000"), "{offered}");
    let ok = dc
        .seen
        .iter()
        .rev()
        .find(|message| message.status() == Some(200))
        .unwrap();
    let answered = String::from_utf8_lossy(ok.body()).into_owned();
    assert!(!answered.contains("m=video 0 "), "video accepted: {answered}");
    assert_eq!(dc.statuses("INVITE"), vec![100, 200]);
    check_rtp_flows(&terminal, incoming.remote_rtp.unwrap(), &dc, 7).await;
    // The terminal's video reaches the DC through tcf-c and tcf-b.
    let mut sent = Vec::new();
    for index in 0..10u8 {
        let packet: Vec<u8> = [0x80, 96, 0, index, 0, 0, 0, index, 9, 9, 9, 9]
            .into_iter()
            .chain((0..600u16).map(|byte| (byte as u8) ^ index))
            .collect();
        let to = std::net::SocketAddr::new(incoming.remote_rtp.unwrap().ip(), video_to_dc);
        terminal_video.send_to(&packet, to).await.unwrap();
        sent.push(packet);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut received = Vec::new();
    let mut buffer = vec![0u8; 2048];
    while let Ok(Ok((length, _))) =
        tokio::time::timeout(Duration::from_millis(800), dc_video.recv_from(&mut buffer)).await
    {
        if !(192..=223).contains(&buffer[1]) {
            received.push(buffer[..length].to_vec());
        }
        if received.len() == sent.len() {
            break;
        }
    }
    assert_eq!(received, sent, "the terminal's video reaches the DC byte-exact");

    dc.in_dialog_with(&mut call, "BYE", None, "Ptt-Extension: pttrelease;cause=64\r\n")
        .await;
    dc.expect_response("BYE", 200).await;
    let bye = terminal.expect_request("BYE").await;
    assert_eq!(ptt(&bye), "pttrelease;cause=64");
    terminal.ok(&bye).await;
    cluster.assert_all_freed().await;
    cluster.shutdown().await;
}

/// Refusals: a terminal (not a dispatcher) asking for ambient listening gets 403 from its
/// TCF and the target sees nothing; a DC's ambient INVITE to a group gets 404; a malformed
/// call type is an ordinary single call (hook answer, ringing) as today.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_amb_01_refused_unless_a_dispatcher_asks_and_bad_call_types_are_single_calls() {
    let cluster = Cluster::start(19800).await;
    cluster.wait_all_up().await;
    let mut dc = Phone::register("9200", "dispatch-b", cluster.address(B)).await;
    let mut intruder = Phone::register("1101", "alpha", cluster.address(B)).await;
    let mut terminal = Phone::register("1100", "alpha", cluster.address(C)).await;

    for extension in ["pttcall;calltype=6", "pttambiancelistening", "pttcall;calltype=7"] {
        let body = sdp(intruder.rtp_port(), "recvonly");
        let mut call = start(&mut intruder, "1100", extension, &body).await;
        assert_eq!(intruder.final_for(&mut call).await, 403, "{extension}");
    }
    assert_eq!(intruder.statuses("INVITE"), vec![403]);
    let body = sdp(dc.rtp_port(), "recvonly");
    let mut call = start(&mut dc, "2100", "pttcall;calltype=6", &body).await;
    assert_eq!(dc.final_for(&mut call).await, 404);
    assert!(
        terminal.next(Duration::from_millis(300)).await.is_none(),
        "the target saw nothing"
    );

    // calltype=6x: not ambient listening, an ordinary call that rings.
    let body = sdp(dc.rtp_port(), "sendrecv");
    let mut call = start(&mut dc, "1100", "pttcall;calltype=6x", &body).await;
    let incoming = terminal.incoming().await;
    let extension = ptt(&incoming.invite);
    assert!(extension.starts_with("pttcall;calltype=1;duplex=1"), "{extension}");
    assert!(extension.contains("answermode=hook"), "{extension}");
    terminal
        .respond(&incoming.invite, &incoming.tag, 486, "Busy Here", None)
        .await;
    terminal.expect_request("ACK").await;
    assert_eq!(dc.final_for(&mut call).await, 486);
    assert_eq!(dc.statuses("INVITE"), vec![404, 100, 486]);
    cluster.assert_all_freed().await;
    cluster.shutdown().await;
}
