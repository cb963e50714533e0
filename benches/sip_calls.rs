//! Single-call throughput across two nodes, setup latency at half the maximum rate, and the
//! nodes' CPU time per call (issue 4: at most 250 µs of node CPU per call, all hops together;
//! p99 setup latency under 5 ms at half the maximum rate).
//!
//! Two nodes run as their own processes (the `floorcast` binary Cargo builds for this bench,
//! with the bench profile) on configs written to a temporary directory, SIP on loopback ports:
//! `tcf-1` homes and serves the callers 10000-19999, `tcf-2` homes and serves the callees
//! 20000-29999 (one network file, `auth = false` between them, one subscribers file, every
//! password known). A call takes the path caller → tcf-1 (caller serving + caller home) →
//! tcf-2 (callee home + callee serving) → callee; with `calls.anchoring = "edge"` both hops face
//! a terminal, so each allocates a relay bridge with two legs per call (the bench checks that
//! the SDP each terminal receives points into that hop's relay port range). Each node has one
//! media worker, metrics on a loopback port (read only between phases), log level warn. Node
//! CPU time is the sum of the first field of `/proc/<pid>/task/*/schedstat` (ns, every thread),
//! read before and after each measured window; the load generator shares the two cores and its
//! own cost is shown apart.
//!
//! The load generator (this process, one thread) plays every terminal: 4 caller sockets and 4
//! callee sockets, 4,096 callers and 4,096 callees registered beforehand with digest
//! (REGISTER → 401 → REGISTER with `Authorization` → 200). A call, as in `tests/calls.rs`:
//!
//! ```text
//! caller                 tcf-1                  tcf-2                  callee
//!   INVITE (SDP) ───────▶  100, INVITE ───────▶  100, INVITE ───────▶
//!   ◀─────── 180  ◀──────────────── 180  ◀──────────────── 180 (sent at once)
//!   ◀─ 200 (SDP)  ◀────────── 200 (SDP)  ◀────────── 200 (SDP) (sent at once)
//!   ACK, BYE ───────────▶  ACK (on its 200)      ACK (on its 200) ───▶
//!   ◀── 200 (BYE)          BYE ───────────────▶  200, BYE ──────────▶
//!                                                ◀──────────── 200 (BYE)
//! ```
//!
//! A call counts when the caller has the 200 to its BYE and the callee has had the ACK and the
//! BYE (and answered it). The caller sends BYE right after its ACK: the figure is the cost of
//! setting up and tearing down a call, not of holding one. Setup latency is INVITE sent → 200
//! received by the caller (it includes the callee's answering, done by this same thread), to
//! the kernel's receive timestamp of the 200 (`SO_TIMESTAMPNS`) — the verdict's figure — and to
//! when this thread read it; the two differ by this thread's own delay in getting round to it. Any other final response, an SDP not anchored at the hop, and any call
//! not finished within 2 s count as errors; retransmissions seen by the terminals are counted.
//!
//! Phases (each: warm-up, measured window, drain; bounded in time and to 500,000 calls):
//!
//! 1. maximum rate: a fixed number of calls in flight (64), each slot starting its next call
//!    (next users) as soon as the previous one is complete;
//! 2. fixed offered rate of half the rate phase 1 measured, open loop (calls start on a
//!    schedule whatever the answers do; 512 slots): the setup latency distribution. Against
//!    the nodes its warm-up lasts 64·T1 + 1 s (33 s): the transactions of phase 1 expire
//!    meanwhile and the transaction tables stop growing. While a node's tables grow (for 32 s
//!    after its call rate rises) each doubling of a hash map of 30,000–100,000 transactions
//!    stalls its SIP thread for 10–30 ms (perf: `TransactionLayer::insert` →
//!    `reserve_rehash`), which shows as a latency spike for every call in flight; phase 1
//!    includes that growth (about 2% of its CPU), phase 2 measures the steady state.
//!
//! A baseline runs in the same run under the same two loads, as in `benches/sip_register.rs`,
//! each of its phases right after the same phase against the nodes (the machine is shared and
//! its load drifts within a minute):
//! two minimal stateless responders on two threads of this process standing in for the two
//! nodes, receiving and sending exactly the datagrams the two nodes do per call (7 + 6 received,
//! 7 + 7 sent): each answers 100 to an INVITE and 200 to a BYE from canned text, forwards
//! requests (the first to the second, the second to the callee socket of the Request-URI user)
//! and responses (the second to the first, the first to the top Via), unchanged; no SIP parsing
//! beyond line splitting, no state, no media. It is the kernel's and the syscalls' share of a
//! call on this machine today.
//!
//! Timers and limits: unlike REGISTER, T1 is on the measured path of a call: it paces the
//! retransmission of an INVITE not yet answered provisionally (timer A), of a 2xx until its
//! ACK, and of a BYE not yet answered (timer E). The nodes therefore run with the production
//! T1 of 500 ms, so nothing is retransmitted unless a datagram is lost or a process stalls for
//! half a second. A node keeps every completed transaction for 64·T1 = 32 s (RFC 6026 timers L
//! and M for the two INVITE transactions, J for the BYE server transaction) and the BYE client
//! transaction for T4 = 5 s: about 3 · 32 + 5 = 101 transaction-seconds per call per node, so
//! the default `sip.max_transactions` of 65,536 would cap a node at ~650 calls/s (503 beyond).
//! The bench sets `sip.max_transactions = 1,048,576` (room for ~10,000 calls/s; docs/config.md
//! gives the rule for REGISTER, 32·N, for calls it is ~101·N per node). A small T1 as in `sip_register`
//! (2 ms, completed transactions gone after 128 ms) is not used: the nodes would retransmit
//! whenever a hop is descheduled for 2 ms, which on two shared cores is all the time, and that
//! runs into a bug (BENCHMARKS.md): a 2xx the next hop retransmits after the node has answered
//! its own side is taken for an answer after CANCEL and the call is torn down (the caller's BYE
//! then gets 481). `SIP_CALLS_T1_MS` overrides T1 (2 shows it). `SIP_BENCH_NODE=/path/to/floorcast`
//! runs another build of the node (an A/B run).
//!
//! Relay ports: each leg takes a port pair and a freed pair is quarantined
//! (`media.port_quarantine_ms`, 5 s by default), so at R calls/s a node holds about 2·R·q
//! pairs in quarantine. The two nodes get 10000-21383 and 21384-32767 (5,692 pairs each, below
//! the kernel's ephemeral range) with a quarantine of 200 ms: room for ~12,000 calls/s. The
//! quarantine only delays reuse; it costs nothing per call.
//!
//! Run: `cargo bench --bench sip_calls` (about two minutes: twice 33 s waiting for the nodes'
//! transactions to expire, before phase 2 and before the leftover check). `SIP_BENCH_QUICK=1`
//! shortens every phase to one second and skips both waits. `SIP_CALLS_WINDOW` overrides the
//! calls in flight of phase 1, `SIP_CALLS_LOG` the nodes' log level, `SIP_CALLS_FRACTION` the share of
//! phase 1's rate that phase 2 offers (0.5 by default), `SIP_CALLS_RT` the nodes'
//! `sip.realtime_priority` (the node's default when not set; 0 turns it off). Results go to stdout as
//! Markdown tables (BENCHMARKS.md); progress and the nodes' pids to stderr.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, VecDeque};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use floorcast::io::{stamp, udp};
use floorcast::sip::{digest, HeaderName, Message};
use hdrhistogram::Histogram;

/// Calls in flight in the maximum-rate phase (one per slot).
const WINDOW: usize = 64;
/// Slots of the generator (the open-loop phase may use all of them).
const POOL: usize = 512;
/// Sockets per side (callers, callees).
const SOCKETS: usize = 4;
/// Users per side: callers 10000.., callees 20000..; slot `s` uses users `s + k·POOL`.
const USERS: usize = 4096;
const CALLER_BASE: usize = 10_000;
const CALLEE_BASE: usize = 20_000;
/// The provisioned password of every user.
const PASSWORD: &str = "bench-secret";
/// A call not complete within this time is an error.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Most calls started per phase.
const MAX_CALLS_PER_PHASE: u64 = 500_000;
/// T1 of the nodes (see the module docs).
const BENCH_T1_MS: u64 = 500;
/// Live transactions allowed per node (see the module docs).
const MAX_TRANSACTIONS: usize = 1 << 20;
/// Relay port ranges of the two nodes, and the quarantine of a freed pair.
const MEDIA_RANGES: [(u16, u16); 2] = [(10_000, 21_383), (21_384, 32_767)];
const PORT_QUARANTINE_MS: u64 = 200;
/// The issue's targets.
const TARGET_CPU_US: f64 = 250.0;
const TARGET_P99_MS: f64 = 5.0;

