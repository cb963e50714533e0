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
    /// The SIP control plane.
    pub sip: SipConfig,
    /// Where provisioned data comes from.
    pub provisioning: ProvisioningConfig,
    /// Durable state.
    pub store: StoreConfig,
    /// Call control.
    pub calls: CallsConfig,
    /// Group calls and floor control.
    pub groups: GroupsConfig,
}

/// Who may end a whole group call by hanging up (F-GRP-05).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseBy {
    /// The member who set the call up, and the group's dispatchers.
    Initiator,
    /// The group's dispatchers only.
    Dispatchers,
    /// Any member.
    Anyone,
}

/// Group-call settings (`[groups]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupsConfig {
    /// The floor is taken away after this long (F-FLR-06).
    pub max_talk_time: Duration,
    /// The floor is taken away after this long without RTP from the holder.
    pub inactivity: Duration,
    /// An idle floor with nobody waiting this long ends the group call.
    pub hang_time: Duration,
    /// Most floor requests waiting (0: none wait, a busy floor rejects).
    pub queue: usize,
    /// A dispatcher outranks every terminal for the floor.
    pub dc_outranks: bool,
    /// Who may end the whole call by hanging up.
    pub release_by: ReleaseBy,
}

/// Where a call's media is anchored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Anchoring {
    /// The TCFs serving the two terminals relay the media; home TCFs in the middle pass the
    /// SDP through unchanged.
    Edge,
    /// Every TCF on the path relays the media.
    Always,
}

/// Call-control settings (`[calls]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallsConfig {
    /// Which hops anchor media.
    pub anchoring: Anchoring,
    /// The caller's H-TCF cancels a call not answered within this time (F-SC-05).
    pub ring_timeout: Duration,
    /// The callee's H-TCF forwards a call not answered within this time to the user's
    /// `forward_no_answer` number (F-SC-09).
    pub no_answer_timeout: Duration,
    /// Most calls (B2BUA hops) alive on this node; more are refused with 503.
    pub max_calls: usize,
}

/// SIP control-plane settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SipConfig {
    /// Address SIP listens on, UDP and TCP.
    pub listen: SocketAddr,
    /// Digest realm of this node.
    pub realm: String,
    /// RFC 3261 timer T1 (round-trip estimate).
    pub t1: Duration,
    /// RFC 3261 timer T2 (maximum retransmit interval of non-INVITE requests and INVITE responses).
    pub t2: Duration,
    /// RFC 3261 timer T4 (maximum time a message stays in the network).
    pub t4: Duration,
    /// Largest SIP message accepted (bigger: 513 or connection closed).
    pub max_message_size: usize,
    /// Most simultaneous TCP connections.
    pub max_tcp_connections: usize,
    /// Shortest registration accepted (shorter: 423 Interval Too Brief).
    pub min_expires: u32,
    /// Longest registration granted (longer requests are shortened).
    pub max_expires: u32,
    /// Registration period when the REGISTER names none.
    pub default_expires: u32,
    /// Interval of OPTIONS heartbeats to each peer TCF.
    pub heartbeat_interval: Duration,
    /// Consecutive failed heartbeats after which a peer is down.
    pub heartbeat_failures: u32,
    /// How long a digest nonce stays valid.
    pub nonce_lifetime: Duration,
    /// Digest algorithms offered, preferred first.
    pub digest_algorithms: Vec<crate::sip::digest::Algorithm>,
    /// Most live SIP transactions.
    pub max_transactions: usize,
    /// Kernel receive buffer of the SIP UDP socket, bytes (0: kernel default).
    pub socket_rcvbuf: usize,
    /// Real-time priority of the SIP thread (`SCHED_FIFO`, 1–99); 0: ordinary scheduling.
    pub realtime_priority: u8,
    /// Share of a CPU the real-time SIP thread may use before it goes back to ordinary
    /// scheduling (until its load falls below a third of it); 1: always real-time.
    pub realtime_max_busy: f64,
}

/// Where provisioned data is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The built-in one-node demo data.
    BuiltinDemo,
    /// A file (relative paths are relative to the config file's directory).
    File(std::path::PathBuf),
}

/// Provisioning settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvisioningConfig {
    /// The TCF network.
    pub network: Source,
    /// Users, dispatchers and groups.
    pub subscribers: Source,
}

