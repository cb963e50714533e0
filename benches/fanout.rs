//! (b) End-to-end fan-out throughput over loopback, (c) relay-added latency, and realistic
//! shapes (many low-rate talkers; 100 groups x 100 listeners), each compared with a baseline
//! measured in the same run: a minimal forwarder (recvmmsg -> sendmmsg of the unchanged packet
//! to N addresses, no bookkeeping), the practical limit of the kernel.
//!
//! Run: `cargo bench --bench fanout` (about three minutes). `FANOUT_QUICK=1` shortens every
//! phase for a smoke run. Results go to stdout as Markdown tables (BENCHMARKS.md).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use floorcast::config::{Config, IoBackend, MediaConfig, SourceCheck};
use floorcast::io::udp::{self, RecvBatch};
use floorcast::io::Engine;
use floorcast::media::api::{BridgeKind, GroupOptions, LegSpec};
use floorcast::media::shard::RxBatch;
use hdrhistogram::Histogram;

const PACKET_SIZE: usize = 172; // 12-byte header + 160 bytes (20 ms of G.711)

/// When set, the engine's worker runs pinned to the first allowed CPU and the load generator
/// and receivers to the last one: the relay gets a core of its own, as in production.
static PINNED: AtomicBool = AtomicBool::new(false);

fn pin_harness_thread() {
    if !PINNED.load(Ordering::Relaxed) {
        return;
    }
    let cpus = floorcast::io::worker::allowed_cpus();
    if let Some(&cpu) = cpus.last() {
        // SAFETY: a zeroed cpu_set_t is empty; CPU_SET writes within it.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
    }
}

fn unpin_thread() {
    // SAFETY: as above, with every allowed CPU.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for cpu in floorcast::io::worker::allowed_cpus() {
            libc::CPU_SET(cpu, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn quick() -> bool {
    std::env::var_os("FANOUT_QUICK").is_some()
}

fn phase() -> Duration {
    if quick() {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(2)
    }
}

fn origin() -> Instant {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

fn now_ns() -> u64 {
    origin().elapsed().as_nanos() as u64
}

/// Timer slack of 1 ns for this thread, so 100 µs pacing sleeps are not stretched to 150.
fn tight_timers() {
    // SAFETY: prctl with a plain integer argument.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1) };
}

fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
}

/// CPU time (ns) spent so far by this process's threads whose name starts with `prefix`.
fn thread_cpu_ns(prefix: &str) -> u64 {
    let mut total = 0;
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    for task in tasks.flatten() {
        let path = task.path();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if !name.trim().starts_with(prefix) {
            continue;
        }
        let schedstat = std::fs::read_to_string(path.join("schedstat")).unwrap_or_default();
        total += schedstat
            .split_whitespace()
            .next()
            .and_then(|ns| ns.parse::<u64>().ok())
            .unwrap_or(0);
    }
    total
}

fn bind_local() -> UdpSocket {
    udp::bind("127.0.0.1:0".parse().unwrap(), 1 << 20, 1 << 20).unwrap()
}

/// Receivers: one thread draining many sockets with epoll + recvmmsg, counting packets and
/// recording latency (stamp in the last 8 bytes of each packet).
struct Receivers {
    addresses: Vec<SocketAddr>,
    received: Arc<AtomicU64>,
    histogram: Arc<Mutex<Histogram<u64>>>,
    record: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Receivers {
    fn new(count: usize) -> Receivers {
        let sockets: Vec<UdpSocket> = (0..count).map(|_| bind_local()).collect();
        let addresses = sockets.iter().map(|socket| socket.local_addr().unwrap()).collect();
        let received = Arc::new(AtomicU64::new(0));
        let histogram = Arc::new(Mutex::new(Histogram::new_with_bounds(1, 10_000_000_000, 3).unwrap()));
        let record = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (received, histogram, record, stop) =
                (received.clone(), histogram.clone(), record.clone(), stop.clone());
            std::thread::Builder::new()
                .name("bench-receivers".into())
                .spawn(move || {
                    pin_harness_thread();
                    // SAFETY: plain epoll calls on fds owned by `sockets`, alive in this closure.
                    let epoll = unsafe { libc::epoll_create1(0) };
                    for (index, socket) in sockets.iter().enumerate() {
                        let mut event = libc::epoll_event {
                            events: libc::EPOLLIN as u32,
                            u64: index as u64,
                        };
                        unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, socket.as_raw_fd(), &mut event) };
                    }
                    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
                    let mut batch = RecvBatch::new(64);
                    let mut local = Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).unwrap();
                    while !stop.load(Ordering::Relaxed) {
                        let ready = unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), 256, 50) };
                        let recording = record.load(Ordering::Relaxed);
                        for event in events.iter().take(ready.max(0) as usize) {
                            let socket = &sockets[event.u64 as usize];
                            while let Ok(count) = batch.receive(socket.as_raw_fd()) {
                                if count == 0 {
                                    break;
                                }
                                received.fetch_add(count as u64, Ordering::Relaxed);
                                if recording {
                                    let now = now_ns();
                                    for index in 0..batch.len() {
                                        let data = batch.packet(index).unwrap().data;
                                        if data.len() >= 8 {
                                            let stamp = u64::from_be_bytes(data[data.len() - 8..].try_into().unwrap());
                                            let _ = local.record(now.saturating_sub(stamp).max(1));
                                        }
                                    }
                                }
                            }
                        }
                        if !recording && !local.is_empty() {
                            histogram.lock().unwrap().add(&local).unwrap();
                            local.reset();
                        }
                    }
                    histogram.lock().unwrap().add(&local).unwrap();
                    unsafe { libc::close(epoll) };
                })
                .unwrap()
        };
        Receivers {
            addresses,
            received,
            histogram,
            record,
            stop,
            thread: Some(thread),
        }
    }

    fn take_histogram(&self) -> Histogram<u64> {
        // The receiver merges its local histogram when recording stops.
        std::thread::sleep(Duration::from_millis(120));
        let mut histogram = self.histogram.lock().unwrap();
        let copy = histogram.clone();
        histogram.reset();
        copy
    }
}

