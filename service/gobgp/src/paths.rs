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

use std::borrow::Cow;
use std::collections::btree_map::{self, BTreeMap};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use rustc_hash::FxHashMap;

use crate::config::{Community, LargeCommunity, Origin};
use crate::plan::{NextHop, Plan, Route};

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

/// The keys of every path of `prefix`, for a range of a [`PathSet`].
pub fn prefix_range(prefix: IpNet) -> std::ops::RangeInclusive<PathKey> {
    PathKey {
        prefix,
        identifier: 0,
    }..=PathKey {
        prefix,
        identifier: u32::MAX,
    }
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

/// The names whose identifiers a route's paths take, one per next hop: the node's name, or for a
/// node's second (third, ...) address of the route, "node\0address" (an unexpected case: one node
/// announcing a prefix with two addresses gets an identifier per address).
fn hop_names(route: &Route) -> impl Iterator<Item = (Cow<'_, str>, &NextHop)> {
    let mut previous: Option<&str> = None;
    route.next_hops.iter().map(move |hop| {
        let name = if previous == Some(hop.node.as_str()) {
            Cow::Owned(format!("{}\0{}", hop.node, hop.address))
        } else {
            Cow::Borrowed(hop.node.as_str())
        };
        previous = Some(hop.node.as_str());
        (name, hop)
    })
}

/// The paths gobgpd should hold for `plan`.
pub fn desired_paths(plan: &Plan, origin: Origin, local_pref: Option<u32>) -> PathSet {
    Desired::new(plan, origin, local_pref).paths
}

/// The paths of a plan, kept up to date from plan to plan: when the routes that changed name no
/// node that was not named before, and leave no name unnamed, identifiers stay as they are and only
/// the paths of the changed prefixes are derived again. Always equal to [`desired_paths`] of the
/// current plan.
#[derive(Debug, Clone)]
pub struct Desired {
    pub paths: PathSet,
    origin: u8,
    local_pref: Option<u32>,
    /// Identifier per name ([`hop_names`]).
    ids: HashMap<String, u32>,
    /// How many routes name each name.
    refs: HashMap<String, u32>,
    /// Whether every route's prefix has no host bits (so that a prefix's paths come from its route alone).
    canonical: bool,
}

/// Shares one community list between consecutive routes that have the same.
struct SharedLists<'a> {
    communities: Option<(&'a BTreeSet<Community>, Arc<[u32]>)>,
    large: Option<(&'a BTreeSet<LargeCommunity>, Arc<[LargeCommunity]>)>,
    no_communities: Arc<[u32]>,
    no_large: Arc<[LargeCommunity]>,
}

impl<'a> SharedLists<'a> {
    fn new() -> Self {
        Self {
            communities: None,
            large: None,
            no_communities: Arc::from(Vec::new()),
            no_large: Arc::from(Vec::new()),
        }
    }

    fn of(&mut self, route: &'a Route) -> (Arc<[u32]>, Arc<[LargeCommunity]>) {
        let communities = if route.communities.is_empty() {
            self.no_communities.clone()
        } else {
            match &self.communities {
                Some((set, list)) if **set == route.communities => list.clone(),
                _ => {
                    let list: Arc<[u32]> = route.communities.iter().map(|c| c.0).collect();
                    self.communities = Some((&route.communities, list.clone()));
                    list
                }
            }
        };
        let large = if route.large_communities.is_empty() {
            self.no_large.clone()
        } else {
            match &self.large {
                Some((set, list)) if **set == route.large_communities => list.clone(),
                _ => {
                    let list: Arc<[LargeCommunity]> =
                        route.large_communities.iter().copied().collect();
                    self.large = Some((&route.large_communities, list.clone()));
                    list
                }
            }
        };
        (communities, large)
    }
}

impl Desired {
    /// No plan yet: no paths.
    pub fn empty(origin: Origin, local_pref: Option<u32>) -> Self {
        Desired {
            paths: PathSet::new(),
            origin: origin_code(origin),
            local_pref,
            ids: HashMap::new(),
            refs: HashMap::new(),
            canonical: true,
        }
    }

    pub fn new(plan: &Plan, origin: Origin, local_pref: Option<u32>) -> Self {
        let mut desired = Desired::empty(origin, local_pref);
        desired.rebuild(plan);
        desired
    }

    pub fn len(&self) -> usize {
        self.paths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    fn rebuild(&mut self, plan: &Plan) {
        let mut refs: FxHashMap<Cow<'_, str>, u32> = FxHashMap::default();
        for route in plan.routes.values() {
            for (name, _) in hop_names(route) {
                *refs.entry(name).or_insert(0) += 1;
            }
        }
        let names: BTreeSet<&str> = refs.keys().map(|n| n.as_ref()).collect();
        let ids = allocate_identifiers(&names);
        let fast_ids: FxHashMap<&str, u32> = ids.iter().map(|(n, id)| (*n, *id)).collect();
        let mut lists = SharedLists::new();
        let mut paths = Vec::with_capacity(plan.routes.values().map(|r| r.next_hops.len()).sum());
        for route in plan.routes.values() {
            let (communities, large) = lists.of(route);
            let start = paths.len();
            for (name, hop) in hop_names(route) {
                paths.push((
                    PathKey {
                        prefix: route.prefix.trunc(),
                        identifier: fast_ids[name.as_ref()],
                    },
                    self.attrs(hop, &communities, &large),
                ));
            }
            // A route's keys are distinct: sorted route by route, the whole comes (nearly) sorted to
            // the stable sort of collecting into the map, which then has little to do.
            paths[start..].sort_unstable_by_key(|(key, _)| key.identifier);
        }
        // BTreeMap's collect sorts stably and builds in bulk: the last of equal keys wins, as with
        // one insert after another.
        self.paths = paths.into_iter().collect();
        self.ids = ids.into_iter().map(|(n, id)| (n.to_string(), id)).collect();
        self.refs = refs.into_iter().map(|(n, c)| (n.into_owned(), c)).collect();
        self.canonical = plan.routes.keys().all(|p| p.trunc() == *p);
    }

    fn attrs(
        &self,
        hop: &NextHop,
        communities: &Arc<[u32]>,
        large: &Arc<[LargeCommunity]>,
    ) -> PathAttrs {
        PathAttrs {
            next_hop: hop.address,
            origin: self.origin,
            local_pref: self.local_pref,
            communities: communities.clone(),
            large_communities: large.clone(),
            foreign_attributes: false,
        }
    }

    /// Goes from the paths of `old` (the plan `self` was made from) to those of `new`. Returns the
    /// prefixes whose paths may have changed, sorted; None when everything was derived again.
    pub fn update(&mut self, old: &Plan, new: &Plan) -> Option<Vec<IpNet>> {
        if std::ptr::eq(old, new) {
            return Some(Vec::new());
        }
        let changed = changed_routes(old, new, new.routes.len() / 4 + 1);
        let incremental = self.canonical
            && changed
                .as_ref()
                .is_some_and(|c| c.iter().all(|(p, _, _)| p.trunc() == *p))
            && changed.as_ref().is_some_and(|c| self.same_names(c));
        let Some(changed) = changed.filter(|_| incremental) else {
            self.rebuild(new);
            return None;
        };
        let mut prefixes = Vec::with_capacity(changed.len());
        for (prefix, _, route) in changed {
            let range = prefix_range(prefix);
            let gone: Vec<PathKey> = self.paths.range(range).map(|(k, _)| *k).collect();
            for key in gone {
                self.paths.remove(&key);
            }
            if let Some(route) = route {
                let (communities, large) = SharedLists::new().of(route);
                for (name, hop) in hop_names(route) {
                    let key = PathKey {
                        prefix,
                        identifier: self.ids[name.as_ref()],
                    };
                    let attrs = self.attrs(hop, &communities, &large);
                    self.paths.insert(key, attrs);
                }
            }
            prefixes.push(prefix);
        }
        Some(prefixes)
    }

    /// Counts the names of the changed routes over: true when the set of names stays the same
    /// (identifiers stay); false leaves `refs` to be rebuilt.
    fn same_names(&mut self, changed: &[(IpNet, Option<&Route>, Option<&Route>)]) -> bool {
        let mut delta: HashMap<Cow<'_, str>, i64> = HashMap::new();
        for (_, old, new) in changed {
            for (name, _) in old.iter().flat_map(|r| hop_names(r)) {
                *delta.entry(name).or_insert(0) -= 1;
            }
            for (name, _) in new.iter().flat_map(|r| hop_names(r)) {
                *delta.entry(name).or_insert(0) += 1;
            }
        }
        let mut counts = Vec::with_capacity(delta.len());
        for (name, d) in &delta {
            let Some(&count) = self.refs.get(name.as_ref()) else {
                return false;
            };
            let after = i64::from(count) + d;
            if after <= 0 {
                return false;
            }
            counts.push((name, after as u32));
        }
        for (name, count) in counts {
            if let Some(c) = self.refs.get_mut(name.as_ref()) {
                *c = count;
            }
        }
        true
    }
}

/// The prefixes whose route differs between `old` and `new`, with the old and the new route (None:
/// absent); None when more than `limit` differ.
#[allow(clippy::type_complexity)]
fn changed_routes<'o, 'n>(
    old: &'o Plan,
    new: &'n Plan,
    limit: usize,
) -> Option<Vec<(IpNet, Option<&'o Route>, Option<&'n Route>)>> {
    let mut changed = Vec::new();
    for (prefix, o, n) in old.route_changes(new) {
        if let (Some(o), Some(n)) = (o, n) {
            if route_paths_equal(o, n) {
                continue;
            }
        }
        changed.push((prefix, o.map(|r| &**r), n.map(|r| &**r)));
        if changed.len() > limit {
            return None;
        }
    }
    Some(changed)
}

/// Whether two routes of one prefix give the same paths (next hops and communities; the reason,
/// sources and kind do not reach gobgpd).
fn route_paths_equal(a: &Route, b: &Route) -> bool {
    a.next_hops == b.next_hops
        && a.communities == b.communities
        && a.large_communities == b.large_communities
}

/// One path to add (or replace) or withdraw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    pub key: PathKey,
    /// For a withdrawal, the attributes gobgpd holds: herald withdraws with the full path.
    pub attrs: PathAttrs,
    pub withdraw: bool,
}

/// Walks two sorted path sequences side by side: paths only in `desired` (or changed) go to `adds`,
/// paths only in `applied` to `withdrawals`.
fn walk<'a>(
    desired: impl Iterator<Item = (&'a PathKey, &'a PathAttrs)>,
    applied: impl Iterator<Item = (&'a PathKey, &'a PathAttrs)>,
    adds: &mut Vec<Op>,
    withdrawals: &mut Vec<Op>,
) {
    let mut d = desired.peekable();
    let mut a = applied.peekable();
    loop {
        match (d.peek(), a.peek()) {
            (None, None) => break,
            (Some((dk, dv)), None) => {
                adds.push(Op {
                    key: **dk,
                    attrs: (*dv).clone(),
                    withdraw: false,
                });
                d.next();
            }
            (None, Some((ak, av))) => {
                withdrawals.push(Op {
                    key: **ak,
                    attrs: (*av).clone(),
                    withdraw: true,
                });
                a.next();
            }
            (Some((dk, dv)), Some((ak, av))) => match dk.cmp(ak) {
                std::cmp::Ordering::Less => {
                    adds.push(Op {
                        key: **dk,
                        attrs: (*dv).clone(),
                        withdraw: false,
                    });
                    d.next();
                }
                std::cmp::Ordering::Greater => {
                    withdrawals.push(Op {
                        key: **ak,
                        attrs: (*av).clone(),
                        withdraw: true,
                    });
                    a.next();
                }
                std::cmp::Ordering::Equal => {
                    if dv != av {
                        // Same source and identifier: gobgpd replaces the old path (implicit withdraw).
                        adds.push(Op {
                            key: **dk,
                            attrs: (*dv).clone(),
                            withdraw: false,
                        });
                    }
                    d.next();
                    a.next();
                }
            },
        }
    }
}

/// What to do to turn `applied` into `desired`: additions and replacements first (so that a next
/// hop that moves to another identifier is announced before the old one goes), then withdrawals.
pub fn diff(desired: &PathSet, applied: &PathSet) -> Vec<Op> {
    // At least this many additions (a first push adds everything).
    let mut adds = Vec::with_capacity(desired.len().saturating_sub(applied.len()));
    let mut withdrawals = Vec::new();
    walk(desired.iter(), applied.iter(), &mut adds, &mut withdrawals);
    adds.append(&mut withdrawals);
    adds
}

/// [`diff`] restricted to the paths of `prefixes`: the same operations, in the same order, when
/// `desired` and `applied` agree everywhere else.
pub fn diff_prefixes<'a>(
    desired: &PathSet,
    applied: &PathSet,
    prefixes: impl IntoIterator<Item = &'a IpNet>,
) -> Vec<Op> {
    let mut adds = Vec::new();
    let mut withdrawals = Vec::new();
    for prefix in prefixes {
        let range = || prefix_range(*prefix);
        walk(
            desired.range(range()),
            applied.range(range()),
            &mut adds,
            &mut withdrawals,
        );
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
    // Both sets in key order: one walk through each, no lookups.
    let mut in_rib = HashSet::new();
    let mut current: Option<(IpNet, bool)> = None;
    let mut a = applied.iter().peekable();
    for (key, attrs) in desired {
        while a.next_if(|(k, _)| *k < key).is_some() {}
        let ok = a.peek().is_some_and(|(k, v)| *k == key && *v == attrs);
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

/// Whether `desired` has paths of `prefix` and `applied` holds every one of them as desired.
pub fn prefix_in_rib(desired: &PathSet, applied: &PathSet, prefix: IpNet) -> bool {
    let range = || prefix_range(prefix);
    let mut any = false;
    for (key, attrs) in desired.range(range()) {
        any = true;
        if applied.get(key) != Some(attrs) {
            return false;
        }
    }
    any
}

/// Paths per family.
pub fn count_by_family(paths: &PathSet) -> [u64; 2] {
    // BTreeMap orders IpNet V4 before V6: count the V4 run.
    let v4 = paths
        .keys()
        .take_while(|k| matches!(k.prefix, IpNet::V4(_)))
        .count() as u64;
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
            next_hops: hops
                .iter()
                .map(|(n, a)| NextHop {
                    node: n.to_string(),
                    address: a.parse().unwrap(),
                })
                .collect(),
            sources: Default::default(),
            reason: String::new(),
            communities: [Community(100 << 16 | 1)].into_iter().collect(),
            large_communities: Default::default(),
            part_of: None,
            left_out: Default::default(),
        }
    }

    fn plan(routes: Vec<Route>) -> Plan {
        Plan::from_routes(routes)
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
            route(
                "198.19.32.0/20",
                &[
                    ("node1", "198.19.0.1"),
                    ("node2", "198.19.0.2"),
                    ("node3", "198.19.0.3"),
                ],
            ),
            route("198.19.38.11/32", &[("node2", "198.19.0.2")]),
        ]);
        let d = desired_paths(&p, Origin::Igp, None);
        assert_eq!(d.len(), 4);
        let ids: BTreeSet<u32> = d.keys().map(|k| k.identifier).collect();
        assert_eq!(ids.len(), 3);
        assert!(ids.iter().all(|&id| is_herald_identifier(id)));
        let node2 = IDENTIFIER_TAG | (fnv1a(b"node2") & HASH_MASK);
        assert!(d.contains_key(&PathKey {
            prefix: "198.19.38.11/32".parse().unwrap(),
            identifier: node2
        }));
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
                Some(if other < name {
                    (other, name)
                } else {
                    (name, other)
                })
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
        let p = plan(vec![route(
            "2001:db8::/64",
            &[("n", "2001:db8::1"), ("n", "2001:db8::2")],
        )]);
        let d = desired_paths(&p, Origin::Igp, None);
        assert_eq!(d.len(), 2);
    }

    /// A plan of `routes` routes of a few nodes, some announcing one prefix with two addresses.
    fn random_route(rng: &mut herald_testkit::scale::Rng, index: u32, nodes: u32) -> Route {
        let prefix = format!("10.{}.{}.0/24", index / 256, index % 256);
        let hops: Vec<(String, String)> = (0..rng.below(4))
            .map(|_| {
                let n = rng.below(nodes);
                (
                    format!("node{n}"),
                    format!("192.0.2.{}", n * 2 + rng.below(2)),
                )
            })
            .collect();
        let hops: Vec<(&str, &str)> = hops.iter().map(|(n, a)| (n.as_str(), a.as_str())).collect();
        let mut r = route(&prefix, &hops);
        if rng.below(3) == 0 {
            r.communities.insert(Community(100 << 16 | rng.below(3)));
        }
        r
    }

    #[test]
    fn desired_kept_up_to_date_equals_desired_derived_again() {
        let mut rng = herald_testkit::scale::Rng::new(42);
        let mut plan = plan(
            (0..40)
                .map(|i| random_route(&mut rng, i, 8))
                .filter(|r| !r.next_hops.is_empty())
                .collect(),
        );
        let mut desired = Desired::new(&plan, Origin::Egp, Some(150));
        let (mut incremental, mut rebuilt) = (0, 0);
        for step in 0..2000 {
            let old = plan.clone();
            for _ in 0..1 + rng.below(3) {
                // New nodes now and then (identifiers derived again), routes coming and going.
                let nodes = if step % 50 == 0 { 12 } else { 8 };
                let index = rng.below(60);
                let r = random_route(&mut rng, index, nodes);
                if r.next_hops.is_empty() {
                    plan.routes.remove(&r.prefix);
                } else {
                    plan.insert_route(r);
                }
            }
            let changed = desired.update(&old, &plan);
            let full = desired_paths(&plan, Origin::Egp, Some(150));
            assert_eq!(desired.paths, full, "step {step}");
            match changed {
                Some(prefixes) => {
                    incremental += 1;
                    let before = desired_paths(&old, Origin::Egp, Some(150));
                    assert_eq!(
                        diff_prefixes(&full, &before, &prefixes),
                        diff(&full, &before),
                        "step {step}"
                    );
                }
                None => rebuilt += 1,
            }
        }
        assert!(
            incremental > 1000 && rebuilt > 10,
            "incremental {incremental}, rebuilt {rebuilt}"
        );
    }

    #[test]
    fn prefixes_in_rib_walks_both_sets() {
        let desired = desired_paths(
            &plan(vec![
                route(
                    "198.19.32.0/20",
                    &[("node1", "198.19.0.1"), ("node2", "198.19.0.2")],
                ),
                route("198.19.48.0/20", &[("node1", "198.19.0.1")]),
                route("198.19.64.0/20", &[("node3", "198.19.0.3")]),
            ]),
            Origin::Igp,
            None,
        );
        let mut applied = desired.clone();
        // One path of the first prefix missing, the third prefix's path with other attributes.
        let first = *applied.keys().next().unwrap();
        applied.remove(&first);
        let last = applied.values_mut().last().unwrap();
        last.origin = 2;
        let in_rib = prefixes_in_rib(&desired, &applied);
        assert_eq!(in_rib, HashSet::from(["198.19.48.0/20".parse().unwrap()]));
        assert_eq!(prefixes_in_rib(&desired, &desired).len(), 3);
        for prefix in [
            "198.19.32.0/20",
            "198.19.48.0/20",
            "198.19.64.0/20",
            "198.19.80.0/20",
        ] {
            let prefix: IpNet = prefix.parse().unwrap();
            assert_eq!(
                prefix_in_rib(&desired, &applied, prefix),
                in_rib.contains(&prefix),
                "{prefix}"
            );
        }
        assert!(prefixes_in_rib(&desired, &PathSet::new()).is_empty());
    }

    #[test]
    fn diff_adds_replaces_then_withdraws() {
        let before = desired_paths(
            &plan(vec![
                route(
                    "198.19.32.0/20",
                    &[("node1", "198.19.0.1"), ("node2", "198.19.0.2")],
                ),
                route("198.19.48.0/20", &[("node1", "198.19.0.1")]),
            ]),
            Origin::Igp,
            None,
        );
        let after = desired_paths(
            &plan(vec![
                route(
                    "198.19.32.0/20",
                    &[("node1", "198.19.0.1"), ("node2", "198.19.0.22")],
                ),
                route("198.19.64.0/20", &[("node3", "198.19.0.3")]),
            ]),
            Origin::Igp,
            None,
        );
        let ops = diff(&after, &before);
        let summary: Vec<(String, bool)> = ops
            .iter()
            .map(|o| (o.key.prefix.to_string(), o.withdraw))
            .collect();
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
