//! One run: sockets and threads up, registrations, group call set-ups, traffic for the
//! duration (with the live progress line and an optional fault), teardown, report.

use std::collections::HashMap;
use std::net::UdpSocket;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use floorcast::media::codec::Codec;
use floorcast::sdp::Format;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

use crate::plan::Plan;
use crate::procstat::Watch;
use crate::receiver::{self, SlotSocket};
use crate::report::{self, Collected, FaultReport, Report};
use crate::scenario::{codec, Callee, Scenario};
use crate::sender::{self, SendCommand, SendConfig};
use crate::stats::{lock, record, Shared};
use crate::ua::{self, AnswerMode, Router, UaHandle, UaSpec};

/// What the controllers of a run share.
pub struct Ctx {
    pub scenario: Arc<Scenario>,
    pub plan: Arc<Plan>,
    pub shared: Arc<Shared>,
    pub uas: Vec<UaHandle>,
    /// Per listener slot: the RTP socket (a clone of the receiver's) and its port.
    pub sockets: Vec<Arc<UdpSocket>>,
    pub ports: Vec<u16>,
    pub sender: crossbeam_channel::Sender<SendCommand>,
    /// When the traffic started.
    pub traffic_started: Mutex<Option<Instant>>,
}

impl Ctx {
    /// Seconds since the traffic started (0 before).
    pub fn traffic_elapsed_s(&self) -> f64 {
        lock(&self.traffic_started).map_or(0.0, |at| at.elapsed().as_secs_f64())
    }
}

/// Raises the open-file limit to its hard limit (each terminal has two sockets).
pub fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read/write a valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn formats(scenario: &Scenario) -> Vec<Format> {
    let voice = codec(&scenario.group.codec).unwrap_or(Codec::Pcmu);
    let events = if voice.clock_rate() == 16_000 {
        Codec::TelephoneEvent16k
    } else {
        Codec::TelephoneEvent8k
    };
    vec![Format::new(voice), Format::new(events)]
}

