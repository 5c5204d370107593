//! From a plan to the set of paths gobgpd should hold for herald, and the diff against what it holds.
//!
//! One path per (prefix, next hop). gobgpd tells a locally originated path apart from another of
//! the same prefix by its source and its path identifier, so herald gives every path:
//!
//! - the source AS [`HERALD_SOURCE_ASN`] (`Path.source_asn`; gobgpd keeps it as the path's source
//!   and returns it in `ListPath`). Paths that operators add with `gobgp global rib add` have source
//!   AS 0, so they never replace, and are never replaced or withdrawn by, herald's paths, even with
//!   the same prefix, next hop and identifier;
//! - an identifier in herald's space, [`IDENTIFIER_TAG`] in the top four bits and the FNV-1a hash
//!   of the node's name in the other 28, probed deterministically over the sorted node set when two
//!   nodes hash alike. The same node gets the same identifier after a restart of herald, so a
//!   restarted herald finds its paths in gobgpd and keeps them.
//!
//! A path is herald's only if both hold (and it is local, not learned from a peer).

use std::collections::btree_map::{self, BTreeMap};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use crate::config::{LargeCommunity, Origin};
use crate::plan::Plan;

/// The source AS herald gives its paths: from the private-use range of RFC 6996 ("HERALD" on a
/// phone keypad is 437253). It only marks the path inside gobgpd; it is not sent to peers.
pub const HERALD_SOURCE_ASN: u32 = 4_200_437_253;
/// The top four bits of every identifier herald gives a path.
pub const IDENTIFIER_TAG: u32 = 0xA000_0000;
const TAG_MASK: u32 = 0xF000_0000;
const HASH_MASK: u32 = 0x0FFF_FFFF;

/// Whether a path identifier is in herald's space.
pub fn is_herald_identifier(identifier: u32) -> bool {
    identifier & TAG_MASK == IDENTIFIER_TAG
}

/// 32-bit FNV-1a.
pub fn fnv1a(bytes: &[u8]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for &b in bytes {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

/// Gives each name an identifier in herald's space: the hash of the name, or the next free one
/// after it when an earlier name (in sorted order) took it. The same set of names always gets the
/// same identifiers.
pub fn allocate_identifiers<'a>(names: &BTreeSet<&'a str>) -> HashMap<&'a str, u32> {
    let mut used = HashSet::with_capacity(names.len());
    let mut ids = HashMap::with_capacity(names.len());
    for &name in names {
        let mut h = fnv1a(name.as_bytes()) & HASH_MASK;
        loop {
            let id = IDENTIFIER_TAG | h;
            if used.insert(id) {
                ids.insert(name, id);
                break;
            }
            h = (h + 1) & HASH_MASK;
        }
    }
    ids
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::Ipv4, Family::Ipv6];

    pub fn of(prefix: &IpNet) -> Family {
        match prefix {
            IpNet::V4(_) => Family::Ipv4,
            IpNet::V6(_) => Family::Ipv6,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Family::Ipv4 => "ipv4-unicast",
            Family::Ipv6 => "ipv6-unicast",
        }
    }
}

/// What tells one of herald's paths from another in gobgpd (herald's source AS being implied).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PathKey {
    pub prefix: IpNet,
    pub identifier: u32,
}

/// A path's attributes, as herald sets them and as it reads them back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathAttrs {
    pub next_hop: IpAddr,
    /// ORIGIN: 0 IGP, 1 EGP, 2 INCOMPLETE.
    pub origin: u8,
    pub local_pref: Option<u32>,
    /// Sorted, no duplicates; shared by the paths of one route.
    pub communities: Arc<[u32]>,
    pub large_communities: Arc<[LargeCommunity]>,
    /// Read back with an attribute herald never sets: never equal to a path herald wants.
    pub foreign_attributes: bool,
}

pub fn origin_code(origin: Origin) -> u8 {
    match origin {
        Origin::Igp => 0,
        Origin::Egp => 1,
        Origin::Incomplete => 2,
    }
}

/// herald's paths keyed by [`PathKey`], in prefix order.
pub type PathSet = BTreeMap<PathKey, PathAttrs>;