/// Durable state settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// The store file (relative paths: relative to the working directory).
    pub path: std::path::PathBuf,
    /// Group commit interval: writes within it share one disk sync (and are lost together if
    /// the machine crashes before it ends).
    pub commit_interval: Duration,
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
    /// Keep the sockets of released ports open (bound and watched) and reuse them for later
    /// legs, instead of closing them and binding new ones per call.
    pub leg_pool: bool,
    /// Port pairs bound into the pool at start (clamped to the range); more are bound lazily.
    pub leg_pool_prebind: usize,
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
    /// Pin each media worker to one CPU (worker `i` to the `i`-th CPU the process may use), so a
    /// worker is not moved or preempted by other threads of the node.
    pub pin_workers: bool,
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
    #[serde(default)]
    sip: RawSip,
    #[serde(default)]
    provisioning: RawProvisioning,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    calls: RawCalls,
    #[serde(default)]
    groups: RawGroups,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawGroups {
    max_talk_time_s: u64,
    inactivity_ms: u64,
    hang_time_s: u64,
    queue: usize,
    dc_outranks: bool,
    release_by: ReleaseBy,
}

impl Default for RawGroups {
    fn default() -> Self {
        Self {
            max_talk_time_s: 30,
            inactivity_ms: 4000,
            hang_time_s: 10,
            queue: 8,
            dc_outranks: true,
            release_by: ReleaseBy::Initiator,
        }
    }
}

impl RawGroups {
    fn validate(self) -> Result<GroupsConfig, ConfigError> {
        if !(1..=3600).contains(&self.max_talk_time_s) {
            return Err(invalid("groups.max_talk_time_s", "must be 1 to 3600"));
        }
        if !(100..=600_000).contains(&self.inactivity_ms) {
            return Err(invalid("groups.inactivity_ms", "must be 100 to 600000"));
        }
        if !(1..=3600).contains(&self.hang_time_s) {
            return Err(invalid("groups.hang_time_s", "must be 1 to 3600"));
        }
        if self.queue > 1000 {
            return Err(invalid("groups.queue", "must be at most 1000"));
        }
        Ok(GroupsConfig {
            max_talk_time: Duration::from_secs(self.max_talk_time_s),
            inactivity: Duration::from_millis(self.inactivity_ms),
            hang_time: Duration::from_secs(self.hang_time_s),
            queue: self.queue,
            dc_outranks: self.dc_outranks,
            release_by: self.release_by,
        })
    }
}

