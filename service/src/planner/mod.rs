//! The planner: cluster state and config in, advertisement plan out. Pure: no IO, no async, no clock,
//! so the same inputs always give the same plan and tests are tables.
//!
//! The rules, after Calico's service advertisement:
//! 1. every CIDR of serviceClusterIPs / serviceExternalIPs / serviceLoadBalancerIPs is announced from
//!    every eligible node, next hop the node's InternalIP of the CIDR's family;
//! 2. eligible: matches the pool's nodeSelector, Ready, not excluded from external load balancers;
//! 3. a Service with externalTrafficPolicy: Local gets a host route per IP inside an allowed range,
//!    announced only from eligible nodes with a ready endpoint (else serving+terminating ones);
//! 4. an IP outside the allowed ranges is never announced, and is reported;
//! 5. headless and ExternalName Services give nothing; each IP family stands on its own;
//! 6. Services sharing a host IP share one route;
//! 7. a malformed IP is reported and skipped, and everything else is still planned.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::cluster::{ClusterState, EndpointSlice, Node, Service, TrafficPolicy};
use crate::config::{Community, Config, LargeCommunity, RangeConfig};
use crate::plan::{
    IpExplanation, IpOutcome, IpRole, NextHop, Plan, Refusal, RefusalCause, Route, RouteKind, ServiceExplanation,
};

/// Nodes carrying this label are never next hops (the upstream Kubernetes convention).
pub const EXCLUDE_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";
/// Service annotation asking for communities on its host routes (only allowlisted values apply).
pub const COMMUNITIES_ANNOTATION: &str = "herald.dev/communities";
pub const LARGE_COMMUNITIES_ANNOTATION: &str = "herald.dev/large-communities";

/// An eligible node and its announcing address per family.
struct Announcer<'a> {
    name: &'a str,
    v4: Option<IpAddr>,
    v6: Option<IpAddr>,
}

impl Announcer<'_> {
    fn address_for(&self, ip: &IpAddr) -> Option<IpAddr> {
        if ip.is_ipv4() { self.v4 } else { self.v6 }
    }

    fn next_hop_for(&self, ip: &IpAddr) -> Option<NextHop> {
        self.address_for(ip).map(|address| NextHop { node: self.name.to_string(), address })
    }
}

/// Why a node is or is not eligible; `None` when it is.
fn ineligibility(node: &Node, config: &Config) -> Option<&'static str> {
    if !config.node_selector.matches(&node.labels) {
        Some("not in this pool (nodeSelector)")
    } else if !node.ready {
        Some("node not Ready")
    } else if node.labels.contains_key(EXCLUDE_LABEL) {
        Some("node excluded from external load balancers")
    } else {
        None
    }
}

/// A configured range, resolved: the list it came from and its index there.
struct Range<'a> {
    config: &'a RangeConfig,
    role: IpRole,
    source: String,
}

impl Range<'_> {
    fn net(&self) -> IpNet {
        self.config.cidr.0
    }
}

fn ranges(config: &Config) -> Vec<Range<'_>> {
    [
        (IpRole::Cluster, &config.service_cluster_ips),
        (IpRole::External, &config.service_external_ips),
        (IpRole::LoadBalancer, &config.service_load_balancer_ips),
    ]
    .into_iter()
    .flat_map(|(role, list)| {
        list.iter().enumerate().map(move |(i, config)| Range {
            config,
            role,
            source: format!("config:{}[{i}]", role.config_list()),
        })
    })
    .collect()
}

fn range_kind(role: IpRole) -> RouteKind {
    match role {
        IpRole::Cluster => RouteKind::ClusterRange,
        IpRole::External => RouteKind::ExternalRange,
        IpRole::LoadBalancer => RouteKind::LoadBalancerRange,
    }
}

