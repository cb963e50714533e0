//! Provisioned data: the TCF network (which node homes which numbers) and the subscribers
//! (users, dispatch consoles, groups). Parsed from TOML text and validated here; the node reads
//! the files (`[provisioning]` in the config). Every node of a deployment may load the same
//! files: each acts as home only for the numbers its network entry names.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use serde::Deserialize;

use crate::config::ConfigError;
use crate::proto::{Number, NumberRange};

/// The built-in one-node demo network (`provisioning.network = "builtin:demo"`).
pub const DEMO_NETWORK: &str = include_str!("../../config/demo/network.toml");
/// The built-in demo subscribers (`provisioning.subscribers = "builtin:demo"`).
pub const DEMO_SUBSCRIBERS: &str = include_str!("../../config/demo/subscribers.toml");

/// Most numbers one range in a member list may expand to (guards against `1-99999999`).
const MAX_RANGE_EXPANSION: u64 = 100_000;

fn invalid(file: &str, field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        field: format!("{file}: {}", field.into()),
        message: message.into(),
    }
}

/// One TCF node of the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tcf {
    /// Its name (the `node.name` of its config).
    pub name: String,
    /// Its SIP address (UDP and TCP).
    pub sip: SocketAddr,
    /// User numbers homed there.
    pub users: Vec<NumberRange>,
    /// Group numbers homed there.
    pub groups: Vec<NumberRange>,
    /// Whether this node requires digest authentication of TC2 REGISTERs from that node.
    pub auth: bool,
    /// Shared secret that node uses when challenged (TC2 digest password).
    pub secret: String,
}

/// The TCF network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    tcfs: Vec<Tcf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    #[serde(default)]
    tcf: Vec<RawTcf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTcf {
    name: String,
    sip: String,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    auth: bool,
    #[serde(default)]
    secret: String,
}

impl Network {
    /// Parses and validates a network file; `file` names it in errors.
    pub fn from_toml(file: &str, text: &str) -> Result<Network, ConfigError> {
        let raw: RawNetwork = toml::from_str(text).map_err(|error| invalid(file, "", error.message().to_owned()))?;
        let mut tcfs = Vec::new();
        let mut names = HashSet::new();
        for (index, raw) in raw.tcf.into_iter().enumerate() {
            let field = |key: &str| format!("tcf[{index}].{key}");
            if raw.name.is_empty() || !names.insert(raw.name.clone()) {
                return Err(invalid(file, field("name"), "missing or duplicate name"));
            }
            let sip = raw.sip.parse().map_err(|_| {
                invalid(
                    file,
                    field("sip"),
                    format!("`{}` is not an address like 127.0.0.1:5060", raw.sip),
                )
            })?;
            let ranges = |list: &[String], key: &str| -> Result<Vec<NumberRange>, ConfigError> {
                list.iter()
                    .map(|text| NumberRange::parse(text).map_err(|error| invalid(file, field(key), error.to_string())))
                    .collect()
            };
            tcfs.push(Tcf {
                users: ranges(&raw.users, "users")?,
                groups: ranges(&raw.groups, "groups")?,
                name: raw.name,
                sip,
                auth: raw.auth,
                secret: raw.secret,
            });
        }
        if tcfs.is_empty() {
            return Err(invalid(file, "tcf", "the network names no TCF"));
        }
        // A number homed at two nodes would make routing ambiguous.
        for (index, tcf) in tcfs.iter().enumerate() {
            for other in &tcfs[index + 1..] {
                for (mine, theirs, kind) in [
                    (&tcf.users, &other.users, "users"),
                    (&tcf.groups, &other.groups, "groups"),
                ] {
                    for range in mine {
                        if let Some(clash) = theirs.iter().find(|theirs| overlaps(range, theirs)) {
                            return Err(invalid(
                                file,
                                format!("tcf[{index}].{kind}"),
                                format!("{range} of {} overlaps {clash} of {}", tcf.name, other.name),
                            ));
                        }
                    }
                }
            }
        }
        Ok(Network { tcfs })
    }

    /// Every TCF.
    pub fn tcfs(&self) -> &[Tcf] {
        &self.tcfs
    }

    /// The TCF called `name`.
    pub fn tcf(&self, name: &str) -> Option<&Tcf> {
        self.tcfs.iter().find(|tcf| tcf.name == name)
    }

    /// The TCF at SIP address `address`.
    pub fn tcf_at(&self, address: SocketAddr) -> Option<&Tcf> {
        self.tcfs.iter().find(|tcf| tcf.sip == address)
    }

    /// The home TCF of a user number.
    pub fn home_of_user(&self, number: &Number) -> Option<&Tcf> {
        self.tcfs
            .iter()
            .find(|tcf| tcf.users.iter().any(|range| range.contains(number)))
    }

    /// The home TCF of a group number.
    pub fn home_of_group(&self, number: &Number) -> Option<&Tcf> {
        self.tcfs
            .iter()
            .find(|tcf| tcf.groups.iter().any(|range| range.contains(number)))
    }
}

