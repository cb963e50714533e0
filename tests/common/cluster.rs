//! A cluster of real floorcast nodes (in-process, each on its own loopback ports) running the
//! example network of three TCFs, and a scriptable SIP terminal.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::needless_range_loop)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use floorcast::config::Config;
use floorcast::control::tcf::TcfEvent;
use floorcast::node::{self, Node};
use floorcast::sip::{digest, HeaderName, Message};
use tokio::net::UdpSocket;
use tokio::sync::broadcast;

pub const NAMES: [&str; 3] = ["tcf-a", "tcf-b", "tcf-c"];

/// Three nodes on `127.0.0.1:base+1..=base+3` with the example subscribers.
pub struct Cluster {
    pub directory: tempfile::TempDir,
    pub base: u16,
    pub nodes: Vec<Option<Node>>,
    pub extra: String,
}

impl Cluster {
    /// The SIP address of node `index`.
    pub fn address(&self, index: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.base + 1 + index as u16))
    }

    fn config_text(&self, index: usize) -> String {
        let directory = self.directory.path();
        // 120 ports per test, by the base's hundreds (bases are 15100…19900 in steps of 100):
        // no two tests of a binary, which run in parallel, share a media port.
        let media_min = 20_000 + (self.base / 100 % 100) * 120 + index as u16 * 40;
        format!(
            "[node]\nname = \"{name}\"\n\
             [media]\nport_min = {media_min}\nport_max = {media_max}\nworkers = 1\n\
             [sip]\nlisten = \"{listen}\"\nrealm = \"example\"\nmin_expires = 1\nt1_ms = 100\n\
             heartbeat_interval_ms = 400\nheartbeat_failures = 3\n{extra}\n\
             [provisioning]\nnetwork = \"{network}\"\nsubscribers = \"{subscribers}\"\n\
             [store]\npath = \"{store}\"\n",
            name = NAMES[index],
            media_max = media_min + 39,
            listen = self.address(index),
            extra = self.extra,
            network = directory.join("network.toml").display(),
            subscribers = directory.join("subscribers.toml").display(),
            store = directory.join(format!("{}.redb", NAMES[index])).display(),
        )
    }

    /// Waits until no node holds a call, a relay bridge or a media leg any more, and asserts it.
    pub async fn assert_all_freed(&self) {
        for index in 0..self.nodes.len() {
            let node = self.node(index);
            let handle = &node.sip;
            let idle = wait_for(Duration::from_secs(5), || async {
                handle.stats().await.is_some_and(|stats| stats.calls == 0)
            })
            .await;
            assert!(idle, "{} freed every call", NAMES[index]);
            let engine = &node.engine;
            let empty = wait_for(Duration::from_secs(5), || async {
                engine
                    .stats(true)
                    .unwrap()
                    .iter()
                    .all(|worker| worker.bridges.is_empty() && worker.legs.is_empty())
            })
            .await;
            assert!(empty, "{} holds no bridge or leg", NAMES[index]);
        }
    }

    /// Starts the three nodes. `base` must be unique per test (ports base+1..=base+3).
    pub async fn start(base: u16) -> Cluster {
        Cluster::start_with(base, "").await
    }

    /// Like [`Cluster::start`], with extra `[sip]` lines.
    pub async fn start_with(base: u16, extra: &str) -> Cluster {
        let directory = tempfile::tempdir().unwrap();
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/example");
        let network = std::fs::read_to_string(example.join("network.toml")).unwrap();
        let network = network
            .replace("127.0.0.1:5161", &format!("127.0.0.1:{}", base + 1))
            .replace("127.0.0.1:5162", &format!("127.0.0.1:{}", base + 2))
            .replace("127.0.0.1:5163", &format!("127.0.0.1:{}", base + 3));
        std::fs::write(directory.path().join("network.toml"), network).unwrap();
        std::fs::copy(
            example.join("subscribers.toml"),
            directory.path().join("subscribers.toml"),
        )
        .unwrap();
        let mut cluster = Cluster {
            directory,
            base,
            nodes: Vec::new(),
            extra: extra.to_owned(),
        };
        for index in 0..3 {
            let node = cluster.boot(index).await;
            cluster.nodes.push(Some(node));
        }
        cluster
    }

    async fn boot(&self, index: usize) -> Node {
        let config = Config::from_toml(&self.config_text(index)).expect("test config is valid");
        node::start(&config).await.expect("node starts")
    }

    pub fn node(&self, index: usize) -> &Node {
        self.nodes[index].as_ref().expect("node is running")
    }

    /// Stops node `index` (its state is flushed to its store).
    pub async fn stop(&mut self, index: usize) {
        if let Some(node) = self.nodes[index].take() {
            node::stop(node).await;
        }
    }

    /// Starts node `index` again on the same store.
    pub async fn restart(&mut self, index: usize) {
        let node = self.boot(index).await;
        self.nodes[index] = Some(node);
    }

    /// Waits until every node sees every other as up.
    pub async fn wait_all_up(&self) {
        for index in 0..3 {
            for other in 0..3 {
                if index != other && self.nodes[index].is_some() && self.nodes[other].is_some() {
                    let handle = &self.node(index).sip;
                    let peer = NAMES[other];
                    let up = wait_for(Duration::from_secs(5), || async {
                        handle.peer_up(peer).await == Some(true)
                    })
                    .await;
                    assert!(up, "{} sees {peer} up", NAMES[index]);
                }
            }
        }
    }

    pub async fn shutdown(mut self) {
        for index in 0..3 {
            self.stop(index).await;
        }
    }
}

