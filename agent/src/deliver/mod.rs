//! The deliver stage: where alerts go. Every alert is appended to the
//! delivery log (`spool`) and printed (`stdout`); the gRPC stream (`grpc`)
//! and the OTLP exporter (`otlp`) read the log, each at its own pace.

pub mod grpc;
pub mod otlp;
pub mod sinks;
pub mod spool;
pub mod stdout;
