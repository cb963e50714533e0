//! Layer-level tests: matching, CANCEL, caps, and whole flows over the simulated network.

use std::time::Instant;

use bytes::Bytes;
use proptest::prelude::*;

use super::testkit::{key, ms, wire, Network, Script, Sim, CLIENT, SERVER};
use super::{
    CancelMatch, Input, KeyError, LayerConfig, Method, Output, Role, TransactionError, TransactionKey,
    TransactionLayer, TransactionUserEvent, MAGIC_COOKIE,
};

fn options() -> Method {
    Method::Other("OPTIONS".into())
}

fn layer() -> TransactionLayer<u8> {
    TransactionLayer::new(LayerConfig::default())
}

fn request(key: &TransactionKey, method: Method, reliable: bool) -> Input<u8> {
    Input::Request {
        key: key.clone(),
        bytes: Bytes::from(method.as_str().to_owned()),
        method,
        reply_to: 1,
        reliable,
    }
}

fn drain(layer: &mut TransactionLayer<u8>) -> Vec<Output<u8>> {
    std::iter::from_fn(|| layer.poll_output()).collect()
}

fn tu_events(outputs: &[Output<u8>]) -> Vec<&TransactionUserEvent> {
    outputs
        .iter()
        .filter_map(|output| match output {
            Output::ToTransactionUser(event) => Some(event),
            _ => None,
        })
        .collect()
}

fn count_terminated(sim: &Sim, node: usize, role: Role, key: &TransactionKey) -> usize {
    sim.nodes[node]
        .events()
        .filter(|(_, event)| matches!(event, TransactionUserEvent::Terminated { role: r, key: k } if *r == role && k == key))
        .count()
}

// ---- Keys ----

#[test]
fn keys_follow_rfc3261_matching() {
    let invite = TransactionKey::new("z9hG4bKa", "Host.Example:5060", Method::Invite).expect("key");
    let ack = TransactionKey::new("z9hG4bKa", "host.example:5060", Method::Ack).expect("key");
    let cancel = TransactionKey::new("z9hG4bKa", "host.example:5060", Method::Cancel).expect("key");
    assert_eq!(invite, ack, "ACK for a non-2xx matches its INVITE (§17.2.3)");
    assert_ne!(invite, cancel, "CANCEL has its own transaction");
    assert_eq!(cancel.with_method(Method::Invite), invite);
    assert_ne!(
        invite,
        TransactionKey::new("z9hG4bKb", "host.example:5060", Method::Invite).expect("key")
    );
    assert_ne!(
        invite,
        TransactionKey::new("z9hG4bKa", "other.example:5060", Method::Invite).expect("key")
    );
    assert_eq!(
        TransactionKey::new("a1b2", "host", Method::Invite),
        Err(KeyError::MissingMagicCookie)
    );
    assert_eq!(
        TransactionKey::new(MAGIC_COOKIE, "", Method::Invite),
        Err(KeyError::EmptySentBy)
    );
    assert_eq!(invite.to_string(), "z9hG4bKa/host.example:5060/INVITE");
}

#[test]
fn rfc2543_keys_match_invite_ack_and_cancel() {
    let invite = TransactionKey::rfc2543("call-1", "from-tag", 7, "old.example", Method::Invite);
    let ack = TransactionKey::rfc2543("call-1", "from-tag", 7, "old.example", Method::Ack);
    let cancel = TransactionKey::rfc2543("call-1", "from-tag", 7, "old.example", Method::Cancel);
    assert!(!invite.is_rfc3261());
    assert_eq!(invite, ack);
    assert_ne!(invite, cancel);
    assert_ne!(
        invite,
        TransactionKey::rfc2543("call-1", "from-tag", 8, "old.example", Method::Invite)
    );

    let now = Instant::now();
    let mut layer = layer();
    layer
        .handle_input(now, request(&invite, Method::Invite, false))
        .expect("new");
    layer
        .respond(now, &invite, 486, Bytes::from_static(b"486"))
        .expect("respond");
    assert_eq!(layer.match_cancel(&cancel), CancelMatch::AlreadyFinal(invite.clone()));
    drain(&mut layer);
    layer.handle_input(now, request(&ack, Method::Ack, false)).expect("ACK");
    assert!(
        drain(&mut layer).is_empty(),
        "ACK absorbed by the INVITE server transaction"
    );
    assert_eq!(layer.stats().matched_requests, 1);
}

