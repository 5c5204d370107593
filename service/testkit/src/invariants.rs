//! What must hold of every plan, whatever the cluster state and config: the safety rules of the
//! planner restated independently of how it computes, for the fuzz targets (`fuzz/`) and the hostile
//! input tests (`service/tests/hostile_input.rs`) to check against.
//!
//! The checks deliberately do not call into the planner: eligibility, ranges and deny prefixes are
//! recomputed here from the config, so a bug in the planner cannot hide behind the same bug here.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::cluster::{ClusterState, Node, ObjectKey, Service, TrafficPolicy};
use crate::config::{Config, RangeConfig};
use crate::plan::{IpOutcome, IpRole, Plan, RefusalCause, RouteKind};
use herald_core::planner::EXCLUDE_LABEL;

/// At most this many violations are listed in the error; the count is always given.
const MAX_LISTED: usize = 20;

struct Violations(Vec<String>);

impl Violations {
    fn push(&mut self, message: String) {
        self.0.push(message);
    }

    fn into_result(self, what: &str) -> Result<(), String> {
        if self.0.is_empty() {
            return Ok(());
        }
        let mut out = format!("{} {what} invariant violation(s):", self.0.len());
        for v in self.0.iter().take(MAX_LISTED) {
            let _ = write!(out, "\n  - {v}");
        }
        if self.0.len() > MAX_LISTED {
            let _ = write!(out, "\n  - ... and {} more", self.0.len() - MAX_LISTED);
        }
        Err(out)
    }
}

fn role_ranges(config: &Config, role: IpRole) -> &[RangeConfig] {
    match role {
        IpRole::Cluster => &config.service_cluster_ips,
        IpRole::External => &config.service_external_ips,
        IpRole::LoadBalancer => &config.service_load_balancer_ips,
    }
}

fn role_of_kind(kind: RouteKind) -> IpRole {
    match kind {
        RouteKind::ClusterRange | RouteKind::ClusterIp | RouteKind::ClusterRangePart => {
            IpRole::Cluster
        }
        RouteKind::ExternalRange | RouteKind::ExternalIp | RouteKind::ExternalRangePart => {
            IpRole::External
        }
        RouteKind::LoadBalancerRange
        | RouteKind::LoadBalancerIp
        | RouteKind::LoadBalancerRangePart => IpRole::LoadBalancer,
    }
}

fn service_ips(service: &Service, role: IpRole) -> &[String] {
    match role {
        IpRole::Cluster => &service.cluster_ips,
        IpRole::External => &service.external_ips,
        IpRole::LoadBalancer => &service.load_balancer_ips,
    }
}

const ROLES: [IpRole; 3] = [IpRole::Cluster, IpRole::External, IpRole::LoadBalancer];

/// Eligibility restated from the planner's rules: in the pool, Ready, not excluded.
fn eligible(node: &Node, config: &Config) -> bool {
    config.node_selector.matches(&node.labels)
        && node.ready
        && !node.labels.contains_key(EXCLUDE_LABEL)
}

/// A default route, or overlapping a deny prefix.
fn denied(net: &IpNet, config: &Config) -> bool {
    net.prefix_len() == 0
        || config
            .deny_prefixes
            .iter()
            .any(|d| d.0.contains(net) || net.contains(&d.0))
}

/// The most next hops `route` may have, if limited: for a range (or a part of one), the smallest
/// maxPaths of the configured ranges of that CIDR; for a host route, the smallest of, per list whose
/// ranges hold its IP, the narrowest such range's; either falling back to ecmp.maxPaths.
fn max_paths(config: &Config, route: &crate::plan::Route) -> Option<usize> {
    let of = |r: &RangeConfig| r.max_paths.unwrap_or(config.ecmp.max_paths) as usize;
    let k = if route.kind.is_range() {
        let whole = route.part_of.unwrap_or(route.prefix);
        ROLES
            .iter()
            .flat_map(|role| role_ranges(config, *role))
            .filter(|r| r.cidr.0 == whole)
            .map(of)
            .filter(|k| *k > 0)
            .min()?
    } else {
        // Per role, the narrowest range holding the IP; the smallest positive width of those.
        let widths: Vec<usize> = ROLES
            .iter()
            .filter_map(|role| {
                role_ranges(config, *role)
                    .iter()
                    .filter(|r| r.cidr.0.contains(&route.prefix))
                    .max_by_key(|r| r.cidr.0.prefix_len())
            })
            .map(of)
            .collect();
        if widths.is_empty() {
            config.ecmp.max_paths as usize
        } else {
            widths.into_iter().filter(|k| *k > 0).min().unwrap_or(0)
        }
    };
    (k > 0).then_some(k)
}