/// The share of phase 1's maximum that phase 2 offers: one half (the issue's target), or
/// `SIP_CALLS_FRACTION` (to see how the latency grows with the load).
fn open_fraction() -> f64 {
    std::env::var("SIP_CALLS_FRACTION")
        .ok()
        .and_then(|value| value.parse::<f64>().ok())
        .filter(|fraction| *fraction > 0.0 && *fraction <= 1.0)
        .unwrap_or(0.5)
}

/// The node binary: the one Cargo built for this bench, or `SIP_BENCH_NODE` (another build of
/// the node, for an A/B run).
fn node_binary() -> String {
    std::env::var("SIP_BENCH_NODE").unwrap_or_else(|_| env!("CARGO_BIN_EXE_floorcast").to_owned())
}

fn quick() -> bool {
    std::env::var_os("SIP_BENCH_QUICK").is_some()
}

fn measured_window() -> Duration {
    if quick() {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(5)
    }
}

fn warm_up() -> Duration {
    if quick() {
        Duration::from_millis(300)
    } else {
        Duration::from_secs(1)
    }
}

/// The warm-up of the latency phase against the nodes: long enough for every transaction of
/// the maximum-rate phase to expire (64·T1), so the nodes' transaction tables have reached the
/// size they keep at this rate and no longer grow (growing a table of 30,000–100,000 entries
/// stalls the SIP thread for 10–30 ms, see the module docs). Quick runs skip it.
fn steady_warm_up(t1_ms: u64) -> Duration {
    if quick() {
        warm_up()
    } else {
        (Duration::from_millis(64 * t1_ms) + Duration::from_secs(1)).max(warm_up())
    }
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|value| value.trim().parse().ok())
}

fn t1_ms() -> u64 {
    env_number("SIP_CALLS_T1_MS")
        .filter(|t1| (1..=10_000).contains(t1))
        .unwrap_or(BENCH_T1_MS)
}

/// How long after the last call every completed transaction (64·T1, the BYE client's T4 = 5 s)
/// and every quarantined port should be gone.
fn quiet_time(t1_ms: u64) -> Duration {
    Duration::from_millis(PORT_QUARANTINE_MS.max(64 * t1_ms).max(5000) + 500).min(Duration::from_secs(40))
}

fn window_size() -> usize {
    env_number("SIP_CALLS_WINDOW")
        .map(|window| (window as usize).clamp(1, POOL))
        .unwrap_or(WINDOW)
}

// ---- the node processes -----------------------------------------------------------------------

/// CPU time of a process from /proc, per thread name and in total.
#[derive(Debug, Clone, Default)]
struct CpuSample {
    /// Sum of the live threads' run time (schedstat, ns).
    total_ns: u64,
    /// The same per thread name (threads of one name added up).
    by_thread: BTreeMap<String, u64>,
    /// utime + stime of the whole process (clock ticks; includes exited threads), a cross-check.
    ticks: u64,
}

impl CpuSample {
    fn of(pid: u32) -> CpuSample {
        let mut sample = CpuSample::default();
        let base = format!("/proc/{pid}");
        if let Ok(tasks) = std::fs::read_dir(format!("{base}/task")) {
            for task in tasks.flatten() {
                let path = task.path();
                let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
                let ns = first_number(&path.join("schedstat"));
                sample.total_ns += ns;
                *sample.by_thread.entry(name.trim().to_owned()).or_default() += ns;
            }
        }
        let stat = std::fs::read_to_string(format!("{base}/stat")).unwrap_or_default();
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        if let Some((_, rest)) = stat.rsplit_once(')') {
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let field = |index: usize| {
                fields
                    .get(index)
                    .and_then(|value| value.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            sample.ticks = field(11) + field(12);
        }
        sample
    }

    /// The threads of this process named `name`.
    fn of_own_thread(name: &str) -> CpuSample {
        let mut sample = CpuSample::default();
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return sample;
        };
        for task in tasks.flatten() {
            let path = task.path();
            let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
            if comm.trim() != name {
                continue;
            }
            let ns = first_number(&path.join("schedstat"));
            sample.total_ns += ns;
            *sample.by_thread.entry(name.to_owned()).or_default() += ns;
        }
        sample
    }

    /// `later - self`, per thread name (saturating: a thread may have exited meanwhile).
    fn until(&self, later: &CpuSample) -> CpuSample {
        CpuSample {
            total_ns: later.total_ns.saturating_sub(self.total_ns),
            by_thread: later
                .by_thread
                .iter()
                .map(|(name, ns)| {
                    (
                        name.clone(),
                        ns.saturating_sub(self.by_thread.get(name).copied().unwrap_or(0)),
                    )
                })
                .collect(),
            ticks: later.ticks.saturating_sub(self.ticks),
        }
    }
}

fn first_number(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .and_then(|ns| ns.parse().ok())
        .unwrap_or(0)
}

/// The kernel's count of UDP datagrams dropped for want of receive-buffer room (system-wide,
/// `/proc/net/snmp` `Udp: RcvbufErrors`).
fn udp_receive_buffer_drops() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut lines = snmp.lines().filter(|line| line.starts_with("Udp: "));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "RcvbufErrors")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0)
}

/// CPU time the whole machine spent busy so far (ns, every CPU: user, nice, system, irq,
/// softirq and steal of `/proc/stat`).
fn machine_busy_ns() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().next() else { return 0 };
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|value| value.parse().unwrap_or(0))
        .collect();
    let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|index| fields.get(*index)).sum();
    busy * 1_000_000_000 / clock_ticks_per_second()
}

/// Run time of every thread of this process so far (ns).
fn own_process_cpu_ns() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .map(|task| first_number(&task.path().join("schedstat")))
        .sum()
}

/// Run time of the calling thread so far (ns).
fn own_thread_cpu_ns() -> u64 {
    first_number(Path::new("/proc/thread-self/schedstat"))
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as u64
    } else {
        100
    }
}

fn free_udp_port() -> u16 {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap().port()
}

fn free_tcp_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A floorcast node in its own process, stopped (SIGTERM) on drop.
struct NodeProcess {
    child: Child,
    sip: SocketAddr,
    metrics: SocketAddr,
}

impl NodeProcess {
    /// Starts node `index` (0 or 1) of the two-node network in `directory` and waits until it
    /// answers OPTIONS.
    fn start(directory: &Path, index: usize, sips: [SocketAddr; 2], t1_ms: u64) -> NodeProcess {
        let name = format!("tcf-{}", index + 1);
        let sip = sips[index];
        let metrics = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
        let config = directory.join(format!("{name}.toml"));
        let (port_min, port_max) = MEDIA_RANGES[index];
        std::fs::write(
            &config,
            format!(
                "[node]\nname = \"{name}\"\n\
                 [log]\nlevel = \"{log}\"\n\
                 [media]\nport_min = {port_min}\nport_max = {port_max}\nport_quarantine_ms = {PORT_QUARANTINE_MS}\n\
                 workers = 1\n\
                 [metrics]\nlisten = \"{metrics}\"\n\
                 [sip]\nlisten = \"{sip}\"\nrealm = \"bench\"\nt1_ms = {t1_ms}\nt2_ms = {t2_ms}\n\
                 max_transactions = {MAX_TRANSACTIONS}\n{realtime}\
                 [calls]\nanchoring = \"edge\"\n\
                 [provisioning]\nnetwork = \"{network}\"\nsubscribers = \"{subscribers}\"\n\
                 [store]\npath = \"{store}\"\n",
                t2_ms = t1_ms.max(4000),
                realtime = env_number("SIP_CALLS_RT")
                    .map(|priority| format!("realtime_priority = {}\n", priority.min(99)))
                    .unwrap_or_default(),
                log = std::env::var("SIP_CALLS_LOG").unwrap_or_else(|_| "warn".to_owned()),
                network = directory.join("network.toml").display(),
                subscribers = directory.join("subscribers.toml").display(),
                store = directory.join(format!("{name}.redb")).display(),
            ),
        )
        .unwrap();
        let child = Command::new(node_binary())
            .arg("run")
            .arg("--config")
            .arg(&config)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the floorcast binary starts");
        let mut node = NodeProcess { child, sip, metrics };
        node.wait_ready();
        node
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends plain OPTIONS until one is answered (the node binds its SIP socket last).
    fn wait_ready(&mut self) {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let me = socket.local_addr().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut buffer = vec![0u8; 65_536];
        for attempt in 0u32.. {
            assert!(Instant::now() < deadline, "the node did not answer OPTIONS within 20 s");
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the node exited at start ({status}); its log is above");
            }
            let text = format!(
                "OPTIONS sip:{server} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKready{attempt};rport\r\n\
                 Max-Forwards: 70\r\nFrom: <sip:probe@{me}>;tag=probe\r\nTo: <sip:{server}>\r\n\
                 Call-ID: ready{attempt}@bench\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
                server = self.sip
            );
            socket.send_to(text.as_bytes(), self.sip).unwrap();
            if let Ok((length, _)) = socket.recv_from(&mut buffer) {
                if let Ok(message) = Message::parse_datagram(Bytes::copy_from_slice(&buffer[..length])) {
                    if message.status() == Some(200) {
                        return;
                    }
                }
            }
        }
    }