impl Drop for Receivers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

/// Sequence numbers continue across calls of [`send`]: the engine drops packets that go back in
/// sequence (late or duplicate), as it should.
static SEQUENCE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Sends stamped packets from `socket` to `target` at `rate` packets/s (0: as fast as
/// possible, in `sendmmsg` batches of 32) for `duration`. Returns packets sent.
fn send(socket: &UdpSocket, target: SocketAddr, rate: u64, duration: Duration) -> u64 {
    const BURST: usize = 32;
    let mut packets = [[0u8; PACKET_SIZE]; BURST];
    for packet in &mut packets {
        packet[0] = 0x80;
        packet[8..12].copy_from_slice(&0xfeed_beefu32.to_be_bytes());
    }
    // SAFETY: zeroed C structs, filled before use; everything outlives the sendmmsg calls.
    let mut name: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let name_length = udp::to_sockaddr(&target, &mut name);
    let mut iovecs = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; BURST];
    let mut headers: [libc::mmsghdr; BURST] = unsafe { std::mem::zeroed() };
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < duration {
        let due = if rate == 0 {
            sent + BURST as u64
        } else {
            (started.elapsed().as_nanos() as u64 * rate / 1_000_000_000).max(sent)
        };
        while sent < due {
            let count = ((due - sent) as usize).min(BURST);
            let stamp = now_ns().to_be_bytes();
            for index in 0..count {
                let seq = SEQUENCE.fetch_add(1, Ordering::Relaxed) as u16;
                let packet = &mut packets[index];
                packet[2..4].copy_from_slice(&seq.to_be_bytes());
                packet[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
                packet[PACKET_SIZE - 8..].copy_from_slice(&stamp);
                iovecs[index] = libc::iovec {
                    iov_base: packet.as_mut_ptr().cast(),
                    iov_len: PACKET_SIZE,
                };
                let header = &mut headers[index].msg_hdr;
                header.msg_name = (&mut name as *mut libc::sockaddr_storage).cast();
                header.msg_namelen = name_length;
                header.msg_iov = &mut iovecs[index];
                header.msg_iovlen = 1;
            }
            // SAFETY: headers[..count] point at live buffers prepared above.
            let result = unsafe { libc::sendmmsg(socket.as_raw_fd(), headers.as_mut_ptr(), count as u32, 0) };
            if result <= 0 {
                break;
            }
            sent += result as u64;
        }
        if rate != 0 {
            // Fine pacing (bursts of rate/10000 packets): coarse bursts would measure the
            // sender's burstiness as relay latency.
            std::thread::sleep(Duration::from_micros(100));
        }
    }
    sent
}

/// The baseline: recvmmsg -> sendmmsg of the unchanged packet to every destination.
struct MinimalForwarder {
    address: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MinimalForwarder {
    fn start(destinations: Vec<SocketAddr>) -> MinimalForwarder {
        let socket = udp::bind("127.0.0.1:0".parse().unwrap(), 262_144, 262_144).unwrap();
        let address = socket.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("baseline-fwd".into())
            .spawn(move || {
                let mut batch = RecvBatch::new(32);
                let count = destinations.len();
                // SAFETY: zeroed C structs, filled below; buffers outlive every call.
                let mut names: Vec<libc::sockaddr_storage> = vec![unsafe { std::mem::zeroed() }; count];
                let lengths: Vec<libc::socklen_t> = destinations
                    .iter()
                    .zip(names.iter_mut())
                    .map(|(d, n)| udp::to_sockaddr(d, n))
                    .collect();
                let mut iovecs = vec![
                    libc::iovec {
                        iov_base: std::ptr::null_mut(),
                        iov_len: 0
                    };
                    count
                ];
                let mut headers: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; count];
                let fd = socket.as_raw_fd();
                let mut poll = libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                while !stop_flag.load(Ordering::Relaxed) {
                    unsafe { libc::poll(&mut poll, 1, 50) };
                    while let Ok(received) = batch.receive(fd) {
                        if received == 0 {
                            break;
                        }
                        for index in 0..received {
                            let data = batch.packet(index).unwrap().data;
                            for target in 0..count {
                                iovecs[target] = libc::iovec {
                                    iov_base: data.as_ptr() as *mut _,
                                    iov_len: data.len(),
                                };
                                let header = &mut headers[target].msg_hdr;
                                header.msg_name = (&mut names[target] as *mut libc::sockaddr_storage).cast();
                                header.msg_namelen = lengths[target];
                                header.msg_iov = &mut iovecs[target];
                                header.msg_iovlen = 1;
                            }
                            let mut next = 0;
                            while next < count {
                                let chunk = (count - next).min(1024);
                                let sent = unsafe {
                                    libc::sendmmsg(fd, headers[next..].as_mut_ptr(), chunk as u32, libc::MSG_DONTWAIT)
                                };
                                if sent <= 0 {
                                    break;
                                }
                                next += sent as usize;
                            }
                        }
                    }
                }
            })
            .unwrap();
        MinimalForwarder {
            address,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for MinimalForwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

fn engine_config(backend: IoBackend, workers: usize, port_min: u16) -> MediaConfig {
    let mut config = Config::from_toml("").unwrap().media;
    config.backend = backend;
    config.workers = workers;
    config.port_min = port_min;
    config.port_max = 65_000;
    config.rtcp_interval = Duration::from_secs(5);
    config
}

/// A floorcast group bridge: talker leg + one listener leg per receiver address.
struct FloorcastFanout {
    /// Kept alive for the measurement; dropped (workers joined) at the end.
    _engine: Engine,
    talker_port: SocketAddr,
}

impl FloorcastFanout {
    fn start(backend: IoBackend, sender: SocketAddr, listeners: &[SocketAddr]) -> FloorcastFanout {
        let engine = Engine::start(&engine_config(backend, 1, 20_000), "bench").unwrap();
        let bridge = engine
            .create_bridge(BridgeKind::Group(GroupOptions::default()))
            .unwrap();
        let talker = engine
            .add_leg(
                bridge,
                LegSpec {
                    remote: Some(sender),
                    ..LegSpec::default()
                },
            )
            .unwrap();
        for &listener in listeners {
            engine
                .add_leg(
                    bridge,
                    LegSpec {
                        remote: Some(listener),
                        rtcp_mux: true,
                        ..LegSpec::default()
                    },
                )
                .unwrap();
        }
        engine.set_source(bridge, Some(talker.id)).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        FloorcastFanout {
            _engine: engine,
            talker_port: talker.local_rtp,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum System {
    Baseline,
    FloorcastMmsg,
    FloorcastUring,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Baseline => "minimal forwarder (baseline)",
            System::FloorcastMmsg => "floorcast, sendmmsg",
            System::FloorcastUring => "floorcast, io_uring",
        }
    }

    fn thread_prefix(self) -> &'static str {
        match self {
            System::Baseline => "baseline-fwd",
            _ => "media-",
        }
    }
}

struct Run {
    output_pps: f64,
    cpu_ns_per_output: f64,
    loss: f64,
    histogram: Option<Histogram<u64>>,
}

/// One measurement: `listeners` receivers, the system under test, input `rate` (0 = max).
fn measure(system: System, listeners: usize, rate: u64, record_latency: bool) -> Run {
    let receivers = Receivers::new(listeners);
    let sender = bind_local();
    let sender_address = sender.local_addr().unwrap();
    let (_baseline, _floorcast, target) = match system {
        System::Baseline => {
            let forwarder = MinimalForwarder::start(receivers.addresses.clone());
            let target = forwarder.address;
            (Some(forwarder), None, target)
        }
        System::FloorcastMmsg | System::FloorcastUring => {
            let backend = if system == System::FloorcastUring {
                IoBackend::IoUring
            } else {
                IoBackend::Mmsg
            };
            let fanout = FloorcastFanout::start(backend, sender_address, &receivers.addresses);
            let target = fanout.talker_port;
            (None, Some(fanout), target)
        }
    };
    // Warm-up.
    send(
        &sender,
        target,
        if rate == 0 { 10_000 } else { rate },
        Duration::from_millis(200),
    );
    std::thread::sleep(Duration::from_millis(100));
    receivers.take_histogram();
    let before_received = receivers.received.load(Ordering::Relaxed);
    let before_cpu = thread_cpu_ns(system.thread_prefix());
    receivers.record.store(record_latency, Ordering::Relaxed);
    let started = Instant::now();
    let sent = send(&sender, target, rate, phase());
    let elapsed = started.elapsed();
    std::thread::sleep(Duration::from_millis(100)); // in-flight packets land
    receivers.record.store(false, Ordering::Relaxed);
    let received = receivers.received.load(Ordering::Relaxed) - before_received;
    let cpu = thread_cpu_ns(system.thread_prefix()) - before_cpu;
    let histogram = record_latency.then(|| receivers.take_histogram());
    if let Some(fanout) = &_floorcast {
        let mut totals = floorcast::media::stats::Counters::default();
        for worker in fanout._engine.stats(false).unwrap() {
            totals.add(&worker.totals);
        }
        let drops: Vec<String> = floorcast::media::stats::DropCause::ALL
            .iter()
            .filter(|cause| totals.drops(**cause) > 0)
            .map(|cause| format!("{}={}", cause.name(), totals.drops(*cause)))
            .collect();
        if !drops.is_empty() {
            eprintln!(
                "  [{} 1->{listeners} rate {rate}: engine drops {}]",
                system.name(),
                drops.join(" ")
            );
        }
    }
    let expected = sent * listeners as u64;
    Run {
        output_pps: received as f64 / elapsed.as_secs_f64(),
        cpu_ns_per_output: cpu as f64 / received.max(1) as f64,
        loss: 1.0 - received as f64 / expected.max(1) as f64,
        histogram,
    }
}

/// Latency of the direct path (sender -> receiver, no relay) at `rate`.
fn direct_latency(rate: u64) -> Histogram<u64> {
    let receivers = Receivers::new(1);
    let sender = bind_local();
    receivers.record.store(true, Ordering::Relaxed);
    send(&sender, receivers.addresses[0], rate, phase());
    std::thread::sleep(Duration::from_millis(100));
    receivers.record.store(false, Ordering::Relaxed);
    receivers.take_histogram()
}

/// Prints one latency table row: the relay's percentiles next to the direct path's at the same
/// input rate, and their difference.
fn latency_row(shape: &str, fraction: f64, run: Run, rate: u64) {
    let relay = run.histogram.expect("latency was recorded");
    let direct = direct_latency(rate);
    let added: Vec<String> = [0.5, 0.99, 0.999]
        .iter()
        .map(|&q| format!("{:.0}", micros(&relay, q) - micros(&direct, q)))
        .collect();
    println!(
        "| {shape} | {:.0}% | {:.0} | {:.3}% | {:.0} / {:.0} µs | {:.0} / {:.0} µs | {:.0} / {:.0} µs | {} µs |",
        fraction * 100.0,
        run.output_pps,
        run.loss.max(0.0) * 100.0,
        micros(&relay, 0.5),
        micros(&direct, 0.5),
        micros(&relay, 0.99),
        micros(&direct, 0.99),
        micros(&relay, 0.999),
        micros(&direct, 0.999),
        added.join(" / ")
    );
}

fn micros(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    histogram.value_at_quantile(quantile) as f64 / 1000.0
}

fn throughput_and_latency() {
    println!("## (b) Fan-out throughput over loopback (1 worker; sender and receivers on the same 2 cores)\n");
    println!("| listeners | system | output packets/s | ratio to baseline | CPU per output packet |");
    println!("|---:|---|---:|---:|---:|");
    let shapes: &[usize] = if quick() { &[1, 100] } else { &[1, 10, 100, 1000] };
    let mut maxima: HashMap<usize, f64> = HashMap::new();
    for &listeners in shapes {
        let mut baseline = 0.0;
        for system in [System::Baseline, System::FloorcastMmsg, System::FloorcastUring] {
            // Offer more than anything can carry: the sender goes flat out for 1->1; for wide
            // fan-outs a paced input of 1.5 M output packets/s keeps the sender off the CPU.
            let rate = if listeners == 1 {
                0
            } else {
                1_500_000 / listeners as u64
            };
            let run = measure(system, listeners, rate, false);
            if system == System::Baseline {
                baseline = run.output_pps;
            }
            if system == System::FloorcastMmsg {
                maxima.insert(listeners, run.output_pps);
            }
            println!(
                "| 1→{listeners} | {} | {:.0} | {:.2} | {:.2} µs |",
                system.name(),
                run.output_pps,
                run.output_pps / baseline.max(1.0),
                run.cpu_ns_per_output / 1000.0
            );
        }
    }
    println!();
    println!("## (c) Relay-added latency (floorcast sendmmsg, 1 worker)\n");
    println!("Latency from the sender's timestamp to the receiver's read; 'direct' is the same traffic sent");
    println!("straight to one receiver socket at the same input rate (no relay); added = relay - direct.\n");
    println!("| shape | load (of max) | output pps | loss | p50 relay / direct | p99 relay / direct | p99.9 relay / direct | added p50 / p99 / p99.9 |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let latency_shapes: &[usize] = if quick() { &[1] } else { &[1, 100] };
    for &listeners in latency_shapes {
        let maximum = maxima.get(&listeners).copied().unwrap_or(100_000.0);
        for fraction in [0.25, 0.5, 0.8, 0.9] {
            let rate = ((maximum * fraction) / listeners as f64).max(50.0) as u64;
            let run = measure(System::FloorcastMmsg, listeners, rate, true);
            latency_row(&format!("1→{listeners}"), fraction, run, rate);
        }
    }
    println!();
}

/// Many low-rate talkers: `calls` relayed single calls, both directions talking at 50 packets/s.
/// Two terminal threads play all A and all B sides. Reports engine CPU per packet and loss.
fn many_talkers(calls: usize, coalesce: Duration, backend: IoBackend) -> (f64, f64, f64, u64) {
    let mut config = engine_config(backend, 2, 20_000);
    config.rx_coalesce = coalesce;
    let engine = Engine::start(&config, "bench").unwrap();
    let side_a = bind_local();
    let side_b = bind_local();
    let (address_a, address_b) = (side_a.local_addr().unwrap(), side_b.local_addr().unwrap());
    let mut ports_a = Vec::new();
    let mut ports_b = Vec::new();
    for _ in 0..calls {
        let bridge = engine.create_bridge(BridgeKind::Relay).unwrap();
        let a = engine
            .add_leg(
                bridge,
                LegSpec {
                    remote: Some(address_a),
                    rtcp_mux: true,
                    ..LegSpec::default()
                },
            )
            .unwrap();
        let b = engine
            .add_leg(
                bridge,
                LegSpec {
                    remote: Some(address_b),
                    rtcp_mux: true,
                    ..LegSpec::default()
                },
            )
            .unwrap();
        ports_a.push(a.local_rtp);
        ports_b.push(b.local_rtp);
    }
    std::thread::sleep(Duration::from_millis(200));
    let duration = phase() * 2;
    let before_cpu = thread_cpu_ns("media-");
    let run_side = |socket: UdpSocket, targets: Vec<SocketAddr>| {
        std::thread::spawn(move || {
            socket.set_nonblocking(true).unwrap();
            let mut batch = RecvBatch::new(64);
            let mut packet = [0u8; PACKET_SIZE];
            packet[0] = 0x80;
            let started = Instant::now();
            let (mut sent, mut received) = (0u64, 0u64);
            let mut seq = 0u16;
            // Every target gets 50 packets/s, spread evenly over each 20 ms.
            let per_second = targets.len() as u64 * 50;
            while started.elapsed() < duration {
                let due = started.elapsed().as_nanos() as u64 * per_second / 1_000_000_000;
                while sent < due {
                    let target = targets[(sent % targets.len() as u64) as usize];
                    if sent % targets.len() as u64 == 0 {
                        seq = seq.wrapping_add(1);
                    }
                    packet[2..4].copy_from_slice(&seq.to_be_bytes());
                    let _ = socket.send_to(&packet, target);
                    sent += 1;
                }
                while let Ok(count) = batch.receive(socket.as_raw_fd()) {
                    if count == 0 {
                        break;
                    }
                    received += count as u64;
                }
                std::thread::sleep(Duration::from_micros(500));
            }
            std::thread::sleep(Duration::from_millis(100));
            while let Ok(count) = batch.receive(socket.as_raw_fd()) {
                if count == 0 {
                    break;
                }
                received += count as u64;
            }
            (sent, received)
        })
    };
    let thread_a = run_side(side_a, ports_a);
    let thread_b = run_side(side_b, ports_b);
    let (sent_a, received_a) = thread_a.join().unwrap();
    let (sent_b, received_b) = thread_b.join().unwrap();
    let cpu = thread_cpu_ns("media-") - before_cpu;
    let stats = engine.stats(false).unwrap();
    let wakeups: u64 = stats.iter().map(|worker| worker.wakeups).sum();
    let forwarded = received_a + received_b;
    let sent = sent_a + sent_b;
    let loss = 1.0 - forwarded as f64 / sent.max(1) as f64;
    let pps = sent as f64 / duration.as_secs_f64();
    (pps, cpu as f64 / forwarded.max(1) as f64, loss, wakeups)
}

/// 100 groups x 100 listeners, every talker at 50 packets/s.
fn groups_shape(groups: usize, listeners: usize, backend: IoBackend) -> (f64, f64, f64) {
    let engine = Engine::start(&engine_config(backend, 2, 20_000), "bench").unwrap();
    let receivers = Receivers::new(8);
    let talker_socket = bind_local();
    let talker_address = talker_socket.local_addr().unwrap();
    let mut talker_ports = Vec::new();
    for group in 0..groups {
        let bridge = engine
            .create_bridge(BridgeKind::Group(GroupOptions::default()))
            .unwrap();
        let talker = engine
            .add_leg(
                bridge,
                LegSpec {
                    remote: Some(talker_address),
                    rtcp_mux: true,
                    ..LegSpec::default()
                },
            )
            .unwrap();
        for listener in 0..listeners {
            let remote = receivers.addresses[(group + listener) % receivers.addresses.len()];
            engine
                .add_leg(
                    bridge,
                    LegSpec {
                        remote: Some(remote),
                        rtcp_mux: true,
                        ..LegSpec::default()
                    },
                )
                .unwrap();
        }
        engine.set_source(bridge, Some(talker.id)).unwrap();
        talker_ports.push(talker.local_rtp);
    }
    std::thread::sleep(Duration::from_millis(300));
    let duration = phase() * 2;
    let before_received = receivers.received.load(Ordering::Relaxed);
    let before_cpu = thread_cpu_ns("media-");
    let started = Instant::now();
    let mut packet = [0u8; PACKET_SIZE];
    packet[0] = 0x80;
    let per_second = groups as u64 * 50;
    let mut sent = 0u64;
    let mut seq = 0u16;
    while started.elapsed() < duration {
        let due = started.elapsed().as_nanos() as u64 * per_second / 1_000_000_000;
        while sent < due {
            if sent % groups as u64 == 0 {
                seq = seq.wrapping_add(1);
            }
            packet[2..4].copy_from_slice(&seq.to_be_bytes());
            let _ = talker_socket.send_to(&packet, talker_ports[(sent % groups as u64) as usize]);
            sent += 1;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    std::thread::sleep(Duration::from_millis(200));
    let received = receivers.received.load(Ordering::Relaxed) - before_received;
    let cpu = thread_cpu_ns("media-") - before_cpu;
    let expected = sent * listeners as u64;
    (
        received as f64 / duration.as_secs_f64(),
        cpu as f64 / received.max(1) as f64,
        1.0 - received as f64 / expected.max(1) as f64,
    )
}

/// (c) again with the relay on a core of its own (`media.pin_workers`): worker on the first
/// CPU, sender and receivers on the last.
fn pinned_latency() {
    PINNED.store(true, Ordering::Relaxed);
    pin_harness_thread();
    println!("### (c') Relay-added latency with the worker pinned to its own core\n");
    println!("`media.pin_workers = true`, one worker on CPU 0; the sender and the receivers share CPU 1.\n");
    println!("| shape | load (of max) | output pps | loss | p50 relay / direct | p99 relay / direct | p99.9 relay / direct | added p50 / p99 / p99.9 |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for listeners in [1usize, 10] {
        let rate = if listeners == 1 {
            0
        } else {
            1_500_000 / listeners as u64
        };
        let maximum = measure(System::FloorcastMmsg, listeners, rate, false).output_pps;
        for fraction in [0.25, 0.5, 0.9] {
            let rate = ((maximum * fraction) / listeners as f64).max(50.0) as u64;
            let run = measure(System::FloorcastMmsg, listeners, rate, true);
            latency_row(&format!("1→{listeners} (max {maximum:.0})"), fraction, run, rate);
        }
    }
    println!();
    PINNED.store(false, Ordering::Relaxed);
    unpin_thread();
}

fn realistic_shapes() {
    println!("## Realistic shapes (2 workers, rtcp-mux legs, 50 packets/s per talker)\n");
    println!("| shape | engine settings | offered pps | engine CPU per forwarded packet | loss | worker wake-ups |");
    println!("|---|---|---:|---:|---:|---:|");
    let calls = if quick() { 100 } else { 1000 };
    for (coalesce, label) in [
        (Duration::ZERO, "event-driven"),
        (Duration::from_micros(1000), "rx_coalesce_us = 1000"),
    ] {
        let (pps, cpu, loss, wakeups) = many_talkers(calls, coalesce, IoBackend::Mmsg);
        println!(
            "| {} talker legs ({calls} relayed calls, both sides talking) | {label} | {pps:.0} | {:.2} µs | {:.3}% | {wakeups} |",
            calls * 2,
            cpu / 1000.0,
            loss.max(0.0) * 100.0
        );
    }
    let (groups, listeners) = if quick() { (10, 100) } else { (100, 100) };
    for backend in [IoBackend::Mmsg, IoBackend::IoUring] {
        let (pps, cpu, loss) = groups_shape(groups, listeners, backend);
        println!(
            "| {groups} groups × {listeners} listeners | {backend:?} | {pps:.0} out | {:.2} µs | {:.3}% | |",
            cpu / 1000.0,
            loss.max(0.0) * 100.0
        );
    }
    println!();
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0)
}

fn idle_leg_memory() {
    let legs = if quick() { 1000 } else { 5000 };
    let engine = Engine::start(&engine_config(IoBackend::Mmsg, 2, 20_000), "bench").unwrap();
    let bridge = engine
        .create_bridge(BridgeKind::Group(GroupOptions::default()))
        .unwrap();
    // Warm the allocator and the worker's tables with a few legs first.
    for _ in 0..100 {
        engine
            .add_leg(
                bridge,
                LegSpec {
                    rtcp_mux: true,
                    ..LegSpec::default()
                },
            )
            .unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    let before = rss_kib();
    for _ in 0..legs {
        engine
            .add_leg(
                bridge,
                LegSpec {
                    remote: Some("127.0.0.1:9".parse().unwrap()),
                    rtcp_mux: false,
                    source_check: Some(SourceCheck::Latch),
                    ..LegSpec::default()
                },
            )
            .unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_kib();
    println!("## Memory per idle leg\n");
    println!(
        "{legs} idle legs (RTP + RTCP sockets each) added {} KiB of process RSS: {:.0} bytes per leg",
        after.saturating_sub(before),
        (after.saturating_sub(before) * 1024) as f64 / legs as f64
    );
    println!("(kernel socket memory is not in RSS; an idle UDP socket holds no buffers until packets queue)\n");
}

fn main() {
    // `cargo test --benches` runs bench binaries with `--bench` absent; do nothing then.
    if !std::env::args().any(|arg| arg == "--bench") {
        return;
    }
    raise_fd_limit();
    tight_timers();
    let _ = origin();
    println!("# fanout bench — {} phases\n", if quick() { "quick" } else { "full" });
    // FANOUT_ONLY=groups: only the 100 groups x 100 listeners backend comparison, three times
    // (for A/B decisions on a noisy machine).
    if std::env::var("FANOUT_ONLY").as_deref() == Ok("pinned") {
        pinned_latency();
        return;
    }
    if std::env::var("FANOUT_ONLY").as_deref() == Ok("groups") {
        println!("| run | backend | output pps | engine CPU per forwarded packet | loss |\n|---:|---|---:|---:|---:|");
        for run in 1..=3 {
            for backend in [IoBackend::Mmsg, IoBackend::IoUring] {
                let (pps, cpu, loss) = groups_shape(100, 100, backend);
                println!(
                    "| {run} | {backend:?} | {pps:.0} | {:.2} µs | {:.3}% |",
                    cpu / 1000.0,
                    loss.max(0.0) * 100.0
                );
            }
        }
        return;
    }
    // Memory first: RSS deltas are only meaningful before other phases have grown the heap.
    idle_leg_memory();
    throughput_and_latency();
    pinned_latency();
    realistic_shapes();
}
