//! The `floorcast` binary: config checking, running on the embedded default, metrics, clean
//! shutdown on SIGTERM/SIGINT.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

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
