//! The PlanService implementation: reads the published plan, source status and sink status; never
//! writes anything back.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use futures::Stream;
use herald_api::herald::v1 as pb;
use herald_api::herald::v1::plan_service_server::{PlanService, PlanServiceServer};
use ipnet::IpNet;
use tokio::sync::watch;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic::{Request, Response, Status};
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::HealthService;
use tracing::info;

use super::limits::{Limits, RefusedCalls};
use super::proto;
use crate::cluster::ObjectKey;
use crate::config::{ApiConfig, ApiLimits, TlsConfig};
use crate::gobgp::SinkStatus;
use crate::gobgp::inspect::{Inspector, Neighbor, WirePath};
use crate::gobgp::paths::{Family, desired_paths};
use crate::plan::{IpOutcome, Plan, PlanSnapshot, Route};
use crate::source::SourceSnapshot;

/// How long a restarted gobgpd that got herald's plan too late stays among the status alarms.
const RESTART_MISS_SHOWN: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// The channels the API reads.
#[derive(Clone)]
pub struct ApiState {
    pub plans: watch::Receiver<PlanSnapshot>,
    pub source: watch::Receiver<SourceSnapshot>,
    /// `None` when herald runs without gobgpd.
    pub sink: Option<watch::Receiver<SinkStatus>>,
    /// A read-only look into gobgpd, for answers down to the wire; `None` without gobgpd.
    pub gobgp: Option<Inspector>,
    /// The planner's input of operators' brake releases; ControlService is served when set.
    pub brake_releases: Option<watch::Sender<u64>>,
}

impl ApiState {
    fn in_rib(&self) -> Option<crate::gobgp::InRib> {
        self.sink.as_ref().map(|s| s.borrow().in_rib.clone())
    }
}

pub struct PlanApi {
    state: ApiState,
    deltas: Arc<DeltaCache>,
    limits: Arc<Limits>,
}

/// The last few plan-to-plan deltas, shared by every WatchPlan stream: with many watchers, each
/// change is diffed once, not once per watcher.
#[derive(Default)]
struct DeltaCache {
    entries: std::sync::Mutex<std::collections::VecDeque<(u64, u64, Arc<pb::WatchPlanResponse>)>>,
}

impl DeltaCache {
    const CAPACITY: usize = 8;

    fn get_or_compute(
        &self,
        from: u64,
        to: u64,
        compute: impl FnOnce() -> pb::WatchPlanResponse,
    ) -> Arc<pb::WatchPlanResponse> {
        let lookup =
            |entries: &std::collections::VecDeque<(u64, u64, Arc<pb::WatchPlanResponse>)>| {
                entries
                    .iter()
                    .find(|(f, t, _)| *f == from && *t == to)
                    .map(|(_, _, m)| m.clone())
            };
        if let Some(found) = lookup(&self.entries.lock().unwrap_or_else(|e| e.into_inner())) {
            return found;
        }
        // Computed outside the lock: a large diff must not stall the other watchers.
        let message = Arc::new(compute());
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = lookup(&entries) {
            return found;
        }
        if entries.len() == Self::CAPACITY {
            entries.pop_front();
        }
        entries.push_back((from, to, message.clone()));
        message
    }
}

impl PlanApi {
    /// The API with the default limits.
    pub fn new(state: ApiState) -> Self {
        Self::with_limits(
            state,
            Limits::new(ApiLimits::default(), RefusedCalls::default()),
        )
    }

    pub fn with_limits(state: ApiState, limits: Arc<Limits>) -> Self {
        Self {
            state,
            deltas: Arc::default(),
            limits,
        }
    }

    /// The service, with the limits' message sizes.
    pub fn into_service(self) -> PlanServiceServer<Self> {
        let (request, response) = (
            self.limits.config.max_request_bytes,
            self.limits.config.max_response_bytes,
        );
        PlanServiceServer::new(self)
            .max_decoding_message_size(request)
            .max_encoding_message_size(response)
    }
}

fn timestamp(time: SystemTime) -> herald_api::pbjson_types::Timestamp {
    let since = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    herald_api::pbjson_types::Timestamp {
        seconds: since.as_secs() as i64,
        nanos: since.subsec_nanos() as i32,
    }
}

/// A ListRoutes filter, parsed once.
struct Filter {
    kind: Option<pb::RouteKind>,
    node: String,
    service: String,
    prefix: Option<IpNet>,
}