// ---- Matching and absorption ----

#[test]
fn server_absorbs_retransmissions_and_the_tu_sees_the_request_once() {
    let network = Network {
        duplicate_per_mille: 1000,
        ..Network::perfect_udp()
    };
    let script = Script {
        final_status: 486,
        final_delay: ms(700),
        provisional: Some((180, ms(50))),
        ..Script::default()
    };
    let mut sim = Sim::new(1, network, LayerConfig::default(), script);
    let invite = sim.send_request(Method::Invite, "z9hG4bKdup");
    let options_key = sim.send_request(options(), "z9hG4bKdup2");
    sim.run(10_000);

    let server = &sim.nodes[SERVER];
    assert_eq!(server.new_requests(&invite), 1);
    assert_eq!(server.new_requests(&options_key), 1);
    // Each request copy beyond the first, and each ACK copy, was matched to its transaction.
    assert!(server.layer.stats().matched_requests >= 4);
    let client = &sim.nodes[CLIENT];
    assert_eq!(client.finals_received.get(&invite), Some(&486));
    assert_eq!(client.finals_received.get(&options_key), Some(&486));
    // The client TU saw exactly one final per transaction despite duplicated responses.
    let finals = client
        .events()
        .filter(|(_, event)| matches!(event, TransactionUserEvent::Response { status: 486, .. }))
        .count();
    assert_eq!(finals, 2);
    assert!(sim.nodes.iter().all(|node| node.layer.is_empty()));
}

#[test]
fn server_resends_its_last_response_on_retransmission() {
    for method in [Method::Invite, options()] {
        let now = Instant::now();
        let mut layer = layer();
        let key = key("z9hG4bKresend", method.clone());
        layer
            .handle_input(now, request(&key, method.clone(), false))
            .expect("new");
        layer
            .handle_input(now, request(&key, method.clone(), false))
            .expect("retransmission");
        let outputs = drain(&mut layer);
        assert_eq!(outputs.len(), 1, "{method}: NewRequest only; nothing to resend yet");
        layer
            .respond(now, &key, 180, Bytes::from_static(b"180"))
            .expect("provisional");
        layer
            .handle_input(now, request(&key, method.clone(), false))
            .expect("retransmission");
        layer
            .respond(now, &key, 486, Bytes::from_static(b"486"))
            .expect("final");
        layer
            .handle_input(now, request(&key, method.clone(), false))
            .expect("retransmission");
        let sent: Vec<Bytes> = drain(&mut layer)
            .into_iter()
            .map(|output| match output {
                Output::Transmit { bytes, .. } => bytes,
                other => panic!("{method}: unexpected {other:?}"),
            })
            .collect();
        assert_eq!(
            sent,
            ["180", "180", "486", "486"].map(|text| Bytes::from_static(text.as_bytes())),
            "{method}"
        );
    }
}

#[test]
fn ack_for_non_2xx_is_built_by_the_client_transaction_and_absorbed_by_the_server() {
    let script = Script {
        final_status: 486,
        ..Script::default()
    };
    let mut sim = Sim::new(2, Network::perfect_udp(), LayerConfig::default(), script);
    let invite = sim.send_request(Method::Invite, "z9hG4bKack");
    sim.run_until(sim.start + ms(100));

    let client = &sim.nodes[CLIENT];
    assert_eq!(
        client.sent_times("ACK z9hG4bKack "),
        [ms(20)],
        "ACK on the INVITE's branch, once"
    );
    assert_eq!(client.finals_received.get(&invite), Some(&486));
    let server = &sim.nodes[SERVER];
    assert!(
        server
            .events()
            .all(|(_, event)| !matches!(event, TransactionUserEvent::Ack { .. })),
        "the ACK for a non-2xx never reaches the TU"
    );
    assert_eq!(
        server.sent_times("SIP/2.0 486"),
        [ms(10)],
        "no Timer G retransmission after the ACK"
    );
    assert!(
        server.layer.contains(Role::Server, &invite),
        "Confirmed, waiting Timer I"
    );

    sim.run(10_000);
    // Server: ACK at 30 ms + Timer I (T4 = 5 s). Client: 486 at 20 ms + Timer D (32 s).
    let terminated_at = |node: usize, role: Role| {
        sim.nodes[node]
            .events()
            .find(|(_, event)| matches!(event, TransactionUserEvent::Terminated { role: r, .. } if *r == role))
            .map(|(at, _)| at)
    };
    assert_eq!(terminated_at(SERVER, Role::Server), Some(ms(5030)));
    assert_eq!(terminated_at(CLIENT, Role::Client), Some(ms(32_020)));
}

