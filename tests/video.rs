//! Video (F-VID-01, F-VID-02) between three real TCF nodes running the example network
//! (`config/example/`). The caller 1100 (home tcf-a) is registered at tcf-b (visiting), the
//! callee 1300 (home tcf-c) at tcf-c, so a call crosses b → a → c; tcf-b and tcf-c anchor the
//! media (edge anchoring). Each test checks the SIP each phone saw, that video RTP flowed both
//! ways byte-exact through the relays (or stopped), that audio kept flowing, and that every
//! call, relay bridge and leg is freed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::needless_range_loop)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::cluster::*;
use common::phone::*;
use tokio::net::UdpSocket;

const A: usize = 0;
const B: usize = 1;
const C: usize = 2;

/// An audio + video (H.264) SDP body at `audio` / `video` (`video` 0: video removed).
fn av_sdp(audio: u16, video: u16, direction: &str) -> String {
    sdp(audio, direction) + &format!("m=video {video} RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na={direction}\r\n")
}

/// The answer to an audio + video offer: the offered audio formats at `audio`, video at
/// `video` (0: declined).
fn av_answer(offer: &[u8], audio: u16, video: u16) -> String {
    let text = String::from_utf8_lossy(offer);
    let audio_part = text.split("m=video ").next().unwrap_or_default().to_owned();
    answer_sdp(audio_part.as_bytes(), audio, "sendrecv")
        + &format!("m=video {video} RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=sendrecv\r\n")
}

/// The video RTP address of an SDP body (session `c=`, or the video m-line's own, and its
/// port); `None` when there is no video m-line. Port 0 is returned as such.
fn video_address(body: &[u8]) -> Option<SocketAddr> {
    let text = std::str::from_utf8(body).ok()?;
    let mut ip = None;
    let mut port = None;
    let mut in_video = false;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("m=") {
            in_video = rest.starts_with("video ");
            if in_video {
                port = rest.split_whitespace().nth(1)?.parse::<u16>().ok();
            }
        }
        if let Some(rest) = line.strip_prefix("c=IN IP4 ") {
            if ip.is_none() || in_video {
                ip = Some(rest.trim().to_owned());
            }
        }
    }
    format!("{}:{}", ip?, port?).parse().ok()
}

/// Sends `count` video-like RTP packets (payload type 96, 1000-byte payloads) from `from` to `to`.
async fn send_video(from: &UdpSocket, to: SocketAddr, count: u16, seed: u8) -> Vec<Vec<u8>> {
    let mut sent = Vec::new();
    for index in 0..count {
        let mut packet = vec![0x80, 96];
        packet.extend_from_slice(&index.to_be_bytes());
        packet.extend_from_slice(&(u32::from(index) * 3000).to_be_bytes());
        packet.extend_from_slice(&[0x55, 0x66, 0x77, seed]);
        packet.extend((0..1000u16).map(|byte| (byte as u8).wrapping_mul(seed).wrapping_add(index as u8)));
        from.send_to(&packet, to).await.unwrap();
        sent.push(packet);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    sent
}

/// RTP (not RTCP) received on `socket` within `timeout`.
async fn receive(socket: &UdpSocket, timeout: Duration) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buffer = vec![0u8; 2048];
    loop {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        if remaining.is_zero() {
            break;
        }
        match tokio::time::timeout(remaining, socket.recv_from(&mut buffer)).await {
            Ok(Ok((length, _))) => {
                if length >= 2 && !(192..=223).contains(&buffer[1]) {
                    out.push(buffer[..length].to_vec());
                }
            }
            _ => break,
        }
    }
    out
}

/// Video from `from` to `to` arrives on `receiver`, every packet byte-exact.
async fn check_video_flows(from: &UdpSocket, to: SocketAddr, receiver: &UdpSocket, seed: u8) {
    let sent = send_video(from, to, 20, seed).await;
    let received = receive(receiver, Duration::from_millis(800)).await;
    assert_eq!(received.len(), sent.len(), "every video packet arrives");
    assert_eq!(received, sent, "video arrives byte-exact");
}

/// The number of relay bridges a node holds.
fn bridges(cluster: &Cluster, index: usize) -> usize {
    cluster
        .node(index)
        .engine
        .stats(true)
        .unwrap()
        .iter()
        .map(|worker| worker.bridges.len())
        .sum()
}

