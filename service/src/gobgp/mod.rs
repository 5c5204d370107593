//! The gobgp sink: makes gobgpd's RIB equal the plan, through GoBGP's gRPC API.
//!
//! - [`paths`]: the plan as the set of paths gobgpd should hold for herald (one per prefix and next
//!   hop), how herald's paths are told from everyone else's, and the diff.
//! - [`reconciler`]: the loop that pushes the diff, re-reads gobgpd's RIB and repairs it.
//! - [`v3`]: the GoBGP v3 API client (`apipb`), behind [`reconciler::GobgpClient`].

pub mod paths;
pub mod reconciler;
pub mod v3;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use tokio::sync::watch;

use crate::config::GobgpConfig;
use crate::plan::PlanSnapshot;

/// How long herald waits for gobgpd to answer one call (or one message of a streamed answer).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// How the sink stands, for `GetStatus` and `ListRoutes`' `inRib`.
#[derive(Debug, Clone, Default)]
pub struct SinkStatus {
    pub address: String,
    pub reachable: bool,
    /// The plan generation gobgpd's RIB last equalled.
    pub applied_generation: u64,
    /// Paths still to add or withdraw.
    pub pending_operations: u64,
    /// herald's paths in gobgpd's RIB.
    pub paths_applied: u64,
    /// The error herald is retrying on; None once gobgpd holds the plan again.
    pub last_error: Option<String>,
    pub last_applied: Option<SystemTime>,
    /// Prefixes for which gobgpd holds herald's path for every next hop of the applied plan.
    pub in_rib: Arc<HashSet<IpNet>>,
    /// Paths added or replaced since herald started.
    pub paths_added: u64,
    /// Paths withdrawn since herald started.
    pub paths_withdrawn: u64,
}

/// Starts the reconciler; it runs until the plan channel closes.
pub fn spawn(config: GobgpConfig, plans: watch::Receiver<PlanSnapshot>) -> watch::Receiver<SinkStatus> {
    let (status_tx, status_rx) =
        watch::channel(SinkStatus { address: config.address.clone(), ..Default::default() });
    let settings = reconciler::Settings::new(
        config.origin,
        config.local_pref,
        config.batch_size * std::env::var("HERALD_TMP_MSGS").ok().and_then(|v| v.parse::<usize>().ok()).unwrap_or(1),
        config.anti_entropy_interval.0,
    );
    match v3::V3Client::new(&config.address, config.batch_size, CALL_TIMEOUT) {
        Ok(client) => {
            tokio::spawn(reconciler::Reconciler::new(client, settings, plans, status_tx).run());
        }
        Err(e) => {
            tracing::error!(address = %config.address, error = %e, "cannot use gobgpd's address; announcing nothing");
            status_tx.send_modify(|s| s.last_error = Some(e.to_string()));
            // Keep the status alive for as long as there are plans.
            let mut plans = plans;
            tokio::spawn(async move {
                while plans.changed().await.is_ok() {}
                drop(status_tx);
            });
        }
    }
    status_rx
}
