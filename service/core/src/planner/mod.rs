//! The planner: cluster state and config in, advertisement plan out. Pure: no IO, no async, no clock,
//! so the same inputs always give the same plan and tests are tables.
//!
//! The rules, after Calico's service advertisement:
//! 1. every CIDR of serviceClusterIPs / serviceExternalIPs / serviceLoadBalancerIPs is announced from
//!    every eligible node, next hop the node's InternalIP of the CIDR's family;
//! 2. eligible: matches the pool's nodeSelector, Ready, not excluded from external load balancers;
//! 3. a Service with externalTrafficPolicy: Local gets a host route per IP inside an allowed range,
//!    announced only from eligible nodes with a ready endpoint (else serving+terminating ones) of
//!    that IP's family; with internalTrafficPolicy: Local, its cluster IPs do (kube-proxy serves them
//!    from local endpoints only, whatever externalTrafficPolicy says). FQDN slices are not endpoints;
//! 4. an IP outside the allowed ranges is never announced; inside another pool's (`otherPools`) it
//!    is that pool's, else it is refused and reported (one pool records the Event);
//! 5. headless and ExternalName Services give nothing; each IP family stands on its own;
//! 6. Services sharing a host IP share one route;
//! 7. a malformed IP is reported and skipped, and everything else is still planned.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use rustc_hash::FxHashMap as HashMap;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::cluster::{
    AddressType, ClusterState, EndpointSlice, Node, Service, ServiceType, TrafficPolicy,
};
use crate::config::{Community, Config, LargeCommunity, PoolName, RangeConfig};
use crate::plan::{
    IpExplanation, IpOutcome, IpRole, NextHop, NodeExplanation, Plan, Refusal, RefusalCause, Route,
    RouteKind, ServiceExplanation,
};

/// Nodes carrying this label are never next hops (the upstream Kubernetes convention).
pub const EXCLUDE_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";
/// Service annotation asking for communities on its host routes (only allowlisted values apply).
pub const COMMUNITIES_ANNOTATION: &str = "herald.dev/communities";
pub const LARGE_COMMUNITIES_ANNOTATION: &str = "herald.dev/large-communities";

/// An eligible node and its announcing address per family.
#[derive(Debug, Clone, PartialEq)]
struct Announcer {
    name: String,
    /// [`spread::node_key`] of the name.
    key: u64,
    v4: Option<IpAddr>,
    v6: Option<IpAddr>,
}

impl Announcer {
    fn address_for(&self, ip: &IpAddr) -> Option<IpAddr> {
        if ip.is_ipv4() { self.v4 } else { self.v6 }
    }

    fn next_hop_for(&self, ip: &IpAddr) -> Option<NextHop> {
        self.address_for(ip).map(|address| NextHop {
            node: self.name.clone(),
            address,
        })
    }
}

/// Why a node that lost `Ready` (or never had it) is not eligible: a node-level reason, which the
/// guard's withdrawal brake tells from the intended ones (nodeSelector, exclusion label).
pub const NOT_READY: &str = "node not Ready";

/// Why a node is or is not eligible; `None` when it is.
pub fn ineligibility(node: &Node, config: &Config) -> Option<&'static str> {
    // The reasons an operator chose come first: a node both excluded and not Ready is out on purpose
    // (the withdrawal brake holds only nodes lost for node-level reasons).
    if !config.node_selector.matches(&node.labels) {
        Some("not in this pool (nodeSelector)")
    } else if node.labels.contains_key(EXCLUDE_LABEL) {
        Some("node excluded from external load balancers")
    } else if !node.ready {
        Some(NOT_READY)
    } else {
        None
    }
}

/// A configured range, resolved: the list it came from and its index there.
#[derive(Debug, Clone, PartialEq)]
struct Range {
    config: RangeConfig,
    role: IpRole,
    source: String,
}

impl Range {
    fn net(&self) -> IpNet {
        self.config.cidr.0
    }
}

fn range_kind(role: IpRole) -> RouteKind {
    match role {
        IpRole::Cluster => RouteKind::ClusterRange,
        IpRole::External => RouteKind::ExternalRange,
        IpRole::LoadBalancer => RouteKind::LoadBalancerRange,
    }
}

/// Why a prefix may never be announced, if it may not.
fn denied(config: &Config, net: &IpNet) -> Option<String> {
    if net.prefix_len() == 0 {
        return Some("a default route is never announced".to_string());
    }
    config
        .deny_prefixes
        .iter()
        .find(|d| d.0.contains(net) || net.contains(&d.0))
        .map(|d| format!("overlaps denyPrefixes entry {d}"))
}

