//! Interoperability of the SIP control plane with independent SIP implementations, installed
//! from Debian's packages by `.ci/run`: SIPp (`sip-tester`) and Perl's Net::SIP
//! (`libnet-sip-perl`). Each test starts the real `floorcast` binary on its own loopback ports
//! with the built-in demo subscribers, runs the clients against it over UDP, and checks both the
//! clients' verdicts and the node's own account of what happened (its `sip event` log lines:
//! registrations, answered and ended calls; for media, its RTP counters).
//!
//! A missing client is a failure, not a skip: CI installs them, and a silently skipped interop
//! test proves nothing.
#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_floorcast");
/// What `.ci/run` does to get the clients.
const INSTALL: &str = "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
                       sip-tester libnet-sip-perl (the install line of .ci/run)";
/// How long the node may take to start (a debug build, a fresh store).
const START_LIMIT: Duration = Duration::from_secs(20);
/// Upper bound on one client run; the clients bound themselves more tightly.
const CLIENT_LIMIT: Duration = Duration::from_secs(60);
/// How long the node may take to log what it did after the client finished.
const LOG_LIMIT: Duration = Duration::from_secs(5);

/// SIPp registers 1001 with digest authentication, sends OPTIONS, and deregisters:
/// `tests/interop/sipp_register.xml`. Debian's SIPp 3.6.1 answers only the first
/// WWW-Authenticate it sees and knows only MD5, so this node is configured the way an operator
/// with such clients would: `sip.digest_algorithms = ["MD5"]`. (With the default SHA-256-first
/// offer, SIPp 3.6.1 gives up: "authentication must use MD5 or AKAv1-MD5".)
#[test]
fn interop_sipp_register_with_digest_and_options() {
    require_sipp();
    let mut node = Node::start(45_000, "digest_algorithms = [\"MD5\"]\n");
    let client_port = free_udp_port();
    let scenario = manifest_path("tests/interop/sipp_register.xml");
    let errors = node.directory.path().join("sipp_errors.log");
    let messages = node.directory.path().join("sipp_messages.log");
    let mut command = Command::new("sipp");
    command
        .arg("-sf")
        .arg(&scenario)
        .args(["-m", "1", "-t", "u1", "-i", "127.0.0.1", "-p", &client_port.to_string()])
        .args(["-s", "1001", "-au", "1001", "-ap", "demo"])
        .args(["-timeout", "15s", "-timeout_error", "-nostdin"])
        .args(["-trace_err", "-trace_msg"])
        .arg("-error_file")
        .arg(&errors)
        .arg("-message_file")
        .arg(&messages)
        .arg(node.address.to_string());
    let run = run_bounded(&mut command, node.directory.path(), "sipp");
    if !run.status.success() {
        let errors = std::fs::read_to_string(&errors).unwrap_or_default();
        let messages = std::fs::read_to_string(&messages).unwrap_or_default();
        let known = if errors.contains("authentication must use MD5") {
            "\nDIAGNOSIS: this SIPp (3.6.x, Debian's sip-tester) joins all WWW-Authenticate headers \
             into one string and answers the first `algorithm=` it finds; floorcast offers SHA-256 \
             first (RFC 8760 §2.4 order), which this SIPp cannot compute, so it gives up instead \
             of answering the MD5 challenge that follows.\n"
        } else {
            ""
        };
        panic!(
            "sipp failed ({}): {}{known}\n--- sipp errors ---\n{errors}\n--- sipp stderr ---\n{}\n\
             --- sipp messages ---\n{messages}\n--- node log ---\n{}",
            run.status,
            run.command,
            run.stderr,
            node.log()
        );
    }
    // The node's side: 1001 was bound for the 300 s it asked for, then released.
    node.expect_line("binding of 1001 for 300 s", |line| {
        line.contains("Bound {") && line.contains("\"1001\"") && line.contains("expires: 300")
    });
    node.expect_line("deregistration of 1001", |line| {
        line.contains("Unbound {") && line.contains("\"1001\"") && line.contains("deregistered")
    });
    node.stop();
}