fn host_net(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

/// Computes the plan.
pub fn plan(state: &ClusterState, config: &Config) -> Plan {
    let mut plan = Plan::default();
    // Eligible nodes by name (sorted, so range next hops come out in node order).
    let announcers: BTreeMap<&str, Announcer> = state
        .nodes
        .values()
        .filter(|n| ineligibility(n, config).is_none())
        .map(|n| {
            let announcer = Announcer {
                name: &n.name,
                v4: n.internal_ips.iter().copied().find(IpAddr::is_ipv4),
                v6: n.internal_ips.iter().copied().find(IpAddr::is_ipv6),
            };
            (n.name.as_str(), announcer)
        })
        .collect();
    let node_addresses: BTreeSet<IpAddr> =
        state.nodes.values().flat_map(|n| n.internal_ips.iter().copied()).collect();
    let deny = |net: &IpNet| -> Option<String> {
        if net.prefix_len() == 0 {
            return Some("a default route is never announced".to_string());
        }
        config
            .deny_prefixes
            .iter()
            .find(|d| d.0.contains(net) || net.contains(&d.0))
            .map(|d| format!("overlaps denyPrefixes entry {d}"))
    };
    let ranges = ranges(config);

    // Rule 1: the ranges.
    for range in &ranges {
        let net = range.net();
        if let Some(reason) = deny(&net) {
            plan.notes.push(format!("{} ({net}) is not announced: {reason}", range.source));
            continue;
        }
        let next_hops: BTreeSet<NextHop> =
            announcers.values().filter_map(|a| a.next_hop_for(&net.addr())).collect();
        if next_hops.is_empty() {
            plan.notes.push(format!(
                "{} ({net}) is not announced: no eligible node has an {} InternalIP",
                range.source,
                if net.addr().is_ipv4() { "IPv4" } else { "IPv6" }
            ));
            continue;
        }
        let count = next_hops.len();
        let route = plan.routes.entry(net).or_insert_with(|| Route {
            prefix: net,
            kind: range_kind(range.role),
            next_hops,
            sources: BTreeSet::new(),
            reason: format!("{} range, announced from every eligible node ({count})", range.role.config_list()),
            communities: BTreeSet::new(),
            large_communities: BTreeSet::new(),
        });
        route.sources.insert(range.source.clone());
        route.communities.extend(range.config.communities.iter().copied());
        route.large_communities.extend(range.config.large_communities.iter().copied());
    }

    // Endpoint slices by Service (namespace, name), once, rather than a scan of all slices per
    // Service; keyed by borrowed names so that indexing allocates nothing per slice.
    let mut slices_by_service: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
    for slice in state.endpoint_slices.values() {
        if let Some(service) = slice.service_name.as_deref() {
            slices_by_service.entry((slice.key.namespace.as_str(), service)).or_default().push(slice);
        }
    }
    let role_ranges: [Vec<&Range>; 3] = [IpRole::Cluster, IpRole::External, IpRole::LoadBalancer]
        .map(|role| ranges.iter().filter(|r| r.role == role).collect());

    for service in state.services.values() {
        let slices = slices_by_service
            .get(&(service.key.namespace.as_str(), service.key.name.as_str()))
            .map(Vec::as_slice)
            .unwrap_or_default();
        let explanation = plan_service(
            &mut plan,
            service,
            slices,
            state,
            config,
            &role_ranges,
            &announcers,
            &node_addresses,
            &deny,
        );
        plan.services.insert(service.key.clone(), explanation);
    }
    plan
}

/// The nodes that should announce a Local Service's host routes, and what each endpoint node is.
fn local_nodes<'a>(
    slices: &[&'a EndpointSlice],
    state: &ClusterState,
    config: &Config,
    eligible: &BTreeMap<&str, Announcer>,
    explanation: &mut ServiceExplanation,
) -> (BTreeSet<&'a str>, &'static str) {
    let mut ready = BTreeSet::new();
    let mut draining = BTreeSet::new();
    for endpoint in slices.iter().flat_map(|s| &s.endpoints) {
        let Some(node) = endpoint.node_name.as_deref() else { continue };
        let status = if endpoint.is_ready() {
            "ready endpoint"
        } else if endpoint.is_draining() {
            "serving, terminating endpoint"
        } else {
            "endpoint not ready"
        };
        let why_not = if eligible.contains_key(node) {
            None
        } else {
            Some(state.nodes.get(node).and_then(|n| ineligibility(n, config)).unwrap_or("unknown node"))
        };
        let entry = explanation.endpoint_nodes.entry(node.to_string()).or_default();
        let text = match why_not {
            None => status.to_string(),
            Some(why) => format!("{status}; not a next hop: {why}"),
        };
        // A node with several endpoints keeps its best description: ready over draining over not ready.
        if entry.is_empty() || (status == "ready endpoint" && !entry.starts_with("ready")) {
            *entry = text;
        }
        if why_not.is_some() {
            continue;
        }
        if endpoint.is_ready() {
            ready.insert(node);
        } else if endpoint.is_draining() {
            draining.insert(node);
        }
    }
    if !ready.is_empty() { (ready, "ready endpoints") } else { (draining, "serving, terminating endpoints") }
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
        let Some(value) = service.annotations.get(annotation) else { return BTreeSet::new() };
        let mut out = BTreeSet::new();
        for word in value.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            match word.parse::<T>() {
                Ok(c) if allow.contains(&c) => {
                    out.insert(c);
                }
                Ok(c) => notes.push(format!("{annotation}: {c} is not in the config's allowlist; ignored")),
                Err(e) => notes.push(format!("{annotation}: {e}; ignored")),
            }
        }
        out
    }
    (
        allowed(service, COMMUNITIES_ANNOTATION, &config.allowed_communities, notes),
        allowed(service, LARGE_COMMUNITIES_ANNOTATION, &config.allowed_large_communities, notes),
    )
}

