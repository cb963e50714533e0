//! Configuration: raw serde structs, validated once into typed values ("parse, don't validate").
//!
//! The file format is TOML; every option is documented in `docs/config.md`, and
//! `config/floorcast.toml` is a complete commented example that is also the embedded default.
//! Unknown keys are errors, and every validation error names the offending field.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde::Deserialize;

/// The embedded default configuration: what `floorcast` runs with when no file is given.
pub const DEFAULT_CONFIG: &str = include_str!("../config/floorcast.toml");

/// A configuration error, naming the field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path of the offending field, e.g. `media.port_min` (empty for syntax errors).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

fn invalid(field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.to_owned(),
        message: message.into(),
    }
}

/// The validated configuration of one node.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Identity of this node.
    pub node: NodeConfig,
    /// Logging.
    pub log: LogConfig,
    /// The user plane (RTP relay and fan-out engine).
    pub media: MediaConfig,
    /// The Prometheus metrics endpoint.
    pub metrics: MetricsConfig,
}

/// Identity of this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// Node name: used in logs, metrics and as the RTCP CNAME.
    pub name: String,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Logging settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// A `tracing` filter directive (`info`, `floorcast=debug,warn`, ...). `RUST_LOG` overrides it.
    pub level: String,
    /// Output format.
    pub format: LogFormat,
}

/// How the media workers send batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IoBackend {
    /// `recvmmsg`/`sendmmsg` (the default: fastest in our benchmarks).
    Mmsg,
    /// `recvmmsg` for receiving, io_uring for sending a whole fan-out in one submission.
    /// Falls back to `mmsg` with a warning where io_uring is unavailable.
    IoUring,
}

/// How a leg checks the source address of what it receives (F-UP-06).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceCheck {
    /// Accept only the negotiated remote address.
    Strict,
    /// Accept the first source seen and only that one afterwards (terminals behind NAT).
    Latch,
}

/// User-plane settings.
#[derive(Debug, Clone, PartialEq)]
pub struct MediaConfig {
    /// Local address the relay ports bind to.
    pub address: IpAddr,
    /// First port of the relay range (even).
    pub port_min: u16,
    /// Last port of the relay range.
    pub port_max: u16,
    /// How long a freed port stays unused before it is handed out again.
    pub port_quarantine: Duration,
    /// Number of media worker threads (each owns its legs outright).
    pub workers: usize,
    /// Batched I/O backend.
    pub backend: IoBackend,
    /// Maximum packets taken from one socket per `recvmmsg` (and per loop turn).
    pub batch_size: usize,
    /// Kernel receive buffer per leg socket, bytes (0: kernel default).
    pub socket_rcvbuf: usize,
    /// Kernel send buffer per leg socket, bytes (0: kernel default).
    pub socket_sndbuf: usize,
    /// After a busy wake-up, wait this long before polling again so more packets are taken per
    /// wake-up (0: event-driven, lowest latency).
    pub rx_coalesce: Duration,
    /// Mean interval between RTCP reports the engine sends on each leg.
    pub rtcp_interval: Duration,
    /// Talker media inactivity after which the engine reports the talker silent.
    pub talker_inactivity: Duration,
    /// Source checking of legs that do not say otherwise.
    pub default_source_check: SourceCheck,
}

/// Metrics endpoint settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Address of the HTTP `/metrics` endpoint, or `None` when disabled.
    pub listen: Option<SocketAddr>,
    /// Export one series per leg (can be large on busy nodes).
    pub per_leg: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    node: RawNode,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    media: RawMedia,
    #[serde(default)]
    metrics: RawMetrics,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawNode {
    name: String,
}

