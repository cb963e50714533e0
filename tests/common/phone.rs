//! A scriptable SIP phone for call tests: registers (digest), places and answers calls,
//! records every SIP message it receives, and sends/receives RTP on its own socket.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use floorcast::sip::{HeaderName, Message};
use tokio::net::UdpSocket;

use super::cluster::Terminal;

pub const WAIT: Duration = Duration::from_secs(5);

/// One phone: a registered terminal plus an RTP socket.
pub struct Phone {
    pub terminal: Terminal,
    pub rtp: UdpSocket,
    /// Every SIP message received, in order (retransmissions included).
    pub seen: Vec<Message>,
    pub server: SocketAddr,
    cseq: u32,
}

/// What the caller keeps of a call it placed.
#[derive(Clone)]
pub struct Outgoing {
    pub call_id: String,
    pub from_tag: String,
    pub invite: String,
    pub branch: String,
    pub to: String,
    pub to_tag: Option<String>,
    pub cseq: u32,
    /// Where the far side's media goes (from the answer).
    pub remote_rtp: Option<SocketAddr>,
}

/// What the callee keeps of a call it received.
#[derive(Clone)]
pub struct Incoming {
    pub invite: Message,
    pub tag: String,
    pub remote_rtp: Option<SocketAddr>,
    pub cseq: u32,
}

pub fn sdp(port: u16, direction: &str) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\na={direction}\r\n"
    )
}

/// An answer to `offer` at `port`: the offered audio formats (with their rtpmap/fmtp lines),
/// our address, `direction`.
pub fn answer_sdp(offer: &[u8], port: u16, direction: &str) -> String {
    let text = String::from_utf8_lossy(offer);
    let mut formats = String::new();
    let mut attributes = String::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("m=audio ") {
            formats = rest.split_whitespace().skip(2).collect::<Vec<_>>().join(" ");
        } else if line.starts_with("a=rtpmap:") || line.starts_with("a=fmtp:") || line.starts_with("a=ptime:") {
            attributes.push_str(line);
            attributes.push_str("\r\n");
        }
    }
    format!(
        "v=0\r\no=- 2 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP {formats}\r\n{attributes}a={direction}\r\n"
    )
}

/// The first payload type of the audio m-line of an SDP body.
pub fn first_payload_type(body: &[u8]) -> Option<u8> {
    let text = std::str::from_utf8(body).ok()?;
    let line = text.lines().find(|line| line.starts_with("m=audio "))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// The RTP address in an SDP body (`c=` + `m=audio`).
pub fn media_address(body: &[u8]) -> Option<SocketAddr> {
    let text = std::str::from_utf8(body).ok()?;
    let mut ip = None;
    let mut port = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("c=IN IP4 ") {
            ip = Some(rest.trim().to_owned());
        }
        if let Some(rest) = line.strip_prefix("m=audio ") {
            port = rest.split_whitespace().next()?.parse::<u16>().ok();
        }
    }
    format!("{}:{}", ip?, port?).parse().ok()
}

fn tag_of(value: &str) -> Option<String> {
    value
        .split(';')
        .find_map(|param| param.trim().strip_prefix("tag=").map(str::to_owned))
}

fn header(message: &Message, name: HeaderName) -> String {
    message
        .header(name)
        .and_then(|header| header.value_str().map(|value| value.into_owned()))
        .unwrap_or_default()
}

impl Phone {
    /// A phone for `user` registered at `server`.
    pub async fn register(user: &str, password: &str, server: SocketAddr) -> Phone {
        let mut terminal = Terminal::new(user, password).await;
        let response = terminal.register(server, 600).await;
        assert_eq!(response.status(), Some(200), "{user} registers at {server}");
        let rtp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        Phone {
            terminal,
            rtp,
            seen: Vec::new(),
            server,
            cseq: 100,
        }
    }

    pub fn user(&self) -> &str {
        &self.terminal.user
    }

    pub fn sip_address(&self) -> SocketAddr {
        self.terminal.address()
    }

    pub fn rtp_port(&self) -> u16 {
        self.rtp.local_addr().unwrap().port()
    }

