//! Fuzzes every SIP parser entry point: the datagram parser and validator with all typed views
//! and the error-response builder, the stream framer fed in input-chosen chunks, and the
//! stand-alone value parsers. Nothing may panic; framing must not depend on chunking.
#![no_main]

use floorcast::sip::{
    AuthHeader, CSeq, Contact, Frame, Host, Message, MediaType, NameAddr, PttExtension, SipDate,
    StreamFramer, Uri, Via,
};
use libfuzzer_sys::fuzz_target;

fn exercise(message: &Message) {
    let _ = message.validate();
    let _ = message.start_line();
    let _ = message.request_uri();
    for via in message.vias().flatten() {
        let _ = (via.branch(), via.received(), via.rport(), via.ttl(), via.other_params().count());
    }
    let _ = message.from().map(|from| (from.tag(), from.display_name()));
    let _ = message.to().map(|to| to.uri().as_sip().map(|uri| (uri.user_unescaped(), uri.params().count())));
    let _ = (message.call_id(), message.cseq(), message.max_forwards(), message.content_length());
    let _ = (message.content_type(), message.expires(), message.date(), message.contacts());
    let _ = (message.routes().count(), message.record_routes().count());
    let _ = message.authorization().map(|auth| auth.map(|auth| auth.params().count()));
    let _ = message.www_authenticate();
    let _ = message.ptt_extension().map(|ext| ext.map(|ext| ext.param("priority")));
    for header in message.headers() {
        let _ = header.unfolded();
    }
    // The normalised form must parse back to the same start line and header count.
    if let Ok(again) = Message::parse_datagram_unvalidated(message.to_normalized_bytes()) {
        assert_eq!(again.start_line(), message.start_line());
        assert_eq!(again.headers().count(), message.headers().count());
    }
}

fuzz_target!(|data: &[u8]| {
    // Datagram path.
    match Message::parse_datagram(data.to_vec().into()) {
        Ok(message) => exercise(&message),
        Err(rejection) => {
            let _ = rejection.action();
            let _ = rejection.response("fuzz");
            if let Some(message) = rejection.message() {
                exercise(message);
            }
        }
    }

    // Stream path: whole, then in chunks whose sizes come from the input. Both must agree.
    let frames = |chunk: usize| {
        let mut framer = StreamFramer::new(4096);
        let mut frames = Vec::new();
        for piece in data.chunks(chunk.max(1)) {
            framer.push(piece);
            loop {
                match framer.next_frame() {
                    Ok(Some(frame)) => frames.push(frame),
                    Ok(None) => break,
                    Err(error) => return (frames, Some(error)),
                }
            }
        }
        (frames, None)
    };
    let whole = frames(data.len());
    let chunked = frames(usize::from(data.first().copied().unwrap_or(1) % 17));
    assert_eq!(whole, chunked);
    for frame in &whole.0 {
        if let Frame::Message(message) = frame {
            exercise(message);
        }
    }

    // Value parsers on raw input.
    let _ = Uri::parse(data);
    let _ = Host::parse(data);
    let _ = Via::parse(data);
    let _ = NameAddr::parse(data);
    let _ = Contact::parse(data);
    let _ = CSeq::parse(data);
    let _ = MediaType::parse(data);
    let _ = SipDate::parse(data);
    let _ = AuthHeader::parse(data).map(|auth| auth.params().count());
    let _ = PttExtension::parse(data);
});
