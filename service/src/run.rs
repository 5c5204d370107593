//! `herald run`: wires source → planner → plan channel → reconciler and API server.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::api::server::{self, ApiState};
use crate::config::{Config, SourceConfig};
use crate::gobgp::inspect::Inspector;
use crate::metrics::Metrics;
use std::time::Duration;
use crate::cluster::ClusterState;
use crate::guard::{Guard, GuardConfig};
use crate::plan::{Plan, PlanSnapshot};
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
fn publish(plans: &watch::Sender<PlanSnapshot>, plan: Plan, elapsed: std::time::Duration) {
    plans.send_if_modified(|current| {
        if current.generation > 0 && *current.plan == plan {
            return false;
        }
        current.generation += 1;
        current.plan = Arc::new(plan);
        info!(generation = current.generation, routes = current.plan.routes.len(),
              paths = current.plan.path_count(), refusals = current.plan.refusals.len(),
              elapsed_ms = elapsed.as_secs_f64() * 1e3, "plan updated");
        for refusal in &current.plan.refusals {
            warn!(service = %refusal.service, ip = %refusal.ip, reason = %refusal.reason, "IP refused");
        }
        for note in &current.plan.notes {
            warn!(note = %note, "plan note");
        }
        true
    });
}

/// Re-plans whenever the source publishes a new cluster state, passes the plan through the guard,
/// and publishes it when it changed. Wakes up by itself when the guard holds a path back.
async fn plan_loop(config: Arc<Config>, mut source: watch::Receiver<SourceSnapshot>, plans: watch::Sender<PlanSnapshot>) {
    let mut guard = Guard::new(GuardConfig {
        hold_down: config.guard.hold_down.0,
        max_routes: config.guard.max_routes,
    });
    let mut last_cluster: Option<Arc<ClusterState>> = None;
    let mut raw: Option<Arc<Plan>> = None;
    let mut wake_at: Option<tokio::time::Instant> = None;
    loop {
        let cluster = source.borrow_and_update().cluster.clone();
        let started = std::time::Instant::now();
        if let Some(cluster) = cluster.filter(|c| last_cluster.as_ref().is_none_or(|l| !Arc::ptr_eq(l, c))) {
            last_cluster = Some(cluster.clone());
            let config = config.clone();
            match tokio::task::spawn_blocking(move || crate::planner::plan(&cluster, &config)).await {
                Ok(plan) => raw = Some(Arc::new(plan)),
                Err(e) => error!(error = %e, "planner failed; keeping the last plan"),
            }
        }
        if let Some(raw) = &raw {
            let guarded = guard.apply(raw, std::time::Instant::now());
            wake_at = guarded.wake_at.map(tokio::time::Instant::from_std);
            publish(&plans, guarded.plan, started.elapsed());
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
    let (plan_tx, plan_rx) = watch::channel(PlanSnapshot::default());
    if let Some(client) = kube_client {
        // Warning Events `IPRefused` on Services whose IPs the plan refuses.
        crate::events::spawn_event_recorder(client, plan_rx.clone());
    }
    tokio::spawn(plan_loop(config.clone(), source_rx.clone(), plan_tx));

    let sink = config.gobgp.clone().map(|gobgp| crate::gobgp::spawn(gobgp, plan_rx.clone()));
    let gobgp = match &config.gobgp {
        Some(g) => Some(Inspector::new(&g.address, Duration::from_secs(5)).map_err(|e| RunError::Gobgp(e.to_string()))?),
        None => None,
    };
    if let Some(metrics_config) = &config.metrics {
        let metrics = Metrics::new();
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
    server::serve(&config.api, state, shutdown).await?;
    info!("herald stopped; announcements stay in gobgpd");
    Ok(())
}
