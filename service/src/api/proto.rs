//! The plan in herald.v1 messages, shared by the API server and `herald plan -o json`.

use herald_api::herald::v1 as pb;

use crate::plan::{Plan, Refusal, Route, RouteKind};

pub fn route_kind(kind: RouteKind) -> pb::RouteKind {
    match kind {
        RouteKind::ClusterRange => pb::RouteKind::ClusterRange,
        RouteKind::ExternalRange => pb::RouteKind::ExternalRange,
        RouteKind::LoadBalancerRange => pb::RouteKind::LoadBalancerRange,
        RouteKind::ClusterIp => pb::RouteKind::ClusterIp,
        RouteKind::ExternalIp => pb::RouteKind::ExternalIp,
        RouteKind::LoadBalancerIp => pb::RouteKind::LoadBalancerIp,
        RouteKind::ClusterRangePart => pb::RouteKind::ClusterRangePart,
        RouteKind::ExternalRangePart => pb::RouteKind::ExternalRangePart,
        RouteKind::LoadBalancerRangePart => pb::RouteKind::LoadBalancerRangePart,
    }
}

pub fn route(route: &Route, in_rib: bool) -> pb::Route {
    pb::Route {
        prefix: route.prefix.to_string(),
        next_hops: route
            .next_hops
            .iter()
            .map(|n| pb::NextHop { address: n.address.to_string(), node: n.node.clone() })
            .collect(),
        kind: route_kind(route.kind) as i32,
        sources: route.sources.iter().cloned().collect(),
        reason: route.reason.clone(),
        communities: route.communities.iter().map(ToString::to_string).collect(),
        large_communities: route.large_communities.iter().map(ToString::to_string).collect(),
        in_rib,
        part_of: route.part_of.map(|r| r.to_string()).unwrap_or_default(),
        left_out: route.left_out.iter().cloned().collect(),
    }
}

pub fn refusal(refusal: &Refusal) -> pb::Refusal {
    pb::Refusal { service: refusal.service.to_string(), ip: refusal.ip.clone(), reason: refusal.reason.clone() }
}

/// The whole plan as a ListRoutes answer (no filter, nothing known of gobgpd).
pub fn list_routes(plan: &Plan, generation: u64) -> pb::ListRoutesResponse {
    pb::ListRoutesResponse {
        routes: plan.routes.values().map(|r| route(r, false)).collect(),
        generation,
        refusals: plan.refusals.iter().map(refusal).collect(),
    }
}
