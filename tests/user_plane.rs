#![allow(clippy::unwrap_used)]
//! User-plane flows F-UP-01 … F-UP-06 over real loopback sockets, against real engines.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::UdpSocket;
use std::time::Duration;

use common::*;
use floorcast::config::SourceCheck;
use floorcast::media::api::{BridgeKind, Event, GroupOptions, LegSpec};
use floorcast::media::codec::Codec;
use floorcast::media::stats::DropCause;

const WAIT: Duration = Duration::from_secs(2);

/// F-UP-01: a single call relayed byte-exact both ways, RTP and RTCP.
#[test]
fn f_up_01_single_call_relay() {
    let engine = engine(41000, 41099);
    let mut alice = Terminal::new(0x1111);
    let mut bob = Terminal::new(0x2222);
    let bridge = engine.create_bridge(BridgeKind::Relay).unwrap();
    let leg_a = leg_for(&engine, bridge, &alice);
    let leg_b = leg_for(&engine, bridge, &bob);
    settle();

    let mut sent_ab = Vec::new();
    let mut sent_ba = Vec::new();
    for index in 0..50u8 {
        sent_ab.push(alice.send_next(leg_a.local_rtp, &[index; 160]));
        sent_ba.push(bob.send_next(leg_b.local_rtp, &[index ^ 0xff; 160]));
    }
    assert_eq!(bob.receive(50, WAIT), sent_ab, "alice -> bob byte-exact, in order");
    assert_eq!(alice.receive(50, WAIT), sent_ba, "bob -> alice byte-exact, in order");

    // RTCP: a receiver report from alice's RTCP port reaches bob's RTCP port unchanged.
    let report = rtcp_receiver_report(0x1111, 0x2222);
    alice.rtcp.send_to(&report, leg_a.local_rtcp).unwrap();
    let got = receive_on(&bob.rtcp, 1, WAIT);
    assert_eq!(got, vec![report]);

    let stats = engine.leg_stats(leg_a.id).unwrap();
    assert_eq!(stats.counters.rtp_in_packets, 50);
    assert_eq!(stats.counters.rtp_out_packets, 50, "leg A sent bob's 50 to alice");
    assert_eq!(stats.counters.rtcp_in_packets, 1);
    assert_eq!(stats.counters.total_drops(), 0);
}

fn rtcp_receiver_report(sender: u32, about: u32) -> Vec<u8> {
    use webrtc_util::marshal::Marshal;
    let report = rtcp::receiver_report::ReceiverReport {
        ssrc: sender,
        reports: vec![rtcp::reception_report::ReceptionReport {
            ssrc: about,
            fraction_lost: 64,
            total_lost: 10,
            last_sequence_number: 1000,
            jitter: 80,
            last_sender_report: 0,
            delay: 0,
        }],
        profile_extensions: bytes::Bytes::new(),
    };
    report.marshal().unwrap().to_vec()
}

/// F-UP-02: only the floor holder's RTP is forwarded, to every listener except the holder;
/// everyone else's RTP is dropped and counted; the holder changes with the very next packet.
#[test]
fn f_up_02_group_fanout_only_holder() {
    let engine = engine(41100, 41299);
    let bridge = group(&engine);
    let mut terminals: Vec<Terminal> = (0..6).map(|index| Terminal::new(0x100 + index)).collect();
    let legs: Vec<_> = terminals
        .iter()
        .map(|terminal| leg_for(&engine, bridge, terminal))
        .collect();
    settle();

    // Nobody holds the floor: nothing is forwarded.
    terminals[0].send_next(legs[0].local_rtp, b"idle");
    for terminal in &terminals[1..] {
        assert!(terminal.drain(Duration::from_millis(100)).is_empty());
    }

    engine.set_source(bridge, Some(legs[2].id)).unwrap();
    for round in 0..10u8 {
        // Everyone talks at once; only terminal 2 is heard.
        for (index, terminal) in terminals.iter_mut().enumerate() {
            terminal.send_next(legs[index].local_rtp, &[index as u8, round]);
        }
    }
    for (index, terminal) in terminals.iter().enumerate() {
        let got = terminal.drain(Duration::from_millis(300));
        if index == 2 {
            assert!(got.is_empty(), "the holder must not hear itself");
            continue;
        }
        assert_eq!(got.len(), 10, "listener {index} gets exactly the holder's 10 packets");
        for packet in got {
            let packet = parse_rtp(&packet);
            assert_eq!(packet.payload[0], 2, "listener {index} got a non-holder's packet");
        }
    }
    let dropped: u64 = legs
        .iter()
        .enumerate()
        .filter(|(index, _)| *index != 2)
        .map(|(_, leg)| engine.leg_stats(leg.id).unwrap().counters.drops(DropCause::NotHolder))
        .sum();
    assert_eq!(dropped, 1 + 10 * 5, "every non-holder packet counted");

    // The switch takes effect for the very next packet.
    engine.set_source(bridge, Some(legs[4].id)).unwrap();
    terminals[4].send_next(legs[4].local_rtp, &[4, 99]);
    let got = terminals[0].receive(1, WAIT);
    assert_eq!(parse_rtp(&got[0]).payload[..], [4, 99]);
    assert!(matches!(
        engine.events().recv_timeout(WAIT),
        Ok(Event::TalkerFirstPacket { .. })
    ));
}

