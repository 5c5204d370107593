//! The advertisement plan: every prefix herald announces, the next hops that announce it, and why.
//!
//! The planner makes a [`Plan`]; the reconciler and the API server only read it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use crate::cluster::{ObjectKey, TrafficPolicy};
use crate::config::{Community, LargeCommunity, PoolName};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouteKind {
    ClusterRange,
    ExternalRange,
    LoadBalancerRange,
    ClusterIp,
    ExternalIp,
    LoadBalancerIp,
    /// A part of a range spread over more nodes than `ecmp.maxPaths` ([`Route::part_of`]).
    ClusterRangePart,
    ExternalRangePart,
    LoadBalancerRangePart,
}

impl RouteKind {
    pub const ALL: [RouteKind; 9] = [
        RouteKind::ClusterRange,
        RouteKind::ExternalRange,
        RouteKind::LoadBalancerRange,
        RouteKind::ClusterIp,
        RouteKind::ExternalIp,
        RouteKind::LoadBalancerIp,
        RouteKind::ClusterRangePart,
        RouteKind::ExternalRangePart,
        RouteKind::LoadBalancerRangePart,
    ];

    /// A range or a part of one: announced from the pool's nodes, not from a Service's endpoints.
    pub fn is_range(self) -> bool {
        !self.is_host()
    }

    pub fn is_part(self) -> bool {
        matches!(
            self,
            RouteKind::ClusterRangePart
                | RouteKind::ExternalRangePart
                | RouteKind::LoadBalancerRangePart
        )
    }

    /// A host route of a Service IP.
    pub fn is_host(self) -> bool {
        matches!(
            self,
            RouteKind::ClusterIp | RouteKind::ExternalIp | RouteKind::LoadBalancerIp
        )
    }

    /// The list of Service IPs (and of the config's ranges) the route belongs to.
    pub fn role(self) -> IpRole {
        match self {
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

    /// The kind of a part of a range of this kind.
    pub fn part(self) -> RouteKind {
        match self {
            RouteKind::ClusterRange => RouteKind::ClusterRangePart,
            RouteKind::ExternalRange => RouteKind::ExternalRangePart,
            RouteKind::LoadBalancerRange => RouteKind::LoadBalancerRangePart,
            other => other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RouteKind::ClusterRange => "cluster-range",
            RouteKind::ExternalRange => "external-range",
            RouteKind::LoadBalancerRange => "load-balancer-range",
            RouteKind::ClusterIp => "cluster-ip",
            RouteKind::ExternalIp => "external-ip",
            RouteKind::LoadBalancerIp => "load-balancer-ip",
            RouteKind::ClusterRangePart => "cluster-range-part",
            RouteKind::ExternalRangePart => "external-range-part",
            RouteKind::LoadBalancerRangePart => "load-balancer-range-part",
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
    /// For a part of a range: the range.
    pub part_of: Option<IpNet>,
    /// Nodes that would announce the route but for `ecmp.maxPaths`: for a host route, endpoint
    /// nodes beyond the limit; for a spread range, nodes that carry none of its parts (there are
    /// more nodes than parts × maxPaths, the parts being as long as `ecmp.longestPrefix` allows).
    pub left_out: BTreeSet<String>,
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
    /// The one pool whose herald records the Kubernetes Event for this refusal: every pool refuses
    /// an IP that no pool may announce, and one Event says it.
    pub event_pool: PoolName,
}

/// What became of one IP of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpOutcome {
    /// Announced as a host route of its own.
    HostRoute(IpNet),
    /// Reachable through a range route (Cluster policy, or Local with no eligible endpoint).
    CoveredByRange(IpNet),
    /// Inside a range of another pool (`otherPools`): that pool's herald announces it, not this one.
    OtherPool { pool: PoolName, range: IpNet },
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
    pub external_traffic_policy: TrafficPolicy,
    pub internal_traffic_policy: TrafficPolicy,
    pub ips: Vec<IpExplanation>,
    /// Nodes with an endpoint of the Service, each with what herald made of it (per family when
    /// the Service has endpoints of both).
    pub endpoint_nodes: BTreeMap<String, String>,
    pub notes: Vec<String>,
}

/// The routes of a plan, by prefix.
pub type Routes = imbl::OrdMap<IpNet, Arc<Route>>;
/// The explanations of a plan, by Service: made when asked, from what the plan was made of.
pub use crate::planner::Explanations;

/// The advertisement plan.
///
/// Its collections are persistent maps of shared entries: a copy costs nothing and shares all its
/// structure, a change copies only the path to the entry changed, and two versions are compared
/// (or diffed) without visiting what they share. A plan of 20,000 Services is published after each
/// change, read by the reconciler, the API and the guard at once: a deep copy per publication, and
/// comparing two versions, cost milliseconds at that scale (BENCHMARKS.md, figures behind choices).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub routes: Routes,
    pub refusals: imbl::OrdSet<Refusal>,
    pub services: Explanations,
    /// Problems with the config or the pool that an operator should see (a range with no eligible
    /// node, a range refused by the deny list).
    pub notes: Vec<String>,
    /// Every node of the cluster, as the plan sees it (shared: it changes only with the nodes).
    pub nodes: Arc<BTreeMap<String, NodeExplanation>>,
    /// Routes the planner wanted that the guard's `maxRoutes` left out of this plan (0 under the
    /// limit): a number for metrics and alerts, beside the note that says so in words.
    pub max_routes_refused: usize,
}

/// A node, as the plan sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeExplanation {
    pub addresses: Vec<IpAddr>,
    /// Why the node announces nothing; None when it is eligible.
    pub ineligible: Option<String>,
}

impl Plan {
    /// A plan of these routes alone (the last of one prefix wins).
    pub fn from_routes(routes: impl IntoIterator<Item = Route>) -> Plan {
        Plan {
            routes: routes
                .into_iter()
                .map(|r| (r.prefix, Arc::new(r)))
                .collect(),
            ..Default::default()
        }
    }

