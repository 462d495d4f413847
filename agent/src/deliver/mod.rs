//! The deliver stage: where alerts go. So far, stdout; the gRPC stream and
//! the collector push come next.

pub mod grpc;
pub mod spool;
pub mod stdout;
