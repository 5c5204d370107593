//! herald-core: herald's pure part: the cluster model, the config, the planner and its plan, and the
//! guard. No IO beyond reading a config file, no async runtime, no Kubernetes or gRPC client: the
//! compiler keeps the data flow one way (source → [`cluster`] → [`planner`] → [`plan::Plan`] →
//! sink and API, which live in herald-k8s, herald-gobgp and herald-grpc).
//!
//! - [`cluster`]: the few facts about Nodes, Services and EndpointSlices the planner needs.
//! - [`config`], [`selector`]: herald's config and its label selectors.
//! - [`planner`]: cluster state and config in, [`plan::Plan`] out (also incrementally).
//! - [`guard`]: the limits a plan passes before it is published.
//! - [`source`]: what a source of cluster state publishes.

pub mod brake;
pub mod cluster;
pub mod config;
pub mod guard;
pub mod plan;
pub mod planner;
pub mod selector;
pub mod source;
