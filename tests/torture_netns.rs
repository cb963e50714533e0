//! Hostile input against a running `floorcast` process, end to end over UDP: every RFC 4475
//! torture message and other malformed SIP, and what the node answers to each, where it sends
//! the answer, that it survives a flood without its memory growing, and that nothing it sends
//! heads for an address merely named in a header.
//!
//! House rule: a test that feeds the node foreign addresses (the torture messages' Vias name
//! 192.0.2.x, example.com, 255.255.255.255, ...) runs inside a private network namespace with
//! only a loopback interface, so nothing can leave the machine whatever the code does. Each
//! test here is a parent that creates such a namespace (`ip netns add`, `lo` up), re-runs this
//! test binary inside it (`ip netns exec`) to execute its ignored `child_*` twin, and deletes
//! the namespace afterwards, failure or not. The child starts the node (127.0.0.1:5060 in the
//! namespace) and plays the client from 127.0.0.2. It refuses to run unless it really is inside
//! the namespace its parent named. Creating a namespace needs root (CAP_SYS_ADMIN) and
//! iproute2: without them the parent tests fail, they do not skip.
//!
//! Besides the answers themselves, two witnesses show that no datagram went anywhere else: the
//! namespace's kernel counters (`Ip: OutNoRoutes` rises on any send to a non-loopback address,
//! `Udp: NoPorts` on any datagram to a loopback port nobody listens on; the client listens on
//! every port a Via names) and the node's log (it logs every failed send).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use floorcast::sip::{HeaderName, Message};

const BINARY: &str = env!("CARGO_BIN_EXE_floorcast");
/// Set (to the namespace's name) for the child run inside the namespace.
const CHILD_ENV: &str = "FLOORCAST_TORTURE_NETNS";
/// The whole child run, node start to stop.
const CHILD_DEADLINE: Duration = Duration::from_secs(50);
/// How long an answer may take.
const ANSWER_WAIT: Duration = Duration::from_secs(2);
/// How long to listen for an answer that must not come.
const SILENCE_WAIT: Duration = Duration::from_millis(300);
/// After an answer, how long to keep listening for a second one (there must be none).
const GRACE: Duration = Duration::from_millis(20);

const NODE: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), 5060);
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// Every port a Via of the messages sent here names; the client listens on each at CLIENT_IP,
/// so a response routed by the Via port is caught, and one routed wrongly is seen.
const VIA_PORTS: [u16; 6] = [5050, 5060, 5062, 5070, 5098, 5099];
/// `sip.max_message_size` of the node under test: low enough that a UDP datagram can exceed it
/// (the default, 65 535, is above the largest IPv4 UDP payload), above every torture message.
const MAX_MESSAGE_SIZE: usize = 4096;

// =============================================================================================
// Parents: one private namespace per test
// =============================================================================================

/// RFC 4475: every torture message, one at a time, and the node's answer to each.
#[test]
fn sip_torture_rfc4475_in_netns() {
    run_in_namespace("child_rfc4475");
}

/// Oversize, unknown method, Max-Forwards 0, loops, header-named addresses, garbage, and a flood
/// of 10 000 bad datagrams: right answers, to the right place, and the node survives with its
/// memory flat.
#[test]
fn sip_bad_input_answers_in_netns() {
    run_in_namespace("child_bad_input");
}

/// A named network namespace with only `lo`, up; deleted on drop.
struct Namespace {
    name: String,
}