#[test]
fn invite_2xx_rfc6026_flow() {
    let script = Script {
        provisional: Some((180, ms(500))),
        final_status: 200,
        final_delay: ms(1000),
        ..Script::default()
    };
    let mut sim = Sim::new(3, Network::perfect_udp(), LayerConfig::default(), script);
    let invite = sim.send_request(Method::Invite, "z9hG4bKok");
    sim.run(10_000);

    let client = &sim.nodes[CLIENT];
    let statuses: Vec<u16> = client
        .events()
        .filter_map(|(_, event)| match event {
            TransactionUserEvent::Response { status, .. } => Some(*status),
            _ => None,
        })
        .collect();
    assert_eq!(statuses, [100, 180, 200], "100 at 200 ms (TU slow), 180, then the 2xx");
    assert_eq!(
        client.sent_times("ACK"),
        [ms(1020)],
        "the TU ACKs the 2xx on a new branch"
    );
    assert_eq!(client.sent_times("INVITE"), [ms(0)]);
    // Client Accepted until Timer M: 2xx at 1010 ms + 32 s.
    let (client_end, _) = client
        .events()
        .find(|(_, event)| matches!(event, TransactionUserEvent::Terminated { .. }))
        .expect("terminated");
    assert_eq!(client_end, ms(33_020));

    let server = &sim.nodes[SERVER];
    assert_eq!(
        server.sent_times("SIP/2.0 200"),
        [ms(1010)],
        "ACK arrived before the TU retransmitted"
    );
    assert_eq!(server.sent_times("SIP/2.0 100"), [ms(210)]);
    assert!(server
        .events()
        .any(|(_, event)| matches!(event, TransactionUserEvent::Ack { .. })));
    assert_eq!(count_terminated(&sim, SERVER, Role::Server, &invite), 1);
    assert!(sim.nodes.iter().all(|node| node.layer.is_empty()));
}

#[test]
fn two_xx_retransmissions_reach_the_tu_in_accepted() {
    // Drop nothing, but delay the ACK path enough that the UAS core retransmits its 2xx once.
    let network = Network {
        delay_min: ms(300),
        delay_max: ms(300),
        ..Network::perfect_udp()
    };
    let mut sim = Sim::new(4, network, LayerConfig::default(), Script::default());
    let invite = sim.send_request(Method::Invite, "z9hG4bKre");
    sim.run(10_000);
    let client = &sim.nodes[CLIENT];
    let successes = client
        .events()
        .filter(|(_, event)| matches!(event, TransactionUserEvent::Response { status: 200, key, .. } if *key == invite))
        .count();
    // 2xx at 300 ms, retransmitted at 800 ms (ACK reaches the server only at 900 ms).
    assert_eq!(successes, 2);
    assert_eq!(client.sent_times("ACK").len(), 2, "one ACK per 2xx, by the TU");
    assert!(sim.nodes.iter().all(|node| node.layer.is_empty()));
}

#[test]
fn trying_goes_out_after_200_ms_only_when_the_tu_is_slow() {
    for (final_delay, expected) in [(ms(150), vec![]), (ms(1000), vec![ms(210)])] {
        let script = Script {
            final_status: 486,
            final_delay,
            ..Script::default()
        };
        let mut sim = Sim::new(5, Network::perfect_udp(), LayerConfig::default(), script);
        sim.send_request(Method::Invite, "z9hG4bKtry");
        sim.run(10_000);
        assert_eq!(sim.nodes[SERVER].sent_times("SIP/2.0 100"), expected);
        // The 100 quenches the client's INVITE retransmissions before Timer A's first firing.
        assert_eq!(sim.nodes[CLIENT].sent_times("INVITE"), [ms(0)]);
    }
}

// ---- Retransmission schedules and timeouts over the simulated network ----

