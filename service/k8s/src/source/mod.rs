//! Sources of cluster state: a watched file ([`file`]), or the Kubernetes API ([`kubernetes`]).
//!
//! Each publishes a [`SourceSnapshot`] (herald-core's `source`) on a watch channel.

pub mod file;
pub mod kubernetes;

use std::future::Future;

use tokio::sync::watch;

pub use herald_core::source::{SourceSnapshot, SourceStatus};

/// A source of cluster state. Each implementation is a real way to learn the cluster.
pub trait ClusterSource: Send + 'static {
    /// Publishes states until the sender's receivers are all gone.
    fn run(self, updates: watch::Sender<SourceSnapshot>) -> impl Future<Output = ()> + Send;
}
