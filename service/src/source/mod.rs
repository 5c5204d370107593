//! Sources of cluster state: a watched file, or the Kubernetes API.
//!
//! A source publishes complete cluster states on a watch channel. It publishes nothing until it has
//! read a complete state once, and while it cannot read (a broken file, an unreachable API server) it
//! keeps the last state published and says why in its status: losing the source must never withdraw
//! a route.

pub mod file;
pub mod kubernetes;

use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::watch;

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
    /// Grows by one with each cluster state published; 0 before the first.
    pub version: u64,
    pub status: SourceStatus,
}

/// A source of cluster state. Each implementation is a real way to learn the cluster.
pub trait ClusterSource: Send + 'static {
    /// Publishes states until the sender's receivers are all gone.
    fn run(self, updates: watch::Sender<SourceSnapshot>) -> impl Future<Output = ()> + Send;
}