#[test]
fn black_hole_gives_exact_retransmission_schedules_and_timeouts() {
    let network = Network {
        drop_per_mille: 1000,
        ..Network::perfect_udp()
    };
    let mut sim = Sim::new(6, network, LayerConfig::default(), Script::default());
    let invite = sim.send_request(Method::Invite, "z9hG4bKhole1");
    let options_key = sim.send_request(options(), "z9hG4bKhole2");
    sim.run(10_000);

    let client = &sim.nodes[CLIENT];
    let times = |ms_list: &[u64]| ms_list.iter().map(|&value| ms(value)).collect::<Vec<_>>();
    assert_eq!(
        client.sent_times("INVITE"),
        times(&[0, 500, 1500, 3500, 7500, 15_500, 31_500]),
        "Timer A: T1 doubling"
    );
    assert_eq!(
        client.sent_times("OPTIONS"),
        times(&[0, 500, 1500, 3500, 7500, 11_500, 15_500, 19_500, 23_500, 27_500, 31_500]),
        "Timer E: T1 doubling, capped at T2"
    );
    for key in [&invite, &options_key] {
        let timeout = client
            .events()
            .find(
                |(_, event)| matches!(event, TransactionUserEvent::Timeout { role: Role::Client, key: k } if k == key),
            )
            .map(|(at, _)| at);
        assert_eq!(timeout, Some(ms(32_000)), "Timer B / F at 64·T1 for {key}");
        assert_eq!(count_terminated(&sim, CLIENT, Role::Client, key), 1);
    }
    assert!(client.layer.is_empty());
}

#[test]
fn reliable_transport_sends_everything_once() {
    let script = Script {
        final_status: 486,
        ..Script::default()
    };
    let mut sim = Sim::new(7, Network::perfect_reliable(), LayerConfig::default(), script);
    let invite = sim.send_request(Method::Invite, "z9hG4bKtcp1");
    let options_key = sim.send_request(options(), "z9hG4bKtcp2");
    sim.run(10_000);
    let client = &sim.nodes[CLIENT];
    let server = &sim.nodes[SERVER];
    assert_eq!(client.sent_times("INVITE"), [ms(0)]);
    assert_eq!(client.sent_times("OPTIONS"), [ms(0)]);
    assert_eq!(client.sent_times("ACK"), [ms(20)]);
    assert_eq!(server.sent_times("SIP/2.0 486").len(), 2);
    assert_eq!(client.finals_received.get(&invite), Some(&486));
    assert_eq!(client.finals_received.get(&options_key), Some(&486));
    // Timers D, I, J, K are zero: everything is gone once the last message is in.
    assert_eq!(sim.elapsed(), ms(30));
    assert!(sim.nodes.iter().all(|node| node.layer.is_empty()));
}

#[test]
fn server_times_out_with_timer_h_when_the_ack_never_comes() {
    let now = Instant::now();
    let mut layer = layer();
    let invite = key("z9hG4bKh", Method::Invite);
    layer
        .handle_input(now, request(&invite, Method::Invite, false))
        .expect("new");
    layer
        .respond(now, &invite, 480, Bytes::from_static(b"480"))
        .expect("respond");
    drain(&mut layer);
    let mut timeout_at = None;
    while let Some(at) = layer.poll_timeout() {
        layer.handle_timeout(at);
        for output in drain(&mut layer) {
            if let Output::ToTransactionUser(TransactionUserEvent::Timeout { role, .. }) = output {
                assert_eq!(role, Role::Server);
                timeout_at = Some(at - now);
            }
        }
    }
    assert_eq!(timeout_at, Some(ms(32_000)));
    assert!(layer.is_empty());
}

// ---- CANCEL ----

#[test]
fn cancel_flow_answers_200_and_487() {
    let script = Script {
        provisional: Some((180, ms(0))),
        never_answer: true,
        cancel_after: ms(1000),
        ..Script::default()
    };
    let mut sim = Sim::new(8, Network::perfect_udp(), LayerConfig::default(), script);
    let invite = sim.send_request(Method::Invite, "z9hG4bKcancel");
    sim.run(10_000);
    let cancel = invite.with_method(Method::Cancel);
    let client = &sim.nodes[CLIENT];
    assert_eq!(client.sent_times("CANCEL"), [ms(1020)], "1 s after the 180 arrived");
    assert_eq!(client.finals_received.get(&cancel), Some(&200));
    assert_eq!(client.finals_received.get(&invite), Some(&487));
    assert_eq!(client.sent_times("ACK z9hG4bKcancel "), [ms(1040)], "the 487 is ACKed");
    let server = &sim.nodes[SERVER];
    assert_eq!(server.finals_sent.get(&invite), Some(&487));
    assert_eq!(server.new_requests(&cancel), 1);
    assert!(sim.nodes.iter().all(|node| node.layer.is_empty()));
}

