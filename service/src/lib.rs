//! herald: announces Kubernetes Service IPs over BGP through a gobgpd sidecar.
//!
//! Data flows one way:
//! source (herald-k8s) → cluster model (herald-core `cluster`) → planner (herald-core `planner`) →
//! `Plan` on a watch channel → the gobgpd reconciler (herald-gobgp) and the API server
//! (herald-grpc), which only read it. This crate wires them together ([`run`]) and serves the
//! Prometheus metrics ([`metrics`]); `main.rs` is the `herald` command.

pub mod metrics;
pub mod run;

// The crates `run` and `metrics` wire together, under the paths they name them by (`crate::plan::...`).
use herald_core::{brake, cluster, config, guard, plan, planner};
use herald_gobgp as gobgp;
use herald_grpc as api;
use herald_k8s::{events, source};
