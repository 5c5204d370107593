//! Prometheus metrics on their own HTTP port (`/metrics`).
//!
//! Gauges describing the plan, the source and the sink are set from the channels those publish, so
//! metrics are one more reader: nothing upstream knows they exist. Counters and histograms of work
//! done (reconcile operations, push latency) are recorded by the reconciler through [`SinkMetrics`].

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tracing::info;

use crate::gobgp::SinkStatus;
use crate::gobgp::inspect::Inspector;
use crate::plan::{PlanSnapshot, RefusalCause, RouteKind};
use crate::source::SourceSnapshot;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RangeLabels {
    pub range: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CauseLabels {
    pub cause: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    /// `add` or `withdraw`.
    pub operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    pub peer: String,
    /// Session state as gobgpd names it (established, active, ...); the gauge is 1 for the current one.
    pub state: String,
}

/// The work of the gobgp sink, derived from the totals in its status.
#[derive(Clone)]
pub struct SinkMetrics {
    pub operations: Family<OperationLabels, Counter>,
    pub errors: Counter,
    /// From a plan's publication to gobgpd's RIB holding it.
    pub push_seconds: Histogram,
    pub peers: Family<PeerLabels, Gauge>,
    pub repairs: Counter,
    /// Restarts of gobgpd whose graceful-restart deferral ended before herald's plan was in.
    pub restart_misses: Counter,
}

impl Default for SinkMetrics {
    fn default() -> Self {
        Self {
            operations: Family::default(),
            errors: Counter::default(),
            // 1 ms .. ~16 s
            push_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            peers: Family::default(),
            repairs: Counter::default(),
            restart_misses: Counter::default(),
        }
    }
}

/// The least time between two countings of the routes of a plan of `THROTTLED_ABOVE` routes or more.
const PLAN_GAUGES_EVERY: std::time::Duration = std::time::Duration::from_millis(100);
const THROTTLED_ABOVE: usize = 1000;

/// Turns the sink's status changes into counters and the push latency histogram.
#[derive(Default)]
struct SinkTracker {
    added: u64,
    withdrawn: u64,
    errors: u64,
    repairs: u64,
    restart_misses: u64,
    applied_generation: u64,
    /// When each not yet applied generation was published (bounded: old ones are dropped).
    published: std::collections::VecDeque<(u64, std::time::Instant)>,
}

impl SinkTracker {
    const KEPT: usize = 256;

    fn plan_published(&mut self, generation: u64) {
        // Generation 0 is "no plan yet": nothing to push.
        if generation == 0 {
            return;
        }
        if self.published.back().is_none_or(|(g, _)| *g < generation) {
            if self.published.len() == Self::KEPT {
                self.published.pop_front();
            }
            self.published
                .push_back((generation, std::time::Instant::now()));
        }
    }

    fn observe(&mut self, metrics: &SinkMetrics, status: &SinkStatus) {
        let operation = |name: &str| {
            metrics
                .operations
                .get_or_create(&OperationLabels {
                    operation: name.to_string(),
                })
                .clone()
        };
        operation("add").inc_by(status.paths_added.saturating_sub(self.added));
        operation("withdraw").inc_by(status.paths_withdrawn.saturating_sub(self.withdrawn));
        metrics
            .errors
            .inc_by(status.errors.saturating_sub(self.errors));
        metrics
            .repairs
            .inc_by(status.repairs.saturating_sub(self.repairs));
        (self.added, self.withdrawn, self.errors, self.repairs) = (
            status.paths_added,
            status.paths_withdrawn,
            status.errors,
            status.repairs,
        );
        metrics
            .restart_misses
            .inc_by(status.restart_misses.saturating_sub(self.restart_misses));
        self.restart_misses = status.restart_misses;
        if status.applied_generation > self.applied_generation {
            self.applied_generation = status.applied_generation;
            while let Some((generation, at)) = self.published.front().copied() {
                if generation > status.applied_generation {
                    break;
                }
                metrics.push_seconds.observe(at.elapsed().as_secs_f64());
                self.published.pop_front();
            }
        }
    }
}

/// Every metric herald exports.
pub struct Metrics {
    registry: Registry,
    routes_planned: Family<KindLabels, Gauge>,
    routes_applied: Family<KindLabels, Gauge>,
    paths_planned: Gauge,
    plan_generation: Gauge,
    refused: Family<CauseLabels, Gauge>,
    range_parts: Family<RangeLabels, Gauge>,
    left_out: Family<KindLabels, Gauge>,
    source_synced: Gauge,
    source_up: Gauge,
    gobgp_up: Gauge,
    paths_applied: Gauge,
    pending: Gauge,
    applied_generation: Gauge,
    restart_deferral: Gauge,
    max_routes_refused: Gauge,
    brake_engaged: Gauge,
    brake_held_paths: Gauge,
    brake_held_nodes: Gauge,
    brake_engagements: Counter,
    pub sink: SinkMetrics,
    /// Plan API calls refused by a limit (`api.limits`), by limit.
    pub api_refused: crate::api::limits::RefusedCalls,
}

impl Metrics {
    /// `with_gobgp`: herald pushes to a gobgpd (`gobgp` configured). Without one (plan-only), the
    /// gobgpd and reconcile series are not exported at all: a constant `herald_gobgp_up 0` would
    /// read as an outage to a dashboard or an alert.
    pub fn new(with_gobgp: bool) -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("herald");
        let m = Metrics {
            routes_planned: Family::default(),
            routes_applied: Family::default(),
            paths_planned: Gauge::default(),
            plan_generation: Gauge::default(),
            refused: Family::default(),
            range_parts: Family::default(),
            left_out: Family::default(),
            source_synced: Gauge::default(),
            source_up: Gauge::default(),
            gobgp_up: Gauge::default(),
            paths_applied: Gauge::default(),
            pending: Gauge::default(),
            applied_generation: Gauge::default(),
            restart_deferral: Gauge::default(),
            max_routes_refused: Gauge::default(),
            brake_engaged: Gauge::default(),
            brake_held_paths: Gauge::default(),
            brake_held_nodes: Gauge::default(),
            brake_engagements: Counter::default(),
            sink: SinkMetrics::default(),
            api_refused: Default::default(),
            registry: Registry::default(),
        };
        registry.register(
            "routes_planned",
            "Routes in the plan, by kind",
            m.routes_planned.clone(),
        );
        registry.register(
            "next_hops_planned",
            "Paths (prefix, next hop) in the plan",
            m.paths_planned.clone(),
        );
        registry.register(
            "plan_generation",
            "Generation of the current plan",
            m.plan_generation.clone(),
        );
        registry.register(
            "refused_ips",
            "Service IPs refused, by cause",
            m.refused.clone(),
        );
        registry.register("range_parts", "Parts a range is announced in (ecmp.maxPaths), by range; absent for a range announced whole", m.range_parts.clone());
        registry.register(
            "next_hops_left_out",
            "Nodes that would announce a route but for ecmp.maxPaths, by kind: a host route's endpoint nodes beyond the limit, a range's nodes that carry none of its parts",
            m.left_out.clone(),
        );
        registry.register(
            "source_synced",
            "1 once the source delivered a complete cluster state",
            m.source_synced.clone(),
        );
        registry.register(
            "source_up",
            "1 while the source's last read succeeded",
            m.source_up.clone(),
        );
        registry.register(
            "max_routes_refused",
            "Routes the planner wanted that guard.maxRoutes left out (0 under the limit)",
            m.max_routes_refused.clone(),
        );
        if with_gobgp {
            registry.register(
                "routes_applied",
                "Routes of the plan whose every path is in gobgpd's RIB, by kind",
                m.routes_applied.clone(),
            );
            registry.register(
                "gobgp_up",
                "1 while gobgpd's API answers",
                m.gobgp_up.clone(),
            );
            registry.register(
                "gobgp_paths_applied",
                "herald's paths in gobgpd's RIB",
                m.paths_applied.clone(),
            );
            registry.register(
                "gobgp_pending_operations",
                "Paths still to add or withdraw",
                m.pending.clone(),
            );
            registry.register(
                "gobgp_applied_generation",
                "Plan generation gobgpd's RIB last equalled",
                m.applied_generation.clone(),
            );
            registry.register(
                "reconcile_operations",
                "Paths added or withdrawn in gobgpd",
                m.sink.operations.clone(),
            );
            registry.register(
                "reconcile_errors",
                "Failed calls to gobgpd",
                m.sink.errors.clone(),
            );
            registry.register(
                "push_duration_seconds",
                "Time to make gobgpd's RIB equal a new plan",
                m.sink.push_seconds.clone(),
            );
            registry.register(
                "bgp_peer_state",
                "BGP neighbors of gobgpd, 1 for the current session state",
                m.sink.peers.clone(),
            );
            registry.register("rib_repairs", "Times gobgpd's RIB differed from what herald applied (gobgpd restarted, paths changed by hand) and was repaired", m.sink.repairs.clone());
            registry.register("gobgp_restart_deferral_seconds", "The longest graceful-restart deferral time of gobgpd's neighbors, read when it last lost herald's paths", m.restart_deferral.clone());
            registry.register(
                "gobgp_restart_deferral_misses",
                "Restarts of gobgpd that sent End-of-RIB to a peer before herald's plan was in",
                m.sink.restart_misses.clone(),
            );
        }
        registry.register(
            "api_refused_calls",
            "Plan API calls refused with RESOURCE_EXHAUSTED, by the limit they were above (api.limits)",
            m.api_refused.clone(),
        );
        registry.register("withdrawal_brake_engaged", "1 while the withdrawal brake holds the paths of nodes lost at once (see heraldctl brake)", m.brake_engaged.clone());
        registry.register(
            "withdrawal_brake_held_paths",
            "Paths the withdrawal brake keeps announced for lost nodes",
            m.brake_held_paths.clone(),
        );
        registry.register(
            "withdrawal_brake_held_nodes",
            "Lost nodes whose paths the withdrawal brake keeps announced",
            m.brake_held_nodes.clone(),
        );
        registry.register(
            "withdrawal_brake_engagements",
            "Times the withdrawal brake engaged",
            m.brake_engagements.clone(),
        );
        Arc::new(Metrics { registry, ..m })
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    fn observe_plan(&self, snapshot: &PlanSnapshot, in_rib: Option<&SinkStatus>) {
        self.paths_planned.set(snapshot.plan.path_count() as i64);
        self.max_routes_refused
            .set(snapshot.plan.max_routes_refused as i64);
        // One walk over the routes for every per-kind and per-range figure.
        let mut by_kind: std::collections::HashMap<RouteKind, (i64, i64, i64)> =
            std::collections::HashMap::new();
        let mut parts: std::collections::BTreeMap<String, i64> = std::collections::BTreeMap::new();
        for route in snapshot.plan.routes.values() {
            let counts = by_kind.entry(route.kind).or_default();
            counts.0 += 1;
            counts.1 += i64::from(in_rib.is_some_and(|s| s.in_rib.contains(&route.prefix)));
            counts.2 += route.left_out.len() as i64;
            if let Some(range) = route.part_of {
                *parts.entry(range.to_string()).or_default() += 1;
            }
        }
        for kind in RouteKind::ALL {
            let labels = KindLabels {
                kind: kind.as_str().to_string(),
            };
            let (planned, applied, left_out) = by_kind.get(&kind).copied().unwrap_or_default();
            self.routes_planned.get_or_create(&labels).set(planned);
            self.routes_applied.get_or_create(&labels).set(applied);
            if !kind.is_part() {
                self.left_out.get_or_create(&labels).set(left_out);
            }
        }
        // Ranges no longer in parts go, rather than stay at their last count.
        self.range_parts.clear();
        for (range, count) in parts {
            self.range_parts
                .get_or_create(&RangeLabels { range })
                .set(count);
        }
        for cause in RefusalCause::ALL {
            let count = snapshot
                .plan
                .refusals
                .iter()
                .filter(|r| r.cause == cause)
                .count();
            self.refused
                .get_or_create(&CauseLabels {
                    cause: cause.as_str().to_string(),
                })
                .set(count as i64);
        }
        // Last: a scrape that sees the new generation sees the rest of its figures too.
        self.plan_generation.set(snapshot.generation as i64);
    }

    /// The brake's gauges, and its engagements counted from the last one seen (`last`).
    fn observe_brake(&self, snapshot: &PlanSnapshot, last: &mut u64) {
        let status = snapshot.brake.as_deref();
        self.brake_engaged.set(i64::from(status.is_some()));
        self.brake_held_paths
            .set(status.map_or(0, |b| b.paths as i64));
        self.brake_held_nodes
            .set(status.map_or(0, |b| b.nodes.len() as i64));
        let seen = status
            .map(|b| b.engagement)
            .into_iter()
            .chain(snapshot.brake_released.as_ref().map(|r| r.engagement))
            .max()
            .unwrap_or(0);
        if seen > *last {
            self.brake_engagements.inc_by(seen - *last);
            *last = seen;
        }
    }

    fn observe_source(&self, snapshot: &SourceSnapshot) {
        self.source_synced.set(i64::from(snapshot.status.synced));
        self.source_up
            .set(i64::from(snapshot.status.last_error.is_none()));
    }

    fn observe_sink(&self, status: &SinkStatus) {
        self.gobgp_up.set(i64::from(status.reachable));
        self.paths_applied.set(status.paths_applied as i64);
        self.pending.set(status.pending_operations as i64);
        self.applied_generation
            .set(status.applied_generation as i64);
        if let Some(window) = status.graceful_restart {
            self.restart_deferral.set(window.deferral.as_secs() as i64);
        }
    }

    /// Keeps the metrics equal to what the channels publish, until they close.
    pub async fn follow(
        self: Arc<Self>,
        mut plans: watch::Receiver<PlanSnapshot>,
        mut source: watch::Receiver<SourceSnapshot>,
        mut sink: Option<watch::Receiver<SinkStatus>>,
    ) {
        let mut tracker = SinkTracker::default();
        // Counting routes by kind walks the whole plan: for a large plan under churn it is done at
        // most every PLAN_GAUGES_EVERY (a scrape comes every few seconds), not for every plan.
        let mut gauges_at: Option<tokio::time::Instant> = None;
        let mut brake_engagements = 0u64;
        loop {
            let status = sink.as_mut().map(|s| s.borrow_and_update().clone());
            let plan = plans.borrow_and_update().clone();
            tracker.plan_published(plan.generation);
            self.observe_brake(&plan, &mut brake_engagements);
            let now = tokio::time::Instant::now();
            let gauges_due = match gauges_at {
                Some(at)
                    if now < at + PLAN_GAUGES_EVERY
                        && plan.plan.routes.len() >= THROTTLED_ABOVE =>
                {
                    Some(at + PLAN_GAUGES_EVERY)
                }
                _ => {
                    self.observe_plan(&plan, status.as_ref());
                    gauges_at = Some(now);
                    None
                }
            };
            self.observe_source(&source.borrow_and_update());
            if let Some(status) = &status {
                self.observe_sink(status);
                tracker.observe(&self.sink, status);
            }
            let sink_changed = async {
                match sink.as_mut() {
                    Some(s) => s.changed().await,
                    None => std::future::pending().await,
                }
            };
            let gauges = async {
                match gauges_due {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let closed = tokio::select! {
                r = plans.changed() => r.is_err(),
                r = source.changed() => r.is_err(),
                r = sink_changed => r.is_err(),
                () = gauges => false,
            };
            if closed {
                return;
            }
        }
    }
}

/// Polls gobgpd's BGP neighbors every `every`, for `herald_bgp_peer_state`.
pub async fn follow_peers(metrics: Arc<Metrics>, inspector: Inspector, every: std::time::Duration) {
    let mut shown: Vec<PeerLabels> = Vec::new();
    let mut interval = tokio::time::interval(every);
    loop {
        interval.tick().await;
        // An unreachable gobgpd shows as herald_gobgp_up 0; its neighbors are then unknown.
        let current: Vec<PeerLabels> = match inspector.neighbors().await {
            Ok(neighbors) => neighbors
                .into_iter()
                .map(|n| PeerLabels {
                    peer: n.address,
                    state: n.state,
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        for gone in shown.iter().filter(|l| !current.contains(l)) {
            metrics.sink.peers.remove(gone);
        }
        for labels in &current {
            metrics.sink.peers.get_or_create(labels).set(1);
        }
        shown = current;
    }
}

/// Serves `/metrics` until the process ends. Binding is the caller's, so a taken port fails start-up.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
) -> std::io::Result<()> {
    info!(listen = %listener.local_addr()?, "metrics serving on /metrics");
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics.encode(),
                )
            }
        }),
    );
    // TCP_NODELAY, as on the API's sockets: a response written in two parts otherwise waits for
    // the scraper's delayed ACK before its second.
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "TCP_NODELAY not set on a metrics connection");
        }
    });
    axum::serve(listener, app).await
}