    /// The node's gauges (`floorcast_sip_transactions`, `floorcast_bridges`, ...) by name.
    fn gauges(&self) -> BTreeMap<String, f64> {
        let mut gauges = BTreeMap::new();
        let Ok(mut stream) = TcpStream::connect_timeout(&self.metrics, Duration::from_secs(2)) else {
            return gauges;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let request = format!(
            "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.metrics
        );
        if stream.write_all(request.as_bytes()).is_err() {
            return gauges;
        }
        let mut text = String::new();
        let _ = stream.read_to_string(&mut text);
        for line in text.lines() {
            if line.starts_with('#') {
                continue;
            }
            let (Some(name), Some(value)) = (
                line.split(['{', ' ']).next(),
                line.rsplit(' ').next().and_then(|value| value.parse::<f64>().ok()),
            ) else {
                continue;
            };
            if matches!(
                name,
                "floorcast_sip_transactions" | "floorcast_bridges" | "floorcast_legs" | "floorcast_sip_bindings"
            ) {
                gauges.insert(name.to_owned(), value);
            }
        }
        gauges
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) of our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The two nodes (stopped before their directory is removed).
struct Pair {
    nodes: [NodeProcess; 2],
    _directory: tempfile::TempDir,
}

impl Pair {
    /// Writes the network and subscribers files and starts tcf-2, then tcf-1 (so tcf-1's first
    /// heartbeat finds tcf-2 up).
    fn start(t1_ms: u64) -> Pair {
        let directory = tempfile::tempdir().unwrap();
        let sips = [0, 1].map(|_| SocketAddr::from(([127, 0, 0, 1], free_udp_port())));
        std::fs::write(
            directory.path().join("network.toml"),
            format!(
                "[[tcf]]\nname = \"tcf-1\"\nsip = \"{}\"\nusers = [\"10000-19999\"]\nauth = false\nsecret = \"one\"\n\n\
                 [[tcf]]\nname = \"tcf-2\"\nsip = \"{}\"\nusers = [\"20000-29999\"]\nauth = false\nsecret = \"two\"\n",
                sips[0], sips[1]
            ),
        )
        .unwrap();
        std::fs::write(
            directory.path().join("subscribers.toml"),
            format!(
                "[[user]]\nnumber = \"10000-19999\"\npassword = \"{PASSWORD}\"\n\n\
                 [[user]]\nnumber = \"20000-29999\"\npassword = \"{PASSWORD}\"\n"
            ),
        )
        .unwrap();
        let second = NodeProcess::start(directory.path(), 1, sips, t1_ms);
        let first = NodeProcess::start(directory.path(), 0, sips, t1_ms);
        Pair {
            nodes: [first, second],
            _directory: directory,
        }
    }
}

/// What the calls are aimed at: the two hops, and a way to read the CPU time spent on them.
trait Target {
    /// Where callers send (hop 1) and callees answer (hop 2).
    fn addresses(&self) -> [SocketAddr; 2];
    fn cpu(&self) -> [CpuSample; 2];
    /// The relay port range of each hop (the SDP a terminal gets must point into its hop's
    /// range); `None`: nothing is anchored (the baseline).
    fn media_ranges(&self) -> Option<[(u16, u16); 2]>;
    /// The hops run in processes of their own (not threads of this one).
    fn external(&self) -> bool;
}

impl Target for Pair {
    fn addresses(&self) -> [SocketAddr; 2] {
        [self.nodes[0].sip, self.nodes[1].sip]
    }

    fn cpu(&self) -> [CpuSample; 2] {
        [CpuSample::of(self.nodes[0].pid()), CpuSample::of(self.nodes[1].pid())]
    }

    fn media_ranges(&self) -> Option<[(u16, u16); 2]> {
        Some(MEDIA_RANGES)
    }

    fn external(&self) -> bool {
        true
    }
}

// ---- the baseline -----------------------------------------------------------------------------

/// Two minimal stateless responders standing in for the two nodes, one thread each (see the
/// module docs): the same datagrams per call in and out, canned 100s and BYE 200s, requests and
/// responses forwarded unchanged.
struct Baseline {
    addresses: [SocketAddr; 2],
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

const BASELINE_THREADS: [&str; 2] = ["baseline-1", "baseline-2"];

/// The value of the first line starting with `name` (e.g. `CSeq:`), trimmed.
fn line_value<'a>(message: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    message
        .split(|&byte| byte == b'\n')
        .skip(1)
        .take_while(|line| line.len() > 1)
        .find(|line| line.starts_with(name))
        .map(|line| line[name.len()..].trim_ascii())
}

/// The user part of a request's Request-URI (`INVITE sip:20001@host SIP/2.0`).
fn request_user(message: &[u8]) -> Option<usize> {
    let start = message.windows(4).position(|window| window == b"sip:")? + 4;
    let rest = &message[start..];
    let end = rest.iter().position(|&byte| byte == b'@')?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

/// The sent-by address of the top Via (`Via: SIP/2.0/UDP 127.0.0.1:4000;branch=...`).
fn top_via_address(message: &[u8]) -> Option<SocketAddr> {
    let value = line_value(message, b"Via:")?;
    let after = value.split(|&byte| byte == b' ').nth(1)?;
    let address = after.split(|&byte| byte == b';').next()?;
    std::str::from_utf8(address).ok()?.parse().ok()
}

impl Baseline {
    fn start(callee_sockets: Vec<SocketAddr>) -> Baseline {
        let sockets = [bind_socket(), bind_socket()];
        for socket in &sockets {
            socket.set_nonblocking(false).unwrap();
            socket.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        }
        let addresses = [sockets[0].local_addr().unwrap(), sockets[1].local_addr().unwrap()];
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (index, socket) in sockets.into_iter().enumerate() {
            let stop = stop.clone();
            let callees = callee_sockets.clone();
            let thread = std::thread::Builder::new()
                .name(BASELINE_THREADS[index].into())
                .spawn(move || {
                    let mut buffer = vec![0u8; 65_536];
                    let mut answer = Vec::with_capacity(1024);
                    while !stop.load(Ordering::Relaxed) {
                        let Ok((length, source)) = socket.recv_from(&mut buffer) else {
                            continue;
                        };
                        let message = &buffer[..length];
                        if index == 0 {
                            Baseline::first_hop(&socket, message, source, addresses[1], &mut answer);
                        } else {
                            Baseline::second_hop(&socket, message, source, addresses[0], &callees, &mut answer);
                        }
                    }
                })
                .unwrap();
            threads.push(thread);
        }
        Baseline {
            addresses,
            stop,
            threads,
        }
    }

    /// Hop 1: requests from callers (100 or 200 at once, then on to hop 2); responses from hop
    /// 2 (its 100s and BYE 200s stop here, the rest go to the top Via: the caller).
    fn first_hop(socket: &UdpSocket, message: &[u8], source: SocketAddr, next: SocketAddr, answer: &mut Vec<u8>) {
        if message.starts_with(b"SIP/2.0 ") {
            let trying = message.starts_with(b"SIP/2.0 100 ");
            let bye = line_value(message, b"CSeq:").is_some_and(|cseq| cseq.ends_with(b"BYE"));
            if !trying && !bye {
                if let Some(caller) = top_via_address(message) {
                    let _ = socket.send_to(message, caller);
                }
            }
            return;
        }
        Baseline::canned(message, answer);
        if !answer.is_empty() {
            let _ = socket.send_to(answer, source);
        }
        let _ = socket.send_to(message, next);
    }

    /// Hop 2: requests from hop 1 (100 or 200 at once, then on to the callee socket of the
    /// Request-URI user); responses from callees (BYE 200s stop here, the rest go to hop 1).
    fn second_hop(
        socket: &UdpSocket,
        message: &[u8],
        source: SocketAddr,
        previous: SocketAddr,
        callees: &[SocketAddr],
        answer: &mut Vec<u8>,
    ) {
        if message.starts_with(b"SIP/2.0 ") {
            let bye = line_value(message, b"CSeq:").is_some_and(|cseq| cseq.ends_with(b"BYE"));
            if !bye {
                let _ = socket.send_to(message, previous);
            }
            return;
        }
        Baseline::canned(message, answer);
        if !answer.is_empty() {
            let _ = socket.send_to(answer, source);
        }
        if let Some(user) = request_user(message) {
            let callee = callees[user.saturating_sub(CALLEE_BASE) % callees.len()];
            let _ = socket.send_to(message, callee);
        }
    }

    /// The canned answer to a request: 100 to an INVITE, nothing to an ACK, 200 otherwise;
    /// the Via, From, To, Call-ID and CSeq lines copied.
    fn canned(request: &[u8], answer: &mut Vec<u8>) {
        const COPIED: [&[u8]; 5] = [b"Via:", b"From:", b"To:", b"Call-ID:", b"CSeq:"];
        answer.clear();
        if request.starts_with(b"ACK ") {
            return;
        }
        answer.extend_from_slice(if request.starts_with(b"INVITE ") {
            b"SIP/2.0 100 Trying\r\n"
        } else {
            b"SIP/2.0 200 OK\r\n"
        });
        for line in request.split(|&byte| byte == b'\n').skip(1) {
            if line.len() <= 1 {
                break;
            }
            if COPIED.iter().any(|name| line.starts_with(name)) {
                answer.extend_from_slice(line);
                answer.push(b'\n');
            }
        }
        answer.extend_from_slice(b"Content-Length: 0\r\n\r\n");
    }
}

impl Target for Baseline {
    fn addresses(&self) -> [SocketAddr; 2] {
        self.addresses
    }

    fn cpu(&self) -> [CpuSample; 2] {
        BASELINE_THREADS.map(CpuSample::of_own_thread)
    }

    fn media_ranges(&self) -> Option<[(u16, u16); 2]> {
        None
    }

    fn external(&self) -> bool {
        false
    }
}

impl Drop for Baseline {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            thread.join().unwrap();
        }
    }
}

// ---- the load generator -----------------------------------------------------------------------

/// How calls are started.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Load {
    /// `window` calls in flight, each slot starting its next call once the last is complete.
    Closed { window: usize },
    /// Calls started on a schedule, `rate` per second, whatever the answers do.
    Open { rate: f64 },
}

