//! The machine's floor under every SIP pass: how long a UDP datagram takes to wake a thread
//! that sleeps in `recv`, on the same CPU and on the other one, after idle gaps of various
//! lengths (a ping-pong over loopback between two pinned threads, no floorcast code).
//!
//! ```text
//! cargo run --release --example wake_latency [rounds]
//! ```
//!
//! Each line gives the round-trip time (two wake-ups) percentiles. On the 2-vCPU VMs of
//! BENCHMARKS.md a wake-up on the other vCPU after an idle gap costs ~40 µs at the median
//! and milliseconds at p99: the vCPU itself has to be woken by the host. Every SIP pass that
//! finds its thread asleep pays one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::UdpSocket;
use std::time::{Duration, Instant};

fn pin(cpu: usize) {
    floorcast::io::worker::pin_to_cpu(cpu).expect("pinning a thread");
}

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    let index = ((sorted.len() as f64 * q) as usize).min(sorted.len() - 1);
    sorted[index].as_secs_f64() * 1e6
}

fn run(rounds: usize, gap: Duration, cpus: (usize, usize)) -> String {
    let ping = UdpSocket::bind("127.0.0.1:0").unwrap();
    let pong = UdpSocket::bind("127.0.0.1:0").unwrap();
    let ping_address = ping.local_addr().unwrap();
    ping.connect(pong.local_addr().unwrap()).unwrap();
    let echo = std::thread::spawn(move || {
        pin(cpus.1);
        let mut buffer = [0u8; 16];
        for _ in 0..rounds {
            let read = pong.recv(&mut buffer).unwrap();
            pong.send_to(&buffer[..read], ping_address).unwrap();
        }
    });
    pin(cpus.0);
    std::thread::sleep(Duration::from_millis(50));
    let mut times = Vec::with_capacity(rounds);
    let mut buffer = [0u8; 16];
    for _ in 0..rounds {
        let started = Instant::now();
        ping.send(b"x").unwrap();
        ping.recv(&mut buffer).unwrap();
        times.push(started.elapsed());
        if !gap.is_zero() {
            std::thread::sleep(gap);
        }
    }
    echo.join().unwrap();
    times.sort();
    format!(
        "CPUs {} → {}, idle gap {:>5} µs: round trip p50 {:>6.0} µs  p90 {:>6.0}  p99 {:>6.0}  max {:>6.0}",
        cpus.0,
        cpus.1,
        gap.as_micros(),
        percentile(&times, 0.5),
        percentile(&times, 0.9),
        percentile(&times, 0.99),
        percentile(&times, 1.0),
    )
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000)
        .max(1);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let other = usize::from(cpus > 1);
    for gap_us in [0u64, 1_000, 5_000] {
        let gap = Duration::from_micros(gap_us);
        println!("{}", run(rounds, gap, (0, 0)));
        println!("{}", run(rounds, gap, (0, other)));
    }
}