impl Namespace {
    fn create() -> Namespace {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "floorcast-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        match Command::new("ip").args(["netns", "add", &name]).output() {
            Ok(output) if output.status.success() => {}
            Ok(output) => panic!(
                "`ip netns add {name}` failed ({}): {}\nThese tests feed the node foreign addresses and \
                 run only inside a private network namespace: they need root (CAP_SYS_ADMIN).",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
            Err(error) => panic!("cannot run `ip` (iproute2 is needed to create a private network namespace): {error}"),
        }
        let namespace = Namespace { name };
        let output = Command::new("ip")
            .args(["-n", &namespace.name, "link", "set", "lo", "up"])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "`ip -n {} link set lo up` failed: {}",
            namespace.name,
            String::from_utf8_lossy(&output.stderr)
        );
        namespace
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // Whatever is still inside was started by this test (the child run, its node): end it,
        // by process id, so the namespace really goes away.
        if let Ok(output) = Command::new("ip").args(["netns", "pids", &self.name]).output() {
            for pid in String::from_utf8_lossy(&output.stdout)
                .split_whitespace()
                .filter_map(|pid| pid.parse::<libc::pid_t>().ok())
            {
                // SAFETY: signalling a process of ours by id.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let deleted = Command::new("ip").args(["netns", "delete", &self.name]).output();
        if !deleted.is_ok_and(|output| output.status.success()) {
            eprintln!("warning: could not delete network namespace {}", self.name);
        }
    }
}

/// Runs the ignored test `child` of this binary inside a fresh namespace and fails with its
/// output if it fails, times out, or did not run.
fn run_in_namespace(child: &str) {
    let namespace = Namespace::create();
    let log = tempfile::NamedTempFile::new().unwrap();
    let executable = std::env::current_exe().unwrap();
    let mut process = Command::new("ip")
        .args(["netns", "exec", &namespace.name])
        .arg(&executable)
        .args([child, "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &namespace.name)
        .stdin(Stdio::null())
        .stdout(log.as_file().try_clone().unwrap())
        .stderr(log.as_file().try_clone().unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + CHILD_DEADLINE;
    let status = loop {
        if let Some(status) = process.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = process.kill();
            let _ = process.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(namespace);
    let output = std::fs::read_to_string(log.path()).unwrap_or_default();
    match status {
        None => panic!("{child} did not finish within {CHILD_DEADLINE:?}:\n{output}"),
        Some(status) if !status.success() => panic!("{child} failed ({status}):\n{output}"),
        Some(_) => {
            assert!(output.contains("1 passed"), "{child} did not run:\n{output}");
            println!("{output}");
        }
    }
}

// =============================================================================================
// Children: inside the namespace
// =============================================================================================

/// True when running as the child inside the namespace the parent named; panics if the
/// environment says so but the process is anywhere else.
fn in_private_namespace() -> bool {
    let Ok(name) = std::env::var(CHILD_ENV) else {
        return false;
    };
    let ours = std::fs::metadata("/proc/self/ns/net").unwrap();
    let named = std::fs::metadata(format!("/run/netns/{name}"))
        .unwrap_or_else(|error| panic!("refusing to send hostile input: no network namespace {name}: {error}"));
    assert_eq!(
        (ours.dev(), ours.ino()),
        (named.dev(), named.ino()),
        "refusing to send hostile input: not inside network namespace {name}"
    );
    let devices = std::fs::read_to_string("/proc/self/net/dev").unwrap();
    let interfaces: Vec<&str> = devices
        .lines()
        .skip(2)
        .filter_map(|line| line.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(interfaces, ["lo"], "the namespace must have loopback only");
    true
}

/// What the node must do with one message.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Answer with this status, sent to `At`.
    Answer(u16, At),
    /// Answer again with exactly the response it gave to the named earlier message (the two
    /// share branch, sent-by and method, so RFC 3261 §17.2.3 makes this a retransmission).
    Repeat(&'static str, At),
    /// Nothing at all.
    Silence,
}

/// Where an answer must arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    /// The request's source address (top Via with `rport`, or no usable top Via).
    Source,
    /// The source IP with the top Via's port (RFC 3261 §18.2.2; never the Via's host).
    ViaPort(u16),
}

macro_rules! torture {
    ($name:literal) => {
        ($name, include_bytes!(concat!("data/rfc4475/", $name, ".dat")) as &[u8])
    };
}

/// The 49 messages in RFC order, each with what the node answers. Vias without a port mean
/// 5060; every Via host is foreign, so every answer goes to 127.0.0.2.
const RFC4475: &[((&str, &[u8]), Expect)] = &[
    // 3.1.1 Valid messages.
    // INVITE whose To carries a tag but matches no dialog: 481 (RFC 3261 §12.2.2).
    (torture!("wsinv"), Expect::Answer(481, At::ViaPort(5060))),
    // Extension method: 501.
    (torture!("intmeth"), Expect::Answer(501, At::ViaPort(5060))),
    // INVITE from a source that is neither a registered terminal nor a peer TCF: 403.
    (torture!("esc01"), Expect::Answer(403, At::ViaPort(5060))),
    // REGISTER whose To user (`null-%00-null`) is no user number of this node.
    (torture!("escnull"), Expect::Answer(404, At::ViaPort(5060))),
    // `RE%47IST%45R` is an extension method, not REGISTER: 501.
    (torture!("esc02"), Expect::Answer(501, At::ViaPort(5060))),
    (torture!("lwsdisp"), Expect::Answer(200, At::ViaPort(5060))),
    (torture!("longreq"), Expect::Answer(403, At::ViaPort(5060))),
    // The datagram's first REGISTER counts (Content-Length 0); its AOR is unknown here.
    (torture!("dblreq"), Expect::Answer(404, At::ViaPort(5060))),
    (torture!("semiuri"), Expect::Answer(200, At::ViaPort(5060))),
    (torture!("transports"), Expect::Answer(200, At::ViaPort(5060))),
    // MESSAGE without a Ptt-Extension: 501. Its Via says 127.0.0.1:5070 with `rport`, so the
    // answer goes to the source port, not 5070.
    (torture!("mpart01"), Expect::Answer(501, At::Source)),
    // Responses that match no transaction: absorbed.
    (torture!("unreason"), Expect::Silence),
    (torture!("noreason"), Expect::Silence),
    // 3.1.2 Invalid messages: 400 (505 for the version) where a response can be addressed.
    // badinv01's top Via does not parse, so its answer goes to the source address.
    (torture!("badinv01"), Expect::Answer(400, At::Source)),
    (torture!("clerr"), Expect::Answer(400, At::ViaPort(5060))),
    (torture!("ncl"), Expect::Answer(400, At::ViaPort(5060))),
    (torture!("scalar02"), Expect::Answer(400, At::ViaPort(5060))),
    (torture!("scalarlg"), Expect::Silence),
    (torture!("quotbal"), Expect::Answer(400, At::ViaPort(5050))),
    (torture!("ltgtruri"), Expect::Answer(400, At::ViaPort(5060))),
    (torture!("lwsruri"), Expect::Answer(400, At::ViaPort(5060))),
    (torture!("lwsstart"), Expect::Answer(400, At::ViaPort(5060))),
    (torture!("trws"), Expect::Answer(400, At::ViaPort(5060))),
    (torture!("escruri"), Expect::Answer(400, At::ViaPort(5060))),
    // The Date does not matter to the node: an INVITE like any other, 403 (unregistered source).
    (torture!("baddate"), Expect::Answer(403, At::ViaPort(5060))),
    (torture!("regbadct"), Expect::Answer(400, At::ViaPort(5060))),
    (torture!("badaspec"), Expect::Answer(400, At::ViaPort(5060))),
    (torture!("baddn"), Expect::Answer(400, At::ViaPort(5060))),
    (torture!("badvers"), Expect::Answer(505, At::ViaPort(5060))),
    (torture!("mismatch01"), Expect::Answer(400, At::ViaPort(5060))),
    (torture!("mismatch02"), Expect::Answer(400, At::ViaPort(5060))),
    (torture!("bigcode"), Expect::Silence),
    // 3.2 Transaction layer: the bare magic cookie falls back to RFC 2543 matching.
    (torture!("badbranch"), Expect::Answer(200, At::ViaPort(5060))),
    // 3.3 Application layer.
    // No From, To or Call-ID: no response can be built, dropped (and counted).
    (torture!("insuf"), Expect::Silence),
    (torture!("unkscm"), Expect::Answer(416, At::ViaPort(5060))),
    // Same branch, sent-by and method as unkscm: its transaction answers again.
    (torture!("novelsc"), Expect::Repeat("unkscm", At::ViaPort(5060))),
    // To is not a SIP address of record: 400.
    (torture!("unksm2"), Expect::Answer(400, At::ViaPort(5060))),
    (torture!("bext01"), Expect::Answer(420, At::ViaPort(5060))),
    // INVITE from an unregistered source: 403 before its body is looked at.
    (torture!("invut"), Expect::Answer(403, At::ViaPort(5060))),
    // The AOR is unknown here, which decides before the (ignored) credentials.
    (torture!("regaut01"), Expect::Answer(404, At::ViaPort(5060))),
    (torture!("multi01"), Expect::Answer(400, At::ViaPort(5060))),
    (torture!("mcl01"), Expect::Answer(400, At::ViaPort(5060))),
    // A response: absorbed, and above all not forwarded to the broadcast address.
    (torture!("bcast"), Expect::Silence),
    // The node refuses Max-Forwards 0 on every request (it would forward it): 483.
    (torture!("zeromf"), Expect::Answer(483, At::ViaPort(5060))),
    (torture!("cparam01"), Expect::Answer(404, At::ViaPort(5060))),
    // Same branch as cparam01 / escnull, but a REGISTER without credentials is answered
    // statelessly (no transaction to absorb it): a fresh, identical decision.
    (torture!("cparam02"), Expect::Answer(404, At::ViaPort(5060))),
    (torture!("regescrt"), Expect::Answer(404, At::ViaPort(5060))),
    (torture!("sdp01"), Expect::Answer(403, At::ViaPort(5060))),
    // 3.4 RFC 2543 syntax: no branch, no Max-Forwards, no Content-Length; an INVITE, 403.
    (torture!("inv2543"), Expect::Answer(403, At::ViaPort(5060))),
];

#[test]
#[ignore = "runs inside the private network namespace sip_torture_rfc4475_in_netns creates"]
fn child_rfc4475() {
    if !in_private_namespace() {
        return;
    }
    assert_eq!(RFC4475.len(), 49);
    KernelCounters::check_witnesses();
    let mut node = Node::start();
    let mut client = Client::new();
    let before = KernelCounters::read();
    let mut answers: BTreeMap<&str, Received> = BTreeMap::new();
    let mut outcomes = Vec::new();
    let mut failures = Vec::new();
    for &((name, bytes), expect) in RFC4475 {
        let (fresh, repeats) = client.exchange(bytes, expect);
        let got: Vec<String> = fresh
            .iter()
            .map(|answer| format!("{} at {}", answer.status(), answer.at))
            .collect();
        let problem = match expect {
            Expect::Answer(status, at) => match &fresh[..] {
                [answer] => {
                    answers.insert(name, answer.clone());
                    client.answer_problem(bytes, answer, status, at)
                }
                _ => Some(format!("expected one {status} at {at:?}")),
            },
            Expect::Repeat(earlier, at) => {
                let first = answers.get(earlier).map(|first| &first.bytes);
                let repeated = repeats
                    .iter()
                    .any(|repeat| Some(&repeat.bytes) == first && repeat.at == client.address(at));
                (!fresh.is_empty() || !repeated).then(|| format!("expected {earlier}'s answer again at {at:?}"))
            }
            Expect::Silence => (!fresh.is_empty()).then(|| "expected no answer".to_owned()),
        };
        let outcome = match expect {
            Expect::Repeat(earlier, _) if problem.is_none() => format!("{earlier}'s answer again"),
            _ if got.is_empty() => "-".to_owned(),
            _ => got.join(", "),
        };
        if let Some(problem) = problem {
            failures.push(format!("{name}: {problem}; got {outcome}"));
        }
        outcomes.push(format!("{name:<11} {outcome}"));
    }
    println!("RFC 4475 at the node:\n{}", outcomes.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The node survived all of it and still answers.
    let (fresh, _) = client.exchange(
        &Request::new("OPTIONS", "alive-after-rfc4475").build(),
        Expect::Answer(200, At::Source),
    );
    assert_eq!(fresh.len(), 1, "{fresh:?}");
    assert_eq!(fresh[0].status(), 200);
    KernelCounters::read().assert_nothing_misrouted(&before);
    node.stop();
}

#[test]
#[ignore = "runs inside the private network namespace sip_bad_input_answers_in_netns creates"]
fn child_bad_input() {
    if !in_private_namespace() {
        return;
    }
    KernelCounters::check_witnesses();
    let mut node = Node::start();
    let mut client = Client::new();
    let before = KernelCounters::read();

    // Valid requests first: the node answers what it can.
    client.expect(
        "OPTIONS",
        &Request::new("OPTIONS", "valid-options").build(),
        200,
        At::Source,
    );
    let mut register = Request::new("REGISTER", "register-unknown");
    register.to = "<sip:1099@127.0.0.1>".to_owned();
    register.uri = "sip:127.0.0.1".to_owned();
    client.expect("REGISTER unknown user", &register.build(), 404, At::Source);
    let mut register = Request::new("REGISTER", "register-no-credentials");
    register.to = "<sip:1001@127.0.0.1>".to_owned();
    register.uri = "sip:127.0.0.1".to_owned();
    register.extra.push("Contact: <sip:1001@127.0.0.2:5060>".to_owned());
    let challenge = client.expect("REGISTER without credentials", &register.build(), 401, At::Source);
    assert!(challenge.message().header(HeaderName::WwwAuthenticate).is_some());

    // Oversize: 513 when addressable, else dropped.
    let mut big = Request::new("OPTIONS", "oversize");
    big.extra.push(format!("X-Padding: {}", "p".repeat(MAX_MESSAGE_SIZE)));
    client.expect("oversize request", &big.build(), 513, At::Source);
    let mut big = Request::new("OPTIONS", "oversize-no-rport");
    big.vias[0] = "SIP/2.0/UDP 192.0.2.44:5099;branch=z9hG4bK-oversize-2".to_owned();
    big.extra.push(format!("X-Padding: {}", "p".repeat(MAX_MESSAGE_SIZE)));
    client.expect("oversize request, foreign Via", &big.build(), 513, At::ViaPort(5099));
    client.silence("oversize garbage", &noise(MAX_MESSAGE_SIZE + 500, 1));
    client.silence("oversize response", &{
        let mut response = b"SIP/2.0 200 OK\r\nCall-ID: x\r\nX-Padding: ".to_vec();
        response.extend(vec![b'p'; MAX_MESSAGE_SIZE]);
        response.extend_from_slice(b"\r\n\r\n");
        response
    });

    // Unknown method: 501 with Allow.
    let answer = client.expect(
        "unknown method",
        &Request::new("FROBNICATE", "unknown-method").build(),
        501,
        At::Source,
    );
    assert!(answer.message().header(HeaderName::Allow).is_some());

    // Max-Forwards 0: 483, for OPTIONS and for an INVITE.
    for method in ["OPTIONS", "INVITE"] {
        let mut request = Request::new(method, &format!("zero-max-forwards-{method}"));
        request.max_forwards = "0";
        client.expect("Max-Forwards 0", &request.build(), 483, At::Source);
    }

    // Loops: the node's own address in a Via below the top (with and without the port).
    for (index, own) in ["127.0.0.1:5060", "127.0.0.1"].into_iter().enumerate() {
        let mut request = Request::new("OPTIONS", &format!("loop-{index}"));
        request
            .vias
            .push(format!("SIP/2.0/UDP {own};branch=z9hG4bK-earlier-{index}"));
        client.expect("loop", &request.build(), 482, At::Source);
    }

    // Addresses named in headers are never used: the answer goes to the source IP, with the
    // source port (rport) or the Via port, whatever host, maddr or received the Via names.
    for (index, via, at) in [
        (
            0,
            "SIP/2.0/UDP 192.0.2.77:5099;maddr=192.0.2.99;received=192.0.2.98",
            At::ViaPort(5099),
        ),
        (1, "SIP/2.0/UDP [2001:db8::1]:5062", At::ViaPort(5062)),
        (2, "SIP/2.0/UDP 198.51.100.7:5098;rport", At::Source),
        (3, "SIP/2.0/UDP 255.255.255.255", At::ViaPort(5060)),
        (4, "SIP/2.0/UDP 224.0.0.1:5070;maddr=224.0.0.1;ttl=1", At::ViaPort(5070)),
    ] {
        let mut request = Request::new("OPTIONS", &format!("foreign-via-{index}"));
        request.vias[0] = format!("{via};branch=z9hG4bK-foreign-{index}");
        request.extra.push("Contact: <sip:9001@192.0.2.66:5060>".to_owned());
        request.extra.push("Record-Route: <sip:192.0.2.67;lr>".to_owned());
        client.expect("foreign Via", &request.build(), 200, at);
    }

    // Malformed but addressable: 400 with a reason (505 for the version).
    let mut request = Request::new("OPTIONS", "bad-cseq");
    request.cseq = "99999999999 OPTIONS".to_owned();
    client.expect("CSeq out of range", &request.build(), 400, At::Source);
    let mut request = Request::new("OPTIONS", "bad-version");
    request.version = "SIP/3.0";
    client.expect("SIP/3.0", &request.build(), 505, At::Source);
    let mut request = Request::new("OPTIONS", "long-content-length");
    request.extra.push("Content-Length: 1000".to_owned());
    request.content_length = false;
    client.expect("Content-Length beyond the datagram", &request.build(), 400, At::Source);

    // Garbage: nothing to address an answer to, so no answer.
    let mut no_call_id = Request::new("OPTIONS", "no-call-id");
    no_call_id.call_id = String::new();
    for (what, bytes) in [
        ("empty datagram", Vec::new()),
        ("keep-alive", b"\r\n\r\n".to_vec()),
        ("random bytes", noise(700, 2)),
        (
            "request line only",
            b"OPTIONS sip:tcf-1@127.0.0.1 SIP/2.0\r\n\r\n".to_vec(),
        ),
        ("truncated request line", b"OPTIONS".to_vec()),
        ("no Call-ID", no_call_id.build()),
        ("HTTP", b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".to_vec()),
        ("NUL bytes", vec![0; 64]),
        ("RTP", [&[0x80u8, 0x00, 0x12, 0x34][..], &[0; 168]].concat()),
        (
            "stray response",
            b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP 192.0.2.3\r\n\r\n".to_vec(),
        ),
    ] {
        client.silence(what, &bytes);
    }

    // Still alive and answering.
    client.expect(
        "OPTIONS after the garbage",
        &Request::new("OPTIONS", "alive-1").build(),
        200,
        At::Source,
    );

    // The flood: a warm-up, then 10 000 bad datagrams; RSS must stay flat.
    let warm_up = client.flood(0..1_000);
    let rss_before = node.rss_kib();
    let started = Instant::now();
    let answered = client.flood(1_000..11_000);
    let flood_time = started.elapsed();
    let rss_after = node.rss_kib();
    node.assert_alive();
    client.expect(
        "OPTIONS after the flood",
        &Request::new("OPTIONS", "alive-2").build(),
        200,
        At::Source,
    );
    println!(
        "flood: 10 000 datagrams in {flood_time:?}, answers {answered:?} (warm-up {warm_up:?}); \
         VmRSS {rss_before} kB -> {rss_after} kB"
    );
    assert!(
        rss_after <= rss_before + 8 * 1024,
        "VmRSS grew from {rss_before} kB to {rss_after} kB over 10 000 bad datagrams"
    );
    KernelCounters::read().assert_nothing_misrouted(&before);
    node.stop();
}

// =============================================================================================
// The node
// =============================================================================================

/// A `floorcast` process inside the namespace, in its own scratch directory.
struct Node {
    process: Child,
    lines: Arc<Mutex<Vec<String>>>,
    _directory: tempfile::TempDir,
}

impl Node {
    #[allow(clippy::zombie_processes)] // Drop kills and waits
    fn start() -> Node {
        let directory = tempfile::tempdir().unwrap();
        let config = directory.path().join("floorcast.toml");
        std::fs::write(
            &config,
            format!(
                "[node]\nname = \"tcf-1\"\n\
                 [media]\nport_min = 40000\nport_max = 40099\nworkers = 1\n\
                 [metrics]\nlisten = \"off\"\n\
                 [sip]\nlisten = \"{NODE}\"\nmax_message_size = {MAX_MESSAGE_SIZE}\n"
            ),
        )
        .unwrap();
        let mut command = Command::new(BINARY);
        command
            .current_dir(directory.path())
            .arg("run")
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info,floorcast=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // SAFETY: prctl is async-signal-safe; it only asks the kernel to end the node if the
        // test thread that started it dies (a killed child run must not leave it behind).
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut process = command.spawn().unwrap();
        let stderr = process.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (started, started_receiver) = mpsc::channel();
        let collected = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("floorcast node running") {
                    let _ = started.send(());
                }
                collected.lock().unwrap().push(line);
            }
        });
        let node = Node {
            process,
            lines,
            _directory: directory,
        };
        if started_receiver.recv_timeout(Duration::from_secs(15)).is_err() {
            panic!("the node did not start:\n{}", node.lines.lock().unwrap().join("\n"));
        }
        node
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.process.id())).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    fn assert_alive(&mut self) {
        if let Some(status) = self.process.try_wait().unwrap() {
            panic!("the node exited ({status}):\n{}", self.lines.lock().unwrap().join("\n"));
        }
    }

    /// Checks the node is alive, stops it with SIGTERM, and checks it exited cleanly, never
    /// panicked and never failed to send (in a loopback-only namespace, any send to a foreign
    /// address fails, and the node logs each failed send).
    fn stop(&mut self) {
        self.assert_alive();
        // SAFETY: signalling our own child process by id.
        unsafe { libc::kill(self.process.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        let status = loop {
            if let Some(status) = self.process.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "the node did not stop within 5 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        };
        // The reader thread sees end of file once the process is gone.
        std::thread::sleep(Duration::from_millis(50));
        let lines = self.lines.lock().unwrap();
        let log = lines.join("\n");
        assert!(status.success(), "the node exited with {status}:\n{log}");
        assert!(!log.contains("panicked"), "the node panicked:\n{log}");
        assert!(
            !log.contains("SIP send failed"),
            "the node tried to send somewhere unreachable:\n{log}"
        );
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.process.try_wait().ok().flatten().is_none() {
            let _ = self.process.kill();
            let _ = self.process.wait();
        }
    }
}

/// The namespace's kernel counters that betray a datagram sent anywhere but to a listening
/// loopback socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct KernelCounters {
    /// `Ip: OutNoRoutes`: sends to addresses with no route (anything not loopback, here).
    ip_no_route: u64,
    /// `Ip6OutNoRoutes`: the same for IPv6.
    ip6_no_route: u64,
    /// `Udp: NoPorts`: datagrams to a loopback port with no socket.
    udp_no_port: u64,
}

impl KernelCounters {
    fn read() -> KernelCounters {
        let snmp = std::fs::read_to_string("/proc/self/net/snmp").unwrap();
        let snmp6 = std::fs::read_to_string("/proc/self/net/snmp6").unwrap_or_default();
        KernelCounters {
            ip_no_route: snmp_value(&snmp, "Ip:", "OutNoRoutes"),
            ip6_no_route: snmp6
                .lines()
                .find_map(|line| line.strip_prefix("Ip6OutNoRoutes"))
                .map_or(0, |value| value.trim().parse().unwrap()),
            udp_no_port: snmp_value(&snmp, "Udp:", "NoPorts"),
        }
    }

    /// Shows the witnesses work in this namespace: a send to a foreign address fails for want
    /// of a route and is counted, and so is a datagram to a loopback port nobody listens on.
    fn check_witnesses() {
        let before = KernelCounters::read();
        let socket = UdpSocket::bind((CLIENT_IP, 0)).unwrap();
        let error = socket.send_to(b"witness", ("192.0.2.1", 5060)).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::ENETUNREACH), "{error}");
        socket.send_to(b"witness", (CLIENT_IP, 9)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            let now = KernelCounters::read();
            if now.ip_no_route > before.ip_no_route && now.udp_no_port > before.udp_no_port {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the kernel counters did not move: {before:?} {now:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn assert_nothing_misrouted(&self, before: &KernelCounters) {
        assert_eq!(
            *self, *before,
            "a datagram went to an unroutable address or an unexpected port"
        );
    }
}

/// A counter of `/proc/net/snmp`: a line of names, then a line of values, with the same prefix.
fn snmp_value(snmp: &str, section: &str, name: &str) -> u64 {
    let mut rows = snmp.lines().filter(|line| line.starts_with(section));
    let names = rows.next().expect("names");
    let values = rows.next().expect("values");
    let index = names
        .split_whitespace()
        .position(|field| field == name)
        .expect("counter");
    values.split_whitespace().nth(index).unwrap().parse().unwrap()
}

// =============================================================================================
// The client
// =============================================================================================

/// A datagram the client received.
#[derive(Debug, Clone)]
struct Received {
    /// The client socket it arrived at.
    at: SocketAddr,
    bytes: Vec<u8>,
}

impl Received {
    /// The answer, parsed. Not validated: an answer copies the request's Vias, malformed or not.
    fn message(&self) -> Message {
        Message::parse_datagram_unvalidated(Bytes::from(self.bytes.clone())).expect("the node's answer parses")
    }

    fn status(&self) -> u16 {
        self.message().status().expect("a response")
    }
}

/// The client: sends from 127.0.0.2 (an ephemeral port) and listens on every Via port there.
struct Client {
    sender: UdpSocket,
    listeners: Vec<UdpSocket>,
    /// Every answer so far: the node may send any of them again (a retransmitted INVITE
    /// response, or a request matching an existing transaction).
    seen: Vec<Received>,
}

impl Client {
    fn new() -> Client {
        let sender = UdpSocket::bind((CLIENT_IP, 0)).unwrap();
        let listeners: Vec<UdpSocket> = VIA_PORTS
            .iter()
            .map(|&port| UdpSocket::bind((CLIENT_IP, port)).unwrap())
            .collect();
        for socket in listeners.iter().chain([&sender]) {
            socket.set_nonblocking(true).unwrap();
        }
        Client {
            sender,
            listeners,
            seen: Vec::new(),
        }
    }

    fn address(&self, at: At) -> SocketAddr {
        match at {
            At::Source => self.sender.local_addr().unwrap(),
            At::ViaPort(port) => SocketAddr::from((CLIENT_IP, port)),
        }
    }

    /// Everything waiting on any client socket.
    fn receive(&self) -> Vec<Received> {
        let mut received = Vec::new();
        let mut buffer = vec![0u8; 65_536];
        for socket in [&self.sender].into_iter().chain(&self.listeners) {
            loop {
                match socket.recv_from(&mut buffer) {
                    Ok((length, from)) => {
                        assert_eq!(from, NODE, "a datagram from someone else than the node");
                        received.push(Received {
                            at: socket.local_addr().unwrap(),
                            bytes: buffer[..length].to_vec(),
                        });
                    }
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(error) => panic!("receive: {error}"),
                }
            }
        }
        received
    }

    /// Sends `bytes` and collects what comes back: new answers, and repeats of earlier ones.
    fn exchange(&mut self, bytes: &[u8], expect: Expect) -> (Vec<Received>, Vec<Received>) {
        self.sender.send_to(bytes, NODE).unwrap();
        let start = Instant::now();
        let mut fresh = Vec::new();
        let mut repeats = Vec::new();
        let mut answered_at = None;
        loop {
            for received in self.receive() {
                if self.seen.iter().any(|seen| seen.bytes == received.bytes) {
                    repeats.push(received);
                } else {
                    answered_at.get_or_insert_with(Instant::now);
                    fresh.push(received);
                }
            }
            let done = match expect {
                Expect::Answer(..) => answered_at.is_some_and(|at| at.elapsed() >= GRACE),
                Expect::Repeat(..) => !repeats.is_empty() && start.elapsed() >= GRACE,
                Expect::Silence => false,
            };
            let limit = match expect {
                Expect::Silence => SILENCE_WAIT,
                _ => ANSWER_WAIT,
            };
            if done || start.elapsed() >= limit {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        self.seen.extend(fresh.iter().cloned());
        (fresh, repeats)
    }

    /// What is wrong with an answer, if anything: status, reason phrase, where it went, and
    /// whether it answers `request` (its Call-ID, when it has one, is the request's).
    fn answer_problem(&self, request: &[u8], answer: &Received, status: u16, at: At) -> Option<String> {
        let message = answer.message();
        if message.status() != Some(status) {
            return Some(format!(
                "expected {status}:\n{}",
                String::from_utf8_lossy(&answer.bytes)
            ));
        }
        if !message.reason_phrase().is_some_and(|reason| !reason.is_empty()) {
            return Some("no reason phrase".to_owned());
        }
        if answer.at != self.address(at) {
            return Some(format!("answer sent to {}, not {:?}", answer.at, at));
        }
        match message.call_id() {
            Ok(call_id) if memchr::memmem::find(request, call_id.as_bytes()).is_none() => {
                Some(format!("answer for another request (Call-ID {call_id})"))
            }
            _ => None,
        }
    }

    /// Sends a request that must be answered `status` at `at`; returns the answer.
    fn expect(&mut self, what: &str, request: &[u8], status: u16, at: At) -> Received {
        let (fresh, _) = self.exchange(request, Expect::Answer(status, at));
        assert_eq!(fresh.len(), 1, "{what}: expected one {status}, got {fresh:?}");
        if let Some(problem) = self.answer_problem(request, &fresh[0], status, at) {
            panic!("{what}: {problem}");
        }
        fresh[0].clone()
    }

    /// Sends a datagram that must go unanswered.
    fn silence(&mut self, what: &str, bytes: &[u8]) {
        let (fresh, _) = self.exchange(bytes, Expect::Silence);
        assert!(fresh.is_empty(), "{what}: expected no answer, got {fresh:?}");
    }

    /// Sends the flood datagrams `range` in bursts, waiting after each burst for its answers
    /// (which paces the flood to the node); checks every answerable one was answered with its
    /// status and nothing else came. Returns the count per status.
    fn flood(&mut self, range: std::ops::Range<usize>) -> BTreeMap<u16, usize> {
        const BURST: usize = 20;
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut expected: BTreeMap<u16, usize> = BTreeMap::new();
        let mut answered: BTreeMap<u16, usize> = BTreeMap::new();
        let indices: Vec<usize> = range.collect();
        for burst in indices.chunks(BURST) {
            let mut waiting = 0;
            for &index in burst {
                let (bytes, status) = flood_datagram(index);
                if let Some(status) = status {
                    *expected.entry(status).or_default() += 1;
                    waiting += 1;
                }
                self.sender.send_to(&bytes, NODE).unwrap();
            }
            while waiting > 0 {
                for received in self.receive() {
                    if self.seen.iter().any(|seen| seen.bytes == received.bytes) {
                        continue; // a retransmission of an earlier answer
                    }
                    assert_eq!(received.at, self.address(At::Source), "flood answer misrouted");
                    *answered.entry(received.status()).or_default() += 1;
                    waiting -= 1;
                }
                assert!(
                    Instant::now() < deadline,
                    "flood answers missing after 20 s: {answered:?} of {expected:?}"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        // Nothing answered that should not have been.
        std::thread::sleep(GRACE);
        assert!(
            self.receive()
                .iter()
                .all(|received| self.seen.iter().any(|seen| seen.bytes == received.bytes)),
            "more flood answers than answerable datagrams"
        );
        assert_eq!(answered, expected);
        answered
    }
}

/// Flood datagram `index` and the status it must draw (`None`: no answer). Every kind of bad
/// input the node answers statelessly or drops, none that opens a transaction.
fn flood_datagram(index: usize) -> (Vec<u8>, Option<u16>) {
    let call_id = format!("flood-{index}");
    let mut request = Request::new("OPTIONS", &call_id);
    match index % 10 {
        0 => (noise(1 + index % 1400, index as u64), None),
        1 => {
            request.cseq = "99999999999 OPTIONS".to_owned();
            (request.build(), Some(400))
        }
        2 => {
            request
                .extra
                .push(format!("X-Padding: {}", "p".repeat(MAX_MESSAGE_SIZE)));
            (request.build(), Some(513))
        }
        3 => {
            request.max_forwards = "0";
            (request.build(), Some(483))
        }
        4 => {
            request
                .vias
                .push(format!("SIP/2.0/UDP {NODE};branch=z9hG4bK-{call_id}-0"));
            (request.build(), Some(482))
        }
        5 => {
            request.call_id = String::new();
            (request.build(), None)
        }
        6 => (
            format!("SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.9\r\nCSeq: x\r\nCall-ID: {call_id}\r\n\r\n")
                .into_bytes(),
            None,
        ),
        7 => (noise(MAX_MESSAGE_SIZE + 1 + index % 2000, index as u64), None),
        8 => {
            request.vias[0] = format!("SIP/2.0/UDP 192.0.2.15;;,;,,;branch=z9hG4bK-{call_id}");
            (request.build(), Some(400))
        }
        _ => {
            // Cut before the Call-ID: nothing left to address an answer to.
            let mut bytes = request.build();
            let call_id_at = memchr::memmem::find(&bytes, b"Call-ID").unwrap();
            bytes.truncate(index % call_id_at);
            (bytes, None)
        }
    }
}

/// `length` pseudo-random bytes (no valid SIP start line: the first byte is never a letter).
fn noise(length: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut bytes: Vec<u8> = (0..length)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    if let Some(first) = bytes.first_mut() {
        *first = 0xff;
    }
    bytes
}

/// A request from the client to the node, with fields to spoil.
struct Request {
    method: &'static str,
    uri: String,
    version: &'static str,
    vias: Vec<String>,
    max_forwards: &'static str,
    to: String,
    call_id: String,
    cseq: String,
    extra: Vec<String>,
    content_length: bool,
}

impl Request {
    /// A well-formed request with a unique branch, `rport` in its Via.
    fn new(method: &'static str, call_id: &str) -> Request {
        Request {
            method,
            uri: "sip:tcf-1@127.0.0.1:5060".to_owned(),
            version: "SIP/2.0",
            vias: vec![format!("SIP/2.0/UDP {CLIENT_IP}:5060;branch=z9hG4bK-{call_id};rport")],
            max_forwards: "70",
            to: "<sip:tcf-1@127.0.0.1>".to_owned(),
            call_id: call_id.to_owned(),
            cseq: format!("1 {method}"),
            extra: Vec::new(),
            content_length: true,
        }
    }

    fn build(&self) -> Vec<u8> {
        let mut text = format!("{} {} {}\r\n", self.method, self.uri, self.version);
        for via in &self.vias {
            text += &format!("Via: {via}\r\n");
        }
        text += &format!("Max-Forwards: {}\r\n", self.max_forwards);
        text += &format!("From: <sip:9001@{CLIENT_IP}>;tag=from-{}\r\n", self.call_id);
        text += &format!("To: {}\r\n", self.to);
        if !self.call_id.is_empty() {
            text += &format!("Call-ID: {}\r\n", self.call_id);
        }
        text += &format!("CSeq: {}\r\n", self.cseq);
        for header in &self.extra {
            text += &format!("{header}\r\n");
        }
        if self.content_length {
            text += "Content-Length: 0\r\n";
        }
        text += "\r\n";
        text.into_bytes()
    }
}