impl Load {
    fn describe(self) -> String {
        match self {
            Load::Closed { window } => format!("maximum rate ({window} calls in flight)"),
            Load::Open { rate } => format!("offered {rate:.0} calls/s (open loop)"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Idle,
    /// INVITE sent, waiting for the 200.
    Inviting,
    /// ACK and BYE sent, waiting for the BYE's 200 and the callee's ACK and BYE.
    HangingUp,
}

#[derive(Debug)]
struct Slot {
    /// Incremented per call; in the caller's Call-ID, so late answers are recognised.
    generation: u64,
    step: Step,
    /// The user index of the call in flight (caller `CALLER_BASE + user`, callee `CALLEE_BASE + user`).
    user: usize,
    round: usize,
    invite_at: Instant,
    /// The INVITE went out inside the measured window: its setup latency is recorded.
    recorded: bool,
    to_tag: Option<String>,
    /// The callee side: the Call-ID of the INVITE it got (the second hop's), and its tag.
    callee_call_id: Option<String>,
    callee_tag: String,
    callee_acked: bool,
    callee_bye: bool,
    bye_answered: bool,
}

#[derive(Debug, Clone, Default)]
struct Counters {
    /// Calls completed as expected.
    completed: u64,
    /// Unexpected final responses, per status and method (`481 to BYE`).
    unexpected: BTreeMap<String, u64>,
    /// Calls not complete within the deadline.
    timeouts: u64,
    /// A terminal got an SDP not pointing into its hop's relay range.
    unanchored: u64,
    /// Retransmitted requests or 2xx responses the terminals saw.
    retransmissions: u64,
    /// Open loop: a call was due and every slot was busy (not started).
    no_slot: u64,
}

impl Counters {
    fn errors(&self) -> u64 {
        self.timeouts + self.unanchored + self.no_slot + self.unexpected.values().sum::<u64>()
    }

    fn describe_errors(&self) -> String {
        let mut parts: Vec<String> = self
            .unexpected
            .iter()
            .map(|(response, count)| format!("{count}× {response}"))
            .collect();
        if self.timeouts > 0 {
            parts.push(format!("{} timeouts", self.timeouts));
        }
        if self.unanchored > 0 {
            parts.push(format!("{} not anchored", self.unanchored));
        }
        if self.no_slot > 0 {
            parts.push(format!("{} not started (no free slot)", self.no_slot));
        }
        if parts.is_empty() {
            "0".to_owned()
        } else {
            format!("{} ({})", self.errors(), parts.join(", "))
        }
    }
}

/// What one phase measured.
struct Measurement {
    load: Load,
    /// Calls completed in the measured window.
    calls: u64,
    elapsed: Duration,
    cpu: [CpuSample; 2],
    generator_cpu_ns: u64,
    /// CPU time the rest of the machine (neither the nodes nor this process) spent busy.
    others_ns: u64,
    /// Counters over the whole phase (warm-up, window and drain).
    counters: Counters,
    /// Setup latency (µs) of the calls started in the window, to when this thread read the 200.
    latency: Histogram<u64>,
    /// The same, to the kernel's receive time of the 200 (`SO_TIMESTAMPNS`): without this
    /// thread's own delay in getting round to reading it.
    wire: Histogram<u64>,
}

impl Measurement {
    fn rate(&self) -> f64 {
        self.calls as f64 / self.elapsed.as_secs_f64()
    }

    fn total_ns(&self) -> u64 {
        self.cpu[0].total_ns + self.cpu[1].total_ns
    }

    fn cpu_us_per_call(&self) -> f64 {
        self.total_ns() as f64 / 1000.0 / self.calls.max(1) as f64
    }

    fn hop_us_per_call(&self, hop: usize) -> f64 {
        self.cpu[hop].total_ns as f64 / 1000.0 / self.calls.max(1) as f64
    }

    fn ticks_us_per_call(&self) -> f64 {
        (self.cpu[0].ticks + self.cpu[1].ticks) as f64 * 1e6
            / clock_ticks_per_second() as f64
            / self.calls.max(1) as f64
    }

    fn load_percent(&self) -> f64 {
        self.total_ns() as f64 / self.elapsed.as_nanos() as f64 * 100.0
    }

    fn others_cores(&self) -> f64 {
        self.others_ns as f64 / self.elapsed.as_nanos() as f64
    }

    fn generator_load_percent(&self) -> f64 {
        self.generator_cpu_ns as f64 / self.elapsed.as_nanos() as f64 * 100.0
    }

    fn percentile_ms(&self, quantile: f64) -> f64 {
        self.latency.value_at_quantile(quantile) as f64 / 1000.0
    }

    fn wire_percentile_ms(&self, quantile: f64) -> f64 {
        self.wire.value_at_quantile(quantile) as f64 / 1000.0
    }
}

fn bind_socket() -> UdpSocket {
    udp::bind("127.0.0.1:0".parse().unwrap(), 4 << 20, 4 << 20).unwrap()
}

/// The SDP of a terminal (audio at `port`, PCMU/PCMA/telephone-event, as `tests/common/phone.rs`).
fn sdp(port: u16) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\na=sendrecv\r\n"
    )
}

/// The audio port of an SDP body (`m=audio <port> ...`).
fn media_port(body: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(body).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("m=audio "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|port| port.parse().ok())
}

/// What the start of a measured window saw.
struct WindowStart {
    at: Instant,
    /// The hops' CPU time.
    cpu: [CpuSample; 2],
    /// This thread's.
    generator_ns: u64,
    /// Calls completed so far.
    completed: u64,
    /// The whole machine's busy time, and ours (this process and the hops' processes).
    machine_ns: u64,
    ours_ns: u64,
}

struct Generator {
    /// The terminals' sockets: callers (indexes 0..SOCKETS in poll order), callees (SOCKETS..).
    callers: Vec<UdpSocket>,
    callees: Vec<UdpSocket>,
    /// Where callers send (hop 1) and callees answer (hop 2).
    servers: [SocketAddr; 2],
    media_ranges: Option<[(u16, u16); 2]>,
    slots: Vec<Slot>,
    /// Idle slots (open loop).
    free: VecDeque<usize>,
    branch: u64,
    counters: Counters,
    latency: Histogram<u64>,
    wire: Histogram<u64>,
    /// Inside the measured window (INVITEs sent now are recorded).
    recording: bool,
    /// Calls started in this phase.
    started: u64,
    buffer: Vec<u8>,
    /// SDP bodies of the terminals (fixed: no media flows in this bench).
    caller_sdp: Bytes,
    callee_sdp: Bytes,
}

impl Generator {
    fn new() -> Generator {
        let now = Instant::now();
        let slots = (0..POOL)
            .map(|_| Slot {
                generation: 0,
                step: Step::Idle,
                user: 0,
                round: 0,
                invite_at: now,
                recorded: false,
                to_tag: None,
                callee_call_id: None,
                callee_tag: String::new(),
                callee_acked: false,
                callee_bye: false,
                bye_answered: false,
            })
            .collect();
        Generator {
            callers: (0..SOCKETS)
                .map(|_| {
                    let socket = bind_socket();
                    stamp::enable(socket.as_raw_fd());
                    socket
                })
                .collect(),
            callees: (0..SOCKETS).map(|_| bind_socket()).collect(),
            servers: ["127.0.0.1:9".parse().unwrap(); 2],
            media_ranges: None,
            slots,
            free: VecDeque::new(),
            branch: 0,
            counters: Counters::default(),
            latency: Histogram::new_with_bounds(1, 60_000_000, 3).unwrap(),
            wire: Histogram::new_with_bounds(1, 60_000_000, 3).unwrap(),
            recording: false,
            started: 0,
            buffer: vec![0u8; 65_536],
            caller_sdp: Bytes::from(sdp(4000)),
            callee_sdp: Bytes::from(sdp(6000)),
        }
    }