#[test]
fn match_cancel_reports_pending_final_or_none() {
    let now = Instant::now();
    let mut layer = layer();
    let invite = key("z9hG4bKm", Method::Invite);
    let cancel = invite.with_method(Method::Cancel);
    assert_eq!(layer.match_cancel(&cancel), CancelMatch::NoMatch);
    layer
        .handle_input(now, request(&invite, Method::Invite, false))
        .expect("INVITE");
    layer
        .handle_input(now, request(&cancel, Method::Cancel, false))
        .expect("CANCEL");
    let outputs = drain(&mut layer);
    assert!(matches!(
        tu_events(&outputs)[..],
        [
            TransactionUserEvent::NewRequest {
                method: Method::Invite,
                ..
            },
            TransactionUserEvent::NewRequest {
                method: Method::Cancel,
                ..
            }
        ]
    ));
    assert_eq!(layer.match_cancel(&cancel), CancelMatch::Pending(invite.clone()));
    layer.respond(now, &cancel, 200, Bytes::new()).expect("CANCEL 200");
    layer.respond(now, &invite, 487, Bytes::new()).expect("INVITE 487");
    assert_eq!(layer.match_cancel(&cancel), CancelMatch::AlreadyFinal(invite.clone()));
    // A CANCEL on another branch matches nothing.
    assert_eq!(
        layer.match_cancel(&key("z9hG4bKother", Method::Cancel)),
        CancelMatch::NoMatch
    );
}

#[test]
fn send_cancel_follows_section_9_1() {
    let now = Instant::now();
    let mut layer = layer();
    let invite = key("z9hG4bKc", Method::Invite);
    layer
        .send_request(
            now,
            invite.clone(),
            Method::Invite,
            Bytes::from_static(b"INVITE"),
            5,
            false,
        )
        .expect("INVITE");
    assert_eq!(
        layer.send_cancel(now, &invite, Bytes::new()),
        Err(TransactionError::WrongState { state: "Calling" }),
        "no CANCEL before a provisional"
    );
    layer
        .handle_input(
            now,
            Input::Response {
                key: invite.clone(),
                status: 180,
                bytes: Bytes::new(),
            },
        )
        .expect("180");
    drain(&mut layer);
    let cancel = layer
        .send_cancel(now + ms(1000), &invite, Bytes::from_static(b"CANCEL"))
        .expect("CANCEL after 180");
    assert_eq!(*cancel.method(), Method::Cancel);
    let outputs = drain(&mut layer);
    assert!(
        matches!(
            &outputs[..],
            [Output::Transmit {
                destination: 5,
                role: Role::Client,
                ..
            }]
        ),
        "to the INVITE's destination"
    );
    assert_eq!(
        layer.send_cancel(now, &invite, Bytes::new()),
        Err(TransactionError::DuplicateKey)
    );
    // No final response at all: the INVITE gives up 64·T1 after the CANCEL (the CANCEL itself: Timer F).
    layer.handle_timeout(now + ms(33_000));
    let outputs = drain(&mut layer);
    let timeouts = tu_events(&outputs)
        .into_iter()
        .filter(|event| matches!(event, TransactionUserEvent::Timeout { .. }))
        .count();
    assert_eq!(timeouts, 2);
    assert!(layer.is_empty());
}

// ---- Layer bookkeeping ----

