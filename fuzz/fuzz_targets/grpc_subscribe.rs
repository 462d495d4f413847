//! gRPC request handling of `AlertService/Subscribe`: any bytes a client
//! sends are decoded with prost (as tonic does), checked by
//! `filter::validate` and, like the service, matched against alerts by
//! `filter::matches`. Never a panic; a refusal echoes a bounded amount of
//! the client's input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use tokenwatch_agent::deliver::grpc::filter;
use tokenwatch_fuzz::sample_alerts;
use tokenwatch_proto::v1::SubscribeRequest;

/// Bound on a refusal's message: it names at most one value (64 characters,
/// escaped, so at most 10 bytes each) plus the list of rule ids.
const MAX_ERROR_BYTES: usize = 1024;

fuzz_target!(|bytes: &[u8]| {
    let Ok(request) = SubscribeRequest::decode(bytes) else { return };
    match filter::validate(&request) {
        Ok(()) => {
            for alert in sample_alerts() {
                let _ = filter::matches(&request, &alert);
            }
        }
        Err(message) => assert!(message.len() <= MAX_ERROR_BYTES, "refusal of {} bytes", message.len()),
    }
});
