//! herald-grpc: herald's read-only gRPC API (herald.v1.PlanService), with server reflection and gRPC health.

pub mod proto;
pub mod server;
pub mod table;

// The modules the server reads, under the paths it names them by (`crate::plan::...`).
use herald_core::{cluster, config, plan, source};
use herald_gobgp as gobgp;