#[test]
fn unmatched_ack_goes_to_the_tu_and_stray_responses_are_dropped() {
    let now = Instant::now();
    let mut layer = layer();
    let ack = key("z9hG4bK2xxack", Method::Ack);
    layer.handle_input(now, request(&ack, Method::Ack, false)).expect("ACK");
    let outputs = drain(&mut layer);
    assert!(matches!(tu_events(&outputs)[..], [TransactionUserEvent::Ack { .. }]));
    assert!(layer.is_empty(), "an ACK never creates a transaction");

    layer
        .handle_input(
            now,
            Input::Response {
                key: key("z9hG4bKstray", Method::Invite),
                status: 200,
                bytes: Bytes::new(),
            },
        )
        .expect("never refused");
    assert!(drain(&mut layer).is_empty());
    assert_eq!(layer.stats().stray_responses, 1);
}

/// The tables are sized for the cap at the start and never grow (a rehash of 10⁵ entries
/// stalls the SIP thread for milliseconds): filled to the cap with clients and servers,
/// emptied and filled again, their capacities stay what they were.
#[test]
fn tables_are_sized_for_the_cap_and_never_grow() {
    let now = Instant::now();
    let cap = 1_000;
    let mut layer = TransactionLayer::<u8>::new(LayerConfig {
        max_transactions: cap,
        ..LayerConfig::default()
    });
    let start = layer.capacities();
    assert!(start.iter().all(|&capacity| capacity >= cap), "{start:?}");
    for round in 0..2 {
        for index in 0..cap {
            let key = key(&format!("z9hG4bK{round}x{index}"), options());
            if index % 2 == 0 {
                layer.handle_input(now, request(&key, options(), true)).expect("server");
                layer.respond(now, &key, 200, Bytes::new()).expect("respond");
            } else {
                layer
                    .send_request(now, key, options(), Bytes::new(), 0, true)
                    .expect("client");
            }
        }
        assert_eq!(layer.len(), cap);
        assert_eq!(layer.capacities(), start, "round {round}");
        // Reliable transport: every transaction ends at its next timers (or its response).
        for index in (1..cap).step_by(2) {
            let key = key(&format!("z9hG4bK{round}x{index}"), options());
            layer
                .handle_input(
                    now,
                    Input::Response {
                        key,
                        status: 200,
                        bytes: Bytes::new(),
                    },
                )
                .expect("response");
        }
        layer.handle_timeout(now + std::time::Duration::from_secs(64));
        drain(&mut layer);
        assert_eq!(layer.len(), 0, "round {round}");
    }
    assert_eq!(layer.capacities(), start);
}

#[test]
fn overload_caps_live_transactions_and_frees_on_termination() {
    let now = Instant::now();
    let mut layer = TransactionLayer::<u8>::new(LayerConfig {
        max_transactions: 2,
        ..LayerConfig::default()
    });
    let first = key("z9hG4bK1", options());
    layer.handle_input(now, request(&first, options(), true)).expect("1");
    layer
        .handle_input(now, request(&key("z9hG4bK2", options()), options(), true))
        .expect("2");
    assert_eq!(
        layer.handle_input(now, request(&key("z9hG4bK3", options()), options(), true)),
        Err(TransactionError::Overloaded)
    );
    assert_eq!(
        layer.send_request(now, key("z9hG4bK4", options()), options(), Bytes::new(), 0, true),
        Err(TransactionError::Overloaded)
    );
    // Retransmissions and ACKs still get through: they create nothing.
    layer
        .handle_input(now, request(&first, options(), true))
        .expect("retransmission");
    layer
        .handle_input(now, request(&key("z9hG4bK5", Method::Ack), Method::Ack, true))
        .expect("ACK");
    assert_eq!(layer.stats().overloaded, 2);

    // Reliable: Timer J is zero, so the transaction is gone at the next timeout call, freeing a place.
    layer.respond(now, &first, 200, Bytes::new()).expect("respond");
    assert_eq!(layer.poll_timeout(), Some(now));
    layer.handle_timeout(now);
    assert_eq!(layer.len(), 1);
    layer
        .handle_input(now, request(&key("z9hG4bK3", options()), options(), true))
        .expect("room again");
}