/// What every Service's planning depends on besides the Service itself: the config, the eligible
/// nodes and the range routes. It changes only with the config or the nodes.
#[derive(Debug, Clone)]
pub struct PlanContext {
    /// Eligible nodes by name (sorted, so range next hops come out in node order).
    announcers: BTreeMap<String, Announcer>,
    /// Why each ineligible node is not eligible.
    ineligible: HashMap<String, &'static str>,
    node_addresses: BTreeSet<IpAddr>,
    /// The nodes the node selector picks (eligible or not) with an address of each family (IPv4,
    /// IPv6): what a range's part count follows, so that readiness flaps never re-cut a range.
    pool_sizes: [usize; 2],
    /// Configured ranges per role: cluster, external, load balancer.
    role_ranges: [Vec<Range>; 3],
    config: Config,
    /// The other pools' ranges, narrowest first.
    other_ranges: Vec<(PoolName, IpNet)>,
    /// The part count of each range announced in parts.
    part_counts: HashMap<IpNet, usize>,
    /// The plan of the ranges alone (rule 1), with its notes and the nodes.
    ranges_plan: Plan,
}

/// The ranges of one CIDR (it may be in several lists), merged into one route.
struct RangeGroup {
    kind: RouteKind,
    sources: BTreeSet<String>,
    communities: BTreeSet<Community>,
    large_communities: BTreeSet<LargeCommunity>,
    /// The smallest maxPaths of the group's ranges (0: no limit).
    max_paths: usize,
}

impl PlanContext {
    pub fn new(state: &ClusterState, config: &Config) -> PlanContext {
        let mut announcers = BTreeMap::new();
        let mut ineligible = HashMap::default();
        let mut nodes = BTreeMap::new();
        let mut pool_sizes = [0usize; 2];
        for node in state.nodes.values() {
            let v4 = node.internal_ips.iter().copied().find(IpAddr::is_ipv4);
            let v6 = node.internal_ips.iter().copied().find(IpAddr::is_ipv6);
            if config.node_selector.matches(&node.labels) {
                pool_sizes[0] += usize::from(v4.is_some());
                pool_sizes[1] += usize::from(v6.is_some());
            }
            let why = ineligibility(node, config);
            match why {
                None => {
                    let name = node.name.clone();
                    announcers.insert(
                        name.clone(),
                        Announcer {
                            key: spread::node_key(&name),
                            name,
                            v4,
                            v6,
                        },
                    );
                }
                Some(why) => {
                    ineligible.insert(node.name.clone(), why);
                }
            }
            nodes.insert(
                node.name.clone(),
                NodeExplanation {
                    addresses: node.internal_ips.clone(),
                    ineligible: why.map(str::to_string),
                },
            );
        }
        let role_ranges = [
            (IpRole::Cluster, &config.service_cluster_ips),
            (IpRole::External, &config.service_external_ips),
            (IpRole::LoadBalancer, &config.service_load_balancer_ips),
        ]
        .map(|(role, list)| {
            list.iter()
                .enumerate()
                .map(|(i, c)| Range {
                    config: c.clone(),
                    role,
                    source: format!("config:{}[{i}]", role.config_list()),
                })
                .collect::<Vec<_>>()
        });
        let mut context = PlanContext {
            announcers,
            ineligible,
            node_addresses: state
                .nodes
                .values()
                .flat_map(|n| n.internal_ips.iter().copied())
                .collect(),
            pool_sizes,
            role_ranges,
            config: config.clone(),
            other_ranges: {
                let mut ranges: Vec<(PoolName, IpNet)> = config
                    .other_pools
                    .iter()
                    .flat_map(|pool| pool.ranges.iter().map(|r| (pool.name.clone(), r.0)))
                    .collect();
                ranges
                    .sort_by_key(|(name, net)| (std::cmp::Reverse(net.prefix_len()), name.clone()));
                ranges
            },
            part_counts: HashMap::default(),
            ranges_plan: Plan::default(),
        };
        context.ranges_plan = context.plan_ranges();
        context.ranges_plan.nodes = Arc::new(nodes);
        context
    }

    /// The ECMP width for a range config: its own maxPaths, else the global one (0: no limit).
    fn max_paths(&self, range: &RangeConfig) -> usize {
        range.max_paths.unwrap_or(self.config.ecmp.max_paths) as usize
    }

    /// The ECMP width of a host route: in each role whose ranges hold its IP, the narrowest such
    /// range's; the smallest of those (0: no limit). The router's limit is per prefix, whatever
    /// list the IP came from, so an IP that one Service lists as external and another (or the
    /// same) as a load-balancer IP is kept to the stricter width, and to the same width however
    /// its Services are merged.
    pub fn host_max_paths(&self, prefix: &IpNet) -> usize {
        let mut k = 0;
        let mut held = false;
        for ranges in &self.role_ranges {
            if let Some(range) = ranges
                .iter()
                .filter(|r| r.net().contains(prefix))
                .max_by_key(|r| r.net().prefix_len())
            {
                held = true;
                k = tighter(k, self.max_paths(&range.config));
            }
        }
        if held {
            k
        } else {
            self.config.ecmp.max_paths as usize
        }
    }