/// The caller's re-INVITE with `offer`: the callee gets it (re-anchored) and answers `answer`
/// (built from what it received); the caller gets the 200 and ACKs. Returns the body the
/// callee received and the body of the caller's 200.
async fn reinvite(
    caller: &mut Phone,
    call: &mut Outgoing,
    callee: &mut Phone,
    incoming: &Incoming,
    offer: &str,
    answer: impl Fn(&[u8]) -> String,
) -> (String, String) {
    caller.in_dialog(call, "INVITE", Some(offer)).await;
    let request = callee.expect_request("INVITE").await;
    let received = String::from_utf8_lossy(request.body()).into_owned();
    callee
        .respond(&request, &incoming.tag, 200, "OK", Some(&answer(request.body())))
        .await;
    let ok = caller.expect_response("INVITE", 200).await;
    assert_eq!(ok.status(), Some(200));
    caller.ack(call).await;
    callee.expect_request("ACK").await;
    (received, String::from_utf8_lossy(ok.body()).into_owned())
}

/// F-VID-01: an audio call 1100 (at tcf-b) → 1300 (at tcf-c) gets video by a re-INVITE: each
/// anchoring hop (tcf-b, tcf-c) adds a video relay bridge and re-anchors the video m-line, so
/// the callee sees a relay address, not the caller's, and the caller sees a relay address in
/// the answer; video RTP flows both ways byte-exact, audio goes on. A later re-INVITE removes
/// the video (port 0): video stops, its bridges are freed, audio goes on; the hang-up frees
/// everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_vid_01_video_added_and_removed_by_reinvite_across_three_nodes() {
    let cluster = Cluster::start(12200).await;
    cluster.wait_all_up().await;
    let mut caller = Phone::register("1100", "alpha", cluster.address(B)).await;
    let mut callee = Phone::register("1300", "charlie", cluster.address(C)).await;
    let caller_video = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let callee_video = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let caller_video_port = caller_video.local_addr().unwrap().port();
    let callee_video_port = callee_video.local_addr().unwrap().port();

    // An audio call.
    let mut call = caller.call("1300").await;
    let incoming = callee.incoming().await;
    callee.answer(&incoming).await;
    assert_eq!(caller.final_for(&mut call).await, 200);
    callee.expect_request("ACK").await;
    let audio_to_callee = call.remote_rtp.unwrap();
    let audio_to_caller = incoming.remote_rtp.unwrap();
    assert_eq!(
        (bridges(&cluster, A), bridges(&cluster, B), bridges(&cluster, C)),
        (0, 1, 1)
    );

    // Video added.
    let offer = av_sdp(caller.rtp_port(), caller_video_port, "sendrecv");
    let callee_audio = callee.rtp_port();
    let (received, answered) = reinvite(&mut caller, &mut call, &mut callee, &incoming, &offer, |body| {
        av_answer(body, callee_audio, callee_video_port)
    })
    .await;
    assert!(
        received.contains("a=rtpmap:96 H264/90000"),
        "formats passed through: {received}"
    );
    let video_to_caller = video_address(received.as_bytes()).expect("video offered on");
    assert_ne!(video_to_caller.port(), 0, "video accepted by the relays: {received}");
    assert_ne!(
        video_to_caller.port(),
        caller_video_port,
        "re-anchored at tcf-c: {received}"
    );
    assert_ne!(video_to_caller, audio_to_caller);
    assert_eq!(
        media_address(received.as_bytes()),
        Some(audio_to_caller),
        "audio leg kept"
    );
    let video_to_callee = video_address(answered.as_bytes()).expect("video answered");
    assert_ne!(video_to_callee.port(), 0, "{answered}");
    assert_ne!(
        video_to_callee.port(),
        callee_video_port,
        "re-anchored at tcf-b: {answered}"
    );
    assert_eq!(caller.statuses("INVITE"), vec![100, 200, 100, 200]);
    assert_eq!(callee.requests(), vec!["INVITE", "ACK", "INVITE", "ACK"]);
    assert_eq!(
        (bridges(&cluster, A), bridges(&cluster, B), bridges(&cluster, C)),
        (0, 2, 2)
    );

    check_video_flows(&caller_video, video_to_callee, &callee_video, 1).await;
    check_video_flows(&callee_video, video_to_caller, &caller_video, 2).await;
    check_rtp_flows(&caller, audio_to_callee, &callee, 3).await;
    check_rtp_flows(&callee, audio_to_caller, &caller, 4).await;

    // Video changed: the callee's video moves to another port (a re-INVITE from the callee).
    let moved = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let moved_port = moved.local_addr().unwrap().port();
    let mut incoming = incoming;
    let offer = av_sdp(callee.rtp_port(), moved_port, "sendrecv");
    callee
        .callee_request_with(&mut incoming, "INVITE", Some(&offer), "")
        .await;
    let request = caller.expect_request("INVITE").await;
    let to_callee_now = video_address(request.body()).expect("video offered");
    assert_ne!(to_callee_now.port(), moved_port, "re-anchored");
    let answer = av_answer(request.body(), caller.rtp_port(), caller_video_port);
    caller
        .respond(&request, call.from_tag.as_str(), 200, "OK", Some(&answer))
        .await;
    let ok = callee.expect_response("INVITE", 200).await;
    let to_caller_now = video_address(ok.body()).expect("video answered");
    callee.callee_ack(&incoming).await;
    caller.expect_request("ACK").await;
    check_video_flows(&caller_video, to_callee_now, &moved, 5).await;
    check_video_flows(&moved, to_caller_now, &caller_video, 6).await;
    assert_eq!(
        (bridges(&cluster, A), bridges(&cluster, B), bridges(&cluster, C)),
        (0, 2, 2)
    );

    // Video removed: port 0 on the way there and back; the video bridges are freed.
    let offer = av_sdp(caller.rtp_port(), 0, "sendrecv");
    let (received, answered) = reinvite(&mut caller, &mut call, &mut callee, &incoming, &offer, |body| {
        av_answer(body, callee_audio, 0)
    })
    .await;
    assert_eq!(
        video_address(received.as_bytes()).map(|at| at.port()),
        Some(0),
        "{received}"
    );
    assert_eq!(
        video_address(answered.as_bytes()).map(|at| at.port()),
        Some(0),
        "{answered}"
    );
    let freed = wait_for(Duration::from_secs(3), || async {
        (bridges(&cluster, B), bridges(&cluster, C)) == (1, 1)
    })
    .await;
    assert!(freed, "the video bridges are freed");
    send_video(&caller_video, to_callee_now, 5, 7).await;
    assert!(
        receive(&moved, Duration::from_millis(300)).await.is_empty(),
        "video stopped"
    );
    check_rtp_flows(&caller, audio_to_callee, &callee, 8).await;
    check_rtp_flows(&callee, audio_to_caller, &caller, 9).await;

    caller.in_dialog(&mut call, "BYE", None).await;
    caller.expect_response("BYE", 200).await;
    let bye = callee.expect_request("BYE").await;
    callee.ok(&bye).await;
    cluster.assert_all_freed().await;
    cluster.shutdown().await;
}

