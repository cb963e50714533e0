//! Hostile input, resource exhaustion, overload and recovery of the user plane.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use floorcast::io::EngineError;
use floorcast::media::api::{BridgeKind, LegSpec};
use floorcast::media::stats::DropCause;

const WAIT: Duration = Duration::from_secs(2);

/// Malformed RTP and RTCP of every kind, flooded at a group bridge and a relay, are dropped and
/// counted; a concurrent healthy call carries on untouched and nothing malformed is forwarded.
#[test]
fn f_up_06_malformed_flood_leaves_healthy_call_intact() {
    let engine = engine(43000, 43099);
    // The healthy call.
    let relay = engine.create_bridge(BridgeKind::Relay).unwrap();
    let mut alice = Terminal::new(1);
    let bob = Terminal::new(2);
    let leg_alice = leg_for(&engine, relay, &alice);
    leg_for(&engine, relay, &bob);
    // The victim: a group whose holder sends garbage, and a relay whose far end gets nothing.
    let group = group(&engine);
    let attacker = Terminal::new(3);
    let listener = Terminal::new(4);
    let attacker_leg = leg_for(&engine, group, &attacker);
    leg_for(&engine, group, &listener);
    let relay2 = engine.create_bridge(BridgeKind::Relay).unwrap();
    let attacker2_leg = leg_for(&engine, relay2, &attacker);
    settle();
    engine.set_source(group, Some(attacker_leg.id)).unwrap();

    let valid = rtp_packet(3, 10, 1000, 0, false, &[0u8; 20]);
    let mut bad_rtp: Vec<Vec<u8>> = vec![
        vec![],
        vec![0x80],
        vec![0x80; 11],
        {
            let mut packet = valid.clone();
            packet[0] = 0x40; // version 1
            packet
        },
        {
            let mut packet = valid.clone();
            packet[0] = 0x8f; // 15 CSRCs that aren't there
            packet
        },
        {
            let mut packet = valid[..12].to_vec();
            packet[0] = 0x90; // extension header missing
            packet
        },
        {
            let mut packet = valid[..12].to_vec();
            packet[0] = 0x90;
            packet.extend_from_slice(&[0xbe, 0xde, 0x00, 0x09]); // extension longer than packet
            packet
        },
        {
            let mut packet = valid.clone();
            packet[0] = 0xa0; // padding: last byte says 0
            *packet.last_mut().unwrap() = 0;
            packet
        },
        {
            let mut packet = valid.clone();
            packet[0] = 0xa0; // padding longer than the payload
            *packet.last_mut().unwrap() = 200;
            packet
        },
    ];
    let bad_rtcp: Vec<Vec<u8>> = vec![
        vec![0x80, 200, 0, 1],                          // SR with a length beyond the datagram
        vec![0x81, 201, 0, 7, 0, 0, 0, 1],              // RR claiming a block that isn't there
        vec![0x40, 201, 0, 1, 0, 0, 0, 1],              // version 1
        vec![0x80, 202, 0, 1, 0, 0, 0, 1],              // compound must start with SR/RR
        vec![0xa0, 201, 0, 1, 0, 0, 0, 1, 0, 0, 0, 99], // padding lie
    ];
    // RTCP (mux-style) on the RTP port must not pass as RTP either.
    bad_rtp.extend(bad_rtcp.iter().cloned());

    let started = Instant::now();
    let mut healthy_sent = Vec::new();
    let mut round = 0u32;
    while round < 200 && started.elapsed() < Duration::from_secs(5) {
        for packet in &bad_rtp {
            attacker.rtp.send_to(packet, attacker_leg.local_rtp).unwrap();
            attacker.rtp.send_to(packet, attacker2_leg.local_rtp).unwrap();
        }
        for packet in &bad_rtcp {
            attacker.rtcp.send_to(packet, attacker_leg.local_rtcp).unwrap();
            attacker.rtcp.send_to(packet, attacker2_leg.local_rtcp).unwrap();
        }
        if round % 10 == 0 {
            std::thread::sleep(Duration::from_millis(1));
            healthy_sent.push(alice.send_next(leg_alice.local_rtp, &round.to_be_bytes()));
        }
        round += 1;
    }
    let received = bob.receive(healthy_sent.len(), WAIT);
    assert_eq!(received, healthy_sent, "the healthy call is untouched");
    assert!(
        listener.drain(Duration::from_millis(200)).is_empty(),
        "nothing malformed forwarded"
    );

    // Every datagram is accounted for: dropped as malformed, or (when the flood outran the
    // worker) dropped by the kernel on a full queue and counted from SO_RXQ_OVFL.
    let rounds = u64::from(round);
    for leg in [attacker_leg.id, attacker2_leg.id] {
        let counters = engine.leg_stats(leg).unwrap().counters;
        let malformed_rtp = counters.drops(DropCause::MalformedRtp);
        let malformed_rtcp = counters.drops(DropCause::MalformedRtcp);
        let overflow = counters.drops(DropCause::KernelOverflow);
        assert!(malformed_rtp <= 9 * rounds && malformed_rtp > 0, "{counters:?}");
        // RTCP: 5 on the RTCP port and 5 muxed on the RTP port per round.
        assert!(malformed_rtcp <= 10 * rounds && malformed_rtcp > 0, "{counters:?}");
        assert_eq!(malformed_rtp + malformed_rtcp + overflow, 19 * rounds, "{counters:?}");
        assert_eq!(counters.rtp_out_packets + counters.rtcp_out_packets, 0);
        assert_eq!(counters.total_drops(), 19 * rounds, "no other cause: {counters:?}");
    }
    let healthy = engine.leg_stats(leg_alice.id).unwrap().counters;
    assert_eq!(healthy.total_drops(), 0);
}