#[test]
fn caller_mistakes_are_reported() {
    let now = Instant::now();
    let mut layer = layer();
    let invite = key("z9hG4bKx", Method::Invite);
    assert_eq!(
        layer.send_request(now, invite.clone(), Method::Ack, Bytes::new(), 0, false),
        Err(TransactionError::AckIsNotATransaction)
    );
    assert!(matches!(
        layer.send_request(now, invite.clone(), options(), Bytes::new(), 0, false),
        Err(TransactionError::MethodMismatch { .. })
    ));
    layer
        .send_request(now, invite.clone(), Method::Invite, Bytes::new(), 0, false)
        .expect("ok");
    assert_eq!(
        layer.send_request(now, invite.clone(), Method::Invite, Bytes::new(), 0, false),
        Err(TransactionError::DuplicateKey)
    );
    assert_eq!(
        layer.respond(now, &invite, 200, Bytes::new()),
        Err(TransactionError::UnknownTransaction),
        "client and server tables are separate"
    );
    assert_eq!(
        layer.send_ack(&invite, Bytes::new()),
        Err(TransactionError::WrongState { state: "Calling" })
    );
    assert!(matches!(
        layer.handle_input(now, request(&invite, options(), false)),
        Err(TransactionError::MethodMismatch { .. })
    ));
}

#[test]
fn transport_error_ends_the_right_transaction() {
    let now = Instant::now();
    let mut layer = layer();
    let shared = key("z9hG4bKloop", Method::Invite);
    // A request looping back to us with our own branch: one client and one server transaction, same key.
    layer
        .send_request(now, shared.clone(), Method::Invite, Bytes::new(), 0, false)
        .expect("client");
    layer
        .handle_input(now, request(&shared, Method::Invite, false))
        .expect("server");
    drain(&mut layer);
    layer
        .handle_input(
            now,
            Input::TransportError {
                role: Role::Server,
                key: shared.clone(),
            },
        )
        .expect("never refused");
    let outputs = drain(&mut layer);
    assert!(matches!(
        tu_events(&outputs)[..],
        [
            TransactionUserEvent::TransportError { role: Role::Server, .. },
            TransactionUserEvent::Terminated { role: Role::Server, .. }
        ]
    ));
    assert!(layer.contains(Role::Client, &shared));
    assert!(!layer.contains(Role::Server, &shared));
}

#[test]
fn spurious_and_late_timeouts_are_harmless() {
    let now = Instant::now();
    let mut layer = layer();
    let options_key = key("z9hG4bKs", options());
    layer
        .send_request(now, options_key, options(), Bytes::from_static(b"OPTIONS"), 0, false)
        .expect("ok");
    drain(&mut layer);
    for early in [0, 1, 100, 499] {
        layer.handle_timeout(now + ms(early));
        assert!(drain(&mut layer).is_empty());
    }
    // A late call (the driver overslept past two E deadlines) retransmits once and re-arms from `now`.
    layer.handle_timeout(now + ms(2000));
    let outputs = drain(&mut layer);
    assert_eq!(outputs.len(), 1);
    assert_eq!(layer.poll_timeout(), Some(now + ms(3000)));
}

#[test]
fn deadline_heap_stays_proportional_to_live_transactions() {
    let now = Instant::now();
    let mut layer = layer();
    for round in 0..2000u64 {
        let key = key(&format!("z9hG4bKh{round}"), Method::Invite);
        layer
            .handle_input(now, request(&key, Method::Invite, false))
            .expect("new");
        // Trying timer, then H/G: the deadline moves, leaving a stale heap entry each time.
        layer.respond(now, &key, 486, Bytes::new()).expect("final");
        layer.handle_input(now, request(&key, Method::Ack, false)).expect("ACK");
    }
    drain(&mut layer);
    assert_eq!(layer.len(), 2000);
    assert!(layer.heap_len() <= 2 * layer.len() + 64);
    layer.handle_timeout(now + ms(5000));
    assert!(layer.is_empty());
}

#[test]
fn many_concurrent_transactions_over_a_bad_network_settle_to_zero() {
    let network = Network {
        reliable: false,
        drop_per_mille: 300,
        duplicate_per_mille: 200,
        delay_min: ms(5),
        delay_max: ms(250),
    };
    let script = Script {
        provisional: Some((180, ms(300))),
        final_status: 486,
        final_delay: ms(900),
        ..Script::default()
    };
    let mut sim = Sim::new(42, network, LayerConfig::default(), script);
    let keys: Vec<TransactionKey> = (0..40)
        .map(|index| {
            let method = if index % 2 == 0 { Method::Invite } else { options() };
            sim.send_request(method, &format!("z9hG4bKmany{index}"))
        })
        .collect();
    sim.run(200_000);
    for key in &keys {
        let client = &sim.nodes[CLIENT];
        let server = &sim.nodes[SERVER];
        match client.finals_received.get(key) {
            Some(status) => assert_eq!(server.finals_sent.get(key), Some(status)),
            None => assert!(client.timeouts.contains(key)),
        }
        assert!(server.new_requests(key) <= 1);
    }
    assert!(sim
        .nodes
        .iter()
        .all(|node| node.layer.is_empty() && node.layer.poll_timeout().is_none()));
}

