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

use crate::control::tcf::SipStats;
use crate::io::Engine;
use crate::media::api::{BridgeKind, WorkerStats};
use crate::media::stats::{Counters, DropCause};
use crate::node::sip::SipHandle;

/// Renders the engine's and the SIP core's statistics.
#[derive(Debug, Clone)]
pub struct Exporter {
    node: String,
    engine: Arc<Engine>,
    sip: Arc<std::sync::OnceLock<SipHandle>>,
    per_leg: bool,
}

impl Exporter {
    /// An exporter for `engine`, labelled with the node name. The SIP core is attached with
    /// [`Exporter::attach_sip`] once it runs.
    pub fn new(node: String, engine: Arc<Engine>, per_leg: bool) -> Self {
        Self {
            node,
            engine,
            sip: Arc::new(std::sync::OnceLock::new()),
            per_leg,
        }
    }

    /// Adds the SIP core's figures to every scrape.
    pub fn attach_sip(&self, sip: SipHandle) {
        let _ = self.sip.set(sip);
    }

    /// The current metrics in Prometheus text format.
    pub async fn render(&self) -> String {
        let engine = self.engine.clone();
        let per_leg = self.per_leg;
        // Collecting from the workers waits on their replies: off the async threads.
        let media =
            tokio::task::spawn_blocking(move || engine.stats(per_leg).map(|stats| (stats, engine.ports_available())))
                .await;
        let mut out = match media {
            Ok(Ok((stats, ports))) => render(&self.node, &stats, ports),
            Ok(Err(error)) => format!("# error collecting media statistics: {error}\n"),
            Err(error) => format!("# error collecting media statistics: {error}\n"),
        };
        if let Some(sip) = self.sip.get() {
            match sip.stats().await {
                Some(stats) => render_sip(&mut out, &self.node, &stats),
                None => out.push_str("# error collecting SIP statistics: core stopped\n"),
            }
            if let Some(scheduling) = sip.scheduling().await {
                render_scheduling(&mut out, &self.node, scheduling);
            }
        }
        out
    }
}

/// Appends how the SIP thread is scheduled (`sip.realtime_priority`).
pub fn render_scheduling(out: &mut String, node: &str, scheduling: crate::node::sip::SipScheduling) {
    out.push_str("# HELP floorcast_sip_realtime 1 while the SIP thread runs under SCHED_FIFO.\n");
    out.push_str("# TYPE floorcast_sip_realtime gauge\n");
    let _ = writeln!(
        out,
        "floorcast_sip_realtime{{node=\"{node}\"}} {}",
        u8::from(scheduling.realtime)
    );
    out.push_str("# HELP floorcast_sip_realtime_changes_total Moves of the SIP thread between real-time and ordinary scheduling.\n");
    out.push_str("# TYPE floorcast_sip_realtime_changes_total counter\n");
    let _ = writeln!(
        out,
        "floorcast_sip_realtime_changes_total{{node=\"{node}\"}} {}",
        scheduling.changes
    );
}

/// Appends the SIP core's metrics.
pub fn render_sip(out: &mut String, node: &str, stats: &SipStats) {
    let labels = format!("node=\"{node}\"");
    let counters = &stats.counters;
    out.push_str("# HELP floorcast_sip_requests_total SIP requests received (new transactions).\n");
    out.push_str("# TYPE floorcast_sip_requests_total counter\n");
    let _ = writeln!(out, "floorcast_sip_requests_total{{{labels}}} {}", counters.requests);
    out.push_str("# TYPE floorcast_sip_responses_total counter\n");
    let _ = writeln!(out, "floorcast_sip_responses_total{{{labels}}} {}", counters.responses);
    out.push_str("# HELP floorcast_sip_rejected_total Malformed requests answered with an error.\n");
    out.push_str("# TYPE floorcast_sip_rejected_total counter\n");
    let _ = writeln!(out, "floorcast_sip_rejected_total{{{labels}}} {}", counters.rejected);
    out.push_str("# HELP floorcast_sip_dropped_total Datagrams dropped (not SIP, not answerable).\n");
    out.push_str("# TYPE floorcast_sip_dropped_total counter\n");
    let _ = writeln!(out, "floorcast_sip_dropped_total{{{labels}}} {}", counters.dropped);
    out.push_str("# TYPE floorcast_sip_bindings gauge\n# TYPE floorcast_sip_registrations gauge\n");
    out.push_str("# TYPE floorcast_sip_locations gauge\n# TYPE floorcast_sip_transactions gauge\n");
    let _ = writeln!(out, "floorcast_sip_bindings{{{labels}}} {}", stats.bindings);
    let _ = writeln!(out, "floorcast_sip_registrations{{{labels}}} {}", stats.registrations);
    let _ = writeln!(out, "floorcast_sip_locations{{{labels}}} {}", stats.locations);
    let _ = writeln!(out, "floorcast_sip_transactions{{{labels}}} {}", stats.transactions);
    out.push_str("# HELP floorcast_sip_calls Calls alive on this node (one per B2BUA hop).\n");
    out.push_str("# TYPE floorcast_sip_calls gauge\n");
    let _ = writeln!(out, "floorcast_sip_calls{{{labels}}} {}", stats.calls);
    out.push_str("# HELP floorcast_sip_group_calls Group calls alive on this node (as home or member TCF).\n");
    out.push_str("# TYPE floorcast_sip_group_calls gauge\n");
    let _ = writeln!(out, "floorcast_sip_group_calls{{{labels}}} {}", stats.group_calls);
    out.push_str("# TYPE floorcast_sip_calls_answered_total counter\n# TYPE floorcast_sip_calls_ended_total counter\n");
    let _ = writeln!(
        out,
        "floorcast_sip_calls_answered_total{{{labels}}} {}",
        stats.calls_answered
    );
    let _ = writeln!(out, "floorcast_sip_calls_ended_total{{{labels}}} {}", stats.calls_ended);
    out.push_str("# HELP floorcast_peer_up Heartbeat state of each peer TCF (1 up, 0 down, -1 unknown).\n");
    out.push_str("# TYPE floorcast_peer_up gauge\n");
    for (peer, up) in &stats.peers {
        let value = match up {
            Some(true) => 1,
            Some(false) => 0,
            None => -1,
        };
        let _ = writeln!(out, "floorcast_peer_up{{{labels},peer=\"{peer}\"}} {value}");
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
        (StatusCode::OK, exporter.render().await)
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}
