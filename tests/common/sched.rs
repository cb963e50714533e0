//! How threads are scheduled, for the tests of `sip.realtime_priority`.

/// Whether this process may put a thread under `SCHED_FIFO` (root with `CAP_SYS_NICE`, or an
/// `RLIMIT_RTPRIO`, and a real-time budget in its cgroup); tried on a scratch thread.
pub fn realtime_allowed() -> bool {
    std::thread::spawn(|| floorcast::io::worker::set_realtime(1).is_ok())
        .join()
        .unwrap()
}

/// The scheduling policy (0 `SCHED_OTHER`, 1 `SCHED_FIFO`) and real-time priority of every
/// thread named "sip" of process `pid` ("self" for this one).
pub fn sip_threads(pid: &str) -> Vec<(u32, u32)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // Fields after the parenthesised name start at 3; rt_priority is 40, policy 41.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3).and_then(|text| text.parse::<u32>().ok());
        if let (true, Some(policy), Some(priority)) = (comm.trim() == "sip", field(41), field(40)) {
            found.push((policy, priority));
        }
    }
    found
}