#[allow(clippy::too_many_arguments)]
fn plan_service(
    plan: &mut Plan,
    service: &Service,
    slices: &[&EndpointSlice],
    state: &ClusterState,
    config: &Config,
    role_ranges: &[Vec<&Range>; 3],
    announcers: &BTreeMap<&str, Announcer>,
    node_addresses: &BTreeSet<IpAddr>,
    deny: &dyn Fn(&IpNet) -> Option<String>,
) -> ServiceExplanation {
    let local = service.external_traffic_policy == TrafficPolicy::Local;
    let mut explanation =
        ServiceExplanation { type_: service.type_.clone(), local_policy: local, ..Default::default() };
    if service.has_no_ips() {
        explanation.notes.push(if service.type_ == "ExternalName" {
            "ExternalName Service: no IP of its own, nothing to announce".to_string()
        } else {
            "headless Service (clusterIP: None): nothing to announce".to_string()
        });
        return explanation;
    }

    let (nodes, node_reason) = if local {
        local_nodes(slices, state, config, announcers, &mut explanation)
    } else {
        (BTreeSet::new(), "")
    };
    let (communities, large_communities) = if local {
        annotation_communities(service, config, &mut explanation.notes)
    } else {
        Default::default()
    };

    let lists = [
        (IpRole::Cluster, &service.cluster_ips),
        (IpRole::External, &service.external_ips),
        (IpRole::LoadBalancer, &service.load_balancer_ips),
    ];
    for ((role, ips), role_ranges) in lists.into_iter().zip(role_ranges) {
        for raw in ips {
            let outcome = ip_outcome(
                plan,
                service,
                raw,
                role,
                role_ranges,
                local,
                &nodes,
                node_reason,
                announcers,
                node_addresses,
                deny,
                &communities,
                &large_communities,
            );
            explanation.ips.push(IpExplanation { ip: raw.clone(), role, outcome });
        }
    }
    explanation
}

#[allow(clippy::too_many_arguments)]
fn ip_outcome(
    plan: &mut Plan,
    service: &Service,
    raw: &str,
    role: IpRole,
    role_ranges: &[&Range],
    local: bool,
    nodes: &BTreeSet<&str>,
    node_reason: &str,
    announcers: &BTreeMap<&str, Announcer>,
    node_addresses: &BTreeSet<IpAddr>,
    deny: &dyn Fn(&IpNet) -> Option<String>,
    communities: &BTreeSet<Community>,
    large_communities: &BTreeSet<LargeCommunity>,
) -> IpOutcome {
    let mut refuse = |cause: RefusalCause, reason: String| {
        plan.refusals.insert(Refusal { service: service.key.clone(), ip: raw.to_string(), role, cause, reason: reason.clone() });
        IpOutcome::NotAnnounced(reason)
    };
    let ip: IpAddr = match raw.trim().parse() {
        Ok(ip) => ip,
        Err(_) => return refuse(RefusalCause::Malformed, format!("`{raw}` is not an IP address")),
    };
    // The narrowest allowed range holding the IP decides its communities.
    let Some(range) = role_ranges.iter().filter(|r| r.net().contains(&ip)).max_by_key(|r| r.net().prefix_len())
    else {
        if role_ranges.is_empty() {
            let reason = format!("{} is empty: {} IPs are not announced", role.config_list(), role.as_str());
            // An unannounced cluster IP with no cluster ranges configured is the normal case, not news.
            return if role == IpRole::Cluster {
                IpOutcome::NotAnnounced(reason)
            } else {
                refuse(RefusalCause::NotConfigured, reason)
            };
        }
        return refuse(RefusalCause::OutsideRanges, format!("outside every range of {}", role.config_list()));
    };
    let host = host_net(ip);
    if let Some(reason) = deny(&host) {
        return refuse(RefusalCause::Denied, reason);
    }
    if node_addresses.contains(&ip) {
        return refuse(RefusalCause::NodeAddress, "is a node's address".to_string());
    }
    let covered = || {
        if plan.routes.contains_key(&range.net()) {
            IpOutcome::CoveredByRange(range.net())
        } else {
            IpOutcome::NotAnnounced(format!("its range {} is not announced (see the plan's notes)", range.net()))
        }
    };
    if !local {
        return covered();
    }
    let next_hops: BTreeSet<NextHop> =
        nodes.iter().filter_map(|n| announcers.get(n)).filter_map(|a| a.next_hop_for(&ip)).collect();
    if next_hops.is_empty() {
        return covered();
    }
    let route = plan.routes.entry(host).or_insert_with(|| Route {
        prefix: host,
        kind: role.host_route_kind(),
        next_hops: BTreeSet::new(),
        sources: BTreeSet::new(),
        reason: String::new(),
        communities: BTreeSet::new(),
        large_communities: BTreeSet::new(),
    });
    if route.kind.is_range() {
        // A configured /32 range already announces this IP from every eligible node.
        return IpOutcome::CoveredByRange(host);
    }
    route.next_hops.extend(next_hops);
    route.sources.insert(service.key.to_string());
    route.communities.extend(range.config.communities.iter().copied());
    route.communities.extend(communities.iter().copied());
    route.large_communities.extend(range.config.large_communities.iter().copied());
    route.large_communities.extend(large_communities.iter().copied());
    let nodes: Vec<&str> = route.next_hops.iter().map(|n| n.node.as_str()).collect();
    route.reason = format!("externalTrafficPolicy: Local; {node_reason} on {}", nodes.join(", "));
    IpOutcome::HostRoute(host)
}

#[cfg(test)]
mod tests;