/// Ports run out cleanly (an error for the caller, not a panic), and freed ports come back
/// after their quarantine, not before. (The exact ports asserted here lie below Linux's
/// ephemeral range, 32768–60999, so that no socket bound to port 0 elsewhere can hold one.)
#[test]
fn port_exhaustion_and_release() {
    let mut config = media_config(23200, 23207); // four port pairs
    config.port_quarantine = Duration::from_millis(300);
    let engine = floorcast::io::Engine::start(&config, "ports").unwrap();
    let bridge = engine.create_bridge(BridgeKind::Group(Default::default())).unwrap();
    let legs: Vec<_> = (0..4)
        .map(|_| engine.add_leg(bridge, LegSpec::default()).unwrap())
        .collect();
    assert!(matches!(
        engine.add_leg(bridge, LegSpec::default()),
        Err(EngineError::PortsExhausted)
    ));
    let ports: Vec<u16> = legs.iter().map(|leg| leg.local_rtp.port()).collect();
    assert_eq!(ports, vec![23200, 23202, 23204, 23206]);
    assert!(legs.iter().all(|leg| leg.local_rtcp.port() == leg.local_rtp.port() + 1));

    engine.remove_leg(legs[1].id).unwrap();
    assert!(matches!(
        engine.add_leg(bridge, LegSpec::default()),
        Err(EngineError::PortsExhausted)
    ));
    std::thread::sleep(Duration::from_millis(350));
    let again = engine.add_leg(bridge, LegSpec::default()).unwrap();
    assert_eq!(again.local_rtp.port(), 23202);

    // Removing the bridge frees every leg's ports.
    engine.remove_bridge(bridge).unwrap();
    std::thread::sleep(Duration::from_millis(350));
    assert_eq!(engine.ports_available(), 4);
    let bridge = engine.create_bridge(BridgeKind::Relay).unwrap();
    engine
        .add_leg(
            bridge,
            LegSpec {
                rtcp_mux: true,
                ..LegSpec::default()
            },
        )
        .unwrap();
    engine.add_leg(bridge, LegSpec::default()).unwrap();
    assert!(matches!(
        engine.add_leg(bridge, LegSpec::default()),
        Err(EngineError::RelayFull(_))
    ));
}

