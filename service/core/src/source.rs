//! What a source of cluster state publishes (the sources themselves, a watched file or the Kubernetes
//! API, are in herald-k8s).
//!
//! A source publishes complete cluster states on a watch channel. It publishes nothing until it has
//! read a complete state once, and while it cannot read (a broken file, an unreachable API server) it
//! keeps the last state published and says why in its status: losing the source must never withdraw
//! a route.

use std::sync::Arc;
use std::time::SystemTime;

use crate::cluster::ClusterState;

/// How a source is doing, for `GetStatus`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceStatus {
    /// `file:/path` or `kubernetes`.
    pub name: String,
    /// A complete state has been read at least once.
    pub synced: bool,
    /// Why the last read failed; `None` once a read succeeds.
    pub last_error: Option<String>,
    pub last_update: Option<SystemTime>,
}

/// What a source publishes: the last complete cluster state (none before the first), and its status.
#[derive(Debug, Clone, Default)]
pub struct SourceSnapshot {
    pub cluster: Option<Arc<ClusterState>>,
    /// Before the first complete state only: a state holding the Nodes alone, once they are listed
    /// in full while the Services or EndpointSlices are still listing (`None` otherwise). The
    /// range routes depend on the Nodes and the config alone, so they can be announced from it:
    /// in a large cluster, gobgpd takes them while the Services are still listing.
    pub nodes_listed: Option<Arc<ClusterState>>,
    /// Grows by one with each cluster state published; 0 before the first.
    pub version: u64,
    pub status: SourceStatus,
}

impl SourceSnapshot {
    /// A complete cluster state, read just now by the source `name`.
    pub fn synced(name: &str, cluster: Arc<ClusterState>, version: u64) -> SourceSnapshot {
        SourceSnapshot {
            cluster: Some(cluster),
            nodes_listed: None,
            version,
            status: SourceStatus {
                name: name.to_string(),
                synced: true,
                last_error: None,
                last_update: Some(SystemTime::now()),
            },
        }
    }
}
