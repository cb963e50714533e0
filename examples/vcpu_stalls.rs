//! How often, and for how long, the machine takes a CPU away from a thread that never sleeps:
//! one spinning thread pinned to each CPU reads the monotonic clock in a loop and reports
//! every gap longer than a threshold (no floorcast code, no system call in the loop).
//!
//! ```text
//! cargo run --release --example vcpu_stalls [seconds] [threshold_us] [cpus]
//! ```
//!
//! `cpus` (default: all) spins on that many CPUs, 0.. . A gap nothing inside the guest
//! accounts for (no other runnable task, no interrupt handler that long: check with
//! `perf record -e sched:sched_switch -a`) is the host running something else on that vCPU.
//! BENCHMARKS.md (single calls, session 7) found, on the 2-vCPU VMs it was written on, a
//! 3–5 ms stall of one vCPU about once a second whenever both vCPUs are busy, and none with
//! one busy: a busy node's setup-latency p99 lands on those stalls.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

fn main() {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().map_or(8, |value| value.parse().expect("seconds"));
    let threshold_us: u64 = args
        .next()
        .map_or(1000, |value| value.parse().expect("threshold in µs"));
    let available = std::thread::available_parallelism().map_or(1, |count| count.get());
    let cpus: usize = args.next().map_or(available, |value| value.parse().expect("CPU count"));
    let threshold = Duration::from_micros(threshold_us);
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let spinners: Vec<_> = (0..cpus)
        .map(|cpu| {
            std::thread::spawn(move || {
                floorcast::io::worker::pin_to_cpu(cpu).expect("pinning a thread");
                let mut gaps = Vec::new();
                let mut last = Instant::now();
                while last < end {
                    let now = Instant::now();
                    let gap = now - last;
                    if gap > threshold {
                        gaps.push((last - start, gap));
                    }
                    last = now;
                }
                (cpu, gaps)
            })
        })
        .collect();
    println!("{cpus} spinning thread(s), {seconds} s, gaps over {threshold_us} µs:");
    for spinner in spinners {
        let (cpu, gaps) = spinner.join().unwrap();
        let total: Duration = gaps.iter().map(|(_, gap)| *gap).sum();
        let longest = gaps.iter().map(|(_, gap)| *gap).max().unwrap_or_default();
        println!(
            "cpu {cpu}: {} gaps, {:.1} ms in all, longest {:.2} ms",
            gaps.len(),
            total.as_secs_f64() * 1e3,
            longest.as_secs_f64() * 1e3
        );
        for (at, gap) in gaps.iter().filter(|(_, gap)| *gap >= threshold * 2) {
            println!("  at {:8.3} s: {:.2} ms", at.as_secs_f64(), gap.as_secs_f64() * 1e3);
        }
    }
}