    fn pollfds(&self) -> Vec<libc::pollfd> {
        self.callers
            .iter()
            .chain(&self.callees)
            .map(|socket| libc::pollfd {
                fd: socket.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect()
    }

    /// Waits up to `timeout` for a readable socket.
    fn wait(pollfds: &mut [libc::pollfd], timeout: Duration) {
        for pollfd in pollfds.iter_mut() {
            pollfd.revents = 0;
        }
        let timespec = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: ppoll(2) on fds owned by the generator, alive for the call; no signal mask.
        unsafe {
            libc::ppoll(
                pollfds.as_mut_ptr(),
                pollfds.len() as libc::nfds_t,
                &timespec,
                std::ptr::null(),
            )
        };
    }

    fn socket(&self, index: usize) -> &UdpSocket {
        if index < SOCKETS {
            &self.callers[index]
        } else {
            &self.callees[index - SOCKETS]
        }
    }

    /// Every datagram waiting on the sockets `pollfds` says are readable, with the index of
    /// its socket (callers 0..SOCKETS, callees SOCKETS..).
    fn receive_ready(&mut self, pollfds: &[libc::pollfd]) -> Vec<(usize, Message, Option<Instant>)> {
        let mut received = Vec::new();
        for (index, pollfd) in pollfds.iter().enumerate() {
            if pollfd.revents & libc::POLLIN == 0 {
                continue;
            }
            loop {
                let socket = if index < SOCKETS {
                    &self.callers[index]
                } else {
                    &self.callees[index - SOCKETS]
                };
                let Ok((length, _, wall_ns)) = stamp::recv_from(socket.as_raw_fd(), &mut self.buffer) else {
                    break;
                };
                if let Ok(message) = Message::parse_datagram(Bytes::copy_from_slice(&self.buffer[..length])) {
                    received.push((index, message, wall_ns.map(stamp::instant_of)));
                }
            }
        }
        received
    }

    // ---- registration -------------------------------------------------------------------------

    /// Registers every caller at hop 1 and every callee at hop 2 (digest), each user from its
    /// own socket (`user % SOCKETS`). Bounded: 64 in flight, 1 s per attempt, 120 s in all.
    fn register_all(&mut self, servers: [SocketAddr; 2]) {
        #[derive(Clone, Copy, PartialEq)]
        enum State {
            Waiting,
            Challenged,
            Done,
        }
        // Entry `side * USERS + user`: side 0 callers at hop 1, side 1 callees at hop 2.
        let total = 2 * USERS;
        let mut state = vec![State::Waiting; total];
        let mut attempt = vec![0u32; total];
        let mut in_flight: BTreeMap<usize, Instant> = BTreeMap::new();
        let mut queue: VecDeque<usize> = (0..total).collect();
        let mut done = 0;
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut pollfds = self.pollfds();
        let number = |entry: usize| {
            if entry < USERS {
                CALLER_BASE + entry
            } else {
                CALLEE_BASE + entry - USERS
            }
        };
        let socket_index = |entry: usize| {
            if entry < USERS {
                entry % SOCKETS
            } else {
                SOCKETS + (entry - USERS) % SOCKETS
            }
        };
        let send = |generator: &mut Generator, entry: usize, attempt: u32, cseq: u32, authorization: Option<&str>| {
            generator.branch += 1;
            let server = servers[entry / USERS];
            let socket = generator.socket(socket_index(entry));
            let me = socket.local_addr().unwrap();
            let auth = authorization
                .map(|value| format!("Authorization: {value}\r\n"))
                .unwrap_or_default();
            let text = format!(
                "REGISTER sip:{server} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKr{branch};rport\r\n\
                 Max-Forwards: 70\r\nFrom: <sip:{user}@{server}>;tag=r{attempt}\r\nTo: <sip:{user}@{server}>\r\n\
                 Call-ID: r{entry}.{attempt}@bench\r\nCSeq: {cseq} REGISTER\r\n\
                 Contact: <sip:{user}@{me}>;expires=3600\r\n{auth}Ptt-Extension: pttregister\r\n\
                 Content-Length: 0\r\n\r\n",
                branch = generator.branch,
                user = number(entry),
            );
            let _ = socket.send_to(text.as_bytes(), server);
        };
        while done < total {
            assert!(
                Instant::now() < deadline,
                "registration: {done} of {total} users registered within 120 s"
            );
            while in_flight.len() < 64 {
                let Some(entry) = queue.pop_front() else { break };
                attempt[entry] += 1;
                state[entry] = State::Waiting;
                in_flight.insert(entry, Instant::now());
                send(self, entry, attempt[entry], 1, None);
            }
            Generator::wait(&mut pollfds, Duration::from_millis(5));
            for (_, message, _) in self.receive_ready(&pollfds) {
                let Some(status) = message.status() else { continue };
                let Some((entry, generation)) = message.call_id().ok().and_then(|call_id| {
                    let (entry, rest) = call_id.strip_prefix('r')?.split_once('.')?;
                    let (generation, _) = rest.split_once('@')?;
                    Some((entry.parse::<usize>().ok()?, generation.parse::<u32>().ok()?))
                }) else {
                    continue;
                };
                if entry >= total || attempt[entry] != generation || !in_flight.contains_key(&entry) {
                    continue;
                }
                match (state[entry], status) {
                    (State::Waiting, 401) => {
                        let challenges: Vec<digest::Challenge> = message
                            .headers_of(HeaderName::WwwAuthenticate)
                            .filter_map(|header| header.value_str())
                            .filter_map(|value| digest::parse_challenge(&value).ok())
                            .collect();
                        let Some(challenge) = digest::choose(&challenges) else {
                            in_flight.remove(&entry);
                            queue.push_back(entry);
                            continue;
                        };
                        let uri = format!("sip:{}", servers[entry / USERS]);
                        let cnonce = format!("{:016x}", rand::random::<u64>());
                        let user = number(entry).to_string();
                        let authorization = digest::respond(challenge, &user, PASSWORD, "REGISTER", &uri, 1, &cnonce);
                        state[entry] = State::Challenged;
                        send(self, entry, generation, 2, Some(&authorization));
                    }
                    (State::Challenged, 200) => {
                        state[entry] = State::Done;
                        in_flight.remove(&entry);
                        done += 1;
                    }
                    (_, status) if status >= 200 => {
                        in_flight.remove(&entry);
                        queue.push_back(entry);
                    }
                    _ => {}
                }
            }
            let now = Instant::now();
            let expired: Vec<usize> = in_flight
                .iter()
                .filter(|(_, sent)| now.duration_since(**sent) > Duration::from_secs(1))
                .map(|(entry, _)| *entry)
                .collect();
            for entry in expired {
                in_flight.remove(&entry);
                queue.push_back(entry);
            }
        }
    }

    // ---- calls --------------------------------------------------------------------------------

    /// Starts the next call of `slot` (its next users).
    fn begin(&mut self, slot: usize, now: Instant) {
        self.started += 1;
        self.branch += 1;
        let state = &mut self.slots[slot];
        state.generation += 1;
        state.round += 1;
        state.user = slot + (state.round % (USERS / POOL)) * POOL;
        state.step = Step::Inviting;
        state.invite_at = now;
        state.recorded = self.recording;
        state.to_tag = None;
        state.callee_call_id = None;
        state.callee_acked = false;
        state.callee_bye = false;
        state.bye_answered = false;
        let socket = &self.callers[slot % SOCKETS];
        let me = socket.local_addr().unwrap();
        let server = self.servers[0];
        let mut text = format!(
            "INVITE sip:{callee}@{server} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKi{branch};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:{caller}@{server}>;tag=f{slot}.{generation}\r\n\
             To: <sip:{callee}@{server}>\r\nCall-ID: c{slot}.{generation}@bench\r\nCSeq: 1 INVITE\r\n\
             Contact: <sip:{caller}@{me}>\r\nContent-Type: application/sdp\r\nContent-Length: {length}\r\n\r\n",
            callee = CALLEE_BASE + state.user,
            caller = CALLER_BASE + state.user,
            branch = self.branch,
            generation = state.generation,
            length = self.caller_sdp.len(),
        )
        .into_bytes();
        text.extend_from_slice(&self.caller_sdp);
        let _ = socket.send_to(&text, server);
    }

    /// The caller's ACK for the 200, then its BYE.
    fn ack_and_bye(&mut self, slot: usize) {
        let state = &self.slots[slot];
        let socket = &self.callers[slot % SOCKETS];
        let me = socket.local_addr().unwrap();
        let server = self.servers[0];
        let to_tag = state.to_tag.as_deref().unwrap_or("");
        for (cseq, method) in [(1, "ACK"), (2, "BYE")] {
            self.branch += 1;
            let text = format!(
                "{method} sip:{callee}@{server} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{method}{branch};rport\r\n\
                 Max-Forwards: 70\r\nFrom: <sip:{caller}@{server}>;tag=f{slot}.{generation}\r\n\
                 To: <sip:{callee}@{server}>;tag={to_tag}\r\nCall-ID: c{slot}.{generation}@bench\r\n\
                 CSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n",
                callee = CALLEE_BASE + state.user,
                caller = CALLER_BASE + state.user,
                branch = self.branch,
                generation = state.generation,
            );
            let _ = socket.send_to(text.as_bytes(), server);
        }
    }

    /// The call of `slot` ended (well or not): start the next one (closed loop) or free the slot.
    fn next(&mut self, slot: usize, load: Load, accepting: bool, now: Instant) {
        match load {
            Load::Closed { .. } if accepting => self.begin(slot, now),
            _ => {
                self.slots[slot].step = Step::Idle;
                if matches!(load, Load::Open { .. }) {
                    self.free.push_back(slot);
                }
            }
        }
    }

    fn in_range(&self, hop: usize, body: &[u8]) -> bool {
        match self.media_ranges {
            None => true,
            Some(ranges) => {
                let (min, max) = ranges[hop];
                media_port(body).is_some_and(|port| (min..=max).contains(&port))
            }
        }
    }

    fn complete_if_done(&mut self, slot: usize, load: Load, accepting: bool, now: Instant) {
        let state = &self.slots[slot];
        if state.step == Step::HangingUp && state.bye_answered && state.callee_bye && state.callee_acked {
            self.counters.completed += 1;
            self.next(slot, load, accepting, now);
        }
    }

    /// A message at a caller socket: the responses to the INVITE and the BYE.
    fn caller_message(&mut self, message: Message, at: Instant, arrived: Option<Instant>, load: Load, accepting: bool) {
        let Some(status) = message.status() else { return };
        let Some((slot, generation)) = message.call_id().ok().and_then(|call_id| {
            let (slot, rest) = call_id.strip_prefix('c')?.split_once('.')?;
            let (generation, _) = rest.split_once('@')?;
            Some((slot.parse::<usize>().ok()?, generation.parse::<u64>().ok()?))
        }) else {
            return;
        };
        let Ok(cseq) = message.cseq() else { return };
        if slot >= POOL || self.slots[slot].generation != generation || self.slots[slot].step == Step::Idle {
            if status == 200 {
                self.counters.retransmissions += 1; // a 2xx retransmitted after the call ended
            }
            return;
        }
        let step = self.slots[slot].step;
        match (cseq.method.as_str(), status, step) {
            ("INVITE", 100..=199, _) => {}
            ("INVITE", 200, Step::Inviting) => {
                let state = &mut self.slots[slot];
                if state.recorded {
                    let micros = at.duration_since(state.invite_at).as_micros() as u64;
                    self.latency.saturating_record(micros.max(1));
                    let wire = arrived.unwrap_or(at).saturating_duration_since(state.invite_at);
                    self.wire.saturating_record((wire.as_micros() as u64).max(1));
                }
                state.to_tag = message.to().ok().and_then(|to| to.tag().map(str::to_owned));
                state.step = Step::HangingUp;
                if !self.in_range(0, message.body()) {
                    self.counters.unanchored += 1;
                }
                self.ack_and_bye(slot);
            }
            ("INVITE", 200, _) => self.counters.retransmissions += 1,
            ("BYE", 200, Step::HangingUp) => {
                self.slots[slot].bye_answered = true;
                self.complete_if_done(slot, load, accepting, at);
            }
            (_, 200..=299, _) => {}
            (method, status, _) => {
                *self
                    .counters
                    .unexpected
                    .entry(format!("{status} to {method}"))
                    .or_default() += 1;
                self.next(slot, load, accepting, at);
            }
        }
    }

    /// A message at a callee socket: the second hop's INVITE (answered 180 then 200 at once),
    /// ACK and BYE (answered 200).
    fn callee_message(&mut self, socket: usize, message: Message, at: Instant, load: Load, accepting: bool) {
        let Some(method) = message.method().map(|method| method.as_str().to_owned()) else {
            return;
        };
        let user = message
            .request_uri_raw()
            .and_then(request_user)
            .and_then(|number| number.checked_sub(CALLEE_BASE))
            .filter(|user| *user < USERS);
        let Some(user) = user else { return };
        let slot = user % POOL;
        let state = &self.slots[slot];
        if state.step == Step::Idle || state.user != user {
            if method == "BYE" {
                self.respond(socket, &message, 200, "OK", None, user);
            }
            return;
        }
        let call_id = message.call_id().unwrap_or_default().to_owned();
        match method.as_str() {
            "INVITE" => {
                if state.callee_call_id.is_some() {
                    self.counters.retransmissions += 1;
                    return;
                }
                if !self.in_range(1, message.body()) {
                    self.counters.unanchored += 1;
                }
                let tag = format!("t{slot}.{}", state.generation);
                self.slots[slot].callee_call_id = Some(call_id);
                self.slots[slot].callee_tag = tag;
                self.respond(socket, &message, 180, "Ringing", None, user);
                let body = self.callee_sdp.clone();
                self.respond(socket, &message, 200, "OK", Some(body), user);
            }
            "ACK" if state.callee_call_id.as_deref() == Some(&call_id) => {
                if state.callee_acked {
                    self.counters.retransmissions += 1;
                }
                self.slots[slot].callee_acked = true;
                self.complete_if_done(slot, load, accepting, at);
            }
            "BYE" => {
                self.respond(socket, &message, 200, "OK", None, user);
                if state.callee_call_id.as_deref() != Some(&call_id) {
                    return;
                }
                if state.callee_bye {
                    self.counters.retransmissions += 1;
                }
                self.slots[slot].callee_bye = true;
                self.complete_if_done(slot, load, accepting, at);
            }
            _ => {}
        }
    }

    /// The callee's response to `request` (its tag, its Contact, an optional SDP body).
    fn respond(&self, socket: usize, request: &Message, status: u16, reason: &str, body: Option<Bytes>, user: usize) {
        let tag = self.slots[user % POOL].callee_tag.as_str();
        let Ok(mut builder) = floorcast::sip::response_to(request, status, reason, Some(tag)) else {
            return;
        };
        let socket = self.socket(socket);
        let me = socket.local_addr().unwrap();
        builder = builder.header(HeaderName::Contact, format!("<sip:{}@{me}>", CALLEE_BASE + user));
        if let Some(body) = body {
            builder = builder.body("application/sdp", body);
        }
        if let Ok(response) = builder.build() {
            let _ = socket.send_to(response.as_bytes(), self.servers[1]);
        }
    }

    fn expire(&mut self, load: Load, accepting: bool, now: Instant) {
        for slot in 0..POOL {
            let state = &self.slots[slot];
            if state.step != Step::Idle && now.duration_since(state.invite_at) > CALL_TIMEOUT {
                self.counters.timeouts += 1;
                self.next(slot, load, accepting, now);
            }
        }
    }

    /// Runs one phase against `target`: warm-up, a measured window of `window`, then a drain.
    fn run(&mut self, target: &dyn Target, load: Load, warm_up: Duration, window: Duration) -> Measurement {
        // Progress on stderr, e.g. to attach `perf record -p` to the nodes during a window.
        eprintln!(
            "sip_calls: {} against {}: {:.1} s warm-up, {:.1} s measured",
            load.describe(),
            if target.external() { "the nodes" } else { "the baseline" },
            warm_up.as_secs_f64(),
            window.as_secs_f64()
        );
        self.servers = target.addresses();
        self.media_ranges = target.media_ranges();
        self.counters = Counters::default();
        self.latency.reset();
        self.wire.reset();
        self.recording = false;
        self.started = 0;
        self.free.clear();
        for slot in &mut self.slots {
            slot.step = Step::Idle;
        }
        let mut pollfds = self.pollfds();
        let started = Instant::now();
        let (interval, mut next_due) = match load {
            Load::Closed { window } => {
                for slot in 0..window {
                    self.begin(slot, started);
                }
                (Duration::ZERO, started)
            }
            Load::Open { rate } => {
                self.free.extend(0..POOL);
                (Duration::from_secs_f64(1.0 / rate), started)
            }
        };
        // What the machine and we (this process, and the hops when they are processes) spent so far.
        let ours = |cpu: &[CpuSample; 2]| {
            let hops = if target.external() {
                cpu[0].total_ns + cpu[1].total_ns
            } else {
                0
            };
            (machine_busy_ns(), own_process_cpu_ns() + hops)
        };
        let mut window_start: Option<WindowStart> = None;
        let mut result: Option<(Duration, [CpuSample; 2], u64, u64, u64)> = None;
        let mut last_expiry = started;
        loop {
            let now = Instant::now();
            let capped = self.started >= MAX_CALLS_PER_PHASE;
            match &window_start {
                None if now.duration_since(started) >= warm_up => {
                    self.recording = true;
                    let cpu = target.cpu();
                    let (machine_ns, ours_ns) = ours(&cpu);
                    window_start = Some(WindowStart {
                        at: now,
                        cpu,
                        generator_ns: own_thread_cpu_ns(),
                        completed: self.counters.completed,
                        machine_ns,
                        ours_ns,
                    });
                }
                Some(start) if result.is_none() && (now.duration_since(start.at) >= window || capped) => {
                    self.recording = false;
                    let later = target.cpu();
                    let (machine_ns, ours_ns) = ours(&later);
                    let others = machine_ns
                        .saturating_sub(start.machine_ns)
                        .saturating_sub(ours_ns.saturating_sub(start.ours_ns));
                    result = Some((
                        now.duration_since(start.at),
                        [start.cpu[0].until(&later[0]), start.cpu[1].until(&later[1])],
                        own_thread_cpu_ns() - start.generator_ns,
                        self.counters.completed - start.completed,
                        others,
                    ));
                }
                _ => {}
            }
            let accepting = result.is_none() && !capped;
            if !accepting {
                let idle = self.slots.iter().all(|slot| slot.step == Step::Idle);
                if idle || now.duration_since(started) > warm_up + window + CALL_TIMEOUT * 2 {
                    break;
                }
            }
            let open = matches!(load, Load::Open { .. }) && accepting;
            let mut timeout = Duration::from_millis(5);
            if open {
                timeout = timeout.min(next_due.saturating_duration_since(now));
            }
            Generator::wait(&mut pollfds, timeout);
            let at = Instant::now();
            for (socket, message, arrived) in self.receive_ready(&pollfds) {
                if socket < SOCKETS {
                    self.caller_message(message, at, arrived, load, accepting);
                } else {
                    self.callee_message(socket, message, at, load, accepting);
                }
            }
            // Open loop: the calls now due (after the answers that came meanwhile freed their
            // slots; after a stall of this thread, all the overdue ones at once).
            if open {
                while next_due <= at {
                    match self.free.pop_front() {
                        Some(slot) => self.begin(slot, Instant::now()),
                        None => self.counters.no_slot += 1,
                    }
                    next_due += interval;
                }
            }
            if at.duration_since(last_expiry) >= Duration::from_millis(50) {
                last_expiry = at;
                self.expire(load, accepting, at);
            }
        }
        let (elapsed, cpu, generator_cpu_ns, calls, others_ns) = result.expect("the window ended");
        Measurement {
            load,
            calls,
            elapsed,
            cpu,
            generator_cpu_ns,
            others_ns,
            counters: self.counters.clone(),
            latency: self.latency.clone(),
            wire: self.wire.clone(),
        }
    }
}

// ---- the report -------------------------------------------------------------------------------

fn print_table(rows: &[(&str, &Measurement)]) {
    println!(
        "| target | load | calls/s | node CPU per call (both) | tcf-1 | tcf-2 | node CPU per second | setup p50 (kernel receive) | setup p99 (kernel receive) | errors | retransmissions seen | generator CPU per second | other processes |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|");
    for (target, measurement) in rows {
        println!(
            "| {target} | {} | {:.0} | {:.1} µs | {:.1} µs | {:.1} µs | {:.0}% | {:.2} ms | {:.2} ms | {} | {} | {:.0}% | {:.2} cores |",
            measurement.load.describe(),
            measurement.rate(),
            measurement.cpu_us_per_call(),
            measurement.hop_us_per_call(0),
            measurement.hop_us_per_call(1),
            measurement.load_percent(),
            measurement.wire_percentile_ms(0.5),
            measurement.wire_percentile_ms(0.99),
            measurement.counters.describe_errors(),
            measurement.counters.retransmissions,
            measurement.generator_load_percent(),
            measurement.others_cores(),
        );
    }
    println!();
}

fn print_latency(rows: &[(&str, &Measurement)]) {
    println!("| target | load | 200 taken at | calls measured | p50 | p90 | p99 | p99.9 | max |");
    println!("|---|---|---|---:|---:|---:|---:|---:|---:|");
    for (target, measurement) in rows {
        for (taken, histogram) in [
            ("kernel receive", &measurement.wire),
            ("read by the generator", &measurement.latency),
        ] {
            let ms = |quantile: f64| histogram.value_at_quantile(quantile) as f64 / 1000.0;
            println!(
                "| {target} | {} | {taken} | {} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms |",
                measurement.load.describe(),
                histogram.len(),
                ms(0.5),
                ms(0.9),
                ms(0.99),
                ms(0.999),
                histogram.max() as f64 / 1000.0,
            );
        }
    }
    println!();
}

fn print_threads(rows: &[(&str, &Measurement)]) {
    for hop in 0..2 {
        let names: Vec<String> = {
            let mut names: Vec<String> = rows
                .iter()
                .flat_map(|(_, measurement)| {
                    let total = measurement.cpu[hop].total_ns.max(1);
                    measurement.cpu[hop]
                        .by_thread
                        .iter()
                        // Threads under 0.5% of the node's time are left out.
                        .filter(move |(_, ns)| **ns * 200 >= total)
                        .map(|(name, _)| name.clone())
                })
                .collect();
            names.sort();
            names.dedup();
            names
        };
        print!("| tcf-{} per call | ", hop + 1);
        for name in &names {
            print!("`{name}` | ");
        }
        println!("all threads | utime+stime (both nodes) |");
        print!("|---|");
        for _ in &names {
            print!("---:|");
        }
        println!("---:|---:|");
        for (_, measurement) in rows {
            let calls = measurement.calls.max(1) as f64;
            print!("| {} |", measurement.load.describe());
            for name in &names {
                let ns = measurement.cpu[hop].by_thread.get(name).copied().unwrap_or(0);
                print!(" {:.1} µs |", ns as f64 / 1000.0 / calls);
            }
            println!(
                " {:.1} µs | {:.1} µs |",
                measurement.hop_us_per_call(hop),
                measurement.ticks_us_per_call()
            );
        }
        println!();
    }
}

fn describe_gauges(pair: &Pair) -> String {
    pair.nodes
        .iter()
        .enumerate()
        .map(|(index, node)| {
            let gauges = node.gauges();
            let get = |name: &str| gauges.get(name).map_or("?".to_owned(), |value| format!("{value:.0}"));
            format!(
                "tcf-{}: {} live transactions, {} bridges, {} legs",
                index + 1,
                get("floorcast_sip_transactions"),
                get("floorcast_bridges"),
                get("floorcast_legs"),
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn main() {
    // `cargo test --benches` runs bench binaries with `--bench` absent; do nothing then.
    if !std::env::args().any(|arg| arg == "--bench") {
        return;
    }
    let binary = node_binary();
    assert!(
        Path::new(&binary).exists(),
        "{binary} is missing: run through `cargo bench`"
    );
    let window = measured_window();
    let t1 = t1_ms();
    let in_flight = window_size();
    println!(
        "# sip_calls bench — {} phases ({} s measured each), two node processes, UDP loopback\n",
        if quick() { "quick" } else { "full" },
        window.as_secs()
    );
    println!(
        "Calls caller → tcf-1 → tcf-2 → callee, edge anchoring (a relay bridge with 2 legs per call on each node), \
         BYE right after the ACK; {USERS} callers and {USERS} callees registered beforehand over {SOCKETS}+{SOCKETS} \
         terminal sockets; nodes with `t1_ms = {t1}`, `max_transactions = {MAX_TRANSACTIONS}`, \
         `port_quarantine_ms = {PORT_QUARANTINE_MS}`, 1 media worker, log level warn.\n"
    );

    let mut generator = Generator::new();
    let callee_sockets: Vec<SocketAddr> = generator
        .callees
        .iter()
        .map(|socket| socket.local_addr().unwrap())
        .collect();
    // The baseline runs in the same run, each of its phases right after the same floorcast
    // phase (the machine is shared: conditions drift within a minute).
    let baseline = Baseline::start(callee_sockets);
    let pair = Pair::start(t1);
    eprintln!(
        "sip_calls: tcf-1 is pid {}, tcf-2 pid {}",
        pair.nodes[0].pid(),
        pair.nodes[1].pid()
    );
    let registering = Instant::now();
    generator.register_all(pair.addresses());
    println!(
        "Registration of {} terminals: {:.1} s. {}.\n",
        2 * USERS,
        registering.elapsed().as_secs_f64(),
        describe_gauges(&pair)
    );
    // A few calls first: every path warm, the nodes see each other.
    let priming = generator.run(
        &pair,
        Load::Closed { window: 4 },
        Duration::ZERO,
        Duration::from_millis(500),
    );
    assert_eq!(
        priming.counters.errors(),
        0,
        "priming calls: {}",
        priming.counters.describe_errors()
    );
    let drops_before = udp_receive_buffer_drops();
    let maximum = generator.run(&pair, Load::Closed { window: in_flight }, warm_up(), window);
    let after_maximum = describe_gauges(&pair);
    let baseline_maximum = generator.run(&baseline, Load::Closed { window: in_flight }, warm_up(), window);
    let half = (maximum.rate() * open_fraction()).max(10.0);
    let fixed = generator.run(&pair, Load::Open { rate: half }, steady_warm_up(t1), window);
    let baseline_fixed = generator.run(&baseline, Load::Open { rate: half }, warm_up(), window);
    drop(baseline);
    let drops = udp_receive_buffer_drops() - drops_before;
    // Let the quarantine and the transaction timers run out, then look for leftovers (not in
    // quick runs: with the production T1 it takes 32 s).
    let after_all = if quick() {
        "not checked in quick runs".to_owned()
    } else {
        std::thread::sleep(quiet_time(t1));
        format!(
            "after {:.1} s of quiet: {}",
            quiet_time(t1).as_secs_f64(),
            describe_gauges(&pair)
        )
    };
    drop(pair);

    println!("## Throughput and node CPU per call\n");
    let rows = [
        ("floorcast", &maximum),
        ("floorcast", &fixed),
        ("baseline", &baseline_maximum),
        ("baseline", &baseline_fixed),
    ];
    print_table(&rows);
    println!(
        "Node CPU is the sum over both processes' threads (schedstat); for the baseline, its two threads. \
         \"retransmissions seen\": duplicate 2xx, INVITEs or BYEs the terminals received. \"other processes\": \
         the CPU time the rest of the machine (other builds, kernel threads) spent busy in the window, in cores \
         (of 2): the noise each figure was taken in.\n"
    );
    print_threads(&rows[..2]);
    println!("Gauges after the maximum-rate phase: {after_maximum}. After both phases, {after_all}.\n");
    println!(
        "UDP datagrams dropped for want of receive-buffer room (kernel, system-wide) during the four measured \
         phases: {drops}.\n"
    );

    println!("## Setup latency (INVITE sent → 200 received by the caller: by the kernel, and read by the generator)\n");
    print_latency(&rows);

    println!(
        "## Baseline\n\nTwo minimal stateless responders (threads of the bench process) in place of the two nodes: \
         the same datagrams per call in and out (7 + 6 received, 7 + 7 sent), canned 100 and BYE 200, everything \
         else forwarded unchanged; no SIP parsing, no state, no media.\n"
    );
    println!("| load | floorcast CPU per call | baseline CPU per call | floorcast ÷ baseline |");
    println!("|---|---:|---:|---:|");
    for (node, base) in [(&maximum, &baseline_maximum), (&fixed, &baseline_fixed)] {
        println!(
            "| {} | {:.1} µs | {:.1} µs | {:.1} |",
            node.load.describe(),
            node.cpu_us_per_call(),
            base.cpu_us_per_call(),
            node.cpu_us_per_call() / base.cpu_us_per_call().max(0.001)
        );
    }
    println!();

    println!("## Verdicts\n");
    let per_call = maximum.cpu_us_per_call();
    println!(
        "- Node CPU per call (both nodes, at the maximum rate): {per_call:.1} µs = {:.2} × the {TARGET_CPU_US:.0} µs \
         target — {}. At half that rate: {:.1} µs ({}).",
        per_call / TARGET_CPU_US,
        if per_call <= TARGET_CPU_US { "met" } else { "NOT MET" },
        fixed.cpu_us_per_call(),
        if fixed.cpu_us_per_call() <= TARGET_CPU_US {
            "met"
        } else {
            "NOT MET"
        },
    );
    let p99 = fixed.wire_percentile_ms(0.99);
    println!(
        "- p99 setup latency at {half:.0} calls/s (half the measured maximum of {:.0}/s), to the kernel's receive \
         time of the 200: {p99:.2} ms against {TARGET_P99_MS:.0} ms — {}. (To when the generator read it: \
         {:.2} ms.)",
        maximum.rate(),
        if p99 < TARGET_P99_MS && fixed.counters.errors() == 0 {
            "met"
        } else {
            "NOT MET"
        },
        fixed.percentile_ms(0.99),
    );
    println!();
}