/// What one listener saw: continuity checks across talker switches.
#[derive(Default)]
struct ListenerLog {
    packets: Vec<rtp::packet::Packet>,
}

impl ListenerLog {
    fn check_continuity(&self, name: &str) {
        let ssrc = self.packets[0].header.ssrc;
        let mut seen = HashSet::new();
        for pair in self.packets.windows(2) {
            let (a, b) = (&pair[0].header, &pair[1].header);
            assert_eq!(b.ssrc, ssrc, "{name}: one SSRC for the whole call");
            assert_eq!(
                b.sequence_number,
                a.sequence_number.wrapping_add(1),
                "{name}: sequence continuous"
            );
            let advance = b.timestamp.wrapping_sub(a.timestamp);
            assert!(
                (160..8000 * 10).contains(&advance),
                "{name}: timestamp advanced {advance}"
            );
            assert!(seen.insert(b.sequence_number), "{name}: repeated sequence number");
        }
    }
}

/// F-UP-03: 50 listeners, 20 talker switches: every listener sees one continuous stream (own
/// SSRC, sequence without gap or jump, timestamps advancing with time, marker on every spurt
/// start, the talker's SSRC as CSRC), never its own voice, never a non-holder's packet.
#[test]
fn f_up_03_source_switching_continuity() {
    let engine = engine(41300, 41599);
    let bridge = group(&engine);
    let mut terminals: Vec<Terminal> = (0..50).map(|index| Terminal::new(0x5000 + index)).collect();
    let legs: Vec<_> = terminals
        .iter()
        .map(|terminal| leg_for(&engine, bridge, terminal))
        .collect();
    settle();

    let mut logs: HashMap<usize, ListenerLog> = HashMap::new();
    let mut expected_per_listener = vec![0usize; terminals.len()];
    for switch in 0..20usize {
        let talker = (switch * 7) % terminals.len();
        let intruder = (talker + 1) % terminals.len();
        engine.set_source(bridge, Some(legs[talker].id)).unwrap();
        for packet in 0..5u8 {
            let payload = [talker as u8, switch as u8, packet];
            terminals[talker].send_next(legs[talker].local_rtp, &payload);
            terminals[intruder].send_next(legs[intruder].local_rtp, b"not the holder");
            std::thread::sleep(Duration::from_millis(2));
        }
        for (index, count) in expected_per_listener.iter_mut().enumerate() {
            if index != talker {
                *count += 5;
            }
        }
        for (index, terminal) in terminals.iter().enumerate() {
            let want = if index == talker { 0 } else { 5 };
            let got = terminal.receive(want, WAIT);
            assert_eq!(got.len(), want, "listener {index} at switch {switch}");
            let log = logs.entry(index).or_default();
            for (position, data) in got.iter().enumerate() {
                let packet = parse_rtp(data);
                assert_eq!(
                    packet.payload[..],
                    [talker as u8, switch as u8, position as u8],
                    "listener {index}"
                );
                assert_eq!(packet.header.marker, position == 0, "marker on spurt start only");
                assert_eq!(packet.header.csrc, vec![0x5000 + talker as u32], "talker named in CSRC");
                log.packets.push(packet);
            }
        }
        // A short silence between spurts.
        std::thread::sleep(Duration::from_millis(20));
    }
    for (index, log) in &logs {
        assert_eq!(log.packets.len(), expected_per_listener[*index]);
        log.check_continuity(&format!("listener {index}"));
        assert_eq!(log.packets[0].header.ssrc, legs[*index].ssrc);
    }
    // Nothing left over (no late duplicates).
    for terminal in &terminals {
        assert!(terminal.drain(Duration::from_millis(20)).is_empty());
    }
}