    /// Adds (or replaces) the route of `route.prefix`.
    pub fn insert_route(&mut self, route: Route) {
        self.routes.insert(route.prefix, Arc::new(route));
    }

    /// The route of `prefix`, to change (copied first if a published plan shares it).
    pub fn route_mut(&mut self, prefix: &IpNet) -> Option<&mut Route> {
        self.routes.get_mut(prefix).map(Arc::make_mut)
    }

    /// The routes that differ between `self` and `new`, in prefix order: (prefix, route here, route
    /// there), None where absent. Visits only the parts of the two plans they do not share, so two
    /// versions of one plan are compared in time proportional to what changed between them.
    pub fn route_changes<'a, 'b>(
        &'a self,
        new: &'b Plan,
    ) -> impl Iterator<Item = (IpNet, Option<&'a Arc<Route>>, Option<&'b Arc<Route>>)> {
        self.routes.diff(&new.routes).map(|item| match item {
            imbl::ordmap::DiffItem::Add(prefix, route) => (*prefix, None, Some(route)),
            imbl::ordmap::DiffItem::Update {
                old: (prefix, old),
                new: (_, new),
            } => (*prefix, Some(old), Some(new)),
            imbl::ordmap::DiffItem::Remove(prefix, route) => (*prefix, Some(route), None),
        })
    }

    /// The number of (prefix, next hop) paths: what gobgpd will hold.
    pub fn path_count(&self) -> usize {
        self.routes.values().map(|r| r.next_hops.len()).sum()
    }
}

/// A plan as published to its readers: the plan and its generation, which grows by one per change.
#[derive(Debug, Clone, Default)]
pub struct PlanSnapshot {
    pub generation: u64,
    pub plan: Arc<Plan>,
    /// The version of the cluster state the plan was made from ([`crate::source::SourceSnapshot`]).
    pub cluster_version: u64,
    /// What the guard's withdrawal brake holds in this plan, while it is engaged.
    pub brake: Option<Arc<crate::brake::BrakeStatus>>,
    /// Whether the guard has a withdrawal brake (`guard.withdrawalBrake.enabled`).
    pub brake_enabled: bool,
    /// How the brake's last engagement ended.
    pub brake_released: Option<Arc<crate::brake::BrakeRelease>>,
    /// The plan of the ranges alone, made from the Nodes before the source's first complete state
    /// ([`crate::source::SourceSnapshot::nodes_listed`]): what it holds is announced, and nothing
    /// missing from it is withdrawn, since the Services' routes are not planned yet.
    pub partial: bool,
}
