//! Fuzzes the RTP header view and in-place rewrite: `RtpView::parse` must never panic, every
//! accepted packet must satisfy the layout invariants, and rewriting the fixed-header fields
//! must keep it valid.

#![no_main]

use floorcast::media::rtp::{self, RtpView};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = rtp::is_rtcp(data);
    let Ok(view) = RtpView::parse(data) else {
        return;
    };

    assert_eq!(view.version(), 2);
    assert!(view.csrc_end() <= view.header_len());
    assert_eq!(
        view.header_len() + view.payload().len() + view.padding_len(),
        data.len()
    );
    assert_eq!(view.csrc_bytes().len(), 4 * usize::from(view.csrc_count()));
    assert_eq!(view.csrcs().count(), usize::from(view.csrc_count()));
    for index in 0..=16 {
        assert_eq!(view.csrc(index).is_some(), index < usize::from(view.csrc_count()));
    }
    assert_eq!(view.extension_profile().is_some(), view.extension());
    assert_eq!(view.extension_data().is_some(), view.extension());
    assert_eq!(view.padding(), view.padding_len() > 0);

    let mut copy = data.to_vec();
    let sequence = view.sequence().wrapping_add(1);
    let timestamp = view.timestamp().wrapping_add(160);
    let ssrc = !view.ssrc();
    let marker = !view.marker();
    let payload_type = view.payload_type() ^ 0x55;
    rtp::set_sequence(&mut copy, sequence).expect("parsed packets hold a fixed header");
    rtp::set_timestamp(&mut copy, timestamp).expect("parsed packets hold a fixed header");
    rtp::set_ssrc(&mut copy, ssrc).expect("parsed packets hold a fixed header");
    rtp::set_marker(&mut copy, marker).expect("parsed packets hold a fixed header");
    rtp::set_payload_type(&mut copy, payload_type).expect("parsed packets hold a fixed header");
    let rewritten = RtpView::parse(&copy).expect("rewriting fixed-header fields keeps validity");
    assert_eq!(rewritten.sequence(), sequence);
    assert_eq!(rewritten.timestamp(), timestamp);
    assert_eq!(rewritten.ssrc(), ssrc);
    assert_eq!(rewritten.marker(), marker);
    assert_eq!(rewritten.payload_type(), payload_type);
    assert_eq!(rewritten.payload(), view.payload());
    assert_eq!(rewritten.header_len(), view.header_len());
});