impl Default for GroupsConfig {
    fn default() -> Self {
        // The raw defaults are valid by construction; a failure here is a bug in this file.
        #[allow(clippy::expect_used)]
        RawGroups::default().validate().expect("default groups config is valid")
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawCalls {
    anchoring: Anchoring,
    ring_timeout_s: u64,
    no_answer_timeout_s: u64,
    max_calls: usize,
}

impl Default for RawCalls {
    fn default() -> Self {
        Self {
            anchoring: Anchoring::Edge,
            ring_timeout_s: 60,
            no_answer_timeout_s: 20,
            max_calls: 100_000,
        }
    }
}

impl RawCalls {
    fn validate(self) -> Result<CallsConfig, ConfigError> {
        if !(1..=600).contains(&self.ring_timeout_s) {
            return Err(invalid("calls.ring_timeout_s", "must be 1 to 600"));
        }
        if !(1..=600).contains(&self.no_answer_timeout_s) {
            return Err(invalid("calls.no_answer_timeout_s", "must be 1 to 600"));
        }
        if self.max_calls == 0 {
            return Err(invalid("calls.max_calls", "must be greater than 0"));
        }
        Ok(CallsConfig {
            anchoring: self.anchoring,
            ring_timeout: Duration::from_secs(self.ring_timeout_s),
            no_answer_timeout: Duration::from_secs(self.no_answer_timeout_s),
            max_calls: self.max_calls,
        })
    }
}

impl Default for CallsConfig {
    fn default() -> Self {
        // The raw defaults are valid by construction; a failure here is a bug in this file.
        #[allow(clippy::expect_used)]
        RawCalls::default().validate().expect("default calls config is valid")
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSip {
    listen: String,
    realm: String,
    t1_ms: u64,
    t2_ms: u64,
    t4_ms: u64,
    max_message_size: usize,
    max_tcp_connections: usize,
    min_expires: u32,
    max_expires: u32,
    default_expires: u32,
    heartbeat_interval_ms: u64,
    heartbeat_failures: u32,
    nonce_lifetime_s: u64,
    digest_algorithms: Vec<String>,
    max_transactions: usize,
    socket_rcvbuf: usize,
    realtime_priority: u8,
    realtime_max_busy: f64,
}

impl Default for RawSip {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:5060".to_owned(),
            realm: "floorcast".to_owned(),
            t1_ms: 500,
            t2_ms: 4000,
            t4_ms: 5000,
            max_message_size: 65_535,
            max_tcp_connections: 1024,
            min_expires: 60,
            max_expires: 7200,
            default_expires: 3600,
            heartbeat_interval_ms: 10_000,
            heartbeat_failures: 2,
            nonce_lifetime_s: 300,
            digest_algorithms: vec!["SHA-256".to_owned(), "MD5".to_owned()],
            max_transactions: 65_536,
            socket_rcvbuf: 4 * 1024 * 1024,
            realtime_priority: 10,
            realtime_max_busy: 0.25,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawProvisioning {
    network: String,
    subscribers: String,
}

impl Default for RawProvisioning {
    fn default() -> Self {
        Self {
            network: "builtin:demo".to_owned(),
            subscribers: "builtin:demo".to_owned(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawStore {
    path: String,
    commit_interval_ms: u64,
}

impl Default for RawStore {
    fn default() -> Self {
        Self {
            path: "floorcast-state.redb".to_owned(),
            commit_interval_ms: 5,
        }
    }
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
    leg_pool: bool,
    leg_pool_prebind: usize,
    workers: usize,
    backend: IoBackend,
    batch_size: usize,
    socket_rcvbuf: usize,
    socket_sndbuf: usize,
    rx_coalesce_us: u64,
    pin_workers: bool,
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
            leg_pool: true,
            leg_pool_prebind: 0,
            workers: 0,
            backend: IoBackend::Mmsg,
            batch_size: 32,
            socket_rcvbuf: 262_144,
            socket_sndbuf: 262_144,
            rx_coalesce_us: 0,
            pin_workers: false,
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
        let sip = self.sip.validate()?;
        let calls = self.calls.validate()?;
        let groups = self.groups.validate()?;
        let source = |text: &str, field: &str| -> Result<Source, ConfigError> {
            match text.trim() {
                "" => Err(invalid(field, "must be `builtin:demo` or a file path")),
                "builtin:demo" => Ok(Source::BuiltinDemo),
                path => Ok(Source::File(path.into())),
            }
        };
        let provisioning = ProvisioningConfig {
            network: source(&self.provisioning.network, "provisioning.network")?,
            subscribers: source(&self.provisioning.subscribers, "provisioning.subscribers")?,
        };
        if self.store.path.trim().is_empty() {
            return Err(invalid("store.path", "must not be empty"));
        }
        if self.store.commit_interval_ms > 1000 {
            return Err(invalid("store.commit_interval_ms", "must be at most 1000"));
        }
        let store = StoreConfig {
            path: self.store.path.trim().into(),
            commit_interval: Duration::from_millis(self.store.commit_interval_ms),
        };
        Ok(Config {
            node: NodeConfig { name },
            log: LogConfig {
                level: self.log.level,
                format: self.log.format,
            },
            media,
            metrics,
            sip,
            provisioning,
            store,
            calls,
            groups,
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
            leg_pool: self.leg_pool,
            leg_pool_prebind: self.leg_pool_prebind,
            workers,
            backend: self.backend,
            batch_size: self.batch_size,
            socket_rcvbuf: self.socket_rcvbuf,
            socket_sndbuf: self.socket_sndbuf,
            rx_coalesce: Duration::from_micros(self.rx_coalesce_us),
            pin_workers: self.pin_workers,
            rtcp_interval: Duration::from_millis(self.rtcp_interval_ms),
            talker_inactivity: Duration::from_millis(self.talker_inactivity_ms),
            default_source_check: self.default_source_check,
        })
    }
}

impl RawSip {
    fn validate(self) -> Result<SipConfig, ConfigError> {
        let listen: SocketAddr = self.listen.parse().map_err(|_| {
            invalid(
                "sip.listen",
                format!("`{}` is not an address like 127.0.0.1:5060", self.listen),
            )
        })?;
        if self.realm.trim().is_empty() || self.realm.contains('"') {
            return Err(invalid("sip.realm", "must be non-empty and without quotes"));
        }
        if self.t1_ms == 0 || self.t1_ms > 10_000 {
            return Err(invalid("sip.t1_ms", "must be 1 to 10000"));
        }
        if self.t2_ms < self.t1_ms {
            return Err(invalid("sip.t2_ms", "must be at least sip.t1_ms"));
        }
        if self.t4_ms == 0 {
            return Err(invalid("sip.t4_ms", "must be greater than 0"));
        }
        if !(1500..=1_048_576).contains(&self.max_message_size) {
            return Err(invalid("sip.max_message_size", "must be 1500 to 1048576"));
        }
        if self.max_tcp_connections == 0 {
            return Err(invalid("sip.max_tcp_connections", "must be greater than 0"));
        }
        if self.min_expires == 0 {
            return Err(invalid("sip.min_expires", "must be greater than 0"));
        }
        if self.max_expires < self.min_expires {
            return Err(invalid("sip.max_expires", "must be at least sip.min_expires"));
        }
        if !(self.min_expires..=self.max_expires).contains(&self.default_expires) {
            return Err(invalid(
                "sip.default_expires",
                "must be between sip.min_expires and sip.max_expires",
            ));
        }
        if self.heartbeat_interval_ms < 100 {
            return Err(invalid("sip.heartbeat_interval_ms", "must be at least 100"));
        }
        if self.heartbeat_failures == 0 {
            return Err(invalid("sip.heartbeat_failures", "must be at least 1"));
        }
        if self.nonce_lifetime_s < 10 {
            return Err(invalid("sip.nonce_lifetime_s", "must be at least 10"));
        }
        let mut digest_algorithms = Vec::new();
        for name in &self.digest_algorithms {
            let algorithm = crate::sip::digest::Algorithm::from_name(name).map_err(|_| {
                invalid(
                    "sip.digest_algorithms",
                    format!("`{name}` is not one of \"SHA-256\", \"MD5\""),
                )
            })?;
            if digest_algorithms.contains(&algorithm) {
                return Err(invalid("sip.digest_algorithms", format!("`{name}` is listed twice")));
            }
            digest_algorithms.push(algorithm);
        }
        if digest_algorithms.is_empty() {
            return Err(invalid("sip.digest_algorithms", "must name at least one algorithm"));
        }
        if !(64..=4_194_304).contains(&self.max_transactions) {
            return Err(invalid("sip.max_transactions", "must be 64 to 4194304"));
        }
        if self.realtime_priority > 99 {
            return Err(invalid("sip.realtime_priority", "must be 0 (off) to 99"));
        }
        if !(self.realtime_max_busy > 0.0 && self.realtime_max_busy <= 1.0) {
            return Err(invalid("sip.realtime_max_busy", "must be above 0 and at most 1"));
        }
        Ok(SipConfig {
            digest_algorithms,
            max_transactions: self.max_transactions,
            socket_rcvbuf: self.socket_rcvbuf,
            realtime_priority: self.realtime_priority,
            realtime_max_busy: self.realtime_max_busy,
            listen,
            realm: self.realm.trim().to_owned(),
            t1: Duration::from_millis(self.t1_ms),
            t2: Duration::from_millis(self.t2_ms),
            t4: Duration::from_millis(self.t4_ms),
            max_message_size: self.max_message_size,
            max_tcp_connections: self.max_tcp_connections,
            min_expires: self.min_expires,
            max_expires: self.max_expires,
            default_expires: self.default_expires,
            heartbeat_interval: Duration::from_millis(self.heartbeat_interval_ms),
            heartbeat_failures: self.heartbeat_failures,
            nonce_lifetime: Duration::from_secs(self.nonce_lifetime_s),
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
            ("[sip]\nlisten = \"5060\"\n", "sip.listen"),
            ("[sip]\nt1_ms = 1000\nt2_ms = 500\n", "sip.t2_ms"),
            (
                "[sip]\nmin_expires = 100\ndefault_expires = 50\n",
                "sip.default_expires",
            ),
            ("[provisioning]\nnetwork = \"\"\n", "provisioning.network"),
            ("[store]\npath = \"\"\n", "store.path"),
            ("[sip]\ndigest_algorithms = []\n", "sip.digest_algorithms"),
            ("[sip]\nrealtime_priority = 100\n", "sip.realtime_priority"),
            ("[sip]\nrealtime_priority = -1\n", "sip.realtime_priority"),
            ("[sip]\nrealtime_max_busy = 0.0\n", "sip.realtime_max_busy"),
            ("[sip]\nrealtime_max_busy = 1.5\n", "sip.realtime_max_busy"),
            ("[sip]\ndigest_algorithms = [\"SHA-1\"]\n", "sip.digest_algorithms"),
            (
                "[sip]\ndigest_algorithms = [\"MD5\", \"md5\"]\n",
                "sip.digest_algorithms",
            ),
        ] {
            let error = Config::from_toml(text).unwrap_err();
            assert_eq!(error.field, field, "{text} gave {error}");
        }
    }
}