/// The paths gobgpd should hold for `plan`.
pub fn desired_paths(plan: &Plan, origin: Origin, local_pref: Option<u32>) -> PathSet {
    // Who announces: a node's name; in the unexpected case of one node announcing a prefix with
    // two addresses, the second address gets an identifier of its own ("node\0address").
    let mut extra: Vec<String> = Vec::new();
    for route in plan.routes.values() {
        let mut previous: Option<&str> = None;
        for hop in &route.next_hops {
            if previous == Some(hop.node.as_str()) {
                extra.push(format!("{}\0{}", hop.node, hop.address));
            }
            previous = Some(hop.node.as_str());
        }
    }
    let mut names: BTreeSet<&str> =
        plan.routes.values().flat_map(|r| r.next_hops.iter().map(|h| h.node.as_str())).collect();
    names.extend(extra.iter().map(String::as_str));
    let ids = allocate_identifiers(&names);

    let origin = origin_code(origin);
    let no_communities: Arc<[u32]> = Arc::from(Vec::new());
    let no_large: Arc<[LargeCommunity]> = Arc::from(Vec::new());
    let mut paths = PathSet::new();
    for route in plan.routes.values() {
        let communities: Arc<[u32]> = if route.communities.is_empty() {
            no_communities.clone()
        } else {
            route.communities.iter().map(|c| c.0).collect()
        };
        let large: Arc<[LargeCommunity]> = if route.large_communities.is_empty() {
            no_large.clone()
        } else {
            route.large_communities.iter().copied().collect()
        };
        let mut previous: Option<&str> = None;
        for hop in &route.next_hops {
            let identifier = if previous == Some(hop.node.as_str()) {
                ids[format!("{}\0{}", hop.node, hop.address).as_str()]
            } else {
                ids[hop.node.as_str()]
            };
            previous = Some(hop.node.as_str());
            // gobgpd keeps prefixes without host bits: compare them as it will list them.
            paths.insert(
                PathKey { prefix: route.prefix.trunc(), identifier },
                PathAttrs {
                    next_hop: hop.address,
                    origin,
                    local_pref,
                    communities: communities.clone(),
                    large_communities: large.clone(),
                    foreign_attributes: false,
                },
            );
        }
    }
    paths
}

/// One path to add (or replace) or withdraw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    pub key: PathKey,
    /// For a withdrawal, the attributes gobgpd holds: herald withdraws with the full path.
    pub attrs: PathAttrs,
    pub withdraw: bool,
}

/// What to do to turn `applied` into `desired`: additions and replacements first (so that a next
/// hop that moves to another identifier is announced before the old one goes), then withdrawals.
pub fn diff(desired: &PathSet, applied: &PathSet) -> Vec<Op> {
    let mut adds = Vec::new();
    let mut withdrawals = Vec::new();
    let mut d = desired.iter().peekable();
    let mut a = applied.iter().peekable();
    loop {
        match (d.peek(), a.peek()) {
            (None, None) => break,
            (Some((dk, dv)), None) => {
                adds.push(Op { key: **dk, attrs: (*dv).clone(), withdraw: false });
                d.next();
            }
            (None, Some((ak, av))) => {
                withdrawals.push(Op { key: **ak, attrs: (*av).clone(), withdraw: true });
                a.next();
            }
            (Some((dk, dv)), Some((ak, av))) => match dk.cmp(ak) {
                std::cmp::Ordering::Less => {
                    adds.push(Op { key: **dk, attrs: (*dv).clone(), withdraw: false });
                    d.next();
                }
                std::cmp::Ordering::Greater => {
                    withdrawals.push(Op { key: **ak, attrs: (*av).clone(), withdraw: true });
                    a.next();
                }
                std::cmp::Ordering::Equal => {
                    if dv != av {
                        // Same source and identifier: gobgpd replaces the old path (implicit withdraw).
                        adds.push(Op { key: **dk, attrs: (*dv).clone(), withdraw: false });
                    }
                    d.next();
                    a.next();
                }
            },
        }
    }
    adds.append(&mut withdrawals);
    adds
}

/// Records an applied operation in `applied`.
pub fn apply(applied: &mut PathSet, op: &Op) {
    if op.withdraw {
        applied.remove(&op.key);
    } else {
        match applied.entry(op.key) {
            btree_map::Entry::Occupied(mut e) => {
                e.insert(op.attrs.clone());
            }
            btree_map::Entry::Vacant(e) => {
                e.insert(op.attrs.clone());
            }
        }
    }
}

/// Prefixes of `desired` whose every path is in `applied` as desired.
pub fn prefixes_in_rib(desired: &PathSet, applied: &PathSet) -> HashSet<IpNet> {
    let mut in_rib = HashSet::new();
    let mut current: Option<(IpNet, bool)> = None;
    for (key, attrs) in desired {
        let ok = applied.get(key) == Some(attrs);
        match &mut current {
            Some((prefix, all)) if *prefix == key.prefix => *all &= ok,
            _ => {
                if let Some((prefix, true)) = current {
                    in_rib.insert(prefix);
                }
                current = Some((key.prefix, ok));
            }
        }
    }
    if let Some((prefix, true)) = current {
        in_rib.insert(prefix);
    }
    in_rib
}

