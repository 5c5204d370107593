//! The gobgp sink: makes gobgpd's RIB equal the plan, through GoBGP's gRPC API.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::SystemTime;

use ipnet::IpNet;
use tokio::sync::watch;

use crate::config::GobgpConfig;
use crate::plan::PlanSnapshot;

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
    pub last_error: Option<String>,
    pub last_applied: Option<SystemTime>,
    /// Prefixes for which gobgpd holds herald's path for every next hop of the applied plan.
    pub in_rib: Arc<HashSet<IpNet>>,
}

/// Starts the reconciler; it runs until the plan channel closes.
pub fn spawn(config: GobgpConfig, plans: watch::Receiver<PlanSnapshot>) -> watch::Receiver<SinkStatus> {
    let _ = (config, plans);
    unimplemented!("the reconciler is being written")
}
