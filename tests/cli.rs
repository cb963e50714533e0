//! The `floorcast` binary: config checking, running on the embedded default, metrics, clean
//! shutdown on SIGTERM/SIGINT.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

mod common;

const BINARY: &str = env!("CARGO_BIN_EXE_floorcast");

fn write_config(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file
}

#[test]
fn check_config_accepts_the_shipped_examples() {
    for file in [
        "config/floorcast.toml",
        "config/example/tcf-a.toml",
        "config/example/tcf-b.toml",
        "config/example/tcf-c.toml",
    ] {
        let output = Command::new(BINARY).args(["check-config", file]).output().unwrap();
        assert!(
            output.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn check_config_checks_the_provisioning_files() {
    let directory = tempfile::tempdir().unwrap();
    std::fs::write(
        directory.path().join("network.toml"),
        "[[tcf]]\nname = \"tcf-1\"\nsip = \"nowhere\"\n",
    )
    .unwrap();
    let config = directory.path().join("node.toml");
    std::fs::write(&config, "[provisioning]\nnetwork = \"network.toml\"\n").unwrap();
    let output = Command::new(BINARY).arg("check-config").arg(&config).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("tcf[0].sip"), "{stderr}");
}

#[test]
fn check_config_names_the_bad_field() {
    for (text, field) in [
        ("[media]\nport_min = 40001\n", "media.port_min"),
        ("[media]\nbogus = 1\n", "media.bogus"),
        ("[metrics]\nlisten = \"everywhere\"\n", "metrics.listen"),
    ] {
        let file = write_config(text);
        let output = Command::new(BINARY)
            .arg("check-config")
            .arg(file.path())
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(field), "{stderr} should name {field}");
        assert!(!stderr.contains("panicked"));
    }
}

#[test]
fn run_refuses_an_invalid_config() {
    let file = write_config("[node]\nname = \"has space\"\n");
    let output = Command::new(BINARY)
        .args(["run", "--config"])
        .arg(file.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("node.name"));
}

/// Starts the binary and waits until it logs that it runs.
fn start(args: &[&str]) -> (Child, mpsc::Receiver<String>) {
    start_in(args, std::path::Path::new("."))
}

#[allow(clippy::zombie_processes)] // every caller waits for (or kills) the child
fn start_in(args: &[&str], directory: &std::path::Path) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new(BINARY)
        .current_dir(directory)
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (lines, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    loop {
        let line = receiver
            .recv_timeout(Duration::from_secs(10))
            .expect("node starts and logs");
        if line.contains("floorcast node running") {
            return (child, receiver);
        }
    }
}

fn signal(child: &Child, signal: libc::c_int) {
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as libc::pid_t, signal) };
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    for _ in 0..100 {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    panic!("node did not exit within 5 s of the signal");
}

fn http_get(address: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

#[test]
fn runs_with_a_config_serves_metrics_and_stops_on_sigterm() {
    let directory = tempfile::tempdir().unwrap();
    let network = directory.path().join("network.toml");
    std::fs::write(
        &network,
        "[[tcf]]\nname = \"tcf-test\"\nsip = \"127.0.0.1:19560\"\nusers = [\"1001-1010\"]\n",
    )
    .unwrap();
    let file = write_config(&format!(
        "[node]\nname = \"tcf-test\"\n[media]\nport_min = 44000\nport_max = 44099\nworkers = 1\n\
         [metrics]\nlisten = \"127.0.0.1:19464\"\nper_leg = true\n\
         [sip]\nlisten = \"127.0.0.1:19560\"\n\
         [provisioning]\nnetwork = \"{}\"\n[store]\npath = \"{}\"\n",
        network.display(),
        directory.path().join("state.redb").display()
    ));
    let path = file.path().to_str().unwrap().to_owned();
    let (mut child, _lines) = start(&["run", "--config", &path]);
    let response = http_get("127.0.0.1:19464", "/metrics");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.contains("floorcast_rtp_packets_total{node=\"tcf-test\",direction=\"in\"} 0"),
        "{response}"
    );
    assert!(
        response.contains("floorcast_ports_available{node=\"tcf-test\"} 50"),
        "{response}"
    );
    assert!(
        response.contains("floorcast_sip_bindings{node=\"tcf-test\"} 0"),
        "{response}"
    );
    assert!(
        response.contains("floorcast_sip_requests_total{node=\"tcf-test\"}"),
        "{response}"
    );
    // The SIP thread is real-time where this process may be (an idle node stays so).
    let allowed = common::sched::realtime_allowed();
    let realtime = format!("floorcast_sip_realtime{{node=\"tcf-test\"}} {}", u8::from(allowed));
    assert!(response.contains(&realtime), "{response}");
    assert!(
        response.contains("floorcast_sip_realtime_changes_total{node=\"tcf-test\"} 0"),
        "{response}"
    );
    assert!(http_get("127.0.0.1:19464", "/nothing").starts_with("HTTP/1.1 404"));
    signal(&child, libc::SIGTERM);
    assert!(wait_exit(&mut child).success());
}

