//! Compiles `tokenwatch/v1/*.proto` with protox (pure Rust, so no `protoc`
//! install is needed) into prost types plus pbjson serde impls that follow
//! the proto3 JSON mapping.

use std::{env, fs, path::PathBuf};

use anyhow::Context;

fn main() -> anyhow::Result<()> {
    let protos = ["tokenwatch/v1/alert.proto", "tokenwatch/v1/service.proto", "tokenwatch/v1/inventory.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["."]).context("compiling the .proto files")?;
    let out_dir = PathBuf::from(env::var("OUT_DIR").context("OUT_DIR unset")?);
    let descriptor_path = out_dir.join("tokenwatch_descriptor.bin");
    let bytes = prost::Message::encode_to_vec(&descriptors);
    fs::write(&descriptor_path, &bytes).context("writing the descriptor set")?;

    tonic_prost_build::configure()
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)
        .context("generating prost types and gRPC stubs")?;
    pbjson_build::Builder::new()
        .register_descriptors(&bytes)
        .context("registering descriptors for pbjson")?
        .build(&[".tokenwatch.v1"])
        .context("generating serde impls")?;
    Ok(())
}
