//! Store-only load driver: what the `floorcast-store` writer thread costs per row under a
//! REGISTER-like write pattern (two rows per REGISTER over a fixed set of users), without SIP.
//!
//! `cargo run --release --example store_load -- [registers_per_s] [seconds] [users] [commit_interval_ms]`
//! Prints the writer thread's CPU per REGISTER (from /proc schedstat), commits and rows.

use std::time::{Duration, Instant};

use floorcast::control::tcf::{Binding, Registration};
use floorcast::node::sip::{BINDINGS, REGISTRATIONS};
use floorcast::node::store::{Store, StoreOptions};
use floorcast::proto::Number;

fn thread_cpu_ns(name: &str) -> u64 {
    let mut total = 0;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.trim() == name {
                let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
                total += stat
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    total
}

fn main() {
    let args: Vec<u64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let rate = args.first().copied().unwrap_or(12_000);
    let seconds = args.get(1).copied().unwrap_or(5);
    let users = args.get(2).copied().unwrap_or(4096);
    let dir = tempfile::tempdir().expect("tempdir");
    let interval_ms = args.get(3).copied().unwrap_or(5);
    let options = StoreOptions {
        commit_interval: Duration::from_millis(interval_ms),
        ..StoreOptions::default()
    };
    let store = Store::open(&dir.path().join("state.redb"), options).expect("open");
    let numbers: Vec<Number> = (0..users)
        .map(|i| Number::parse(&format!("{}", 100_000 + i)).expect("number"))
        .collect();
    let started = Instant::now();
    let cpu_before = thread_cpu_ns("floorcast-store");
    let total = rate * seconds;
    let mut encode = Duration::ZERO;
    for i in 0..total {
        let due = started + Duration::from_nanos(i * 1_000_000_000 / rate);
        while Instant::now() < due {
            std::hint::spin_loop();
        }
        let user = &numbers[(i.wrapping_mul(2_654_435_761) % users) as usize];
        let t = Instant::now();
        let binding = Binding {
            user: user.clone(),
            contact: format!("sip:{}@127.0.0.1:{}", user, 20_000 + i % 1000),
            address: format!("127.0.0.1:{}", 20_000 + i % 1000).parse().expect("addr"),
            expires_at: 1_800_000_000 + i,
        };
        store.put(&BINDINGS, user.as_str(), &binding).expect("put");
        let registration = Registration {
            user: user.clone(),
            serving: "tcf-1".to_owned(),
            expires_at: 1_800_000_000 + i,
        };
        store.put(&REGISTRATIONS, user.as_str(), &registration).expect("put");
        encode += t.elapsed();
    }
    store.flush().expect("flush");
    let cpu = thread_cpu_ns("floorcast-store") - cpu_before;
    let stats = store.stats();
    println!(
        "{total} REGISTERs at {rate}/s over {users} users: writer {:.2} µs per REGISTER, caller {:.2} µs per REGISTER; {} commits, {} rows written, {} coalesced",
        cpu as f64 / 1000.0 / total as f64,
        encode.as_nanos() as f64 / 1000.0 / total as f64,
        stats.commits,
        stats.rows_written,
        stats.writes_coalesced
    );
}
