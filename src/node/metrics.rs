//! The Prometheus text-format `/metrics` endpoint (HTTP/1.1 via hyper). Each scrape asks every
//! worker for a snapshot over its command queue: the hot path keeps plain counters and is never
//! locked or slowed by a scrape.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::io::Engine;
use crate::media::api::{BridgeKind, WorkerStats};
use crate::media::stats::{Counters, DropCause};

/// Renders the engine's statistics.
#[derive(Debug, Clone)]
pub struct Exporter {
    node: String,
    engine: Arc<Engine>,
    per_leg: bool,
}

impl Exporter {
    /// An exporter for `engine`, labelled with the node name.
    pub fn new(node: String, engine: Arc<Engine>, per_leg: bool) -> Self {
        Self { node, engine, per_leg }
    }

    /// The current metrics in Prometheus text format.
    pub fn render(&self) -> String {
        match self.engine.stats(self.per_leg) {
            Ok(stats) => render(&self.node, &stats, self.engine.ports_available()),
            Err(error) => format!("# error collecting statistics: {error}\n"),
        }
    }
}

fn counters_lines(out: &mut String, prefix: &str, labels: &str, counters: &Counters) {
    let join = if labels.is_empty() {
        String::new()
    } else {
        format!("{labels},")
    };
    let _ = writeln!(
        out,
        "{prefix}_rtp_packets_total{{{join}direction=\"in\"}} {}",
        counters.rtp_in_packets
    );
    let _ = writeln!(
        out,
        "{prefix}_rtp_packets_total{{{join}direction=\"out\"}} {}",
        counters.rtp_out_packets
    );
    let _ = writeln!(
        out,
        "{prefix}_rtp_bytes_total{{{join}direction=\"in\"}} {}",
        counters.rtp_in_bytes
    );
    let _ = writeln!(
        out,
        "{prefix}_rtp_bytes_total{{{join}direction=\"out\"}} {}",
        counters.rtp_out_bytes
    );
    let _ = writeln!(
        out,
        "{prefix}_rtcp_packets_total{{{join}direction=\"in\"}} {}",
        counters.rtcp_in_packets
    );
    let _ = writeln!(
        out,
        "{prefix}_rtcp_packets_total{{{join}direction=\"out\"}} {}",
        counters.rtcp_out_packets
    );
    for cause in DropCause::ALL {
        let _ = writeln!(
            out,
            "{prefix}_dropped_packets_total{{{join}cause=\"{}\"}} {}",
            cause.name(),
            counters.drops(cause)
        );
    }
}

/// Renders worker snapshots in Prometheus text format.
pub fn render(node: &str, workers: &[WorkerStats], ports_available: usize) -> String {
    let mut out = String::with_capacity(4096);
    let node_label = format!("node=\"{node}\"");
    let mut totals = Counters::default();
    for worker in workers {
        totals.add(&worker.totals);
    }
    out.push_str("# HELP floorcast_rtp_packets_total RTP packets received and sent.\n");
    out.push_str("# TYPE floorcast_rtp_packets_total counter\n");
    out.push_str("# TYPE floorcast_rtp_bytes_total counter\n");
    out.push_str("# TYPE floorcast_rtcp_packets_total counter\n");
    out.push_str("# HELP floorcast_dropped_packets_total Packets dropped, by cause.\n");
    out.push_str("# TYPE floorcast_dropped_packets_total counter\n");
    counters_lines(&mut out, "floorcast", &node_label, &totals);
    out.push_str("# HELP floorcast_worker_wakeups_total Media worker loop turns.\n# TYPE floorcast_worker_wakeups_total counter\n");
    for worker in workers {
        let _ = writeln!(
            out,
            "floorcast_worker_wakeups_total{{{node_label},worker=\"{}\"}} {}",
            worker.worker, worker.wakeups
        );
    }
    out.push_str("# TYPE floorcast_events_lost_total counter\n");
    let lost: u64 = workers.iter().map(|worker| worker.events_lost).sum();
    let _ = writeln!(out, "floorcast_events_lost_total{{{node_label}}} {lost}");
    let bridges: usize = workers.iter().map(|worker| worker.bridges.len()).sum();
    let legs: usize = workers
        .iter()
        .flat_map(|worker| worker.bridges.iter())
        .map(|bridge| bridge.legs)
        .sum();
    out.push_str(
        "# TYPE floorcast_bridges gauge\n# TYPE floorcast_legs gauge\n# TYPE floorcast_ports_available gauge\n",
    );
    let _ = writeln!(out, "floorcast_bridges{{{node_label}}} {bridges}");
    let _ = writeln!(out, "floorcast_legs{{{node_label}}} {legs}");
    let _ = writeln!(out, "floorcast_ports_available{{{node_label}}} {ports_available}");
    out.push_str("# TYPE floorcast_bridge_switches_total counter\n");
    for bridge in workers.iter().flat_map(|worker| worker.bridges.iter()) {
        let kind = match bridge.kind {
            BridgeKind::Relay => "relay",
            BridgeKind::Group(_) => "group",
        };
        let labels = format!("{node_label},bridge=\"{}\",kind=\"{kind}\"", bridge.id.0);
        let _ = writeln!(out, "floorcast_bridge_switches_total{{{labels}}} {}", bridge.switches);
        counters_lines(&mut out, "floorcast_bridge", &labels, &bridge.counters);
    }
    for leg in workers.iter().flat_map(|worker| worker.legs.iter()) {
        let labels = format!("{node_label},bridge=\"{}\",leg=\"{}\"", leg.bridge.0, leg.id.0);
        counters_lines(&mut out, "floorcast_leg", &labels, &leg.counters);
        let quality = &leg.quality;
        let _ = writeln!(
            out,
            "floorcast_leg_remote_fraction_lost{{{labels}}} {}",
            quality.remote_fraction_lost
        );
        let _ = writeln!(
            out,
            "floorcast_leg_remote_jitter_ms{{{labels}}} {}",
            quality.remote_jitter_ms
        );
        let _ = writeln!(
            out,
            "floorcast_leg_local_jitter_ms{{{labels}}} {}",
            quality.local_jitter_ms
        );
        let _ = writeln!(out, "floorcast_leg_local_lost{{{labels}}} {}", quality.local_lost);
        if let Some(rtt) = quality.round_trip_ms {
            let _ = writeln!(out, "floorcast_leg_round_trip_ms{{{labels}}} {rtt}");
        }
    }
    out
}

/// Serves `/metrics` on `listener` until the runtime stops.
pub async fn serve(listener: TcpListener, exporter: Exporter) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "metrics accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let exporter = exporter.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let exporter = exporter.clone();
                async move { Ok::<_, Infallible>(respond(&exporter, &request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn respond(exporter: &Exporter, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, body) = if request.uri().path() != "/metrics" {
        (StatusCode::NOT_FOUND, "not found; try /metrics\n".to_owned())
    } else if request.method() != hyper::Method::GET && request.method() != hyper::Method::HEAD {
        (StatusCode::METHOD_NOT_ALLOWED, "GET only\n".to_owned())
    } else {
        let exporter = exporter.clone();
        let body = tokio::task::spawn_blocking(move || exporter.render())
            .await
            .unwrap_or_default();
        (StatusCode::OK, body)
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}