/// Sends `MESSAGE sip:<uri_user>@<server>` with `Ptt-Extension: <extension>` from `phone` and
/// returns the final response.
async fn order(phone: &mut Phone, uri_user: &str, extension: &str) -> floorcast::sip::Message {
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
    phone.expect_response("MESSAGE", 200).await
}

/// The DC gets a result report MESSAGE with `extension` and answers it 200.
async fn expect_report(dc: &mut Phone, extension: &str) {
    let report = dc.expect_request("MESSAGE").await;
    assert_eq!(ptt(&report), extension);
    dc.ok(&report).await;
}

/// F-VID-02: the DC 9200 (at tcf-b) receives 1100's video (ambient viewing, 1100 at tcf-c)
/// and orders it forwarded to 1300 (home tcf-c): tcf-b (the forwarding node) checks and
/// relays the order to tcf-c, both answer 200, the DC gets a result report; the stop goes the
/// same way. Refusals: a stop of nothing and an unknown call 481, an unknown destination 404,
/// a non-dispatcher 403, a malformed order 400. A forwarding to a group (2100, home tcf-a) still
/// running when the source call ends is reported ended. (The forwarded media itself is not
/// delivered yet: docs/protocol.md.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_vid_02_forwarding_order_stop_and_reports_relayed_to_the_destination_home() {
    let cluster = Cluster::start(12300).await;
    cluster.wait_all_up().await;
    let mut dc = Phone::register("9200", "dispatch-b", cluster.address(B)).await;
    let mut terminal = Phone::register("1100", "alpha", cluster.address(C)).await;
    let mut intruder = Phone::register("1201", "bravo", cluster.address(B)).await;
    let mut events: Vec<_> = (0..3).map(|index| cluster.node(index).sip.subscribe()).collect();
    let dc_video = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let terminal_video = UdpSocket::bind("127.0.0.1:0").await.unwrap();

    // Ambient viewing with video: the DC receives 1100's video.
    let offer = sdp(dc.rtp_port(), "recvonly")
        + &format!(
            "m=video {} RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=recvonly\r\n",
            dc_video.local_addr().unwrap().port()
        );
    let mut call = dc.invite_text("1100", &offer);
    call.invite = call
        .invite
        .replacen("Content-Type:", "Ptt-Extension: pttcall;calltype=7\r\nContent-Type:", 1);
    dc.send(&call.invite).await;
    let incoming = terminal.incoming().await;
    let audio = String::from_utf8_lossy(incoming.invite.body()).into_owned();
    let audio = audio.split("m=video ").next().unwrap().to_owned();
    let answer = answer_sdp(audio.as_bytes(), terminal.rtp_port(), "sendonly")
        + &format!(
            "m=video {} RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=sendonly\r\n",
            terminal_video.local_addr().unwrap().port()
        );
    terminal
        .respond(&incoming.invite, &incoming.tag, 200, "OK", Some(&answer))
        .await;
    assert_eq!(dc.final_for(&mut call).await, 200);
    terminal.expect_request("ACK").await;
    let to_dc = video_address(incoming.invite.body()).unwrap();
    check_video_flows(&terminal_video, to_dc, &dc_video, 3).await;
    let id = call.call_id.clone();

    // Start: relayed to 1300's home (tcf-c), 200 back, then the report.
    let start = format!("pttvideoforward;action=start;UDN=1300;OnlineCallID=\"{id}\"");
    let ok = order(&mut dc, "1300", &start).await;
    assert_eq!(ok.status(), Some(200));
    let home_saw = |event: &floorcast::control::tcf::TcfEvent, action: &str| {
        matches!(event, floorcast::control::tcf::TcfEvent::VideoForward { dc, destination, action: a, status: 200 }
            if dc.as_str() == "9200" && destination.as_str() == "1300" && a == action)
    };
    expect_event(&mut events[C], WAIT, |event| home_saw(event, "start")).await;
    expect_event(&mut events[B], WAIT, |event| home_saw(event, "start")).await;
    expect_report(&mut dc, &format!("{start};result=0")).await;

    // Refusals.
    let response = order(&mut intruder, "1300", &start).await;
    assert_eq!(response.status(), Some(403), "not a dispatcher");
    let refused = [
        (
            format!("pttvideoforward;action=start;UDN=1300;OnlineCallID=\"nosuch{id}\""),
            481,
        ),
        (
            format!("pttvideoforward;action=start;UDN=1399;OnlineCallID=\"{id}\""),
            404,
        ),
        (
            format!("pttvideoforward;action=stop;UDN=1301;OnlineCallID=\"{id}\""),
            481,
        ),
        (
            format!("pttvideoforward;action=pause;UDN=1300;OnlineCallID=\"{id}\""),
            400,
        ),
        (
            format!("pttvideoforward;action=start;UDN=1300;GDN=2100;OnlineCallID=\"{id}\""),
            400,
        ),
        ("pttvideoforward;action=start;UDN=1300".to_owned(), 400),
    ];
    for (extension, status) in refused {
        let response = order(&mut dc, "1300", &extension).await;
        assert_eq!(response.status(), Some(status), "{extension}");
    }

    // Stop: the same path, and the report.
    let stop = format!("pttvideoforward;action=stop;UDN=1300;OnlineCallID=\"{id}\"");
    assert_eq!(order(&mut dc, "1300", &stop).await.status(), Some(200));
    expect_event(&mut events[C], WAIT, |event| home_saw(event, "stop")).await;
    expect_report(&mut dc, &format!("{stop};result=0")).await;
    // Stopped: a second stop finds nothing.
    assert_eq!(order(&mut dc, "1300", &stop).await.status(), Some(481));

    // A forwarding to a group (home tcf-a), ended by the end of the source call.
    let group = format!("pttvideoforward;action=start;GDN=2100;OnlineCallID=\"{id}\"");
    assert_eq!(order(&mut dc, "2100", &group).await.status(), Some(200));
    expect_event(&mut events[A], WAIT, |event| {
        matches!(event, floorcast::control::tcf::TcfEvent::VideoForward { destination, status: 200, .. }
            if destination.as_str() == "2100")
    })
    .await;
    expect_report(&mut dc, &format!("{group};result=0")).await;
    dc.in_dialog(&mut call, "BYE", None).await;
    dc.expect_response("BYE", 200).await;
    let bye = terminal.expect_request("BYE").await;
    terminal.ok(&bye).await;
    expect_report(
        &mut dc,
        &format!("pttvideoforward;action=stop;GDN=2100;OnlineCallID=\"{id}\";result=0;ended=source"),
    )
    .await;
    cluster.assert_all_freed().await;
    cluster.shutdown().await;
}