impl Default for RawNode {
    fn default() -> Self {
        Self {
            name: "tcf-1".to_owned(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLog {
    level: String,
    format: LogFormat,
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawMedia {
    address: String,
    port_min: u32,
    port_max: u32,
    port_quarantine_ms: u64,
    workers: usize,
    backend: IoBackend,
    batch_size: usize,
    socket_rcvbuf: usize,
    socket_sndbuf: usize,
    rx_coalesce_us: u64,
    rtcp_interval_ms: u64,
    talker_inactivity_ms: u64,
    default_source_check: SourceCheck,
}

impl Default for RawMedia {
    fn default() -> Self {
        Self {
            address: "127.0.0.1".to_owned(),
            port_min: 40000,
            port_max: 49999,
            port_quarantine_ms: 5000,
            workers: 0,
            backend: IoBackend::Mmsg,
            batch_size: 32,
            socket_rcvbuf: 262_144,
            socket_sndbuf: 262_144,
            rx_coalesce_us: 0,
            rtcp_interval_ms: 5000,
            talker_inactivity_ms: 4000,
            default_source_check: SourceCheck::Strict,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawMetrics {
    listen: String,
    per_leg: bool,
}

impl Default for RawMetrics {
    fn default() -> Self {
        Self {
            listen: "off".to_owned(),
            per_leg: false,
        }
    }
}

impl Config {
    /// Parses and validates a configuration from TOML text.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|error| {
            let message = error.message().to_owned();
            let field = error
                .span()
                .map(|span| key_path_at(text, span.start))
                .unwrap_or_default();
            ConfigError { field, message }
        })?;
        raw.validate()
    }

    /// The embedded default configuration.
    pub fn embedded_default() -> Result<Config, ConfigError> {
        Config::from_toml(DEFAULT_CONFIG)
    }
}

/// Best-effort dotted key of the TOML position `offset` (`[table]` header + key on that line),
/// so that serde's messages ("unknown field `x`") name the full field path.
fn key_path_at(text: &str, offset: usize) -> String {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or("");
    let mut table = String::new();
    for line in before.lines() {
        let line = line.trim();
        if line.starts_with('[') && !line.starts_with("[[") {
            table = line.trim_matches(|c| c == '[' || c == ']').trim().to_owned();
        }
    }
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let line = text
        .get(line_start..)
        .and_then(|rest| rest.lines().next())
        .unwrap_or("");
    let key = line.split('=').next().unwrap_or("").trim();
    if key.is_empty() || key.starts_with('[') {
        return table;
    }
    if table.is_empty() {
        key.to_owned()
    } else {
        format!("{table}.{key}")
    }
}

impl RawConfig {
    fn validate(self) -> Result<Config, ConfigError> {
        let name = self.node.name.trim().to_owned();
        if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_graphic()) {
            return Err(invalid(
                "node.name",
                "must be 1 to 64 printable ASCII characters without spaces",
            ));
        }
        if self.log.level.trim().is_empty() {
            return Err(invalid("log.level", "must not be empty"));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|error| invalid("log.level", format!("not a valid filter: {error}")))?;

        let media = self.media.validate()?;
        let metrics = self.metrics.validate()?;
        Ok(Config {
            node: NodeConfig { name },
            log: LogConfig {
                level: self.log.level,
                format: self.log.format,
            },
            media,
            metrics,
        })
    }
}

impl RawMedia {
    fn validate(self) -> Result<MediaConfig, ConfigError> {
        let address: IpAddr = self
            .address
            .parse()
            .map_err(|_| invalid("media.address", format!("`{}` is not an IP address", self.address)))?;
        if address.is_unspecified() && address != IpAddr::V4(Ipv4Addr::UNSPECIFIED) {
            return Err(invalid("media.address", "use 0.0.0.0 or a concrete address"));
        }
        let port_min = u16::try_from(self.port_min).map_err(|_| invalid("media.port_min", "must be at most 65535"))?;
        let port_max = u16::try_from(self.port_max).map_err(|_| invalid("media.port_max", "must be at most 65535"))?;
        if port_min < 1024 {
            return Err(invalid("media.port_min", "must be at least 1024"));
        }
        if port_min % 2 != 0 {
            return Err(invalid(
                "media.port_min",
                "must be even (RTP on even ports, RTCP on the next)",
            ));
        }
        if port_max <= port_min {
            return Err(invalid("media.port_max", "must be greater than media.port_min"));
        }
        if self.batch_size == 0 || self.batch_size > 1024 {
            return Err(invalid("media.batch_size", "must be between 1 and 1024"));
        }
        if self.workers > 256 {
            return Err(invalid("media.workers", "must be at most 256 (0 means one per core)"));
        }
        if self.rtcp_interval_ms < 500 {
            return Err(invalid("media.rtcp_interval_ms", "must be at least 500"));
        }
        if self.talker_inactivity_ms == 0 {
            return Err(invalid("media.talker_inactivity_ms", "must be greater than 0"));
        }
        if self.rx_coalesce_us > 20_000 {
            return Err(invalid(
                "media.rx_coalesce_us",
                "must be at most 20000 (one packet time)",
            ));
        }
        let workers = if self.workers == 0 {
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
        } else {
            self.workers
        };
        Ok(MediaConfig {
            address,
            port_min,
            port_max,
            port_quarantine: Duration::from_millis(self.port_quarantine_ms),
            workers,
            backend: self.backend,
            batch_size: self.batch_size,
            socket_rcvbuf: self.socket_rcvbuf,
            socket_sndbuf: self.socket_sndbuf,
            rx_coalesce: Duration::from_micros(self.rx_coalesce_us),
            rtcp_interval: Duration::from_millis(self.rtcp_interval_ms),
            talker_inactivity: Duration::from_millis(self.talker_inactivity_ms),
            default_source_check: self.default_source_check,
        })
    }
}

impl RawMetrics {
    fn validate(self) -> Result<MetricsConfig, ConfigError> {
        let listen = match self.listen.trim() {
            "" | "off" => None,
            text => Some(text.parse::<SocketAddr>().map_err(|_| {
                invalid(
                    "metrics.listen",
                    format!("`{text}` is not `off` or an address like 127.0.0.1:9464"),
                )
            })?),
        };
        Ok(MetricsConfig {
            listen,
            per_leg: self.per_leg,
        })
    }
}

impl Default for MediaConfig {
    fn default() -> Self {
        // The raw defaults are valid by construction; a failure here is a bug in this file.
        #[allow(clippy::expect_used)]
        RawMedia::default().validate().expect("default media config is valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid() {
        let config = Config::embedded_default().unwrap();
        assert_eq!(config.media.port_min % 2, 0);
        assert!(config.media.workers >= 1);
    }

    #[test]
    fn empty_file_gives_defaults() {
        let config = Config::from_toml("").unwrap();
        assert_eq!(config.node.name, "tcf-1");
        assert_eq!(config.metrics.listen, None);
        assert_eq!(config.media.backend, IoBackend::Mmsg);
    }

    #[test]
    fn unknown_key_names_the_field() {
        let error = Config::from_toml("[media]\nport_mni = 3\n").unwrap_err();
        assert_eq!(error.field, "media.port_mni");
        assert!(error.message.contains("unknown field"), "{error}");
        let error = Config::from_toml("[medai]\n").unwrap_err();
        assert!(error.message.contains("unknown field"), "{error}");
    }

    #[test]
    fn wrong_type_names_the_field() {
        let error = Config::from_toml("[media]\nbatch_size = \"big\"\n").unwrap_err();
        assert_eq!(error.field, "media.batch_size");
    }

    #[test]
    fn invalid_values_name_the_field() {
        for (text, field) in [
            ("[media]\nport_min = 40001\n", "media.port_min"),
            ("[media]\nport_min = 500\n", "media.port_min"),
            ("[media]\nport_min = 40000\nport_max = 39000\n", "media.port_max"),
            ("[media]\nport_max = 70000\n", "media.port_max"),
            ("[media]\naddress = \"nowhere\"\n", "media.address"),
            ("[media]\nbatch_size = 0\n", "media.batch_size"),
            ("[media]\nbackend = \"carrier_pigeon\"\n", "media.backend"),
            ("[metrics]\nlisten = \"localhost\"\n", "metrics.listen"),
            ("[node]\nname = \"\"\n", "node.name"),
            ("[log]\nlevel = \"floorcast=loud\"\n", "log.level"),
        ] {
            let error = Config::from_toml(text).unwrap_err();
            assert_eq!(error.field, field, "{text} gave {error}");
        }
    }
}
