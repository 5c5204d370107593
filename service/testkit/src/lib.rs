//! herald-testkit: herald's test machinery, out of the production crates (`publish = false`).
//!
//! - [`scale`]: a deterministic large cluster (and a small random-number generator) for benchmarks
//!   and scale tests.
//! - [`invariants`]: what must hold of every plan, restated independently of the planner: the oracle
//!   of the property tests, the fuzz targets and the hostile-input tests.
//! - [`gobgpd`] (feature `gobgpd`): a standalone gobgpd for a test, and an independent reader of its
//!   RIB.
//! - [`fuzz`] (feature `fuzz`): the bodies of the fuzz targets in `fuzz/`, replayed by
//!   `service/tests/hostile_input.rs`.
//! - [`tables`]: plans as the route tables the planner's tests are written in.
//! - [`cluster_yaml`], [`herald_run`]: the benchmarks' cluster as YAML, and `herald run` as a user
//!   starts it.

pub mod cluster_yaml;
#[cfg(feature = "fuzz")]
pub mod fuzz;
#[cfg(feature = "gobgpd")]
pub mod gobgpd;
pub mod herald_run;
pub mod invariants;
pub mod scale;
pub mod tables;

// herald-core's modules, under the paths the modules here name them by (`crate::config::...`).
use herald_core::{cluster, config, plan};
