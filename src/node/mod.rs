//! The process shell: starts the media engine and the metrics endpoint, waits for shutdown,
//! then drains and stops. `run(config, shutdown)` in the mini-redis style: the caller decides
//! what "shutdown" is (signals in `main`, a channel in tests).

pub mod datagrams;
pub mod journal;
pub mod metrics;
pub mod realtime;
pub mod sip;
pub mod store;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use rand::RngCore;

use crate::config::{Config, Source};
use crate::control::provisioning::{Network, Subscribers, DEMO_NETWORK, DEMO_SUBSCRIBERS};
use crate::control::tcf::{Tcf, TcfConfig};
use crate::io::Engine;
use crate::node::sip::Realtime;
use crate::node::store::{Store, StoreOptions, Table};

/// Secrets that must survive restarts (the digest nonce key).
const SECRETS: Table<String> = Table::new("secrets");

/// A running node's handles, for embedding (tests, the traffic generator).
#[derive(Debug)]
pub struct Node {
    /// The user-plane engine. Its wake-ups are deferred to the SIP driver's flushes
    /// ([`Engine::defer_wakes`]): whoever else changes legs or bridges through it must call
    /// [`Engine::flush_wakes`] afterwards.
    pub engine: Arc<Engine>,
    /// Where the metrics endpoint listens, if enabled.
    pub metrics_address: Option<std::net::SocketAddr>,
    /// The SIP core.
    pub sip: sip::SipHandle,
    shutdown: tokio::sync::broadcast::Sender<()>,
    sip_thread: std::thread::JoinHandle<()>,
    store: Store,
}

fn read_source(source: &Source, builtin: &str) -> anyhow::Result<(String, String)> {
    match source {
        Source::BuiltinDemo => Ok(("builtin:demo".to_owned(), builtin.to_owned())),
        Source::File(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            Ok((path.display().to_string(), text))
        }
    }
}

/// Loads the provisioned network and subscribers the config names.
pub fn load_provisioning(config: &Config) -> anyhow::Result<(Network, Subscribers)> {
    let (name, text) = read_source(&config.provisioning.network, DEMO_NETWORK)?;
    let network = Network::from_toml(&name, &text).map_err(|error| anyhow::anyhow!("{error}"))?;
    let (name, text) = read_source(&config.provisioning.subscribers, DEMO_SUBSCRIBERS)?;
    let subscribers = Subscribers::from_toml(&name, &text).map_err(|error| anyhow::anyhow!("{error}"))?;
    Ok((network, subscribers))
}

fn nonce_key(store: &Store) -> anyhow::Result<[u8; 32]> {
    let mut key = [0u8; 32];
    if let Some(hex) = store.get(&SECRETS, "nonce_key")? {
        let bytes: Vec<u8> = (0..hex.len() / 2)
            .filter_map(|index| u8::from_str_radix(hex.get(index * 2..index * 2 + 2)?, 16).ok())
            .collect();
        if bytes.len() == 32 {
            key.copy_from_slice(&bytes);
            return Ok(key);
        }
        tracing::warn!("stored nonce key is malformed; generating a new one");
    }
    rand::rng().fill_bytes(&mut key);
    let hex: String = key.iter().map(|byte| format!("{byte:02x}")).collect();
    store.put(&SECRETS, "nonce_key", &hex)?;
    store.flush()?;
    Ok(key)
}

/// Runs a node until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let node = start(&config).await?;
    tracing::info!(
        node = %config.node.name,
        workers = node.engine.worker_count(),
        io_uring = node.engine.io_uring_active(),
        ports = format!("{}-{}", config.media.port_min, config.media.port_max),
        metrics = ?node.metrics_address,
        sip = %node.sip.address,
        "floorcast node running"
    );
    shutdown.await;
    tracing::info!("shutting down");
    stop(node).await;
    Ok(())
}

