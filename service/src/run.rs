//! `herald run`: wires source → planner → plan channel → reconciler and API server.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::api::server::{self, ApiState};
use crate::config::{Config, SourceConfig};
use crate::gobgp::inspect::Inspector;
use crate::metrics::Metrics;
use std::time::Duration;
use crate::cluster::ClusterState;
use crate::guard::{Guard, GuardConfig};
use crate::plan::{Plan, PlanSnapshot};
use crate::planner::incremental::IncrementalPlanner;
use crate::source::file::FileSource;
use crate::source::{ClusterSource, SourceSnapshot};

/// Options of `herald run` that are not in the config file.
#[derive(Debug, Default, Clone)]
pub struct RunOptions {
    /// Overrides the config's kubeconfig.
    pub kubeconfig: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("the config has no `source` (use `source: {{file: PATH}}` or `source: {{kubernetes: {{}}}}`)")]
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
fn publish(plans: &watch::Sender<PlanSnapshot>, plan: Plan, cluster_version: u64, elapsed: Duration) {
    plans.send_if_modified(|current| {
        if current.generation > 0 && *current.plan == plan {
            return false;
        }
        let first = current.generation == 0;
        current.generation += 1;
        current.cluster_version = cluster_version;
        let previous = std::mem::replace(&mut current.plan, Arc::new(plan));
        let plan = &current.plan;
        // Every plan at info would flood the log of a churning cluster: the first one, then debug.
        if first {
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

/// Above this many object changes at once (or a quarter of the Services), the planner starts over
/// rather than applying them one by one.
const REPLAN_ABOVE: usize = 5_000;

/// The planner's side of the pipeline: follows the source's cluster states with the incremental
/// planner, fed with what changed between the last state and the new one.
struct Planning {
    config: Config,
    planner: Option<IncrementalPlanner>,
    planned: Option<Arc<ClusterState>>,
}

impl Planning {
    /// Brings the plan up to `cluster`; false if the planner failed (the last plan stays).
    fn follow(&mut self, cluster: &Arc<ClusterState>) -> bool {
        if self.planned.as_ref().is_some_and(|p| Arc::ptr_eq(p, cluster)) {
            return true;
        }
        let planner = self.planner.take();
        let planned = self.planned.take();
        let config = &self.config;
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || match (planner, planned) {
            (Some(mut planner), Some(planned)) => {
                // Diffed against the source's previous state, not the planner's copy of it: the two
                // states of the source share their structure, so only the change is visited.
                let changes = planned.changes_to(cluster);
                if changes.len() > REPLAN_ABOVE.max(cluster.services.len() / 4) {
                    return IncrementalPlanner::new(ClusterState::clone(cluster), config.clone());
                }
                for change in changes {
                    planner.apply(change);
                }
                planner
            }
            _ => IncrementalPlanner::new(ClusterState::clone(cluster), config.clone()),
        }));
        match result {
            Ok(planner) => {
                self.planner = Some(planner);
                self.planned = Some(cluster.clone());
                true
            }
            // Its state may be half changed: the next cluster state is planned from scratch.
            Err(_) => false,
        }
    }

    fn plan(&self) -> Option<&Plan> {
        self.planner.as_ref().map(IncrementalPlanner::plan)
    }
}

/// Plans whenever the source publishes a new cluster state, passes the plan through the guard, and
/// publishes it when it changed. Wakes up by itself when the guard holds a path back. Runs on a
/// thread of its own: planning is CPU work, which must not hold up the reconciler's and the API's
/// IO, and which under churn is a small step per change.
async fn plan_loop(config: Arc<Config>, mut source: watch::Receiver<SourceSnapshot>, plans: watch::Sender<PlanSnapshot>) {
    let mut guard = Guard::new(GuardConfig {
        hold_down: config.guard.hold_down.0,
        max_routes: config.guard.max_routes,
    });
    let mut planning = Planning { config: Config::clone(&config), planner: None, planned: None };
    let mut wake_at: Option<tokio::time::Instant> = None;
    loop {
        let (cluster, version) = {
            let snapshot = source.borrow_and_update();
            (snapshot.cluster.clone(), snapshot.version)
        };
        let started = std::time::Instant::now();
        if let Some(cluster) = &cluster {
            if !planning.follow(cluster) {
                error!("the planner failed; keeping the last plan");
            }
        }
        if let Some(raw) = planning.plan() {
            let guarded = guard.apply(raw, std::time::Instant::now());
            wake_at = guarded.wake_at.map(tokio::time::Instant::from_std);
            publish(&plans, guarded.plan, version, started.elapsed());
        }
        let sleep = async {
            match wake_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = source.changed() => if changed.is_err() { return },
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
    let (plans, plan_rx) = watch::channel(PlanSnapshot::default());
    let runtime = tokio::runtime::Handle::current();
    std::thread::Builder::new()
        .name("herald-planner".to_string())
        .spawn(move || runtime.block_on(plan_loop(config, source, plans)))?;
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
            tokio::spawn(crate::source::kubernetes::KubernetesSource::new(client.clone()).run(source_tx));
            kube_client = Some(client);
        }
    }
    let plan_rx = spawn_planner(config.clone(), source_rx.clone())
        .map_err(|e| RunError::Source(format!("cannot start the planner thread: {e}")))?;
    // Warning Events `IPRefused` on Services whose IPs the plan refuses, from one replica per pool.
    let events = kube_client.map(|client| crate::events::spawn(client, &config, plan_rx.clone()));

    let sink = config.gobgp.clone().map(|gobgp| crate::gobgp::spawn(gobgp, plan_rx.clone()));
    let gobgp = match &config.gobgp {
        Some(g) => Some(Inspector::new(&g.address, Duration::from_secs(5)).map_err(|e| RunError::Gobgp(e.to_string()))?),
        None => None,
    };
    let mut api_refused = crate::api::limits::RefusedCalls::default();
    if let Some(metrics_config) = &config.metrics {
        let metrics = Metrics::new(sink.is_some());
        api_refused = metrics.api_refused.clone();
        tokio::spawn(metrics.clone().follow(plan_rx.clone(), source_rx.clone(), sink.clone()));
        if let Some(inspector) = gobgp.clone() {
            tokio::spawn(crate::metrics::follow_peers(metrics.clone(), inspector, Duration::from_secs(5)));
        }
        let listener = tokio::net::TcpListener::bind(metrics_config.listen)
            .await
            .map_err(|e| RunError::Metrics(format!("cannot listen on {}: {e}", metrics_config.listen)))?;
        tokio::spawn(async move {
            if let Err(error) = crate::metrics::serve(listener, metrics).await {
                error!(%error, "metrics server stopped");
            }
        });
    }
    let state = ApiState { plans: plan_rx, source: source_rx, sink, gobgp };
    server::serve(&config.api, state, api_refused, shutdown).await?;
    if let Some(events) = events {
        // Handed over at once, rather than when the Lease expires.
        events.release(config.events.lease_duration.0).await;
    }
    info!("herald stopped; announcements stay in gobgpd");
    Ok(())
}