// ---- Property: any loss/duplication/delay pattern ends in agreement and an empty layer ----

/// One randomized scenario.
#[derive(Debug, Clone)]
struct Scenario {
    seed: u64,
    invite: bool,
    reliable: bool,
    drop_per_mille: u32,
    duplicate_per_mille: u32,
    delay_max: u64,
    final_status: u16,
    provisional_delay: Option<u64>,
    final_delay: u64,
    answer_trying: bool,
}

fn scenarios() -> impl Strategy<Value = Scenario> {
    (
        any::<u64>(),
        any::<bool>(),
        prop::bool::weighted(0.25),
        0u32..600,
        0u32..500,
        0u64..400,
        prop::sample::select(vec![200u16, 202, 302, 404, 486, 500, 603]),
        prop::option::of(0u64..3000),
        0u64..6000,
        any::<bool>(),
    )
        .prop_map(
            |(
                seed,
                invite,
                reliable,
                drop_per_mille,
                duplicate_per_mille,
                delay_max,
                final_status,
                provisional_delay,
                final_delay,
                answer_trying,
            )| Scenario {
                seed,
                invite,
                reliable,
                drop_per_mille,
                duplicate_per_mille,
                delay_max,
                final_status,
                provisional_delay,
                final_delay,
                answer_trying,
            },
        )
}

// 256 cases by default; PROPTEST_CASES=N raises it.
proptest! {
    #[test]
    fn lossy_networks_end_in_agreement_with_nothing_left(scenario in scenarios()) {
        let network = Network {
            reliable: scenario.reliable,
            // A reliable transport loses and duplicates nothing (the testkit ignores these then).
            drop_per_mille: scenario.drop_per_mille,
            duplicate_per_mille: scenario.duplicate_per_mille,
            delay_min: ms(1),
            delay_max: ms(1 + scenario.delay_max),
        };
        let script = Script {
            provisional: scenario.provisional_delay.map(|delay| (180, ms(delay))),
            final_status: scenario.final_status,
            final_delay: ms(scenario.final_delay),
            answer_trying: scenario.answer_trying,
            ..Script::default()
        };
        let mut sim = Sim::new(scenario.seed, network, LayerConfig::default(), script);
        let method = if scenario.invite { Method::Invite } else { options() };
        let key = sim.send_request(method, "z9hG4bKprop");
        sim.run(200_000);

        let client = &sim.nodes[CLIENT];
        let server = &sim.nodes[SERVER];
        let received = client.finals_received.get(&key).copied();
        let timed_out = client.timeouts.contains(&key);
        prop_assert!(received.is_some() != timed_out, "exactly one outcome: {received:?} / timeout {timed_out}");
        if let Some(status) = received {
            prop_assert_eq!(server.finals_sent.get(&key).copied(), Some(status));
        }
        if scenario.reliable {
            prop_assert_eq!(received, Some(scenario.final_status));
        }
        prop_assert!(server.new_requests(&key) <= 1, "the TU sees the request at most once");
        prop_assert_eq!(count_terminated(&sim, CLIENT, Role::Client, &key), 1);
        for node in &sim.nodes {
            prop_assert!(node.layer.is_empty());
            prop_assert!(node.layer.poll_timeout().is_none());
        }
    }
}

#[test]
fn wire_codec_round_trips() {
    let request = wire::request(&Method::Invite, "z9hG4bKw");
    assert_eq!(
        wire::decode(&request),
        wire::Message::Request {
            key: key("z9hG4bKw", Method::Invite),
            method: Method::Invite
        }
    );
    let response = wire::response(180, &key("z9hG4bKw", Method::Invite));
    assert_eq!(
        wire::decode(&response),
        wire::Message::Response {
            key: key("z9hG4bKw", Method::Invite),
            status: 180
        }
    );
}
