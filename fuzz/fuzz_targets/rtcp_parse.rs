//! Fuzzes the RTCP parsers: compound validation, the packet iterator and every typed view must
//! never panic, and SR/RR/BYE packets that parse must survive a write-then-parse round trip.

#![no_main]

use floorcast::media::rtcp::{self, Bye, ReceiverReport, ReportBlock, RtcpIter, RtcpPacket, Sdes, SenderReport};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let compound_ok = rtcp::validate_compound(data).is_ok();
    assert_eq!(rtcp::parse_compound(data).is_ok(), compound_ok);
    let _ = RtcpPacket::parse(data);

    let mut walked = 0;
    for packet in RtcpIter::new(data) {
        walked += 4 + packet.body.len();
        check_packet(packet);
    }
    if compound_ok {
        // Padding is not part of a body, so the bodies plus headers cover at most the input.
        assert!(walked <= data.len());
        assert!(RtcpIter::new(data).next().is_some());
    }
});

fn check_packet(packet: RtcpPacket<'_>) {
    let mut out = [0u8; 1024];

    if let Ok(report) = SenderReport::parse(packet) {
        let blocks: Vec<ReportBlock> = report.report_blocks().collect();
        assert_eq!(blocks.len(), usize::from(packet.count));
        let _ = report.profile_extension();
        let len = rtcp::write_sender_report(
            &mut out,
            report.sender_ssrc(),
            report.ntp(),
            report.rtp_timestamp(),
            report.packet_count(),
            report.octet_count(),
            &blocks,
        )
        .expect("a parsed SR fits the buffer");
        let again = RtcpPacket::parse(&out[..len]).expect("written SR parses").0;
        let again = SenderReport::parse(again).expect("written SR is an SR");
        assert_eq!(again.sender_ssrc(), report.sender_ssrc());
        assert_eq!(again.ntp(), report.ntp());
        assert_eq!(again.rtp_timestamp(), report.rtp_timestamp());
        assert_eq!(again.packet_count(), report.packet_count());
        assert_eq!(again.octet_count(), report.octet_count());
        assert!(again.report_blocks().eq(blocks.iter().copied()));
    }

    if let Ok(report) = ReceiverReport::parse(packet) {
        let blocks: Vec<ReportBlock> = report.report_blocks().collect();
        assert_eq!(blocks.len(), usize::from(packet.count));
        let _ = report.profile_extension();
        let len =
            rtcp::write_receiver_report(&mut out, report.sender_ssrc(), &blocks).expect("a parsed RR fits the buffer");
        rtcp::validate_compound(&out[..len]).expect("a written RR is a valid compound");
        let again = RtcpPacket::parse(&out[..len]).expect("written RR parses").0;
        let again = ReceiverReport::parse(again).expect("written RR is an RR");
        assert_eq!(again.sender_ssrc(), report.sender_ssrc());
        assert!(again.report_blocks().eq(blocks.iter().copied()));
    }

    if let Ok(sdes) = Sdes::parse(packet) {
        assert_eq!(sdes.chunks().count(), usize::from(packet.count));
        for chunk in sdes.chunks() {
            for item in chunk.items() {
                let _ = (item.kind, item.value);
            }
            if let Some(cname) = chunk.cname() {
                let len = rtcp::write_sdes_cname(&mut out, chunk.ssrc, cname).expect("a parsed CNAME fits the buffer");
                let again = RtcpPacket::parse(&out[..len]).expect("written SDES parses").0;
                let again = Sdes::parse(again).expect("written SDES is an SDES");
                let first = again.chunks().next().expect("one chunk written");
                assert_eq!(first.ssrc, chunk.ssrc);
                assert_eq!(first.cname(), Some(cname));
            }
        }
    }

    if let Ok(bye) = Bye::parse(packet) {
        assert_eq!(bye.ssrcs().len(), usize::from(packet.count));
        let _ = bye.reason();
        for ssrc in bye.ssrcs() {
            let len = rtcp::write_bye(&mut out, ssrc).expect("a BYE fits the buffer");
            let again = RtcpPacket::parse(&out[..len]).expect("written BYE parses").0;
            let again = Bye::parse(again).expect("written BYE is a BYE");
            assert!(again.ssrcs().eq([ssrc]));
        }
    }
}
