//! `floorcast-load`: the bundled traffic generator. Plays terminals and dispatch consoles
//! against running `floorcast` nodes over real SIP and RTP — registrations with digest, group
//! calls with floor changes in a pattern and per-listener checks of every RTP stream, single
//! calls like SIPp's UAC/UAS pair — and reports latency, loss and continuity, live and at the
//! end (text, `--json`). Exit status 1 when a stated SLO is missed. See tools/README.md.

mod call;
mod group;
mod plan;
mod procstat;
mod provision;
mod receiver;
mod report;
mod rtp;
mod run;
mod scenario;
mod sender;
mod stats;
mod ua;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde::Serialize;

use crate::report::Report;
use crate::scenario::{Callee, Pattern, Scenario, Serving};

/// The floorcast traffic generator.
#[derive(Debug, Parser)]
#[command(name = "floorcast-load", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a scenario against running nodes.
    Run(Box<RunArgs>),
    /// Write a load-test network: provisioning, node configs and a scenario.
    Provision(provision::ProvisionArgs),
}

/// Options of `run`; each overrides the scenario file.
#[derive(Debug, Clone, clap::Args)]
struct RunArgs {
    /// Scenario file (TOML). Without one: the defaults (the built-in demo network at
    /// 127.0.0.1:5060, groups 2001-2002).
    scenario: Option<PathBuf>,
    /// Network file of the nodes (`builtin:demo`).
    #[arg(long)]
    network: Option<String>,
    /// Subscribers file (`builtin:demo`).
    #[arg(long)]
    subscribers: Option<String>,
    /// Where terminals register.
    #[arg(long, value_enum)]
    serving: Option<Serving>,
    /// Traffic time, seconds.
    #[arg(long)]
    duration: Option<f64>,
    /// Stop after this many talk spurts in all.
    #[arg(long)]
    max_spurts: Option<u64>,
    /// Number of group calls.
    #[arg(long)]
    groups: Option<usize>,
    /// Group numbers or ranges, comma-separated.
    #[arg(long, value_delimiter = ',')]
    group_numbers: Option<Vec<String>>,
    /// Members per group taking part (0: all).
    #[arg(long)]
    members: Option<usize>,
    /// Dispatchers per group taking part.
    #[arg(long)]
    dispatchers: Option<usize>,
    /// Talker rotation.
    #[arg(long, value_enum)]
    pattern: Option<Pattern>,
    #[arg(long)]
    burst_size: Option<usize>,
    /// Talk spurt length, ms.
    #[arg(long)]
    spurt_ms: Option<u64>,
    /// Pause between a release and the next request, ms.
    #[arg(long)]
    gap_ms: Option<u64>,
    /// Pause between a talker's last packet and its release, ms.
    #[arg(long)]
    release_delay_ms: Option<u64>,
    /// PCMU, PCMA, AMR or AMR-WB.
    #[arg(long)]
    codec: Option<String>,
    /// RTP packets per second per talker.
    #[arg(long)]
    packet_rate: Option<u32>,
    /// RTP payload bytes.
    #[arg(long)]
    payload_size: Option<usize>,
    /// Pause between the initial group call set-ups, ms.
    #[arg(long)]
    setup_interval_ms: Option<u64>,
    /// Cycle mode: set group calls up and tear them down in a loop (group calls per second).
    #[arg(long)]
    cycle: bool,
    /// The initiator's spurt in each cycle, ms (0: none).
    #[arg(long)]
    cycle_spurt_ms: Option<u64>,
    /// No group calls (single calls only).
    #[arg(long)]
    no_groups: bool,
    /// Place single calls too.
    #[arg(long)]
    calls: bool,
    /// Users of the single calls (ranges, comma-separated), paired in order.
    #[arg(long, value_delimiter = ',')]
    call_users: Option<Vec<String>>,
    /// New single calls per second.
    #[arg(long)]
    call_rate: Option<f64>,
    #[arg(long)]
    hold_ms: Option<u64>,
    /// Stop placing calls after this many.
    #[arg(long)]
    call_count: Option<u64>,
    #[arg(long, value_enum)]
    answer: Option<Callee>,
    #[arg(long)]
    answer_delay_ms: Option<u64>,
    /// SLO: highest loss, a fraction (0.001 = 0.1 %).
    #[arg(long)]
    max_loss: Option<f64>,
    /// SLO: highest mouth-to-ear p99, ms.
    #[arg(long)]
    max_p99_ms: Option<f64>,
    /// Report CPU time and memory of this process (repeat for several nodes).
    #[arg(long = "node-pid")]
    node_pids: Vec<i32>,
    /// Raise the number of groups until the SLO breaks; report the last good level.
    #[arg(long)]
    ramp: bool,
    #[arg(long)]
    ramp_start: Option<usize>,
    #[arg(long)]
    ramp_step: Option<usize>,
    #[arg(long)]
    ramp_max: Option<usize>,
    /// Traffic time per ramp level, seconds.
    #[arg(long)]
    ramp_step_s: Option<f64>,
    /// Kill (SIGKILL) this process during the run.
    #[arg(long)]
    kill_pid: Option<i32>,
    /// When to kill it, seconds after the traffic starts.
    #[arg(long)]
    kill_at: Option<f64>,
    #[arg(long)]
    receivers: Option<usize>,
    #[arg(long)]
    sip_timeout_ms: Option<u64>,
    #[arg(long)]
    setup_timeout_ms: Option<u64>,
    #[arg(long)]
    seed: Option<u64>,
    /// Write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
}

