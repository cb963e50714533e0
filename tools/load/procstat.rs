//! CPU time and memory of processes on this machine, from `/proc` (the nodes under test, and
//! the generator itself).

use std::time::Instant;

use serde::Serialize;

/// One reading of a process.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at: Instant,
    /// User + system CPU time, seconds.
    pub cpu_s: f64,
    pub rss_kb: u64,
    /// Peak resident set (VmHWM).
    pub peak_kb: u64,
    pub threads: u64,
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// Reads `/proc/<pid>` (`None`: the process is gone). `pid` 0 is this process.
pub fn sample(pid: i32) -> Option<Sample> {
    let base = if pid == 0 {
        "/proc/self".to_owned()
    } else {
        format!("/proc/{pid}")
    };
    let stat = std::fs::read_to_string(format!("{base}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: fields count after the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the name: state(0) ppid(1) ... utime(11) stime(12) ... num_threads(17).
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let threads: u64 = fields.get(17)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("{base}/status")).ok()?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|value| value.parse().ok())
            .unwrap_or(0)
    };
    Some(Sample {
        at: Instant::now(),
        cpu_s: (utime + stime) / ticks_per_second(),
        rss_kb: field("VmRSS:"),
        peak_kb: field("VmHWM:"),
        threads,
    })
}

/// The name of a process (`comm`).
pub fn name(pid: i32) -> String {
    let base = if pid == 0 {
        "/proc/self".to_owned()
    } else {
        format!("/proc/{pid}")
    };
    std::fs::read_to_string(format!("{base}/comm"))
        .map(|name| name.trim().to_owned())
        .unwrap_or_default()
}

/// What a process used over a window.
#[derive(Debug, Clone, Serialize)]
pub struct Usage {
    pub pid: i32,
    pub name: String,
    /// CPU seconds used in the window.
    pub cpu_s: f64,
    /// CPU use in the window, percent of one core.
    pub cpu_percent: f64,
    pub rss_kb_start: u64,
    pub rss_kb_end: u64,
    /// Largest resident set seen in the window (one sample a second).
    pub rss_kb_peak: u64,
    /// The process's lifetime peak resident set (VmHWM).
    pub vm_hwm_kb: u64,
    pub threads: u64,
    /// The process ended during the window.
    pub exited: bool,
}

/// Follows one process over a run.
#[derive(Debug, Clone)]
pub struct Watch {
    pub pid: i32,
    pub name: String,
    first: Option<Sample>,
    last: Option<Sample>,
    peak_kb: u64,
    exited: bool,
}

impl Watch {
    pub fn new(pid: i32) -> Watch {
        let first = sample(pid);
        Watch {
            pid,
            name: name(pid),
            peak_kb: first.map_or(0, |sample| sample.rss_kb),
            first,
            last: first,
            exited: first.is_none(),
        }
    }

    /// Takes a reading; returns the CPU percent since the previous one.
    pub fn update(&mut self) -> Option<f64> {
        let Some(now) = sample(self.pid) else {
            self.exited = true;
            return None;
        };
        self.peak_kb = self.peak_kb.max(now.rss_kb);
        let previous = self.last.replace(now)?;
        let elapsed = now.at.duration_since(previous.at).as_secs_f64();
        (elapsed > 0.0).then(|| 100.0 * (now.cpu_s - previous.cpu_s) / elapsed)
    }

    pub fn rss_kb(&self) -> u64 {
        self.last.map_or(0, |sample| sample.rss_kb)
    }

    /// Restarts the window now.
    pub fn restart(&mut self) {
        self.first = sample(self.pid);
        self.last = self.first;
        self.peak_kb = self.first.map_or(0, |sample| sample.rss_kb);
    }

    pub fn usage(&mut self) -> Usage {
        let _ = self.update();
        let (cpu_s, elapsed) = match (self.first, self.last) {
            (Some(first), Some(last)) => (last.cpu_s - first.cpu_s, last.at.duration_since(first.at).as_secs_f64()),
            _ => (0.0, 0.0),
        };
        Usage {
            pid: self.pid,
            name: self.name.clone(),
            cpu_s,
            cpu_percent: if elapsed > 0.0 { 100.0 * cpu_s / elapsed } else { 0.0 },
            rss_kb_start: self.first.map_or(0, |sample| sample.rss_kb),
            rss_kb_end: self.last.map_or(0, |sample| sample.rss_kb),
            rss_kb_peak: self.peak_kb,
            vm_hwm_kb: self.last.map_or(0, |sample| sample.peak_kb),
            threads: self.last.map_or(0, |sample| sample.threads),
            exited: self.exited,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let sample = sample(0).expect("/proc/self");
        assert!(sample.rss_kb > 0);
        assert!(sample.threads >= 1);
        let mut watch = Watch::new(0);
        let usage = watch.usage();
        assert!(usage.rss_kb_peak >= usage.rss_kb_start);
        assert!(usage.vm_hwm_kb >= usage.rss_kb_peak);
        assert!(!usage.exited);
    }
}
