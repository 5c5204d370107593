//! Kubernetes label selectors in their string form: `pool=a,zone in (z1,z2),!tainted,tier!=db`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

/// A parsed selector; the empty selector matches every set of labels.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
    text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Exists(String),
    NotExists(String),
}

impl LabelSelector {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::NotExists(k) => !labels.contains_key(k),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Splits on commas that are not inside parentheses.
fn split_requirements(s: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' if depth == 0 => depth = 1,
            '(' => return Err("nested parentheses".to_string()),
            ')' if depth == 1 => depth = 0,
            ')' => return Err("`)` without `(`".to_string()),
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("`(` without `)`".to_string());
    }
    parts.push(&s[start..]);
    Ok(parts)
}

/// A label key: optional DNS-subdomain prefix and `/`, then a name of at most 63 characters.
fn check_key(key: &str) -> Result<String, String> {
    let name = key.rsplit_once('/').map_or(
        key,
        |(prefix, name)| {
            if prefix.is_empty() { "" } else { name }
        },
    );
    let ok = !name.is_empty()
        && name.len() <= 63
        && key.len() <= 317
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(key.to_string())
    } else {
        Err(format!("`{key}` is not a valid label key"))
    }
}

fn check_value(value: &str) -> Result<String, String> {
    let ok = value.is_empty()
        || (value.len() <= 63
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && value.starts_with(|c: char| c.is_ascii_alphanumeric())
            && value.ends_with(|c: char| c.is_ascii_alphanumeric()));
    if ok {
        Ok(value.to_string())
    } else {
        Err(format!("`{value}` is not a valid label value"))
    }
}

fn parse_set(rest: &str) -> Result<BTreeSet<String>, String> {
    let inner = rest
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| {
            format!(
                "expected a parenthesised set of values, found `{}`",
                rest.trim()
            )
        })?;
    inner.split(',').map(|v| check_value(v.trim())).collect()
}

fn parse_requirement(part: &str) -> Result<Requirement, String> {
    let part = part.trim();
    if let Some(key) = part.strip_prefix('!') {
        return Ok(Requirement::NotExists(check_key(key.trim())?));
    }
    for (op, make) in [
        (
            "!=",
            Requirement::NotEquals as fn(String, String) -> Requirement,
        ),
        ("==", Requirement::Equals),
        ("=", Requirement::Equals),
    ] {
        if let Some((key, value)) = part.split_once(op) {
            return Ok(make(check_key(key.trim())?, check_value(value.trim())?));
        }
    }
    let mut words = part.splitn(2, char::is_whitespace);
    let key = words.next().unwrap_or_default();
    match words.next().map(str::trim_start) {
        None => Ok(Requirement::Exists(check_key(key)?)),
        Some(rest) => {
            if let Some(set) = rest.strip_prefix("notin") {
                Ok(Requirement::NotIn(check_key(key)?, parse_set(set)?))
            } else if let Some(set) = rest.strip_prefix("in") {
                Ok(Requirement::In(check_key(key)?, parse_set(set)?))
            } else {
                Err(format!("`{part}`: expected =, ==, !=, in or notin"))
            }
        }
    }
}

impl FromStr for LabelSelector {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().is_empty() {
            return Ok(LabelSelector::default());
        }
        let requirements = split_requirements(s)
            .and_then(|parts| parts.into_iter().map(parse_requirement).collect())
            .map_err(|e| format!("invalid label selector `{s}`: {e}"))?;
        Ok(LabelSelector {
            requirements,
            text: s.trim().to_string(),
        })
    }
}

impl<'de> Deserialize<'de> for LabelSelector {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// A selector, a node's labels, whether it matches.
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], bool);

    #[test]
    fn matches_like_kubernetes() {
        let cases: &[Case] = &[
            ("", &[], true),
            ("pool=a", &[("pool", "a")], true),
            ("pool=a", &[("pool", "b")], false),
            ("pool==a", &[("pool", "a")], true),
            ("pool!=a", &[], true),
            ("pool!=a", &[("pool", "a")], false),
            (
                "pool=a,zone in (z1, z2)",
                &[("pool", "a"), ("zone", "z2")],
                true,
            ),
            (
                "pool=a,zone in (z1,z2)",
                &[("pool", "a"), ("zone", "z3")],
                false,
            ),
            ("zone notin (z1)", &[], true),
            ("zone notin (z1)", &[("zone", "z1")], false),
            ("bgp", &[("bgp", "")], true),
            ("!bgp", &[("bgp", "")], false),
            ("example.com/pool=a", &[("example.com/pool", "a")], true),
        ];
        for (selector, node, expected) in cases {
            let s: LabelSelector = selector.parse().unwrap();
            assert_eq!(
                s.matches(&labels(node)),
                *expected,
                "{selector} on {node:?}"
            );
        }
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "pool=a,",
            "zone in z1",
            "zone in (z1",
            "pool=a b",
            "=a",
            "zone in ((a))",
            "!",
            "a)b",
        ] {
            assert!(
                bad.parse::<LabelSelector>().is_err(),
                "{bad} should be rejected"
            );
        }
    }
}