/// Paths per family.
pub fn count_by_family(paths: &PathSet) -> [u64; 2] {
    // BTreeMap orders IpNet V4 before V6: count the V4 run.
    let v4 = paths.keys().take_while(|k| matches!(k.prefix, IpNet::V4(_))).count() as u64;
    [v4, paths.len() as u64 - v4]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Community;
    use crate::plan::{NextHop, Route, RouteKind};

    fn route(prefix: &str, hops: &[(&str, &str)]) -> Route {
        Route {
            prefix: prefix.parse().unwrap(),
            kind: RouteKind::ClusterRange,
            next_hops: hops.iter().map(|(n, a)| NextHop { node: n.to_string(), address: a.parse().unwrap() }).collect(),
            sources: Default::default(),
            reason: String::new(),
            communities: [Community(100 << 16 | 1)].into_iter().collect(),
            large_communities: Default::default(),
        }
    }

    fn plan(routes: Vec<Route>) -> Plan {
        Plan { routes: routes.into_iter().map(|r| (r.prefix, r)).collect(), ..Default::default() }
    }

    #[test]
    fn fnv_matches_reference_vectors() {
        assert_eq!(fnv1a(b""), 0x811c9dc5);
        assert_eq!(fnv1a(b"a"), 0xe40c292c);
        assert_eq!(fnv1a(b"foobar"), 0xbf9cf968);
    }

    #[test]
    fn identifiers_are_tagged_stable_and_unique() {
        let p = plan(vec![
            route("198.19.32.0/20", &[("node1", "198.19.0.1"), ("node2", "198.19.0.2"), ("node3", "198.19.0.3")]),
            route("198.19.38.11/32", &[("node2", "198.19.0.2")]),
        ]);
        let d = desired_paths(&p, Origin::Igp, None);
        assert_eq!(d.len(), 4);
        let ids: BTreeSet<u32> = d.keys().map(|k| k.identifier).collect();
        assert_eq!(ids.len(), 3);
        assert!(ids.iter().all(|&id| is_herald_identifier(id)));
        let node2 = IDENTIFIER_TAG | (fnv1a(b"node2") & HASH_MASK);
        assert!(d.contains_key(&PathKey { prefix: "198.19.38.11/32".parse().unwrap(), identifier: node2 }));
        // Same plan, same identifiers.
        assert_eq!(desired_paths(&p, Origin::Igp, None), d);
    }

    #[test]
    fn collisions_are_probed_in_name_order() {
        // Find two names whose hashes agree in the low 28 bits.
        let mut seen: HashMap<u32, String> = HashMap::new();
        let (first, second) = (0..1_000_000)
            .find_map(|i| {
                let name = format!("node-{i}");
                let h = fnv1a(name.as_bytes()) & HASH_MASK;
                let other = seen.insert(h, name.clone())?;
                Some(if other < name { (other, name) } else { (name, other) })
            })
            .expect("a collision among a million names");
        let h = fnv1a(first.as_bytes()) & HASH_MASK;
        let names: BTreeSet<&str> = [first.as_str(), second.as_str()].into_iter().collect();
        let ids = allocate_identifiers(&names);
        assert_eq!(ids[first.as_str()], IDENTIFIER_TAG | h);
        assert_eq!(ids[second.as_str()], IDENTIFIER_TAG | ((h + 1) & HASH_MASK));
        // Deterministic: the same set gives the same result.
        assert_eq!(allocate_identifiers(&names), ids);
    }

    #[test]
    fn one_node_two_addresses_gets_two_identifiers() {
        let p = plan(vec![route("2001:db8::/64", &[("n", "2001:db8::1"), ("n", "2001:db8::2")])]);
        let d = desired_paths(&p, Origin::Igp, None);
        assert_eq!(d.len(), 2);
    }

    #[test]
    fn diff_adds_replaces_then_withdraws() {
        let before = desired_paths(
            &plan(vec![
                route("198.19.32.0/20", &[("node1", "198.19.0.1"), ("node2", "198.19.0.2")]),
                route("198.19.48.0/20", &[("node1", "198.19.0.1")]),
            ]),
            Origin::Igp,
            None,
        );
        let after = desired_paths(
            &plan(vec![
                route("198.19.32.0/20", &[("node1", "198.19.0.1"), ("node2", "198.19.0.22")]),
                route("198.19.64.0/20", &[("node3", "198.19.0.3")]),
            ]),
            Origin::Igp,
            None,
        );
        let ops = diff(&after, &before);
        let summary: Vec<(String, bool)> = ops.iter().map(|o| (o.key.prefix.to_string(), o.withdraw)).collect();
        assert_eq!(
            summary,
            vec![
                ("198.19.32.0/20".to_string(), false),
                ("198.19.64.0/20".to_string(), false),
                ("198.19.48.0/20".to_string(), true)
            ]
        );
        let mut applied = before.clone();
        for op in &ops {
            apply(&mut applied, op);
        }
        assert_eq!(applied, after);
        assert!(diff(&after, &applied).is_empty());
        let in_rib = prefixes_in_rib(&after, &before);
        assert!(in_rib.is_empty());
        assert_eq!(prefixes_in_rib(&after, &applied).len(), 2);
        assert_eq!(count_by_family(&applied), [3, 0]);
    }
}