fn overlaps(a: &NumberRange, b: &NumberRange) -> bool {
    // Ranges of different lengths never overlap; otherwise compare their ends.
    let (a_first, b_first) = (a.numbers().next(), b.numbers().next());
    match (a_first, b_first) {
        (Some(a_first), Some(b_first)) if a_first.as_str().len() == b_first.as_str().len() => {
            a.contains(&b_first) || b.contains(&a_first)
        }
        _ => false,
    }
}

/// What kind of endpoint a user is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserKind {
    /// A terminal (handset).
    Terminal,
    /// A dispatch console.
    Dispatcher,
}

/// How a user answers calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnswerMode {
    /// Rings (180) and waits for the user to answer.
    Hook,
    /// Answers at once.
    Direct,
}

/// A provisioned user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Its number.
    pub number: Number,
    /// Digest password.
    pub password: String,
    /// Terminal or dispatch console.
    pub kind: UserKind,
    /// Call and floor priority, 1 (lowest) to 15 (highest).
    pub priority: u8,
    /// Answer mode.
    pub answer: AnswerMode,
    /// Forward when busy.
    pub forward_busy: Option<Number>,
    /// Forward when not answered.
    pub forward_no_answer: Option<Number>,
}

/// A provisioned group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// Its number (GDN).
    pub number: Number,
    /// Member users.
    pub members: Vec<Number>,
    /// Dispatch consoles of the group.
    pub dispatchers: Vec<Number>,
    /// Group call priority, 1 to 15.
    pub priority: u8,
}

/// All provisioned users and groups.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subscribers {
    users: HashMap<Number, User>,
    groups: HashMap<Number, Group>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSubscribers {
    #[serde(default)]
    user: Vec<RawUser>,
    #[serde(default)]
    group: Vec<RawGroup>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    /// A number or a range (`1001-1010`): one entry provisions them all alike.
    number: String,
    password: String,
    #[serde(default = "default_kind")]
    kind: UserKind,
    #[serde(default = "default_priority")]
    priority: u8,
    #[serde(default = "default_answer")]
    answer: AnswerMode,
    forward_busy: Option<String>,
    forward_no_answer: Option<String>,
}

fn default_kind() -> UserKind {
    UserKind::Terminal
}
fn default_priority() -> u8 {
    5
}
fn default_answer() -> AnswerMode {
    AnswerMode::Direct
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    number: String,
    #[serde(default)]
    members: Vec<String>,
    #[serde(default)]
    dispatchers: Vec<String>,
    #[serde(default = "default_priority")]
    priority: u8,
}

impl Subscribers {
    /// Parses and validates a subscriber file; `file` names it in errors.
    pub fn from_toml(file: &str, text: &str) -> Result<Subscribers, ConfigError> {
        let raw: RawSubscribers =
            toml::from_str(text).map_err(|error| invalid(file, "", error.message().to_owned()))?;
        let mut users = HashMap::new();
        for (index, raw) in raw.user.into_iter().enumerate() {
            let field = |key: &str| format!("user[{index}].{key}");
            let range =
                NumberRange::parse(&raw.number).map_err(|error| invalid(file, field("number"), error.to_string()))?;
            if range.len() > MAX_RANGE_EXPANSION {
                return Err(invalid(file, field("number"), "range too large"));
            }
            if !(1..=15).contains(&raw.priority) {
                return Err(invalid(file, field("priority"), "must be 1 to 15"));
            }
            if raw.password.is_empty() {
                return Err(invalid(file, field("password"), "must not be empty"));
            }
            let forward = |value: &Option<String>, key: &str| -> Result<Option<Number>, ConfigError> {
                value
                    .as_deref()
                    .map(Number::parse)
                    .transpose()
                    .map_err(|error| invalid(file, field(key), error.to_string()))
            };
            let forward_busy = forward(&raw.forward_busy, "forward_busy")?;
            let forward_no_answer = forward(&raw.forward_no_answer, "forward_no_answer")?;
            for number in range.numbers() {
                let user = User {
                    number: number.clone(),
                    password: raw.password.clone(),
                    kind: raw.kind,
                    priority: raw.priority,
                    answer: raw.answer,
                    forward_busy: forward_busy.clone(),
                    forward_no_answer: forward_no_answer.clone(),
                };
                if users.insert(number.clone(), user).is_some() {
                    return Err(invalid(file, field("number"), format!("{number} is provisioned twice")));
                }
            }
        }
        let mut groups = HashMap::new();
        for (index, raw) in raw.group.into_iter().enumerate() {
            let field = |key: &str| format!("group[{index}].{key}");
            let number =
                Number::parse(&raw.number).map_err(|error| invalid(file, field("number"), error.to_string()))?;
            if users.contains_key(&number) {
                return Err(invalid(file, field("number"), format!("{number} is also a user")));
            }
            if !(1..=15).contains(&raw.priority) {
                return Err(invalid(file, field("priority"), "must be 1 to 15"));
            }
            let expand = |list: &[String], key: &str, kind: UserKind| -> Result<Vec<Number>, ConfigError> {
                let mut numbers = Vec::new();
                for text in list {
                    let range =
                        NumberRange::parse(text).map_err(|error| invalid(file, field(key), error.to_string()))?;
                    if range.len() > MAX_RANGE_EXPANSION {
                        return Err(invalid(file, field(key), "range too large"));
                    }
                    for number in range.numbers() {
                        match users.get(&number) {
                            None => {
                                return Err(invalid(file, field(key), format!("{number} is not a provisioned user")))
                            }
                            Some(user) if kind == UserKind::Dispatcher && user.kind != UserKind::Dispatcher => {
                                return Err(invalid(file, field(key), format!("{number} is not a dispatcher")))
                            }
                            Some(_) => numbers.push(number),
                        }
                    }
                }
                numbers.sort();
                numbers.dedup();
                Ok(numbers)
            };
            let group = Group {
                members: expand(&raw.members, "members", UserKind::Terminal)?,
                dispatchers: expand(&raw.dispatchers, "dispatchers", UserKind::Dispatcher)?,
                number: number.clone(),
                priority: raw.priority,
            };
            if groups.insert(number.clone(), group).is_some() {
                return Err(invalid(
                    file,
                    field("number"),
                    format!("group {number} is provisioned twice"),
                ));
            }
        }
        Ok(Subscribers { users, groups })
    }