/// F-VID-01 (initial INVITE and hostile video): an INVITE whose video m-line the relay cannot
/// read gets 488 and holds nothing; an INVITE with audio + video sets up both streams through
/// tcf-b and tcf-c, video byte-exact both ways; a re-INVITE with a broken video m-line gets 488
/// and the call (audio and video) goes on unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_vid_01_initial_video_and_bad_video_lines_refused_with_488() {
    let cluster = Cluster::start(12400).await;
    cluster.wait_all_up().await;
    let mut caller = Phone::register("1100", "alpha", cluster.address(B)).await;
    let mut callee = Phone::register("1300", "charlie", cluster.address(C)).await;
    let caller_video = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let callee_video = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let caller_video_port = caller_video.local_addr().unwrap().port();
    let callee_video_port = callee_video.local_addr().unwrap().port();

    let bad_lines = [
        format!("m=video {caller_video_port} RTP/AVP 96 300\r\n"),
        format!("m=video {caller_video_port} RTP/AVP h264\r\n"),
        format!("m=video {caller_video_port}/2 RTP/AVP 96\r\n"),
        format!("m=video {caller_video_port} RTP/AVP 96\r\nc=IN IP4 camera.example.com\r\n"),
    ];
    for line in &bad_lines {
        let body = sdp(caller.rtp_port(), "sendrecv") + line;
        let mut call = caller.invite_text("1300", &body);
        caller.send(&call.invite).await;
        assert_eq!(caller.final_for(&mut call).await, 488, "{line}");
    }
    assert!(
        callee.next(Duration::from_millis(200)).await.is_none(),
        "the callee saw nothing"
    );
    cluster.assert_all_freed().await;

    // Audio + video from the start.
    let offer = av_sdp(caller.rtp_port(), caller_video_port, "sendrecv");
    let mut call = caller.invite_text("1300", &offer);
    caller.send(&call.invite).await;
    let mut incoming = callee.incoming().await;
    let video_to_caller = video_address(incoming.invite.body()).unwrap();
    assert!(video_to_caller.port() != 0 && video_to_caller.port() != caller_video_port);
    let answer = av_answer(incoming.invite.body(), callee.rtp_port(), callee_video_port);
    callee
        .respond(&incoming.invite, &incoming.tag, 200, "OK", Some(&answer))
        .await;
    assert_eq!(caller.final_for(&mut call).await, 200);
    callee.expect_request("ACK").await;
    let ok = caller
        .seen
        .iter()
        .rev()
        .find(|m| m.status() == Some(200))
        .unwrap()
        .clone();
    let video_to_callee = video_address(ok.body()).unwrap();
    assert!(video_to_callee.port() != 0 && video_to_callee.port() != callee_video_port);
    check_video_flows(&caller_video, video_to_callee, &callee_video, 1).await;
    check_video_flows(&callee_video, video_to_caller, &caller_video, 2).await;

    // A broken video line in a re-INVITE (from the callee): 488, nothing changes.
    let broken = sdp(callee.rtp_port(), "sendrecv") + "m=video 5000 RTP/AVP 96 999\r\n";
    callee
        .callee_request_with(&mut incoming, "INVITE", Some(&broken), "")
        .await;
    let refused = callee.expect_response("INVITE", 200).await;
    assert_eq!(refused.status(), Some(488));
    callee.callee_ack(&incoming).await;
    // (A late retransmission of the set-up's 200 may still come; no request does.)
    while let Some(message) = caller.next(Duration::from_millis(200)).await {
        assert!(message.method().is_none(), "no request reached the caller");
    }
    check_video_flows(&caller_video, video_to_callee, &callee_video, 3).await;
    check_rtp_flows(&caller, call.remote_rtp.unwrap(), &callee, 4).await;

    caller.in_dialog(&mut call, "BYE", None).await;
    caller.expect_response("BYE", 200).await;
    let bye = callee.expect_request("BYE").await;
    callee.ok(&bye).await;
    cluster.assert_all_freed().await;
    cluster.shutdown().await;
}