impl Filter {
    fn parse(request: &pb::ListRoutesRequest) -> Result<Filter, Status> {
        let kind = match pb::RouteKind::try_from(request.kind) {
            Ok(pb::RouteKind::Unspecified) => None,
            Ok(kind) => Some(kind),
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "unknown route kind {}",
                    request.kind
                )));
            }
        };
        let prefix = match request.prefix.trim() {
            "" => None,
            text => Some(
                text.parse::<IpNet>()
                    .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        Status::invalid_argument(format!("`{text}` is neither an IP nor a prefix"))
                    })?,
            ),
        };
        Ok(Filter {
            kind,
            node: request.node.clone(),
            service: request.service.clone(),
            prefix,
        })
    }

    fn matches(&self, route: &Route) -> bool {
        self.kind.is_none_or(|k| proto::route_kind(route.kind) == k)
            && (self.node.is_empty() || route.next_hops.iter().any(|n| n.node == self.node))
            && (self.service.is_empty() || route.sources.contains(&self.service))
            && self.prefix.is_none_or(|p| {
                route.prefix == p
                    || (p.prefix_len() == p.max_prefix_len() && route.prefix.contains(&p.addr()))
            })
    }
}

/// The routes that differ between two plans, as a WatchPlan message.
fn delta(
    old: &Plan,
    new: &Plan,
    generation: u64,
    in_rib: &dyn Fn(&IpNet) -> bool,
) -> pb::WatchPlanResponse {
    let mut message = pb::WatchPlanResponse {
        generation,
        ..Default::default()
    };
    for (prefix, before, after) in old.route_changes(new) {
        match (before, after) {
            (None, Some(route)) => message.added.push(proto::route(route, in_rib(&prefix))),
            (Some(_), Some(route)) => message.changed.push(proto::route(route, in_rib(&prefix))),
            (_, None) => message.removed.push(prefix.to_string()),
        }
    }
    message
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchPlanResponse, Status>> + Send>>;

#[tonic::async_trait]
impl PlanService for PlanApi {
    async fn list_routes(
        &self,
        request: Request<pb::ListRoutesRequest>,
    ) -> Result<Response<pb::ListRoutesResponse>, Status> {
        let filter = Filter::parse(request.get_ref())?;
        let snapshot = self.state.plans.borrow().clone();
        let in_rib = self.state.in_rib();
        let routes = snapshot
            .plan
            .routes
            .values()
            .filter(|r| filter.matches(r))
            .map(|r| proto::route(r, in_rib.as_ref().is_some_and(|s| s.contains(&r.prefix))))
            .collect();
        let refusals = snapshot
            .plan
            .refusals
            .iter()
            .filter(|r| filter.service.is_empty() || r.service.to_string() == filter.service)
            .map(proto::refusal)
            .collect();
        let response = pb::ListRoutesResponse {
            routes,
            generation: snapshot.generation,
            refusals,
        };
        self.limits.check_response(
            "ListRoutes",
            prost::Message::encoded_len(&response),
            "; ask for part of it (--node, --service, --prefix, --kind)",
        )?;
        Ok(Response::new(response))
    }

    async fn explain_service(
        &self,
        request: Request<pb::ExplainServiceRequest>,
    ) -> Result<Response<pb::ExplainServiceResponse>, Status> {
        let request = request.into_inner();
        if request.name.is_empty() {
            return Err(Status::invalid_argument("name is required"));
        }
        let namespace = if request.namespace.is_empty() {
            "default".to_string()
        } else {
            request.namespace
        };
        let key = ObjectKey::new(namespace, request.name);
        let snapshot = self.state.plans.borrow().clone();
        let Some(explanation) = snapshot.plan.services.get(&key) else {
            return Ok(Response::new(pb::ExplainServiceResponse {
                found: false,
                notes: vec![format!("no Service {key} in the cluster state")],
                generation: snapshot.generation,
                ..Default::default()
            }));
        };
        let ips = explanation
            .ips
            .iter()
            .map(|ip| {
                let route_of = |p: &IpNet| snapshot.plan.routes.get(p);
                let (announced, prefix, reason) = match &ip.outcome {
                    IpOutcome::HostRoute(p) => {
                        // The route's own reason: the policy, and which nodes for what endpoints.
                        let route = route_of(p);
                        let mut reason = route.map_or_else(
                            || "host route of its own".to_string(),
                            |r| format!("host route: {}", r.reason),
                        );
                        if let Some(route) = route.filter(|r| !r.left_out.is_empty()) {
                            let left_out: Vec<&str> =
                                route.left_out.iter().map(String::as_str).collect();
                            reason.push_str(&format!("; left out: {}", left_out.join(", ")));
                        }
                        (true, Some(*p), reason)
                    }
                    IpOutcome::CoveredByRange(p) => match route_of(p).and_then(|r| r.part_of) {
                        Some(range) => (
                            true,
                            Some(*p),
                            format!("reachable through {p}, a part of the range {range}"),
                        ),
                        None => (true, Some(*p), format!("reachable through the range {p}")),
                    },
                    IpOutcome::OtherPool { pool, range } => (
                        false,
                        None,
                        format!("announced by pool {pool}: inside its range {range}"),
                    ),
                    IpOutcome::NotAnnounced(reason) => (false, None, reason.clone()),
                };
                let pool = match &ip.outcome {
                    IpOutcome::OtherPool { pool, .. } => pool.to_string(),
                    _ => String::new(),
                };
                let route = prefix.and_then(|p| snapshot.plan.routes.get(&p));
                pb::ServiceIp {
                    ip: ip.ip.clone(),
                    role: ip.role.as_str().to_string(),
                    announced,
                    prefix: prefix.map(|p| p.to_string()).unwrap_or_default(),
                    next_hops: route
                        .map(|r| proto::route(r, false).next_hops)
                        .unwrap_or_default(),
                    reason,
                    pool,
                }
            })
            .collect();
        let mut prefixes: Vec<IpNet> = explanation
            .ips
            .iter()
            .filter_map(|ip| match ip.outcome {
                IpOutcome::HostRoute(p) | IpOutcome::CoveredByRange(p) => Some(p),
                IpOutcome::OtherPool { .. } | IpOutcome::NotAnnounced(_) => None,
            })
            .collect();
        prefixes.dedup();
        let wire = match &self.state.gobgp {
            Some(inspector) => wire_view(inspector, &snapshot.plan, &prefixes).await,
            None => Vec::new(),
        };
        Ok(Response::new(pb::ExplainServiceResponse {
            wire,
            found: true,
            external_traffic_policy: explanation.external_traffic_policy.as_str().to_string(),
            internal_traffic_policy: explanation.internal_traffic_policy.as_str().to_string(),
            r#type: explanation.type_.clone(),
            ips,
            endpoint_nodes: explanation
                .endpoint_nodes
                .iter()
                .map(|(n, s)| format!("{n}: {s}"))
                .collect(),
            notes: explanation.notes.clone(),
            generation: snapshot.generation,
        }))
    }

    type WatchPlanStream = WatchStream;

    async fn watch_plan(
        &self,
        request: Request<pb::WatchPlanRequest>,
    ) -> Result<Response<Self::WatchPlanStream>, Status> {
        // Held by the stream's task: its place is freed when the stream ends.
        let permit = self.limits.watch(request.remote_addr().map(|a| a.ip()))?;
        let mut plans = self.state.plans.clone();
        let state = self.state.clone();
        let deltas = self.deltas.clone();
        let stream = async_stream(move |tx| async move {
            let _permit = permit;
            let first = plans.borrow_and_update().clone();
            let in_rib = state.in_rib();
            let has = |p: &IpNet| in_rib.as_ref().is_some_and(|s| s.contains(p));
            let mut message = delta(&Plan::default(), &first.plan, first.generation, &has);
            message.snapshot = true;
            if tx.send(Ok(message)).await.is_err() {
                return;
            }
            let mut previous = first;
            // A slow client skips intermediate plans: each message is the delta from the last one
            // it was sent, so it still ends equal to the plan.
            loop {
                // A client that went away frees its place now, not at the next plan.
                tokio::select! {
                    changed = plans.changed() => if changed.is_err() { return },
                    () = tx.closed() => return,
                }
                let current = plans.borrow_and_update().clone();
                let message =
                    deltas.get_or_compute(previous.generation, current.generation, || {
                        let in_rib = state.in_rib();
                        let has = |p: &IpNet| in_rib.as_ref().is_some_and(|s| s.contains(p));
                        delta(&previous.plan, &current.plan, current.generation, &has)
                    });
                previous = current;
                if tx.send(Ok((*message).clone())).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(stream))
    }

    async fn list_nodes(
        &self,
        request: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let wanted = request.into_inner().node;
        let snapshot = self.state.plans.borrow().clone();
        if !wanted.is_empty() && !snapshot.plan.nodes.contains_key(&wanted) {
            return Err(Status::not_found(format!(
                "no node {wanted} in the cluster state"
            )));
        }
        Ok(Response::new(pb::ListNodesResponse {
            nodes: proto::nodes(
                &snapshot.plan,
                (!wanted.is_empty()).then_some(wanted.as_str()),
            ),
            generation: snapshot.generation,
        }))
    }

    async fn diff_rib(
        &self,
        _request: Request<pb::DiffRibRequest>,
    ) -> Result<Response<pb::DiffRibResponse>, Status> {
        let Some(inspector) = &self.state.gobgp else {
            return Err(Status::failed_precondition(
                "herald runs without gobgpd (no `gobgp` in its config)",
            ));
        };
        let snapshot = self.state.plans.borrow().clone();
        Ok(Response::new(diff_rib(inspector, &snapshot).await?))
    }

    async fn get_status(
        &self,
        _request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        let snapshot = self.state.plans.borrow().clone();
        let source = self.state.source.borrow().status.clone();
        let mut alarms = Vec::new();
        if let Some(error) = &source.last_error {
            alarms.push(format!(
                "source {}: {error} (keeping the last plan)",
                source.name
            ));
        }
        if !source.synced {
            let announced = if snapshot.partial {
                format!(
                    " (the ranges are planned from the {} Nodes listed; the Services and \
                     EndpointSlices are still listing)",
                    snapshot.plan.nodes.len()
                )
            } else {
                String::new()
            };
            alarms.push(format!(
                "source {} has not delivered a complete cluster state yet{announced}",
                source.name
            ));
        }
        // The brake's own note is among the plan's notes: one alarm, with what it holds.
        alarms.extend(snapshot.plan.notes.iter().cloned());
        let gobgp = self.state.sink.as_ref().map(|sink| {
            let s = sink.borrow().clone();
            if s.awaiting_first_answer {
                alarms.push(format!(
                    "gobgpd at {} has not answered herald's first call yet",
                    s.address
                ));
            } else if !s.reachable {
                alarms.push(format!(
                    "gobgpd at {} is unreachable: {}",
                    s.address,
                    s.last_error.clone().unwrap_or_default()
                ));
            }
            if let Some((at, what)) = &s.restart_miss {
                // A past event: shown for a while, counted for good in the metrics.
                if at.elapsed().is_ok_and(|ago| ago < RESTART_MISS_SHOWN) {
                    alarms.push(what.clone());
                }
            }
            pb::GobgpStatus {
                address: s.address,
                reachable: s.reachable,
                awaiting_first_answer: s.awaiting_first_answer,
                applied_generation: s.applied_generation,
                pending_operations: s.pending_operations,
                paths_applied: s.paths_applied,
                last_error: s.last_error.unwrap_or_default(),
                last_applied: s.last_applied.map(timestamp),
            }
        });
        let neighbors = match &self.state.gobgp {
            Some(inspector) => match inspector.neighbors().await {
                Ok(neighbors) => neighbors,
                Err(e) => {
                    alarms.push(format!("cannot list gobgpd's BGP neighbors: {e}"));
                    Vec::new()
                }
            },
            None => Vec::new(),
        };
        for n in &neighbors {
            if let Some(note) = neighbor_note(n, None) {
                alarms.push(format!("BGP neighbor {}: {note}", n.address));
            }
        }
        Ok(Response::new(pb::GetStatusResponse {
            neighbors: neighbors.iter().map(neighbor).collect(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            source: Some(pb::SourceStatus {
                name: source.name,
                synced: source.synced,
                last_error: source.last_error.unwrap_or_default(),
                last_update: source.last_update.map(timestamp),
            }),
            plan_generation: snapshot.generation,
            routes: snapshot.plan.routes.len() as u64,
            refusals: snapshot.plan.refusals.len() as u64,
            gobgp,
            alarms,
            brake: Some(super::control::brake(&snapshot)),
        }))
    }
}

fn neighbor(n: &Neighbor) -> pb::Neighbor {
    pb::Neighbor {
        address: n.address.clone(),
        description: n.description.clone(),
        state: n.state.clone(),
        add_path_ipv4: n.add_path_send[0],
        add_path_ipv6: n.add_path_send[1],
    }
}

fn wire_path(p: &WirePath) -> pb::WirePath {
    pb::WirePath {
        next_hop: p.next_hop.map(|h| h.to_string()).unwrap_or_default(),
        identifier: p.identifier,
        local_identifier: p.local_identifier,
        herald: p.herald,
    }
}

/// What is wrong with a neighbor, for a prefix of `family` (or any family herald uses).
fn neighbor_note(n: &Neighbor, family: Option<Family>) -> Option<String> {
    if !n.is_established() {
        return Some(format!(
            "session not established ({}): it learns nothing from herald",
            n.state
        ));
    }
    let missing: Vec<&str> = [(Family::Ipv4, "IPv4"), (Family::Ipv6, "IPv6")]
        .into_iter()
        .enumerate()
        .filter(|(i, (f, _))| family.is_none_or(|w| w == *f) && !n.add_path_send[*i])
        .map(|(_, (_, name))| name)
        .collect();
    // Without a family given (status), only IPv4 is worth an alarm: many fabrics are IPv4 only.
    let missing: Vec<&str> = if family.is_none() {
        missing.into_iter().filter(|m| *m == "IPv4").collect()
    } else {
        missing
    };
    let add_path = (!missing.is_empty()).then(|| {
        format!(
            "ADD-PATH send not negotiated for {}: the neighbor learns one next hop per prefix, not one per node (no ECMP)",
            missing.join(", ")
        )
    });
    let graceful_restart = match n.graceful_restart {
        (true, false) => Some(
            "graceful restart configured in gobgpd but not advertised by the neighbor: it drops herald's routes \
             whenever gobgpd restarts (enable graceful restart on the router; see the README)"
                .to_string(),
        ),
        _ => None,
    };
    match (add_path, graceful_restart) {
        (Some(a), Some(g)) => Some(format!("{a}; {g}")),
        (a, g) => a.or(g),
    }
}

/// gobgpd's RIB and adj-RIB-outs for `prefixes`.
async fn wire_view(
    inspector: &Inspector,
    plan: &Plan,
    prefixes: &[IpNet],
) -> Vec<pb::PrefixOnWire> {
    let neighbors = inspector.neighbors().await;
    let mut out = Vec::new();
    for prefix in prefixes {
        let planned = plan
            .routes
            .get(prefix)
            .map(|r| proto::route(r, false).next_hops)
            .unwrap_or_default();
        let mut view = pb::PrefixOnWire {
            prefix: prefix.to_string(),
            planned,
            ..Default::default()
        };
        match inspector.rib(Some(*prefix)).await {
            Ok(rib) => view.rib = rib.iter().map(wire_path).collect(),
            Err(e) => view.error = e.to_string(),
        }
        match &neighbors {
            Ok(neighbors) => {
                for n in neighbors {
                    let sent = if n.is_established() {
                        inspector
                            .adj_out(&n.address, *prefix)
                            .await
                            .unwrap_or_default()
                    } else {
                        Vec::new()
                    };
                    let mut note = neighbor_note(n, Some(Family::of(prefix))).unwrap_or_default();
                    let planned = view.planned.len();
                    if note.is_empty() && sent.len() < planned {
                        note = format!("sent {} of the {planned} planned paths", sent.len());
                    }
                    view.neighbors.push(pb::NeighborView {
                        neighbor: Some(neighbor(n)),
                        sent: sent.iter().map(wire_path).collect(),
                        note,
                    });
                }
            }
            Err(e) => view.error = e.to_string(),
        }
        out.push(view);
    }
    out
}

/// The plan against gobgpd's RIB, path by path.
pub async fn diff_rib(
    inspector: &Inspector,
    snapshot: &PlanSnapshot,
) -> Result<pb::DiffRibResponse, Status> {
    use pb::PathState;
    let rib = inspector
        .rib(None)
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    // Identifiers as the sink gives them; attributes do not matter here.
    let desired = desired_paths(&snapshot.plan, crate::config::Origin::Igp, None);
    let node_of = |prefix: &IpNet, hop: &IpAddr| -> String {
        snapshot
            .plan
            .routes
            .get(prefix)
            .and_then(|r| r.next_hops.iter().find(|h| h.address == *hop))
            .map(|h| h.node.clone())
            .unwrap_or_default()
    };
    let mut response = pb::DiffRibResponse {
        generation: snapshot.generation,
        ..Default::default()
    };
    let mut matched = std::collections::HashSet::new();
    for path in &rib {
        let key = crate::gobgp::paths::PathKey {
            prefix: path.prefix,
            identifier: path.identifier,
        };
        let state = if !path.herald {
            PathState::Foreign
        } else if desired
            .get(&key)
            .is_some_and(|a| Some(a.next_hop) == path.next_hop)
        {
            matched.insert(key);
            PathState::InSync
        } else {
            PathState::Unexpected
        };
        let next_hop = path.next_hop.map(|h| h.to_string()).unwrap_or_default();
        let node = match (state, path.next_hop) {
            (PathState::InSync, Some(hop)) => node_of(&path.prefix, &hop),
            _ => String::new(),
        };
        response.entries.push(pb::RibEntry {
            prefix: path.prefix.to_string(),
            next_hop,
            node,
            identifier: path.identifier,
            state: state as i32,
        });
    }
    for (key, attrs) in desired.iter().filter(|(k, _)| !matched.contains(*k)) {
        response.entries.push(pb::RibEntry {
            prefix: key.prefix.to_string(),
            next_hop: attrs.next_hop.to_string(),
            node: node_of(&key.prefix, &attrs.next_hop),
            identifier: key.identifier,
            state: PathState::Missing as i32,
        });
    }
    response.entries.sort_by(|a, b| {
        (&a.prefix, &a.next_hop, a.identifier).cmp(&(&b.prefix, &b.next_hop, b.identifier))
    });
    for e in &response.entries {
        match PathState::try_from(e.state) {
            Ok(PathState::InSync) => response.in_sync += 1,
            Ok(PathState::Missing) => response.missing += 1,
            Ok(PathState::Unexpected) => response.unexpected += 1,
            Ok(PathState::Foreign) => response.foreign += 1,
            _ => {}
        }
    }
    Ok(response)
}

/// A stream fed by a task, so a slow reader applies backpressure to that task alone.
fn async_stream<F, Fut>(body: F) -> WatchStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<pb::WatchPlanResponse, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(body(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// Serves PlanService, reflection (v1 and v1alpha, for grpcurl) and grpc.health.v1 on `api.listen`
/// until `shutdown`, and grpc.health.v1 alone on `api.healthListen` when set.
///
/// The plan API runs on a runtime of its own, one thread at a lowered CPU priority: what callers
/// ask of it (a flood of ListRoutes, thousands of streams) takes that thread's time, not the
/// reconciler's or the planner's, and the limits keep its memory bounded. The health listener stays
/// on the caller's runtime, beside the reconciler: a busy plan API does not fail the kubelet's probes.
pub async fn serve(
    api: &ApiConfig,
    state: ApiState,
    refused: RefusedCalls,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let tls = api.tls.as_ref().map(tls_config).transpose()?;
    let bind = |listen: SocketAddr| {
        std::net::TcpListener::bind(listen)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|source| ServeError::Bind { listen, source })
    };
    let listener = bind(api.listen)?;
    let health = health_service(state.plans.clone()).await;
    if let Some(listen) = api.health_listen {
        let listener = tokio::net::TcpListener::from_std(bind(listen)?)
            .map_err(|source| ServeError::Bind { listen, source })?;
        let health = health.clone();
        tokio::spawn(async move {
            if let Err(error) = serve_health(listener, health).await {
                tracing::error!(%error, "health listener stopped");
            }
        });
    }
    let limits = Limits::new(api.limits.clone(), refused);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let listen = api.listen;
    std::thread::Builder::new()
        .name("herald-api".to_string())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("herald-api")
                .on_thread_start(lower_priority)
                .enable_all()
                .build();
            let result = match runtime {
                Ok(runtime) => runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)
                        .map_err(|source| ServeError::Bind { listen, source })?;
                    serve_limited(listener, tls, state, limits, health, shutdown).await
                }),
                Err(source) => Err(ServeError::Runtime(source)),
            };
            let _ = done_tx.send(result);
        })
        .map_err(ServeError::Runtime)?;
    done_rx.await.unwrap_or_else(|_| {
        Err(ServeError::Runtime(std::io::Error::other(
            "the API's thread ended without a result (a panic)",
        )))
    })
}

