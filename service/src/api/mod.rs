//! herald's read-only gRPC API (herald.v1.PlanService), with server reflection and gRPC health.

pub mod limits;
pub mod proto;
pub mod server;
pub mod table;
