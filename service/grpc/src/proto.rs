//! The plan in herald.v1 messages, shared by the API server and `herald plan -o json`.

use herald_api::herald::v1 as pb;

use std::collections::BTreeMap;

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
            .map(|n| pb::NextHop {
                address: n.address.to_string(),
                node: n.node.clone(),
            })
            .collect(),
        kind: route_kind(route.kind) as i32,
        sources: route.sources.iter().cloned().collect(),
        reason: route.reason.clone(),
        communities: route.communities.iter().map(ToString::to_string).collect(),
        large_communities: route
            .large_communities
            .iter()
            .map(ToString::to_string)
            .collect(),
        in_rib,
        part_of: route.part_of.map(|r| r.to_string()).unwrap_or_default(),
        left_out: route.left_out.iter().cloned().collect(),
    }
}

pub fn refusal(refusal: &Refusal) -> pb::Refusal {
    pb::Refusal {
        service: refusal.service.to_string(),
        ip: refusal.ip.clone(),
        reason: refusal.reason.clone(),
    }
}

/// The whole plan as a ListRoutes answer (no filter, nothing known of gobgpd).
pub fn list_routes(plan: &Plan, generation: u64) -> pb::ListRoutesResponse {
    pb::ListRoutesResponse {
        routes: plan.routes.values().map(|r| route(r, false)).collect(),
        generation,
        refusals: plan.refusals.iter().map(refusal).collect(),
    }
}

/// Every node of `plan` (or only `only`), with the prefixes it announces or was left out of.
pub fn nodes(plan: &Plan, only: Option<&str>) -> Vec<pb::NodeView> {
    let mut views: BTreeMap<&str, pb::NodeView> = plan
        .nodes
        .iter()
        .filter(|(name, _)| only.is_none_or(|o| o == name.as_str()))
        .map(|(name, node)| {
            let view = pb::NodeView {
                name: name.clone(),
                addresses: node.addresses.iter().map(ToString::to_string).collect(),
                eligible: node.ineligible.is_none(),
                reason: node.ineligible.clone().unwrap_or_default(),
                ..Default::default()
            };
            (name.as_str(), view)
        })
        .collect();
    // One walk over the routes, in prefix order, for all the nodes.
    for route in plan.routes.values() {
        for hop in &route.next_hops {
            if let Some(view) = views.get_mut(hop.node.as_str()) {
                view.routes.push(pb::NodeRoute {
                    prefix: route.prefix.to_string(),
                    kind: route_kind(route.kind) as i32,
                    part_of: route.part_of.map(|r| r.to_string()).unwrap_or_default(),
                });
                match route.kind {
                    kind if kind.is_part() => view.parts += 1,
                    kind if kind.is_range() => view.ranges += 1,
                    _ => view.host_routes += 1,
                }
            }
        }
        for node in &route.left_out {
            if let Some(view) = views.get_mut(node.as_str()) {
                view.left_out_of.push(route.prefix.to_string());
            }
        }
    }
    views.into_values().collect()
}