fn apply(scenario: &mut Scenario, args: &RunArgs) {
    macro_rules! set {
        ($field:expr, $value:expr) => {
            if let Some(value) = $value.clone() {
                $field = value;
            }
        };
    }
    set!(scenario.target.network, args.network);
    set!(scenario.target.subscribers, args.subscribers);
    set!(scenario.target.serving, args.serving);
    set!(scenario.run.duration_s, args.duration);
    set!(scenario.run.max_spurts, args.max_spurts);
    set!(scenario.group.count, args.groups);
    set!(scenario.group.numbers, args.group_numbers);
    set!(scenario.group.members, args.members);
    set!(scenario.group.dispatchers, args.dispatchers);
    set!(scenario.group.pattern, args.pattern);
    set!(scenario.group.burst_size, args.burst_size);
    set!(scenario.group.spurt_ms, args.spurt_ms);
    set!(scenario.group.gap_ms, args.gap_ms);
    set!(scenario.group.release_delay_ms, args.release_delay_ms);
    set!(scenario.group.codec, args.codec);
    set!(scenario.group.packet_rate, args.packet_rate);
    set!(scenario.group.payload_size, args.payload_size);
    set!(scenario.group.cycle_spurt_ms, args.cycle_spurt_ms);
    set!(scenario.group.setup_interval_ms, args.setup_interval_ms);
    if args.cycle {
        scenario.group.cycle = true;
    }
    set!(scenario.calls.users, args.call_users);
    set!(scenario.calls.rate, args.call_rate);
    set!(scenario.calls.hold_ms, args.hold_ms);
    set!(scenario.calls.count, args.call_count);
    set!(scenario.calls.answer, args.answer);
    set!(scenario.calls.answer_delay_ms, args.answer_delay_ms);
    set!(scenario.ramp.start, args.ramp_start);
    set!(scenario.ramp.step, args.ramp_step);
    set!(scenario.ramp.max, args.ramp_max);
    set!(scenario.ramp.step_s, args.ramp_step_s);
    set!(scenario.fault.at_s, args.kill_at);
    set!(scenario.run.receivers, args.receivers);
    set!(scenario.run.sip_timeout_ms, args.sip_timeout_ms);
    set!(scenario.run.setup_timeout_ms, args.setup_timeout_ms);
    set!(scenario.run.seed, args.seed);
    if args.no_groups {
        scenario.group.enabled = false;
    }
    if args.calls {
        scenario.calls.enabled = true;
    }
    if args.max_loss.is_some() {
        scenario.slo.max_loss = args.max_loss;
    }
    if args.max_p99_ms.is_some() {
        scenario.slo.max_p99_ms = args.max_p99_ms;
    }
    if !args.node_pids.is_empty() {
        scenario.node.pids = args.node_pids.clone();
    }
    if args.ramp {
        scenario.ramp.enabled = true;
    }
    if args.kill_pid.is_some() {
        scenario.fault.kill_pid = args.kill_pid;
    }
    if args.quiet {
        scenario.run.progress = false;
    }
}