/// Inside a range of one of the other pools.
fn in_other_pool(config: &Config, ip: &IpAddr) -> bool {
    config
        .other_pools
        .iter()
        .flat_map(|p| &p.ranges)
        .any(|r| r.0.contains(ip))
}

fn host_net(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

/// The only way an IP string is read: Rust's strict parser (no leading zeros, no zone ids, no
/// shorthand), after trimming surrounding whitespace.
fn strict_ip(raw: &str) -> Option<IpAddr> {
    raw.trim().parse().ok()
}

/// Checks `plan` against `state` and `config`:
///
/// - every route is keyed by its own prefix, has at least one next hop and at most its maxPaths, is
///   no default route, has no host bits set and overlaps no deny prefix;
/// - a range route is exactly a configured CIDR of its kind's list, a part a smaller part of one
///   (no longer than ecmp.longestPrefix); a host route is a /32 or /128 inside a configured range of
///   its kind's list, and never a node's own address;
/// - every next hop is an eligible node (pool, Ready, not excluded) and one of that node's
///   InternalIPs, of the prefix's family;
/// - a host route comes only from Local Services that list its IP (strictly parsed) under a role whose
///   ranges hold it (internalTrafficPolicy: Local alone: the cluster role), and each of its next
///   hops has a ready or serving-terminating endpoint of the IP's family of one of those Services;
/// - an IP explained as another pool's is inside that pool's range and outside this pool's;
/// - no refused IP is announced: a refusal's IP is `NotAnnounced` in its Service's explanation, and the
///   cause is true (malformed ones do not parse, outside ones are outside this pool's and the other
///   pools' ranges, ...), and one pool records its Event;
/// - every Service has an explanation listing each of its IPs once, and what an explanation says is
///   announced is in the plan.
pub fn check_plan_invariants(
    state: &ClusterState,
    config: &Config,
    plan: &Plan,
) -> Result<(), String> {
    let mut v = Violations(Vec::new());
    let node_addresses: BTreeSet<IpAddr> = state
        .nodes
        .values()
        .flat_map(|n| n.internal_ips.iter().copied())
        .collect();

    for (key, route) in &plan.routes {
        let prefix = route.prefix;
        if *key != prefix {
            v.push(format!("route keyed {key} has prefix {prefix}"));
        }
        if route.next_hops.is_empty() {
            v.push(format!("route {prefix} has no next hop"));
        }
        if prefix.trunc() != prefix {
            v.push(format!("route {prefix} has host bits set"));
        }
        if denied(&prefix, config) {
            v.push(format!(
                "route {prefix} is a default route or overlaps a denyPrefixes entry"
            ));
        }
        let role = role_of_kind(route.kind);
        let ranges = role_ranges(config, role);
        if route.kind.is_part() {
            let whole = route
                .part_of
                .filter(|whole| ranges.iter().any(|r| r.cidr.0 == *whole));
            match whole {
                None => v.push(format!(
                    "part {prefix} ({}) is a part of no CIDR of {}",
                    route.kind,
                    role.config_list()
                )),
                Some(whole) => {
                    if !whole.contains(&prefix) || whole.prefix_len() >= prefix.prefix_len() {
                        v.push(format!("part {prefix} is no smaller part of {whole}"));
                    }
                    if prefix.prefix_len() > config.ecmp.longest_prefix.of(&prefix) {
                        v.push(format!("part {prefix} is longer than ecmp.longestPrefix"));
                    }
                }
            }
        } else if route.kind.is_range() {
            if !ranges.iter().any(|r| r.cidr.0 == prefix) {
                v.push(format!(
                    "range route {prefix} ({}) is no CIDR of {}",
                    route.kind,
                    role.config_list()
                ));
            }
        } else {
            if prefix.prefix_len() != prefix.max_prefix_len() {
                v.push(format!(
                    "host route {prefix} ({}) is not a host prefix",
                    route.kind
                ));
            }
            if !ranges.iter().any(|r| r.cidr.0.contains(&prefix)) {
                v.push(format!(
                    "host route {prefix} ({}) lies outside every range of {}",
                    route.kind,
                    role.config_list()
                ));
            }
            if node_addresses.contains(&prefix.addr()) {
                v.push(format!("host route {prefix} is a node's own address"));
            }
        }
        if let Some(k) = max_paths(config, route).filter(|k| route.next_hops.len() > *k) {
            v.push(format!(
                "route {prefix} has {} next hops, above ecmp.maxPaths {k}",
                route.next_hops.len()
            ));
        }
        for hop in &route.next_hops {
            match state.nodes.get(&hop.node) {
                None => v.push(format!(
                    "route {prefix}: next hop node {} does not exist",
                    hop.node
                )),
                Some(node) => {
                    if !eligible(node, config) {
                        v.push(format!(
                            "route {prefix}: next hop node {} is not eligible",
                            hop.node
                        ));
                    }
                    if !node.internal_ips.contains(&hop.address) {
                        v.push(format!(
                            "route {prefix}: next hop {} is not an InternalIP of node {}",
                            hop.address, hop.node
                        ));
                    }
                }
            }
            if hop.address.is_ipv4() != prefix.addr().is_ipv4() {
                v.push(format!(
                    "route {prefix}: next hop {} is of the other family",
                    hop.address
                ));
            }
        }
        if !route.kind.is_range() {
            check_host_route_sources(state, config, plan, route, &mut v);
        }
    }

    if plan.services.len() != state.services.len()
        || !plan.services.keys().eq(state.services.keys())
    {
        v.push(format!(
            "the plan explains {} Service(s), the cluster has {}",
            plan.services.len(),
            state.services.len()
        ));
    }

    for (key, explanation) in plan.services.iter() {
        let Some(service) = state.services.get(key) else {
            continue;
        };
        let listed: usize = if service.has_no_ips() {
            0
        } else {
            ROLES.iter().map(|r| service_ips(service, *r).len()).sum()
        };
        if explanation.ips.len() != listed {
            v.push(format!(
                "{key}: {} IP(s) explained, {listed} listed",
                explanation.ips.len()
            ));
        }
        for ip in &explanation.ips {
            let parsed = strict_ip(&ip.ip);
            match &ip.outcome {
                IpOutcome::HostRoute(net) => {
                    if parsed.map(host_net) != Some(*net) {
                        v.push(format!(
                            "{key}: `{}` explained as host route {net}, which is not its IP",
                            ip.ip
                        ));
                    }
                    match plan.routes.get(net) {
                        Some(route) if route.sources.contains(&key.to_string()) => {}
                        _ => v.push(format!(
                            "{key}: `{}` explained as host route {net}, which the plan lacks",
                            ip.ip
                        )),
                    }
                }
                IpOutcome::CoveredByRange(net) => {
                    match parsed {
                        Some(addr) if net.contains(&addr) => {}
                        _ => v.push(format!(
                            "{key}: `{}` explained as covered by {net}, which does not hold it",
                            ip.ip
                        )),
                    }
                    if !plan.routes.get(net).is_some_and(|r| r.kind.is_range()) {
                        v.push(format!("{key}: `{}` explained as covered by {net}, which is no announced range", ip.ip));
                    }
                }
                IpOutcome::OtherPool { pool, range } => {
                    let theirs = config
                        .other_pools
                        .iter()
                        .any(|p| p.name == *pool && p.ranges.iter().any(|r| r.0 == *range));
                    let inside = parsed.is_some_and(|addr| range.contains(&addr));
                    let ours = parsed.is_some_and(|addr| {
                        role_ranges(config, ip.role)
                            .iter()
                            .any(|r| r.cidr.0.contains(&addr))
                    });
                    if !theirs || !inside || ours {
                        v.push(format!("{key}: `{}` explained as pool {pool}'s (range {range}), which it is not", ip.ip));
                    }
                }
                IpOutcome::NotAnnounced(_) => {}
            }
        }
    }

    for refusal in &plan.refusals {
        let key = &refusal.service;
        let Some(service) = state.services.get(key) else {
            v.push(format!(
                "refusal of `{}` names Service {key}, which does not exist",
                refusal.ip
            ));
            continue;
        };
        if !service_ips(service, refusal.role).contains(&refusal.ip) {
            v.push(format!(
                "refusal of `{}` ({}): {key} has no such {} IP",
                refusal.ip,
                refusal.cause.as_str(),
                refusal.role.as_str()
            ));
        }
        let announced = plan.services.get(key).is_some_and(|e| {
            e.ips.iter().any(|i| {
                i.ip == refusal.ip
                    && i.role == refusal.role
                    && !matches!(i.outcome, IpOutcome::NotAnnounced(_))
            })
        });
        if announced {
            v.push(format!(
                "refused `{}` ({}) of {key} is announced",
                refusal.ip,
                refusal.cause.as_str()
            ));
        }
        let parsed = strict_ip(&refusal.ip);
        let cause_holds = match (refusal.cause, parsed) {
            (RefusalCause::Malformed, parsed) => parsed.is_none(),
            (_, None) => false,
            (RefusalCause::OutsideRanges, Some(ip)) => {
                let ranges = role_ranges(config, refusal.role);
                !ranges.is_empty()
                    && !ranges.iter().any(|r| r.cidr.0.contains(&ip))
                    && !in_other_pool(config, &ip)
            }
            (RefusalCause::NotConfigured, Some(ip)) => {
                role_ranges(config, refusal.role).is_empty() && !in_other_pool(config, &ip)
            }
            (RefusalCause::Denied, Some(ip)) => denied(&host_net(ip), config),
            (RefusalCause::NodeAddress, Some(ip)) => node_addresses.contains(&ip),
        };
        if !cause_holds {
            v.push(format!(
                "refusal of `{}` of {key} as {} does not hold",
                refusal.ip,
                refusal.cause.as_str()
            ));
        }
        // One pool speaks for each refusal: this one inside its own ranges, else the first by name.
        let all_pools = config
            .other_pools
            .iter()
            .map(|p| &p.name)
            .chain([&config.pool]);
        let speaker = match refusal.cause {
            RefusalCause::Denied | RefusalCause::NodeAddress => Some(&config.pool),
            _ => all_pools.min(),
        };
        if speaker != Some(&refusal.event_pool) {
            v.push(format!(
                "refusal of `{}` of {key}: its Event is pool {}'s to record, not {speaker:?}'s",
                refusal.ip, refusal.event_pool
            ));
        }
    }

    v.into_result("plan")
}

/// A host route's sources: Local Services that list its IP under a role whose ranges hold it, whose
/// endpoints are on the route's next hops.
fn check_host_route_sources(
    state: &ClusterState,
    config: &Config,
    plan: &Plan,
    route: &crate::plan::Route,
    v: &mut Violations,
) {
    let prefix = route.prefix;
    if route.sources.is_empty() {
        v.push(format!("host route {prefix} has no source Service"));
    }
    let mut endpoint_nodes: BTreeSet<&str> = BTreeSet::new();
    for source in &route.sources {
        let Some((namespace, name)) = source.split_once('/') else {
            v.push(format!(
                "host route {prefix}: source `{source}` is not namespace/name"
            ));
            continue;
        };
        let key = ObjectKey::new(namespace, name);
        let Some(service) = state.services.get(&key) else {
            v.push(format!(
                "host route {prefix}: source Service {source} does not exist"
            ));
            continue;
        };
        let internal_only = service.external_traffic_policy != TrafficPolicy::Local;
        if internal_only && service.internal_traffic_policy != TrafficPolicy::Local {
            v.push(format!(
                "host route {prefix}: source Service {source} has no traffic policy Local"
            ));
        }
        // internalTrafficPolicy: Local alone gives host routes to cluster IPs only.
        let roles: &[IpRole] = if internal_only {
            &[IpRole::Cluster]
        } else {
            &ROLES
        };
        if service.has_no_ips() {
            v.push(format!(
                "host route {prefix}: source Service {source} is headless or ExternalName"
            ));
        }
        let justified = roles.iter().any(|role| {
            service_ips(service, *role)
                .iter()
                .any(|raw| strict_ip(raw).map(host_net) == Some(prefix))
                && role_ranges(config, *role)
                    .iter()
                    .any(|r| r.cidr.0.contains(&prefix))
        });
        if !justified {
            v.push(format!(
                "host route {prefix}: source Service {source} lists no such IP inside a range of its list"
            ));
        }
        let explained = plan.services.get(&key).is_some_and(|e| {
            e.ips
                .iter()
                .any(|i| i.outcome == IpOutcome::HostRoute(prefix))
        });
        if !explained {
            v.push(format!(
                "host route {prefix}: Service {source}'s explanation does not say so"
            ));
        }
        for slice in state.endpoint_slices.values() {
            if slice.key.namespace != key.namespace
                || slice.service_name.as_deref() != Some(key.name.as_str())
            {
                continue;
            }
            // Endpoints of the prefix's own family only (no FQDN ones).
            if !slice.address_type.serves(&prefix.addr()) {
                continue;
            }
            for endpoint in &slice.endpoints {
                match endpoint.node_name.as_deref() {
                    Some(node) if endpoint.is_ready() || endpoint.is_draining() => {
                        endpoint_nodes.insert(node);
                    }
                    _ => {}
                }
            }
        }
    }
    for hop in &route.next_hops {
        if !endpoint_nodes.contains(hop.node.as_str()) {
            v.push(format!(
                "host route {prefix}: next hop node {} has no ready or serving endpoint of its family of {:?}",
                hop.node, route.sources
            ));
        }
    }
}

/// Checks a guarded plan against the raw plan it was made from: the guard only takes away (routes,
/// next hops), never adds or changes a route, leaves no route without a next hop, and keeps to
/// `max_routes`. Not while the withdrawal brake holds something: it keeps paths the raw plan no
/// longer has (`brake_tests.rs` checks those).
pub fn check_guarded(raw: &Plan, guarded: &Plan, max_routes: Option<usize>) -> Result<(), String> {
    let mut v = Violations(Vec::new());
    for (prefix, route) in &guarded.routes {
        let Some(raw_route) = raw.routes.get(prefix) else {
            v.push(format!(
                "guarded plan announces {prefix}, which the raw plan does not"
            ));
            continue;
        };
        if route.next_hops.is_empty() {
            v.push(format!("guarded route {prefix} has no next hop"));
        }
        if !route.next_hops.is_subset(&raw_route.next_hops) {
            v.push(format!(
                "guarded route {prefix} has next hops the raw plan does not"
            ));
        }
        if route.kind != raw_route.kind || route.prefix != raw_route.prefix {
            v.push(format!(
                "guarded route {prefix} differs from the raw one in kind or prefix"
            ));
        }
    }
    if let Some(max) = max_routes.filter(|max| guarded.routes.len() > *max) {
        v.push(format!(
            "guarded plan has {} routes, above maxRoutes {max}",
            guarded.routes.len()
        ));
    }
    if guarded.refusals != raw.refusals || guarded.services != raw.services {
        v.push("the guard changed the plan's refusals or explanations".to_string());
    }
    v.into_result("guard")
}