    /// Rule 1: every range from every eligible node with an address of its family; with more such
    /// nodes in the pool than its maxPaths, as parts of itself spread over all of them ([`spread`]).
    fn plan_ranges(&mut self) -> Plan {
        let mut plan = Plan::default();
        let mut groups: BTreeMap<IpNet, RangeGroup> = BTreeMap::new();
        for range in self.role_ranges.iter().flatten() {
            let net = range.net();
            if let Some(reason) = denied(&self.config, &net) {
                plan.notes.push(format!(
                    "{} ({net}) is not announced: {reason}",
                    range.source
                ));
                continue;
            }
            let max_paths = self.max_paths(&range.config);
            let group = groups.entry(net).or_insert_with(|| RangeGroup {
                kind: range_kind(range.role),
                sources: BTreeSet::new(),
                communities: BTreeSet::new(),
                large_communities: BTreeSet::new(),
                max_paths,
            });
            group.sources.insert(range.source.clone());
            group
                .communities
                .extend(range.config.communities.iter().copied());
            group
                .large_communities
                .extend(range.config.large_communities.iter().copied());
            // One CIDR in two lists with two widths: the narrower router decides.
            if max_paths > 0 && (group.max_paths == 0 || max_paths < group.max_paths) {
                group.max_paths = max_paths;
            }
        }
        let mut routes: BTreeMap<IpNet, Route> = BTreeMap::new();
        let mut parts: Vec<Route> = Vec::new();
        for (net, group) in groups {
            let family = if net.addr().is_ipv4() { "IPv4" } else { "IPv6" };
            let hops: Vec<NextHop> = self
                .announcers
                .values()
                .filter_map(|a| a.next_hop_for(&net.addr()))
                .collect();
            if hops.is_empty() {
                plan.notes.push(format!(
                    "{} ({net}) is not announced: no eligible node has an {family} InternalIP",
                    group.sources.iter().cloned().collect::<Vec<_>>().join(", ")
                ));
                continue;
            }
            let route = |prefix: IpNet,
                         kind: RouteKind,
                         next_hops: BTreeSet<NextHop>,
                         reason: String| Route {
                prefix,
                kind,
                next_hops,
                sources: group.sources.clone(),
                reason,
                communities: group.communities.clone(),
                large_communities: group.large_communities.clone(),
                part_of: None,
                left_out: BTreeSet::new(),
            };
            let list = group.kind.as_str().trim_end_matches("-range");
            let n = hops.len();
            let k = group.max_paths;
            let pool = self.pool_sizes[usize::from(net.addr().is_ipv6())];
            if k == 0 || pool <= k {
                let reason = format!("{list} range, announced from every eligible node ({n})");
                routes.insert(
                    net,
                    route(net, group.kind, hops.into_iter().collect(), reason),
                );
                continue;
            }
            let keys: Vec<u64> = hops.iter().map(|h| self.announcers[&h.node].key).collect();
            let pick = |indices: Vec<usize>| -> BTreeSet<NextHop> {
                indices.into_iter().map(|i| hops[i].clone()).collect()
            };
            let count = spread::part_count(
                net.prefix_len(),
                self.config.ecmp.longest_prefix.of(&net),
                pool,
                k,
            );
            let width = k.min(n);
            let chosen = spread::top(&net, k, &keys);
            // Indices (into hops) of the nodes that carry some of the range.
            let mut carried: BTreeSet<usize> = chosen.iter().copied().collect();
            let mut aggregate = route(
                net,
                group.kind,
                pick(chosen),
                if count > 1 {
                    format!(
                        "{list} range, the aggregate of its {count} parts: from {width} of {n} eligible nodes (ecmp.maxPaths {k})"
                    )
                } else {
                    format!(
                        "{list} range, from {width} of {n} eligible nodes (ecmp.maxPaths {k}; it cannot be cut longer than /{})",
                        net.prefix_len()
                    )
                },
            );
            if count > 1 {
                self.part_counts.insert(net, count);
                carried.clear();
                for (i, (prefix, members)) in spread::parts(&net, count)
                    .into_iter()
                    .zip(spread::assign(&net, count, k, &keys))
                    .enumerate()
                {
                    carried.extend(members.iter().copied());
                    let reason = format!(
                        "part {} of {count} of the {list} range {net}: from {width} of {n} eligible nodes (ecmp.maxPaths {k})",
                        i + 1
                    );
                    parts.push(Route {
                        part_of: Some(net),
                        ..route(prefix, group.kind.part(), pick(members), reason)
                    });
                }
            }
            aggregate.left_out = hops
                .iter()
                .enumerate()
                .filter(|(i, _)| !carried.contains(i))
                .map(|(_, h)| h.node.clone())
                .collect();
            if !aggregate.left_out.is_empty() {
                plan.notes.push(format!(
                    "{net}: {} of {n} eligible nodes carry none of it: {count} part(s) of {width} nodes (ecmp.maxPaths {k}) are all a /{} allows (ecmp.longestPrefix)",
                    aggregate.left_out.len(),
                    self.config.ecmp.longest_prefix.of(&net)
                ));
            }
            routes.insert(net, aggregate);
        }
        // A part that is itself a configured range (nested ranges) is announced as that range.
        for part in parts {
            match routes.get(&part.prefix) {
                Some(existing) => plan.notes.push(format!(
                    "{} is both a part of {} and the range of {}: announced as the latter",
                    part.prefix,
                    part.part_of.map(|r| r.to_string()).unwrap_or_default(),
                    existing
                        .sources
                        .iter()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
                None => {
                    routes.insert(part.prefix, part);
                }
            }
        }
        plan.routes = routes
            .into_values()
            .map(|r| (r.prefix, Arc::new(r)))
            .collect();
        plan
    }

    /// The most specific announced prefix of `range` that holds `ip`: its part, when it is spread.
    fn covering(&self, range: &IpNet, ip: &IpAddr) -> IpNet {
        self.part_counts
            .get(range)
            .and_then(|count| spread::part_holding(range, *count, ip))
            .filter(|part| {
                self.ranges_plan
                    .routes
                    .get(part)
                    .is_some_and(|r| r.part_of == Some(*range))
            })
            .unwrap_or(*range)
    }

    /// The plan of the ranges alone.
    pub fn ranges_plan(&self) -> &Plan {
        &self.ranges_plan
    }

    /// Whether the two contexts plan (and explain) every Service alike: the same nodes as the
    /// planner sees them, ranges, and the config's settings a Service's planning reads. (The
    /// config is not compared whole: its source, API and gobgpd settings plan nothing.)
    pub fn plans_alike(&self, other: &PlanContext) -> bool {
        let (a, b) = (&self.config, &other.config);
        self.announcers == other.announcers
            && self.ineligible == other.ineligible
            && self.node_addresses == other.node_addresses
            && self.pool_sizes == other.pool_sizes
            && self.role_ranges == other.role_ranges
            && self.other_ranges == other.other_ranges
            && self.part_counts == other.part_counts
            && self.ranges_plan == other.ranges_plan
            && a.pool == b.pool
            && a.node_selector == b.node_selector
            && a.other_pools == b.other_pools
            && a.ecmp == b.ecmp
            && a.deny_prefixes == b.deny_prefixes
            && a.allowed_communities == b.allowed_communities
            && a.allowed_large_communities == b.allowed_large_communities
    }

    /// The other pool whose narrowest range holds `ip`, and that range.
    fn other_pool_of(&self, ip: &IpAddr) -> Option<&(PoolName, IpNet)> {
        self.other_ranges.iter().find(|(_, net)| net.contains(ip))
    }

    /// " nor of the other pools (a, b)", or nothing without other pools.
    fn other_pools_named(&self) -> String {
        if self.config.other_pools.is_empty() {
            return String::new();
        }
        let names: Vec<&str> = self
            .config
            .other_pools
            .iter()
            .map(|p| p.name.0.as_str())
            .collect();
        format!(
            ", nor inside a range of the other pools ({})",
            names.join(", ")
        )
    }
}

/// What one Service adds to the plan: its host routes (with its own next hops only; Services that
/// share an IP are merged by [`merge_host_route`]), its refused IPs and its explanation (empty from
/// [`plan_service_routes`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServicePlan {
    pub host_routes: Vec<Route>,
    pub refusals: Vec<Refusal>,
    pub explanation: ServiceExplanation,
}

/// The stricter of two ECMP widths (0: no limit).
fn tighter(a: usize, b: usize) -> usize {
    match (a, b) {
        (0, k) | (k, 0) => k,
        (a, b) => a.min(b),
    }
}

/// Merges a Service's part of a host route into the plan's route for that prefix, keeping to `k`
/// next hops (0: no limit; [`PlanContext::host_max_paths`]). Services are merged in key order, so
/// the route's kind is the first Service's and its reason the last's.
pub fn merge_host_route(routes: &mut BTreeMap<IpNet, Route>, part: &Route, k: usize) {
    match routes.get_mut(&part.prefix) {
        None => {
            routes.insert(part.prefix, part.clone());
        }
        Some(route) => merge_into(route, part, k),
    }
}

/// Adds `part`'s next hops, sources and communities to `route`; the reason names all the nodes.
fn merge_into(route: &mut Route, part: &Route, k: usize) {
    route.next_hops.extend(part.next_hops.iter().cloned());
    route.left_out.extend(part.left_out.iter().cloned());
    route.sources.extend(part.sources.iter().cloned());
    route.communities.extend(part.communities.iter().copied());
    route
        .large_communities
        .extend(part.large_communities.iter().copied());
    keep_to_max_paths(route, k);
    let why = part
        .reason
        .split(" on ")
        .next()
        .unwrap_or_default()
        .to_string();
    route.reason = host_reason(&why, route, k);
}

/// Keeps a host route's `k` (0: all) next hops that score highest for its prefix ([`spread::top`]),
/// the same ones on every replica; the others are left out. The best `k` of a union of nodes are
/// among the best `k` of each part of it, so capping each Service's part, then their merge, gives
/// the best `k` of all the endpoint nodes.
fn keep_to_max_paths(route: &mut Route, k: usize) {
    if k > 0 && route.next_hops.len() > k {
        let hops: Vec<NextHop> = std::mem::take(&mut route.next_hops).into_iter().collect();
        let keys: Vec<u64> = hops.iter().map(|h| spread::node_key(&h.node)).collect();
        let chosen: BTreeSet<usize> = spread::top(&route.prefix, k, &keys).into_iter().collect();
        for (i, hop) in hops.into_iter().enumerate() {
            if chosen.contains(&i) {
                route.next_hops.insert(hop);
            } else {
                route.left_out.insert(hop.node);
            }
        }
    }
    let announcing: BTreeSet<&str> = route.next_hops.iter().map(|h| h.node.as_str()).collect();
    route
        .left_out
        .retain(|node| !announcing.contains(node.as_str()));
}

/// "{why} on node1, node2", and how many endpoint nodes `ecmp.maxPaths` left out.
fn host_reason(why: &str, route: &Route, k: usize) -> String {
    let nodes: Vec<&str> = route.next_hops.iter().map(|n| n.node.as_str()).collect();
    let mut reason = format!("{why} on {}", nodes.join(", "));
    if !route.left_out.is_empty() {
        let all = route.next_hops.len() + route.left_out.len();
        reason.push_str(&format!(
            " ({} of {all} endpoint nodes: ecmp.maxPaths {k})",
            nodes.len()
        ));
    }
    reason
}

/// From this many Services on, they are planned on two threads.
pub const PLAN_IN_TWO_ABOVE: usize = 2_000;

/// `plan_one` of each Service, in order. Services are planned independently of each other: a large
/// cluster's are planned in two halves at once (two cores nearly halve a full plan of 20,000).
pub fn plan_each<'a>(
    services: &[&'a Service],
    plan_one: impl Fn(&'a Service) -> ServicePlan + Sync,
) -> Vec<ServicePlan> {
    plan_items(services, |s| plan_one(s))
}

/// `plan_one` of each item (a Service and what it needs), in order; in two halves at once from
/// [`PLAN_IN_TWO_ABOVE`] on.
fn plan_items<T: Sync>(
    services: &[T],
    plan_one: impl Fn(&T) -> ServicePlan + Sync,
) -> Vec<ServicePlan> {
    if services.len() < PLAN_IN_TWO_ABOVE {
        return services.iter().map(&plan_one).collect();
    }
    let (first, second) = services.split_at(services.len() / 2);
    std::thread::scope(|scope| {
        let second = scope.spawn(|| second.iter().map(&plan_one).collect::<Vec<_>>());
        let mut parts: Vec<ServicePlan> = first.iter().map(&plan_one).collect();
        match second.join() {
            Ok(rest) => parts.extend(rest),
            // As if planned on this thread: the caller handles a planner that panics.
            Err(panic) => std::panic::resume_unwind(panic),
        }
        parts
    })
}

/// The plan of the ranges alone (rule 1): what the Nodes and the config decide, whatever the
/// Services. `state`'s Services and EndpointSlices are not read.
pub fn plan_ranges(state: &ClusterState, config: &Config) -> Plan {
    PlanContext::new(state, config).ranges_plan
}

/// Computes the plan.
pub fn plan(state: &ClusterState, config: &Config) -> Plan {
    let context = Arc::new(PlanContext::new(state, config));
    // The range routes as they are (shared with the context); the host routes, which are never on
    // a range's prefix (`ip_outcome`), merged in an ordinary map and added at the end.
    let mut plan = context.ranges_plan.clone();
    let mut routes: BTreeMap<IpNet, Route> = BTreeMap::new();

    // Each Service with its EndpointSlices. The slices, ordered by (namespace, Service name) and
    // otherwise kept in key order, are joined with the Services, which are in that order: no
    // hashing or lookup of names per Service (that index cost a fifth of a full plan).
    let mut named: Vec<((&str, &str), &EndpointSlice)> = state
        .endpoint_slices
        .values()
        .filter_map(|slice| {
            slice
                .service_name
                .as_deref()
                .map(|service| ((slice.key.namespace.as_str(), service), &**slice))
        })
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let slices: Vec<&EndpointSlice> = named.iter().map(|(_, slice)| *slice).collect();
    let mut next = 0;
    let services: Vec<(&Service, &[&EndpointSlice])> = state
        .services
        .values()
        .map(|service| {
            let key = (service.key.namespace.as_str(), service.key.name.as_str());
            while next < named.len() && named[next].0 < key {
                next += 1;
            }
            let start = next;
            while next < named.len() && named[next].0 == key {
                next += 1;
            }
            (&**service, &slices[start..next])
        })
        .collect();
    let parts = plan_items(&services, |(service, slices)| {
        plan_service_routes(&context, service, slices)
    });
    for part in parts {
        for route in part.host_routes {
            let k = context.host_max_paths(&route.prefix);
            match routes.get_mut(&route.prefix) {
                None => {
                    routes.insert(route.prefix, route);
                }
                Some(merged) => merge_into(merged, &route, k),
            }
        }
        plan.refusals.extend(part.refusals);
    }
    for (prefix, route) in routes {
        plan.routes.insert(prefix, Arc::new(route));
    }
    // Explained when asked (ExplainService), from the same context and state.
    plan.services = Explanations::new(context, state);
    plan
}

/// How an endpoint stands, best first: a node's description is its best endpoint's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum EndpointState {
    Ready,
    Draining,
    NotReady,
}

impl EndpointState {
    fn of(endpoint: &crate::cluster::Endpoint) -> EndpointState {
        if endpoint.is_ready() {
            EndpointState::Ready
        } else if endpoint.is_draining() {
            EndpointState::Draining
        } else {
            EndpointState::NotReady
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            EndpointState::Ready => "ready endpoint",
            EndpointState::Draining => "serving, terminating endpoint",
            EndpointState::NotReady => "endpoint not ready",
        }
    }
}

/// The nodes that announce a Service's host routes of one IP family, and why them.
#[derive(Debug, Default)]
struct FamilyNodes<'a> {
    nodes: BTreeSet<&'a str>,
    reason: &'static str,
}

