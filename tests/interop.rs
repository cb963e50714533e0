//! Interoperability of the SIP control plane with independent SIP implementations, installed
//! from Debian's packages by `.ci/run`: SIPp (`sip-tester`) and Perl's Net::SIP
//! (`libnet-sip-perl`). Each test starts the real `floorcast` binary on its own loopback ports
//! with the built-in demo subscribers, runs the client against it over UDP, and checks both the
//! client's verdict and the node's own account of the registration (its `sip event` log lines).
//!
//! A missing client is a failure, not a skip: CI installs them, and a silently skipped interop
//! test proves nothing.
#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_floorcast");
/// What `.ci/run` does to get the clients.
const INSTALL: &str = "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
                       sip-tester libnet-sip-perl (the install line of .ci/run)";
/// How long the node may take to start (a debug build, a fresh store).
const START_LIMIT: Duration = Duration::from_secs(20);
/// Upper bound on one client run; the clients bound themselves more tightly.
const CLIENT_LIMIT: Duration = Duration::from_secs(60);
/// How long the node may take to log what it did after the client finished.
const LOG_LIMIT: Duration = Duration::from_secs(5);

/// SIPp registers 1001 with digest authentication, sends OPTIONS, and deregisters:
/// `tests/interop/sipp_register.xml`. Debian's SIPp 3.6.1 answers only the first
/// WWW-Authenticate it sees and knows only MD5, so this node is configured the way an operator
/// with such clients would: `sip.digest_algorithms = ["MD5"]`. (With the default SHA-256-first
/// offer, SIPp 3.6.1 gives up: "authentication must use MD5 or AKAv1-MD5".)
#[test]
fn interop_sipp_register_with_digest_and_options() {
    require_sipp();
    let mut node = Node::start(45_000, "digest_algorithms = [\"MD5\"]\n");
    let client_port = free_udp_port();
    let scenario = manifest_path("tests/interop/sipp_register.xml");
    let errors = node.directory.path().join("sipp_errors.log");
    let messages = node.directory.path().join("sipp_messages.log");
    let mut command = Command::new("sipp");
    command
        .arg("-sf")
        .arg(&scenario)
        .args(["-m", "1", "-t", "u1", "-i", "127.0.0.1", "-p", &client_port.to_string()])
        .args(["-s", "1001", "-au", "1001", "-ap", "demo"])
        .args(["-timeout", "15s", "-timeout_error", "-nostdin"])
        .args(["-trace_err", "-trace_msg"])
        .arg("-error_file")
        .arg(&errors)
        .arg("-message_file")
        .arg(&messages)
        .arg(node.address.to_string());
    let run = run_bounded(&mut command, node.directory.path(), "sipp");
    if !run.status.success() {
        let errors = std::fs::read_to_string(&errors).unwrap_or_default();
        let messages = std::fs::read_to_string(&messages).unwrap_or_default();
        let known = if errors.contains("authentication must use MD5") {
            "\nDIAGNOSIS: this SIPp (3.6.x, Debian's sip-tester) joins all WWW-Authenticate headers \
             into one string and answers the first `algorithm=` it finds; floorcast offers SHA-256 \
             first (RFC 8760 §2.4 order), which this SIPp cannot compute, so it gives up instead \
             of answering the MD5 challenge that follows.\n"
        } else {
            ""
        };
        panic!(
            "sipp failed ({}): {}{known}\n--- sipp errors ---\n{errors}\n--- sipp stderr ---\n{}\n\
             --- sipp messages ---\n{messages}\n--- node log ---\n{}",
            run.status,
            run.command,
            run.stderr,
            node.log()
        );
    }
    // The node's side: 1001 was bound for the 300 s it asked for, then released.
    node.expect_line("binding of 1001 for 300 s", |line| {
        line.contains("Bound {") && line.contains("\"1001\"") && line.contains("expires: 300")
    });
    node.expect_line("deregistration of 1001", |line| {
        line.contains("Unbound {") && line.contains("\"1001\"") && line.contains("deregistered")
    });
    node.stop();
}

