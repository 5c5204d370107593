//! herald-grpc: herald's gRPC API: herald.v1.PlanService (read-only) and ControlService (the
//! withdrawal brake's release), with server reflection and gRPC health; the API's limits.

pub mod control;
pub mod limits;
pub mod proto;
pub mod server;
pub mod table;

// The modules the server reads, under the paths it names them by (`crate::plan::...`).
use herald_core::{cluster, config, plan, source};
use herald_gobgp as gobgp;
