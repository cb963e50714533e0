//! Shared newtypes of the trunking domain: user and group numbers, number ranges.

use std::fmt;

/// Most digits a number may have (E.164 allows 15; dispatch systems use short numbers).
pub const MAX_DIGITS: usize = 20;

/// A user or group number: 1 to 20 decimal digits (the dialable identity of a terminal, a
/// dispatch console or a group).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Number(String);

/// Why text is not a [`Number`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a number of 1 to 20 digits")]
pub struct NumberError(pub String);

impl Number {
    /// Parses a number.
    pub fn parse(text: &str) -> Result<Number, NumberError> {
        let valid = !text.is_empty() && text.len() <= MAX_DIGITS && text.bytes().all(|byte| byte.is_ascii_digit());
        if valid {
            Ok(Number(text.to_owned()))
        } else {
            Err(NumberError(text.chars().take(40).collect()))
        }
    }

    /// The digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn value(&self) -> u64 {
        self.0.parse().unwrap_or(u64::MAX)
    }
}

impl TryFrom<String> for Number {
    type Error = NumberError;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        Number::parse(&text)
    }
}

impl From<Number> for String {
    fn from(number: Number) -> String {
        number.0
    }
}

impl fmt::Display for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A range of numbers of the same length, `1000-1999`, or a single number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NumberRange {
    digits: usize,
    low: u64,
    high: u64,
}

impl NumberRange {
    /// Parses `1000-1999` or `1000`. Both ends must have the same number of digits.
    pub fn parse(text: &str) -> Result<NumberRange, NumberError> {
        let error = || NumberError(text.chars().take(40).collect());
        let (low, high) = match text.split_once('-') {
            Some((low, high)) => (Number::parse(low.trim())?, Number::parse(high.trim())?),
            None => (Number::parse(text.trim())?, Number::parse(text.trim())?),
        };
        if low.0.len() != high.0.len() || low.value() > high.value() {
            return Err(error());
        }
        Ok(NumberRange {
            digits: low.0.len(),
            low: low.value(),
            high: high.value(),
        })
    }

    /// Whether `number` is in the range (same length, numerically between the ends).
    pub fn contains(&self, number: &Number) -> bool {
        number.0.len() == self.digits && (self.low..=self.high).contains(&number.value())
    }

    /// Every number of the range, in order (for expanding member lists; bounded by the caller).
    pub fn numbers(&self) -> impl Iterator<Item = Number> + '_ {
        (self.low..=self.high).map(move |value| Number(format!("{value:0width$}", width = self.digits)))
    }

    /// How many numbers the range holds.
    pub fn len(&self) -> u64 {
        self.high - self.low + 1
    }

    /// Never empty; present for API symmetry with `len`.
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl fmt::Display for NumberRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.low == self.high {
            write!(f, "{:0width$}", self.low, width = self.digits)
        } else {
            write!(f, "{:0width$}-{:0width$}", self.low, self.high, width = self.digits)
        }
    }
}

/// A hash map keyed by data a peer chooses (numbers, Call-IDs, branches, tags) or by the
/// node's own ids, on the per-message path: foldhash instead of the standard SipHash-1-3
/// (SipHash was 3–5% of the SIP core's instructions). foldhash is randomly seeded per process
/// and per map ("minimally DoS-resistant"): a peer cannot precompute colliding keys; it is
/// not meant to resist an attacker who recovers the seed by timing the node, which is not the
/// threat model of a trunking core behind its own network.
pub type NetMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// `ip` as its `Display` text, written into `buffer` digit by digit: the `Display` of an
/// address goes through `core::fmt`, which is most of what writing one costs. For the SIP and
/// SDP text the node writes per message.
pub fn ipv4_text(ip: std::net::Ipv4Addr, buffer: &mut [u8; 15]) -> &str {
    let mut length = 0;
    for (index, octet) in ip.octets().into_iter().enumerate() {
        if index > 0 {
            buffer[length] = b'.';
            length += 1;
        }
        if octet >= 100 {
            buffer[length] = b'0' + octet / 100;
            length += 1;
        }
        if octet >= 10 {
            buffer[length] = b'0' + octet / 10 % 10;
            length += 1;
        }
        buffer[length] = b'0' + octet % 10;
        length += 1;
    }
    // ASCII digits and dots only.
    std::str::from_utf8(&buffer[..length]).unwrap_or_default()
}

/// Appends `ip` as its `Display` writes it: IPv4 through [`ipv4_text`], IPv6 through `Display`
/// (its `::` compression rules).
pub fn push_ip(out: &mut String, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => out.push_str(ipv4_text(v4, &mut [0; 15])),
        std::net::IpAddr::V6(v6) => {
            use std::fmt::Write as _;
            // Writing into a String cannot fail.
            let _ = write!(out, "{v6}");
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ip_text_matches_display() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.100.255",
            "192.0.2.9",
            "255.255.255.255",
            "::",
            "2001:db8::1",
        ] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            let mut out = String::from("x");
            super::push_ip(&mut out, ip);
            assert_eq!(out, format!("x{ip}"));
        }
        for value in (0..=u32::MAX).step_by(9_973_919) {
            let ip = std::net::Ipv4Addr::from(value);
            assert_eq!(super::ipv4_text(ip, &mut [0; 15]), ip.to_string());
        }
    }

    use super::*;

    #[test]
    fn numbers_and_ranges() {
        assert!(Number::parse("1001").is_ok());
        for bad in ["", "10a1", "+1001", "123456789012345678901"] {
            assert!(Number::parse(bad).is_err(), "{bad}");
        }
        let range = NumberRange::parse("1000-1009").unwrap();
        assert!(range.contains(&Number::parse("1005").unwrap()));
        assert!(!range.contains(&Number::parse("01005").unwrap()));
        assert!(!range.contains(&Number::parse("1010").unwrap()));
        assert_eq!(range.numbers().count(), 10);
        let padded = NumberRange::parse("0001-0003").unwrap();
        assert_eq!(
            padded.numbers().map(String::from).collect::<Vec<_>>(),
            vec!["0001", "0002", "0003"]
        );
        assert!(NumberRange::parse("100-1000").is_err());
        assert!(NumberRange::parse("2000-1000").is_err());
        assert_eq!(NumberRange::parse("2001").unwrap().to_string(), "2001");
    }
}