/// F-UP-03 with payload type rewriting: a listener that negotiated another number for the
/// codec gets that number; a listener without the codec gets nothing (counted).
#[test]
fn f_up_03_payload_type_rewrite() {
    let engine = engine(41600, 41699);
    let bridge = group(&engine);
    let mut talker = Terminal::new(1);
    let listener_same = Terminal::new(2);
    let listener_other = Terminal::new(3);
    let listener_none = Terminal::new(4);
    let with = |terminal: &Terminal, types: Vec<(u8, Codec)>| LegSpec {
        payload_types: types,
        ..terminal.spec()
    };
    let talker_leg = engine
        .add_leg(bridge, with(&talker, vec![(96, Codec::AmrWb), (0, Codec::Pcmu)]))
        .unwrap();
    engine
        .add_leg(bridge, with(&listener_same, vec![(96, Codec::AmrWb)]))
        .unwrap();
    engine
        .add_leg(
            bridge,
            with(&listener_other, vec![(111, Codec::AmrWb), (0, Codec::Pcmu)]),
        )
        .unwrap();
    let none_leg = engine
        .add_leg(bridge, with(&listener_none, vec![(8, Codec::Pcma)]))
        .unwrap();
    settle();
    engine.set_source(bridge, Some(talker_leg.id)).unwrap();
    talker.seq += 1;
    let packet = rtp_packet(1, talker.seq, 1000, 96, false, b"amr-wb frame");
    talker.rtp.send_to(&packet, talker_leg.local_rtp).unwrap();
    assert_eq!(parse_rtp(&listener_same.receive(1, WAIT)[0]).header.payload_type, 96);
    let other = parse_rtp(&listener_other.receive(1, WAIT)[0]);
    assert_eq!(other.header.payload_type, 111);
    assert_eq!(&other.payload[..], b"amr-wb frame");
    assert!(listener_none.drain(Duration::from_millis(100)).is_empty());
    assert_eq!(
        engine
            .leg_stats(none_leg.id)
            .unwrap()
            .counters
            .drops(DropCause::CodecMismatch),
        1
    );
    // A payload type the talker never negotiated is dropped at the input.
    let stray = rtp_packet(1, talker.seq + 1, 1160, 100, false, b"??");
    talker.rtp.send_to(&stray, talker_leg.local_rtp).unwrap();
    assert!(wait_until(WAIT, || engine
        .leg_stats(talker_leg.id)
        .unwrap()
        .counters
        .drops(DropCause::UnknownPayloadType)
        == 1));
}