/// Net::SIP registers 1002 with digest authentication (answering the MD5 one of the node's two
/// challenges), sends OPTIONS, refreshes and deregisters: `tests/interop/netsip_register.pl`.
#[test]
fn interop_netsip_register() {
    require_net_sip();
    let mut node = Node::start(45_050, "");
    let client = SocketAddr::from(([127, 0, 0, 1], free_udp_port()));
    let script = manifest_path("tests/interop/netsip_register.pl");
    let mut command = Command::new("perl");
    command
        .arg(&script)
        .args(["--registrar", &node.address.to_string()])
        .args(["--local", &client.to_string()])
        .args(["--user", "1002", "--password", "demo", "--timeout", "10"]);
    let run = run_bounded(&mut command, node.directory.path(), "perl");
    assert!(
        run.status.success() && run.stdout.contains("RESULT: PASS"),
        "Net::SIP client failed ({}): {}\n--- stdout ---\n{}\n--- stderr ---\n{}\n--- node log ---\n{}",
        run.status,
        run.command,
        run.stdout,
        run.stderr,
        node.log()
    );
    node.expect_line("binding of 1002 for 300 s", |line| {
        line.contains("Bound {") && line.contains("\"1002\"") && line.contains("expires: 300")
    });
    node.expect_line("deregistration of 1002", |line| {
        line.contains("Unbound {") && line.contains("\"1002\"") && line.contains("deregistered")
    });
    node.stop();
}

// ---- the node ----------------------------------------------------------------------------------

/// A `floorcast` process on its own SIP port, with its config, network and store in a temporary
/// directory. Killed on drop if the test did not stop it.
struct Node {
    directory: tempfile::TempDir,
    address: SocketAddr,
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    /// Every stderr line read so far (for failure messages).
    seen: Vec<String>,
}

