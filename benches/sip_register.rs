//! Registration and heartbeat throughput of one node over UDP, and the node's CPU time per
//! transaction (issue 3: at most 50 µs of node CPU per authenticated REGISTER, two round trips).
//!
//! The node runs as its own process (the `floorcast` binary Cargo builds for this bench, with the
//! bench profile) on a config written to a temporary directory: SIP on a loopback port, one TCF
//! homing users 10000-19999, a second network entry (`bench-peer`) at the load generator's
//! heartbeat socket so its `pttheartbeat` OPTIONS are a configured peer's and answered 200, no
//! metrics, one media worker, log level warn. Its CPU time is the sum of the first field of
//! `/proc/<pid>/task/*/schedstat` (ns, every thread of the node), read before and after each
//! measured window: the load generator shares the two cores, and its own cost stays out of the
//! figure (it is shown in a column of its own).
//!
//! The load generator (this process, one thread) keeps a fixed window of outstanding
//! transactions, one per slot, over four terminal sockets; each slot cycles through its own
//! users (distinct user numbers). Phases:
//!
//! 1. authenticated REGISTER, two round trips: REGISTER → 401 (challenge) → REGISTER with
//!    `Authorization` → 200, a fresh Call-ID each time; the algorithm is the one
//!    `digest::choose` picks (SHA-256), and once more with MD5, what most phones answer;
//! 2. refresh REGISTER, one round trip: the user's last nonce again with the next nonce-count
//!    (the server allows it) → 200;
//! 3. heartbeat OPTIONS (`Ptt-Extension: pttheartbeat`) from the configured peer's address → 200.
//!
//! Every phase has a warm-up, a measured window and a drain; any response other than the
//! expected one, and any transaction unanswered for a second, counts as an error. The window is
//! 64 because the node's SIP socket keeps the kernel's default receive buffer (208 KiB here): a
//! burst of 256 requests overflows it and loses datagrams.
//!
//! A baseline runs in the same run under the same load, as in `benches/fanout.rs`: a minimal
//! stateless responder on one thread of this process (canned answers, no SIP parsing, no digest
//! check), the kernel's and the syscalls' share of a transaction on this machine today.
//!
//! Timers: the node caps its live transactions (`sip.max_transactions`, 65,536 by default) and
//! keeps every completed UDP server transaction for timer J = 64·T1 (32 s with the production T1
//! of 500 ms), so with production timers it sustains ~2,048 new transactions per second before
//! answering 503 (unauthenticated REGISTERs are challenged statelessly and do not count). The
//! throughput phases therefore run with `t1_ms = 2` (J = 128 ms, room for ~128,000
//! transactions/s); on the measured path T1 only decides when completed transactions are
//! dropped (it also paces the retransmissions of the node's own heartbeats, a few per phase). A
//! last phase shows the cap with the production T1.
//!
//! Run: `cargo bench --bench sip_register` (about a minute and a half). `SIP_BENCH_QUICK=1` shortens every
//! phase to one second; `SIP_BENCH_NODE=/path/to/floorcast` runs another build of the node (an
//! A/B comparison: the machine's load changes from minute to minute, so compare builds by
//! alternating runs). Results go to stdout as Markdown tables (BENCHMARKS.md).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use floorcast::io::udp;
use floorcast::sip::{digest, HeaderName, Message};

/// Outstanding transactions kept in flight (one per slot).
const WINDOW: usize = 64;
/// Terminal sockets the slots are spread over.
const SOCKETS: usize = 4;
/// Distinct users (10000..10000+USERS); each slot owns USERS / WINDOW of them.
const USERS: usize = 4096;
/// The provisioned password of every user.
const PASSWORD: &str = "bench-secret";
/// The per-transaction deadline: unanswered by then is an error.
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(1);
/// T1 of the throughput phases (see the module docs).
const BENCH_T1_MS: u64 = 2;
/// The production default T1.
const PRODUCTION_T1_MS: u64 = 500;
/// The target: node CPU per authenticated REGISTER (two round trips).
const TARGET_US: f64 = 50.0;

/// The node binary: the one Cargo built for this bench, or `SIP_BENCH_NODE` (another build of
/// floorcast, for an A/B comparison under the same load in the same hour).
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
        Duration::from_millis(200)
    } else {
        Duration::from_millis(500)
    }
}