    pub async fn send(&self, text: &str) {
        self.terminal.send(self.server, text).await;
    }

    /// The next SIP message within `timeout` (recorded).
    pub async fn next(&mut self, timeout: Duration) -> Option<Message> {
        let message = self.terminal.receive(timeout).await?;
        self.seen.push(message.clone());
        Some(message)
    }

    /// Waits for a request with `method`, answering nothing else; panics after `WAIT`.
    pub async fn expect_request(&mut self, method: &str) -> Message {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let message = self
                .next(remaining)
                .await
                .unwrap_or_else(|| panic!("{} expected a {method}", self.user()));
            if message.method().is_some_and(|m| m.as_str() == method) {
                return message;
            }
        }
    }

    /// Waits for a response to `cseq_method` with a status ≥ `min`; panics after `WAIT`.
    pub async fn expect_response(&mut self, cseq_method: &str, min: u16) -> Message {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let message = self
                .next(remaining)
                .await
                .unwrap_or_else(|| panic!("{} expected a response to {cseq_method}", self.user()));
            if let Some(status) = message.status() {
                if status >= min && message.cseq().is_ok_and(|cseq| cseq.method.as_str() == cseq_method) {
                    return message;
                }
            }
        }
    }

    /// Statuses of the responses seen to `cseq_method`, retransmissions collapsed.
    pub fn statuses(&self, cseq_method: &str) -> Vec<u16> {
        let mut out: Vec<u16> = Vec::new();
        for message in &self.seen {
            if let Some(status) = message.status() {
                if message.cseq().is_ok_and(|cseq| cseq.method.as_str() == cseq_method) && out.last() != Some(&status) {
                    out.push(status);
                }
            }
        }
        out
    }

    /// Methods of the requests seen, retransmissions collapsed.
    pub fn requests(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut last: Option<(String, String)> = None;
        for message in &self.seen {
            if let Some(method) = message.method() {
                let via = header(message, HeaderName::Via);
                let key = (method.as_str().to_owned(), via);
                if last.as_ref() != Some(&key) {
                    out.push(method.as_str().to_owned());
                }
                last = Some(key);
            }
        }
        out
    }

    // ---- caller side ----------------------------------------------------------------------

    pub fn invite_text(&mut self, callee: &str, body: &str) -> Outgoing {
        self.cseq += 1;
        let me = self.sip_address();
        let server = self.server;
        let branch = format!("z9hG4bK{:x}", rand::random::<u64>());
        let call_id = format!("{:x}@phone", rand::random::<u64>());
        let from_tag = format!("{:x}", rand::random::<u32>());
        let to = format!("<sip:{callee}@{server}>");
        let invite = format!(
            "INVITE sip:{callee}@{server} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch={branch};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:{user}@{server}>;tag={from_tag}\r\nTo: {to}\r\n\
             Call-ID: {call_id}\r\nCSeq: {cseq} INVITE\r\nContact: <sip:{user}@{me}>\r\n\
             Content-Type: application/sdp\r\nContent-Length: {length}\r\n\r\n{body}",
            user = self.user(),
            cseq = self.cseq,
            length = body.len(),
        );
        Outgoing {
            call_id,
            from_tag,
            invite,
            branch,
            to,
            to_tag: None,
            cseq: self.cseq,
            remote_rtp: None,
        }
    }

    /// Sends an INVITE to `callee` with an offer at our RTP port.
    pub async fn call(&mut self, callee: &str) -> Outgoing {
        let body = sdp(self.rtp_port(), "sendrecv");
        let call = self.invite_text(callee, &body);
        self.send(&call.invite).await;
        call
    }

    /// A call to `callee` (a user or a group) that must be answered: its session and the
    /// payload type of the 200's first format.
    pub async fn set_up_call(&mut self, callee: &str) -> (Outgoing, u8) {
        let mut call = self.call(callee).await;
        assert_eq!(self.final_for(&mut call).await, 200, "{} sets up {callee}", self.user());
        let ok = self
            .seen
            .iter()
            .rev()
            .find(|message| message.status() == Some(200))
            .cloned()
            .unwrap();
        (call, first_payload_type(ok.body()).expect("an answer"))
    }

    /// Waits for the final response to the INVITE; on 2xx sends the ACK and learns the far
    /// media address; a failure is ACKed in the INVITE's transaction (RFC 3261 §17.1.1.3), so
    /// that the node stops retransmitting it.
    pub async fn final_for(&mut self, call: &mut Outgoing) -> u16 {
        let response = self.expect_response("INVITE", 200).await;
        let status = response.status().unwrap();
        if (200..300).contains(&status) {
            call.to_tag = tag_of(&header(&response, HeaderName::To));
            call.remote_rtp = media_address(response.body());
            self.ack(call).await;
        } else if status >= 300 {
            self.ack_failure(call, &header(&response, HeaderName::To)).await;
        }
        status
    }

    /// The ACK of a non-2xx final response: the INVITE's branch, the response's To.
    async fn ack_failure(&self, call: &Outgoing, to: &str) {
        let me = self.sip_address();
        let server = self.server;
        let callee = call.to.trim_start_matches("<sip:").split('@').next().unwrap_or("");
        let text = format!(
            "ACK sip:{callee}@{server} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch={branch};rport\r\nMax-Forwards: 70\r\n\
             From: <sip:{user}@{server}>;tag={from_tag}\r\nTo: {to}\r\nCall-ID: {call_id}\r\n\
             CSeq: {cseq} ACK\r\nContent-Length: 0\r\n\r\n",
            branch = call.branch,
            user = self.user(),
            from_tag = call.from_tag,
            call_id = call.call_id,
            cseq = call.cseq,
        );
        self.send(&text).await;
    }

    pub async fn ack(&self, call: &Outgoing) {
        let me = self.sip_address();
        let server = self.server;
        let branch = format!("z9hG4bK{:x}", rand::random::<u64>());
        let to_tag = call.to_tag.clone().unwrap_or_default();
        let text = format!(
            "ACK sip:{callee}@{server} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch={branch};rport\r\nMax-Forwards: 70\r\n\
             From: <sip:{user}@{server}>;tag={from_tag}\r\nTo: {to};tag={to_tag}\r\nCall-ID: {call_id}\r\n\
             CSeq: {cseq} ACK\r\nContent-Length: 0\r\n\r\n",
            callee = "x",
            user = self.user(),
            from_tag = call.from_tag,
            to = call.to,
            call_id = call.call_id,
            cseq = call.cseq,
        );
        self.send(&text).await;
    }

    /// CANCEL of the pending INVITE.
    pub async fn cancel(&self, call: &Outgoing) {
        let me = self.sip_address();
        let server = self.server;
        let callee = call.to.trim_start_matches("<sip:").split('@').next().unwrap_or("");
        let text = format!(
            "CANCEL sip:{callee}@{server} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch={branch};rport\r\nMax-Forwards: 70\r\n\
             From: <sip:{user}@{server}>;tag={from_tag}\r\nTo: {to}\r\nCall-ID: {call_id}\r\n\
             CSeq: {cseq} CANCEL\r\nContent-Length: 0\r\n\r\n",
            branch = call.branch,
            user = self.user(),
            from_tag = call.from_tag,
            to = call.to,
            call_id = call.call_id,
            cseq = call.cseq,
        );
        self.send(&text).await;
    }

    /// A request in the caller's dialog (BYE, re-INVITE with a body).
    pub async fn in_dialog(&mut self, call: &mut Outgoing, method: &str, body: Option<&str>) {
        self.in_dialog_with(call, method, body, "").await;
    }

    /// Like [`Phone::in_dialog`], with extra header lines (each ending in CRLF).
    pub async fn in_dialog_with(&mut self, call: &mut Outgoing, method: &str, body: Option<&str>, extra: &str) {
        self.cseq += 1;
        call.cseq = self.cseq;
        let me = self.sip_address();
        let server = self.server;
        let branch = format!("z9hG4bK{:x}", rand::random::<u64>());
        if method == "INVITE" {
            call.branch = branch.clone();
        }
        let to_tag = call.to_tag.clone().unwrap_or_default();
        let body = body.unwrap_or("");
        let content_type = if body.is_empty() {
            String::new()
        } else {
            "Content-Type: application/sdp\r\n".to_owned()
        };
        let text = format!(
            "{method} sip:x@{server} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch={branch};rport\r\nMax-Forwards: 70\r\n\
             From: <sip:{user}@{server}>;tag={from_tag}\r\nTo: {to};tag={to_tag}\r\nCall-ID: {call_id}\r\n\
             CSeq: {cseq} {method}\r\nContact: <sip:{user}@{me}>\r\n{extra}{content_type}Content-Length: {length}\r\n\r\n{body}",
            user = self.user(),
            from_tag = call.from_tag,
            to = call.to,
            call_id = call.call_id,
            cseq = call.cseq,
            length = body.len(),
        );
        self.send(&text).await;
    }

    // ---- callee side ----------------------------------------------------------------------

    /// Waits for an INVITE and returns what the callee needs to answer it.
    pub async fn incoming(&mut self) -> Incoming {
        let invite = self.expect_request("INVITE").await;
        Incoming {
            remote_rtp: media_address(invite.body()),
            tag: format!("{:x}", rand::random::<u32>()),
            invite,
            cseq: 1,
        }
    }

    /// Answers `request` with `status` (our tag in To, our Contact, an optional SDP body).
    pub async fn respond(&self, request: &Message, tag: &str, status: u16, reason: &str, body: Option<&str>) {
        let me = self.sip_address();
        let mut builder = floorcast::sip::response_to(request, status, reason, Some(tag)).unwrap();
        builder = builder.header(HeaderName::Contact, format!("<sip:{}@{me}>", self.user()));
        if let Some(body) = body {
            builder = builder.body("application/sdp", Bytes::from(body.to_owned()));
        }
        let response = builder.build().unwrap();
        self.terminal
            .socket
            .send_to(response.as_bytes(), self.server)
            .await
            .unwrap();
    }

    /// Answers with 200 OK and an answer at our RTP port with the offered formats.
    pub async fn answer(&self, incoming: &Incoming) {
        let body = answer_sdp(incoming.invite.body(), self.rtp_port(), "sendrecv");
        self.respond(&incoming.invite, &incoming.tag, 200, "OK", Some(&body))
            .await;
    }

    /// A request in the callee's dialog (BYE).
    pub async fn callee_request(&mut self, incoming: &mut Incoming, method: &str) {
        self.callee_request_with(incoming, method, None, "").await;
    }

    /// Like [`Phone::callee_request`], with a body (SDP) and extra header lines.
    pub async fn callee_request_with(
        &mut self,
        incoming: &mut Incoming,
        method: &str,
        body: Option<&str>,
        extra: &str,
    ) {
        incoming.cseq += 1;
        let me = self.sip_address();
        let server = self.server;
        let branch = format!("z9hG4bK{:x}", rand::random::<u64>());
        let invite = &incoming.invite;
        let from = header(invite, HeaderName::From);
        let to = header(invite, HeaderName::To);
        let call_id = invite.call_id().unwrap().to_owned();
        let body = body.unwrap_or("");
        let content_type = if body.is_empty() {
            ""
        } else {
            "Content-Type: application/sdp\r\n"
        };
        let text = format!(
            "{method} sip:x@{server} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch={branch};rport\r\nMax-Forwards: 70\r\n\
             From: {to};tag={tag}\r\nTo: {from}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n\
             Contact: <sip:{user}@{me}>\r\n{extra}{content_type}Content-Length: {length}\r\n\r\n{body}",
            tag = incoming.tag,
            cseq = incoming.cseq,
            user = self.user(),
            length = body.len(),
        );
        self.send(&text).await;
    }

    /// ACKs the 2xx to the callee side's last in-dialog INVITE.
    pub async fn callee_ack(&self, incoming: &Incoming) {
        let me = self.sip_address();
        let server = self.server;
        let branch = format!("z9hG4bK{:x}", rand::random::<u64>());
        let invite = &incoming.invite;
        let from = header(invite, HeaderName::From);
        let to = header(invite, HeaderName::To);
        let call_id = invite.call_id().unwrap().to_owned();
        let text = format!(
            "ACK sip:x@{server} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch={branch};rport\r\nMax-Forwards: 70\r\n\
             From: {to};tag={tag}\r\nTo: {from}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} ACK\r\n\
             Content-Length: 0\r\n\r\n",
            tag = incoming.tag,
            cseq = incoming.cseq,
        );
        self.send(&text).await;
    }

    /// Answers 200 to an in-dialog request.
    pub async fn ok(&self, request: &Message) {
        self.respond(request, "unused", 200, "OK", None).await;
    }

    // ---- media ------------------------------------------------------------------------------

    /// Sends `count` RTP packets (PCMU, 160-byte payloads derived from `seed`) to `to`.
    pub async fn send_rtp(&self, to: SocketAddr, count: u16, seed: u8) -> Vec<Vec<u8>> {
        self.send_rtp_pt(to, count, seed, 0).await
    }

    /// Like [`Phone::send_rtp`] with payload type `pt`.
    pub async fn send_rtp_pt(&self, to: SocketAddr, count: u16, seed: u8, pt: u8) -> Vec<Vec<u8>> {
        let mut sent = Vec::new();
        for index in 0..count {
            let mut packet = vec![0x80, pt & 0x7f];
            packet.extend_from_slice(&index.to_be_bytes());
            packet.extend_from_slice(&(u32::from(index) * 160).to_be_bytes());
            packet.extend_from_slice(&[0x11, 0x22, 0x33, seed]);
            packet.extend((0..160u16).map(|byte| (byte as u8).wrapping_add(seed).wrapping_add(index as u8)));
            self.rtp.send_to(&packet, to).await.unwrap();
            sent.push(packet);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        sent
    }

    /// Receives RTP for `timeout`; returns the packets.
    pub async fn receive_rtp(&self, timeout: Duration) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut buffer = vec![0u8; 2048];
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if remaining.is_zero() {
                break;
            }
            match tokio::time::timeout(remaining, self.rtp.recv_from(&mut buffer)).await {
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
}

/// The `Ptt-Extension` of a message ("" when none).
pub fn ptt(message: &Message) -> String {
    message
        .headers_named("Ptt-Extension")
        .next()
        .and_then(|header| header.value_str().map(|value| value.into_owned()))
        .unwrap_or_default()
}

/// Checks a listener's packets form one continuous stream: one SSRC, sequence numbers
/// advancing by exactly one; returns the payloads (after the 12-byte header and CSRCs).
pub fn continuous_payloads(packets: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut payloads = Vec::new();
    let mut last: Option<(u32, u16)> = None;
    for packet in packets {
        assert!(packet.len() >= 12, "an RTP packet");
        let csrcs = usize::from(packet[0] & 0x0f);
        let seq = u16::from_be_bytes([packet[2], packet[3]]);
        let ssrc = u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]);
        if let Some((last_ssrc, last_seq)) = last {
            assert_eq!(ssrc, last_ssrc, "one SSRC for the listener's whole stream");
            assert_eq!(seq, last_seq.wrapping_add(1), "sequence continues by one");
        }
        last = Some((ssrc, seq));
        payloads.push(packet[12 + 4 * csrcs..].to_vec());
    }
    payloads
}

/// Sends RTP from `from` to `to_address` and checks `receiver` gets every packet unchanged.
pub async fn check_rtp_flows(from: &Phone, to_address: SocketAddr, receiver: &Phone, seed: u8) {
    let sent = from.send_rtp(to_address, 20, seed).await;
    let received = receiver.receive_rtp(Duration::from_millis(800)).await;
    assert_eq!(
        received.len(),
        sent.len(),
        "{} receives every packet {} sent",
        receiver.user(),
        from.user()
    );
    assert_eq!(received, sent, "payloads arrive byte-exact");
}