/// A port taken by another program is skipped, not fatal.
#[test]
fn port_in_use_elsewhere_is_skipped() {
    let squatter = std::net::UdpSocket::bind("127.0.0.1:23301").unwrap(); // RTCP port of pair 23300
    let engine = engine(23300, 23309);
    let bridge = engine.create_bridge(BridgeKind::Relay).unwrap();
    let leg = engine.add_leg(bridge, LegSpec::default()).unwrap();
    assert_eq!(leg.local_rtp.port(), 23302);
    drop(squatter);
}

/// Overload and recovery: several times the engine's capacity is offered for a couple of
/// seconds on many legs; excess is dropped early and counted; then at a normal rate every leg
/// forwards again at once, none stuck.
#[test]
fn overload_then_recovery_every_leg_forwards() {
    let mut config = media_config(23400, 23599);
    config.socket_rcvbuf = 65_536; // small queues: overload shows as kernel drops quickly
    let engine = floorcast::io::Engine::start(&config, "overload").unwrap();
    const CALLS: usize = 20;
    let mut calls = Vec::new();
    for index in 0..CALLS {
        let bridge = engine.create_bridge(BridgeKind::Relay).unwrap();
        let sender = Terminal::new(1000 + index as u32);
        let receiver = Terminal::new(2000 + index as u32);
        let leg = leg_for(&engine, bridge, &sender);
        leg_for(&engine, bridge, &receiver);
        calls.push((sender, receiver, leg));
    }
    settle();

    // Overload: four blasting threads, bounded in time and count.
    let targets: Vec<_> = calls
        .iter()
        .map(|(sender, _, leg)| (sender.rtp.try_clone().unwrap(), leg.local_rtp))
        .collect();
    let targets = std::sync::Arc::new(targets);
    let blasters: Vec<_> = (0..4)
        .map(|thread| {
            let targets = targets.clone();
            std::thread::spawn(move || {
                let packet = rtp_packet(7, 1, 1, 0, false, &[0u8; 160]);
                let started = Instant::now();
                let mut sent = 0u64;
                while started.elapsed() < Duration::from_secs(2) && sent < 5_000_000 {
                    for (index, (socket, to)) in targets.iter().enumerate() {
                        if index % 4 == thread {
                            let _ = socket.send_to(&packet, to);
                            sent += 1;
                        }
                    }
                }
                sent
            })
        })
        .collect();
    let offered: u64 = blasters.into_iter().map(|handle| handle.join().unwrap()).sum();
    // Let the queues drain, then discard what reached the receivers.
    std::thread::sleep(Duration::from_millis(300));
    for (_, receiver, _) in &calls {
        receiver.rtp.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
        while receiver.rtp.recv(&mut [0u8; 2048]).is_ok() {}
        receiver.rtp.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    }

    // Recovery: a normal rate on every leg; every single packet must arrive.
    for round in 0..10u8 {
        for (sender, _, leg) in calls.iter_mut() {
            sender.send_next(leg.local_rtp, &[round; 160]);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for (index, (_, receiver, _)) in calls.iter().enumerate() {
        let got = receiver.receive(10, WAIT);
        assert_eq!(got.len(), 10, "call {index} forwards again after the overload");
        for (round, packet) in got.iter().enumerate() {
            assert_eq!(parse_rtp(packet).payload[0], round as u8);
        }
    }
    let stats = engine.stats(false).unwrap();
    let mut totals = floorcast::media::stats::Counters::default();
    for worker in &stats {
        totals.add(&worker.totals);
    }
    eprintln!(
        "offered {offered} packets in 2 s; forwarded {}; kernel overflow drops counted {}; send failures {}",
        totals.rtp_out_packets,
        totals.drops(DropCause::KernelOverflow),
        totals.drops(DropCause::SendFailed)
    );
    assert!(totals.rtp_in_packets > 0);
}