/// Starts a node's services and returns their handles.
pub async fn start(config: &Config) -> anyhow::Result<Node> {
    match crate::io::raise_fd_limit() {
        Ok(limit) if limit < 4096 => tracing::warn!(limit, "low open-file limit: few legs possible"),
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "cannot raise the open-file limit"),
    }
    // Every media port can hold a socket (two with RTCP on its own port: the odd ports are in
    // the range too), plus the SIP connections and some slack.
    let descriptors = u64::from(config.media.port_max.saturating_sub(config.media.port_min))
        + 1
        + config.sip.max_tcp_connections as u64
        + 256;
    if let Err(error) = crate::io::reserve_descriptors(descriptors) {
        tracing::warn!(%error, "cannot size the descriptor table up front");
    }
    let engine = Arc::new(
        Engine::start(&config.media, &config.node.name)
            .map_err(|error| anyhow::anyhow!("cannot start the media engine: {error}"))?,
    );
    let exporter = metrics::Exporter::new(config.node.name.clone(), engine.clone(), config.metrics.per_leg);
    let metrics_address = match config.metrics.listen {
        Some(address) => {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .map_err(|error| anyhow::anyhow!("metrics.listen {address}: {error}"))?;
            let bound = listener.local_addr()?;
            tokio::spawn(metrics::serve(listener, exporter.clone()));
            Some(bound)
        }
        None => None,
    };
    let (network, subscribers) = load_provisioning(config)?;
    let store = Store::open(
        &config.store.path,
        StoreOptions {
            commit_interval: config.store.commit_interval,
            ..StoreOptions::default()
        },
    )
    .with_context(|| format!("store.path {}", config.store.path.display()))?;
    let sip_config = &config.sip;
    let mut tcf_config = TcfConfig::new(&config.node.name, sip_config.clone(), nonce_key(&store)?)
        .map_err(|error| anyhow::anyhow!("sip timers: {error}"))?;
    tcf_config.calls = config.calls.clone();
    tcf_config.groups = config.groups.clone();
    let now = crate::control::tcf::Now {
        instant: std::time::Instant::now(),
        wall: std::time::SystemTime::now(),
    };
    let mut tcf = Tcf::new(
        tcf_config,
        Arc::new(network),
        Arc::new(subscribers),
        now,
        rand::random(),
    )?;
    if tcf.address() != sip_config.listen {
        anyhow::bail!(
            "sip.listen {} differs from the address the network gives node {} ({})",
            sip_config.listen,
            config.node.name,
            tcf.address()
        );
    }
    // The SIP driver flushes after sending each batch's datagrams (`Engine::defer_wakes`).
    engine.defer_wakes(true);
    tcf.set_media(Box::new(engine.clone()));
    sip::restore(&mut tcf, &store)?;
    let socket = crate::io::udp::bind(sip_config.listen, sip_config.socket_rcvbuf, 0)
        .with_context(|| format!("sip.listen {}", sip_config.listen))?;
    if sip_config.socket_rcvbuf > 0 {
        let effective = socket2::SockRef::from(&socket).recv_buffer_size().unwrap_or(0);
        if effective < sip_config.socket_rcvbuf {
            tracing::warn!(
                asked = sip_config.socket_rcvbuf,
                effective,
                "SIP receive buffer capped by the kernel (raise net.core.rmem_max)"
            );
        }
    }
    let listener = std::net::TcpListener::bind(sip_config.listen)
        .with_context(|| format!("sip.listen {} (TCP)", sip_config.listen))?;
    listener.set_nonblocking(true)?;
    let limits = sip::TransportLimits {
        max_message_size: sip_config.max_message_size,
        max_connections: sip_config.max_tcp_connections,
        idle_timeout: std::time::Duration::from_secs(300),
    };
    let (shutdown, shutdown_receiver) = tokio::sync::broadcast::channel(1);
    let (sip, sip_thread) = sip::spawn_dedicated(
        socket,
        listener,
        limits,
        Realtime {
            priority: sip_config.realtime_priority,
            max_busy: sip_config.realtime_max_busy,
        },
        tcf,
        store.clone(),
        shutdown_receiver,
    )?;
    exporter.attach_sip(sip.clone());
    Ok(Node {
        engine,
        metrics_address,
        sip,
        shutdown,
        sip_thread,
        store,
    })
}

/// Stops a node: SIP first (its last state writes are flushed), then the store and the media
/// workers.
pub async fn stop(node: Node) {
    let _ = node.shutdown.send(());
    let sip_thread = node.sip_thread;
    let store = node.store;
    let engine = node.engine;
    // Joining threads and closing the store block; do it off the async runtime.
    let _ = tokio::task::spawn_blocking(move || {
        let _ = sip_thread.join();
        if let Err(error) = store.close() {
            tracing::error!(%error, "closing the store failed");
        }
        drop(engine)
    })
    .await;
}