/// Net::SIP registers 1002 with digest authentication (answering the MD5 one of the node's two
/// challenges), sends OPTIONS, refreshes and deregisters: `tests/interop/netsip_register.pl`.
#[test]
fn interop_netsip_register() {
    require_net_sip();
    let mut node = Node::start(45_050, "");
    let client = SocketAddr::from(([127, 0, 0, 1], free_udp_port()));
    let script = manifest_path("tests/interop/netsip_register.pl");
    let mut command = Command::new("perl");
    command
        .arg(&script)
        .args(["--registrar", &node.address.to_string()])
        .args(["--local", &client.to_string()])
        .args(["--user", "1002", "--password", "demo", "--timeout", "10"]);
    let run = run_bounded(&mut command, node.directory.path(), "perl");
    assert!(
        run.status.success() && run.stdout.contains("RESULT: PASS"),
        "Net::SIP client failed ({}): {}\n--- stdout ---\n{}\n--- stderr ---\n{}\n--- node log ---\n{}",
        run.status,
        run.command,
        run.stdout,
        run.stderr,
        node.log()
    );
    node.expect_line("binding of 1002 for 300 s", |line| {
        line.contains("Bound {") && line.contains("\"1002\"") && line.contains("expires: 300")
    });
    node.expect_line("deregistration of 1002", |line| {
        line.contains("Unbound {") && line.contains("\"1002\"") && line.contains("deregistered")
    });
    node.stop();
}

/// Packets in the audio file SIPp streams (20 ms each: one second of audio).
const SIPP_AUDIO_PACKETS: usize = 50;

/// A basic call between two SIPp terminals through the node (issue 4, "SIPp for the
/// signalling"), plus RTP both ways through the node's relay:
///
/// 1. `tests/interop/sipp_call_register.xml` registers 1002 (the callee) and 1001 (the caller),
///    each from the local port its call scenario then uses (SIPp matches messages to calls by
///    Call-ID, so the node's INVITE, with its own Call-ID, cannot reach the registering call:
///    registering and calling are two SIPp runs on one port, as a phone's would be one socket).
/// 2. `sipp_call_uas.xml` (1002) waits for the INVITE, checks it comes from 1001 with an offer
///    at the node, rings (180), answers (200 with SDP), takes the ACK, then the BYE (200).
///    `-rtp_echo` sends every RTP packet it gets back to its sender, the relay.
/// 3. `sipp_call_uac.xml` (1001) INVITEs 1002 with an offer, expects 100, 180, 200 with an
///    answer at the node, ACKs, streams a PCMU file as RTP to the answer's address
///    (`rtp_stream`), waits, hangs up (BYE) and expects 200.
///
/// Both SIPp runs must exit 0 (any unexpected message, failed check or timeout fails them);
/// the node must log the call answered and ended by the caller; and its RTP counters must show
/// every streamed packet relayed to the callee and every echoed one relayed back (SIPp itself
/// does not check what it receives).
#[test]
fn interop_sipp_basic_call() {
    require_sipp();
    let metrics = free_tcp_port();
    let mut node = Node::start_with(45_100, "digest_algorithms = [\"MD5\"]\n", Some(metrics));
    let [callee_port, caller_port] = free_udp_ports();
    // SIPp's media ports: the callee's echo socket at `media` (and `media + 2` for video), the
    // caller's RTP stream socket at `media + 4` (and RTCP at `media + 5`).
    let media = free_udp_run(8);
    // The scenario streams this file (a name relative to SIPp's working directory).
    let audio = sweep_pcmu(SIPP_AUDIO_PACKETS, 300.0, 3_300.0);
    std::fs::write(node.directory.path().join("sipp_audio.pcmu"), &audio).unwrap();

    // 1. Registrations, the callee's first.
    for (user, port) in [("1002", callee_port), ("1001", caller_port)] {
        let name = format!("sipp_register_{user}");
        let options = ["-s", user, "-au", user, "-ap", "demo", "-timeout", "15s"];
        let mut command = sipp_command(&node, &name, "sipp_call_register.xml", port, &options);
        let run = run_bounded(&mut command, node.directory.path(), &name);
        check_sipp(&mut node, &name, &run);
        node.expect_line(&format!("binding of {user}"), |line| {
            line.contains("Bound {") && line.contains(&format!("\"{user}\""))
        });
    }

    // 2. The callee waits for the call on its registered port.
    let name = "sipp_callee";
    let media_port = media.to_string();
    let options = [
        "-mi",
        "127.0.0.1",
        "-mp",
        &media_port,
        "-rtp_echo",
        "-s",
        "1002",
        "-timeout",
        "30s",
    ];
    let callee = spawn_sipp_listening(&mut node, name, "sipp_call_uas.xml", callee_port, &options);

    // 3. The caller calls, streams, hangs up.
    let name = "sipp_caller";
    let media_port = (media + 4).to_string();
    let options = [
        "-mi",
        "127.0.0.1",
        "-mp",
        &media_port,
        "-key",
        "callee",
        "1002",
        "-s",
        "1001",
        "-timeout",
        "30s",
    ];
    let mut command = sipp_command(&node, name, "sipp_call_uac.xml", caller_port, &options);
    let caller = run_bounded(&mut command, node.directory.path(), name);
    let callee = callee.finish();
    check_sipp(&mut node, "sipp_caller", &caller);
    check_sipp(&mut node, "sipp_callee", &callee);

    // The node's account: answered, then ended by the caller.
    node.expect_line("answered call 1001 -> 1002", |line| {
        line.contains("CallAnswered {")
            && line.contains("caller: Number(\"1001\")")
            && line.contains("callee: Number(\"1002\")")
    });
    node.expect_line("end of call 1001 -> 1002 by the caller", |line| {
        line.contains("CallEnded {") && line.contains("caller: Number(\"1001\")") && line.contains("caller side")
    });
    // The media: every packet to the callee, every echo back; nothing dropped.
    let relayed = 2 * SIPP_AUDIO_PACKETS as u64;
    expect_rtp_counters(
        &mut node,
        metrics,
        relayed,
        relayed,
        &format!("{SIPP_AUDIO_PACKETS} from the caller to the callee, as many echoed back by the callee"),
        &["sipp_caller"],
    );
    node.stop();
}