/// The announcing nodes of a Local Service, per IP family: eligible nodes with a ready endpoint of
/// that family, else (none ready) with a serving, terminating one. An IPv4 IP is announced only from
/// nodes with an IPv4 endpoint: kube-proxy on a node with only IPv6 endpoints has nowhere to send
/// it. Also fills in the explanation's endpoint nodes and notes.
fn local_nodes<'a>(
    context: &PlanContext,
    slices: &[&'a EndpointSlice],
    explanation: &mut ServiceExplanation,
    explain: bool,
) -> [FamilyNodes<'a>; 2] {
    // Per node, the best endpoint state of each family (IPv4, IPv6).
    let mut states: BTreeMap<&'a str, [Option<EndpointState>; 2]> = BTreeMap::new();
    let mut families_seen = [false; 2];
    for slice in slices {
        let family = match slice.address_type {
            AddressType::Ipv4 => 0,
            AddressType::Ipv6 => 1,
            AddressType::Fqdn | AddressType::Other(_) if !explain => continue,
            AddressType::Fqdn | AddressType::Other(_) => {
                explanation.notes.push(format!(
                    "EndpointSlice {} (addressType {}) ignored: kube-proxy routes only to IP endpoints",
                    slice.key,
                    slice.address_type.as_str()
                ));
                continue;
            }
        };
        for endpoint in &slice.endpoints {
            let Some(node) = endpoint.node_name.as_deref() else {
                continue;
            };
            families_seen[family] = true;
            let state = EndpointState::of(endpoint);
            let best = &mut states.entry(node).or_default()[family];
            *best = Some(best.map_or(state, |b| b.min(state)));
        }
    }
    let mut out: [FamilyNodes<'a>; 2] = Default::default();
    for (family, result) in out.iter_mut().enumerate() {
        let eligible = |state: EndpointState| {
            states
                .iter()
                .filter(|(node, s)| {
                    s[family] == Some(state) && context.announcers.contains_key(**node)
                })
                .map(|(node, _)| *node)
                .collect::<BTreeSet<&str>>()
        };
        let ready = eligible(EndpointState::Ready);
        *result = if ready.is_empty() {
            FamilyNodes {
                nodes: eligible(EndpointState::Draining),
                reason: "serving, terminating endpoints",
            }
        } else {
            FamilyNodes {
                nodes: ready,
                reason: "ready endpoints",
            }
        };
    }
    if !explain {
        return out;
    }
    let both = families_seen[0] && families_seen[1];
    for (node, best) in states {
        let described: Vec<String> = best
            .iter()
            .zip(["IPv4", "IPv6"])
            .filter_map(|(state, family)| {
                state.map(|s| {
                    if both {
                        format!("{family}: {}", s.as_str())
                    } else {
                        s.as_str().to_string()
                    }
                })
            })
            .collect();
        let mut text = described.join("; ");
        if !context.announcers.contains_key(node) {
            let why = context
                .ineligible
                .get(node)
                .copied()
                .unwrap_or("unknown node");
            text = format!("{text}; not a next hop: {why}");
        }
        explanation.endpoint_nodes.insert(node.to_string(), text);
    }
    out
}

/// The communities a Service asks for that the config allows; the rest are noted.
fn annotation_communities(
    service: &Service,
    config: &Config,
    notes: &mut Vec<String>,
) -> (BTreeSet<Community>, BTreeSet<LargeCommunity>) {
    fn allowed<T: std::str::FromStr<Err = String> + Ord + Copy + std::fmt::Display>(
        service: &Service,
        annotation: &str,
        allow: &[T],
        notes: &mut Vec<String>,
    ) -> BTreeSet<T> {
        let Some(value) = service.annotations.get(annotation) else {
            return BTreeSet::new();
        };
        let mut out = BTreeSet::new();
        for word in value.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            match word.parse::<T>() {
                Ok(c) if allow.contains(&c) => {
                    out.insert(c);
                }
                Ok(c) => notes.push(format!(
                    "{annotation}: {c} is not in the config's allowlist; ignored"
                )),
                Err(e) => notes.push(format!("{annotation}: {e}; ignored")),
            }
        }
        out
    }
    (
        allowed(
            service,
            COMMUNITIES_ANNOTATION,
            &config.allowed_communities,
            notes,
        ),
        allowed(
            service,
            LARGE_COMMUNITIES_ANNOTATION,
            &config.allowed_large_communities,
            notes,
        ),
    )
}

