//! The scenario file (TOML): what to drive, how hard, for how long, and what counts as
//! passing. Every field has a default; command-line options override the file
//! (`floorcast-load run --help`). Example: `config/load/scenario.toml`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Scenario {
    pub target: Target,
    pub run: Run,
    pub group: GroupScenario,
    pub calls: CallScenario,
    pub slo: Slo,
    pub ramp: Ramp,
    pub fault: Fault,
    pub node: NodeWatch,
}

/// The network driven: its provisioning files say where each number is homed and each
/// user's password.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Target {
    /// The network file of the nodes (`builtin:demo` for the built-in one-node demo).
    pub network: String,
    /// The subscribers file (`builtin:demo`).
    pub subscribers: String,
    /// Local address of the generator's sockets.
    pub bind: IpAddr,
    /// Where terminals register: `home` (each user's home TCF), `group-home` (the home of the
    /// group it is used in), `spread` (member j of group g at TCF (g + j) mod n).
    pub serving: Serving,
    /// Registration expiry asked for, seconds.
    pub expires: u32,
}

impl Default for Target {
    fn default() -> Self {
        Target {
            network: "builtin:demo".to_owned(),
            subscribers: "builtin:demo".to_owned(),
            bind: IpAddr::from([127, 0, 0, 1]),
            serving: Serving::Home,
            expires: 600,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Serving {
    Home,
    GroupHome,
    Spread,
}

/// Bounds and timing of a run.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Run {
    /// Traffic time, seconds (after set-up; set-up and teardown are bounded separately).
    pub duration_s: f64,
    /// Stop after this many talk spurts in all (0: no bound).
    pub max_spurts: u64,
    /// Registrations in flight at once.
    pub register_concurrency: usize,
    /// How long a group call set-up (INVITE to every member joined) may take, ms.
    pub setup_timeout_ms: u64,
    /// A request of ours without a final response after this long has failed, ms.
    pub sip_timeout_ms: u64,
    /// Receiver threads (each reads a share of the listener sockets).
    pub receivers: usize,
    /// Time for the last packets to arrive after the traffic stops, ms.
    pub settle_ms: u64,
    /// Print a progress line every second.
    pub progress: bool,
    /// Seed of the random talker pattern (0: random).
    pub seed: u64,
}

impl Default for Run {
    fn default() -> Self {
        Run {
            duration_s: 10.0,
            max_spurts: 0,
            register_concurrency: 64,
            setup_timeout_ms: 5000,
            sip_timeout_ms: 4000,
            receivers: 1,
            settle_ms: 300,
            progress: true,
            seed: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Pattern {
    /// Members take the floor in turn: the holder releases, the next one asks.
    RoundRobin,
    /// Like round-robin, the next talker chosen at random.
    Random,
    /// `burst_size` members ask at the same instant while the floor is held; they are queued
    /// and handed the floor one after another.
    Burst,
}

/// Group calls: which groups, how many members join, how the floor moves.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GroupScenario {
    pub enabled: bool,
    /// Group numbers or ranges to use, in order (`["2001-2002"]`).
    pub numbers: Vec<String>,
    /// How many groups (0: every listed group that is provisioned).
    pub count: usize,
    /// Members per group taking part (0: all provisioned members). The first member sets the
    /// call up.
    pub members: usize,
    /// Dispatchers per group taking part (listeners only).
    pub dispatchers: usize,
    pub pattern: Pattern,
    /// Requests at once in the `burst` pattern (at most the node's `groups.queue` + 1).
    pub burst_size: usize,
    /// Length of a talk spurt, ms.
    pub spurt_ms: u64,
    /// Pause between a release and the next request, ms.
    pub gap_ms: u64,
    /// Pause between a talker's last packet and its release, ms (0: at once, as a terminal
    /// does when the PTT key goes up).
    pub release_delay_ms: u64,
    /// The codec offered: `PCMU`, `PCMA`, `AMR`, `AMR-WB` (the group call's codec).
    pub codec: String,
    /// RTP packets per second per talker.
    pub packet_rate: u32,
    /// RTP payload bytes (at least 40: the probe).
    pub payload_size: usize,
    /// Seconds between group call set-ups at the start (spreads the set-up load).
    pub setup_interval_ms: u64,
    /// Cycle mode (group calls per second): each of the `count` groups is a slot that sets its
    /// call up (INVITE → every member joined), has the initiator talk for `cycle_spurt_ms`
    /// (0: no spurt), hangs up (BYE → every member got its BYE) and starts again at once, for
    /// the traffic time.
    pub cycle: bool,
    /// The spurt of each cycle, ms (0: none).
    pub cycle_spurt_ms: u64,
}

impl Default for GroupScenario {
    fn default() -> Self {
        GroupScenario {
            enabled: true,
            numbers: vec!["2001-2002".to_owned()],
            count: 0,
            members: 0,
            dispatchers: 0,
            pattern: Pattern::RoundRobin,
            burst_size: 3,
            spurt_ms: 2000,
            gap_ms: 0,
            release_delay_ms: 0,
            codec: "PCMU".to_owned(),
            packet_rate: 50,
            payload_size: 160,
            setup_interval_ms: 20,
            cycle: false,
            cycle_spurt_ms: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Callee {
    /// 180, then 200 after `answer_delay_ms`.
    Answer,
    /// 486 Busy Here.
    Busy,
    /// 603 Decline.
    Decline,
    /// 180 only: the caller's home ends it at its ring timeout.
    NoAnswer,
}

/// Single calls, like SIPp's basic UAC/UAS pair: callers call callees at a rate.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallScenario {
    pub enabled: bool,
    /// User numbers or ranges; consecutive users pair up (caller, callee).
    pub users: Vec<String>,
    /// New calls per second.
    pub rate: f64,
    /// How long an answered call lasts before the caller hangs up, ms.
    pub hold_ms: u64,
    /// Stop placing calls after this many (0: no bound).
    pub count: u64,
    pub answer: Callee,
    pub answer_delay_ms: u64,
    /// RTP both ways while a call is up.
    pub rtp: bool,
}

impl Default for CallScenario {
    fn default() -> Self {
        CallScenario {
            enabled: false,
            users: vec!["1001-1010".to_owned()],
            rate: 2.0,
            hold_ms: 2000,
            count: 0,
            answer: Callee::Answer,
            answer_delay_ms: 100,
            rtp: true,
        }
    }
}

/// What must hold for the run to pass (exit status 0).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Slo {
    /// Highest acceptable loss, a fraction (0.001 = 0.1 %).
    pub max_loss: Option<f64>,
    /// Highest acceptable mouth-to-ear p99, ms.
    pub max_p99_ms: Option<f64>,
}

/// Raise the number of groups step by step until the SLO breaks.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ramp {
    pub enabled: bool,
    pub start: usize,
    pub step: usize,
    pub max: usize,
    /// Traffic time per level, seconds.
    pub step_s: f64,
}

impl Default for Ramp {
    fn default() -> Self {
        Ramp {
            enabled: false,
            start: 1,
            step: 1,
            max: 100,
            step_s: 10.0,
        }
    }
}

/// A fault injected during the run.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Fault {
    /// Process to kill (SIGKILL), e.g. one node of a cluster.
    pub kill_pid: Option<i32>,
    /// When, seconds after the traffic starts.
    pub at_s: f64,
}

/// Processes whose CPU time and memory are reported (`/proc`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeWatch {
    pub pids: Vec<i32>,
}

impl Scenario {
    /// Reads a scenario file; provisioning paths in it are relative to its directory.
    pub fn load(path: &Path) -> Result<Scenario, String> {
        let text = std::fs::read_to_string(path).map_err(|error| format!("{}: {error}", path.display()))?;
        let mut scenario: Scenario = toml::from_str(&text).map_err(|error| format!("{}: {error}", path.display()))?;
        let directory = path.parent().unwrap_or(Path::new("."));
        for file in [&mut scenario.target.network, &mut scenario.target.subscribers] {
            if !file.starts_with("builtin:") && Path::new(file.as_str()).is_relative() {
                *file = directory.join(file.as_str()).display().to_string();
            }
        }
        Ok(scenario)
    }

    /// Checks the values make a run.
    pub fn validate(&self) -> Result<(), String> {
        let group = &self.group;
        if !group.enabled && !self.calls.enabled {
            return Err("nothing to do: enable [group] or [calls]".to_owned());
        }
        if group.payload_size < crate::rtp::PROBE_HEADER || group.payload_size > 1400 {
            return Err(format!(
                "group.payload_size must be {} to 1400",
                crate::rtp::PROBE_HEADER
            ));
        }
        if !(1..=1000).contains(&group.packet_rate) {
            return Err("group.packet_rate must be 1 to 1000".to_owned());
        }
        if codec(&group.codec).is_none() {
            return Err(format!("group.codec `{}`: use PCMU, PCMA, AMR or AMR-WB", group.codec));
        }
        if group.spurt_ms == 0 {
            return Err("group.spurt_ms must be positive".to_owned());
        }
        if group.pattern == Pattern::Burst && group.burst_size < 1 {
            return Err("group.burst_size must be at least 1".to_owned());
        }
        if self.run.duration_s.is_nan() || self.run.duration_s <= 0.0 || self.run.duration_s > 86_400.0 {
            return Err("run.duration_s must be between 0 and 86400".to_owned());
        }
        if self.run.receivers == 0 || self.run.receivers > 64 {
            return Err("run.receivers must be 1 to 64".to_owned());
        }
        if self.calls.enabled && (self.calls.rate.is_nan() || self.calls.rate <= 0.0) {
            return Err("calls.rate must be positive".to_owned());
        }
        if self.ramp.enabled && (self.ramp.step == 0 || self.ramp.start == 0 || self.ramp.max < self.ramp.start) {
            return Err("ramp: start ≥ 1, step ≥ 1, max ≥ start".to_owned());
        }
        if let Some(loss) = self.slo.max_loss {
            if !(0.0..=1.0).contains(&loss) {
                return Err("slo.max_loss is a fraction from 0 to 1".to_owned());
            }
        }
        Ok(())
    }
}

/// The SDP format of a codec name.
pub fn codec(name: &str) -> Option<floorcast::media::codec::Codec> {
    use floorcast::media::codec::Codec;
    match name.to_ascii_uppercase().as_str() {
        "PCMU" => Some(Codec::Pcmu),
        "PCMA" => Some(Codec::Pcma),
        "AMR" => Some(Codec::Amr),
        "AMR-WB" => Some(Codec::AmrWb),
        _ => None,
    }
}

/// A path or `builtin:demo` as given.
pub fn source_text(source: &str, demo: &str) -> Result<String, String> {
    if source == "builtin:demo" {
        Ok(demo.to_owned())
    } else {
        std::fs::read_to_string(PathBuf::from(source)).map_err(|error| format!("{source}: {error}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_demo_scenario_is_valid_and_plans() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/load/scenarios/demo.toml");
        let scenario = Scenario::load(&path).expect("the demo scenario parses");
        scenario.validate().expect("and is valid");
        let plan = crate::plan::Plan::build(&scenario, None).expect("and plans against the demo network");
        // Group 2001 = 1001-1010 + a dispatcher, 2002 = 1001-1005 + a dispatcher.
        assert_eq!(plan.groups.len(), 2);
        assert_eq!(plan.groups[0].members.len(), 11);
        assert_eq!(plan.groups[1].members.len(), 6);
        assert!(plan.terminals.iter().any(|terminal| terminal.dispatcher));
    }

    #[test]
    fn unknown_fields_and_bad_values_are_refused() {
        assert!(toml::from_str::<Scenario>("[group]\nbogus = 1\n").is_err());
        let mut scenario = Scenario::default();
        scenario.group.payload_size = 10;
        assert!(scenario.validate().is_err());
        let mut scenario = Scenario::default();
        scenario.group.codec = "OPUS".to_owned();
        assert!(scenario.validate().is_err());
    }
}
