//! tokenwatch's public alert API, package `tokenwatch.v1`.
//!
//! The types are generated from `tokenwatch/v1/*.proto`; their serde impls
//! follow the proto3 JSON mapping, so an alert printed as a JSON line carries
//! exactly the fields a gRPC subscriber receives.

/// Package `tokenwatch.v1`.
pub mod v1 {
    #![expect(missing_docs, clippy::all, reason = "generated code; the .proto files hold the docs")]
    include!(concat!(env!("OUT_DIR"), "/tokenwatch.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/tokenwatch.v1.serde.rs"));
}

/// The encoded `FileDescriptorSet` of every tokenwatch proto, for gRPC
/// server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/tokenwatch_descriptor.bin"));