/// A group call among three SIPp terminals with floor control through the terminal-side
/// messages (issue 5), on the built-in demo's group 2002 (1001-1005, dispatcher 9001) homed on
/// the one node, which serves every member's D session itself:
///
/// 1. `sipp_call_register.xml` registers C (1003), B (1002) and A (1001), each from the local
///    port its group scenario then uses (as in [`interop_sipp_basic_call`]).
/// 2. `sipp_group_listener.xml` (C) and `sipp_group_talker.xml` (B) wait for the node's group
///    INVITE (`pttcall;calltype=4;...;GDN=2002;callerUDN=1001;calleeUDN=<them>;
///    answermode=direct`, a PCMU-only offer), answer it and take the ACK and `INFO
///    pttinfo;UDN=1001`.
/// 3. `sipp_group_initiator.xml` (A) INVITEs 2002 offering only PCMU, expects 100 and 200 with
///    `Ptt-Extension: pttaccept`, ACKs, takes `INFO pttinfo;UDN=1001`, waits for the listeners
///    to join and streams a PCMU file (50 packets), then releases the floor with a re-INVITE
///    `pttreleasefloor` (a=recvonly): every member gets `pttinfo;UDN=idle`.
/// 4. B asks for the floor with a re-INVITE `pttrequest` (a=sendonly), expects 200 with
///    `pttaccept`; everyone gets `pttinfo;UDN=1002`; B streams the same file and releases the
///    floor (`pttinfo;UDN=idle` to all).
/// 5. A hangs up; as the initiator it ends the call: B and C get the node's BYE
///    (`pttrelease;cause=64`).
///
/// Every SIPp run must exit 0 (an unexpected message, a failed check or a timeout fails it);
/// the node must log the call started by 1001, the floor going 1001, idle, 1002, idle in that
/// order, both members joining, and the call ended; and its RTP counters must show each
/// talker's packets relayed to both listeners (A's to B and C, B's to A and C; SIPp does not
/// check what it receives) with nothing dropped.
#[test]
fn interop_sipp_group_call_floor() {
    require_sipp();
    let metrics = free_tcp_port();
    let mut node = Node::start_with(45_250, "digest_algorithms = [\"MD5\"]\n", Some(metrics));
    let [a_port, b_port, c_port] = free_udp_ports();
    // Each SIPp binds its media port (-mp, where rtp_stream also sends from) and -mp + 2
    // (video): A's at `media`, B's at `media + 4`, C's at `media + 8`.
    let media = free_udp_run(12);
    let audio = sweep_pcmu(SIPP_AUDIO_PACKETS, 300.0, 3_300.0);
    std::fs::write(node.directory.path().join("sipp_audio.pcmu"), &audio).unwrap();

    // 1. Registrations, the initiator's last.
    for (user, port) in [("1003", c_port), ("1002", b_port), ("1001", a_port)] {
        let name = format!("sipp_register_{user}");
        let options = ["-s", user, "-au", user, "-ap", "demo", "-timeout", "15s"];
        let mut command = sipp_command(&node, &name, "sipp_call_register.xml", port, &options);
        let run = run_bounded(&mut command, node.directory.path(), &name);
        check_sipp(&mut node, &name, &run);
        node.expect_line(&format!("binding of {user}"), |line| {
            line.contains("Bound {") && line.contains(&format!("\"{user}\""))
        });
    }

    // 2. The members wait for the group call on their registered ports.
    let c_media = (media + 8).to_string();
    let options = ["-mi", "127.0.0.1", "-mp", &c_media, "-s", "1003", "-timeout", "30s"];
    let listener = spawn_sipp_listening(&mut node, "sipp_member_c", "sipp_group_listener.xml", c_port, &options);
    let b_media = (media + 4).to_string();
    let options = ["-mi", "127.0.0.1", "-mp", &b_media, "-s", "1002", "-timeout", "30s"];
    let talker = spawn_sipp_listening(&mut node, "sipp_member_b", "sipp_group_talker.xml", b_port, &options);

    // 3.-5. The initiator sets the call up, talks, hands over, hangs up.
    let name = "sipp_initiator_a";
    let a_media = media.to_string();
    let options = [
        "-mi",
        "127.0.0.1",
        "-mp",
        &a_media,
        "-key",
        "group",
        "2002",
        "-s",
        "1001",
        "-timeout",
        "30s",
    ];
    let mut command = sipp_command(&node, name, "sipp_group_initiator.xml", a_port, &options);
    let initiator = run_bounded(&mut command, node.directory.path(), name);
    let talker = talker.finish();
    let listener = listener.finish();
    check_sipp(&mut node, name, &initiator);
    check_sipp(&mut node, "sipp_member_b", &talker);
    check_sipp(&mut node, "sipp_member_c", &listener);

    // The node's account: started by 1001, both members joined, ended.
    node.expect_line("group call 2002 started by 1001", |line| {
        line.contains("GroupCallStarted {")
            && line.contains("group: Number(\"2002\")")
            && line.contains("initiator: Number(\"1001\")")
    });
    for user in ["1002", "1003"] {
        node.expect_line(&format!("{user} joining group call 2002"), |line| {
            line.contains("GroupMemberJoined {") && line.contains(&format!("user: Number(\"{user}\")"))
        });
    }
    node.expect_line("end of group call 2002", |line| {
        line.contains("GroupCallEnded {") && line.contains("group: Number(\"2002\")")
    });
    // The floor, in order: A, idle, B, idle.
    let floor: Vec<String> = node
        .seen
        .iter()
        .filter(|line| line.contains("FloorChanged {") && line.contains("group: Number(\"2002\")"))
        .filter_map(|line| {
            let talker = line.split("talker: ").nth(1)?;
            Some(talker.split(" }").next()?.to_owned())
        })
        .collect();
    let expected = ["Some(Number(\"1001\"))", "None", "Some(Number(\"1002\"))", "None"];
    if floor != expected {
        let log = node.log();
        panic!("the floor should go {expected:?}, the node logged {floor:?}:\n{log}");
    }
    // The media: each talker's packets to both listeners, nothing dropped.
    let talked = 2 * SIPP_AUDIO_PACKETS as u64;
    expect_rtp_counters(
        &mut node,
        metrics,
        talked,
        2 * talked,
        &format!(
            "{SIPP_AUDIO_PACKETS} from A, each to B and C; then {SIPP_AUDIO_PACKETS} from B, each \
             to A and C"
        ),
        &[name, "sipp_member_b", "sipp_member_c"],
    );
    node.stop();
}

