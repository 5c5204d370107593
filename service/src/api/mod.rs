//! herald's gRPC API: herald.v1.PlanService (read-only) and ControlService (the withdrawal brake's
//! release), with server reflection and gRPC health.

pub mod control;
pub mod limits;
pub mod proto;
pub mod server;
pub mod table;
