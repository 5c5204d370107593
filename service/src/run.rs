//! `herald run`: wires source → planner → plan channel → reconciler and API server.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::api::server::{self, ApiState};
use crate::brake::{BrakeRelease, BrakeStatus};
use crate::cluster::ClusterState;
use crate::config::{Config, SourceConfig};
use crate::gobgp::inspect::Inspector;
use crate::guard::{Guard, GuardConfig};
use crate::metrics::Metrics;
use crate::plan::{Plan, PlanSnapshot};
use crate::planner::incremental::IncrementalPlanner;
use crate::source::file::FileSource;
use crate::source::{ClusterSource, SourceSnapshot};
use std::time::Duration;

/// Options of `herald run` that are not in the config file.
#[derive(Debug, Default, Clone)]
pub struct RunOptions {
    /// Overrides the config's kubeconfig.
    pub kubeconfig: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(
        "the config has no `source` (use `source: {{file: PATH}}` or `source: {{kubernetes: {{}}}}`)"
    )]
    NoSource,
    #[error(transparent)]
    Serve(#[from] server::ServeError),
    #[error("{0}")]
    Source(String),
    #[error("metrics: {0}")]
    Metrics(String),
    #[error("{0}")]
    Gobgp(String),
}

/// Publishes `plan` if it differs from the current one (the first plan is published even if empty).
/// Says what is new: refused IPs and notes that the last plan did not have (a churning cluster
/// publishes often; the same refusal is not repeated with every plan).
fn publish(
    plans: &watch::Sender<PlanSnapshot>,
    plan: Plan,
    partial: bool,
    cluster_version: u64,
    elapsed: Duration,
    brake: BrakeView,
) {
    plans.send_if_modified(|current| {
        if current.generation > 0
            && current.partial == partial
            && *current.plan == plan
            && brake.same_as(current)
        {
            return false;
        }
        // The first complete plan is news even after a partial one.
        let first = current.generation == 0 || current.partial;
        current.generation += 1;
        current.cluster_version = cluster_version;
        current.partial = partial;
        brake.log_change(current);
        current.brake_enabled = brake.enabled;
        current.brake = brake.status.map(Arc::new);
        if brake.released.is_some() {
            current.brake_released = brake.released.map(Arc::new);
        }
        let previous = std::mem::replace(&mut current.plan, Arc::new(plan));
        let plan = &current.plan;
        // Every plan at info would flood the log of a churning cluster: the first one, then debug.
        if partial {
            info!(generation = current.generation, routes = plan.routes.len(), paths = plan.path_count(),
                  nodes = plan.nodes.len(), elapsed_ms = elapsed.as_secs_f64() * 1e3,
                  "ranges planned from the Nodes listed; the Services and EndpointSlices are still listing");
        } else if first {
            info!(generation = current.generation, routes = plan.routes.len(), paths = plan.path_count(),
                  refusals = plan.refusals.len(), elapsed_ms = elapsed.as_secs_f64() * 1e3, "plan updated");
        } else {
            debug!(generation = current.generation, routes = plan.routes.len(),
                   elapsed_ms = elapsed.as_secs_f64() * 1e3, "plan updated");
        }
        for item in previous.refusals.diff(&plan.refusals) {
            if let imbl::ordset::DiffItem::Add(refusal) = item {
                warn!(service = %refusal.service, ip = %refusal.ip, reason = %refusal.reason, "IP refused");
            }
        }
        for note in plan.notes.iter().filter(|n| !previous.notes.contains(n)) {
            warn!(note = %note, "plan note");
        }
        true
    });
}

/// The withdrawal brake's side of a publication.
struct BrakeView {
    enabled: bool,
    status: Option<BrakeStatus>,
    released: Option<BrakeRelease>,
}

impl BrakeView {
    fn same_as(&self, current: &PlanSnapshot) -> bool {
        current.brake.as_deref() == self.status.as_ref()
            && (self.released.is_none()
                || current.brake_released.as_deref() == self.released.as_ref())
    }