/// F-UP-04: member TCF switching. Two engines play the group home and a member TCF. A local
/// talker at the member TCF is heard by its local members directly and by the home through the
/// uplink; its own voice coming back on the downlink is not sent to it (or anyone) again. When
/// the floor moves to a talker at the home, the member TCF switches its local fan-out to the
/// downlink, and its listeners see one continuous stream across the switch.
#[test]
fn f_up_04_member_tcf_switching() {
    let home = engine(41700, 41799);
    let member = engine(41800, 41899);
    let home_bridge = group(&home);
    let member_bridge = group(&member);

    // Member TCF: local terminals X (talks first), Y, Z.
    let mut x = Terminal::new(0xa1);
    let y = Terminal::new(0xa2);
    let z = Terminal::new(0xa3);
    let leg_x = leg_for(&member, member_bridge, &x);
    let leg_y = leg_for(&member, member_bridge, &y);
    let leg_z = leg_for(&member, member_bridge, &z);
    // Home: a local member R (talks second) and a remote listener W at the home.
    let mut r = Terminal::new(0xb1);
    let w = Terminal::new(0xb2);
    let leg_r = leg_for(&home, home_bridge, &r);
    let leg_w = leg_for(&home, home_bridge, &w);

    // The downlink (home -> member) and the talker uplink (member -> home): one leg on each
    // side, each pointing at the other's local address. Legs that never receive the fan-out
    // on their side say so.
    let home_downlink = home.add_leg(home_bridge, LegSpec::default()).unwrap();
    let member_downlink = member
        .add_leg(
            member_bridge,
            LegSpec {
                remote: Some(home_downlink.local_rtp),
                fanout: false,
                ..LegSpec::default()
            },
        )
        .unwrap();
    home.update_leg(
        home_downlink.id,
        LegSpec {
            remote: Some(member_downlink.local_rtp),
            ..LegSpec::default()
        },
    )
    .unwrap();
    let home_talker = home
        .add_leg(
            home_bridge,
            LegSpec {
                fanout: false,
                ..LegSpec::default()
            },
        )
        .unwrap();
    let member_uplink = member
        .add_leg(
            member_bridge,
            LegSpec {
                remote: Some(home_talker.local_rtp),
                ..LegSpec::default()
            },
        )
        .unwrap();
    home.update_leg(
        home_talker.id,
        LegSpec {
            remote: Some(member_uplink.local_rtp),
            fanout: false,
            ..LegSpec::default()
        },
    )
    .unwrap();
    settle();

    // X takes the floor: the home forwards its talker leg, the member TCF forwards X.
    home.set_source(home_bridge, Some(home_talker.id)).unwrap();
    member.set_source(member_bridge, Some(leg_x.id)).unwrap();
    for index in 0..10u8 {
        x.send_next(leg_x.local_rtp, &[0xa1, index]);
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut y_log = ListenerLog::default();
    for (name, terminal) in [("y", &y), ("z", &z), ("r", &r), ("w", &w)] {
        let got = terminal.receive(10, WAIT);
        assert_eq!(got.len(), 10, "{name} hears X once");
        for data in &got {
            assert_eq!(parse_rtp(data).payload[0], 0xa1);
        }
        if name == "y" {
            y_log.packets.extend(got.iter().map(|data| parse_rtp(data)));
        }
    }
    assert!(x.drain(Duration::from_millis(150)).is_empty(), "X never hears itself");
    assert!(
        y.drain(Duration::from_millis(50)).is_empty(),
        "Y hears X once, not again via the downlink"
    );
    let echoed = member
        .leg_stats(member_downlink.id)
        .unwrap()
        .counters
        .drops(DropCause::NotHolder);
    assert_eq!(echoed, 10, "X's voice came back on the downlink and was dropped");

    // The floor moves to R at the home (the INFO floor notification reaches the member TCF).
    home.set_source(home_bridge, Some(leg_r.id)).unwrap();
    member.set_source(member_bridge, Some(member_downlink.id)).unwrap();
    member.remove_leg(member_uplink.id).unwrap();
    home.remove_leg(home_talker.id).unwrap();
    settle();
    for index in 0..10u8 {
        r.send_next(leg_r.local_rtp, &[0xb1, index]);
        std::thread::sleep(Duration::from_millis(2));
    }
    for (name, terminal) in [("x", &x), ("y", &y), ("z", &z), ("w", &w)] {
        let got = terminal.receive(10, WAIT);
        assert_eq!(got.len(), 10, "{name} hears R");
        for data in &got {
            assert_eq!(parse_rtp(data).payload[0], 0xb1);
        }
        if name == "y" {
            y_log.packets.extend(got.iter().map(|data| parse_rtp(data)));
        }
    }
    assert!(r.drain(Duration::from_millis(100)).is_empty(), "R never hears itself");
    y_log.check_continuity("y across the local->remote switch");
    let _ = (leg_y, leg_z, leg_w);
}

/// F-UP-05: the engine sends RTCP SR on the streams it originates, reads RR from listeners
/// (loss, jitter, round trip) and keeps per-leg figures.
#[test]
fn f_up_05_rtcp_reports() {
    let engine = engine(41900, 41999);
    let bridge = group(&engine);
    let mut talker = Terminal::new(0x77);
    let listener = Terminal::new(0x78);
    let talker_leg = leg_for(&engine, bridge, &talker);
    let listener_leg = leg_for(&engine, bridge, &listener);
    settle();
    engine.set_source(bridge, Some(talker_leg.id)).unwrap();
    for index in 0..20u8 {
        talker.send_next(talker_leg.local_rtp, &[index; 160]);
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(listener.receive(20, WAIT).len(), 20);

    // Within ~1.5 report intervals the listener gets an SR about its stream.
    let mut sender_report = None;
    for data in receive_on(&listener.rtcp, 5, Duration::from_secs(3)) {
        let mut buffer = &data[..];
        let packets = rtcp::packet::unmarshal(&mut buffer).expect("valid RTCP compound");
        for packet in packets {
            if let Some(sr) = packet.as_any().downcast_ref::<rtcp::sender_report::SenderReport>() {
                sender_report = Some(sr.clone());
            }
        }
        if sender_report.is_some() {
            break;
        }
    }
    let sr = sender_report.expect("an SR on the listener leg");
    assert_eq!(sr.ssrc, listener_leg.ssrc);
    assert_eq!(sr.packet_count, 20);
    assert_eq!(sr.octet_count, 20 * 160);

    // The listener reports 25% loss and some jitter, quoting the SR: the engine computes RTT.
    use webrtc_util::marshal::Marshal;
    let lsr = (sr.ntp_time >> 16) as u32;
    let report = rtcp::receiver_report::ReceiverReport {
        ssrc: 0x78,
        reports: vec![rtcp::reception_report::ReceptionReport {
            ssrc: listener_leg.ssrc,
            fraction_lost: 64,
            total_lost: 5,
            last_sequence_number: 20,
            jitter: 160,
            last_sender_report: lsr,
            delay: 0,
        }],
        profile_extensions: bytes::Bytes::new(),
    };
    listener
        .rtcp
        .send_to(&report.marshal().unwrap(), listener_leg.local_rtcp)
        .unwrap();
    assert!(wait_until(WAIT, || engine
        .leg_stats(listener_leg.id)
        .unwrap()
        .quality
        .remote_cumulative_lost
        == 5));
    let quality = engine.leg_stats(listener_leg.id).unwrap().quality;
    assert_eq!(quality.remote_fraction_lost, 0.25);
    assert_eq!(quality.remote_jitter_ms, 20.0);
    let rtt = quality.round_trip_ms.expect("round trip from LSR/DLSR");
    assert!((0.0..5000.0).contains(&rtt), "rtt {rtt}");

    // The talker leg gets an RR about the talker's stream (no loss).
    let mut receiver_report = None;
    for data in receive_on(&talker.rtcp, 5, Duration::from_secs(3)) {
        let mut buffer = &data[..];
        for packet in rtcp::packet::unmarshal(&mut buffer).expect("valid RTCP") {
            if let Some(sr) = packet.as_any().downcast_ref::<rtcp::sender_report::SenderReport>() {
                receiver_report = sr.reports.first().cloned();
            }
            if let Some(rr) = packet.as_any().downcast_ref::<rtcp::receiver_report::ReceiverReport>() {
                receiver_report = rr.reports.first().cloned();
            }
        }
        if receiver_report.is_some() {
            break;
        }
    }
    let block = receiver_report.expect("a report block to the talker");
    assert_eq!(block.ssrc, 0x77);
    assert_eq!(block.total_lost, 0);
    assert_eq!(block.last_sequence_number & 0xffff, u32::from(talker.seq));
}

/// F-UP-06 strict: packets from anywhere but the negotiated address are dropped and counted.
#[test]
fn f_up_06_source_check_strict() {
    let engine = engine(42000, 42099);
    let bridge = engine.create_bridge(BridgeKind::Relay).unwrap();
    let mut alice = Terminal::new(1);
    let bob = Terminal::new(2);
    let mut mallory = Terminal::new(3);
    let leg_a = leg_for(&engine, bridge, &alice);
    leg_for(&engine, bridge, &bob);
    settle();
    mallory.send_next(leg_a.local_rtp, b"spoofed");
    let genuine = alice.send_next(leg_a.local_rtp, b"genuine");
    assert_eq!(bob.receive(2, Duration::from_millis(300)), vec![genuine]);
    assert_eq!(
        engine
            .leg_stats(leg_a.id)
            .unwrap()
            .counters
            .drops(DropCause::SourceMismatch),
        1
    );
}

/// F-UP-06 latching: a terminal behind NAT is reached at the first source seen, and only that
/// source is accepted afterwards.
#[test]
fn f_up_06_source_check_latching() {
    let engine = engine(42100, 42199);
    let bridge = engine.create_bridge(BridgeKind::Relay).unwrap();
    let mut natted = Terminal::new(1);
    let mut bob = Terminal::new(2);
    let mut mallory = Terminal::new(3);
    // The SDP named an address that is not where the terminal's packets come from.
    let sdp_address = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let leg_a = engine
        .add_leg(
            bridge,
            LegSpec {
                remote: Some(sdp_address),
                source_check: Some(SourceCheck::Latch),
                ..LegSpec::default()
            },
        )
        .unwrap();
    let leg_b = leg_for(&engine, bridge, &bob);
    settle();
    let first = natted.send_next(leg_a.local_rtp, b"from behind NAT");
    assert_eq!(bob.receive(1, WAIT), vec![first]);
    assert!(
        matches!(engine.events().recv_timeout(WAIT), Ok(Event::Latched { remote, .. }) if remote == natted.address())
    );
    // Bob's media now reaches the latched address.
    let reply = bob.send_next(leg_b.local_rtp, b"reply");
    assert_eq!(natted.receive(1, WAIT), vec![reply]);
    // Another source is refused.
    mallory.send_next(leg_a.local_rtp, b"hijack");
    assert!(bob.drain(Duration::from_millis(100)).is_empty());
    assert_eq!(
        engine
            .leg_stats(leg_a.id)
            .unwrap()
            .counters
            .drops(DropCause::SourceMismatch),
        1
    );
}

/// The same fan-out through the io_uring send backend (or its clean fallback to sendmmsg).
#[test]
fn f_up_02_group_fanout_io_uring_backend() {
    let mut config = media_config(42200, 42299);
    config.backend = floorcast::config::IoBackend::IoUring;
    let engine = floorcast::io::Engine::start(&config, "uring").unwrap();
    let bridge = engine
        .create_bridge(BridgeKind::Group(GroupOptions::default()))
        .unwrap();
    let mut talker = Terminal::new(9);
    let listeners: Vec<Terminal> = (0..8).map(|index| Terminal::new(100 + index)).collect();
    let talker_leg = leg_for(&engine, bridge, &talker);
    for listener in &listeners {
        leg_for(&engine, bridge, listener);
    }
    settle();
    engine.set_source(bridge, Some(talker_leg.id)).unwrap();
    for index in 0..20u8 {
        talker.send_next(talker_leg.local_rtp, &[index]);
    }
    for listener in &listeners {
        let got = listener.receive(20, WAIT);
        assert_eq!(got.len(), 20);
        let log = ListenerLog {
            packets: got.iter().map(|data| parse_rtp(data)).collect(),
        };
        log.check_continuity("io_uring listener");
    }
    eprintln!("io_uring active: {}", engine.io_uring_active());
}

/// `media.pin_workers`: each worker runs pinned to one CPU, and the relay works as before.
#[test]
fn f_up_01_relay_with_pinned_workers() {
    let mut config = media_config(42300, 42399);
    config.pin_workers = true;
    let engine = floorcast::io::Engine::start(&config, "pinned").unwrap();
    let bridge = engine.create_bridge(BridgeKind::Relay).unwrap();
    let mut alice = Terminal::new(1);
    let bob = Terminal::new(2);
    let leg = leg_for(&engine, bridge, &alice);
    leg_for(&engine, bridge, &bob);
    settle();
    let sent = alice.send_next(leg.local_rtp, b"pinned");
    assert_eq!(bob.receive(1, WAIT), vec![sent]);
    let mut pinned = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if name.trim().starts_with("media-") {
            let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
            let allowed = status
                .lines()
                .find(|line| line.starts_with("Cpus_allowed_list:"))
                .unwrap_or("");
            let list = allowed.split(':').nth(1).unwrap_or("").trim();
            if !list.contains(',') && !list.contains('-') {
                pinned += 1;
            }
        }
    }
    assert!(pinned >= 2, "both workers of this engine run on a single CPU each");
}

/// UDP sockets of this network namespace bound to a local port in `range` (from /proc/net/udp
/// and udp6): a leaked leg socket stays bound and shows here.
fn udp_sockets_in(range: std::ops::RangeInclusive<u16>) -> usize {
    ["/proc/net/udp", "/proc/net/udp6"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .filter_map(|line| {
                    let local = line.split_whitespace().nth(1)?;
                    u16::from_str_radix(local.rsplit(':').next()?, 16).ok()
                })
                .collect::<Vec<_>>()
        })
        .filter(|port| range.contains(port))
        .count()
}