/// Runs the scenario once with `groups` group calls (the scenario's count when `None`).
pub async fn run_once(scenario: &Scenario, groups: Option<usize>, quiet: bool) -> Result<Report, String> {
    let plan = Arc::new(Plan::build(scenario, groups)?);
    let scenario = Arc::new(scenario.clone());
    let shared = Arc::new(Shared::new());
    let voice = codec(&scenario.group.codec).unwrap_or(Codec::Pcmu);
    let send_config = SendConfig {
        packet_rate: scenario.group.packet_rate,
        payload_size: scenario.group.payload_size,
        clock_rate: voice.clock_rate(),
    };
    // One RTP socket per listener slot; receivers read them, the sender sends from clones.
    let mut sockets = Vec::with_capacity(plan.slots.len());
    let mut ports = Vec::with_capacity(plan.slots.len());
    let receivers = scenario.run.receivers.min(plan.slots.len().max(1));
    let mut shares: Vec<Vec<SlotSocket>> = (0..receivers).map(|_| Vec::new()).collect();
    for slot in 0..plan.slots.len() {
        let socket = UdpSocket::bind((scenario.target.bind, 0)).map_err(|error| format!("RTP socket: {error}"))?;
        ports.push(socket.local_addr().map_err(|error| error.to_string())?.port());
        let clone = socket.try_clone().map_err(|error| error.to_string())?;
        sockets.push(Arc::new(clone));
        shares[slot % receivers].push(SlotSocket {
            slot: slot as u32,
            socket,
            clock_rate: voice.clock_rate(),
            samples_per_packet: send_config.samples_per_packet(),
            remote: plan.slots[slot].remote,
        });
    }
    let mut receiver_threads = Vec::new();
    for (index, share) in shares.into_iter().enumerate() {
        receiver_threads.push(receiver::spawn(index, share, shared.clone()).map_err(|error| error.to_string())?);
    }
    let (sender, sender_thread) = sender::spawn(send_config, shared.clone()).map_err(|error| error.to_string())?;
    // Event routes: one channel per group, one for single calls.
    let mut router = Router::default();
    let mut group_events = Vec::new();
    for group in &plan.groups {
        let (events, receiver) = mpsc::unbounded_channel();
        router.groups.insert(group.number.clone(), events);
        group_events.push(receiver);
    }
    let call_events = if plan.pairs.is_empty() {
        None
    } else {
        let (events, receiver) = mpsc::unbounded_channel();
        router.calls = Some(events);
        Some(receiver)
    };
    let router = Arc::new(router);
    // The user agents.
    let formats = Arc::new(formats(&scenario));
    let answer = match scenario.calls.answer {
        Callee::Answer => AnswerMode::Answer(Duration::from_millis(scenario.calls.answer_delay_ms)),
        Callee::Busy => AnswerMode::Busy,
        Callee::Decline => AnswerMode::Decline,
        Callee::NoAnswer => AnswerMode::NoAnswer,
    };
    let mut group_ports: Vec<HashMap<String, u16>> = vec![HashMap::new(); plan.terminals.len()];
    let mut call_ports: Vec<Option<u16>> = vec![None; plan.terminals.len()];
    for (index, slot) in plan.slots.iter().enumerate() {
        match &slot.group {
            Some(group) => {
                group_ports[slot.terminal].insert(group.clone(), ports[index]);
            }
            None => call_ports[slot.terminal] = Some(ports[index]),
        }
    }
    let mut uas = Vec::with_capacity(plan.terminals.len());
    for (index, terminal) in plan.terminals.iter().enumerate() {
        let spec = UaSpec {
            index,
            number: terminal.number.clone(),
            password: terminal.password.clone(),
            server: terminal.server,
            bind: scenario.target.bind,
            formats: formats.clone(),
            sip_timeout: Duration::from_millis(scenario.run.sip_timeout_ms),
            answer,
            group_ports: std::mem::take(&mut group_ports[index]),
            call_port: call_ports[index],
        };
        uas.push(
            ua::spawn(spec, router.clone())
                .await
                .map_err(|error| format!("SIP socket: {error}"))?,
        );
    }
    let ctx = Arc::new(Ctx {
        scenario: scenario.clone(),
        plan: plan.clone(),
        shared: shared.clone(),
        uas,
        sockets,
        ports,
        sender: sender.clone(),
        traffic_started: Mutex::new(None),
    });
    let mut watches: Vec<Watch> = scenario.node.pids.iter().map(|&pid| Watch::new(pid)).collect();
    let mut generator = Watch::new(0);
    if !quiet {
        eprintln!(
            "floorcast-load: {} terminals, {} group calls, {} call pairs, {} listener sockets, nodes {}",
            plan.terminals.len(),
            plan.groups.len(),
            plan.pairs.len(),
            plan.slots.len(),
            plan.nodes
                .iter()
                .map(|(name, address)| format!("{name}@{address}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    register_all(&ctx).await;
    // Group call set-ups (spread over time), then traffic for everyone at once.
    let (go_sender, go) = watch::channel(false);
    let mut controllers = tokio::task::JoinSet::new();
    let mut readiness = Vec::new();
    let interval = Duration::from_millis(scenario.group.setup_interval_ms);
    for (index, events) in group_events.into_iter().enumerate() {
        let (ready, is_ready) = oneshot::channel();
        readiness.push(is_ready);
        controllers.spawn(crate::group::run(
            ctx.clone(),
            index,
            events,
            interval * index as u32,
            ready,
            go.clone(),
        ));
    }
    let setup_started = Instant::now();
    let mut up = 0;
    for ready in readiness {
        if let Ok(true) = ready.await {
            up += 1;
        }
    }
    if !quiet && !plan.groups.is_empty() {
        eprintln!(
            "floorcast-load: {up}/{} group calls set up in {:.2} s",
            plan.groups.len(),
            setup_started.elapsed().as_secs_f64()
        );
    }
    let traffic_started = Instant::now();
    *lock(&ctx.traffic_started) = Some(traffic_started);
    for watch in &mut watches {
        watch.restart();
    }
    generator.restart();
    let tx_at_start = shared.tx_packets.load(Ordering::Relaxed);
    let _ = go_sender.send(true);
    if let Some(events) = call_events {
        controllers.spawn(crate::call::run(ctx.clone(), events));
    }
    // Fault injection.
    let fault: Arc<Mutex<Option<FaultReport>>> = Arc::default();
    if let Some(pid) = scenario.fault.kill_pid {
        let fault = fault.clone();
        let at = Duration::from_secs_f64(scenario.fault.at_s.max(0.0));
        let ctx = ctx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(at).await;
            if ctx.shared.stopping() {
                return;
            }
            // SAFETY: kill has no memory preconditions; the pid is the operator's choice.
            let result = unsafe { libc::kill(pid, libc::SIGKILL) };
            let at_s = ctx.traffic_elapsed_s();
            if result == 0 {
                eprintln!("floorcast-load: killed pid {pid} at {at_s:.2} s");
                *lock(&fault) = Some(FaultReport { killed_pid: pid, at_s });
                lock(&ctx.shared.control).evidence(format!("fault: SIGKILL to pid {pid} at {at_s:.2}s"));
            } else {
                eprintln!(
                    "floorcast-load: could not kill pid {pid}: {}",
                    std::io::Error::last_os_error()
                );
            }
        });
    }
    // The traffic runs for the duration (or until the spurt bound), with a progress line.
    let duration = Duration::from_secs_f64(scenario.run.duration_s);
    let mut last_tick = Instant::now();
    let mut last_tx = tx_at_start;
    let rx_at_start = shared.rx_packets.load(Ordering::Relaxed);
    let expected_at_start = shared.expected_deliveries.load(Ordering::Relaxed);
    let mut last_rx = rx_at_start;
    let mut last_expected = expected_at_start;
    loop {
        let elapsed = traffic_started.elapsed();
        let spurt_bound =
            scenario.run.max_spurts != 0 && shared.spurts_started.load(Ordering::Relaxed) >= scenario.run.max_spurts;
        if elapsed >= duration || spurt_bound || controllers.is_empty() {
            break;
        }
        let wait = (duration - elapsed).min(Duration::from_secs(1).saturating_sub(last_tick.elapsed()));
        tokio::select! {
            _ = tokio::time::sleep(wait.max(Duration::from_millis(10))) => {}
            finished = controllers.join_next(), if !controllers.is_empty() => {
                if finished.is_none() { continue; }
            }
        }
        if last_tick.elapsed() >= Duration::from_secs(1) {
            let seconds = last_tick.elapsed().as_secs_f64();
            last_tick = Instant::now();
            let tx = shared.tx_packets.load(Ordering::Relaxed);
            let rx = shared.rx_packets.load(Ordering::Relaxed);
            let expected = shared.expected_deliveries.load(Ordering::Relaxed);
            let live = {
                let mut histogram = lock(&shared.live_latency);
                let p99 = if histogram.is_empty() {
                    0.0
                } else {
                    histogram.value_at_quantile(0.99) as f64 / 1000.0
                };
                histogram.reset();
                p99
            };
            // Receivers publish their counts every 10 ms: the figures are close, not exact
            // (the report's accounting is).
            let percent_lost = |expected: u64, received: u64| {
                if expected == 0 {
                    0.0
                } else {
                    100.0 * expected.saturating_sub(received) as f64 / expected as f64
                }
            };
            let interval_rx = rx.saturating_sub(last_rx);
            let loss = percent_lost(expected.saturating_sub(last_expected), interval_rx);
            let run_loss = percent_lost(
                expected.saturating_sub(expected_at_start),
                rx.saturating_sub(rx_at_start),
            );
            let nodes: Vec<String> = watches
                .iter_mut()
                .map(|watch| match watch.update() {
                    Some(cpu) => format!(
                        "{} cpu {cpu:.0}% rss {:.1}MB",
                        watch.pid,
                        watch.rss_kb() as f64 / 1024.0
                    ),
                    None => format!("{} gone", watch.pid),
                })
                .collect();
            let _ = generator.update();
            if scenario.run.progress && !quiet {
                eprintln!(
                    "[{:>5.1}s] groups {}/{} calls {} spurts {} | tx {:.0} pps rx {:.0} pps | loss ~{:.2}% (run ~{:.3}%) p99 {:.2} ms{}{}",
                    traffic_started.elapsed().as_secs_f64(),
                    shared.groups_up.load(Ordering::Relaxed),
                    plan.groups.len(),
                    shared.calls_up.load(Ordering::Relaxed),
                    shared.spurts_started.load(Ordering::Relaxed),
                    (tx - last_tx) as f64 / seconds,
                    interval_rx as f64 / seconds,
                    loss,
                    run_loss,
                    live,
                    if nodes.is_empty() { "" } else { " | node " },
                    nodes.join(", ")
                );
            }
            last_tx = tx;
            last_rx = rx;
            last_expected = expected;
        }
    }
    let traffic_time = traffic_started.elapsed().as_secs_f64();
    shared.stop_traffic.store(true, Ordering::Relaxed);
    let node_usage: Vec<_> = watches.iter_mut().map(Watch::usage).collect();
    let generator_usage = generator.usage();
    // Teardown, bounded.
    let teardown_bound =
        Duration::from_millis(scenario.run.sip_timeout_ms * 2 + scenario.calls.hold_ms.min(1000) + 2000);
    let _ = tokio::time::timeout(teardown_bound, async {
        while controllers.join_next().await.is_some() {}
    })
    .await;
    controllers.abort_all();
    tokio::time::sleep(Duration::from_millis(scenario.run.settle_ms)).await;
    shared.stop_receivers.store(true, Ordering::Relaxed);
    let _ = sender.send(SendCommand::Shutdown);
    let _ = tokio::task::spawn_blocking(move || sender_thread.join()).await;
    let mut outputs = Vec::new();
    for thread in receiver_threads {
        if let Ok(Ok(output)) = tokio::task::spawn_blocking(move || thread.join()).await {
            outputs.push(output);
        }
    }
    let control = std::mem::take(&mut *lock(&shared.control));
    let fault = lock(&fault).take();
    let collected = Collected {
        control,
        receivers: outputs,
        duration_s: traffic_time,
        packets_sent: shared.tx_packets.load(Ordering::Relaxed) - tx_at_start,
        send_errors: shared.tx_errors.load(Ordering::Relaxed),
        sender_stalls: shared.sender_late.load(Ordering::Relaxed),
        nodes: node_usage,
        generator: generator_usage,
        fault,
    };
    Ok(report::build(&scenario, &plan, collected))
}

async fn register_all(ctx: &Arc<Ctx>) {
    let limit = Arc::new(Semaphore::new(ctx.scenario.run.register_concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for (index, ua) in ctx.uas.iter().enumerate() {
        let ua = ua.clone();
        let limit = limit.clone();
        let ctx = ctx.clone();
        let expires = ctx.scenario.target.expires;
        tasks.spawn(async move {
            let _permit = limit.acquire().await;
            let sent = Instant::now();
            let result = ua.register(expires).await;
            let mut control = lock(&ctx.shared.control);
            match result {
                Ok(200) => {
                    control.counters.registrations_ok += 1;
                    record(&mut control.latencies.register, sent.elapsed());
                }
                Ok(status) => {
                    control.counters.registrations_failed += 1;
                    let number = ctx.plan.terminals[index].number.clone();
                    control.evidence(format!("REGISTER of {number} answered {status}"));
                }
                Err(error) => {
                    control.counters.registrations_failed += 1;
                    let number = ctx.plan.terminals[index].number.clone();
                    control.evidence(format!("REGISTER of {number}: {error}"));
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    // Registrations through a visited TCF reach the home, and group homes learn locations
    // (F-REG-07), a moment later.
    if ctx.plan.nodes.len() > 1 {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