    /// Engaging and letting go are logged once each, at warn: an operator must hear of both.
    fn log_change(&self, current: &PlanSnapshot) {
        match (&current.brake, &self.status) {
            (None, Some(now)) => {
                warn!(engagement = now.engagement, reason = %now.reason, nodes = now.nodes.len(),
                paths = now.paths, prefixes = now.prefixes, "withdrawal brake engaged: keeping the lost nodes' paths announced")
            }
            (Some(before), Some(now)) if before.engagement != now.engagement => {
                warn!(engagement = now.engagement,
                reason = %now.reason, nodes = now.nodes.len(), paths = now.paths, "withdrawal brake engaged again")
            }
            _ => {}
        }
        if let Some(released) = &self.released {
            if current.brake_released.as_deref() != Some(released) {
                warn!(engagement = released.engagement, why = %released.why, "withdrawal brake released");
            }
        }
    }
}

/// Above this many object changes at once (or a quarter of the Services), the planner starts over
/// rather than applying them one by one.
const REPLAN_ABOVE: usize = 5_000;

/// The planner's side of the pipeline: follows the source's cluster states with the incremental
/// planner, fed with what changed between the last state and the new one.
struct Planning {
    config: Config,
    planner: Option<IncrementalPlanner>,
    planned: Option<Arc<ClusterState>>,
    /// Before the first complete state: the ranges planned from the Nodes listed, and those Nodes.
    ranges: Option<(Plan, Arc<ClusterState>)>,
}

impl Planning {
    /// Brings the plan up to `cluster`; false if the planner failed (the last plan stays).
    fn follow(&mut self, cluster: &Arc<ClusterState>) -> bool {
        if self
            .planned
            .as_ref()
            .is_some_and(|p| Arc::ptr_eq(p, cluster))
        {
            return true;
        }
        let planner = self.planner.take();
        let planned = self.planned.take();
        let config = &self.config;
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            match (planner, planned) {
                (Some(mut planner), Some(planned)) => {
                    // Diffed against the source's previous state, not the planner's copy of it: the two
                    // states of the source share their structure, so only the change is visited.
                    let changes = planned.changes_to(cluster);
                    if changes.len() > REPLAN_ABOVE.max(cluster.services.len() / 4) {
                        return IncrementalPlanner::new(
                            ClusterState::clone(cluster),
                            config.clone(),
                        );
                    }
                    // One batch: Node changes re-plan everything once at most, not once each.
                    planner.apply_batch(changes);
                    planner
                }
                _ => IncrementalPlanner::new(ClusterState::clone(cluster), config.clone()),
            }
        }));
        match result {
            Ok(planner) => {
                self.planner = Some(planner);
                self.planned = Some(cluster.clone());
                self.ranges = None;
                true
            }
            // Its state may be half changed: the next cluster state is planned from scratch.
            Err(_) => false,
        }
    }

    /// Plans the ranges from the Nodes listed before the first complete state (see
    /// [`crate::source::SourceSnapshot::nodes_listed`]).
    fn follow_nodes(&mut self, nodes: &Arc<ClusterState>) {
        if self
            .ranges
            .as_ref()
            .is_some_and(|(_, planned)| Arc::ptr_eq(planned, nodes))
        {
            return;
        }
        let config = &self.config;
        match std::panic::catch_unwind(|| crate::planner::plan_ranges(nodes, config)) {
            Ok(plan) => self.ranges = Some((plan, nodes.clone())),
            Err(_) => {
                error!("the planner failed on the Nodes listed; waiting for the whole cluster")
            }
        }
    }

    /// The plan, and whether it is the partial one (the ranges alone, before the first complete
    /// cluster state).
    fn plan(&self) -> Option<(&Plan, bool)> {
        match (&self.planner, &self.ranges) {
            (Some(planner), _) => Some((planner.plan(), false)),
            (None, Some((ranges, _))) => Some((ranges, true)),
            (None, None) => None,
        }
    }
}

