//! The process shell: starts the media engine and the metrics endpoint, waits for shutdown,
//! then drains and stops. `run(config, shutdown)` in the mini-redis style: the caller decides
//! what "shutdown" is (signals in `main`, a channel in tests).

pub mod metrics;

use std::future::Future;
use std::sync::Arc;

use crate::config::Config;
use crate::io::Engine;

/// A running node's handles, for embedding (tests, the traffic generator).
#[derive(Debug, Clone)]
pub struct Node {
    /// The user-plane engine.
    pub engine: Arc<Engine>,
    /// Where the metrics endpoint listens, if enabled.
    pub metrics_address: Option<std::net::SocketAddr>,
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
    let engine = Arc::new(
        Engine::start(&config.media, &config.node.name)
            .map_err(|error| anyhow::anyhow!("cannot start the media engine: {error}"))?,
    );
    let metrics_address = match config.metrics.listen {
        Some(address) => {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .map_err(|error| anyhow::anyhow!("metrics.listen {address}: {error}"))?;
            let bound = listener.local_addr()?;
            let exporter = metrics::Exporter::new(config.node.name.clone(), engine.clone(), config.metrics.per_leg);
            tokio::spawn(metrics::serve(listener, exporter));
            Some(bound)
        }
        None => None,
    };
    Ok(Node {
        engine,
        metrics_address,
    })
}

/// Stops a node: the engine's workers are joined once the last handle is gone.
pub async fn stop(node: Node) {
    let engine = node.engine;
    // Joining worker threads blocks; do it off the async runtime.
    let _ = tokio::task::spawn_blocking(move || drop(engine)).await;
}