/// The traffic policy that gives an IP a host route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LocalPolicy {
    External,
    Internal,
}

impl LocalPolicy {
    fn as_str(self) -> &'static str {
        match self {
            LocalPolicy::External => "externalTrafficPolicy: Local",
            LocalPolicy::Internal => "internalTrafficPolicy: Local",
        }
    }
}

/// What a Local Service's host routes carry, shared by all of its IPs.
struct LocalAnnouncement<'a> {
    /// Per family: IPv4, IPv6.
    nodes: [FamilyNodes<'a>; 2],
    communities: BTreeSet<Community>,
    large_communities: BTreeSet<LargeCommunity>,
    external: bool,
    internal: bool,
}

impl LocalAnnouncement<'_> {
    /// The policy that gives an IP of `role` a host route of its own, if one does. An IP's own
    /// policy first: internalTrafficPolicy for cluster IPs, externalTrafficPolicy for the others;
    /// externalTrafficPolicy: Local also gives the cluster IPs one (Calico's rule, the seed lab's).
    fn policy_for(&self, role: IpRole) -> Option<LocalPolicy> {
        match role {
            IpRole::Cluster if self.internal => Some(LocalPolicy::Internal),
            _ if self.external => Some(LocalPolicy::External),
            _ => None,
        }
    }

    fn family(&self, ip: &IpAddr) -> &FamilyNodes<'_> {
        &self.nodes[usize::from(ip.is_ipv6())]
    }
}

