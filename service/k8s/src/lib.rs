//! herald-k8s: herald's side of Kubernetes: the sources of cluster state (a file of Kubernetes
//! objects, or the Kubernetes API), the conversion of Kubernetes objects into herald-core's cluster
//! model, and the Events recorder with the Lease that elects the replica that records them.
//!
//! - [`source`]: the [`source::ClusterSource`]s, [`source::file`] and [`source::kubernetes`].
//! - [`parse_manifest`]: cluster state from `kubectl get ... -o yaml`; [`from_service`] and the other
//!   conversions from k8s-openapi types.
//! - [`events`], [`lease`]: Kubernetes Events for refused IPs, recorded by one replica per pool.

pub mod brake_events;
mod convert;
pub mod events;
pub mod lease;
mod manifest;
pub mod source;

pub use convert::{SERVICE_NAME_LABEL, from_endpoint_slice, from_node, from_service};
pub use manifest::{ManifestError, parse_manifest, parse_manifest_in_parts};

// herald-core's modules, under the paths the modules here name them by (`crate::config::...`).
use herald_core::{cluster, config, plan};
