//! herald-gobgp, the gobgp sink: makes gobgpd's RIB equal the plan, through GoBGP's gRPC API.
//!
//! - [`paths`]: the plan as the set of paths gobgpd should hold for herald (one per prefix and next
//!   hop), how herald's paths are told from everyone else's, and the diff.
//! - [`reconciler`]: the loop that pushes the diff, re-reads gobgpd's RIB and repairs it;
//!   [`decisions`]: its decisions (what to look at, how long to wait, what a probe or a read-back
//!   found), pure and unit-tested.
//! - [`restart`]: whether a restarted gobgpd got herald's plan before its graceful-restart deferral
//!   ended, and the neighbors it wrongly holds back from.
//! - [`endpoint`]: gobgpd's address, TCP or a unix socket.
//! - [`v3`]: the GoBGP v3 API client (`apipb`), behind [`reconciler::GobgpClient`].

pub mod decisions;
pub mod endpoint;
pub mod inspect;
pub mod paths;
pub mod reconciler;
pub mod restart;
pub mod v3;

// herald-core's modules, under the paths the modules here name them by (`crate::config::...`).
use herald_core::{config, plan};

use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use tokio::sync::watch;
use tracing::Instrument;

use crate::config::GobgpConfig;
use crate::plan::PlanSnapshot;

/// A set of prefixes gobgpd holds, published with every status: persistent, so that publishing it
/// costs nothing and a change of one prefix copies a path of the tree, not the set.
pub type InRib = imbl::OrdSet<IpNet>;

/// How long herald waits for gobgpd to answer one call (or one message of a streamed answer).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// How the sink stands, for `GetStatus` and `ListRoutes`' `inRib`.
#[derive(Debug, Clone, Default)]
pub struct SinkStatus {
    pub address: String,
    pub reachable: bool,
    /// herald's first call to gobgpd has neither been answered nor failed yet.
    pub awaiting_first_answer: bool,
    /// The plan generation gobgpd's RIB last equalled.
    pub applied_generation: u64,
    /// Paths still to add or withdraw.
    pub pending_operations: u64,
    /// herald's paths in gobgpd's RIB.
    pub paths_applied: u64,
    /// The error herald is retrying on, or why part of the plan cannot be announced (gobgpd lacks
    /// its address family); None when gobgpd holds the whole plan.
    pub last_error: Option<String>,
    pub last_applied: Option<SystemTime>,
    /// Prefixes for which gobgpd holds herald's path for every next hop of the applied plan.
    pub in_rib: InRib,
    /// Paths added or replaced since herald started.
    pub paths_added: u64,
    /// Paths withdrawn since herald started.
    pub paths_withdrawn: u64,
    /// Failed calls to gobgpd since herald started.
    pub errors: u64,
    /// Times gobgpd's RIB was found to differ from what herald applied (a restarted gobgpd, paths
    /// changed by hand) and was repaired.
    pub repairs: u64,
    /// The graceful-restart window gobgpd gave herald when it last lost herald's paths.
    pub graceful_restart: Option<restart::Window>,
    /// Times a restarted gobgpd sent End-of-RIB to a peer before herald's plan was in.
    pub restart_misses: u64,
    /// The last of those: when, and what happened.
    pub restart_miss: Option<(SystemTime, String)>,
}

/// Starts a reconciler with a client of one's choosing (another API version, other timeouts).
pub fn spawn_with<C: reconciler::GobgpClient>(
    client: C,
    address: &str,
    settings: reconciler::Settings,
    plans: watch::Receiver<PlanSnapshot>,
) -> watch::Receiver<SinkStatus> {
    let (status_tx, status_rx) = watch::channel(SinkStatus {
        address: address.to_string(),
        awaiting_first_answer: true,
        ..Default::default()
    });
    let span = tracing::info_span!("gobgp", address = %address);
    tokio::spawn(
        reconciler::Reconciler::new(client, settings, plans, status_tx)
            .run()
            .instrument(span),
    );
    status_rx
}

/// Paths per AddPathStream call: many messages of `batch_size` paths, so that gobgpd works on one
/// while herald writes the next (faster than one message a call: BENCHMARKS.md, figures behind
/// choices); each call ends with gobgpd idle until the next one's first message, so few calls (a
/// 100,000-path push is 2). A long call does not
/// time out while gobgpd keeps taking its messages ([`CALL_TIMEOUT`] is how long it may stall);
/// between calls herald publishes its progress and looks for a newer plan.
fn ops_per_push(batch_size: usize) -> usize {
    let batch_size = batch_size.max(1);
    (batch_size * 64).min(131_072).max(batch_size)
}

/// Starts the reconciler; it runs until the plan channel closes.
pub fn spawn(
    config: GobgpConfig,
    plans: watch::Receiver<PlanSnapshot>,
) -> watch::Receiver<SinkStatus> {
    let settings = settings(&config);
    match v3::V3Client::new(&config.address, config.batch_size, CALL_TIMEOUT) {
        Ok(client) => spawn_with(client, &config.address, settings, plans),
        Err(e) => {
            tracing::error!(address = %config.address, error = %e, "cannot use gobgpd's address; announcing nothing");
            let (status_tx, status_rx) = watch::channel(SinkStatus {
                address: config.address.clone(),
                last_error: Some(e.to_string()),
                ..Default::default()
            });
            // The status lives as long as plans come.
            let mut plans = plans;
            tokio::spawn(async move {
                while plans.changed().await.is_ok() {}
                drop(status_tx);
            });
            status_rx
        }
    }
}

/// The reconciler's settings for a config.
pub fn settings(config: &GobgpConfig) -> reconciler::Settings {
    reconciler::Settings::new(
        config.origin,
        config.local_pref,
        ops_per_push(config.batch_size),
        config.anti_entropy_interval.0,
    )
}