/// Plans one Service: rules 3 to 7; with its explanation.
pub fn plan_service(
    context: &PlanContext,
    service: &Service,
    slices: &[&EndpointSlice],
) -> ServicePlan {
    plan_service_as(context, service, slices, true)
}

/// Plans one Service's routes and refusals only: what a plan is made of. Its explanation, which
/// [`plan_service`] gives, is made when asked ([`Explanations`]): making all of them cost a full
/// plan a quarter of its time.
pub fn plan_service_routes(
    context: &PlanContext,
    service: &Service,
    slices: &[&EndpointSlice],
) -> ServicePlan {
    plan_service_as(context, service, slices, false)
}

fn plan_service_as(
    context: &PlanContext,
    service: &Service,
    slices: &[&EndpointSlice],
    explain: bool,
) -> ServicePlan {
    let external = service.external_traffic_policy == TrafficPolicy::Local;
    let internal = service.internal_traffic_policy == TrafficPolicy::Local;
    let mut part = ServicePlan::default();
    if explain {
        part.explanation = ServiceExplanation {
            type_: service.type_.to_string(),
            external_traffic_policy: service.external_traffic_policy,
            internal_traffic_policy: service.internal_traffic_policy,
            ..Default::default()
        };
    }
    if service.has_no_ips() {
        if !explain {
            return part;
        }
        part.explanation
            .notes
            .push(if service.type_ == ServiceType::ExternalName {
                "ExternalName Service: no IP of its own, nothing to announce".to_string()
            } else {
                "headless Service (clusterIP: None): nothing to announce".to_string()
            });
        return part;
    }
    let announcement = (external || internal).then(|| {
        let nodes = local_nodes(context, slices, &mut part.explanation, explain);
        let (communities, large_communities) =
            annotation_communities(service, &context.config, &mut part.explanation.notes);
        LocalAnnouncement {
            nodes,
            communities,
            large_communities,
            external,
            internal,
        }
    });
    let lists = [
        (IpRole::Cluster, &service.cluster_ips),
        (IpRole::External, &service.external_ips),
        (IpRole::LoadBalancer, &service.load_balancer_ips),
    ];
    for ((role, ips), role_ranges) in lists.into_iter().zip(&context.role_ranges) {
        for raw in ips {
            let outcome = ip_outcome(
                context,
                &mut part,
                service,
                raw,
                role,
                role_ranges,
                announcement.as_ref(),
                explain,
            );
            if explain {
                part.explanation.ips.push(IpExplanation {
                    ip: raw.clone(),
                    role,
                    outcome,
                });
            }
        }
    }
    if !explain {
        // The annotations' notes, if any: not asked for.
        part.explanation = ServiceExplanation::default();
    }
    part
}

