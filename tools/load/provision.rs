//! `floorcast-load provision`: writes a load-test network — provisioning files (network,
//! subscribers), one node config per TCF and a matching scenario — so that any number of
//! groups and members can be driven.
//!
//! Numbering (8 digits; node `h` = 0..n homes):
//! users `1hhkkkkk`, groups `2hhkkkkk`, dispatchers `3hhkkkkk`. Node `h` is `node-h` at
//! `127.0.0.1:<base_port + h>`. Group `g` is homed at node `g mod n`; with `--layout home` all
//! of its members are homed (and register) there too, with `--layout spread` member `j` is
//! homed at node `(g + j) mod n`. `--groups-at h` homes every group at node `h` instead (with
//! `--layout spread` its members are then served by all nodes: listeners on other nodes than the
//! group's home, reached through their member TCF).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// What to generate.
#[derive(Debug, Clone, clap::Args)]
pub struct ProvisionArgs {
    /// Directory to write into (created).
    #[arg(long)]
    pub out: PathBuf,
    /// TCF nodes.
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,
    /// Group numbers provisioned (a scenario may use fewer).
    #[arg(long, default_value_t = 10)]
    pub groups: usize,
    /// Members per group (terminals; each terminal is in one group).
    #[arg(long, default_value_t = 11)]
    pub members: usize,
    /// Dispatchers per group.
    #[arg(long, default_value_t = 0)]
    pub dispatchers: usize,
    /// `home`: a group's members live at its home node; `spread`: over all nodes.
    #[arg(long, value_enum, default_value_t = Layout::Home)]
    pub layout: Layout,
    /// Home every group at this node (default: group `g` at node `g mod nodes`).
    #[arg(long)]
    pub groups_at: Option<usize>,
    /// SIP port of node 0 (node h listens on base + h).
    #[arg(long, default_value_t = 5070)]
    pub base_port: u16,
    /// First media port; the nodes share `media_base..=media_base + media_ports - 1`.
    #[arg(long, default_value_t = 10_000)]
    pub media_base: u16,
    #[arg(long, default_value_t = 22_000)]
    pub media_ports: u32,
    /// A freed media port pair's quarantine, ms (the node's default, 5000, when not given).
    /// Group call set-up/tear-down cycles use up `legs × rate × quarantine` port pairs.
    #[arg(long)]
    pub port_quarantine_ms: Option<u64>,
    /// The nodes' `sip.max_transactions` (their default, 65,536, when not given). Finished
    /// transactions are kept up to 32 s (RFC 3261 timers J, L, M over UDP): set-up/tear-down
    /// cycles need about 32 s × rate × transactions per call.
    #[arg(long)]
    pub max_transactions: Option<usize>,
    /// The nodes' `sip.realtime_priority` (`SCHED_FIFO` for their SIP threads while lightly
    /// loaded; the node's default, 10, when not given; 0: ordinary scheduling).
    #[arg(long)]
    pub sip_realtime_priority: Option<u8>,
    /// Media worker threads per node (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    /// Every user's password.
    #[arg(long, default_value = "load")]
    pub password: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Layout {
    Home,
    Spread,
}

fn number(kind: u32, node: usize, index: usize) -> String {
    format!("{kind}{node:02}{index:05}")
}

/// Compresses numbers into `a-b` ranges of consecutive numbers of one width.
fn ranges(mut numbers: Vec<String>) -> Vec<String> {
    numbers.sort();
    let mut out: Vec<String> = Vec::new();
    let mut start: Option<(String, u64, u64)> = None;
    for number in numbers {
        let value: u64 = number.parse().unwrap_or(0);
        match &mut start {
            Some((_, _, last)) if *last + 1 == value => *last = value,
            _ => {
                if let Some((first, low, high)) = start.take() {
                    out.push(if low == high {
                        first
                    } else {
                        format!("{low:0w$}-{high:0w$}", w = first.len())
                    });
                }
                start = Some((number, value, value));
            }
        }
    }
    if let Some((first, low, high)) = start {
        out.push(if low == high {
            first
        } else {
            format!("{low:0w$}-{high:0w$}", w = first.len())
        });
    }
    out
}

fn quoted(list: &[String]) -> String {
    let items: Vec<String> = list.iter().map(|item| format!("\"{item}\"")).collect();
    format!("[{}]", items.join(", "))
}

/// Writes the files; returns their paths.
pub fn provision(args: &ProvisionArgs) -> Result<Vec<PathBuf>, String> {
    if args.nodes == 0 || args.nodes > 99 {
        return Err("--nodes must be 1 to 99".to_owned());
    }
    if args.members == 0 || args.groups == 0 {
        return Err("--groups and --members must be positive".to_owned());
    }
    if args.groups_at.is_some_and(|node| node >= args.nodes) {
        return Err("--groups-at must name one of the nodes (0 to nodes - 1)".to_owned());
    }
    let per_node_users = (args.groups * args.members).div_ceil(args.nodes) + args.members;
    if per_node_users > 99_999 || args.groups > 99_999 * args.nodes {
        return Err("too many users or groups for the 8-digit numbering".to_owned());
    }
    std::fs::create_dir_all(&args.out).map_err(|error| format!("{}: {error}", args.out.display()))?;
    let directory = args
        .out
        .canonicalize()
        .map_err(|error| format!("{}: {error}", args.out.display()))?;
    let n = args.nodes;
    let mut user_count = vec![0usize; n];
    let mut dc_count = vec![0usize; n];
    let mut group_count = vec![0usize; n];
    let mut subscribers =
        String::from("# Generated by `floorcast-load provision`: load-test subscribers (see tools/README.md).\n");
    let mut groups = String::new();
    let mut group_numbers = Vec::new();
    for g in 0..args.groups {
        let home = args.groups_at.unwrap_or(g % n);
        let gdn = number(2, home, group_count[home]);
        group_count[home] += 1;
        let mut members = Vec::new();
        for j in 0..args.members {
            let node = match args.layout {
                Layout::Home => home,
                Layout::Spread => (g + j) % n,
            };
            members.push(number(1, node, user_count[node]));
            user_count[node] += 1;
        }
        let mut dispatchers = Vec::new();
        for _ in 0..args.dispatchers {
            dispatchers.push(number(3, home, dc_count[home]));
            dc_count[home] += 1;
        }
        let _ = writeln!(
            groups,
            "\n[[group]]\nnumber = \"{gdn}\"\nmembers = {}\ndispatchers = {}\npriority = 5",
            quoted(&ranges(members)),
            quoted(&ranges(dispatchers))
        );
        group_numbers.push(gdn);
    }
    for node in 0..n {
        if user_count[node] > 0 {
            let _ = writeln!(
                subscribers,
                "\n[[user]]\nnumber = \"{}-{}\"\npassword = \"{}\"\nanswer = \"direct\"\npriority = 3",
                number(1, node, 0),
                number(1, node, user_count[node] - 1),
                args.password
            );
        }
        if dc_count[node] > 0 {
            let _ = writeln!(
                subscribers,
                "\n[[user]]\nnumber = \"{}-{}\"\npassword = \"{}\"\nkind = \"dispatcher\"\npriority = 12",
                number(3, node, 0),
                number(3, node, dc_count[node] - 1),
                args.password
            );
        }
    }
    subscribers.push_str(&groups);
    let mut network =
        String::from("# Generated by `floorcast-load provision`: the load-test network (see tools/README.md).\n");
    for node in 0..n {
        let _ = writeln!(
            network,
            "\n[[tcf]]\nname = \"node-{node}\"\nsip = \"127.0.0.1:{}\"\nusers = [\"{}-{}\", \"{}-{}\"]\ngroups = [\"{}-{}\"]\nauth = true\nsecret = \"secret-{node}\"",
            args.base_port + node as u16,
            number(1, node, 0),
            number(1, node, 99_999),
            number(3, node, 0),
            number(3, node, 99_999),
            number(2, node, 0),
            number(2, node, 99_999),
        );
    }
    let mut written = Vec::new();
    let mut write = |name: &str, text: &str| -> Result<(), String> {
        let path = directory.join(name);
        std::fs::write(&path, text).map_err(|error| format!("{}: {error}", path.display()))?;
        written.push(path);
        Ok(())
    };
    write("network.toml", &network)?;
    write("subscribers.toml", &subscribers)?;
    let span = (args.media_ports / n as u32) & !1;
    if span < 4 {
        return Err("--media-ports too small for the nodes".to_owned());
    }
    for node in 0..n {
        let port_min = u32::from(args.media_base) + span * node as u32;
        let port_max = port_min + span - 1;
        if port_max > 65_535 {
            return Err("media ports beyond 65535".to_owned());
        }
        let config = format!(
            "# Generated by `floorcast-load provision`: node {node} of the load-test network.\n\
             # Run: floorcast run --config {config}\n\
             [node]\nname = \"node-{node}\"\n\n[log]\nlevel = \"warn\"\n\n\
             [media]\nport_min = {port_min}\nport_max = {port_max}\nworkers = {workers}\n{quarantine}\n\
             [metrics]\nlisten = \"off\"\n\n\
             [sip]\nlisten = \"127.0.0.1:{sip}\"\nrealm = \"node-{node}\"\n\
             heartbeat_interval_ms = 1000\nheartbeat_failures = 2\n{transactions}{realtime}\n\
             [provisioning]\nnetwork = \"network.toml\"\nsubscribers = \"subscribers.toml\"\n\n\
             [store]\npath = \"{store}\"\n",
            config = directory.join(format!("node-{node}.toml")).display(),
            workers = args.workers,
            transactions = args
                .max_transactions
                .map_or_else(String::new, |count| format!("max_transactions = {count}\n")),
            realtime = args
                .sip_realtime_priority
                .map_or_else(String::new, |priority| format!("realtime_priority = {priority}\n")),
            quarantine = args
                .port_quarantine_ms
                .map_or_else(String::new, |ms| format!("port_quarantine_ms = {ms}\n")),
            sip = args.base_port + node as u16,
            store = directory.join(format!("node-{node}.redb")).display(),
        );
        write(&format!("node-{node}.toml"), &config)?;
    }
    let scenario = scenario_text(args, &group_numbers);
    write("scenario.toml", &scenario)?;
    Ok(written)
}

fn scenario_text(args: &ProvisionArgs, group_numbers: &[String]) -> String {
    let numbers = ranges(group_numbers.to_vec());
    format!(
        "# Generated by `floorcast-load provision`: a scenario for this network.\n\
         # Run: floorcast-load run {path}\n\
         [target]\nnetwork = \"network.toml\"\nsubscribers = \"subscribers.toml\"\nserving = \"home\"\n\n\
         [run]\nduration_s = 10\n\n\
         [group]\nnumbers = {numbers}\ncount = {groups}\nmembers = {members}\ndispatchers = {dispatchers}\n\
         pattern = \"round-robin\"\nspurt_ms = 2000\npacket_rate = 50\npayload_size = 160\ncodec = \"PCMU\"\n\n\
         [slo]\nmax_loss = 0.0\nmax_p99_ms = 50\n",
        path = Path::new(&args.out).join("scenario.toml").display(),
        numbers = quoted(&numbers),
        groups = args.groups,
        members = args.members,
        dispatchers = args.dispatchers,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_numbers_become_ranges() {
        let numbers = ["10000002", "10000000", "10000001", "10100000", "10000005"]
            .map(str::to_owned)
            .to_vec();
        assert_eq!(ranges(numbers), vec!["10000000-10000002", "10000005", "10100000"]);
    }

    #[test]
    fn generated_files_load_with_the_node_parsers() {
        let directory = std::env::temp_dir().join(format!("floorcast-load-provision-{}", std::process::id()));
        let args = ProvisionArgs {
            out: directory.clone(),
            nodes: 3,
            groups: 7,
            members: 4,
            dispatchers: 1,
            layout: Layout::Spread,
            groups_at: None,
            port_quarantine_ms: Some(1000),
            max_transactions: Some(1 << 20),
            sip_realtime_priority: Some(5),
            base_port: 5170,
            media_base: 10_000,
            media_ports: 3000,
            workers: 1,
            password: "pw".to_owned(),
        };
        provision(&args).expect("written");
        let network = std::fs::read_to_string(directory.join("network.toml")).expect("network");
        let subscribers = std::fs::read_to_string(directory.join("subscribers.toml")).expect("subscribers");
        let network = floorcast::control::provisioning::Network::from_toml("network", &network).expect("valid");
        let subscribers =
            floorcast::control::provisioning::Subscribers::from_toml("subscribers", &subscribers).expect("valid");
        assert_eq!(network.tcfs().len(), 3);
        assert_eq!(subscribers.group_count(), 7);
        let group = subscribers
            .group(&floorcast::proto::Number::parse("20100001").expect("number"))
            .expect("group 4 is homed at node 1");
        assert_eq!(group.members.len(), 4);
        assert_eq!(group.dispatchers.len(), 1);
        for node in 0..3 {
            let text = std::fs::read_to_string(directory.join(format!("node-{node}.toml"))).expect("config");
            let config = floorcast::config::Config::from_toml(&text).expect("node config is valid");
            assert_eq!(config.sip.realtime_priority, 5);
            assert_eq!(config.sip.max_transactions, 1 << 20);
        }
        let scenario = crate::scenario::Scenario::load(&directory.join("scenario.toml")).expect("scenario");
        let plan = crate::plan::Plan::build(&scenario, None).expect("plan");
        assert_eq!(plan.groups.len(), 7);
        assert_eq!(plan.terminals.len(), 7 * 5);
        let _ = std::fs::remove_dir_all(&directory);
    }

    #[test]
    fn groups_at_one_node_with_members_spread_over_all() {
        let directory = std::env::temp_dir().join(format!("floorcast-load-groups-at-{}", std::process::id()));
        let args = ProvisionArgs {
            out: directory.clone(),
            nodes: 3,
            groups: 4,
            members: 3,
            dispatchers: 0,
            layout: Layout::Spread,
            groups_at: Some(0),
            port_quarantine_ms: None,
            max_transactions: None,
            sip_realtime_priority: None,
            base_port: 5180,
            media_base: 10_000,
            media_ports: 3000,
            workers: 1,
            password: "pw".to_owned(),
        };
        provision(&args).expect("written");
        let scenario = crate::scenario::Scenario::load(&directory.join("scenario.toml")).expect("scenario");
        let plan = crate::plan::Plan::build(&scenario, None).expect("plan");
        assert!(plan.groups.iter().all(|group| group.home == "node-0"));
        // Member j of group g is served by node (g + j) mod 3: two of each group's three
        // members are on another node than the group's home.
        for group in &plan.groups {
            let remote = group
                .slots
                .iter()
                .filter(|&&slot| plan.slots[slot as usize].remote)
                .count();
            assert_eq!(remote, 2, "{}", group.number);
        }
        let text = std::fs::read_to_string(directory.join("node-0.toml")).expect("config");
        assert!(!text.contains("port_quarantine_ms"));
        assert!(provision(&ProvisionArgs {
            groups_at: Some(3),
            ..args
        })
        .is_err());
        let _ = std::fs::remove_dir_all(&directory);
    }
}