/// Plans whenever the source publishes a new cluster state, passes the plan through the guard, and
/// publishes it when it changed. Wakes up by itself when the guard holds a path back. Runs on a
/// thread of its own: planning is CPU work, which must not hold up the reconciler's and the API's
/// IO, and which under churn is a small step per change.
async fn plan_loop(
    config: Arc<Config>,
    mut source: watch::Receiver<SourceSnapshot>,
    plans: watch::Sender<PlanSnapshot>,
    mut releases: watch::Receiver<u64>,
) {
    let mut guard = Guard::new(GuardConfig {
        hold_down: config.guard.hold_down.0,
        max_routes: config.guard.max_routes,
        brake: config.guard.withdrawal_brake.brake(),
    });
    let mut releases_open = true;
    let mut release_asked = false;
    let mut planning = Planning {
        config: Config::clone(&config),
        planner: None,
        planned: None,
        ranges: None,
    };
    let mut wake_at: Option<tokio::time::Instant> = None;
    loop {
        let (cluster, nodes_listed, version) = {
            let snapshot = source.borrow_and_update();
            (
                snapshot.cluster.clone(),
                snapshot.nodes_listed.clone(),
                snapshot.version,
            )
        };
        let started = std::time::Instant::now();
        if let Some(cluster) = &cluster {
            if !planning.follow(cluster) {
                error!("the planner failed; keeping the last plan");
            }
        } else if let Some(nodes) = &nodes_listed {
            planning.follow_nodes(nodes);
        }
        if std::mem::take(&mut release_asked) && !guard.release_brake("an operator") {
            info!("withdrawal brake release asked for, but the brake holds nothing");
        }
        if let Some((raw, partial)) = planning.plan() {
            let guarded = guard.apply(raw, std::time::Instant::now());
            wake_at = guarded.wake_at.map(tokio::time::Instant::from_std);
            let brake = BrakeView {
                enabled: config.guard.withdrawal_brake.enabled,
                status: guarded.brake,
                released: guard.last_brake_release().cloned(),
            };
            publish(
                &plans,
                guarded.plan,
                partial,
                version,
                started.elapsed(),
                brake,
            );
        }
        let sleep = async {
            match wake_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = source.changed() => if changed.is_err() { return },
            changed = releases.changed(), if releases_open => match changed {
                Ok(()) => release_asked = true,
                Err(_) => releases_open = false,
            },
            () = sleep => {}
        }
    }
}

/// Starts the planner on a thread of its own (see [`plan_loop`]), following `source`; returns its
/// plans. Call from within a Tokio runtime, which the thread uses for its timers.
pub fn spawn_planner(
    config: Arc<Config>,
    source: watch::Receiver<SourceSnapshot>,
) -> std::io::Result<watch::Receiver<PlanSnapshot>> {
    let (_releases, releases_rx) = watch::channel(0);
    spawn_planner_with_releases(config, source, releases_rx)
}

/// [`spawn_planner`], with operators' releases of the withdrawal brake: each change of `releases`
/// releases it (see [`crate::api::control`]).
pub fn spawn_planner_with_releases(
    config: Arc<Config>,
    source: watch::Receiver<SourceSnapshot>,
    releases: watch::Receiver<u64>,
) -> std::io::Result<watch::Receiver<PlanSnapshot>> {
    let (plans, plan_rx) = watch::channel(PlanSnapshot::default());
    let runtime = tokio::runtime::Handle::current();
    std::thread::Builder::new()
        .name("herald-planner".to_string())
        .spawn(move || runtime.block_on(plan_loop(config, source, plans, releases)))?;
    Ok(plan_rx)
}