impl Node {
    /// Starts a node of the one-TCF network `tcf-1` (users 1001-1010, demo subscribers) on a
    /// free loopback port, media ports `media_min..media_min + 49`, and waits until it runs.
    fn start(media_min: u16, sip_extra: &str) -> Node {
        let directory = tempfile::tempdir().unwrap();
        let address = SocketAddr::from(([127, 0, 0, 1], free_udp_port()));
        let network = directory.path().join("network.toml");
        std::fs::write(
            &network,
            format!("[[tcf]]\nname = \"tcf-1\"\nsip = \"{address}\"\nusers = [\"1001-1010\"]\n"),
        )
        .unwrap();
        let config = directory.path().join("floorcast.toml");
        std::fs::write(
            &config,
            format!(
                "[node]\nname = \"tcf-1\"\n\
                 [media]\nport_min = {media_min}\nport_max = {media_max}\nworkers = 1\n\
                 [metrics]\nlisten = \"off\"\n\
                 [sip]\nlisten = \"{address}\"\n{sip_extra}\
                 [provisioning]\nnetwork = \"{network}\"\nsubscribers = \"builtin:demo\"\n\
                 [store]\npath = \"{store}\"\n",
                media_max = media_min + 49,
                network = network.display(),
                store = directory.path().join("state.redb").display(),
            ),
        )
        .unwrap();
        let mut child = Command::new(BINARY)
            .current_dir(directory.path())
            .arg("run")
            .arg("--config")
            .arg(&config)
            // The SIP events (bindings) are logged at debug level.
            .env("RUST_LOG", "info,floorcast::node::sip=debug")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if sender.send(strip_ansi(&line)).is_err() {
                    break;
                }
            }
        });
        let mut node = Node {
            directory,
            address,
            child: Some(child),
            lines,
            seen: Vec::new(),
        };
        if !node.wait_line(START_LIMIT, |line| line.contains("floorcast node running")) {
            panic!(
                "the node did not log that it runs within {START_LIMIT:?}:\n{}",
                node.log()
            );
        }
        node
    }

    /// Reads stderr lines until one matches, for at most `limit`; whether one did.
    fn wait_line(&mut self, limit: Duration, matches: impl Fn(&str) -> bool) -> bool {
        if self.seen.iter().any(|line| matches(line)) {
            return true;
        }
        let deadline = Instant::now() + limit;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = matches(&line);
                    self.seen.push(line);
                    if found {
                        return true;
                    }
                }
                Err(_) => return false,
            }
        }
        false
    }

    /// Asserts that the node logs a line matching `matches` (described by `what`) soon.
    fn expect_line(&mut self, what: &str, matches: impl Fn(&str) -> bool) {
        if !self.wait_line(LOG_LIMIT, matches) {
            panic!("the node did not log the {what} within {LOG_LIMIT:?}:\n{}", self.log());
        }
    }

    /// The log so far, and whether the process still runs.
    fn log(&mut self) -> String {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        let state = match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(Some(status))) => format!("[node exited: {status}]"),
            Some(Ok(None)) => "[node running]".to_owned(),
            Some(Err(error)) => format!("[node state unknown: {error}]"),
            None => "[node stopped]".to_owned(),
        };
        format!("{}\n{state}", self.seen.join("\n"))
    }

    /// Stops the node with SIGTERM and asserts it exits cleanly (it must have run throughout).
    fn stop(mut self) {
        let mut child = self.child.take().unwrap();
        assert!(child.try_wait().unwrap().is_none(), "the node died:\n{}", self.log());
        // SAFETY: signalling our own child process, which has not been reaped (checked above).
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let status = wait_bounded(&mut child, Duration::from_secs(10));
        assert!(
            status.is_some_and(|status| status.success()),
            "the node did not exit cleanly on SIGTERM ({status:?}):\n{}",
            self.log()
        );
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---- clients -----------------------------------------------------------------------------------

fn require_sipp() {
    match Command::new("sipp").arg("-v").stdin(Stdio::null()).output() {
        Ok(_) => {}
        Err(error) => panic!("`sipp` cannot be run ({error}): install SIPp first: {INSTALL}"),
    }
}

fn require_net_sip() {
    match Command::new("perl").args(["-MNet::SIP", "-e1"]).output() {
        Ok(output) if output.status.success() => {}
        Ok(output) => panic!(
            "Perl's Net::SIP is missing ({}): install it first: {INSTALL}",
            String::from_utf8_lossy(&output.stderr).trim()
        ),
        Err(error) => panic!("`perl` cannot be run ({error}): install Net::SIP first: {INSTALL}"),
    }
}

/// A finished client run.
struct Run {
    command: String,
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `command` in `directory` with its output in files there (no pipe to fill up), killing
/// it after [`CLIENT_LIMIT`].
fn run_bounded(command: &mut Command, directory: &Path, name: &str) -> Run {
    let stdout_path = directory.join(format!("{name}.stdout"));
    let stderr_path = directory.join(format!("{name}.stderr"));
    let description = format!("{command:?}");
    let mut child = command
        .current_dir(directory)
        .stdin(Stdio::null())
        .stdout(File::create(&stdout_path).unwrap())
        .stderr(File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot run {description}: {error}; install the clients first: {INSTALL}"));
    let status = match wait_bounded(&mut child, CLIENT_LIMIT) {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{description} did not finish within {CLIENT_LIMIT:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                std::fs::read_to_string(&stdout_path).unwrap_or_default(),
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
    };
    Run {
        command: description,
        status,
        stdout: std::fs::read_to_string(&stdout_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&stderr_path).unwrap_or_default(),
    }
}

/// The child's exit status, or `None` if it still runs after `limit`.
fn wait_bounded(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---- helpers -----------------------------------------------------------------------------------

fn manifest_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// A UDP port on 127.0.0.1 that was free a moment ago (the kernel's pick).
fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The line without ANSI colour sequences (`ESC [ ... letter`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(character) = chars.next() {
        if character == '\u{1b}' {
            for next in chars.by_ref() {
                if next.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(character);
        }
    }
    out
}
