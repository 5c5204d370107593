//! Generates the API crate from `proto/` with protox, so that a machine with cargo alone builds it
//! (no system `protoc`).

use std::{env, path::PathBuf};

const PROTOS: &[&str] = &["herald/v1/herald.proto", "gobgp/v3/gobgp.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let descriptor_path = out.join("descriptor.bin");

    let fds = protox::compile(PROTOS, ["proto"])?;
    std::fs::write(&descriptor_path, prost::Message::encode_to_vec(&fds))?;
    // herald's API alone, for server reflection: herald serves no GoBGP service.
    let herald_fds = protox::compile(["herald/v1/herald.proto"], ["proto"])?;
    std::fs::write(
        out.join("herald_descriptor.bin"),
        prost::Message::encode_to_vec(&herald_fds),
    )?;

    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptor_path)
        .skip_protoc_run()
        // Well-known types from pbjson-types, which carry proto3 JSON (Timestamp as RFC 3339).
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        .compile_fds(fds)?;

    // proto3 JSON (camelCase names, enum names, defaults omitted) for herald's messages, which
    // `herald plan -o json` and `heraldctl -o json` print.
    let descriptors = std::fs::read(&descriptor_path)?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .build(&[".herald.v1"])?;
    Ok(())
}