/// Leg pool: a port reused by a new call, from the very same remote address (so source
/// checking cannot tell), never delivers what was sent to it for the previous call; those
/// datagrams are dropped and counted as `idle_port`.
#[test]
fn leg_pool_reused_port_never_delivers_previous_calls_packets() {
    let mut config = media_config(42400, 42403); // two port pairs: the second call reuses both
    config.workers = 1;
    config.port_quarantine = Duration::ZERO;
    assert!(config.leg_pool);
    let engine = floorcast::io::Engine::start(&config, "pool").unwrap();
    let mut alice = Terminal::new(0xa1);
    let mut bob = Terminal::new(0xb0);
    let carol = Terminal::new(0xca);

    let first = engine.create_bridge(BridgeKind::Relay).unwrap();
    let alice_leg = leg_for(&engine, first, &alice);
    let bob_leg = leg_for(&engine, first, &bob);
    settle();
    let sent = alice.send_next(alice_leg.local_rtp, b"first call");
    assert_eq!(bob.receive(1, WAIT), vec![sent]);
    engine.remove_bridge(first).unwrap();

    // Late media of the ended call, to both of its ports, from both of its terminals.
    const STALE: u64 = 20;
    for _ in 0..STALE {
        alice.send_next(alice_leg.local_rtp, b"stale");
        bob.send_next(bob_leg.local_rtp, b"stale");
    }
    // The next call gets the same ports; alice is on it again, at the same address.
    let second = engine.create_bridge(BridgeKind::Relay).unwrap();
    let alice_again = leg_for(&engine, second, &alice);
    let carol_leg = leg_for(&engine, second, &carol);
    let mut reused = [alice_again.local_rtp.port(), carol_leg.local_rtp.port()];
    reused.sort_unstable();
    assert_eq!(reused, [42400, 42402], "the second call reuses the pooled ports");
    assert_eq!(alice_again.local_rtp, alice_leg.local_rtp);

    let fresh = alice.send_next(alice_again.local_rtp, b"second call");
    let got = carol.receive(2, Duration::from_millis(500));
    assert_eq!(got, vec![fresh], "only the new call's packet reaches carol");
    assert!(
        bob.drain(Duration::from_millis(100)).is_empty(),
        "bob left with the first call"
    );
    let totals = engine.stats(false).unwrap()[0].totals;
    assert_eq!(totals.drops(DropCause::IdlePort), 2 * STALE, "stale datagrams counted");
    let leg = engine.leg_stats(alice_again.id).unwrap();
    assert_eq!(leg.counters.rtp_in_packets, 1, "the new leg saw only its own packet");
}