// ---- the node process -------------------------------------------------------------------------

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
                let ns = std::fs::read_to_string(path.join("schedstat"))
                    .unwrap_or_default()
                    .split_whitespace()
                    .next()
                    .and_then(|ns| ns.parse::<u64>().ok())
                    .unwrap_or(0);
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

/// Run time of the calling thread so far (ns).
fn own_thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .and_then(|ns| ns.parse().ok())
        .unwrap_or(0)
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

/// A floorcast node in its own process, stopped (SIGTERM) on drop.
struct NodeProcess {
    child: Child,
    sip: SocketAddr,
    _directory: tempfile::TempDir,
}

fn free_udp_port() -> u16 {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap().port()
}

impl NodeProcess {
    /// Starts a node with timer T1 = `t1_ms` whose network names `peer` as a TCF (so its
    /// heartbeats are accepted) and waits until it answers OPTIONS.
    fn start(t1_ms: u64, peer: SocketAddr) -> NodeProcess {
        let directory = tempfile::tempdir().unwrap();
        let sip = SocketAddr::from(([127, 0, 0, 1], free_udp_port()));
        let network = directory.path().join("network.toml");
        let subscribers = directory.path().join("subscribers.toml");
        let config = directory.path().join("floorcast.toml");
        std::fs::write(
            &network,
            format!(
                "[[tcf]]\nname = \"tcf-1\"\nsip = \"{sip}\"\nusers = [\"10000-19999\"]\n\n\
                 [[tcf]]\nname = \"bench-peer\"\nsip = \"{peer}\"\n"
            ),
        )
        .unwrap();
        std::fs::write(
            &subscribers,
            format!("[[user]]\nnumber = \"10000-19999\"\npassword = \"{PASSWORD}\"\n"),
        )
        .unwrap();
        // Media ports are bound per leg only; no call is made here, so the range is nominal.
        let media_min = 20_000 + (sip.port() % 2000) * 10;
        std::fs::write(
            &config,
            format!(
                "[node]\nname = \"tcf-1\"\n\
                 [log]\nlevel = \"warn\"\n\
                 [media]\nport_min = {media_min}\nport_max = {media_max}\nworkers = 1\n\
                 [metrics]\nlisten = \"off\"\n\
                 [sip]\nlisten = \"{sip}\"\nrealm = \"bench\"\nt1_ms = {t1_ms}\n\
                 [provisioning]\nnetwork = \"{network}\"\nsubscribers = \"{subscribers}\"\n\
                 [store]\npath = \"{store}\"\n",
                media_max = media_min + 9,
                network = network.display(),
                subscribers = subscribers.display(),
                store = directory.path().join("state.redb").display(),
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
        let mut node = NodeProcess {
            child,
            sip,
            _directory: directory,
        };
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

/// What the load is aimed at: an address, and a way to read the CPU time spent serving it.
trait Target {
    fn address(&self) -> SocketAddr;
    fn cpu(&self) -> CpuSample;
}

impl Target for NodeProcess {
    fn address(&self) -> SocketAddr {
        self.sip
    }

    fn cpu(&self) -> CpuSample {
        CpuSample::of(self.pid())
    }
}

/// The baseline: a minimal stateless responder on one thread of this process. Blocking
/// `recv_from`, a canned answer that copies the Via, From, To, Call-ID and CSeq lines (401 with
/// a fixed nonce to a REGISTER without `Authorization`, 200 to anything else), `send_to`. No
/// parsing beyond line splitting, no authentication, no state: the kernel's and the syscalls'
/// share of a transaction, measured on the same machine in the same run.
struct Baseline {
    address: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Name of the baseline's thread (its CPU time is read by name).
const BASELINE_THREAD: &str = "baseline-sip";

impl Baseline {
    fn start() -> Baseline {
        let socket = bind_socket();
        socket.set_nonblocking(false).unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let address = socket.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name(BASELINE_THREAD.into())
            .spawn(move || {
                let mut buffer = vec![0u8; 65_536];
                let mut answer = Vec::with_capacity(1024);
                while !stop_flag.load(Ordering::Relaxed) {
                    let Ok((length, source)) = socket.recv_from(&mut buffer) else {
                        continue;
                    };
                    Baseline::answer(&buffer[..length], &mut answer);
                    let _ = socket.send_to(&answer, source);
                }
            })
            .unwrap();
        Baseline {
            address,
            stop,
            thread: Some(thread),
        }
    }

    fn answer(request: &[u8], answer: &mut Vec<u8>) {
        const COPIED: [&[u8]; 5] = [b"Via:", b"From:", b"To:", b"Call-ID:", b"CSeq:"];
        let challenge = request.starts_with(b"REGISTER ")
            && !request
                .windows(b"\r\nAuthorization:".len())
                .any(|window| window == b"\r\nAuthorization:");
        answer.clear();
        answer.extend_from_slice(if challenge {
            b"SIP/2.0 401 Unauthorized\r\n"
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
        if challenge {
            answer.extend_from_slice(
                b"WWW-Authenticate: Digest realm=\"bench\", nonce=\"AAAAAGsCSJYoExQa-2eexVbD0czodSivArQmI3PZ89w\", \
                  algorithm=SHA-256, qop=\"auth\"\r\n\
                  WWW-Authenticate: Digest realm=\"bench\", nonce=\"AAAAAGsCSJYoExQa-2eexVbD0czodSivArQmI3PZ89w\", \
                  algorithm=MD5, qop=\"auth\"\r\n",
            );
        }
        answer.extend_from_slice(b"Content-Length: 0\r\n\r\n");
    }
}

impl Target for Baseline {
    fn address(&self) -> SocketAddr {
        self.address
    }

    fn cpu(&self) -> CpuSample {
        let mut sample = CpuSample::default();
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return sample;
        };
        for task in tasks.flatten() {
            let path = task.path();
            let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
            if name.trim() != BASELINE_THREAD {
                continue;
            }
            let schedstat = std::fs::read_to_string(path.join("schedstat")).unwrap_or_default();
            let ns = schedstat
                .split_whitespace()
                .next()
                .and_then(|ns| ns.parse::<u64>().ok())
                .unwrap_or(0);
            sample.total_ns += ns;
            sample.by_thread.insert(BASELINE_THREAD.to_owned(), ns);
        }
        sample
    }
}

impl Drop for Baseline {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

// ---- the load generator -----------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// REGISTER → 401 → REGISTER with credentials → 200; `md5` answers the MD5 challenge.
    Challenge { md5: bool },
    /// REGISTER with the user's last nonce and the next nonce-count → 200.
    Refresh,
    /// OPTIONS with `Ptt-Extension: pttheartbeat` from the peer socket → 200.
    Heartbeat,
}

impl Phase {
    fn label(self) -> &'static str {
        match self {
            Phase::Challenge { md5: false } => {
                "(1) authenticated REGISTER, two round trips (401 challenge each time), SHA-256"
            }
            Phase::Challenge { md5: true } => "(1b) the same, MD5",
            Phase::Refresh => "(2) refresh REGISTER, reused nonce (nc+1), one round trip",
            Phase::Heartbeat => "(3) heartbeat OPTIONS (`pttheartbeat`) from a configured peer",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Nothing in flight (draining).
    Idle,
    /// First REGISTER sent, waiting for the 401.
    AwaitChallenge,
    /// REGISTER with credentials sent, waiting for the 200.
    AwaitOk,
    /// Refresh REGISTER sent: 200, or a 401 if the nonce was no longer good.
    AwaitRefresh,
    /// Heartbeat OPTIONS sent.
    AwaitHeartbeat,
}

#[derive(Debug)]
struct User {
    number: String,
    challenge: Option<digest::Challenge>,
    nc: u32,
}

#[derive(Debug)]
struct Slot {
    /// Incremented per transaction; in the Call-ID, so late answers are recognised.
    generation: u64,
    step: Step,
    /// The user of the transaction in flight (index into `Generator::users`).
    user: usize,
    /// Next of this slot's users, counted in rounds.
    round: usize,
    cseq: u32,
    sent_at: Instant,
}

#[derive(Debug, Clone, Default)]
struct Counters {
    /// Transactions completed as expected.
    completed: u64,
    /// Unexpected final responses, per status.
    unexpected: BTreeMap<u16, u64>,
    /// Transactions unanswered within the deadline.
    timeouts: u64,
    /// Refreshes answered with a new challenge (then completed with it).
    rechallenged: u64,
}

impl Counters {
    fn errors(&self) -> u64 {
        self.timeouts + self.unexpected.values().sum::<u64>()
    }

    fn describe_errors(&self) -> String {
        let mut parts: Vec<String> = self
            .unexpected
            .iter()
            .map(|(status, count)| format!("{count}× {status}"))
            .collect();
        if self.timeouts > 0 {
            parts.push(format!("{} timeouts", self.timeouts));
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
    phase: Phase,
    /// Completed transactions in the measured window.
    transactions: u64,
    elapsed: Duration,
    node_cpu: CpuSample,
    generator_cpu_ns: u64,
    /// Counters over the whole phase (warm-up, window and drain).
    counters: Counters,
}

impl Measurement {
    fn rate(&self) -> f64 {
        self.transactions as f64 / self.elapsed.as_secs_f64()
    }

    fn cpu_us_per_transaction(&self) -> f64 {
        self.node_cpu.total_ns as f64 / 1000.0 / self.transactions.max(1) as f64
    }

    fn ticks_us_per_transaction(&self) -> f64 {
        self.node_cpu.ticks as f64 * 1e6 / clock_ticks_per_second() as f64 / self.transactions.max(1) as f64
    }

    fn node_load_percent(&self) -> f64 {
        self.node_cpu.total_ns as f64 / self.elapsed.as_nanos() as f64 * 100.0
    }

    fn generator_load_percent(&self) -> f64 {
        self.generator_cpu_ns as f64 / self.elapsed.as_nanos() as f64 * 100.0
    }
}

struct Generator {
    terminals: Vec<UdpSocket>,
    peer: UdpSocket,
    server: SocketAddr,
    users: Vec<User>,
    slots: Vec<Slot>,
    /// Makes every branch unique.
    branch: u64,
    /// Heartbeats the node sent us (answered), over every run.
    node_heartbeats: u64,
    counters: Counters,
    buffer: Vec<u8>,
}

fn bind_socket() -> UdpSocket {
    udp::bind("127.0.0.1:0".parse().unwrap(), 4 << 20, 4 << 20).unwrap()
}

impl Generator {
    fn new(peer: UdpSocket) -> Generator {
        let users = (0..USERS)
            .map(|index| User {
                number: (10_000 + index).to_string(),
                challenge: None,
                nc: 0,
            })
            .collect();
        let now = Instant::now();
        let slots = (0..WINDOW)
            .map(|index| Slot {
                generation: 0,
                step: Step::Idle,
                user: index,
                round: 0,
                cseq: 0,
                sent_at: now,
            })
            .collect();
        Generator {
            terminals: (0..SOCKETS).map(|_| bind_socket()).collect(),
            peer,
            server: "127.0.0.1:9".parse().unwrap(),
            users,
            slots,
            branch: 0,
            node_heartbeats: 0,
            counters: Counters::default(),
            buffer: vec![0u8; 65_536],
        }
    }

    fn terminal(&self, slot: usize) -> &UdpSocket {
        &self.terminals[slot % SOCKETS]
    }

    fn send(&self, socket: &UdpSocket, text: &str) {
        // Loopback with large buffers: a failed send shows up as a timeout, which is counted.
        let _ = socket.send_to(text.as_bytes(), self.server);
    }

    fn register_text(&mut self, slot: usize, authorization: Option<&str>) -> String {
        self.branch += 1;
        let me = self.terminal(slot).local_addr().unwrap();
        let state = &self.slots[slot];
        let auth = authorization
            .map(|value| format!("Authorization: {value}\r\n"))
            .unwrap_or_default();
        format!(
            "REGISTER sip:{server} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKb{branch};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:{user}@{server}>;tag=f{generation}\r\nTo: <sip:{user}@{server}>\r\n\
             Call-ID: {slot}.{generation}@bench\r\nCSeq: {cseq} REGISTER\r\n\
             Contact: <sip:{user}@{me}>;expires=3600\r\n{auth}Ptt-Extension: pttregister\r\n\
             Content-Length: 0\r\n\r\n",
            server = self.server,
            branch = self.branch,
            user = self.users[state.user].number,
            generation = state.generation,
            cseq = state.cseq,
        )
    }

    fn authorization(&mut self, user: usize) -> String {
        let uri = format!("sip:{}", self.server);
        let user = &mut self.users[user];
        let challenge = user.challenge.as_ref().expect("a challenge to answer");
        user.nc += 1;
        let cnonce = format!("{:016x}", rand::random::<u64>());
        digest::respond(challenge, &user.number, PASSWORD, "REGISTER", &uri, user.nc, &cnonce)
    }

    /// Starts the next transaction of `slot` for `phase`.
    fn begin(&mut self, slot: usize, phase: Phase) {
        let users_per_slot = USERS / WINDOW;
        let state = &mut self.slots[slot];
        state.generation += 1;
        state.user = slot + (state.round % users_per_slot) * WINDOW;
        state.round += 1;
        state.cseq = 1;
        state.sent_at = Instant::now();
        state.step = match phase {
            Phase::Challenge { .. } => Step::AwaitChallenge,
            Phase::Refresh => Step::AwaitRefresh,
            Phase::Heartbeat => Step::AwaitHeartbeat,
        };
        let (user, generation) = (state.user, state.generation);
        match phase {
            Phase::Challenge { .. } => {
                let text = self.register_text(slot, None);
                self.send(self.terminal(slot), &text);
            }
            Phase::Refresh => {
                let authorization = self.authorization(user);
                let text = self.register_text(slot, Some(&authorization));
                self.send(self.terminal(slot), &text);
            }
            Phase::Heartbeat => {
                self.branch += 1;
                let me = self.peer.local_addr().unwrap();
                let text = format!(
                    "OPTIONS sip:{server} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKh{branch};rport\r\n\
                     Max-Forwards: 70\r\nFrom: <sip:bench-peer@{me}>;tag=h{generation}\r\nTo: <sip:tcf-1@{server}>\r\n\
                     Call-ID: {slot}.{generation}@bench\r\nCSeq: 1 OPTIONS\r\nPtt-Extension: pttheartbeat\r\n\
                     Content-Length: 0\r\n\r\n",
                    server = self.server,
                    branch = self.branch,
                );
                self.send(&self.peer, &text);
            }
        }
    }

    /// Sends the credentials for the challenge in `response` (same Call-ID, next CSeq).
    fn answer_challenge(&mut self, slot: usize, response: &Message, md5: bool) -> bool {
        let challenges: Vec<digest::Challenge> = response
            .headers_of(HeaderName::WwwAuthenticate)
            .filter_map(|header| header.value_str())
            .filter_map(|value| digest::parse_challenge(&value).ok())
            .collect();
        let chosen = if md5 {
            challenges
                .iter()
                .find(|challenge| challenge.algorithm == digest::Algorithm::Md5)
        } else {
            digest::choose(&challenges)
        };
        let Some(challenge) = chosen.cloned() else {
            return false;
        };
        let user = self.slots[slot].user;
        self.users[user].challenge = Some(challenge);
        self.users[user].nc = 0;
        let authorization = self.authorization(user);
        let state = &mut self.slots[slot];
        state.cseq += 1;
        state.step = Step::AwaitOk;
        state.sent_at = Instant::now();
        let text = self.register_text(slot, Some(&authorization));
        self.send(self.terminal(slot), &text);
        true
    }

    /// A transaction of `slot` ended (well or not): start the next one unless draining.
    fn next(&mut self, slot: usize, phase: Phase, draining: bool) {
        if draining {
            self.slots[slot].step = Step::Idle;
        } else {
            self.begin(slot, phase);
        }
    }

    fn handle(&mut self, socket: usize, message: Message, phase: Phase, draining: bool) {
        if message.is_request() {
            let socket = if socket < SOCKETS {
                &self.terminals[socket]
            } else {
                &self.peer
            };
            // The node's own heartbeat to its peer (us): answer it, as a peer TCF would.
            if let Ok(builder) = floorcast::sip::response_to(&message, 200, "OK", Some("bench-peer")) {
                if let Ok(response) = builder.build() {
                    let _ = socket.send_to(response.as_bytes(), self.server);
                    self.node_heartbeats += 1;
                }
            }
            return;
        }
        let Some(status) = message.status() else { return };
        if status < 200 {
            return;
        }
        let Some((slot, generation)) = message.call_id().ok().and_then(|call_id| {
            let (slot, rest) = call_id.split_once('.')?;
            let (generation, _) = rest.split_once('@')?;
            Some((slot.parse::<usize>().ok()?, generation.parse::<u64>().ok()?))
        }) else {
            return;
        };
        if slot >= WINDOW || self.slots[slot].generation != generation {
            return; // late answer to a transaction already counted as timed out
        }
        let step = self.slots[slot].step;
        let ok = match (step, status) {
            (Step::AwaitChallenge, 401) => {
                let md5 = matches!(phase, Phase::Challenge { md5: true });
                if self.answer_challenge(slot, &message, md5) {
                    return;
                }
                false
            }
            (Step::AwaitRefresh, 401) => {
                self.counters.rechallenged += 1;
                if self.answer_challenge(slot, &message, false) {
                    return;
                }
                false
            }
            (Step::AwaitOk | Step::AwaitRefresh | Step::AwaitHeartbeat, 200) => true,
            (Step::Idle, _) => return,
            _ => false,
        };
        if ok {
            self.counters.completed += 1;
        } else {
            *self.counters.unexpected.entry(status).or_default() += 1;
        }
        self.next(slot, phase, draining);
    }

    /// Drains every readable socket (`pollfds`: the terminal sockets, then the peer socket).
    fn receive(&mut self, pollfds: &[libc::pollfd], phase: Phase, draining: bool) {
        for (index, pollfd) in pollfds.iter().enumerate() {
            if pollfd.revents & libc::POLLIN == 0 {
                continue;
            }
            loop {
                let socket = if index < SOCKETS {
                    &self.terminals[index]
                } else {
                    &self.peer
                };
                let Ok((length, _)) = socket.recv_from(&mut self.buffer) else {
                    break;
                };
                if let Ok(message) = Message::parse_datagram(Bytes::copy_from_slice(&self.buffer[..length])) {
                    self.handle(index, message, phase, draining);
                }
            }
        }
    }

    fn expire(&mut self, phase: Phase, draining: bool) {
        let now = Instant::now();
        for slot in 0..WINDOW {
            let state = &self.slots[slot];
            if state.step != Step::Idle && now.duration_since(state.sent_at) > TRANSACTION_TIMEOUT {
                self.counters.timeouts += 1;
                self.next(slot, phase, draining);
            }
        }
    }

    /// Runs `phase` against the node: warm-up, a measured window of `window`, then a drain.
    fn run(&mut self, target: &dyn Target, phase: Phase, warm_up: Duration, window: Duration) -> Measurement {
        self.server = target.address();
        self.counters = Counters::default();
        let mut pollfds: Vec<libc::pollfd> = self
            .terminals
            .iter()
            .chain(std::iter::once(&self.peer))
            .map(|socket| libc::pollfd {
                fd: socket.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        for slot in 0..WINDOW {
            self.begin(slot, phase);
        }
        let started = Instant::now();
        let mut window_start: Option<(Instant, CpuSample, u64, u64)> = None;
        let mut result: Option<(Duration, CpuSample, u64, u64)> = None;
        let mut last_expiry = started;
        loop {
            let now = Instant::now();
            let draining = result.is_some();
            match (&window_start, &result) {
                (None, _) if now.duration_since(started) >= warm_up => {
                    window_start = Some((now, target.cpu(), own_thread_cpu_ns(), self.counters.completed));
                }
                (Some((at, cpu, own, completed)), None) if now.duration_since(*at) >= window => {
                    let elapsed = now.duration_since(*at);
                    let node_cpu = cpu.until(&target.cpu());
                    let own = own_thread_cpu_ns() - own;
                    result = Some((elapsed, node_cpu, own, self.counters.completed - completed));
                }
                _ => {}
            }
            if draining {
                let idle = self.slots.iter().all(|slot| slot.step == Step::Idle);
                if idle || now.duration_since(started) > warm_up + window + TRANSACTION_TIMEOUT * 2 {
                    break;
                }
            }
            for pollfd in &mut pollfds {
                pollfd.revents = 0;
            }
            // SAFETY: poll(2) on fds owned by `self`, alive for the call.
            unsafe { libc::poll(pollfds.as_mut_ptr(), pollfds.len() as libc::nfds_t, 5) };
            self.receive(&pollfds, phase, draining);
            if now.duration_since(last_expiry) >= Duration::from_millis(50) {
                last_expiry = now;
                self.expire(phase, draining);
            }
        }
        let (elapsed, node_cpu, generator_cpu_ns, transactions) = result.expect("the window ended");
        Measurement {
            phase,
            transactions,
            elapsed,
            node_cpu,
            generator_cpu_ns,
            counters: self.counters.clone(),
        }
    }
}

// ---- the report -------------------------------------------------------------------------------

fn print_table(measurements: &[Measurement]) {
    println!(
        "| phase | transactions/s | node CPU per transaction | node CPU per second | errors | load generator CPU per second |"
    );
    println!("|---|---:|---:|---:|---|---:|");
    for measurement in measurements {
        println!(
            "| {} | {:.0} | {:.1} µs | {:.0}% | {} | {:.0}% |",
            measurement.phase.label(),
            measurement.rate(),
            measurement.cpu_us_per_transaction(),
            measurement.node_load_percent(),
            measurement.counters.describe_errors(),
            measurement.generator_load_percent(),
        );
    }
    println!();
}

/// `(1)`, `(1b)`, ...: the number of a phase's label.
fn short_label(phase: Phase) -> String {
    phase.label().split(')').next().unwrap_or("").to_owned() + ")"
}

fn print_threads(measurements: &[Measurement]) {
    let names: Vec<String> = {
        let mut names: Vec<String> = measurements
            .iter()
            .flat_map(|measurement| {
                measurement
                    .node_cpu
                    .by_thread
                    .iter()
                    // Threads under 0.1% of the node's time (the idle media worker) are left out.
                    .filter(|(_, ns)| **ns * 1000 >= measurement.node_cpu.total_ns.max(1))
                    .map(|(name, _)| name.clone())
            })
            .collect();
        names.sort();
        names.dedup();
        names
    };
    println!("Node CPU per transaction by thread, and the process's utime+stime as a cross-check:\n");
    print!("| phase |");
    for name in &names {
        print!(" `{name}` |");
    }
    println!(" utime+stime |");
    print!("|---|");
    for _ in &names {
        print!("---:|");
    }
    println!("---:|");
    for measurement in measurements {
        print!("| {} |", short_label(measurement.phase));
        for name in &names {
            let ns = measurement.node_cpu.by_thread.get(name).copied().unwrap_or(0);
            print!(
                " {:.1} µs |",
                ns as f64 / 1000.0 / measurement.transactions.max(1) as f64
            );
        }
        println!(" {:.1} µs |", measurement.ticks_us_per_transaction());
    }
    println!();
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
    println!(
        "# sip_register bench — {} phases ({} s measured each), one node process, UDP loopback\n",
        if quick() { "quick" } else { "full" },
        window.as_secs()
    );
    println!(
        "Load: {WINDOW} transactions in flight over {SOCKETS} terminal sockets, {USERS} distinct users; \
         node with `t1_ms = {BENCH_T1_MS}` (see below), 1 media worker, metrics off, log level warn.\n"
    );

    let mut generator = Generator::new(bind_socket());
    let peer = generator.peer.local_addr().unwrap();
    let node = NodeProcess::start(BENCH_T1_MS, peer);
    let drops_before = udp_receive_buffer_drops();
    // Every user registers once (and keeps its nonce for the refresh phase). The refresh phase
    // runs first, before the challenge phases fill the server's replay table (65,536 nonces).
    for _ in 0..40 {
        if generator.users.iter().all(|user| user.challenge.is_some()) {
            break;
        }
        let prime = generator.run(
            &node,
            Phase::Challenge { md5: false },
            Duration::ZERO,
            Duration::from_millis(250),
        );
        assert_eq!(
            prime.counters.errors(),
            0,
            "priming: {}",
            prime.counters.describe_errors()
        );
    }
    assert!(
        generator.users.iter().all(|user| user.challenge.is_some()),
        "priming registers every user"
    );
    let refresh = generator.run(&node, Phase::Refresh, warm_up(), window);
    let challenge = generator.run(&node, Phase::Challenge { md5: false }, warm_up(), window);
    let challenge_md5 = generator.run(&node, Phase::Challenge { md5: true }, warm_up(), window);
    let heartbeat = generator.run(&node, Phase::Heartbeat, warm_up(), window);
    let drops = udp_receive_buffer_drops() - drops_before;
    drop(node);
    let baseline = Baseline::start();
    let baseline_challenge = generator.run(&baseline, Phase::Challenge { md5: false }, warm_up(), window);
    let baseline_heartbeat = generator.run(&baseline, Phase::Heartbeat, warm_up(), window);
    drop(baseline);

    let measurements = [challenge, challenge_md5, refresh, heartbeat];
    println!("## Throughput and node CPU per transaction\n");
    print_table(&measurements);
    print_threads(&measurements);
    println!(
        "Baseline in the same run: a minimal stateless responder (one thread of the bench process: blocking \
         `recv_from`, a canned answer copying Via/From/To/Call-ID/CSeq, `send_to`; no SIP parsing, no digest \
         check, no state) under the same load — the kernel's and the syscalls' share of each transaction.\n"
    );
    println!("| phase | baseline transactions/s | baseline CPU per transaction | errors | floorcast ÷ baseline CPU |");
    println!("|---|---:|---:|---|---:|");
    for (baseline, node) in [
        (&baseline_challenge, &measurements[0]),
        (&baseline_heartbeat, &measurements[3]),
    ] {
        println!(
            "| {} | {:.0} | {:.1} µs | {} | {:.1} |",
            short_label(baseline.phase),
            baseline.rate(),
            baseline.cpu_us_per_transaction(),
            baseline.counters.describe_errors(),
            node.cpu_us_per_transaction() / baseline.cpu_us_per_transaction().max(0.001)
        );
    }
    println!();
    let per_register = measurements[0].cpu_us_per_transaction();
    println!(
        "Authenticated REGISTER (two round trips, SHA-256): {per_register:.1} µs of node CPU = {:.2} × the \
         {TARGET_US:.0} µs target ({}); that is {:.0} REGISTERs per second per core of node CPU. The baseline \
         spends {:.1} µs on the same four datagrams.\n",
        per_register / TARGET_US,
        if per_register <= TARGET_US { "met" } else { "MISSED" },
        1e6 / per_register,
        baseline_challenge.cpu_us_per_transaction()
    );
    let rechallenged: u64 = measurements
        .iter()
        .map(|measurement| measurement.counters.rechallenged)
        .sum();
    println!(
        "Refreshes re-challenged by the node: {rechallenged}; heartbeats the node sent the bench peer (answered): \
         {}; UDP datagrams dropped for want of receive-buffer room (kernel, system-wide) during these phases: \
         {drops}.\n",
        generator.node_heartbeats
    );

    // The live-transaction cap with the production T1.
    let mut generator = Generator::new(bind_socket());
    let peer = generator.peer.local_addr().unwrap();
    let node = NodeProcess::start(PRODUCTION_T1_MS, peer);
    let capped = generator.run(&node, Phase::Challenge { md5: false }, Duration::ZERO, window);
    drop(node);
    println!("## The live-transaction cap with the production T1 ({PRODUCTION_T1_MS} ms)\n");
    println!(
        "Completed UDP server transactions stay for timer J = 64·T1 = {} s and the node holds at most 65,536 live \
         transactions (`sip.max_transactions` default), so it sustains about {:.0} authenticated REGISTERs per second \
         (the 401 challenge is stateless: one transaction each); a burst beyond 65,536 within 32 s gets 503.\n",
        64 * PRODUCTION_T1_MS / 1000,
        65_536.0 / (64.0 * PRODUCTION_T1_MS as f64 / 1000.0),
    );
    println!(
        "| phase | authenticated REGISTERs completed in {} s | errors |",
        window.as_secs()
    );
    println!("|---|---:|---|");
    println!(
        "| (1) with t1_ms = {PRODUCTION_T1_MS} | {} | {} |",
        capped.transactions,
        capped.counters.describe_errors()
    );
    println!();
}