// One IP of one Service, in the Service's planning context: each argument is a different part of
// it, and a struct of them would only be built to be taken apart here.
#[allow(clippy::too_many_arguments)]
fn ip_outcome(
    context: &PlanContext,
    part: &mut ServicePlan,
    service: &Service,
    raw: &str,
    role: IpRole,
    role_ranges: &[Range],
    local: Option<&LocalAnnouncement>,
    explain: bool,
) -> IpOutcome {
    let mut refuse = |cause: RefusalCause, reason: String| {
        // Inside this pool's ranges (denied, a node's address), the refusal is this pool's alone;
        // what no pool may announce, every pool refuses, and the first pool says so.
        let event_pool = match cause {
            RefusalCause::Denied | RefusalCause::NodeAddress => context.config.pool.clone(),
            RefusalCause::Malformed | RefusalCause::OutsideRanges | RefusalCause::NotConfigured => {
                context.config.first_pool().clone()
            }
        };
        part.refusals.push(Refusal {
            service: service.key.clone(),
            ip: raw.to_string(),
            role,
            cause,
            reason: reason.clone(),
            event_pool,
        });
        IpOutcome::NotAnnounced(reason)
    };
    let ip: IpAddr = match raw.trim().parse() {
        Ok(ip) => ip,
        Err(_) => {
            return refuse(
                RefusalCause::Malformed,
                format!("`{raw}` is not an IP address"),
            );
        }
    };
    // The narrowest allowed range holding the IP decides its communities.
    let Some(range) = role_ranges
        .iter()
        .filter(|r| r.net().contains(&ip))
        .max_by_key(|r| r.net().prefix_len())
    else {
        if let Some((pool, range)) = context.other_pool_of(&ip) {
            return IpOutcome::OtherPool {
                pool: pool.clone(),
                range: *range,
            };
        }
        let others = context.other_pools_named();
        if role_ranges.is_empty() {
            let reason = format!(
                "{} is empty: {} IPs are not announced{others}",
                role.config_list(),
                role.as_str()
            );
            // An unannounced cluster IP with no cluster ranges configured is the normal case, not news.
            return if role == IpRole::Cluster {
                IpOutcome::NotAnnounced(reason)
            } else {
                refuse(RefusalCause::NotConfigured, reason)
            };
        }
        return refuse(
            RefusalCause::OutsideRanges,
            format!("outside every range of {}{others}", role.config_list()),
        );
    };
    let host = IpNet::from(ip);
    if let Some(reason) = denied(&context.config, &host) {
        return refuse(RefusalCause::Denied, reason);
    }
    if context.node_addresses.contains(&ip) {
        return refuse(RefusalCause::NodeAddress, "is a node's address".to_string());
    }
    let covered = || {
        if context.ranges_plan.routes.contains_key(&range.net()) {
            IpOutcome::CoveredByRange(context.covering(&range.net(), &ip))
        } else {
            IpOutcome::NotAnnounced(format!(
                "its range {} is not announced (see the plan's notes)",
                range.net()
            ))
        }
    };
    let Some((local, policy)) = local.and_then(|l| l.policy_for(role).map(|p| (l, p))) else {
        return covered();
    };
    let family_nodes = local.family(&ip);
    let next_hops: BTreeSet<NextHop> = family_nodes
        .nodes
        .iter()
        .filter_map(|n| context.announcers.get(*n))
        .filter_map(|a| a.next_hop_for(&ip))
        .collect();
    let family = if ip.is_ipv4() { "IPv4" } else { "IPv6" };
    if next_hops.is_empty() && !explain {
        return covered();
    }
    if next_hops.is_empty() {
        let mut note = format!(
            "{ip}: no host route: no node of this pool with an {family} InternalIP has a ready (or serving, terminating) {family} endpoint"
        );
        if policy == LocalPolicy::Internal {
            note.push_str(" (internalTrafficPolicy: Local: kube-proxy drops its traffic on every node until one has)");
        }
        part.explanation.notes.push(note);
        return covered();
    }
    if context.ranges_plan.routes.contains_key(&host) {
        // A configured /32 range already announces this IP from every eligible node.
        return IpOutcome::CoveredByRange(host);
    }
    let mut communities: BTreeSet<Community> = range.config.communities.iter().copied().collect();
    communities.extend(local.communities.iter().copied());
    let mut large_communities: BTreeSet<LargeCommunity> =
        range.config.large_communities.iter().copied().collect();
    large_communities.extend(local.large_communities.iter().copied());
    let k = context.host_max_paths(&host);
    let mut route = Route {
        prefix: host,
        kind: role.host_route_kind(),
        next_hops,
        sources: BTreeSet::from([service.key.to_string()]),
        reason: String::new(),
        communities,
        large_communities,
        part_of: None,
        left_out: BTreeSet::new(),
    };
    keep_to_max_paths(&mut route, k);
    route.reason = host_reason(
        &format!("{}; {family} {}", policy.as_str(), family_nodes.reason),
        &route,
        k,
    );
    if explain && !route.left_out.is_empty() {
        part.explanation.notes.push(format!(
            "{ip}: announced from {} of its {} endpoint nodes (ecmp.maxPaths {k}); left out: {}",
            route.next_hops.len(),
            route.next_hops.len() + route.left_out.len(),
            route
                .left_out
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    // The same IP twice in one Service (cluster and external lists): one route.
    match part.host_routes.iter_mut().find(|r| r.prefix == host) {
        Some(existing) => merge_into(existing, &route, k),
        None => part.host_routes.push(route),
    }
    IpOutcome::HostRoute(host)
}

pub mod explain;
pub mod incremental;
pub mod spread;

pub use explain::Explanations;
