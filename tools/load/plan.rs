//! Who plays what: the terminals, group calls and call pairs of a run, read from the network's
//! own provisioning files (the library's parser), and the listener slots (one RTP socket per
//! terminal per session).

use std::collections::HashMap;
use std::net::SocketAddr;

use floorcast::control::provisioning::{Network, Subscribers, UserKind, DEMO_NETWORK, DEMO_SUBSCRIBERS};
use floorcast::proto::{Number, NumberRange};

use crate::scenario::{source_text, Scenario, Serving};

#[derive(Debug, Clone)]
pub struct Terminal {
    pub number: String,
    pub password: String,
    /// The TCF it registers at and talks to.
    pub server: SocketAddr,
    pub dispatcher: bool,
}

#[derive(Debug, Clone)]
pub struct GroupPlan {
    pub number: String,
    /// The group's home TCF (name).
    pub home: String,
    /// Terminal indexes; the first sets the call up. Dispatchers last.
    pub members: Vec<usize>,
    /// Listener slot of each member (same order).
    pub slots: Vec<u32>,
}

#[derive(Debug, Clone)]
pub struct CallPair {
    pub caller: usize,
    pub callee: usize,
    pub caller_slot: u32,
    pub callee_slot: u32,
}

/// A listener slot: a terminal's RTP socket for one session.
#[derive(Debug, Clone)]
pub struct Slot {
    pub terminal: usize,
    /// The group number, or `None` for the terminal's single-call socket.
    pub group: Option<String>,
    /// The TCF serving the terminal (name).
    pub node: String,
    /// A group slot whose terminal is served by another TCF than the group's home.
    pub remote: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub terminals: Vec<Terminal>,
    pub groups: Vec<GroupPlan>,
    pub pairs: Vec<CallPair>,
    pub slots: Vec<Slot>,
    /// The TCFs (name, SIP address).
    pub nodes: Vec<(String, SocketAddr)>,
}

fn numbers(ranges: &[String]) -> Result<Vec<Number>, String> {
    let mut out = Vec::new();
    for text in ranges {
        let range = NumberRange::parse(text).map_err(|error| error.to_string())?;
        if range.len() > 1_000_000 {
            return Err(format!("range {text} is too large"));
        }
        out.extend(range.numbers());
    }
    Ok(out)
}

impl Plan {
    /// The name of the TCF at `address` (the address itself when it is none of the network's).
    pub fn node_name(&self, address: SocketAddr) -> String {
        self.nodes
            .iter()
            .find(|(_, sip)| *sip == address)
            .map_or_else(|| address.to_string(), |(name, _)| name.clone())
    }

    /// Builds the plan for `groups` group calls (overriding the scenario's count when given).
    pub fn build(scenario: &Scenario, groups: Option<usize>) -> Result<Plan, String> {
        let network_text = source_text(&scenario.target.network, DEMO_NETWORK)?;
        let subscribers_text = source_text(&scenario.target.subscribers, DEMO_SUBSCRIBERS)?;
        let network = Network::from_toml(&scenario.target.network, &network_text).map_err(|error| error.to_string())?;
        let subscribers = Subscribers::from_toml(&scenario.target.subscribers, &subscribers_text)
            .map_err(|error| error.to_string())?;
        let mut plan = Plan {
            nodes: network.tcfs().iter().map(|tcf| (tcf.name.clone(), tcf.sip)).collect(),
            ..Plan::default()
        };
        let mut by_number: HashMap<String, usize> = HashMap::new();
        let mut terminal = |plan: &mut Plan, number: &Number, server: SocketAddr| -> Result<usize, String> {
            if let Some(&index) = by_number.get(number.as_str()) {
                return Ok(index);
            }
            let user = subscribers
                .user(number)
                .ok_or_else(|| format!("user {number} is not provisioned"))?;
            plan.terminals.push(Terminal {
                number: number.to_string(),
                password: user.password.clone(),
                server,
                dispatcher: user.kind == UserKind::Dispatcher,
            });
            by_number.insert(number.to_string(), plan.terminals.len() - 1);
            Ok(plan.terminals.len() - 1)
        };
        let home_of = |number: &Number| -> Result<SocketAddr, String> {
            network
                .home_of_user(number)
                .map(|tcf| tcf.sip)
                .ok_or_else(|| format!("user {number} is homed at no TCF of the network"))
        };
        let group_scenario = &scenario.group;
        if group_scenario.enabled {
            let wanted = groups.unwrap_or(group_scenario.count);
            for number in numbers(&group_scenario.numbers)? {
                if wanted != 0 && plan.groups.len() >= wanted {
                    break;
                }
                let Some(group) = subscribers.group(&number) else {
                    continue;
                };
                let Some(home) = network.home_of_group(&number) else {
                    return Err(format!("group {number} is homed at no TCF of the network"));
                };
                let index = plan.groups.len();
                let members = if group_scenario.members == 0 {
                    group.members.len()
                } else {
                    group_scenario.members
                };
                if group.members.len() < members || group.members.is_empty() {
                    return Err(format!(
                        "group {number} has {} members, the scenario wants {members}",
                        group.members.len()
                    ));
                }
                let chosen = group
                    .members
                    .iter()
                    .take(members)
                    .chain(group.dispatchers.iter().take(group_scenario.dispatchers));
                let mut plan_group = GroupPlan {
                    number: number.to_string(),
                    home: home.name.clone(),
                    members: Vec::new(),
                    slots: Vec::new(),
                };
                for (position, user) in chosen.enumerate() {
                    let server = match scenario.target.serving {
                        Serving::Home => home_of(user)?,
                        Serving::GroupHome => home.sip,
                        Serving::Spread => plan.nodes[(index + position) % plan.nodes.len()].1,
                    };
                    let terminal = terminal(&mut plan, user, server)?;
                    if plan_group.members.contains(&terminal) {
                        continue;
                    }
                    plan.slots.push(Slot {
                        terminal,
                        group: Some(plan_group.number.clone()),
                        node: plan.node_name(server),
                        remote: server != home.sip,
                    });
                    plan_group.members.push(terminal);
                    plan_group.slots.push((plan.slots.len() - 1) as u32);
                }
                plan.groups.push(plan_group);
            }
            if wanted != 0 && plan.groups.len() < wanted {
                return Err(format!(
                    "the scenario wants {wanted} groups; {} of the listed numbers are provisioned",
                    plan.groups.len()
                ));
            }
            if plan.groups.is_empty() {
                return Err("no provisioned group among group.numbers".to_owned());
            }
        }
        if scenario.calls.enabled {
            let users = numbers(&scenario.calls.users)?;
            for pair in users.chunks_exact(2) {
                let caller = terminal(&mut plan, &pair[0], home_of(&pair[0])?)?;
                let callee = terminal(&mut plan, &pair[1], home_of(&pair[1])?)?;
                for terminal in [caller, callee] {
                    let node = plan.node_name(plan.terminals[terminal].server);
                    plan.slots.push(Slot {
                        terminal,
                        group: None,
                        node,
                        remote: false,
                    });
                }
                let slots = plan.slots.len() as u32;
                plan.pairs.push(CallPair {
                    caller,
                    callee,
                    caller_slot: slots - 2,
                    callee_slot: slots - 1,
                });
            }
            if plan.pairs.is_empty() {
                return Err("calls.users must name at least two users".to_owned());
            }
        }
        Ok(plan)
    }
}