/// Packets in the audio file the Net::SIP caller sends (20 ms each: five seconds of audio),
/// and in the one the callee sends back.
const NETSIP_AUDIO_PACKETS: usize = 250;
const NETSIP_REPLY_PACKETS: usize = 100;

/// A call between two Net::SIP user agents through the node, with an audio file sent as RTP
/// that must arrive byte-exact at the other terminal (issue 4): `tests/interop/netsip_call.pl`
/// registers 1003 and 1004 (digest), 1003 calls 1004, 1004 answers; 1003 sends a PCMU file
/// (a frequency sweep, 160-byte frames) as RTP and 1004 writes the payloads it receives to a
/// file, while 1004 sends another file back the same way; 1003 hangs up. Both received files
/// must equal the sent ones byte for byte (a lost, duplicated, reordered or altered packet
/// changes them), and the node must log the call answered and ended.
#[test]
fn interop_netsip_call_rtp_byte_exact() {
    require_net_sip();
    let mut node = Node::start(45_200, "");
    let [caller, callee] = free_udp_ports();
    let directory = node.directory.path().to_owned();
    let send = directory.join("netsip_send.pcmu");
    let reply = directory.join("netsip_reply.pcmu");
    let received = directory.join("netsip_received.pcmu");
    let reply_received = directory.join("netsip_reply_received.pcmu");
    std::fs::write(&send, sweep_pcmu(NETSIP_AUDIO_PACKETS, 300.0, 3_300.0)).unwrap();
    std::fs::write(&reply, sweep_pcmu(NETSIP_REPLY_PACKETS, 3_000.0, 500.0)).unwrap();
    let mut command = Command::new("perl");
    command
        .arg(manifest_path("tests/interop/netsip_call.pl"))
        .args(["--node", &node.address.to_string(), "--password", "demo"])
        .args(["--caller", "1003", "--caller-local", &format!("127.0.0.1:{caller}")])
        .args(["--callee", "1004", "--callee-local", &format!("127.0.0.1:{callee}")])
        .arg("--send")
        .arg(&send)
        .arg("--received")
        .arg(&received)
        .arg("--reply")
        .arg(&reply)
        .arg("--reply-received")
        .arg(&reply_received)
        .args(["--timeout", "10"]);
    let run = run_bounded(&mut command, &directory, "perl");
    assert!(
        run.status.success() && run.stdout.contains("RESULT: PASS"),
        "Net::SIP call failed ({}): {}\n--- stdout ---\n{}\n--- stderr ---\n{}\n--- node log ---\n{}",
        run.status,
        run.command,
        run.stdout,
        run.stderr,
        node.log()
    );
    for (what, sent, got) in [
        ("1003 -> 1004", &send, &received),
        ("1004 -> 1003", &reply, &reply_received),
    ] {
        let sent = std::fs::read(sent).unwrap();
        let got = std::fs::read(got).unwrap_or_default();
        if got != sent {
            let first = sent
                .iter()
                .zip(&got)
                .position(|(a, b)| a != b)
                .unwrap_or(sent.len().min(got.len()));
            panic!(
                "the audio {what} did not arrive byte-exact: sent {} bytes ({} packets), received {} \
                 bytes; first difference at byte {first} (packet {})\n--- stdout ---\n{}\n--- node log ---\n{}",
                sent.len(),
                sent.len() / 160,
                got.len(),
                first / 160,
                run.stdout,
                node.log()
            );
        }
    }
    node.expect_line("answered call 1003 -> 1004", |line| {
        line.contains("CallAnswered {")
            && line.contains("caller: Number(\"1003\")")
            && line.contains("callee: Number(\"1004\")")
    });
    node.expect_line("end of call 1003 -> 1004 by the caller", |line| {
        line.contains("CallEnded {") && line.contains("caller: Number(\"1003\")") && line.contains("caller side")
    });
    node.stop();
}

