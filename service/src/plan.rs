//! The advertisement plan: every prefix herald announces, the next hops that announce it, and why.
//!
//! The planner makes a [`Plan`]; the reconciler and the API server only read it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::cluster::ObjectKey;
use crate::config::{Community, LargeCommunity};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouteKind {
    ClusterRange,
    ExternalRange,
    LoadBalancerRange,
    ClusterIp,
    ExternalIp,
    LoadBalancerIp,
}

impl RouteKind {
    pub fn is_range(self) -> bool {
        matches!(self, RouteKind::ClusterRange | RouteKind::ExternalRange | RouteKind::LoadBalancerRange)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RouteKind::ClusterRange => "cluster-range",
            RouteKind::ExternalRange => "external-range",
            RouteKind::LoadBalancerRange => "load-balancer-range",
            RouteKind::ClusterIp => "cluster-ip",
            RouteKind::ExternalIp => "external-ip",
            RouteKind::LoadBalancerIp => "load-balancer-ip",
        }
    }
}

impl fmt::Display for RouteKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A node announcing a route, with the address it is announced with.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NextHop {
    pub node: String,
    pub address: IpAddr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub prefix: IpNet,
    pub kind: RouteKind,
    pub next_hops: BTreeSet<NextHop>,
    /// `config:serviceClusterIPs[0]` or a Service's `namespace/name`.
    pub sources: BTreeSet<String>,
    pub reason: String,
    pub communities: BTreeSet<Community>,
    pub large_communities: BTreeSet<LargeCommunity>,
}

/// Which of a Service's IP lists an IP came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IpRole {
    Cluster,
    External,
    LoadBalancer,
}

impl IpRole {
    pub fn as_str(self) -> &'static str {
        match self {
            IpRole::Cluster => "cluster",
            IpRole::External => "external",
            IpRole::LoadBalancer => "load-balancer",
        }
    }

    /// The config list whose ranges allow IPs of this role.
    pub fn config_list(self) -> &'static str {
        match self {
            IpRole::Cluster => "serviceClusterIPs",
            IpRole::External => "serviceExternalIPs",
            IpRole::LoadBalancer => "serviceLoadBalancerIPs",
        }
    }

    pub fn host_route_kind(self) -> RouteKind {
        match self {
            IpRole::Cluster => RouteKind::ClusterIp,
            IpRole::External => RouteKind::ExternalIp,
            IpRole::LoadBalancer => RouteKind::LoadBalancerIp,
        }
    }
}

/// Why an IP was refused, as a category (metrics label); the refusal's reason has the details.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RefusalCause {
    /// Not a valid IP address.
    Malformed,
    /// Outside every range of its list.
    OutsideRanges,
    /// Its list (serviceExternalIPs, serviceLoadBalancerIPs) has no range at all.
    NotConfigured,
    /// Inside a deny prefix, or a default route.
    Denied,
    /// A node's own address.
    NodeAddress,
}

impl RefusalCause {
    pub const ALL: [RefusalCause; 5] = [
        RefusalCause::Malformed,
        RefusalCause::OutsideRanges,
        RefusalCause::NotConfigured,
        RefusalCause::Denied,
        RefusalCause::NodeAddress,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RefusalCause::Malformed => "malformed",
            RefusalCause::OutsideRanges => "outside-ranges",
            RefusalCause::NotConfigured => "not-configured",
            RefusalCause::Denied => "denied",
            RefusalCause::NodeAddress => "node-address",
        }
    }
}

/// An IP a Service asked for that herald does not announce (not even through a range), and why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Refusal {
    pub service: ObjectKey,
    pub ip: String,
    pub role: IpRole,
    pub cause: RefusalCause,
    pub reason: String,
}

/// What became of one IP of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpOutcome {
    /// Announced as a host route of its own.
    HostRoute(IpNet),
    /// Reachable through a range route (Cluster policy, or Local with no eligible endpoint).
    CoveredByRange(IpNet),
    /// Neither; the reason says why.
    NotAnnounced(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpExplanation {
    pub ip: String,
    pub role: IpRole,
    pub outcome: IpOutcome,
}

/// Why a Service's IPs are announced as they are.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServiceExplanation {
    pub type_: String,
    pub local_policy: bool,
    pub ips: Vec<IpExplanation>,
    /// Nodes with an endpoint of the Service, each with what herald made of it.
    pub endpoint_nodes: BTreeMap<String, String>,
    pub notes: Vec<String>,
}

/// The advertisement plan.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub routes: BTreeMap<IpNet, Route>,
    pub refusals: BTreeSet<Refusal>,
    pub services: BTreeMap<ObjectKey, ServiceExplanation>,
    /// Problems with the config or the pool that an operator should see (a range with no eligible
    /// node, a range refused by the deny list).
    pub notes: Vec<String>,
}

impl Plan {
    /// The number of (prefix, next hop) paths: what gobgpd will hold.
    pub fn path_count(&self) -> usize {
        self.routes.values().map(|r| r.next_hops.len()).sum()
    }
}

/// A plan as published to its readers: the plan and its generation, which grows by one per change.
#[derive(Debug, Clone, Default)]
pub struct PlanSnapshot {
    pub generation: u64,
    pub plan: std::sync::Arc<Plan>,
}