/// How much lower the plan API's threads run than the rest of herald (nice, Linux's per-thread
/// priority): under load, the scheduler gives the reconciler and the planner the CPU first.
const API_NICE: libc::c_int = 10;

fn lower_priority() {
    // SAFETY: gettid and setpriority take no pointers; they change this thread's priority only.
    let result =
        unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, API_NICE) };
    if result != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "cannot lower the API thread's priority");
    }
}

/// grpc.health.v1: liveness ("") serving from the start, readiness (herald.v1.PlanService) once a
/// plan exists.
pub async fn health_service(
    mut plans: watch::Receiver<PlanSnapshot>,
) -> HealthServer<HealthService> {
    let (health, _) = tonic_health::server::health_reporter();
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    health.set_not_serving::<PlanServiceServer<PlanApi>>().await;
    let service = HealthServer::new(HealthService::from_health_reporter(health.clone()));
    tokio::spawn(async move {
        loop {
            let ready = plans.borrow_and_update().generation > 0;
            if ready {
                health.set_serving::<PlanServiceServer<PlanApi>>().await;
                return;
            }
            if plans.changed().await.is_err() {
                return;
            }
        }
    });
    service
}

/// The health listener: grpc.health.v1 and nothing else, plaintext, small messages.
pub async fn serve_health(
    listener: tokio::net::TcpListener,
    health: HealthServer<HealthService>,
) -> Result<(), ServeError> {
    info!(listen = ?listener.local_addr().ok(), "health listener serving grpc.health.v1");
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .timeout(std::time::Duration::from_secs(5))
        .max_concurrent_streams(16)
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
        .add_service(health.max_decoding_message_size(1024))
        .serve_with_incoming(
            // As for the plan API: TCP_NODELAY set on the accepted sockets themselves.
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
        )
        .await?;
    Ok(())
}