/// Leg pool: adding a leg on a pooled port and giving it a new description wake the worker
/// for nothing (its sockets are already watched); the first packet after them wakes it, and it
/// applies both before relaying that packet. No settling time anywhere.
#[test]
fn leg_pool_legs_and_updates_apply_before_the_next_packet_without_a_wake_up() {
    let mut config = media_config(42440, 42443);
    config.workers = 1;
    config.leg_pool_prebind = 2;
    config.port_quarantine = Duration::ZERO;
    config.rtcp_interval = Duration::from_secs(60); // no report timers in the way
    let engine = floorcast::io::Engine::start(&config, "nowake").unwrap();
    let before = engine.stats(false).unwrap()[0].wakeups;
    let mut alice = Terminal::new(0xa1);
    let bob = Terminal::new(0xb0);
    let spec = |remote| LegSpec {
        remote,
        rtcp_mux: true,
        ..LegSpec::default()
    };
    for round in 0..20u8 {
        let bridge = engine.create_bridge(BridgeKind::Relay).unwrap();
        let alice_leg = engine.add_leg(bridge, spec(Some(alice.address()))).unwrap();
        // Bob's address is known only later (his answer): the leg is updated.
        let bob_leg = engine.add_leg(bridge, spec(None)).unwrap();
        engine.update_leg(bob_leg.id, spec(Some(bob.address()))).unwrap();
        let sent = alice.send_next(alice_leg.local_rtp, &[round; 20]);
        assert_eq!(bob.receive(1, WAIT), vec![sent], "round {round}");
        engine.remove_bridge(bridge).unwrap();
    }
    // Each round woke the worker for its packet (and perhaps a timer), not for its commands.
    let wakeups = engine.stats(false).unwrap()[0].wakeups - before;
    // (Waking for every add and update, it was about twice that.)
    assert!(wakeups <= 20 + 10, "{wakeups} wake-ups for 20 rounds");
}