// ---- the node ----------------------------------------------------------------------------------

/// A `floorcast` process on its own SIP port, with its config, network and store in a temporary
/// directory. Killed on drop if the test did not stop it.
struct Node {
    directory: tempfile::TempDir,
    address: SocketAddr,
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    /// Every stderr line read so far (for failure messages).
    seen: Vec<String>,
}

impl Node {
    /// Starts a node of the one-TCF network `tcf-1` (users 1001-1010, groups 2001-2002, demo
    /// subscribers) on a free loopback port, media ports `media_min..media_min + 49`, and waits
    /// until it runs.
    fn start(media_min: u16, sip_extra: &str) -> Node {
        Node::start_with(media_min, sip_extra, None)
    }

    /// [`Node::start`], with the Prometheus exporter on 127.0.0.1:`metrics` if given.
    fn start_with(media_min: u16, sip_extra: &str, metrics: Option<u16>) -> Node {
        assert!(
            (MEDIA_PORTS.start..=MEDIA_PORTS.end - 50).contains(&media_min),
            "interop nodes' media ports stay in {MEDIA_PORTS:?} (free_udp_port avoids them)"
        );
        let metrics = metrics.map_or_else(|| "off".to_owned(), |port| format!("127.0.0.1:{port}"));
        let directory = tempfile::tempdir().unwrap();
        let address = SocketAddr::from(([127, 0, 0, 1], free_udp_port()));
        let network = directory.path().join("network.toml");
        std::fs::write(
            &network,
            format!(
                "[[tcf]]\nname = \"tcf-1\"\nsip = \"{address}\"\nusers = [\"1001-1010\"]\n\
                 groups = [\"2001-2002\"]\n"
            ),
        )
        .unwrap();
        let config = directory.path().join("floorcast.toml");
        std::fs::write(
            &config,
            format!(
                "[node]\nname = \"tcf-1\"\n\
                 [media]\nport_min = {media_min}\nport_max = {media_max}\nworkers = 1\n\
                 [metrics]\nlisten = \"{metrics}\"\n\
                 [sip]\nlisten = \"{address}\"\n{sip_extra}\
                 [provisioning]\nnetwork = \"{network}\"\nsubscribers = \"builtin:demo\"\n\
                 [store]\npath = \"{store}\"\n",
                media_max = media_min + 49,
                network = network.display(),
                store = directory.path().join("state.redb").display(),
            ),
        )
        .unwrap();
        let mut child = Command::new(BINARY)
            .current_dir(directory.path())
            .arg("run")
            .arg("--config")
            .arg(&config)
            // The SIP events (bindings) are logged at debug level.
            .env("RUST_LOG", "info,floorcast::node::sip=debug")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if sender.send(strip_ansi(&line)).is_err() {
                    break;
                }
            }
        });
        let mut node = Node {
            directory,
            address,
            child: Some(child),
            lines,
            seen: Vec::new(),
        };
        if !node.wait_line(START_LIMIT, |line| line.contains("floorcast node running")) {
            panic!(
                "the node did not log that it runs within {START_LIMIT:?}:\n{}",
                node.log()
            );
        }
        node
    }

    /// Reads stderr lines until one matches, for at most `limit`; whether one did.
    fn wait_line(&mut self, limit: Duration, matches: impl Fn(&str) -> bool) -> bool {
        if self.seen.iter().any(|line| matches(line)) {
            return true;
        }
        let deadline = Instant::now() + limit;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = matches(&line);
                    self.seen.push(line);
                    if found {
                        return true;
                    }
                }
                Err(_) => return false,
            }
        }
        false
    }

    /// Asserts that the node logs a line matching `matches` (described by `what`) soon.
    fn expect_line(&mut self, what: &str, matches: impl Fn(&str) -> bool) {
        if !self.wait_line(LOG_LIMIT, matches) {
            panic!("the node did not log the {what} within {LOG_LIMIT:?}:\n{}", self.log());
        }
    }

    /// The log so far, and whether the process still runs.
    fn log(&mut self) -> String {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        let state = match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(Some(status))) => format!("[node exited: {status}]"),
            Some(Ok(None)) => "[node running]".to_owned(),
            Some(Err(error)) => format!("[node state unknown: {error}]"),
            None => "[node stopped]".to_owned(),
        };
        format!("{}\n{state}", self.seen.join("\n"))
    }

    /// Stops the node with SIGTERM and asserts it exits cleanly (it must have run throughout).
    fn stop(mut self) {
        let mut child = self.child.take().unwrap();
        assert!(child.try_wait().unwrap().is_none(), "the node died:\n{}", self.log());
        // SAFETY: signalling our own child process, which has not been reaped (checked above).
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let status = wait_bounded(&mut child, Duration::from_secs(10));
        assert!(
            status.is_some_and(|status| status.success()),
            "the node did not exit cleanly on SIGTERM ({status:?}):\n{}",
            self.log()
        );
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---- clients -----------------------------------------------------------------------------------

fn require_sipp() {
    match Command::new("sipp").arg("-v").stdin(Stdio::null()).output() {
        Ok(_) => {}
        Err(error) => panic!("`sipp` cannot be run ({error}): install SIPp first: {INSTALL}"),
    }
}

fn require_net_sip() {
    match Command::new("perl").args(["-MNet::SIP", "-e1"]).output() {
        Ok(output) if output.status.success() => {}
        Ok(output) => panic!(
            "Perl's Net::SIP is missing ({}): install it first: {INSTALL}",
            String::from_utf8_lossy(&output.stderr).trim()
        ),
        Err(error) => panic!("`perl` cannot be run ({error}): install Net::SIP first: {INSTALL}"),
    }
}

/// A finished client run.
struct Run {
    command: String,
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// A client process running in the background, its output in files. Killed on drop if it was
/// not waited for.
struct Client {
    description: String,
    child: Option<Child>,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
}

impl Client {
    /// Starts `command` in `directory` with its output in files there (no pipe to fill up).
    fn spawn(command: &mut Command, directory: &Path, name: &str) -> Client {
        let stdout_path = directory.join(format!("{name}.stdout"));
        let stderr_path = directory.join(format!("{name}.stderr"));
        let description = format!("{command:?}");
        let child = command
            .current_dir(directory)
            .stdin(Stdio::null())
            .stdout(File::create(&stdout_path).unwrap())
            .stderr(File::create(&stderr_path).unwrap())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot run {description}: {error}; install the clients first: {INSTALL}"));
        Client {
            description,
            child: Some(child),
            stdout_path,
            stderr_path,
        }
    }

    /// Waits for the client to exit, killing it (and failing) after [`CLIENT_LIMIT`].
    fn finish(mut self) -> Run {
        let mut child = self.child.take().unwrap();
        let status = match wait_bounded(&mut child, CLIENT_LIMIT) {
            Some(status) => status,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{} did not finish within {CLIENT_LIMIT:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                    self.description,
                    std::fs::read_to_string(&self.stdout_path).unwrap_or_default(),
                    std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
                );
            }
        };
        Run {
            command: self.description.clone(),
            status,
            stdout: std::fs::read_to_string(&self.stdout_path).unwrap_or_default(),
            stderr: std::fs::read_to_string(&self.stderr_path).unwrap_or_default(),
        }
    }

    /// Whether the process has exited (or was already waited for).
    fn exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => !matches!(child.try_wait(), Ok(None)),
            None => true,
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `command` in `directory` to its end, killing it after [`CLIENT_LIMIT`].
fn run_bounded(command: &mut Command, directory: &Path, name: &str) -> Run {
    Client::spawn(command, directory, name).finish()
}

/// A SIPp command for `scenario` (under `tests/interop/`) from 127.0.0.1:`local_port` to the
/// node, one call, UDP, never waiting for a keyboard, logging every message and error to
/// `<name>_messages.log` and `<name>_errors.log` in the node's directory (see [`check_sipp`]);
/// `options` name the user, credentials, media and `-timeout`.
fn sipp_command(node: &Node, name: &str, scenario: &str, local_port: u16, options: &[&str]) -> Command {
    let directory = node.directory.path();
    let mut command = Command::new("sipp");
    command
        .arg("-sf")
        .arg(manifest_path(&format!("tests/interop/{scenario}")))
        .args(["-m", "1", "-t", "u1", "-i", "127.0.0.1", "-p", &local_port.to_string()])
        .args(["-timeout_error", "-nostdin", "-trace_err", "-trace_msg"])
        .arg("-error_file")
        .arg(directory.join(format!("{name}_errors.log")))
        .arg("-message_file")
        .arg(directory.join(format!("{name}_messages.log")))
        .args(options)
        .arg(node.address.to_string());
    command
}

/// Fails unless the SIPp run `name` (made by [`sipp_command`]) exited 0; shows its errors,
/// messages and the node's log.
fn check_sipp(node: &mut Node, name: &str, run: &Run) {
    if run.status.success() {
        return;
    }
    let directory = node.directory.path();
    let errors = std::fs::read_to_string(directory.join(format!("{name}_errors.log"))).unwrap_or_default();
    let messages = std::fs::read_to_string(directory.join(format!("{name}_messages.log"))).unwrap_or_default();
    panic!(
        "{name}: sipp failed ({}): {}\n--- sipp errors ---\n{errors}\n--- sipp stderr ---\n{}\n\
         --- sipp messages ---\n{messages}\n--- node log ---\n{}",
        run.status,
        run.command,
        run.stderr,
        node.log()
    );
}

/// Starts the SIPp run `name` (see [`sipp_command`]) that waits for the node's INVITE on
/// 127.0.0.1:`local_port`, and returns once it listens there (the node would retransmit its
/// INVITE, but a late start must not eat into the other terminals' timers).
fn spawn_sipp_listening(node: &mut Node, name: &str, scenario: &str, local_port: u16, options: &[&str]) -> Client {
    let mut command = sipp_command(node, name, scenario, local_port, options);
    let mut client = Client::spawn(&mut command, node.directory.path(), name);
    wait_until(Duration::from_secs(10), || {
        udp_port_bound(local_port) || client.exited()
    });
    if !udp_port_bound(local_port) {
        let run = client.finish();
        check_sipp(node, name, &run);
        panic!("{name}: SIPp did not bind 127.0.0.1:{local_port} within 10 s (it exited 0)");
    }
    client
}

/// Asserts that the node's RTP counters (from its exporter on 127.0.0.1:`metrics`) settle at
/// `received` packets in and `sent` out (`what` says why), with no packet dropped; on failure
/// shows the counters, the messages of the SIPp runs `runs` and the node's log.
fn expect_rtp_counters(node: &mut Node, metrics: u16, received: u64, sent: u64, what: &str, runs: &[&str]) {
    let mut text = String::new();
    let settled = wait_until(LOG_LIMIT, || {
        text = scrape_metrics(metrics);
        metric(&text, "floorcast_rtp_packets_total{node=\"tcf-1\",direction=\"in\"}") == Some(received)
            && metric(&text, "floorcast_rtp_packets_total{node=\"tcf-1\",direction=\"out\"}") == Some(sent)
    });
    let dropped: u64 = text
        .lines()
        .filter(|line| line.starts_with("floorcast_dropped_packets_total{"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    if settled && dropped == 0 {
        return;
    }
    let media_lines: Vec<&str> = text
        .lines()
        .filter(|line| line.starts_with("floorcast_rtp") || line.starts_with("floorcast_dropped"))
        .collect();
    let messages: String = runs
        .iter()
        .map(|run| {
            let path = node.directory.path().join(format!("{run}_messages.log"));
            format!(
                "--- {run} messages ---\n{}\n",
                std::fs::read_to_string(path).unwrap_or_default()
            )
        })
        .collect();
    panic!(
        "the node should receive {received} and send {sent} RTP packets ({what}) and drop none; \
         its counters:\n{}\n{messages}--- node log ---\n{}",
        media_lines.join("\n"),
        node.log()
    );
}

/// The child's exit status, or `None` if it still runs after `limit`.
fn wait_bounded(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---- helpers -----------------------------------------------------------------------------------

fn manifest_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// Where the interop nodes' media ports are: free ports for clients are picked outside.
const MEDIA_PORTS: std::ops::Range<u16> = 45_000..45_300;

/// A UDP port on 127.0.0.1 that was free a moment ago (the kernel's pick, outside
/// [`MEDIA_PORTS`]).
fn free_udp_port() -> u16 {
    let [port] = free_udp_ports();
    port
}

/// `N` distinct UDP ports on 127.0.0.1 that were free a moment ago (the kernel's picks,
/// outside [`MEDIA_PORTS`]).
fn free_udp_ports<const N: usize>() -> [u16; N] {
    let mut held = Vec::new();
    while held.len() < N {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        if !MEDIA_PORTS.contains(&socket.local_addr().unwrap().port()) {
            held.push(socket);
        }
    }
    std::array::from_fn(|index| held[index].local_addr().unwrap().port())
}

/// The first of `length` consecutive UDP ports on 127.0.0.1 (an even one) that were all free
/// a moment ago, outside [`MEDIA_PORTS`].
fn free_udp_run(length: u16) -> u16 {
    for _ in 0..200 {
        let base = free_udp_port() & !1;
        let Some(end) = base.checked_add(length) else { continue };
        if (base..end).any(|port| MEDIA_PORTS.contains(&port)) {
            continue;
        }
        let bound: Vec<_> = (base..end)
            .map_while(|port| UdpSocket::bind(("127.0.0.1", port)).ok())
            .collect();
        if bound.len() == usize::from(length) {
            return base;
        }
    }
    panic!("found no {length} consecutive free UDP ports on 127.0.0.1");
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Whether some process has a UDP socket bound to `port` (any local address), from
/// `/proc/net/udp`: looking, unlike binding the port to see, cannot take it from the process
/// about to bind it.
fn udp_port_bound(port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/udp").unwrap();
    table.lines().skip(1).any(|line| {
        line.split_whitespace()
            .nth(1)
            .and_then(|local| local.rsplit(':').next())
            .and_then(|hex| u16::from_str_radix(hex, 16).ok())
            == Some(port)
    })
}

/// Polls `done` every 20 ms for at most `limit`; whether it became true.
fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The node's Prometheus text from 127.0.0.1:`port` (empty if it cannot be read).
fn scrape_metrics(port: u16) -> String {
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut stream) = TcpStream::connect_timeout(&address, Duration::from_secs(2)) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return String::new();
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
}

/// The value of the sample `series` (name and labels exactly as exported) in `text`.
fn metric(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// `packets` frames of 20 ms of 8 kHz G.711 µ-law (160 bytes each): a sine sweeping from
/// `from` to `to` Hz, so that no two frames are alike.
fn sweep_pcmu(packets: usize, from: f64, to: f64) -> Vec<u8> {
    let samples = packets * 160;
    let mut phase = 0.0_f64;
    (0..samples)
        .map(|index| {
            let frequency = from + (to - from) * index as f64 / samples as f64;
            phase += std::f64::consts::TAU * frequency / 8_000.0;
            linear_to_ulaw((phase.sin() * 12_000.0) as i16)
        })
        .collect()
}

/// G.711 µ-law encoding of one 16-bit linear sample.
fn linear_to_ulaw(sample: i16) -> u8 {
    const BIAS: i32 = 0x84;
    const CLIP: i32 = 32_635;
    let mut magnitude = i32::from(sample);
    let sign = if magnitude < 0 {
        magnitude = -magnitude;
        0x80
    } else {
        0
    };
    let magnitude = magnitude.min(CLIP) + BIAS;
    let mut exponent = 7;
    let mut mask = 0x4000;
    while exponent > 0 && magnitude & mask == 0 {
        exponent -= 1;
        mask >>= 1;
    }
    let mantissa = (magnitude >> (exponent + 3)) & 0x0f;
    !((sign | (exponent << 4) | mantissa) as u8)
}

/// The line without ANSI colour sequences (`ESC [ ... letter`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(character) = chars.next() {
        if character == '\u{1b}' {
            for next in chars.by_ref() {
                if next.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(character);
        }
    }
    out
}
