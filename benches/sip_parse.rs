//! SIP parsing throughput: index a message, then read the typed fields every request needs
//! (top Via, From, To, CSeq, Call-ID), for a typical INVITE with SDP and a REGISTER carrying
//! Digest credentials. Also the full validating parse. Reported in messages per second.
//!
//! Run: `cargo bench --bench sip_parse` (add `-- --quick` for a short run).

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use floorcast::sip::{Message, Method};

const INVITE: &[u8] = b"INVITE sip:2001@tcf.example.net SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-524287-1---77ba38ab8cc7b6e2;rport\r\n\
Max-Forwards: 70\r\n\
Contact: <sip:1001@192.0.2.10:5060;transport=udp>\r\n\
To: \"Dispatch Group\" <sip:2001@tcf.example.net>\r\n\
From: \"Unit 1001\" <sip:1001@tcf.example.net>;tag=6f7a1c2e\r\n\
Call-ID: 5c9d3e1fa2b04c7e8d61@192.0.2.10\r\n\
CSeq: 1 INVITE\r\n\
Allow: INVITE, ACK, CANCEL, BYE, NOTIFY, REFER, MESSAGE, OPTIONS, INFO, SUBSCRIBE\r\n\
Supported: replaces, timer\r\n\
User-Agent: floorcast-load/0.1\r\n\
Ptt-Extension: floor-request;priority=2;group=2001\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 235\r\n\
\r\n\
v=0\r\n\
o=- 3822038713 3822038713 IN IP4 192.0.2.10\r\n\
s=floorcast\r\n\
c=IN IP4 192.0.2.10\r\n\
t=0 0\r\n\
m=audio 40000 RTP/AVP 96 0 101\r\n\
a=rtpmap:96 opus/48000/2\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-16\r\n\
a=sendrecv\r\n";

const REGISTER: &[u8] = b"REGISTER sip:tcf.example.net SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-524287-1---4a1f0d4d2f6e1c0b;rport\r\n\
Max-Forwards: 70\r\n\
Contact: <sip:1001@192.0.2.10:5060;transport=udp>;expires=3600;+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-00a0c91e6bf6>\"\r\n\
To: <sip:1001@tcf.example.net>\r\n\
From: <sip:1001@tcf.example.net>;tag=9b2e44c1\r\n\
Call-ID: 8a1b2c3d4e5f60718293@192.0.2.10\r\n\
CSeq: 2 REGISTER\r\n\
Expires: 3600\r\n\
Authorization: Digest username=\"1001\",realm=\"tcf.example.net\",nonce=\"5f3a9c0e1b2d4f6a8c0e2b4d6f8a0c1e\",uri=\"sip:tcf.example.net\",response=\"3c5f0a9e8d7c6b5a4f3e2d1c0b9a8f7e\",algorithm=MD5,cnonce=\"0a4f113b\",qop=auth,nc=00000001\r\n\
User-Agent: floorcast-load/0.1\r\n\
Content-Length: 0\r\n\
\r\n";

/// Parses and reads the fields every request needs; returns something derived from all of them
/// so the work cannot be optimised away.
fn parse_and_read(buffer: Bytes) -> usize {
    let Ok(message) = Message::parse_datagram_unvalidated(buffer) else {
        return 0;
    };
    let via = message
        .top_via()
        .map(|via| via.branch().map_or(0, str::len))
        .unwrap_or(0);
    let from = message.from().map(|from| from.tag().map_or(0, str::len)).unwrap_or(0);
    let to = message.to().map(|to| to.uri().as_str().len()).unwrap_or(0);
    let cseq = message.cseq().map(|cseq| cseq.number as usize).unwrap_or(0);
    let call_id = message.call_id().map(str::len).unwrap_or(0);
    via + from + to + cseq + call_id
}

fn check_before_timing(bytes: &'static [u8], method: Method<'static>) {
    let message = Message::parse_datagram(Bytes::from_static(bytes)).expect("bench message is valid");
    assert_eq!(message.method(), Some(method));
    assert_eq!(message.as_bytes(), bytes, "the parse covers the whole message");
    let again = Message::parse_datagram(message.to_normalized_bytes()).expect("round trip");
    assert_eq!(again.headers().count(), message.headers().count());
    if method == Method::Register {
        let credentials = message.authorization().expect("credentials").expect("present");
        assert_eq!(credentials.param("nc").as_deref(), Some(&b"00000001"[..]));
    }
}

fn bench_parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("sip_parse");
    group.throughput(Throughput::Elements(1));
    for (name, bytes, method) in [
        ("invite_sdp", INVITE, Method::Invite),
        ("register_auth", REGISTER, Method::Register),
    ] {
        check_before_timing(bytes, method);
        let buffer = Bytes::from_static(bytes);
        group.bench_function(format!("{name}/index_only"), |b| {
            b.iter(|| Message::parse_datagram_unvalidated(black_box(buffer.clone())).is_ok())
        });
        group.bench_function(format!("{name}/typed"), |b| {
            b.iter(|| parse_and_read(black_box(buffer.clone())))
        });
        group.bench_function(format!("{name}/validated"), |b| {
            b.iter(|| Message::parse_datagram(black_box(buffer.clone())).is_ok())
        });
    }
    group.finish();
}

criterion_group!(benches, bench_parse);
criterion_main!(benches);
