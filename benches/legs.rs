//! One call's media lifecycle through the real [`Engine`] with its worker running: create a
//! relay bridge, add the caller's leg (remote known), add the callee's leg (remote not yet
//! known), update it with the callee's answer, remove the bridge — with the leg pool
//! (`media.leg_pool = true`, the default) and without it, in the same run.
//!
//! What is measured is CPU time of the whole process (`CLOCK_PROCESS_CPUTIME_ID`: the calling
//! thread's engine calls plus the media worker applying the commands, wake-ups included), per
//! call, after waiting for the worker to have applied every command. So it is the node CPU a
//! call's media costs, not the caller's wall time.
//!
//! Run: `cargo bench --bench legs` (about a minute). `LEGS_QUICK=1` for a smoke run. Prints
//! the memory of idle pooled port pairs, criterion's estimates, then interleaved A/B rounds
//! (pool, no pool, pool, ...) with the ratio: back-to-back calls, and calls one at a time.
//!
//! Both engines run with `port_quarantine_ms = 0`, so the pool's steady state (every port
//! reused) is reached at once; with a real quarantine the pool is just larger (ports in use
//! and in quarantine), each take and release costs the same.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Duration;

use criterion::Criterion;
use floorcast::config::{Config, MediaConfig};
use floorcast::io::Engine;
use floorcast::media::api::{BridgeKind, LegSpec};

fn quick() -> bool {
    std::env::var_os("LEGS_QUICK").is_some()
}

fn config(pool: bool, port_min: u16, port_max: u16) -> MediaConfig {
    let mut config = Config::from_toml("").unwrap().media;
    config.workers = 1;
    config.port_min = port_min;
    config.port_max = port_max;
    config.port_quarantine = Duration::ZERO;
    config.leg_pool = pool;
    config
}

/// CPU time of every thread of this process so far.
fn process_cpu() -> Duration {
    let mut time = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut time) };
    Duration::new(time.tv_sec as u64, time.tv_nsec as u32)
}

/// One call's media on a node: what `src/control` does for a single call with edge anchoring.
fn call(engine: &Engine) {
    let caller: SocketAddr = "127.0.0.1:30000".parse().unwrap();
    let callee: SocketAddr = "127.0.0.1:30002".parse().unwrap();
    let bridge = engine.create_bridge(BridgeKind::Relay).unwrap();
    let a = engine
        .add_leg(
            bridge,
            LegSpec {
                remote: Some(caller),
                ..LegSpec::default()
            },
        )
        .unwrap();
    let b = engine.add_leg(bridge, LegSpec::default()).unwrap();
    engine
        .update_leg(
            b.id,
            LegSpec {
                remote: Some(callee),
                ..LegSpec::default()
            },
        )
        .unwrap();
    black_box((a, b));
    engine.remove_bridge(bridge).unwrap();
}

/// CPU per call over `calls` calls, the worker's share included.
fn measure(engine: &Engine, calls: u64) -> Duration {
    let start = process_cpu();
    for _ in 0..calls {
        call(engine);
    }
    engine.stats(false).unwrap(); // the worker has applied every command
    process_cpu() - start
}

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