/// Runs herald until `shutdown` resolves. Announcements stay in gobgpd on exit: a restart of herald
/// must not withdraw anything from the fabric.
pub async fn run(
    config: Config,
    options: RunOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let config = Arc::new(config);
    let (source_tx, source_rx) = watch::channel(SourceSnapshot::default());
    let mut kube_client = None;
    match config.source.clone() {
        None => return Err(RunError::NoSource),
        Some(SourceConfig::File(path)) => {
            tokio::spawn(FileSource::new(path).run(source_tx));
        }
        Some(SourceConfig::Kubernetes(mut kubernetes)) => {
            if options.kubeconfig.is_some() {
                kubernetes.kubeconfig = options.kubeconfig.clone();
            }
            let client = crate::source::kubernetes::client(&kubernetes)
                .await
                .map_err(|e| RunError::Source(e.to_string()))?;
            tokio::spawn(
                crate::source::kubernetes::KubernetesSource::new(client.clone()).run(source_tx),
            );
            kube_client = Some(client);
        }
    }
    let (releases, releases_rx) = watch::channel(0u64);
    let plan_rx = spawn_planner_with_releases(config.clone(), source_rx.clone(), releases_rx)
        .map_err(|e| RunError::Source(format!("cannot start the planner thread: {e}")))?;
    // Warning Events `IPRefused` on Services whose IPs the plan refuses, from one replica per pool.
    let events = kube_client.map(|client| crate::events::spawn(client, &config, plan_rx.clone()));

    let sink = config
        .gobgp
        .clone()
        .map(|gobgp| crate::gobgp::spawn(gobgp, plan_rx.clone()));
    let gobgp = match &config.gobgp {
        Some(g) => Some(
            Inspector::new(&g.address, Duration::from_secs(5))
                .map_err(|e| RunError::Gobgp(e.to_string()))?,
        ),
        None => None,
    };
    let mut api_refused = crate::api::limits::RefusedCalls::default();
    if let Some(metrics_config) = &config.metrics {
        let metrics = Metrics::new(sink.is_some());
        api_refused = metrics.api_refused.clone();
        tokio::spawn(
            metrics
                .clone()
                .follow(plan_rx.clone(), source_rx.clone(), sink.clone()),
        );
        if let Some(inspector) = gobgp.clone() {
            tokio::spawn(crate::metrics::follow_peers(
                metrics.clone(),
                inspector,
                Duration::from_secs(5),
            ));
        }
        let listener = tokio::net::TcpListener::bind(metrics_config.listen)
            .await
            .map_err(|e| {
                RunError::Metrics(format!("cannot listen on {}: {e}", metrics_config.listen))
            })?;
        tokio::spawn(async move {
            if let Err(error) = crate::metrics::serve(listener, metrics).await {
                error!(%error, "metrics server stopped");
            }
        });
    }
    let state = ApiState {
        plans: plan_rx,
        source: source_rx,
        sink,
        gobgp,
        brake_releases: Some(releases),
    };
    server::serve(&config.api, state, api_refused, shutdown).await?;
    if let Some(events) = events {
        // Handed over at once, rather than when the Lease expires.
        events.release(config.events.lease_duration.0).await;
    }
    info!("herald stopped; announcements stay in gobgpd");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Node;

    fn no_brake() -> BrakeView {
        BrakeView {
            enabled: false,
            status: None,
            released: None,
        }
    }

    #[test]
    fn a_complete_plan_equal_to_the_partial_one_is_still_published() {
        // A cluster without Services: the ranges are its whole plan. The reconciler withdraws
        // nothing while the plan is partial, so the complete one must reach it even so.
        let mut state = ClusterState::default();
        state.insert_node(Node {
            name: "n1".to_string(),
            labels: Default::default(),
            ready: true,
            internal_ips: vec!["10.0.0.1".parse().unwrap()],
        });
        let config = Config::parse("serviceClusterIPs: [{cidr: 10.96.0.0/16}]\n").unwrap();
        let ranges = crate::planner::plan_ranges(&state, &config);
        assert_eq!(ranges, crate::planner::plan(&state, &config));
        assert_eq!(ranges.path_count(), 1);
        let (plans, rx) = watch::channel(PlanSnapshot::default());
        publish(&plans, ranges.clone(), true, 0, Duration::ZERO, no_brake());
        assert_eq!((rx.borrow().generation, rx.borrow().partial), (1, true));
        publish(&plans, ranges.clone(), true, 0, Duration::ZERO, no_brake());
        assert_eq!(
            rx.borrow().generation,
            1,
            "an unchanged plan is not published again"
        );
        publish(&plans, ranges, false, 1, Duration::ZERO, no_brake());
        assert_eq!((rx.borrow().generation, rx.borrow().partial), (2, false));
    }
}