/// Reads the server's certificate and key, and the client CA that turns on client authentication.
fn tls_config(tls: &TlsConfig) -> Result<ServerTlsConfig, ServeError> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|source| ServeError::Tls {
            path: path.to_path_buf(),
            source,
        })
    };
    let mut config = ServerTlsConfig::new().identity(Identity::from_pem(
        read(&tls.cert_file)?,
        read(&tls.key_file)?,
    ));
    if let Some(ca) = &tls.client_ca_file {
        config = config.client_ca_root(Certificate::from_pem(read(ca)?));
    }
    Ok(config)
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {listen}: {source}")]
    Bind {
        listen: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot read TLS file {path}: {source}")]
    Tls {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("cannot start the API's runtime: {0}")]
    Runtime(std::io::Error),
}

/// Serves the API on `listener` with the default limits.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    tls: Option<ServerTlsConfig>,
    state: ApiState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let health = health_service(state.plans.clone()).await;
    let limits = Limits::new(ApiLimits::default(), RefusedCalls::default());
    serve_limited(listener, tls, state, limits, health, shutdown).await
}

/// Serves the API on `listener` within `limits`.
pub async fn serve_limited(
    listener: tokio::net::TcpListener,
    tls: Option<ServerTlsConfig>,
    state: ApiState,
    limits: Arc<Limits>,
    health: HealthServer<HealthService>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let local = listener.local_addr().ok();
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(herald_api::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(herald_api::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    info!(listen = ?local, tls = tls.is_some(), "herald API serving");
    let config = limits.config.clone();
    // The builder's tcp_nodelay and tcp_keepalive apply only to listeners tonic binds itself: set
    // on the accepted sockets here. Without TCP_NODELAY each small answer (ExplainService,
    // GetStatus) waited ~40 ms for the client's delayed ACK (BENCHMARKS.md, API).
    let incoming = tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(config.keepalive_interval.0));
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    let control = state.brake_releases.clone().map(|releases| {
        super::control::ControlApi::new(state.plans.clone(), releases).into_service()
    });
    builder
        .tcp_nodelay(true)
        .timeout(config.call_timeout.0)
        .max_concurrent_streams(config.max_streams_per_connection)
        .http2_keepalive_interval(Some(config.keepalive_interval.0))
        .http2_keepalive_timeout(Some(config.keepalive_timeout.0))
        .tcp_keepalive(Some(config.keepalive_interval.0))
        .layer(super::limits::CallLimitLayer {
            limits: limits.clone(),
        })
        .add_optional_service(control)
        .add_service(PlanApi::with_limits(state, limits).into_service())
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(health)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}