fn slab_bytes() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let line = meminfo.lines().find(|line| line.starts_with("Slab:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

/// Memory of idle pooled ports: RSS growth from starting an engine with N port pairs bound
/// into the pool (RTP and RTCP socket each), minus the growth from starting an identical
/// engine with none just before (all stay alive, so no freed memory is reused).
fn idle_memory() {
    let pairs = 2000;
    // A first engine pays the process's one-time costs (allocator arenas, lazy statics).
    let mut warm_up = config(true, 50_000, 50_999);
    warm_up.leg_pool_prebind = 0;
    let warm_up = Engine::start(&warm_up, "legs").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let rss_start = resident_bytes();
    let mut empty = config(true, 40_000, 44_999);
    empty.leg_pool_prebind = 0;
    let without = Engine::start(&empty, "legs").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let rss_without = resident_bytes();
    let slab_before = slab_bytes();
    let mut full = config(true, 45_000, 49_999);
    full.leg_pool_prebind = pairs;
    let with = Engine::start(&full, "legs").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(with.ports_pooled(), pairs);
    let rss_with = resident_bytes();
    let slab_after = slab_bytes();
    let engine_alone = rss_without.saturating_sub(rss_start);
    let pool = rss_with.saturating_sub(rss_without).saturating_sub(engine_alone);
    println!("\n## Idle pooled port pairs ({pairs} prebound, RTP + RTCP socket each)\n");
    println!(
        "process RSS: an engine without pooled ports +{} KiB; the same with {pairs} idle pairs +{} KiB; \
         difference {} KiB = {:.0} bytes per idle pair",
        engine_alone / 1024,
        rss_with.saturating_sub(rss_without) / 1024,
        pool / 1024,
        pool as f64 / pairs as f64
    );
    println!(
        "kernel slab (whole machine, noisy): +{} KiB = about {:.0} bytes per idle pair (socket, inode, file, \
         epoll item; kernel memory, not in RSS)",
        slab_after.saturating_sub(slab_before) / 1024,
        slab_after.saturating_sub(slab_before) as f64 / pairs as f64
    );
    drop(with);
    drop(without);
    drop(warm_up);
}

/// Like [`measure`], but each call waits for the worker before the next starts, as isolated
/// calls on a quiet node do: every command then costs the worker a wake-up.
fn measure_isolated(engine: &Engine, calls: u64) -> Duration {
    let start = process_cpu();
    for _ in 0..calls {
        call(engine);
        engine.stats(false).unwrap();
    }
    process_cpu() - start
}

fn main() {
    if !std::env::args().any(|arg| arg == "--bench") {
        return;
    }
    floorcast::io::raise_fd_limit().unwrap();
    idle_memory();
    let pooled = Engine::start(&config(true, 20_000, 29_999), "legs").unwrap();
    let unpooled = Engine::start(&config(false, 30_100, 39_999), "legs").unwrap();

    let mut criterion = Criterion::default().configure_from_args();
    if quick() {
        criterion = criterion
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(1))
            .sample_size(10);
    } else {
        criterion = criterion
            .warm_up_time(Duration::from_secs(2))
            .measurement_time(Duration::from_secs(8));
    }
    {
        let mut group = criterion.benchmark_group("call_media_lifecycle_cpu");
        group.bench_function("leg_pool", |bencher| {
            bencher.iter_custom(|iterations| measure(&pooled, iterations))
        });
        group.bench_function("no_pool", |bencher| {
            bencher.iter_custom(|iterations| measure(&unpooled, iterations))
        });
        group.finish();
    }
    criterion.final_summary();

    // Interleaved A/B in the same run, so the machine's other load hits both alike.
    let rounds = if quick() { 3 } else { 10 };
    let calls = if quick() { 500 } else { 2000 };
    let (mut with_pool, mut without) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..rounds {
        with_pool += measure(&pooled, calls);
        without += measure(&unpooled, calls);
    }
    let total = (rounds * calls) as f64;
    let pool_us = with_pool.as_secs_f64() * 1e6 / total;
    let no_pool_us = without.as_secs_f64() * 1e6 / total;
    println!("\n## One call's media lifecycle, node CPU per call (A/B interleaved, {rounds} x {calls} calls each)\n");
    println!("| variant | CPU µs per call |");
    println!("|---|---:|");
    println!("| leg pool (`media.leg_pool = true`) | {pool_us:.1} |");
    println!("| no pool (`media.leg_pool = false`) | {no_pool_us:.1} |");
    println!("| ratio pool / no pool | {:.2} |", pool_us / no_pool_us);

    // The same, one call at a time (each followed by a stats round trip, in both variants).
    let (mut with_pool, mut without) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..rounds {
        with_pool += measure_isolated(&pooled, calls / 4);
        without += measure_isolated(&unpooled, calls / 4);
    }
    let total = (rounds * (calls / 4)) as f64;
    let pool_us = with_pool.as_secs_f64() * 1e6 / total;
    let no_pool_us = without.as_secs_f64() * 1e6 / total;
    println!("\n## The same, one call at a time (the worker woken per command; a stats round trip per call in both)\n");
    println!("| variant | CPU µs per call |");
    println!("|---|---:|");
    println!("| leg pool | {pool_us:.1} |");
    println!("| no pool | {no_pool_us:.1} |");
    println!("| ratio pool / no pool | {:.2} |", pool_us / no_pool_us);
}