/// One level of a ramp.
#[derive(Debug, Clone, Serialize)]
struct RampLevel {
    groups: usize,
    passed: bool,
    loss_ratio: f64,
    p99_ms: f64,
    p999_ms: f64,
    tx_pps: f64,
    rx_pps: f64,
    listeners: usize,
    node_cpu_percent: Vec<f64>,
    generator_cpu_percent: f64,
    violations: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
struct RampReport {
    levels: Vec<RampLevel>,
    /// The most groups that met the SLO.
    last_good: Option<usize>,
    first_bad: Option<usize>,
    reports: Vec<Report>,
}

fn write_json(path: &PathBuf, value: &impl Serialize) -> Result<(), String> {
    let text = serde_json::to_string_pretty(value).map_err(|error| error.to_string())?;
    std::fs::write(path, text).map_err(|error| format!("{}: {error}", path.display()))
}

async fn ramp(scenario: &Scenario, args: &RunArgs) -> Result<bool, String> {
    let mut levels = Vec::new();
    let mut reports = Vec::new();
    let mut last_good = None;
    let mut first_bad = None;
    let mut level_scenario = scenario.clone();
    level_scenario.run.duration_s = scenario.ramp.step_s;
    let mut groups = scenario.ramp.start;
    while groups <= scenario.ramp.max {
        eprintln!("floorcast-load: ramp level {groups} group calls");
        let report = run::run_once(&level_scenario, Some(groups), args.quiet).await?;
        let level = RampLevel {
            groups,
            passed: report.slo.passed,
            loss_ratio: report.media.loss_ratio,
            p99_ms: report.mouth_to_ear.p99_ms,
            p999_ms: report.mouth_to_ear.p999_ms,
            tx_pps: report.throughput.tx_pps,
            rx_pps: report.throughput.rx_pps,
            listeners: report.media.listeners,
            node_cpu_percent: report.nodes.iter().map(|usage| usage.cpu_percent).collect(),
            generator_cpu_percent: report.generator.cpu_percent,
            violations: report.slo.violations.clone(),
        };
        eprintln!(
            "floorcast-load: level {groups}: {} (loss {:.4}%, p99 {:.2} ms, rx {:.0} pps{})",
            if level.passed { "good" } else { "SLO missed" },
            level.loss_ratio * 100.0,
            level.p99_ms,
            level.rx_pps,
            if level.violations.is_empty() {
                String::new()
            } else {
                format!("; {}", level.violations.join("; "))
            }
        );
        let passed = level.passed;
        levels.push(level);
        reports.push(report);
        if !passed {
            first_bad = Some(groups);
            break;
        }
        last_good = Some(groups);
        groups += scenario.ramp.step;
        // Let the node free the previous level's calls.
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    println!("== floorcast-load ramp ==");
    println!(
        "{:>7} {:>9} {:>10} {:>10} {:>10} {:>10} {:>9}  node cpu %",
        "groups", "listeners", "loss %", "p99 ms", "p99.9 ms", "rx pps", "result"
    );
    for level in &levels {
        println!(
            "{:>7} {:>9} {:>10.4} {:>10.2} {:>10.2} {:>10.0} {:>9}  {}",
            level.groups,
            level.listeners,
            level.loss_ratio * 100.0,
            level.p99_ms,
            level.p999_ms,
            level.rx_pps,
            if level.passed { "good" } else { "missed" },
            level
                .node_cpu_percent
                .iter()
                .map(|cpu| format!("{cpu:.0}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    match last_good {
        Some(level) => println!("last good level: {level} group calls"),
        None => println!("no level met the SLO"),
    }
    if let Some(last) = reports.last() {
        println!("\nlast level in detail:\n{}", report::text(last));
    }
    if let Some(path) = &args.json {
        write_json(
            path,
            &RampReport {
                levels,
                last_good,
                first_bad,
                reports,
            },
        )?;
    }
    Ok(last_good.is_some())
}

fn run_command(args: &RunArgs) -> Result<bool, String> {
    let mut scenario = match &args.scenario {
        Some(path) => Scenario::load(path)?,
        None => Scenario::default(),
    };
    apply(&mut scenario, args);
    scenario.validate()?;
    run::raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|error| format!("cannot start the async runtime: {error}"))?;
    runtime.block_on(async {
        if scenario.ramp.enabled {
            return ramp(&scenario, args).await;
        }
        let report = run::run_once(&scenario, None, args.quiet).await?;
        println!("{}", report::text(&report));
        if let Some(path) = &args.json {
            write_json(path, &report)?;
        }
        Ok(report.slo.passed)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => match run_command(&args) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::from(2)
            }
        },
        Command::Provision(args) => match provision::provision(&args) {
            Ok(files) => {
                for file in files {
                    println!("wrote {}", file.display());
                }
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::from(2)
            }
        },
    }
}