#[test]
fn runs_on_the_embedded_default_and_stops_on_sigint() {
    // The embedded default keeps its state in the working directory: run it in a scratch one.
    let directory = tempfile::tempdir().unwrap();
    let (mut child, _lines) = start_in(&[], directory.path());
    signal(&child, libc::SIGINT);
    assert!(wait_exit(&mut child).success());
}

/// The scheduling policy (0 `SCHED_OTHER`, 1 `SCHED_FIFO`) and real-time priority of the
/// process's "sip" thread.
fn sip_thread_policy(pid: u32) -> Option<(u32, u32)> {
    common::sched::sip_threads(&pid.to_string()).first().copied()
}

/// A child node killed when the test ends, also when it fails (a node left running would hold
/// its ports for the next run).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_policy(pid: u32, wanted: (u32, u32), within: Duration) -> bool {
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if sip_thread_policy(pid) == Some(wanted) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// `sip.realtime_priority` (default 10): the SIP thread runs under SCHED_FIFO while calm,
/// goes back to ordinary scheduling when a flood of requests keeps it busy, and is real-time
/// again once the flood is over. Without the right to real-time scheduling the node runs all
/// the same.
#[test]
fn sip_thread_is_realtime_while_calm_and_ordinary_under_a_flood() {
    let directory = tempfile::tempdir().unwrap();
    let network = directory.path().join("network.toml");
    std::fs::write(
        &network,
        "[[tcf]]\nname = \"tcf-rt\"\nsip = \"127.0.0.1:19570\"\nusers = [\"1001-1010\"]\n",
    )
    .unwrap();
    let file = write_config(&format!(
        "[node]\nname = \"tcf-rt\"\n[media]\nport_min = 44200\nport_max = 44219\nworkers = 1\n\
         [metrics]\nlisten = \"off\"\n[sip]\nlisten = \"127.0.0.1:19570\"\n\
         [provisioning]\nnetwork = \"{}\"\n[store]\npath = \"{}\"\n",
        network.display(),
        directory.path().join("state.redb").display()
    ));
    let path = file.path().to_str().unwrap().to_owned();
    let (child, _lines) = start(&["run", "--config", &path]);
    let mut node = Running(child);
    let pid = node.0.id();
    // Where this process may not have SCHED_FIFO (no CAP_SYS_NICE or RLIMIT_RTPRIO, no real-time
    // budget in its cgroup), neither may the node: it runs all the same.
    let allowed = common::sched::realtime_allowed();
    if !allowed {
        assert!(matches!(sip_thread_policy(pid), Some((0, 0)) | Some((1, 10))));
        signal(&node.0, libc::SIGTERM);
        assert!(wait_exit(&mut node.0).success());
        return;
    }
    assert!(
        wait_policy(pid, (1, 10), Duration::from_secs(2)),
        "{:?}",
        sip_thread_policy(pid)
    );
    // Flood: OPTIONS as fast as this thread sends them, until the node gives up real time
    // (bounded: 3 s, 300,000 requests).
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let me = socket.local_addr().unwrap();
    let started = std::time::Instant::now();
    let mut ordinary = false;
    for index in 0..300_000u32 {
        let request = format!(
            "OPTIONS sip:tcf-rt@127.0.0.1:19570 SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKflood{index}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:probe@127.0.0.1>;tag=f{index}\r\nTo: <sip:tcf-rt@127.0.0.1:19570>\r\n\
             Call-ID: flood{index}@test\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        );
        let _ = socket.send_to(request.as_bytes(), "127.0.0.1:19570");
        if index % 256 == 0 {
            if sip_thread_policy(pid) == Some((0, 0)) {
                ordinary = true;
                break;
            }
            if started.elapsed() > Duration::from_secs(3) {
                break;
            }
        }
    }
    assert!(ordinary, "still {:?} after the flood", sip_thread_policy(pid));
    // Calm again: real-time within a few seconds (a calm quarter second's average, once the flood's
    // backlog is worked off).
    assert!(
        wait_policy(pid, (1, 10), Duration::from_secs(6)),
        "{:?}",
        sip_thread_policy(pid)
    );
    signal(&node.0, libc::SIGTERM);
    assert!(wait_exit(&mut node.0).success());
}