/// Polls `condition` until it holds or `timeout` passes.
pub async fn wait_for<F, Fut>(timeout: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if condition().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    condition().await
}

/// Waits for an event matching `predicate`.
pub async fn expect_event(
    events: &mut broadcast::Receiver<TcfEvent>,
    timeout: Duration,
    predicate: impl Fn(&TcfEvent) -> bool,
) -> TcfEvent {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(remaining, events.recv()).await {
            Ok(Ok(event)) if predicate(&event) => return event,
            Ok(Ok(_)) | Ok(Err(broadcast::error::RecvError::Lagged(_))) => continue,
            _ => panic!("expected event did not come"),
        }
    }
}

/// A SIP terminal (or DC) on its own UDP socket.
pub struct Terminal {
    pub socket: UdpSocket,
    pub user: String,
    pub password: String,
    /// Digest username when it differs from the user (to test refusals).
    pub auth_user: Option<String>,
    call_id: String,
    cseq: u32,
    nc: u32,
}

impl Terminal {
    pub async fn new(user: &str, password: &str) -> Terminal {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        Terminal {
            socket,
            user: user.to_owned(),
            password: password.to_owned(),
            auth_user: None,
            call_id: format!("{:x}@terminal", rand::random::<u64>()),
            cseq: 0,
            nc: 0,
        }
    }

    pub fn address(&self) -> SocketAddr {
        self.socket.local_addr().unwrap()
    }

    pub async fn send(&self, to: SocketAddr, text: &str) {
        self.socket.send_to(text.as_bytes(), to).await.unwrap();
    }

    /// Receives the next SIP message within `timeout`.
    pub async fn receive(&self, timeout: Duration) -> Option<Message> {
        let mut buffer = vec![0u8; 65_536];
        let (length, _) = tokio::time::timeout(timeout, self.socket.recv_from(&mut buffer))
            .await
            .ok()?
            .ok()?;
        Message::parse_datagram(Bytes::copy_from_slice(&buffer[..length])).ok()
    }

    /// Receives the next final response (skipping provisional ones).
    pub async fn final_response(&self, timeout: Duration) -> Message {
        loop {
            let message = self.receive(timeout).await.expect("a response");
            if message.status().is_some_and(|status| status >= 200) {
                return message;
            }
        }
    }

    fn register_text(&mut self, server: SocketAddr, expires: u32, authorization: Option<&str>) -> String {
        self.cseq += 1;
        let me = self.address();
        let branch = format!("z9hG4bK{:x}", rand::random::<u64>());
        let auth = authorization
            .map(|value| format!("Authorization: {value}\r\n"))
            .unwrap_or_default();
        format!(
            "REGISTER sip:{server} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch={branch};rport\r\nMax-Forwards: 70\r\n\
             From: <sip:{user}@{server}>;tag=t{cseq}\r\nTo: <sip:{user}@{server}>\r\nCall-ID: {call_id}\r\n\
             CSeq: {cseq} REGISTER\r\nContact: <sip:{user}@{me}>;expires={expires}\r\n{auth}\
             Ptt-Extension: pttregister\r\nContent-Length: 0\r\n\r\n",
            user = self.user,
            call_id = self.call_id,
            cseq = self.cseq,
        )
    }

    /// REGISTER (answering the digest challenge); returns the final response.
    pub async fn register(&mut self, server: SocketAddr, expires: u32) -> Message {
        let text = self.register_text(server, expires, None);
        self.send(server, &text).await;
        let response = self.final_response(Duration::from_secs(5)).await;
        if response.status() != Some(401) {
            return response;
        }
        let challenges: Vec<digest::Challenge> = response
            .headers_of(HeaderName::WwwAuthenticate)
            .filter_map(|header| header.value_str())
            .filter_map(|value| digest::parse_challenge(&value).ok())
            .collect();
        let challenge = digest::choose(&challenges).expect("a digest challenge").clone();
        self.nc += 1;
        let cnonce = format!("{:x}", rand::random::<u64>());
        let authorization = digest::respond(
            &challenge,
            &self.auth_user.clone().unwrap_or_else(|| self.user.clone()),
            &self.password.clone(),
            "REGISTER",
            &format!("sip:{server}"),
            self.nc,
            &cnonce,
        );
        let text = self.register_text(server, expires, Some(&authorization));
        self.send(server, &text).await;
        self.final_response(Duration::from_secs(5)).await
    }

    /// Answers a request with 200 OK (echoing Via, From, To, Call-ID, CSeq).
    pub async fn answer_ok(&self, request: &Message, to: SocketAddr) {
        let response = floorcast::sip::response_to(request, 200, "OK", Some("terminal"))
            .unwrap()
            .build()
            .unwrap();
        self.socket.send_to(response.as_bytes(), to).await.unwrap();
    }
}

/// The directory of a test's store files.
pub fn store_path(cluster: &Cluster, index: usize) -> PathBuf {
    cluster.directory.path().join(format!("{}.redb", NAMES[index]))
}