/// Leg pool across workers: when every port of the range is bound, a worker without an idle
/// port takes one over from another worker, and media flows on it.
#[test]
fn leg_pool_takes_an_idle_port_over_from_another_worker() {
    let mut config = media_config(42410, 42413); // two pairs, prebound: one per worker
    config.workers = 2;
    config.leg_pool_prebind = 2;
    config.port_quarantine = Duration::ZERO;
    let engine = floorcast::io::Engine::start(&config, "pool").unwrap();
    assert_eq!(engine.ports_pooled(), 2);
    for round in 0..3u8 {
        let mut alice = Terminal::new(1);
        let bob = Terminal::new(2);
        let bridge = engine.create_bridge(BridgeKind::Relay).unwrap();
        let leg = leg_for(&engine, bridge, &alice);
        leg_for(&engine, bridge, &bob);
        settle();
        let sent = alice.send_next(leg.local_rtp, &[round; 20]);
        assert_eq!(bob.receive(1, WAIT), vec![sent], "round {round}");
        engine.remove_bridge(bridge).unwrap();
    }
    assert_eq!(engine.ports_pooled(), 2);
    engine.stats(false).unwrap();
    assert_eq!(udp_sockets_in(42410..=42413), 4);
}

/// Legs taken and given back many times leave no socket behind: with the pool the sockets
/// are the pool's (bounded by the range), without it every one is closed; after shutdown
/// nothing in the range is bound.
#[test]
fn leg_pool_legs_freed_and_taken_again_leak_no_sockets() {
    for pool in [true, false] {
        let mut config = media_config(42420, 42439);
        config.leg_pool = pool;
        config.leg_pool_prebind = 2;
        config.port_quarantine = Duration::ZERO;
        let engine = floorcast::io::Engine::start(&config, "leak").unwrap();
        let fds_at_start = std::fs::read_dir("/proc/self/fd").unwrap().count();
        for _ in 0..200 {
            let bridge = engine.create_bridge(BridgeKind::Relay).unwrap();
            engine.add_leg(bridge, LegSpec::default()).unwrap();
            engine
                .add_leg(
                    bridge,
                    LegSpec {
                        rtcp_mux: true,
                        ..LegSpec::default()
                    },
                )
                .unwrap();
            engine.remove_bridge(bridge).unwrap();
            if !pool {
                // Without the pool the worker closes the sockets; let it, so the next call can
                // bind them (with the pool nothing waits).
                engine.stats(false).unwrap();
            }
        }
        engine.stats(false).unwrap(); // every command before this one is applied
        let bound = udp_sockets_in(42420..=42439);
        if pool {
            assert!(
                bound <= 2 * 4,
                "pool of at most 4 pairs (2 prebound, 2 per call): {bound}"
            );
        } else {
            assert_eq!(bound, 0, "every leg socket closed");
        }
        let fds = std::fs::read_dir("/proc/self/fd").unwrap().count();
        eprintln!("pool {pool}: {bound} sockets bound, fds {fds_at_start} -> {fds}");
        engine.shutdown();
        assert_eq!(udp_sockets_in(42420..=42439), 0, "shutdown closes every pooled socket");
    }
}