    /// A user.
    pub fn user(&self, number: &Number) -> Option<&User> {
        self.users.get(number)
    }

    /// A group.
    pub fn group(&self, number: &Number) -> Option<&Group> {
        self.groups.get(number)
    }

    /// The groups a user belongs to (as member or dispatcher).
    pub fn groups_of<'a>(&'a self, user: &'a Number) -> impl Iterator<Item = &'a Group> + 'a {
        self.groups
            .values()
            .filter(move |group| group.members.contains(user) || group.dispatchers.contains(user))
    }

    /// Number of users.
    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    /// Number of groups.
    pub fn group_count(&self) -> usize {
        self.groups.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn number(text: &str) -> Number {
        Number::parse(text).unwrap()
    }

    #[test]
    fn demo_data_is_the_documented_one_node_domain() {
        let network = Network::from_toml("demo", DEMO_NETWORK).unwrap();
        assert_eq!(network.tcfs().len(), 1);
        let subscribers = Subscribers::from_toml("demo", DEMO_SUBSCRIBERS).unwrap();
        for user in (1001..=1010).chain(9001..=9002) {
            let user = subscribers.user(&number(&user.to_string())).unwrap();
            assert_eq!(user.password, "demo");
            assert_eq!(network.home_of_user(&user.number).unwrap().name, "tcf-1");
        }
        assert_eq!(subscribers.user(&number("9001")).unwrap().kind, UserKind::Dispatcher);
        assert_eq!(subscribers.group(&number("2001")).unwrap().members.len(), 10);
        assert_eq!(subscribers.group(&number("2001")).unwrap().dispatchers.len(), 2);
        assert_eq!(subscribers.group(&number("2002")).unwrap().members.len(), 5);
        assert_eq!(network.home_of_group(&number("2002")).unwrap().name, "tcf-1");
        assert_eq!(subscribers.groups_of(&number("1003")).count(), 2);
    }

    #[test]
    fn example_network_of_three_tcfs() {
        let network = Network::from_toml("network", include_str!("../../config/example/network.toml")).unwrap();
        let subscribers =
            Subscribers::from_toml("subscribers", include_str!("../../config/example/subscribers.toml")).unwrap();
        assert_eq!(network.tcfs().len(), 3);
        for group in ["2100", "2200", "2300"] {
            assert!(subscribers.group(&number(group)).is_some());
            assert!(network.home_of_group(&number(group)).is_some());
        }
        for tcf in network.tcfs() {
            assert!(tcf.sip.ip().is_loopback());
        }
    }

    #[test]
    fn errors_name_the_entry() {
        let error = Network::from_toml("n", "[[tcf]]\nname = \"a\"\nsip = \"x\"\n").unwrap_err();
        assert!(error.field.contains("tcf[0].sip"), "{error}");
        let overlap = "[[tcf]]\nname = \"a\"\nsip = \"127.0.0.1:1\"\nusers = [\"1000-1999\"]\n\
                       [[tcf]]\nname = \"b\"\nsip = \"127.0.0.1:2\"\nusers = [\"1500-2999\"]\n";
        assert!(Network::from_toml("n", overlap)
            .unwrap_err()
            .message
            .contains("overlaps"));
        let error = Subscribers::from_toml(
            "s",
            "[[user]]\nnumber = \"1\"\npassword = \"p\"\n[[group]]\nnumber = \"2\"\nmembers = [\"3\"]\n",
        )
        .unwrap_err();
        assert!(error.field.contains("group[0].members"), "{error}");
        let error = Subscribers::from_toml("s", "[[user]]\nnumber = \"1\"\npassword = \"p\"\nprio = 3\n").unwrap_err();
        assert!(error.message.contains("unknown field"), "{error}");
        let error =
            Subscribers::from_toml("s", "[[user]]\nnumber = \"100000000-999999999\"\npassword = \"p\"\n").unwrap_err();
        assert!(error.message.contains("too large"), "{error}");
    }
}
