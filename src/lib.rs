//! herald's gRPC API, generated from `proto/`.
//!
//! - [`herald::v1`]: herald's own read-only API (`PlanService`), which `heraldctl` and `grpcurl` use.
//! - [`gobgp::v3`]: the part of GoBGP's v3 API (`apipb.GobgpApi`) that herald drives gobgpd with.

pub mod herald {
    pub mod v1 {
        tonic::include_proto!("herald.v1");
        include!(concat!(env!("OUT_DIR"), "/herald.v1.serde.rs"));
    }
}

pub mod gobgp {
    /// GoBGP v3 (`package apipb`).
    pub mod v3 {
        tonic::include_proto!("apipb");

        /// The `google.protobuf.Any` type URL of an apipb message, as gobgpd expects it.
        pub fn type_url(message: &str) -> String {
            format!("type.googleapis.com/apipb.{message}")
        }
    }
}

/// The well-known types (Timestamp, Any, Empty) the generated code uses.
pub use pbjson_types;

/// Encoded `FileDescriptorSet` of herald.v1 and what it imports, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/herald_descriptor.bin"));
